"""DLMS security suite 0 against known answers from gurux-dlms and dlms-cosem, the two independent peers.

Known answers are computed live by the peers with the well-known Gurux test keys; no byte string here is
invented. The Green Book's own AES-GCM examples are not reproduced (we do not hold them verbatim).
"""

from __future__ import annotations

import contextlib
import io
import traceback
from types import SimpleNamespace

import pytest
from dlms_cosem import security as cosem_security
from dlms_cosem.protocol.xdlms import GeneralGlobalCipher, GlobalCipherInitiateRequest
from gurux_dlms import AesGcmParameter, GXByteBuffer
from gurux_dlms.ConnectionState import ConnectionState
from gurux_dlms.enums import Authentication, Command, Conformance, InterfaceType
from gurux_dlms.enums import Security as GuruxSecurity
from gurux_dlms.GXDLMSChippering import GXDLMSChippering
from gurux_dlms.GXSecure import GXSecure
from gurux_dlms.objects import GXDLMSClock, GXDLMSRegister
from gurux_dlms.secure import GXDLMSSecureClient
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.collect.dlms import security as sec
from appliance.collect.dlms.security import (
    DED_TAGS,
    GLO_TAGS,
    Security,
    SecurityError,
    SecurityKeys,
    check_invocation_counter,
    hls_gmac,
    is_ciphered_apdu,
    protect,
    unprotect,
    unwrap_apdu,
    verify_hls_gmac,
    wrap_apdu,
)
from appliance.errors import ProtocolError

EK = bytes.fromhex("000102030405060708090A0B0C0D0E0F")  # Gurux's default block cipher key
AK = bytes.fromhex("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF")  # Gurux's default authentication key
DK = bytes.fromhex("00112233445566778899AABBCCDDEEFF")  # a dedicated key for the ded- forms
CLIENT_TITLE = bytes.fromhex("4775727578797A41")  # "GuruxyzA", Gurux's client system title
METER_TITLE = bytes.fromhex("4D4D4D0000BC614E")
KEYS = SecurityKeys(EK, AK, DK)
ALL_KEY_BYTES = (EK, AK, DK)
LEVELS = [Security.AUTHENTICATION, Security.ENCRYPTION, Security.AUTHENTICATED_ENCRYPTION]
TAGGED = [Security.AUTHENTICATION, Security.AUTHENTICATED_ENCRYPTION]
GURUX_LEVEL = {
    Security.AUTHENTICATION: GuruxSecurity.AUTHENTICATION,
    Security.ENCRYPTION: GuruxSecurity.ENCRYPTION,
    Security.AUTHENTICATED_ENCRYPTION: GuruxSecurity.AUTHENTICATION_ENCRYPTION,
}
# The clock's time as a meter answers it: get-response-normal, invoke-id 0xC1, data octet-string(12).
GET_RESPONSE = bytes.fromhex("C401C100090C07E8030F05102D0000FF8880")


def gurux_client(
    level: Security | None, ic: int = 0x1234, auth: Authentication = Authentication.NONE
) -> GXDLMSSecureClient:
    """A gurux client over the bare PDU interface, so its output is the xDLMS APDU itself."""
    client = GXDLMSSecureClient(True, 16, 1, auth, None, InterfaceType.PDU)
    client.ciphering.security = GuruxSecurity.NONE if level is None else GURUX_LEVEL[level]
    client.ciphering.systemTitle = CLIENT_TITLE
    client.ciphering.invocationCounter = ic
    return client


def only_frame(frames: list) -> bytes:
    assert len(frames) == 1
    return bytes(frames[0])


def gurux_encrypt(plain: bytes, tag: int, level: Security, title: bytes, ic: int, key: bytes = EK) -> bytes:
    """What a gurux server sends: its low-level cipher, as GXDLMSServer calls it."""
    p = AesGcmParameter(tag, title, key, AK)
    p.security = GURUX_LEVEL[level]
    p.invocationCounter = ic
    return bytes(GXDLMSChippering.encryptAesGcm(p, plain))


def gurux_decrypt(data: bytes, title: bytes, key: bytes = EK) -> tuple[bytes, int]:
    """What a gurux meter makes of our bytes (its decoder prints what it sees: keep that out)."""
    p = AesGcmParameter(0, title, key, AK)
    with contextlib.redirect_stdout(io.StringIO()):
        plain = GXDLMSChippering.decryptAesGcm(None, p, GXByteBuffer(data))
    return bytes(plain), p.invocationCounter


