"""Pruning the store: old sent data first, unsent data only as the last resort.

"Sent" means out of the `unsent` queue: its message is either acknowledged or kept byte for byte
in the outbox until it is, so deleting the reading row loses nothing on its way to the MDM.
"""

from __future__ import annotations

import sqlite3

from appliance.store.db import Store

_PRUNE_SENT = """
    DELETE FROM readings WHERE (ts, meter, rtype) IN (
      SELECT ts, meter, rtype FROM readings r
      WHERE r.ts < :before
        AND NOT EXISTS (SELECT 1 FROM unsent u WHERE u.ts = r.ts AND u.meter = r.meter AND u.rtype = r.rtype)
      ORDER BY r.ts LIMIT :limit)"""
_DROP_UNSENT_READINGS = """
    DELETE FROM readings WHERE (ts, meter, rtype) IN (
      SELECT ts, meter, rtype FROM unsent ORDER BY ts LIMIT ?)"""
_DROP_UNSENT_QUEUE = """
    DELETE FROM unsent WHERE (ts, meter, rtype) IN (
      SELECT ts, meter, rtype FROM unsent ORDER BY ts LIMIT ?)"""
_END_OF_TIME = 2**62


def used_bytes(store: Store) -> int:
    """Bytes of the database file holding data (free pages excluded)."""
    page_size = store.conn.execute("PRAGMA page_size").fetchone()[0]
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    free = store.conn.execute("PRAGMA freelist_count").fetchone()[0]
    return (pages - free) * page_size


def prune_audit(store: Store, before_ts: int) -> int:
    """Delete console audit rows older than `before_ts`; returns how many."""
    with store.transaction() as conn:
        return conn.execute("DELETE FROM console_audit WHERE ts < ?", (before_ts,)).rowcount


def prune_sent(store: Store, limit: int, before_ts: int | None = None) -> int:
    """Delete up to `limit` of the oldest sent readings (only those older than `before_ts` if given),
    with the acknowledged outbox rows of that age; returns the readings deleted."""
    with store.transaction() as conn:
        deleted = conn.execute(
            _PRUNE_SENT, {"before": _END_OF_TIME if before_ts is None else before_ts, "limit": limit}
        ).rowcount
        if before_ts is not None:
            conn.execute("DELETE FROM outbox WHERE acked_at IS NOT NULL AND acked_at < ?", (before_ts,))
        return deleted


def drop_oldest_unsent(conn: sqlite3.Connection, limit: int) -> tuple[int, int | None, int | None]:
    """Inside a caller's transaction: delete the `limit` oldest unsent readings.

    Returns how many, and the first and last of their times, for the alarm that must go with them.
    """
    count, oldest, newest = conn.execute(
        "SELECT count(*), min(ts), max(ts) FROM (SELECT ts FROM unsent ORDER BY ts LIMIT ?)", (limit,)
    ).fetchone()
    conn.execute(_DROP_UNSENT_READINGS, (limit,))
    conn.execute(_DROP_UNSENT_QUEUE, (limit,))
    return count, oldest, newest
