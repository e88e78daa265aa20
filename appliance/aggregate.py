"""Totals per bus and per configured group of meters (a feeder, a transformer), as readings of their
own: a virtual device whose mRID is the group's name, every value marked derived.

Only additive quantities are totalled (energy and power; never voltage, frequency or power factor).
A slot's total is made once every member has reported, or once `grace_s` has passed, then with the
members there are and marked partial. A total is never changed afterwards: the MDM may have it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from appliance.collect.meters import get_model
from appliance.collect.meters.dlms import DlmsModel
from appliance.config import Config, bus_total_id
from appliance.model import Reading, ReadingType, epoch
from appliance.store import Store
from appliance.store.aggregates import (
    Total,
    prune_partial_totals,
    register_devices,
    save_totals,
    slot_readings,
)
from appliance.store.registry import active_meters

log = logging.getLogger(__name__)

DERIVED = "2.11.0"  # HES / derived / deterministic: a sum of measured values
PARTIAL = "2.4.2"  # some members had not reported when the grace period ended
SUSPECT = "2.5.258"  # a member's value was itself flagged

# measurementKind (field 7 of a ReadingType): energy and power add up across meters.
_ADDITIVE_KINDS = {"12", "37"}
# aggregate (field 2): none, average and sum add up; maxima, minima and the like do not.
_ADDITIVE_AGGREGATES = {"0", "2", "26"}

_refused: set[str] = set()  # group names a physical meter holds, logged once per process


def is_additive(reading_type: ReadingType) -> bool:
    """Whether the sum over meters of this quantity means something (energy, power)."""
    parts = reading_type.code.split(".")
    return parts[6] in _ADDITIVE_KINDS and parts[1] in _ADDITIVE_AGGREGATES


def additive_types(model_name: str) -> frozenset[ReadingType]:
    """The additive ReadingTypes a meter model delivers (none for a model this box does not know)."""
    try:
        model = get_model(model_name)
    except KeyError:
        return frozenset()
    if isinstance(model, DlmsModel):
        types = [r.reading_type for r in model.registers]
        types += list(model.profile.columns.values()) if model.profile else []
    else:
        types = [c.reading_type for c in model.channels]
    return frozenset(t for t in types if is_additive(t))


@dataclass(frozen=True)
class Group:
    """A total's virtual device and its members, each with the additive ReadingTypes it delivers.

    A member the registry does not know is expected for every type of the group: it stays missing.
    """

    device: str
    members: dict[str, frozenset[ReadingType]]

    def reading_types(self) -> frozenset[ReadingType]:
        return frozenset().union(*self.members.values())

    def expected(self, reading_type: ReadingType) -> list[str]:
        """The members that deliver `reading_type`."""
        return sorted(m for m, types in self.members.items() if not types or reading_type in types)


def groups_of(config: Config, meters: Sequence[tuple[str, str, str]]) -> list[Group]:
    """The bus totals (if enabled) and the configured groups, from (mRID, bus, model) of the active
    meters. Only the config's RS-485 buses get a total."""
    models = {mrid: model for mrid, _, model in meters}
    groups = []
    if config.aggregation.bus_totals:
        for bus in config.buses:
            members = {mrid: additive_types(models[mrid]) for mrid, on, _ in meters if on == bus}
            if members:
                groups.append(Group(bus_total_id(config.hes.id, bus), members))
    for name, spec in config.groups.items():
        groups.append(
            Group(name, {m: additive_types(models[m]) if m in models else frozenset() for m in spec.meters})
        )
    return [g for g in groups if g.reading_types()]


def totals_due(
    group: Group,
    readings: Sequence[Reading],
    done: set[tuple[datetime, ReadingType]],
    now: datetime,
    grace_s: int,
) -> list[Total]:
    """The totals of `group` that can be made now from member readings on slot boundaries: slots not
    `done` where every expected member reported, or whose grace period is over. Pure."""
    slots: dict[tuple[datetime, ReadingType], dict[str, Reading]] = {}
    wanted = group.reading_types()
    for reading in readings:
        key = (reading.timestamp, reading.reading_type)
        if reading.meter_id in group.members and reading.reading_type in wanted and key not in done:
            slots.setdefault(key, {})[reading.meter_id] = reading
    totals = []
    for (moment, reading_type), found in sorted(
        slots.items(), key=lambda item: (item[0][0], item[0][1].code)
    ):
        expected = group.expected(reading_type)
        missing = tuple(m for m in expected if m not in found)
        if missing and (now - moment).total_seconds() < grace_s:
            continue
        present = [found[m] for m in expected if m in found]
        qualities = (
            (DERIVED,)
            + ((PARTIAL,) if missing else ())
            + ((SUSPECT,) if any(r.qualities for r in present) else ())
        )
        value = sum((r.value for r in present), Decimal(0))
        totals.append(
            Total(Reading(group.device, reading_type, moment, value, qualities), len(expected), missing)
        )
    return totals


def aggregate_due(store: Store, config: Config, now: datetime) -> int:
    """Make every total that is due within `aggregation.lookback_s`; returns how many were new.

    Called periodically by the daemon; calling it again (or after a restart) adds nothing twice.
    """
    settings = config.aggregation
    meters = [(m.id, m.bus, m.model) for m in active_meters(store)]
    groups = groups_of(config, meters)
    if not groups:
        return 0
    virtual = register_devices(store, [g.device for g in groups], epoch(now))
    for group in groups:
        if group.device not in virtual and group.device not in _refused:
            _refused.add(group.device)
            log.error("total %s not made: a physical meter has that mRID; rename the group", group.device)
    groups = [g for g in groups if g.device in virtual]
    end = epoch(now)
    start = end - settings.lookback_s
    members = sorted({m for g in groups for m in g.members})
    codes = sorted({t.code for g in groups for t in g.reading_types()})
    readings = slot_readings(store, members, codes, start, end, settings.interval_s)
    stored = slot_readings(store, [g.device for g in groups], codes, start, end, settings.interval_s)
    totals = []
    for group in groups:
        done = {(r.timestamp, r.reading_type) for r in stored if r.meter_id == group.device}
        totals += totals_due(group, readings, done, now, settings.grace_s)
    new = save_totals(store, totals, end)
    prune_partial_totals(store, end - config.store.retention_days * 86400)
    for total in totals:
        if total.missing:
            log.debug(
                "total %s %s at %s: partial, %d of %d members missing",
                total.reading.meter_id,
                total.reading.reading_type.code,
                total.reading.timestamp.isoformat(),
                len(total.missing),
                total.members,
            )
    return new
