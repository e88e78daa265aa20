"""A-XDR encoding of COSEM data (IEC 62056-6-2, Blue Book 4.1.5/4.1.6), sans-I/O: bytes in, typed values out.

Every COSEM Data type is its own small frozen dataclass, so a value keeps its exact wire type (a `Long`
is not a `LongUnsigned`) and `encode(decode(x)) == x` byte for byte for every canonical encoding (the form
`encode` writes). The decoder also accepts what real meters send that is not canonical and normalises it:
a long-form length that would fit the short form, boolean true as any non-zero byte.

Malformed bytes raise ProtocolError and nothing else: a meter's answer must never crash the bus worker.
Building a value that cannot be encoded (an `Unsigned(300)`) is a caller's bug and raises ValueError.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import IntEnum, IntFlag
from typing import ClassVar

from appliance.errors import ProtocolError

MAX_DEPTH = 32  # nesting of arrays/structures; real meters use 3 or 4, a hostile peer could send 10^5
_COMPACT_EXPANSION = 64  # values a compact-array element may yield per byte it occupies (zero-size members)


class DataType(IntEnum):
    """The tag byte in front of every A-XDR encoded COSEM value (the Data CHOICE)."""

    NULL_DATA = 0
    ARRAY = 1
    STRUCTURE = 2
    BOOLEAN = 3
    BIT_STRING = 4
    DOUBLE_LONG = 5
    DOUBLE_LONG_UNSIGNED = 6
    OCTET_STRING = 9
    VISIBLE_STRING = 10
    UTF8_STRING = 12
    BCD = 13
    INTEGER = 15
    LONG = 16
    UNSIGNED = 17
    LONG_UNSIGNED = 18
    COMPACT_ARRAY = 19
    LONG64 = 20
    LONG64_UNSIGNED = 21
    ENUM = 22
    FLOAT32 = 23
    FLOAT64 = 24
    DATE_TIME = 25
    DATE = 26
    TIME = 27
    DONT_CARE = 255


# ---------------------------------------------------------------------------------------------------------
# Lengths and a bounds-checked reader


def encode_length(length: int) -> bytes:
    """A-XDR/BER length: one byte below 128, else 0x8N followed by N big-endian bytes."""
    if length < 0 or length > 0xFFFFFFFF:
        raise ValueError(f"length {length} cannot be encoded (0 to 2^32-1)")
    if length < 0x80:
        return bytes((length,))
    size = (length.bit_length() + 7) // 8
    return bytes((0x80 | size,)) + length.to_bytes(size, "big")


def decode_length(data: bytes, offset: int = 0) -> tuple[int, int]:
    """The length that starts at `offset`, and the offset just after it."""
    reader = ByteReader(data, offset)
    length = reader.length()
    return length, reader.pos


class ByteReader:
    """A cursor over received bytes whose every read is bounds-checked and fails as ProtocolError.

    Used by this module and by the APDU codec, so that no IndexError or struct.error ever escapes.
    """

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def remaining(self) -> int:
        """How many bytes are left before `end`."""
        return self.end - self.pos

    def at_end(self) -> bool:
        """True when everything up to `end` has been read."""
        return self.pos >= self.end

    def expect_end(self, what: str) -> None:
        """Refuse trailing bytes: a well-formed PDU has none, and ignoring them would hide a framing bug."""
        if self.pos != self.end:
            raise ProtocolError(f"{what}: {self.end - self.pos} unexpected trailing bytes")

    def u8(self, what: str = "byte") -> int:
        """One unsigned byte."""
        if self.pos >= self.end:
            raise ProtocolError(f"truncated: {what} missing")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def take(self, count: int, what: str = "data") -> bytes:
        """The next `count` bytes."""
        if count > self.end - self.pos:
            raise ProtocolError(f"truncated: {what} needs {count} bytes, {self.end - self.pos} left")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return bytes(chunk)

    def uint(self, size: int, what: str = "integer") -> int:
        """A big-endian unsigned integer of `size` bytes."""
        return int.from_bytes(self.take(size, what), "big")

    def length(self, what: str = "length") -> int:
        """An A-XDR/BER length (short or long form); lengths beyond 4 bytes or indefinite are refused."""
        first = self.u8(what)
        if first < 0x80:
            return first
        size = first & 0x7F
        if size == 0 or size > 4:
            raise ProtocolError(f"{what}: invalid length form 0x{first:02x}")
        return self.uint(size, what)

    def sized(self, length: int, what: str) -> ByteReader:
        """A reader over the next `length` bytes (which this reader skips)."""
        if length > self.end - self.pos:
            raise ProtocolError(f"truncated: {what} declares {length} bytes, {self.end - self.pos} left")
        inner = ByteReader(self.data, self.pos, self.pos + length)
        self.pos += length
        return inner

    def data_value(self) -> Data:
        """One tagged COSEM Data value."""
        return _decode(self, 0)


# ---------------------------------------------------------------------------------------------------------
# The values


class Data:
    """Base of every COSEM data value; `tag` is its A-XDR type."""

    __slots__ = ()
    tag: ClassVar[DataType]

    def _write_content(self, out: bytearray) -> None:
        raise NotImplementedError

    def _write(self, out: bytearray, depth: int) -> None:
        out.append(self.tag)
        self._write_content(out)


def _data_tuple(owner: str, items: Sequence[Data]) -> tuple[Data, ...]:
    """Items as a tuple (frozen values stay hashable), refusing anything that is not a Data value."""
    result = items if isinstance(items, tuple) else tuple(items)
    for item in result:
        if not isinstance(item, Data):
            raise ValueError(f"{owner} items must be Data values, got {item!r}")
    return result


@dataclass(frozen=True, slots=True)
class NullData(Data):
    """null-data: an empty value (a missing column, an unused parameter)."""

    tag = DataType.NULL_DATA

    def _write_content(self, out: bytearray) -> None:
        pass


@dataclass(frozen=True, slots=True)
class DontCare(Data):
    """dont-care: a wildcard in a compared value (e.g. a selective-access filter)."""

    tag = DataType.DONT_CARE

    def _write_content(self, out: bytearray) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Array(Data):
    """array: values of one type (the rows of a profile, the entries of a list)."""

    items: tuple[Data, ...] = ()
    tag = DataType.ARRAY

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", _data_tuple(type(self).__name__, self.items))

    def _write(self, out: bytearray, depth: int) -> None:
        _check_depth(depth)
        out.append(self.tag)
        out += encode_length(len(self.items))
        for item in self.items:
            item._write(out, depth + 1)


@dataclass(frozen=True, slots=True)
class Structure(Data):
    """structure: a record of values of any types (a profile row, a scaler-unit pair)."""

    items: tuple[Data, ...] = ()
    tag = DataType.STRUCTURE

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", _data_tuple(type(self).__name__, self.items))

    def _write(self, out: bytearray, depth: int) -> None:
        _check_depth(depth)
        out.append(self.tag)
        out += encode_length(len(self.items))
        for item in self.items:
            item._write(out, depth + 1)


@dataclass(frozen=True, slots=True)
class Boolean(Data):
    """boolean: encoded as 0x00 or 0x01 (any non-zero byte is read as true)."""

    value: bool
    tag = DataType.BOOLEAN

    def __post_init__(self) -> None:
        if not isinstance(self.value, bool):
            raise ValueError(f"Boolean needs a bool, got {self.value!r}")

    def _write_content(self, out: bytearray) -> None:
        out.append(1 if self.value else 0)


@dataclass(frozen=True, slots=True)
class BitString(Data):
    """bit-string: `bit_count` bits, first bit in the most significant bit of the first octet.

    The octets are kept as received (padding bits included) so that re-encoding gives the same bytes.
    """

    octets: bytes
    bit_count: int
    tag = DataType.BIT_STRING

    def __post_init__(self) -> None:
        if not isinstance(self.octets, bytes):
            object.__setattr__(self, "octets", bytes(self.octets))
        if type(self.bit_count) is not int or self.bit_count < 0:
            raise ValueError(f"bit count must be a non-negative int, got {self.bit_count!r}")
        if len(self.octets) != (self.bit_count + 7) // 8:
            raise ValueError(
                f"{self.bit_count} bits need {(self.bit_count + 7) // 8} octets, got {len(self.octets)}"
            )

    @classmethod
    def from_bools(cls, bits: Sequence[bool]) -> BitString:
        """A bit string from flags, first flag first (as status words are documented)."""
        octets = bytearray((len(bits) + 7) // 8)
        for index, bit in enumerate(bits):
            if bit:
                octets[index // 8] |= 0x80 >> (index % 8)
        return cls(bytes(octets), len(bits))

    def bools(self) -> tuple[bool, ...]:
        """The bits as flags, first bit first."""
        return tuple(bool(self.octets[i // 8] & (0x80 >> (i % 8))) for i in range(self.bit_count))

    def _write_content(self, out: bytearray) -> None:
        out += encode_length(self.bit_count)
        out += self.octets


@dataclass(frozen=True, slots=True)
class _Number(Data):
    """An integer type of fixed size; subclasses name the COSEM type and its range."""

    value: int
    _format: ClassVar[struct.Struct]

    def __post_init__(self) -> None:
        if type(self.value) is not int:
            raise ValueError(f"{type(self).__name__} needs an int, got {self.value!r}")
        try:
            self._format.pack(self.value)
        except struct.error:
            raise ValueError(f"{self.value} is out of range for {type(self).__name__}") from None

    def _write_content(self, out: bytearray) -> None:
        out += self._format.pack(self.value)


@dataclass(frozen=True, slots=True)
class Integer(_Number):
    """integer: signed 8 bits (scalers are of this type)."""

    tag = DataType.INTEGER
    _format = struct.Struct(">b")


@dataclass(frozen=True, slots=True)
class Long(_Number):
    """long: signed 16 bits."""

    tag = DataType.LONG
    _format = struct.Struct(">h")


@dataclass(frozen=True, slots=True)
class DoubleLong(_Number):
    """double-long: signed 32 bits."""

    tag = DataType.DOUBLE_LONG
    _format = struct.Struct(">i")


@dataclass(frozen=True, slots=True)
class Long64(_Number):
    """long64: signed 64 bits."""

    tag = DataType.LONG64
    _format = struct.Struct(">q")


@dataclass(frozen=True, slots=True)
class Unsigned(_Number):
    """unsigned: 8 bits."""

    tag = DataType.UNSIGNED
    _format = struct.Struct(">B")


@dataclass(frozen=True, slots=True)
class LongUnsigned(_Number):
    """long-unsigned: 16 bits (class ids, data indexes)."""

    tag = DataType.LONG_UNSIGNED
    _format = struct.Struct(">H")


@dataclass(frozen=True, slots=True)
class DoubleLongUnsigned(_Number):
    """double-long-unsigned: 32 bits (most energy registers, profile entry numbers)."""

    tag = DataType.DOUBLE_LONG_UNSIGNED
    _format = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Long64Unsigned(_Number):
    """long64-unsigned: 64 bits."""

    tag = DataType.LONG64_UNSIGNED
    _format = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class EnumValue(Data):
    """enum: one byte naming a choice (units, disconnect states); the meaning depends on the attribute."""

    value: int
    tag = DataType.ENUM

    def __post_init__(self) -> None:
        _check_byte("enum", self.value)

    def _write_content(self, out: bytearray) -> None:
        out.append(self.value)


@dataclass(frozen=True, slots=True)
class Bcd(Data):
    """bcd: one octet holding two binary-coded decimal digits, kept raw (0-255) so nothing is lost."""

    value: int
    tag = DataType.BCD

    def __post_init__(self) -> None:
        _check_byte("bcd", self.value)

    def _write_content(self, out: bytearray) -> None:
        out.append(self.value)


@dataclass(frozen=True, slots=True)
class _Float(Data):
    """An IEEE 754 value that keeps its exact bits: equality and encoding go by `bits`, so a NaN equals
    itself and a signalling NaN's payload survives a round trip (a float conversion would quiet it)."""

    value: float = field(compare=False)
    bits: bytes = field(default=b"", repr=False)
    _format: ClassVar[struct.Struct]

    def __post_init__(self) -> None:
        if not self.bits:
            try:
                object.__setattr__(self, "bits", self._format.pack(self.value))
            except (struct.error, OverflowError, TypeError):
                raise ValueError(f"{self.value!r} does not fit a {type(self).__name__}") from None
        elif not isinstance(self.bits, bytes) or len(self.bits) != self._format.size:
            raise ValueError(
                f"{type(self).__name__} bits must be {self._format.size} bytes, got {self.bits!r}"
            )
        object.__setattr__(self, "value", self._format.unpack(self.bits)[0])

    def _write_content(self, out: bytearray) -> None:
        out += self.bits


