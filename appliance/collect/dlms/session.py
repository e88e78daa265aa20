"""The DLMS/COSEM client session: drives the pure protocol code over a serial port or a TCP socket.

Everything about bytes lives in the sans-I/O modules (hdlc, wrapper, apdu, axdr, security); this
module only decides what to send next, reads with a deadline per frame and retries within a bound:

- HDLC (RS-485): SNRM/UA, then AARQ/AARE in I-frames; a frame that does not come within
  `timeout_s`, or comes damaged, is asked for again with an RR poll, at most `retries` times; then
  DeviceTimeout. A silent meter therefore costs (1 + retries) x timeout_s, never more.
- TCP wrapper: one read deadline per answer and no retry (TCP already retransmits; a second copy of
  a request would be a second request). A failure closes the connection, since the stream can no
  longer be trusted to be in step.

Authentication none, low (password) and HLS-GMAC with security suite 0. Under HLS every xDLMS APDU
after the AARQ is glo-ciphered (authenticated encryption) with an invocation counter that comes from
an `InvocationCounters` object (the store, in the daemon): never reused, the meter's checked against
replays. Passwords and keys appear in no log line, repr or error message.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, TypeVar

from appliance.collect.dlms import apdu as A
from appliance.collect.dlms import axdr
from appliance.collect.dlms.hdlc import (
    FLAG,
    MAX_INFO_FIELD,
    MAX_WINDOW,
    ApduReceived,
    AwaitFrame,
    Connected,
    Disconnected,
    HdlcAddress,
    HdlcConnection,
    HdlcEvent,
    HdlcParameters,
    LinkState,
    PeerBusy,
    SendFrames,
    decode_frame,
    frame_bytes_needed,
)
from appliance.collect.dlms.obis import Obis
from appliance.collect.dlms.security import (
    CHALLENGE_MAX,
    CHALLENGE_MIN,
    SYSTEM_TITLE_LENGTH,
    Security,
    SecurityError,
    SecurityKeys,
    hls_gmac,
    is_ciphered_apdu,
    unwrap_apdu,
    verify_hls_gmac,
    wrap_apdu,
)
from appliance.collect.dlms.wrapper import WrapperFrame, decode_wrapper, wrapper_bytes_needed
from appliance.errors import CrcError, DeviceError, DeviceTimeout, HesError, Preempted, ProtocolError

log = logging.getLogger(__name__)
_T = TypeVar("_T")

PUBLIC_CLIENT = 16  # reads without authentication
MANAGEMENT_CLIENT = 1
ASSOCIATION_LN = Obis(0, 0, 40, 0, 0, 255)  # the current association (class 15)
CLASS_ASSOCIATION_LN = 15
CLASS_PROFILE_GENERIC = 7
REPLY_TO_HLS_AUTHENTICATION = 1  # method of class 15
_CIPHERING = Security.AUTHENTICATED_ENCRYPTION

Authentication = Literal["none", "low", "hls-gmac"]
Framing = Literal["hdlc", "wrapper"]
AUTHENTICATIONS: tuple[str, ...] = ("none", "low", "hls-gmac")


class InvocationCounters(Protocol):
    """Where a ciphered session gets its counters (appliance.store.dlms_counters in the daemon)."""

    def next_outgoing(self) -> int:
        """A counter never handed out before under these keys, also across restarts."""
        ...

    def last_incoming(self) -> int | None:
        """The highest counter accepted from the meter (None: none yet under these keys)."""
        ...

    def accept_incoming(self, counter: int) -> None:
        """Remember a counter the meter used, once its APDU passed the replay check."""
        ...


class FramePort(Protocol):
    """A byte pipe to one meter or one bus: `SerialPort` (hw.rs485) or `TcpTransport`."""

    @property
    def is_open(self) -> bool:
        """Whether the port is usable."""
        ...

    def open(self) -> None:
        """Open the device or connect."""
        ...

    def close(self) -> None:
        """Close the device or the connection."""
        ...

    def exchange(self, request: bytes, needed: Callable[[bytes], int], timeout_s: float) -> bytes:
        """Write `request`, then read until `needed` says the frame is whole."""
        ...

    def receive(self, needed: Callable[[bytes], int], timeout_s: float) -> bytes:
        """Read until `needed` says the frame is whole, writing nothing."""
        ...


@dataclass(frozen=True)
class DlmsSettings:
    """How to reach and authenticate to one meter. The password and keys stay out of the repr.

    HDLC: the server address is `logical` (upper, the logical device, 1 = management) and
    `physical` (lower, the meter on the bus; None for a 1-byte address); `address_size` forces
    2 or 4 bytes. Wrapper: source wPort `client`, destination wPort `logical`.
    """

    client: int = PUBLIC_CLIENT
    logical: int = 1
    physical: int | None = None
    address_size: int = 0
    framing: Framing = "hdlc"
    authentication: Authentication = "none"
    password: bytes | None = field(default=None, repr=False)
    system_title: bytes | None = None  # ours, for HLS-GMAC (8 bytes)
    keys: SecurityKeys | None = field(default=None, repr=False)
    max_pdu: int = 0xFFFF  # the largest APDU we accept (InitiateRequest)
    max_info: int = 128  # HDLC information field we propose, both directions
    window: int = 1  # HDLC receive window we propose
    timeout_s: float = 1.0  # per frame
    retries: int = 2  # HDLC: polls after a frame timed out or arrived damaged
    challenge_length: int = 16  # HLS CtoS challenge
    max_response_bytes: int = 4 << 20  # one answer, all blocks: a hostile meter cannot fill memory

    def __post_init__(self) -> None:
        if self.authentication not in AUTHENTICATIONS:
            raise ValueError(f"authentication must be one of {', '.join(AUTHENTICATIONS)}")
        if self.framing not in ("hdlc", "wrapper"):
            raise ValueError("framing must be hdlc or wrapper")
        if self.authentication == "low" and not self.password:
            raise ValueError("low-level authentication needs a password")
        if self.authentication == "hls-gmac":
            if self.keys is None:
                raise ValueError("HLS-GMAC needs the encryption and authentication keys")
            if self.system_title is None or len(self.system_title) != SYSTEM_TITLE_LENGTH:
                raise ValueError(f"HLS-GMAC needs our system title of {SYSTEM_TITLE_LENGTH} bytes")
        if self.timeout_s <= 0 or self.retries < 0:
            raise ValueError("timeout must be positive and retries not negative")
        if not 12 <= self.max_pdu <= 0xFFFF:
            raise ValueError("max PDU size must be 12-65535")
        if not 32 <= self.max_info <= MAX_INFO_FIELD or not 1 <= self.window <= MAX_WINDOW:
            raise ValueError(f"HDLC max info must be 32-{MAX_INFO_FIELD}, window 1-{MAX_WINDOW}")
        if not CHALLENGE_MIN <= self.challenge_length <= CHALLENGE_MAX:
            raise ValueError(f"HLS challenge length must be {CHALLENGE_MIN}-{CHALLENGE_MAX}")
        if self.framing == "hdlc":
            self.hdlc_server  # noqa: B018 (validates the address now, not at the first SNRM)
        elif not (0 <= self.client <= 0xFFFF and 0 <= self.logical <= 0xFFFF):
            raise ValueError("wrapper ports are 16 bits")

    @property
    def hdlc_server(self) -> HdlcAddress:
        """The meter's HDLC address."""
        return HdlcAddress(self.logical, self.physical, self.address_size)

    @property
    def peer(self) -> str:
        """The meter's address as messages name it."""
        if self.framing == "wrapper":
            return f"wPort {self.logical}"
        return str(self.hdlc_server)


