"""A month of 15-minute data across the DST change and a public holiday, apportioned in the store:
re-read intervals are not charged twice, the bill agrees with the costs, the export validates."""

from __future__ import annotations

import csv
import io
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.config import load_config
from appliance.model import Reading, ReadingType
from appliance.store import Store
from appliance.store.readings import readings_between, save_readings
from appliance.store.registry import register_config_meters
from appliance.store.tariffs import watch_series
from appliance.tariff import prepay
from appliance.tariff.billing import energy_charge
from appliance.tariff.export import bills, to_csv, to_xml, write_export
from appliance.tariff.loader import load_tariffs, parse_tariff
from appliance.tariff.model import Tariff
from appliance.tariff.service import Settings, apportion_pending, close_billing_periods
from appliance.uplink import cim
from tests.conftest import REPO, CimSchemas, meter_spec, write_config

TARIFF = load_tariffs(REPO / "config" / "tariffs")["residential-tou"]
A_PLUS_15 = ReadingType("0.0.2.4.1.1.12.0.0.0.0.0.0.0.0.3.72.0")
# October 2025 in Berlin: from 1 Oct 00:00 CEST to 1 Nov 00:00 CET, with 26 October 25 hours long.
MONTH_START = datetime(2025, 9, 30, 22, tzinfo=UTC)
MONTH_END = datetime(2025, 10, 31, 23, tzinfo=UTC)
QUARTERS = int((MONTH_END - MONTH_START).total_seconds() // 900)


def settings(meters: dict[str, str], prepaid: tuple[str, ...] = ()) -> Settings:
    friendly = prepay.Friendly(18 * 60, 8 * 60, True, True)
    return Settings(
        tariffs={"residential-tou": TARIFF},
        meters=meters,
        prepay=prepaid,
        policy=prepay.Policy(Decimal("5"), Decimal("10"), friendly),
        interval_s=1,
        gap_wait_s=86400,
        close_grace_s=3600,
        relay_retry_s=1,
    )


def month_of_data(meter: str) -> list[Reading]:
    rng = random.Random(7)
    return [
        Reading(
            meter,
            A_PLUS_15,
            MONTH_START + timedelta(minutes=15 * (i + 1)),
            Decimal(rng.randint(0, 900)) / 1000,
        )
        for i in range(QUARTERS)
    ]


def cost_readings(store: Store, meter: str) -> list[Reading]:
    return [r for r in readings_between(store, meter, 0, 2**40) if r.reading_type.code.split(".")[6] == "3"]


def expected_by_period(tariff: Tariff, readings: list[Reading]) -> dict[str, Decimal]:
    """Independently of the ledger: each interval's energy in the period in force at its start."""
    found: dict[str, Decimal] = {}
    for reading in readings:
        period = tariff.period_at(reading.timestamp - timedelta(minutes=15))
        found[period] = found.get(period, Decimal(0)) + reading.value
    return found


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "hes.db")
    register_config_meters(store, [meter_spec("M1"), meter_spec("M2", 2)], 0)
    watch_series(store, [("M1", A_PLUS_15.code)])
    return store