@dataclass(frozen=True, slots=True)
class Float32(_Float):
    """float32: IEEE 754 single precision; a value given as a Python float is rounded to it."""

    tag = DataType.FLOAT32
    _format = struct.Struct(">f")


@dataclass(frozen=True, slots=True)
class Float64(_Float):
    """float64: IEEE 754 double precision."""

    tag = DataType.FLOAT64
    _format = struct.Struct(">d")


@dataclass(frozen=True, slots=True)
class OctetString(Data):
    """octet-string: raw bytes (logical names, serial numbers, date-times as clocks send them)."""

    value: bytes
    tag = DataType.OCTET_STRING

    def __post_init__(self) -> None:
        if not isinstance(self.value, bytes):
            if not isinstance(self.value, bytearray | memoryview):
                raise ValueError(f"OctetString needs bytes, got {self.value!r}")
            object.__setattr__(self, "value", bytes(self.value))

    def _write_content(self, out: bytearray) -> None:
        out += encode_length(len(self.value))
        out += self.value


@dataclass(frozen=True, slots=True)
class VisibleString(Data):
    """visible-string: single-byte characters; held as latin-1 so every received byte survives."""

    value: str
    tag = DataType.VISIBLE_STRING

    def __post_init__(self) -> None:
        if not isinstance(self.value, str):
            raise ValueError(f"VisibleString needs a str, got {self.value!r}")
        try:
            self.value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"VisibleString holds single-byte characters only: {self.value!r}") from None

    def _write_content(self, out: bytearray) -> None:
        raw = self.value.encode("latin-1")
        out += encode_length(len(raw))
        out += raw


