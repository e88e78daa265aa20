"""Tariff costs, billing periods and prepay accounts in the store (tables: schema.py, issue 10).

Costs sit beside the readings, keyed like them (ts, meter, ReadingType): an interval is apportioned
once, whatever happens to its reading. Amounts are exact decimal strings.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from decimal import Decimal

from appliance.store.db import Store
from appliance.tariff.prepay import Account, Relay


@dataclass(frozen=True)
class Pending:
    """An interval reading waiting for its cost."""

    ts: int
    meter: int
    rtype: int
    mrid: str
    code: str
    value: Decimal


def watch_series(store: Store, series: list[tuple[str, str]]) -> None:
    """Make `tariff_series` exactly these (meter mRID, energy ReadingType code) pairs: from now on
    their new readings queue for apportionment. Meters must be registered."""
    with store.transaction() as conn:
        keys = [(store.meter_key(mrid), store.reading_type_key(code)) for mrid, code in series]
        conn.execute("DELETE FROM tariff_series")
        conn.executemany("INSERT OR IGNORE INTO tariff_series (meter, rtype) VALUES (?, ?)", keys)


def pending(store: Store, limit: int) -> list[Pending]:
    """Queued interval readings, per meter and series in time order."""
    rows = store.conn.execute(
        """SELECT p.ts, p.meter, p.rtype, m.mrid, t.code, r.value FROM tariff_pending p
           JOIN readings r ON r.ts = p.ts AND r.meter = p.meter AND r.rtype = p.rtype
           JOIN meters m ON m.id = p.meter JOIN reading_types t ON t.id = p.rtype
           ORDER BY p.meter, p.rtype, p.ts LIMIT ?""",
        (limit,),
    ).fetchall()
    return [
        Pending(ts, meter, rtype, mrid, code, Decimal(value)) for ts, meter, rtype, mrid, code, value in rows
    ]


def drop_pending(conn: sqlite3.Connection, item: Pending) -> None:
    """Inside a caller's transaction: the interval is dealt with."""
    conn.execute(
        "DELETE FROM tariff_pending WHERE ts = ? AND meter = ? AND rtype = ?",
        (item.ts, item.meter, item.rtype),
    )


def forget_unpriced(store: Store) -> int:
    """Queued readings of series no tariff prices any longer (an assignment was removed)."""
    with store.transaction() as conn:
        return conn.execute(
            """DELETE FROM tariff_pending WHERE NOT EXISTS (SELECT 1 FROM tariff_series s
               WHERE s.meter = tariff_pending.meter AND s.rtype = tariff_pending.rtype)"""
        ).rowcount


def previous_snapshot(store: Store, item: Pending, not_before: int) -> tuple[int, Decimal] | None:
    """The newest stored reading of the series before `item` (not before `not_before`)."""
    row = store.conn.execute(
        """SELECT ts, value FROM readings WHERE meter = ? AND rtype = ? AND ts < ? AND ts >= ?
           ORDER BY ts DESC LIMIT 1""",
        (item.meter, item.rtype, item.ts, not_before),
    ).fetchone()
    return (row[0], Decimal(row[1])) if row else None


def covered(store: Store, item: Pending) -> bool:
    """Whether the next charged interval of the series spans `item` already: a snapshot that
    arrived after the gap around it was charged."""
    row = store.conn.execute(
        """SELECT start FROM tariff_intervals WHERE meter = ? AND rtype = ? AND ts > ? AND state = 'charged'
           ORDER BY ts LIMIT 1""",
        (item.meter, item.rtype, item.ts),
    ).fetchone()
    return row is not None and row[0] < item.ts


def usage(conn: sqlite3.Connection, meter: int, billing_start: int) -> Decimal:
    """kWh apportioned so far in a meter's billing period."""
    row = conn.execute(
        "SELECT energy FROM tariff_usage WHERE meter = ? AND billing_start = ?", (meter, billing_start)
    ).fetchone()
    return Decimal(row[0]) if row else Decimal(0)


