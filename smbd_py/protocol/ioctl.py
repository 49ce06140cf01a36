"""IOCTL (MS-SMB2 3.3.5.15): FSCTL_VALIDATE_NEGOTIATE_INFO, FSCTL_PIPE_TRANSCEIVE (srvsvc and
friends over IPC$), FSCTL_QUERY_NETWORK_INTERFACE_INFO, server-side copy (protocol.copychunk),
and the statuses the spec names for the rest."""
from __future__ import annotations

import socket
import struct

from ..wire.header import RELATED_FILE_ID
from ..wire.status import NtStatus, SmbError
from .connection import Disconnect
from . import copychunk
from .create import lookup_open

IOCTL_REQ = struct.Struct("<HHI16sIIIIIIII")      # 56 bytes
IOCTL_RESP = struct.Struct("<HHI16sIIIIII")       # 48 bytes
SMB2_0_IOCTL_IS_FSCTL = 0x00000001

FSCTL_DFS_GET_REFERRALS = 0x00060194
FSCTL_DFS_GET_REFERRALS_EX = 0x000601B0
FSCTL_PIPE_PEEK = 0x0011400C
FSCTL_PIPE_TRANSCEIVE = 0x0011C017
FSCTL_PIPE_WAIT = 0x00110018
FSCTL_VALIDATE_NEGOTIATE_INFO = 0x00140204
FSCTL_QUERY_NETWORK_INTERFACE_INFO = 0x001401FC
FSCTL_SRV_ENUMERATE_SNAPSHOTS = 0x00144064
FSCTL_SRV_REQUEST_RESUME_KEY = 0x00140078
FSCTL_SRV_COPYCHUNK = 0x001440F2
FSCTL_SRV_COPYCHUNK_WRITE = 0x001480F2
FSCTL_SRV_READ_HASH = 0x001441BB
FSCTL_LMR_REQUEST_RESILIENCY = 0x001401D4
FSCTL_GET_REPARSE_POINT = 0x000900A8
FSCTL_SET_REPARSE_POINT = 0x000900A4
FSCTL_CREATE_OR_GET_OBJECT_ID = 0x000900C0
FSCTL_GET_OBJECT_ID = 0x0009009C
FSCTL_SET_SPARSE = 0x000900C4
FSCTL_QUERY_ALLOCATED_RANGES = 0x000940CF
FSCTL_SET_ZERO_DATA = 0x000980C8
FSCTL_GET_COMPRESSION = 0x0009003C
FSCTL_SET_COMPRESSION = 0x0009C040
FSCTL_FILESYSTEM_GET_STATISTICS = 0x00090060

NO_FILE_ID = b"\xff" * 16
# FSCTL_GET/SET_COMPRESSION's COMPRESSION_STATE (MS-FSCC 2.3.11, 2.3.67).
_COMPRESSION_STATE = struct.Struct("<H")
COMPRESSION_FORMAT_NONE = 0
COMPRESSION_FORMAT_DEFAULT = 1
COMPRESSION_FORMAT_LZNT1 = 2


def _response(ctl: int, file_id: bytes, output: bytes) -> bytes:
    out_off = 64 + 48 if output else 0
    return IOCTL_RESP.pack(49, 0, ctl, file_id, out_off, 0, out_off, len(output), 0, 0) + (output or b"")


