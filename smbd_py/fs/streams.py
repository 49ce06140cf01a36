"""Alternate data streams ("file:stream", MS-FSCC 2.4.43, MS-FSA 2.1.5.1): the stream depot.

This module owns where named streams live and how they are found, created, listed and
removed. A named stream is a real file in a depot inside the share:

    <share root>/.smbd_py/streams/<id>/<stream name>

`<id>` is a random 32-hex-digit id kept on the base file (or directory) in the xattr
``user.smbd_py.streams``, set when its first stream is created. Keying by an xattr rather
than by inode number survives renames and hard links (every name of an inode sees the same
streams) and never attaches an old depot to a new file that reuses a freed inode number.
No xattr means the file has no named streams.

Because a stream is an ordinary file, every fd-based path of the server (READ/WRITE/LOCK,
share modes, oplocks and leases, kernel lease backing, delete-on-close) works on it
unchanged, and two servers exporting one directory see (and break each other on) the
same streams. A local program reads a stream's data at the depot path above.

Stream names are case-insensitive and case-preserving: the depot directory is small, so a
lookup lists it and compares casefolded names; a new stream is created as spelled.

The reserved `.smbd_py` directory at the share root is hidden from clients by
fs.paths (split_stream_path refuses it, DirCursor does not list it).

A file system that refuses user xattrs cannot hold streams: creating one answers
STATUS_OBJECT_NAME_INVALID, what Samba answers without a streams module.

All functions are blocking (they touch the file system): call them through ctx.run_io.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import stat as stat_mod
import uuid

from ..wire.status import NtStatus, SmbError
from .paths import RESERVED_DIR

__all__ = ["STREAMS_XATTR", "depot_id", "ensure_depot_id", "depot_components",
           "stream_components", "find_stream", "list_streams", "remove_depot",
           "remove_all_streams", "StreamStat"]

STREAMS_XATTR = "user.smbd_py.streams"
_STREAMS_DIR = "streams"
_ID_RE = re.compile(r"[0-9a-f]{32}")
_O_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_O_LIST_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def depot_id(base_fd: int) -> str | None:
    """The depot id of the file open as base_fd (any fd, O_PATH too), or None."""
    try:
        v = os.getxattr(_fd_path(base_fd), STREAMS_XATTR)
    except OSError:
        return None
    s = v.decode("ascii", "replace")
    # Anything else was not written by us: treat it as no streams rather than a path.
    return s if _ID_RE.fullmatch(s) else None


def ensure_depot_id(base_fd: int) -> str:
    """The depot id of base_fd's file, created (atomically: XATTR_CREATE) if missing."""
    have = depot_id(base_fd)
    if have is not None:
        return have
    new = uuid.uuid4().hex
    try:
        os.setxattr(_fd_path(base_fd), STREAMS_XATTR, new.encode("ascii"), os.XATTR_CREATE)
    except OSError as e:
        if e.errno == errno.EEXIST:
            have = depot_id(base_fd)   # another open (or server) won the race
            if have is not None:
                return have
            os.setxattr(_fd_path(base_fd), STREAMS_XATTR, new.encode("ascii"))
            return new
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES):
            raise SmbError(NtStatus.OBJECT_NAME_INVALID,
                           "the file system refuses user xattrs: no named streams") from None
        raise
    return new


def depot_components(did: str) -> tuple[str, ...]:
    """Share components of a depot directory (internal: clients cannot name them)."""
    return (RESERVED_DIR, _STREAMS_DIR, did)


def stream_components(did: str, name: str) -> tuple[str, ...]:
    return (RESERVED_DIR, _STREAMS_DIR, did, name)


def make_depot(root, did: str) -> None:
    """Create the depot directory of `did` (and .smbd_py/streams) beneath the share."""
    comps: tuple[str, ...] = ()
    for name in depot_components(did):
        fd = root.open(comps, _O_PATH_DIR)
        try:
            os.mkdir(name, 0o777, dir_fd=fd)
        except FileExistsError:
            pass
        finally:
            os.close(fd)
        comps += (name,)


def _open_depot(root, did: str) -> int | None:
    """An fd for listing the depot of `did`, or None if it does not exist."""
    try:
        return root.open(depot_components(did), _O_LIST_DIR)
    except SmbError as e:
        if e.status in (NtStatus.OBJECT_NAME_NOT_FOUND, NtStatus.OBJECT_PATH_NOT_FOUND):
            return None
        raise


