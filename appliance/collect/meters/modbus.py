"""What a Modbus meter model is: channels (register → ReadingType) and how to read them cheaply."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from appliance.collect.modbus import MAX_REGISTERS, Function
from appliance.model import Protocol, ReadingType


class Encoding(StrEnum):
    """How a value sits in consecutive 16-bit registers (high word first)."""

    U16 = "u16"
    U32 = "u32"
    U64 = "u64"
    F32 = "f32"

    @property
    def registers(self) -> int:
        """How many registers one value takes."""
        return {"u16": 1, "u32": 2, "u64": 4, "f32": 2}[self.value]


@dataclass(frozen=True)
class ModbusChannel:
    """One quantity of a meter: where it sits and what CIM calls it.

    value = raw x 10**exponent, in the unit and multiplier of `reading_type`.
    """

    reading_type: ReadingType
    function: Function
    address: int
    encoding: Encoding
    exponent: int = 0
    # Where a cumulative counter wraps to 0, in the ReadingType's unit, when that is not the
    # register width (a meter whose display has 8 digits wraps at 10**8 units).
    rollover: Decimal | None = None

    @property
    def wraps_at(self) -> Decimal | None:
        """The value at which this channel wraps: `rollover`, else the width of an integer encoding."""
        if self.rollover is not None or self.encoding is Encoding.F32:
            return self.rollover
        return Decimal(2 ** (16 * self.encoding.registers)).scaleb(self.exponent)

    def decode(self, registers: list[int]) -> Decimal:
        """The channel's value from exactly `encoding.registers` registers."""
        raw = b"".join(r.to_bytes(2, "big") for r in registers)
        if self.encoding is Encoding.F32:
            # float32 has 7 significant digits: say no more than that.
            number = Decimal(format(struct.unpack(">f", raw)[0], ".7g"))
        else:
            number = Decimal(int.from_bytes(raw, "big"))
        return number.scaleb(self.exponent)


@dataclass(frozen=True)
class ReadBlock:
    """One read request: a run of registers covering one or more channels."""

    function: Function
    start: int
    count: int


@dataclass(frozen=True)
class ModbusModel:
    """A Modbus meter type."""

    name: str
    description: str
    channels: tuple[ModbusChannel, ...]
    protocol: Protocol = Protocol.MODBUS
    max_gap: int = 8  # unused registers worth reading to save a request turnaround

    def read_plan(self) -> list[ReadBlock]:
        """Fewest requests that cover every channel, bridging gaps of up to `max_gap` registers."""
        blocks: list[ReadBlock] = []
        spans = sorted((c.function, c.address, c.address + c.encoding.registers) for c in self.channels)
        for function, start, end in spans:
            last = blocks[-1] if blocks else None
            if (
                last
                and last.function == function
                and start - (last.start + last.count) <= self.max_gap
                and end - last.start <= MAX_REGISTERS
            ):
                blocks[-1] = ReadBlock(function, last.start, max(end, last.start + last.count) - last.start)
            else:
                blocks.append(ReadBlock(function, start, end - start))
        return blocks

    def decode(self, block: ReadBlock, registers: list[int]) -> dict[ReadingType, Decimal]:
        """Values of the channels that `block` covers, from that block's registers."""
        values = {}
        for channel in self.channels:
            offset = channel.address - block.start
            if channel.function == block.function and 0 <= offset <= block.count - channel.encoding.registers:
                values[channel.reading_type] = channel.decode(
                    registers[offset : offset + channel.encoding.registers]
                )
        return values
