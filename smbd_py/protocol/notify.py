"""CHANGE_NOTIFY (MS-SMB2 3.3.5.19): directory change reports to SMB clients.

Owns: the per-handle notify state (Open.notify: the CompletionFilter and WATCH_TREE of the
handle's first request, the changes buffered between requests up to that request's
OutputBufferLength, the pending requests), the mapping of file-system changes
(fs.dirwatch, inotify: made by anyone) onto FILE_NOTIFY_CHANGE_* filters, the
FILE_NOTIFY_INFORMATION encoding (MS-FSCC 2.7.1) and the request handler.

Behaviour (Windows' and Samba's, smbtorture smb2.notify):
* The first request on a handle fixes the filter, WATCH_TREE and the buffer size for the
  handle's life; changes after it are kept even while no request is pending.
* A change completes the first pending request at once with everything buffered; the
  old name of a rename waits for its new name so both go in one response.
* A request finding changes buffered completes at once; one whose OutputBufferLength the
  changes do not fit, or after the buffer overflowed, gets STATUS_NOTIFY_ENUM_DIR.
* Identical consecutive records (same action, same name) are reported once.
* Close completes pending requests with STATUS_NOTIFY_CLEANUP, CANCEL with
  STATUS_CANCELLED, removal of the watched directory with STATUS_DELETE_PENDING.
"""
from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

from ..fs import dirwatch as DW
from ..wire.access import FILE_LIST_DIRECTORY
from ..wire.status import NtStatus, SmbError

log = logging.getLogger(__name__)

CN_REQ = struct.Struct("<HHI16sII")       # 32 bytes
CN_RESP = struct.Struct("<HHI")
SMB2_WATCH_TREE = 0x0001
# MS-FSCC 2.7.1 FILE_NOTIFY_INFORMATION: NextEntryOffset, Action, FileNameLength
_ENTRY = struct.Struct("<III")

FILE_NOTIFY_CHANGE_FILE_NAME = 0x001
FILE_NOTIFY_CHANGE_DIR_NAME = 0x002
FILE_NOTIFY_CHANGE_ATTRIBUTES = 0x004
FILE_NOTIFY_CHANGE_SIZE = 0x008
FILE_NOTIFY_CHANGE_LAST_WRITE = 0x010
FILE_NOTIFY_CHANGE_LAST_ACCESS = 0x020
FILE_NOTIFY_CHANGE_CREATION = 0x040
FILE_NOTIFY_CHANGE_EA = 0x080
FILE_NOTIFY_CHANGE_SECURITY = 0x100
FILE_NOTIFY_CHANGE_STREAM_NAME = 0x200
FILE_NOTIFY_CHANGE_STREAM_SIZE = 0x400
FILE_NOTIFY_CHANGE_STREAM_WRITE = 0x800

# IN_ATTRIB: mode bits, times, xattrs (DOS attributes, EAs, security descriptors).
META_FILTER = (FILE_NOTIFY_CHANGE_ATTRIBUTES | FILE_NOTIFY_CHANGE_LAST_WRITE
               | FILE_NOTIFY_CHANGE_LAST_ACCESS | FILE_NOTIFY_CHANGE_CREATION
               | FILE_NOTIFY_CHANGE_EA | FILE_NOTIFY_CHANGE_SECURITY)
# IN_MODIFY: contents written, size maybe changed.
DATA_FILTER = FILE_NOTIFY_CHANGE_SIZE | FILE_NOTIFY_CHANGE_LAST_WRITE
# Guard against a flood while nobody asks (Samba keeps 1000 too); past it: ENUM_DIR.
MAX_BUFFERED = 1000


def entry_size(name: str) -> int:
    """Bytes one record takes in a response, padded to the 4-byte alignment."""
    return (_ENTRY.size + len(name.encode("utf-16-le", "surrogatepass")) + 3) & ~3


