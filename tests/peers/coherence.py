"""The client side of the coherence scenarios, shared by tests/test_kernel_coherence.py and
scripts/coherence_demo.py: log in to a server, open a file asking for full caching
(an RWH lease or a batch oplock) and check the grant, check a break that takes write
caching away, and acknowledge it. A "peer" is anything with host, port, user, password
and share (tests.peers.smbd_py_server.SmbdPy, tests.peers.samba's server, Peer)."""
from __future__ import annotations

import dataclasses

from tests.smb2client import (RWH, Access, Dialect, Disposition, LeaseBreak, LeaseRequest,
                              Oplock, OplockBreak, Smb2Client, W, R, new_lease_key)


@dataclasses.dataclass(frozen=True)
class Peer:
    """A server reached over TCP with one account and one share."""
    host: str
    port: int
    share: str
    user: str
    password: str


async def session(peer, dialect=Dialect.SMB311, timeout: float = 20):
    """Connect, log in and tree-connect to the peer's share: (client, tree id)."""
    c = await Smb2Client.connect(peer.host, peer.port, dialect=dialect, timeout=timeout)
    try:
        await c.login(peer.user, peer.password)
        tid = await c.tree_connect(peer.share)
    except BaseException:
        await c.disconnect()
        raise
    return c, tid


async def open_caching(c: Smb2Client, tid: int, name: str, kind: str, *,
                       access: int = Access.GENERIC_READ | Access.GENERIC_WRITE):
    """Open `name` asking for full caching of `kind` ("batch" or "lease" = RWH, or "R" /
    "level2"); asserts it was granted. Returns (CreateResponse, lease key or None)."""
    key = None
    if kind == "batch":
        r = await c.create(tid, name, desired_access=access, disposition=Disposition.OPEN,
                           oplock=Oplock.BATCH)
        assert r.oplock_level == Oplock.BATCH, f"batch oplock not granted: {r.oplock_level}"
    elif kind == "level2":
        r = await c.create(tid, name, desired_access=access, disposition=Disposition.OPEN,
                           oplock=Oplock.LEVEL_II)
        assert r.oplock_level == Oplock.LEVEL_II, f"LEVEL_II not granted: {r.oplock_level}"
    else:
        key = new_lease_key()
        want = RWH if kind == "lease" else R
        r = await c.create(tid, name, desired_access=access, disposition=Disposition.OPEN,
                           lease=LeaseRequest(key, want))
        assert r.oplock_level == Oplock.LEASE and r.lease_state == want, \
            f"lease {want!r} not granted: oplock {r.oplock_level:#x} state {r.lease_state!r}"
    return r, key


def check_write_break(brk, kind: str, file_id: bytes, key: bytes | None) -> int:
    """A break that takes write caching away; returns the level/state to ack with."""
    if kind == "batch":
        assert isinstance(brk, OplockBreak), brk
        assert brk.file_id == file_id
        assert brk.oplock_level in (Oplock.LEVEL_II, Oplock.NONE), brk
        return brk.oplock_level
    assert isinstance(brk, LeaseBreak), brk
    assert brk.lease_key == key and brk.current_state == RWH, brk
    assert not brk.new_state & W and brk.ack_required, brk
    return brk.new_state


async def ack(c: Smb2Client, tid: int, kind: str, file_id: bytes, key: bytes | None,
              level: int) -> int:
    """Acknowledge a break of `kind` ("batch"/"level2" or a lease) at `level`: the status."""
    if kind in ("batch", "level2"):
        return (await c.ack_oplock(tid, file_id, level)).status
    return (await c.ack_lease(tid, key, level)).status


# --- scripts/coherence_demo.py's timeline, as the tests read it ----------------------------

def assert_in_order(out: str, *needles: str) -> None:
    """Each needle occurs in `out`, each after the previous one."""
    pos = 0
    for n in needles:
        i = out.find(n, pos)
        assert i >= 0, f"{n!r} missing (or out of order) in the timeline:\n{out}"
        pos = i + len(n)


def assert_coherent_timeline(out: str, kind: str = "lease") -> None:
    """The demo's timeline shows: client 1's grant, its cached write, client 2's CREATE,
    the break, client 2 still waiting, the write-back, the ack, client 2's CREATE
    completing and client 2 reading client 1's data, in that order."""
    grant, brk, ack_ = (("granted lease RWH", "LEASE_BREAK RWH -> R", "LEASE_BREAK_ACK")
                        if kind == "lease" else
                        ("granted oplock BATCH", "OPLOCK_BREAK -> ", "OPLOCK_BREAK_ACK"))
    assert_in_order(out, grant, "writes 67 bytes into its cache", "client 2 -> B      CREATE",
                    brk, "CREATE still pending", "WRITE 67 bytes",
                    ack_ + " -> STATUS_SUCCESS", "client 2 <- B      CREATE STATUS_SUCCESS",
                    "READ 67 bytes: 'version 2: written by client 1", "COHERENT")
    # B answered the CREATE with an interim STATUS_PENDING before client 1 wrote back.
    assert "STATUS_PENDING" in out, out
    assert out.index("STATUS_PENDING") < out.index("WRITE 67 bytes"), out
