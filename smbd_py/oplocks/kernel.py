"""The adapter between the lease table and Linux kernel leases (fcntl F_SETLEASE).

Owns: taking, downgrading and releasing kernel leases on lease fds, learning of breaks
through a signalfd read by the event loop (never blocking it), the start-up probe of
lease support, and the non-blocking open that retries while someone else's lease breaks.

How a break reaches the server
------------------------------
``set_lease`` does F_SETSIG(fd, rtsig) and F_SETLEASE. When any open()/truncate() -
another process, another container, or this server's own second open - conflicts, the
kernel queues ``rtsig`` to this process with ``si_fd`` = the leased fd. The signal is
blocked in every thread and read from a signalfd registered with ``loop.add_reader``;
for each record the adapter asks F_GETLEASE, which during a break returns the *target*
(F_RDLCK = downgrade, F_UNLCK = release), compares it with what it holds, and calls
``on_break(fd, 'read' | 'none')`` once per break (again if a read break escalates to
none). If the realtime queue overflows (RLIMIT_SIGPENDING) the kernel sends a plain SIGIO
without an fd; the adapter then scans every lease it holds.

The owner answers with ``downgrade(fd)`` or ``release(fd)`` when the SMB client acks,
or at its own timeout - always before /proc/sys/fs/lease-break-time, after which the
kernel downgrades/removes the lease by force and the breaker proceeds anyway.

Rules the caller must follow (the kernel's, see fcntl(2) and fs/locks.c)
--------------------------------------------------------------------------
* Construct and ``start()`` (or call ``reserve_lease_signal()``) on the main thread at
  server start, BEFORE any executor or other thread exists: the signals must be blocked
  in every thread, and threads inherit the mask of their creator. ``start()`` checks
  /proc/self/task/*/status and refuses to run otherwise.
* A read lease needs an O_RDONLY fd and is refused while ANY writable open of the inode
  exists (the caller's own included).
* A write lease is accepted on an fd of any access mode, but only while that fd is the
  inode's ONLY open (O_PATH opens do not count). ``downgrade()`` of a write lease held on
  a writable fd fails (EAGAIN: the fd itself is a writable open): use an O_RDONLY lease
  fd if you want to downgrade, or release instead. Downgrade also fails once a writer
  is waiting (break target 'none'): the kernel counts its write access before it breaks.
* I/O through the leased fd itself (write, ftruncate) does not break the lease; a second
  open() of the same file by this server does - on O_NONBLOCK it fails with EWOULDBLOCK
  and the break starts, reported through ``on_break`` like any other. Retry such opens
  with ``open_when_unleased``.
* Call ``release(fd)`` before closing a leased fd (closing drops the kernel lease, but
  the adapter's record would go stale and a reused fd number would confuse it).
* Processes spawned while the adapter runs inherit the blocked mask (and SIG_IGN for the
  realtime signal); libuv/uvloop subprocesses reset it, Python's subprocess does not.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import logging
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, Literal, Optional

from smbd_py.oplocks import _linux

log = logging.getLogger(__name__)

LeaseKind = Literal["read", "write"]
BreakTarget = Literal["read", "none"]
BreakCallback = Callable[[int, str], None]

_KIND_TO_LOCK = {"read": _linux.F_RDLCK, "write": _linux.F_WRLCK, "none": _linux.F_UNLCK}
_LOCK_TO_KIND = {_linux.F_RDLCK: "read", _linux.F_WRLCK: "write", _linux.F_UNLCK: "none"}

# The break path's constants as module globals (one lookup each, no attribute chain).
_F_GETLEASE = _linux.F_GETLEASE
_F_SETLEASE = _linux.F_SETLEASE
_F_RDLCK = _linux.F_RDLCK
_F_UNLCK = _linux.F_UNLCK
_SIGINFO_SIZE = _linux.SIGNALFD_SIGINFO_SIZE
_SIGINFO_HEAD = _linux.SIGNALFD_SIGINFO_HEAD
_READ_SIZE = _SIGINFO_SIZE * 64

# Refusals are normal outcomes of F_SETLEASE: the caller grants less.
#   EAGAIN conflicting open, EACCES not owner and no CAP_LEASE, EINVAL filesystem or
#   file type without leases (or leases-enable = 0), ENOLCK lock table exhausted.
_REFUSALS = frozenset({errno.EAGAIN, errno.EACCES, errno.EINVAL, errno.ENOLCK})

_PROC_LEASES_ENABLE = "/proc/sys/fs/leases-enable"
_PROC_LEASE_BREAK_TIME = "/proc/sys/fs/lease-break-time"

# Realtime signals an earlier (closed) KernelLeases of this process took: we left them
# SIG_IGN, so they look "used" to the picker but are ours to reuse.
_retired_signals: set[int] = set()
_active_signals: set[int] = set()
# Signals reserve_lease_signal() blocked ahead of start(); start() takes these first.
_reserved_signals: set[int] = set()
_signal_lock = threading.Lock()


def reserve_lease_signal(signo: Optional[int] = None) -> int:
    """Pick (or take `signo`) a realtime signal for lease breaks and block it and SIGIO
    in the calling thread. Call it on the main thread before any other thread starts,
    so that every later thread inherits the mask. Returns the signal number."""
    with _signal_lock:
        if signo is None:
            free = sorted((_reserved_signals | _retired_signals) - _active_signals)
            signo = free[0] if free else _linux.pick_realtime_signal()
        if not signal.SIGRTMIN <= signo <= signal.SIGRTMAX:
            raise ValueError(f"lease signal must be a realtime signal, got {signo}")
        if signo in _active_signals:
            raise RuntimeError(f"signal {signo} is already used by a running KernelLeases")
        signal.pthread_sigmask(signal.SIG_BLOCK, {signo, signal.SIGIO})
        _reserved_signals.add(signo)
        return signo


def _let_breaker_run() -> None:
    """A breaker blocked in open()/truncate() was just woken by our F_SETLEASE. The
    scheduler often queues a task woken this way on the waker's CPU (wake-affine), where
    it waited for the rest of our ack handling (inotify, the ack's response): 22 us from
    our F_UNLCK to its open() returning, 86 us at p90, measured; 6 us (p90 10) with the
    yield. Only called when a break was pending, i.e. someone is waiting."""
    os.sched_yield()


@dataclass(slots=True)
class _Held:
    kind: str  # 'read' | 'write': what we hold
    reported: Optional[str] = None  # the strongest break target already reported


class KernelLeases:
    """Kernel leases for one server process. Methods run on the loop thread only."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_break: Optional[BreakCallback] = None,
        *,
        signo: Optional[int] = None,
    ) -> None:
        self._loop = loop
        self.on_break = on_break
        self._want_signo = signo
        self._signo: Optional[int] = None
        self._sfd = -1
        self._held: dict[int, _Held] = {}
        self._old_mask: Optional[set] = None
        self._old_sigio = None
        # Counters, for tests and status output.
        self.breaks_reported = 0
        self.overflow_scans = 0

    # ----------------------------------------------------------------- lifecycle
    @property
    def signo(self) -> Optional[int]:
        return self._signo

    @property
    def running(self) -> bool:
        return self._sfd >= 0

    def start(self) -> None:
        if self._sfd >= 0:
            return
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        signo = reserve_lease_signal(self._want_signo)
        wanted = [signo, signal.SIGIO]
        bad = _linux.threads_not_blocking(wanted)
        if bad:
            # Undo our part of the mask so a refused start leaves nothing behind.
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
            raise RuntimeError(
                f"kernel leases: threads {bad} do not block signals {wanted}; create "
                "and start KernelLeases (or call reserve_lease_signal()) on the main "
                "thread before any executor or other thread starts"
            )
        if threading.current_thread() is threading.main_thread():
            # Safety net: a stray unblocked thread then drops the signal instead of
            # dying of it (the default action of a realtime signal is to terminate).
            # Blocked signals are still queued (kernel sig_ignored()) for the signalfd.
            signal.signal(signo, signal.SIG_IGN)
        self._sfd = _linux.signalfd(wanted)
        self._signo = signo
        with _signal_lock:
            _active_signals.add(signo)
            _retired_signals.discard(signo)
        self._loop.add_reader(self._sfd, self._on_signalfd_readable)

    def close(self) -> None:
        """Release every lease, stop reading, close the signalfd, restore the mask of the
        calling thread (call from the thread that called start())."""
        if self._sfd < 0:
            return
        for fd in list(self._held):
            self.release(fd)
        self._loop.remove_reader(self._sfd)
        # No new break signal can be queued for a released lease (lm_break is called
        # under the same flc_lock F_UNLCK takes), so draining now leaves none pending.
        self._drain(dispatch=False)
        os.close(self._sfd)
        self._sfd = -1
        if self._old_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
        with _signal_lock:
            _active_signals.discard(self._signo)
            _retired_signals.add(self._signo)

    # ----------------------------------------------------------------- leases
    def set_lease(self, fd: int, kind: LeaseKind) -> bool:
        """Take (or change to) a read or write lease on `fd`. False when refused."""
        if self._sfd < 0:
            raise RuntimeError("KernelLeases.start() first: a lease without a signal "
                               "path would make every breaker wait lease-break-time")
        lock = _KIND_TO_LOCK[kind]
        if lock == _linux.F_UNLCK:
            raise ValueError(kind)
        fcntl.fcntl(fd, _linux.F_SETSIG, self._signo)
        try:
            fcntl.fcntl(fd, _linux.F_SETLEASE, lock)
        except OSError as e:
            if e.errno in _REFUSALS:
                return False
            raise
        self._held[fd] = _Held(kind)
        return True

    def downgrade(self, fd: int) -> bool:
        """Write lease -> read lease. False when refused (e.g. the lease fd is writable);
        the caller should then release(). A still pending stronger break (a writer came
        while we were breaking to read) is reported again through on_break."""
        held = self._held.get(fd)
        try:
            fcntl.fcntl(fd, _linux.F_SETLEASE, _linux.F_RDLCK)
        except OSError as e:
            if e.errno in _REFUSALS:
                return False
            raise
        reported = held.reported if held is not None else None
        self._held[fd] = _Held("read", "none" if reported == "none" else None)
        self._loop.call_soon(self._check_fd, fd)
        if reported is not None:
            _let_breaker_run()
        return True

    def release(self, fd: int) -> None:
        """Drop the lease on `fd` (F_UNLCK). The breaker's open() proceeds at once."""
        held = self._held.pop(fd, None)
        try:
            fcntl.fcntl(fd, _F_SETLEASE, _F_UNLCK)
        except OSError as e:
            # EBADF: already closed (the kernel dropped the lease with it). EAGAIN/
            # EINVAL cannot mean "still held" for F_UNLCK.
            if e.errno not in (errno.EBADF, errno.EAGAIN, errno.EINVAL):
                raise
        if held is not None and held.reported is not None:
            _let_breaker_run()

    def current(self, fd: int) -> str:
        """What the kernel says: 'read' | 'write' | 'none'. During a break this is the
        break target, not what is still held."""
        return _LOCK_TO_KIND[fcntl.fcntl(fd, _linux.F_GETLEASE)]

    def held(self, fd: int) -> Optional[str]:
        """Our record of the lease on `fd` ('read' | 'write'), None if none."""
        h = self._held.get(fd)
        return h.kind if h is not None else None

    def breaking(self, fd: int) -> Optional[str]:
        """The break target already reported for `fd` and not yet answered, if any."""
        h = self._held.get(fd)
        return h.reported if h is not None else None

    def leased_fds(self) -> list[int]:
        return list(self._held)

    # ----------------------------------------------------------------- breaks
    def _on_signalfd_readable(self) -> None:
        self._drain(dispatch=True)

    def _drain(self, dispatch: bool) -> None:
        sfd = self._sfd
        for _ in range(1024):  # bounded: the queue is finite, but never spin forever
            try:
                data = os.read(sfd, _READ_SIZE)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            if not data:
                return
            if not dispatch:
                continue
            if len(data) == _SIGINFO_SIZE:
                # A local open(2) is blocked until the break reaches the client: one
                # record (the usual case) goes straight to _check_fd.
                signo, _errno, _code, _pid, _uid, fd = _SIGINFO_HEAD.unpack_from(data)
                if signo == self._signo:
                    self._check_fd(fd)
                    continue
            self._handle_records(data)

    def _handle_records(self, data: bytes) -> None:
        size = _SIGINFO_SIZE
        head = _SIGINFO_HEAD
        scan = False
        fds: list[int] = []
        for off in range(0, len(data) - size + 1, size):
            signo, _errno, code, _pid, _uid, fd = head.unpack_from(data, off)
            if signo == self._signo:
                fds.append(fd)
            elif signo == signal.SIGIO:
                # Realtime queue overflow (si_code SI_KERNEL, no fd) or a SIGIO from
                # elsewhere: either way only a scan can tell which lease is breaking.
                scan = True
        for fd in fds:
            self._check_fd(fd)
        if scan:
            self.overflow_scans += 1
            for fd in list(self._held):
                self._check_fd(fd)

    def _check_fd(self, fd: int) -> None:
        held = self._held.get(fd)
        if held is None:
            return  # stale signal for a lease we no longer hold
        try:
            lock = fcntl.fcntl(fd, _F_GETLEASE)
        except OSError as e:
            if e.errno == errno.EBADF:
                self._held.pop(fd, None)
                return
            raise
        # During a break F_GETLEASE answers the target. Compared as plain values (this
        # runs while a local open(2) waits): F_WRLCK is no break at all, F_RDLCK breaks
        # only a write lease, F_UNLCK breaks either.
        if lock == _F_RDLCK:
            if held.kind == "read":
                return  # not breaking (signal from an earlier lease on this fd)
            target = "read"
        elif lock == _F_UNLCK:
            target = "none"
        else:
            return
        reported = held.reported
        if reported is not None and (reported == "none" or target == "read"):
            return  # this break was already reported
        held.reported = target
        self.breaks_reported += 1
        cb = self.on_break
        if cb is None:
            log.warning("kernel lease break on fd %d to %s with no on_break owner: "
                        "releasing", fd, target)
            self.release(fd)
            return
        try:
            cb(fd, target)
        except Exception:
            log.exception("on_break(%d, %s) failed", fd, target)


