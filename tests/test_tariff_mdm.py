"""The MDM changes a meter's tariff (change UsagePointConfig), and tops up a prepay account through the
broker: the request is parsed and validated, the assignment is stored and taken up by a running tariff
thread, and end to end a real daemon answers both against the public schemas."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import xmlschema
from lxml import etree

from appliance.commands.requests import Request, parse_request, read_envelope
from appliance.errors import RequestRefused, TariffError
from appliance.model import Reading
from appliance.sim.mdm import MdmListener, reply_result, request_message, usage_point_config_payload
from appliance.sim.substation import Substation
from appliance.store import Store
from appliance.store.readings import save_readings
from appliance.store.registry import register_config_meters
from appliance.store.tariffs import journal_of, tariff_assignments
from appliance.tariff.service import Settings, TariffService, assign
from appliance.uplink import cim
from tests.conftest import QUICK_UPLINK, REPO, SHARED_CIM, CimSchemas, meter_spec, write_config
from tests.test_commands_e2e import start_and_wait_online
from tests.test_prepay import A_PLUS_15, POLICY, SteppedClock, credit_payload

USAGE_POINT_CONFIG_XSD = SHARED_CIM / "connexo" / "usagepointconfig" / "UsagePointConfig.xsd"


@pytest.fixture(scope="module")
def schemas(cim_schemas: CimSchemas) -> CimSchemas:
    """The public schemas with UsagePointConfig's (the shared fixture has the nouns served before)."""
    cim_schemas.payloads.setdefault("UsagePointConfig", xmlschema.XMLSchema(USAGE_POINT_CONFIG_XSD))
    return cim_schemas


@pytest.fixture
def tariff_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(REPO / "config" / "tariffs", tmp_path / "tariffs"))


def parse(payload: etree._Element) -> Request:
    _, xml = request_message("change", "UsagePointConfig", payload=payload)
    envelope, root = read_envelope(xml, 1 << 20)
    return parse_request(envelope, root, {}, datetime.now(UTC)).request


def test_a_usage_point_config_names_meters_and_one_tariff(schemas: CimSchemas) -> None:
    toml = (REPO / "config" / "tariffs" / "residential-tou.toml").read_text()
    payload = usage_point_config_payload(["M1", "M2"], "home-2026", toml)
    schemas.payloads["UsagePointConfig"].validate(etree.tostring(payload).decode())
    request = parse(payload)
    assert (request.operation, request.meters, request.tariff) == ("tariff", ("M1", "M2"), "home-2026")
    assert request.tariff_text == toml
    assert Request.from_json(request.to_json()) == request  # as the journal keeps it

    two = usage_point_config_payload(["M1"], "residential-tou")
    two.append(usage_point_config_payload(["M2"], "commercial-demand")[0])
    with pytest.raises(RequestRefused, match="one tariff per request") as refused:
        parse(two)
    assert refused.value.code == "2.5"
    without_tariff = usage_point_config_payload(["M1"], "residential-tou")
    ns = cim.noun_namespace("UsagePointConfig")
    pricing = without_tariff.find(f"{{{ns}}}UsagePoint/{{{ns}}}PricingStructures")
    pricing.getparent().remove(pricing)
    with pytest.raises(RequestRefused, match="PricingStructures"):
        parse(without_tariff)


def quarters(meter: str, start: datetime, count: int) -> list[Reading]:
    return [
        Reading(meter, A_PLUS_15, start + timedelta(minutes=15 * (i + 1)), Decimal("0.25"))
        for i in range(count)
    ]


def priced(store: Store) -> int:
    return store.conn.execute("SELECT COUNT(*) FROM tariff_intervals").fetchone()[0]


def test_an_assignment_is_stored_taken_up_without_a_restart_and_kept_after_one(
    tmp_path: Path, tariff_dir: Path
) -> None:
    path = tmp_path / "hes.db"
    store = Store(path)
    register_config_meters(store, [meter_spec("M1")], 0)
    clock = SteppedClock(datetime(2025, 10, 14, 12, 0, tzinfo=UTC))
    configured = Settings({}, {}, (), POLICY, 1, 86400, 3600, 1, tariff_dir)  # [tariffs] meters = {}
    service = TariffService(configured, lambda: Store(path), clock, None, lambda: None, threading.Event())
    service.step(store)
    save_readings(store, quarters("M1", datetime(2025, 10, 14, 8, 0, tzinfo=UTC), 4), 0)
    service.step(store)
    assert priced(store) == 0  # no tariff yet: not even queued

    assign(store, configured, "M1", "residential-tou", "", "msg-1", clock.now())
    service.step(store)  # the running thread takes it up
    save_readings(store, quarters("M1", datetime(2025, 10, 14, 9, 0, tzinfo=UTC), 4), 0)
    service.step(store)
    assert priced(store) == 4
    store.close()

    store = Store(path)  # a restart: the same configuration, the assignment from the store
    assert tariff_assignments(store)[1] == {"M1": "residential-tou"}
    service = TariffService(configured, lambda: Store(path), clock, None, lambda: None, threading.Event())
    service.step(store)
    save_readings(store, quarters("M1", datetime(2025, 10, 14, 10, 0, tzinfo=UTC), 4), 0)
    service.step(store)
    assert priced(store) == 8
    assert service.settings.meters == {"M1": "residential-tou"}

    # A tariff the MDM sends is installed and then assigned; a broken one or an unknown name is not.
    text = (tariff_dir / "commercial-demand.toml").read_text()
    assign(store, configured, "M1", "business-2026", text, "msg-2", clock.now())
    assert (tariff_dir / "business-2026.toml").read_text() == text
    with pytest.raises(TariffError):
        assign(store, configured, "M1", "broken", "currency = 7\n", "msg-3", clock.now())
    assert not (tariff_dir / "broken.toml").exists()
    with pytest.raises(TariffError, match="no tariff 'flat-rate'"):
        assign(store, configured, "M1", "flat-rate", "", "msg-4", clock.now())
    assert tariff_assignments(store)[1] == {"M1": "business-2026"}
    service.step(store)
    assert service.settings.meters == {"M1": "business-2026"}
    store.close()


