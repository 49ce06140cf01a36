"""Oplocks and leases end to end: the break-aware test client (tests/smb2client) against a
real smbd_py server over TCP on 127.0.0.1 (issue 3's acceptance 3 and 4).

Each test uses separate connections (separate ClientGuids) for holder and contender, as
two machines would. What is proven:
- an RWH lease holder gets exactly one break to RH when another client opens the file
  for write; the contender's CREATE answers STATUS_PENDING at once and completes only
  after the ack; while it waits the server answers an ECHO on a third connection in
  under 50 ms; the contender's write then breaks the holder on to NONE;
- the same for a batch oplock (break to LEVEL_II, then LEVEL_II -> NONE without ack);
- with --break-timeout 1 an unacknowledged break ends by timeout: the waiter proceeds
  after about a second, and the late ack gets STATUS_UNSUCCESSFUL;
- a holder that disconnects releases at once (the waiter does not sit out the timeout);
- CANCEL of a CREATE waiting on a break answers STATUS_CANCELLED;
- rename and delete-on-close break other leases' handle caching first.
Ports 15120-15139 (issue 3's range is 15100-15199).
"""
from __future__ import annotations

import asyncio
import time

import pytest

from tests.peers.smbd_py_server import checked_server
from tests.smb2client import (RH, RWH, R, Access, Dialect, Disposition,
                              LeaseBreak, LeaseRequest, Oplock, OplockBreak, Smb2Client,
                              new_lease_key)
from tests.smb2client import wire

PORT = 15120
PORT_SHORT_TIMEOUT = 15121
STATUS_UNSUCCESSFUL = 0xC0000001
STATUS_CANCELLED = 0xC0000120
ECHO_LIMIT_S = 0.050


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with checked_server(tmp_path_factory, "leases", port=PORT) as s:
        yield s


@pytest.fixture(scope="module")
def srv_short(tmp_path_factory):
    with checked_server(tmp_path_factory, "leases-timeout", port=PORT_SHORT_TIMEOUT,
                        extra_args=("--break-timeout", "1")) as s:
        yield s


async def session(s, dialect=Dialect.SMB311):
    c = await Smb2Client.connect(s.host, s.port, dialect=dialect, timeout=20)
    await c.login(s.user, s.password)
    tid = await c.tree_connect(s.share)
    return c, tid


async def echo_latencies(c: Smb2Client, n: int = 5) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        assert await c.echo() == 0
        out.append(time.perf_counter() - t0)
    return out


async def test_rwh_lease_break_contender_waits_for_ack_echo_stays_fast(srv):
    c1, t1 = await session(srv)
    c2, t2 = await session(srv)
    c3, _t3 = await session(srv)
    async with c1, c2, c3:
        k1 = new_lease_key()
        r1 = await c1.create(t1, "rwh.txt", disposition=Disposition.OVERWRITE_IF,
                             lease=LeaseRequest(k1, RWH, version=2, epoch=0))
        assert r1.oplock_level == Oplock.LEASE and r1.lease_version == 2
        assert (r1.lease_key, r1.lease_state, r1.lease_epoch) == (k1, RWH, 1)
        await c1.write(t1, r1.file_id, 0, b"cached by client 1")

        p = await c2.create_pending(t2, "rwh.txt",
                                    desired_access=Access.GENERIC_READ | Access.GENERIC_WRITE)
        interim = await asyncio.wait_for(p.interim, 5)
        assert interim is not None and interim.status == wire.STATUS_PENDING
        brk = await c1.next_break(5)
        assert isinstance(brk, LeaseBreak)
        assert (brk.lease_key, brk.current_state, brk.new_state) == (k1, RWH, RH)
        assert brk.ack_required and brk.new_epoch == 2
        await c1.expect_no_break(0.2)  # exactly one break for this open

        # The waiting CREATE blocks nothing: ECHO on a third connection stays fast.
        lat = await echo_latencies(c3)
        assert max(lat) < ECHO_LIMIT_S, f"ECHO latencies while a CREATE waits: {lat}"
        await asyncio.sleep(0.3)
        assert not p.final.done(), "the contender must wait for the holder's ack"

        ack = await c1.ack_lease(t1, k1, RH)
        assert ack.status == 0 and ack.lease_key == k1 and ack.lease_state == RH
        r2 = await p
        assert r2.status == 0 and r2.interim_seen
        assert r2.oplock_level == Oplock.NONE
        assert await c2.read(t2, r2.file_id, 0, 18) == b"cached by client 1"

        # Client 2 writes: client 1's read cache is stale now -> RH breaks to NONE.
        await c2.write(t2, r2.file_id, 0, b"X")
        brk2 = await c1.next_break(5)
        assert isinstance(brk2, LeaseBreak)
        assert (brk2.current_state, brk2.new_state, brk2.new_epoch) == (RH, 0, 3)
        assert brk2.ack_required  # RH held H
        assert (await c1.ack_lease(t1, k1, 0)).status == 0
        await c2.close(t2, r2.file_id)
        await c1.close(t1, r1.file_id)


