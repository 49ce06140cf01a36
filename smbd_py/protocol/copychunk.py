"""Server-side copy (MS-SMB2 3.3.5.15.6, 3.3.5.15.7): FSCTL_SRV_REQUEST_RESUME_KEY hands a
client a key naming one of its opens; FSCTL_SRV_COPYCHUNK(_WRITE) copies ranges from the
open a key names into the open the IOCTL is sent on, without the data crossing the wire
(Windows Explorer and robocopy within a share, the Linux cifs client's copy_file_range).

The copy runs in the I/O pool with copy_file_range(2) (a reflink or in-kernel copy where
the file system can) and falls back to pread/pwrite where it cannot (overlapping ranges
of one file, file systems without it). The destination's write is a WRITE for the
caching layer: other holders' read caches break first.
"""
from __future__ import annotations

import errno
import os
import secrets
import struct

from ..fs.paths import errno_to_status
from ..wire import access as A
from ..wire.status import NtStatus, SmbError
from . import caching
from .io import touch_base
from .lock import check_io_conflict

# SRV_COPYCHUNK_COPY: SourceKey (24), ChunkCount, Reserved; then SRV_COPYCHUNK entries.
COPY_HEADER = struct.Struct("<24sII")
CHUNK = struct.Struct("<QQII")
# SRV_COPYCHUNK_RESPONSE: ChunksWritten, ChunkBytesWritten, TotalBytesWritten.
COPY_RESPONSE = struct.Struct("<III")
# SRV_REQUEST_RESUME_KEY response: ResumeKey (24), ContextLength (0), 4 unused bytes
# (what Windows and Samba send; clients read 32 bytes).
RESUME_KEY_RESPONSE = struct.Struct("<24sI4x")

# MS-SMB2 3.3.3: ServerSideCopyMaxNumberofChunks, ServerSideCopyMaxChunkSize,
# ServerSideCopyMaxDataSize (Windows' values).
MAX_CHUNKS = 256
MAX_CHUNK_SIZE = 1 << 20
MAX_DATA_SIZE = 16 << 20
_MAX_OFFSET = 0x7FFFFFFFFFFFFFFF


def resume_key(op) -> bytes:
    """The open's resume key, made on first request: its volatile id (to find it) and
    16 random bytes (so that no other client can name it)."""
    key = op.resume_key
    if not key:
        key = op.resume_key = op.volatile_id.to_bytes(8, "little") + secrets.token_bytes(16)
    return key


def request_resume_key(op, max_out: int) -> bytes:
    if max_out < RESUME_KEY_RESPONSE.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if op.is_dir or op.fd < 0:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    return RESUME_KEY_RESPONSE.pack(resume_key(op), 0)


def _source_open(ctx, key: bytes):
    vid = int.from_bytes(key[:8], "little")
    src = ctx.opens.get(vid)
    if src is None or src.closed or not src.resume_key or src.resume_key != key:
        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND)
    return src


def _limits_exceeded():
    """The answer to a request beyond the server's limits: STATUS_INVALID_PARAMETER with
    a response that tells the client the limits (MS-SMB2 3.3.5.15.6)."""
    return COPY_RESPONSE.pack(MAX_CHUNKS, MAX_CHUNK_SIZE, MAX_DATA_SIZE)


def parse_copy(data: bytes):
    """(source key, [(source offset, target offset, length)]) or the limits answer's
    body when the request asks for more than the limits allow (then chunks is None)."""
    if len(data) < COPY_HEADER.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    key, count, _reserved = COPY_HEADER.unpack_from(data)
    if count > MAX_CHUNKS:
        return key, None
    if len(data) < COPY_HEADER.size + count * CHUNK.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    chunks = []
    total = 0
    for i in range(count):
        src_off, dst_off, length, _r = CHUNK.unpack_from(data, COPY_HEADER.size + i * CHUNK.size)
        if length > MAX_CHUNK_SIZE:
            return key, None
        if length == 0:
            return key, None          # answered as the limits are (Windows)
        if src_off + length > _MAX_OFFSET or dst_off + length > _MAX_OFFSET:
            raise SmbError(NtStatus.INVALID_PARAMETER)
        total += length
        chunks.append((src_off, dst_off, length))
    if total > MAX_DATA_SIZE:
        return key, None
    return key, chunks


