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
# Events of watches being added, held until they are known (see _add_tree).
MAX_LIMBO = 4096
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


def watch_tree(ino: I.Inotify, root_fd: int, rel: str, include_self: bool,
               hide_reserved: bool, limit: int, list_new: bool = False
               ) -> tuple[list[tuple[str, int]], list[tuple[int, str, str, bool]]]:
    """Watch `rel` (if include_self) and the directories below it, of the directory open
    as `root_fd`, breadth first, at most `limit` watches; symlinks are not followed. Each
    directory is watched before it is listed, so nothing made in it goes unseen.
    Returns [(relative path, watch descriptor)] and, with `list_new` (a directory just
    made: what was made in it before its watch existed must be reported too), every
    entry seen as (watch descriptor, its directory's path, name, is a directory).
    Blocking (path lookups, readdir): run it in the I/O pool."""
    base = I.fd_path(root_fd)
    out: list[tuple[str, int]] = []
    entries: list[tuple[int, str, str, bool]] = []

    def add(r: str) -> bool:
        try:
            # /proc/self/fd/N is itself a (magic) link: only ever below it here, and
            # the subdirectory's own last component must not be a symlink.
            wd = ino.add_watch(base + b"/" + os.fsencode(_os_rel(r)),
                               WATCH_MASK | I.IN_DONT_FOLLOW)
        except OSError:
            return False
        out.append((r, wd))
        return True

    if include_self and not add(rel):
        return out, entries
    queue = [(rel, out[0][1] if include_self else -1)]
    while queue and len(out) < limit:
        cur, cur_wd = queue.pop(0)
        path = base + b"/" + os.fsencode(_os_rel(cur)) if cur else base
        try:
            with os.scandir(path) as it:
                for e in it:
                    name = os.fsdecode(e.name)
                    if cur == "" and hide_reserved and is_reserved_name(name):
                        continue
                    try:
                        is_dir = e.is_dir(follow_symlinks=False)
                    except OSError:
                        continue
                    if list_new and cur_wd >= 0:
                        entries.append((cur_wd, cur, name, is_dir))
                    if not is_dir:
                        continue
                    sub = join(cur, name)
                    if add(sub):
                        queue.append((sub, out[-1][1]))
                    if len(out) >= limit:
                        break
        except OSError:
            continue
    return out, entries


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
        self._adding = 0                         # tree additions in the I/O pool
        # (wd, name) -> the subscriptions that were told of it from a new directory's
        # listing (their IN_CREATE, if it comes, is not reported again)
        self._listed: dict[tuple[int, str], set[Subscription]] = {}
        self._limbo: list[I.Event] = []          # their events read before they were known
        self._tasks: set[asyncio.Task] = set()
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
            self._limbo.clear()
            self._listed.clear()
            self._loop.remove_reader(self._ino.fd)
            self._ino.close()
            self._ino = None

    async def subscribe(self, sink: Any, dir_fd: int, *, recursive: bool,
                        hide_reserved: bool) -> Subscription:
        """Watch the directory open as `dir_fd` (which must stay open until
        unsubscribe) and, if `recursive`, its subdirectories. Raises OSError."""
        self._start()
        assert self._ino is not None
        sub = Subscription(sink, dir_fd, recursive, hide_reserved)
        try:
            # The fd's own magic link: resolving it looks nothing up on the file system.
            wd = self._ino.add_watch_fd(dir_fd, WATCH_MASK)
        except OSError:
            self._stop_if_idle()
            raise
        self._register(sub, "", wd)
        if recursive:
            await self._add_tree(sub, "", include_self=False)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.closed:
            return
        sub.closed = True
        for wd in list(sub.dirs):
            self._drop(sub, wd)
        sub.dirs.clear()
        self._stop_if_idle()

    def _register(self, sub: Subscription, rel: str, wd: int) -> None:
        if sub.closed:
            if wd not in self._subs_of and self._ino is not None:
                try:
                    self._ino.rm_watch(wd)
                except OSError:
                    pass
            return
        old = sub.dirs.get(wd)
        if old is not None and old != rel:
            return          # the same directory under two names (bind mount): keep one
        sub.dirs[wd] = rel
        self._subs_of.setdefault(wd, {})[sub] = None

    async def _add_tree(self, sub: Subscription, rel: str, *, include_self: bool,
                        list_new: bool = False) -> None:
        """Watch `rel` (if include_self) and every directory below it for `sub`: path
        lookups and listings run in the I/O pool; events of the new watches read
        meanwhile wait in limbo and are reported once the watches are known."""
        limit = MAX_TREE_WATCHES + 1 - len(sub.dirs)
        if limit <= 0 or sub.closed or self._ino is None:
            if not sub.full_warned and limit <= 0:
                sub.full_warned = True
                log.warning("change notify: more than %d directories below one watched "
                            "tree; deeper changes are not reported", MAX_TREE_WATCHES)
            return
        ino = self._ino
        self._adding += 1
        try:
            if self._run_io is not None:
                pairs, entries = await self._run_io(watch_tree, ino, sub.root_fd, rel,
                                                    include_self, sub.hide_reserved, limit,
                                                    list_new)
            else:
                pairs, entries = watch_tree(ino, sub.root_fd, rel, include_self,
                                            sub.hide_reserved, limit, list_new)
        finally:
            self._adding -= 1
        if ino is not self._ino:
            return          # the descriptor was closed meanwhile (nothing watched)
        for r, wd in pairs:
            self._register(sub, r, wd)
        # A new directory's entries made before its watch: reported now, and their
        # IN_CREATE (if they came after the watch after all) not a second time.
        for wd, r, name, is_dir in entries:
            if sub.closed:
                break
            if len(self._listed) > 4096:
                self._listed.clear()
            self._listed.setdefault((wd, name), set()).add(sub)
            sub.sink.on_change(FILE_ACTION_ADDED, join(r, name), is_dir, CHANGE_NAME)
        limbo, self._limbo = self._limbo, []
        known = [e for e in limbo if e.wd in self._subs_of]
        if self._adding:
            self._limbo = [e for e in limbo if e.wd not in self._subs_of]
        if known:
            self._process(known, final=True)

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
        """A directory of `sub`'s tree moved inside it: its watches keep their
        descriptors, their paths change (one not watched yet is watched now)."""
        pre = old + "\\"
        found = False
        for wd, r in list(sub.dirs.items()):
            if r == old:
                sub.dirs[wd] = new
                found = True
            elif r.startswith(pre):
                sub.dirs[wd] = new + r[len(old):]
        if not found:
            self._watch_new_dir(sub, new, list_new=False)

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
                if self._adding and len(self._limbo) < MAX_LIMBO:
                    self._limbo.append(ev)
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
                self._listed.pop((ev.wd, name), None)
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
        listed = self._listed.get((wd, name)) if action == FILE_ACTION_ADDED else None
        for sub in list(subs):
            rel = sub.dirs.get(wd)
            if rel is None or sub.hidden(rel, name):
                continue
            if listed is not None and sub in listed:
                # Reported from the new directory's listing already.
                listed.discard(sub)
                if not listed:
                    self._listed.pop((wd, name), None)
                continue
            path = join(rel, name)
            if is_dir and sub.recursive:
                if action == FILE_ACTION_ADDED:
                    self._watch_new_dir(sub, path, list_new=True)
                elif action == FILE_ACTION_REMOVED:
                    self._drop_below(sub, path)
            sub.sink.on_change(action, path, is_dir, what)

    def _watch_new_dir(self, sub: Subscription, path: str, *, list_new: bool) -> None:
        """A directory appeared in `sub`'s tree: watch it and what is below it. Made just
        now (`list_new`), what was made in it before its watch is reported too; moved
        in, it counts as one addition, as on Windows."""
        t = self._loop.create_task(self._add_tree_logged(sub, path, list_new))
        self._tasks.add(t)              # the loop keeps only a weak reference
        t.add_done_callback(self._tasks.discard)

    async def _add_tree_logged(self, sub: Subscription, path: str, list_new: bool) -> None:
        try:
            await self._add_tree(sub, path, include_self=True, list_new=list_new)
        except Exception as e:          # the I/O pool shut down (server stopping), ...
            log.debug("change notify: no watch below %s: %r", path, e)

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
                self._watch_new_dir(sub, new, list_new=False)
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

