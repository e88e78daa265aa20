"""The WAN listener against devices that call it over real TCP: simulated meters (gurux's server on the
socket they opened) and a DCU (gurux's pushes), plus callers that misbehave."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from dlms_cosem.protocol.xdlms.data_notification import DataNotification as CosemDataNotification
from dlms_cosem.protocol.xdlms.data_notification import LongInvokeIdAndPriority as CosemInvoke
from gurux_dlms.enums import InterfaceType
from gurux_dlms.GXByteBuffer import GXByteBuffer
from gurux_dlms.GXDLMSNotify import GXDLMSNotify

from appliance.cli import main
from appliance.clock import Clock
from appliance.collect.dlms import apdu, axdr
from appliance.collect.dlms.push import device_id, parse_push
from appliance.collect.dlms.wrapper import decode_wrapper
from appliance.collect.listener import DlmsListener
from appliance.collect.meters.catalog import REGISTER_A_PLUS_KWH
from appliance.config import MeterSpec, load_config
from appliance.errors import ProtocolError
from appliance.housekeeping import Housekeeping
from appliance.model import Protocol
from appliance.sim.broker import free_port
from appliance.sim.dcu import DialingMeter, SimulatedDcu, logical_name, push_frame
from appliance.sim.dlms_objects import INTERVAL_S, OBIS_IMPORT, MeterConfig, MeterState
from appliance.store import Store
from appliance.store.readings import readings_between
from appliance.store.registry import register_meter, remove_meter
from appliance.store.stats import meter_stats
from appliance.store.wan_devices import WAN_BUS, wan_devices
from tests.conftest import REPO, write_config

NO_TLS = REPO / "tests" / "data" / "no-tls.toml"
# Registers every 2 s; profile and event log once (the first poll reads them whole); clocks left alone.
FAST = """
[schedules.dlms-generic]
registers_s = 2
profile_s = 3600
events_s = 3600
clock_s = 0
"""


# ---------------------------------------------------------------------------------------------------------
# The data-notification codec against gurux and dlms-cosem


def gurux_push(body: axdr.Data, when: datetime | None) -> bytes:
    """gurux's data-notification APDU (wrapper header cut) for our encoding of `body`."""
    notify = GXDLMSNotify(True, 102, 1, InterfaceType.WRAPPER)
    buffer = GXByteBuffer()
    buffer.set(axdr.encode(body))
    (frame,) = notify.generateDataNotificationMessages(when, buffer)
    return decode_wrapper(bytes(frame)).apdu


BODY = axdr.Structure((axdr.OctetString(bytes(6)), axdr.OctetString(b"KFM0001"), axdr.DoubleLongUnsigned(7)))


def test_data_notification_matches_gurux_with_and_without_its_time() -> None:
    # gurux sends invoke id 1, confirmed and high priority (0xC0000001).
    invoke = apdu.LongInvokeIdAndPriority(1, confirmed=True, high_priority=True)
    ours = apdu.DataNotification(BODY, None, invoke)
    assert ours.to_bytes() == gurux_push(BODY, None)
    when = datetime(2024, 5, 6, 7, 8, 9)
    theirs = gurux_push(BODY, when)
    decoded = apdu.decode_apdu(theirs)
    assert isinstance(decoded, apdu.DataNotification)
    assert decoded.body == BODY and decoded.long_invoke_id_and_priority == invoke
    assert decoded.date_time is not None and (decoded.date_time.year, decoded.date_time.second) == (2024, 9)
    assert decoded.to_bytes() == theirs


def test_data_notification_matches_dlms_cosem_without_a_time() -> None:
    # dlms-cosem writes a present date-time as 01 + 12 bytes (an OPTIONAL), where the Green Book and
    # gurux have an OCTET STRING (0C + 12 bytes): only the form without a time is common ground.
    invoke = CosemInvoke(
        0x123456, prioritized=True, confirmed=False, self_descriptive=True, break_on_error=True
    )
    theirs = CosemDataNotification(invoke, None, axdr.encode(BODY)).to_bytes()
    ours = apdu.DataNotification(BODY, None, apdu.LongInvokeIdAndPriority(0x123456, True, True, False, True))
    assert ours.to_bytes() == theirs
    assert apdu.DataNotification.from_bytes(theirs) == ours


@pytest.mark.parametrize(
    "data",
    [
        bytes.fromhex("0f c0 00 00"),  # long invoke id cut short
        bytes.fromhex("0f c0000001 05 0102030405 00"),  # a 5-byte date-time
        bytes.fromhex("0f c0000001 00"),  # no body
        bytes.fromhex("0f c0000001 00 0600000001 ff"),  # a trailing byte
    ],
)
def test_a_broken_data_notification_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        apdu.decode_apdu(data)


