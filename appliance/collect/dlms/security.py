"""DLMS/COSEM security suite 0 (AES-GCM-128), sans-I/O: ciphered xDLMS APDUs and HLS-GMAC.

Pure code: invocation counters, challenges and keys come from the caller, nothing here reads a clock or
draws a random number. The session layer owns the one thing that must survive restarts and power cuts,
the invocation counter in the store; this module only says whether a received counter may be accepted.

Layout of every ciphered APDU (DLMS UA 1000-2, "Green Book", security suite 0):
    tag || length || SC || IC || (ciphertext | plain APDU) || T
with SC the security control byte (0x10 authenticated, 0x20 encrypted, 0x30 both; suite in the low
nibble), IC the 4-byte invocation counter, IV = system title of the sender || IC, T the GCM tag cut to
12 bytes and AAD = SC || AK (|| plain APDU when only authenticated). The general-glo/ded-ciphering APDUs
add the sender's system title after the tag. Encryption alone carries no tag: it hides, it cannot tell
a forged APDU from a good one; only the security policy decides whether a meter may use it.

Keys never appear in a repr, a str or an error message; every failure raises `SecurityError`.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import IntEnum
from types import MappingProxyType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from appliance.errors import ProtocolError

SUITE_0 = 0  # AES-GCM-128 with AES-128 key wrap: the only suite this module speaks
KEY_LENGTH = 16
SYSTEM_TITLE_LENGTH = 8
TAG_LENGTH = 12
MAX_INVOCATION_COUNTER = 0xFFFF_FFFF
CHALLENGE_MIN, CHALLENGE_MAX = 8, 64  # HLS challenge lengths the Green Book allows

GENERAL_GLO_CIPHERING = 0xDB
GENERAL_DED_CIPHERING = 0xDC

_HEADER_LENGTH = 5  # SC + IC


class SecurityError(ProtocolError):
    """A ciphered APDU or an HLS answer fails a security check: tag, replay, control byte, length.

    Messages name the check and the offending numbers only, never key material.
    """


class Security(IntEnum):
    """The protection bits of the security control byte (suite 0 leaves the low nibble at 0)."""

    AUTHENTICATION = 0x10
    ENCRYPTION = 0x20
    AUTHENTICATED_ENCRYPTION = 0x30


# Plain xDLMS tag -> its global / dedicated ciphered tag (Green Book, xDLMS-APDU CHOICE). Short-name
# services sit 32 (glo) and 64 (ded) above the plain tag, logical-name services 8 and 16 above it.
GLO_TAGS: Mapping[int, int] = MappingProxyType(
    {
        0x01: 0x21,  # initiate-request
        0x05: 0x25,  # read-request
        0x06: 0x26,  # write-request
        0x08: 0x28,  # initiate-response
        0x0C: 0x2C,  # read-response
        0x0D: 0x2D,  # write-response
        0x0E: 0x2E,  # confirmed-service-error
        0x16: 0x36,  # unconfirmed-write-request
        0x18: 0x38,  # information-report-request
        0xC0: 0xC8,  # get-request
        0xC1: 0xC9,  # set-request
        0xC2: 0xCA,  # event-notification-request
        0xC3: 0xCB,  # action-request
        0xC4: 0xCC,  # get-response
        0xC5: 0xCD,  # set-response
        0xC7: 0xCF,  # action-response
    }
)
DED_TAGS: Mapping[int, int] = MappingProxyType(
    {plain: plain + (64 if plain < 0x80 else 16) for plain in GLO_TAGS}
)
# Ciphered tag -> (plain tag it must carry, ciphered with the dedicated key).
_PLAIN_OF: dict[int, tuple[int, bool]] = {
    **{glo: (plain, False) for plain, glo in GLO_TAGS.items()},
    **{ded: (plain, True) for plain, ded in DED_TAGS.items()},
}


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class SecurityKeys:
    """The suite-0 keys of one association: global unicast encryption key (EK), authentication key
    (AK) and, once agreed in the AARQ, the dedicated key. Its repr and str show which keys are set,
    never their bytes, so a key cannot leak through a log line or a traceback's message."""

    encryption_key: bytes
    authentication_key: bytes
    dedicated_key: bytes | None = None

    def __post_init__(self) -> None:
        for name in ("encryption_key", "authentication_key", "dedicated_key"):
            value = getattr(self, name)
            if value is None and name == "dedicated_key":
                continue
            if not isinstance(value, bytes | bytearray | memoryview) or len(value) != KEY_LENGTH:
                size = len(value) if isinstance(value, bytes | bytearray | memoryview) else "no"
                raise SecurityError(f"{name} must be {KEY_LENGTH} bytes for security suite 0, got {size}")
            object.__setattr__(self, name, bytes(value))

    def with_dedicated_key(self, dedicated_key: bytes | None) -> SecurityKeys:
        """The same global keys with a new dedicated key (each association agrees its own)."""
        return replace(self, dedicated_key=dedicated_key)

    def __repr__(self) -> str:
        dedicated = "None" if self.dedicated_key is None else "<set>"
        return f"SecurityKeys(encryption_key=<set>, authentication_key=<set>, dedicated_key={dedicated})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class Unwrapped:
    """A deciphered APDU and what the session layer needs to judge it and persist the counter."""

    apdu: bytes
    invocation_counter: int
    security: Security
    system_title: bytes  # the sender's, as used in the IV
    dedicated: bool  # ciphered with the dedicated key rather than the global one
    general: bool  # came as general-glo/ded-ciphering


