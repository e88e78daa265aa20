"""End to end: simulated meters -> daemon process -> Mosquitto (TLS, client certificates) -> MDM.

The checks compare what the store committed with what the MDM holds, reading by reading.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.sim.mdm import MdmListener
from appliance.sim.substation import Substation
from appliance.store.events import events_of
from appliance.store.readings import reading_from_row
from appliance.uplink import cim
from tests.conftest import CimSchemas, write_config

CONFIG = """
[hes]
id = "hes-e2e"
log_level = "debug"

[uplink]
scan_interval_s = 0.2
batch_max_readings = 7
status_interval_s = 1

[mqtt]
reconnect_min_s = 0.2
reconnect_max_s = 1

[bus_defaults]
timeout_ms = 300
retries = 1

[meter_defaults]
poll_interval_s = 1

[[meters]]
id = "E2E-A1"
bus = "A"
address = 1
model = "sdm630"

[[meters]]
id = "E2E-A2"
bus = "A"
address = 2
model = "generic-wh32"

[[meters]]
id = "E2E-B1"
bus = "B"
address = 1
model = "generic-wh32"
"""


@pytest.fixture
def substation(tmp_path: Path) -> Iterator[Substation]:
    with Substation(tmp_path / "run", write_config(tmp_path / "hes.toml", CONFIG)) as station:
        yield station


@pytest.fixture
def compact_substation(tmp_path: Path) -> Iterator[Substation]:
    config = CONFIG.replace("[uplink]\n", '[uplink]\nencoding = "cbor"\n')
    with Substation(tmp_path / "run", write_config(tmp_path / "hes.toml", config)) as station:
        yield station


def stored_readings(substation: Substation) -> dict[tuple[str, str, str], str]:
    """Every reading the store committed, keyed like MdmListener.carriers()."""
    store = substation.open_store()
    try:
        rows = store.conn.execute(
            """SELECT r.ts, m.mrid, t.code, r.value, r.quality FROM readings r
               JOIN meters m ON m.id = r.meter JOIN reading_types t ON t.id = r.rtype"""
        ).fetchall()
    finally:
        store.close()
    readings = [reading_from_row(*row) for row in rows]
    return {(r.meter_id, r.reading_type.code, cim.format_time(r.timestamp)): str(r.value) for r in readings}


def silence_meters_and_drain(substation: Substation, timeout: float = 20) -> None:
    """Stop the simulated meters, then wait until the outbox has nothing left to send."""
    for simulators in substation.simulators.values():
        for simulator in simulators:
            simulator.stop()

    assert substation.wait_for(substation.outbox_drained, timeout), (
        f"outbox not drained; see {substation.log}"
    )


def assert_mdm_holds_exactly_the_store(substation: Substation, mdm: MdmListener) -> None:
    """Every committed reading arrived, with its value, under exactly one MessageID."""
    stored = stored_readings(substation)
    assert stored, "nothing was collected"
    assert substation.wait_for(lambda: len(mdm.carriers()) >= len(stored), timeout=10)
    carriers = mdm.carriers()
    assert set(carriers) == set(stored)
    assert {k: str(r.value) for k, r in mdm.unique_readings().items()} == stored
    twice = {key: ids for key, ids in carriers.items() if len(ids) > 1}
    assert not twice, f"readings under more than one MessageID: {twice}"
    assert not mdm.errors


def test_readings_reach_the_mdm_as_valid_cim(substation: Substation, cim_schemas: CimSchemas) -> None:
    with substation.mdm() as mdm:
        substation.start_daemon()
        meters = {m.id for m in substation.config.meters}
        assert substation.wait_for(
            lambda: {r.meter_id for m in mdm.snapshot() for r in m.readings} == meters, 20
        )
        silence_meters_and_drain(substation)
        assert substation.stop_daemon() == 0
        assert_mdm_holds_exactly_the_store(substation, mdm)
        for message in mdm.snapshot():
            cim_schemas.validate(message.payload)
            assert message.topic == "hes/hes-e2e/cim/out/MeterReadings"
            assert message.content_type == "application/xml"
            assert (message.header.verb, message.header.noun, message.header.source) == (
                "created",
                "MeterReadings",
                "hes-e2e",
            )
            assert len(message.readings) <= 7
        assert len({m.header.message_id for m in mdm.snapshot()}) == len(mdm.snapshot())
        assert json.loads(mdm.status or b"{}") == {"state": "offline"}


def test_a_broker_outage_loses_nothing(substation: Substation) -> None:
    assert substation.broker is not None
    with substation.mdm() as mdm:
        substation.start_daemon()
        assert substation.wait_for(lambda: len(mdm.snapshot()) >= 3, 20)
        substation.broker.stop()
        during = len(stored_readings(substation))
        time.sleep(3)
        assert len(stored_readings(substation)) > during, "collection stopped with the broker"
        substation.broker.start()
        silence_meters_and_drain(substation, timeout=30)
        assert substation.stop_daemon() == 0
        assert_mdm_holds_exactly_the_store(substation, mdm)


def test_a_box_without_its_certificate_collects_and_sends_once_it_is_there(substation: Substation) -> None:
    """A fresh box whose certificate is still being signed: no config error, collection goes on, the
    uplink waits, and starts by itself when the file arrives."""
    certificate = substation.config.mqtt.cert_file
    parked = certificate.with_name("device.pem.parked")
    certificate.rename(parked)
    with substation.mdm() as mdm:
        substation.start_daemon()
        status_file = substation.config.hes.data_dir / "status.json"
        assert substation.wait_for(lambda: len(stored_readings(substation)) >= 6 and status_file.exists(), 20)
        status = json.loads(status_file.read_text())
        assert status["uplink"]["connected"] is False
        assert "mqtt.cert_file" in status["uplink"]["waiting_for"]
        assert mdm.snapshot() == []
        parked.rename(certificate)
        silence_meters_and_drain(substation, timeout=30)
        assert substation.stop_daemon() == 0
        assert_mdm_holds_exactly_the_store(substation, mdm)
    log = substation.log.read_text()
    assert log.count("uplink waits: mqtt.cert_file") == 1 and "the uplink starts" in log


def test_kill_9_at_random_moments_loses_nothing_and_duplicates_nothing(substation: Substation) -> None:
    chance = random.Random(20261124)
    with substation.mdm() as mdm:
        for _ in range(4):
            substation.start_daemon()
            time.sleep(chance.uniform(0.8, 3.0))
            assert substation.stop_daemon(signal.SIGKILL) == -signal.SIGKILL
        substation.start_daemon()
        silence_meters_and_drain(substation)
        assert substation.stop_daemon() == 0
        assert_mdm_holds_exactly_the_store(substation, mdm)


def test_compact_encoding_arrives_as_the_same_valid_cim(
    compact_substation: Substation, cim_schemas: CimSchemas
) -> None:
    substation = compact_substation
    with substation.mdm() as mdm:
        substation.start_daemon()
        assert substation.wait_for(lambda: len(mdm.snapshot()) >= 4, 20)
        silence_meters_and_drain(substation)
        assert substation.stop_daemon() == 0
        assert_mdm_holds_exactly_the_store(substation, mdm)
        for message in mdm.snapshot():
            assert message.content_type == "application/cbor"
            assert len(message.payload) * 3 < len(message.xml)
            cim_schemas.validate(message.xml)


def test_status_shows_the_link_and_the_backlog(substation: Substation) -> None:
    with substation.mdm() as mdm:
        substation.start_daemon()

        def status() -> dict:
            return json.loads(mdm.status or b"{}")

        assert substation.wait_for(lambda: status().get("uplink", {}).get("messages_acknowledged", 0) > 0, 20)
        document = status()
        assert document["state"] == "online" and document["hes_id"] == "hes-e2e"
        assert document["uplink"]["connected"] is True
        assert set(document["backlog"]) >= {"unsent_readings", "oldest_unsent", "drain_rate_per_s"}
        assert set(document["buses"]) == {"A", "B"} and document["buses"]["A"]["successes"] > 0
        shown = subprocess.run(
            [
                sys.executable,
                "-m",
                "appliance",
                "status",
                "-c",
                str(substation.base_config),
                "-c",
                str(substation.overlay),
            ],
            check=False,
            capture_output=True,
            text=True,
        )
        assert shown.returncode == 0, shown.stderr
        assert "HES hes-e2e: online" in shown.stdout and "connected to 127.0.0.1" in shown.stdout
        assert "unsent readings" in shown.stdout and "bus A:" in shown.stdout


def test_broker_stopped_again_and_again_while_a_backlog_drains(substation: Substation) -> None:
    assert substation.broker is not None
    chance = random.Random(7)
    with substation.mdm() as mdm:
        substation.start_daemon()
        assert substation.wait_for(lambda: len(mdm.snapshot()) >= 2, 20)
        for _ in range(3):
            substation.broker.stop()
            time.sleep(chance.uniform(2.0, 4.0))  # a backlog builds up
            substation.broker.start()
            time.sleep(chance.uniform(0.0, 0.6))  # and the broker goes away again while it drains
        substation.broker.stop()
        time.sleep(1)
        substation.broker.start()
        silence_meters_and_drain(substation, timeout=30)
        assert substation.stop_daemon() == 0
        assert_mdm_holds_exactly_the_store(substation, mdm)


@pytest.mark.slow
def test_kill_9_fifty_times(substation: Substation) -> None:
    chance = random.Random(50)
    with substation.mdm() as mdm:
        for _ in range(50):
            substation.start_daemon()
            time.sleep(chance.uniform(0.05, 1.5))
            assert substation.stop_daemon(signal.SIGKILL) == -signal.SIGKILL
        substation.start_daemon()
        silence_meters_and_drain(substation, timeout=30)
        assert substation.stop_daemon() == 0
        assert_mdm_holds_exactly_the_store(substation, mdm)


def test_the_daemon_feeds_the_watchdog_when_systemd_asks(substation: Substation) -> None:
    substation.start_daemon(watchdog_usec=1_000_000)  # WatchdogSec=1s: a ping every half second
    # Over 4 s, of which the start takes up to a second or two on a loaded machine.
    pings = [n for n in substation.notifications(4.0) if n == b"WATCHDOG=1"]
    assert 3 <= len(pings) <= 9
    assert substation.stop_daemon() == 0


def test_modbus_and_dlms_meters_share_a_bus(tmp_path: Path, cim_schemas: CimSchemas) -> None:
    keys = write_config(tmp_path / "E2E-D18.keys", 'password = "demo-pass"\n')
    dlms = (
        '\n[[meters]]\nid = "E2E-D17"\nbus = "A"\nprotocol = "dlms"\naddress = 17\nmodel = "dlms-generic"\n'
        '\n[[meters]]\nid = "E2E-D18"\nbus = "A"\nprotocol = "dlms"\naddress = 18\nmodel = "dlms-generic"\n'
        f'client_address = 1\nauth = "low"\nkeys_file = "{keys}"\n'
    )
    with Substation(tmp_path / "run", write_config(tmp_path / "hes.toml", CONFIG + dlms)) as substation:
        assert [type(s).__name__ for s in substation.simulators["A"]] == [
            "SimulatedModbusBus",
            "SimulatedDlmsBus",
        ]
        with substation.mdm() as mdm:
            substation.start_daemon()
            meters = {m.id for m in substation.config.meters}
            assert substation.wait_for(
                lambda: {r.meter_id for m in mdm.snapshot() for r in m.readings} == meters, 30
            ), substation.log.read_text()[-3000:]
            silence_meters_and_drain(substation)
            assert substation.stop_daemon() == 0
            assert_mdm_holds_exactly_the_store(substation, mdm)
            for message in mdm.snapshot():
                cim_schemas.validate(message.payload)
            profile = [r for m in mdm.snapshot() for r in m.readings if r.reading_type.is_interval]
            assert {r.meter_id for r in profile} == {"E2E-D17", "E2E-D18"}
            assert len(profile) >= 2 * 2 * 96 * 2  # two meters, two channels, two days of quarter hours
            # The meters' event logs arrive as EndDeviceEvents, each event once, as the store has them.
            received = [e for m in mdm.snapshot() for e in m.events]
            assert {m.topic for m in mdm.snapshot() if m.events} == {"hes/hes-e2e/cim/out/EndDeviceEvents"}
            store = substation.open_store()
            try:
                stored = events_of(store, "E2E-D17") + events_of(store, "E2E-D18")
            finally:
                store.close()
            assert len(stored) == 8 and sorted(received, key=repr) == sorted(stored, key=repr)