def assert_no_key_material(text: str) -> None:
    for key in ALL_KEY_BYTES:
        for form in (key.hex(), key.hex().upper(), repr(key), key.hex(" "), key.hex(" ").upper()):
            assert form not in text


# --- known answers: gurux ------------------------------------------------------------------------


def test_tag_tables_match_gurux() -> None:
    named = {
        Command.GET_REQUEST: (Command.GLO_GET_REQUEST, Command.DED_GET_REQUEST),
        Command.SET_REQUEST: (Command.GLO_SET_REQUEST, Command.DED_SET_REQUEST),
        Command.METHOD_REQUEST: (Command.GLO_METHOD_REQUEST, Command.DED_METHOD_REQUEST),
        Command.GET_RESPONSE: (Command.GLO_GET_RESPONSE, Command.DED_GET_RESPONSE),
        Command.SET_RESPONSE: (Command.GLO_SET_RESPONSE, Command.DED_SET_RESPONSE),
        Command.METHOD_RESPONSE: (Command.GLO_METHOD_RESPONSE, Command.DED_METHOD_RESPONSE),
        Command.EVENT_NOTIFICATION: (Command.GLO_EVENT_NOTIFICATION, Command.DED_EVENT_NOTIFICATION),
        Command.INITIATE_REQUEST: (Command.GLO_INITIATE_REQUEST, Command.DED_INITIATE_REQUEST),
        Command.INITIATE_RESPONSE: (Command.GLO_INITIATE_RESPONSE, Command.DED_INITIATE_RESPONSE),
        Command.READ_REQUEST: (Command.GLO_READ_REQUEST, Command.DED_READ_REQUEST),
        Command.READ_RESPONSE: (Command.GLO_READ_RESPONSE, Command.DED_READ_RESPONSE),
        Command.WRITE_REQUEST: (Command.GLO_WRITE_REQUEST, Command.DED_WRITE_REQUEST),
        Command.WRITE_RESPONSE: (Command.GLO_WRITE_RESPONSE, Command.DED_WRITE_RESPONSE),
        Command.CONFIRMED_SERVICE_ERROR: (
            Command.GLO_CONFIRMED_SERVICE_ERROR,
            Command.DED_CONFIRMED_SERVICE_ERROR,
        ),
    }
    for plain, (glo, ded) in named.items():
        assert (GLO_TAGS[plain], DED_TAGS[plain]) == (glo, ded)
    assert (GLO_TAGS[0xC0], GLO_TAGS[0xC4], GLO_TAGS[0xC1], GLO_TAGS[0xC5]) == (0xC8, 0xCC, 0xC9, 0xCD)
    assert (GLO_TAGS[0xC3], GLO_TAGS[0xC7], GLO_TAGS[0x01], GLO_TAGS[0x08]) == (0xCB, 0xCF, 0x21, 0x28)
    assert (Command.GENERAL_GLO_CIPHERING, Command.GENERAL_DED_CIPHERING) == (0xDB, 0xDC)


@pytest.mark.parametrize("level", LEVELS)
def test_glo_get_request_matches_gurux_client(level: Security) -> None:
    plain = only_frame(gurux_client(None).read(GXDLMSClock("0.0.1.0.0.255"), 2))
    assert plain == bytes.fromhex("C001C100080000010000FF0200")  # get-request-normal, clock time
    theirs = only_frame(gurux_client(level).read(GXDLMSClock("0.0.1.0.0.255"), 2))
    ours = wrap_apdu(plain, keys=KEYS, security=level, system_title=CLIENT_TITLE, invocation_counter=0x1234)
    assert ours == theirs
    assert ours[0] == 0xC8 and ours[2] == int(level) and ours[3:7] == bytes.fromhex("00001234")
    got = unwrap_apdu(
        theirs, keys=KEYS, security=level, peer_system_title=CLIENT_TITLE, last_invocation_counter=0x1233
    )
    assert (got.apdu, got.invocation_counter, got.dedicated, got.general) == (plain, 0x1234, False, False)


def test_glo_get_request_pinned_bytes() -> None:
    # Recorded once from gurux's GXDLMSSecureClient (the test above recomputes it): pins the layout so
    # a change to the peer cannot silently move both sides at once.
    plain = bytes.fromhex("C001C100080000010000FF0200")
    ours = wrap_apdu(
        plain,
        keys=KEYS,
        security=Security.AUTHENTICATED_ENCRYPTION,
        system_title=CLIENT_TITLE,
        invocation_counter=0x1234,
    )
    assert ours == bytes.fromhex("C81E30000012340C884CE2512893423A847EE988070277504839D303EC45820C")


