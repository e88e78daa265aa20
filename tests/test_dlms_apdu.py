"""Our xDLMS APDU codec against gurux-dlms's client and dlms-cosem's APDU classes, round trips, fuzzing.

gurux-dlms builds requests (in WRAPPER mode; the 8-byte wrapper header is cut here) that we must
build byte for byte, and parses the responses we build as a meter would send them. dlms-cosem's APDU
classes give a second, independent encoding. Neither is ever imported by appliance/ code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from dlms_cosem import cosem
from dlms_cosem import enumerations as cosem_enums
from dlms_cosem.cosem import Obis as CosemObis
from dlms_cosem.cosem.capture_object import CaptureObject as CosemCaptureObject
from dlms_cosem.cosem.selective_access import RangeDescriptor as CosemRange
from dlms_cosem.protocol import acse, xdlms
from dlms_cosem.protocol.acse.user_information import UserInformation
from dlms_cosem.protocol.xdlms.conformance import Conformance as CosemConformance
from gurux_dlms import GXDLMSClient, GXDLMSException, GXReplyData
from gurux_dlms.enums import Authentication, DataType, InterfaceType, Security
from gurux_dlms.enums import Conformance as GuruxConformance
from gurux_dlms.GXDateTime import GXDateTime
from gurux_dlms.GXDLMSConfirmedServiceError import GXDLMSConfirmedServiceError
from gurux_dlms.GXDLMSExceptionResponse import GXDLMSExceptionResponse
from gurux_dlms.GXTimeZone import GXTimeZone
from gurux_dlms.objects import (
    GXDLMSCaptureObject,
    GXDLMSClock,
    GXDLMSDisconnectControl,
    GXDLMSProfileGeneric,
    GXDLMSRegister,
)
from gurux_dlms.secure import GXDLMSSecureClient
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.collect.dlms import apdu, axdr
from appliance.collect.dlms.apdu import (
    CLOCK_TIME,
    DEFAULT_CONFORMANCE,
    Aare,
    Aarq,
    AccessSelection,
    AcseServiceProviderDiagnostic,
    AcseServiceUserDiagnostic,
    ActionError,
    ActionRequestNormal,
    ActionResponseNormal,
    ActionResult,
    ApplicationContext,
    AssociationRejected,
    AssociationResult,
    AttributeDescriptor,
    CaptureObject,
    CipheredApdu,
    ConfirmedService,
    ConfirmedServiceError,
    Conformance,
    DataAccessError,
    DataAccessResult,
    EntryDescriptor,
    ExceptionResponse,
    ExceptionResponseError,
    ExceptionServiceError,
    GetRequestNext,
    GetRequestNormal,
    GetResponseNormal,
    GetResponseWithDatablock,
    InitiateRequest,
    InitiateResponse,
    InvokeIdAndPriority,
    Mechanism,
    MethodDescriptor,
    RangeDescriptor,
    ReleaseRequest,
    ReleaseRequestReason,
    ReleaseResponse,
    ReleaseResponseReason,
    ServiceErrorKind,
    ServiceRefused,
    SetRequestNormal,
    SetResponseNormal,
    StateError,
)
from appliance.collect.dlms.axdr import (
    Array,
    DateTime,
    DoubleLongUnsigned,
    Integer,
    LongUnsigned,
    OctetString,
    Structure,
)
from appliance.collect.dlms.obis import Obis
from appliance.errors import DeviceError, ProtocolError
from tests.test_dlms_axdr import check_decoder_contract, cosem_data, mutated_encodings

CLOCK = Obis(0, 0, 1, 0, 0, 255)
ENERGY_IMPORT = Obis(1, 0, 1, 8, 0, 255)
LOAD_PROFILE = Obis(1, 0, 99, 1, 0, 255)
DISCONNECT_CONTROL = Obis(0, 0, 96, 3, 10, 255)
SYSTEM_TITLE = bytes.fromhex("4d4d4d0000bc614e")
CTOS = bytes.fromhex("0102030405060708")
STOC = bytes.fromhex("50365752493231463338383736353433")
BLOCK_CIPHER_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
AUTHENTICATION_KEY = bytes.fromhex("d0d1d2d3d4d5d6d7d8d9dadbdcdddedf")

# ---------------------------------------------------------------------------------------------------------
# gurux helpers: its client in WRAPPER mode; the wrapper header is 8 bytes (version, source, target, length)


def unwrap(frames: list[bytearray] | bytearray) -> bytes:
    """The APDU inside gurux's one wrapper frame."""
    if isinstance(frames, list):
        assert len(frames) == 1, "expected one frame"
        frames = frames[0]
    frame = bytes(frames)
    assert frame[:2] == b"\x00\x01" and int.from_bytes(frame[6:8], "big") == len(frame) - 8
    return frame[8:]


def wrap(data: bytes) -> bytes:
    return bytes.fromhex("000100010010") + len(data).to_bytes(2, "big") + data


def gurux_client(
    authentication: Authentication = Authentication.NONE, password: str | None = None
) -> GXDLMSClient:
    return GXDLMSClient(True, 16, 1, authentication, password, InterfaceType.WRAPPER)


def gurux_hls_client(security: Security) -> GXDLMSSecureClient:
    client = GXDLMSSecureClient(True, 16, 1, Authentication.HIGH_GMAC, None, InterfaceType.WRAPPER)
    client.settings.cipher.security = security
    client.settings.cipher.systemTitle = SYSTEM_TITLE
    client.settings.cipher.blockCipherKey = BLOCK_CIPHER_KEY
    client.settings.cipher.authenticationKey = AUTHENTICATION_KEY
    client.settings.cipher.invocationCounter = 5
    client.settings.ctoSChallenge = CTOS
    client.settings.useCustomChallenge = True
    return client


def gurux_reads(client: GXDLMSClient, response: bytes) -> GXReplyData:
    reply = GXReplyData()
    assert client.getData(wrap(response), reply)
    return reply


def profile() -> tuple[GXDLMSProfileGeneric, GXDLMSClock, GXDLMSRegister]:
    clock, register = GXDLMSClock(str(CLOCK)), GXDLMSRegister(str(ENERGY_IMPORT))
    load_profile = GXDLMSProfileGeneric(str(LOAD_PROFILE))
    load_profile.captureObjects.append((clock, GXDLMSCaptureObject(2, 0)))
    load_profile.captureObjects.append((register, GXDLMSCaptureObject(2, 0)))
    return load_profile, clock, register


def encodes_and_decodes(ours: apdu.Apdu, theirs: bytes) -> None:
    assert ours.to_bytes() == theirs
    assert apdu.decode_apdu(theirs) == ours


