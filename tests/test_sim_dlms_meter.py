"""The simulated DLMS meter (gurux's server, patched) against clients that are not ours.

gurux's own GXDLMSClient drives it over a real socat pty pair and over TCP, with the byte I/O
written here (frames read by their length field); dlms-cosem is a second client where it can be:
over the TCP wrapper for everything it supports, over HDLC only for frames known to hold no 0x7E
(its HDLC reader splits frames at any 0x7E byte, FIELD-NOTES).
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from dlms_cosem import cosem, enumerations
from dlms_cosem.client import DlmsClient
from dlms_cosem.cosem.selective_access import CaptureObject, RangeDescriptor
from dlms_cosem.exceptions import DlmsClientException
from dlms_cosem.io import BlockingTcpIO, HdlcTransport, SerialIO, TcpTransport
from dlms_cosem.parsers import ProfileGenericBufferParser
from dlms_cosem.security import (
    HighLevelSecurityGmacAuthentication,
    LowLevelSecurityAuthentication,
    NoSecurityAuthentication,
)
from dlms_cosem.time import datetime_from_bytes
from dlms_cosem.utils import parse_as_dlms_data
from gurux_dlms import GXByteBuffer, GXDLMSClient, GXDLMSException, GXReplyData
from gurux_dlms.enums import (
    Authentication,
    DataType,
    InterfaceType,
    ObjectType,
    Security,
    SourceDiagnostic,
)
from gurux_dlms.objects import (
    GXDLMSClock,
    GXDLMSData,
    GXDLMSDisconnectControl,
    GXDLMSProfileGeneric,
    GXDLMSRegister,
)
from gurux_dlms.secure import GXDLMSSecureClient

from appliance.sim.dlms_meter import SimulatedDlmsBus, parse_meter
from appliance.sim.dlms_objects import EnergyModel, MeterClock, MeterConfig
from appliance.sim.ptys import PtyPair

PASSWORD = "12345678"
TITLE = bytes.fromhex("4D4D4D0000BC614E")
EK = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
AK = bytes.fromhex("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF")
CLIENT_TITLE = b"HESTEST1"
_counters = itertools.count(1000, 1000)  # each meter process keeps the highest counter it saw


def fresh_counter() -> int:
    """A client invocation counter above every one used before in this test run."""
    return next(_counters)


QUARTER = dt.timedelta(minutes=15)
TIMEOUT = 0.5


# ---------------------------------------------------------------------------------------------
# Byte I/O for gurux's client (gurux's Python package has no media layer of its own).
# ---------------------------------------------------------------------------------------------


class NoAnswer(Exception):
    """The meter stayed silent for the whole timeout."""


class SerialFrames:
    """HDLC frames on a serial port, read by their length field (a 0x7E inside is legal)."""

    def __init__(self, device: Path) -> None:
        self.port = serial.Serial(str(device), 9600, timeout=TIMEOUT)
        self.sent = self.received = 0

    def write(self, data: bytes) -> None:
        self.port.write(data)
        self.sent += len(data)

    def read_frame(self) -> bytes:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.port.read(1) != b"\x7e":
                continue
            head = self.port.read(2)
            if len(head) < 2 or head[0] & 0xF0 != 0xA0:
                continue
            length = ((head[0] & 0x07) << 8) | head[1]
            rest = self.port.read(length - 1)
            frame = b"\x7e" + head + rest
            if len(rest) == length - 1 and frame[-1] == 0x7E:
                self.received += len(frame)
                return frame
        raise NoAnswer

    def close(self) -> None:
        self.port.close()


class WrapperFrames:
    """Wrapper PDUs on a TCP socket: 8-byte header with the length."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sent = self.received = 0

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def _exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            try:
                chunk = self.sock.recv(n - len(out))
            except TimeoutError as error:
                raise NoAnswer from error
            if not chunk:
                raise NoAnswer
            out += chunk
        return out

    def read_frame(self) -> bytes:
        head = self._exactly(8)
        frame = head + self._exactly(int.from_bytes(head[6:8], "big"))
        self.received += len(frame)
        return frame

    def close(self) -> None:
        self.sock.close()