def test_a_dcu_push_from_gurux_says_who_sent_it_and_what_each_meter_read() -> None:
    child = MeterState(MeterConfig(1, seed=3, scaler=-1, tz_minutes=60))
    captured = 1_700_000_100 - 1_700_000_100 % INTERVAL_S
    dcu = SimulatedDcu(1, "DCU0001", [child.config])
    push = parse_push(apdu.DataNotification.from_bytes(decode_wrapper(dcu.frame(captured + 5)).apdu))
    assert push.logical_name == "DCU0001" and push.from_dcu
    assert push.meters is not None and [m.logical_name for m in push.meters] == ["SIM03000001"]
    value = push.meters[0].values[0]
    assert (value.obis, value.scaler, value.unit) == (OBIS_IMPORT, -1, 30)
    assert value.raw == child.register_value(OBIS_IMPORT, captured)
    assert value.captured == datetime.fromtimestamp(captured, UTC)
    lone = parse_push(apdu.DataNotification.from_bytes(decode_wrapper(push_frame("SIM03000001")).apdu))
    assert lone.logical_name == "SIM03000001" and not lone.from_dcu


def test_names_that_are_not_ids_get_a_hex_mrid() -> None:
    assert device_id("KFM1200000012345") == "KFM1200000012345"
    assert device_id("A B") == "412042"


# ---------------------------------------------------------------------------------------------------------
# The listener against callers


class Rig:
    """A listener with its own store and config, started by the test and stopped at the end."""

    def __init__(self, tmp_path: Path, **listener: object) -> None:
        settings = {
            "enabled": "true",
            "port": free_port(),
            "push_wait_s": 0.3,
            "timeout_ms": 1000,
            "idle_timeout_s": 5,
            "auto_register": "true",
            **listener,
        }
        lines = "\n".join(f"{key} = {value}" for key, value in settings.items())
        text = f'[hes]\ndata_dir = "{tmp_path}"\n[listener]\n{lines}\n{FAST}'
        self.config = load_config(NO_TLS, write_config(tmp_path / "listener.toml", text))
        self.path = self.config.store_path
        Store(self.path).close()
        self.stop = threading.Event()
        clock = Clock()
        self.listener = DlmsListener(
            self.config,
            lambda: Store(self.path),
            clock,
            Housekeeping(self.config, clock),
            lambda: None,
            self.stop,
        )
        self.listener.start()
        assert self.listener.listening.wait(5)
        self.port = self.listener.port

    def query(self, what: Callable[[Store], object]) -> object:
        store = Store(self.path, readonly=True)
        try:
            return what(store)
        finally:
            store.close()

    def readings(self, mrid: str) -> list:
        return self.query(lambda store: readings_between(store, mrid, 0, 2**40))  # type: ignore[return-value]

    def devices(self) -> dict[str, dict]:
        rows = self.query(wan_devices)
        return {row["logical_name"]: row for row in rows}  # type: ignore[union-attr]

    def alarms(self) -> list[str]:
        """The EndDeviceEvents messages queued, as XML text."""
        rows = self.query(
            lambda store: store.conn.execute(
                "SELECT payload FROM outbox WHERE topic LIKE '%EndDeviceEvents' ORDER BY id"
            ).fetchall()
        )
        return [row[0].decode() for row in rows]  # type: ignore[union-attr]

    def halt(self) -> None:
        self.stop.set()
        self.listener.join(timeout=10)
        assert not self.listener.is_alive()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.halt()