# ---------------------------------------------------------------------------------------------------------
# Requests: known answers from gurux's client


def test_aarq_without_authentication_matches_gurux() -> None:
    theirs = unwrap(gurux_client().aarqRequest())
    assert theirs.hex() == "601da109060760857405080101be10040e01000000065f1f0400401e5dffff"
    encodes_and_decodes(Aarq(), theirs)


def test_aarq_low_level_security_matches_gurux() -> None:
    theirs = unwrap(gurux_client(Authentication.LOW, "12345678").aarqRequest())
    encodes_and_decodes(Aarq(mechanism=Mechanism.LOW, calling_authentication_value=b"12345678"), theirs)


def test_aarq_hls_gmac_matches_gurux() -> None:
    theirs = unwrap(gurux_hls_client(Security.NONE).aarqRequest())
    ours = Aarq(
        calling_ap_title=SYSTEM_TITLE, mechanism=Mechanism.HIGH_GMAC, calling_authentication_value=CTOS
    )
    encodes_and_decodes(ours, theirs)


def test_aarq_hls_gmac_with_ciphered_context_carries_the_glo_initiate_request() -> None:
    theirs = unwrap(gurux_hls_client(Security.AUTHENTICATION_ENCRYPTION).aarqRequest())
    decoded = apdu.decode_apdu(theirs)
    assert isinstance(decoded, Aarq) and isinstance(decoded.user_information, CipheredApdu)
    assert decoded.application_context == ApplicationContext.LOGICAL_NAME_CIPHERED
    assert decoded.user_information.tag == 0x21  # glo-initiate-request
    assert decoded.user_information.raw[2] == 0x30  # security control: authenticated and encrypted
    ours = Aarq(
        ApplicationContext.LOGICAL_NAME_CIPHERED,
        SYSTEM_TITLE,
        Mechanism.HIGH_GMAC,
        CTOS,
        CipheredApdu(decoded.user_information.raw),
    )
    assert ours.to_bytes() == theirs


def test_get_requests_match_gurux() -> None:
    client = gurux_client()
    clock_time = GetRequestNormal(AttributeDescriptor(8, CLOCK, 2))
    encodes_and_decodes(clock_time, unwrap(client.read(GXDLMSClock(str(CLOCK)), 2)))
    scaler_unit = GetRequestNormal(AttributeDescriptor(3, ENERGY_IMPORT, 3))
    encodes_and_decodes(scaler_unit, unwrap(client.read(GXDLMSRegister(str(ENERGY_IMPORT)), 3)))


def _gurux_moment(moment: datetime, offset_minutes: int) -> datetime:
    return moment.replace(tzinfo=GXTimeZone(offset_minutes))


def _as_gurux_sends(moment: datetime) -> DateTime:
    # gurux leaves the day of week unspecified in selective access
    return dataclasses.replace(DateTime.from_datetime(moment), day_of_week=None)


def test_read_by_range_matches_gurux() -> None:
    load_profile, _, _ = profile()
    start = _gurux_moment(datetime(2024, 3, 1), 60)
    end = _gurux_moment(datetime(2024, 3, 2), 60)
    theirs = unwrap(gurux_client().readRowsByRange(load_profile, start, end))
    by_range = RangeDescriptor.between(_as_gurux_sends(start), _as_gurux_sends(end))
    ours = GetRequestNormal(AttributeDescriptor(7, LOAD_PROFILE, 2), by_range.to_access_selection())
    encodes_and_decodes(ours, theirs)
    decoded = apdu.decode_apdu(theirs)
    assert isinstance(decoded, GetRequestNormal) and decoded.access_selection is not None
    back = RangeDescriptor.from_access_selection(decoded.access_selection)
    assert back.restricting_object == CLOCK_TIME
    assert DateTime.from_data(back.from_value).deviation == -60  # UTC+01:00 sent as -60


def test_read_by_range_with_selected_columns_matches_gurux() -> None:
    load_profile, _, _ = profile()
    start, end = _gurux_moment(datetime(2024, 3, 1), 60), _gurux_moment(datetime(2024, 3, 2), 60)
    theirs = unwrap(
        gurux_client().readRowsByRange(load_profile, start, end, [load_profile.captureObjects[1]])
    )
    column = CaptureObject(3, ENERGY_IMPORT, 2)
    by_range = RangeDescriptor.between(_as_gurux_sends(start), _as_gurux_sends(end), (column,))
    encodes_and_decodes(
        GetRequestNormal(AttributeDescriptor(7, LOAD_PROFILE, 2), by_range.to_access_selection()), theirs
    )


def test_read_by_entry_matches_gurux() -> None:
    load_profile, _, _ = profile()
    theirs = unwrap(gurux_client().readRowsByEntry(load_profile, 1, 10))
    ours = GetRequestNormal(
        AttributeDescriptor(7, LOAD_PROFILE, 2), EntryDescriptor(1, 10).to_access_selection()
    )
    encodes_and_decodes(ours, theirs)
    decoded = apdu.decode_apdu(theirs)
    assert isinstance(decoded, GetRequestNormal) and decoded.access_selection is not None
    assert EntryDescriptor.from_access_selection(decoded.access_selection) == EntryDescriptor(1, 10, 1, 0)


def test_write_clock_matches_gurux() -> None:
    client, clock = gurux_client(), GXDLMSClock(str(CLOCK))
    clock.time = GXDateTime(_gurux_moment(datetime(2024, 3, 1, 12, 30, 15), 60))
    theirs = unwrap(client.write(clock, 2))
    moment = DateTime(2024, 3, 1, 12, 30, 15, hundredths=0, deviation=-60)
    encodes_and_decodes(
        SetRequestNormal(AttributeDescriptor(8, CLOCK, 2), OctetString(moment.to_bytes())), theirs
    )


def test_disconnect_control_methods_match_gurux() -> None:
    client, control = gurux_client(), GXDLMSDisconnectControl(str(DISCONNECT_CONTROL))
    disconnect = ActionRequestNormal(MethodDescriptor(70, DISCONNECT_CONTROL, 1), Integer(0))
    encodes_and_decodes(disconnect, unwrap(control.remoteDisconnect(client)))
    reconnect = ActionRequestNormal(MethodDescriptor(70, DISCONNECT_CONTROL, 2), Integer(0))
    encodes_and_decodes(reconnect, unwrap(client.method(control, 2, 0, DataType.INT8)))


def test_release_request_matches_gurux() -> None:
    client = gurux_client()
    client.settings.connected = 3  # HDLC and DLMS: gurux only releases an open association
    encodes_and_decodes(ReleaseRequest(ReleaseRequestReason.NORMAL), unwrap(client.releaseRequest()))


