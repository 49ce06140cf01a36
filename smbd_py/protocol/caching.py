"""Oplock glue between the SMB layer and the pure oplock/lease table (oplocks.table).

Owns the server's one LeaseTable: asks it for a grant on every CREATE (waiting, async,
while holders acknowledge breaks), tells it about closes, writes, renames, deletes and
acks, carries out the actions it returns (oplock and lease break notifications, resuming
waiting operations) and runs its break timeouts on the event loop clock (loop.call_at on
the table's next deadline; the table's clock is loop.time()).

Leases: protocol.leases translates the RqLs create contexts, lease break notifications
and lease acks; this module feeds them to the table.

Kernel backing (oplocks.backing owns the design; read its docstring): on shares with
kernel leases on, every regular file's SMB opens share the server's one open file
description per access mode (``open_backed`` hands out dups), every grant is capped to
what the kernel can back (``cap`` at the table, ``back`` after the open strips W the
kernel refused), the table's CachingChanged / KernelBreakDone actions make the backing
take, downgrade or release the kernel lease and the inotify watch (``run``), and kernel
breaks and foreign writes come back as table.kernel_break (``_kernel_break``).
Opens that meet another process's lease go async and retry (``open_backed``) on every
share, backed or not.
"""
from __future__ import annotations

import asyncio
import dataclasses
import errno
import itertools
import logging
import os
import struct
import time
from typing import Any