@dataclass(frozen=True, slots=True)
class Utf8String(Data):
    """utf8-string: text in UTF-8 (invalid UTF-8 from a meter is a ProtocolError)."""

    value: str
    tag = DataType.UTF8_STRING

    def __post_init__(self) -> None:
        if not isinstance(self.value, str):
            raise ValueError(f"Utf8String needs a str, got {self.value!r}")
        try:
            self.value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"Utf8String cannot hold lone surrogates: {self.value!r}") from None

    def _write_content(self, out: bytearray) -> None:
        raw = self.value.encode("utf-8")
        out += encode_length(len(raw))
        out += raw


# ---------------------------------------------------------------------------------------------------------
# Date, time and date-time (Blue Book 4.1.6.1)


class ClockStatus(IntFlag):
    """The clock status byte of a date-time; unknown (reserved) bits are kept."""

    INVALID = 0x01
    DOUBTFUL = 0x02
    DIFFERENT_CLOCK_BASE = 0x04
    INVALID_CLOCK_STATUS = 0x08
    DAYLIGHT_SAVING_ACTIVE = 0x80


CLOCK_STATUS_OK = ClockStatus(0)

# Special values a date may hold besides wildcards (None).
MONTH_DST_END = 0xFD
MONTH_DST_BEGIN = 0xFE
DAY_SECOND_LAST = 0xFD
DAY_LAST = 0xFE
DEVIATION_NOT_SPECIFIED = -0x8000  # 0x8000 on the wire
MAX_DEVIATION_MINUTES = 840  # UTC+14 (Kiribati); the Blue Book says +-720 but such zones exist


