"""The daemon's contract with systemd: notifications that never block, a watchdog only when asked."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

from appliance.app import sd_notify, watchdog_interval


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


@pytest.mark.timeout(20)
def test_sd_notify_delivers_and_never_blocks_when_nobody_reads(notify_socket: socket.socket) -> None:
    sd_notify("READY=1")
    assert notify_socket.recv(64) == b"READY=1"
    for _ in range(2000):  # far more than the socket's queue holds
        sd_notify("WATCHDOG=1")
    notify_socket.settimeout(1)
    assert notify_socket.recv(64) == b"WATCHDOG=1"


def test_sd_notify_without_systemd_or_with_a_dead_socket_is_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hes")
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    sd_notify("READY=1")
    assert caplog.records == []  # outside systemd: nothing to do, nothing to say
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody.sock"))
    sd_notify("READY=1")  # must not raise
    assert [(r.levelno, "READY=1 not delivered" in r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, True)
    ]


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("30000000", "1", None),
        ("x", None, None),
    ],
)
def test_watchdog_only_when_systemd_asks_for_this_process(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for name, value in (
        ("WATCHDOG_USEC", usec),
        ("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid),
    ):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert watchdog_interval() == expected
