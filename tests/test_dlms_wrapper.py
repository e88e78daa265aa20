"""The DLMS TCP/UDP wrapper against gurux-dlms's wrapper client, dlms-cosem's wrapper and hypothesis."""

from __future__ import annotations

import pytest
from dlms_cosem.protocol.wrappers import WrapperHeader, WrapperProtocolDataUnit
from gurux_dlms import GXDLMSClient
from gurux_dlms.enums import Authentication, InterfaceType
from gurux_dlms.objects import GXDLMSClock, GXDLMSRegister
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.collect.dlms.wrapper import (
    HEADER_LENGTH,
    WrapperFrame,
    decode_wrapper,
    wrapper_bytes_needed,
)
from appliance.errors import ProtocolError


def gurux_wrapper_client(client: int, server: int) -> GXDLMSClient:
    return GXDLMSClient(True, client, server, Authentication.NONE, None, InterfaceType.WRAPPER)


def test_gurux_aarq_and_get_decode_and_encode_alike() -> None:
    theirs = gurux_wrapper_client(16, 1)
    for wire in [bytes(theirs.aarqRequest()[0]), bytes(theirs.read(GXDLMSRegister("1.0.1.8.0.255"), 2)[0])]:
        assert wrapper_bytes_needed(wire) == 0
        frame = decode_wrapper(wire)
        assert (frame.source, frame.destination) == (16, 1)
        assert frame.encode() == wire
    aarq = decode_wrapper(bytes(theirs.aarqRequest()[0]))
    assert aarq.encode()[:8].hex() == "000100100001001f"  # version 1, 16 -> 1, 31 APDU bytes
    assert aarq.apdu[:2] == b"\x60\x1d"  # AARQ tag and length


@settings(max_examples=50)
@given(client=st.integers(1, 0x7F), server=st.integers(1, 0x3FFF))
def test_our_frames_equal_gurux_for_any_ports(client: int, server: int) -> None:
    theirs = gurux_wrapper_client(client, server)
    wire = bytes(theirs.read(GXDLMSClock("0.0.1.0.0.255"), 2)[0])
    frame = decode_wrapper(wire)
    assert (frame.source, frame.destination) == (client, server)
    assert WrapperFrame(client, server, frame.apdu).encode() == wire


@settings(max_examples=100)
@given(
    source=st.integers(0, 0xFFFF),
    destination=st.integers(0, 0xFFFF),
    apdu=st.binary(min_size=1, max_size=3000),
)
def test_round_trip_read_by_length_and_equal_to_dlms_cosem(
    source: int, destination: int, apdu: bytes
) -> None:
    wire = WrapperFrame(source, destination, apdu).encode()
    header = WrapperHeader(source_wport=source, destination_wport=destination, length=len(apdu))
    assert wire == WrapperProtocolDataUnit(apdu, header).to_bytes()
    for cut in range(0, len(wire), 7):
        needed = wrapper_bytes_needed(wire[:cut])
        assert 0 < needed <= len(wire) - cut
    assert wrapper_bytes_needed(wire) == 0
    assert decode_wrapper(wire) == WrapperFrame(source, destination, apdu)


def test_a_wrong_version_stops_reading_at_once() -> None:
    wire = bytes.fromhex("0002 0010 0001 ffff".replace(" ", ""))
    assert wrapper_bytes_needed(wire) == 0
    with pytest.raises(ProtocolError, match="version 2"):
        decode_wrapper(wire)


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (b"\x00\x01\x00\x10", "header truncated"),
        (bytes.fromhex("0001001000010003c001"), "truncated: 2 of 3"),
        (bytes.fromhex("0001001000010001c001"), "1 bytes after"),
        (bytes.fromhex("0001001000010000"), "without an APDU"),
    ],
)
def test_malformed_frames_are_protocol_errors(wire: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_wrapper(wire)


def test_impossible_frames_are_refused_when_built() -> None:
    for arguments in [(0x10000, 1, b"\x01"), (1, -1, b"\x01"), (1, 1, b""), (1, 1, bytes(0x10000))]:
        with pytest.raises(ValueError):
            WrapperFrame(*arguments)


def fuzz_inputs(max_size: int) -> st.SearchStrategy[bytes]:
    """Random bytes, and well-formed headers in front of random lengths of random APDU bytes."""
    headers = st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, max_size))
    framed = st.tuples(headers, st.binary(max_size=max_size)).map(
        lambda pair: b"\x00\x01" + b"".join(v.to_bytes(2, "big") for v in pair[0]) + pair[1]
    )
    return st.binary(max_size=max_size) | framed


def check_only_protocol_errors(data: bytes) -> None:
    needed = wrapper_bytes_needed(data)
    assert needed >= 0
    try:
        frame = decode_wrapper(data)
    except ProtocolError:
        return
    assert needed == 0 and len(data) == HEADER_LENGTH + len(frame.apdu)


@settings(max_examples=200)
@given(fuzz_inputs(40))
def test_fuzz_decode_raises_only_protocol_errors(data: bytes) -> None:
    check_only_protocol_errors(data)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, database=None)
@given(st.lists(fuzz_inputs(60), min_size=10, max_size=10))
def test_fuzz_decode_100k(inputs: list[bytes]) -> None:
    for data in inputs:  # 10 inputs per example: 100k inputs at a tenth of hypothesis's overhead
        check_only_protocol_errors(data)
