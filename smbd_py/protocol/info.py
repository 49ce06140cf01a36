"""QUERY_INFO and SET_INFO (MS-SMB2 3.3.5.20, 3.3.5.21): file, filesystem and security
information, and the changes a client may make (times, attributes, size, rename, delete)."""
from __future__ import annotations

import errno
import os
import stat as stat_mod
import struct

from ..fs import ea as fsea
from ..fs import info as fsinfo
from ..fs.info import FileInfoClass as FIC
from ..fs.paths import fstat_btime   # statx: CreationTime is the birth time
from ..fs.timeconv import filetime_to_unix_ns, unix_ns_to_filetime
from ..wire import access as A
from ..wire.status import NtStatus, SmbError
from .create import lookup_open

QI_REQ = struct.Struct("<HBBIHHIII16s")     # 40 bytes
QI_RESP = struct.Struct("<HHI")
SI_REQ = struct.Struct("<HBBIHHI16s")       # 32 bytes
INFO_FILE, INFO_FILESYSTEM, INFO_SECURITY, INFO_QUOTA = 1, 2, 3, 4
ATTR_XATTR = "user.smbd_py.dosattrib"
# Attributes we keep in an xattr; READONLY lives in the mode bits, DIRECTORY in the type.
STORED_ATTRIBUTES = (A.FILE_ATTRIBUTE_HIDDEN | A.FILE_ATTRIBUTE_SYSTEM | A.FILE_ATTRIBUTE_ARCHIVE |
                     A.FILE_ATTRIBUTE_TEMPORARY | A.FILE_ATTRIBUTE_OFFLINE |
                     A.FILE_ATTRIBUTE_NOT_CONTENT_INDEXED)

# What each file class needs (MS-SMB2 3.3.5.20.1 / MS-FSA 2.1.5.12).
_QUERY_NEEDS = {
    FIC.FileBasicInformation: A.FILE_READ_ATTRIBUTES,
    FIC.FileAllInformation: A.FILE_READ_ATTRIBUTES,
    FIC.FileNetworkOpenInformation: A.FILE_READ_ATTRIBUTES,
    FIC.FileAttributeTagInformation: A.FILE_READ_ATTRIBUTES,
    FIC.FileEaInformation: 0,
    FIC.FileStreamInformation: 0,
    FIC.FileFullEaInformation: A.FILE_READ_EA,
}
# Classes whose answer includes the EA size (read from the xattrs on demand).
_NEEDS_EA_SIZE = (FIC.FileEaInformation, FIC.FileAllInformation)
SL_RETURN_SINGLE_ENTRY = 0x02
_SET_NEEDS = {
    FIC.FileBasicInformation: A.FILE_WRITE_ATTRIBUTES,
    FIC.FileRenameInformation: A.DELETE,
    FIC.FileDispositionInformation: A.DELETE,
    FIC.FileDispositionInformationEx: A.DELETE,
    FIC.FileEndOfFileInformation: A.FILE_WRITE_DATA,
    FIC.FileAllocationInformation: A.FILE_WRITE_DATA,
    FIC.FilePositionInformation: 0,
    FIC.FileModeInformation: 0,
    FIC.FileLinkInformation: 0,
    FIC.FileFullEaInformation: A.FILE_WRITE_EA,
}


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


# The xattr's value: DOS attributes (4 bytes LE), then optionally a creation time a
# client set (8 bytes LE, Unix ns): Linux cannot set a birth time, so it is kept here
# as Samba keeps it in user.DOSATTRIB, and it moves with the inode across renames.
# A time the ns field cannot say - exactly 1970-01-01 (0 there means "none") or beyond
# year 2262 (FILETIME goes to 30828) - leaves it 0 and follows as a FILETIME (8 bytes LE).
_CREATION = struct.Struct("<q")
_CREATION_FILETIME = struct.Struct("<Q")
_NS_MIN, _NS_MAX = -(1 << 63), (1 << 63) - 1


