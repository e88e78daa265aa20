"""Tariff files (TOML) into validated `Tariff`s; every mistake is a TariffError naming file and key.

A tariff directory holds one `<name>.toml` per tariff and `calendars/<name>.toml` holiday calendars
(`holidays = [dates]`) that tariffs name. Numbers are read as exact decimals (tomllib's parse_float),
so `0.1` in a file is one tenth, not the nearest binary fraction. The MDM replaces a tariff with
`install_tariff`: validated first, then written atomically, so a bad tariff never reaches the disk.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from appliance.errors import TariffError
from appliance.model import ReadingType
from appliance.tariff.model import (
    CURRENCIES,
    MEASURING_PERIODS,
    MINUTES_PER_DAY,
    Band,
    Block,
    DayType,
    Season,
    Tariff,
)

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KEYS = {
    "name", "currency", "timezone", "reading_type", "billing_day", "fixed_daily", "tax_percent", "calendar",
    "holidays", "periods", "blocks", "demand", "seasons",
}  # fmt: skip


class _File:
    """One file's parsed document and the name errors carry."""

    def __init__(self, where: str, data: dict[str, Any]) -> None:
        self.where, self.data = where, data

    def fail(self, key: str, why: str) -> TariffError:
        return TariffError(f"{self.where}: {key}: {why}")

    def decimal(self, key: str, value: Any, minimum: Decimal = Decimal(0)) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
            raise self.fail(key, f"expected a number, got {value!r}")
        try:
            number = Decimal(value)
        except ArithmeticError:
            raise self.fail(key, f"expected a number, got {value!r}") from None
        if not number.is_finite() or number < minimum:
            raise self.fail(key, f"expected a number of at least {minimum}, got {value!r}")
        return number


def parse_tariff(text: str, name: str, calendars: Path | None = None) -> Tariff:
    """A Tariff from TOML text; `calendars` is where named holiday calendars are looked up."""
    try:
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise TariffError(f"tariff {name}: not valid TOML ({exc})") from None
    doc = _File(f"tariff {name}", data)
    for key in data:
        if key not in _KEYS:
            raise doc.fail(key, f"unknown key; expected one of {sorted(_KEYS)}")
    for key in ("currency", "timezone", "reading_type", "periods", "seasons"):
        if key not in data:
            raise doc.fail(key, "missing")
    if data.get("name", name) != name:
        raise doc.fail("name", f"must match the file name {name!r}")
    currency = data["currency"]
    if currency not in CURRENCIES:
        raise doc.fail("currency", f"unknown ISO 4217 currency {currency!r}; known: {', '.join(CURRENCIES)}")
    try:
        zone = ZoneInfo(str(data["timezone"]))
    except (ZoneInfoNotFoundError, ValueError):
        raise doc.fail("timezone", f"unknown IANA time zone {data['timezone']!r}") from None
    reading_type = _reading_type(doc, data["reading_type"])
    periods = _periods(doc, data["periods"])
    demand = data.get("demand", {})
    if not isinstance(demand, dict) or set(demand) - {"price", "periods"}:
        raise doc.fail("demand", "expected a table with price and periods")
    demand_periods = demand.get("periods", [])
    for period in demand_periods:
        if period not in periods:
            raise doc.fail("demand.periods", f"unknown period {period!r}; periods: {list(periods)}")
    billing_day = data.get("billing_day", 1)
    if not isinstance(billing_day, int) or not 1 <= billing_day <= 28:
        raise doc.fail("billing_day", "a day of the month, 1-28 (every month has it)")
    return Tariff(
        name=name,
        currency=currency,
        timezone=zone,
        reading_type=reading_type,
        periods=periods,
        seasons=_seasons(doc, data["seasons"], periods),
        blocks=_blocks(doc, data.get("blocks", [])),
        holidays=_holidays(doc, data, calendars),
        demand_price=doc.decimal("demand.price", demand.get("price", 0)),
        demand_periods=frozenset(demand_periods),
        fixed_daily=doc.decimal("fixed_daily", data.get("fixed_daily", 0)),
        tax_percent=doc.decimal("tax_percent", data.get("tax_percent", 0)),
        billing_day=billing_day,
    )


