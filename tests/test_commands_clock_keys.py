"""Commands end to end, the paths with consequences beyond one reply: a meter's clock set on the MDM's
request (only from a trusted HES clock), and meters registered with keys the MDM wrapped (RFC 5649)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

from appliance.sim.dlms_meter import SimulatedDlmsBus, parse_meter
from appliance.sim.mdm import (
    MdmListener,
    Received,
    control_payload,
    get_readings,
    meter_config_payload,
    reply_result,
    request_message,
    wrap_key,
)
from appliance.sim.substation import Substation
from tests.conftest import QUICK_UPLINK, CimSchemas, write_config

CLOCK_SYNC = "3.36.116.13"
CLOCK_SET_EVENT = "3.36.116.24"
METER_OFFSET_S = 60.0

CONFIG = QUICK_UPLINK + (
    """
[hes]
id = "hes-ck"
log_level = "debug"


[bus_defaults]
timeout_ms = 300
retries = 1

[[meters]]
id = "CK-D17"
bus = "A"
protocol = "dlms"
address = 17
model = "dlms-generic"
client_address = 1
auth = "low"
"""
)

KEK = bytes.fromhex("8f1d2c3b4a5968778695a4b3c2d1e0f00f1e2d3c4b5a69788796a5b4c3d2e1f0")
PASSWORD = "mdm-low-Secret-7"
CLIENT_TITLE = bytes.fromhex("4845535052424531")
ENCRYPTION_KEY = bytes.fromhex("a1b2c3d4e5f60718293a4b5c6d7e8f90")
AUTHENTICATION_KEY = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")


def dlms_simulator(station: Substation) -> SimulatedDlmsBus:
    (simulator,) = [s for s in station.simulators["A"] if isinstance(s, SimulatedDlmsBus)]
    return simulator


def rig(tmp_path: Path, gps: bool = False, extra: str = "", meters: tuple[str, ...] = ()) -> Substation:
    """The substation (not started): meter 17's clock METER_OFFSET_S ahead, `meters` on the bus too."""
    keys = write_config(tmp_path / "CK-D17.keys", 'password = "ck-pass"\n')
    config = write_config(tmp_path / "hes.toml", extra + CONFIG + f'keys_file = "{keys}"\n')
    station = Substation(tmp_path / "run", config, gps=gps)
    simulator = dlms_simulator(station)
    simulator.meters[0].offset_s = METER_OFFSET_S
    simulator.meters += [parse_meter(text, seed=7) for text in meters]
    return station


@pytest.fixture
def online() -> Iterator[list[tuple[Substation, MdmListener]]]:
    """Started rigs with their MDM, stopped (daemon first) after the test."""
    started: list[tuple[Substation, MdmListener]] = []
    yield started
    for station, mdm in reversed(started):
        station.stop_daemon()
        mdm.stop()
        station.stop()


def start(station: Substation, online: list[tuple[Substation, MdmListener]]) -> MdmListener:
    station.start()
    mdm = station.mdm().start()
    online.append((station, mdm))
    station.start_daemon()
    assert station.wait_for(lambda: b'"online"' in (mdm.status or b""), 20), station.log.read_text()[-2000:]
    return mdm


def clock_state(mdm: MdmListener) -> str | None:
    return json.loads(mdm.status).get("clock", {}).get("state") if mdm.status else None


def send(mdm: MdmListener, verb: str, noun: str, **parts: object) -> str:
    message_id, xml = request_message(verb, noun, **parts)  # type: ignore[arg-type]
    mdm.request(verb, noun, xml)
    return message_id


def clock_sync(mdm: MdmListener, meter: str) -> tuple[Received, Received]:
    request_id = send(mdm, "create", "EndDeviceControls", payload=control_payload(CLOCK_SYNC, [meter]))
    ack, outcome = mdm.wait_replies(request_id, 2)
    assert reply_result(ack)[0] == "OK" and outcome.header.verb == "created"
    return ack, outcome


