"""Durable handles end to end (protocol/durable.py): the break-aware test client
(tests/smb2client) against a real smbd_py server over TCP on 127.0.0.1, real files, the
real kernel and real local processes.

What is proven:
- durable v1 (DHnQ, batch oplock) and v2 (DH2Q, RWH lease): after the TCP connection is
  dropped without LOGOFF, a new connection and session reclaims the open (DHnC / DH2C)
  with the same file id, the same oplock level / lease state, and the data written
  before the drop; reads and writes work on the reclaimed file id; a byte-range lock
  survives the drop;
- while disconnected the open still holds its kernel lease (/proc/locks);
- the scavenger closes a disconnected open after its (short, client-chosen) timeout;
- another client's open of the file succeeds at once (the disconnected open cannot ack a
  break, so it is closed) and the old handle is gone;
- a local open(2) of the file while the handle is disconnected returns in well under the
  kernel's lease-break-time and reads the data; the reclaim then fails with
  OBJECT_NAME_NOT_FOUND;
- a reclaim by another user (ACCESS_DENIED), with a wrong lease key or a wrong CreateGuid
  (OBJECT_NAME_NOT_FOUND), or while the open is still connected, is refused;
- no durable handle without a batch oplock or handle caching; CLOSE and TREE_DISCONNECT
  end a durable open for good.
Ports 15520-15529 (the durable-handle range is 15500-15549).
"""
from __future__ import annotations

import asyncio
import os
import time
import uuid

import pytest

from smbd_py.security.users import UserDb
from tests.peers.local_io import LocalProc, local_file
from tests.peers.smbd_py_server import PASSWORD, USER, checked_server
from tests.smb2client import (RWH, Dialect, Disposition, LeaseRequest, LockFlags,
                              Oplock, Smb2Client, new_lease_key)
from tests.smb2client import wire

PORT = 15520
OTHER_USER, OTHER_PASSWORD = "bob", "bob-secret-1"
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_FILE_CLOSED = 0xC0000128
STATUS_SHARING_VIOLATION = 0xC0000043
STATUS_RANGE_NOT_LOCKED = 0xC000007E
FILE_OPENED = 1
# A break the disconnected holder cannot answer must not cost a break timeout (35 s) or
# the kernel's lease-break-time (45 s): allow a generous margin for a loaded CI machine.
PROMPT_S = 5.0


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    users = tmp_path_factory.mktemp("durable-users") / "users"
    db = UserDb()
    db.add(USER, PASSWORD)
    db.add(OTHER_USER, OTHER_PASSWORD)
    db.save(str(users))
    # The later --users wins: this file has the fixture's account and a second one.
    with checked_server(tmp_path_factory, "durable", port=PORT,
                        extra_args=("--users", str(users))) as s:
        with open(s.log_path, errors="replace") as f:
            assert "kernel leases: on" in f.read(), \
                "durable handles must be tested on a share with kernel leases on"
        yield s


async def session(s, *, client_guid: bytes | None = None, user: str | None = None,
                  password: str | None = None, dialect=Dialect.SMB311):
    c = await Smb2Client.connect(s.host, s.port, dialect=dialect, client_guid=client_guid,
                                 timeout=20)
    await c.login(user or s.user, password or s.password)
    tid = await c.tree_connect(s.share)
    return c, tid


def kernel_leases_on(path: str) -> list[str]:
    """The /proc/locks LEASE lines on path's inode."""
    st = os.stat(path)
    suffix = f":{st.st_ino} "
    with open("/proc/locks") as f:
        return [line.strip() for line in f
                if " LEASE " in f" {line} " and suffix in line and "DELEG" not in line]


