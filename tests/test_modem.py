"""The AT layer (pure) and the modem driver against the simulated modem behind a real pty."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.config import ModemSection
from appliance.errors import DeviceError, DeviceTimeout
from appliance.hw import at
from appliance.hw.gpio import FakeGpio
from appliance.hw.modem import RESET_COMMAND, Modem, ModemStatus
from appliance.sim.modem import EC25, SimulatedModem, Wiring
from appliance.sim.ptys import PtyPair

POWER_PIN, RESET_PIN = 5, 6


def wait_for(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll `predicate` until true or `timeout` passes (the simulator follows its lines every 20 ms)."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def modem_section(device: Path, **changes: object) -> ModemSection:
    """The template's [modem] with short timings for a simulated modem."""
    section = ModemSection(
        enabled=True,
        device=str(device),
        baud=115200,
        apn="",
        command_timeout_s=1.0,
        gpio="fake",
        power_pin=-1,
        power_kind="pwrkey",
        reset_pin=-1,
        active_high=True,
        pwrkey_s=0.1,
        reset_s=0.05,
        power_off_s=0.1,
        boot_s=0.3,
    )
    return replace(section, **changes)


# --- the pure AT layer -------------------------------------------------------------------------


def test_an_answer_comes_through_echo_and_urcs_between_its_lines() -> None:
    session = at.AtSession()
    assert session.start("AT+CSQ") == b"AT+CSQ\r"
    stream = b"AT+CSQ\r\r\n+CEREG: 1\r\n+CSQ: 17,99\r\nRDY\r\n\r\nOK\r\n"
    answer = session.feed(stream)
    assert answer == at.Answer("AT+CSQ", ("+CSQ: 17,99",), True, "OK")
    assert session.take_urcs() == ["+CEREG: 1", "RDY"]
    assert not session.busy


def test_bare_answer_lines_are_told_apart_from_bare_urcs() -> None:
    session = at.AtSession()
    session.start("AT+CGSN")
    answer = session.feed(b"\r\nSMS DONE\r\n867584030123456\r\nPB DONE\r\n\r\nOK\r\n")
    assert answer is not None and at.digits(answer, 14) == "867584030123456"
    assert session.take_urcs() == ["SMS DONE", "PB DONE"]


def test_lines_without_a_command_are_urcs_and_a_late_answer_after_abandon_too() -> None:
    session = at.AtSession()
    assert session.feed(b"\r\nRING\r\n") is None
    session.start("AT+COPS?")
    session.abandon()  # the answer never came in time
    assert session.feed(b'+COPS: 0,0,"Late",7\r\nOK\r\n') is None
    assert session.take_urcs() == ["RING", '+COPS: 0,0,"Late",7', "OK"]


def test_cme_errors_say_what_is_wrong_with_the_sim() -> None:
    session = at.AtSession()
    session.start("AT+CPIN?")
    answer = session.feed(b"\r\n+CME ERROR: 10\r\n")
    assert answer is not None and not answer.ok
    assert answer.cme_error == 10 and answer.error_text == "SIM not inserted"
    assert at.parse_cpin(answer) is at.SimState.ABSENT
    session.start("AT+CPIN?")
    assert at.parse_cpin(session.feed(b"+CPIN: SIM PIN\r\nOK\r\n")) is at.SimState.PIN_REQUIRED
    session.start("AT+CPIN?")
    assert at.parse_cpin(session.feed(b"ERROR\r\n")) is at.SimState.UNKNOWN


