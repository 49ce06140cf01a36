"""AES-GMAC signing takes two paths (one AESGCM call over a joined copy for small
messages, a streaming GCM context over the pieces for large ones): both must give the
RFC 4543 tag, on either side of the size threshold, for sign, verify and sign_parts."""
from __future__ import annotations

import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from smbd_py.security import signing
from smbd_py.security.signing import AES_GMAC, Signer


def _message(size: int, message_id: int = 0x0102030405060708) -> bytearray:
    msg = bytearray(os.urandom(size))
    msg[:4] = b"\xfeSMB"
    struct.pack_into("<I", msg, 16, 0)          # flags: a request
    struct.pack_into("<H", msg, 12, 0x0009)     # WRITE
    struct.pack_into("<Q", msg, 24, message_id)
    return msg


@pytest.mark.parametrize("size", [64, 65, 4096, signing._GMAC_ONE_SHOT_MAX,
                                  signing._GMAC_ONE_SHOT_MAX + 1, 1 << 20])
def test_gmac_both_paths_give_the_rfc4543_tag(size):
    key = os.urandom(16)
    s = Signer(AES_GMAC, key)
    msg = _message(size)
    zeroed = bytes(msg[:48]) + bytes(16) + bytes(msg[64:])
    nonce = struct.pack("<QI", 0x0102030405060708, 0)
    want = AESGCM(key).encrypt(nonce, b"", zeroed)
    assert s.sign(msg) == want
    assert s.sign(memoryview(msg)) == want
    assert s.sign_parts(msg[:64], (bytes(msg[64:]),)) == want
    half = 64 + (size - 64) // 2
    assert s.sign_parts(msg[:64], (msg[64:half], memoryview(msg)[half:])) == want
    assert s.sign_parts(msg[:64], iter([bytes(msg[64:])])) == want   # not a tuple: streams
    msg[48:64] = want
    assert s.verify(msg)
    msg[-1] ^= 1
    assert not s.verify(msg)