def test_ded_get_request_matches_gurux_client() -> None:
    client = gurux_client(Security.AUTHENTICATED_ENCRYPTION)
    client.ciphering.dedicatedKey = DK
    client.settings.connected |= ConnectionState.DLMS  # gurux uses the dedicated key once associated
    theirs = only_frame(client.read(GXDLMSRegister("1.0.1.8.0.255"), 2))
    plain = only_frame(gurux_client(None).read(GXDLMSRegister("1.0.1.8.0.255"), 2))
    ours = wrap_apdu(
        plain,
        keys=KEYS,
        security=Security.AUTHENTICATED_ENCRYPTION,
        system_title=CLIENT_TITLE,
        invocation_counter=0x1234,
        dedicated=True,
    )
    assert ours == theirs and ours[0] == 0xD0
    assert gurux_decrypt(ours, CLIENT_TITLE, key=DK) == (plain, 0x1234)


def test_general_glo_ciphering_matches_gurux_client() -> None:
    client = gurux_client(Security.AUTHENTICATED_ENCRYPTION)
    client.settings.connected |= ConnectionState.DLMS
    client.settings.negotiatedConformance |= Conformance.GENERAL_PROTECTION
    theirs = only_frame(client.read(GXDLMSClock("0.0.1.0.0.255"), 2))
    plain = only_frame(gurux_client(None).read(GXDLMSClock("0.0.1.0.0.255"), 2))
    ours = wrap_apdu(
        plain,
        keys=KEYS,
        security=Security.AUTHENTICATED_ENCRYPTION,
        system_title=CLIENT_TITLE,
        invocation_counter=0x1234,
        general=True,
    )
    assert ours == theirs
    assert ours[:10] == b"\xdb\x08" + CLIENT_TITLE
    # The title inside the APDU is the IV's: no peer title needed to read it.
    got = unwrap_apdu(
        ours,
        keys=KEYS,
        security=Security.AUTHENTICATED_ENCRYPTION,
        peer_system_title=None,
        last_invocation_counter=None,
    )
    assert (got.apdu, got.system_title, got.general) == (plain, CLIENT_TITLE, True)


def _user_information(aarq: bytes) -> bytes:
    """The xDLMS payload of an AARQ: walk its short-form BER elements to user-information (0xBE)."""
    assert aarq[0] == 0x60 and aarq[1] == len(aarq) - 2
    pos = 2
    while pos < len(aarq):
        tag, length = aarq[pos], aarq[pos + 1]
        if tag == 0xBE:
            inner = aarq[pos + 2 : pos + 2 + length]
            assert inner[0] == 0x04 and inner[1] == len(inner) - 2  # OCTET STRING
            return inner[2:]
        pos += 2 + length
    raise AssertionError("no user-information in the AARQ")


def test_glo_initiate_request_in_gurux_aarq() -> None:
    plain = _user_information(only_frame(gurux_client(None).aarqRequest()))
    assert plain[0] == 0x01  # initiate-request
    theirs = _user_information(
        only_frame(gurux_client(Security.AUTHENTICATED_ENCRYPTION, ic=7).aarqRequest())
    )
    ours = wrap_apdu(
        plain,
        keys=KEYS,
        security=Security.AUTHENTICATED_ENCRYPTION,
        system_title=CLIENT_TITLE,
        invocation_counter=7,
    )
    assert ours == theirs and ours[0] == 0x21
    parsed = GlobalCipherInitiateRequest.from_bytes(ours)  # dlms-cosem reads it the same way
    assert (parsed.invocation_counter, parsed.security_control.to_bytes()) == (7, b"\x30")


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(
    ("plain", "tag"),
    [
        (GET_RESPONSE, 0xCC),
        (bytes.fromhex("C501C100"), 0xCD),  # set-response-normal, success
        (bytes.fromhex("C701C10000"), 0xCF),  # action-response-normal, success, no data
    ],
)
def test_responses_ciphered_by_gurux(level: Security, plain: bytes, tag: int) -> None:
    theirs = gurux_encrypt(plain, tag, level, METER_TITLE, ic=0x01020304)
    got = unwrap_apdu(
        theirs, keys=KEYS, security=level, peer_system_title=METER_TITLE, last_invocation_counter=0x01020303
    )
    assert (got.apdu, got.invocation_counter, got.security) == (plain, 0x01020304, level)
    ours = wrap_apdu(
        plain, keys=KEYS, security=level, system_title=METER_TITLE, invocation_counter=0x01020304
    )
    assert ours == theirs


