"""Simulated time that runs faster than the wall clock: hours of collection in a minute of test.

The HES (an `appliance.clock.Clock` whose `now` is replaced) and the simulated meters, which are
other processes, must agree on it: the test sets `HES_SIM_TIME="REAL,SIM,RATE"` in the environment
before it starts the simulators, meaning "at wall-clock epoch REAL, simulated time was SIM, and it
runs RATE times as fast". Without the variable, simulated time is the wall clock.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

from appliance.clock import Clock

ENVIRONMENT = "HES_SIM_TIME"


def spec(real: float, sim: float, rate: float) -> str:
    """The environment value for a simulated time that was `sim` at wall-clock `real`."""
    return f"{real!r},{sim!r},{rate!r}"


def _anchor() -> tuple[float, float, float] | None:
    text = os.environ.get(ENVIRONMENT)
    if not text:
        return None
    real, sim, rate = (float(part) for part in text.split(","))
    return real, sim, rate


def now() -> float:
    """Simulated epoch seconds (the simulators' `time.time()`)."""
    anchor = _anchor()
    if anchor is None:
        return time.time()
    real, sim, rate = anchor
    return sim + (time.time() - real) * rate


class SimulatedClock(Clock):
    """The HES clock on simulated time, trusted as a GPS-locked one would be."""

    def __init__(self, real: float, sim: float, rate: float) -> None:
        self.real, self.sim, self.rate = real, sim, rate
        super().__init__()

    def now(self) -> datetime:
        """Simulated time, aware, in UTC."""
        return datetime.fromtimestamp(self.sim + (time.time() - self.real) * self.rate, UTC)

    def trusted(self) -> bool:
        """As a GPS-locked clock."""
        return True
