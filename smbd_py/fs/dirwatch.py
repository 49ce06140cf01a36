"""Directory watches for change notification: what changed under a directory (or a
directory tree), whoever changed it - an SMB client of this server, a local program,
another server or knfsd on the same file system.

Owns: one inotify descriptor per server (fs.inotify), read on the event loop and never
blocking it; the watches on watched directories and, for tree watches, on every
subdirectory (added as subdirectories appear, bounded per subscription); the pairing of
IN_MOVED_FROM/IN_MOVED_TO by cookie (a rename inside one directory is an old-name /
new-name pair, a move between directories a removal and an addition, as Windows
reports them); and the report ``sub.on_change(action, relpath, is_dir, what)`` with the
path relative to the subscription's directory, components joined with backslashes.
The share's reserved directory (fs.paths.RESERVED_DIR) is never reported nor watched.

inotify tells neither who made a change nor what metadata changed: ``what`` is
CHANGE_NAME for names, CHANGE_DATA for written contents (IN_MODIFY) and CHANGE_META for
anything inode metadata (IN_ATTRIB: mode, times, xattrs - DOS attributes, EAs and
security descriptors live there). A creation initialises its file's metadata in the same
breath (this server writes the DOS attributes right after the create, ``touch`` sets
times): an IN_ATTRIB on a name just created, with nothing in between, is part of the
creation and not reported. Windows reports an attribute change of a file renamed through
a handle when that handle closes (smbtorture smb2.notify.mask-change; NTFS marks the file
for archiving): the IN_CLOSE_WRITE of a file name that was a rename's target is reported
as such a change.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Awaitable, Callable, Optional

from . import inotify as I
from .paths import is_reserved_name

log = logging.getLogger(__name__)

# MS-FSCC 2.7.1 FILE_NOTIFY_INFORMATION.Action
FILE_ACTION_ADDED = 1
FILE_ACTION_REMOVED = 2
FILE_ACTION_MODIFIED = 3
FILE_ACTION_RENAMED_OLD_NAME = 4
FILE_ACTION_RENAMED_NEW_NAME = 5

CHANGE_NAME = 1
CHANGE_META = 2
CHANGE_DATA = 3

WATCH_MASK = (I.IN_CREATE | I.IN_DELETE | I.IN_MOVED_FROM | I.IN_MOVED_TO | I.IN_MODIFY
              | I.IN_ATTRIB | I.IN_CLOSE_WRITE | I.IN_DELETE_SELF | I.IN_ONLYDIR
              | I.IN_EXCL_UNLINK)
# Subdirectories watched per tree subscription at most (each costs a kernel watch,
# fs.inotify.max_user_watches per user).
MAX_TREE_WATCHES = 4096
# How long an IN_MOVED_FROM that ended a read waits for its IN_MOVED_TO (the kernel
# queues the two back to back, but a read can fall between them).
MOVE_PAIR_WAIT_S = 0.005
# An IN_ATTRIB this soon after its name's IN_CREATE belongs to the creation.
CREATE_META_WINDOW_S = 0.2


class Subscription:
    """One watcher of one directory (a CHANGE_NOTIFY handle's). ``dirs`` maps each
    watch descriptor this subscription uses to its directory's path relative to the
    subscription's directory ("" for the directory itself)."""

    __slots__ = ("sink", "root_fd", "recursive", "hide_reserved", "dirs", "closed",
                 "full_warned")

    def __init__(self, sink: Any, root_fd: int, recursive: bool, hide_reserved: bool) -> None:
        self.sink = sink
        self.root_fd = root_fd
        self.recursive = recursive
        self.hide_reserved = hide_reserved
        self.dirs: dict[int, str] = {}
        self.closed = False
        self.full_warned = False

    def hidden(self, dir_rel: str, name: str) -> bool:
        return self.hide_reserved and dir_rel == "" and is_reserved_name(name)


def join(rel: str, name: str) -> str:
    return f"{rel}\\{name}" if rel else name


def _os_rel(rel: str) -> str:
    return rel.replace("\\", "/")


def scan_subdirs(root_fd: int, rel: str, hide_reserved: bool, limit: int) -> list[str]:
    """Relative paths (backslashes) of the directories below `rel` of the directory open
    as `root_fd`, breadth first, at most `limit`; symlinks are not followed. Blocking:
    run it in the I/O pool."""
    out: list[str] = []
    queue = [rel]
    base = I.fd_path(root_fd).decode()
    while queue and len(out) < limit:
        cur = queue.pop(0)
        path = f"{base}/{_os_rel(cur)}" if cur else base
        try:
            with os.scandir(path) as it:
                for e in it:
                    if cur == "" and hide_reserved and is_reserved_name(e.name):
                        continue
                    try:
                        if not e.is_dir(follow_symlinks=False):
                            continue
                    except OSError:
                        continue
                    sub = join(cur, e.name)
                    out.append(sub)
                    queue.append(sub)
                    if len(out) >= limit:
                        break
        except OSError:
            continue
    return out


class DirWatcher:
    """The server's directory watches. Methods run on the event loop thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 run_io: Optional[Callable[..., Awaitable[Any]]] = None) -> None:
        self._loop = loop
        self._run_io = run_io
        self._ino: Optional[I.Inotify] = None
        self._subs_of: dict[int, dict[Subscription, None]] = {}   # wd -> subscriptions
        self._held: Optional[I.Event] = None     # an IN_MOVED_FROM waiting for its pair
        self._held_timer: Optional[asyncio.TimerHandle] = None
        self._created: dict[tuple[int, bytes], float] = {}        # (wd, name) -> when
        self._renamed: dict[tuple[int, bytes], None] = {}         # files renamed to
        self.events = 0

    # ---- subscriptions -----------------------------------------------------------------
    @property
    def watches(self) -> int:
        return len(self._subs_of)

    def _start(self) -> None:
        if self._ino is None:
            self._ino = I.Inotify()
            self._loop.add_reader(self._ino.fd, self.drain)

    def _stop_if_idle(self) -> None:
        if self._ino is not None and not self._subs_of:
            if self._held_timer is not None:
                self._held_timer.cancel()
                self._held_timer = None
            self._held = None
            self._created.clear()
            self._renamed.clear()
            self._loop.remove_reader(self._ino.fd)
            self._ino.close()
            self._ino = None

    async def subscribe(self, sink: Any, dir_fd: int, *, recursive: bool,
                        hide_reserved: bool) -> Subscription:
        """Watch the directory open as `dir_fd` (which must stay open until
        unsubscribe) and, if `recursive`, its subdirectories. Raises OSError."""
        self._start()
        sub = Subscription(sink, dir_fd, recursive, hide_reserved)
        try:
            self._add(sub, "")
        except OSError:
            self._stop_if_idle()
            raise
        if recursive:
            await self._add_tree(sub, "")
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.closed:
            return
        sub.closed = True
        for wd in list(sub.dirs):
            self._drop(sub, wd)
        sub.dirs.clear()
        self._stop_if_idle()

    def _add(self, sub: Subscription, rel: str) -> bool:
        """Watch `rel` below the subscription's directory for it. OSError for the
        directory itself; False when a subdirectory cannot be watched (gone already,
        not a directory, the limit reached)."""
        if sub.closed or self._ino is None:
            return False
        if rel and len(sub.dirs) > MAX_TREE_WATCHES:
            if not sub.full_warned:
                sub.full_warned = True
                log.warning("change notify: more than %d directories below one watched "
                            "tree; deeper changes are not reported", MAX_TREE_WATCHES)
            return False
        path = I.fd_path(sub.root_fd)
        if rel:
            path += b"/" + os.fsencode(_os_rel(rel))
        try:
            # /proc/self/fd/N is itself a (magic) link: follow it for the directory
            # itself; a subdirectory's own last component must not be a symlink.
            wd = self._ino.add_watch(path, WATCH_MASK | I.IN_DONT_FOLLOW if rel else WATCH_MASK)
        except OSError:
            if not rel:
                raise
            return False
        old = sub.dirs.get(wd)
        if old is not None and old != rel:
            return True     # the same directory under two names (bind mount): keep one
        sub.dirs[wd] = rel
        self._subs_of.setdefault(wd, {})[sub] = None
        return True

    async def _add_tree(self, sub: Subscription, rel: str) -> None:
        """Watch every directory below `rel` (the scan runs in the I/O pool)."""
        limit = MAX_TREE_WATCHES - len(sub.dirs) + 1
        if limit <= 0:
            return
        if self._run_io is not None:
            rels = await self._run_io(scan_subdirs, sub.root_fd, rel, sub.hide_reserved, limit)
        else:
            rels = scan_subdirs(sub.root_fd, rel, sub.hide_reserved, limit)
        for r in rels:
            if not self._add(sub, r):
                if sub.closed or len(sub.dirs) > MAX_TREE_WATCHES:
                    return

    def _drop(self, sub: Subscription, wd: int) -> None:
        sub.dirs.pop(wd, None)
        subs = self._subs_of.get(wd)
        if subs is None:
            return
        subs.pop(sub, None)
        if not subs:
            del self._subs_of[wd]
            if self._ino is not None:
                try:
                    self._ino.rm_watch(wd)
                except OSError as e:
                    log.debug("%s", e)

    def _drop_below(self, sub: Subscription, rel: str) -> None:
        """Stop watching `rel` and everything below it for `sub` (moved out, removed)."""
        pre = rel + "\\"
        for wd, r in list(sub.dirs.items()):
            if r == rel or r.startswith(pre):
                self._drop(sub, wd)

    def _rename_below(self, sub: Subscription, old: str, new: str) -> None:
        pre = old + "\\"
        for wd, r in list(sub.dirs.items()):
            if r == old:
                sub.dirs[wd] = new
            elif r.startswith(pre):
                sub.dirs[wd] = new + r[len(old):]

    # ---- events ------------------------------------------------------------------------
    def drain(self) -> None:
        """Read and report everything queued now. Call before looking at a subscriber's
        state so changes made before the call are in it."""
        ino = self._ino
        if ino is None:
            return
        events = ino.read_events()
        if self._held is not None:
            events.insert(0, self._held)
            self._held = None
            if self._held_timer is not None:
                self._held_timer.cancel()
                self._held_timer = None
        if events:
            self._process(events, final=False)

    def _flush_held(self) -> None:
        self._held_timer = None
        ev, self._held = self._held, None
        events = self._ino.read_events() if self._ino is not None else []
        if ev is not None:
            events.insert(0, ev)
        if events:
            self._process(events, final=True)

    def _process(self, events: list[I.Event], final: bool) -> None:
        n = len(events)
        paired: set[int] = set()
        now = time.monotonic()
        if log.isEnabledFor(logging.DEBUG):
            for ev in events:
                log.debug("inotify wd=%d mask=%#x cookie=%d name=%r", *ev)
        for i, ev in enumerate(events):
            if i in paired:
                continue
            self.events += 1
            mask = ev.mask
            if mask & I.IN_Q_OVERFLOW:
                log.warning("inotify queue overflow: every change notify watcher told to "
                            "re-enumerate")
                for subs in list(self._subs_of.values()):
                    for sub in list(subs):
                        sub.sink.on_overflow()
                continue
            subs = self._subs_of.get(ev.wd)
            if subs is None:
                continue
            if mask & I.IN_IGNORED:
                self._gone(ev.wd)
                continue
            if not ev.name or mask & I.IN_DELETE_SELF:
                continue    # the watched directory's own metadata: reported by its parent
            if mask & I.IN_MOVED_FROM:
                j = next((k for k in range(i + 1, n) if events[k].cookie == ev.cookie
                          and events[k].mask & I.IN_MOVED_TO), None)
                if j is None and i == n - 1 and not final:
                    self._held = ev
                    self._held_timer = self._loop.call_later(MOVE_PAIR_WAIT_S,
                                                             self._flush_held)
                    return
                if j is not None:
                    paired.add(j)
                self._move(ev, events[j] if j is not None else None)
                continue
            if mask & I.IN_MOVED_TO:
                self._move(None, ev)
                continue
            name = os.fsdecode(ev.name)
            is_dir = bool(mask & I.IN_ISDIR)
            key = (ev.wd, ev.name)
            if mask & I.IN_ATTRIB:
                # The IN_ATTRIBs right after IN_CREATE (nothing else on that name in
                # between) initialise the new file: part of its creation.
                t = self._created.get(key)
                if t is not None and now - t < CREATE_META_WINDOW_S:
                    continue
                self._created.pop(key, None)
                self._report(ev.wd, FILE_ACTION_MODIFIED, name, is_dir, CHANGE_META)
                continue
            self._created.pop(key, None)
            if mask & I.IN_CREATE:
                if len(self._created) > 4096:
                    self._created.clear()
                self._created[key] = now
                self._report(ev.wd, FILE_ACTION_ADDED, name, is_dir, CHANGE_NAME)
            elif mask & I.IN_DELETE:
                self._renamed.pop(key, None)
                self._report(ev.wd, FILE_ACTION_REMOVED, name, is_dir, CHANGE_NAME)
            elif mask & I.IN_MODIFY:
                self._report(ev.wd, FILE_ACTION_MODIFIED, name, is_dir, CHANGE_DATA)
            elif mask & I.IN_CLOSE_WRITE:
                if self._renamed.pop(key, 0) is None:
                    self._report(ev.wd, FILE_ACTION_MODIFIED, name, False, CHANGE_META)

    def _report(self, wd: int, action: int, name: str, is_dir: bool, what: int) -> None:
        subs = self._subs_of.get(wd)
        if not subs:
            return
        for sub in list(subs):
            rel = sub.dirs.get(wd)
            if rel is None or sub.hidden(rel, name):
                continue
            path = join(rel, name)
            if is_dir and sub.recursive:
                if action == FILE_ACTION_ADDED:
                    self._watch_new_dir(sub, path)
                elif action == FILE_ACTION_REMOVED:
                    self._drop_below(sub, path)
            sub.sink.on_change(action, path, is_dir, what)

    def _watch_new_dir(self, sub: Subscription, path: str) -> None:
        if self._add(sub, path):
            # Directories made inside it before its watch existed (mkdir -p).
            self._loop.create_task(self._add_tree(sub, path))

    def _move(self, src: Optional[I.Event], dst: Optional[I.Event]) -> None:
        ev = src if src is not None else dst
        assert ev is not None
        is_dir = bool(ev.mask & I.IN_ISDIR)
        if src is not None:
            self._renamed.pop((src.wd, src.name), None)
        if dst is not None and not is_dir:
            if len(self._renamed) > 4096:
                self._renamed.clear()
            self._renamed[(dst.wd, dst.name)] = None
        subs: dict[Subscription, None] = {}
        for e in (src, dst):
            if e is not None:
                subs.update(self._subs_of.get(e.wd, {}))
        for sub in list(subs):
            old = new = None
            if src is not None:
                rel = sub.dirs.get(src.wd)
                name = os.fsdecode(src.name)
                if rel is not None and not sub.hidden(rel, name):
                    old = join(rel, name)
            if dst is not None:
                rel = sub.dirs.get(dst.wd)
                name = os.fsdecode(dst.name)
                if rel is not None and not sub.hidden(rel, name):
                    new = join(rel, name)
            sink = sub.sink
            if old is not None and new is not None and src is not None and dst is not None \
                    and src.wd == dst.wd:
                if is_dir and sub.recursive:
                    self._rename_below(sub, old, new)
                sink.on_change(FILE_ACTION_RENAMED_OLD_NAME, old, is_dir, CHANGE_NAME)
                sink.on_change(FILE_ACTION_RENAMED_NEW_NAME, new, is_dir, CHANGE_NAME)
                continue
            if old is not None and new is not None and is_dir and sub.recursive:
                self._rename_below(sub, old, new)
            elif old is not None and is_dir and sub.recursive:
                self._drop_below(sub, old)
            elif new is not None and is_dir and sub.recursive:
                self._watch_new_dir(sub, new)
            if old is not None:
                sink.on_change(FILE_ACTION_REMOVED, old, is_dir, CHANGE_NAME)
            if new is not None:
                sink.on_change(FILE_ACTION_ADDED, new, is_dir, CHANGE_NAME)

    def _gone(self, wd: int) -> None:
        """The kernel dropped the watch: its directory was removed (or unmounted)."""
        subs = self._subs_of.pop(wd, {})
        for sub in list(subs):
            rel = sub.dirs.pop(wd, None)
            if rel == "":
                sub.sink.on_gone()
        self._stop_if_idle()

    def close(self) -> None:
        for subs in list(self._subs_of.values()):
            for sub in list(subs):
                sub.closed = True
        self._subs_of.clear()
        self._stop_if_idle()