@pytest.mark.parametrize("level", LEVELS)
def test_gurux_deciphers_long_apdus(level: Security) -> None:
    # 200 and 300 bytes: the 0x81 and 0x82 length forms.
    for size in (200, 300):
        plain = bytes([0xC4]) + bytes(range(256)) * 2
        plain = plain[:size]
        ours = wrap_apdu(plain, keys=KEYS, security=level, system_title=METER_TITLE, invocation_counter=9)
        assert ours[1] == (0x81 if size < 240 else 0x82)
        assert gurux_decrypt(ours, METER_TITLE) == (plain, 9)
        assert ours == gurux_encrypt(plain, 0xCC, level, METER_TITLE, ic=9)


def test_hls_gmac_f_stoc_matches_gurux_client() -> None:
    stoc = bytes.fromhex("5A2F9E11C0D3B7840E6C3A91F2D7551B")
    client = gurux_client(None, ic=0x1234, auth=Authentication.HIGH_GMAC)
    client.settings.stoCChallenge = stoc
    action = only_frame(client.getApplicationAssociationRequest())
    # action-request-normal on 0.0.40.0.0.255 class 15 method 1, data octet-string(17) = f(StoC)
    assert action[:15] == bytes.fromhex("C301C1000F0000280000FF01010911")
    ours = hls_gmac(stoc, keys=KEYS, system_title=CLIENT_TITLE, invocation_counter=0x1234)
    assert ours == action[15:]
    assert ours[:5] == bytes.fromhex("1000001234")

    # The same pass 3 ciphered: gurux spends 0x1234 on f(StoC) and ciphers the request with 0x1235.
    ciphered = gurux_client(Security.AUTHENTICATED_ENCRYPTION, ic=0x1234, auth=Authentication.HIGH_GMAC)
    ciphered.settings.stoCChallenge = stoc
    theirs = only_frame(ciphered.getApplicationAssociationRequest())
    assert theirs == wrap_apdu(
        action,
        keys=KEYS,
        security=Security.AUTHENTICATED_ENCRYPTION,
        system_title=CLIENT_TITLE,
        invocation_counter=0x1235,
    )


def test_hls_gmac_f_ctos_against_gurux() -> None:
    ctos = bytes(range(100, 116))
    meter = gurux_client(None, auth=Authentication.HIGH_GMAC)
    meter.ciphering.systemTitle = METER_TITLE
    theirs = bytes(GXSecure.secure(meter.settings, meter.ciphering, 77, ctos, METER_TITLE))
    assert (
        verify_hls_gmac(
            theirs, challenge=ctos, keys=KEYS, peer_system_title=METER_TITLE, last_invocation_counter=76
        )
        == 77
    )
    # ...and the gurux client accepts our f(CtoS), the way our simulated meter will answer.
    client = gurux_client(None, auth=Authentication.HIGH_GMAC)
    client.settings.ctoSChallenge = ctos
    client.settings.sourceSystemTitle = METER_TITLE
    ours = hls_gmac(ctos, keys=KEYS, system_title=METER_TITLE, invocation_counter=77)
    assert ours == theirs
    client.parseApplicationAssociationResponse(GXByteBuffer(b"\x09\x11" + ours))
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(Exception, match="do not match"):
        client.parseApplicationAssociationResponse(GXByteBuffer(b"\x09\x11" + ours[:-1] + b"\x00"))


# --- known answers: dlms-cosem ---------------------------------------------------------------------


@pytest.mark.parametrize("level", TAGGED)  # dlms-cosem's encrypt always authenticates with SC || AK
def test_content_matches_dlms_cosem(level: Security) -> None:
    plain = GET_RESPONSE
    field = cosem_security.SecurityControlField(
        security_suite=0, authenticated=True, encrypted=level is Security.AUTHENTICATED_ENCRYPTION
    )
    if level is Security.AUTHENTICATED_ENCRYPTION:
        theirs = cosem_security.encrypt(field, METER_TITLE, 42, EK, plain, AK)
        ours = protect(plain, keys=KEYS, security=level, system_title=METER_TITLE, invocation_counter=42)
        assert ours == b"\x30" + (42).to_bytes(4, "big") + theirs
        assert cosem_security.decrypt(field, METER_TITLE, 42, EK, ours[5:], AK) == plain
    else:
        # Authentication only is GMAC over SC || AK || APDU with the APDU sent in clear.
        tag = cosem_security.gmac(field, METER_TITLE, 42, EK, AK, plain)
        ours = protect(plain, keys=KEYS, security=level, system_title=METER_TITLE, invocation_counter=42)
        assert ours == b"\x10" + (42).to_bytes(4, "big") + plain + tag
    assert unprotect(ours, keys=KEYS, security=level, system_title=METER_TITLE) == (42, plain)


