"""The tariff model: prices, seasons, day types, periods and blocks, in the tariff's own time zone.

Amounts are `Decimal` under `EXACT`, a context that raises instead of rounding: every product and sum
the apportionment makes is exact, and rounding happens in one place only (billing.round_money).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow, Rounded
from enum import StrEnum
from zoneinfo import ZoneInfo

from appliance.model import ReadingType

# Any inexact result raises decimal.Inexact: a bug, never a silently rounded cent.
EXACT = Context(prec=80, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact, Rounded])

# ISO 4217: alphabetic code -> (numeric code, minor unit digits). A currency outside this table is
# refused (a typo must not bill in an unknown unit); add a line to support another.
CURRENCIES: dict[str, tuple[int, int]] = {
    "AED": (784, 2), "ARS": (32, 2), "AUD": (36, 2), "BDT": (50, 2), "BGN": (975, 2), "BHD": (48, 3),
    "BRL": (986, 2), "CAD": (124, 2), "CHF": (756, 2), "CLP": (152, 0), "CNY": (156, 2), "COP": (170, 2),
    "CZK": (203, 2), "DKK": (208, 2), "EGP": (818, 2), "EUR": (978, 2), "GBP": (826, 2), "GHS": (936, 2),
    "HKD": (344, 2), "HUF": (348, 2), "IDR": (360, 2), "ILS": (376, 2), "INR": (356, 2), "ISK": (352, 0),
    "JOD": (400, 3), "JPY": (392, 0), "KES": (404, 2), "KRW": (410, 0), "KWD": (414, 3), "MAD": (504, 2),
    "MXN": (484, 2), "MYR": (458, 2), "NGN": (566, 2), "NOK": (578, 2), "NZD": (554, 2), "OMR": (512, 3),
    "PEN": (604, 2), "PHP": (608, 2), "PKR": (586, 2), "PLN": (985, 2), "RON": (946, 2), "RSD": (941, 2),
    "RWF": (646, 0), "SAR": (682, 2), "SEK": (752, 2), "SGD": (702, 2), "THB": (764, 2), "TND": (788, 3),
    "TRY": (949, 2), "TWD": (901, 2), "TZS": (834, 2), "UAH": (980, 2), "UGX": (800, 0), "USD": (840, 2),
    "VND": (704, 0), "XAF": (950, 0), "XOF": (952, 0), "ZAR": (710, 2), "ZMW": (967, 2),
}  # fmt: skip

MINUTES_PER_DAY = 24 * 60
# measuringPeriod (ReadingType field 3) -> interval length in seconds (CIM-NOTES section 4).
MEASURING_PERIODS = {"1": 600, "2": 900, "3": 60, "5": 1800, "6": 300, "7": 3600, "10": 120, "14": 180}
DEMAND_WINDOW_S = 900  # demand is the energy of a clock-aligned quarter hour, times four


class DayType(StrEnum):
    """Which day schedule of a season applies."""

    WEEKDAY = "weekday"
    WEEKEND = "weekend"
    HOLIDAY = "holiday"


@dataclass(frozen=True)
class Band:
    """A stretch of a local day, [start, end) in minutes since midnight, in one period."""

    start: int
    end: int
    period: str


@dataclass(frozen=True)
class Season:
    """From its first day (month, day) until the next season's first day, year after year."""

    name: str
    first_day: tuple[int, int]
    days: dict[DayType, tuple[Band, ...]]  # bands cover the day exactly, in order


@dataclass(frozen=True)
class Block:
    """A consumption block of the billing period: energy up to `up_to_kwh` (cumulative; None: the
    rest) costs `price` per kWh on top of the period's price."""

    up_to_kwh: Decimal | None
    price: Decimal


