"""Read-only snapshots of a running server's opens, oplocks and leases.

Owns turning the server's own objects - ServerContext.opens (protocol.objects.Open),
the oplock table (protocol.caching's LeaseTable) - into plain frozen records a test can
keep and compare. Nothing here keeps state of its own: every snapshot is read afresh,
on the server loop thread (smbd_py.testing.server marshals the calls).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ..oplocks.types import (LEASE_H, LEASE_R, LEASE_W, OPLOCK_BATCH, OPLOCK_EXCLUSIVE,
                             OPLOCK_II, OPLOCK_LEASE, OPLOCK_NONE, lease_str)

OPLOCK_NAMES = {OPLOCK_NONE: "NONE", OPLOCK_II: "LEVEL_II", OPLOCK_EXCLUSIVE: "EXCLUSIVE",
                OPLOCK_BATCH: "BATCH", OPLOCK_LEASE: "LEASE"}


def state_name(state: int) -> str:
    """Lease state bits as letters ("RWH", "RH", "R"), "NONE" for none."""
    return lease_str(state) or "NONE"


@dataclasses.dataclass(frozen=True)
class OpenInfo:
    """One SMB open (MS-SMB2 3.3.1.10 Open). `oplock_level` is OPLOCK_LEASE (0xFF) for
    an open under a lease; the lease_* fields are then set, None otherwise."""
    path: str                     # share-relative, backslashes, as the client named it
    share: str
    file_id: bytes                # the 16-byte FileId the client uses
    volatile_id: int
    session_id: int
    user: str
    granted_access: int
    share_access: int
    create_options: int
    is_directory: bool
    oplock_level: int
    oplock_breaking_to: int | None   # oplock level of a break awaiting the ack
    lease_key: bytes | None
    lease_state: int | None
    lease_epoch: int | None
    lease_breaking: bool
    client_guid: bytes
    peer: tuple | None            # the client's (address, port)

    @property
    def oplock_name(self) -> str:
        return OPLOCK_NAMES.get(self.oplock_level, hex(self.oplock_level))


@dataclasses.dataclass(frozen=True)
class OplockInfo:
    """An oplock (not a lease) held by one open."""
    path: str
    share: str
    file_id: bytes
    level: int                    # OPLOCK_II, OPLOCK_EXCLUSIVE or OPLOCK_BATCH
    breaking_to: int | None       # level offered in a break not acked yet
    client_guid: bytes
    peer: tuple | None

    @property
    def level_name(self) -> str:
        return OPLOCK_NAMES.get(self.level, hex(self.level))


@dataclasses.dataclass(frozen=True)
class LeaseInfo:
    """A lease (MS-SMB2 3.3.1.4), keyed by (client_guid, lease_key); it covers every
    open of one file by that key and dies with the last of them."""
    path: str
    share: str
    client_guid: bytes
    lease_key: bytes
    state: int                    # LEASE_R | LEASE_W | LEASE_H bits
    epoch: int
    version: int                  # 1 or 2
    breaking: bool
    breaking_to: int | None       # state offered in the break not acked yet
    is_directory: bool
    file_ids: tuple               # FileIds of the opens under the lease

    @property
    def state_name(self) -> str:
        return state_name(self.state)


def open_path(op: Any) -> str:
    """The share-relative path of an open now (renames update its components)."""
    if getattr(op, "stream", None):
        return op.name
    return "\\".join(op.components) if op.components else op.name


def _table(ctx: Any) -> Any:
    cache = getattr(ctx, "_caching", None)
    return cache.table if cache is not None else None


def opens(ctx: Any) -> list[OpenInfo]:
    table = _table(ctx)
    out = []
    for op in list(ctx.opens.values()):
        if op.closed:
            continue
        topen = table.get_open(op.cache_id) if table is not None and op.cache_id else None
        lease = table._leases.get(topen.lease_id) if topen is not None and topen.lease_id else None
        if lease is not None:
            level = OPLOCK_LEASE
        elif topen is not None:
            level = topen.oplock
        else:
            level = OPLOCK_NONE
        conn = op.conn
        out.append(OpenInfo(
            path=open_path(op), share=op.tree.share.name, file_id=bytes(op.file_id),
            volatile_id=op.volatile_id, session_id=op.session.session_id, user=op.session.user,
            granted_access=op.granted_access, share_access=op.share_access,
            create_options=op.create_options, is_directory=op.is_dir, oplock_level=level,
            oplock_breaking_to=topen.breaking_to if topen is not None else None,
            lease_key=lease.lease_key if lease else None,
            lease_state=lease.state if lease else None,
            lease_epoch=lease.epoch if lease else None,
            lease_breaking=bool(lease and lease.breaking),
            client_guid=bytes(conn.client_guid), peer=conn.peer))
    return out


def oplocks(ctx: Any) -> list[OplockInfo]:
    return [OplockInfo(o.path, o.share, o.file_id, o.oplock_level, o.oplock_breaking_to,
                       o.client_guid, o.peer)
            for o in opens(ctx) if o.oplock_level not in (OPLOCK_NONE, OPLOCK_LEASE)]


def leases(ctx: Any) -> list[LeaseInfo]:
    table = _table(ctx)
    if table is None:
        return []
    cache = ctx._caching
    out = []
    for lease in list(table._leases.values()):
        smb_opens = [cache.opens[i] for i in lease.opens if i in cache.opens]
        first = smb_opens[0] if smb_opens else None
        out.append(LeaseInfo(
            path=open_path(first) if first is not None else "",
            share=first.tree.share.name if first is not None else "",
            client_guid=bytes(lease.client_guid), lease_key=bytes(lease.lease_key),
            state=lease.state, epoch=lease.epoch, version=lease.version,
            breaking=lease.breaking,
            breaking_to=lease.breaking_to_requested if lease.breaking else None,
            is_directory=lease.is_directory,
            file_ids=tuple(bytes(o.file_id) for o in smb_opens)))
    return out


def parse_target(to: Any) -> int:
    """A break target as lease bits: an int (lease bits 0-7, or an oplock level 8/9),
    letters "R", "RH", "RW", "RWH" (any order and case), "NONE" or "", or an oplock
    level name "LEVEL_II", "EXCLUSIVE", "BATCH"."""
    if isinstance(to, str):
        name = to.strip().upper()
        named = {"NONE": 0, "": 0, "LEVEL_II": LEASE_R, "II": LEASE_R,
                 "EXCLUSIVE": LEASE_R | LEASE_W, "BATCH": LEASE_R | LEASE_W | LEASE_H}
        if name in named:
            return named[name]
        bits = {"R": LEASE_R, "W": LEASE_W, "H": LEASE_H}
        if not set(name) <= set(bits):
            raise ValueError(f"break target {to!r}: use lease letters (R, RH, RWH), NONE "
                             "or an oplock level name (LEVEL_II, EXCLUSIVE, BATCH)")
        state = 0
        for ch in name:
            state |= bits[ch]
        return state
    level = int(to)
    if level == OPLOCK_EXCLUSIVE:
        return LEASE_R | LEASE_W
    if level == OPLOCK_BATCH:
        return LEASE_R | LEASE_W | LEASE_H
    if not 0 <= level <= 7:
        raise ValueError(f"break target {to!r}: lease bits 0-7 or an oplock level")
    return level
