"""Realistic simulated interval data: a household's 15-minute profile on four channels.

Noisy, not periodic, so that compression figures measured on it mean something: A+ follows a daily
load curve, A- a midday PV bump, the reactive channels small noise. Deterministic for a seed.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from decimal import Decimal

from appliance.model import Reading, ReadingType

# 15-minute interval delta data, Wh / varh (CIM-NOTES section 4: flow direction 1, 19, 2, 3).
A_PLUS = ReadingType("0.0.2.4.1.1.12.0.0.0.0.0.0.0.0.0.72.0")
A_MINUS = ReadingType("0.0.2.4.19.1.12.0.0.0.0.0.0.0.0.0.72.0")
Q_PLUS = ReadingType("0.0.2.4.2.1.12.0.0.0.0.0.0.0.0.0.73.0")
Q_MINUS = ReadingType("0.0.2.4.3.1.12.0.0.0.0.0.0.0.0.0.73.0")
CHANNELS = (A_PLUS, A_MINUS, Q_PLUS, Q_MINUS)


def household_day(meter_id: str, start: datetime, seed: int, intervals: int = 96) -> list[Reading]:
    """`intervals` quarter hours from `start` on the four channels of one meter."""
    rng = random.Random(f"{meter_id}/{seed}")
    readings = []
    for reading_type in CHANNELS:
        for interval in range(intervals):
            moment = start + timedelta(minutes=15 * interval)
            hour = moment.hour + moment.minute / 60
            if reading_type is A_PLUS:
                energy = 80 + 60 * math.sin((hour - 7) / 24 * 2 * math.pi) + rng.gauss(0, 35)
            elif reading_type is A_MINUS:
                energy = 300 * math.sin((hour - 6) / 12 * math.pi) + rng.gauss(0, 40) if 6 < hour < 18 else 0
            else:
                energy = 15 + rng.gauss(0, 10)
            readings.append(Reading(meter_id, reading_type, moment, Decimal(max(0, int(energy)))))
    return readings