def _pack_creation(creation_ns: int) -> bytes:
    if creation_ns and _NS_MIN <= creation_ns <= _NS_MAX:
        return _CREATION.pack(creation_ns)
    return _CREATION.pack(0) + _CREATION_FILETIME.pack(unix_ns_to_filetime(creation_ns))
# On a directory: some entry holds stored attributes or a creation time that differ
# from what its mode and name give, so a listing must read each entry's xattr. Without
# it a listing costs no xattr read per entry.
DIR_MARK_XATTR = "user.smbd_py.dosattrib_in"


class StoredAttributes(int):
    """Stored DOS attributes that also carry a client-set creation time (creation_ns).
    An int, so it travels wherever stored attributes do (FileState.attributes,
    Open.base_attributes, create's stored cache) and every bit test works unchanged."""

    def __new__(cls, attrs: int, creation_ns: int) -> "StoredAttributes":
        o = int.__new__(cls, attrs)
        o.creation_ns = creation_ns
        return o


def parse_stored(v: bytes) -> int | None:
    if len(v) < 4:
        return None
    attrs = int.from_bytes(v[:4], "little")
    if len(v) >= 12:
        (creation,) = _CREATION.unpack_from(v, 4)
        if creation:
            return StoredAttributes(attrs, creation)
        if len(v) >= 20:
            (ft,) = _CREATION_FILETIME.unpack_from(v, 12)
            return StoredAttributes(attrs, filetime_to_unix_ns(ft))
    return attrs


def read_stored_attributes(fd: int) -> int | None:
    try:
        v = os.getxattr(_fd_path(fd), ATTR_XATTR)
    except OSError:
        return None
    return parse_stored(v)


def creation_override(op) -> int | None:
    """The creation time (Unix ns) a client set on the open's file, or None: it then
    is the file's birth time (fs.info.creation_ns)."""
    if getattr(op, "stream", None) is not None:
        stored = op.base_attributes
    else:
        stored = op.file.attributes if op.file is not None else None
    return getattr(stored, "creation_ns", None)


def _combine(st, name: str, stored: int | None, is_dir: bool) -> int:
    attrs = fsinfo.dos_attributes(st, name, stored=stored)
    if stored is not None and not is_dir and not st.st_mode & stat_mod.S_IWUSR:
        attrs |= A.FILE_ATTRIBUTE_READONLY
        attrs &= ~A.FILE_ATTRIBUTE_NORMAL
    return attrs


def attributes_of(op, st) -> int:
    if getattr(op, "stream", None) is not None:
        # A stream has its file's attributes (st is then an fs.streams.StreamStat).
        name = op.base_components[-1] if op.base_components else ""
        return _combine(st, name, op.base_attributes, False)
    fs = op.file
    stored = getattr(fs, "attributes", None) if fs is not None else None
    name = op.components[-1] if op.components else ""
    return _combine(st, name, stored, stat_mod.S_ISDIR(st.st_mode))


def listing_attributes(dir_fd: int, name: str, st) -> int | None:
    """fs.dirinfo's attributes_of for directories marked with DIR_MARK_XATTR: the
    attributes QUERY_INFO reports for the entry (a StoredAttributes when a creation
    time was set), or None when the entry stores nothing (then derived as usual)."""
    try:
        v = os.getxattr(f"/proc/self/fd/{dir_fd}/{name}", ATTR_XATTR, follow_symlinks=False)
    except OSError:
        return None
    stored = parse_stored(v)
    if stored is None:
        return None
    attrs = _combine(st, name, stored, stat_mod.S_ISDIR(st.st_mode))
    creation = getattr(stored, "creation_ns", None)
    return StoredAttributes(attrs, creation) if creation is not None else attrs


def dir_is_marked(fd: int) -> bool:
    """Whether a listing of the directory must read its entries' xattrs."""
    try:
        os.getxattr(_fd_path(fd), DIR_MARK_XATTR)
    except OSError:
        return False
    return True


