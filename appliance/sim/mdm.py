"""A stand-in for the utility's MDM: subscribes to the HES's outbound CIM topics and keeps what arrives.

It parses every message with the same hardened parser the HES uses for inbound XML, and counts
duplicates the way an MDM would: by MessageID.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho
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
        client.subscribe([(f"{self.topic_root}/cim/out/#", 1), (f"{self.topic_root}/status", 1)])

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
                readings=cim.read_meter_readings(root) if message.topic.endswith("/MeterReadings") else [],
                events=cim.read_end_device_events(root) if message.topic.endswith("/EndDeviceEvents") else [],
            )
        except MessageError as exc:
            with self._lock:
                self.errors.append(f"{message.topic}: {exc}")
            return
        with self._lock:
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
