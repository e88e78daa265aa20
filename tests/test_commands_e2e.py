"""Commands end to end: an MDM test client publishes requests to Mosquitto, the daemon journals them,
runs them on the simulated bus (the DLMS meter's relay moves), and the replies come back and
validate against the public schemas."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from lxml import etree

from appliance.sim.mdm import (
    MdmListener,
    control_payload,
    get_events,
    get_readings,
    meter_config_payload,
    reply_result,
    request_message,
)
from appliance.sim.substation import Substation
from tests.conftest import QUICK_UPLINK, CimSchemas, write_config

DISCONNECT, CONNECT, ARM = "3.31.0.23", "3.31.0.18", "3.31.0.5"

CONFIG = QUICK_UPLINK + (
    """
[hes]
id = "hes-cmd"
log_level = "debug"


[commands]
relay_max_operations = 3

[bus_defaults]
timeout_ms = 300
retries = 1

[[meters]]
id = "CMD-M1"
bus = "A"
address = 1
model = "generic-wh32"
poll_interval_s = 5

[[meters]]
id = "CMD-D17"
bus = "A"
protocol = "dlms"
address = 17
model = "dlms-generic"
client_address = 1
auth = "low"
"""
)


@pytest.fixture
def station(tmp_path: Path) -> Iterator[Substation]:
    keys = write_config(tmp_path / "CMD-D17.keys", 'password = "cmd-pass"\n')
    config = write_config(tmp_path / "hes.toml", CONFIG + f'keys_file = "{keys}"\n')
    with Substation(tmp_path / "run", config) as substation:
        yield substation


@pytest.fixture
def mdm(station: Substation) -> Iterator[MdmListener]:
    with station.mdm() as client:
        start_and_wait_online(station, client)
        yield client
        station.stop_daemon()


def start_and_wait_online(station: Substation, mdm: MdmListener) -> None:
    """Start the daemon and wait for its "online" status: it subscribes to requests before saying it."""
    mdm.status = None
    station.start_daemon()
    assert station.wait_for(lambda: b'"online"' in (mdm.status or b""), 20), station.log.read_text()[-2000:]


def relay_log(station: Substation) -> list[str]:
    """What the simulated meter's relay did, from its own log."""
    path = station.run_dir / "sim-A-dlms.log"
    return [line.split("relay ")[1] for line in path.read_text().splitlines() if ": relay " in line]


def attributes(reply_xml: bytes) -> dict[str, str]:
    """The EndDeviceControlAttribute pairs of an outcome reply (what the meter read back)."""
    ns = "{http://iec.ch/TC57/2011/EndDeviceControls#}"
    root = etree.fromstring(reply_xml)
    return {
        a.findtext(f"{ns}name"): a.findtext(f"{ns}value") for a in root.iter(f"{ns}EndDeviceControlAttribute")
    }


def send(mdm: MdmListener, verb: str, noun: str, **parts: object) -> str:
    message_id, xml = request_message(verb, noun, **parts)  # type: ignore[arg-type]
    mdm.request(verb, noun, xml)
    return message_id


def test_disconnect_and_connect_move_the_relay(
    station: Substation, mdm: MdmListener, cim_schemas: CimSchemas
) -> None:
    request_id = send(mdm, "create", "EndDeviceControls", payload=control_payload(DISCONNECT, ["CMD-D17"]))
    ack, outcome = mdm.wait_replies(request_id, 2)
    assert ack.header.verb == "reply" and ack.topic == f"{mdm.reply_root}/EndDeviceControls"
    result, errors = reply_result(ack)
    assert result == "OK" and [code for code, _ in errors] == ["0.3"] and "accepted" in errors[0][1]
    cim_schemas.envelope.validate(ack.xml.decode())
    assert outcome.header.verb == "created"
    assert reply_result(outcome)[0] == "OK"
    cim_schemas.validate(outcome.xml)
    assert attributes(outcome.xml)["relayState"] == "disconnected"
    assert relay_log(station) == ["disconnected"]  # the meter's side

    request_id = send(mdm, "create", "EndDeviceControls", payload=control_payload(CONNECT, ["CMD-D17"]))
    _, outcome = mdm.wait_replies(request_id, 2)
    assert attributes(outcome.xml) == {"controlMode": "1", "outputState": "closed", "relayState": "connected"}
    assert relay_log(station) == ["disconnected", "connected"]

    # Arming a meter whose control mode would close the relay directly is refused, the relay untouched.
    request_id = send(mdm, "create", "EndDeviceControls", payload=control_payload(ARM, ["CMD-D17"]))
    _, outcome = mdm.wait_replies(request_id, 2)
    result, errors = reply_result(outcome)
    assert result == "FAILED" and errors[0][0] == "6.4" and "arming refused" in errors[0][1]
    assert relay_log(station) == ["disconnected", "connected"]

    # The rate limit (3 per window here): the fourth relay operation is refused at once.
    request_id = send(mdm, "create", "EndDeviceControls", payload=control_payload(DISCONNECT, ["CMD-D17"]))
    (refusal,) = mdm.wait_replies(request_id, 1)
    time.sleep(1)
    assert len(mdm.replies_to(request_id)) == 1
    result, errors = reply_result(refusal)
    assert result == "FAILED" and errors[0][0] == "2.9"
    assert relay_log(station) == ["disconnected", "connected"]


