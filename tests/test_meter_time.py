"""The meter-time policy, decision by decision (pure code: no meter, no clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from appliance.collect.dlms import axdr
from appliance.collect.meter_time import (
    CLOCK_SET,
    CLOCK_SYNC_REFUSED,
    ClockAction,
    decide,
)
from appliance.config import MeterTimeSection

HES_NOW = datetime(2026, 3, 29, 0, 59, 50, tzinfo=UTC)  # ten seconds before the EU spring DST change
SET = MeterTimeSection(tolerance_s=10.0, max_correction_s=300.0, mode="set", step_s=30.0)
STEP = MeterTimeSection(tolerance_s=10.0, max_correction_s=300.0, mode="step", step_s=30.0)
CET = timezone(timedelta(hours=1))


def meter_clock(offset_s: float, zone: timezone = CET) -> axdr.DateTime:
    """What a meter in `zone` shows when it is `offset_s` ahead of the HES."""
    return axdr.DateTime.from_datetime((HES_NOW + timedelta(seconds=offset_s)).astimezone(zone))


@pytest.mark.parametrize("offset", [0.0, 9.0, -10.0])
def test_within_tolerance_nothing_is_written(offset: float) -> None:
    decision = decide("M1", meter_clock(offset), HES_NOW, True, SET)
    assert decision.action is ClockAction.NONE and decision.write is None and decision.event is None
    assert decision.offset_s == pytest.approx(offset) and decision.step is None


@pytest.mark.parametrize("offset", [120.0, -45.0])
def test_set_mode_writes_the_hes_time_in_the_meters_own_zone(offset: float) -> None:
    decision = decide("M1", meter_clock(offset), HES_NOW, True, SET)
    assert decision.action is ClockAction.SET and decision.write is not None
    assert decision.write.to_utc() == HES_NOW and decision.write.deviation == -60  # CET kept
    assert decision.event is not None and decision.event.event_type == CLOCK_SET
    # The jump in meter time, for the quality checks: from where the meter was, by minus its offset.
    assert decision.step is not None and decision.step.step_s == pytest.approx(-offset)
    assert decision.step.at == HES_NOW + timedelta(seconds=offset)
    assert decision.meter_clock(()).steps == (decision.step,)


def test_step_mode_moves_at_most_one_step_per_check() -> None:
    decision = decide("M1", meter_clock(100.0), HES_NOW, True, STEP)
    assert decision.write is not None and decision.write.to_utc() == HES_NOW + timedelta(seconds=70)
    closer = decide("M1", meter_clock(-20.0), HES_NOW, True, STEP)
    assert closer.write is not None and closer.write.to_utc() == HES_NOW  # the last step lands exactly


def test_too_far_off_is_refused_with_an_event_for_a_human() -> None:
    decision = decide("M1", meter_clock(3600.0), HES_NOW, True, SET)
    assert decision.action is ClockAction.REFUSED and decision.write is None
    assert decision.event is not None and decision.event.event_type == CLOCK_SYNC_REFUSED
    assert dict(decision.event.details)["offsetSeconds"] == "3600"
    assert decision.meter_clock(()).offset_s == 3600 and decision.meter_clock(()).steps == ()


def test_never_synced_from_an_untrusted_hes_clock() -> None:
    decision = decide("M1", meter_clock(60.0), HES_NOW, False, SET)
    assert decision.action is ClockAction.UNTRUSTED and decision.write is None and decision.event is None
    assert decision.step is None


def test_the_meters_dst_flag_and_deviation_are_honoured_across_the_change() -> None:
    """A meter already on summer time (UTC+2, DST bit set) that is right is right."""
    cest = timezone(timedelta(hours=2))
    summer = axdr.DateTime.from_datetime(
        HES_NOW.astimezone(cest), clock_status=axdr.ClockStatus.DAYLIGHT_SAVING_ACTIVE
    )
    assert decide("M1", summer, HES_NOW, True, SET).action is ClockAction.NONE
    late = decide("M1", meter_clock(40.0, cest), HES_NOW, True, SET)
    assert late.write is not None and late.write.deviation == -120 and late.write.to_utc() == HES_NOW


def test_a_leap_day_is_an_ordinary_day() -> None:
    leap = datetime(2028, 2, 29, 23, 59, 55, tzinfo=UTC)
    meter = axdr.DateTime.from_datetime((leap + timedelta(seconds=30)).astimezone(CET))
    assert (meter.year, meter.month, meter.day) == (2028, 3, 1)
    decision = decide("M1", meter, leap, True, SET)
    assert decision.write is not None and decision.write.to_utc() == leap
    assert (decision.write.month, decision.write.day) == (3, 1)  # 00:59:55 local on 1 March
