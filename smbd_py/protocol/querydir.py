"""QUERY_DIRECTORY (MS-SMB2 3.3.5.18): streaming enumeration with patterns, restart,
reopen and single-entry flags. CHANGE_NOTIFY (3.3.5.19) lives in protocol.notify; its
handler is re-exported here for the command table."""
from __future__ import annotations

import re
import struct

from ..fs.dirinfo import DIR_INFO_CLASSES, DirCursor
from ..fs.paths import stat_btime_at   # statx: CreationTime is the birth time
from ..wire.status import NtStatus, SmbError
from .create import lookup_open
from .info import dir_is_marked, listing_attributes

QD_REQ = struct.Struct("<HBBI16sHHI")     # 32 bytes
QD_RESP = struct.Struct("<HHI")
RESTART_SCANS = 0x01
RETURN_SINGLE_ENTRY = 0x02
INDEX_SPECIFIED = 0x04
REOPEN = 0x10
# MS-FSCC 2.1.5.2 characters no name component may hold (the wildcards * ? < > " may).
BAD_PATTERN_CHARS = re.compile("[\x00-\x1f/\\\\:|\ud800-\udfff]")


def _fill(op, info_class: int, max_len: int, single: bool, pattern: str | None, restart: bool):
    cur = op.dir_cursor
    if cur is None:
        # Entries' stored attributes (and client-set creation times) are read only in
        # directories marked as holding some (protocol.info.DIR_MARK_XATTR).
        attrs_of = listing_attributes if dir_is_marked(op.fd) else None
        cur = op.dir_cursor = DirCursor(op.fd, pattern=pattern or "*",
                                        share=op.tree.share.root, components=op.file.components,
                                        attributes_of=attrs_of, stat_fn=stat_btime_at)
    elif pattern is not None and restart:
        cur.set_pattern(pattern)
    elif restart:
        cur.restart()
    return cur.fill(info_class, max_len, single)


async def handle_query_directory(req) -> bytes:
    body = req.body
    if len(body) < QD_REQ.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    size, klass, flags, _index, raw_fid, name_off, name_len, out_len = QD_REQ.unpack_from(body)
    if size != 33:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    raw = req.raw
    if name_len % 2 or (name_len and name_off + name_len > len(raw)):
        raise SmbError(NtStatus.INVALID_PARAMETER)
    op = lookup_open(req, raw_fid)
    if not op.is_dir:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if klass not in DIR_INFO_CLASSES:
        raise SmbError(NtStatus.INVALID_INFO_CLASS)
    if out_len > req.conn.max_transact or out_len == 0:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    try:
        pattern = bytes(raw[name_off:name_off + name_len]).decode("utf-16-le") if name_len else None
    except UnicodeDecodeError:
        raise SmbError(NtStatus.OBJECT_NAME_INVALID) from None
    if pattern is not None and BAD_PATTERN_CHARS.search(pattern):
        # MS-FSA 2.1.5.6.3: the pattern is one name component (wildcards allowed). A '/'
        # or NUL would also turn the exact-name lookup into a path outside the directory.
        raise SmbError(NtStatus.OBJECT_NAME_INVALID)
    first = op.dir_cursor is None
    restart = bool(flags & (RESTART_SCANS | REOPEN))
    if pattern is not None and not first and not restart:
        pattern = None      # the pattern of the first query stays in force
    buf, count = await req.conn.server.run_io(_fill, op, klass, out_len,
                                              bool(flags & RETURN_SINGLE_ENTRY),
                                              pattern, restart)
    if count == 0:
        cur = op.dir_cursor
        if cur is not None and not cur.exhausted:
            raise SmbError(NtStatus.INFO_LENGTH_MISMATCH)
        raise SmbError(NtStatus.NO_SUCH_FILE if first or restart else NtStatus.NO_MORE_FILES)
    return QD_RESP.pack(9, 64 + 8, len(buf)) + buf
