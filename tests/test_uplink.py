"""The uplink's promises without a broker: compact encoding, events, retention and a full store."""

from __future__ import annotations

import gzip
import subprocess
import sys
import zlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance import alarms
from appliance.clock import Clock
from appliance.config import load_config
from appliance.errors import MessageError
from appliance.housekeeping import CHUNK, Housekeeping
from appliance.model import Event, Reading, ReadingType
from appliance.sim.profiles import household_day
from appliance.store import Store
from appliance.store.outbox import (
    Priority,
    backlog,
    insert_message,
    mark_acked,
    oldest_unsent,
    pending_messages,
)
from appliance.store.readings import count_readings
from appliance.store.registry import register_config_meters
from appliance.uplink import cim, compact
from appliance.uplink.messages import build_pages
from tests.conftest import REPO, CimSchemas, meter_spec, write_config

PROFILE = ReadingType("0.0.2.4.1.1.12.0.0.0.0.0.0.0.0.3.72.0")
REGISTER = ReadingType("0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0")
T0 = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)  # a DST change day in Europe: UTC does not care
HEADER = cim.Header("created", "MeterReadings", T0, "hes-1", "9d3c", correlation_id=None)


readings_strategy = st.lists(
    st.builds(
        Reading,
        meter_id=st.sampled_from(["MTR-1", "MTR-2", "X"]),
        reading_type=st.sampled_from([PROFILE, REGISTER]),
        timestamp=st.integers(0, 10**6).map(lambda s: T0 + timedelta(seconds=s)),
        value=st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=0, max_value=10**9),
        qualities=st.lists(st.sampled_from(["2.4.2", "1.5.258"]), max_size=2, unique=True).map(tuple),
    ),
    min_size=1,
    max_size=40,
    unique_by=lambda r: (r.meter_id, r.reading_type, r.timestamp),
)


@settings(max_examples=80, deadline=None)
@given(readings_strategy)
def test_compact_turns_back_into_exactly_the_xml(batch: list[Reading]) -> None:
    xml = cim.event_message(HEADER, cim.meter_readings(batch))
    assert compact.to_xml(compact.encode_meter_readings(HEADER, batch)) == xml


def enqueue(store: Store, **message: object) -> int:
    """A message into the outbox in its own transaction, as the pump does it."""
    with store.transaction() as conn:
        return insert_message(conn, **message)  # type: ignore[arg-type]


def test_compact_keeps_trailing_zeros_and_large_exponents() -> None:
    values = [Decimal("72195.540"), Decimal("72195.54"), Decimal("1.23E+10"), Decimal("0"), Decimal("-4.5")]
    batch = [Reading("M", REGISTER, T0 + timedelta(minutes=i), v) for i, v in enumerate(values)]
    _, decoded = compact.decode(compact.encode_meter_readings(HEADER, batch))
    assert [str(r.value) for r in decoded] == [str(v) for v in values]


def test_compact_is_a_fiftieth_of_the_xml_and_well_under_gzip_for_a_day_of_profile() -> None:
    batch = household_day("MTR-0001", T0, seed=1)
    xml = cim.event_message(HEADER, cim.meter_readings(batch))
    small = compact.encode_meter_readings(HEADER, batch)
    assert len(small) * 50 <= len(xml), (len(small), len(xml))
    assert len(small) * 3 <= len(gzip.compress(xml, 9))
    assert compact.to_xml(small) == xml


def test_a_compressed_bomb_is_refused() -> None:
    bomb = cbor2.dumps({0: 1, 9: zlib.compress(b"\x00" * (compact.MAX_INFLATED_BYTES + 1))})
    with pytest.raises(MessageError, match="inflates past"):
        compact.decode(bomb)


def test_events_validate_and_round_trip_in_both_encodings(cim_schemas: CimSchemas) -> None:
    events = [
        alarms.readings_dropped("hes-1", 2000, 1_700_000_000, 1_700_086_400, T0),
        Event("MTR-1", "3.26.0.85", T0 + timedelta(seconds=7), reason="power outage"),
    ]
    header = cim.Header("created", "EndDeviceEvents", T0, "hes-1", "e-1")
    xml = cim.event_message(header, cim.end_device_events(events))
    cim_schemas.validate(xml)
    assert cim.read_end_device_events(cim.parse_xml(xml)) == events
    assert compact.to_xml(compact.encode_end_device_events(header, events)) == xml


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff\xff", b"\xa1\x00\x02", b"\xa2\x00\x01\x01\x80", b"not cbor at all", bytes(range(256))],
)
def test_garbage_is_not_a_compact_message(data: bytes) -> None:
    with pytest.raises(MessageError):
        compact.to_xml(data)


def test_hes_decode_prints_the_xml(tmp_path: Path) -> None:
    batch = household_day("MTR-0001", T0, seed=2, intervals=5)
    path = tmp_path / "message.cbor"
    path.write_bytes(compact.encode_meter_readings(HEADER, batch))
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "decode", str(path)], check=False, capture_output=True, cwd=REPO
    )
    assert result.returncode == 0
    assert result.stdout == cim.event_message(HEADER, cim.meter_readings(batch)) + b"\n"
    bad = subprocess.run(
        [sys.executable, "-m", "appliance", "decode"],
        input=b"junk",
        check=False,
        capture_output=True,
        cwd=REPO,
    )
    assert bad.returncode == 1 and b"malformed compact message" in bad.stderr


# --- retention and a full store -------------------------------------------------------------------


