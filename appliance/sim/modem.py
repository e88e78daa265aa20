"""A simulated GSM/LTE modem on the far end of a pty, with state a test can change while it runs.

No maintained AT-modem simulator exists (FIELD-NOTES), so this one answers what a HES asks
(identity, SIM, signal, registration, operator, APN, reset) the way a SIM7600 or an EC25 does: echo
on after boot, boot URCs (RDY, +CPIN: READY, SMS DONE, PB DONE), +CME ERROR codes when AT+CMEE=1.
It runs as a thread of the test (or demo) process so that a test can pull the SIM, drop the signal,
make it stop answering, or watch it being reset. Given a FakeGpio, it follows its power and reset
lines like the real hardware: a supply switch, or a power key with minimum press times.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import serial

from appliance.hw.gpio import FakeGpio

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Profile:
    """What tells one modem family from another, as far as the HES can see."""

    manufacturer: str
    model: str
    iccid_command: str
    iccid_prefix: str
    has_cesq: bool


SIM7600 = Profile("SIMCOM INCORPORATED", "SIMCOM_SIM7600E-H", "AT+CICCID", "+ICCID:", True)
EC25 = Profile("Quectel", "EC25", "AT+QCCID", "+QCCID:", False)


@dataclass(frozen=True)
class Wiring:
    """The GPIO lines the simulated modem follows (BCM numbers, -1 none), as config [modem] says."""

    power_pin: int = -1
    power_kind: str = "pwrkey"
    reset_pin: int = -1
    active_high: bool = True
    pwrkey_min_s: float = 0.05  # shorter presses are ignored, as a real modem debounces its key


class SimulatedModem:
    """The modem behind `port` (the peer end of a PtyPair). Public attributes are its mutable state."""

    def __init__(
        self,
        port: Path,
        profile: Profile = SIM7600,
        gpio: FakeGpio | None = None,
        wiring: Wiring = Wiring(),
        boot_s: float = 0.3,
    ) -> None:
        self.port_path, self.profile, self.gpio, self.wiring, self.boot_s = (
            port,
            profile,
            gpio,
            wiring,
            boot_s,
        )
        # What the radio world looks like; a test changes these at any time.
        self.sim = "ready"  # ready, absent, pin
        self.csq = 20
        self.registration = 1  # <stat> for CREG, CGREG and CEREG: 1 home, 2 searching, 3 denied, ...
        self.operator = "SimTel"
        self.technology = 7  # <AcT>: LTE
        self.imei, self.imsi, self.iccid = "867584030123456", "262019876543210", "89490200001234567890"
        self.silent = False  # a hung modem: answers nothing until a reset line or power cycle
        self.urc_noise = False  # an unsolicited +CEREG inside every answer
        # What the HES did to it, for the tests to check.
        self.commands: list[str] = []
        self.at_resets = self.power_ons = self.reset_pulses = 0
        self.apn = ""
        self._powered = wiring.power_pin < 0 or gpio is None or wiring.power_kind == "enable"
        self._ready_at = time.monotonic()
        self._booted = True
        self._echo, self._cmee = True, 0
        self._lines: dict[int, bool] = {}
        self._pressed_at: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="sim-modem", daemon=True)
        self._port: serial.Serial | None = None

    def start(self) -> SimulatedModem:
        """Open the pty and serve until `stop`."""
        self._port = serial.Serial(str(self.port_path), baudrate=115200, timeout=0.02)
        if self.gpio is not None:
            self._lines = {pin: self._level(pin) for pin in (self.wiring.power_pin, self.wiring.reset_pin)}
            if self.wiring.power_kind == "enable" and self.wiring.power_pin >= 0:
                self._powered = self._lines[self.wiring.power_pin]
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the pty; safe to call twice."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        if self._port is not None:
            self._port.close()
            self._port = None

    def __enter__(self) -> SimulatedModem:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def powered(self) -> bool:
        """Whether the modem has power (and so may answer)."""
        return self._powered

    def _level(self, pin: int) -> bool:
        """Whether `pin` is asserted (pressed, in reset, supply on)."""
        if pin < 0 or self.gpio is None:
            return False
        return self.gpio.levels.get(pin, not self.wiring.active_high) == self.wiring.active_high

    def _serve(self) -> None:
        assert self._port is not None
        pending = bytearray()
        while not self._stop.is_set():
            self._follow_gpio()
            self._finish_boot()
            try:
                data = self._port.read(256)
            except (serial.SerialException, OSError):
                return
            if not data or not self._powered:
                continue
            pending += data
            while (end := pending.find(b"\r")) >= 0:
                line = pending[:end].decode("ascii", errors="replace").strip()
                del pending[: end + 1]
                if line and time.monotonic() >= self._ready_at and not self.silent:  # booting or hung: deaf
                    self._command(line)

    def _follow_gpio(self) -> None:
        if self.gpio is None:
            return
        now = time.monotonic()
        for pin in (self.wiring.power_pin, self.wiring.reset_pin):
            if pin < 0:
                continue
            level = self._level(pin)
            if level == self._lines.get(pin):
                continue
            self._lines[pin] = level
            if pin == self.wiring.reset_pin:
                if not level and self._powered:  # released: the reset takes effect
                    self.reset_pulses += 1
                    self._boot()
            elif self.wiring.power_kind == "enable":
                self._power(level)
            elif level:
                self._pressed_at[pin] = now
            elif now - self._pressed_at.pop(pin, now) >= self.wiring.pwrkey_min_s:
                self._power(not self._powered)  # a long enough press toggles the power

    def _power(self, on: bool) -> None:
        if on and not self._powered:
            self.power_ons += 1
            self._powered = True
            self._boot()
        elif not on:
            self._powered = False

    def _boot(self) -> None:
        """Volatile settings back to their defaults (a hung firmware too); deaf for boot_s, then RDY."""
        self._echo, self._cmee, self.apn, self.silent = True, 0, "", False
        self._ready_at = time.monotonic() + self.boot_s
        self._booted = False

    def _finish_boot(self) -> None:
        if self._booted or not self._powered or time.monotonic() < self._ready_at:
            return
        self._booted = True
        urcs = ["RDY"] + (["+CPIN: READY", "SMS DONE", "PB DONE"] if self.sim == "ready" else [])
        self._send("".join(f"\r\n{urc}\r\n" for urc in urcs))

    def _send(self, text: str) -> None:
        if self._port is not None and not self.silent:
            self._port.write(text.encode("ascii"))

    def _command(self, line: str) -> None:
        self.commands.append(line)
        if self._echo:
            self._send(line + "\r")
        command = line.upper()
        try:
            lines = self._answer(command)
            final = "OK"
        except _Refused as refused:
            lines, final = [], (f"+CME ERROR: {refused.code}" if self._cmee == 1 else "ERROR")
        if self.urc_noise:
            lines = [lines[0], "+CEREG: 1", *lines[1:]] if lines else ["+CEREG: 1"]
        self._send("".join(f"\r\n{item}\r\n" for item in lines) + f"\r\n{final}\r\n")
        if command == "AT+CFUN=1,1":
            self.at_resets += 1
            self._boot()

    def _answer(self, command: str) -> list[str]:
        """The information lines of a command's answer; _Refused for an error."""
        profile = self.profile
        registered = self.registration in (1, 5) and self.sim == "ready"
        stat = self.registration if self.sim == "ready" else 0
        fixed = {
            "AT": [],
            "ATE0": [],
            "ATE1": [],
            "AT+CGMI": [profile.manufacturer],
            "AT+CGMM": [profile.model],
            "AT+CGSN": [self.imei],
            "AT+CSQ": [f"+CSQ: {self.csq},99"],
            "AT+CREG?": [f"+CREG: 0,{stat}"],
            "AT+CGREG?": [f"+CGREG: 0,{stat}"],
            "AT+CEREG?": [f"+CEREG: 0,{stat}"],
            "AT+CGATT?": [f"+CGATT: {int(registered)}"],
            "AT+CFUN=1,1": [],
        }
        if command in fixed:
            if command == "ATE0":
                self._echo = False
            elif command == "ATE1":
                self._echo = True
            return fixed[command]
        if command.startswith(("AT+CREG=", "AT+CGREG=", "AT+CEREG=")):
            return []
        if command.startswith("AT+CMEE="):
            self._cmee = int(command.partition("=")[2] or 0)
            return []
        if command.startswith("AT+CGDCONT=1,"):
            self.apn = command.split(",")[2].strip('"').lower()
            return []
        if command == "AT+CESQ" and profile.has_cesq:
            rsrp = 255 if self.csq == 99 else min(97, 30 + 2 * self.csq)
            return [f"+CESQ: 99,99,255,255,{20 if self.csq != 99 else 255},{rsrp}"]
        if command == "AT+CPIN?":
            return [self._cpin()]
        if self.sim != "ready" and command in ("AT+CIMI", profile.iccid_command):
            raise _Refused(10 if self.sim == "absent" else 11)
        if command == "AT+CIMI":
            return [self.imsi]
        if command == profile.iccid_command:
            return [f"{profile.iccid_prefix} {self.iccid}"]
        if command == "AT+COPS?":
            return [f'+COPS: 0,0,"{self.operator}",{self.technology}' if registered else "+COPS: 0"]
        raise _Refused(4)

    def _cpin(self) -> str:
        if self.sim == "absent":
            raise _Refused(10)
        return "+CPIN: SIM PIN" if self.sim == "pin" else "+CPIN: READY"


class _Refused(Exception):
    """The simulated modem answers this command with an error (27.007 +CME ERROR code)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code