def wait_for(condition: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def closed_within(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the peer closed `sock` (reading whatever it sent), or None if it did not."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < timeout:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - started
    return None


def test_a_meter_that_calls_and_pushes_its_name_is_registered_and_read_on_its_schedule(rig: Rig) -> None:
    meter = DialingMeter(rig.port, MeterConfig(1, seed=11))
    with meter:
        wait_for(
            lambda: (
                len(
                    {
                        r.timestamp
                        for r in rig.readings(meter.logical_name)
                        if r.reading_type == REGISTER_A_PLUS_KWH
                    }
                )
                >= 2
            )
        )
    readings = rig.readings(meter.logical_name)
    assert len({r.reading_type for r in readings}) == 4  # 2 registers, 2 profile columns (35 days)
    # 35 days of both columns; one interval more each when an hour turned since the first read (the
    # profile is due again at the top of the hour).
    interval = [r for r in readings if r.reading_type.is_interval]
    assert len(interval) in (2 * 35 * 96, 2 * (35 * 96 + 1))
    assert len({(r.reading_type, r.timestamp) for r in interval}) == len(interval)
    device = rig.devices()[meter.logical_name]
    assert (device["kind"], device["mrid"], device["status"], device["connections"]) == (
        "meter",
        meter.logical_name,
        "registered",
        1,
    )
    assert device["last_peer"].startswith("127.0.0.1:")
    stats = {row["mrid"]: row for row in rig.query(meter_stats)}  # type: ignore[union-attr]
    assert stats[meter.logical_name]["successes"] >= 2 and stats[meter.logical_name]["timeouts"] == 0
    (alarm,) = rig.alarms()
    assert 'ref="3.7.0.4"' in alarm and meter.logical_name in alarm
    wait_for(lambda: rig.devices()[meter.logical_name]["last_close"] == "hung up")


def test_a_meter_that_does_not_push_is_asked_its_name_and_a_call_again_is_no_new_registration(
    rig: Rig,
) -> None:
    meter = DialingMeter(rig.port, MeterConfig(1, seed=12), push=False)
    for calls in (1, 2):
        with meter:
            wait_for(
                lambda calls=calls: rig.devices().get(meter.logical_name, {}).get("connections") == calls
            )
            wait_for(lambda: rig.readings(meter.logical_name))
        wait_for(lambda: rig.listener.active == 0)
    assert len(rig.alarms()) == 1  # registered once
    assert rig.listener.counts["hung up"] == 2
    # The device calls again while its old connection still looks open (half-open on GPRS): the old
    # one goes, one connection per device.
    again = DialingMeter(rig.port, MeterConfig(1, seed=12))
    with meter:
        wait_for(lambda: rig.devices()[meter.logical_name]["connections"] == 3)
        again.call()
        wait_for(lambda: rig.devices()[meter.logical_name]["connections"] == 4)
        wait_for(lambda: not meter.connected)
        assert again.connected and rig.listener.active == 1
        again.hang_up()
    assert rig.listener.counts["replaced"] == 1


def test_an_unknown_device_is_refused_when_registration_is_off_and_told_once_a_day(tmp_path: Path) -> None:
    rig = Rig(tmp_path, auto_register="false")
    try:
        meter = DialingMeter(rig.port, MeterConfig(1, seed=13))
        for _ in range(2):
            meter.call()
            wait_for(lambda: not meter.connected, timeout=5)  # the HES hung up on it
            meter.hang_up()
        wait_for(lambda: rig.listener.counts["refused"] == 2)
        device = rig.devices()[meter.logical_name]
        assert (device["status"], device["refusals"], device["mrid"]) == ("refused", 2, None)
        (alarm,) = rig.alarms()
        assert 'ref="3.12.0.85"' in alarm and rig.config.hes.id in alarm and meter.logical_name in alarm
        assert rig.readings(meter.logical_name) == []
        # The MDM registers it (bus "wan", mRID = its logical device name): the next call is read.
        spec = MeterSpec(
            meter.logical_name, WAN_BUS, Protocol.DLMS, 0, "dlms-generic", 0, 1, 16, "none", None
        )
        store = Store(rig.path)
        register_meter(store, spec, "mdm", 0)
        store.close()
        with meter:
            wait_for(lambda: rig.readings(meter.logical_name))
        assert rig.devices()[meter.logical_name]["status"] == "registered"
        assert len(rig.alarms()) == 1
    finally:
        rig.halt()


def test_a_meter_the_mdm_removed_is_not_registered_again_behind_its_back(rig: Rig) -> None:
    meter = DialingMeter(rig.port, MeterConfig(1, seed=16))
    with meter:
        wait_for(lambda: rig.readings(meter.logical_name))
    store = Store(rig.path)
    remove_meter(store, meter.logical_name, 0)
    store.close()
    meter.call()
    wait_for(lambda: not meter.connected, timeout=5)
    meter.hang_up()
    assert rig.listener.counts["refused"] == 1
    assert 'ref="3.12.0.85"' in rig.alarms()[-1] and "is taken" in rig.alarms()[-1]


def test_a_dcu_is_one_registration_with_the_meters_behind_it_as_children(rig: Rig) -> None:
    children = [MeterConfig(1, seed=21), MeterConfig(1, seed=22, scaler=-1)]
    dcu = SimulatedDcu(rig.port, "DCU0000000000042", children, interval_s=0.5)
    with dcu:
        wait_for(lambda: dcu.pushes >= 3 and all(rig.readings(logical_name(c)) for c in children))
    devices = rig.devices()
    assert devices["DCU0000000000042"]["kind"] == "dcu"
    for child in children:
        name = logical_name(child)
        assert (devices[name]["kind"], devices[name]["parent"]) == ("meter", "DCU0000000000042")
        # The pushes give the registers at the start of the interval; a run that crosses a
        # quarter-hour boundary holds two intervals, each read once with its own value.
        a_plus = [r for r in rig.readings(name) if r.reading_type == REGISTER_A_PLUS_KWH]
        captured = [r.timestamp.timestamp() for r in a_plus]
        assert len(captured) == len(set(captured)) and len(captured) in (1, 2)
        state = MeterState(child)
        for reading, at in zip(a_plus, captured, strict=True):
            assert at % INTERVAL_S == 0
            raw = state.register_value(OBIS_IMPORT, at)
            assert reading.value == Decimal(raw).scaleb(child.scaler - 3)  # Wh with the scaler, in kWh
    assert (
        sum('ref="3.7.0.4"' in a for a in rig.alarms()) == 2
        and sum('ref="10.7.0.4"' in a for a in rig.alarms()) == 1
    )
    assert "DCU0000000000042" not in {row["mrid"] for row in rig.query(meter_stats)}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: hes\r\n\r\n",
        bytes.fromhex("0001 0001 0066 0004 deadbeef"),  # a wrapper frame holding no APDU we know
        bytes.fromhex("0001 0001 0066 0006 c001c1000801"),  # a request, where a push belongs
        bytes.fromhex("0001 0001 0066 0008 0fc0000001 00 0901"),  # a push whose body is cut short
    ],
)
def test_garbage_closes_that_connection_only(rig: Rig, garbage: bytes) -> None:
    meter = DialingMeter(rig.port, MeterConfig(1, seed=14))
    with meter:
        wait_for(lambda: rig.readings(meter.logical_name))
        with socket.create_connection(("127.0.0.1", rig.port)) as sock:
            sock.sendall(garbage)
            assert closed_within(sock, 5) is not None
        assert meter.connected
        wait_for(lambda: rig.listener.counts["garbage"] == 1)
    assert rig.listener.is_alive()


