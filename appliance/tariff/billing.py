"""Billing determinants of a billing period and the bill made from them. Pure.

The rounding rule (docs/tariffs.md): interval costs and prepay balances are exact, never rounded.
A bill rounds each of its lines once, to the currency's minor unit, half up (ROUND_HALF_UP: 0.005
EUR becomes 0.01); tax is computed on the sum of the rounded net lines and rounded the same way; the
total is the sum of the rounded lines. So a bill's energy line differs from the exact sum of its
interval costs by less than half a minor unit, and the bill always adds up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext

from appliance.tariff.model import DEMAND_WINDOW_S, EXACT, Tariff, demand_window

ROUNDING = Context(prec=80, rounding=ROUND_HALF_UP)  # the only context that may round


def round_money(amount: Decimal, tariff: Tariff) -> Decimal:
    """The one rounding rule: to the currency's minor unit, half up."""
    return amount.quantize(Decimal(1).scaleb(-tariff.minor_units), context=ROUNDING)


@dataclass(frozen=True)
class Interval:
    """An apportioned interval as billing needs it."""

    start: datetime
    energy_kwh: Decimal


@dataclass(frozen=True)
class Determinants:
    """What a billing period's bill is computed from."""

    meter: str
    tariff: str
    currency: str
    start: datetime
    end: datetime
    energy_by_period: dict[str, Decimal]
    energy_by_block: dict[int, Decimal]
    max_demand_kw: Decimal
    max_demand_at: datetime | None  # the start of the quarter hour of the maximum
    days: int
    intervals: int
    apportioned_cost: Decimal  # the exact sum of the interval costs (energy charges)


@dataclass(frozen=True)
class BillLine:
    """One line: what, how much of it, at what price, and the rounded amount."""

    kind: str  # energy, block, demand, fixed, tax
    label: str
    quantity: Decimal
    unit: str
    price: Decimal
    amount: Decimal


@dataclass(frozen=True)
class Bill:
    """A billing period's determinants, lines and totals."""

    determinants: Determinants
    lines: tuple[BillLine, ...] = field(default=())
    net: Decimal = Decimal(0)
    tax: Decimal = Decimal(0)
    total: Decimal = Decimal(0)


def max_demand(tariff: Tariff, intervals: Iterable[Interval]) -> tuple[Decimal, datetime | None]:
    """The billing period's maximum demand in kW: the energy of each clock-aligned quarter hour
    (intervals shorter than 15 minutes summed, longer ones spread over their hour fraction), in the
    tariff's demand periods only."""
    windows: dict[datetime, Decimal] = {}
    factor = Decimal(3600) / Decimal(max(tariff.interval_s, DEMAND_WINDOW_S))
    with localcontext(EXACT):
        for interval in intervals:
            if tariff.demand_periods and tariff.period_at(interval.start) not in tariff.demand_periods:
                continue
            window = demand_window(interval.start)
            windows[window] = windows.get(window, Decimal(0)) + interval.energy_kwh
        if not windows:
            return Decimal(0), None
        at = max(windows, key=lambda moment: (windows[moment], -moment.timestamp()))
        return windows[at] * factor, at


def energy_charge(tariff: Tariff, energy_by_period: dict[str, Decimal]) -> tuple[Decimal, dict[int, Decimal]]:
    """The tariff applied to a billing period's totals (exact): energy per period at its price,
    plus the total split into blocks at the block prices. Returns the charge and the block split."""
    with localcontext(EXACT):
        charge = sum((energy * tariff.periods[p] for p, energy in energy_by_period.items()), Decimal(0))
        blocks: dict[int, Decimal] = {}
        position, remaining = Decimal(0), sum(energy_by_period.values(), Decimal(0))
        for number, block in enumerate(tariff.blocks, start=1):
            room = remaining if block.up_to_kwh is None else min(remaining, block.up_to_kwh - position)
            if room <= 0:
                break
            blocks[number] = room
            charge += room * block.price
            position += room
            remaining -= room
    return charge, blocks


def make_bill(tariff: Tariff, determinants: Determinants) -> Bill:
    """The bill of a billing period, every line rounded once (see the module's rounding rule)."""
    lines = []
    with localcontext(EXACT):
        for period, energy in determinants.energy_by_period.items():
            price = tariff.periods[period]
            lines.append(
                BillLine("energy", period, energy, "kWh", price, round_money(energy * price, tariff))
            )
        for number, energy in determinants.energy_by_block.items():
            price = tariff.blocks[number - 1].price
            if price:
                amount = round_money(energy * price, tariff)
                lines.append(BillLine("block", f"block {number}", energy, "kWh", price, amount))
        if tariff.demand_price:
            amount = round_money(determinants.max_demand_kw * tariff.demand_price, tariff)
            lines.append(
                BillLine(
                    "demand", "maximum demand", determinants.max_demand_kw, "kW", tariff.demand_price, amount
                )
            )
        if tariff.fixed_daily:
            days = Decimal(determinants.days)
            amount = round_money(days * tariff.fixed_daily, tariff)
            lines.append(BillLine("fixed", "daily charge", days, "day", tariff.fixed_daily, amount))
        net = sum((line.amount for line in lines), Decimal(0))
        tax = round_money(net * tariff.tax_percent / 100, tariff)
        if tariff.tax_percent:
            lines.append(BillLine("tax", "tax", net, tariff.currency, tariff.tax_percent, tax))
    return Bill(determinants, tuple(lines), net, tax, net + tax)
