"""OPLOCK_BREAK acknowledgements (MS-SMB2 3.3.5.22): 24-byte oplock acks and 36-byte
lease acks, both answered by the oplock table through protocol.caching."""
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
        from .caching import handle_lease_ack
        return await handle_lease_ack(req)
    raise SmbError(NtStatus.INVALID_PARAMETER)
