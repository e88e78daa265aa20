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
    [
        # Registration (issue 4): everything needed to poll a meter registered by the MDM or found by
        # discovery, so it survives restarts. state: active (polled), unassigned (discovered, waiting
        # for the MDM), removed (kept for its readings). identity: what discovery read from it.
        "ALTER TABLE meters ADD COLUMN settings TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE meters ADD COLUMN state TEXT NOT NULL DEFAULT 'active'",
        "ALTER TABLE meters ADD COLUMN identity TEXT NOT NULL DEFAULT '{}'",
        # The meter clock as last checked: offset in seconds (meter minus HES) and when.
        """CREATE TABLE meter_clock (
            meter INTEGER PRIMARY KEY REFERENCES meters(id),
            checked_at INTEGER NOT NULL,
            offset_s REAL NOT NULL,
            action TEXT NOT NULL
        )""",
    ],
    [
        # The technician console (issue 8): accounts with a role and a scrypt hash (empty for an
        # account that signs in with the OS login), the lockout counter, and the audit trail of
        # every console command, kept as long as the box lives (a few hundred bytes per command).
        """CREATE TABLE console_users (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            password_hash TEXT NOT NULL DEFAULT '',
            failed_attempts INTEGER NOT NULL DEFAULT 0,
            locked_until INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE console_audit (
            id INTEGER PRIMARY KEY,
            ts INTEGER NOT NULL,
            user TEXT NOT NULL,
            role TEXT NOT NULL,
            command TEXT NOT NULL,
            outcome TEXT NOT NULL
        )""",
    ],
    [
        # The command journal (issue 6, store/commands.py): every request from the MDM. `request` is
        # the parsed request as JSON (what to do), not its XML; `priority`: lower runs first.
        """CREATE TABLE commands (
            id INTEGER PRIMARY KEY,
            message_id TEXT NOT NULL UNIQUE,
            correlation_id TEXT NOT NULL,
            verb TEXT NOT NULL,
            noun TEXT NOT NULL,
            source TEXT NOT NULL,
            reply_topic TEXT NOT NULL,
            request TEXT NOT NULL,
            priority INTEGER NOT NULL,
            state TEXT NOT NULL,
            received_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            finished_at INTEGER,
            reply_result TEXT NOT NULL,
            reply_code TEXT NOT NULL,
            reply_reason TEXT NOT NULL,
            outcome_code TEXT NOT NULL DEFAULT '',
            outcome_reason TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX commands_open ON commands (priority, id) WHERE finished_at IS NULL",
        # One row per meter a request names: what is done there (`kind`: relay, clock, read, ...),
        # its own state, and its outcome as JSON (the relay state read back, the readings served).
        """CREATE TABLE command_targets (
            command INTEGER NOT NULL REFERENCES commands(id),
            meter TEXT NOT NULL,
            kind TEXT NOT NULL,
            state TEXT NOT NULL,
            error_code TEXT NOT NULL DEFAULT '',
            reason TEXT NOT NULL DEFAULT '',
            detail TEXT NOT NULL DEFAULT '{}',
            updated_at INTEGER NOT NULL,
            PRIMARY KEY (command, meter)
        ) WITHOUT ROWID""",
        "CREATE INDEX command_targets_meter ON command_targets (meter, kind)",
    ],
    [
        # WAN listener (issue 7): devices that connect over the WAN, by logical device name. A meter
        # also has a `meters` row (bus 'wan', its mRID here); a DCU has only this row, and the meters
        # behind it name it as `parent`. status: registered, or refused (unknown while automatic
        # registration is off: kept so the operator sees who called, and the alarm goes once a day).
        # Connection health: connections, the last peer address and why the last connection ended.
        """CREATE TABLE wan_devices (
            logical_name TEXT PRIMARY KEY,
            mrid TEXT UNIQUE,
            kind TEXT NOT NULL,
            parent TEXT,
            status TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            connections INTEGER NOT NULL DEFAULT 0,
            refusals INTEGER NOT NULL DEFAULT 0,
            last_refusal_alarm INTEGER,
            last_connected INTEGER,
            last_disconnected INTEGER,
            last_peer TEXT NOT NULL DEFAULT '',
            last_close TEXT NOT NULL DEFAULT ''
        ) WITHOUT ROWID""",
    ],
    [
        # Aggregation (issue 4): the totals made without every member (marked partial, 2.4.2), with
        # how many members there were and which were missing (mRIDs, comma-joined). `device` is the
        # group's virtual meter; a complete total needs no row (its reading says it all).
        """CREATE TABLE partial_totals (
            ts INTEGER NOT NULL,
            device INTEGER NOT NULL,
            rtype INTEGER NOT NULL,
            members INTEGER NOT NULL,
            missing TEXT NOT NULL,
            PRIMARY KEY (ts, device, rtype)
        ) WITHOUT ROWID""",
    ],
    [
        # Tariffs, costs and prepay (issue 10, store/tariffs.py). The series a tariff prices (meter
        # and energy ReadingType) are listed, and a trigger queues each *really inserted* reading of
        # one in tariff_pending: a re-read interval is ignored by readings, so it is never charged twice.
        """CREATE TABLE tariff_series (
            meter INTEGER NOT NULL,
            rtype INTEGER NOT NULL,
            PRIMARY KEY (meter, rtype)
        ) WITHOUT ROWID""",
        """CREATE TABLE tariff_pending (
            ts INTEGER NOT NULL,
            meter INTEGER NOT NULL,
            rtype INTEGER NOT NULL,
            PRIMARY KEY (ts, meter, rtype)
        ) WITHOUT ROWID""",
        """CREATE TRIGGER readings_queue_tariff AFTER INSERT ON readings
           WHEN EXISTS (SELECT 1 FROM tariff_series WHERE meter = NEW.meter AND rtype = NEW.rtype) BEGIN
            INSERT OR IGNORE INTO tariff_pending (ts, meter, rtype) VALUES (NEW.ts, NEW.meter, NEW.rtype);
        END""",
        # One row per apportioned interval, keyed like its reading. state: charged, baseline (the
        # first snapshot of a register series) or covered (a snapshot inside a gap charged already).
        # start: the start of the energy it charged; energy and amount: exact decimal strings.
        """CREATE TABLE tariff_intervals (
            ts INTEGER NOT NULL,
            meter INTEGER NOT NULL,
            rtype INTEGER NOT NULL,
            start INTEGER NOT NULL,
            billing_start INTEGER NOT NULL,
            tariff TEXT NOT NULL,
            state TEXT NOT NULL,
            energy TEXT NOT NULL,
            amount TEXT NOT NULL,
            PRIMARY KEY (ts, meter, rtype)
        ) WITHOUT ROWID""",
        "CREATE INDEX tariff_intervals_billing ON tariff_intervals (meter, billing_start)",
        "CREATE INDEX tariff_intervals_series ON tariff_intervals (meter, rtype, ts)",
        # The slices of a charged interval: energy and cost per TOU period and consumption block.
        """CREATE TABLE tariff_slices (
            ts INTEGER NOT NULL,
            meter INTEGER NOT NULL,
            rtype INTEGER NOT NULL,
            period TEXT NOT NULL,
            block INTEGER NOT NULL,
            energy TEXT NOT NULL,
            amount TEXT NOT NULL,
            PRIMARY KEY (ts, meter, rtype, period, block)
        ) WITHOUT ROWID""",
        # Energy apportioned so far in a billing period: where the next interval stands in the blocks.
        """CREATE TABLE tariff_usage (
            meter INTEGER NOT NULL,
            billing_start INTEGER NOT NULL,
            energy TEXT NOT NULL,
            PRIMARY KEY (meter, billing_start)
        ) WITHOUT ROWID""",
        # Closed billing periods: determinants and bill as JSON, computed once at the period's end.
        """CREATE TABLE tariff_bills (
            meter INTEGER NOT NULL,
            billing_start INTEGER NOT NULL,
            billing_end INTEGER NOT NULL,
            tariff TEXT NOT NULL,
            currency TEXT NOT NULL,
            bill TEXT NOT NULL,
            total TEXT NOT NULL,
            closed_at INTEGER NOT NULL,
            PRIMARY KEY (meter, billing_start)
        ) WITHOUT ROWID""",
        # Prepay accounts by meter mRID, and the journal of every change of balance. A top-up's
        # reference is the MDM's MessageID: unique per account, so a repeated top-up credits once.
        """CREATE TABLE prepay_accounts (
            meter TEXT PRIMARY KEY,
            currency TEXT NOT NULL,
            balance TEXT NOT NULL,
            relay TEXT NOT NULL,
            low_warned INTEGER NOT NULL DEFAULT 0,
            emergency_warned INTEGER NOT NULL DEFAULT 0,
            updated_at INTEGER NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE prepay_journal (
            id INTEGER PRIMARY KEY,
            meter TEXT NOT NULL,
            ts INTEGER NOT NULL,
            kind TEXT NOT NULL,
            amount TEXT NOT NULL,
            balance TEXT NOT NULL,
            reference TEXT NOT NULL,
            UNIQUE (meter, kind, reference)
        )""",
    ],
    # Tariffs the MDM assigned (change UsagePointConfig), by meter mRID: they win over [tariffs]
    # meters. `seq` grows with every assignment, so the tariff thread sees that something changed.
    [
        """CREATE TABLE tariff_assignments (
            meter TEXT PRIMARY KEY,
            tariff TEXT NOT NULL,
            seq INTEGER NOT NULL,
            assigned_at INTEGER NOT NULL,
            reference TEXT NOT NULL
        ) WITHOUT ROWID""",
    ],
    # Relay operations that are not in the command journal (a technician's, from the console): the
    # relay rate limit counts them with the MDM's, so neither can wear a relay out behind the other.
    [
        """CREATE TABLE relay_operations (
            id INTEGER PRIMARY KEY,
            meter TEXT NOT NULL,
            at INTEGER NOT NULL,
            source TEXT NOT NULL
        )""",
        "CREATE INDEX relay_operations_meter_at ON relay_operations (meter, at)",
    ],
    # MQTT 5 request/response: the Correlation Data of a request, kept with it and echoed in its replies.
    [
        "ALTER TABLE commands ADD COLUMN reply_correlation BLOB",
        "ALTER TABLE outbox ADD COLUMN correlation_data BLOB",
    ],
    # The console's audit spool (console/spool.py): each spooled entry's id, unique, so a spool
    # imported twice (the daemon killed between the commit and the unlink) adds nothing.
    [
        "ALTER TABLE console_audit ADD COLUMN spool_id TEXT",
        "CREATE UNIQUE INDEX console_audit_spool_id ON console_audit (spool_id)",
    ],
]
