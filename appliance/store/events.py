"""Meter events in the store: saved with their poll's readings, queued for the uplink like them."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime

from appliance.model import Event, epoch, utc_from_epoch
from appliance.store.db import Store


def insert_events(store: Store, conn: sqlite3.Connection, events: Sequence[Event], collected_at: int) -> int:
    """Inside a caller's transaction: store events, ignoring ones stored already; returns the new ones."""
    cursor = conn.executemany(
        "INSERT OR IGNORE INTO events (ts, meter, type, reason, details, collected_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (
                epoch(e.created),
                store.meter_key(e.device_id),
                e.event_type,
                e.reason,
                json.dumps(e.details),
                collected_at,
            )
            for e in events
        ],
    )
    return cursor.rowcount


def _event(ts: int, mrid: str, kind: str, reason: str, details: str) -> Event:
    return Event(
        mrid, kind, utc_from_epoch(ts), reason, "", tuple(tuple(pair) for pair in json.loads(details))
    )


def oldest_unsent_events(store: Store, limit: int) -> tuple[list[Event], list[tuple[int, int, str]]]:
    """Up to `limit` events not yet in a message, oldest first, with their queue keys."""
    rows = store.conn.execute(
        """SELECT u.ts, u.meter, u.type, m.mrid, e.reason, e.details FROM unsent_events u
           JOIN events e ON e.ts = u.ts AND e.meter = u.meter AND e.type = u.type
           JOIN meters m ON m.id = u.meter
           ORDER BY u.ts, u.meter, u.type LIMIT ?""",
        (limit,),
    ).fetchall()
    events = [_event(ts, mrid, kind, reason, details) for ts, _, kind, mrid, reason, details in rows]
    return events, [(ts, meter, kind) for ts, meter, kind, *_ in rows]


def last_event_time(store: Store, mrid: str) -> datetime | None:
    """When the newest stored event of `mrid` happened (None if none): where its log is read from."""
    row = store.conn.execute(
        "SELECT ts FROM events WHERE meter = ? ORDER BY ts DESC LIMIT 1", (store.meter_key(mrid),)
    ).fetchone()
    return utc_from_epoch(row[0]) if row else None


def events_of(store: Store, mrid: str) -> list[Event]:
    """A meter's stored events in time order (sent or not)."""
    rows = store.conn.execute(
        """SELECT e.ts, m.mrid, e.type, e.reason, e.details FROM events e JOIN meters m ON m.id = e.meter
           WHERE m.mrid = ? ORDER BY e.ts, e.type""",
        (mrid,),
    )
    return [_event(*row) for row in rows]
