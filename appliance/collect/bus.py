"""One worker thread per RS-485 bus: polls its meters when their slot comes, one request at a time.

A silent meter costs its own timeout, not the bus; a bus whose device is missing is retried with
backoff and never stops the box.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from appliance.clock import Clock
from appliance.collect.meters import get_model
from appliance.collect.readers import DlmsReader, ModbusReader
from appliance.config import BusSpec, MeterSpec
from appliance.errors import (
    CrcError,
    DeviceError,
    DeviceTimeout,
    HesError,
    ProtocolError,
    StoreError,
    TransportError,
)
from appliance.housekeeping import Housekeeping
from appliance.hw.rs485 import SerialPort
from appliance.model import Protocol, epoch
from appliance.store import Store
from appliance.store.stats import Outcome, failure_streak, record_poll

log = logging.getLogger(__name__)

REOPEN_MIN_S, REOPEN_MAX_S = 1.0, 60.0


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
    ) -> None:
        super().__init__(name=f"bus-{spec.name}", daemon=True)
        self.spec, self.meters, self.clock, self.housekeeping = spec, meters, clock, housekeeping
        self._store_factory, self._notify, self._halt = store_factory, on_new_readings, stop
        self.port = SerialPort(spec)
        self.heartbeat = time.monotonic()  # the main loop's watchdog reads this

    def run(self) -> None:
        """Poll until told to stop."""
        store = self._store_factory()
        readers = {
            Protocol.MODBUS: ModbusReader(self.port, self.spec),
            Protocol.DLMS: DlmsReader(self.port, self.spec),
        }
        next_due = {meter.id: self.clock.now() for meter in self.meters}
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
                meter = min(self.meters, key=lambda m: next_due[m.id])
                wait = (next_due[meter.id] - self.clock.now()).total_seconds()
                if wait > 0:
                    self._halt.wait(min(wait, 1.0))
                    continue
                slot = self.clock.slot_start(meter.poll_interval_s)
                failures = self._poll(store, readers[meter.protocol], meter, slot)
                delay = backoff_delay(meter.poll_interval_s, failures, self.spec.backoff_max_s)
                next_due[meter.id] = slot + timedelta(seconds=delay)
        finally:
            self.port.close()
            store.close()

    def _poll(self, store: Store, reader: ModbusReader | DlmsReader, meter: MeterSpec, slot: datetime) -> int:
        """Read one meter, store what it said and how it answered; returns its failure streak."""
        previous = failure_streak(store, meter.id)
        started = time.monotonic()
        try:
            result = reader.read(meter, get_model(meter.model), slot, store)  # type: ignore[arg-type]
        except (DeviceTimeout, ProtocolError, DeviceError) as exc:
            failures = self._record(store, meter, _outcome(exc), started, str(exc), previous + 1)
            if failures == 1:  # once per failure streak, not once per poll
                log.warning("bus %s: meter %s: %s", self.spec.name, meter.id, exc)
            return failures
        except TransportError as exc:
            log.error("%s", exc)  # the port, not the meter: the bus reopens it
            return previous
        if previous:
            log.info("bus %s: meter %s answers again after %d failures", self.spec.name, meter.id, previous)
        try:
            if self.housekeeping.save(store, result.readings, result.events):
                self._notify()
        except StoreError as exc:
            log.error("bus %s: meter %s: readings not stored: %s", self.spec.name, meter.id, exc)
        return self._record(store, meter, Outcome.OK, started, "", 0)

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


def _outcome(error: HesError) -> Outcome:
    if isinstance(error, DeviceTimeout):
        return Outcome.TIMEOUT
    if isinstance(error, CrcError):
        return Outcome.CRC_ERROR
    if isinstance(error, ProtocolError):
        return Outcome.PROTOCOL_ERROR
    return Outcome.REFUSED
