"""A stand-in for the utility's MDM: subscribes to the HES's outbound CIM topics and keeps what arrives,
and sends requests (RequestMessage with an MQTT 5 response topic) and collects their replies.

It parses every message with the same hardened parser the HES uses for inbound XML, and counts
duplicates the way an MDM would: by MessageID.
"""

from __future__ import annotations

import base64
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from lxml import etree
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.errors import MessageError
from appliance.model import Event, Reading
from appliance.sim.pki import Identity, TestPki
from appliance.uplink import cim, compact


@dataclass(frozen=True)
class Received:
    """One message as the MDM got it."""

    topic: str
    payload: bytes
    content_type: str | None
    xml: bytes  # the payload, or the XML a compact payload stands for
    header: cim.Header
    readings: list[Reading]
    events: list[Event]
    correlation_data: bytes | None = None  # MQTT 5 Correlation Data, as a reply echoes it


class MdmListener:
    """An MQTT 5 subscriber to hes/<id>/cim/out/# (and the status topic).

    Like a production MDM it keeps a persistent session, so the broker queues messages for it
    while it is away (a broker restart included, when the broker persists sessions).
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic_root: str,
        pki: TestPki | None = None,
        identity: Identity | None = None,
        on_message: Callable[[Received], None] | None = None,
        mqtt5: bool = True,
    ) -> None:
        self.topic_root = topic_root
        self.mqtt5 = mqtt5
        self.messages: list[Received] = []
        self.replies: list[Received] = []  # answers to requests, on the response topics
        self.reply_root = f"mdm/{topic_root}/replies"
        self.errors: list[str] = []
        self.status: bytes | None = None
        self._on_message = on_message
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        client_id = "mdm-" + topic_root.replace("/", "-")
        protocol = paho.MQTTv5 if mqtt5 else paho.MQTTv311
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=None if mqtt5 else False,
        )
        if pki is not None:
            identity = identity or pki.issue("mdm")
            client.tls_set(
                ca_certs=str(pki.ca),
                certfile=str(identity.cert),
                keyfile=str(identity.key),
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.on_connect = self._connected
        client.on_subscribe = lambda *_: self.subscribed.set()
        client.on_message = self._message
        client.reconnect_delay_set(1, 2)
        self.client, self.host, self.port = client, host, port

    def start(self) -> MdmListener:
        """Connect and subscribe; waits up to 10 s for the subscription."""
        if self.mqtt5:
            session = Properties(PacketTypes.CONNECT)
            session.SessionExpiryInterval = 3600
            self.client.connect_async(
                self.host, self.port, keepalive=30, clean_start=False, properties=session
            )
        else:
            self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise TimeoutError(f"the MDM listener could not subscribe at {self.host}:{self.port}")
        return self

    def stop(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> MdmListener:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _connected(self, client: paho.Client, *_args: object) -> None:
        client.subscribe(
            [
                (f"{self.topic_root}/cim/out/#", 1),
                (f"{self.topic_root}/status", 1),
                (f"{self.reply_root}/#", 1),
                (f"{self.topic_root}/cim/reply/#", 1),
            ]
        )

    def _message(self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        if message.topic.endswith("/status"):
            self.status = message.payload
            return
        try:
            content_type = getattr(message.properties, "ContentType", None)
            xml = (
                compact.to_xml(message.payload)
                if content_type == compact.CBOR_CONTENT_TYPE
                else message.payload
            )
            root = cim.parse_xml(xml)
            received = Received(
                topic=message.topic,
                payload=message.payload,
                content_type=content_type,
                xml=xml,
                header=cim.read_header(root),
                readings=cim.read_meter_readings(root) if _has_payload(root, "MeterReadings") else [],
                events=cim.read_end_device_events(root) if _has_payload(root, "EndDeviceEvents") else [],
                correlation_data=getattr(message.properties, "CorrelationData", None),
            )
        except MessageError as exc:
            with self._lock:
                self.errors.append(f"{message.topic}: {exc}")
            return
        with self._lock:
            if message.topic.startswith(self.reply_root) or "/cim/reply/" in message.topic:
                self.replies.append(received)
            else:
                self.messages.append(received)
        if self._on_message:
            self._on_message(received)

    def snapshot(self) -> list[Received]:
        """The messages so far, in arrival order."""
        with self._lock:
            return list(self.messages)

    def carriers(self) -> dict[tuple[str, str, str], set[str]]:
        """For each reading (meter, ReadingType, time): the MessageIDs that carried it.

        More than one MessageID for a reading is a duplicate the MDM could not recognise.
        """
        found: dict[tuple[str, str, str], set[str]] = {}
        for message in self.snapshot():
            for reading in message.readings:
                key = (reading.meter_id, reading.reading_type.code, cim.format_time(reading.timestamp))
                found.setdefault(key, set()).add(message.header.message_id)
        return found

    def unique_readings(self) -> dict[tuple[str, str, str], Reading]:
        """Readings from distinct MessageIDs, keyed by (meter, ReadingType, time)."""
        seen, readings = set(), {}
        for message in self.snapshot():
            if message.header.message_id in seen:
                continue
            seen.add(message.header.message_id)
            for reading in message.readings:
                readings[
                    (reading.meter_id, reading.reading_type.code, cim.format_time(reading.timestamp))
                ] = reading
        return readings

    def request(
        self,
        verb: str,
        noun: str,
        message: bytes,
        response_topic: str | None = "",
        expiry_s: int | None = None,
        topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        """Publish a request (QoS 1) on the HES's request topic for `verb`/`noun`; replies go to
        `<reply_root>/<noun>` unless another `response_topic` (None: none) is given."""
        properties = Properties(PacketTypes.PUBLISH)
        if response_topic is not None:
            properties.ResponseTopic = response_topic or f"{self.reply_root}/{noun}"
        if correlation_data is not None:
            properties.CorrelationData = correlation_data
        if expiry_s is not None:
            properties.MessageExpiryInterval = expiry_s
        info = self.client.publish(
            topic or f"{self.topic_root}/cim/in/{verb}/{noun}", message, qos=1, properties=properties
        )
        info.wait_for_publish(timeout=10)

    def replies_to(self, correlation_id: str) -> list[Received]:
        """The replies with this CorrelationID so far, in arrival order."""
        with self._lock:
            return [r for r in self.replies if r.header.correlation_id == correlation_id]

    def wait_replies(self, correlation_id: str, count: int, timeout: float = 30) -> list[Received]:
        """Wait until `count` replies with this CorrelationID are in (or `timeout`); returns them."""
        deadline = time.monotonic() + timeout
        while len(self.replies_to(correlation_id)) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.replies_to(correlation_id)


def _has_payload(root: etree._Element, noun: str) -> bool:
    return root.find(f"{{{cim.MESSAGE_NS}}}Payload/{{{cim.noun_namespace(noun)}}}{noun}") is not None


def reply_result(reply: Received) -> tuple[str, list[tuple[str, str]]]:
    """(Result, [(Error code, reason), ...]) of a ResponseMessage."""
    root = cim.parse_xml(reply.xml)
    m = f"{{{cim.MESSAGE_NS}}}"
    result = root.findtext(f"{m}Reply/{m}Result") or ""
    errors = [(e.findtext(f"{m}code") or "", e.findtext(f"{m}reason") or "") for e in root.iter(f"{m}Error")]
    return result, errors


# -- Requests as an MDM sends them (IEC 61968-100 RequestMessage), for the tests, the demo and the bench.


def request_message(
    verb: str,
    noun: str,
    message_id: str | None = None,
    *,
    request: etree._Element | None = None,
    payload: etree._Element | None = None,
    source: str = "MDM",
    properties: dict[str, str] | None = None,
    reply_address: str = "",
) -> tuple[str, bytes]:
    """(MessageID, the RequestMessage bytes); the CorrelationID is the MessageID."""
    message_id = message_id or str(uuid.uuid4())
    m = cim.MESSAGE_NS
    root = etree.Element(f"{{{m}}}RequestMessage", nsmap={"msg": m})
    header = etree.SubElement(root, f"{{{m}}}Header")
    for tag, text in (("Verb", verb), ("Noun", noun), ("Timestamp", cim.format_time(datetime.now(UTC)))):
        etree.SubElement(header, f"{{{m}}}{tag}").text = text
    etree.SubElement(header, f"{{{m}}}Source").text = source
    if reply_address:
        etree.SubElement(header, f"{{{m}}}ReplyAddress").text = reply_address
    etree.SubElement(header, f"{{{m}}}MessageID").text = message_id
    etree.SubElement(header, f"{{{m}}}CorrelationID").text = message_id
    for name, value in (properties or {}).items():
        prop = etree.SubElement(header, f"{{{m}}}Property")
        etree.SubElement(prop, f"{{{m}}}Name").text = name
        etree.SubElement(prop, f"{{{m}}}Value").text = value
    if request is not None:
        etree.SubElement(root, f"{{{m}}}Request").append(request)
    if payload is not None:
        etree.SubElement(root, f"{{{m}}}Payload").append(payload)
    return message_id, etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _el(parent: etree._Element | None, ns: str, tag: str, text: str | None = None) -> etree._Element:
    element = (
        etree.Element(f"{{{ns}}}{tag}", nsmap={None: ns})
        if parent is None
        else etree.SubElement(parent, f"{{{ns}}}{tag}")
    )
    if text is not None:
        element.text = text
    return element


def control_payload(code: str, meters: list[str]) -> etree._Element:
    """EndDeviceControls: one control (`code`) for `meters`."""
    ns = cim.noun_namespace("EndDeviceControls")
    root = _el(None, ns, "EndDeviceControls")
    control = _el(root, ns, "EndDeviceControl")
    _el(control, ns, "EndDeviceControlType").set("ref", code)
    for meter in meters:
        _el(_el(control, ns, "EndDevices"), ns, "mRID", meter)
    return root


def get_readings(
    meters: list[str], start: datetime | None = None, end: datetime | None = None
) -> etree._Element:
    """GetMeterReadings: a reading now, or the range start-end."""
    ns = cim.noun_namespace("GetMeterReadings")
    root = _el(None, ns, "GetMeterReadings")
    for meter in meters:
        _el(_el(root, ns, "EndDevice"), ns, "mRID", meter)
    if start is not None:
        period = _el(_el(root, ns, "Reading"), ns, "timePeriod")
        if end is not None:
            _el(period, ns, "end", cim.format_time(end))
        _el(period, ns, "start", cim.format_time(start))
    return root


def get_events(meters: list[str], start: datetime | None = None) -> etree._Element:
    """GetEndDeviceEvents for `meters`, from `start` on."""
    ns = cim.noun_namespace("GetEndDeviceEvents")
    root = _el(None, ns, "GetEndDeviceEvents")
    for meter in meters:
        _el(_el(root, ns, "Meter"), ns, "mRID", meter)
    if start is not None:
        _el(_el(_el(root, ns, "TimeSchedule"), ns, "scheduleInterval"), ns, "start", cim.format_time(start))
    return root


SECURITY_KEYS_NS = "http://connexo.elster.com/2018/schema/securitykeys"
XMLENC_NS = "http://www.w3.org/2001/04/xmlenc#"


def wrap_key(key_wrap_key: bytes, secret: bytes) -> str:
    """A meter key as the MDM sends it: AES key wrap with padding (RFC 5649), base64."""
    return base64.b64encode(aes_key_wrap_with_padding(key_wrap_key, secret)).decode()


def meter_config_payload(
    meters: list[tuple[str, str, dict[str, str]]], security_keys: dict[str, dict[str, str]] | None = None
) -> etree._Element:
    """MeterConfig: (mRID, model, ConnectionAttributes) per meter; model "" for a delete.
    `security_keys`: per mRID, accessor name -> wrapped key (`wrap_key`), in Connexo's SecurityKeys."""
    ns = cim.noun_namespace("MeterConfig")
    root = _el(None, ns, "MeterConfig")
    for mrid, model, settings in meters:
        meter = _el(root, ns, "Meter")
        _el(meter, ns, "mRID", mrid)
        if model:
            _el(meter, ns, "type", model)
        if settings:
            attributes = _el(meter, ns, "ConnectionAttributes")
            for name, value in settings.items():
                attribute = _el(attributes, ns, "Attribute")
                _el(attribute, ns, "name", name)
                _el(attribute, ns, "value", value)
        wrapped = (security_keys or {}).get(mrid)
        if wrapped:
            container = _el(meter, ns, "SecurityKeys")
            for name, cipher_value in wrapped.items():
                key = _el(container, SECURITY_KEYS_NS, "securityKey")
                _el(key, SECURITY_KEYS_NS, "securityAccessorName", name)
                cipher_data = _el(_el(key, SECURITY_KEYS_NS, "securityAccessorKey"), XMLENC_NS, "CipherData")
                _el(cipher_data, XMLENC_NS, "CipherValue", cipher_value)
    return root


CUSTOM_ATTRIBUTES_NS = "http://connexo.elster.com/2017/schema/customattributes"


def usage_point_config_payload(meters: list[str], tariff: str, tariff_toml: str = "") -> etree._Element:
    """UsagePointConfig: each meter (Equipments) priced by `tariff` (PricingStructures); with
    `tariff_toml` the tariff file itself comes along (CustomAttributeSet "tariff", Attribute "toml")."""
    ns = cim.noun_namespace("UsagePointConfig")
    root = _el(None, ns, "UsagePointConfig")
    for meter in meters:
        point = _el(root, ns, "UsagePoint")
        _el(_el(point, ns, "Equipments"), ns, "mRID", meter)
        _el(_el(point, ns, "PricingStructures"), ns, "mRID", tariff)
        if tariff_toml:
            attributes = _el(point, ns, "CustomAttributeSet")
            _el(attributes, CUSTOM_ATTRIBUTES_NS, "id", "tariff")
            attribute = _el(attributes, CUSTOM_ATTRIBUTES_NS, "Attribute")
            _el(attribute, CUSTOM_ATTRIBUTES_NS, "name", "toml")
            _el(attribute, CUSTOM_ATTRIBUTES_NS, "value", tariff_toml)
    return root