def security_control(security: Security) -> int:
    """The security control byte for suite 0: protection bits, suite 0, no broadcast, no compression."""
    return int(Security(security)) | SUITE_0


def check_invocation_counter(received: int, last_accepted: int | None) -> None:
    """Refuse a replay: a received counter must be greater than the last one accepted from that peer.

    `last_accepted` is None when nothing was ever accepted under the current key (a new meter or key).
    The session layer persists the accepted value; this is only the rule.
    """
    if not 0 <= received <= MAX_INVOCATION_COUNTER:
        raise SecurityError(f"invocation counter {received} out of range")
    if last_accepted is not None and received <= last_accepted:
        raise SecurityError(
            f"replayed or stale APDU: invocation counter {received} is not above the last accepted "
            f"{last_accepted}"
        )


def protect(
    apdu: bytes,
    *,
    keys: SecurityKeys,
    security: Security,
    system_title: bytes,
    invocation_counter: int,
    dedicated: bool = False,
) -> bytes:
    """The ciphered content SC || IC || payload || tag shared by every ciphered APDU form.

    The caller must never pass the same invocation counter twice under one key: GCM with a reused IV
    gives away the authentication key's hash subkey and the XOR of both plaintexts.
    """
    security = _security(security)
    _check_system_title(system_title)
    if not 0 <= invocation_counter <= MAX_INVOCATION_COUNTER:
        raise SecurityError(f"invocation counter {invocation_counter} out of range: new keys are needed")
    if not apdu:
        raise SecurityError("nothing to cipher: empty APDU")
    key = _cipher_key(keys, dedicated)
    sc = bytes([security_control(security)])
    ic = invocation_counter.to_bytes(4, "big")
    iv = bytes(system_title) + ic
    apdu = bytes(apdu)
    if security is Security.AUTHENTICATION:
        return sc + ic + apdu + _gcm_tag(key, iv, sc + keys.authentication_key + apdu)
    if security is Security.ENCRYPTION:
        return sc + ic + _ctr(key, iv, apdu)
    encryptor = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
    encryptor.authenticate_additional_data(sc + keys.authentication_key)
    ciphertext = encryptor.update(apdu) + encryptor.finalize()
    return sc + ic + ciphertext + encryptor.tag[:TAG_LENGTH]


