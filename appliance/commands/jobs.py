"""What a request does on a meter: runs on the thread that owns the line to it (`Collector.submit`): its
RS-485 bus worker, or the connection of a WAN meter that called (`MeterAccess` is what both give).

Each job checks the request's expiry first (a command that waited too long is not carried out), marks
its target executing in the journal, and returns an `Outcome`. Relay operations read the relay back
after acting, so the MDM learns the state the meter is really in, not the one asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from appliance.clock import Clock
from appliance.collect.dlms import axdr
from appliance.collect.jobs import Task
from appliance.collect.meter_time import ClockAction
from appliance.collect.meters import get_model
from appliance.collect.readers import PollResult
from appliance.commands import codes
from appliance.commands.requests import Request
from appliance.config import MeterSpec
from appliance.errors import RequestRefused
from appliance.housekeeping import Housekeeping
from appliance.model import Protocol as MeterProtocol
from appliance.model import epoch
from appliance.store import Store
from appliance.store.commands import mark_executing
from appliance.store.readings import last_stored

CLASS_DISCONNECT_CONTROL = 70
DISCONNECT_CONTROL = "0.0.96.3.10.255"
REMOTE_DISCONNECT, REMOTE_RECONNECT = 1, 2
CONTROL_STATES = {0: "disconnected", 1: "connected", 2: "ready_for_reconnection"}
EXPECTED_STATE = {"disconnect": "disconnected", "connect": "connected", "arm": "ready_for_reconnection"}
# Blue Book control modes in which remote_reconnect only arms the relay (the customer closes it);
# in the others it closes the relay at once, so "arm" would switch a customer on unasked.
ARMING_MODES = (2, 4)


class MeterAccess(Protocol):
    """The line to one meter as a job holds it: collect.bus.BusAccess, collect.listener.WanAccess."""

    store: Store

    @property
    def housekeeping(self) -> Housekeeping:
        """Where what a job read is saved."""

    def interval(self, meter: MeterSpec, task: Task) -> int:
        """Seconds between two reads of `task` of `meter` (0: never)."""

    def dlms(self, meter: MeterSpec) -> Any:
        """A DLMS session with `meter`, as a context manager."""

    def poll(self, meter: MeterSpec, tasks: frozenset[Task], stamp: datetime | None = None) -> PollResult:
        """Read `tasks` of `meter` now."""


@dataclass(frozen=True)
class Outcome:
    """What happened at one meter: done or not, why not, and what the meter reads now."""

    ok: bool
    detail: dict[str, str] = field(default_factory=dict)
    code: str = ""
    reason: str = ""


def job_for(
    request: Request, command_id: int, expires_at: int, clock: Clock
) -> Callable[[MeterAccess, MeterSpec], Outcome]:
    """The bus job for one meter of `request`."""

    def run(access: MeterAccess, meter: MeterSpec) -> Outcome:
        now = clock.now()
        if epoch(now) >= expires_at:
            raise RequestRefused(codes.EXPIRED, "expired before its turn on the bus")
        mark_executing(access.store, command_id, meter.id, epoch(now))
        if request.operation == "control" and request.action == "clock_sync":
            return clock_sync(access, meter)
        if request.operation == "control":
            return relay(access, meter, request.action)
        if request.operation == "read" and request.start is None:
            return read_now(access, meter, clock)
        if request.operation == "read":
            return catch_up(access, meter, request.end or epoch(now), clock)
        return read_event_log(access, meter, clock)

    return run


def needs_bus(request: Request, meter: MeterSpec) -> bool:
    """Whether `request` has to talk to `meter`, or is answered from the store and registry alone."""
    if request.operation == "meter_config":
        return False
    if request.operation == "events":
        return meter.protocol is MeterProtocol.DLMS  # the event log is read first; Modbus meters have none
    return True


def _dlms_only(meter: MeterSpec, what: str) -> None:
    if meter.protocol is not MeterProtocol.DLMS:
        raise RequestRefused(codes.NOT_SUPPORTED, f"meter {meter.id}: a {meter.protocol} meter has no {what}")


def relay(access: MeterAccess, meter: MeterSpec, action: str) -> Outcome:
    """remote_disconnect or remote_reconnect on the disconnect control (class 70), then read back
    output_state and control_state."""
    _dlms_only(meter, "remote relay")
    with access.dlms(meter) as session:
        mode = None
        if action in ("connect", "arm"):
            mode = _integer(session.get(CLASS_DISCONNECT_CONTROL, DISCONNECT_CONTROL, 4))
            if action == "arm" and mode not in ARMING_MODES:
                raise RequestRefused(
                    codes.NOT_SUPPORTED,
                    f"meter {meter.id}: control mode {mode} closes the relay on a remote reconnect; "
                    "arming refused (it would switch the supply on)",
                )
        method = REMOTE_DISCONNECT if action == "disconnect" else REMOTE_RECONNECT
        session.action(CLASS_DISCONNECT_CONTROL, DISCONNECT_CONTROL, method, axdr.Integer(0))
        output = session.get(CLASS_DISCONNECT_CONTROL, DISCONNECT_CONTROL, 2)
        control = _integer(session.get(CLASS_DISCONNECT_CONTROL, DISCONNECT_CONTROL, 3))
    state = CONTROL_STATES.get(control, f"unknown ({control})")
    detail = {"relayState": state, "outputState": "closed" if getattr(output, "value", False) else "open"}
    if mode is not None:
        detail["controlMode"] = str(mode)
    if state != EXPECTED_STATE[action]:
        return Outcome(
            False, detail, codes.DEVICE_REFUSED, f"meter {meter.id}: relay is {state} after {action}"
        )
    return Outcome(True, detail)


def clock_sync(access: MeterAccess, meter: MeterSpec) -> Outcome:
    """The meter-time policy applied now ([meter_time]): corrected, or why not."""
    _dlms_only(meter, "clock to set")
    result = access.poll(meter, frozenset({Task.CLOCK}))
    access.housekeeping.save(access.store, result.readings, result.events)
    decision = result.clock
    if decision is None:
        raise RequestRefused(codes.NOT_SUPPORTED, f"meter {meter.id}: no clock check configured")
    detail = {"clockOffsetSeconds": f"{decision.offset_s:.1f}", "clockAction": decision.action.value}
    if decision.action in (ClockAction.NONE, ClockAction.SET):
        return Outcome(True, detail)
    if decision.action is ClockAction.WRITE_DENIED:
        refused = f"meter {meter.id}: the meter refused the new time"
        return Outcome(False, detail, codes.DEVICE_REFUSED, refused)
    # The HES declined, not the meter: its own clock is not trusted, or the offset needs a human.
    why = (
        "the HES clock is not trusted (no GPS lock)"
        if decision.action is ClockAction.UNTRUSTED
        else "too far off to correct without a human"
    )
    return Outcome(False, detail, codes.FAILED, f"meter {meter.id}: clock not corrected: {why}")


def read_now(access: MeterAccess, meter: MeterSpec, clock: Clock) -> Outcome:
    """The meter's registers read now, stamped with the time of the read, stored like any reading."""
    stamp = clock.now().replace(microsecond=0)
    result = access.poll(meter, frozenset({Task.REGISTERS}), stamp)
    access.housekeeping.save(access.store, result.readings, result.events)
    return Outcome(True, {"start": str(epoch(stamp)), "end": str(epoch(stamp) + 1)})