@given(st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=40))
def test_the_answer_is_the_same_however_the_bytes_are_cut(cuts: list[int]) -> None:
    stream = b'AT+COPS?\r\r\n+CREG: 2\r\n+COPS: 0,0,"Vodafone.de",7\r\n\r\nSMS DONE\r\n\r\nOK\r\n'
    session = at.AtSession()
    session.start("AT+COPS?")
    answers, position = [], 0
    for size in cuts * (len(stream) // sum(cuts) + 1):
        answer = session.feed(stream[position : position + size])
        position += size
        if answer is not None:
            answers.append(answer)
        if position >= len(stream):
            break
    assert answers == [at.Answer("AT+COPS?", ('+COPS: 0,0,"Vodafone.de",7',), True, "OK")]
    assert session.take_urcs() == ["+CREG: 2", "SMS DONE"]


@pytest.mark.parametrize(
    ("text", "csq", "dbm"),
    [("0,0", 0, -113), ("31,99", 31, -51), ("18,99", 18, -77), ("99,99", None, None), ("", None, None)],
)
def test_csq_is_rssi_in_dbm(text: str, csq: int | None, dbm: int | None) -> None:
    signal = at.parse_csq(text)
    assert (signal.csq, signal.rssi_dbm) == (csq, dbm)


def test_cesq_registration_and_operator_parse_as_27_007_says() -> None:
    assert at.parse_cesq("99,99,255,255,20,40") == at.ExtendedSignal(-101, -10.0)
    assert at.parse_cesq("99,99,255,255,255,255") == at.ExtendedSignal(None, None)
    assert at.parse_registration("0,5") is at.Registration.ROAMING
    assert at.parse_registration('2,1,"1A2B","01C3D4E",7') is at.Registration.HOME
    assert at.parse_registration("0,3") is at.Registration.DENIED
    assert at.parse_registration("0,8") is at.Registration.NOT_SEARCHING  # emergency only: no data
    assert at.parse_registration("1") is None  # a URC's <stat> alone, not an answer
    assert at.parse_cops('0,0,"Telekom.de",7') == at.Operator("Telekom.de", "LTE")
    assert at.parse_cops("0") == at.Operator(None, None)
    assert at.parse_cops('0,2,"26201",9') == at.Operator("26201", "NB-IoT")


# --- the driver and the simulated modem ------------------------------------------------------------


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[PtyPair]:
    with PtyPair(tmp_path, "modem") as pair:
        yield pair


def test_a_healthy_modem_reports_identity_signal_registration_and_operator(pty: PtyPair) -> None:
    modem = Modem(modem_section(pty.device, apn="iot.example"), None)
    with SimulatedModem(pty.peer) as sim:
        sim.urc_noise = True  # an unsolicited +CEREG inside every answer
        status = modem.status()
        modem.close()
    assert status.responding and status.registered and status.blocker is None
    view = status.as_dict()
    assert view["sim"] == "ready"
    assert (view["csq"], view["rssi_dbm"]) == (20, -73)
    assert view["rsrp_dbm"] == -71 and view["rsrq_db"] == -10.0
    assert view["registration"] == {"cs": "home", "ps": "home", "eps": "home"}
    assert (view["operator"], view["technology"]) == ("SimTel", "LTE")
    assert modem.identity is not None
    assert (modem.identity.imei, modem.identity.imsi, modem.identity.iccid) == (sim.imei, sim.imsi, sim.iccid)
    assert modem.identity.manufacturer == "SIMCOM INCORPORATED"
    assert sim.apn == "iot.example"
    assert sim.commands[:2] == ["AT", "ATE0"]  # the modem booted with echo on; the driver coped


def test_a_quectel_modem_without_cesq_gives_its_iccid_through_qccid(pty: PtyPair) -> None:
    modem = Modem(modem_section(pty.device), None)
    with SimulatedModem(pty.peer, profile=EC25) as sim:
        first, second = modem.status(), modem.status()
        modem.close()
    assert first.extended is None and second.registered
    assert sim.commands.count("AT+CESQ") == 1  # refused once, never asked again
    assert modem.identity is not None and modem.identity.iccid == sim.iccid
    assert "AT+QCCID" in sim.commands


@pytest.mark.parametrize(
    ("change", "sim_state", "registered", "blocker"),
    [
        ({"sim": "absent"}, at.SimState.ABSENT, False, "SIM not inserted"),
        ({"sim": "pin"}, at.SimState.PIN_REQUIRED, False, "SIM PIN required"),
        ({"csq": 99, "registration": 2}, at.SimState.READY, False, None),
        ({"registration": 3}, at.SimState.READY, False, "registration denied by the network"),
        ({"registration": 5}, at.SimState.READY, True, None),
    ],
)
def test_sim_signal_and_registration_faults_are_reported(
    pty: PtyPair, change: dict, sim_state: at.SimState, registered: bool, blocker: str | None
) -> None:
    modem = Modem(modem_section(pty.device), None)
    with SimulatedModem(pty.peer) as sim:
        for name, value in change.items():
            setattr(sim, name, value)
        status = modem.status()
        modem.close()
    assert status.responding
    assert (status.sim, status.registered, status.blocker) == (sim_state, registered, blocker)
    if "csq" in change:
        assert status.signal is not None and status.signal.rssi_dbm is None
    if change.get("sim") == "absent":
        assert modem.identity is not None and modem.identity.imsi is None and modem.identity.iccid is None


def test_replies_that_never_come_cost_one_timeout_and_the_modem_is_found_again(pty: PtyPair) -> None:
    modem = Modem(modem_section(pty.device, command_timeout_s=0.5), None)
    with SimulatedModem(pty.peer) as sim:
        assert modem.status().responding
        sim.silent = True
        started = time.monotonic()
        assert modem.status() == ModemStatus(responding=False)
        assert time.monotonic() - started < 0.5 + 0.4  # one command's timeout, not one per query
        with pytest.raises(DeviceTimeout):
            modem.query("AT+CSQ")
        sim.silent = False
        assert modem.status().responding
        modem.close()


def test_an_at_reset_reboots_the_modem_and_the_driver_sets_it_up_again(pty: PtyPair) -> None:
    modem = Modem(modem_section(pty.device), None)
    with SimulatedModem(pty.peer, boot_s=0.3) as sim:
        assert modem.status().responding
        assert modem.reset() == RESET_COMMAND
        assert sim.at_resets == 1
        assert not modem.status().responding  # booting: deaf
        time.sleep(0.5)
        assert modem.status().registered
        modem.close()
    assert sim.commands.count("ATE0") == 2  # echo is back on after a reboot: switched off again


def test_a_hung_modem_is_reset_through_its_reset_line(pty: PtyPair) -> None:
    gpio = FakeGpio()
    section = modem_section(pty.device, reset_pin=RESET_PIN, command_timeout_s=0.3)
    modem = Modem(section, gpio)
    with SimulatedModem(pty.peer, gpio=gpio, wiring=Wiring(reset_pin=RESET_PIN)) as sim:
        sim.silent = True
        assert modem.reset() == "reset line"
        assert wait_for(lambda: sim.reset_pulses == 1)
        assert [level for _, level in gpio.changes(RESET_PIN)] == [False, True, False]
        assert Modem(modem_section(pty.device), None).gpio is None
        time.sleep(0.6)
        assert modem.status().registered
        modem.close()
    assert sim.reset_pulses == 1 and sim.at_resets == 0


def test_without_a_reset_line_a_hung_modem_cannot_be_reset(pty: PtyPair) -> None:
    modem = Modem(modem_section(pty.device, command_timeout_s=0.3), FakeGpio())
    with SimulatedModem(pty.peer) as sim:
        sim.silent = True
        with pytest.raises(DeviceError, match="no reset line"):
            modem.reset()
        modem.close()


def test_a_modem_behind_a_power_key_is_switched_on_and_power_cycled(pty: PtyPair) -> None:
    gpio = FakeGpio()
    modem = Modem(modem_section(pty.device, power_pin=POWER_PIN, command_timeout_s=0.3), gpio)
    wiring = Wiring(power_pin=POWER_PIN, power_kind="pwrkey")
    with SimulatedModem(pty.peer, gpio=gpio, wiring=wiring, boot_s=0.2) as sim:
        assert not sim.powered and not modem.status().responding
        modem.press_power_key()
        time.sleep(0.4)
        assert sim.powered and modem.status().registered
        modem.power_cycle()  # press (off), wait, press (on)
        time.sleep(0.4)
        assert modem.status().registered
        modem.close()
    assert sim.power_ons == 2
    assert [level for _, level in gpio.changes(POWER_PIN)] == [False] + [True, False] * 3


def test_a_modem_on_a_supply_switch_is_power_cycled(pty: PtyPair) -> None:
    gpio = FakeGpio()
    section = modem_section(pty.device, power_pin=POWER_PIN, power_kind="enable", power_off_s=0.2)
    modem = Modem(section, gpio)
    assert gpio.levels[POWER_PIN] is True  # a supply switch starts on
    wiring = Wiring(power_pin=POWER_PIN, power_kind="enable")
    with SimulatedModem(pty.peer, gpio=gpio, wiring=wiring, boot_s=0.2) as sim:
        assert modem.status().responding
        modem.power_cycle()
        assert wait_for(lambda: sim.power_ons == 1)
        off, on = gpio.changes(POWER_PIN)[1:]
        assert off[1] is False and on[1] is True and on[0] - off[0] >= 0.2
        time.sleep(0.4)
        assert modem.status().registered
        modem.close()


def test_no_power_line_means_no_power_cycle(pty: PtyPair) -> None:
    modem = Modem(modem_section(pty.device), FakeGpio())
    assert not modem.can_power_cycle
    with pytest.raises(DeviceError, match="no power line"):
        modem.power_cycle()
