"""Simulated DLMS/COSEM electricity meters on gurux-dlms's server: HDLC on a pty, or the TCP wrapper.

Several meters share one serial port and are told apart by their HDLC address, as on an RS-485
bus: a frame for an address nobody here owns gets no answer. Each meter has a clock (wrong on
purpose if asked), energy registers, a 15-minute load profile, an event log and a disconnect
control (see dlms_objects). Authentication: none (public client 16), low (password) or HLS-GMAC
with security suite 0. Optional pacing makes the replies take as long as on a real wire.

Run alone:  python -m appliance.sim.dlms_meter --port PTY --meter 17 --meter 18:password=abc,offset=-90
            python -m appliance.sim.dlms_meter --tcp 4059 --meter 1

gurux-dlms is GPLv2 and pinned at 1.0.203; its Python server does not work as shipped. The fixes
are all in the "gurux patches" section below, each naming the FIELD-NOTES item it answers.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import serial
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import GCM
from gurux_dlms import GXDLMSSettings, GXServerReply
from gurux_dlms._GXAPDU import _GXAPDU
from gurux_dlms.ConnectionState import ConnectionState
from gurux_dlms.enums import (
    AccessMode,
    Authentication,
    Conformance,
    ErrorCode,
    InterfaceType,
    MethodAccessMode,
    ObjectType,
    RequestTypes,
    Security,
    SourceDiagnostic,
)
from gurux_dlms.enums.AssociationResult import AssociationResult
from gurux_dlms.GXByteBuffer import GXByteBuffer
from gurux_dlms.GXCiphering import GXCiphering
from gurux_dlms.GXDLMS import GXDLMS
from gurux_dlms.GXDLMSException import GXDLMSException
from gurux_dlms.GXDLMSLNParameters import GXDLMSLNParameters
from gurux_dlms.GXDLMSLongTransaction import GXDLMSLongTransaction
from gurux_dlms.GXHdlcSettings import GXHdlcSettings
from gurux_dlms.GXSecure import GXSecure
from gurux_dlms.internal._GXCommon import _GXCommon
from gurux_dlms.objects import GXDLMSAssociationLogicalName
from gurux_dlms.objects.enums import AssociationStatus
from gurux_dlms.secure import GXDLMSSecureServer
from gurux_dlms.ValueEventArgs import ValueEventArgs

from appliance.errors import HesError, TransportError
from appliance.sim.dlms_objects import (
    MeterConfig,
    MeterState,
    build_objects,
)
from appliance.sim.process import ChildProcess

log = logging.getLogger("appliance.sim.dlms_meter")

PUBLIC_CLIENT = 16
ASSOCIATION_LN = "0.0.40.0.0.255"
_SERVER_CONFORMANCE = (
    Conformance.GENERAL_PROTECTION  # general-glo-ciphering: dlms-cosem knows no other
    | Conformance.GET
    | Conformance.SET
    | Conformance.ACTION
    | Conformance.SELECTIVE_ACCESS
    | Conformance.MULTIPLE_REFERENCES
    | Conformance.BLOCK_TRANSFER_WITH_GET_OR_READ
    | Conformance.BLOCK_TRANSFER_WITH_SET_OR_WRITE
    | Conformance.BLOCK_TRANSFER_WITH_ACTION
)
_LLC_REPLY = bytes(_GXCommon.LLC_REPLY_BYTES)


# =============================================================================================
# gurux patches (gurux-dlms 1.0.203 only). Each names the FIELD-NOTES "DLMS/COSEM peers" item,
# or "extra" for a failure FIELD-NOTES does not list. Nothing outside this section touches
# gurux internals.
# =============================================================================================


class _ServerReply(GXServerReply):
    """Item 1: GXDLMSServer calls setReply, getConnectionInfo, setCount/getCount, which are missing."""

    def setReply(self, value: object) -> None:
        """Store the reply frame."""
        self.reply = value

    def getConnectionInfo(self) -> object:
        """Connection info (unused by this meter)."""
        return self.connectionInfo

    def setCount(self, value: int) -> None:
        """GBT streaming counter."""
        self.count = value

    def getCount(self) -> int:
        """GBT streaming counter."""
        return self.count


class _Settings(GXDLMSSettings):
    """Extra (item 3's kind): the LN command handler calls settings.setConnected() after HLS pass 3
    and reads settings.gbtWndowSize (sic) on every GET next-data-block; neither exists."""

    def setConnected(self, value: int) -> None:
        """Connection state after reply_to_HLS_authentication."""
        self.connected = value

    @property
    def gbtWndowSize(self) -> int:
        """The name the handler misspells."""
        return self.gbtWindowSize


class _Association(GXDLMSAssociationLogicalName):
    """Extra (item 3's kind): handleMethodRequest calls getAssociationStatus(), which is missing."""

    def getAssociationStatus(self) -> int:
        """Status after reply_to_HLS_authentication."""
        return self.associationStatus

    def invoke(self, settings: GXDLMSSettings, e: ValueEventArgs) -> object:
        """Extra: gurux's reply_to_HLS_authentication does GXByteBuffer(int(e.parameters)) on the
        client's f(StoC), a ValueError every time. HLS-GMAC pass 3 and 4, done right."""
        if e.index != 1:
            return super().invoke(settings, e)
        reply = bytes(e.parameters or b"")
        cipher = settings.cipher
        ok = settings.authentication == Authentication.HIGH_GMAC and len(reply) > 5
        if ok:
            counter = int.from_bytes(reply[1:5], "big")
            expected = GXSecure.secure(
                settings, cipher, counter, settings.stoCChallenge, settings.sourceSystemTitle
            )
            ok = bytes(expected) == reply
        if not ok:
            self.associationStatus = AssociationStatus.NON_ASSOCIATED
            e.error = ErrorCode.READ_WRITE_DENIED
            return None
        self.associationStatus = AssociationStatus.ASSOCIATED
        answer = GXSecure.secure(
            settings, cipher, cipher.invocationCounter, settings.ctoSChallenge, cipher.systemTitle
        )
        cipher.invocationCounter += 1
        return bytearray(answer)


def _transaction_set_data(self: GXDLMSLongTransaction, value: GXByteBuffer) -> None:
    """Item 3's kind: the next-data-block handler calls transaction.setData(), which is missing, so
    every GET with more than two blocks failed after its second block (HARDWARE_FAULT)."""
    self.data = GXByteBuffer()
    self.data.set(value)


def _ber_length(raw: bytes, pos: int) -> tuple[int, int]:
    if raw[pos] < 0x80:
        return raw[pos], pos + 1
    size = raw[pos] & 0x7F
    return int.from_bytes(raw[pos + 1 : pos + 1 + size], "big"), pos + 1 + size


def _verify_tag(raw: bytes, title: bytes, block_key: bytes, auth_key: bytes) -> int:
    """Check the GCM tag of a ciphered APDU (security suite 0, 12-byte tag); return its counter."""
    pos = 1
    if raw[0] in (0xDB, 0xDC):  # general-glo/ded-ciphering carry the sender's title
        size, pos = _ber_length(raw, pos)
        title, pos = raw[pos : pos + size], pos + size
    size, pos = _ber_length(raw, pos)
    content = raw[pos : pos + size]
    sc, counter, body = content[0], content[1:5], content[5:]
    if not sc & 0x10 or len(body) < 12:
        raise ValueError("APDU without authentication")
    body, tag = body[:-12], body[-12:]
    encrypted = bool(sc & 0x20)
    aad = bytes([sc]) + auth_key + (b"" if encrypted else body)
    decryptor = Cipher(AES(block_key), GCM(title + counter, tag, min_tag_length=12)).decryptor()
    decryptor.authenticate_additional_data(aad)
    if encrypted:
        decryptor.update(body)
    decryptor.finalize()  # raises InvalidTag
    return int.from_bytes(counter, "big")


def _decrypt_checked(settings: GXDLMSSettings, p: object, data: GXByteBuffer) -> object:
    if isinstance(p.tag, bytes | bytearray):
        # Extra: handleGloDedRequest builds AesGcmParameter(title, key, auth_key) without the tag,
        # so every field lands one place off and no ciphered request can be decrypted.
        p.tag, p.systemTitle, p.blockCipherKey, p.authenticationKey = (
            0,
            p.tag,
            p.systemTitle,
            p.blockCipherKey,
        )
    check = getattr(settings, "hes_counter_check", None)
    if check is not None:
        # Extra: decryptAesGcm runs its GCM stream with forEncrypt=True, so the tag of an
        # authenticated and encrypted APDU is never checked: a wrong key would pass. Ours, not a
        # fix: gurux never checks the client's invocation counter either.
        raw = bytes(data.remaining())
        try:
            counter = _verify_tag(
                raw, bytes(p.systemTitle), bytes(p.blockCipherKey), bytes(p.authenticationKey)
            )
        except (InvalidTag, ValueError, IndexError) as error:
            log.info("ciphered APDU refused: %s", type(error).__name__)
            raise GXDLMSException(
                AssociationResult.PERMANENT_REJECTED, SourceDiagnostic.AUTHENTICATION_FAILURE
            ) from error
        if not check(counter):
            raise GXDLMSException(
                AssociationResult.PERMANENT_REJECTED, SourceDiagnostic.AUTHENTICATION_FAILURE
            )
        settings.hes_ciphered_request = True
        settings.hes_general_ciphering = raw[0] in (0xDB, 0xDC)
    return _GURUX["decrypt"](settings, p, data)


def _cipher_in_kind(p: object) -> object:
    """Extra: before the association is complete (HLS pass 3) gurux answers a general-glo-ciphering
    request with service-specific glo ciphering, which a client that knows only the general form
    (dlms-cosem) cannot read. Answer in the form the client used."""
    s = _GURUX["cipher_parameters"](p)
    if getattr(p.settings, "hes_general_ciphering", False) and s.tag not in (0xDB, 0xDC):
        s.tag = 0xDC if p.settings.cipher.dedicatedKey else 0xDB
    return s


def _generate_aare(
    settings: GXDLMSSettings,
    data: GXByteBuffer,
    result: int,
    diagnostic: int,
    cipher: GXCiphering | None,
    error: GXByteBuffer | None,
    _encrypted: object,
) -> None:
    """Extra: gurux's generateAARE writes the responding-AP-title with a wrong length and calls
    setUInt8() without a value, and gives the StoC challenge a wrong length: every HLS AARE fails.
    Same AARE, lengths right (A-ASSOCIATE response, IEC 62056-5-3 / Green Book)."""
    start = len(data)
    data.set(bytes([0x61, 0]))
    _GXAPDU.generateApplicationContextName(settings, data, cipher)
    data.set(bytes([0xA2, 3, 2, 1, result, 0xA3, 5, 0xA1, 3, 2, 1, diagnostic]))
    if cipher is not None and (settings.authentication == Authentication.HIGH_GMAC or cipher.isCiphered()):
        title = bytes(cipher.systemTitle)
        data.set(bytes([0xA4, 2 + len(title), 0x04, len(title)]) + title)
    if settings.authentication > Authentication.LOW:
        challenge = bytes(settings.stoCChallenge)
        data.set(bytes([0x88, 2, 0x07, 0x80, 0x89, 7, 0x60, 0x85, 0x74, 5, 8, 2, settings.authentication]))
        data.set(bytes([0xAA, 2 + len(challenge), 0x80, len(challenge)]) + challenge)
    if result == AssociationResult.ACCEPTED or cipher is None or cipher.security == Security.NONE:
        info = bytes(error) if error else bytes(_GXAPDU.getUserInformation(settings, cipher))
        if not error and cipher is not None and cipher.isCiphered():
            cipher.invocationCounter += 1  # gurux would reuse this counter for the next APDU
        data.set(bytes([0xBE, 2 + len(info), 0x04, len(info)]) + info)
    data.setUInt8(len(data) - start - 2, start + 1)


_GURUX: dict[str, Callable] = {}


def patch_gurux() -> None:
    """Install the class-level fixes above, once per process. Called when the first meter is built,
    so that merely importing this module (tests do, for SimulatedDlmsBus) leaves gurux's client
    classes exactly as shipped."""
    if _GURUX:
        return
    _GURUX["decrypt"] = GXCiphering.decrypt
    _GURUX["cipher_parameters"] = GXDLMS._GXDLMS__getCipheringParameters
    # Extra: SET and ACTION call list(e) on a ValueEventArgs, which is not iterable, and SET calls
    # p.isMultipleBlocks() and p.setStatus(), which GXDLMSLNParameters lacks: every write answers
    # HARDWARE_FAULT and every method call fails. One event is a list of one.
    ValueEventArgs.__iter__ = lambda self: iter([self])
    GXDLMSLNParameters.isMultipleBlocks = lambda self: self.multipleBlocks
    GXDLMSLNParameters.setStatus = lambda self, value: setattr(self, "status", value)
    GXDLMSLongTransaction.setData = _transaction_set_data
    GXCiphering.decrypt = staticmethod(_decrypt_checked)
    GXDLMS._GXDLMS__getCipheringParameters = staticmethod(_cipher_in_kind)
    _GXAPDU.generateAARE = staticmethod(_generate_aare)


class _PatchedServer(GXDLMSSecureServer):
    """GXDLMSSecureServer with the missing or broken methods replaced (items 2, 3, 4, 6)."""

    def __init__(self, interface: InterfaceType, max_info: int) -> None:
        patch_gurux()
        super().__init__(True, interface)
        self.settings.__class__ = _Settings
        self.max_info = max_info
        self.transaction = None

    # Item 3: called by GXDLMSLNCommandHandler but not defined; onPostRead/notifyRead lack args.
    def notifyRead(self, *_args: object) -> None:
        """Values are computed in the objects' getValue: nothing to prepare."""

    def notifyConnected(self, connection_info: object) -> None:
        """HLS pass 3 succeeded."""
        self.onConnected(connection_info)

    def getTransaction(self) -> object:
        """The long GET in progress."""
        return self.transaction

    def setTransaction(self, value: object) -> None:
        """The long GET in progress."""
        self.transaction = value

    def onPreRead(self, args: object = None) -> None:
        """Nothing to do before a read."""

    def onPostRead(self, args: object = None) -> None:
        """Nothing to do after a read."""

    # Item 2: uses self.hdlc.maxInfoTX (self.hdlc is None), GXHdlcSettings.update (missing), and
    # writes the parameter length with setUInt8's arguments swapped.
    def handleSnrmRequest(self, data: GXByteBuffer) -> None:
        """Negotiate the information field lengths (window 1) and answer UA."""
        hdlc = self.settings.hdlc
        hdlc.maxInfoTX = hdlc.maxInfoRX = GXHdlcSettings.DEFAULT_MAX_INFO_TX
        hdlc.windowSizeTX = hdlc.windowSizeRX = 1
        GXDLMS.parseSnrmUaResponse(data, hdlc)
        hdlc.maxInfoTX = min(hdlc.maxInfoTX, self.max_info)
        hdlc.maxInfoRX = min(hdlc.maxInfoRX, self.max_info)
        hdlc.windowSizeTX = hdlc.windowSizeRX = 1
        self.reset(True)
        # An SNRM resets both sequence numbers and drops a half-sent answer (IEC 62056-46 6.4.4.4.3.2);
        # gurux kept them when a client hung up in the middle of a segmented answer.
        self.settings.resetFrameSequence()
        self.info.clear()
        self._append_hdlc_parameters()
        self.settings.connected = ConnectionState.HDLC

    def generateDisconnectRequest(self) -> None:
        """UA to DISC, with the same parameters."""
        self._append_hdlc_parameters()

    def _append_hdlc_parameters(self) -> None:
        hdlc, reply = self.settings.hdlc, self.replyData
        reply.set(bytes([0x81, 0x80, 0]))
        for tag, value in ((0x05, hdlc.maxInfoTX), (0x06, hdlc.maxInfoRX)):
            reply.setUInt8(tag)
            GXDLMS.appendHdlcParameter(reply, value)
        for tag, value in ((0x07, hdlc.windowSizeTX), (0x08, hdlc.windowSizeRX)):
            reply.setUInt8(tag)
            reply.setUInt8(4)
            reply.setUInt32(value)
        reply.setUInt8(len(reply) - 3, 2)

    # Item 4: replyData.set(0, LLC) has its arguments swapped and the RLRE lengths are wrong.
    def handleReleaseRequest(self, data: GXByteBuffer) -> None:
        """RLRE, reason normal (the user-information of a protected release is not echoed)."""
        if self.settings.interfaceType == InterfaceType.HDLC:
            self.replyData.set(_LLC_REPLY)
        self.replyData.set(bytes([0x63, 0x03, 0x80, 0x01, 0x00]))

    # Item 6: initialize() appends the whole object list as one element and setMaxReceivePDUSize
    # recurses: fill the association's object list and the PDU sizes directly.
    def install(self, objects: list, max_pdu: int) -> None:
        """Register the COSEM objects; the server is then ready for requests."""
        self.settings.maxServerPDUSize = max_pdu
        self.settings.proposedConformance = _SERVER_CONFORMANCE
        for obj in objects:
            self.settings.objects.append(obj)
            if isinstance(obj, GXDLMSAssociationLogicalName):
                for listed in objects:
                    obj.objectList.append(listed)
                obj.xDLMSContextInfo.maxReceivePduSize = max_pdu
                obj.xDLMSContextInfo.maxSendPduSize = max_pdu
        self.initialized = True


# =============================================================================================
# One meter as a DLMS server: access rules, authentication, invocation counters.
# =============================================================================================


class MeterServer(_PatchedServer):
    """The protocol side of one meter for one link (the bus, or one TCP connection)."""

    def __init__(self, state: MeterState, interface: InterfaceType) -> None:
        self.state = state
        self.association = _Association(ASSOCIATION_LN)
        super().__init__(interface, state.config.max_info)
        c = state.config
        cipher = GXCiphering(bytearray(c.system_title))
        cipher.blockCipherKey = bytearray(c.block_key)
        cipher.authenticationKey = bytearray(c.auth_key)
        cipher.invocationCounter = state.server_ic
        self.settings.cipher = cipher
        self.settings.hes_counter_check = self._accept_counter
        self.install([*build_objects(state), self.association], c.max_pdu)

    def _accept_counter(self, counter: int) -> bool:
        title = bytes(self.settings.sourceSystemTitle or b"")
        if self.state.check_client_ic(title, counter):
            return True
        log.warning(
            "meter %s: invocation counter %d from %s replayed",
            self.state.config.address,
            counter,
            title.hex(),
        )
        return False

    def counter_ok(self, apdu: bytes) -> bool:
        """Would a ciphered request APDU pass the counter check? (Peek only, for the link layer.)"""
        counter = ciphered_counter(apdu)
        if counter is None:
            return True
        title = bytes(self.settings.sourceSystemTitle or b"")
        with self.state.lock:
            return counter > self.state.client_ic.get(title, -1)

    def answer(self, frame: bytes) -> bytes | None:
        """Feed one request frame to gurux; the reply frame, or None when there is none."""
        sr = _ServerReply(bytearray(frame))
        with self.state.lock:
            self.settings.hes_ciphered_request = False
            cipher = self.settings.cipher
            cipher.invocationCounter = max(cipher.invocationCounter, self.state.server_ic)  # other links
            self.handleRequest(sr)
            self.state.server_ic = max(self.state.server_ic, cipher.invocationCounter)
        if not self.info.moreData & RequestTypes.FRAME:
            # After a request it could not handle gurux keeps the old APDU and glues the next
            # request to it. Only an unfinished HDLC segment sequence may carry over.
            self.receivedData.clear()
            self.info.clear()
        reply = bytes(sr.reply) if sr.reply else None
        if reply and self.settings.interfaceType == InterfaceType.WRAPPER and reply[:2] != b"\x00\x01":
            return None  # gurux answers a bad request with an HDLC FRMR, even on TCP
        return reply

    def reset(self, connect: bool = False) -> None:
        """A new association: gurux would restart the meter's own invocation counter at 0."""
        super().reset(connect)
        state = getattr(self, "state", None)
        if state is not None and self.settings.cipher is not None:
            self.settings.cipher.invocationCounter = state.server_ic
        association = getattr(self, "association", None)
        if association is not None:
            association.associationStatus = AssociationStatus.NON_ASSOCIATED
        self.settings.hes_general_ciphering = False

    def _associated(self) -> bool:
        """An association is in place, and in an HLS one the request came ciphered."""
        if not self.settings.connected & ConnectionState.DLMS:
            return False
        hls = self.settings.authentication == Authentication.HIGH_GMAC
        return not hls or getattr(self.settings, "hes_ciphered_request", False)

    def isTarget(self, server_address: int, client_address: int) -> bool:
        """Frames are routed by address before they reach this server."""
        return True

    def onValidateAuthentication(self, authentication: int, password: object) -> int:
        """Public client 16: no authentication only. Any other client: low or HLS-GMAC."""
        # Extra: parseInitiateRequest means to cap the client's proposed PDU size at the server's
        # but assigns settings.setMaxPduSize instead; the AARE would promise the client's size.
        self.settings.maxPduSize = min(self.settings.maxPduSize, self.state.config.max_pdu)
        client = self.settings.clientAddress
        if client == PUBLIC_CLIENT:
            ok = authentication == Authentication.NONE
            return SourceDiagnostic.NONE if ok else SourceDiagnostic.NOT_RECOGNISED
        if authentication == Authentication.NONE:
            return SourceDiagnostic.AUTHENTICATION_REQUIRED
        if authentication == Authentication.LOW:
            if bytes(password or b"") == self.state.config.password:
                return SourceDiagnostic.NONE
            log.info("meter %s: wrong password from client %d", self.state.config.address, client)
            return SourceDiagnostic.AUTHENTICATION_FAILURE
        if authentication == Authentication.HIGH_GMAC:
            if self.settings.cipher.security != Security.AUTHENTICATION_ENCRYPTION:
                return SourceDiagnostic.AUTHENTICATION_FAILURE
            return SourceDiagnostic.NONE
        return SourceDiagnostic.NOT_RECOGNISED

    def onGetAttributeAccess(self, arg: ValueEventArgs) -> int:
        """Nothing before the association; the public client reads; others may set the clock."""
        if not self._associated():
            return AccessMode.NO_ACCESS
        if self.settings.clientAddress == PUBLIC_CLIENT:
            return AccessMode.READ
        if arg.target.objectType == ObjectType.CLOCK and arg.index in (2, 3):
            return AccessMode.READ_WRITE
        return AccessMode.READ

    def onGetMethodAccess(self, arg: ValueEventArgs) -> int:
        """HLS pass 3 always; other methods only in an authenticated association."""
        if arg.target.objectType == ObjectType.ASSOCIATION_LOGICAL_NAME and arg.index == 1:
            return MethodAccessMode.ACCESS
        if not self._associated() or self.settings.clientAddress == PUBLIC_CLIENT:
            return MethodAccessMode.NO_ACCESS
        return MethodAccessMode.ACCESS

    def onFindObject(self, object_type: int, sn: int, ln: str) -> None:
        """Every object is in the list; anything else is undefined."""
        return None

    def onPreGet(self, args: object) -> None:
        """Unused."""

    def onPostGet(self, args: object) -> None:
        """Unused."""

    def onPreWrite(self, args: object) -> None:
        """Unused."""

    def onPostWrite(self, args: object) -> None:
        """Unused."""

    def onPreAction(self, args: object) -> None:
        """Unused."""

    def onPostAction(self, args: object) -> None:
        """Unused."""

    def onConnected(self, connection_info: object) -> None:
        """Association established."""
        log.info(
            "meter %s: associated client %d (%s)",
            self.state.config.address,
            self.settings.clientAddress,
            Authentication(self.settings.authentication),
        )

    def onInvalidConnection(self, connection_info: object) -> None:
        """Association refused."""
        log.info("meter %s: association refused", self.state.config.address)

    def onDisconnected(self, connection_info: object) -> None:
        """Association released."""
        log.info("meter %s: released", self.state.config.address)


# Tags of glo- and ded-ciphered request APDUs (get, set, action), and general-glo/ded-ciphering.
_CIPHERED_REQUESTS = {0xC8, 0xC9, 0xCB, 0xD0, 0xD1, 0xD3}
_GENERAL_CIPHERING = {0xDB, 0xDC}


def ciphered_counter(apdu: bytes) -> int | None:
    """Invocation counter of a ciphered request APDU, None for anything else (or too short)."""
    if not apdu or apdu[0] not in _CIPHERED_REQUESTS | _GENERAL_CIPHERING:
        return None
    try:
        pos = 1
        if apdu[0] in _GENERAL_CIPHERING:
            size, pos = _ber_length(apdu, pos)
            pos += size
        _size, pos = _ber_length(apdu, pos)
    except IndexError:
        return None
    return int.from_bytes(apdu[pos + 1 : pos + 5], "big") if len(apdu) >= pos + 5 else None


# =============================================================================================
# Link layer: HDLC frames by their length field (0x7E may appear inside), FCS, addresses.
# =============================================================================================


def _fcs_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_FCS_TABLE = _fcs_table()


def fcs16(data: bytes) -> int:
    """CRC-16/X.25, the HDLC FCS (the value as sent, low byte first)."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _FCS_TABLE[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFF


def take_hdlc_frame(buf: bytearray) -> bytes | None:
    """Remove and return the first whole frame with a good FCS; drop bytes that cannot start one.

    Returns None when more bytes are needed. A claimed length that never completes is the
    caller's to abandon after a quiet gap on the line (see take_frames).
    """
    while True:
        start = buf.find(0x7E)
        if start < 0:
            buf.clear()
            return None
        del buf[:start]
        if len(buf) < 3:
            return None
        if buf[1] & 0xF0 != 0xA0:
            del buf[0]
            continue
        length = ((buf[1] & 0x07) << 8) | buf[2]
        if length < 7:
            del buf[0]
            continue
        if len(buf) < length + 2:
            return None
        body = bytes(buf[1 : length + 1])
        if buf[length + 1] != 0x7E or fcs16(body[:-2]) != int.from_bytes(body[-2:], "little"):
            del buf[0]
            continue
        frame = bytes(buf[: length + 2])
        del buf[: length + 1]  # keep the closing flag: it may open the next frame
        return frame


def take_frames(buf: bytearray, take: Callable[[bytearray], object], stale: bool) -> list:
    """Every whole frame at the front of `buf`. When the line has gone quiet (`stale`), a frame
    start that never completed (garbage claiming a long length) is skipped to reach later frames."""
    frames = []
    while True:
        frame = take(buf)
        if frame is not None:
            frames.append(frame)
        elif stale and buf:
            del buf[:1]
        else:
            return frames


@dataclass(frozen=True)
class HdlcHeader:
    """The parts of a request frame the bus needs before gurux sees it."""

    logical: int
    physical: int | None
    control: int
    segmented: bool
    info: bytes


def parse_hdlc(frame: bytes) -> HdlcHeader | None:
    """Destination address, control and information field of a frame; None if malformed."""
    pos = 3
    dest = []
    while pos < len(frame) - 1 and len(dest) < 4:
        dest.append(frame[pos])
        pos += 1
        if dest[-1] & 1:
            break
    if not dest or not dest[-1] & 1 or len(dest) == 3:
        return None
    while pos < len(frame) - 1 and not frame[pos] & 1:  # source address
        pos += 1
    pos += 1
    if pos >= len(frame) - 3:
        return None
    control = frame[pos]
    info = frame[pos + 3 : -3] if len(frame) - 3 > pos + 3 else b""
    half = len(dest) // 2 or 1
    upper = _address_value(dest[:half])
    lower = _address_value(dest[half:]) if len(dest) > 1 else None
    return HdlcHeader(upper, lower, control, bool(frame[1] & 0x08), info)


def _address_value(parts: list[int]) -> int:
    value = 0
    for part in parts:
        value = (value << 7) | (part >> 1)
    return value


# =============================================================================================
# Pacing: the reply takes as long as the wire would.
# =============================================================================================


@dataclass(frozen=True)
class Pacing:
    """10 bits per byte at `baud` if `wire`; plus `turnaround_s` before every answer."""

    baud: int = 9600
    wire: bool = False
    turnaround_s: float = 0.0

    def wire_s(self, n: int) -> float:
        """Seconds `n` bytes occupy the line (0 when not pacing)."""
        return n * 10 / self.baud if self.wire else 0.0

    def send(self, write: Callable[[bytes], object], reply: bytes, request_end: float) -> None:
        """Wait out the request's wire time and the turnaround, then trickle the reply out."""
        start = request_end + self.turnaround_s
        _sleep_until(start)
        if not self.wire:
            write(reply)
            return
        chunk = max(1, self.baud // 1000)  # about 10 ms of line per write
        for offset in range(0, len(reply), chunk):
            piece = reply[offset : offset + chunk]
            _sleep_until(start + self.wire_s(offset + len(piece)))
            write(piece)


def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# =============================================================================================
# The bus (HDLC on a serial port) and the wrapper listener (TCP).
# =============================================================================================

QUIET_GAP_S = 0.1  # a frame start with no byte for this long is abandoned


class HdlcBus:
    """Several meters on one serial port; each answers only frames for its own address."""

    def __init__(self, port: str, states: list[MeterState], pacing: Pacing) -> None:
        self.port, self.pacing = port, pacing
        self.meters = [(s, MeterServer(s, InterfaceType.HDLC)) for s in states]
        self._segmented: dict[int, bool] = {}

    def route(self, header: HdlcHeader) -> MeterServer | None:
        """The meter owning the frame's destination, or None (someone else's, or a broadcast)."""
        for state, server in self.meters:
            c = state.config
            if header.logical != c.logical:
                continue
            if header.physical == c.address or (header.physical is None and len(self.meters) == 1):
                return server
        return None

    def handle(self, frame: bytes) -> bytes | None:
        """Answer one frame with a good FCS, as the meter it is addressed to."""
        header = parse_hdlc(frame)
        if header is None:
            return None
        server = self.route(header)
        if server is None:
            return None
        key = id(server)
        continuation = self._segmented.get(key, False)
        if header.control & 1 == 0:  # I-frame
            self._segmented[key] = header.segmented
            apdu = header.info[3:] if header.info[:3] == b"\xe6\xe6\x00" else b""
            if not continuation and apdu and not server.counter_ok(apdu):
                return None  # a replayed counter is discarded, as the Green Book allows
        try:
            return server.answer(frame)
        except Exception:  # a meter survives anything a client sends
            log.exception("meter %s: request failed", server.state.config.address)
            return None

    def open(self) -> serial.Serial:
        """Open the meters' end of the line (8N1: a pty refuses a second open with 7E1)."""
        try:
            return serial.Serial(self.port, baudrate=self.pacing.baud, timeout=0.02)
        except (serial.SerialException, OSError) as error:
            raise TransportError(f"cannot open {self.port}: {error}") from error

    def serve(self, line: serial.Serial, stop: threading.Event) -> None:
        """Read, route, answer until `stop` is set or the line goes away."""
        with line:
            buf = bytearray()
            first_at = last_at = time.monotonic()
            while not stop.is_set():
                data = line.read(line.in_waiting or 1)
                now = time.monotonic()
                if data:
                    if len(buf) <= 1:  # nothing pending but perhaps the last closing flag
                        first_at = now
                    buf += data
                    last_at = now
                for frame in take_frames(buf, take_hdlc_frame, now - last_at > QUIET_GAP_S):
                    reply = self.handle(frame)
                    if reply:
                        self.pacing.send(line.write, reply, first_at + self.pacing.wire_s(len(frame)))
                    first_at = time.monotonic()


def take_wrapper_frame(buf: bytearray) -> tuple[int, int, bytes] | None:
    """(source, destination, APDU) of the first whole wrapper frame; drops bytes that cannot start one."""
    while True:
        if len(buf) < 8:
            return None
        version, source, dest, length = (int.from_bytes(buf[i : i + 2], "big") for i in (0, 2, 4, 6))
        if version != 1 or length == 0 or length > 0x4000:
            del buf[0]
            continue
        if len(buf) < 8 + length:
            return None
        frame = bytes(buf[: 8 + length])
        del buf[: 8 + length]
        return source, dest, frame


class WrapperServer:
    """The TCP wrapper (IEC 62056-47) on connected sockets: each gets its own associations with the
    meters, whichever side opened it (the HES, or a meter that called the HES: sim/dcu.py)."""

    def __init__(self, states: list[MeterState], pacing: Pacing) -> None:
        self.states, self.pacing = states, pacing

    def connection(self, conn: socket.socket, stop: threading.Event) -> None:
        """Answer requests on `conn` until the peer closes it or `stop` is set; closes it."""
        servers: dict[int, MeterServer] = {}
        buf = bytearray()
        conn.settimeout(0.05)
        last_at = time.monotonic()
        with conn:
            while not stop.is_set():
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    data = None
                except OSError:
                    return
                now = time.monotonic()
                if data == b"":
                    return
                if data:
                    buf += data
                    last_at = now
                for _source, dest, frame in take_frames(buf, take_wrapper_frame, now - last_at > QUIET_GAP_S):
                    reply = self._handle(servers, dest, frame)
                    if reply:
                        self.pacing.send(conn.sendall, reply, now)

    def _handle(self, servers: dict[int, MeterServer], dest: int, frame: bytes) -> bytes | None:
        state = next((s for s in self.states if s.config.address == dest), None)
        if state is None:
            return None
        server = servers.get(dest)
        if server is None:
            server = servers[dest] = MeterServer(state, InterfaceType.WRAPPER)
        if not server.counter_ok(frame[8:]):
            return None
        try:
            return server.answer(frame)
        except Exception:  # a meter survives anything a client sends
            log.exception("meter %s: request failed", dest)
            return None


class WrapperListener(WrapperServer):
    """The TCP wrapper on a listening socket: the HES connects to the meters."""

    def __init__(self, host: str, port: int, states: list[MeterState], pacing: Pacing) -> None:
        super().__init__(states, pacing)
        self.sock = socket.create_server((host, port))
        self.port = self.sock.getsockname()[1]

    def serve(self, stop: threading.Event) -> None:
        """Accept connections until `stop` is set."""
        self.sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self.connection, args=(conn, stop), daemon=True).start()


# =============================================================================================
# Command line and the Python handle for tests and the demo.
# =============================================================================================

_OPTION_TYPES: dict[str, tuple[str, Callable[[str], object]]] = {
    "logical": ("logical", int),
    "serial": ("serial", str),
    "password": ("password", str.encode),
    "title": ("system_title", bytes.fromhex),
    "ek": ("block_key", bytes.fromhex),
    "ak": ("auth_key", bytes.fromhex),
    "offset": ("offset_s", float),
    "drift": ("drift_ppm", float),
    "tz": ("tz_minutes", int),
    "dst": ("dst", lambda text: text in ("1", "True")),
    "days": ("days", int),
    "scaler": ("scaler", int),
    "mode": ("control_mode", int),
    "max_info": ("max_info", int),
    "max_pdu": ("max_pdu", int),
    "server_ic": ("server_ic", int),
}


def parse_meter(text: str, seed: int = 0) -> MeterConfig:
    """`ADDRESS[:key=value,...]`, e.g. `17:password=abc,offset=-90,drift=50`."""
    address, _, options = text.partition(":")
    fields: dict[str, object] = {"address": int(address), "seed": seed}
    for item in filter(None, options.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in _OPTION_TYPES:
            raise ValueError(f"unknown meter option {item!r} (known: {', '.join(_OPTION_TYPES)})")
        name, convert = _OPTION_TYPES[key]
        fields[name] = convert(value)
    return MeterConfig(**fields)


def meter_arg(config: MeterConfig) -> str:
    """The --meter text that rebuilds `config` in a child process."""
    default = MeterConfig(config.address, seed=config.seed)
    parts = []
    for key, (name, _) in _OPTION_TYPES.items():
        value = getattr(config, name)
        if value != getattr(default, name):
            text = value.hex() if isinstance(value, bytes) and key != "password" else value
            parts.append(f"{key}={text.decode() if isinstance(text, bytes) else text}")
    return f"{config.address}:{','.join(parts)}" if parts else str(config.address)


class SimulatedDlmsBus(ChildProcess):
    """The simulator as a child process: on the meter end of a pty pair, or on a TCP port.

    Use as a context manager; after start(), `tcp_port` holds the port actually listened on.
    """

    def __init__(
        self,
        meters: list[MeterConfig],
        port: Path | None = None,
        tcp_port: int | None = None,
        baud: int = 9600,
        pace: bool = False,
        turnaround_ms: float = 0.0,
        log: Path | None = None,
    ) -> None:
        if (port is None) == (tcp_port is None):
            raise ValueError("give either a pty (port) or a TCP port")
        self.meters, self.port, self.tcp_port = meters, port, tcp_port
        self.baud, self.pace, self.turnaround_ms, self.log = baud, pace, turnaround_ms, log

    def start(self) -> SimulatedDlmsBus:
        """Start the child and wait until it serves (it says READY on stdout)."""
        args = [sys.executable, "-m", "appliance.sim.dlms_meter", "--baud", str(self.baud)]
        args += ["--port", str(self.port)] if self.port else ["--tcp", str(self.tcp_port)]
        if self.pace:
            args.append("--pace")
        if self.turnaround_ms:
            args += ["--turnaround-ms", str(self.turnaround_ms)]
        if self.log:
            args.append("--verbose")
        for config in self.meters:
            args += ["--seed", str(config.seed), "--meter", meter_arg(config)]
        err = self.log.open("ab") if self.log else subprocess.DEVNULL
        self._process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err)
        ready, _, _ = select.select([self._process.stdout], [], [], 10)
        line = self._process.stdout.readline().decode() if ready else ""
        if not line.startswith("READY"):
            self.stop()
            raise TransportError(f"the DLMS simulator did not start ({' '.join(args[3:])})")
        if "tcp=" in line:
            self.tcp_port = int(line.split("tcp=")[1])
        return self


def serve(
    port: str | None,
    tcp: int | None,
    configs: list[MeterConfig],
    pacing: Pacing,
    ready: Callable[[str], None],
    stop: threading.Event,
) -> None:
    """Serve until `stop` is set; `ready` is called once the port or socket is open."""
    states = [MeterState(c) for c in configs]
    if port is not None:
        bus = HdlcBus(port, states, pacing)
        line = bus.open()
        ready("READY")
        bus.serve(line, stop)
    else:
        listener = WrapperListener("127.0.0.1", tcp or 0, states, pacing)
        ready(f"READY tcp={listener.port}")
        listener.serve(stop)


def main(argv: list[str] | None = None) -> None:
    """Command line: serve simulated meters on a pty or a TCP port until terminated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial device (the meter end of a pty pair)")
    where.add_argument("--tcp", type=int, help="TCP port for the wrapper (0: any free port)")
    parser.add_argument(
        "--meter",
        action="append",
        required=True,
        metavar="ADDRESS[:OPTIONS]",
        help="HDLC physical address (or wrapper address on TCP), then key=value options: "
        + ", ".join(_OPTION_TYPES),
    )
    parser.add_argument("--seed", type=int, action="append", help="varies the values (one per meter, or one)")
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument("--pace", action="store_true", help="take 10 bits per byte at --baud")
    parser.add_argument("--turnaround-ms", type=float, default=0.0, help="delay before each answer")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    seeds = args.seed or [0]
    try:
        configs = [parse_meter(m, seeds[min(i, len(seeds) - 1)]) for i, m in enumerate(args.meter)]
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s dlms-sim %(message)s",
        stream=sys.stderr,
    )
    announce = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    # gurux prints diagnostics ("Encryption is applied.") on stdout for every ciphered APDU.
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)

    def ready(line: str) -> None:
        announce.write(line + "\n")
        announce.flush()

    pacing = Pacing(args.baud, args.pace, args.turnaround_ms / 1000)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            serve(args.port, args.tcp, configs, pacing, ready, threading.Event())
    except (HesError, OSError) as error:
        log.error("%s", error)
        sys.exit(2)


if __name__ == "__main__":
    main()
