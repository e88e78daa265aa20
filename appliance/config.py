"""One typed config, loaded from TOML files laid over the template `config/hes.toml`.

The dataclasses below are the schema (names and types); the template holds every default, so a
box's config names only what differs. Any error stops the start with one line naming the file,
the key and what was expected (exit code 2).
"""

from __future__ import annotations

import ipaddress
import re
import sys
import tomllib
import types
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from appliance.collect.meters import MODELS, models_for
from appliance.errors import ConfigError, TariffError
from appliance.model import Protocol
from appliance.tariff.loader import load_tariffs
from appliance.tariff.prepay import parse_friendly

TEMPLATE_NAME = "hes.toml"
_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class HesSection:
    id: str
    data_dir: Path
    log_level: str


@dataclass(frozen=True)
class StoreSection:
    file: Path
    busy_timeout_ms: int
    retention_days: int
    max_size_mb: int


@dataclass(frozen=True)
class MqttSection:
    host: str
    port: int
    protocol: str
    client_id: str
    keepalive_s: int
    tls: bool
    ca_file: Path
    cert_file: Path
    key_file: Path
    username: str
    password_file: Path | None
    topic_prefix: str
    reconnect_min_s: float
    reconnect_max_s: float
    session_expiry_s: int


@dataclass(frozen=True)
class UplinkSection:
    batch_max_readings: int
    batch_max_bytes: int
    max_inflight: int
    scan_interval_s: float
    encoding: str
    status_interval_s: float
    housekeeping_interval_s: float


@dataclass(frozen=True)
class BusSpec:
    name: str
    enabled: bool
    device: str
    baud: int
    parity: str
    bytesize: int
    stopbits: int
    rs485_mode: bool
    timeout_ms: int
    retries: int
    backoff_max_s: int


@dataclass(frozen=True)
class MeterSpec:
    id: str
    bus: str
    protocol: Protocol
    address: int
    model: str
    poll_interval_s: int
    logical_address: int
    client_address: int
    auth: str
    keys_file: Path | None


@dataclass(frozen=True)
class Schedule:
    """How often each part of a meter model is read, in seconds; 0 means never."""

    registers_s: int
    profile_s: int
    events_s: int
    clock_s: int


@dataclass(frozen=True)
class DiscoverySection:
    modbus_first: int
    modbus_last: int
    hdlc_first: int
    hdlc_last: int
    timeout_ms: int
    interval_s: int


@dataclass(frozen=True)
class MeterTimeSection:
    tolerance_s: float
    max_correction_s: float
    mode: str
    step_s: float


@dataclass(frozen=True)
class ConsoleSection:
    socket: Path
    group: str
    auth: str
    idle_timeout_s: int
    lockout_attempts: int
    lockout_s: int
    export_dir: Path
    settings_file: Path
    audit_retention_days: int


@dataclass(frozen=True)
class CommandsSection:
    allowed_sources: tuple[str, ...]
    controls: dict[str, str]
    relay_max_operations: int
    relay_window_s: int
    default_expiry_s: int
    max_request_bytes: int
    key_wrap_file: Path | None


CONTROL_ACTIONS = ("disconnect", "connect", "arm", "clock_sync", "credit")


@dataclass(frozen=True)
class ModemSection:
    enabled: bool
    device: str
    baud: int
    apn: str
    command_timeout_s: float
    gpio: str
    power_pin: int
    power_kind: str
    reset_pin: int
    active_high: bool
    pwrkey_s: float
    reset_s: float
    power_off_s: float
    boot_s: float


@dataclass(frozen=True)
class WanSection:
    check_interval_s: float
    ping_timeout_s: float
    down_after_s: float
    rung_wait_s: float
    attach_command: str
    attach_timeout_s: float
    backoff_max_s: float
    max_resets_per_day: int
    interface: str


@dataclass(frozen=True)
class ListenerSection:
    enabled: bool
    bind: str
    port: int
    max_connections: int
    idle_timeout_s: float
    push_wait_s: float
    timeout_ms: int
    auto_register: bool
    model: str
    poll_interval_s: int


@dataclass(frozen=True)
class LedsSection:
    enabled: bool
    gpio: str
    power_pin: int
    wan_pin: int
    gps_pin: int
    rs485_pin: int
    fault_pin: int


@dataclass(frozen=True)
class ClockSection:
    gpsd_host: str
    gpsd_port: int
    tolerance_s: float
    loss_after_s: float
    holdover_budget_s: float
    holdover_drift_ppm: float
    discipline: str


