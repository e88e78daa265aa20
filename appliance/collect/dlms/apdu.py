"""xDLMS APDUs with logical-name referencing (IEC 62056-5-3, Green Book 9), sans-I/O, both directions.

The client builds requests and parses responses; the simulated meter and the tests build responses and
parse requests, so every APDU here has `to_bytes()` and `from_bytes()` and `decode_apdu` reads any of them.

Two kinds of failure stay apart:
- ProtocolError: the bytes are not a valid APDU (truncated, unknown tag, trailing bytes). Nothing else
  escapes the decoders, whatever a peer sends.
- DeviceError (subclasses below): a well-formed refusal from the meter: a Data-Access-Result or
  Action-Result other than success, an exception-response, a confirmed-service-error, an AARE that
  rejects the association. `decode_apdu` returns these as objects; the `parse_*` helpers, which the
  client uses, raise them.

Ciphered APDUs (glo-/ded-/general-ciphering) are passed through as `CipheredApdu` for security.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import ClassVar, TypeAlias, TypeVar

from appliance.collect.dlms.axdr import (
    Array,
    ByteReader,
    Data,
    DateTime,
    DoubleLongUnsigned,
    Integer,
    LongUnsigned,
    OctetString,
    Structure,
    encode,
    encode_length,
)
from appliance.collect.dlms.obis import Obis
from appliance.errors import DeviceError, ProtocolError

_T = TypeVar("_T")

# ---------------------------------------------------------------------------------------------------------
# Enumerations


class _OpenEnum(IntEnum):
    """An enumeration that also holds one-byte codes it does not name (vendor-specific results)."""

    @classmethod
    def _missing_(cls, value: object) -> _OpenEnum | None:
        if not isinstance(value, int) or not 0 <= value <= 255:
            return None
        member = int.__new__(cls, value)
        member._name_ = f"UNKNOWN_{value}"
        member._value_ = value
        return member


def label(code: IntEnum) -> str:
    """The standard's spelling of an enumerated code ("object-undefined"), for messages and logs."""
    return code.name.lower().replace("_", "-")


class ApplicationContext(_OpenEnum):
    """The last arc of the application context name 2.16.756.5.8.1.x."""

    LOGICAL_NAME = 1
    SHORT_NAME = 2
    LOGICAL_NAME_CIPHERED = 3
    SHORT_NAME_CIPHERED = 4


class Mechanism(_OpenEnum):
    """The last arc of the authentication mechanism name 2.16.756.5.8.2.x."""

    NONE = 0
    LOW = 1  # password
    HIGH = 2  # manufacturer specific
    HIGH_MD5 = 3
    HIGH_SHA1 = 4
    HIGH_GMAC = 5
    HIGH_SHA256 = 6
    HIGH_ECDSA = 7


class AssociationResult(_OpenEnum):
    """The AARE result."""

    ACCEPTED = 0
    REJECTED_PERMANENT = 1
    REJECTED_TRANSIENT = 2


class AcseServiceUserDiagnostic(_OpenEnum):
    """Why the meter's application refused (or, for HLS, conditionally accepted) an association."""

    NULL = 0
    NO_REASON_GIVEN = 1
    APPLICATION_CONTEXT_NAME_NOT_SUPPORTED = 2
    CALLING_AP_TITLE_NOT_RECOGNIZED = 3
    CALLING_AP_INVOCATION_IDENTIFIER_NOT_RECOGNIZED = 4
    CALLING_AE_QUALIFIER_NOT_RECOGNIZED = 5
    CALLING_AE_INVOCATION_IDENTIFIER_NOT_RECOGNIZED = 6
    CALLED_AP_TITLE_NOT_RECOGNIZED = 7
    CALLED_AP_INVOCATION_IDENTIFIER_NOT_RECOGNIZED = 8
    CALLED_AE_QUALIFIER_NOT_RECOGNIZED = 9
    CALLED_AE_INVOCATION_IDENTIFIER_NOT_RECOGNIZED = 10
    AUTHENTICATION_MECHANISM_NAME_NOT_RECOGNISED = 11
    AUTHENTICATION_MECHANISM_NAME_REQUIRED = 12
    AUTHENTICATION_FAILURE = 13
    AUTHENTICATION_REQUIRED = 14


class AcseServiceProviderDiagnostic(_OpenEnum):
    """Why the meter's ACSE layer refused an association."""

    NULL = 0
    NO_REASON_GIVEN = 1
    NO_COMMON_ACSE_VERSION = 2


Diagnostic: TypeAlias = AcseServiceUserDiagnostic | AcseServiceProviderDiagnostic


class DataAccessResult(_OpenEnum):
    """The outcome of reading or writing one attribute."""

    SUCCESS = 0
    HARDWARE_FAULT = 1
    TEMPORARY_FAILURE = 2
    READ_WRITE_DENIED = 3
    OBJECT_UNDEFINED = 4
    OBJECT_CLASS_INCONSISTENT = 9
    OBJECT_UNAVAILABLE = 11
    TYPE_UNMATCHED = 12
    SCOPE_OF_ACCESS_VIOLATED = 13
    DATA_BLOCK_UNAVAILABLE = 14
    LONG_GET_ABORTED = 15
    NO_LONG_GET_IN_PROGRESS = 16
    LONG_SET_ABORTED = 17
    NO_LONG_SET_IN_PROGRESS = 18
    DATA_BLOCK_NUMBER_INVALID = 19
    OTHER_REASON = 250


class ActionResult(_OpenEnum):
    """The outcome of invoking one method."""

    SUCCESS = 0
    HARDWARE_FAULT = 1
    TEMPORARY_FAILURE = 2
    READ_WRITE_DENIED = 3
    OBJECT_UNDEFINED = 4
    OBJECT_CLASS_INCONSISTENT = 9
    OBJECT_UNAVAILABLE = 11
    TYPE_UNMATCHED = 12
    SCOPE_OF_ACCESS_VIOLATED = 13
    DATA_BLOCK_UNAVAILABLE = 14
    LONG_ACTION_ABORTED = 15
    NO_LONG_ACTION_IN_PROGRESS = 16
    OTHER_REASON = 250


class StateError(_OpenEnum):
    """exception-response: the state the meter was in."""

    SERVICE_NOT_ALLOWED = 1
    SERVICE_UNKNOWN = 2


class ExceptionServiceError(_OpenEnum):
    """exception-response: what went wrong."""

    OPERATION_NOT_POSSIBLE = 1
    SERVICE_NOT_SUPPORTED = 2
    OTHER_REASON = 3
    PDU_TOO_LONG = 4
    DECIPHERING_ERROR = 5
    INVOCATION_COUNTER_ERROR = 6


class ConfirmedService(_OpenEnum):
    """confirmed-service-error: the service that failed (the outer CHOICE)."""

    INITIATE_ERROR = 1
    GET_STATUS = 2
    GET_NAME_LIST = 3
    GET_VARIABLE_ATTRIBUTE = 4
    READ = 5
    WRITE = 6
    GET_DATA_SET_ATTRIBUTE = 7
    GET_TI_ATTRIBUTE = 8
    CHANGE_SCOPE = 9
    START = 10
    STOP = 11
    RESUME = 12
    MAKE_USABLE = 13
    INITIATE_LOAD = 14
    LOAD_SEGMENT = 15
    TERMINATE_LOAD = 16
    INITIATE_UP_LOAD = 17
    UP_LOAD_SEGMENT = 18
    TERMINATE_UP_LOAD = 19


class ServiceErrorKind(_OpenEnum):
    """confirmed-service-error: the family of the error (the ServiceError CHOICE)."""

    APPLICATION_REFERENCE = 0
    HARDWARE_RESOURCE = 1
    VDE_STATE_ERROR = 2
    SERVICE = 3
    DEFINITION = 4
    ACCESS = 5
    INITIATE = 6
    LOAD_DATA_SET = 7
    CHANGE_SCOPE = 8
    TASK = 9
    OTHER = 10


