"""Prepay accounts: the credit, its burn-down, emergency credit and the relay decision. Pure.

Balance >= low threshold: in credit. Below it: one low-credit warning. At or below 0: the emergency
credit is in use (one event). At or below minus the emergency credit: exhausted; the relay opens,
but never inside a friendly period (nights, weekends, holidays as configured): then it opens when the
friendly period ends. A top-up that brings the balance above 0 (the emergency credit repaid) closes
the relay again. The service journals every change of balance (store/tariffs.py).

EndDeviceEvent codes are ours (no public prepayment codes were found): to agree with the MDM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal, localcontext
from enum import StrEnum

from appliance.errors import TariffError
from appliance.tariff.model import EXACT

LOW_CREDIT = "3.15.26.150"  # LoadControl / ControlPoint / MinLimitReached
EMERGENCY_CREDIT = "3.15.26.4"  # ... / Activated: the emergency credit is in use
CREDIT_EXHAUSTED = "3.15.26.85"  # ... / Failed: credit and emergency credit are gone
CREDITED = "3.15.26.24"  # ... / Changed: a top-up was credited
DISCONNECTED = "3.31.0.68"  # RCDSwitch / Disconnected (for lack of credit)
RECONNECTED = "3.31.0.42"  # RCDSwitch / Connected (after a top-up)


class Relay(StrEnum):
    """The supply as the account last saw it switched."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True)
class Friendly:
    """When the supply is never cut: a nightly window (local minutes; from > to wraps midnight;
    equal: none), weekends, public holidays."""

    night_from: int
    night_to: int
    weekends: bool
    holidays: bool

    def covers(self, local: datetime, holidays: frozenset[date]) -> bool:
        """Whether `local` (the tariff's local time) lies in a friendly period."""
        if self.holidays and local.date() in holidays:
            return True
        if self.weekends and local.weekday() >= 5:
            return True
        minute = local.hour * 60 + local.minute
        if self.night_from <= self.night_to:
            return self.night_from <= minute < self.night_to
        return minute >= self.night_from or minute < self.night_to


def parse_friendly(nights: str, weekends: bool, holidays: bool) -> Friendly:
    """Friendly periods from the config: nights as "HH:MM-HH:MM" local time ("" for none)."""
    if not nights:
        return Friendly(0, 0, weekends, holidays)
    match = re.fullmatch(r"(\d\d):(\d\d)-(\d\d):(\d\d)", nights)
    if not match or int(match[1]) > 23 or int(match[3]) > 23 or int(match[2]) > 59 or int(match[4]) > 59:
        raise TariffError(f'friendly nights as "HH:MM-HH:MM" (e.g. "20:00-07:00") or "", got {nights!r}')
    return Friendly(
        int(match[1]) * 60 + int(match[2]), int(match[3]) * 60 + int(match[4]), weekends, holidays
    )


@dataclass(frozen=True)
class Policy:
    """The prepay settings of the box ([tariffs] in the config)."""

    low_credit: Decimal
    emergency_credit: Decimal
    friendly: Friendly


@dataclass(frozen=True)
class Account:
    """One meter's prepay account."""

    meter: str
    currency: str
    balance: Decimal
    relay: Relay = Relay.CONNECTED
    low_warned: bool = False
    emergency_warned: bool = False


@dataclass(frozen=True)
class Notice:
    """Something the MDM hears about: an EndDeviceEvent type and why."""

    event_type: str
    reason: str


def charge(account: Account, amount: Decimal, policy: Policy) -> tuple[Account, list[Notice]]:
    """The account after `amount` of apportioned cost, with the warnings that crossing brought."""
    with localcontext(EXACT):
        balance = account.balance - amount
    after = replace(account, balance=balance)
    notices = []
    if balance < policy.low_credit and not account.low_warned:
        after = replace(after, low_warned=True)
        notices.append(Notice(LOW_CREDIT, f"credit low: {balance} {account.currency}"))
    if balance <= 0 and policy.emergency_credit and not account.emergency_warned:
        after = replace(after, emergency_warned=True)
        notices.append(Notice(EMERGENCY_CREDIT, f"emergency credit of {policy.emergency_credit} in use"))
    if exhausted(after, policy) and not exhausted(account, policy):
        notices.append(Notice(CREDIT_EXHAUSTED, f"credit and emergency credit used up: {balance}"))
    return after, notices


def top_up(account: Account, amount: Decimal, policy: Policy) -> tuple[Account, list[Notice]]:
    """The account after a top-up; the warnings re-arm once the balance is above their thresholds."""
    with localcontext(EXACT):
        balance = account.balance + amount
    after = replace(
        account,
        balance=balance,
        low_warned=account.low_warned and balance < policy.low_credit,
        emergency_warned=account.emergency_warned and balance <= 0,
    )
    return after, [Notice(CREDITED, f"top-up of {amount} {account.currency}: balance {balance}")]


def exhausted(account: Account, policy: Policy) -> bool:
    """Credit and emergency credit are gone."""
    return account.balance <= -policy.emergency_credit


def relay_action(account: Account, local: datetime, holidays: frozenset[date], policy: Policy) -> str | None:
    """ "disconnect", "connect" or None: what the relay needs now (`local`: the tariff's local time)."""
    if account.relay is Relay.CONNECTED and exhausted(account, policy):
        return None if policy.friendly.covers(local, holidays) else "disconnect"
    if account.relay is Relay.DISCONNECTED and account.balance > 0:
        return "connect"
    return None
