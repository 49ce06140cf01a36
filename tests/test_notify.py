"""CHANGE_NOTIFY end to end (protocol.notify, fs.dirwatch): the project's SMB2 test client
and smbclient against a real smbd_py over TCP on 127.0.0.1, real files, real inotify.

What is proven:
- an SMB client's create, rename (old and new name in one response) and delete reach
  another client's pending CHANGE_NOTIFY;
- a local program's file creation and write are reported (the server's reason to exist:
  changes made outside SMB), and so are changes made through a second smbd_py serving the
  same directory;
- WATCH_TREE reports changes in subdirectories with backslash paths relative to the
  watched directory, including subdirectories made after the watch started; without it
  they are not reported;
- changes between requests are kept for the handle; more than its buffer holds, or a
  request whose OutputBufferLength they do not fit, gives STATUS_NOTIFY_ENUM_DIR;
- close completes a pending request with STATUS_NOTIFY_CLEANUP, CANCEL with
  STATUS_CANCELLED; a file handle gets STATUS_INVALID_PARAMETER;
- the reserved .smbd_py directory (named streams' depot) never shows up;
- smbclient's `notify` command prints a change made by a local program.
Ports 15460-15469.
"""
from __future__ import annotations

import asyncio
import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.peers.smbd_py_server import checked_server, smbd_py_server
from tests.smb2client import Access, Dialect, Disposition, Smb2Client
from tests.smb2client import wire
from tests.smb2client.wire import NotifyAction as A, NotifyFilter as F

PORT = 15460
PORT_SECOND = 15461
STATUS_INVALID_PARAMETER = 0xC000000D
WAIT_S = 10.0


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with checked_server(tmp_path_factory, "notify", port=PORT) as s:
        yield s


async def session(s, port: int | None = None):
    c = await Smb2Client.connect(s.host, port or s.port, dialect=Dialect.SMB311, timeout=20)
    await c.login(s.user, s.password)
    tid = await c.tree_connect(s.share)
    return c, tid


async def open_dir(c, tid, path: str) -> bytes:
    r = await c.create(tid, path, desired_access=Access.FILE_READ_DATA
                       | Access.FILE_READ_ATTRIBUTES | Access.SYNCHRONIZE,
                       disposition=Disposition.OPEN_IF,
                       options=wire.CreateOptions.DIRECTORY_FILE)
    return r.file_id


async def pending(c, tid, fid, flt=F.ALL, **kw):
    """A CHANGE_NOTIFY that went async (so the server has registered it)."""
    p = await c.change_notify(tid, fid, flt, wait=False, **kw)
    interim = await asyncio.wait_for(p.interim, WAIT_S)
    assert interim is not None, "CHANGE_NOTIFY completed at once instead of going pending"
    return p


async def delete(c, tid, name: str, *, directory: bool = False) -> None:
    r = await c.create(tid, name, desired_access=Access.DELETE, disposition=Disposition.OPEN,
                       options=wire.CreateOptions.DELETE_ON_CLOSE
                       | (wire.CreateOptions.DIRECTORY_FILE if directory else 0))
    await c.close(tid, r.file_id)


async def test_smb_client_changes_reach_another_clients_notify(srv):
    os.mkdir(os.path.join(srv.share_path, "w1"))
    a, ta = await session(srv)
    b, tb = await session(srv)
    async with a, b:
        d = await open_dir(a, ta, "w1")
        p = await pending(a, ta, d, F.NAME)
        r = await b.create(tb, "w1\\f.txt", disposition=Disposition.CREATE,
                           desired_access=Access.GENERIC_READ | Access.GENERIC_WRITE
                           | Access.DELETE)
        assert await asyncio.wait_for(p, WAIT_S) == [(A.ADDED, "f.txt")]
        # A rename inside the directory: old and new name in one response.
        p = await pending(a, ta, d, F.NAME)
        await b.rename(tb, r.file_id, "w1\\g.txt")
        assert await asyncio.wait_for(p, WAIT_S) == [(A.RENAMED_OLD_NAME, "f.txt"),
                                                     (A.RENAMED_NEW_NAME, "g.txt")]
        await b.close(tb, r.file_id)
        p = await pending(a, ta, d, F.NAME)
        await delete(b, tb, "w1\\g.txt")
        assert await asyncio.wait_for(p, WAIT_S) == [(A.REMOVED, "g.txt")]
        # A subdirectory: DIR_NAME; the filter of the first request holds.
        p = await pending(a, ta, d, F.FILE_NAME)
        await b.create(tb, "w1\\sub", disposition=Disposition.CREATE,
                       options=wire.CreateOptions.DIRECTORY_FILE)
        assert await asyncio.wait_for(p, WAIT_S) == [(A.ADDED, "sub")]
        await a.close(ta, d)


