"""The console's audit trail while the daemon is down: a spool file that the daemon imports.

The store is read-only to the console (the daemon is its only writer), yet every sign-in and command
must be audited. So without the daemon the console appends each entry the daemon would have written
to `console-audit.spool` beside the store: one JSON object per line, O_APPEND, fsync'd, at most
MAX_SPOOL_BYTES. The console (user tech, group hes) may not create files in /data/hes, so the spool
is made group-writable for it: hes:hes 0660 by tmpfiles.d at boot, and by the daemon again after
every import.

The daemon imports the spool when it starts and whenever a console session signs in over the control
socket, without losing or doubling an entry if it is killed on the way:

1. a leftover `.importing` file (a daemon killed mid-import) is imported first;
2. under the spool's lock the spool is renamed to `.importing` and an empty spool takes its place;
3. the entries go into console_audit in one transaction, each under its own id (a unique column,
   INSERT OR IGNORE), so a file imported twice adds nothing; then the file is unlinked.

The console appends under the same lock (flock) and only to the file that is the spool once it holds
the lock, so no entry lands in a file the daemon has already read.

Wrong passwords typed without the daemon count towards the account's lockout: a sign-in's entry says
whose lockout counts it, and accounts.Lockout replays those over the store's state (in the console,
to refuse a locked account; in the import, to carry the state over into console_users). The console
replays only the spool, not a leftover `.importing` file, which the daemon's next start imports.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from appliance.config import Config
from appliance.console import accounts
from appliance.console.accounts import Account, Lockout
from appliance.errors import AuditSpoolError
from appliance.store import Store

log = logging.getLogger(__name__)

SPOOL_NAME = "console-audit.spool"
MAX_SPOOL_BYTES = 1024 * 1024  # ~5000 entries of ~190 bytes: weeks of console work, no threat to /data
_READ_LIMIT = 4 * MAX_SPOOL_BYTES  # the group may write the file: the daemon never reads more than this
_TEXT_MAX = 200  # as accounts.audit() keeps them
_importing = threading.Lock()  # control sessions sign in on threads of their own


def spool_path(config: Config) -> Path:
    """The spool beside the store (tmpfiles.d makes /data/hes/console-audit.spool)."""
    return config.store_path.parent / SPOOL_NAME


@dataclass(frozen=True)
class Entry:
    """One console_audit row written down by the console, with what the lockout needs of a sign-in."""

    id: str
    ts: int
    user: str
    role: str
    command: str
    outcome: str
    counts_for: str = ""  # the account whose lockout counts this sign-in ("" for anything else)
    signed_in: bool = False  # for such a sign-in: the password was right (False: wrong)

    @classmethod
    def new(cls, now: int, account: Account | None, command: str, outcome: str) -> Entry:
        """An entry as Session._audit in control.py writes it, under a new id."""
        return cls(
            uuid.uuid4().hex,
            now,
            account.name if account else "-",
            account.role.label if account else "-",
            command[:_TEXT_MAX],
            outcome[:_TEXT_MAX],
        )

    @classmethod
    def sign_in(cls, now: int, name: str, result: accounts.SignIn) -> Entry:
        """A sign-in's entry as Session._login writes it, marked for the lockout if it counts."""
        if result.account is None:
            entry = cls.new(now, None, f"login {name[:40]}", f"refused: {result.refusal}")
        else:
            entry = cls.new(now, result.account, "login", "ok")
        if not result.counted:
            return entry
        return replace(entry, counts_for=name, signed_in=result.account is not None)

    @classmethod
    def parse(cls, line: bytes) -> Entry:
        """One spool line; ValueError if it is not an entry of this module."""
        data = json.loads(line)
        if not isinstance(data, dict) or set(data) != {f.name for f in fields(cls)}:
            raise ValueError("not an audit entry")
        types = {"ts": int, "signed_in": bool}
        for name, value in data.items():
            if type(value) is not types.get(name, str):
                raise ValueError(f"{name} has the wrong type")
        if not 0 < len(data["id"]) <= 64:
            raise ValueError("bad id")
        texts = ("user", "role", "command", "outcome", "counts_for")
        return cls(**(data | {name: data[name][:_TEXT_MAX] for name in texts}))

    def line(self) -> bytes:
        """The entry as one spool line."""
        return json.dumps(asdict(self), separators=(",", ":")).encode() + b"\n"


def append(path: Path, entry: Entry) -> None:
    """Add an entry to the spool, durably; AuditSpoolError if it cannot be written."""
    line = entry.line()
    for _ in range(3):  # the daemon may swap the spool between our open and our lock: once is plenty
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o660)
        except OSError as exc:
            raise AuditSpoolError(f"the audit spool {path} cannot be written ({exc.strerror})") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            if not _is_file_at(descriptor, path):
                continue
            size = os.fstat(descriptor).st_size
            if size + len(line) > MAX_SPOOL_BYTES:
                raise AuditSpoolError(f"the audit spool {path} is full ({size} bytes)")
            if os.write(descriptor, line) != len(line):
                os.ftruncate(descriptor, size)  # no half line for the next entry to run into
                raise AuditSpoolError(f"the audit spool {path} cannot be written (disk full)")
            os.fsync(descriptor)
            return
        except OSError as exc:
            raise AuditSpoolError(f"the audit spool {path} cannot be written ({exc.strerror})") from None
        finally:
            os.close(descriptor)  # and with it the lock
    raise AuditSpoolError(f"the audit spool {path} keeps being replaced")


