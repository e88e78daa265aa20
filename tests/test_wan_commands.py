"""Commands to the meters that call over the WAN, end to end: the daemon with its listener, a simulated
meter dialling in over real TCP, and MDM requests through Mosquitto. A job runs on the meter's own
connection; while it is not connected the job waits for its call, until the request expires."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.collect.dlms.push import device_id
from appliance.sim.broker import free_port
from appliance.sim.dcu import DialingMeter, logical_name
from appliance.sim.dlms_objects import ControlState, MeterConfig
from appliance.sim.mdm import (
    MdmListener,
    control_payload,
    get_readings,
    meter_config_payload,
    reply_result,
    request_message,
    wrap_key,
)
from appliance.sim.substation import Substation
from tests.conftest import QUICK_UPLINK, CimSchemas, write_config

DISCONNECT, CONNECT = "3.31.0.23", "3.31.0.18"
WAN_METER = MeterConfig(1, seed=41, password=b"wan-pass")
KEK = bytes(range(16))
MRID = device_id(logical_name(WAN_METER))

CONFIG = QUICK_UPLINK + (
    """
[hes]
id = "hes-wan"


[listener]
enabled = true
bind = "127.0.0.1"
port = {port}
push_wait_s = 0.3
timeout_ms = 2000
idle_timeout_s = 60
auto_register = {auto_register}

[commands]
key_wrap_file = "{kek}"

[schedules.dlms-generic]
registers_s = 3600
profile_s = 3600
events_s = 3600
clock_s = 0

