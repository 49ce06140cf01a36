"""Alternate data streams ("file:stream", fs.streams) end to end: the project's SMB2 test
client and smbclient against a real smbd_py server over TCP on 127.0.0.1, real files.

What is proven:
- a stream is created (with its base file when missing), written, read back, listed by
  FileStreamInformation (and smbclient's allinfo) with its size; names are
  case-insensitive and case-preserving; a stream open reports the base file's attributes;
- the stream's data is an ordinary file in the depot a local reader can open
  (<share>/.smbd_py/streams/<id>/<name>, id in the base file's user.smbd_py.streams xattr);
- oplocks are per stream: a batch oplock on the base file is not broken by a stream open,
  a second open of the same stream breaks the first's;
- deleting the base file removes its depot; overwriting it removes its streams;
  delete-on-close of a stream removes only that stream;
- the reserved .smbd_py directory is neither listed nor reachable (open, create, rename
  target).
- a stream open without FILE_SHARE_DELETE keeps the base file from any DELETE open; a
  base file deleted while streams of it are open stays (DELETE_PENDING to name-based
  opens of it and of its streams) until its last stream open closes, by CLOSE or by a
  dropped connection.
Ports 15560-15569 (the second streams round's range is 15550-15599).
"""
from __future__ import annotations

import asyncio
import os
import struct
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.peers.smbd_py_server import checked_server
from tests.smb2client import Access, Disposition, Oplock, OplockBreak
from tests.smb2client import wire
from tests.peers.coherence import session

PORT = 15560
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_OBJECT_PATH_NOT_FOUND = 0xC000003A
STATUS_OBJECT_NAME_COLLISION = 0xC0000035
STATUS_NOT_A_DIRECTORY = 0xC0000103
STATUS_SHARING_VIOLATION = 0xC0000043
STATUS_DELETE_PENDING = 0xC0000056
FILE_CREATED, FILE_OPENED = 2, 1
FILE_ATTRIBUTE_HIDDEN = 0x2
FILE_ATTRIBUTE_ARCHIVE = 0x20
XATTR = "user.smbd_py.streams"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with checked_server(tmp_path_factory, "streams", port=PORT) as s:
        yield s


def parse_streams(buf: bytes) -> list[tuple[str, int]]:
    """FileStreamInformation entries -> [(name, size)] (MS-FSCC 2.4.43)."""
    out, pos = [], 0
    while buf:
        nxt, nlen, size, _alloc = struct.unpack_from("<IIqq", buf, pos)
        out.append((buf[pos + 24:pos + 24 + nlen].decode("utf-16-le"), size))
        if not nxt:
            break
        assert nxt % 8 == 0, "entries are 8-byte aligned"
        pos += nxt
    return out


async def streams_of(c, tid, name) -> list[tuple[str, int]]:
    r = await c.create(tid, name, desired_access=Access.FILE_READ_ATTRIBUTES,
                       disposition=Disposition.OPEN)
    try:
        return parse_streams(await c.query_info(tid, r.file_id, wire.InfoType.FILE,
                                                wire.FileInfoClass.STREAM))
    finally:
        await c.close(tid, r.file_id)


def depot_dir(share: str, base: str) -> Path:
    # "<id>:<inode number>" (fs.streams)
    did = os.getxattr(os.path.join(share, base), XATTR).decode().split(":")[0]
    return Path(share) / ".smbd_py" / "streams" / did


