"""The simulated DLMS meter's model: its clock, its energy, its logs, as gurux COSEM objects.

A meter's values are pure functions of (seed, address, true time), so a test can predict what it
will read, and the load profile, the registers and the clock always agree with each other: the
profile row stamped T holds what the register showed when the meter's own clock showed T.

gurux is GPLv2: this module belongs to the simulator and the tests only, never to the daemon.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import struct
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gurux_dlms.enums import DataType, ErrorCode, Unit
from gurux_dlms.GXDateTime import GXDateTime
from gurux_dlms.objects import (
    GXDLMSClock,
    GXDLMSData,
    GXDLMSDisconnectControl,
    GXDLMSObject,
    GXDLMSProfileGeneric,
    GXDLMSRegister,
)
from gurux_dlms.objects.enums import ControlState

from appliance.sim import simtime

relay_log = logging.getLogger("appliance.sim.dlms_meter")
DAYLIGHT_SAVING_ACTIVE = 0x80  # clock status bit 7

DAY_S = 86400
INTERVAL_S = 900
EPOCH_INSTALLED = 1577836800  # 2020-01-01T00:00Z: the simulated meters were installed then

OBIS_CLOCK = "0.0.1.0.0.255"
OBIS_LDN = "0.0.42.0.0.255"
OBIS_SERIAL = "0.0.96.1.0.255"
OBIS_IMPORT = "1.0.1.8.0.255"
OBIS_EXPORT = "1.0.2.8.0.255"
OBIS_LOAD_PROFILE = "1.0.99.1.0.255"
OBIS_EVENT_LOG = "0.0.99.98.0.255"
OBIS_EVENT_CODE = "0.0.96.11.0.255"
OBIS_DISCONNECT = "0.0.96.3.10.255"
OBIS_FRAME_COUNTER = "0.0.43.1.0.255"

# Standard event log codes (DLMS UA / IDIS numbering).
EVENT_POWER_DOWN = 1
EVENT_POWER_UP = 2
EVENT_CLOCK_OLD = 4
EVENT_CLOCK_NEW = 5
EVENT_COVER_OPENED = 44
EVENT_COVER_CLOSED = 45

DEFAULT_BLOCK_KEY = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
DEFAULT_AUTH_KEY = bytes.fromhex("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF")


def unit_random(*key: object) -> float:
    """A deterministic number in [0, 1) for `key`: the simulator's only source of randomness."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


# ---------------------------------------------------------------------------------------------
# COSEM date-time (12 bytes): the meter writes and reads it itself so that deviation and clock
# status are exactly what the Blue Book says, whatever gurux's local-time conversions do.
# ---------------------------------------------------------------------------------------------


def eu_summer_time(utc: float) -> bool:
    """Whether EU summer time is in force at `utc`: from 01:00 UTC on the last Sunday of March to
    01:00 UTC on the last Sunday of October."""
    year = dt.datetime.fromtimestamp(utc, dt.UTC).year

    def last_sunday_1h(month: int) -> float:
        day = dt.datetime(year, month, 31, 1, tzinfo=dt.UTC)
        return (day - dt.timedelta(days=(day.weekday() + 1) % 7)).timestamp()

    return last_sunday_1h(3) <= utc < last_sunday_1h(10)


def encode_datetime(utc: float, tz_minutes: int, status: int = 0) -> bytes:
    """COSEM date-time of UTC instant `utc` shown in local time (UTC + tz_minutes).

    The deviation field is minutes from local time to UTC (Blue Book sign: -60 for UTC+1).
    """
    local = dt.datetime.fromtimestamp(int(utc) + tz_minutes * 60, dt.UTC)
    hundredths = int((utc - int(utc)) * 100) % 100
    return struct.pack(
        ">HBBBBBBBhB",
        local.year,
        local.month,
        local.day,
        local.isoweekday(),
        local.hour,
        local.minute,
        local.second,
        hundredths,
        -tz_minutes,
        status,
    )


