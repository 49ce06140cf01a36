"""The kernel lease adapter against the real kernel: real files, real lease breaks by
separate processes, a uvloop event loop that must keep running while breakers wait.

Needs Linux with /proc/sys/fs/leases-enable = 1 and a filesystem with leases under the
pytest tmp dir; fails loudly otherwise (the project's reason to exist is these leases).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import uvloop

from smbd_py.oplocks import kernel
from smbd_py.oplocks.kernel import KernelLeases, open_when_unleased, probe

# Block the lease signals in the main thread at collection time, before any test of
# the session can start a thread: threads inherit the mask, and KernelLeases.start()
# refuses to run while any thread leaves them unblocked (as a server must, see kernel.py).
RESERVED_SIGNAL = kernel.reserve_lease_signal()

PY = sys.executable
REPO = str(Path(__file__).resolve().parents[1])
GENEROUS_S = 10.0  # far below lease-break-time (45 s): proves we, not the kernel, let go


def run(coro_fn, *args):
    """Run a coroutine function on a fresh uvloop loop in the main thread."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro_fn(*args))


@pytest.fixture(autouse=True)
def leases_enabled():
    with open("/proc/sys/fs/leases-enable") as f:
        assert f.read().strip() == "1", "kernel leases are disabled on this machine"


@pytest.fixture
def target(tmp_path) -> str:
    p = tmp_path / "leased.txt"
    p.write_bytes(b"hello\n")
    return str(p)


class Ticker:
    """A task ticking every 5 ms; records the largest gap between ticks."""

    def __init__(self) -> None:
        self.ticks = 0
        self.max_gap = 0.0
        self._task = None

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            last = now
            self.ticks += 1

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


async def spawn_opener(path: str, how: str) -> asyncio.subprocess.Process:
    """A separate process that opens `path` (how: 'r', 'r+', 'trunc') and prints the
    milliseconds its open() call took."""
    op = {
        "r": f"open({path!r}, 'r').read()",
        "r+": f"open({path!r}, 'r+').close()",
        "trunc": f"os.truncate({path!r}, 0)",
    }[how]
    code = f"import os, time\nt = time.perf_counter()\n{op}\nprint((time.perf_counter() - t) * 1e3, flush=True)\n"
    return await asyncio.create_subprocess_exec(PY, "-c", code, stdout=asyncio.subprocess.PIPE)


async def child_ms(proc, timeout=GENEROUS_S) -> float:
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0
    return float(out)


def lease_fd(path: str, flags: int = os.O_RDONLY) -> int:
    return os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)


# ----------------------------------------------------------------------------- probe
def test_probe_reports_leases_on(tmp_path):
    s = probe(str(tmp_path))
    assert s.read_ok and s.write_ok, s.reason
    with open("/proc/sys/fs/lease-break-time") as f:
        assert s.lease_break_time_s == int(f.read())
    assert s.describe().startswith(f"kernel leases: on (read+write), lease-break-time {s.lease_break_time_s} s")
    assert not list(tmp_path.iterdir()), "probe must remove its trial file"


def test_probe_reports_off_with_reason_where_no_trial_file_can_be_made():
    s = probe("/proc/sys/fs")
    assert not s.on
    assert s.describe().startswith("kernel leases: off: cannot create a trial file in /proc/sys/fs")


def test_delegation_detection_matches_kernel_version(target):
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    fd = os.open(target, os.O_RDONLY)
    try:
        assert kernel.delegations_supported(fd) == ((major, minor) >= (6, 19))
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- refusals
def test_read_lease_refused_while_a_writable_fd_exists(target):
    async def body():
        kl = KernelLeases(asyncio.get_running_loop())
        kl.start()
        try:
            w = os.open(target, os.O_WRONLY)
            fd = lease_fd(target)
            assert kl.set_lease(fd, "read") is False
            assert kl.held(fd) is None
            os.close(w)
            assert kl.set_lease(fd, "read") is True
            assert kl.current(fd) == "read"
            kl.release(fd)
            os.close(fd)
            # The lease fd itself must be read-only for a read lease.
            rw = lease_fd(target, os.O_RDWR)
            assert kl.set_lease(rw, "read") is False
            os.close(rw)
        finally:
            kl.close()
    run(body)


def test_write_lease_refused_while_another_fd_is_open(target):
    async def body():
        kl = KernelLeases(asyncio.get_running_loop())
        kl.start()
        try:
            other = os.open(target, os.O_RDONLY)
            fd = lease_fd(target)
            assert kl.set_lease(fd, "write") is False
            os.close(other)
            # An O_PATH handle is not an open for this purpose.
            opath = os.open(target, os.O_PATH)
            assert kl.set_lease(fd, "write") is True
            assert kl.current(fd) == "write"
            kl.release(fd)
            os.close(opath)
            os.close(fd)
        finally:
            kl.close()
    run(body)