# ---------------------------------------------------------------------------------------------------------
# Responses: gurux's client reads what we send as a meter


def test_gurux_accepts_our_aare_and_negotiates_from_it() -> None:
    client = gurux_client()
    client.aarqRequest()
    negotiated = Conformance.GET | Conformance.SET | Conformance.ACTION | Conformance.SELECTIVE_ACCESS
    aare = Aare(
        user_information=InitiateResponse(negotiated | Conformance.BLOCK_TRANSFER_WITH_GET_OR_READ, 0x400)
    )
    client.parseAareResponse(gurux_reads(client, aare.to_bytes()).data)
    # gurux keeps the block bit-reversed (bit 0 of the wire is its 0x1); compare by name.
    theirs = {flag.name.replace("_", "") for flag in GuruxConformance if client.negotiatedConformance & flag}
    assert theirs == {"BLOCKTRANSFERWITHGETORREAD", "GET", "SET", "ACTION", "SELECTIVEACCESS"}
    proposed = {flag.name.replace("_", "") for flag in GuruxConformance if client.proposedConformance & flag}
    assert proposed == {flag.name.replace("_", "") for flag in Conformance if flag in DEFAULT_CONFORMANCE}
    assert client.maxReceivePDUSize == 0x400


def test_gurux_reads_our_hls_challenge_and_answers_with_an_action_we_decode() -> None:
    client = gurux_hls_client(Security.NONE)
    client.aarqRequest()
    aare = Aare(
        diagnostic=AcseServiceUserDiagnostic.AUTHENTICATION_REQUIRED,
        responding_ap_title=bytes.fromhex("4d4d4d0000000001"),
        mechanism=Mechanism.HIGH_GMAC,
        responding_authentication_value=STOC,
        user_information=InitiateResponse(DEFAULT_CONFORMANCE, 0x400),
    )
    assert aare.accepted and aare.authentication_required
    client.parseAareResponse(gurux_reads(client, aare.to_bytes()).data)
    assert client.getIsAuthenticationRequired()
    assert bytes(client.settings.stoCChallenge) == STOC
    assert bytes(client.settings.sourceSystemTitle) == bytes.fromhex("4d4d4d0000000001")

    reply_to_challenge = apdu.decode_apdu(unwrap(client.getApplicationAssociationRequest()))
    assert isinstance(reply_to_challenge, ActionRequestNormal)
    assert reply_to_challenge.method == MethodDescriptor(15, Obis(0, 0, 40, 0, 0, 255), 1)
    assert isinstance(reply_to_challenge.parameters, OctetString)
    f_stoc = reply_to_challenge.parameters.value
    assert len(f_stoc) == 17 and f_stoc[0] == 0x10  # security control (authentication) + IC + GMAC tag


def test_gurux_sees_our_rejecting_aare_as_rejected() -> None:
    client = gurux_client()
    client.aarqRequest()
    rejected = Aare(
        result=AssociationResult.REJECTED_PERMANENT,
        diagnostic=AcseServiceUserDiagnostic.AUTHENTICATION_FAILURE,
    )
    with pytest.raises(GXDLMSException, match=r"[Aa]uthentication failure"):
        client.parseAareResponse(gurux_reads(client, rejected.to_bytes()).data)


def test_gurux_reads_our_get_set_action_and_release_responses() -> None:
    client = gurux_client()
    client.read(GXDLMSRegister(str(ENERGY_IMPORT)), 2)
    assert gurux_reads(client, GetResponseNormal(DoubleLongUnsigned(123456)).to_bytes()).value == 123456
    assert gurux_reads(client, GetResponseNormal(DataAccessResult.OBJECT_UNDEFINED).to_bytes()).error == 4
    assert gurux_reads(client, SetResponseNormal(DataAccessResult.SUCCESS).to_bytes()).error == 0
    assert gurux_reads(client, SetResponseNormal(DataAccessResult.READ_WRITE_DENIED).to_bytes()).error == 3
    assert gurux_reads(client, ActionResponseNormal(ActionResult.SUCCESS, Integer(5)).to_bytes()).value == 5
    assert gurux_reads(client, ActionResponseNormal(ActionResult.TEMPORARY_FAILURE).to_bytes()).error == 2
    assert gurux_reads(client, ReleaseResponse().to_bytes()).error == 0


def test_block_transfer_with_gurux_asking_for_the_next_block() -> None:
    client = gurux_client()
    load_profile, _, _ = profile()
    client.read(load_profile, 2)
    rows = Array(tuple(Structure((OctetString(bytes(12)), DoubleLongUnsigned(i))) for i in range(40)))
    raw = axdr.encode(rows)
    first, second = raw[:150], raw[150:]

    reply = GXReplyData()
    client.getData(wrap(GetResponseWithDatablock(False, 1, first).to_bytes()), reply)
    assert reply.isMoreData()
    next_request = unwrap(client.receiverReady(reply))
    encodes_and_decodes(GetRequestNext(1), next_request)

    client.getData(wrap(GetResponseWithDatablock(True, 2, second).to_bytes()), reply)
    assert not reply.isMoreData()
    assert [row[1] for row in reply.value] == list(range(40))

    # Our own reassembly of the same blocks.
    blocks = [
        apdu.parse_get_response(GetResponseWithDatablock(i == 2, i, part).to_bytes())
        for i, part in ((1, first), (2, second))
    ]
    assert all(isinstance(block, GetResponseWithDatablock) for block in blocks)
    assert axdr.decode(b"".join(block.result for block in blocks)) == rows  # type: ignore[misc, union-attr]


def test_gurux_raises_on_our_exception_and_service_error_responses() -> None:
    client = gurux_client()
    client.read(GXDLMSRegister(str(ENERGY_IMPORT)), 2)
    counter_error = ExceptionResponse(
        StateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.INVOCATION_COUNTER_ERROR, 42
    )
    with pytest.raises(GXDLMSExceptionResponse, match=r"[Ii]nvocation counter"):
        gurux_reads(client, counter_error.to_bytes())
    with pytest.raises(GXDLMSConfirmedServiceError, match="Access 2"):
        gurux_reads(
            client, ConfirmedServiceError(ConfirmedService.READ, ServiceErrorKind.ACCESS, 2).to_bytes()
        )


# ---------------------------------------------------------------------------------------------------------
# dlms-cosem's APDU classes: a second independent encoding

