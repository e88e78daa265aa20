"""Typed errors, one family per layer, each saying what went wrong and where.

Nothing a remote party sends may raise anything but these; callers catch a family, never `Exception`.
"""


class HesError(Exception):
    """Base of every error the appliance raises on purpose."""


class ConfigError(HesError):
    """A config file is missing, malformed or holds an impossible value. Fatal at start (exit 2)."""

    def __init__(self, path: str, key: str, expected: str) -> None:
        self.path, self.key, self.expected = path, key, expected
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + expected)


class StoreError(HesError):
    """The SQLite store cannot be opened, migrated or written."""


class StoreFull(StoreError):
    """The database reached its size cap or the disk is full: make room, then try again."""


class ProtocolError(HesError):
    """Bytes from a device do not form a valid frame or answer (bad CRC, wrong length, ...)."""


class CrcError(ProtocolError):
    """A frame arrived whole but its checksum is wrong: line noise or a collision on the bus."""


class DeviceError(HesError):
    """A device answered, but with a refusal (Modbus exception, DLMS error)."""


class DeviceTimeout(HesError):
    """A device did not answer within its timeout."""


class TransportError(HesError):
    """A port or socket could not be opened or failed underneath us."""


class MessageError(HesError):
    """A CIM message is malformed, hostile or not one we understand."""
