"""Keeping the store within its promises: readings queryable for `retention_days` after they were
sent, the database within `max_size_mb`, and the newest data always collected.

Under pressure the oldest *sent* readings go first. Unsent readings are dropped only when nothing
sent is left, and then in the same transaction as the alarm that tells the MDM how many.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from appliance import alarms
from appliance.aggregate import aggregate_due
from appliance.clock import Clock
from appliance.config import Config
from appliance.errors import StoreError, StoreFull
from appliance.model import Event, Reading, epoch
from appliance.store import Store
from appliance.store.readings import save_readings
from appliance.store.retention import drop_oldest_unsent, prune_audit, prune_sent, used_bytes
from appliance.uplink.messages import enqueue_alarm

log = logging.getLogger(__name__)

HIGH_WATER, LOW_WATER = 0.90, 0.80  # of max_size_mb: start pruning above, stop below
CHUNK = 2000  # rows per transaction, so collection never waits long for the write lock


class Housekeeping:
    """Retention and size control; safe to use from any thread with that thread's Store."""

    def __init__(self, config: Config, clock: Clock) -> None:
        self.config, self.clock = config, clock
        self.cap_bytes = config.store.max_size_mb * 1024 * 1024
        self.dropped_unsent = 0

    def save(self, store: Store, readings: Sequence[Reading], events: Sequence[Event] = ()) -> int:
        """Store a poll's readings and events; when the store is full, make room and try once more.

        The newest data always finds a place. Returns how many readings and events were new.
        """
        try:
            return save_readings(store, readings, epoch(self.clock.now()), events)
        except StoreFull:
            self.make_room(store)
            return save_readings(store, readings, epoch(self.clock.now()), events)

    def sweep(self, store: Store) -> None:
        """The periodic pass: totals per bus and group that became due, age-based retention, then size."""
        try:
            aggregate_due(store, self.config, self.clock.now())
        except StoreError as exc:  # totals are made again next time: nothing is lost by waiting
            log.error("totals not made: %s", exc)
        now = epoch(self.clock.now())
        prune_audit(store, now - self.config.console.audit_retention_days * 86400)
        before = now - self.config.store.retention_days * 86400
        while prune_sent(store, CHUNK, before_ts=before) == CHUNK:
            pass
        if used_bytes(store) > HIGH_WATER * self.cap_bytes:
            while used_bytes(store) > LOW_WATER * self.cap_bytes:
                if not self.make_room(store):
                    break

    def make_room(self, store: Store) -> int:
        """Free space for new readings now (the store is full or nearly); returns rows removed."""
        removed = prune_sent(store, CHUNK)
        if removed:
            log.warning(
                "store near its %d MiB cap: pruned %d old sent readings",
                self.config.store.max_size_mb,
                removed,
            )
            return removed
        return self._drop_unsent(store)

    def _drop_unsent(self, store: Store) -> int:
        with store.transaction() as conn:
            count, oldest, newest = drop_oldest_unsent(conn, CHUNK)
            if not count:
                return 0
            event = alarms.readings_dropped(self.config.hes.id, count, oldest, newest, self.clock.now())
            enqueue_alarm(conn, self.config, self.clock, event)
        self.dropped_unsent += count
        log.error("store full with nothing sent left: dropped %d unsent readings (alarm queued)", count)
        return count