async def test_batch_oplock_break_contender_waits_for_ack(srv):
    c1, t1 = await session(srv)
    c2, t2 = await session(srv)
    c3, _t3 = await session(srv)
    async with c1, c2, c3:
        r1 = await c1.create(t1, "batch.txt", oplock=Oplock.BATCH,
                             disposition=Disposition.OVERWRITE_IF)
        assert r1.oplock_level == Oplock.BATCH
        p = await c2.create_pending(t2, "batch.txt", oplock=Oplock.BATCH)
        assert (await asyncio.wait_for(p.interim, 5)).status == wire.STATUS_PENDING
        brk = await c1.next_break(5)
        assert isinstance(brk, OplockBreak)
        assert brk.file_id == r1.file_id and brk.oplock_level == Oplock.LEVEL_II
        lat = await echo_latencies(c3)
        assert max(lat) < ECHO_LIMIT_S, f"ECHO latencies while a CREATE waits: {lat}"
        await asyncio.sleep(0.3)
        assert not p.final.done()
        ack = await c1.ack_oplock(t1, r1.file_id, Oplock.LEVEL_II)
        assert ack.status == 0 and ack.oplock_level == Oplock.LEVEL_II
        r2 = await p
        assert r2.status == 0 and r2.interim_seen and r2.oplock_level == Oplock.LEVEL_II
        # A write: every LEVEL_II holder, the writer's own included, drops to NONE with no
        # ack expected (smb2.oplock.levelii500).
        await c2.write(t2, r2.file_id, 0, b"w")
        seen = {}
        for _ in range(2):
            for c in (c1, c2):
                try:
                    b = await c.next_break(1)
                except asyncio.TimeoutError:
                    continue
                seen[b.file_id] = b.oplock_level
        assert seen == {r1.file_id: Oplock.NONE, r2.file_id: Oplock.NONE}
        late = await c1.ack_oplock(t1, r1.file_id, Oplock.NONE)
        assert late.status != 0  # nothing to ack after LEVEL_II -> NONE
        await c2.close(t2, r2.file_id)
        await c1.close(t1, r1.file_id)


async def test_break_timeout_end_to_end(srv_short):
    c1, t1 = await session(srv_short)
    c2, t2 = await session(srv_short)
    async with c1, c2:
        k1 = new_lease_key()
        r1 = await c1.create(t1, "timeout.txt", disposition=Disposition.OVERWRITE_IF,
                             lease=LeaseRequest(k1, RWH))
        assert r1.lease_state == RWH
        t0 = time.monotonic()
        p = await c2.create_pending(t2, "timeout.txt", lease=LeaseRequest(new_lease_key(), RWH))
        brk = await c1.next_break(5)
        assert isinstance(brk, LeaseBreak) and brk.new_state == RH
        # No ack: the configured 1 s timeout ends the break and the waiter proceeds.
        r2 = await p.result(timeout=10)
        waited = time.monotonic() - t0
        assert r2.status == 0 and r2.interim_seen
        assert 0.8 <= waited < 5.0, waited
        assert r2.lease_state == RH  # the holder counts as NONE: W and H are free again
        late = await c1.ack_lease(t1, k1, RH)
        assert late.status == STATUS_UNSUCCESSFUL
        # The holder's lease is NONE now: a re-open with its key shows it.
        again = await c1.create(t1, "timeout.txt", lease=LeaseRequest(k1, 0))
        assert again.lease_state == 0
        await c1.close(t1, again.file_id)
        await c2.close(t2, r2.file_id)
        await c1.close(t1, r1.file_id)


async def test_oplock_timeout_end_to_end(srv_short):
    c1, t1 = await session(srv_short)
    c2, t2 = await session(srv_short)
    async with c1, c2:
        r1 = await c1.create(t1, "otimeout.txt", oplock=Oplock.BATCH,
                             disposition=Disposition.OVERWRITE_IF)
        t0 = time.monotonic()
        p = await c2.create_pending(t2, "otimeout.txt", oplock=Oplock.BATCH)
        await c1.next_break(5)
        r2 = await p.result(timeout=10)
        assert r2.status == 0 and 0.8 <= time.monotonic() - t0 < 5.0
        late = await c1.ack_oplock(t1, r1.file_id, Oplock.LEVEL_II)
        assert late.status != 0
        await c2.close(t2, r2.file_id)
        await c1.close(t1, r1.file_id)


async def test_holder_disconnect_releases_at_once(srv):
    c1, t1 = await session(srv)
    c2, t2 = await session(srv)
    async with c2:
        k1 = new_lease_key()
        r1 = await c1.create(t1, "gone.txt", disposition=Disposition.OVERWRITE_IF,
                             lease=LeaseRequest(k1, RWH))
        assert r1.lease_state == RWH
        p = await c2.create_pending(t2, "gone.txt", lease=LeaseRequest(new_lease_key(), RWH))
        await c1.next_break(5)
        assert (await asyncio.wait_for(p.interim, 5)).status == wire.STATUS_PENDING
        t0 = time.monotonic()
        await c1.disconnect()
        r2 = await p.result(timeout=10)
        assert r2.status == 0
        assert time.monotonic() - t0 < 2.0  # not the 35 s break timeout
        assert r2.lease_state == RWH        # nobody else holds anything now
        await c2.close(t2, r2.file_id)