_SERVICE_ERROR_NAMES: dict[int, tuple[str, ...]] = {
    ServiceErrorKind.APPLICATION_REFERENCE: (
        "other",
        "time-elapsed",
        "application-unreachable",
        "application-reference-invalid",
        "application-context-unsupported",
        "provider-communication-error",
        "deciphering-error",
    ),
    ServiceErrorKind.HARDWARE_RESOURCE: (
        "other",
        "memory-unavailable",
        "processor-resource-unavailable",
        "mass-storage-unavailable",
        "other-resource-unavailable",
    ),
    ServiceErrorKind.VDE_STATE_ERROR: (
        "other",
        "no-dlms-context",
        "loading-data-set",
        "status-nochange",
        "status-inoperable",
    ),
    ServiceErrorKind.SERVICE: ("other", "pdu-size", "service-unsupported"),
    ServiceErrorKind.DEFINITION: (
        "other",
        "object-undefined",
        "object-class-inconsistent",
        "object-attribute-inconsistent",
    ),
    ServiceErrorKind.ACCESS: (
        "other",
        "scope-of-access-violated",
        "object-access-violated",
        "hardware-fault",
        "object-unavailable",
    ),
    ServiceErrorKind.INITIATE: (
        "other",
        "dlms-version-too-low",
        "incompatible-conformance",
        "pdu-size-too-short",
        "refused-by-the-vde-handler",
    ),
    ServiceErrorKind.LOAD_DATA_SET: (
        "other",
        "primitive-out-of-sequence",
        "not-loadable",
        "dataset-size-too-large",
        "not-awaited-segment",
        "interpretation-failure",
        "storage-failure",
        "data-set-not-ready",
    ),
    ServiceErrorKind.CHANGE_SCOPE: ("other",),
    ServiceErrorKind.TASK: ("other", "no-remote-control", "ti-stopped", "ti-running", "ti-unusable"),
    ServiceErrorKind.OTHER: ("other",),
}


class ReleaseRequestReason(_OpenEnum):
    """Why the client releases the association."""

    NORMAL = 0
    URGENT = 1
    USER_DEFINED = 30


class ReleaseResponseReason(_OpenEnum):
    """How the meter answers a release."""

    NORMAL = 0
    NOT_FINISHED = 1
    USER_DEFINED = 30


class Conformance(IntFlag):
    """The xDLMS conformance block: 24 bits, bit 0 (reserved-zero) being the most significant."""

    RESERVED_ZERO = 1 << 23
    GENERAL_PROTECTION = 1 << 22
    GENERAL_BLOCK_TRANSFER = 1 << 21
    READ = 1 << 20
    WRITE = 1 << 19
    UNCONFIRMED_WRITE = 1 << 18
    DELTA_VALUE_ENCODING = 1 << 17
    RESERVED_SEVEN = 1 << 16
    ATTRIBUTE0_SUPPORTED_WITH_SET = 1 << 15
    PRIORITY_MGMT_SUPPORTED = 1 << 14
    ATTRIBUTE0_SUPPORTED_WITH_GET = 1 << 13
    BLOCK_TRANSFER_WITH_GET_OR_READ = 1 << 12
    BLOCK_TRANSFER_WITH_SET_OR_WRITE = 1 << 11
    BLOCK_TRANSFER_WITH_ACTION = 1 << 10
    MULTIPLE_REFERENCES = 1 << 9
    INFORMATION_REPORT = 1 << 8
    DATA_NOTIFICATION = 1 << 7
    ACCESS = 1 << 6
    PARAMETERIZED_ACCESS = 1 << 5
    GET = 1 << 4
    SET = 1 << 3
    SELECTIVE_ACCESS = 1 << 2
    EVENT_NOTIFICATION = 1 << 1
    ACTION = 1 << 0


# What an LN client proposes by default: the services a head-end uses, block transfer for large
# profiles, and general protection for ciphered associations (the same block gurux's client proposes).
DEFAULT_CONFORMANCE = (
    Conformance.GENERAL_PROTECTION
    | Conformance.BLOCK_TRANSFER_WITH_GET_OR_READ
    | Conformance.BLOCK_TRANSFER_WITH_SET_OR_WRITE
    | Conformance.BLOCK_TRANSFER_WITH_ACTION
    | Conformance.MULTIPLE_REFERENCES
    | Conformance.ACCESS
    | Conformance.GET
    | Conformance.SET
    | Conformance.SELECTIVE_ACCESS
    | Conformance.ACTION
)
DLMS_VERSION = 6
LN_VAA_NAME = 0x0007  # the vaa-name an LN association reports in its InitiateResponse

# APDU tags
TAG_INITIATE_REQUEST = 0x01
TAG_INITIATE_RESPONSE = 0x08
TAG_CONFIRMED_SERVICE_ERROR = 0x0E
TAG_DATA_NOTIFICATION = 0x0F
TAG_AARQ = 0x60
TAG_AARE = 0x61
TAG_RLRQ = 0x62
TAG_RLRE = 0x63
TAG_GET_REQUEST = 0xC0
TAG_SET_REQUEST = 0xC1
TAG_ACTION_REQUEST = 0xC3
TAG_GET_RESPONSE = 0xC4
TAG_SET_RESPONSE = 0xC5
TAG_ACTION_RESPONSE = 0xC7
TAG_EXCEPTION_RESPONSE = 0xD8
# glo-initiate-request/-response/-confirmed-service-error, glo- and ded- get/set/event/action, general-*.
CIPHERED_TAGS = frozenset(
    {0x21, 0x28, 0x2E, 0xC8, 0xC9, 0xCA, 0xCB, 0xCC, 0xCD, 0xCF}
    | {0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD7, 0xDB, 0xDC, 0xDD, 0xDF}
)

_CONTEXT_OID_PREFIX = bytes.fromhex("608574050801")  # 2.16.756.5.8.1
_MECHANISM_OID_PREFIX = bytes.fromhex("608574050802")  # 2.16.756.5.8.2
_ACSE_REQUIREMENTS_AUTHENTICATION = bytes.fromhex("0780")  # bit string: authentication functional unit


# ---------------------------------------------------------------------------------------------------------
# Refusals


class DataAccessError(DeviceError):
    """The meter answered a GET, SET or ACTION with a Data-Access-Result other than success."""

    def __init__(self, service: str, result: DataAccessResult) -> None:
        self.result = result
        super().__init__(
            f"{service} refused by the meter: data-access-result {label(result)} ({int(result)})"
        )


class ActionError(DeviceError):
    """The meter answered an ACTION with an Action-Result other than success."""

    def __init__(self, result: ActionResult) -> None:
        self.result = result
        super().__init__(f"ACTION refused by the meter: action-result {label(result)} ({int(result)})")


class AssociationRejected(DeviceError):
    """The AARE refused the association (wrong password, unknown client, unsupported context...)."""

    def __init__(self, aare: Aare) -> None:
        self.aare = aare
        source = (
            "acse-service-user"
            if isinstance(aare.diagnostic, AcseServiceUserDiagnostic)
            else "acse-service-provider"
        )
        message = f"association {label(aare.result)}: {source} {label(aare.diagnostic)}"
        if isinstance(aare.user_information, ConfirmedServiceError):
            message += f", {aare.user_information.description()}"
        super().__init__(message)


class ExceptionResponseError(DeviceError):
    """The meter answered with an exception-response (service not allowed, deciphering error...)."""

    def __init__(self, response: ExceptionResponse) -> None:
        self.response = response
        message = f"exception-response: {label(response.state_error)}, {label(response.service_error)}"
        if response.invocation_counter is not None:
            message += f" (meter expects invocation counter {response.invocation_counter})"
        super().__init__(message)


class ServiceRefused(DeviceError):
    """The meter answered with a confirmed-service-error."""

    def __init__(self, error: ConfirmedServiceError) -> None:
        self.error = error
        super().__init__(f"confirmed-service-error: {error.description()}")


# ---------------------------------------------------------------------------------------------------------
# Building blocks


def _check_uint(name: str, value: int, bits: int) -> None:
    if type(value) is not int or not 0 <= value < (1 << bits):
        raise ValueError(f"{name} must be an int 0-{(1 << bits) - 1}, got {value!r}")


@dataclass(frozen=True, slots=True)
class InvokeIdAndPriority:
    """The byte that pairs a response with its request: invoke id (0-15), service class and priority."""

    invoke_id: int = 1
    confirmed: bool = True
    high_priority: bool = True

    def __post_init__(self) -> None:
        _check_uint("invoke id", self.invoke_id, 4)

    def to_byte(self) -> int:
        """The encoded byte (reserved bits 4 and 5 zero)."""
        return self.invoke_id | (0x40 if self.confirmed else 0) | (0x80 if self.high_priority else 0)

    @classmethod
    def from_byte(cls, value: int) -> InvokeIdAndPriority:
        """The fields of a received byte; the reserved bits are ignored."""
        return cls(value & 0x0F, bool(value & 0x40), bool(value & 0x80))


DEFAULT_INVOKE = InvokeIdAndPriority()  # 0xC1: invoke id 1, confirmed, high priority (as gurux sends)


@dataclass(frozen=True, slots=True)
class AttributeDescriptor:
    """Which attribute of which object: class id, logical name, attribute id."""

    class_id: int
    instance: Obis
    attribute_id: int

    def __post_init__(self) -> None:
        _check_uint("class id", self.class_id, 16)
        _check_uint("attribute id", self.attribute_id, 8)

    def to_bytes(self) -> bytes:
        """The 9 bytes of a cosem-attribute-descriptor."""
        return self.class_id.to_bytes(2, "big") + self.instance.to_bytes() + bytes((self.attribute_id,))

    def __str__(self) -> str:
        return f"{self.instance} class {self.class_id} attribute {self.attribute_id}"


