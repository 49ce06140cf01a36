"""CREATE's descriptors over the wire (issue 6 fast path): a stat open keeps the O_PATH
descriptor its target was stat'ed through, and every other outcome of a CREATE - a data
open, a truncate, a directory, an error raised after the stat - closes it. Counted in
the real server's /proc/<pid>/fd: after many opens and closes of every kind, the server
holds exactly the descriptors it held before."""
from __future__ import annotations

import os

from tests.smb2client import Access, CreateOptions, Disposition, Smb2Client

OBJECT_NAME_COLLISION = 0xC0000035
FILE_IS_A_DIRECTORY = 0xC00000BA
NOT_A_DIRECTORY = 0xC0000103


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_create_outcomes_leave_no_descriptor_behind(server):
    with open(os.path.join(server.share_path, "f.txt"), "wb") as f:
        f.write(b"data")
    os.mkdir(os.path.join(server.share_path, "d"))
    c = await Smb2Client.connect(server.host, server.port, timeout=10)
    async with c:
        await c.login(server.user, server.password)
        tid = await c.tree_connect(server.share)
        pid = server.proc.pid

        async def round_of_everything():
            # stat open (O_PATH: takes the stat's descriptor)
            r = await c.create(tid, "f.txt", desired_access=Access.FILE_READ_ATTRIBUTES,
                               disposition=Disposition.OPEN)
            await c.close(tid, r.file_id)
            # data open (its own descriptor; the stat's is closed)
            r = await c.create(tid, "f.txt", desired_access=Access.GENERIC_READ,
                               disposition=Disposition.OPEN)
            await c.close(tid, r.file_id)
            # directory
            r = await c.create(tid, "d", desired_access=Access.FILE_READ_ATTRIBUTES,
                               disposition=Disposition.OPEN,
                               options=CreateOptions.DIRECTORY_FILE)
            await c.close(tid, r.file_id)
            # errors after the stat
            await c.create(tid, "f.txt", disposition=Disposition.CREATE,
                           expect=OBJECT_NAME_COLLISION)
            await c.create(tid, "d", desired_access=Access.FILE_READ_ATTRIBUTES,
                           disposition=Disposition.OPEN,
                           options=CreateOptions.NON_DIRECTORY_FILE, expect=FILE_IS_A_DIRECTORY)
            await c.create(tid, "f.txt", desired_access=Access.FILE_READ_ATTRIBUTES,
                           disposition=Disposition.OPEN,
                           options=CreateOptions.DIRECTORY_FILE, expect=NOT_A_DIRECTORY)
            await c.create(tid, "d::$DATA", desired_access=Access.FILE_READ_ATTRIBUTES,
                           disposition=Disposition.OPEN, expect=FILE_IS_A_DIRECTORY)

        await round_of_everything()                 # warm up (lazy imports, caches)
        before = _fds(pid)
        for _ in range(20):
            await round_of_everything()
        assert _fds(pid) == before
        # A held stat open holds one descriptor, released by its close.
        r = await c.create(tid, "f.txt", desired_access=Access.FILE_READ_ATTRIBUTES,
                           disposition=Disposition.OPEN)
        assert _fds(pid) == before + 1
        await c.close(tid, r.file_id)
        assert _fds(pid) == before