def test_a_month_across_dst_and_a_holiday(store: Store, tmp_path: Path, cim_schemas: CimSchemas) -> None:
    assert QUARTERS == 31 * 96 + 4  # the extra hour of 26 October
    data = month_of_data("M1")
    late = data.pop(500)  # an interval the meter delivers only after the bill was made
    config = settings({"M1": "residential-tou"})
    after = MONTH_END + timedelta(days=2)

    save_readings(store, data[:1500], 0)
    save_readings(store, month_of_data("M2")[:100], 0)  # a meter without a tariff: never priced
    assert apportion_pending(store, config, after) == 1500
    save_readings(store, data, 0)  # the first 1500 read again: only the new ones queue
    assert apportion_pending(store, config, after) == len(data) - 1500
    assert apportion_pending(store, config, after) == 0
    assert not cost_readings(store, "M2")

    costs = cost_readings(store, "M1")
    by_period = expected_by_period(TARIFF, data)
    exact, blocks = energy_charge(TARIFF, by_period)
    assert sum(r.value for r in costs) == exact  # every interval's cost adds up to the tariff of the total
    assert {r.reading_type.code.split(".")[17] for r in costs} == {"978"}
    assert blocks[2] > 0  # the month went past the first block
    crossing = [t for t in {r.timestamp for r in costs} if len([r for r in costs if r.timestamp == t]) == 2]
    assert len(crossing) == 1  # one interval straddles the block limit: two slices

    # DST: 26 October has 100 quarter hours, each with a cost; the holiday (3 October) is all off-peak.
    local_days = [TARIFF.local(r.timestamp - timedelta(minutes=15)).date() for r in costs]
    assert local_days.count(datetime(2025, 10, 26).date()) == 100
    holiday = [r for r, day in zip(costs, local_days, strict=True) if day == datetime(2025, 10, 3).date()]
    assert len(holiday) == 96 and {r.reading_type.code.split(".")[11] for r in holiday} == {"3"}

    # The month closes once its grace period is over, once.
    assert close_billing_periods(store, config, MONTH_END + timedelta(minutes=30)) == 0
    assert close_billing_periods(store, config, after) == 1
    assert close_billing_periods(store, config, after) == 0
    (october,) = bills(store, config, "2025-10")
    assert october.status == "closed"
    document = october.document
    assert document["intervals"] == len(data) and document["days"] == 31
    assert Decimal(document["apportionedCost"]) == exact
    assert {p: Decimal(e) for p, e in document["energyByPeriod"].items()} == by_period
    assert Decimal(document["total"]) == sum(Decimal(line["amount"]) for line in document["lines"])
    fixed = next(line for line in document["lines"] if line["kind"] == "fixed")
    assert Decimal(fixed["amount"]) == Decimal("13.02")  # 31 days x 0.42

    # The late interval is charged once, in the open November period: October's bill stays as it was.
    save_readings(store, [late], 0)
    assert apportion_pending(store, config, after) == 1
    assert bills(store, config, "2025-10")[0].document == document
    (november,) = bills(store, config, "2025-11")
    assert november.status == "open" and november.document["intervals"] == 1

    # The determinants went to the store as billing-period readings, for the MDM.
    billing = [r for r in readings_between(store, "M1", 0, 2**40) if r.reading_type.code.startswith("8.")]
    assert {r.timestamp for r in billing} == {MONTH_END}
    assert Decimal(document["total"]) in {r.value for r in billing}

    # Costs and the export as CIM: valid against the public schemas, currency in the ReadingType.
    header = cim.Header("created", "MeterReadings", after, "hes-test", "m-1")
    cim_schemas.validate(cim.event_message(header, cim.meter_readings(costs[:200])))
    xml = to_xml([october], "hes-test", after)
    cim_schemas.validate(xml)
    assert '.0.0.0.0.0.978"' in xml.decode()
    rows = list(csv.DictReader(io.StringIO(to_csv([october]))))
    assert rows[-1]["kind"] == "total" and Decimal(rows[-1]["amount"]) == Decimal(document["total"])
    assert sum(Decimal(r["amount"]) for r in rows if r["kind"] not in ("determinant", "total")) == Decimal(
        document["total"]
    )
    csv_path, xml_path = write_export(store, config, "2025-10", tmp_path / "out", "hes-test", after)
    assert csv_path.read_text() == to_csv([october]) and xml_path.read_bytes().startswith(b"<?xml")


