"""SET_INFO for InfoType FILE (MS-SMB2 3.3.5.21.1, MS-FSA 2.1.5.15): times and
attributes, end of file, allocation, position, mode, rename and delete disposition."""
from __future__ import annotations

import os
import stat as stat_mod

from ..fs import info as fsinfo
from ..fs.info import FileInfoClass as FIC
from ..fs.timeconv import filetime_to_unix_ns
from ..wire import access as A
from ..wire.status import NtStatus, SmbError
from .create import share_conflict
from .info import _SET_NEEDS, _fd_path, _mark_parent, _significant, meta_fd, store_attributes


async def set_file_info(req, op, klass: int, buf: bytes) -> None:
    if klass not in _SET_NEEDS:
        if klass in fsinfo.FileInfoClass._value2member_map_:
            raise SmbError(NtStatus.INVALID_INFO_CLASS)
        raise SmbError(NtStatus.INVALID_INFO_CLASS)
    need = _SET_NEEDS[klass]
    if need and not op.granted_access & need:
        if klass in (FIC.FileEndOfFileInformation, FIC.FileAllocationInformation) and \
                op.granted_access & A.FILE_APPEND_DATA:
            pass
        else:
            raise SmbError(NtStatus.ACCESS_DENIED)
    ctx = req.conn.server
    if klass == FIC.FileFullEaInformation:
        from ..fs import ea as fsea
        await ctx.run_io(fsea.write_eas, meta_fd(op), fsea.parse_full_ea_list(buf))
        return
    value = fsinfo.decode_set_info(klass, buf)
    if klass == FIC.FileBasicInformation:
        await _set_basic(ctx, op, value)
    elif klass == FIC.FileEndOfFileInformation:
        if op.is_dir:
            raise SmbError(NtStatus.INVALID_PARAMETER)
        from .lock import check_io_conflict
        from . import caching
        caching.data_changed(ctx, op)
        await ctx.run_io(os.ftruncate, op.fd, value)
        if op.stream is not None:
            from .io import touch_base      # a stream's size change is its file's write
            await ctx.run_io(touch_base, op.base_fd)
    elif klass == FIC.FileAllocationInformation:
        if op.is_dir:
            raise SmbError(NtStatus.INVALID_PARAMETER)
        from . import caching
        caching.data_changed(ctx, op)
        st = await ctx.run_io(os.fstat, op.fd)
        if value < st.st_size:
            await ctx.run_io(os.ftruncate, op.fd, value)
    elif klass == FIC.FilePositionInformation:
        op.position = value
    elif klass == FIC.FileModeInformation:
        op.mode = value
    elif klass in (FIC.FileDispositionInformation, FIC.FileDispositionInformationEx):
        await _set_disposition(ctx, op, value, req)
    elif klass == FIC.FileRenameInformation:
        await _rename(req, op, value)
    elif klass == FIC.FileLinkInformation:
        await _link(req, op, value)


def _utime(fd: int, atime_ns: int | None, mtime_ns: int | None) -> None:
    st = os.stat(_fd_path(fd))
    os.utime(_fd_path(fd), ns=(atime_ns if atime_ns is not None else st.st_atime_ns,
                               mtime_ns if mtime_ns is not None else st.st_mtime_ns))


def _time_value(v: int) -> int | None:
    # 0: leave alone; -1/-2: stop/resume automatic updates (no POSIX equivalent).
    if v in (0, -1, -2):
        return None
    if v < -2:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    return filetime_to_unix_ns(v)