COSEM_INVOKE = xdlms.InvokeIdAndPriority(invoke_id=3, confirmed=True, high_priority=False)
OUR_INVOKE = InvokeIdAndPriority(3, confirmed=True, high_priority=False)
COSEM_CONFORMANCE = CosemConformance(
    general_protection=True,
    block_transfer_with_get_or_read=True,
    get=True,
    set=True,
    selective_access=True,
    action=True,
)
OUR_CONFORMANCE = (
    Conformance.GENERAL_PROTECTION
    | Conformance.BLOCK_TRANSFER_WITH_GET_OR_READ
    | Conformance.GET
    | Conformance.SET
    | Conformance.SELECTIVE_ACCESS
    | Conformance.ACTION
)
COSEM_CLOCK = cosem.CosemAttribute(cosem_enums.CosemInterface.CLOCK, CosemObis(0, 0, 1, 0, 0, 255), 2)
COSEM_PROFILE = cosem.CosemAttribute(
    cosem_enums.CosemInterface.PROFILE_GENERIC, CosemObis(1, 0, 99, 1, 0, 255), 2
)
COSEM_DISCONNECT = cosem.CosemMethod(
    cosem_enums.CosemInterface.DISCONNECT_CONTROL, CosemObis(0, 0, 96, 3, 10, 255), 1
)
CLOCK_VALUE = DateTime(2024, 3, 1, 12, 30, 15, hundredths=0, deviation=-60)


def _cosem_range() -> CosemRange:
    zone = timezone(timedelta(hours=1))
    return CosemRange(
        CosemCaptureObject(COSEM_CLOCK), datetime(2024, 3, 1, tzinfo=zone), datetime(2024, 3, 2, tzinfo=zone)
    )


DLMS_COSEM_VECTORS: list[tuple[str, Callable[[], bytes], apdu.Apdu]] = [
    (
        "initiate-response",
        lambda: xdlms.InitiateResponse(COSEM_CONFORMANCE, 0x400).to_bytes(),
        InitiateResponse(OUR_CONFORMANCE, 0x400),
    ),
    (
        "aarq-lls",
        lambda: acse.ApplicationAssociationRequest(
            UserInformation(xdlms.InitiateRequest(COSEM_CONFORMANCE)),
            authentication=cosem_enums.AuthenticationMechanism.LLS,
            authentication_value=b"12345678",
        ).to_bytes(),
        Aarq(
            mechanism=Mechanism.LOW,
            calling_authentication_value=b"12345678",
            user_information=InitiateRequest(OUR_CONFORMANCE),
        ),
    ),
    (
        "aarq-hls-gmac",
        lambda: acse.ApplicationAssociationRequest(
            UserInformation(xdlms.InitiateRequest(COSEM_CONFORMANCE, client_max_receive_pdu_size=512)),
            system_title=SYSTEM_TITLE,
            authentication=cosem_enums.AuthenticationMechanism.HLS_GMAC,
            authentication_value=b"ABCDEFGH",
        ).to_bytes(),
        Aarq(
            calling_ap_title=SYSTEM_TITLE,
            mechanism=Mechanism.HIGH_GMAC,
            calling_authentication_value=b"ABCDEFGH",
            user_information=InitiateRequest(OUR_CONFORMANCE, 512),
        ),
    ),
    (
        "aare-accepted",
        lambda: acse.ApplicationAssociationResponse(
            cosem_enums.AssociationResult.ACCEPTED,
            cosem_enums.AcseServiceUserDiagnostics.NULL,
            user_information=UserInformation(xdlms.InitiateResponse(COSEM_CONFORMANCE, 0x400)),
        ).to_bytes(),
        Aare(user_information=InitiateResponse(OUR_CONFORMANCE, 0x400)),
    ),
    (
        "aare-hls-challenge",
        lambda: acse.ApplicationAssociationResponse(
            cosem_enums.AssociationResult.ACCEPTED,
            cosem_enums.AcseServiceUserDiagnostics.AUTHENTICATION_REQUIRED,
            ciphered=True,
            authentication=cosem_enums.AuthenticationMechanism.HLS_GMAC,
            system_title=bytes.fromhex("4d4d4d0000000001"),
            authentication_value=b"P6wRJ21F",
            user_information=UserInformation(xdlms.InitiateResponse(COSEM_CONFORMANCE, 0x400)),
        ).to_bytes(),
        Aare(
            ApplicationContext.LOGICAL_NAME_CIPHERED,
            AssociationResult.ACCEPTED,
            AcseServiceUserDiagnostic.AUTHENTICATION_REQUIRED,
            bytes.fromhex("4d4d4d0000000001"),
            Mechanism.HIGH_GMAC,
            b"P6wRJ21F",
            InitiateResponse(OUR_CONFORMANCE, 0x400),
        ),
    ),
    (
        "aare-rejected",
        lambda: acse.ApplicationAssociationResponse(
            cosem_enums.AssociationResult.REJECTED_PERMANENT,
            cosem_enums.AcseServiceUserDiagnostics.AUTHENTICATION_FAILED,
        ).to_bytes(),
        Aare(
            result=AssociationResult.REJECTED_PERMANENT,
            diagnostic=AcseServiceUserDiagnostic.AUTHENTICATION_FAILURE,
        ),
    ),
    (
        "aare-initiate-error",
        lambda: acse.ApplicationAssociationResponse(
            cosem_enums.AssociationResult.REJECTED_PERMANENT,
            cosem_enums.AcseServiceUserDiagnostics.NO_REASON_GIVEN,
            user_information=UserInformation(
                xdlms.ConfirmedServiceError(cosem_enums.InitiateError.DLMS_VERSION_TOO_LOW)
            ),
        ).to_bytes(),
        Aare(
            result=AssociationResult.REJECTED_PERMANENT,
            diagnostic=AcseServiceUserDiagnostic.NO_REASON_GIVEN,
            user_information=ConfirmedServiceError(
                ConfirmedService.INITIATE_ERROR, ServiceErrorKind.INITIATE, 1
            ),
        ),
    ),
    (
        "aare-provider",
        lambda: acse.ApplicationAssociationResponse(
            cosem_enums.AssociationResult.REJECTED_TRANSIENT,
            cosem_enums.AcseServiceProviderDiagnostics.NO_COMMON_ACSE_VERSION,
        ).to_bytes(),
        Aare(
            result=AssociationResult.REJECTED_TRANSIENT,
            diagnostic=AcseServiceProviderDiagnostic.NO_COMMON_ACSE_VERSION,
        ),
    ),
    (
        "rlrq",
        lambda: acse.ReleaseRequest(cosem_enums.ReleaseRequestReason.NORMAL).to_bytes(),
        ReleaseRequest(ReleaseRequestReason.NORMAL),
    ),
    (
        "rlre",
        lambda: acse.ReleaseResponse(cosem_enums.ReleaseResponseReason.NORMAL).to_bytes(),
        ReleaseResponse(ReleaseResponseReason.NORMAL),
    ),
    (
        "get-by-range",
        lambda: xdlms.GetRequestNormal(COSEM_PROFILE, COSEM_INVOKE, _cosem_range()).to_bytes(),
        GetRequestNormal(
            AttributeDescriptor(7, LOAD_PROFILE, 2),
            RangeDescriptor.between(
                DateTime(2024, 3, 1, 0, 0, 0, 0, deviation=-60),
                DateTime(2024, 3, 2, 0, 0, 0, 0, deviation=-60),
            ).to_access_selection(),
            OUR_INVOKE,
        ),
    ),
    ("get-next", lambda: xdlms.GetRequestNext(5, COSEM_INVOKE).to_bytes(), GetRequestNext(5, OUR_INVOKE)),
    (
        "get-error",
        lambda: xdlms.GetResponseNormalWithError(
            cosem_enums.DataAccessResult.OBJECT_UNDEFINED, COSEM_INVOKE
        ).to_bytes(),
        GetResponseNormal(DataAccessResult.OBJECT_UNDEFINED, OUR_INVOKE),
    ),
    (
        "get-block",
        lambda: xdlms.GetResponseWithBlock(b"\x01\x02\x03", 1, COSEM_INVOKE).to_bytes(),
        GetResponseWithDatablock(False, 1, b"\x01\x02\x03", OUR_INVOKE),
    ),
    (
        "get-last-block",
        lambda: xdlms.GetResponseLastBlock(b"\x04", 2, COSEM_INVOKE).to_bytes(),
        GetResponseWithDatablock(True, 2, b"\x04", OUR_INVOKE),
    ),
    (
        "get-last-block-error",
        lambda: xdlms.GetResponseLastBlockWithError(
            cosem_enums.DataAccessResult.LONG_GET_ABORTED, 2, COSEM_INVOKE
        ).to_bytes(),
        GetResponseWithDatablock(True, 2, DataAccessResult.LONG_GET_ABORTED, OUR_INVOKE),
    ),
    (
        "set",
        lambda: xdlms.SetRequestNormal(
            COSEM_CLOCK, axdr.encode(OctetString(CLOCK_VALUE.to_bytes())), None, COSEM_INVOKE
        ).to_bytes(),
        SetRequestNormal(
            AttributeDescriptor(8, CLOCK, 2), OctetString(CLOCK_VALUE.to_bytes()), None, OUR_INVOKE
        ),
    ),
    (
        "set-response",
        lambda: xdlms.SetResponseNormal(
            cosem_enums.DataAccessResult.READ_WRITE_DENIED, COSEM_INVOKE
        ).to_bytes(),
        SetResponseNormal(DataAccessResult.READ_WRITE_DENIED, OUR_INVOKE),
    ),
    (
        "action",
        lambda: xdlms.ActionRequestNormal(COSEM_DISCONNECT, b"\x0f\x00", COSEM_INVOKE).to_bytes(),
        ActionRequestNormal(MethodDescriptor(70, DISCONNECT_CONTROL, 1), Integer(0), OUR_INVOKE),
    ),
    (
        "action-no-parameters",
        lambda: xdlms.ActionRequestNormal(COSEM_DISCONNECT, None, COSEM_INVOKE).to_bytes(),
        ActionRequestNormal(MethodDescriptor(70, DISCONNECT_CONTROL, 1), None, OUR_INVOKE),
    ),
    (
        "action-response",
        lambda: xdlms.ActionResponseNormal(cosem_enums.ActionResultStatus.SUCCESS, COSEM_INVOKE).to_bytes(),
        ActionResponseNormal(ActionResult.SUCCESS, None, OUR_INVOKE),
    ),
    (
        "action-response-data",
        lambda: xdlms.ActionResponseNormalWithData(
            cosem_enums.ActionResultStatus.SUCCESS, b"\x0f\x05", COSEM_INVOKE
        ).to_bytes(),
        ActionResponseNormal(ActionResult.SUCCESS, Integer(5), OUR_INVOKE),
    ),
    (
        "action-response-error",
        lambda: xdlms.ActionResponseNormalWithError(
            cosem_enums.ActionResultStatus.SUCCESS, cosem_enums.DataAccessResult.TYPE_UNMATCHED, COSEM_INVOKE
        ).to_bytes(),
        ActionResponseNormal(ActionResult.SUCCESS, DataAccessResult.TYPE_UNMATCHED, OUR_INVOKE),
    ),
    (
        "exception-response",
        lambda: xdlms.ExceptionResponse(
            cosem_enums.StateException.SERVICE_NOT_ALLOWED,
            cosem_enums.ServiceException.OPERATION_NOT_POSSIBLE,
        ).to_bytes(),
        ExceptionResponse(StateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.OPERATION_NOT_POSSIBLE),
    ),
    (
        "confirmed-service-error",
        lambda: xdlms.ConfirmedServiceError(cosem_enums.InitiateError.DLMS_VERSION_TOO_LOW).to_bytes(),
        ConfirmedServiceError(ConfirmedService.INITIATE_ERROR, ServiceErrorKind.INITIATE, 1),
    ),
]


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [case[1:] for case in DLMS_COSEM_VECTORS],
    ids=[case[0] for case in DLMS_COSEM_VECTORS],
)
def test_dlms_cosem_vectors(theirs: Callable[[], bytes], ours: apdu.Apdu) -> None:
    encodes_and_decodes(ours, theirs())


