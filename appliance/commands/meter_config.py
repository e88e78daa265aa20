"""MeterConfig entries into meters the buses poll: validated like the config's [[meters]], keys unwrapped
into the meter's own keys file.

Keys travel wrapped (AES key wrap with padding, RFC 5649) under the key-encryption key the MDM and
this box share (`commands.key_wrap_file`); they are unwrapped only here, written to
`<data_dir>/keys/<mRID>.toml` (mode 0600) and never logged, journalled or echoed.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

from appliance.collect.meters import MODELS
from appliance.commands import codes
from appliance.commands.requests import MeterEntry
from appliance.config import DLMS_AUTH, NEEDED_KEYS, Config, MeterSpec, read_meter_secrets
from appliance.errors import RequestRefused
from appliance.model import Protocol
from appliance.store.wan_devices import WAN_BUS

# ConnectionAttributes names (Connexo's name/value extension of MeterConfig) -> MeterSpec fields.
INTEGER_SETTINGS = {
    "address": "address",
    "logicalAddress": "logical_address",
    "clientAddress": "client_address",
    "pollIntervalSeconds": "poll_interval_s",
}
TEXT_SETTINGS = {"bus": "bus", "auth": "auth"}


def settings_of(meter: MeterSpec) -> dict[str, str]:
    """A meter's ConnectionAttributes as a reply shows them (never its keys)."""
    return {
        "bus": meter.bus,
        "protocol": meter.protocol.value,
        "address": str(meter.address),
        "logicalAddress": str(meter.logical_address),
        "clientAddress": str(meter.client_address),
        "auth": meter.auth,
        "pollIntervalSeconds": str(meter.poll_interval_s),
    }


def load_key_wrap_key(path: Path | None) -> bytes | None:
    """The key-encryption key from its file (hex, 16 or 32 bytes), or None when none is configured."""
    if path is None:
        return None
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        raise RequestRefused(codes.FAILED, f"the key-wrap key file {path} cannot be read as hex") from None
    if len(key) not in (16, 32):
        raise RequestRefused(codes.FAILED, f"the key-wrap key in {path} must be 16 or 32 bytes")
    return key


def meter_spec(entry: MeterEntry, config: Config, key_wrap_key: bytes | None, keys_dir: Path) -> MeterSpec:
    """The MeterSpec an entry describes; RequestRefused (2.5) with the first thing wrong with it."""
    model = MODELS.get(entry.model)
    if model is None:
        raise RequestRefused(codes.BAD_CONTENT, f"meter {entry.mrid}: unknown model {entry.model[:40]!r}")
    fields = _fields(entry)
    if entry.settings.get("protocol", model.protocol.value) != model.protocol.value:
        raise RequestRefused(
            codes.BAD_CONTENT, f"meter {entry.mrid}: model {entry.model} speaks {model.protocol}"
        )
    bus_name = str(fields.get("bus", ""))
    # A WAN meter (it calls the listener) has no bus address: the wrapper's wPort is its logical address.
    wan = bus_name == WAN_BUS and config.listener.enabled and model.protocol is Protocol.DLMS
    bus = config.buses.get(bus_name)
    if not wan and (bus is None or not bus.enabled):
        buses = sorted(config.buses) + ([WAN_BUS] if config.listener.enabled else [])
        raise RequestRefused(codes.BAD_CONTENT, f"meter {entry.mrid}: bus must be one of {buses}")
    address = 0
    if not wan:
        if "address" not in fields:
            raise RequestRefused(codes.BAD_CONTENT, f"meter {entry.mrid}: the address attribute is required")
        address = int(fields["address"])  # type: ignore[call-overload]
        low, high = (1, 247) if model.protocol is Protocol.MODBUS else (16, 16383)
        if not low <= address <= high:
            raise RequestRefused(codes.BAD_CONTENT, f"meter {entry.mrid}: address must be {low}-{high}")
    if fields["auth"] not in DLMS_AUTH or (model.protocol is Protocol.MODBUS and fields["auth"] != "none"):
        raise RequestRefused(codes.BAD_CONTENT, f"meter {entry.mrid}: auth must be one of {list(DLMS_AUTH)}")
    auth = str(fields["auth"])
    keys_file = None
    if entry.wrapped_keys:
        _require_keys(entry.mrid, auth, set(entry.wrapped_keys))  # before anything is written
        keys_file = _write_keys(entry, key_wrap_key, keys_dir)
    elif auth in NEEDED_KEYS:
        existing = keys_dir / f"{entry.mrid}.toml"
        if not existing.is_file():
            raise RequestRefused(
                codes.BAD_CONTENT, f"meter {entry.mrid}: auth {fields['auth']} needs SecurityKeys"
            )
        try:
            _require_keys(entry.mrid, auth, set(read_meter_secrets(existing)))
        except ValueError as exc:
            raise RequestRefused(codes.BAD_CONTENT, f"meter {entry.mrid}: stored keys {exc}") from None
        keys_file = existing
    return MeterSpec(
        id=entry.mrid,
        bus=bus_name,
        protocol=model.protocol,
        address=address,
        model=entry.model,
        poll_interval_s=int(fields["poll_interval_s"]),  # type: ignore[call-overload]
        logical_address=int(fields["logical_address"]),  # type: ignore[call-overload]
        client_address=int(fields["client_address"]),  # type: ignore[call-overload]
        auth=str(fields["auth"]),
        keys_file=keys_file,
    )