def attributes(reply_xml: bytes) -> dict[str, str]:
    ns = "{http://iec.ch/TC57/2011/EndDeviceControls#}"
    root = etree.fromstring(reply_xml)
    return {
        a.findtext(f"{ns}name"): a.findtext(f"{ns}value") for a in root.iter(f"{ns}EndDeviceControlAttribute")
    }


def test_clock_sync_corrects_a_meter_60_s_off_when_the_hes_clock_is_gps_locked(
    tmp_path: Path, online: list, cim_schemas: CimSchemas
) -> None:
    station = rig(tmp_path, gps=True)
    mdm = start(station, online)
    assert station.wait_for(lambda: clock_state(mdm) == "LOCKED", 20), mdm.status

    _, outcome = clock_sync(mdm, "CK-D17")
    assert reply_result(outcome) == ("OK", []), reply_result(outcome)
    cim_schemas.validate(outcome.xml)
    done = attributes(outcome.xml)
    assert done["clockAction"] == "set"
    assert abs(float(done["clockOffsetSeconds"]) - METER_OFFSET_S) < 5, done

    # The meter's side: asked again, its clock is within tolerance and nothing more is written.
    _, again = clock_sync(mdm, "CK-D17")
    assert reply_result(again) == ("OK", [])
    assert attributes(again.xml)["clockAction"] == "none"
    assert abs(float(attributes(again.xml)["clockOffsetSeconds"])) < 5
    # The MDM also hears of the correction as an EndDeviceEvent.
    assert station.wait_for(
        lambda: any(e.event_type == CLOCK_SET_EVENT for m in mdm.snapshot() for e in m.events), 15
    )


def test_clock_sync_is_refused_while_the_hes_clock_is_not_trusted(tmp_path: Path, online: list) -> None:
    station = rig(tmp_path)  # no GPS: the HES clock stays UNSYNCED
    mdm = start(station, online)
    assert station.wait_for(lambda: clock_state(mdm) == "UNSYNCED", 15), mdm.status

    _, outcome = clock_sync(mdm, "CK-D17")
    result, errors = reply_result(outcome)
    assert result == "FAILED" and len(errors) == 1, errors
    code, reason = errors[0]
    assert code == "6.9" and "HES clock is not trusted" in reason and "CK-D17" in reason, errors
    assert attributes(outcome.xml)["clockAction"] == "untrusted"
    assert abs(float(attributes(outcome.xml)["clockOffsetSeconds"]) - METER_OFFSET_S) < 5

    # Nothing was written: the meter is as far off as before.
    _, again = clock_sync(mdm, "CK-D17")
    assert abs(float(attributes(again.xml)["clockOffsetSeconds"]) - METER_OFFSET_S) < 5
    assert not any(e.event_type == CLOCK_SET_EVENT for m in mdm.snapshot() for e in m.events)


def secrets_seen(data: bytes) -> list[str]:
    """Which of the meter secrets (or the key-encryption key) appear in `data`, in any usual spelling."""
    secrets = {"password": PASSWORD.encode(), "kek": KEK}
    secrets |= {"encryption_key": ENCRYPTION_KEY, "authentication_key": AUTHENTICATION_KEY}
    found = []
    for name, secret in secrets.items():
        spellings = [secret, secret.hex().encode(), secret.hex().upper().encode()]  # raw: text or a BLOB
        if any(s in data for s in spellings):
            found.append(name)
    return found