@dataclass(frozen=True, slots=True)
class MethodDescriptor:
    """Which method of which object: class id, logical name, method id."""

    class_id: int
    instance: Obis
    method_id: int

    def __post_init__(self) -> None:
        _check_uint("class id", self.class_id, 16)
        _check_uint("method id", self.method_id, 8)

    def to_bytes(self) -> bytes:
        """The 9 bytes of a cosem-method-descriptor."""
        return self.class_id.to_bytes(2, "big") + self.instance.to_bytes() + bytes((self.method_id,))

    def __str__(self) -> str:
        return f"{self.instance} class {self.class_id} method {self.method_id}"


@dataclass(frozen=True, slots=True)
class AccessSelection:
    """A selective-access descriptor: selector and its parameters (see RangeDescriptor, EntryDescriptor)."""

    selector: int
    parameters: Data

    def __post_init__(self) -> None:
        _check_uint("access selector", self.selector, 8)
        if not isinstance(self.parameters, Data):
            raise ValueError(f"access parameters must be a Data value, got {self.parameters!r}")


def _read_attribute(reader: ByteReader) -> AttributeDescriptor:
    class_id = reader.uint(2, "class id")
    instance = Obis.from_bytes(reader.take(6, "instance id"))
    return AttributeDescriptor(class_id, instance, reader.u8("attribute id"))


def _read_method(reader: ByteReader) -> MethodDescriptor:
    class_id = reader.uint(2, "class id")
    instance = Obis.from_bytes(reader.take(6, "instance id"))
    return MethodDescriptor(class_id, instance, reader.u8("method id"))


def _present(reader: ByteReader, what: str) -> bool:
    """An A-XDR OPTIONAL flag: 0x00 absent, anything else present (0x01 is what we send)."""
    return reader.u8(f"{what} presence flag") != 0


def _read_access_selection(reader: ByteReader) -> AccessSelection | None:
    if not _present(reader, "access selection"):
        return None
    selector = reader.u8("access selector")
    return AccessSelection(selector, reader.data_value())


def _write_access_selection(out: bytearray, access: AccessSelection | None) -> None:
    if access is None:
        out.append(0)
    else:
        out += bytes((1, access.selector))
        out += encode(access.parameters)


def _write_optional_data(out: bytearray, value: Data | None) -> None:
    if value is None:
        out.append(0)
    else:
        out.append(1)
        out += encode(value)


def _read_get_data_result(reader: ByteReader) -> Data | DataAccessResult:
    choice = reader.u8("Get-Data-Result choice")
    if choice == 0:
        return reader.data_value()
    if choice == 1:
        return DataAccessResult(reader.u8("data-access-result"))
    raise ProtocolError(f"Get-Data-Result choice {choice} (expected 0 data or 1 data-access-result)")


def _write_get_data_result(out: bytearray, result: Data | DataAccessResult) -> None:
    if isinstance(result, Data):
        out.append(0)
        out += encode(result)
    else:
        out += bytes((1, DataAccessResult(result)))


# ---------------------------------------------------------------------------------------------------------
# Selective access for profile generic (class 7)


@dataclass(frozen=True, slots=True)
class CaptureObject:
    """A capture object definition: which attribute (and element of it) a profile column holds."""

    class_id: int
    logical_name: Obis
    attribute_index: int
    data_index: int = 0

    def __post_init__(self) -> None:
        _check_uint("class id", self.class_id, 16)
        _check_uint("data index", self.data_index, 16)
        if type(self.attribute_index) is not int or not -128 <= self.attribute_index <= 127:
            raise ValueError(f"attribute index must be an int -128..127, got {self.attribute_index!r}")

    def to_data(self) -> Structure:
        """structure {long-unsigned class_id, octet-string logical_name, integer attribute, long-unsigned}."""
        return Structure(
            (
                LongUnsigned(self.class_id),
                OctetString(self.logical_name.to_bytes()),
                Integer(self.attribute_index),
                LongUnsigned(self.data_index),
            )
        )

    @classmethod
    def from_data(cls, value: Data) -> CaptureObject:
        """Read a capture object definition (from selective access or a profile's capture_objects)."""
        if not isinstance(value, Structure) or len(value.items) != 4:
            raise ProtocolError(f"a capture object definition is a structure of 4, got {value!r}")
        class_id, logical_name, attribute_index, data_index = value.items
        if not (
            isinstance(class_id, LongUnsigned)
            and isinstance(logical_name, OctetString)
            and isinstance(attribute_index, Integer)
            and isinstance(data_index, LongUnsigned)
        ):
            raise ProtocolError(f"capture object definition of unexpected types: {value!r}")
        return cls(
            class_id.value, Obis.from_bytes(logical_name.value), attribute_index.value, data_index.value
        )


CLOCK_TIME = CaptureObject(8, Obis(0, 0, 1, 0, 0, 255), 2)  # the clock's time: what profiles are sorted by


@dataclass(frozen=True, slots=True)
class RangeDescriptor:
    """Selective access by range (selector 1): the rows whose restricting object lies in [from, to].

    For load profiles the restricting object is the clock's time and the bounds are date-times, which
    most meters expect as 12-byte octet-strings (`between` builds that form).
    """

    from_value: Data
    to_value: Data
    restricting_object: CaptureObject = CLOCK_TIME
    selected_values: tuple[CaptureObject, ...] = ()  # columns to return; empty means all
    SELECTOR: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if not isinstance(self.selected_values, tuple):
            object.__setattr__(self, "selected_values", tuple(self.selected_values))

    @classmethod
    def between(
        cls, start: DateTime, end: DateTime, selected_values: tuple[CaptureObject, ...] = ()
    ) -> RangeDescriptor:
        """Rows captured from `start` to `end` (both inclusive), bounds sent as octet-strings."""
        return cls(OctetString(start.to_bytes()), OctetString(end.to_bytes()), CLOCK_TIME, selected_values)

    def to_access_selection(self) -> AccessSelection:
        """The access selection that goes into a GET request."""
        columns = Array(tuple(column.to_data() for column in self.selected_values))
        parameters = Structure((self.restricting_object.to_data(), self.from_value, self.to_value, columns))
        return AccessSelection(self.SELECTOR, parameters)

    @classmethod
    def from_access_selection(cls, access: AccessSelection) -> RangeDescriptor:
        """Read the range a client asked for (the simulated meter serves it)."""
        parameters = access.parameters
        if (
            access.selector != cls.SELECTOR
            or not isinstance(parameters, Structure)
            or len(parameters.items) != 4
        ):
            raise ProtocolError(f"not a range descriptor: selector {access.selector}, {parameters!r}")
        restricting, from_value, to_value, columns = parameters.items
        if not isinstance(columns, Array):
            raise ProtocolError(f"range descriptor selected values must be an array, got {columns!r}")
        selected = tuple(CaptureObject.from_data(column) for column in columns.items)
        return cls(from_value, to_value, CaptureObject.from_data(restricting), selected)


@dataclass(frozen=True, slots=True)
class EntryDescriptor:
    """Selective access by entry (selector 2): rows from_entry..to_entry (1-based, 0 = last), columns too."""

    from_entry: int = 1
    to_entry: int = 0
    from_selected_value: int = 1
    to_selected_value: int = 0
    SELECTOR: ClassVar[int] = 2

    def __post_init__(self) -> None:
        _check_uint("from entry", self.from_entry, 32)
        _check_uint("to entry", self.to_entry, 32)
        _check_uint("from selected value", self.from_selected_value, 16)
        _check_uint("to selected value", self.to_selected_value, 16)

    def to_access_selection(self) -> AccessSelection:
        """The access selection that goes into a GET request."""
        parameters = Structure(
            (
                DoubleLongUnsigned(self.from_entry),
                DoubleLongUnsigned(self.to_entry),
                LongUnsigned(self.from_selected_value),
                LongUnsigned(self.to_selected_value),
            )
        )
        return AccessSelection(self.SELECTOR, parameters)

    @classmethod
    def from_access_selection(cls, access: AccessSelection) -> EntryDescriptor:
        """Read the entries a client asked for (the simulated meter serves them)."""
        parameters = access.parameters
        if (
            access.selector != cls.SELECTOR
            or not isinstance(parameters, Structure)
            or len(parameters.items) != 4
        ):
            raise ProtocolError(f"not an entry descriptor: selector {access.selector}, {parameters!r}")
        from_entry, to_entry, from_value, to_value = parameters.items
        if not (
            isinstance(from_entry, DoubleLongUnsigned)
            and isinstance(to_entry, DoubleLongUnsigned)
            and isinstance(from_value, LongUnsigned)
            and isinstance(to_value, LongUnsigned)
        ):
            raise ProtocolError(f"entry descriptor of unexpected types: {parameters!r}")
        return cls(from_entry.value, to_entry.value, from_value.value, to_value.value)


