"""Modbus RTU framing, sans-I/O: bytes in, registers or typed errors out.

Our own codec rather than pymodbus's client: the bus worker owns the serial port (DLMS and Modbus
meters share one bus), and a CRC error must be told apart from a short read for the statistics.
pymodbus stays the independent test peer (its simulator is the meter in the tests).
"""

from __future__ import annotations

import struct
from enum import IntEnum

from appliance.errors import CrcError, DeviceError, ProtocolError

MAX_REGISTERS = 125  # per read request (Modbus application protocol, 6.3)


class Function(IntEnum):
    """The function codes a meter reader uses."""

    READ_HOLDING_REGISTERS = 3
    READ_INPUT_REGISTERS = 4


EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS (reflected 0x8005, initial 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def _with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "little")


def read_request(unit: int, function: Function, start: int, count: int) -> bytes:
    """The frame that asks `unit` for `count` registers from protocol address `start` (0-based)."""
    if not 1 <= unit <= 247:
        raise ValueError(f"Modbus unit id must be 1-247, got {unit}")
    if not 1 <= count <= MAX_REGISTERS or not 0 <= start <= 0xFFFF - count + 1:
        raise ValueError(f"cannot read {count} registers from address {start}")
    return _with_crc(struct.pack(">BBHH", unit, function, start, count))


def response_bytes_needed(frame: bytes) -> int:
    """How many more bytes complete the response that begins with `frame` (0: it is complete).

    Read responses carry their length in byte 3; exception responses are always 5 bytes.
    """
    if len(frame) < 3:
        return 3 - len(frame)
    total = 5 if frame[1] & 0x80 else 5 + frame[2]
    return max(0, total - len(frame))


def parse_read_response(frame: bytes, unit: int, function: Function, count: int) -> list[int]:
    """The registers in a complete response to `read_request(unit, function, _, count)`.

    Raises CrcError for a damaged frame, DeviceError for a Modbus exception response and
    ProtocolError for a frame that answers some other question.
    """
    if len(frame) < 5:
        raise ProtocolError(f"Modbus frame of {len(frame)} bytes is too short")
    body, received_crc = frame[:-2], int.from_bytes(frame[-2:], "little")
    if crc16(body) != received_crc:
        raise CrcError(f"Modbus CRC mismatch from unit {frame[0]}")
    if frame[0] != unit:
        raise ProtocolError(f"answer from unit {frame[0]}, expected unit {unit}")
    if frame[1] == function | 0x80:
        code = frame[2]
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        raise DeviceError(f"unit {unit} refused function {function}: exception {code} ({name})")
    if frame[1] != function:
        raise ProtocolError(f"answer with function {frame[1]}, expected {int(function)}")
    if frame[2] != 2 * count or len(body) != 3 + 2 * count:
        raise ProtocolError(f"answer with {frame[2]} data bytes, expected {2 * count}")
    return list(struct.unpack(f">{count}H", body[3:]))
