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
import logging
import os
import time
from typing import Callable, Hashable, Optional

from ..fs.inotify import IN_IGNORED, IN_MODIFY, IN_Q_OVERFLOW, Inotify

log = logging.getLogger(__name__)

# Long enough for a queued pwrite in the I/O pool to run after data_changed() announced it.
OWN_WRITE_WINDOW_S = 1.0


class ModifyWatcher:
    """IN_MODIFY watches keyed by the owner's inode key. Methods run on the loop thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_modify: Optional[Callable[[Hashable], None]] = None) -> None:
        self._loop = loop
        self.on_modify = on_modify
        self._ino: Optional[Inotify] = None
        self._by_wd: dict[int, Hashable] = {}
        self._by_key: dict[Hashable, int] = {}
        self._own_until: dict[Hashable, float] = {}
        self.events_foreign = 0
        self.events_own = 0

    @property
    def running(self) -> bool:
        return self._ino is not None

    def start(self) -> None:
        if self._ino is not None:
            return
        self._ino = Inotify()
        self._loop.add_reader(self._ino.fd, self._on_readable)

    def close(self) -> None:
        if self._ino is None:
            return
        self._loop.remove_reader(self._ino.fd)
        self._ino.close()
        self._ino = None
        self._by_wd.clear()
        self._by_key.clear()
        self._own_until.clear()

    def watching(self, key: Hashable) -> bool:
        return key in self._by_key

    def watch(self, key: Hashable, fd: int) -> bool:
        """Watch the inode open as `fd` (any fd, O_PATH included). False if refused."""
        if self._ino is None:
            return False
        if key in self._by_key:
            return True
        # /proc/self/fd/N resolves to the open inode itself, whatever its name is now.
        try:
            wd = self._ino.add_watch_fd(fd, IN_MODIFY)
        except OSError as e:
            log.warning("inotify watch on %s refused: %s", key, os.strerror(e.errno or 0))
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
        if self._ino is not None:
            try:
                self._ino.rm_watch(wd)   # False: the inode is gone, the watch with it
            except OSError as e:
                log.debug("%s", e)

    def own_write(self, key: Hashable) -> None:
        """This server is about to write the inode: drop the echo."""
        if key in self._by_key:
            self._own_until[key] = time.monotonic() + OWN_WRITE_WINDOW_S

    def _on_readable(self) -> None:
        keys: dict[Hashable, None] = {}
        overflow = False
        if self._ino is None:
            return
        for ev in self._ino.read_events():
            if ev.mask & IN_Q_OVERFLOW:
                overflow = True
                continue
            key = self._by_wd.get(ev.wd)
            if key is None:
                continue
            if ev.mask & IN_IGNORED:
                # The inode went away (last link and last open gone): nothing to break.
                self._by_wd.pop(ev.wd, None)
                self._by_key.pop(key, None)
                continue
            if ev.mask & IN_MODIFY:
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
