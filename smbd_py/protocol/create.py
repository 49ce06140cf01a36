"""CREATE and CLOSE (MS-SMB2 3.3.5.9, 3.3.5.10): request validation, dispositions, directory
and file semantics, share modes between this server's opens, delete-on-close, create
contexts (MxAc, QFid), named pipes on IPC$, and closing."""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat as stat_mod
import struct

from ..fs import info as fsinfo
from ..fs.ea import parse_full_ea_list, replace_eas, write_eas
from ..fs.paths import fstat_btime   # statx: CreationTime is the birth time
from ..wire import access as A
from ..wire.header import RELATED_FILE_ID
from ..wire.status import NtStatus, SmbError
from . import caching, durable, notify
from .leases import lease_response_context
from .objects import Open

log = logging.getLogger("smbd_py.create")

CREATE_REQ = struct.Struct("<HBBIQQIIIIIHHII")      # 56 bytes before the buffer
CREATE_RESP = struct.Struct("<HBBIQQQQQQII16sII")   # 88 bytes
CLOSE_REQ = struct.Struct("<HHI16s")
CLOSE_RESP = struct.Struct("<HHIQQQQQQI")
CTX_HDR = struct.Struct("<IHHHHI")
CLOSE_FLAG_POSTQUERY_ATTRIB = 0x0001
SMB2_CREATE_FLAG_REPARSEPOINT = 0x01

OPLOCK_NONE = 0x00

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK
_FILE_CREATE_TREE_CONNECTION = 0x00000080


class CreateRequest:
    __slots__ = ("oplock", "impersonation", "access", "attributes", "share_access",
                 "disposition", "options", "name", "contexts", "cache_id", "first_attempt",
                 "durable", "app_instance_id", "path_fd")


def parse_contexts(raw, offset: int, length: int) -> dict[bytes, bytes]:
    """Create contexts (MS-SMB2 2.2.13.2); offsets are from the start of the header."""
    out: dict[bytes, bytes] = {}
    if not length:
        return out
    end = offset + length
    if offset % 8 or end > len(raw):
        raise SmbError(NtStatus.INVALID_PARAMETER)
    pos = offset
    for _ in range(64):
        if pos + 16 > end:
            raise SmbError(NtStatus.INVALID_PARAMETER)
        nxt, name_off, name_len, _r, data_off, data_len = CTX_HDR.unpack_from(raw, pos)
        # Windows refuses names shorter than 4 bytes (smb2.create.blob "bad tag length").
        if (name_len < 4 or pos + name_off + name_len > end
                or (data_len and pos + data_off + data_len > end)):
            raise SmbError(NtStatus.INVALID_PARAMETER)
        name = bytes(raw[pos + name_off:pos + name_off + name_len])
        out[name] = bytes(raw[pos + data_off:pos + data_off + data_len]) if data_len else b""
        if not nxt:
            return out
        if nxt % 8 or nxt < 16:
            raise SmbError(NtStatus.INVALID_PARAMETER)
        pos += nxt
    raise SmbError(NtStatus.INVALID_PARAMETER)


def build_contexts(items: list[tuple[bytes, bytes]]) -> bytes:
    out = bytearray()
    for i, (name, data) in enumerate(items):
        start = len(out)
        name_off = 16
        data_off = (name_off + len(name) + 7) & ~7
        entry = bytearray(data_off + len(data))
        entry[name_off:name_off + len(name)] = name
        entry[data_off:] = data
        nxt = 0
        if i + 1 < len(items):
            entry += b"\0" * ((-len(entry)) % 8)
            nxt = len(entry)
        CTX_HDR.pack_into(entry, 0, nxt, name_off, len(name), 0, data_off, len(data))
        out += entry
    return bytes(out)


# Options whose CREATE needs _validate's checks (none of the common ones do).
_OPTIONS_CHECKED = (A.FILE_RESERVE_OPFILTER | A.FILE_OPEN_BY_FILE_ID | _FILE_CREATE_TREE_CONNECTION
                    | A.FILE_DIRECTORY_FILE | A.FILE_DELETE_ON_CLOSE
                    | (0xFFFFFFFF & ~A.CREATE_OPTIONS_VALID))


def _validate(imp: int, access: int, attrs: int, share: int, disp: int, options: int) -> None:
    """The field checks of a CREATE in the order Windows applies them (smbtorture
    smb2.create.gentest/blob)."""
    if imp > 3:
        raise SmbError(NtStatus.BAD_IMPERSONATION_LEVEL)
    # Windows (and Samba) refuse these three with NOT_SUPPORTED (smb2.create.gentest);
    # we have no open-by-id, no tree-connection opens, no filter oplocks.
    if options & (A.FILE_RESERVE_OPFILTER | A.FILE_OPEN_BY_FILE_ID | _FILE_CREATE_TREE_CONNECTION):
        raise SmbError(NtStatus.NOT_SUPPORTED)
    if options & ~A.CREATE_OPTIONS_VALID:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if (options & A.FILE_DIRECTORY_FILE) and (options & A.FILE_NON_DIRECTORY_FILE):
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if disp > A.FILE_OVERWRITE_IF:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    # An empty mask is refused. SYNCHRONIZE alone is granted, as Windows 7 and Samba do
    # (smb2.getinfo.getinfo_access opens with it; gentest's Windows 2008 mask says otherwise).
    if access & A.ACCESS_MASK_INVALID or access == 0:
        raise SmbError(NtStatus.ACCESS_DENIED)
    if attrs & ~A.FILE_ATTRIBUTE_VALID_FLAGS:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if share & ~A.FILE_SHARE_VALID:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if (options & A.FILE_DELETE_ON_CLOSE) and not (A.map_generic(access) & (A.DELETE | A.MAXIMUM_ALLOWED)):
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if (options & A.FILE_DIRECTORY_FILE) and disp in (A.FILE_SUPERSEDE, A.FILE_OVERWRITE, A.FILE_OVERWRITE_IF):
        raise SmbError(NtStatus.INVALID_PARAMETER)


