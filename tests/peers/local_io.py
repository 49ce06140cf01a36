"""Local programs on the server machine, for the kernel-coherence tests: processes that open a
share's files directly (not through SMB), as a shell, an NFS server or a web server would.

This module owns three such programs, each a fresh Python child started with a clean signal
state (tests.peers.procs.fresh_signals: the kernel-lease tests block SIGIO and a realtime
signal in pytest's main thread, and a child would inherit that mask):
- ``LocalProc.reader(path)``: ``open(path, "r")``, read everything, report when the open
  returned. It blocks in the kernel while someone holds a write lease on the file.
- ``LocalProc.writer(path, data)``: ``open(path, "r+b")``, write ``data`` at offset 0.
- ``LeaseHolder``: takes a kernel write lease (F_SETLEASE F_WRLCK) on an O_RDONLY fd and
  keeps it until told (``release()``: a line on stdin, or SIGUSR1) or until its own time
  limit; it records the lease breaks it is sent (SIGIO) without acting on them.

Every child reports CLOCK_MONOTONIC timestamps (``time.monotonic()``); that clock is
system-wide on Linux, so they compare directly with the test's own ``time.monotonic()``.
Every wait is bounded; ``kill()`` ends a child by its own pid.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys

from tests.peers.procs import fresh_signals


def local_file(peer, name: str, data: bytes) -> str:
    """Create `name` in the peer's share with `data`, owned like the share's top directory
    (a server running as that user may take kernel leases on it without CAP_LEASE)."""
    path = os.path.join(peer.share_path, name)
    with open(path, "wb") as f:
        f.write(data)
    st = os.stat(peer.share_path)
    os.chown(path, st.st_uid, st.st_gid)
    os.chmod(path, 0o666)
    return path

_READER = r"""
import json, sys, time
path = sys.argv[1]
t_start = time.monotonic()
with open(path, "r", encoding="latin-1") as f:
    t_open = time.monotonic()
    data = f.read()
print(json.dumps({"t_start": t_start, "t_open": t_open, "t_done": time.monotonic(),
                  "data": data.encode("latin-1").hex()}), flush=True)
"""

_WRITER = r"""
import json, sys, time
path, data = sys.argv[1], bytes.fromhex(sys.argv[2])
t_start = time.monotonic()
with open(path, "r+b") as f:
    t_open = time.monotonic()
    f.write(data)
t_done = time.monotonic()
print(json.dumps({"t_start": t_start, "t_open": t_open, "t_done": t_done}), flush=True)
"""

# F_SETLEASE/F_GETLEASE = F_LINUX_SPECIFIC_BASE + 0/1. SIGIO's default action would kill
# the holder at the first break: record it instead (the holder never releases on a break,
# it waits to be told, like a program that keeps its lease until the kernel forces it).
_HOLDER = r"""
import fcntl, json, os, select, signal, sys, time
F_SETLEASE, F_GETLEASE = 1024, 1025
path, limit = sys.argv[1], float(sys.argv[2])
breaks, told = [], []
signal.signal(signal.SIGIO, lambda s, f: breaks.append(time.monotonic()))
signal.signal(signal.SIGUSR1, lambda s, f: told.append(time.monotonic()))
fd = os.open(path, os.O_RDONLY)
try:
    fcntl.fcntl(fd, F_SETLEASE, fcntl.F_WRLCK)
except OSError as e:
    print(json.dumps({"error": f"F_SETLEASE F_WRLCK: {e}"}), flush=True)
    sys.exit(1)
print(json.dumps({"ready": time.monotonic()}), flush=True)
deadline = time.monotonic() + limit
while not told and time.monotonic() < deadline:
    r, _, _ = select.select([sys.stdin], [], [], 0.02)
    if r:
        sys.stdin.readline()
        told.append(time.monotonic())