def _copy_range(src_fd: int, dst_fd: int, src_off: int, dst_off: int, length: int,
                same_file: bool) -> int:
    """Copy one chunk; returns the bytes copied, or -1 without copying when the source
    does not hold the whole chunk. Runs in the I/O pool."""
    if src_off + length > os.fstat(src_fd).st_size:
        return -1
    done = 0
    overlap = same_file and src_off < dst_off + length and dst_off < src_off + length
    if not overlap:
        try:
            while done < length:
                n = os.copy_file_range(src_fd, dst_fd, length - done, src_off + done,
                                       dst_off + done)
                if n <= 0:
                    return done
                done += n
            return done
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
    data = os.pread(src_fd, length - done, src_off + done)
    if data:
        os.pwrite(dst_fd, data, dst_off + done)
    return done + len(data)


async def copy_chunks(req, dst, ctl_is_write_only: bool, data: bytes, max_out: int):
    """FSCTL_SRV_COPYCHUNK(_WRITE) on the destination open `dst`. Returns the
    SRV_COPYCHUNK_RESPONSE. A request beyond the limits (or with an empty chunk) sets
    req.status to STATUS_INVALID_PARAMETER and returns the limits; a failure once the
    copy began (a byte-range lock, a chunk beyond the source's end, an I/O error) sets
    it to that status and returns what was written: both travel in the IOCTL response."""
    if max_out < COPY_RESPONSE.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    ctx = req.conn.server
    if dst.is_dir or dst.fd < 0 or dst.fd_is_path:
        raise SmbError(NtStatus.ACCESS_DENIED)
    # COPYCHUNK reads the target too (MS-SMB2 3.3.5.15.6); COPYCHUNK_WRITE only writes it.
    need = A.FILE_WRITE_DATA if ctl_is_write_only else A.FILE_WRITE_DATA | A.FILE_READ_DATA
    if dst.granted_access & need != need:
        raise SmbError(NtStatus.ACCESS_DENIED)
    key, chunks = parse_copy(data)
    if chunks is None:
        req.status = NtStatus.INVALID_PARAMETER
        return _limits_exceeded()
    src = _source_open(ctx, key)
    # Reading the source takes FILE_READ_DATA or FILE_EXECUTE (as READ does; Windows and
    # smbtorture smb2.ioctl.copy_chunk_bad_access).
    if src.fd < 0 or src.fd_is_path or not src.granted_access & (A.FILE_READ_DATA | A.FILE_EXECUTE):
        raise SmbError(NtStatus.ACCESS_DENIED)
    written = total = 0
    try:
        for src_off, dst_off, length in chunks:
            if src.file.locks:
                check_io_conflict(src, src_off, length, write=False)
            if dst.file.locks:
                check_io_conflict(dst, dst_off, length, write=True)
        if chunks:
            caching.data_changed(ctx, dst)
        same = src.file is dst.file
        for src_off, dst_off, length in chunks:
            # The source must hold every byte a chunk asks for (Windows:
            # STATUS_INVALID_VIEW_SIZE); the chunks before it stay written.
            try:
                n = await ctx.run_io(_copy_range, src.fd, dst.fd, src_off, dst_off, length, same)
            except OSError as e:
                raise SmbError(errno_to_status(e.errno)) from None
            if n < 0:
                raise SmbError(NtStatus.INVALID_VIEW_SIZE)
            total += n
            if n < length:
                break
            written += 1
    except SmbError as e:
        # A failure once the copy began still answers with what was written
        # (MS-SMB2 3.3.5.15.6: the IOCTL response carries SRV_COPYCHUNK_RESPONSE).
        req.status = e.status
        return COPY_RESPONSE.pack(written, 0, total)
    if dst.stream is not None and total:
        await ctx.run_io(touch_base, dst.base_fd)
    return COPY_RESPONSE.pack(written, 0, total)