class Gurux:
    """gurux's GXDLMSClient plus the exchange loop (RR for segments, next block for long GETs)."""

    def __init__(self, client: GXDLMSClient, io: SerialFrames | WrapperFrames) -> None:
        self.client, self.io = client, io

    def exchange(self, frames: object) -> GXReplyData:
        reply = GXReplyData()
        for frame in frames if isinstance(frames, list) else [frames]:
            if frame is None:
                continue
            self._one(bytes(frame), reply)
            while reply.isMoreData():
                self._one(bytes(self.client.receiverReady(reply)), reply)
        if reply.error:
            raise GXDLMSException(reply.error)
        return reply

    def _one(self, frame: bytes, reply: GXReplyData) -> None:
        self.io.write(frame)
        notify = GXReplyData()
        while not self.client.getData(GXByteBuffer(self.io.read_frame()), reply, notify):
            pass

    def associate(self) -> None:
        reply = self.exchange(self.client.snrmRequest())
        if self.client.interfaceType == InterfaceType.HDLC:
            self.client.parseUAResponse(reply.data)
        self.client.parseAareResponse(self.exchange(self.client.aarqRequest()).data)
        if self.client.getIsAuthenticationRequired():
            reply = self.exchange(self.client.getApplicationAssociationRequest())
            self.client.parseApplicationAssociationResponse(reply.data)

    def release(self) -> None:
        self.exchange(self.client.releaseRequest())
        if self.client.interfaceType == InterfaceType.HDLC:
            self.exchange(self.client.disconnectRequest())

    def read(self, obj: object, attribute: int) -> object:
        reply = self.exchange(self.client.read(obj, attribute))
        self.client.updateValue(obj, attribute, reply.value)
        return obj.getValues()[attribute - 1]

    def rows(self, frames: list) -> list:
        pg = frames[1]
        reply = self.exchange(frames[0])
        pg.buffer = []  # gurux appends to whatever the object held
        self.client.updateValue(pg, 2, reply.value)
        return pg.buffer

    def close(self) -> None:
        self.io.close()


def gurux_client(
    server: int,
    client: int = 16,
    auth: Authentication = Authentication.NONE,
    password: str | None = None,
    wrapper: bool = False,
    keys: tuple[bytes, bytes] = (EK, AK),
    counter: int = 1,
) -> GXDLMSClient:
    interface = InterfaceType.WRAPPER if wrapper else InterfaceType.HDLC
    address = server if wrapper else GXDLMSClient.getServerAddress(1, server, 4)
    if auth != Authentication.HIGH_GMAC:
        return GXDLMSClient(True, client, address, auth, password, interface)
    secure = GXDLMSSecureClient(True, client, address, auth, None, interface)
    secure.ciphering.security = Security.AUTHENTICATION_ENCRYPTION
    secure.ciphering.systemTitle = CLIENT_TITLE
    secure.ciphering.blockCipherKey, secure.ciphering.authenticationKey = keys
    secure.ciphering.invocationCounter = counter
    return secure


# ---------------------------------------------------------------------------------------------
# Simulators: two meters on one pty, one paced meter, one meter on TCP (module-wide, ~1 s).
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PtyPair]:
    directory = tmp_path_factory.mktemp("dlms")
    meters = [
        parse_meter(f"17:password={PASSWORD},title={TITLE.hex()},offset=-120"),
        parse_meter(f"18:password={PASSWORD},serial=87654321,mode=2", seed=3),
    ]
    with PtyPair(directory, "D") as pair, SimulatedDlmsBus(meters, port=pair.peer):
        yield pair


@pytest.fixture(scope="module")
def tcp() -> Iterator[int]:
    meters = [MeterConfig(1, password=PASSWORD.encode(), system_title=TITLE, seed=5, tz_minutes=60)]
    with SimulatedDlmsBus(meters, tcp_port=0) as sim:
        yield sim.tcp_port


@pytest.fixture
def line(bus: PtyPair) -> Iterator[SerialFrames]:
    io = SerialFrames(bus.device)
    yield io
    io.close()


def on_bus(line: SerialFrames, server: int = 17, **kwargs: object) -> Gurux:
    return Gurux(gurux_client(server, **kwargs), line)