def test_a_register_profile_is_priced_by_differences_and_gaps_are_charged_once(store: Store) -> None:
    """A DLMS load profile holds register snapshots (Wh): an interval's energy is the difference; a
    gap waits for the catch-up, and what arrives inside a gap already charged costs nothing."""
    bulk_code = "0.0.2.1.1.1.12.0.0.0.0.0.0.0.0.0.72.0"
    text = (REPO / "config" / "tariffs" / "residential-tou.toml").read_text()
    tariff = load_tariffs_from_text(text.replace(A_PLUS_15.code, bulk_code))
    config = settings({"M1": "residential-tou"})
    config = Settings(**{**config.__dict__, "tariffs": {"residential-tou": tariff}})
    watch_series(store, [("M1", bulk_code)])
    start = datetime(2025, 10, 6, 8, tzinfo=UTC)

    def snapshot(quarter: int, wh: int) -> Reading:
        return Reading("M1", ReadingType(bulk_code), start + timedelta(minutes=15 * quarter), Decimal(wh))

    save_readings(
        store, [snapshot(0, 10_000), snapshot(1, 10_400), snapshot(2, 10_900), snapshot(5, 12_400)], 0
    )
    soon = start + timedelta(hours=2)
    assert apportion_pending(store, config, soon) == 2  # 0 is the baseline; 5 waits for 3 and 4
    save_readings(store, [snapshot(3, 11_300)], 0)  # the catch-up fills part of the gap
    assert apportion_pending(store, config, soon) == 1  # 3 now; 5 still waits for 4
    later = start + timedelta(days=2)
    assert apportion_pending(store, config, later) == 1  # 5 takes the rest of the gap (3 to 5)
    save_readings(store, [snapshot(4, 11_800)], 0)  # too late: inside the gap 5 charged
    assert apportion_pending(store, config, later) == 0
    costs = cost_readings(store, "M1")
    energy = store.conn.execute("SELECT energy FROM tariff_intervals WHERE state = 'charged'").fetchall()
    assert sum(Decimal(e) for (e,) in energy) == Decimal("2.400")  # 12 400 - 10 000 Wh, once
    assert sum(r.value for r in costs) > 0
    states = dict(store.conn.execute("SELECT ts - ?, state FROM tariff_intervals", (int(start.timestamp()),)))
    assert states == {
        0: "baseline",
        900: "charged",
        1800: "charged",
        2700: "charged",
        3600: "covered",
        4500: "charged",
    }


def load_tariffs_from_text(text: str) -> Tariff:
    return parse_tariff(text, "residential-tou", REPO / "config" / "tariffs" / "calendars")


def test_costs_keep_the_time_of_their_interval(store: Store) -> None:
    data = month_of_data("M1")[:4]
    save_readings(store, data, 0)
    apportion_pending(store, settings({"M1": "residential-tou"}), MONTH_END)
    assert [r.timestamp for r in cost_readings(store, "M1")] == [r.timestamp for r in data]


def test_hes_export_billing_writes_csv_and_xml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overlay = write_config(
        tmp_path / "hes.toml",
        f'[hes]\ndata_dir = "{tmp_path}"\n[tariffs]\ndir = "{REPO / "config" / "tariffs"}"\n'
        'meters = { M1 = "residential-tou" }\n',
    )
    files = ["-c", str(REPO / "tests" / "data" / "no-tls.toml"), "-c", str(overlay)]
    config = load_config(*files[1::2])
    store = Store(config.store_path)
    register_config_meters(store, [meter_spec("M1")], 0)
    watch_series(store, [("M1", A_PLUS_15.code)])
    save_readings(store, month_of_data("M1")[:96], 0)
    apportion_pending(store, settings({"M1": "residential-tou"}), MONTH_END)
    store.close()
    assert main(["export", "billing", "--period", "2025-10", "--out", str(tmp_path / "out"), *files]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "billing-2025-10.csv").open()))
    assert {row["status"] for row in rows} == {"open"} and rows[-1]["kind"] == "total"
    assert capsys.readouterr().out.split() == [
        str(tmp_path / "out" / f"billing-2025-10.{x}") for x in ("csv", "xml")
    ]
    assert main(["export", "billing", "--period", "2025-13", "--out", str(tmp_path / "out"), *files]) == 1