def unprotect(
    content: bytes,
    *,
    keys: SecurityKeys,
    security: Security,
    system_title: bytes,
    dedicated: bool = False,
) -> tuple[int, bytes]:
    """Check and decipher SC || IC || payload || tag; return (invocation counter, plain APDU).

    `security` is what the security policy requires: a lower or different protection is refused, so a
    forger cannot strip the tag by rewriting the control byte.
    """
    security = _security(security)
    _check_system_title(system_title)
    content = bytes(content)
    if len(content) < _HEADER_LENGTH:
        raise SecurityError(f"truncated ciphered content: {len(content)} bytes, need at least 5")
    sc = content[0]
    if sc & 0x0F != SUITE_0:
        raise SecurityError(f"security control 0x{sc:02X}: security suite {sc & 0x0F} is not supported")
    if sc & 0xC0:
        raise SecurityError(f"security control 0x{sc:02X}: broadcast key and compression are not supported")
    required = security_control(security)
    if sc != required:
        raise SecurityError(
            f"security control 0x{sc:02X} where the security policy requires 0x{required:02X}"
        )
    ic_bytes = content[1:_HEADER_LENGTH]
    invocation_counter = int.from_bytes(ic_bytes, "big")
    body = content[_HEADER_LENGTH:]
    tagged = security is not Security.ENCRYPTION
    if len(body) < 1 + (TAG_LENGTH if tagged else 0):
        raise SecurityError(f"truncated ciphered content: {len(content)} bytes")
    key = _cipher_key(keys, dedicated)
    iv = bytes(system_title) + ic_bytes
    sc_byte = content[:1]
    if security is Security.ENCRYPTION:
        return invocation_counter, _ctr(key, iv, body)
    payload, tag = body[:-TAG_LENGTH], body[-TAG_LENGTH:]
    if security is Security.AUTHENTICATION:
        expected = _gcm_tag(key, iv, sc_byte + keys.authentication_key + payload)
        if not hmac.compare_digest(expected, tag):
            raise SecurityError(_TAG_FAILED)
        return invocation_counter, payload
    decryptor = Cipher(algorithms.AES(key), modes.GCM(iv, tag, min_tag_length=TAG_LENGTH)).decryptor()
    decryptor.authenticate_additional_data(sc_byte + keys.authentication_key)
    plain = decryptor.update(payload)
    try:
        decryptor.finalize()
    except InvalidTag:
        raise SecurityError(_TAG_FAILED) from None
    return invocation_counter, plain


def wrap_apdu(
    apdu: bytes,
    *,
    keys: SecurityKeys,
    security: Security,
    system_title: bytes,
    invocation_counter: int,
    dedicated: bool = False,
    general: bool = False,
) -> bytes:
    """Cipher a plain xDLMS APDU into its glo- or ded- form (or general-glo/ded-ciphering, which carries
    our system title and may wrap any APDU). `system_title` is ours: it is the IV's fixed part."""
    if not apdu:
        raise SecurityError("nothing to cipher: empty APDU")
    if general:
        tag = GENERAL_DED_CIPHERING if dedicated else GENERAL_GLO_CIPHERING
    else:
        table = DED_TAGS if dedicated else GLO_TAGS
        if apdu[0] not in table:
            kind = "ded" if dedicated else "glo"
            raise SecurityError(f"APDU tag 0x{apdu[0]:02X} has no {kind}-ciphered form")
        tag = table[apdu[0]]
    content = protect(
        apdu,
        keys=keys,
        security=security,
        system_title=system_title,
        invocation_counter=invocation_counter,
        dedicated=dedicated,
    )
    head = bytes([tag])
    if general:
        head += _length(SYSTEM_TITLE_LENGTH) + bytes(system_title)
    return head + _length(len(content)) + content


