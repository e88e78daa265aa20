"""HDLC frame format type 3 for DLMS/COSEM (IEC 62056-46), sans-I/O: bytes in, frames and events out.

DLMS HDLC has no byte stuffing: 0x7E may legally sit inside a frame (a length byte, an HCS or FCS byte,
any data byte). Frames are therefore read by their 11-bit length field (`frame_bytes_needed`), never
split at the flag value; dlms-cosem's transport does the latter and stalls on such frames.

`HdlcConnection` is the client end of one link (one meter on a bus), in the spirit of h11: it turns
APDUs into frames and frames into events and keeps the sequence numbers, the window and the segment
buffers; the session layer does the reading, writing and timing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from appliance.errors import CrcError, DeviceError, ProtocolError

FLAG = 0x7E
FORMAT_TYPE_3 = 0xA0  # high nibble of the format field
SEGMENTATION_BIT = 0x08  # in the first format byte: more segments of this APDU follow
MAX_FRAME_LENGTH = 0x7FF  # the format field's 11-bit length (flags excluded)
MIN_FRAME_LENGTH = 7  # format field (2) + two 1-byte addresses + control + FCS
MIN_FRAME_BYTES = MIN_FRAME_LENGTH + 2  # with both flags
MAX_INFO_FIELD = 2030  # fits a frame with a 4-byte server address; the most a meter may negotiate
MIN_INFO_FIELD = 4  # the LLC header and one APDU byte; lenient, real meters say 128 or more
MAX_WINDOW = 7  # sequence numbers count modulo 8
LLC_COMMAND = b"\xe6\xe6\x00"  # destination LSAP, source LSAP (command), quality
LLC_RESPONSE = b"\xe6\xe7\x00"  # source LSAP 0xE7 marks a response
MAX_RECOVERIES = 3  # retransmissions in a row without progress before the link is declared broken


class HdlcStateError(ProtocolError):
    """The link is not in a state that allows this (send before UA, a second request in flight, ...)."""


class FrameRejected(ProtocolError):
    """The meter answered FRMR: it found our frame invalid; the link needs SNRM (or DISC) again."""


class LinkRefused(DeviceError):
    """The meter answered SNRM with DM: it refuses a link now (another client may hold it)."""


def _fcs_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_FCS_TABLE = _fcs_table()


def fcs16(data: bytes) -> int:
    """CRC-16/X.25 over `data`, as HCS and FCS use it (reflected 0x1021, init and xor-out 0xFFFF).

    Sent low byte first.
    """
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _FCS_TABLE[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFF


def _fcs_bytes(data: bytes) -> bytes:
    return fcs16(data).to_bytes(2, "little")


@dataclass(frozen=True)
class HdlcAddress:
    """An HDLC address: the client's SAP, or a server's logical (upper) and physical (lower) address.

    A server address is 1 byte (logical only), 2 bytes (7 bits each) or 4 bytes (14 bits each); the
    physical part tells meters on one RS-485 bus apart, the logical part picks the logical device
    (1 = management). `size` 0 picks the smallest size that fits. Client addresses are 1 byte.
    """

    logical: int
    physical: int | None = None
    size: int = 0

    def __post_init__(self) -> None:
        size = self.size
        if size == 0 and self.physical is None:
            size = 1
        elif size == 0:
            size = 2 if max(self.logical, self.physical) <= 0x7F else 4
        if size == 1:
            if self.physical is not None:
                raise ValueError("a 1-byte HDLC address has no physical part")
            limit = 0x7F
        elif size in (2, 4):
            if self.physical is None:
                raise ValueError(f"a {size}-byte HDLC address needs a physical part")
            limit = 0x7F if size == 2 else 0x3FFF
            if not 0 <= self.physical <= limit:
                raise ValueError(f"physical address {self.physical} does not fit {size} bytes")
        else:
            raise ValueError(f"HDLC addresses are 1, 2 or 4 bytes, not {size}")
        if not 0 <= self.logical <= limit:
            raise ValueError(f"logical address {self.logical} does not fit {size} bytes")
        object.__setattr__(self, "size", size)

    def encode(self) -> bytes:
        """The address bytes: 7 bits per byte, the lowest bit set on the last byte only."""
        physical = 0 if self.physical is None else self.physical
        if self.size == 1:
            return bytes(((self.logical << 1) | 1,))
        if self.size == 2:
            return bytes((self.logical << 1, (physical << 1) | 1))
        return bytes(
            (
                (self.logical >> 7) << 1,
                (self.logical & 0x7F) << 1,
                (physical >> 7) << 1,
                ((physical & 0x7F) << 1) | 1,
            )
        )

    def __str__(self) -> str:
        if self.physical is None:
            return str(self.logical)
        return f"{self.logical}/{self.physical}"


def _decode_address(body: bytes, start: int, end: int) -> tuple[HdlcAddress, int]:
    """The address that begins at `body[start]` and the position after it; `end` bounds the search."""
    for position in range(start, min(start + 4, end)):
        if body[position] & 1:
            break
    else:
        raise ProtocolError("HDLC address without an end bit within 4 bytes")
    parts = [byte >> 1 for byte in body[start : position + 1]]
    if len(parts) == 1:
        return HdlcAddress(parts[0]), position + 1
    if len(parts) == 2:
        return HdlcAddress(parts[0], parts[1], 2), position + 1
    if len(parts) == 4:
        return HdlcAddress(parts[0] << 7 | parts[1], parts[2] << 7 | parts[3], 4), position + 1
    raise ProtocolError("HDLC address of 3 bytes (only 1, 2 or 4 are allowed)")


class FrameKind(Enum):
    """The frame types DLMS HDLC uses, with the control byte of each (P/F bit and counters clear)."""

    INFORMATION = 0x00
    RR = 0x01  # receive ready: acknowledges, asks for more
    RNR = 0x05  # receive not ready
    SNRM = 0x83  # set normal response mode: opens the link
    DISC = 0x43  # disconnect
    UA = 0x63  # unnumbered acknowledge
    DM = 0x0F  # disconnected mode
    FRMR = 0x87  # frame reject
    UI = 0x03  # unnumbered information (push, event notification)


_SUPERVISORY = (FrameKind.RR, FrameKind.RNR)
_UNNUMBERED = {kind.value: kind for kind in FrameKind if kind.value & 0x03 == 0x03}
_CARRIES_SEGMENTS = (FrameKind.INFORMATION, FrameKind.UI)


@dataclass(frozen=True)
class HdlcFrame:
    """One frame, decoded. `information` is the raw information field (with the LLC header if any)."""

    kind: FrameKind
    destination: HdlcAddress
    source: HdlcAddress
    poll_final: bool = True
    send_sequence: int = 0  # N(S), I-frames only
    receive_sequence: int = 0  # N(R), I-frames and RR/RNR
    information: bytes = b""
    segmented: bool = False

    def __post_init__(self) -> None:
        if not (0 <= self.send_sequence < 8 and 0 <= self.receive_sequence < 8):
            raise ValueError("HDLC sequence numbers run 0-7")
        if self.kind is not FrameKind.INFORMATION and self.send_sequence:
            raise ValueError(f"{self.kind.name} frames carry no N(S)")
        if self.kind not in (FrameKind.INFORMATION, *_SUPERVISORY) and self.receive_sequence:
            raise ValueError(f"{self.kind.name} frames carry no N(R)")
        if self.kind in _SUPERVISORY and self.information:
            raise ValueError(f"{self.kind.name} frames carry no information field")
        if self.segmented and self.kind not in _CARRIES_SEGMENTS:
            raise ValueError(f"{self.kind.name} frames cannot be segmented")

    @property
    def control(self) -> int:
        """The control byte."""
        return (
            self.kind.value
            | (self.poll_final << 4)
            | (self.receive_sequence << 5)
            | (self.send_sequence << 1)
        )

    def encode(self) -> bytes:
        """The frame on the wire, both flags included."""
        header = self.destination.encode() + self.source.encode() + bytes((self.control,))
        length = 2 + len(header) + 2 + (len(self.information) + 2 if self.information else 0)
        if length > MAX_FRAME_LENGTH:
            raise ValueError(f"HDLC frame of {length} bytes exceeds the 11-bit length field")
        first = FORMAT_TYPE_3 | (SEGMENTATION_BIT if self.segmented else 0) | (length >> 8)
        body = bytes((first, length & 0xFF)) + header
        if self.information:
            body += _fcs_bytes(body) + self.information
        return bytes((FLAG,)) + body + _fcs_bytes(body) + bytes((FLAG,))


def _decode_control(control: int) -> tuple[FrameKind, bool, int, int]:
    poll_final = bool(control & 0x10)
    if control & 0x01 == 0:
        return FrameKind.INFORMATION, poll_final, (control >> 1) & 0x07, control >> 5
    if control & 0x03 == 0x01:
        supervisory = {0x01: FrameKind.RR, 0x05: FrameKind.RNR}.get(control & 0x0F)
        if supervisory is None:
            raise ProtocolError(f"HDLC control 0x{control:02X}: REJ/SREJ are not used by DLMS")
        return supervisory, poll_final, 0, control >> 5
    unnumbered = _UNNUMBERED.get(control & 0xEF)
    if unnumbered is None:
        raise ProtocolError(f"HDLC control 0x{control:02X} is not a frame type DLMS uses")
    return unnumbered, poll_final, 0, 0


def _length_at(data: bytes, start: int) -> int:
    return ((data[start + 1] & 0x07) << 8) | data[start + 2]


def _frame_start(data: bytes) -> int | None:
    """Where the frame begins: the first flag followed by a type 3 format field with a possible length.

    Skips garbage and inter-frame flags (a flag followed by another flag). A flag too close to the end
    to tell is taken as the start; more bytes will tell.
    """
    position = data.find(FLAG)
    while position != -1:
        if position + 1 >= len(data):
            return position
        if data[position + 1] & 0xF0 == FORMAT_TYPE_3 and (
            position + 2 >= len(data) or _length_at(data, position) >= MIN_FRAME_LENGTH
        ):
            return position
        position = data.find(FLAG, position + 1)
    return None


def frame_bytes_needed(data: bytes) -> int:
    """How many more bytes complete the frame that `data` begins (0: it is complete).

    Reads the length field, so a 0x7E inside the frame does not end it. Leading garbage and extra
    flags are skipped. Never asks for a byte beyond the frame's end, so a serial read of exactly this
    many bytes cannot wait for bytes that are not coming. Never raises.
    """
    start = _frame_start(data)
    if start is None:
        return MIN_FRAME_BYTES
    available = len(data) - start
    if available < 3:
        return MIN_FRAME_BYTES - available
    return max(0, _length_at(data, start) + 2 - available)


def split_frame(data: bytes) -> tuple[bytes, bytes]:
    """The first whole frame in `data` (flags included, garbage before it dropped) and the bytes after it.

    For streams that may hold more than one frame (HDLC over TCP, a window of frames). Raises
    ProtocolError when no whole frame is there yet.
    """
    start = _frame_start(data)
    if start is None or len(data) - start < 3:
        raise ProtocolError(f"no whole HDLC frame in {len(data)} bytes")
    end = start + _length_at(data, start) + 2
    if end > len(data):
        raise ProtocolError(f"HDLC frame truncated: {len(data) - start} of {end - start} bytes")
    return data[start:end], data[end:]


def decode_frame(data: bytes) -> HdlcFrame:
    """The frame in `data` (leading garbage allowed, nothing after the closing flag).

    Raises CrcError for an HCS or FCS mismatch and ProtocolError for anything else malformed.
    """
    frame, rest = split_frame(data)
    if rest:
        raise ProtocolError(f"{len(rest)} bytes after the HDLC frame")
    if frame[-1] != FLAG:
        raise ProtocolError(f"HDLC frame ends with 0x{frame[-1]:02X}, not the closing flag")
    body = frame[1:-1]  # format field .. FCS
    if fcs16(body[:-2]) != int.from_bytes(body[-2:], "little"):
        raise CrcError("HDLC FCS mismatch")
    fcs_at = len(body) - 2
    destination, position = _decode_address(body, 2, fcs_at)
    source, position = _decode_address(body, position, fcs_at)
    if position >= fcs_at:
        raise ProtocolError("HDLC frame without a control field")
    kind, poll_final, send_sequence, receive_sequence = _decode_control(body[position])
    position += 1
    information = b""
    if position < fcs_at:
        if fcs_at - position < 2:
            raise ProtocolError("HDLC frame with one stray byte before the FCS")
        if fcs16(body[:position]) != int.from_bytes(body[position : position + 2], "little"):
            raise CrcError("HDLC HCS mismatch")
        information = body[position + 2 : fcs_at]
    segmented = bool(body[0] & SEGMENTATION_BIT)
    if kind in _SUPERVISORY and information:
        raise ProtocolError(f"HDLC {kind.name} frame with an information field")
    if segmented and kind not in _CARRIES_SEGMENTS:
        raise ProtocolError(f"HDLC {kind.name} frame with the segmentation bit")
    try:
        return HdlcFrame(
            kind, destination, source, poll_final, send_sequence, receive_sequence, information, segmented
        )
    except ValueError as exc:  # defensive: every field was checked above
        raise ProtocolError(f"invalid HDLC frame: {exc}") from exc


_PARAMETER_FORMAT = 0x81  # HDLC parameter negotiation format identifier
_PARAMETER_GROUP = 0x80  # HDLC parameter group identifier
_MAX_INFO_TRANSMIT, _MAX_INFO_RECEIVE, _WINDOW_TRANSMIT, _WINDOW_RECEIVE = 0x05, 0x06, 0x07, 0x08


@dataclass(frozen=True)
class HdlcParameters:
    """Link limits as one side states them: what it transmits at most, what it can receive.

    In SNRM they are the client's, in UA the meter's. The defaults are the standard's, which apply
    to any parameter a SNRM or UA leaves out.
    """

    max_info_transmit: int = 128
    max_info_receive: int = 128
    window_transmit: int = 1
    window_receive: int = 1

    def __post_init__(self) -> None:
        for value in (self.max_info_transmit, self.max_info_receive):
            if not MIN_INFO_FIELD <= value <= MAX_INFO_FIELD:
                raise ValueError(f"information field length {value} not in {MIN_INFO_FIELD}-{MAX_INFO_FIELD}")
        for value in (self.window_transmit, self.window_receive):
            if not 1 <= value <= MAX_WINDOW:
                raise ValueError(f"window size {value} not in 1-{MAX_WINDOW}")

    def encode(self, *, with_defaults: bool = False) -> bytes:
        """The SNRM/UA information field (b"" when nothing needs saying).

        Without `with_defaults` only values that differ from the defaults are sent, as gurux does;
        lengths take 1 or 2 bytes, windows 4 (as in the Green Book's examples).
        """
        default = HdlcParameters()
        parameters = b""
        for identifier, value, standard, is_window in (
            (_MAX_INFO_TRANSMIT, self.max_info_transmit, default.max_info_transmit, False),
            (_MAX_INFO_RECEIVE, self.max_info_receive, default.max_info_receive, False),
            (_WINDOW_TRANSMIT, self.window_transmit, default.window_transmit, True),
            (_WINDOW_RECEIVE, self.window_receive, default.window_receive, True),
        ):
            if with_defaults or value != standard:
                size = 4 if is_window else 1 if value < 0x100 else 2
                parameters += bytes((identifier, size)) + value.to_bytes(size, "big")
        if not parameters:
            return b""
        return bytes((_PARAMETER_FORMAT, _PARAMETER_GROUP, len(parameters))) + parameters

    @classmethod
    def decode(cls, information: bytes) -> HdlcParameters:
        """The parameters in a SNRM/UA information field (empty: all defaults).

        Lengths above what a frame can carry are capped, windows above 7 too; unknown parameters are
        skipped. Raises ProtocolError for a malformed field or an impossible value.
        """
        if not information:
            return cls()
        if len(information) < 3 or information[0] != _PARAMETER_FORMAT or information[1] != _PARAMETER_GROUP:
            raise ProtocolError(f"HDLC parameter field does not start with 81 80: {information[:3].hex()}")
        if information[2] != len(information) - 3:
            raise ProtocolError(
                f"HDLC parameter group of {information[2]} bytes in a field of {len(information) - 3}"
            )
        values = {}
        position = 3
        while position < len(information):
            if position + 2 > len(information):
                raise ProtocolError("HDLC parameter truncated")
            identifier, size = information[position], information[position + 1]
            value_bytes = information[position + 2 : position + 2 + size]
            if not 1 <= size <= 4 or len(value_bytes) != size:
                raise ProtocolError(f"HDLC parameter 0x{identifier:02X} with a value of {size} bytes")
            values[identifier] = int.from_bytes(value_bytes, "big")
            position += 2 + size
        default = cls()
        lengths = [
            values.get(_MAX_INFO_TRANSMIT, default.max_info_transmit),
            values.get(_MAX_INFO_RECEIVE, default.max_info_receive),
        ]
        windows = [
            values.get(_WINDOW_TRANSMIT, default.window_transmit),
            values.get(_WINDOW_RECEIVE, default.window_receive),
        ]
        if min(lengths) < MIN_INFO_FIELD or min(windows) < 1:
            raise ProtocolError(f"HDLC parameters out of range: lengths {lengths}, windows {windows}")
        return cls(
            min(lengths[0], MAX_INFO_FIELD),
            min(lengths[1], MAX_INFO_FIELD),
            min(windows[0], MAX_WINDOW),
            min(windows[1], MAX_WINDOW),
        )


def negotiate(proposal: HdlcParameters, answer: HdlcParameters) -> HdlcParameters:
    """The limits a client works with: its SNRM `proposal` against the meter's UA `answer`.

    What we transmit is bounded by what the meter receives, and the other way round.
    """
    return HdlcParameters(
        max_info_transmit=min(proposal.max_info_transmit, answer.max_info_receive),
        max_info_receive=min(proposal.max_info_receive, answer.max_info_transmit),
        window_transmit=min(proposal.window_transmit, answer.window_receive),
        window_receive=min(proposal.window_receive, answer.window_transmit),
    )


class LinkState(Enum):
    """Where a client link stands."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"  # SNRM sent
    CONNECTED = "connected"
    DISCONNECTING = "disconnecting"  # DISC sent


@dataclass(frozen=True)
class Connected:
    """The meter accepted SNRM; `parameters` are the negotiated limits, from our side."""

    parameters: HdlcParameters


@dataclass(frozen=True)
class Disconnected:
    """The link is down: the meter confirmed DISC, or dropped the link (DM)."""

    reason: str


@dataclass(frozen=True)
class ApduReceived:
    """The meter's whole answer, reassembled from its segments, LLC header removed."""

    apdu: bytes


@dataclass(frozen=True)
class SendFrames:
    """Write `frames` (in order; they may be joined) and read the meter's next frame.

    An RR that asks for the next segment of an answer, the next window of a long request, or frames
    sent again because the meter missed them.
    """

    frames: tuple[bytes, ...]


@dataclass(frozen=True)
class AwaitFrame:
    """Read one more frame without writing: more of the meter's window is coming, or that was our echo.

    Frames of one window may share flags (one frame's closing flag opens the next): read the next
    frame as `frame_bytes_needed(bytes([FLAG]) + data)`, which is right in both cases.
    """


@dataclass(frozen=True)
class PeerBusy:
    """The meter answered RNR: wait a moment, then write `poll` and read its next frame."""

    poll: bytes


HdlcEvent = Connected | Disconnected | ApduReceived | SendFrames | AwaitFrame | PeerBusy


@dataclass(frozen=True)
class _Segment:
    information: bytes
    segmented: bool


class HdlcConnection:
    """The client end of one HDLC link to one meter: frames out, events in, no I/O.

    Use: `snrm()` → write, read a frame → `receive()` gives Connected; then per request `send(apdu)`
    → write the frames, read a frame → `receive()` until it gives ApduReceived, following SendFrames,
    AwaitFrame and PeerBusy on the way; `disc()` at the end. After a timeout, `poll()` asks the meter
    to repeat what it last sent (or to say what it missed); a whole new `snrm()` resets everything.
    """

    def __init__(
        self, client: HdlcAddress, server: HdlcAddress, proposal: HdlcParameters | None = None
    ) -> None:
        if client.size != 1:
            raise ValueError("HDLC client addresses are 1 byte")
        self.client = client
        self.server = server
        self.proposal = proposal or HdlcParameters()
        self.parameters = HdlcParameters()  # the defaults until a UA says otherwise
        self.state = LinkState.DISCONNECTED
        self._reset_transfer()

    def _reset_transfer(self) -> None:
        self._send_state = 0  # V(S): N(S) of our next I-frame
        self._receive_state = 0  # V(R): N(S) we expect from the meter next
        self._pending: list[_Segment] = []  # segments of the request not yet sent
        self._unacknowledged: list[tuple[int, _Segment]] = []  # sent, N(R) not yet past them
        self._received = bytearray()
        self._first_segment = True
        self._awaiting_answer = False
        self._last_accepted: tuple[int, bytes] | None = None
        self._recoveries = 0
        self._written: list[HdlcFrame] = []  # what we last wrote, to recognise its echo

    def _write(self, frames: list[HdlcFrame]) -> list[bytes]:
        self._written = frames
        return [frame.encode() for frame in frames]

    # frames we write

    def _frame(self, kind: FrameKind, information: bytes = b"") -> bytes:
        return self._write([HdlcFrame(kind, self.server, self.client, True, information=information)])[0]

    def snrm(self) -> bytes:
        """The SNRM that opens (or resets) the link, proposing `self.proposal`."""
        self._reset_transfer()
        self.parameters = HdlcParameters()
        self.state = LinkState.CONNECTING
        return self._frame(FrameKind.SNRM, self.proposal.encode())

    def disc(self) -> bytes:
        """The DISC that closes the link; allowed in any state."""
        self._reset_transfer()
        self.state = LinkState.DISCONNECTING
        return self._frame(FrameKind.DISC)

    def poll(self) -> bytes:
        """An RR with the poll bit and our N(R): after a timeout, asks the meter to send again."""
        if self.state is not LinkState.CONNECTED:
            raise HdlcStateError(f"cannot poll a link that is {self.state.value}")
        rr = HdlcFrame(FrameKind.RR, self.server, self.client, True, receive_sequence=self._receive_state)
        return self._write([rr])[0]

    def send(self, apdu: bytes) -> list[bytes]:
        """The first window of I-frames that carry `apdu`: write them all, then read one frame.

        Splits LLC header + APDU into segments of the negotiated maximum information length.
        """
        if self.state is not LinkState.CONNECTED:
            raise HdlcStateError(f"cannot send on a link that is {self.state.value}")
        if self._awaiting_answer:
            raise HdlcStateError("the previous request has not been answered yet")
        if not apdu:
            raise ValueError("an empty APDU")
        information = LLC_COMMAND + apdu
        size = self.parameters.max_info_transmit
        chunks = [information[start : start + size] for start in range(0, len(information), size)]
        self._pending = [_Segment(chunk, number < len(chunks) - 1) for number, chunk in enumerate(chunks)]
        self._received.clear()
        self._first_segment = True
        self._awaiting_answer = True
        self._recoveries = 0
        return self._next_window()

    def _next_window(self) -> list[bytes]:
        frames: list[HdlcFrame] = []
        window = self.parameters.window_transmit
        while self._pending and len(self._unacknowledged) < window:
            segment = self._pending.pop(0)
            last_of_window = not self._pending or len(self._unacknowledged) + 1 == window
            frame = HdlcFrame(
                FrameKind.INFORMATION,
                self.server,
                self.client,
                poll_final=last_of_window,
                send_sequence=self._send_state,
                receive_sequence=self._receive_state,
                information=segment.information,
                segmented=segment.segmented,
            )
            self._unacknowledged.append((self._send_state, segment))
            self._send_state = (self._send_state + 1) % 8
            frames.append(frame)
        return self._write(frames)

    # frames we read

    def receive(self, data: bytes) -> HdlcEvent:
        """What the meter's frame means and what to do next.

        Raises CrcError/ProtocolError for a bad or unexpected frame, FrameRejected for FRMR and
        LinkRefused (a DeviceError) for a DM answer to SNRM.
        """
        frame = decode_frame(data)
        if frame in self._written:
            return AwaitFrame()  # our own frame, echoed by the bus adapter
        if frame.destination != self.client or frame.source != self.server:
            raise ProtocolError(
                f"HDLC frame from {frame.source} to {frame.destination}, expected from {self.server} "
                f"to {self.client}"
            )
        if frame.kind is FrameKind.FRMR:
            self._reset_transfer()
            self.state = LinkState.DISCONNECTED
            raise FrameRejected(f"meter {self.server} rejected our frame (FRMR {frame.information.hex()})")
        if self.state is LinkState.CONNECTING:
            return self._receive_connecting(frame)
        if self.state is LinkState.DISCONNECTING:
            if frame.kind in (FrameKind.UA, FrameKind.DM):
                self.state = LinkState.DISCONNECTED
                return Disconnected("meter confirmed DISC" if frame.kind is FrameKind.UA else "meter in DM")
            raise ProtocolError(f"expected UA or DM to DISC, got {frame.kind.name}")
        if self.state is LinkState.DISCONNECTED:
            raise ProtocolError(f"HDLC {frame.kind.name} frame on a link that is not connected")
        return self._receive_connected(frame)

    def _receive_connecting(self, frame: HdlcFrame) -> HdlcEvent:
        if frame.kind is FrameKind.DM:
            self.state = LinkState.DISCONNECTED
            raise LinkRefused(f"meter {self.server} answered SNRM with DM (busy with another client?)")
        if frame.kind is not FrameKind.UA:
            raise ProtocolError(f"expected UA to SNRM, got {frame.kind.name}")
        self.parameters = negotiate(self.proposal, HdlcParameters.decode(frame.information))
        self.state = LinkState.CONNECTED
        return Connected(self.parameters)

    def _receive_connected(self, frame: HdlcFrame) -> HdlcEvent:
        if frame.kind is FrameKind.DM:
            self._reset_transfer()
            self.state = LinkState.DISCONNECTED
            return Disconnected("meter dropped the link (DM)")
        if frame.kind not in (FrameKind.INFORMATION, *_SUPERVISORY):
            raise ProtocolError(f"unexpected HDLC {frame.kind.name} frame on a connected link")
        if not self._awaiting_answer:
            raise ProtocolError(f"HDLC {frame.kind.name} frame while no request is outstanding")
        self._acknowledge(frame.receive_sequence)
        if frame.kind is FrameKind.RNR:
            return PeerBusy(self.poll())
        if frame.kind is FrameKind.RR:
            return self._receive_ready()
        return self._receive_information(frame)

    def _acknowledge(self, receive_sequence: int) -> None:
        """Drop our frames that the meter's N(R) confirms."""
        oldest = self._unacknowledged[0][0] if self._unacknowledged else self._send_state
        count = (receive_sequence - oldest) % 8
        if count > len(self._unacknowledged):
            raise ProtocolError(
                f"HDLC N(R)={receive_sequence} acknowledges frames never sent (next N(S) {self._send_state})"
            )
        if count:
            del self._unacknowledged[:count]
            self._recoveries = 0

    def _recover(self, what: str) -> None:
        self._recoveries += 1
        if self._recoveries > MAX_RECOVERIES:
            raise ProtocolError(f"HDLC link to {self.server} keeps failing: {what}")

    def _receive_ready(self) -> HdlcEvent:
        if self._unacknowledged:  # the meter missed frames: go back to the first one it lacks
            self._recover("the meter keeps missing our frames")
            self._send_state = self._unacknowledged[0][0]
            self._pending[:0] = [segment for _, segment in self._unacknowledged]
            self._unacknowledged.clear()
        if self._pending:
            return SendFrames(tuple(self._next_window()))
        raise ProtocolError("meter acknowledged the whole request with RR but sent no answer")

    def _receive_information(self, frame: HdlcFrame) -> HdlcEvent:
        if self._pending or self._unacknowledged:
            raise ProtocolError("meter answered before it received the whole request")
        if frame.send_sequence != self._receive_state:
            duplicate = self._last_accepted == (frame.send_sequence, frame.information)
            self._recover(
                "repeated" if duplicate else f"out-of-sequence I-frames (N(S)={frame.send_sequence})"
            )
            # Ignore it; an RR with our N(R) tells the meter where to go on from.
            return SendFrames((self.poll(),)) if frame.poll_final else AwaitFrame()
        information = frame.information
        if self._first_segment:
            if not information.startswith(LLC_RESPONSE):
                raise ProtocolError(f"first I-frame without the LLC header E6 E7 00: {information[:3].hex()}")
            information = information[len(LLC_RESPONSE) :]
        self._receive_state = (self._receive_state + 1) % 8
        self._last_accepted = (frame.send_sequence, frame.information)
        self._first_segment = False
        self._recoveries = 0
        self._received += information
        if frame.segmented:
            return SendFrames((self.poll(),)) if frame.poll_final else AwaitFrame()
        if not self._received:
            raise ProtocolError("meter answered with an empty APDU")
        apdu = bytes(self._received)
        self._received.clear()
        self._first_segment = True
        self._awaiting_answer = False
        return ApduReceived(apdu)
