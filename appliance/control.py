"""The daemon's control socket: how `hes console` and `hes status` talk to the running daemon.

A Unix socket, mode 0660 for the configured group (the console's account is a member, nobody else
is). One JSON request per line, one JSON answer per line: {"op": ..., "line": what was typed, ...}
-> {"ok": true, "result": ...} or {"ok": false, "error": ..., "denied": bool}. A connection is a
console session: it signs in once, and its role decides what it may ask. The daemon writes every
request of a signed-in session to the audit table, because the console cannot (the store is
read-only to it); what the console spooled while the daemon was down is imported at every sign-in
(console/spool.py). `status` needs no sign-in: the group may read status.json anyway.

The console never touches the serial ports: reading a meter, a relay, discovery, the LED test and a
restart are asked of the daemon, which does them through its own components (`Handlers`).
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import pwd
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Protocol

from appliance.clock import Clock
from appliance.collect.bus import BusAccess
from appliance.collect.collector import Collector
from appliance.commands import jobs
from appliance.commands.policy import check_relay_rate
from appliance.config import Config, MeterSpec
from appliance.console import accounts, settings
from appliance.console.accounts import Account, Role
from appliance.console.spool import import_spool
from appliance.errors import AccessDenied, ControlError, DaemonUnavailable, HesError, UnknownMeter
from appliance.hw.leds import LedPanel
from appliance.model import Reading, epoch, unit_symbol
from appliance.status import read_status
from appliance.store import Store
from appliance.store.commands import record_relay_operation
from appliance.store.readings import readings_between
from appliance.uplink.cim import format_time

log = logging.getLogger("hes.control")

MAX_LINE = 64 * 1024  # a request longer than this is refused and the connection closed
MAX_SESSIONS = 4  # the serial console, a second login, `hes status`: more means something is wrong
MAX_FAILED_LOGINS = 3  # per connection, like login(1); the account lockout counts across connections
EXIT_RESTART = 3  # `hes run`'s exit code after the console's restart: not 0, so systemd restarts it
BUS_WAIT_S = 120.0  # a meter read or relay: a DLMS association, a few requests, retries
DISCOVERY_WAIT_S = 1800.0  # a whole bus, address by address
_METER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# The least role each request needs; None: anybody who reaches the socket. `show` and `export` are
# done by the console itself from the store: the daemon checks the role and records them.
OPS: dict[str, Role | None] = {
    "status": None,
    "login": None,
    "show": Role.VIEWER,
    "config_show": Role.VIEWER,
    "read_now": Role.VIEWER,
    "export": Role.TECHNICIAN,
    "relay": Role.TECHNICIAN,
    "discover": Role.TECHNICIAN,
    "test_leds": Role.TECHNICIAN,
    "config_set": Role.TECHNICIAN,
    "restart": Role.TECHNICIAN,
    "audit": Role.ADMIN,
}


def require_role(account: Account | None, op: str, line: str) -> None:
    """AccessDenied unless `account` may run `op` (OPS): one rule for the daemon and for the console
    without it."""
    needed = OPS[op]
    if needed is None:
        return
    if account is None:
        raise AccessDenied("sign in first")
    if account.role < needed:
        command = line.split(maxsplit=1)[0] if line.split() else op
        raise AccessDenied(f"{command} needs the {needed.label} role")


class Handlers(Protocol):
    """What the control socket asks of the daemon's components."""

    restart_requested: bool  # set by restart(): `hes run` then exits with EXIT_RESTART

    def read_now(self, meter_id: str) -> list[Reading]:
        """Read a meter at once (a command job on its bus) and return what it read."""

    def relay(self, meter_id: str, action: str) -> str:
        """Connect or disconnect a meter's supply; returns the relay's state afterwards."""

    def discover(self, bus: str) -> list[dict[str, Any]]:
        """Look for meters on a bus; returns what answered."""

    def test_leds(self) -> str:
        """Run the LED panel's self-test; returns what the technician should have seen."""

    def restart(self) -> None:
        """Stop the daemon so that systemd starts it again."""