def _check_byte(name: str, value: int, high: int = 0xFF) -> None:
    if type(value) is not int or not 0 <= value <= high:
        raise ValueError(f"{name} must be an int 0-{high}, got {value!r}")


def _check_field(name: str, value: int | None, high: int = 0xFE) -> None:
    """A date/time field: None is the wildcard (0xFF/0xFFFF), so the int itself must stay below it."""
    if value is not None:
        _check_byte(name, value, high)


def _field(value: int | None, wildcard: int = 0xFF) -> int:
    return wildcard if value is None else value


def _unfield(value: int, wildcard: int = 0xFF) -> int | None:
    return None if value == wildcard else value


def _show(value: int | None, width: int) -> str:
    return "*" * width if value is None else f"{value:0{width}d}"


def _show_clock(hour: int | None, minute: int | None, second: int | None, hundredths: int | None) -> str:
    return f"{_show(hour, 2)}:{_show(minute, 2)}:{_show(second, 2)}.{_show(hundredths, 2)}"


@dataclass(frozen=True, slots=True)
class Date(Data):
    """date (5 bytes): year, month, day of month, day of week (1 = Monday); None is a wildcard."""

    year: int | None
    month: int | None
    day: int | None
    day_of_week: int | None = None
    tag = DataType.DATE

    def __post_init__(self) -> None:
        _check_field("year", self.year, 0xFFFE)
        _check_field("month", self.month)
        _check_field("day", self.day)
        _check_field("day_of_week", self.day_of_week)

    @classmethod
    def from_bytes(cls, data: bytes) -> Date:
        """The 5-byte date inside an octet-string or after the date tag."""
        if len(data) != 5:
            raise ProtocolError(f"a COSEM date has 5 bytes, got {len(data)}")
        return cls(
            _unfield(int.from_bytes(data[0:2], "big"), 0xFFFF),
            _unfield(data[2]),
            _unfield(data[3]),
            _unfield(data[4]),
        )

    def to_bytes(self) -> bytes:
        """The 5 bytes, wildcards as 0xFF/0xFFFF."""
        return bytes(
            (
                *_field(self.year, 0xFFFF).to_bytes(2, "big"),
                _field(self.month),
                _field(self.day),
                _field(self.day_of_week),
            )
        )

    def to_date(self) -> date:
        """The calendar date; ProtocolError if a field is a wildcard or out of range."""
        if self.year is None or self.month is None or self.day is None:
            raise ProtocolError(f"date {self} has wildcards, it is not one calendar day")
        try:
            return date(self.year, self.month, self.day)
        except ValueError as error:
            raise ProtocolError(f"date {self} is not a calendar day: {error}") from None

    def _write_content(self, out: bytearray) -> None:
        out += self.to_bytes()

    def __str__(self) -> str:
        return f"{_show(self.year, 4)}-{_show(self.month, 2)}-{_show(self.day, 2)}"


@dataclass(frozen=True, slots=True)
class Time(Data):
    """time (4 bytes): hour, minute, second, hundredths; None is a wildcard."""

    hour: int | None
    minute: int | None
    second: int | None
    hundredths: int | None = None
    tag = DataType.TIME

    def __post_init__(self) -> None:
        _check_field("hour", self.hour)
        _check_field("minute", self.minute)
        _check_field("second", self.second)
        _check_field("hundredths", self.hundredths)

    @classmethod
    def from_bytes(cls, data: bytes) -> Time:
        """The 4-byte time inside an octet-string or after the time tag."""
        if len(data) != 4:
            raise ProtocolError(f"a COSEM time has 4 bytes, got {len(data)}")
        return cls(_unfield(data[0]), _unfield(data[1]), _unfield(data[2]), _unfield(data[3]))

    def to_bytes(self) -> bytes:
        """The 4 bytes, wildcards as 0xFF."""
        return bytes((_field(self.hour), _field(self.minute), _field(self.second), _field(self.hundredths)))

    def to_time(self) -> time:
        """The time of day (unspecified hundredths read as 0); ProtocolError for other wildcards."""
        if self.hour is None or self.minute is None or self.second is None:
            raise ProtocolError(f"time {self} has wildcards, it is not one time of day")
        try:
            return time(self.hour, self.minute, self.second, (self.hundredths or 0) * 10000)
        except ValueError as error:
            raise ProtocolError(f"time {self} is not a time of day: {error}") from None

    def _write_content(self, out: bytearray) -> None:
        out += self.to_bytes()

    def __str__(self) -> str:
        return _show_clock(self.hour, self.minute, self.second, self.hundredths)


