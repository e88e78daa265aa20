"""CIM messages: valid against the public schemas, round-trip exact, and a parser that refuses hostility."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.errors import MessageError
from appliance.model import Reading, ReadingType
from appliance.uplink import cim
from tests.conftest import CimSchemas

REGISTER = ReadingType("0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0")
PROFILE = ReadingType("0.0.2.4.1.1.12.0.0.0.0.0.0.0.0.3.72.0")
T0 = datetime(2026, 11, 24, 6, 45, tzinfo=UTC)
HEADER = cim.Header("created", "MeterReadings", T0, "hes-1", "5b7e-1", correlation_id="req-9")


def sample() -> list[Reading]:
    return [
        Reading("MTR-1", PROFILE, T0, Decimal("0.250")),
        Reading("MTR-1", PROFILE, T0 + timedelta(minutes=15), Decimal("0.275"), ("2.4.2",)),
        Reading("MTR-1", REGISTER, T0, Decimal("6519.0955")),
        Reading("MTR-2", REGISTER, T0, Decimal("12")),
    ]


def test_message_validates_against_the_public_schemas(cim_schemas: CimSchemas) -> None:
    cim_schemas.validate(cim.event_message(HEADER, cim.meter_readings(sample())))


def test_interval_data_goes_to_interval_blocks_and_registers_to_readings() -> None:
    root = cim.parse_xml(cim.event_message(HEADER, cim.meter_readings(sample())))
    ns = {"m": cim.noun_namespace("MeterReadings"), "msg": cim.MESSAGE_NS}
    first = root.find("msg:Payload/m:MeterReadings/m:MeterReading", ns)
    assert [child.tag.split("}")[1] for child in first] == ["IntervalBlocks", "Meter", "Readings"]
    assert len(first.findall("m:IntervalBlocks/m:IntervalReadings", ns)) == 2
    assert cim.read_header(root) == HEADER


def test_round_trip_is_exact() -> None:
    root = cim.parse_xml(cim.event_message(HEADER, cim.meter_readings(sample())))
    assert sorted(cim.read_meter_readings(root), key=repr) == sorted(sample(), key=repr)


readings = st.builds(
    Reading,
    meter_id=st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True),
    reading_type=st.sampled_from([REGISTER, PROFILE]),
    timestamp=st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31), timezones=st.just(UTC)).map(
        lambda moment: moment.replace(microsecond=0)
    ),
    value=st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-(10**9), max_value=10**12),
    qualities=st.lists(st.sampled_from(["2.4.2", "1.5.258", "2.4.128"]), max_size=2, unique=True).map(tuple),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(readings, min_size=1, max_size=12, unique_by=lambda r: (r.meter_id, r.reading_type, r.timestamp))
)
def test_any_readings_round_trip_and_validate(cim_schemas: CimSchemas, batch: list[Reading]) -> None:
    message = cim.event_message(HEADER, cim.meter_readings(batch))
    cim_schemas.validate(message)
    assert sorted(cim.read_meter_readings(cim.parse_xml(message)), key=repr) == sorted(batch, key=repr)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<lolz>&lol2;</lolz>"""
XXE = b"""<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>"""


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (BILLION_LAUGHS, "DTD"),
        (XXE, "DTD"),
        (b"<!doctype r><r/>", "DTD"),
        (b"not xml at all", "well-formed"),
        (b"<a><b></a>", "well-formed"),
        (b"<a>" + b"x" * cim.MAX_MESSAGE_BYTES + b"</a>", "exceeds the limit"),
    ],
)
def test_hostile_or_broken_xml_is_refused(payload: bytes, match: str) -> None:
    with pytest.raises(MessageError, match=match):
        cim.parse_xml(payload)


@pytest.mark.parametrize(
    "xml",
    [
        b'<EventMessage xmlns="http://iec.ch/TC57/2011/schema/message"/>',
        b'<EventMessage xmlns="http://iec.ch/TC57/2011/schema/message"><Header><Verb>created</Verb></Header></EventMessage>',
    ],
)
def test_incomplete_headers_are_message_errors(xml: bytes) -> None:
    with pytest.raises(MessageError):
        cim.read_header(cim.parse_xml(xml))


def test_payload_without_reading_type_is_a_message_error() -> None:
    message = cim.event_message(HEADER, cim.meter_readings(sample()[2:3]))
    broken = message.replace(b'<ReadingType ref="0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0"/>', b"")
    with pytest.raises(MessageError, match="ReadingType"):
        cim.read_meter_readings(cim.parse_xml(broken))
