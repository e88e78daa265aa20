"""Devices that connect over the WAN: who they are (logical device name), what they are registered
as, and how their connections go.

A WAN meter is also an ordinary registered meter (`meters`, bus `wan`): readings, statistics and
commands find it by its mRID like any other. A DCU has only its row here; the meters behind it name
it as their parent. A meter that someone else registered (the MDM's MeterConfig, the config) is
recognised when its bus is `wan` and its mRID, or its identity's `logical_device_name`, is the
logical device name the device presents.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from appliance.store.db import Store

WAN_BUS = "wan"
METER, DCU = "meter", "dcu"
REGISTERED, REFUSED = "registered", "refused"


@dataclass(frozen=True)
class WanDevice:
    """One device as the registry knows it."""

    logical_name: str
    mrid: str
    kind: str
    parent: str | None = None


def find_device(store: Store, logical_name: str) -> WanDevice | None:
    """The registered device presenting `logical_name`, or None (unknown, refused before, or a meter
    the MDM removed)."""
    row = store.conn.execute(
        """SELECT w.mrid, w.kind, w.parent FROM wan_devices w LEFT JOIN meters m ON m.mrid = w.mrid
           WHERE w.logical_name = ? AND w.status = ? AND (w.kind = ? OR m.state = 'active')""",
        (logical_name, REGISTERED, DCU),
    ).fetchone()
    if row is not None:
        return WanDevice(logical_name, row[0], row[1], row[2])
    row = store.conn.execute(
        """SELECT mrid FROM meters WHERE bus = ? AND state = 'active'
             AND (mrid = ? OR json_extract(identity, '$.logical_device_name') = ?)""",
        (WAN_BUS, logical_name, logical_name),
    ).fetchone()
    return WanDevice(logical_name, row[0], METER) if row is not None else None


def add_device(conn: sqlite3.Connection, device: WanDevice, now: int) -> None:
    """Inside the caller's transaction: `device` is registered (a device refused before included)."""
    conn.execute(
        """INSERT INTO wan_devices (logical_name, mrid, kind, parent, status, created_at)
           VALUES (?, ?, ?, ?, ?, ?)
           ON CONFLICT (logical_name) DO UPDATE SET
             mrid = excluded.mrid, kind = excluded.kind, parent = excluded.parent,
             status = excluded.status""",
        (device.logical_name, device.mrid, device.kind, device.parent, REGISTERED, now),
    )


def note_refusal(
    conn: sqlite3.Connection, logical_name: str, kind: str, parent: str | None, now: int, alarm_every_s: int
) -> bool:
    """Inside the caller's transaction: count a refusal; True when its alarm is due (then marked sent).

    A refused device usually calls again at once: one alarm per `alarm_every_s` tells the MDM enough.
    """
    conn.execute(
        """INSERT INTO wan_devices (logical_name, kind, parent, status, created_at) VALUES (?, ?, ?, ?, ?)
           ON CONFLICT (logical_name) DO NOTHING""",
        (logical_name, kind, parent, REFUSED, now),
    )
    cursor = conn.execute(
        """UPDATE wan_devices SET last_refusal_alarm = ?
           WHERE logical_name = ? AND (last_refusal_alarm IS NULL OR last_refusal_alarm <= ?)""",
        (now, logical_name, now - alarm_every_s),
    )
    conn.execute("UPDATE wan_devices SET refusals = refusals + 1 WHERE logical_name = ?", (logical_name,))
    return cursor.rowcount > 0


def note_connected(store: Store, device: WanDevice, peer: str, now: int) -> None:
    """A connection of `device` began."""
    with store.transaction() as conn:
        add_device(conn, device, now)  # a meter registered elsewhere gets its row here
        conn.execute(
            """UPDATE wan_devices SET connections = connections + 1, last_connected = ?, last_peer = ?
               WHERE logical_name = ?""",
            (now, peer, device.logical_name),
        )


def note_disconnected(store: Store, logical_name: str, reason: str, now: int) -> None:
    """A connection of `logical_name` ended, and why (`idle`, `closed by the device`, an error)."""
    with store.transaction() as conn:
        conn.execute(
            "UPDATE wan_devices SET last_disconnected = ?, last_close = ? WHERE logical_name = ?",
            (now, reason[:200], logical_name),
        )


def wan_devices(store: Store) -> list[dict[str, Any]]:
    """Every device that ever called, registered or refused, with its connection health."""
    return list(store.query("SELECT * FROM wan_devices ORDER BY kind, logical_name"))
