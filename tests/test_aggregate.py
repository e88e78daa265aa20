"""Totals per bus and per group, on a real SQLite store: exact sums of additive quantities only, made
when complete or after the grace period (then partial, with who was missing), never twice."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from appliance.aggregate import DERIVED, PARTIAL, SUSPECT, aggregate_due, is_additive
from appliance.collect.meters.catalog import (
    PROFILE_A_PLUS_KWH,
    REGISTER_A_MINUS_KWH,
    REGISTER_A_PLUS_KWH,
    VOLTAGE_L1_V,
)
from appliance.config import Config, load_config
from appliance.model import Reading, ReadingType
from appliance.store import Store
from appliance.store.aggregates import DERIVED as DERIVED_PROTOCOL
from appliance.store.aggregates import partial_totals
from appliance.store.readings import count_readings, readings_between, save_readings
from appliance.store.registry import active_meters, register_config_meters, register_meter
from tests.conftest import meter_spec, write_config

SLOT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # a multiple of 900 s
BUS_A, BUS_B = "hes-t-bus-A", "hes-t-bus-B"

CONFIG = """
[hes]
id = "hes-t"
data_dir = "{data}"
[mqtt]
tls = false
[buses.A]
device = "/dev/null"
[buses.B]
device = "/dev/null"
[aggregation]
bus_totals = {bus_totals}
[[meters]]
id = "M1"
bus = "A"
address = 1
[[meters]]
id = "M2"
bus = "A"
address = 2
model = "generic-wh32"
[[meters]]
id = "M3"
bus = "B"
address = 1
[groups.feeder-7]
meters = ["M1", "M3", "M9"]  # M9 is registered nowhere: it never reports
"""


def make_config(tmp_path: Path, bus_totals: bool = True) -> Config:
    text = CONFIG.format(data=tmp_path, bus_totals=str(bus_totals).lower())
    return load_config(write_config(tmp_path / "hes.toml", text))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "hes.db")
    register_config_meters(store, make_config(tmp_path).meters, 0)
    yield store
    store.close()


def reading(meter: str, rtype: ReadingType, value: str, moment: datetime = SLOT, *qualities: str) -> Reading:
    return Reading(meter, rtype, moment, Decimal(value), qualities)


def totals(store: Store, mrid: str) -> dict[tuple[datetime, str], Reading]:
    return {(r.timestamp, r.reading_type.code): r for r in readings_between(store, mrid, 0, 2**40)}


def later(seconds: int) -> datetime:
    return SLOT + timedelta(seconds=seconds)


def test_complete_slots_at_once_partial_ones_after_the_grace_period(store: Store, tmp_path: Path) -> None:
    config = make_config(tmp_path)
    save_readings(
        store,
        [
            reading("M1", REGISTER_A_PLUS_KWH, "10.5"),
            reading("M1", REGISTER_A_MINUS_KWH, "1"),
            reading("M1", VOLTAGE_L1_V, "231.2"),
            reading("M2", REGISTER_A_PLUS_KWH, "4294967.296"),
            reading("M2", REGISTER_A_MINUS_KWH, "0.001"),
        ],
        1,
    )
    assert aggregate_due(store, config, later(60)) == 2  # bus A is complete; feeder-7 waits
    bus_a = totals(store, BUS_A)
    assert bus_a[(SLOT, REGISTER_A_PLUS_KWH.code)].value == Decimal("4294977.796")  # exact, no float
    assert bus_a[(SLOT, REGISTER_A_MINUS_KWH.code)].value == Decimal("1.001")
    assert {r.qualities for r in bus_a.values()} == {(DERIVED,)}
    assert totals(store, "feeder-7") == {}
    assert totals(store, BUS_B) == {}  # no member reported anything in the slot

    assert aggregate_due(store, config, later(config.aggregation.grace_s)) == 2
    feeder = totals(store, "feeder-7")
    assert feeder[(SLOT, REGISTER_A_PLUS_KWH.code)].value == Decimal("10.5")
    assert {r.qualities for r in feeder.values()} == {(DERIVED, PARTIAL)}
    partial = partial_totals(store, "feeder-7", 0, 2**40)
    assert [(p.reading.reading_type, p.members, p.missing) for p in partial] == [
        (REGISTER_A_PLUS_KWH, 3, ("M3", "M9")),
        (REGISTER_A_MINUS_KWH, 3, ("M3", "M9")),
    ]
    assert partial_totals(store, BUS_A, 0, 2**40) == []  # complete totals need no record

    # Again: nothing new. M3's late reading makes bus B's first total, but the feeder's partial total
    # stays as it is (the MDM may have it).
    before = count_readings(store)
    assert aggregate_due(store, config, later(4000)) == 0
    save_readings(store, [reading("M3", REGISTER_A_PLUS_KWH, "7")], 2)
    assert aggregate_due(store, config, later(5000)) == 1
    assert count_readings(store) == before + 2
    assert totals(store, BUS_B)[(SLOT, REGISTER_A_PLUS_KWH.code)].value == Decimal("7")
    assert totals(store, "feeder-7")[(SLOT, REGISTER_A_PLUS_KWH.code)].value == Decimal("10.5")


def test_only_additive_quantities_on_slot_boundaries(store: Store, tmp_path: Path) -> None:
    config = make_config(tmp_path)
    save_readings(
        store,
        [
            reading("M3", VOLTAGE_L1_V, "230"),
            reading("M3", REGISTER_A_PLUS_KWH, "3", later(300)),  # between slots: no total's member
            reading("M3", REGISTER_A_PLUS_KWH, "2"),
            reading("M3", REGISTER_A_MINUS_KWH, "1", SLOT, "2.5.258"),
        ],
        1,
    )
    assert aggregate_due(store, config, later(60)) == 2
    bus_b = totals(store, BUS_B)
    assert set(bus_b) == {(SLOT, REGISTER_A_MINUS_KWH.code), (SLOT, REGISTER_A_PLUS_KWH.code)}
    assert bus_b[(SLOT, REGISTER_A_PLUS_KWH.code)].qualities == (DERIVED,)
    assert bus_b[(SLOT, REGISTER_A_MINUS_KWH.code)].qualities == (DERIVED, SUSPECT)  # a flagged member


def test_is_additive() -> None:
    assert is_additive(REGISTER_A_PLUS_KWH) and is_additive(PROFILE_A_PLUS_KWH)
    assert is_additive(ReadingType("0.0.0.12.1.1.37.0.0.0.0.0.0.0.0.3.38.0"))  # instantaneous power
    assert not is_additive(VOLTAGE_L1_V)
    assert not is_additive(ReadingType("0.0.0.6.0.1.15.0.0.0.0.0.0.0.0.0.33.0"))  # frequency
    assert not is_additive(ReadingType("0.0.0.6.0.1.38.0.0.0.0.0.0.0.0.0.65.0"))  # power factor
    assert not is_additive(ReadingType("8.8.0.3.1.1.8.0.0.0.0.0.0.0.0.3.38.0"))  # maximum demand


def test_virtual_devices_are_registered_queued_and_never_polled(store: Store, tmp_path: Path) -> None:
    config = make_config(tmp_path)
    save_readings(store, [reading(m, REGISTER_A_PLUS_KWH, "1") for m in ("M1", "M2", "M3")], 1)
    unsent_before = store.conn.execute("SELECT count(*) FROM unsent").fetchone()[0]
    assert aggregate_due(store, config, later(config.aggregation.grace_s)) == 3
    assert store.conn.execute("SELECT count(*) FROM unsent").fetchone()[0] == unsent_before + 3
    protocols = dict(store.conn.execute("SELECT mrid, protocol FROM meters WHERE bus IS NULL"))
    assert protocols == {BUS_A: DERIVED_PROTOCOL, BUS_B: DERIVED_PROTOCOL, "feeder-7": DERIVED_PROTOCOL}
    assert {m.id for m in active_meters(store)} == {"M1", "M2", "M3"}


def test_bus_totals_can_be_switched_off(store: Store, tmp_path: Path) -> None:
    config = make_config(tmp_path, bus_totals=False)
    save_readings(store, [reading(m, REGISTER_A_PLUS_KWH, "1") for m in ("M1", "M3")], 1)
    assert aggregate_due(store, config, later(config.aggregation.grace_s)) == 1
    assert totals(store, BUS_A) == {}
    assert totals(store, "feeder-7")[(SLOT, REGISTER_A_PLUS_KWH.code)].qualities == (DERIVED, PARTIAL)


def test_readings_older_than_the_lookback_are_left_alone(store: Store, tmp_path: Path) -> None:
    config = make_config(tmp_path)
    save_readings(store, [reading("M3", REGISTER_A_PLUS_KWH, "1")], 1)
    assert aggregate_due(store, config, later(config.aggregation.lookback_s + 900)) == 0
    assert aggregate_due(store, config, later(config.aggregation.lookback_s)) == 2  # bus B, feeder-7


def test_a_group_named_like_a_physical_meter_makes_no_totals(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, bus_totals=False)
    register_meter(store, meter_spec("feeder-7", address=9), "mdm", 0)  # the MDM took the name
    save_readings(store, [reading(m, REGISTER_A_PLUS_KWH, "1") for m in ("M1", "M3")], 1)
    with caplog.at_level(logging.ERROR, logger="appliance.aggregate"):
        assert aggregate_due(store, config, later(config.aggregation.grace_s)) == 0
        assert aggregate_due(store, config, later(config.aggregation.grace_s)) == 0
    assert totals(store, "feeder-7") == {}
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["total feeder-7 not made: a physical meter has that mRID; rename the group"]  # once
