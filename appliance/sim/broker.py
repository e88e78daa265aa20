"""A private Mosquitto on a free local port, with TLS and client certificates by default."""

from __future__ import annotations

import getpass
import socket
import subprocess
import time
from pathlib import Path

from appliance.errors import TransportError
from appliance.sim.pki import TestPki


def free_port() -> int:
    """A TCP port nobody listens on right now (Mosquitto's `listener 0` means a Unix socket)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mosquitto:
    """A Mosquitto process that can be stopped and started again on the same port (outages)."""

    def __init__(self, directory: Path, pki: TestPki | None = None, port: int | None = None) -> None:
        self.directory, self.pki = directory, pki
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.log = directory / "mosquitto.log"
        self._process: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.conf = directory / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            # Sessions and queued QoS 1 messages survive a restart, as on a production broker.
            "persistence true",
            f"persistence_location {directory}/",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"user {getpass.getuser()}",
        ]
        if pki is None:
            lines.append("allow_anonymous true")
        else:
            server = pki.issue("broker", server=True)
            lines += [
                f"cafile {pki.ca}",
                f"certfile {server.cert}",
                f"keyfile {server.key}",
                "require_certificate true",
                "use_identity_as_username true",
                "allow_anonymous false",
            ]
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        """Whether the broker process is up."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> Mosquitto:
        """Start the broker and wait until its port accepts connections."""
        self._process = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self.stop()
                    raise TransportError(
                        f"mosquitto did not start on port {self.port}; see {self.log}"
                    ) from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop the broker (an outage, as far as the HES can tell)."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
