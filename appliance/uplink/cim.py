"""IEC 61968-9 payloads inside the IEC 61968-100 envelope, as XML (lxml). Pure: objects <-> bytes.

Element order follows the public schemas exactly (xs:sequence everywhere): the envelope is
`cim4/Message.xsd`, MeterReadings is Connexo's `meterreadings/MeterReadings.xsd`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from lxml import etree

from appliance.errors import MessageError
from appliance.model import Event, Reading, ReadingType, by_series

MESSAGE_NS = "http://iec.ch/TC57/2011/schema/message"
XML_CONTENT_TYPE = "application/xml"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # larger inbound XML is refused before parsing


def noun_namespace(noun: str) -> str:
    """The payload namespace of a noun, e.g. http://iec.ch/TC57/2011/MeterReadings#."""
    return f"http://iec.ch/TC57/2011/{noun}#"


def format_time(moment: datetime) -> str:
    """xs:dateTime in UTC with a Z, to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """An aware datetime from xs:dateTime; a missing zone is refused rather than guessed."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise MessageError(f"not an xs:dateTime: {text[:40]!r}") from None
    if moment.tzinfo is None:
        raise MessageError(f"xs:dateTime without a time zone: {text[:40]!r}")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Header:
    """The IEC 61968-100 Header fields the appliance uses."""

    verb: str
    noun: str
    timestamp: datetime
    source: str
    message_id: str
    correlation_id: str | None = None
    properties: tuple[tuple[str, str], ...] = field(default=())


def _sub(parent: etree._Element, ns: str, tag: str, text: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, f"{{{ns}}}{tag}")
    if text is not None:
        element.text = text
    return element


def _header(parent: etree._Element, header: Header) -> None:
    element = _sub(parent, MESSAGE_NS, "Header")
    _sub(element, MESSAGE_NS, "Verb", header.verb)
    _sub(element, MESSAGE_NS, "Noun", header.noun)
    _sub(element, MESSAGE_NS, "Timestamp", format_time(header.timestamp))
    _sub(element, MESSAGE_NS, "Source", header.source)
    _sub(element, MESSAGE_NS, "MessageID", header.message_id)
    if header.correlation_id:
        _sub(element, MESSAGE_NS, "CorrelationID", header.correlation_id)
    for name, value in header.properties:
        prop = _sub(element, MESSAGE_NS, "Property")
        _sub(prop, MESSAGE_NS, "Name", name)
        _sub(prop, MESSAGE_NS, "Value", value)


def event_message(header: Header, payload: etree._Element) -> bytes:
    """An EventMessage (Header, Payload) as UTF-8 XML bytes."""
    root = etree.Element(f"{{{MESSAGE_NS}}}EventMessage", nsmap={"msg": MESSAGE_NS})
    _header(root, header)
    _sub(root, MESSAGE_NS, "Payload").append(payload)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def meter_readings(readings: Sequence[Reading]) -> etree._Element:
    """A MeterReadings payload: per meter, interval data in IntervalBlocks, registers in Readings.

    Meters, ReadingTypes and times appear in sorted order (`by_series`), whatever order the
    readings came in: the XML is a function of the set, which the compact encoding relies on.
    """
    ns = noun_namespace("MeterReadings")
    root = etree.Element(f"{{{ns}}}MeterReadings", nsmap={None: ns})
    for meter_id, series in by_series(readings).items():
        meter_reading = _sub(root, ns, "MeterReading")
        for reading_type, values in series.items():
            if reading_type.is_interval:
                element = _sub(meter_reading, ns, "IntervalBlocks")
                for reading in values:
                    _value(_sub(element, ns, "IntervalReadings"), ns, reading)
                _sub(element, ns, "ReadingType").set("ref", reading_type.code)
        meter = _sub(meter_reading, ns, "Meter")
        _sub(meter, ns, "mRID", meter_id)
        _sub(_sub(meter, ns, "Names"), ns, "name", meter_id)
        for reading_type, values in series.items():
            if not reading_type.is_interval:
                for reading in values:
                    element = _sub(meter_reading, ns, "Readings")
                    _value(element, ns, reading)
                    _sub(element, ns, "ReadingType").set("ref", reading_type.code)
    return root


def _value(element: etree._Element, ns: str, reading: Reading) -> None:
    _sub(element, ns, "timeStamp", format_time(reading.timestamp))
    _sub(element, ns, "value", str(reading.value))
    for quality in reading.qualities:
        _sub(_sub(element, ns, "ReadingQualities"), ns, "ReadingQualityType").set("ref", quality)


_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
)


