"""SMB2 QUERY_INFO / SET_INFO file and filesystem information (MS-FSCC 2.4, 2.5).

Owns the mapping from POSIX (os.stat_result, os.statvfs_result) to the FILE_* and
FILE_FS_* structures, the decoders for SET_INFO input buffers, DOS attributes
derived from POSIX modes, and the MS-SMB2 3.3.5.20.1 output-length rules (fit()).
"""
from __future__ import annotations

import enum
import stat as stat_mod
import struct
from typing import NamedTuple

from smbd_py.fs.timeconv import FILETIME_EPOCH_DELTA
from smbd_py.wire.status import NtStatus, SmbError

# ---------------------------------------------------------------------------
# Vocabulary


class FileInfoClass(enum.IntEnum):
    """InfoType SMB2_0_INFO_FILE (1) classes, MS-FSCC 2.4."""

    FileDirectoryInformation = 1
    FileFullDirectoryInformation = 2
    FileBothDirectoryInformation = 3
    FileBasicInformation = 4
    FileStandardInformation = 5
    FileInternalInformation = 6
    FileEaInformation = 7
    FileAccessInformation = 8
    FileNameInformation = 9
    FileRenameInformation = 10
    FileLinkInformation = 11
    FileNamesInformation = 12
    FileDispositionInformation = 13
    FilePositionInformation = 14
    FileFullEaInformation = 15
    FileModeInformation = 16
    FileAlignmentInformation = 17
    FileAllInformation = 18
    FileAllocationInformation = 19
    FileEndOfFileInformation = 20
    FileAlternateNameInformation = 21
    FileStreamInformation = 22
    FilePipeInformation = 23
    FileCompressionInformation = 28
    FileNetworkOpenInformation = 34
    FileAttributeTagInformation = 35
    FileIdBothDirectoryInformation = 37
    FileIdFullDirectoryInformation = 38
    FileValidDataLengthInformation = 39
    FileShortNameInformation = 40
    FileNormalizedNameInformation = 48
    FileIdInformation = 59
    FileIdExtdDirectoryInformation = 60
    FileDispositionInformationEx = 64


class FsInfoClass(enum.IntEnum):
    """InfoType SMB2_0_INFO_FILESYSTEM (2) classes, MS-FSCC 2.5."""

    FileFsVolumeInformation = 1
    FileFsLabelInformation = 2
    FileFsSizeInformation = 3
    FileFsDeviceInformation = 4
    FileFsAttributeInformation = 5
    FileFsControlInformation = 6
    FileFsFullSizeInformation = 7
    FileFsObjectIdInformation = 8
    FileFsDriverPathInformation = 9
    FileFsVolumeFlagsInformation = 10
    FileFsSectorSizeInformation = 11


# FileAttributes (MS-FSCC 2.6) live with the other access/attribute constants.
from smbd_py.wire.access import (  # noqa: E402
    FILE_ATTRIBUTE_ARCHIVE, FILE_ATTRIBUTE_COMPRESSED, FILE_ATTRIBUTE_DIRECTORY,
    FILE_ATTRIBUTE_ENCRYPTED, FILE_ATTRIBUTE_HIDDEN, FILE_ATTRIBUTE_NORMAL,
    FILE_ATTRIBUTE_NOT_CONTENT_INDEXED, FILE_ATTRIBUTE_OFFLINE, FILE_ATTRIBUTE_READONLY,
    FILE_ATTRIBUTE_REPARSE_POINT, FILE_ATTRIBUTE_SPARSE_FILE, FILE_ATTRIBUTE_SYSTEM,
    FILE_ATTRIBUTE_TEMPORARY)

# FileSystemAttributes (MS-FSCC 2.5.1)
FILE_CASE_SENSITIVE_SEARCH = 0x00000001
FILE_CASE_PRESERVED_NAMES = 0x00000002
FILE_UNICODE_ON_DISK = 0x00000004
FILE_PERSISTENT_ACLS = 0x00000008
FILE_SUPPORTS_SPARSE_FILES = 0x00000040
FILE_SUPPORTS_OBJECT_IDS = 0x00010000
FILE_NAMED_STREAMS = 0x00040000

FILE_DEVICE_DISK = 0x00000007
FILE_DEVICE_IS_MOUNTED = 0x00000020

