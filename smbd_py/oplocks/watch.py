"""inotify watches on files whose read caching no kernel lease backs.

Owns: one inotify descriptor per server, read by the event loop (never blocking it), one
watch per inode on IN_MODIFY (write(2), truncate, fallocate: fsnotify_modify in the
kernel, whoever does it - a local program, knfsd, another server), and the report
``on_modify(key)`` to its owner.

Why: SMB read caching (lease R/RH, LEVEL_II oplocks) must break when someone else writes.
A kernel read lease would do it, but the kernel refuses one while any writable open of
the inode exists - this server's own included, and this server opens the inode's shared
description O_RDWR whenever it may write (oplocks/backing.py says why). A write by
anyone produces IN_MODIFY; R breaks are never waited for (MS-SMB2 3.3.4.6), so learning
of the write just after it happened is what Windows offers too.

inotify cannot tell who wrote. The owner says when this server itself writes
(``own_write(key)``); events within OWN_WRITE_WINDOW_S of that are taken as the echo of
our own write and dropped. A foreign write inside that window goes unnoticed - the cost
of inotify; the table has already broken every other holder's R on our own write, so
only the writer's own read cache is at risk. Writes through a shared writable mmap
produce no event at all.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import time
from typing import Callable, Hashable, Optional

log = logging.getLogger(__name__)

IN_MODIFY = 0x00000002
IN_IGNORED = 0x00008000
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
# struct inotify_event { int wd; uint32_t mask; uint32_t cookie; uint32_t len; char name[]; }
_EVENT = struct.Struct("=iIII")

# Long enough for a queued pwrite in the I/O pool to run after data_changed() announced it.
OWN_WRITE_WINDOW_S = 1.0

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


class ModifyWatcher:
    """IN_MODIFY watches keyed by the owner's inode key. Methods run on the loop thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_modify: Optional[Callable[[Hashable], None]] = None) -> None:
        self._loop = loop
        self.on_modify = on_modify
        self._ifd = -1
        self._by_wd: dict[int, Hashable] = {}
        self._by_key: dict[Hashable, int] = {}
        self._own_until: dict[Hashable, float] = {}
        self.events_foreign = 0
        self.events_own = 0

    @property
    def running(self) -> bool:
        return self._ifd >= 0

    def start(self) -> None:
        if self._ifd >= 0:
            return
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._ifd = fd
        self._loop.add_reader(fd, self._on_readable)

    def close(self) -> None:
        if self._ifd < 0:
            return
        self._loop.remove_reader(self._ifd)
        os.close(self._ifd)
        self._ifd = -1
        self._by_wd.clear()
        self._by_key.clear()
        self._own_until.clear()

    def watching(self, key: Hashable) -> bool:
        return key in self._by_key

    def watch(self, key: Hashable, fd: int) -> bool:
        """Watch the inode open as `fd` (any fd, O_PATH included). False if refused."""
        if self._ifd < 0:
            return False
        if key in self._by_key:
            return True
        # /proc/self/fd/N resolves to the open inode itself, whatever its name is now.
        wd = _libc.inotify_add_watch(self._ifd, f"/proc/self/fd/{fd}".encode(), IN_MODIFY)
        if wd < 0:
            err = ctypes.get_errno()
            log.warning("inotify watch on %s refused: %s", key, os.strerror(err))
            return False
        # Two keys can never share an inode, but a reused wd must not keep a stale key.
        self._by_wd[wd] = key
        self._by_key[key] = wd
        return True

    def unwatch(self, key: Hashable) -> None:
        wd = self._by_key.pop(key, None)
        self._own_until.pop(key, None)
        if wd is None:
            return
        self._by_wd.pop(wd, None)
        if self._ifd >= 0 and _libc.inotify_rm_watch(self._ifd, wd) < 0:
            err = ctypes.get_errno()
            if err != errno.EINVAL:  # EINVAL: the inode is gone, the watch with it
                log.debug("inotify_rm_watch(%d): %s", wd, os.strerror(err))

    def own_write(self, key: Hashable) -> None:
        """This server is about to write the inode: drop the echo."""
        if key in self._by_key:
            self._own_until[key] = time.monotonic() + OWN_WRITE_WINDOW_S

    def _on_readable(self) -> None:
        keys: dict[Hashable, None] = {}
        overflow = False
        for _ in range(256):  # bounded; the fd is non-blocking
            try:
                data = os.read(self._ifd, 65536)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            if not data:
                break
            off = 0
            while off + _EVENT.size <= len(data):
                wd, mask, _cookie, nlen = _EVENT.unpack_from(data, off)
                off += _EVENT.size + nlen
                if mask & IN_Q_OVERFLOW:
                    overflow = True
                    continue
                key = self._by_wd.get(wd)
                if key is None:
                    continue
                if mask & IN_IGNORED:
                    # The inode went away (last link and last open gone): nothing to break.
                    self._by_wd.pop(wd, None)
                    self._by_key.pop(key, None)
                    continue
                if mask & IN_MODIFY:
                    keys[key] = None
        if overflow:
            # Lost events: every watched inode may have been written.
            log.warning("inotify queue overflow: breaking read caching of every watched file")
            keys = dict.fromkeys(self._by_key)
        now = time.monotonic()
        for key in keys:
            until = self._own_until.get(key)
            if until is not None and now < until and not overflow:
                self.events_own += 1
                continue
            self.events_foreign += 1
            cb = self.on_modify
            if cb is not None:
                try:
                    cb(key)
                except Exception:
                    log.exception("on_modify(%s) failed", key)
