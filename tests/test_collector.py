"""Schedules, commands that cut in, meter time, discovery and registration: a real bus worker against
simulated meters on real ptys."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import serial

from appliance.cli import main
from appliance.clock import Clock
from appliance.collect.bus import BusAccess
from appliance.collect.collector import Collector
from appliance.collect.dlms import axdr
from appliance.collect.jobs import Task
from appliance.collect.meter_time import CLOCK_SET, CLOCK_SYNC_REFUSED
from appliance.collect.meters.catalog import PROFILE_A_PLUS_KWH, REGISTER_A_PLUS_KWH
from appliance.collect.meters.dlms import CLOCK
from appliance.collect.quality import CLOCK_ERROR
from appliance.config import Config, MeterSpec, load_config
from appliance.errors import UnknownMeter
from appliance.housekeeping import Housekeeping
from appliance.model import Protocol
from appliance.sim.dlms_meter import SimulatedDlmsBus, parse_meter
from appliance.sim.modbus_meter import SimulatedModbusBus
from appliance.sim.ptys import PtyPair
from appliance.sim.substation import Substation
from appliance.store import Store
from appliance.store.events import events_of
from appliance.store.readings import readings_between
from appliance.store.registry import list_meters, register_config_meters
from tests.conftest import REPO, meter_spec, write_config

NO_TLS = REPO / "tests" / "data" / "no-tls.toml"


class TrustedClock(Clock):
    """The system clock, declared GPS-locked (what the GPS watcher says on a healthy box)."""

    def __init__(self, trusted: bool = True) -> None:
        super().__init__()
        self._trusted = trusted

    def trusted(self) -> bool:
        return self._trusted


def dlms(meter_id: str, address: int) -> MeterSpec:
    return meter_spec(meter_id, address, "dlms-generic", 2, protocol=Protocol.DLMS)


class Rig:
    """A Collector on bus A (a pty), its store and its config, started and stopped by the test."""

    def __init__(
        self,
        tmp_path: Path,
        device: Path,
        meters: list[MeterSpec],
        overlay: str = "",
        clock: Clock | None = None,
    ) -> None:
        text = f'[hes]\ndata_dir = "{tmp_path}"\n[buses.A]\ndevice = "{device}"\ntimeout_ms = 300\n'
        text += "[buses.B]\nenabled = false\n" + overlay
        self.config: Config = load_config(NO_TLS, write_config(tmp_path / "rig.toml", text))
        self.path = self.config.store_path
        self.store = Store(self.path)
        register_config_meters(self.store, meters, 0)
        self.stop = threading.Event()
        self.clock = clock or TrustedClock()
        housekeeping = Housekeeping(self.config, self.clock)
        self.collector = Collector(
            self.config,
            self.store,
            lambda: Store(self.path),
            self.clock,
            housekeeping,
            lambda: None,
            self.stop,
        )
        self.collector.start()

    def readings(self, meter: str) -> list:
        store = Store(self.path, readonly=True)
        try:
            return readings_between(store, meter, 0, 2**40)
        finally:
            store.close()

    def events(self, meter: str) -> list:
        store = Store(self.path, readonly=True)
        try:
            return events_of(store, meter)
        finally:
            store.close()

    def wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        return Substation.wait_for(condition, timeout)

    def halt(self) -> None:
        self.stop.set()
        for worker in self.collector.workers.values():
            worker.join(timeout=5)
            assert not worker.is_alive()
        self.store.close()


def read_meter_clock(access: BusAccess, meter: MeterSpec) -> datetime:
    with access.dlms(meter) as session:
        return axdr.DateTime.from_data(session.get(8, CLOCK, 2)).to_utc()


CLOCK_EVERY_POLL = "[schedules.dlms-generic]\nprofile_s = 2\nevents_s = 0\nclock_s = 2\n"


def test_meter_clocks_are_corrected_within_bounds_and_refused_beyond(tmp_path: Path, pty: PtyPair) -> None:
    keys = tmp_path / "D17.keys"
    keys.write_text('password = "s3cret"\n')
    simulated = [
        parse_meter("17:offset=60,password=s3cret"),  # the management client may set the clock
        parse_meter("18:offset=3600"),
        parse_meter("19:offset=3"),
        parse_meter("20:offset=60"),  # read through the public client, which may not set it
    ]
    meters = [
        replace(dlms("D17", 17), client_address=1, auth="low", keys_file=keys),
        dlms("D18", 18),
        dlms("D19", 19),
        dlms("D20", 20),
    ]
    with SimulatedDlmsBus(simulated, port=pty.peer):
        rig = Rig(tmp_path, pty.device, meters, CLOCK_EVERY_POLL)
        assert rig.wait(lambda: len(rig.readings("D20")) >= 4, timeout=20)
        clocks = {m.id: rig.collector.submit(m.id, read_meter_clock).result(timeout=10) for m in meters}
        rig.halt()
    now = datetime.now(UTC)
    assert abs((clocks["D17"] - now).total_seconds()) < 5  # corrected from +60 s
    assert abs((clocks["D18"] - now).total_seconds() - 3600) < 5  # left alone: a human must look
    assert abs((clocks["D19"] - now).total_seconds() - 3) < 5  # within tolerance: not touched
    assert abs((clocks["D20"] - now).total_seconds() - 60) < 5  # the meter said no
    assert [e.event_type for e in rig.events("D17") if e.event_type == CLOCK_SET] == [CLOCK_SET]
    refused = [e for e in rig.events("D18") if e.event_type == CLOCK_SYNC_REFUSED]
    assert refused and dict(refused[0].details)["offsetSeconds"] == "3600"
    denied = [e for e in rig.events("D20") if e.event_type == CLOCK_SYNC_REFUSED]
    assert denied and "refused the correction" in denied[0].reason
    for meter in ("D18", "D20"):  # every interval the meter stamped while its clock was off says so
        profile = [r for r in rig.readings(meter) if r.reading_type == PROFILE_A_PLUS_KWH]
        assert profile and all(CLOCK_ERROR in r.qualities for r in profile)
    assert not any(r.qualities for r in rig.readings("D19"))
    # D17: the intervals read before its correction, in the same poll, are marked (the ones around
    # the step itself are still being recorded by the meter: quality's own tests cover those). An
    # interval read after a quarter-hour boundary passed during the test comes from a right clock.
    (corrected,) = [e for e in rig.events("D17") if e.event_type == CLOCK_SET]
    d17 = [
        r
        for r in rig.readings("D17")
        if r.reading_type == PROFILE_A_PLUS_KWH and r.timestamp <= corrected.created
    ]
    assert d17 and all(CLOCK_ERROR in r.qualities for r in d17)
    registers = [r for r in rig.readings("D17") if r.reading_type == REGISTER_A_PLUS_KWH]
    assert registers and not registers[-1].qualities


def test_an_untrusted_hes_clock_never_sets_a_meter(tmp_path: Path, pty: PtyPair) -> None:
    with SimulatedDlmsBus([parse_meter("17:offset=60")], port=pty.peer):
        rig = Rig(tmp_path, pty.device, [dlms("D17", 17)], CLOCK_EVERY_POLL, TrustedClock(trusted=False))
        assert rig.wait(lambda: len(rig.readings("D17")) >= 4, timeout=20)
        clock = rig.collector.submit("D17", read_meter_clock).result(timeout=10)
        rig.halt()
    assert abs((clock - datetime.now(UTC)).total_seconds() - 60) < 5
    profile = [r for r in rig.readings("D17") if r.reading_type == PROFILE_A_PLUS_KWH]
    assert profile and all(CLOCK_ERROR in r.qualities for r in profile)
    assert not [e for e in rig.events("D17") if e.event_type == CLOCK_SET]


@pytest.mark.slow
def test_a_command_takes_the_bus_at_the_next_request_boundary(tmp_path: Path, pty: PtyPair) -> None:
    """Five days of profile at 9600 baud take about 15 s; a command waits for one request only."""
    overlay = "[schedules.dlms-generic]\nprofile_s = 900\nevents_s = 0\nclock_s = 0\nregisters_s = 900\n"
    with SimulatedDlmsBus([parse_meter("17:days=5")], port=pty.peer, pace=True, turnaround_ms=20):
        rig = Rig(tmp_path, pty.device, [dlms("D17", 17)], overlay)
        time.sleep(2)  # the catch-up of 480 intervals is under way
        asked = time.monotonic()
        clock = rig.collector.submit("D17", read_meter_clock).result(timeout=10)
        latency = time.monotonic() - asked
        profile_then = len(rig.readings("D17"))
        # The poll that gave way runs again and reads everything.
        assert rig.wait(lambda: len(rig.readings("D17")) >= 2 * 480, timeout=60)
        rig.halt()
    assert abs((clock - datetime.now(UTC)).total_seconds()) < 130
    assert profile_then == 0  # the command did not wait for the poll to finish
    # One request in flight (a profile block of ~150 bytes) plus the command's own association and read.
    assert latency < 2.0, latency
    profile = [r for r in rig.readings("D17") if r.reading_type == PROFILE_A_PLUS_KWH]
    assert len({r.timestamp for r in profile}) == len(profile) >= 480


def test_discovery_registers_what_answers_as_unassigned_and_tells_the_mdm(
    tmp_path: Path, pty: PtyPair
) -> None:
    overlay = "[discovery]\nmodbus_first = 1\nmodbus_last = 4\nhdlc_first = 16\nhdlc_last = 16\n"
    with SimulatedModbusBus(pty.peer, [(1, "sdm630"), (2, "sdm630"), (3, "generic-wh32")]):
        rig = Rig(tmp_path, pty.device, [meter_spec("M1", 1, "sdm630", 2)], overlay)
        found = rig.collector.discover("A").result(timeout=30)
        again = rig.collector.discover("A").result(timeout=30)
        assert rig.wait(lambda: len(rig.readings("M1")) >= 3, timeout=10)  # polling went on
        rig.halt()
    assert sorted(d.address for d in found) == [2, 3]  # 1 is registered, 4 is silent
    assert sorted(d.address for d in again) == [2, 3]
    rows = {row["mrid"]: row for row in list_meters(Store(rig.path, readonly=True))}
    assert rows["A-MB2"]["state"] == rows["A-MB3"]["state"] == "unassigned"
    assert rows["M1"]["state"] == "active"
    # Announced once, however often it is found; and not polled while unassigned.
    assert [e.event_type for e in rig.events("A-MB2")] == ["3.7.0.4"]
    assert rig.readings("A-MB2") == []


def test_dlms_discovery_reads_identity(tmp_path: Path, pty: PtyPair) -> None:
    overlay = "[discovery]\nmodbus_first = 1\nmodbus_last = 1\nhdlc_first = 16\nhdlc_last = 19\n"
    with SimulatedDlmsBus([parse_meter("17:serial=SN0017"), parse_meter("19")], port=pty.peer):
        rig = Rig(tmp_path, pty.device, [], overlay)
        found = {d.address: d for d in rig.collector.discover("A").result(timeout=60)}
        rig.halt()
    assert sorted(found) == [17, 19]
    assert found[17].mrid == "SN0017" and found[17].identity["logical_device_name"].endswith("SN0017")


def test_meters_registered_at_run_time_are_polled_and_removed_ones_stop(tmp_path: Path, pty: PtyPair) -> None:
    with SimulatedModbusBus(pty.peer, [(1, "sdm630"), (2, "generic-wh32")]):
        rig = Rig(tmp_path, pty.device, [meter_spec("M1", 1, "sdm630", 1)])
        with pytest.raises(UnknownMeter):
            rig.collector.submit("M2", lambda access, meter: None)
        rig.collector.register(meter_spec("M2", 2, "generic-wh32", 1), "mdm")
        assert rig.wait(lambda: len(rig.readings("M2")) >= 4, timeout=10)
        energy = rig.collector.submit("M2", lambda a, m: a.poll(m, frozenset({Task.REGISTERS}))).result(5)
        assert {r.reading_type for r in energy.readings} >= {REGISTER_A_PLUS_KWH}
        assert rig.collector.unregister("M2") and not rig.collector.unregister("M2")
        time.sleep(0.5)
        count = len(rig.readings("M2"))
        time.sleep(2.5)
        rig.halt()
    assert len(rig.readings("M2")) == count  # no longer polled, readings kept
    # A restart reads the registry: M2 stays removed, an MDM meter would be back.
    store = Store(rig.path, readonly=True)
    assert {r["mrid"]: r["state"] for r in list_meters(store)} == {"M1": "active", "M2": "removed"}


def test_hes_discover_scans_a_bus_when_the_daemon_is_stopped(
    tmp_path: Path, pty: PtyPair, capsys: pytest.CaptureFixture[str]
) -> None:
    text = f'[hes]\ndata_dir = "{tmp_path}"\n[buses.A]\ndevice = "{pty.device}"\n[buses.B]\nenabled = false\n'
    text += "[discovery]\nmodbus_first = 1\nmodbus_last = 3\nhdlc_first = 16\nhdlc_last = 16\n"
    config = write_config(tmp_path / "box.toml", text)
    with SimulatedModbusBus(pty.peer, [(2, "sdm630")]):
        assert main(["discover", "--bus", "A", "--config", str(NO_TLS), "--config", str(config)]) == 0
        # While something holds the port (the daemon would), the command says what to do instead.
        with serial.Serial(str(pty.device), exclusive=True):
            assert main(["discover", "--bus", "A", "--config", str(NO_TLS), "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert [json.loads(line)["mrid"] for line in out.splitlines()] == ["A-MB2"]
    assert "discover bus A" in err
    assert main(["discover", "--bus", "C", "--config", str(NO_TLS), "--config", str(config)]) == 1


def test_the_daemon_scans_on_its_schedule(tmp_path: Path, pty: PtyPair) -> None:
    overlay = (
        "[discovery]\nmodbus_first = 1\nmodbus_last = 3\nhdlc_first = 16\nhdlc_last = 16\ninterval_s = 2\n"
    )
    with SimulatedModbusBus(pty.peer, [(1, "sdm630"), (3, "sdm630")]):
        rig = Rig(tmp_path, pty.device, [meter_spec("M1", 1, "sdm630", 1)], overlay)
        assert rig.wait(lambda: bool(rig.events("A-MB3")), timeout=15)  # nobody asked
        assert rig.wait(lambda: len(rig.readings("M1")) >= 4, timeout=10)  # polling goes on
        rig.halt()
    assert [e.event_type for e in rig.events("A-MB3")] == ["3.7.0.4"]
    assert rig.events("A-MB2") == []
