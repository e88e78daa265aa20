"""The control socket: group-only permissions, sign-in with lockout, roles, the audit trail, and
requests that are garbage. A real Unix socket and a real store; the daemon's components behind the
socket are a recording stand-in of the `Handlers` interface (the console tests use the real daemon)."""

from __future__ import annotations

import grp
import json
import logging
import os
import pwd
import socket
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from appliance.cli import main
from appliance.clock import Clock
from appliance.commands import codes
from appliance.config import Config, load_config
from appliance.console import accounts
from appliance.console.accounts import Role
from appliance.control import MAX_LINE, ControlClient, ControlServer
from appliance.errors import AccessDenied, ControlError, DaemonUnavailable, UnknownMeter
from appliance.model import Reading, reading_type
from appliance.store import Store, open_store
from appliance.store.commands import State, Target, insert_command, relay_operations_since
from tests.conftest import write_config

GROUP = grp.getgrgid(os.getgid()).gr_name
PASSWORD = "secret-pass"
ME = pwd.getpwuid(os.getuid()).pw_name
ENERGY = reading_type("0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0")


def config_text(tmp_path: Path, auth: str = "password") -> str:
    return f"""
[commands]
relay_max_operations = 3
relay_window_s = 3600
[hes]
data_dir = "{tmp_path / "data"}"
[mqtt]
tls = false
[console]
socket = "{tmp_path / "c.sock"}"
group = "{GROUP}"
auth = "{auth}"
lockout_attempts = 3
lockout_s = 2
settings_file = "{tmp_path / "local.toml"}"
"""


class RecordingHandlers:
    """The daemon's side, recorded: what the control socket asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.restart_requested = False

    def read_now(self, meter_id: str) -> list[Reading]:
        self.calls.append(("read_now", meter_id))
        return [Reading(meter_id, ENERGY, datetime(2024, 5, 1, tzinfo=UTC), Decimal("12.5"))]

    def relay(self, meter_id: str, action: str) -> str:
        if meter_id not in ("M1", "M2"):
            raise UnknownMeter(f"meter {meter_id!r} is not registered on a running bus")
        self.calls.append(("relay", meter_id, action))
        return "disconnected"

    def discover(self, bus: str) -> list[dict[str, Any]]:
        raise ControlError("discovery on bus A found nothing to scan")

    def test_leds(self) -> str:
        return "watch the LEDs"

    def restart(self) -> None:
        self.calls.append(("restart",))
        self.restart_requested = True


class Daemon:
    """A control server on a thread, as `hes run` starts it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.handlers = RecordingHandlers()
        self.stop = threading.Event()
        self.server = ControlServer(config, self.handlers, lambda: open_store(config), Clock(), self.stop)

    def __enter__(self) -> Daemon:
        self.server.start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                self.client().close()
                return self
            except DaemonUnavailable:
                time.sleep(0.02)
        raise AssertionError("the control socket did not come up")

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.server.join(5)

    def client(self) -> ControlClient:
        return ControlClient(self.config.console.socket)

    def signed_in(self, name: str) -> ControlClient:
        client = self.client()
        client.request("login", user=name, password=PASSWORD)
        return client


@pytest.fixture
def config(tmp_path: Path) -> Config:
    config = load_config(write_config(tmp_path / "hes.toml", config_text(tmp_path)))
    store = open_store(config)
    for name, role in (("vic", Role.VIEWER), ("tess", Role.TECHNICIAN), ("ada", Role.ADMIN)):
        accounts.add_user(store, name, role, PASSWORD, 0)
    store.close()
    return config


@pytest.fixture
def daemon(config: Config) -> Iterator[Daemon]:
    with Daemon(config) as running:
        yield running


def audit_rows(config: Config) -> list[tuple[str, str, str]]:
    store = Store(config.store_path, readonly=True)
    try:
        return [(r["user"], r["command"], r["outcome"]) for r in accounts.audit_tail(store, 100)]
    finally:
        store.close()


def test_the_socket_admits_the_group_only_and_replaces_a_stale_one(config: Config) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(config.console.socket))  # a daemon that died left its socket behind
    stale.close()
    with Daemon(config) as daemon:
        mode = config.console.socket.stat()
        assert stat.S_ISSOCK(mode.st_mode) and stat.S_IMODE(mode.st_mode) == 0o660
        assert mode.st_gid == grp.getgrnam(GROUP).gr_gid
        beat = daemon.server.heartbeat
        time.sleep(1.5)
        assert daemon.server.heartbeat > beat  # the main loop's watchdog sees it alive
        assert daemon.client().request("status")["hes_id"] == "hes-0001"
    assert not config.console.socket.exists()  # removed on the way out
    with pytest.raises(DaemonUnavailable):
        ControlClient(config.console.socket)


