"""What a push (data-notification) from a device on the WAN says, sans-I/O: who is calling and, from
a DCU, what the meters behind it read.

The body follows the IDIS push setup: the push setup's own logical name first, the logical device
name (0.0.42.0.0.255, attribute 2) second; that is how a device that calls the HES introduces
itself. A DCU adds a third element with one entry per meter behind it; each value comes as a COSEM
extended register (class 4) would give it: logical name, value, scaler_unit, capture time.

    structure {
      octet-string[6]   push setup logical name (0.0.25.9.0.255)
      octet-string      the sender's logical device name (1-16 bytes)
      array {                                        -- a DCU only: one entry per meter behind it
        structure {
          octet-string  the meter's logical device name
          array { structure { octet-string[6] OBIS, integer value, structure { integer scaler,
                              enum unit }, octet-string[12] capture time } }
        }
      }
    }
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from appliance.collect.dlms import axdr
from appliance.collect.dlms.apdu import DataNotification
from appliance.collect.dlms.obis import Obis
from appliance.errors import ProtocolError

MAX_NAME_LENGTH = 16  # Blue Book: a logical device name is an octet-string of at most 16 bytes
_PRINTABLE = re.compile(rb"^[\x21-\x7e]+$")
_ID_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class PushedValue:
    """One register value of a meter behind a DCU, as captured by the meter."""

    obis: str
    raw: int
    scaler: int
    unit: int
    captured: datetime  # aware, UTC


@dataclass(frozen=True)
class MeterReport:
    """What a DCU forwards for one meter behind it."""

    logical_name: str
    values: tuple[PushedValue, ...]


@dataclass(frozen=True)
class Push:
    """Who sent a push, and (from a DCU) its meters' values; `meters` is None for a lone meter."""

    logical_name: str
    meters: tuple[MeterReport, ...] | None = None

    @property
    def from_dcu(self) -> bool:
        """Whether the sender forwards for meters behind it."""
        return self.meters is not None


LOGICAL_DEVICE_NAME = "0.0.42.0.0.255"  # COSEM logical device name: class 1, attribute 2


def logical_device_name(value: axdr.Data) -> str:
    """The name as text: printable ASCII as it is (IDIS: 3-letter flag ID and serial), else hex."""
    if not isinstance(value, axdr.OctetString) or not 1 <= len(value.value) <= MAX_NAME_LENGTH:
        raise ProtocolError(
            f"a logical device name is an octet-string of 1-{MAX_NAME_LENGTH} bytes: {value!r}"
        )
    raw = value.value
    return raw.decode("ascii") if _PRINTABLE.match(raw) else raw.hex()


def device_id(logical_name: str) -> str:
    """The mRID a newly registered device gets: its logical device name where that is a valid id."""
    return logical_name if _ID_SAFE.match(logical_name) else logical_name.encode().hex()[:64]


def parse_push(notification: DataNotification) -> Push:
    """Who sent `notification` and what it forwards; ProtocolError for anything else."""
    body = notification.body
    if not isinstance(body, axdr.Structure) or len(body.items) < 2:
        raise ProtocolError("a push body is a structure of (push setup, logical device name, ...)")
    setup, name, *rest = body.items
    if not isinstance(setup, axdr.OctetString) or len(setup.value) != 6:
        raise ProtocolError(f"a push begins with its push setup's logical name, not {setup!r}")
    sender = logical_device_name(name)
    if not rest or not isinstance(rest[0], axdr.Array):
        return Push(sender)
    return Push(sender, tuple(_meter_report(entry) for entry in rest[0].items))


def _meter_report(entry: axdr.Data) -> MeterReport:
    if not isinstance(entry, axdr.Structure) or len(entry.items) != 2:
        raise ProtocolError(f"a DCU's meter entry is (logical device name, values): {entry!r}")
    name, values = entry.items
    if not isinstance(values, axdr.Array):
        raise ProtocolError(f"a DCU's meter values are an array: {values!r}")
    return MeterReport(logical_device_name(name), tuple(_value(item) for item in values.items))


def _value(item: axdr.Data) -> PushedValue:
    if not isinstance(item, axdr.Structure) or len(item.items) != 4:
        raise ProtocolError(f"a pushed value is (OBIS, value, scaler_unit, capture time): {item!r}")
    obis, value, scaler_unit, captured = item.items
    if not isinstance(obis, axdr.OctetString) or len(obis.value) != 6:
        raise ProtocolError(f"a pushed value's logical name is 6 bytes: {obis!r}")
    if not isinstance(scaler_unit, axdr.Structure) or len(scaler_unit.items) != 2:
        raise ProtocolError(f"scaler_unit is (scaler, unit): {scaler_unit!r}")
    scaler, unit = (_integer(part) for part in scaler_unit.items)
    return PushedValue(
        str(Obis.from_bytes(obis.value)),
        _integer(value),
        scaler,
        unit,
        axdr.DateTime.from_data(captured).to_utc(),
    )


def _integer(value: axdr.Data) -> int:
    number = getattr(value, "value", None)
    if not isinstance(number, int) or isinstance(number, bool):
        raise ProtocolError(f"expected an integer, got {value!r}")
    return number
