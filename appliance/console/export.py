"""`export readings`: stored readings to a USB stick or a directory, as CSV (for a spreadsheet) and
as CIM MeterReadings XML (for an MDM that was offline), one XML file per meter.

Files are fsynced before the command returns: the technician pulls the stick right after.
"""

from __future__ import annotations

import csv
import os
import uuid
from datetime import datetime
from pathlib import Path

from appliance.clock import Clock
from appliance.config import Config
from appliance.errors import HesError
from appliance.model import epoch, unit_symbol
from appliance.store import Store
from appliance.store.readings import readings_between
from appliance.store.registry import list_meters
from appliance.uplink import cim


def export_readings(
    config: Config,
    store: Store,
    clock: Clock,
    start: datetime,
    end: datetime,
    directory: Path,
    meter: str | None = None,
) -> list[Path]:
    """Write the readings with start <= time < end; returns the files written."""
    if not directory.is_dir():
        raise HesError(f"{directory} is not a directory (is the USB stick plugged in and mounted?)")
    if not os.access(directory, os.W_OK):
        raise HesError(f"{directory} is not writable (a write-protected stick?)")
    if end <= start:
        raise HesError("--to must be after --from")
    mrids = [meter] if meter else [row["mrid"] for row in list_meters(store)]
    stem = f"{config.hes.id}-readings-{start:%Y%m%dT%H%M}Z-{end:%Y%m%dT%H%M}Z"
    written: list[Path] = []
    csv_path = directory / f"{stem}.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["meter", "time", "reading_type", "value", "unit", "quality"])
        for mrid in mrids:
            found = readings_between(store, mrid, epoch(start), epoch(end))
            for r in found:
                unit = unit_symbol(r.reading_type)
                row = [mrid, cim.format_time(r.timestamp), r.reading_type.code, str(r.value), unit]
                writer.writerow([*row, ",".join(r.qualities)])
            if found:
                written.append(_write_xml(config, clock, directory / f"{stem}-{mrid}.xml", found))
        handle.flush()
        os.fsync(handle.fileno())
    return [csv_path, *written]


def _write_xml(config: Config, clock: Clock, path: Path, readings: list) -> Path:
    header = cim.Header(
        verb="created",
        noun="MeterReadings",
        timestamp=clock.now(),
        source=config.hes.id,
        message_id=str(uuid.uuid4()),
    )
    with path.open("wb") as handle:
        handle.write(cim.event_message(header, cim.meter_readings(readings)))
        handle.flush()
        os.fsync(handle.fileno())
    return path
