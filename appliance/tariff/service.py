"""The tariff thread: apportions new interval readings, closes billing periods, runs prepay.

Every `apportion_interval_s` it takes the queued interval readings of priced meters (store trigger,
so a re-read interval never queues), apportions them and, in the same transaction, stores the
slices, the cost readings (sent to the MDM like any reading), the prepay charge with its journal
line and any warning events. Then it closes billing periods that ended `close_grace_s` ago and
moves the relays prepay asks for, through the collector (one job per meter at a time).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal, localcontext
from itertools import groupby
from pathlib import Path

from appliance.clock import Clock
from appliance.collect.collector import Collector
from appliance.commands.jobs import relay
from appliance.config import TariffsSection
from appliance.errors import HesError, StoreError, TariffError
from appliance.model import Event, Reading, ReadingType, epoch, utc_from_epoch
from appliance.store import Store
from appliance.store import tariffs as ledger
from appliance.store.events import insert_events
from appliance.store.readings import insert_readings
from appliance.tariff import prepay
from appliance.tariff.apportion import apportion, energy_of
from appliance.tariff.billing import Bill, Determinants, Interval, make_bill, max_demand
from appliance.tariff.loader import install_tariff, load_tariffs, parse_tariff
from appliance.tariff.model import EXACT, Tariff, interval_start

log = logging.getLogger(__name__)

BATCH = 5000  # queued intervals per transaction
LOOKBACK_S = 400 * 86400  # a register series' previous snapshot is looked for this far back


@dataclass(frozen=True)
class Settings:
    """What the service needs from [tariffs]."""

    tariffs: dict[str, Tariff]
    meters: dict[str, str]  # meter mRID -> tariff name
    prepay: tuple[str, ...]
    policy: prepay.Policy
    interval_s: float
    gap_wait_s: int
    close_grace_s: int
    relay_retry_s: float
    directory: Path | None = None  # where tariffs the MDM names or sends are found and installed


def settings_from_config(section: TariffsSection) -> Settings:
    """The service's settings from [tariffs] (the config check validated them)."""
    friendly = prepay.parse_friendly(
        section.friendly_nights, section.friendly_weekends, section.friendly_holidays
    )
    return Settings(
        tariffs=load_tariffs(section.dir) if section.meters else {},
        meters=dict(section.meters),
        prepay=section.prepay,
        policy=prepay.Policy(
            Decimal(section.low_credit),
            Decimal(section.emergency_credit),
            friendly,
        ),
        interval_s=section.apportion_interval_s,
        gap_wait_s=section.gap_wait_s,
        close_grace_s=section.close_grace_s,
        relay_retry_s=section.relay_retry_s,
        directory=section.dir,
    )


# -- assignments


def tariff_named(settings: Settings, name: str) -> Tariff:
    """A tariff by name: one loaded at start, else one in the tariff directory now (installed since).
    TariffError when there is none."""
    if name in settings.tariffs:
        return settings.tariffs[name]
    known = load_tariffs(settings.directory) if settings.directory else {}
    if name not in known:
        raise TariffError(f"no tariff {name[:64]!r} on this box; known: {sorted(known)}")
    return known[name]


def assign(
    store: Store, settings: Settings, mrid: str, name: str, text: str, reference: str, now: datetime
) -> Tariff:
    """The MDM prices `mrid` by tariff `name` from now on (`text`: the tariff file it sent, installed
    first). Stored, so it survives restarts and wins over [tariffs] meters; the tariff thread picks it
    up on its next round. TariffError for an unknown or invalid tariff, or one in another currency
    than the meter's prepay account."""
    if text:
        if settings.directory is None:
            raise TariffError("no tariff directory to install a tariff in")
        tariff = parse_tariff(text, name, settings.directory / "calendars")
    else:
        tariff = tariff_named(settings, name)
    account = ledger.account(store, mrid)
    if account is not None and account.currency != tariff.currency:
        raise TariffError(
            f"meter {mrid}: its prepay account is in {account.currency}, {name} in {tariff.currency}"
        )
    if text and settings.directory is not None:
        install_tariff(settings.directory, name, text)
    with store.transaction() as conn:
        ledger.assign_tariff(conn, mrid, name, epoch(now), reference)
    log.info("tariffs: meter %s is priced by %s from now on (%s)", mrid, name, reference[:64])
    return tariff


