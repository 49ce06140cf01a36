"""SMB2/3 message signing: HMAC-SHA256 (2.x), AES-128-CMAC (3.x), AES-128-GMAC (3.1.1).

Owns MS-SMB2 3.1.4.1 / 3.1.5.1: the signature over a whole message with its
Signature field (header offset 48, 16 bytes) taken as zero. Build one Signer
per session key and reuse it; it never copies the message.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["HMAC_SHA256", "AES_CMAC", "AES_GMAC", "SIGNATURE_OFFSET", "SIGNATURE_SIZE",
           "Signer", "sign", "verify", "signing_algorithm_for"]

# SMB2_SIGNING_CAPABILITIES SigningAlgorithms ids (MS-SMB2 2.2.3.1.7).
HMAC_SHA256 = 0
AES_CMAC = 1
AES_GMAC = 2

SIGNATURE_OFFSET = 48
SIGNATURE_SIZE = 16
_HEADER_SIZE = 64
_ZERO_SIGNATURE = bytes(SIGNATURE_SIZE)

_FLAGS_SERVER_TO_REDIR = 0x00000001
_SMB2_CANCEL = 0x000C
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_GMAC_NONCE = struct.Struct("<QI")
# AES-GMAC of a message up to this size is one AESGCM.encrypt call over a joined copy
# (~0.7 us for a CREATE-sized message, against ~4 us to set up a streaming GCM context);
# larger ones (WRITE/READ payloads) stream over the pieces where they lie, never copied.
_GMAC_ONE_SHOT_MAX = 16 * 1024


def signing_algorithm_for(dialect: int, negotiated: int | None = None) -> int:
    """The algorithm a dialect uses: HMAC-SHA256 for 2.x, AES-CMAC for 3.x unless
    3.1.1 negotiated another through SMB2_SIGNING_CAPABILITIES."""
    if dialect < 0x0300:
        return HMAC_SHA256
    if dialect == 0x0311 and negotiated is not None:
        return negotiated
    return AES_CMAC


def _gmac_nonce(message, message_id, is_response, is_cancel) -> bytes:
    mv = memoryview(message)
    if message_id is None:
        message_id = _U64.unpack_from(mv, 24)[0]
    if is_response is None:
        is_response = bool(_U32.unpack_from(mv, 16)[0] & _FLAGS_SERVER_TO_REDIR)
    if is_cancel is None:
        is_cancel = (_U16.unpack_from(mv, 12)[0] == _SMB2_CANCEL
                     and not is_response)
    role = (1 if is_response else 0) | (2 if is_cancel else 0)
    return _GMAC_NONCE.pack(message_id, role)


class Signer:
    """Signs and verifies messages under one (algorithm, key).

    message_id / is_response / is_cancel only matter for AES-GMAC; left as None
    they are read from the header (MessageId, SMB2_FLAGS_SERVER_TO_REDIR, Command).
    """

    __slots__ = ("algorithm", "key", "_algo", "_aead")

    def __init__(self, algorithm: int, key: bytes) -> None:
        if algorithm not in (HMAC_SHA256, AES_CMAC, AES_GMAC):
            raise ValueError(f"unknown signing algorithm {algorithm}")
        if algorithm != HMAC_SHA256 and len(key) != 16:
            raise ValueError("AES-CMAC/AES-GMAC signing keys are 16 bytes")
        self.algorithm = algorithm
        self.key = bytes(key)
        self._algo = algorithms.AES(self.key) if algorithm != HMAC_SHA256 else None
        # GMAC is GCM with an empty plaintext: the tag AESGCM.encrypt returns.
        self._aead = AESGCM(self.key) if algorithm == AES_GMAC else None

    def sign(self, message: bytes | bytearray | memoryview, *, message_id: int | None = None,
             is_response: bool | None = None, is_cancel: bool | None = None) -> bytes:
        """The 16-byte signature of message (its own Signature field is ignored)."""
        mv = memoryview(message)
        if mv.nbytes < _HEADER_SIZE:
            raise ValueError("message shorter than the SMB2 header")
        head = mv[:SIGNATURE_OFFSET]
        tail = mv[SIGNATURE_OFFSET + SIGNATURE_SIZE:]
        if self.algorithm == HMAC_SHA256:
            h = hmac.new(self.key, head, hashlib.sha256)
            h.update(_ZERO_SIGNATURE)
            h.update(tail)
            return h.digest()[:SIGNATURE_SIZE]
        if self.algorithm == AES_CMAC:
            c = cmac.CMAC(self._algo)
            c.update(head)
            c.update(_ZERO_SIGNATURE)
            c.update(tail)
            return c.finalize()
        # AES-GMAC is AES-GCM with no plaintext and the message as AAD (RFC 4543).
        nonce = _gmac_nonce(mv, message_id, is_response, is_cancel)
        if mv.nbytes <= _GMAC_ONE_SHOT_MAX:
            return self._aead.encrypt(nonce, b"", b"".join((head, _ZERO_SIGNATURE, tail)))
        enc = Cipher(self._algo, modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(head)
        enc.authenticate_additional_data(_ZERO_SIGNATURE)
        enc.authenticate_additional_data(tail)
        enc.finalize()
        return enc.tag

    def sign_parts(self, header: bytes | bytearray | memoryview, parts, *,
                   message_id: int | None = None, is_response: bool | None = None,
                   is_cancel: bool | None = None) -> bytes:
        """The signature of the message header + b"".join(parts), without joining them:
        a large READ response is signed from the header and the payload where they lie.
        header is the 64-byte SMB2 header (its Signature field is ignored)."""
        hv = memoryview(header)
        if hv.nbytes != _HEADER_SIZE:
            raise ValueError("header must be the 64-byte SMB2 header")
        head = hv[:SIGNATURE_OFFSET]
        if self.algorithm == HMAC_SHA256:
            h = hmac.new(self.key, head, hashlib.sha256)
            h.update(_ZERO_SIGNATURE)
            for p in parts:
                h.update(p)
            return h.digest()[:SIGNATURE_SIZE]
        if self.algorithm == AES_CMAC:
            c = cmac.CMAC(self._algo)
            c.update(head)
            c.update(_ZERO_SIGNATURE)
            for p in parts:
                c.update(p)
            return c.finalize()
        nonce = _gmac_nonce(hv, message_id, is_response, is_cancel)
        if isinstance(parts, tuple) and sum(map(len, parts)) <= _GMAC_ONE_SHOT_MAX:
            return self._aead.encrypt(nonce, b"", b"".join((head, _ZERO_SIGNATURE, *parts)))
        enc = Cipher(self._algo, modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(head)
        enc.authenticate_additional_data(_ZERO_SIGNATURE)
        for p in parts:
            if len(p):
                enc.authenticate_additional_data(p)
        enc.finalize()
        return enc.tag

    def verify(self, message: bytes | bytearray | memoryview, *, message_id: int | None = None,
               is_response: bool | None = None, is_cancel: bool | None = None) -> bool:
        """True when the Signature field of message is right (constant-time compare)."""
        mv = memoryview(message)
        if mv.nbytes < _HEADER_SIZE:
            return False
        expected = self.sign(mv, message_id=message_id, is_response=is_response,
                             is_cancel=is_cancel)
        return hmac.compare_digest(expected, mv[SIGNATURE_OFFSET:SIGNATURE_OFFSET + SIGNATURE_SIZE])

    def sign_in_place(self, message: bytearray | memoryview, **kw) -> None:
        """Compute the signature and write it into message[48:64]."""
        sig = self.sign(message, **kw)
        memoryview(message)[SIGNATURE_OFFSET:SIGNATURE_OFFSET + SIGNATURE_SIZE] = sig


def sign(algorithm: int, key: bytes, message: bytes | bytearray | memoryview, *,
         message_id: int | None = None, is_response: bool | None = None,
         is_cancel: bool | None = None) -> bytes:
    return Signer(algorithm, key).sign(message, message_id=message_id,
                                       is_response=is_response, is_cancel=is_cancel)


def verify(algorithm: int, key: bytes, message: bytes | bytearray | memoryview, *,
           message_id: int | None = None, is_response: bool | None = None,
           is_cancel: bool | None = None) -> bool:
    return Signer(algorithm, key).verify(message, message_id=message_id,
                                         is_response=is_response, is_cancel=is_cancel)