async def open_durable(c, tid, name, kind, *, share_access=wire.ShareAccess.ALL,
                       timeout_ms=0):
    """Open name with a batch oplock + DHnQ ("batch") or an RWH v2 lease + DH2Q
    ("lease"); returns (response, lease key or None, create guid or None)."""
    if kind == "batch":
        r = await c.create(tid, name, oplock=Oplock.BATCH, share_access=share_access,
                           disposition=Disposition.OPEN_IF, contexts=[wire.durable_v1()])
        assert r.oplock_level == Oplock.BATCH and r.durable and r.durable_v2 is None
        return r, None, None
    key, guid = new_lease_key(), uuid.uuid4().bytes
    r = await c.create(tid, name, share_access=share_access, disposition=Disposition.OPEN_IF,
                       lease=LeaseRequest(key, RWH, version=2, epoch=0),
                       contexts=[wire.durable_v2(guid, timeout_ms)])
    assert r.oplock_level == Oplock.LEASE and r.lease_state == RWH
    assert r.durable_v2 is not None and r.context(wire.CONTEXT_DURABLE_V1) is None
    return r, key, guid


async def reclaim(c, tid, name, kind, file_id, key=None, guid=None, *, expect=0):
    """DHnC (batch) or DH2C + the lease context (lease)."""
    if kind == "batch":
        return await c.create(tid, name, contexts=[wire.durable_reconnect_v1(file_id)],
                              expect=expect)
    return await c.create(tid, name, lease=LeaseRequest(key, 0, version=2),
                          contexts=[wire.durable_reconnect_v2(file_id, guid)], expect=expect)


async def drop(c: Smb2Client) -> None:
    """Lose the TCP connection: the socket closes, no LOGOFF, no CLOSE."""
    await c.disconnect()


@pytest.mark.parametrize("kind", ["batch", "lease"])
async def test_reconnect_after_dropped_connection_keeps_open_lease_and_lock(srv, kind):
    name = f"reclaim-{kind}.txt"
    c1, t1 = await session(srv)
    async with c1:
        r1, key, guid = await open_durable(c1, t1, name, kind)
        assert await c1.write(t1, r1.file_id, 0, b"written before the drop") == 23
        await c1.lock(t1, r1.file_id, [(100, 10, LockFlags.EXCLUSIVE | LockFlags.FAIL_IMMEDIATELY)])
        await drop(c1)

    # The lease belongs to the client: the v2 reclaim comes with the same ClientGuid.
    c2, t2 = await session(srv, client_guid=c1.client_guid)
    async with c2:
        r2 = await reclaim(c2, t2, name, kind, r1.file_id, key, guid)
        assert r2.file_id == r1.file_id
        assert r2.create_action == FILE_OPENED
        assert not r2.durable                # a reconnect answers no DHnQ / DH2Q
        if kind == "batch":
            assert r2.oplock_level == Oplock.BATCH
        else:
            assert r2.oplock_level == Oplock.LEASE
            assert (r2.lease_key, r2.lease_state) == (key, RWH)
        assert await c2.read(t2, r2.file_id, 0, 23) == b"written before the drop"
        assert await c2.write(t2, r2.file_id, 0, b"W") == 1
        assert await c2.read(t2, r2.file_id, 0, 2) == b"Wr"
        # The byte-range lock came back with the open: unlocking it succeeds once.
        await c2.lock(t2, r2.file_id, [(100, 10, LockFlags.UNLOCK)])
        await c2.lock(t2, r2.file_id, [(100, 10, LockFlags.UNLOCK)],
                      expect=STATUS_RANGE_NOT_LOCKED)
        await c2.close(t2, r2.file_id)
        # Closed for good: nothing to reclaim any more.
        await reclaim(c2, t2, name, kind, r1.file_id, key, guid,
                      expect=STATUS_OBJECT_NAME_NOT_FOUND)


async def test_disconnected_open_keeps_its_kernel_lease(srv):
    name = "kernel-backed.txt"
    path = local_file(srv, name, b"")
    c1, t1 = await session(srv)
    async with c1:
        r1, key, guid = await open_durable(c1, t1, name, "lease")
        assert kernel_leases_on(path), "the RWH grant is not backed by a kernel lease"
        await drop(c1)
    await asyncio.sleep(0.2)
    assert kernel_leases_on(path), "the disconnected durable open lost its kernel lease"
    c2, t2 = await session(srv, client_guid=c1.client_guid)
    async with c2:
        r2 = await reclaim(c2, t2, name, "lease", r1.file_id, key, guid)
        assert r2.lease_state == RWH
        await c2.close(t2, r2.file_id)
    assert not kernel_leases_on(path), "the kernel lease outlived the last open"


