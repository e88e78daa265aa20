"""`hes probe dlms`: a technician's one-shot read of a DLMS meter, printed as JSON lines.

It runs the daemon's own session (`DlmsSession` over `SerialPort` or `TcpTransport`, invocation
counters in the store), so a probe that works proves the daemon's path, not a shortcut. Passwords and
keys come from files, never from the command line (where `ps` and the shell history would show them).

One JSON object per line: `object` (OBIS code), `value` (scaled by the register's scaler), `unit`
(from attribute 3), `timestamp` (the meter's for profile rows, the HES clock's for a read), plus
`class` and, for profile rows, `profile`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from appliance.clock import Clock
from appliance.collect.dlms import apdu as A
from appliance.collect.dlms import axdr
from appliance.collect.dlms.obis import Obis
from appliance.collect.dlms.security import SecurityKeys
from appliance.collect.dlms.session import (
    AUTHENTICATIONS,
    MANAGEMENT_CLIENT,
    PUBLIC_CLIENT,
    DlmsSession,
    DlmsSettings,
    FramePort,
    InvocationCounters,
)
from appliance.collect.dlms.transport import TcpTransport
from appliance.config import BusSpec, read_meter_secrets
from appliance.errors import HesError, ProtocolError
from appliance.hw.rs485 import SerialPort

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
CLOCK = Obis(0, 0, 1, 0, 0, 255)
DISCONNECT_CONTROL = Obis(0, 0, 96, 3, 10, 255)
LOAD_PROFILE = Obis(1, 0, 99, 1, 0, 255)
DEFAULT_OBJECTS = ("8/0.0.1.0.0.255", "3/1.0.1.8.0.255")
CLASS_DATA, CLASS_REGISTER, CLASS_EXTENDED_REGISTER, CLASS_PROFILE, CLASS_CLOCK = 1, 3, 4, 7, 8
CLASS_DISCONNECT_CONTROL = 70

# Blue Book unit enumeration (class 3 scaler_unit), the ones meters use.
UNITS = {
    1: "a", 2: "mo", 3: "wk", 4: "d", 5: "h", 6: "min", 7: "s", 8: "°", 9: "°C", 10: "currency",
    11: "m", 12: "m/s", 13: "m3", 14: "m3", 15: "m3/h", 16: "m3/h", 17: "m3/d", 18: "m3/d", 19: "l",
    20: "kg", 21: "N", 22: "Nm", 23: "Pa", 24: "bar", 25: "J", 26: "J/h", 27: "W", 28: "VA",
    29: "var", 30: "Wh", 31: "VAh", 32: "varh", 33: "A", 34: "C", 35: "V", 36: "V/m", 37: "F",
    38: "Ω", 39: "Ωm2/m", 40: "Wb", 41: "T", 42: "A/m", 43: "H", 44: "Hz", 45: "1/(Wh)",
    46: "1/(varh)", 47: "1/(VAh)", 48: "V2h", 49: "A2h", 50: "kg/s", 51: "S", 52: "K",
    53: "1/(V2h)", 54: "1/(A2h)", 55: "1/m3", 56: "%", 57: "Ah", 255: None,
}  # fmt: skip


class UsageError(Exception):
    """A bad option or input file: exit code 2, no meter was asked anything."""


def add_probe_parser(subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `probe dlms ...` to the `hes` subcommands; returns the `probe` parser."""
    probe = subcommands.add_parser(
        "probe",
        help="read a meter once and print JSON lines",
        description="A technician's one-shot read of one meter, through the daemon's own code.",
    )
    protocols = probe.add_subparsers(dest="probe_protocol", required=True, metavar="PROTOCOL")
    dlms = protocols.add_parser(
        "dlms",
        allow_abbrev=False,  # else "--password X" would pass for --password-file and echo X in errors
        help="a DLMS/COSEM meter over HDLC (RS-485) or the TCP wrapper",
        description="Associate with one DLMS/COSEM meter, read, release; one JSON object per line "
        "(object, value, unit, timestamp). Passwords and keys are read from files only.",
    )
    where = dlms.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", metavar="DEVICE", help="serial device of the RS-485 bus (HDLC)")
    where.add_argument("--tcp", metavar="HOST:PORT", help="the meter's or DCU's wrapper port")
    dlms.add_argument("--baud", type=int, default=9600, help="serial speed (default 9600, 8N1)")
    dlms.add_argument(
        "--server",
        type=int,
        required=True,
        metavar="N",
        help="HDLC: the meter's physical address on the bus; TCP: the destination wPort",
    )
    dlms.add_argument("--client", type=int, metavar="N", help="client SAP (default 16 without auth, else 1)")
    dlms.add_argument(
        "--logical", type=int, default=1, metavar="N", help="HDLC logical device (default 1, management)"
    )
    dlms.add_argument("--auth", choices=AUTHENTICATIONS, default="none", help="default none")
    dlms.add_argument("--password-file", type=Path, metavar="FILE", help="the password (low), one line")
    dlms.add_argument(
        "--keys-file",
        type=Path,
        metavar="FILE",
        help="the meter's keys file, as in its [[meters]] entry: password (low), or system_title, "
        "encryption_key and authentication_key in hex (hls-gmac)",
    )
    dlms.add_argument(
        "--store",
        type=Path,
        metavar="FILE",
        help="SQLite store that keeps the invocation counters (hls-gmac; use the daemon's)",
    )
    dlms.add_argument(
        "--obis",
        nargs="+",
        action="extend",
        default=[],
        metavar="CODE",
        help="objects to read, [CLASS/]CODE[/ATTRIBUTE] (default: clock and A+ energy)",
    )
    dlms.add_argument(
        "--profile",
        nargs=2,
        metavar=("FROM", "TO"),
        help="profile rows by range: ISO 8601 times (naive = UTC), 'now', 'now-2h', 'now-1d'",
    )
    dlms.add_argument(
        "--profile-obis", default=str(LOAD_PROFILE), metavar="CODE", help="default: load profile"
    )
    relay = dlms.add_mutually_exclusive_group()
    relay.add_argument("--disconnect", action="store_true", help="remote_disconnect, then read the relay")
    relay.add_argument("--reconnect", action="store_true", help="remote_reconnect, then read the relay")
    dlms.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS", help="per frame (default 2)")
    dlms.add_argument("--retries", type=int, default=2, metavar="N", help="HDLC polls per frame (default 2)")
    return probe