# ---------------------------------------------------------------------------------------------------------
# xDLMS initiate, errors, ciphered pass-through


def _read_conformance(reader: ByteReader) -> Conformance:
    # [APPLICATION 31] IMPLICIT BIT STRING (SIZE(24)), BER-encoded inside A-XDR: 5F 1F 04 <unused> <3 bytes>.
    header = reader.take(3, "conformance block header")
    if header != b"\x5f\x1f\x04":
        raise ProtocolError(f"conformance block header {header.hex()}, expected 5f1f04")
    reader.u8("conformance unused bits")
    return Conformance(reader.uint(3, "conformance block"))


def _write_conformance(out: bytearray, conformance: Conformance) -> None:
    out += b"\x5f\x1f\x04\x00" + int(conformance).to_bytes(3, "big")


@dataclass(frozen=True, slots=True)
class InitiateRequest:
    """xDLMS InitiateRequest: the client's proposal inside the AARQ user-information."""

    proposed_conformance: Conformance = DEFAULT_CONFORMANCE
    client_max_receive_pdu_size: int = 0xFFFF
    proposed_dlms_version: int = DLMS_VERSION
    dedicated_key: bytes | None = None
    response_allowed: bool = True
    proposed_quality_of_service: int | None = None
    TAG: ClassVar[int] = TAG_INITIATE_REQUEST

    def __post_init__(self) -> None:
        _check_uint("conformance", int(self.proposed_conformance), 24)
        _check_uint("max receive PDU size", self.client_max_receive_pdu_size, 16)
        _check_uint("DLMS version", self.proposed_dlms_version, 8)
        _check_octets("dedicated key", self.dedicated_key)
        if self.proposed_quality_of_service is not None:
            _check_signed_byte("quality of service", self.proposed_quality_of_service)

    def to_bytes(self) -> bytes:
        """The A-XDR encoding (tag 0x01)."""
        out = bytearray((self.TAG,))
        if self.dedicated_key is None:
            out.append(0)
        else:
            out.append(1)
            out += encode_length(len(self.dedicated_key)) + self.dedicated_key
        out += b"\x00" if self.response_allowed else b"\x01\x00"  # DEFAULT TRUE is sent as absent
        if self.proposed_quality_of_service is None:
            out.append(0)
        else:
            out += bytes((1, self.proposed_quality_of_service & 0xFF))
        out.append(self.proposed_dlms_version)
        _write_conformance(out, self.proposed_conformance)
        out += self.client_max_receive_pdu_size.to_bytes(2, "big")
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> InitiateRequest:
        """Read an InitiateRequest (the simulated meter reads the client's proposal)."""
        return _decode_as(data, cls)


def _check_signed_byte(name: str, value: int) -> None:
    if type(value) is not int or not -128 <= value <= 127:
        raise ValueError(f"{name} must be an int -128..127, got {value!r}")


def _read_initiate_request(reader: ByteReader) -> InitiateRequest:
    dedicated_key = None
    if _present(reader, "dedicated key"):
        dedicated_key = reader.take(reader.length("dedicated key length"), "dedicated key")
    response_allowed = True
    if _present(reader, "response allowed"):
        response_allowed = reader.u8("response allowed") != 0
    quality_of_service = None
    if _present(reader, "quality of service"):
        quality_of_service = int.from_bytes(reader.take(1, "quality of service"), "big", signed=True)
    version = reader.u8("DLMS version")
    conformance = _read_conformance(reader)
    max_pdu = reader.uint(2, "client max receive PDU size")
    return InitiateRequest(conformance, max_pdu, version, dedicated_key, response_allowed, quality_of_service)


@dataclass(frozen=True, slots=True)
class InitiateResponse:
    """xDLMS InitiateResponse: what the meter accepted, inside the AARE user-information."""

    negotiated_conformance: Conformance
    server_max_receive_pdu_size: int
    negotiated_dlms_version: int = DLMS_VERSION
    vaa_name: int = LN_VAA_NAME
    negotiated_quality_of_service: int | None = None
    TAG: ClassVar[int] = TAG_INITIATE_RESPONSE

    def __post_init__(self) -> None:
        _check_uint("conformance", int(self.negotiated_conformance), 24)
        _check_uint("max receive PDU size", self.server_max_receive_pdu_size, 16)
        _check_uint("DLMS version", self.negotiated_dlms_version, 8)
        _check_uint("vaa name", self.vaa_name, 16)
        if self.negotiated_quality_of_service is not None:
            _check_signed_byte("quality of service", self.negotiated_quality_of_service)

    def to_bytes(self) -> bytes:
        """The A-XDR encoding (tag 0x08)."""
        out = bytearray((self.TAG,))
        if self.negotiated_quality_of_service is None:
            out.append(0)
        else:
            out += bytes((1, self.negotiated_quality_of_service & 0xFF))
        out.append(self.negotiated_dlms_version)
        _write_conformance(out, self.negotiated_conformance)
        out += self.server_max_receive_pdu_size.to_bytes(2, "big") + self.vaa_name.to_bytes(2, "big")
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> InitiateResponse:
        """Read an InitiateResponse."""
        return _decode_as(data, cls)


def _read_initiate_response(reader: ByteReader) -> InitiateResponse:
    quality_of_service = None
    if _present(reader, "quality of service"):
        quality_of_service = int.from_bytes(reader.take(1, "quality of service"), "big", signed=True)
    version = reader.u8("DLMS version")
    conformance = _read_conformance(reader)
    max_pdu = reader.uint(2, "server max receive PDU size")
    vaa_name = reader.uint(2, "vaa name")
    return InitiateResponse(conformance, max_pdu, version, vaa_name, quality_of_service)


@dataclass(frozen=True, slots=True)
class ConfirmedServiceError:
    """confirmed-service-error: a meter's refusal of a service, e.g. of the InitiateRequest in an AARQ."""

    service: ConfirmedService
    kind: ServiceErrorKind
    code: int
    TAG: ClassVar[int] = TAG_CONFIRMED_SERVICE_ERROR

    def __post_init__(self) -> None:
        _check_uint("service", int(self.service), 8)
        _check_uint("service error kind", int(self.kind), 8)
        _check_uint("service error code", self.code, 8)

    def description(self) -> str:
        """What failed, in the standard's words ("initiate-error: initiate dlms-version-too-low")."""
        names = _SERVICE_ERROR_NAMES.get(self.kind, ())
        reason = names[self.code] if self.code < len(names) else f"code {self.code}"
        return f"{label(self.service)}: {label(self.kind)} {reason}"

    def to_bytes(self) -> bytes:
        """The four bytes (tag 0x0E)."""
        return bytes((self.TAG, self.service, self.kind, self.code))

    @classmethod
    def from_bytes(cls, data: bytes) -> ConfirmedServiceError:
        """Read a confirmed-service-error."""
        return _decode_as(data, cls)


def _read_confirmed_service_error(reader: ByteReader) -> ConfirmedServiceError:
    service = ConfirmedService(reader.u8("confirmed-service-error service"))
    kind = ServiceErrorKind(reader.u8("service error kind"))
    return ConfirmedServiceError(service, kind, reader.u8("service error code"))


@dataclass(frozen=True, slots=True)
class CipheredApdu:
    """A protected APDU (glo-, ded- or general-ciphering), kept whole for security.py to open."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes):
            object.__setattr__(self, "raw", bytes(self.raw))
        if not self.raw or self.raw[0] not in CIPHERED_TAGS:
            raise ValueError(f"not a ciphered APDU: {self.raw[:1].hex() or 'empty'}")

    @property
    def tag(self) -> int:
        """The ciphered APDU's tag (0xDB general-glo-ciphering, 0xC8 glo-get-request, ...)."""
        return self.raw[0]

    def to_bytes(self) -> bytes:
        """The APDU as it was received or produced by security.py."""
        return self.raw

    @classmethod
    def from_bytes(cls, data: bytes) -> CipheredApdu:
        """Keep a received protected APDU (ProtocolError if its tag is not a ciphered one)."""
        return _decode_as(data, cls)