def _mark_parent(root, components) -> None:
    """Mark the directory holding `components` (DIR_MARK_XATTR), once. I/O pool."""
    if not components:
        return
    try:
        dfd = root.open_dir(tuple(components[:-1]))
    except SmbError:
        return
    try:
        if not dir_is_marked(dfd):
            os.setxattr(_fd_path(dfd), DIR_MARK_XATTR, b"1")
    except OSError:
        pass        # no user xattrs here: listings derive attributes as before
    finally:
        os.close(dfd)


def _significant(keep: int, is_dir: bool) -> bool:
    """Stored attributes a listing would not derive by itself from mode and name."""
    return getattr(keep, "creation_ns", None) is not None or \
        keep != (0 if is_dir else A.FILE_ATTRIBUTE_ARCHIVE)


def _apply_attributes(fd: int, attrs: int, is_dir: bool, creation_ns: int | None = None) -> int:
    """Persist DOS attributes: READONLY as the write bits, the rest in an xattr (with
    the creation time a client set, if any). Returns what is stored."""
    path = _fd_path(fd)
    st = os.stat(path)
    if not is_dir:
        mode = st.st_mode & 0o7777
        if attrs & A.FILE_ATTRIBUTE_READONLY:
            new = mode & ~0o222
        else:
            new = mode | 0o200 if not mode & 0o200 else mode
        if new != mode:
            os.chmod(path, new)
    keep = attrs & STORED_ATTRIBUTES
    value = keep.to_bytes(4, "little")
    if creation_ns is not None:
        value += _pack_creation(creation_ns)
        keep = StoredAttributes(keep, creation_ns)
    try:
        os.setxattr(path, ATTR_XATTR, value)
    except OSError as e:
        if e.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
            raise
    return keep


def meta_fd(op) -> int:
    """The fd whose times and attributes an open reports and sets: the base file's for a
    named-stream open (streams share their file's metadata), else the open's own."""
    return op.base_fd if getattr(op, "stream", None) is not None else op.fd


async def store_attributes(ctx, op, attrs: int | None, creation_ns: int | None = None) -> None:
    """Store DOS attributes (None: keep the current ones) and, when given, a creation
    time; a creation time set before is kept."""
    if op.fd < 0 or op.file is None:
        return
    root = op.tree.share.root
    if op.stream is not None:
        base_st = await ctx.run_io(os.fstat, op.base_fd)
        base_is_dir = stat_mod.S_ISDIR(base_st.st_mode)
        if attrs is None:
            attrs = attributes_of(op, base_st)
        if creation_ns is None:
            creation_ns = getattr(op.base_attributes, "creation_ns", None)
        op.base_attributes = await ctx.run_io(_apply_attributes, op.base_fd, attrs, base_is_dir,
                                              creation_ns)
        base_fs = ctx.files.get(_key_of(op))
        if base_fs is not None:
            base_fs.attributes = op.base_attributes
        if _significant(op.base_attributes, base_is_dir):
            await ctx.run_io(_mark_parent, root, op.base_components)
        return
    if attrs is None:
        attrs = attributes_of(op, await ctx.run_io(os.fstat, op.fd))
    if creation_ns is None:
        creation_ns = getattr(op.file.attributes, "creation_ns", None)
    keep = await ctx.run_io(_apply_attributes, op.fd, attrs, op.is_dir, creation_ns)
    op.file.attributes = keep
    if _significant(keep, op.is_dir):
        await ctx.run_io(_mark_parent, root, op.file.components)


def _key_of(op):
    st = os.fstat(op.base_fd)          # O_PATH fstat: no I/O beyond the inode in memory
    return (st.st_dev, st.st_ino)


def _stream_name(op) -> str:
    """FileNameInformation's name of a stream open: the file's name plus ':stream'."""
    return fsinfo.smb_full_name(op.base_components) + ":" + op.stream