def unwrap_apdu(
    data: bytes,
    *,
    keys: SecurityKeys,
    security: Security,
    peer_system_title: bytes | None,
    last_invocation_counter: int | None,
) -> Unwrapped:
    """Check and decipher one whole ciphered APDU from a peer, replay check included.

    `peer_system_title` is the peer's title from the AARQ/AARE (None if not known yet: then only a
    general-ciphering APDU, which carries it, can be read). A general-ciphering APDU whose title is not
    the known peer's is refused. The caller persists `invocation_counter` of the result.
    """
    data = bytes(data)
    if not data:
        raise SecurityError("truncated ciphered APDU: no bytes")
    tag = data[0]
    pos = 1
    general = tag in (GENERAL_GLO_CIPHERING, GENERAL_DED_CIPHERING)
    plain_tag: int | None = None
    if general:
        dedicated = tag == GENERAL_DED_CIPHERING
        title_length, pos = _read_length(data, pos)
        if title_length not in (0, SYSTEM_TITLE_LENGTH):
            raise SecurityError(f"system title of {title_length} bytes in general ciphering, expected 8")
        if len(data) < pos + title_length:
            raise SecurityError("truncated general-ciphering APDU: system title cut short")
        title = data[pos : pos + title_length] or peer_system_title
        pos += title_length
        if peer_system_title is not None and title != bytes(peer_system_title):
            raise SecurityError("general-ciphering APDU from a system title other than the peer's")
    elif tag in _PLAIN_OF:
        plain_tag, dedicated = _PLAIN_OF[tag]
        title = peer_system_title
    else:
        raise SecurityError(f"tag 0x{tag:02X} is not a ciphered APDU")
    if title is None:
        raise SecurityError("the peer's system title is not known: cannot build the IV")
    length, pos = _read_length(data, pos)
    if len(data) - pos != length:
        what = "truncated" if len(data) - pos < length else "trailing bytes after"
        raise SecurityError(f"{what} ciphered APDU: length field {length}, {len(data) - pos} bytes follow")
    invocation_counter, apdu = unprotect(
        data[pos:], keys=keys, security=security, system_title=title, dedicated=dedicated
    )
    if plain_tag is not None and apdu[0] != plain_tag:
        raise SecurityError(f"ciphered tag 0x{tag:02X} carries a plain APDU with tag 0x{apdu[0]:02X}")
    check_invocation_counter(invocation_counter, last_invocation_counter)
    return Unwrapped(
        apdu=apdu,
        invocation_counter=invocation_counter,
        security=_security(security),
        system_title=bytes(title),
        dedicated=dedicated,
        general=general,
    )


def is_ciphered_apdu(data: bytes) -> bool:
    """Whether an APDU's tag is a suite-0 ciphered form this module can unwrap (an exception-response
    or a plain APDU is not: the session layer decides whether the policy allows it)."""
    return bool(data) and (data[0] in _PLAIN_OF or data[0] in (GENERAL_GLO_CIPHERING, GENERAL_DED_CIPHERING))


def hls_gmac(challenge: bytes, *, keys: SecurityKeys, system_title: bytes, invocation_counter: int) -> bytes:
    """f(challenge) = SC || IC || GMAC(SC || AK || challenge), SC = 0x10, HLS mechanism 5.

    The client sends f(StoC) with its own system title and counter in reply_to_HLS_authentication; the
    meter answers f(CtoS) with its own. The counter is spent: never cipher another APDU with it.
    """
    _check_challenge(challenge)
    _check_system_title(system_title)
    if not 0 <= invocation_counter <= MAX_INVOCATION_COUNTER:
        raise SecurityError(f"invocation counter {invocation_counter} out of range: new keys are needed")
    sc = bytes([security_control(Security.AUTHENTICATION)])
    ic = invocation_counter.to_bytes(4, "big")
    iv = bytes(system_title) + ic
    return sc + ic + _gcm_tag(keys.encryption_key, iv, sc + keys.authentication_key + bytes(challenge))