def assigned(store: Store, settings: Settings) -> Settings:
    """`settings` with the MDM's assignments over [tariffs] meters (tariffs reloaded from the
    directory, for those installed or replaced since the start)."""
    _, stored = ledger.tariff_assignments(store)
    if not stored:
        return settings
    tariffs = {**settings.tariffs, **(load_tariffs(settings.directory) if settings.directory else {})}
    for mrid, name in list(stored.items()):
        if name not in tariffs:  # its file was removed by hand: [tariffs] meters apply
            log.warning("tariffs: meter %s is assigned %s, not in %s", mrid, name, settings.directory)
            del stored[mrid]
    return replace(settings, tariffs=tariffs, meters={**settings.meters, **stored})


def plain(amount: Decimal) -> Decimal:
    """The same number without an exponent (5E+3 -> 5000), as readings and CIM show it."""
    return Decimal(format(amount, "f"))


# -- apportionment


def apportion_pending(store: Store, settings: Settings, now: datetime) -> int:
    """Apportion what is queued (one transaction per meter series); returns the intervals charged."""
    ledger.forget_unpriced(store)
    items = ledger.pending(store, BATCH)
    charged = 0
    for _, group in groupby(items, key=lambda item: (item.meter, item.rtype)):  # sorted by series
        series = list(group)
        tariff = settings.tariffs.get(settings.meters.get(series[0].mrid, ""))
        with store.transaction() as conn:
            if tariff is None or tariff.reading_type.code != series[0].code:
                for item in series:  # no longer priced this way: the assignment changed
                    ledger.drop_pending(conn, item)
                continue
            charged += _apportion_series(store, conn, tariff, series, settings, now)
    return charged


def _apportion_series(
    store: Store,
    conn: sqlite3.Connection,
    tariff: Tariff,
    series: list[ledger.Pending],
    settings: Settings,
    now: datetime,
) -> int:
    mrid = series[0].mrid
    costs: list[Reading] = []
    total = Decimal(0)
    charged: list[int] = []
    for item in series:
        end = utc_from_epoch(item.ts)
        start = epoch(interval_start(tariff, end))
        state, energy = "charged", Decimal(0)
        if tariff.is_bulk:
            previous = ledger.previous_snapshot(store, item, item.ts - LOOKBACK_S)
            if previous is None:
                state = "baseline"
            elif ledger.covered(store, item):
                state = "covered"
            elif previous[0] != start and item.ts > epoch(now) - settings.gap_wait_s:
                continue  # a gap: wait for the catch-up to fill it
            else:
                start = previous[0]
                energy = energy_of(tariff, item.value, previous[1])
        else:
            energy = energy_of(tariff, item.value, None)
        billing_start = _open_billing_start(conn, tariff, item.meter, utc_from_epoch(start))
        slices = []
        if state == "charged":
            used = ledger.usage(conn, item.meter, billing_start)
            slices = apportion(tariff, utc_from_epoch(start), energy, used)
        rows = [(s.period, s.block, plain(s.energy_kwh), plain(s.amount)) for s in slices]
        if not ledger.record_interval(
            conn,
            item,
            start=start,
            billing_start=billing_start,
            tariff=tariff.name,
            state=state,
            energy=plain(energy),
            slices=rows,
        ):
            ledger.drop_pending(conn, item)
            continue
        ledger.drop_pending(conn, item)
        costs += [Reading(mrid, tariff.cost_reading_type(p, b), end, a) for p, b, _, a in rows]
        with localcontext(EXACT):
            total += sum((a for *_, a in rows), Decimal(0))
        if state == "charged":
            charged.append(item.ts)
    insert_readings(store, conn, costs, epoch(now))
    if charged and mrid in settings.prepay:
        _burn(
            store,
            conn,
            mrid,
            tariff,
            total,
            f"intervals {charged[0]}-{charged[-1]} ({len(charged)})",
            settings,
            now,
        )
    return len(charged)


