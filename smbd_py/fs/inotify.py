"""Linux inotify, low level: one non-blocking descriptor, watches by path or by open fd,
and the parsing of its event records.

Owns: the ctypes bindings (inotify_init1, inotify_add_watch, inotify_rm_watch), the
IN_* constants, ``parse_events`` (struct inotify_event records out of a read buffer) and
``Inotify.read_events`` (a bounded, never-blocking drain of the descriptor). Users:
oplocks.watch (IN_MODIFY on files for read-caching breaks) and fs.dirwatch (directory
trees for CHANGE_NOTIFY). Who reads the descriptor when (the event loop's add_reader)
is the user's business.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from typing import Iterator, NamedTuple

IN_ACCESS = 0x00000001
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_MASK_ADD = 0x20000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# struct inotify_event { int wd; uint32_t mask; uint32_t cookie; uint32_t len; char name[]; }
EVENT = struct.Struct("=iIII")
READ_SIZE = 65536
MAX_READS = 256          # per drain: bounded, the descriptor is non-blocking

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


class Event(NamedTuple):
    wd: int
    mask: int
    cookie: int
    name: bytes          # b"" for events about the watched inode itself


def parse_events(data: bytes | memoryview) -> Iterator[Event]:
    """The records of one read(2) of an inotify descriptor (the kernel never splits one).
    Names come NUL-padded to an alignment; the padding is stripped."""
    off = 0
    end = len(data)
    while off + EVENT.size <= end:
        wd, mask, cookie, nlen = EVENT.unpack_from(data, off)
        off += EVENT.size
        name = bytes(data[off:off + nlen]).split(b"\0", 1)[0] if nlen else b""
        off += nlen
        yield Event(wd, mask, cookie, name)


def fd_path(fd: int) -> bytes:
    """/proc/self/fd/N: resolves to the open inode itself, whatever its name is now."""
    return f"/proc/self/fd/{fd}".encode()


class Inotify:
    """One inotify descriptor (non-blocking, close-on-exec). Not thread-safe for reads;
    add_watch/rm_watch may run on any thread."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def add_watch(self, path: bytes | str, mask: int) -> int:
        """The watch descriptor of `path` (the same one again for an inode already
        watched: IN_MASK_ADD in `mask` keeps its old events). Raises OSError."""
        if isinstance(path, str):
            path = os.fsencode(path)
        wd = _libc.inotify_add_watch(self.fd, path, mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch: {os.strerror(err)}", os.fsdecode(path))
        return wd

    def add_watch_fd(self, fd: int, mask: int) -> int:
        return self.add_watch(fd_path(fd), mask)

    def rm_watch(self, wd: int) -> bool:
        """False if the watch was already gone (EINVAL: its inode went away, the kernel
        removed it and queued IN_IGNORED)."""
        if self.fd < 0:
            return False
        if _libc.inotify_rm_watch(self.fd, wd) < 0:
            err = ctypes.get_errno()
            if err != errno.EINVAL:
                raise OSError(err, f"inotify_rm_watch({wd}): {os.strerror(err)}")
            return False
        return True

    def read_events(self, max_reads: int = MAX_READS) -> list[Event]:
        """Everything queued now, without blocking (at most `max_reads` reads)."""
        events: list[Event] = []
        for _ in range(max_reads):
            try:
                data = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            if not data:
                break
            events.extend(parse_events(data))
        return events

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
