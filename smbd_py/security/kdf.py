"""SMB 3.x key derivation: the SP800-108 counter-mode KDF and the per-session keys.

Owns MS-SMB2 3.1.4.2 (the KDF) and the label/context table of 3.3.5.5.3; what
the server signs with, encrypts with and decrypts with comes only from here.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

__all__ = ["kdf_sp800_108", "derive_keys", "SessionKeys",
           "SMB2_DIALECT_202", "SMB2_DIALECT_210", "SMB2_DIALECT_300",
           "SMB2_DIALECT_302", "SMB2_DIALECT_311"]

SMB2_DIALECT_202 = 0x0202
SMB2_DIALECT_210 = 0x0210
SMB2_DIALECT_300 = 0x0300
SMB2_DIALECT_302 = 0x0302
SMB2_DIALECT_311 = 0x0311

_U32BE = struct.Struct(">I")

# Labels and contexts carry their terminating NUL, as MS-SMB2 3.1.4.2 sizes them;
# the KDF then adds its own 0x00 separator.
_L30_SIGN = (b"SMB2AESCMAC\x00", b"SmbSign\x00")
_L30_APP = (b"SMB2APP\x00", b"SmbRpc\x00")
_L30_ENC_LABEL = b"SMB2AESCCM\x00"
_L30_SERVER_OUT = b"ServerOut\x00"
_L30_SERVER_IN = b"ServerIn \x00"  # the space is in the spec: same length as ServerOut
_L311_SIGN = b"SMBSigningKey\x00"
_L311_S2C = b"SMBS2CCipherKey\x00"
_L311_C2S = b"SMBC2SCipherKey\x00"
_L311_APP = b"SMBAppKey\x00"


def kdf_sp800_108(key: bytes, label: bytes, context: bytes, length_bits: int = 128) -> bytes:
    """NIST SP800-108 KDF in counter mode, PRF = HMAC-SHA256, r = 32 bits.

    K(i) = HMAC(key, [i]_32 || label || 0x00 || context || [L]_32).
    """
    if length_bits <= 0 or length_bits % 8:
        raise ValueError("length_bits must be a positive multiple of 8")
    tail = b"\x00" + context + _U32BE.pack(length_bits)
    out = b""
    i = 1
    while len(out) * 8 < length_bits:
        out += hmac.new(key, _U32BE.pack(i) + label + tail, hashlib.sha256).digest()
        i += 1
    return out[: length_bits // 8]


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """Keys of one session, named from the server's side.

    encryption_server_out encrypts server->client messages (the client's
    decryption key); decryption_server_in decrypts client->server messages.
    Both are None for 2.x dialects, which have no encryption.
    """
    signing: bytes
    encryption_server_out: bytes | None
    decryption_server_in: bytes | None
    application: bytes


def derive_keys(dialect: int, session_key: bytes, preauth_hash: bytes | None,
                cipher_key_bits: int = 128) -> SessionKeys:
    """MS-SMB2 3.3.5.5.3: derive the session's keys from Session.SessionKey.

    session_key is the NTLM exported session key (16 bytes). For 3.1.1,
    preauth_hash is Session.PreauthIntegrityHashValue (64 bytes) taken after
    the final SESSION_SETUP request. cipher_key_bits is 256 for the AES-256
    ciphers (3.1.1 only); signing keys are always 128 bits.
    """
    if len(session_key) < 16:
        # MS-SMB2: a shorter key (never from NTLM) is right-padded with zeros.
        session_key = session_key.ljust(16, b"\x00")
    elif dialect >= SMB2_DIALECT_300:
        session_key = session_key[:16]
    if cipher_key_bits not in (128, 256):
        raise ValueError("cipher_key_bits must be 128 or 256")
    if dialect in (SMB2_DIALECT_202, SMB2_DIALECT_210):
        return SessionKeys(signing=session_key[:16], encryption_server_out=None,
                           decryption_server_in=None, application=session_key[:16])
    if dialect in (SMB2_DIALECT_300, SMB2_DIALECT_302):
        return SessionKeys(
            signing=kdf_sp800_108(session_key, *_L30_SIGN),
            encryption_server_out=kdf_sp800_108(session_key, _L30_ENC_LABEL, _L30_SERVER_OUT,
                                                cipher_key_bits),
            decryption_server_in=kdf_sp800_108(session_key, _L30_ENC_LABEL, _L30_SERVER_IN,
                                               cipher_key_bits),
            application=kdf_sp800_108(session_key, *_L30_APP),
        )
    if dialect == SMB2_DIALECT_311:
        if preauth_hash is None or len(preauth_hash) != 64:
            raise ValueError("dialect 3.1.1 needs the 64-byte preauth integrity hash")
        return SessionKeys(
            signing=kdf_sp800_108(session_key, _L311_SIGN, preauth_hash),
            encryption_server_out=kdf_sp800_108(session_key, _L311_S2C, preauth_hash,
                                                cipher_key_bits),
            decryption_server_in=kdf_sp800_108(session_key, _L311_C2S, preauth_hash,
                                               cipher_key_bits),
            application=kdf_sp800_108(session_key, _L311_APP, preauth_hash),
        )
    raise ValueError(f"unknown dialect 0x{dialect:04x}")
