"""Values, requests and actions of the oplock/lease table (no logic, no I/O).

Owns the vocabulary shared by the table and its callers: oplock levels, lease state bits,
flags, the open request, and the frozen action/result records the table returns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Optional

from smbd_py.wire.status import NtStatus

# MS-SMB2 2.2.13 RequestedOplockLevel / 2.2.14 OplockLevel
OPLOCK_NONE = 0x00
OPLOCK_II = 0x01
OPLOCK_EXCLUSIVE = 0x08
OPLOCK_BATCH = 0x09
OPLOCK_LEASE = 0xFF

# MS-SMB2 2.2.13.2.8 LeaseState bits
LEASE_NONE = 0x0
LEASE_R = 0x1
LEASE_H = 0x2
LEASE_W = 0x4
LEASE_RH = LEASE_R | LEASE_H
LEASE_RW = LEASE_R | LEASE_W
LEASE_RWH = LEASE_R | LEASE_W | LEASE_H

# LeaseFlags in a CREATE response / request
LEASE_FLAG_BREAK_IN_PROGRESS = 0x02
LEASE_FLAG_PARENT_LEASE_KEY_SET = 0x04

# Lease break notification flags
BREAK_FLAG_ACK_REQUIRED = 0x01

# Access bits that make an open a "stat open" (MS-FSA 2.1.5.1.2; Samba is_*_stat_open)
FILE_READ_ATTRIBUTES = 0x00000080
FILE_WRITE_ATTRIBUTES = 0x00000100
READ_CONTROL = 0x00020000
SYNCHRONIZE = 0x00100000
OPLOCK_STAT_BITS = FILE_READ_ATTRIBUTES | FILE_WRITE_ATTRIBUTES | SYNCHRONIZE
LEASE_STAT_BITS = OPLOCK_STAT_BITS | READ_CONTROL

# CreateDisposition values that replace the file's data
FILE_SUPERSEDE = 0
FILE_OPEN = 1
FILE_CREATE = 2
FILE_OPEN_IF = 3
FILE_OVERWRITE = 4
FILE_OVERWRITE_IF = 5
OVERWRITING_DISPOSITIONS = frozenset({FILE_SUPERSEDE, FILE_OVERWRITE, FILE_OVERWRITE_IF})

DIALECT_202 = 0x0202
DIALECT_210 = 0x0210
DIALECT_300 = 0x0300

DEFAULT_BREAK_TIMEOUT = 35.0  # seconds; Windows ~35 s (smbtorture oplock.batch22a)


def is_oplock_stat_open(access_mask: int) -> bool:
    return bool(access_mask & OPLOCK_STAT_BITS) and not (access_mask & ~OPLOCK_STAT_BITS)


def is_lease_stat_open(access_mask: int) -> bool:
    return bool(access_mask & LEASE_STAT_BITS) and not (access_mask & ~LEASE_STAT_BITS)


def oplock_to_lease(level: int) -> int:
    """Caching an oplock level amounts to, in lease bits (Samba map_oplock_to_lease_type)."""
    if level == OPLOCK_BATCH:
        return LEASE_RWH
    if level == OPLOCK_EXCLUSIVE:
        return LEASE_RW
    if level == OPLOCK_II:
        return LEASE_R
    return LEASE_NONE


def lease_to_oplock(state: int) -> int:
    if state == LEASE_RWH:
        return OPLOCK_BATCH
    if state == LEASE_RW:
        return OPLOCK_EXCLUSIVE
    if state & LEASE_R and not state & LEASE_W:
        return OPLOCK_II
    return OPLOCK_NONE


def valid_lease_state(state: int) -> int:
    """Reduce to a state a server may hold: NONE, R, RH, RW, RWH (no W or H without R)."""
    state &= LEASE_RWH
    if not state & LEASE_R:
        return LEASE_NONE
    return state


def lease_str(state: int) -> str:
    return "".join(c for c, b in (("R", LEASE_R), ("W", LEASE_W), ("H", LEASE_H)) if state & b)


# ---------------------------------------------------------------- requests

@dataclass(frozen=True)
class LeaseRequest:
    """The RqLs create context as parsed by the wire layer."""
    lease_key: bytes
    state: int
    version: int = 1              # 1 = SMB2_CREATE_REQUEST_LEASE, 2 = _V2
    epoch: int = 0                # v2 only
    parent_lease_key: Optional[bytes] = None  # v2 with PARENT_LEASE_KEY_SET


@dataclass(slots=True)
class OpenRequest:
    """One CREATE attempt, after the file system found/created the file. Not frozen,
    but treat it as read-only: one is built per CREATE, and a frozen dataclass's
    __init__ (object.__setattr__ per field) cost 1 us of the ~20 us a CREATE takes.

    sharing_violation: the share-mode check failed (fs layer decides it); the table then
    breaks handle caching and either makes the open wait or answers SHARING_VIOLATION.
    cap: the most caching the kernel can back on this file right now (lease bits).
    first_attempt: False when re-running an open after a Resume.
    """
    open_id: Hashable
    file_key: Hashable
    owner_id: Hashable
    client_guid: bytes
    dialect: int = 0x0311
    oplock_level: int = OPLOCK_NONE
    lease: Optional[LeaseRequest] = None
    access_mask: int = 0x001F01FF
    create_disposition: int = FILE_OPEN_IF
    is_directory: bool = False
    sharing_violation: bool = False
    has_brlocks: bool = False
    cap: int = LEASE_RWH
    first_attempt: bool = True


# ---------------------------------------------------------------- actions
# Actions and results are made on every table call (a kernel break, its ack, each
# CREATE): plain slots dataclasses, read-only by convention and hashable by value. A
# frozen dataclass sets each field through object.__setattr__, ~1 us per object on the
# path from a client's ack to the kernel lease release.

@dataclass(slots=True, unsafe_hash=True)
class SendOplockBreak:
    """Send an OPLOCK_BREAK notification for one open (FileId) to its connection."""
    owner_id: Hashable
    open_id: Hashable
    file_key: Hashable
    oplock_level: int             # OPLOCK_II or OPLOCK_NONE
    ack_required: bool


@dataclass(slots=True, unsafe_hash=True)
class SendLeaseBreak:
    """Send one lease break notification on owner_id (any of owner_ids will do)."""
    owner_id: Hashable
    owner_ids: tuple
    client_guid: bytes
    lease_key: bytes
    file_key: Hashable
    current_state: int
    new_state: int
    new_epoch: int                # 0 for v1 leases
    ack_required: bool

    @property
    def flags(self) -> int:
        return BREAK_FLAG_ACK_REQUIRED if self.ack_required else 0


@dataclass(slots=True, unsafe_hash=True)
class Resume:
    """A waiting operation (open, rename, ...) may be re-run now."""
    waiter_id: Hashable
    file_key: Hashable


@dataclass(slots=True, unsafe_hash=True)
class CachingChanged:
    """The union of SMB caching granted on file_key changed (kernel adapter hook)."""
    file_key: Hashable
    old_state: int
    new_state: int


@dataclass(slots=True, unsafe_hash=True)
class KernelBreakDone:
    """Every SMB holder of file_key is down to `target` (acked, closed or timed out):
    the caller may now downgrade (target R) or release (target NONE) the kernel lease."""
    file_key: Hashable
    target: int


Action = SendOplockBreak | SendLeaseBreak | Resume | CachingChanged | KernelBreakDone


# ---------------------------------------------------------------- results

@dataclass(frozen=True)
class Grant:
    """What to put in the CREATE response."""
    oplock_level: int             # OPLOCK_* (OPLOCK_LEASE when a lease context answers)
    lease_key: Optional[bytes] = None
    lease_state: int = LEASE_NONE
    lease_flags: int = 0          # LEASE_FLAG_BREAK_IN_PROGRESS / PARENT_LEASE_KEY_SET
    lease_version: int = 0        # 0 = no lease response context
    epoch: int = 0                # v2 only
    parent_lease_key: Optional[bytes] = None


@dataclass(slots=True, unsafe_hash=True)
class OpenResult:
    """status SUCCESS: grant is set and the open is registered.
    status PENDING: the open waits; re-run it (first_attempt=False) on Resume(open_id).
    Any other status: fail the CREATE with it; nothing was registered."""
    status: NtStatus
    grant: Optional[Grant] = None
    actions: tuple = ()


@dataclass(slots=True, unsafe_hash=True)
class OpResult:
    """For rename/unlink/delete-on-close: must_wait => wait for Resume(waiter_id), re-run."""
    must_wait: bool
    actions: tuple = ()


@dataclass(slots=True, unsafe_hash=True)
class AckResult:
    """Answer to an OPLOCK_BREAK acknowledgment. level is the oplock level (oplock ack)
    or the lease state (lease ack) to put in the response when status is SUCCESS."""
    status: NtStatus
    level: int = 0
    actions: tuple = field(default=())
