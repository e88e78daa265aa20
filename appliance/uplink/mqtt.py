"""The MQTT link to the NOC broker (paho-mqtt): TLS, MQTT 5, retained status with a last will.

paho runs its own network thread and reconnects with backoff; everything it reports (connects,
PUBACKs) is handed to the outbox thread through a queue, so the store is only touched there.
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance import __version__
from appliance.config import Config, missing_credentials
from appliance.errors import TransportError

log = logging.getLogger(__name__)

UNSUPPORTED_PROTOCOL = 0x84  # CONNACK reason code: the broker does not speak this MQTT version


@dataclass(frozen=True)
class Ack:
    """The broker's answer to a QoS 1 publish: ok, or refused with a reason."""

    mid: int
    ok: bool
    reason: str


@dataclass(frozen=True)
class LinkChange:
    """The connection came up or went down; `reset` when the client was replaced and forgot its in-flight."""

    connected: bool
    reason: str
    reset: bool = False


@dataclass(frozen=True)
class InboundMessage:
    """A request from the MDM as it arrived; `ack` it once it is journalled (QoS 1, manual PUBACK)."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    response_topic: str | None
    expiry_s: int | None  # what was left of the MQTT 5 Message Expiry Interval on arrival
    received: float  # time.time() on arrival
    correlation_data: bytes | None = None  # MQTT 5: the replies carry it back


class MqttLink:
    """One MQTT session to the broker, owned by the daemon: MQTT 5, or 3.1.1 when the broker needs it."""

    def __init__(self, config: Config, events: queue.Queue) -> None:
        self.config = config
        self.events = events
        self.connected = threading.Event()
        self.status_topic = config.topic("status")
        self.protocol = paho.MQTTv311 if config.mqtt.protocol == "3.1.1" else paho.MQTTv5
        self._fall_back = threading.Event()
        self._connack = False  # the current attempt got its CONNACK
        self._silent_attempts = 0  # MQTT 5 attempts in a row the broker never answered
        self._on_request: Callable[[InboundMessage], None] | None = None
        self._rebuild = threading.Lock()  # the main loop (fallback) and the WAN monitor (recovery)
        self.reconnects = 0  # connections made after the first one: the WAN health's count
        self._connected_before = False
        # A fresh box may still wait for its certificate: no client until the files are there.
        self.waiting = missing_credentials(config)
        self.client = None if self.waiting else self._make_client()

    def _make_client(self) -> paho.Client:
        mqtt = self.config.mqtt
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=mqtt.client_id or self.config.hes.id,
            protocol=self.protocol,
            # 3.1.1 keeps the session (subscription, unacknowledged requests) the same way MQTT 5
            # does with clean_start=False and a Session Expiry Interval (see `start`).
            clean_session=False if self.protocol == paho.MQTTv311 and mqtt.session_expiry_s else None,
        )
        if mqtt.tls:
            try:
                client.tls_set(
                    ca_certs=str(mqtt.ca_file),
                    certfile=str(mqtt.cert_file),
                    keyfile=str(mqtt.key_file),
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (ssl.SSLError, OSError) as exc:
                raise TransportError(f"cannot load the TLS files for the broker: {exc}") from exc
        if mqtt.username:
            password = mqtt.password_file.read_text().strip() if mqtt.password_file else None
            client.username_pw_set(mqtt.username, password)
        client.will_set(self.status_topic, json.dumps({"state": "offline"}), qos=1, retain=True)
        client.reconnect_delay_set(mqtt.reconnect_min_s, mqtt.reconnect_max_s)
        client.max_inflight_messages_set(self.config.uplink.max_inflight)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.manual_ack_set(True)  # a request is acknowledged only once it is journalled
        return client

    def maintain(self) -> None:
        """From the supervising thread: carry out a fallback to MQTT 3.1.1 the broker asked for.

        paho cannot be restarted from inside its own callbacks, so the callback only raises a flag.
        """
        if self.waiting is not None:
            if missing_credentials(self.config) is None:
                log.info("the broker's TLS files are there: the uplink starts")
                self.waiting = None
                self.client = self._make_client()
                self.start()
            return
        if not self._fall_back.is_set():
            return
        self._fall_back.clear()
        self.protocol = paho.MQTTv311
        self.reconnect("falling back to MQTT 3.1.1")

    def reconnect(self, reason: str) -> None:
        """Replace the client with a new one that connects at once (paho's own backoff may be minutes
        long after an outage); the outbox re-sends from the store what the old one had in flight."""
        if self.client is None:
            return  # waiting for the TLS files: nothing to reconnect
        with self._rebuild:
            self.connected.clear()  # a disconnect we asked for is not a lost broker
            self.client.disconnect()  # closes the old socket, even a half-open one
            self.client.loop_stop()
            self.client = self._make_client()
            self.events.put(LinkChange(False, reason, reset=True))
            self.start()

    def ping(self) -> paho.MQTTMessageInfo | None:
        """A small QoS 1 publish whose PUBACK measures the data path's round trip (None while down)."""
        if not self.connected.is_set():
            return None
        return self.client.publish(self.config.topic("ping"), b"", qos=1)

    def start(self) -> None:
        """Connect in the background; paho keeps reconnecting until `stop`."""
        if self.client is None:
            log.error("uplink waits: %s; readings are collected and kept until it is there", self.waiting)
            return
        mqtt = self.config.mqtt
        if self.protocol == paho.MQTTv5 and mqtt.session_expiry_s:
            session = Properties(PacketTypes.CONNECT)
            session.SessionExpiryInterval = mqtt.session_expiry_s
            self.client.connect_async(
                mqtt.host, mqtt.port, keepalive=mqtt.keepalive_s, clean_start=False, properties=session
            )
        else:
            self.client.connect_async(mqtt.host, mqtt.port, keepalive=mqtt.keepalive_s)
        self.client.loop_start()

    def stop(self) -> None:
        """Say offline (the will only fires on an unclean loss), then disconnect."""
        if self.client is None:
            return
        if self.connected.is_set():
            info = self.client.publish(
                self.status_topic, json.dumps({"state": "offline"}), qos=1, retain=True
            )
            info.wait_for_publish(timeout=2)
        self.connected.clear()  # a disconnect we asked for is not a lost broker
        self.client.disconnect()  # before loop_stop, or loop_stop waits a second
        self.client.loop_stop()

    def publish_status(self, document: dict) -> None:
        """Replace the retained status message (QoS 1; skipped while the link is down)."""
        if self.connected.is_set():
            self.client.publish(self.status_topic, json.dumps(document), qos=1, retain=True)

    def publish(
        self, topic: str, payload: bytes, content_type: str, correlation_data: bytes | None = None
    ) -> int:
        """Queue a QoS 1 publish; returns paho's mid, whose Ack will arrive on the events queue.

        While the link is down paho keeps the message and sends it on reconnect.
        """
        properties = None
        if self.protocol == paho.MQTTv5:  # 3.1.1 has no properties: the deployment's encoding says it
            properties = Properties(PacketTypes.PUBLISH)
            properties.ContentType = content_type
            if correlation_data is not None:
                properties.CorrelationData = correlation_data
        info = self.client.publish(topic, payload, qos=1, properties=properties)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish to {topic} refused by the client: {paho.error_string(info.rc)}")
        return info.mid

    def _on_pre_connect(self, _client: paho.Client, _userdata: object) -> None:
        self._connack = False

    def _on_connect(
        self, client: paho.Client, _userdata: object, _flags: object, reason: object, _props: object
    ) -> None:
        self._connack = True
        if getattr(reason, "is_failure", False):
            refused_v5 = (
                getattr(reason, "value", None) == UNSUPPORTED_PROTOCOL and self.protocol == paho.MQTTv5
            )
            if refused_v5 and self.config.mqtt.protocol == "auto":
                log.warning("broker %s does not speak MQTT 5: falling back to 3.1.1", self.config.mqtt.host)
                self._fall_back.set()
                client.disconnect()
                return
            log.error(
                "broker %s:%s refused the connection: %s",
                self.config.mqtt.host,
                self.config.mqtt.port,
                reason,
            )
            return
        self._silent_attempts = 0
        self.reconnects += self._connected_before
        self._connected_before = True
        log.info("connected to broker %s:%s", self.config.mqtt.host, self.config.mqtt.port)
        status = {"state": "online", "version": __version__}
        if self._on_request is not None:  # before "online": whoever sees it can send requests
            client.subscribe(self.config.topic("cim", "in", "#"), qos=1)
        client.publish(self.status_topic, json.dumps(status), qos=1, retain=True)
        self.connected.set()
        self.events.put(LinkChange(True, str(reason)))

    def serve_requests(self, handler: Callable[[InboundMessage], None]) -> None:
        """Before `start`: subscribe to this box's request topics and hand each request to `handler`
        (on paho's thread: it must only queue it). The handler's owner calls `ack` once it is safe."""
        self._on_request = handler

    def ack(self, message: InboundMessage) -> None:
        """Send the PUBACK for a request: the broker may forget it now."""
        if message.qos:
            self.client.ack(message.mid, message.qos)

    def _on_message(self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        properties = getattr(message, "properties", None)
        expiry = getattr(properties, "MessageExpiryInterval", None)
        inbound = InboundMessage(
            topic=message.topic,
            payload=message.payload,
            qos=message.qos,
            mid=message.mid,
            response_topic=getattr(properties, "ResponseTopic", None),
            expiry_s=expiry if isinstance(expiry, int) else None,
            received=time.time(),
            correlation_data=_bytes_or_none(getattr(properties, "CorrelationData", None)),
        )
        if self._on_request is None:
            self.ack(inbound)  # nothing here asked for it
        else:
            self._on_request(inbound)

    def _on_disconnect(
        self, _client: paho.Client, _userdata: object, _flags: object, reason: object, _props: object
    ) -> None:
        if self.connected.is_set():
            log.warning("lost the broker: %s", reason)
        elif not self._connack and self.protocol == paho.MQTTv5 and self.config.mqtt.protocol == "auto":
            # The broker took the connection but never answered the MQTT 5 CONNECT: some 3.1.1-only
            # brokers choke on its properties instead of refusing it. Twice in a row is no accident.
            self._silent_attempts += 1
            if self._silent_attempts >= 2:
                log.warning("broker %s never answers MQTT 5: falling back to 3.1.1", self.config.mqtt.host)
                self._fall_back.set()
        self.connected.clear()
        self.events.put(LinkChange(False, str(reason)))

    def _on_publish(
        self, _client: paho.Client, _userdata: object, mid: int, reason: object, _props: object
    ) -> None:
        failed = getattr(reason, "is_failure", False)
        self.events.put(Ack(mid, not failed, str(reason)))


def _bytes_or_none(value: object) -> bytes | None:
    """paho gives Correlation Data as bytes; anything else is no Correlation Data."""
    return bytes(value) if isinstance(value, bytes | bytearray) else None
