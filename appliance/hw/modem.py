"""The GSM/LTE modem (SIM7600- and Quectel EC25-style HATs): AT commands over its serial port, power
and reset through GPIO lines. Owned by the WAN health monitor's thread.

The AT protocol itself (echo, URCs, answers) is `hw/at.py`; this module only moves its bytes and
keeps time. A modem that stops answering costs one command timeout per call, never a hang.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import serial

from appliance.config import ModemSection
from appliance.errors import DeviceError, DeviceTimeout, TransportError
from appliance.hw import at
from appliance.hw.gpio import Gpio

log = logging.getLogger(__name__)

RESET_COMMAND = "AT+CFUN=1,1"  # full functionality after a reboot: both SIM7600 and EC25
# ICCID: SIMCom answers AT+CICCID with +ICCID:, Quectel AT+QCCID with +QCCID:, others AT+CCID.
_ICCID_COMMANDS = {"SIMCOM": ("AT+CICCID", "+ICCID:"), "QUECTEL": ("AT+QCCID", "+QCCID:")}


@dataclass(frozen=True)
class Identity:
    """What the modem and its SIM are; the IMSI and ICCID are None without a usable SIM."""

    manufacturer: str | None
    model: str | None
    imei: str | None
    imsi: str | None
    iccid: str | None


@dataclass(frozen=True)
class ModemStatus:
    """One look at the modem: SIM, signal, registration per domain, operator."""

    responding: bool
    sim: at.SimState | None = None
    signal: at.Signal | None = None
    extended: at.ExtendedSignal | None = None
    cs: at.Registration | None = None  # +CREG: circuit switched (GSM)
    ps: at.Registration | None = None  # +CGREG: packet switched (GPRS/UMTS)
    eps: at.Registration | None = None  # +CEREG: LTE
    operator: at.Operator | None = None

    @property
    def registered(self) -> bool:
        """Registered for data: on the packet (GPRS/UMTS) or the LTE domain."""
        return any(r is not None and r.registered for r in (self.ps, self.eps))

    @property
    def blocker(self) -> str | None:
        """A fault no reset can cure (a person has to act), or None."""
        if self.sim is not None and self.sim is not at.SimState.READY and self.sim is not at.SimState.UNKNOWN:
            return f"SIM {self.sim.value}"
        if any(r is at.Registration.DENIED for r in (self.cs, self.ps, self.eps)):
            return "registration denied by the network"
        return None

    def as_dict(self) -> dict[str, Any]:
        """For the status document."""
        signal = self.signal or at.Signal(None, None)
        extended = self.extended or at.ExtendedSignal(None, None)
        operator = self.operator or at.Operator(None, None)

        def name(value: at.Registration | None) -> str | None:
            return value.name.lower() if value is not None else None

        return {
            "responding": self.responding,
            "sim": self.sim.value if self.sim else None,
            "csq": signal.csq,
            "rssi_dbm": signal.rssi_dbm,
            "ber": signal.ber,
            "rsrp_dbm": extended.rsrp_dbm,
            "rsrq_db": extended.rsrq_db,
            "registration": {"cs": name(self.cs), "ps": name(self.ps), "eps": name(self.eps)},
            "registered": self.registered,
            "operator": operator.name,
            "technology": operator.technology,
        }


class Modem:
    """A modem on a serial port, with optional power and reset lines."""

    def __init__(self, spec: ModemSection, gpio: Gpio | None) -> None:
        self.spec = spec
        self.gpio = gpio
        self.session = at.AtSession()
        self.identity: Identity | None = None
        self.cesq_supported = True  # until the modem refuses AT+CESQ once
        self._port: serial.Serial | None = None
        self._needs_setup = True  # echo off, numeric errors, APN: again after every (re)boot
        if gpio is not None:
            if spec.power_pin >= 0:
                on = spec.power_kind == "enable"  # a supply switch starts on; a key starts released
                gpio.setup_output(spec.power_pin, self._level(on))
            if spec.reset_pin >= 0:
                gpio.setup_output(spec.reset_pin, self._level(False))

    def _level(self, asserted: bool) -> bool:
        return asserted == self.spec.active_high

    @property
    def can_power_cycle(self) -> bool:
        """Whether a power line is wired."""
        return self.gpio is not None and self.spec.power_pin >= 0

    def open(self) -> None:
        """Open the AT port (pyserial, exclusive: ModemManager must not probe it at the same time)."""
        try:
            self._port = serial.Serial(self.spec.device, baudrate=self.spec.baud, timeout=0, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TransportError(f"modem: cannot open {self.spec.device}: {exc}") from exc
        self.session = at.AtSession()

    def close(self) -> None:
        """Close the port; safe to call twice."""
        if self._port is not None:
            self._port.close()
            self._port = None

    def command(self, command: str, expect: str | None = None, timeout_s: float | None = None) -> at.Answer:
        """Send one command and wait for its final result code (OK or an error: both are answers).

        Raises DeviceTimeout when none comes in time, TransportError when the port fails.
        """
        port = self._open_port()
        timeout_s = timeout_s or self.spec.command_timeout_s
        try:
            self._drain(port)  # URCs that arrived since the last command
            port.write(self.session.start(command, expect))
            deadline = time.monotonic() + timeout_s
            while (remaining := deadline - time.monotonic()) > 0:
                port.timeout = min(remaining, 0.2)
                data = port.read(max(1, port.in_waiting))
                answer = self.session.feed(data) if data else None
                self._log_urcs()
                if answer is not None:
                    return answer
        except (serial.SerialException, OSError) as exc:
            self.close()
            raise TransportError(f"modem: {self.spec.device} failed: {exc}") from exc
        self.session.abandon()
        raise DeviceTimeout(f"modem: no answer to {command} within {timeout_s:g} s")

    def query(self, command: str, expect: str | None = None) -> at.Answer:
        """A command that must succeed: DeviceError with the modem's reason when it answers an error."""
        answer = self.command(command, expect)
        if not answer.ok:
            raise DeviceError(f"modem: {command} failed: {answer.error_text}")
        return answer

    def _open_port(self) -> serial.Serial:
        if self._port is None:
            self.open()
        assert self._port is not None
        return self._port

    def _drain(self, port: serial.Serial) -> None:
        port.timeout = 0
        while data := port.read(max(1, port.in_waiting)):
            self.session.feed(data)
        self._log_urcs()

    def _log_urcs(self) -> None:
        for urc in self.session.take_urcs():
            if urc in ("RDY", "START"):  # the modem (re)booted: echo is back on, the APN may be gone
                log.info("modem: booted (%s)", urc)
                self._needs_setup = True
            else:
                log.debug("modem URC: %s", urc)

    def setup(self) -> None:
        """After power-on or a reset: echo off, numeric +CME errors, no registration URCs, the APN."""
        self.query("ATE0")
        self.query("AT+CMEE=1")
        for command in ("AT+CREG=0", "AT+CGREG=0", "AT+CEREG=0"):
            self.command(command)  # a 2G-only modem refuses +CEREG: nothing to switch off there
        if self.spec.apn:
            self.query(f'AT+CGDCONT=1,"IP","{self.spec.apn}"')
        self._needs_setup = False

    def identify(self) -> Identity:
        """Manufacturer, model, IMEI, and the SIM's IMSI and ICCID (None while the SIM is not ready)."""
        manufacturer = self._line(self.command("AT+CGMI"))
        model = self._line(self.command("AT+CGMM"))
        imei = at.digits(self.command("AT+CGSN"), 14)
        imsi = at.digits(self.command("AT+CIMI"), 6)
        iccid_command, prefix = _ICCID_COMMANDS.get(
            (manufacturer or "").split()[0].upper() if manufacturer else "", ("AT+CCID", "+CCID:")
        )
        iccid = at.digits(self.command(iccid_command, prefix), 18)
        self.identity = Identity(manufacturer, model, imei, imsi, iccid)
        log.info("modem: %s %s, IMEI %s, SIM ICCID %s", manufacturer, model, imei, iccid or "(none)")
        return self.identity

    @staticmethod
    def _line(answer: at.Answer) -> str | None:
        return answer.lines[0] if answer.ok and answer.lines else None

    def status(self) -> ModemStatus:
        """Ask the modem how it is. A modem that does not answer AT is reported, not raised."""
        try:
            if not self.command("AT").ok:
                return ModemStatus(responding=False)
            if self._needs_setup:
                self.setup()
                self.identity = None
            sim = at.parse_cpin(self.command("AT+CPIN?"))
            if self.identity is None or (sim.usable and self.identity.imsi is None):
                self.identify()
            csq = self.command("AT+CSQ")
            signal = at.parse_csq(csq.value("+CSQ:") or "") if csq.ok else None
            extended = None
            if self.cesq_supported:
                cesq = self.command("AT+CESQ")
                self.cesq_supported = cesq.ok
                extended = at.parse_cesq(cesq.value("+CESQ:") or "") if cesq.ok else None
            cs, ps, eps = (self._registration(name) for name in ("+CREG", "+CGREG", "+CEREG"))
            cops = self.command("AT+COPS?")
            operator = at.parse_cops(cops.value("+COPS:") or "") if cops.ok else None
        except DeviceTimeout as exc:
            log.debug("%s", exc)
            return ModemStatus(responding=False)
        except DeviceError as exc:  # setup refused: answer what we know, try again next time
            log.warning("%s", exc)
            return ModemStatus(responding=True)
        return ModemStatus(True, sim, signal, extended, cs, ps, eps, operator)

    def _registration(self, name: str) -> at.Registration | None:
        answer = self.command(f"AT{name}?")
        if not answer.ok:
            return None
        # An unsolicited "+CREG: <stat>" may slip in; the answer to the query has <n>,<stat>.
        for line in answer.lines:
            stat = at.parse_registration(line[len(name) + 1 :])
            if stat is not None:
                return stat
        return None

    def reset(self) -> str:
        """Reboot the modem: AT+CFUN=1,1, or the reset line when AT gets no answer. Returns which.

        Does not wait for the boot: the caller gives the modem `boot_s` (the ladder's rung wait).
        """
        try:
            if self.command(RESET_COMMAND).ok:
                self._needs_setup = True
                return RESET_COMMAND
        except DeviceTimeout:
            pass
        if self.gpio is None or self.spec.reset_pin < 0:
            raise DeviceError("modem: it refused AT+CFUN=1,1 and has no reset line")
        self._press(self.spec.reset_pin, self.spec.reset_s)
        self._needs_setup = True
        return "reset line"

    def power_cycle(self) -> None:
        """Switch the modem off and on through its power line (blocks for power_off_s and the presses)."""
        if not self.can_power_cycle:
            raise DeviceError("modem: no power line configured (modem.power_pin)")
        assert self.gpio is not None
        pin = self.spec.power_pin
        self.close()  # a USB modem's port disappears while it is off
        if self.spec.power_kind == "enable":
            self.gpio.write(pin, self._level(False))
            time.sleep(self.spec.power_off_s)
            self.gpio.write(pin, self._level(True))
        else:
            self._press(pin, self.spec.pwrkey_s)  # off ...
            time.sleep(self.spec.power_off_s)
            self._press(pin, self.spec.pwrkey_s)  # ... and on again
        self._needs_setup = True

    def press_power_key(self) -> None:
        """Press the power key once: switches a silent modem on (or a running one off: ask AT first)."""
        if self.gpio is not None and self.spec.power_pin >= 0 and self.spec.power_kind == "pwrkey":
            self._press(self.spec.power_pin, self.spec.pwrkey_s)
            self._needs_setup = True

    def _press(self, pin: int, seconds: float) -> None:
        assert self.gpio is not None
        self.gpio.write(pin, self._level(True))
        time.sleep(seconds)
        self.gpio.write(pin, self._level(False))
