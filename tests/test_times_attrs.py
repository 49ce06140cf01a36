"""Creation times and stored DOS attributes end to end: the project's SMB2 test client and
smbclient against a real smbd_py server over TCP on 127.0.0.1, real files on a real
file system.

What is proven:
- a file's CreationTime is its birth time (statx btime) in the CREATE response, QUERY_INFO,
  the CLOSE post-query and listings, and it stays put when the file is written;
- a creation time a client sets (FileBasicInformation) is reported from then on by
  QUERY_INFO, CLOSE post-query, listings, later opens and smbclient's allinfo, also
  after a rename (it lives in the inode's xattr);
- HIDDEN/SYSTEM set by a client (SET_INFO or CREATE) show in listings as in QUERY_INFO;
- creation and write times at the edges (1970-01-01 exactly, 1968, year 2446) are kept.
Ports 15610-15619.
"""
from __future__ import annotations

import asyncio
import os
import struct
import subprocess

import pytest

from smbd_py.fs.timeconv import unix_ns_to_filetime
from smbd_py.fs.paths import STATX_AVAILABLE, statx_at
from tests.conftest import require_tool
from tests.peers.smbd_py_server import checked_server
from tests.smb2client import Access, Command, Disposition
from tests.smb2client import wire
from tests.peers.coherence import session

PORT = 15610
HIDDEN, SYSTEM, ARCHIVE = 0x2, 0x4, 0x20
BASIC = struct.Struct("<qqqqI4x")
CLOSE_FLAG_POSTQUERY_ATTRIB = 1
# 2001-02-03 04:05:06 UTC, as a FILETIME
SET_CREATION = unix_ns_to_filetime(981173106 * 1_000_000_000)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with checked_server(tmp_path_factory, "times", port=PORT) as s:
        yield s


def birth_filetime(path: str) -> int:
    st = statx_at(path, -100)
    assert st.st_birthtime_ns, "this file system keeps birth times (ext4, tmpfs, xfs, btrfs)"
    return unix_ns_to_filetime(st.st_birthtime_ns)


async def basic(c, tid, fid) -> tuple[int, int, int, int, int]:
    return BASIC.unpack(await c.query_info(tid, fid, wire.InfoType.FILE, wire.FileInfoClass.BASIC))


async def close_postquery(c, tid, fid) -> tuple[int, int]:
    """CLOSE with the post-query flag: (CreationTime, FileAttributes)."""
    def parse(r):
        _, flags, _, ct, _at, _wt, _cht, _alloc, _eof, attrs = wire.CLOSE_RSP.unpack_from(
            r.raw, wire.HEADER_SIZE)
        assert flags & CLOSE_FLAG_POSTQUERY_ATTRIB
        return ct, attrs
    return await c.request(Command.CLOSE, wire.close_request(fid, CLOSE_FLAG_POSTQUERY_ATTRIB),
                           tree_id=tid, parse=parse)


async def listed(c, tid, name: str) -> tuple[int, int]:
    """(CreationTime, FileAttributes) of `name` in a listing of the share root."""
    for e in await c.list_directory(tid, ""):
        if e.name == name:
            # Every directory information class starts NextEntryOffset, FileIndex, CreationTime.
            return struct.unpack_from("<q", e.raw, 8)[0], e.file_attributes
    raise AssertionError(f"{name} not listed")


def set_basic(creation=0, attributes=0) -> bytes:
    return BASIC.pack(creation, 0, 0, 0, attributes)


def test_statx_has_birth_times_here():
    assert STATX_AVAILABLE, "statx(2) missing: the server falls back to min(mtime, ctime)"


