"""Finding meters that answer on a bus but that nobody registered.

Every Modbus unit id and HDLC address in the configured ranges that no polled meter uses is asked
once, with a short timeout: a Modbus device answers a one-register read (an exception answer
counts: something is there); a DLMS meter answers an association as the public client, and gives its
logical device name (0.0.42.0.0.255) and serial number (0.0.96.1.0.255). What answers is registered
as discovered-but-unassigned (not polled until the MDM assigns it with MeterConfig) and announced
with an EndDeviceEvent. Commands that arrive during a scan run between two probes.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.clock import Clock
from appliance.collect import modbus
from appliance.collect.dlms import axdr
from appliance.collect.dlms.push import LOGICAL_DEVICE_NAME
from appliance.collect.dlms.session import PUBLIC_CLIENT, DlmsSession, DlmsSettings
from appliance.config import DiscoverySection, MeterSpec
from appliance.errors import CrcError, DeviceError, DeviceTimeout, HesError, ProtocolError
from appliance.housekeeping import Housekeeping
from appliance.model import Event, Protocol, epoch
from appliance.store.registry import UNASSIGNED, list_meters, register_meter

if TYPE_CHECKING:
    from appliance.collect.bus import BusAccess

log = logging.getLogger(__name__)

METER_DISCOVERED = "3.7.0.4"  # ElectricMeter / Configuration / - / Activated: found, not yet assigned
SERIAL_NUMBER = "0.0.96.1.0.255"
UNKNOWN_MODEL = "unknown"


@dataclass(frozen=True)
class Discovered:
    """A device that answered a discovery probe."""

    mrid: str
    protocol: Protocol
    address: int
    identity: dict[str, str]


def discover_bus(
    access: BusAccess, settings: DiscoverySection, housekeeping: Housekeeping, clock: Clock
) -> list[Discovered]:
    """Scan the bus of `access`; register and announce what answers. Returns every device found."""
    bus = access.spec.name
    known = list_meters(access.store)
    taken = {(m["protocol"], m["address"]) for m in known if m["bus"] == bus and m["state"] == "active"}
    already = {m["mrid"] for m in known}
    timeout_s = settings.timeout_ms / 1000
    found: list[Discovered] = []
    for unit in range(settings.modbus_first, settings.modbus_last + 1):
        if ("modbus", unit) not in taken:
            access.worker.run_waiting_commands(access)
            if _modbus_answers(access, unit, timeout_s):
                found.append(Discovered(f"{bus}-MB{unit}", Protocol.MODBUS, unit, {"unit_id": str(unit)}))
    for address in range(settings.hdlc_first, settings.hdlc_last + 1):
        if ("dlms", address) not in taken:
            access.worker.run_waiting_commands(access)
            identity = _dlms_identity(access, address, timeout_s)
            if identity is not None:
                mrid = identity.get("serial_number") or identity.get("logical_device_name") or ""
                found.append(Discovered(mrid or f"{bus}-H{address}", Protocol.DLMS, address, identity))
    now = clock.now()
    events = []
    for device in found:
        model = "dlms-generic" if device.protocol is Protocol.DLMS else UNKNOWN_MODEL
        spec = MeterSpec(
            device.mrid, bus, device.protocol, device.address, model, 0, 1, PUBLIC_CLIENT, "none", None
        )
        register_meter(access.store, spec, "discovery", epoch(now), UNASSIGNED, device.identity)
        if device.mrid not in already:
            events.append(
                Event(
                    device.mrid,
                    METER_DISCOVERED,
                    now,
                    reason=f"found on bus {bus} at {device.protocol} address {device.address}, not assigned",
                    details=tuple(sorted({**device.identity, "bus": bus}.items())),
                )
            )
    if events:
        housekeeping.save(access.store, [], events)
    log.info("bus %s: discovery found %d device(s), %d new", bus, len(found), len(events))
    return found


def _modbus_answers(access: BusAccess, unit: int, timeout_s: float) -> bool:
    function = modbus.Function.READ_HOLDING_REGISTERS
    request = modbus.read_request(unit, function, 0, 1)
    try:
        frame = access.port.exchange(request, modbus.response_bytes_needed, timeout_s)
        modbus.parse_read_response(frame, unit, function, 1)
    except DeviceTimeout:
        return False
    except CrcError as exc:
        log.info("bus %s: unit %d answered garbled (%s): counted as present", access.spec.name, unit, exc)
    except (DeviceError, ProtocolError):
        pass  # an exception answer: a device is there, it just has no register 0
    return True


def _dlms_identity(access: BusAccess, address: int, timeout_s: float) -> dict[str, str] | None:
    settings = DlmsSettings(physical=address, timeout_s=timeout_s, retries=0)
    try:
        with DlmsSession(access.port, settings) as session:
            identity = {"hdlc_address": str(address)}
            for key, obis in (("logical_device_name", LOGICAL_DEVICE_NAME), ("serial_number", SERIAL_NUMBER)):
                with suppress(DeviceError):  # no such object: the meter is known by what it has
                    identity[key] = _text(session.get(1, obis, 2))
            return identity
    except DeviceTimeout:
        return None
    except HesError as exc:
        log.info("bus %s: HDLC address %d answered but not usably: %s", access.spec.name, address, exc)
        return {"hdlc_address": str(address), "error": str(exc)[:200]}


def _text(value: axdr.Data) -> str:
    raw = getattr(value, "value", b"")
    if isinstance(raw, bytes):
        printable = raw.decode("ascii", "replace")
        return printable if printable.isprintable() else raw.hex()
    return str(raw)
