"""The first console accounts of a fresh box: `hes console user hash` on a laptop, the card's
hes/console-users, and its import by the daemon at start (real store, real daemon process)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.console import accounts
from appliance.console.accounts import Role
from appliance.errors import HesError
from appliance.store import Store
from tests.conftest import write_config

DAEMON_CONFIG = """
[hes]
id = "hes-prov"
data_dir = "{data}"
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
"""


def hash_command(stdin: str, *arguments: str) -> subprocess.CompletedProcess:
    """`hes console user hash` with its answers piped in, in a directory without any box config."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", "console", *arguments, "user", "hash"],
        input=stdin,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )


@pytest.fixture(scope="module")
def made_hash() -> str:
    result = hash_command("laptop-pass-1\nlaptop-pass-1\n", "--config", "/nonexistent/hes.toml")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_hash_command_needs_no_box_and_its_hash_verifies(made_hash: str) -> None:
    assert made_hash.startswith("scrypt$16384$8$1$") and "laptop-pass-1" not in made_hash
    assert accounts.check_hash(made_hash) == made_hash
    assert accounts.verify_password("laptop-pass-1", made_hash)
    assert not accounts.verify_password("laptop-pass-2", made_hash)


@pytest.mark.parametrize(
    ("stdin", "error"),
    [
        ("laptop-pass-1\nlaptop-pass-2\n", "the passwords differ"),
        ("short\nshort\n", "at least 8 characters"),
        ("laptop-pass-1\n", "no input for 'again'"),
    ],
)
def test_the_hash_command_refuses_bad_answers(stdin: str, error: str) -> None:
    result = hash_command(stdin)
    assert result.returncode == 1
    assert error in result.stderr and result.stdout == ""


def write_users(tmp_path: Path, text: str) -> Path:
    return write_config(tmp_path / "console-users", text)


def roles(store: Store) -> dict[str, str]:
    return {row["name"]: row["role"] for row in accounts.list_users(store)}


def test_import_creates_new_accounts_once_and_never_touches_existing_ones(
    tmp_path: Path, made_hash: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "hes.db")
    accounts.add_user(store, "tess", Role.VIEWER, "own-pass-1", 100)
    users = write_users(
        tmp_path,
        f"# the first accounts\n\nanna admin {made_hash}\n  tess   technician   {made_hash}\n"
        f"vic viewer {made_hash}  # a trailing comment is no field\n",
    )
    caplog.set_level(logging.INFO, "appliance.console.accounts")
    assert accounts.import_accounts(store, users, 200) == ["anna"]
    assert roles(store) == {"anna": "admin", "tess": "viewer"}
    assert "console-users:5 refused: expected NAME ROLE HASH, found 10 fields" in caplog.text
    assert made_hash.rsplit("$", maxsplit=1)[-1] not in caplog.text  # never the hash in the log
    # Existing accounts keep their password and role; anna signs in with the laptop's password.
    assert accounts.check_login(store, "tess", "own-pass-1").role is Role.VIEWER
    assert accounts.check_login(store, "anna", "laptop-pass-1").role is Role.ADMIN
    # At the next start nothing changes, even after anna changed her password on the box.
    accounts.set_password(store, "anna", "anna-pass-2", 300)
    caplog.clear()
    assert accounts.import_accounts(store, users, 400) == []
    assert "created" not in caplog.text
    assert accounts.check_login(store, "anna", "anna-pass-2").name == "anna"
    # No file (nothing on the card): nothing to do.
    assert accounts.import_accounts(store, tmp_path / "missing", 500) == []
    store.close()


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("Bad/Name admin {hash}", "the name may use a-z"),
        ("olga root {hash}", "the role is one of viewer, technician, admin"),
        ("olga admin clear-password", "not a hash of `hes console user hash`"),
        ("olga admin {hash} extra", "expected NAME ROLE HASH, found 4 fields"),
        (
            "olga admin scrypt$3$8$1$c2FsdHNhbHQ=$a2V5",
            "not a hash of `hes console user hash` (scrypt, n a power",
        ),
        ("olga admin {hash}x", "not a hash"),
    ],
)
def test_a_bad_line_is_refused_naming_it_and_the_good_lines_still_count(
    tmp_path: Path, made_hash: str, caplog: pytest.LogCaptureFixture, line: str, error: str
) -> None:
    store = Store(tmp_path / "hes.db")
    users = write_users(tmp_path, f"anna admin {made_hash}\n{line.format(hash=made_hash)}\n")
    assert accounts.import_accounts(store, users, 100) == ["anna"]
    refusals = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(refusals) == 1 and f"{users}:2 refused: {error}" in refusals[0]
    assert "clear-password" not in caplog.text and made_hash not in caplog.text
    assert roles(store) == {"anna": "admin"}
    store.close()


def test_check_hash_refuses_what_verify_could_never_match() -> None:
    with pytest.raises(HesError, match="not a hash"):
        accounts.check_hash("")
    with pytest.raises(HesError, match="32-byte key"):
        accounts.check_hash("scrypt$16384$8$1$c2FsdHNhbHQ=$a2V5")  # a 3-byte key


def test_the_daemon_imports_the_file_beside_the_box_config_at_start(tmp_path: Path, made_hash: str) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    config_file = write_config(etc / "hes.toml", DAEMON_CONFIG.format(data=tmp_path / "data"))
    config = load_config(config_file)
    assert accounts.provisioned_file(config) == etc / "console-users"
    write_users(etc, f"tech technician {made_hash}\n")
    log = tmp_path / "daemon.log"
    with log.open("w") as output:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "appliance", "run", "--config", str(config_file)],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).parent.parent,
        )
    try:
        deadline = time.monotonic() + 30
        while "starting" not in log.read_text() and daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    text = log.read_text()
    assert "console account tech (technician) created from" in text, text
    assert made_hash not in text
    store = Store(config.store_path)
    assert accounts.check_login(store, "tech", "laptop-pass-1").role is Role.TECHNICIAN
    store.close()