# ---------------------------------------------------------------------------------------------------------
# Links: one APDU out, one APDU back


class _HdlcLink:
    """HDLC on a serial port: the HdlcConnection's events, each frame read with a deadline."""

    def __init__(self, port: FramePort, settings: DlmsSettings) -> None:
        self.port, self.settings = port, settings
        proposal = HdlcParameters(settings.max_info, settings.max_info, 1, settings.window)
        self.client = HdlcAddress(settings.client)
        self.server = settings.hdlc_server
        self.conn = HdlcConnection(self.client, self.server, proposal)
        self._budget = 0

    def open(self) -> None:
        if not self.port.is_open:
            self.port.open()
        event = self._run(self.conn.snrm(), self.conn.snrm, "SNRM")
        if not isinstance(event, Connected):
            raise ProtocolError(f"meter {self.server}: unexpected answer to SNRM ({type(event).__name__})")

    def request(self, apdu: bytes) -> bytes:
        event = self._run(b"".join(self.conn.send(apdu)), self.conn.poll, "request")
        if isinstance(event, Disconnected):
            raise ProtocolError(f"meter {self.server} dropped the link: {event.reason}")
        if not isinstance(event, ApduReceived):
            raise ProtocolError(f"meter {self.server}: unexpected {type(event).__name__}")
        return event.apdu

    def close(self) -> None:
        """DISC/UA; a meter that already dropped the link (DM) is fine too."""
        if self.conn.state is LinkState.DISCONNECTED:
            return
        self._run(self.conn.disc(), self.conn.disc, "DISC")

    def abort(self) -> None:
        """Forget the link without a word on the bus: the next SNRM resets the meter's side."""
        self.conn.state = LinkState.DISCONNECTED

    def _ours(self, data: bytes) -> bool:
        """Whether a frame is for this link (or our own echo), not another meter's late answer."""
        try:
            frame = decode_frame(data)
        except ProtocolError:
            return True  # let the connection raise the typed error
        addresses = (frame.destination, frame.source)
        return addresses in ((self.client, self.server), (self.server, self.client))

    def _run(self, first: bytes, recover: Callable[[], bytes], what: str) -> HdlcEvent:
        """Write `first`, then follow the connection's events until it has an answer for us.

        A frame that times out or fails its checksum is asked for again with `recover()` (a poll,
        or the SNRM/DISC again), at most `retries` times in a row.
        """
        settings = self.settings
        outgoing: bytes | None = first
        failures = 0
        self._budget = settings.max_response_bytes + 4096
        while True:
            try:
                event = self._next_event(outgoing)
            except (DeviceTimeout, CrcError) as exc:
                failures += 1
                if failures > settings.retries:
                    if isinstance(exc, DeviceTimeout):
                        raise DeviceTimeout(
                            f"meter {self.server}: no answer to {what} in {failures} tries of "
                            f"{settings.timeout_s:g} s"
                        ) from exc
                    raise
                log.debug("meter %s: %s, asking again (%d/%d)", self.server, exc, failures, settings.retries)
                outgoing = recover()
                continue
            if event is None or isinstance(event, AwaitFrame):
                outgoing = None
            elif isinstance(event, SendFrames):
                failures = 0
                outgoing = b"".join(event.frames)
            elif isinstance(event, PeerBusy):
                failures += 1
                if failures > settings.retries:
                    raise DeviceTimeout(f"meter {self.server} stays busy (RNR) after {failures} polls")
                time.sleep(min(settings.timeout_s / 4, 0.1))
                outgoing = event.poll
            else:
                return event

    def _next_event(self, outgoing: bytes | None) -> HdlcEvent | None:
        """Write `outgoing` (if any) and read one frame; None for a frame to another address."""
        timeout_s = self.settings.timeout_s
        if outgoing is None:
            data = bytes((FLAG,)) + self.port.receive(_next_frame_needed, timeout_s)
        else:
            data = self.port.exchange(outgoing, frame_bytes_needed, timeout_s)
        self._budget -= len(data)
        if self._budget < 0:
            raise ProtocolError(f"meter {self.server}: answer longer than {self.settings.max_response_bytes}")
        if not self._ours(data):
            log.debug("meter %s: skipped a frame for another address", self.server)
            return None
        return self.conn.receive(data)