@dataclass(frozen=True, slots=True)
class DateTime(Data):
    """date-time (12 bytes): a meter's local time, its deviation and the clock status.

    `deviation` follows the Blue Book sign: minutes to add to the local time to get UTC, so central
    European winter time (UTC+01:00) is -60. Gurux and dlms-cosem use the same sign. None marks a
    wildcard (0xFF, 0xFFFF, deviation 0x8000, clock status 0xFF).
    """

    year: int | None
    month: int | None
    day: int | None
    hour: int | None
    minute: int | None
    second: int | None
    hundredths: int | None = None
    day_of_week: int | None = None
    deviation: int | None = None
    clock_status: ClockStatus | None = CLOCK_STATUS_OK
    tag = DataType.DATE_TIME

    def __post_init__(self) -> None:
        _check_field("year", self.year, 0xFFFE)
        for name in ("month", "day", "hour", "minute", "second", "hundredths", "day_of_week"):
            _check_field(name, getattr(self, name))
        if self.deviation is not None and (
            type(self.deviation) is not int or not -0x7FFF <= self.deviation <= 0x7FFF
        ):
            raise ValueError(f"deviation must be an int -32767..32767 minutes, got {self.deviation!r}")
        if self.clock_status is not None:
            if not isinstance(self.clock_status, int) or not 0 <= self.clock_status <= 0xFE:
                raise ValueError(f"clock status must be 0-254 (0xFF is None), got {self.clock_status!r}")
            if not isinstance(self.clock_status, ClockStatus):
                object.__setattr__(self, "clock_status", ClockStatus(self.clock_status))

    @classmethod
    def from_bytes(cls, data: bytes) -> DateTime:
        """The 12 bytes of a date-time, as in the clock's time attribute (an octet-string) or after tag 25."""
        if len(data) != 12:
            raise ProtocolError(f"a COSEM date-time has 12 bytes, got {len(data)}")
        deviation = int.from_bytes(data[9:11], "big", signed=True)
        return cls(
            year=_unfield(int.from_bytes(data[0:2], "big"), 0xFFFF),
            month=_unfield(data[2]),
            day=_unfield(data[3]),
            day_of_week=_unfield(data[4]),
            hour=_unfield(data[5]),
            minute=_unfield(data[6]),
            second=_unfield(data[7]),
            hundredths=_unfield(data[8]),
            deviation=None if deviation == DEVIATION_NOT_SPECIFIED else deviation,
            clock_status=None if data[11] == 0xFF else ClockStatus(data[11]),
        )

    @classmethod
    def from_data(cls, value: Data) -> DateTime:
        """A date-time sent as tag 25 or, as clocks and profiles mostly do, as a 12-byte octet-string."""
        if isinstance(value, DateTime):
            return value
        if isinstance(value, OctetString):
            return cls.from_bytes(value.value)
        raise ProtocolError(f"expected a date-time, got {type(value).__name__}")

    @classmethod
    def from_datetime(cls, moment: datetime, clock_status: ClockStatus | None = None) -> DateTime:
        """The date-time a meter would show for `moment` in the zone of `moment` (it must be aware).

        Without an explicit `clock_status`, the daylight-saving bit follows `moment.dst()`.
        """
        offset = moment.utcoffset()
        if offset is None:
            raise ValueError("a COSEM date-time needs an aware datetime (one with tzinfo)")
        minutes, rest = divmod(offset, timedelta(minutes=1))
        if rest:
            raise ValueError(f"UTC offset {offset} is not a whole number of minutes")
        if clock_status is None:
            clock_status = ClockStatus(0)
            if moment.dst():
                clock_status |= ClockStatus.DAYLIGHT_SAVING_ACTIVE
        return cls(
            year=moment.year,
            month=moment.month,
            day=moment.day,
            hour=moment.hour,
            minute=moment.minute,
            second=moment.second,
            hundredths=moment.microsecond // 10000,
            day_of_week=moment.isoweekday(),
            deviation=-minutes,
            clock_status=clock_status,
        )

    def to_bytes(self) -> bytes:
        """The 12 bytes, wildcards as 0xFF/0xFFFF/0x8000."""
        deviation = DEVIATION_NOT_SPECIFIED if self.deviation is None else self.deviation
        return bytes(
            (
                *_field(self.year, 0xFFFF).to_bytes(2, "big"),
                _field(self.month),
                _field(self.day),
                _field(self.day_of_week),
                _field(self.hour),
                _field(self.minute),
                _field(self.second),
                _field(self.hundredths),
                *deviation.to_bytes(2, "big", signed=True),
                0xFF if self.clock_status is None else int(self.clock_status),
            )
        )

    @property
    def is_fully_specified(self) -> bool:
        """True when `to_utc` can place this date-time on the UTC time line (no wildcard that matters)."""
        return None not in (
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            self.deviation,
        )

    def to_naive_local(self) -> datetime:
        """The meter's local wall-clock time, for meters that send no deviation (0x8000).

        Unspecified hundredths read as 0; the day of week is not checked (meters get it wrong).
        """
        named = {"year": self.year, "month": self.month, "day": self.day}
        named |= {"hour": self.hour, "minute": self.minute, "second": self.second}
        fields = [value for value in named.values() if value is not None]
        if len(fields) != len(named):
            missing = ", ".join(name for name, value in named.items() if value is None)
            raise ProtocolError(f"date-time {self} is not fully specified: {missing} unspecified")
        hundredths = self.hundredths or 0
        try:
            if hundredths > 99:
                raise ValueError(f"hundredths {hundredths} out of range")
            return datetime(*fields, hundredths * 10000)
        except ValueError as error:
            raise ProtocolError(f"date-time {self} is not a valid time: {error}") from None

    def to_utc(self) -> datetime:
        """The same instant as an aware UTC datetime; ProtocolError unless fully specified and valid.

        The clock status is not judged here: the caller turns `invalid`/`doubtful` into quality flags.
        """
        if self.deviation is None:
            raise ProtocolError(f"date-time {self} has no deviation: local time of an unknown zone")
        if abs(self.deviation) > MAX_DEVIATION_MINUTES:
            raise ProtocolError(f"date-time {self} has an impossible deviation of {self.deviation} minutes")
        local = self.to_naive_local()
        try:
            return (local + timedelta(minutes=self.deviation)).replace(tzinfo=UTC)
        except OverflowError:
            raise ProtocolError(f"date-time {self} is out of range in UTC") from None

    def _write_content(self, out: bytearray) -> None:
        out += self.to_bytes()

    def __str__(self) -> str:
        clock = _show_clock(self.hour, self.minute, self.second, self.hundredths)
        when = f"{_show(self.year, 4)}-{_show(self.month, 2)}-{_show(self.day, 2)} {clock}"
        deviation = "dev *" if self.deviation is None else f"dev {self.deviation:+d}"
        status = "status *" if self.clock_status is None else f"status 0x{int(self.clock_status):02x}"
        return f"{when} {deviation} {status}"


