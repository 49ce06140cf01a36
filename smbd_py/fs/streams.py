"""Alternate data streams ("file:stream", MS-FSCC 2.4.43, MS-FSA 2.1.5.1): the stream depot.

This module owns where named streams live and how they are found, created, listed and
removed. A named stream is a real file in a depot inside the share:

    <share root>/.smbd_py/streams/<id>/<stream name>

`<id>` is a random 32-hex-digit id kept on the base file (or directory) in the xattr
``user.smbd_py.streams`` as ``<id>:<inode number>``, set when its first stream is
created. Keying by an xattr rather than by inode number survives renames and hard links
(every name of an inode sees the same streams) and never attaches an old depot to a new
file that reuses a freed inode number. No xattr means the file has no named streams.

Copies. A copy that keeps xattrs (cp -a, rsync -X, tar --xattrs, a restore) carries the
value to a file with another inode number. The recorded inode tells: such a file owns
no depot (depot_id answers None, a delete or overwrite of it leaves the original's depot
alone) until the server first looks at its streams (claim_depot, on a stream CREATE or a
FileStreamInformation query), which copies the original's streams into a new depot of
its own and rewrites the xattr: a copy keeps its streams, as a Windows copy does, and
never shares them. The inode number, not st_dev, is recorded: device numbers change
across reboots for some file systems, inode numbers stay. A restored share therefore
copies each depot once and leaves the old ones as orphans (below).

Orphans. The server removes a depot with its file's last name (delete, and a rename or
link that replaces the file). A program other than the server deleting or replacing a
base file leaves its depot behind; `smbd-py streams gc SHARE_PATH`
(collect_orphans) removes the depots no file names any more.

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

import contextlib
import errno
import os
import re
import shutil
import stat as stat_mod
import threading
import time
import uuid

from ..wire.status import NtStatus, SmbError
from .paths import RESERVED_DIR, StatX

__all__ = ["STREAMS_XATTR", "depot_id", "claim_depot", "ensure_depot_id", "depot_components",
           "stream_components", "find_stream", "list_streams", "remove_depot",
           "remove_all_streams", "hold_depot", "release_depot", "collect_orphans",
           "StreamStat"]

STREAMS_XATTR = "user.smbd_py.streams"
_STREAMS_DIR = "streams"
# "<32 hex digits>:<inode number>" (round 1 wrote the id alone: still accepted, unchecked).
_VALUE_RE = re.compile(r"([0-9a-f]{32})(?::([0-9]{1,20}))?")
_ID_RE = re.compile(r"[0-9a-f]{32}")
_claim_lock = threading.Lock()
_O_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_O_LIST_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _read_value(base_fd: int) -> tuple[str, int | None] | None:
    """(depot id, recorded inode number or None) from the xattr, or None."""
    try:
        v = os.getxattr(_fd_path(base_fd), STREAMS_XATTR)
    except OSError:
        return None
    # Anything else was not written by us: treat it as no streams rather than a path.
    m = _VALUE_RE.fullmatch(v.decode("ascii", "replace"))
    if m is None:
        return None
    return m.group(1), (int(m.group(2)) if m.group(2) else None)


def _value(did: str, ino: int) -> bytes:
    return f"{did}:{ino}".encode("ascii")


def depot_id(base_fd: int) -> str | None:
    """The id of the depot base_fd's file owns (any fd, O_PATH too), or None: no xattr,
    a value we did not write, or one copied from another file (the recorded inode is not
    this file's: cp -a, rsync -X, a restore). Use claim_depot to adopt a copied one."""
    got = _read_value(base_fd)
    if got is None:
        return None
    did, ino = got
    if ino is not None and ino != os.fstat(base_fd).st_ino:
        return None
    return did


def claim_depot(root, base_fd: int) -> str | None:
    """depot_id, after giving a file whose xattr was copied from another file (see the
    module docstring) a depot of its own holding copies of the streams (copy on first
    use: a copy of a file carries its streams, as a Windows copy does, and never shares
    them with the original). None when the file has no streams."""
    got = _read_value(base_fd)
    if got is None:
        return None
    did, ino = got
    st = os.fstat(base_fd)
    if ino is None or ino == st.st_ino:
        return did
    with _claim_lock:
        got = _read_value(base_fd)          # another thread may have claimed it meanwhile
        if got is None:
            return None
        did, ino = got
        if ino is None or ino == st.st_ino:
            return did
        new = uuid.uuid4().hex
        sfd = _open_depot(root, did)
        if sfd is not None:
            try:
                make_depot(root, new)
                _copy_depot(root, sfd, new)
            finally:
                os.close(sfd)
        os.setxattr(_fd_path(base_fd), STREAMS_XATTR, _value(new, st.st_ino))
        return new


def _copy_depot(root, sfd: int, dst: str) -> None:
    """Copy every stream file of the depot open as sfd into the (new) depot dst."""
    dfd = root.open(depot_components(dst), _O_LIST_DIR)
    try:
        for name in os.listdir(sfd):
            try:
                i = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                            dir_fd=sfd)
            except OSError:
                continue                    # removed meanwhile, or not a file
            try:
                if not stat_mod.S_ISREG(os.fstat(i).st_mode):
                    continue
                o = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666,
                            dir_fd=dfd)
                try:
                    _copy_fd(i, o)
                finally:
                    os.close(o)
            finally:
                os.close(i)
    finally:
        os.close(dfd)