def decode_datetime(raw: bytes | bytearray, tz_minutes: int) -> float:
    """UTC instant of a 12-byte COSEM date-time; an unspecified deviation means the meter's zone.

    Raises ValueError for wildcards in the date or time fields (a range bound must be a real instant).
    """
    if len(raw) != 12:
        raise ValueError(f"a COSEM date-time has 12 bytes, not {len(raw)}")
    year, month, day, _dow, hour, minute, second, hundredths, deviation, _status = struct.unpack(
        ">HBBBBBBBhB", bytes(raw)
    )
    if year == 0xFFFF or 0xFF in (month, day, hour, minute):
        raise ValueError("date-time with wildcards")
    second = 0 if second == 0xFF else second
    hundredths = 0 if hundredths == 0xFF else hundredths
    local = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC).timestamp()
    offset = tz_minutes if deviation == -0x8000 else -deviation
    return local - offset * 60 + hundredths / 100


def instant_of(value: object, tz_minutes: int) -> float:
    """UTC instant of a range bound as gurux decodes it (octet string, GXDateTime or unix time)."""
    if isinstance(value, bytes | bytearray):
        return decode_datetime(value, tz_minutes)
    if isinstance(value, GXDateTime):
        return value.value.timestamp()
    if isinstance(value, int):
        return float(value)
    raise ValueError(f"cannot read a time from {type(value).__name__}")


# ---------------------------------------------------------------------------------------------
# The meter's clock: true time plus an offset and a drift; a SET moves it like a real RTC.
# ---------------------------------------------------------------------------------------------


class MeterClock:
    """meter_time = anchor_meter + (true - anchor_true) x (1 + drift): wrong on purpose if asked."""

    def __init__(
        self,
        offset_s: float = 0.0,
        drift_ppm: float = 0.0,
        tz_minutes: int = 0,
        now: Callable[[], float] = simtime.now,
        dst: bool = False,
    ) -> None:
        self._now = now
        self.rate = 1.0 + drift_ppm * 1e-6
        self.tz_minutes = tz_minutes
        self.dst = dst
        self.anchor_true = now()
        self.anchor_meter = self.anchor_true + offset_s

    def meter_time(self, true: float | None = None) -> float:
        """What the meter's clock shows (UTC seconds) at true time `true` (default: now)."""
        true = self._now() if true is None else true
        return self.anchor_meter + (true - self.anchor_true) * self.rate

    def true_time(self, meter: float) -> float:
        """The true instant at which the meter's clock showed `meter`."""
        return self.anchor_true + (meter - self.anchor_meter) / self.rate

    def set(self, meter: float) -> None:
        """The clock now shows `meter` (a SET of attribute 2, or a shift)."""
        self.anchor_true = self._now()
        self.anchor_meter = meter

    def offset(self) -> float:
        """Seconds the meter is ahead of true time right now."""
        return self.meter_time() - self._now()

    def stamp(self, utc: float) -> bytes:
        """`utc` as this meter shows it: its zone, plus an hour and the DST status bit in EU summer."""
        if self.dst and eu_summer_time(utc):
            return encode_datetime(utc, self.tz_minutes + 60, DAYLIGHT_SAVING_ACTIVE)
        return encode_datetime(utc, self.tz_minutes)


# ---------------------------------------------------------------------------------------------
# Energy: a household with a daily load curve and a few kWp of rooftop solar.
# ---------------------------------------------------------------------------------------------

_LOAD_A1, _LOAD_A2 = 0.5, 0.25  # evening and morning peaks; 1 - A1 - A2 > 0 keeps the load positive


def _load_shape_integral(hours: float) -> float:
    """Integral of the daily load shape from 0 to `hours` (shape averages 1 over a day)."""

    def g(h: float) -> float:
        return (
            h
            - _LOAD_A1 * 24 / (2 * math.pi) * math.cos(2 * math.pi * (h - 13) / 24)
            - _LOAD_A2 * 24 / (4 * math.pi) * math.cos(4 * math.pi * (h - 4.5) / 24)
        )

    return g(hours) - g(0.0)


def _solar_integral(hours: float) -> float:
    """Integral of sin(pi (h-6)/12) over the daylight part of [0, hours]: 24/pi for a whole day."""
    if hours <= 6:
        return 0.0
    if hours >= 18:
        return 24 / math.pi
    return 12 / math.pi * (1 - math.cos(math.pi * (hours - 6) / 12))


