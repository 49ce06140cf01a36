"""SET_INFO security (InfoType 3) with a DACL becomes the POSIX mode bits.

The Linux cifs client mounted with cifsacl implements chmod as "read the descriptor,
replace the owner/group/Everyone ACEs, write it back"; the server used to accept and
drop it, so the client's attribute cache showed a mode the disk never had. Unit tests
of fs.secdesc.dacl_to_mode (inverse of build_sd for every mode, deny ACEs, generic
rights, inherit-only), then the real server over TCP with the project's SMB2 client.
"""
from __future__ import annotations

import os
import stat
import struct
import types
from pathlib import Path

import pytest

from smbd_py.fs import secdesc
from tests.peers.smbd_py_server import checked_server
from tests.smb2client import CreateOptions, Dialect, Disposition, Smb2Client
from tests.smb2client import wire

PORT = 14721  # this file's range: 14700-14799
OWNER, GROUP = "S-1-22-1-1000", "S-1-22-2-1000"
STATUS_ACCESS_DENIED = 0xC0000022


def _st(mode: int, is_dir: bool = False):
    kind = stat.S_IFDIR if is_dir else stat.S_IFREG
    return types.SimpleNamespace(st_mode=kind | mode, st_uid=1000, st_gid=1000)


def _ace(t: int, mask: int, sid: str, flags: int = 0) -> bytes:
    b = secdesc.sid_to_bytes(sid)
    return struct.pack("<BBHI", t, flags, 8 + len(b), mask) + b


def _sd(aces: list[bytes], owner: str | None = None, group: str | None = None) -> bytes:
    body = b"".join(aces)
    acl = struct.pack("<BBHHH", 2, 0, 8 + len(body), len(aces), 0) + body
    ob = secdesc.sid_to_bytes(owner) if owner else b""
    gb = secdesc.sid_to_bytes(group) if group else b""
    off = 20
    o_owner = off if ob else 0
    off += len(ob)
    o_group = off if gb else 0
    off += len(gb)
    control = secdesc.SE_SELF_RELATIVE | secdesc.SE_DACL_PRESENT
    return struct.pack("<BBHIIII", 1, 0, control, o_owner, o_group, 0, off) + ob + gb + acl


@pytest.mark.parametrize("is_dir", [False, True])
def test_dacl_to_mode_inverts_build_sd_for_every_mode(is_dir):
    for mode in range(0o1000):
        sd = secdesc.parse_sd(secdesc.build_sd(_st(mode, is_dir)))
        assert secdesc.dacl_to_mode(sd.dacl, OWNER, GROUP) == mode, oct(mode)


def test_dacl_to_mode_deny_generic_and_inherit_only():
    A, D = secdesc.ACCESS_ALLOWED_ACE_TYPE, secdesc.ACCESS_DENIED_ACE_TYPE
    aces = [
        _ace(D, secdesc.FILE_WRITE_DATA, OWNER),                   # deny w first ...
        _ace(A, secdesc.FILE_ALL_ACCESS, OWNER),                   # ... then allow all: r-x
        _ace(A, secdesc.GENERIC_READ, GROUP),                      # generic read: r--
        _ace(A, secdesc.FILE_ALL_ACCESS, secdesc.SID_EVERYONE, 0x08),  # inherit-only: ignored
        _ace(A, secdesc.FILE_EXECUTE, secdesc.SID_EVERYONE),       # --x
        _ace(D, secdesc.FILE_EXECUTE, secdesc.SID_EVERYONE),       # deny after allow: no effect
        _ace(A, secdesc.GENERIC_ALL, "S-1-5-21-1-2-3-500"),        # someone else: ignored
    ]
    dacl = secdesc.parse_sd(_sd(aces)).dacl
    assert secdesc.dacl_to_mode(dacl, OWNER, GROUP) == 0o541


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with checked_server(tmp_path_factory, "sdshare", port=PORT) as s:
        yield s


async def _session(srv):
    c = await Smb2Client.connect(srv.host, srv.port, dialect=Dialect.SMB311, timeout=20)
    await c.login(srv.user, srv.password, sign=True)
    return c, await c.tree_connect(srv.share)