def _copy_fd(i: int, o: int) -> None:
    try:
        while os.copy_file_range(i, o, 1 << 30) > 0:
            pass
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    while True:                            # a file system without copy_file_range
        buf = memoryview(os.read(i, 1 << 20))
        if not buf:
            return
        while buf:
            buf = buf[os.write(o, buf):]


def ensure_depot_id(base_fd: int) -> str:
    """The depot id of base_fd's file, created (atomically: XATTR_CREATE) if missing.
    A copied value (claim_depot not called) is replaced by a new, empty depot's id."""
    have = depot_id(base_fd)
    if have is not None:
        return have
    new = uuid.uuid4().hex
    ino = os.fstat(base_fd).st_ino
    try:
        os.setxattr(_fd_path(base_fd), STREAMS_XATTR, _value(new, ino), os.XATTR_CREATE)
    except OSError as e:
        if e.errno == errno.EEXIST:
            have = depot_id(base_fd)   # another open (or server) won the race
            if have is not None:
                return have
            os.setxattr(_fd_path(base_fd), STREAMS_XATTR, _value(new, ino))
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
    did = claim_depot(root, base_fd)
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
    if _read_value(base_fd) is None:
        return
    did = depot_id(base_fd)
    if did is not None:             # a copied value names another file's depot: keep it
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


def hold_depot(root, components) -> tuple[int, str] | None:
    """Before a name goes (delete, or replaced by a rename or link onto it): an O_PATH
    fd on the file it names and that file's depot id, or None when it has no streams.
    O_PATH breaks no lease and never blocks on one. Pass the result to release_depot
    after the name is gone."""
    try:
        fd = root.open(components, os.O_PATH, follow_last=False)
    except SmbError:
        return None
    try:
        st = os.fstat(fd)
        did = None if stat_mod.S_ISLNK(st.st_mode) else depot_id(fd)
    except OSError:
        did = None
    if did is None:
        os.close(fd)
        return None
    return fd, did


def release_depot(root, held: tuple[int, str] | None) -> None:
    """After hold_depot's name went: the depot goes with the file's last name (the
    held inode's link count is then 0; another hard link keeps the streams)."""
    if held is None:
        return
    fd, did = held
    try:
        gone = os.fstat(fd).st_nlink == 0
    except OSError:
        gone = False
    finally:
        os.close(fd)
    if gone:
        remove_depot(root, did)


class StreamStat(StatX):
    """What a stream open reports: the base file's times, ids and permission bits with the
    stream's size and allocation (MS-FSA: streams share the file's metadata), always a
    regular file (a stream of a directory is not a directory)."""

    __slots__ = ()

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


def collect_orphans(share_path: str, *, dry_run: bool = False,
                    min_age_s: float = 60.0) -> list[str]:
    """Remove the depots no file of the share names any more; returns their ids.

    A base file deleted or replaced by a program other than smbd_py (rm, mv over it, an
    editor's save-by-rename) leaves its depot behind: nothing on the file system tells
    us. This walks the whole share (symlinks not followed, the reserved directory
    skipped), gathers every id an xattr names (copied values too: their copies still
    claim from them) and removes the other depots. A depot changed within min_age_s of
    the walk's start is kept: a server may be giving a file its first stream while we
    walk. Blocking and proportional to the share's size: an administrator's tool
    (`smbd-py streams gc SHARE_PATH`), best run while the share is quiet
    (a file renamed across directories during the walk can be missed)."""
    start = time.time()
    top = os.path.realpath(share_path)
    named: set[str] = set()
    stack = [top]
    for _ in range(10_000_000):
        if not stack:
            break
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for ent in it:
                if d == top and ent.name == RESERVED_DIR:
                    continue
                try:
                    v = os.getxattr(ent.path, STREAMS_XATTR, follow_symlinks=False)
                except OSError:
                    v = None
                if v is not None:
                    m = _VALUE_RE.fullmatch(v.decode("ascii", "replace"))
                    if m is not None:
                        named.add(m.group(1))
                try:
                    if ent.is_dir(follow_symlinks=False):
                        stack.append(ent.path)
                except OSError:
                    pass
    depots = os.path.join(top, RESERVED_DIR, _STREAMS_DIR)
    try:
        ids = os.listdir(depots)
    except OSError:
        return []
    removed = []
    with contextlib.closing(_PathRoot(top)) as root:
        for did in sorted(ids):
            if did in named or not _ID_RE.fullmatch(did):
                continue
            try:
                st = os.stat(os.path.join(depots, did), follow_symlinks=False)
            except OSError:
                continue
            if max(st.st_mtime, st.st_ctime) > start - min_age_s:
                continue
            if not dry_run:
                remove_depot(root, did)
            removed.append(did)
    return removed


class _PathRoot:
    """The one ShareRoot method remove_depot needs, for collect_orphans (no ShareRoot:
    the collector runs outside a server)."""

    def __init__(self, top: str) -> None:
        self._fd = os.open(top, _O_PATH_DIR)

    def open(self, components, flags: int) -> int:
        fd = self._fd
        for i, name in enumerate(components):
            last = i == len(components) - 1
            try:
                nfd = os.open(name, (flags if last else _O_PATH_DIR) | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                raise SmbError(NtStatus.OBJECT_PATH_NOT_FOUND, str(e)) from None
            finally:
                if fd != self._fd:
                    os.close(fd)
            fd = nfd
        return fd if fd != self._fd else os.dup(fd)

    def close(self) -> None:
        os.close(self._fd)
