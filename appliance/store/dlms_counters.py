"""DLMS invocation counters in the store: ours never reused, the meter's never accepted twice.

AES-GCM with a repeated IV (our system title || counter) under one key gives away the authentication
subkey and the XOR of both plaintexts, and a meter refuses a counter it has seen: so the outgoing
counter must survive restarts and power cuts. Writing it before every APDU would cost an fsync each;
instead a block of counters is reserved ("reserved up to N", committed with synchronous=FULL) before
any counter <= N is used, and after a crash counting goes on above N. Counters lost that way are
harmless: there are 2**32 of them and a meter only asks that they grow.

The reservation is made over every meter that shares the key id, so two meters provisioned with
the same keys (test keys, a careless batch) never see the same counter from us either.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time

from appliance.collect.dlms.security import MAX_INVOCATION_COUNTER, SecurityError, SecurityKeys
from appliance.errors import StoreError
from appliance.store.db import Store

DEFAULT_BLOCK = 100  # counters per reservation: one fsync per 100 ciphered APDUs
_FINGERPRINT_LABEL = b"hes dlms invocation counter key id v1"


def key_id(keys: SecurityKeys, system_title: bytes) -> str:
    """A stable name for (keys, our system title) that reveals nothing about the keys.

    A new key gets a new id and so a fresh counter, as the meter expects after a key change.
    """
    digest = hashlib.sha256(
        _FINGERPRINT_LABEL + keys.encryption_key + keys.authentication_key + bytes(system_title)
    )
    return digest.hexdigest()[:32]


class DlmsCounters:
    """The invocation counters of one meter under one key id (the session's narrow interface)."""

    def __init__(self, store: Store, meter: str, key: str, block: int = DEFAULT_BLOCK) -> None:
        if block < 1:
            raise ValueError("a counter reservation block holds at least one counter")
        self.store, self.meter, self.key = store, meter, key
        self.block = block
        self._next: int | None = None  # next outgoing counter; None until the first reservation
        self._reserved = -1  # counters up to this one are reserved for this object

    def next_outgoing(self) -> int:
        """A counter never handed out before under this key id, here or before any restart."""
        if self._next is None or self._next > self._reserved:
            self._reserve()
        assert self._next is not None
        counter = self._next
        self._next += 1
        return counter

    def _reserve(self) -> None:
        """Commit "reserved up to N" (synchronous=FULL: on disk) before handing out any counter <= N."""
        with self.store.transaction() as conn:
            highest = conn.execute(
                "SELECT MAX(reserved_up_to) FROM dlms_counters WHERE key_id = ?", (self.key,)
            ).fetchone()[0]
            first = 0 if highest is None else highest + 1
            if first > MAX_INVOCATION_COUNTER:
                raise SecurityError(
                    f"meter {self.meter}: the invocation counters of this key are used up: new keys needed"
                )
            reserved = min(first + self.block - 1, MAX_INVOCATION_COUNTER)
            conn.execute(
                """INSERT INTO dlms_counters (meter, key_id, reserved_up_to, updated_at)
                   VALUES (?, ?, ?, ?)
                   ON CONFLICT (meter, key_id) DO UPDATE
                   SET reserved_up_to = excluded.reserved_up_to, updated_at = excluded.updated_at""",
                (self.meter, self.key, reserved, int(time.time())),
            )
        self._next, self._reserved = first, reserved

    def skip_outgoing_to(self, counter: int) -> None:
        """Go on at `counter` or above: the meter said it expects at least that (a lost store)."""
        if not 0 <= counter <= MAX_INVOCATION_COUNTER + 1:
            raise ValueError(f"invocation counter {counter} out of range")
        if self._next is not None and counter <= self._next:
            return
        with self.store.transaction() as conn:
            conn.execute(
                """INSERT INTO dlms_counters (meter, key_id, reserved_up_to, updated_at)
                   VALUES (?, ?, ?, ?)
                   ON CONFLICT (meter, key_id) DO UPDATE
                   SET reserved_up_to = MAX(reserved_up_to, excluded.reserved_up_to),
                       updated_at = excluded.updated_at""",
                (self.meter, self.key, counter - 1, int(time.time())),
            )
        self._next = None  # the next counter comes from a new reservation above `counter - 1`

    def last_incoming(self) -> int | None:
        """The highest counter accepted from the meter under this key id (None: never one).

        Read from the store each time: another session (the probe, a second bus) may have moved it.
        """
        try:
            row = self.store.conn.execute(
                "SELECT meter_last FROM dlms_counters WHERE meter = ? AND key_id = ?", (self.meter, self.key)
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.store.path}: cannot read DLMS invocation counters: {exc}") from exc
        return None if row is None else row[0]

    def accept_incoming(self, counter: int) -> None:
        """Remember the meter's counter of an APDU that passed the replay check (committed at once)."""
        if not 0 <= counter <= MAX_INVOCATION_COUNTER:
            raise ValueError(f"invocation counter {counter} out of range")
        with self.store.transaction() as conn:
            conn.execute(
                """INSERT INTO dlms_counters (meter, key_id, meter_last, updated_at) VALUES (?, ?, ?, ?)
                   ON CONFLICT (meter, key_id) DO UPDATE
                   SET meter_last = MAX(COALESCE(meter_last, -1), excluded.meter_last),
                       updated_at = excluded.updated_at""",
                (self.meter, self.key, counter, int(time.time())),
            )

    def __repr__(self) -> str:
        return f"DlmsCounters(meter={self.meter!r}, key_id={self.key!r})"


def open_counters(store: Store, meter: str, keys: SecurityKeys, system_title: bytes) -> DlmsCounters:
    """The counters of `meter` for these keys and our system title."""
    return DlmsCounters(store, meter, key_id(keys, system_title))
