"""DLMS invocation counters in the store: reserved in blocks, never handed out twice, also after kill -9."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.collect.dlms.security import MAX_INVOCATION_COUNTER, SecurityError, SecurityKeys
from appliance.store.db import Store
from appliance.store.dlms_counters import DlmsCounters, key_id, open_counters

EK = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
AK = bytes.fromhex("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF")
KEYS = SecurityKeys(EK, AK)
TITLE = b"HESTEST1"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "hes.db"


def stored(path: Path) -> dict[tuple[str, str], tuple[int, int | None]]:
    store = Store(path, readonly=True)
    try:
        rows = store.conn.execute("SELECT meter, key_id, reserved_up_to, meter_last FROM dlms_counters")
        return {(meter, key): (reserved, last) for meter, key, reserved, last in rows}
    finally:
        store.close()


def test_the_block_is_on_disk_before_its_first_counter_is_used(path: Path) -> None:
    store = Store(path)
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    counters = DlmsCounters(store, "M1", "k", block=10)
    assert stored(path) == {}
    assert counters.next_outgoing() == 0
    assert stored(path) == {("M1", "k"): (9, None)}  # read by another connection: committed
    assert [counters.next_outgoing() for _ in range(9)] == list(range(1, 10))
    assert stored(path)[("M1", "k")][0] == 9  # no write inside the block
    assert counters.next_outgoing() == 10
    assert stored(path)[("M1", "k")][0] == 19
    store.close()


def test_after_a_restart_counting_goes_on_above_the_reservation(path: Path) -> None:
    store = Store(path)
    first = DlmsCounters(store, "M1", "k", block=10)
    used = [first.next_outgoing() for _ in range(3)]  # 0, 1, 2 used; 3..9 reserved, never used
    store.close()
    again = DlmsCounters(Store(path), "M1", "k", block=10)
    assert again.next_outgoing() == 10 > max(used)


def test_a_killed_process_loses_no_reservation(path: Path) -> None:
    Store(path).close()
    script = """
import os, signal, sys
from pathlib import Path
from appliance.store.db import Store
from appliance.store.dlms_counters import DlmsCounters
counters = DlmsCounters(Store(Path(sys.argv[1])), "M1", "k", block=7)
print(",".join(str(counters.next_outgoing()) for _ in range(12)), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    child = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=REPO,
    )
    assert child.returncode == -9, child.stderr
    used = [int(n) for n in child.stdout.strip().split(",")]
    assert used == list(range(12))
    counters = DlmsCounters(Store(path), "M1", "k", block=7)
    assert counters.next_outgoing() == 14  # two blocks (0-6, 7-13) were reserved before the kill


def test_meters_sharing_a_key_never_share_a_counter(path: Path) -> None:
    store = Store(path)
    a = DlmsCounters(store, "A", "shared", block=5)
    b = DlmsCounters(Store(path), "B", "shared", block=5)  # another thread's connection
    other = DlmsCounters(store, "C", "other-key", block=5)
    drawn_a, drawn_b = [], []
    for _ in range(12):
        drawn_a.append(a.next_outgoing())
        drawn_b.append(b.next_outgoing())
    assert not set(drawn_a) & set(drawn_b)
    assert drawn_a == sorted(drawn_a) and drawn_b == sorted(drawn_b)  # each meter sees them grow
    assert other.next_outgoing() == 0  # another key starts its own sequence


def test_the_meters_counter_is_kept_at_its_highest(path: Path) -> None:
    store = Store(path)
    counters = DlmsCounters(store, "M1", "k")
    assert counters.last_incoming() is None
    counters.accept_incoming(41)
    counters.accept_incoming(7)  # never lowers it
    assert counters.last_incoming() == 41
    assert stored(path) == {("M1", "k"): (-1, 41)}  # no outgoing counter reserved by that
    store.close()
    assert DlmsCounters(Store(path), "M1", "k").last_incoming() == 41
    with pytest.raises(ValueError, match="out of range"):
        counters.accept_incoming(MAX_INVOCATION_COUNTER + 1)


def test_skip_to_what_the_meter_expects(path: Path) -> None:
    counters = DlmsCounters(Store(path), "M1", "k", block=10)
    assert counters.next_outgoing() == 0
    counters.skip_outgoing_to(5000)
    assert counters.next_outgoing() == 5000
    counters.skip_outgoing_to(12)  # never backwards
    assert counters.next_outgoing() == 5001


def test_counters_run_out_with_a_clear_error(path: Path) -> None:
    counters = DlmsCounters(Store(path), "M1", "k", block=100)
    counters.skip_outgoing_to(MAX_INVOCATION_COUNTER - 1)
    assert [counters.next_outgoing() for _ in range(2)] == [
        MAX_INVOCATION_COUNTER - 1,
        MAX_INVOCATION_COUNTER,
    ]
    with pytest.raises(SecurityError, match="new keys"):
        counters.next_outgoing()


def test_key_ids_tell_keys_apart_and_show_none_of_them(path: Path) -> None:
    ids = {
        key_id(KEYS, TITLE),
        key_id(SecurityKeys(EK, bytes(16)), TITLE),
        key_id(SecurityKeys(bytes(16), AK), TITLE),
        key_id(KEYS, b"HESTEST2"),
    }
    assert len(ids) == 4 and key_id(KEYS, TITLE) == key_id(SecurityKeys(EK, AK), TITLE)
    counters = open_counters(Store(path), "M1", KEYS, TITLE)
    counters.next_outgoing()
    counters.accept_incoming(3)
    dump = path.read_bytes() + path.with_name(path.name + "-wal").read_bytes()
    for secret in (EK, AK):
        assert secret not in dump and secret.hex().encode() not in dump.lower()
    assert EK.hex() not in repr(counters).lower()