def _open_billing_start(conn: sqlite3.Connection, tariff: Tariff, meter: int, start: datetime) -> int:
    """The billing period an interval belongs to: its own, or (arriving after that one was closed)
    the next one still open, so a closed bill never changes."""
    period_start, period_end = tariff.billing_period(start)
    while ledger.is_billed(conn, meter, epoch(period_start)):
        period_start, period_end = tariff.billing_period(period_end)
    return epoch(period_start)


def _burn(
    store: Store,
    conn: sqlite3.Connection,
    mrid: str,
    tariff: Tariff,
    amount: Decimal,
    reference: str,
    settings: Settings,
    now: datetime,
) -> None:
    """The prepay account pays the apportioned cost (opened at zero with the tariff's currency)."""
    account = ledger.account(store, mrid) or prepay.Account(mrid, tariff.currency, Decimal(0))
    after, notices = prepay.charge(account, amount, settings.policy)
    if ledger.journal(conn, mrid, epoch(now), "charge", -amount, after.balance, reference):
        ledger.save_account(conn, after, epoch(now))
        _notify(store, conn, mrid, notices, now)


def _notify(
    store: Store, conn: sqlite3.Connection, mrid: str, notices: list[prepay.Notice], now: datetime
) -> None:
    events = [Event(mrid, n.event_type, now, n.reason) for n in notices]
    if events:
        insert_events(store, conn, events, epoch(now))
        for notice in notices:
            log.info("prepay %s: %s", mrid, notice.reason)


# -- top-ups


def top_up(
    store: Store,
    mrid: str,
    amount: Decimal,
    currency: str,
    message_id: str,
    settings: Settings,
    now: datetime,
) -> tuple[prepay.Account, bool]:
    """Credit a top-up from the MDM, once per MessageID: returns the account and whether it was
    credited now (False: that MessageID was credited before, nothing changed). TariffError when the
    meter has no prepay account or the currency is not the account's."""
    if mrid not in settings.prepay:
        raise TariffError(f"meter {mrid} has no prepay account")
    tariff = tariff_named(settings, ledger.tariff_assignments(store)[1].get(mrid) or settings.meters[mrid])
    if currency != tariff.currency:
        raise TariffError(f"meter {mrid}: top-up in {currency[:8]!r}, the account is in {tariff.currency}")
    if amount <= 0 or not amount.is_finite():
        raise TariffError(f"meter {mrid}: a top-up must be a positive amount, got {amount}")
    with store.transaction() as conn:
        account = ledger.account(store, mrid) or prepay.Account(mrid, tariff.currency, Decimal(0))
        after, notices = prepay.top_up(account, amount, settings.policy)
        if not ledger.journal(conn, mrid, epoch(now), "top-up", amount, after.balance, message_id):
            return account, False
        ledger.save_account(conn, after, epoch(now))
        _notify(store, conn, mrid, notices, now)
    return after, True


# -- billing periods


def determinants(store: Store, mrid: str, tariff: Tariff, billing_start: int) -> Determinants:
    """A billing period's determinants from the ledger (also for a period still open)."""
    start, end = tariff.billing_period(utc_from_epoch(billing_start))
    entries = ledger.billing_ledger(store, mrid, billing_start)
    by_period: dict[str, Decimal] = {}
    by_block: dict[int, Decimal] = {}
    cost = Decimal(0)
    with localcontext(EXACT):
        for entry in entries:
            for period, block, energy, amount in entry.slices:
                by_period[period] = by_period.get(period, Decimal(0)) + energy
                by_block[block] = by_block.get(block, Decimal(0)) + energy
                cost += amount
    demand, demand_at = max_demand(tariff, [Interval(utc_from_epoch(e.start), e.energy) for e in entries])
    ordered = {p: by_period[p] for p in tariff.periods if p in by_period}
    return Determinants(
        meter=mrid,
        tariff=tariff.name,
        currency=tariff.currency,
        start=start,
        end=end,
        energy_by_period=ordered,
        energy_by_block=dict(sorted(by_block.items())),
        max_demand_kw=demand,
        max_demand_at=demand_at,
        days=tariff.days_in(start, end),
        intervals=len(entries),
        apportioned_cost=cost,
    )


