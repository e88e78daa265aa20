"""`hes console`: the technician's shell on the serial console (the login shell of the console
account), network-gear style: `show ...`, abbreviations, tab completion, `?` for what fits next.

It signs in and works through the daemon's control socket, which checks the role and audits every
command; `show` and `export` read the store itself, read-only. It never opens a serial port. While
the daemon is down it still signs in (against the accounts in the store, read-only, with the lockout
the daemon would apply) and shows what the store holds; what needs the daemon says so. Its audit
entries then go to the spool the daemon imports when it is back (console/spool.py): every sign-in,
refused or not, and every command but help and exit, with its outcome, as the daemon writes them.

A spool that cannot be written (permissions, full disk, its size cap) must not let anybody work
unaudited, nor lock the technician out of the one look at the box left while the daemon is down: the
console says so on a `%` line, and until the session ends runs only what the group may read without
signing in (the daemon's `status` request: show status|gps|modem|wan|buffer|version), help and exit.
Wrong passwords that cannot be written down do not count towards the lockout, but the right one
opens no more than that either.
"""

from __future__ import annotations

import getpass
import os
import pwd
import readline
import shutil
import signal
import sys
import termios
import time
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.clock import Clock
from appliance.config import Config
from appliance.console import accounts, settings, spool, views
from appliance.console.accounts import Account, Role
from appliance.console.export import export_readings
from appliance.console.grammar import COMMANDS, Parsed, candidates, parse
from appliance.control import BUS_WAIT_S, MAX_FAILED_LOGINS, ControlClient, require_role
from appliance.errors import (
    AccessDenied,
    AuditSpoolError,
    ConsoleInputError,
    ControlError,
    DaemonUnavailable,
    HesError,
)
from appliance.model import epoch
from appliance.status import backlog_status, format_status, status_without_daemon
from appliance.store import Store, open_store
from appliance.store.registry import list_meters
from appliance.store.schema import MIGRATIONS

# The daemon gives a bus job BUS_WAIT_S and then answers; the console waits longer, so that the
# answer never arrives after it gave up (and then stood in the socket as the next request's answer).
BUS_TIMEOUT_S = BUS_WAIT_S + 30.0
NEVER_AUDITED = frozenset({"help", "exit"})  # the daemon never hears of them either
# What runs while the spool cannot be written: what needs no sign-in at the daemon (its `status`
# request), help and exit.
WITHOUT_AUDIT = NEVER_AUDITED | {
    "show status",
    "show gps",
    "show modem",
    "show wan",
    "show buffer",
    "show version",
}


class _Idle(Exception):  # control flow, not an error: the session ends quietly
    """Nobody typed anything for console.idle_timeout_s."""


