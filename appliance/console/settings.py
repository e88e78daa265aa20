"""The few settings a technician may change from the console (`config show`, `config set`).

Changes go into `console.settings_file`, a TOML overlay the daemon writes (the console cannot write
/data); they take effect at the next start of a daemon that lays that file over the box's config.
A change is checked by loading the whole config with it first: what `config set` accepts starts.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from appliance.config import Config, load_config
from appliance.errors import ConfigError, ControlError

# Setting -> its type. `buses.*` stands for every configured bus.
SETTINGS: dict[str, type] = {
    "hes.log_level": str,
    "mqtt.host": str,
    "mqtt.port": int,
    "uplink.encoding": str,
    "console.idle_timeout_s": int,
    "buses.*.enabled": bool,
    "buses.*.baud": int,
    "buses.*.parity": str,
    "buses.*.timeout_ms": int,
}


def setting_names(config: Config) -> list[str]:
    """Every setting a technician may change on this box, buses spelled out."""
    names = []
    for pattern in SETTINGS:
        if pattern.startswith("buses.*."):
            names += [pattern.replace("*", bus) for bus in sorted(config.buses)]
        else:
            names.append(pattern)
    return names


def _type_of(config: Config, key: str) -> type:
    if key not in setting_names(config):
        raise ControlError(
            f"{key[:60]!r} cannot be changed here; these can: {', '.join(setting_names(config))}"
        )
    parts = key.split(".")
    return SETTINGS[".".join(["buses", "*", parts[2]]) if parts[0] == "buses" else key]


def running_value(config: Config, key: str) -> Any:
    """The value the running daemon uses."""
    section, *rest = key.split(".")
    if section == "buses":
        return getattr(config.buses[rest[0]], rest[1])
    return getattr(getattr(config, section), rest[0])


def _read_overlay(path: Path) -> dict[str, Any]:
    """The settings file as flat dotted keys ({} when there is none)."""
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ControlError(f"{path} cannot be read: {exc}") from None
    flat: dict[str, Any] = {}

    def walk(prefix: str, table: dict[str, Any]) -> None:
        for name, value in table.items():
            if isinstance(value, dict):
                walk(f"{prefix}{name}.", value)
            else:
                flat[prefix + name] = value

    walk("", document)
    return flat


def _toml(flat: dict[str, Any]) -> str:
    """Flat dotted settings as TOML tables (scalars only; JSON strings are valid TOML strings)."""
    tables: dict[str, list[str]] = {}
    for key in sorted(flat):
        table, _, name = key.rpartition(".")
        value = flat[key]
        text = ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)
        tables.setdefault(table, []).append(f"{name} = {text}")
    header = "# Written by the console's `config set`: settings a technician changed on this box.\n"
    return header + "".join(f"\n[{table}]\n" + "\n".join(lines) + "\n" for table, lines in tables.items())


def describe(config: Config) -> list[dict[str, Any]]:
    """Each setting's running value and the value waiting for the next start, if different."""
    path = config.console.settings_file
    pending = _read_overlay(path)
    laid_over = path.resolve() in {source.resolve() for source in config.sources}
    described = []
    for key in setting_names(config):
        running = running_value(config, key)
        waiting = pending.get(key, running)
        described.append(
            {
                "key": key,
                "running": running,
                "pending": waiting if waiting != running else None,
                "applied_at_start": laid_over,
            }
        )
    return described


def _parse(kind: type, key: str, text: str) -> Any:
    if kind is bool:
        if text.lower() not in ("true", "false", "yes", "no", "on", "off"):
            raise ControlError(f"{key} is true or false")
        return text.lower() in ("true", "yes", "on")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ControlError(f"{key} is a whole number") from None
    return text


def change(config: Config, key: str, text: str) -> dict[str, Any]:
    """Check a setting against the whole config and write it to the settings file."""
    value = _parse(_type_of(config, key), key, text)
    path = config.console.settings_file
    flat = _read_overlay(path) | {key: value}
    candidate = path.with_name(path.name + ".new")
    candidate.parent.mkdir(parents=True, exist_ok=True)
    candidate.write_text(_toml(flat))
    others = [source for source in config.sources if source.resolve() != path.resolve()]
    try:
        load_config(*others, candidate)
    except ConfigError as exc:
        candidate.unlink()
        raise ControlError(f"not changed: {exc.key or key}: {exc.expected}") from None
    with candidate.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(candidate, path)
    return {"key": key, "value": value, "file": str(path)}
