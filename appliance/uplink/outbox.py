"""The outbox pump: packs unsent readings into CIM messages and publishes them until acknowledged.

Order of events for a batch: build the message (new MessageID) -> store it and take its readings
off the unsent queue in one transaction -> publish (QoS 1) -> on PUBACK mark it acknowledged.
A crash anywhere in between leaves the message in the store, and the next start publishes the
same bytes again: the MDM sees at most a duplicate under a MessageID it already has.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable

from appliance.clock import Clock
from appliance.config import Config
from appliance.errors import StoreError, TransportError
from appliance.model import Reading, epoch
from appliance.store import Store
from appliance.store.outbox import (
    OutboxMessage,
    Priority,
    enqueue_message,
    mark_acked,
    oldest_unsent,
    pending_messages,
)
from appliance.uplink import cim
from appliance.uplink.mqtt import Ack, LinkChange, MqttLink

log = logging.getLogger(__name__)

REFUSED_RETRY_S = 30.0  # a message the broker refused waits this long before it goes again


def readings_message(config: Config, clock: Clock, readings: list[Reading]) -> tuple[str, bytes]:
    """A new `created MeterReadings` EventMessage: its MessageID and its XML bytes."""
    header = cim.Header(
        verb="created",
        noun="MeterReadings",
        timestamp=clock.now(),
        source=config.hes.id,
        message_id=str(uuid.uuid4()),
    )
    return header.message_id, cim.event_message(header, cim.meter_readings(readings))


class OutboxPump(threading.Thread):
    """The only thread that writes the outbox; paho's callbacks reach it through `events`."""

    def __init__(
        self,
        config: Config,
        store_factory: Callable[[], Store],
        link: MqttLink,
        clock: Clock,
        stop: threading.Event,
    ) -> None:
        super().__init__(name="outbox", daemon=True)
        self.config, self.link, self.clock = config, link, clock
        self._store_factory, self._halt = store_factory, stop
        self.heartbeat = time.monotonic()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox id
        self._refused_until: dict[int, float] = {}  # outbox id -> monotonic time it may go again
        self._acked: list[int] = []  # outbox ids acknowledged, written in one transaction per loop
        self._wake = object()

    @property
    def events(self) -> queue.Queue:
        """Where the MQTT link reports connects and acknowledgements."""
        return self.link.events

    def notify(self) -> None:
        """New readings were stored: look now rather than at the next scan."""
        self.events.put(self._wake)

    def run(self) -> None:
        """Pump until told to stop."""
        store = self._store_factory()
        try:
            while not self._halt.is_set():
                self.heartbeat = time.monotonic()
                try:
                    self._handle(self._next_events())
                    self._flush_acks(store)
                    if self.link.connected.is_set():
                        self._fill_window(store)
                except (StoreError, TransportError) as exc:
                    log.error("outbox: %s", exc)
                    self._halt.wait(1.0)
        finally:
            store.close()

    def _next_events(self) -> list[object]:
        """Everything queued, waiting up to one scan interval for the first item."""
        items = []
        try:
            items.append(self.events.get(timeout=self.config.uplink.scan_interval_s))
            while True:
                items.append(self.events.get_nowait())
        except queue.Empty:
            pass
        return items

    def _handle(self, items: list[object]) -> None:
        for item in items:
            if isinstance(item, Ack):
                outbox_id = self._inflight.pop(item.mid, None)
                if outbox_id is None:
                    continue  # the status message, or a message from before a restart
                if item.ok:
                    self._acked.append(outbox_id)
                else:
                    log.error("broker refused outbox message %d: %s; retrying later", outbox_id, item.reason)
                    self._refused_until[outbox_id] = time.monotonic() + REFUSED_RETRY_S
            elif isinstance(item, LinkChange) and item.connected:
                log.debug("outbox: link up, %d messages in flight", len(self._inflight))

    def _flush_acks(self, store: Store) -> None:
        if self._acked:
            mark_acked(store, self._acked, epoch(self.clock.now()))
            self._acked.clear()

    def _fill_window(self, store: Store) -> None:
        """Publish until `max_inflight` messages await their PUBACK: old messages first, then new."""
        window = self.config.uplink.max_inflight
        while len(self._inflight) < window:
            message = self._next_pending(store, window) or self._pack(store)
            if message is None:
                return
            mid = self.link.publish(message.topic, message.payload, message.content_type)
            self._inflight[mid] = message.id

    def _next_pending(self, store: Store, window: int) -> OutboxMessage | None:
        now = time.monotonic()
        skip = set(self._inflight.values()) | {i for i, t in self._refused_until.items() if t > now}
        found = pending_messages(store, 1, skip)
        if found:
            self._refused_until.pop(found[0].id, None)
        return found[0] if found else None

    def _pack(self, store: Store) -> OutboxMessage | None:
        """Pack the oldest unsent readings into a new message that fits the byte limit."""
        uplink = self.config.uplink
        batch = oldest_unsent(store, uplink.batch_max_readings)
        count = len(batch.readings)
        if not count:
            return None
        while True:
            message_id, payload = readings_message(self.config, self.clock, batch.readings[:count])
            if len(payload) <= uplink.batch_max_bytes or count == 1:
                break
            count = max(1, count * uplink.batch_max_bytes // len(payload) * 9 // 10)
        topic = self.config.topic("cim", "out", "MeterReadings")
        outbox_id = enqueue_message(
            store,
            message_id=message_id,
            priority=Priority.READINGS,
            topic=topic,
            content_type=cim.XML_CONTENT_TYPE,
            payload=payload,
            created_at=epoch(self.clock.now()),
            carried=batch.keys[:count],
        )
        return OutboxMessage(
            outbox_id, message_id, Priority.READINGS, topic, cim.XML_CONTENT_TYPE, payload, count
        )