def encode_changes(changes: list[tuple[int, str]]) -> bytes:
    """FILE_NOTIFY_INFORMATION records, each 4-byte aligned, NextEntryOffset 0 on the
    last (which is not padded)."""
    out = bytearray()
    last = len(changes) - 1
    for i, (action, name) in enumerate(changes):
        raw = name.encode("utf-16-le", "surrogatepass")
        size = _ENTRY.size + len(raw)
        nxt = 0 if i == last else (size + 3) & ~3
        out += _ENTRY.pack(nxt, action, len(raw))
        out += raw
        if nxt:
            out += bytes(nxt - size)
    return bytes(out)


def _wanted(flt: int, action: int, is_dir: bool, what: int) -> bool:
    if what == DW.CHANGE_NAME:
        return bool(flt & (FILE_NOTIFY_CHANGE_DIR_NAME if is_dir else FILE_NOTIFY_CHANGE_FILE_NAME))
    if what == DW.CHANGE_META:
        return bool(flt & META_FILTER)
    return bool(flt & DATA_FILTER)


class _Waiter:
    __slots__ = ("req", "fut", "out_len")

    def __init__(self, req: Any, fut: asyncio.Future, out_len: int) -> None:
        self.req = req
        self.fut = fut
        self.out_len = out_len


class NotifyState:
    """Open.notify: one directory handle's change notification (see the module doc)."""

    __slots__ = ("op", "filter", "recursive", "max_len", "changes", "size", "overflow",
                 "waiters", "sub", "watcher", "gone")

    def __init__(self, op: Any, completion_filter: int, recursive: bool, max_len: int) -> None:
        self.op = op
        self.filter = completion_filter
        self.recursive = recursive
        self.max_len = max_len
        self.changes: list[tuple[int, str]] = []
        self.size = 0
        self.overflow = False
        self.waiters: list[_Waiter] = []
        self.sub: Any = None           # fs.dirwatch.Subscription
        self.watcher: Any = None       # fs.dirwatch.DirWatcher
        self.gone = False              # the watched directory was removed

    # ---- from fs.dirwatch ------------------------------------------------------------
    def on_change(self, action: int, name: str, is_dir: bool, what: int) -> None:
        if not _wanted(self.filter, action, is_dir, what):
            return
        if not self.overflow:
            if self.changes and self.changes[-1] == (action, name):
                pass        # identical to the last record: once is enough
            else:
                size = entry_size(name)
                if self.size + size > self.max_len or len(self.changes) >= MAX_BUFFERED:
                    self._overflowed()
                else:
                    self.changes.append((action, name))
                    self.size += size
        if self.waiters and action != DW.FILE_ACTION_RENAMED_OLD_NAME:
            self._complete(self.waiters.pop(0))

    def on_overflow(self) -> None:
        self._overflowed()
        if self.waiters:
            self._complete(self.waiters.pop(0))

    def on_gone(self) -> None:
        self.gone = True
        self.sub = None
        self.fail_waiters(NtStatus.DELETE_PENDING)

    def fail_waiters(self, status: int) -> None:
        for w in self.waiters:
            if not w.fut.done():
                w.fut.set_result(status)
        self.waiters.clear()

    def _overflowed(self) -> None:
        self.overflow = True
        self.changes.clear()
        self.size = 0

    # ---- requests --------------------------------------------------------------------
    def ready(self) -> bool:
        return self.overflow or bool(self.changes) or self.gone

    def take(self, out_len: int) -> Any:
        """The answer to a request now: the encoded records, or an NTSTATUS."""
        if self.gone:
            return NtStatus.DELETE_PENDING
        overflow, changes = self.overflow, self.changes
        self.overflow, self.changes, self.size = False, [], 0
        if overflow:
            return NtStatus.NOTIFY_ENUM_DIR
        data = encode_changes(changes)
        if len(data) > out_len:
            return NtStatus.NOTIFY_ENUM_DIR
        return data

    def _complete(self, w: _Waiter) -> None:
        if not w.fut.done():
            w.fut.set_result(self.take(w.out_len))

    def cancel(self, status: int) -> None:
        """Complete every pending request with `status` (create._detach: on close, with
        NOTIFY_CLEANUP); once the handle is closed the watches go too."""
        for w in list(self.waiters):
            w.req.cancel(status)
        if getattr(self.op, "closed", False):
            self.release()

    def release(self) -> None:
        if self.sub is not None and self.watcher is not None:
            self.watcher.unsubscribe(self.sub)
        self.sub = None
        self.changes = []


