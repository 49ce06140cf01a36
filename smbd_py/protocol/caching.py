"""Oplock glue between the SMB layer and the pure oplock/lease table (oplocks.table).

Owns the server's one LeaseTable: asks it for a grant on every CREATE (waiting, async,
while holders acknowledge breaks), tells it about closes, writes, renames, deletes and
acks, carries out the actions it returns (oplock and lease break notifications, resuming
waiting operations) and runs its break timeouts on the event loop clock (loop.call_at on
the table's next deadline; the table's clock is loop.time()).

Leases: protocol.leases translates the RqLs create contexts, lease break notifications
and lease acks; this module feeds them to the table.

Not wired yet (kept out on purpose, each has its hook here): kernel-lease backing
(CachingChanged / KernelBreakDone actions and `cap` are where oplocks.kernel.KernelLeases
plugs in).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import struct
from typing import Any

from ..oplocks.table import LeaseTable
from ..oplocks.types import (LEASE_RWH, OPLOCK_LEASE, OpenRequest, Resume,
                             SendLeaseBreak, SendOplockBreak)
from ..wire.status import NtStatus, SmbError
from . import leases

log = logging.getLogger("smbd_py.caching")

# MS-SMB2 2.2.23.1 / 2.2.24.1: StructureSize(24) OplockLevel Reserved Reserved2 FileId
OPLOCK_BREAK_BODY = struct.Struct("<HBBI16s")
_cache_ids = itertools.count(1)


class Caching:
    """Per-server oplock state: the table, which SMB open each table open is, and the
    opens waiting for breaks to be acknowledged."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.table = LeaseTable(break_timeout=ctx.config.break_timeout)
        self.opens: dict[int, Any] = {}                 # cache id -> protocol.objects.Open
        self.waiters: dict[int, asyncio.Future] = {}    # cache id -> woken on Resume
        # Directory leases: the ParentLeaseKey each open named, and the opens that
        # modified their file (their close changes the parent directory's listing).
        self.parent_keys: dict[int, bytes] = {}
        self.modified: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    # ---- actions ------------------------------------------------------------------------
    def run(self, actions) -> None:
        for a in actions:
            if isinstance(a, SendOplockBreak):
                self._send_oplock_break(a)
            elif isinstance(a, Resume):
                fut = self.waiters.pop(a.waiter_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif isinstance(a, SendLeaseBreak):
                log.debug("lease break %s: %#x -> %#x epoch %d ack %s", a.lease_key.hex(),
                          a.current_state, a.new_state, a.new_epoch, a.ack_required)
                leases.send_lease_break(a)
            # CachingChanged / KernelBreakDone: the kernel-lease adapter's hooks (not wired).
        self._arm_timer()

    def _send_oplock_break(self, a: SendOplockBreak) -> None:
        op = self.opens.get(a.open_id)
        if op is None or op.closed:
            return
        if not a.ack_required:
            op.oplock_level = a.oplock_level      # LEVEL_II -> NONE takes effect at once
        body = OPLOCK_BREAK_BODY.pack(24, a.oplock_level, 0, 0, op.file_id)
        log.debug("oplock break of %s to %#x (ack %s)", op.name, a.oplock_level, a.ack_required)
        op.conn.send_oplock_break(body)

    def _arm_timer(self) -> None:
        deadline = self.table.next_deadline()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.run(self.table.tick(self.now()))


def caching_of(ctx: Any) -> Caching:
    c = getattr(ctx, "_caching", None)
    if c is None:
        c = Caching(ctx)
        ctx._caching = c
    return c


def new_cache_id() -> int:
    return next(_cache_ids)


async def acquire(req, cache_id: int, file_key, c, access: int, is_dir: bool,
                  sharing_violation: bool, has_brlocks: bool, first_attempt: bool):
    """Ask the table for this CREATE's oplock. Returns the Grant (the open is then
    registered under cache_id), or None when the caller must look at the file again
    because holders were broken and have now answered (the request went async)."""
    cache = caching_of(req.conn.server)
    conn = req.conn
    lease = leases.parse_lease_context(c.contexts) if c.oplock == OPLOCK_LEASE else None
    res = cache.table.open(OpenRequest(
        open_id=cache_id, file_key=file_key, owner_id=conn, client_guid=conn.client_guid,
        dialect=conn.dialect, oplock_level=c.oplock, lease=lease, access_mask=access,
        create_disposition=c.disposition, is_directory=is_dir,
        sharing_violation=sharing_violation, has_brlocks=has_brlocks, cap=LEASE_RWH,
        first_attempt=first_attempt), cache.now())
    if res.status == NtStatus.PENDING:
        fut = asyncio.get_running_loop().create_future()
        cache.waiters[cache_id] = fut
        cache.run(res.actions)
        # MS-SMB2 3.3.4.2: a CREATE blocked on a break answers STATUS_PENDING at once.
        await req.go_async()
        try:
            await req.wait(fut)
        except BaseException:
            cache.waiters.pop(cache_id, None)
            cache.table.cancel_wait(cache_id)
            raise
        return None
    cache.run(res.actions)
    if res.status != NtStatus.SUCCESS:
        raise SmbError(res.status)
    if lease is not None and lease.parent_lease_key is not None:
        cache.parent_keys[cache_id] = lease.parent_lease_key
    return res.grant


def bind(ctx: Any, cache_id: int, op) -> None:
    """The table open cache_id is SMB open op from now on."""
    cache = caching_of(ctx)
    op.cache_id = cache_id
    cache.opens[cache_id] = op


def release(ctx: Any, cache_id: int) -> None:
    """Forget a table open: the CREATE failed after the grant, or the open closed."""
    cache = getattr(ctx, "_caching", None)
    if cache is None or not cache_id:
        return
    cache.opens.pop(cache_id, None)
    cache.waiters.pop(cache_id, None)
    cache.parent_keys.pop(cache_id, None)
    cache.modified.discard(cache_id)
    try:
        now = cache.now()
    except RuntimeError:              # no running loop (shutdown): nobody to notify
        cache.table.close(cache_id, 0.0)
        return
    cache.run(cache.table.close(cache_id, now))


def closed(ctx: Any, op) -> None:
    cid = getattr(op, "cache_id", 0)
    if cid:
        cache = caching_of(ctx)
        if cid in cache.modified and op.file is not None:
            # Closing a modified file updates its directory entry (write time, size):
            # the parent's directory leases break now (smb2.lease.v2_request).
            dir_changed(ctx, op.file.share, tuple(op.file.components), op.conn.client_guid,
                        parent_key=cache.parent_keys.get(cid))
        op.cache_id = 0
        release(ctx, cid)


def data_changed(ctx: Any, op, modifies: bool = True) -> None:
    """WRITE, set EOF/allocation, byte-range LOCK (modifies=False): level II and read
    lease holders lose their cache."""
    cache = getattr(ctx, "_caching", None)
    cid = getattr(op, "cache_id", 0)
    if cache is None or not cid:
        return
    if modifies:
        cache.modified.add(cid)
    cache.run(cache.table.write(cid, cache.now()))


async def handle_oplock_ack(req, op, level: int) -> bytes:
    """OPLOCK_BREAK acknowledgment (MS-SMB2 3.3.5.22.1)."""
    cache = getattr(req.conn.server, "_caching", None)
    cid = getattr(op, "cache_id", 0)
    if cache is None or not cid:
        raise SmbError(NtStatus.INVALID_OPLOCK_PROTOCOL)
    res = cache.table.ack_oplock(cid, level, cache.now(), owner_id=req.conn)
    if res.status == NtStatus.SUCCESS or res.status == NtStatus.INVALID_OPLOCK_PROTOCOL:
        op.oplock_level = res.level
    cache.run(res.actions)
    if res.status != NtStatus.SUCCESS:
        raise SmbError(res.status)
    return OPLOCK_BREAK_BODY.pack(24, res.level, 0, 0, op.file_id)


async def handle_lease_ack(req) -> bytes:
    """LEASE_BREAK acknowledgment (MS-SMB2 3.3.5.22.2): the lease is named by the
    connection's ClientGuid and the LeaseKey."""
    key, state = leases.parse_lease_ack(req.body)
    cache = caching_of(req.conn.server)
    res = cache.table.ack_lease(req.conn.client_guid, key, state, cache.now())
    cache.run(res.actions)
    if res.status != NtStatus.SUCCESS:
        raise SmbError(res.status)
    return leases.lease_ack_response(key, res.level)


async def break_handles(req, op, kind: str = "rename") -> None:
    """Rename, delete-on-close or delete disposition of op's file: every other lease on
    the file gives up handle caching first (MS-FSA 2.1.4.12; smbtorture smb2.lease
    v2_rename, rename_wait, unlink). When a holder must ack, the request goes async
    and waits (cancellable) for the ack, the holder's close or the break timeout."""
    cache = getattr(req.conn.server, "_caching", None)
    cid = getattr(op, "cache_id", 0)
    if cache is None or not cid:
        return
    waiter = new_cache_id()
    step = cache.table.rename if kind == "rename" else cache.table.set_delete_on_close
    for _ in range(16):
        res = step(waiter, cid, cache.now())
        log.debug("%s of %s: handle-caching breaks %s", kind, op.name,
                  "pending, waiting" if res.must_wait else "done")
        if not res.must_wait:
            cache.run(res.actions)
            return
        fut = asyncio.get_running_loop().create_future()
        cache.waiters[waiter] = fut
        cache.run(res.actions)
        await req.go_async()
        try:
            await req.wait(fut)
        except BaseException:
            cache.waiters.pop(waiter, None)
            cache.table.cancel_wait(waiter)
            raise
    # Holders kept answering with new breaks pending: proceed as after a timeout.
    log.warning("handle-caching break for %s did not settle", op.name)


def dir_changed(ctx: Any, share: Any, child: tuple, client_guid: bytes | None = None,
                contexts: dict | None = None, parent_key: bytes | None = None) -> None:
    """An entry named `child` (share components) was created, deleted or renamed: the
    leases on its parent directory break (MS-SMB2 3.3.4.7; directory leases), except
    the one the client named as ParentLeaseKey in its v2 lease context. Never waits:
    the operation has happened already."""
    cache = getattr(ctx, "_caching", None)
    if cache is None or not child:
        return
    if contexts:
        try:
            lease = leases.parse_lease_context(contexts)
        except SmbError:
            lease = None
        if lease is not None:
            parent_key = lease.parent_lease_key
    parent = tuple(child[:-1])
    for fs in list(ctx.files.values()):
        if fs.is_dir and fs.share is share and tuple(fs.components) == parent:
            cache.run(cache.table.dir_changed(fs.key, client_guid, parent_key, cache.now()))
