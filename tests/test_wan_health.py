"""WAN health and the recovery ladder: the pure ladder, then every rung against the simulated modem
behind a real pty and a real Mosquitto that goes away and comes back, alarms received by an MDM."""

from __future__ import annotations

import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from appliance import status
from appliance.clock import Clock
from appliance.config import Config, load_config
from appliance.housekeeping import Housekeeping
from appliance.hw.gpio import FakeGpio
from appliance.hw.modem import Modem
from appliance.model import Event
from appliance.sim.broker import Mosquitto
from appliance.sim.mdm import MdmListener
from appliance.sim.modem import SimulatedModem, Wiring
from appliance.sim.ptys import PtyPair
from appliance.store import open_store
from appliance.store.outbox import pending_messages
from appliance.uplink import cim
from appliance.uplink.health import (
    MODEM_RESET,
    RECOVERY_CAPPED,
    WAN_LOST,
    WAN_RESTORED,
    HealthMonitor,
    RecoveryLadder,
    Rung,
    Step,
    WanState,
)
from appliance.uplink.mqtt import MqttLink
from appliance.uplink.outbox import OutboxPump

POWER_PIN, RESET_PIN = 5, 6
ALL_RUNGS = frozenset(Rung)

# --- the ladder, pure -------------------------------------------------------------------------------


def ladder(**changes: Any) -> RecoveryLadder:
    values: dict[str, Any] = {
        "down_after_s": 60,
        "rung_wait_s": 100,
        "backoff_max_s": 1000,
        "max_resets_per_day": 6,
        "available": ALL_RUNGS,
    }
    return RecoveryLadder(**(values | changes))


def actions(subject: RecoveryLadder, times: range, blocker: str | None = None) -> list[tuple[int, Rung]]:
    """The rungs climbed while the link stays down at each of `times`."""
    return [(t, step.action) for t in times if (step := subject.observe(t, False, blocker)).action]


def test_the_ladder_waits_for_mqtt_then_climbs_one_rung_per_wait() -> None:
    subject = ladder()
    assert subject.observe(0, False) == Step()  # lost: MQTT reconnects by itself first
    assert subject.observe(59, False) == Step()
    first = subject.observe(60, False)
    assert first == Step(lost=True, action=Rung.RECONNECT)
    assert actions(subject, range(61, 400)) == [
        (160, Rung.REATTACH),
        (260, Rung.MODEM_RESET),
        (360, Rung.POWER_CYCLE),
    ]
    assert subject.observe(400, True) == Step(restored_after_s=400, rungs=tuple(Rung))
    assert subject.observe(401, True) == Step()


def test_a_short_blip_raises_no_alarm() -> None:
    subject = ladder()
    assert subject.observe(0, False) == Step()
    assert subject.observe(30, True) == Step()  # never declared lost, so never "restored" either


def test_after_the_top_rung_the_ladder_starts_again_with_doubling_waits_up_to_the_cap() -> None:
    subject = ladder(available=frozenset({Rung.RECONNECT}))
    climbed = [t for t, _ in actions(subject, range(0, 3000))]
    # 60: first climb; then waits of 100 (the rung's), 200, 400, 800, then 1000 (backoff_max_s).
    assert climbed[:5] == [60, 60 + 100 + 200, 360 + 100 + 400, 860 + 100 + 800, 1760 + 100 + 1000]


def test_resets_are_capped_per_day_so_a_wrong_apn_never_becomes_a_reset_loop() -> None:
    subject = ladder(max_resets_per_day=2, backoff_max_s=100)
    steps = {t: subject.observe(t, False) for t in range(0, 86400 + 2000, 10)}
    disruptive = [t for t, s in steps.items() if s.action in (Rung.MODEM_RESET, Rung.POWER_CYCLE)]
    first_day = [t for t in disruptive if t < 86400]
    assert first_day == [260, 360]
    capped = [t for t, s in steps.items() if s.capped]
    assert [t for t in capped if t < 86400] == [760]  # one alarm, not one per climb
    assert sum(s.action is Rung.RECONNECT for t, s in steps.items() if t < 86400) > 100  # gentle go on
    # A day after the first reset the cap frees them again, and a new alarm comes when it is hit again.
    assert disruptive[2:4] == [t for t in disruptive if t >= 260 + 86400][:2]
    assert len(capped) == 2 and subject.capped


