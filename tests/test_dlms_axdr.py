"""Our A-XDR codec against gurux-dlms and dlms-cosem, round trips over every COSEM type, and fuzzing.

gurux-dlms and dlms-cosem are test peers only (GPLv2, BSL): they encode values we must decode to the
same typed value and decode values we encode to the same Python value, date-time signs included.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from dlms_cosem import time as cosem_time
from gurux_dlms import GXArray, GXBitString, GXDate, GXDateTime, GXStructure, GXTime
from gurux_dlms.enums import DataType as GuruxType
from gurux_dlms.GXByteBuffer import GXByteBuffer
from gurux_dlms.GXDLMSSettings import GXDLMSSettings
from gurux_dlms.GXTimeZone import GXTimeZone
from gurux_dlms.internal._GXCommon import _GXCommon
from gurux_dlms.internal._GXDataInfo import _GXDataInfo
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.collect.dlms import axdr
from appliance.collect.dlms.axdr import (
    Array,
    Bcd,
    BitString,
    Boolean,
    ClockStatus,
    CompactArray,
    Data,
    DataType,
    Date,
    DateTime,
    DontCare,
    DoubleLong,
    DoubleLongUnsigned,
    EnumValue,
    Float32,
    Float64,
    Integer,
    Long,
    Long64,
    Long64Unsigned,
    LongUnsigned,
    NullData,
    OctetString,
    Structure,
    Time,
    TypeDescription,
    Unsigned,
    Utf8String,
    VisibleString,
)
from appliance.errors import ProtocolError

# ---------------------------------------------------------------------------------------------------------
# Strategies (also used by test_dlms_apdu.py)

NUMBER_RANGES: dict[type[Data], tuple[int, int]] = {
    Integer: (-(2**7), 2**7 - 1),
    Long: (-(2**15), 2**15 - 1),
    DoubleLong: (-(2**31), 2**31 - 1),
    Long64: (-(2**63), 2**63 - 1),
    Unsigned: (0, 2**8 - 1),
    LongUnsigned: (0, 2**16 - 1),
    DoubleLongUnsigned: (0, 2**32 - 1),
    Long64Unsigned: (0, 2**64 - 1),
    EnumValue: (0, 255),
    Bcd: (0, 255),
}


def _optional(strategy: st.SearchStrategy[int]) -> st.SearchStrategy[int | None]:
    return st.none() | strategy


date_times = st.builds(
    DateTime,
    year=_optional(st.integers(0, 0xFFFE)),
    month=_optional(st.integers(0, 0xFE)),
    day=_optional(st.integers(0, 0xFE)),
    hour=_optional(st.integers(0, 0xFE)),
    minute=_optional(st.integers(0, 0xFE)),
    second=_optional(st.integers(0, 0xFE)),
    hundredths=_optional(st.integers(0, 0xFE)),
    day_of_week=_optional(st.integers(0, 0xFE)),
    deviation=_optional(st.integers(-0x7FFF, 0x7FFF)),
    clock_status=st.none() | st.integers(0, 0xFE).map(ClockStatus),
)
dates = st.builds(
    Date,
    _optional(st.integers(0, 0xFFFE)),
    _optional(st.integers(0, 0xFE)),
    _optional(st.integers(0, 0xFE)),
    _optional(st.integers(0, 0xFE)),
)
times = st.builds(
    Time,
    _optional(st.integers(0, 0xFE)),
    _optional(st.integers(0, 0xFE)),
    _optional(st.integers(0, 0xFE)),
    _optional(st.integers(0, 0xFE)),
)


@st.composite
def bit_strings(draw: st.DrawFn) -> BitString:
    octets = draw(st.binary(max_size=20))
    bit_count = draw(st.integers(max(0, 8 * len(octets) - 7), 8 * len(octets))) if octets else 0
    return BitString(octets, bit_count)


# Values by type, so that compact arrays can draw values that fit their description.
SCALARS: dict[DataType, st.SearchStrategy[Data]] = {
    DataType.NULL_DATA: st.just(NullData()),
    DataType.DONT_CARE: st.just(DontCare()),
    DataType.BOOLEAN: st.booleans().map(Boolean),
    DataType.BIT_STRING: bit_strings(),
    DataType.FLOAT32: st.binary(min_size=4, max_size=4).map(lambda bits: Float32(0.0, bits)),
    DataType.FLOAT64: st.floats().map(Float64)
    | st.binary(min_size=8, max_size=8).map(lambda b: Float64(0.0, b)),
    # Up to 300 bytes: short form, 0x81 and 0x82 long-form lengths.
    DataType.OCTET_STRING: st.binary(max_size=300).map(OctetString),
    DataType.VISIBLE_STRING: st.text(st.characters(max_codepoint=255), max_size=30).map(VisibleString),
    DataType.UTF8_STRING: st.text(st.characters(exclude_categories=["Cs"]), max_size=30).map(Utf8String),
    DataType.DATE_TIME: date_times,
    DataType.DATE: dates,
    DataType.TIME: times,
}
for _cls, (_low, _high) in NUMBER_RANGES.items():
    SCALARS[_cls.tag] = st.integers(_low, _high).map(_cls)

scalars = st.one_of(*SCALARS.values())

# Compact-array element types with a non-zero size (zero-size elements have their own tests).
_SIZED_LEAVES = [
    data_type for data_type in SCALARS if data_type not in (DataType.NULL_DATA, DataType.DONT_CARE)
]
descriptions = st.recursive(
    st.sampled_from(_SIZED_LEAVES).map(TypeDescription),
    lambda inner: st.one_of(
        st.builds(
            lambda element, count: TypeDescription(DataType.ARRAY, (element,), count),
            inner,
            st.integers(1, 3),
        ),
        st.lists(inner, min_size=1, max_size=4).map(
            lambda members: TypeDescription(DataType.STRUCTURE, members)
        ),
    ),
    max_leaves=6,
)


def values_of(description: TypeDescription) -> st.SearchStrategy[Data]:
    """Values that fit a compact-array description."""
    if description.data_type == DataType.ARRAY:
        element = values_of(description.elements[0])
        return st.lists(element, min_size=description.count, max_size=description.count).map(Array)
    if description.data_type == DataType.STRUCTURE:
        return st.tuples(*(values_of(element) for element in description.elements)).map(Structure)
    return SCALARS[description.data_type]


compact_arrays = descriptions.flatmap(
    lambda description: st.lists(values_of(description), max_size=4).map(
        lambda items: CompactArray(description, items)
    )
)

cosem_data = st.recursive(
    scalars | compact_arrays,
    lambda inner: st.lists(inner, max_size=5).map(Array) | st.lists(inner, max_size=5).map(Structure),
    max_leaves=15,
)


# ---------------------------------------------------------------------------------------------------------
# gurux as the reference

_GURUX_SETTINGS = GXDLMSSettings(False, None)


def gurux_encode(kind: GuruxType, value: object) -> bytes:
    buffer = GXByteBuffer()
    _GXCommon.setData(_GURUX_SETTINGS, buffer, kind, value)
    return bytes(buffer.array())


def gurux_decode(data: bytes) -> object:
    info = _GXDataInfo()
    value = _GXCommon.getData(_GURUX_SETTINGS, GXByteBuffer(data), info)
    assert info.complete, "gurux found the data incomplete"
    return value


def gurux_list(cls: type[list], items: list[object]) -> list[object]:
    built = cls()
    built.extend(items)
    return built


GURUX_ENCODINGS = [
    (GuruxType.NONE, None, NullData()),
    (GuruxType.BOOLEAN, True, Boolean(True)),
    (GuruxType.BOOLEAN, False, Boolean(False)),
    (GuruxType.INT8, -1, Integer(-1)),
    (GuruxType.INT16, -300, Long(-300)),
    (GuruxType.INT32, -2, DoubleLong(-2)),
    (GuruxType.INT64, -5, Long64(-5)),
    (GuruxType.UINT8, 200, Unsigned(200)),
    (GuruxType.UINT16, 65535, LongUnsigned(65535)),
    (GuruxType.UINT32, 7, DoubleLongUnsigned(7)),
    (GuruxType.UINT64, 2**63, Long64Unsigned(2**63)),
    (GuruxType.ENUM, 3, EnumValue(3)),
    (GuruxType.BCD, 0x12, Bcd(0x12)),
    (GuruxType.FLOAT32, 1.5, Float32(1.5)),
    (GuruxType.FLOAT64, -2.25, Float64(-2.25)),
    (GuruxType.OCTET_STRING, b"\x01\x02", OctetString(b"\x01\x02")),
    (GuruxType.OCTET_STRING, bytes(range(200)), OctetString(bytes(range(200)))),  # length 0x81 0xc8
    (GuruxType.OCTET_STRING, bytes(300), OctetString(bytes(300))),  # length 0x82 0x01 0x2c
    (GuruxType.STRING, "ABC", VisibleString("ABC")),
    (GuruxType.STRING_UTF8, "hé", Utf8String("hé")),
    (GuruxType.BITSTRING, GXBitString("10110001"), BitString(b"\xb1", 8)),
    (GuruxType.STRUCTURE, gurux_list(GXStructure, [1, "a"]), Structure((DoubleLong(1), VisibleString("a")))),
    (GuruxType.ARRAY, gurux_list(GXArray, [1, 2]), Array((DoubleLong(1), DoubleLong(2)))),
    (GuruxType.DATE, GXDate(datetime(2024, 7, 1)), Date(2024, 7, 1, None)),
    (GuruxType.TIME, GXTime(datetime(2024, 7, 1, 12, 30, 15)), Time(12, 30, 15, 0)),
    (
        GuruxType.DATETIME,
        GXDateTime(datetime(2024, 7, 1, 12, 30, 15, 250000, tzinfo=GXTimeZone(120))),
        DateTime(2024, 7, 1, 12, 30, 15, hundredths=25, deviation=-120, clock_status=ClockStatus(0)),
    ),
]


@pytest.mark.parametrize(("kind", "value", "ours"), GURUX_ENCODINGS, ids=lambda case: str(case)[:30])
def test_gurux_encodings_decode_to_the_typed_value_and_back(
    kind: GuruxType, value: object, ours: Data
) -> None:
    theirs = gurux_encode(kind, value)
    assert axdr.decode(theirs) == ours
    assert axdr.encode(ours) == theirs


def test_known_answers_by_hand() -> None:
    # Blue Book shapes, written out: scaler-unit structure {integer -1, enum 30 (Wh)}; register value.
    assert axdr.encode(Structure((Integer(-1), EnumValue(30)))) == bytes.fromhex("02020fff161e")
    assert axdr.encode(DoubleLongUnsigned(123456)) == bytes.fromhex("060001e240")
    assert axdr.encode(BitString.from_bools([True, False, True, True, False])) == bytes.fromhex("0405b0")
    assert axdr.decode(bytes.fromhex("0405b0")).bools() == (True, False, True, True, False)
    assert axdr.encode(Array()) == b"\x01\x00"
    assert axdr.encode(DontCare()) == b"\xff"


@pytest.mark.parametrize(
    ("length", "encoded"),
    [
        (0, "00"),
        (127, "7f"),
        (128, "8180"),
        (255, "81ff"),
        (256, "820100"),
        (65535, "82ffff"),
        (65536, "83010000"),
        (2**32 - 1, "84ffffffff"),
    ],
)
def test_length_short_and_long_form(length: int, encoded: str) -> None:
    assert axdr.encode_length(length) == bytes.fromhex(encoded)
    assert axdr.decode_length(bytes.fromhex(encoded)) == (length, len(encoded) // 2)


def test_non_canonical_forms_meters_send_are_accepted_and_normalised() -> None:
    assert axdr.decode(bytes.fromhex("09810201ff")) == OctetString(b"\x01\xff")  # long form for 2
    assert axdr.decode(bytes.fromhex("0305")) == Boolean(True)  # any non-zero byte is true
    assert axdr.encode(axdr.decode(bytes.fromhex("0305"))) == bytes.fromhex("0301")


@pytest.mark.parametrize("bad", ["80", "85", "8501020304", "82ff"])
def test_invalid_lengths_are_protocol_errors(bad: str) -> None:
    with pytest.raises(ProtocolError):
        axdr.decode_length(bytes.fromhex(bad))
    with pytest.raises(ProtocolError):
        axdr.decode(bytes.fromhex("09" + bad))


def test_gurux_bit_string_encoder_rounds_to_octets_but_decodes_bits() -> None:
    # Trap: gurux writes a 4-bit string with length 8; its decoder reads the bit count we send.
    assert gurux_encode(GuruxType.BITSTRING, GXBitString("1011")) == bytes.fromhex("0408b0")
    assert str(gurux_decode(axdr.encode(BitString.from_bools([True, False, True, True])))) == "1011"


def test_compact_array_of_structures_known_answer_and_gurux_reads_it() -> None:
    row = TypeDescription(
        DataType.STRUCTURE, (TypeDescription(DataType.UNSIGNED), TypeDescription(DataType.OCTET_STRING))
    )
    value = CompactArray(
        row, (Structure((Unsigned(1), OctetString(b"a"))), Structure((Unsigned(2), OctetString(b"bc"))))
    )
    encoded = bytes.fromhex("13020211090701016102026263")
    assert axdr.encode(value) == encoded
    assert axdr.decode(encoded) == value
    assert gurux_decode(encoded) == [[1, bytearray(b"a")], [2, bytearray(b"bc")]]


def test_compact_array_with_array_description_and_simple_elements() -> None:
    # Description: array of 2 long-unsigned (count is a fixed 2-byte field); two elements.
    pair = TypeDescription(DataType.ARRAY, (TypeDescription(DataType.LONG_UNSIGNED),), 2)
    encoded = bytes.fromhex("1301000212080001000200030004")
    value = axdr.decode(encoded)
    assert value == CompactArray(
        pair, (Array((LongUnsigned(1), LongUnsigned(2))), Array((LongUnsigned(3), LongUnsigned(4))))
    )
    assert axdr.encode(value) == encoded
    assert axdr.decode(bytes.fromhex("1312060001000200ff")) == CompactArray(
        TypeDescription(DataType.LONG_UNSIGNED), (LongUnsigned(1), LongUnsigned(2), LongUnsigned(0xFF))
    )


def test_compact_array_structure_description_with_long_form_member_count() -> None:
    wide = TypeDescription(DataType.STRUCTURE, (TypeDescription(DataType.UNSIGNED),) * 130)
    value = CompactArray(wide, (Structure(tuple(Unsigned(i) for i in range(130))),))
    encoded = axdr.encode(value)
    assert encoded[:4] == bytes.fromhex("13028182") and encoded[4:134] == b"\x11" * 130
    assert encoded[134:137] == bytes.fromhex("818200")  # contents: 130 bytes, the first one 0
    assert axdr.decode(encoded) == value


def test_compact_array_refuses_what_it_cannot_carry() -> None:
    null = TypeDescription(DataType.NULL_DATA)
    assert axdr.decode(bytes.fromhex("130000")) == CompactArray(null, ())
    with pytest.raises(ProtocolError, match="zero size"):
        axdr.decode(bytes.fromhex("13000100"))  # contents that no null element can consume
    with pytest.raises(ProtocolError, match="expands"):
        axdr.decode(bytes.fromhex("1302") + bytes([100]) + b"\x00" * 99 + bytes.fromhex("110105"))
    with pytest.raises(ProtocolError, match="cannot appear"):
        axdr.decode(bytes.fromhex("131300"))  # a compact array cannot describe a compact array
    with pytest.raises(ProtocolError):
        axdr.decode(bytes.fromhex("1312030001"))  # half an element
    with pytest.raises(ValueError, match="zero size"):
        axdr.encode(CompactArray(null, (NullData(),)))
    with pytest.raises(ValueError, match="described type"):
        axdr.encode(CompactArray(TypeDescription(DataType.UNSIGNED), (Long(1),)))


# ---------------------------------------------------------------------------------------------------------
# Date-time: sign of the deviation, wildcards, clock status


@pytest.mark.parametrize("offset_minutes", [0, 60, 120, -300, 330, 840])
def test_deviation_sign_matches_gurux_and_dlms_cosem(offset_minutes: int) -> None:
    moment = datetime(2024, 3, 1, 0, 15, 0, tzinfo=timezone(timedelta(minutes=offset_minutes)))
    ours = DateTime.from_datetime(moment)
    assert ours.deviation == -offset_minutes  # Blue Book: minutes from local time to UTC
    assert ours.to_utc() == moment.astimezone(UTC)

    theirs = gurux_encode(GuruxType.DATETIME, GXDateTime(moment.replace(tzinfo=GXTimeZone(offset_minutes))))
    decoded = axdr.decode(theirs)
    assert isinstance(decoded, DateTime)
    assert decoded.deviation == -offset_minutes
    assert decoded.to_utc() == moment.astimezone(UTC)
    gurux_view = gurux_decode(axdr.encode(ours))
    assert gurux_view.value.astimezone(UTC) == moment.astimezone(UTC)

    cosem_moment, _ = cosem_time.datetime_from_bytes(ours.to_bytes())
    if offset_minutes:  # dlms-cosem reads deviation 0 as "no zone"
        assert cosem_moment == moment
    assert DateTime.from_bytes(cosem_time.datetime_to_bytes(moment)).to_utc() == moment.astimezone(UTC)


def test_daylight_saving_follows_the_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    summer = DateTime.from_datetime(datetime(2024, 7, 1, 12, 0, tzinfo=berlin))
    winter = DateTime.from_datetime(datetime(2024, 1, 15, 12, 0, tzinfo=berlin))
    assert (summer.deviation, summer.clock_status) == (-120, ClockStatus.DAYLIGHT_SAVING_ACTIVE)
    assert (winter.deviation, winter.clock_status) == (-60, ClockStatus(0))
    assert summer.to_utc() == datetime(2024, 7, 1, 10, 0, tzinfo=UTC)
    assert summer.day_of_week == 1  # a Monday
    assert summer.to_bytes() == bytes.fromhex("07e80701010c000000ff8880")


def test_clock_status_bits_match_dlms_cosem() -> None:
    for status in (0x00, 0x01, 0x02, 0x04, 0x08, 0x80, 0x8F):
        theirs = cosem_time.ClockStatus.from_bytes(bytes([status]))
        ours = ClockStatus(status)
        assert theirs.invalid == bool(ours & ClockStatus.INVALID)
        assert theirs.doubtful == bool(ours & ClockStatus.DOUBTFUL)
        assert theirs.different_base == bool(ours & ClockStatus.DIFFERENT_CLOCK_BASE)
        assert theirs.invalid_status == bool(ours & ClockStatus.INVALID_CLOCK_STATUS)
        assert theirs.daylight_saving_active == bool(ours & ClockStatus.DAYLIGHT_SAVING_ACTIVE)
    assert DateTime.from_bytes(bytes.fromhex("07e807010100000000800030")).clock_status == ClockStatus(0x30)


def test_wildcards_and_what_cannot_become_an_instant() -> None:
    every_wildcard = DateTime.from_bytes(bytes.fromhex("ffffffffffffffffff8000ff"))
    assert every_wildcard == DateTime(None, None, None, None, None, None, None, None, None, None)
    assert every_wildcard.to_bytes() == bytes.fromhex("ffffffffffffffffff8000ff")
    assert not every_wildcard.is_fully_specified
    with pytest.raises(ProtocolError, match="no deviation"):
        every_wildcard.to_utc()

    local_only = DateTime.from_bytes(bytes.fromhex("07e80301050c1e0fff800000"))
    assert local_only.hundredths is None and local_only.deviation is None
    assert local_only.to_naive_local() == datetime(2024, 3, 1, 12, 30, 15)
    with pytest.raises(ProtocolError, match="no deviation"):
        local_only.to_utc()

    yearly = DateTime.from_bytes(bytes.fromhex("ffff0301ff00000000000000"))
    with pytest.raises(ProtocolError, match="year unspecified"):
        yearly.to_utc()
    for impossible in ("07e80d01ff0000000000000000", "07e80230ff00000000ffc400", "07e80301ff18000000ffc400"):
        with pytest.raises(ProtocolError):
            DateTime.from_bytes(bytes.fromhex(impossible)[:12]).to_utc()
    with pytest.raises(ProtocolError, match="impossible deviation"):
        DateTime(2024, 3, 1, 0, 0, 0, deviation=-2000).to_utc()
    with pytest.raises(ProtocolError, match="12 bytes"):
        DateTime.from_bytes(bytes(11))
    assert DateTime.from_data(OctetString(local_only.to_bytes())) == local_only
    with pytest.raises(ProtocolError):
        DateTime.from_data(OctetString(bytes(5)))
    with pytest.raises(ValueError, match="aware"):
        DateTime.from_datetime(datetime(2024, 1, 1))


def test_dates_and_times_convert_when_specified() -> None:
    assert Date.from_bytes(bytes.fromhex("07e8070101")).to_date().isoformat() == "2024-07-01"
    assert Date.from_bytes(bytes.fromhex("ffff12fefe")).to_bytes() == bytes.fromhex("ffff12fefe")
    with pytest.raises(ProtocolError):
        Date.from_bytes(bytes.fromhex("ffff0c1fff")).to_date()
    assert Time.from_bytes(bytes.fromhex("0c1e0fff")).to_time().isoformat() == "12:30:15"
    with pytest.raises(ProtocolError):
        Time.from_bytes(bytes.fromhex("ff1e0f00")).to_time()


# ---------------------------------------------------------------------------------------------------------
# Construction errors are the caller's (ValueError), never silent truncation


@pytest.mark.parametrize(
    "build",
    [
        lambda: Unsigned(256),
        lambda: Integer(-129),
        lambda: Long64Unsigned(-1),
        lambda: DoubleLong(1.5),
        lambda: Boolean(1),
        lambda: VisibleString("€"),
        lambda: Float32(1e39),
        lambda: BitString(b"\x00", 9),
        lambda: DateTime(2024, 13 * 20, 1, 0, 0, 0),
        lambda: DateTime(2024, 1, 1, 0, 0, 0, deviation=-0x8000),
        lambda: TypeDescription(DataType.ARRAY),
        lambda: Array([1]),
    ],
)
def test_values_that_cannot_be_encoded_are_refused_when_built(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


# ---------------------------------------------------------------------------------------------------------
# Malformed input: ProtocolError and nothing else


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("", "missing"),
        ("07", "unknown"),  # floating-point: not used by DLMS
        ("0e00", "unknown"),
        ("1c", "unknown"),
        ("0600", "truncated"),
        ("0903aabb", "truncated"),
        ("01021100", "missing"),
        ("0181ff00", "array of 255 items"),
        ("0c02c328", "UTF-8"),
        ("110100", "trailing"),
        ("19" + "00" * 11, "truncated"),
    ],
)
def test_malformed_data_is_a_protocol_error(bad: str, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        axdr.decode(bytes.fromhex(bad))


def test_nesting_beyond_the_limit_is_refused_without_recursion_error() -> None:
    deep = b"\x01\x01" * 10_000 + b"\x00"
    with pytest.raises(ProtocolError, match="nested"):
        axdr.decode(deep)
    compact_deep = b"\x13" + b"\x01\x00\x01" * 5000 + b"\x11\x00"
    with pytest.raises(ProtocolError, match="nested"):
        axdr.decode(compact_deep)
    assert axdr.decode(b"\x01\x01" * (axdr.MAX_DEPTH - 1) + b"\x00")  # just inside the limit


# ---------------------------------------------------------------------------------------------------------
# Properties


@settings(max_examples=300, deadline=None)
@given(cosem_data)
def test_round_trip_keeps_type_and_bytes(value: Data) -> None:
    encoded = axdr.encode(value)
    decoded = axdr.decode(encoded)
    assert decoded == value
    assert type(decoded) is type(value)
    assert axdr.encode(decoded) == encoded
    assert axdr.decode_prefix(b"\xaa" + encoded + b"\x00\x01", 1) == (value, 1 + len(encoded))


GURUX_VIEWABLE = st.recursive(
    st.one_of(
        *(st.integers(low, high).map(cls) for cls, (low, high) in NUMBER_RANGES.items()),
        st.booleans().map(Boolean),
        st.binary(max_size=140).map(OctetString),
        st.text("abcXYZ019 ", max_size=20).map(VisibleString),
        st.just(NullData()),
    ),
    lambda inner: st.lists(inner, max_size=4).map(Array) | st.lists(inner, max_size=4).map(Structure),
    max_leaves=10,
)


def _as_gurux_sees_it(value: Data) -> object:
    if isinstance(value, Array | Structure):
        return [_as_gurux_sees_it(item) for item in value.items]
    if isinstance(value, OctetString):
        return bytearray(value.value)
    if isinstance(value, NullData):
        return None
    return value.value  # type: ignore[attr-defined]


@settings(max_examples=150, deadline=None)
@given(GURUX_VIEWABLE)
def test_gurux_decodes_what_we_encode(value: Data) -> None:
    assert gurux_decode(axdr.encode(value)) == _as_gurux_sees_it(value)


plausible_date_times = st.builds(
    DateTime,
    year=st.integers(0, 10000),
    month=st.integers(0, 13),
    day=st.integers(0, 32),
    hour=st.integers(0, 25),
    minute=st.integers(0, 60),
    second=st.integers(0, 60),
    hundredths=_optional(st.integers(0, 101)),
    deviation=st.integers(-900, 900),
)


@settings(max_examples=200, deadline=None)
@given(plausible_date_times)
def test_date_time_to_utc_is_the_aware_local_time_or_a_protocol_error(moment: DateTime) -> None:
    assert moment.deviation is not None
    try:
        # Independent reading: local wall time in a zone whose UTC offset is minus the deviation.
        local = datetime(
            moment.year,  # type: ignore[arg-type]
            moment.month,  # type: ignore[arg-type]
            moment.day,  # type: ignore[arg-type]
            moment.hour,  # type: ignore[arg-type]
            moment.minute,  # type: ignore[arg-type]
            moment.second,  # type: ignore[arg-type]
            (moment.hundredths or 0) * 10000,
            tzinfo=timezone(timedelta(minutes=-moment.deviation)),
        )
        expected = local.astimezone(UTC) if abs(moment.deviation) <= 840 else None
    except (ValueError, OverflowError):
        expected = None
    if expected is None:
        with pytest.raises(ProtocolError):
            moment.to_utc()
        return
    assert moment.to_utc() == expected
    again = DateTime.from_datetime(local, clock_status=moment.clock_status)
    assert again.to_utc() == expected
    assert (again.year, again.month, again.day, again.hour, again.minute, again.second, again.deviation) == (
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
        moment.deviation,
    )


def check_decoder_contract(data: bytes) -> None:
    """Only ProtocolError escapes; anything decoded re-encodes canonically to the same value."""
    try:
        value = axdr.decode(data)
    except ProtocolError:
        return
    assert axdr.decode(axdr.encode(value)) == value


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    """A valid encoding with a few bytes changed, dropped or inserted: closer to real line damage."""
    data = bytearray(axdr.encode(draw(cosem_data)))
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "drop", "insert", "truncate"]))
        if action == "flip" and position < len(data):
            data[position] = draw(st.integers(0, 255))
        elif action == "drop" and position < len(data):
            del data[position]
        elif action == "insert":
            data.insert(position, draw(st.integers(0, 255)))
        else:
            del data[position:]
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80) | mutated_encodings())
def test_fuzz_decoder_raises_only_protocol_error(data: bytes) -> None:
    check_decoder_contract(data)
