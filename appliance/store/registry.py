"""The meter registry: which meters exist, on which bus, with which model, and who said so.

Sources: the config (`config`), the MDM (`mdm`, MeterConfig requests), discovery (`discovery`) and
the WAN listener. Everything needed to poll a meter is kept, so that meters the MDM registered are
polled again after a restart. A removed meter keeps its row: its readings still point at it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from appliance.config import MeterSpec
from appliance.model import Protocol
from appliance.store.db import Store
from appliance.store.wan_devices import WAN_BUS

ACTIVE, UNASSIGNED, REMOVED = "active", "unassigned", "removed"


def _settings(meter: MeterSpec) -> str:
    return json.dumps(
        {
            "poll_interval_s": meter.poll_interval_s,
            "logical_address": meter.logical_address,
            "client_address": meter.client_address,
            "auth": meter.auth,
            "keys_file": str(meter.keys_file) if meter.keys_file else "",
        },
        sort_keys=True,
    )


def register_meter(
    store: Store,
    meter: MeterSpec,
    source: str,
    now: int,
    state: str = ACTIVE,
    identity: dict[str, str] | None = None,
) -> None:
    """Create or update one meter (a meter that changes hands keeps its id and its readings)."""
    with store.transaction() as conn:
        _upsert(conn, meter, source, now, state, identity)


def _upsert(
    conn: Any, meter: MeterSpec, source: str, now: int, state: str, identity: dict[str, str] | None
) -> None:
    conn.execute(
        """INSERT INTO meters (mrid, bus, protocol, address, model, source, created_at, updated_at,
                               settings, state, identity)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (mrid) DO UPDATE SET
             bus = excluded.bus, protocol = excluded.protocol, address = excluded.address,
             model = excluded.model, source = excluded.source, settings = excluded.settings,
             state = excluded.state, updated_at = excluded.updated_at,
             identity = CASE WHEN excluded.identity = '{}' THEN identity ELSE excluded.identity END
           WHERE (bus, protocol, address, model, source, settings, state)
             IS NOT (excluded.bus, excluded.protocol, excluded.address, excluded.model, excluded.source,
                     excluded.settings, excluded.state)
             OR excluded.identity != '{}'""",
        (
            meter.id,
            meter.bus,
            meter.protocol.value,
            meter.address,
            meter.model,
            source,
            now,
            now,
            _settings(meter),
            state,
            json.dumps(identity or {}, sort_keys=True),
        ),
    )


def register_config_meters(store: Store, meters: Iterable[MeterSpec], now: int) -> None:
    """Make the registry agree with the config's [[meters]]: config meters that left the config are
    removed; MDM and discovered ones stay as they are."""
    meters = list(meters)
    with store.transaction() as conn:
        for meter in meters:
            _upsert(conn, meter, "config", now, ACTIVE, None)
        ids = [meter.id for meter in meters]
        conn.execute(
            """UPDATE meters SET state = 'removed', updated_at = ?
               WHERE source = 'config' AND state != 'removed'
                 AND mrid NOT IN (SELECT value FROM json_each(?))""",
            (now, json.dumps(ids)),
        )


def remove_meter(store: Store, mrid: str, now: int) -> bool:
    """Stop polling a meter; its readings stay. False when there was no such active meter."""
    with store.transaction() as conn:
        cursor = conn.execute(
            "UPDATE meters SET state = 'removed', updated_at = ? WHERE mrid = ? AND state != 'removed'",
            (now, mrid),
        )
    return cursor.rowcount > 0


def _spec(row: dict[str, Any]) -> MeterSpec:
    settings = json.loads(row["settings"])
    return MeterSpec(
        id=row["mrid"],
        bus=row["bus"],
        protocol=Protocol(row["protocol"]),
        address=row["address"],
        model=row["model"],
        poll_interval_s=settings.get("poll_interval_s", 0),
        logical_address=settings.get("logical_address", 1),
        client_address=settings.get("client_address", 16),
        auth=settings.get("auth", "none"),
        keys_file=Path(settings["keys_file"]) if settings.get("keys_file") else None,
    )


def active_meters(store: Store) -> list[MeterSpec]:
    """The meters to poll on the buses (config, MDM and assigned discovered ones)."""
    rows = store.query(
        "SELECT * FROM meters WHERE state = ? AND bus IS NOT NULL AND protocol != 'derived' ORDER BY mrid",
        [ACTIVE],
    )
    return [_spec(row) for row in rows]


def registered_meter(store: Store, mrid: str) -> tuple[MeterSpec, str, str] | None:
    """One meter with its source and state, or None."""
    rows = list(store.query("SELECT * FROM meters WHERE mrid = ?", [mrid]))
    return (_spec(rows[0]), rows[0]["source"], rows[0]["state"]) if rows else None


def reachable_wan_meter(store: Store, mrid: str) -> MeterSpec | None:
    """An active meter that calls over the WAN itself (bus "wan"), or None; the meters behind a DCU
    (identity "dcu") are not: the DCU reports for them and answers nothing."""
    rows = list(
        store.query(
            "SELECT * FROM meters WHERE mrid = ? AND bus = ? AND state = ?"
            " AND json_extract(identity, '$.dcu') IS NULL",
            [mrid, WAN_BUS, ACTIVE],
        )
    )
    return _spec(rows[0]) if rows else None


def list_meters(store: Store) -> list[dict]:
    """Every registered meter, as rows (for the console and `hes status`)."""
    return [
        {**row, "identity": json.loads(row["identity"])}
        for row in store.query(
            "SELECT mrid, bus, protocol, address, model, source, state, identity FROM meters ORDER BY mrid"
        )
    ]
