"""The meter models this appliance knows, by name (the `model` key of a [[meters]] entry)."""

from __future__ import annotations

from appliance.collect.meters.dlms import DlmsModel, DlmsProfile, DlmsRegister
from appliance.collect.meters.modbus import Encoding, ModbusChannel, ModbusModel
from appliance.collect.modbus import Function
from appliance.model import ReadingType

# ReadingType codes from CIM-NOTES section 4 (Connexo's verbatim codes).
REGISTER_A_PLUS_KWH = ReadingType("0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0")
REGISTER_A_MINUS_KWH = ReadingType("0.0.0.1.19.1.12.0.0.0.0.0.0.0.0.3.72.0")
VOLTAGE_L1_V = ReadingType("0.0.0.6.0.1.54.0.0.0.0.0.0.0.128.0.29.0")
# 15-minute register snapshots (bulk quantity), as a load profile of cumulative energy captures them.
PROFILE_A_PLUS_KWH = ReadingType("0.0.2.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0")
PROFILE_A_MINUS_KWH = ReadingType("0.0.2.1.19.1.12.0.0.0.0.0.0.0.0.3.72.0")

_INPUT = Function.READ_INPUT_REGISTERS
_HOLDING = Function.READ_HOLDING_REGISTERS

MODELS = {
    model.name: model
    for model in (
        ModbusModel(
            name="sdm630",
            description="Eastron SDM630 three-phase meter: float32 input registers (kWh, V)",
            channels=(
                ModbusChannel(VOLTAGE_L1_V, _INPUT, 0x0000, Encoding.F32),
                ModbusChannel(REGISTER_A_PLUS_KWH, _INPUT, 0x0048, Encoding.F32),
                ModbusChannel(REGISTER_A_MINUS_KWH, _INPUT, 0x004A, Encoding.F32),
            ),
        ),
        ModbusModel(
            name="generic-wh32",
            description="Meter with uint32 Wh counters in holding registers 0 (A+) and 2 (A-)",
            channels=(
                ModbusChannel(REGISTER_A_PLUS_KWH, _HOLDING, 0, Encoding.U32, exponent=-3),
                ModbusChannel(REGISTER_A_MINUS_KWH, _HOLDING, 2, Encoding.U32, exponent=-3),
            ),
        ),
        DlmsModel(
            name="dlms-generic",
            description="DLMS/COSEM meter: A+ and A- registers and the 15-minute load profile 1.0.99.1.0.255",
            registers=(
                DlmsRegister("1.0.1.8.0.255", REGISTER_A_PLUS_KWH),
                DlmsRegister("1.0.2.8.0.255", REGISTER_A_MINUS_KWH),
            ),
            profile=DlmsProfile(
                "1.0.99.1.0.255",
                {"1.0.1.8.0.255": PROFILE_A_PLUS_KWH, "1.0.2.8.0.255": PROFILE_A_MINUS_KWH},
            ),
        ),
    )
}
