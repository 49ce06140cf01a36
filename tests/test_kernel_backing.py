"""The kernel backing of grants (smbd_py.oplocks.backing and .watch) against the real
kernel and real files: the shared-description fd plan keeps a write lease alive across
several SMB opens, our own second description never breaks our own lease, a local
reader's open breaks the write lease to 'read', inotify reports foreign writes and drops
the echo of our own, and the table strips write caching the kernel cannot back.

The lease-break signal is reserved at import, before pytest-asyncio starts any thread
(the rule oplocks.kernel documents)."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from smbd_py.oplocks import kernel
from smbd_py.oplocks.backing import KernelBacking
from smbd_py.oplocks.table import LeaseTable
from smbd_py.oplocks.types import (LEASE_H, LEASE_NONE, LEASE_R, LEASE_RWH, LEASE_W,
                                   OPLOCK_BATCH, OPLOCK_II, OPLOCK_LEASE, LeaseRequest,
                                   OpenRequest)
from smbd_py.oplocks.watch import ModifyWatcher

RESERVED = kernel.reserve_lease_signal()
KEY = ("dev", "ino")


def _child(code: str) -> subprocess.Popen:
    """A local program (another process: only its opens break our leases)."""
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture
async def backing(tmp_path):
    loop = asyncio.get_running_loop()
    leases = kernel.KernelLeases(loop, signo=RESERVED)
    watcher = ModifyWatcher(loop)
    leases.start()
    watcher.start()
    breaks: list = []
    b = KernelBacking(leases, watcher, lambda key, target: breaks.append((key, target)))
    b.breaks = breaks
    try:
        yield b
    finally:
        b.close()


def _file(tmp_path, data=b"data\n") -> str:
    p = tmp_path / "f.txt"
    p.write_bytes(data)
    return str(p)


async def test_write_lease_survives_several_smb_opens(backing, tmp_path):
    path = _file(tmp_path)
    fd1 = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    backing.adopt(KEY, 1, fd1, True)
    fd2 = backing.dup(KEY, 2, True)          # a second SMB open: same description
    assert fd2 >= 0 and fd2 != fd1
    assert backing.sync(KEY, LEASE_RWH)
    assert backing.leases.current(fd1) == "write"
    fd3 = backing.dup(KEY, 3, False)         # a reader shares the writable description
    assert backing.leases.current(fd3) == "write" and not backing.breaks
    for h, fd in ((1, fd1), (2, fd2)):
        os.close(fd)
        backing.detach(KEY, h)
        assert backing.leases.current(fd3) == "write"   # the last open keeps it
    os.close(fd3)
    backing.detach(KEY, 3)
    assert not backing._inodes               # description and lease gone with the last
    # Nobody holds a lease now: a local writer opens at once.
    p = _child(f"import os; os.close(os.open({path!r}, os.O_WRONLY | os.O_NONBLOCK))")
    assert p.wait(10) == 0, p.stderr.read()


async def test_local_reader_breaks_write_lease_to_read_then_release(backing, tmp_path):
    path = _file(tmp_path)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    backing.adopt(KEY, 1, fd, True)
    assert backing.sync(KEY, LEASE_RWH)
    t0 = time.monotonic()
    reader = _child(f"import time; t=time.monotonic(); open({path!r}).read(); "
                    "print(time.monotonic()-t)")
    for _ in range(200):
        if backing.breaks:
            break
        await asyncio.sleep(0.01)
    assert backing.breaks == [(KEY, LEASE_R)]
    await asyncio.sleep(0.2)
    assert reader.poll() is None, "the local open did not wait for the break"
    # The SMB holders acked to RH: an O_RDWR description cannot hold a read lease, so
    # the write lease is released and the watch backs R.
    assert backing.sync(KEY, LEASE_R | LEASE_H)
    assert reader.wait(10) == 0
    assert time.monotonic() - t0 < 10
    assert backing.watcher.watching(KEY)
    os.close(fd)
    backing.detach(KEY, 1)


async def test_own_second_description_does_not_break_own_lease(backing, tmp_path):
    path = _file(tmp_path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    backing.adopt(KEY, 1, fd, False)
    backing.sync(KEY, LEASE_R)
    assert backing.leases.held(backing._inodes[KEY].fds["ro"]) == "read"
    backing.before_open(KEY, write=True)     # a writer's description is coming
    wfd = os.open(path, os.O_RDWR | os.O_NONBLOCK)   # would fail EWOULDBLOCK otherwise
    backing.adopt(KEY, 2, wfd, True)
    await asyncio.sleep(0.05)
    assert not backing.breaks
    assert not backing.sync(KEY, LEASE_RWH), "two descriptions cannot hold a write lease"
    for h, f in ((1, fd), (2, wfd)):
        os.close(f)
        backing.detach(KEY, h)


async def test_write_lease_refused_while_another_process_has_it_open(backing, tmp_path):
    path = _file(tmp_path)
    holder = _child(f"import time; f=open({path!r}); print('open', flush=True); "
                    "time.sleep(10)")
    assert holder.stdout.readline().strip() == "open"
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    backing.adopt(KEY, 1, fd, True)
    assert not backing.sync(KEY, LEASE_RWH)
    holder.kill()
    holder.wait(5)
    os.close(fd)
    backing.detach(KEY, 1)


async def test_watch_reports_foreign_writes_and_drops_our_echo(backing, tmp_path):
    path = _file(tmp_path)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    backing.adopt(KEY, 1, fd, True)
    backing.sync(KEY, LEASE_R | LEASE_H)
    assert backing.watcher.watching(KEY)
    backing.own_write(KEY)
    os.pwrite(fd, b"ours", 0)
    await asyncio.sleep(0.2)
    assert backing.breaks == []
    backing.watcher._own_until.clear()      # the echo window is over
    w = _child(f"f=open({path!r}, 'r+b'); f.write(b'theirs'); f.close()")
    assert w.wait(10) == 0
    for _ in range(100):
        if backing.breaks:
            break
        await asyncio.sleep(0.01)
    assert backing.breaks == [(KEY, LEASE_NONE)]
    backing.sync(KEY, LEASE_NONE)
    assert not backing.watcher.watching(KEY)
    os.close(fd)
    backing.detach(KEY, 1)


def test_table_limit_open_strips_write_caching():
    t = LeaseTable()
    lease = LeaseRequest(b"k" * 16, LEASE_RWH)
    r = t.open(OpenRequest(1, "f", "c1", b"g" * 16, oplock_level=OPLOCK_LEASE, lease=lease), 0)
    assert r.grant.lease_state == LEASE_RWH
    t.limit_open(1, LEASE_RWH & ~LEASE_W)
    assert t.grant_of(1) == (OPLOCK_LEASE, LEASE_R | LEASE_H)
    assert t.caching_of("f") == LEASE_R | LEASE_H
    t.open(OpenRequest(2, "g", "c1", b"g" * 16, oplock_level=OPLOCK_BATCH), 0)
    t.limit_open(2, LEASE_RWH & ~LEASE_W)
    assert t.grant_of(2) == (OPLOCK_II, LEASE_R)