def _parse(req) -> CreateRequest:
    body = req.body
    if len(body) < CREATE_REQ.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    (size, _secflags, oplock, imp, _cflags, _res, access, attrs, share, disp, options,
     name_off, name_len, ctx_off, ctx_len) = CREATE_REQ.unpack_from(body)
    if size != 57:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    raw = req.raw
    if name_len % 2 or (name_len and (name_off < 64 + 56 or name_off + name_len > len(raw))):
        raise SmbError(NtStatus.INVALID_PARAMETER)
    c = CreateRequest()
    c.path_fd = -1
    try:
        c.name = str(raw[name_off:name_off + name_len], "utf-16-le") if name_len else ""
    except UnicodeDecodeError:
        raise SmbError(NtStatus.OBJECT_NAME_INVALID) from None
    c.oplock, c.impersonation, c.access, c.attributes = oplock, imp, access, attrs
    c.share_access, c.disposition, c.options = share, disp, options
    c.contexts = parse_contexts(raw, ctx_off, ctx_len)
    c.durable = None
    c.app_instance_id = b""
    if c.contexts and durable.is_reconnect(c.contexts):
        # A durable reconnect ignores every other field (MS-SMB2 3.3.5.9.7; smbtorture
        # smb2.durable-open.reopen2 sends garbage in them): protocol.durable checks it.
        return c
    if (imp > 3 or options & _OPTIONS_CHECKED or disp > A.FILE_OVERWRITE_IF or not access
            or access & A.ACCESS_MASK_INVALID or attrs & ~A.FILE_ATTRIBUTE_VALID_FLAGS
            or share & ~A.FILE_SHARE_VALID):
        # Something unusual: the checks one by one, for the status Windows gives.
        _validate(imp, access, attrs, share, disp, options)
    if c.name.startswith("\\"):
        raise SmbError(NtStatus.INVALID_PARAMETER)
    return c


def _granted_access(c: CreateRequest, tree, read_only_file: bool) -> int:
    maximal = tree.maximal_access
    if read_only_file:
        maximal &= ~(A.FILE_WRITE_DATA | A.FILE_APPEND_DATA)
    access = A.map_generic(c.access)
    if access & A.MAXIMUM_ALLOWED:
        access = (access & ~A.MAXIMUM_ALLOWED) | maximal
    if access & A.ACCESS_SYSTEM_SECURITY:
        raise SmbError(NtStatus.PRIVILEGE_NOT_HELD)
    if access & ~maximal & ~A.SYNCHRONIZE:
        raise SmbError(NtStatus.ACCESS_DENIED)
    return access


def share_conflict(fs, access: int, share: int) -> bool:
    """MS-FSA 2.1.5.1.2.1: sharing between the new open and every existing data open."""
    if not access & (A.DATA_ACCESS | A.DELETE):
        return False
    for o in fs.opens:
        ea = o.granted_access
        if not ea & (A.DATA_ACCESS | A.DELETE):
            continue
        if (ea & (A.FILE_READ_DATA | A.FILE_EXECUTE)) and not share & A.FILE_SHARE_READ:
            return True
        if (ea & (A.FILE_WRITE_DATA | A.FILE_APPEND_DATA)) and not share & A.FILE_SHARE_WRITE:
            return True
        if (ea & A.DELETE) and not share & A.FILE_SHARE_DELETE:
            return True
        es = o.share_access
        if (access & (A.FILE_READ_DATA | A.FILE_EXECUTE)) and not es & A.FILE_SHARE_READ:
            return True
        if (access & (A.FILE_WRITE_DATA | A.FILE_APPEND_DATA)) and not es & A.FILE_SHARE_WRITE:
            return True
        if (access & A.DELETE) and not es & A.FILE_SHARE_DELETE:
            return True
    return False


def _open_flags(access: int) -> int:
    """The POSIX open mode for an SMB access mask. Stat opens get O_PATH so they never
    break a kernel lease; writers get O_RDWR; O_NONBLOCK because a lease held by another
    process would otherwise block open()."""
    if access & (A.FILE_WRITE_DATA | A.FILE_APPEND_DATA):
        return os.O_RDWR | os.O_NONBLOCK
    if access & (A.FILE_READ_DATA | A.FILE_EXECUTE):
        return os.O_RDONLY | os.O_NONBLOCK
    return os.O_PATH


def _stat_target(root, comps):
    """(resolved components, stat or None). Runs in the I/O pool."""
    comps = root.resolve(comps)
    try:
        st = root.stat(comps)
    except SmbError as e:
        if e.status == NtStatus.OBJECT_NAME_NOT_FOUND:
            return comps, None
        raise
    return comps, st


def _stat_target_inline(root, comps, c):
    """_stat_target on the event loop when the kernel's caches answer it without I/O
    (fs.paths ShareRoot.open_cached); None when the I/O pool must do it (not cached,
    or the exact spelling is missing and case-insensitive resolution must read the
    directory). An open+close loop then makes no pool trip at all.
    The O_PATH descriptor stays in c.path_fd: a stat open (O_PATH too) takes it as its
    own fd instead of looking the name up again (_create_or_open); whoever does not
    take it closes it (handle_create)."""
    fd = root.open_cached(comps, os.O_PATH)
    if fd < 0:
        return None
    try:
        st = root.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    c.path_fd = fd
    return comps, st


# DOS attributes kept in the xattr, per inode, as last read: (st_ctime_ns, value).
# Setting an xattr changes ctime (and multigrain timestamps make that change visible
# once ctime was queried), so a matching ctime means the value read then still holds
# and the open need not read the xattr (an I/O pool trip) again.
_STORED_MAX = 4096
_stored_cache: dict[tuple[int, int], tuple[int, int | None]] = {}
_MISS = object()