class NullKernelLeases:
    """The same interface where kernel leases are off: every lease is refused."""

    on_break: Optional[BreakCallback] = None
    signo = None
    running = False
    breaks_reported = 0
    overflow_scans = 0

    def __init__(self, loop=None, on_break: Optional[BreakCallback] = None, **_kw) -> None:
        self.on_break = on_break

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def set_lease(self, fd: int, kind: LeaseKind) -> bool:
        return False

    def downgrade(self, fd: int) -> bool:
        return False

    def release(self, fd: int) -> None:
        pass

    def current(self, fd: int) -> str:
        return "none"

    def held(self, fd: int) -> Optional[str]:
        return None

    def breaking(self, fd: int) -> Optional[str]:
        return None

    def leased_fds(self) -> list[int]:
        return []


# --------------------------------------------------------------------- delegations
def delegations_supported(fd: int) -> bool:
    """Whether this kernel knows F_GETDELEG (Linux 6.19+ userspace delegations).
    Kernels without it reject the unknown fcntl command with EINVAL."""
    buf = _linux.DELEGATION.pack(0, _linux.F_UNLCK, 0)
    try:
        fcntl.fcntl(fd, _linux.F_GETDELEG, buf)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        raise
    return True


# --------------------------------------------------------------------- probe
@dataclass(frozen=True)
class LeaseSupport:
    leases_enabled: bool
    read_ok: bool
    write_ok: bool
    lease_break_time_s: Optional[int]
    cap_lease: bool
    delegations: bool
    directory: str
    reason: str

    @property
    def on(self) -> bool:
        return self.read_ok or self.write_ok

    def describe(self) -> str:
        if not self.on:
            return (f"kernel leases: off: {self.reason}; oplocks and leases are not "
                    "backed by the kernel, so local programs, NFS and other containers "
                    "will not break SMB client caches")
        kinds = "+".join(k for k, ok in (("read", self.read_ok), ("write", self.write_ok)) if ok)
        line = (f"kernel leases: on ({kinds}), lease-break-time "
                f"{self.lease_break_time_s} s, delegations "
                f"{'present' if self.delegations else 'absent'}")
        if self.reason:
            line += f"; {self.reason}"
        return line


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def probe(directory: str) -> LeaseSupport:
    """Detect at start-up whether kernel leases work for files under `directory`: the
    sysctl, a trial read and write lease on a temp file created there (the filesystem
    decides: NFS needs a delegation, some FUSE/overlay setups refuse), CAP_LEASE, the
    lease-break-time, and F_GETDELEG. Blocking but short; call it before serving."""
    enabled = _read_int(_PROC_LEASES_ENABLE)
    break_time = _read_int(_PROC_LEASE_BREAK_TIME)
    cap = _linux.has_cap_lease()
    notes = []
    if not cap:
        notes.append(f"no CAP_LEASE: only files owned by uid {os.geteuid()} can be leased")
    if enabled == 0:
        return LeaseSupport(False, False, False, break_time, cap, False, directory,
                            f"{_PROC_LEASES_ENABLE} is 0")
    read_ok = write_ok = deleg = False
    errors = []
    try:
        tfd, tpath = tempfile.mkstemp(prefix=".smbd_py-lease-probe-", dir=directory)
    except OSError as e:
        return LeaseSupport(enabled is not None, False, False, break_time, cap, False,
                            directory, f"cannot create a trial file in {directory}: "
                            f"{e.strerror}")
    try:
        os.close(tfd)
        fd = os.open(tpath, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            for kind, lock in (("read", _linux.F_RDLCK), ("write", _linux.F_WRLCK)):
                try:
                    fcntl.fcntl(fd, _linux.F_SETLEASE, lock)
                except OSError as e:
                    errors.append(f"{kind} lease refused on {directory}: "
                                  f"{errno.errorcode.get(e.errno, e.errno)} ({e.strerror})")
                    continue
                fcntl.fcntl(fd, _linux.F_SETLEASE, _linux.F_UNLCK)
                if kind == "read":
                    read_ok = True
                else:
                    write_ok = True
            deleg = delegations_supported(fd)
        finally:
            os.close(fd)
    finally:
        try:
            os.unlink(tpath)
        except OSError:
            pass
    return LeaseSupport(enabled is not None, read_ok, write_ok, break_time, cap, deleg,
                        directory, "; ".join(errors + notes))


# --------------------------------------------------------------------- opening
async def open_when_unleased(
    path: str,
    flags: int,
    *,
    timeout_s: float,
    mode: int = 0o666,
    dir_fd: Optional[int] = None,
    executor=None,
) -> int:
    """open(2) that never blocks the loop on someone else's lease.

    Opens with O_NONBLOCK: if another holder's lease (another process's, or this
    server's own on another fd) conflicts, the kernel starts the break and fails at
    once with EWOULDBLOCK; we retry after 1 ms, doubling to 50 ms, until the holder has
    downgraded/released or `timeout_s` passed (TimeoutError; the break goes on in the
    kernel, which forces it after lease-break-time). The loop keeps running meanwhile,
    so a break of this server's own lease is handled by on_break between retries.

    The syscall runs on the loop thread (it cannot wait for a lease with O_NONBLOCK);
    pass an `executor` to run it elsewhere for filesystems where open itself is slow.
    The returned fd keeps O_NONBLOCK (no effect on regular-file I/O).
    """
    loop = asyncio.get_running_loop()
    call = functools.partial(os.open, path, flags | os.O_NONBLOCK, mode, dir_fd=dir_fd)
    # time.monotonic, not loop.time(): uvloop's clock is cached per loop iteration
    # in whole milliseconds and would end the wait early.
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while True:
        try:
            if executor is None:
                return call()
            return await loop.run_in_executor(executor, call)
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"open({path!r}): a kernel lease on the file is still breaking "
                    f"after {timeout_s} s") from None
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)
