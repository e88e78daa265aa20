"""DCUs and meters that connect over the WAN: a DLMS TCP-wrapper listener (IEC 62056-47).

A device that calls is identified first: by the push (data-notification) it sends on connecting, or,
when none comes within `push_wait_s`, by reading its logical device name (0.0.42.0.0.255) as the
public client. Then it is admitted (registered before, or registered now if `auto_register`) or
refused: an alarm tells the MDM, the connection is closed. An admitted meter is read over its own
connection with its meter model and schedule, exactly as on a bus (the HES is the DLMS client on a
socket the meter opened); a DCU pushes the values of the meters behind it (`dlms/push.py`), which
are registered as its children. The connection stays open until the device hangs up or stays
silent for `idle_timeout_s`.

Commands reach a WAN meter through `submit` (the Collector routes them here): a job waits for the
meter's connection, runs on its thread between two polls, and fails with NotConnected when its
deadline passes first (the request expires); a job without a deadline needs the meter connected now.

Bounded by construction: at most `max_connections` connections (one thread each; one more is closed
as soon as it is accepted), every frame must be whole within `timeout_ms` of being asked for or
begun, and a connection that sends garbage, says nothing or trickles bytes is closed alone, with one
log line.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from appliance.clock import Clock
from appliance.collect.dlms import apdu
from appliance.collect.dlms.push import (
    LOGICAL_DEVICE_NAME,
    Push,
    device_id,
    logical_device_name,
    parse_push,
)
from appliance.collect.dlms.session import PUBLIC_CLIENT, DlmsSession, DlmsSettings
from appliance.collect.dlms.transport import TcpTransport
from appliance.collect.dlms.wrapper import decode_wrapper, wrapper_bytes_needed
from appliance.collect.jobs import Task, task_interval
from appliance.collect.meters import get_model
from appliance.collect.meters.dlms import DlmsModel, scaled_value
from appliance.collect.readers import DlmsReader, PollResult
from appliance.config import BusSpec, Config, ListenerSection, MeterSpec
from appliance.errors import (
    DeviceError,
    DeviceTimeout,
    NotConnected,
    ProtocolError,
    StoreError,
    TransportError,
)
from appliance.housekeeping import Housekeeping
from appliance.model import Event, Protocol, Reading, epoch
from appliance.store import Store
from appliance.store.registry import register_meter, registered_meter
from appliance.store.stats import Outcome, outcome_of, record_poll
from appliance.store.wan_devices import (
    DCU,
    METER,
    WAN_BUS,
    WanDevice,
    add_device,
    find_device,
    note_connected,
    note_disconnected,
    note_refusal,
)
from appliance.uplink.messages import enqueue_alarm

log = logging.getLogger(__name__)

MANAGEMENT_DEVICE = 1  # the wPort of the management logical device
REFUSAL_ALARM_EVERY_S = 86400  # a refused device calls again and again: one alarm a day tells enough
ACCEPT_WAIT_S = 1.0  # the longest the listener blocks before it looks at the stop flag again

# EndDeviceEvent codes of the listener (type.domain.subDomain.eventOrAction, CIM-NOTES section 5):
# Configuration (7) / Activated (4) for a device registered on its first call, Security (12) / Failed
# (85) for one refused; type 3 ElectricMeter or 10 Collector (a DCU). Our choice (docs/mqtt-api.md).
_EVENT_TYPE = {METER: "3", DCU: "10"}
REGISTERED_EVENT = "{type}.7.0.4"
REFUSED_EVENT = "{type}.12.0.85"

Details = tuple[tuple[str, str], ...]


def listener_port_taken(settings: ListenerSection) -> str | None:
    """Why the enabled listener could not bind its port now (None: it could), for `hes config check`.

    A warning, not an error: the running daemon holds the port itself while its next config is checked.
    """
    if not settings.enabled:
        return None
    try:
        socket.create_server((settings.bind, settings.port)).close()
    except OSError as exc:
        return (
            f"listener.port: {settings.port} is in use on {settings.bind} (by the running daemon, or "
            f"another program: {exc.strerror})"
        )
    return None


class InboundConnection(TcpTransport):
    """A socket a device opened to us, as a FramePort: it cannot be reopened (the device calls
    again), and it can wait for the device to speak first."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        host, _, port = peer.rpartition(":")
        super().__init__(host, int(port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock

    def open(self) -> None:
        """Nothing to open; TransportError once the connection is gone."""
        self._require_open()

    def wait_readable(self, timeout_s: float) -> bool:
        """Whether the device sent something (or hung up) within `timeout_s`."""
        sock = self._require_open()
        readable, _, _ = select.select([sock], [], [], max(0.0, timeout_s))
        return bool(readable)

    def hang_up(self) -> None:
        """Wake a thread blocked on this socket (shutdown does, close does not) and close it."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):  # the device hung up first
                sock.shutdown(socket.SHUT_RDWR)


class _WanReader(DlmsReader):
    """The meter's reader over its own connection: the TCP wrapper instead of HDLC."""

    def settings(self, meter: MeterSpec) -> DlmsSettings:
        """The meter's settings (client, authentication, keys) with wrapper framing."""
        return replace(super().settings(meter), framing="wrapper", physical=None)


@dataclass(frozen=True)
class _WanJob:
    """A command job waiting for its meter's connection; `deadline` in epoch seconds of the HES clock."""

    action: Callable[[Any, MeterSpec], Any]
    future: Future
    deadline: int | None


@dataclass
class WanAccess:
    """What a command job gets on a WAN meter's connection (commands.jobs.MeterAccess)."""

    store: Store
    reader: DlmsReader
    listener: DlmsListener

    @property
    def housekeeping(self) -> Housekeeping:
        """Where a job saves what it read."""
        return self.listener.housekeeping

    def interval(self, meter: MeterSpec, task: Task) -> int:
        """Seconds between two reads of `task` of `meter` (0: never)."""
        return self.listener.interval(meter, task)

    def dlms(self, meter: MeterSpec) -> Any:
        """A DlmsSession with `meter` over its connection, as a context manager."""
        return self.reader.session(meter, self.store)

    def poll(self, meter: MeterSpec, tasks: frozenset[Task], stamp: datetime | None = None) -> PollResult:
        """Read `tasks` of `meter` now, stamped `stamp` (default: the current slot of its registers)."""
        slot = stamp or self.listener.clock.slot_start(self.listener.interval(meter, Task.REGISTERS) or 1)
        return self.reader.read(meter, get_model(meter.model), slot, self.store, tasks)  # type: ignore[arg-type]


class DlmsListener(threading.Thread):
    """Accepts WAN devices on `[listener]` port, one `_DeviceConnection` thread each."""

    def __init__(
        self,
        config: Config,
        store_factory: Callable[[], Store],
        clock: Clock,
        housekeeping: Housekeeping,
        on_new_data: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        super().__init__(name="listener", daemon=True)
        self.config, self.settings = config, config.listener
        self.clock, self.housekeeping = clock, housekeeping
        self.store_factory, self.notify, self.halt = store_factory, on_new_data, stop
        self.heartbeat = time.monotonic()  # the main loop's watchdog reads this
        self.listening = threading.Event()  # set once bound; `port` is then the port actually bound
        self.port = self.settings.port
        self.counts: Counter[str] = Counter()  # accepted, turned_away, refused, and why connections closed
        self._lock = threading.Lock()
        self._connections: set[_DeviceConnection] = set()
        self._by_device: dict[str, _DeviceConnection] = {}  # admitted connections, by logical name
        self._due: dict[tuple[str, Task], datetime] = {}  # per meter and task, across its connections
        self._jobs: dict[str, list[_WanJob]] = {}  # command jobs by meter mRID, oldest first
        self._specs: dict[str, MeterSpec | None] = {}  # registry changes for connected meters to pick up
        # The bus-like settings the meter reader takes: the WAN's answer timeout, no retries (TCP).
        self.wan_bus = BusSpec(WAN_BUS, True, "", 9600, "N", 8, 1, False, self.settings.timeout_ms, 0, 3600)

    @property
    def active(self) -> int:
        """Connections open now."""
        with self._lock:
            return len(self._connections)

    def run(self) -> None:
        """Listen until told to stop; a port that cannot be bound is tried again every 30 s."""
        while not self.halt.is_set():
            self.heartbeat = time.monotonic()
            try:
                server = socket.create_server((self.settings.bind, self.settings.port))
            except OSError as exc:
                if self.count("bind_failures") == 1:
                    log.error("listener: cannot listen on %s:%d: %s; retrying", *self._where(), exc)
                self._wait(30.0)
                continue
            with server:
                self.port = server.getsockname()[1]
                log.info(
                    "listener: DLMS wrapper on %s:%d, at most %d connections",
                    *self._where(),
                    self.settings.max_connections,
                )
                self.listening.set()
                self._serve(server)
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.port.hang_up()
        deadline = time.monotonic() + 5
        for connection in connections:
            connection.join(timeout=max(0.0, deadline - time.monotonic()))

    def _where(self) -> tuple[str, int]:
        return self.settings.bind, self.port

    def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.halt.wait(min(ACCEPT_WAIT_S, max(0.0, deadline - time.monotonic()))):
            self.heartbeat = time.monotonic()
            if time.monotonic() >= deadline:
                return

    def _serve(self, server: socket.socket) -> None:
        server.settimeout(ACCEPT_WAIT_S)
        crowded = False
        while not self.halt.is_set():
            self.heartbeat = time.monotonic()
            self._expire_jobs()
            try:
                sock, address = server.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                log.error("listener: accept failed: %s", exc)
                self._wait(1.0)
                continue
            peer = f"{address[0]}:{address[1]}"
            with self._lock:
                full = len(self._connections) >= self.settings.max_connections
                if not full:
                    connection = _DeviceConnection(self, InboundConnection(sock, peer))
                    self._connections.add(connection)
            if full:
                self.count("turned_away")  # before the caller sees the close
                sock.close()
                if not crowded:  # once per crowded spell, not once per caller
                    log.warning(
                        "listener: %d connections open, turning away %s and others", self.active, peer
                    )
                crowded = True
                continue
            crowded = False
            self.count("accepted")
            connection.start()

    def count(self, what: str) -> int:
        """Count one `what` (any thread); returns the count so far."""
        with self._lock:
            self.counts[what] += 1
            return self.counts[what]

    def claim(self, name: str, connection: _DeviceConnection) -> _DeviceConnection | None:
        """`connection` now speaks for device `name`; returns the connection it replaces, if any."""
        with self._lock:
            previous = self._by_device.get(name)
            self._by_device[name] = connection
        return previous

    def forget(self, connection: _DeviceConnection, reason: str) -> None:
        """A connection ended (called by its thread)."""
        with self._lock:
            self.counts[reason.split(":", maxsplit=1)[0]] += 1
            self._connections.discard(connection)
            if self._by_device.get(connection.name_seen) is connection:
                del self._by_device[connection.name_seen]

    # -- commands, for the meters that call

    def connected(self, mrid: str) -> bool:
        """Whether meter `mrid` has an admitted connection open now."""
        with self._lock:
            return any(c.mrid == mrid for c in self._by_device.values())

    def submit(
        self, meter: MeterSpec, action: Callable[[Any, MeterSpec], Any], deadline: int | None
    ) -> Future:
        """Run `action(access, meter)` on the meter's connection, now or when it calls before `deadline`."""
        if deadline is None and not self.connected(meter.id):
            raise NotConnected(f"WAN meter {meter.id} is not connected now; it is reached when it calls")
        future: Future = Future()
        with self._lock:
            self._jobs.setdefault(meter.id, []).append(_WanJob(action, future, deadline))
        return future

    def take_job(self, mrid: str) -> _WanJob | None:
        """The oldest job waiting for `mrid` (its connection's thread runs it)."""
        with self._lock:
            waiting = self._jobs.get(mrid)
            return waiting.pop(0) if waiting else None

    def _expire_jobs(self) -> None:
        now = epoch(self.clock.now())
        expired: list[_WanJob] = []
        with self._lock:
            for mrid, jobs in list(self._jobs.items()):
                expired += [j for j in jobs if j.deadline is not None and j.deadline <= now]
                self._jobs[mrid] = [j for j in jobs if j.deadline is None or j.deadline > now]
        for job in expired:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(NotConnected("the meter did not call before the request expired"))

    def set_meter(self, mrid: str, spec: MeterSpec | None) -> None:
        """The registry changed `mrid` (None: removed): its connection picks the change up, or ends."""
        with self._lock:
            self._specs[mrid] = spec

    def changed_meter(self, mrid: str) -> tuple[bool, MeterSpec | None]:
        """(True, the new spec or None if removed) once after `set_meter`, else (False, None)."""
        with self._lock:
            if mrid not in self._specs:
                return False, None
            return True, self._specs.pop(mrid)

    # -- schedules, shared by the connections of one meter

    def interval(self, meter: MeterSpec, task: Task) -> int:
        """Seconds between two reads of `task` of `meter`: as on a bus (0: never)."""
        return task_interval(self.config, meter, task)

    def due_tasks(self, meter: MeterSpec) -> frozenset[Task]:
        """The parts of `meter` due now (a meter seen for the first time: all it has)."""
        now = self.clock.now()
        with self._lock:
            return frozenset(
                task
                for task in Task
                if self.interval(meter, task) and self._due.setdefault((meter.id, task), now) <= now
            )

    def polled(self, meter: MeterSpec, tasks: frozenset[Task]) -> None:
        """`tasks` of `meter` were read: due again at the start of their next slot."""
        with self._lock:
            for task in tasks:
                interval = self.interval(meter, task)
                self._due[(meter.id, task)] = self.clock.slot_start(interval) + timedelta(seconds=interval)

    # -- registration and alarms

    def queue_alarm(
        self, conn: sqlite3.Connection, mrid: str, kind: str, code: str, reason: str, details: Details
    ) -> None:
        """Inside the caller's transaction: the EndDeviceEvent of a registration or a refusal, sent at
        alarm priority (so it cannot be lost while the registry change stands, nor the other way)."""
        severity = "warning" if code == REFUSED_EVENT else ""
        event = Event(mrid, code.format(type=_EVENT_TYPE[kind]), self.clock.now(), reason, severity, details)
        enqueue_alarm(conn, self.config, self.clock, event)


class _DeviceConnection(threading.Thread):
    """One device's connection: identify, admit, then read it or take its pushes until it ends."""

    def __init__(self, listener: DlmsListener, port: InboundConnection) -> None:
        super().__init__(name=f"wan-{port.name}", daemon=True)
        self.listener, self.port = listener, port
        self.timeout_s = listener.settings.timeout_ms / 1000
        self.name_seen = ""
        self.mrid = ""  # of the admitted device
        self.last_heard = time.monotonic()
        self.replaced = False  # the device called again: this connection is a stale one

    def run(self) -> None:
        """Serve the device; whatever it does, only this connection ends."""
        listener = self.listener
        reason = "closed"
        device: WanDevice | None = None
        try:
            store = listener.store_factory()
        except StoreError as exc:
            log.error("wan %s: %s", self.port.name, exc)
            self.port.close()
            listener.forget(self, "store")
            return
        try:
            push = self._first_push()
            self.name_seen = push.logical_name if push else self._read_name()
            device = self._admit(store, push)
            if device is None:
                reason = "refused"
                return
            self.mrid = device.mrid
            previous = listener.claim(device.logical_name, self)
            if previous is not None:  # a half-open connection the device gave up on: one at a time
                previous.replaced = True
                previous.port.hang_up()
            note_connected(store, device, self.port.name, epoch(listener.clock.now()))
            log.info("wan %s: %s %s (%s) connected", self.port.name, device.kind, device.mrid, self.name_seen)
            if push is not None and push.from_dcu:
                self._store_forwarded(store, device, push)
            reason = self._serve(store, device)
        except DeviceTimeout as exc:
            reason = f"silent: {exc}"
        except ProtocolError as exc:
            reason = f"garbage: {exc}"
        except DeviceError as exc:
            reason = f"refusal: {exc}"
        except TransportError:
            reason = "hung up"
        except StoreError as exc:
            reason = f"store: {exc}"
        finally:
            self.port.close()
            reason = "replaced" if self.replaced else reason
            if device is not None:
                try:
                    note_disconnected(store, device.logical_name, reason, epoch(listener.clock.now()))
                except StoreError as exc:
                    log.error("wan %s: connection health not stored: %s", self.port.name, exc)
            store.close()
            level = logging.INFO if reason in ("idle", "hung up", "replaced", "stopping") else logging.WARNING
            log.log(
                level, "wan %s (%s): closed: %s", self.port.name, self.name_seen or "unidentified", reason
            )
            listener.forget(self, reason)

    # -- identification

    def _next_frame(self, within_s: float) -> bytes | None:
        """The APDU of the next frame the device sends, if it starts one within `within_s`; the frame
        must then be whole within the answer timeout (a trickle of bytes gets nowhere)."""
        if not self.port.wait_readable(within_s):
            return None
        data = self.port.receive(wrapper_bytes_needed, self.timeout_s)
        self.last_heard = time.monotonic()
        return decode_wrapper(data).apdu

    def _push(self, data: bytes) -> Push:
        """The push in an APDU the device sent unasked; anything else is garbage here."""
        notification = apdu.decode_apdu(data)
        if not isinstance(notification, apdu.DataNotification):
            raise ProtocolError(f"expected a data-notification, got {type(notification).__name__}")
        return parse_push(notification)

    def _first_push(self) -> Push | None:
        data = self._next_frame(self.listener.settings.push_wait_s)
        return None if data is None else self._push(data)

    def _read_name(self) -> str:
        """Ask the device for its logical device name, as the public client."""
        settings = DlmsSettings(
            client=PUBLIC_CLIENT, logical=MANAGEMENT_DEVICE, framing="wrapper", timeout_s=self.timeout_s
        )
        with DlmsSession(self.port, settings) as session:
            name = logical_device_name(session.get(1, LOGICAL_DEVICE_NAME, 2))
        self.last_heard = time.monotonic()
        return name

    # -- admission

    def _admit(self, store: Store, push: Push | None) -> WanDevice | None:
        """The registered device, registered now, or None when refused."""
        kind = DCU if push is not None and push.from_dcu else METER
        return self._admit_one(store, self.name_seen, kind, None)

    def _admit_one(self, store: Store, name: str, kind: str, parent: str | None) -> WanDevice | None:
        listener = self.listener
        device = find_device(store, name)
        if device is not None:
            return device
        details = (("logicalDeviceName", name), ("peer", self.port.name), ("kind", kind))
        details += (("dcu", parent),) if parent else ()
        device = WanDevice(name, device_id(name), kind, parent)
        if not listener.settings.auto_register:
            return self._refuse(store, device, details, "automatic registration is off")
        if registered_meter(store, device.mrid) is not None:  # removed by the MDM, or a bus meter's id
            return self._refuse(store, device, details, f"mRID {device.mrid} is taken")
        now = epoch(listener.clock.now())
        if kind == METER:
            spec = MeterSpec(
                device.mrid,
                WAN_BUS,
                Protocol.DLMS,
                0,
                listener.settings.model,
                listener.settings.poll_interval_s,
                MANAGEMENT_DEVICE,
                PUBLIC_CLIENT,
                "none",
                None,
            )
            identity = {"logical_device_name": name, **({"dcu": parent} if parent else {})}
            register_meter(store, spec, "listener", now, identity=identity)
        with store.transaction() as conn:
            add_device(conn, device, now)
            reason = f"{kind} {name} registered"
            listener.queue_alarm(conn, device.mrid, kind, REGISTERED_EVENT, reason, details)
        listener.notify()
        log.info("wan %s: %s %s registered as %s", self.port.name, kind, name, device.mrid)
        return device

    def _refuse(self, store: Store, device: WanDevice, details: Details, why: str) -> None:
        """Count the refusal; the alarm goes at most once a day per device."""
        listener = self.listener
        name, kind = device.logical_name, device.kind
        with store.transaction() as conn:
            now = epoch(listener.clock.now())
            if note_refusal(conn, name, kind, device.parent, now, REFUSAL_ALARM_EVERY_S):
                reason = f"unknown {kind} {name} refused: {why}"
                listener.queue_alarm(conn, listener.config.hes.id, kind, REFUSED_EVENT, reason, details)
        listener.notify()
        log.warning("wan %s: %s %s refused: %s", self.port.name, kind, name, why)

    # -- serving

    def _serve(self, store: Store, device: WanDevice) -> str:
        """Read a meter on its schedule, take a DCU's pushes; returns why the connection ended."""
        listener = self.listener
        meter = self._meter_spec(store, device) if device.kind == METER else None
        reader = _WanReader(self.port, listener.wan_bus, listener.clock, listener.config.meter_time)
        access = WanAccess(store, reader, listener)
        while not listener.halt.is_set():
            if meter is not None:
                changed, spec = listener.changed_meter(meter.id)
                if changed and spec is None:
                    return "removed"
                meter = spec or meter
                job = listener.take_job(meter.id)
                if job is not None:
                    self._run_job(access, meter, job)
                    continue
                tasks = listener.due_tasks(meter)
                if tasks:
                    self._poll(access, meter, tasks)
                    continue
            idle_left = self.last_heard + listener.settings.idle_timeout_s - time.monotonic()
            if idle_left <= 0:
                return "idle"
            data = self._next_frame(min(idle_left, ACCEPT_WAIT_S))
            if data is not None:
                self._take_push(store, device, self._push(data))
        return "stopping"

    def _run_job(self, access: WanAccess, meter: MeterSpec, job: _WanJob) -> None:
        """A command job between two polls; a failure of the line itself ends the connection, as a
        failed poll does (the job's future holds the error either way)."""
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.action(access, meter))
        except (DeviceTimeout, ProtocolError, TransportError) as exc:
            job.future.set_exception(exc)
            raise
        except Exception as exc:  # the job's error belongs to whoever waits for it
            job.future.set_exception(exc)
        self.last_heard = time.monotonic()

    def _meter_spec(self, store: Store, device: WanDevice) -> MeterSpec:
        found = registered_meter(store, device.mrid)
        if found is None:
            raise StoreError(f"meter {device.mrid} has a WAN registration but no meter row")
        return found[0]

    def _poll(self, access: WanAccess, meter: MeterSpec, tasks: frozenset[Task]) -> None:
        """Read the due parts of the meter and store them; a failure ends the connection (raised)."""
        listener, store = self.listener, access.store
        started = time.monotonic()
        try:
            result = access.poll(meter, tasks)
        except (DeviceTimeout, ProtocolError, DeviceError) as exc:
            self._record(store, meter.id, outcome_of(exc), started, str(exc))
            raise
        self.last_heard = time.monotonic()
        listener.polled(meter, tasks)
        if listener.housekeeping.save(store, result.readings, result.events):
            listener.notify()
        self._record(store, meter.id, Outcome.OK, started, "")

    def _record(self, store: Store, mrid: str, outcome: Outcome, started: float, error: str) -> None:
        elapsed_ms = int((time.monotonic() - started) * 1000)
        record_poll(store, mrid, outcome, epoch(self.listener.clock.now()), elapsed_ms, error)

    def _take_push(self, store: Store, device: WanDevice, push: Push) -> None:
        if push.logical_name != device.logical_name:
            raise ProtocolError(f"{device.logical_name}'s connection pushes as {push.logical_name}")
        if push.from_dcu and device.kind == DCU:
            self._store_forwarded(store, device, push)

    def _store_forwarded(self, store: Store, dcu: WanDevice, push: Push) -> None:
        """The values a DCU forwards, as its meters' readings (one transaction); unknown meters are
        registered or refused like devices that call."""
        assert push.meters is not None
        started = time.monotonic()
        readings: list[Reading] = []
        answered = []
        for report in push.meters:
            meter = self._admit_one(store, report.logical_name, METER, dcu.logical_name)
            if meter is None:
                continue
            spec = self._meter_spec(store, meter)
            model = get_model(spec.model)
            if not isinstance(model, DlmsModel):
                raise StoreError(f"meter {spec.id} behind DCU {dcu.mrid} has the non-DLMS model {spec.model}")
            registers = {register.obis: register.reading_type for register in model.registers}
            try:
                readings += [
                    Reading(
                        spec.id,
                        registers[value.obis],
                        value.captured,
                        scaled_value(value.raw, value.scaler, value.unit, registers[value.obis]),
                    )
                    for value in report.values
                    if value.obis in registers
                ]
            except DeviceError as exc:  # a unit the model does not expect: this meter's values only
                self._record(store, spec.id, Outcome.REFUSED, started, str(exc))
                log.warning("wan %s: DCU %s: meter %s: %s", self.port.name, dcu.mrid, spec.id, exc)
                continue
            answered.append(spec.id)
        if self.listener.housekeeping.save(store, readings):
            self.listener.notify()
        for mrid in answered:
            self._record(store, mrid, Outcome.OK, started, "")
