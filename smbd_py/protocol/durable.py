"""Durable handles: SMB 2.1 durable v1 (DHnQ/DHnC) and SMB 3 durable v2 (DH2Q/DH2C),
backed by the kernel lease (MS-SMB2 2.2.13.2.3-2.2.13.2.12, 2.2.14.2.3/.4/.12,
3.3.5.9.6/.7/.10/.12, 3.3.5.6, 3.3.7.1).

Owns: the durable create contexts (layouts and their combination rules), the grant rule,
the disconnected-open registry with its scavenger timers, the reconnect of a
disconnected open on a new connection/session, CreateGuid replay detection, and the
rule for breaks that reach a disconnected open.

Grant. An open is made durable when the client asked (DHnQ, or DH2Q on 3.x) and the open
got a batch oplock or a lease with handle caching; never a directory. v1 opens are kept
16 minutes after a disconnect (Samba's choice), v2 opens for their Timeout (0: 60 s,
as Windows Server 2012), capped at 300 s. Persistent handles are never granted (no CA
shares).

Disconnect. When the connection drops, or the session goes (LOGOFF, a session
reconnect naming it as PreviousSessionId: MS-SMB2 3.3.5.6 and smbtorture
smb2.durable-open.reopen1a/reopen4), a durable open is not closed: it keeps its fd,
its share-mode entry, its byte-range locks, its oplock or lease in the oplock table and
therefore the kernel lease that backs it (oplocks.backing keys the lease on the file's
description, which stays open). A scavenger timer on the event loop closes it when its
timeout passes. TREE_DISCONNECT and CLOSE still close it (reopen3).

Breaks of a disconnected open (MS-SMB2 3.3.4.6/3.3.4.7, MS-FSA 2.1.5.17: nobody can
acknowledge them). When anything would break the oplock or lease of a disconnected
durable open with a break that needs an acknowledgment - another client's CREATE, a
sharing violation that would break handle caching, a rename or delete - the open is
closed at once instead (protocol.caching calls ``break_disconnected``): what the
client cached and did not write back before the disconnect is lost to it, which is
the spec's rule (Windows does the same: smbtorture smb2.durable-open.oplock, lease,
open2-oplock, open2-lease, delete_on_close1). The waiting operation then proceeds
without waiting for a break timeout. A kernel lease break - a local program, NFS or
another server opening the file - takes the same path (table.kernel_break ->
SendLeaseBreak/SendOplockBreak -> nobody to send it to -> close), so the kernel lease
is released right away and the local open(2) returns in milliseconds instead of
waiting for /proc/sys/fs/lease-break-time. A later reconnect then finds nothing:
OBJECT_NAME_NOT_FOUND. An open whose break is already in flight when its connection
drops is closed, not kept, for the same reason.

Reconnect (DHnC: file id; DH2C: file id + CreateGuid): the open must be durable and
disconnected, on the same share; a leased open needs the same ClientGuid, a lease
context with the same key and the same file name (else OBJECT_NAME_NOT_FOUND, or
INVALID_PARAMETER for a wrong name); another user gets ACCESS_DENIED. The open is
re-attached to the new connection, session and tree with its original file id and
answers with its current oplock level or lease state.
"""
from __future__ import annotations

import asyncio
import logging
import os
import struct
from typing import Any

from ..wire.status import NtStatus, SmbError

log = logging.getLogger("smbd_py.durable")

DHNQ = b"DHnQ"
DHNC = b"DHnC"
DH2Q = b"DH2Q"
DH2C = b"DH2C"
APP_INSTANCE_ID = bytes.fromhex("45BCA66AEFA7F74A9008FA462E144D74")

DH2Q_REQ = struct.Struct("<IIQ16s")         # Timeout, Flags, Reserved, CreateGuid: 32
DH2C_REQ = struct.Struct("<16s16sI")        # FileId, CreateGuid, Flags: 36
DH2Q_RESP = struct.Struct("<II")            # Timeout, Flags
APP_INSTANCE_REQ = struct.Struct("<HH16s")  # StructureSize (20), Reserved, AppInstanceId
SMB2_DHANDLE_FLAG_PERSISTENT = 0x00000002