def _stored_lookup(st):
    hit = _stored_cache.get((st.st_dev, st.st_ino))
    if hit is not None and hit[0] == st.st_ctime_ns:
        return hit[1]
    return _MISS


def _stored_remember(st, stored) -> None:
    if len(_stored_cache) >= _STORED_MAX:
        _stored_cache.clear()
    _stored_cache[(st.st_dev, st.st_ino)] = (st.st_ctime_ns, stored)


def _take_path_fd(c, st, flags: int, is_dir: bool, truncate: bool):
    """A stat open (O_PATH) of a file becomes the O_PATH descriptor its target was
    stat'ed through (c.path_fd, st its stat: _stat_target_inline): no second lookup.
    O_PATH never meets a kernel lease and shares no description, so there is nothing
    for caching.open_backed to do. Returns (fd, stat, stored attributes or _MISS), or
    None (a data open, a directory, a truncate, or no such descriptor)."""
    if flags != os.O_PATH or c.path_fd < 0 or is_dir or truncate:
        return None
    fd, c.path_fd = c.path_fd, -1
    return fd, st, _stored_lookup(st)


def _open_existing_inline(root, comps, is_dir: bool, flags: int, truncate: bool):
    """_open_existing on the event loop for opens that cannot block: O_PATH (stat opens:
    no file-system open method, never meets a lease) and directories, looked up from the
    kernel's caches only. Returns (fd, stat, stored attributes or _MISS), or None when
    the I/O pool must do it."""
    if truncate or not (is_dir or flags & os.O_PATH):
        return None
    fd = root.open_cached(comps, _O_DIR if is_dir else flags)
    if fd < 0:
        return None
    try:
        st = fstat_btime(fd)
    except OSError:
        os.close(fd)
        return None
    return fd, st, _stored_lookup(st)


def _create_new(root, comps, is_dir: bool, mode: int, flags: int):
    """Create a new file or directory; returns (fd, stat). Runs in the I/O pool."""
    if is_dir:
        root.mkdir(comps, 0o777)
        fd = root.open(comps, _O_DIR)
    else:
        fd = root.open(comps, flags | os.O_CREAT | os.O_EXCL, mode)
    return fd, fstat_btime(fd), None


def _open_existing(root, comps, is_dir: bool, flags: int, truncate: bool):
    if is_dir:
        fd = root.open(comps, _O_DIR)
    else:
        fd = root.open(comps, flags | (os.O_TRUNC if truncate else 0))
    from .info import read_stored_attributes
    return fd, fstat_btime(fd), read_stored_attributes(fd)


class _StreamTarget:
    """The base file of a named-stream CREATE (MS-FSA 2.1.5.1: the file is found, or
    created, before its stream): an O_PATH fd on it, its components and identity."""

    __slots__ = ("base_fd", "base_components", "base_created", "read_only", "key")


def _prepare_stream(root, comps, disp: int, attributes: int, read_only_share: bool):
    """Look up (or create) the base file of a stream and its depot; returns
    (_StreamTarget, components of the stream's depot file). Runs in the I/O pool."""
    from ..fs import streams as fsstreams
    from .info import _apply_attributes
    may_create = disp not in (A.FILE_OPEN, A.FILE_OVERWRITE)
    comps = root.resolve(comps)
    created = False
    try:
        bfd = root.open(comps, os.O_PATH)
    except SmbError as e:
        if e.status != NtStatus.OBJECT_NAME_NOT_FOUND or not may_create:
            raise
        if read_only_share:
            raise SmbError(NtStatus.ACCESS_DENIED) from None
        # "new:stream" creates the file too (Windows); a new file is an ARCHIVE one.
        try:
            fd = root.open(comps, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NONBLOCK, 0o666)
        except SmbError as e2:
            if e2.status != NtStatus.OBJECT_NAME_COLLISION:
                raise
        else:
            created = True
            try:
                _apply_attributes(fd, attributes | A.FILE_ATTRIBUTE_ARCHIVE, False)
            finally:
                os.close(fd)
        bfd = root.open(comps, os.O_PATH)
    try:
        st = os.fstat(bfd)
        is_dir = stat_mod.S_ISDIR(st.st_mode)
        if not is_dir and not stat_mod.S_ISREG(st.st_mode):
            raise SmbError(NtStatus.ACCESS_DENIED)
        did = fsstreams.claim_depot(root, bfd)
        if did is None:
            if not may_create:
                raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "the file has no streams")
            if read_only_share:
                raise SmbError(NtStatus.ACCESS_DENIED)
            did = fsstreams.ensure_depot_id(bfd)
        if may_create and not read_only_share:
            fsstreams.make_depot(root, did)
    except BaseException:
        os.close(bfd)
        raise
    sx = _StreamTarget()
    sx.base_fd = bfd
    sx.base_components = tuple(comps)
    sx.base_created = created
    sx.read_only = not is_dir and not st.st_mode & stat_mod.S_IWUSR
    sx.key = (st.st_dev, st.st_ino)
    return sx, did


class _StreamOpens:
    """One server's open named streams by base file (MS-FSA 2.1.5.1.2: a DELETE open of
    a file checks its streams' opens; the file's delete waits for them to close).
    by_base: base file key -> its open stream Opens; base_of: a stream open's
    volatile id -> its base file key; deferred: base file key -> the FileState of a base
    file whose delete is pending until its last stream open closes (kept in ctx.files,
    so name-based opens of the file and of its streams answer DELETE_PENDING)."""

    __slots__ = ("by_base", "base_of", "deferred", "due")

    def __init__(self) -> None:
        self.by_base: dict[tuple[int, int], list[Open]] = {}
        self.base_of: dict[int, tuple[int, int]] = {}
        self.deferred: dict[tuple[int, int], object] = {}
        # A closing stream open's volatile id -> the deferred base file its close deletes.
        self.due: dict[int, object] = {}


