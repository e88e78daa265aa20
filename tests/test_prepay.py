"""Prepay: the account's state machine, and an account that runs out at 02:00 on a Saturday against a
simulated DLMS meter's relay on a real pty (the bus worker runs the relay job, as for the MDM)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from lxml import etree

from appliance.clock import Clock
from appliance.collect.bus import BusAccess
from appliance.collect.dlms import axdr
from appliance.commands.jobs import CLASS_DISCONNECT_CONTROL, DISCONNECT_CONTROL
from appliance.commands.requests import Request, parse_request, read_envelope
from appliance.config import MeterSpec, load_config
from appliance.errors import RequestRefused, TariffError
from appliance.model import Reading, ReadingType
from appliance.sim.dlms_meter import SimulatedDlmsBus, parse_meter
from appliance.sim.mdm import control_payload, request_message
from appliance.sim.ptys import PtyPair
from appliance.store import Store
from appliance.store.events import events_of
from appliance.store.readings import save_readings
from appliance.store.tariffs import account, journal_of
from appliance.tariff import prepay
from appliance.tariff.loader import load_tariffs
from appliance.tariff.service import Settings, TariffService, relay_through, top_up
from appliance.uplink import cim
from tests.conftest import REPO, CimSchemas
from tests.test_collector import Rig, dlms

TARIFF = load_tariffs(REPO / "config" / "tariffs")["residential-tou"]
A_PLUS_15 = ReadingType("0.0.2.4.1.1.12.0.0.0.0.0.0.0.0.3.72.0")
POLICY = prepay.Policy(Decimal("5"), Decimal("10"), prepay.parse_friendly("18:00-08:00", True, True))
BERLIN = TARIFF.timezone
CREDIT = "3.15.26.13"  # the template's code for a top-up


def local(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=BERLIN).astimezone(UTC)  # type: ignore[misc]


def test_friendly_periods() -> None:
    friendly = POLICY.friendly
    holidays = frozenset({date(2025, 10, 3)})
    assert friendly.covers(datetime(2025, 10, 8, 2, 0), holidays)  # Wednesday night
    assert not friendly.covers(datetime(2025, 10, 8, 8, 0), holidays)  # the night ends at 08:00
    assert friendly.covers(datetime(2025, 10, 11, 12, 0), holidays)  # Saturday
    assert friendly.covers(datetime(2025, 10, 3, 12, 0), holidays)  # a holiday
    assert not prepay.parse_friendly("", False, False).covers(datetime(2025, 10, 11, 2, 0), holidays)
    with pytest.raises(TariffError, match="HH:MM-HH:MM"):
        prepay.parse_friendly("18-8", True, True)


def test_warnings_come_once_and_re_arm_after_a_top_up() -> None:
    start = prepay.Account("M", "EUR", Decimal("6"))
    low, notices = prepay.charge(start, Decimal("2"), POLICY)
    assert [n.event_type for n in notices] == [prepay.LOW_CREDIT]
    lower, notices = prepay.charge(low, Decimal("5"), POLICY)
    assert [n.event_type for n in notices] == [prepay.EMERGENCY_CREDIT]
    gone, notices = prepay.charge(lower, Decimal("9"), POLICY)
    assert [n.event_type for n in notices] == [prepay.CREDIT_EXHAUSTED] and gone.balance == Decimal("-10")
    assert prepay.charge(gone, Decimal("1"), POLICY)[1] == []  # said once
    refilled, _ = prepay.top_up(gone, Decimal("30"), POLICY)
    assert not refilled.low_warned and not refilled.emergency_warned
    assert [n.event_type for n in prepay.charge(refilled, Decimal("16"), POLICY)[1]] == [prepay.LOW_CREDIT]


def test_the_relay_waits_for_the_end_of_a_friendly_period() -> None:
    gone = prepay.Account("M", "EUR", Decimal("-10.5"))
    assert prepay.relay_action(gone, datetime(2025, 10, 11, 2, 0), frozenset(), POLICY) is None  # Saturday
    assert (
        prepay.relay_action(gone, datetime(2025, 10, 13, 7, 45), frozenset(), POLICY) is None
    )  # Monday night
    assert prepay.relay_action(gone, datetime(2025, 10, 13, 8, 0), frozenset(), POLICY) == "disconnect"
    off = replace(gone, relay=prepay.Relay.DISCONNECTED)
    assert prepay.relay_action(off, datetime(2025, 10, 13, 9, 0), frozenset(), POLICY) is None  # no credit
    # Emergency credit in use is not enough to reconnect: the debt is repaid first.
    assert (
        prepay.relay_action(
            replace(off, balance=Decimal("-1")), datetime(2025, 10, 13, 9), frozenset(), POLICY
        )
        is None
    )
    assert (
        prepay.relay_action(
            replace(off, balance=Decimal("0.01")), datetime(2025, 10, 13, 9), frozenset(), POLICY
        )
        == "connect"
    )


class SteppedClock(Clock):
    """The HES clock at a time the test sets (a Saturday night is hard to wait for)."""

    def __init__(self, start: datetime) -> None:
        self.at = start
        super().__init__()

    def now(self) -> datetime:
        return self.at

    def trusted(self) -> bool:
        return True


def relay_state(access: BusAccess, meter: MeterSpec) -> int:
    """The disconnect control's control_state read from the meter itself (0 off, 1 on)."""
    with access.dlms(meter) as session:
        value = session.get(CLASS_DISCONNECT_CONTROL, DISCONNECT_CONTROL, 3)
    assert isinstance(value, axdr.Data)
    return value.value  # type: ignore[attr-defined]


