"""Our DLMS HDLC link layer against gurux-dlms's client classes, public example frames and hypothesis.

Public frames: the DLMS UA's "Examples for DLMS/COSEM information exchange" (Gyozo Kmethy: SNRM, UA
and AARQ with a 4-byte server address; the AARQ's HCS is 7E CB) and the test frames of dlms-cosem
(UA, AARQ, AARE, a segmented I-frame whose length byte is 0x7E).
"""

from __future__ import annotations

import pytest
from gurux_dlms import GXByteBuffer, GXDLMSClient
from gurux_dlms.enums import Authentication, DataType, InterfaceType, RequestTypes
from gurux_dlms.GXDLMS import GXDLMS
from gurux_dlms.GXDLMSSettings import GXDLMSSettings
from gurux_dlms.objects import GXDLMSData, GXDLMSRegister
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.collect.dlms.hdlc import (
    FLAG,
    LLC_COMMAND,
    LLC_RESPONSE,
    ApduReceived,
    AwaitFrame,
    Connected,
    Disconnected,
    FrameKind,
    FrameRejected,
    HdlcAddress,
    HdlcConnection,
    HdlcFrame,
    HdlcParameters,
    HdlcStateError,
    LinkRefused,
    LinkState,
    PeerBusy,
    SendFrames,
    decode_frame,
    fcs16,
    frame_bytes_needed,
    negotiate,
    split_frame,
)
from appliance.collect.dlms.wrapper import decode_wrapper, wrapper_bytes_needed
from appliance.errors import CrcError, DeviceError, ProtocolError

KMETHY_SNRM = bytes.fromhex("7EA00A00020023219318717E")
KMETHY_UA = bytes.fromhex("7EA023210002002373F6C58180140502008006020080070400000001080400000001CE6A7E")
KMETHY_AARQ = bytes.fromhex(
    "7EA02E0002002321107ECBE6E600601DA109060760857405080101BE10040E01000000065F1F040000301DFFFFD4C57E"
)
COSEM_UA = bytes.fromhex("7EA01F21022373E6C781801205019A06019A070400000001080400000001CCA27E")
COSEM_AARQ = bytes.fromhex(
    "7EA02C02232110AF9FE6E600601DA109060760857405080101BE10040E01000000065F1F0400001E1DFFFFC5E47E"
)
COSEM_AARE = bytes.fromhex(
    "7EA0382102233034E7E6E7006129A109060760857405080101A203020100A305A103020100BE10040E0800065F1F04"
    "00001E1D04C80007B86A7E"
)
COSEM_SEGMENT = bytes.fromhex(
    "7ea87e210396a4090f01160002020f02160002020f03160002020f04160002020f05160002020f0616000204120017"
    "110009060000160000ff0202010902030f0116010002030f0216010002030f0316010002030f0416010002030f0516"
    "010002030f0616010002030f0716010002030f0816010002030f09160100016ff37e"
)
AARE_APDU = COSEM_AARE[12:-3]

CLIENT = HdlcAddress(16)
METER = HdlcAddress(1, 17)
INFO, RR = FrameKind.INFORMATION, FrameKind.RR


def from_meter(kind: FrameKind, ns: int = 0, nr: int = 0, info: bytes = b"", **fields) -> bytes:
    """A frame as the meter at METER sends it to CLIENT (the far end, written from the standard)."""
    meter = fields.pop("meter", METER)
    final = fields.pop("final", True)
    return HdlcFrame(kind, CLIENT, meter, final, ns, nr, info, **fields).encode()


def connect(link: HdlcConnection, answer: HdlcParameters | None = None) -> HdlcConnection:
    link.snrm()
    info = (answer or HdlcParameters()).encode(with_defaults=True)
    event = link.receive(HdlcFrame(FrameKind.UA, link.client, link.server, True, information=info).encode())
    assert isinstance(event, Connected)
    return link


def gurux_client(
    server: int, interface: InterfaceType = InterfaceType.HDLC, client: int = 16
) -> GXDLMSClient:
    return GXDLMSClient(True, client, server, Authentication.NONE, None, interface)


# --- checksums, addresses and frames against public references -------------------------------------


