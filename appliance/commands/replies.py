"""Answers to the MDM (IEC 61968-100 ResponseMessage) and their payloads. Pure: objects in, bytes out.

Every request gets two: at once a `reply` saying accepted (Error code 0.3) or why not (FAILED), then
the outcome with the same CorrelationID (`created`/`changed`/`deleted` for create/change/delete,
`reply` carrying the data for a get). Element order follows cim4/Message.xsd and the Connexo noun
schemas exactly (xs:sequence everywhere).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from lxml import etree

from appliance.uplink import cim
from appliance.uplink.messages import Built

M = cim.MESSAGE_NS
OUTCOME_VERBS = {"create": "created", "change": "changed", "delete": "deleted", "get": "reply"}


@dataclass(frozen=True)
class ReplyError:
    """One Reply/Error: a code, why, and the meter it concerns (if one)."""

    code: str
    reason: str
    meter: str = ""
    level: str = "FATAL"
    details: str = ""


def _sub(parent: etree._Element, ns: str, tag: str, text: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, f"{{{ns}}}{tag}")
    if text is not None:
        element.text = text
    return element


def response(
    *,
    verb: str,
    noun: str,
    source: str,
    now: datetime,
    correlation_id: str,
    result: str,
    errors: Sequence[ReplyError],
    topic: str,
    payload: etree._Element | None = None,
    properties: tuple[tuple[str, str], ...] = (),
) -> Built:
    """A ResponseMessage (Header, Reply, Payload?) with a new MessageID, ready for the outbox."""
    message_id = str(uuid.uuid4())
    root = etree.Element(f"{{{M}}}ResponseMessage", nsmap={"msg": M})
    header = _sub(root, M, "Header")
    _sub(header, M, "Verb", verb)
    _sub(header, M, "Noun", noun)
    _sub(header, M, "Timestamp", cim.format_time(now))
    _sub(header, M, "Source", source)
    _sub(header, M, "MessageID", message_id)
    _sub(header, M, "CorrelationID", correlation_id)
    for name, value in properties:
        prop = _sub(header, M, "Property")
        _sub(prop, M, "Name", name)
        _sub(prop, M, "Value", value)
    reply = _sub(root, M, "Reply")
    _sub(reply, M, "Result", result)
    for error in errors:
        element = _sub(reply, M, "Error")
        _sub(element, M, "code", error.code)
        _sub(element, M, "level", error.level)
        _sub(element, M, "reason", error.reason)
        if error.details:
            _sub(element, M, "details", error.details)
        if error.meter:
            ident = _sub(element, M, "ID", error.meter)
            ident.set("kind", "name")
            ident.set("objectType", "EndDevice")
    if payload is not None:
        _sub(root, M, "Payload").append(payload)
    xml = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return Built(message_id, topic, cim.XML_CONTENT_TYPE, xml)


def control_results(code: str, results: Sequence[tuple[str, dict[str, str]]]) -> etree._Element:
    """An EndDeviceControls payload: per meter the control done and what the meter reads back after
    it (EndDeviceControlAttribute name/value pairs, e.g. relayState=disconnected)."""
    ns = cim.noun_namespace("EndDeviceControls")
    root = etree.Element(f"{{{ns}}}EndDeviceControls", nsmap={None: ns})
    for meter, attributes in results:
        control = _sub(root, ns, "EndDeviceControl")
        _sub(control, ns, "EndDeviceControlType").set("ref", code)
        for name, value in sorted(attributes.items()):
            attribute = _sub(control, ns, "EndDeviceControlAttribute")
            _sub(attribute, ns, "name", name)
            _sub(attribute, ns, "value", value)
        _sub(_sub(control, ns, "EndDevices"), ns, "mRID", meter)
    return root


def meter_config(meters: Sequence[tuple[str, str, dict[str, str]]]) -> etree._Element:
    """A MeterConfig payload: per meter its mRID, model (`type`) and how it is reached
    (ConnectionAttributes); never its keys."""
    ns = cim.noun_namespace("MeterConfig")
    root = etree.Element(f"{{{ns}}}MeterConfig", nsmap={None: ns})
    for mrid, model, settings in meters:
        meter = _sub(root, ns, "Meter")
        _sub(meter, ns, "mRID", mrid)
        if model:
            _sub(meter, ns, "type", model)
        if settings:
            attributes = _sub(meter, ns, "ConnectionAttributes")
            for name, value in sorted(settings.items()):
                attribute = _sub(attributes, ns, "Attribute")
                _sub(attribute, ns, "name", name)
                _sub(attribute, ns, "value", value)
    return root


def usage_point_config(assignments: Sequence[tuple[str, str]]) -> etree._Element:
    """A UsagePointConfig payload: per meter (Equipments) the tariff that prices it now
    (PricingStructures)."""
    ns = cim.noun_namespace("UsagePointConfig")
    root = etree.Element(f"{{{ns}}}UsagePointConfig", nsmap={None: ns})
    for meter, tariff in assignments:
        point = _sub(root, ns, "UsagePoint")
        _sub(_sub(point, ns, "Equipments"), ns, "mRID", meter)
        _sub(_sub(point, ns, "PricingStructures"), ns, "mRID", tariff)
    return root
