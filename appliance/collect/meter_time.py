"""Keeping a meter's clock in line with the HES clock: the policy, as pure code.

Within `tolerance_s` nothing is done (every write is a risk and an entry in the meter's log).
Between the tolerance and `max_correction_s` the meter is corrected, at once (`set`) or by at most
`step_s` per check (`step`, for meters whose profiles must not lose or double an interval). Beyond
the maximum the meter is left alone and an EndDeviceEvent asks for a human: a meter that far off
has a flat battery or the HES is wrong. Nothing is ever written while the HES clock itself is not
trusted (GPS-locked, or in holdover within its budget).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum

from appliance.collect.dlms import axdr
from appliance.collect.quality import ClockStep, MeterClock
from appliance.config import MeterTimeSection
from appliance.model import Event

CLOCK_SYNC_REFUSED = "3.36.116.85"  # ElectricMeter / Clock / TimeSync / Failed: needs a human
CLOCK_SET = "3.36.116.24"  # ElectricMeter / Clock / TimeSync / Changed: the HES corrected the meter


class ClockAction(StrEnum):
    """What the policy decided for one check."""

    NONE = "none"  # within tolerance
    SET = "set"  # corrected (all the way, or one step)
    UNTRUSTED = "untrusted"  # off, but the HES clock may not be used to correct it
    REFUSED = "refused"  # too far off to correct without a human
    WRITE_DENIED = "write-denied"  # the meter refused the write (a read-only client, say)


@dataclass(frozen=True)
class ClockDecision:
    """The outcome of one clock check: what to write and what to tell the MDM. The readings are
    marked by `collect/quality.py` from the offset and the step."""

    action: ClockAction
    offset_s: float  # meter minus HES, as read
    write: axdr.DateTime | None = None
    event: Event | None = None
    step: ClockStep | None = None  # the jump the write makes, in meter time

    def meter_clock(self, logged: tuple[ClockStep, ...]) -> MeterClock:
        """What quality checking needs to know of the meter clock in this poll."""
        steps = logged if self.step is None else (*logged, self.step)  # only a SET has a step
        return MeterClock(self.offset_s, steps)


def decide(
    meter_id: str,
    meter_time: axdr.DateTime,
    hes_now: datetime,
    hes_trusted: bool,
    policy: MeterTimeSection,
) -> ClockDecision:
    """The action for a meter whose clock read `meter_time` when the HES clock read `hes_now`."""
    offset = (meter_time.to_utc() - hes_now).total_seconds()
    size = abs(offset)
    if size <= policy.tolerance_s:
        return ClockDecision(ClockAction.NONE, offset)
    if size > policy.max_correction_s:
        why = f"beyond {policy.max_correction_s:.0f} s, not corrected"
        return ClockDecision(
            ClockAction.REFUSED, offset, event=_not_corrected(meter_id, hes_now, offset, why)
        )
    if not hes_trusted:
        return ClockDecision(ClockAction.UNTRUSTED, offset)
    remaining = 0.0 if policy.mode == "set" else offset - min(size, policy.step_s) * (1 if offset > 0 else -1)
    target = hes_now + timedelta(seconds=remaining)
    event = Event(
        meter_id,
        CLOCK_SET,
        hes_now,
        reason=f"meter clock corrected by {remaining - offset:+.0f} s",
        details=(("offsetSeconds", f"{offset:.0f}"), ("remainingSeconds", f"{remaining:.0f}")),
    )
    step = ClockStep(meter_time.to_utc(), remaining - offset)
    return ClockDecision(ClockAction.SET, offset, _in_meter_zone(target, meter_time), event, step)


def write_denied(decision: ClockDecision, meter_id: str, hes_now: datetime, error: str) -> ClockDecision:
    """The decision after the meter refused its correction: readings marked, the MDM told."""
    why = f"the meter refused the correction: {error}"
    event = _not_corrected(meter_id, hes_now, decision.offset_s, why)
    return ClockDecision(ClockAction.WRITE_DENIED, decision.offset_s, event=event)


def _not_corrected(meter_id: str, hes_now: datetime, offset: float, why: str) -> Event:
    return Event(
        meter_id,
        CLOCK_SYNC_REFUSED,
        hes_now,
        reason=f"meter clock {offset:+.0f} s off: {why}",
        severity="major",
        details=(("offsetSeconds", f"{offset:.0f}"),),
    )


def _in_meter_zone(moment: datetime, meter_time: axdr.DateTime) -> axdr.DateTime:
    """`moment` as the meter shows time: its own deviation and daylight-saving status kept."""
    deviation = meter_time.deviation or 0
    local = moment.astimezone(timezone(timedelta(minutes=-deviation)))
    return axdr.DateTime.from_datetime(local.replace(microsecond=0), clock_status=meter_time.clock_status)