def test_fcs_is_crc16_x25() -> None:
    assert fcs16(b"123456789") == 0x906E  # the catalogued check value of CRC-16/X-25
    assert fcs16(bytes.fromhex("033f")).to_bytes(2, "little") == bytes.fromhex("5bec")  # dlms-cosem's HCS


@pytest.mark.parametrize(
    ("address", "encoded"),
    [
        (HdlcAddress(16), "21"),  # public client
        (HdlcAddress(1), "03"),
        (HdlcAddress(0b1001010), "95"),
        (HdlcAddress(1, 17), "0223"),
        (HdlcAddress(1, 17, 4), "00020023"),  # Kmethy's server address
        (HdlcAddress(0x3FFF, 0x3FFF), "fefefeff"),
    ],
)
def test_address_bytes(address: HdlcAddress, encoded: str) -> None:
    assert address.encode().hex() == encoded
    frame = HdlcFrame(FrameKind.SNRM, address, CLIENT).encode()
    assert decode_frame(frame).destination == address


@pytest.mark.parametrize(
    "arguments", [(0x80,), (1, None, 2), (1, 5, 1), (1, 0x80, 2), (0x4000, 1, 4), (1, 1, 3), (-1,)]
)
def test_impossible_addresses_are_refused(arguments: tuple) -> None:
    with pytest.raises(ValueError):
        HdlcAddress(*arguments)


def test_kmethy_snrm_ua_aarq_with_a_4_byte_server_address() -> None:
    link = HdlcConnection(CLIENT, HdlcAddress(1, 17, 4))
    assert link.snrm() == KMETHY_SNRM
    assert frame_bytes_needed(KMETHY_UA) == 0
    assert link.receive(KMETHY_UA) == Connected(HdlcParameters())
    aarq = decode_frame(KMETHY_AARQ)
    assert KMETHY_AARQ[9:11] == b"\x7e\xcb"  # the HCS holds a flag byte
    assert link.send(aarq.information[3:]) == [KMETHY_AARQ]
    ua = decode_frame(KMETHY_UA)
    assert (ua.kind, ua.source, ua.destination) == (FrameKind.UA, HdlcAddress(1, 17, 4), CLIENT)


def test_dlms_cosem_vectors_with_a_2_byte_server_address() -> None:
    link = HdlcConnection(CLIENT, METER, HdlcParameters(200, 200))
    link.snrm()
    assert link.receive(COSEM_UA) == Connected(HdlcParameters(154, 154))
    assert link.send(decode_frame(COSEM_AARQ).information[3:]) == [COSEM_AARQ]
    assert link.receive(COSEM_AARE) == ApduReceived(AARE_APDU)
    assert decode_frame(COSEM_AARE).encode() == COSEM_AARE


def test_a_frame_whose_length_byte_is_the_flag() -> None:
    assert COSEM_SEGMENT[2] == FLAG
    assert [frame_bytes_needed(COSEM_SEGMENT[:n]) for n in (1, 3, 100)] == [8, 126 + 2 - 3, 28]
    assert frame_bytes_needed(COSEM_SEGMENT) == 0
    frame = decode_frame(COSEM_SEGMENT)
    assert (frame.segmented, frame.send_sequence, frame.receive_sequence, frame.poll_final) == (
        True,
        3,
        4,
        True,
    )
    assert (frame.destination, frame.source, len(frame.information)) == (CLIENT, HdlcAddress(1), 126 - 9)


def test_a_forum_frame_with_client_32_decodes_and_encodes_alike() -> None:
    # Posted on the Gurux forum: a GET of 0.0.40.0.0.255 attribute 1 from client 32 (0x41).
    wire = bytes.fromhex("7EA0190341B23239E6E600C001C1000F0000280000FF0100F9797E")
    frame = decode_frame(wire)
    assert (frame.source, frame.destination, frame.control) == (HdlcAddress(32), HdlcAddress(1), 0xB2)
    assert frame.information[:3] == LLC_COMMAND
    assert frame.encode() == wire


# --- against gurux-dlms's client classes ----------------------------------------------------------


@pytest.mark.parametrize(
    ("logical", "physical", "size"), [(1, None, 1), (0x12, None, 1), (1, 17, 2), (0x7F, 0x7F, 2), (1, 17, 4)]
)
def test_snrm_matches_gurux(logical: int, physical: int | None, size: int) -> None:
    server = logical if physical is None else GXDLMSClient.getServerAddress(logical, physical, size)
    ours = HdlcConnection(CLIENT, HdlcAddress(logical, physical, size)).snrm()
    assert ours == bytes(gurux_client(server).snrmRequest())


