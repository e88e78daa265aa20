"""Outbox bookkeeping in the store: readings waiting, messages built, messages acknowledged.

A reading leaves `unsent` in the same transaction that stores the message carrying it, and the
message stays until its PUBACK: a crash at any point loses nothing, and a message sent again is
byte-identical (same MessageID).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from appliance.model import Reading
from appliance.store.db import Store
from appliance.store.readings import reading_from_row


class Priority(IntEnum):
    """Lower goes first: answers to the MDM, then alarms, then bulk readings."""

    REPLY = 0
    ALARM = 1
    READINGS = 2


@dataclass(frozen=True)
class UnsentBatch:
    """The oldest readings not yet in any message, with their keys in `unsent`."""

    readings: list[Reading]
    keys: list[tuple[int, int, int]]


@dataclass(frozen=True)
class OutboxMessage:
    """A built message waiting for the broker's acknowledgement."""

    id: int
    message_id: str
    priority: int
    topic: str
    content_type: str
    payload: bytes
    readings: int
    correlation_data: bytes | None = None  # MQTT 5 Correlation Data of a reply


def oldest_unsent(store: Store, limit: int) -> UnsentBatch:
    """Up to `limit` readings not yet in a message, oldest first."""
    rows = store.conn.execute(
        """SELECT u.ts, u.meter, u.rtype, m.mrid, t.code, r.value, r.quality
           FROM unsent u
           JOIN readings r ON r.ts = u.ts AND r.meter = u.meter AND r.rtype = u.rtype
           JOIN meters m ON m.id = u.meter JOIN reading_types t ON t.id = u.rtype
           ORDER BY u.ts, u.meter, u.rtype LIMIT ?""",
        (limit,),
    ).fetchall()
    return UnsentBatch(
        readings=[reading_from_row(ts, mrid, code, value, q) for ts, _, _, mrid, code, value, q in rows],
        keys=[(ts, meter, rtype) for ts, meter, rtype, *_ in rows],
    )


def insert_message(
    conn: sqlite3.Connection,
    *,
    message_id: str,
    priority: Priority,
    topic: str,
    content_type: str,
    payload: bytes,
    created_at: int,
    correlation_data: bytes | None = None,
    carried: Sequence[tuple[int, int, int]] = (),
    carried_events: Sequence[tuple[int, int, str]] = (),
) -> int:
    """Inside a caller's transaction: store a built message and take what it carries off the queues."""
    cursor = conn.execute(
        """INSERT INTO outbox (message_id, priority, topic, content_type, payload, readings,
                               oldest_ts, created_at, correlation_data)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (
            message_id,
            int(priority),
            topic,
            content_type,
            payload,
            len(carried),
            min((k[0] for k in carried), default=None),
            created_at,
            correlation_data,
        ),
    )
    conn.executemany("DELETE FROM unsent WHERE ts = ? AND meter = ? AND rtype = ?", carried)
    conn.executemany("DELETE FROM unsent_events WHERE ts = ? AND meter = ? AND type = ?", carried_events)
    return cursor.lastrowid


def pending_messages(
    store: Store, limit: int, skip: set[int] | frozenset[int] = frozenset()
) -> list[OutboxMessage]:
    """Messages not yet acknowledged, in sending order, leaving out the ids in `skip`."""
    rows = store.conn.execute(
        """SELECT id, message_id, priority, topic, content_type, payload, readings, correlation_data
           FROM outbox
           WHERE acked_at IS NULL ORDER BY priority, id LIMIT ?""",
        (limit + len(skip),),
    ).fetchall()
    return [OutboxMessage(*row) for row in rows if row[0] not in skip][:limit]


def mark_acked(store: Store, outbox_ids: list[int], when: int) -> None:
    """Record PUBACKs: the messages are delivered, their payloads need not be kept."""
    with store.transaction() as conn:
        conn.executemany(
            "UPDATE outbox SET acked_at = ?, payload = NULL WHERE id = ? AND acked_at IS NULL",
            [(when, i) for i in outbox_ids],
        )


def backlog(store: Store) -> dict[str, int | None]:
    """What waits for the uplink: readings not yet packed, messages not yet acknowledged."""
    unsent, oldest = store.conn.execute("SELECT count(*), min(ts) FROM unsent").fetchone()
    unsent_events = store.conn.execute("SELECT count(*) FROM unsent_events").fetchone()[0]
    pending, pending_readings = store.conn.execute(
        "SELECT count(*), coalesce(sum(readings), 0) FROM outbox WHERE acked_at IS NULL"
    ).fetchone()
    acked_messages, acked_readings = store.conn.execute(
        "SELECT count(*), coalesce(sum(readings), 0) FROM outbox WHERE acked_at IS NOT NULL"
    ).fetchone()
    return {
        "unsent_readings": unsent,
        "unsent_events": unsent_events,
        "oldest_unsent_ts": oldest,
        "pending_messages": pending,
        "pending_readings": pending_readings,
        "acked_messages": acked_messages,
        "acked_readings": acked_readings,
    }