def _next_frame_needed(data: bytes) -> int:
    """The next frame of a window, whose opening flag may be the previous frame's closing one."""
    return frame_bytes_needed(bytes((FLAG,)) + data)


class _WrapperLink:
    """The TCP wrapper: one frame out, one frame back, one deadline, no retry."""

    def __init__(self, port: FramePort, settings: DlmsSettings) -> None:
        self.port, self.settings = port, settings

    def open(self) -> None:
        if not self.port.is_open:
            self.port.open()

    def request(self, apdu: bytes) -> bytes:
        settings = self.settings
        frame = WrapperFrame(settings.client, settings.logical, apdu).encode()
        try:
            data = self.port.exchange(frame, wrapper_bytes_needed, settings.timeout_s)
        except DeviceTimeout as exc:
            raise DeviceTimeout(
                f"meter {settings.peer}: no answer within {settings.timeout_s:g} s ({exc})"
            ) from exc
        reply = decode_wrapper(data)
        if (reply.source, reply.destination) != (settings.logical, settings.client):
            raise ProtocolError(
                f"wrapper frame from wPort {reply.source} to {reply.destination}, expected from "
                f"{settings.logical} to {settings.client}"
            )
        return reply.apdu

    def close(self) -> None:
        """Nothing to say on the wire: the connection stays for the next association."""

    def abort(self) -> None:
        """The stream may hold half an answer: start again on a new connection."""
        self.port.close()


