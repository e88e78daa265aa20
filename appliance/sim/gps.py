"""A simulated GPS receiver: NMEA written to a pty, where a real gpsd reads it (tests and the demo).

The feed sends RMC, GGA, GSA and ZDA once a second, each second at the moment the GPS time it
names begins, like a receiver (minus its 0.1-0.5 s of lateness). The test steers it while it
runs: `fix`, `offset_s` (GPS time minus system time), `garbage`, `silent`; `stop_gpsd` and
`start_gpsd` kill gpsd and bring it back on the same port and pty.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from appliance.errors import TransportError
from appliance.sim.broker import free_port
from appliance.sim.process import ChildProcess
from appliance.sim.ptys import PtyPair

# Where the simulated receiver sits (a substation near Munich), altitude above mean sea level.
LAT, LON, ALT = 48.1173, 11.5166667, 545.4


def nmea(body: str) -> bytes:
    """One NMEA 0183 sentence: `$`, the body, `*`, the XOR of the body's bytes in hex, CR LF."""
    checksum = 0
    for byte in body.encode("ascii"):
        checksum ^= byte
    return f"${body}*{checksum:02X}\r\n".encode("ascii")


def _angle(value: float, width: int, hemispheres: str) -> str:
    """Degrees as NMEA's (d)ddmm.mmmm and a hemisphere letter."""
    degrees, minutes = divmod(abs(value) * 60, 60)
    return f"{int(degrees):0{width}d}{minutes:07.4f},{hemispheres[value < 0]}"


def sentences(moment: datetime, fix: bool = True) -> bytes:
    """One second of a receiver's output for the UTC time `moment`: with a 3D fix, or without
    (empty position fields, as a receiver that sees too few satellites sends them)."""
    hms, dmy = moment.strftime("%H%M%S.00"), moment.strftime("%d%m%y")
    zda = nmea(f"GPZDA,{hms},{moment:%d},{moment:%m},{moment:%Y},00,00")
    if not fix:
        return (
            nmea(f"GPRMC,{hms},V,,,,,,,{dmy},,,N")
            + nmea(f"GPGGA,{hms},,,,,0,00,99.99,,,,,,")
            + nmea("GPGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99")
            + zda
        )
    lat, lon = _angle(LAT, 2, "NS"), _angle(LON, 3, "EW")
    return (
        nmea(f"GPRMC,{hms},A,{lat},{lon},0.0,0.0,{dmy},,,A")
        + nmea(f"GPGGA,{hms},{lat},{lon},1,08,0.9,{ALT},M,46.9,M,,")
        + nmea("GPGSA,A,3,04,05,09,12,17,24,25,29,,,,,1.6,0.9,1.3")
        + zda
    )


# Line noise: binary junk, a sentence with a wrong checksum, one cut short.
GARBAGE = b"\x00\xff\x7e\x13junk$GPRMC,000000.00,A,,,,,,,010100,,,A*00\r\n$GPGGA,12"


class Gpsd(ChildProcess):
    """A real gpsd in the foreground on a free local port, reading one device from the start."""

    def __init__(self, device: Path, port: int, log_path: Path) -> None:
        self.device, self.port, self.log_path = device, port, log_path

    def start(self) -> Gpsd:
        """Start gpsd and wait until its port accepts connections."""
        with self.log_path.open("ab") as output:
            # -N foreground, -n read the device without waiting for a client, -b never reconfigure it.
            self._process = subprocess.Popen(
                ["gpsd", "-N", "-n", "-b", "-S", str(self.port), str(self.device)],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self.stop()
                    raise TransportError(
                        f"gpsd did not start on port {self.port}; see {self.log_path}"
                    ) from None
                time.sleep(0.02)


class SimulatedGps:
    """A pty pair, gpsd on one end, and a feed thread writing NMEA into the other."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.pty = PtyPair(directory, "GPS")
        self.port = port or free_port()
        self.gpsd = Gpsd(self.pty.device, self.port, directory / "gpsd.log")
        self.fix = True
        self.offset_s = 0.0
        self.garbage = False
        self.silent = False
        self._halt = threading.Event()
        self._feed: threading.Thread | None = None
        self._fd: int | None = None

    def start(self) -> SimulatedGps:
        """Bring up the pty pair, gpsd and the feed."""
        self.pty.start()
        self._fd = os.open(self.pty.peer, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
        self.gpsd.start()
        self._halt.clear()
        self._feed = threading.Thread(target=self._run, name="sim-gps", daemon=True)
        self._feed.start()
        return self

    def stop(self) -> None:
        """Stop the feed, gpsd and the pty pair; safe to call twice."""
        self._halt.set()
        if self._feed is not None:
            self._feed.join(timeout=5)
            self._feed = None
        self.gpsd.stop()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.pty.stop()

    def stop_gpsd(self) -> None:
        """Kill gpsd (the feed goes on writing into the pty, as a receiver would)."""
        self.gpsd.stop()

    def start_gpsd(self) -> None:
        """Start gpsd again on the same port and pty."""
        self.gpsd.start()

    def jump_to(self, moment: datetime) -> None:
        """From the next second on, send GPS time counting on from `moment`."""
        self.offset_s = moment.timestamp() - time.time()

    def __enter__(self) -> SimulatedGps:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while True:
            offset = self.offset_s
            gps_now = time.time() + offset
            second = math.floor(gps_now) + 1
            if self._halt.wait(second - gps_now):
                return
            if self.silent:
                continue
            moment = datetime.fromtimestamp(second, UTC)
            self._write(GARBAGE if self.garbage else sentences(moment, self.fix))

    def _write(self, data: bytes) -> None:
        """Write without ever blocking: what the pty cannot take is lost, as on a serial line."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._fd, data)  # type: ignore[arg-type]
