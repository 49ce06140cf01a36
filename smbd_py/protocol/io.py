"""READ, WRITE and FLUSH (MS-SMB2 3.3.5.11-3.3.5.13), for files and named pipes."""
from __future__ import annotations

import os
import struct
import time

from .. import bufpool
from ..wire import access as A
from ..wire.status import NtStatus, SmbError
from . import caching
from .create import lookup_open

READ_REQ = struct.Struct("<HBBIQ16sIIIHH")      # 48 bytes
READ_RESP = struct.Struct("<HBBIII")            # 16 bytes
WRITE_REQ = struct.Struct("<HHIQ16sIIHHI")      # 48 bytes
WRITE_RESP = struct.Struct("<HHIIHH")
FLUSH_REQ = struct.Struct("<HHI16s")
READ_DATA_OFFSET = 64 + 16
WRITEFLAG_WRITE_THROUGH = 0x1
WRITE_TO_EOF = 0xFFFFFFFFFFFFFFFF
_MAX_OFFSET = 0x7FFFFFFFFFFFFFFF          # MAXLONGLONG: offsets are signed on the wire
_MAX_FILE_SIZE = 0xFFFFFFF0000           # the largest file NTFS (and Windows' SMB2) allows


def _check_credit_charge(req, length: int) -> None:
    """MS-SMB2 3.3.5.2.5: a large READ/WRITE must be paid for with CreditCharge."""
    if req.conn.dialect >= 0x0210:
        need = max(1, (length - 1) // 65536 + 1) if length else 1
        if (req.hdr.credit_charge or 1) < need:
            raise SmbError(NtStatus.INVALID_PARAMETER)


def _pread_into(fd: int, buf: bytearray, offset: int) -> int:
    # One copy, page cache -> a reused buffer (a fresh one would fault in every page).
    return os.preadv(fd, (buf,), offset)


async def handle_read(req) -> bytes | tuple:
    body = req.body
    if len(body) < READ_REQ.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    (size, _pad, _flags, length, offset, raw_fid, minimum, _chan, _rem, _ci_off,
     _ci_len) = READ_REQ.unpack_from(body)
    if size != 49:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    conn = req.conn
    if length > conn.max_read:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    _check_credit_charge(req, length)
    op = lookup_open(req, raw_fid)
    if op.pipe is not None:
        try:
            data = op.pipe.read(length)
        except ValueError:   # PipeProtocolError: earlier bad PDUs broke the pipe
            raise SmbError(NtStatus.PIPE_BROKEN) from None
        if not data:
            raise SmbError(NtStatus.PIPE_EMPTY if False else NtStatus.END_OF_FILE)
        return READ_RESP.pack(17, READ_DATA_OFFSET, 0, len(data), 0, 0), data
    if op.is_dir:
        raise SmbError(NtStatus.INVALID_DEVICE_REQUEST)
    if not op.granted_access & (A.FILE_READ_DATA | A.FILE_EXECUTE):
        raise SmbError(NtStatus.ACCESS_DENIED)
    if offset + length > _MAX_OFFSET:
        # MS-FSA 2.1.5.2: ByteOffset + ByteCount beyond MAXLONGLONG (smbtorture
        # smb2.rw.invalid); a read that ends exactly there is an ordinary one.
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if length and op.file.locks:
        from .lock import check_io_conflict
        check_io_conflict(op, offset, length, write=False)
    if length:
        buf = bufpool.shared.get(length)
        n = await conn.server.run_io(_pread_into, op.fd, buf, offset)
        # The payload is sent (and signed) from the buffer itself; the pool hands the
        # buffer out again only once the transport let go of it.
        data = buf if n == length else memoryview(buf)[:n]
    else:
        n = 0
        data = b""
    if (not n and length) or n < minimum:
        raise SmbError(NtStatus.END_OF_FILE)
    op.position = offset + n
    return READ_RESP.pack(17, READ_DATA_OFFSET, 0, n, 0, 0), data


def _pwrite(fd: int, data, offset: int, sync: bool) -> int:
    n = os.pwrite(fd, data, offset)
    total = n
    while total < len(data):   # short writes happen on full disks and signals
        n = os.pwrite(fd, data[total:], offset + total)
        if n <= 0:
            break
        total += n
    if sync:
        os.fdatasync(fd)
    return total


def _pwrite_stream(fd: int, data, offset: int, sync: bool, base_fd: int) -> int:
    """_pwrite to a named stream (fs.streams): times are the file's, not the stream's
    (MS-FSA 2.1.5.3), so the base file's last write (and with it change) time moves as
    a write to its unnamed stream would move it; its access time stays."""
    n = _pwrite(fd, data, offset, sync) if len(data) else 0
    if n:
        touch_base(base_fd)
    return n


def touch_base(base_fd: int) -> None:
    """Set the last write time of a named stream's base file (an O_PATH fd) to now;
    best effort: the data change stands even where the times cannot be set."""
    if base_fd < 0:
        return
    path = f"/proc/self/fd/{base_fd}"
    try:
        os.utime(path, ns=(os.stat(path).st_atime_ns, time.time_ns()))
    except OSError:
        pass


async def handle_write(req) -> bytes:
    body = req.body
    if len(body) < WRITE_REQ.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    (size, data_off, length, offset, raw_fid, _chan, _rem, _ci_off, _ci_len,
     flags) = WRITE_REQ.unpack_from(body)
    if size != 49:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    conn = req.conn
    raw = req.raw
    if length > conn.max_write or data_off + length > len(raw) or (length and data_off < 64 + 48):
        raise SmbError(NtStatus.INVALID_PARAMETER)
    _check_credit_charge(req, length)
    op = lookup_open(req, raw_fid)
    data = raw[data_off:data_off + length]
    if op.pipe is not None:
        try:
            op.pipe.write(bytes(data))
        except ValueError:   # PipeProtocolError: not DCE/RPC, as ioctl's transceive says
            raise SmbError(NtStatus.PIPE_BROKEN) from None
        return WRITE_RESP.pack(17, 0, length, 0, 0, 0)
    if op.is_dir:
        raise SmbError(NtStatus.INVALID_DEVICE_REQUEST)
    access = op.granted_access
    if offset == WRITE_TO_EOF and access & A.FILE_APPEND_DATA and not access & A.FILE_WRITE_DATA:
        # An append-only handle's "write at end of file" (MS-FSA 2.1.5.3); with
        # FILE_WRITE_DATA granted Windows refuses the offset like any other negative one.
        offset = os.fstat(op.fd).st_size
    elif not access & A.FILE_WRITE_DATA:
        if not access & A.FILE_APPEND_DATA:
            raise SmbError(NtStatus.ACCESS_DENIED)
    if offset + length > _MAX_OFFSET or (length and offset + length > _MAX_FILE_SIZE):
        # Negative offsets, ends beyond MAXLONGLONG, and data beyond the largest file
        # Windows allows (smbtorture smb2.rw.invalid).
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if length and op.file.locks:
        from .lock import check_io_conflict
        check_io_conflict(op, offset, length, write=True)
    sync = bool(flags & WRITEFLAG_WRITE_THROUGH or op.mode & A.FILE_WRITE_THROUGH)
    # Read caches of other opens (and this one's LEVEL_II) die before the data changes.
    caching.data_changed(conn.server, op)
    try:
        if op.stream is None:
            n = await conn.server.run_io(_pwrite, op.fd, data, offset, sync) if length else 0
        else:
            n = await conn.server.run_io(_pwrite_stream, op.fd, data, offset, sync, op.base_fd)
    except OSError as e:
        from ..fs.paths import errno_to_status
        raise SmbError(errno_to_status(e.errno)) from None
    op.position = offset + n
    return WRITE_RESP.pack(17, 0, n, 0, 0, 0)


async def handle_flush(req) -> bytes:
    body = req.body
    if len(body) < FLUSH_REQ.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    size, _r1, _r2, raw_fid = FLUSH_REQ.unpack_from(body)
    if size != 24:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    op = lookup_open(req, raw_fid)
    if op.pipe is None and not op.is_dir:
        if not op.granted_access & (A.FILE_WRITE_DATA | A.FILE_APPEND_DATA):
            raise SmbError(NtStatus.ACCESS_DENIED)
        await req.conn.server.run_io(os.fsync, op.fd)
    return b"\x04\x00\x00\x00"
