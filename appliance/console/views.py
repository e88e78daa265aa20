"""What the `show` commands print: the store (read-only) and the daemon's status as lines of at
most 79 characters, for an 80x24 terminal on a 115200-baud serial line."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from appliance.errors import HesError
from appliance.model import epoch, unit_symbol, utc_from_epoch
from appliance.store import Store
from appliance.store.events import events_of
from appliance.store.readings import readings_between
from appliance.store.registry import list_meters
from appliance.store.stats import meter_stats

_RELATIVE = re.compile(r"^-(\d+)([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_when(text: str, now: datetime) -> datetime:
    """A time a technician types: 2024-05-01, 2024-05-01T10:00 (UTC unless a zone is given), now,
    or -30m, -24h, -7d back from now."""
    if text == "now":
        return now
    relative = _RELATIVE.match(text)
    if relative:
        return now - timedelta(**{_UNITS[relative[2]]: int(relative[1])})
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise HesError(f"not a time: {text[:40]!r} (2024-05-01, 2024-05-01T10:00, now, -24h)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def short_time(seconds: int | None) -> str:
    """Epoch seconds as 2024-05-01 10:00:00Z ('-' for never)."""
    return "-" if seconds is None else utc_from_epoch(seconds).strftime("%Y-%m-%d %H:%M:%SZ")


def meters(store: Store) -> list[str]:
    """One line per registered meter, with how well it answers."""
    stats = {row["mrid"]: row for row in meter_stats(store)}
    lines = [f"{'METER':<16} {'BUS':<3} {'PROTO':<6} {'ADDR':>5} {'MODEL':<12} {'STATE':<10} ANSWERED LAST"]
    for row in list_meters(store):
        stat = stats.get(row["mrid"])
        answered = f"{100 * stat['successes'] // stat['attempts']}%" if stat and stat["attempts"] else "-"
        last = short_time(stat["last_success"])[5:16] if stat and stat["last_success"] else "-"
        lines.append(
            f"{row['mrid'][:16]:<16} {row['bus'] or '-':<3} {row['protocol'][:6]:<6} {row['address'] or 0:>5}"
            f" {row['model'][:12]:<12} {row.get('state', 'active')[:10]:<10} {answered:>8} {last}"
        )
    if len(lines) == 1:
        lines.append("no meters registered")
    return lines


def meter(store: Store, mrid: str, now: datetime) -> list[str]:
    """One meter: its registration, its statistics and its newest value of each ReadingType."""
    rows = [row for row in list_meters(store) if row["mrid"] == mrid]
    if not rows:
        raise HesError(f"no meter {mrid!r} (show meters lists them)")
    row = rows[0]
    lines = [
        f"meter {mrid}: {row['protocol']} address {row['address']} on bus {row['bus'] or '-'},"
        f" model {row['model']}",
        f"registered by {row['source']}, {row.get('state', 'active')}",
    ]
    stat = next((s for s in meter_stats(store) if s["mrid"] == mrid), None)
    if stat:
        lines += [
            f"polls {stat['attempts']}, answered {stat['successes']}, timeouts {stat['timeouts']},"
            f" CRC errors {stat['crc_errors']}, refused {stat['refusals']}",
            f"last answer {short_time(stat['last_success'])}, response {stat['response_ms'] or '-'} ms,"
            f" failures in a row {stat['consecutive_failures']}",
        ]
        if stat["last_error"]:
            lines.append(f"last error: {stat['last_error'][:66]}")
    newest: dict[str, Any] = {}
    for reading in readings_between(store, mrid, epoch(now) - 86400, epoch(now) + 1):
        newest[reading.reading_type.code] = reading
    lines.append("newest values (last 24 h):" if newest else "no readings in the last 24 h")
    for code, reading in sorted(newest.items()):
        unit = unit_symbol(reading.reading_type)
        lines.append(f"  {reading.timestamp:%Y-%m-%d %H:%M}Z {reading.value!s:>14} {unit:<5} {code}")
    return lines


def readings(store: Store, mrid: str, start: datetime, end: datetime) -> list[str]:
    """A meter's readings between two times, grouped by ReadingType."""
    found = readings_between(store, mrid, epoch(start), epoch(end))
    lines = [f"meter {mrid}, {start:%Y-%m-%d %H:%M}Z to {end:%Y-%m-%d %H:%M}Z: {len(found)} readings"]
    by_type: dict[str, list] = {}
    for reading in found:
        by_type.setdefault(reading.reading_type.code, []).append(reading)
    for code, series in sorted(by_type.items()):
        lines.append(f"{code} ({unit_symbol(series[0].reading_type) or 'count'})")
        lines += [
            f"  {r.timestamp:%Y-%m-%d %H:%M:%S}Z {r.value!s:>16} {','.join(r.qualities)}".rstrip()
            for r in series
        ]
    return lines


def events(store: Store, mrid: str | None, limit: int = 20) -> list[str]:
    """The newest meter events, of one meter or of all."""
    mrids = [mrid] if mrid else [row["mrid"] for row in list_meters(store)]
    found = sorted((e for m in mrids for e in events_of(store, m)), key=lambda e: e.created)[-limit:]
    if not found:
        return ["no events stored"]
    return [
        f"{e.created:%Y-%m-%d %H:%M:%S}Z {e.device_id[:16]:<16} {e.event_type:<14} {e.reason[:26]}"
        for e in found
    ]


def buffer(backlog: dict[str, Any]) -> list[str]:
    """The uplink backlog (status.backlog_status)."""
    lines = [
        f"unsent readings     {backlog.get('unsent_readings', '?')}",
        f"unsent events       {backlog.get('unsent_events', '?')}",
        f"messages unacked    {backlog.get('pending_messages', '?')}"
        f" ({backlog.get('pending_readings', '?')} readings)",
        f"oldest unsent       {backlog.get('oldest_unsent') or '-'}"
        f" ({backlog.get('oldest_unsent_age_s', 0)} s ago)",
    ]
    if "drain_rate_per_s" in backlog:
        lines.append(f"draining            {backlog['drain_rate_per_s']} readings/s")
    return lines


def section(document: dict[str, Any] | None, key: str) -> list[str]:
    """One part of the daemon's status (clock, wan, modem) as indented lines, or 'not available'."""
    part = (document or {}).get(key)
    if part is None and key == "modem":
        part = ((document or {}).get("wan") or {}).get("modem")
    if part is None:
        return [f"{key}: not available"]
    return [f"{key}:", *nested(part, 1)]


def nested(value: Any, indent: int = 0) -> list[str]:
    """A JSON value as `key: value` lines, nested tables indented."""
    pad = "  " * indent
    if isinstance(value, dict):
        lines = []
        for name, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{name}:")
                lines += nested(item, indent + 1)
            else:
                lines.append(f"{pad}{name}: {item}"[:79])
        return lines
    if isinstance(value, list):
        return [line for item in value for line in nested(item, indent)]
    return [f"{pad}{value}"[:79]]
