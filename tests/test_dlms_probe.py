"""`hes probe dlms` against the simulated meter: JSON lines on stdout, typed failures, secrets from files."""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.collect.dlms.probe import add_probe_parser, run_probe
from appliance.sim.dlms_meter import SimulatedDlmsBus, parse_meter
from appliance.sim.dlms_objects import DEFAULT_AUTH_KEY, DEFAULT_BLOCK_KEY, EnergyModel, MeterConfig
from appliance.sim.ptys import PtyPair
from appliance.store.db import Store

PASSWORD = "s3cret-pw"  # the simulated meter's
# Meter 21 shows energy in 0.1 Wh (scaler -1) and runs 30 s fast.
METER = f"21:password={PASSWORD},scaler=-1,offset=30"


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with (
        PtyPair(tmp_path_factory.mktemp("probe"), "P") as pair,
        SimulatedDlmsBus([parse_meter(METER)], port=pair.peer),
    ):
        yield pair.device


@pytest.fixture(scope="module")
def tcp() -> Iterator[int]:
    with SimulatedDlmsBus([MeterConfig(1, seed=4)], tcp_port=0) as sim:
        yield sim.tcp_port


Probe = Callable[..., tuple[int, list[dict], str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Probe:
    """Parse as `hes` would (the probe parser under its subcommands), run; code, records, stderr."""

    def call(*argv: str) -> tuple[int, list[dict], str]:
        parser = argparse.ArgumentParser(prog="hes")
        add_probe_parser(parser.add_subparsers(dest="command", required=True))
        code = run_probe(parser.parse_args(["probe", "dlms", *argv]))
        out, err = capsys.readouterr()
        return code, [json.loads(line) for line in out.splitlines()], err

    return call


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_clock_and_registers_with_their_units(run, device: Path) -> None:
    code, records, err = run("--port", str(device), "--server", "21")
    assert code == 0, err
    clock, energy = records
    assert (clock["object"], clock["class"], clock["unit"]) == ("0.0.1.0.0.255", 8, None)
    assert abs(clock["offset_s"] - 30) < 2  # the meter runs 30 s fast
    assert abs(parse_time(clock["value"]) - parse_time(clock["timestamp"]) - dt.timedelta(seconds=30)) < (
        dt.timedelta(seconds=2)
    )
    assert (energy["object"], energy["unit"]) == ("1.0.1.8.0.255", "Wh")
    # Scaler -1: tenths of a Wh, an int when the tenth is 0 (one read in ten), else a float.
    assert isinstance(energy["value"], int | float) and round(energy["value"], 1) == energy["value"]
    expected = EnergyModel(seed=0, address=21).import_wh(time.time())
    assert abs(energy["value"] - expected) < 2

    code, records, err = run(
        "--port",
        str(device),
        "--server",
        "21",
        "--obis",
        "0.0.96.1.0.255",
        "1-0:2.8.0*255",
        "--obis",
        "3/1.0.1.8.0.255/3",
    )
    assert code == 0, err
    serial, export, scaler_unit = records
    assert serial["value"] == "00000021" and serial["class"] == 1
    assert export["object"] == "1.0.2.8.0.255" and export["unit"] == "Wh" and export["value"] > 0
    assert scaler_unit["value"] == [-1, 30]


def test_profile_rows_by_range(run, device: Path) -> None:
    code, records, err = run("--port", str(device), "--server", "21", "--profile", "now-2h", "now")
    assert code == 0, err
    assert {r["object"] for r in records} == {"1.0.1.8.0.255", "1.0.2.8.0.255"}
    imported = [r for r in records if r["object"] == "1.0.1.8.0.255"]
    assert len(imported) == 8 and all(
        r["profile"] == "1.0.99.1.0.255" and r["unit"] == "Wh" for r in imported
    )
    stamps = [parse_time(r["timestamp"]) for r in imported]
    assert all(b - a == dt.timedelta(minutes=15) for a, b in itertools.pairwise(stamps))
    assert all(a["value"] <= b["value"] for a, b in itertools.pairwise(imported))
    model = EnergyModel(seed=0, address=21)  # the row stamped T (meter time) holds the energy at T - 30 s
    assert abs(imported[-1]["value"] - model.import_wh(stamps[-1].timestamp() - 30)) < 0.2


def test_disconnect_and_reconnect_with_a_password_file(run, device: Path, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    common = ("--port", str(device), "--server", "21", "--auth", "low", "--password-file", str(secret))
    code, [record], err = run(*common, "--disconnect")
    assert code == 0, err
    assert (record["action"], record["value"], record["control_state"]) == ("remote_disconnect", False, 0)
    code, [record], err = run(*common, "--reconnect")
    assert code == 0, err
    assert (record["action"], record["value"], record["control_state"]) == ("remote_reconnect", True, 1)

    secret.write_text("wrong\n")
    code, records, err = run(*common, "--obis", "0.0.96.3.10.255")
    assert (code, records) == (1, [])
    assert "authentication-failure" in err and "wrong" not in err

    # The meter's keys file, exactly as its [[meters]] entry names it for the daemon, works too.
    keys = tmp_path / "keys.toml"
    keys.write_text(f'password = "{PASSWORD}"\n')
    low = ("--port", str(device), "--server", "21", "--auth", "low", "--keys-file", str(keys))
    code, [record], err = run(*low, "--obis", "0.0.96.3.10.255")
    assert code == 0 and record["value"] is True, err


def test_hls_gmac_over_tcp_twice_with_stored_counters(run, tcp: int, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(
        f'encryption_key = "{DEFAULT_BLOCK_KEY.hex()}"\n'
        f'authentication_key = "{DEFAULT_AUTH_KEY.hex()}"\n'
        'system_title = "4845535052424531"\n'
    )
    store = tmp_path / "hes.db"
    argv = ("--tcp", f"127.0.0.1:{tcp}", "--server", "1", "--auth", "hls-gmac", "--keys-file", str(keys))
    for _ in range(2):  # the meter refuses a counter it has seen: the second run proves they go on
        code, records, err = run(*argv, "--store", str(store), "--obis", "1.0.1.8.0.255")
        assert code == 0, err
        assert records[0]["unit"] == "Wh" and records[0]["value"] > 0
    db = Store(store, readonly=True)
    [(meter, reserved, last)] = db.conn.execute("SELECT meter, reserved_up_to, meter_last FROM dlms_counters")
    db.close()
    assert meter == f"tcp:127.0.0.1:{tcp}:1" and reserved >= 0 and last > 0

    code, records, err = run(*argv, "--store", str(tmp_path / "lost.db"))  # counters from 0 again
    assert code == 1 and records == [] and "rejected" in err


def test_usage_errors_name_the_problem_not_the_secret(run, device: Path, tmp_path: Path) -> None:
    where = ("--port", str(device), "--server", "21")
    keys = tmp_path / "keys.toml"
    keys.write_text('encryption_key = "00112233445566778899aabbccddeeXX"\n')
    code, _, err = run(
        *where, "--auth", "hls-gmac", "--keys-file", str(keys), "--store", str(tmp_path / "s.db")
    )
    assert code == 2 and "encryption_key is not hex" in err and "eeXX" not in err
    code, _, err = run(*where, "--auth", "hls-gmac", "--keys-file", str(keys))
    assert code == 2 and "--store" in err
    code, _, err = run(*where, "--auth", "low", "--password-file", str(tmp_path / "missing"))
    assert code == 2 and "missing" in err
    code, _, err = run(*where, "--obis", "1.2.3")
    assert code == 2 and "not an OBIS code" in err
    code, _, err = run(*where, "--profile", "now", "now-1d")
    assert code == 2 and "FROM is after TO" in err
    with pytest.raises(SystemExit):
        run(*where, "--password", PASSWORD)  # there is no such option: secrets never go on the command line


def test_a_silent_meter_fails_within_its_timeouts(run, device: Path) -> None:
    started = time.monotonic()
    code, records, err = run("--port", str(device), "--server", "22", "--timeout", "0.2", "--retries", "1")
    assert (code, records) == (1, [])
    assert "no answer to SNRM in 2 tries" in err
    assert time.monotonic() - started < 0.4 + 0.4