def bill_document(bill: Bill) -> dict:
    """A bill as JSON (exact decimals as strings)."""
    d = bill.determinants
    return {
        "meter": d.meter,
        "tariff": d.tariff,
        "currency": d.currency,
        "start": epoch(d.start),
        "end": epoch(d.end),
        "energyByPeriod": {p: str(e) for p, e in d.energy_by_period.items()},
        "energyByBlock": {str(b): str(e) for b, e in d.energy_by_block.items()},
        "maxDemandKw": str(d.max_demand_kw),
        "maxDemandAt": epoch(d.max_demand_at) if d.max_demand_at else None,
        "days": d.days,
        "intervals": d.intervals,
        "apportionedCost": str(d.apportioned_cost),
        "lines": [
            {
                "kind": line.kind,
                "label": line.label,
                "quantity": str(line.quantity),
                "unit": line.unit,
                "price": str(line.price),
                "amount": str(line.amount),
            }
            for line in bill.lines
        ],
        "net": str(bill.net),
        "tax": str(bill.tax),
        "total": str(bill.total),
    }


def bill_readings(tariff: Tariff, meter: str, document: dict) -> list[Reading]:
    """A bill (bill_document) as billing-period readings (macroPeriod 8) at the period's end: energy
    (kWh) and its cost per TOU period, the maximum 15-minute demand (kW), the total with tax."""
    end = utc_from_epoch(document["end"])
    flow, ccy = tariff.reading_type.code.split(".")[4], tariff.currency_numeric
    energy_cost = {line["label"]: line["amount"] for line in document["lines"] if line["kind"] == "energy"}
    readings = []
    for name, energy in document["energyByPeriod"].items():
        tou = tariff.period_index(name)
        energy_type = ReadingType(f"8.0.0.4.{flow}.1.12.0.0.0.0.{tou}.0.0.0.3.72.0")
        cost_type = ReadingType(f"8.0.0.4.{flow}.1.3.0.0.0.0.{tou}.0.0.0.0.0.{ccy}")
        readings += [
            Reading(meter, energy_type, end, Decimal(energy)),
            Reading(meter, cost_type, end, Decimal(energy_cost[name])),
        ]
    demand_type = ReadingType(f"8.8.2.6.{flow}.1.8.0.0.0.0.0.0.0.0.3.38.0")
    total_type = ReadingType(f"8.0.0.4.{flow}.1.3.0.0.0.0.0.0.0.0.0.0.{ccy}")
    return [
        *readings,
        Reading(meter, demand_type, end, plain(Decimal(document["maxDemandKw"]))),
        Reading(meter, total_type, end, Decimal(document["total"])),
    ]


def close_billing_periods(store: Store, settings: Settings, now: datetime) -> int:
    """Close every billing period that ended `close_grace_s` ago: determinants, bill, readings."""
    closed = 0
    for mrid, name in settings.meters.items():
        tariff = settings.tariffs[name]
        for billing_start in ledger.unbilled_periods(store, mrid):
            _, end = tariff.billing_period(utc_from_epoch(billing_start))
            if epoch(now) < epoch(end) + settings.close_grace_s:
                continue
            bill = make_bill(tariff, determinants(store, mrid, tariff, billing_start))
            document = bill_document(bill)
            with store.transaction() as conn:
                ledger.save_bill(
                    conn,
                    store.meter_key(mrid),
                    billing_start,
                    epoch(end),
                    tariff.name,
                    tariff.currency,
                    document,
                    bill.total,
                    epoch(now),
                )
                insert_readings(store, conn, bill_readings(tariff, mrid, document), epoch(now))
            log.info("billing period of %s closed: %s %s", mrid, bill.total, tariff.currency)
            closed += 1
    return closed


# -- the thread


def relay_through(collector: Collector) -> Callable[[str, str], Future]:
    """Prepay's relay operations as bus jobs: the same job as the MDM's disconnect and connect
    (commands/jobs.py), which reads the relay back, so prepay knows the state the meter is in."""

    def operate(meter: str, action: str) -> Future:
        return collector.submit(meter, lambda access, spec: relay(access, spec, action))

    return operate