# Per ServerContext (several run in one process under smbd_py.testing), kept on the
# context itself like protocol.caching's state: every CREATE and CLOSE looks for it, and
# a missing attribute answers faster than a WeakKeyDictionary lookup (a weakref a call).
def _streams_table(ctx) -> _StreamOpens:
    t = getattr(ctx, "_stream_opens", None)
    if t is None:
        t = ctx._stream_opens = _StreamOpens()
    return t


def _stream_delete_conflict(ctx, key, access: int) -> bool:
    """A DELETE open of a file conflicts with an open of any of its named streams that
    does not share delete (MS-FSA 2.1.5.1.2; smbtorture smb2.streams.delete)."""
    if not access & A.DELETE:
        return False
    t = getattr(ctx, "_stream_opens", None)
    if t is None:
        return False
    return any(not o.share_access & A.FILE_SHARE_DELETE for o in t.by_base.get(key, ()))


async def _create_stream(req, c, root, comps, stream: str) -> bytes:
    """CREATE of "file:stream": the stream is a file in the base file's depot
    (fs.streams), opened through the same machinery as any file, so share modes,
    oplocks, leases and their kernel backing are per stream."""
    ctx = req.conn.server
    from ..fs import streams as fsstreams
    if c.options & A.FILE_DIRECTORY_FILE:
        # A stream is never a directory (Samba answers this too).
        raise SmbError(NtStatus.NOT_A_DIRECTORY)
    sx, did = await ctx.run_io(_prepare_stream, root, comps, c.disposition, c.attributes,
                               req.tree.share.read_only)
    try:
        base_fs = ctx.files.get(sx.key)
        if base_fs is not None and base_fs.delete_pending:
            raise SmbError(NtStatus.DELETE_PENDING)
        scomps = fsstreams.stream_components(did, stream)
        for attempt in range(8):
            try:
                scomps, st = await ctx.run_io(_stat_target, root, scomps)
            except SmbError as e:
                if e.status == NtStatus.OBJECT_PATH_NOT_FOUND:   # no depot directory
                    raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND) from None
                raise
            result = await _create_or_open(req, c, root, scomps, st, False, sx)
            if result is not None:
                return result
        raise SmbError(NtStatus.INTERNAL_ERROR)
    finally:
        if sx.base_fd >= 0:
            os.close(sx.base_fd)


def _stream_view(op):
    """A stream open's stat as the client sees it (fs.streams.StreamStat), and the base
    file's stored attributes refreshed. Runs in the I/O pool."""
    from ..fs.streams import StreamStat
    from .info import read_stored_attributes
    op.base_attributes = read_stored_attributes(op.base_fd)
    return StreamStat(fstat_btime(op.base_fd), os.fstat(op.fd))


async def handle_create(req) -> bytes:
    c = _parse(req)
    tree = req.tree
    ctx = req.conn.server
    if tree.share.is_ipc:
        return await _create_pipe(req, c)
    contexts = c.contexts
    if contexts:       # the context checks cost nothing when the CREATE carries none
        c.durable = durable.parse(contexts, req.conn.dialect)
        if c.durable is not None:
            if c.durable.reconnect:
                return await durable.reconnect(req, c, c.durable)
            replayed = durable.find_replay(req, c.durable)
            if replayed is not None:
                return await durable.replay_response(req, replayed)
        if durable.APP_INSTANCE_ID in contexts:
            c.app_instance_id = await durable.close_app_instance(req, c)
    root = tree.share.root
    comps, stream = root.split_stream(c.name)
    want_dir = bool(c.options & A.FILE_DIRECTORY_FILE)
    if contexts:
        if b"ExtA" in contexts:
            # Validate the EA list before touching the file system (MS-SMB2 3.3.5.9).
            parse_full_ea_list(contexts[b"ExtA"])
        if b"AlSi" in contexts and len(contexts[b"AlSi"]) != 8:
            raise SmbError(NtStatus.INVALID_PARAMETER)
        if b"TWrp" in contexts:
            if len(contexts[b"TWrp"]) != 8:
                raise SmbError(NtStatus.INVALID_PARAMETER)
            # A previous version of the file: we keep none (FSCTL_SRV_ENUMERATE_SNAPSHOTS
            # lists no snapshots), so there is no such object.
            raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "no previous versions")
    # The id this CREATE has in the oplock table, kept across attempts: after waiting for
    # a break the open is re-run as the same waiter (protocol.caching).
    c.cache_id = caching.new_cache_id()
    c.first_attempt = True
    if stream is not None:
        return await _create_stream(req, c, root, comps, stream)
    # "name::$DATA" names the unnamed data stream, which a directory does not have.
    data_stream = c.name[-7:].upper() == "::$DATA" if ":" in c.name else False
    if data_stream and want_dir:
        raise SmbError(NtStatus.NOT_A_DIRECTORY)
    for attempt in range(8):
        found = _stat_target_inline(root, comps, c)
        try:
            comps, st = found if found is not None else await ctx.run_io(_stat_target, root, comps)
            if data_stream and st is not None and stat_mod.S_ISDIR(st.st_mode):
                raise SmbError(NtStatus.FILE_IS_A_DIRECTORY)
            result = await _create_or_open(req, c, root, comps, st, want_dir)
        finally:
            if c.path_fd >= 0:            # the stat's descriptor, not taken by the open
                os.close(c.path_fd)
                c.path_fd = -1
        if result is not None:
            return result
    raise SmbError(NtStatus.INTERNAL_ERROR)


