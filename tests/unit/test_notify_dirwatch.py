"""fs.inotify and fs.dirwatch against the real kernel on a temporary directory (no SMB):
record parsing, rename pairing by cookie (same directory: old/new name; across: removed
and added; out of the tree: removed once the pair wait ran out), tree watches following
new and moved subdirectories, the creation's own metadata not reported, the reserved
directory hidden, and the inotify descriptor closed once nothing is watched."""
from __future__ import annotations

import asyncio
import os
import struct

import pytest

from smbd_py.fs import dirwatch as DW
from smbd_py.fs import inotify as I

ADDED, REMOVED, MODIFIED = DW.FILE_ACTION_ADDED, DW.FILE_ACTION_REMOVED, DW.FILE_ACTION_MODIFIED
OLD, NEW = DW.FILE_ACTION_RENAMED_OLD_NAME, DW.FILE_ACTION_RENAMED_NEW_NAME


def test_parse_events_strips_name_padding():
    data = (struct.pack("=iIII", 3, I.IN_CREATE, 0, 16) + b"name.txt".ljust(16, b"\0")
            + struct.pack("=iIII", 4, I.IN_IGNORED, 7, 0))
    assert list(I.parse_events(data)) == [I.Event(3, I.IN_CREATE, 0, b"name.txt"),
                                          I.Event(4, I.IN_IGNORED, 7, b"")]


class Sink:
    def __init__(self) -> None:
        self.changes: list[tuple[int, str, bool, int]] = []
        self.overflows = 0
        self.gone = 0

    def on_change(self, action, name, is_dir, what):
        self.changes.append((action, name, is_dir, what))

    def on_overflow(self):
        self.overflows += 1

    def on_gone(self):
        self.gone += 1

    def names(self):
        return [(a, n) for a, n, _, _ in self.changes]


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    yield root, fd
    os.close(fd)


async def settle(w: DW.DirWatcher) -> None:
    """Let a held IN_MOVED_FROM time out, then read whatever is left."""
    await asyncio.sleep(DW.MOVE_PAIR_WAIT_S * 4)
    w.drain()


async def test_flat_watch_names_and_renames(tree):
    root, fd = tree
    w = DW.DirWatcher(asyncio.get_running_loop())
    sink = Sink()
    sub = await w.subscribe(sink, fd, recursive=False, hide_reserved=False)
    (root / "f.txt").write_bytes(b"")
    os.rename(root / "f.txt", root / "g.txt")
    os.rename(root / "g.txt", root.parent / "outside" / "g.txt")   # out of the watch
    (root / "a" / "ignored.txt").write_bytes(b"")                  # below: not watched
    await settle(w)
    names = sink.names()
    assert names[0] == (ADDED, "f.txt")
    assert (OLD, "f.txt") in names and (NEW, "g.txt") in names
    assert names.index((OLD, "f.txt")) + 1 == names.index((NEW, "g.txt"))
    assert names[-1] == (REMOVED, "g.txt")
    assert not [n for _, n in names if "ignored" in n]
    w.unsubscribe(sub)
    assert w._ino is None, "the descriptor closes once nothing is watched"


async def test_creation_metadata_is_part_of_the_creation(tree):
    root, fd = tree
    w = DW.DirWatcher(asyncio.get_running_loop())
    sink = Sink()
    sub = await w.subscribe(sink, fd, recursive=False, hide_reserved=False)
    p = root / "new.txt"
    p.write_bytes(b"")                  # IN_CREATE, IN_CLOSE_WRITE
    w.drain()
    os.chmod(p, 0o600)                  # after another event on the name: reported
    w.drain()
    q = root / "touched.txt"
    fdq = os.open(q, os.O_CREAT | os.O_WRONLY, 0o644)
    os.fchmod(fdq, 0o640)               # right after the create: part of it
    os.write(fdq, b"data")
    os.close(fdq)
    w.drain()
    assert sink.changes == [
        (ADDED, "new.txt", False, DW.CHANGE_NAME),
        (MODIFIED, "new.txt", False, DW.CHANGE_META),
        (ADDED, "touched.txt", False, DW.CHANGE_NAME),
        (MODIFIED, "touched.txt", False, DW.CHANGE_DATA),
    ]
    w.unsubscribe(sub)