# ---------------------------------------------------------------------------------------------------------
# Compact arrays


_FIXED_SIZE = {
    DataType.NULL_DATA: 0,
    DataType.DONT_CARE: 0,
    DataType.BOOLEAN: 1,
    DataType.DOUBLE_LONG: 4,
    DataType.DOUBLE_LONG_UNSIGNED: 4,
    DataType.BCD: 1,
    DataType.INTEGER: 1,
    DataType.LONG: 2,
    DataType.UNSIGNED: 1,
    DataType.LONG_UNSIGNED: 2,
    DataType.LONG64: 8,
    DataType.LONG64_UNSIGNED: 8,
    DataType.ENUM: 1,
    DataType.FLOAT32: 4,
    DataType.FLOAT64: 8,
    DataType.DATE_TIME: 12,
    DataType.DATE: 5,
    DataType.TIME: 4,
}
_VARIABLE_SIZE = {DataType.BIT_STRING, DataType.OCTET_STRING, DataType.VISIBLE_STRING, DataType.UTF8_STRING}


@dataclass(frozen=True, slots=True)
class TypeDescription:
    """The contents-description of a compact array: the type of each element, without values.

    An array description has one element description and a fixed `count`; a structure description has
    one element description per member.
    """

    data_type: DataType
    elements: tuple[TypeDescription, ...] = ()
    count: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.elements, tuple):
            object.__setattr__(self, "elements", tuple(self.elements))
        if self.data_type == DataType.ARRAY:
            if len(self.elements) != 1 or not 0 <= self.count <= 0xFFFF:
                raise ValueError("an array description has one element type and a count 0-65535")
        elif self.data_type == DataType.STRUCTURE:
            if self.count:
                raise ValueError("a structure description has no count")
        elif self.data_type == DataType.COMPACT_ARRAY:
            raise ValueError("a compact array cannot describe a compact array")
        elif self.elements or self.count:
            raise ValueError(f"{self.data_type.name} has no element types")

    @classmethod
    def of(cls, value: Data) -> TypeDescription:
        """The description that `value` fits (arrays take their count from `value`)."""
        if isinstance(value, Array):
            if not value.items:
                raise ValueError("an empty array has no element type to describe")
            return cls(DataType.ARRAY, (cls.of(value.items[0]),), len(value.items))
        if isinstance(value, Structure):
            return cls(DataType.STRUCTURE, tuple(cls.of(item) for item in value.items))
        return cls(value.tag)

    def _write(self, out: bytearray) -> None:
        out.append(self.data_type)
        if self.data_type == DataType.ARRAY:
            out += self.count.to_bytes(2, "big")
            self.elements[0]._write(out)
        elif self.data_type == DataType.STRUCTURE:
            out += encode_length(len(self.elements))
            for element in self.elements:
                element._write(out)

    def _min_size_and_values(self) -> tuple[int, int]:
        """The fewest bytes one element occupies, and how many Data values it yields."""
        if self.data_type == DataType.ARRAY:
            size, values = self.elements[0]._min_size_and_values()
            return size * self.count, 1 + values * self.count
        if self.data_type == DataType.STRUCTURE:
            total_size, total_values = 0, 1
            for element in self.elements:
                size, values = element._min_size_and_values()
                total_size, total_values = total_size + size, total_values + values
            return total_size, total_values
        return _FIXED_SIZE.get(self.data_type, 1), 1