def test_no_reset_can_cure_a_missing_sim_so_none_is_tried() -> None:
    subject = ladder()
    climbed = actions(subject, range(0, 2000), blocker="SIM not inserted")
    assert {rung for _, rung in climbed} == {Rung.RECONNECT, Rung.REATTACH}


# --- the monitor against real peers ----------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(interval)
    return predicate()


# The re-attach hook: like `nmcli connection up`, it returns once the network is there. It leaves a
# flag (the test brings the broker back on seeing it) and waits for the broker's port.
HOOK = """
import pathlib, socket, sys, time
pathlib.Path(sys.argv[1]).write_text("attached")
deadline = time.monotonic() + 4
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=0.2).close()
        break
    except OSError:
        time.sleep(0.05)
"""


class WanRig:
    """Broker, modem on a pty (power on a supply switch, a reset line), link, outbox and monitor."""

    def __init__(self, tmp_path: Path, **sections: dict[str, Any]) -> None:
        self.broker = Mosquitto(tmp_path / "broker")
        self.pty = PtyPair(tmp_path, "modem")
        self.flag = tmp_path / "attached"
        hook = tmp_path / "reattach.py"
        hook.write_text(HOOK)
        settings: dict[str, dict[str, Any]] = {
            "hes": {"id": "hes-wan", "data_dir": str(tmp_path / "data")},
            # paho's own retry comes too late for these tests: only the ladder brings the link back.
            "mqtt": {"host": self.broker.host, "port": self.broker.port, "tls": False, "keepalive_s": 5}
            | {"reconnect_min_s": 120, "reconnect_max_s": 120},
            "uplink": {"scan_interval_s": 0.2},
            "modem": {
                "enabled": True,
                "device": str(self.pty.device),
                "gpio": "fake",
                "power_pin": POWER_PIN,
                "power_kind": "enable",
                "reset_pin": RESET_PIN,
                "command_timeout_s": 0.5,
                "reset_s": 0.05,
                "power_off_s": 0.2,
                "boot_s": 0.6,
            },
            "wan": {
                "check_interval_s": 0.2,
                "ping_timeout_s": 1,
                "down_after_s": 0.5,
                "rung_wait_s": 2,
                "attach_command": f"{sys.executable} {hook} {self.flag} {self.broker.port}",
                "attach_timeout_s": 5,
                "backoff_max_s": 4,
                "interface": "lo",
            },
        }
        for name, values in sections.items():
            settings[name] = settings.get(name, {}) | values
        (tmp_path / "data").mkdir()
        config_file = tmp_path / "hes.toml"
        config_file.write_text(tomli_w.dumps(settings))
        self.config: Config = load_config(config_file)
        self.gpio = FakeGpio()
        self.modem = Modem(self.config.modem, self.gpio)  # switches the supply on
        self.sim = SimulatedModem(
            self.pty.peer,
            gpio=self.gpio,
            wiring=Wiring(POWER_PIN, self.config.modem.power_kind, RESET_PIN),
            boot_s=0.2,
        )
        self.stop = threading.Event()
        clock = Clock()
        self.link = MqttLink(self.config, queue.Queue())
        self.pump = OutboxPump(
            self.config, self.open_store, self.link, clock, Housekeeping(self.config, clock), self.stop
        )
        self.monitor = HealthMonitor(self.config, self.link, self.modem, self.open_store, clock, self.stop)
        self.mdm = MdmListener(self.broker.host, self.broker.port, self.config.topic())

    def open_store(self) -> Any:
        return open_store(self.config)

    def __enter__(self) -> WanRig:
        self.broker.start()
        self.pty.start()
        self.sim.start()
        self.mdm.start()
        self.link.start()
        self.pump.start()
        self.monitor.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in (self.monitor, self.pump):
            thread.join(timeout=10)
        self.link.stop()
        self.mdm.stop()
        self.sim.stop()
        self.pty.stop()
        self.broker.stop()

    def wan(self) -> dict[str, Any]:
        return self.monitor.snapshot()

    def alarms(self) -> list[Event]:
        """The HES's own events as the MDM received them."""
        return [e for m in self.mdm.snapshot() for e in m.events if e.device_id == "hes-wan"]

    def stored_alarms(self) -> list[Event]:
        """The alarms waiting in the outbox for the link."""
        store = self.open_store()
        try:
            messages = pending_messages(store, 100)
        finally:
            store.close()
        return [e for m in messages for e in cim.read_end_device_events(cim.parse_xml(m.payload))]


