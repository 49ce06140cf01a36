"""TREE_CONNECT and TREE_DISCONNECT (MS-SMB2 3.3.5.7, 3.3.5.8), with share access rules."""
from __future__ import annotations

import struct

from ..wire.status import NtStatus, SmbError
from .objects import TreeConnect

TC_REQ = struct.Struct("<HHHH")
TC_RESP = struct.Struct("<HBBIII")
SHARE_TYPE_DISK = 0x01
SHARE_TYPE_PIPE = 0x02
SHAREFLAG_NO_CACHING = 0x00000030
SHAREFLAG_ENCRYPT_DATA = 0x00008000
FULL_ACCESS = 0x001F01FF
READ_ONLY_ACCESS = 0x001200A9
TREE_CONNECT_FLAG_EXTENSION_PRESENT = 0x0004


def share_allows(share, sess) -> bool:
    if sess.anonymous or sess.guest:
        return share.guest_ok
    if share.valid_users is not None:
        return sess.user.casefold() in {u.casefold() for u in share.valid_users}
    return True


async def handle_tree_connect(req) -> bytes:
    body = req.body
    if len(body) < TC_REQ.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    size, flags, path_off, path_len = TC_REQ.unpack_from(body)
    if size != 9:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    raw = req.raw
    if req.conn.dialect == 0x0311 and flags & TREE_CONNECT_FLAG_EXTENSION_PRESENT:
        # With SMB2_TREE_CONNECT_REQUEST_EXTENSION (at message offset 72) PathOffset
        # counts from the start of the extension (MS-SMB2 2.2.9.1).
        path_off += 64 + 8
    if path_off + path_len > len(raw) or path_len == 0 or path_len % 2:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    try:
        path = bytes(raw[path_off:path_off + path_len]).decode("utf-16-le")
    except UnicodeDecodeError:
        raise SmbError(NtStatus.BAD_NETWORK_NAME) from None
    name = path.rstrip("\\").rsplit("\\", 1)[-1]
    share = req.conn.server.shares.get(name.casefold())
    if share is None:
        raise SmbError(NtStatus.BAD_NETWORK_NAME)
    sess = req.session
    if not share.is_ipc and not share_allows(share, sess):
        raise SmbError(NtStatus.ACCESS_DENIED)
    tid = sess.next_tree_id
    sess.next_tree_id += 1
    access = READ_ONLY_ACCESS if share.read_only else FULL_ACCESS
    sess.trees[tid] = TreeConnect(tid, share, sess, access)
    req.hdr.tree_id = tid
    share_flags = SHAREFLAG_NO_CACHING if share.is_ipc else 0
    if sess.encrypt_data:
        share_flags |= SHAREFLAG_ENCRYPT_DATA
    share_type = SHARE_TYPE_PIPE if share.is_ipc else SHARE_TYPE_DISK
    return TC_RESP.pack(16, share_type, 0, share_flags, 0, access)


async def handle_tree_disconnect(req) -> bytes:
    from .create import close_open_now
    tree = req.tree
    sess = req.session
    ctx = req.conn.server
    for op in [o for o in sess.opens.values() if o.tree is tree]:
        close_open_now(ctx, op)
    sess.trees.pop(tree.tree_id, None)
    return b"\x04\x00\x00\x00"


async def handle_echo(req) -> bytes:
    return b"\x04\x00\x00\x00"