@dataclass(frozen=True, slots=True)
class CompactArray(Data):
    """compact-array: an array whose element type is sent once and whose values are sent without tags.

    Meters use it for large profiles; the items are ordinary Data values of the described type.
    """

    description: TypeDescription
    items: tuple[Data, ...] = ()
    tag = DataType.COMPACT_ARRAY

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", _data_tuple(type(self).__name__, self.items))

    def _write(self, out: bytearray, depth: int) -> None:
        _check_depth(depth)
        out.append(self.tag)
        self.description._write(out)
        contents = bytearray()
        for item in self.items:
            _write_untagged(contents, self.description, item, depth + 1)
        if self.items and not contents:
            raise ValueError("compact array elements of zero size cannot be counted by the receiver")
        out += encode_length(len(contents))
        out += contents


def _write_untagged(out: bytearray, description: TypeDescription, value: Data, depth: int) -> None:
    _check_depth(depth)
    if value.tag != description.data_type:
        raise ValueError(
            f"compact array item {value!r} is not of the described type {description.data_type.name}"
        )
    if isinstance(value, Array):
        if len(value.items) != description.count:
            raise ValueError(
                f"compact array: array of {len(value.items)} items, described as {description.count}"
            )
        for item in value.items:
            _write_untagged(out, description.elements[0], item, depth + 1)
    elif isinstance(value, Structure):
        if len(value.items) != len(description.elements):
            raise ValueError(
                f"compact array: structure of {len(value.items)} items, "
                f"described with {len(description.elements)}"
            )
        for item, element in zip(value.items, description.elements, strict=True):
            _write_untagged(out, element, item, depth + 1)
    else:
        value._write_content(out)


