"""Data quality at the edge: quality codes on a poll's readings before they are stored. Pure: no I/O.

A value is never dropped or changed here. Every reading leaves `QualityCheck.assess` with the same
meter, ReadingType, time and value it came with, plus the IEC 61968-9 ReadingQualityType codes of
what looks wrong with it, so the MDM's validation sees what the head-end saw. An EndDeviceEvent is
added only where the MDM has to act: a cumulative register that was reset.

The codes are `system.category.index` with system 2 (the HES) and the indices of Connexo's
`QualityCodeIndex` (CIM-NOTES section 4); docs/mqtt-api.md has the table of when each is set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

from appliance.collect.meters import MeterModel
from appliance.collect.meters.dlms import DlmsModel
from appliance.config import QualitySection
from appliance.model import Event, Reading, ReadingType, unit_symbol

OVERFLOW = "2.4.1"  # a cumulative register wrapped past its rollover value
PARTIAL_INTERVAL = "2.4.2"  # an interval shorter than the series' period
SKIPPED_INTERVAL = "2.4.4"  # one or more intervals before this one are missing
RESET_OCCURRED = "2.4.8"  # a cumulative register started again from (near) zero
CLOCK_SET_FORWARD = "2.4.64"
CLOCK_SET_BACKWARD = "2.4.128"
CLOCK_ERROR = "2.1.9"  # taken while the meter clock was off by more than the tolerance
OUT_OF_RANGE = "2.5.256"  # above the configured physical maximum, or not a number at all
SUSPECT = "2.5.258"  # a cumulative register went down, but not to (near) zero

# ElectricMeter / Metrology / n.a. / ResetOccurred (CIM-NOTES section 5): our choice, agree with the MDM.
REGISTER_RESET = "3.21.0.215"
# The standard event log's "clock adjusted" pair (collect/meters/dlms.py STANDARD_EVENTS).
CLOCK_OLD_TIME, CLOCK_NEW_TIME = "0.36.116.14", "0.36.116.24"

# accumulation (field 4 of a ReadingType): bulkQuantity, continuousCumulative, cumulative, summation.
_CUMULATIVE = {"1", "2", "3", "9"}
# measuringPeriod (field 3) in seconds (CIM-NOTES section 4).
_MEASURING_PERIODS = {
    "1": 600,
    "2": 900,
    "3": 60,
    "4": 86400,
    "5": 1800,
    "6": 300,
    "7": 3600,
    "10": 120,
    "14": 180,
    "31": 1200,
    "79": 7200,
    "80": 14400,
    "81": 21600,
    "82": 43200,
    "83": 10800,
}
_MACRO_PERIODS = {"11": 86400, "24": 7 * 86400}  # daily, weekly
_CALENDAR_PERIODS = {"8", "13", "22", "32"}  # billing, monthly, seasonal, specified: no fixed length
# A series with nothing stored for this long is treated as new: a baseline that old says nothing.
SEED_LOOKBACK = timedelta(days=35)
MAX_STEPS_SEEN = 8  # distinct steps counted per series whose period is inferred
# A clock step is remembered for readings that arrive in later polls, until the meter's newest
# assessed interval is this far past it.
STEP_MEMORY = timedelta(days=2)

Seed = Callable[[str, ReadingType, datetime, datetime], Reading | None]
"""(meter, ReadingType, before, not_before) -> the newest stored reading in [not_before, before)."""


@dataclass(frozen=True)
class ClockStep:
    """The meter's clock was set: at meter time `at` (before the step) it jumped by `step_s` seconds
    (positive: forward). The HES's own correction (`meter_time`) or the meter's event log says so."""

    at: datetime
    step_s: float

    def window(self) -> tuple[datetime, datetime]:
        """The stretch of meter time skipped (forward) or lived twice (backward)."""
        other = self.at + timedelta(seconds=self.step_s)
        return min(self.at, other), max(self.at, other)


@dataclass(frozen=True)
class MeterClock:
    """What a poll learned about the meter's clock: its offset from the HES clock (meter minus HES,
    None when not read) and any steps it took."""

    offset_s: float | None = None
    steps: tuple[ClockStep, ...] = ()


class Assessment(NamedTuple):
    """A poll's readings with their quality codes (same readings, same order), and events for the MDM."""

    readings: list[Reading]
    events: list[Event]


@dataclass(frozen=True)
class SeriesRules:
    """What the meter model says about its series: rollover values and interval periods."""

    rollovers: dict[ReadingType, Decimal] = field(default_factory=dict)
    periods: dict[ReadingType, int] = field(default_factory=dict)


