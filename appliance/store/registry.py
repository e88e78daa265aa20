"""The meter registry: which meters exist, on which bus, with which model, and who said so."""

from __future__ import annotations

from collections.abc import Iterable

from appliance.config import MeterSpec
from appliance.store.db import Store


def register_config_meters(store: Store, meters: Iterable[MeterSpec], now: int) -> None:
    """Make the registry agree with the config's [[meters]] (MDM and discovered ones stay)."""
    with store.transaction() as conn:
        for meter in meters:
            conn.execute(
                """INSERT INTO meters (mrid, bus, protocol, address, model, source, created_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, 'config', ?, ?)
                   ON CONFLICT (mrid) DO UPDATE SET
                     bus = excluded.bus, protocol = excluded.protocol, address = excluded.address,
                     model = excluded.model, source = 'config', updated_at = excluded.updated_at
                   WHERE (bus, protocol, address, model, source)
                     IS NOT (excluded.bus, excluded.protocol, excluded.address, excluded.model, 'config')""",
                (meter.id, meter.bus, meter.protocol.value, meter.address, meter.model, now, now),
            )


def list_meters(store: Store) -> list[dict]:
    """Every registered meter, as rows."""
    return list(
        store.db.query("SELECT mrid, bus, protocol, address, model, source FROM meters ORDER BY mrid")
    )
