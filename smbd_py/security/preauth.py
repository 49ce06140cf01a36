"""SMB 3.1.1 preauthentication integrity: the running SHA-512 over NEGOTIATE and SESSION_SETUP.

Owns MS-SMB2 3.2.5.2 / 3.3.5.4 hash chaining; the caller decides which messages feed it.
"""

from __future__ import annotations

import hashlib

__all__ = ["PREAUTH_HASH_SIZE", "PREAUTH_INITIAL", "preauth_update", "SHA_512"]

SHA_512 = 0x0001  # HashAlgorithms id in SMB2_PREAUTH_INTEGRITY_CAPABILITIES
PREAUTH_HASH_SIZE = 64
PREAUTH_INITIAL = bytes(PREAUTH_HASH_SIZE)


def preauth_update(prev_hash: bytes, message: bytes | bytearray | memoryview) -> bytes:
    """SHA-512(prev_hash || message); message is the whole SMB2 message, header included."""
    if len(prev_hash) != PREAUTH_HASH_SIZE:
        raise ValueError("preauth hash must be 64 bytes")
    h = hashlib.sha512(prev_hash)
    h.update(message)
    return h.digest()
