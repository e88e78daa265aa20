"""What a DLMS/COSEM meter model is: registers and load-profile columns by OBIS code, and the CIM
ReadingType each becomes. Scaler and unit come from the meter itself (attribute 3 of each register)
and are converted exactly into the ReadingType's unit and multiplier."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from appliance.errors import DeviceError
from appliance.model import Protocol, ReadingType

# DLMS unit enumeration (IEC 62056-6-2) -> CIM UnitSymbol code (CIM-NOTES section 4).
DLMS_TO_CIM_UNIT = {27: 38, 28: 61, 29: 63, 30: 72, 31: 71, 32: 73, 33: 5, 35: 29, 44: 33}

# The standard event log's codes (DLMS UA / IDIS numbering) as IEC 61968-9 EndDeviceEventTypes
# (CIM-NOTES section 5). Agree them with the MDM; a model may bring its own.
STANDARD_EVENTS = {
    1: "3.26.0.85",  # power down: power outage
    2: "3.26.0.216",  # power up: power restored
    4: "0.36.116.14",  # clock adjusted, old time: clock set (before)
    5: "0.36.116.24",  # clock adjusted, new time: clock set (after)
    44: "0.12.141.212",  # meter cover opened
    45: "0.12.141.16",  # meter cover closed
}
UNKNOWN_EVENT = "3.0.0.0"  # an event code the model does not know: kept, with the code in its details

CLOCK = "0.0.1.0.0.255"
EVENT_LOG = "0.0.99.98.0.255"
DISCONNECT_CONTROL = "0.0.96.3.10.255"


def scaled_value(raw: int, scaler: int, dlms_unit: int, reading_type: ReadingType) -> Decimal:
    """raw x 10**scaler in the meter's unit, in the unit and multiplier of `reading_type`, exactly.

    A meter whose unit does not match the model's ReadingType is refused, never silently rescaled.
    """
    parts = reading_type.code.split(".")
    multiplier, unit = int(parts[15]), int(parts[16])
    if DLMS_TO_CIM_UNIT.get(dlms_unit) != unit:
        raise DeviceError(f"meter reports DLMS unit {dlms_unit} where the model expects CIM unit {unit}")
    return Decimal(raw).scaleb(scaler - multiplier)


@dataclass(frozen=True)
class DlmsRegister:
    """A class 3 register read for its value (attribute 2) with its scaler and unit (attribute 3).

    `rollover`: where the register wraps to 0, in the ReadingType's unit, if the model knows it (the
    raw width alone does not say it: the scaler comes from the meter). A profile column capturing
    this register wraps at the same value.
    """

    obis: str
    reading_type: ReadingType
    rollover: Decimal | None = None


@dataclass(frozen=True)
class DlmsProfile:
    """A profile generic (class 7) whose captured registers become interval data."""

    obis: str
    columns: dict[str, ReadingType]  # OBIS of a captured register -> its ReadingType
    period_s: int = 900


@dataclass(frozen=True)
class DlmsModel:
    """A DLMS meter type."""

    name: str
    description: str
    registers: tuple[DlmsRegister, ...]
    profile: DlmsProfile | None = None
    clock: str = CLOCK
    event_log: str = EVENT_LOG
    event_types: dict[int, str] = field(default_factory=lambda: dict(STANDARD_EVENTS))
    disconnect_control: str = DISCONNECT_CONTROL
    protocol: Protocol = field(default=Protocol.DLMS)
