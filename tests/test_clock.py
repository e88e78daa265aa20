"""The clock's state machine, fed fixes by hand: lock, holdover and its budget, offsets, stepping."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.clock import (
    CLOCK_HOLDOVER,
    CLOCK_LOCKED,
    CLOCK_STEPPED,
    CLOCK_UNSYNCED,
    Clock,
    ClockState,
    change_event,
    step_event,
)
from appliance.config import ClockSection, load_config
from appliance.errors import ClockError, ConfigError
from appliance.hw.gps import GpsFix
from appliance.status import format_status
from appliance.uplink import cim
from appliance.uplink.messages import build
from tests.conftest import write_config

SETTINGS = ClockSection(
    gpsd_host="127.0.0.1",
    gpsd_port=2947,
    tolerance_s=1.0,
    loss_after_s=10.0,
    holdover_budget_s=2.0,
    holdover_drift_ppm=100_000.0,  # 0.1 s per second: the budget lasts about 18 s
    discipline="chrony",
)
GPS_T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


class Feed:
    """Fixes one second apart, on a monotonic clock that starts at the real one (trusted() reads it)."""

    def __init__(self, clock: Clock, offset_s: float = 0.2, seconds_ago: float = 0.0) -> None:
        self.clock, self.offset_s = clock, offset_s
        self.gps = GPS_T0
        self.mono = time.monotonic() - seconds_ago

    def fix(self, mode: int = 3, offset_s: float | None = None):
        """The next second's fix, seen `offset_s` late by the system clock."""
        self.gps += timedelta(seconds=1)
        self.mono += 1
        offset = self.offset_s if offset_s is None else offset_s
        return self.clock.observe(
            GpsFix(mode, self.gps, 48.1, 11.5, 545.0), self.gps.timestamp() + offset, self.mono
        )

    def nothing(self, seconds: float = 1.0):
        """No answer from gpsd for `seconds`."""
        self.gps += timedelta(seconds=seconds)
        self.mono += seconds
        return self.clock.observe(None, self.gps.timestamp() + self.offset_s, self.mono)


def test_a_clock_nobody_feeds_is_unsynced_and_tells_the_time():
    clock = Clock()
    before = datetime.now(UTC)
    now = clock.now()
    assert now.tzinfo is UTC and before <= now <= datetime.now(UTC)
    slot = clock.slot_start(900)
    assert slot.timestamp() % 900 == 0 and now - timedelta(seconds=900) < slot <= now
    assert clock.state is ClockState.UNSYNCED
    assert clock.offset_s is None and not clock.trusted()
    assert clock.status()["gpsd"] == "not configured" and clock.status()["fix"] is None
    with pytest.raises(ClockError):
        clock.observe(GpsFix(3, GPS_T0), GPS_T0.timestamp(), time.monotonic())


def test_first_fix_within_tolerance_locks():
    clock = Clock(SETTINGS)
    feed = Feed(clock, offset_s=0.3)
    change = feed.fix()
    assert change is not None and (change.previous, change.state) == (ClockState.UNSYNCED, ClockState.LOCKED)
    assert change.offset_s == pytest.approx(0.3) and change.gps_time == feed.gps
    assert clock.trusted() and clock.offset_s == pytest.approx(0.3)
    assert feed.fix() is None  # no change, no event
    status = clock.status()
    assert status["state"] == "LOCKED" and status["trusted"] is True
    assert status["fix"] == {
        "mode": 3,
        "time": cim.format_time(feed.gps),
        "lat": 48.1,
        "lon": 11.5,
        "alt": 545.0,
    }


def test_offset_is_the_least_delayed_of_the_recent_fixes_and_a_repeated_fix_counts_once():
    clock = Clock(SETTINGS)
    feed = Feed(clock)
    for late in (0.4, 0.15, 0.3):
        feed.fix(offset_s=late)
    assert clock.offset_s == pytest.approx(0.15)
    # gpsd repeats the last fix while the receiver is silent: the same GPS time, seen later, is no sample.
    clock.observe(GpsFix(3, feed.gps), feed.gps.timestamp() + 0.01, feed.mono + 0.5)
    assert clock.offset_s == pytest.approx(0.15)
    for _ in range(4):  # older samples leave the window
        feed.fix(offset_s=0.35)
    assert clock.offset_s == pytest.approx(0.35)


def test_no_fix_time_counts_below_mode_2():
    clock = Clock(SETTINGS)
    feed = Feed(clock)
    assert feed.fix(mode=1) is None
    assert clock.state is ClockState.UNSYNCED and clock.offset_s is None


def test_loss_of_fix_holds_over_within_the_budget_then_gives_up():
    clock = Clock(replace(SETTINGS, loss_after_s=3.0))
    feed = Feed(clock, offset_s=0.2, seconds_ago=5.0)  # the loss is noticed now, as trusted() sees it
    feed.fix()
    assert feed.nothing(2.0) is None and clock.state is ClockState.LOCKED  # a short gap is no loss
    change = feed.nothing(2.0)
    assert change is not None and change.state is ClockState.HOLDOVER and change.offset_s is None
    assert clock.trusted() and clock.offset_s is None
    status = clock.status()
    assert status["fix"] is None and status["holdover"]["budget_s"] == 2.0
    assert 0.2 <= status["holdover"]["estimated_error_s"] < 0.5
    # 0.2 s at the loss + 0.1 s per second: the budget of 2 s is spent after 18 s.
    assert feed.nothing(17.0) is None and clock.state is ClockState.HOLDOVER
    change = feed.nothing(2.0)
    assert change is not None and (change.previous, change.state) == (
        ClockState.HOLDOVER,
        ClockState.UNSYNCED,
    )
    assert "budget spent" in change.reason and not clock.trusted()
    change = feed.fix()
    assert change is not None and change.state is ClockState.LOCKED