def test_write_lease_on_writable_fd_cannot_be_downgraded(target):
    async def body():
        kl = KernelLeases(asyncio.get_running_loop())
        kl.start()
        try:
            fd = lease_fd(target, os.O_RDWR)
            assert kl.set_lease(fd, "write") is True
            assert kl.downgrade(fd) is False
            assert kl.current(fd) == "write"
            os.write(fd, b"own writes do not break the lease")
            assert kl.current(fd) == "write"
            kl.release(fd)
            os.close(fd)
        finally:
            kl.close()
    run(body)


def test_start_refuses_when_a_thread_does_not_block_the_signals():
    stop = threading.Event()
    unblocked = threading.Event()

    def careless_thread():
        # Like a thread started before the server reserved its signals.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {RESERVED_SIGNAL, signal.SIGIO})
        unblocked.set()
        stop.wait(30)

    t = threading.Thread(target=careless_thread, daemon=True)
    t.start()
    assert unblocked.wait(5)
    try:
        async def body():
            before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
            kl = KernelLeases(asyncio.get_running_loop())
            with pytest.raises(RuntimeError, match="do not block"):
                kl.start()
            assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
            assert not kl.running
        run(body)
    finally:
        stop.set()
        t.join(5)
        # join() returns when the Python side is done; the kernel thread (still without
        # the signals blocked) lingers in /proc a little longer, and the next test's
        # start() would refuse because of it.
        gone_by = time.monotonic() + 5
        while os.path.exists(f"/proc/self/task/{t.native_id}") and time.monotonic() < gone_by:
            time.sleep(0.001)
        assert not os.path.exists(f"/proc/self/task/{t.native_id}")


# ----------------------------------------------------------------------------- breaks
def test_reader_breaks_write_lease_to_read_loop_keeps_running(target):
    async def body():
        loop = asyncio.get_running_loop()
        breaks = []
        got = asyncio.Event()

        def on_break(fd, tgt):
            breaks.append((fd, tgt))
            got.set()

        kl = KernelLeases(loop, on_break)
        kl.start()
        ticker = Ticker()
        try:
            fd = lease_fd(target)
            assert kl.set_lease(fd, "write")
            ticker.start()
            child = await spawn_opener(target, "r")
            await asyncio.wait_for(got.wait(), GENEROUS_S)
            assert breaks == [(fd, "read")]
            assert kl.current(fd) == "read"  # the target, while breaking
            assert kl.breaking(fd) == "read"
            # The child stays blocked in open() while we hold on; the loop runs on.
            ticks_before = ticker.ticks
            await asyncio.sleep(0.3)
            assert child.returncode is None
            assert ticker.ticks >= ticks_before + 10
            assert ticker.max_gap < 0.25, ticker.max_gap
            assert kl.downgrade(fd)
            ms = await child_ms(child)
            assert ms >= 250  # it really waited for us
            assert kl.held(fd) == "read" and kl.breaking(fd) is None
            assert breaks == [(fd, "read")]  # exactly once per break
            kl.release(fd)
            os.close(fd)
        finally:
            await ticker.stop()
            kl.close()
    run(body)


@pytest.mark.parametrize("how", ["r+", "trunc"])
def test_writer_breaks_write_lease_to_none(target, how):
    async def body():
        breaks = []
        got = asyncio.Event()
        kl = KernelLeases(asyncio.get_running_loop(),
                          lambda fd, t: (breaks.append((fd, t)), got.set()))
        kl.start()
        try:
            fd = lease_fd(target)
            assert kl.set_lease(fd, "write")
            child = await spawn_opener(target, how)
            await asyncio.wait_for(got.wait(), GENEROUS_S)
            assert breaks == [(fd, "none")]
            assert kl.current(fd) == "none"
            kl.release(fd)
            await child_ms(child)
            os.close(fd)
        finally:
            kl.close()
    run(body)


def test_writer_breaks_read_lease_to_none(target):
    async def body():
        breaks = []
        got = asyncio.Event()
        kl = KernelLeases(asyncio.get_running_loop(),
                          lambda fd, t: (breaks.append((fd, t)), got.set()))
        kl.start()
        try:
            fd = lease_fd(target)
            assert kl.set_lease(fd, "read")
            reader = await spawn_opener(target, "r")  # readers do not break read leases
            await child_ms(reader)
            assert breaks == []
            child = await spawn_opener(target, "r+")
            await asyncio.wait_for(got.wait(), GENEROUS_S)
            assert breaks == [(fd, "none")]
            kl.release(fd)
            await child_ms(child)
            os.close(fd)
        finally:
            kl.close()
    run(body)