def test_meters_registered_with_wrapped_keys_are_read_and_the_keys_stay_secret(
    tmp_path: Path, online: list, cim_schemas: CimSchemas
) -> None:
    kek_file = tmp_path / "kek.hex"
    kek_file.write_text(KEK.hex() + "\n")
    kek_file.chmod(0o600)
    hls = f"title=5349{'00' * 6},ek={ENCRYPTION_KEY.hex()},ak={AUTHENTICATION_KEY.hex()}"
    station = rig(
        tmp_path,
        extra=f'[commands]\nkey_wrap_file = "{kek_file}"\n',
        meters=(f"18:password={PASSWORD}", f"19:{hls}"),
    )
    mdm = start(station, online)
    low = {"password": wrap_key(KEK, PASSWORD.encode())}
    high = {
        "system_title": wrap_key(KEK, CLIENT_TITLE),
        "encryption_key": wrap_key(KEK, ENCRYPTION_KEY),
        "authentication_key": wrap_key(KEK, AUTHENTICATION_KEY),
    }
    connection = {"bus": "A", "clientAddress": "1"}
    payload = meter_config_payload(
        [
            ("CK-LOW", "dlms-generic", {**connection, "address": "18", "auth": "low"}),
            ("CK-HLS", "dlms-generic", {**connection, "address": "19", "auth": "hls-gmac"}),
        ],
        {"CK-LOW": low, "CK-HLS": high},
    )
    request_id = send(mdm, "create", "MeterConfig", payload=payload)
    _, outcome = mdm.wait_replies(request_id, 2)
    assert outcome.header.verb == "created" and reply_result(outcome) == ("OK", []), reply_result(outcome)
    cim_schemas.validate(outcome.xml)

    keys_dir = station.config.hes.data_dir / "keys"
    assert stat.S_IMODE(keys_dir.stat().st_mode) & 0o077 == 0
    for meter in ("CK-LOW", "CK-HLS"):
        assert stat.S_IMODE((keys_dir / f"{meter}.toml").stat().st_mode) == 0o600
    assert (keys_dir / "CK-LOW.toml").read_text() == f'password = "{PASSWORD}"\n'
    hls_keys = (keys_dir / "CK-HLS.toml").read_bytes()
    assert secrets_seen(hls_keys) == ["encryption_key", "authentication_key"]  # the detector below works
    assert sorted(os.listdir(keys_dir)) == ["CK-HLS.toml", "CK-LOW.toml"]  # no staging file left

    # Both are read with their keys: the meters accept the password and the HLS-GMAC association.
    request_id = send(mdm, "get", "MeterReadings", request=get_readings(["CK-LOW", "CK-HLS"]))
    _, answer = mdm.wait_replies(request_id, 2, timeout=60)
    assert reply_result(answer) == ("OK", []), reply_result(answer)
    assert {r.meter_id for r in answer.readings} == {"CK-LOW", "CK-HLS"}

    # Keys wrapped under another key, and an HLS meter without its ciphering keys, are refused (2.5)
    # and write nothing.
    wrong = {"password": wrap_key(bytes(32), PASSWORD.encode())}
    half = {"system_title": high["system_title"]}
    payload = meter_config_payload(
        [
            ("CK-BAD", "dlms-generic", {**connection, "address": "20", "auth": "low"}),
            ("CK-HALF", "dlms-generic", {**connection, "address": "21", "auth": "hls-gmac"}),
        ],
        {"CK-BAD": wrong, "CK-HALF": half},
    )
    request_id = send(mdm, "create", "MeterConfig", payload=payload)
    _, outcome = mdm.wait_replies(request_id, 2)
    result, errors = reply_result(outcome)
    assert result == "FAILED" and [code for code, _ in errors] == ["2.5", "2.5"], errors
    assert "does not unwrap" in errors[0][1] and "authentication_key" in errors[1][1], errors
    assert sorted(os.listdir(keys_dir)) == ["CK-HLS.toml", "CK-LOW.toml"]

    # No secret in the daemon's log, its store (the journal with it), or anything the MDM received.
    station.stop_daemon()
    assert secrets_seen(station.log.read_bytes()) == []
    for path in station.config.hes.data_dir.iterdir():
        if path.is_file():
            assert secrets_seen(path.read_bytes()) == [], path.name
    for message in [*mdm.replies, *mdm.snapshot()]:
        assert secrets_seen(message.payload) == [], message.header.noun
