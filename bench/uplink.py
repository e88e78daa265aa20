"""Uplink benchmark: drain a buffered backlog to a local Mosquitto, against the raw floor.

The floor is what nobody can avoid: select the same rows, encode them the same way and publish them
with paho at QoS 1 with the same window, waiting for every PUBACK. The pump adds our bookkeeping
(a transaction per message to take readings off the queue, one per loop for the acknowledgements).
Also prints the WAN bytes per reading of one day of 15-minute data on 4 channels for CIM XML,
gzipped CIM XML and the compact encoding.

    python bench/uplink.py [--quick] [--readings N] [--tls]

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import gzip
import json
import queue
import shutil
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from appliance.clock import Clock
from appliance.config import Config, MeterSpec, load_config
from appliance.housekeeping import Housekeeping
from appliance.model import Protocol
from appliance.sim.broker import Mosquitto
from appliance.sim.pki import TestPki
from appliance.sim.profiles import household_day
from appliance.store import Store, open_store
from appliance.store.readings import reading_from_row, save_readings
from appliance.store.registry import register_config_meters
from appliance.uplink import cim, compact
from appliance.uplink.messages import build
from appliance.uplink.mqtt import MqttLink
from appliance.uplink.outbox import OutboxPump

START = datetime(2026, 1, 1, tzinfo=UTC)


def fill(store: Store, readings: int) -> None:
    """`readings` readings of household profiles: meters x days x 4 channels x 96 intervals."""
    meters = max(1, readings // (384 * 30))
    register_config_meters(
        store,
        [
            MeterSpec(f"MTR-{m:05d}", "A", Protocol.MODBUS, 1, "sdm630", 900, 1, 16, "none", None)
            for m in range(meters)
        ],
        0,
    )
    stored, day = 0, 0
    while stored < readings:
        for meter in range(meters):
            batch = household_day(f"MTR-{meter:05d}", START + timedelta(days=day), seed=day)
            stored += save_readings(store, batch[: readings - stored], 0)
            if stored >= readings:
                return
        day += 1


def drain_with_pump(config: Config) -> float:
    """Seconds the real OutboxPump takes to empty the backlog."""
    stop = threading.Event()
    clock = Clock()
    link = MqttLink(config, queue.Queue())
    pump = OutboxPump(config, lambda: open_store(config), link, clock, Housekeeping(config, clock), stop)
    link.start()
    if not link.connected.wait(10):
        raise SystemExit("the pump's link did not connect")
    watcher = open_store(config, readonly=True)
    start = time.perf_counter()
    pump.start()
    while True:  # cheap index probes: a count(*) over a million rows would slow the pump it measures
        unsent = watcher.conn.execute("SELECT 1 FROM unsent LIMIT 1").fetchone()
        pending = watcher.conn.execute("SELECT 1 FROM outbox WHERE acked_at IS NULL LIMIT 1").fetchone()
        if unsent is None and pending is None:
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    stop.set()
    pump.join()
    link.stop()
    watcher.close()
    return elapsed


_BATCH_ROWS = """
    SELECT u.ts, u.meter, u.rtype, m.mrid, t.code, r.value, r.quality FROM unsent u
    JOIN readings r ON r.ts = u.ts AND r.meter = u.meter AND r.rtype = u.rtype
    JOIN meters m ON m.id = u.meter JOIN reading_types t ON t.id = u.rtype
    WHERE (u.ts, u.meter, u.rtype) > (?, ?, ?) ORDER BY u.ts, u.meter, u.rtype LIMIT ?"""


def drain_floor(config: Config, store: Store) -> float:
    """Seconds a minimal loop takes: same rows, same encoding, paho QoS 1, same window."""
    window = threading.Semaphore(config.uplink.max_inflight)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="floor", protocol=paho.MQTTv5)
    if config.mqtt.tls:
        client.tls_set(str(config.mqtt.ca_file), str(config.mqtt.cert_file), str(config.mqtt.key_file))
    client.max_inflight_messages_set(config.uplink.max_inflight)
    client.on_publish = lambda *_: window.release()
    client.connect(config.mqtt.host, config.mqtt.port)
    client.loop_start()
    clock, after = Clock(), (-1, -1, -1)
    start = time.perf_counter()
    while True:
        rows = store.conn.execute(_BATCH_ROWS, (*after, config.uplink.batch_max_readings)).fetchall()
        if not rows:
            break
        after = rows[-1][:3]
        message = build(config, clock, "MeterReadings", [reading_from_row(row[0], *row[3:]) for row in rows])
        window.acquire()
        client.publish(message.topic, message.payload, qos=1)
    for _ in range(config.uplink.max_inflight):
        window.acquire()  # every PUBACK is in
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return elapsed


def wan_bytes() -> dict[str, float]:
    """Bytes per reading on the WAN for one meter-day of 15-minute data on 4 channels."""
    readings = household_day("MTR-00001", START, seed=1)
    header = cim.Header("created", "MeterReadings", START, "hes-0001", "5b7e3f0a-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
    xml = cim.event_message(header, cim.meter_readings(readings))
    packed = compact.encode_meter_readings(header, readings)
    assert compact.to_xml(packed) == xml
    count = len(readings)
    return {
        "xml_bytes_per_reading": round(len(xml) / count, 2),
        "gzip_xml_bytes_per_reading": round(len(gzip.compress(xml, 9)) / count, 2),
        "compact_bytes_per_reading": round(len(packed) / count, 2),
        "xml_over_compact": round(len(xml) / len(packed), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k readings instead of 1M (under a minute)")
    parser.add_argument("--readings", type=int, help="how many buffered readings to drain")
    parser.add_argument("--tls", action="store_true", help="TLS with client certificates, as in production")
    parser.add_argument(
        "--rounds", type=int, help="floor and pump alternate this often; the best of each counts"
    )
    args = parser.parse_args()
    readings = args.readings or (100_000 if args.quick else 1_000_000)
    rounds = args.rounds or (2 if args.quick else 3)

    with tempfile.TemporaryDirectory(prefix="hes-bench-") as scratch:
        directory = Path(scratch)
        pki = TestPki(directory / "pki") if args.tls else None
        with Mosquitto(directory / "broker", pki) as broker:
            config_text = f'[hes]\nid = "bench"\ndata_dir = "{directory}"\n'
            config_text += f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
            if pki:
                device = pki.issue("bench-device")
                config_text += (
                    f'ca_file = "{pki.ca}"\ncert_file = "{device.cert}"\nkey_file = "{device.key}"\n'
                )
            else:
                config_text += "tls = false\n"
            (directory / "hes.toml").write_text(config_text)
            config = load_config(directory / "hes.toml")
            print(f"filling the store with {readings} readings ...", file=sys.stderr)
            store = open_store(config)
            fill(store, readings)
            store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            store.close()
            template = config.store_path.with_suffix(".filled")
            shutil.copyfile(config.store_path, template)
            floor_s = pump_s = float("inf")
            for round_number in range(rounds):  # alternating, so machine noise hits both alike
                print(f"round {round_number + 1}/{rounds}: floor, then pump ...", file=sys.stderr)
                for leftover in ("-wal", "-shm"):  # a stale WAL would be replayed onto the copy
                    Path(f"{config.store_path}{leftover}").unlink(missing_ok=True)
                shutil.copyfile(template, config.store_path)
                store = open_store(config)
                floor_s = min(floor_s, drain_floor(config, store))
                store.close()
                pump_s = min(pump_s, drain_with_pump(config))

    figures = {
        "bench": "uplink",
        "readings": readings,
        "tls": args.tls,
        "batch_max_readings": config.uplink.batch_max_readings,
        "max_inflight": config.uplink.max_inflight,
        "rounds": rounds,
        "pump_readings_per_s": round(readings / pump_s),
        "floor_readings_per_s": round(readings / floor_s),
        "pump_over_floor": round(pump_s / floor_s, 2),
        **wan_bytes(),
    }
    f = figures
    print(
        f"pump {f['pump_readings_per_s']} readings/s, floor {f['floor_readings_per_s']} readings/s, "
        f"ratio {f['pump_over_floor']} (goal <= 1.5); per reading: XML {f['xml_bytes_per_reading']} B, "
        f"gzip {f['gzip_xml_bytes_per_reading']} B, compact {f['compact_bytes_per_reading']} B"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