# FileModeInformation bits (MS-FSCC 2.4.26)
FILE_WRITE_THROUGH = 0x00000002
FILE_SEQUENTIAL_ONLY = 0x00000004
FILE_NO_INTERMEDIATE_BUFFERING = 0x00000008
FILE_SYNCHRONOUS_IO_ALERT = 0x00000010
FILE_SYNCHRONOUS_IO_NONALERT = 0x00000020
FILE_DELETE_ON_CLOSE = 0x00001000
_MODE_VALID = (FILE_WRITE_THROUGH | FILE_SEQUENTIAL_ONLY | FILE_NO_INTERMEDIATE_BUFFERING
               | FILE_SYNCHRONOUS_IO_ALERT | FILE_SYNCHRONOUS_IO_NONALERT | FILE_DELETE_ON_CLOSE)

# FileDispositionInformationEx flags (MS-FSCC 2.4.12)
FILE_DISPOSITION_DELETE = 0x00000001
FILE_DISPOSITION_POSIX_SEMANTICS = 0x00000002
FILE_DISPOSITION_FORCE_IMAGE_SECTION_CHECK = 0x00000004
FILE_DISPOSITION_ON_CLOSE = 0x00000008
FILE_DISPOSITION_IGNORE_READONLY_ATTRIBUTE = 0x00000010

# FileBasicInformation time values with special meaning on SET (MS-FSCC 2.4.7)
TIME_NO_CHANGE = 0
TIME_FREEZE = -1   # 0xFFFFFFFFFFFFFFFF: don't change, and stop automatic updates
TIME_RESUME = -2   # 0xFFFFFFFFFFFFFFFE: resume automatic updates

SECTOR_SIZE = 512
MAX_COMPONENT_LENGTH = 255

# ---------------------------------------------------------------------------
# Structs (all little-endian)
_BASIC = struct.Struct("<qqqqII")            # 40
_STANDARD = struct.Struct("<qqIBBH")         # 24
_Q = struct.Struct("<q")                     # position / eof / allocation
_QU = struct.Struct("<Q")                    # internal (IndexNumber)
_I = struct.Struct("<I")                     # ea / access / mode / alignment / name length
_NETWORK_OPEN = struct.Struct("<qqqqqqII")   # 56
_ATTR_TAG = struct.Struct("<II")             # 8
_COMPRESSION = struct.Struct("<qHBBB3x")     # 16
_STREAM_HDR = struct.Struct("<IIqq")         # 24 + name
_FILE_ID = struct.Struct("<QQQ")             # 24: volume serial, 128-bit file id
_ALL_FIXED = struct.Struct("<qqqqII" "qqIBBH" "Q" "I" "I" "q" "I" "I" "I")  # 100
_FS_VOLUME = struct.Struct("<qIIBB")         # 18 + label
_FS_SIZE = struct.Struct("<qqII")            # 24
_FS_DEVICE = struct.Struct("<II")            # 8
_FS_ATTRIBUTE = struct.Struct("<IiI")        # 12 + name
_FS_FULL_SIZE = struct.Struct("<qqqII")      # 32
_FS_SECTOR = struct.Struct("<IIIIIII")       # 28
_RENAME_HDR = struct.Struct("<B7xQI")        # 20 + name (SMB2 form, MS-FSCC 2.4.42.2)

_DATA_STREAM_NAME = "::$DATA".encode("utf-16-le")


# ---------------------------------------------------------------------------
# POSIX -> SMB field values

def dos_attributes(st, name: str = "", hide_dot_files: bool = True, stored: int | None = None) -> int:
    """DOS attributes for a POSIX file.

    Directories get DIRECTORY, files ARCHIVE; files without the owner write bit are
    READONLY; names starting with '.' are HIDDEN (Samba's "hide dot files = yes").
    `stored` lets the caller supply attributes it keeps itself (e.g. set by a client);
    the DIRECTORY bit always follows the real file type.
    """
    mode = st.st_mode
    is_dir = stat_mod.S_ISDIR(mode)
    if stored is not None:
        attrs = stored & ~(FILE_ATTRIBUTE_DIRECTORY | FILE_ATTRIBUTE_NORMAL)
        if is_dir:
            attrs |= FILE_ATTRIBUTE_DIRECTORY
    elif is_dir:
        attrs = FILE_ATTRIBUTE_DIRECTORY
    else:
        attrs = FILE_ATTRIBUTE_ARCHIVE
        if not mode & stat_mod.S_IWUSR:
            attrs |= FILE_ATTRIBUTE_READONLY
    if hide_dot_files and name[:1] == "." and name not in (".", ".."):
        attrs |= FILE_ATTRIBUTE_HIDDEN
    return attrs or FILE_ATTRIBUTE_NORMAL


