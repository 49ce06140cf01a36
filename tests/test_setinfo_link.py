"""SET_INFO FileLinkInformation (hard links, MS-FSA 2.1.5.15.6) against a real smbd_py.

The Linux cifs client's `ln` sends exactly this; tests/test_cifs_client.py covers it end
to end, these cover the edges with the project's own SMB2 client: collision without
ReplaceIfExists, atomic replace, an open target, a directory source, confinement.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.peers.smbd_py_server import checked_server
from tests.smb2client import CreateOptions, Dialect, Disposition, Smb2Client
from tests.smb2client import wire

PORT = 14720  # this file's range: 14700-14799
FILE_LINK_INFORMATION = 11
STATUS_OBJECT_NAME_COLLISION = 0xC0000035
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_FILE_IS_A_DIRECTORY = 0xC00000BA


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with checked_server(tmp_path_factory, "linkshare", port=PORT) as s:
        yield s


async def _session(srv):
    c = await Smb2Client.connect(srv.host, srv.port, dialect=Dialect.SMB311, timeout=20)
    await c.login(srv.user, srv.password, sign=True)
    return c, await c.tree_connect(srv.share)


def _link_info(name: str, replace: bool = False) -> bytes:
    return wire.rename_information(name, replace)  # same SMB2 layout (MS-FSCC 2.4.21.2)


async def _link(c, tid, fid, name, replace=False, expect=0):
    return await c.set_info(tid, fid, wire.InfoType.FILE, FILE_LINK_INFORMATION,
                            _link_info(name, replace), expect=expect)


async def test_link_creates_second_name(srv):
    share = Path(srv.share_path)
    (share / "src1.txt").write_bytes(b"payload-1")
    c, tid = await _session(srv)
    async with c:
        r = await c.create(tid, "src1.txt", disposition=Disposition.OPEN)
        await _link(c, tid, r.file_id, "sub-less-link1.txt")
        info = await c.query_standard_info(tid, r.file_id)
        await c.close(tid, r.file_id)
    assert info["number_of_links"] == 2
    a, b = (share / "src1.txt").stat(), (share / "sub-less-link1.txt").stat()
    assert (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    assert (share / "sub-less-link1.txt").read_bytes() == b"payload-1"


async def test_link_collision_and_replace(srv):
    share = Path(srv.share_path)
    (share / "src2.txt").write_bytes(b"new")
    (share / "TARGET2.txt").write_bytes(b"old")
    c, tid = await _session(srv)
    async with c:
        r = await c.create(tid, "src2.txt", disposition=Disposition.OPEN)
        # Case-insensitive: target2.txt names the existing TARGET2.txt.
        await _link(c, tid, r.file_id, "target2.txt", expect=STATUS_OBJECT_NAME_COLLISION)
        assert (share / "TARGET2.txt").read_bytes() == b"old"
        await _link(c, tid, r.file_id, "target2.txt", replace=True)
        await c.close(tid, r.file_id)
    names = sorted(p.name for p in share.iterdir() if "2" in p.name)
    assert names == ["TARGET2.txt", "src2.txt"], names  # no temporary left behind
    assert (share / "TARGET2.txt").stat().st_ino == (share / "src2.txt").stat().st_ino


async def test_link_replace_open_target_denied(srv):
    share = Path(srv.share_path)
    (share / "src3.txt").write_bytes(b"s")
    (share / "busy3.txt").write_bytes(b"busy")
    c, tid = await _session(srv)
    async with c:
        busy = await c.create(tid, "busy3.txt", disposition=Disposition.OPEN)
        r = await c.create(tid, "src3.txt", disposition=Disposition.OPEN)
        await _link(c, tid, r.file_id, "busy3.txt", replace=True, expect=STATUS_ACCESS_DENIED)
        await c.close(tid, busy.file_id)
        await _link(c, tid, r.file_id, "busy3.txt", replace=True)
        await c.close(tid, r.file_id)
    assert (share / "busy3.txt").read_bytes() == b"s"


async def test_link_directory_source_refused(srv):
    share = Path(srv.share_path)
    (share / "dir4").mkdir()
    c, tid = await _session(srv)
    async with c:
        r = await c.create(tid, "dir4", disposition=Disposition.OPEN, options=CreateOptions.DIRECTORY_FILE,
                           desired_access=wire.Access.GENERIC_READ)
        await _link(c, tid, r.file_id, "dir4-link", expect=STATUS_FILE_IS_A_DIRECTORY)
        await c.close(tid, r.file_id)
    assert not (share / "dir4-link").exists()


async def test_link_cannot_escape_share(srv):
    share = Path(srv.share_path)
    (share / "src5.txt").write_bytes(b"x")
    outside = share.parent / "escaped5.txt"
    c, tid = await _session(srv)
    async with c:
        r = await c.create(tid, "src5.txt", disposition=Disposition.OPEN)
        status = await _link(c, tid, r.file_id, "..\\escaped5.txt", expect=None)
        await c.close(tid, r.file_id)
    assert status != 0
    assert not outside.exists()
    assert not os.path.exists(share / ".." / "escaped5.txt")