def test_dlms_cosem_parses_our_requests_and_responses() -> None:
    request = GetRequestNormal(AttributeDescriptor(8, CLOCK, 2), invoke_id_and_priority=OUR_INVOKE)
    parsed = xdlms.GetRequestNormal.from_bytes(request.to_bytes())
    assert parsed.cosem_attribute == COSEM_CLOCK and parsed.invoke_id_and_priority == COSEM_INVOKE
    response = xdlms.GetResponseNormal.from_bytes(
        GetResponseNormal(OctetString(CLOCK_VALUE.to_bytes())).to_bytes()
    )
    assert response.data == axdr.encode(OctetString(CLOCK_VALUE.to_bytes()))
    aarq = acse.ApplicationAssociationRequest.from_bytes(
        Aarq(
            calling_ap_title=SYSTEM_TITLE, mechanism=Mechanism.HIGH_GMAC, calling_authentication_value=CTOS
        ).to_bytes()
    )
    assert aarq.system_title == SYSTEM_TITLE and aarq.authentication_value == CTOS
    assert aarq.authentication == cosem_enums.AuthenticationMechanism.HLS_GMAC
    assert aarq.user_information.content.client_max_receive_pdu_size == 0xFFFF
    exception = xdlms.ExceptionResponse.from_bytes(
        ExceptionResponse(
            StateError.SERVICE_UNKNOWN, ExceptionServiceError.INVOCATION_COUNTER_ERROR, 0x01020304
        ).to_bytes()
    )
    assert exception.invocation_counter_data == 0x01020304


