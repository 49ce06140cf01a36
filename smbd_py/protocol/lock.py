"""LOCK (MS-SMB2 3.3.5.14, MS-FSA 2.1.5.7): byte-range locks, shared and exclusive, unlock,
fail-immediately and blocking (async, cancellable), checked against READ/WRITE, and mirrored
into Linux OFD locks so that local programs see them and theirs are honoured."""
from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import struct

from ..wire.status import NtStatus, SmbError
from .create import lookup_open

log = logging.getLogger("smbd_py.lock")

LOCK_REQ = struct.Struct("<HHI16s")      # 24 bytes, then LockCount elements
LOCK_ELEMENT = struct.Struct("<QQII")
LOCKFLAG_SHARED = 0x01
LOCKFLAG_EXCLUSIVE = 0x02
LOCKFLAG_UNLOCK = 0x04
LOCKFLAG_FAIL_IMMEDIATELY = 0x10
FLOCK = struct.Struct("hh4xqqi4x")
F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
OFF_MAX = 0x7FFFFFFFFFFFFFFF
MAX_LOCKS_PER_REQUEST = 64


class ByteRangeLock:
    __slots__ = ("open", "offset", "length", "exclusive")

    def __init__(self, op, offset: int, length: int, exclusive: bool) -> None:
        self.open = op
        self.offset = offset
        self.length = length
        self.exclusive = exclusive

    def overlaps(self, offset: int, length: int) -> bool:
        if not length or not self.length:
            return False
        return offset < self.offset + self.length and self.offset < offset + length


def _conflicts(fs, op, offset: int, length: int, exclusive: bool) -> bool:
    for lk in fs.locks:
        if not lk.overlaps(offset, length):
            continue
        if lk.exclusive:
            # A shared lock may stack on the same open's exclusive lock (Windows, Samba).
            if not exclusive and lk.open is op:
                continue
            return True
        if exclusive:
            return True
    return False


def check_io_conflict(op, offset: int, length: int, write: bool) -> None:
    """MS-FSA 2.1.4.10: READ conflicts with others' exclusive locks; WRITE with any lock
    except this open's own exclusive ones."""
    for lk in op.file.locks:
        if not lk.overlaps(offset, length):
            continue
        if lk.open is op:
            if write and not lk.exclusive:
                raise SmbError(NtStatus.FILE_LOCK_CONFLICT)
            continue
        if write or lk.exclusive:
            raise SmbError(NtStatus.FILE_LOCK_CONFLICT)


# ---- OFD mirror ------------------------------------------------------------------------

def _ofd_range(offset: int, length: int) -> tuple[int, int]:
    start = min(offset, OFF_MAX)
    end = offset + length
    return start, (0 if end > OFF_MAX else end - start)


def _ofd(fd: int, cmd: int, ltype: int, offset: int, length: int) -> bool:
    start, ln = _ofd_range(offset, length)
    try:
        fcntl.fcntl(fd, cmd, FLOCK.pack(ltype, 0, start, ln, 0))
        return True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        return True   # EBADF (fd mode cannot carry that lock type) etc.: SMB-level only


def _local_conflict(op, offset: int, length: int, exclusive: bool) -> bool:
    """Does a lock held by another process conflict? Take the OFD lock if the fd allows."""
    if op.fd < 0 or not length:
        return False
    ltype = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    start, ln = _ofd_range(offset, length)
    try:
        fcntl.fcntl(op.fd, F_OFD_SETLK, FLOCK.pack(ltype, 0, start, ln, 0))
        return False
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return True
    try:
        res = fcntl.fcntl(op.fd, F_OFD_GETLK, FLOCK.pack(ltype, 0, start, ln, 0))
        return FLOCK.unpack(res)[0] != fcntl.F_UNLCK
    except OSError:
        return False


def _ofd_release(op, offset: int, length: int) -> None:
    if op.fd < 0 or not length:
        return
    _ofd(op.fd, F_OFD_SETLK, fcntl.F_UNLCK, offset, length)
    for lk in op.file.locks:
        if lk.open is op and lk.overlaps(offset, length):
            _ofd(op.fd, F_OFD_SETLK, fcntl.F_WRLCK if lk.exclusive else fcntl.F_RDLCK,
                 lk.offset, lk.length)