@dataclass(frozen=True, slots=True)
class ExceptionResponse:
    """exception-response: the meter could not even attempt the service (wrong state, deciphering...)."""

    state_error: StateError
    service_error: ExceptionServiceError
    invocation_counter: int | None = None  # with invocation-counter-error: the counter the meter expects
    TAG: ClassVar[int] = TAG_EXCEPTION_RESPONSE

    def __post_init__(self) -> None:
        _check_uint("state error", int(self.state_error), 8)
        _check_uint("service error", int(self.service_error), 8)
        if self.invocation_counter is not None:
            _check_uint("invocation counter", self.invocation_counter, 32)
            if self.service_error != ExceptionServiceError.INVOCATION_COUNTER_ERROR:
                raise ValueError("only an invocation-counter-error carries an invocation counter")

    def to_bytes(self) -> bytes:
        """The encoding (tag 0xD8)."""
        out = bytes((self.TAG, self.state_error, self.service_error))
        if self.invocation_counter is not None:
            out += self.invocation_counter.to_bytes(4, "big")
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> ExceptionResponse:
        """Read an exception-response."""
        return _decode_as(data, cls)


def _read_exception_response(reader: ByteReader) -> ExceptionResponse:
    state = StateError(reader.u8("state error"))
    service = ExceptionServiceError(reader.u8("service error"))
    counter = None
    # Green Book 8.3+ adds the expected counter; older meters send the bare code.
    if service == ExceptionServiceError.INVOCATION_COUNTER_ERROR and not reader.at_end():
        counter = reader.uint(4, "invocation counter")
    return ExceptionResponse(state, service, counter)


# ---------------------------------------------------------------------------------------------------------
# ACSE: AARQ, AARE, RLRQ, RLRE (BER-encoded)


