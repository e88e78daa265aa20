"""Substation benchmark: the real daemon polling DLMS meters on two RS-485 buses paced at 9600 baud.

Each bus is a software multidrop line to a simulator whose meters take 10 bits per byte at the baud
rate and answer after a 20 ms turnaround. The daemon (`hes run`, with a private Mosquitto taking its
uplink) reads every meter once from a fresh store: association, clock check, registers with their
scaler/unit, the whole day of 15-minute profile each meter holds, the event log. The physical limit
of a bus is its wire time: every byte that crossed the line at 10 bits per byte, plus one turnaround
per request. Run once with the meters on bus A only, then with as many on each of A and B: the two
buses are polled by their own workers, so two should take as long as one.

Printed: the poll-cycle wall time of each bus over its wire time (goal <= 1.10), both runs side by
side, the daemon's CPU share of the wall time and its peak RSS (goal <= 60 MB).

    python bench/substation.py [--quick] [--meters-per-bus N]

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from appliance.sim.substation import Substation
from appliance.store.stats import meter_stats

BAUD = 9600
TURNAROUND_MS = 20.0
FIRST_ADDRESS = 17
CLOCK_TICKS = 100  # /proc/<pid>/stat counts CPU time in these per second (USER_HZ)


def write_config(path: Path, buses: list[str], per_bus: int) -> Path:
    """A config with `per_bus` DLMS meters on each of `buses`; the other bus is disabled."""
    lines = ['[hes]\nid = "hes-bench"\nlog_level = "warning"\n']
    lines += [f"[buses.{name}]\nbaud = {BAUD}\ntimeout_ms = 2000\n" for name in buses]
    lines += [f"[buses.{name}]\nenabled = false\n" for name in ("A", "B") if name not in buses]
    for name in buses:
        for n in range(per_bus):
            address = FIRST_ADDRESS + n
            lines.append(
                f'[[meters]]\nid = "{name}-{address}"\nbus = "{name}"\nprotocol = "dlms"\n'
                f'model = "dlms-generic"\naddress = {address}\n'
            )
    path.write_text("\n".join(lines))
    return path


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident set (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(directory: Path, buses: list[str], per_bus: int) -> dict:
    """One daemon run: per bus, the wall time until its last meter was read, and the wire time."""
    directory.mkdir(parents=True)
    config = write_config(directory / "bench.toml", buses, per_bus)
    with Substation(directory / "run", config, pace_turnaround_ms=TURNAROUND_MS) as rig:
        daemon = rig.start_daemon(ready_timeout=60)
        started = time.monotonic()  # READY=1: the bus workers started a few milliseconds ago
        cpu_start = cpu_seconds(daemon.pid)
        done: dict[str, float] = {}
        while len(done) < len(buses):
            time.sleep(0.2)
            store = rig.open_store()
            try:
                read = [row["mrid"] for row in meter_stats(store) if row["successes"] >= 1]
            finally:
                store.close()
            for name in buses:
                if name not in done and sum(m.startswith(f"{name}-") for m in read) == per_bus:
                    done[name] = time.monotonic() - started
            if time.monotonic() - started > 30 * per_bus + 60:
                raise SystemExit(f"the daemon did not read every meter; see {rig.log}")
        time.sleep(1.0)  # the line counters are written every half second
        wall = max(done.values())
        cpu = cpu_seconds(daemon.pid) - cpu_start
        rss = peak_rss_mb(daemon.pid)
        figures = {"cpu_share": round(cpu / wall, 3), "peak_rss_mb": round(rss, 1)}
        for name in buses:
            line = json.loads((directory / "run" / f"line-{name}.json").read_text())
            wire = line["bytes"] * 10 / BAUD + line["requests"] * TURNAROUND_MS / 1000
            figures[name] = {
                "wall_s": round(done[name], 2),
                "wire_s": round(wire, 2),
                "wall_over_wire": round(done[name] / wire, 3),
                "requests": line["requests"],
                "bytes_on_wire": line["bytes"],
            }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 meters per bus instead of 32 (under a minute)"
    )
    parser.add_argument("--meters-per-bus", type=int, help="DLMS meters on each bus")
    args = parser.parse_args()
    per_bus = args.meters_per_bus or (2 if args.quick else 32)
    with tempfile.TemporaryDirectory(prefix="hes-bench-") as scratch:
        one = run(Path(scratch) / "one", ["A"], per_bus)
        both = run(Path(scratch) / "both", ["A", "B"], per_bus)
    worst = max(both["A"]["wall_over_wire"], both["B"]["wall_over_wire"], one["A"]["wall_over_wire"])
    figures = {
        "bench": "substation",
        "meters_per_bus": per_bus,
        "baud": BAUD,
        "turnaround_ms": TURNAROUND_MS,
        "one_bus": one,
        "two_buses": both,
        "two_over_one": round(max(both["A"]["wall_s"], both["B"]["wall_s"]) / one["A"]["wall_s"], 3),
        "worst_wall_over_wire": worst,
        "cpu_share_two_buses": both["cpu_share"],
        "peak_rss_mb": max(one["peak_rss_mb"], both["peak_rss_mb"]),
    }
    print(
        f"one bus, {per_bus} meters: {one['A']['wall_s']} s wall against {one['A']['wire_s']} s on the wire "
        f"({one['A']['wall_over_wire']})"
    )
    for name in ("A", "B"):
        bus = both[name]
        print(
            f"two buses, bus {name}: {bus['wall_s']} s wall against {bus['wire_s']} s on the wire "
            f"({bus['wall_over_wire']})"
        )
    print(
        f"two buses over one: {figures['two_over_one']} (goal about 1); worst wall/wire {worst} "
        f"(goal <= 1.10); daemon CPU {both['cpu_share']:.1%} of the wall time with two buses; "
        f"peak RSS {figures['peak_rss_mb']} MB (goal <= 60)"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