def _fields(entry: MeterEntry) -> dict[str, object]:
    """MeterSpec fields from the entry's ConnectionAttributes, over the template's meter defaults."""
    unknown = set(entry.settings) - set(INTEGER_SETTINGS) - set(TEXT_SETTINGS) - {"protocol"}
    if unknown:
        raise RequestRefused(
            codes.BAD_CONTENT, f"meter {entry.mrid}: unknown ConnectionAttributes {sorted(unknown)}"
        )
    fields: dict[str, object] = {"poll_interval_s": 0, "logical_address": 1, "client_address": 16}
    fields["auth"] = "none"
    for name, value in entry.settings.items():
        if name in INTEGER_SETTINGS:
            if not value.isdigit():
                raise RequestRefused(codes.BAD_CONTENT, f"meter {entry.mrid}: {name} must be a whole number")
            fields[INTEGER_SETTINGS[name]] = int(value)
        elif name in TEXT_SETTINGS:
            fields[TEXT_SETTINGS[name]] = value
    return fields


def _require_keys(mrid: str, auth: str, present: set[str]) -> None:
    """A meter registered without the keys its auth needs would only fail at every poll."""
    missing = NEEDED_KEYS.get(auth, frozenset()) - present
    if missing:
        raise RequestRefused(codes.BAD_CONTENT, f"meter {mrid}: auth {auth} needs {sorted(missing)}")


def _write_keys(entry: MeterEntry, key_wrap_key: bytes | None, keys_dir: Path) -> Path:
    """Unwrap the entry's keys and write them, mode 0600, where the meter's MeterSpec points."""
    if key_wrap_key is None:
        raise RequestRefused(
            codes.BAD_CONTENT, "this HES takes no meter keys: commands.key_wrap_file is not set"
        )
    lines = []
    for name, wrapped in sorted(entry.wrapped_keys.items()):
        try:
            plain = aes_key_unwrap_with_padding(key_wrap_key, base64.b64decode(wrapped, validate=True))
        except (InvalidUnwrap, binascii.Error, ValueError):
            raise RequestRefused(
                codes.BAD_CONTENT, f"meter {entry.mrid}: key {name} does not unwrap"
            ) from None
        if name == "password":
            try:
                text = plain.decode()
            except UnicodeDecodeError:
                raise RequestRefused(
                    codes.BAD_CONTENT, f"meter {entry.mrid}: the password is not UTF-8"
                ) from None
        else:
            text = plain.hex()
        lines.append(f"{name} = {_toml_string(text)}")
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = keys_dir / f"{entry.mrid}.toml"
    staging = path.with_suffix(".tmp")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write("\n".join(lines) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    try:
        read_meter_secrets(staging)
    except ValueError as exc:
        staging.unlink()
        raise RequestRefused(codes.BAD_CONTENT, f"meter {entry.mrid}: keys {exc}") from None
    os.replace(staging, path)
    return path


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    if any(ord(c) < 0x20 for c in escaped):
        raise RequestRefused(codes.BAD_CONTENT, "a key holds control characters")
    return f'"{escaped}"'