def test_general_glo_ciphering_parsed_by_dlms_cosem() -> None:
    ours = wrap_apdu(
        GET_RESPONSE,
        keys=KEYS,
        security=Security.AUTHENTICATED_ENCRYPTION,
        system_title=METER_TITLE,
        invocation_counter=1000,
        general=True,
    )
    parsed = GeneralGlobalCipher.from_bytes(ours)
    assert (parsed.system_title, parsed.invocation_counter) == (METER_TITLE, 1000)
    assert parsed.to_bytes() == ours
    field = parsed.security_control
    assert cosem_security.decrypt(field, METER_TITLE, 1000, EK, parsed.ciphered_text, AK) == GET_RESPONSE
    # The other way: dlms-cosem ciphers as a meter would, we read it.
    theirs = GeneralGlobalCipher(
        system_title=METER_TITLE,
        security_control=field,
        invocation_counter=1001,
        ciphered_text=cosem_security.encrypt(field, METER_TITLE, 1001, EK, GET_RESPONSE, AK),
    ).to_bytes()
    got = unwrap_apdu(
        theirs,
        keys=KEYS,
        security=Security.AUTHENTICATED_ENCRYPTION,
        peer_system_title=METER_TITLE,
        last_invocation_counter=1000,
    )
    assert (got.apdu, got.invocation_counter) == (GET_RESPONSE, 1001)


def test_hls_gmac_against_dlms_cosem() -> None:
    stoc = bytes.fromhex("0F1E2D3C4B5A69788796A5B4C3D2E1F0")
    ctos = bytes.fromhex("8899AABBCCDDEEFF0011223344556677")
    connection = SimpleNamespace(
        meter_to_client_challenge=stoc,
        global_encryption_key=EK,
        global_authentication_key=AK,
        security_suite=0,
        client_system_title=CLIENT_TITLE,
        client_invocation_counter=5,
        meter_system_title=METER_TITLE,
    )
    hls = cosem_security.HighLevelSecurityGmacAuthentication(challenge_length=16)
    hls.calling_authentication_value = ctos
    assert hls_gmac(stoc, keys=KEYS, system_title=CLIENT_TITLE, invocation_counter=5) == (
        hls.hls_generate_reply_data(connection)
    )
    f_ctos = hls_gmac(ctos, keys=KEYS, system_title=METER_TITLE, invocation_counter=900)
    assert hls.hls_meter_data_is_valid(f_ctos, connection)
    assert not hls.hls_meter_data_is_valid(f_ctos[:-1] + bytes([f_ctos[-1] ^ 1]), connection)


# --- round trips, tampering, truncation -----------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    plain_tag=st.sampled_from(sorted(GLO_TAGS)),
    body=st.binary(max_size=300),
    level=st.sampled_from(LEVELS),
    dedicated=st.booleans(),
    general=st.booleans(),
    ic=st.integers(0, sec.MAX_INVOCATION_COUNTER),
    title=st.binary(min_size=8, max_size=8),
)
def test_wrap_unwrap_round_trip(
    plain_tag: int, body: bytes, level: Security, dedicated: bool, general: bool, ic: int, title: bytes
) -> None:
    plain = bytes([plain_tag]) + body
    ciphered = wrap_apdu(
        plain,
        keys=KEYS,
        security=level,
        system_title=title,
        invocation_counter=ic,
        dedicated=dedicated,
        general=general,
    )
    assert is_ciphered_apdu(ciphered)
    tag_length = 0 if level is Security.ENCRYPTION else sec.TAG_LENGTH
    payload = ciphered[len(ciphered) - tag_length - len(plain) : len(ciphered) - tag_length]
    if level is Security.AUTHENTICATION:
        assert payload == plain  # authenticated only: the APDU travels in clear
    elif len(plain) >= 8:  # shorter ones may match the keystream by chance (1 in 256 for one byte)
        assert payload != plain
    got = unwrap_apdu(
        ciphered,
        keys=KEYS,
        security=level,
        peer_system_title=title,
        last_invocation_counter=ic - 1 if ic else None,
    )
    assert got == sec.Unwrapped(plain, ic, level, title, dedicated, general)