async def test_create_write_read_list_and_local_reader(srv):
    c, tid = await session(srv)
    async with c:
        r = await c.create(tid, "ads.txt:Zone.Identifier", disposition=Disposition.CREATE)
        assert r.create_action == FILE_CREATED
        assert r.file_attributes & FILE_ATTRIBUTE_ARCHIVE, "the new base file's attributes"
        await c.write(tid, r.file_id, 0, b"[ZoneTransfer]\r\nZoneId=3\r\n")
        await c.close(tid, r.file_id)
        # The base file was created empty; the stream holds the data.
        assert os.path.getsize(os.path.join(srv.share_path, "ads.txt")) == 0
        # Case-insensitive lookup, :$DATA suffix allowed; open reports the stream's size.
        r = await c.create(tid, "ADS.TXT:zone.identifier:$DATA", disposition=Disposition.OPEN)
        assert r.create_action == FILE_OPENED and r.end_of_file == 26
        assert await c.read(tid, r.file_id, 0, 100) == b"[ZoneTransfer]\r\nZoneId=3\r\n"
        std = await c.query_standard_info(tid, r.file_id)
        assert std["end_of_file"] == 26 and not std["directory"]
        await c.close(tid, r.file_id)
        # Listed case-preserved, after the unnamed stream.
        assert await streams_of(c, tid, "ads.txt") == [("::$DATA", 0),
                                                       (":Zone.Identifier:$DATA", 26)]
        # A local reader finds the bytes in the depot, as documented in fs/streams.py.
        with open(depot_dir(srv.share_path, "ads.txt") / "Zone.Identifier", "rb") as f:
            assert f.read() == b"[ZoneTransfer]\r\nZoneId=3\r\n"
        # OPEN of a stream that does not exist; CREATE of one that does.
        await c.create(tid, "ads.txt:nope", disposition=Disposition.OPEN,
                       expect=STATUS_OBJECT_NAME_NOT_FOUND)
        await c.create(tid, "ads.txt:ZONE.IDENTIFIER", disposition=Disposition.CREATE,
                       expect=STATUS_OBJECT_NAME_COLLISION)
        await c.create(tid, "missing.txt:s", disposition=Disposition.OPEN,
                       expect=STATUS_OBJECT_NAME_NOT_FOUND)
        await c.create(tid, "ads.txt:s", disposition=Disposition.CREATE,
                       options=wire.CreateOptions.DIRECTORY_FILE, expect=STATUS_NOT_A_DIRECTORY)


async def test_stream_open_reports_base_attributes(srv):
    c, tid = await session(srv)
    async with c:
        r = await c.create(tid, "attr.txt", disposition=Disposition.CREATE,
                           file_attributes=FILE_ATTRIBUTE_HIDDEN)
        await c.close(tid, r.file_id)
        r = await c.create(tid, "attr.txt:s1", disposition=Disposition.CREATE)
        assert r.file_attributes & FILE_ATTRIBUTE_HIDDEN
        await c.close(tid, r.file_id)


async def test_oplocks_are_per_stream(srv):
    c1, t1 = await session(srv)
    c2, t2 = await session(srv)
    async with c1, c2:
        r = await c1.create(t1, "op.txt:foo", disposition=Disposition.OVERWRITE_IF)
        await c1.close(t1, r.file_id)
        base = await c1.create(t1, "op.txt", oplock=Oplock.BATCH, disposition=Disposition.OPEN)
        assert base.oplock_level == Oplock.BATCH
        # Opening a stream of the file leaves the base file's batch oplock alone.
        s1 = await c2.create(t2, "op.txt:foo", oplock=Oplock.BATCH, disposition=Disposition.OPEN)
        assert s1.oplock_level == Oplock.BATCH
        await c1.expect_no_break(0.5)
        # A second open of the same stream breaks the stream's oplock, not the base's.
        p = await c1.create(t1, "op.txt:foo", disposition=Disposition.OPEN,
                            desired_access=Access.GENERIC_READ, wait=False)
        brk = await c2.next_break(5)
        assert isinstance(brk, OplockBreak) and brk.file_id == s1.file_id
        await c2.ack_oplock(t2, s1.file_id, brk.oplock_level)
        r2 = await p
        assert r2.status == 0
        await c1.expect_no_break(0.3)
        for cl, t, fid in ((c1, t1, r2.file_id), (c2, t2, s1.file_id), (c1, t1, base.file_id)):
            await cl.close(t, fid)


async def test_delete_overwrite_and_stream_delete(srv):
    c, tid = await session(srv)
    async with c:
        for s in ("a", "b"):
            r = await c.create(tid, f"del.txt:{s}", disposition=Disposition.OPEN_IF)
            await c.write(tid, r.file_id, 0, s.encode() * 10)
            await c.close(tid, r.file_id)
        depot = depot_dir(srv.share_path, "del.txt")
        assert sorted(os.listdir(depot)) == ["a", "b"]
        # Delete-on-close of a stream removes that stream only.
        r = await c.create(tid, "del.txt:a", disposition=Disposition.OPEN,
                           desired_access=Access.DELETE | Access.GENERIC_READ,
                           options=wire.CreateOptions.DELETE_ON_CLOSE)
        await c.close(tid, r.file_id)
        assert os.listdir(depot) == ["b"]
        assert os.path.exists(os.path.join(srv.share_path, "del.txt"))
        # Overwrite of the base file removes its streams.
        r = await c.create(tid, "del.txt", disposition=Disposition.OVERWRITE_IF)
        await c.close(tid, r.file_id)
        assert not depot.exists()
        assert await streams_of(c, tid, "del.txt") == [("::$DATA", 0)]
        # Deleting the base file removes its depot.
        r = await c.create(tid, "del.txt:c", disposition=Disposition.OPEN_IF)
        await c.close(tid, r.file_id)
        depot = depot_dir(srv.share_path, "del.txt")
        assert depot.is_dir()
        r = await c.create(tid, "del.txt", disposition=Disposition.OPEN,
                           desired_access=Access.DELETE,
                           options=wire.CreateOptions.DELETE_ON_CLOSE)
        await c.close(tid, r.file_id)
        assert not os.path.exists(os.path.join(srv.share_path, "del.txt"))
        assert not depot.exists()


