"""OBIS codes (IEC 62056-6-1): the six-part names of COSEM objects, as text and as six bytes on the wire.

Configs and the MDM write codes in two ways, "1.0.1.8.0.255" and the IEC display form "1-0:1.8.0*255";
both parse to the same value so that a meter model can be matched whatever form its author used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.errors import ProtocolError

_DOTTED = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})")
# A-B:C.D.E*F, A-B:C.D.E.F or A-B:C.D.E (F defaults to 255, as the display form often omits it).
_IEC = re.compile(r"([0-9]{1,3})-([0-9]{1,3}):([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})(?:[*.&]([0-9]{1,3}))?")


@dataclass(frozen=True, slots=True, order=True)
class Obis:
    """One OBIS code: value groups A (medium) to F (billing period), each 0-255."""

    a: int
    b: int
    c: int
    d: int
    e: int
    f: int = 255

    def __post_init__(self) -> None:
        for name in "abcdef":
            group = getattr(self, name)
            if type(group) is not int or not 0 <= group <= 255:
                raise ValueError(f"OBIS value group {name.upper()} must be an int 0-255, got {group!r}")

    @classmethod
    def parse(cls, text: str) -> Obis:
        """Read "1.0.1.8.0.255" or "1-0:1.8.0*255" (config files and MDM requests use either)."""
        cleaned = text.strip()
        match = _DOTTED.fullmatch(cleaned) or _IEC.fullmatch(cleaned)
        if match is None:
            raise ValueError(f"not an OBIS code: {text!r} (expected A.B.C.D.E.F or A-B:C.D.E*F)")
        groups = [int(group) if group is not None else 255 for group in match.groups()]
        return cls(*groups)

    @classmethod
    def from_bytes(cls, data: bytes) -> Obis:
        """The code in a logical name as a meter sends it (an octet-string of exactly 6 bytes)."""
        if len(data) != 6:
            raise ProtocolError(f"an OBIS code has 6 bytes, got {len(data)}: {bytes(data).hex()}")
        return cls(*data)

    def to_bytes(self) -> bytes:
        """The six bytes of the logical name, as they go into a COSEM attribute or method descriptor."""
        return bytes((self.a, self.b, self.c, self.d, self.e, self.f))

    def iec(self) -> str:
        """The display form "A-B:C.D.E*F" that meter labels and IEC documents use."""
        return f"{self.a}-{self.b}:{self.c}.{self.d}.{self.e}*{self.f}"

    def __str__(self) -> str:
        return f"{self.a}.{self.b}.{self.c}.{self.d}.{self.e}.{self.f}"