def management(line: SerialFrames, server: int = 17) -> Gurux:
    return on_bus(line, server, client=1, auth=Authentication.LOW, password=PASSWORD)


def utc(value: object) -> dt.datetime:
    return value.value.astimezone(dt.UTC)


# ---------------------------------------------------------------------------------------------
# Associations and plain reads over HDLC.
# ---------------------------------------------------------------------------------------------


def test_public_client_reads_clock_identity_and_registers(line: SerialFrames) -> None:
    meter = on_bus(line)
    meter.associate()
    clock = GXDLMSClock()
    shown = utc(meter.read(clock, 2))
    assert meter.read(clock, 3) == 0  # deviation: the meter runs on UTC
    expected = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=120)  # offset=-120
    assert abs((shown - expected).total_seconds()) < 2
    assert bytes(meter.read(GXDLMSData("0.0.96.1.0.255"), 2)) == b"00000017"  # seed 0, address 17
    assert bytes(meter.read(GXDLMSData("0.0.42.0.0.255"), 2)) == b"SIM00000017"
    energy = GXDLMSRegister("1.0.1.8.0.255")
    meter.read(energy, 3)
    assert (energy.scaler, int(energy.unit)) == (1.0, 30)  # 10**0 Wh
    first = meter.read(energy, 2)
    assert energy.getDataType(2) == DataType.UINT32
    export = GXDLMSRegister("1.0.2.8.0.255")
    meter.read(export, 3)
    assert int(export.unit) == 30 and 0 < meter.read(export, 2) < first
    time.sleep(0.5)
    assert meter.read(energy, 2) >= first  # a counter never goes down
    meter.release()


def test_low_level_password_and_a_wrong_one(line: SerialFrames) -> None:
    wrong = on_bus(line, client=1, auth=Authentication.LOW, password=PASSWORD[::-1])
    with pytest.raises(GXDLMSException) as refused:
        wrong.associate()
    assert refused.value.diagnostic == SourceDiagnostic.AUTHENTICATION_FAILURE
    wrong.exchange(wrong.client.disconnectRequest())
    none_on_management = on_bus(line, client=1)
    with pytest.raises(GXDLMSException):
        none_on_management.associate()  # only the public client may skip authentication
    none_on_management.exchange(none_on_management.client.disconnectRequest())
    right = management(line)
    right.associate()
    assert right.read(GXDLMSRegister("1.0.1.8.0.255"), 2) > 0
    right.release()


def test_hls_gmac_associates_and_refuses_wrong_keys_and_old_counters(line: SerialFrames) -> None:
    start = fresh_counter()
    meter = on_bus(line, client=1, auth=Authentication.HIGH_GMAC, counter=start)
    meter.associate()
    assert meter.client.settings.sourceSystemTitle == TITLE  # the meter's title from the AARE
    assert utc(meter.read(GXDLMSClock(), 2)).year >= 2024
    energy = GXDLMSRegister("1.0.1.8.0.255")
    assert meter.read(energy, 2) > 0
    meter.client.ciphering.security = Security.NONE
    with pytest.raises(GXDLMSException):
        meter.read(energy, 2)  # an HLS association takes ciphered requests only
    meter.client.ciphering.security = Security.AUTHENTICATION_ENCRYPTION
    meter.release()

    bad_key = on_bus(
        line, client=1, auth=Authentication.HIGH_GMAC, keys=(EK, bytes(16)), counter=fresh_counter()
    )
    with pytest.raises(GXDLMSException):
        bad_key.associate()  # the AARQ's ciphered user-information fails its GCM tag
    bad_key.exchange(bad_key.client.disconnectRequest())

    replay = on_bus(line, client=1, auth=Authentication.HIGH_GMAC, counter=start)
    with pytest.raises(GXDLMSException):
        replay.associate()  # counter `start` was used by the first association
    replay.exchange(replay.client.disconnectRequest())

    public = on_bus(line)
    public.associate()
    counter = GXDLMSData("0.0.43.1.0.255")
    assert public.read(counter, 2) > start  # next counter the meter accepts
    public.release()

    again = on_bus(line, client=1, auth=Authentication.HIGH_GMAC, counter=fresh_counter())
    again.associate()
    again.release()