def find_stream(root, did: str, name: str) -> str | None:
    """The on-disk spelling of stream `name` in the depot (case-insensitive), or None."""
    fd = _open_depot(root, did)
    if fd is None:
        return None
    want = name.casefold()
    try:
        with os.scandir(fd) as it:
            for ent in it:
                if ent.name == name:
                    return name
                if ent.name.casefold() == want:
                    return ent.name
    finally:
        os.close(fd)
    return None


def list_streams(root, base_fd: int) -> list[tuple[str, os.stat_result]]:
    """(name, stat) of every named stream of base_fd's file, sorted by name."""
    did = depot_id(base_fd)
    if did is None:
        return []
    fd = _open_depot(root, did)
    if fd is None:
        return []
    out = []
    try:
        with os.scandir(fd) as it:
            for ent in it:
                try:
                    st = ent.stat(follow_symlinks=False)
                except OSError:
                    continue      # removed meanwhile
                if stat_mod.S_ISREG(st.st_mode):
                    out.append((ent.name, st))
    finally:
        os.close(fd)
    out.sort(key=lambda e: e[0].casefold())
    return out


def remove_depot(root, did: str) -> None:
    """Delete the depot of `did` with every stream in it (open streams keep their data
    until closed, as any unlinked file)."""
    try:
        pfd = root.open(depot_components(did)[:-1], _O_PATH_DIR)
    except SmbError:
        return
    try:
        dfd = os.open(did, _O_LIST_DIR | os.O_NOFOLLOW, dir_fd=pfd)
    except OSError:
        os.close(pfd)
        return
    try:
        for name in os.listdir(dfd):
            try:
                os.unlink(name, dir_fd=dfd)
            except IsADirectoryError:
                shutil.rmtree(name, dir_fd=dfd)
            except FileNotFoundError:
                pass
        try:
            os.rmdir(did, dir_fd=pfd)
        except OSError:
            pass          # a stream was created meanwhile: keep the directory
    finally:
        os.close(dfd)
        os.close(pfd)


def remove_all_streams(root, base_fd: int) -> None:
    """Overwrite/supersede of the base file removes its named streams (Windows does):
    the depot goes and the xattr with it, so the file has no streams again."""
    did = depot_id(base_fd)
    if did is None:
        return
    remove_depot(root, did)
    try:
        os.removexattr(_fd_path(base_fd), STREAMS_XATTR)
    except OSError:
        pass


def depot_of_name(root, components) -> tuple[str | None, int]:
    """(depot id, link count) of the file at `components` without opening it for data
    (an O_PATH open breaks no lease): what a delete needs before it unlinks the name."""
    try:
        fd = root.open(components, os.O_PATH, follow_last=False)
    except SmbError:
        return None, 0
    try:
        st = os.fstat(fd)
        if stat_mod.S_ISLNK(st.st_mode):
            return None, st.st_nlink
        return depot_id(fd), (1 if stat_mod.S_ISDIR(st.st_mode) else st.st_nlink)
    finally:
        os.close(fd)


class StreamStat:
    """What a stream open reports: the base file's times, ids and permission bits with the
    stream's size and allocation (MS-FSA: streams share the file's metadata), always a
    regular file (a stream of a directory is not a directory)."""

    __slots__ = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size",
                 "st_blocks", "st_blksize", "st_atime_ns", "st_mtime_ns", "st_ctime_ns",
                 "st_birthtime_ns", "st_rdev")

    def __init__(self, base_st, stream_st) -> None:
        self.st_mode = stat_mod.S_IFREG | stat_mod.S_IMODE(base_st.st_mode)
        self.st_ino = base_st.st_ino
        self.st_dev = base_st.st_dev
        self.st_nlink = 1 if stat_mod.S_ISDIR(base_st.st_mode) else base_st.st_nlink
        self.st_uid = base_st.st_uid
        self.st_gid = base_st.st_gid
        self.st_size = stream_st.st_size
        self.st_blocks = stream_st.st_blocks
        self.st_blksize = getattr(stream_st, "st_blksize", 4096)
        self.st_atime_ns = base_st.st_atime_ns
        self.st_mtime_ns = base_st.st_mtime_ns
        self.st_ctime_ns = base_st.st_ctime_ns
        self.st_birthtime_ns = getattr(base_st, "st_birthtime_ns", 0)
        self.st_rdev = 0

    @property
    def st_atime(self) -> float:
        return self.st_atime_ns / 1e9

    @property
    def st_mtime(self) -> float:
        return self.st_mtime_ns / 1e9

    @property
    def st_ctime(self) -> float:
        return self.st_ctime_ns / 1e9