def creation_ns(st, btime_ns: int | None = None) -> int:
    """Best creation time we know: a real birth time (given, or st_birthtime_ns of a
    paths.StatX), else the earliest of mtime and ctime (what Samba does without btime)."""
    if btime_ns is not None:
        return btime_ns
    b = getattr(st, "st_birthtime_ns", 0)  # paths.StatX carries it; os.stat_result (3.11) does not
    if b:
        return b
    m = st.st_mtime_ns
    c = st.st_ctime_ns
    return m if m < c else c


def file_times(st, btime_ns: int | None = None) -> tuple[int, int, int, int]:
    """(CreationTime, LastAccessTime, LastWriteTime, ChangeTime) as FILETIMEs."""
    # unix_ns_to_filetime, unrolled: every CREATE response and listing entry comes here.
    c = creation_ns(st, btime_ns) // 100 + FILETIME_EPOCH_DELTA
    a = st.st_atime_ns // 100 + FILETIME_EPOCH_DELTA
    w = st.st_mtime_ns // 100 + FILETIME_EPOCH_DELTA
    ch = st.st_ctime_ns // 100 + FILETIME_EPOCH_DELTA
    return (c if c > 0 else 0, a if a > 0 else 0, w if w > 0 else 0, ch if ch > 0 else 0)


def allocation_size(st) -> int:
    """AllocationSize: what the file occupies on disk (0 for directories, as Samba)."""
    if stat_mod.S_ISDIR(st.st_mode):
        return 0
    return st.st_blocks * 512


def end_of_file(st) -> int:
    return 0 if stat_mod.S_ISDIR(st.st_mode) else st.st_size


def number_of_links(st, delete_pending: bool = False) -> int:
    n = 1 if stat_mod.S_ISDIR(st.st_mode) else st.st_nlink
    if delete_pending and n:
        n -= 1
    return n


def smb_full_name(components) -> str:
    """The name FileNameInformation/FileAllInformation report: '\\dir\\file'."""
    return "\\" + "\\".join(components)


# ---------------------------------------------------------------------------
# QUERY_INFO file encoders.  Each takes the stat result plus per-open state.

class OpenState(NamedTuple):
    """Per-open facts the file encoders need besides the stat result."""

    name: str = ""            # full SMB name, e.g. "\\dir\\file" (see smb_full_name)
    attributes: int | None = None   # DOS attributes, default dos_attributes(st, basename)
    btime_ns: int | None = None
    delete_pending: bool = False
    position: int = 0
    mode: int = 0
    access_mask: int = 0
    ea_size: int = 0


def _attrs(st, o: OpenState) -> int:
    if o.attributes is not None:
        return o.attributes
    base = o.name.rpartition("\\")[2]
    return dos_attributes(st, base)


def encode_basic(st, o: OpenState = OpenState()) -> bytes:
    return _BASIC.pack(*file_times(st, o.btime_ns), _attrs(st, o), 0)


def encode_standard(st, o: OpenState = OpenState()) -> bytes:
    is_dir = stat_mod.S_ISDIR(st.st_mode)
    return _STANDARD.pack(allocation_size(st), end_of_file(st), number_of_links(st, o.delete_pending),
                          1 if o.delete_pending else 0, 1 if is_dir else 0, 0)


def encode_internal(st, o: OpenState = OpenState()) -> bytes:
    return _QU.pack(st.st_ino)


def encode_ea(st, o: OpenState = OpenState()) -> bytes:
    return _I.pack(o.ea_size)


def encode_access(st, o: OpenState = OpenState()) -> bytes:
    return _I.pack(o.access_mask)


def encode_name(st, o: OpenState = OpenState()) -> bytes:
    n = o.name.encode("utf-16-le", "surrogatepass")
    return _I.pack(len(n)) + n


def encode_normalized_name(st, o: OpenState = OpenState()) -> bytes:
    # Normalized names are relative to the share root, without the leading '\'.
    n = o.name.lstrip("\\").encode("utf-16-le", "surrogatepass")
    return _I.pack(len(n)) + n


def encode_position(st, o: OpenState = OpenState()) -> bytes:
    return _Q.pack(o.position)


