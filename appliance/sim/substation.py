"""A whole simulated substation around a real daemon process: the demo's engine and the tests' rig.

Layout of the run directory: ttyA/ttyA-meters (pty pairs), pki/ (test CA and certificates),
broker/ (mosquitto.conf and its log), data/ (the store), overlay.toml (what only the rig knows),
hes.log (the daemon's output).
"""

from __future__ import annotations

import contextlib
import grp
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import tomli_w

from appliance.config import Config, MeterSpec, load_config, read_meter_secrets
from appliance.errors import TransportError
from appliance.model import Protocol, unit_symbol
from appliance.sim.broker import Mosquitto
from appliance.sim.dlms_meter import SimulatedDlmsBus, parse_meter
from appliance.sim.gps import SimulatedGps
from appliance.sim.mdm import MdmListener, Received
from appliance.sim.modbus_meter import SimulatedModbusBus
from appliance.sim.modem import SimulatedModem
from appliance.sim.multidrop import MultidropLine
from appliance.sim.pki import TestPki
from appliance.sim.process import ChildProcess
from appliance.sim.ptys import PtyPair
from appliance.store import Store
from appliance.store.outbox import backlog
from appliance.uplink.cim import format_time


class Substation:
    """Simulated buses and broker for the daemon configured by `base_config`."""

    def __init__(
        self,
        run_dir: Path,
        base_config: Path,
        broker: tuple[str, int] | None = None,
        gps: bool = False,
        modem: bool = False,
        pace_turnaround_ms: float | None = None,
    ) -> None:
        self.run_dir = run_dir
        # DLMS meters that take 10 bits per byte at the bus's baud and this long to answer (benchmarks).
        self.pace_turnaround_ms = pace_turnaround_ms
        self.base_config = base_config
        run_dir.mkdir(parents=True, exist_ok=True)
        # A GPS receiver (NMEA on a pty, a real gpsd); without one the daemon is told there is no gpsd.
        self.gps = SimulatedGps(run_dir / "gps") if gps else None
        # A GSM/LTE modem answering AT on a pty; without one the daemon watches the MQTT link alone.
        self.modem_line = PtyPair(run_dir, "modem") if modem else None
        self.modem = SimulatedModem(self.modem_line.peer) if self.modem_line else None
        self.pki = None if broker else TestPki(run_dir / "pki")
        self.broker = None if broker else Mosquitto(run_dir / "broker", self.pki)
        self.broker_address = broker or (self.broker.host, self.broker.port)
        with base_config.open("rb") as handle:
            raw = tomllib.load(handle)
        self.bus_names = sorted({m.get("bus", "") for m in raw.get("meters", [])})
        self.overlay = run_dir / "overlay.toml"
        self.overlay.write_text(tomli_w.dumps(self._overlay()))
        self.config: Config = load_config(base_config, self.overlay)
        self.lines: dict[str, MultidropLine] = {}
        self.simulators: dict[str, list[ChildProcess]] = {}
        for seed, name in enumerate(self.bus_names):
            self._build_bus(name, seed)
        self.daemon: subprocess.Popen | None = None
        self.log = run_dir / "hes.log"
        # What systemd does for Type=notify: a datagram socket the daemon reports READY=1 on.
        self.notify_path = run_dir / "notify.sock"
        self.notify_path.unlink(missing_ok=True)
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(self.notify_path))

    def _build_bus(self, name: str, seed: int) -> None:
        """One multidrop line per bus, with a Modbus and a DLMS simulator on it as its meters need."""
        meters = [m for m in self.config.meters if m.bus == name]
        modbus = [m for m in meters if m.protocol is Protocol.MODBUS]
        dlms = [m for m in meters if m.protocol is Protocol.DLMS]
        drops = ["modbus"] * bool(modbus) + ["dlms"] * bool(dlms)
        line = MultidropLine(self.run_dir, name, drops, stats=self.run_dir / f"line-{name}.json")
        self.lines[name] = line
        self.simulators[name] = []
        if modbus:
            self.simulators[name].append(
                SimulatedModbusBus(
                    line.drop("modbus"),
                    [(m.address, m.model) for m in modbus],
                    seed=seed,
                    log=self.run_dir / f"sim-{name}-modbus.log",
                )
            )
        if dlms:
            simulated = [parse_meter(f"{m.address}:{_dlms_options(m)}", seed=seed) for m in dlms]
            self.simulators[name].append(
                SimulatedDlmsBus(
                    simulated,
                    port=line.drop("dlms"),
                    baud=self.config.buses[name].baud,
                    pace=self.pace_turnaround_ms is not None,
                    turnaround_ms=self.pace_turnaround_ms or 0.0,
                    log=self.run_dir / f"sim-{name}-dlms.log",
                )
            )

    def _overlay(self) -> dict:
        host, port = self.broker_address
        mqtt: dict = {"host": host, "port": port, "tls": self.pki is not None}
        if self.pki is not None:
            device = self.pki.issue("hes-device")
            mqtt |= {"ca_file": str(self.pki.ca), "cert_file": str(device.cert), "key_file": str(device.key)}
        return {
            "hes": {"data_dir": str(self.run_dir / "data")},
            "mqtt": mqtt,
            "buses": {name: {"device": str(self.run_dir / f"tty{name}")} for name in self.bus_names},
            "clock": {"gpsd_port": self.gps.port} if self.gps else {"gpsd_host": ""},
            # The demo's data path is the loopback interface: its bytes are the WAN's.
            **(
                {
                    "modem": {"enabled": True, "device": str(self.modem_line.device), "gpio": "fake"},
                    "wan": {"check_interval_s": 5, "interface": "lo"},
                }
                if self.modem_line
                else {}
            ),
            # The control socket of `hes console`, for the group of whoever runs the rig.
            "console": {
                "socket": str(self.run_dir / "control.sock"),
                "group": grp.getgrgid(os.getgid()).gr_name,
            },
        }

    def start(self) -> Substation:
        """Bring up the ptys, the simulated meters and the broker (not the daemon)."""
        for name, line in self.lines.items():
            line.start()
            for simulator in self.simulators[name]:
                simulator.start()
        if self.broker:
            self.broker.start()
        if self.gps:
            self.gps.start()
        if self.modem_line and self.modem:
            self.modem_line.start()
            self.modem.start()
        return self

    def stop(self) -> None:
        """Stop everything, the daemon first."""
        self.stop_daemon()
        self._notify.close()
        for name, line in self.lines.items():
            for simulator in self.simulators[name]:
                simulator.stop()
            line.stop()
        if self.broker:
            self.broker.stop()
        if self.gps:
            self.gps.stop()
        if self.modem_line and self.modem:
            self.modem.stop()
            self.modem_line.stop()

    def __enter__(self) -> Substation:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start_daemon(self, ready_timeout: float = 20, watchdog_usec: int | None = None) -> subprocess.Popen:
        """`hes run` with the base config and the overlay, as its own process.

        Returns once the daemon has said READY=1, as systemd would wait for it.
        """
        self._notify.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self._notify.recv(4096)  # stale news from an earlier daemon
        command = [sys.executable, "-m", "appliance", "run"]
        command += ["--config", str(self.base_config), "--config", str(self.overlay)]
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": str(self.notify_path)}
        if watchdog_usec:
            environment["WATCHDOG_USEC"] = str(watchdog_usec)
        with self.log.open("ab") as log:
            self.daemon = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
        self._notify.settimeout(0.2)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline and self.daemon.poll() is None:
            with contextlib.suppress(TimeoutError):
                if b"READY=1" in self._notify.recv(4096).split(b"\n"):
                    return self.daemon
        raise TransportError(f"the daemon did not report READY=1 within {ready_timeout} s; see {self.log}")

    def notifications(self, timeout: float) -> list[bytes]:
        """What the daemon told the notify socket within `timeout` seconds after the last read."""
        received = []
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            self._notify.settimeout(remaining)
            with contextlib.suppress(TimeoutError):
                received.append(self._notify.recv(4096))
        return received

    def stop_daemon(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        """Send `sig` (SIGKILL for a crash) and wait; returns the exit code."""
        if self.daemon is None:
            return None
        if self.daemon.poll() is None:
            self.daemon.send_signal(sig)
        try:
            code = self.daemon.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            code = self.daemon.wait()
        self.daemon = None
        return code

    def mdm(self, on_message: Callable[[Received], None] | None = None) -> MdmListener:
        """An MDM listener on this substation's broker (not started)."""
        host, port = self.broker_address
        return MdmListener(host, port, self.config.topic(), self.pki, on_message=on_message)

    def outbox_drained(self) -> bool:
        """Whether the daemon's store holds nothing unsent and no unacknowledged message."""
        if not self.config.store_path.exists():
            return True
        store = self.open_store()
        try:
            waiting = backlog(store)
        finally:
            store.close()
        return waiting["unsent_readings"] == waiting["unsent_events"] == waiting["pending_messages"] == 0

    def open_store(self) -> Store:
        """The daemon's store, read-only."""
        return Store(self.config.store_path, readonly=True)

    @staticmethod
    def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
        """Poll `predicate()` until it is true or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return predicate()


def describe(message: Received, most: int = 6) -> str:
    """A few lines a person can read for one message the MDM received (at most `most` readings)."""
    lines = [
        f"MDM <- {message.header.verb} {message.header.noun}  MessageID {message.header.message_id}"
        f"  {len(message.readings)} readings"
    ]
    if len(message.readings) > most:
        lines.append(f"    ... {len(message.readings) - most} more, the last {most}:")
    for reading in message.readings[-most:]:
        lines.append(
            f"    {reading.meter_id:<10} {format_time(reading.timestamp)}  {reading.reading_type.code:<40}"
            f" {reading.value} {unit_symbol(reading.reading_type)}"
        )
    return "\n".join(lines)


def _dlms_options(meter: MeterSpec) -> str:
    """The simulated meter's options that make it accept what the daemon will present."""
    secrets = read_meter_secrets(meter.keys_file) if meter.keys_file else {}
    options = ["days=2"]  # two days of profile history: a first read the rig can take quickly
    if "password" in secrets:
        options.append(f"password={secrets['password']}")
    if "encryption_key" in secrets:
        options += [f"ek={secrets['encryption_key']}", f"ak={secrets['authentication_key']}"]
    return ",".join(options)