NO_POLLS = "[schedules.dlms-generic]\nregisters_s = 0\nprofile_s = 0\nevents_s = 0\nclock_s = 0\n"


def test_an_account_that_runs_out_on_saturday_night(tmp_path: Path, pty: PtyPair) -> None:
    keys = tmp_path / "P17.keys"
    keys.write_text('password = "s3cret"\n')
    meter = replace(dlms("P17", 17), client_address=1, auth="low", keys_file=keys)
    clock = SteppedClock(local(2025, 10, 10, 12, 0))  # Friday noon
    settings = Settings(
        {"residential-tou": TARIFF}, {"P17": "residential-tou"}, ("P17",), POLICY, 1, 86400, 3600, 1
    )
    with SimulatedDlmsBus([parse_meter("17:password=s3cret")], port=pty.peer):
        rig = Rig(tmp_path, pty.device, [meter], NO_POLLS, clock)
        store = Store(rig.path)
        service = TariffService(
            settings, lambda: Store(rig.path), clock, relay_through(rig.collector), lambda: None, rig.stop
        )
        service.watch_meters(store)

        def step_until(condition: object, at: datetime) -> None:
            clock.at = at
            assert rig.wait(lambda: service.step(store) or condition(), timeout=20)  # type: ignore[operator]

        def quarter(end: datetime, kwh: str) -> Reading:
            return Reading("P17", A_PLUS_15, end, Decimal(kwh))

        first, again = top_up(store, "P17", Decimal("12.00"), "EUR", "topup-1", settings, clock.now())
        assert again and first.balance == Decimal("12.00")
        # Friday evening, off-peak at 0.2150: 100 kWh cost 21.50, the balance is -9.50 (emergency credit).
        save_readings(
            store,
            [quarter(local(2025, 10, 10, 22, 15) + timedelta(minutes=15 * i), "25") for i in range(4)],
            0,
        )
        step_until(lambda: account(store, "P17").balance == Decimal("-9.5"), local(2025, 10, 10, 23, 5))
        # The quarter hour ending at 02:00 on Saturday uses up the emergency credit...
        save_readings(store, [quarter(local(2025, 10, 11, 2, 0), "5")], 0)
        step_until(lambda: account(store, "P17").balance < -10, local(2025, 10, 11, 2, 1))
        # ... but the supply stays on all weekend and through Monday night (friendly periods).
        for moment in (local(2025, 10, 11, 2, 5), local(2025, 10, 12, 14, 0), local(2025, 10, 13, 7, 59)):
            clock.at = moment
            service.step(store)
            assert account(store, "P17").relay is prepay.Relay.CONNECTED
        assert rig.collector.submit("P17", relay_state).result(timeout=10) == 1
        # Monday 08:00: the friendly period is over, the relay opens.
        step_until(
            lambda: account(store, "P17").relay is prepay.Relay.DISCONNECTED, local(2025, 10, 13, 8, 0)
        )
        assert rig.collector.submit("P17", relay_state).result(timeout=10) == 0
        # The MDM tops up twice under one MessageID: credited once; the relay closes again.
        for _ in range(2):
            top_up(store, "P17", Decimal("30.00"), "EUR", "topup-2", settings, local(2025, 10, 13, 9, 0))
        assert account(store, "P17").balance == Decimal("19.425")
        step_until(lambda: account(store, "P17").relay is prepay.Relay.CONNECTED, local(2025, 10, 13, 9, 1))
        assert rig.collector.submit("P17", relay_state).result(timeout=10) == 1
        with pytest.raises(TariffError, match="the account is in EUR"):
            top_up(store, "P17", Decimal("5"), "USD", "topup-3", settings, clock.now())
        rig.halt()
        journal = journal_of(store, "P17")
        events = [e.event_type for e in events_of(store, "P17")]
        store.close()
    assert [(kind, amount, balance) for _, kind, amount, balance, _ in journal] == [
        ("top-up", Decimal("12.00"), Decimal("12.00")),
        ("charge", Decimal("-21.5000"), Decimal("-9.5000")),
        ("charge", Decimal("-1.0750"), Decimal("-10.5750")),
        ("top-up", Decimal("30.00"), Decimal("19.4250")),
    ]
    assert events == [
        prepay.CREDITED,
        prepay.LOW_CREDIT,
        prepay.EMERGENCY_CREDIT,
        prepay.CREDIT_EXHAUSTED,
        prepay.DISCONNECTED,
        prepay.CREDITED,
        prepay.RECONNECTED,
    ]


