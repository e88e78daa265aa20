"""`hes console` over a real pty (pexpect), against the real daemon of a simulated substation:
sign-in, every command, bad input, the idle timeout, and the console without the daemon."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from appliance.console import accounts
from appliance.sim.substation import Substation
from appliance.store import Store
from tests.conftest import QUICK_UPLINK, CimSchemas, write_config

CONFIG = (
    QUICK_UPLINK
    + """
[hes]
id = "hes-con"
[leds]
gpio = "fake"
[discovery]
modbus_first = 1
modbus_last = 3
hdlc_first = 16
hdlc_last = 18
[bus_defaults]
timeout_ms = 300
retries = 1
[buses.B]
enabled = false
[meter_defaults]
poll_interval_s = 2
[[meters]]
id = "CON-A1"
bus = "A"
address = 1
model = "sdm630"
[[meters]]
id = "CON-D18"
bus = "A"
protocol = "dlms"
address = 18
model = "dlms-generic"
client_address = 1
auth = "low"
"""
)
PROMPT = r"hes-con[#>] "
PASSWORD = "tech-pass-1"


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Substation]:
    base = tmp_path_factory.mktemp("con")
    keys = write_config(base / "d18.keys", 'password = "demo-pass"\n')
    config = write_config(base / "hes.toml", CONFIG + f'keys_file = "{keys}"\n')
    with Substation(base / "run", config) as substation:
        substation.start_daemon()
        for name, role in (("tess", "technician"), ("vic", "viewer")):
            child = hes(substation, "user", "add", name, "--role", role)
            for _ in range(2):
                child.expect("password: |again: ")
                child.sendline(PASSWORD)
            child.expect(f"account {name} \\({role}\\) created")
            child.expect(pexpect.EOF)
        assert substation.wait_for(lambda: readings_of(substation, "CON-D18") > 0, 30), (
            substation.log.read_text()
        )
        yield substation


def readings_of(substation: Substation, meter: str) -> int:
    if not substation.config.store_path.exists():
        return 0
    store = substation.open_store()
    try:
        return store.conn.execute(
            "SELECT count(*) FROM readings r JOIN meters m ON m.id = r.meter WHERE m.mrid = ?", (meter,)
        ).fetchone()[0]
    finally:
        store.close()


def hes(substation: Substation, *arguments: str, overlay: Path | None = None) -> pexpect.spawn:
    """`hes console ...` with the substation's config (and `overlay`)."""
    configs = ["-c", str(substation.base_config), "-c", str(substation.overlay)]
    if overlay is not None:
        configs += ["-c", str(overlay)]
    return spawn_console(*configs, *arguments)


def spawn_console(*arguments: str) -> pexpect.spawn:
    """`hes console ...` on a fresh pty of 80x24, as on the serial console."""
    return pexpect.spawn(
        sys.executable,
        ["-m", "appliance", "console", *arguments],
        dimensions=(24, 80),
        env={**os.environ, "TERM": "vt100"},
        encoding="utf-8",
        timeout=30,
    )


def sign_in(child: pexpect.spawn, name: str, password: str = PASSWORD) -> None:
    child.expect("login: ")
    child.sendline(name)
    child.expect("password: ")
    child.sendline(password)


def run(child: pexpect.spawn, line: str, *expected: str, prompt: str = PROMPT) -> str:
    """Type a command, wait for each expected pattern in turn and the next prompt; returns the output."""
    child.sendline(line)
    for pattern in expected:
        child.expect(pattern)
    child.expect(prompt)
    return child.before


