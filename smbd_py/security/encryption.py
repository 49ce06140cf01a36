"""SMB3 encryption: the TRANSFORM_HEADER (MS-SMB2 2.2.41) and its AEAD ciphers.

Owns building and opening encrypted messages with AES-128/256-CCM and -GCM
(MS-SMB2 3.1.4.3 / 3.3.5.2.1.1). Build one Encryptor per key: it hands out
unique nonces and keeps the AEAD object.
"""

from __future__ import annotations

import os
import struct
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM

__all__ = ["AES_128_CCM", "AES_128_GCM", "AES_256_CCM", "AES_256_GCM",
           "TRANSFORM_HEADER_SIZE", "TRANSFORM_PROTOCOL_ID", "DecryptError",
           "Encryptor", "Decryptor", "encrypt", "decrypt", "is_transform",
           "cipher_key_bits", "nonce_size", "transform_session_id"]

# SMB2_ENCRYPTION_CAPABILITIES cipher ids.
AES_128_CCM = 0x0001
AES_128_GCM = 0x0002
AES_256_CCM = 0x0003
AES_256_GCM = 0x0004

TRANSFORM_PROTOCOL_ID = b"\xfdSMB"
TRANSFORM_HEADER_SIZE = 52
_FLAGS_ENCRYPTED = 0x0001  # 3.1.1 "Flags"; 3.0/3.0.2 "EncryptionAlgorithm" = AES-128-CCM, same value

# ProtocolId(4) Signature(16) Nonce(16) OriginalMessageSize(4) Reserved(2) Flags(2) SessionId(8)
_TRANSFORM = struct.Struct("<4s16s16sIHHQ")
_AAD_OFFSET = 20  # AAD = the header from Nonce to the end, 32 bytes

_CIPHERS = {
    AES_128_CCM: (AESCCM, 16, 11),
    AES_128_GCM: (AESGCM, 16, 12),
    AES_256_CCM: (AESCCM, 32, 11),
    AES_256_GCM: (AESGCM, 32, 12),
}


class DecryptError(ValueError):
    """A transform message that cannot be opened: malformed, wrong key, or tampered."""


def cipher_key_bits(cipher_id: int) -> int:
    return _spec(cipher_id)[1] * 8


def nonce_size(cipher_id: int) -> int:
    return _spec(cipher_id)[2]


def _spec(cipher_id: int):
    try:
        return _CIPHERS[cipher_id]
    except KeyError:
        raise ValueError(f"unknown cipher id 0x{cipher_id:04x}") from None


def _aead(cipher_id: int, key: bytes):
    cls, key_len, _ = _spec(cipher_id)
    if len(key) != key_len:
        raise ValueError(f"cipher 0x{cipher_id:04x} needs a {key_len}-byte key, got {len(key)}")
    return cls(key)


def is_transform(message: bytes | bytearray | memoryview) -> bool:
    return bytes(message[:4]) == TRANSFORM_PROTOCOL_ID


class Encryptor:
    """Encrypts messages of one session under one key with never-repeating nonces.

    Nonce = 8-byte counter || random fill: unique per key for 2**64 messages, and
    the random fill keeps two Encryptors built over the same key apart.
    """

    def __init__(self, cipher_id: int, key: bytes) -> None:
        self.cipher_id = cipher_id
        self._aead = _aead(cipher_id, key)
        self._nonce_len = _spec(cipher_id)[2]
        self._salt = os.urandom(self._nonce_len - 8)
        self._counter = 0
        self._lock = threading.Lock()

    def _next_nonce(self) -> bytes:
        with self._lock:
            self._counter += 1
            if self._counter >= 1 << 64:
                raise OverflowError("nonce space exhausted; the session must be re-keyed")
            n = self._counter
        return struct.pack("<Q", n) + self._salt

    def encrypt(self, session_id: int, message: bytes | bytearray | memoryview) -> bytes:
        """TRANSFORM_HEADER || ciphertext for one (possibly compounded) SMB2 message."""
        return _seal(self._aead, self._nonce_len, self._next_nonce(), session_id, message)


class Decryptor:
    """Opens transform messages under one key."""

    def __init__(self, cipher_id: int, key: bytes) -> None:
        self.cipher_id = cipher_id
        self._aead = _aead(cipher_id, key)
        self._nonce_len = _spec(cipher_id)[2]

    def decrypt(self, transform: bytes | bytearray | memoryview) -> tuple[int, bytes]:
        return _open(self._aead, self._nonce_len, transform)


def _seal(aead, nonce_len: int, nonce: bytes, session_id: int, message) -> bytes:
    # The 16-byte Nonce field: the AEAD nonce, then zeros. All 16 bytes are in
    # the AAD, so a peer's non-zero tail (Windows leaves one) still verifies.
    nonce_field = nonce.ljust(16, b"\x00")
    header = bytearray(_TRANSFORM.pack(TRANSFORM_PROTOCOL_ID, b"", nonce_field,
                                       len(message), 0, _FLAGS_ENCRYPTED, session_id))
    sealed = aead.encrypt(nonce_field[:nonce_len], bytes(message), bytes(header[_AAD_OFFSET:]))
    # cryptography returns ciphertext || tag; the tag is the header's Signature.
    header[4:20] = sealed[-16:]
    return bytes(header) + sealed[:-16]


def _open(aead, nonce_len: int, transform) -> tuple[int, bytes]:
    mv = memoryview(transform)
    if mv.nbytes < TRANSFORM_HEADER_SIZE:
        raise DecryptError("transform message shorter than its 52-byte header")
    proto, signature, nonce, size, _reserved, flags, session_id = _TRANSFORM.unpack_from(mv)
    if proto != TRANSFORM_PROTOCOL_ID:
        raise DecryptError("not a transform message (ProtocolId is not 0xFD 'SMB')")
    if flags != _FLAGS_ENCRYPTED:
        raise DecryptError(f"transform Flags/EncryptionAlgorithm is 0x{flags:04x}, not 0x0001")
    ciphertext = mv[TRANSFORM_HEADER_SIZE:]
    if size != ciphertext.nbytes:
        raise DecryptError(f"OriginalMessageSize {size} does not match the "
                           f"{ciphertext.nbytes} bytes that follow the header")
    try:
        plain = aead.decrypt(nonce[:nonce_len], bytes(ciphertext) + signature,
                             bytes(mv[_AAD_OFFSET:TRANSFORM_HEADER_SIZE]))
    except InvalidTag:
        raise DecryptError("transform message failed authentication "
                           "(wrong key, wrong session, or tampered)") from None
    return session_id, plain


def encrypt(cipher_id: int, key: bytes, session_id: int,
            message: bytes | bytearray | memoryview) -> bytes:
    """One-shot encrypt with a random nonce (MS-SMB2 allows random nonces for GCM/CCM)."""
    nonce_len = _spec(cipher_id)[2]
    return _seal(_aead(cipher_id, key), nonce_len, os.urandom(nonce_len), session_id, message)


def decrypt(cipher_id: int, key: bytes, transform: bytes | bytearray | memoryview) -> tuple[int, bytes]:
    """(SessionId, plaintext SMB2 message); raises DecryptError."""
    return _open(_aead(cipher_id, key), _spec(cipher_id)[2], transform)


def transform_session_id(transform: bytes | bytearray | memoryview) -> int:
    """The SessionId of a transform header, to pick the key before decrypting."""
    mv = memoryview(transform)
    if mv.nbytes < TRANSFORM_HEADER_SIZE:
        raise DecryptError("transform message shorter than its 52-byte header")
    return struct.unpack_from("<Q", mv, 44)[0]
