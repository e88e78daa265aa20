"""Edge quality checks: no value is ever dropped or changed, and exactly the injected anomalies are
flagged (hypothesis), plus clock steps, limits, model rules and seeding from a real store."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.collect import quality
from appliance.collect.meters import get_model
from appliance.collect.meters.catalog import (
    PROFILE_A_MINUS_KWH,
    PROFILE_A_PLUS_KWH,
    REGISTER_A_MINUS_KWH,
    REGISTER_A_PLUS_KWH,
    VOLTAGE_L1_V,
)
from appliance.collect.meters.dlms import DlmsModel, DlmsProfile, DlmsRegister
from appliance.collect.quality import ClockStep, MeterClock, QualityCheck, SeriesRules
from appliance.config import QualitySection
from appliance.model import Event, Reading, ReadingType
from appliance.store import Store
from appliance.store.readings import last_reading, readings_between, save_readings
from appliance.store.registry import register_config_meters
from tests.conftest import meter_spec

T0 = datetime(2026, 3, 1, tzinfo=UTC)
PERIOD = 900
LIMITS = QualitySection(max_by_unit={"V": 300.0}, max_by_reading_type={})
POWER_W = ReadingType("0.0.0.6.1.1.37.0.0.0.0.0.0.0.0.0.38.0")  # indicating forward power, W


def no_seed(*_: object) -> None:
    return None


def check(limits: QualitySection = LIMITS, tolerance_s: float = 10.0) -> QualityCheck:
    return QualityCheck(limits, no_seed, tolerance_s)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def profile(values: list[tuple[float, str]], meter: str = "M1") -> list[Reading]:
    return [Reading(meter, PROFILE_A_PLUS_KWH, at(m), Decimal(v)) for m, v in values]


def flags(readings: list[Reading]) -> list[tuple[str, ...]]:
    return [r.qualities for r in readings]


# --- never drops a value ------------------------------------------------------------------------

_types = st.sampled_from([PROFILE_A_PLUS_KWH, REGISTER_A_PLUS_KWH, VOLTAGE_L1_V, POWER_W])
_values = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-1000, max_value=10**7),
    st.sampled_from([Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")]),
)
_readings = st.builds(
    lambda rtype, minutes, value, qualities: Reading("M1", rtype, at(minutes * 5), value, qualities),
    _types,
    st.integers(0, 200),
    _values,
    st.sampled_from([(), ("1.4.2",), ("2.5.258",)]),
)


@settings(max_examples=300, deadline=None)
@given(polls=st.lists(st.lists(_readings, max_size=20), max_size=6), offset=st.none() | st.floats(-600, 600))
def test_never_drops_or_changes_a_value(polls: list[list[Reading]], offset: float | None) -> None:
    """Whatever comes in (disorder, duplicates, NaN, negative values) goes out: same readings, same
    order, same values; codes are only ever added."""
    checker = check()
    for poll in polls:
        out, _ = checker.assess("M1", poll, clock=MeterClock(offset, (ClockStep(at(60), 300),)))
        assert len(out) == len(poll)
        for before, after in zip(poll, out, strict=True):
            assert (after.meter_id, after.reading_type, after.timestamp) == (
                before.meter_id,
                before.reading_type,
                before.timestamp,
            )
            assert after.value.compare_total(before.value) == 0  # NaN included, sign and exponent kept
            assert after.qualities[: len(before.qualities)] == before.qualities
            assert len(set(after.qualities)) == len(after.qualities)


# --- flags exactly the injected anomalies ---------------------------------------------------------

R = 1_000_000  # the rollover value in thousandths of a kWh: the register wraps at 1000 kWh


@st.composite
def cumulative_series(draw: st.DrawFn) -> tuple[list[Reading], list[set[str]], list[int]]:
    """A 15-minute bulk energy series (values in thousandths, wrapping at R) with injected gaps,
    resets and decreases, the flags each reading must get, and where the polls split it."""
    value = draw(st.integers(0, R - 1))
    slot = 0
    readings = [Reading("M1", PROFILE_A_PLUS_KWH, at(0), Decimal(value).scaleb(-3))]
    expected: list[set[str]] = [set()]
    for _ in range(draw(st.integers(1, 40))):
        gap = draw(st.sampled_from([0, 0, 0, 1, 3]))
        action = draw(st.sampled_from(["normal", "normal", "normal", "near_wrap", "reset", "decrease"]))
        flags_now = {quality.SKIPPED_INTERVAL} if gap else set()
        previous = value
        if action == "reset" and previous > 0:
            value = draw(st.integers(max(0, previous - R // 2), previous // 2))
            flags_now.add(quality.RESET_OCCURRED)
        elif action == "decrease" and max(previous // 2 + 1, previous - R // 2) <= previous - 1:
            value = draw(st.integers(max(previous // 2 + 1, previous - R // 2), previous - 1))
            flags_now.add(quality.SUSPECT)
        elif action == "near_wrap":  # a big step up to just below the rollover: not a flag
            value = max(previous, R - draw(st.integers(1, 5000)))
        else:  # up by at most 10 kWh, wrapping past the rollover value
            value = (previous + draw(st.integers(0, 10_000))) % R
            if value < previous:
                flags_now.add(quality.OVERFLOW)
        slot += 1 + gap
        readings.append(Reading("M1", PROFILE_A_PLUS_KWH, at(15 * slot), Decimal(value).scaleb(-3)))
        expected.append(flags_now)
    cuts = (
        sorted(draw(st.lists(st.integers(1, len(readings) - 1), max_size=4, unique=True)))
        if len(readings) > 1
        else []
    )
    return readings, expected, cuts


@settings(max_examples=300, deadline=None)
@given(case=cumulative_series())
def test_flags_exactly_the_injected_anomalies(case: tuple[list[Reading], list[set[str]], list[int]]) -> None:
    readings, expected, cuts = case
    checker = check()
    rules = SeriesRules(
        rollovers={PROFILE_A_PLUS_KWH: Decimal(R).scaleb(-3)}, periods={PROFILE_A_PLUS_KWH: PERIOD}
    )
    out: list[Reading] = []
    events: list[Event] = []
    bounds = [0, *cuts, len(readings)]
    for start, end in itertools.pairwise(bounds):  # the same series over several polls
        assessed = checker.assess("M1", readings[start:end], rules)
        out += assessed.readings
        events += assessed.events
    assert [set(q) for q in flags(out)] == expected
    resets = [i for i, e in enumerate(expected) if quality.RESET_OCCURRED in e]
    assert [e.created for e in events] == [readings[i].timestamp for i in resets]
    assert all(e.event_type == quality.REGISTER_RESET and e.device_id == "M1" for e in events)


@settings(max_examples=200, deadline=None)
@given(volts=st.lists(st.decimals(min_value=0, max_value=600, places=1), min_size=1, max_size=30))
def test_flags_exactly_the_values_above_the_physical_maximum(volts: list[Decimal]) -> None:
    readings = [Reading("M1", VOLTAGE_L1_V, at(15 * i), v) for i, v in enumerate(volts)]
    out, events = check().assess("M1", readings)
    assert [quality.OUT_OF_RANGE in r.qualities for r in out] == [v > 300 for v in volts]
    assert [r.qualities for r in out if r.value <= 300] == [() for v in volts if v <= 300]
    assert events == []


# --- the cases one by one ------------------------------------------------------------------------


def test_a_reading_type_limit_wins_over_the_unit_one() -> None:
    limits = QualitySection(max_by_unit={"V": 300.0}, max_by_reading_type={VOLTAGE_L1_V.code: 250.0})
    out, _ = check(limits).assess("M1", [Reading("M1", VOLTAGE_L1_V, at(0), Decimal("260"))])
    assert out[0].qualities == (quality.OUT_OF_RANGE,)


def test_not_a_number_is_kept_flagged_and_never_a_baseline() -> None:
    out, _ = check().assess("M1", profile([(0, "100"), (15, "NaN"), (30, "101")]))
    assert flags(out) == [(), (quality.OUT_OF_RANGE,), ()]  # 101 follows 100: NaN did not reset it
    assert out[1].value.is_nan()


def test_a_short_interval_is_partial_and_a_gap_marks_the_next_interval() -> None:
    out, _ = check().assess("M1", profile([(0, "1"), (15, "2"), (20, "3"), (35, "4"), (75, "5")]))
    assert flags(out) == [(), (), (quality.PARTIAL_INTERVAL,), (), (quality.SKIPPED_INTERVAL,)]


def test_registers_are_not_checked_for_gaps() -> None:
    readings = [Reading("M1", REGISTER_A_PLUS_KWH, at(m), Decimal(m)) for m in (0, 15, 90)]
    out, _ = check().assess("M1", readings)
    assert flags(out) == [(), (), ()]


def test_period_inferred_from_the_most_common_step_when_neither_code_nor_model_says_it() -> None:
    fixed_block = ReadingType("0.0.50.4.1.1.12.0.0.0.0.0.0.0.0.3.72.0")  # a measuring period we do not map
    minutes = (0, 10, 20, 30, 35, 45, 55, 75)  # 10-minute data with one short and one long step
    out, _ = check().assess("M1", [Reading("M1", fixed_block, at(m), Decimal(1)) for m in minutes])
    assert flags(out) == [(), (), (), (), (quality.PARTIAL_INTERVAL,), (), (), (quality.SKIPPED_INTERVAL,)]


def test_resets_of_two_registers_at_one_time_make_one_event() -> None:
    checker = check()
    first = [Reading("M1", t, at(0), Decimal("5000")) for t in (REGISTER_A_PLUS_KWH, REGISTER_A_MINUS_KWH)]
    checker.assess("M1", first)
    second = [Reading("M1", t, at(15), Decimal("0.5")) for t in (REGISTER_A_PLUS_KWH, REGISTER_A_MINUS_KWH)]
    out, events = checker.assess("M1", second)
    assert flags(out) == [(quality.RESET_OCCURRED,), (quality.RESET_OCCURRED,)]
    assert len(events) == 1
    assert dict(events[0].details[:3]) == {
        "readingType": REGISTER_A_PLUS_KWH.code,
        "previousValue": "5000",
        "value": "0.5",
    }
    assert len(events[0].details) == 6


def test_a_clock_step_forward_flags_the_intervals_it_touches_even_in_later_polls() -> None:
    checker = check()
    step = ClockStep(at(7), 300)  # 00:07 -> 00:12 meter time
    out, _ = checker.assess("M1", profile([(0, "1")]), clock=MeterClock(steps=(step,)))
    assert flags(out) == [()]
    out, _ = checker.assess("M1", profile([(15, "2"), (30, "3")]))  # the next poll brings 00:15
    assert flags(out) == [(quality.CLOCK_SET_FORWARD,), ()]


def test_a_clock_step_backward_and_a_long_jump() -> None:
    out, _ = check().assess(
        "M1",
        profile([(0, "1"), (15, "2"), (30, "3"), (75, "4"), (90, "5")]),
        clock=MeterClock(steps=(ClockStep(at(10), -240), ClockStep(at(32), 2400))),
    )
    assert flags(out) == [
        (),
        (quality.CLOCK_SET_BACKWARD,),
        (),  # ended at 00:30, before the meter jumped from 00:32 to 01:12
        (quality.CLOCK_SET_FORWARD, quality.SKIPPED_INTERVAL),
        (),
    ]


def test_a_clock_off_beyond_tolerance_flags_meter_stamped_readings_only() -> None:
    readings = [*profile([(0, "1")]), Reading("M1", REGISTER_A_PLUS_KWH, at(0), Decimal(1))]
    out, _ = check(tolerance_s=10).assess("M1", readings, clock=MeterClock(offset_s=-45.0))
    assert flags(out) == [(quality.CLOCK_ERROR,), ()]
    out, _ = check(tolerance_s=10).assess("M1", readings, clock=MeterClock(offset_s=9.0))
    assert flags(out) == [(), ()]


def test_clock_steps_from_the_meter_event_log() -> None:
    events = [
        Event("M1", quality.CLOCK_OLD_TIME, at(10)),
        Event("M1", quality.CLOCK_NEW_TIME, at(6)),
        Event("M1", "3.26.0.85", at(20)),
        Event("M1", quality.CLOCK_NEW_TIME, at(30)),  # no old time before it: not a step
    ]
    assert quality.clock_steps(events) == (ClockStep(at(10), -240.0),)


def test_one_meter_per_assessment() -> None:
    with pytest.raises(ValueError, match="one meter"):
        check().assess("M1", profile([(0, "1")], meter="M2"))


def test_model_rules() -> None:
    wh32 = quality.model_rules(get_model("generic-wh32"))
    assert wh32.rollovers == {
        REGISTER_A_PLUS_KWH: Decimal("4294967.296"),
        REGISTER_A_MINUS_KWH: Decimal("4294967.296"),
    }
    assert quality.model_rules(get_model("sdm630")).rollovers == {}  # float32: no width to wrap at
    assert quality.model_rules(get_model("dlms-generic")).periods == {
        PROFILE_A_PLUS_KWH: 900,
        PROFILE_A_MINUS_KWH: 900,
    }
    dlms = DlmsModel(
        "x",
        "",
        (DlmsRegister("1.0.1.8.0.255", REGISTER_A_PLUS_KWH, Decimal("99999999.9")),),
        DlmsProfile("1.0.99.1.0.255", {"1.0.1.8.0.255": PROFILE_A_PLUS_KWH}, period_s=1800),
    )
    rules = quality.model_rules(dlms)
    assert rules.rollovers == {
        REGISTER_A_PLUS_KWH: Decimal("99999999.9"),
        PROFILE_A_PLUS_KWH: Decimal("99999999.9"),
    }
    assert rules.periods == {PROFILE_A_PLUS_KWH: 1800}


def test_seeded_from_the_store_across_a_restart(tmp_path: Path) -> None:
    """A real store: what was stored before the restart is the baseline of the first poll after it."""
    store = Store(tmp_path / "hes.db")
    register_config_meters(store, [meter_spec("M1")], 0)
    save_readings(
        store,
        [*profile([(0, "100"), (15, "120")]), Reading("M1", REGISTER_A_PLUS_KWH, at(15), Decimal(120))],
        1,
    )

    def seed(mrid: str, rtype: ReadingType, before: datetime, not_before: datetime) -> Reading | None:
        return last_reading(store, mrid, rtype.code, before, not_before)

    checker = QualityCheck(LIMITS, seed, 10.0)  # a fresh process: nothing in memory
    poll = [*profile([(45, "3")]), Reading("M1", REGISTER_A_PLUS_KWH, at(45), Decimal(121))]
    out, events = checker.assess("M1", poll)
    assert flags(out) == [(quality.SKIPPED_INTERVAL, quality.RESET_OCCURRED), ()]
    assert save_readings(store, out, 2, events) == 3
    stored = {(r.reading_type, r.timestamp): r.qualities for r in readings_between(store, "M1", 0, 10**10)}
    assert stored[(PROFILE_A_PLUS_KWH, at(45))] == (quality.SKIPPED_INTERVAL, quality.RESET_OCCURRED)
    assert last_reading(store, "M1", PROFILE_A_PLUS_KWH.code, at(15), at(0)).value == Decimal(100)
    assert last_reading(store, "M1", PROFILE_A_PLUS_KWH.code, at(15), at(1)) is None  # bounded walk
    store.close()
