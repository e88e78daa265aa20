"""The store: durable pragmas, migrations, deduplication, and the outbox's atomic hand-over."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config import MeterSpec
from appliance.errors import StoreError
from appliance.model import Event, Protocol, Reading, ReadingType
from appliance.store import Store
from appliance.store.events import events_of, last_event_time, oldest_unsent_events
from appliance.store.outbox import (
    Priority,
    backlog,
    insert_message,
    mark_acked,
    oldest_unsent,
    pending_messages,
)
from appliance.store.readings import count_readings, readings_between, save_readings
from appliance.store.registry import (
    UNASSIGNED,
    active_meters,
    list_meters,
    register_config_meters,
    register_meter,
    registered_meter,
    remove_meter,
)
from appliance.store.schema import MIGRATIONS
from tests.conftest import meter_spec

A_PLUS = ReadingType("0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0")
A_MINUS = ReadingType("0.0.0.1.19.1.12.0.0.0.0.0.0.0.0.3.72.0")
T0 = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)


def enqueue(store: Store, **message: object) -> int:
    """A message into the outbox in its own transaction, as the pump does it."""
    with store.transaction() as conn:
        return insert_message(conn, **message)  # type: ignore[arg-type]


def meters(*ids: str) -> list[MeterSpec]:
    return [meter_spec(i, address=n + 1) for n, i in enumerate(ids)]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "hes.db")
    register_config_meters(store, meters("M1", "M2"), 0)
    return store


def reading(meter: str = "M1", minutes: int = 0, value: str = "1.5", rtype: ReadingType = A_PLUS) -> Reading:
    return Reading(meter, rtype, T0 + timedelta(minutes=minutes), Decimal(value))


def test_durability_pragmas_and_schema_version(store: Store) -> None:
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.schema_version == len(MIGRATIONS)


def test_reopening_migrates_nothing_twice(tmp_path: Path, store: Store) -> None:
    save_readings(store, [reading()], 0)
    store.close()
    again = Store(tmp_path / "hes.db")
    assert again.schema_version == len(MIGRATIONS) and count_readings(again) == 1


def test_a_newer_schema_is_refused(tmp_path: Path, store: Store) -> None:
    store.conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    store.close()
    with pytest.raises(StoreError, match="newer than this software"):
        Store(tmp_path / "hes.db")


def test_reading_the_same_interval_again_stores_nothing_twice(store: Store) -> None:
    poll = [reading("M1", 0, "1.5"), reading("M1", 0, "0.2", A_MINUS), reading("M2", 0, "7")]
    assert save_readings(store, poll, 100) == 3
    assert save_readings(store, poll, 200) == 0
    assert save_readings(store, [*poll, reading("M1", 15, "1.75")], 300) == 1
    assert count_readings(store) == 4
    assert backlog(store)["unsent_readings"] == 4
    assert [r.value for r in readings_between(store, "M1", 0, 2**40)] == [
        Decimal("1.5"),
        Decimal("0.2"),
        Decimal("1.75"),
    ]


def test_a_poll_is_one_transaction(store: Store) -> None:
    with pytest.raises(StoreError, match="not registered"):
        save_readings(store, [reading("M1", 0), reading("UNKNOWN", 0)], 0)
    assert count_readings(store) == 0 and backlog(store)["unsent_readings"] == 0


keys = st.tuples(st.sampled_from(["M1", "M2"]), st.integers(0, 20), st.sampled_from([A_PLUS, A_MINUS]))


@settings(max_examples=50, deadline=None)
@given(polls=st.lists(st.lists(keys, max_size=8), max_size=6))
def test_stored_and_queued_readings_are_exactly_the_distinct_keys(
    tmp_path_factory: pytest.TempPathFactory, polls: list
) -> None:
    store = Store(tmp_path_factory.mktemp("prop") / "hes.db")
    register_config_meters(store, meters("M1", "M2"), 0)
    for poll in polls:
        save_readings(store, [reading(m, 15 * i, str(i), rt) for m, i, rt in poll], 0)
    distinct = {(m, i, rt.code) for poll in polls for m, i, rt in poll}
    assert count_readings(store) == len(distinct)
    assert backlog(store)["unsent_readings"] == len(distinct)
    store.close()


def test_registry_follows_the_config_and_keeps_its_keys(store: Store) -> None:
    key = store.meter_key("M1")
    register_config_meters(store, [meter_spec("M1", 9, "generic-wh32", 60, bus="B")], 5)
    rows = {row["mrid"]: row for row in list_meters(store)}
    assert rows["M1"] == {
        "mrid": "M1",
        "bus": "B",
        "protocol": "modbus",
        "address": 9,
        "model": "generic-wh32",
        "source": "config",
        "state": "active",
        "identity": {},
    }
    # M2 left the config: no longer polled, but kept with its key for its readings.
    assert rows["M2"]["state"] == "removed" and store.meter_key("M1") == key
    assert [m.id for m in active_meters(store)] == ["M1"]


def test_meters_from_the_mdm_and_discovery_survive_and_keep_their_settings(store: Store) -> None:
    spec = meter_spec("MDM-7", 33, "dlms-generic", 0, bus="B", protocol=Protocol.DLMS)
    register_meter(store, spec, "mdm", 10)
    register_meter(store, meter_spec("D-1", 40), "discovery", 11, UNASSIGNED, {"serial": "123"})
    register_config_meters(store, meters("M1", "M2"), 12)  # a restart with the same config
    assert registered_meter(store, "MDM-7") == (spec, "mdm", "active")
    assert {m.id for m in active_meters(store)} == {"M1", "M2", "MDM-7"}
    assert {r["mrid"]: r["identity"] for r in list_meters(store)}["D-1"] == {"serial": "123"}
    assert remove_meter(store, "MDM-7", 13) and not remove_meter(store, "MDM-7", 14)
    assert registered_meter(store, "MDM-7")[2] == "removed"


def test_outbox_takes_readings_off_the_queue_atomically_and_forgets_payloads_on_ack(store: Store) -> None:
    save_readings(store, [reading("M2", 30), reading("M1", 15), reading("M1", 0)], 0)
    batch = oldest_unsent(store, 2)
    assert [(r.meter_id, r.timestamp) for r in batch.readings] == [
        ("M1", T0),
        ("M1", T0 + timedelta(minutes=15)),
    ]
    outbox_id = enqueue(
        store,
        message_id="m-1",
        priority=Priority.READINGS,
        topic="t",
        content_type="application/xml",
        payload=b"<x/>",
        created_at=1,
        carried=batch.keys,
    )
    assert [r.meter_id for r in oldest_unsent(store, 10).readings] == ["M2"]
    pending = pending_messages(store, 10)
    assert [(m.id, m.message_id, m.payload, m.readings) for m in pending] == [(outbox_id, "m-1", b"<x/>", 2)]
    assert pending_messages(store, 10, skip={outbox_id}) == []
    mark_acked(store, [outbox_id], 2)
    assert pending_messages(store, 10) == []
    assert store.conn.execute("SELECT payload FROM outbox").fetchone()[0] is None
    assert backlog(store) | {"oldest_unsent_ts": None} == {
        "unsent_readings": 1,
        "unsent_events": 0,
        "oldest_unsent_ts": None,
        "pending_messages": 0,
        "pending_readings": 0,
        "acked_messages": 1,
        "acked_readings": 2,
    }


def test_replies_and_alarms_go_before_readings(store: Store) -> None:
    for message_id, priority in (
        ("bulk", Priority.READINGS),
        ("alarm", Priority.ALARM),
        ("reply", Priority.REPLY),
    ):
        enqueue(
            store,
            message_id=message_id,
            priority=priority,
            topic="t",
            content_type="x",
            payload=b"",
            created_at=0,
        )
    assert [m.message_id for m in pending_messages(store, 3)] == ["reply", "alarm", "bulk"]


def test_a_readonly_store_cannot_write(tmp_path: Path, store: Store) -> None:
    reader = Store(tmp_path / "hes.db", readonly=True)
    with pytest.raises(StoreError):
        save_readings(reader, [reading()], 0)


def test_events_are_stored_once_queued_and_handed_to_a_message(store: Store) -> None:
    outage = Event("M1", "3.26.0.85", T0, reason="meter event 1", details=(("dlmsEventCode", "1"),))
    restore = Event("M1", "3.26.0.216", T0 + timedelta(minutes=7))
    assert save_readings(store, [reading()], 0, [outage, restore]) == 3
    assert save_readings(store, [], 0, [outage]) == 0  # the event log read again
    assert events_of(store, "M1") == [outage, restore]
    assert last_event_time(store, "M1") == restore.created and last_event_time(store, "M2") is None
    events, keys = oldest_unsent_events(store, 10)
    assert events == [outage, restore] and backlog(store)["unsent_events"] == 2
    enqueue(
        store,
        message_id="e-1",
        priority=Priority.ALARM,
        topic="t",
        content_type="x",
        payload=b"",
        created_at=0,
        carried_events=keys,
    )
    assert oldest_unsent_events(store, 10) == ([], []) and backlog(store)["unsent_readings"] == 1


def test_threads_opening_a_new_store_at_once_all_open_it(tmp_path: Path) -> None:
    """The switch to WAL takes a lock SQLite's busy handler does not wait for (it once failed a
    daemon thread at start, 1 round in 20 of this test)."""
    errors: list[Exception] = []
    for round_ in range(20):
        path = tmp_path / f"new-{round_}.db"

        def open_and_close(path: Path = path) -> None:
            try:
                Store(path).close()
            except StoreError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_and_close) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