def catch_up(access: MeterAccess, meter: MeterSpec, end: int, clock: Clock) -> Outcome:
    """Before a range is served from the store: read from the meter's profile what the store lacks
    at its end (an outage, a new meter)."""
    model = get_model(meter.model)
    profile = getattr(model, "profile", None)
    if profile is None:
        return Outcome(True, {"source": "store"})
    last = last_stored(access.store, meter.id, list(profile.columns.values()))
    period = timedelta(seconds=access.interval(meter, Task.PROFILE) or 900)
    if last is not None and last + period > min(clock.now(), datetime.fromtimestamp(end, last.tzinfo)):
        return Outcome(True, {"source": "store"})
    result = access.poll(meter, frozenset({Task.PROFILE}))
    access.housekeeping.save(access.store, result.readings, result.events)
    return Outcome(True, {"source": "store+meter", "readFromMeter": str(len(result.readings))})


def read_event_log(access: MeterAccess, meter: MeterSpec, clock: Clock) -> Outcome:
    """The meter's event log read since the newest stored event, so the store can answer."""
    result = access.poll(meter, frozenset({Task.EVENTS}))
    access.housekeeping.save(access.store, result.readings, result.events)
    return Outcome(True, {"readAt": str(epoch(clock.now()))})


def _integer(value: axdr.Data) -> int:
    number = getattr(value, "value", None)
    if not isinstance(number, int) or isinstance(number, bool):
        raise RequestRefused(codes.FAILED, f"the disconnect control answered {value!r}, not a number")
    return number