# ---------------------------------------------------------------------------------------------------------
# Refusals are DeviceErrors that name the result; malformed bytes are ProtocolErrors


@pytest.mark.parametrize(
    ("response", "parse", "error", "named"),
    [
        (
            GetResponseNormal(DataAccessResult.OBJECT_UNDEFINED),
            apdu.parse_get_response,
            DataAccessError,
            "object-undefined",
        ),
        (
            GetResponseWithDatablock(True, 3, DataAccessResult.LONG_GET_ABORTED),
            apdu.parse_get_response,
            DataAccessError,
            "long-get-aborted",
        ),
        (GetResponseNormal(DataAccessResult(77)), apdu.parse_get_response, DataAccessError, "unknown-77"),
        (
            SetResponseNormal(DataAccessResult.READ_WRITE_DENIED),
            apdu.parse_set_response,
            DataAccessError,
            "read-write-denied",
        ),
        (
            ActionResponseNormal(ActionResult.TEMPORARY_FAILURE),
            apdu.parse_action_response,
            ActionError,
            "temporary-failure",
        ),
        (
            ActionResponseNormal(ActionResult.SUCCESS, DataAccessResult.TYPE_UNMATCHED),
            apdu.parse_action_response,
            DataAccessError,
            "type-unmatched",
        ),
        (
            ExceptionResponse(
                StateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.INVOCATION_COUNTER_ERROR, 1234
            ),
            apdu.parse_get_response,
            ExceptionResponseError,
            "invocation-counter-error.*1234",
        ),
        (
            ExceptionResponse(StateError.SERVICE_UNKNOWN, ExceptionServiceError.DECIPHERING_ERROR),
            apdu.parse_action_response,
            ExceptionResponseError,
            "service-unknown, deciphering-error",
        ),
        (
            ConfirmedServiceError(ConfirmedService.READ, ServiceErrorKind.ACCESS, 2),
            apdu.parse_get_response,
            ServiceRefused,
            "object-access-violated",
        ),
        (
            Aare(
                result=AssociationResult.REJECTED_PERMANENT,
                diagnostic=AcseServiceUserDiagnostic.AUTHENTICATION_FAILURE,
            ),
            apdu.parse_aare,
            AssociationRejected,
            "rejected-permanent: acse-service-user authentication-failure",
        ),
        (
            Aare(
                result=AssociationResult.REJECTED_TRANSIENT,
                diagnostic=AcseServiceProviderDiagnostic.NO_COMMON_ACSE_VERSION,
            ),
            apdu.parse_aare,
            AssociationRejected,
            "acse-service-provider no-common-acse-version",
        ),
        (
            Aare(
                user_information=ConfirmedServiceError(
                    ConfirmedService.INITIATE_ERROR, ServiceErrorKind.INITIATE, 1
                )
            ),
            apdu.parse_aare,
            AssociationRejected,
            "dlms-version-too-low",
        ),
    ],
)
def test_refusals_raise_device_errors_naming_the_result(
    response: apdu.Apdu, parse: Callable[[bytes], object], error: type[DeviceError], named: str
) -> None:
    with pytest.raises(error, match=named) as raised:
        parse(response.to_bytes())
    assert not isinstance(raised.value, ProtocolError)
    assert apdu.decode_apdu(response.to_bytes()) == response  # decoding alone does not judge


def test_accepted_responses_pass_the_checks() -> None:
    value = Structure((Integer(-1), axdr.EnumValue(30)))
    assert apdu.parse_get_response(GetResponseNormal(value).to_bytes()).result == value  # type: ignore[union-attr]
    assert apdu.parse_set_response(SetResponseNormal(DataAccessResult.SUCCESS).to_bytes()).result == 0
    assert apdu.parse_action_response(
        ActionResponseNormal(ActionResult.SUCCESS, Integer(1)).to_bytes()
    ).return_data == Integer(1)
    aare = apdu.parse_aare(Aare(user_information=InitiateResponse(OUR_CONFORMANCE, 0x200)).to_bytes())
    assert aare.accepted and not aare.authentication_required
    assert apdu.parse_release_response(ReleaseResponse().to_bytes()) == ReleaseResponse(
        ReleaseResponseReason.NORMAL
    )