# ---------------------------------------------------------------------------------------------------------
# The session


class DlmsSession:
    """One client association with one meter: associate, get, set, action, release.

    Not thread-safe: one bus worker owns it. After a timeout or a protocol error the association is
    gone (`associated` is False); call `associate()` again. A refusal by the meter (DeviceError)
    leaves it usable.
    """

    def __init__(
        self,
        port: FramePort,
        settings: DlmsSettings,
        counters: InvocationCounters | None = None,
        challenge: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if settings.authentication == "hls-gmac" and counters is None:
            raise ValueError("an HLS-GMAC session needs stored invocation counters")
        self.settings = settings
        self.counters = counters
        self._challenge = challenge
        self._link: _HdlcLink | _WrapperLink = (
            _HdlcLink(port, settings) if settings.framing == "hdlc" else _WrapperLink(port, settings)
        )
        self._associated = False
        self._ciphered = False
        self._meter_title: bytes | None = None
        self.server_max_pdu = 0
        self.conformance = A.Conformance(0)

    # -- state

    @property
    def associated(self) -> bool:
        """Whether requests can be sent now."""
        return self._associated

    @property
    def meter_system_title(self) -> bytes | None:
        """The meter's system title from the AARE (HLS only)."""
        return self._meter_title

    def __repr__(self) -> str:
        state = "associated" if self._associated else "idle"
        return f"DlmsSession({self.settings.peer}, client {self.settings.client}, {state})"

    def __enter__(self) -> DlmsSession:
        self.associate()
        return self

    def __exit__(self, exc_type: object, exc: object, _traceback: object) -> None:
        """Release after success or a refusal (the association still stands); abort otherwise. A poll
        that gives way to a command only hangs up: the meter may be half-way through a long answer."""
        if isinstance(exc, Preempted):
            self._hang_up()
        elif not self._associated or not (exc is None or isinstance(exc, HesError)):
            self.abort()
        elif exc is None:
            self.release()
        else:
            try:
                self.release()
            except HesError as failure:  # the body's error is the one worth raising
                log.debug("meter %s: release after an error failed: %s", self.settings.peer, failure)

    # -- association

    def associate(self) -> None:
        """Open the link and the association (and pass HLS 3/4). Typed errors only; never hangs."""
        if self._associated:
            return
        self._ciphered = False
        self._meter_title = None
        self.server_max_pdu = 0
        try:
            self._link.open()
            self._associate()
        except DeviceError as exc:
            if isinstance(exc, A.ExceptionResponseError):
                self._follow_counter(exc.response)
            self._hang_up()  # the meter answered: say goodbye so its link is free for the next try
            raise
        except HesError:
            self.abort()
            raise
        self._associated = True
        log.debug(
            "meter %s: associated as client %d (%s), max PDU %d",
            self.settings.peer,
            self.settings.client,
            self.settings.authentication,
            self.server_max_pdu,
        )

    def _associate(self) -> None:
        settings = self.settings
        initiate = A.InitiateRequest(client_max_receive_pdu_size=settings.max_pdu)
        ctos = b""
        if settings.authentication == "none":
            aarq = A.Aarq(user_information=initiate)
        elif settings.authentication == "low":
            aarq = A.Aarq(
                mechanism=A.Mechanism.LOW,
                calling_authentication_value=settings.password,
                user_information=initiate,
            )
        else:
            ctos = self._challenge(settings.challenge_length)
            glo = wrap_apdu(
                initiate.to_bytes(),
                keys=self._keys,
                security=_CIPHERING,
                system_title=self._title,
                invocation_counter=self._counters.next_outgoing(),
            )
            aarq = A.Aarq(
                A.ApplicationContext.LOGICAL_NAME_CIPHERED,
                calling_ap_title=self._title,
                mechanism=A.Mechanism.HIGH_GMAC,
                calling_authentication_value=ctos,
                user_information=A.CipheredApdu(glo),
            )
        aare = A.parse_aare(self._link.request(aarq.to_bytes()))
        information = aare.user_information
        if settings.authentication == "hls-gmac":
            stoc = aare.responding_authentication_value
            title = aare.responding_ap_title
            if not aare.authentication_required or stoc is None:
                raise SecurityError(f"meter {settings.peer} accepted HLS-GMAC without a challenge")
            if title is None or len(title) != SYSTEM_TITLE_LENGTH:
                raise SecurityError(f"meter {settings.peer} sent no valid system title in its AARE")
            self._meter_title = title
            if not isinstance(information, A.CipheredApdu):
                raise SecurityError(f"meter {settings.peer} answered a ciphered AARQ in clear")
            information = A.InitiateResponse.from_bytes(self._unwrap(information.raw))
        elif aare.authentication_required:
            raise ProtocolError(
                f"meter {settings.peer} asks for HLS, the settings say {settings.authentication}"
            )
        if not isinstance(information, A.InitiateResponse):
            raise ProtocolError(f"meter {settings.peer}: AARE without an InitiateResponse")
        self.server_max_pdu = information.server_max_receive_pdu_size
        self.conformance = information.negotiated_conformance
        if settings.authentication == "hls-gmac":
            assert stoc is not None
            self._ciphered = True
            self._reply_to_hls(stoc, ctos)

    def _reply_to_hls(self, stoc: bytes, ctos: bytes) -> None:
        """HLS pass 3 and 4: send f(StoC), check the meter's f(CtoS)."""
        counters = self._counters
        f_stoc = hls_gmac(
            stoc, keys=self._keys, system_title=self._title, invocation_counter=counters.next_outgoing()
        )
        before = counters.last_incoming()  # f(CtoS) is older than the response that carries it
        answer = self._action(
            CLASS_ASSOCIATION_LN, ASSOCIATION_LN, REPLY_TO_HLS_AUTHENTICATION, axdr.OctetString(f_stoc)
        )
        if not isinstance(answer, axdr.OctetString):
            raise SecurityError(f"meter {self.settings.peer} did not answer our HLS challenge")
        assert self._meter_title is not None
        counter = verify_hls_gmac(
            answer.value,
            challenge=ctos,
            keys=self._keys,
            peer_system_title=self._meter_title,
            last_invocation_counter=before,
        )
        counters.accept_incoming(counter)

    def release(self) -> None:
        """RLRQ/RLRE, then DISC/UA on HDLC. The link is closed even when the RLRQ fails."""
        if not self._associated:
            self.abort()
            return
        self._associated = False
        try:
            A.parse_release_response(self._link.request(A.ReleaseRequest().to_bytes()))
        except DeviceTimeout:
            self.abort()  # a silent meter would only make the DISC wait as long again
            raise
        except HesError:
            self._hang_up()
            raise
        try:
            self._link.close()
        except HesError:
            self.abort()
            raise
        log.debug("meter %s: released", self.settings.peer)

    def abort(self) -> None:
        """Drop the association without waiting for the meter (after a failure); closes TCP."""
        self._associated = False
        self._ciphered = False
        self._link.abort()

    def _hang_up(self) -> None:
        """Close the link politely if the meter is answering, otherwise just forget it."""
        self._associated = False
        self._ciphered = False
        try:
            self._link.close()
        except HesError as exc:
            log.debug("meter %s: no clean disconnect: %s", self.settings.peer, exc)
        self._link.abort()

    # -- services

    def get(
        self, class_id: int, obis: Obis | str, attribute: int, access: A.AccessSelection | None = None
    ) -> axdr.Data:
        """One attribute's value, whatever number of blocks the meter sends it in."""
        descriptor = A.AttributeDescriptor(class_id, _obis(obis), attribute)
        return self._call(lambda: self._get(descriptor, access))

    def get_range(
        self,
        obis: Obis | str,
        start: datetime,
        end: datetime,
        class_id: int = CLASS_PROFILE_GENERIC,
        attribute: int = 2,
        columns: tuple[A.CaptureObject, ...] = (),
    ) -> axdr.Data:
        """Profile rows captured from `start` to `end` (aware datetimes, both bounds inclusive).

        The bounds go out as date-times in the zone of the datetimes given, with their deviation.
        """
        range_ = A.RangeDescriptor.between(
            axdr.DateTime.from_datetime(start), axdr.DateTime.from_datetime(end), columns
        )
        return self.get(class_id, obis, attribute, range_.to_access_selection())

    def get_entries(
        self,
        obis: Obis | str,
        first: int = 1,
        last: int = 0,
        class_id: int = CLASS_PROFILE_GENERIC,
        attribute: int = 2,
    ) -> axdr.Data:
        """Profile entries `first` to `last` (1 = the oldest the meter holds, last 0 = the newest)."""
        entries = A.EntryDescriptor(first, last)
        return self.get(class_id, obis, attribute, entries.to_access_selection())

    def set(self, class_id: int, obis: Obis | str, attribute: int, value: axdr.Data) -> None:
        """Write one attribute; DataAccessError if the meter refuses."""
        descriptor = A.AttributeDescriptor(class_id, _obis(obis), attribute)

        def write() -> None:
            A.parse_set_response(self._service(A.SetRequestNormal(descriptor, value).to_bytes()))

        self._call(write)

    def action(
        self, class_id: int, obis: Obis | str, method: int, parameters: axdr.Data | None = None
    ) -> axdr.Data | None:
        """Invoke one method; its return data, if any. ActionError if the meter refuses."""
        target = _obis(obis)
        return self._call(lambda: self._action(class_id, target, method, parameters))

    def _action(
        self, class_id: int, obis: Obis, method: int, parameters: axdr.Data | None
    ) -> axdr.Data | None:
        request = A.ActionRequestNormal(A.MethodDescriptor(class_id, obis, method), parameters)
        reply = self._service(request.to_bytes())
        if len(reply) == 4 and reply[:2] == bytes((A.TAG_ACTION_RESPONSE, 1)):
            # Some meters (gurux's server among them) leave out the return-parameters presence flag
            # when there are none, a refusal above all: read it as absent rather than fail the link.
            reply += b"\x00"
        data = A.parse_action_response(reply).return_data
        return data if isinstance(data, axdr.Data) else None

    def _get(self, descriptor: A.AttributeDescriptor, access: A.AccessSelection | None) -> axdr.Data:
        response = A.parse_get_response(self._service(A.GetRequestNormal(descriptor, access).to_bytes()))
        if isinstance(response, A.GetResponseNormal):
            assert isinstance(response.result, axdr.Data)  # a refusal raised in parse_get_response
            return response.result
        raw = bytearray()
        expected = 1
        while True:
            if response.block_number != expected:
                raise ProtocolError(
                    f"meter {self.settings.peer}: block {response.block_number} where {expected} was due"
                )
            assert isinstance(response.result, bytes)
            raw += response.result
            if len(raw) > self.settings.max_response_bytes:
                limit = self.settings.max_response_bytes
                raise ProtocolError(f"meter {self.settings.peer}: {descriptor} longer than {limit} bytes")
            if response.last_block:
                break
            request = A.GetRequestNext(response.block_number)
            following = A.parse_get_response(self._service(request.to_bytes()))
            if not isinstance(following, A.GetResponseWithDatablock):
                raise ProtocolError(
                    f"meter {self.settings.peer}: block transfer ended without its last block"
                )
            response = following
            expected += 1
        log.debug("meter %s: %s in %d blocks, %d bytes", self.settings.peer, descriptor, expected, len(raw))
        return axdr.decode(bytes(raw))

    def _call(self, operation: Callable[[], _T]) -> _T:
        """Run one service; any failure but the meter's refusal ends the association."""
        if not self._associated:
            raise ProtocolError(f"meter {self.settings.peer}: not associated")
        try:
            return operation()
        except DeviceError as exc:
            if isinstance(exc, A.ExceptionResponseError):
                self._follow_counter(exc.response)
            raise
        except HesError:
            self.abort()
            raise

    def _follow_counter(self, response: A.ExceptionResponse) -> None:
        """The meter names the counter it expects: go on from there (our store was lost or copied)."""
        skip = getattr(self.counters, "skip_outgoing_to", None)
        if response.invocation_counter is not None and skip is not None:
            skip(response.invocation_counter)

    # -- one APDU, ciphered if the association is

    def _service(self, plain: bytes) -> bytes:
        wire = plain
        if self._ciphered:
            wire = wrap_apdu(
                plain,
                keys=self._keys,
                security=_CIPHERING,
                system_title=self._title,
                invocation_counter=self._counters.next_outgoing(),
            )
        if self.server_max_pdu and len(wire) > self.server_max_pdu:
            raise ProtocolError(
                f"request of {len(wire)} bytes exceeds the meter's PDU size {self.server_max_pdu}"
            )
        reply = self._link.request(wire)
        if not self._ciphered:
            return reply
        if is_ciphered_apdu(reply):
            return self._unwrap(reply)
        if reply[:1] == bytes((A.TAG_EXCEPTION_RESPONSE,)):
            return reply  # a refusal cannot grant anything: accepted in clear, raised by the parser
        raise SecurityError(f"meter {self.settings.peer} answered in clear in a ciphered association")

    def _unwrap(self, data: bytes) -> bytes:
        counters = self._counters
        unwrapped = unwrap_apdu(
            data,
            keys=self._keys,
            security=_CIPHERING,
            peer_system_title=self._meter_title,
            last_invocation_counter=counters.last_incoming(),
        )
        counters.accept_incoming(unwrapped.invocation_counter)
        return unwrapped.apdu

    @property
    def _keys(self) -> SecurityKeys:
        assert self.settings.keys is not None
        return self.settings.keys

    @property
    def _title(self) -> bytes:
        assert self.settings.system_title is not None
        return self.settings.system_title

    @property
    def _counters(self) -> InvocationCounters:
        assert self.counters is not None
        return self.counters


def _obis(obis: Obis | str) -> Obis:
    return obis if isinstance(obis, Obis) else Obis.parse(obis)