async def test_local_program_create_and_write_are_reported(srv):
    base = os.path.join(srv.share_path, "w2")
    os.mkdir(base)
    c, tid = await session(srv)
    async with c:
        d = await open_dir(c, tid, "w2")
        p = await pending(c, tid, d, F.FILE_NAME | F.LAST_WRITE | F.SIZE)
        fd = os.open(os.path.join(base, "local.txt"), os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            assert await asyncio.wait_for(p, WAIT_S) == [(A.ADDED, "local.txt")]
            p = await pending(c, tid, d)
            os.write(fd, b"written by a local program")
            assert await asyncio.wait_for(p, WAIT_S) == [(A.MODIFIED, "local.txt")]
        finally:
            os.close(fd)
        # Changes while no request is pending are kept for the next one.
        os.rename(os.path.join(base, "local.txt"), os.path.join(base, "renamed.txt"))
        os.unlink(os.path.join(base, "renamed.txt"))
        changes = await asyncio.wait_for(c.change_notify(tid, d), WAIT_S)
        assert changes == [(A.RENAMED_OLD_NAME, "local.txt"), (A.RENAMED_NEW_NAME, "renamed.txt"),
                           (A.REMOVED, "renamed.txt")]
        await c.close(tid, d)


async def test_change_through_a_second_server_is_reported(srv):
    """Two servers, one directory: a file made through the other server is reported."""
    os.mkdir(os.path.join(srv.share_path, "w3"))
    with smbd_py_server(srv.share_path, port=PORT_SECOND) as other:
        c, tid = await session(srv)
        o, to = await session(other)
        async with c, o:
            d = await open_dir(c, tid, "w3")
            p = await pending(c, tid, d, F.NAME)
            r = await o.create(to, "w3\\from-other.txt", disposition=Disposition.CREATE)
            await o.close(to, r.file_id)
            assert await asyncio.wait_for(p, WAIT_S) == [(A.ADDED, "from-other.txt")]
            await c.close(tid, d)
        assert other.alive(), other.log_tail()


async def test_watch_tree_reports_subdirectories(srv):
    base = Path(srv.share_path, "w4")
    (base / "a" / "b").mkdir(parents=True)
    c, tid = await session(srv)
    async with c:
        tree = await open_dir(c, tid, "w4")
        flat = await open_dir(c, tid, "w4")
        p = await pending(c, tid, tree, F.NAME, watch_tree=True)
        q = await pending(c, tid, flat, F.NAME)
        (base / "a" / "b" / "deep.txt").write_bytes(b"x")
        assert await asyncio.wait_for(p, WAIT_S) == [(A.ADDED, "a\\b\\deep.txt")]
        # A subdirectory made after the watch started is watched too.
        p = await pending(c, tid, tree, F.NAME, watch_tree=True)
        (base / "new").mkdir()
        assert await asyncio.wait_for(p, WAIT_S) == [(A.ADDED, "new")]
        (base / "new" / "inner.txt").write_bytes(b"y")
        assert await asyncio.wait_for(c.change_notify(tid, tree, F.NAME, watch_tree=True),
                                      WAIT_S) == [(A.ADDED, "new\\inner.txt")]
        # Moves between directories are a removal and an addition.
        os.rename(base / "new" / "inner.txt", base / "a" / "moved.txt")
        assert await asyncio.wait_for(c.change_notify(tid, tree, F.NAME, watch_tree=True),
                                      WAIT_S) == [(A.REMOVED, "new\\inner.txt"),
                                                  (A.ADDED, "a\\moved.txt")]
        # The flat watch saw only its own level: the "new" directory.
        assert await asyncio.wait_for(q, WAIT_S) == [(A.ADDED, "new")]
        q = await pending(c, tid, flat, F.NAME)
        (base / "a" / "b" / "deeper.txt").write_bytes(b"z")
        (base / "top.txt").write_bytes(b"t")
        assert await asyncio.wait_for(q, WAIT_S) == [(A.ADDED, "top.txt")]
        await c.close(tid, tree)
        await c.close(tid, flat)


async def test_overflow_and_small_buffer_give_notify_enum_dir(srv):
    base = Path(srv.share_path, "w5")
    base.mkdir()
    c, tid = await session(srv)
    async with c:
        # The first request's OutputBufferLength (100 bytes) is the handle's buffer.
        d = await open_dir(c, tid, "w5")
        p = await pending(c, tid, d, F.NAME, output_buffer_length=100)
        await c.cancel(p)
        assert (await p.response(WAIT_S)).status == wire.STATUS_CANCELLED
        for i in range(20):
            (base / f"file-{i:02}.txt").write_bytes(b"")
        r = await asyncio.wait_for(
            c.change_notify(tid, d, F.NAME, expect=wire.STATUS_NOTIFY_ENUM_DIR), WAIT_S)
        assert r == []
        # After ENUM_DIR the handle reports again.
        (base / "after.txt").write_bytes(b"")
        assert await asyncio.wait_for(c.change_notify(tid, d, F.NAME), WAIT_S) == \
            [(A.ADDED, "after.txt")]
        # A change that does not fit the request's own buffer.
        p = await pending(c, tid, d, F.NAME, output_buffer_length=8)
        (base / "x.txt").write_bytes(b"")
        resp = await p.response(WAIT_S)
        assert resp.status == wire.STATUS_NOTIFY_ENUM_DIR
        await c.close(tid, d)


async def test_close_cancel_and_file_handle(srv):
    Path(srv.share_path, "w6").mkdir()
    c, tid = await session(srv)
    async with c:
        d = await open_dir(c, tid, "w6")
        p = await pending(c, tid, d)
        await c.cancel(p)
        assert (await p.response(WAIT_S)).status == wire.STATUS_CANCELLED
        p = await pending(c, tid, d)
        await c.close(tid, d)
        assert (await p.response(WAIT_S)).status == wire.STATUS_NOTIFY_CLEANUP
        f = await c.create(tid, "w6\\plain.txt", disposition=Disposition.CREATE)
        await c.change_notify(tid, f.file_id, expect=STATUS_INVALID_PARAMETER)
        await c.close(tid, f.file_id)


async def test_reserved_directory_never_reported(srv):
    c, tid = await session(srv)
    async with c:
        root = await open_dir(c, tid, "")
        first = await pending(c, tid, root, F.ALL, watch_tree=True)
        # A named stream writes into <share>/.smbd_py (made now if it was not there).
        r = await c.create(tid, "ads-base.txt:s1", disposition=Disposition.CREATE)
        await c.write(tid, r.file_id, 0, b"stream data")
        await c.close(tid, r.file_id)
        Path(srv.share_path, "marker.txt").write_bytes(b"")
        seen = list(await asyncio.wait_for(first, WAIT_S))
        for _ in range(20):
            if (A.ADDED, "marker.txt") in seen:
                break
            seen += await asyncio.wait_for(
                c.change_notify(tid, root, F.ALL, watch_tree=True), WAIT_S)
        assert (A.ADDED, "marker.txt") in seen, seen
        assert (A.ADDED, "ads-base.txt") in seen, seen
        assert not [n for _, n in seen if ".smbd_py" in n.lower()], seen
        assert Path(srv.share_path, ".smbd_py").is_dir()
        await c.close(tid, root)


def test_smbclient_notify_prints_local_change(srv):
    """smbclient's `notify` prints "<action> <name>" per change (action 0001: added). It
    writes to a terminal unbuffered only, so it gets a pty."""
    require_tool("smbclient")
    Path(srv.share_path, "w7").mkdir()
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        ["smbclient", srv.unc, "-p", str(srv.port), "-U", f"{srv.user}%{srv.password}",
         "-m", "SMB3", "-c", "notify w7"],
        stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + WAIT_S
        n = 0
        while time.monotonic() < deadline and b"0001 from-local-" not in out:
            if proc.poll() is not None:
                break
            # Until smbclient's request is pending a change goes unseen: one per 0.5 s.
            Path(srv.share_path, "w7", f"from-local-{n}.txt").write_bytes(b"hi")
            n += 1
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                if select.select([master], [], [], 0.05)[0]:
                    try:
                        out += os.read(master, 4096)
                    except OSError:
                        break
        assert b"0001 from-local-" in out, out.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        os.close(master)
