"""One interval's energy into costs, split by TOU period and consumption block. Pure and exact.

The block an interval's energy falls in depends on what the billing period used before it (in the
order intervals are apportioned). A block price is added to the period's price, so the energy charge
of a billing period is the same whatever order its intervals arrive in:
sum over periods (E_p x period price) + sum over blocks (E_b x block price), which is exactly
`billing.energy_charge` of the totals.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext

from appliance.tariff.model import EXACT, Tariff


@dataclass(frozen=True)
class Slice:
    """Part of one interval: its energy in one period and one block, and what that costs (exact)."""

    period: str
    block: int  # 1-based, the ReadingType's consumptionTier
    energy_kwh: Decimal
    amount: Decimal


def apportion(tariff: Tariff, start: datetime, energy_kwh: Decimal, used_kwh: Decimal) -> list[Slice]:
    """The slices of an interval starting at `start` (UTC) with `energy_kwh` (0 or more), when
    `used_kwh` of its billing period were apportioned before it. Always at least one slice, so an
    interval without consumption still has its (zero) cost."""
    period = tariff.period_at(start)
    price = tariff.periods[period]
    slices: list[Slice] = []
    with localcontext(EXACT):
        position, remaining = used_kwh, energy_kwh
        for number, block in enumerate(tariff.blocks, start=1):
            if block.up_to_kwh is not None and position >= block.up_to_kwh:
                continue
            room = remaining if block.up_to_kwh is None else min(remaining, block.up_to_kwh - position)
            if room > 0 or not slices:
                slices.append(Slice(period, number, room, room * (price + block.price)))
            position += room
            remaining -= room
            if remaining == 0:
                break
    return slices


def energy_of(tariff: Tariff, value: Decimal, previous: Decimal | None) -> Decimal:
    """kWh of an interval from its reading: the value itself (deltas), or the difference from the
    previous snapshot (a bulk register profile). A negative difference (a meter reset or exchange)
    counts as nothing: a customer is never paid for a reset."""
    with localcontext(EXACT):
        raw = value if previous is None else value - previous
        return max(raw, Decimal(0)) * tariff.kwh_factor