def _open_state(op, st, ea_size: int = 0) -> fsinfo.OpenState:
    if op.stream is not None:
        name = _stream_name(op)
    else:
        name = fsinfo.smb_full_name(op.file.components if op.file else op.components)
    return fsinfo.OpenState(name=name,
                            attributes=attributes_of(op, st),
                            delete_pending=bool(op.file and op.file.delete_pending),
                            position=op.position, mode=op.mode, access_mask=op.granted_access,
                            ea_size=ea_size, btime_ns=creation_override(op))


def _query_full_ea(eas: list, wanted: bytes, flags: int, out_len: int) -> tuple[int, bytes]:
    """FileFullEaInformation (MS-FSA 2.1.5.12.x): the EAs named in the input
    FILE_GET_EA_INFORMATION list (an absent one comes back with an empty value), or all
    of them; as many whole entries as fit. Like Samba, every query starts at the first EA."""
    if wanted:
        by_name = {ea.name.upper(): ea for ea in eas}
        eas = [by_name.get(n.upper(), fsea.Ea(0, n, b"")) for n in fsea.parse_get_ea_list(wanted)]
    elif not eas:
        raise SmbError(NtStatus.NO_EAS_ON_FILE)
    if flags & SL_RETURN_SINGLE_ENTRY:
        eas = eas[:1]
    data, count = fsea.entries_that_fit(eas, out_len)
    if count == 0:
        raise SmbError(NtStatus.BUFFER_TOO_SMALL)
    return (NtStatus.SUCCESS if count == len(eas) else NtStatus.BUFFER_OVERFLOW), data


async def handle_query_info(req) -> bytes:
    body = req.body
    if len(body) < QI_REQ.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    (size, info_type, klass, out_len, in_off, _r, in_len, add_info, flags, raw_fid) = QI_REQ.unpack_from(body)
    if size != 41:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    op = lookup_open(req, raw_fid)
    conn = req.conn
    if out_len > conn.max_transact:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    ctx = conn.server
    if op.pipe is not None:
        if info_type == INFO_FILE and klass == FIC.FileStandardInformation:
            buf = struct.pack("<qqIBBH", 4096, 0, 1, 1, 0, 0)
            status, data = fsinfo.fit_file_info(klass, buf, out_len)
            return _qi_response(req, status, data)
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if info_type == INFO_FILE:
        need = _QUERY_NEEDS.get(klass, 0)
        if need and not op.granted_access & need:
            raise SmbError(NtStatus.ACCESS_DENIED)
        if klass == FIC.FileNormalizedNameInformation and conn.dialect < 0x0311:
            # MS-SMB2 3.3.5.20.1: only 3.1.1 offers it.
            raise SmbError(NtStatus.NOT_SUPPORTED)
        if klass == FIC.FileFullEaInformation:
            eas = await ctx.run_io(fsea.read_eas, meta_fd(op))
            wanted = bytes(req.raw[in_off:in_off + in_len]) if in_len else b""
            status, data = _query_full_ea(eas, wanted, flags, out_len)
            return _qi_response(req, status, data)
        ea_size = 0
        if klass in _NEEDS_EA_SIZE:
            ea_size = fsea.ea_size(await ctx.run_io(fsea.read_eas, meta_fd(op)))
        if op.stream is not None:
            from .create import _stream_view
            st = await ctx.run_io(_stream_view, op)
        else:
            st = await ctx.run_io(fstat_btime, op.fd)
        if klass == FIC.FileStreamInformation:
            from ..fs import streams as fsstreams
            named = await ctx.run_io(fsstreams.list_streams, op.tree.share.root, meta_fd(op))
            base_st = st if op.stream is None else await ctx.run_io(os.fstat, op.base_fd)
            buf = fsinfo.encode_stream(base_st, named=named)
        else:
            buf = fsinfo.query_file_info(klass, st, _open_state(op, st, ea_size))
        status, data = fsinfo.fit_file_info(klass, buf, out_len)
    elif info_type == INFO_FILESYSTEM:
        vfs = await ctx.run_io(os.fstatvfs, op.fd)
        share = op.tree.share
        facts = fsinfo.VolumeFacts(label=share.name, serial=hash(share.path) & 0xFFFFFFFF,
                                   read_only=share.read_only)
        buf = fsinfo.query_fs_info(klass, vfs, facts)
        status, data = fsinfo.fit_fs_info(klass, buf, out_len)
    elif info_type == INFO_SECURITY:
        if not op.granted_access & A.READ_CONTROL:
            raise SmbError(NtStatus.ACCESS_DENIED)
        from ..fs.secdesc import build_sd
        st = await ctx.run_io(os.fstat, op.fd)
        buf = build_sd(st, add_info)
        if len(buf) > out_len:
            # MS-SMB2 3.3.5.20.3: say how much is needed.
            raise SmbError(NtStatus.BUFFER_TOO_SMALL, data=struct.pack("<I", len(buf)))
        status, data = NtStatus.SUCCESS, buf
    elif info_type == INFO_QUOTA:
        raise SmbError(NtStatus.NOT_SUPPORTED)
    else:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if status == NtStatus.INFO_LENGTH_MISMATCH:
        raise SmbError(status)
    return _qi_response(req, status, data)