def test_reassociation_over_hdlc_survives_garbage(line: SerialFrames) -> None:
    for junk in (os.urandom(40), b"\x7e\xa8\xff" + os.urandom(10), b"\x7e\xa0\x07\x03\x21\x93\x00\x00\x7e"):
        line.write(junk)  # random bytes, a frame start claiming 2 kB, a bad FCS
        time.sleep(0.15)  # the meter abandons a frame start after a quiet gap
        line.port.reset_input_buffer()
        meter = on_bus(line)
        meter.associate()
        assert meter.read(GXDLMSRegister("1.0.2.8.0.255"), 2) > 0
        meter.release()


# ---------------------------------------------------------------------------------------------
# Profiles: whole, by range, by entry; the event log.
# ---------------------------------------------------------------------------------------------


def capture(meter: Gurux, obis: str) -> GXDLMSProfileGeneric:
    pg = GXDLMSProfileGeneric(obis)
    meter.read(pg, 3)
    return pg


def test_load_profile_whole_by_range_and_by_entry(line: SerialFrames) -> None:
    meter = on_bus(line)
    meter.associate()
    pg = capture(meter, "1.0.99.1.0.255")
    columns = [(obj.objectType, obj.logicalName, co.attributeIndex) for obj, co in pg.captureObjects]
    assert columns == [
        (ObjectType.CLOCK, "0.0.1.0.0.255", 2),
        (ObjectType.REGISTER, "1.0.1.8.0.255", 2),
        (ObjectType.REGISTER, "1.0.2.8.0.255", 2),
    ]
    assert meter.read(pg, 4) == 900
    entries = meter.read(pg, 7)
    assert entries >= 30 * 96

    whole = meter.rows([meter.client.read(pg, 2), pg])
    assert len(whole) == entries
    stamps = [utc(row[0]) for row in whole]
    assert all(b - a == QUARTER for a, b in itertools.pairwise(stamps))
    assert all(a[1] <= b[1] and a[2] <= b[2] for a, b in itertools.pairwise(whole))
    meter_now = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=120)
    assert dt.timedelta(0) <= meter_now - stamps[-1] < QUARTER + dt.timedelta(seconds=2)
    consumption = [b[1] - a[1] for a, b in itertools.pairwise(whole)]
    assert 20 < sum(consumption[-96:]) / 96 < 400  # Wh per quarter hour: a household
    assert len(set(consumption)) > 50  # not a straight line

    energy = meter.read(GXDLMSRegister("1.0.1.8.0.255"), 2)
    assert whole[-1][1] <= energy  # the register has moved on since the last capture

    start, end = stamps[-97], stamps[-1]
    by_range = meter.rows([meter.client.readRowsByRange(pg, start, end), pg])
    assert [utc(r[0]) for r in by_range] == stamps[-97:]  # both bounds inclusive
    assert [r[1:] for r in by_range] == [r[1:] for r in whole[-97:]]
    between = meter.rows([meter.client.readRowsByRange(pg, start + dt.timedelta(minutes=1), end), pg])
    assert len(between) == 96
    future = meter.rows([meter.client.readRowsByRange(pg, end + QUARTER, end + 4 * QUARTER), pg])
    assert future == []

    by_entry = meter.rows([meter.client.readRowsByEntry(pg, 1, 3), pg])
    assert [utc(r[0]) for r in by_entry] == stamps[:3]
    last = meter.rows([meter.client.readRowsByEntry(pg, entries - 1, 0), pg])
    assert [r[1] for r in last] == [r[1] for r in whole[-2:]]
    meter.release()


