"""Outbound messages in the deployment's encoding: CIM XML, or its compact CBOR form."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.clock import Clock
from appliance.config import Config
from appliance.model import Event, Reading
from appliance.uplink import cim, compact


@dataclass(frozen=True)
class Built:
    """A message ready for the outbox."""

    message_id: str
    topic: str
    content_type: str
    payload: bytes


def build(config: Config, clock: Clock, noun: str, items: Sequence[Reading] | Sequence[Event]) -> Built:
    """A `created <noun>` EventMessage (MeterReadings or EndDeviceEvents) with a new MessageID."""
    header = cim.Header(
        verb="created", noun=noun, timestamp=clock.now(), source=config.hes.id, message_id=str(uuid.uuid4())
    )
    topic = config.topic("cim", "out", noun)
    if config.uplink.encoding == "cbor":
        encode = (
            compact.encode_meter_readings if noun == "MeterReadings" else compact.encode_end_device_events
        )
        return Built(header.message_id, topic, compact.CBOR_CONTENT_TYPE, encode(header, items))  # type: ignore[arg-type]
    payload = cim.meter_readings(items) if noun == "MeterReadings" else cim.end_device_events(items)  # type: ignore[arg-type]
    return Built(header.message_id, topic, cim.XML_CONTENT_TYPE, cim.event_message(header, payload))
