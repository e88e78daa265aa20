"""Shared fixtures: real peers (Mosquitto, socat ptys, simulated meters) and the public CIM schemas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import xmlschema
from lxml import etree

from appliance.config import MeterSpec
from appliance.model import Protocol
from appliance.sim.pki import TestPki
from appliance.sim.ptys import PtyPair
from appliance.uplink import cim

REPO = Path(__file__).resolve().parents[1]
SHARED_CIM = REPO.parent / "shared" / "cim" / "xsd"
# The uplink and MQTT settings of a test daemon that must answer the MDM within a second or two.
QUICK_UPLINK = """
[uplink]
scan_interval_s = 0.2
status_interval_s = 1

[mqtt]
reconnect_min_s = 0.2
reconnect_max_s = 1
"""


class CimSchemas:
    """The two-step validation CIM-NOTES prescribes: the envelope, then the payload root."""

    def __init__(self) -> None:
        self.envelope = xmlschema.XMLSchema(SHARED_CIM / "cim4" / "Message.xsd")
        self.payloads = {
            "MeterReadings": xmlschema.XMLSchema(
                SHARED_CIM / "connexo" / "meterreadings" / "MeterReadings.xsd"
            ),
            "EndDeviceEvents": xmlschema.XMLSchema(
                SHARED_CIM / "connexo" / "enddeviceevents" / "EndDeviceEvents.xsd"
            ),
            "EndDeviceControls": xmlschema.XMLSchema(
                SHARED_CIM / "connexo" / "enddevicecontrols" / "EndDeviceControls.xsd"
            ),
            "MeterConfig": xmlschema.XMLSchema(SHARED_CIM / "connexo" / "meterconfig" / "MeterConfig.xsd"),
        }

    def validate(self, message: bytes) -> None:
        """Raise xmlschema's error if the envelope or its payload breaks the public schemas."""
        self.envelope.validate(message.decode())
        root = cim.parse_xml(message)
        payload = root.find(f"{{{cim.MESSAGE_NS}}}Payload")
        assert payload is not None and len(payload), "message without a payload"
        for item in payload:
            noun = etree.QName(item).localname
            self.payloads[noun].validate(etree.tostring(item).decode())


@pytest.fixture(scope="session")
def cim_schemas() -> CimSchemas:
    if not SHARED_CIM.is_dir():
        pytest.skip(f"the public CIM schemas are not at {SHARED_CIM} (the project's shared/ folder)")
    return CimSchemas()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return TestPki(tmp_path_factory.mktemp("pki"))


def write_config(path: Path, text: str) -> Path:
    """Write a config file for a test and return its path."""
    path.write_text(text)
    return path


def meter_spec(
    meter_id: str,
    address: int = 1,
    model: str = "sdm630",
    poll_interval_s: int = 900,
    bus: str = "A",
    protocol: Protocol = Protocol.MODBUS,
) -> MeterSpec:
    """A meter as the config would give it (DLMS fields at the template's values)."""
    return MeterSpec(meter_id, bus, protocol, address, model, poll_interval_s, 1, 16, "none", None)


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[PtyPair]:
    """A pty pair for bus A: the HES opens one end as its serial port, a simulator the other."""
    with PtyPair(tmp_path, "A") as pair:
        yield pair