async def test_reserved_directory_is_invisible(srv):
    c, tid = await session(srv)
    async with c:
        r = await c.create(tid, "vis.txt:s", disposition=Disposition.OPEN_IF)
        await c.close(tid, r.file_id)
        assert os.path.isdir(os.path.join(srv.share_path, ".smbd_py"))
        names = [e.name for e in await c.list_directory(tid, "")]
        assert "vis.txt" in names and not any(n.lower() == ".smbd_py" for n in names)
        root = await c.create(tid, "", desired_access=Access.FILE_READ_DATA
                              | Access.FILE_READ_ATTRIBUTES | Access.SYNCHRONIZE,
                              disposition=Disposition.OPEN,
                              options=wire.CreateOptions.DIRECTORY_FILE)
        for pattern in (".smbd_py", ".SMBD_PY", ".smbd*"):
            got = await c.query_directory(tid, root.file_id, pattern, expect=None,
                                          flags=wire.QUERY_DIRECTORY_RESTART_SCANS)
            assert not got, (pattern, got)
        await c.close(tid, root.file_id)
        await c.create(tid, ".smbd_py", disposition=Disposition.OPEN,
                       expect=STATUS_OBJECT_NAME_NOT_FOUND)
        await c.create(tid, ".Smbd_Py", disposition=Disposition.OPEN_IF,
                       options=wire.CreateOptions.DIRECTORY_FILE,
                       expect=STATUS_OBJECT_NAME_NOT_FOUND)
        await c.create(tid, ".smbd_py\\streams", disposition=Disposition.OPEN,
                       expect=STATUS_OBJECT_PATH_NOT_FOUND)
        await c.create(tid, "sub\\..\\.smbd_py", disposition=Disposition.OPEN,
                       expect=(STATUS_OBJECT_NAME_NOT_FOUND, STATUS_OBJECT_PATH_NOT_FOUND))
        r = await c.create(tid, "mover.txt", disposition=Disposition.OPEN_IF,
                           desired_access=Access.DELETE | Access.GENERIC_READ)
        await c.rename(tid, r.file_id, ".smbd_py", expect=STATUS_OBJECT_NAME_NOT_FOUND)
        await c.rename(tid, r.file_id, ".smbd_py\\x", expect=STATUS_OBJECT_PATH_NOT_FOUND)
        await c.close(tid, r.file_id)


def test_smbclient_allinfo_lists_streams(srv):
    smbclient = require_tool("smbclient")
    with open(os.path.join(srv.share_path, "sc.txt"), "wb") as f:
        f.write(b"base")
    src = os.path.join(srv.share_path, "..", "upload.bin")
    with open(src, "wb") as f:
        f.write(b"x" * 1000)
    cmd = [smbclient, f"//{srv.host}/{srv.share}", "-p", str(srv.port),
           "-U", f"{srv.user}%{srv.password}", "-m", "SMB3"]
    up = subprocess.run(cmd + ["-c", f"put {src} sc.txt:extra"], capture_output=True,
                        text=True, timeout=60)
    assert up.returncode == 0, up.stdout + up.stderr
    info = subprocess.run(cmd + ["-c", "allinfo sc.txt"], capture_output=True, text=True,
                          timeout=60)
    assert info.returncode == 0, info.stdout + info.stderr
    assert "stream: [::$DATA], 4 bytes" in info.stdout, info.stdout
    assert "stream: [:extra:$DATA], 1000 bytes" in info.stdout, info.stdout