class TariffService(threading.Thread):
    """Apportionment, billing periods and prepay relays, every `interval_s`."""

    def __init__(
        self,
        settings: Settings,
        store_factory: Callable[[], Store],
        clock: Clock,
        relay: Callable[[str, str], Future] | None,
        on_new_readings: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        super().__init__(name="tariffs", daemon=True)
        self.settings, self.clock, self._relay = settings, clock, relay
        self._configured = settings  # [tariffs] as configured; `settings` adds the MDM's assignments
        self._assignments_seen: int | None = None
        self._store_factory, self._on_new, self._halt = store_factory, on_new_readings, stop
        self.heartbeat = time.monotonic()
        self._inflight: dict[str, tuple[str, Future]] = {}
        self._retry_at: dict[str, float] = {}

    def run(self) -> None:
        """Work until told to stop; a failed round is logged and the next one tries again."""
        store = self._store_factory()
        try:
            while not self._halt.is_set():
                self.heartbeat = time.monotonic()
                try:
                    self.step(store)
                except (StoreError, TariffError) as exc:
                    log.error("tariffs: %s", exc)
                self._halt.wait(self.settings.interval_s)
        finally:
            store.close()

    def watch_meters(self, store: Store) -> None:
        """List the priced series of registered meters, so that their new readings queue."""
        series = []
        for mrid, name in self.settings.meters.items():
            try:
                store.meter_key(mrid)
            except StoreError:
                log.warning("tariffs: meter %s is not registered; its tariff waits for it", mrid)
                continue
            series.append((mrid, self.settings.tariffs[name].reading_type.code))
        ledger.watch_series(store, series)

    def step(self, store: Store) -> None:
        """One round: take up new assignments, apportion, close billing periods, move relays."""
        seen, _ = ledger.tariff_assignments(store)
        if seen != self._assignments_seen:
            self.settings = assigned(store, self._configured)
            self._assignments_seen = seen
            self.watch_meters(store)
        now = self.clock.now()
        if apportion_pending(store, self.settings, now) + close_billing_periods(store, self.settings, now):
            self._on_new()
        if self._relay is not None:
            self._relays(store, now)

    def _relays(self, store: Store, now: datetime) -> None:
        for mrid, (action, future) in list(self._inflight.items()):
            if future.done():
                del self._inflight[mrid]
                self._relay_done(store, mrid, action, future, now)
        for account in ledger.accounts(store):
            tariff = self.settings.tariffs.get(self.settings.meters.get(account.meter, ""))
            if tariff is None or account.meter in self._inflight:
                continue
            if time.monotonic() < self._retry_at.get(account.meter, 0):
                continue
            action = prepay.relay_action(account, tariff.local(now), tariff.holidays, self.settings.policy)
            if action is not None:
                log.info("prepay %s: %s (balance %s)", account.meter, action, account.balance)
                try:
                    self._inflight[account.meter] = (action, self._relay(account.meter, action))  # type: ignore[misc]
                except HesError as exc:
                    log.warning("prepay %s: %s not possible: %s", account.meter, action, exc)
                    self._retry_at[account.meter] = time.monotonic() + self.settings.relay_retry_s

    def _relay_done(self, store: Store, mrid: str, action: str, future: Future, now: datetime) -> None:
        try:
            outcome = future.result()
            ok = getattr(outcome, "ok", True)
        except HesError as exc:
            ok, outcome = False, exc
        if not ok:
            log.warning(
                "prepay %s: %s failed (%s); again in %.0f s",
                mrid,
                action,
                outcome,
                self.settings.relay_retry_s,
            )
            self._retry_at[mrid] = time.monotonic() + self.settings.relay_retry_s
            return
        relay = prepay.Relay.DISCONNECTED if action == "disconnect" else prepay.Relay.CONNECTED
        kind = prepay.DISCONNECTED if action == "disconnect" else prepay.RECONNECTED
        with store.transaction() as conn:
            account = ledger.account(store, mrid)
            if account is None:
                return
            ledger.save_account(conn, replace(account, relay=relay), epoch(now))
            _notify(
                store,
                conn,
                mrid,
                [prepay.Notice(kind, f"prepay: relay {relay.value}, balance {account.balance}")],
                now,
            )
        self._on_new()
