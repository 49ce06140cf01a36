"""Raw Linux bindings for kernel leases: fcntl command numbers, signalfd via ctypes,
the signalfd_siginfo layout, and /proc readers for signal masks and capabilities.

Nothing here keeps state; smbd_py.oplocks.kernel builds the adapter on top of it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import signal
import struct

# fcntl commands. F_LINUX_SPECIFIC_BASE is 1024 (include/uapi/linux/fcntl.h).
F_LINUX_SPECIFIC_BASE = 1024
F_SETLEASE = getattr(fcntl, "F_SETLEASE", F_LINUX_SPECIFIC_BASE + 0)
F_GETLEASE = getattr(fcntl, "F_GETLEASE", F_LINUX_SPECIFIC_BASE + 1)
F_SETSIG = getattr(fcntl, "F_SETSIG", 10)
F_GETSIG = getattr(fcntl, "F_GETSIG", 11)
# Linux 6.19 userspace delegations (include/uapi/linux/fcntl.h of 6.19, commit
# "fcntl: expose F_SETDELEG/F_GETDELEG"): F_LINUX_SPECIFIC_BASE + 15 / + 16, with
#   struct delegation { __u32 d_flags; __u16 d_type; __u16 __pad; }   (8 bytes)
# Kernels without it reject the unknown command with EINVAL.
F_GETDELEG = F_LINUX_SPECIFIC_BASE + 15
F_SETDELEG = F_LINUX_SPECIFIC_BASE + 16
DELEGATION = struct.Struct("=IHH")

F_RDLCK = fcntl.F_RDLCK  # 0
F_WRLCK = fcntl.F_WRLCK  # 1
F_UNLCK = fcntl.F_UNLCK  # 2

# signalfd4 flags are the open(2) flags of the same name (linux/signalfd.h).
SFD_NONBLOCK = os.O_NONBLOCK
SFD_CLOEXEC = os.O_CLOEXEC

# struct signalfd_siginfo (linux/signalfd.h): 128 bytes, we read the first 24.
#   u32 ssi_signo @0, s32 ssi_errno @4, s32 ssi_code @8, u32 ssi_pid @12,
#   u32 ssi_uid @16, s32 ssi_fd @20
SIGNALFD_SIGINFO_SIZE = 128
SIGNALFD_SIGINFO_HEAD = struct.Struct("=IiiIIi")

# si_code values that matter here (asm-generic/siginfo.h).
POLL_MSG = 3  # lease_break_callback -> kill_fasync(..., SIGIO, POLL_MSG)
SI_KERNEL = 0x80  # queue-overflow fallback: plain SIGIO via SEND_SIG_PRIV
SI_USER = 0  # kill(2)/raise(3)

# CAP_LEASE is capability number 28 (linux/capability.h).
CAP_LEASE = 28

# glibc's sigset_t is 1024 bits; the kernel reads only the first _NSIG/8 = 8 bytes.
_SIGSET_BYTES = 128


class _Sigset(ctypes.Structure):
    _fields_ = [("val", ctypes.c_ulong * (_SIGSET_BYTES // ctypes.sizeof(ctypes.c_ulong)))]


def _make_sigset(signals) -> _Sigset:
    mask = _Sigset()
    bits = ctypes.sizeof(ctypes.c_ulong) * 8
    for sig in signals:
        n = int(sig) - 1
        mask.val[n // bits] |= 1 << (n % bits)
    return mask


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_signalfd = _libc.signalfd
_signalfd.argtypes = [ctypes.c_int, ctypes.POINTER(_Sigset), ctypes.c_int]
_signalfd.restype = ctypes.c_int


def signalfd(signals, flags: int = SFD_NONBLOCK | SFD_CLOEXEC, fd: int = -1) -> int:
    """signalfd(2): a descriptor that reads the given (blocked) signals."""
    mask = _make_sigset(signals)
    res = _signalfd(fd, ctypes.byref(mask), flags)
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"signalfd: {os.strerror(err)}")
    return res


def _status_fields(path: str) -> dict[str, str]:
    out = {}
    with open(path, "r") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _mask_has(hexmask: str, sig: int) -> bool:
    return bool(int(hexmask, 16) >> (int(sig) - 1) & 1)


def process_signal_usage() -> tuple[int, int, int]:
    """(SigBlk of this thread, SigIgn, SigCgt) from /proc/thread-self/status."""
    st = _status_fields("/proc/thread-self/status")
    return int(st["SigBlk"], 16), int(st["SigIgn"], 16), int(st["SigCgt"], 16)


def threads_not_blocking(signals) -> list[int]:
    """Thread ids of this process that do NOT block every one of `signals`.

    A process-directed signal goes to any thread that leaves it unblocked; such a
    thread would take (and for a realtime signal with default disposition: die of)
    a lease-break signal that signalfd must see. Threads vanishing mid-scan are skipped,
    and so are exiting ones (zombie or dead): the kernel delivers no signal to them.
    """
    bad = []
    for tid in os.listdir("/proc/self/task"):
        try:
            st = _status_fields(f"/proc/self/task/{tid}/status")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if st.get("State", "")[:1] in ("Z", "X"):
            continue
        if not all(_mask_has(st["SigBlk"], s) for s in signals):
            bad.append(int(tid))
    return bad


def has_cap_lease() -> bool:
    st = _status_fields("/proc/self/status")
    return bool(int(st.get("CapEff", "0"), 16) >> CAP_LEASE & 1)


def pick_realtime_signal() -> int:
    """The first SIGRTMIN+k (k >= 1) that nothing in this process catches, ignores or
    blocks. SIGRTMIN itself is skipped: threading libraries like to take it."""
    blocked, ignored, caught = process_signal_usage()
    used = blocked | ignored | caught
    for sig in range(signal.SIGRTMIN + 1, signal.SIGRTMAX + 1):
        if signal.getsignal(sig) != signal.SIG_DFL:
            continue
        if used >> (sig - 1) & 1:
            continue
        return sig
    raise OSError(errno.EBUSY, "no free realtime signal for kernel lease breaks")
