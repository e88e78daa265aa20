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


class ClockError(HesError):
    """The system clock could not be set (the daemon lacks CAP_SYS_TIME, or the kernel refused)."""


class MessageError(HesError):
    """A CIM message is malformed, hostile or not one we understand."""


class RequestRefused(MessageError):
    """An MDM request (or one of its meters) is refused: `code` is the Reply Error code it gets."""

    def __init__(self, code: str, reason: str) -> None:
        self.code, self.reason = code, reason
        super().__init__(f"{code}: {reason}")


class Preempted(HesError):
    """A routine job gave way to a command at a request boundary; it runs again afterwards."""


class UnknownMeter(HesError):
    """A request names a meter that is not registered, or whose bus is not running."""


class NotConnected(UnknownMeter):
    """A WAN meter that has no connection open: a job for it waits for its call until its deadline,
    and one with no deadline (the console's) is refused at once."""


class ControlError(HesError):
    """A request over the control socket failed: refused, malformed, or the daemon could not do it."""


class DaemonUnavailable(ControlError):
    """The daemon's control socket does not answer: the daemon is not running (or not yet)."""


class AccessDenied(ControlError):
    """Wrong name or password, a locked account, or a role that may not do this."""


class AuditSpoolError(HesError):
    """The console cannot append to its audit spool (permissions, full disk, the spool's size cap)."""


class ConsoleInputError(HesError):
    """What a technician typed at the console is not a command; the message says what would be."""


class TariffError(HesError):
    """A tariff file is invalid (overlapping periods, a gap in a day, an unknown currency, ...), or a
    tariff or prepay operation cannot be done (unknown account, a top-up in another currency)."""
