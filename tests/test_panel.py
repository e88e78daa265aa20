"""The LED mapping, state by state, and its inputs read from a real status document and store."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from appliance import status
from appliance.clock import Clock, ClockState
from appliance.collect.meters.catalog import REGISTER_A_MINUS_KWH, REGISTER_A_PLUS_KWH, VOLTAGE_L1_V
from appliance.config import load_config
from appliance.hw.leds import Led, Pattern
from appliance.model import Reading, utc_from_epoch
from appliance.panel import BACKLOG_WARNING, PanelInputs, inputs_from_status, patterns, store_failed
from appliance.store import open_store
from appliance.store.outbox import Priority, insert_message, mark_acked, oldest_unsent
from appliance.store.readings import save_readings
from appliance.store.registry import register_config_meters
from appliance.store.retention import used_bytes
from appliance.uplink.health import WanState
from tests.conftest import meter_spec, write_config

HEALTHY = PanelInputs(
    clock=ClockState.LOCKED, wan=WanState.UP, backlog_ratio=0.0, stalled_threads=(), buses_running=2
)


def with_(**changes: Any) -> dict[Led, Pattern]:
    """The patterns of a healthy box with some states changed."""
    return patterns(PanelInputs(**{**HEALTHY.__dict__, **changes}))


def test_a_healthy_box() -> None:
    assert patterns(HEALTHY) == {
        Led.WAN: Pattern.SOLID,
        Led.GPS: Pattern.SOLID,
        Led.RS485: Pattern.FLASH,
        Led.FAULT: Pattern.OFF,
    }


@pytest.mark.parametrize(
    ("clock", "expected"),
    [
        (ClockState.LOCKED, Pattern.SOLID),
        (ClockState.HOLDOVER, Pattern.SLOW),
        (ClockState.UNSYNCED, Pattern.FAST),
        (None, Pattern.OFF),
    ],
)
def test_gps_led(clock: ClockState | None, expected: Pattern) -> None:
    assert with_(clock=clock)[Led.GPS] is expected


@pytest.mark.parametrize(
    ("wan", "expected"),
    [(WanState.UP, Pattern.SOLID), (WanState.CONNECTING, Pattern.SLOW), (WanState.DOWN, Pattern.FAST)],
)
def test_wan_led(wan: WanState, expected: Pattern) -> None:
    assert with_(wan=wan)[Led.WAN] is expected


@pytest.mark.parametrize(("buses", "expected"), [(0, Pattern.OFF), (1, Pattern.FLASH), (2, Pattern.FLASH)])
def test_rs485_led(buses: int, expected: Pattern) -> None:
    assert with_(buses_running=buses)[Led.RS485] is expected


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, Pattern.OFF),
        ({"backlog_ratio": BACKLOG_WARNING - 0.01}, Pattern.OFF),
        ({"backlog_ratio": BACKLOG_WARNING}, Pattern.SLOW),
        ({"backlog_ratio": 1.0}, Pattern.SLOW),
        ({"stalled_threads": ("bus-A",)}, Pattern.FAST),
        ({"stalled_threads": ("outbox",), "backlog_ratio": 0.95}, Pattern.FAST),  # the worse one wins
    ],
)
def test_fault_led(changes: dict[str, Any], expected: Pattern) -> None:
    assert with_(**changes)[Led.FAULT] is expected


def test_faults_do_not_touch_the_other_leds() -> None:
    troubled = with_(stalled_threads=("bus-B",), backlog_ratio=0.99)
    assert {led: troubled[led] for led in (Led.WAN, Led.GPS, Led.RS485)} == {
        Led.WAN: Pattern.SOLID,
        Led.GPS: Pattern.SOLID,
        Led.RS485: Pattern.FLASH,
    }


def test_a_failing_store_lights_the_fault_led_steadily_and_nothing_else() -> None:
    assert store_failed() == {Led.FAULT: Pattern.SOLID}
    assert Pattern.SOLID not in {with_(**c)[Led.FAULT] for c in ({}, {"stalled_threads": ("x",)})}


def document(**parts: Any) -> dict[str, Any]:
    """A status document as status.snapshot builds it, with `parts` laid over it."""
    base = {
        "clock": {"state": "LOCKED", "gpsd": "127.0.0.1:2947"},
        "wan": {"state": "up"},
        "backlog": {"unsent_readings": 0, "pending_readings": 0},
        "store": {"used_mb": 1.0, "max_mb": 2048},
    }
    return base | parts


def inputs(doc: dict[str, Any]) -> PanelInputs:
    return inputs_from_status(doc, stalled_threads=(), buses_running=1)


@pytest.mark.parametrize(
    ("clock", "expected"),
    [
        ({"state": "LOCKED", "gpsd": "127.0.0.1:2947", "offset_s": 0.001}, ClockState.LOCKED),
        ({"state": "HOLDOVER", "gpsd": "127.0.0.1:2947"}, ClockState.HOLDOVER),
        ({"state": "UNSYNCED", "gpsd": "127.0.0.1:2947"}, ClockState.UNSYNCED),
        ({"state": "UNSYNCED", "gpsd": "not configured"}, None),  # no GPS: the LED stays dark
        ({"state": "SOMETHING NEW", "gpsd": "x:1"}, ClockState.UNSYNCED),  # unknown: the worst
        (None, ClockState.UNSYNCED),
    ],
)
def test_the_clock_state_from_the_status(clock: dict | None, expected: ClockState | None) -> None:
    assert inputs(document(clock=clock)).clock is expected


def test_a_clock_nobody_feeds_keeps_the_gps_led_dark() -> None:
    assert inputs(document(clock=Clock().status())).clock is None


@pytest.mark.parametrize(
    ("wan", "expected"),
    [
        ({"state": "up", "problem": None}, WanState.UP),
        ({"state": "connecting"}, WanState.CONNECTING),
        ({"state": "down", "problem": "no SIM"}, WanState.DOWN),
        ({"state": "?"}, WanState.DOWN),  # unknown: the worst
        ({"signal": 12}, WanState.DOWN),
        (None, WanState.DOWN),
    ],
)
def test_the_wan_state_from_the_status(wan: dict | None, expected: WanState) -> None:
    assert inputs(document(wan=wan)).wan is expected


def test_what_only_the_daemon_knows_passes_through() -> None:
    got = inputs_from_status(document(), stalled_threads=("bus-A",), buses_running=0)
    assert (got.stalled_threads, got.buses_running) == (("bus-A",), 0)


METERS = [meter_spec(f"MTR-{n:03d}", n + 1) for n in range(20)]
T0 = 1_700_000_000


def fill(store: Any, slots: int) -> int:
    """Store `slots` polls of 20 meters, three registers each; returns how many readings."""
    types = (REGISTER_A_PLUS_KWH, REGISTER_A_MINUS_KWH, VOLTAGE_L1_V)
    saved = 0
    for slot in range(slots):
        readings = [
            Reading(m.id, rt, utc_from_epoch(T0 + 900 * slot), Decimal(f"{12345.67 + slot * 0.37 + i:.7g}"))
            for i, m in enumerate(METERS)
            for rt in types
        ]
        saved += save_readings(store, readings, T0)
    return saved


@pytest.fixture
def box(tmp_path: Path) -> Any:
    """A config with a 2 MiB store cap and its real store, meters registered. (The empty store's
    tables take 164 KiB: a 1 MiB cap left too little room to fill 80 % with readings.)"""
    config = load_config(
        write_config(
            tmp_path / "box.toml",
            f'[mqtt]\ntls = false\n[hes]\ndata_dir = "{tmp_path}"\n[store]\nmax_size_mb = 2\n',
        )
    )
    store = open_store(config)
    register_config_meters(store, METERS, T0)
    yield config, store
    store.close()


def snapshot_inputs(config: Any, store: Any) -> PanelInputs:
    doc = status.snapshot(config, store, Clock(), connected=True, drain_rate=0.0, published=0, acknowledged=0)
    return inputs(doc)


def test_the_backlog_estimate_matches_what_the_readings_really_take(box: Any) -> None:
    config, store = box
    empty = used_bytes(store)
    saved = fill(store, 615)  # 36 900 waiting readings
    assert saved == 36_900
    really = (used_bytes(store) - empty) / (config.store.max_size_mb * 2**20)  # of the cap, as the estimate
    estimate = snapshot_inputs(config, store).backlog_ratio
    assert really * 0.8 < estimate < really * 1.25, (estimate, really)
    assert estimate >= BACKLOG_WARNING
    assert patterns(snapshot_inputs(config, store))[Led.FAULT] is Pattern.SLOW


def test_readings_already_sent_do_not_count_as_backlog(box: Any) -> None:
    config, store = box
    fill(store, 615)
    batch = oldest_unsent(store, 36_900)
    with store.transaction() as conn:
        outbox_id = insert_message(
            conn,
            message_id="m-1",
            priority=Priority.READINGS,
            topic="hes/x/cim/out/MeterReadings",
            content_type="application/xml",
            payload=b"<x/>",
            created_at=T0,
            carried=batch.keys,
        )
    assert snapshot_inputs(config, store).backlog_ratio >= BACKLOG_WARNING  # sent, not acknowledged
    mark_acked(store, [outbox_id], T0 + 1)
    # The store is as full as before, but nothing waits for the uplink: no fault.
    assert snapshot_inputs(config, store).backlog_ratio == 0.0
    assert patterns(snapshot_inputs(config, store))[Led.FAULT] is Pattern.OFF