from ..oplocks.ack_poll import AckPoll
from ..oplocks.backing import KernelBacking, null_backing
from ..oplocks.table import GRANT_NONE, LeaseTable
from ..oplocks.types import (LEASE_NONE, LEASE_RWH, LEASE_W, OPLOCK_BATCH, OPLOCK_EXCLUSIVE,
                             OPLOCK_LEASE, CachingChanged, KernelBreakDone, OpenRequest,
                             Resume, SendLeaseBreak, SendOplockBreak)
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
        # The kernel backing (oplocks.backing), set up by ServerContext.start_kernel_leases;
        # where it never ran, nothing is backed and grants stay SMB-level.
        kernel = getattr(ctx, "kernel", None)
        self.backing: KernelBacking = (kernel.backing(self._kernel_break) if kernel is not None
                                       else null_backing(self._kernel_break))
        self.fd_keys: dict[int, Any] = {}   # cache id -> inode whose description it shares
        self.ack_poll = AckPoll(self.table.kernel_breaking,
                                window=ctx.config.break_ack_poll_us / 1e6)

    _loop: asyncio.AbstractEventLoop | None = None

    def now(self) -> float:
        # The server's loop, kept: asyncio.get_running_loop() makes a getpid(2) call
        # each time on Python 3.11, and this runs on every CREATE and CLOSE. A stopped
        # loop (tests run one per test; shutdown) is asked again, and raises as before.
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        return loop.time()

    # ---- actions ------------------------------------------------------------------------
    def run(self, actions) -> None:
        if not actions:
            # An open or close that changed nothing (the common case): no bookkeeping,
            # and the timer only when a break is pending (see below).
            if self._timer is not None:
                self._arm_timer()
            return
        changed: dict = {}
        doomed: list = []      # disconnected durable opens a break cannot reach
        for a in actions:
            if isinstance(a, (CachingChanged, KernelBreakDone)):
                changed[a.file_key] = None
                continue
            if isinstance(a, SendOplockBreak):
                self._send_oplock_break(a, doomed)
            elif isinstance(a, Resume):
                fut = self.waiters.pop(a.waiter_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif isinstance(a, SendLeaseBreak):
                log.debug("lease break %s: %#x -> %#x epoch %d ack %s", a.lease_key.hex(),
                          a.current_state, a.new_state, a.new_epoch, a.ack_required)
                ops = self._lease_opens(a)
                if ops and all(op.disconnected for op in ops):
                    # Only disconnected durable opens hold it (protocol.durable).
                    if a.ack_required:
                        doomed += ops
                else:
                    leases.send_lease_break(a)
        for key in changed:
            # Take, downgrade or release the kernel lease (and the watch) to match what
            # SMB holders cache now; after KernelBreakDone this lets the local open go on.
            self.backing.sync(key, self.table.caching_of(key))
        if actions or self._timer is not None:
            # A break deadline only ever starts with a break notification (an action),
            # and next_deadline walks every lease and open: an open or close that
            # changed nothing while no break is pending (the common case) skips it.
            self._arm_timer()
        if doomed:
            # Nobody can acknowledge these breaks: the opens close now, which resumes
            # the waiting operation and releases the kernel lease (protocol.durable).
            from . import durable
            durable.break_disconnected(self.ctx, doomed)

    def _lease_opens(self, a: SendLeaseBreak) -> list:
        lease = self.table.lease(a.client_guid, a.lease_key)
        if lease is None:
            return []
        return [op for op in map(self.opens.get, lease.opens) if op is not None]

    def _kernel_break(self, file_key, target: int) -> None:
        """A kernel lease break (a local open, another server) or a foreign write: every
        SMB holder of file_key comes down to target (LEASE_R or NONE)."""
        self.run(self.table.kernel_break(file_key, target, self.now()))
        if self.table.kernel_breaking(file_key):
            # Holders were told to ack: the loop polls for the ack instead of sleeping
            # (oplocks.ack_poll says why and what it costs).
            self.ack_poll.start(self._loop, file_key)

    def cap_for(self, share: Any, is_dir: bool) -> int:
        """The most caching a grant on this share's file may carry (OpenRequest.cap)."""
        if is_dir or not self.backed(share):
            return LEASE_RWH
        return self.backing.cap

    def backed(self, share: Any) -> bool:
        return bool(getattr(share, "kernel_leases", False)) and self.backing.leases.running

    def _send_oplock_break(self, a: SendOplockBreak, doomed: list) -> None:
        op = self.opens.get(a.open_id)
        if op is None or op.closed:
            return
        if not a.ack_required:
            op.oplock_level = a.oplock_level      # LEVEL_II -> NONE takes effect at once
        if op.disconnected:
            if a.ack_required:
                doomed.append(op)                 # a disconnected durable open
            return
        op.conn.send_oplock_break(OPLOCK_BREAK_BODY.pack(24, a.oplock_level, 0, 0, op.file_id))
        if log.isEnabledFor(logging.DEBUG):   # after the send: a local open may be waiting
            log.debug("oplock break of %s to %#x (ack %s)", op.name, a.oplock_level,
                      a.ack_required)

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


def break_file(ctx: Any, file_key, target: int) -> list:
    """Break every SMB holder of file_key down to `target` (lease bits): each lease to
    its state & target (RWH -> R, RH, NONE, ...), each oplock caching more than target
    to LEVEL_II when target keeps R, else NONE. This is a kernel break's path
    (table.kernel_break) to any state and without capping later grants: the way to
    break a file on demand (smbd_py.testing). Acks, break timeouts and waiting opens
    then take their usual course. Returns the table actions it ran (the
    SendLeaseBreak/SendOplockBreak among them name who was broken)."""
    from ..oplocks.types import oplock_to_lease, valid_lease_state
    cache = caching_of(ctx)
    table = cache.table
    now = cache.now()
    actions: list = []
    # LeaseTable has no public "break to X" (kernel_break keeps H and stops at R):
    # its own break steps are used, exactly as kernel_break uses them.
    fs = table._files.get(file_key)
    if fs is not None:
        for lid in list(fs.leases):
            lease = table._leases[lid]
            if lease.state & ~target:
                table._break_lease(lease, valid_lease_state(lease.state & target), now, actions)
        for e in list(fs.opens.values()):
            if e.lease_id is None and oplock_to_lease(e.oplock) & ~target:
                table._break_oplock(e, target, now, actions)
        table._post_change(file_key, actions)
    cache.run(actions)
    return actions


def new_cache_id() -> int:
    return next(_cache_ids)


async def acquire(req, cache_id: int, file_key, c, access: int, is_dir: bool,
                  sharing_violation: bool, has_brlocks: bool, first_attempt: bool):
    """Ask the table for this CREATE's oplock. Returns the Grant (the open is then
    registered under cache_id), or None when the caller must look at the file again
    because holders were broken and have now answered (the request went async)."""
    cache = caching_of(req.conn.server)
    conn = req.conn
    if (not c.oplock and not sharing_violation
            and cache.table.open_plain(cache_id, file_key, conn, conn.client_guid, access)):
        return GRANT_NONE       # nothing asked, nobody caches the file: only recorded
    lease = leases.parse_lease_context(c.contexts) if c.oplock == OPLOCK_LEASE else None
    res = cache.table.open(OpenRequest(
        open_id=cache_id, file_key=file_key, owner_id=conn, client_guid=conn.client_guid,
        dialect=conn.dialect, oplock_level=c.oplock, lease=lease, access_mask=access,
        create_disposition=c.disposition, is_directory=is_dir,
        sharing_violation=sharing_violation, has_brlocks=has_brlocks,
        # The cap only limits a grant: a CREATE asking for none skips working it out.
        cap=cache.cap_for(req.tree.share, is_dir) if c.oplock else LEASE_NONE,
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


def breaking(ctx: Any, op) -> bool:
    """A break of op's oplock or lease waits for an acknowledgment."""
    cache = getattr(ctx, "_caching", None)
    e = cache.table.get_open(op.cache_id) if cache is not None and op.cache_id else None
    if e is None:
        return False
    if e.lease_id is not None:
        lease = cache.table.lease(*e.lease_id)
        return lease is not None and lease.breaking
    return e.breaking_to is not None


def reattach(ctx: Any, op, conn) -> None:
    """A durable open reconnected on conn: breaks go there from now on."""
    cache = getattr(ctx, "_caching", None)
    if cache is not None and op.cache_id:
        cache.table.reattach(op.cache_id, conn, conn.client_guid)


def current_grant(ctx: Any, op):
    """What op holds now, as a Grant for a CREATE response (a durable reconnect)."""
    from ..oplocks.types import (LEASE_FLAG_BREAK_IN_PROGRESS,
                                 LEASE_FLAG_PARENT_LEASE_KEY_SET, Grant)
    cache = getattr(ctx, "_caching", None)
    e = cache.table.get_open(op.cache_id) if cache is not None and op.cache_id else None
    if e is None:
        return None
    if e.lease_id is None:
        return Grant(e.oplock)
    lease = cache.table.lease(*e.lease_id)
    flags = LEASE_FLAG_BREAK_IN_PROGRESS if lease.breaking else 0
    if lease.version >= 2 and lease.parent_lease_key is not None:
        flags |= LEASE_FLAG_PARENT_LEASE_KEY_SET
    return Grant(OPLOCK_LEASE, lease.lease_key, lease.state, flags, lease.version,
                 lease.epoch if lease.version >= 2 else 0, lease.parent_lease_key)


def bind(ctx: Any, cache_id: int, op) -> None:
    """The table open cache_id is SMB open op from now on."""
    cache = caching_of(ctx)
    op.cache_id = cache_id
    cache.opens[cache_id] = op


def back(ctx: Any, op, grant):
    """After the open has its fd: make the kernel back the grant, or grant less (the
    response has not gone out yet). Returns the grant to answer with."""
    cache = caching_of(ctx)
    cid = op.cache_id
    key = cache.fd_keys.get(cid)
    if key is None or grant is None:
        return grant                    # directory, O_PATH open or unbacked share
    if cache.backing.sync(key, cache.table.caching_of(key)):
        return grant
    log.debug("kernel cannot back write caching on %s: granting less", op.name)
    cache.run(cache.table.limit_open(cid, ~LEASE_W & LEASE_RWH, cache.now()))
    now = cache.table.grant_of(cid)
    if now is None:
        return grant
    level, state = now
    if grant.oplock_level == OPLOCK_LEASE:
        return dataclasses.replace(grant, lease_state=state)
    return dataclasses.replace(grant, oplock_level=level)


def grants_write(grant) -> bool:
    if grant is None:
        return False
    if grant.oplock_level == OPLOCK_LEASE:
        return bool(grant.lease_state & LEASE_W)
    return grant.oplock_level in (OPLOCK_EXCLUSIVE, OPLOCK_BATCH)


_EAGAIN_TEXT = os.strerror(errno.EAGAIN)


def _leased(e: BaseException) -> bool:
    """fs.paths maps EWOULDBLOCK (an O_NONBLOCK open meeting a lease) to
    SHARING_VIOLATION with the errno's text as the message."""
    return isinstance(e, SmbError) and e.status == NtStatus.SHARING_VIOLATION and \
        str(e).startswith(_EAGAIN_TEXT)


def _dup_finish(fd: int, truncate: bool):
    """The rest of an open that got a dup of the inode's description. I/O pool."""
    from .info import read_stored_attributes
    if truncate:
        os.ftruncate(fd, 0)
    from ..fs.paths import fstat_btime     # the CREATE response's CreationTime
    return fd, fstat_btime(fd), read_stored_attributes(fd)


def _lease_break_time() -> float:
    try:
        with open("/proc/sys/fs/lease-break-time") as f:
            return float(f.read().strip())
    except (OSError, ValueError):
        return 45.0


async def open_backed(req, cache_id: int, key, share, is_dir: bool, flags: int,
                      truncate: bool, opener, fast=None):
    """Open the existing file `key` for a CREATE: `opener(flags, truncate)` runs in the
    I/O pool and returns (fd, stat, stored attributes).

    On a backed share a regular file's SMB opens share the server's description of the
    inode (oplocks.backing: dup instead of a second open, which would break our own
    lease). Everywhere: an open that meets another process's kernel lease (EWOULDBLOCK,
    the break has started) answers STATUS_PENDING and retries with backoff - the loop
    keeps serving, a CANCEL ends the wait - until the holder gives the lease up or the
    kernel forces it after lease-break-time.

    `fast(flags, truncate)`, if given, is tried first on the event loop for opens
    outside the shared descriptions (it must never block: create.py's inline open);
    None from it means: use `opener` in the pool."""
    ctx = req.conn.server
    cache = caching_of(ctx)
    b = cache.backing
    shared = not is_dir and not flags & os.O_PATH and cache.backed(share)
    write = (flags & os.O_ACCMODE) != os.O_RDONLY
    deadline = None
    delay = 0.001
    for _ in range(100_000):                      # bounded in time by `deadline` too
        if shared:
            try:
                async with b.lock(key):
                    fd = b.dup(key, cache_id, write)
                    if fd >= 0:
                        cache.fd_keys[cache_id] = key
                        if truncate:
                            b.own_write(key)
                        try:
                            return await ctx.run_io(_dup_finish, fd, truncate)
                        except BaseException:
                            os.close(fd)
                            release_fd(ctx, cache_id)
                            raise
                    b.before_open(key, write)
                    if truncate:
                        b.own_write(key)
                    try:
                        fd, st, stored = await ctx.run_io(opener, flags, truncate)
                    except SmbError as e:
                        if not _leased(e):
                            raise
                    else:
                        if (st.st_dev, st.st_ino) == key:
                            b.adopt(key, cache_id, fd, write)
                            cache.fd_keys[cache_id] = key
                        return fd, st, stored
            finally:
                b.gc(key)
        else:
            if fast is not None:
                got = fast(flags, truncate)
                if got is not None:
                    return got
            try:
                return await ctx.run_io(opener, flags, truncate)
            except SmbError as e:
                if not _leased(e):
                    raise
        # Another holder's kernel lease is breaking (the kernel started the break when
        # our O_NONBLOCK open failed): wait without blocking the loop, then retry.
        if deadline is None:
            deadline = time.monotonic() + _lease_break_time() + 5.0
            log.debug("open of %s meets a kernel lease: pending", key)
            await req.go_async()
        if time.monotonic() > deadline:
            raise SmbError(NtStatus.SHARING_VIOLATION, "a kernel lease was not given up")
        await req.wait(asyncio.sleep(delay))
        delay = min(delay * 2, 0.05)
    raise SmbError(NtStatus.SHARING_VIOLATION, "a kernel lease was not given up")


def adopt_new(ctx: Any, cache_id: int, key, share, fd: int, flags: int) -> None:
    """A CREATE made a new regular file: its fd is the inode's first description."""
    cache = caching_of(ctx)
    if flags & os.O_PATH or not cache.backed(share):
        return
    cache.backing.adopt(key, cache_id, fd, (flags & os.O_ACCMODE) != os.O_RDONLY)
    cache.fd_keys[cache_id] = key


def release_fd(ctx: Any, cache_id: int) -> None:
    """The open (or failed CREATE) cache_id no longer uses its inode's description."""
    cache = getattr(ctx, "_caching", None)
    if cache is None:
        return
    key = cache.fd_keys.pop(cache_id, None)
    if key is not None:
        cache.backing.detach(key, cache_id)


def release(ctx: Any, cache_id: int) -> None:
    """Forget a table open: the CREATE failed after the grant, or the open closed."""
    cache = getattr(ctx, "_caching", None)
    if cache is None or not cache_id:
        return
    release_fd(ctx, cache_id)
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
        key = cache.fd_keys.get(cid)
        if key is not None:
            cache.backing.own_write(key)      # the IN_MODIFY that follows is our own
    cache.run(cache.table.write(cid, cache.now()))


# Acks run while a local open(2) may wait for the kernel lease they release: the
# statuses they test are plain module constants (an enum class attribute is a lookup).
_SUCCESS = NtStatus.SUCCESS
_INVALID_OPLOCK_PROTOCOL = NtStatus.INVALID_OPLOCK_PROTOCOL


def handle_oplock_ack(req, op, level: int) -> bytes:
    """OPLOCK_BREAK acknowledgment (MS-SMB2 3.3.5.22.1). Never waits: a plain function,
    the kernel lease (if the break was the kernel's) is released before it returns."""
    conn = req.conn
    cache = getattr(conn.server, "_caching", None)
    cid = getattr(op, "cache_id", 0)
    if cache is None or not cid:
        raise SmbError(_INVALID_OPLOCK_PROTOCOL)
    res = cache.table.ack_oplock(cid, level, cache.now(), conn)
    status = res.status
    if status == _SUCCESS or status == _INVALID_OPLOCK_PROTOCOL:
        op.oplock_level = res.level
    cache.run(res.actions)
    if status != _SUCCESS:
        raise SmbError(status)
    return OPLOCK_BREAK_BODY.pack(24, res.level, 0, 0, op.file_id)


def handle_lease_ack(req) -> bytes:
    """LEASE_BREAK acknowledgment (MS-SMB2 3.3.5.22.2): the lease is named by the
    connection's ClientGuid and the LeaseKey. Never waits, as handle_oplock_ack."""
    key, state = leases.parse_lease_ack(req.body)
    cache = caching_of(req.conn.server)
    res = cache.table.ack_lease(req.conn.client_guid, key, state, cache.now())
    cache.run(res.actions)
    if res.status != _SUCCESS:
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