def _check_depth(depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise ValueError(f"data nested deeper than {MAX_DEPTH} levels")


# ---------------------------------------------------------------------------------------------------------
# Decoding


def _decode(reader: ByteReader, depth: int) -> Data:
    tag = reader.u8("data type tag")
    decoder = _DECODERS.get(tag)
    if decoder is None:
        raise ProtocolError(f"A-XDR: unknown or unsupported data type tag {tag}")
    return decoder(reader, depth)


def _enter(depth: int) -> int:
    if depth >= MAX_DEPTH:
        raise ProtocolError(f"A-XDR: data nested deeper than {MAX_DEPTH} levels")
    return depth + 1


def _decode_items(reader: ByteReader, depth: int, what: str) -> tuple[Data, ...]:
    inner = _enter(depth)
    count = reader.length(f"{what} count")
    if count > reader.remaining():  # every item has at least its tag byte
        raise ProtocolError(f"A-XDR: {what} of {count} items in {reader.remaining()} bytes")
    return tuple([_decode(reader, inner) for _ in range(count)])


def _decode_array(reader: ByteReader, depth: int) -> Data:
    return Array(_decode_items(reader, depth, "array"))


def _decode_structure(reader: ByteReader, depth: int) -> Data:
    return Structure(_decode_items(reader, depth, "structure"))


def _decode_boolean(reader: ByteReader, depth: int) -> Data:
    return Boolean(reader.u8("boolean") != 0)


def _decode_bit_string(reader: ByteReader, depth: int) -> Data:
    bit_count = reader.length("bit-string length")
    return BitString(reader.take((bit_count + 7) // 8, "bit-string"), bit_count)


def _number_decoder(cls: type[_Number]) -> Callable[[ByteReader, int], Data]:
    unpack, size = cls._format.unpack, cls._format.size
    name = cls.tag.name.lower().replace("_", "-")

    def decode_number(reader: ByteReader, depth: int) -> Data:
        return cls(unpack(reader.take(size, name))[0])

    return decode_number


def _decode_enum(reader: ByteReader, depth: int) -> Data:
    return EnumValue(reader.u8("enum"))


def _decode_bcd(reader: ByteReader, depth: int) -> Data:
    return Bcd(reader.u8("bcd"))


def _decode_float32(reader: ByteReader, depth: int) -> Data:
    return Float32(0.0, reader.take(4, "float32"))


def _decode_float64(reader: ByteReader, depth: int) -> Data:
    return Float64(0.0, reader.take(8, "float64"))


def _decode_octet_string(reader: ByteReader, depth: int) -> Data:
    return OctetString(reader.take(reader.length("octet-string length"), "octet-string"))


def _decode_visible_string(reader: ByteReader, depth: int) -> Data:
    return VisibleString(
        reader.take(reader.length("visible-string length"), "visible-string").decode("latin-1")
    )


def _decode_utf8_string(reader: ByteReader, depth: int) -> Data:
    raw = reader.take(reader.length("utf8-string length"), "utf8-string")
    try:
        return Utf8String(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ProtocolError(f"A-XDR: utf8-string is not valid UTF-8: {error.reason}") from None


def _decode_date_time(reader: ByteReader, depth: int) -> Data:
    return DateTime.from_bytes(reader.take(12, "date-time"))


def _decode_date(reader: ByteReader, depth: int) -> Data:
    return Date.from_bytes(reader.take(5, "date"))


def _decode_time(reader: ByteReader, depth: int) -> Data:
    return Time.from_bytes(reader.take(4, "time"))


def _decode_null(reader: ByteReader, depth: int) -> Data:
    return NullData()


def _decode_dont_care(reader: ByteReader, depth: int) -> Data:
    return DontCare()


def _decode_description(reader: ByteReader, depth: int) -> TypeDescription:
    inner = _enter(depth)
    tag = reader.u8("type description")
    if tag == DataType.ARRAY:
        count = reader.uint(2, "array description count")
        return TypeDescription(DataType.ARRAY, (_decode_description(reader, inner),), count)
    if tag == DataType.STRUCTURE:
        count = reader.length("structure description count")
        if count > reader.remaining():
            raise ProtocolError(
                f"A-XDR: structure description of {count} members in {reader.remaining()} bytes"
            )
        return TypeDescription(
            DataType.STRUCTURE, tuple([_decode_description(reader, inner) for _ in range(count)])
        )
    if tag in _FIXED_SIZE or tag in _VARIABLE_SIZE:
        return TypeDescription(DataType(tag))
    raise ProtocolError(f"A-XDR: type {tag} cannot appear in a compact-array description")


def _decode_untagged(reader: ByteReader, description: TypeDescription, depth: int) -> Data:
    inner = _enter(depth)
    data_type = description.data_type
    if data_type == DataType.ARRAY:
        element = description.elements[0]
        return Array(tuple([_decode_untagged(reader, element, inner) for _ in range(description.count)]))
    if data_type == DataType.STRUCTURE:
        return Structure(
            tuple([_decode_untagged(reader, element, inner) for element in description.elements])
        )
    return _DECODERS[data_type](reader, inner)


def _decode_compact_array(reader: ByteReader, depth: int) -> Data:
    inner = _enter(depth)
    description = _decode_description(reader, inner)
    contents = reader.sized(reader.length("compact-array contents length"), "compact-array contents")
    min_size, values_per_element = description._min_size_and_values()
    if min_size == 0 and not contents.at_end():
        raise ProtocolError("A-XDR: compact-array elements of zero size cannot fill its contents")
    if values_per_element > _COMPACT_EXPANSION * max(min_size, 1):
        raise ProtocolError("A-XDR: compact-array description expands beyond what its bytes can carry")
    items = []
    while not contents.at_end():
        items.append(_decode_untagged(contents, description, inner))
    return CompactArray(description, tuple(items))


_DECODERS: dict[int, Callable[[ByteReader, int], Data]] = {
    DataType.NULL_DATA: _decode_null,
    DataType.ARRAY: _decode_array,
    DataType.STRUCTURE: _decode_structure,
    DataType.BOOLEAN: _decode_boolean,
    DataType.BIT_STRING: _decode_bit_string,
    DataType.DOUBLE_LONG: _number_decoder(DoubleLong),
    DataType.DOUBLE_LONG_UNSIGNED: _number_decoder(DoubleLongUnsigned),
    DataType.OCTET_STRING: _decode_octet_string,
    DataType.VISIBLE_STRING: _decode_visible_string,
    DataType.UTF8_STRING: _decode_utf8_string,
    DataType.BCD: _decode_bcd,
    DataType.INTEGER: _number_decoder(Integer),
    DataType.LONG: _number_decoder(Long),
    DataType.UNSIGNED: _number_decoder(Unsigned),
    DataType.LONG_UNSIGNED: _number_decoder(LongUnsigned),
    DataType.COMPACT_ARRAY: _decode_compact_array,
    DataType.LONG64: _number_decoder(Long64),
    DataType.LONG64_UNSIGNED: _number_decoder(Long64Unsigned),
    DataType.ENUM: _decode_enum,
    DataType.FLOAT32: _decode_float32,
    DataType.FLOAT64: _decode_float64,
    DataType.DATE_TIME: _decode_date_time,
    DataType.DATE: _decode_date,
    DataType.TIME: _decode_time,
    DataType.DONT_CARE: _decode_dont_care,
}


# ---------------------------------------------------------------------------------------------------------
# Entry points


def encode(value: Data) -> bytes:
    """The A-XDR bytes of one tagged COSEM value (as it goes into a SET or ACTION parameter)."""
    if not isinstance(value, Data):
        raise ValueError(f"not a COSEM Data value: {value!r}")
    out = bytearray()
    value._write(out, 0)
    return bytes(out)


def decode(data: bytes) -> Data:
    """The one COSEM value that `data` holds entirely (trailing bytes are a ProtocolError)."""
    reader = ByteReader(bytes(data))
    value = _decode(reader, 0)
    reader.expect_end("A-XDR data")
    return value


def decode_prefix(data: bytes, offset: int = 0) -> tuple[Data, int]:
    """The COSEM value that starts at `offset`, and the offset just after it (for values inside PDUs)."""
    reader = ByteReader(bytes(data), offset)
    value = _decode(reader, 0)
    return value, reader.pos
