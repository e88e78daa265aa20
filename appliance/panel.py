"""What the LED panel tells a technician: component states in, one pattern per LED out. Pure code.

One reading for every LED: off = not there or nothing to say, solid = good, slow (1 Hz) = working on
it or degraded, fast (4 Hz) = needs attention. The fault LED is dark while all is well, and the
worst problem decides what it shows: a failing store (solid), a hung worker (fast), a backlog near
the store's cap (slow). The power LED is the main loop's heartbeat, not decided here (`hw/leds.py`).

The daemon feeds this on each status refresh from the status document it has just built, so the
panel and the status topic never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from appliance.clock import NO_GPSD, ClockState
from appliance.hw.leds import Led, Pattern
from appliance.uplink.health import WanState

# The fault LED blinks slowly once the readings waiting for the uplink would fill this much of the
# store's cap: past it, a longer WAN outage ends in dropped readings.
BACKLOG_WARNING = 0.80
# Bytes one waiting reading takes in the store: its row in `readings` (~28) and in `unsent` (~18),
# measured with 300 000 readings of 50 meters (three registers each, float values).
BYTES_PER_WAITING_READING = 46
_State = TypeVar("_State", bound=StrEnum)


@dataclass(frozen=True)
class PanelInputs:
    """The component states the panel shows."""

    clock: ClockState | None  # None: no GPS configured
    wan: WanState
    backlog_ratio: float  # share of the store's cap the waiting readings take, 0..1
    stalled_threads: tuple[str, ...]  # workers that died or stopped making progress
    buses_running: int  # RS-485 bus workers


_GPS: dict[ClockState | None, Pattern] = {
    None: Pattern.OFF,
    ClockState.LOCKED: Pattern.SOLID,
    ClockState.HOLDOVER: Pattern.SLOW,
    ClockState.UNSYNCED: Pattern.FAST,
}
_WAN = {WanState.UP: Pattern.SOLID, WanState.CONNECTING: Pattern.SLOW, WanState.DOWN: Pattern.FAST}


def patterns(inputs: PanelInputs) -> dict[Led, Pattern]:
    """The pattern of every LED but power, for these component states."""
    return {
        Led.WAN: _WAN[inputs.wan],
        Led.GPS: _GPS[inputs.clock],
        Led.RS485: Pattern.FLASH if inputs.buses_running else Pattern.OFF,
        Led.FAULT: _fault(inputs),
    }


def _fault(inputs: PanelInputs) -> Pattern:
    """A hung worker (fast) before the backlog (slow); a failing store is `store_failed()`."""
    if inputs.stalled_threads:
        return Pattern.FAST
    if inputs.backlog_ratio >= BACKLOG_WARNING:
        return Pattern.SLOW
    return Pattern.OFF


def store_failed() -> dict[Led, Pattern]:
    """The store cannot be read (disk, SD card, corruption): the fault LED lights steadily.

    Only the fault LED changes: without a status document the other LEDs keep their last states.
    The next status refresh that reads the store puts the fault LED back to what `patterns` says.
    """
    return {Led.FAULT: Pattern.SOLID}


def backlog_ratio(waiting_readings: int, cap_bytes: int) -> float:
    """The share of the store's cap that `waiting_readings` take (an estimate, see above)."""
    return waiting_readings * BYTES_PER_WAITING_READING / cap_bytes


def inputs_from_status(
    document: dict[str, Any], *, stalled_threads: tuple[str, ...], buses_running: int
) -> PanelInputs:
    """The panel's inputs from a status document (`status.snapshot`), plus what only the daemon knows.

    A clock or WAN state missing or unknown shows as the worst one: a blinking LED gets looked at,
    a wrong steady one does not.
    """
    clock = document.get("clock") or {}
    clock_state: ClockState | None = None
    if clock.get("gpsd") != NO_GPSD:
        clock_state = _known(ClockState, clock.get("state"), ClockState.UNSYNCED)
    wan_state = _known(WanState, (document.get("wan") or {}).get("state"), WanState.DOWN)
    backlog = document.get("backlog", {})
    waiting = backlog.get("unsent_readings", 0) + backlog.get("pending_readings", 0)
    cap_bytes = document.get("store", {}).get("max_mb", 0) * 2**20
    return PanelInputs(
        clock=clock_state,
        wan=wan_state,
        backlog_ratio=backlog_ratio(waiting, cap_bytes) if cap_bytes else 0.0,
        stalled_threads=stalled_threads,
        buses_running=buses_running,
    )


def _known(kind: type[_State], value: object, worst: _State) -> _State:
    """`value` as a member of `kind`, or `worst` when it is none of them."""
    try:
        return kind(value)
    except ValueError:
        return worst