def parse_xml(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> etree._Element:
    """Parse untrusted XML: size-limited, no DTD, no entities, no network. MessageError otherwise."""
    if len(data) > max_bytes:
        raise MessageError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    if b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
        raise MessageError("XML with a DTD or entity declarations is refused")
    try:
        return etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise MessageError(f"not well-formed XML: {exc}") from None


def _text(element: etree._Element, ns: str, path: str) -> str | None:
    found = element.find(path.replace("m:", f"{{{ns}}}"))
    return None if found is None else (found.text or "")


def read_header(root: etree._Element) -> Header:
    """The Header of a parsed 61968-100 message."""
    header = root.find(f"{{{MESSAGE_NS}}}Header")
    if header is None:
        raise MessageError("no IEC 61968-100 Header")
    verb, noun = _text(header, MESSAGE_NS, "m:Verb"), _text(header, MESSAGE_NS, "m:Noun")
    if not verb or not noun:
        raise MessageError("Header without Verb or Noun")
    stamp = _text(header, MESSAGE_NS, "m:Timestamp")
    return Header(
        verb=verb,
        noun=noun,
        timestamp=parse_time(stamp) if stamp else datetime.fromtimestamp(0, UTC),
        source=_text(header, MESSAGE_NS, "m:Source") or "",
        message_id=_text(header, MESSAGE_NS, "m:MessageID") or "",
        correlation_id=_text(header, MESSAGE_NS, "m:CorrelationID"),
        properties=tuple(
            (_text(p, MESSAGE_NS, "m:Name") or "", _text(p, MESSAGE_NS, "m:Value") or "")
            for p in header.findall(f"{{{MESSAGE_NS}}}Property")
        ),
    )


def read_meter_readings(root: etree._Element) -> list[Reading]:
    """The readings in a parsed message whose Payload holds MeterReadings."""
    ns = noun_namespace("MeterReadings")
    payload = root.find(f"{{{MESSAGE_NS}}}Payload/{{{ns}}}MeterReadings")
    if payload is None:
        raise MessageError("no MeterReadings payload")
    readings = []
    for meter_reading in payload.iterfind(f"{{{ns}}}MeterReading"):
        meter_id = _text(meter_reading, ns, "m:Meter/m:mRID")
        if not meter_id:
            raise MessageError("MeterReading without Meter/mRID")
        for block in meter_reading.iterfind(f"{{{ns}}}IntervalBlocks"):
            code = _reading_type_ref(block, ns)
            for item in block.iterfind(f"{{{ns}}}IntervalReadings"):
                readings.append(_reading(item, ns, meter_id, code))
        for item in meter_reading.iterfind(f"{{{ns}}}Readings"):
            readings.append(_reading(item, ns, meter_id, _reading_type_ref(item, ns)))
    return readings


def _reading_type_ref(element: etree._Element, ns: str, tag: str = "ReadingType") -> str:
    found = element.find(f"{{{ns}}}{tag}")
    if found is None or not found.get("ref"):
        raise MessageError(f"{etree.QName(element).localname} without {tag}/@ref")
    return found.get("ref")


def _reading(element: etree._Element, ns: str, meter_id: str, code: str) -> Reading:
    try:
        return Reading(
            meter_id=meter_id,
            reading_type=ReadingType(code),
            timestamp=parse_time(_text(element, ns, "m:timeStamp") or ""),
            value=Decimal(_text(element, ns, "m:value") or ""),
            qualities=tuple(
                q.get("ref", "")
                for q in element.iterfind(f"{{{ns}}}ReadingQualities/{{{ns}}}ReadingQualityType")
            ),
        )
    except (ValueError, InvalidOperation) as exc:
        raise MessageError(f"bad reading for meter {meter_id}: {exc}") from None


def end_device_events(events: Sequence[Event]) -> etree._Element:
    """An EndDeviceEvents payload (Connexo enddeviceevents/EndDeviceEvents.xsd element order)."""
    ns = noun_namespace("EndDeviceEvents")
    root = etree.Element(f"{{{ns}}}EndDeviceEvents", nsmap={None: ns})
    for event in events:
        element = _sub(root, ns, "EndDeviceEvent")
        _sub(element, ns, "createdDateTime", format_time(event.created))
        if event.reason:
            _sub(element, ns, "reason", event.reason)
        if event.severity:
            _sub(element, ns, "severity", event.severity)
        _sub(_sub(element, ns, "Assets"), ns, "mRID", event.device_id)
        for name, value in event.details:
            detail = _sub(element, ns, "EndDeviceEventDetails")
            _sub(detail, ns, "name", name)
            _sub(detail, ns, "value", value)
        _sub(element, ns, "EndDeviceEventType").set("ref", event.event_type)
    return root


def read_end_device_events(root: etree._Element) -> list[Event]:
    """The events in a parsed message whose Payload holds EndDeviceEvents."""
    ns = noun_namespace("EndDeviceEvents")
    payload = root.find(f"{{{MESSAGE_NS}}}Payload/{{{ns}}}EndDeviceEvents")
    if payload is None:
        raise MessageError("no EndDeviceEvents payload")
    events = []
    for element in payload.iterfind(f"{{{ns}}}EndDeviceEvent"):
        try:
            events.append(
                Event(
                    device_id=_text(element, ns, "m:Assets/m:mRID") or "",
                    event_type=_reading_type_ref(element, ns, "EndDeviceEventType"),
                    created=parse_time(_text(element, ns, "m:createdDateTime") or ""),
                    reason=_text(element, ns, "m:reason") or "",
                    severity=_text(element, ns, "m:severity") or "",
                    details=tuple(
                        (_text(d, ns, "m:name") or "", _text(d, ns, "m:value") or "")
                        for d in element.iterfind(f"{{{ns}}}EndDeviceEventDetails")
                    ),
                )
            )
        except ValueError as exc:
            raise MessageError(f"bad EndDeviceEvent: {exc}") from None
    return events
