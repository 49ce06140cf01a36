"""OPLOCK_BREAK acknowledgements (MS-SMB2 3.3.5.22). Until the lease table is wired in the
server grants no oplocks or leases, so every acknowledgement names nothing breaking."""
from __future__ import annotations

from ..wire.status import NtStatus, SmbError
from .create import lookup_open


async def handle_oplock_break(req) -> bytes:
    body = req.body
    if len(body) < 2:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    size = int.from_bytes(body[:2], "little")
    if size == 24 and len(body) >= 24:
        if body[2] == 0xFF:
            raise SmbError(NtStatus.INVALID_PARAMETER)
        lookup_open(req, bytes(body[8:24]))
        raise SmbError(NtStatus.INVALID_OPLOCK_PROTOCOL)
    if size == 36 and len(body) >= 36:
        raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND)
    raise SmbError(NtStatus.INVALID_PARAMETER)