def _readonly_delete_on_close(c: CreateRequest) -> bool:
    """A file about to be created or overwritten read-only, and deleted on close: MS-FSA
    2.1.5.1.1 and 2.1.5.1.2.1 answer STATUS_CANNOT_DELETE (smbtorture
    smb2.delete-on-close-perms.READONLY, base.delete deltest12)."""
    return bool(c.options & A.FILE_DELETE_ON_CLOSE and c.attributes & A.FILE_ATTRIBUTE_READONLY)


# CreateAction of an open of an existing file, by disposition (FILE_OPENED otherwise).
_ACTION_OF = {A.FILE_SUPERSEDE: A.FILE_SUPERSEDED, A.FILE_OVERWRITE: A.FILE_OVERWRITTEN,
              A.FILE_OVERWRITE_IF: A.FILE_OVERWRITTEN}


async def _create_or_open(req, c, root, comps, st, want_dir, sx=None):
    """One attempt; returns None when the file changed under us and we must retry.
    sx: a _StreamTarget when opening a named stream (comps are then its depot file's)."""
    ctx = req.conn.server
    tree = req.tree
    disp = c.disposition
    share = tree.share
    if st is None:
        if disp in (A.FILE_OPEN, A.FILE_OVERWRITE):
            raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND)
        if share.read_only:
            raise SmbError(NtStatus.ACCESS_DENIED)
        if not comps:
            raise SmbError(NtStatus.ACCESS_DENIED)
        if _readonly_delete_on_close(c):
            raise SmbError(NtStatus.CANNOT_DELETE)
        # A stream file's mode says nothing: the base file's read-only bit rules.
        readonly = bool(c.attributes & A.FILE_ATTRIBUTE_READONLY) and sx is None
        access = _granted_access(c, tree, sx is not None and sx.read_only)
        flags = _open_flags(access | A.FILE_WRITE_DATA)
        if flags == os.O_PATH:
            flags = os.O_RDONLY | os.O_NONBLOCK
        try:
            fd, st, stored = await ctx.run_io(_create_new, root, comps, want_dir,
                                      0o444 if readonly else 0o666, flags & ~os.O_PATH)
        except SmbError as e:
            if e.status == NtStatus.OBJECT_NAME_COLLISION and disp != A.FILE_CREATE:
                return None      # somebody created it meanwhile: open it instead
            raise
        action = A.FILE_CREATED
        is_dir = want_dir
        if not is_dir:
            # The new inode's first description: later opens share it (oplocks.backing).
            caching.adopt_new(ctx, c.cache_id, (st.st_dev, st.st_ino), share, fd, flags)
        # A new inode has no other holder: the table grants at once, never waits.
        try:
            grant = await caching.acquire(req, c.cache_id, (st.st_dev, st.st_ino), c, access,
                                          is_dir, False, False, c.first_attempt)
        except BaseException:
            os.close(fd)
            raise
    else:
        is_dir = stat_mod.S_ISDIR(st.st_mode)
        if not is_dir and not stat_mod.S_ISREG(st.st_mode):
            raise SmbError(NtStatus.ACCESS_DENIED)
        if disp == A.FILE_CREATE:
            raise SmbError(NtStatus.OBJECT_NAME_COLLISION)
        if is_dir and c.options & A.FILE_NON_DIRECTORY_FILE:
            raise SmbError(NtStatus.FILE_IS_A_DIRECTORY)
        if not is_dir and want_dir:
            raise SmbError(NtStatus.NOT_A_DIRECTORY)
        if is_dir and disp in (A.FILE_SUPERSEDE, A.FILE_OVERWRITE, A.FILE_OVERWRITE_IF):
            raise SmbError(NtStatus.INVALID_PARAMETER)
        readonly_file = sx.read_only if sx is not None else (
            not is_dir and not st.st_mode & stat_mod.S_IWUSR)
        access = _granted_access(c, tree, readonly_file)
        truncate = disp in (A.FILE_SUPERSEDE, A.FILE_OVERWRITE, A.FILE_OVERWRITE_IF)
        if truncate:
            if readonly_file:
                raise SmbError(NtStatus.ACCESS_DENIED)
            if share.read_only:
                raise SmbError(NtStatus.ACCESS_DENIED)
            if _readonly_delete_on_close(c) and not is_dir:
                raise SmbError(NtStatus.CANNOT_DELETE)
        if c.options & A.FILE_DELETE_ON_CLOSE:
            if readonly_file:
                raise SmbError(NtStatus.CANNOT_DELETE)
            if share.read_only:
                raise SmbError(NtStatus.ACCESS_DENIED)
        key = (st.st_dev, st.st_ino)
        fs = ctx.files.get(key)
        if fs is not None and fs.delete_pending:
            raise SmbError(NtStatus.DELETE_PENDING)
        if sx is None and _stream_delete_conflict(ctx, key, access):
            raise SmbError(NtStatus.SHARING_VIOLATION, "a stream of the file is open without FILE_SHARE_DELETE")
        # Oplock holders are broken before the share-mode verdict and before the file is
        # opened (a truncate must not overtake a holder's cached writes): MS-SMB2 3.3.5.9,
        # MS-FSA 2.1.5.1.2. The table answers SHARING_VIOLATION itself when it stands.
        conflict = fs is not None and share_conflict(fs, access, c.share_access)
        grant = await caching.acquire(req, c.cache_id, key, c, access, is_dir, conflict,
                                      bool(fs is not None and fs.locks), c.first_attempt)
        if grant is None:
            c.first_attempt = False
            return None          # holders answered the break: look at the file again
        if is_dir:
            flags = _O_DIR
        else:
            # A write-caching grant gets a writable description when the file may be
            # written at all: its lease key's later writers then share it (oplocks.backing).
            w = A.FILE_WRITE_DATA if truncate or (
                caching.grants_write(grant) and not readonly_file and not share.read_only
                and tree.maximal_access & A.FILE_WRITE_DATA) else 0
            flags = _open_flags(access | w)
        try:
            got = _take_path_fd(c, st, flags, is_dir, truncate)
            if got is not None:
                fd, st2, stored = got
            else:
                fd, st2, stored = await caching.open_backed(
                    req, c.cache_id, key, share, is_dir, flags, truncate and not is_dir,
                    lambda fl, tr: _open_existing(root, comps, is_dir, fl, tr),
                    fast=lambda fl, tr: _open_existing_inline(root, comps, is_dir, fl, tr))
            if stored is _MISS:
                try:
                    from .info import read_stored_attributes
                    stored = await ctx.run_io(read_stored_attributes, fd)
                except BaseException:
                    os.close(fd)
                    raise
            _stored_remember(st2, stored)
        except BaseException:
            caching.release(ctx, c.cache_id)
            raise
        if (st2.st_dev, st2.st_ino) != key:
            os.close(fd)
            caching.release(ctx, c.cache_id)
            return None          # replaced between stat and open: look again
        st = st2
        action = _ACTION_OF.get(disp, A.FILE_OPENED)
    # Register the open before anything else can run on the loop.
    key = (st.st_dev, st.st_ino)
    fs = ctx.file_state(key, comps, is_dir, share)
    if not fs.opens:
        fs.attributes = stored
    if fs.delete_pending or share_conflict(fs, access, c.share_access) or (
            sx is None and _stream_delete_conflict(ctx, key, access)):
        os.close(fd)
        caching.release(ctx, c.cache_id)
        if not fs.opens and not fs.delete_pending:   # a pending one waits for its streams
            ctx.files.pop(key, None)
        raise SmbError(NtStatus.DELETE_PENDING if fs.delete_pending else NtStatus.SHARING_VIOLATION)
    op = Open(tree, req.session, req.conn)
    op.fd = fd
    op.fd_is_path = flags == os.O_PATH
    op.is_dir = is_dir
    op.components = comps
    op.name = "\\".join(comps)
    if sx is not None:
        op.stream = comps[-1]
        op.base_components = sx.base_components
        op.name = "\\".join(sx.base_components) + ":" + comps[-1]
        op.base_fd, sx.base_fd = sx.base_fd, -1      # the open owns it now
    op.granted_access = access
    op.share_access = c.share_access
    op.create_options = c.options
    op.file_key = key
    op.file = fs
    op.stat = st
    op.delete_on_close = bool(c.options & A.FILE_DELETE_ON_CLOSE)
    op.oplock_level = grant.oplock_level
    caching.bind(ctx, c.cache_id, op)
    grant = caching.back(ctx, op, grant)      # the kernel backs it, or less is granted
    op.oplock_level = grant.oplock_level
    if c.options & (A.FILE_SYNCHRONOUS_IO_ALERT | A.FILE_SYNCHRONOUS_IO_NONALERT):
        op.mode |= c.options & (A.FILE_SYNCHRONOUS_IO_ALERT | A.FILE_SYNCHRONOUS_IO_NONALERT)
    if c.options & A.FILE_WRITE_THROUGH:
        op.mode |= A.FILE_WRITE_THROUGH
    ctx.add_open(op)
    if sx is not None:
        t = _streams_table(ctx)
        t.by_base.setdefault(sx.key, []).append(op)
        t.base_of[op.volatile_id] = sx.key
    req.out_file_id = op.file_id
    if action == A.FILE_CREATED and sx is None:
        # A new entry: leases on the parent directory break (not the creator's own
        # ParentLeaseKey lease).
        caching.dir_changed(ctx, share, comps, req.conn.client_guid, c.contexts)
    elif sx is not None and sx.base_created:
        caching.dir_changed(ctx, share, sx.base_components, req.conn.client_guid, c.contexts)
    if op.delete_on_close and action != A.FILE_CREATED:
        # A delete-on-close open: other leases give up handle caching now, before the
        # close deletes the file under them (smbtorture smb2.lease.unlink).
        try:
            await caching.break_handles(req, op, "delete")
        except BaseException:
            await close_open(ctx, op)
            raise
    if action == A.FILE_CREATED and sx is None and (
            not is_dir or c.attributes & ~A.FILE_ATTRIBUTE_DIRECTORY):
        from .info import store_attributes
        # MS-FSA 2.1.5.1.1: a new non-directory file always gets FILE_ATTRIBUTE_ARCHIVE.
        await store_attributes(ctx, op, c.attributes | (0 if is_dir else A.FILE_ATTRIBUTE_ARCHIVE))
    if action in (A.FILE_SUPERSEDED, A.FILE_OVERWRITTEN) and sx is None and not is_dir:
        # Overwriting or superseding a file's data removes its named streams (Windows).
        from ..fs import streams as fsstreams
        await ctx.run_io(fsstreams.remove_all_streams, root, op.fd)
    if b"ExtA" in c.contexts and action != A.FILE_OPENED:
        # EAs are the file's, not a stream's: a stream CREATE that creates or overwrites
        # the stream adds them to its file (as Samba does), keeping the file's others.
        await _apply_create_eas(ctx, op, c.contexts[b"ExtA"],
                                replace=action != A.FILE_CREATED and sx is None)
    if b"AlSi" in c.contexts and action != A.FILE_OPENED and not is_dir:
        # SMB2_CREATE_ALLOCATION_SIZE: reserve the space, keep EndOfFile (MS-FSA 2.1.5.1).
        # Our own change: the inotify watch must not take it for a foreign write and
        # break the grant just made (smbtorture smb2.durable-open.alloc-size).
        caching.data_changed(ctx, op)
        st = await ctx.run_io(_preallocate, op.fd, struct.unpack("<Q", c.contexts[b"AlSi"])[0])
    contexts = c.contexts
    resp_ctx = []
    if b"MxAc" in contexts:
        maximal = req.tree.maximal_access
        if not is_dir and not st.st_mode & stat_mod.S_IWUSR:
            maximal &= ~(A.FILE_WRITE_DATA | A.FILE_APPEND_DATA)
        resp_ctx.append((b"MxAc", struct.pack("<II", 0, maximal)))
    if sx is not None:
        # Times, ids and attributes are the base file's; sizes are the stream's.
        st = await ctx.run_io(_stream_view, op)
    op.request_name = c.name
    if contexts:
        # Without contexts there is no lease, no durable ask and no AppInstanceId.
        if b"QFid" in contexts:
            resp_ctx.append((b"QFid", struct.pack("<QQ16s", st.st_ino, st.st_dev, b"")))
        resp_ctx += lease_response_context(grant)
        resp_ctx += durable.granted(req, c, op, grant)
    return _create_response(op, st, action, op.oplock_level, resp_ctx)