def credit_payload(meter: str, attributes: dict[str, str]) -> etree._Element:
    """An EndDeviceControls top-up as the MDM sends it: the credit code and its attributes."""
    ns = cim.noun_namespace("EndDeviceControls")
    root = control_payload(CREDIT, [meter])
    control = root.find(f"{{{ns}}}EndDeviceControl")
    devices = control.find(f"{{{ns}}}EndDevices")
    for name, value in attributes.items():
        attribute = etree.Element(f"{{{ns}}}EndDeviceControlAttribute")
        etree.SubElement(attribute, f"{{{ns}}}name").text = name
        etree.SubElement(attribute, f"{{{ns}}}value").text = value
        devices.addprevious(attribute)
    return root


def test_a_top_up_request_is_parsed_from_the_code_table(cim_schemas: CimSchemas) -> None:
    config = load_config(REPO / "tests" / "data" / "no-tls.toml")
    assert config.commands.controls[CREDIT] == "credit"
    payload = credit_payload("P17", {"amount": "30.00", "currency": "EUR"})
    cim_schemas.payloads["EndDeviceControls"].validate(etree.tostring(payload).decode())
    _, xml = request_message("create", "EndDeviceControls", payload=payload)
    envelope, root = read_envelope(xml, 1 << 20)
    parsed = parse_request(envelope, root, config.commands.controls, datetime.now(UTC))
    assert (parsed.request.action, parsed.request.amount, parsed.request.currency) == (
        "credit",
        "30.00",
        "EUR",
    )
    assert Request.from_json(parsed.request.to_json()) == parsed.request  # as the journal keeps it
    for bad in ({"amount": "-5", "currency": "EUR"}, {"amount": "ten", "currency": "EUR"}, {"amount": "5"}):
        _, xml = request_message("create", "EndDeviceControls", payload=credit_payload("P17", bad))
        envelope, root = read_envelope(xml, 1 << 20)
        with pytest.raises(RequestRefused, match="amount"):
            parse_request(envelope, root, config.commands.controls, datetime.now(UTC))
