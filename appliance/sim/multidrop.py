"""An RS-485 multidrop line in software: what the HES sends reaches every device on the line, and what
any device answers reaches the HES. Meters of different protocols (Modbus RTU, DLMS/HDLC) share one
line this way, as they do in a real cabinet; each ignores frames that are not its own.

Run alone:  python -m appliance.sim.multidrop --line PTY --device PTY [--device PTY ...]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

from appliance.errors import TransportError
from appliance.sim.process import ChildProcess
from appliance.sim.ptys import PtyPair


def relay(line: str, devices: list[str], stats: str | None = None) -> None:
    """Copy bytes between the line and the devices until killed.

    With `stats`, counts what crossed the line (the bytes of the wire-time limit) and how many times
    the direction turned from the HES to the meters (one request each), in a JSON file rewritten
    at most every half second.
    """
    line_fd = os.open(line, os.O_RDWR | os.O_NOCTTY)
    device_fds = [os.open(device, os.O_RDWR | os.O_NOCTTY) for device in devices]
    counts = {"bytes": 0, "requests": 0}
    last_from_hes = False
    written = 0.0
    print("READY", flush=True)
    while True:
        ready, _, _ = select.select([line_fd, *device_fds], [], [], 0.5)
        for fd in ready:
            data = os.read(fd, 4096)
            from_hes = fd == line_fd
            counts["bytes"] += len(data)
            counts["requests"] += from_hes and not last_from_hes
            last_from_hes = from_hes
            for target in device_fds if from_hes else [line_fd]:
                os.write(target, data)
        if stats and time.monotonic() - written > 0.5:
            Path(stats + ".tmp").write_text(json.dumps(counts))
            os.replace(stats + ".tmp", stats)
            written = time.monotonic()


class MultidropLine(ChildProcess):
    """The HES's end of a bus (`device`) and one pty per simulated device (`drops`)."""

    def __init__(self, directory: Path, name: str, drops: list[str], stats: Path | None = None) -> None:
        self.stats = stats
        self.line = PtyPair(directory, name)
        self.device = self.line.device
        self.drops = {drop: PtyPair(directory, f"{name}-{drop}") for drop in drops}

    def drop(self, name: str) -> Path:
        """Where the simulator called `name` sits on this line."""
        return self.drops[name].peer

    def start(self) -> Self:
        """Create the ptys and start the relay; returns once it runs."""
        self.line.start()
        for pair in self.drops.values():
            pair.start()
        args = [sys.executable, "-m", "appliance.sim.multidrop", "--line", str(self.line.peer)]
        for pair in self.drops.values():
            args += ["--device", str(pair.device)]
        if self.stats:
            args += ["--stats", str(self.stats)]
        self._process = subprocess.Popen(args, stdout=subprocess.PIPE)
        ready, _, _ = select.select([self._process.stdout], [], [], 10)
        if not ready or not self._process.stdout.readline().startswith(b"READY"):
            self.stop()
            raise TransportError(f"the multidrop relay for {self.device} did not start")
        return self

    def stop(self) -> None:
        """Stop the relay and remove the ptys."""
        super().stop()
        for pair in (*self.drops.values(), self.line):
            pair.stop()


def main() -> None:
    """Command line: relay between a line pty and device ptys."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--line", required=True)
    parser.add_argument("--device", action="append", required=True)
    parser.add_argument("--stats", help="JSON file: bytes and requests that crossed the line")
    args = parser.parse_args()
    relay(args.line, args.device, args.stats)


if __name__ == "__main__":
    main()
