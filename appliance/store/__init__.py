"""The SQLite store: the durability boundary and the only state the components share."""

from appliance.config import Config
from appliance.store.db import Store

__all__ = ["Store", "open_store"]


def open_store(config: Config, readonly: bool = False) -> Store:
    """The daemon's store as the config describes it (path, busy timeout, size cap)."""
    if readonly:
        return Store(config.store_path, config.store.busy_timeout_ms, readonly=True)
    return Store(config.store_path, config.store.busy_timeout_ms, max_size_mb=config.store.max_size_mb)
