"""Break latencies measured with the project's break-aware client (tests/smb2client).

- local open vs an SMB grant: a client holds a batch oplock or an RWH lease and acks every
  break at once; a local process opens the file; we time how long that open(2) blocks.
  This is the kernel-lease path (F_SETLEASE): without a kernel lease the open never blocks
  and nothing is broken, which the cell says instead of pretending it is fast.
- SMB-to-SMB: client 1 holds the grant (acks at once), client 2 opens the same file; we
  time client 2's CREATE, which includes the break, the ack and the grant decision.

A server that does not grant what was asked gets "n/a: not granted" rather than a number.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from tests.smb2client import LeaseRequest, Oplock, Smb2Client, new_lease_key
from tests.peers.coherence import session
from tests.smb2client.wire import RWH

from .model import Cell, na
from .targets import Target


async def connect(t: Target, timeout: float = 30.0) -> tuple[Smb2Client, int]:
    return await session(t, timeout=timeout)


async def open_granted(c: Smb2Client, tid: int, name: str, grant: str):
    """CREATE asking for `grant` ("batch" or "lease"); returns (response, granted?, what)."""
    if grant == "lease":
        r = await c.create(tid, name, lease=LeaseRequest(new_lease_key(), RWH))
        got = r.lease_state if r.lease_key is not None else None
        ok = got == RWH
        what = (f"lease {_lease_name(got)}" if got is not None
                else f"oplock {_oplock_name(r.oplock_level)}, no lease")
    else:
        r = await c.create(tid, name, oplock=Oplock.BATCH)
        ok = r.oplock_level == Oplock.BATCH
        what = f"oplock {_oplock_name(r.oplock_level)}"
    return r, ok, what


def _lease_name(state: int | None) -> str:
    if not state:
        return "NONE"
    return "".join(ch for bit, ch in ((1, "R"), (4, "W"), (2, "H")) if state & bit)


def _oplock_name(level: int) -> str:
    try:
        return Oplock(level).name
    except ValueError:
        return hex(level)


def _drain(c: Smb2Client) -> int:
    n = 0
    while not c.breaks.empty():
        c.breaks.get_nowait()
        n += 1
    return n


async def _settle_acks(c: Smb2Client, before: int, broke: bool, limit: float = 2.0) -> None:
    """Wait (bounded) until the auto-ack of this round's break was answered, so the next
    round starts from a clean state."""
    if not broke:
        return
    deadline = time.monotonic() + limit
    while len(c.auto_acks) <= before and time.monotonic() < deadline:
        await asyncio.sleep(0.001)


# The local program: its own process, as the measurement says, so that its open(2)
# returning never waits for the client's GIL (a thread of this process did: when the
# server's ack response woke the client first, the open's return waited for the
# client's Python to finish with it). One line per command on stdin:
# "open PATH" -> "<seconds the open blocked>", "close" -> "closed".
_LOCAL_OPENER = """
import os, sys, time
fd = -1
for line in sys.stdin:
    cmd, _, arg = line.rstrip("\\n").partition(" ")
    if cmd == "open":
        t0 = time.perf_counter()
        fd = os.open(arg, os.O_RDWR)
        print(time.perf_counter() - t0, flush=True)
    elif cmd == "close":
        os.close(fd)
        fd = -1
        print("closed", flush=True)
"""


class LocalOpener:
    """A separate process that opens a file O_RDWR on request and times the open."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _LOCAL_OPENER], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def _ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        if not out:
            raise RuntimeError(f"local opener died (rc={self.proc.poll()})")
        return out.strip()

    async def open(self, path: str) -> float:
        # In a thread: the event loop must keep running to answer the break.
        return float(await asyncio.get_running_loop().run_in_executor(
            None, self._ask, f"open {path}"))

    def close_file(self) -> None:
        self._ask("close")

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def local_open_break(t: Target, *, grant: str, name: str, iterations: int) -> Cell:
    """Seconds a local O_RDWR open blocks while a client holds `grant` on `name`."""
    path = os.path.join(t.share_path, name)
    c, tid = await connect(t)
    c.auto_ack = True
    cell = Cell()
    broke_n = 0
    opener = LocalOpener()
    try:
        for _ in range(iterations):
            r, ok, what = await open_granted(c, tid, name, grant)
            if not ok:
                await c.close(tid, r.file_id)
                return na(f"not granted (asked {grant_label(grant)}, got {what})")
            _drain(c)
            acks_before = len(c.auto_acks)
            dt = await opener.open(path)
            try:
                broke = _drain(c) > 0
                await _settle_acks(c, acks_before, broke)
            finally:
                opener.close_file()
            broke_n += broke
            cell.samples.append(dt)
            await c.close(tid, r.file_id)
    finally:
        opener.stop()
        await c.disconnect()
    if broke_n == 0:
        cell.comparable = False
        cell.notes.append("no break was sent: the local open did not wait for the client "
                          "(no kernel lease behind the grant)")
    elif broke_n < iterations:
        cell.notes.append(f"break seen in {broke_n}/{iterations} rounds")
    return cell


async def smb_to_smb_break(t: Target, *, grant: str, name: str, iterations: int) -> Cell:
    """Seconds of client 2's CREATE while client 1 holds `grant` and acks at once."""
    c1, tid1 = await connect(t)
    c1.auto_ack = True
    try:
        c2, tid2 = await connect(t)
    except BaseException:
        await c1.disconnect()
        raise
    cell = Cell()
    broke_n = 0
    try:
        for _ in range(iterations):
            r1, ok, what = await open_granted(c1, tid1, name, grant)
            if not ok:
                await c1.close(tid1, r1.file_id)
                return na(f"not granted (asked {grant_label(grant)}, got {what})")
            _drain(c1)
            acks_before = len(c1.auto_acks)
            t0 = time.perf_counter()
            r2 = await c2.create(tid2, name, oplock=Oplock.NONE)
            dt = time.perf_counter() - t0
            broke = _drain(c1) > 0
            broke_n += broke
            await _settle_acks(c1, acks_before, broke)
            cell.samples.append(dt)
            await c2.close(tid2, r2.file_id)
            await c1.close(tid1, r1.file_id)
    finally:
        await c2.disconnect()
        await c1.disconnect()
    if broke_n == 0:
        cell.comparable = False
        cell.notes.append("client 1 got no break")
    elif broke_n < iterations:
        cell.notes.append(f"break seen in {broke_n}/{iterations} rounds")
    return cell


def grant_label(grant: str) -> str:
    return "RWH lease" if grant == "lease" else "batch oplock"