V1_TIMEOUT_S = 16 * 60.0          # Samba: durable v1 opens live 16 minutes
V2_DEFAULT_TIMEOUT_MS = 60_000    # DH2Q Timeout 0 (Windows Server 2012)
V2_MAX_TIMEOUT_MS = 300_000       # cap (Samba and Windows: 5 minutes)
_ZERO_GUID = b"\0" * 16

_DIALECT_300 = 0x0300
_REPLAY_OPERATION = 0x20000000


class DurableAsk:
    """What a CREATE's contexts ask for: a new durable open (kind "v1"/"v2") or a
    reconnect ("reconnect_v1"/"reconnect_v2")."""

    __slots__ = ("kind", "timeout_ms", "create_guid", "file_id", "persistent")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.timeout_ms = 0
        self.create_guid = _ZERO_GUID
        self.file_id = b""
        self.persistent = False

    @property
    def reconnect(self) -> bool:
        return self.kind.startswith("reconnect")


def is_reconnect(contexts: dict[bytes, bytes]) -> bool:
    """A DHnC or DH2C context is present: the CREATE's other fields are ignored (the
    request's name, access, disposition... are not validated: smb2.durable-open.reopen2)."""
    return DHNC in contexts or DH2C in contexts


def parse(contexts: dict[bytes, bytes], dialect: int) -> DurableAsk | None:
    """The durable request of a CREATE, after checking the combinations MS-SMB2 3.3.5.9.6,
    .7, .10 and .12 refuse (smbtorture smb2.durable-v2-open.create-blob). v2 contexts
    are ignored below 3.0."""
    v2 = dialect >= _DIALECT_300
    dhnq, dhnc = contexts.get(DHNQ), contexts.get(DHNC)
    dh2q = contexts.get(DH2Q) if v2 else None
    dh2c = contexts.get(DH2C) if v2 else None
    if dh2c is not None:
        if dhnq is not None or dhnc is not None or dh2q is not None:
            raise SmbError(NtStatus.INVALID_PARAMETER, "DH2C with another durable context")
        if len(dh2c) != DH2C_REQ.size:
            raise SmbError(NtStatus.INVALID_PARAMETER)
        ask = DurableAsk("reconnect_v2")
        ask.file_id, ask.create_guid, flags = DH2C_REQ.unpack(dh2c)
        ask.persistent = bool(flags & SMB2_DHANDLE_FLAG_PERSISTENT)
        return ask
    if dhnc is not None:
        if dh2q is not None:
            raise SmbError(NtStatus.INVALID_PARAMETER, "DHnC with DH2Q")
        if len(dhnc) != 16:
            raise SmbError(NtStatus.INVALID_PARAMETER)
        ask = DurableAsk("reconnect_v1")        # a DHnQ beside it is ignored (3.3.5.9.7)
        ask.file_id = dhnc
        return ask
    if dh2q is not None:
        if dhnq is not None:
            raise SmbError(NtStatus.INVALID_PARAMETER, "DH2Q with DHnQ")
        if len(dh2q) != DH2Q_REQ.size:
            raise SmbError(NtStatus.INVALID_PARAMETER)
        timeout, flags, _r, guid = DH2Q_REQ.unpack(dh2q)
        ask = DurableAsk("v2")
        ask.timeout_ms = min(timeout, V2_MAX_TIMEOUT_MS) if timeout else V2_DEFAULT_TIMEOUT_MS
        ask.create_guid = guid
        ask.persistent = bool(flags & SMB2_DHANDLE_FLAG_PERSISTENT)
        return ask
    if dhnq is not None:
        if len(dhnq) != 16:
            raise SmbError(NtStatus.INVALID_PARAMETER)
        return DurableAsk("v1")
    return None


def _grants_handle_caching(grant) -> bool:
    from ..oplocks.types import LEASE_H, OPLOCK_BATCH, OPLOCK_LEASE
    if grant is None:
        return False
    if grant.oplock_level == OPLOCK_LEASE:
        return bool(grant.lease_version and grant.lease_state & LEASE_H)
    return grant.oplock_level == OPLOCK_BATCH


