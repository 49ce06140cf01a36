"""The oplock/lease table: decides every grant, break and acknowledgment.

A pure state machine (no sockets, files, asyncio or wall clock): callers feed events with
`now`, and carry out the returned actions (types.py). Rules follow MS-SMB2 3.3.4.6/3.3.4.7,
3.3.5.9, 3.3.5.22, MS-FSA 2.1.4.12 and Samba's delay_for_oplock()/downgrade_lease()
(which pass smbtorture's smb2.oplock/smb2.lease suites).

Model
-----
* An *open* (open_id) is one SMB handle. It holds either an oplock level or a reference
  to a *lease*; a lease is keyed by (ClientGuid, LeaseKey), covers every open of one file
  by that key, has one state, one epoch and one break at a time.
* A break keeps the holder's current state until it acks (the holder may still cache);
  the open that caused the break waits (status PENDING) when the holder must give up
  what the open conflicts with (W normally, H on a sharing violation), and is re-run by
  the caller on Resume. Waiters on a file are resumed on every change of that file's
  caching (ack, close, disconnect, timeout), as Samba wakes share-mode watchers.
* Breaks that need no ack (LEVEL_II -> NONE, lease R -> NONE) take effect at once.
* A break not acked within break_timeout makes the holder NONE; a late ack then gets
  UNSUCCESSFUL (lease) or INVALID_OPLOCK_PROTOCOL (oplock).
* Kernel leases: `cap` on every open limits grants to what the kernel can back;
  kernel_break(file, target) breaks every holder down to target and reports
  KernelBreakDone when nobody caches more than target.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Iterable, Optional

from smbd_py.wire.status import NtStatus
from smbd_py.oplocks.types import (
    DEFAULT_BREAK_TIMEOUT, DIALECT_202, DIALECT_300, LEASE_FLAG_BREAK_IN_PROGRESS,
    LEASE_FLAG_PARENT_LEASE_KEY_SET, LEASE_H, LEASE_NONE, LEASE_R, LEASE_RWH, LEASE_W,
    OPLOCK_BATCH, OPLOCK_EXCLUSIVE, OPLOCK_II, OPLOCK_LEASE, OPLOCK_NONE,
    OVERWRITING_DISPOSITIONS, AckResult, Action, CachingChanged, Grant, KernelBreakDone,
    OpenRequest, OpenResult, OpResult, Resume, SendLeaseBreak, SendOplockBreak,
    is_lease_stat_open, is_oplock_stat_open, lease_to_oplock, oplock_to_lease,
    valid_lease_state,
)

LeaseId = tuple  # (client_guid, lease_key)

# Grant and OpenResult are frozen: one instance per oplock level serves every open that
# gets that level with nothing to do (most opens: an open+close loop builds none).
_OPLOCK_GRANTS = {lvl: Grant(lvl) for lvl in (OPLOCK_NONE, OPLOCK_II, OPLOCK_EXCLUSIVE,
                                               OPLOCK_BATCH)}
_OPLOCK_OK = {lvl: OpenResult(NtStatus.SUCCESS, g, ()) for lvl, g in _OPLOCK_GRANTS.items()}
GRANT_NONE = _OPLOCK_GRANTS[OPLOCK_NONE]     # open_plain's answer
# oplock_to_lease as a table, for the loops that run while a local open(2) waits on a
# kernel lease break (kernel_break, the ack's _post_change): an open only ever holds
# one of these four levels.
_OPLOCK_CACHING = {OPLOCK_NONE: LEASE_NONE, OPLOCK_II: oplock_to_lease(OPLOCK_II),
                   OPLOCK_EXCLUSIVE: oplock_to_lease(OPLOCK_EXCLUSIVE),
                   OPLOCK_BATCH: oplock_to_lease(OPLOCK_BATCH)}


@dataclass
class Lease:
    client_guid: bytes
    lease_key: bytes
    file_key: Hashable
    version: int
    state: int
    epoch: int
    is_directory: bool = False
    parent_lease_key: Optional[bytes] = None
    breaking: bool = False
    breaking_to_requested: int = 0   # what the last notification offered
    breaking_to_required: int = 0    # what the conflicts need in the end
    deadline: Optional[float] = None
    opens: dict = field(default_factory=dict)  # open_id -> None, insertion ordered

    @property
    def lease_id(self) -> LeaseId:
        return (self.client_guid, self.lease_key)


@dataclass
class Open:
    open_id: Hashable
    file_key: Hashable
    owner_id: Hashable
    client_guid: bytes
    access_mask: int
    lease_id: Optional[LeaseId] = None
    oplock: int = OPLOCK_NONE
    breaking_to: Optional[int] = None   # oplock level sent in a break awaiting an ack
    deadline: Optional[float] = None

    def caching(self, table: "LeaseTable") -> int:
        if self.lease_id is not None:
            return table._leases[self.lease_id].state
        return oplock_to_lease(self.oplock)


@dataclass
class FileState:
    opens: dict = field(default_factory=dict)      # open_id -> Open
    leases: dict = field(default_factory=dict)     # lease_id -> None (ordered set)
    waiters: dict = field(default_factory=dict)    # waiter_id -> None
    kernel_target: Optional[int] = None            # pending kernel break
    caching: int = LEASE_NONE                      # last reported union


class LeaseTable:
    """All oplock and lease state of one server process."""

    def __init__(self, break_timeout: float = DEFAULT_BREAK_TIMEOUT,
                 directory_leases: bool = True, level2_oplocks: bool = True) -> None:
        self.break_timeout = break_timeout
        self.directory_leases = directory_leases
        self.level2_oplocks = level2_oplocks
        self._files: dict[Hashable, FileState] = {}
        self._opens: dict[Hashable, Open] = {}
        self._leases: dict[LeaseId, Lease] = {}
        self._waiter_file: dict[Hashable, Hashable] = {}

    # ------------------------------------------------------------ queries

    def lease(self, client_guid: bytes, lease_key: bytes) -> Optional[Lease]:
        return self._leases.get((client_guid, lease_key))

    def get_open(self, open_id: Hashable) -> Optional[Open]:
        return self._opens.get(open_id)

    def caching_of(self, file_key: Hashable) -> int:
        """Union of the caching states currently held on file_key (lease bits)."""
        fs = self._files.get(file_key)
        if fs is None:
            return LEASE_NONE
        return self._union(fs)

    def kernel_breaking(self, file_key: Hashable) -> bool:
        """A kernel break of file_key still waits for SMB holders (acks, closes or
        timeouts) before the kernel lease may be downgraded or released."""
        fs = self._files.get(file_key)
        return fs is not None and fs.kernel_target is not None

    def is_waiting(self, waiter_id: Hashable) -> bool:
        return waiter_id in self._waiter_file

    def next_deadline(self) -> Optional[float]:
        ds = [l.deadline for l in self._leases.values() if l.breaking and l.deadline is not None]
        ds += [o.deadline for o in self._opens.values()
               if o.breaking_to is not None and o.deadline is not None]
        return min(ds) if ds else None

    # ------------------------------------------------------------ open

    def open_plain(self, open_id: Hashable, file_key: Hashable, owner_id: Hashable,
                   client_guid: bytes, access_mask: int) -> bool:
        """open() of a request that asks for no caching and meets no sharing violation,
        when nobody caches the file: nothing to break or wait for, nothing to grant,
        nothing changes for the kernel; the open is only recorded for later requests to
        see, and its answer is SUCCESS with GRANT_NONE. Returns False, recording nothing,
        when open() must decide. (The generic path comes to the same answer at several
        times the cost; this is a plain client's CREATE, without an OpenRequest.)"""
        fs = self._files.get(file_key)
        if fs is not None and (fs.leases or fs.waiters or fs.kernel_target is not None
                               or any(e.oplock != OPLOCK_NONE for e in fs.opens.values())):
            return False
        op = Open(open_id, file_key, owner_id, client_guid, access_mask)
        if fs is None:
            fs = self._files[file_key] = FileState()
        fs.opens[open_id] = op
        self._opens[open_id] = op
        return True

    def open(self, req: OpenRequest, now: float) -> OpenResult:
        if (req.oplock_level == OPLOCK_NONE and not req.sharing_violation
                and self.open_plain(req.open_id, req.file_key, req.owner_id,
                                    req.client_guid, req.access_mask)):
            return _OPLOCK_OK[OPLOCK_NONE]
        actions: list[Action] = []
        want_lease = None
        if req.oplock_level == OPLOCK_LEASE and req.lease is not None:
            want_lease = req.lease
            if req.dialect <= DIALECT_202:
                want_lease = None          # 2.0.2 has no leases
            elif want_lease.version >= 2 and req.dialect < DIALECT_300:
                want_lease = None          # v2 context ignored below 3.x (3.3.5.9.11)
            elif (req.client_guid, want_lease.lease_key) in self._leases and \
                    self._leases[(req.client_guid, want_lease.lease_key)].file_key \
                    != req.file_key:
                # The key is checked before a directory's lease request is dropped:
                # Windows rejects a key in use on another file even there
                # (smbtorture smb2.lease.request, "multiple files under the same key").
                return OpenResult(NtStatus.INVALID_PARAMETER)
            elif req.is_directory and (not self.directory_leases
                                       or req.dialect < DIALECT_300
                                       or want_lease.version < 2):
                want_lease = None          # directory leases: v2 on 3.x only
        my_lid: Optional[LeaseId] = None
        if want_lease is not None:
            my_lid = (req.client_guid, want_lease.lease_key)
            existing = self._leases.get(my_lid)
            if existing is not None and existing.file_key != req.file_key:
                return OpenResult(NtStatus.INVALID_PARAMETER)
            requested = want_lease.state & LEASE_RWH
        elif req.oplock_level in (OPLOCK_II, OPLOCK_EXCLUSIVE, OPLOCK_BATCH) \
                and not req.is_directory:
            requested = oplock_to_lease(req.oplock_level)
        else:
            requested = LEASE_NONE

        fs = self._files.get(req.file_key)
        if fs is None:
            fs = FileState()
        got_handle_lease = got_oplock = disallow_write = other_exclusive = False
        delay = False
        stat_open = is_oplock_stat_open(req.access_mask) and \
            req.create_disposition not in OVERWRITING_DISPOSITIONS
        lease_stat = is_lease_stat_open(req.access_mask) and \
            req.create_disposition not in OVERWRITING_DISPOSITIONS
        delay_mask = LEASE_H if req.sharing_violation else LEASE_W
        will_overwrite = req.create_disposition in OVERWRITING_DISPOSITIONS

        for e in list(fs.opens.values()):
            if e.lease_id is not None and e.lease_id == my_lid:
                continue                    # never break our own lease
            lease = self._leases[e.lease_id] if e.lease_id is not None else None
            e_type = lease.state if lease else oplock_to_lease(e.oplock)
            breaking = lease.breaking if lease else False
            if e_type & LEASE_H:
                got_handle_lease = True
            if lease is None and e.oplock != OPLOCK_NONE:
                got_oplock = True
            if e_type & LEASE_W:
                # Still exclusive after this loop only when not broken (a stat open):
                # an oplock request then fails (MS-FSA 2.1.5.17.2, Oplock.State
                # EXCLUSIVE -> STATUS_OPLOCK_NOT_GRANTED; smb2.oplock.exclusive4).
                other_exclusive = True
            # A write lease needs no other caching holder and no other non-stat open.
            if lease is not None or e.oplock != OPLOCK_NONE or \
                    not is_oplock_stat_open(e.access_mask):
                disallow_write = True
            if stat_open:
                continue                    # stat opens break nothing (still counted above)
            if lease is not None and lease_stat:
                continue
            break_to = e_type & ~delay_mask
            if will_overwrite:
                break_to &= ~(LEASE_H | LEASE_R)
            if e_type & ~break_to == 0:
                if breaking:
                    delay = True
                continue
            if will_overwrite:
                break_to = LEASE_NONE
            if lease is None:
                break_to &= ~(LEASE_H | LEASE_W)    # oplocks break to II or NONE only
            if lease is not None:
                self._break_lease(lease, break_to, now, actions)
            else:
                self._break_oplock(e, break_to, now, actions)
            if e_type & delay_mask:
                delay = True
            if breaking and not req.first_attempt:
                delay = True

        if delay:
            fs = self._files.setdefault(req.file_key, fs)
            fs.waiters[req.open_id] = None
            self._waiter_file[req.open_id] = req.file_key
            self._post_change(req.file_key, actions, resume=False)
            return OpenResult(NtStatus.PENDING, None, tuple(actions))
        if req.sharing_violation:
            if req.file_key in self._files:
                self._post_change(req.file_key, actions, resume=False)
            return OpenResult(NtStatus.SHARING_VIOLATION, None, tuple(actions))

        # ---- grant (Samba delay_for_oplock "grant:" section)
        granted = requested
        if want_lease is not None:
            granted = valid_lease_state(granted)   # H, W, WH -> NONE (smb2.lease.request)
        if req.has_brlocks:
            granted &= ~LEASE_R
        if disallow_write:
            granted &= ~LEASE_W
        if req.is_directory:
            granted &= ~LEASE_W
        granted &= req.cap
        if fs.kernel_target is not None:
            granted &= fs.kernel_target | LEASE_H
        granted = valid_lease_state(granted)
        if granted & LEASE_R and not granted & LEASE_W and not self.level2_oplocks:
            granted = LEASE_NONE

        fs = self._files.setdefault(req.file_key, fs)
        op = Open(req.open_id, req.file_key, req.owner_id, req.client_guid, req.access_mask)
        if want_lease is not None:
            if got_oplock:
                granted &= ~LEASE_H
            lease = self._leases.get(my_lid)
            if lease is None:
                lease = Lease(req.client_guid, want_lease.lease_key, req.file_key,
                              want_lease.version, granted, (want_lease.epoch + 1) & 0xFFFF,
                              is_directory=req.is_directory,
                              parent_lease_key=want_lease.parent_lease_key)
                self._leases[my_lid] = lease
                fs.leases[my_lid] = None
            else:
                # Upgrade only to a strict superset that is fully grantable, never while
                # breaking (Samba try_lease_upgrade; smb2.lease.upgrade/2/3).
                # Directories never hold W: a request for RWH on one is a request for RH.
                want = requested & ~LEASE_W if req.is_directory else requested
                if (lease.state & want) == lease.state and granted != lease.state \
                        and granted == want and not lease.breaking:
                    lease.state = granted
                    lease.epoch = (lease.epoch + 1) & 0xFFFF
            lease.opens[req.open_id] = None
            op.lease_id = my_lid
            flags = LEASE_FLAG_BREAK_IN_PROGRESS if lease.breaking else 0
            if lease.version >= 2 and lease.parent_lease_key is not None:
                flags |= LEASE_FLAG_PARENT_LEASE_KEY_SET
            grant = Grant(OPLOCK_LEASE, lease.lease_key, lease.state, flags, lease.version,
                          lease.epoch if lease.version >= 2 else 0, lease.parent_lease_key)
        else:
            if got_handle_lease or other_exclusive:
                granted = LEASE_NONE
            op.oplock = lease_to_oplock(granted)
            grant = _OPLOCK_GRANTS[op.oplock]
        fs.opens[req.open_id] = op
        self._opens[req.open_id] = op
        self._post_change(req.file_key, actions, resume=False)
        if not actions and want_lease is None:
            return _OPLOCK_OK[op.oplock]
        return OpenResult(NtStatus.SUCCESS, grant, tuple(actions))

    def cancel_wait(self, waiter_id: Hashable) -> None:
        """The waiting operation was cancelled (SMB2 CANCEL) or gave up."""
        fk = self._waiter_file.pop(waiter_id, None)
        if fk is not None and fk in self._files:
            self._files[fk].waiters.pop(waiter_id, None)
            self._gc_file(fk)

    # ------------------------------------------------------------ close / disconnect

    def close(self, open_id: Hashable, now: float = 0.0) -> list[Action]:
        actions: list[Action] = []
        op = self._opens.get(open_id)
        if op is None:
            return actions
        self._remove_open(op)
        fs = self._files[op.file_key]
        if (op.lease_id is None and op.oplock == OPLOCK_NONE and not fs.waiters
                and fs.kernel_target is None):
            # It cached nothing and nobody waits on the file: the union stands and
            # nothing resumes; only the file goes with its last open.
            if not fs.opens:
                del self._files[op.file_key]
            return actions
        self._post_change(op.file_key, actions)
        return actions

    def disconnect(self, owner_id: Hashable, now: float = 0.0) -> list[Action]:
        """The connection/client is gone: release all its opens at once."""
        actions: list[Action] = []
        files = []
        for op in [o for o in self._opens.values() if o.owner_id == owner_id]:
            self._remove_open(op)
            files.append(op.file_key)
        for fk in dict.fromkeys(files):
            self._post_change(fk, actions)
        return actions

    def _remove_open(self, op: Open) -> None:
        del self._opens[op.open_id]
        fs = self._files[op.file_key]
        fs.opens.pop(op.open_id, None)
        if op.lease_id is not None:
            lease = self._leases[op.lease_id]
            lease.opens.pop(op.open_id, None)
            if not lease.opens:
                # The lease dies with its last open (Samba removes the leases.tdb entry).
                del self._leases[op.lease_id]
                fs.leases.pop(op.lease_id, None)

    # ------------------------------------------------------------ data changes

    def write(self, open_id: Hashable, now: float = 0.0) -> list[Action]:
        """WRITE (also set EOF/allocation, byte-range lock): read caches of others die."""
        return self._contend_level2(open_id, now)

    set_eof = write
    set_allocation = write
    lock = write

    def _contend_level2(self, open_id: Hashable, now: float) -> list[Action]:
        actions: list[Action] = []
        op = self._opens.get(open_id)
        if op is None:
            return actions
        if op.caching(self) & LEASE_W:
            return actions          # a writer with W is alone on the file
        fs = self._files[op.file_key]
        for lid in list(fs.leases):
            if lid == op.lease_id:
                continue            # nobreakself
            lease = self._leases[lid]
            if lease.state & LEASE_R:
                self._break_lease(lease, LEASE_NONE, now, actions)
        # Every LEVEL_II oplock breaks to none, the writer's own included (levelii500).
        for e in list(fs.opens.values()):
            if e.lease_id is None and e.oplock == OPLOCK_II:
                self._break_oplock(e, LEASE_NONE, now, actions)
        self._post_change(op.file_key, actions)
        return actions

    # ------------------------------------------------------------ handle-caching breaks

    def rename(self, waiter_id: Hashable, open_id: Hashable, now: float) -> OpResult:
        """Rename of the file open as open_id: other leases lose H; the rename waits."""
        return self._break_handles(waiter_id, open_id, now)

    def set_delete_on_close(self, waiter_id: Hashable, open_id: Hashable,
                            now: float) -> OpResult:
        return self._break_handles(waiter_id, open_id, now)

    unlink = set_delete_on_close

    def _break_handles(self, waiter_id: Hashable, open_id: Hashable, now: float) -> OpResult:
        actions: list[Action] = []
        op = self._opens.get(open_id)
        if op is None:
            return OpResult(False, ())
        fs = self._files[op.file_key]
        delay = False
        for lid in list(fs.leases):
            if lid == op.lease_id:
                continue
            lease = self._leases[lid]
            if lease.state & LEASE_H:
                self._break_lease(lease, lease.state & ~LEASE_H, now, actions)
                delay = True
            elif lease.breaking:
                delay = True
        if delay:
            fs.waiters[waiter_id] = None
            self._waiter_file[waiter_id] = op.file_key
        self._post_change(op.file_key, actions, resume=False)
        return OpResult(delay, tuple(actions))

    def dir_changed(self, dir_key: Hashable, client_guid: Optional[bytes] = None,
                    parent_lease_key: Optional[bytes] = None,
                    now: float = 0.0) -> list[Action]:
        """A create/delete/rename inside directory dir_key: its leases break to none,
        except the lease named by the operation's ParentLeaseKey (same client)."""
        actions: list[Action] = []
        fs = self._files.get(dir_key)
        if fs is None:
            return actions
        for lid in list(fs.leases):
            if parent_lease_key is not None and lid == (client_guid, parent_lease_key):
                continue
            lease = self._leases[lid]
            if lease.state & (LEASE_R | LEASE_H):
                self._break_lease(lease, LEASE_NONE, now, actions)
        self._post_change(dir_key, actions)
        return actions

    # ------------------------------------------------------------ kernel

    def kernel_break(self, file_key: Hashable, target: int, now: float) -> list[Action]:
        """The kernel lease on file_key must drop to target (LEASE_R: downgrade,
        LEASE_NONE: release). Every SMB holder is broken as by an outside open."""
        actions: list[Action] = []
        target &= LEASE_R
        fs = self._files.get(file_key)
        if fs is None:
            actions.append(KernelBreakDone(file_key, target))
            return actions
        kt = fs.kernel_target
        kt = fs.kernel_target = target if kt is None else kt & target
        if fs.leases:
            keep = kt | (LEASE_H if kt else 0)
            for lid in list(fs.leases):
                lease = self._leases[lid]
                if lease.state & ~keep:
                    self._break_lease(lease, valid_lease_state(lease.state & keep), now,
                                      actions)
        # _break_oplock changes no open set: the dict is walked as it is.
        for e in fs.opens.values():
            if e.lease_id is None and _OPLOCK_CACHING[e.oplock] & ~kt:
                self._break_oplock(e, kt, now, actions)
        self._post_change(file_key, actions)
        return actions

    def limit_open(self, open_id: Hashable, allowed: int, now: float = 0.0) -> list[Action]:
        """The grant just made to open_id cannot be backed beyond `allowed` (lease bits):
        reduce it before the CREATE response tells the client (no break is sent: the
        client has not been told yet). A lease shared with earlier opens of the same key
        is reduced as a whole, as the kernel refusal holds for all of them."""
        actions: list[Action] = []
        op = self._opens.get(open_id)
        if op is None:
            return actions
        if op.lease_id is not None:
            lease = self._leases[op.lease_id]
            new = valid_lease_state(lease.state & allowed)
            if new != lease.state:
                lease.state = new
                if lease.breaking:
                    lease.breaking_to_required &= new
                    lease.breaking_to_requested &= new
        else:
            op.oplock = lease_to_oplock(valid_lease_state(oplock_to_lease(op.oplock) & allowed))
            if op.oplock == OPLOCK_NONE:
                op.breaking_to = None
                op.deadline = None
        self._post_change(op.file_key, actions, resume=False)
        return actions

    def reattach(self, open_id: Hashable, owner_id: Hashable, client_guid: bytes) -> None:
        """A durable open reconnected (MS-SMB2 3.3.5.9.7): its breaks go to the new
        owner. A leased open keeps its ClientGuid (the reconnect must match it)."""
        op = self._opens.get(open_id)
        if op is None:
            return
        op.owner_id = owner_id
        if op.lease_id is None:
            op.client_guid = client_guid

    def grant_of(self, open_id: Hashable) -> Optional[tuple[int, int]]:
        """(oplock level, lease state) open_id holds now."""
        op = self._opens.get(open_id)
        if op is None:
            return None
        if op.lease_id is not None:
            return OPLOCK_LEASE, self._leases[op.lease_id].state
        return op.oplock, oplock_to_lease(op.oplock)

    # ------------------------------------------------------------ acks

    def ack_lease(self, client_guid: bytes, lease_key: bytes, state: int,
                  now: float) -> AckResult:
        """LEASE_BREAK acknowledgment (MS-SMB2 3.3.5.22.2, Samba downgrade_lease)."""
        actions: list[Action] = []
        lease = self._leases.get((client_guid, lease_key))
        if lease is None:
            return AckResult(NtStatus.OBJECT_NAME_NOT_FOUND)
        if not lease.breaking:
            return AckResult(NtStatus.UNSUCCESSFUL)
        if state & ~lease.breaking_to_requested or (state and not state & LEASE_R):
            # Not a subset of the break, or not a lease state at all (W or H without R).
            return AckResult(NtStatus.REQUEST_NOT_ACCEPTED)
        lease.state = state
        if state & ~lease.breaking_to_required:
            # Not yet down to what the conflicts need: break again, one step at a time
            # (RWH -> RH -> R -> NONE as Windows does; smb2.lease.breaking3, v2_breaking3).
            to = lease.breaking_to_required
            if state & (LEASE_W | LEASE_H):
                to |= LEASE_R
            self._send_lease_break(lease, state, to, now, actions)
            if state & (LEASE_W | LEASE_H):
                lease.breaking_to_requested = to
                lease.deadline = now + self.break_timeout
            else:
                self._end_lease_break(lease, LEASE_NONE)
        else:
            self._end_lease_break(lease, state)
        self._post_change(lease.file_key, actions)
        return AckResult(NtStatus.SUCCESS, state, tuple(actions))

    def ack_oplock(self, open_id: Hashable, level: int, now: float,
                   owner_id: Optional[Hashable] = None) -> AckResult:
        """OPLOCK_BREAK acknowledgment (MS-SMB2 3.3.5.22.1)."""
        actions: list[Action] = []
        op = self._opens.get(open_id)
        if op is None or (owner_id is not None and op.owner_id != owner_id):
            return AckResult(NtStatus.FILE_CLOSED)
        if op.breaking_to is None:
            # The spec says INVALID_DEVICE_STATE; Windows and Samba (smbtorture
            # smb2.oplock.levelii500) answer INVALID_OPLOCK_PROTOCOL.
            return AckResult(NtStatus.INVALID_OPLOCK_PROTOCOL)
        sent = op.breaking_to
        if level == OPLOCK_LEASE or level not in (OPLOCK_NONE, OPLOCK_II,
                                                  OPLOCK_EXCLUSIVE, OPLOCK_BATCH):
            status, new = NtStatus.INVALID_PARAMETER, OPLOCK_NONE
        elif level > sent:
            # Acking to more than the break offered: the open drops to none (3.3.5.22.1).
            status, new = NtStatus.INVALID_OPLOCK_PROTOCOL, OPLOCK_NONE
        else:
            status, new = NtStatus.SUCCESS, level
        op.oplock = new
        op.breaking_to = None
        op.deadline = None
        self._post_change(op.file_key, actions)
        return AckResult(status, new, tuple(actions))

    # ------------------------------------------------------------ time

    def tick(self, now: float) -> list[Action]:
        """Fire break timeouts due at `now`: the holder is treated as NONE."""
        actions: list[Action] = []
        files = []
        for lease in list(self._leases.values()):
            if lease.breaking and lease.deadline is not None and lease.deadline <= now:
                self._end_lease_break(lease, LEASE_NONE)
                files.append(lease.file_key)
        for op in list(self._opens.values()):
            if op.breaking_to is not None and op.deadline is not None and op.deadline <= now:
                op.oplock = OPLOCK_NONE
                op.breaking_to = None
                op.deadline = None
                files.append(op.file_key)
        for fk in dict.fromkeys(files):
            self._post_change(fk, actions)
        return actions

    # ------------------------------------------------------------ internals

    def _break_lease(self, lease: Lease, break_to: int, now: float,
                     actions: list[Action]) -> None:
        """Samba process_oplock_break_message for a lease."""
        break_to &= lease.state
        if lease.breaking:
            # One break at a time: remember the stricter target, sent after the ack.
            lease.breaking_to_required &= break_to
            return
        if lease.state == break_to:
            return
        if lease.state == LEASE_R:
            # R -> NONE needs no ack: it takes effect now.
            old = lease.state
            lease.state = LEASE_NONE
            lease.epoch = (lease.epoch + 1) & 0xFFFF
            self._send_lease_break(lease, old, LEASE_NONE, now, actions, ack=False)
            return
        lease.breaking = True
        lease.breaking_to_required = break_to
        lease.breaking_to_requested = break_to
        lease.epoch = (lease.epoch + 1) & 0xFFFF
        lease.deadline = now + self.break_timeout
        self._send_lease_break(lease, lease.state, break_to, now, actions)

    def _send_lease_break(self, lease: Lease, current: int, new: int, now: float,
                          actions: list[Action], ack: Optional[bool] = None) -> None:
        if ack is None:
            ack = bool(current & (LEASE_W | LEASE_H))
        owners = tuple(dict.fromkeys(self._opens[o].owner_id for o in lease.opens))
        actions.append(SendLeaseBreak(
            owners[0] if owners else None, owners, lease.client_guid, lease.lease_key,
            lease.file_key, current, new, lease.epoch if lease.version >= 2 else 0, ack))

    def _end_lease_break(self, lease: Lease, state: int) -> None:
        lease.state = state
        lease.breaking = False
        lease.breaking_to_required = 0
        lease.breaking_to_requested = 0
        lease.deadline = None

    def _break_oplock(self, op: Open, break_to: int, now: float,
                      actions: list[Action]) -> None:
        if op.breaking_to is not None:
            return                  # one break at a time; the ack/timeout ends it
        oplock = op.oplock
        if oplock == OPLOCK_NONE:
            return                  # caches nothing
        to_level = OPLOCK_II if (break_to & LEASE_R and self.level2_oplocks) else OPLOCK_NONE
        if oplock == to_level:
            return
        if oplock == OPLOCK_II:
            # LEVEL_II -> NONE is sent without waiting for an ack.
            op.oplock = OPLOCK_NONE
            actions.append(SendOplockBreak(op.owner_id, op.open_id, op.file_key,
                                           OPLOCK_NONE, False))
            return
        op.breaking_to = to_level
        op.deadline = now + self.break_timeout
        actions.append(SendOplockBreak(op.owner_id, op.open_id, op.file_key, to_level, True))

    def _union(self, fs: FileState) -> int:
        u = LEASE_NONE
        if fs.leases:
            leases = self._leases
            for lid in fs.leases:
                u |= leases[lid].state
        for e in fs.opens.values():
            if e.lease_id is None:
                u |= _OPLOCK_CACHING[e.oplock]
        return u

    def _breaking_on(self, fs: FileState) -> bool:
        return any(self._leases[l].breaking for l in fs.leases) or \
            any(e.breaking_to is not None for e in fs.opens.values())

    def _post_change(self, file_key: Hashable, actions: list[Action],
                     resume: bool = True) -> None:
        fs = self._files.get(file_key)
        if fs is None:
            return
        union = self._union(fs)
        if union != fs.caching:
            actions.append(CachingChanged(file_key, fs.caching, union))
            fs.caching = union
        if fs.kernel_target is not None:
            keep = fs.kernel_target | (LEASE_H if fs.kernel_target else 0)
            # Current states stay up until acked, so the union alone says whether
            # anyone may still cache more than the kernel allows.
            if not union & ~keep:
                actions.append(KernelBreakDone(file_key, fs.kernel_target))
                fs.kernel_target = None
        if resume and fs.waiters:
            for w in list(fs.waiters):
                actions.append(Resume(w, file_key))
                self._waiter_file.pop(w, None)
            fs.waiters.clear()
        self._gc_file(file_key)

    def _gc_file(self, file_key: Hashable) -> None:
        fs = self._files.get(file_key)
        if fs is not None and not fs.opens and not fs.waiters and fs.kernel_target is None:
            del self._files[file_key]

    def iter_opens(self, file_key: Hashable) -> Iterable[Open]:
        fs = self._files.get(file_key)
        return list(fs.opens.values()) if fs else []