async def test_creation_time_is_birth_time_and_stays_across_writes(srv):
    c, tid = await session(srv)
    try:
        r = await c.create(tid, "born.txt", disposition=Disposition.CREATE)
        path = os.path.join(srv.share_path, "born.txt")
        btime = birth_filetime(path)
        assert r.creation_time == btime
        await asyncio.sleep(0.05)
        await c.write(tid, r.file_id, 0, b"x" * 100)
        await c.flush(tid, r.file_id)
        ct, _at, wt, _cht, _attrs = await basic(c, tid, r.file_id)
        assert ct == btime, "a write moved the creation time"
        assert wt > ct
        lct, _ = await listed(c, tid, "born.txt")
        assert lct == btime
        pct, _ = await close_postquery(c, tid, r.file_id)
        assert pct == btime
        # A local program's write does not move it either.
        await asyncio.sleep(0.05)
        with open(path, "ab") as f:
            f.write(b"more")
        r2 = await c.create(tid, "born.txt", disposition=Disposition.OPEN,
                            desired_access=Access.FILE_READ_ATTRIBUTES)
        assert r2.creation_time == btime
        await c.close(tid, r2.file_id)
    finally:
        await c.disconnect()


async def test_client_set_creation_time_is_kept_and_reported(srv):
    c, tid = await session(srv)
    try:
        r = await c.create(tid, "settime.txt", disposition=Disposition.CREATE)
        await c.set_info(tid, r.file_id, wire.InfoType.FILE, wire.FileInfoClass.BASIC,
                         set_basic(creation=SET_CREATION))
        ct, *_ = await basic(c, tid, r.file_id)
        assert ct == SET_CREATION
        await c.write(tid, r.file_id, 0, b"data")
        assert (await basic(c, tid, r.file_id))[0] == SET_CREATION
        pct, pattrs = await close_postquery(c, tid, r.file_id)
        assert pct == SET_CREATION and pattrs & ARCHIVE
        r = await c.create(tid, "settime.txt", disposition=Disposition.OPEN,
                           desired_access=Access.GENERIC_READ | Access.GENERIC_WRITE | Access.DELETE)
        assert r.creation_time == SET_CREATION
        assert await listed(c, tid, "settime.txt") == (SET_CREATION, ARCHIVE)
        # Renamed, it keeps it (the xattr moves with the inode).
        await c.rename(tid, r.file_id, "renamed.txt")
        assert (await basic(c, tid, r.file_id))[0] == SET_CREATION
        await c.close(tid, r.file_id)
        assert (await listed(c, tid, "renamed.txt"))[0] == SET_CREATION
        # Setting attributes afterwards keeps the creation time.
        r = await c.create(tid, "renamed.txt", disposition=Disposition.OPEN)
        await c.set_info(tid, r.file_id, wire.InfoType.FILE, wire.FileInfoClass.BASIC,
                         set_basic(attributes=ARCHIVE | SYSTEM))
        ct, _at, _wt, _cht, attrs = await basic(c, tid, r.file_id)
        assert ct == SET_CREATION and attrs & SYSTEM
        await c.close(tid, r.file_id)
        assert await listed(c, tid, "renamed.txt") == (SET_CREATION, ARCHIVE | SYSTEM)
    finally:
        await c.disconnect()


@pytest.mark.parametrize("unix_s", [0, -63158400, 15032385535])
async def test_extreme_times_are_kept(srv, unix_s):
    """Creation and write times at the edges smbtorture smb2.timestamps probes: exactly
    1970-01-01 (0 ns, not "no time"), 1968, and year 2446 (beyond what 64-bit Unix ns
    can hold: it once dropped the connection). Both read back exactly, also after a
    reopen and in a listing."""
    c, tid = await session(srv)
    name = f"edge{unix_s}.txt"
    ft = unix_ns_to_filetime(unix_s * 1_000_000_000)
    try:
        r = await c.create(tid, name, disposition=Disposition.CREATE)
        await c.set_info(tid, r.file_id, wire.InfoType.FILE, wire.FileInfoClass.BASIC,
                         BASIC.pack(ft, 0, ft, 0, 0))
        ct, _at, wt, _cht, _attrs = await basic(c, tid, r.file_id)
        assert (ct, wt) == (ft, ft)
        await c.close(tid, r.file_id)
        r = await c.create(tid, name, disposition=Disposition.OPEN,
                           desired_access=Access.FILE_READ_ATTRIBUTES)
        assert r.creation_time == ft
        await c.close(tid, r.file_id)
        assert (await listed(c, tid, name))[0] == ft
    finally:
        await c.disconnect()