@dataclass(frozen=True)
class QualitySection:
    max_by_unit: dict[str, float]
    max_by_reading_type: dict[str, float]


@dataclass(frozen=True)
class AggregationSection:
    interval_s: int
    grace_s: int
    lookback_s: int
    bus_totals: bool


@dataclass(frozen=True)
class NetworkSection:
    lan_interface: str
    lan_vlan_id: int
    lan_address: str
    lan_gateway: str
    lan_dns: tuple[str, ...]
    lan_tcp_ports: tuple[int, ...]


@dataclass(frozen=True)
class TariffsSection:
    dir: Path
    meters: dict[str, str]
    prepay: tuple[str, ...]
    low_credit: str
    emergency_credit: str
    friendly_nights: str
    friendly_weekends: bool
    friendly_holidays: bool
    apportion_interval_s: float
    gap_wait_s: int
    close_grace_s: int
    relay_retry_s: float


@dataclass(frozen=True)
class GroupSpec:
    name: str
    meters: tuple[str, ...]


@dataclass(frozen=True)
class Config:
    """Everything the daemon needs to start, validated."""

    hes: HesSection
    store: StoreSection
    mqtt: MqttSection
    uplink: UplinkSection
    discovery: DiscoverySection
    meter_time: MeterTimeSection
    console: ConsoleSection
    commands: CommandsSection
    modem: ModemSection
    wan: WanSection
    listener: ListenerSection
    leds: LedsSection
    clock: ClockSection
    quality: QualitySection
    aggregation: AggregationSection
    network: NetworkSection
    tariffs: TariffsSection
    buses: dict[str, BusSpec]
    meters: tuple[MeterSpec, ...]
    schedules: dict[str, Schedule]
    groups: dict[str, GroupSpec]
    sources: tuple[Path, ...]

    @property
    def store_path(self) -> Path:
        """The database file (store.file is relative to hes.data_dir)."""
        return self.hes.data_dir / self.store.file

    def topic(self, *parts: str) -> str:
        """An MQTT topic below this box's root, e.g. topic("cim", "out", "MeterReadings")."""
        return "/".join((self.mqtt.topic_prefix, self.hes.id, *parts))


_SECTIONS = {
    "hes": HesSection,
    "store": StoreSection,
    "mqtt": MqttSection,
    "uplink": UplinkSection,
    "discovery": DiscoverySection,
    "meter_time": MeterTimeSection,
    "console": ConsoleSection,
    "commands": CommandsSection,
    "modem": ModemSection,
    "wan": WanSection,
    "listener": ListenerSection,
    "leds": LedsSection,
    "clock": ClockSection,
    "quality": QualitySection,
    "aggregation": AggregationSection,
    "network": NetworkSection,
    "tariffs": TariffsSection,
}
_TABLES = {
    "bus_defaults",
    "buses",
    "meter_defaults",
    "meters",
    "schedule_defaults",
    "schedules",
    "groups",
    *_SECTIONS,
}


def template_path() -> Path:
    """Where the template lives: the source tree, or share/hes of the installed environment."""
    for candidate in (
        Path(__file__).resolve().parent.parent / "config" / TEMPLATE_NAME,
        Path(sys.prefix) / "share" / "hes" / TEMPLATE_NAME,
    ):
        if candidate.is_file():
            return candidate
    raise ConfigError(TEMPLATE_NAME, "", "the config template is not installed (reinstall the package)")


def load_config(*paths: Path | str) -> Config:
    """Read the template, overlay `paths` in order, and return the validated config."""
    loader = _Loader()
    loader.overlay(template_path())
    for path in paths:
        loader.overlay(Path(path))
    return loader.build(tuple(Path(p) for p in paths))


