"""Issue 6 fast paths: CREATE/CLOSE work done on the event loop (openat2 RESOLVE_CACHED
opens, the DOS-attribute xattr cache keyed by ctime, inline closes) and frames handled
eagerly in the transport callback (connection._Started). Real kernel, real files."""
from __future__ import annotations

import asyncio
import os

import pytest

from smbd_py.fs import paths as P
from smbd_py.protocol import create as C
from smbd_py.protocol.connection import _Started, _resume


@pytest.fixture
def root(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_bytes(b"x")
    r = P.ShareRoot(str(tmp_path))
    yield r
    r.close()


def test_resolve_cached_is_available_here():
    # The kernel of these machines has it (5.12+); without it the fast path is off.
    assert P.RESOLVE_CACHED_AVAILABLE


def test_open_cached_existing_missing_and_create(root, tmp_path):
    os.stat(tmp_path / "d" / "f.txt")                    # warm the dentry cache
    fd = root.open_cached(("d", "f.txt"), os.O_PATH)
    assert fd >= 0
    try:
        assert os.fstat(fd).st_ino == os.stat(tmp_path / "d" / "f.txt").st_ino
    finally:
        os.close(fd)
    assert root.open_cached(("d", "missing"), os.O_PATH) == -1
    # A different spelling is not folded here: the pool path resolves case.
    assert root.open_cached(("d", "F.TXT"), os.O_PATH) == -1
    # RESOLVE_CACHED refuses O_CREAT: the caller must use the pool.
    assert root.open_cached(("d", "new"), os.O_RDWR | os.O_CREAT) == -1
    assert not (tmp_path / "d" / "new").exists()


def test_open_cached_stays_beneath_the_share(root, tmp_path):
    os.symlink("/etc/passwd", tmp_path / "esc")
    assert root.open_cached(("esc",), os.O_PATH) == -1


def _request():
    c = C.CreateRequest()
    c.path_fd = -1
    return c


def test_stat_target_inline_matches_pool_stat(root):
    c = _request()
    got = C._stat_target_inline(root, ("d", "f.txt"), c)
    assert got is not None
    comps, st = got
    assert comps == ("d", "f.txt")
    assert st.st_ino == root.stat(("d", "f.txt")).st_ino
    # The O_PATH descriptor it stat'ed through is kept for the open.
    assert c.path_fd >= 0 and os.fstat(c.path_fd).st_ino == st.st_ino
    os.close(c.path_fd)
    c = _request()
    assert C._stat_target_inline(root, ("d", "nope"), c) is None
    assert c.path_fd == -1


def test_stat_open_takes_the_stat_descriptor(root):
    """A stat open (O_PATH) becomes the descriptor the target was stat'ed through: no
    second lookup; a data open, a directory or a truncate leaves it to its owner
    (handle_create closes it)."""
    c = _request()
    _comps, st = C._stat_target_inline(root, ("d", "f.txt"), c)
    held = c.path_fd
    try:
        assert C._take_path_fd(c, st, os.O_RDONLY | os.O_NONBLOCK, False, False) is None
        assert c.path_fd == held
        assert C._take_path_fd(c, st, os.O_PATH, False, True) is None
        assert C._take_path_fd(c, st, os.O_PATH, True, False) is None
        assert c.path_fd == held
        fd, st2, _stored = C._take_path_fd(c, st, os.O_PATH, False, False)
        assert fd == held and st2 is st and c.path_fd == -1
        assert C._take_path_fd(c, st, os.O_PATH, False, False) is None   # taken once
    finally:
        os.close(held)


def test_open_existing_inline_only_for_stat_opens_and_dirs(root):
    got = C._open_existing_inline(root, ("d", "f.txt"), False, os.O_PATH, False)
    assert got is not None
    os.close(got[0])
    got = C._open_existing_inline(root, ("d",), True, C._O_DIR, False)
    assert got is not None
    os.close(got[0])
    # Data opens and truncates go to the pool (open methods, leases, I/O).
    assert C._open_existing_inline(root, ("d", "f.txt"), False, os.O_RDONLY | os.O_NONBLOCK, False) is None
    assert C._open_existing_inline(root, ("d", "f.txt"), False, os.O_PATH, True) is None


def test_stored_attribute_cache_follows_ctime(root, tmp_path):
    from smbd_py.protocol.info import ATTR_XATTR
    path = tmp_path / "d" / "f.txt"
    st = os.stat(path)
    C._stored_cache.clear()
    assert C._stored_lookup(st) is C._MISS
    C._stored_remember(st, 0x20)
    assert C._stored_lookup(os.stat(path)) == 0x20
    try:
        os.setxattr(path, ATTR_XATTR, (0x22).to_bytes(4, "little"))
    except OSError as e:
        pytest.fail(f"user xattrs must work on the test file system: {e}")
    # Setting the xattr changed ctime: the cached value no longer answers.
    assert C._stored_lookup(os.stat(path)) is C._MISS


def test_closes_inline(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"")
    fd = os.open(f, os.O_PATH)
    assert C._closes_inline(fd, False)
    os.close(fd)
    fd = os.open(f, os.O_RDONLY)
    assert not C._closes_inline(fd, False)
    os.close(fd)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    assert C._closes_inline(fd, True)
    os.close(fd)


async def test_started_resumes_value_and_exceptions():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    async def body():
        v = await fut
        await asyncio.sleep(0)
        if v == "boom":
            raise ValueError(v)
        return v * 2

    coro = body()
    first = coro.send(None)                 # runs eagerly up to `await fut`
    assert first is fut
    task = asyncio.ensure_future(_resume(_Started(coro, first)))
    await asyncio.sleep(0)
    assert not task.done()
    fut.set_result(21)
    assert await asyncio.wait_for(task, 2) == 42

    fut2 = loop.create_future()

    async def body2():
        await fut2

    coro = body2()
    task = asyncio.ensure_future(_resume(_Started(coro, coro.send(None))))
    fut2.set_exception(ValueError("x"))
    with pytest.raises(ValueError):
        await asyncio.wait_for(task, 2)


async def test_started_passes_cancellation():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    seen = []

    async def body():
        try:
            await fut
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    coro = body()
    task = asyncio.ensure_future(_resume(_Started(coro, coro.send(None))))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"]
    assert fut.cancelled()


def test_inline_open_only_on_local_filesystems(tmp_path):
    """On a file system that is not known to answer from memory (here: proc) the loop
    never opens or stats: open_cached defers to the pool."""
    from smbd_py.fs.paths import LOCAL_FILESYSTEMS, ShareRoot, filesystem_type
    assert filesystem_type(str(tmp_path)) in LOCAL_FILESYSTEMS
    assert filesystem_type("/proc/self") == "proc"
    root = ShareRoot("/proc/self")
    try:
        assert not root.local_fs
        assert root.open_cached(("status",), os.O_PATH) == -1
    finally:
        root.close()
