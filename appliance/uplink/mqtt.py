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
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance import __version__
from appliance.config import Config
from appliance.errors import TransportError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ack:
    """The broker's answer to a QoS 1 publish: ok, or refused with a reason."""

    mid: int
    ok: bool
    reason: str


@dataclass(frozen=True)
class LinkChange:
    """The connection came up or went down."""

    connected: bool
    reason: str


class MqttLink:
    """One MQTT 5 session to the broker, owned by the daemon."""

    def __init__(self, config: Config, events: queue.Queue) -> None:
        self.config = config
        self.events = events
        self.connected = threading.Event()
        self.status_topic = config.topic("status")
        mqtt = config.mqtt
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=mqtt.client_id or config.hes.id,
            protocol=paho.MQTTv5,
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
        client.max_inflight_messages_set(config.uplink.max_inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client

    def start(self) -> None:
        """Connect in the background; paho keeps reconnecting until `stop`."""
        mqtt = self.config.mqtt
        self.client.connect_async(mqtt.host, mqtt.port, keepalive=mqtt.keepalive_s)
        self.client.loop_start()

    def stop(self) -> None:
        """Say offline (the will only fires on an unclean loss), then disconnect."""
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

    def publish(self, topic: str, payload: bytes, content_type: str) -> int:
        """Queue a QoS 1 publish; returns paho's mid, whose Ack will arrive on the events queue.

        While the link is down paho keeps the message and sends it on reconnect.
        """
        properties = Properties(PacketTypes.PUBLISH)
        properties.ContentType = content_type
        info = self.client.publish(topic, payload, qos=1, properties=properties)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish to {topic} refused by the client: {paho.error_string(info.rc)}")
        return info.mid

    def _on_connect(
        self, client: paho.Client, _userdata: object, _flags: object, reason: object, _props: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            log.error(
                "broker %s:%s refused the connection: %s",
                self.config.mqtt.host,
                self.config.mqtt.port,
                reason,
            )
            return
        log.info("connected to broker %s:%s", self.config.mqtt.host, self.config.mqtt.port)
        status = {"state": "online", "version": __version__}
        client.publish(self.status_topic, json.dumps(status), qos=1, retain=True)
        self.connected.set()
        self.events.put(LinkChange(True, str(reason)))

    def _on_disconnect(
        self, _client: paho.Client, _userdata: object, _flags: object, reason: object, _props: object
    ) -> None:
        if self.connected.is_set():
            log.warning("lost the broker: %s", reason)
        self.connected.clear()
        self.events.put(LinkChange(False, str(reason)))

    def _on_publish(
        self, _client: paho.Client, _userdata: object, mid: int, reason: object, _props: object
    ) -> None:
        failed = getattr(reason, "is_failure", False)
        self.events.put(Ack(mid, not failed, str(reason)))
