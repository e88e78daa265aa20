"""The tariff model, its validation and the arithmetic of apportionment (property-based)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.errors import TariffError
from appliance.tariff.apportion import apportion, energy_of
from appliance.tariff.billing import Determinants, energy_charge, make_bill, round_money
from appliance.tariff.loader import install_tariff, load_tariffs, parse_tariff
from appliance.tariff.model import Tariff
from tests.conftest import REPO

TARIFFS = REPO / "config" / "tariffs"

BASE = """
currency = "EUR"
timezone = "Europe/Berlin"
reading_type = "0.0.2.4.1.1.12.0.0.0.0.0.0.0.0.3.72.0"
[periods]
peak = 0.30
offpeak = 0.20
[[seasons]]
first_day = "01-01"
weekday = [["00:00", "07:00", "offpeak"], ["07:00", "21:00", "peak"], ["21:00", "24:00", "offpeak"]]
weekend = [["00:00", "24:00", "offpeak"]]
"""


def tariff(text: str = BASE, blocks: str = "") -> Tariff:
    return parse_tariff(text + blocks, "test")


def test_the_example_tariffs_load() -> None:
    tariffs = load_tariffs(TARIFFS)
    assert set(tariffs) == {"residential-tou", "commercial-demand"}
    residential = tariffs["residential-tou"]
    assert residential.currency_numeric == 978 and residential.minor_units == 2
    assert [s.name for s in residential.seasons] == ["summer", "winter"]
    assert residential.periods["peak"] == Decimal("0.3412")  # read as a decimal, not a float


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('["07:00", "21:00", "peak"]', '["06:00", "21:00", "peak"]'), "overlap at 06:00"),
        (('["07:00", "21:00", "peak"]', '["07:30", "21:00", "peak"]'), "gap in the day from 07:00"),
        (
            ('["21:00", "24:00", "offpeak"]', '["21:00", "23:00", "offpeak"]'),
            "gap in the day from 23:00 to 24:00",
        ),
        (('"EUR"', '"EUX"'), "unknown ISO 4217 currency 'EUX'"),
        (('"Europe/Berlin"', '"Europe/Atlantis"'), "unknown IANA time zone"),
        (('"07:00", "21:00", "peak"', '"07:00", "21:00", "lunch"'), "unknown period 'lunch'"),
        (('"07:00", "21:00"', '"07:10", "21:00"'), "on a quarter hour"),
        (("0.0.2.4.1.1.12", "0.0.0.4.1.1.12"), "interval energy"),
        (('weekend = [["00:00", "24:00", "offpeak"]]', ""), "weekend: missing"),
        (("peak = 0.30", 'peak = "cheap"'), "expected a number"),
    ],
)
def test_invalid_tariffs_are_refused_with_the_reason(change: tuple[str, str], message: str) -> None:
    with pytest.raises(TariffError, match=message) as error:
        tariff(BASE.replace(*change))
    assert str(error.value).startswith("tariff test: ")


def test_blocks_need_rising_limits_and_an_open_last_block() -> None:
    with pytest.raises(TariffError, match="the last has none"):
        tariff(blocks="[[blocks]]\nup_to_kwh = 10\nprice = 0\n")
    with pytest.raises(TariffError, match="above the previous block"):
        tariff(blocks="[[blocks]]\nup_to_kwh = 10\n[[blocks]]\nup_to_kwh = 5\n[[blocks]]\nprice = 1\n")


def test_install_refuses_a_bad_tariff_and_keeps_the_old_one(tmp_path: Path) -> None:
    install_tariff(tmp_path, "home", BASE)
    with pytest.raises(TariffError, match="overlap"):
        install_tariff(tmp_path, "home", BASE.replace('["07:00", "21:00"', '["06:00", "21:00"'))
    assert load_tariffs(tmp_path)["home"].periods["peak"] == Decimal("0.30")
    assert [p.name for p in tmp_path.iterdir()] == ["home.toml"]


def test_periods_follow_local_time_across_dst_and_holidays() -> None:
    t = tariff('holidays = ["2025-10-03"]\n' + BASE)
    # 2025-03-31 (Monday, CEST = UTC+2): 07:00 local is 05:00 UTC.
    assert t.period_at(datetime(2025, 3, 31, 4, 45, tzinfo=UTC)) == "offpeak"
    assert t.period_at(datetime(2025, 3, 31, 5, 0, tzinfo=UTC)) == "peak"
    # 2025-03-28 (Friday, CET = UTC+1): 07:00 local is 06:00 UTC.
    assert t.period_at(datetime(2025, 3, 28, 5, 45, tzinfo=UTC)) == "offpeak"
    assert t.period_at(datetime(2025, 3, 28, 6, 0, tzinfo=UTC)) == "peak"
    # Friday 3 October is a holiday: priced as the weekend.
    assert t.period_at(datetime(2025, 10, 3, 10, 0, tzinfo=UTC)) == "offpeak"
    assert t.period_at(datetime(2025, 10, 2, 10, 0, tzinfo=UTC)) == "peak"


def test_billing_periods_are_local_months() -> None:
    t = tariff()
    start, end = t.billing_period(datetime(2025, 10, 15, tzinfo=UTC))
    assert (start, end) == (datetime(2025, 9, 30, 22, tzinfo=UTC), datetime(2025, 10, 31, 23, tzinfo=UTC))
    assert t.days_in(start, end) == 31
    # 1 November 00:00 in Berlin (CET) is 31 October 23:00 UTC: the next billing period.
    assert t.billing_period(datetime(2025, 10, 31, 23, 30, tzinfo=UTC))[0] == end


def test_the_cost_reading_type_carries_period_block_and_currency() -> None:
    code = tariff(blocks="[[blocks]]\nup_to_kwh = 10\n[[blocks]]\nprice = 0.05\n").cost_reading_type(
        "offpeak", 2
    )
    fields = code.code.split(".")
    assert fields[6] == "3"  # measurementKind: currency
    assert fields[11] == "2" and fields[13] == "2"  # tou: offpeak is the second period; block 2
    assert fields[17] == "978"  # ISO 4217 EUR
    assert code.is_interval


def test_an_interval_crossing_a_block_limit_is_split() -> None:
    t = tariff(blocks="[[blocks]]\nup_to_kwh = 10\nprice = 0\n[[blocks]]\nprice = 0.05\n")
    start = datetime(2025, 10, 2, 10, tzinfo=UTC)  # a weekday, peak
    slices = apportion(t, start, Decimal("3.5"), Decimal("8"))
    assert [(s.block, s.energy_kwh, s.amount) for s in slices] == [
        (1, Decimal("2"), Decimal("0.60")),
        (2, Decimal("1.5"), Decimal("0.525")),
    ]
    assert apportion(t, start, Decimal(0), Decimal(20))[0].block == 2  # a zero interval still has a slice


def test_energy_from_register_snapshots_never_goes_negative() -> None:
    wh = tariff(
        BASE.replace("0.0.2.4.1.1.12.0.0.0.0.0.0.0.0.3.72.0", "0.0.2.1.1.1.12.0.0.0.0.0.0.0.0.0.72.0")
    )
    assert wh.is_bulk and energy_of(wh, Decimal(12500), Decimal(12000)) == Decimal("0.500")
    assert energy_of(wh, Decimal(10), Decimal(12000)) == 0  # a reset is not paid back


PRICES = st.decimals(min_value=Decimal("0"), max_value=Decimal("2"), places=5)
ENERGY = st.decimals(min_value=Decimal("0"), max_value=Decimal("50"), places=4)


@st.composite
def tariffs(draw: st.DrawFn) -> Tariff:
    peak, offpeak = draw(PRICES), draw(PRICES)
    limits = sorted(set(draw(st.lists(st.integers(1, 400), max_size=3))))
    blocks = "".join(f"[[blocks]]\nup_to_kwh = {limit}\nprice = {draw(PRICES)}\n" for limit in limits)
    blocks += f"[[blocks]]\nprice = {draw(PRICES)}\n" if limits else ""
    text = BASE.replace("peak = 0.30", f"peak = {peak}").replace("offpeak = 0.20", f"offpeak = {offpeak}")
    return tariff(text, blocks)


@settings(max_examples=150, deadline=None)
@given(
    tariffs(),
    st.lists(st.tuples(st.integers(0, 4 * 24 * 30), ENERGY), min_size=1, max_size=120),
    st.randoms(),
)
def test_apportioned_costs_add_up_to_the_tariff_applied_to_the_total(
    t: Tariff, intervals: list[tuple[int, Decimal]], shuffle: random.Random
) -> None:
    """Whatever the order intervals arrive in, the sum of their exact costs is the tariff applied to
    the totals; energy is neither lost nor counted twice between slices."""
    month = datetime(2025, 3, 1, tzinfo=UTC)
    shuffle.shuffle(intervals)
    used = Decimal(0)
    total_cost = Decimal(0)
    by_period: dict[str, Decimal] = {}
    for quarter, energy in intervals:
        slices = apportion(t, month + timedelta(minutes=15 * quarter), energy, used)
        assert sum(s.energy_kwh for s in slices) == energy
        for s in slices:
            by_period[s.period] = by_period.get(s.period, Decimal(0)) + s.energy_kwh
            limit = t.blocks[s.block - 1].up_to_kwh
            assert limit is None or used + s.energy_kwh <= limit
            used += s.energy_kwh
            total_cost += s.amount
    charge, blocks = energy_charge(t, by_period)
    assert total_cost == charge  # exact: not one rounding anywhere
    assert sum(blocks.values()) == used


@settings(max_examples=100, deadline=None)
@given(tariffs(), st.dictionaries(st.sampled_from(["peak", "offpeak"]), ENERGY, min_size=1))
def test_a_bill_adds_up_and_each_line_is_within_half_a_cent(t: Tariff, by_period: dict[str, Decimal]) -> None:
    exact, blocks = energy_charge(t, by_period)
    start, end = t.billing_period(datetime(2025, 3, 10, tzinfo=UTC))
    determinants = Determinants(
        "M", "test", "EUR", start, end, by_period, blocks, Decimal(0), None, t.days_in(start, end), 1, exact
    )
    bill = make_bill(t, determinants)
    assert bill.total == sum(line.amount for line in bill.lines)
    assert all(line.amount == round_money(line.amount, t) for line in bill.lines)
    energy_lines = sum(line.amount for line in bill.lines if line.kind in ("energy", "block"))
    assert abs(energy_lines - exact) <= Decimal("0.005") * len(bill.lines)


def test_rounding_is_half_up_to_the_minor_unit() -> None:
    t = tariff()
    assert round_money(Decimal("0.005"), t) == Decimal("0.01")
    assert round_money(Decimal("0.0049999"), t) == Decimal("0.00")
    assert round_money(Decimal("2.675"), t) == Decimal("2.68")  # a float would say 2.67
    yen = tariff(BASE.replace('"EUR"', '"JPY"'))
    assert round_money(Decimal("10.5"), yen) == Decimal("11")