def test_a_technician_session_runs_every_command(station: Substation, cim_schemas: CimSchemas) -> None:
    child = hes(station)
    child.expect("HES hes-con console")
    sign_in(child, "tess", "wrong-password")
    child.expect("login incorrect")
    sign_in(child, "tess")
    child.expect("Signed in as tess \\(technician\\)")
    child.expect(PROMPT)
    run(child, "show status", "HES hes-con: online", "uplink:  connected to")
    output = run(child, "sh meters", "METER")
    assert "CON-A1" in output and "CON-D18" in output and "dlms" in output
    run(child, "show meter CON-A1", "modbus address 1 on bus A", "newest values")
    # Long output comes a screen at a time: space for the next page, q to stop.
    child.sendline("show readings CON-D18 --from -3d")
    child.expect("readings")
    child.expect("--More--")
    assert len(child.before.splitlines()) <= 24
    child.send(" ")
    child.expect("--More--")
    child.send("q")
    child.expect(PROMPT)
    run(child, "show gps", "clock:", "gpsd: not configured")
    run(child, "show modem", "modem: not available")
    run(child, "show wan", "wan:")
    run(child, "show buffer", "unsent readings", "draining")
    run(child, "show events", "CON-D18|no events stored")
    run(child, "show version", "console  hes", "daemon   hes", "store    schema")
    output = run(child, "read CON-A1 now", "Reading CON-A1")
    assert "0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0" in output or "kWh" in output
    child.sendline("relay CON-A1 disconnect")
    child.expect("Disconnect the supply of meter CON-A1\\? \\[y/N\\] ")
    child.sendline("y")
    child.expect("no remote relay")  # a Modbus meter has none: the daemon says so
    child.expect(PROMPT)
    child.sendline("relay CON-D18 disconnect")
    child.expect("\\[y/N\\] ")
    child.sendline("n")
    child.expect("Nothing done")
    child.expect(PROMPT)
    child.sendline("relay CON-D18 disconnect")
    child.expect("\\[y/N\\] ")
    child.sendline("y")
    child.expect("Meter CON-D18: relay disconnected")
    child.expect(PROMPT)
    child.sendline("relay CON-D18 connect")
    child.expect("Reconnect the supply of meter CON-D18\\? \\[y/N\\] ")
    child.sendline("yes")
    child.expect("Meter CON-D18: relay connected")
    child.expect(PROMPT)
    run(child, "discover bus A", "Looking for meters on bus A", "none found")
    run(child, "test leds", "LED test")
    export_dir = station.run_dir / "usb"
    export_dir.mkdir()
    output = run(
        child, f"export readings --from -3d --meter CON-D18 {export_dir}", "written to", "-CON-D18.xml"
    )
    csv_file = next(export_dir.glob("*.csv"))
    assert csv_file.read_text().splitlines()[0] == "meter,time,reading_type,value,unit,quality"
    assert len(csv_file.read_text().splitlines()) > 96
    (xml_file,) = export_dir.glob("*-CON-D18.xml")
    cim_schemas.validate(xml_file.read_bytes())
    run(child, "export readings --from -1d /nonexistent/stick", "not a directory")
    run(child, "config show", "SETTING", "buses.A.baud")
    run(child, "config set hes.log_level debug", "written to .*local.toml")
    run(child, "config set hes.log_level loud", "not changed: hes.log_level")
    # Bad input: a word that is no command, an ambiguous abbreviation, a missing value.
    run(child, "fly away", "unknown command word 'fly'")
    run(child, "show me", "ambiguous 'me': meter, meters")
    run(child, "show meter", "incomplete command")
    run(child, "show readings CON-A1 --from yesterday", "not a time")
    run(child, "show meter NOPE", "no meter 'NOPE'")
    # Help: `help`, `?` after a word (the words typed come back for editing), tab completion.
    run(child, "help", "relay <meter> connect\\|disconnect")
    child.sendline("relay ?")
    child.expect("CON-A1")
    child.expect(PROMPT + "relay ")
    child.sendcontrol("u")
    child.send("show rea\tCON-A\t\r")
    child.expect("show readings CON-A1 ")
    child.expect("meter CON-A1, ")
    child.expect(PROMPT)
    run(child, "show audit", "needs the admin role")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    store = Store(station.config.store_path, readonly=True)
    try:
        audited = [(r["user"], r["command"], r["outcome"]) for r in accounts.audit_tail(store, 200)]
    finally:
        store.close()
    assert ("-", "login tess", "refused: login incorrect") in audited
    assert ("tess", "relay CON-D18 disconnect", "ok") in audited
    assert ("tess", "show meters", "ok") not in audited  # recorded as typed:
    assert ("tess", "sh meters", "ok") in audited
    assert (
        "tess",
        "config set hes.log_level loud",
        "failed: not changed: hes.log_level: one of debug, info, warning, error",
    ) in audited
    assert ("tess", "show audit", "denied") in audited


