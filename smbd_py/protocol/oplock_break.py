"""OPLOCK_BREAK acknowledgements (MS-SMB2 3.3.5.22): oplock acks go to the oplock table
(protocol.caching); leases are not granted yet, so a lease ack names no lease."""
from __future__ import annotations

from ..wire.status import NtStatus, SmbError
from .create import lookup_open


async def handle_oplock_break(req) -> bytes:
    body = req.body
    if len(body) < 2:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    size = int.from_bytes(body[:2], "little")
    if size == 24 and len(body) >= 24:
        from .caching import handle_oplock_ack
        op = lookup_open(req, bytes(body[8:24]))
        return await handle_oplock_ack(req, op, body[2])
    if size == 36 and len(body) >= 36:
        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND)
    raise SmbError(NtStatus.INVALID_PARAMETER)