class EnergyModel:
    """Cumulative active energy (Wh) of one meter as a function of true time.

    Import follows P0 x day factor x daily shape; export is the surplus of a small PV system.
    Import carries per-interval noise on the 15-minute grid, smaller than the least consumption of
    an interval, so the counter never goes down; between grid points it moves linearly.
    """

    def __init__(self, seed: int, address: int, tz_minutes: int = 0) -> None:
        self.key = (seed, address)
        self.tz_s = tz_minutes * 60
        self.p0_w = 300.0 + 400.0 * unit_random(*self.key, "p0")
        self.pv_w = 1500.0 + 2500.0 * unit_random(*self.key, "pv")
        self.base_import_wh = 1.0e6 * (1 + unit_random(*self.key, "base-import"))
        self.base_export_wh = 1.0e5 * (1 + unit_random(*self.key, "base-export"))
        self.noise_wh = 0.9 * self.p0_w * 0.85 * (1 - _LOAD_A1 - _LOAD_A2) * 0.25
        self._import_days = [0.0]  # prefix sums of whole-day energy since installation
        self._export_days = [0.0]
        self._lock = threading.Lock()

    def _day_factor(self, day: int) -> float:
        weekend = 0.15 if (day + 3) % 7 >= 5 else 0.0  # 1970-01-01 was a Thursday
        return 0.85 + 0.3 * unit_random(*self.key, "day", day) + weekend

    def _sun_factor(self, day: int) -> float:
        return 0.15 + 0.85 * unit_random(*self.key, "sun", day)

    def _prefix(self, days: int) -> tuple[float, float]:
        with self._lock:
            first_day = EPOCH_INSTALLED // DAY_S
            while len(self._import_days) <= days:
                d = first_day + len(self._import_days) - 1
                self._import_days.append(self._import_days[-1] + 24 * self._day_factor(d))
                self._export_days.append(self._export_days[-1] + 24 / math.pi * self._sun_factor(d))
            return self._import_days[days], self._export_days[days]

    def _split(self, true: float) -> tuple[int, int, float]:
        local = max(true, EPOCH_INSTALLED) + self.tz_s
        day = int(local // DAY_S)
        return day, day - EPOCH_INSTALLED // DAY_S, (local - day * DAY_S) / 3600

    def _import_smooth(self, true: float) -> float:
        day, days, hours = self._split(true)
        whole, _ = self._prefix(days)
        return self.base_import_wh + self.p0_w * (whole + self._day_factor(day) * _load_shape_integral(hours))

    def _import_on_grid(self, k: int) -> float:
        return self._import_smooth(k * INTERVAL_S) + self.noise_wh * unit_random(*self.key, "noise", k)

    def import_wh(self, true: float) -> float:
        """Energy imported up to true time `true`."""
        k = math.floor(true / INTERVAL_S)
        low, high = self._import_on_grid(k), self._import_on_grid(k + 1)
        return low + (high - low) * (true / INTERVAL_S - k)

    def export_wh(self, true: float) -> float:
        """Energy exported up to true time `true`: ~55 % of the PV yield goes to the grid."""
        day, days, hours = self._split(true)
        _, whole = self._prefix(days)
        produced = self.pv_w * (whole + self._sun_factor(day) * _solar_integral(hours))
        return self.base_export_wh + 0.55 * produced


# ---------------------------------------------------------------------------------------------
# The meter's state, shared by every association (HDLC or wrapper) with that meter.
# ---------------------------------------------------------------------------------------------


@dataclass
class MeterConfig:
    """One simulated meter; every field can be given on the command line as `key=value`."""

    address: int  # HDLC lower (physical) address on a bus; wrapper destination address on TCP
    logical: int = 1  # HDLC upper (logical device) address
    serial: str = ""
    password: bytes = b"00000001"
    system_title: bytes = b""
    block_key: bytes = DEFAULT_BLOCK_KEY
    auth_key: bytes = DEFAULT_AUTH_KEY
    offset_s: float = 0.0
    drift_ppm: float = 0.0
    tz_minutes: int = 0
    dst: bool = False  # EU summer time on top of tz_minutes
    days: int = 35
    seed: int = 0
    scaler: int = 0
    control_mode: int = 1
    max_info: int = 128  # HDLC information field, both directions (window is always 1)
    max_pdu: int = 1024  # longer answers go in GET blocks
    server_ic: int = 1  # counter of the first ciphered APDU the meter sends (some clients refuse 0)

    def __post_init__(self) -> None:
        if not self.serial:
            self.serial = f"{self.seed:02d}{self.address:06d}"
        if not self.system_title:
            self.system_title = b"SIM" + self.address.to_bytes(5, "big")
        if len(self.system_title) != 8:
            raise ValueError("a system title has 8 bytes")
        if len(self.block_key) != 16 or len(self.auth_key) != 16:
            raise ValueError("security suite 0 keys have 16 bytes")


@dataclass
class MeterState:
    """What a real meter keeps in non-volatile memory: clock, relay, logs, frame counters."""

    config: MeterConfig
    clock: MeterClock = field(init=False)
    energy: EnergyModel = field(init=False)
    control_state: int = ControlState.CONNECTED
    events: list[tuple[float, int]] = field(default_factory=list)
    client_ic: dict[bytes, int] = field(default_factory=dict)  # last counter seen per client title
    server_ic: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        c = self.config
        self.clock = MeterClock(c.offset_s, c.drift_ppm, c.tz_minutes, dst=c.dst)
        self.energy = EnergyModel(c.seed, c.address, c.tz_minutes)
        self.server_ic = c.server_ic
        now = self.clock.meter_time()
        outage = now - DAY_S * (5 + 4 * unit_random(c.seed, c.address, "outage"))
        cover = now - DAY_S * (1 + 2 * unit_random(c.seed, c.address, "cover"))
        self.events = sorted(
            [
                (outage, EVENT_POWER_DOWN),
                (outage + 400, EVENT_POWER_UP),
                (cover, EVENT_COVER_OPENED),
                (cover + 95, EVENT_COVER_CLOSED),
            ]
        )

    def register_value(self, obis: str, true: float | None = None) -> int:
        """The raw integer attribute 2 of an energy register (apply 10**scaler for Wh)."""
        true = simtime.now() if true is None else true
        wh = self.energy.import_wh(true) if obis == OBIS_IMPORT else self.energy.export_wh(true)
        return int(wh / 10**self.config.scaler)

    def set_clock(self, meter: float) -> None:
        """Set the clock and log the adjustment as a real meter does (events 4 then 5)."""
        with self.lock:
            old = self.clock.meter_time()
            self.clock.set(meter)
            self.events += [(old, EVENT_CLOCK_OLD), (meter, EVENT_CLOCK_NEW)]

    def check_client_ic(self, title: bytes, ic: int) -> bool:
        """Accept a ciphered APDU only if its invocation counter is above every one seen before."""
        with self.lock:
            if ic <= self.client_ic.get(title, -1):
                return False
            self.client_ic[title] = ic
            return True


# ---------------------------------------------------------------------------------------------
# COSEM objects that read the state instead of holding stale values.
# ---------------------------------------------------------------------------------------------


class LiveClock(GXDLMSClock):
    """Class 8 whose time attribute is the meter clock at the instant of the read; settable."""

    def __init__(self, state: MeterState) -> None:
        super().__init__(OBIS_CLOCK)
        self.state = state

    def getValue(self, settings: object, e: object) -> object:
        """Attribute 2 is encoded here, at read time, with the meter's own deviation; attribute 3
        (time_zone) is that deviation, the Blue Book's sign: -60 for UTC+1."""
        clock = self.state.clock
        if e.index == 2:
            return bytearray(clock.stamp(clock.meter_time()))
        if e.index == 3:
            return -clock.tz_minutes
        return super().getValue(settings, e)

    def setValue(self, settings: object, e: object) -> None:
        """A SET of attribute 2 moves the clock, of attribute 3 its zone; the rest as gurux stores it."""
        if e.index == 2:
            try:
                self.state.set_clock(instant_of(e.value, self.state.clock.tz_minutes))
            except ValueError:
                e.error = ErrorCode.OTHER_REASON
        elif e.index == 3 and isinstance(e.value, int) and abs(e.value) <= 720:
            self.state.clock.tz_minutes = -e.value
        elif e.index == 3:
            e.error = ErrorCode.OTHER_REASON
        else:
            super().setValue(settings, e)

    def invoke(self, settings: object, e: object) -> None:
        """adjust_to_quarter (1) and shift_time (6, ±900 s): the methods a HES uses to trim a clock."""
        now = self.state.clock.meter_time()
        if e.index == 1:
            self.state.set_clock(round(now / INTERVAL_S) * INTERVAL_S)
        elif e.index == 6 and isinstance(e.parameters, int) and abs(e.parameters) <= 900:
            self.state.set_clock(now + e.parameters)
        else:
            e.error = ErrorCode.READ_WRITE_DENIED


class LiveRegister(GXDLMSRegister):
    """Class 3 energy register: double-long-unsigned value in 10**scaler Wh, computed at read time."""

    def __init__(self, state: MeterState, obis: str) -> None:
        super().__init__(obis)
        self.state = state
        self.unit = Unit.ACTIVE_ENERGY
        self.setDataType(2, DataType.UINT32)

    def getValue(self, settings: object, e: object) -> object:
        """Attributes 2 and 3 from the state; gurux's own attribute 3 goes through a float log."""
        if e.index == 2:
            return self.state.register_value(self.logicalName) & 0xFFFFFFFF
        if e.index == 3:
            return bytearray(struct.pack(">BBBbBB", 0x02, 2, 0x0F, self.state.config.scaler, 0x16, self.unit))
        return super().getValue(settings, e)

    def setValue(self, settings: object, e: object) -> None:
        """Energy registers are not writable."""
        e.error = ErrorCode.READ_WRITE_DENIED


class DisconnectControl(GXDLMSDisconnectControl):
    """Class 70 with the Blue Book state machine for remote_disconnect (1) / remote_reconnect (2)."""

    def __init__(self, state: MeterState) -> None:
        super().__init__(OBIS_DISCONNECT)
        self.state = state
        self.controlMode = state.config.control_mode

    def getValue(self, settings: object, e: object) -> object:
        """output_state and control_state come from the shared state (another association may act)."""
        self.controlState = self.state.control_state
        self.outputState = self.state.control_state == ControlState.CONNECTED
        return super().getValue(settings, e)

    def setValue(self, settings: object, e: object) -> None:
        """Only the methods change the relay."""
        e.error = ErrorCode.READ_WRITE_DENIED

    def invoke(self, settings: object, e: object) -> None:
        """Transitions b/c (disconnect) and d or a (reconnect, by control mode); mode 0 refuses."""
        with self.state.lock:
            current = self.state.control_state
            if self.controlMode == 0 or e.index not in (1, 2):
                e.error = ErrorCode.READ_WRITE_DENIED
            elif e.index == 1:
                self.state.control_state = ControlState.DISCONNECTED
            elif current == ControlState.DISCONNECTED:
                direct = self.controlMode in (1, 3, 5, 6)
                self.state.control_state = (
                    ControlState.CONNECTED if direct else ControlState.READY_FOR_RECONNECTION
                )
            # What the relay did, for the simulator's log: tests see the meter's side of a command.
            names = ("disconnected", "connected", "ready_for_reconnection")
            relay_log.info("meter %s: relay %s", self.state.config.address, names[self.state.control_state])


class StaticData(GXDLMSData):
    """Class 1 holding a fixed octet string (logical device name, serial number)."""

    def __init__(self, obis: str, value: bytes) -> None:
        super().__init__(obis)
        self.value = bytearray(value)
        self.setDataType(2, DataType.OCTET_STRING)

    def setValue(self, settings: object, e: object) -> None:
        """Identification is read-only."""
        e.error = ErrorCode.READ_WRITE_DENIED


class FrameCounter(GXDLMSData):
    """Class 1 0.0.43.1.0.255: the next invocation counter this meter will accept from a client."""

    def __init__(self, state: MeterState) -> None:
        super().__init__(OBIS_FRAME_COUNTER)
        self.state = state
        self.setDataType(2, DataType.UINT32)

    def getValue(self, settings: object, e: object) -> object:
        """Highest counter seen from any client, plus one."""
        if e.index == 2:
            return (max(self.state.client_ic.values(), default=-1) + 1) & 0xFFFFFFFF
        return super().getValue(settings, e)


# ---------------------------------------------------------------------------------------------
# Profiles: rows are produced on demand and selective access is served here (FIELD-NOTES item 5).
# ---------------------------------------------------------------------------------------------


class RowSource:
    """Entries of a profile buffer, 1-based, oldest first; subclasses say what a row holds."""

    def __init__(self, state: MeterState) -> None:
        self.state = state

    def count(self) -> int:
        """Entries in use."""
        raise NotImplementedError

    def capacity(self) -> int:
        """Profile entries (the buffer's size)."""
        raise NotImplementedError

    def rows(self, first: int, last: int) -> list[list[bytes]]:
        """Encoded columns of entries first..last (inclusive)."""
        raise NotImplementedError

    def entries_between(self, start: float, end: float) -> tuple[int, int]:
        """First and last entry stamped within [start, end] (UTC); last < first if none."""
        raise NotImplementedError


def _u32(value: int) -> bytes:
    return b"\x06" + struct.pack(">I", value & 0xFFFFFFFF)


def _stamp(utc: float, clock: MeterClock) -> bytes:
    return b"\x09\x0c" + clock.stamp(utc)


class LoadProfileRows(RowSource):
    """The last `days` of 15-minute rows: clock, import, export, as of the meter's clock now."""

    def capacity(self) -> int:
        """Profile entries: the configured number of days of quarter hours."""
        return self.state.config.days * DAY_S // INTERVAL_S

    def count(self) -> int:
        """The buffer has been full since installation (years ago)."""
        return self.capacity()

    def _last_stamp(self) -> float:
        return math.floor(self.state.clock.meter_time() / INTERVAL_S) * INTERVAL_S

    def stamp(self, entry: int) -> float:
        """Meter time (UTC) of entry number `entry`."""
        return self._last_stamp() - (self.count() - entry) * INTERVAL_S

    def rows(self, first: int, last: int) -> list[list[bytes]]:
        """Each row is computed from the energy model at the true time the meter showed its stamp."""
        clock = self.state.clock
        out = []
        for entry in range(first, last + 1):
            stamp = self.stamp(entry)
            true = clock.true_time(stamp)
            out.append(
                [
                    _stamp(stamp, clock),
                    _u32(self.state.register_value(OBIS_IMPORT, true)),
                    _u32(self.state.register_value(OBIS_EXPORT, true)),
                ]
            )
        return out

    def entries_between(self, start: float, end: float) -> tuple[int, int]:
        """Arithmetic on the 15-minute grid; clipped to the buffer."""
        last_stamp, n = self._last_stamp(), self.count()
        first = n - math.floor((last_stamp - start) / INTERVAL_S)
        last = n - math.ceil((last_stamp - end) / INTERVAL_S)
        return max(first, 1), min(last, n)


class EventLogRows(RowSource):
    """The standard event log: (clock, event code) in the order the events happened."""

    def __init__(self, state: MeterState, capacity: int = 100) -> None:
        super().__init__(state)
        self._capacity = capacity

    def _events(self) -> list[tuple[float, int]]:
        with self.state.lock:
            return self.state.events[-self._capacity :]

    def capacity(self) -> int:
        """Profile entries."""
        return self._capacity

    def count(self) -> int:
        """Events recorded, up to the capacity."""
        return len(self._events())

    def rows(self, first: int, last: int) -> list[list[bytes]]:
        """Clock and event code (unsigned, class 1 0.0.96.11.0.255)."""
        clock = self.state.clock
        return [[_stamp(t, clock), b"\x11" + bytes([code])] for t, code in self._events()[first - 1 : last]]

    def entries_between(self, start: float, end: float) -> tuple[int, int]:
        """Events are in time order unless the clock was set back; search the stamps."""
        stamps = [t for t, _ in self._events()]
        return bisect_left(stamps, start) + 1, bisect_right(stamps, end)


class LiveProfile(GXDLMSProfileGeneric):
    """Class 7 whose buffer is served whole, by range (selector 1) and by entry (selector 2).

    FIELD-NOTES item 5: gurux's own selective access calls a missing ValueEventArgs.getRowEndIndex()
    and compares a datetime with 0, so reads by range and by entry come back HARDWARE_FAULT.
    """

    def __init__(
        self, obis: str, source: RowSource, columns: Sequence[tuple[GXDLMSObject, int]], period: int
    ) -> None:
        super().__init__(obis)
        self.source = source
        for obj, attribute in columns:
            self.addCaptureObject(obj, attribute, 0)
        self.capturePeriod = period
        self.profileEntries = source.capacity()

    def getValue(self, settings: object, e: object) -> object:
        """Buffer (2) and entries in use (7) from the row source; the rest as gurux encodes it."""
        if e.index == 7:
            return self.source.count()
        if e.index == 8:
            return self.source.capacity()
        if e.index != 2:
            return super().getValue(settings, e)
        try:
            first, last, columns = self._selection(e.selector, e.parameters)
        except (ValueError, TypeError, IndexError, KeyError):
            e.error = ErrorCode.OTHER_REASON  # a selection the meter cannot serve
            e.byteArray = True
            return bytearray()  # gurux would append an empty array after the error code
        rows = self.source.rows(first, last) if last >= first else []
        out = bytearray(b"\x01" + _length(len(rows)))
        for row in rows:
            picked = [row[i] for i in columns]
            out += b"\x02" + _length(len(picked)) + b"".join(picked)
        e.byteArray = True
        return out

    def _selection(self, selector: int, parameters: object) -> tuple[int, int, list[int]]:
        """Entry range and column indexes (0-based) a read asks for."""
        n, width = self.source.count(), len(self.captureObjects)
        if not selector or parameters is None:
            return 1, n, list(range(width))
        if selector == 1:
            _restricting, start, end, selected = parameters
            tz_minutes = self.source.state.clock.tz_minutes  # for bounds without a deviation
            first, last = self.source.entries_between(
                instant_of(start, tz_minutes), instant_of(end, tz_minutes)
            )
            return first, last, self._columns_by_definition(selected or [])
        if selector == 2:
            from_entry, to_entry = parameters[0], parameters[1]
            from_col = parameters[2] if len(parameters) > 2 else 1
            to_col = parameters[3] if len(parameters) > 3 else 0
            from_entry = max(from_entry, 1)
            to_entry = n if to_entry == 0 else min(to_entry, n)
            to_col = width if to_col == 0 else min(to_col, width)
            if from_col < 1 or from_col > to_col:
                raise ValueError("column range")
            return from_entry, to_entry, list(range(from_col - 1, to_col))
        raise ValueError(f"selector {selector}")

    def _columns_by_definition(self, selected: list) -> list[int]:
        """Capture-object definitions (class, LN, attribute, data index) -> column indexes."""
        if not selected:
            return list(range(len(self.captureObjects)))
        wanted = []
        for class_id, ln, attribute, _data_index in selected:
            for i, (obj, co) in enumerate(self.captureObjects):
                if (
                    obj.objectType == class_id
                    and _ln_bytes(obj.logicalName) == bytes(ln)
                    and co.attributeIndex == attribute
                ):
                    wanted.append(i)
                    break
            else:
                raise ValueError("unknown capture object")
        return wanted

    def setValue(self, settings: object, e: object) -> None:
        """The buffer and its definition are the meter's, not the client's."""
        e.error = ErrorCode.READ_WRITE_DENIED

    def invoke(self, settings: object, e: object) -> None:
        """reset / capture are refused: the simulated buffer follows the clock."""
        e.error = ErrorCode.READ_WRITE_DENIED


def _length(n: int) -> bytes:
    """A-XDR length (quantity) encoding."""
    if n < 0x80:
        return bytes([n])
    if n < 0x100:
        return bytes([0x81, n])
    return bytes([0x82]) + n.to_bytes(2, "big")


def _ln_bytes(ln: str) -> bytes:
    return bytes(int(part) for part in ln.split("."))


def build_objects(state: MeterState) -> list[GXDLMSObject]:
    """Every COSEM object of one meter except the association (the server adds it)."""
    c = state.config
    clock = LiveClock(state)
    energy_import = LiveRegister(state, OBIS_IMPORT)
    energy_export = LiveRegister(state, OBIS_EXPORT)
    event_code = GXDLMSData(OBIS_EVENT_CODE)
    event_code.value = 0
    event_code.setDataType(2, DataType.UINT8)
    load_profile = LiveProfile(
        OBIS_LOAD_PROFILE,
        LoadProfileRows(state),
        [(clock, 2), (energy_import, 2), (energy_export, 2)],
        INTERVAL_S,
    )
    event_log = LiveProfile(OBIS_EVENT_LOG, EventLogRows(state), [(clock, 2), (event_code, 2)], 0)
    return [
        clock,
        StaticData(OBIS_LDN, f"SIM{c.serial}"[:16].encode()),  # flag ID + serial
        StaticData(OBIS_SERIAL, c.serial.encode()),
        energy_import,
        energy_export,
        load_profile,
        event_code,
        event_log,
        DisconnectControl(state),
        FrameCounter(state),
    ]