def test_roles_decide_and_every_command_is_audited(daemon: Daemon) -> None:
    anonymous = daemon.client()
    assert anonymous.request("status")["hes_id"] == "hes-0001"  # `hes status`: no sign-in, no audit
    with pytest.raises(AccessDenied, match="sign in first"):
        anonymous.request("relay", meter="M1", action="disconnect")
    viewer = daemon.signed_in("vic")
    assert viewer.request("read_now", line="read M1 now", meter="M1")[0]["value"] == "12.5"
    with pytest.raises(AccessDenied, match="relay needs the technician role"):
        viewer.request("relay", line="relay M1 disconnect", meter="M1", action="disconnect")
    with pytest.raises(AccessDenied, match="admin"):
        viewer.request("audit", line="show audit")
    technician = daemon.signed_in("tess")
    answer = technician.request("relay", line="relay M1 disconnect", meter="M1", action="disconnect")
    assert answer == {"state": "disconnected"}
    with pytest.raises(ControlError, match="found nothing to scan"):
        technician.request("discover", line="discover bus A", bus="A")
    with pytest.raises(ControlError, match="no bus 'Z'"):
        technician.request("discover", line="discover bus Z", bus="Z")
    with pytest.raises(AccessDenied):
        viewer.request("restart", line="restart")
    assert technician.request("restart", line="restart") == {}
    assert daemon.handlers.calls == [("read_now", "M1"), ("relay", "M1", "disconnect"), ("restart",)]
    assert daemon.handlers.restart_requested
    shown = daemon.signed_in("ada").request("audit", line="show audit", limit=50)
    assert [(r["user"], r["command"], r["outcome"]) for r in shown] == [
        ("vic", "login", "ok"),
        ("vic", "read M1 now", "ok"),
        ("vic", "relay M1 disconnect", "denied"),
        ("vic", "show audit", "denied"),
        ("tess", "login", "ok"),
        ("tess", "relay M1 disconnect", "ok"),
        ("tess", "discover bus A", "failed: discovery on bus A found nothing to scan"),
        ("tess", "discover bus Z", "failed: no bus 'Z'; the buses are A, B"),
        ("vic", "restart", "denied"),
        ("tess", "restart", "ok"),
        ("ada", "login", "ok"),
    ]
    assert all(r["role"] in ("viewer", "technician", "admin") for r in shown)


def test_wrong_passwords_lock_the_account_for_a_while(daemon: Daemon) -> None:
    client = daemon.client()
    guess = {"user": "tess", "password": "guess"}
    for _ in range(2):
        with pytest.raises(AccessDenied, match="login incorrect"):
            client.request("login", **guess)
    with pytest.raises(AccessDenied, match="locked for 2 s"):
        client.request("login", **guess)
    with pytest.raises(DaemonUnavailable):  # three failures end the connection, like login(1)
        client.request("login", user="tess", password=PASSWORD)
    with pytest.raises(AccessDenied, match="locked"):  # the right password gains nothing while locked
        daemon.signed_in("tess")
    with pytest.raises(AccessDenied, match="login incorrect"):  # an unknown name says the same
        daemon.signed_in("nobody")
    time.sleep(2.2)
    assert daemon.signed_in("tess").request("config_show", line="config show")
    rows = audit_rows(daemon.config)
    assert rows[0] == ("-", "login tess", "refused: login incorrect")
    assert ("-", "login nobody", "refused: login incorrect") in rows
    assert rows[-2:] == [("tess", "login", "ok"), ("tess", "config show", "ok")]
    assert not any(PASSWORD in command or "guess" in command for _user, command, _ in rows)


def test_garbage_gets_an_answer_and_the_server_goes_on(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hes.control")
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(str(daemon.config.console.socket))
    reader = raw.makefile("rb")
    for line, error in (
        (b"not json\n", "one line of JSON"),
        (b"[1, 2]\n", 'with an "op"'),
        (b'{"op": "format_disk"}\n', "unknown request"),
        (b'{"op": "login", "user": 7, "password": "x"}\n', "must be a string"),
    ):
        raw.sendall(line)
        answer = json.loads(reader.readline())
        assert answer["ok"] is False and error in answer["error"]
    raw.sendall(b'{"op": "status", "pad": "' + b"x" * MAX_LINE + b'"}\n')
    assert "too long" in json.loads(reader.readline())["error"]
    assert reader.readline() == b""  # and the connection is closed
    raw.close()
    technician = daemon.signed_in("tess")
    with pytest.raises(ControlError, match="not a meter id"):
        technician.request("read_now", meter="../../etc")
    with pytest.raises(ControlError, match="connect or disconnect"):
        technician.request("relay", meter="M1", action="explode")
    assert technician.request("status")["hes_id"] == "hes-0001"
    assert any("not JSON" in r.getMessage() for r in caplog.records)
    assert any("over 65536 bytes" in r.getMessage() for r in caplog.records)


def test_os_login_takes_the_peer_from_the_kernel(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "hes.toml", config_text(tmp_path, auth="os")))
    with Daemon(config) as daemon:
        with pytest.raises(AccessDenied, match="no console account"):
            daemon.client().request("login", user="ada")
        store = open_store(config)
        accounts.add_user(store, ME, Role.TECHNICIAN, None, 0)
        store.close()
        # The name the client claims is ignored: the socket's peer credentials say who it is.
        assert daemon.client().request("login", user="ada") == {"user": ME, "role": "technician"}


