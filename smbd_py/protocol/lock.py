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
from .negotiate import CAP_MULTI_CHANNEL
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
        """Byte overlap, for I/O checks: an empty range touches nothing."""
        if not length or not self.length:
            return False
        return offset < self.offset + self.length and self.offset < offset + length

    def lock_overlaps(self, offset: int, length: int) -> bool:
        """Overlap between two locks, Windows rules (Samba brl_overlap): ranges are
        half-open, so a zero-length lock at X conflicts with a lock strictly spanning X
        ({10,0} vs {9,2}) but not with one starting or ending at X ({10,0} vs {10,1})."""
        return not (self.offset >= offset + length or offset >= self.offset + self.length)


def _conflicts(fs, op, offset: int, length: int, exclusive: bool) -> bool:
    for lk in fs.locks:
        if not lk.lock_overlaps(offset, length):
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

def _ofd_range(offset: int, length: int) -> tuple[int, int] | None:
    """The part of an SMB range POSIX can express (off_t is signed 64-bit), or None.
    Like Samba's posix_lock_in_range: a range starting at or past OFF_MAX lives only in
    the SMB table, one running past it is cut there. A POSIX length of 0 would mean "to
    infinity", so it is never produced here."""
    if offset >= OFF_MAX or not length:
        return None
    return offset, min(offset + length, OFF_MAX) - offset


def _ofd(fd: int, cmd: int, ltype: int, offset: int, length: int) -> bool:
    rng = _ofd_range(offset, length)
    if rng is None:
        return True
    start, ln = rng
    try:
        fcntl.fcntl(fd, cmd, FLOCK.pack(ltype, 0, start, ln, 0))
        return True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        return True   # EBADF (fd mode cannot carry that lock type) etc.: SMB-level only


def _local_conflict(op, offset: int, length: int, exclusive: bool) -> bool:
    """Does a lock held by another process conflict? Take the OFD lock if the fd allows."""
    rng = _ofd_range(offset, length)
    if op.fd < 0 or rng is None:
        return False
    ltype = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    start, ln = rng
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
    _lock_sequences.pop(op.file_id, None)
    fs = op.file
    if fs is None or not fs.locks:
        return
    before = len(fs.locks)
    fs.locks = [lk for lk in fs.locks if lk.open is not op]
    if len(fs.locks) != before:
        _wake(fs)


# ---- lock sequence (replay) verification, MS-SMB2 3.3.5.14 ------------------------------

# Open.LockSequenceArray per open, keyed by the open's (never reused) file id:
# {LockSequenceIndex: LockSequenceNumber} for the valid entries only.
_lock_sequences: dict[bytes, dict[int, int]] = {}


def _verifies_lock_sequence(req, op) -> bool:
    """MS-SMB2 3.3.5.14: verification for resilient, durable or persistent opens, and for
    every open on a 3.x connection whose server announced multi-channel."""
    if op.durable or getattr(op, "resilient", False) or getattr(op, "persistent", False):
        return True
    conn = req.conn
    return (getattr(conn, "dialect", 0) >= 0x0300
            and bool(getattr(conn, "server_capabilities", 0) & CAP_MULTI_CHANNEL))


def _sequence_bucket(lock_sequence: int) -> tuple[int, int]:
    """(LockSequenceIndex, LockSequenceNumber): index 1..64 is a bucket, anything else
    means "no replay detection" (index 0 is returned)."""
    index, number = lock_sequence >> 4, lock_sequence & 0xF
    return (index if 1 <= index <= 64 else 0), number


# ---- the command -------------------------------------------------------------------------

def _try_lock(op, offset: int, length: int, exclusive: bool) -> ByteRangeLock | None:
    fs = op.file
    if _conflicts(fs, op, offset, length, exclusive):
        return None
    if _local_conflict(op, offset, length, exclusive):
        return None
    lk = ByteRangeLock(op, offset, length, exclusive)
    fs.locks.append(lk)
    return lk


def _remove(lk: ByteRangeLock) -> None:
    fs = lk.open.file
    fs.locks.remove(lk)
    _ofd_release(lk.open, lk.offset, lk.length)
    _wake(fs)