def test_round_trip_with_four_byte_length() -> None:
    plain = b"\xc4" + bytes(70_000)
    ciphered = wrap_apdu(
        plain,
        keys=KEYS,
        security=Security.AUTHENTICATED_ENCRYPTION,
        system_title=METER_TITLE,
        invocation_counter=1,
    )
    assert ciphered[1] == 0x84
    assert gurux_decrypt(ciphered, METER_TITLE) == (plain, 1)
    got = unwrap_apdu(
        ciphered,
        keys=KEYS,
        security=Security.AUTHENTICATED_ENCRYPTION,
        peer_system_title=METER_TITLE,
        last_invocation_counter=None,
    )
    assert got.apdu == plain


def _forms(level: Security) -> list[bytes]:
    common = {"keys": KEYS, "security": level, "system_title": METER_TITLE, "invocation_counter": 0x10203}
    return [
        wrap_apdu(GET_RESPONSE, **common),
        wrap_apdu(GET_RESPONSE, **common, dedicated=True),
        wrap_apdu(GET_RESPONSE, **common, general=True),
        wrap_apdu(GET_RESPONSE, **common, general=True, dedicated=True),
    ]


def _unwrap(data: bytes, level: Security) -> sec.Unwrapped:
    return unwrap_apdu(
        data, keys=KEYS, security=level, peer_system_title=METER_TITLE, last_invocation_counter=None
    )


MASKS = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xFF)


@pytest.mark.parametrize("level", TAGGED)
def test_any_flipped_byte_is_refused(level: Security) -> None:
    messages = []
    for ciphered in _forms(level):
        assert _unwrap(ciphered, level).apdu == GET_RESPONSE
        for pos in range(len(ciphered)):
            for mask in MASKS:
                tampered = bytearray(ciphered)
                tampered[pos] ^= mask
                with pytest.raises(SecurityError) as caught:
                    _unwrap(bytes(tampered), level)
                messages.append(caught.value)
    for exc in messages:
        assert_no_key_material(str(exc) + repr(exc) + "".join(traceback.format_exception(exc)))


def test_encryption_only_refuses_flipped_header() -> None:
    # Without a tag only the framing can be checked: the tag, the lengths, the control byte, the title.
    level = Security.ENCRYPTION
    for ciphered in _forms(level):
        header = 2 if ciphered[0] < 0xDB else 11  # tag + length, or tag + title + length
        for pos in [*range(header), header]:  # ... and the security control byte
            for mask in MASKS:
                tampered = bytearray(ciphered)
                tampered[pos] ^= mask
                with pytest.raises(SecurityError):
                    _unwrap(bytes(tampered), level)


@pytest.mark.parametrize("level", LEVELS)
def test_every_truncation_and_extension_is_refused(level: Security) -> None:
    for ciphered in _forms(level):
        for cut in range(len(ciphered)):
            with pytest.raises(SecurityError):
                _unwrap(ciphered[:cut], level)
        with pytest.raises(SecurityError, match="trailing"):
            _unwrap(ciphered + b"\x00", level)


@settings(max_examples=300, deadline=None)
@given(
    tag=st.sampled_from([*sorted(sec._PLAIN_OF), 0xDB, 0xDC, 0x00, 0xC0, 0xD8]),
    rest=st.binary(max_size=80),
    level=st.sampled_from(LEVELS),
)
def test_garbage_raises_only_security_error(tag: int, rest: bytes, level: Security) -> None:
    try:
        _unwrap(bytes([tag]) + rest, level)
    except SecurityError as exc:
        assert_no_key_material(str(exc))


# --- policy: control byte, keys, titles -------------------------------------------------------------


def test_security_control_must_match_the_policy() -> None:
    auth_only = wrap_apdu(
        GET_RESPONSE,
        keys=KEYS,
        security=Security.AUTHENTICATION,
        system_title=METER_TITLE,
        invocation_counter=3,
    )
    # A forger strips the encryption: an authenticated-only APDU where the policy wants both.
    with pytest.raises(SecurityError, match=r"0x10 where the security policy requires 0x30"):
        _unwrap(auth_only, Security.AUTHENTICATED_ENCRYPTION)
    for sc, what in ((0x31, "suite 1"), (0x70, "broadcast"), (0xB0, "compression"), (0x00, "requires 0x30")):
        bad = bytearray(auth_only)
        bad[2] = sc
        with pytest.raises(SecurityError, match=what):
            _unwrap(bytes(bad), Security.AUTHENTICATED_ENCRYPTION)
    with pytest.raises(SecurityError, match="is not 0x10, 0x20 or 0x30"):
        _unwrap(auth_only, 0x40)  # type: ignore[arg-type]
    assert sec.security_control(Security.AUTHENTICATED_ENCRYPTION) == 0x30


