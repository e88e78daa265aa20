"""Linked pseudo-terminal pairs from socat: the HES opens one end, a simulated device the other."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from appliance.errors import TransportError
from appliance.sim.process import ChildProcess


class PtyPair(ChildProcess):
    """`device` is what the HES opens (like /dev/ttySC0); `peer` is where the simulator sits."""

    def __init__(self, directory: Path, name: str) -> None:
        self.device = directory / f"tty{name}"
        self.peer = directory / f"tty{name}-meters"

    def start(self) -> PtyPair:
        """Start socat and wait until both links exist."""
        self._process = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={self.device}", f"pty,raw,echo=0,link={self.peer}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while not (self.device.exists() and self.peer.exists()):
            if time.monotonic() > deadline or self._process.poll() is not None:
                self.stop()
                raise TransportError(f"socat did not create {self.device} and {self.peer}")
            time.sleep(0.01)
        return self
