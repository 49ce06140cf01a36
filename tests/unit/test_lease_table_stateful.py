"""Property-based test of the lease table: random opens, writes, acks (right and wrong),
closes, disconnects, renames, kernel breaks and clock jumps, with invariants checked after
every step. The machine plays the protocol layer: it re-runs waiting opens on Resume."""
from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from smbd_py.oplocks.table import LeaseTable
from smbd_py.oplocks.types import (
    FILE_OPEN_IF, FILE_OVERWRITE_IF, FILE_READ_ATTRIBUTES, LEASE_H, LEASE_NONE, LEASE_R,
    LEASE_RH, LEASE_RW, LEASE_RWH, LEASE_W, OPLOCK_BATCH, OPLOCK_EXCLUSIVE, OPLOCK_II,
    OPLOCK_LEASE, OPLOCK_NONE, LeaseRequest, OpenRequest, Resume, SendLeaseBreak,
    SendOplockBreak, is_lease_stat_open, is_oplock_stat_open, oplock_to_lease,
)
from smbd_py.wire.status import NtStatus

FILES = [("f", 1), ("f", 2), ("d", 3)]
CLIENTS = [(b"\x01" * 16, "c1"), (b"\x02" * 16, "c2"), (b"\x03" * 16, "c3")]
KEYS = [bytes([k]) * 16 for k in (0x11, 0x22, 0x33)]
STATES = [0, LEASE_R, LEASE_H, LEASE_W, LEASE_RH, LEASE_RW, LEASE_W | LEASE_H, LEASE_RWH]
ACCESS = [0x001F01FF, FILE_READ_ATTRIBUTES, 0x1, 0x2, 0x20000]
TIMEOUT = 35.0


class LeaseTableMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.t = LeaseTable(break_timeout=TIMEOUT)
        self.now = 0.0
        self.next_id = 1
        self.open_ids: list = []
        self.pending: dict = {}        # waiter_id -> ("open", req) | ("rename", open_id)
        self.epochs: dict = {}         # lease_id -> last epoch seen
        self.last_break: dict = {}     # lease_id -> last SendLeaseBreak

    # ---------------------------------------------------------------- helpers

    def _new_id(self):
        self.next_id += 1
        return self.next_id

    def _run(self, actions):
        """Carry out actions like the protocol layer would; checks every notification."""
        queue = list(actions)
        rounds = 0
        while queue:
            rounds += 1
            assert rounds < 10_000
            a = queue.pop(0)
            if isinstance(a, SendLeaseBreak):
                lease = self.t.lease(a.client_guid, a.lease_key)
                assert a.ack_required == bool(a.current_state & (LEASE_W | LEASE_H))
                assert a.new_state & ~a.current_state == 0
                if lease is not None:
                    owners = {self.t.get_open(o).owner_id for o in lease.opens}
                    assert a.owner_id in owners and set(a.owner_ids) <= owners
                    self.last_break[(a.client_guid, a.lease_key)] = a
            elif isinstance(a, SendOplockBreak):
                assert a.oplock_level in (OPLOCK_II, OPLOCK_NONE)
            elif isinstance(a, Resume):
                kind, what = self.pending.pop(a.waiter_id)
                if kind == "open":
                    req = dataclasses.replace(what, first_attempt=False)
                    queue.extend(self._open(req))
                else:
                    res = self.t.rename(a.waiter_id, what, self.now)
                    if res.must_wait:
                        self.pending[a.waiter_id] = ("rename", what)
                    queue.extend(res.actions)

    def _open(self, req):
        existed = req.lease is not None and \
            self.t.lease(req.client_guid, req.lease.lease_key) is not None
        r = self.t.open(req, self.now)
        if r.status == NtStatus.SUCCESS:
            self.open_ids.append(req.open_id)
            g = r.grant
            if req.oplock_level == OPLOCK_LEASE and g.lease_version:
                assert g.lease_state in (0, LEASE_R, LEASE_RH, LEASE_RW, LEASE_RWH)
                if not existed:     # an existing lease keeps (or upgrades within cap)
                    assert g.lease_state & ~req.cap == 0
                if req.is_directory:
                    assert not g.lease_state & LEASE_W
        elif r.status == NtStatus.PENDING:
            self.pending[req.open_id] = ("open", req)
        else:
            assert r.status in (NtStatus.SHARING_VIOLATION, NtStatus.INVALID_PARAMETER)
        return list(r.actions)

    # ---------------------------------------------------------------- rules

    @rule(c=st.sampled_from(CLIENTS), key=st.sampled_from(KEYS),
          kind=st.sampled_from(["lease1", "lease2", "oplock"]), sv=st.booleans())
    def open_greedy(self, c, key, kind, sv):
        # The common case, weighted up: full access asking for everything on one file.
        self.open(FILES[0], c, kind, key, LEASE_RWH, OPLOCK_BATCH, 0x001F01FF, False, sv,
                  LEASE_RWH, None)

    @rule(f=st.sampled_from(FILES[:1] * 3 + FILES[1:]), c=st.sampled_from(CLIENTS),
          kind=st.sampled_from(["lease1", "lease2", "oplock"]),
          key=st.sampled_from(KEYS), state=st.sampled_from(STATES),
          level=st.sampled_from([OPLOCK_NONE, OPLOCK_II, OPLOCK_EXCLUSIVE, OPLOCK_BATCH]),
          access=st.sampled_from(ACCESS), overwrite=st.booleans(), sv=st.booleans(),
          cap=st.sampled_from([LEASE_RWH] * 4 + [LEASE_R, LEASE_NONE]),
          parent=st.sampled_from([None] + KEYS))
    def open_any(self, f, c, kind, key, state, level, access, overwrite, sv, cap, parent):
        self.open(f, c, kind, key, state, level, access, overwrite, sv, cap, parent)

    def open(self, f, c, kind, key, state, level, access, overwrite, sv, cap, parent):
        guid, owner = c
        is_dir = f[0] == "d"
        lease = None
        if kind != "oplock":
            lease = LeaseRequest(key, state, 2 if kind == "lease2" else 1, 7,
                                 parent if kind == "lease2" else None)
        req = OpenRequest(self._new_id(), f, owner, guid, 0x311,
                          OPLOCK_LEASE if lease else level, lease, access,
                          FILE_OVERWRITE_IF if overwrite and not is_dir else FILE_OPEN_IF,
                          is_dir, sv, False, cap, True)
        self._run(self._open(req))
        if not is_dir and f[0] == "f":
            self._run(self.t.dir_changed(("d", 3), guid, parent))

    @rule(data=st.data())
    def close(self, data):
        if not self.open_ids:
            return
        oid = data.draw(st.sampled_from(self.open_ids))
        self.open_ids.remove(oid)
        self._run(self.t.close(oid, self.now))

    @rule(data=st.data(), how=st.sampled_from(["write", "lock", "set_eof"]))
    def write(self, data, how):
        if not self.open_ids:
            return
        oid = data.draw(st.sampled_from(self.open_ids))
        self._run(getattr(self.t, how)(oid, self.now))

    @rule(data=st.data())
    def rename(self, data):
        if not self.open_ids:
            return
        oid = data.draw(st.sampled_from(self.open_ids))
        wid = ("ren", self._new_id())
        res = self.t.rename(wid, oid, self.now)
        if res.must_wait:
            self.pending[wid] = ("rename", oid)
        self._run(res.actions)

    @rule(c=st.sampled_from(CLIENTS), key=st.sampled_from(KEYS), right=st.booleans(),
          state=st.sampled_from(STATES))
    def ack_lease(self, c, key, right, state):
        guid, _ = c
        lease = self.t.lease(guid, key)
        b = self.last_break.get((guid, key))
        if right and b is not None:
            state = b.new_state
        was_breaking = lease is not None and lease.breaking
        r = self.t.ack_lease(guid, key, state, self.now)
        if lease is None:
            assert r.status == NtStatus.OBJECT_NAME_NOT_FOUND
        elif not was_breaking:
            assert r.status == NtStatus.UNSUCCESSFUL
        if r.status == NtStatus.SUCCESS:
            assert r.level == state
        self._run(r.actions)

    @rule(data=st.data(), level=st.sampled_from([OPLOCK_NONE, OPLOCK_II, OPLOCK_BATCH,
                                                  OPLOCK_LEASE, 0x42]))
    def ack_oplock(self, data, level):
        if not self.open_ids:
            r = self.t.ack_oplock(999_999, level, self.now)
            assert r.status == NtStatus.FILE_CLOSED
            return
        oid = data.draw(st.sampled_from(self.open_ids))
        was_breaking = self.t.get_open(oid).breaking_to is not None
        r = self.t.ack_oplock(oid, level, self.now)
        if not was_breaking:
            assert r.status == NtStatus.INVALID_OPLOCK_PROTOCOL
        self._run(r.actions)

    @rule(c=st.sampled_from(CLIENTS))
    def disconnect(self, c):
        _, owner = c
        gone = [o for o in self.open_ids if self.t.get_open(o).owner_id == owner]
        for o in gone:
            self.open_ids.remove(o)
        for wid, (kind, what) in list(self.pending.items()):
            if kind == "open" and what.owner_id == owner:
                self.t.cancel_wait(wid)
                del self.pending[wid]
        self._run(self.t.disconnect(owner, self.now))

    @rule(f=st.sampled_from(FILES[:2]), kt=st.sampled_from([LEASE_R, LEASE_NONE]))
    def kernel_break(self, f, kt):
        self._run(self.t.kernel_break(f, kt, self.now))

    @rule(dt=st.sampled_from([0.0, 0.5, 10.0, 34.9, 35.0, 100.0]))
    def advance(self, dt):
        self.now += dt
        self._run(self.t.tick(self.now))

    @rule()
    def time_passes_everything_settles(self):
        # Clients that never ack: after the timeout nothing is breaking and nobody waits.
        for _ in range(50):
            dl = self.t.next_deadline()
            if dl is None:
                break
            self.now = max(self.now, dl)
            self._run(self.t.tick(self.now))
        assert self.t.next_deadline() is None
        for lease in self.t._leases.values():
            assert not lease.breaking
        assert not self.pending, self.pending

    # ---------------------------------------------------------------- invariants

    @invariant()
    def no_conflicting_caching(self):
        t = self.t
        if not hasattr(self, "t"):
            return
        for fk in FILES:
            holders = []
            for lid, _ in t._files.get(fk, None).leases.items() if fk in t._files else []:
                lease = t._leases[lid]
                nonstat = any(not is_lease_stat_open(t.get_open(o).access_mask)
                              for o in lease.opens)
                holders.append((("L", lid), lease.state, nonstat))
            for op in t.iter_opens(fk):
                if op.lease_id is None:
                    holders.append((("O", op.open_id), oplock_to_lease(op.oplock),
                                    not is_oplock_stat_open(op.access_mask)))
            for a, sa, na in holders:
                for b, sb, nb in holders:
                    if a == b or not (na and nb):
                        continue
                    if sa & LEASE_W:
                        assert sb == LEASE_NONE, (fk, a, sa, b, sb)
                    if a[0] == "O" and sa == LEASE_R:
                        assert not sb & LEASE_H, (fk, a, sa, b, sb)

    @invariant()
    def epochs_only_increase(self):
        if not hasattr(self, "t"):
            return
        for lid, lease in self.t._leases.items():
            prev = self.epochs.get(lid)
            if prev is not None and lid in self.epochs:
                assert lease.epoch >= prev or prev - lease.epoch > 0x8000
            self.epochs[lid] = lease.epoch
        for lid in list(self.epochs):
            if lid not in self.t._leases:
                del self.epochs[lid]

    @invariant()
    def waiters_have_a_pending_break(self):
        if not hasattr(self, "t"):
            return
        for wid in self.pending:
            assert self.t.is_waiting(wid)
            fk = self.t._waiter_file[wid]
            fs = self.t._files[fk]
            breaking = any(self.t._leases[l].breaking for l in fs.leases) or \
                any(o.breaking_to is not None for o in fs.opens.values())
            assert breaking, (wid, fk)

    @invariant()
    def deadlines_within_timeout(self):
        if not hasattr(self, "t"):
            return
        dl = self.t.next_deadline()
        if dl is not None:
            assert dl <= self.now + TIMEOUT + 1e-9


    @invariant()
    def every_break_ends_by_ack_close_or_timeout(self):
        # A break still open has a deadline within the timeout: if no ack or close ends
        # it, tick() will (time_passes_everything_settles drives that to the end).
        if not hasattr(self, "t"):
            return
        for lease in self.t._leases.values():
            if lease.breaking:
                assert lease.deadline is not None
                assert lease.deadline <= self.now + TIMEOUT + 1e-9
        for op in self.t._opens.values():
            if op.breaking_to is not None:
                assert op.deadline is not None
                assert op.deadline <= self.now + TIMEOUT + 1e-9


TestLeaseTableStateful = LeaseTableMachine.TestCase
TestLeaseTableStateful.settings = settings(
    max_examples=300, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