def _unlock(op, offset: int, length: int) -> None:
    """Remove one of this open's locks with exactly this range; an exclusive one first,
    so that a shared lock stacked on it survives (Windows; Samba brl_unlock_windows)."""
    mine = [lk for lk in op.file.locks
            if lk.open is op and lk.offset == offset and lk.length == length]
    if not mine:
        raise SmbError(NtStatus.RANGE_NOT_LOCKED)
    _remove(next((lk for lk in mine if lk.exclusive), mine[0]))


def _check_range(offset: int, length: int) -> None:
    if length and offset + length - 1 > 0xFFFFFFFFFFFFFFFF:
        raise SmbError(NtStatus.INVALID_LOCK_RANGE)


async def handle_lock(req) -> bytes:
    body = req.body
    if len(body) < LOCK_REQ.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    size, count, lock_sequence, raw_fid = LOCK_REQ.unpack_from(body)
    if size != 48 or count == 0 or count > MAX_LOCKS_PER_REQUEST:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if len(body) < LOCK_REQ.size + count * LOCK_ELEMENT.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    elements = [LOCK_ELEMENT.unpack_from(body, LOCK_REQ.size + i * LOCK_ELEMENT.size)
                for i in range(count)]
    op = lookup_open(req, raw_fid)
    if op.is_dir or op.pipe is not None or op.file is None:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    bucket = number = 0
    if _verifies_lock_sequence(req, op):
        bucket, number = _sequence_bucket(lock_sequence)
        if bucket:
            seqs = _lock_sequences.setdefault(op.file_id, {})
            if seqs.get(bucket) == number:
                return b"\x04\x00\x00\x00"     # a replay of a request that succeeded
            seqs.pop(bucket, None)
    if elements[0][2] & LOCKFLAG_UNLOCK:
        await _unlock_elements(op, elements)
    else:
        # A byte-range lock ends read caching of LEVEL_II holders (Samba brl contend).
        from . import caching
        caching.data_changed(req.conn.server, op, modifies=False)
        await _lock_elements(req, op, elements)
    if bucket:
        _lock_sequences.setdefault(op.file_id, {})[bucket] = number
    return b"\x04\x00\x00\x00"


async def _unlock_elements(op, elements) -> None:
    """MS-SMB2 3.3.5.14.1: unlocks are done in order and the first failure ends the
    request; the ranges already unlocked stay unlocked. An element that is not a plain
    UNLOCK fails the request when reached (a lock cannot ride in an unlock request)."""
    for offset, length, flags, _r in elements:
        if flags != LOCKFLAG_UNLOCK:
            raise SmbError(NtStatus.INVALID_PARAMETER)
        _check_range(offset, length)
        _unlock(op, offset, length)


async def _lock_elements(req, op, elements) -> None:
    """MS-SMB2 3.3.5.14.2: every element is validated first; then all are taken or, on
    the first failure, the ones taken by this request are released again."""
    for offset, length, flags, _r in elements:
        kind = flags & ~LOCKFLAG_FAIL_IMMEDIATELY
        if kind not in (LOCKFLAG_SHARED, LOCKFLAG_EXCLUSIVE):
            raise SmbError(NtStatus.INVALID_PARAMETER)
        if len(elements) > 1 and not flags & LOCKFLAG_FAIL_IMMEDIATELY:
            raise SmbError(NtStatus.INVALID_PARAMETER)
        _check_range(offset, length)
    taken: list[ByteRangeLock] = []
    try:
        for offset, length, flags, _r in elements:
            exclusive = bool(flags & LOCKFLAG_EXCLUSIVE)
            lk = _try_lock(op, offset, length, exclusive)
            if lk is None:
                if flags & LOCKFLAG_FAIL_IMMEDIATELY:
                    raise SmbError(NtStatus.LOCK_NOT_GRANTED)
                lk = await _wait_for_lock(req, op, offset, length, exclusive)
            taken.append(lk)
    except BaseException:
        for lk in reversed(taken):
            if lk in op.file.locks:
                _remove(lk)
        raise


async def _wait_for_lock(req, op, offset: int, length: int, exclusive: bool) -> ByteRangeLock:
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
        lk = _try_lock(op, offset, length, exclusive)
        if lk is not None:
            return lk