async def _set_basic(ctx, op, v) -> None:
    atime, mtime = _time_value(v.last_access_time), _time_value(v.last_write_time)
    creation = _time_value(v.creation_time)
    _time_value(v.change_time)
    if v.file_attributes or creation is not None:
        attrs = v.file_attributes
        if attrs & ~A.FILE_ATTRIBUTE_VALID_SET_FLAGS & ~A.FILE_ATTRIBUTE_DIRECTORY & ~A.FILE_ATTRIBUTE_NORMAL:
            raise SmbError(NtStatus.INVALID_PARAMETER)
        if attrs & A.FILE_ATTRIBUTE_DIRECTORY and not op.is_dir:
            raise SmbError(NtStatus.INVALID_PARAMETER)
        # MS-FSA 2.1.5.14.2: a directory cannot be made temporary.
        if attrs & A.FILE_ATTRIBUTE_TEMPORARY and op.is_dir:
            raise SmbError(NtStatus.INVALID_PARAMETER)
        if op.tree.share.read_only:
            raise SmbError(NtStatus.ACCESS_DENIED)
        # Linux cannot set a birth time: a client's creation time is stored beside the
        # DOS attributes (protocol.info) and reported from then on.
        await store_attributes(ctx, op, attrs or None, creation)
    if atime is not None or mtime is not None:
        if op.tree.share.read_only:
            raise SmbError(NtStatus.ACCESS_DENIED)
        await ctx.run_io(_utime, meta_fd(op), atime, mtime)


def _dir_is_empty(fd: int) -> bool:
    with os.scandir(_fd_path(fd)) as it:
        for _ in it:
            return False
    return True


async def _set_disposition(ctx, op, v, req=None) -> None:
    fs = op.file
    if fs is None:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if v.delete_pending:
        if op.tree.share.read_only:
            raise SmbError(NtStatus.ACCESS_DENIED)
        st = await ctx.run_io(os.fstat, meta_fd(op))
        if not op.is_dir and not stat_mod.S_ISDIR(st.st_mode) and \
                not st.st_mode & stat_mod.S_IWUSR and not v.flags & 0x10:
            # FILE_DISPOSITION_IGNORE_READONLY_ATTRIBUTE (0x10) lets a read-only file go.
            raise SmbError(NtStatus.CANNOT_DELETE)
        if op.is_dir and not await ctx.run_io(_dir_is_empty, op.fd):
            raise SmbError(NtStatus.DIRECTORY_NOT_EMPTY)
        if req is not None:
            # Other leases drop handle caching before the delete is pending.
            from . import caching
            await caching.break_handles(req, op, "delete")
        fs.delete_pending = True
        if fs.is_dir:
            from .notify import delete_pending
            delete_pending(fs)
    else:
        fs.delete_pending = False
        for o in fs.opens:
            o.delete_on_close = False


async def _rename(req, op, v) -> None:
    ctx = req.conn.server
    share = op.tree.share
    root = share.root
    if share.read_only:
        raise SmbError(NtStatus.ACCESS_DENIED)
    if v.root_directory:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    name = v.file_name
    if not name:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if op.stream is not None:
        if not name.startswith(":"):
            # A path target ("dir\\file:stream"): like any path rename it first opens the
            # target's directory (the sharing check below; smb2.streams.rename2 expects
            # SHARING_VIOLATION from it); a stream moves only within its file (":new").
            new, _ = root.split_stream(name)
            _check_dst_dir_sharing(ctx, share, tuple(new[:-1]))
            raise SmbError(NtStatus.INVALID_PARAMETER, "a stream is renamed to a stream")
        await _rename_stream(ctx, op, name, v.replace_if_exists)
        return
    if name.startswith(":"):
        # Renaming the unnamed data stream into a named one is not implemented.
        raise SmbError(NtStatus.NOT_SUPPORTED, "default stream rename")
    new = root.split(name)
    if not new:
        raise SmbError(NtStatus.ACCESS_DENIED)
    fs = op.file
    old = fs.components
    if not old:
        raise SmbError(NtStatus.ACCESS_DENIED)
    if op.is_dir:
        prefix = old
        for other in list(ctx.files.values()):
            if other is not fs and other.components[:len(prefix)] == prefix and other.opens:
                # Windows refuses to rename a directory with open files below it.
                raise SmbError(NtStatus.ACCESS_DENIED)
    # The rename opens the destination's directory without FILE_SHARE_DELETE: any open
    # of that directory with DELETE access is a sharing violation (Windows; Samba
    # parent_dirname_compatible_open; smbtorture smb2.oplock.exclusive6, batch19/20).
    _check_dst_dir_sharing(ctx, share, tuple(new[:-1]))
    # Other leases on the file give up handle caching (and the rename waits for their
    # acks) before the name changes under them; the breaks go out
    # before this request yields to the next one (smb2.lease.rename_wait).
    from . import caching
    await caching.break_handles(req, op, "rename")
    # The target, if it exists and is another file, must not be open (MS-FSA 2.1.5.15.12).
    try:
        tgt = await ctx.run_io(root.stat, new)
    except SmbError as e:
        if e.status not in (NtStatus.OBJECT_NAME_NOT_FOUND,):
            raise
        tgt = None
    if tgt is not None and (tgt.st_dev, tgt.st_ino) != fs.key:
        if not v.replace_if_exists:
            raise SmbError(NtStatus.OBJECT_NAME_COLLISION)
        if stat_mod.S_ISDIR(tgt.st_mode):
            raise SmbError(NtStatus.ACCESS_DENIED)
        tfs = ctx.files.get((tgt.st_dev, tgt.st_ino))
        if tfs is not None and tfs.opens:
            raise SmbError(NtStatus.ACCESS_DENIED)
    same_file = tgt is not None and (tgt.st_dev, tgt.st_ino) == fs.key
    if tgt is not None and not same_file:
        new_comps = await ctx.run_io(_rename_over, root, old, new)
    else:
        new_comps = await ctx.run_io(root.rename, old, new, v.replace_if_exists or same_file)
    new_comps = tuple(new_comps) if new_comps else tuple(new)
    # Both directories changed: their leases break (directory leases).
    caching.dir_changed(ctx, share, tuple(old), req.conn.client_guid)
    if tuple(old[:-1]) != new_comps[:-1]:
        caching.dir_changed(ctx, share, new_comps, req.conn.client_guid)
        if fs.attributes is not None and _significant(fs.attributes, fs.is_dir):
            # Its stored attributes moved with it: the new directory's listings read them.
            await ctx.run_io(_mark_parent, root, new_comps)
    fs.components = new_comps
    for o in fs.opens:
        o.components = new_comps
    if op.is_dir:
        n = len(old)
        for other in ctx.files.values():
            if other is not fs and other.components[:n] == old:
                other.components = new_comps + other.components[n:]