def test_event_log_and_clock_setting(line: SerialFrames) -> None:
    meter = management(line, 18)
    meter.associate()
    log = capture(meter, "0.0.99.98.0.255")
    assert [(o.logicalName, c.attributeIndex) for o, c in log.captureObjects] == [
        ("0.0.1.0.0.255", 2),
        ("0.0.96.11.0.255", 2),
    ]
    before = meter.rows([meter.client.read(log, 2), log])
    codes = [row[1] for row in before]
    assert {1, 2, 44} <= set(codes)  # power down, power up, meter cover opened
    assert codes.index(1) < codes.index(2)

    clock = GXDLMSClock()
    target = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    clock.time = target
    meter.exchange(meter.client.write(clock, 2))
    shown = utc(meter.read(clock, 2))
    assert abs((shown - target).total_seconds()) < 2
    after = meter.rows([meter.client.read(log, 2), log])
    assert [row[1] for row in after[len(before) :]] == [4, 5]  # clock adjusted: old, new time
    pg = capture(meter, "1.0.99.1.0.255")
    newest = meter.rows([meter.client.readRowsByEntry(pg, meter.read(pg, 7), 0), pg])
    assert target - QUARTER <= utc(newest[0][0]) <= target

    clock.time = dt.datetime.now(dt.UTC)
    meter.exchange(meter.client.write(clock, 2))
    meter.release()

    public = on_bus(line, 18)
    public.associate()
    clock.time = target
    with pytest.raises(GXDLMSException):
        public.exchange(public.client.write(clock, 2))  # the public client only reads
    public.release()


# ---------------------------------------------------------------------------------------------
# Disconnect control.
# ---------------------------------------------------------------------------------------------


def relay(meter: Gurux, dc: GXDLMSDisconnectControl) -> tuple[bool, int, int]:
    return meter.read(dc, 2), int(meter.read(dc, 3)), int(meter.read(dc, 4))


def test_disconnect_control_methods_and_state(line: SerialFrames) -> None:
    dc = GXDLMSDisconnectControl("0.0.96.3.10.255")
    meter = management(line, 17)
    meter.associate()
    assert relay(meter, dc) == (True, 1, 1)
    meter.exchange(dc.remoteDisconnect(meter.client))
    assert relay(meter, dc) == (False, 0, 1)
    meter.exchange(dc.remoteReconnect(meter.client))  # mode 1: reconnects directly
    assert relay(meter, dc) == (True, 1, 1)
    meter.release()

    mode2 = management(line, 18)
    mode2.associate()
    mode2.exchange(dc.remoteDisconnect(mode2.client))
    mode2.exchange(dc.remoteReconnect(mode2.client))  # mode 2: ready, the customer closes it
    assert relay(mode2, dc) == (False, 2, 2)
    mode2.release()

    public = on_bus(line, 18)
    public.associate()
    with pytest.raises(GXDLMSException):
        public.exchange(dc.remoteDisconnect(public.client))
    assert relay(public, dc) == (False, 2, 2)
    public.release()


# ---------------------------------------------------------------------------------------------
# The bus: two meters on one pty, each answering only its own address.
# ---------------------------------------------------------------------------------------------


def test_two_meters_on_one_pty_answer_only_their_own_address(line: SerialFrames) -> None:
    serials = {}
    for address in (17, 18):
        meter = on_bus(line, address)
        meter.associate()
        serials[address] = bytes(meter.read(GXDLMSData("0.0.96.1.0.255"), 2))
        meter.release()
    assert serials[18] == b"87654321" and serials[17] != serials[18]

    absent = on_bus(line, 19)
    started = time.monotonic()
    with pytest.raises(NoAnswer):
        absent.exchange(absent.client.snrmRequest())
    assert time.monotonic() - started >= TIMEOUT * 0.9

    other_logical = Gurux(
        GXDLMSClient(True, 16, GXDLMSClient.getServerAddress(2, 17, 4), interfaceType=InterfaceType.HDLC),
        line,
    )
    with pytest.raises(NoAnswer):
        other_logical.exchange(other_logical.client.snrmRequest())

    a, b = on_bus(line, 17), on_bus(line, 18)
    a.associate()
    b.associate()  # both associated at once: the frames are told apart by address
    ra, rb = GXDLMSRegister("1.0.1.8.0.255"), GXDLMSRegister("1.0.1.8.0.255")
    assert a.read(ra, 2) != b.read(rb, 2)
    a.release()
    b.release()


# ---------------------------------------------------------------------------------------------
# The TCP wrapper.
# ---------------------------------------------------------------------------------------------


