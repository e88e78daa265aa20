"""The appliance's health at a glance: what the retained status topic, status.json and `hes status` show.

The daemon refreshes it every `uplink.status_interval_s`; `hes status` reads the file the daemon
wrote and the store (read-only), so it works whether or not the daemon runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.clock import Clock
from appliance.config import Config, missing_credentials
from appliance.model import epoch, utc_from_epoch
from appliance.store import Store
from appliance.store.outbox import backlog
from appliance.store.retention import used_bytes
from appliance.store.stats import bus_stats
from appliance.uplink.cim import format_time

STATUS_FILE = "status.json"


def backlog_status(store: Store, clock: Clock) -> dict[str, Any]:
    """Readings waiting for the uplink: how many, how old, in how many built messages."""
    waiting = backlog(store)
    oldest = waiting["oldest_unsent_ts"]
    return {
        "unsent_readings": waiting["unsent_readings"],
        "unsent_events": waiting["unsent_events"],
        "pending_messages": waiting["pending_messages"],
        "pending_readings": waiting["pending_readings"],
        "oldest_unsent": format_time(utc_from_epoch(oldest)) if oldest is not None else None,
        "oldest_unsent_age_s": epoch(clock.now()) - oldest if oldest is not None else 0,
    }


def snapshot(
    config: Config,
    store: Store,
    clock: Clock,
    *,
    connected: bool,
    drain_rate: float,
    published: int,
    acknowledged: int,
    wan: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The status document of a running daemon; `wan` is the WAN health monitor's snapshot."""
    return {
        "state": "online",
        "hes_id": config.hes.id,
        "version": __version__,
        "time": format_time(clock.now()),
        "clock": clock.status(),
        "backlog": backlog_status(store, clock) | {"drain_rate_per_s": round(drain_rate, 1)},
        "uplink": {
            "connected": connected,
            # A fresh box collects while its certificate is being signed; this says what it waits for.
            "waiting_for": missing_credentials(config),
            "broker": f"{config.mqtt.host}:{config.mqtt.port}",
            "encoding": config.uplink.encoding,
            "messages_published": published,
            "messages_acknowledged": acknowledged,
        },
        "wan": wan,
        "buses": bus_stats(store),
        "store": {
            "used_mb": round(used_bytes(store) / 2**20, 1),
            "max_mb": config.store.max_size_mb,
        },
    }


def write_status_file(config: Config, document: dict[str, Any]) -> None:
    """Replace status.json atomically (a reader never sees half a file)."""
    path = config.hes.data_dir / STATUS_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, path)


def read_status(config: Config, store: Store | None, clock: Clock) -> dict[str, Any]:
    """What `hes status` shows: the daemon's last status, with the backlog read fresh from the store."""
    path: Path = config.hes.data_dir / STATUS_FILE
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        document = {"state": "unknown (no status from the daemon)", "hes_id": config.hes.id}
    if store is not None:
        document["backlog"] = document.get("backlog", {}) | backlog_status(store, clock)
    return document


def status_without_daemon(config: Config, store: Store | None, clock: Clock) -> dict[str, Any]:
    """read_status while the daemon is down: its last status.json says "online" to the end."""
    document = read_status(config, store, clock)
    document["state"] = f"daemon not running (its last status said: {document.get('state', '-')})"
    return document


def _wan_line(wan: dict[str, Any]) -> str:
    """`wan:     up, LTE SimTel, CSQ 20 (-73 dBm), home; MQTT rtt 41 ms, 2 reconnects`."""
    modem, mqtt, recovery = wan.get("modem"), wan.get("mqtt", {}), wan.get("recovery", {})
    parts = [wan["state"] + (f" ({wan['problem']})" if wan.get("problem") else "")]
    if modem and modem["responding"]:
        registration = modem["registration"]
        parts.append(
            f"{modem['technology'] or '-'} {modem['operator'] or 'no operator'},"
            f" CSQ {modem['csq'] if modem['csq'] is not None else '?'}"
            f" ({modem['rssi_dbm'] if modem['rssi_dbm'] is not None else '?'} dBm),"
            f" {registration['eps'] or registration['ps'] or registration['cs'] or '?'}"
        )
    elif modem:
        parts.append("modem not answering")
    rtt = f"rtt {mqtt['rtt_ms']} ms" if mqtt.get("rtt_ms") is not None else "no ping"
    line = f"wan:     {', '.join(parts)}; MQTT {rtt}, {mqtt.get('reconnects', 0)} reconnects"
    if recovery.get("rungs_taken"):
        line += f"; recovery: {', '.join(recovery['rungs_taken'])}"
    return line


def format_status(document: dict[str, Any]) -> str:
    """The status document as a few lines for an 80-column terminal."""
    lines = [
        f"HES {document.get('hes_id', '?')}: {document.get('state', '?')} (as of {document.get('time', '-')})"
    ]
    uplink = document.get("uplink")
    if uplink:
        lines.append(
            f"uplink:  {'connected to' if uplink['connected'] else 'NOT connected to'} {uplink['broker']},"
            f" {uplink['encoding']}, {uplink['messages_published']} published,"
            f" {uplink['messages_acknowledged']} acknowledged"
        )
    wan = document.get("wan")
    if wan:
        lines.append(_wan_line(wan))
    clock = document.get("clock")
    if clock:
        offset = "no GPS time" if clock["offset_s"] is None else f"offset {clock['offset_s']:+.3f} s"
        lines.append(f"clock:   {clock['state']} since {clock['since']}, {offset}, gpsd {clock['gpsd']}")
    backlog_doc = document.get("backlog", {})
    lines.append(
        f"backlog: {backlog_doc.get('unsent_readings', '?')} unsent readings,"
        f" {backlog_doc.get('pending_messages', '?')} messages awaiting PUBACK,"
        f" oldest unsent {backlog_doc.get('oldest_unsent') or '-'}"
        + (f", draining {backlog_doc['drain_rate_per_s']}/s" if "drain_rate_per_s" in backlog_doc else "")
    )
    for name, bus in document.get("buses", {}).items():
        lines.append(
            f"bus {name}:   {bus['attempts']} polls, {bus['successes']} answered, {bus['timeouts']} timeouts,"
            f" {bus['crc_errors']} CRC errors, {bus['protocol_errors'] + bus['refusals']} other errors"
        )
    if "store" in document:
        lines.append(f"store:   {document['store']['used_mb']} of {document['store']['max_mb']} MiB")
    return "\n".join(lines)