async def test_tree_watch_follows_new_and_moved_directories(tree):
    root, fd = tree
    w = DW.DirWatcher(asyncio.get_running_loop())
    sink = Sink()
    sub = await w.subscribe(sink, fd, recursive=True, hide_reserved=False)
    assert sorted(sub.dirs.values()) == ["", "a", "a\\b"]
    (root / "a" / "b" / "deep.txt").write_bytes(b"")
    (root / "c").mkdir()
    await settle(w)                                      # its watch is added
    (root / "c" / "in-c.txt").write_bytes(b"")
    os.rename(root / "c", root / "a" / "c2")            # a directory moves inside the tree
    w.drain()
    (root / "a" / "c2" / "after-move.txt").write_bytes(b"")
    os.rename(root / "a" / "b", root.parent / "outside" / "b")   # leaves the tree
    await settle(w)
    (root.parent / "outside" / "b" / "gone.txt").write_bytes(b"")
    await settle(w)
    names = sink.names()
    assert names[:3] == [(ADDED, "a\\b\\deep.txt"), (ADDED, "c"), (ADDED, "c\\in-c.txt")]
    assert (REMOVED, "c") in names and (ADDED, "a\\c2") in names
    assert (ADDED, "a\\c2\\after-move.txt") in names
    assert (REMOVED, "a\\b") in names
    assert not [n for _, n in names if "gone" in n]
    assert sorted(sub.dirs.values()) == ["", "a", "a\\c2"]
    w.unsubscribe(sub)
    assert w.watches == 0 and w._ino is None


async def test_what_is_made_in_a_new_directory_before_its_watch_is_reported_once(tree):
    root, fd = tree
    w = DW.DirWatcher(asyncio.get_running_loop())
    sink = Sink()
    sub = await w.subscribe(sink, fd, recursive=True, hide_reserved=False)
    (root / "d").mkdir()
    w.drain()                           # the watch of d is being added (not yet there)
    (root / "d" / "x.txt").write_bytes(b"")
    (root / "d" / "sub").mkdir()
    (root / "d" / "sub" / "y.txt").write_bytes(b"")
    await settle(w)
    await settle(w)
    (root / "d" / "sub" / "z.txt").write_bytes(b"")
    await settle(w)
    names = sink.names()
    for n in ("d", "d\\x.txt", "d\\sub", "d\\sub\\y.txt", "d\\sub\\z.txt"):
        assert names.count((ADDED, n)) == 1, (n, names)
    assert names[0] == (ADDED, "d")
    assert sorted(sub.dirs.values()) == ["", "a", "a\\b", "d", "d\\sub"]
    w.unsubscribe(sub)


async def test_reserved_directory_is_hidden_and_not_watched(tree):
    root, fd = tree
    (root / ".smbd_py" / "streams").mkdir(parents=True)
    w = DW.DirWatcher(asyncio.get_running_loop())
    sink = Sink()
    sub = await w.subscribe(sink, fd, recursive=True, hide_reserved=True)
    assert ".smbd_py" not in sub.dirs.values()
    (root / ".smbd_py" / "streams" / "1").mkdir()
    os.rename(root / ".smbd_py", root / ".SMBD_PY")      # any case is the reserved name
    (root / "visible.txt").write_bytes(b"")
    await settle(w)
    assert sink.names() == [(ADDED, "visible.txt")]
    w.unsubscribe(sub)


async def test_two_handles_on_one_directory_share_the_watch(tree):
    root, fd = tree
    w = DW.DirWatcher(asyncio.get_running_loop())
    s1, s2 = Sink(), Sink()
    sub1 = await w.subscribe(s1, fd, recursive=False, hide_reserved=False)
    (root / "before.txt").write_bytes(b"")
    w.drain()           # before the second subscription: only the first sees it
    sub2 = await w.subscribe(s2, fd, recursive=False, hide_reserved=False)
    (root / "after.txt").write_bytes(b"")
    w.drain()
    assert s1.names() == [(ADDED, "before.txt"), (ADDED, "after.txt")]
    assert s2.names() == [(ADDED, "after.txt")]
    assert w.watches == 1
    w.unsubscribe(sub1)
    (root / "later.txt").write_bytes(b"")
    w.drain()
    assert s2.names()[-1] == (ADDED, "later.txt") and s1.names()[-1] == (ADDED, "after.txt")
    w.unsubscribe(sub2)


async def test_removed_directory_reports_gone(tmp_path):
    """The kernel drops the watch (IN_DELETE_SELF, IN_IGNORED) when the directory is
    removed and no descriptor keeps its dentry: an SMB handle's own fd defers that to
    its close, so the handle's pending requests end by DELETE_PENDING (protocol.notify
    .delete_pending) or by close instead."""
    d = tmp_path / "doomed"
    d.mkdir()
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    w = DW.DirWatcher(asyncio.get_running_loop())
    sink = Sink()
    await w.subscribe(sink, fd, recursive=False, hide_reserved=False)
    os.close(fd)
    d.rmdir()
    w.drain()
    assert sink.gone == 1 and w._ino is None