def test_a_healthy_link_shows_signal_registration_operator_and_round_trip(tmp_path: Path) -> None:
    with WanRig(tmp_path) as rig:
        assert wait_for(lambda: rig.wan()["state"] == "up" and rig.wan()["mqtt"]["rtt_ms"] is not None, 10)
        wan = rig.wan()
        assert rig.monitor.state is WanState.UP and wan["problem"] is None
        modem = wan["modem"]
        assert (modem["csq"], modem["rssi_dbm"], modem["registered"]) == (20, -73, True)
        assert (modem["operator"], modem["technology"], modem["imei"]) == ("SimTel", "LTE", rig.sim.imei)
        assert modem["registration"]["eps"] == "home"
        assert wan["mqtt"]["connected"] and wan["mqtt"]["reconnects"] == 0
        assert wan["bytes"]["received"] > 0 and wan["bytes"]["sent"] > 0
        document = status.snapshot(
            rig.config,
            store := rig.open_store(),
            Clock(),
            connected=True,
            drain_rate=0,
            published=0,
            acknowledged=0,
            wan=wan,
        )
        store.close()
        assert document["wan"]["state"] == "up"
        line = next(x for x in status.format_status(document).splitlines() if x.startswith("wan:"))
        assert "up, LTE SimTel, CSQ 20 (-73 dBm), home" in line and "0 reconnects" in line
        assert rig.sim.at_resets == rig.sim.reset_pulses == 0


@pytest.mark.parametrize("rung", list(Rung), ids=lambda r: r.name.lower())
def test_each_rung_of_the_ladder_brings_the_link_back(tmp_path: Path, rung: Rung) -> None:
    with WanRig(tmp_path) as rig:
        sim = rig.sim
        cures = {
            Rung.RECONNECT: lambda: True,
            Rung.REATTACH: rig.flag.exists,
            Rung.MODEM_RESET: lambda: sim.at_resets > 0,
            Rung.POWER_CYCLE: lambda: sim.power_ons > 0,
        }
        assert wait_for(lambda: rig.wan()["state"] == "up", 10)
        rig.broker.stop()
        assert wait_for(lambda: not rig.link.connected.is_set(), 5)
        assert wait_for(cures[rung], 15), rig.wan()
        rig.broker.start()
        assert wait_for(lambda: rig.wan()["state"] == "up", 10), rig.wan()
        assert wait_for(lambda: WAN_RESTORED in {a.event_type for a in rig.alarms()}, 10)
        climbed = list(Rung)[: list(Rung).index(rung) + 1]
        restored = next(a for a in rig.alarms() if a.event_type == WAN_RESTORED)
        assert dict(restored.details)["recovery"] == ", ".join(r.value for r in climbed)
        lost = next(a for a in rig.alarms() if a.event_type == WAN_LOST)
        # CIM times are whole seconds: a recovery within the second of the loss has the same time.
        assert dict(lost.details)["cause"] == "MQTT disconnected" and lost.created <= restored.created
        resets = [dict(a.details)["method"] for a in rig.alarms() if a.event_type == MODEM_RESET]
        expected = {
            Rung.RECONNECT: [],
            Rung.REATTACH: [],
            Rung.MODEM_RESET: ["AT+CFUN=1,1"],
            Rung.POWER_CYCLE: ["AT+CFUN=1,1", "power cycle"],
        }
        assert resets == expected[rung]
        assert rig.wan()["mqtt"]["reconnects"] >= 1
        assert (sim.at_resets, sim.power_ons) == (len(resets) >= 1, len(resets) == 2)
        assert rig.wan()["modem"]["registered"]  # set up again after its reboot


def test_a_hung_modem_is_reset_through_its_reset_line(tmp_path: Path) -> None:
    with WanRig(tmp_path, wan={"attach_command": ""}) as rig:
        assert wait_for(lambda: rig.wan()["state"] == "up", 10)
        rig.broker.stop()
        rig.sim.silent = True  # hung: AT+CFUN=1,1 goes unanswered
        assert wait_for(lambda: rig.sim.reset_pulses > 0, 15), rig.wan()
        rig.broker.start()
        assert wait_for(lambda: rig.wan()["state"] == "up", 10), rig.wan()
        assert rig.sim.at_resets == 0 and rig.sim.power_ons == 0
        assert wait_for(lambda: MODEM_RESET in {a.event_type for a in rig.alarms()}, 10)
        reset = next(a for a in rig.alarms() if a.event_type == MODEM_RESET)
        assert dict(reset.details)["method"] == "reset line"


