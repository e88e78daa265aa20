"""Communication statistics: how each meter and each bus answers, kept in the store for the MDM,
the console and the backoff of meters that keep failing."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from appliance.errors import CrcError, DeviceTimeout, HesError, ProtocolError
from appliance.store.db import Store


class Outcome(StrEnum):
    """How one poll of one meter ended."""

    OK = "ok"
    TIMEOUT = "timeout"
    CRC_ERROR = "crc_error"
    PROTOCOL_ERROR = "protocol_error"
    REFUSED = "refused"


def outcome_of(error: HesError) -> Outcome:
    """How a poll that raised `error` ended, for the statistics."""
    if isinstance(error, DeviceTimeout):
        return Outcome.TIMEOUT
    if isinstance(error, CrcError):
        return Outcome.CRC_ERROR
    if isinstance(error, ProtocolError):
        return Outcome.PROTOCOL_ERROR
    return Outcome.REFUSED


_COUNTER = {
    Outcome.OK: "successes",
    Outcome.TIMEOUT: "timeouts",
    Outcome.CRC_ERROR: "crc_errors",
    Outcome.PROTOCOL_ERROR: "protocol_errors",
    Outcome.REFUSED: "refusals",
}


def record_poll(store: Store, mrid: str, outcome: Outcome, at: int, response_ms: int, error: str = "") -> int:
    """Count one poll; returns the meter's streak of consecutive failures after it (0 on success)."""
    ok = outcome is Outcome.OK
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO meter_stats (meter) VALUES (?) ON CONFLICT (meter) DO NOTHING",
            (store.meter_key(mrid),),
        )
        conn.execute(
            f"""UPDATE meter_stats SET
                  attempts = attempts + 1,
                  {_COUNTER[outcome]} = {_COUNTER[outcome]} + 1,
                  consecutive_failures = CASE WHEN :ok THEN 0 ELSE consecutive_failures + 1 END,
                  response_ms_total = response_ms_total + CASE WHEN :ok THEN :ms ELSE 0 END,
                  last_attempt = :at,
                  last_success = CASE WHEN :ok THEN :at ELSE last_success END,
                  last_error = CASE WHEN :ok THEN last_error ELSE :error END
                WHERE meter = :meter""",  # noqa: S608 (the column name comes from _COUNTER, not input)
            {"ok": ok, "ms": response_ms, "at": at, "error": error[:200], "meter": store.meter_key(mrid)},
        )
        return conn.execute(
            "SELECT consecutive_failures FROM meter_stats WHERE meter = ?", (store.meter_key(mrid),)
        ).fetchone()[0]


def failure_streak(store: Store, mrid: str) -> int:
    """The meter's consecutive failures so far (0 for a meter never polled)."""
    row = store.conn.execute(
        "SELECT consecutive_failures FROM meter_stats WHERE meter = ?", (store.meter_key(mrid),)
    ).fetchone()
    return row[0] if row else 0


_COLUMNS = "attempts, successes, timeouts, crc_errors, protocol_errors, refusals"


def meter_stats(store: Store) -> list[dict[str, Any]]:
    """Every polled meter's statistics, with its average response time in milliseconds."""
    rows = store.query(
        f"""SELECT m.mrid, m.bus, {_COLUMNS}, s.consecutive_failures, s.last_attempt, s.last_success,
                   s.last_error, CASE WHEN successes THEN response_ms_total / successes END AS response_ms
            FROM meter_stats s JOIN meters m ON m.id = s.meter ORDER BY m.mrid"""  # noqa: S608
    )
    return list(rows)


def bus_stats(store: Store) -> dict[str, dict[str, int]]:
    """The same counters summed per bus."""
    sums = ", ".join(f"sum({column}) AS {column}" for column in _COLUMNS.split(", "))
    rows = store.query(
        f"SELECT m.bus, {sums} FROM meter_stats s JOIN meters m ON m.id = s.meter GROUP BY m.bus"  # noqa: S608
    )
    return {row.pop("bus"): row for row in rows}