def test_wrapper_on_tcp_with_every_authentication_and_reassociation(tcp: int) -> None:
    for _attempt in range(3):
        for kwargs in (
            {},
            {"client": 1, "auth": Authentication.LOW, "password": PASSWORD},
            {
                "client": 1,
                "auth": Authentication.HIGH_GMAC,
                "counter": fresh_counter(),
            },
        ):
            meter = Gurux(gurux_client(1, wrapper=True, **kwargs), WrapperFrames(tcp))
            meter.associate()
            assert meter.read(GXDLMSRegister("1.0.1.8.0.255"), 2) > 0
            pg = capture(meter, "1.0.99.1.0.255")
            now = dt.datetime.now(dt.UTC)
            day = meter.rows([meter.client.readRowsByRange(pg, now - dt.timedelta(days=1), now), pg])
            assert len(day) == 96
            meter.release()
            meter.close()

    wrong = Gurux(gurux_client(1, 1, Authentication.LOW, "nope", wrapper=True), WrapperFrames(tcp))
    with pytest.raises(GXDLMSException):
        wrong.associate()
    wrong.close()

    stranger = Gurux(gurux_client(7, wrapper=True), WrapperFrames(tcp))
    with pytest.raises(NoAnswer):
        stranger.associate()  # wrapper address 7 is nobody's
    stranger.close()


def test_wrapper_connection_survives_garbage(tcp: int) -> None:
    io = WrapperFrames(tcp)
    io.write(os.urandom(64) + b"\x00\x01\x00\x10\x00\x01\x00\x05\xde\xad\xbe\xef\x00")
    time.sleep(0.15)
    meter = Gurux(gurux_client(1, wrapper=True), io)
    meter.associate()
    assert utc(meter.read(GXDLMSClock(), 2)).year >= 2024
    meter.release()
    meter.close()


# ---------------------------------------------------------------------------------------------
# dlms-cosem, a second client.
# ---------------------------------------------------------------------------------------------

CLOCK_TIME = cosem.CosemAttribute(enumerations.CosemInterface.CLOCK, cosem.Obis(0, 0, 1, 0, 0), 2)
IMPORT = cosem.Obis(1, 0, 1, 8, 0)
DISCONNECTOR = cosem.Obis(0, 0, 96, 3, 10)


def test_dlms_cosem_over_the_wrapper(tcp: int) -> None:
    client = DlmsClient(
        transport=TcpTransport(16, 1, BlockingTcpIO("127.0.0.1", tcp, timeout=2)),
        authentication=NoSecurityAuthentication(),
        timeout=2,
    )
    with client.session():
        clock, _status = datetime_from_bytes(parse_as_dlms_data(client.get(CLOCK_TIME)))
        assert abs((clock - dt.datetime.now(dt.UTC)).total_seconds()) < 2
        value = parse_as_dlms_data(
            client.get(cosem.CosemAttribute(enumerations.CosemInterface.REGISTER, IMPORT, 2))
        )
        scaler_unit = parse_as_dlms_data(
            client.get(cosem.CosemAttribute(enumerations.CosemInterface.REGISTER, IMPORT, 3))
        )
        assert value > 0 and scaler_unit == [0, 30]
        now = dt.datetime.now(dt.UTC)
        profile = cosem.CosemAttribute(
            enumerations.CosemInterface.PROFILE_GENERIC, cosem.Obis(1, 0, 99, 1, 0), 2
        )
        rows = ProfileGenericBufferParser(
            capture_objects=[
                CLOCK_TIME,
                cosem.CosemAttribute(enumerations.CosemInterface.REGISTER, IMPORT, 2),
                cosem.CosemAttribute(enumerations.CosemInterface.REGISTER, cosem.Obis(1, 0, 2, 8, 0), 2),
            ],
            capture_period=15,
        ).parse_bytes(
            client.get(
                profile,
                RangeDescriptor(
                    restricting_object=CaptureObject(CLOCK_TIME),
                    from_value=now - dt.timedelta(hours=6),
                    to_value=now,
                ),
            )
        )
        assert len(rows) == 24
        assert rows[-1][1].value <= value


