"""OPLOCK_BREAK acknowledgements (MS-SMB2 3.3.5.22): 24-byte oplock acks and 36-byte
lease acks, both answered by the oplock table through protocol.caching."""
from __future__ import annotations

from ..wire.status import NtStatus, SmbError
from .caching import handle_lease_ack, handle_oplock_ack
from .create import lookup_open


async def handle_oplock_break(req) -> bytes:
    # A local open(2) may be blocked on this ack (kernel lease break): no per-call
    # imports or copies on the way to the table, and the acks are plain functions (no
    # second coroutine: they never wait).
    body = req.body
    n = len(body)
    if n < 2:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    size = body[0] | (body[1] << 8)
    if size == 24 and n >= 24:
        return handle_oplock_ack(req, lookup_open(req, bytes(body[8:24])), body[2])
    if size == 36 and n >= 36:
        return handle_lease_ack(req)
    raise SmbError(NtStatus.INVALID_PARAMETER)