def test_a_viewer_may_look_but_not_switch(station: Substation) -> None:
    child = hes(station)
    sign_in(child, "vic")
    child.expect("\\(viewer\\)")
    child.expect("hes-con> ")
    run(child, "show meters", "CON-A1")
    child.sendline("relay CON-D18 disconnect")
    child.expect("\\[y/N\\] ")
    child.sendline("y")
    child.expect("Denied: relay needs the technician role")
    child.expect("hes-con> ")
    run(child, "config set hes.log_level debug", "Denied")
    run(child, "export readings", "Denied: export needs the technician role")
    child.sendeof()
    child.expect(pexpect.EOF)


def test_an_idle_console_logs_out(station: Substation) -> None:
    idle = write_config(station.run_dir / "idle.toml", "[console]\nidle_timeout_s = 2\n")
    child = hes(station, overlay=idle)
    sign_in(child, "tess")
    child.expect(PROMPT)
    child.expect("Idle for 2 s: logged out", timeout=10)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    # An abandoned login prompt times out too.
    child = hes(station, overlay=idle)
    child.expect("login: ")
    child.expect("logged out", timeout=10)
    child.expect(pexpect.EOF)


def test_without_the_daemon_the_store_still_shows_and_restart_brings_it_back(station: Substation) -> None:
    child = hes(station)
    sign_in(child, "tess")
    child.expect(PROMPT)
    child.sendline("restart")
    child.expect("\\[y/N\\] ")
    child.sendline("y")
    child.expect("The daemon is restarting")
    child.expect(pexpect.EOF)
    assert station.daemon is not None and station.daemon.wait(timeout=30) == 3  # systemd restarts a 3
    child = hes(station)
    child.expect("The daemon is not running")
    sign_in(child, "tess")
    child.expect(PROMPT)
    run(child, "show meters", "CON-D18")
    run(child, "show status", r"daemon not running \(its last status said: ")
    run(child, "read CON-A1 now", "needs the daemon, which is not running")
    run(child, "config show", "hes.log_level")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    station.start_daemon()


def test_accounts_are_managed_from_the_command_line(station: Substation) -> None:
    child = hes(station, "user", "add", "Bad Name", "--role", "viewer")
    child.expect("bad account name")
    child.expect(pexpect.EOF)
    child = hes(station, "user", "add", "olga", "--role", "admin")
    child.expect("new password: ")
    child.sendline("short")
    child.expect("at least 8 characters")
    child.expect(pexpect.EOF)
    child = hes(station, "user", "add", "olga", "--role", "admin", "--os-login")
    child.expect("account olga \\(admin\\) created")
    child.expect(pexpect.EOF)
    child = hes(station, "user", "passwd", "olga")
    for answer in ("olga-pass-1", "olga-pass-2"):
        child.expect("new password: |again: ")
        child.sendline(answer)
    child.expect("the passwords differ; nothing changed")
    child.expect(pexpect.EOF)
    child = hes(station, "user", "list")
    child.expect("olga +admin +OS login")
    child.expect("tess +technician +password")
    child.expect(pexpect.EOF)
    child = hes(station, "user", "del", "olga")
    child.expect("account olga removed")
    child.expect(pexpect.EOF)
    child = hes(station, "user", "del", "olga")
    child.expect("no account 'olga'")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