def granted(req, c, op, grant) -> list[tuple[bytes, bytes]]:
    """After a successful new open: make it durable when asked and allowed (batch oplock
    or a lease with H, not a directory, not a pipe); returns the response context."""
    op.app_instance_id = c.app_instance_id
    ask = c.durable
    if ask is None or ask.reconnect:
        return []
    if ask.kind == "v2" and ask.create_guid != _ZERO_GUID:
        # Replay detection needs it even when the open is not made durable.
        op.create_guid = ask.create_guid
        registry(req.conn.server).by_guid[(req.conn.client_guid, ask.create_guid)] = op
    if op.is_dir or op.pipe is not None or not _grants_handle_caching(grant):
        return []
    op.durable = True
    if ask.kind == "v1":
        op.durable_timeout = V1_TIMEOUT_S
        return [(DHNQ, b"\0" * 8)]
    op.durable_timeout = ask.timeout_ms / 1000.0
    return [(DH2Q, DH2Q_RESP.pack(ask.timeout_ms, 0))]


# ---- disconnect --------------------------------------------------------------------------

class Registry:
    """The disconnected durable opens of one server (by persistent id) and their
    scavenger timers (MS-SMB2 3.3.7.1: one per open, on the loop's clock)."""

    def __init__(self) -> None:
        self.disconnected: dict[int, Any] = {}
        self.timers: dict[int, asyncio.TimerHandle] = {}
        # (ClientGuid, CreateGuid) -> the open a DH2Q created (MS-SMB2 3.3.5.9.10 replay).
        self.by_guid: dict[tuple[bytes, bytes], Any] = {}


def registry(ctx) -> Registry:
    reg = getattr(ctx, "_durable", None)
    if reg is None:
        reg = ctx._durable = Registry()
    return reg


def keep(ctx, op) -> bool:
    """The open's session or connection is going away: keep a durable open disconnected
    instead of closing it (True), or let the caller close it (False)."""
    from . import caching
    if not op.durable or op.closed or op.fd < 0 or getattr(op, "disconnected", False):
        return False
    if op.delete_on_close and op.file is not None and op.file.delete_pending:
        return False
    if caching.breaking(ctx, op):
        # A break already sent to the gone connection can never be acknowledged.
        log.debug("durable open %s has a break in flight: closing it", op.name)
        return False
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False                     # shutdown: nothing will ever reconnect
    reg = registry(ctx)
    op.disconnected = True
    op.session.opens.pop(op.volatile_id, None)
    if op.notify is not None:
        op.notify.cancel(NtStatus.NOTIFY_CLEANUP)
        op.notify = None
    reg.disconnected[op.persistent_id] = op
    timeout = max(0.0, float(op.durable_timeout))
    reg.timers[op.persistent_id] = loop.call_later(timeout, _scavenge, ctx, op)
    log.info("durable open %s (id %#x) disconnected; kept %.1f s", op.name,
             op.persistent_id, timeout)
    return True


def _scavenge(ctx, op) -> None:
    registry(ctx).timers.pop(op.persistent_id, None)
    if getattr(op, "disconnected", False) and not op.closed:
        log.info("durable open %s (id %#x) timed out: closing it", op.name, op.persistent_id)
        close_disconnected(ctx, op)


def _forget(ctx, op) -> None:
    reg = registry(ctx)
    reg.disconnected.pop(op.persistent_id, None)
    t = reg.timers.pop(op.persistent_id, None)
    if t is not None:
        t.cancel()
    op.disconnected = False


def close_disconnected(ctx, op) -> None:
    """Close a disconnected durable open now (scavenger, break, shutdown)."""
    from . import caching
    from .create import _detach, _finish_close, close_open_now
    _forget(ctx, op)
    op.durable = False
    if not op.delete_on_close or op.closed:
        close_open_now(ctx, op)
        return
    # Delete on close: the file goes before the operation this close resumes runs
    # again (it must find the name free: smb2.durable-open.delete_on_close1), so the
    # close and unlink run here, once, instead of in the I/O pool.
    delete, fs = _detach(ctx, op)
    fd, op.fd = op.fd, -1
    comps = fs.components if fs is not None else op.components
    _finish_close(op.tree.share.root, fd, delete, comps, op.is_dir)
    if delete:
        caching.dir_changed(ctx, op.tree.share, comps, getattr(op.conn, "client_guid", None))