async def test_scavenger_closes_disconnected_open_after_its_timeout(srv):
    c1, t1 = await session(srv)
    async with c1:
        short, key_s, guid_s = await open_durable(c1, t1, "scavenged.txt", "lease",
                                                  share_access=wire.ShareAccess.NONE,
                                                  timeout_ms=1000)
        assert short.durable_v2 == (1000, 0)
        kept, key_k, guid_k = await open_durable(c1, t1, "kept.txt", "lease", timeout_ms=60_000)
        assert kept.durable_v2 == (60_000, 0)
        await drop(c1)
    await asyncio.sleep(2.0)
    c2, t2 = await session(srv, client_guid=c1.client_guid)
    async with c2:
        # Past its 1 s the scavenger has closed the first: nothing to reclaim, file free.
        await reclaim(c2, t2, "scavenged.txt", "lease", short.file_id, key_s, guid_s,
                      expect=STATUS_OBJECT_NAME_NOT_FOUND)
        r3 = await c2.create(t2, "scavenged.txt", oplock=Oplock.BATCH, share_access=0)
        assert r3.oplock_level == Oplock.BATCH
        await c2.close(t2, r3.file_id)
        # The one with 60 s is still there.
        r4 = await reclaim(c2, t2, "kept.txt", "lease", kept.file_id, key_k, guid_k)
        assert r4.file_id == kept.file_id and r4.lease_state == RWH
        await c2.close(t2, r4.file_id)
    with open(srv.log_path, errors="replace") as f:
        assert "scavenged.txt (id" in f.read()


@pytest.mark.parametrize("kind", ["batch", "lease"])
async def test_other_clients_open_closes_disconnected_durable_open_at_once(srv, kind):
    name = f"taken-over-{kind}.txt"
    c1, t1 = await session(srv)
    async with c1:
        # No sharing at all: the other client's open conflicts with it outright.
        r1, key, guid = await open_durable(c1, t1, name, kind, share_access=0)
        await c1.write(t1, r1.file_id, 0, b"first client")
        await drop(c1)
    await asyncio.sleep(0.1)
    c2, t2 = await session(srv)
    async with c2:
        t0 = time.monotonic()
        r2 = await c2.create(t2, name, oplock=Oplock.BATCH, share_access=0,
                             disposition=Disposition.OPEN)
        took = time.monotonic() - t0
        assert took < PROMPT_S, f"the other client's open waited {took:.1f} s"
        assert r2.oplock_level == Oplock.BATCH
        assert await c2.read(t2, r2.file_id, 0, 12) == b"first client"
        c3, t3 = await session(srv, client_guid=c1.client_guid)
        async with c3:
            await reclaim(c3, t3, name, kind, r1.file_id, key, guid,
                          expect=STATUS_OBJECT_NAME_NOT_FOUND)
        await c2.close(t2, r2.file_id)


@pytest.mark.parametrize("kind", ["batch", "lease"])
async def test_local_open_of_disconnected_durable_file_returns_promptly(srv, kind):
    name = f"local-{kind}.txt"
    path = local_file(srv, name, b"")
    c1, t1 = await session(srv)
    async with c1:
        r1, key, guid = await open_durable(c1, t1, name, kind)
        assert await c1.write(t1, r1.file_id, 0, b"from the smb client") == 19
        await drop(c1)
    await asyncio.sleep(0.2)
    assert kernel_leases_on(path), "nothing backs the disconnected open: the test proves nothing"
    reader = await LocalProc.reader(path)
    try:
        res = await reader.result(60)
    finally:
        await reader.aclose()
    blocked = res["t_open"] - res["t_start"]
    print(f"\n{kind}: local open blocked {blocked * 1000:.1f} ms by a disconnected durable open")
    assert blocked < PROMPT_S, f"the local open waited {blocked:.1f} s (lease-break-time?)"
    assert res["data"] == b"from the smb client"
    assert not kernel_leases_on(path)
    c2, t2 = await session(srv, client_guid=c1.client_guid)
    async with c2:
        await reclaim(c2, t2, name, kind, r1.file_id, key, guid,
                      expect=STATUS_OBJECT_NAME_NOT_FOUND)