def _check_dst_dir_sharing(ctx, share, dst_parent: tuple) -> None:
    """A rename opens the destination's directory to add an entry (FILE_ADD_FILE, the
    FILE_WRITE_DATA bit) sharing read and write, not delete, as Windows does: an open
    of that directory with DELETE access, or with data access that does not share
    writing, is a sharing violation (smbtorture smb2.rename.*_delete_* and msword:
    an attributes-only open conflicts with nothing)."""
    for pfs in list(ctx.files.values()):
        if pfs.is_dir and pfs.share is share and tuple(pfs.components) == dst_parent and \
                share_conflict(pfs, A.FILE_WRITE_DATA, A.FILE_SHARE_READ | A.FILE_SHARE_WRITE):
            raise SmbError(NtStatus.SHARING_VIOLATION)


def _rename_over(root, old, new):
    """Rename replacing another file: the replaced file's named streams (fs.streams) go
    with its last name, as with a delete. Runs in the I/O pool."""
    from ..fs import streams as fsstreams
    held = fsstreams.hold_depot(root, new)
    try:
        return root.rename(old, new, True)
    finally:
        fsstreams.release_depot(root, held)


def _rename_stream_at(root, comps, new_name: str, replace: bool):
    """Rename a stream file within its depot (fs.streams); returns its new components.
    MS-FSA 2.1.5.15.12.1: an existing target is a collision unless replacing, and only
    an empty target may be replaced. Runs in the I/O pool."""
    from ..fs.paths import _smb_error
    from ..fs.streams import find_stream
    did = comps[-2]
    have = find_stream(root, did, new_name)
    if have is not None and have != comps[-1]:
        if not replace:
            raise SmbError(NtStatus.OBJECT_NAME_COLLISION)
        if root.stat(comps[:-1] + (have,)).st_size:
            raise SmbError(NtStatus.INVALID_PARAMETER, "target stream not empty")
    pfd = root.open(comps[:-1], os.O_PATH | os.O_DIRECTORY)
    try:
        if have is not None and have != comps[-1] and have != new_name:
            os.unlink(have, dir_fd=pfd)       # replaced under its own spelling
        os.rename(comps[-1], new_name, src_dir_fd=pfd, dst_dir_fd=pfd)
    except OSError as e:
        raise _smb_error(e) from None
    finally:
        os.close(pfd)
    return tuple(comps[:-1]) + (new_name,)