def _reading_type(doc: _File, code: Any) -> ReadingType:
    try:
        reading_type = ReadingType(str(code))
    except ValueError as exc:
        raise doc.fail("reading_type", str(exc)) from None
    parts = reading_type.code.split(".")
    if parts[2] not in MEASURING_PERIODS or parts[6] != "12" or parts[16] != "72":
        raise doc.fail(
            "reading_type",
            "interval energy in Wh or kWh: a measuring period (field 3), measurementKind 12, unit 72",
        )
    if parts[3] not in ("1", "2", "3", "4"):
        raise doc.fail(
            "reading_type", "accumulation (field 4) deltaData (4) or a register snapshot (1, 2, 3)"
        )
    return reading_type


def _periods(doc: _File, table: Any) -> dict[str, Decimal]:
    if not isinstance(table, dict) or not table:
        raise doc.fail("periods", "a table of period = price per kWh, e.g. peak = 0.32")
    for period in table:
        if not _NAME.match(period):
            raise doc.fail(f"periods.{period}", "1-64 letters, digits, '-' or '_'")
    return {period: doc.decimal(f"periods.{period}", price) for period, price in table.items()}


def _minute(doc: _File, key: str, text: Any) -> int:
    match = re.fullmatch(r"(\d\d):(\d\d)", text) if isinstance(text, str) else None
    if not match or int(match[2]) % 15 or int(match[1]) > 24 or (int(match[1]) == 24 and int(match[2])):
        raise doc.fail(key, f"a time HH:MM on a quarter hour, 00:00-24:00, got {text!r}")
    return int(match[1]) * 60 + int(match[2])


def _day(doc: _File, key: str, rows: Any, periods: dict[str, Decimal]) -> tuple[Band, ...]:
    if not isinstance(rows, list) or not rows:
        raise doc.fail(key, 'a list of ["HH:MM", "HH:MM", "period"] covering the whole day')
    bands = []
    for index, row in enumerate(rows):
        where = f"{key}[{index}]"
        if not isinstance(row, list) or len(row) != 3:
            raise doc.fail(where, 'expected ["from", "to", "period"]')
        start, end = _minute(doc, where, row[0]), _minute(doc, where, row[1])
        if end <= start:
            raise doc.fail(where, f"ends ({row[1]}) before it starts ({row[0]}); split a band over midnight")
        if row[2] not in periods:
            raise doc.fail(where, f"unknown period {row[2]!r}; periods: {list(periods)}")
        bands.append(Band(start, end, row[2]))
    bands.sort(key=lambda band: band.start)
    reached = 0
    for band in bands:
        if band.start < reached:
            raise doc.fail(key, f"periods overlap at {band.start // 60:02d}:{band.start % 60:02d}")
        if band.start > reached:
            raise doc.fail(key, f"gap in the day from {reached // 60:02d}:{reached % 60:02d}")
        reached = band.end
    if reached != MINUTES_PER_DAY:
        raise doc.fail(key, f"gap in the day from {reached // 60:02d}:{reached % 60:02d} to 24:00")
    return tuple(bands)


def _seasons(doc: _File, seasons: Any, periods: dict[str, Decimal]) -> tuple[Season, ...]:
    if not isinstance(seasons, list) or not seasons:
        raise doc.fail("seasons", "one or more [[seasons]]")
    found = []
    for index, season in enumerate(seasons):
        key = f"seasons[{index}]"
        if not isinstance(season, dict) or set(season) - {"name", "first_day", *DayType}:
            raise doc.fail(key, "a table of name, first_day, weekday, weekend and (optional) holiday")
        text = season.get("first_day", "01-01")
        try:
            month, day = (int(part) for part in str(text).split("-"))
            date(2001, month, day)  # not a leap year: 02-29 is refused
        except ValueError:
            raise doc.fail(f"{key}.first_day", f"a day of the year MM-DD, got {text!r}") from None
        for needed in (DayType.WEEKDAY, DayType.WEEKEND):
            if needed not in season:
                raise doc.fail(f"{key}.{needed}", "missing")
        days = {kind: _day(doc, f"{key}.{kind}", season[kind], periods) for kind in DayType if kind in season}
        days.setdefault(DayType.HOLIDAY, days[DayType.WEEKEND])  # a holiday is priced as a weekend day
        found.append(Season(str(season.get("name", f"season-{index + 1}")), (month, day), days))
    found.sort(key=lambda season: season.first_day)
    starts = [season.first_day for season in found]
    if len(set(starts)) != len(starts):
        raise doc.fail("seasons", "two seasons begin on the same day")
    return tuple(found)


