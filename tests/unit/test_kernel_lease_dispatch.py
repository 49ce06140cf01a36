"""KernelLeases' break bookkeeping with a fake fcntl: which signalfd records turn into
on_break calls, exactly once per break, escalation, stale and overflow records.
The real-kernel behaviour is tested in tests/test_kernel_lease_adapter.py."""

from __future__ import annotations

import errno
import signal

import pytest

from smbd_py.oplocks import _linux, kernel
from smbd_py.oplocks.kernel import KernelLeases, LeaseSupport, NullKernelLeases

RTSIG = signal.SIGRTMIN + 5


class FakeFcntl:
    """Just enough of fcntl(2) for leases: state per fd, settable break targets."""

    def __init__(self) -> None:
        self.lease: dict[int, int] = {}  # what F_GETLEASE answers
        self.sig: dict[int, int] = {}
        self.refuse: dict[int, int] = {}  # fd -> errno for the next F_SETLEASE
        self.closed: set[int] = set()

    def fcntl(self, fd, cmd, arg=0):
        if fd in self.closed:
            raise OSError(errno.EBADF, "closed")
        if cmd == _linux.F_SETSIG:
            self.sig[fd] = arg
            return 0
        if cmd == _linux.F_SETLEASE:
            if fd in self.refuse:
                raise OSError(self.refuse.pop(fd), "refused")
            self.lease[fd] = arg
            return 0
        if cmd == _linux.F_GETLEASE:
            return self.lease.get(fd, _linux.F_UNLCK)
        raise AssertionError(f"unexpected fcntl cmd {cmd}")


class FakeLoop:
    def __init__(self) -> None:
        self.soon = []

    def call_soon(self, fn, *args):
        self.soon.append((fn, args))

    def run_soon(self):
        todo, self.soon = self.soon, []
        for fn, args in todo:
            fn(*args)


def record(signo: int, fd: int = 0, code: int = _linux.POLL_MSG) -> bytes:
    buf = bytearray(_linux.SIGNALFD_SIGINFO_SIZE)
    _linux.SIGNALFD_SIGINFO_HEAD.pack_into(buf, 0, signo, 0, code, 1, 0, fd)
    return bytes(buf)


@pytest.fixture
def fake(monkeypatch):
    f = FakeFcntl()
    monkeypatch.setattr(kernel, "fcntl", f)
    return f


@pytest.fixture
def kl(fake):
    breaks = []
    k = KernelLeases(FakeLoop(), lambda fd, t: breaks.append((fd, t)))
    # Pretend start() ran: the dispatch logic does not touch the signalfd.
    k._signo = RTSIG
    k._sfd = 1_000_000
    k.breaks = breaks
    return k


def test_set_lease_sets_signal_then_lease(kl, fake):
    assert kl.set_lease(7, "write")
    assert fake.sig[7] == RTSIG and fake.lease[7] == _linux.F_WRLCK
    assert kl.held(7) == "write"


@pytest.mark.parametrize("err", [errno.EAGAIN, errno.EACCES, errno.EINVAL, errno.ENOLCK])
def test_refusals_are_false_not_errors(kl, fake, err):
    fake.refuse[7] = err
    assert kl.set_lease(7, "read") is False
    assert kl.held(7) is None


def test_unexpected_errors_raise(kl, fake):
    fake.refuse[7] = errno.EPERM
    with pytest.raises(PermissionError):
        kl.set_lease(7, "read")


def test_set_lease_before_start_is_an_error(fake):
    with pytest.raises(RuntimeError):
        KernelLeases(FakeLoop()).set_lease(3, "read")


def test_break_reported_once_then_escalation(kl, fake):
    kl.set_lease(7, "write")
    fake.lease[7] = _linux.F_RDLCK  # kernel: breaking to read
    kl._handle_records(record(RTSIG, 7) + record(RTSIG, 7))
    assert kl.breaks == [(7, "read")]
    fake.lease[7] = _linux.F_UNLCK  # a writer arrived
    kl._handle_records(record(RTSIG, 7))
    kl._handle_records(record(RTSIG, 7))
    assert kl.breaks == [(7, "read"), (7, "none")]
    assert kl.breaking(7) == "none"


def test_stale_and_foreign_records_are_ignored(kl, fake):
    kl.set_lease(7, "write")
    kl._handle_records(record(RTSIG, 7))  # not breaking (F_GETLEASE says write)
    kl._handle_records(record(RTSIG, 8))  # not ours
    kl._handle_records(record(signal.SIGRTMIN + 9, 7))  # another signal
    assert kl.breaks == []


def test_read_lease_breaks_only_to_none(kl, fake):
    kl.set_lease(7, "read")
    kl._handle_records(record(RTSIG, 7))
    assert kl.breaks == []
    fake.lease[7] = _linux.F_UNLCK
    kl._handle_records(record(RTSIG, 7))
    assert kl.breaks == [(7, "none")]


