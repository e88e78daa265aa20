"""Command latency benchmark: from the MDM's request to the asynchronous outcome reply, end to end.

A real daemon, Mosquitto (TLS) and the simulated substation: one DLMS meter with a relay and, for
the busy case, Modbus meters polled every second on the same bus. The MDM test client alternates
disconnect and connect requests; each latency runs from its publish to the `created` reply. Printed
next to it: the wire time of the command's own frames (association, the control-mode read, the action,
two reads back, release) at the bus's baud, measured once against the same simulated meter.

The simulated line is a pty and not paced, so the figures are the software's share; on a real
9600-baud line add the wire time printed (and the meter's turnaround per request).

    python bench/commands.py [--count N]

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

DISCONNECT, CONNECT = "3.31.0.23", "3.31.0.18"
BAUD = 9600
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
timeout_ms = 300
retries = 1

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
    f'\n[[meters]]\nid = "B-M{unit}"\nbus = "A"\naddress = {unit}\nmodel = "sdm630"\npoll_interval_s = 1\n'
    for unit in range(1, 9)
)


def wire_time_s(directory: Path) -> float:
    """The command's own frames at BAUD (10 bits a byte): one disconnect as the daemon does it."""
    meter = parse_meter(f"17:password={PASSWORD}")
    with PtyPair(directory, "wire") as pair, SimulatedDlmsBus([meter], port=pair.peer):
        port = SerialPort(BusSpec("wire", True, str(pair.device), BAUD, "N", 8, 1, False, 1000, 1, 60))
        port.open()
        settings = DlmsSettings(
            client=1, logical=1, physical=17, authentication="low", password=PASSWORD.encode()
        )
        with DlmsSession(port, settings) as session:
            session.get(CLASS_DISCONNECT_CONTROL, DISCONNECT_CONTROL, 4)
            session.action(CLASS_DISCONNECT_CONTROL, DISCONNECT_CONTROL, 1, axdr.Integer(0))
            session.get(CLASS_DISCONNECT_CONTROL, DISCONNECT_CONTROL, 2)
            session.get(CLASS_DISCONNECT_CONTROL, DISCONNECT_CONTROL, 3)
        sent, received = session.bytes_on_wire
        port.close()
    return (sent + received) * 10 / BAUD


def latencies(directory: Path, busy: bool, count: int) -> list[float]:
    """Seconds from each request's publish to its outcome reply."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = directory / "keys.toml"
    keys.write_text(f'password = "{PASSWORD}"\n')
    config = directory / "hes.toml"
    config.write_text(CONFIG.format(keys=keys) + (BUSY if busy else ""))
    results = []
    with Substation(directory / "run", config) as station, station.mdm() as mdm:
        station.start_daemon()
        if not station.wait_for(lambda: b'"online"' in (mdm.status or b""), 20):
            raise SystemExit(f"the daemon did not come up; see {station.log}")
        if busy:  # let the polls fill the bus first
            station.wait_for(lambda: sum(bool(m.readings) for m in mdm.snapshot()) >= 5, 30)
        for index in range(count):
            results.append(one_command(mdm, DISCONNECT if index % 2 == 0 else CONNECT))
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


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="commands per case (default 100)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "wire").mkdir()
        wire = wire_time_s(root / "wire")
        idle = summary(latencies(root / "idle", False, args.count))
        busy = summary(latencies(root / "busy", True, args.count))
    print(f"wire time of the command's frames at {BAUD} baud: {wire * 1000:.0f} ms")
    print(f"idle bus: median {idle['median_ms']} ms, p99 {idle['p99_ms']} ms ({args.count} commands)")
    print(f"busy bus (8 Modbus meters, 1 s polls): median {busy['median_ms']} ms, p99 {busy['p99_ms']} ms")
    print(json.dumps({"count": args.count, "wire_ms": round(wire * 1000, 1), "idle": idle, "busy": busy}))


if __name__ == "__main__":
    main()