def _blocks(doc: _File, blocks: Any) -> tuple[Block, ...]:
    if not isinstance(blocks, list):
        raise doc.fail("blocks", "a list of [[blocks]] with up_to_kwh and price")
    if not blocks:
        return (Block(None, Decimal(0)),)
    found = []
    previous = Decimal(0)
    for index, block in enumerate(blocks):
        key = f"blocks[{index}]"
        if not isinstance(block, dict) or set(block) - {"up_to_kwh", "price"}:
            raise doc.fail(key, "a table of up_to_kwh and price")
        last = index == len(blocks) - 1
        if last != ("up_to_kwh" not in block):
            raise doc.fail(key, "every block but the last needs up_to_kwh; the last has none")
        limit = None if last else doc.decimal(f"{key}.up_to_kwh", block["up_to_kwh"])
        if limit is not None and limit <= previous:
            raise doc.fail(f"{key}.up_to_kwh", f"must be above the previous block's {previous}")
        found.append(Block(limit, doc.decimal(f"{key}.price", block.get("price", 0), Decimal("-1e9"))))
        previous = limit or previous
    return tuple(found)


def _holidays(doc: _File, data: dict[str, Any], calendars: Path | None) -> frozenset[date]:
    dates = list(data.get("holidays", []))
    name = data.get("calendar")
    if name is not None:
        if not isinstance(name, str) or not _NAME.match(name) or calendars is None:
            raise doc.fail("calendar", f"the name of a calendar file in calendars/, got {name!r}")
        path = calendars / f"{name}.toml"
        try:
            calendar = tomllib.loads(path.read_text())
        except OSError as exc:
            raise doc.fail("calendar", f"{path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise doc.fail("calendar", f"{path}: not valid TOML ({exc})") from None
        dates += calendar.get("holidays", [])
    found = set()
    for value in dates:
        day = value
        if isinstance(value, str):
            try:
                day = date.fromisoformat(value)
            except ValueError:
                raise doc.fail("holidays", f"expected dates YYYY-MM-DD, got {value!r}") from None
        if not isinstance(day, date):
            raise doc.fail("holidays", f"expected dates YYYY-MM-DD, got {value!r}")
        found.add(day)
    return frozenset(found)


def load_tariffs(directory: Path) -> dict[str, Tariff]:
    """Every `<name>.toml` in `directory` (holiday calendars in its calendars/ folder)."""
    try:
        files = sorted(directory.glob("*.toml"))
    except OSError as exc:
        raise TariffError(f"tariff directory {directory}: {exc.strerror}") from None
    tariffs = {}
    for path in files:
        try:
            text = path.read_text()
        except OSError as exc:
            raise TariffError(f"{path}: {exc.strerror}") from None
        tariffs[path.stem] = parse_tariff(text, path.stem, directory / "calendars")
    return tariffs


def install_tariff(directory: Path, name: str, text: str) -> Tariff:
    """Validate a tariff the MDM sent and replace `<name>.toml` atomically. It prices every interval
    apportioned from then on; what was apportioned before keeps the tariff it had."""
    if not _NAME.match(name):
        raise TariffError(f"tariff name {name[:64]!r}: 1-64 letters, digits, '-' or '_'")
    tariff = parse_tariff(text, name, directory / "calendars")
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f".{name}.toml.new"
    with temporary.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(directory / f"{name}.toml")
    return tariff