def record_interval(
    conn: sqlite3.Connection,
    item: Pending,
    *,
    start: int,
    billing_start: int,
    tariff: str,
    state: str,
    energy: Decimal,
    slices: list[tuple[str, int, Decimal, Decimal]],
) -> bool:
    """Inside a caller's transaction: one apportioned interval, its slices (period, block, energy,
    amount) and the billing period's running total. False (nothing written) if it was there already."""
    amount = sum((s[3] for s in slices), Decimal(0))
    cursor = conn.execute(
        """INSERT OR IGNORE INTO tariff_intervals
           (ts, meter, rtype, start, billing_start, tariff, state, energy, amount)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (item.ts, item.meter, item.rtype, start, billing_start, tariff, state, str(energy), str(amount)),
    )
    if cursor.rowcount == 0:
        return False
    conn.executemany(
        "INSERT INTO tariff_slices (ts, meter, rtype, period, block, energy, amount)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(item.ts, item.meter, item.rtype, p, b, str(e), str(a)) for p, b, e, a in slices],
    )
    total = usage(conn, item.meter, billing_start) + energy
    conn.execute(
        """INSERT INTO tariff_usage (meter, billing_start, energy) VALUES (?, ?, ?)
           ON CONFLICT (meter, billing_start) DO UPDATE SET energy = excluded.energy""",
        (item.meter, billing_start, str(total)),
    )
    return True


@dataclass(frozen=True)
class LedgerInterval:
    """A charged interval of a billing period with its slices (period, block, energy, amount)."""

    ts: int
    start: int
    energy: Decimal
    slices: tuple[tuple[str, int, Decimal, Decimal], ...]


def billing_ledger(store: Store, mrid: str, billing_start: int) -> list[LedgerInterval]:
    """Every charged interval of one billing period of a meter, in time order."""
    rows = store.conn.execute(
        """SELECT i.ts, i.start, i.energy, s.period, s.block, s.energy, s.amount
           FROM tariff_intervals i JOIN meters m ON m.id = i.meter
           JOIN tariff_slices s ON s.ts = i.ts AND s.meter = i.meter AND s.rtype = i.rtype
           WHERE m.mrid = ? AND i.billing_start = ? AND i.state = 'charged'
           ORDER BY i.ts, s.period, s.block""",
        (mrid, billing_start),
    ).fetchall()
    found: dict[int, LedgerInterval] = {}
    for ts, start, energy, period, block, slice_energy, amount in rows:
        entry = found.get(ts) or LedgerInterval(ts, start, Decimal(energy), ())
        found[ts] = LedgerInterval(
            ts, start, entry.energy, (*entry.slices, (period, block, Decimal(slice_energy), Decimal(amount)))
        )
    return list(found.values())


def unbilled_periods(store: Store, mrid: str) -> list[int]:
    """Starts of a meter's billing periods that have intervals and no closed bill."""
    rows = store.conn.execute(
        """SELECT DISTINCT i.billing_start FROM tariff_intervals i JOIN meters m ON m.id = i.meter
           WHERE m.mrid = ? AND NOT EXISTS (SELECT 1 FROM tariff_bills b
                 WHERE b.meter = i.meter AND b.billing_start = i.billing_start)
           ORDER BY i.billing_start""",
        (mrid,),
    ).fetchall()
    return [row[0] for row in rows]


def is_billed(conn: sqlite3.Connection, meter: int, billing_start: int) -> bool:
    """Whether a billing period of a meter is closed."""
    row = conn.execute(
        "SELECT 1 FROM tariff_bills WHERE meter = ? AND billing_start = ?", (meter, billing_start)
    ).fetchone()
    return row is not None


def save_bill(
    conn: sqlite3.Connection,
    meter: int,
    billing_start: int,
    billing_end: int,
    tariff: str,
    currency: str,
    bill: dict,
    total: Decimal,
    now: int,
) -> None:
    """Inside a caller's transaction: close a billing period with its bill."""
    conn.execute(
        """INSERT OR IGNORE INTO tariff_bills
           (meter, billing_start, billing_end, tariff, currency, bill, total, closed_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
        (
            meter,
            billing_start,
            billing_end,
            tariff,
            currency,
            json.dumps(bill, sort_keys=True),
            str(total),
            now,
        ),
    )


def closed_bill(store: Store, mrid: str, billing_start: int) -> dict | None:
    """A closed bill as stored (JSON), or None."""
    row = store.conn.execute(
        """SELECT b.bill FROM tariff_bills b JOIN meters m ON m.id = b.meter
           WHERE m.mrid = ? AND b.billing_start = ?""",
        (mrid, billing_start),
    ).fetchone()
    return json.loads(row[0]) if row else None


# -- prepay


_ACCOUNT = "SELECT meter, currency, balance, relay, low_warned, emergency_warned FROM prepay_accounts"


def _account(row: tuple) -> Account:
    meter, currency, balance, relay, low, emergency = row
    return Account(meter, currency, Decimal(balance), Relay(relay), bool(low), bool(emergency))


def account(store: Store, mrid: str) -> Account | None:
    """A meter's prepay account, or None."""
    row = store.conn.execute(f"{_ACCOUNT} WHERE meter = ?", (mrid,)).fetchone()
    return None if row is None else _account(row)


def save_account(conn: sqlite3.Connection, account: Account, now: int) -> None:
    """Inside a caller's transaction: create or update an account."""
    conn.execute(
        """INSERT INTO prepay_accounts
           (meter, currency, balance, relay, low_warned, emergency_warned, updated_at)
           VALUES (?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (meter) DO UPDATE SET currency = excluded.currency, balance = excluded.balance,
             relay = excluded.relay, low_warned = excluded.low_warned,
             emergency_warned = excluded.emergency_warned, updated_at = excluded.updated_at""",
        (
            account.meter,
            account.currency,
            str(account.balance),
            account.relay.value,
            int(account.low_warned),
            int(account.emergency_warned),
            now,
        ),
    )


def journal(
    conn: sqlite3.Connection,
    meter: str,
    now: int,
    kind: str,
    amount: Decimal,
    balance: Decimal,
    reference: str,
) -> bool:
    """Inside a caller's transaction: journal a change of balance. False when (meter, kind,
    reference) was journalled before: the change must not be applied again."""
    cursor = conn.execute(
        """INSERT OR IGNORE INTO prepay_journal (meter, ts, kind, amount, balance, reference)
           VALUES (?, ?, ?, ?, ?, ?)""",
        (meter, now, kind, str(amount), str(balance), reference),
    )
    return cursor.rowcount == 1


def journal_of(store: Store, mrid: str) -> list[tuple[int, str, Decimal, Decimal, str]]:
    """An account's journal in order: (time, kind, amount, balance after, reference)."""
    rows = store.conn.execute(
        "SELECT ts, kind, amount, balance, reference FROM prepay_journal WHERE meter = ? ORDER BY id", (mrid,)
    ).fetchall()
    return [(ts, kind, Decimal(amount), Decimal(balance), ref) for ts, kind, amount, balance, ref in rows]


def accounts(store: Store) -> list[Account]:
    """Every prepay account."""
    return [_account(row) for row in store.conn.execute(f"{_ACCOUNT} ORDER BY meter")]


# -- assignments from the MDM


def assign_tariff(conn: sqlite3.Connection, mrid: str, tariff: str, now: int, reference: str) -> None:
    """Inside a caller's transaction: from now on `mrid` is priced by `tariff` (the MDM's MessageID
    as the reference), over [tariffs] meters."""
    conn.execute(
        """INSERT INTO tariff_assignments (meter, tariff, seq, assigned_at, reference)
           VALUES (?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM tariff_assignments), ?, ?)
           ON CONFLICT (meter) DO UPDATE SET tariff = excluded.tariff, seq = excluded.seq,
             assigned_at = excluded.assigned_at, reference = excluded.reference""",
        (mrid, tariff, now, reference),
    )


def tariff_assignments(store: Store) -> tuple[int, dict[str, str]]:
    """(a number that grows with every assignment, meter mRID -> tariff name)."""
    rows = store.conn.execute("SELECT meter, tariff, seq FROM tariff_assignments ORDER BY meter").fetchall()
    return max((seq for *_, seq in rows), default=0), {meter: tariff for meter, tariff, _ in rows}
