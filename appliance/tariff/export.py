"""Billing determinants and costs for an ERP: CSV and a CIM MeterReadings EventMessage.

`hes export billing --period 2025-10` writes both for the billing period of every priced meter that
begins in that month (closed bills as stored; a period still open is computed from the ledger and
marked "open"). docs/tariffs.md maps the columns to SAP IS-U.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path

from appliance.errors import TariffError
from appliance.model import epoch, utc_from_epoch
from appliance.store import Store
from appliance.store.tariffs import closed_bill
from appliance.tariff.billing import make_bill
from appliance.tariff.model import Tariff
from appliance.tariff.service import Settings, bill_document, bill_readings, determinants
from appliance.uplink import cim

COLUMNS = (
    "meter", "tariff", "period_start", "period_end", "status", "kind", "label", "quantity", "unit", "price",
    "amount", "currency",
)  # fmt: skip


@dataclass(frozen=True)
class MeterBill:
    """One meter's bill of the period, as stored (closed) or as it stands (open)."""

    meter: str
    tariff: Tariff
    status: str
    document: dict


def period_start(tariff: Tariff, period: str) -> int:
    """The start (epoch) of the billing period that begins in month `period` (YYYY-MM)."""
    if not re.fullmatch(r"\d{4}-\d\d", period) or not 1 <= int(period[5:]) <= 12:
        raise TariffError(f"a billing period is a month YYYY-MM, got {period[:20]!r}")
    day = date(int(period[:4]), int(period[5:]), tariff.billing_day)
    return epoch(datetime.combine(day, time(0), tariff.timezone))


def bills(store: Store, settings: Settings, period: str) -> list[MeterBill]:
    """Every priced meter's bill for the period, closed or open."""
    found = []
    for mrid, name in sorted(settings.meters.items()):
        tariff = settings.tariffs[name]
        start = period_start(tariff, period)
        document = closed_bill(store, mrid, start)
        status = "closed"
        if document is None:
            document, status = (
                bill_document(make_bill(tariff, determinants(store, mrid, tariff, start))),
                "open",
            )
        found.append(MeterBill(mrid, tariff, status, document))
    return found


def to_csv(found: list[MeterBill]) -> str:
    """One row per determinant and per bill line, amounts as exact decimals."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for item in found:
        doc = item.document
        head = [
            item.meter,
            doc["tariff"],
            cim.format_time(utc_from_epoch(doc["start"])),
            cim.format_time(utc_from_epoch(doc["end"])),
            item.status,
        ]
        for name, energy in doc["energyByPeriod"].items():
            writer.writerow([*head, "determinant", f"energy {name}", energy, "kWh", "", "", doc["currency"]])
        demand_at = cim.format_time(utc_from_epoch(doc["maxDemandAt"])) if doc["maxDemandAt"] else ""
        writer.writerow(
            [*head, "determinant", f"maximum demand {demand_at}".strip(), doc["maxDemandKw"], "kW"]
        )
        for line in doc["lines"]:
            fields = [line[name] for name in ("kind", "label", "quantity", "unit", "price", "amount")]
            writer.writerow([*head, *fields, doc["currency"]])
        writer.writerow([*head, "total", "total", "", "", "", doc["total"], doc["currency"]])
    return out.getvalue()


def to_xml(found: list[MeterBill], source: str, now: datetime) -> bytes:
    """A `created MeterReadings` EventMessage any IEC 61968-100 adapter can import."""
    readings = [
        reading for item in found for reading in bill_readings(item.tariff, item.meter, item.document)
    ]
    header = cim.Header(
        "created", "MeterReadings", now, source, str(uuid.uuid4()), None, (("Reason", "billing"),)
    )
    return cim.event_message(header, cim.meter_readings(readings))


def write_export(
    store: Store, settings: Settings, period: str, directory: Path, source: str, now: datetime
) -> tuple[Path, Path]:
    """Write billing-<period>.csv and billing-<period>.xml into `directory`; returns both paths."""
    found = bills(store, settings, period)
    directory.mkdir(parents=True, exist_ok=True)
    csv_path, xml_path = directory / f"billing-{period}.csv", directory / f"billing-{period}.xml"
    csv_path.write_text(to_csv(found))
    xml_path.write_bytes(to_xml(found, source, now))
    return csv_path, xml_path
