"""AT commands of GSM/LTE modems (3GPP TS 27.007, as SIM7600 and Quectel EC25 speak it), sans-I/O.

`AtSession` turns the bytes a modem sends into answers to the command in progress and unsolicited
result codes (URCs), which may arrive at any time, also between the lines of an answer. The echo of
the command (modems boot with echo on) is recognised and dropped, so the session works with echo on
or off. The parse functions below turn answer lines into values; none of this code does I/O.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from enum import Enum

_FINAL_OK = {"OK", "CONNECT"}
_FINAL_ERROR = {"ERROR", "NO CARRIER", "BUSY", "NO ANSWER", "NO DIALTONE"}
# Bare URCs (without a "+NAME:" prefix) of SIM7600 and Quectel modems: boot notices, calls, SMS.
BARE_URCS = {"RDY", "SMS DONE", "PB DONE", "RING", "POWERED DOWN", "NORMAL POWER DOWN", "START"}
_PREFIX = re.compile(r"^(\+[A-Z0-9]+):")

# +CME ERROR codes (27.007 9.2.1) the health view tells apart; the modem sends them with AT+CMEE=1.
CME_TEXT = {
    3: "operation not allowed",
    4: "operation not supported",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    15: "SIM wrong",
    30: "no network service",
    100: "unknown",
}


@dataclass(frozen=True)
class Answer:
    """A command's complete answer: its information lines and the final result code."""

    command: str
    lines: tuple[str, ...]
    ok: bool
    final: str  # "OK", "ERROR", "+CME ERROR: 10", ...

    @property
    def cme_error(self) -> int | None:
        """The +CME ERROR code, when the modem gave a numeric one."""
        match = re.match(r"^\+CM[ES] ERROR:\s*(\d+)$", self.final)
        return int(match.group(1)) if match else None

    @property
    def error_text(self) -> str:
        """What went wrong, in words (for logs and the status)."""
        code = self.cme_error
        if code is not None:
            return CME_TEXT.get(code, f"CME error {code}")
        return self.final.partition(":")[2].strip() or self.final

    def value(self, prefix: str) -> str | None:
        """The text after `prefix` (e.g. "+CSQ:") on the first line carrying it."""
        for line in self.lines:
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        return None