def _preallocate(fd: int, size: int):
    """fallocate(FALLOC_FL_KEEP_SIZE); the allocation is a hint, so a file system that
    cannot do it just keeps what it has. Returns the new stat. Runs in the I/O pool."""
    global _fallocate
    if size > 0:
        if _fallocate is None:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            _fallocate = libc.fallocate
            _fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
        _fallocate(fd, _FALLOC_FL_KEEP_SIZE, 0, min(size, 1 << 62))
    return fstat_btime(fd)


_fallocate = None
_FALLOC_FL_KEEP_SIZE = 0x01


async def _apply_create_eas(ctx, op: Open, raw: bytes, replace: bool) -> None:
    """The ExtA context's EAs go on a created file; overwrite and supersede replace the
    file's EAs with them (MS-FSA 2.1.5.1.2.1). On failure the open is undone."""
    eas = parse_full_ea_list(raw)
    try:
        fd = op.base_fd if op.stream is not None else op.fd
        await ctx.run_io(replace_eas if replace else write_eas, fd, eas)
    except BaseException:
        await close_open(ctx, op)
        raise


def _create_response(op: Open, st, action: int, oplock: int, contexts) -> bytes:
    ct, at, wt, cht = fsinfo.file_times(st, _info.creation_override(op))
    blob = build_contexts(contexts) if contexts else b""
    ctx_off = 64 + 88 if blob else 0
    body = CREATE_RESP.pack(89, oplock, 0, action, ct, at, wt, cht,
                            fsinfo.allocation_size(st), fsinfo.end_of_file(st),
                            _info.attributes_of(op, st), 0, op.file_id, ctx_off, len(blob))
    return body + (blob or b"\0")