async def test_stream_open_without_share_delete_blocks_base_delete(srv):
    """MS-FSA 2.1.5.1.2 (smbtorture smb2.streams.delete): a DELETE open of the file checks
    the sharing of its streams' opens; the main file's own share mode does not bind them."""
    c, tid = await session(srv)
    async with c:
        s = await c.create(tid, "sd.txt:s", disposition=Disposition.CREATE,
                           share_access=wire.ShareAccess.READ | wire.ShareAccess.WRITE)
        await c.write(tid, s.file_id, 0, b"stream data")
        await c.create(tid, "sd.txt", disposition=Disposition.OPEN,
                       desired_access=Access.DELETE, expect=STATUS_SHARING_VIOLATION)
        await c.create(tid, "sd.txt", disposition=Disposition.OPEN,
                       desired_access=Access.DELETE,
                       options=wire.CreateOptions.DELETE_ON_CLOSE,
                       expect=STATUS_SHARING_VIOLATION)
        # Opens without DELETE are not affected.
        r = await c.create(tid, "sd.txt", disposition=Disposition.OPEN,
                           desired_access=Access.GENERIC_READ)
        await c.close(tid, r.file_id)
        await c.close(tid, s.file_id)
        # The base file opened without FILE_SHARE_DELETE does not keep a stream from DELETE.
        b = await c.create(tid, "sd.txt", disposition=Disposition.OPEN,
                           desired_access=Access.GENERIC_READ, share_access=wire.ShareAccess.READ)
        s = await c.create(tid, "sd.txt:s", disposition=Disposition.OPEN,
                           desired_access=Access.DELETE | Access.FILE_READ_ATTRIBUTES)
        await c.close(tid, s.file_id)
        await c.close(tid, b.file_id)
        r = await c.create(tid, "sd.txt", disposition=Disposition.OPEN,
                           desired_access=Access.DELETE)
        await c.close(tid, r.file_id)


async def test_base_delete_waits_for_its_open_streams(srv):
    base = os.path.join(srv.share_path, "wait.txt")
    c, tid = await session(srv)
    async with c:
        s = await c.create(tid, "wait.txt:s", disposition=Disposition.CREATE)
        await c.write(tid, s.file_id, 0, b"kept while open")
        depot = depot_dir(srv.share_path, "wait.txt")
        r = await c.create(tid, "wait.txt", disposition=Disposition.OPEN,
                           desired_access=Access.DELETE,
                           options=wire.CreateOptions.DELETE_ON_CLOSE)
        await c.close(tid, r.file_id)
        # The file is still there, delete pending, while its stream is open.
        assert os.path.exists(base) and depot.is_dir()
        assert await c.read(tid, s.file_id, 0, 100) == b"kept while open"
        await c.create(tid, "wait.txt", disposition=Disposition.OPEN_IF,
                       expect=STATUS_DELETE_PENDING)
        await c.create(tid, "wait.txt:s", disposition=Disposition.OPEN_IF,
                       expect=STATUS_DELETE_PENDING)
        await c.create(tid, "wait.txt:other", disposition=Disposition.OPEN_IF,
                       expect=STATUS_DELETE_PENDING)
        await c.close(tid, s.file_id)
        assert not os.path.exists(base) and not depot.exists()
        await c.create(tid, "wait.txt", disposition=Disposition.OPEN,
                       expect=STATUS_OBJECT_NAME_NOT_FOUND)
    # The same when the stream's connection goes away instead of closing it.
    c, tid = await session(srv)
    s = await c.create(tid, "gone.txt:s", disposition=Disposition.CREATE)
    depot = depot_dir(srv.share_path, "gone.txt")
    c2, t2 = await session(srv)
    async with c2:
        r = await c2.create(t2, "gone.txt", disposition=Disposition.OPEN,
                            desired_access=Access.DELETE,
                            options=wire.CreateOptions.DELETE_ON_CLOSE)
        await c2.close(t2, r.file_id)
        assert os.path.exists(os.path.join(srv.share_path, "gone.txt"))
        await c.disconnect()
        for _ in range(100):       # the server notices the dropped connection
            if not os.path.exists(os.path.join(srv.share_path, "gone.txt")) and \
                    not depot.exists():
                break
            await asyncio.sleep(0.05)
        assert not os.path.exists(os.path.join(srv.share_path, "gone.txt"))
        assert not depot.exists()
        r = await c2.create(t2, "gone.txt", disposition=Disposition.CREATE)
        await c2.close(t2, r.file_id)


