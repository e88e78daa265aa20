"""Command latency benchmark: from the MDM's request to the asynchronous outcome reply, end to end.

A real daemon, Mosquitto (TLS) and the simulated substation on a line paced at 9600 baud (10 bits a
byte, 20 ms turnaround per answer): one DLMS meter with a relay and, for the busy case, four more
DLMS meters on the same bus read every second, so that a poll is always on the wire when a command
arrives. The MDM test client alternates disconnect and connect requests; each latency runs from its
publish to the `created` reply. Printed next to it: the wire time of the command's own frames
(association, the control-mode read, the action, two reads back, release) at the bus's baud plus
one turnaround per request: the physical floor.

    python bench/commands.py [--quick] [--count N]

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from appliance.collect.dlms import axdr
from appliance.collect.dlms.session import DlmsSession, DlmsSettings
from appliance.commands.jobs import CLASS_DISCONNECT_CONTROL, DISCONNECT_CONTROL
from appliance.config import BusSpec
from appliance.hw.rs485 import SerialPort
from appliance.sim.dlms_meter import SimulatedDlmsBus, parse_meter
from appliance.sim.mdm import MdmListener, control_payload, request_message
from appliance.sim.ptys import PtyPair
from appliance.sim.substation import Substation
from appliance.sim.wire import CountingPort

DISCONNECT, CONNECT = "3.31.0.23", "3.31.0.18"
BAUD = 9600
TURNAROUND_MS = 20.0
PASSWORD = "bench-pass"  # noqa: S105 (the simulated meter's)

CONFIG = """
[hes]
id = "hes-bench"
log_level = "warning"

[uplink]
scan_interval_s = 0.05

[commands]
relay_max_operations = 100000

[bus_defaults]
timeout_ms = 1000
retries = 1

[schedules.dlms-generic]
registers_s = {registers_s}
profile_s = 0
events_s = 0
clock_s = 0

[[meters]]
id = "B-D17"
bus = "A"
protocol = "dlms"
address = 17
model = "dlms-generic"
client_address = 1
auth = "low"
keys_file = "{keys}"
"""

BUSY = "".join(
    f'\n[[meters]]\nid = "B-D{address}"\nbus = "A"\nprotocol = "dlms"\naddress = {address}\n'
    'model = "dlms-generic"\n'
    for address in range(18, 22)
)


def wire_time_s(directory: Path, action: str) -> float:
    """The command's own frames at BAUD (10 bits a byte), as the daemon's relay job does `action`: a
    connect reads the control mode first, a disconnect does not (commands/jobs.py)."""
    meter = parse_meter(f"17:password={PASSWORD}")
    with PtyPair(directory, "wire") as pair, SimulatedDlmsBus([meter], port=pair.peer):
        port = SerialPort(BusSpec("wire", True, str(pair.device), BAUD, "N", 8, 1, False, 1000, 1, 60))
        port.open()
        settings = DlmsSettings(
            client=1, logical=1, physical=17, authentication="low", password=PASSWORD.encode()
        )
        counting = CountingPort(port)
        with DlmsSession(counting, settings) as session:
            if action == "connect":
                session.get(CLASS_DISCONNECT_CONTROL, DISCONNECT_CONTROL, 4)
            method = 1 if action == "disconnect" else 2
            session.action(CLASS_DISCONNECT_CONTROL, DISCONNECT_CONTROL, method, axdr.Integer(0))
            session.get(CLASS_DISCONNECT_CONTROL, DISCONNECT_CONTROL, 2)
            session.get(CLASS_DISCONNECT_CONTROL, DISCONNECT_CONTROL, 3)
        port.close()
    return counting.bytes * 10 / BAUD + counting.requests * TURNAROUND_MS / 1000


def latencies(directory: Path, busy: bool, count: int) -> list[tuple[str, float]]:
    """(action, seconds from the request's publish to its outcome reply) of each command."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = directory / "keys.toml"
    keys.write_text(f'password = "{PASSWORD}"\n')
    config = directory / "hes.toml"
    # Busy: every meter's registers every second, a bus that is never idle. Idle: read once at start.
    config.write_text(CONFIG.format(keys=keys, registers_s=1 if busy else 86400) + (BUSY if busy else ""))
    results = []
    with (
        Substation(directory / "run", config, pace_turnaround_ms=TURNAROUND_MS) as station,
        station.mdm() as mdm,
    ):
        station.start_daemon()
        if not station.wait_for(lambda: b'"online"' in (mdm.status or b""), 20):
            raise SystemExit(f"the daemon did not come up; see {station.log}")
        if busy:  # let the polls fill the bus first
            station.wait_for(lambda: sum(bool(m.readings) for m in mdm.snapshot()) >= 4, 60)
        for index in range(count):
            action = "disconnect" if index % 2 == 0 else "connect"
            results.append((action, one_command(mdm, DISCONNECT if action == "disconnect" else CONNECT)))
        station.stop_daemon()
    return results


def one_command(mdm: MdmListener, code: str) -> float:
    message_id, xml = request_message("create", "EndDeviceControls", payload=control_payload(code, ["B-D17"]))
    started = time.monotonic()
    mdm.request("create", "EndDeviceControls", xml)
    while not any(r.header.verb == "created" for r in mdm.replies_to(message_id)):
        if time.monotonic() - started > 30:
            raise SystemExit(f"no outcome for {message_id} within 30 s")
        time.sleep(0.001)
    return time.monotonic() - started


def summary(results: list[tuple[str, float]], floors: dict[str, float]) -> dict[str, float]:
    """Median and p99 latency, and the median of each command's latency over its own wire time."""
    ordered = sorted(seconds for _, seconds in results)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
        "median_over_wire": round(statistics.median(s / floors[a] for a, s in results), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 commands per case (under a minute)")
    parser.add_argument("--count", type=int, help="commands per case (default 40)")
    args = parser.parse_args()
    args.count = args.count or (8 if args.quick else 40)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "wire").mkdir()
        floors = {action: wire_time_s(root / "wire", action) for action in ("disconnect", "connect")}
        idle = summary(latencies(root / "idle", False, args.count), floors)
        busy = summary(latencies(root / "busy", True, args.count), floors)
    wire_ms = {action: round(seconds * 1000, 1) for action, seconds in floors.items()}
    print(
        f"the command's own frames at {BAUD} baud with {TURNAROUND_MS:.0f} ms turnarounds: "
        f"disconnect {wire_ms['disconnect']:.0f} ms, connect {wire_ms['connect']:.0f} ms"
    )
    for name, case in (("idle bus", idle), ("busy bus (4 DLMS meters polled every second)", busy)):
        print(
            f"{name}: median {case['median_ms']} ms ({case['median_over_wire']:.2f} of each command's "
            f"wire time), p99 {case['p99_ms']} ms ({args.count} commands, half of each)"
        )
    figures = {"bench": "commands", "count": args.count, "wire_ms": wire_ms, "idle": idle, "busy": busy}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