async def test_cancel_of_a_create_waiting_on_a_break(srv):
    c1, t1 = await session(srv)
    c2, t2 = await session(srv)
    async with c1, c2:
        k1 = new_lease_key()
        r1 = await c1.create(t1, "cancel.txt", disposition=Disposition.OVERWRITE_IF,
                             lease=LeaseRequest(k1, RWH))
        p = await c2.create_pending(t2, "cancel.txt")
        await c1.next_break(5)
        assert (await asyncio.wait_for(p.interim, 5)).status == wire.STATUS_PENDING
        await c2.cancel(p)
        final = await p.response(5)
        assert final.status == STATUS_CANCELLED
        # The break itself still stands and is acked normally; the file opens afterwards.
        assert (await c1.ack_lease(t1, k1, RH)).status == 0
        r2 = await c2.create(t2, "cancel.txt", timeout=5)
        assert r2.status == 0 and not r2.interim_seen
        await c2.close(t2, r2.file_id)
        await c1.close(t1, r1.file_id)


async def test_rename_breaks_handle_caching_of_other_leases(srv):
    c1, t1 = await session(srv)
    c2, t2 = await session(srv)
    async with c1, c2:
        k1, k2 = new_lease_key(), new_lease_key()
        r1 = await c1.create(t1, "ren-src.txt", disposition=Disposition.OVERWRITE_IF,
                             lease=LeaseRequest(k1, RH))
        assert r1.lease_state == RH
        r2 = await c2.create(t2, "ren-src.txt", lease=LeaseRequest(k2, RH),
                             desired_access=Access.GENERIC_READ | Access.DELETE)
        assert r2.lease_state == RH
        ren = await c2.rename(t2, r2.file_id, "ren-dst.txt", wait=False)
        brk = await c1.next_break(5)
        assert isinstance(brk, LeaseBreak) and (brk.current_state, brk.new_state) == (RH, R)
        await asyncio.sleep(0.2)
        assert not ren.final.done(), "the rename waits for the H break to be acked"
        assert (await c1.ack_lease(t1, k1, R)).status == 0
        assert (await ren.response(5)).status == 0
        await c2.expect_no_break(0.2)  # its own lease is never broken
        await c2.close(t2, r2.file_id)
        await c1.close(t1, r1.file_id)


async def test_lease_key_on_another_file_is_refused(srv):
    c1, t1 = await session(srv)
    async with c1:
        k = new_lease_key()
        r1 = await c1.create(t1, "key-a.txt", disposition=Disposition.OVERWRITE_IF,
                             lease=LeaseRequest(k, RWH))
        bad = await c1.create(t1, "key-b.txt", disposition=Disposition.OVERWRITE_IF,
                              lease=LeaseRequest(k, RWH), expect=None)
        assert bad.status == 0xC000000D  # STATUS_INVALID_PARAMETER
        # The same key on the same file: one lease covering both opens, no break.
        r2 = await c1.create(t1, "key-a.txt", lease=LeaseRequest(k, RWH))
        assert r2.lease_state == RWH
        await c1.expect_no_break(0.2)
        await c1.close(t1, r2.file_id)
        await c1.close(t1, r1.file_id)


async def test_v1_lease_on_smb21_and_no_lease_on_202(srv):
    c1, t1 = await session(srv, Dialect.SMB21)
    c0, t0 = await session(srv, Dialect.SMB202)
    async with c1, c0:
        k = new_lease_key()
        r1 = await c1.create(t1, "v1.txt", disposition=Disposition.OVERWRITE_IF,
                             lease=LeaseRequest(k, RWH, version=1))
        assert r1.oplock_level == Oplock.LEASE and r1.lease_version == 1
        assert r1.lease_state == RWH
        # A v2 context on 2.1 is ignored: no lease.
        r1b = await c1.create(t1, "v2on21.txt", disposition=Disposition.OVERWRITE_IF,
                              lease=LeaseRequest(new_lease_key(), RWH, version=2))
        assert r1b.oplock_level == Oplock.NONE and r1b.lease_key is None
        r0 = await c0.create(t0, "v1.txt", oplock=Oplock.LEVEL_II, timeout=10, wait=False)
        brk = await c1.next_break(5)
        assert isinstance(brk, LeaseBreak) and brk.new_epoch == 0
        assert (await c1.ack_lease(t1, k, brk.new_state)).status == 0
        r0 = await r0
        assert r0.status == 0
        await c0.close(t0, r0.file_id)
        await c1.close(t1, r1b.file_id)
        await c1.close(t1, r1.file_id)