def test_with_the_cap_used_up_only_the_gentle_rungs_run_and_the_mdm_hears_why(tmp_path: Path) -> None:
    # The broker stays away as it would behind a wrong APN: the modem is registered, data never flows.
    cap = {"max_resets_per_day": 1, "rung_wait_s": 1, "backoff_max_s": 2, "attach_command": ""}
    with WanRig(tmp_path, wan=cap) as rig:
        assert wait_for(lambda: rig.wan()["state"] == "up", 10)
        rig.broker.stop()
        assert wait_for(lambda: rig.wan()["recovery"]["capped"], 15), rig.wan()
        assert wait_for(lambda: rig.wan()["recovery"]["rungs_taken"].count("reconnect MQTT") >= 3, 20)
        assert rig.wan()["state"] == "down"
        assert (rig.sim.at_resets, rig.sim.power_ons, rig.sim.reset_pulses) == (1, 0, 0)
        stored = [a.event_type for a in rig.stored_alarms()]
        assert stored == [WAN_LOST, MODEM_RESET, RECOVERY_CAPPED]
        rig.broker.start()  # the APN was fixed
        assert wait_for(lambda: rig.wan()["state"] == "up", 15), rig.wan()
        assert wait_for(lambda: len(rig.alarms()) == 4, 10)
        assert {a.event_type for a in rig.alarms()} == {WAN_LOST, MODEM_RESET, RECOVERY_CAPPED, WAN_RESTORED}
        assert rig.wan()["recovery"]["resets_24h"] == 1


def test_without_a_sim_the_link_is_down_and_no_reset_is_tried(tmp_path: Path) -> None:
    with WanRig(tmp_path, wan={"rung_wait_s": 1, "attach_command": "true"}) as rig:
        assert wait_for(lambda: rig.wan()["state"] == "up", 10)
        rig.sim.sim = "absent"
        rig.broker.stop()
        assert wait_for(lambda: rig.wan()["state"] == "down", 10), rig.wan()
        assert rig.wan()["problem"] == "SIM not inserted"
        assert wait_for(lambda: rig.wan()["recovery"]["rungs_taken"].count("re-attach data") >= 2, 15)
        assert (rig.sim.at_resets, rig.sim.power_ons, rig.sim.reset_pulses) == (0, 0, 0)
        lost = next(a for a in rig.stored_alarms() if a.event_type == WAN_LOST)
        assert (
            dict(lost.details)["cause"] == "SIM not inserted" and dict(lost.details)["sim"] == "not inserted"
        )
        rig.sim.sim = "ready"
        rig.broker.start()
        assert wait_for(lambda: rig.wan()["state"] == "up", 15), rig.wan()


def test_a_half_open_link_is_found_by_unanswered_pings_and_reconnected(tmp_path: Path) -> None:
    # A frozen broker keeps its TCP connections open but answers nothing: the typical cellular failure,
    # where the connection looks up until its keepalive runs out.
    with WanRig(tmp_path, wan={"ping_timeout_s": 0.5}) as rig:
        assert wait_for(lambda: rig.wan()["state"] == "up", 10)
        broker = rig.broker._process
        assert broker is not None
        broker.send_signal(signal.SIGSTOP)
        try:
            assert wait_for(lambda: "reconnect MQTT" in rig.wan()["recovery"]["rungs_taken"], 10), rig.wan()
        finally:
            broker.send_signal(signal.SIGCONT)
        assert wait_for(lambda: rig.wan()["state"] == "up", 10), rig.wan()
        assert wait_for(lambda: WAN_RESTORED in {a.event_type for a in rig.alarms()}, 10)
        lost = next(a for a in rig.alarms() if a.event_type == WAN_LOST)
        assert dict(lost.details)["cause"] == "MQTT connected but pings unanswered"
        assert rig.sim.at_resets == 0


def test_a_modem_behind_a_power_key_is_switched_on_when_it_stays_silent(tmp_path: Path) -> None:
    with WanRig(tmp_path, modem={"power_kind": "pwrkey", "pwrkey_s": 0.1}) as rig:
        assert not rig.sim.powered  # a power key leaves the modem off until it is pressed
        assert wait_for(lambda: rig.sim.powered, 5)
        assert wait_for(lambda: (rig.wan()["modem"] or {}).get("registered"), 5), rig.wan()
        assert rig.sim.power_ons == 1
        assert [level for _, level in rig.gpio.changes(POWER_PIN)] == [False, True, False]