state_before = fcntl.fcntl(fd, F_GETLEASE)
t_release = time.monotonic()
fcntl.fcntl(fd, F_SETLEASE, fcntl.F_UNLCK)
os.close(fd)
print(json.dumps({"t_release": t_release, "breaks": breaks, "told": bool(told),
                  "lease_at_release": state_before}), flush=True)
"""


class LocalProc:
    """One local reader or writer. ``result()`` returns its JSON report (``data`` as bytes
    for a reader) or raises AssertionError when it failed or did not finish in time."""

    def __init__(self, proc: asyncio.subprocess.Process, what: str):
        self.proc = proc
        self.what = what
        self._communicate: asyncio.Task | None = None

    @classmethod
    async def _start(cls, what: str, code: str, *args: str) -> "LocalProc":
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            preexec_fn=fresh_signals)
        p = cls(proc, what)
        p._communicate = asyncio.get_running_loop().create_task(proc.communicate())
        return p

    @classmethod
    async def reader(cls, path: str) -> "LocalProc":
        return await cls._start(f"local open({path!r}, 'r')", _READER, path)

    @classmethod
    async def writer(cls, path: str, data: bytes) -> "LocalProc":
        return await cls._start(f"local write to {path!r}", _WRITER, path, data.hex())

    @property
    def running(self) -> bool:
        return not self._communicate.done()

    async def result(self, timeout: float) -> dict:
        try:
            out, err = await asyncio.wait_for(asyncio.shield(self._communicate), timeout)
        except asyncio.TimeoutError:
            self.kill()
            raise AssertionError(f"{self.what} did not finish within {timeout} s") from None
        if self.proc.returncode != 0:
            raise AssertionError(f"{self.what} failed ({self.proc.returncode}): "
                                 f"{err.decode(errors='replace')[-2000:]}")
        res = json.loads(out.decode().strip().splitlines()[-1])
        if "data" in res:
            res["data"] = bytes.fromhex(res["data"])
        return res

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)

    async def aclose(self) -> None:
        self.kill()
        if self._communicate is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._communicate, 10)


class LeaseHolder:
    """A local process holding a kernel write lease on `path` (see the module docstring).
    The file must be owned by the test's user, or the test must have CAP_LEASE."""

    def __init__(self, proc: asyncio.subprocess.Process, path: str, ready_at: float):
        self.proc = proc
        self.path = path
        self.ready_at = ready_at

    @classmethod
    async def start(cls, path: str, limit_s: float = 30.0) -> "LeaseHolder":
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _HOLDER, path, str(limit_s), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            preexec_fn=fresh_signals)
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
        except asyncio.TimeoutError:
            line = b""
        msg = json.loads(line) if line.strip() else {}
        if "ready" not in msg:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            err = await asyncio.wait_for(proc.stderr.read(), 10)
            raise AssertionError(f"lease holder on {path} did not take its lease: {msg} "
                                 f"{err.decode(errors='replace')[-2000:]}")
        return cls(proc, path, msg["ready"])

    def release(self) -> None:
        """Tell the holder to release its lease (it answers through ``result()``)."""
        if self.proc.returncode is None:
            self.proc.stdin.write(b"release\n")

    def signal_release(self) -> None:
        """The same through SIGUSR1."""
        if self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGUSR1)

    async def result(self, timeout: float = 10.0) -> dict:
        """{"t_release": monotonic time of F_UNLCK, "breaks": [monotonic times of SIGIO],
        "told": released because told (not at its own limit), "lease_at_release": the
        F_GETLEASE value just before (the break target while a break is pending)}."""
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            await asyncio.wait_for(self.proc.wait(), 10)
        except asyncio.TimeoutError:
            self.kill()
            raise AssertionError(f"lease holder on {self.path} did not report in time") from None
        if not line.strip():
            err = await self.proc.stderr.read()
            raise AssertionError(f"lease holder failed: {err.decode(errors='replace')[-2000:]}")
        return json.loads(line)

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)

    async def aclose(self) -> None:
        self.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.wait(), 10)
