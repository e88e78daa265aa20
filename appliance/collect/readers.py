"""Reading one meter through its bus's port: the protocol's frames over `SerialPort.exchange`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from appliance.clock import Clock
from appliance.collect import modbus
from appliance.collect.dlms import apdu, axdr
from appliance.collect.dlms.security import SecurityKeys
from appliance.collect.dlms.session import DlmsSession, DlmsSettings, FramePort
from appliance.collect.jobs import Task
from appliance.collect.meter_time import ClockAction, ClockDecision, decide, write_denied
from appliance.collect.meters.dlms import CLOCK, UNKNOWN_EVENT, DlmsModel, DlmsProfile, scaled_value
from appliance.collect.meters.modbus import ModbusModel
from appliance.config import BusSpec, MeterSpec, MeterTimeSection, read_meter_secrets
from appliance.errors import DeviceError, DeviceTimeout, ProtocolError
from appliance.model import Event, Reading
from appliance.store import Store
from appliance.store.dlms_counters import DlmsCounters, open_counters
from appliance.store.events import last_event_time
from appliance.store.readings import last_stored

log = logging.getLogger(__name__)


ALL_TASKS = frozenset(Task)


@dataclass(frozen=True)
class PollResult:
    """What one poll of one meter found: stored together, in one transaction."""

    readings: list[Reading]
    events: list[Event] = field(default_factory=list)
    clock: ClockDecision | None = None  # when the poll checked the meter's clock


class ModbusReader:
    """Reads the channels of a Modbus meter model, block by block, with retries."""

    def __init__(self, port: FramePort, spec: BusSpec) -> None:
        self.port = port
        self.timeout_s = spec.timeout_ms / 1000
        self.retries = spec.retries

    def read(
        self,
        meter: MeterSpec,
        model: ModbusModel,
        stamp: datetime,
        _store: Store,
        _tasks: frozenset[Task] = ALL_TASKS,
    ) -> PollResult:
        """Every channel of `meter`, stamped `stamp` (registers are all a Modbus model has). Raises the
        last error when retries run out."""
        values = {}
        for block in model.read_plan():
            registers = self._read_block(meter.address, block.function, block.start, block.count)
            values.update(model.decode(block, registers))
        return PollResult([Reading(meter.id, rtype, stamp, value) for rtype, value in values.items()])

    def _read_block(self, unit: int, function: modbus.Function, start: int, count: int) -> list[int]:
        request = modbus.read_request(unit, function, start, count)
        for _ in range(self.retries):
            try:
                return self._transact(request, unit, function, count)
            except (DeviceTimeout, ProtocolError) as exc:
                log.debug("unit %d: %s; retrying", unit, exc)
        return self._transact(request, unit, function, count)

    def _transact(self, request: bytes, unit: int, function: modbus.Function, count: int) -> list[int]:
        frame = self.port.exchange(request, modbus.response_bytes_needed, self.timeout_s)
        return modbus.parse_read_response(frame, unit, function, count)


class DlmsReader:
    """Reads a DLMS meter's model through one association: registers, then the profile's catch-up.

    Scaler/unit pairs and a profile's capture objects are read once per meter and kept: they do not
    change while a meter is installed, and each costs a request turnaround on a 9600-baud bus.
    """

    def __init__(
        self, port: FramePort, spec: BusSpec, clock: Clock, meter_time: MeterTimeSection | None = None
    ) -> None:
        self.port = port
        self.timeout_s = spec.timeout_ms / 1000
        self.retries = spec.retries
        self.clock = clock
        self.meter_time = meter_time
        self._scaler_units: dict[tuple[str, str], tuple[int, int]] = {}
        self._columns: dict[tuple[str, str], list[str]] = {}
        # Secrets are read once per meter, and again when its spec or its keys file changes (the MDM's
        # change MeterConfig writes a new file and hands the bus a new spec while the daemon runs).
        self._settings: dict[str, tuple[tuple[MeterSpec, tuple[int, int, int] | None], DlmsSettings]] = {}
        # One counter object per meter and key: each opening reserves a fresh block of counters.
        self._counters: dict[tuple[str, bytes, bytes], DlmsCounters] = {}

    def settings(self, meter: MeterSpec) -> DlmsSettings:
        """How to reach and authenticate to `meter`; secrets from its keys file, never the config."""
        version = (meter, _file_version(meter.keys_file))
        cached = self._settings.get(meter.id)
        if cached is None or cached[0] != version:
            cached = self._settings[meter.id] = (version, self._read_settings(meter))
        return cached[1]

    def _read_settings(self, meter: MeterSpec) -> DlmsSettings:
        secrets = read_meter_secrets(meter.keys_file) if meter.keys_file else {}
        keys = None
        if "encryption_key" in secrets:
            keys = SecurityKeys(
                bytes.fromhex(secrets["encryption_key"]), bytes.fromhex(secrets["authentication_key"])
            )
        return DlmsSettings(
            client=meter.client_address,
            logical=meter.logical_address,
            physical=meter.address,
            authentication=meter.auth,  # type: ignore[arg-type]
            password=secrets["password"].encode() if "password" in secrets else None,
            system_title=bytes.fromhex(secrets["system_title"]) if "system_title" in secrets else None,
            keys=keys,
            timeout_s=self.timeout_s,
            retries=self.retries,
        )

    def session(self, meter: MeterSpec, store: Store) -> DlmsSession:
        """A session with `meter` (not yet associated: use it as a context manager)."""
        settings = self.settings(meter)
        counters = None
        if settings.keys is not None and settings.system_title is not None:
            key = (meter.id, settings.keys.encryption_key, settings.system_title)
            if key not in self._counters:
                self._counters[key] = open_counters(store, meter.id, settings.keys, settings.system_title)
            counters = self._counters[key]
        return DlmsSession(self.port, settings, counters)

    def read(
        self,
        meter: MeterSpec,
        model: DlmsModel,
        stamp: datetime,
        store: Store,
        tasks: frozenset[Task] = ALL_TASKS,
    ) -> PollResult:
        """In one association, the parts of the model in `tasks`: the clock check first (its outcome
        marks the readings), registers stamped `stamp`, then every profile interval and logged
        event after the last stored."""
        readings: list[Reading] = []
        events: list[Event] = []
        decision = None
        with self.session(meter, store) as session:
            if Task.CLOCK in tasks and self.meter_time is not None:
                decision = self._check_clock(session, meter, model)
                events += [decision.event] if decision.event else []
            if Task.REGISTERS in tasks:
                readings += self._registers(session, meter, model, stamp)
            if Task.PROFILE in tasks and model.profile is not None:
                readings += self._profile(session, meter, model.profile, store)
            if Task.EVENTS in tasks:
                events = self._events(session, meter, model, store) + events
        return PollResult(readings, events, decision)

    def _registers(
        self, session: DlmsSession, meter: MeterSpec, model: DlmsModel, stamp: datetime
    ) -> list[Reading]:
        readings = []
        for register in model.registers:
            raw = _integer(session.get(3, register.obis, 2), register.obis)
            scaler, unit = self._scaler_unit(session, meter, register.obis)
            value = scaled_value(raw, scaler, unit, register.reading_type)
            readings.append(Reading(meter.id, register.reading_type, stamp, value))
        return readings

    def _check_clock(self, session: DlmsSession, meter: MeterSpec, model: DlmsModel) -> ClockDecision:
        """Read the meter clock and apply the meter-time policy (writing the clock if it says so)."""
        assert self.meter_time is not None
        meter_time = axdr.DateTime.from_data(session.get(8, model.clock, 2))
        decision = decide(meter.id, meter_time, self.clock.now(), self.clock.trusted(), self.meter_time)
        if decision.write is not None:
            try:
                session.set(8, model.clock, 2, axdr.OctetString(decision.write.to_bytes()))
                log.info("meter %s: clock %+.0f s off, corrected", meter.id, decision.offset_s)
                return decision
            except DeviceError as exc:  # the poll goes on: its readings are worth more than the clock
                decision = write_denied(decision, meter.id, self.clock.now(), str(exc))
        if decision.action is not ClockAction.NONE:
            log.warning("meter %s: clock %+.0f s off, %s", meter.id, decision.offset_s, decision.action)
        return decision

    def _events(self, session: DlmsSession, meter: MeterSpec, model: DlmsModel, store: Store) -> list[Event]:
        """The event log's entries after the newest event stored (all of them for a new meter)."""
        last = last_event_time(store, meter.id)
        if last is None:
            rows = session.get_entries(model.event_log)
        else:
            rows = session.get_range(model.event_log, last + timedelta(seconds=1), self.clock.now())
        if not isinstance(rows, axdr.Array):
            raise ProtocolError(f"meter {meter.id}: event log {model.event_log} buffer is not an array")
        events = []
        for row in rows.items:
            if not isinstance(row, axdr.Structure) or len(row.items) < 2:
                raise ProtocolError(f"meter {meter.id}: event log row is not (clock, code): {row!r}")
            code = _integer(row.items[1], model.event_log)
            kind = model.event_types.get(code, UNKNOWN_EVENT)
            events.append(
                Event(
                    meter.id,
                    kind,
                    axdr.DateTime.from_data(row.items[0]).to_utc(),
                    reason=f"meter event {code}",
                    details=(("dlmsEventCode", str(code)),),
                )
            )
        return events

    def _scaler_unit(self, session: DlmsSession, meter: MeterSpec, obis: str) -> tuple[int, int]:
        key = (meter.id, obis)
        if key not in self._scaler_units:
            value = session.get(3, obis, 3)
            if not isinstance(value, axdr.Structure) or len(value.items) != 2:
                raise ProtocolError(f"meter {meter.id}: scaler_unit of {obis} is not a pair: {value!r}")
            self._scaler_units[key] = (_integer(value.items[0], obis), _integer(value.items[1], obis))
        return self._scaler_units[key]

    def _profile(
        self, session: DlmsSession, meter: MeterSpec, profile: DlmsProfile, store: Store
    ) -> list[Reading]:
        """Exactly the intervals the store lacks: from just after the last stored one to now; for a
        meter with nothing stored, everything the meter holds."""
        key = (meter.id, profile.obis)
        if key not in self._columns:
            captured = session.get(7, profile.obis, 3)
            if not isinstance(captured, axdr.Array):
                raise ProtocolError(f"meter {meter.id}: capture objects of {profile.obis} are not an array")
            self._columns[key] = [
                str(apdu.CaptureObject.from_data(item).logical_name) for item in captured.items
            ]
        columns = self._columns[key]
        last = last_stored(store, meter.id, list(profile.columns.values()))
        if last is None:
            rows = session.get_entries(profile.obis)
        else:
            rows = session.get_range(profile.obis, last + timedelta(seconds=1), self.clock.now())
        if not isinstance(rows, axdr.Array):
            raise ProtocolError(f"meter {meter.id}: profile {profile.obis} buffer is not an array")
        clock_column = columns.index(CLOCK) if CLOCK in columns else None
        if clock_column is None:
            raise ProtocolError(f"meter {meter.id}: profile {profile.obis} captures no clock")
        readings = []
        for row in rows.items:
            if not isinstance(row, axdr.Structure) or len(row.items) != len(columns):
                raise ProtocolError(f"meter {meter.id}: profile row does not match its capture objects")
            moment = axdr.DateTime.from_data(row.items[clock_column]).to_utc()
            for index, obis in enumerate(columns):
                reading_type = profile.columns.get(obis)
                if reading_type is not None:
                    scaler, unit = self._scaler_unit(session, meter, obis)
                    value = scaled_value(_integer(row.items[index], obis), scaler, unit, reading_type)
                    readings.append(Reading(meter.id, reading_type, moment, value))
        return readings


def _integer(value: axdr.Data, obis: str) -> int:
    number = getattr(value, "value", None)
    if not isinstance(number, int) or isinstance(number, bool):
        raise ProtocolError(f"{obis}: expected an integer, got {value!r}")
    return number


def _file_version(path: Path | None) -> tuple[int, int, int] | None:
    """Inode, modification time and size of `path`: a rewritten keys file differs (None: no file)."""
    if path is None:
        return None
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_ino, found.st_mtime_ns, found.st_size