def model_rules(model: MeterModel) -> SeriesRules:
    """Rollover values and profile periods of a meter model; a profile column wraps like the register
    it captures (same OBIS)."""
    if not isinstance(model, DlmsModel):
        return SeriesRules({c.reading_type: c.wraps_at for c in model.channels if c.wraps_at is not None}, {})
    by_obis = {r.obis: r.rollover for r in model.registers if r.rollover is not None}
    rollovers = {r.reading_type: r.rollover for r in model.registers if r.rollover is not None}
    periods = {}
    if model.profile is not None:
        for obis, reading_type in model.profile.columns.items():
            periods[reading_type] = model.profile.period_s
            if obis in by_obis:
                rollovers[reading_type] = by_obis[obis]
    return SeriesRules(rollovers, periods)


def clock_steps(events: Iterable[Event]) -> tuple[ClockStep, ...]:
    """Clock steps from a meter's event log: each "clock adjusted, old time" entry paired with the
    next "new time" entry (the meter logs them in that order, each stamped with its own clock)."""
    steps, old = [], None
    for event in events:
        if event.event_type == CLOCK_OLD_TIME:
            old = event.created
        elif event.event_type == CLOCK_NEW_TIME and old is not None:
            steps.append(ClockStep(old, (event.created - old).total_seconds()))
            old = None
    return tuple(steps)


def is_cumulative(reading_type: ReadingType) -> bool:
    """A register that only counts up (energy, volume), until it wraps or is reset."""
    return reading_type.code.split(".")[3] in _CUMULATIVE


def declared_period(reading_type: ReadingType) -> int | None:
    """The fixed interval length a ReadingType code states, in seconds (None: none, or calendar)."""
    macro, _aggregate, measuring = reading_type.code.split(".")[:3]
    if macro in _CALENDAR_PERIODS:
        return None
    return _MEASURING_PERIODS.get(measuring) or _MACRO_PERIODS.get(macro)


@dataclass
class _Series:
    """What is remembered of one (meter, ReadingType): the newest value and, where no period is
    declared, how often each step between intervals was seen (a few distinct ones at most)."""

    timestamp: datetime
    value: Decimal
    steps_seen: Counter[int] = field(default_factory=Counter)