def _is_file_at(descriptor: int, path: Path) -> bool:
    """Whether the open file is still the one at `path` (not renamed away meanwhile)."""
    try:
        at_path = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (opened.st_dev, opened.st_ino) == (at_path.st_dev, at_path.st_ino)


def read_entries(path: Path) -> tuple[list[Entry], int]:
    """The entries of a spool file and how many lines were not entries; a file that cannot be read
    holds none."""
    try:
        with path.open("rb") as spool:
            data = spool.read(_READ_LIMIT)
    except OSError:
        return [], 0
    entries, bad = [], 0
    for line in data.splitlines():
        try:
            entries.append(Entry.parse(line))
        except (ValueError, RecursionError):  # a torn line after a power cut, or somebody's editing
            bad += bool(line.strip())
    return entries, bad


def replay(before: Lockout, entries: Iterable[Entry], name: str, attempts: int, lockout_s: int) -> Lockout:
    """`name`'s lockout state after the sign-ins of `entries`, by the rule the daemon applies."""
    state = before
    for entry in entries:
        if entry.counts_for == name:
            state = state.after(entry.signed_in, entry.ts, attempts, lockout_s)
    return state


def lockout(store: Store, path: Path, name: str, attempts: int, lockout_s: int) -> Lockout | None:
    """`name`'s lockout state: the store's, with the sign-ins spooled since the daemon's last import."""
    before = accounts.lockout_of(store, name)
    return None if before is None else replay(before, read_entries(path)[0], name, attempts, lockout_s)


def import_spool(store: Store, config: Config) -> int:
    """Move the spooled entries into console_audit (and their sign-ins into the lockout state);
    returns how many were new. Makes sure an empty spool exists for the console afterwards."""
    path = spool_path(config)
    leftover = path.with_name(path.name + ".importing")
    with _importing:
        imported = _import_file(store, config, leftover) if leftover.exists() else 0
        if _claim(path, leftover, config.console.group):
            imported += _import_file(store, config, leftover)
    if imported:
        log.info("console audit: %d entries spooled while the daemon was down imported", imported)
    return imported


def _claim(path: Path, leftover: Path, group: str) -> bool:
    """Rename a non-empty spool to `leftover` and put an empty one in its place, under the spool's
    lock; False when there is nothing to import."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        _create(path, group)
        return False
    except OSError as exc:
        log.error("console audit spool %s cannot be read: %s", path, exc.strerror)
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        if os.fstat(descriptor).st_size == 0:
            return False
        os.replace(path, leftover)
        _create(path, group)
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)  # the rename and the new spool survive a power cut
        finally:
            os.close(directory)
    except OSError as exc:
        log.error("console audit spool %s cannot be taken for import: %s", path, exc.strerror)
    finally:
        os.close(descriptor)
    return leftover.exists()


def _create(path: Path, group: str) -> None:
    """An empty spool the console's group may write."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o660)
    except FileExistsError:
        return
    except OSError as exc:
        log.error("console audit spool %s cannot be made: %s (the console cannot audit)", path, exc.strerror)
        return
    try:
        os.fchmod(descriptor, 0o660)  # the daemon's umask (0027) took the group's write away
        with contextlib.suppress(KeyError):
            gid = grp.getgrnam(group).gr_gid
            # On the box the daemon's own group is the console's: no chown (the unit's filter denies it).
            if os.fstat(descriptor).st_gid != gid:
                os.fchown(descriptor, -1, gid)
    except OSError as exc:
        log.error("console audit spool %s: cannot give it to group %s: %s", path, group, exc.strerror)
    finally:
        os.close(descriptor)


def _import_file(store: Store, config: Config, path: Path) -> int:
    """One transaction for the file's entries, then the file goes; returns how many were new."""
    entries, bad = read_entries(path)
    if bad:
        log.warning("console audit spool %s: %d lines are not audit entries, skipped", path, bad)
    console = config.console
    new: list[Entry] = []
    with store.transaction() as conn:
        for entry in entries:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO console_audit (ts, user, role, command, outcome, spool_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (entry.ts, entry.user, entry.role, entry.command, entry.outcome, entry.id),
            )
            if cursor.rowcount:
                new.append(entry)
        for name in {entry.counts_for for entry in new if entry.counts_for}:
            before = accounts.lockout_of(store, name)
            if before is not None:
                after = replay(before, new, name, console.lockout_attempts, console.lockout_s)
                accounts.set_lockout(conn, name, after)
    path.unlink()
    return len(new)