def _wake(fs) -> None:
    waiters, fs.lock_waiters = fs.lock_waiters, []
    for fut in waiters:
        if not fut.done():
            fut.set_result(None)


def release_open_locks(ctx, op) -> None:
    fs = op.file
    if fs is None or not fs.locks:
        return
    before = len(fs.locks)
    fs.locks = [lk for lk in fs.locks if lk.open is not op]
    if len(fs.locks) != before:
        _wake(fs)


# ---- the command -------------------------------------------------------------------------

def _try_lock(op, offset: int, length: int, exclusive: bool) -> bool:
    fs = op.file
    if _conflicts(fs, op, offset, length, exclusive):
        return False
    if _local_conflict(op, offset, length, exclusive):
        return False
    fs.locks.append(ByteRangeLock(op, offset, length, exclusive))
    return True


def _unlock(op, offset: int, length: int) -> None:
    fs = op.file
    for i, lk in enumerate(fs.locks):
        if lk.open is op and lk.offset == offset and lk.length == length:
            del fs.locks[i]
            _ofd_release(op, offset, length)
            _wake(fs)
            return
    raise SmbError(NtStatus.RANGE_NOT_LOCKED)


async def handle_lock(req) -> bytes:
    body = req.body
    if len(body) < LOCK_REQ.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    size, count, _seq, raw_fid = LOCK_REQ.unpack_from(body)
    if size != 48 or count == 0 or count > MAX_LOCKS_PER_REQUEST:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if len(body) < LOCK_REQ.size + count * LOCK_ELEMENT.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    elements = [LOCK_ELEMENT.unpack_from(body, LOCK_REQ.size + i * LOCK_ELEMENT.size)
                for i in range(count)]
    op = lookup_open(req, raw_fid)
    if op.is_dir or op.pipe is not None or op.file is None:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    unlocking = elements[0][2] & LOCKFLAG_UNLOCK
    for offset, length, flags, _r in elements:
        if unlocking:
            if flags != LOCKFLAG_UNLOCK:
                raise SmbError(NtStatus.INVALID_PARAMETER)
        else:
            kind = flags & ~LOCKFLAG_FAIL_IMMEDIATELY
            if kind not in (LOCKFLAG_SHARED, LOCKFLAG_EXCLUSIVE):
                raise SmbError(NtStatus.INVALID_PARAMETER)
            if count > 1 and not flags & LOCKFLAG_FAIL_IMMEDIATELY:
                raise SmbError(NtStatus.INVALID_PARAMETER)
        if length and offset + length - 1 > 0xFFFFFFFFFFFFFFFF:
            raise SmbError(NtStatus.INVALID_LOCK_RANGE)
    if unlocking:
        for offset, length, _f, _r in elements:
            _unlock(op, offset, length)
        return b"\x04\x00\x00\x00"
    taken: list[tuple[int, int]] = []
    try:
        for offset, length, flags, _r in elements:
            exclusive = bool(flags & LOCKFLAG_EXCLUSIVE)
            if _try_lock(op, offset, length, exclusive):
                taken.append((offset, length))
                continue
            if flags & LOCKFLAG_FAIL_IMMEDIATELY:
                raise SmbError(NtStatus.LOCK_NOT_GRANTED)
            await _wait_for_lock(req, op, offset, length, exclusive)
            taken.append((offset, length))
    except SmbError:
        for offset, length in taken:
            try:
                _unlock(op, offset, length)
            except SmbError:
                pass
        raise
    return b"\x04\x00\x00\x00"


async def _wait_for_lock(req, op, offset: int, length: int, exclusive: bool) -> None:
    """A blocking lock: answer STATUS_PENDING and retry whenever a lock on the file goes
    away (or, for conflicts with other processes, every 100 ms)."""
    await req.go_async()
    loop = asyncio.get_running_loop()
    fs = op.file
    while True:
        if op.closed:
            raise SmbError(NtStatus.RANGE_NOT_LOCKED)
        fut = loop.create_future()
        fs.lock_waiters.append(fut)
        try:
            await req.wait(fut, timeout=0.1)
        except TimeoutError:
            pass
        if op.closed:
            raise SmbError(NtStatus.RANGE_NOT_LOCKED)
        if _try_lock(op, offset, length, exclusive):
            return