FILE_LINK_INFORMATION = 11


async def test_replaced_file_loses_its_depot_with_its_last_name(srv):
    """A file replaced by a rename (ReplaceIfExists) or a hard link onto its name goes
    like a deleted one: its depot goes with its last name, a remaining link keeps it."""
    share = srv.share_path
    c, tid = await session(srv)
    async with c:
        for name in ("victim.txt", "src.txt", "victim2.txt"):
            r = await c.create(tid, f"{name}:s", disposition=Disposition.OPEN_IF)
            await c.write(tid, r.file_id, 0, name.encode())
            await c.close(tid, r.file_id)
        victim = depot_dir(share, "victim.txt")
        src = depot_dir(share, "src.txt")
        r = await c.create(tid, "src.txt", disposition=Disposition.OPEN,
                           desired_access=Access.DELETE | Access.GENERIC_READ)
        await c.rename(tid, r.file_id, "victim.txt", replace=True)
        await c.close(tid, r.file_id)
        assert not victim.exists(), "the replaced file's streams went with it"
        assert depot_dir(share, "victim.txt") == src and src.is_dir()
        assert await streams_of(c, tid, "victim.txt") == [("::$DATA", 0), (":s:$DATA", 7)]
        # A file with a second name keeps its streams when one name is replaced.
        os.link(os.path.join(share, "victim2.txt"), os.path.join(share, "alias.txt"))
        victim2 = depot_dir(share, "victim2.txt")
        r = await c.create(tid, "plain.txt", disposition=Disposition.OPEN_IF,
                           desired_access=Access.DELETE | Access.GENERIC_READ)
        await c.rename(tid, r.file_id, "victim2.txt", replace=True)
        await c.close(tid, r.file_id)
        assert victim2.is_dir()
        assert await streams_of(c, tid, "alias.txt") == [("::$DATA", 0), (":s:$DATA", 11)]
        # A hard link replacing the last name.
        r = await c.create(tid, "linker.txt", disposition=Disposition.OPEN_IF,
                           desired_access=Access.GENERIC_ALL)
        await c.set_info(tid, r.file_id, wire.InfoType.FILE, FILE_LINK_INFORMATION,
                         wire.rename_information("alias.txt", True))
        await c.close(tid, r.file_id)
        assert not victim2.exists()
        assert await streams_of(c, tid, "alias.txt") == [("::$DATA", 0)]


async def test_cp_a_copy_has_its_own_streams(srv):
    """A local `cp -a` copies the depot id xattr; the copy gets copies of the streams
    on first use, and writing them leaves the original's alone."""
    share = srv.share_path
    c, tid = await session(srv)
    async with c:
        r = await c.create(tid, "orig.txt:s", disposition=Disposition.OPEN_IF)
        await c.write(tid, r.file_id, 0, b"original")
        await c.close(tid, r.file_id)
        cp = subprocess.run(["cp", "-a", os.path.join(share, "orig.txt"),
                             os.path.join(share, "copy.txt")], capture_output=True,
                            text=True, timeout=30)
        assert cp.returncode == 0, cp.stderr
        r = await c.create(tid, "copy.txt:s", disposition=Disposition.OPEN)
        assert await c.read(tid, r.file_id, 0, 100) == b"original"
        await c.write(tid, r.file_id, 0, b"CHANGED!")
        await c.close(tid, r.file_id)
        assert depot_dir(share, "copy.txt") != depot_dir(share, "orig.txt")
        r = await c.create(tid, "orig.txt:s", disposition=Disposition.OPEN)
        assert await c.read(tid, r.file_id, 0, 100) == b"original"
        await c.close(tid, r.file_id)
        # Deleting the copy leaves the original's streams.
        r = await c.create(tid, "copy.txt", disposition=Disposition.OPEN,
                           desired_access=Access.DELETE,
                           options=wire.CreateOptions.DELETE_ON_CLOSE)
        await c.close(tid, r.file_id)
        assert await streams_of(c, tid, "orig.txt") == [("::$DATA", 0), (":s:$DATA", 8)]


