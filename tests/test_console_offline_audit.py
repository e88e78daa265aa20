"""The console's audit trail while the daemon is down: `hes console` on a real pty without a daemon
writes its spool, the import into a real store (and a real daemon process) takes every entry exactly
once, wrong passwords typed offline lock the account, and an unwritable spool restricts the session."""

from __future__ import annotations

import grp
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pexpect
import pytest

from appliance.config import Config, load_config
from appliance.console import accounts, spool
from appliance.console.accounts import Account, Role
from appliance.control import ControlClient
from appliance.errors import AccessDenied, AuditSpoolError
from appliance.store import Store
from tests.conftest import write_config
from tests.test_console import run as console_line
from tests.test_console import sign_in, spawn_console
from tests.test_systemd_units import SYSTEMD, base_root, run, tool

GROUP = grp.getgrgid(os.getgid()).gr_name
PASSWORD = "tech-pass-1"
PROMPT = r"hes-off[#>] "
CONFIG = """
[hes]
id = "hes-off"
data_dir = "{base}/data"
[mqtt]
tls = false
port = 1
[leds]
gpio = "fake"
[clock]
gpsd_host = ""
[buses.A]
enabled = false
[buses.B]
enabled = false
[console]
socket = "{base}/control.sock"
group = "{group}"
lockout_attempts = 3
lockout_s = 900
"""


@pytest.fixture
def box(tmp_path: Path) -> tuple[Path, Config]:
    """A box whose daemon is not running: a store with two accounts, the config file."""
    config_file = write_config(tmp_path / "hes.toml", CONFIG.format(base=tmp_path, group=GROUP))
    config = load_config(config_file)
    store = Store(config.store_path)
    accounts.add_user(store, "tess", Role.TECHNICIAN, PASSWORD, 100)
    accounts.add_user(store, "vic", Role.VIEWER, PASSWORD, 100)
    store.close()
    return config_file, config


def console(config_file: Path) -> pexpect.spawn:
    """`hes console` with this box's config, as on the serial console."""
    return spawn_console("-c", str(config_file))


def type_line(child: pexpect.spawn, line: str, *expected: str) -> None:
    console_line(child, line, *expected, prompt=PROMPT)


def spooled(config: Config) -> list[tuple]:
    entries, bad = spool.read_entries(spool.spool_path(config))
    assert bad == 0
    return [(e.user, e.role, e.command, e.outcome, e.counts_for, e.signed_in) for e in entries]


def audit_rows(config: Config) -> list[tuple]:
    store = Store(config.store_path, readonly=True)
    try:
        return [
            tuple(row)
            for row in store.conn.execute(
                "SELECT user, command, outcome, spool_id FROM console_audit ORDER BY id"
            )
        ]
    finally:
        store.close()


def lockout_of(config: Config, name: str) -> accounts.Lockout | None:
    store = Store(config.store_path, readonly=True)
    try:
        return accounts.lockout_of(store, name)
    finally:
        store.close()


def import_now(config: Config) -> int:
    store = Store(config.store_path)
    try:
        return spool.import_spool(store, config)
    finally:
        store.close()


def test_the_console_without_the_daemon_spools_what_the_daemon_would_have_audited(
    box: tuple[Path, Config],
) -> None:
    config_file, config = box
    child = console(config_file)
    child.expect(f"The daemon is not running: .* the audit trail waits in {spool.spool_path(config)}")
    sign_in(child, "tess", "wrong-password")
    child.expect("login incorrect")
    sign_in(child, "tess")
    child.expect("Signed in as tess \\(technician\\)")
    child.expect(PROMPT)
    type_line(child, "sh meters", "no meters registered")
    type_line(child, "read M1 now", "needs the daemon, which is not running")
    type_line(child, "show version", "store    schema")
    type_line(child, "help", "list the commands")
    type_line(child, "show readings M1 --from yesterday", "not a time")
    child.sendline("exit")
    child.expect(pexpect.EOF)
    # A viewer's refused export is spooled as the daemon records a role refusal.
    child = console(config_file)
    sign_in(child, "vic")
    child.expect("hes-off> ")
    child.sendline("export readings")
    child.expect("Denied: export needs the technician role")
    child.expect("hes-off> ")
    child.sendeof()
    child.expect(pexpect.EOF)

    assert spooled(config) == [
        ("-", "-", "login tess", "refused: login incorrect", "tess", False),
        ("tess", "technician", "login", "ok", "tess", True),
        ("tess", "technician", "sh meters", "ok", "", False),
        (
            "tess",
            "technician",
            "read M1 now",
            "failed: this needs the daemon, which is not running",
            "",
            False,
        ),
        ("tess", "technician", "show version", "ok", "", False),
        (
            "tess",
            "technician",
            "show readings M1 --from yesterday",
            "failed: not a time: 'yesterday' (2024-05-01, 2024-05-01T10:00, now, -24h)",
            "",
            False,
        ),
        ("vic", "viewer", "login", "ok", "vic", True),
        ("vic", "viewer", "export readings", "denied", "", False),
    ]