def test_dlms_cosem_hls_gmac_over_the_wrapper(tcp: int) -> None:
    def client(key: bytes) -> DlmsClient:
        return DlmsClient(
            transport=TcpTransport(1, 1, BlockingTcpIO("127.0.0.1", tcp, timeout=2)),
            authentication=HighLevelSecurityGmacAuthentication(challenge_length=32),
            encryption_key=EK,
            authentication_key=key,
            client_system_title=b"COSEMCLI",
            client_initial_invocation_counter=fresh_counter(),
            timeout=2,
        )

    with client(AK).session() as meter:
        register = cosem.CosemAttribute(enumerations.CosemInterface.REGISTER, IMPORT, 2)
        assert parse_as_dlms_data(meter.get(register)) > 0
        relay = cosem.CosemAttribute(enumerations.CosemInterface.DISCONNECT_CONTROL, DISCONNECTOR, 3)
        assert parse_as_dlms_data(meter.get(relay)) == 1  # connected

    wrong = client(bytes(16))
    wrong.connect()
    with pytest.raises(DlmsClientException):
        wrong.associate()
    wrong.disconnect()


def test_dlms_cosem_associates_over_hdlc(bus: PtyPair) -> None:
    # Only SNRM/UA, AARQ/AARE, RLRQ/RLRE and DISC/UA: fixed frames with no 0x7E inside.
    # A GET reply carries time-varying bytes and, now and then, a 0x7E that stalls dlms-cosem.
    for auth in (NoSecurityAuthentication(), LowLevelSecurityAuthentication(PASSWORD.encode())):
        client = DlmsClient(
            transport=HdlcTransport(
                16 if isinstance(auth, NoSecurityAuthentication) else 1,
                1,
                SerialIO(str(bus.device), timeout=2),
                server_physical_address=17,
                extended_addressing=True,
            ),
            authentication=auth,
            timeout=2,
        )
        client.connect()
        client.associate()
        client.release_association()
        client.disconnect()


# ---------------------------------------------------------------------------------------------
# The model behind the objects: a wrong clock on purpose, energy that only goes up.
# ---------------------------------------------------------------------------------------------


def test_meter_clock_offset_drift_and_set() -> None:
    now = [1_800_000_000.0]
    clock = MeterClock(offset_s=-30, drift_ppm=100, now=lambda: now[0])
    assert clock.offset() == -30
    now[0] += 10_000
    assert clock.offset() == pytest.approx(-29, abs=1e-6)  # 100 ppm fast: +1 s per 10 000 s
    clock.set(now[0] + 5)
    assert clock.offset() == 5
    assert clock.true_time(clock.meter_time(now[0] + 77)) == pytest.approx(now[0] + 77)


def test_energy_model_is_deterministic_and_monotonic() -> None:
    a, b = EnergyModel(seed=1, address=17), EnergyModel(seed=1, address=17)
    other = EnergyModel(seed=2, address=17)
    start = 1_800_000_000
    points = [start + 137 * i for i in range(2000)]  # ~3 days, off the 15-minute grid
    imported = [a.import_wh(t) for t in points]
    assert imported == [b.import_wh(t) for t in points]
    assert imported != [other.import_wh(t) for t in points]
    assert all(x < y for x, y in itertools.pairwise(imported))
    exported = [a.export_wh(t) for t in points]
    assert all(x <= y for x, y in itertools.pairwise(exported))
    assert 4_000 < a.import_wh(start + 86_400) - a.import_wh(start) < 25_000  # Wh per day


# ---------------------------------------------------------------------------------------------
# Pacing: the wire, not the CPU, sets the time.
# ---------------------------------------------------------------------------------------------


def test_pacing_takes_the_wire_time_and_the_turnaround(tmp_path: Path) -> None:
    with (
        PtyPair(tmp_path, "P") as pair,
        SimulatedDlmsBus([MeterConfig(17)], port=pair.peer, baud=19200, pace=True, turnaround_ms=20),
    ):
        io = SerialFrames(pair.device)
        meter = Gurux(gurux_client(17), io)
        started = time.monotonic()
        meter.associate()
        register = GXDLMSRegister("1.0.1.8.0.255")
        for _ in range(3):
            meter.read(register, 2)
        elapsed = time.monotonic() - started
        frames = 5
        wire = (io.sent + io.received) * 10 / 19200 + frames * 0.020
        assert wire <= elapsed < wire * 2 + 0.4  # the processing of two Python processes on top
        meter.release()
        io.close()
