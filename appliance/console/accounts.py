"""Console accounts: roles, scrypt password hashes, lockout after wrong passwords, the audit trail.

The daemon is the only writer of the store (it checks every sign-in and records every command);
`hes console user ...` writes accounts as an administrator on the box. The console itself only reads
them, when the daemon is down, and spools what it would have written (console/spool.py).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import os
import sqlite3
from dataclasses import dataclass, replace
from enum import IntEnum
from pathlib import Path

from appliance.config import Config
from appliance.errors import AccessDenied, HesError
from appliance.store.db import Store

log = logging.getLogger(__name__)

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1  # 16 MiB and ~0.1 s on a Pi 4: slow for guessing
MIN_PASSWORD = 8
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")


class Role(IntEnum):
    """What an account may do; a higher role may do everything a lower one may."""

    VIEWER = 1  # show, read a meter now
    TECHNICIAN = 2  # relays, config changes, discovery, LED test, export, restart
    ADMIN = 3  # also the audit trail

    @classmethod
    def named(cls, name: str) -> Role:
        """The role called `name` (viewer, technician, admin)."""
        try:
            return cls[name.upper()]
        except KeyError:
            raise HesError(f"no role {name!r}; one of {', '.join(r.name.lower() for r in cls)}") from None

    @property
    def label(self) -> str:
        """The role's name as users type it."""
        return self.name.lower()


@dataclass(frozen=True)
class Account:
    """A signed-in console user."""

    name: str
    role: Role


def hash_password(password: str) -> str:
    """A self-describing scrypt hash: scrypt$n$r$p$salt$key (base64)."""
    salt = os.urandom(16)
    key = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    encoded = [base64.b64encode(part).decode() for part in (salt, key)]
    return "$".join(["scrypt", str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P), *encoded])


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 2**20, dklen=32)


@functools.cache
def _dummy_hash() -> str:
    """Checked when the name is unknown, so that a wrong name costs the same time as a wrong password.
    Made on first use, not at import: scrypt touches 16 MiB, and the daemon's peak RSS counts."""
    return hash_password(os.urandom(8).hex())


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches the stored hash (False for a malformed or empty hash)."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(key)
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(actual, expected)


def check_hash(stored: str) -> str:
    """A hash line as `hes console user hash` prints it, with parameters this box can compute."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        n_, r_, p_ = int(n), int(r), int(p)
        salt_bytes = base64.b64decode(salt, validate=True)
        key_bytes = base64.b64decode(key, validate=True)
    except ValueError:
        raise HesError("not a hash of `hes console user hash` (scrypt$n$r$p$salt$key)") from None
    sane = n_ > 1 and n_ & (n_ - 1) == 0 and r_ >= 1 and p_ >= 1 and 128 * n_ * r_ <= 64 * 2**20
    if scheme != "scrypt" or not sane or len(salt_bytes) < 8 or len(key_bytes) != 32:
        raise HesError("not a hash of `hes console user hash` (scrypt, n a power of 2, 32-byte key)")
    return stored


def check_name(name: str) -> str:
    """A console account name: lower-case letters, digits, '.', '_' and '-', at most 32."""
    if not name or len(name) > 32 or not set(name) <= NAME_CHARS:
        raise HesError(f"bad account name {name[:40]!r}: use a-z, 0-9, '.', '_' or '-', at most 32")
    return name


def check_new_password(password: str) -> str:
    """A password good enough to set."""
    if len(password) < MIN_PASSWORD:
        raise HesError(f"the password needs at least {MIN_PASSWORD} characters")
    return password


def add_user(store: Store, name: str, role: Role, password: str | None, now: int) -> None:
    """Create an account; `password` None makes one that signs in with the OS login of that name."""
    password_hash = hash_password(check_new_password(password)) if password is not None else ""
    with store.transaction() as conn:
        if conn.execute("SELECT 1 FROM console_users WHERE name = ?", (check_name(name),)).fetchone():
            raise HesError(f"account {name!r} exists already")
        conn.execute(
            "INSERT INTO console_users (name, role, password_hash, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (name, role.label, password_hash, now, now),
        )


def provisioned_file(config: Config) -> Path | None:
    """Where hes-firstboot puts the card's hes/console-users: beside the box's config (/etc/hes)."""
    return config.sources[0].parent / "console-users" if config.sources else None


def import_accounts(store: Store, path: Path | None, now: int) -> list[str]:
    """Create the accounts of a `NAME ROLE HASH` file that do not exist yet; returns their names.

    The first console accounts of a fresh box come this way (nobody can sign in to add them). Existing
    accounts are never changed, so importing the same file at every start is harmless. A bad line is
    refused with one error naming it, never its hash; the good lines still count.
    """
    if path is None or not path.exists():
        return []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        log.error("console accounts file %s cannot be read: %s", path, exc)
        return []
    created = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            name, role, password_hash = _account_line(line)
        except HesError as exc:
            log.error("%s:%d refused: %s", path, number, exc)
            continue
        with store.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO console_users (name, role, password_hash, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (name, role.label, password_hash, now, now),
            )
        if cursor.rowcount:
            log.info("console account %s (%s) created from %s", name, role.label, path)
            created.append(name)
    return created


def _account_line(line: str) -> tuple[str, Role, str]:
    """NAME ROLE HASH; the errors never echo a field, which may be a hash in the wrong place."""
    fields = line.split()
    if len(fields) != 3:
        raise HesError(f"expected NAME ROLE HASH, found {len(fields)} fields")
    name, role, password_hash = fields
    try:
        check_name(name)
    except HesError:
        raise HesError("the name may use a-z, 0-9, '.', '_' or '-', at most 32 characters") from None
    if role.upper() not in Role.__members__:
        raise HesError(f"the role is one of {', '.join(r.label for r in Role)}")
    return name, Role[role.upper()], check_hash(password_hash)


def set_password(store: Store, name: str, password: str, now: int) -> None:
    """Give an account a new password; this also lifts a lockout."""
    password_hash = hash_password(check_new_password(password))
    with store.transaction() as conn:
        cursor = conn.execute(
            "UPDATE console_users SET password_hash = ?, failed_attempts = 0, locked_until = 0,"
            " updated_at = ? WHERE name = ?",
            (password_hash, now, name),
        )
    if cursor.rowcount == 0:
        raise HesError(f"no account {name!r}")


def delete_user(store: Store, name: str) -> None:
    """Remove an account (its audit entries stay)."""
    with store.transaction() as conn:
        cursor = conn.execute("DELETE FROM console_users WHERE name = ?", (name,))
    if cursor.rowcount == 0:
        raise HesError(f"no account {name!r}")


def list_users(store: Store) -> list[dict]:
    """Every account with its role and lockout state (never the hash)."""
    return list(
        store.query(
            "SELECT name, role, password_hash != '' AS has_password, failed_attempts, locked_until"
            " FROM console_users ORDER BY name"
        )
    )


def _row(store: Store, name: str) -> tuple[str, str, int, int] | None:
    return store.conn.execute(
        "SELECT role, password_hash, failed_attempts, locked_until FROM console_users WHERE name = ?", (name,)
    ).fetchone()


def check_login(store: Store, name: str, password: str | None) -> Account:
    """Who signs in, without writing anything and without the lockout.

    `password` None means the OS login already authenticated `name`.
    """
    row = _row(store, name)
    if password is None:
        if row is None:
            raise AccessDenied(f"the OS user {name!r} has no console account")
        return Account(name, Role.named(row[0]))
    if not verify_password(password, row[1] if row else _dummy_hash()) or row is None:
        raise AccessDenied("login incorrect")
    return Account(name, Role.named(row[0]))


@dataclass(frozen=True)
class Lockout:
    """An account's wrong passwords in a row and until when it is locked (its console_users columns)."""

    failed: int = 0
    locked_until: int = 0

    def after(self, signed_in: bool, now: int, attempts: int, lockout_s: int) -> Lockout:
        """The state after a sign-in (True) or a wrong password (False): `attempts` wrong in a row
        lock the account for `lockout_s`."""
        if signed_in:
            return replace(self, failed=0)
        failed = self.failed + 1
        return Lockout(0, now + lockout_s) if failed >= attempts else Lockout(failed, 0)