def test_the_import_takes_every_entry_exactly_once_even_when_interrupted(
    box: tuple[Path, Config], caplog: pytest.LogCaptureFixture
) -> None:
    _config_file, config = box
    path = spool.spool_path(config)
    leftover = path.with_name(path.name + ".importing")
    tess = Account("tess", Role.TECHNICIAN)
    wrong = accounts.SignIn(None, AccessDenied("login incorrect"), accounts.Lockout(1, 0), True)
    spool.append(path, spool.Entry.sign_in(1000, "tess", wrong))
    spool.append(path, spool.Entry.new(1001, tess, "show meters", "ok"))
    # Killed right after the rename: the entries wait in .importing, and the console went on writing.
    os.replace(path, leftover)
    spool.append(path, spool.Entry.new(1002, tess, "show events", "ok"))
    assert import_now(config) == 3
    assert not leftover.exists() and path.exists() and path.stat().st_size == 0
    assert [row[:2] for row in audit_rows(config)] == [
        ("-", "login tess"),
        ("tess", "show meters"),
        ("tess", "show events"),
    ]
    assert lockout_of(config, "tess") == accounts.Lockout(1, 0)  # the wrong password counts
    # Killed after the commit, before the unlink: the same file comes back and adds nothing.
    spool.append(path, spool.Entry.sign_in(1003, "tess", wrong))
    spool.append(path, spool.Entry.new(1004, tess, "show buffer", "ok"))
    committed = path.read_bytes()
    assert import_now(config) == 2
    leftover.write_bytes(committed)
    assert import_now(config) == 0
    rows = audit_rows(config)
    assert len(rows) == 5 and len({row[3] for row in rows}) == 5
    assert lockout_of(config, "tess") == accounts.Lockout(2, 0)  # counted once, not twice
    # A torn line (a power cut mid-write) is skipped with one log line; the rest still counts.
    spool.append(path, spool.Entry.new(1005, tess, "show wan", "ok"))
    with path.open("ab") as torn:
        torn.write(b'{"id":"abc","ts":10')
    caplog.set_level(logging.INFO, "appliance.console.spool")
    assert import_now(config) == 1
    assert "1 lines are not audit entries, skipped" in caplog.text
    # Nothing spooled: nothing to do, and the spool stays.
    assert import_now(config) == 0 and path.exists()


def test_entries_written_while_the_daemon_imports_are_neither_lost_nor_doubled(
    box: tuple[Path, Config],
) -> None:
    _config_file, config = box
    path = spool.spool_path(config)
    tess = Account("tess", Role.TECHNICIAN)
    written = 300

    def console_writes() -> None:
        for number in range(written):
            spool.append(path, spool.Entry.new(number, tess, f"show meter M{number}", "ok"))

    writer = threading.Thread(target=console_writes)
    store = Store(config.store_path)
    try:
        writer.start()
        imports = 0
        while writer.is_alive():
            spool.import_spool(store, config)  # renames the spool under the console's feet
            imports += 1
        writer.join()
        spool.import_spool(store, config)
    finally:
        store.close()
    commands = [row[1] for row in audit_rows(config)]
    assert sorted(commands) == sorted(f"show meter M{number}" for number in range(written))
    assert imports > 1


def test_wrong_passwords_without_the_daemon_lock_the_account(box: tuple[Path, Config]) -> None:
    config_file, config = box
    child = console(config_file)
    for expected in (
        "login incorrect",
        "login incorrect",
        "login incorrect; the account is locked for 900 s",
    ):
        sign_in(child, "tess", "wrong-password")
        child.expect(expected)
    child.expect("Too many failed sign-ins")
    child.expect(pexpect.EOF)
    # The next session refuses even the right password, as the daemon would.
    child = console(config_file)
    sign_in(child, "tess")
    child.expect("account locked for another (\\d+) s after too many wrong passwords")
    assert 880 <= int(child.match.group(1)) <= 900
    child.sendcontrol("c")
    child.expect(pexpect.EOF)
    # The daemon takes the lock over when it imports the spool.
    assert import_now(config) == 4
    locked = lockout_of(config, "tess")
    assert locked is not None and locked.failed == 0 and locked.locked_until > time.time() + 800
    store = Store(config.store_path)
    try:
        with pytest.raises(AccessDenied, match="account locked for another"):
            accounts.login(store, "tess", PASSWORD, int(time.time()), 3, 900)
    finally:
        store.close()


def test_two_wrong_passwords_offline_and_one_with_the_daemon_lock_the_account(
    box: tuple[Path, Config],
) -> None:
    config_file, config = box
    child = console(config_file)
    for _ in range(2):
        sign_in(child, "tess", "wrong-password")
        child.expect("login incorrect")
    child.sendcontrol("c")
    child.expect(pexpect.EOF)
    assert import_now(config) == 2
    store = Store(config.store_path)
    try:
        with pytest.raises(AccessDenied, match="the account is locked for 900 s"):
            accounts.login(store, "tess", "wrong-again", int(time.time()), 3, 900)
    finally:
        store.close()