def test_sigio_scans_every_lease(kl, fake):
    for fd in (5, 6, 7):
        kl.set_lease(fd, "write")
    fake.lease[5] = _linux.F_RDLCK
    fake.lease[7] = _linux.F_UNLCK
    kl._handle_records(record(signal.SIGIO, 0, _linux.SI_KERNEL))
    assert sorted(kl.breaks) == [(5, "read"), (7, "none")]
    assert kl.overflow_scans == 1
    # A realtime record for an already reported break, in the same batch: no repeat.
    kl._handle_records(record(RTSIG, 5) + record(signal.SIGIO, 0, _linux.SI_KERNEL))
    assert len(kl.breaks) == 2 and kl.overflow_scans == 2


def test_signalfd_reads_single_records_and_batches_alike(kl, fake, monkeypatch):
    """_on_signalfd_readable takes one record (the usual read) without _handle_records;
    whatever a read returns, the outcome is the same as _handle_records'."""
    import types
    reads = [record(RTSIG, 5), record(signal.SIGRTMIN + 9, 6),
             record(RTSIG, 6) + record(RTSIG, 7), record(signal.SIGIO, 0, _linux.SI_KERNEL)]

    def read(fd, n):
        assert fd == kl._sfd and n >= _linux.SIGNALFD_SIGINFO_SIZE
        if not reads:
            raise BlockingIOError
        return reads.pop(0)

    monkeypatch.setattr(kernel, "os", types.SimpleNamespace(read=read))
    for fd in (5, 6, 7, 8):
        kl.set_lease(fd, "write")
    fake.lease[5] = _linux.F_UNLCK
    fake.lease[6] = _linux.F_RDLCK
    fake.lease[8] = _linux.F_RDLCK       # found only by the SIGIO scan
    kl._on_signalfd_readable()
    assert reads == []
    assert kl.breaks == [(5, "none"), (6, "read"), (8, "read")]
    assert kl.overflow_scans == 1


def test_closed_fd_drops_the_record(kl, fake):
    kl.set_lease(7, "write")
    fake.closed.add(7)
    kl._handle_records(record(RTSIG, 7))
    assert kl.held(7) is None and kl.breaks == []


def test_failing_owner_does_not_stop_dispatch(kl, fake, caplog):
    def bad(fd, t):
        kl.breaks.append((fd, t))
        raise ValueError("owner bug")
    kl.on_break = bad
    kl.set_lease(5, "write")
    kl.set_lease(6, "write")
    fake.lease[5] = fake.lease[6] = _linux.F_UNLCK
    kl._handle_records(record(RTSIG, 5) + record(RTSIG, 6))
    assert kl.breaks == [(5, "none"), (6, "none")]
    assert "owner bug" in caplog.text


def test_no_owner_releases_at_once(kl, fake):
    kl.on_break = None
    kl.set_lease(7, "write")
    fake.lease[7] = _linux.F_RDLCK
    kl._handle_records(record(RTSIG, 7))
    assert kl.held(7) is None and fake.lease[7] == _linux.F_UNLCK


def test_downgrade_rechecks_and_keeps_a_reported_none(kl, fake):
    kl.set_lease(7, "write")
    fake.lease[7] = _linux.F_RDLCK
    kl._handle_records(record(RTSIG, 7))
    assert kl.downgrade(7)
    assert kl.held(7) == "read" and kl.breaking(7) is None
    kl._loop.run_soon()
    assert kl.breaks == [(7, "read")]
    # Later a writer breaks the read lease: a new break.
    fake.lease[7] = _linux.F_UNLCK
    kl._handle_records(record(RTSIG, 7))
    assert kl.breaks == [(7, "read"), (7, "none")]


def test_release_forgets(kl, fake):
    kl.set_lease(7, "write")
    kl.release(7)
    assert kl.held(7) is None and fake.lease[7] == _linux.F_UNLCK
    fake.lease[7] = _linux.F_UNLCK
    kl._handle_records(record(RTSIG, 7))
    assert kl.breaks == []


def test_null_adapter_has_the_same_interface():
    public = {n for n in dir(KernelLeases) if not n.startswith("_")}
    assert public <= set(dir(NullKernelLeases))
    n = NullKernelLeases(None, lambda fd, t: None)
    n.start()
    assert n.set_lease(3, "write") is False and n.current(3) == "none"
    n.close()


def test_describe_lines():
    on = LeaseSupport(True, True, True, 45, True, False, "/srv", "")
    assert on.describe() == ("kernel leases: on (read+write), lease-break-time 45 s, "
                             "delegations absent")
    off = LeaseSupport(False, False, False, 45, True, False, "/srv",
                       "/proc/sys/fs/leases-enable is 0")
    assert off.describe().startswith("kernel leases: off: /proc/sys/fs/leases-enable is 0; ")
    ro = LeaseSupport(True, True, False, 10, True, True, "/srv", "write lease refused")
    assert ro.describe().startswith("kernel leases: on (read), lease-break-time 10 s, "
                                    "delegations present; write lease refused")


def test_probe_says_off_when_leases_are_disabled(tmp_path, monkeypatch):
    # The sysctl itself is system-wide and shared: point the probe at a copy.
    sysctl = tmp_path / "leases-enable"
    sysctl.write_text("0\n")
    monkeypatch.setattr(kernel, "_PROC_LEASES_ENABLE", str(sysctl))
    s = kernel.probe(str(tmp_path))
    assert not s.on and not s.leases_enabled
    assert s.describe().startswith(f"kernel leases: off: {sysctl} is 0; ")