class QualityCheck:
    """Flags one bus's readings poll by poll, remembering the newest value of every series.

    A series seen for the first time is seeded from the store (`seed`), so a restart does not hide a
    reset or a gap at the boundary. One instance per bus worker: it is not shared between threads.
    """

    def __init__(self, limits: QualitySection, seed: Seed, clock_tolerance_s: float) -> None:
        self.limits, self._seed, self.clock_tolerance_s = limits, seed, clock_tolerance_s
        self._series: dict[tuple[str, ReadingType], _Series] = {}
        self._steps: dict[str, list[ClockStep]] = {}

    def assess(
        self,
        meter_id: str,
        readings: Sequence[Reading],
        rules: SeriesRules = SeriesRules(),
        clock: MeterClock = MeterClock(),
    ) -> Assessment:
        """One poll of `meter_id`: its readings with their quality codes, in the order given, and the
        events they call for. `rules` come from the meter's model (`model_rules`), `clock` from this
        poll's clock check; a clock step is remembered for the intervals later polls bring.
        """
        if any(r.meter_id != meter_id for r in readings):
            raise ValueError(f"assess takes one meter's poll; {meter_id} was given other meters' readings")
        steps = self._steps.setdefault(meter_id, [])
        steps += clock.steps
        flags: dict[int, list[str]] = {i: [] for i in range(len(readings))}
        resets: dict[tuple[str, datetime], list[tuple[Reading, Decimal]]] = {}
        order = sorted(
            range(len(readings)),
            key=lambda i: (readings[i].meter_id, readings[i].reading_type.code, readings[i].timestamp),
        )
        clock_off = clock.offset_s is not None and abs(clock.offset_s) > self.clock_tolerance_s
        for index in order:
            reading = readings[index]
            flags[index] += self._on_its_own(reading, rules, steps, clock_off)
            found, previous_value = self._in_sequence(reading, rules)
            flags[index] += found
            if RESET_OCCURRED in found and previous_value is not None:
                resets.setdefault((reading.meter_id, reading.timestamp), []).append((reading, previous_value))
        if readings:
            newest = max(r.timestamp for r in readings)
            steps[:] = [s for s in steps if s.window()[1] + STEP_MEMORY > newest]
        flagged = [
            replace(r, qualities=_union(r.qualities, flags[i])) if flags[i] else r
            for i, r in enumerate(readings)
        ]
        return Assessment(flagged, [_reset_event(meter, at, found) for (meter, at), found in resets.items()])

    def _on_its_own(
        self, reading: Reading, rules: SeriesRules, steps: list[ClockStep], clock_off: bool
    ) -> list[str]:
        """What one value says by itself: its limit, and the meter clock around its interval."""
        found = [OUT_OF_RANGE] if not reading.value.is_finite() or self._above_maximum(reading) else []
        if reading.reading_type.is_interval:
            if clock_off:
                found.append(CLOCK_ERROR)
            period = rules.periods.get(reading.reading_type) or declared_period(reading.reading_type)
            found += _around_steps(reading, period, steps)
        return found

    def _in_sequence(self, reading: Reading, rules: SeriesRules) -> tuple[list[str], Decimal | None]:
        """What a value says after the one before it (gaps, decreases), and that one's value; moves the
        series on."""
        finite = reading.value.is_finite()
        previous = self._previous(reading)
        if previous is None:
            if finite:  # the first of its series: nothing to compare with
                self._series[(reading.meter_id, reading.reading_type)] = _Series(
                    reading.timestamp, reading.value
                )
            return [], None
        if reading.timestamp <= previous.timestamp:
            return [], None  # older than what is known (a backfill): nothing to compare with
        found = self._interval_flags(reading, previous, rules) if reading.reading_type.is_interval else []
        previous.timestamp, before = reading.timestamp, previous.value
        if not finite:
            return found, None  # its interval was there, but it is never a register's baseline
        if is_cumulative(reading.reading_type) and reading.value < before:
            found.append(_decrease(before, reading.value, rules.rollovers.get(reading.reading_type)))
        previous.value = reading.value
        return found, before

    def _previous(self, reading: Reading) -> _Series | None:
        key = (reading.meter_id, reading.reading_type)
        if key not in self._series:
            stored = self._seed(
                reading.meter_id, reading.reading_type, reading.timestamp, reading.timestamp - SEED_LOOKBACK
            )
            if stored is None or not stored.value.is_finite():
                return None
            self._series[key] = _Series(stored.timestamp, stored.value)
        return self._series[key]

    def _above_maximum(self, reading: Reading) -> bool:
        code = reading.reading_type.code
        limit = self.limits.max_by_reading_type.get(code)
        if limit is None:
            limit = self.limits.max_by_unit.get(unit_symbol(reading.reading_type))
        return limit is not None and reading.value > Decimal(str(limit))

    def _interval_flags(self, reading: Reading, previous: _Series, rules: SeriesRules) -> list[str]:
        """Gaps and short intervals, against the model's period, the code's, or the step seen most."""
        step = int((reading.timestamp - previous.timestamp).total_seconds())
        period = rules.periods.get(reading.reading_type) or declared_period(reading.reading_type)
        if period is None and reading.reading_type.code.split(".")[0] not in _CALENDAR_PERIODS:
            seen = previous.steps_seen
            period = seen.most_common(1)[0][0] if seen else None
            if step in seen or len(seen) < MAX_STEPS_SEEN:
                seen[step] += 1
        if period is None:
            return []
        if step > period:
            return [SKIPPED_INTERVAL]
        if step < period:
            return [PARTIAL_INTERVAL]
        return []


def _around_steps(reading: Reading, period: int | None, steps: list[ClockStep]) -> list[str]:
    """Forward or backward flags for an interval (start, end] that overlaps a clock step's window in
    meter time. Register readings are stamped by the HES, so a meter's clock does not move them."""
    start = reading.timestamp - timedelta(seconds=period or 0)
    codes = []
    for step in steps:
        low, high = step.window()
        if reading.timestamp > low and start < high:
            codes.append(CLOCK_SET_FORWARD if step.step_s > 0 else CLOCK_SET_BACKWARD)
    return codes


def _decrease(previous: Decimal, value: Decimal, rollover: Decimal | None) -> str:
    """Why a cumulative register went down: it wrapped (the way round through the rollover value is
    the shorter one), it was reset (to half of what it was or less), or it is simply suspect."""
    if rollover is not None and previous <= rollover and (rollover - previous) + value < rollover / 2:
        return OVERFLOW
    if value <= previous / 2:
        return RESET_OCCURRED
    return SUSPECT


def _reset_event(meter_id: str, at: datetime, found: list[tuple[Reading, Decimal]]) -> Event:
    """One event per meter and time (the store keys events so), naming every register reset then."""
    details: list[tuple[str, str]] = []
    for reading, previous in found:
        details += [
            ("readingType", reading.reading_type.code),
            ("previousValue", str(previous)),
            ("value", str(reading.value)),
        ]
    names = ", ".join(unit_symbol(r.reading_type) + " register " + r.reading_type.code for r, _ in found)
    return Event(
        meter_id,
        REGISTER_RESET,
        at,
        reason=f"register reset: {names}",
        severity="major",
        details=tuple(details),
    )


def _union(existing: tuple[str, ...], added: list[str]) -> tuple[str, ...]:
    return existing + tuple(dict.fromkeys(code for code in added if code not in existing))