@pytest.mark.parametrize(
    ("bad", "parse", "match"),
    [
        ("", apdu.decode_apdu, "missing"),
        ("0d", apdu.decode_apdu, "unknown"),
        ("0f", apdu.decode_apdu, "truncated"),  # a data-notification without its long invoke id
        ("c401c100", apdu.decode_apdu, "missing"),
        ("c401c1000600", apdu.decode_apdu, "truncated"),
        ("c401c101", apdu.decode_apdu, "missing"),
        ("c401c102", apdu.decode_apdu, "choice 2"),
        ("c403c10100", apdu.decode_apdu, "not supported"),
        ("c501c10000", apdu.decode_apdu, "trailing"),
        ("c402c101000000010205", apdu.decode_apdu, "choice 2"),
        ("c402c10100000001000501", apdu.decode_apdu, "truncated"),
        ("6103a10100", apdu.decode_apdu, "application-context"),
        ("6105a1030601ff", apdu.decode_apdu, "object identifier"),
        ("6104", apdu.decode_apdu, "truncated"),
        ("601da109060760857405080101be10040e01000000065f1f0400401e5dffffaa", apdu.decode_apdu, "trailing"),
        ("6012a109060760857405080101be050503010000", apdu.decode_apdu, "expected 0x04"),
        ("6012a109060760857405080101be0504030502ff", apdu.decode_apdu, "not an InitiateRequest"),
        ("611aa109060760857405080101a203020100a305a103020100bf0100", apdu.decode_apdu, "multi-byte"),
        ("d801", apdu.decode_apdu, "missing"),
        ("d8010600", apdu.decode_apdu, "truncated"),
        ("0e0106", apdu.decode_apdu, "missing"),
        ("c501c100", apdu.parse_get_response, "expected a GET-Response"),
        ("6203800100", apdu.parse_aare, "expected an AARE"),
    ],
)
def test_malformed_apdus_are_protocol_errors(bad: str, parse: Callable[[bytes], object], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        parse(bytes.fromhex(bad))


def test_exception_response_from_meters_older_than_the_invocation_counter_field() -> None:
    bare = apdu.decode_apdu(bytes.fromhex("d80106"))
    assert bare == ExceptionResponse(
        StateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.INVOCATION_COUNTER_ERROR
    )
    with_counter = apdu.decode_apdu(bytes.fromhex("d8010600000102"))
    assert with_counter == ExceptionResponse(
        StateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.INVOCATION_COUNTER_ERROR, 258
    )


def test_ciphered_apdus_pass_through_for_security() -> None:
    glo_get = bytes.fromhex("c81e30000000010203")
    decoded = apdu.decode_apdu(glo_get)
    assert decoded == CipheredApdu(glo_get) and decoded.tag == 0xC8
    with pytest.raises(ProtocolError, match="expected a GET-Response"):
        apdu.parse_get_response(glo_get)


def test_invoke_id_and_priority_bits() -> None:
    assert InvokeIdAndPriority().to_byte() == 0xC1
    assert InvokeIdAndPriority.from_byte(0x4F) == InvokeIdAndPriority(15, confirmed=True, high_priority=False)
    assert InvokeIdAndPriority.from_byte(0x87) == InvokeIdAndPriority(7, confirmed=False, high_priority=True)
    assert InvokeIdAndPriority.from_byte(0xF1) == InvokeIdAndPriority(1)  # reserved bits 4-5 ignored
    decoded = apdu.decode_apdu(
        GetResponseNormal(Integer(1), InvokeIdAndPriority(9, high_priority=False)).to_bytes()
    )
    assert decoded.invoke_id_and_priority.invoke_id == 9  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        InvokeIdAndPriority(16)


def test_initiate_request_optional_fields() -> None:
    full = InitiateRequest(
        Conformance.GET,
        0x0400,
        6,
        dedicated_key=bytes(range(16)),
        response_allowed=False,
        proposed_quality_of_service=-2,
    )
    encoded = full.to_bytes()
    assert encoded == bytes.fromhex("010110" + bytes(range(16)).hex() + "010001fe065f1f04000000100400")
    assert InitiateRequest.from_bytes(encoded) == full
    response = InitiateResponse(Conformance.GET, 0x0100, negotiated_quality_of_service=3)
    assert InitiateResponse.from_bytes(response.to_bytes()) == response


def test_capture_objects_and_descriptors_refuse_wrong_shapes() -> None:
    with pytest.raises(ProtocolError):
        CaptureObject.from_data(Structure((LongUnsigned(8), OctetString(b"\x00" * 6), Integer(2))))
    with pytest.raises(ProtocolError):
        CaptureObject.from_data(
            Structure((LongUnsigned(8), OctetString(b"\x00" * 5), Integer(2), LongUnsigned(0)))
        )
    with pytest.raises(ProtocolError):
        EntryDescriptor.from_access_selection(
            RangeDescriptor.between(
                DateTime(2024, 1, 1, 0, 0, 0), DateTime(2024, 1, 2, 0, 0, 0)
            ).to_access_selection()
        )
    with pytest.raises(ProtocolError):
        RangeDescriptor.from_access_selection(AccessSelection(1, Structure((Integer(1),) * 4)))


# ---------------------------------------------------------------------------------------------------------
# OBIS codes


def test_obis_forms_and_bytes() -> None:
    assert (
        Obis.parse("1.0.1.8.0.255") == Obis.parse("1-0:1.8.0*255") == Obis.parse("1-0:1.8.0") == ENERGY_IMPORT
    )
    assert Obis.parse(" 0-0:96.3.10.255 ") == DISCONNECT_CONTROL
    assert str(ENERGY_IMPORT) == "1.0.1.8.0.255" and ENERGY_IMPORT.iec() == "1-0:1.8.0*255"
    assert (
        ENERGY_IMPORT.to_bytes()
        == bytes.fromhex("0100010800ff")
        == CosemObis.from_string("1-0:1.8.0.255").to_bytes()
    )
    assert Obis.from_bytes(bytes.fromhex("0000010000ff")) == CLOCK
    for bad in ("1.0.1.8.0", "1.0.1.8.0.256", "a.b.c.d.e.f", "1-0:1.8", ""):
        with pytest.raises(ValueError):
            Obis.parse(bad)
    with pytest.raises(ProtocolError):
        Obis.from_bytes(b"\x01\x02")


# ---------------------------------------------------------------------------------------------------------
# Properties: round trips of every APDU, and the decoder contract under random and damaged input

modern_moments = st.datetimes(datetime(1990, 1, 1), datetime(2100, 1, 1), timezones=st.timezones())
obis_codes = st.builds(Obis, *(st.integers(0, 255) for _ in range(6)))
invokes = st.builds(InvokeIdAndPriority, st.integers(0, 15), st.booleans(), st.booleans())
attributes = st.builds(AttributeDescriptor, st.integers(0, 0xFFFF), obis_codes, st.integers(0, 255))
methods = st.builds(MethodDescriptor, st.integers(0, 0xFFFF), obis_codes, st.integers(0, 255))
capture_objects = st.builds(
    CaptureObject, st.integers(0, 0xFFFF), obis_codes, st.integers(-128, 127), st.integers(0, 0xFFFF)
)
access_selections = st.none() | st.one_of(
    st.builds(AccessSelection, st.integers(0, 255), cosem_data),
    st.builds(
        lambda start, end, columns: RangeDescriptor.between(start, end, tuple(columns)).to_access_selection(),
        st.builds(DateTime.from_datetime, modern_moments),
        st.builds(DateTime.from_datetime, modern_moments),
        st.lists(capture_objects, max_size=3),
    ),
    st.builds(
        lambda *bounds: EntryDescriptor(*bounds).to_access_selection(),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
    ),
)
byte_codes = st.integers(0, 255)
data_access_results = byte_codes.map(DataAccessResult)
conformances = st.integers(0, 2**24 - 1).map(Conformance)
octets = st.binary(max_size=40)
initiate_requests = st.builds(
    InitiateRequest,
    conformances,
    st.integers(0, 0xFFFF),
    byte_codes,
    st.none() | st.binary(min_size=1, max_size=32),
    st.booleans(),
    st.none() | st.integers(-128, 127),
)
initiate_responses = st.builds(
    InitiateResponse,
    conformances,
    st.integers(0, 0xFFFF),
    byte_codes,
    st.integers(0, 0xFFFF),
    st.none() | st.integers(-128, 127),
)
confirmed_service_errors = st.builds(
    ConfirmedServiceError, byte_codes.map(ConfirmedService), byte_codes.map(ServiceErrorKind), byte_codes
)
ciphered = st.builds(
    lambda tag, body: CipheredApdu(bytes([tag]) + body), st.sampled_from(sorted(apdu.CIPHERED_TAGS)), octets
)
diagnostics = byte_codes.map(AcseServiceUserDiagnostic) | byte_codes.map(AcseServiceProviderDiagnostic)
mechanisms = st.none() | byte_codes.map(Mechanism)

any_apdu = st.one_of(
    st.builds(
        Aarq,
        byte_codes.map(ApplicationContext),
        st.none() | octets,
        mechanisms,
        st.none() | octets,
        st.none() | initiate_requests | ciphered,
    ),
    st.builds(
        Aare,
        byte_codes.map(ApplicationContext),
        byte_codes.map(AssociationResult),
        diagnostics,
        st.none() | octets,
        mechanisms,
        st.none() | octets,
        st.none() | initiate_responses | confirmed_service_errors | ciphered,
    ),
    st.builds(
        ReleaseRequest,
        st.none() | byte_codes.map(ReleaseRequestReason),
        st.none() | initiate_requests | ciphered,
    ),
    st.builds(
        ReleaseResponse,
        st.none() | byte_codes.map(ReleaseResponseReason),
        st.none() | initiate_responses | ciphered,
    ),
    initiate_requests,
    initiate_responses,
    confirmed_service_errors,
    st.builds(
        lambda state, counter: ExceptionResponse(
            StateError(state),
            ExceptionServiceError.INVOCATION_COUNTER_ERROR
            if counter is not None
            else ExceptionServiceError.OTHER_REASON,
            counter,
        ),
        byte_codes,
        st.none() | st.integers(0, 2**32 - 1),
    ),
    st.builds(GetRequestNormal, attributes, access_selections, invokes),
    st.builds(GetRequestNext, st.integers(0, 2**32 - 1), invokes),
    st.builds(GetResponseNormal, cosem_data | data_access_results, invokes),
    st.builds(
        GetResponseWithDatablock,
        st.booleans(),
        st.integers(0, 2**32 - 1),
        st.binary(max_size=300) | data_access_results,
        invokes,
    ),
    st.builds(SetRequestNormal, attributes, cosem_data, access_selections, invokes),
    st.builds(SetResponseNormal, data_access_results, invokes),
    st.builds(ActionRequestNormal, methods, st.none() | cosem_data, invokes),
    st.builds(
        ActionResponseNormal,
        byte_codes.map(ActionResult),
        st.none() | cosem_data | data_access_results,
        invokes,
    ),
    ciphered,
)


@settings(max_examples=400, deadline=None)
@given(any_apdu)
def test_every_apdu_round_trips(message: apdu.Apdu) -> None:
    encoded = message.to_bytes()
    decoded = apdu.decode_apdu(encoded)
    assert decoded == message
    assert decoded.to_bytes() == encoded
    assert type(message).from_bytes(encoded) == message


DECODERS: list[Callable[[bytes], object]] = [
    apdu.decode_apdu,
    apdu.parse_aare,
    apdu.parse_get_response,
    apdu.parse_set_response,
    apdu.parse_action_response,
    apdu.parse_release_response,
    Aarq.from_bytes,
    InitiateRequest.from_bytes,
    DateTime.from_bytes,
    axdr.Date.from_bytes,
    axdr.Time.from_bytes,
    Obis.from_bytes,
]


def check_apdu_decoders(data: bytes) -> None:
    """Random or damaged bytes: only ProtocolError or DeviceError, and what decodes re-encodes to itself."""
    for decode in DECODERS:
        try:
            decoded = decode(data)
        except (ProtocolError, DeviceError):
            continue
        if decode is apdu.decode_apdu:
            assert apdu.decode_apdu(decoded.to_bytes()) == decoded  # type: ignore[attr-defined]
    check_decoder_contract(data)


def damage(data: bytes, edits: list[tuple[str, float, int]]) -> bytes:
    """`data` with bytes changed, dropped, inserted or cut off: what line noise does to a frame."""
    damaged = bytearray(data)
    for action, where, byte in edits:
        position = int(where * len(damaged))
        if action == "flip" and position < len(damaged):
            damaged[position] = byte
        elif action == "drop" and position < len(damaged):
            del damaged[position]
        elif action == "insert":
            damaged.insert(position, byte)
        else:
            del damaged[position:]
    return bytes(damaged)


edits = st.lists(
    st.tuples(st.sampled_from(["flip", "drop", "insert", "truncate"]), st.floats(0, 1), byte_codes),
    min_size=1,
    max_size=3,
)
damaged_apdus = st.builds(lambda message, changes: damage(message.to_bytes(), changes), any_apdu, edits)

# A fixed corpus of valid APDUs to damage: cheap to draw, so the 100k run spends its time decoding.
PROFILE_ROWS = Array(
    tuple(
        Structure(
            (
                OctetString(DateTime(2024, 3, 1, 0, 15 * i, 0, 0, deviation=-60).to_bytes()),
                DoubleLongUnsigned(i),
            )
        )
        for i in range(4)
    )
)
CORPUS = [message.to_bytes() for _, _, message in DLMS_COSEM_VECTORS] + [
    Aarq().to_bytes(),
    Aarq(
        calling_ap_title=SYSTEM_TITLE, mechanism=Mechanism.HIGH_GMAC, calling_authentication_value=CTOS
    ).to_bytes(),
    GetRequestNormal(
        AttributeDescriptor(7, LOAD_PROFILE, 2), EntryDescriptor(1, 10).to_access_selection()
    ).to_bytes(),
    GetResponseNormal(PROFILE_ROWS).to_bytes(),
    GetResponseWithDatablock(False, 1, axdr.encode(PROFILE_ROWS)).to_bytes(),
    GetResponseNormal(
        axdr.CompactArray(axdr.TypeDescription.of(PROFILE_ROWS.items[0]), PROFILE_ROWS.items)
    ).to_bytes(),
    ExceptionResponse(
        StateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.INVOCATION_COUNTER_ERROR, 7
    ).to_bytes(),
]
damaged_corpus = st.builds(damage, st.sampled_from(CORPUS), edits)
PLAIN_TAGS = [0x01, 0x08, 0x0E, 0x60, 0x61, 0x62, 0x63, 0xC0, 0xC1, 0xC3, 0xC4, 0xC5, 0xC7, 0xD8]
tagged_noise = st.builds(
    lambda tag, body: bytes([tag]) + body, st.sampled_from(PLAIN_TAGS), st.binary(max_size=60)
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120) | damaged_apdus | mutated_encodings() | damaged_corpus | tagged_noise)
def test_fuzz_decoders_raise_only_typed_errors(data: bytes) -> None:
    check_apdu_decoders(data)


@pytest.mark.slow
@pytest.mark.timeout(1200)
@settings(max_examples=100_000, deadline=None, database=None)
@given(st.binary(max_size=120) | damaged_corpus | tagged_noise)
def test_fuzz_every_decoder_with_100k_inputs(data: bytes) -> None:
    check_apdu_decoders(data)
