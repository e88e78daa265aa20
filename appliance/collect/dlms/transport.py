"""A TCP connection to one meter for the DLMS wrapper (IEC 62056-47), shaped like the serial port.

`exchange` and `receive` have the same signature as `SerialPort`'s, so the session drives either one:
the caller's `needed` function (here `wrapper_bytes_needed`) says how many more bytes complete the
frame, and the socket never reads past it, so a frame's length field, not a delimiter, ends it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from appliance.errors import DeviceTimeout, TransportError

_DRAIN_LIMIT = 1 << 20  # stale bytes dropped before a request; a peer that floods us is cut off


class TcpTransport:
    """One TCP connection (a meter's or a DCU's wrapper port); open, exchange, close."""

    def __init__(self, host: str, port: int, connect_timeout_s: float = 5.0) -> None:
        self.host, self.port = host, port
        self.connect_timeout_s = connect_timeout_s
        self._sock: socket.socket | None = None

    @property
    def name(self) -> str:
        """host:port, for messages."""
        return f"{self.host}:{self.port}"

    @property
    def is_open(self) -> bool:
        """Whether a connection is up (as far as we know: a peer's close shows on the next read)."""
        return self._sock is not None

    def open(self) -> None:
        """Connect; TransportError if the meter or DCU cannot be reached."""
        if self._sock is not None:
            return
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one small APDU per turn
        except OSError as exc:
            raise TransportError(f"cannot connect to {self.name}: {exc}") from exc
        self._sock = sock

    connect = open  # the socket's own word for it

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def exchange(self, request: bytes, needed: Callable[[bytes], int], timeout_s: float) -> bytes:
        """Send `request`, then read until `needed(answer)` is 0 or `timeout_s` passes.

        Bytes already waiting belong to an earlier, abandoned answer and are dropped first, as the
        serial port does. Raises DeviceTimeout when the answer is incomplete.
        """
        sock = self._require_open()
        try:
            self._drain(sock)
            sock.settimeout(timeout_s)
            sock.sendall(request)
        except OSError as exc:
            self.close()
            raise TransportError(f"{self.name}: send failed: {exc}") from exc
        return self.receive(needed, timeout_s)

    def receive(self, needed: Callable[[bytes], int], timeout_s: float) -> bytes:
        """Read until `needed(answer)` is 0 or `timeout_s` passes, writing nothing."""
        sock = self._require_open()
        answer = bytearray()
        deadline = time.monotonic() + timeout_s
        try:
            while (missing := needed(bytes(answer))) > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                chunk = sock.recv(missing)
                if not chunk:
                    self.close()
                    raise TransportError(f"{self.name} closed the connection")
                answer += chunk
        except TimeoutError:
            raise DeviceTimeout(
                f"{self.name}: {len(answer)} of {len(answer) + needed(bytes(answer))}+ bytes "
                f"within {timeout_s:.3f} s"
            ) from None
        except OSError as exc:
            self.close()
            raise TransportError(f"{self.name}: receive failed: {exc}") from exc
        return bytes(answer)

    def _drain(self, sock: socket.socket) -> None:
        """Drop what is already waiting (a socket with a timeout would wait for data, not peek)."""
        dropped = 0
        sock.setblocking(False)
        try:
            while dropped < _DRAIN_LIMIT:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                dropped += len(chunk)
            else:
                raise TransportError(f"{self.name}: the peer floods the connection ({dropped} unasked bytes)")
            raise TransportError(f"{self.name} closed the connection")
        except BlockingIOError:
            sock.setblocking(True)
        except TransportError:
            self.close()
            raise

    def _require_open(self) -> socket.socket:
        if self._sock is None:
            raise TransportError(f"{self.name}: not connected")
        return self._sock

    def __enter__(self) -> TcpTransport:
        self.open()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