def test_smbclient_allinfo_shows_set_creation_time(srv):
    smbclient = require_tool("smbclient")

    async def setup():
        c, tid = await session(srv)
        try:
            r = await c.create(tid, "allinfo.txt", disposition=Disposition.CREATE)
            await c.set_info(tid, r.file_id, wire.InfoType.FILE, wire.FileInfoClass.BASIC,
                             set_basic(creation=SET_CREATION))
            await c.close(tid, r.file_id)
        finally:
            await c.disconnect()
    asyncio.run(setup())
    cmd = [smbclient, f"//{srv.host}/{srv.share}", "-p", str(srv.port),
           "-U", f"{srv.user}%{srv.password}", "-m", "SMB3", "-c", "allinfo allinfo.txt"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TZ": "UTC"})
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("create_time:"))
    assert "Feb  3 04:05:06 2001" in line, out.stdout
    write_line = next(ln for ln in out.stdout.splitlines() if ln.startswith("write_time:"))
    assert "2001" not in write_line, out.stdout


async def test_hidden_and_system_show_in_listings(srv):
    c, tid = await session(srv)
    try:
        await c.create(tid, "sub", disposition=Disposition.CREATE,
                       options=wire.CreateOptions.DIRECTORY_FILE,
                       desired_access=Access.FILE_READ_ATTRIBUTES)
        for name in ("plain.txt", "hidden.txt"):
            r = await c.create(tid, f"sub\\{name}", disposition=Disposition.CREATE)
            await c.close(tid, r.file_id)
        d = await c.create(tid, "sub", disposition=Disposition.OPEN,
                           options=wire.CreateOptions.DIRECTORY_FILE,
                           desired_access=Access.FILE_READ_DATA | Access.FILE_READ_ATTRIBUTES)

        async def attrs_in_sub():
            return {e.name: e.file_attributes for e in await c.list_directory(tid, "sub")}
        assert (await attrs_in_sub())["plain.txt"] == ARCHIVE
        r = await c.create(tid, "sub\\hidden.txt", disposition=Disposition.OPEN)
        await c.set_info(tid, r.file_id, wire.InfoType.FILE, wire.FileInfoClass.BASIC,
                         set_basic(attributes=HIDDEN | SYSTEM))
        qattrs = (await basic(c, tid, r.file_id))[4]
        await c.close(tid, r.file_id)
        listing = await attrs_in_sub()
        assert listing["hidden.txt"] == qattrs == HIDDEN | SYSTEM
        assert listing["plain.txt"] == ARCHIVE
        # Given at CREATE time, in a fresh directory.
        r = await c.create(tid, "sub\\created_hidden.txt", disposition=Disposition.CREATE,
                           file_attributes=HIDDEN)
        await c.close(tid, r.file_id)
        assert (await attrs_in_sub())["created_hidden.txt"] == HIDDEN | ARCHIVE
        await c.close(tid, d.file_id)
        # Moved into a directory that held nothing stored, it is still listed HIDDEN.
        await c.create(tid, "other", disposition=Disposition.CREATE,
                       options=wire.CreateOptions.DIRECTORY_FILE,
                       desired_access=Access.FILE_READ_ATTRIBUTES)
        r = await c.create(tid, "sub\\hidden.txt", disposition=Disposition.OPEN,
                           desired_access=Access.DELETE | Access.FILE_READ_ATTRIBUTES)
        await c.rename(tid, r.file_id, "other\\moved.txt")
        await c.close(tid, r.file_id)
        moved = {e.name: e.file_attributes for e in await c.list_directory(tid, "other")}
        assert moved["moved.txt"] == HIDDEN | SYSTEM
    finally:
        await c.disconnect()