async def test_reclaim_refused_for_other_user_wrong_key_wrong_guid_or_connected(srv):
    name = "refused.txt"
    c1, t1 = await session(srv)
    async with c1:
        r1, key, guid = await open_durable(c1, t1, name, "lease")
        # Still connected: there is no disconnected open to reclaim.
        await reclaim(c1, t1, name, "lease", r1.file_id, key, guid,
                      expect=STATUS_OBJECT_NAME_NOT_FOUND)
        await drop(c1)
    cb, tb = await session(srv, client_guid=c1.client_guid, user=OTHER_USER,
                           password=OTHER_PASSWORD)
    async with cb:
        await reclaim(cb, tb, name, "lease", r1.file_id, key, guid, expect=STATUS_ACCESS_DENIED)
    c2, t2 = await session(srv, client_guid=c1.client_guid)
    async with c2:
        await reclaim(c2, t2, name, "lease", r1.file_id, new_lease_key(), guid,
                      expect=STATUS_OBJECT_NAME_NOT_FOUND)
        await reclaim(c2, t2, name, "lease", r1.file_id, key, uuid.uuid4().bytes,
                      expect=STATUS_OBJECT_NAME_NOT_FOUND)
        # Without the lease context a leased open is not found either.
        await c2.create(t2, name, contexts=[wire.durable_reconnect_v2(r1.file_id, guid)],
                        expect=STATUS_OBJECT_NAME_NOT_FOUND)
        # All refusals left it in place: the right one still works.
        r2 = await reclaim(c2, t2, name, "lease", r1.file_id, key, guid)
        assert r2.file_id == r1.file_id and r2.lease_state == RWH
        await c2.close(t2, r2.file_id)
    # A leased open reconnects only from the same client (ClientGuid).
    c3, t3 = await session(srv)
    async with c3:
        r3, key3, guid3 = await open_durable(c3, t3, name, "lease")
        await drop(c3)
    c4, t4 = await session(srv)             # another ClientGuid
    async with c4:
        await reclaim(c4, t4, name, "lease", r3.file_id, key3, guid3,
                      expect=STATUS_OBJECT_NAME_NOT_FOUND)
    c5, t5 = await session(srv, client_guid=c3.client_guid)
    async with c5:
        r5 = await reclaim(c5, t5, name, "lease", r3.file_id, key3, guid3)
        await c5.close(t5, r5.file_id)


async def test_durable_only_with_batch_or_handle_caching_and_close_ends_it(srv):
    c1, t1 = await session(srv)
    async with c1:
        for oplock in (Oplock.NONE, Oplock.LEVEL_II, Oplock.EXCLUSIVE):
            r = await c1.create(t1, "not-durable.txt", oplock=oplock,
                                contexts=[wire.durable_v1()])
            assert not r.durable, f"durable granted with oplock {oplock:#x}"
            await c1.close(t1, r.file_id)
        r = await c1.create(t1, "not-durable.txt", lease=LeaseRequest(new_lease_key(), 0x5),
                            contexts=[wire.durable_v2(uuid.uuid4().bytes)])
        assert r.lease_state == 0x5 and not r.durable      # RW: no handle caching
        await c1.close(t1, r.file_id)
        # A durable open closed by TREE_DISCONNECT is gone, not disconnected.
        r, _, _ = await open_durable(c1, t1, "tdis.txt", "batch")
        await c1.tree_disconnect(t1)
        t1b = await c1.tree_connect(srv.share)
        await reclaim(c1, t1b, "tdis.txt", "batch", r.file_id,
                      expect=STATUS_OBJECT_NAME_NOT_FOUND)
        # LOGOFF keeps it (MS-SMB2 3.3.5.6): a new session on the same connection reclaims.
        r, _, _ = await open_durable(c1, t1b, "logoff.txt", "batch")
        await c1.logoff()
        await c1.login(srv.user, srv.password)
        t1c = await c1.tree_connect(srv.share)
        r2 = await reclaim(c1, t1c, "logoff.txt", "batch", r.file_id)
        assert r2.file_id == r.file_id and r2.oplock_level == Oplock.BATCH
        await c1.close(t1c, r2.file_id)
