"""Devices that call the HES over the WAN, for the tests and the demo: a meter that dials out and then
answers as a DLMS server on its own connection (a GPRS meter), and a DCU that pushes the register
values of the meters behind it (the push format is in appliance/collect/dlms/push.py).

gurux builds what they send (GXDLMSNotify for the pushes, the patched server for the answers), so
the HES reads a second implementation's bytes, never its own. gurux is GPLv2: simulator and tests only.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence

from gurux_dlms.enums import DataType, InterfaceType
from gurux_dlms.GXArray import GXArray
from gurux_dlms.GXByteBuffer import GXByteBuffer
from gurux_dlms.GXDLMSNotify import GXDLMSNotify
from gurux_dlms.GXEnum import GXEnum
from gurux_dlms.GXInt8 import GXInt8
from gurux_dlms.GXStructure import GXStructure
from gurux_dlms.GXUInt32 import GXUInt32
from gurux_dlms.internal._GXCommon import _GXCommon

from appliance.sim.dlms_meter import Pacing, WrapperServer
from appliance.sim.dlms_objects import (
    INTERVAL_S,
    OBIS_EXPORT,
    OBIS_IMPORT,
    MeterConfig,
    MeterState,
    encode_datetime,
)

PUSH_SETUP = bytes((0, 0, 25, 9, 0, 255))  # 0.0.25.9.0.255, the push setup that sends on connecting
PUSH_CLIENT = 102  # the wPort pushes go to (IDIS: the pre-established push client)
UNIT_WH = 30
_OBIS = {OBIS_IMPORT: bytes((1, 0, 1, 8, 0, 255)), OBIS_EXPORT: bytes((1, 0, 2, 8, 0, 255))}


def logical_name(config: MeterConfig) -> str:
    """The logical device name the simulated meter shows (dlms_objects: "SIM" + serial, 16 at most)."""
    return f"SIM{config.serial}"[:16]


def push_frame(sender: str, meters: Sequence[tuple[str, list[GXStructure]]] | None = None) -> bytes:
    """A data-notification in a wrapper frame, built by gurux: the push setup's name, the sender's
    logical device name and, from a DCU, its meters' values."""
    body = _structure(bytearray(PUSH_SETUP), bytearray(sender.encode()))
    if meters is not None:
        entries = GXArray()
        entries.extend(_structure(bytearray(name.encode()), _array(values)) for name, values in meters)
        body.append(entries)
    notify = GXDLMSNotify(True, PUSH_CLIENT, 1, InterfaceType.WRAPPER)
    buffer = GXByteBuffer()
    _GXCommon.setData(notify.settings, buffer, DataType.STRUCTURE, body)
    (frame,) = notify.generateDataNotificationMessages(None, buffer)
    return bytes(frame)


def register_values(state: MeterState, captured: float) -> list[GXStructure]:
    """The meter's energy registers at `captured` as extended registers give them (name, value,
    scaler_unit, capture time)."""
    config = state.config
    return [
        _structure(
            bytearray(code),
            GXUInt32(state.register_value(obis, captured) & 0xFFFFFFFF),
            _structure(GXInt8(config.scaler), GXEnum(UNIT_WH)),
            bytearray(encode_datetime(captured, config.tz_minutes)),
        )
        for obis, code in _OBIS.items()
    ]


class _Caller:
    """A device's side of one connection to the HES at a time: call, hang up, call again."""

    def __init__(self, hes_port: int, host: str = "127.0.0.1") -> None:
        self.address = (host, hes_port)
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def call(self) -> socket.socket:
        """Connect to the HES and start talking in a thread; returns the socket (tests misbehave on it)."""
        self.hang_up()
        self._stop = threading.Event()
        self._sock = socket.create_connection(self.address, timeout=5)
        self._thread = threading.Thread(target=self._talk, args=(self._sock, self._stop), daemon=True)
        self._thread.start()
        return self._sock

    def hang_up(self) -> None:
        """Close the connection (safe to call twice)."""
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def connected(self) -> bool:
        """Whether the talking thread still runs (the HES has not closed the connection)."""
        return self._thread is not None and self._thread.is_alive()

    def _talk(self, sock: socket.socket, stop: threading.Event) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Caller:
        self.call()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.hang_up()


class DialingMeter(_Caller):
    """A meter that calls the HES, optionally pushes its identity, then answers it as a DLMS server.

    Its state (clock, counters, logs) survives hang-ups, as a real meter's does."""

    def __init__(
        self, hes_port: int, config: MeterConfig, push: bool = True, host: str = "127.0.0.1"
    ) -> None:
        super().__init__(hes_port, host)
        self.state = MeterState(config)
        self.push = push
        self.logical_name = logical_name(config)
        self._server = WrapperServer([self.state], Pacing(9600, False, 0.0))

    def _talk(self, sock: socket.socket, stop: threading.Event) -> None:
        try:
            if self.push:
                sock.sendall(push_frame(self.logical_name))
            self._server.connection(sock, stop)
        except OSError:
            return  # the HES closed the connection


class SimulatedDcu(_Caller):
    """A DCU that calls the HES and pushes its meters' register values every `interval_s` seconds,
    stamped with the last 15-minute boundary. It answers nothing (it is not read, it reports)."""

    def __init__(
        self,
        hes_port: int,
        name: str,
        meters: Sequence[MeterConfig],
        interval_s: float = 1.0,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(hes_port, host)
        self.logical_name = name
        self.states = [MeterState(config) for config in meters]
        self.interval_s = interval_s
        self.pushes = 0

    def frame(self, now: float | None = None) -> bytes:
        """The push for `now`: every meter's registers at the last interval boundary."""
        now = time.time() if now is None else now
        captured = now - now % INTERVAL_S
        reports = [(logical_name(state.config), register_values(state, captured)) for state in self.states]
        return push_frame(self.logical_name, reports)

    def _talk(self, sock: socket.socket, stop: threading.Event) -> None:
        sock.settimeout(self.interval_s)
        try:
            while not stop.is_set():
                sock.sendall(self.frame())
                self.pushes += 1
                try:
                    if sock.recv(4096) == b"":  # the HES asks nothing of a DCU; empty: it hung up
                        return
                except TimeoutError:
                    continue
        except OSError:
            return


def _structure(*items: object) -> GXStructure:
    structure = GXStructure()
    structure.extend(items)
    return structure


def _array(items: Sequence[object]) -> GXArray:
    array = GXArray()
    array.extend(items)
    return array