class Console:
    """One technician session on a terminal."""

    def __init__(self, config: Config, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.client: ControlClient | None = None
        self.account: Account | None = None
        self._store: Store | None = None
        self._matches: list[str] = []
        self._spool = spool.spool_path(config)
        self._unaudited = False  # the spool could not be written: only WITHOUT_AUDIT runs

    # --- the session ---

    def run(self) -> int:
        """Sign in, then read commands until exit, end of input or the idle timeout."""
        print(f"HES {self.config.hes.id} console (hes {__version__}). Type ? or help for the commands.")
        try:
            self.client = ControlClient(self.config.console.socket)
        except DaemonUnavailable:
            print(
                "% The daemon is not running: showing what the store holds;"
                f" the audit trail waits in {self._spool} for it."
            )
        except ControlError as exc:
            print(f"% {exc}")
            return 1
        try:
            if not self._sign_in():
                return 1
            self._setup_readline()
            while True:
                try:
                    line = self._ask(self._prompt())
                except EOFError:
                    print()
                    break
                if not self._execute(line):
                    break
        except _Idle:
            print(f"\n% Idle for {self.config.console.idle_timeout_s} s: logged out.")
        except KeyboardInterrupt:
            print()
        finally:
            if self.client is not None:
                self.client.close()
            if self._store is not None:
                self._store.close()
        return 0

    def _prompt(self) -> str:
        marker = "#" if self.account and self.account.role >= Role.TECHNICIAN else ">"
        return f"{self.config.hes.id}{marker} "

    @contextmanager
    def _idle_limit(self) -> Iterator[None]:
        """Raise _Idle if the technician types nothing for idle_timeout_s (SIGALRM interrupts input)."""

        def expire(_signum: int, _frame: Any) -> None:
            raise _Idle

        previous = signal.signal(signal.SIGALRM, expire)
        signal.alarm(self.config.console.idle_timeout_s)
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)

    def _ask(self, prompt: str) -> str:
        with self._idle_limit():
            return input(prompt)

    def _sign_in(self) -> bool:
        for _ in range(MAX_FAILED_LOGINS):
            try:
                if self.config.console.auth == "os":
                    name, password = pwd.getpwuid(os.getuid()).pw_name, None
                else:
                    name = self._ask("login: ").strip()
                    with self._idle_limit():
                        password = getpass.getpass("password: ")
                if self.client is not None:
                    answer = self.client.request("login", user=name, password=password)
                    self.account = Account(answer["user"], Role.named(answer["role"]))
                else:
                    self.account = self._sign_in_offline(name, password)
            except HesError as exc:
                print(f"% {exc}")
                if self.config.console.auth == "os" or isinstance(exc, DaemonUnavailable):
                    return False
                time.sleep(1)  # like login(1): guessing costs time
                continue
            print(f"Signed in as {self.account.name} ({self.account.role.label}).")
            return True
        print("% Too many failed sign-ins.")
        return False

    def _sign_in_offline(self, name: str, password: str | None) -> Account:
        """The daemon's sign-in and lockout over the read-only store and the spool; spooled."""
        console, now = self.config.console, epoch(self.clock.now())
        store = self._read_store()
        before = spool.lockout(store, self._spool, name, console.lockout_attempts, console.lockout_s)
        result = accounts.attempt(
            store, name, password, before, now, console.lockout_attempts, console.lockout_s
        )
        self._spool_entry(spool.Entry.sign_in(now, name, result))
        return result.signed_in()

    def _spool_entry(self, entry: spool.Entry) -> None:
        """Append to the spool; if it cannot be written, say so once and run only WITHOUT_AUDIT."""
        if self._unaudited:
            return
        try:
            spool.append(self._spool, entry)
        except AuditSpoolError as exc:
            self._unaudited = True
            print(
                f"% {exc}: nothing can be audited, so until you log out only show"
                " status|gps|modem|wan|buffer|version, help and exit run."
            )

    def _setup_readline(self) -> None:
        readline.set_completer(self._complete)
        readline.set_completer_delims(" \t")
        readline.parse_and_bind("tab: complete")
        # Pasted text must not arrive wrapped in escape sequences on a serial line.
        readline.parse_and_bind("set enable-bracketed-paste off")

    def _complete(self, text: str, state: int) -> str | None:
        if state == 0:
            before = readline.get_line_buffer()[: readline.get_begidx()]
            self._matches = [
                f"{word} "
                for word, _help in candidates(before, self._values_of)
                if not word.startswith("<") and word.startswith(text)
            ]
        return self._matches[state] if state < len(self._matches) else None

    def _values_of(self, kind: str) -> list[str]:
        """Known values of a command's param, for completion and help."""
        try:
            if kind == "meter":
                return [row["mrid"] for row in list_meters(self._read_store())]
        except HesError:
            return []
        if kind == "bus":
            return sorted(self.config.buses)
        if kind == "setting":
            return settings.setting_names(self.config)
        return []

    def _read_store(self) -> Store:
        if self._store is None:
            if not self.config.store_path.exists():
                raise HesError(f"no store at {self.config.store_path} yet (the daemon has never run)")
            if self.client is not None:
                self._store = open_store(self.config, readonly=True)
            else:  # nobody writes while the daemon is down; and without its -shm only this opens
                self._store = Store(self.config.store_path, readonly=True, immutable=True)
        return self._store

    # --- commands ---

    def _execute(self, line: str) -> bool:
        """Run one line; False ends the session."""
        stripped = line.strip()
        if stripped.endswith("?"):
            self._help_for(stripped[:-1])
            return True
        try:
            parsed = parse(line)
            if parsed is None:
                return True
            if parsed.command.key == "exit":
                return False
            if self.client is None and parsed.command.key not in NEVER_AUDITED:
                return self._run_spooled(parsed, stripped)
            return self._run(parsed, stripped)
        except ConsoleInputError as exc:
            print(f"% {exc}")
        except DaemonUnavailable as exc:
            print(f"% {exc}")
            if self.client is not None:
                print("% The daemon went away: the session ends. Log in again when it is back.")
                return False
        except AccessDenied as exc:
            print(f"% Denied: {exc}")
        except HesError as exc:
            print(f"% {exc}")
        return True

    def _run_spooled(self, parsed: Parsed, line: str) -> bool:
        """Without the daemon: run a command and spool its audit entry as the daemon would write it."""
        if self._unaudited and parsed.command.key not in WITHOUT_AUDIT:
            raise AccessDenied(f"{parsed.command.key} cannot run: the audit spool cannot be written")
        outcome = "ok"
        try:
            return self._run(parsed, line)
        except AccessDenied:
            outcome = "denied"
            raise
        except HesError as exc:
            outcome = f"failed: {exc}"
            raise
        except BaseException:  # Ctrl-C or the idle timeout in the middle: it may have shown something
            outcome = "interrupted"
            raise
        finally:
            self._spool_entry(spool.Entry.new(epoch(self.clock.now()), self.account, line, outcome))

    def _help_for(self, before: str) -> None:
        """`?`: what may come next, with help; the typed words are offered again for editing."""
        if before and not before.endswith(" "):
            # "sh?" lists the words starting with "sh"; "show ?" what follows "show".
            head, _, partial = before.rpartition(" ")
            found = [(w, h) for w, h in candidates(head + " " if head else "", self._values_of)]
            found = [(w, h) for w, h in found if w.startswith(partial)]
        else:
            found = candidates(before, self._values_of)
        if not found:
            print("% Nothing fits here.")
        self._page([f"  {word:<20} {help_text}"[:79] for word, help_text in found])
        readline.set_startup_hook(lambda: (readline.insert_text(before), readline.set_startup_hook()))

    def _daemon(self) -> ControlClient:
        if self.client is None:
            raise HesError("this needs the daemon, which is not running")
        return self.client

    def _authorize(self, op: str, line: str) -> None:
        """Have the daemon check the role and audit a command the console does itself."""
        if self.client is not None:
            self.client.request(op, line=line)
            return
        require_role(self.account, op, line)

    def _status(self, line: str) -> dict[str, Any]:
        if self.client is not None:
            return self.client.request("status", line=line)
        store = self._read_store() if self.config.store_path.exists() else None
        return status_without_daemon(self.config, store, self.clock)

    def _run(self, parsed: Parsed, line: str) -> bool:
        """Run a parsed command; False ends the session (exit, restart)."""
        handler = getattr(self, "_do_" + parsed.command.key.replace(" ", "_"))
        return handler(parsed.values, line) is not False

    def _do_help(self, _values: dict[str, str], _line: str) -> None:
        self._page([f"  {c.usage():<44} {c.help}"[:79] for c in COMMANDS])

    def _do_show_status(self, _values: dict[str, str], line: str) -> None:
        self._page(format_status(self._status(line)).splitlines())

    def _do_show_gps(self, _values: dict[str, str], line: str) -> None:
        self._page(views.section(self._status(line), "clock"))

    def _do_show_modem(self, _values: dict[str, str], line: str) -> None:
        self._page(views.section(self._status(line), "modem"))

    def _do_show_wan(self, _values: dict[str, str], line: str) -> None:
        self._page(views.section(self._status(line), "wan"))

    def _do_show_buffer(self, _values: dict[str, str], line: str) -> None:
        if self.client is not None:  # with the daemon's drain rate
            self._page(views.buffer(self.client.request("status", line=line)["backlog"]))
        else:
            self._page(views.buffer(backlog_status(self._read_store(), self.clock)))

    def _do_show_audit(self, values: dict[str, str], line: str) -> None:
        count = values.get("count", "20")
        rows = self._daemon().request("audit", line=line, limit=int(count) if count.isdigit() else 0)
        self._page(
            [
                f"{views.short_time(r['ts'])} {r['user'][:10]:<10} {r['command'][:24]:<24} {r['outcome']}"[
                    :79
                ]
                for r in rows
            ]
        )

    def _do_show_meters(self, _values: dict[str, str], line: str) -> None:
        self._authorize("show", line)
        self._page(views.meters(self._read_store()))

    def _do_show_meter(self, values: dict[str, str], line: str) -> None:
        self._authorize("show", line)
        self._page(views.meter(self._read_store(), values["meter"], self.clock.now()))

    def _do_show_readings(self, values: dict[str, str], line: str) -> None:
        self._authorize("show", line)
        start, end = self._period(values)
        self._page(views.readings(self._read_store(), values["meter"], start, end))

    def _do_show_events(self, values: dict[str, str], line: str) -> None:
        self._authorize("show", line)
        self._page(views.events(self._read_store(), values.get("meter")))

    def _do_show_version(self, _values: dict[str, str], line: str) -> None:
        daemon = self._status(line).get("version", "?") if self.client is not None else None
        store = self._read_store()
        lines = [
            f"console  hes {__version__}",
            f"store    schema {store.schema_version} (this software knows {len(MIGRATIONS)})",
            f"config   {', '.join(str(s) for s in self.config.sources) or 'template only'}",
        ]
        if daemon is not None:
            lines.insert(1, f"daemon   hes {daemon}")
        self._page(lines)

    def _do_read(self, values: dict[str, str], line: str) -> None:
        meter = values["meter"]
        print(f"Reading {meter}...")
        rows = self._daemon().request("read_now", timeout_s=BUS_TIMEOUT_S, line=line, meter=meter)
        self._page(
            [f"{r['time']} {r['value']:>16} {r['unit']:<5} {r['reading_type']}"[:79] for r in rows]
            or ["the meter answered with no values"]
        )

    def _do_relay(self, values: dict[str, str], line: str) -> None:
        meter, action = values["meter"], values["choice"]
        verb = "Disconnect" if action == "disconnect" else "Reconnect"
        if self._confirm(f"{verb} the supply of meter {meter}?"):
            answer = self._daemon().request(
                "relay", timeout_s=BUS_TIMEOUT_S, line=line, meter=meter, action=action
            )
            print(f"Meter {meter}: relay {answer['state']}.")

    def _do_discover(self, values: dict[str, str], line: str) -> None:
        print(f"Looking for meters on bus {values['bus']}; this can take minutes...")
        found = self._daemon().request("discover", timeout_s=None, line=line, bus=values["bus"])
        self._page([" ".join(f"{k}={v}" for k, v in item.items())[:79] for item in found] or ["none found"])

    def _do_test_leds(self, _values: dict[str, str], line: str) -> None:
        print(self._daemon().request("test_leds", line=line)["result"])

    def _do_export_readings(self, values: dict[str, str], line: str) -> None:
        self._authorize("export", line)
        start, end = self._period(values)
        directory = Path(values.get("dir", str(self.config.console.export_dir)))
        store = self._read_store()
        files = export_readings(self.config, store, self.clock, start, end, directory, values.get("meter"))
        self._page([f"written to {directory}:", *(f"  {p.name} ({p.stat().st_size} bytes)" for p in files)])

    def _do_config_show(self, _values: dict[str, str], line: str) -> None:
        if self.client is not None:
            self._page(_settings_lines(self.client.request("config_show", line=line)))
        else:
            self._page(_settings_lines(settings.describe(self.config)))

    def _do_config_set(self, values: dict[str, str], line: str) -> None:
        done = self._daemon().request("config_set", line=line, key=values["setting"], value=values["value"])
        print(f"{done['key']} = {done['value']} written to {done['file']}; it applies at the next restart.")

    def _do_restart(self, _values: dict[str, str], line: str) -> bool:
        if not self._confirm("Restart the daemon? Polling stops for a few seconds."):
            return True
        self._daemon().request("restart", line=line)
        print("The daemon is restarting: this session ends. Log in again in a minute.")
        return False

    def _period(self, values: dict[str, str]) -> tuple[datetime, datetime]:
        """--from and --to (default: the last 24 h); --to includes its own second."""
        now = self.clock.now()
        start = views.parse_when(values.get("from", "-24h"), now)
        return start, views.parse_when(values.get("to", "now"), now) + timedelta(seconds=1)

    def _confirm(self, question: str) -> bool:
        answer = self._ask(f"{question} [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("Nothing done.")
            return False
        return True

    def _page(self, lines: list[str]) -> None:
        """Print, a screen at a time on a terminal: space for the next page, Enter a line, q stops."""
        rows = shutil.get_terminal_size((80, 24)).lines - 1
        if not sys.stdin.isatty() or len(lines) <= rows:
            print("\n".join(lines))
            return
        shown = 0
        step = rows
        while shown < len(lines):
            print("\n".join(lines[shown : shown + step]))
            shown += step
            if shown >= len(lines):
                break
            sys.stdout.write("--More--")
            sys.stdout.flush()
            key = self._key()
            sys.stdout.write("\r        \r")
            if key in ("q", "Q"):
                break
            step = 1 if key in ("\r", "\n") else rows

    def _key(self) -> str:
        """One key press, unbuffered."""
        descriptor = sys.stdin.fileno()
        saved = termios.tcgetattr(descriptor)
        try:
            tty.setcbreak(descriptor)
            with self._idle_limit():
                return os.read(descriptor, 1).decode(errors="replace")
        finally:
            termios.tcsetattr(descriptor, termios.TCSADRAIN, saved)


def _settings_lines(described: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'SETTING':<26} {'RUNNING':<24} PENDING (next start)"]
    for item in described:
        pending = "" if item["pending"] is None else str(item["pending"])
        lines.append(f"{item['key']:<26} {str(item['running'])[:24]:<24} {pending}"[:79])
    if described and not described[0]["applied_at_start"]:
        lines.append("% The settings file is not laid over the config at start: changes wait for that.")
    return lines


def run_console(config: Config) -> int:
    """The `hes console` entry point."""
    return Console(config, Clock()).run()