def test_duplicate_delivery_executes_once_and_answers_the_same(station: Substation, mdm: MdmListener) -> None:
    message_id, xml = request_message(
        "create", "EndDeviceControls", payload=control_payload(DISCONNECT, ["CMD-D17"])
    )
    mdm.request("create", "EndDeviceControls", xml, correlation_data=b"\x00try-1\xff")
    first = mdm.wait_replies(message_id, 2)
    mdm.request("create", "EndDeviceControls", xml, correlation_data=b"try-2")
    both = mdm.wait_replies(message_id, 4)
    assert [r.header.verb for r in both] == ["reply", "created", "reply", "created"]
    # MQTT 5 request/response: each delivery's answers carry its own Correlation Data back.
    assert [r.correlation_data for r in both] == [b"\x00try-1\xff"] * 2 + [b"try-2"] * 2
    assert [reply_result(r) for r in both[2:]] == [reply_result(r) for r in first]
    assert attributes(both[3].xml) == attributes(first[1].xml)
    assert relay_log(station) == ["disconnected"]  # once
    store = station.open_store()
    try:
        assert store.conn.execute("SELECT count(*) FROM commands").fetchone()[0] == 1
    finally:
        store.close()


def test_get_meter_readings_now_and_from_the_store(
    station: Substation, mdm: MdmListener, cim_schemas: CimSchemas
) -> None:
    request_id = send(mdm, "get", "MeterReadings", request=get_readings(["CMD-M1"]))
    _, outcome = mdm.wait_replies(request_id, 2)
    assert outcome.header.verb == "reply" and reply_result(outcome)[0] == "OK"
    cim_schemas.validate(outcome.xml)
    assert {r.meter_id for r in outcome.readings} == {"CMD-M1"} and len(outcome.readings) == 2

    # A range: served from the store (routine polls every 5 s filled it), DLMS profile caught up.
    assert station.wait_for(lambda: len([m for m in mdm.snapshot() if m.readings]) >= 2, 30)
    start = datetime.now(UTC) - timedelta(hours=2)
    request_id = send(mdm, "get", "MeterReadings", request=get_readings(["CMD-M1", "CMD-D17"], start))
    pages = mdm.wait_replies(request_id, 2, timeout=60)[1:]
    assert pages and reply_result(pages[0])[0] == "OK"
    readings = [r for page in pages for r in page.readings]
    assert {r.meter_id for r in readings} == {"CMD-M1", "CMD-D17"}
    assert all(r.timestamp >= start.replace(microsecond=0) for r in readings)


def test_meter_config_registers_and_removes_a_meter(
    station: Substation, mdm: MdmListener, cim_schemas: CimSchemas
) -> None:
    settings = {"bus": "A", "address": "2"}
    request_id = send(
        mdm, "create", "MeterConfig", payload=meter_config_payload([("CMD-NEW", "generic-wh32", settings)])
    )
    _, outcome = mdm.wait_replies(request_id, 2)
    assert outcome.header.verb == "created" and reply_result(outcome)[0] == "OK", reply_result(outcome)
    cim_schemas.validate(outcome.xml)
    # The new meter is polled (the simulator has no unit 2: its polls time out, which the store counts).
    request_id = send(mdm, "get", "MeterReadings", request=get_readings(["CMD-NEW"]))
    _, answer = mdm.wait_replies(request_id, 2)
    assert reply_result(answer)[1][0][0] == "6.2"  # no such device on the wire: a timeout, not "unknown"

    request_id = send(mdm, "delete", "MeterConfig", payload=meter_config_payload([("CMD-NEW", "", {})]))
    _, outcome = mdm.wait_replies(request_id, 2)
    assert outcome.header.verb == "deleted" and reply_result(outcome)[0] == "OK"
    request_id = send(mdm, "get", "MeterReadings", request=get_readings(["CMD-NEW"]))
    (refusal,) = mdm.wait_replies(request_id, 1)
    assert reply_result(refusal)[0] == "FAILED" and reply_result(refusal)[1][0][0] == "2.4"


def test_get_end_device_events(station: Substation, mdm: MdmListener, cim_schemas: CimSchemas) -> None:
    start = datetime.now(UTC) - timedelta(days=3)
    request_id = send(mdm, "get", "EndDeviceEvents", request=get_events(["CMD-D17"], start))
    _, outcome = mdm.wait_replies(request_id, 2)
    assert reply_result(outcome)[0] == "OK"
    cim_schemas.validate(outcome.xml)
    assert outcome.events and {e.device_id for e in outcome.events} == {"CMD-D17"}