@settings(max_examples=60)
@given(
    client=st.integers(1, 0x7F),
    logical=st.integers(1, 0x3FFF),
    physical=st.integers(0, 0x3FFF),
    two_bytes=st.booleans(),
)
def test_snrm_and_disc_match_gurux_for_any_address(
    client: int, logical: int, physical: int, two_bytes: bool
) -> None:
    if two_bytes:
        logical, physical = logical & 0x7F or 1, physical & 0x7F
    address = HdlcAddress(logical, physical, 2 if two_bytes else 4)
    theirs = gurux_client(GXDLMSClient.getServerAddress(logical, physical, address.size), client=client)
    link = HdlcConnection(HdlcAddress(client), address)
    assert link.snrm() == bytes(theirs.snrmRequest())
    theirs.parseUAResponse(GXByteBuffer())
    assert link.disc() == bytes(theirs.disconnectRequest())


def test_snrm_with_negotiated_parameters_matches_gurux() -> None:
    theirs = gurux_client(1)
    theirs.hdlcSettings.maxInfoTX, theirs.hdlcSettings.maxInfoRX = 40, 512
    theirs.hdlcSettings.windowSizeTX, theirs.hdlcSettings.windowSizeRX = 3, 7
    proposal = HdlcParameters(max_info_transmit=40, max_info_receive=512, window_transmit=3, window_receive=7)
    assert HdlcConnection(CLIENT, HdlcAddress(1), proposal).snrm() == bytes(theirs.snrmRequest())


def test_gurux_reads_our_ua_parameters_as_we_negotiate_them() -> None:
    answer = HdlcParameters(max_info_transmit=300, max_info_receive=64, window_transmit=2, window_receive=5)
    theirs = gurux_client(1)
    theirs.parseUAResponse(GXByteBuffer(answer.encode(with_defaults=True)))
    ours = negotiate(HdlcParameters(2030, 2030, 7, 7), answer)
    hdlc = theirs.hdlcSettings
    assert (hdlc.maxInfoTX, hdlc.maxInfoRX, hdlc.windowSizeTX, hdlc.windowSizeRX) == (
        ours.max_info_transmit,
        ours.max_info_receive,
        ours.window_transmit,
        ours.window_receive,
    )


def test_aarq_get_and_disc_frames_match_gurux() -> None:
    # The APDUs come from gurux's wrapper client, the framing to compare from its HDLC client.
    register = GXDLMSRegister("1.0.1.8.0.255")
    plain = gurux_client(1, InterfaceType.WRAPPER)
    aarq_apdu, get_apdu = bytes(plain.aarqRequest()[0])[8:], bytes(plain.read(register, 2)[0])[8:]
    theirs = gurux_client(1)
    link = HdlcConnection(CLIENT, HdlcAddress(1))
    assert link.snrm() == bytes(theirs.snrmRequest())
    theirs.parseUAResponse(GXByteBuffer())
    link.receive(from_meter(FrameKind.UA, meter=HdlcAddress(1)))
    assert link.send(aarq_apdu) == [bytes(frame) for frame in theirs.aarqRequest()]
    assert link.receive(
        from_meter(INFO, 0, 1, LLC_RESPONSE + AARE_APDU, meter=HdlcAddress(1))
    ) == ApduReceived(AARE_APDU)
    assert link.send(get_apdu) == [bytes(frame) for frame in theirs.read(register, 2)]  # N(S)=1, N(R)=1
    assert link.disc() == bytes(theirs.disconnectRequest())


def test_segmented_answer_framed_by_gurux_is_reassembled_with_the_rrs_gurux_sends() -> None:
    apdu = bytes(range(256)) * 2
    meter = GXDLMSSettings(True, None)
    meter.interfaceType, meter.clientAddress, meter.serverAddress = InterfaceType.HDLC, 16, 1
    meter.hdlc.maxInfoTX = 64
    pending = GXByteBuffer(LLC_RESPONSE + apdu)
    answer = []
    while pending.size:
        answer.append(bytes(GXDLMS.getHdlcFrame(meter, meter.getNextSend(not answer), pending)))
    assert len(answer) > 3
    theirs = gurux_client(1)
    theirs.snrmRequest()
    theirs.parseUAResponse(GXByteBuffer())
    theirs.aarqRequest()
    link = connect(HdlcConnection(CLIENT, HdlcAddress(1)))
    link.send(b"\x60\x00")
    for frame in answer[:-1]:
        assert link.receive(frame) == SendFrames((bytes(theirs.receiverReady(RequestTypes.FRAME)),))
    assert link.receive(answer[-1]) == ApduReceived(apdu)


