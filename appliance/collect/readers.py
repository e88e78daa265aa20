"""Reading one meter through its bus's port: the protocol's frames over `SerialPort.exchange`."""

from __future__ import annotations

import logging
from datetime import datetime

from appliance.collect import modbus
from appliance.collect.meters.modbus import ModbusModel
from appliance.config import BusSpec, MeterSpec
from appliance.errors import DeviceTimeout, ProtocolError
from appliance.hw.rs485 import SerialPort
from appliance.model import Reading

log = logging.getLogger(__name__)


class ModbusReader:
    """Reads the channels of a Modbus meter model, block by block, with retries."""

    def __init__(self, port: SerialPort, spec: BusSpec) -> None:
        self.port = port
        self.timeout_s = spec.timeout_ms / 1000
        self.retries = spec.retries

    def read(self, meter: MeterSpec, model: ModbusModel, stamp: datetime) -> list[Reading]:
        """Every channel of `meter`, stamped `stamp`. Raises the last error when retries run out."""
        values = {}
        for block in model.read_plan():
            registers = self._read_block(meter.address, block.function, block.start, block.count)
            values.update(model.decode(block, registers))
        return [Reading(meter.id, rtype, stamp, value) for rtype, value in values.items()]

    def _read_block(self, unit: int, function: modbus.Function, start: int, count: int) -> list[int]:
        request = modbus.read_request(unit, function, start, count)
        for _ in range(self.retries):
            try:
                return self._transact(request, unit, function, count)
            except (DeviceTimeout, ProtocolError) as exc:
                log.debug("unit %d: %s; retrying", unit, exc)
        return self._transact(request, unit, function, count)

    def _transact(self, request: bytes, unit: int, function: modbus.Function, count: int) -> list[int]:
        frame = self.port.exchange(request, modbus.response_bytes_needed, self.timeout_s)
        return modbus.parse_read_response(frame, unit, function, count)