def encode_mode(st, o: OpenState = OpenState()) -> bytes:
    return _I.pack(o.mode)


def encode_alignment(st, o: OpenState = OpenState()) -> bytes:
    return _I.pack(0)  # FILE_BYTE_ALIGNMENT


def encode_all(st, o: OpenState = OpenState()) -> bytes:
    is_dir = stat_mod.S_ISDIR(st.st_mode)
    n = o.name.encode("utf-16-le", "surrogatepass")
    return _ALL_FIXED.pack(
        *file_times(st, o.btime_ns), _attrs(st, o), 0,
        allocation_size(st), end_of_file(st), number_of_links(st, o.delete_pending),
        1 if o.delete_pending else 0, 1 if is_dir else 0, 0,
        st.st_ino, o.ea_size, o.access_mask, o.position, o.mode, 0,
        len(n),
    ) + n


def encode_alternate_name(st, o: OpenState = OpenState()) -> bytes:
    from .shortname import short_name
    base = o.name.rsplit("\\", 1)[-1]
    n = short_name(base).encode("utf-16-le") if base else b""
    return _I.pack(len(n)) + n


def encode_stream(st, o: OpenState = OpenState(), named=()) -> bytes:
    """FileStreamInformation (MS-FSCC 2.4.43): the unnamed data stream "::$DATA" of a file
    (a directory has none), then ":name:$DATA" for each (name, stat) in `named`
    (fs.streams.list_streams); entries 8-byte aligned, linked by NextEntryOffset."""
    entries = []
    if not stat_mod.S_ISDIR(st.st_mode):
        entries.append((_DATA_STREAM_NAME, st.st_size, allocation_size(st)))
    for name, sst in named:
        entries.append(((":" + name + ":$DATA").encode("utf-16-le", "surrogatepass"),
                        sst.st_size, allocation_size(sst)))
    out = bytearray()
    for i, (n, size, alloc) in enumerate(entries):
        entry = bytearray(_STREAM_HDR.pack(0, len(n), size, alloc) + n)
        if i + 1 < len(entries):
            entry += b"\0" * (-len(entry) % 8)
            _I.pack_into(entry, 0, len(entry))
        out += entry
    return bytes(out)


def encode_compression(st, o: OpenState = OpenState()) -> bytes:
    return _COMPRESSION.pack(end_of_file(st), 0, 0, 0, 0)  # COMPRESSION_FORMAT_NONE


def encode_network_open(st, o: OpenState = OpenState()) -> bytes:
    return _NETWORK_OPEN.pack(*file_times(st, o.btime_ns), allocation_size(st), end_of_file(st),
                              _attrs(st, o), 0)


def encode_attribute_tag(st, o: OpenState = OpenState()) -> bytes:
    return _ATTR_TAG.pack(_attrs(st, o), 0)


def encode_file_id(st, o: OpenState = OpenState()) -> bytes:
    return _FILE_ID.pack(st.st_dev & 0xFFFFFFFFFFFFFFFF, st.st_ino, 0)


FILE_INFO_ENCODERS = {
    FileInfoClass.FileBasicInformation: encode_basic,
    FileInfoClass.FileStandardInformation: encode_standard,
    FileInfoClass.FileInternalInformation: encode_internal,
    FileInfoClass.FileEaInformation: encode_ea,
    FileInfoClass.FileAccessInformation: encode_access,
    FileInfoClass.FileNameInformation: encode_name,
    FileInfoClass.FilePositionInformation: encode_position,
    FileInfoClass.FileModeInformation: encode_mode,
    FileInfoClass.FileAlignmentInformation: encode_alignment,
    FileInfoClass.FileAllInformation: encode_all,
    FileInfoClass.FileAlternateNameInformation: encode_alternate_name,
    FileInfoClass.FileStreamInformation: encode_stream,
    FileInfoClass.FileCompressionInformation: encode_compression,
    FileInfoClass.FileNetworkOpenInformation: encode_network_open,
    FileInfoClass.FileAttributeTagInformation: encode_attribute_tag,
    FileInfoClass.FileNormalizedNameInformation: encode_normalized_name,
    FileInfoClass.FileIdInformation: encode_file_id,
}

