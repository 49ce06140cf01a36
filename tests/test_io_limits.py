"""Sizes and offsets at the file system's edges, end to end: the project's SMB2 test client
against a real smbd_py over TCP on 127.0.0.1, real files. Each request gets a status and
the connection stays usable (the live fuzzer once found SET_INFO EndOfFile past the
largest file dropping it: ftruncate's EFBIG was not turned into a status).
Ports 15620-15629.
"""
from __future__ import annotations

import struct

import pytest

from tests.peers.coherence import session
from tests.peers.smbd_py_server import checked_server
from tests.smb2client import Disposition
from tests.smb2client import wire

PORT = 15620
STATUS_DISK_FULL = 0xC000007F
STATUS_INVALID_PARAMETER = 0xC000000D


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with checked_server(tmp_path_factory, "iolimits", port=PORT) as s:
        yield s


@pytest.mark.parametrize("size", [(1 << 63) - 1, 1 << 62])
async def test_end_of_file_past_the_largest_file(srv, size):
    c, tid = await session(srv)
    try:
        r = await c.create(tid, f"eof{size}.bin", disposition=Disposition.CREATE)
        status = await c.set_info(tid, r.file_id, wire.InfoType.FILE,
                                  wire.FileInfoClass.END_OF_FILE, struct.pack("<Q", size),
                                  expect=None)
        assert status in (STATUS_DISK_FULL, STATUS_INVALID_PARAMETER), hex(status)
        # The connection and the open still work.
        await c.write(tid, r.file_id, 0, b"ok")
        assert await c.read(tid, r.file_id, 0, 2) == b"ok"
        await c.close(tid, r.file_id)
    finally:
        await c.disconnect()
