"""One worker thread per RS-485 bus: runs commands first, then the meters' schedules, one request at
a time.

Each meter's model has a schedule (`[schedules.<model>]`: registers, profile, events, clock); a poll
reads every part that is due in one association. Meters whose load profile is behind are caught up
before routine reads. A command (`submit`) takes the bus at the next request boundary: the poll in
progress gives way (`BusPort`) and runs again afterwards. A silent meter costs its own timeout, not
the bus, and is backed off; a bus whose device is missing is retried with backoff and never stops
the box.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from appliance.clock import Clock
from appliance.collect.discovery import Discovered, discover_bus
from appliance.collect.jobs import BusPort, Job, JobPriority, Task, task_interval
from appliance.collect.meters import get_model
from appliance.collect.quality import MeterClock, QualityCheck, clock_steps, model_rules
from appliance.collect.readers import DlmsReader, ModbusReader, PollResult
from appliance.config import BusSpec, Config, MeterSpec
from appliance.errors import (
    DeviceError,
    DeviceTimeout,
    HesError,
    Preempted,
    ProtocolError,
    StoreError,
    TransportError,
)
from appliance.housekeeping import Housekeeping
from appliance.hw.rs485 import SerialPort
from appliance.model import Protocol, epoch
from appliance.store import Store
from appliance.store.readings import last_reading
from appliance.store.stats import Outcome, failure_streak, outcome_of, record_poll

log = logging.getLogger(__name__)

REOPEN_MIN_S, REOPEN_MAX_S = 1.0, 60.0
IDLE_WAIT_S = 0.5  # the longest a worker sleeps before it looks at its queue and the stop flag again


@dataclass
class BusAccess:
    """What a job gets: the bus, this thread's store connection and the meter readers."""

    worker: BusWorker
    store: Store
    modbus: ModbusReader
    dlms_reader: DlmsReader

    @property
    def port(self) -> BusPort:
        """The bus's port (a job owns it until it returns)."""
        return self.worker.port

    @property
    def spec(self) -> BusSpec:
        """The bus's settings."""
        return self.worker.spec

    @property
    def housekeeping(self) -> Housekeeping:
        """Where a job saves what it read (and wakes the uplink); the quality checks run on routine
        polls only (BusWorker._poll)."""
        return self.worker.housekeeping

    def interval(self, meter: MeterSpec, task: Task) -> int:
        """Seconds between two reads of `task` of `meter` (0: never)."""
        return self.worker.interval(meter, task)

    def dlms(self, meter: MeterSpec) -> Any:
        """A DlmsSession with `meter`, to use as a context manager (keys and counters handled)."""
        return self.dlms_reader.session(meter, self.store)

    def poll(self, meter: MeterSpec, tasks: frozenset[Task], stamp: datetime | None = None) -> PollResult:
        """Read `tasks` of `meter` now, stamped `stamp` (default: the current slot of its register
        schedule)."""
        slot = stamp or self.worker.clock.slot_start(self.worker.interval(meter, Task.REGISTERS) or 1)
        reader = self.modbus if meter.protocol is Protocol.MODBUS else self.dlms_reader
        return reader.read(meter, get_model(meter.model), slot, self.store, tasks)  # type: ignore[arg-type]