def test_config_set_is_checked_against_the_whole_config(daemon: Daemon, tmp_path: Path) -> None:
    technician = daemon.signed_in("tess")
    done = technician.request("config_set", line="config set", key="hes.log_level", value="debug")
    assert done == {"key": "hes.log_level", "value": "debug", "file": str(tmp_path / "local.toml")}
    technician.request("config_set", key="buses.B.baud", value="19200")
    with pytest.raises(ControlError, match=r"hes\.log_level: one of debug"):
        technician.request("config_set", key="hes.log_level", value="loud")
    with pytest.raises(ControlError, match="cannot be changed here"):
        technician.request("config_set", key="mqtt.tls", value="false")
    with pytest.raises(ControlError, match="whole number"):
        technician.request("config_set", key="mqtt.port", value="eighty")
    overlay = load_config(*daemon.config.sources, tmp_path / "local.toml")
    assert (overlay.hes.log_level, overlay.buses["B"].baud, overlay.buses["A"].baud) == ("debug", 19200, 9600)
    shown = {row["key"]: row for row in technician.request("config_show")}
    assert shown["hes.log_level"]["running"] == "info" and shown["hes.log_level"]["pending"] == "debug"
    assert shown["mqtt.port"]["pending"] is None
    assert shown["hes.log_level"]["applied_at_start"] is False  # not among this daemon's --config files
    with pytest.raises(AccessDenied):
        daemon.signed_in("vic").request("config_set", key="hes.log_level", value="error")


def test_hes_status_asks_the_daemon_and_falls_back_to_the_file(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["status", "--json", "-c", str(config.sources[0])]
    with Daemon(config):
        assert main(arguments) == 0
        assert "daemon not running" not in json.loads(capsys.readouterr().out)["state"]
    assert main(arguments) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["state"].startswith("daemon not running") and "unsent_readings" in document["backlog"]


def test_password_hashes() -> None:
    stored = accounts.hash_password("correct horse")
    assert stored.startswith("scrypt$16384$8$1$") and "correct" not in stored
    assert accounts.verify_password("correct horse", stored)
    assert not accounts.verify_password("correct horsE", stored)
    assert stored != accounts.hash_password("correct horse")  # salted
    for broken in ("", "scrypt$1$2", "md5$1$1$1$AAAA$AAAA", "scrypt$x$8$1$AAAA$AAAA"):
        assert not accounts.verify_password("correct horse", broken)


def test_the_console_and_the_mdm_share_a_relay_rate_limit(daemon: Daemon) -> None:
    """At most 3 operations per meter and hour here: one from the MDM, two from the console, then both
    are refused; a meter the daemon does not know costs nothing."""
    now = int(time.time())
    store = open_store(daemon.config)
    with store.transaction() as conn:
        insert_command(
            conn, message_id="m-1", correlation_id="m-1", verb="create", noun="EndDeviceControls",
            source="MDM", reply_topic="r", request={}, priority=1, state=State.ACCEPTED, received_at=now,
            expires_at=now + 60, targets=[Target(0, "M1", "relay", State.ACCEPTED)],
            reply=("OK", codes.ACCEPTED, "accepted"),
        )  # fmt: skip
    technician = daemon.signed_in("tess")
    with pytest.raises(ControlError, match="not registered"):
        technician.request("relay", line="relay NOPE connect", meter="NOPE", action="connect")
    for action in ("disconnect", "connect"):
        technician.request("relay", line=f"relay M1 {action}", meter="M1", action=action)
    with pytest.raises(ControlError, match=r"meter M1: 3 relay operations in the last 3600 s"):
        technician.request("relay", line="relay M1 disconnect", meter="M1", action="disconnect")
    assert technician.request("relay", line="relay M2 disconnect", meter="M2", action="disconnect")
    assert daemon.handlers.calls == [
        ("relay", "M1", "disconnect"),
        ("relay", "M1", "connect"),
        ("relay", "M2", "disconnect"),
    ]
    assert relay_operations_since(store, "M1", now - 1) == 3  # what the MDM's next request meets
    assert relay_operations_since(store, "NOPE", now - 1) == 0
    store.close()
    assert audit_rows(daemon.config)[-2][1:] == (
        "relay M1 disconnect",
        "failed: 2.9: meter M1: 3 relay operations in the last 3600 s (at most 3); try later",
    )