def break_disconnected(ctx, ops) -> None:
    """protocol.caching: these disconnected opens were asked to give up caching with a
    break that needs an acknowledgment nobody can send: close them (module docstring)."""
    for op in ops:
        if getattr(op, "disconnected", False) and not op.closed:
            log.info("break of disconnected durable open %s (id %#x): closing it", op.name,
                     op.persistent_id)
            close_disconnected(ctx, op)


def close_all(ctx) -> None:
    """Server shutdown: every disconnected open goes."""
    reg = getattr(ctx, "_durable", None)
    if reg is None:
        return
    for op in list(reg.disconnected.values()):
        close_disconnected(ctx, op)


# ---- reconnect ---------------------------------------------------------------------------

def _same_name(asked: str, op) -> bool:
    want = asked.replace("/", "\\").strip("\\").casefold()
    names = {op.name.casefold()}
    if op.file is not None:
        names.add("\\".join(op.file.components).casefold())
    if getattr(op, "request_name", ""):
        names.add(op.request_name.strip("\\").casefold())
    return want in names


def _find(req, c, ask: DurableAsk):
    """MS-SMB2 3.3.5.9.7 / 3.3.5.9.12: the disconnected durable open this reconnect names,
    or the error to fail with."""
    from .leases import parse_lease_context
    ctx = req.conn.server
    pid = int.from_bytes(ask.file_id[:8], "little")
    op = registry(ctx).disconnected.get(pid)
    if op is None or op.closed or not op.durable:
        # Unknown, closed, or still connected (smb2.durable-open.reopen1).
        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "no disconnected durable open")
    if ask.kind == "reconnect_v2" and (op.create_guid or _ZERO_GUID) != ask.create_guid:
        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "CreateGuid differs")
    if op.tree.share is not req.tree.share:
        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "another share")
    lease = None
    from ..oplocks.types import OPLOCK_LEASE
    leased = op.oplock_level == OPLOCK_LEASE
    try:
        lease = parse_lease_context(c.contexts) if req.conn.dialect >= 0x0210 else None
    except SmbError:
        lease = None
    if leased:
        cache = getattr(ctx, "_caching", None)
        t_open = cache.table.get_open(op.cache_id) if cache is not None else None
        lid = t_open.lease_id if t_open is not None else None
        if lid is None or lid[0] != req.conn.client_guid:
            raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "another ClientGuid")
        if lease is None or lease.lease_key != lid[1]:
            raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "lease key missing or differs")
        if not _same_name(c.name, op):
            raise SmbError(NtStatus.INVALID_PARAMETER, "file name differs")
    elif lease is not None:
        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "lease context for an oplock open")
    old = op.session
    sess = req.session
    if (old.user.casefold(), old.domain.casefold(), old.guest, old.anonymous) != \
            (sess.user.casefold(), sess.domain.casefold(), sess.guest, sess.anonymous):
        raise SmbError(NtStatus.ACCESS_DENIED, "another user's durable open")
    return op


def attach(ctx, op, req) -> None:
    """Re-attach a disconnected open (or a replayed one) to req's connection, session
    and tree."""
    from . import caching
    _forget(ctx, op)
    if op.create_guid:
        forget_guid(ctx, op)
        registry(ctx).by_guid[(req.conn.client_guid, op.create_guid)] = op
    op.session.opens.pop(op.volatile_id, None)
    op.session = req.session
    op.tree = req.tree
    op.conn = req.conn
    req.session.opens[op.volatile_id] = op
    ctx.opens[op.volatile_id] = op
    caching.reattach(ctx, op, req.conn)


