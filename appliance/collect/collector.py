"""The collection system as the rest of the daemon sees it: the bus workers and the meter registry.

Commands (MDM, console) reach a meter through `submit`: on its RS-485 bus, or on its own connection
when it is a WAN meter (the listener, once attached). Registrations from the MDM and discovery go
through `register`, land in the store first (so they survive a restart) and reach the bus at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from appliance.clock import Clock
from appliance.collect.bus import BusAccess, BusWorker
from appliance.collect.discovery import Discovered
from appliance.collect.jobs import JobPriority
from appliance.collect.listener import DlmsListener
from appliance.collect.readers import DlmsReader, ModbusReader
from appliance.config import Config, MeterSpec
from appliance.errors import TransportError, UnknownMeter
from appliance.housekeeping import Housekeeping
from appliance.model import epoch
from appliance.store import Store, open_store
from appliance.store.registry import ACTIVE, active_meters, reachable_wan_meter, register_meter, remove_meter
from appliance.store.wan_devices import WAN_BUS

log = logging.getLogger(__name__)


class Collector:
    """One BusWorker per enabled bus, and the registry of the meters they poll."""

    def __init__(
        self,
        config: Config,
        store: Store,
        store_factory: Callable[[], Store],
        clock: Clock,
        housekeeping: Housekeeping,
        on_new_readings: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        self.config, self.clock, self.housekeeping = config, clock, housekeeping
        self._store_factory = store_factory
        self._lock = threading.Lock()
        self.listener: DlmsListener | None = None  # the WAN meters' line, when [listener] is enabled
        meters = active_meters(store)
        self.workers = {
            name: BusWorker(
                bus,
                [m for m in meters if m.bus == name],
                store_factory,
                clock,
                housekeeping,
                on_new_readings,
                stop,
                config,
            )
            for name, bus in config.buses.items()
            if bus.enabled
        }

    def on_request(self, callback: Callable[[], None]) -> None:
        """Call `callback` before every request on any bus (the RS-485 activity LED)."""
        for worker in self.workers.values():
            worker.port.on_request = callback

    def start(self) -> None:
        """Start every bus worker."""
        for worker in self.workers.values():
            worker.start()

    def meter(self, meter_id: str, store: Store | None = None) -> MeterSpec | None:
        """A meter polled on one of the buses, or a WAN meter that calls in (not one behind a DCU,
        which only reports), or None. A WAN meter is looked up in the registry: through `store`, the
        caller's connection, if it has one."""
        for worker in self.workers.values():
            for meter in worker.meters():
                if meter.id == meter_id:
                    return meter
        if self.listener is None:
            return None
        if store is not None:
            return reachable_wan_meter(store, meter_id)
        with self._store() as own:
            return reachable_wan_meter(own, meter_id)

    def lane(self, meter: MeterSpec) -> str:
        """What a command to `meter` waits for: its bus, or a WAN meter's own connection."""
        return f"{WAN_BUS}:{meter.id}" if meter.bus == WAN_BUS else meter.bus

    def submit(
        self,
        meter_id: str,
        action: Callable[[Any, MeterSpec], Any],
        priority: JobPriority = JobPriority.COMMAND,
        deadline: int | None = None,
    ) -> Future:
        """Run `action(access, meter)` on the meter's bus at the next request boundary. A WAN meter's
        job waits for its call until `deadline` (epoch s); without one, it must be connected now."""
        meter = self.meter(meter_id)
        if meter is None:
            raise UnknownMeter(f"meter {meter_id!r} is not registered on a running bus")
        if meter.bus == WAN_BUS and self.listener is not None:
            return self.listener.submit(meter, action, deadline)
        return self.workers[meter.bus].submit(lambda access: action(access, meter), priority, meter_id)

    def submit_bus(
        self, bus: str, action: Callable[[BusAccess], Any], priority: JobPriority = JobPriority.COMMAND
    ) -> Future:
        """Run a bus-wide job (discovery) on bus `bus`."""
        worker = self.workers.get(bus)
        if worker is None:
            raise UnknownMeter(f"bus {bus!r} is not running; running: {sorted(self.workers)}")
        return worker.submit(action, priority, f"bus {bus}")

    def register(self, meter: MeterSpec, source: str) -> None:
        """Register or change a meter (stored first), and poll it from now on. A WAN meter is
        admitted when it calls (its mRID is the logical device name it presents); an open connection
        takes the change at once."""
        if meter.bus == WAN_BUS and self.listener is not None:
            with self._lock, self._store() as store:
                register_meter(store, meter, source, epoch(self.clock.now()), ACTIVE)
                self.listener.set_meter(meter.id, meter)
            log.info("WAN meter %s registered (%s)", meter.id, source)
            return
        if meter.bus not in self.workers:
            raise UnknownMeter(f"bus {meter.bus!r} is not running; running: {sorted(self.workers)}")
        with self._lock, self._store() as store:
            register_meter(store, meter, source, epoch(self.clock.now()), ACTIVE)
            for worker in self.workers.values():
                if worker.spec.name != meter.bus:
                    worker.drop_meter(meter.id)
            self.workers[meter.bus].set_meter(meter)
        log.info("meter %s registered on bus %s (%s)", meter.id, meter.bus, source)

    def unregister(self, meter_id: str) -> bool:
        """Stop polling a meter; its readings stay. False when it was not registered."""
        with self._lock, self._store() as store:
            removed = remove_meter(store, meter_id, epoch(self.clock.now()))
            for worker in self.workers.values():
                worker.drop_meter(meter_id)
            if removed and self.listener is not None:
                self.listener.set_meter(meter_id, None)  # its connection ends; a call again is refused
        if removed:
            log.info("meter %s removed", meter_id)
        return removed

    @contextmanager
    def _store(self) -> Iterator[Store]:
        """A connection for the calling thread (SQLite connections stay in their thread)."""
        store = self._store_factory()
        try:
            yield store
        finally:
            store.close()

    def discover(self, bus: str) -> Future:
        """Scan bus `bus` for meters nobody registered; the future holds what was found."""
        return self.submit_bus(bus, lambda access: access.worker.scan(access))


def discover_standalone(config: Config, bus: str) -> list[Discovered]:
    """`hes discover --bus A` while the daemon is stopped: this process takes the bus's port itself.
    While the daemon runs it holds the port; the console's `discover bus A` asks it instead."""
    spec = config.buses.get(bus)
    if spec is None or not spec.enabled:
        raise UnknownMeter(f"bus {bus!r} is not an enabled bus; enabled: {sorted(b for b in config.buses)}")
    clock = Clock(config.clock)
    store = open_store(config)
    housekeeping = Housekeeping(config, clock)
    worker = BusWorker(spec, [], lambda: store, clock, housekeeping, lambda: None, threading.Event(), config)
    try:
        try:
            worker.port.open()
        except TransportError as exc:
            raise TransportError(
                f"{exc} (is the daemon running? then use the console's `discover bus {bus}`)"
            ) from None
        access = BusAccess(
            worker,
            store,
            ModbusReader(worker.port, spec),
            DlmsReader(worker.port, spec, clock, config.meter_time),
        )
        return worker.scan(access)
    finally:
        worker.port.close()
        store.close()