def housekeeping_for(tmp_path: Path, extra: str = "") -> Housekeeping:
    config = load_config(
        write_config(tmp_path / "hes.toml", f'[hes]\nid = "hes-1"\n[mqtt]\ntls = false\n{extra}')
    )
    return Housekeeping(config, Clock())


def capped_store(tmp_path: Path, max_size_mb: int = 1) -> Store:
    store = Store(tmp_path / "hes.db", max_size_mb=max_size_mb)
    register_config_meters(store, [meter_spec("M1")], 0)
    return store


def poll(start: int, count: int = 500) -> list[Reading]:
    return [
        Reading("M1", REGISTER, T0 + timedelta(minutes=start + i), Decimal(start + i)) for i in range(count)
    ]


def send_all(store: Store) -> None:
    """Pack every unsent reading into acknowledged messages, as the pump would."""
    while (batch := oldest_unsent(store, 5000)).keys:
        outbox_id = enqueue(
            store,
            message_id=f"m{batch.keys[0]}",
            priority=Priority.READINGS,
            topic="t",
            content_type="x",
            payload=b"",
            created_at=0,
            carried=batch.keys,
        )
        mark_acked(store, [outbox_id], 0)


def test_retention_prunes_only_sent_readings_older_than_the_limit(tmp_path: Path) -> None:
    store = capped_store(tmp_path, 64)
    housekeeping = housekeeping_for(tmp_path, "[store]\nretention_days = 1\n")
    housekeeping.save(store, poll(0, 100))
    send_all(store)
    housekeeping.save(store, poll(100, 50))  # unsent, and just as old
    recent = [Reading("M1", REGISTER, housekeeping.clock.now(), Decimal(1))]
    housekeeping.save(store, recent)
    send_all(store)
    housekeeping.save(store, poll(200, 10))  # old but unsent: must stay
    now = int(housekeeping.clock.now().timestamp())
    with store.transaction() as conn:  # the console's audit trail has its own, longer retention
        for age_days in (10, 399, 401):
            conn.execute(
                "INSERT INTO console_audit (ts, user, role, command, outcome)"
                " VALUES (?, 'tech', 'technician', ?, 'ok')",
                (now - age_days * 86400, f"show meters ({age_days} days ago)"),
            )
    housekeeping.sweep(store)
    assert count_readings(store) == 11
    assert backlog(store)["unsent_readings"] == 10
    kept = [row["command"] for row in store.query("SELECT command FROM console_audit ORDER BY ts")]
    assert kept == ["show meters (399 days ago)", "show meters (10 days ago)"]


def test_a_full_store_drops_sent_data_first_then_unsent_with_an_alarm(tmp_path: Path) -> None:
    store = capped_store(tmp_path)
    housekeeping = housekeeping_for(tmp_path)
    inserted = 0
    while housekeeping.dropped_unsent == 0 and inserted < 200_000:
        assert housekeeping.save(store, poll(inserted)) == 500, "the newest poll was not stored"
        inserted += 500
        if inserted == 5000:
            send_all(store)  # the first 5000 reached the MDM
    assert housekeeping.dropped_unsent > 0, "the 1 MiB cap was never reached"

    minute = lambda n: int((T0 + timedelta(minutes=n)).timestamp())  # noqa: E731
    remaining = store.conn.execute("SELECT count(*), min(ts), max(ts) FROM readings").fetchone()
    # All sent readings went before any unsent one, and the unsent that went were the oldest.
    assert remaining == (
        inserted - 5000 - housekeeping.dropped_unsent,
        minute(5000 + housekeeping.dropped_unsent),
        minute(inserted - 1),
    )
    assert backlog(store)["unsent_readings"] == remaining[0]
    assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # The alarms went into the outbox in the same transactions, ahead of any readings.
    alarms_queued = pending_messages(store, 100)
    assert {m.priority for m in alarms_queued} == {Priority.ALARM}
    assert {m.topic for m in alarms_queued} == {"hes/hes-1/cim/out/EndDeviceEvents"}
    events = [e for m in alarms_queued for e in cim.read_end_device_events(cim.parse_xml(m.payload))]
    assert {(e.event_type, e.device_id) for e in events} == {(alarms.READINGS_DROPPED, "hes-1")}
    assert sum(int(dict(e.details)["droppedReadings"]) for e in events) == housekeeping.dropped_unsent
    assert housekeeping.dropped_unsent % CHUNK == 0


@pytest.mark.parametrize("encoding", ["xml", "cbor"])
def test_a_large_answer_is_paged_under_one_correlation_id(
    tmp_path: Path, cim_schemas: CimSchemas, encoding: str
) -> None:
    config = load_config(
        write_config(
            tmp_path / "hes.toml",
            f'[hes]\nid = "hes-1"\n[mqtt]\ntls = false\n'
            f'[uplink]\nbatch_max_readings = 100\nencoding = "{encoding}"\n',
        )
    )
    readings = household_day("MTR-0001", T0, seed=3)  # 384 readings: 4 pages of at most 100
    pages = build_pages(config, Clock(), "MeterReadings", readings, correlation_id="req-42")
    assert len(pages) == 4 and len({p.message_id for p in pages}) == 4
    gathered = []
    for index, page in enumerate(pages, start=1):
        xml = compact.to_xml(page.payload) if encoding == "cbor" else page.payload
        cim_schemas.validate(xml)
        root = cim.parse_xml(xml)
        header = cim.read_header(root)
        assert header.correlation_id == "req-42" and header.message_id == page.message_id
        assert dict(header.properties) == {"MessageIndex": str(index), "MessageCount": "4"}
        gathered += cim.read_meter_readings(root)
    assert sorted(gathered, key=repr) == sorted(readings, key=repr)
