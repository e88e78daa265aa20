"""Totals in the store: the virtual devices they belong to, the member readings they are made from,
and the partial ones with who was missing. A total is an ordinary reading of its virtual device."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from appliance.model import Reading, epoch
from appliance.store.db import Store
from appliance.store.readings import insert_readings, reading_from_row

DERIVED = "derived"  # meters.protocol of a virtual device: never polled (registry.active_meters)


@dataclass(frozen=True)
class Total:
    """A group's total for one slot and ReadingType, with its members: how many, which were missing."""

    reading: Reading
    members: int
    missing: tuple[str, ...] = ()


def register_devices(store: Store, mrids: Iterable[str], now: int) -> set[str]:
    """Make sure each total's virtual device is registered; returns the mRIDs that are virtual
    devices. One a physical meter already holds is left alone (its readings are not ours to add to)."""
    mrids = list(mrids)
    with store.transaction() as conn:
        conn.executemany(
            """INSERT OR IGNORE INTO meters
                 (mrid, bus, protocol, address, model, source, created_at, updated_at)
               VALUES (?, NULL, ?, NULL, 'total', 'aggregation', ?, ?)""",
            [(mrid, DERIVED, now, now) for mrid in mrids],
        )
        marks = ", ".join("?" * len(mrids))
        rows = conn.execute(
            f"SELECT mrid FROM meters WHERE protocol = ? AND mrid IN ({marks})",  # noqa: S608
            (DERIVED, *mrids),
        )
        return {row[0] for row in rows}


def slot_readings(
    store: Store, mrids: Sequence[str], codes: Sequence[str], start: int, end: int, interval_s: int
) -> list[Reading]:
    """Readings of `mrids` of the ReadingTypes `codes` stamped on a slot boundary (ts a multiple of
    interval_s) with start <= ts <= end."""
    if not mrids or not codes:
        return []
    meters, types = ", ".join("?" * len(mrids)), ", ".join("?" * len(codes))
    rows = store.conn.execute(
        # CROSS JOIN keeps the time range of `readings` the outer loop whatever the planner's statistics
        # say: one pass over the window, not one per member and ReadingType.
        f"""SELECT r.ts, m.mrid, t.code, r.value, r.quality
            FROM readings r CROSS JOIN meters m ON m.id = r.meter CROSS JOIN reading_types t ON t.id = r.rtype
            WHERE r.ts >= ? AND r.ts <= ? AND r.ts % ? = 0
              AND m.mrid IN ({meters}) AND t.code IN ({types})""",  # noqa: S608
        (start, end, interval_s, *mrids, *codes),
    )
    return [reading_from_row(*row) for row in rows]


def save_totals(store: Store, totals: Sequence[Total], collected_at: int) -> int:
    """Store totals and the partial ones' members in one transaction; returns how many totals were new.

    A total already stored is ignored (the readings key), so recomputing a slot never duplicates it.
    """
    if not totals:
        return 0
    with store.transaction() as conn:
        new = insert_readings(store, conn, [t.reading for t in totals], collected_at)
        conn.executemany(
            "INSERT OR IGNORE INTO partial_totals (ts, device, rtype, members, missing)"
            " VALUES (?, ?, ?, ?, ?)",
            [
                (
                    epoch(t.reading.timestamp),
                    store.meter_key(t.reading.meter_id),
                    store.reading_type_key(t.reading.reading_type.code),
                    t.members,
                    ",".join(t.missing),
                )
                for t in totals
                if t.missing
            ],
        )
        return new


def partial_totals(store: Store, mrid: str, start: int, end: int) -> list[Total]:
    """A virtual device's partial totals with start <= ts < end, in time order, with who was missing."""
    rows = store.conn.execute(
        """SELECT r.ts, m.mrid, t.code, r.value, r.quality, p.members, p.missing
           FROM partial_totals p JOIN readings r ON r.ts = p.ts AND r.meter = p.device AND r.rtype = p.rtype
           JOIN meters m ON m.id = p.device JOIN reading_types t ON t.id = p.rtype
           WHERE p.ts >= ? AND p.ts < ? AND m.mrid = ? ORDER BY p.ts, t.code""",
        (start, end, mrid),
    )
    return [
        Total(reading_from_row(ts, device, code, value, quality), members, tuple(missing.split(",")))
        for ts, device, code, value, quality, members, missing in rows
    ]


def prune_partial_totals(store: Store, before_ts: int) -> int:
    """Forget who was missing from totals older than `before_ts` (their readings age out the same way)."""
    with store.transaction() as conn:
        return conn.execute("DELETE FROM partial_totals WHERE ts < ?", (before_ts,)).rowcount
