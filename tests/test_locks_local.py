"""Byte-range locks taken over SMB are Linux OFD locks: a local program sees them, and a
local program's lock stops a conflicting SMB lock."""
from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import subprocess
import sys

from tests.smb2client import Access, Disposition, LockFlags, ShareAccess, Smb2Client

FLOCK = struct.Struct("hh4xqqi4x")
PROBE = r"""
import fcntl, struct, sys
F = struct.Struct("hh4xqqi4x")
f = open(sys.argv[1], "r+b"); fd = f.fileno()
res = fcntl.fcntl(fd, fcntl.F_OFD_GETLK if hasattr(fcntl, "F_OFD_GETLK") else 36,
                  F.pack(fcntl.F_WRLCK, 0, int(sys.argv[2]), int(sys.argv[3]), 0))
print("locked" if F.unpack(res)[0] != fcntl.F_UNLCK else "free")
"""


def _probe(path: str, start: int, length: int) -> str:
    return subprocess.run([sys.executable, "-c", PROBE, path, str(start), str(length)],
                          capture_output=True, text=True, timeout=30, check=True).stdout.strip()


async def _session(srv):
    c = await Smb2Client.connect(srv.host, srv.port, dialect=0x0311)
    await c.login(srv.user, srv.password)
    tid = await c.tree_connect(srv.share)
    return c, tid


async def _smb_lock_is_visible_locally(srv):
    path = os.path.join(srv.share_path, "locked.bin")
    with open(path, "wb") as f:
        f.write(b"\0" * 4096)
    c, tid = await _session(srv)
    try:
        r = await c.create(tid, "locked.bin", desired_access=Access.GENERIC_READ | Access.GENERIC_WRITE,
                           share_access=ShareAccess.READ | ShareAccess.WRITE, disposition=Disposition.OPEN)
        assert _probe(path, 100, 10) == "free"
        await c.lock(tid, r.file_id, [(100, 10, LockFlags.EXCLUSIVE | LockFlags.FAIL_IMMEDIATELY)])
        assert await asyncio.to_thread(_probe, path, 100, 10) == "locked"
        assert await asyncio.to_thread(_probe, path, 200, 10) == "free"
        await c.lock(tid, r.file_id, [(100, 10, LockFlags.UNLOCK)])
        assert await asyncio.to_thread(_probe, path, 100, 10) == "free"
        await c.close(tid, r.file_id)
    finally:
        await c.__aexit__(None, None, None)


async def _local_lock_refuses_smb_lock(srv):
    path = os.path.join(srv.share_path, "local.bin")
    with open(path, "wb") as f:
        f.write(b"\0" * 4096)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_OFD_SETLK", 37), FLOCK.pack(fcntl.F_WRLCK, 0, 0, 50, 0))
        c, tid = await _session(srv)
        try:
            r = await c.create(tid, "local.bin", desired_access=Access.GENERIC_READ | Access.GENERIC_WRITE,
                               share_access=ShareAccess.READ | ShareAccess.WRITE,
                               disposition=Disposition.OPEN)
            resp = await c.lock(tid, r.file_id, [(10, 5, LockFlags.EXCLUSIVE | LockFlags.FAIL_IMMEDIATELY)],
                                expect=None)
            assert resp == 0xC0000055, hex(resp)          # STATUS_LOCK_NOT_GRANTED
            await c.lock(tid, r.file_id, [(60, 5, LockFlags.EXCLUSIVE | LockFlags.FAIL_IMMEDIATELY)])
            await c.close(tid, r.file_id)
        finally:
            await c.__aexit__(None, None, None)
    finally:
        os.close(fd)


def test_smb_lock_is_visible_to_local_programs(server):
    asyncio.run(_smb_lock_is_visible_locally(server))


def test_local_lock_refuses_conflicting_smb_lock(server):
    asyncio.run(_local_lock_refuses_smb_lock(server))
