"""The versioned schema: MIGRATIONS[n] takes a database from user_version n to n + 1.

Append, never edit: a box in the field may hold any earlier version.
"""

MIGRATIONS: list[list[str]] = [
    [
        # Meters from the config, the MDM or discovery; `id` is the compact key readings use.
        """CREATE TABLE meters (
            id INTEGER PRIMARY KEY,
            mrid TEXT NOT NULL UNIQUE,
            bus TEXT,
            protocol TEXT NOT NULL,
            address INTEGER,
            model TEXT NOT NULL,
            source TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        )""",
        "CREATE TABLE reading_types (id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE)",
        # Keyed in arrival order (time first) without a rowid: the fastest layout for appends, and
        # the key makes a second read of the same interval a no-op (INSERT OR IGNORE).
        """CREATE TABLE readings (
            ts INTEGER NOT NULL,
            meter INTEGER NOT NULL REFERENCES meters(id),
            rtype INTEGER NOT NULL REFERENCES reading_types(id),
            value TEXT NOT NULL,
            quality TEXT NOT NULL DEFAULT '',
            collected_at INTEGER NOT NULL,
            PRIMARY KEY (ts, meter, rtype)
        ) WITHOUT ROWID""",
        # Readings not yet packed into an outbox message, oldest first. Fed by a trigger, so only
        # rows that were really inserted (not ignored duplicates) ever queue for the uplink.
        """CREATE TABLE unsent (
            ts INTEGER NOT NULL,
            meter INTEGER NOT NULL,
            rtype INTEGER NOT NULL,
            PRIMARY KEY (ts, meter, rtype)
        ) WITHOUT ROWID""",
        """CREATE TRIGGER readings_queue_unsent AFTER INSERT ON readings BEGIN
            INSERT INTO unsent (ts, meter, rtype) VALUES (NEW.ts, NEW.meter, NEW.rtype);
        END""",
        # Messages built and kept until the broker's PUBACK; the payload is kept byte for byte so a
        # message sent again after a crash carries the same MessageID and content.
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            message_id TEXT NOT NULL UNIQUE,
            priority INTEGER NOT NULL,
            topic TEXT NOT NULL,
            content_type TEXT NOT NULL,
            payload BLOB,
            readings INTEGER NOT NULL DEFAULT 0,
            oldest_ts INTEGER,
            created_at INTEGER NOT NULL,
            acked_at INTEGER
        )""",
        "CREATE INDEX outbox_pending ON outbox (priority, id) WHERE acked_at IS NULL",
    ],
    [
        # DLMS invocation counters (security suite 0). `key_id` fingerprints the key set and our
        # system title (never the keys themselves). `reserved_up_to`: every outgoing counter up to it
        # may have been used; after a restart counting goes on above the highest reservation of that
        # key id, on any meter, so a counter is never used twice under one key. `meter_last`: the
        # highest counter accepted from the meter, to refuse replays.
        """CREATE TABLE dlms_counters (
            meter TEXT NOT NULL,
            key_id TEXT NOT NULL,
            reserved_up_to INTEGER NOT NULL DEFAULT -1,
            meter_last INTEGER,
            updated_at INTEGER NOT NULL,
            PRIMARY KEY (meter, key_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX dlms_counters_key ON dlms_counters (key_id, reserved_up_to)",
    ],
    [
        # Events the meters logged (power down and up, cover opened, clock set, ...), unique by
        # (time, meter, EndDeviceEventType): reading a meter's event log again stores nothing twice.
        """CREATE TABLE events (
            ts INTEGER NOT NULL,
            meter INTEGER NOT NULL REFERENCES meters(id),
            type TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            details TEXT NOT NULL DEFAULT '[]',
            collected_at INTEGER NOT NULL,
            PRIMARY KEY (ts, meter, type)
        ) WITHOUT ROWID""",
        # Events not yet in a message: the same trigger-fed queue as for readings.
        """CREATE TABLE unsent_events (
            ts INTEGER NOT NULL,
            meter INTEGER NOT NULL,
            type TEXT NOT NULL,
            PRIMARY KEY (ts, meter, type)
        ) WITHOUT ROWID""",
        """CREATE TRIGGER events_queue_unsent AFTER INSERT ON events BEGIN
            INSERT INTO unsent_events (ts, meter, type) VALUES (NEW.ts, NEW.meter, NEW.type);
        END""",
    ],
    [
        # Communication statistics per meter (per bus: summed over the bus's meters). The streak of
        # consecutive failures drives the backoff, so it survives a restart with the rest.
        """CREATE TABLE meter_stats (
            meter INTEGER PRIMARY KEY REFERENCES meters(id),
            attempts INTEGER NOT NULL DEFAULT 0,
            successes INTEGER NOT NULL DEFAULT 0,
            timeouts INTEGER NOT NULL DEFAULT 0,
            crc_errors INTEGER NOT NULL DEFAULT 0,
            protocol_errors INTEGER NOT NULL DEFAULT 0,
            refusals INTEGER NOT NULL DEFAULT 0,
            consecutive_failures INTEGER NOT NULL DEFAULT 0,
            response_ms_total INTEGER NOT NULL DEFAULT 0,
            last_attempt INTEGER,
            last_success INTEGER,
            last_error TEXT NOT NULL DEFAULT ''
        )""",
    ],
]