def test_the_daemon_imports_at_start_and_at_each_sign_in(box: tuple[Path, Config], tmp_path: Path) -> None:
    config_file, config = box
    path = spool.spool_path(config)
    tess = Account("tess", Role.TECHNICIAN)
    spool.append(path, spool.Entry.new(1000, tess, "show meters", "ok"))
    path.with_name(path.name + ".importing").write_bytes(
        spool.Entry.new(999, tess, "show status", "ok").line()
    )  # a daemon killed mid-import left this
    log = tmp_path / "daemon.log"
    with log.open("w") as output:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "appliance", "run", "--config", str(config_file)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not config.console.socket.exists() and daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert config.console.socket.exists(), log.read_text()
        assert [row[1] for row in audit_rows(config)] == ["show status", "show meters"]
        # The daemon put an empty spool back for the console, writable by the group.
        assert path.stat().st_size == 0 and path.stat().st_mode & 0o777 == 0o660
        # A console still running from before the start spools on; the next sign-in imports it.
        spool.append(path, spool.Entry.new(1001, tess, "show wan", "ok"))
        client = ControlClient(config.console.socket)
        try:
            client.request("login", user="tess", password=PASSWORD)
        finally:
            client.close()
        commands = [row[1] for row in audit_rows(config)]
        assert commands == ["show status", "show meters", "show wan", "login"]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    text = log.read_text()
    assert "console audit: 2 entries spooled while the daemon was down imported" in text
    assert "console audit: 1 entries spooled while the daemon was down imported" in text


def test_an_unwritable_spool_allows_only_the_status(box: tuple[Path, Config]) -> None:
    config_file, config = box
    spool.spool_path(config).mkdir()  # opening it for writing fails, as root too
    child = console(config_file)
    sign_in(child, "tess")
    child.expect(
        "cannot be written \\(Is a directory\\): nothing can be audited, so until you log out only show"
    )
    child.expect("Signed in as tess")
    child.expect(PROMPT)
    type_line(child, "show meters", "Denied: show meters cannot run: the audit spool cannot be written")
    type_line(child, "export readings", "Denied: export readings cannot run")
    type_line(child, "show status", "HES hes-off: ")
    type_line(child, "help", "list the commands")
    child.sendline("exit")
    child.expect(pexpect.EOF)


def test_a_full_spool_refuses_the_entry_and_keeps_the_file_whole(box: tuple[Path, Config]) -> None:
    _config_file, config = box
    path = spool.spool_path(config)
    entry = spool.Entry.new(1000, Account("tess", Role.TECHNICIAN), "show meters", "ok")
    path.write_bytes(entry.line() * (spool.MAX_SPOOL_BYTES // len(entry.line())))
    before = path.read_bytes()
    with pytest.raises(AuditSpoolError, match="is full"):
        spool.append(path, entry)
    assert path.read_bytes() == before


def test_the_lockout_rule_of_the_daemon_is_unchanged(box: tuple[Path, Config]) -> None:
    _config_file, config = box
    store = Store(config.store_path)
    try:
        for _ in range(2):
            with pytest.raises(AccessDenied, match=r"^login incorrect$"):
                accounts.login(store, "tess", "wrong-password", 1000, 3, 900)
        assert accounts.login(store, "tess", PASSWORD, 1001, 3, 900).role is Role.TECHNICIAN
        assert accounts.lockout_of(store, "tess") == accounts.Lockout(0, 0)  # a sign-in clears the count
        for _ in range(2):
            with pytest.raises(AccessDenied, match=r"^login incorrect$"):
                accounts.login(store, "tess", "wrong-password", 1002, 3, 900)
        with pytest.raises(AccessDenied, match="locked for 900 s"):
            accounts.login(store, "tess", "wrong-password", 1003, 3, 900)
        with pytest.raises(AccessDenied, match="locked for another 897 s"):
            accounts.login(store, "tess", PASSWORD, 1006, 3, 900)
        assert accounts.login(store, "tess", PASSWORD, 1903, 3, 900).name == "tess"
        with pytest.raises(AccessDenied, match=r"^login incorrect$"):  # an unknown name: the same answer
            accounts.login(store, "nobody", "wrong-password", 1904, 3, 900)
    finally:
        store.close()


def test_tmpfiles_makes_the_spool_for_the_group(tmp_path: Path) -> None:
    sysusers = tool("systemd-sysusers", "systemd")
    tmpfiles = tool("systemd-tmpfiles", "systemd")
    root = base_root(tmp_path)
    assert run(sysusers, f"--root={root}", SYSTEMD / "sysusers.d/hes.conf").returncode == 0
    made = run(tmpfiles, "--create", f"--root={root}", SYSTEMD / "tmpfiles.d/hes.conf")
    assert made.returncode == 0, made.stderr
    info = (root / "data/hes" / spool.SPOOL_NAME).stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777, info.st_size) == (950, 950, 0o660, 0)