[[meters]]
id = "WAN-BUS-M1"
bus = "A"
address = 1
model = "generic-wh32"
"""
)


@pytest.fixture
def auto_register() -> str:
    return "true"


@pytest.fixture
def station(tmp_path: Path, auto_register: str) -> Iterator[tuple[Substation, int]]:
    port = free_port()
    kek = tmp_path / "kek.hex"
    kek.write_text(KEK.hex())
    kek.chmod(0o600)
    text = CONFIG.format(port=port, kek=kek, auto_register=auto_register)
    config = write_config(tmp_path / "hes.toml", text)
    with Substation(tmp_path / "run", config) as substation:
        yield substation, port


@pytest.fixture
def mdm(station: tuple[Substation, int]) -> Iterator[MdmListener]:
    substation, _ = station
    with substation.mdm() as client:
        substation.start_daemon()
        assert substation.wait_for(lambda: b'"online"' in (client.status or b""), 20)
        yield client
        substation.stop_daemon()


def control(mdm: MdmListener, code: str, expiry_s: int | None = None) -> str:
    message_id, xml = request_message("create", "EndDeviceControls", payload=control_payload(code, [MRID]))
    mdm.request("create", "EndDeviceControls", xml, expiry_s=expiry_s)
    return message_id


def relay_state(outcome_xml: bytes) -> str:
    return outcome_xml.split(b"<name>relayState</name><value>")[1].split(b"<")[0].decode()


def register_with_keys(mdm: MdmListener, verb: str) -> None:
    """MeterConfig for the WAN meter: the management client with its password, wrapped."""
    settings = {"bus": "wan", "clientAddress": "1", "auth": "low"}
    payload = meter_config_payload(
        [(MRID, "dlms-generic", settings)], {MRID: {"password": wrap_key(KEK, b"wan-pass")}}
    )
    request_id, xml = request_message(verb, "MeterConfig", payload=payload)
    mdm.request(verb, "MeterConfig", xml)
    _, outcome = mdm.wait_replies(request_id, 2)
    assert reply_result(outcome) == ("OK", []), reply_result(outcome)


def alarms(mdm: MdmListener) -> set[tuple[str, str]]:
    return {(e.device_id, e.event_type) for m in mdm.snapshot() for e in m.events}


def test_a_wan_meter_takes_commands_on_its_own_connection_and_when_it_calls_again(
    station: tuple[Substation, int], mdm: MdmListener, cim_schemas: CimSchemas
) -> None:
    substation, port = station
    meter = DialingMeter(port, WAN_METER)
    with meter:
        # Registered on its first call (auto_register): the MDM hears of it, then commands it.
        assert substation.wait_for(lambda: (MRID, "3.7.0.4") in alarms(mdm), 20)
        # Registered as the public client, it may be read but not switched: the meter says so.
        request_id = control(mdm, DISCONNECT)
        _, outcome = mdm.wait_replies(request_id, 2)
        assert (
            reply_result(outcome)[1][0][0] == "6.3" and "read-write-denied" in reply_result(outcome)[1][0][1]
        )
        assert meter.state.control_state == ControlState.CONNECTED
        # The MDM gives it the management client and its password; its connection takes them at once.
        register_with_keys(mdm, "change")
        request_id = control(mdm, DISCONNECT)
        ack, outcome = mdm.wait_replies(request_id, 2)
        assert reply_result(ack)[0] == "OK" and reply_result(outcome)[0] == "OK", reply_result(outcome)
        cim_schemas.validate(outcome.xml)
        assert relay_state(outcome.xml) == "disconnected"
        assert meter.state.control_state == ControlState.DISCONNECTED  # the meter's side

        request_id, xml = request_message("get", "MeterReadings", request=get_readings([MRID]))
        mdm.request("get", "MeterReadings", xml)
        _, readings = mdm.wait_replies(request_id, 2)
        assert reply_result(readings)[0] == "OK" and {r.meter_id for r in readings.readings} == {MRID}

        meter.hang_up()
        assert substation.wait_for(lambda: not meter.connected, 10)
        # Not connected: the request is accepted and waits for the meter's next call.
        request_id = control(mdm, CONNECT, expiry_s=120)
        (ack,) = mdm.wait_replies(request_id, 1)
        assert reply_result(ack)[0] == "OK"
        assert len(mdm.wait_replies(request_id, 2, timeout=3)) == 1  # nothing happens without a call
        assert meter.state.control_state == ControlState.DISCONNECTED
        meter.call()
        _, outcome = mdm.wait_replies(request_id, 2, timeout=30)
        assert reply_result(outcome)[0] == "OK" and relay_state(outcome.xml) == "connected"
        assert meter.state.control_state == ControlState.CONNECTED

        # Gone again, and the request expires before it calls: reported expired, the relay untouched.
        meter.hang_up()
        assert substation.wait_for(lambda: not meter.connected, 10)
        request_id = control(mdm, DISCONNECT, expiry_s=3)
        _, outcome = mdm.wait_replies(request_id, 2, timeout=30)
        result, errors = reply_result(outcome)
        assert result == "FAILED" and errors[0][0] == "6.1" and "did not call" in errors[0][1]
        meter.call()
        assert substation.wait_for(lambda: meter.connected, 10)
    assert meter.state.control_state == ControlState.CONNECTED


@pytest.mark.parametrize("auto_register", ["false"])
def test_with_automatic_registration_off_only_a_meter_the_mdm_registered_is_admitted(
    station: tuple[Substation, int], mdm: MdmListener
) -> None:
    substation, port = station
    meter = DialingMeter(port, WAN_METER)
    with meter:
        # Unknown, and automatic registration off (the default): refused, the MDM told, line closed.
        assert substation.wait_for(lambda: ("hes-wan", "3.12.0.85") in alarms(mdm), 20)
        assert substation.wait_for(lambda: not meter.connected, 10)
        # The MDM registers it by the logical device name it presents, with its management client.
        register_with_keys(mdm, "create")
        meter.call()
        request_id = control(mdm, DISCONNECT)
        _, outcome = mdm.wait_replies(request_id, 2)
        assert reply_result(outcome)[0] == "OK" and relay_state(outcome.xml) == "disconnected"
        assert meter.state.control_state == ControlState.DISCONNECTED
        request_id, xml = request_message("get", "MeterReadings", request=get_readings([MRID]))
        mdm.request("get", "MeterReadings", xml)
        _, readings = mdm.wait_replies(request_id, 2)
        assert {r.meter_id for r in readings.readings} == {MRID}
    assert (MRID, "3.7.0.4") not in alarms(mdm)  # registered by the MDM, not on its own
