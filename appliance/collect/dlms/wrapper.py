"""The DLMS/COSEM wrapper for TCP and UDP (IEC 62056-47), sans-I/O: an 8-byte header before each APDU.

Header: version (1), source wPort, destination wPort, APDU length, each 16 bits big-endian. A client
sends from its client SAP (16 = public client) to the meter's logical device (1 = management); the
meter answers with the two swapped. TCP is a stream: the length field says where an APDU ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.errors import ProtocolError

VERSION = 1
HEADER_LENGTH = 8
MAX_APDU_LENGTH = 0xFFFF


@dataclass(frozen=True)
class WrapperFrame:
    """One wrapped APDU with its source and destination wPorts."""

    source: int
    destination: int
    apdu: bytes

    def __post_init__(self) -> None:
        for port in (self.source, self.destination):
            if not 0 <= port <= 0xFFFF:
                raise ValueError(f"wrapper port {port} is not 16 bits")
        if not 1 <= len(self.apdu) <= MAX_APDU_LENGTH:
            raise ValueError(f"a wrapped APDU is 1-{MAX_APDU_LENGTH} bytes, not {len(self.apdu)}")

    def encode(self) -> bytes:
        """Header and APDU, ready for the socket."""
        header = (VERSION, self.source, self.destination, len(self.apdu))
        return b"".join(value.to_bytes(2, "big") for value in header) + self.apdu


def wrapper_bytes_needed(data: bytes) -> int:
    """How many more bytes complete the wrapper frame that `data` begins (0: it is complete).

    A header with the wrong version gives 0 at once: reading on by its length would wait for up to
    64 kB that are not coming; `decode_wrapper` then says what is wrong. Never raises.
    """
    if len(data) < HEADER_LENGTH:
        return HEADER_LENGTH - len(data)
    if int.from_bytes(data[0:2], "big") != VERSION:
        return 0
    return max(0, HEADER_LENGTH + int.from_bytes(data[6:8], "big") - len(data))


def decode_wrapper(data: bytes) -> WrapperFrame:
    """The frame in `data`, which must hold exactly one. Raises ProtocolError for anything malformed."""
    if len(data) < HEADER_LENGTH:
        raise ProtocolError(f"wrapper header truncated: {len(data)} of {HEADER_LENGTH} bytes")
    version, source, destination, length = (
        int.from_bytes(data[start : start + 2], "big") for start in range(0, HEADER_LENGTH, 2)
    )
    if version != VERSION:
        raise ProtocolError(f"wrapper version {version}, expected {VERSION}")
    if length == 0:
        raise ProtocolError("wrapper frame without an APDU")
    received = len(data) - HEADER_LENGTH
    if received < length:
        raise ProtocolError(f"wrapper frame truncated: {received} of {length} APDU bytes")
    if received > length:
        raise ProtocolError(f"{received - length} bytes after a wrapper frame of {length} APDU bytes")
    return WrapperFrame(source, destination, data[HEADER_LENGTH:])