class DaemonHandlers:
    """The Handlers of `hes run`: commands go to the meters' buses as COMMAND jobs (they cut in at
    the next request boundary of a routine poll), the LED test to the panel's own thread."""

    def __init__(self, stop: threading.Event, collector: Collector, clock: Clock, leds: LedPanel) -> None:
        self.stop = stop
        self.collector = collector
        self.clock = clock
        self.leds = leds
        self.restart_requested = False

    def read_now(self, meter_id: str) -> list[Reading]:
        """The meter's registers read now, stored like any reading (the MDM's read job)."""

        def read(access: BusAccess, meter: MeterSpec) -> list[Reading]:
            outcome = jobs.read_now(access, meter, self.clock)
            start, end = int(outcome.detail["start"]), int(outcome.detail["end"])
            return readings_between(access.store, meter.id, start, end)

        return _wait(self.collector.submit(meter_id, read), BUS_WAIT_S, f"reading {meter_id}")

    def relay(self, meter_id: str, action: str) -> str:
        """The MDM's relay job: act on the disconnect control, then read the state back."""
        outcome = _wait(
            self.collector.submit(meter_id, lambda access, meter: jobs.relay(access, meter, action)),
            BUS_WAIT_S,
            f"the relay of {meter_id}",
        )
        if not outcome.ok:
            raise ControlError(outcome.reason)
        return outcome.detail["relayState"]

    def discover(self, bus: str) -> list[dict[str, Any]]:
        """Scan the bus; what answers is registered unassigned and announced to the MDM."""
        found = _wait(self.collector.discover(bus), DISCOVERY_WAIT_S, f"discovery on bus {bus}")
        return [
            {"meter": d.mrid, "protocol": d.protocol.value, "address": d.address, **d.identity} for d in found
        ]

    def test_leds(self) -> str:
        """Start the panel's self-test; returns what to watch for."""
        return self.leds.self_test()

    def restart(self) -> None:
        """Stop; `hes run` then exits with EXIT_RESTART, which systemd's Restart=on-failure restarts."""
        self.restart_requested = True
        self.stop.set()


def _wait(future: Future, timeout_s: float, what: str) -> Any:
    try:
        return future.result(timeout=timeout_s)
    except FutureTimeout:
        raise ControlError(f"{what} did not finish within {timeout_s:g} s; it goes on on the bus") from None


class ControlServer(threading.Thread):
    """Accepts console sessions on the control socket; one thread per session, at most MAX_SESSIONS."""

    def __init__(
        self,
        config: Config,
        handlers: Handlers,
        open_store: Callable[[], Store],
        clock: Clock,
        stop: threading.Event,
    ) -> None:
        super().__init__(name="control", daemon=True)
        self.config = config
        self.handlers = handlers
        self.open_store = open_store
        self.clock = clock
        self.stop = stop
        self.heartbeat = time.monotonic()
        self.path = config.console.socket
        self._sessions: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def run(self) -> None:
        retry_at = 0.0
        listener: socket.socket | None = None
        try:
            while not self.stop.is_set():
                self.heartbeat = time.monotonic()
                if listener is None:
                    if time.monotonic() < retry_at:
                        self.stop.wait(1.0)
                        continue
                    try:
                        listener = self._listen()
                    except (OSError, HesError) as exc:
                        log.error("control socket %s not available, retrying in 30 s: %s", self.path, exc)
                        retry_at = time.monotonic() + 30
                        continue
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    continue
                self._start_session(connection)
        finally:
            if listener is not None:
                listener.close()
                self.path.unlink(missing_ok=True)

    def _listen(self) -> socket.socket:
        """Bind the socket for the group only; a stale socket file from a crash is replaced."""
        try:
            gid = grp.getgrnam(self.config.console.group).gr_gid
        except KeyError:
            raise ControlError(f"console.group {self.config.console.group!r} does not exist") from None
        if self.path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(self.path))
            except OSError:
                self.path.unlink()  # nobody answers: left behind by a daemon that died
            else:
                raise ControlError(f"another daemon answers on {self.path}")
            finally:
                probe.close()
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        # Bound under another name and renamed once its mode is right: no moment open to others.
        unready = self.path.with_name(self.path.name + ".new")
        unready.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(unready))
            # The daemon's own group is the console's on the appliance: no chown, which the unit's
            # system-call filter refuses (it denies @privileged, @chown among them).
            if os.stat(unready).st_gid != gid:
                os.chown(unready, -1, gid)
            os.chmod(unready, 0o660)
            listener.listen(MAX_SESSIONS)
            listener.settimeout(1.0)
            os.replace(unready, self.path)
        except OSError:
            listener.close()
            unready.unlink(missing_ok=True)
            raise
        log.info("control socket %s ready (group %s)", self.path, self.config.console.group)
        return listener

    def _start_session(self, connection: socket.socket) -> None:
        with self._lock:
            self._sessions = {t for t in self._sessions if t.is_alive()}
            if len(self._sessions) >= MAX_SESSIONS:
                log.warning("control socket: a session refused, %d are open already", MAX_SESSIONS)
                with contextlib.suppress(OSError):
                    connection.sendall(_answer_error(ControlError("too many console sessions")))
                connection.close()
                return
            session = Session(self, connection)
            thread = threading.Thread(target=session.serve, name="control-session", daemon=True)
            self._sessions.add(thread)
        thread.start()