async def _rename_stream(ctx, op, name: str, replace: bool) -> None:
    """FileRenameInformation on a stream open: the target must be ":new[:$DATA]"."""
    from ..fs.paths import split_stream_path
    if not name.startswith(":"):
        raise SmbError(NtStatus.INVALID_PARAMETER, "a stream is renamed to a stream")
    _, new_stream = split_stream_path("x" + name)
    if new_stream is None:
        raise SmbError(NtStatus.NOT_SUPPORTED, "rename of a stream to the unnamed stream")
    fs = op.file
    for other in list(ctx.files.values()):
        if other is not fs and other.opens and tuple(other.components[:-1]) == tuple(fs.components[:-1]) \
                and other.components[-1].casefold() == new_stream.casefold():
            raise SmbError(NtStatus.ACCESS_DENIED, "target stream is open")
    new = await ctx.run_io(_rename_stream_at, op.tree.share.root, tuple(fs.components),
                           new_stream, replace)
    fs.components = new
    for o in fs.opens:
        o.components = new
        o.stream = new[-1]


def _link_at(fd: int, dst_dir_fd: int, dst_name: str, replace: bool) -> None:
    """Hard-links the open file itself (not whatever its name points at now) through its
    /proc/self/fd magic link; replacing is atomic: link to a temporary name, then rename."""
    src = f"/proc/self/fd/{fd}"
    try:
        if not replace:
            os.link(src, dst_name, dst_dir_fd=dst_dir_fd, follow_symlinks=True)
            return
        tmp = f".smbd_py-link-{os.getpid()}-{fd}-{os.urandom(4).hex()}"
        os.link(src, tmp, dst_dir_fd=dst_dir_fd, follow_symlinks=True)
        try:
            os.rename(tmp, dst_name, src_dir_fd=dst_dir_fd, dst_dir_fd=dst_dir_fd)
        except BaseException:
            os.unlink(tmp, dir_fd=dst_dir_fd)
            raise
    except OSError as e:
        from ..fs.paths import _smb_error
        raise _smb_error(e) from None


async def _link(req, op, v) -> None:
    """FileLinkInformation (MS-FSA 2.1.5.15.6): a new name for the open file."""
    ctx = req.conn.server
    share = op.tree.share
    root = share.root
    if share.read_only:
        raise SmbError(NtStatus.ACCESS_DENIED)
    if op.is_dir:
        raise SmbError(NtStatus.FILE_IS_A_DIRECTORY)
    if v.root_directory or op.stream is not None:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if not v.file_name:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    new = root.split(v.file_name)
    if not new:
        raise SmbError(NtStatus.ACCESS_DENIED)
    fs = op.file
    try:
        tgt = await ctx.run_io(root.stat, new, False)
    except SmbError as e:
        if e.status != NtStatus.OBJECT_NAME_NOT_FOUND:
            raise
        tgt = None
    if tgt is not None:
        if not v.replace_if_exists:
            raise SmbError(NtStatus.OBJECT_NAME_COLLISION)
        if stat_mod.S_ISDIR(tgt.st_mode):
            raise SmbError(NtStatus.ACCESS_DENIED)
        if (tgt.st_dev, tgt.st_ino) == fs.key:
            return  # already a name of this file
        tfs = ctx.files.get((tgt.st_dev, tgt.st_ino))
        if tfs is not None and tfs.opens:
            raise SmbError(NtStatus.ACCESS_DENIED)
    dfd, dst_name = await ctx.run_io(root.open_parent, new)
    try:
        if tgt is None:
            await ctx.run_io(_link_at, op.fd, dfd, dst_name, False)
        else:
            await ctx.run_io(_link_over, root, new, op.fd, dfd, dst_name)
    finally:
        os.close(dfd)


def _link_over(root, new, fd: int, dfd: int, dst_name: str) -> None:
    """_link_at replacing another file, whose streams go with its last name."""
    from ..fs import streams as fsstreams
    held = fsstreams.hold_depot(root, new)
    try:
        _link_at(fd, dfd, dst_name, True)
    finally:
        fsstreams.release_depot(root, held)