def test_wrong_key_or_title_is_refused_without_naming_the_key() -> None:
    ciphered = _forms(Security.AUTHENTICATED_ENCRYPTION)[0]
    other = SecurityKeys(bytes(16), AK)
    with pytest.raises(SecurityError, match="does not verify") as caught:
        unwrap_apdu(
            ciphered,
            keys=other,
            security=Security.AUTHENTICATED_ENCRYPTION,
            peer_system_title=METER_TITLE,
            last_invocation_counter=None,
        )
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert_no_key_material("".join(traceback.format_exception(caught.value)))
    with pytest.raises(SecurityError, match="does not verify"):
        unwrap_apdu(
            ciphered,
            keys=KEYS,
            security=Security.AUTHENTICATED_ENCRYPTION,
            peer_system_title=CLIENT_TITLE,
            last_invocation_counter=None,
        )
    general = _forms(Security.AUTHENTICATED_ENCRYPTION)[2]
    with pytest.raises(SecurityError, match="other than the peer's"):
        unwrap_apdu(
            general,
            keys=KEYS,
            security=Security.AUTHENTICATED_ENCRYPTION,
            peer_system_title=CLIENT_TITLE,
            last_invocation_counter=None,
        )
    with pytest.raises(SecurityError, match="not known"):
        unwrap_apdu(
            ciphered,
            keys=KEYS,
            security=Security.AUTHENTICATED_ENCRYPTION,
            peer_system_title=None,
            last_invocation_counter=None,
        )


def test_general_ciphering_without_title_uses_the_peers() -> None:
    ciphered = _forms(Security.AUTHENTICATED_ENCRYPTION)[2]
    no_title = b"\xdb\x00" + ciphered[10:]  # as some meters send it on a local port
    got = _unwrap(no_title, Security.AUTHENTICATED_ENCRYPTION)
    assert (got.apdu, got.system_title) == (GET_RESPONSE, METER_TITLE)


def test_dedicated_and_untagged_misuse() -> None:
    global_only = SecurityKeys(EK, AK)
    with pytest.raises(SecurityError, match="without a dedicated key"):
        wrap_apdu(
            GET_RESPONSE,
            keys=global_only,
            security=Security.AUTHENTICATED_ENCRYPTION,
            system_title=METER_TITLE,
            invocation_counter=1,
            dedicated=True,
        )
    ded = _forms(Security.AUTHENTICATED_ENCRYPTION)[1]
    with pytest.raises(SecurityError, match="without a dedicated key"):
        unwrap_apdu(
            ded,
            keys=global_only,
            security=Security.AUTHENTICATED_ENCRYPTION,
            peer_system_title=METER_TITLE,
            last_invocation_counter=None,
        )
    assert KEYS.with_dedicated_key(None).dedicated_key is None
    assert global_only.with_dedicated_key(DK).dedicated_key == DK
    common = {"keys": KEYS, "security": Security.AUTHENTICATION, "system_title": METER_TITLE}
    with pytest.raises(SecurityError, match="no glo-ciphered form"):
        wrap_apdu(bytes.fromhex("6000"), **common, invocation_counter=1)  # an AARQ is never glo-ciphered
    # ...but general ciphering carries any APDU, a data-notification for one.
    notification = wrap_apdu(bytes.fromhex("0F00000001000900"), **common, invocation_counter=1, general=True)
    assert _unwrap(notification, Security.AUTHENTICATION).apdu == bytes.fromhex("0F00000001000900")
    with pytest.raises(SecurityError, match="empty"):
        wrap_apdu(b"", **common, invocation_counter=1)
    with pytest.raises(SecurityError, match="out of range"):
        wrap_apdu(GET_RESPONSE, **common, invocation_counter=sec.MAX_INVOCATION_COUNTER + 1)
    with pytest.raises(SecurityError, match="system title must be 8 bytes, got 7"):
        wrap_apdu(GET_RESPONSE, **{**common, "system_title": METER_TITLE[:7]}, invocation_counter=1)
    # A glo-get-response must carry a get-response: the tag is outside the GCM tag's cover.
    swapped = bytearray(_forms(Security.AUTHENTICATION)[0])
    swapped[0] = 0xCD  # glo-set-response around a get-response
    with pytest.raises(SecurityError, match="carries a plain APDU"):
        _unwrap(bytes(swapped), Security.AUTHENTICATION)
    assert not is_ciphered_apdu(b"") and not is_ciphered_apdu(GET_RESPONSE)


