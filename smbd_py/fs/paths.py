"""Share confinement: SMB path syntax -> validated components -> fds beneath a share.

Owns ShareRoot (a share directory fd kept open), SMB name validation (MS-FSCC 2.1.5),
case-insensitive lookup, and the errno -> NTSTATUS mapping for path operations.

Every operation resolves relative to the share's directory fd.  Where the kernel has
openat2(2) we let it enforce RESOLVE_BENEATH (no `..`, absolute path or symlink can
leave the share, and there is no check-then-open race).  Otherwise a component-wise
walk with O_NOFOLLOW emulates it, following only symlinks whose targets stay inside.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import stat as stat_mod
import threading

from smbd_py.wire.status import NtStatus, SmbError

__all__ = [
    "ShareRoot",
    "StatX",
    "fstatx",
    "statx_at",
    "STATX_AVAILABLE",
    "fstat_btime",
    "stat_btime_at",
    "PathEscapeError",
    "errno_to_status",
    "split_path",
    "split_stream_path",
    "OPENAT2_AVAILABLE",
    "RESERVED_DIR",
    "is_reserved_name",
]

# The server's own directory at the share root (fs.streams keeps named streams in it).
# Clients never see it: split_stream_path refuses paths through it and DirCursor does not
# list it, so this one rule decides what is reserved.
RESERVED_DIR = ".smbd_py"
_RESERVED_FOLDED = RESERVED_DIR.casefold()


def is_reserved_name(name: str) -> bool:
    """True for the reserved name (any case), which no client path may use at the root."""
    return name.casefold() == _RESERVED_FOLDED

# ---------------------------------------------------------------------------
# Kernel interfaces through ctypes (x86_64 and every arch using the unified table:
# openat2 is 437 everywhere).
_SYS_openat2 = 437
_SYS_openat2_arg = ctypes.c_long(_SYS_openat2)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RENAME_NOREPLACE = 1
_MAX_SYMLINKS = 40  # what the kernel allows in one resolution (MAXSYMLINKS)

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_OPEN_HOW_SIZE = ctypes.sizeof(_OpenHow)
# ShareRoot.open_cached runs on every CREATE: its constant arguments are built once
# (byref keeps its open_how alive).
_CACHED_HOW: dict = {}
_OPEN_HOW_SIZE_ARG = ctypes.c_size_t(_OPEN_HOW_SIZE)
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS

try:
    _renameat2 = _libc.renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    _renameat2.restype = ctypes.c_int
except AttributeError:  # glibc < 2.28
    _renameat2 = None


def _openat2(dir_fd: int, path: str, flags: int, mode: int = 0) -> int:
    # O_TMPFILE includes O_DIRECTORY's bit, so test for all of its bits.
    tmpfile = getattr(os, "O_TMPFILE", 0)
    takes_mode = flags & os.O_CREAT or (tmpfile and flags & tmpfile == tmpfile)
    how = _OpenHow(flags, mode if takes_mode else 0, _RESOLVE)
    fd = _syscall(_SYS_openat2, ctypes.c_int(dir_fd), os.fsencode(path), ctypes.byref(how),
                  ctypes.c_size_t(_OPEN_HOW_SIZE))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def _probe_openat2() -> bool:
    try:
        fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        try:
            os.close(_openat2(fd, ".", os.O_PATH | os.O_CLOEXEC))
        except OSError:
            return False
        # It must also refuse an escape, or it is not the openat2 we think it is.
        try:
            os.close(_openat2(fd, "..", os.O_PATH | os.O_CLOEXEC))
            # ".." at "/" stays at "/", which RESOLVE_BENEATH still forbids.
            return False
        except OSError as e:
            return e.errno == errno.EXDEV
    finally:
        os.close(fd)


OPENAT2_AVAILABLE = _probe_openat2()

# RESOLVE_CACHED (Linux 5.12): the lookup fails with EAGAIN instead of doing any I/O or
# revalidation, so an open that succeeds with it never waited on the disk. The event
# loop opens with it inline and falls back to the I/O pool on EAGAIN.
RESOLVE_CACHED = 0x20


def _probe_resolve_cached() -> bool:
    if not OPENAT2_AVAILABLE:
        return False
    try:
        fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, _RESOLVE | RESOLVE_CACHED)
        r = _syscall(_SYS_openat2, ctypes.c_int(fd), b".", ctypes.byref(how),
                     ctypes.c_size_t(_OPEN_HOW_SIZE))
        if r >= 0:
            os.close(r)
            return True
        return False
    finally:
        os.close(fd)


RESOLVE_CACHED_AVAILABLE = _probe_resolve_cached()


# ---------------------------------------------------------------------------
# statx(2): the only way to learn a file's birth time on Linux from Python 3.11.
_AT_EMPTY_PATH = 0x1000
_AT_SYMLINK_NOFOLLOW = 0x100
_STATX_BASIC_STATS = 0x7FF
_STATX_BTIME = 0x800
_STATX_BUF = 256
_STATX = __import__("struct").Struct("<IIQIIIHxxQQQQ" "qI4x" "qI4x" "qI4x" "qI4x" "IIII")

try:
    _statx = _libc.statx
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_char_p]
    _statx.restype = ctypes.c_int
    # The same function without argtypes: ctypes passes ints and bytes as they are and
    # skips the per-call conversion (the hot path always passes exactly these types).
    _statx_raw = ctypes.CFUNCTYPE(ctypes.c_int, use_errno=True)(("statx", _libc))
    _statx_raw.argtypes = None
except AttributeError:  # glibc < 2.28
    _statx = _statx_raw = None


class StatX:
    """The os.stat_result fields the fs layer uses, plus st_birthtime_ns (0 if unknown)."""

    __slots__ = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size",
                 "st_blocks", "st_blksize", "st_atime_ns", "st_mtime_ns", "st_ctime_ns",
                 "st_birthtime_ns", "st_rdev")

    @property
    def st_atime(self) -> float:
        return self.st_atime_ns / 1e9

    @property
    def st_mtime(self) -> float:
        return self.st_mtime_ns / 1e9

    @property
    def st_ctime(self) -> float:
        return self.st_ctime_ns / 1e9

    def __eq__(self, other) -> bool:
        return isinstance(other, StatX) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self) -> str:
        return "StatX(" + ", ".join(f"{k}={getattr(self, k)}" for k in self.__slots__) + ")"


# One result buffer per thread (the I/O pool calls statx from many threads at once),
# allocated once: a call then costs the syscall, one unpack and the result object.
_statx_tls = threading.local()
_WANT_MASK = _STATX_BASIC_STATS | _STATX_BTIME
_unpack_statx = _STATX.unpack_from
_new_object = object.__new__
_makedev = os.makedev


def _statx_buffer():
    buf = _statx_tls.__dict__.get("buf")
    if buf is None:
        buf = _statx_tls.buf = ctypes.create_string_buffer(_STATX_BUF)
    return buf


def _do_statx(dir_fd: int, path: bytes, flags: int) -> StatX:
    buf = _statx_buffer()
    if _statx_raw(dir_fd, path, flags, _WANT_MASK, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fsdecode(path))
    (mask, blksize, _attrs, nlink, uid, gid, mode, ino, size, blocks, _amask,
     a_s, a_n, b_s, b_n, c_s, c_n, m_s, m_n, rmaj, rmin, dmaj, dmin) = _unpack_statx(buf)
    r = _new_object(StatX)
    r.st_mode = mode
    r.st_ino = ino
    r.st_nlink = nlink
    r.st_uid = uid
    r.st_gid = gid
    r.st_size = size
    r.st_blocks = blocks
    r.st_blksize = blksize
    r.st_dev = _makedev(dmaj, dmin)
    r.st_rdev = _makedev(rmaj, rmin) if rmaj or rmin else 0
    r.st_atime_ns = a_s * 1_000_000_000 + a_n
    r.st_mtime_ns = m_s * 1_000_000_000 + m_n
    r.st_ctime_ns = c_s * 1_000_000_000 + c_n
    # 0 where the file system keeps no birth time (fs.info.creation_ns then falls back).
    r.st_birthtime_ns = b_s * 1_000_000_000 + b_n if mask & _STATX_BTIME else 0
    return r


def fstatx(fd: int) -> StatX:
    """fstat() with the birth time (works on O_PATH fds too)."""
    return _do_statx(fd, b"", _AT_EMPTY_PATH)


def statx_at(name: str, dir_fd: int, follow_symlinks: bool = True) -> StatX:
    """os.stat(name, dir_fd=..., follow_symlinks=...) with the birth time."""
    # str.encode as os.fsencode does it, without its Python-level wrapper (listings stat
    # every entry through here).
    path = name.encode(_FS_ENCODING, "surrogateescape") if name.__class__ is str else name
    return _do_statx(dir_fd, path, 0 if follow_symlinks else _AT_SYMLINK_NOFOLLOW)


_FS_ENCODING = __import__("sys").getfilesystemencoding()


def _probe_statx() -> bool:
    if _statx is None:
        return False
    try:
        fstatx_root = _do_statx(-100, b"/", 0)  # AT_FDCWD
        return fstatx_root.st_ino == os.stat("/").st_ino
    except OSError:
        return False


STATX_AVAILABLE = _probe_statx()
# What the server stats with wherever it reports a CreationTime: statx (birth time
# included) where the C library has it, else os.fstat / os.stat (no birth time: the
# creation time is then fs.info.creation_ns's fallback).
fstat_btime = fstatx if STATX_AVAILABLE else os.fstat
stat_btime_at = statx_at if STATX_AVAILABLE else os.stat


# ---------------------------------------------------------------------------
class PathEscapeError(SmbError):
    """A path (through `..` or a symlink) tried to leave the share."""

    def __init__(self, message: str = "path escapes the share") -> None:
        super().__init__(NtStatus.ACCESS_DENIED, message)


_ERRNO_LAST = {
    errno.ENOENT: NtStatus.OBJECT_NAME_NOT_FOUND,
    errno.ENOTDIR: NtStatus.NOT_A_DIRECTORY,
}
_ERRNO_INTERMEDIATE = {
    errno.ENOENT: NtStatus.OBJECT_PATH_NOT_FOUND,
    errno.ENOTDIR: NtStatus.OBJECT_PATH_NOT_FOUND,
}
_ERRNO_ANY = {
    errno.EEXIST: NtStatus.OBJECT_NAME_COLLISION,
    errno.EACCES: NtStatus.ACCESS_DENIED,
    errno.EPERM: NtStatus.ACCESS_DENIED,
    errno.EROFS: NtStatus.MEDIA_WRITE_PROTECTED,
    errno.EISDIR: NtStatus.FILE_IS_A_DIRECTORY,
    errno.ENOTEMPTY: NtStatus.DIRECTORY_NOT_EMPTY,
    errno.ELOOP: NtStatus.ACCESS_DENIED,
    errno.EXDEV: NtStatus.ACCESS_DENIED,
    errno.ENOSPC: NtStatus.DISK_FULL,
    errno.EFBIG: NtStatus.DISK_FULL,      # past the file system's largest file (Windows)
    errno.EDQUOT: NtStatus.DISK_FULL,
    errno.ENAMETOOLONG: NtStatus.OBJECT_NAME_INVALID,
    errno.EINVAL: NtStatus.INVALID_PARAMETER,
    errno.EMFILE: NtStatus.TOO_MANY_OPENED_FILES,
    errno.ENFILE: NtStatus.TOO_MANY_OPENED_FILES,
    errno.ENOMEM: NtStatus.NO_MEMORY,
    errno.EBUSY: NtStatus.SHARING_VIOLATION,
    errno.ETXTBSY: NtStatus.SHARING_VIOLATION,
    errno.EAGAIN: NtStatus.SHARING_VIOLATION,  # O_NONBLOCK open of a leased file
    errno.EBADF: NtStatus.INVALID_HANDLE,
    errno.EFBIG: NtStatus.DISK_FULL,
    errno.EIO: NtStatus.UNEXPECTED_NETWORK_ERROR,
}


def errno_to_status(err: int, last_component: bool = True) -> int:
    """NTSTATUS for an errno from a path operation; ENOENT/ENOTDIR depend on where."""
    table = _ERRNO_LAST if last_component else _ERRNO_INTERMEDIATE
    st = table.get(err)
    if st is None:
        st = _ERRNO_ANY.get(err, NtStatus.ACCESS_DENIED if err is None else NtStatus.UNSUCCESSFUL)
    return int(st)


def _smb_error(e: OSError, last_component: bool = True) -> SmbError:
    if e.errno == errno.EXDEV:
        return PathEscapeError()
    return SmbError(errno_to_status(e.errno, last_component), f"{e.strerror}: {e.filename!r}")


# ---------------------------------------------------------------------------
# Name validation (MS-FSCC 2.1.5.2): these may never appear in a component.
# Surrogates are refused too: they cannot come from valid UTF-16 and would otherwise
# turn into raw bytes through the filesystem encoding's surrogateescape.
_BAD_CHARS = re.compile('[\x00-\x1f"*/<>?|\\\\\ud800-\udfff]')
# A stream name may hold anything but NUL, '/', '\\' and ':' (Windows; smbtorture
# smb2.streams.names2 walks 0x01..0x7E): control characters and wildcards included.
# Components of good characters (no ':' either) joined by single backslashes.
_PLAIN_COMPONENT = '[^\x00-\x1f"*/<>?|\\\\:\ud800-\udfff]+'
_PLAIN_PATH = re.compile(_PLAIN_COMPONENT + "(?:\\\\" + _PLAIN_COMPONENT + ")*")
_BAD_STREAM_CHARS = re.compile('[\x00/\\\\:\ud800-\udfff]')


def split_stream_path(smb_path: str) -> tuple[tuple[str, ...], str | None]:
    """Validate an SMB path; return (components, stream_name or None).

    `name::$DATA` and `name:` (unnamed stream) mean the file itself (stream None);
    `name:s` / `name:s:$DATA` return stream "s".  A leading backslash is tolerated,
    trailing backslashes are dropped, `..` is folded lexically (Windows does the same
    before the filesystem sees the name) and may not climb above the share root.
    """
    if _PLAIN_PATH.fullmatch(smb_path) is not None:
        # The common shape (no stream, no bad character, no empty component): only the
        # "." and ".." components and the reserved name are left to look at.
        parts = smb_path.split("\\")
        if "." not in parts and ".." not in parts and parts[0].casefold() != _RESERVED_FOLDED:
            return tuple(parts), None
    p = smb_path
    if p.startswith("\\"):
        p = p.lstrip("\\")
    if p.endswith("\\"):
        p = p.rstrip("\\")
    if not p:
        return (), None
    parts = p.split("\\")
    out: list[str] = []
    stream: str | None = None
    n = len(parts)
    for i, comp in enumerate(parts):
        if not comp:
            raise SmbError(NtStatus.OBJECT_NAME_INVALID, "empty path component")
        if ":" in comp:
            if i != n - 1:
                raise SmbError(NtStatus.OBJECT_NAME_INVALID, "stream syntax in a directory component")
            comp, stream = _split_stream_component(comp)
        if _BAD_CHARS.search(comp) is not None:
            raise SmbError(NtStatus.OBJECT_NAME_INVALID, "invalid character in name")
        if comp == "..":
            if not out:
                raise SmbError(NtStatus.OBJECT_PATH_SYNTAX_BAD, "'..' above the share root")
            out.pop()
            continue
        if comp == ".":
            raise SmbError(NtStatus.OBJECT_NAME_INVALID, "'.' component")
        out.append(comp)
    if out and is_reserved_name(out[0]):
        # The reserved directory does not exist for clients (a missing name, or a
        # missing directory on the way to one).
        if len(out) == 1:
            raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "reserved name")
        raise SmbError(NtStatus.OBJECT_PATH_NOT_FOUND, "reserved name")
    return tuple(out), stream


def _split_stream_component(comp: str) -> tuple[str, str | None]:
    base, _, rest = comp.partition(":")
    if not base:
        raise SmbError(NtStatus.OBJECT_NAME_INVALID, "stream without a file name")
    sname, sep, stype = rest.partition(":")
    if sep:
        if stype.upper() != "$DATA":
            raise SmbError(NtStatus.OBJECT_NAME_INVALID, "unsupported stream type")
    if _BAD_STREAM_CHARS.search(sname) is not None:
        raise SmbError(NtStatus.OBJECT_NAME_INVALID, "invalid character in stream name")
    return base, (sname or None)


def split_path(smb_path: str) -> tuple[str, ...]:
    """Validate an SMB path into components; named streams are not supported yet."""
    comps, stream = split_stream_path(smb_path)
    if stream is not None:
        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND, "alternate data streams are not supported")
    return comps


# ---------------------------------------------------------------------------
_O_CLOEXEC = os.O_CLOEXEC
_O_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_O_LIST_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


LOCAL_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay",
                               "f2fs", "zfs", "bcachefs", "jfs", "reiserfs"})


def filesystem_type(path: str) -> str:
    """The type of the file system holding `path`, from /proc/self/mountinfo ('' if unknown)."""
    best, kind = -1, ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                mnt = fields[4].replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > best:
                    best, kind = len(mnt), right.split()[0]
    except OSError:
        return ""
    return kind


class ShareRoot:
    """A share directory, kept open; every path operation stays beneath it.

    Components are those returned by split(): validated, no `.`/`..`.  Methods are
    blocking (call them from a thread pool) and raise SmbError.
    """

    def __init__(self, path: str, case_sensitive: bool = False, use_openat2: bool | None = None,
                 use_statx: bool = True) -> None:
        self.path = os.path.realpath(path)
        # With use_statx, stat() returns StatX (birth time included) instead of os.stat_result.
        self._fstat = fstatx if (use_statx and STATX_AVAILABLE) else os.fstat
        self.case_sensitive = case_sensitive
        self.use_openat2 = OPENAT2_AVAILABLE if use_openat2 is None else (use_openat2 and OPENAT2_AVAILABLE)
        self.fd = os.open(self.path, _O_PATH_DIR)
        self._fd_arg = None          # ctypes.c_int(self.fd), made on first use
        self._closed = False
        self._lock = threading.Lock()
        # Opening and stat'ing on the event loop is only safe where the kernel answers
        # from memory: on NFS, CIFS or FUSE a stat may wait on the network.
        self.local_fs = filesystem_type(self.path) in LOCAL_FILESYSTEMS

    # -- lifecycle --------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self.fd)

    def __enter__(self) -> "ShareRoot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- syntax -------------------------------------------------------------
    split = staticmethod(split_path)
    split_stream = staticmethod(split_stream_path)

    @staticmethod
    def relpath_of(components: tuple[str, ...] | list[str]) -> str:
        """POSIX path relative to the share root ('' for the root itself)."""
        return "/".join(components)

    # -- low-level confined open ---------------------------------------------
    def _raw_open(self, components, flags: int, mode: int = 0, follow_last: bool = True) -> int:
        """Open beneath the share with the exact (already case-corrected) components."""
        if not follow_last:
            flags |= os.O_NOFOLLOW
        if not components:
            # The share root itself: reopen through "." so flags apply.
            if flags & os.O_CREAT and flags & os.O_EXCL:
                raise OSError(errno.EEXIST, "share root exists", "")
            if self.use_openat2:
                return _openat2(self.fd, ".", (flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW)) | _O_CLOEXEC)
            return os.open(".", (flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW)) | _O_CLOEXEC, dir_fd=self.fd)
        if self.use_openat2:
            return _openat2(self.fd, "/".join(components), flags | _O_CLOEXEC, mode)
        return self._walk_open(list(components), flags | _O_CLOEXEC, mode, follow_last)

    def _walk_open(self, names: list[str], flags: int, mode: int, follow_last: bool) -> int:
        """openat2(RESOLVE_BENEATH) emulation: one component at a time, O_NOFOLLOW,
        expanding symlinks ourselves and refusing any that climb out."""
        todo = names[::-1]
        stack = [self.fd]  # stack[0] is ours-not-owned; the rest are owned O_PATH dir fds
        links = 0
        try:
            while todo:
                name = todo.pop()
                if name in ("", "."):
                    continue
                if name == "..":
                    if len(stack) == 1:
                        raise OSError(errno.EXDEV, "escape through ..", name)
                    os.close(stack.pop())
                    continue
                cur = stack[-1]
                if todo:
                    try:
                        stack.append(os.open(name, _O_PATH_DIR | os.O_NOFOLLOW, dir_fd=cur))
                        continue
                    except OSError as e:
                        if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                            raise
                        target = self._readlink_or_none(name, cur)
                        if target is None:
                            raise
                else:
                    try:
                        fd = os.open(name, flags | os.O_NOFOLLOW, mode, dir_fd=cur)
                    except OSError as e:
                        if not follow_last or e.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
                            raise
                        if e.errno == errno.EEXIST and flags & os.O_EXCL:
                            raise
                        target = self._readlink_or_none(name, cur)
                        if target is None:
                            raise
                    else:
                        if not (flags & os.O_PATH and follow_last):
                            return fd
                        # O_PATH|O_NOFOLLOW opens the link itself; expand it ourselves.
                        if not stat_mod.S_ISLNK(os.fstat(fd).st_mode):
                            return fd
                        os.close(fd)
                        target = os.readlink(name, dir_fd=cur)
                links += 1
                if links > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, "too many symlinks", name)
                if target.startswith("/"):
                    raise OSError(errno.EXDEV, "absolute symlink", name)
                todo.extend(target.split("/")[::-1])
            # Ran out of names (e.g. "a/.." or a symlink to "."): open the current dir.
            return os.open(".", (flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW)), dir_fd=stack[-1])
        finally:
            for fd in stack[1:]:
                os.close(fd)

    @staticmethod
    def _readlink_or_none(name: str, dir_fd: int) -> str | None:
        try:
            return os.readlink(name, dir_fd=dir_fd)
        except OSError:
            return None

    # -- case-insensitive resolution ------------------------------------------
    def _exists(self, components) -> bool:
        try:
            os.close(self._raw_open(components, os.O_PATH, follow_last=False))
            return True
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return False
            raise

    def _casefold_match(self, dir_components, name: str) -> str | None:
        fd = self._raw_open(dir_components, _O_LIST_DIR)
        want = name.casefold()
        try:
            with os.scandir(fd) as it:
                for ent in it:
                    if ent.name.casefold() == want:
                        return ent.name
        finally:
            os.close(fd)
        return None

    def resolve(self, components) -> tuple[str, ...]:
        """Case-correct `components` against what is on disk.

        Existing components take their on-disk spelling; a missing last component is
        kept as given (new names are created as the client spells them).  A missing
        intermediate component raises OBJECT_PATH_NOT_FOUND.
        """
        comps = tuple(components)
        try:
            if self.case_sensitive or not comps or self._exists(comps):
                return comps
            out: list[str] = []
            n = len(comps)
            for i, name in enumerate(comps):
                last = i == n - 1
                probe = out + [name]
                if not self._exists(probe):
                    try:
                        match = self._casefold_match(out, name)
                    except OSError as e:
                        raise _smb_error(e, last_component=False) from None
                    if match is None:
                        if last:
                            return tuple(probe)
                        raise SmbError(NtStatus.OBJECT_PATH_NOT_FOUND, "/".join(probe))
                    name = match
                out.append(name)
            return tuple(out)
        except OSError as e:
            raise _smb_error(e, last_component=False) from None

    # -- public operations ------------------------------------------------------
    def open(self, components, flags: int, mode: int = 0o666, follow_last: bool = True) -> int:
        """Open a file or directory beneath the share; returns an fd (O_CLOEXEC).

        Symlinks are followed only while they stay inside the share; leaving it raises
        PathEscapeError (ACCESS_DENIED).  Pass follow_last=False to get O_NOFOLLOW
        semantics on the last component.
        """
        comps = tuple(components)
        if flags & os.O_CREAT and not self.case_sensitive:
            comps = self.resolve(comps)
            try:
                return self._raw_open(comps, flags, mode, follow_last)
            except OSError as e:
                raise self._classify(comps, e) from None
        try:
            return self._raw_open(comps, flags, mode, follow_last)
        except OSError as e:
            if e.errno != errno.ENOENT or self.case_sensitive:
                raise self._classify(comps, e) from None
        fixed = self.resolve(comps)
        try:
            return self._raw_open(fixed, flags, mode, follow_last)
        except OSError as e:
            raise self._classify(fixed, e) from None

    def _classify(self, comps, e: OSError) -> SmbError:
        """Map an errno from a whole-path operation: was the last component at fault?"""
        if e.errno in (errno.ENOENT, errno.ENOTDIR) and len(comps) > 1:
            parent = comps[:-1]
            try:
                fd = self._raw_open(parent, _O_PATH_DIR)
            except OSError as pe:
                if pe.errno in (errno.ENOENT, errno.ENOTDIR):
                    return SmbError(NtStatus.OBJECT_PATH_NOT_FOUND, "/".join(parent))
                return _smb_error(pe, last_component=False)
            os.close(fd)
        return _smb_error(e, last_component=True)

    def open_parent(self, components) -> tuple[int, str]:
        """(owned O_PATH fd of the parent directory, on-disk last name) for *at calls."""
        comps = self.resolve(components)
        if not comps:
            raise SmbError(NtStatus.ACCESS_DENIED, "operation on the share root")
        try:
            fd = self._raw_open(comps[:-1], _O_PATH_DIR)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                raise SmbError(NtStatus.OBJECT_PATH_NOT_FOUND, "/".join(comps[:-1])) from None
            raise _smb_error(e, last_component=False) from None
        return fd, comps[-1]

    def stat(self, components, follow_last: bool = True) -> os.stat_result:
        """stat() beneath the share (symlinks followed only inside it)."""
        fd = self.open(components, os.O_PATH, follow_last=follow_last)
        try:
            return self._fstat(fd)
        finally:
            os.close(fd)

    def open_cached(self, components, flags: int) -> int:
        """Open exactly `components` (no case folding) only if the kernel can do it from
        its caches without any I/O (openat2 RESOLVE_CACHED): safe to call on the event
        loop. Returns the fd, or -1 when the caller must use open() in the I/O pool
        (not cached, not found under this spelling, a leased file answering EWOULDBLOCK
        to O_NONBLOCK, or O_CREAT/O_TRUNC, which RESOLVE_CACHED refuses). Never raises."""
        if not RESOLVE_CACHED_AVAILABLE or not self.use_openat2 or self._closed or not self.local_fs:
            return -1
        how = _CACHED_HOW.get(flags)
        if how is None:
            how = _CACHED_HOW[flags] = ctypes.byref(
                _OpenHow(flags | _O_CLOEXEC, 0, _RESOLVE | RESOLVE_CACHED))
        path = "/".join(components) if components else "."
        fd_arg = self._fd_arg
        if fd_arg is None:
            fd_arg = self._fd_arg = ctypes.c_int(self.fd)
        fd = _syscall(_SYS_openat2_arg, fd_arg, path.encode(_FS_ENCODING, "surrogateescape"),
                      how, _OPEN_HOW_SIZE_ARG)
        return fd if fd >= 0 else -1

    def fstat(self, fd: int):
        """The stat this root's stat() returns (StatX with use_statx)."""
        return self._fstat(fd)

    def open_dir(self, components) -> int:
        """An fd suitable for listing (O_RDONLY|O_DIRECTORY)."""
        return self.open(components, _O_LIST_DIR)

    def mkdir(self, components, mode: int = 0o777) -> None:
        pfd, name = self.open_parent(components)
        try:
            os.mkdir(name, mode, dir_fd=pfd)
        except OSError as e:
            raise _smb_error(e) from None
        finally:
            os.close(pfd)

    def unlink(self, components) -> None:
        pfd, name = self.open_parent(components)
        try:
            os.unlink(name, dir_fd=pfd)
        except OSError as e:
            raise _smb_error(e) from None
        finally:
            os.close(pfd)

    def rmdir(self, components) -> None:
        pfd, name = self.open_parent(components)
        try:
            os.rmdir(name, dir_fd=pfd)
        except OSError as e:
            raise _smb_error(e) from None
        finally:
            os.close(pfd)

    def rename(self, old_components, new_components, replace: bool) -> tuple[str, ...]:
        """Rename within the share; returns the on-disk components of the new name.

        replace=False is atomic (renameat2 RENAME_NOREPLACE).  A case-insensitive
        clash with another entry counts as a collision; renaming an entry onto a
        case variant of its own name is allowed.  Replacing a directory is refused
        with ACCESS_DENIED (MS-FSA 2.1.5.14.11).
        """
        src_fd, src_name = self.open_parent(old_components)
        try:
            new = tuple(new_components)
            if not new:
                raise SmbError(NtStatus.ACCESS_DENIED, "rename onto the share root")
            dst_fd, dst_name = self.open_parent(new)
            try:
                want = new[-1]
                if dst_name != want:
                    # resolve() found an existing case variant of the new name.
                    if os.path.samestat(os.fstat(src_fd), os.fstat(dst_fd)) and dst_name == src_name:
                        dst_name = want  # case-only rename of the same entry
                    elif not replace:
                        raise SmbError(NtStatus.OBJECT_NAME_COLLISION, "/".join(new))
                if replace:
                    try:
                        tst = os.stat(dst_name, dir_fd=dst_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        pass
                    except OSError as e:
                        raise _smb_error(e) from None
                    else:
                        if stat_mod.S_ISDIR(tst.st_mode):
                            raise SmbError(NtStatus.ACCESS_DENIED, "cannot replace a directory")
                    try:
                        os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
                    except OSError as e:
                        raise _smb_error(e) from None
                else:
                    self._rename_noreplace(src_fd, src_name, dst_fd, dst_name)
                return tuple(self.resolve(new[:-1])) + (dst_name,)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)

    @staticmethod
    def _rename_noreplace(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
        if src == dst and os.path.samestat(os.fstat(src_fd), os.fstat(dst_fd)):
            return  # renaming onto itself is a no-op, not a collision
        if _renameat2 is not None:
            r = _renameat2(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), RENAME_NOREPLACE)
            if r == 0:
                return
            err = ctypes.get_errno()
            if err != errno.EINVAL:  # EINVAL: filesystem without RENAME_NOREPLACE
                raise _smb_error(OSError(err, os.strerror(err), dst))
        # Fallback (racy, only on filesystems without RENAME_NOREPLACE): check first.
        try:
            os.stat(dst, dir_fd=dst_fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            raise SmbError(NtStatus.OBJECT_NAME_COLLISION, dst)
        try:
            os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        except OSError as e:
            raise _smb_error(e) from None

    def listdir_fd(self, dir_fd: int) -> list[str]:
        """Names in an open directory (small directories; use DirCursor for big ones)."""
        return os.listdir(dir_fd)