HOSTILE = {
    "not XML": b"\x00\xffdisconnect everything",
    "XXE": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
    "billion laughs": (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><l>&b;</l>'
    ),
    "50 MB": b"<a>" + b"x" * (50 * 1024 * 1024) + b"</a>",
}


def test_hostile_and_broken_requests_are_refused_without_effect(
    station: Substation, mdm: MdmListener
) -> None:
    for name, payload in HOSTILE.items():
        before = len(mdm.replies)
        mdm.request("create", "EndDeviceControls", payload)
        assert station.wait_for(lambda b=before: len(mdm.replies) > b, 15), name
        result, errors = reply_result(mdm.replies[-1])
        assert result == "FAILED" and errors[0][0] == "1.1", (name, errors)
    cases = [
        (("create", "Gibberish"), control_payload(DISCONNECT, ["CMD-D17"]), "1.2"),
        (("cancel", "EndDeviceControls"), control_payload(DISCONNECT, ["CMD-D17"]), "1.2"),
        (("create", "EndDeviceControls"), control_payload(DISCONNECT, ["NO-SUCH-METER"]), "2.4"),
        (("create", "EndDeviceControls"), control_payload("9.9.9.9", ["CMD-D17"]), "2.5"),
    ]
    for (verb, noun), payload, code in cases:
        request_id = send(mdm, verb, noun, payload=payload)
        (reply,) = mdm.wait_replies(request_id, 1)
        assert reply_result(reply)[0] == "FAILED" and reply_result(reply)[1][0][0] == code, (noun, code)
    # A request whose Header disagrees with its topic, and one from an unknown topic level.
    message_id, xml = request_message(
        "create", "EndDeviceControls", payload=control_payload(DISCONNECT, ["CMD-D17"])
    )
    mdm.request("get", "MeterReadings", xml)
    (reply,) = mdm.wait_replies(message_id, 1)
    assert reply_result(reply)[1][0][0] == "1.4"
    time.sleep(1)
    assert relay_log(station) == []  # nothing reached the relay
    assert station.daemon is not None and station.daemon.poll() is None  # and the daemon lives
    log = station.log.read_text()
    assert sum("refused" in line for line in log.splitlines() if "commands" in line) >= 9


def test_a_command_accepted_before_a_crash_is_finished_after_the_restart(
    station: Substation, mdm: MdmListener
) -> None:
    # The meter is frozen (SIGSTOP) so the command hangs on the bus; the daemon is killed the moment
    # the MDM has the acknowledgement: the journal holds the command mid-execution.
    (meter,) = [s for s in station.simulators["A"] if type(s).__name__ == "SimulatedDlmsBus"]
    pid = meter._process.pid  # the test freezes the peer process itself
    os.kill(pid, signal.SIGSTOP)
    request_id, xml = request_message(
        "create", "EndDeviceControls", payload=control_payload(DISCONNECT, ["CMD-D17"])
    )
    mdm.request("create", "EndDeviceControls", xml, correlation_data=b"before-the-crash")
    (ack,) = mdm.wait_replies(request_id, 1)
    assert reply_result(ack)[0] == "OK"
    station.stop_daemon(signal.SIGKILL)
    os.kill(pid, signal.SIGCONT)
    store = station.open_store()
    try:
        state = store.conn.execute("SELECT state FROM commands").fetchone()[0]
    finally:
        store.close()
    start_and_wait_online(station, mdm)
    assert station.wait_for(lambda: any(r.header.verb == "created" for r in mdm.replies_to(request_id)), 60)
    outcomes = {r.header.message_id: r for r in mdm.replies_to(request_id) if r.header.verb == "created"}
    assert state in ("queued", "executing")
    assert len(outcomes) == 1  # one outcome (a re-sent copy keeps its MessageID)
    (outcome,) = outcomes.values()
    assert attributes(outcome.xml)["relayState"] == "disconnected"
    assert outcome.correlation_data == ack.correlation_data == b"before-the-crash"  # from the journal
    assert relay_log(station).count("disconnected") in (1, 2)  # done again at most once after the crash


def test_an_expired_command_is_reported_expired(station: Substation, mdm: MdmListener) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    request_id = send(
        mdm,
        "create",
        "EndDeviceControls",
        payload=control_payload(DISCONNECT, ["CMD-D17"]),
        properties={"Expiry": past},
    )
    (reply,) = mdm.wait_replies(request_id, 1)
    assert reply_result(reply)[1][0][0] == "6.1"
    assert relay_log(station) == []
    store = station.open_store()
    try:
        assert store.conn.execute("SELECT state FROM commands").fetchone()[0] == "expired"
    finally:
        store.close()