def test_read_break_escalates_to_none_when_a_writer_arrives(target):
    async def body():
        breaks = []
        changed = asyncio.Event()

        def on_break(fd, tgt):
            breaks.append(tgt)
            changed.set()

        kl = KernelLeases(asyncio.get_running_loop(), on_break)
        kl.start()
        try:
            fd = lease_fd(target)
            assert kl.set_lease(fd, "write")
            reader = await spawn_opener(target, "r")
            await asyncio.wait_for(changed.wait(), GENEROUS_S)
            changed.clear()
            writer = await spawn_opener(target, "r+")
            await asyncio.wait_for(changed.wait(), GENEROUS_S)
            assert breaks == ["read", "none"]
            # The waiting writer already counts as a writable open (the kernel takes
            # write access before breaking leases), so a read lease is impossible now.
            assert kl.downgrade(fd) is False
            assert kl.held(fd) == "write" and kl.breaking(fd) == "none"
            await asyncio.sleep(0.05)
            assert reader.returncode is None and writer.returncode is None
            assert breaks == ["read", "none"]
            kl.release(fd)
            await child_ms(reader)
            await child_ms(writer)
            os.close(fd)
        finally:
            kl.close()
    run(body)


def test_release_lets_the_breaker_go_long_before_lease_break_time(target):
    async def body():
        got = asyncio.Event()
        kl = KernelLeases(asyncio.get_running_loop(), lambda fd, t: got.set())
        kl.start()
        try:
            fd = lease_fd(target)
            assert kl.set_lease(fd, "write")
            t0 = time.monotonic()
            child = await spawn_opener(target, "r+")
            await asyncio.wait_for(got.wait(), GENEROUS_S)
            await asyncio.sleep(0.1)
            kl.release(fd)
            await child_ms(child)
            assert time.monotonic() - t0 < GENEROUS_S
            assert kl.held(fd) is None
            os.close(fd)
        finally:
            kl.close()
    run(body)


def test_own_second_open_breaks_own_lease(target):
    """The server's own second open of a leased file is a conflicting open like any
    other: with O_NONBLOCK it fails with EWOULDBLOCK and starts the break, which reaches
    on_break; open_when_unleased retries until the owner has downgraded."""
    async def body():
        breaks = []
        kl = None

        def on_break(fd, tgt):
            breaks.append(tgt)
            assert kl.downgrade(fd)

        kl = KernelLeases(asyncio.get_running_loop(), on_break)
        kl.start()
        try:
            fd = lease_fd(target)
            assert kl.set_lease(fd, "write")
            with pytest.raises(BlockingIOError) as ei:
                os.open(target, os.O_RDONLY | os.O_NONBLOCK)
            assert ei.value.errno == errno.EWOULDBLOCK
            assert kl.current(fd) == "read"  # the break started
            fd2 = await open_when_unleased(target, os.O_RDONLY, timeout_s=GENEROUS_S)
            assert breaks == ["read"]
            assert kl.held(fd) == "read"
            os.close(fd2)
            kl.release(fd)
            os.close(fd)
        finally:
            kl.close()
    run(body)


def test_open_when_unleased_times_out_without_blocking_the_loop(target, tmp_path):
    """Another process holds a write lease and never answers the break."""
    ready = tmp_path / "ready"
    holder_code = textwrap.dedent(f"""
        import fcntl, os, signal, time
        signal.signal(signal.SIGIO, signal.SIG_IGN)
        fd = os.open({target!r}, os.O_RDONLY)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        open({str(ready)!r}, "w").close()
        time.sleep(60)
    """)
    holder = subprocess.Popen([PY, "-c", holder_code])
    try:
        for _ in range(500):
            if ready.exists():
                break
            time.sleep(0.01)
        assert ready.exists(), "lease holder did not start"

        async def body():
            ticker = Ticker()
            ticker.start()
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await open_when_unleased(target, os.O_RDONLY, timeout_s=0.3)
            elapsed = time.monotonic() - t0
            await ticker.stop()
            assert 0.3 <= elapsed < 2.0
            assert ticker.ticks >= 20 and ticker.max_gap < 0.25
        run(body)
    finally:
        holder.kill()
        holder.wait(5)


