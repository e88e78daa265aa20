"""MDM requests without the daemon: parsing (hostile input included), reply shapes, the journal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.commands import codes
from appliance.commands.replies import ReplyError, control_results, meter_config, response
from appliance.commands.requests import Request, parse_request, read_envelope
from appliance.errors import RequestRefused
from appliance.model import epoch
from appliance.sim.mdm import control_payload, get_readings, meter_config_payload, request_message
from appliance.store import Store
from appliance.store.commands import (
    State,
    Target,
    insert_command,
    open_commands,
    relay_operations_since,
    reopen_interrupted,
    set_target,
    targets_of,
)
from tests.conftest import CimSchemas

CONTROLS = {"3.31.0.23": "disconnect", "3.31.0.18": "connect"}
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def parse(xml: bytes) -> Request:
    envelope, root = read_envelope(xml, 1 << 20)
    return parse_request(envelope, root, CONTROLS, NOW).request


def refusal_code(xml: bytes) -> str:
    with pytest.raises(RequestRefused) as caught:
        parse(xml)
    return caught.value.code


def test_a_disconnect_request_parses_with_its_expiry_and_priority() -> None:
    end = NOW + timedelta(minutes=5)
    payload = control_payload("3.31.0.23", ["M1", "M2", "M1"])
    ns = "{http://iec.ch/TC57/2011/EndDeviceControls#}"
    control = payload.find(f"{ns}EndDeviceControl")
    timing = control.makeelement(f"{ns}primaryDeviceTiming")
    control.append(timing)
    interval = timing.makeelement(f"{ns}interval")
    timing.append(interval)
    interval.append(interval.makeelement(f"{ns}end"))
    interval[0].text = end.strftime("%Y-%m-%dT%H:%M:%SZ")
    _, xml = request_message(
        "create", "EndDeviceControls", "id-1", payload=payload, properties={"Priority": "high"}
    )
    envelope, root = read_envelope(xml, 1 << 20)
    parsed = parse_request(envelope, root, CONTROLS, NOW)
    assert parsed.request == Request("control", ("M1", "M2"), action="disconnect", code="3.31.0.23")
    assert (parsed.priority, parsed.expires_at) == (0, end)
    assert Request.from_json(parsed.request.to_json()) == parsed.request


def test_a_range_read_and_a_meter_config_parse() -> None:
    start = NOW - timedelta(hours=1)
    _, xml = request_message("get", "MeterReadings", "id-2", request=get_readings(["M1"], start))
    assert parse(xml) == Request("read", ("M1",), start=epoch(start), end=epoch(NOW) + 1)
    payload = meter_config_payload([("M9", "sdm630", {"bus": "A", "address": "9"})])
    _, xml = request_message("create", "MeterConfig", "id-3", payload=payload)
    request = parse(xml)
    assert (request.operation, request.action, request.meters) == ("meter_config", "create", ("M9",))
    assert request.entries[0].settings == {"bus": "A", "address": "9"}


def controls(code: str, meters: list[str], noun: str = "EndDeviceControls", **parts: object) -> bytes:
    """A control request as XML."""
    return request_message("create", noun, "x-1", payload=control_payload(code, meters), **parts)[1]  # type: ignore[arg-type]


XXE = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>'
LAUGHS = b'<!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><l>&b;</l>'
HOSTILE = {
    "not-xml": (b"\x00\xffnot xml at all", codes.MALFORMED),
    "xxe": (XXE, codes.MALFORMED),
    "billion-laughs": (LAUGHS, codes.MALFORMED),
    "too-large": (b"<a>" + b"x" * (2 << 20) + b"</a>", codes.MALFORMED),
    "not-a-request": (b'<EventMessage xmlns="http://iec.ch/TC57/2011/schema/message"/>', codes.MALFORMED),
    "unknown-noun": (controls("3.31.0.23", ["M1"], noun="Gibberish"), codes.UNSUPPORTED),
    "unknown-code": (controls("1.2.3.4", ["M1"]), codes.BAD_CONTENT),
    "no-meter": (controls("3.31.0.23", []), codes.BAD_CONTENT),
    "no-message-id": (
        controls("3.31.0.23", ["M1"]).replace(b"<msg:MessageID>x-1</msg:MessageID>", b""),
        codes.NO_MESSAGE_ID,
    ),
    "bad-priority": (controls("3.31.0.23", ["M1"], properties={"Priority": "urgent!"}), codes.BAD_CONTENT),
}


@pytest.mark.parametrize(("xml", "code"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_and_broken_requests_are_refused_with_a_code(xml: bytes, code: str) -> None:
    assert refusal_code(xml) == code


def test_replies_validate_against_the_public_schemas(cim_schemas: CimSchemas) -> None:
    errors = [ReplyError(codes.DEVICE_REFUSED, "relay stuck", "M2", details='{"relayState": "connected"}')]
    outcome = control_results("3.31.0.23", [("M1", {"relayState": "disconnected"}), ("M2", {})])
    built = response(
        verb="created", noun="EndDeviceControls", source="hes-1", now=NOW, correlation_id="c-1",
        result="PARTIAL", errors=errors, topic="t", payload=outcome,
    )  # fmt: skip
    cim_schemas.validate(built.payload)
    config = meter_config([("M9", "sdm630", {"bus": "A", "address": "9"})])
    built = response(
        verb="created", noun="MeterConfig", source="hes-1", now=NOW, correlation_id="c-2",
        result="OK", errors=[], topic="t", payload=config,
    )  # fmt: skip
    cim_schemas.validate(built.payload)
    ack = response(
        verb="reply", noun="MeterConfig", source="hes-1", now=NOW, correlation_id="c-2", result="OK",
        errors=[ReplyError(codes.ACCEPTED, "accepted", level="INFORM")], topic="t",
    )  # fmt: skip
    cim_schemas.envelope.validate(ack.payload.decode())


def test_the_journal_counts_relay_operations_and_reopens_interrupted_work(tmp_path: Path) -> None:
    store = Store(tmp_path / "hes.db")
    now = epoch(NOW)

    def journal(message_id: str, state: State, code: str = "") -> int:
        with store.transaction() as conn:
            return insert_command(
                conn, message_id=message_id, correlation_id=message_id, verb="create",
                noun="EndDeviceControls", source="MDM", reply_topic="r", request={}, priority=1,
                state=State.ACCEPTED, received_at=now, expires_at=now + 60,
                targets=[Target(0, "M1", "relay", state, code)], reply=("OK", codes.ACCEPTED, "accepted"),
            )  # fmt: skip

    first = journal("a", State.ACCEPTED)
    journal("b", State.FAILED, codes.RATE_LIMITED)  # refused on arrival: never reached the relay
    journal("c", State.ACCEPTED)
    assert relay_operations_since(store, "M1", now - 10) == 2
    with store.transaction() as conn:
        set_target(conn, first, "M1", State.EXECUTING, now)
    assert reopen_interrupted(store, now) == 1
    assert targets_of(store, first)[0].state is State.ACCEPTED
    assert [c.message_id for c in open_commands(store)] == ["a", "b", "c"]
    store.close()
