"""Outbound messages in the deployment's encoding: CIM XML, or its compact CBOR form."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.clock import Clock
from appliance.config import Config
from appliance.model import Event, Reading, epoch
from appliance.store.outbox import OutboxMessage, Priority, insert_message
from appliance.uplink import cim, compact


@dataclass(frozen=True)
class Built:
    """A message ready for the outbox."""

    message_id: str
    topic: str
    content_type: str
    payload: bytes
    correlation_data: bytes | None = None  # MQTT 5: echoed from the request this answers


def build(
    config: Config,
    clock: Clock,
    noun: str,
    items: Sequence[Reading] | Sequence[Event],
    correlation_id: str | None = None,
    properties: tuple[tuple[str, str], ...] = (),
) -> Built:
    """A `created <noun>` EventMessage (MeterReadings or EndDeviceEvents) with a new MessageID."""
    header = cim.Header(
        verb="created",
        noun=noun,
        timestamp=clock.now(),
        source=config.hes.id,
        message_id=str(uuid.uuid4()),
        correlation_id=correlation_id,
        properties=properties,
    )
    topic = config.topic("cim", "out", noun)
    if config.uplink.encoding == "cbor":
        encode = (
            compact.encode_meter_readings if noun == "MeterReadings" else compact.encode_end_device_events
        )
        return Built(header.message_id, topic, compact.CBOR_CONTENT_TYPE, encode(header, items))  # type: ignore[arg-type]
    payload = cim.meter_readings(items) if noun == "MeterReadings" else cim.end_device_events(items)  # type: ignore[arg-type]
    return Built(header.message_id, topic, cim.XML_CONTENT_TYPE, cim.event_message(header, payload))


def build_pages(
    config: Config,
    clock: Clock,
    noun: str,
    items: Sequence[Reading] | Sequence[Event],
    correlation_id: str,
) -> list[Built]:
    """One logical answer too large for one message, as pages of at most `uplink.batch_max_readings`
    items: each its own MessageID, all the same CorrelationID, with Header Properties MessageIndex
    (1-based) and MessageCount so the MDM knows when it has the whole answer."""
    size = config.uplink.batch_max_readings
    chunks = [items[start : start + size] for start in range(0, len(items), size)] or [items[:0]]
    return [
        build(
            config,
            clock,
            noun,
            chunk,
            correlation_id=correlation_id,
            properties=(("MessageIndex", str(index)), ("MessageCount", str(len(chunks)))),
        )
        for index, chunk in enumerate(chunks, start=1)
    ]


def enqueue(
    conn: sqlite3.Connection,
    message: Built,
    priority: Priority,
    created_at: int,
    carried: Sequence[tuple[int, int, int]] = (),
    carried_events: Sequence[tuple[int, int, str]] = (),
) -> OutboxMessage:
    """Inside a caller's transaction: put a built message in the outbox, taking the readings and
    events it carries off their queues; returns it as the pump publishes it."""
    outbox_id = insert_message(
        conn,
        message_id=message.message_id,
        priority=priority,
        topic=message.topic,
        content_type=message.content_type,
        payload=message.payload,
        created_at=created_at,
        correlation_data=message.correlation_data,
        carried=carried,
        carried_events=carried_events,
    )
    return OutboxMessage(
        outbox_id,
        message.message_id,
        priority,
        message.topic,
        message.content_type,
        message.payload,
        len(carried),
        message.correlation_data,
    )


def enqueue_alarm(conn: sqlite3.Connection, config: Config, clock: Clock, event: Event) -> OutboxMessage:
    """Inside a caller's transaction: one of the appliance's alarms as its own EndDeviceEvents
    message, at alarm priority (sent before readings)."""
    message = build(config, clock, "EndDeviceEvents", [event])
    return enqueue(conn, message, Priority.ALARM, epoch(clock.now()))
