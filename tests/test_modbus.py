"""Our Modbus RTU codec against known answers and against pymodbus, the independent implementation."""

from __future__ import annotations

import contextlib
import struct
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadInputRegistersRequest

from appliance.collect import modbus
from appliance.collect.meters import get_model
from appliance.collect.meters.catalog import REGISTER_A_MINUS_KWH, REGISTER_A_PLUS_KWH, VOLTAGE_L1_V
from appliance.collect.meters.modbus import ReadBlock
from appliance.errors import CrcError, DeviceError, HesError, ProtocolError

HOLDING = modbus.Function.READ_HOLDING_REGISTERS
INPUT = modbus.Function.READ_INPUT_REGISTERS


def test_known_answer_request() -> None:
    # The classic example: read 10 holding registers from unit 1 at address 0.
    assert modbus.read_request(1, HOLDING, 0, 10) == bytes.fromhex("01030000000AC5CD")


@given(
    unit=st.integers(1, 247), start=st.integers(0, 0xFF00), count=st.integers(1, 125), holding=st.booleans()
)
def test_requests_match_pymodbus(unit: int, start: int, count: int, holding: bool) -> None:
    request_class = ReadHoldingRegistersRequest if holding else ReadInputRegistersRequest
    theirs = FramerRTU(DecodePDU(is_server=False)).buildFrame(
        request_class(address=start, count=count, dev_id=unit)
    )
    assert modbus.read_request(unit, HOLDING if holding else INPUT, start, count) == theirs


@given(st.binary(max_size=256))
def test_crc_matches_pymodbus(data: bytes) -> None:
    assert modbus.crc16(data).to_bytes(2, "little") == FramerRTU.compute_CRC(data).to_bytes(2, "big")


def response(unit: int, function: int, registers: list[int]) -> bytes:
    body = struct.pack(f">BBB{len(registers)}H", unit, function, 2 * len(registers), *registers)
    return body + modbus.crc16(body).to_bytes(2, "little")


def test_parse_a_good_answer_and_know_when_it_is_complete() -> None:
    frame = response(7, 3, [1, 0xFFFF])
    assert [modbus.response_bytes_needed(frame[:n]) for n in (0, 2, 3, 8, 9)] == [3, 1, 6, 1, 0]
    assert modbus.parse_read_response(frame, 7, HOLDING, 2) == [1, 0xFFFF]


def test_exception_answer_is_a_device_error_with_its_name() -> None:
    body = bytes([7, 0x83, 2])
    frame = body + modbus.crc16(body).to_bytes(2, "little")
    assert modbus.response_bytes_needed(frame[:3]) == 2
    with pytest.raises(DeviceError, match="illegal data address"):
        modbus.parse_read_response(frame, 7, HOLDING, 2)


@pytest.mark.parametrize(
    ("frame", "error", "match"),
    [
        (response(7, 3, [1, 2])[:-1] + b"\x00", CrcError, "CRC"),
        (response(8, 3, [1, 2]), ProtocolError, "unit 8"),
        (response(7, 4, [1, 2]), ProtocolError, "function 4"),
        (response(7, 3, [1]), ProtocolError, "2 data bytes"),
        (b"\x07\x03", ProtocolError, "too short"),
    ],
)
def test_wrong_answers_are_typed_errors(frame: bytes, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        modbus.parse_read_response(frame, 7, HOLDING, 2)


@given(st.binary(max_size=300), st.integers(1, 125))
def test_garbage_only_ever_raises_our_errors(frame: bytes, count: int) -> None:
    modbus.response_bytes_needed(frame)
    with contextlib.suppress(HesError):
        modbus.parse_read_response(frame, 1, HOLDING, count)


def test_read_plan_bridges_small_gaps_only() -> None:
    assert get_model("sdm630").read_plan() == [ReadBlock(INPUT, 0x00, 2), ReadBlock(INPUT, 0x48, 4)]
    assert get_model("generic-wh32").read_plan() == [ReadBlock(HOLDING, 0, 4)]


def test_model_decodes_what_pymodbus_encodes() -> None:
    convert = ModbusClientMixin.convert_to_registers
    sdm = get_model("sdm630")
    volts = sdm.decode(ReadBlock(INPUT, 0, 2), convert(231.25, ModbusClientMixin.DATATYPE.FLOAT32))
    energy = sdm.decode(
        ReadBlock(INPUT, 0x48, 4), convert([12345.67, 8.5], ModbusClientMixin.DATATYPE.FLOAT32)
    )
    assert volts == {VOLTAGE_L1_V: Decimal("231.25")}
    assert energy == {REGISTER_A_PLUS_KWH: Decimal("12345.67"), REGISTER_A_MINUS_KWH: Decimal("8.5")}
    wh = get_model("generic-wh32").decode(
        ReadBlock(HOLDING, 0, 4), convert([4_000_000_123, 7], ModbusClientMixin.DATATYPE.UINT32)
    )
    assert wh == {REGISTER_A_PLUS_KWH: Decimal("4000000.123"), REGISTER_A_MINUS_KWH: Decimal("0.007")}
