"""smbd_py.testing end to end: the `smbd_server` fixture (pytest plugin, entry point
pytest11) runs a real server in this process on an ephemeral loopback port; real clients
(tests/smb2client, Samba's smbclient) talk to it over TCP while the test drives it:
- server-triggered breaks: an RWH lease holder gets RWH -> R, a batch oplock holder
  LEVEL_II; after the acks the API shows the new states (the example test of the README);
- a holder that never acks loses its lease/oplock at the break timeout set through the API;
- fail-next CREATE: smbclient's `get` fails with NT_STATUS_ACCESS_DENIED, the next works;
- delayed responses arrive late (and do not hold up other requests), a dropped one never
  arrives while the connection still answers ECHO;
- the opens the API lists are the clients' real handles.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import time

import pytest

from smbd_py.testing import OPLOCK_BATCH, OPLOCK_II, OPLOCK_LEASE, SmbdServer
from tests.conftest import require_tool
from tests.peers.procs import fresh_signals
from tests.smb2client import (RWH, R, Disposition, LeaseBreak, LeaseRequest, Oplock,
                              OplockBreak, Smb2Client, new_lease_key)
from tests.test_smbclient import smbclient

STATUS_UNSUCCESSFUL = 0xC0000001


async def session(srv: SmbdServer) -> tuple[Smb2Client, int]:
    c = await Smb2Client.connect(srv.host, srv.port, dialect=0x0311, timeout=20)
    await c.login(srv.user, srv.password)
    return c, await c.tree_connect(srv.share)


async def test_client_handles_server_triggered_breaks(smbd_server):
    """The README's example: a client library's oplock-break handling under test."""
    c, tid = await session(smbd_server)
    async with c:
        key = new_lease_key()
        lr = await c.create(tid, "leased.txt", disposition=Disposition.OVERWRITE_IF,
                            lease=LeaseRequest(key, RWH, version=2))
        assert lr.lease_state == RWH
        br = await c.create(tid, "batch.txt", disposition=Disposition.OVERWRITE_IF,
                            oplock=Oplock.BATCH)
        assert br.oplock_level == Oplock.BATCH
        (lease,) = smbd_server.leases()
        assert (lease.lease_key, lease.state, lease.path) == (key, RWH, "leased.txt")
        assert [(o.path, o.level) for o in smbd_server.oplocks()] == [("batch.txt", OPLOCK_BATCH)]

        handle = smbd_server.break_file("leased.txt", "R")
        brk = await c.next_break(5)
        assert isinstance(brk, LeaseBreak)
        assert (brk.lease_key, brk.current_state, brk.new_state) == (key, RWH, R)
        assert brk.ack_required and brk.new_epoch == lr.lease_epoch + 1
        (lease,) = smbd_server.leases()
        assert lease.breaking and lease.breaking_to == R and lease.state == RWH
        assert not handle.done(), "the break must wait for the holder's ack"
        ack = await c.ack_lease(tid, key, R)
        assert ack.status == 0 and ack.lease_state == R
        outcome = await handle
        assert outcome.finished and outcome.acked and not outcome.timed_out
        (h,) = outcome.holders
        assert (h.kind, h.lease_key, h.before, h.sent, h.final) == ("lease", key, RWH, R, R)
        (lease,) = smbd_server.leases()
        assert (lease.state, lease.breaking) == (R, False)

        handle = smbd_server.break_file("batch.txt", "LEVEL_II")
        brk = await c.next_break(5)
        assert isinstance(brk, OplockBreak)
        assert (brk.file_id, brk.oplock_level) == (br.file_id, Oplock.LEVEL_II)
        (op,) = smbd_server.oplocks()
        assert op.breaking_to == OPLOCK_II
        ack = await c.ack_oplock(tid, br.file_id, Oplock.LEVEL_II)
        assert ack.status == 0 and ack.oplock_level == Oplock.LEVEL_II
        outcome = await handle
        assert outcome.acked and outcome.holders[0].final == OPLOCK_II
        assert [(o.path, o.level, o.breaking_to) for o in smbd_server.oplocks()] == \
            [("batch.txt", OPLOCK_II, None)]
        await c.expect_no_break(0.2)
        await c.close(tid, lr.file_id)
        await c.close(tid, br.file_id)
    assert smbd_server.opens() == []


async def test_never_acking_holder_loses_its_caching_at_the_timeout(smbd_server):
    smbd_server.set_break_timeout(0.5)
    assert smbd_server.break_timeout() == 0.5
    c, tid = await session(smbd_server)
    async with c:
        key = new_lease_key()
        lr = await c.create(tid, "mute.txt", disposition=Disposition.OVERWRITE_IF,
                            lease=LeaseRequest(key, RWH, version=2))
        br = await c.create(tid, "mute-batch.txt", disposition=Disposition.OVERWRITE_IF,
                            oplock=Oplock.BATCH)
        assert lr.lease_state == RWH and br.oplock_level == Oplock.BATCH
        t0 = time.monotonic()
        h1 = smbd_server.break_file("mute.txt", "NONE")
        h2 = smbd_server.break_file("mute-batch.txt", "NONE")
        assert isinstance(await c.next_break(5), (LeaseBreak, OplockBreak))
        assert isinstance(await c.next_break(5), (LeaseBreak, OplockBreak))
        # No ack. The breaks end by the timeout the test set: about half a second.
        o1, o2 = await h1, await h2
        waited = time.monotonic() - t0
        assert 0.4 <= waited < 5.0, waited
        assert o1.timed_out and o2.timed_out and not o1.acked
        assert o1.holders[0].final == 0 and o2.holders[0].final == 0
        (lease,) = smbd_server.leases()
        assert (lease.lease_key, lease.state, lease.breaking) == (key, 0, False)
        assert smbd_server.oplocks() == []
        late = await c.ack_lease(tid, key, 0)
        assert late.status == STATUS_UNSUCCESSFUL
        await c.close(tid, lr.file_id)
        await c.close(tid, br.file_id)


def test_fail_next_create_smbclient_get(smbd_server, tmp_path):
    with open(os.path.join(smbd_server.share_path, "doc.txt"), "w") as f:
        f.write("the content")
    fault = smbd_server.fail_next("ACCESS_DENIED", "CREATE", path="doc.txt")
    r = smbclient(smbd_server, f"get doc.txt {tmp_path}/first.txt")
    assert "NT_STATUS_ACCESS_DENIED" in r.stdout + r.stderr, r.stdout + r.stderr
    assert not (tmp_path / "first.txt").exists() or (tmp_path / "first.txt").read_text() == ""
    assert fault.hits == 1 and smbd_server.faults() == []
    r = smbclient(smbd_server, f"get doc.txt {tmp_path}/second.txt")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "second.txt").read_text() == "the content"


async def test_delayed_and_dropped_responses(smbd_server):
    c, tid = await session(smbd_server)
    async with c:
        r = await c.create(tid, "slow.txt", disposition=Disposition.OVERWRITE_IF)
        await c.write(tid, r.file_id, 0, b"payload")

        smbd_server.delay("ECHO", 0.6)
        t0 = time.monotonic()
        assert await c.echo() == 0
        assert time.monotonic() - t0 >= 0.5

        # A delayed READ holds up nothing else on the connection: the ECHO sent after
        # it is answered first.
        smbd_server.delay("READ", 1.0)
        read = asyncio.ensure_future(c.read(tid, r.file_id, 0, 7))
        await asyncio.sleep(0.05)
        assert await c.echo() == 0
        assert not read.done()
        assert await read == b"payload"

        fault = smbd_server.drop_next("READ")
        with pytest.raises(asyncio.TimeoutError):
            await c.read(tid, r.file_id, 0, 7, timeout=1.0)
        assert fault.hits == 1
        assert await c.echo() == 0           # the connection is still up
        assert await c.read(tid, r.file_id, 0, 7) == b"payload"
        await c.close(tid, r.file_id)


async def test_opens_are_the_clients_handles(smbd_server):
    c, tid = await session(smbd_server)
    async with c:
        key = new_lease_key()
        r = await c.create(tid, "sub.txt", disposition=Disposition.OVERWRITE_IF,
                           lease=LeaseRequest(key, RWH, version=2))
        (o,) = smbd_server.opens()
        assert (o.path, o.share, o.file_id, o.user) == ("sub.txt", "share", r.file_id,
                                                          smbd_server.user)
        assert o.session_id == c.session_id and o.client_guid == c.client_guid
        assert o.peer[0] == "127.0.0.1"
        assert (o.oplock_level, o.lease_key, o.lease_state, o.lease_epoch) == \
            (OPLOCK_LEASE, key, RWH, r.lease_epoch)
        assert [(cn[0][0], cn[1]) for cn in smbd_server.connections()] == \
            [("127.0.0.1", c.client_guid)]
        await c.close(tid, r.file_id)
        assert smbd_server.opens() == []
        assert smbd_server.leases() == []


def test_opens_while_smbclient_holds_a_file(smbd_server):
    require_tool("smbclient")
    with open(os.path.join(smbd_server.share_path, "held.txt"), "w") as f:
        f.write("x")
    p = subprocess.Popen(["smbclient", smbd_server.unc, "-p", str(smbd_server.port), "-U",
                          f"{smbd_server.user}%{smbd_server.password}"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, preexec_fn=fresh_signals)
    try:
        p.stdin.write("open held.txt\n")
        p.stdin.flush()
        found = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not found:
            found = [o for o in smbd_server.opens() if o.path == "held.txt"]
            time.sleep(0.05)
        assert found, "smbclient's open never showed up"
        (o,) = found
        assert o.user == smbd_server.user and o.peer[0] == "127.0.0.1"
        assert o.client_guid != bytes(16) and not o.is_directory
        p.communicate("quit\n", timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and smbd_server.opens():
        time.sleep(0.05)
    assert smbd_server.opens() == []


def test_users_and_settings(smbd_server_factory):
    srv = smbd_server_factory(kernel_leases=False, signing_required=True)
    assert not srv.kernel_leases_active
    srv.add_user("bob", "Bob-pw-2")
    assert srv.users() == ["alice", "bob"]
    r = smbclient(srv, "ls", user="bob", password="Bob-pw-2")
    assert r.returncode == 0, r.stdout + r.stderr
    srv.remove_user("bob")
    r = smbclient(srv, "ls", user="bob", password="Bob-pw-2")
    assert "NT_STATUS_LOGON_FAILURE" in r.stdout + r.stderr, r.stdout + r.stderr
    with pytest.raises(TypeError):
        SmbdServer(no_such_setting=1)
    with pytest.raises(FileNotFoundError):
        srv.break_file("nobody-has-this-open.txt")
