"""Client-side security for the test client: NTLMSSP in SPNEGO, key derivation, signing,
encryption and the 3.1.1 preauth integrity hash.

Written independently of smbd_py/security (a cross-check, not a copy); pure functions over
bytes and keys. MS-SMB2 3.1.4.1 (signing), 3.1.4.2 (KDF), 3.1.4.3 (encryption), 3.2.5.3.1
(session keys).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM
from impacket import ntlm
from impacket.spnego import SPNEGO_NegTokenInit, SPNEGO_NegTokenResp, TypesMech

from .wire import (Cipher, Command, Dialect, Flags, HEADER_SIZE, SIGNATURE_OFFSET,
                   SigningAlgorithm, TRANSFORM_FLAG_ENCRYPTED, TRANSFORM_HEADER, TRANSFORM_ID)

# --- NTLMSSP / SPNEGO -------------------------------------------------------------------

NTLMSSP_MECH = TypesMech["NTLMSSP - Microsoft NTLM Security Support Provider"]


class NtlmAuth:
    """Two-leg NTLMv2 exchange producing SPNEGO tokens; `session_key` after `authenticate`."""

    def __init__(self, user: str, password: str, domain: str = "", workstation: str = "",
                 spnego: bool = True, nthash: str = ""):
        self.user, self.password, self.domain = user, password, domain
        self.nthash = nthash
        self.spnego = spnego
        # Always ask for key exchange and signing: the exported session key must be
        # a fresh random key, like real clients.
        self._type1 = ntlm.getNTLMSSPType1(workstation, domain, signingRequired=True)
        self.session_key: bytes | None = None

    def negotiate_token(self) -> bytes:
        raw = self._type1.getData()
        if not self.spnego:
            return raw
        init = SPNEGO_NegTokenInit()
        init["MechTypes"] = [NTLMSSP_MECH]
        init["MechToken"] = raw
        return init.getData()

    def authenticate_token(self, server_token: bytes) -> bytes:
        if server_token[:8] == b"NTLMSSP\0":
            challenge = server_token
        else:
            challenge = SPNEGO_NegTokenResp(server_token)["ResponseToken"]
        type3, self.session_key = ntlm.getNTLMSSPType3(
            self._type1, challenge, self.user, self.password, self.domain,
            nthash=self.nthash)
        if not self.spnego:
            return type3.getData()
        resp = SPNEGO_NegTokenResp()
        resp["ResponseToken"] = type3.getData()
        return resp.getData()


# --- key derivation ---------------------------------------------------------------------

def kdf(key: bytes, label: bytes, context: bytes, length_bits: int = 128) -> bytes:
    """SP800-108 counter mode with HMAC-SHA256, one or two blocks (MS-SMB2 3.1.4.2).

    `label` and `context` are passed as the spec spells them, trailing NUL included;
    the KDF adds its own 0x00 separator between them.
    """
    out = b""
    i = 1
    while len(out) * 8 < length_bits:
        out += hmac.new(key, struct.pack(">I", i) + label + b"\0" + context
                        + struct.pack(">I", length_bits), hashlib.sha256).digest()
        i += 1
    return out[:length_bits // 8]


@dataclass
class SessionKeys:
    signing_key: bytes
    signing_algorithm: int
    encryption_key: bytes | None = None  # client -> server
    decryption_key: bytes | None = None  # server -> client
    cipher: int | None = None


def derive_keys(session_key: bytes, dialect: int, preauth_hash: bytes | None,
                signing_algorithm: int | None, cipher: int | None) -> SessionKeys:
    session_key = session_key[:16].ljust(16, b"\0")
    if dialect < Dialect.SMB30:
        return SessionKeys(session_key, SigningAlgorithm.HMAC_SHA256)
    if dialect == Dialect.SMB311:
        sign = kdf(session_key, b"SMBSigningKey\0", preauth_hash)
        algo = SigningAlgorithm.AES_CMAC if signing_algorithm is None else signing_algorithm
        keys = SessionKeys(sign, algo, cipher=cipher)
        if cipher is not None:
            bits = 256 if cipher in (Cipher.AES_256_CCM, Cipher.AES_256_GCM) else 128
            keys.encryption_key = kdf(session_key, b"SMBC2SCipherKey\0", preauth_hash, bits)
            keys.decryption_key = kdf(session_key, b"SMBS2CCipherKey\0", preauth_hash, bits)
        return keys
    keys = SessionKeys(kdf(session_key, b"SMB2AESCMAC\0", b"SmbSign\0"),
                       SigningAlgorithm.AES_CMAC, cipher=Cipher.AES_128_CCM)
    keys.encryption_key = kdf(session_key, b"SMB2AESCCM\0", b"ServerIn \0")
    keys.decryption_key = kdf(session_key, b"SMB2AESCCM\0", b"ServerOut\0")
    return keys


# --- signing ----------------------------------------------------------------------------

def compute_signature(key: bytes, algorithm: int, message: bytes) -> bytes:
    """Signature of one SMB2 message (header + body + padding), signature field as zeros."""
    msg = message[:SIGNATURE_OFFSET] + b"\0" * 16 + message[HEADER_SIZE:]
    if algorithm == SigningAlgorithm.HMAC_SHA256:
        return hmac.new(key, msg, hashlib.sha256).digest()[:16]
    if algorithm == SigningAlgorithm.AES_CMAC:
        c = cmac.CMAC(algorithms.AES(key))
        c.update(msg)
        return c.finalize()
    if algorithm == SigningAlgorithm.AES_GMAC:
        flags, command = struct.unpack_from("<I", msg, 16)[0], struct.unpack_from("<H", msg, 12)[0]
        message_id = struct.unpack_from("<Q", msg, 24)[0]
        # Nonce: MessageId, then a 32-bit word: bit 0 = response, bit 1 = CANCEL request.
        high = flags & Flags.SERVER_TO_REDIR
        if command == Command.CANCEL:
            high |= 0x2
        nonce = struct.pack("<QI", message_id, high)
        return AESGCM(key).encrypt(nonce, b"", msg)
    raise ValueError(f"unknown signing algorithm {algorithm}")


def sign_message(key: bytes, algorithm: int, message: bytes) -> bytes:
    """Set SMB2_FLAGS_SIGNED and fill the signature."""
    flags = struct.unpack_from("<I", message, 16)[0] | Flags.SIGNED
    message = message[:16] + struct.pack("<I", flags) + message[20:]
    sig = compute_signature(key, algorithm, message)
    return message[:SIGNATURE_OFFSET] + sig + message[HEADER_SIZE:]


def verify_signature(key: bytes, algorithm: int, message: bytes) -> bool:
    return hmac.compare_digest(compute_signature(key, algorithm, message),
                               message[SIGNATURE_OFFSET:HEADER_SIZE])


# --- encryption -------------------------------------------------------------------------

def _aead(cipher: int, key: bytes):
    if cipher in (Cipher.AES_128_GCM, Cipher.AES_256_GCM):
        return AESGCM(key), 12
    return AESCCM(key, tag_length=16), 11


def encrypt_message(keys: SessionKeys, session_id: int, message: bytes) -> bytes:
    """Wrap a (possibly compounded) message in a transform header."""
    aead, nonce_len = _aead(keys.cipher, keys.encryption_key)
    nonce = os.urandom(nonce_len)
    aad = TRANSFORM_HEADER.pack(TRANSFORM_ID, b"\0" * 16, nonce.ljust(16, b"\0"), len(message),
                                0, TRANSFORM_FLAG_ENCRYPTED, session_id)[20:]
    ct = aead.encrypt(nonce, message, aad)
    return TRANSFORM_ID + ct[-16:] + aad + ct[:-16]


def decrypt_message(keys: SessionKeys, data: bytes) -> bytes:
    _, sig, nonce, size, _, _, _ = TRANSFORM_HEADER.unpack_from(data)
    aead, nonce_len = _aead(keys.cipher, keys.decryption_key)
    aad = data[20:TRANSFORM_HEADER.size]
    return aead.decrypt(nonce[:nonce_len], bytes(data[TRANSFORM_HEADER.size:]) + sig, aad)


def transform_session_id(data: bytes) -> int:
    return TRANSFORM_HEADER.unpack_from(data)[6]


# --- preauth integrity (3.1.1) ------------------------------------------------------------

def preauth_update(previous: bytes, message: bytes) -> bytes:
    return hashlib.sha512(previous + message).digest()


PREAUTH_INITIAL = b"\0" * 64
