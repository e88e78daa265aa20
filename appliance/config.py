"""One typed config, loaded from TOML files laid over the template `config/hes.toml`.

The dataclasses below are the schema (names and types); the template holds every default, so a
box's config names only what differs. Any error stops the start with one line naming the file,
the key and what was expected (exit code 2).
"""

from __future__ import annotations

import re
import sys
import tomllib
import types
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from appliance.collect.meters import models_for
from appliance.errors import ConfigError
from appliance.model import Protocol

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
class Config:
    """Everything the daemon needs to start, validated."""

    hes: HesSection
    store: StoreSection
    mqtt: MqttSection
    uplink: UplinkSection
    buses: dict[str, BusSpec]
    meters: tuple[MeterSpec, ...]
    sources: tuple[Path, ...]

    @property
    def store_path(self) -> Path:
        """The database file (store.file is relative to hes.data_dir)."""
        return self.hes.data_dir / self.store.file

    def topic(self, *parts: str) -> str:
        """An MQTT topic below this box's root, e.g. topic("cim", "out", "MeterReadings")."""
        return "/".join((self.mqtt.topic_prefix, self.hes.id, *parts))


_SECTIONS = {"hes": HesSection, "store": StoreSection, "mqtt": MqttSection, "uplink": UplinkSection}
_TABLES = {"bus_defaults", "buses", "meter_defaults", "meters", *_SECTIONS}


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
        if hint is bool:
            if not isinstance(value, bool):
                raise self.fail(key, f"expected true or false, got {value!r}")
            return value
        if hint is int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise self.fail(key, f"expected a whole number, got {value!r}")
            return value
        if hint is float:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise self.fail(key, f"expected a number, got {value!r}")
            return float(value)
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
        config = Config(**sections, buses=buses, meters=meters, sources=sources)
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
        if config.mqtt.tls:
            for name in ("ca_file", "cert_file", "key_file"):
                path = getattr(config.mqtt, name)
                checks.append(
                    (path.is_file(), f"mqtt.{name}", f"a readable file (tls = true); {path} is not")
                )
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
        seen: set[str] = set()
        for index, meter in enumerate(config.meters):
            key = f"meters[{index}]"
            checks += [
                (bool(_ID_PATTERN.match(meter.id)), f"{key}.id", "1-64 letters, digits, '-' or '_'"),
                (meter.id not in seen, f"{key}.id", f"a unique meter id; {meter.id!r} appears twice"),
                (meter.bus in config.buses, f"{key}.bus", f"one of the buses {sorted(config.buses)}"),
                (meter.poll_interval_s >= 1, f"{key}.poll_interval_s", "1 second or more"),
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
        for ok, key, expected in checks:
            if not ok:
                raise self.fail(key, expected)


DLMS_AUTH = ("none", "low", "hls-gmac")
_SECRET_LENGTHS = {"system_title": 8, "encryption_key": 16, "authentication_key": 16}


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
    if meter.auth in ("low", "hls-gmac"):
        needed = {"password"} if meter.auth == "low" else set(_SECRET_LENGTHS)
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