def _answer_error(exc: HesError) -> bytes:
    return _line({"ok": False, "error": str(exc), "denied": isinstance(exc, AccessDenied)})


def _line(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), default=str).encode() + b"\n"


def peer_user(connection: socket.socket) -> str:
    """The OS user on the other end of a Unix socket (the kernel's word, not the client's)."""
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", credentials)
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise AccessDenied(f"uid {uid} has no user name") from None


class Session:
    """One connection: signs in, then asks; every request after the sign-in is audited."""

    def __init__(self, server: ControlServer, connection: socket.socket) -> None:
        self.server = server
        self.config = server.config
        self.connection = connection
        self.account: Account | None = None
        self.failed_logins = 0
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        """This session's own connection to the store (opened when first needed)."""
        if self._store is None:
            self._store = self.server.open_store()
        return self._store

    def serve(self) -> None:
        """Answer requests until the client goes, idles too long, or sends garbage."""
        # The console logs out at idle_timeout_s itself; this only ends sessions a client abandoned.
        self.connection.settimeout(self.config.console.idle_timeout_s + 60)
        reader = self.connection.makefile("rb")
        try:
            while not self.server.stop.is_set():
                raw = reader.readline(MAX_LINE + 1)
                if not raw:
                    break
                if len(raw) > MAX_LINE:
                    log.warning("control socket: a request over %d bytes, connection closed", MAX_LINE)
                    self.connection.sendall(_answer_error(ControlError("request too long")))
                    break
                self.connection.sendall(self.answer(raw))
                if self.failed_logins >= MAX_FAILED_LOGINS:
                    break
        except (TimeoutError, OSError) as exc:
            log.info("control session ended: %s", exc)
        finally:
            reader.close()
            self.connection.close()
            if self._store is not None:
                self._store.close()

    def answer(self, raw: bytes) -> bytes:
        """The answer line to one request line; a bad request gets an error answer, never a crash."""
        try:
            request = json.loads(raw)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise ControlError('a request is a JSON object with an "op"')
            return _line({"ok": True, "result": self.dispatch(request)})
        except ValueError:
            log.warning("control socket: a request that is not JSON")
            return _answer_error(ControlError("a request is one line of JSON"))
        except HesError as exc:
            return _answer_error(exc)

    def dispatch(self, request: dict[str, Any]) -> Any:
        """Check the role, do the request, and audit it."""
        op = request["op"]
        if op not in OPS:
            raise ControlError(f"unknown request {op[:40]!r}")
        if op == "login":
            return self._login(request)
        line = _text(request, "line", default=op)
        try:
            require_role(self.account, op, line)
        except AccessDenied:
            self._audit(line, "denied")  # a signed-in session's; "sign in first" has nobody to audit
            raise
        try:
            result = getattr(self, f"_op_{op}")(request)
        except HesError as exc:
            self._audit(line, f"failed: {exc}")
            raise
        self._audit(line, "ok")
        return result

    def _audit(self, line: str, outcome: str) -> None:
        if self.account is not None:
            accounts.audit(self.store, self._now(), self.account, line, outcome)

    def _now(self) -> int:
        return epoch(self.server.clock.now())

    def _login(self, request: dict[str, Any]) -> dict[str, str]:
        console = self.config.console
        if console.auth == "os":
            name, password = peer_user(self.connection), None
        else:
            name, password = _text(request, "user"), _text(request, "password")
        # A console that ran without the daemon may have spooled wrong passwords: they count first.
        import_spool(self.store, self.config)
        try:
            account = accounts.login(
                self.store, name, password, self._now(), console.lockout_attempts, console.lockout_s
            )
        except AccessDenied as exc:
            self.failed_logins += 1
            accounts.audit(self.store, self._now(), None, f"login {name[:40]}", f"refused: {exc}")
            log.warning("console: sign-in as %r refused: %s", name[:40], exc)
            raise
        self.account = account
        self._audit("login", "ok")
        log.info("console: %s signed in as %s", account.name, account.role.label)
        return {"user": account.name, "role": account.role.label}

    def _op_status(self, _request: dict[str, Any]) -> dict[str, Any]:
        """What the main loop wrote last (status.json), with the backlog read now."""
        return read_status(self.config, self.store, self.server.clock)

    def _op_show(self, _request: dict[str, Any]) -> dict[str, Any]:
        return {}

    _op_export = _op_show

    def _op_config_show(self, _request: dict[str, Any]) -> list[dict[str, Any]]:
        return settings.describe(self.config)

    def _op_config_set(self, request: dict[str, Any]) -> dict[str, Any]:
        return settings.change(self.config, _text(request, "key"), _text(request, "value"))

    def _op_read_now(self, request: dict[str, Any]) -> list[dict[str, str]]:
        readings = self.server.handlers.read_now(_meter(request))
        return [
            {
                "time": format_time(r.timestamp),
                "reading_type": r.reading_type.code,
                "value": str(r.value),
                "unit": unit_symbol(r.reading_type),
            }
            for r in readings
        ]

    def _op_relay(self, request: dict[str, Any]) -> dict[str, str]:
        """The MDM's relay job, under the same per-meter rate limit as the MDM's requests."""
        action = _text(request, "action")
        if action not in ("connect", "disconnect"):
            raise ControlError("the relay action is connect or disconnect")
        meter, now = _meter(request), self._now()
        source = f"console {self.account.name if self.account else ''}"
        check_relay_rate(self.config, self.store, meter, now)
        sent = True
        try:
            return {"state": self.server.handlers.relay(meter, action)}
        except UnknownMeter:
            sent = False  # nothing reached a bus
            raise
        finally:
            if sent:
                record_relay_operation(self.store, meter, now, source)

    def _op_discover(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        bus = _text(request, "bus")
        if bus not in self.config.buses:
            raise ControlError(f"no bus {bus[:20]!r}; the buses are {', '.join(sorted(self.config.buses))}")
        return self.server.handlers.discover(bus)

    def _op_test_leds(self, _request: dict[str, Any]) -> dict[str, str]:
        return {"result": self.server.handlers.test_leds()}

    def _op_restart(self, _request: dict[str, Any]) -> dict[str, Any]:
        log.warning("console: %s asked for a restart", self.account.name if self.account else "?")
        self.server.handlers.restart()
        return {}

    def _op_audit(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        limit = request.get("limit", 20)
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ControlError("limit is 1-1000")
        return accounts.audit_tail(self.store, limit)


def _text(request: dict[str, Any], key: str, default: str | None = None) -> str:
    value = request.get(key, default)
    if not isinstance(value, str) or len(value) > 1000:
        raise ControlError(f"{key!r} must be a string of at most 1000 characters")
    return value


def _meter(request: dict[str, Any]) -> str:
    meter = _text(request, "meter")
    if not _METER_ID.match(meter):
        raise ControlError(f"not a meter id: {meter[:70]!r}")
    return meter


class ControlClient:
    """A connection to the daemon's control socket (the console's session, or `hes status`)."""

    def __init__(self, path: Path, timeout_s: float = 15.0) -> None:
        self.timeout_s = timeout_s
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        try:
            self.sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self.sock.close()
            raise DaemonUnavailable(f"the daemon is not running ({path}: {exc.strerror})") from None
        except OSError as exc:
            self.sock.close()
            raise ControlError(f"cannot reach the daemon at {path}: {exc.strerror}") from None
        self.reader = self.sock.makefile("rb")

    def request(self, op: str, timeout_s: float | None = 0.0, **arguments: Any) -> Any:
        """Ask the daemon; returns the result or raises its error. `timeout_s` None waits as long as
        it takes (discovery); 0 means the client's default."""
        self.sock.settimeout(self.timeout_s if timeout_s == 0.0 else timeout_s)
        try:
            self.sock.sendall(_line({"op": op, **arguments}))
            raw = self.reader.readline(MAX_LINE * 16)
        except TimeoutError:
            raise ControlError(f"the daemon did not answer {op} in time") from None
        except OSError as exc:
            raise DaemonUnavailable(f"the daemon went away ({exc.strerror})") from None
        if not raw:
            raise DaemonUnavailable("the daemon closed the connection")
        try:
            answer = json.loads(raw)
        except ValueError:
            raise ControlError("the daemon's answer is not JSON") from None
        if not answer.get("ok"):
            error = str(answer.get("error", "refused"))
            raise AccessDenied(error) if answer.get("denied") else ControlError(error)
        return answer.get("result")

    def close(self) -> None:
        """End the session."""
        self.reader.close()
        self.sock.close()