async def handle_ioctl(req) -> bytes:
    body = req.body
    if len(body) < IOCTL_REQ.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    (size, _r, ctl, raw_fid, in_off, in_count, _max_in_resp, _out_off, _out_count,
     max_out, flags, _r2) = IOCTL_REQ.unpack_from(body)
    if size != 57:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    raw = req.raw
    if in_count and (in_off + in_count > len(raw) or in_off < 64):
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if in_count > req.conn.max_transact or max_out > req.conn.max_transact:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    data = bytes(raw[in_off:in_off + in_count])
    if flags != SMB2_0_IOCTL_IS_FSCTL:
        raise SmbError(NtStatus.NOT_SUPPORTED)
    if ctl == FSCTL_VALIDATE_NEGOTIATE_INFO:
        return _validate_negotiate(req, data, max_out)
    if ctl == FSCTL_QUERY_NETWORK_INTERFACE_INFO:
        return _network_interfaces(req, max_out)
    if ctl in (FSCTL_DFS_GET_REFERRALS, FSCTL_DFS_GET_REFERRALS_EX):
        raise SmbError(NtStatus.FS_DRIVER_REQUIRED)
    if ctl == FSCTL_PIPE_WAIT:
        raise SmbError(NtStatus.NOT_SUPPORTED)
    op = lookup_open(req, raw_fid)
    if ctl == FSCTL_PIPE_TRANSCEIVE:
        if op.pipe is None:
            raise SmbError(NtStatus.INVALID_DEVICE_REQUEST)
        try:
            out, more = op.pipe.transceive(data, max_out)
        except Exception:
            raise SmbError(NtStatus.PIPE_BROKEN) from None
        if more:
            req.status = NtStatus.BUFFER_OVERFLOW
        return _response(ctl, op.file_id, out)
    if op.pipe is not None:
        raise SmbError(NtStatus.NOT_SUPPORTED)
    if ctl == FSCTL_SRV_REQUEST_RESUME_KEY:
        return _response(ctl, op.file_id, copychunk.request_resume_key(op, max_out))
    if ctl in (FSCTL_SRV_COPYCHUNK, FSCTL_SRV_COPYCHUNK_WRITE):
        out = await copychunk.copy_chunks(req, op, ctl == FSCTL_SRV_COPYCHUNK_WRITE, data, max_out)
        return _response(ctl, op.file_id, out)
    if ctl == FSCTL_SRV_ENUMERATE_SNAPSHOTS:
        if max_out < 16:
            raise SmbError(NtStatus.INVALID_PARAMETER)
        return _response(ctl, op.file_id, struct.pack("<III", 0, 0, 2) + b"\0\0" + b"\0" * 2)
    if ctl == FSCTL_GET_REPARSE_POINT:
        raise SmbError(NtStatus.NOT_A_REPARSE_POINT)
    if ctl in (FSCTL_CREATE_OR_GET_OBJECT_ID, FSCTL_GET_OBJECT_ID):
        return _object_id(op, ctl, max_out)
    if ctl == FSCTL_GET_COMPRESSION:
        # No file here is compressed (FILE_FILE_COMPRESSION is not advertised): NONE.
        if max_out < _COMPRESSION_STATE.size:
            raise SmbError(NtStatus.INVALID_PARAMETER)
        return _response(ctl, op.file_id, _COMPRESSION_STATE.pack(COMPRESSION_FORMAT_NONE))
    if ctl == FSCTL_SET_COMPRESSION:
        # Asking for NONE asks for what every file already is; compressing is not offered.
        if len(data) < _COMPRESSION_STATE.size:
            raise SmbError(NtStatus.INVALID_PARAMETER)
        (fmt,) = _COMPRESSION_STATE.unpack_from(data)
        if fmt == COMPRESSION_FORMAT_NONE:
            return _response(ctl, op.file_id, b"")
        if fmt in (COMPRESSION_FORMAT_DEFAULT, COMPRESSION_FORMAT_LZNT1):
            raise SmbError(NtStatus.NOT_SUPPORTED)
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if ctl in (FSCTL_SET_SPARSE, FSCTL_SET_ZERO_DATA):
        raise SmbError(NtStatus.NOT_SUPPORTED)
    # Any other FSCTL: the object store does not implement it (MS-SMB2 3.3.5.15).
    raise SmbError(NtStatus.INVALID_DEVICE_REQUEST)


def _object_id(op, ctl: int, max_out: int) -> bytes:
    """FILE_OBJECTID_BUFFER (MS-FSCC 2.1.3.1, 64 bytes): an ObjectId that is stable for the
    inode, as Samba derives it from the file id (st_dev, st_ino); no birth/domain ids."""
    if max_out < 64:
        raise SmbError(NtStatus.BUFFER_TOO_SMALL)
    dev, ino = op.file_key if op.file_key is not None else (0, 0)
    object_id = struct.pack("<QQ", ino & 0xFFFFFFFFFFFFFFFF, dev & 0xFFFFFFFFFFFFFFFF)
    return _response(ctl, op.file_id, object_id + b"\0" * 48)


def _validate_negotiate(req, data: bytes, max_out: int) -> bytes:
    """MS-SMB2 3.3.5.15.12: any mismatch drops the connection."""
    conn = req.conn
    if conn.dialect == 0x0311:
        # 3.1.1 protects negotiation with the preauth hash; Windows disconnects here.
        raise Disconnect("VALIDATE_NEGOTIATE_INFO on 3.1.1")
    if len(data) < 24:
        raise Disconnect("short VALIDATE_NEGOTIATE_INFO")
    caps, guid, sec_mode, count = struct.unpack_from("<I16sHH", data)
    if len(data) < 24 + 2 * count or max_out < 24:
        raise Disconnect("bad VALIDATE_NEGOTIATE_INFO")
    dialects = list(struct.unpack_from(f"<{count}H", data, 24))
    if (caps != conn.client_capabilities or guid != conn.client_guid
            or sec_mode != conn.client_security_mode or dialects != conn.client_dialects):
        raise Disconnect("VALIDATE_NEGOTIATE_INFO mismatch")
    out = struct.pack("<I16sHH", conn.server_capabilities, conn.server.server_guid,
                      conn.server_security_mode, conn.dialect)
    req.unsigned_response = False
    return _response(FSCTL_VALIDATE_NEGOTIATE_INFO, NO_FILE_ID, out)


def _network_interfaces(req, max_out: int) -> bytes:
    """One NETWORK_INTERFACE_INFO for the address the client reached us on."""
    sock = req.conn.transport.get_extra_info("socket")
    local = req.conn.transport.get_extra_info("sockname") or ("127.0.0.1", 0)
    family = sock.family if sock is not None else socket.AF_INET
    storage = bytearray(128)
    if family == socket.AF_INET6:
        struct.pack_into("<HHI16sI", storage, 0, 0x17, 0, 0, socket.inet_pton(socket.AF_INET6, local[0]), 0)
    else:
        struct.pack_into("<HH4s", storage, 0, 0x02, 0, socket.inet_aton(local[0]))
    entry = struct.pack("<IIIIQ", 0, 1, 0, 0, 10_000_000_000) + bytes(storage)
    if max_out < len(entry):
        raise SmbError(NtStatus.BUFFER_TOO_SMALL)
    return _response(FSCTL_QUERY_NETWORK_INTERFACE_INFO, NO_FILE_ID, entry)
