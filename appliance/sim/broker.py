"""Private MQTT brokers on free local ports: Mosquitto (TLS and client certificates by default),
and amqtt, a broker that speaks only MQTT 3.1.1, for the protocol fallback."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from appliance.errors import TransportError
from appliance.sim.pki import TestPki
from appliance.sim.process import ChildProcess


def free_port() -> int:
    """A TCP port nobody listens on right now (Mosquitto's `listener 0` means a Unix socket)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _BrokerProcess(ChildProcess):
    """A broker process that can be stopped and started again on the same port (outages)."""

    name = "broker"

    def __init__(self, directory: Path, port: int | None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.log = directory / f"{self.name}.log"
        directory.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        """How to start this broker."""
        raise NotImplementedError

    def start(self) -> _BrokerProcess:
        """Start the broker and wait until its port accepts connections."""
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self.stop()
                    raise TransportError(
                        f"{self.name} did not start on port {self.port}; see {self.log}"
                    ) from None
                time.sleep(0.02)


class Mosquitto(_BrokerProcess):
    """Mosquitto; with a PKI, TLS is required and each client's certificate CN is its user name."""

    name = "mosquitto"

    def __init__(self, directory: Path, pki: TestPki | None = None, port: int | None = None) -> None:
        super().__init__(directory, port)
        self.pki = pki
        self.conf = directory / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            # Sessions and queued QoS 1 messages survive a restart, as on a production broker.
            "persistence true",
            f"persistence_location {directory}/",
            f"log_dest file {directory / 'mosquitto-broker.log'}",
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

    def command(self) -> list[str]:
        return ["mosquitto", "-c", str(self.conf)]


class Amqtt(_BrokerProcess):
    """amqtt (pure Python): answers an MQTT 5 CONNECT with 'unsupported protocol version'."""

    name = "amqtt"

    def __init__(self, directory: Path, port: int | None = None) -> None:
        super().__init__(directory, port)
        self.conf = directory / "amqtt.yaml"
        self.conf.write_text(
            f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{self.port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
        )

    def command(self) -> list[str]:
        executable = shutil.which("amqtt", path=str(Path(sys.executable).parent)) or "amqtt"
        return [executable, "-c", str(self.conf)]