def verify_hls_gmac(
    reply: bytes,
    *,
    challenge: bytes,
    keys: SecurityKeys,
    peer_system_title: bytes,
    last_invocation_counter: int | None,
) -> int:
    """Check the meter's f(CtoS) against the challenge we sent; return its invocation counter.

    A wrong result means wrong keys, a wrong system title or an impostor: the association must not be
    used. The counter goes through the replay rule like any ciphered APDU's.
    """
    reply = bytes(reply)
    if len(reply) != _HEADER_LENGTH + TAG_LENGTH:
        raise SecurityError(f"HLS-GMAC answer of {len(reply)} bytes, expected {_HEADER_LENGTH + TAG_LENGTH}")
    if reply[0] != security_control(Security.AUTHENTICATION):
        raise SecurityError(f"HLS-GMAC answer with security control 0x{reply[0]:02X}, expected 0x10")
    invocation_counter = int.from_bytes(reply[1:_HEADER_LENGTH], "big")
    expected = hls_gmac(
        challenge, keys=keys, system_title=peer_system_title, invocation_counter=invocation_counter
    )
    if not hmac.compare_digest(expected, reply):
        raise SecurityError(
            "HLS-GMAC: the meter's answer to our challenge does not verify "
            "(wrong keys or system title, or not the meter we think)"
        )
    check_invocation_counter(invocation_counter, last_invocation_counter)
    return invocation_counter


_TAG_FAILED = "authentication tag does not verify: tampered APDU, wrong keys or wrong system title"


def _security(security: Security | int) -> Security:
    try:
        return Security(security)
    except ValueError:
        raise SecurityError(f"security 0x{int(security):02X} is not 0x10, 0x20 or 0x30") from None


def _check_system_title(system_title: bytes | None) -> None:
    if system_title is None or len(system_title) != SYSTEM_TITLE_LENGTH:
        size = "no" if system_title is None else len(system_title)
        raise SecurityError(f"system title must be {SYSTEM_TITLE_LENGTH} bytes, got {size}")


def _check_challenge(challenge: bytes) -> None:
    if not CHALLENGE_MIN <= len(challenge) <= CHALLENGE_MAX:
        raise SecurityError(
            f"HLS challenge of {len(challenge)} bytes, must be {CHALLENGE_MIN} to {CHALLENGE_MAX}"
        )


def _cipher_key(keys: SecurityKeys, dedicated: bool) -> bytes:
    if not dedicated:
        return keys.encryption_key
    if keys.dedicated_key is None:
        raise SecurityError("dedicated ciphering without a dedicated key for this association")
    return keys.dedicated_key


def _gcm_tag(key: bytes, iv: bytes, aad: bytes) -> bytes:
    """GMAC: GCM over an empty plaintext, everything authenticated as AAD, tag cut to 12 bytes."""
    encryptor = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
    encryptor.authenticate_additional_data(aad)
    encryptor.finalize()
    return encryptor.tag[:TAG_LENGTH]


def _ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    """GCM's keystream without its tag (encryption only): counter block IV || 2, as GCTR starts."""
    cipher = Cipher(algorithms.AES(key), modes.CTR(iv + b"\x00\x00\x00\x02")).encryptor()
    return cipher.update(data) + cipher.finalize()


def _length(length: int) -> bytes:
    """A-XDR/BER length, the way gurux and dlms-cosem write it."""
    if length < 0x80:
        return bytes([length])
    if length < 0x100:
        return b"\x81" + bytes([length])
    if length < 0x10000:
        return b"\x82" + length.to_bytes(2, "big")
    return b"\x84" + length.to_bytes(4, "big")


def _read_length(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise SecurityError("truncated ciphered APDU: length field missing")
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    size = first & 0x7F
    if not 1 <= size <= 4:
        raise SecurityError(f"invalid length field 0x{first:02X} in a ciphered APDU")
    if len(data) < pos + 1 + size:
        raise SecurityError("truncated ciphered APDU: length field cut short")
    return int.from_bytes(data[pos + 1 : pos + 1 + size], "big"), pos + 1 + size
