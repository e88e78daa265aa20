"""The GPS master clock against a real gpsd on a pty, fed NMEA by the test (appliance/sim/gps.py).

Lock, loss of fix, GPS time far from the system clock, a leap day, a year rollover, garbage on the
line, gpsd dying and coming back; then the daemon with a simulated GPS, seen from the MDM's side.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import tomli_w

from appliance.clock import CLOCK_HOLDOVER, CLOCK_LOCKED, CLOCK_UNSYNCED, Clock, ClockState
from appliance.config import Config, load_config
from appliance.errors import TransportError
from appliance.hw.gps import GpsdReader, GpsWatcher
from appliance.sim.gps import LAT, LON, SimulatedGps, nmea, sentences
from appliance.sim.substation import Substation
from appliance.store import open_store
from appliance.store.outbox import pending_messages
from appliance.uplink import cim

# Fast enough for a test: a fix is lost after 1.5 s, and holdover lasts about 5 s (0.5 s budget at
# 0.1 s per second).
FAST = {"loss_after_s": 1.5, "holdover_budget_s": 0.5, "holdover_drift_ppm": 100_000.0}


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def gps(tmp_path: Path) -> Iterator[SimulatedGps]:
    with SimulatedGps(tmp_path / "gps") as simulated:
        yield simulated


def box_config(tmp_path: Path, gps: SimulatedGps, **clock: object) -> Config:
    document = {
        "hes": {"id": "hes-gps", "data_dir": str(tmp_path / "data")},
        "mqtt": {"tls": False},
        "clock": {"gpsd_port": gps.port, **FAST, **clock},
    }
    path = tmp_path / "box.toml"
    path.write_text(tomli_w.dumps(document))
    return load_config(path)


@contextmanager
def watching(config: Config) -> Iterator[GpsWatcher]:
    """A GpsWatcher feeding a fresh clock, stopped (and checked to have stopped) afterwards."""
    stop = threading.Event()
    watcher = GpsWatcher(config, Clock(config.clock), lambda: open_store(config), stop)
    watcher.start()
    try:
        yield watcher
    finally:
        stop.set()
        watcher.join(timeout=5)
        assert not watcher.is_alive()


def alarms(config: Config) -> list[tuple[str, str]]:
    """(EndDeviceEventType, clockState) of the clock alarms in the outbox, oldest first."""
    store = open_store(config, readonly=True)
    try:
        messages = pending_messages(store, 100)
    finally:
        store.close()
    found = []
    for message in messages:
        for event in cim.read_end_device_events(cim.parse_xml(message.payload)):
            assert event.device_id == "hes-gps"
            found.append((event.event_type, dict(event.details)["clockState"]))
    return found


def fresh_fixes(reader: GpsdReader, seconds: float) -> list[tuple[datetime, float]]:
    """Each new fix gpsd reports within `seconds`, with its offset (system clock minus GPS time)."""
    seen: list[tuple[datetime, float]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        fix = reader.read()
        if fix.time is not None and (not seen or fix.time != seen[-1][0]):
            seen.append((fix.time, time.time() - fix.time.timestamp()))
        time.sleep(0.05)
    return seen


def test_nmea_checksums_are_the_xor_of_the_body():
    assert (
        nmea("GPGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99") == b"$GPGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99*30\r\n"
    )
    second = sentences(datetime(2028, 2, 29, 23, 59, 59, tzinfo=UTC)).decode().split("\r\n")
    assert second[0].startswith("$GPRMC,235959.00,A,4807.0380,N,01131.0000,E,") and ",290228," in second[0]
    assert second[3] == "$GPZDA,235959.00,29,02,2028,00,00*" + second[3][-2:]


def test_the_reader_sees_gpsd_fixes_and_survives_gpsd_dying(gps: SimulatedGps):
    reader = GpsdReader("127.0.0.1", gps.port)
    try:
        assert wait_for(lambda: reader.read().mode == 3, 10), "no 3D fix from gpsd"
        fix = reader.read()
        assert fix.lat == pytest.approx(LAT, abs=1e-6) and fix.lon == pytest.approx(LON, abs=1e-6)
        assert fix.time is not None and abs(time.time() - fix.time.timestamp()) < 2.0
        gps.stop_gpsd()
        with pytest.raises(TransportError):
            reader.read()  # the connection closes under it
        with pytest.raises(TransportError):
            reader.read()  # nobody listens
        gps.start_gpsd()
        assert wait_for(lambda: reader.read().mode == 3, 10), "no fix after gpsd came back"
    finally:
        reader.close()


def test_lock_then_loss_of_fix_then_holdover_spent(tmp_path: Path, gps: SimulatedGps):
    config = box_config(tmp_path, gps)
    with watching(config) as watcher:
        clock = watcher.clock
        assert wait_for(lambda: clock.state is ClockState.LOCKED, 10), clock.status()
        assert clock.trusted() and abs(clock.offset_s) < 0.5  # the feed is on time: only gpsd's lateness
        status = clock.status()
        assert status["fix"]["mode"] == 3 and status["fix"]["lat"] == pytest.approx(LAT, abs=1e-6)
        assert status["gpsd"] == f"127.0.0.1:{gps.port}" and status["discipline"] == "chrony"

        gps.fix = False
        assert wait_for(lambda: clock.state is ClockState.HOLDOVER, 5), clock.status()
        assert clock.trusted() and clock.offset_s is None and clock.status()["fix"] is None
        assert wait_for(lambda: clock.state is ClockState.UNSYNCED, 10), clock.status()
        assert not clock.trusted()

        gps.fix = True
        assert wait_for(lambda: clock.state is ClockState.LOCKED, 5), clock.status()
        assert time.monotonic() - watcher.heartbeat < 1.0
    assert alarms(config) == [
        (CLOCK_LOCKED, "LOCKED"),
        (CLOCK_HOLDOVER, "HOLDOVER"),
        (CLOCK_UNSYNCED, "UNSYNCED"),
        (CLOCK_LOCKED, "LOCKED"),
    ]


def test_gps_time_far_from_the_system_clock_is_never_locked(tmp_path: Path, gps: SimulatedGps):
    gps.offset_s = 3600.0  # GPS says an hour later than the system clock
    config = box_config(tmp_path, gps)
    with watching(config) as watcher:
        clock = watcher.clock
        assert wait_for(lambda: clock.offset_s is not None, 10), clock.status()
        time.sleep(2.5)  # a few more fixes
        assert clock.state is ClockState.UNSYNCED and not clock.trusted()
        assert clock.offset_s == pytest.approx(-3600, abs=0.5)
        assert clock.step_correction() is None  # chrony disciplines this box: the daemon only watches
    assert alarms(config) == []  # UNSYNCED from the start: nothing changed

    # The same fixes on a box without chrony: the daemon would step the clock. The decision is
    # tested, not the step (that needs CAP_SYS_TIME and would move this machine's clock).
    daemon = Clock(replace(config.clock, discipline="daemon"))
    reader = GpsdReader("127.0.0.1", gps.port)
    try:
        deadline = time.monotonic() + 8
        while daemon.step_correction() is None and time.monotonic() < deadline:
            daemon.observe(reader.read(), time.time(), time.monotonic())
            time.sleep(0.1)
    finally:
        reader.close()
    assert daemon.step_correction() == pytest.approx(3600, abs=0.5)


@pytest.mark.parametrize(
    ("start", "boundary"),
    [
        (datetime(2028, 2, 29, 23, 59, 57, tzinfo=UTC), datetime(2028, 3, 1, tzinfo=UTC)),  # leap day
        (datetime(2026, 12, 31, 23, 59, 57, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),  # new year
    ],
    ids=["leap-day", "year-rollover"],
)
def test_calendar_boundaries_keep_gps_time_continuous(gps: SimulatedGps, start: datetime, boundary: datetime):
    reader = GpsdReader("127.0.0.1", gps.port)
    try:
        assert wait_for(lambda: reader.read().mode == 3, 10)
        gps.jump_to(start)
        fixes = [
            (t, off) for t, off in fresh_fixes(reader, 6.5) if start <= t <= start + timedelta(seconds=9)
        ]
    finally:
        reader.close()
    times = [t for t, _ in fixes]
    assert boundary - timedelta(seconds=1) in times and boundary in times, times
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(times)), times
    offsets = [offset for _, offset in fixes]
    assert max(offsets) - min(offsets) < 0.5, offsets  # no day or year lost or gained on the way
    assert min(offsets) == pytest.approx(-gps.offset_s, abs=0.5)


def test_garbage_on_the_line_is_a_lost_fix_not_a_crash(tmp_path: Path, gps: SimulatedGps):
    config = box_config(tmp_path, gps)
    with watching(config) as watcher:
        clock = watcher.clock
        assert wait_for(lambda: clock.state is ClockState.LOCKED, 10), clock.status()
        gps.garbage = True
        assert wait_for(lambda: clock.state is ClockState.HOLDOVER, 5), clock.status()
        gps.garbage = False
        assert wait_for(lambda: clock.state is ClockState.LOCKED, 5), clock.status()
        assert watcher.is_alive()


def test_gpsd_dying_and_coming_back(tmp_path: Path, gps: SimulatedGps, caplog: pytest.LogCaptureFixture):
    config = box_config(tmp_path, gps, holdover_drift_ppm=10.0)  # a long holdover this time
    with watching(config) as watcher:
        clock = watcher.clock
        assert wait_for(lambda: clock.state is ClockState.LOCKED, 10), clock.status()
        gps.stop_gpsd()
        assert wait_for(lambda: clock.state is ClockState.HOLDOVER, 5), clock.status()
        time.sleep(2.0)  # a few failed reconnects
        assert clock.trusted() and watcher.is_alive() and time.monotonic() - watcher.heartbeat < 1.0
        gps.start_gpsd()
        assert wait_for(lambda: clock.state is ClockState.LOCKED, 12), clock.status()
    assert alarms(config) == [
        (CLOCK_LOCKED, "LOCKED"),
        (CLOCK_HOLDOVER, "HOLDOVER"),
        (CLOCK_LOCKED, "LOCKED"),
    ]
    gone = [r for r in caplog.records if "gpsd at" in r.getMessage() and r.levelname == "WARNING"]
    assert len(gone) == 1, [r.getMessage() for r in gone]  # one line per outage, not one per retry


def test_the_daemon_reports_a_locked_clock_to_the_mdm(tmp_path: Path):
    """`hes demo`'s rig: the daemon as its own process, a simulated GPS, the MDM on the broker."""
    base = tmp_path / "base.toml"
    base.write_text('[hes]\nid = "hes-gps"\n[uplink]\nstatus_interval_s = 1\n')
    with Substation(tmp_path / "run", base, gps=True) as substation:
        mdm = substation.mdm().start()
        try:
            substation.start_daemon()

            def clock_state() -> str | None:
                return json.loads(mdm.status).get("clock", {}).get("state") if mdm.status else None

            assert wait_for(lambda: clock_state() == "LOCKED", 15), mdm.status
            assert wait_for(lambda: any(m.events for m in mdm.snapshot()), 10)
        finally:
            mdm.stop()
    clock = json.loads(mdm.status)["clock"]
    assert clock["trusted"] is True and abs(clock["offset_s"]) < 0.5 and clock["fix"]["mode"] == 3
    events = [e for m in mdm.snapshot() for e in m.events]
    assert [(e.device_id, e.event_type) for e in events] == [("hes-gps", CLOCK_LOCKED)]