def _ber(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + encode_length(len(content)) + content


def _ber_elements(reader: ByteReader, what: str) -> Iterator[tuple[int, ByteReader]]:
    """The (tag, content reader) pairs of a BER sequence; the ACSE APDUs use single-byte tags only."""
    while not reader.at_end():
        tag = reader.u8(f"{what} element tag")
        if tag & 0x1F == 0x1F:
            raise ProtocolError(f"{what}: multi-byte BER tag 0x{tag:02x} is not used by ACSE")
        length = reader.length(f"{what} element 0x{tag:02x} length")
        yield tag, reader.sized(length, f"{what} element 0x{tag:02x}")


def _ber_inner(reader: ByteReader, tag: int, what: str) -> bytes:
    """The content of the single element `tag` that fills `reader` (e.g. the OCTET STRING in an AP title)."""
    found = reader.u8(what)
    if found != tag:
        raise ProtocolError(f"{what}: element 0x{found:02x}, expected 0x{tag:02x}")
    content = reader.take(reader.length(f"{what} length"), what)
    reader.expect_end(what)
    return content


def _read_oid_arc(content: bytes, prefix: bytes, what: str) -> int:
    if len(content) != len(prefix) + 1 or not content.startswith(prefix):
        raise ProtocolError(f"{what}: unknown object identifier {content.hex()}")
    return content[-1]


def _read_ber_integer(reader: ByteReader, what: str) -> int:
    content = _ber_inner(reader, 0x02, what)
    if len(content) != 1:
        raise ProtocolError(f"{what}: INTEGER of {len(content)} bytes, expected 1")
    return content[0]


def _read_user_information(reader: ByteReader, what: str) -> bytes:
    content = _ber_inner(reader, 0x04, f"{what} user-information")
    if not content:
        raise ProtocolError(f"{what}: empty user-information")
    return content


def _user_information_request(content: bytes, what: str) -> InitiateRequest | CipheredApdu:
    if content[0] == TAG_INITIATE_REQUEST:
        return InitiateRequest.from_bytes(content)
    if content[0] in CIPHERED_TAGS:
        return CipheredApdu(content)
    raise ProtocolError(f"{what}: user-information holds APDU 0x{content[0]:02x}, not an InitiateRequest")


def _user_information_response(
    content: bytes, what: str
) -> InitiateResponse | ConfirmedServiceError | CipheredApdu:
    if content[0] == TAG_INITIATE_RESPONSE:
        return InitiateResponse.from_bytes(content)
    if content[0] == TAG_CONFIRMED_SERVICE_ERROR:
        return ConfirmedServiceError.from_bytes(content)
    if content[0] in CIPHERED_TAGS:
        return CipheredApdu(content)
    raise ProtocolError(f"{what}: user-information holds APDU 0x{content[0]:02x}, not an InitiateResponse")


def _check_octets(name: str, value: bytes | None) -> None:
    if value is not None and not isinstance(value, bytes):
        raise ValueError(f"{name} must be bytes, got {value!r}")


@dataclass(frozen=True, slots=True)
class Aarq:
    """AARQ: the client's association request.

    `mechanism` None leaves out the authentication fields (no security); with a mechanism the AARQ also
    says it uses the authentication functional unit. LOW carries the password, HIGH_GMAC the CtoS
    challenge, in `calling_authentication_value`; HIGH_GMAC also needs `calling_ap_title` (the system
    title). With a ciphered context the user-information is a glo-initiate-request from security.py.
    """

    application_context: ApplicationContext = ApplicationContext.LOGICAL_NAME
    calling_ap_title: bytes | None = None
    mechanism: Mechanism | None = None
    calling_authentication_value: bytes | None = None
    user_information: InitiateRequest | CipheredApdu | None = InitiateRequest()
    TAG: ClassVar[int] = TAG_AARQ

    def __post_init__(self) -> None:
        _check_uint("application context", int(self.application_context), 8)
        if self.mechanism is not None:
            _check_uint("mechanism", int(self.mechanism), 8)
        _check_octets("calling AP title", self.calling_ap_title)
        _check_octets("calling authentication value", self.calling_authentication_value)

    def to_bytes(self) -> bytes:
        """The BER encoding (tag 0x60)."""
        out = bytearray(_ber(0xA1, _ber(0x06, _CONTEXT_OID_PREFIX + bytes((self.application_context,)))))
        if self.calling_ap_title is not None:
            out += _ber(0xA6, _ber(0x04, self.calling_ap_title))
        if self.mechanism is not None:
            out += _ber(0x8A, _ACSE_REQUIREMENTS_AUTHENTICATION)
            out += _ber(0x8B, _MECHANISM_OID_PREFIX + bytes((self.mechanism,)))
        if self.calling_authentication_value is not None:
            out += _ber(0xAC, _ber(0x80, self.calling_authentication_value))
        if self.user_information is not None:
            out += _ber(0xBE, _ber(0x04, self.user_information.to_bytes()))
        return _ber(self.TAG, bytes(out))

    @classmethod
    def from_bytes(cls, data: bytes) -> Aarq:
        """Read an AARQ (the simulated meter reads the client's request)."""
        return _decode_as(data, cls)


def _read_aarq(reader: ByteReader) -> Aarq:
    context = title = mechanism = value = information = None
    for tag, element in _ber_elements(reader, "AARQ"):
        if tag == 0xA1:
            oid = _ber_inner(element, 0x06, "AARQ application-context-name")
            context = ApplicationContext(_read_oid_arc(oid, _CONTEXT_OID_PREFIX, "AARQ application context"))
        elif tag == 0xA6:
            title = _ber_inner(element, 0x04, "AARQ calling-AP-title")
        elif tag == 0x8B:
            oid = element.take(element.remaining())
            mechanism = Mechanism(_read_oid_arc(oid, _MECHANISM_OID_PREFIX, "AARQ mechanism-name"))
        elif tag == 0xAC:
            value = _ber_inner(element, 0x80, "AARQ calling-authentication-value")
        elif tag == 0xBE:
            information = _user_information_request(_read_user_information(element, "AARQ"), "AARQ")
        # Other elements (protocol-version, sender-acse-requirements, called-*, implementation-information)
        # carry nothing a LN client or our simulated meter acts on.
    if context is None:
        raise ProtocolError("AARQ without application-context-name")
    return Aarq(context, title, mechanism, value, information)


@dataclass(frozen=True, slots=True)
class Aare:
    """AARE: the meter's answer to an AARQ.

    For HLS the meter accepts with diagnostic authentication-required and sends its StoC challenge in
    `responding_authentication_value` and its system title in `responding_ap_title`.
    """

    application_context: ApplicationContext = ApplicationContext.LOGICAL_NAME
    result: AssociationResult = AssociationResult.ACCEPTED
    diagnostic: Diagnostic = AcseServiceUserDiagnostic.NULL
    responding_ap_title: bytes | None = None
    mechanism: Mechanism | None = None
    responding_authentication_value: bytes | None = None
    user_information: InitiateResponse | ConfirmedServiceError | CipheredApdu | None = None
    TAG: ClassVar[int] = TAG_AARE

    def __post_init__(self) -> None:
        _check_uint("application context", int(self.application_context), 8)
        _check_uint("association result", int(self.result), 8)
        if not isinstance(self.diagnostic, AcseServiceUserDiagnostic | AcseServiceProviderDiagnostic):
            raise ValueError(
                f"diagnostic must be an ACSE service user or provider diagnostic: {self.diagnostic!r}"
            )
        if self.mechanism is not None:
            _check_uint("mechanism", int(self.mechanism), 8)
        _check_octets("responding AP title", self.responding_ap_title)
        _check_octets("responding authentication value", self.responding_authentication_value)

    @property
    def accepted(self) -> bool:
        """True when the association exists (for HLS: pending the reply to the challenge)."""
        return self.result == AssociationResult.ACCEPTED and not isinstance(
            self.user_information, ConfirmedServiceError
        )

    @property
    def authentication_required(self) -> bool:
        """True when the meter waits for the HLS reply_to_HLS_authentication before serving requests."""
        return self.diagnostic == AcseServiceUserDiagnostic.AUTHENTICATION_REQUIRED

    def to_bytes(self) -> bytes:
        """The BER encoding (tag 0x61)."""
        out = bytearray(_ber(0xA1, _ber(0x06, _CONTEXT_OID_PREFIX + bytes((self.application_context,)))))
        out += _ber(0xA2, _ber(0x02, bytes((self.result,))))
        source = 0xA1 if isinstance(self.diagnostic, AcseServiceUserDiagnostic) else 0xA2
        out += _ber(0xA3, _ber(source, _ber(0x02, bytes((self.diagnostic,)))))
        if self.responding_ap_title is not None:
            out += _ber(0xA4, _ber(0x04, self.responding_ap_title))
        if self.mechanism is not None:
            out += _ber(0x88, _ACSE_REQUIREMENTS_AUTHENTICATION)
            out += _ber(0x89, _MECHANISM_OID_PREFIX + bytes((self.mechanism,)))
        if self.responding_authentication_value is not None:
            out += _ber(0xAA, _ber(0x80, self.responding_authentication_value))
        if self.user_information is not None:
            out += _ber(0xBE, _ber(0x04, self.user_information.to_bytes()))
        return _ber(self.TAG, bytes(out))

    @classmethod
    def from_bytes(cls, data: bytes) -> Aare:
        """Read an AARE without judging it (see `parse_aare` for the client's check)."""
        return _decode_as(data, cls)


def _read_aare(reader: ByteReader) -> Aare:
    context = result = diagnostic = title = mechanism = value = information = None
    for tag, element in _ber_elements(reader, "AARE"):
        if tag == 0xA1:
            oid = _ber_inner(element, 0x06, "AARE application-context-name")
            context = ApplicationContext(_read_oid_arc(oid, _CONTEXT_OID_PREFIX, "AARE application context"))
        elif tag == 0xA2:
            result = AssociationResult(_read_ber_integer(element, "AARE result"))
        elif tag == 0xA3:
            source = element.u8("AARE result-source-diagnostic choice")
            inner = element.sized(element.length("AARE diagnostic length"), "AARE diagnostic")
            element.expect_end("AARE result-source-diagnostic")
            code = _read_ber_integer(inner, "AARE diagnostic")
            if source == 0xA1:
                diagnostic = AcseServiceUserDiagnostic(code)
            elif source == 0xA2:
                diagnostic = AcseServiceProviderDiagnostic(code)
            else:
                raise ProtocolError(f"AARE diagnostic source 0x{source:02x} (expected 0xa1 or 0xa2)")
        elif tag == 0xA4:
            title = _ber_inner(element, 0x04, "AARE responding-AP-title")
        elif tag == 0x89:
            oid = element.take(element.remaining())
            mechanism = Mechanism(_read_oid_arc(oid, _MECHANISM_OID_PREFIX, "AARE mechanism-name"))
        elif tag == 0xAA:
            value = _ber_inner(element, 0x80, "AARE responding-authentication-value")
        elif tag == 0xBE:
            information = _user_information_response(_read_user_information(element, "AARE"), "AARE")
    if context is None or result is None or diagnostic is None:
        raise ProtocolError("AARE without application-context-name, result or result-source-diagnostic")
    return Aare(context, result, diagnostic, title, mechanism, value, information)


def _read_release_reason(element: ByteReader, what: str) -> int:
    content = element.take(element.remaining())
    if len(content) != 1:
        raise ProtocolError(f"{what} reason of {len(content)} bytes, expected 1")
    return content[0]


def _release_bytes(
    tag: int, reason: int | None, user_information: InitiateRequest | InitiateResponse | CipheredApdu | None
) -> bytes:
    """RLRQ and RLRE share one layout: an optional reason [0] and optional user-information [30]."""
    out = bytearray()
    if reason is not None:
        out += _ber(0x80, bytes((reason,)))
    if user_information is not None:
        out += _ber(0xBE, _ber(0x04, user_information.to_bytes()))
    return _ber(tag, bytes(out))


@dataclass(frozen=True, slots=True)
class ReleaseRequest:
    """RLRQ: the client ends the association (with a ciphered InitiateRequest for a protected release)."""

    reason: ReleaseRequestReason | None = ReleaseRequestReason.NORMAL
    user_information: InitiateRequest | CipheredApdu | None = None
    TAG: ClassVar[int] = TAG_RLRQ

    def to_bytes(self) -> bytes:
        """The BER encoding (tag 0x62)."""
        reason = None if self.reason is None else ReleaseRequestReason(self.reason)
        return _release_bytes(self.TAG, reason, self.user_information)

    @classmethod
    def from_bytes(cls, data: bytes) -> ReleaseRequest:
        """Read an RLRQ."""
        return _decode_as(data, cls)


def _read_rlrq(reader: ByteReader) -> ReleaseRequest:
    reason = information = None
    for tag, element in _ber_elements(reader, "RLRQ"):
        if tag == 0x80:
            reason = ReleaseRequestReason(_read_release_reason(element, "RLRQ"))
        elif tag == 0xBE:
            information = _user_information_request(_read_user_information(element, "RLRQ"), "RLRQ")
    return ReleaseRequest(reason, information)


@dataclass(frozen=True, slots=True)
class ReleaseResponse:
    """RLRE: the meter's answer to a release."""

    reason: ReleaseResponseReason | None = ReleaseResponseReason.NORMAL
    user_information: InitiateResponse | CipheredApdu | None = None
    TAG: ClassVar[int] = TAG_RLRE

    def to_bytes(self) -> bytes:
        """The BER encoding (tag 0x63)."""
        reason = None if self.reason is None else ReleaseResponseReason(self.reason)
        return _release_bytes(self.TAG, reason, self.user_information)

    @classmethod
    def from_bytes(cls, data: bytes) -> ReleaseResponse:
        """Read an RLRE."""
        return _decode_as(data, cls)


def _read_rlre(reader: ByteReader) -> ReleaseResponse:
    reason = information = None
    for tag, element in _ber_elements(reader, "RLRE"):
        if tag == 0x80:
            reason = ReleaseResponseReason(_read_release_reason(element, "RLRE"))
        elif tag == 0xBE:
            content = _read_user_information(element, "RLRE")
            response = _user_information_response(content, "RLRE")
            if isinstance(response, ConfirmedServiceError):
                raise ProtocolError("RLRE: user-information holds a confirmed-service-error")
            information = response
    return ReleaseResponse(reason, information)


def _acse_content(reader: ByteReader, what: str) -> ByteReader:
    """The reader over an ACSE APDU's content, whose BER length must cover exactly the rest."""
    content = reader.sized(reader.length(f"{what} length"), what)
    reader.expect_end(what)
    return content


# ---------------------------------------------------------------------------------------------------------
# GET, SET, ACTION


@dataclass(frozen=True, slots=True)
class GetRequestNormal:
    """GET-Request-Normal: read one attribute, optionally with selective access."""

    attribute: AttributeDescriptor
    access_selection: AccessSelection | None = None
    invoke_id_and_priority: InvokeIdAndPriority = DEFAULT_INVOKE
    TAG: ClassVar[int] = TAG_GET_REQUEST

    def to_bytes(self) -> bytes:
        """C0 01 ..."""
        out = bytearray((self.TAG, 1, self.invoke_id_and_priority.to_byte()))
        out += self.attribute.to_bytes()
        _write_access_selection(out, self.access_selection)
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> GetRequestNormal:
        """Read a GET-Request-Normal."""
        return _decode_as(data, cls)


@dataclass(frozen=True, slots=True)
class GetRequestNext:
    """GET-Request-Next: ask for the block after `block_number` of a long GET response."""

    block_number: int
    invoke_id_and_priority: InvokeIdAndPriority = DEFAULT_INVOKE
    TAG: ClassVar[int] = TAG_GET_REQUEST

    def __post_init__(self) -> None:
        _check_uint("block number", self.block_number, 32)

    def to_bytes(self) -> bytes:
        """C0 02 ..."""
        return bytes((self.TAG, 2, self.invoke_id_and_priority.to_byte())) + self.block_number.to_bytes(
            4, "big"
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> GetRequestNext:
        """Read a GET-Request-Next."""
        return _decode_as(data, cls)


def _read_get_request(reader: ByteReader) -> GetRequestNormal | GetRequestNext:
    kind = reader.u8("GET-Request type")
    invoke = InvokeIdAndPriority.from_byte(reader.u8("invoke-id-and-priority"))
    if kind == 1:
        attribute = _read_attribute(reader)
        return GetRequestNormal(attribute, _read_access_selection(reader), invoke)
    if kind == 2:
        return GetRequestNext(reader.uint(4, "block number"), invoke)
    raise ProtocolError(f"GET-Request type {kind} is not supported (1 normal, 2 next)")


@dataclass(frozen=True, slots=True)
class GetResponseNormal:
    """GET-Response-Normal: the value, or the Data-Access-Result that refuses it."""

    result: Data | DataAccessResult
    invoke_id_and_priority: InvokeIdAndPriority = DEFAULT_INVOKE
    TAG: ClassVar[int] = TAG_GET_RESPONSE

    def to_bytes(self) -> bytes:
        """C4 01 ..."""
        out = bytearray((self.TAG, 1, self.invoke_id_and_priority.to_byte()))
        _write_get_data_result(out, self.result)
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> GetResponseNormal:
        """Read a GET-Response-Normal without judging it (see `parse_get_response`)."""
        return _decode_as(data, cls)


@dataclass(frozen=True, slots=True)
class GetResponseWithDatablock:
    """GET-Response-With-Datablock: one block of a long answer (raw A-XDR bytes to concatenate).

    `result` is the raw data of this block, or the Data-Access-Result that aborts the transfer.
    """

    last_block: bool
    block_number: int
    result: bytes | DataAccessResult
    invoke_id_and_priority: InvokeIdAndPriority = DEFAULT_INVOKE
    TAG: ClassVar[int] = TAG_GET_RESPONSE

    def __post_init__(self) -> None:
        _check_uint("block number", self.block_number, 32)
        if isinstance(self.result, bytearray | memoryview):
            object.__setattr__(self, "result", bytes(self.result))

    def to_bytes(self) -> bytes:
        """C4 02 ..."""
        out = bytearray((self.TAG, 2, self.invoke_id_and_priority.to_byte(), 1 if self.last_block else 0))
        out += self.block_number.to_bytes(4, "big")
        if isinstance(self.result, bytes):
            out.append(0)
            out += encode_length(len(self.result)) + self.result
        else:
            out += bytes((1, DataAccessResult(self.result)))
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> GetResponseWithDatablock:
        """Read a GET-Response-With-Datablock without judging it."""
        return _decode_as(data, cls)


def _read_get_response(reader: ByteReader) -> GetResponseNormal | GetResponseWithDatablock:
    kind = reader.u8("GET-Response type")
    invoke = InvokeIdAndPriority.from_byte(reader.u8("invoke-id-and-priority"))
    if kind == 1:
        return GetResponseNormal(_read_get_data_result(reader), invoke)
    if kind == 2:
        last_block = reader.u8("last-block") != 0
        block_number = reader.uint(4, "block number")
        choice = reader.u8("DataBlock-G result choice")
        if choice == 0:
            raw: bytes | DataAccessResult = reader.take(reader.length("raw-data length"), "raw-data")
        elif choice == 1:
            raw = DataAccessResult(reader.u8("data-access-result"))
        else:
            raise ProtocolError(f"DataBlock-G result choice {choice} (expected 0 raw-data or 1 result)")
        return GetResponseWithDatablock(last_block, block_number, raw, invoke)
    raise ProtocolError(f"GET-Response type {kind} is not supported (1 normal, 2 with-datablock)")


@dataclass(frozen=True, slots=True)
class SetRequestNormal:
    """SET-Request-Normal: write one attribute."""

    attribute: AttributeDescriptor
    value: Data
    access_selection: AccessSelection | None = None
    invoke_id_and_priority: InvokeIdAndPriority = DEFAULT_INVOKE
    TAG: ClassVar[int] = TAG_SET_REQUEST

    def to_bytes(self) -> bytes:
        """C1 01 ..."""
        out = bytearray((self.TAG, 1, self.invoke_id_and_priority.to_byte()))
        out += self.attribute.to_bytes()
        _write_access_selection(out, self.access_selection)
        out += encode(self.value)
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> SetRequestNormal:
        """Read a SET-Request-Normal."""
        return _decode_as(data, cls)


def _read_set_request(reader: ByteReader) -> SetRequestNormal:
    kind = reader.u8("SET-Request type")
    invoke = InvokeIdAndPriority.from_byte(reader.u8("invoke-id-and-priority"))
    if kind != 1:
        raise ProtocolError(f"SET-Request type {kind} is not supported (1 normal)")
    attribute = _read_attribute(reader)
    access = _read_access_selection(reader)
    return SetRequestNormal(attribute, reader.data_value(), access, invoke)


@dataclass(frozen=True, slots=True)
class SetResponseNormal:
    """SET-Response-Normal: the Data-Access-Result of a write."""

    result: DataAccessResult
    invoke_id_and_priority: InvokeIdAndPriority = DEFAULT_INVOKE
    TAG: ClassVar[int] = TAG_SET_RESPONSE

    def to_bytes(self) -> bytes:
        """C5 01 ..."""
        return bytes((self.TAG, 1, self.invoke_id_and_priority.to_byte(), DataAccessResult(self.result)))

    @classmethod
    def from_bytes(cls, data: bytes) -> SetResponseNormal:
        """Read a SET-Response-Normal without judging it."""
        return _decode_as(data, cls)


def _read_set_response(reader: ByteReader) -> SetResponseNormal:
    kind = reader.u8("SET-Response type")
    invoke = InvokeIdAndPriority.from_byte(reader.u8("invoke-id-and-priority"))
    if kind != 1:
        raise ProtocolError(f"SET-Response type {kind} is not supported (1 normal)")
    return SetResponseNormal(DataAccessResult(reader.u8("data-access-result")), invoke)


@dataclass(frozen=True, slots=True)
class ActionRequestNormal:
    """ACTION-Request-Normal: invoke one method, with optional parameters."""

    method: MethodDescriptor
    parameters: Data | None = None
    invoke_id_and_priority: InvokeIdAndPriority = DEFAULT_INVOKE
    TAG: ClassVar[int] = TAG_ACTION_REQUEST

    def to_bytes(self) -> bytes:
        """C3 01 ..."""
        out = bytearray((self.TAG, 1, self.invoke_id_and_priority.to_byte()))
        out += self.method.to_bytes()
        _write_optional_data(out, self.parameters)
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> ActionRequestNormal:
        """Read an ACTION-Request-Normal."""
        return _decode_as(data, cls)


def _read_action_request(reader: ByteReader) -> ActionRequestNormal:
    kind = reader.u8("ACTION-Request type")
    invoke = InvokeIdAndPriority.from_byte(reader.u8("invoke-id-and-priority"))
    if kind != 1:
        raise ProtocolError(f"ACTION-Request type {kind} is not supported (1 normal)")
    method = _read_method(reader)
    parameters = reader.data_value() if _present(reader, "method invocation parameters") else None
    return ActionRequestNormal(method, parameters, invoke)


@dataclass(frozen=True, slots=True)
class ActionResponseNormal:
    """ACTION-Response-Normal: the Action-Result and optional return data (or its access result)."""

    result: ActionResult
    return_data: Data | DataAccessResult | None = None
    invoke_id_and_priority: InvokeIdAndPriority = DEFAULT_INVOKE
    TAG: ClassVar[int] = TAG_ACTION_RESPONSE

    def to_bytes(self) -> bytes:
        """C7 01 ..."""
        out = bytearray((self.TAG, 1, self.invoke_id_and_priority.to_byte(), ActionResult(self.result)))
        if self.return_data is None:
            out.append(0)
        else:
            out.append(1)
            _write_get_data_result(out, self.return_data)
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> ActionResponseNormal:
        """Read an ACTION-Response-Normal without judging it."""
        return _decode_as(data, cls)


def _read_action_response(reader: ByteReader) -> ActionResponseNormal:
    kind = reader.u8("ACTION-Response type")
    invoke = InvokeIdAndPriority.from_byte(reader.u8("invoke-id-and-priority"))
    if kind != 1:
        raise ProtocolError(f"ACTION-Response type {kind} is not supported (1 normal)")
    result = ActionResult(reader.u8("action-result"))
    return_data = _read_get_data_result(reader) if _present(reader, "return parameters") else None
    return ActionResponseNormal(result, return_data, invoke)


# ---------------------------------------------------------------------------------------------------------
# DATA-NOTIFICATION (push): unsolicited data from a meter or a DCU


@dataclass(frozen=True, slots=True)
class LongInvokeIdAndPriority:
    """The 4 bytes that open a data-notification: a 24-bit invoke id and four flags (Green Book 9.3.9)."""

    invoke_id: int = 0
    self_descriptive: bool = False
    break_on_error: bool = False
    confirmed: bool = False
    high_priority: bool = False

    def __post_init__(self) -> None:
        _check_uint("long invoke id", self.invoke_id, 24)

    def to_int(self) -> int:
        """The encoded 32 bits (reserved bits 24-27 zero)."""
        flags = (self.self_descriptive, self.break_on_error, self.confirmed, self.high_priority)
        return self.invoke_id | sum(1 << (28 + bit) for bit, on in enumerate(flags) if on)

    @classmethod
    def from_int(cls, value: int) -> LongInvokeIdAndPriority:
        """The fields of received bits; the reserved bits are ignored."""
        return cls(value & 0xFFFFFF, *(bool(value >> (28 + bit) & 1) for bit in range(4)))


@dataclass(frozen=True, slots=True)
class DataNotification:
    """data-notification: what a push setup sends, unasked and unanswered.

    `date_time` is an OCTET STRING on the wire: empty when the sender gives no time, else the 12
    bytes of a date-time. What `body` holds is the push setup's business (its push object list).
    """

    body: Data
    date_time: DateTime | None = None
    long_invoke_id_and_priority: LongInvokeIdAndPriority = LongInvokeIdAndPriority()
    TAG: ClassVar[int] = TAG_DATA_NOTIFICATION

    def to_bytes(self) -> bytes:
        """0F, the long invoke id, the date-time as an octet string, the body."""
        out = bytearray((self.TAG,))
        out += self.long_invoke_id_and_priority.to_int().to_bytes(4, "big")
        stamp = b"" if self.date_time is None else self.date_time.to_bytes()
        out += encode_length(len(stamp)) + stamp
        return bytes(out) + encode(self.body)

    @classmethod
    def from_bytes(cls, data: bytes) -> DataNotification:
        """Read a data-notification."""
        return _decode_as(data, cls)


def _read_data_notification(reader: ByteReader) -> DataNotification:
    invoke = LongInvokeIdAndPriority.from_int(reader.uint(4, "long-invoke-id-and-priority"))
    length = reader.length("data-notification date-time length")
    if length not in (0, 12):
        raise ProtocolError(f"data-notification date-time of {length} bytes (expected 0 or 12)")
    stamp = DateTime.from_bytes(reader.take(length, "date-time")) if length else None
    return DataNotification(reader.data_value(), stamp, invoke)


# ---------------------------------------------------------------------------------------------------------
# Any APDU


Apdu: TypeAlias = (
    Aarq
    | Aare
    | ReleaseRequest
    | ReleaseResponse
    | InitiateRequest
    | InitiateResponse
    | ConfirmedServiceError
    | ExceptionResponse
    | GetRequestNormal
    | GetRequestNext
    | GetResponseNormal
    | GetResponseWithDatablock
    | SetRequestNormal
    | SetResponseNormal
    | ActionRequestNormal
    | ActionResponseNormal
    | DataNotification
    | CipheredApdu
)


def _acse_reader(read: Callable[[ByteReader], _T], what: str) -> Callable[[ByteReader], _T]:
    def read_acse(reader: ByteReader) -> _T:
        return read(_acse_content(reader, what))

    return read_acse


_READERS: dict[int, Callable[[ByteReader], Apdu]] = {
    TAG_INITIATE_REQUEST: _read_initiate_request,
    TAG_INITIATE_RESPONSE: _read_initiate_response,
    TAG_CONFIRMED_SERVICE_ERROR: _read_confirmed_service_error,
    TAG_AARQ: _acse_reader(_read_aarq, "AARQ"),
    TAG_AARE: _acse_reader(_read_aare, "AARE"),
    TAG_RLRQ: _acse_reader(_read_rlrq, "RLRQ"),
    TAG_RLRE: _acse_reader(_read_rlre, "RLRE"),
    TAG_GET_REQUEST: _read_get_request,
    TAG_SET_REQUEST: _read_set_request,
    TAG_ACTION_REQUEST: _read_action_request,
    TAG_GET_RESPONSE: _read_get_response,
    TAG_SET_RESPONSE: _read_set_response,
    TAG_ACTION_RESPONSE: _read_action_response,
    TAG_EXCEPTION_RESPONSE: _read_exception_response,
    TAG_DATA_NOTIFICATION: _read_data_notification,
}


def decode_apdu(data: bytes) -> Apdu:
    """Whatever APDU `data` holds, without judging it; ProtocolError if it is not a valid one."""
    raw = bytes(data)
    reader = ByteReader(raw)
    tag = reader.u8("APDU tag")
    if tag in CIPHERED_TAGS:
        return CipheredApdu(raw)
    read = _READERS.get(tag)
    if read is None:
        raise ProtocolError(f"unknown or unsupported APDU tag 0x{tag:02x}")
    apdu = read(reader)
    reader.expect_end(f"APDU 0x{tag:02x}")
    return apdu


def _decode_as(data: bytes, cls: type[_T]) -> _T:
    apdu = decode_apdu(data)
    if not isinstance(apdu, cls):
        raise ProtocolError(f"expected {cls.__name__}, got {type(apdu).__name__}")
    return apdu


# ---------------------------------------------------------------------------------------------------------
# The client's view: responses checked for refusals


def raise_for_refusal(apdu: Apdu) -> None:
    """Raise the DeviceError that a refusal from the meter means; return quietly for anything else."""
    if isinstance(apdu, ExceptionResponse):
        raise ExceptionResponseError(apdu)
    if isinstance(apdu, ConfirmedServiceError):
        raise ServiceRefused(apdu)
    if isinstance(apdu, Aare) and not apdu.accepted:
        raise AssociationRejected(apdu)
    if isinstance(apdu, GetResponseNormal | GetResponseWithDatablock):
        if isinstance(apdu.result, DataAccessResult) and apdu.result != DataAccessResult.SUCCESS:
            raise DataAccessError("GET", apdu.result)
    elif isinstance(apdu, SetResponseNormal):
        if apdu.result != DataAccessResult.SUCCESS:
            raise DataAccessError("SET", apdu.result)
    elif isinstance(apdu, ActionResponseNormal):
        if apdu.result != ActionResult.SUCCESS:
            raise ActionError(apdu.result)
        if isinstance(apdu.return_data, DataAccessResult) and apdu.return_data != DataAccessResult.SUCCESS:
            raise DataAccessError("ACTION return data", apdu.return_data)


def _checked(data: bytes) -> Apdu:
    apdu = decode_apdu(data)
    raise_for_refusal(apdu)
    return apdu


def _unexpected(apdu: Apdu, what: str) -> ProtocolError:
    return ProtocolError(f"expected {what}, got {type(apdu).__name__}")


def parse_aare(data: bytes) -> Aare:
    """The meter's AARE; AssociationRejected (a DeviceError) if it refuses the association."""
    apdu = _checked(data)
    if isinstance(apdu, Aare):
        return apdu
    raise _unexpected(apdu, "an AARE")


def parse_get_response(data: bytes) -> GetResponseNormal | GetResponseWithDatablock:
    """A GET response; DataAccessError, ExceptionResponseError or ServiceRefused for a refusal."""
    apdu = _checked(data)
    if isinstance(apdu, GetResponseNormal | GetResponseWithDatablock):
        return apdu
    raise _unexpected(apdu, "a GET-Response")


def parse_set_response(data: bytes) -> SetResponseNormal:
    """A SET response; DataAccessError for a refused write."""
    apdu = _checked(data)
    if isinstance(apdu, SetResponseNormal):
        return apdu
    raise _unexpected(apdu, "a SET-Response")


def parse_action_response(data: bytes) -> ActionResponseNormal:
    """An ACTION response; ActionError for a refused method, DataAccessError for refused return data."""
    apdu = _checked(data)
    if isinstance(apdu, ActionResponseNormal):
        return apdu
    raise _unexpected(apdu, "an ACTION-Response")


def parse_release_response(data: bytes) -> ReleaseResponse:
    """The meter's RLRE."""
    apdu = _checked(data)
    if isinstance(apdu, ReleaseResponse):
        return apdu
    raise _unexpected(apdu, "an RLRE")