def test_segmented_request_carries_what_gurux_sends() -> None:
    # gurux makes its first segment 3 bytes shorter than the negotiated maximum (it counts the LLC
    # header twice), so the frames differ in where they cut; control fields and content agree.
    item = GXDLMSData("0.0.96.1.0.255")
    item.value = bytes(range(100))
    item.setDataType(2, DataType.OCTET_STRING)
    plain = gurux_client(1, InterfaceType.WRAPPER)
    plain.aarqRequest()
    write_apdu = bytes(plain.write(item, 2)[0])[8:]
    theirs = gurux_client(1)
    theirs.hdlcSettings.maxInfoTX = 40
    theirs.snrmRequest()
    theirs.parseUAResponse(GXByteBuffer())
    theirs.aarqRequest()
    gurux_frames = [decode_frame(bytes(frame)) for frame in theirs.write(item, 2)]

    link = connect(HdlcConnection(CLIENT, HdlcAddress(1), HdlcParameters(max_info_transmit=40)))
    link.send(b"\x60\x00")
    link.receive(from_meter(INFO, 0, 1, LLC_RESPONSE + b"\x61\x00", meter=HdlcAddress(1)))
    ours = [decode_frame(frame) for frame in link.send(write_apdu)]
    while ours[-1].segmented:
        event = link.receive(from_meter(RR, nr=(ours[-1].send_sequence + 1) % 8, meter=HdlcAddress(1)))
        assert isinstance(event, SendFrames)
        ours += [decode_frame(frame) for frame in event.frames]
    # gurux cuts 37 + 40 + 40 + 1 bytes, we cut 40 + 40 + 38: one frame fewer, same numbering.
    assert [f.control for f in gurux_frames] == [0x32, 0x34, 0x36, 0x38]
    assert [f.control for f in ours] == [0x32, 0x34, 0x36]
    for sent in (ours, gurux_frames):
        assert [f.segmented for f in sent] == [True] * (len(sent) - 1) + [False]
        assert b"".join(f.information for f in sent) == LLC_COMMAND + write_apdu
    assert [len(f.information) for f in ours] == [40, 40, 38]


# --- damaged frames ----------------------------------------------------------------------------------


def with_fcs(frame: bytes) -> bytes:
    """`frame` with its FCS recomputed, so that only the HCS is wrong."""
    body = frame[1:-3]
    return frame[:1] + body + fcs16(body).to_bytes(2, "little") + frame[-1:]


def test_wrong_fcs_is_a_crc_error() -> None:
    damaged = COSEM_AARE[:-3] + bytes([COSEM_AARE[-3] ^ 1]) + COSEM_AARE[-2:]
    with pytest.raises(CrcError, match="FCS"):
        decode_frame(damaged)
    damaged_data = bytearray(COSEM_AARE)
    damaged_data[20] ^= 0x40
    with pytest.raises(CrcError, match="FCS"):
        decode_frame(bytes(damaged_data))


def test_wrong_hcs_is_a_crc_error() -> None:
    damaged = bytearray(COSEM_AARE)
    damaged[7] ^= 0xFF
    with pytest.raises(CrcError, match="HCS"):
        decode_frame(with_fcs(bytes(damaged)))


def test_truncated_frame_is_a_protocol_error_and_asks_for_the_rest() -> None:
    assert [frame_bytes_needed(COSEM_AARE[:cut]) for cut in (0, 1, 2)] == [9, 8, 7]  # a minimal frame
    for cut in (1, 2, 3, 10, len(COSEM_AARE) - 1):
        if cut >= 3:  # the length field is in
            assert frame_bytes_needed(COSEM_AARE[:cut]) == len(COSEM_AARE) - cut
        with pytest.raises(ProtocolError, match=r"no whole|truncated"):
            decode_frame(COSEM_AARE[:cut])