# ----------------------------------------------------------------------------- overflow
def test_sigio_without_fd_triggers_a_scan_that_finds_the_breaking_lease(target):
    """A SIGIO (what the kernel sends when the realtime queue overflows) makes the
    adapter scan every lease with F_GETLEASE. Route this lease's break to plain SIGIO
    so that only the scan can find it."""
    async def body():
        breaks = []
        got = asyncio.Event()
        kl = KernelLeases(asyncio.get_running_loop(),
                          lambda fd, t: (breaks.append((fd, t)), got.set()))
        kl.start()
        try:
            fd = lease_fd(target)
            assert kl.set_lease(fd, "write")
            # A SIGIO with nothing breaking: scan, no report.
            os.kill(os.getpid(), signal.SIGIO)
            for _ in range(100):
                if kl.overflow_scans:
                    break
                await asyncio.sleep(0.01)
            assert kl.overflow_scans == 1 and breaks == []
            fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGIO)
            child = await spawn_opener(target, "r")
            await asyncio.wait_for(got.wait(), GENEROUS_S)
            assert breaks == [(fd, "read")]
            assert kl.overflow_scans == 2
            assert kl.downgrade(fd)
            await child_ms(child)
            kl.release(fd)
            os.close(fd)
        finally:
            kl.close()
    run(body)


OVERFLOW_HARNESS = textwrap.dedent("""
    # A fresh process with RLIMIT_SIGPENDING = 0: no realtime signal can be queued, so
    # the kernel falls back to plain SIGIO (fs/fcntl.c send_sigio_to_task).
    import asyncio, os, resource, sys, uvloop
    sys.path.insert(0, sys.argv[1])
    from smbd_py.oplocks.kernel import KernelLeases
    d, n = sys.argv[2], int(sys.argv[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_SIGPENDING)
    resource.setrlimit(resource.RLIMIT_SIGPENDING, (0, hard))

    async def main():
        loop = asyncio.get_running_loop()
        seen = {}
        done = asyncio.Event()
        def on_break(fd, tgt):
            seen[fd] = tgt
            kl.downgrade(fd)
            if len(seen) == n:
                done.set()
        kl = KernelLeases(loop, on_break)
        kl.start()
        fds = []
        for i in range(n):
            p = os.path.join(d, f"f{i}")
            open(p, "w").close()
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
            assert kl.set_lease(fd, "write")
            fds.append(fd)
        readers = [await asyncio.create_subprocess_exec(
            sys.executable, "-c", f"open({os.path.join(d, f'f{i}')!r}).read()")
            for i in range(n)]
        await asyncio.wait_for(done.wait(), 10)
        for r in readers:
            assert await asyncio.wait_for(r.wait(), 10) == 0
        assert set(seen.values()) == {"read"}, seen
        assert kl.overflow_scans >= 1
        kl.close()
        print("OK", len(seen), kl.overflow_scans)

    uvloop.run(main())
""")


def test_realtime_queue_overflow_falls_back_to_sigio_scan(tmp_path):
    n = 8
    script = tmp_path / "harness.py"
    script.write_text(OVERFLOW_HARNESS)
    r = subprocess.run([PY, str(script), REPO, str(tmp_path), str(n)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    ok, seen, scans = r.stdout.split()
    assert ok == "OK" and int(seen) == n and int(scans) >= 1


# ----------------------------------------------------------------------------- latency
def test_break_latency_when_handled_immediately(target, capsys):
    """Median time from a separate process's open() call to its return when the break
    is answered (downgrade) as soon as it arrives. Samba: about 0.7 ms."""
    runs = 20
    opener_code = textwrap.dedent("""
        import sys, time
        path = sys.argv[1]
        for line in sys.stdin:
            t = time.perf_counter()
            f = open(path, "r")
            dt = (time.perf_counter() - t) * 1e3
            f.close()
            print(dt, flush=True)
    """)

    async def body():
        kl = KernelLeases(asyncio.get_running_loop(), lambda fd, t: kl.downgrade(fd))
        kl.start()
        child = await asyncio.create_subprocess_exec(
            PY, "-c", opener_code, target,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        samples = []
        try:
            for _ in range(runs):
                fd = lease_fd(target)
                assert kl.set_lease(fd, "write")
                child.stdin.write(b"go\n")
                await child.stdin.drain()
                line = await asyncio.wait_for(child.stdout.readline(), GENEROUS_S)
                samples.append(float(line))
                assert kl.breaks_reported == len(samples)
                kl.release(fd)
                os.close(fd)
        finally:
            child.stdin.close()
            await asyncio.wait_for(child.wait(), GENEROUS_S)
            kl.close()
        return samples

    samples = run(body)
    med = statistics.median(samples)
    with capsys.disabled():
        print(f"\nkernel lease break, open() to return, handled immediately: "
              f"median {med:.3f} ms, min {min(samples):.3f}, max {max(samples):.3f} "
              f"over {runs} runs")
    assert med < 50, samples