class AtSession:
    """One command at a time; feed it what the port reads, get answers and URCs back."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._command: str | None = None
        self._expect: str | None = None
        self._lines: list[str] = []
        self.urcs: list[str] = []  # URCs seen since the caller last took them

    @property
    def busy(self) -> bool:
        """Whether a command awaits its final result code."""
        return self._command is not None

    def start(self, command: str, expect: str | None = None) -> bytes:
        """The bytes to write for `command` ("AT+CSQ"). `expect` is the prefix of its answer lines
        when it differs from the command's own ("+ICCID:" for AT+CICCID); commands answering bare
        lines (AT+CGSN, AT+CIMI) need none."""
        self._command = command
        self._expect = expect or _expected_prefix(command)
        self._lines = []
        return command.encode("ascii") + b"\r"

    def abandon(self) -> None:
        """Forget the command in progress (its answer never came); a late answer becomes URC noise."""
        self._command = self._expect = None
        self._lines = []

    def feed(self, data: bytes) -> Answer | None:
        """Take bytes from the modem; returns the command's answer once its final result arrived.

        Everything that is not part of the answer goes to `urcs`.
        """
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                return None
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            answer = self._line(raw.decode("ascii", errors="replace").strip())
            if answer is not None:
                return answer

    def _line(self, line: str) -> Answer | None:
        if not line:
            return None
        if self._command is None:
            self.urcs.append(line)
            return None
        if line == self._command:  # the echo
            return None
        if line in _FINAL_OK or line in _FINAL_ERROR or line.startswith(("+CME ERROR:", "+CMS ERROR:")):
            ok = line in _FINAL_OK
            answer = Answer(self._command, tuple(self._lines), ok, line)
            self.abandon()
            return answer
        prefix = _PREFIX.match(line)
        if (prefix and prefix.group(1) + ":" != self._expect) or (not prefix and line in BARE_URCS):
            self.urcs.append(line)
        else:
            self._lines.append(line)
        return None

    def take_urcs(self) -> list[str]:
        """The URCs seen so far, oldest first; the session forgets them."""
        urcs, self.urcs = self.urcs, []
        return urcs


def _expected_prefix(command: str) -> str | None:
    """ "AT+CREG?" answers "+CREG: ...", "AT+CSQ" answers "+CSQ: ..."; "AT+CGSN" answers a bare line."""
    match = re.match(r"^AT(\+[A-Z0-9]+)", command.upper())
    return match.group(1) + ":" if match else None


def fields(text: str) -> list[str]:
    """Comma-separated values, quotes removed ('1,"Telekom",7' -> ['1', 'Telekom', '7'])."""
    return [item.strip() for item in next(csv.reader([text], skipinitialspace=True))] if text else []


def _int(text: str) -> int | None:
    return int(text) if text.strip().lstrip("-").isdigit() else None


@dataclass(frozen=True)
class Signal:
    """+CSQ: received signal strength (0-31, 99 unknown) and bit error rate (0-7, 99 unknown)."""

    csq: int | None
    ber: int | None

    @property
    def rssi_dbm(self) -> int | None:
        """The RSSI in dBm (27.007: 0 is -113 dBm or less, 31 is -51 dBm or more)."""
        return None if self.csq is None else -113 + 2 * self.csq


def parse_csq(value: str) -> Signal:
    """'+CSQ: 18,99' without the prefix."""
    parts = fields(value)
    csq = _int(parts[0]) if parts else None
    ber = _int(parts[1]) if len(parts) > 1 else None
    return Signal(None if csq is None or csq == 99 or not 0 <= csq <= 31 else csq, None if ber == 99 else ber)


@dataclass(frozen=True)
class ExtendedSignal:
    """+CESQ: LTE reference signal received power (dBm) and quality (dB), None when unknown."""

    rsrp_dbm: int | None
    rsrq_db: float | None


def parse_cesq(value: str) -> ExtendedSignal:
    """'<rxlev>,<ber>,<rscp>,<ecno>,<rsrq>,<rsrp>': rsrq 0-34 steps 0.5 dB from -20, rsrp 0-97 from
    -141 dBm; 255 means unknown (27.007 8.69)."""
    parts = [_int(p) for p in fields(value)]
    if len(parts) < 6:
        return ExtendedSignal(None, None)
    rsrq, rsrp = parts[4], parts[5]
    return ExtendedSignal(
        -141 + rsrp if rsrp is not None and 0 <= rsrp <= 97 else None,
        -20 + rsrq / 2 if rsrq is not None and 0 <= rsrq <= 34 else None,
    )


class Registration(Enum):
    """<stat> of +CREG/+CGREG/+CEREG (27.007 7.2, 10.1.20)."""

    NOT_SEARCHING = 0
    HOME = 1
    SEARCHING = 2
    DENIED = 3
    UNKNOWN = 4
    ROAMING = 5

    @property
    def registered(self) -> bool:
        """Registered on a network, at home or roaming."""
        return self in (Registration.HOME, Registration.ROAMING)


def parse_registration(value: str) -> Registration | None:
    """The answer to AT+CREG? / +CGREG? / +CEREG?: '<n>,<stat>[,...]'. SMS-only and emergency
    states (6-10 in +CEREG) carry no data: they count as not registered (NOT_SEARCHING)."""
    parts = fields(value)
    stat = _int(parts[1]) if len(parts) > 1 else None
    if stat is None:
        return None
    try:
        return Registration(stat)
    except ValueError:
        return Registration.NOT_SEARCHING


# <AcT> of +COPS (27.007 7.3); 8 and 9 as Quectel and SIMCom report LTE-M and NB-IoT.
TECHNOLOGY = {
    0: "GSM",
    2: "UMTS",
    3: "EDGE",
    4: "HSDPA",
    5: "HSUPA",
    6: "HSPA",
    7: "LTE",
    8: "LTE-M",
    9: "NB-IoT",
}


@dataclass(frozen=True)
class Operator:
    """+COPS?: the network the modem is on, and by which radio technology."""

    name: str | None
    technology: str | None


def parse_cops(value: str) -> Operator:
    """'<mode>[,<format>,<oper>[,<AcT>]]'; only <mode> when the modem is on no network."""
    parts = fields(value)
    name = parts[2] if len(parts) > 2 and parts[2] else None
    act = _int(parts[3]) if len(parts) > 3 else None
    return Operator(name, TECHNOLOGY.get(act, f"AcT {act}") if act is not None else None)


class SimState(Enum):
    """What +CPIN? says about the SIM."""

    READY = "ready"
    PIN_REQUIRED = "PIN required"
    PUK_REQUIRED = "PUK required"
    ABSENT = "not inserted"
    FAILURE = "failure"
    UNKNOWN = "unknown"

    @property
    def usable(self) -> bool:
        """Whether the modem can register with this SIM without a person's help."""
        return self is SimState.READY


def parse_cpin(answer: Answer) -> SimState:
    """+CPIN: READY / SIM PIN / SIM PUK, or +CME ERROR 10 (not inserted), 13 (failure) and kin."""
    if answer.ok:
        value = (answer.value("+CPIN:") or "").upper()
        if value == "READY":
            return SimState.READY
        if value.endswith("PUK"):
            return SimState.PUK_REQUIRED
        if value.endswith("PIN"):
            return SimState.PIN_REQUIRED
        return SimState.UNKNOWN
    return {
        10: SimState.ABSENT,
        11: SimState.PIN_REQUIRED,
        12: SimState.PUK_REQUIRED,
        13: SimState.FAILURE,
        15: SimState.FAILURE,
    }.get(answer.cme_error or -1, SimState.UNKNOWN)


def digits(answer: Answer, minimum: int) -> str | None:
    """The first run of at least `minimum` digits in the answer: IMEI (15), IMSI (15), ICCID (19-20)."""
    for line in answer.lines:
        match = re.search(rf"\d{{{minimum},}}", line)
        if match:
            return match.group(0)
    return None
