"""The bus worker against simulated meters on a real pty (pymodbus as the meter)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from appliance.clock import Clock
from appliance.collect.bus import BusWorker, backoff_delay
from appliance.collect.meters.catalog import PROFILE_A_PLUS_KWH, REGISTER_A_PLUS_KWH
from appliance.config import BusSpec, MeterSpec, load_config
from appliance.housekeeping import Housekeeping
from appliance.model import Protocol
from appliance.sim.dlms_meter import SimulatedDlmsBus, parse_meter
from appliance.sim.modbus_meter import SimulatedModbusBus
from appliance.sim.ptys import PtyPair
from appliance.sim.substation import Substation
from appliance.store import Store
from appliance.store.events import events_of
from appliance.store.readings import readings_between
from appliance.store.registry import register_config_meters
from appliance.store.stats import meter_stats
from tests.conftest import REPO, meter_spec, write_config

NO_TLS = REPO / "tests" / "data" / "no-tls.toml"
# The DLMS model's profile and event log read on every 2-second poll, not every 15 minutes and hour.
FAST_SCHEDULES = "[schedules.dlms-generic]\nprofile_s = 2\nevents_s = 2\nclock_s = 0\n"
METERS = [
    meter_spec("M1", 1, "sdm630", 1),
    meter_spec("M2", 2, "generic-wh32", 1),
    meter_spec("SILENT", 9, "sdm630", 1),  # nobody answers to unit 9
]


def bus_spec(device: Path) -> BusSpec:
    return BusSpec("A", True, str(device), 9600, "N", 8, 1, False, timeout_ms=200, retries=1, backoff_max_s=4)


class Rig:
    """A BusWorker with its own store, started and stopped by the test."""

    def __init__(self, tmp_path: Path, device: Path, meters: list[MeterSpec] = METERS) -> None:
        self.path = tmp_path / "hes.db"
        store = Store(self.path)
        register_config_meters(store, meters, 0)
        store.close()
        self.notified = 0
        self.stop = threading.Event()
        clock = Clock()
        config = load_config(NO_TLS, write_config(tmp_path / "fast.toml", FAST_SCHEDULES))
        housekeeping = Housekeeping(config, clock)
        self.worker = BusWorker(
            bus_spec(device),
            meters,
            lambda: Store(self.path),
            clock,
            housekeeping,
            self._notify,
            self.stop,
            config,
        )

    def _notify(self) -> None:
        self.notified += 1

    def readings(self, meter: str) -> list:
        store = Store(self.path, readonly=True)
        try:
            return readings_between(store, meter, 0, 2**40)
        finally:
            store.close()

    def stats(self) -> list[dict]:
        store = Store(self.path, readonly=True)
        try:
            return meter_stats(store)
        finally:
            store.close()

    def events(self, meter: str) -> list:
        store = Store(self.path, readonly=True)
        try:
            return events_of(store, meter)
        finally:
            store.close()

    def wait_for_slots(self, meter: str, slots: int, timeout: float) -> bool:
        return Substation.wait_for(lambda: len({r.timestamp for r in self.readings(meter)}) >= slots, timeout)

    def halt(self) -> None:
        self.stop.set()
        self.worker.join(timeout=5)
        assert not self.worker.is_alive()


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[PtyPair]:
    with PtyPair(tmp_path, "A") as pair, SimulatedModbusBus(pair.peer, [(1, "sdm630"), (2, "generic-wh32")]):
        yield pair


def test_worker_polls_each_meter_once_per_slot_and_a_silent_meter_costs_only_its_timeout(
    tmp_path: Path, bus: PtyPair
) -> None:
    rig = Rig(tmp_path, bus.device)
    rig.worker.start()
    assert rig.wait_for_slots("M2", 3, timeout=15)
    rig.halt()

    per_slot = defaultdict(list)
    for reading in rig.readings("M1"):
        per_slot[reading.timestamp].append(reading.reading_type)
    assert per_slot and all(len(types) == 3 for types in per_slot.values())
    assert all(stamp.microsecond == 0 for stamp in per_slot)
    energy = [r.value for r in rig.readings("M2") if r.reading_type == REGISTER_A_PLUS_KWH]
    assert len(energy) >= 3 and energy == sorted(energy) and energy[0] > 1000
    assert rig.readings("SILENT") == []
    # Every poll counted in the store: the silent meter's timeouts, the others' answers and their times.
    stats = {row["mrid"]: row for row in rig.stats()}
    silent, answering = stats["SILENT"], stats["M1"]
    assert silent["attempts"] == silent["timeouts"] == silent["consecutive_failures"] >= 2
    assert silent["successes"] == 0 and silent["last_success"] is None and "0 of" in silent["last_error"]
    assert answering["attempts"] == answering["successes"] >= 3 and answering["response_ms"] > 0
    assert rig.notified >= 3


def test_a_bus_whose_device_is_missing_waits_for_it_without_dying(tmp_path: Path) -> None:
    pair = PtyPair(tmp_path, "late")
    rig = Rig(tmp_path, pair.device)
    rig.worker.start()
    time.sleep(1.5)
    assert rig.worker.is_alive() and rig.readings("M1") == []
    with pair, SimulatedModbusBus(pair.peer, [(1, "sdm630")]):
        assert rig.wait_for_slots("M1", 1, timeout=10)
    rig.halt()


def dlms_meter(meter_id: str, address: int, **dlms: object) -> MeterSpec:
    values = {"logical_address": 1, "client_address": 16, "auth": "none", "keys_file": None} | dlms
    return MeterSpec(meter_id, "A", Protocol.DLMS, address, "dlms-generic", 2, **values)  # type: ignore[arg-type]


def test_worker_reads_dlms_meters_and_catches_up_their_profile_exactly(tmp_path: Path) -> None:
    keys = tmp_path / "D18.keys"
    keys.write_text('password = "s3cret"\n')
    meters = [
        dlms_meter("D17", 17),  # the public client, no authentication
        dlms_meter("D18", 18, client_address=1, auth="low", keys_file=keys),
    ]
    simulated = [parse_meter("17:days=1"), parse_meter("18:days=1,password=s3cret")]
    with PtyPair(tmp_path, "D") as pair, SimulatedDlmsBus(simulated, port=pair.peer):
        rig = Rig(tmp_path, pair.device, meters)
        rig.worker.start()
        assert rig.wait_for_slots("D18", 98, timeout=30)  # 96 profile intervals + 2 register slots
        rig.halt()
    for meter in ("D17", "D18"):
        readings = rig.readings(meter)
        profile = sorted(r.timestamp for r in readings if r.reading_type == PROFILE_A_PLUS_KWH)
        # The first poll read every interval the meter holds; later polls only what was new: never twice.
        assert len(profile) == len(set(profile)) >= 96
        assert all(b - a == timedelta(minutes=15) for a, b in pairwise(profile))
        energy = [
            r.value
            for r in sorted(readings, key=lambda r: r.timestamp)
            if r.reading_type == PROFILE_A_PLUS_KWH
        ]
        assert energy == sorted(energy) and energy[0] > 0
        registers = [r for r in readings if r.reading_type == REGISTER_A_PLUS_KWH]
        assert registers and registers[-1].value >= energy[-1]
        # The event log: every entry once, however many polls read it, with the CIM type of its code.
        events = rig.events(meter)
        assert [e.event_type for e in events] == ["3.26.0.85", "3.26.0.216", "0.12.141.212", "0.12.141.16"]
        assert [dict(e.details)["dlmsEventCode"] for e in events] == ["1", "2", "44", "45"]
    assert all(row["attempts"] == row["successes"] for row in rig.stats())  # not one failure


def test_a_gap_in_the_profile_is_read_again_exactly(tmp_path: Path) -> None:
    """After an outage the store lacks the newest intervals: the next poll reads just those."""
    with PtyPair(tmp_path, "G") as pair, SimulatedDlmsBus([parse_meter("17:days=1")], port=pair.peer):
        rig = Rig(tmp_path, pair.device, [dlms_meter("D17", 17)])
        rig.worker.start()
        assert rig.wait_for_slots("D17", 97, timeout=30)
        rig.halt()
        before = {
            (r.reading_type, r.timestamp, r.value) for r in rig.readings("D17") if r.reading_type.is_interval
        }
        newest = sorted({stamp for _, stamp, _ in before})[-10:]
        store = Store(rig.path)
        with store.transaction() as conn:  # the hole an outage of the HES leaves
            holed = conn.execute("DELETE FROM readings WHERE ts >= ?", (int(newest[0].timestamp()),)).rowcount
        store.close()
        assert holed >= 10 * 2  # ten quarter hours of two channels (and the register slots) are gone
        rig = Rig(tmp_path, pair.device, [dlms_meter("D17", 17)])
        rig.worker.start()
        assert rig.wait_for_slots("D17", 97, timeout=30)
        rig.halt()
    after = {
        (r.reading_type, r.timestamp, r.value) for r in rig.readings("D17") if r.reading_type.is_interval
    }
    assert before <= after  # every interval the meter holds is back, with the same value


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 5), (1, 5), (2, 10), (3, 20), (4, 40), (6, 60), (200, 60)],
)
def test_backoff_doubles_per_failure_up_to_its_cap(failures: int, delay: int) -> None:
    assert backoff_delay(5, failures, 60) == delay
    assert backoff_delay(900, failures, 60) == 900  # never more often than the meter's own interval


def test_a_failing_meter_is_backed_off_and_comes_back_by_itself(tmp_path: Path) -> None:
    meters = [meter_spec("M1", 1, "sdm630", 1), meter_spec("M2", 2, "generic-wh32", 1)]
    with PtyPair(tmp_path, "B") as pair:
        simulator = SimulatedModbusBus(pair.peer, [(1, "sdm630")]).start()  # M2 is not wired yet
        rig = Rig(tmp_path, pair.device, meters)
        rig.worker.start()
        assert rig.wait_for_slots("M1", 7, timeout=20)
        tried = {row["mrid"]: row["attempts"] for row in rig.stats()}
        # In the time M1 was read 7 times, M2 was tried at 0, +1, +2, +4 s: backed off, not hammered.
        assert 2 <= tried["M2"] <= 5 < tried["M1"]
        simulator.stop()
        with SimulatedModbusBus(pair.peer, [(1, "sdm630"), (2, "generic-wh32")]):  # now it answers
            assert rig.wait_for_slots("M2", 2, timeout=20)
        rig.halt()
    back = {row["mrid"]: row for row in rig.stats()}["M2"]
    assert back["consecutive_failures"] == 0 and back["successes"] >= 2 and back["timeouts"] >= 2