def test_garbage_and_extra_flags_before_the_frame_are_skipped() -> None:
    for garbage in (b"\x00", b"\xff\x00\x13", b"\x7e\x7e", b"\x00\x7e\x01\x7e"):
        data = garbage + KMETHY_UA
        assert frame_bytes_needed(data) == 0
        assert frame_bytes_needed(data[: len(garbage) + 5]) == len(KMETHY_UA) - 5
        assert decode_frame(data) == decode_frame(KMETHY_UA)
    assert frame_bytes_needed(b"\x00\x13") == 9  # no flag yet: a whole minimal frame must still come


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (KMETHY_UA + b"\x00", "after the HDLC frame"),
        (KMETHY_UA[:-1] + b"\x00", "closing flag"),
        (b"\x00\x01\x02", "no whole"),
    ],
)
def test_malformed_frames_are_protocol_errors(wire: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_frame(wire)


def raw_frame(header: bytes, info: bytes = b"", segmented: bool = False) -> bytes:
    """A frame with correct checksums around any header bytes (addresses and control, unchecked)."""
    length = 2 + len(header) + 2 + (len(info) + 2 if info else 0)
    body = bytes((0xA0 | (8 if segmented else 0) | length >> 8, length & 0xFF)) + header
    if info:
        body += fcs16(body).to_bytes(2, "little") + info
    return bytes((FLAG,)) + body + fcs16(body).to_bytes(2, "little") + bytes((FLAG,))


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (raw_frame(b"\x21\x02\x00\x23\x93"), "3 bytes"),
        (raw_frame(b"\x20\x02\x00\x22\x93"), "end bit"),
        (raw_frame(b"\x21\x03\x09"), "REJ"),
        (raw_frame(b"\x21\x03\x2f"), "not a frame type"),
        (raw_frame(b"\x21\x03\x31", b"\x01"), "RR frame with an information field"),
        (raw_frame(b"\x21\x03\x73", segmented=True), "segmentation bit"),
        (raw_frame(b"\x21\x03\x73\x00"), "stray byte"),
    ],
)
def test_checksummed_but_invalid_frames_are_protocol_errors(wire: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_frame(wire)


# --- round trips -------------------------------------------------------------------------------------


def addresses(size: int | None = None) -> st.SearchStrategy[HdlcAddress]:
    one = st.builds(HdlcAddress, st.integers(0, 0x7F))
    two = st.builds(HdlcAddress, st.integers(0, 0x7F), st.integers(0, 0x7F), st.just(2))
    four = st.builds(HdlcAddress, st.integers(0, 0x3FFF), st.integers(0, 0x3FFF), st.just(4))
    return {1: one, 2: two, 4: four, None: one | two | four}[size]


def flag_rich_bytes(max_size: int) -> st.SearchStrategy[bytes]:
    """Payloads that hold 0x7E often, where a splitting reader would cut them."""
    return st.lists(
        st.sampled_from([0x7E, 0x7E, 0x00, 0xA0, 0xE6, 0xFF]) | st.integers(0, 255), max_size=max_size
    ).map(bytes)


@st.composite
def frames(draw: st.DrawFn) -> HdlcFrame:
    kind = draw(st.sampled_from(FrameKind))
    numbered = kind in (FrameKind.INFORMATION, FrameKind.RR, FrameKind.RNR)
    return HdlcFrame(
        kind,
        draw(addresses()),
        draw(addresses()),
        draw(st.booleans()),
        draw(st.integers(0, 7)) if kind is FrameKind.INFORMATION else 0,
        draw(st.integers(0, 7)) if numbered else 0,
        b"" if kind in (FrameKind.RR, FrameKind.RNR) else draw(flag_rich_bytes(300)),
        draw(st.booleans()) if kind in (FrameKind.INFORMATION, FrameKind.UI) else False,
    )


@settings(max_examples=300)
@given(frame=frames(), garbage=st.binary(max_size=6).filter(lambda b: FLAG not in b), flags=st.integers(0, 2))
def test_frames_round_trip_read_by_their_length(frame: HdlcFrame, garbage: bytes, flags: int) -> None:
    wire = frame.encode()
    stream = garbage + bytes([FLAG]) * flags + wire
    for cut in range(len(stream)):
        needed = frame_bytes_needed(stream[:cut])
        assert 0 < needed <= len(stream) - cut  # asks for more, never for bytes beyond the frame
    assert frame_bytes_needed(stream) == 0
    assert decode_frame(stream) == frame
    assert split_frame(stream + b"\x7e\xa0") == (wire, b"\x7e\xa0")


def test_frames_of_one_window_may_share_their_flags() -> None:
    window = [from_meter(INFO, n, 1, bytes([FLAG]) * 5, segmented=True, final=n == 2) for n in range(3)]
    stream = window[0] + window[1][1:] + window[2]  # the 2nd frame opens with the 1st one's closing flag
    received = []
    while stream:
        stream = bytes([FLAG]) + stream  # the rule AwaitFrame states: right with and without a shared flag
        assert frame_bytes_needed(stream) == 0
        frame, stream = split_frame(stream)
        received.append(frame)
    assert received == window


@settings(max_examples=100)
@given(
    parameters=st.builds(
        HdlcParameters, st.integers(4, 2030), st.integers(4, 2030), st.integers(1, 7), st.integers(1, 7)
    ),
    with_defaults=st.booleans(),
)
def test_parameters_round_trip(parameters: HdlcParameters, with_defaults: bool) -> None:
    assert HdlcParameters.decode(parameters.encode(with_defaults=with_defaults)) == parameters


def test_parameters_beyond_a_frame_are_capped_and_impossible_ones_refused() -> None:
    assert HdlcParameters.decode(bytes.fromhex("8180070502FFFF070109")) == HdlcParameters(2030, 128, 7, 1)
    assert HdlcParameters.decode(bytes.fromhex("818003990100")) == HdlcParameters()  # unknown: skipped
    for bad in (
        "818003070100",  # window 0
        "818003050103",  # 3 bytes cannot hold the LLC header and an APDU byte
        "8180040502",  # group longer than the field
        "818105050180",  # wrong group identifier
        "8180020500",  # a value of 0 bytes
        "81800305020a",  # value cut short
        "81800105",  # parameter cut short
        "80",
    ):
        with pytest.raises(ProtocolError):
            HdlcParameters.decode(bytes.fromhex(bad))


# --- the link: segmentation, windows, recovery -------------------------------------------------------


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(apdu=flag_rich_bytes(3000).filter(bool), max_info=st.integers(4, 400), window=st.integers(1, 7))
def test_long_requests_go_out_in_windows_of_segments(apdu: bytes, max_info: int, window: int) -> None:
    proposal = HdlcParameters(max_info_transmit=2030, window_transmit=7)
    link = connect(
        HdlcConnection(CLIENT, METER, proposal),
        HdlcParameters(max_info_receive=max_info, window_receive=window),
    )
    sent: list[HdlcFrame] = []
    batch = [decode_frame(frame) for frame in link.send(apdu)]
    while True:
        assert len(batch) <= window
        assert [f.poll_final for f in batch] == [False] * (len(batch) - 1) + [True]
        sent += batch
        if not batch[-1].segmented:
            break
        assert len(batch) == window
        event = link.receive(from_meter(RR, nr=len(sent) % 8))
        assert isinstance(event, SendFrames)
        batch = [decode_frame(frame) for frame in event.frames]
    assert [f.send_sequence for f in sent] == [n % 8 for n in range(len(sent))]
    assert all(len(f.information) == max_info for f in sent[:-1]) and len(sent[-1].information) <= max_info
    assert [f.segmented for f in sent] == [True] * (len(sent) - 1) + [False]
    assert b"".join(f.information for f in sent) == LLC_COMMAND + apdu
    answer = link.receive(from_meter(INFO, 0, len(sent) % 8, LLC_RESPONSE + b"\xc4"))
    assert answer == ApduReceived(b"\xc4")


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(apdu=flag_rich_bytes(3000).filter(bool), max_info=st.integers(4, 400), window=st.integers(1, 7))
def test_long_answers_are_reassembled_acknowledging_each_window(
    apdu: bytes, max_info: int, window: int
) -> None:
    proposal = HdlcParameters(max_info_receive=2030, window_receive=7)
    link = connect(
        HdlcConnection(CLIENT, METER, proposal),
        HdlcParameters(max_info_transmit=max_info, window_transmit=window),
    )
    assert link.parameters.window_receive == window
    link.send(b"\xc0\x01\xc1")
    information = LLC_RESPONSE + apdu
    chunks = [information[start : start + max_info] for start in range(0, len(information), max_info)]
    for number, chunk in enumerate(chunks):
        last = number == len(chunks) - 1
        final = last or (number + 1) % window == 0
        event = link.receive(from_meter(INFO, number % 8, 1, chunk, segmented=not last, final=final))
        if last:
            assert event == ApduReceived(apdu)
        elif final:
            assert isinstance(event, SendFrames)
            rr = decode_frame(event.frames[0])
            assert (rr.kind, rr.receive_sequence, rr.poll_final) == (RR, (number + 1) % 8, True)
        else:
            assert event == AwaitFrame()


def test_a_request_the_meter_missed_is_sent_again_after_a_poll() -> None:
    link = connect(HdlcConnection(CLIENT, METER))
    request = link.send(b"\xc0\x01\xc1")
    poll = link.poll()  # the session timed out waiting
    assert decode_frame(poll).kind is RR
    assert link.receive(from_meter(RR, nr=0)) == SendFrames(tuple(request))  # "I still expect your N(S)=0"
    assert link.receive(from_meter(INFO, 0, 1, LLC_RESPONSE + b"\xc4")) == ApduReceived(b"\xc4")


def test_a_repeated_segment_is_acknowledged_again_not_appended() -> None:
    link = connect(HdlcConnection(CLIENT, METER))
    link.send(b"\xc0")
    first = from_meter(INFO, 0, 1, LLC_RESPONSE + b"\x01", segmented=True)
    rr = link.receive(first)
    assert link.receive(first) == rr  # our RR was lost; the meter sent the segment again
    assert link.receive(from_meter(INFO, 1, 1, b"\x02")) == ApduReceived(b"\x01\x02")


def test_endless_retransmissions_end_in_a_protocol_error() -> None:
    link = connect(HdlcConnection(CLIENT, METER))
    link.send(b"\xc0")
    with pytest.raises(ProtocolError, match="keeps failing"):
        for _ in range(10):
            link.receive(from_meter(INFO, 5, 1, LLC_RESPONSE + b"\x01"))


def test_our_echo_is_skipped() -> None:
    link = HdlcConnection(CLIENT, METER)
    snrm = link.snrm()
    assert link.receive(snrm) == AwaitFrame()
    assert isinstance(link.receive(from_meter(FrameKind.UA)), Connected)


def test_disc_and_dm() -> None:
    link = connect(HdlcConnection(CLIENT, METER))
    assert decode_frame(link.disc()).kind is FrameKind.DISC
    assert link.receive(from_meter(FrameKind.UA)) == Disconnected("meter confirmed DISC")
    assert link.state is LinkState.DISCONNECTED
    link = connect(HdlcConnection(CLIENT, METER))
    link.send(b"\xc0")
    assert isinstance(link.receive(from_meter(FrameKind.DM)), Disconnected)
    with pytest.raises(HdlcStateError):
        link.send(b"\xc0")


def test_refusals_and_rejections_are_typed() -> None:
    link = HdlcConnection(CLIENT, METER)
    link.snrm()
    with pytest.raises(LinkRefused) as refused:
        link.receive(from_meter(FrameKind.DM))
    assert isinstance(refused.value, DeviceError)
    link = connect(HdlcConnection(CLIENT, METER))
    link.send(b"\xc0")
    with pytest.raises(FrameRejected):
        link.receive(from_meter(FrameKind.FRMR, info=b"\x10\x00\x01"))
    link = connect(HdlcConnection(CLIENT, METER))
    link.send(b"\xc0")
    busy = link.receive(from_meter(FrameKind.RNR, nr=1))
    assert isinstance(busy, PeerBusy) and decode_frame(busy.poll).kind is RR


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (from_meter(FrameKind.UA, meter=HdlcAddress(1, 18)), "from 1/18"),
        (from_meter(INFO, 0, 1, b"\x01\x02\x03\x04"), "LLC"),
        (from_meter(INFO, 0, 3, LLC_RESPONSE + b"\x01"), "never sent"),
        (from_meter(RR, nr=1), "sent no answer"),
        (from_meter(FrameKind.UA), "unexpected"),
        (from_meter(INFO, 0, 1, LLC_RESPONSE), "empty APDU"),
    ],
)
def test_wrong_answers_are_protocol_errors(answer: bytes, match: str) -> None:
    link = connect(HdlcConnection(CLIENT, METER))
    link.send(b"\xc0")
    with pytest.raises(ProtocolError, match=match):
        link.receive(answer)