async def _create_pipe(req, c) -> bytes:
    from ..rpc.pipe import open_pipe, ShareInfo
    ctx = req.conn.server
    shares = [ShareInfo(name=s.name, type=0x80000003 if s.is_ipc else 0, remark=s.comment,
                        path=s.path or "") for s in ctx.shares.values()]
    pipe = open_pipe(c.name, shares, ctx.config.server_name)
    if pipe is None:
        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND)
    op = Open(req.tree, req.session, req.conn)
    op.pipe = pipe
    op.name = c.name
    op.granted_access = A.map_generic(c.access) & A.FILE_ALL_ACCESS
    op.share_access = c.share_access
    ctx.add_open(op)
    req.out_file_id = op.file_id
    body = CREATE_RESP.pack(89, 0, 0, A.FILE_OPENED, 0, 0, 0, 0, 4096, 0,
                            A.FILE_ATTRIBUTE_NORMAL, 0, op.file_id, 0, 0)
    return body + b"\0"


# ---- CLOSE ---------------------------------------------------------------------------

def lookup_open(req, raw_file_id: bytes) -> Open:
    fid = req.file_id(raw_file_id) if raw_file_id == RELATED_FILE_ID else raw_file_id
    op = req.conn.server.opens.get(int.from_bytes(fid[8:], "little"))
    if (op is None or op.closed or op.session is not req.session or op.tree is not req.tree
            or op.file_id != fid):
        raise SmbError(NtStatus.FILE_CLOSED)
    return op


async def handle_close(req) -> bytes:
    body = req.body
    if len(body) < CLOSE_REQ.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    size, flags, _r, raw_fid = CLOSE_REQ.unpack_from(body)
    if size != 24:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    op = lookup_open(req, raw_fid)
    ctx = req.conn.server
    st = None
    if flags & CLOSE_FLAG_POSTQUERY_ATTRIB and op.fd >= 0:
        try:
            st = fstat_btime(op.fd)
        except OSError:
            st = None
    if not req.in_compound and _closes_without_io(op):
        # Nothing left can fail or wait, and nothing else runs on the loop before it is
        # done: the reply goes out first and the client's next request is on its way
        # meanwhile (a compound's later requests must see the close, so not there).
        req.after_send = lambda: _close_no_io(ctx, op)
    else:
        await close_open(ctx, op)
    if st is None:
        return _CLOSE_RESP_PLAIN
    from .info import attributes_of, creation_override
    ct, at, wt, cht = fsinfo.file_times(st, creation_override(op))
    return CLOSE_RESP.pack(60, CLOSE_FLAG_POSTQUERY_ATTRIB, 0, ct, at, wt, cht,
                           fsinfo.allocation_size(st), fsinfo.end_of_file(st), attributes_of(op, st))


