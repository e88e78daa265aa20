"""An RS-485 multidrop line in software: what the HES sends reaches every device on the line, and what
any device answers reaches the HES. Meters of different protocols (Modbus RTU, DLMS/HDLC) share one
line this way, as they do in a real cabinet; each ignores frames that are not its own.

Run alone:  python -m appliance.sim.multidrop --line PTY --device PTY [--device PTY ...]
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Self

from appliance.errors import TransportError
from appliance.sim.process import ChildProcess
from appliance.sim.ptys import PtyPair


def relay(line: str, devices: list[str]) -> None:
    """Copy bytes between the line and the devices until killed."""
    line_fd = os.open(line, os.O_RDWR | os.O_NOCTTY)
    device_fds = [os.open(device, os.O_RDWR | os.O_NOCTTY) for device in devices]
    print("READY", flush=True)
    while True:
        ready, _, _ = select.select([line_fd, *device_fds], [], [])
        for fd in ready:
            data = os.read(fd, 4096)
            for target in device_fds if fd == line_fd else [line_fd]:
                os.write(target, data)


class MultidropLine(ChildProcess):
    """The HES's end of a bus (`device`) and one pty per simulated device (`drops`)."""

    def __init__(self, directory: Path, name: str, drops: list[str]) -> None:
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
    args = parser.parse_args()
    relay(args.line, args.device)


if __name__ == "__main__":
    main()
