"""The command journal: every request from the MDM, what became of it, and for which meters.

A request is journalled in the transaction that also queues its synchronous reply, and only then
acknowledged to the broker, so nothing the MDM sent is lost in a crash and nothing is done twice
(the MessageID is unique). Each meter a request names is a target with its own state; the request
is finished when all its targets are, and its outcome reply is queued in that same transaction.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from appliance.store.db import Store


class State(StrEnum):
    """Where a request or one of its targets stands. (`received`: in the broker's hands until
    journalled, never stored.)"""

    ACCEPTED = "accepted"  # journalled, the synchronous reply queued
    QUEUED = "queued"  # handed to its bus
    EXECUTING = "executing"  # the bus is on it
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"


FINAL_STATES = (State.SUCCEEDED, State.FAILED, State.EXPIRED)


@dataclass(frozen=True)
class Target:
    """One meter of one request."""

    command: int
    meter: str
    kind: str
    state: State
    error_code: str = ""
    reason: str = ""
    detail: dict[str, Any] | None = None


@dataclass(frozen=True)
class Command:
    """One journalled request."""

    id: int
    message_id: str
    correlation_id: str
    verb: str
    noun: str
    source: str
    reply_topic: str
    request: dict[str, Any]
    priority: int
    state: State
    received_at: int
    expires_at: int
    reply_result: str  # the synchronous reply: OK, PARTIAL or FAILED, with its code and reason
    reply_code: str
    reply_reason: str
    outcome_code: str  # set when the request is finished
    outcome_reason: str
    reply_correlation: bytes | None  # the request's MQTT 5 Correlation Data, for its replies


_COMMAND_COLUMNS = (
    "id, message_id, correlation_id, verb, noun, source, reply_topic, request, priority, state,"
    " received_at, expires_at, reply_result, reply_code, reply_reason, outcome_code, outcome_reason,"
    " reply_correlation"
)


def _command(row: tuple) -> Command:
    values = list(row)
    values[7] = json.loads(values[7])
    values[9] = State(values[9])
    return Command(*values)


def insert_command(
    conn: sqlite3.Connection,
    *,
    message_id: str,
    correlation_id: str,
    verb: str,
    noun: str,
    source: str,
    reply_topic: str,
    request: dict[str, Any],
    priority: int,
    state: State,
    received_at: int,
    expires_at: int,
    targets: list[Target],
    reply: tuple[str, str, str],
    reply_correlation: bytes | None = None,
) -> int:
    """Inside a caller's transaction: journal a request, its targets and its synchronous reply
    (result, code, reason); returns its id. A request refused outright is finished at once."""
    finished = received_at if state in FINAL_STATES else None
    outcome = reply[1:] if finished else ("", "")
    cursor = conn.execute(
        """INSERT INTO commands (message_id, correlation_id, verb, noun, source, reply_topic, request,
                                 priority, state, received_at, expires_at, finished_at, reply_result,
                                 reply_code, reply_reason, outcome_code, outcome_reason,
                                 reply_correlation)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (
            message_id,
            correlation_id,
            verb,
            noun,
            source,
            reply_topic,
            json.dumps(request, sort_keys=True),
            priority,
            state.value,
            received_at,
            expires_at,
            finished,
            *reply,
            *outcome,
            reply_correlation,
        ),
    )
    command_id = cursor.lastrowid
    conn.executemany(
        """INSERT INTO command_targets (command, meter, kind, state, error_code, reason, detail, updated_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
        [
            (
                command_id,
                t.meter,
                t.kind,
                t.state.value,
                t.error_code,
                t.reason,
                json.dumps(t.detail or {}, sort_keys=True),
                received_at,
            )
            for t in targets
        ],
    )
    return command_id


def command_by_message_id(store: Store, message_id: str) -> Command | None:
    """The journalled request with this MessageID, if any: a duplicate is answered from it."""
    row = store.conn.execute(
        f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE message_id = ?",  # noqa: S608
        (message_id,),
    ).fetchone()
    return _command(row) if row else None


def open_commands(store: Store) -> list[Command]:
    """Requests not finished, in the order they run: priority, then arrival."""
    rows = store.conn.execute(
        f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE finished_at IS NULL ORDER BY priority, id"  # noqa: S608
    ).fetchall()
    return [_command(row) for row in rows]


def targets_of(store: Store, command_id: int) -> list[Target]:
    """The meters of one request, in name order."""
    rows = store.conn.execute(
        """SELECT command, meter, kind, state, error_code, reason, detail FROM command_targets
           WHERE command = ? ORDER BY meter""",
        (command_id,),
    ).fetchall()
    return [Target(c, m, k, State(s), e, r, json.loads(d)) for c, m, k, s, e, r, d in rows]


def set_target(
    conn: sqlite3.Connection,
    command_id: int,
    meter: str,
    state: State,
    now: int,
    error_code: str = "",
    reason: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    """Inside a caller's transaction: move one target on; the request follows its first target."""
    conn.execute(
        """UPDATE command_targets SET state = ?, error_code = ?, reason = ?, detail = ?, updated_at = ?
           WHERE command = ? AND meter = ?""",
        (state.value, error_code, reason, json.dumps(detail or {}, sort_keys=True), now, command_id, meter),
    )
    if state in (State.QUEUED, State.EXECUTING):
        conn.execute(
            "UPDATE commands SET state = ? WHERE id = ? AND finished_at IS NULL", (state.value, command_id)
        )


def mark_executing(store: Store, command_id: int, meter: str, now: int) -> None:
    """From the bus thread, as the job starts: the target is on the wire now."""
    with store.transaction() as conn:
        set_target(conn, command_id, meter, State.EXECUTING, now)


def finish_command(
    conn: sqlite3.Connection, command_id: int, state: State, now: int, code: str, reason: str
) -> None:
    """Inside a caller's transaction (the one that queues the outcome reply): the request is done."""
    conn.execute(
        "UPDATE commands SET state = ?, finished_at = ?, outcome_code = ?, outcome_reason = ? WHERE id = ?",
        (state.value, now, code, reason, command_id),
    )


def reopen_interrupted(store: Store, now: int) -> int:
    """At start-up: targets a crash left queued or executing go back to accepted, to run again
    (a relay operation or a read done twice ends the same way). Returns how many."""
    with store.transaction() as conn:
        cursor = conn.execute(
            "UPDATE command_targets SET state = 'accepted', updated_at = ?"
            " WHERE state IN ('queued', 'executing')",
            (now,),
        )
        conn.execute(
            "UPDATE commands SET state = 'accepted' WHERE finished_at IS NULL AND state != 'accepted'"
        )
    return cursor.rowcount


def relay_operations_since(store: Store, meter: str, since: int) -> int:
    """Relay operations for `meter` since `since`: those journalled, leaving out those refused before
    they reached the meter (error codes other than 6.x), and the console's. The rate limit's count,
    durable across restarts."""
    row = store.conn.execute(
        """SELECT (SELECT count(*) FROM command_targets t JOIN commands c ON c.id = t.command
                    WHERE t.meter = ?1 AND t.kind = 'relay' AND c.received_at >= ?2
                      AND (t.error_code = '' OR t.error_code LIKE '6.%'))
                + (SELECT count(*) FROM relay_operations WHERE meter = ?1 AND at >= ?2)""",
        (meter, since),
    ).fetchone()
    return row[0]


def record_relay_operation(store: Store, meter: str, at: int, source: str) -> None:
    """A relay operation outside the command journal (the console's), for the rate limit."""
    with store.transaction() as conn:
        conn.execute("INSERT INTO relay_operations (meter, at, source) VALUES (?, ?, ?)", (meter, at, source))