async def reconnect(req, c, ask: DurableAsk) -> bytes:
    """CREATE with DHnC / DH2C: answer with the original open."""
    ctx = req.conn.server
    op = _find(req, c, ask)
    attach(ctx, op, req)
    log.info("durable open %s (id %#x) reconnected", op.name, op.persistent_id)
    return await _existing_response(req, op)


def find_replay(req, ask: DurableAsk | None):
    """MS-SMB2 3.3.5.9.10: a DH2Q whose CreateGuid names an open of this client that
    exists already: a replayed CREATE (SMB2_FLAGS_REPLAY_OPERATION) gets that open back;
    without the flag the CreateGuid is a duplicate. None: a new open."""
    if ask is None or ask.kind != "v2" or ask.create_guid == _ZERO_GUID:
        return None
    reg = getattr(req.conn.server, "_durable", None)
    op = reg.by_guid.get((req.conn.client_guid, ask.create_guid)) if reg else None
    if op is None or op.closed:
        return None
    if not req.hdr.flags & _REPLAY_OPERATION:
        raise SmbError(NtStatus.DUPLICATE_OBJECTID, "CreateGuid in use")
    return op


async def close_app_instance(req, c) -> bytes:
    """MS-SMB2 3.3.5.9.13: a CREATE with an SMB2_CREATE_APP_INSTANCE_ID closes the open
    another client (a failed-over instance of the same application) made of the same
    file with the same AppInstanceId, without a break (smbtorture
    smb2.durable-v2-open.app-instance). Returns the id to record on the new open."""
    from .create import close_open
    data = c.contexts.get(APP_INSTANCE_ID)
    if data is None or req.conn.dialect < _DIALECT_300:
        return b""
    if len(data) != APP_INSTANCE_REQ.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    _size, _r, app_id = APP_INSTANCE_REQ.unpack(data)
    if app_id == _ZERO_GUID:
        return b""
    ctx = req.conn.server
    share = req.tree.share
    want = c.name.replace("/", "\\").strip("\\").casefold()
    for op in list(ctx.opens.values()):
        if (op.app_instance_id != app_id or op.closed or op.tree.share is not share
                or getattr(op.conn, "client_guid", None) == req.conn.client_guid
                or op.request_name.strip("\\").casefold() != want):
            continue
        log.info("open %s (id %#x) closed: its AppInstanceId opens the file again",
                 op.name, op.persistent_id)
        if op.disconnected:
            close_disconnected(ctx, op)
        else:
            await close_open(ctx, op)
    return app_id


def forget_guid(ctx, op) -> None:
    """The open closes: its CreateGuid may be used again."""
    reg = getattr(ctx, "_durable", None)
    if reg is None:
        return
    key = (getattr(op.conn, "client_guid", None), op.create_guid)
    if reg.by_guid.get(key) is op:
        del reg.by_guid[key]
        return
    for k, v in list(reg.by_guid.items()):   # re-attached under another ClientGuid
        if v is op:
            del reg.by_guid[k]


async def replay_response(req, op) -> bytes:
    ctx = req.conn.server
    if getattr(op, "disconnected", False) or op.session is not req.session:
        old = op.session
        if old.user.casefold() != req.session.user.casefold():
            raise SmbError(NtStatus.ACCESS_DENIED)
        attach(ctx, op, req)
    extra = []
    if op.durable:
        extra = [(DH2Q, DH2Q_RESP.pack(int(op.durable_timeout * 1000), 0))]
    return await _existing_response(req, op, extra)


async def _existing_response(req, op, extra=()) -> bytes:
    from . import caching
    from .create import _create_response
    from .leases import lease_response_context
    from ..wire import access as A
    ctx = req.conn.server
    st = await ctx.run_io(os.fstat, op.fd)
    if op.stream is not None:
        from .create import _stream_view
        st = await ctx.run_io(_stream_view, op)
    req.out_file_id = op.file_id
    grant = caching.current_grant(ctx, op)
    if grant is not None:
        op.oplock_level = grant.oplock_level
    resp_ctx = list(extra) + lease_response_context(grant)
    return _create_response(op, st, A.FILE_OPENED, op.oplock_level, resp_ctx)
