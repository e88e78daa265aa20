"""Opening the store: pragmas for durability, migrations, transactions, and small key caches.

One `Store` per thread (sqlite3 connections are not shared between threads).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from appliance.errors import StoreError, StoreFull
from appliance.store.schema import MIGRATIONS


class Store:
    """A connection to the appliance's SQLite database."""

    def __init__(
        self,
        path: Path,
        busy_timeout_ms: int = 5000,
        readonly: bool = False,
        max_size_mb: int | None = None,
        immutable: bool = False,
    ) -> None:
        """`immutable` (read-only only): for a reader without write access to the directory while no
        daemon runs; SQLite cannot open a WAL database read-only once the daemon removed its -shm."""
        self.path = path
        try:
            if readonly:
                flags = "mode=ro&immutable=1" if immutable else "mode=ro"
                conn = sqlite3.connect(f"file:{path}?{flags}", uri=True, isolation_level=None)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(path, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if not readonly:
                _use_wal(conn, busy_timeout_ms / 1000)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            if max_size_mb is not None:
                # A hard cap: past it SQLite answers SQLITE_FULL instead of growing the file.
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count = {max_size_mb * 1024 * 1024 // page_size}")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the store {path}: {exc}") from exc
        self.conn = conn
        self._meter_keys: dict[str, int] = {}
        self._rtype_keys: dict[str, int] = {}
        if not readonly:
            self.migrate()

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        """Rows as dicts, for reports and lookups (hot paths use `conn` and tuples)."""
        cursor = self.conn.execute(sql, parameters)
        names = [column[0] for column in cursor.description]
        for row in cursor:
            yield dict(zip(names, row, strict=True))

    def close(self) -> None:
        """Close the connection (a checkpoint happens when the last one closes)."""
        self.conn.close()

    @property
    def schema_version(self) -> int:
        """The number of migrations applied."""
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        """Apply the migrations this database has not seen, each in its own transaction."""
        version = self.schema_version
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this software knows "
                f"({len(MIGRATIONS)}): refusing to touch it"
            )
        for number in range(version, len(MIGRATIONS)):
            with self.transaction():
                if self.schema_version != number:  # another process migrated meanwhile
                    continue
                for statement in MIGRATIONS[number]:
                    self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version = {number + 1}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: take the write lock up front, so no upgrade deadlock."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot start a transaction on {self.path}: {exc}") from exc
        # Commit inside the try: a COMMIT that fails (disk full) must roll back like any other error.
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException as exc:
            if self.conn.in_transaction:  # SQLite may have rolled back already (disk full)
                self.conn.execute("ROLLBACK")
            self._meter_keys.clear()  # keys cached inside the rolled-back work may not exist
            self._rtype_keys.clear()
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise StoreFull(f"{self.path}: {exc}") from exc
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{self.path}: {exc}") from exc
            raise

    def meter_key(self, mrid: str) -> int:
        """The compact key of a registered meter."""
        key = self._meter_keys.get(mrid)
        if key is None:
            row = self.conn.execute("SELECT id FROM meters WHERE mrid = ?", (mrid,)).fetchone()
            if row is None:
                raise StoreError(f"meter {mrid!r} is not registered")
            key = self._meter_keys[mrid] = row[0]
        return key

    def reading_type_key(self, code: str) -> int:
        """The compact key of a ReadingType code, created on first use."""
        key = self._rtype_keys.get(code)
        if key is None:
            self.conn.execute("INSERT OR IGNORE INTO reading_types (code) VALUES (?)", (code,))
            row = self.conn.execute("SELECT id FROM reading_types WHERE code = ?", (code,)).fetchone()
            key = self._rtype_keys[code] = row[0]
        return key


def _use_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """Switch a new database to WAL (it stays set in the file). The switch takes a lock that SQLite's
    busy handler does not wait for, so two threads opening a new store at once retry here."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
