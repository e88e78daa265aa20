"""Simulated Modbus RTU meters: a pymodbus server with several unit ids on one pty (a multidrop bus).

Registers are encoded by pymodbus (not by our decoder) and advance with wall time like a meter
with a daily load curve: energy counters only ever go up.

Run alone:  python -m appliance.sim.modbus_meter --port PTY --meter 1:sdm630 --meter 2:generic-wh32
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from appliance.collect.meters import get_model
from appliance.collect.meters.catalog import REGISTER_A_MINUS_KWH, REGISTER_A_PLUS_KWH, VOLTAGE_L1_V
from appliance.collect.meters.modbus import Encoding, ModbusChannel, ModbusModel
from appliance.errors import TransportError
from appliance.sim import simtime
from appliance.sim.process import ChildProcess

_DATATYPES = {
    Encoding.U16: ModbusClientMixin.DATATYPE.UINT16,
    Encoding.U32: ModbusClientMixin.DATATYPE.UINT32,
    Encoding.U64: ModbusClientMixin.DATATYPE.UINT64,
    Encoding.F32: ModbusClientMixin.DATATYPE.FLOAT32,
}
DAY_S = 86400.0


def import_kwh(unit: int, at: float, seed: int = 0) -> float:
    """Energy imported by meter `unit` by time `at`: a load of P0 x (1 + 0.5 sin) integrated.

    The load never drops below P0/2, so the counter rises monotonically. `seed` tells apart
    meters with the same unit id on different buses.
    """
    p0_kw = 0.8 + 0.37 * unit + 0.11 * seed
    base_kwh = 1000.0 + 100.0 * unit + 5000.0 * seed
    swing = 0.5 * DAY_S / (2 * math.pi) * (1 - math.cos(2 * math.pi * at / DAY_S))
    return base_kwh + p0_kw * ((at % (10 * 365 * DAY_S)) + swing) / 3600.0


def channel_value(
    unit: int, channel: ModbusChannel, at: float, seed: int = 0, offset_kwh: float = 0
) -> float:
    """What the meter shows on `channel` at time `at`, in the channel's reading-type unit.
    `offset_kwh` moves the import counter (a test puts it just below a rollover)."""
    if channel.reading_type == REGISTER_A_PLUS_KWH:
        return import_kwh(unit, at, seed) + offset_kwh
    if channel.reading_type == REGISTER_A_MINUS_KWH:
        return import_kwh(unit, at, seed) / 40.0  # a little rooftop solar
    if channel.reading_type == VOLTAGE_L1_V:
        return 230.0 + 3.0 * math.sin(2 * math.pi * at / 600.0 + unit)
    return 0.0


def register_image(
    unit: int, model: ModbusModel, at: float, seed: int = 0, offset_kwh: float = 0
) -> dict[int, int]:
    """Protocol address -> register value for every channel of the meter at time `at`; integer
    counters wrap at their width, as a real meter's do."""
    image = {}
    for channel in model.channels:
        raw = channel_value(unit, channel, at, seed, offset_kwh) / 10**channel.exponent
        value = raw if channel.encoding is Encoding.F32 else int(raw) % 2 ** (16 * channel.encoding.registers)
        for offset, word in enumerate(
            ModbusClientMixin.convert_to_registers(value, _DATATYPES[channel.encoding])
        ):
            image[channel.address + offset] = word
    return image


async def _refresh(
    unit: int,
    model: ModbusModel,
    seed: int,
    offset_kwh: float,
    _function_code: int,
    start_address: int,
    _address: int,
    _count: int,
    registers: list[int],
    _set_values: object,
) -> None:
    """pymodbus action: bring the registers up to date before each read."""
    for address, word in register_image(unit, model, simtime.now(), seed, offset_kwh).items():
        if 0 <= address - start_address < len(registers):
            registers[address - start_address] = word


def device(unit: int, model_name: str, seed: int = 0, offset_kwh: float = 0) -> SimDevice:
    """A pymodbus SimDevice with the register map of `model_name`."""
    model = get_model(model_name)
    size = max(c.address + c.encoding.registers for c in model.channels)
    return SimDevice(
        id=unit,
        simdata=[SimData(0, count=size, values=0, datatype=DataType.REGISTERS)],
        action=partial(_refresh, unit, model, seed, offset_kwh),
    )


class _Multidrop(SimCore):
    """pymodbus 3.16's SimCore looks unknown ids up as device 0 and answers exception 4 for the
    KeyError; a real multidrop bus stays silent. Raising NoSuchIdException lets the server's
    ignore_missing_devices do what it says."""

    def _SimCore__get_device(self, device_id: int) -> object:
        if device_id not in self.devices:
            raise NoSuchIdException(f"no meter with unit id {device_id} on this bus")
        return self.devices[device_id]


SimMeter = tuple[int, str] | tuple[int, str, float]  # unit id, model[, import offset in kWh]


async def serve(port: str, meters: list[SimMeter], baud: int = 9600, seed: int = 0) -> None:
    """Serve the meters on `port` until killed; absent unit ids time out as on a real bus."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    devices = [device(*meter[:2], seed, *meter[2:]) for meter in meters]
    server = ModbusSerialServer(devices, port=port, baudrate=baud, ignore_missing_devices=True)
    server.context = _Multidrop(devices)
    await server.serve_forever()


class SimulatedModbusBus(ChildProcess):
    """The simulator as a child process on the meter end of a pty pair."""

    def __init__(self, port: Path, meters: list[SimMeter], seed: int = 0, log: Path | None = None) -> None:
        self.port, self.meters, self.seed, self.log = port, meters, seed, log

    def start(self) -> SimulatedModbusBus:
        """Start serving; returns when the process runs (the port is opened within milliseconds)."""
        args = [
            sys.executable,
            "-m",
            "appliance.sim.modbus_meter",
            "--port",
            str(self.port),
            "--seed",
            str(self.seed),
        ]
        for meter in self.meters:
            args += ["--meter", ":".join(str(part) for part in meter)]
        out = self.log.open("ab") if self.log else subprocess.DEVNULL
        self._process = subprocess.Popen(args, stdout=out, stderr=out)
        time.sleep(0.3)
        if self._process.poll() is not None:
            raise TransportError(f"the Modbus simulator on {self.port} exited at start")
        return self


def _meter_arg(text: str) -> SimMeter:
    unit, model, *offset = text.split(":")
    get_model(model)
    return (int(unit), model, float(offset[0])) if offset else (int(unit), model)


def main() -> None:
    """Command line: serve simulated meters on a pty."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", required=True)
    parser.add_argument(
        "--meter", action="append", type=_meter_arg, required=True, metavar="UNIT:MODEL[:OFFSET_KWH]"
    )
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument("--seed", type=int, default=0, help="varies the simulated values")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.meter, args.baud, args.seed))


if __name__ == "__main__":
    main()
