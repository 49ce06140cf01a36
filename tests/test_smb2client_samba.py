"""The project's own SMB2 test client (tests/smb2client) against the real Samba smbd.

Proves the client before other tests lean on it: login on every dialect with signing
(signed responses verified), encryption, I/O with multi-credit requests, the file-info
commands, LOCK, CANCEL, compound and raw sends, and above all that break notifications
reach the test: a batch oplock broken to LEVEL_II and an RWH v2 lease broken to RH
(epoch incremented), with the conflicting CREATE held at STATUS_PENDING until the ack.
Samba (Debian package, 4.17) runs privately on 127.0.0.1:14810 via tests/peers/samba.py.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest

from tests.peers.samba import samba_server
from tests.smb2client import (RH, RWH, Access, Cipher, Command, Dialect,
                              Disposition, LeaseBreak, LeaseRequest, LockFlags, Oplock,
                              OplockBreak, Smb2Client, Smb2Error, new_lease_key)
from tests.smb2client import auth, wire

PORT = 14810  # this client's range is 14800-14899
USER, PASSWORD = "smb2cli", "Cl1ent-pass"

STATUS_REQUEST_NOT_ACCEPTED = 0xC00000D0
STATUS_UNSUCCESSFUL = 0xC0000001
STATUS_LOGON_FAILURE = 0xC000006D
STATUS_LOCK_NOT_GRANTED = 0xC0000055
STATUS_INVALID_PARAMETER = 0xC000000D
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034


@pytest.fixture(scope="module")
def samba():
    share = tempfile.mkdtemp(prefix="smb2client-share-")
    with samba_server(share, port=PORT, user=USER, password=PASSWORD) as srv:
        # smbd children run as the account's uid and must open lock/msg.lock/<pid> to
        # see that another smbd is alive; mkdtemp's 0700 workdir hides it, every other
        # open then looks stale and no oplock is ever broken. (private/ stays 0700.)
        os.chmod(srv.workdir, 0o755)
        yield srv
    shutil.rmtree(share, ignore_errors=True)


async def session(srv, dialect=Dialect.SMB311, sign=True, **kw):
    c = await Smb2Client.connect(srv.host, srv.port, dialect=dialect, timeout=20, **kw)
    await c.login(srv.user, srv.password, sign=sign)
    tid = await c.tree_connect(srv.share)
    return c, tid


def on_disk(srv, name) -> Path:
    return Path(srv.share_path) / name


# --- offline checks of the crypto helpers ----------------------------------------------

def test_signature_detects_tampering():
    msg = wire.Header(command=Command.ECHO, message_id=7, session_id=1).pack() + \
        wire.small_request()
    key = bytes(range(16))
    for algo in wire.SigningAlgorithm:
        signed = auth.sign_message(key, algo, msg)
        assert auth.verify_signature(key, algo, signed)
        flipped = signed[:-1] + bytes([signed[-1] ^ 1])
        assert not auth.verify_signature(key, algo, flipped)


def test_kdf_is_sp800_108_counter_mode():
    # Independent recomputation with the cryptography package's KBKDF.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.kbkdf import CounterLocation, KBKDFHMAC, Mode
    key, label, ctx = os.urandom(16), b"SMBSigningKey\0", os.urandom(64)
    ref = KBKDFHMAC(algorithm=hashes.SHA256(), mode=Mode.CounterMode, length=16, rlen=4,
                    llen=4, location=CounterLocation.BeforeFixed, label=label, context=ctx,
                    fixed=None).derive(key)
    assert auth.kdf(key, label, ctx) == ref


def test_lease_context_layouts():
    key, parent = b"K" * 16, b"P" * 16
    v1 = LeaseRequest(key, RWH, version=1).encode()
    v2 = LeaseRequest(key, RWH, version=2, epoch=3, parent=parent).encode()
    assert len(v1) == 32 and len(v2) == 52
    assert struct.unpack_from("<16sII", v2) == (key, 7, wire.LEASE_FLAG_PARENT_LEASE_KEY_SET)
    assert v2[32:48] == parent and struct.unpack_from("<H", v2, 48)[0] == 3
    assert len(wire.oplock_break_ack(b"F" * 16, 1)) == 24
    assert len(wire.lease_break_ack(key, 3)) == 36


# --- against Samba ------------------------------------------------------------------------

@pytest.mark.parametrize("dialect", list(Dialect), ids=lambda d: f"{d:04x}")
async def test_login_signed_roundtrip(samba, dialect):
    c, tid = await session(samba, dialect, sign=True)
    async with c:
        assert c.dialect == dialect and c.signing
        name = f"rt-{dialect:04x}.bin"
        # Above 64 KiB takes a multi-credit request on 2.1+; 2.0.2 is limited to 64 KiB.
        data = os.urandom(70000 if dialect >= Dialect.SMB21 else 65536)
        r = await c.create(tid, name, disposition=Disposition.OVERWRITE_IF)
        assert r.status == 0
        assert await c.write(tid, r.file_id, 0, data) == len(data)
        await c.flush(tid, r.file_id)
        assert await c.read(tid, r.file_id, 0, len(data)) == data
        assert await c.echo() == 0
        await c.close(tid, r.file_id)
        assert on_disk(samba, name).read_bytes() == data
        await c.tree_disconnect(tid)
        await c.logoff()
        # Samba signs its responses on a signed session; every one verified.
        assert c.signed_responses >= 5 and not c.signature_errors
        if dialect == Dialect.SMB311:
            assert c.keys.signing_algorithm == wire.SigningAlgorithm.AES_GMAC


async def test_unsigned_session_and_cmac_on_311(samba):
    c, tid = await session(samba, Dialect.SMB311, sign=False,
                           signing_algorithms=[wire.SigningAlgorithm.AES_CMAC])
    async with c:
        assert not c.signing and c.keys.signing_algorithm == wire.SigningAlgorithm.AES_CMAC
        r = await c.create(tid, "unsigned.txt")
        await c.close(tid, r.file_id)


async def test_wrong_password_is_logon_failure(samba):
    async with await Smb2Client.connect(samba.host, samba.port) as c:
        with pytest.raises(Smb2Error) as e:
            await c.login(samba.user, "not-the-password")
        assert e.value.status == STATUS_LOGON_FAILURE


@pytest.mark.parametrize("dialect,cipher", [
    (Dialect.SMB30, Cipher.AES_128_CCM), (Dialect.SMB311, Cipher.AES_128_CCM),
    (Dialect.SMB311, Cipher.AES_128_GCM), (Dialect.SMB311, Cipher.AES_256_GCM)],
    ids=lambda v: f"{v:04x}" if isinstance(v, Dialect) else Cipher(v).name)
async def test_encrypted_session(samba, dialect, cipher):
    c = await Smb2Client.connect(samba.host, samba.port, dialect=dialect, ciphers=[cipher])
    async with c:
        await c.login(samba.user, samba.password, encrypt=True)
        assert c.encrypting and c.keys.cipher == cipher
        tid = await c.tree_connect(samba.share)
        r = await c.create(tid, "enc.txt", disposition=Disposition.OVERWRITE_IF)
        await c.write(tid, r.file_id, 0, b"sealed" * 1000)
        assert await c.read(tid, r.file_id, 0, 6000) == b"sealed" * 1000
        await c.close(tid, r.file_id)


async def test_info_rename_eof_delete_and_directory(samba):
    c, tid = await session(samba)
    async with c:
        r = await c.create(tid, "info-a.txt", disposition=Disposition.OVERWRITE_IF,
                           desired_access=Access.GENERIC_ALL)
        await c.set_end_of_file(tid, r.file_id, 12345)
        assert (await c.query_standard_info(tid, r.file_id))["end_of_file"] == 12345
        await c.rename(tid, r.file_id, "info-b.txt", replace=True)
        names = {e.name: e for e in await c.list_directory(tid)}
        assert "info-b.txt" in names and "info-a.txt" not in names
        assert names["info-b.txt"].end_of_file == 12345
        assert on_disk(samba, "info-b.txt").stat().st_size == 12345
        await c.set_delete_on_close(tid, r.file_id)
        await c.close(tid, r.file_id)
        assert not on_disk(samba, "info-b.txt").exists()
        missing = await c.create(tid, "info-b.txt", disposition=Disposition.OPEN,
                                 expect=STATUS_OBJECT_NAME_NOT_FOUND)
        assert missing.status == STATUS_OBJECT_NAME_NOT_FOUND


async def test_batch_oplock_break_to_level2(samba):
    c1, t1 = await session(samba)
    c2, t2 = await session(samba)
    async with c1, c2:
        r1 = await c1.create(t1, "oplock.txt", oplock=Oplock.BATCH,
                             disposition=Disposition.OVERWRITE_IF)
        assert r1.oplock_level == Oplock.BATCH
        p = await c2.create_pending(t2, "oplock.txt", oplock=Oplock.BATCH)
        brk = await c1.next_break(5)
        assert isinstance(brk, OplockBreak)
        assert brk.file_id == r1.file_id and brk.oplock_level == Oplock.LEVEL_II
        interim = await asyncio.wait_for(p.interim, 5)
        assert interim is not None and interim.status == wire.STATUS_PENDING
        assert p.async_id is not None
        await asyncio.sleep(0.5)
        assert not p.final.done(), "the open must wait for the holder's ack"
        ack = await c1.ack_oplock(t1, r1.file_id, Oplock.LEVEL_II)
        assert ack.status == 0 and ack.oplock_level == Oplock.LEVEL_II
        r2 = await p
        assert r2.status == 0 and r2.interim_seen
        assert r2.oplock_level == Oplock.LEVEL_II
        await c2.close(t2, r2.file_id)
        await c1.close(t1, r1.file_id)


async def test_lease_v2_break_epoch_and_ack_statuses(samba):
    c1, t1 = await session(samba)
    c2, t2 = await session(samba)
    async with c1, c2:
        k1, k2 = new_lease_key(), new_lease_key()
        r1 = await c1.create(t1, "lease.txt", disposition=Disposition.OVERWRITE_IF,
                             lease=LeaseRequest(k1, RWH, version=2, epoch=0))
        assert r1.oplock_level == Oplock.LEASE and r1.lease_version == 2
        assert (r1.lease_key, r1.lease_state, r1.lease_epoch) == (k1, RWH, 1)
        p = await c2.create_pending(t2, "lease.txt", lease=LeaseRequest(k2, RWH, version=2))
        brk = await c1.next_break(5)
        assert isinstance(brk, LeaseBreak)
        assert (brk.lease_key, brk.current_state, brk.new_state) == (k1, RWH, RH)
        assert brk.new_epoch == 2 and brk.ack_required
        assert (await asyncio.wait_for(p.interim, 5)).status == wire.STATUS_PENDING
        # An ack with a state outside the break-to state is refused; the break stays.
        bad = await c1.ack_lease(t1, k1, RWH)
        assert bad.status == STATUS_REQUEST_NOT_ACCEPTED
        assert not p.final.done()
        good = await c1.ack_lease(t1, k1, RH)
        assert good.status == 0 and good.lease_key == k1 and good.lease_state == RH
        r2 = await p
        assert r2.status == 0 and r2.lease_state == RH and r2.interim_seen
        # Nothing is breaking any more.
        again = await c1.ack_lease(t1, k1, RH)
        assert again.status == STATUS_UNSUCCESSFUL
        await c2.close(t2, r2.file_id)
        await c1.close(t1, r1.file_id)


async def test_lease_v1_break_on_21(samba):
    c1, t1 = await session(samba, Dialect.SMB21)
    c2, t2 = await session(samba, Dialect.SMB21)
    async with c1, c2:
        k1 = new_lease_key()
        r1 = await c1.create(t1, "lease1.txt", disposition=Disposition.OVERWRITE_IF,
                             lease=LeaseRequest(k1, RWH, version=1))
        assert r1.lease_version == 1 and r1.lease_state == RWH
        p = await c2.create_pending(t2, "lease1.txt", oplock=Oplock.NONE)
        brk = await c1.next_break(5)
        assert isinstance(brk, LeaseBreak) and brk.new_epoch == 0 and brk.new_state == RH
        assert (await c1.ack_lease(t1, k1, RH)).status == 0
        r2 = await p
        assert r2.status == 0
        await c1.expect_no_break(0.3)
        await c2.close(t2, r2.file_id)
        await c1.close(t1, r1.file_id)


async def test_cancel_of_a_create_waiting_on_a_break(samba):
    c1, t1 = await session(samba)
    c2, t2 = await session(samba)
    async with c1, c2:
        r1 = await c1.create(t1, "cancel.txt", oplock=Oplock.BATCH,
                             disposition=Disposition.OVERWRITE_IF)
        p = await c2.create_pending(t2, "cancel.txt")
        await c1.next_break(5)
        await asyncio.wait_for(p.interim, 5)
        await c2.cancel(p)
        final = await p.response(5)
        assert final.status == wire.STATUS_CANCELLED
        await c1.close(t1, r1.file_id)


async def test_blocking_lock_goes_async_and_completes(samba):
    c1, t1 = await session(samba)
    c2, t2 = await session(samba)
    async with c1, c2:
        r1 = await c1.create(t1, "lock.bin", disposition=Disposition.OVERWRITE_IF)
        r2 = await c2.create(t2, "lock.bin")
        await c1.lock(t1, r1.file_id, [(0, 100, LockFlags.EXCLUSIVE | LockFlags.FAIL_IMMEDIATELY)])
        st = await c2.lock(t2, r2.file_id, [(0, 10, LockFlags.EXCLUSIVE
                                                  | LockFlags.FAIL_IMMEDIATELY)],
                           expect=None)
        assert st == STATUS_LOCK_NOT_GRANTED
        p = await c2.lock(t2, r2.file_id, [(0, 10, LockFlags.EXCLUSIVE)], wait=False)
        assert (await asyncio.wait_for(p.interim, 5)).status == wire.STATUS_PENDING
        await c1.lock(t1, r1.file_id, [(0, 100, LockFlags.UNLOCK)])
        assert await p == 0
        await c2.close(t2, r2.file_id)
        await c1.close(t1, r1.file_id)


async def test_compound_and_raw_sends(samba):
    c, tid = await session(samba)
    async with c:
        on_disk(samba, "compound.txt").write_bytes(b"abc")
        create = wire.create_request("compound.txt", oplock=0, impersonation=2,
                                     desired_access=Access.GENERIC_READ, file_attributes=0,
                                     share_access=7, disposition=Disposition.OPEN, options=0,
                                     contexts=[])
        ps = await c.compound([
            (Command.CREATE, create, tid),
            (Command.READ, wire.read_request(wire.RELATED_FILE_ID, 0, 3), tid),
            (Command.CLOSE, wire.close_request(wire.RELATED_FILE_ID), tid)], related=True)
        rs = [await p.response() for p in ps]
        assert [r.status for r in rs] == [0, 0, 0]
        assert wire.parse_read_response(rs[1].raw) == b"abc"
        # A malformed ECHO (StructureSize 5) by hand, signed, routed by its MessageId.
        mid = await c.alloc_message_id()
        h = wire.Header(command=Command.ECHO, message_id=mid, credits=1,
                        session_id=c.session_id)
        msg = c.sign(h.pack() + struct.pack("<HH", 5, 0))
        (p,) = await c.send_raw(msg, message_ids=[mid])
        assert (await p.response()).status == STATUS_INVALID_PARAMETER
        assert await c.echo() == 0  # the connection survives


async def test_auto_ack_lets_a_conflicting_open_proceed(samba):
    c1, t1 = await session(samba)
    c2, t2 = await session(samba)
    async with c1, c2:
        c1.auto_ack = True
        k1 = new_lease_key()
        r1 = await c1.create(t1, "auto.txt", disposition=Disposition.OVERWRITE_IF,
                             lease=LeaseRequest(k1, RWH))
        b1 = await c1.create(t1, "auto-batch.txt", disposition=Disposition.OVERWRITE_IF,
                             oplock=Oplock.BATCH)
        r2 = await c2.create(t2, "auto.txt", lease=LeaseRequest(new_lease_key(), RWH),
                             timeout=5)
        b2 = await c2.create(t2, "auto-batch.txt", oplock=Oplock.BATCH, timeout=5)
        assert r2.lease_state == RH and b2.oplock_level == Oplock.LEVEL_II
        for _ in range(50):  # the ack responses may trail the opens they released
            if len(c1.auto_acks) == 2:
                break
            await asyncio.sleep(0.05)
        assert sorted(a.status for _, a in c1.auto_acks) == [0, 0]
        assert c1.breaks.qsize() == 2  # still reported to the test
        for c, t, f in ((c2, t2, r2), (c2, t2, b2), (c1, t1, r1), (c1, t1, b1)):
            await c.close(t, f.file_id)