async def test_stream_write_updates_the_files_write_time(srv):
    """Times are the file's (MS-FSA 2.1.5.3): writing a stream, or setting its end of
    file, moves the base file's last write time (not its access time)."""
    base = os.path.join(srv.share_path, "wt.txt")
    c, tid = await session(srv)
    async with c:
        r = await c.create(tid, "wt.txt:s", disposition=Disposition.CREATE)
        old = 1_000_000_000 * 10**9           # 2001-09-09
        os.utime(base, ns=(old, old))
        await c.write(tid, r.file_id, 0, b"new stream data")
        st = os.stat(base)
        assert st.st_mtime_ns > old + 10**17 and st.st_atime_ns == old
        os.utime(base, ns=(old, old))
        await c.set_info(tid, r.file_id, wire.InfoType.FILE, wire.FileInfoClass.END_OF_FILE,
                         wire.end_of_file_information(3))
        assert os.stat(base).st_mtime_ns > old + 10**17
        # The stream open reports the base file's (new) last write time.
        b = await c.query_info(tid, r.file_id, wire.InfoType.FILE, wire.FileInfoClass.BASIC)
        _ct, at, wt, _cht = struct.unpack_from("<QQQQ", b)
        from smbd_py.fs.timeconv import unix_ns_to_filetime
        assert wt == unix_ns_to_filetime(os.stat(base).st_mtime_ns)
        assert at == unix_ns_to_filetime(old)
        await c.close(tid, r.file_id)
        assert os.path.getsize(base) == 0, "the unnamed stream is untouched"


STATUS_INVALID_PARAMETER = 0xC000000D


async def test_stream_rename_to_a_path_target(srv):
    """A stream renamed to "dir\\file:stream" (a path, not ":stream"): like any path
    rename it opens the target's directory first, so an open of that directory with
    DELETE access makes it a sharing violation (smb2.streams.rename2); a stream moves
    only within its file, so the path form is refused otherwise."""
    c, tid = await session(srv)
    async with c:
        d = await c.create(tid, "rdir", disposition=Disposition.OPEN_IF,
                           desired_access=Access.GENERIC_ALL,
                           options=wire.CreateOptions.DIRECTORY_FILE)
        s = await c.create(tid, "rdir\\f.txt:one", disposition=Disposition.CREATE,
                           desired_access=Access.GENERIC_ALL)
        await c.rename(tid, s.file_id, "rdir\\f.txt:two", replace=True,
                       expect=STATUS_SHARING_VIOLATION)
        await c.close(tid, d.file_id)
        await c.rename(tid, s.file_id, "rdir\\f.txt:two", replace=True,
                       expect=STATUS_INVALID_PARAMETER)
        await c.rename(tid, s.file_id, ":two", replace=True)
        await c.close(tid, s.file_id)
        assert await streams_of(c, tid, "rdir\\f.txt") == [("::$DATA", 0), (":two:$DATA", 0)]


async def test_ea_context_on_a_stream_create_goes_to_the_file(srv):
    """EAs are the file's: the ExtA context of a CREATE that creates a stream adds its
    EAs to the base file, next to the ones it has."""
    base = os.path.join(srv.share_path, "eas.txt")

    def ea(name: bytes, value: bytes) -> bytes:     # FILE_FULL_EA_INFORMATION, one entry
        return struct.pack("<IBBH", 0, 0, len(name), len(value)) + name + b"\0" + value

    c, tid = await session(srv)
    async with c:
        r = await c.create(tid, "eas.txt", disposition=Disposition.CREATE,
                           contexts=[(b"ExtA", ea(b"FIRST", b"1"))])
        await c.close(tid, r.file_id)
        r = await c.create(tid, "eas.txt:s", disposition=Disposition.CREATE,
                           contexts=[(b"ExtA", ea(b"SECOND", b"22"))])
        await c.close(tid, r.file_id)
        names = sorted(n for n in os.listxattr(base) if n.startswith("user.smbd_py.ea."))
        assert [n.upper() for n in names] == ["USER.SMBD_PY.EA.FIRST", "USER.SMBD_PY.EA.SECOND"]
        # Nothing lands on the stream's depot file.
        sfile = depot_dir(srv.share_path, "eas.txt") / "s"
        assert not [n for n in os.listxattr(sfile) if n.startswith("user.smbd_py.ea.")]
        # Opening an existing stream applies nothing (as for files).
        r = await c.create(tid, "eas.txt:s", disposition=Disposition.OPEN_IF,
                           contexts=[(b"ExtA", ea(b"THIRD", b"3"))])
        await c.close(tid, r.file_id)
        assert not any(n.upper().endswith(".THIRD") for n in os.listxattr(base))
