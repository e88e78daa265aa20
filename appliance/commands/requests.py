"""MDM requests (IEC 61968-100 RequestMessage) into plain `Request` objects. Pure: bytes in, objects out.

Served: `create EndDeviceControls` (relay and clock, by the configured code table), `get MeterReadings`,
`create|change|delete MeterConfig`, `get EndDeviceEvents`, `change UsagePointConfig` (a meter's
tariff). Anything hostile or not understood raises
`RequestRefused` with the Reply Error code it gets; the XML goes through `cim.parse_xml` (size limit,
no DTD, no entities, no network).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from lxml import etree

from appliance.commands import codes
from appliance.errors import MessageError, RequestRefused
from appliance.model import ReadingType, epoch
from appliance.uplink import cim

M = cim.MESSAGE_NS
PRIORITIES = {"high": 0, "normal": 1, "low": 2}
SERVED = {
    ("create", "EndDeviceControls"),
    ("get", "MeterReadings"),
    ("create", "MeterConfig"),
    ("change", "MeterConfig"),
    ("delete", "MeterConfig"),
    ("get", "EndDeviceEvents"),
    ("change", "UsagePointConfig"),
}
MAX_METERS = 1000  # per request: a bigger list is refused rather than journalled


@dataclass(frozen=True)
class Envelope:
    """The Header fields that route, identify and authorise a request."""

    verb: str
    noun: str
    message_id: str
    correlation_id: str
    source: str
    user: str
    reply_address: str
    properties: dict[str, str]


@dataclass(frozen=True)
class MeterEntry:
    """One meter of a MeterConfig request: what registering it needs. Keys stay wrapped (RFC 5649)
    until the meter is registered, so the journal never holds them in clear."""

    mrid: str
    model: str = ""
    settings: dict[str, str] = field(default_factory=dict)  # ConnectionAttributes name -> value
    wrapped_keys: dict[str, str] = field(default_factory=dict)  # accessor name -> base64 ciphertext


@dataclass(frozen=True)
class Request:
    """What a request asks, in a form the journal keeps as JSON.

    operation: control (action: disconnect, connect, arm, clock_sync, credit), read, events,
    meter_config (action: create, change, delete), tariff (the meters' new tariff).
    """

    operation: str
    meters: tuple[str, ...]
    action: str = ""
    code: str = ""
    start: int | None = None  # epoch seconds, inclusive
    end: int | None = None  # epoch seconds, exclusive
    reading_types: tuple[str, ...] = ()
    entries: tuple[MeterEntry, ...] = ()
    amount: str = ""  # a prepay top-up (action credit): exact decimal and ISO 4217 currency
    currency: str = ""
    tariff: str = ""  # a tariff assignment: the tariff's name, and its TOML file if the MDM sent one
    tariff_text: str = ""

    def to_json(self) -> dict[str, Any]:
        """For the journal."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Request:
        """Back from the journal."""
        return cls(
            **{
                **data,
                "meters": tuple(data["meters"]),
                "reading_types": tuple(data["reading_types"]),
                "entries": tuple(MeterEntry(**entry) for entry in data["entries"]),
            }
        )


@dataclass(frozen=True)
class Parsed:
    """A request with the scheduling the MDM asked for."""

    envelope: Envelope
    request: Request
    priority: int
    expires_at: datetime | None


def read_envelope(data: bytes, max_bytes: int) -> tuple[Envelope, etree._Element]:
    """The Header of a RequestMessage and the parsed root; RequestRefused (1.x) for anything else."""
    try:
        root = cim.parse_xml(data, max_bytes)
    except MessageError as exc:
        raise RequestRefused(codes.MALFORMED, str(exc)) from None
    if root.tag != f"{{{M}}}RequestMessage":
        raise RequestRefused(
            codes.MALFORMED, f"expected an IEC 61968-100 RequestMessage, got {root.tag[:80]}"
        )
    header = root.find(f"{{{M}}}Header")
    if header is None:
        raise RequestRefused(codes.MALFORMED, "RequestMessage without a Header")

    def text(path: str) -> str:
        found = header.find(path.replace("m:", f"{{{M}}}"))
        return (found.text or "").strip() if found is not None else ""

    envelope = Envelope(
        verb=text("m:Verb"),
        noun=text("m:Noun"),
        message_id=text("m:MessageID"),
        correlation_id=text("m:CorrelationID"),
        source=text("m:Source"),
        user=text("m:User/m:UserID"),
        reply_address=text("m:ReplyAddress"),
        properties={
            _child_text(p, M, "Name"): _child_text(p, M, "Value") for p in header.iterfind(f"{{{M}}}Property")
        },
    )
    if not envelope.verb or not envelope.noun:
        raise RequestRefused(codes.MALFORMED, "Header without Verb or Noun")
    return envelope, root


def parse_request(
    envelope: Envelope, root: etree._Element, controls: dict[str, str], received: datetime
) -> Parsed:
    """What the request asks; RequestRefused (1.x, 2.x) when it is not something this HES serves."""
    if (envelope.verb, envelope.noun) not in SERVED:
        raise RequestRefused(codes.UNSUPPORTED, f"'{envelope.verb} {envelope.noun}' is not served here")
    if not envelope.message_id:
        raise RequestRefused(
            codes.NO_MESSAGE_ID, "a request needs a Header MessageID (it makes it idempotent)"
        )
    expiries = []
    priority = PRIORITIES["normal"]
    if "Priority" in envelope.properties:
        name = envelope.properties["Priority"].lower()
        if name not in PRIORITIES:
            raise RequestRefused(codes.BAD_CONTENT, f"Priority must be one of {list(PRIORITIES)}")
        priority = PRIORITIES[name]
    if "Expiry" in envelope.properties:
        expiries.append(_time(envelope.properties["Expiry"], "Expiry"))
    if envelope.noun == "EndDeviceControls":
        request, control_expiry = _controls(root, controls)
        expiries += [control_expiry] if control_expiry else []
    elif envelope.noun == "MeterReadings":
        request = _readings(root, received)
    elif envelope.noun == "EndDeviceEvents":
        request = _events(root, received)
    elif envelope.noun == "UsagePointConfig":
        request = _usage_point_config(root)
    else:
        request = _meter_config(root, envelope.verb)
    if not request.meters:
        raise RequestRefused(codes.BAD_CONTENT, "the request names no meter")
    if len(request.meters) > MAX_METERS:
        raise RequestRefused(codes.BAD_CONTENT, f"more than {MAX_METERS} meters in one request")
    return Parsed(envelope, request, priority, min(expiries) if expiries else None)


def _child_text(element: etree._Element, ns: str, tag: str) -> str:
    found = element.find(f"{{{ns}}}{tag}")
    return (found.text or "").strip() if found is not None else ""


def _time(text: str, what: str) -> datetime:
    try:
        return cim.parse_time(text)
    except MessageError as exc:
        raise RequestRefused(codes.BAD_CONTENT, f"{what}: {exc}") from None


def _device_ids(elements: list[etree._Element], ns: str) -> tuple[str, ...]:
    """mRIDs, or the first name of devices that give none (in the order given, without repeats)."""
    found: list[str] = []
    for element in elements:
        mrid = _child_text(element, ns, "mRID") or _child_text(element, ns, "serialNumber")
        if not mrid:
            names = element.find(f"{{{ns}}}Names")
            mrid = _child_text(names, ns, "name") if names is not None else ""
        if not mrid:
            raise RequestRefused(codes.BAD_CONTENT, f"{etree.QName(element).localname} without mRID or name")
        if mrid not in found:
            found.append(mrid)
    return tuple(found)


def _payload(root: etree._Element, noun: str) -> etree._Element:
    ns = cim.noun_namespace(noun)
    found = root.find(f"{{{M}}}Payload/{{{ns}}}{noun}")
    if found is None:
        raise RequestRefused(codes.BAD_CONTENT, f"no {noun} payload (namespace {ns})")
    return found


def _controls(root: etree._Element, controls: dict[str, str]) -> tuple[Request, datetime | None]:
    ns = cim.noun_namespace("EndDeviceControls")
    items = _payload(root, "EndDeviceControls").findall(f"{{{ns}}}EndDeviceControl")
    if len(items) != 1:
        raise RequestRefused(codes.BAD_CONTENT, f"one EndDeviceControl per request, got {len(items)}")
    control = items[0]
    kind = control.find(f"{{{ns}}}EndDeviceControlType")
    code = (kind.get("ref") or "").strip() if kind is not None else ""
    if code not in controls:
        raise RequestRefused(
            codes.BAD_CONTENT, f"unknown EndDeviceControlType {code[:40]!r}; known: {sorted(controls)}"
        )
    meters = _device_ids(control.findall(f"{{{ns}}}EndDevices"), ns)
    end = control.find(f"{{{ns}}}primaryDeviceTiming/{{{ns}}}interval/{{{ns}}}end")
    expiry = _time(end.text or "", "primaryDeviceTiming/interval/end") if end is not None else None
    if controls[code] == "credit":
        amount, currency = _credit(control, ns)
        return Request("control", meters, "credit", code, amount=amount, currency=currency), expiry
    return Request("control", meters, action=controls[code], code=code), expiry


def _credit(control: etree._Element, ns: str) -> tuple[str, str]:
    """A top-up's EndDeviceControlAttribute pairs amount (a positive decimal) and currency."""
    attributes = {
        _child_text(a, ns, "name"): _child_text(a, ns, "value")
        for a in control.iterfind(f"{{{ns}}}EndDeviceControlAttribute")
    }
    amount, currency = attributes.get("amount", ""), attributes.get("currency", "")
    try:
        valid = Decimal(amount).is_finite() and Decimal(amount) > 0
    except ArithmeticError:
        valid = False
    if not valid or not currency:
        raise RequestRefused(
            codes.BAD_CONTENT, "a credit needs EndDeviceControlAttribute amount (positive) and currency"
        )
    return amount, currency


def _interval(element: etree._Element | None, ns: str, what: str) -> tuple[int | None, int | None]:
    if element is None:
        return None, None
    start, end = _child_text(element, ns, "start"), _child_text(element, ns, "end")
    first = epoch(_time(start, f"{what}/start")) if start else None
    last = epoch(_time(end, f"{what}/end")) if end else None
    if first is not None and last is not None and last <= first:
        raise RequestRefused(codes.BAD_CONTENT, f"{what}: end is not after start")
    return first, last


def _range(
    root: etree._Element, body: etree._Element, ns: str, paths: tuple[str, ...], received: datetime
) -> tuple[int | None, int | None]:
    """The time range of a get: the payload's interval, else the envelope's Request Start/EndTime.
    A start without an end runs to the time of arrival."""
    start = end = None
    for path in paths:
        start, end = _interval(body.find(path.replace("m:", f"{{{ns}}}")), ns, path.replace("m:", ""))
        if start is not None or end is not None:
            break
    if start is None and end is None:
        request = root.find(f"{{{M}}}Request")
        if request is not None:
            start, end = _interval_of(request)
    if start is not None and end is None:
        end = epoch(received) + 1
    if start is None and end is not None:
        raise RequestRefused(codes.BAD_CONTENT, "a time range needs a start")
    return start, end


def _interval_of(request: etree._Element) -> tuple[int | None, int | None]:
    start, end = _child_text(request, M, "StartTime"), _child_text(request, M, "EndTime")
    first = epoch(_time(start, "Request/StartTime")) if start else None
    last = epoch(_time(end, "Request/EndTime")) if end else None
    if first is not None and last is not None and last <= first:
        raise RequestRefused(codes.BAD_CONTENT, "Request: EndTime is not after StartTime")
    return first, last


def _get_body(root: etree._Element, noun: str) -> tuple[etree._Element, str]:
    ns = cim.noun_namespace(f"Get{noun}")
    body = root.find(f"{{{M}}}Request/{{{ns}}}Get{noun}")
    if body is None:
        raise RequestRefused(codes.BAD_CONTENT, f"no Request/Get{noun} (namespace {ns})")
    return body, ns


def _readings(root: etree._Element, received: datetime) -> Request:
    body, ns = _get_body(root, "MeterReadings")
    meters = _device_ids(body.findall(f"{{{ns}}}EndDevice"), ns)
    start, end = _range(
        root, body, ns, ("m:Reading/m:timePeriod", "m:TimeSchedule/m:scheduleInterval"), received
    )
    reading_types = []
    for element in body.findall(f"{{{ns}}}ReadingType"):
        code = _child_text(element, ns, "mRID")
        try:
            reading_types.append(ReadingType(code).code)
        except ValueError as exc:
            raise RequestRefused(codes.BAD_CONTENT, str(exc)) from None
    return Request("read", meters, start=start, end=end, reading_types=tuple(reading_types))


def _events(root: etree._Element, received: datetime) -> Request:
    body, ns = _get_body(root, "EndDeviceEvents")
    meters = _device_ids(body.findall(f"{{{ns}}}Meter") + body.findall(f"{{{ns}}}EndDevice"), ns)
    start, end = _range(root, body, ns, ("m:TimeSchedule/m:scheduleInterval",), received)
    return Request("events", meters, start=start, end=end)


_SECURITY_NS = "http://connexo.elster.com/2018/schema/securitykeys"
_XENC_NS = "http://www.w3.org/2001/04/xmlenc#"
KEY_NAMES = ("password", "system_title", "encryption_key", "authentication_key")


def _meter_config(root: etree._Element, verb: str) -> Request:
    ns = cim.noun_namespace("MeterConfig")
    entries = []
    for meter in _payload(root, "MeterConfig").findall(f"{{{ns}}}Meter"):
        (mrid,) = _device_ids([meter], ns)
        settings = {
            _child_text(a, ns, "name"): _child_text(a, ns, "value")
            for a in meter.iterfind(f"{{{ns}}}ConnectionAttributes/{{{ns}}}Attribute")
        }
        keys = {}
        for key in meter.iterfind(f"{{{ns}}}SecurityKeys/{{{_SECURITY_NS}}}securityKey"):
            name = _child_text(key, _SECURITY_NS, "securityAccessorName")
            value = key.find(
                f"{{{_SECURITY_NS}}}securityAccessorKey/{{{_XENC_NS}}}CipherData/{{{_XENC_NS}}}CipherValue"
            )
            if name not in KEY_NAMES or value is None or not (value.text or "").strip():
                raise RequestRefused(
                    codes.BAD_CONTENT,
                    f"meter {mrid}: securityKey {name[:40]!r} needs one of {KEY_NAMES} and a CipherValue",
                )
            keys[name] = "".join((value.text or "").split())
        model = _child_text(meter, ns, "type")
        if verb != "delete" and not model:
            raise RequestRefused(codes.BAD_CONTENT, f"meter {mrid}: Meter/type (the meter model) is required")
        entries.append(MeterEntry(mrid, model, settings, keys))
    return Request("meter_config", tuple(e.mrid for e in entries), action=verb, entries=tuple(entries))


_CUSTOM_ATTRIBUTES_NS = "http://connexo.elster.com/2017/schema/customattributes"


def _usage_point_config(root: etree._Element) -> Request:
    """A tariff assignment: per UsagePoint the meter (Equipments: the schema has no EndDevices there)
    and the tariff (PricingStructures mRID, or its first name); one tariff per request. The tariff file
    itself may come along: CustomAttributeSet id "tariff", Attribute "toml"."""
    ns = cim.noun_namespace("UsagePointConfig")
    meters: list[str] = []
    names: set[str] = set()
    texts: set[str] = set()
    for point in _payload(root, "UsagePointConfig").findall(f"{{{ns}}}UsagePoint"):
        meter = point.find(f"{{{ns}}}Equipments")
        pricing = point.find(f"{{{ns}}}PricingStructures")
        if meter is None or pricing is None:
            raise RequestRefused(
                codes.BAD_CONTENT,
                "a UsagePoint needs Equipments (the meter) and PricingStructures (the tariff)",
            )
        meters += [m for m in _device_ids([meter], ns) if m not in meters]
        names.update(_device_ids([pricing], ns))
        for attributes in point.iterfind(f"{{{ns}}}CustomAttributeSet"):
            if _child_text(attributes, _CUSTOM_ATTRIBUTES_NS, "id") == "tariff":
                texts.update(
                    (a.findtext(f"{{{_CUSTOM_ATTRIBUTES_NS}}}value") or "")
                    for a in attributes.iterfind(f"{{{_CUSTOM_ATTRIBUTES_NS}}}Attribute")
                    if _child_text(a, _CUSTOM_ATTRIBUTES_NS, "name") == "toml"
                )
    if len(names) > 1 or len(texts) > 1:
        raise RequestRefused(codes.BAD_CONTENT, f"one tariff per request, got {sorted(names)[:5]}")
    return Request(
        "tariff",
        tuple(meters),
        action="change",
        tariff=next(iter(names), ""),
        tariff_text=next(iter(texts), ""),
    )
