"""DLMS line benchmark: meters on one RS-485 bus paced at 9600 baud with a 20 ms turnaround.

Each meter is read the way the daemon reads it: associate, the clock, two registers with their
scaler/unit, one day of 15-minute profile by range, release. The physical limit is the wire time:
every byte at 10 bits per byte at the baud rate, plus the meter's turnaround once per request.
Printed: wall time over wire time (goal <= 1.10) and the CPU time per meter.

    python bench/dlms_line.py [--quick] [--meters N] [--baud N] [--turnaround-ms N]

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from appliance.collect.dlms.session import DlmsSession, DlmsSettings
from appliance.config import BusSpec
from appliance.hw.rs485 import SerialPort
from appliance.sim.dlms_meter import SimulatedDlmsBus, parse_meter
from appliance.sim.ptys import PtyPair
from appliance.sim.wire import CountingPort

FIRST_ADDRESS = 17


def read_meter(port: CountingPort, address: int) -> int:
    """One meter, as the daemon reads it; returns the profile rows read."""
    settings = DlmsSettings(physical=address, timeout_s=2.0)
    now = datetime.now(UTC)
    with DlmsSession(port, settings) as session:
        session.get(8, "0.0.1.0.0.255", 2)
        for obis in ("1.0.1.8.0.255", "1.0.2.8.0.255"):
            session.get(3, obis, 2)
            session.get(3, obis, 3)
        rows = session.get_range("1.0.99.1.0.255", now - timedelta(days=1), now)
    return len(rows.items)  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 meters instead of 8 (under a minute)")
    parser.add_argument("--meters", type=int, help="meters on the bus")
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument("--turnaround-ms", type=float, default=20.0)
    args = parser.parse_args()
    meters = args.meters or (2 if args.quick else 8)
    addresses = [FIRST_ADDRESS + n for n in range(meters)]

    with tempfile.TemporaryDirectory(prefix="hes-bench-") as scratch:
        directory = Path(scratch)
        simulated = [parse_meter(f"{address}:days=2") for address in addresses]
        with (
            PtyPair(directory, "bench") as pair,
            SimulatedDlmsBus(
                simulated, port=pair.peer, baud=args.baud, pace=True, turnaround_ms=args.turnaround_ms
            ),
        ):
            spec = BusSpec("bench", True, str(pair.device), args.baud, "N", 8, 1, False, 2000, 2, 3600)
            port = CountingPort(SerialPort(spec))
            port.open()
            rows = 0
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            for address in addresses:
                rows += read_meter(port, address)
            wall = time.perf_counter() - wall_start
            cpu = time.process_time() - cpu_start
            port.close()

    wire = port.bytes * 10 / args.baud + port.requests * args.turnaround_ms / 1000
    figures = {
        "bench": "dlms_line",
        "meters": meters,
        "baud": args.baud,
        "turnaround_ms": args.turnaround_ms,
        "profile_rows": rows,
        "requests": port.requests,
        "bytes_on_wire": port.bytes,
        "wall_s": round(wall, 2),
        "wire_s": round(wire, 2),
        "wall_over_wire": round(wall / wire, 3),
        "cpu_ms_per_meter": round(cpu / meters * 1000, 1),
    }
    print(
        f"{meters} meters: {wall:.2f} s wall against {wire:.2f} s on the wire "
        f"(ratio {figures['wall_over_wire']}, goal <= 1.10); {figures['cpu_ms_per_meter']} ms CPU per meter"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