def test_an_answer_before_the_whole_request_is_a_protocol_error() -> None:
    link = connect(HdlcConnection(CLIENT, METER), HdlcParameters(max_info_receive=32))
    assert decode_frame(link.send(bytes(100))[0]).segmented
    with pytest.raises(ProtocolError, match="before it received the whole request"):
        link.receive(from_meter(INFO, 0, 1, LLC_RESPONSE + b"\x01"))


def test_sequence_numbers_wrap_over_many_requests() -> None:
    link = connect(HdlcConnection(CLIENT, METER))
    for number in range(20):
        request = decode_frame(link.send(bytes([number + 1]))[0])
        assert (request.send_sequence, request.receive_sequence) == (number % 8, number % 8)
        assert link.receive(
            from_meter(INFO, number % 8, (number + 1) % 8, LLC_RESPONSE + b"\x01")
        ) == ApduReceived(b"\x01")


# --- fuzzing: bad bytes raise ProtocolError and nothing else ------------------------------------------


def links_in_every_state() -> list[HdlcConnection]:
    fresh = HdlcConnection(CLIENT, METER)
    connecting = HdlcConnection(CLIENT, METER)
    connecting.snrm()
    idle = connect(HdlcConnection(CLIENT, METER))
    waiting = connect(HdlcConnection(CLIENT, METER))
    waiting.send(b"\xc0")
    midway = connect(
        HdlcConnection(CLIENT, METER, HdlcParameters(window_receive=3)), HdlcParameters(window_transmit=3)
    )
    midway.send(b"\xc0")
    midway.receive(from_meter(INFO, 0, 1, LLC_RESPONSE + b"\x01", segmented=True, final=False))
    closing = connect(HdlcConnection(CLIENT, METER))
    closing.disc()
    return [fresh, connecting, idle, waiting, midway, closing]