@dataclass(frozen=True)
class Tariff:
    """One tariff, as validated by loader.py."""

    name: str
    currency: str
    timezone: ZoneInfo
    reading_type: ReadingType  # the interval energy it prices (delta or bulk, Wh or kWh)
    periods: dict[str, Decimal]  # TOU period -> energy price per kWh, in the order of the file
    seasons: tuple[Season, ...]  # ordered by first day
    blocks: tuple[Block, ...]
    holidays: frozenset[date]
    demand_price: Decimal  # per kW of the billing period's maximum 15-minute demand
    demand_periods: frozenset[str]  # the periods whose demand counts (all when empty)
    fixed_daily: Decimal
    tax_percent: Decimal
    billing_day: int  # billing periods start at local midnight of this day of the month

    @property
    def currency_numeric(self) -> int:
        """ISO 4217 numeric code: the ReadingType's 18th field."""
        return CURRENCIES[self.currency][0]

    @property
    def minor_units(self) -> int:
        """Digits after the decimal point of the currency (2 for EUR, 0 for JPY, 3 for KWD)."""
        return CURRENCIES[self.currency][1]

    @property
    def interval_s(self) -> int:
        """The length of the priced intervals, from the ReadingType's measuring period."""
        return MEASURING_PERIODS[self.reading_type.code.split(".")[2]]

    @property
    def is_bulk(self) -> bool:
        """A register snapshot series (a DLMS load profile): the energy is the difference."""
        return self.reading_type.code.split(".")[3] in ("1", "2", "3")

    @property
    def kwh_factor(self) -> Decimal:
        """What one unit of the ReadingType is in kWh (Wh: 0.001, kWh: 1), from its multiplier."""
        return Decimal(1).scaleb(int(self.reading_type.code.split(".")[15]) - 3)

    def period_index(self, period: str) -> int:
        """1-based position of a period in the file: the ReadingType's tou field."""
        return list(self.periods).index(period) + 1

    def local(self, moment: datetime) -> datetime:
        """A UTC instant in the tariff's local time."""
        return moment.astimezone(self.timezone)

    def day_type(self, day: date) -> DayType:
        """Public holidays first, then Saturday and Sunday, then the rest."""
        if day in self.holidays:
            return DayType.HOLIDAY
        return DayType.WEEKEND if day.weekday() >= 5 else DayType.WEEKDAY

    def season(self, day: date) -> Season:
        """The season in force on a local day (the last one that began, wrapping over New Year)."""
        current = self.seasons[-1]
        for season in self.seasons:
            if (day.month, day.day) >= season.first_day:
                current = season
        return current

    def period_at(self, start: datetime) -> str:
        """The TOU period of an interval that starts at `start` (UTC): the interval is priced at
        the period in force at its start, in local time (so DST shifts the UTC hours, not the rule)."""
        local = self.local(start)
        minute = local.hour * 60 + local.minute
        for band in self.season(local.date()).days[self.day_type(local.date())]:
            if band.start <= minute < band.end:
                return band.period
        raise AssertionError("validated day schedules cover every minute")

    def billing_period(self, moment: datetime) -> tuple[datetime, datetime]:
        """[start, end) in UTC of the billing period containing `moment`: local midnight of
        billing_day to the same day a month later."""
        local = self.local(moment)
        year, month = local.year, local.month
        if local.day < self.billing_day:
            year, month = (year - 1, 12) if month == 1 else (year, month - 1)
        start = self._local_midnight(year, month)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return start, self._local_midnight(year, month)

    def _local_midnight(self, year: int, month: int) -> datetime:
        return datetime.combine(date(year, month, self.billing_day), time(0), self.timezone).astimezone(UTC)

    def days_in(self, start: datetime, end: datetime) -> int:
        """Local calendar days in [start, end) (fixed charges are per day; a DST day is one day)."""
        return (self.local(end).date() - self.local(start).date()).days

    def cost_reading_type(self, period: str, block: int) -> ReadingType:
        """The ReadingType of one slice's cost: the energy's interval, direction and commodity;
        measurementKind 3 (currency), tou = the period's index, consumptionTier = the block, unit 0,
        and the currency's ISO 4217 number in the 18th field."""
        parts = self.reading_type.code.split(".")
        tou, tier, currency = str(self.period_index(period)), str(block), str(self.currency_numeric)
        fields = [*parts[:3], "4", parts[4], parts[5], "3", "0", "0", "0", "0", tou, "0", tier]
        return ReadingType(".".join([*fields, "0", "0", "0", currency]))


def demand_window(start: datetime) -> datetime:
    """The clock-aligned quarter hour an interval starting at `start` falls in (for demand)."""
    seconds = int(start.timestamp())
    return datetime.fromtimestamp(seconds - seconds % DEMAND_WINDOW_S, UTC)


def interval_start(tariff: Tariff, end: datetime) -> datetime:
    """Interval readings are stamped with the end of their interval (IEC 61968-9, DLMS capture time)."""
    return end - timedelta(seconds=tariff.interval_s)
