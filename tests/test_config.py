"""Config loading: defaults from the template, overlays, and one clear line per mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import (
    BusSpec,
    Config,
    HesSection,
    MeterSpec,
    MqttSection,
    Schedule,
    load_config,
    missing_credentials,
    template_path,
)
from appliance.errors import ConfigError
from appliance.model import Protocol
from tests.conftest import REPO, write_config

NO_TLS = "[mqtt]\ntls = false\n"
METER = '[[meters]]\nid = "M1"\nbus = "A"\naddress = 1\n'


def load(tmp_path: Path, text: str) -> Config:
    return load_config(write_config(tmp_path / "box.toml", NO_TLS + text))


def error(tmp_path: Path, text: str, tls: bool = False) -> ConfigError:
    """The error for `text` in box.toml, laid over a file that turns TLS off (unless `tls`)."""
    files = [] if tls else [write_config(tmp_path / "no-tls.toml", NO_TLS)]
    files.append(write_config(tmp_path / "box.toml", text))
    with pytest.raises(ConfigError) as caught:
        load_config(*files)
    return caught.value


def test_template_gives_every_field_a_default(tmp_path: Path) -> None:
    config = load(tmp_path, METER)
    assert config.hes == HesSection(id="hes-0001", data_dir=Path("/data/hes"), log_level="info")
    assert config.buses["A"] == BusSpec(
        name="A",
        enabled=True,
        device="/dev/ttySC0",
        baud=9600,
        parity="N",
        bytesize=8,
        stopbits=1,
        rs485_mode=False,
        timeout_ms=1000,
        retries=2,
        backoff_max_s=3600,
    )
    assert config.meters == (MeterSpec("M1", "A", Protocol.MODBUS, 1, "sdm630", 0, 1, 16, "none", None),)
    assert config.schedules["sdm630"] == Schedule(registers_s=900, profile_s=0, events_s=0, clock_s=0)
    assert config.schedules["dlms-generic"] == Schedule(
        registers_s=86400, profile_s=900, events_s=3600, clock_s=86400
    )
    assert isinstance(config.mqtt, MqttSection) and config.mqtt.port == 8883
    assert config.topic("cim", "out", "MeterReadings") == "hes/hes-0001/cim/out/MeterReadings"


def test_later_files_win_and_relative_paths_follow_their_file(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    first = write_config(tmp_path / "first.toml", NO_TLS + '[hes]\nid = "first"\n' + METER)
    second = write_config(tmp_path / "site" / "second.toml", '[hes]\nid = "second"\ndata_dir = "data"\n')
    config = load_config(first, second)
    assert config.hes.id == "second"
    assert config.hes.data_dir == tmp_path / "site" / "data"
    assert config.store_path == tmp_path / "site" / "data" / "hes.db"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found") as caught:
        load_config(tmp_path / "absent.toml")
    assert caught.value.path == str(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('[mqtt]\nport = "8883"\n', "mqtt.port", "whole number"),
        ("[mqtt]\nport = 70000\n", "mqtt.port", "1-65535"),
        ("[mqtt]\ntls = 1\n", "mqtt.tls", "true or false"),
        ("[mqtt]\nportt = 1\n", "mqtt.portt", "unknown key"),
        ("[mqttt]\nport = 1\n", "mqttt", "unknown section"),
        ('[hes]\nid = "a/b"\n', "hes.id", "letters, digits"),
        ('[buses.A]\ndevice = ""\n', "buses.A.device", "serial device of an enabled bus"),
        ('[buses.A]\nparity = "X"\n', "buses.A.parity", "N, E or O"),
        ("[buses.C]\nbaud = 9600\n", "buses.C.device", "serial device"),
        (METER + METER, "meters[1].id", "appears twice"),
        (METER.replace('"A"', '"Z"'), "meters[0].bus", "one of the buses"),
        (METER.replace("address = 1", "address = 0"), "meters[0].address", "1-247"),
        (METER + 'model = "nosuch"\n', "meters[0].model", "sdm630"),
        (METER + 'protocol = "iec"\n', "meters[0].protocol", "modbus"),
        ("[buses.A]\nenabled = false\n" + METER, "meters[0].bus", "bus A is disabled"),
        ("[schedules.nosuch]\nprofile_s = 1\n", "schedules.nosuch", "a meter model"),
        ("[schedules.sdm630]\nclock_s = 60\n", "schedules.sdm630.clock_s", "modbus model has no clock"),
        ("[schedules.dlms-generic]\nprofile_s = -1\n", "schedules.dlms-generic.profile_s", "0 (never)"),
        ('[meter_time]\nmode = "slew"\n', "meter_time.mode", "set or step"),
        ("[meter_time]\ntolerance_s = 400.0\n", "meter_time.tolerance_s", "less than"),
        ("[discovery]\nhdlc_first = 3\n", "discovery.hdlc_first", "16-16383"),
        ("[meter_defaults]\npoll_interval_s = -1\n" + METER, "meters[0].poll_interval_s", "or more seconds"),
        ("meters = 3\n", "meters", "[[meters]]"),
    ],
)
def test_impossible_values_name_file_key_and_expectation(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    caught = error(tmp_path, text)
    assert caught.path == str(tmp_path / "box.toml")
    assert caught.key == key
    assert expected in caught.expected


def test_missing_tls_files_are_a_warning_not_an_error(tmp_path: Path) -> None:
    """A fresh box collects while its certificate is being signed: the uplink waits, nothing else."""
    box = write_config(tmp_path / "box.toml", f'[mqtt]\nca_file = "{tmp_path}/none.pem"\n' + METER)
    config = load_config(box)
    assert missing_credentials(config) == f"mqtt.ca_file: {tmp_path}/none.pem is missing (tls = true)"
    command = [sys.executable, "-m", "appliance", "config", "check", str(box)]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    assert result.returncode == 0 and "warning: mqtt.ca_file" in result.stderr
    assert missing_credentials(load_config(box, write_config(tmp_path / "no-tls.toml", NO_TLS))) is None


def test_broken_toml(tmp_path: Path) -> None:
    caught = error(tmp_path, "[hes\nid = 1\n")
    assert "not valid TOML" in caught.expected and "line" in caught.expected


def test_demo_config_is_valid_with_the_demo_overlay(tmp_path: Path) -> None:
    overlay = write_config(tmp_path / "overlay.toml", NO_TLS + '[buses.A]\ndevice = "/dev/null"\n')
    config = load_config(template_path().parent / "demo.toml", overlay)
    assert len(config.meters) == 7 and {m.bus for m in config.meters} == {"A", "B"}
    assert {m.protocol.value for m in config.meters} == {"modbus", "dlms"}


def hes(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args], check=False, capture_output=True, text=True, cwd=REPO
    )


def test_cli_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write_config(tmp_path / "box.toml", NO_TLS + METER + METER)
    for command in (["config", "check"], ["run", "--config"]):
        result = hes(*command, str(path))
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1
        assert f"{path}: meters[1].id:" in result.stderr
    good = hes("config", "check", str(write_config(tmp_path / "ok.toml", NO_TLS + METER)))
    assert good.returncode == 0 and "1 meters" in good.stdout


def test_cli_version_and_help() -> None:
    assert hes("--version").stdout.startswith("hes ")
    for command in ([], ["run"], ["demo"], ["config"], ["config", "check"]):
        result = hes(*command, "--help")
        assert result.returncode == 0 and "usage: hes" in result.stdout


DLMS = '[[meters]]\nid = "D1"\nbus = "A"\nprotocol = "dlms"\nmodel = "dlms-generic"\n'
SECRET = "00112233445566778899aabbccddeeff"


@pytest.mark.parametrize(
    ("extra", "secrets", "key", "expected"),
    [
        ("", None, None, None),
        ("address = 5\n", None, "meters[0].address", "16-16383"),
        ('auth = "hls"\n', None, "meters[0].auth", "hls-gmac"),
        ('auth = "low"\n', None, "meters[0].keys_file", "password"),
        ('auth = "low"\n', 'password = "abc"\n', None, None),
        ('auth = "hls-gmac"\n', 'password = "abc"\n', "meters[0].keys_file", "authentication_key"),
        ('auth = "hls-gmac"\n', f'system_title = "{SECRET}"\n', "meters[0].keys_file", "must be 8 bytes"),
        ('auth = "low"\n', f'pasword = "{SECRET}"\n', "meters[0].keys_file", "holds 'pasword'"),
        ('auth = "low"\n', f'password = "{SECRET}\n', "meters[0].keys_file", "not valid TOML"),
    ],
)
def test_dlms_meters_and_their_secrets(
    tmp_path: Path, extra: str, secrets: str | None, key: str | None, expected: str | None
) -> None:
    text = DLMS + extra + ("" if extra.startswith("address") else "address = 17\n")
    if secrets is not None:
        (tmp_path / "D1.keys").write_text(secrets)
        text += f'keys_file = "{tmp_path / "D1.keys"}"\n'
    if key is None:
        (meter,) = load(tmp_path, text).meters
        assert (meter.protocol, meter.logical_address, meter.client_address) == (Protocol.DLMS, 1, 16)
        return
    caught = error(tmp_path, text)
    assert (caught.key, expected in caught.expected) == (key, True), caught
    assert SECRET not in str(caught)  # a secret never shows, even in the error about its own file