def test_a_caller_that_says_nothing_or_trickles_is_cut_off(rig: Rig) -> None:
    # push_wait 0.3 s, then the HES asks for the name and waits 1 s for the answer.
    with socket.create_connection(("127.0.0.1", rig.port)) as silent:
        elapsed = closed_within(silent, 10)
    assert elapsed is not None and 1.0 < elapsed < 4.0
    with socket.create_connection(("127.0.0.1", rig.port)) as trickle:
        frame = push_frame("SLOWLORIS")
        started = time.monotonic()
        for byte in frame:  # a valid push, one byte every 0.2 s: never whole within the 1 s timeout
            try:
                trickle.sendall(bytes((byte,)))
            except OSError:
                break
            time.sleep(0.2)
            if time.monotonic() - started > 8:
                break
        assert closed_within(trickle, 5) is not None
        assert time.monotonic() - started < 6
    wait_for(lambda: rig.listener.counts["silent"] == 2)
    assert "SLOWLORIS" not in rig.devices()


def test_more_callers_than_allowed_are_turned_away_at_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_connections=2, push_wait_s=3, timeout_ms=3000)
    try:
        holders = [socket.create_connection(("127.0.0.1", rig.port)) for _ in range(2)]
        wait_for(lambda: rig.listener.active == 2)
        with socket.create_connection(("127.0.0.1", rig.port)) as third:
            elapsed = closed_within(third, 2)
        assert elapsed is not None and elapsed < 1.0
        assert rig.listener.counts["turned_away"] == 1
        for sock in holders:
            sock.close()
        wait_for(lambda: rig.listener.active == 0)
        meter = DialingMeter(rig.port, MeterConfig(1, seed=15))
        with meter:
            wait_for(lambda: rig.readings(meter.logical_name))
    finally:
        rig.halt()


def test_a_connection_that_goes_quiet_is_closed_as_idle(tmp_path: Path) -> None:
    rig = Rig(tmp_path, idle_timeout_s=1)
    try:
        dcu = SimulatedDcu(rig.port, "DCU-QUIET", [MeterConfig(1, seed=31)], interval_s=60)
        with dcu:
            wait_for(lambda: rig.devices().get("DCU-QUIET", {}).get("last_close") == "idle", timeout=10)
            assert rig.devices()["DCU-QUIET"]["connections"] == 1
    finally:
        rig.halt()


def test_config_check_says_when_the_listener_port_is_taken(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        text = f'[listener]\nenabled = true\nbind = "127.0.0.1"\nport = {port}\n'
        config = write_config(tmp_path / "taken.toml", text)
        assert main(["config", "check", str(NO_TLS), str(config)]) == 0  # the daemon may hold it
        assert f"warning: listener.port: {port} is in use on 127.0.0.1" in capsys.readouterr().err
    assert main(["config", "check", str(NO_TLS), str(config)]) == 0
    assert "warning" not in capsys.readouterr().err