def _chmod_from_dacl(fd: int, dacl) -> None:
    from ..fs import secdesc
    st = os.fstat(fd)
    if dacl is None:
        perms = 0o777  # a NULL DACL grants everyone everything (MS-DTYP 2.4.6)
    else:
        perms = secdesc.dacl_to_mode(dacl, secdesc.uid_to_sid(st.st_uid), secdesc.gid_to_sid(st.st_gid))
    mode = (st.st_mode & 0o7000) | perms
    if mode != stat_mod.S_IMODE(st.st_mode):
        try:
            os.chmod(_fd_path(fd), mode)
        except PermissionError:
            raise SmbError(NtStatus.ACCESS_DENIED) from None


def _qi_response(req, status: int, data: bytes) -> bytes:
    req.status = status
    return QI_RESP.pack(9, 64 + 8, len(data)) + (data or b"\0")


async def handle_set_info(req) -> bytes:
    body = req.body
    if len(body) < SI_REQ.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    size, info_type, klass, buf_len, buf_off, _r, add_info, raw_fid = SI_REQ.unpack_from(body)
    if size != 33:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    raw = req.raw
    if buf_len > req.conn.max_transact or (buf_len and buf_off + buf_len > len(raw)):
        raise SmbError(NtStatus.INVALID_PARAMETER)
    buf = bytes(raw[buf_off:buf_off + buf_len])
    op = lookup_open(req, raw_fid)
    if op.pipe is not None:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    ctx = req.conn.server
    if info_type == INFO_FILE:
        from . import setinfo
        await setinfo.set_file_info(req, op, klass, buf)
    elif info_type == INFO_FILESYSTEM:
        raise SmbError(NtStatus.ACCESS_DENIED if op.tree.share.read_only else NtStatus.NOT_SUPPORTED)
    elif info_type == INFO_SECURITY:
        if not op.granted_access & (A.WRITE_DAC | A.WRITE_OWNER):
            raise SmbError(NtStatus.ACCESS_DENIED)
        from ..fs import secdesc
        try:
            sd = secdesc.parse_sd(buf)
        except SmbError:
            raise
        except Exception:
            raise SmbError(NtStatus.INVALID_PARAMETER) from None
        # Permissions stay POSIX: owner and group are kept, a DACL becomes the rwx bits
        # (what a client reads back next), so a cifsacl chmod is not silently lost.
        if add_info & secdesc.DACL_SECURITY_INFORMATION and sd.control & secdesc.SE_DACL_PRESENT:
            if not op.granted_access & A.WRITE_DAC:
                raise SmbError(NtStatus.ACCESS_DENIED)
            if op.tree.share.read_only:
                raise SmbError(NtStatus.ACCESS_DENIED)
            await ctx.run_io(_chmod_from_dacl, op.fd, sd.dacl)
    elif info_type == INFO_QUOTA:
        raise SmbError(NtStatus.NOT_SUPPORTED)
    else:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    return b"\x02\x00"
