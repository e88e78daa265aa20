"""The time authority: every timestamp the appliance writes comes from here, with how far to trust it.

The time is the system clock (chrony disciplines it from gpsd on the appliance). This object holds
what the system clock is worth, measured against GPS time all the time:

- LOCKED: a GPS fix (mode 2 or 3) and the system clock within `clock.tolerance_s` of GPS time;
- HOLDOVER: the fix was lost while LOCKED, and the estimated error (the offset at the loss plus
  `holdover_drift_ppm` since) is still within `holdover_budget_s`;
- UNSYNCED: everything else (no GPS, the budget spent, or the system clock off GPS time).

`observe` is pure (fixes and times come from the caller, hw/gps.GpsWatcher) and returns the change
it caused, which `change_event` turns into the EndDeviceEvent for the MDM. A Clock nobody feeds
stays UNSYNCED and still tells the time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from appliance.config import ClockSection
from appliance.errors import ClockError
from appliance.model import Event
from appliance.uplink.cim import format_time

if TYPE_CHECKING:
    from appliance.hw.gps import GpsFix

log = logging.getLogger(__name__)

# The appliance's clock alarms: Assets/mRID = hes.id, type 0 (generic) / domain 36 Clock /
# subdomain 116 TimeSync (CIM-NOTES section 5). Our choice, documented in docs/mqtt-api.md.
CLOCK_LOCKED = "0.36.116.49"  # Re-established: locked to GPS time
CLOCK_HOLDOVER = "0.36.116.47"  # LossDetected: GPS fix lost, running on the budget
CLOCK_UNSYNCED = "0.36.116.85"  # Failed: not to be trusted (meter clocks are left alone)
CLOCK_STEPPED = "0.36.116.13"  # clock set (Connexo's code): the daemon stepped the system clock

SAMPLES = 4  # offsets kept; the smallest is the least delayed NMEA sentence
STEP_AFTER = 3  # agreeing fixes before the daemon steps the system clock (one bad sentence is not enough)
# A GPS time before this is a receiver with the week-number rollover bug (it is 19.7 years behind).
EARLIEST_GPS_TIME = datetime(2025, 1, 1, tzinfo=UTC)
NO_GPSD = "not configured"  # status()["gpsd"] of a box without a GPS receiver (the panel reads it)


class ClockState(StrEnum):
    """What the HES clock is worth."""

    LOCKED = "LOCKED"
    HOLDOVER = "HOLDOVER"
    UNSYNCED = "UNSYNCED"


@dataclass(frozen=True)
class ClockChange:
    """One state change, with what caused it."""

    previous: ClockState
    state: ClockState
    reason: str
    offset_s: float | None
    gps_time: datetime | None


class Clock:
    """The HES clock: `now()` for every timestamp, `trusted()` before anything relies on its accuracy."""

    def __init__(self, settings: ClockSection | None = None) -> None:
        self.settings = settings
        self.state = ClockState.UNSYNCED
        self._lock = threading.Lock()
        self._since = self.now()
        self._samples: deque[float] = deque(maxlen=SAMPLES)
        self._fix: GpsFix | None = None
        self._last_gps_time: datetime | None = None
        self._last_fix_at: float | None = None  # monotonic time of the newest fix
        self._last_offset = 0.0
        self._holdover: tuple[float, float] | None = None  # (monotonic start, |offset| at the loss)
        self._rollover_seen = False

    def now(self) -> datetime:
        """The current time, aware, in UTC."""
        return datetime.now(UTC)

    def slot_start(self, interval_s: int) -> datetime:
        """The start of the current `interval_s` slot (slots are aligned to the epoch, in UTC)."""
        seconds = int(self.now().timestamp())
        return datetime.fromtimestamp(seconds - seconds % interval_s, UTC)

    @property
    def offset_s(self) -> float | None:
        """System clock minus GPS time, in seconds; None without a GPS fix to compare with."""
        with self._lock:
            return min(self._samples) if self._samples else None

    def trusted(self) -> bool:
        """LOCKED, or HOLDOVER within its budget: may meter clocks be set from this clock?"""
        with self._lock:
            return self._trusted(time.monotonic())

    def observe(self, fix: GpsFix | None, system_s: float, monotonic_s: float) -> ClockChange | None:
        """Take one reading of gpsd (None: gpsd unreachable) made at `system_s` (the system clock,
        epoch seconds) and `monotonic_s`; returns the state change it caused, if any.

        A fix counts once, when its GPS time is new: gpsd repeats the last fix while the receiver is
        silent. Its offset is `system_s` minus its GPS time; the smallest of the last few is kept,
        since NMEA only ever arrives late.
        """
        settings = self._settings()
        with self._lock:
            if fix is not None and fix.mode >= 2 and fix.time is not None and fix.time != self._last_gps_time:
                self._last_gps_time = fix.time
                if fix.time >= EARLIEST_GPS_TIME:
                    self._rollover_seen = False
                    self._take(fix, system_s - fix.time.timestamp(), monotonic_s, settings)
                elif not self._rollover_seen:  # logged once per episode, not every second
                    self._rollover_seen = True
                    log.warning(
                        "GPS time %s ignored: before %s (receiver week rollover?)",
                        fix.time,
                        EARLIEST_GPS_TIME.date(),
                    )
            if self._last_fix_at is None or monotonic_s - self._last_fix_at > settings.loss_after_s:
                self._fix = None
                self._samples.clear()
            return self._settle(system_s, monotonic_s, settings)

    def step_correction(self) -> float | None:
        """Seconds to add to the system clock now, when this box disciplines it itself
        (discipline = "daemon") and the last fixes agree it is off by more than the tolerance."""
        settings = self._settings()
        with self._lock:
            if settings.discipline != "daemon" or len(self._samples) < STEP_AFTER:
                return None
            offset = min(self._samples)
            return -offset if abs(offset) > settings.tolerance_s else None

    def stepped(self) -> None:
        """The system clock was stepped: the offsets measured before mean nothing any more."""
        with self._lock:
            self._samples.clear()

    def status(self) -> dict[str, Any]:
        """The "clock" part of the status document."""
        settings = self.settings
        with self._lock:
            document: dict[str, Any] = {
                "state": self.state.value,
                "trusted": self._trusted(time.monotonic()),
                "since": format_time(self._since),
                "offset_s": round(min(self._samples), 3) if self._samples else None,
                "gpsd": f"{settings.gpsd_host}:{settings.gpsd_port}"
                if settings and settings.gpsd_host
                else NO_GPSD,
                "fix": None,
            }
            if settings is not None:
                document |= {"tolerance_s": settings.tolerance_s, "discipline": settings.discipline}
            if self._fix is not None and self._fix.time is not None:
                document["fix"] = {
                    "mode": self._fix.mode,
                    "time": format_time(self._fix.time),
                    "lat": self._fix.lat,
                    "lon": self._fix.lon,
                    "alt": self._fix.alt,
                }
            if self.state is ClockState.HOLDOVER and settings is not None:
                document["holdover"] = {
                    "estimated_error_s": round(self._holdover_error(time.monotonic(), settings), 3),
                    "budget_s": settings.holdover_budget_s,
                }
            return document

    def _settings(self) -> ClockSection:
        if self.settings is None:
            raise ClockError("this clock has no [clock] settings: nothing may feed it")
        return self.settings

    def _take(self, fix: GpsFix, offset: float, monotonic_s: float, settings: ClockSection) -> None:
        """A new fix; an offset that jumps away from the others starts the window afresh."""
        if self._samples and abs(offset - min(self._samples)) > settings.tolerance_s:
            self._samples.clear()
        self._samples.append(offset)
        self._fix, self._last_fix_at, self._last_offset = fix, monotonic_s, min(self._samples)

    def _settle(self, system_s: float, monotonic_s: float, settings: ClockSection) -> ClockChange | None:
        offset = min(self._samples) if self._samples else None
        if offset is not None:
            self._holdover = None
            if abs(offset) <= settings.tolerance_s:
                state, reason = ClockState.LOCKED, f"locked to GPS time (system clock {offset:+.3f} s)"
            else:
                state = ClockState.UNSYNCED
                reason = f"system clock {offset:+.3f} s from GPS time (tolerance {settings.tolerance_s:g} s)"
        elif self.state in (ClockState.LOCKED, ClockState.HOLDOVER):
            if self._holdover is None:
                self._holdover = (monotonic_s, abs(self._last_offset))
            error = self._holdover_error(monotonic_s, settings)
            if error <= settings.holdover_budget_s:
                state = ClockState.HOLDOVER
                reason = f"GPS fix lost: holding over (budget {settings.holdover_budget_s:g} s)"
            else:
                state = ClockState.UNSYNCED
                reason = (
                    f"no GPS fix, holdover budget spent (estimated error {error:.3f} s"
                    f" > {settings.holdover_budget_s:g} s)"
                )
        else:
            return None
        if state is self.state:
            return None
        change = ClockChange(
            self.state, state, reason, offset, self._last_gps_time if offset is not None else None
        )
        self.state, self._since = state, datetime.fromtimestamp(system_s, UTC)
        return change

    def _holdover_error(self, monotonic_s: float, settings: ClockSection) -> float:
        if self._holdover is None:
            return 0.0
        started, offset = self._holdover
        return offset + settings.holdover_drift_ppm * 1e-6 * max(0.0, monotonic_s - started)

    def _trusted(self, monotonic_s: float) -> bool:
        if self.state is ClockState.LOCKED:
            return True
        return (
            self.state is ClockState.HOLDOVER
            and self.settings is not None
            and self._holdover_error(monotonic_s, self.settings) <= self.settings.holdover_budget_s
        )


_CHANGE_EVENTS = {
    ClockState.LOCKED: (CLOCK_LOCKED, "info"),
    ClockState.HOLDOVER: (CLOCK_HOLDOVER, "warning"),
    ClockState.UNSYNCED: (CLOCK_UNSYNCED, "critical"),
}


def change_event(hes_id: str, change: ClockChange, now: datetime) -> Event:
    """The EndDeviceEvent that tells the MDM the HES clock changed state."""
    event_type, severity = _CHANGE_EVENTS[change.state]
    details = [("clockState", change.state.value), ("previousState", change.previous.value)]
    if change.offset_s is not None:
        details.append(("offsetSeconds", f"{change.offset_s:+.3f}"))
    if change.gps_time is not None:
        details.append(("gpsTime", format_time(change.gps_time)))
    return Event(hes_id, event_type, now, change.reason, severity, tuple(details))


def step_event(hes_id: str, correction_s: float, now: datetime) -> Event:
    """The EndDeviceEvent that tells the MDM the daemon stepped the system clock."""
    return Event(
        hes_id,
        CLOCK_STEPPED,
        now,
        f"system clock stepped by {correction_s:+.3f} s to GPS time",
        "warning",
        (("stepSeconds", f"{correction_s:+.3f}"),),
    )


def step_system_clock(correction_s: float) -> None:
    """Move the system clock by `correction_s` at once. The one place that sets the OS clock (it
    needs CAP_SYS_TIME); whether to call it is `Clock.step_correction`'s decision."""
    try:
        now_ns = time.clock_gettime_ns(time.CLOCK_REALTIME)
        time.clock_settime_ns(time.CLOCK_REALTIME, now_ns + round(correction_s * 1e9))
    except OSError as exc:
        raise ClockError(f"cannot step the system clock by {correction_s:+.3f} s: {exc.strerror}") from exc