# Minimum OutputBufferLength per class, and whether the class has a variable part.
# The minimum is what Windows uses: sizeof() of the class's C structure, where a
# trailing WCHAR name[1] and 8-byte alignment count (so FILE_ALL_INFORMATION is 104,
# not 100); smbtorture smb2.getinfo.qfile_buffercheck/qfs_buffercheck and Samba agree.
FILE_INFO_FIXED_SIZE: dict[int, tuple[int, bool]] = {
    FileInfoClass.FileBasicInformation: (40, False),
    FileInfoClass.FileStandardInformation: (24, False),
    FileInfoClass.FileInternalInformation: (8, False),
    FileInfoClass.FileEaInformation: (4, False),
    FileInfoClass.FileAccessInformation: (4, False),
    FileInfoClass.FileNameInformation: (8, True),
    FileInfoClass.FilePositionInformation: (8, False),
    FileInfoClass.FileModeInformation: (4, False),
    FileInfoClass.FileAlignmentInformation: (4, False),
    FileInfoClass.FileAllInformation: (104, True),
    FileInfoClass.FileAlternateNameInformation: (8, True),
    FileInfoClass.FileStreamInformation: (32, True),
    FileInfoClass.FileCompressionInformation: (16, False),
    FileInfoClass.FileNetworkOpenInformation: (56, False),
    FileInfoClass.FileAttributeTagInformation: (8, False),
    FileInfoClass.FileNormalizedNameInformation: (8, True),
    FileInfoClass.FileIdInformation: (24, False),
}


def query_file_info(info_class: int, st, o: OpenState = OpenState()) -> bytes:
    """Encode InfoType FILE class `info_class`; INVALID_INFO_CLASS if unknown."""
    enc = FILE_INFO_ENCODERS.get(info_class)
    if enc is None:
        raise SmbError(NtStatus.INVALID_INFO_CLASS, f"file info class {info_class}")
    return enc(st, o)


# ---------------------------------------------------------------------------
# QUERY_INFO filesystem encoders (from os.statvfs_result)