def run_probe(args: argparse.Namespace) -> int:
    """Run `hes probe dlms`: 0 when everything was read, 1 when the meter or line failed, 2 for usage.

    Each record is printed as soon as it is read, so a failure half-way keeps what came before.
    """
    try:
        settings, port, counters_for = _prepare(args)
    except UsageError as exc:
        print(f"hes probe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    store = None
    try:
        counters: InvocationCounters | None = None
        if counters_for is not None:
            store, counters = counters_for()
        session = DlmsSession(port, settings, counters)
        try:
            session.associate()
            for record in _records(session, args, Clock()):
                print(json.dumps(record, ensure_ascii=False), flush=True)
            session.release()
        finally:
            session.abort()
            port.close()
    except HesError as exc:
        print(f"hes probe: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if store is not None:
            store.close()
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# Options into settings


def _prepare(
    args: argparse.Namespace,
) -> tuple[DlmsSettings, FramePort, Callable[[], tuple[Any, InvocationCounters]] | None]:
    auth = args.auth
    client = (
        args.client if args.client is not None else (PUBLIC_CLIENT if auth == "none" else MANAGEMENT_CLIENT)
    )
    if auth == "hls-gmac" and args.store is None:
        raise UsageError("--auth hls-gmac needs --store: invocation counters must never be reused")
    password = _read_password(args.password_file, args.keys_file) if auth == "low" else None
    keys, title = _read_keys(args.keys_file) if auth == "hls-gmac" else (None, None)
    for code in args.obis:
        _object(code)
    if args.profile:
        start, end = (_moment(text) for text in args.profile)
        if end < start:
            raise UsageError("--profile: FROM is after TO")
        _parse_obis(args.profile_obis)
    port: FramePort
    if args.tcp:
        host, _, number = args.tcp.rpartition(":")
        if not host or not number.isdigit():
            raise UsageError(f"--tcp {args.tcp!r}: expected HOST:PORT")
        port = TcpTransport(host.strip("[]"), int(number), connect_timeout_s=args.timeout)
        addressing: dict[str, Any] = {"framing": "wrapper", "logical": args.server}
        where = f"tcp:{host}:{number}:{args.server}"
    else:
        spec = BusSpec(
            "probe", True, args.port, args.baud, "N", 8, 1, False, int(args.timeout * 1000), args.retries, 0
        )
        port = SerialPort(spec)
        addressing = {"framing": "hdlc", "logical": args.logical, "physical": args.server}
        where = f"hdlc:{args.port}:{args.logical}/{args.server}"
    try:
        settings = DlmsSettings(
            client=client,
            authentication=auth,
            password=password,
            system_title=title,
            keys=keys,
            timeout_s=args.timeout,
            retries=args.retries,
            **addressing,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    counters_for = None
    if auth == "hls-gmac":
        assert keys is not None and title is not None

        def counters_for() -> tuple[Any, InvocationCounters]:
            # Imported here: the store is not needed for unauthenticated probes.
            from appliance.store.db import Store  # noqa: PLC0415
            from appliance.store.dlms_counters import open_counters  # noqa: PLC0415

            store = Store(args.store)
            return store, open_counters(store, where, keys, title)

    return settings, port, counters_for


def _read_secret_file(path: Path | None, option: str) -> bytes:
    if path is None:
        raise UsageError(f"{option} is needed for this authentication")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror}") from None


def _read_password(password_file: Path | None, keys_file: Path | None) -> bytes:
    """The password from a one-line file, or from the meter's keys file as the daemon uses it."""
    if keys_file is not None and password_file is None:
        return _meter_secrets(keys_file, {"password": 0})["password"]
    password = _read_secret_file(password_file, "--password-file").rstrip(b"\r\n")
    if not password:
        raise UsageError(f"--password-file {password_file}: empty")
    return password


def _read_keys(path: Path | None) -> tuple[SecurityKeys, bytes]:
    """Keys and our system title from the meter's keys file, the one the daemon reads."""
    secrets = _meter_secrets(path, {"encryption_key": 16, "authentication_key": 16, "system_title": 8})
    return SecurityKeys(secrets["encryption_key"], secrets["authentication_key"]), secrets["system_title"]


def _meter_secrets(path: Path | None, needed: dict[str, int]) -> dict[str, bytes]:
    """The entries `needed` of a keys file, checked by the daemon's own rules (`read_meter_secrets`)."""
    if path is None:
        raise UsageError("--keys-file is needed for this authentication")
    try:
        secrets = read_meter_secrets(path)
    except ValueError as exc:
        raise UsageError(f"--keys-file {path} {exc}") from None  # the message never holds a secret
    missing = sorted(set(needed) - set(secrets))
    if missing:
        raise UsageError(f"--keys-file {path}: missing {', '.join(missing)}")
    return {
        name: secrets[name].encode() if name == "password" else bytes.fromhex(secrets[name])
        for name in needed
    }


def _parse_obis(text: str) -> Obis:
    try:
        return Obis.parse(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _object(text: str) -> tuple[int, Obis, int]:
    """`[CLASS/]CODE[/ATTRIBUTE]` with a class guessed from the code when not given."""
    parts = text.split("/")
    if len(parts) > 3:
        raise UsageError(f"--obis {text!r}: expected [CLASS/]CODE[/ATTRIBUTE]")
    class_text = parts.pop(0) if len(parts) > 1 and "." not in parts[0] and ":" not in parts[0] else None
    code = _parse_obis(parts[0])
    try:
        attribute = int(parts[1]) if len(parts) > 1 else 2
        class_id = int(class_text) if class_text is not None else _guess_class(code)
    except ValueError:
        raise UsageError(f"--obis {text!r}: class and attribute are numbers") from None
    return class_id, code, attribute


def _guess_class(code: Obis) -> int:
    """The interface class a code usually has, so that a technician can just type the code."""
    if code == CLOCK:
        return CLASS_CLOCK
    if code == DISCONNECT_CONTROL:
        return CLASS_DISCONNECT_CONTROL
    if code.c in (98, 99):
        return CLASS_PROFILE
    if code.a != 0 and code.c not in (0, 96, 97):
        return CLASS_REGISTER  # electricity (or other media) quantities
    return CLASS_DATA


def _moment(text: str, now: datetime | None = None) -> datetime:
    """An aware time from 'now', 'now-90m', 'now-2h', 'now-1d' or ISO 8601 (naive means UTC)."""
    now = now or Clock().now()
    cleaned = text.strip()
    if cleaned == "now":
        return now
    amount, unit = cleaned[4:-1], cleaned[-1:]
    if cleaned.startswith("now-") and unit in ("m", "h", "d") and amount.isdigit():
        return now - timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[unit]: int(amount)})
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise UsageError(f"--profile: {text!r} is not 'now', 'now-2h' or an ISO 8601 time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------------------------------------
# Reads into records


def _records(session: DlmsSession, args: argparse.Namespace, clock: Clock) -> Iterator[dict[str, Any]]:
    if args.disconnect or args.reconnect:
        method, name = (1, "remote_disconnect") if args.disconnect else (2, "remote_reconnect")
        session.action(CLASS_DISCONNECT_CONTROL, DISCONNECT_CONTROL, method, axdr.Integer(0))
        yield _relay(session, clock, name)
    objects = list(args.obis)
    if not objects and not args.profile and not (args.disconnect or args.reconnect):
        objects = list(DEFAULT_OBJECTS)
    scalers = _Scalers(session)
    for text in objects:
        class_id, code, attribute = _object(text)
        yield _read_object(session, scalers, clock, class_id, code, attribute)
    if args.profile:
        start, end = (_moment(text) for text in args.profile)
        yield from _profile(session, scalers, _parse_obis(args.profile_obis), start, end)


def _relay(session: DlmsSession, clock: Clock, action: str) -> dict[str, Any]:
    output = session.get(CLASS_DISCONNECT_CONTROL, DISCONNECT_CONTROL, 2)
    control = session.get(CLASS_DISCONNECT_CONTROL, DISCONNECT_CONTROL, 3)
    return {
        "object": str(DISCONNECT_CONTROL),
        "class": CLASS_DISCONNECT_CONTROL,
        "action": action,
        "value": to_json(output),
        "control_state": to_json(control),
        "unit": None,
        "timestamp": _iso(clock.now()),
    }


def _read_object(
    session: DlmsSession, scalers: _Scalers, clock: Clock, class_id: int, code: Obis, attribute: int
) -> dict[str, Any]:
    value = session.get(class_id, code, attribute)
    read_at = clock.now()
    record: dict[str, Any] = {"object": str(code), "class": class_id, "attribute": attribute}
    if class_id == CLASS_CLOCK and attribute == 2:
        meter_time = axdr.DateTime.from_data(value)
        record["value"] = _datetime_json(meter_time)
        record["unit"] = None
        if meter_time.is_fully_specified:
            record["offset_s"] = round((meter_time.to_utc() - read_at).total_seconds(), 2)
    elif class_id in (CLASS_REGISTER, CLASS_EXTENDED_REGISTER) and attribute == 2:
        scaler, unit = scalers.of(class_id, code)
        record["value"], record["unit"] = _scaled(value, scaler), unit
    else:
        record["value"], record["unit"] = to_json(value), None
    record["timestamp"] = _iso(read_at)
    return record


def _profile(
    session: DlmsSession, scalers: _Scalers, code: Obis, start: datetime, end: datetime
) -> Iterator[dict[str, Any]]:
    """One record per row and column; the row's clock column gives the timestamp."""
    capture = session.get(CLASS_PROFILE, code, 3)
    if not isinstance(capture, axdr.Array):
        raise _unexpected(code, "capture_objects", capture)
    columns = [A.CaptureObject.from_data(item) for item in capture.items]
    rows = session.get_range(code, start, end)
    if not isinstance(rows, axdr.Array | axdr.CompactArray):
        raise _unexpected(code, "buffer", rows)
    clock_column = next(
        (
            n
            for n, column in enumerate(columns)
            if column.class_id == CLASS_CLOCK and column.attribute_index == 2
        ),
        None,
    )
    for row in rows.items:
        if not isinstance(row, axdr.Structure) or len(row.items) != len(columns):
            raise _unexpected(code, "row", row)
        stamp = None
        if clock_column is not None:
            stamp = _datetime_json(axdr.DateTime.from_data(row.items[clock_column]))
        for number, (column, value) in enumerate(zip(columns, row.items, strict=True)):
            if number == clock_column:
                continue
            scaler, unit = 0, None
            if column.class_id in (CLASS_REGISTER, CLASS_EXTENDED_REGISTER) and column.attribute_index == 2:
                scaler, unit = scalers.of(column.class_id, column.logical_name)
            yield {
                "object": str(column.logical_name),
                "class": column.class_id,
                "profile": str(code),
                "value": _scaled(value, scaler),
                "unit": unit,
                "timestamp": stamp,
            }


class _Scalers:
    """Scaler and unit (attribute 3) per register, read once per probe."""

    def __init__(self, session: DlmsSession) -> None:
        self.session = session
        self._known: dict[tuple[int, Obis], tuple[int, str | None]] = {}

    def of(self, class_id: int, code: Obis) -> tuple[int, str | None]:
        key = (class_id, code)
        if key not in self._known:
            self._known[key] = scaler_unit(self.session.get(class_id, code, 3))
        return self._known[key]


def scaler_unit(value: axdr.Data) -> tuple[int, str | None]:
    """(scaler, unit symbol) from a register's attribute 3, structure {integer, enum}."""
    if (
        isinstance(value, axdr.Structure)
        and len(value.items) == 2
        and isinstance(value.items[0], axdr.Integer)
        and isinstance(value.items[1], axdr.EnumValue)
    ):
        code = value.items[1].value
        return value.items[0].value, UNITS.get(code, f"unit {code}")
    raise _unexpected("register", "scaler_unit", value)


def _scaled(value: axdr.Data, scaler: int) -> Any:
    """value x 10**scaler: an int when that is exact, else the nearest float (no binary noise)."""
    number = getattr(value, "value", None)
    if not scaler or isinstance(number, bool) or not isinstance(number, int | float):
        return to_json(value)
    scaled = Decimal(number).scaleb(scaler)
    return int(scaled) if scaled == scaled.to_integral_value() else float(scaled)


def to_json(value: axdr.Data) -> Any:
    """A COSEM value as plain JSON: numbers, booleans, strings, lists; date-times in ISO 8601."""
    if isinstance(value, axdr.Array | axdr.Structure | axdr.CompactArray):
        return [to_json(item) for item in value.items]
    if isinstance(value, axdr.DateTime):
        return _datetime_json(value)
    if isinstance(value, axdr.Date | axdr.Time):
        return str(value)
    if isinstance(value, axdr.BitString):
        return "".join("1" if bit else "0" for bit in value.bools())
    if isinstance(value, axdr.OctetString):
        raw = value.value  # serial numbers are mostly ASCII; logical names and keys are not
        return raw.decode() if raw.isascii() and raw.decode().isprintable() else raw.hex()
    if isinstance(value, axdr.VisibleString | axdr.Utf8String):
        return value.value
    if isinstance(value, axdr.NullData | axdr.DontCare):
        return None
    return getattr(value, "value", str(value))


def _datetime_json(value: axdr.DateTime) -> str:
    """ISO 8601 in UTC when the meter says its deviation, else its local time as sent."""
    try:
        if value.is_fully_specified:
            return _iso(value.to_utc())
        return value.to_naive_local().isoformat()
    except HesError:
        return str(value)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _unexpected(code: object, what: str, value: object) -> ProtocolError:
    return ProtocolError(f"{code}: unexpected {what}: {type(value).__name__}")