class _Loader:
    """Merges TOML files while remembering which file set each key, for error messages."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.origin: dict[str, Path] = {}

    def overlay(self, path: Path) -> None:
        try:
            with path.open("rb") as handle:
                document = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(str(path), "", "file not found") from None
        except OSError as exc:
            raise ConfigError(str(path), "", f"cannot be read ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), "", f"not valid TOML ({exc})") from None
        for key in document:
            if key not in _TABLES:
                raise ConfigError(str(path), key, f"unknown section; expected one of {sorted(_TABLES)}")
        self._merge(self.data, document, path, "")

    def _merge(self, into: dict[str, Any], new: dict[str, Any], path: Path, prefix: str) -> None:
        for key, value in new.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                self._merge(into[key], value, path, dotted + ".")
            else:
                into[key] = value
                self._mark(dotted, value, path)

    def _mark(self, dotted: str, value: object, path: Path) -> None:
        self.origin[dotted] = path
        if isinstance(value, dict):
            for key, item in value.items():
                self._mark(f"{dotted}.{key}", item, path)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self._mark(f"{dotted}[{index}]", item, path)

    def fail(self, key: str, expected: str) -> ConfigError:
        """A ConfigError naming the file that set `key` (or its nearest parent)."""
        probe = key
        while probe and probe not in self.origin:
            probe = probe.rpartition(".")[0] if "." in probe else ""
        return ConfigError(str(self.origin.get(probe, "<config>")), key, expected)

    def section(self, cls: type, key: str, values: Any, extra: dict[str, Any] | None = None) -> Any:
        """An instance of dataclass `cls` from table `values`, each field type-checked."""
        if not isinstance(values, dict):
            raise self.fail(key, "expected a table")
        hints = get_type_hints(cls)
        names = [f.name for f in fields(cls) if f.name not in (extra or {})]
        for name in values:
            if name not in names:
                raise self.fail(f"{key}.{name}", f"unknown key; expected one of {names}")
        kwargs = dict(extra or {})
        for name in names:
            if name not in values:
                raise self.fail(f"{key}.{name}", "missing (and no default in the template)")
            kwargs[name] = self._typed(f"{key}.{name}", values[name], hints[name])
        return cls(**kwargs)

    def _typed(self, key: str, value: Any, hint: Any) -> Any:
        optional = get_origin(hint) is types.UnionType and type(None) in get_args(hint)
        if optional:
            hint = next(arg for arg in get_args(hint) if arg is not type(None))
            if value == "":
                return None
        if hint in (bool, int, float):
            return self._scalar(key, value, hint)
        if get_origin(hint) in (tuple, dict):
            return self._collection(key, value, hint)
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {value!r}")
        if hint is Path:
            return self._path(key, value)
        if isinstance(hint, type) and issubclass(hint, Protocol):
            try:
                return Protocol(value)
            except ValueError:
                raise self.fail(
                    key, f"expected one of {[p.value for p in Protocol]}, got {value!r}"
                ) from None
        return value

    def _scalar(self, key: str, value: Any, hint: type) -> Any:
        """A boolean, a whole number or a number (TOML's true is not a number here)."""
        if hint is bool:
            if not isinstance(value, bool):
                raise self.fail(key, f"expected true or false, got {value!r}")
            return value
        if hint is int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise self.fail(key, f"expected a whole number, got {value!r}")
            return value
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.fail(key, f"expected a number, got {value!r}")
        return float(value)

    def _collection(self, key: str, value: Any, hint: Any) -> Any:
        """A list of strings or whole numbers, a table of numbers, or a table of strings."""
        if get_origin(hint) is tuple:
            kind = get_args(hint)[0]
            if not isinstance(value, list) or not all(
                isinstance(item, kind) and not isinstance(item, bool) for item in value
            ):
                what = "whole numbers" if kind is int else "strings"
                raise self.fail(key, f"expected a list of {what}, got {value!r}")
            return tuple(value)
        if hint == dict[str, float]:
            return self._numbers(key, value)
        if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
            raise self.fail(key, f"expected a table of strings, got {value!r}")
        return dict(value)

    def _numbers(self, key: str, value: Any) -> dict[str, float]:
        """A table of numbers, e.g. { V = 1000, Hz = 70 }."""
        if not isinstance(value, dict) or not all(
            isinstance(item, int | float) and not isinstance(item, bool) for item in value.values()
        ):
            raise self.fail(key, f"expected a table of numbers, got {value!r}")
        return {name: float(item) for name, item in value.items()}

    def _path(self, key: str, value: str) -> Path:
        path = Path(value)
        if path.is_absolute() or key.startswith("store."):
            return path
        return (self.origin.get(key, Path.cwd()).parent / path).resolve()

    def build(self, sources: tuple[Path, ...]) -> Config:
        data = self.data
        sections = {name: self.section(cls, name, data.get(name, {})) for name, cls in _SECTIONS.items()}
        buses = {
            name: self.section(
                BusSpec, f"buses.{name}", {**data.get("bus_defaults", {}), **values}, {"name": name}
            )
            for name, values in self._table(data, "buses").items()
        }
        meter_list = data.get("meters", [])
        if not isinstance(meter_list, list):
            raise self.fail("meters", "expected [[meters]] tables")
        meters = tuple(
            self.section(MeterSpec, f"meters[{i}]", {**data.get("meter_defaults", {}), **values})
            for i, values in enumerate(meter_list)
        )
        schedules_set = self._table(data, "schedules")
        for name in schedules_set:
            if name not in MODELS:
                raise self.fail(f"schedules.{name}", f"a meter model, one of {sorted(MODELS)}")
        schedules = {
            name: self.section(
                Schedule,
                f"schedules.{name}",
                {**data.get("schedule_defaults", {}), **schedules_set.get(name, {})},
            )
            for name in MODELS
        }
        groups = {
            name: self.section(GroupSpec, f"groups.{name}", values, {"name": name})
            for name, values in self._table(data, "groups").items()
        }
        config = Config(
            **sections, buses=buses, meters=meters, schedules=schedules, groups=groups, sources=sources
        )
        self._check(config)
        return config

    def _table(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        table = data.get(key, {})
        if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
            raise self.fail(key, "expected named tables, e.g. [buses.A]")
        return table

    def _check(self, config: Config) -> None:
        """Values that are well-typed but impossible."""
        checks: list[tuple[bool, str, str]] = [
            (bool(_ID_PATTERN.match(config.hes.id)), "hes.id", "1-64 letters, digits, '-' or '_'"),
            (
                config.hes.log_level in {"debug", "info", "warning", "error"},
                "hes.log_level",
                "one of debug, info, warning, error",
            ),
            (config.store.busy_timeout_ms >= 0, "store.busy_timeout_ms", "0 or more"),
            (config.store.retention_days >= 0, "store.retention_days", "0 or more days"),
            (config.store.max_size_mb >= 1, "store.max_size_mb", "1 MiB or more"),
            (1 <= config.mqtt.port <= 65535, "mqtt.port", "a TCP port, 1-65535"),
            (bool(config.mqtt.host), "mqtt.host", "the broker's host name or address"),
            (config.mqtt.protocol in {"auto", "5", "3.1.1"}, "mqtt.protocol", "auto, 5 or 3.1.1"),
            (config.mqtt.keepalive_s >= 5, "mqtt.keepalive_s", "5 seconds or more"),
            (
                0 < config.mqtt.reconnect_min_s <= config.mqtt.reconnect_max_s,
                "mqtt.reconnect_min_s",
                "more than 0 and at most mqtt.reconnect_max_s",
            ),
            (bool(_ID_PATTERN.match(config.mqtt.topic_prefix)), "mqtt.topic_prefix", "a topic level"),
            (config.uplink.batch_max_readings >= 1, "uplink.batch_max_readings", "1 or more"),
            (config.uplink.batch_max_bytes >= 4096, "uplink.batch_max_bytes", "4096 or more"),
            (1 <= config.uplink.max_inflight <= 100, "uplink.max_inflight", "1-100"),
            (config.uplink.scan_interval_s > 0, "uplink.scan_interval_s", "more than 0"),
            (config.uplink.encoding in {"xml", "cbor"}, "uplink.encoding", "xml or cbor"),
            (config.uplink.status_interval_s >= 1, "uplink.status_interval_s", "1 second or more"),
            (
                config.uplink.housekeeping_interval_s >= 1,
                "uplink.housekeeping_interval_s",
                "1 second or more",
            ),
        ]
        if config.mqtt.password_file is not None:
            checks.append(
                (config.mqtt.password_file.is_file(), "mqtt.password_file", 'a readable file or ""')
            )
        for bus in config.buses.values():
            key = f"buses.{bus.name}"
            checks += [
                (not bus.enabled or bool(bus.device), f"{key}.device", "the serial device of an enabled bus"),
                (300 <= bus.baud <= 921600, f"{key}.baud", "a baud rate, 300-921600"),
                (bus.parity in {"N", "E", "O"}, f"{key}.parity", "N, E or O"),
                (bus.bytesize in {7, 8}, f"{key}.bytesize", "7 or 8"),
                (bus.stopbits in {1, 2}, f"{key}.stopbits", "1 or 2"),
                (10 <= bus.timeout_ms <= 60000, f"{key}.timeout_ms", "10-60000"),
                (0 <= bus.retries <= 10, f"{key}.retries", "0-10"),
                (bus.backoff_max_s >= 1, f"{key}.backoff_max_s", "1 second or more"),
            ]
        checks += _collection_checks(config)
        checks += _console_checks(config)
        checks += _commands_checks(config)
        seen: set[str] = set()
        for index, meter in enumerate(config.meters):
            key = f"meters[{index}]"
            checks += [
                (bool(_ID_PATTERN.match(meter.id)), f"{key}.id", "1-64 letters, digits, '-' or '_'"),
                (meter.id not in seen, f"{key}.id", f"a unique meter id; {meter.id!r} appears twice"),
                (meter.bus in config.buses, f"{key}.bus", f"one of the buses {sorted(config.buses)}"),
                (
                    meter.poll_interval_s >= 0,
                    f"{key}.poll_interval_s",
                    "0 (the model's schedules.registers_s) or more seconds",
                ),
                (
                    meter.model in models_for(meter.protocol),
                    f"{key}.model",
                    f"a {meter.protocol} model: {models_for(meter.protocol)}",
                ),
            ]
            seen.add(meter.id)
            if meter.protocol is Protocol.MODBUS:
                checks.append((1 <= meter.address <= 247, f"{key}.address", "a Modbus unit id, 1-247"))
            else:
                checks += _dlms_checks(meter, key)
            if meter.bus in config.buses and not config.buses[meter.bus].enabled:
                checks.append((False, f"{key}.bus", f"an enabled bus; bus {meter.bus} is disabled"))
        checks += _wan_checks(config)
        checks += _listener_checks(config.listener)
        checks += _leds_checks(config)
        checks += _clock_checks(config.clock)
        checks += _aggregation_checks(config)
        checks += _network_checks(config.network)
        checks += _tariffs_checks(config)
        for ok, key, expected in checks:
            if not ok:
                raise self.fail(key, expected)


def bus_total_id(hes_id: str, bus: str) -> str:
    """The mRID of a bus's total: unique towards an MDM that hears many head-ends."""
    return f"{hes_id}-bus-{bus}"


def _aggregation_checks(config: Config) -> list[tuple[bool, str, str]]:
    """Totals: the slot, the grace period, and group names that cannot be taken for a meter."""
    aggregation = config.aggregation
    checks = [
        (
            60 <= aggregation.interval_s <= 86400 and 86400 % aggregation.interval_s == 0,
            "aggregation.interval_s",
            "60-86400 seconds, dividing a day",
        ),
        (aggregation.grace_s >= 0, "aggregation.grace_s", "0 or more seconds"),
        (
            aggregation.lookback_s >= aggregation.grace_s + aggregation.interval_s,
            "aggregation.lookback_s",
            "at least aggregation.grace_s + aggregation.interval_s",
        ),
    ]
    taken = {meter.id for meter in config.meters} | {bus_total_id(config.hes.id, b) for b in config.buses}
    for name, group in config.groups.items():
        key = f"groups.{name}"
        checks += [
            (bool(_ID_PATTERN.match(name)), key, "a group name of 1-64 letters, digits, '-' or '_'"),
            (name not in taken, key, "a name no meter and no bus total uses (it is the total's mRID)"),
            (bool(group.meters), f"{key}.meters", "one or more meter ids"),
            (len(set(group.meters)) == len(group.meters), f"{key}.meters", "each meter once"),
        ]
    return checks


def _wan_checks(config: Config) -> list[tuple[bool, str, str]]:
    """The modem and the WAN health monitor."""
    modem, wan = config.modem, config.wan
    return [
        (not modem.enabled or bool(modem.device), "modem.device", "the modem's AT port (modem enabled)"),
        (1200 <= modem.baud <= 921600, "modem.baud", "a baud rate, 1200-921600"),
        (0.5 <= modem.command_timeout_s <= 300, "modem.command_timeout_s", "0.5-300 seconds"),
        (modem.gpio in {"rpi", "fake"}, "modem.gpio", "rpi or fake"),
        (-1 <= modem.power_pin <= 27, "modem.power_pin", "a BCM GPIO number, 0-27, or -1 for none"),
        (modem.power_kind in {"pwrkey", "enable"}, "modem.power_kind", "pwrkey or enable"),
        (-1 <= modem.reset_pin <= 27, "modem.reset_pin", "a BCM GPIO number, 0-27, or -1 for none"),
        (
            modem.power_pin < 0 or modem.power_pin != modem.reset_pin,
            "modem.reset_pin",
            "a line other than modem.power_pin",
        ),
        (modem.pwrkey_s > 0 and modem.reset_s > 0, "modem.pwrkey_s", "more than 0 (and reset_s too)"),
        (modem.power_off_s >= 0 and modem.boot_s > 0, "modem.boot_s", "more than 0 (power_off_s 0 or more)"),
        (wan.check_interval_s >= 0.1, "wan.check_interval_s", "0.1 seconds or more"),
        (wan.ping_timeout_s > 0, "wan.ping_timeout_s", "more than 0"),
        (wan.down_after_s >= 0, "wan.down_after_s", "0 or more seconds"),
        (wan.rung_wait_s > 0, "wan.rung_wait_s", "more than 0"),
        (wan.attach_timeout_s > 0, "wan.attach_timeout_s", "more than 0"),
        (wan.backoff_max_s >= wan.rung_wait_s, "wan.backoff_max_s", "at least wan.rung_wait_s"),
        (wan.max_resets_per_day >= 0, "wan.max_resets_per_day", "0 or more"),
    ]


def _clock_checks(clock: ClockSection) -> list[tuple[bool, str, str]]:
    return [
        (1 <= clock.gpsd_port <= 65535, "clock.gpsd_port", "a TCP port, 1-65535"),
        (clock.tolerance_s > 0, "clock.tolerance_s", "more than 0 seconds"),
        (clock.loss_after_s > 0, "clock.loss_after_s", "more than 0 seconds"),
        (clock.holdover_budget_s >= 0, "clock.holdover_budget_s", "0 or more seconds"),
        (clock.holdover_drift_ppm > 0, "clock.holdover_drift_ppm", "more than 0 ppm"),
        (clock.discipline in {"chrony", "daemon"}, "clock.discipline", "chrony or daemon"),
    ]


def _leds_checks(config: Config) -> list[tuple[bool, str, str]]:
    """The LED panel: five distinct BCM lines, none of them the modem's."""
    modem = config.modem
    modem_pins = {modem.power_pin, modem.reset_pin} if modem.enabled else set()
    checks = [(config.leds.gpio in {"rpi", "fake"}, "leds.gpio", "rpi or fake")]
    taken: set[int] = set()
    for name in ("power_pin", "wan_pin", "gps_pin", "rs485_pin", "fault_pin"):
        pin = getattr(config.leds, name)
        checks += [
            (0 <= pin <= 27, f"leds.{name}", "a BCM GPIO number, 0-27"),
            (pin not in taken, f"leds.{name}", f"a line no other LED uses; {pin} is taken"),
            (pin not in modem_pins, f"leds.{name}", f"a line the modem does not use; {pin} is the modem's"),
        ]
        taken.add(pin)
    return checks


def _listener_checks(listener: ListenerSection) -> list[tuple[bool, str, str]]:
    """The DLMS listener for devices that connect over the WAN."""
    return [
        (1 <= listener.port <= 65535, "listener.port", "a TCP port, 1-65535"),
        (1 <= listener.max_connections <= 1000, "listener.max_connections", "1-1000"),
        (listener.idle_timeout_s >= 1, "listener.idle_timeout_s", "1 second or more"),
        (0 <= listener.push_wait_s <= 60, "listener.push_wait_s", "0-60 seconds"),
        (100 <= listener.timeout_ms <= 120000, "listener.timeout_ms", "100-120000"),
        (
            listener.model in models_for(Protocol.DLMS),
            "listener.model",
            f"a DLMS model: {models_for(Protocol.DLMS)}",
        ),
        (listener.poll_interval_s >= 0, "listener.poll_interval_s", "0 (the model's schedule) or more"),
    ]


def _collection_checks(config: Config) -> list[tuple[bool, str, str]]:
    """Schedules, discovery and meter time: well-typed values that are impossible."""
    checks: list[tuple[bool, str, str]] = []
    for name, schedule in config.schedules.items():
        protocol = MODELS[name].protocol
        for task in ("registers_s", "profile_s", "events_s", "clock_s"):
            checks.append((getattr(schedule, task) >= 0, f"schedules.{name}.{task}", "0 (never) or more"))
        for task in ("profile_s", "events_s", "clock_s"):
            checks.append(
                (
                    protocol is Protocol.DLMS or not getattr(schedule, task),
                    f"schedules.{name}.{task}",
                    f"0: a {protocol} model has no {task[:-2]}",
                )
            )
    discovery = config.discovery
    checks += [
        (1 <= discovery.modbus_first <= discovery.modbus_last <= 247, "discovery.modbus_first", "1-247"),
        (16 <= discovery.hdlc_first <= discovery.hdlc_last <= 16383, "discovery.hdlc_first", "16-16383"),
        (10 <= discovery.timeout_ms <= 10000, "discovery.timeout_ms", "10-10000"),
        (discovery.interval_s >= 0, "discovery.interval_s", "0 (only on request) or more seconds"),
        (config.meter_time.mode in {"set", "step"}, "meter_time.mode", "set or step"),
        (
            0 <= config.meter_time.tolerance_s < config.meter_time.max_correction_s,
            "meter_time.tolerance_s",
            "0 or more, and less than meter_time.max_correction_s",
        ),
        (config.meter_time.step_s > 0, "meter_time.step_s", "more than 0 seconds"),
    ]
    return checks


def _console_checks(config: Config) -> list[tuple[bool, str, str]]:
    """The technician console and its control socket."""
    console = config.console
    return [
        (bool(console.group), "console.group", "the group whose members may use the control socket"),
        (console.auth in {"password", "os"}, "console.auth", "password or os"),
        (console.idle_timeout_s >= 1, "console.idle_timeout_s", "1 second or more"),
        (console.lockout_attempts >= 1, "console.lockout_attempts", "1 or more"),
        (console.lockout_s >= 1, "console.lockout_s", "1 second or more"),
        (console.audit_retention_days >= 30, "console.audit_retention_days", "30 days or more"),
    ]


def _commands_checks(config: Config) -> list[tuple[bool, str, str]]:
    """Requests from the MDM: the control code table, the relay rate limit, expiry and size."""
    commands = config.commands
    checks = [
        (config.mqtt.session_expiry_s >= 0, "mqtt.session_expiry_s", "0 or more seconds"),
        (commands.relay_max_operations >= 1, "commands.relay_max_operations", "1 or more"),
        (commands.relay_window_s >= 1, "commands.relay_window_s", "1 second or more"),
        (commands.default_expiry_s >= 1, "commands.default_expiry_s", "1 second or more"),
        (commands.max_request_bytes >= 4096, "commands.max_request_bytes", "4096 or more"),
    ]
    for code, action in commands.controls.items():
        parts = code.split(".")
        checks += [
            (
                len(parts) == 4 and all(p.isdigit() for p in parts),
                f"commands.controls.{code}",
                "an EndDeviceControlType code: 4 dotted numbers",
            ),
            (action in CONTROL_ACTIONS, f"commands.controls.{code}", f"one of {list(CONTROL_ACTIONS)}"),
        ]
    if commands.key_wrap_file is not None:
        checks.append((commands.key_wrap_file.is_file(), "commands.key_wrap_file", 'a readable file or ""'))
    return checks


def missing_credentials(config: Config) -> str | None:
    """The broker's TLS file this box still lacks, or None. Not a config error: a fresh box collects
    and keeps its readings while its certificate is being signed; the uplink waits for the files."""
    if not config.mqtt.tls:
        return None
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(config.mqtt, name)
        if not path.is_file():
            return f"mqtt.{name}: {path} is missing (tls = true)"
    return None


DLMS_AUTH = ("none", "low", "hls-gmac")
_SECRET_LENGTHS = {"system_title": 8, "encryption_key": 16, "authentication_key": 16}
# The secrets each DLMS authentication needs in the meter's keys file ([[meters]], MDM's MeterConfig).
NEEDED_KEYS = {"low": frozenset({"password"}), "hls-gmac": frozenset(_SECRET_LENGTHS)}


def read_meter_secrets(path: Path) -> dict[str, str]:
    """The secrets file of a DLMS meter; ValueError says what is wrong without showing any secret."""
    try:
        with path.open("rb") as handle:
            secrets = tomllib.load(handle)
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError:
        raise ValueError("is not valid TOML") from None
    for name, value in secrets.items():
        if name not in ("password", *_SECRET_LENGTHS) or not isinstance(value, str):
            raise ValueError(f"holds {name!r}; expected password or {', '.join(_SECRET_LENGTHS)} as strings")
        if name in _SECRET_LENGTHS:
            try:
                length = len(bytes.fromhex(value))
            except ValueError:
                raise ValueError(f"{name} is not hex") from None
            if length != _SECRET_LENGTHS[name]:
                raise ValueError(f"{name} must be {_SECRET_LENGTHS[name]} bytes, not {length}")
    return secrets


def _dlms_checks(meter: MeterSpec, key: str) -> list[tuple[bool, str, str]]:
    checks = [
        (16 <= meter.address <= 16383, f"{key}.address", "an HDLC physical server address, 16-16383"),
        (1 <= meter.logical_address <= 16383, f"{key}.logical_address", "1-16383"),
        (1 <= meter.client_address <= 127, f"{key}.client_address", "1-127"),
        (meter.auth in DLMS_AUTH, f"{key}.auth", f"one of {list(DLMS_AUTH)}"),
    ]
    if meter.auth in NEEDED_KEYS:
        needed = NEEDED_KEYS[meter.auth]
        if meter.keys_file is None:
            checks.append(
                (False, f"{key}.keys_file", f"a secrets file with {sorted(needed)} (auth = {meter.auth})")
            )
        else:
            try:
                missing = needed - set(read_meter_secrets(meter.keys_file))
                checks.append(
                    (not missing, f"{key}.keys_file", f"{meter.keys_file} to hold {sorted(missing)}")
                )
            except ValueError as exc:
                checks.append((False, f"{key}.keys_file", f"{meter.keys_file} {exc}"))
    return checks


def _is_address(text: str, parse: Any) -> bool:
    try:
        parse(text)
    except ValueError:
        return False
    return True


def _tariffs_checks(config: Config) -> list[tuple[bool, str, str]]:
    """Tariff assignments: the files load and validate, prepay meters have a tariff, amounts are exact."""
    section = config.tariffs
    checks: list[tuple[bool, str, str]] = []
    for key in ("low_credit", "emergency_credit"):
        amount = getattr(section, key)
        checks.append((_is_amount(amount), f"tariffs.{key}", 'an amount as a string, e.g. "5.00"'))
    try:
        parse_friendly(section.friendly_nights, section.friendly_weekends, section.friendly_holidays)
    except TariffError as exc:
        checks.append((False, "tariffs.friendly_nights", str(exc)))
    checks += [
        (section.apportion_interval_s >= 1, "tariffs.apportion_interval_s", "1 second or more"),
        (section.gap_wait_s >= 0, "tariffs.gap_wait_s", "0 or more seconds"),
        (section.close_grace_s >= 0, "tariffs.close_grace_s", "0 or more seconds"),
        (section.relay_retry_s >= 1, "tariffs.relay_retry_s", "1 second or more"),
    ]
    for meter in section.prepay:
        checks.append((meter in section.meters, "tariffs.prepay", f"meters with a tariff; {meter} has none"))
    if section.meters:
        try:
            known = load_tariffs(section.dir)
        except TariffError as exc:
            return [*checks, (False, "tariffs.dir", str(exc))]
        for meter, name in section.meters.items():
            expected = f"a tariff in {section.dir}: {sorted(known)}"
            checks.append((name in known, f"tariffs.meters.{meter}", expected))
    return checks


def _is_amount(text: str) -> bool:
    try:
        return Decimal(text).is_finite() and Decimal(text) >= 0
    except ArithmeticError:
        return False


def _network_checks(network: NetworkSection) -> list[tuple[bool, str, str]]:
    """The LAN towards the NOC, as the image's hes-netgen renders it for systemd-networkd."""
    static = "/" in network.lan_address and _is_address(network.lan_address, ipaddress.ip_interface)
    return [
        (
            bool(re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", network.lan_interface)),
            "network.lan_interface",
            "a network interface name such as eth0",
        ),
        (0 <= network.lan_vlan_id <= 4094, "network.lan_vlan_id", "0 (untagged) or a VLAN id, 1-4094"),
        (
            network.lan_address == "dhcp" or static,
            "network.lan_address",
            '"dhcp" or an address with its prefix length, e.g. "10.20.1.15/24"',
        ),
        (
            not network.lan_gateway or _is_address(network.lan_gateway, ipaddress.ip_address),
            "network.lan_gateway",
            'an IP address or ""',
        ),
        (
            all(_is_address(server, ipaddress.ip_address) for server in network.lan_dns),
            "network.lan_dns",
            "IP addresses of DNS servers",
        ),
        (
            all(1 <= port <= 65535 for port in network.lan_tcp_ports),
            "network.lan_tcp_ports",
            "TCP ports, 1-65535",
        ),
    ]


def load_network(*paths: Path | str) -> tuple[NetworkSection, ListenerSection]:
    """[network] and [listener] alone, checked. The image renders the network and the firewall from
    them at boot, which must work even while another part of the config (a TLS file not provisioned
    yet) is wrong."""
    loader = _Loader()
    loader.overlay(template_path())
    for path in paths:
        loader.overlay(Path(path))
    network = loader.section(NetworkSection, "network", loader.data.get("network", {}))
    listener = loader.section(ListenerSection, "listener", loader.data.get("listener", {}))
    for ok, key, expected in [*_network_checks(network), *_listener_checks(listener)]:
        if not ok:
            raise loader.fail(key, expected)
    return network, listener