def test_a_holdover_clock_is_untrusted_once_the_budget_is_spent_even_unfed():
    clock = Clock(replace(SETTINGS, loss_after_s=1.0, holdover_drift_ppm=1e6))  # 1 s per second
    feed = Feed(clock, offset_s=0.0, seconds_ago=3.0)
    feed.fix()
    feed.nothing(2.0)
    assert clock.state is ClockState.HOLDOVER and clock.trusted()
    time.sleep(2.2)  # nobody observes: the watcher hangs, say
    assert clock.state is ClockState.HOLDOVER and not clock.trusted()


def test_system_clock_far_from_gps_time_is_unsynced_and_only_the_daemon_discipline_steps():
    chrony = Clock(SETTINGS)
    daemon = Clock(replace(SETTINGS, discipline="daemon"))
    feeds = [Feed(chrony, offset_s=-3600.2), Feed(daemon, offset_s=-3600.2)]
    corrections = []
    for _ in range(3):
        assert [feed.fix() for feed in feeds] == [None, None]  # UNSYNCED from the start: no change
        corrections.append(daemon.step_correction())
    assert chrony.state is daemon.state is ClockState.UNSYNCED and not daemon.trusted()
    assert chrony.offset_s == pytest.approx(-3600.2)
    assert chrony.step_correction() is None
    assert corrections[:2] == [None, None]  # three agreeing fixes first
    assert corrections[2] == pytest.approx(3600.2)
    daemon.stepped()
    assert daemon.step_correction() is None and daemon.offset_s is None
    change = feeds[1].fix(offset_s=0.1)  # the system clock now agrees with GPS time
    assert change is not None and change.state is ClockState.LOCKED


def test_gps_time_jumping_away_from_a_locked_clock_unsyncs_it_at_once():
    clock = Clock(SETTINGS)
    feed = Feed(clock, offset_s=0.2)
    feed.fix()
    feed.fix()
    change = feed.fix(offset_s=-86400.2)
    assert change is not None and (change.previous, change.state) == (ClockState.LOCKED, ClockState.UNSYNCED)
    assert clock.offset_s == pytest.approx(-86400.2)  # the old window does not mask the jump
    assert "from GPS time" in change.reason


def test_a_receiver_with_the_week_rollover_bug_is_ignored(caplog: pytest.LogCaptureFixture):
    clock = Clock(SETTINGS)
    feed = Feed(clock)
    rolled_back = GPS_T0 - timedelta(weeks=1024)
    for second in range(3):
        moment = rolled_back + timedelta(seconds=second)
        assert clock.observe(GpsFix(3, moment), GPS_T0.timestamp() + second, feed.mono + second) is None
    assert clock.offset_s is None and clock.state is ClockState.UNSYNCED
    assert len([r for r in caplog.records if "week rollover" in r.getMessage()]) == 1


def test_changes_and_steps_become_valid_cim_end_device_events(tmp_path: Path, cim_schemas):
    config = load_config(write_config(tmp_path / "box.toml", '[hes]\nid = "hes-7"\n[mqtt]\ntls = false\n'))
    clock = Clock(config.clock)
    feed = Feed(clock, offset_s=0.25, seconds_ago=config.clock.loss_after_s + 2)
    locked = change_event("hes-7", feed.fix(), clock.now())
    assert (locked.device_id, locked.event_type, locked.severity) == ("hes-7", CLOCK_LOCKED, "info")
    assert dict(locked.details) == {
        "clockState": "LOCKED",
        "previousState": "UNSYNCED",
        "offsetSeconds": "+0.250",
        "gpsTime": cim.format_time(feed.gps),
    }
    holdover = change_event("hes-7", feed.nothing(config.clock.loss_after_s + 1), clock.now())
    assert holdover.event_type == CLOCK_HOLDOVER and "offsetSeconds" not in dict(holdover.details)
    stepped = step_event("hes-7", 3600.5, clock.now())
    assert stepped.event_type == CLOCK_STEPPED and dict(stepped.details) == {"stepSeconds": "+3600.500"}
    message = build(config, clock, "EndDeviceEvents", [locked, holdover, stepped])
    cim_schemas.validate(message.payload)
    sent = cim.read_end_device_events(cim.parse_xml(message.payload))
    assert [e.event_type for e in sent] == [CLOCK_LOCKED, CLOCK_HOLDOVER, CLOCK_STEPPED]
    assert CLOCK_UNSYNCED.startswith("0.36.116.")


def test_status_line_shows_the_clock():
    clock = Clock(SETTINGS)
    Feed(clock, offset_s=0.25).fix()
    text = format_status({"hes_id": "hes-7", "clock": clock.status()})
    assert "clock:   LOCKED since" in text and "offset +0.250 s" in text and "gpsd 127.0.0.1:2947" in text


def test_config_refuses_an_unknown_discipline(tmp_path: Path):
    box = write_config(tmp_path / "box.toml", '[mqtt]\ntls = false\n[clock]\ndiscipline = "ntp"\n')
    with pytest.raises(ConfigError, match=r"box\.toml: clock\.discipline: chrony or daemon"):
        load_config(box)