def _units(vfs) -> tuple[int, int]:
    """(SectorsPerAllocationUnit, scale) so that units * SPU * 512 = bytes."""
    frsize = vfs.f_frsize or vfs.f_bsize or SECTOR_SIZE
    spu = max(1, frsize // SECTOR_SIZE)
    return spu, frsize


def encode_fs_volume(label: str = "", serial: int = 0, creation_time: int = 0) -> bytes:
    lab = label.encode("utf-16-le", "surrogatepass")
    return _FS_VOLUME.pack(creation_time, serial & 0xFFFFFFFF, len(lab), 0, 0) + lab


def encode_fs_size(vfs) -> bytes:
    spu, frsize = _units(vfs)
    scale = frsize / (spu * SECTOR_SIZE)
    return _FS_SIZE.pack(int(vfs.f_blocks * scale), int(vfs.f_bavail * scale), spu, SECTOR_SIZE)


def encode_fs_full_size(vfs) -> bytes:
    spu, frsize = _units(vfs)
    scale = frsize / (spu * SECTOR_SIZE)
    return _FS_FULL_SIZE.pack(int(vfs.f_blocks * scale), int(vfs.f_bavail * scale),
                              int(vfs.f_bfree * scale), spu, SECTOR_SIZE)


def encode_fs_device(read_only: bool = False) -> bytes:
    characteristics = FILE_DEVICE_IS_MOUNTED | (0x2 if read_only else 0)  # FILE_READ_ONLY_DEVICE
    return _FS_DEVICE.pack(FILE_DEVICE_DISK, characteristics)


# What we actually do: names keep their case, and names are Unicode.  We match names
# case-insensitively, keep no ACLs, and keep named streams (fs.streams), so we claim
# nothing more.
DEFAULT_FS_ATTRIBUTES = FILE_CASE_PRESERVED_NAMES | FILE_UNICODE_ON_DISK | FILE_NAMED_STREAMS


def encode_fs_attribute(attributes: int = DEFAULT_FS_ATTRIBUTES, fs_name: str = "NTFS",
                        max_component: int = MAX_COMPONENT_LENGTH) -> bytes:
    n = fs_name.encode("utf-16-le")
    return _FS_ATTRIBUTE.pack(attributes, max_component, len(n)) + n


_FS_CONTROL = struct.Struct("<qqqQQI4x")     # 48
NO_QUOTA_LIMIT = 0xFFFFFFFFFFFFFFFF


def encode_fs_control() -> bytes:
    """FileFsControlInformation (MS-FSCC 2.5.2) of a volume without quotas: no free-space
    filtering, default threshold and limit "none" (-1), FileSystemControlFlags 0
    (FILE_VC_QUOTA_NONE) -- what Windows answers when quotas are off."""
    return _FS_CONTROL.pack(0, 0, 0, NO_QUOTA_LIMIT, NO_QUOTA_LIMIT, 0)


def encode_fs_object_id(object_id: bytes = b"") -> bytes:
    return object_id[:16].ljust(16, b"\0") + bytes(48)


def encode_fs_sector_size(sector: int = SECTOR_SIZE) -> bytes:
    # Flags: SSINFO_FLAGS_ALIGNED_DEVICE | SSINFO_FLAGS_PARTITION_ALIGNED_ON_DEVICE.
    return _FS_SECTOR.pack(sector, sector, sector, sector, 0x3, 0, 0)


FS_INFO_FIXED_SIZE: dict[int, tuple[int, bool]] = {
    FsInfoClass.FileFsVolumeInformation: (24, True),
    FsInfoClass.FileFsSizeInformation: (24, False),
    FsInfoClass.FileFsDeviceInformation: (8, False),
    FsInfoClass.FileFsAttributeInformation: (16, True),
    FsInfoClass.FileFsFullSizeInformation: (32, False),
    FsInfoClass.FileFsControlInformation: (48, False),
    FsInfoClass.FileFsObjectIdInformation: (64, False),
    FsInfoClass.FileFsSectorSizeInformation: (28, False),
}


class VolumeFacts(NamedTuple):
    """Per-share facts the FS encoders need besides statvfs."""

    label: str = ""
    serial: int = 0
    creation_time: int = 0        # FILETIME
    attributes: int = DEFAULT_FS_ATTRIBUTES
    fs_name: str = "NTFS"
    read_only: bool = False
    object_id: bytes = b""


def query_fs_info(info_class: int, vfs, v: VolumeFacts = VolumeFacts()) -> bytes:
    """Encode InfoType FILESYSTEM class `info_class`; INVALID_INFO_CLASS if unknown."""
    if info_class == FsInfoClass.FileFsFullSizeInformation:
        return encode_fs_full_size(vfs)
    if info_class == FsInfoClass.FileFsSizeInformation:
        return encode_fs_size(vfs)
    if info_class == FsInfoClass.FileFsAttributeInformation:
        return encode_fs_attribute(v.attributes, v.fs_name)
    if info_class == FsInfoClass.FileFsVolumeInformation:
        return encode_fs_volume(v.label, v.serial, v.creation_time)
    if info_class == FsInfoClass.FileFsDeviceInformation:
        return encode_fs_device(v.read_only)
    if info_class == FsInfoClass.FileFsObjectIdInformation:
        return encode_fs_object_id(v.object_id)
    if info_class == FsInfoClass.FileFsSectorSizeInformation:
        return encode_fs_sector_size()
    if info_class == FsInfoClass.FileFsControlInformation:
        return encode_fs_control()
    raise SmbError(NtStatus.INVALID_INFO_CLASS, f"fs info class {info_class}")


# ---------------------------------------------------------------------------
# Output length rules (MS-SMB2 3.3.5.20.1 and MS-FSCC per-class text)

_SUCCESS = int(NtStatus.SUCCESS)
_OVERFLOW = int(NtStatus.BUFFER_OVERFLOW)
_MISMATCH = int(NtStatus.INFO_LENGTH_MISMATCH)


def fit(buf: bytes, out_len: int, fixed: bool | int, min_size: int = 0) -> tuple[int, bytes]:
    """Fit an encoded info buffer into OutputBufferLength.

    fixed=True: a fixed-size class; too small a buffer is INFO_LENGTH_MISMATCH.
    fixed=False (or fixed=<int> = size of the fixed part): a variable-length class;
    smaller than the fixed part is INFO_LENGTH_MISMATCH, otherwise the data is cut
    and BUFFER_OVERFLOW returned with what fits.
    """
    n = len(buf)
    if n <= out_len:
        return _SUCCESS, buf
    if fixed is True:
        return _MISMATCH, b""
    if fixed is not False:
        min_size = int(fixed)
    if out_len < min_size:
        return _MISMATCH, b""
    return _OVERFLOW, buf[:out_len]


def fit_file_info(info_class: int, buf: bytes, out_len: int) -> tuple[int, bytes]:
    size, variable = FILE_INFO_FIXED_SIZE.get(info_class, (0, True))
    if out_len < size:
        return _MISMATCH, b""
    return fit(buf, out_len, not variable, size)


def fit_fs_info(info_class: int, buf: bytes, out_len: int) -> tuple[int, bytes]:
    size, variable = FS_INFO_FIXED_SIZE.get(info_class, (0, True))
    if out_len < size:
        return _MISMATCH, b""
    return fit(buf, out_len, not variable, size)


# ---------------------------------------------------------------------------
# SET_INFO decoders


class BasicInfo(NamedTuple):
    creation_time: int       # signed: 0 no change, -1 freeze, -2 resume, else FILETIME
    last_access_time: int
    last_write_time: int
    change_time: int
    file_attributes: int     # 0 = no change


class RenameInfo(NamedTuple):
    replace_if_exists: bool
    root_directory: int
    file_name: str


class DispositionInfo(NamedTuple):
    delete_pending: bool
    flags: int               # FILE_DISPOSITION_* for the Ex form; DELETE or 0 otherwise


_BASIC_IN = struct.Struct("<qqqqI")  # 36: some clients omit the trailing Reserved


def _need(buf, n: int) -> None:
    if len(buf) < n:
        raise SmbError(NtStatus.INFO_LENGTH_MISMATCH, f"need {n} bytes, got {len(buf)}")


def decode_basic(buf) -> BasicInfo:
    _need(buf, 36)
    return BasicInfo(*_BASIC_IN.unpack_from(buf))


def decode_rename(buf) -> RenameInfo:
    """SMB2 FILE_RENAME_INFORMATION_TYPE_2 (also the layout of FileLinkInformation)."""
    _need(buf, _RENAME_HDR.size)
    replace, root, name_len = _RENAME_HDR.unpack_from(buf)
    if name_len > len(buf) - _RENAME_HDR.size or name_len & 1:
        raise SmbError(NtStatus.INVALID_PARAMETER, "bad FileNameLength")
    raw = bytes(buf[_RENAME_HDR.size:_RENAME_HDR.size + name_len])
    return RenameInfo(bool(replace), root, raw.decode("utf-16-le", "surrogatepass"))


decode_link = decode_rename


def decode_disposition(buf) -> DispositionInfo:
    _need(buf, 1)
    d = bool(buf[0])
    return DispositionInfo(d, FILE_DISPOSITION_DELETE if d else 0)


def decode_disposition_ex(buf) -> DispositionInfo:
    _need(buf, 4)
    flags = _I.unpack_from(buf)[0]
    return DispositionInfo(bool(flags & FILE_DISPOSITION_DELETE), flags)


def _decode_nonneg_i64(buf) -> int:
    _need(buf, 8)
    v = _Q.unpack_from(buf)[0]
    if v < 0:
        raise SmbError(NtStatus.INVALID_PARAMETER, "negative size/offset")
    return v


decode_end_of_file = _decode_nonneg_i64
decode_allocation = _decode_nonneg_i64
decode_position = _decode_nonneg_i64


def decode_mode(buf) -> int:
    _need(buf, 4)
    mode = _I.unpack_from(buf)[0]
    if mode & ~_MODE_VALID or (mode & FILE_SYNCHRONOUS_IO_ALERT and mode & FILE_SYNCHRONOUS_IO_NONALERT):
        raise SmbError(NtStatus.INVALID_PARAMETER, "bad FileModeInformation")
    return mode


SET_INFO_DECODERS = {
    FileInfoClass.FileBasicInformation: decode_basic,
    FileInfoClass.FileRenameInformation: decode_rename,
    FileInfoClass.FileLinkInformation: decode_link,
    FileInfoClass.FileDispositionInformation: decode_disposition,
    FileInfoClass.FileDispositionInformationEx: decode_disposition_ex,
    FileInfoClass.FileEndOfFileInformation: decode_end_of_file,
    FileInfoClass.FileAllocationInformation: decode_allocation,
    FileInfoClass.FilePositionInformation: decode_position,
    FileInfoClass.FileModeInformation: decode_mode,
}


def decode_set_info(info_class: int, buf):
    """Decode a SET_INFO FILE input buffer; INVALID_INFO_CLASS if unknown."""
    dec = SET_INFO_DECODERS.get(info_class)
    if dec is None:
        raise SmbError(NtStatus.INVALID_INFO_CLASS, f"set file info class {info_class}")
    return dec(buf)
