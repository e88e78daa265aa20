"""The outbox pump: packs unsent readings into CIM messages and publishes them until acknowledged.

Order of events for a batch: build the message (new MessageID) -> store it and take its readings
off the unsent queue in one transaction -> publish (QoS 1) -> on PUBACK mark it acknowledged.
A crash anywhere in between leaves the message in the store, and the next start publishes the
same bytes again: the MDM sees at most a duplicate under a MessageID it already has.

Messages go out by priority (answers, then alarms, then readings), each class oldest first, so a
fresh alarm overtakes a backlog of days of readings after one message's round trip at most.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable

from appliance.clock import Clock
from appliance.config import Config
from appliance.errors import StoreError, StoreFull, TransportError
from appliance.housekeeping import Housekeeping
from appliance.model import epoch
from appliance.store import Store
from appliance.store.events import oldest_unsent_events
from appliance.store.outbox import (
    OutboxMessage,
    Priority,
    mark_acked,
    oldest_unsent,
    pending_messages,
)
from appliance.uplink.messages import build, enqueue
from appliance.uplink.mqtt import Ack, LinkChange, MqttLink

log = logging.getLogger(__name__)

REFUSED_RETRY_S = 30.0  # a message the broker refused waits this long before it goes again
RATE_WINDOW_S = 60.0  # the drain rate is averaged over this long


class OutboxPump(threading.Thread):
    """The only thread that publishes; paho's callbacks reach it through the link's events queue."""

    def __init__(
        self,
        config: Config,
        store_factory: Callable[[], Store],
        link: MqttLink,
        clock: Clock,
        housekeeping: Housekeeping,
        stop: threading.Event,
    ) -> None:
        super().__init__(name="outbox", daemon=True)
        self.config, self.link, self.clock, self.housekeeping = config, link, clock, housekeeping
        self._store_factory, self._halt = store_factory, stop
        self.heartbeat = time.monotonic()
        self.published = self.acknowledged = 0
        self._inflight: dict[int, OutboxMessage] = {}  # paho mid -> message awaiting its PUBACK
        self._refused_until: dict[int, float] = {}  # outbox id -> monotonic time it may go again
        self._acked: list[OutboxMessage] = []  # written in one transaction per loop
        self._drained: collections.deque[tuple[float, int]] = collections.deque()  # (time, readings)
        self._next_housekeeping = 0.0
        self._wake = object()

    @property
    def events(self) -> queue.Queue:
        """Where the MQTT link reports connects and acknowledgements."""
        return self.link.events

    def notify(self) -> None:
        """New readings were stored: look now rather than at the next scan."""
        self.events.put(self._wake)

    def drain_rate(self) -> float:
        """Readings acknowledged per second over the last minute."""
        horizon = time.monotonic() - RATE_WINDOW_S
        while self._drained and self._drained[0][0] < horizon:
            self._drained.popleft()
        return sum(count for _, count in self._drained) / RATE_WINDOW_S

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
                    self._housekeeping(store)
                except StoreFull as exc:
                    log.warning("outbox: %s; making room", exc)
                    self.housekeeping.make_room(store)
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
                message = self._inflight.pop(item.mid, None)
                if message is None:
                    continue  # the status message
                if item.ok:
                    self._acked.append(message)
                else:
                    log.error(
                        "broker refused message %s: %s; retrying later", message.message_id, item.reason
                    )
                    self._refused_until[message.id] = time.monotonic() + REFUSED_RETRY_S
            elif isinstance(item, LinkChange) and item.reset:
                self._inflight.clear()  # a new client knows nothing of them: they go again from the store
            elif isinstance(item, LinkChange) and item.connected:
                log.debug("outbox: link up, %d messages in flight", len(self._inflight))

    def _flush_acks(self, store: Store) -> None:
        if self._acked:
            mark_acked(store, [m.id for m in self._acked], epoch(self.clock.now()))
            now = time.monotonic()
            for message in self._acked:
                self._drained.append((now, message.readings))
            self.acknowledged += len(self._acked)
            self._acked.clear()

    def _fill_window(self, store: Store) -> None:
        """Publish until `max_inflight` messages await their PUBACK: stored messages first, then new."""
        while len(self._inflight) < self.config.uplink.max_inflight:
            message = self._next_pending(store) or self._pack_events(store) or self._pack(store)
            if message is None:
                return
            mid = self.link.publish(
                message.topic, message.payload, message.content_type, message.correlation_data
            )
            self._inflight[mid] = message
            self.published += 1

    def _next_pending(self, store: Store) -> OutboxMessage | None:
        now = time.monotonic()
        skip = {m.id for m in self._inflight.values()} | {
            i for i, t in self._refused_until.items() if t > now
        }
        found = pending_messages(store, 1, skip)
        if found:
            self._refused_until.pop(found[0].id, None)
        return found[0] if found else None

    def _pack_events(self, store: Store) -> OutboxMessage | None:
        """Pack the oldest unsent meter events into an EndDeviceEvents message: alarms go first."""
        events, keys = oldest_unsent_events(store, self.config.uplink.batch_max_readings)
        if not events:
            return None
        message = build(self.config, self.clock, "EndDeviceEvents", events)
        with store.transaction() as conn:
            return enqueue(conn, message, Priority.ALARM, epoch(self.clock.now()), carried_events=keys)

    def _pack(self, store: Store) -> OutboxMessage | None:
        """Pack the oldest unsent readings into a new message that fits the byte limit."""
        uplink = self.config.uplink
        batch = oldest_unsent(store, uplink.batch_max_readings)
        count = len(batch.readings)
        if not count:
            return None
        while True:
            message = build(self.config, self.clock, "MeterReadings", batch.readings[:count])
            if len(message.payload) <= uplink.batch_max_bytes or count == 1:
                break
            count = max(1, count * uplink.batch_max_bytes // len(message.payload) * 9 // 10)
        with store.transaction() as conn:
            return enqueue(
                conn, message, Priority.READINGS, epoch(self.clock.now()), carried=batch.keys[:count]
            )

    def _housekeeping(self, store: Store) -> None:
        if time.monotonic() >= self._next_housekeeping:
            self.housekeeping.sweep(store)
            self._next_housekeeping = time.monotonic() + self.config.uplink.housekeeping_interval_s