# --- replay ---------------------------------------------------------------------------------------


def test_invocation_counter_rule() -> None:
    check_invocation_counter(0, None)
    check_invocation_counter(6, 5)
    check_invocation_counter(sec.MAX_INVOCATION_COUNTER, sec.MAX_INVOCATION_COUNTER - 1)
    for received, last in ((5, 5), (4, 5), (0, 0)):
        with pytest.raises(SecurityError, match="replayed"):
            check_invocation_counter(received, last)
    with pytest.raises(SecurityError, match="out of range"):
        check_invocation_counter(-1, None)


def test_replayed_apdu_is_refused() -> None:
    ciphered = wrap_apdu(
        GET_RESPONSE,
        keys=KEYS,
        security=Security.AUTHENTICATED_ENCRYPTION,
        system_title=METER_TITLE,
        invocation_counter=500,
    )

    def receive(last: int | None) -> int:
        return unwrap_apdu(
            ciphered,
            keys=KEYS,
            security=Security.AUTHENTICATED_ENCRYPTION,
            peer_system_title=METER_TITLE,
            last_invocation_counter=last,
        ).invocation_counter

    assert receive(499) == 500
    with pytest.raises(SecurityError, match="replayed"):
        receive(500)  # the same frame a second time
    with pytest.raises(SecurityError, match="replayed"):
        receive(900)  # a frame from before the counter we already hold


def test_hls_gmac_verification_refusals() -> None:
    ctos = bytes(range(16))
    good = hls_gmac(ctos, keys=KEYS, system_title=METER_TITLE, invocation_counter=10)

    def verify(
        reply: bytes, challenge: bytes = ctos, title: bytes = METER_TITLE, last: int | None = None
    ) -> int:
        return verify_hls_gmac(
            reply, challenge=challenge, keys=KEYS, peer_system_title=title, last_invocation_counter=last
        )

    assert verify(good) == 10
    with pytest.raises(SecurityError, match="does not verify"):
        verify(good, challenge=bytes(range(1, 17)))
    with pytest.raises(SecurityError, match="does not verify"):
        verify(good, title=CLIENT_TITLE)
    with pytest.raises(SecurityError, match="security control 0x30"):
        verify(b"\x30" + good[1:])
    with pytest.raises(SecurityError, match="expected 17"):
        verify(good[:-1])
    with pytest.raises(SecurityError, match="replayed"):
        verify(good, last=10)
    for pos in range(len(good)):
        with pytest.raises(SecurityError):
            verify(good[:pos] + bytes([good[pos] ^ 0x04]) + good[pos + 1 :])
    with pytest.raises(SecurityError, match="challenge of 7 bytes"):
        hls_gmac(bytes(7), keys=KEYS, system_title=CLIENT_TITLE, invocation_counter=1)


# --- keys stay secret ------------------------------------------------------------------------------


def test_keys_never_shown() -> None:
    for keys in (KEYS, SecurityKeys(EK, AK)):
        for text in (repr(keys), str(keys), f"{keys}", f"{keys!r}", f"{[keys]}"):
            assert_no_key_material(text)
            assert "<set>" in text
    got = _unwrap(_forms(Security.AUTHENTICATED_ENCRYPTION)[0], Security.AUTHENTICATED_ENCRYPTION)
    assert_no_key_material(repr(got))
    with pytest.raises(SecurityError) as caught:
        SecurityKeys(EK, AK[:15])
    assert "authentication_key must be 16 bytes" in str(caught.value)
    assert_no_key_material(str(caught.value) + repr(caught.value))
    with pytest.raises(SecurityError, match="dedicated_key must be 16 bytes for security suite 0, got 17"):
        SecurityKeys(EK, AK, DK + b"\x00")
    with pytest.raises(AttributeError):
        KEYS.encryption_key = bytes(16)  # type: ignore[misc]


def test_security_error_is_a_protocol_error() -> None:
    assert issubclass(SecurityError, ProtocolError)