@st.composite
def checksummed_frames(draw: st.DrawFn) -> bytes:
    """Frames that pass HCS and FCS, with arbitrary addresses, control field and information."""

    def address() -> bytes:
        ours = draw(st.sampled_from([CLIENT.encode(), METER.encode(), None]))
        if ours is not None:
            return ours
        size = draw(st.integers(1, 5))
        return bytes(b & 0xFE for b in draw(st.binary(min_size=size, max_size=size))[:-1]) + bytes(
            [draw(st.integers(0, 255)) | draw(st.sampled_from([0, 1]))]
        )

    header = address() + address() + bytes([draw(st.integers(0, 255))])
    return raw_frame(header, draw(st.binary(max_size=40)), draw(st.booleans()))


def check_only_protocol_errors(data: bytes) -> None:
    assert frame_bytes_needed(data) >= 0
    assert wrapper_bytes_needed(data) >= 0
    decoders = [decode_frame, split_frame, HdlcParameters.decode, decode_wrapper]
    decoders += [link.receive for link in links_in_every_state()]
    for decoder in decoders:
        try:
            decoder(data)
        except LinkRefused:  # a DM to SNRM: a refusal, not bad bytes
            assert decode_frame(data).kind is FrameKind.DM
        except ProtocolError:
            pass


def fuzz_inputs(max_size: int) -> st.SearchStrategy[bytes]:
    """Random bytes, frames with valid checksums around random fields, and flag-rich frame starts."""
    starts = flag_rich_bytes(max_size // 3).map(lambda tail: b"\x7e\xa0" + tail)
    return st.binary(max_size=max_size) | checksummed_frames() | starts


@settings(max_examples=150)
@given(fuzz_inputs(200))
def test_fuzz_decoders_raise_only_protocol_errors(data: bytes) -> None:
    check_only_protocol_errors(data)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, database=None)
@given(st.lists(fuzz_inputs(300), min_size=10, max_size=10))
def test_fuzz_decoders_100k(inputs: list[bytes]) -> None:
    for data in inputs:  # 10 inputs per example: 100k inputs at a tenth of hypothesis's overhead
        check_only_protocol_errors(data)