async def _roundtrip_mode(c, tid, fid) -> int:
    raw = await c.query_info(tid, fid, wire.InfoType.SECURITY, 0,
                             additional_information=secdesc.OWNER_SECURITY_INFORMATION
                             | secdesc.GROUP_SECURITY_INFORMATION | secdesc.DACL_SECURITY_INFORMATION)
    sd = secdesc.parse_sd(raw)
    return secdesc.dacl_to_mode(sd.dacl, sd.owner, sd.group)


async def test_set_dacl_changes_mode_on_disk(srv):
    share = Path(srv.share_path)
    p = share / "m1.txt"
    p.write_bytes(b"x")
    os.chmod(p, 0o644)
    st = p.stat()
    owner, group = secdesc.uid_to_sid(st.st_uid), secdesc.gid_to_sid(st.st_gid)
    A = secdesc.ACCESS_ALLOWED_ACE_TYPE
    c, tid = await _session(srv)
    async with c:
        r = await c.create(tid, "m1.txt", disposition=Disposition.OPEN,
                           desired_access=wire.Access.GENERIC_READ | secdesc.WRITE_DAC)
        # What the cifs client sends for chmod 640: owner rw, group r, no Everyone ACE.
        sd = _sd([_ace(A, secdesc.FILE_GENERIC_READ | secdesc.FILE_GENERIC_WRITE, owner),
                  _ace(A, secdesc.FILE_GENERIC_READ, group)])
        await c.set_info(tid, r.file_id, wire.InfoType.SECURITY, 0, sd,
                         additional_information=secdesc.DACL_SECURITY_INFORMATION)
        assert stat.S_IMODE(p.stat().st_mode) == 0o640
        assert await _roundtrip_mode(c, tid, r.file_id) == 0o640
        # Owner/group only (no DACL in AdditionalInformation): the mode stays.
        await c.set_info(tid, r.file_id, wire.InfoType.SECURITY, 0, _sd([], owner=owner),
                         additional_information=secdesc.OWNER_SECURITY_INFORMATION)
        assert stat.S_IMODE(p.stat().st_mode) == 0o640
        await c.close(tid, r.file_id)


async def test_set_dacl_needs_write_dac(srv):
    share = Path(srv.share_path)
    p = share / "m2.txt"
    p.write_bytes(b"x")
    os.chmod(p, 0o644)
    c, tid = await _session(srv)
    async with c:
        r = await c.create(tid, "m2.txt", disposition=Disposition.OPEN,
                           desired_access=wire.Access.GENERIC_READ | secdesc.WRITE_OWNER)
        sd = _sd([_ace(secdesc.ACCESS_ALLOWED_ACE_TYPE, secdesc.FILE_ALL_ACCESS, secdesc.SID_EVERYONE)])
        await c.set_info(tid, r.file_id, wire.InfoType.SECURITY, 0, sd,
                         additional_information=secdesc.DACL_SECURITY_INFORMATION,
                         expect=STATUS_ACCESS_DENIED)
        await c.close(tid, r.file_id)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


async def test_set_dacl_on_directory_keeps_sticky_bits(srv):
    share = Path(srv.share_path)
    d = share / "m3dir"
    d.mkdir()
    os.chmod(d, 0o1777)
    st = d.stat()
    owner = secdesc.uid_to_sid(st.st_uid)
    c, tid = await _session(srv)
    async with c:
        r = await c.create(tid, "m3dir", disposition=Disposition.OPEN, options=CreateOptions.DIRECTORY_FILE,
                           desired_access=wire.Access.GENERIC_READ | secdesc.WRITE_DAC)
        sd = _sd([_ace(secdesc.ACCESS_ALLOWED_ACE_TYPE, secdesc.FILE_ALL_ACCESS, owner)])
        await c.set_info(tid, r.file_id, wire.InfoType.SECURITY, 0, sd,
                         additional_information=secdesc.DACL_SECURITY_INFORMATION)
        await c.close(tid, r.file_id)
    assert stat.S_IMODE(d.stat().st_mode) == 0o1700