@dataclass(frozen=True)
class SignIn:
    """One sign-in attempt decided: the account or the refusal, and the lockout state after it."""

    account: Account | None
    refusal: AccessDenied | None
    lockout: Lockout | None  # None: no account of that name
    counted: bool  # the lockout counts it (a wrong password or a sign-in of an existing account)

    def signed_in(self) -> Account:
        """The account, or the refusal raised."""
        if self.account is None:
            raise self.refusal or AccessDenied("login incorrect")
        return self.account


def lockout_of(store: Store, name: str) -> Lockout | None:
    """The account's lockout state as the store holds it; None if there is no such account."""
    row = _row(store, name)
    return None if row is None else Lockout(row[2], row[3])


def set_lockout(conn: sqlite3.Connection, name: str, lockout: Lockout) -> None:
    """Write an account's lockout state (inside the caller's transaction)."""
    conn.execute(
        "UPDATE console_users SET failed_attempts = ?, locked_until = ? WHERE name = ?",
        (lockout.failed, lockout.locked_until, name),
    )


def attempt(
    store: Store,
    name: str,
    password: str | None,
    before: Lockout | None,
    now: int,
    attempts: int,
    lockout_s: int,
) -> SignIn:
    """The lockout rule, deciding without writing: the daemon's login() stores its outcome, the console
    without the daemon spools it. A locked account is refused even with the right password, so
    guessing gains nothing."""
    if before is not None and before.locked_until > now:
        wait = before.locked_until - now
        return SignIn(
            None,
            AccessDenied(f"account locked for another {wait} s after too many wrong passwords"),
            before,
            False,
        )
    try:
        account = check_login(store, name, password)
    except AccessDenied as exc:
        if before is None or password is None:
            return SignIn(None, exc, before, False)
        after = before.after(False, now, attempts, lockout_s)
        locked = AccessDenied(f"login incorrect; the account is locked for {lockout_s} s")
        return SignIn(None, locked if after.locked_until else exc, after, True)
    if before is None:
        return SignIn(account, None, None, False)
    return SignIn(account, None, before.after(True, now, attempts, lockout_s), True)


def login(store: Store, name: str, password: str | None, now: int, attempts: int, lockout_s: int) -> Account:
    """Sign in with the lockout (attempt()), and store the account's lockout state it leaves."""
    before = lockout_of(store, name)
    result = attempt(store, name, password, before, now, attempts, lockout_s)
    if result.lockout is not None and result.lockout != before:
        with store.transaction() as conn:
            set_lockout(conn, name, result.lockout)
    return result.signed_in()


def audit(store: Store, now: int, account: Account | None, command: str, outcome: str) -> None:
    """Record one console command (or sign-in) and how it ended."""
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO console_audit (ts, user, role, command, outcome) VALUES (?, ?, ?, ?, ?)",
            (
                now,
                account.name if account else "-",
                account.role.label if account else "-",
                command[:200],
                outcome[:200],
            ),
        )


def audit_tail(store: Store, limit: int) -> list[dict]:
    """The newest `limit` audit entries, oldest first."""
    rows = store.query(
        "SELECT ts, user, role, command, outcome FROM console_audit ORDER BY id DESC LIMIT ?", [limit]
    )
    return list(reversed(list(rows)))
