"""SMB2.1/3 leases at the wire edge (MS-SMB2 2.2.13.2.8/.10, 2.2.14.2.10/.11, 2.2.23.2,
2.2.24.2, 2.2.25.2, 3.3.4.7, 3.3.5.22.2).

Owns the byte layouts of leasing and nothing else: the "RqLs" create context in a CREATE
request (v1 32 bytes, v2 52 bytes) and in its response, the 44-byte lease break
notification, and the 36-byte lease break acknowledgment and its response. The
decisions (which state to grant, when to break, whether an ack is valid) are the oplock
table's (oplocks.table); protocol.caching drives the table and calls in here to
translate.
"""
from __future__ import annotations

import struct
from typing import Any

from ..oplocks.types import (LEASE_FLAG_PARENT_LEASE_KEY_SET, Grant, LeaseRequest,
                             SendLeaseBreak)
from ..wire.status import NtStatus, SmbError

LEASE_CONTEXT_NAME = b"RqLs"
# LeaseKey, LeaseState, LeaseFlags, LeaseDuration
LEASE_V1 = struct.Struct("<16sIIQ")                 # 32 bytes
# ... then ParentLeaseKey, Epoch, Reserved
LEASE_V2 = struct.Struct("<16sIIQ16sHH")            # 52 bytes
# StructureSize=44, NewEpoch, Flags, LeaseKey, CurrentLeaseState, NewLeaseState,
# BreakReason, AccessMaskHint, ShareMaskHint
LEASE_BREAK_NOTIFICATION = struct.Struct("<HHI16sIIIII")   # 44 bytes
# StructureSize=36, Reserved, Flags, LeaseKey, LeaseState, LeaseDuration
LEASE_BREAK_ACK = struct.Struct("<HHI16sIQ")        # 36 bytes

_ZERO_KEY = b"\0" * 16


def parse_lease_context(contexts: dict[bytes, bytes]) -> LeaseRequest | None:
    """The RqLs context of a CREATE, or None. Which version counts on which dialect is
    the table's decision (v2 is ignored below 3.x, any lease on 2.0.2)."""
    data = contexts.get(LEASE_CONTEXT_NAME)
    if data is None:
        return None
    if len(data) == LEASE_V1.size:
        key, state, _flags, _duration = LEASE_V1.unpack(data)
        return LeaseRequest(key, state, 1)
    if len(data) == LEASE_V2.size:
        key, state, flags, _duration, parent, epoch, _r = LEASE_V2.unpack(data)
        # The parent key counts only when the client says it set one.
        parent_key = parent if flags & LEASE_FLAG_PARENT_LEASE_KEY_SET else None
        return LeaseRequest(key, state, 2, epoch, parent_key)
    # Samba smb2_lease_pull: any other length is malformed.
    raise SmbError(NtStatus.INVALID_PARAMETER)


def lease_response_context(grant: Grant | None) -> list[tuple[bytes, bytes]]:
    """The RqLs response context for a grant that carries a lease ([] otherwise)."""
    if grant is None or not grant.lease_version or grant.lease_key is None:
        return []
    if grant.lease_version >= 2:
        data = LEASE_V2.pack(grant.lease_key, grant.lease_state, grant.lease_flags, 0,
                             grant.parent_lease_key or _ZERO_KEY, grant.epoch, 0)
    else:
        # v1 responses carry no parent key and no flag saying there is one.
        data = LEASE_V1.pack(grant.lease_key, grant.lease_state,
                             grant.lease_flags & ~LEASE_FLAG_PARENT_LEASE_KEY_SET, 0)
    return [(LEASE_CONTEXT_NAME, data)]


def lease_break_body(a: SendLeaseBreak) -> bytes:
    """MS-SMB2 2.2.23.2 Lease Break Notification (sent with SessionId 0, TreeId 0)."""
    return LEASE_BREAK_NOTIFICATION.pack(44, a.new_epoch, a.flags, a.lease_key,
                                         a.current_state, a.new_state, 0, 0, 0)


def send_lease_break(a: SendLeaseBreak) -> bool:
    """Send the notification on the connection that holds the lease (any live one of
    the lease's connections will do: the lease belongs to the client, not to a
    connection). Returns False when none is left."""
    body = lease_break_body(a)
    for conn in (a.owner_id, *a.owner_ids):
        if conn is None or getattr(conn, "closed", True):
            continue
        conn.send_oplock_break(body, 0)
        return True
    return False


def parse_lease_ack(body: Any) -> tuple[bytes, int]:
    """(LeaseKey, LeaseState) of a 36-byte lease break acknowledgment."""
    if len(body) < LEASE_BREAK_ACK.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    _size, _r, _flags, key, state, _duration = LEASE_BREAK_ACK.unpack_from(body)
    return bytes(key), state


def lease_ack_response(lease_key: bytes, state: int) -> bytes:
    """MS-SMB2 2.2.25.2 Lease Break Response."""
    return LEASE_BREAK_ACK.pack(36, 0, 0, lease_key, state, 0)
