"""The time authority: every timestamp the appliance writes comes from here.

Today it reads the system clock (disciplined by chrony on the appliance). GPS lock state, holdover
and offsets arrive with the GPS master clock; callers already ask this object, not `datetime`.
"""

from __future__ import annotations

from datetime import UTC, datetime


class Clock:
    """The HES clock."""

    def now(self) -> datetime:
        """The current time, aware, in UTC."""
        return datetime.now(UTC)

    def slot_start(self, interval_s: int) -> datetime:
        """The start of the current `interval_s` slot (slots are aligned to the epoch, in UTC)."""
        seconds = int(self.now().timestamp())
        return datetime.fromtimestamp(seconds - seconds % interval_s, UTC)