def delete_pending(fs: Any) -> None:
    """The directory `fs` (objects.FileState) just became delete-pending: the change
    notifies pending on its handles complete with STATUS_DELETE_PENDING (Windows;
    smbtorture smb2.notify.rmdir1-4). create.py and setinfo.py call it."""
    for o in list(fs.opens):
        st = o.notify
        if st is not None and st.waiters:
            st.fail_waiters(NtStatus.DELETE_PENDING)


def dir_watcher(ctx: Any) -> DW.DirWatcher:
    """The server's DirWatcher (ServerContext has no slot for it: kept beside it)."""
    w = getattr(ctx, "_dirwatch", None)
    if w is None:
        w = DW.DirWatcher(asyncio.get_running_loop(), ctx.run_io)
        ctx._dirwatch = w
    return w


async def handle_change_notify(req) -> bytes:
    from .create import lookup_open
    body = req.body
    if len(body) < CN_REQ.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    size, flags, out_len, raw_fid, completion_filter, _r = CN_REQ.unpack_from(body)
    if size != 32:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    op = lookup_open(req, raw_fid)
    if not op.is_dir or op.fd < 0 or out_len > req.conn.max_transact:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if not op.granted_access & FILE_LIST_DIRECTORY:
        raise SmbError(NtStatus.ACCESS_DENIED)
    if op.file is not None and op.file.delete_pending:
        raise SmbError(NtStatus.DELETE_PENDING)
    ctx = req.conn.server
    watcher = dir_watcher(ctx)
    state = op.notify
    if state is None:
        state = op.notify = NotifyState(op, completion_filter,
                                        bool(flags & SMB2_WATCH_TREE), out_len)
        state.watcher = watcher
        # The share root's reserved directory (named streams' depot) is never reported.
        at_root = not (op.file.components if op.file is not None else op.components)
        try:
            # The watch starts now: changes before this request are not the handle's.
            watcher.drain()
            state.sub = await watcher.subscribe(state, op.fd, recursive=state.recursive,
                                                hide_reserved=at_root)
        except OSError as e:
            log.warning("change notify on %s: no watch (%s); requests stay pending "
                        "until cancelled or closed", op.name or "\\", e)
        if op.closed:               # closed while the tree was scanned
            state.release()
            raise SmbError(NtStatus.NOTIFY_CLEANUP)
    else:
        # Changes made before this request (by anyone) are in the kernel's queue already.
        watcher.drain()
    if state.ready():
        result = state.take(out_len)
    else:
        fut = asyncio.get_running_loop().create_future()
        w = _Waiter(req, fut, out_len)
        state.waiters.append(w)
        try:
            # MS-SMB2 3.3.5.19: the request stays pending; answer STATUS_PENDING at once.
            await req.go_async()
            try:
                result = await req.wait(fut)
            except SmbError as e:
                # LOGOFF and TREE_DISCONNECT cancel the session's requests before they
                # close its handles: for a handle closed meanwhile it is a cleanup.
                if e.status == NtStatus.CANCELLED and op.closed:
                    raise SmbError(NtStatus.NOTIFY_CLEANUP) from None
                raise
        finally:
            try:
                state.waiters.remove(w)
            except ValueError:
                pass
    if isinstance(result, int):
        raise SmbError(result)
    return CN_RESP.pack(9, 64 + 8, len(result)) + result
