"""Counting what crosses a line, for the benchmarks' physical limit (wire time at the baud rate)."""

from __future__ import annotations

from collections.abc import Callable

from appliance.collect.dlms.session import FramePort


class CountingPort:
    """The real SerialPort, counting requests and bytes both ways for the wire-time limit."""

    def __init__(self, port: FramePort) -> None:
        self.port = port
        self.requests = self.bytes = 0

    @property
    def is_open(self) -> bool:
        return self.port.is_open

    def open(self) -> None:
        self.port.open()

    def close(self) -> None:
        self.port.close()

    def exchange(self, request: bytes, needed: Callable[[bytes], int], timeout_s: float) -> bytes:
        answer = self.port.exchange(request, needed, timeout_s)
        self.requests += 1
        self.bytes += len(request) + len(answer)
        return answer

    def receive(self, needed: Callable[[bytes], int], timeout_s: float) -> bytes:
        answer = self.port.receive(needed, timeout_s)
        self.bytes += len(answer)
        return answer