CONFIG = QUICK_UPLINK + (
    """
[hes]
id = "hes-tariff"
log_level = "debug"


[bus_defaults]
timeout_ms = 300
retries = 1

[[meters]]
id = "TAR-M1"
bus = "A"
address = 1
model = "generic-wh32"
poll_interval_s = 60
"""
)


@pytest.fixture
def station(tmp_path: Path, tariff_dir: Path) -> Iterator[Substation]:
    tariffs = f"""
[tariffs]
dir = "{tariff_dir}"
meters = {{ TAR-M1 = "commercial-demand" }}
prepay = ["TAR-M1"]
apportion_interval_s = 1
"""
    config = write_config(tmp_path / "hes.toml", CONFIG + tariffs)
    with Substation(tmp_path / "run", config) as substation:
        yield substation


@pytest.fixture
def mdm(station: Substation) -> Iterator[MdmListener]:
    with station.mdm() as client:
        start_and_wait_online(station, client)
        yield client
        station.stop_daemon()


def send(
    mdm: MdmListener, verb: str, noun: str, payload: etree._Element, message_id: str | None = None
) -> str:
    message_id, xml = request_message(verb, noun, message_id, payload=payload)
    mdm.request(verb, noun, xml)
    return message_id


def test_the_mdm_changes_a_tariff_and_tops_up_once(
    station: Substation, mdm: MdmListener, schemas: CimSchemas
) -> None:
    request_id = send(
        mdm, "change", "UsagePointConfig", usage_point_config_payload(["TAR-M1"], "residential-tou")
    )
    ack, outcome = mdm.wait_replies(request_id, 2)
    assert ack.topic == f"{mdm.reply_root}/UsagePointConfig"
    assert reply_result(ack)[0] == "OK" and reply_result(ack)[1][0][0] == "0.3"
    schemas.envelope.validate(ack.xml.decode())
    assert outcome.header.verb == "changed" and reply_result(outcome) == ("OK", [])
    schemas.validate(outcome.xml)
    ns = f"{{{cim.noun_namespace('UsagePointConfig')}}}"
    point = cim.parse_xml(outcome.xml).find(f".//{ns}UsagePoint")
    assert (
        point.findtext(f"{ns}Equipments/{ns}mRID"),
        point.findtext(f"{ns}PricingStructures/{ns}mRID"),
    ) == (
        "TAR-M1",
        "residential-tou",
    )

    # An unknown tariff or meter is refused at once, with its own code, and nothing is assigned.
    for meters, tariff, code in ((["TAR-M1"], "flat-rate", "2.6"), (["NOPE"], "residential-tou", "2.4")):
        refused_id = send(mdm, "change", "UsagePointConfig", usage_point_config_payload(meters, tariff))
        (reply,) = mdm.wait_replies(refused_id, 1)
        result, errors = reply_result(reply)
        assert result == "FAILED" and errors[0][0] == code, errors
        schemas.envelope.validate(reply.xml.decode())

    # The top-up, sent twice under one MessageID: credited once, both answered the same.
    top_up = credit_payload("TAR-M1", {"amount": "25.00", "currency": "EUR"})
    credit_id = send(mdm, "create", "EndDeviceControls", top_up)
    first = mdm.wait_replies(credit_id, 2)
    send(mdm, "create", "EndDeviceControls", top_up, message_id=credit_id)
    again = mdm.wait_replies(credit_id, 4)[2:]
    assert len(again) == 2
    for reply in (*first, *again):
        schemas.envelope.validate(reply.xml.decode())
    schemas.validate(first[1].xml)
    assert [reply_result(r) for r in again] == [reply_result(r) for r in first]
    assert [body(r) for r in again] == [body(r) for r in first]
    assert attributes(first[1].xml) == {"balance": "25.00", "credited": "true", "currency": "EUR"}

    station.stop_daemon()
    store = station.open_store()
    try:
        assert [(kind, amount) for _, kind, amount, *_ in journal_of(store, "TAR-M1")] == [
            ("top-up", Decimal("25.00"))
        ]
        assert tariff_assignments(store)[1] == {"TAR-M1": "residential-tou"}  # survives the restart
    finally:
        store.close()


def body(reply: object) -> bytes:
    """A reply without its own MessageID and Timestamp: what the MDM compares."""
    root = cim.parse_xml(reply.xml)  # type: ignore[attr-defined]
    header = root.find(f"{{{cim.MESSAGE_NS}}}Header")
    for tag in ("MessageID", "Timestamp"):
        header.remove(header.find(f"{{{cim.MESSAGE_NS}}}{tag}"))
    return etree.tostring(root)


def attributes(reply_xml: bytes) -> dict[str, str]:
    ns = f"{{{cim.noun_namespace('EndDeviceControls')}}}"
    root = cim.parse_xml(reply_xml)
    return {
        a.findtext(f"{ns}name"): a.findtext(f"{ns}value") for a in root.iter(f"{ns}EndDeviceControlAttribute")
    }