_CLOSE_RESP_PLAIN = CLOSE_RESP.pack(60, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def _closes_without_io(op: Open) -> bool:
    """close_open of op would run no I/O-pool job and await nothing: no delete, no
    named stream, an fd whose close(2) cannot block (O_PATH or a directory)."""
    fs = op.file
    return (op.fd >= 0 and (op.fd_is_path or op.is_dir) and op.pipe is None
            and not op.delete_on_close and (fs is None or not fs.delete_pending)
            and op.stream is None and op.base_fd < 0)


def _close_no_io(ctx, op: Open) -> None:
    """close_open for an open _closes_without_io accepted (it stays so: nothing ran in
    between). A stream-less open deletes nothing, so _detach says so too."""
    _detach(ctx, op)
    fd, op.fd = op.fd, -1
    os.close(fd)


def _detach(ctx, op: Open) -> tuple[bool, object]:
    """Remove the open from every table; returns (delete the file now?, file state)."""
    op.closed = True
    if op.notify is not None:
        op.notify.cancel(NtStatus.NOTIFY_CLEANUP)
    fs = op.file
    if fs is not None and op.delete_on_close:
        fs.delete_pending = True
        if fs.is_dir:
            notify.delete_pending(fs)
    if fs is not None:
        _lock.release_open_locks(ctx, op)
    caching.closed(ctx, op)
    if op.create_guid:
        durable.forget_guid(ctx, op)
    ctx.remove_open(op)
    if op.base_fd >= 0:
        os.close(op.base_fd)            # O_PATH: nothing to flush, never blocks
        op.base_fd = -1
    delete = fs is not None and fs.delete_pending and not fs.opens
    t = getattr(ctx, "_stream_opens", None)
    if t is not None:
        delete = _detach_streams(ctx, t, op, fs, delete)
    return delete, fs


def _detach_streams(ctx, t: _StreamOpens, op: Open, fs, delete: bool) -> bool:
    """The stream table's part of a close (MS-FSA 2.1.5.4: a file's delete happens when
    the last open of any of its streams closes). A base file whose delete is due while
    some of its streams are open is deferred; the close of its last stream open makes
    it due (_take_due_base). Returns whether this close deletes op's own file now."""
    bkey = t.base_of.pop(op.volatile_id, None)
    if bkey is not None:
        opens = t.by_base.get(bkey)
        if opens is not None:
            try:
                opens.remove(op)
            except ValueError:
                pass
            if not opens:
                del t.by_base[bkey]
                base = t.deferred.pop(bkey, None)
                if base is not None:
                    if ctx.files.get(bkey) is base and not base.opens:
                        del ctx.files[bkey]
                    t.due[op.volatile_id] = base
        return delete
    if delete and fs is not None and t.by_base.get(fs.key):
        # Keep the pending delete visible (DELETE_PENDING) until the streams close.
        t.deferred[fs.key] = fs
        ctx.files.setdefault(fs.key, fs)
        return False
    return delete


def _take_due_base(ctx, op: Open):
    """The base file whose deferred delete op's close made due, or None."""
    t = getattr(ctx, "_stream_opens", None)
    return t.due.pop(op.volatile_id, None) if t is not None and t.due else None


def _finish_close(root, fd: int, delete: bool, comps, is_dir: bool) -> None:
    try:
        if fd >= 0:
            os.close(fd)
    finally:
        if delete and comps:
            from ..fs import streams as fsstreams
            # The file's named streams go with its last name (a stream's own delete
            # removes just its depot file, which has no depot of its own).
            held = fsstreams.hold_depot(root, comps)
            try:
                if is_dir:
                    root.rmdir(comps)
                else:
                    root.unlink(comps)
            except SmbError as e:
                log.info("delete on close of %s failed: %s", "/".join(comps), e)
            finally:
                fsstreams.release_depot(root, held)


def _closes_inline(fd: int, is_dir: bool) -> bool:
    """close(2) that cannot block, done on the event loop: an O_PATH descriptor has no
    file-system flush or release to run, and a directory has no dirty data to flush.
    Regular files' descriptors close in the pool (flush on close on network file
    systems, the last reference's release)."""
    if is_dir:
        return True
    try:
        return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH)
    except OSError:
        return False


async def close_open(ctx, op: Open) -> None:
    delete, fs = _detach(ctx, op)
    if op.pipe is not None:
        op.pipe = None
        return
    fd, op.fd = op.fd, -1
    comps = fs.components if fs is not None else op.components
    if not delete and fd >= 0 and (op.fd_is_path or _closes_inline(fd, op.is_dir)):
        os.close(fd)
    elif delete or fd >= 0:
        await ctx.run_io(_finish_close, op.tree.share.root, fd, delete, comps, op.is_dir)
    if delete:
        caching.dir_changed(ctx, op.tree.share, comps, op.conn.client_guid)
    base = _take_due_base(ctx, op)
    if base is not None:
        # The last open stream of a file deleted meanwhile: the file goes now.
        await ctx.run_io(_finish_close, base.share.root, -1, True, base.components, base.is_dir)
        caching.dir_changed(ctx, base.share, base.components, op.conn.client_guid)


def close_open_now(ctx, op: Open) -> None:
    """Close without awaiting (logoff, disconnect, tree disconnect, shutdown)."""
    if op.closed:
        return
    delete, fs = _detach(ctx, op)
    if op.pipe is not None:
        op.pipe = None
        return
    fd, op.fd = op.fd, -1
    comps = fs.components if fs is not None else op.components
    base = _take_due_base(ctx, op)
    if delete or fd >= 0 or base is not None:
        try:
            ctx.executor.submit(_finish_close_now, op.tree.share.root, fd, delete, comps,
                                op.is_dir, base)
        except RuntimeError:          # executor already shut down
            _finish_close_now(op.tree.share.root, fd, delete, comps, op.is_dir, base)


def _finish_close_now(root, fd: int, delete: bool, comps, is_dir: bool, base) -> None:
    """close_open_now's I/O: the open's close, then a base file's deferred delete."""
    try:
        _finish_close(root, fd, delete, comps, is_dir)
    finally:
        if base is not None:
            _finish_close(base.share.root, -1, True, base.components, base.is_dir)


# These modules import this one (lookup_open), so they are bound here, once the names
# they need exist, instead of by an import statement on every CREATE and CLOSE.
from . import info as _info, lock as _lock  # noqa: E402
