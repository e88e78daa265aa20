"""Domain types shared by collection, store and uplink.

Values are `Decimal`, never float: meter registers are exact counts and tariffs need exact sums.
Timestamps are aware UTC datetimes at the edges and integer UTC seconds in the store.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache


class Protocol(StrEnum):
    """How a meter is spoken to on its bus."""

    MODBUS = "modbus"
    DLMS = "dlms"


@dataclass(frozen=True)
class ReadingType:
    """An IEC 61968-9 ReadingType: 18 dotted integers (CIM-NOTES section 4)."""

    code: str

    def __post_init__(self) -> None:
        parts = self.code.split(".")
        if len(parts) != 18 or not all(p.lstrip("-").isdigit() for p in parts):
            raise ValueError(f"ReadingType code needs 18 dotted integers, got {self.code!r}")

    @property
    def is_interval(self) -> bool:
        """Regular data (a macro or measuring period) goes into IntervalBlocks; the rest are Readings."""
        macro_period, _aggregate, measuring_period = self.code.split(".")[:3]
        return macro_period != "0" or measuring_period != "0"


@lru_cache(maxsize=1024)
def reading_type(code: str) -> ReadingType:
    """The ReadingType for `code`, validated once: a store holds a few codes, read millions of times."""
    return ReadingType(code)


_UNITS = {
    "5": "A",
    "29": "V",
    "33": "Hz",
    "38": "W",
    "61": "VA",
    "63": "var",
    "65": "",
    "71": "VAh",
    "72": "Wh",
    "73": "varh",
    "42": "m3",
}
_PREFIXES = {"0": "", "3": "k", "6": "M", "-3": "m"}


def unit_symbol(reading_type: ReadingType) -> str:
    """A human unit for a ReadingType ("kWh", "V"), from its multiplier and unit fields."""
    parts = reading_type.code.split(".")
    return _PREFIXES.get(parts[15], f"e{parts[15]} ") + _UNITS.get(parts[16], f"unit {parts[16]}")


@dataclass(frozen=True)
class Reading:
    """One value of one meter at one instant, as stored and as sent."""

    meter_id: str
    reading_type: ReadingType
    timestamp: datetime
    value: Decimal
    qualities: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.timestamp.tzinfo is None:
            raise ValueError("Reading timestamps must be timezone-aware")


def by_series(readings: Iterable[Reading]) -> dict[str, dict[ReadingType, list[Reading]]]:
    """Readings per meter and ReadingType, each level sorted (meter id, code, time).

    The one order every encoding of a batch uses, so XML and compact forms agree exactly.
    """
    grouped: dict[str, dict[ReadingType, list[Reading]]] = {}
    for reading in sorted(readings, key=lambda r: (r.meter_id, r.reading_type.code, r.timestamp)):
        grouped.setdefault(reading.meter_id, {}).setdefault(reading.reading_type, []).append(reading)
    return grouped


@dataclass(frozen=True)
class Event:
    """Something that happened at a meter or in the HES itself, as an IEC 61968-9 EndDeviceEvent."""

    device_id: str  # the meter's mRID, or the HES id for the appliance's own alarms
    event_type: str  # EndDeviceEventType code type.domain.subDomain.eventOrAction
    created: datetime
    reason: str = ""
    severity: str = ""
    details: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.created.tzinfo is None:
            raise ValueError("Event times must be timezone-aware")
        if len(self.event_type.split(".")) != 4:
            raise ValueError(f"EndDeviceEventType needs 4 dotted parts, got {self.event_type!r}")


def utc_from_epoch(seconds: int) -> datetime:
    """The aware UTC datetime for integer epoch seconds (the store's time format)."""
    return datetime.fromtimestamp(seconds, tz=UTC)


def epoch(moment: datetime) -> int:
    """Integer epoch seconds of an aware datetime."""
    return int(moment.timestamp())
