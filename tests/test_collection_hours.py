"""Hours of unattended collection on two buses in a minute: simulated time runs 150 times as fast for
the HES and for the simulated meters alike (`appliance/sim/simtime.py`).

Each bus is a multidrop line with 8 DLMS meters (in CET with EU summer time) and 8 Modbus meters,
plus one silent meter of each protocol. On bus A one DLMS meter's clock drifts fast; on bus B a
Modbus meter's 32-bit Wh counter rolls over. The run crosses the EU summer-time change at 01:00 UTC
on 29 March 2026 (a second, shorter run crosses the leap day of 2028), and every reading, flag and
event is checked afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from pathlib import Path

import pytest

from appliance.collect.collector import Collector
from appliance.collect.meter_time import CLOCK_SET
from appliance.collect.meters.catalog import PROFILE_A_PLUS_KWH, REGISTER_A_PLUS_KWH
from appliance.collect.quality import CLOCK_ERROR, OVERFLOW
from appliance.config import Config, bus_total_id, load_config
from appliance.housekeeping import Housekeeping
from appliance.model import Event, Protocol, Reading, ReadingType
from appliance.sim import simtime
from appliance.sim.dlms_meter import SimulatedDlmsBus, parse_meter
from appliance.sim.modbus_meter import SimulatedModbusBus, import_kwh
from appliance.sim.multidrop import MultidropLine
from appliance.store import Store
from appliance.store.events import events_of
from appliance.store.readings import readings_between
from appliance.store.registry import register_config_meters
from appliance.store.stats import meter_stats
from tests.conftest import REPO, meter_spec, write_config

pytestmark = pytest.mark.slow

NO_TLS = REPO / "tests" / "data" / "no-tls.toml"
RATE = 150.0  # simulated seconds per wall-clock second
SLOT = timedelta(minutes=15)
DLMS_ADDRESSES = range(17, 25)
MODBUS_UNITS = range(1, 9)
SILENT_DLMS, SILENT_MODBUS = 40, 9
DRIFTING = ("A", 17)  # 5000 ppm fast: 18 s an hour, corrected at the hourly clock check
ROLLOVER = ("B", 5)  # a generic-wh32 meter whose Wh counter wraps 75 minutes into the run
WRAP_AFTER = timedelta(minutes=75)


@dataclass(frozen=True)
class Scenario:
    start: datetime
    hours: float
    buses: tuple[str, ...]
    dlms: int  # DLMS meters per bus (the first of DLMS_ADDRESSES)
    modbus: int


DST = Scenario(datetime(2026, 3, 29, 0, 0, tzinfo=UTC), 2.5, ("A", "B"), 8, 8)
LEAP_DAY = Scenario(datetime(2028, 2, 29, 23, 15, tzinfo=UTC), 1.25, ("A",), 2, 2)


def modbus_model(bus: str, unit: int) -> str:
    return "generic-wh32" if unit % 2 or (bus, unit) == ROLLOVER else "sdm630"


class Run:
    """The collector on the buses of `scenario`, in simulated time, for `scenario.hours`."""

    def __init__(self, tmp_path: Path, scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> None:
        self.scenario = scenario
        self.real0 = time.time() + 1.0
        monkeypatch.setenv(simtime.ENVIRONMENT, simtime.spec(self.real0, scenario.start.timestamp(), RATE))
        self.clock = simtime.SimulatedClock(self.real0, scenario.start.timestamp(), RATE)
        self.lines = {bus: MultidropLine(tmp_path, bus, ["modbus", "dlms"]) for bus in scenario.buses}
        self.meters = []
        self.keys = tmp_path / "drifting.keys"
        self.keys.write_text('password = "s3cret"\n')
        text = f'[hes]\ndata_dir = "{tmp_path}"\n'
        text += "[schedule_defaults]\nregisters_s = 900\n"
        text += (
            "[schedules.dlms-generic]\nregisters_s = 3600\nprofile_s = 900\nevents_s = 3600\nclock_s = 3600\n"
        )
        text += "[aggregation]\ngrace_s = 900\n"
        for bus in ("A", "B"):
            if bus in scenario.buses:
                text += f'[buses.{bus}]\ndevice = "{self.lines[bus].device}"\ntimeout_ms = 300\nretries = 1\n'
            else:
                text += f"[buses.{bus}]\nenabled = false\n"
        for bus in scenario.buses:
            for address in [*DLMS_ADDRESSES[: scenario.dlms], SILENT_DLMS]:
                meter = meter_spec(f"{bus}-D{address}", address, "dlms-generic", 0, bus, Protocol.DLMS)
                if (bus, address) == DRIFTING:  # the management client, which may set the clock
                    meter = replace(meter, client_address=1, auth="low", keys_file=self.keys)
                self.meters.append(meter)
            for unit in [*MODBUS_UNITS[: scenario.modbus], SILENT_MODBUS]:
                self.meters.append(meter_spec(f"{bus}-M{unit}", unit, modbus_model(bus, unit), 0, bus))
        self.config: Config = load_config(NO_TLS, write_config(tmp_path / "hours.toml", text))
        self.path = self.config.store_path

    def simulators(self, bus: str, seed: int) -> list:
        dlms = []
        for address in DLMS_ADDRESSES[: self.scenario.dlms]:
            drift = ",drift=5000,password=s3cret" if (bus, address) == DRIFTING else ""
            dlms.append(parse_meter(f"{address}:tz=60,dst=1,days=1{drift}", seed=seed))
        modbus = []
        for unit in MODBUS_UNITS[: self.scenario.modbus]:
            if (bus, unit) == ROLLOVER:
                wrap_at = (self.scenario.start + WRAP_AFTER).timestamp()
                modbus.append((unit, "generic-wh32", 2**32 / 1000 - import_kwh(unit, wrap_at, seed)))
            else:
                modbus.append((unit, modbus_model(bus, unit)))
        line = self.lines[bus]
        return [
            SimulatedModbusBus(line.drop("modbus"), modbus, seed=seed),
            SimulatedDlmsBus(dlms, port=line.drop("dlms")),
        ]

    def collect(self) -> None:
        """Start everything, let simulated time run its hours, stop; then make the totals."""
        store = Store(self.path)
        register_config_meters(store, self.meters, 0)
        stop = threading.Event()
        housekeeping = Housekeeping(self.config, self.clock)
        collector = Collector(
            self.config, store, lambda: Store(self.path), self.clock, housekeeping, lambda: None, stop
        )
        peers = []
        try:
            for seed, bus in enumerate(self.scenario.buses):
                peers.append(self.lines[bus].start())
                peers += [peer.start() for peer in self.simulators(bus, seed)]
            time.sleep(max(0.0, self.real0 - time.time()))
            collector.start()
            time.sleep(self.scenario.hours * 3600 / RATE + 0.5)
        finally:
            self.stopping = self.clock.now()  # the shutdown below takes real seconds: simulated minutes
            stop.set()
            for worker in collector.workers.values():
                worker.join(timeout=10)
            for peer in reversed(peers):
                peer.stop()
        housekeeping.sweep(store)
        store.close()
        self.end = self.clock.now()

    def readings(self, meter: str, reading_type: ReadingType | None = None) -> list[Reading]:
        with read_only(self.path) as store:
            found = readings_between(store, meter, 0, 2**40)
        return [r for r in found if reading_type is None or r.reading_type == reading_type]

    def events(self, meter: str) -> list[Event]:
        with read_only(self.path) as store:
            return events_of(store, meter)


@contextmanager
def read_only(path: Path) -> Iterator[Store]:
    store = Store(path, readonly=True)
    try:
        yield store
    finally:
        store.close()


def slots(start: datetime, end: datetime) -> list[datetime]:
    """The 15-minute slot starts from the one holding `start` to the last one that began before `end`."""
    first = datetime.fromtimestamp(start.timestamp() // 900 * 900, UTC)
    out = []
    while first < end:
        out.append(first)
        first += SLOT
    return out


@pytest.mark.parametrize("scenario", [DST, LEAP_DAY], ids=["dst-change", "leap-day"])
def test_hours_of_collection_on_two_buses(
    tmp_path: Path, scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(tmp_path, scenario, monkeypatch)
    run.collect()
    expected_slots = slots(scenario.start, run.end - timedelta(minutes=1))  # the last one may be in flight
    # What must be there: the slots due before the collection was told to stop (the shutdown takes
    # real seconds, each 150 simulated ones, in which polls may or may not finish).
    due_slots = slots(scenario.start, run.stopping - timedelta(minutes=1))
    with read_only(run.path) as store:
        stats = {row["mrid"]: row for row in meter_stats(store)}

    for bus in scenario.buses:
        for address in DLMS_ADDRESSES[: scenario.dlms]:
            meter = f"{bus}-D{address}"
            profile = run.readings(meter, PROFILE_A_PLUS_KWH)
            stamps = [r.timestamp for r in profile]
            # A day of intervals from the first poll's catch-up, then every new one: on the UTC grid,
            # none missing, none twice, across the change to summer time and the leap day alike.
            assert len(stamps) == len(set(stamps)) >= 96
            assert all(b - a == SLOT for a, b in pairwise(stamps)), meter
            assert stamps[-1] >= due_slots[-2]
            assert [r.value for r in profile] == sorted(r.value for r in profile)  # cumulative
            # Hourly registers, stamped with their slot and read a little after it: never behind the
            # profile interval the meter closed at that slot.
            registers = run.readings(meter, REGISTER_A_PLUS_KWH)
            closed = {r.timestamp: r.value for r in profile}
            assert registers and all(r.value >= closed.get(r.timestamp, 0) for r in registers)
            assert [e.event_type for e in run.events(meter)][:4] == [
                "3.26.0.85",
                "3.26.0.216",
                "0.12.141.212",
                "0.12.141.16",
            ]
            if (bus, address) != DRIFTING:
                assert not any(r.qualities for r in profile), meter
        for unit in MODBUS_UNITS[: scenario.modbus]:
            meter = f"{bus}-M{unit}"
            energy = run.readings(meter, REGISTER_A_PLUS_KWH)
            # One reading per 15-minute slot, stamped with the slot's start.
            assert [r.timestamp for r in energy] == expected_slots[: len(energy)]
            assert len(energy) >= len(due_slots) - 1, meter
            if (bus, unit) == ROLLOVER:
                flagged = [r for r in energy if OVERFLOW in r.qualities]
                assert [r.timestamp for r in flagged] == [
                    next(s for s in expected_slots if s >= scenario.start + WRAP_AFTER)
                ]
                before = [r.value for r in energy if r.timestamp < flagged[0].timestamp]
                assert before[-1] > Decimal(4_294_000) and flagged[0].value < Decimal(1000)
            else:
                assert [r.value for r in energy] == sorted(r.value for r in energy)
                assert not any(r.qualities for r in energy), meter
        for silent in (f"{bus}-D{SILENT_DLMS}", f"{bus}-M{SILENT_MODBUS}"):
            assert run.readings(silent) == []
            # Tried, timed out, and backed off rather than polled every slot.
            assert 1 <= stats[silent]["attempts"] == stats[silent]["timeouts"] < len(expected_slots)

    if DRIFTING[0] in scenario.buses and scenario is DST:
        meter = f"{DRIFTING[0]}-D{DRIFTING[1]}"
        corrections = [e for e in run.events(meter) if e.event_type == CLOCK_SET]
        assert corrections, "the drifting meter was never corrected"
        # The meter logs the adjustment itself (old time, new time) and reports it on the next read.
        logged = [e.event_type for e in run.events(meter)]
        assert "0.36.116.14" in logged and "0.36.116.24" in logged
        flagged = [r for r in run.readings(meter, PROFILE_A_PLUS_KWH) if CLOCK_ERROR in r.qualities]
        # 18 s an hour: off by more than the tolerance at every hourly check, and corrected each time;
        # the intervals read in a poll that found the clock off say so, the others do not.
        assert len(corrections) >= 2
        assert flagged and all(r.timestamp <= corrections[-1].created for r in flagged)
        assert len(flagged) < len(run.readings(meter, PROFILE_A_PLUS_KWH))

    # Totals per bus: derived, the sum of what the bus's meters said for the slot, and partial,
    # since the bus's silent DLMS meter never reported.
    for bus in scenario.buses:
        totals = run.readings(bus_total_id(run.config.hes.id, bus), PROFILE_A_PLUS_KWH)
        assert len(totals) >= len(due_slots) - 4
        assert all({"2.11.0", "2.4.2"} <= set(t.qualities) for t in totals)
        members = [f"{bus}-D{a}" for a in DLMS_ADDRESSES[: scenario.dlms]]
        for total in totals:
            values = [
                next(r.value for r in run.readings(m, PROFILE_A_PLUS_KWH) if r.timestamp == total.timestamp)
                for m in members
            ]
            assert total.value == sum(values)