class BusWorker(threading.Thread):
    """Polls the meters of one bus and stores each poll's readings in one transaction."""

    def __init__(
        self,
        spec: BusSpec,
        meters: list[MeterSpec],
        store_factory: Callable[[], Store],
        clock: Clock,
        housekeeping: Housekeeping,
        on_new_readings: Callable[[], None],
        stop: threading.Event,
        config: Config,
    ) -> None:
        super().__init__(name=f"bus-{spec.name}", daemon=True)
        self.spec, self.clock, self.housekeeping, self.config = spec, clock, housekeeping, config
        self._store_factory, self._notify, self._halt = store_factory, on_new_readings, stop
        self._jobs: queue.PriorityQueue[Job] = queue.PriorityQueue()
        self._wake = threading.Event()
        self.port = BusPort(SerialPort(spec), lambda: not self._jobs.empty())
        self._lock = threading.Lock()
        self._meters = {meter.id: meter for meter in meters}
        self._due: dict[tuple[str, Task], datetime] = {}
        self._profile_ok: dict[str, datetime] = {}  # the last poll that read a meter's profile
        self._next_discovery: float | None = None  # monotonic time of the next scheduled scan
        self.heartbeat = time.monotonic()  # the main loop's watchdog reads this

    # -- what other threads call

    def submit(
        self, action: Callable[[BusAccess], Any], priority: JobPriority = JobPriority.COMMAND, label: str = ""
    ) -> Future:
        """Run `action` on this bus's thread, ahead of every job of lower priority; its result or
        error arrives in the returned future."""
        job = Job(priority, action=action, label=label)
        self._jobs.put(job)
        self._wake.set()
        return job.future

    def set_meter(self, meter: MeterSpec) -> None:
        """Add a meter to this bus, or change it; it is read at once."""
        with self._lock:
            self._meters[meter.id] = meter
            for task in Task:
                self._due.pop((meter.id, task), None)
        self._wake.set()

    def drop_meter(self, meter_id: str) -> None:
        """Stop polling a meter."""
        with self._lock:
            self._meters.pop(meter_id, None)

    def meters(self) -> list[MeterSpec]:
        """The meters this bus polls now."""
        with self._lock:
            return list(self._meters.values())

    def interval(self, meter: MeterSpec, task: Task) -> int:
        """Seconds between two reads of `task` of `meter`; 0 when the model never reads it."""
        return task_interval(self.config, meter, task)

    # -- the thread

    def run(self) -> None:
        """Poll until told to stop."""
        store = self._store_factory()
        access = BusAccess(
            self,
            store,
            ModbusReader(self.port, self.spec),
            DlmsReader(self.port, self.spec, self.clock, self.config.meter_time),
        )
        self._quality = QualityCheck(
            self.config.quality,
            lambda meter, rtype, before, since: last_reading(store, meter, rtype.code, before, since),
            self.config.meter_time.tolerance_s,
        )
        reopen_delay = REOPEN_MIN_S
        try:
            while not self._halt.is_set():
                self.heartbeat = time.monotonic()
                if not self.port.is_open:
                    try:
                        self.port.open()
                        log.info("bus %s: %s open", self.spec.name, self.spec.device)
                        reopen_delay = REOPEN_MIN_S
                    except TransportError as exc:
                        if reopen_delay == REOPEN_MIN_S:
                            log.error("%s; retrying", exc)
                        self._halt.wait(reopen_delay)
                        reopen_delay = min(reopen_delay * 2, REOPEN_MAX_S)
                        continue
                if not self._jobs.empty():
                    self._run_job(self._jobs.get_nowait(), access)
                    continue
                if self._discovery_due():
                    self.submit(self.scan, JobPriority.CATCHUP, "discovery")
                    continue
                due = self._next_poll()
                if due is None:
                    self._wake.wait(IDLE_WAIT_S)
                    self._wake.clear()
                    continue
                meter, tasks = due
                self._poll(access, meter, tasks)
        finally:
            self.port.close()
            store.close()
            self._fail_waiting_jobs()

    def _discovery_due(self) -> bool:
        """Whether the scheduled scan ([discovery] interval_s) is due; the first comes one interval
        after the start, once the meters have had their first polls."""
        interval = self.config.discovery.interval_s
        if not interval:
            return False
        now = time.monotonic()
        if self._next_discovery is None:
            self._next_discovery = now + interval
        if now < self._next_discovery:
            return False
        self._next_discovery = now + interval
        return True

    def scan(self, access: BusAccess) -> list[Discovered]:
        """Discovery on this bus (a job: run it through `submit`, or with the port in hand)."""
        return discover_bus(access, self.config.discovery, self.housekeeping, self.clock)

    def _run_job(self, job: Job, access: BusAccess) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.action(access))
        except Exception as exc:
            if not isinstance(exc, HesError):
                log.exception("bus %s: job %s failed", self.spec.name, job.label or job.action)
            job.future.set_exception(exc)

    def run_waiting_commands(self, access: BusAccess) -> None:
        """Run the commands waiting now (from inside a long job such as discovery, between two of
        its requests)."""
        pending = []
        while not self._jobs.empty():
            job = self._jobs.get_nowait()
            if job.priority is JobPriority.COMMAND:
                self._run_job(job, access)
            else:
                pending.append(job)
        for job in pending:
            self._jobs.put(job)

    def _fail_waiting_jobs(self) -> None:
        while not self._jobs.empty():
            job = self._jobs.get_nowait()
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(TransportError(f"bus {self.spec.name} stopped"))

    def _next_poll(self) -> tuple[MeterSpec, frozenset[Task]] | None:
        """The meter to read now and the parts of it that are due, or None when nothing is due.

        Catch-up first (a profile behind by more than two periods), then the earliest due."""
        now = self.clock.now()
        best: tuple[tuple[JobPriority, datetime], MeterSpec, frozenset[Task]] | None = None
        with self._lock:
            meters = list(self._meters.values())
        for meter in meters:
            due_tasks = []
            earliest = None
            for task in Task:
                if not self.interval(meter, task):
                    continue
                due = self._due.setdefault((meter.id, task), now)
                if due <= now:
                    due_tasks.append(task)
                    earliest = due if earliest is None else min(earliest, due)
            if earliest is None:
                continue
            rank = (self._priority(meter, now), earliest)
            if best is None or rank < best[0]:
                best = (rank, meter, frozenset(due_tasks))
        return None if best is None else (best[1], best[2])

    def _priority(self, meter: MeterSpec, now: datetime) -> JobPriority:
        period = self.interval(meter, Task.PROFILE)
        if not period:
            return JobPriority.ROUTINE
        last = self._profile_ok.get(meter.id)
        behind = last is None or now - last > timedelta(seconds=2 * period)
        return JobPriority.CATCHUP if behind else JobPriority.ROUTINE

    def _poll(self, access: BusAccess, meter: MeterSpec, tasks: frozenset[Task]) -> None:
        """Read the due parts of one meter, store what it said and how it answered, and schedule it
        again (later and later while it keeps failing)."""
        store = access.store
        previous = failure_streak(store, meter.id)
        started = time.monotonic()
        self.port.yielding = True
        try:
            result = access.poll(meter, tasks)
        except Preempted:
            return  # its parts stay due: it runs again right after the command
        except (DeviceTimeout, ProtocolError, DeviceError) as exc:
            failures = self._record(store, meter, outcome_of(exc), started, str(exc), previous + 1)
            if failures == 1:  # once per failure streak, not once per poll
                log.warning("bus %s: meter %s: %s", self.spec.name, meter.id, exc)
            self._schedule(meter, tasks, failures)
            return
        except TransportError as exc:
            log.error("%s", exc)  # the port, not the meter: the bus reopens it
            return
        finally:
            self.port.yielding = False
        if previous:
            log.info("bus %s: meter %s answers again after %d failures", self.spec.name, meter.id, previous)
        logged_steps = clock_steps(result.events)
        clock = result.clock.meter_clock(logged_steps) if result.clock else MeterClock(None, logged_steps)
        checked = self._quality.assess(meter.id, result.readings, model_rules(get_model(meter.model)), clock)
        try:
            if self.housekeeping.save(store, checked.readings, [*result.events, *checked.events]):
                self._notify()
        except StoreError as exc:
            log.error("bus %s: meter %s: readings not stored: %s", self.spec.name, meter.id, exc)
        if Task.PROFILE in tasks:
            self._profile_ok[meter.id] = self.clock.now()
        self._schedule(meter, tasks, self._record(store, meter, Outcome.OK, started, "", 0))

    def _schedule(self, meter: MeterSpec, tasks: frozenset[Task], failures: int) -> None:
        for task in tasks:
            interval = self.interval(meter, task)
            delay = backoff_delay(interval, failures, self.spec.backoff_max_s)
            self._due[(meter.id, task)] = self.clock.slot_start(interval) + timedelta(seconds=delay)

    def _record(
        self, store: Store, meter: MeterSpec, outcome: Outcome, started: float, error: str, expected: int
    ) -> int:
        """Count the poll in the store; if the store cannot, the streak goes on in memory."""
        elapsed_ms = int((time.monotonic() - started) * 1000)
        try:
            return record_poll(store, meter.id, outcome, epoch(self.clock.now()), elapsed_ms, error)
        except StoreError as exc:
            log.error("bus %s: meter %s: statistics not stored: %s", self.spec.name, meter.id, exc)
            return expected


def backoff_delay(interval_s: int, failures: int, cap_s: int) -> int:
    """Seconds until a meter's next poll: its interval, doubled for each failure in a row after the
    first, at most `cap_s` (but never less than the interval itself)."""
    if failures <= 1:
        return interval_s
    return max(interval_s, min(interval_s * 2 ** min(failures - 1, 32), cap_s))
