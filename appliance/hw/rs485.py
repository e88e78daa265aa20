"""One RS-485 serial port, owned by one bus worker (pyserial).

The port knows nothing of protocols: `exchange` writes a request and reads exactly as many bytes as
the protocol's `needed` function asks for, so a frame delimiter inside a frame cannot cut it short.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import serial
import serial.rs485

from appliance.config import BusSpec
from appliance.errors import DeviceTimeout, TransportError

_PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


def char_time(spec: BusSpec) -> float:
    """Seconds one character takes on the wire: start bit, data bits, parity, stop bits."""
    bits = 1 + spec.bytesize + (spec.parity != "N") + spec.stopbits
    return bits / spec.baud


class SerialPort:
    """An RS-485 port with the settings of one bus."""

    def __init__(self, spec: BusSpec) -> None:
        self.spec = spec
        self._port: serial.Serial | None = None
        # Modbus RTU wants 3.5 characters of silence between frames (at least 1.75 ms).
        self.silence_s = max(3.5 * char_time(spec), 0.00175)
        self._quiet_since = 0.0

    @property
    def is_open(self) -> bool:
        """Whether the device is open."""
        return self._port is not None

    def open(self) -> None:
        """Open the device with the bus's settings."""
        try:
            port = serial.Serial(
                self.spec.device,
                baudrate=self.spec.baud,
                bytesize=self.spec.bytesize,
                parity=_PARITY[self.spec.parity],
                stopbits=self.spec.stopbits,
                timeout=0,
                exclusive=True,
            )
            if self.spec.rs485_mode:
                port.rs485_mode = serial.rs485.RS485Settings()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TransportError(f"bus {self.spec.name}: cannot open {self.spec.device}: {exc}") from exc
        self._port = port

    def close(self) -> None:
        """Close the device; safe to call twice."""
        if self._port is not None:
            self._port.close()
            self._port = None

    def exchange(self, request: bytes, needed: Callable[[bytes], int], timeout_s: float) -> bytes:
        """Send `request`, then read until `needed(answer)` is 0 or `timeout_s` passes.

        Raises DeviceTimeout with what arrived so far when the answer is incomplete.
        """
        port = self._require_open()
        try:
            gap = self._quiet_since + self.silence_s - time.monotonic()
            if gap > 0:
                time.sleep(gap)
            port.reset_input_buffer()  # stale bytes belong to an earlier, abandoned answer
            port.write(request)
        except (serial.SerialException, OSError) as exc:
            self.close()
            raise TransportError(f"bus {self.spec.name}: {self.spec.device} failed: {exc}") from exc
        return self.receive(needed, timeout_s)

    def receive(self, needed: Callable[[bytes], int], timeout_s: float) -> bytes:
        """Read until `needed(answer)` is 0 or `timeout_s` passes, writing nothing.

        Alone, for the rest of an answer that comes in several frames (an HDLC window): the input is
        not reset, since the next frame may already be waiting in it. Raises DeviceTimeout with what
        arrived so far when the answer is incomplete.
        """
        port = self._require_open()
        try:
            answer = bytearray()
            deadline = time.monotonic() + timeout_s
            while (missing := needed(bytes(answer))) > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeviceTimeout(
                        f"bus {self.spec.name}: {len(answer)} of {len(answer) + missing}+ bytes "
                        f"within {timeout_s:.3f} s"
                    )
                port.timeout = remaining
                answer += port.read(missing)
            return bytes(answer)
        except (serial.SerialException, OSError) as exc:
            self.close()
            raise TransportError(f"bus {self.spec.name}: {self.spec.device} failed: {exc}") from exc
        finally:
            self._quiet_since = time.monotonic()

    def _require_open(self) -> serial.Serial:
        if self._port is None:
            raise TransportError(f"bus {self.spec.name}: port is not open")
        return self._port
