"""Large signed requests (issue 6): a WRITE's signature is verified in the I/O pool, off
the event loop, above a size that depends on the algorithm (connection._VERIFY_IN_POOL*).
Over the wire with each algorithm and sizes on both sides of the threshold: a correctly
signed WRITE lands, one whose payload was changed after signing is refused with
ACCESS_DENIED and changes nothing - the data, and no oplock of another open is broken."""
from __future__ import annotations

import asyncio

import pytest

from tests.smb2client import Dialect, Disposition, Oplock, Smb2Client, auth, wire
from smbd_py.protocol import connection as C

ACCESS_DENIED = 0xC0000022

SIZES = {
    wire.SigningAlgorithm.AES_GMAC: (C._VERIFY_IN_POOL_GMAC // 2, 2 * C._VERIFY_IN_POOL_GMAC),
    wire.SigningAlgorithm.AES_CMAC: (C._VERIFY_IN_POOL // 2, 4 * C._VERIFY_IN_POOL),
}


async def _session(server, algorithm):
    c = await Smb2Client.connect(server.host, server.port, dialect=Dialect.SMB311,
                                 signing_algorithms=(algorithm,), timeout=20)
    await c.login(server.user, server.password, sign=True)
    assert c.signing and c.keys.signing_algorithm == algorithm
    return c, await c.tree_connect(server.share)


@pytest.mark.parametrize("algorithm", list(SIZES), ids=lambda a: wire.SigningAlgorithm(a).name)
async def test_large_signed_write_verified(server, monkeypatch, algorithm):
    c, tid = await _session(server, algorithm)
    other, otid = await _session(server, algorithm)
    async with c, other:
        for size in SIZES[algorithm]:
            name = f"w{size}.dat"
            r = await c.create(tid, name, disposition=Disposition.OVERWRITE_IF)
            good = bytes(range(256)) * (size // 256)
            assert await c.write(tid, r.file_id, 0, good) == size
            # Another client's level II oplock: a write breaks it, a refused one must not.
            o = await other.create(otid, name, oplock=Oplock.BATCH,
                                   disposition=Disposition.OPEN)
            assert o.oplock_level == Oplock.LEVEL_II
            real_sign = auth.sign_message

            def sign_then_tamper(key, alg, msg):
                signed = bytearray(real_sign(key, alg, msg))
                signed[-1] ^= 0xFF               # the payload's last byte, after signing
                return bytes(signed)

            monkeypatch.setattr(auth, "sign_message", sign_then_tamper)
            try:
                await c.write(tid, r.file_id, 0, b"\xAA" * size, expect=ACCESS_DENIED)
            finally:
                monkeypatch.setattr(auth, "sign_message", real_sign)
            await asyncio.sleep(0.2)
            assert other.breaks.empty(), "a write refused for its signature broke an oplock"
            assert await c.read(tid, r.file_id, 0, size) == good
            # The same write, signed right: it lands and breaks the level II oplock.
            assert await c.write(tid, r.file_id, 0, b"\xAA" * size) == size
            await asyncio.wait_for(other.breaks.get(), 5)
            await other.close(otid, o.file_id)
            await c.close(tid, r.file_id)
