"""The appliance's own alarms: EndDeviceEvents whose asset is the HES itself (Assets/mRID = hes.id).

Codes follow IEC 61968-9's type.domain.subDomain.eventOrAction scheme (CIM-NOTES section 5). No
public code exists for these head-end conditions: these are our choices, to agree with the MDM.
"""

from __future__ import annotations

from datetime import datetime

from appliance.model import Event, utc_from_epoch
from appliance.uplink.cim import format_time

# Memory (18) / Failed (85): readings dropped unsent to keep the store within its size cap.
READINGS_DROPPED = "0.18.0.85"


def readings_dropped(hes_id: str, count: int, oldest: int, newest: int, now: datetime) -> Event:
    """The alarm that must accompany unsent readings the store had to drop."""
    return Event(
        device_id=hes_id,
        event_type=READINGS_DROPPED,
        created=now,
        reason=f"store full: {count} unsent readings dropped",
        severity="critical",
        details=(
            ("droppedReadings", str(count)),
            ("oldestDropped", format_time(utc_from_epoch(oldest))),
            ("newestDropped", format_time(utc_from_epoch(newest))),
        ),
    )
