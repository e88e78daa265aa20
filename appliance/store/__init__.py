"""The SQLite store: the durability boundary and the only state the components share."""

from appliance.store.db import Store

__all__ = ["Store"]
