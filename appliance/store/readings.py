"""Readings in the store: one transaction per poll result, duplicates ignored by key."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from appliance.model import Event, Reading, ReadingType, epoch, reading_type, utc_from_epoch
from appliance.store.db import Store
from appliance.store.events import insert_events


def save_readings(
    store: Store, readings: Sequence[Reading], collected_at: int, events: Sequence[Event] = ()
) -> int:
    """Store a poll's readings (and the events it found) in one transaction; returns how many
    readings and events were new.

    A reading whose (time, meter, ReadingType) is already stored is ignored, so reading the same
    interval again stores nothing twice and queues nothing twice for the uplink; so is an event.
    """
    if not readings and not events:
        return 0
    with store.transaction() as conn:
        new_events = insert_events(store, conn, events, collected_at) if events else 0
        return insert_readings(store, conn, readings, collected_at) + new_events


def insert_readings(
    store: Store, conn: sqlite3.Connection, readings: Sequence[Reading], collected_at: int
) -> int:
    """Inside a caller's transaction: store readings, ignoring ones stored already; returns the new ones."""
    rows = [
        (
            epoch(r.timestamp),
            store.meter_key(r.meter_id),
            store.reading_type_key(r.reading_type.code),
            str(r.value),
            ",".join(r.qualities),
            collected_at,
        )
        for r in readings
    ]
    cursor = conn.executemany(
        "INSERT OR IGNORE INTO readings (ts, meter, rtype, value, quality, collected_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
    return cursor.rowcount


def reading_from_row(ts: int, mrid: str, code: str, value: str, quality: str) -> Reading:
    """A Reading from the columns the store keeps."""
    return Reading(
        meter_id=mrid,
        reading_type=reading_type(code),
        timestamp=utc_from_epoch(ts),
        value=Decimal(value),
        qualities=tuple(quality.split(",")) if quality else (),
    )


def readings_between(store: Store, mrid: str, start: int, end: int) -> list[Reading]:
    """A meter's stored readings with start <= ts < end, in time order (sent or not)."""
    rows = store.conn.execute(
        """SELECT r.ts, m.mrid, t.code, r.value, r.quality
           FROM readings r JOIN meters m ON m.id = r.meter JOIN reading_types t ON t.id = r.rtype
           WHERE r.ts >= ? AND r.ts < ? AND m.mrid = ?
           ORDER BY r.ts, t.code""",
        (start, end, mrid),
    )
    return [reading_from_row(*row) for row in rows]


def count_readings(store: Store) -> int:
    """How many readings the store holds."""
    return store.conn.execute("SELECT count(*) FROM readings").fetchone()[0]


def last_stored(store: Store, mrid: str, reading_types: list[ReadingType]) -> datetime | None:
    """The time of the newest stored reading of `mrid` of any of `reading_types` (None if none).

    Walks the (time-first) key backwards and stops at the first match: a meter's newest reading is
    among the newest rows, where a max() with this filter would scan the whole table.
    """
    keys = [store.reading_type_key(rt.code) for rt in reading_types]
    marks = ", ".join("?" * len(keys))
    row = store.conn.execute(
        f"SELECT ts FROM readings WHERE meter = ? AND rtype IN ({marks}) ORDER BY ts DESC LIMIT 1",  # noqa: S608
        (store.meter_key(mrid), *keys),
    ).fetchone()
    return utc_from_epoch(row[0]) if row else None


def last_reading(
    store: Store, mrid: str, code: str, before: datetime, not_before: datetime
) -> Reading | None:
    """The newest stored reading of one series with not_before <= ts < before (None if none): what
    the edge quality checks compare a new value with.

    Walks the time-first key backwards from `before`; `not_before` bounds the walk for a series that
    has nothing stored. The ReadingType is matched by code, so looking never writes.
    """
    row = store.conn.execute(
        """SELECT r.ts, m.mrid, t.code, r.value, r.quality
           FROM readings r JOIN meters m ON m.id = r.meter JOIN reading_types t ON t.id = r.rtype
           WHERE r.ts < ? AND r.ts >= ? AND r.meter = ? AND t.code = ?
           ORDER BY r.ts DESC LIMIT 1""",
        (epoch(before), epoch(not_before), store.meter_key(mrid), code),
    ).fetchone()
    return reading_from_row(*row) if row else None
