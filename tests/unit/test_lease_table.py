"""Scenario tests for smbd_py.oplocks.table, each named after the smbtorture test whose
expectations it reproduces (source4/torture/smb2/lease.c and oplock.c)."""
from __future__ import annotations

import itertools

import pytest

from smbd_py.oplocks.table import LeaseTable
from smbd_py.oplocks.types import (
    FILE_OPEN, FILE_OPEN_IF, FILE_OVERWRITE_IF, FILE_READ_ATTRIBUTES, LEASE_FLAG_BREAK_IN_PROGRESS,
    LEASE_FLAG_PARENT_LEASE_KEY_SET, LEASE_H, LEASE_NONE, LEASE_R, LEASE_RH, LEASE_RW,
    LEASE_RWH, LEASE_W, OPLOCK_BATCH, OPLOCK_EXCLUSIVE, OPLOCK_II, OPLOCK_LEASE, OPLOCK_NONE,
    READ_CONTROL, SYNCHRONIZE, CachingChanged, KernelBreakDone, LeaseRequest, OpenRequest,
    Resume, SendLeaseBreak, SendOplockBreak,
)
from smbd_py.wire.status import NtStatus

G1 = b"\x01" * 16
G2 = b"\x02" * 16
K1 = b"\x11" * 16
K2 = b"\x22" * 16
K3 = b"\x33" * 16
F = ("dev", 1)
F2 = ("dev", 2)
D = ("dev", 100)
ALL = 0x001F01FF

_ids = itertools.count(1)


def L(s: str) -> int:
    return (LEASE_R if "R" in s else 0) | (LEASE_W if "W" in s else 0) | \
        (LEASE_H if "H" in s else 0)


def lopen(t, key, state, *, file=F, guid=G1, owner="c1", v=1, epoch=0, oid=None, now=0.0,
          access=ALL, disp=FILE_OPEN_IF, sv=False, dialect=0x311, directory=False,
          parent=None, cap=LEASE_RWH, first=True):
    oid = oid if oid is not None else next(_ids)
    req = OpenRequest(oid, file, owner, guid, dialect, OPLOCK_LEASE,
                      LeaseRequest(key, L(state) if isinstance(state, str) else state, v,
                                   epoch, parent),
                      access, disp, directory, sv, False, cap, first)
    return oid, t.open(req, now)


def oopen(t, level, *, file=F, guid=G1, owner="c1", oid=None, now=0.0, access=ALL,
          disp=FILE_OPEN_IF, sv=False, first=True, cap=LEASE_RWH):
    oid = oid if oid is not None else next(_ids)
    req = OpenRequest(oid, file, owner, guid, 0x311, level, None, access, disp, False, sv,
                      False, cap, first)
    return oid, t.open(req, now)


def lease_breaks(actions):
    return [a for a in actions if isinstance(a, SendLeaseBreak)]


def oplock_breaks(actions):
    return [a for a in actions if isinstance(a, SendOplockBreak)]


def resumes(actions):
    return [a.waiter_id for a in actions if isinstance(a, Resume)]


@pytest.fixture
def t():
    return LeaseTable()


# ------------------------------------------------------------------ smb2.lease.request

@pytest.mark.parametrize("req,expected", [
    ("", ""), ("R", "R"), ("H", ""), ("W", ""), ("RH", "RH"), ("RW", "RW"), ("HW", ""),
    ("RHW", "RHW")])
def test_lease_request_grantable_states(t, req, expected):
    _, r = lopen(t, K1, req)
    assert r.status == NtStatus.SUCCESS
    assert r.grant.oplock_level == OPLOCK_LEASE
    assert r.grant.lease_state == L(expected)
    assert r.grant.lease_flags == 0


def test_lease_request_same_key_other_file_rejected(t):
    lopen(t, K1, "RHW")
    _, r = lopen(t, K1, "RHW", file=F2)
    assert r.status == NtStatus.INVALID_PARAMETER
    assert t.caching_of(F2) == LEASE_NONE and t.lease(G1, K1).file_key == F


def test_lease_request_same_key_other_client_is_another_lease(t):
    lopen(t, K1, "RHW")
    _, r = lopen(t, K1, "RHW", guid=G2, owner="c2")
    assert r.status == NtStatus.PENDING          # G2/K1 is a different lease: break


def test_lease_key_reusable_after_last_close(t):
    oid, _ = lopen(t, K1, "RHW")
    t.close(oid)
    _, r = lopen(t, K1, "RHW", file=F2)
    assert r.status == NtStatus.SUCCESS and r.grant.lease_state == LEASE_RWH


def test_lease_request_directory_v1_gets_no_lease(t):
    _, r = lopen(t, K2, "RHW", file=D, directory=True, v=1)
    assert r.status == NtStatus.SUCCESS
    assert r.grant.oplock_level == OPLOCK_NONE and r.grant.lease_version == 0


def test_lease_request_on_smb202_gets_nothing(t):
    _, r = lopen(t, K1, "RHW", dialect=0x202)
    assert r.grant.oplock_level == OPLOCK_NONE and r.grant.lease_version == 0


def test_lease_v2_context_ignored_on_smb21(t):
    _, r = lopen(t, K1, "RHW", dialect=0x210, v=2)
    assert r.grant.oplock_level == OPLOCK_NONE


# ------------------------------------------------------------------ smb2.lease.upgrade*

def test_lease_upgrade(t):
    h, r = lopen(t, K1, "RH")
    assert r.grant.lease_state == LEASE_RH
    _, r = lopen(t, K1, "RW")
    assert r.grant.lease_state == LEASE_RH          # sidegrade refused
    _, r = lopen(t, K1, "RHW")
    assert r.grant.lease_state == LEASE_RWH
    _, r = lopen(t, K1, "RH")
    assert r.grant.lease_state == LEASE_RWH         # no downgrade by re-open


UPGRADE2 = [("", "", ""), ("", "R", "R"), ("", "RH", "RH"), ("", "RW", "RW"),
            ("", "RWH", "RWH"), ("R", "", "R"), ("R", "R", "R"), ("R", "RH", "RH"),
            ("R", "RW", "RW"), ("R", "RWH", "RWH"), ("RH", "", "RH"), ("RH", "R", "RH"),
            ("RH", "RH", "RH"), ("RH", "RW", "RH"), ("RH", "RWH", "RWH"), ("RW", "", "RW"),
            ("RW", "R", "RW"), ("RW", "RH", "RW"), ("RW", "RW", "RW"), ("RW", "RWH", "RWH"),
            ("RWH", "", "RWH"), ("RWH", "R", "RWH"), ("RWH", "RH", "RWH"),
            ("RWH", "RW", "RWH"), ("RWH", "RWH", "RWH")]


@pytest.mark.parametrize("initial,upgrade,expected", UPGRADE2)
def test_lease_upgrade2(t, initial, upgrade, expected):
    _, r = lopen(t, K1, initial)
    assert r.grant.lease_state == L(initial)
    _, r = lopen(t, K1, upgrade)
    assert r.status == NtStatus.SUCCESS
    assert r.grant.lease_state == L(expected)
    assert not lease_breaks(r.actions)


UPGRADE3 = [("R", "R", "", "R"), ("R", "R", "R", "R"), ("R", "R", "RW", "R"),
            ("R", "R", "RH", "RH"), ("R", "R", "RHW", "R"), ("R", "RH", "", "R"),
            ("R", "RH", "R", "R"), ("R", "RH", "RW", "R"), ("R", "RH", "RH", "RH"),
            ("R", "RH", "RHW", "R"), ("RH", "R", "", "RH"), ("RH", "R", "R", "RH"),
            ("RH", "R", "RW", "RH"), ("RH", "R", "RH", "RH"), ("RH", "R", "RHW", "RH"),
            ("RH", "RH", "", "RH"), ("RH", "RH", "R", "RH"), ("RH", "RH", "RW", "RH"),
            ("RH", "RH", "RH", "RH"), ("RH", "RH", "RHW", "RH")]


@pytest.mark.parametrize("held1,held2,upgrade,expected", UPGRADE3)
def test_lease_upgrade3(t, held1, held2, upgrade, expected):
    lopen(t, K1, held1)
    _, r2 = lopen(t, K2, held2)
    assert r2.grant.lease_state == L(held2)
    _, r = lopen(t, K1, upgrade)
    assert r.status == NtStatus.SUCCESS
    assert r.grant.lease_state == L(expected)
    assert not lease_breaks(r.actions)
    assert t.lease(G1, K2).state == L(held2)


# ------------------------------------------------------------------ smb2.lease.break

BREAK_RESULTS = [("R", "R", "R", "R"), ("R", "RH", "R", "RH"), ("R", "RW", "R", "R"),
                 ("R", "RHW", "R", "RH"), ("RH", "R", "RH", "R"), ("RH", "RH", "RH", "RH"),
                 ("RH", "RW", "RH", "R"), ("RH", "RHW", "RH", "RH"), ("RW", "R", "R", "R"),
                 ("RW", "RH", "R", "RH"), ("RW", "RW", "R", "R"), ("RW", "RHW", "R", "RH"),
                 ("RHW", "R", "RH", "R"), ("RHW", "RH", "RH", "RH"), ("RHW", "RW", "RH", "R"),
                 ("RHW", "RHW", "RH", "RH")]


@pytest.mark.parametrize("held,contend,brokento,granted", BREAK_RESULTS)
def test_lease_break_results(t, held, contend, brokento, granted):
    lopen(t, K1, held)
    oid = next(_ids)
    _, r = lopen(t, K2, contend, oid=oid, now=1.0)
    if L(held) == L(brokento):
        assert r.status == NtStatus.SUCCESS and not lease_breaks(r.actions)
    else:
        (b,) = lease_breaks(r.actions)
        assert (b.lease_key, b.current_state, b.new_state) == (K1, L(held), L(brokento))
        assert b.ack_required                   # held W
        assert r.status == NtStatus.PENDING
        ack = t.ack_lease(G1, K1, L(brokento), 2.0)
        assert ack.status == NtStatus.SUCCESS and ack.level == L(brokento)
        assert resumes(ack.actions) == [oid]
        _, r = lopen(t, K2, contend, oid=oid, now=2.0, first=False)
    assert r.status == NtStatus.SUCCESS
    assert r.grant.lease_state == L(granted)


# ------------------------------------------------------------------ smb2.lease.oplock

@pytest.mark.parametrize("held,contend,brokento,granted", [
    ("R", OPLOCK_II, "R", OPLOCK_II), ("R", OPLOCK_EXCLUSIVE, "R", OPLOCK_II),
    ("R", OPLOCK_BATCH, "R", OPLOCK_II), ("RH", OPLOCK_II, "RH", OPLOCK_NONE),
    ("RH", OPLOCK_EXCLUSIVE, "RH", OPLOCK_NONE), ("RH", OPLOCK_BATCH, "RH", OPLOCK_NONE),
    ("RW", OPLOCK_II, "R", OPLOCK_II), ("RW", OPLOCK_EXCLUSIVE, "R", OPLOCK_II),
    ("RW", OPLOCK_BATCH, "R", OPLOCK_II), ("RHW", OPLOCK_II, "RH", OPLOCK_NONE),
    ("RHW", OPLOCK_EXCLUSIVE, "RH", OPLOCK_NONE), ("RHW", OPLOCK_BATCH, "RH", OPLOCK_NONE)])
def test_lease_vs_oplock(t, held, contend, brokento, granted):
    lopen(t, K1, held)
    oid = next(_ids)
    _, r = oopen(t, contend, oid=oid)
    if L(held) != L(brokento):
        (b,) = lease_breaks(r.actions)
        assert b.new_state == L(brokento)
        assert r.status == NtStatus.PENDING
        t.ack_lease(G1, K1, L(brokento), 1.0)
        _, r = oopen(t, contend, oid=oid, first=False)
    assert r.status == NtStatus.SUCCESS
    assert r.grant.oplock_level == granted


@pytest.mark.parametrize("held,contend,broken,granted", [
    (OPLOCK_II, "R", OPLOCK_II, "R"), (OPLOCK_II, "RH", OPLOCK_II, "R"),
    (OPLOCK_II, "RW", OPLOCK_II, "R"), (OPLOCK_II, "RHW", OPLOCK_II, "R"),
    (OPLOCK_EXCLUSIVE, "R", OPLOCK_II, "R"), (OPLOCK_EXCLUSIVE, "RH", OPLOCK_II, "R"),
    (OPLOCK_EXCLUSIVE, "RW", OPLOCK_II, "R"), (OPLOCK_EXCLUSIVE, "RHW", OPLOCK_II, "R"),
    (OPLOCK_BATCH, "R", OPLOCK_II, "R"), (OPLOCK_BATCH, "RH", OPLOCK_II, "R"),
    (OPLOCK_BATCH, "RW", OPLOCK_II, "R"), (OPLOCK_BATCH, "RHW", OPLOCK_II, "R")])
def test_oplock_vs_lease(t, held, contend, broken, granted):
    h, r = oopen(t, held)
    assert r.grant.oplock_level == held
    oid = next(_ids)
    _, r = lopen(t, K1, contend, oid=oid)
    if held != broken:
        (b,) = oplock_breaks(r.actions)
        assert (b.open_id, b.oplock_level, b.ack_required) == (h, broken, True)
        assert r.status == NtStatus.PENDING
        a = t.ack_oplock(h, broken, 1.0)
        assert a.status == NtStatus.SUCCESS and a.level == broken
        assert resumes(a.actions) == [oid]
        _, r = lopen(t, K1, contend, oid=oid, first=False)
    assert r.status == NtStatus.SUCCESS
    assert r.grant.lease_state == L(granted)


# ------------------------------------------------------------------ nobreakself / write

def test_lease_nobreakself_and_write_breaks_other_read_leases(t):
    h1, _ = lopen(t, K1, "R")
    h2, _ = lopen(t, K2, "R")
    acts = t.write(h1)
    (b,) = lease_breaks(acts)
    assert (b.lease_key, b.current_state, b.new_state, b.ack_required) == (K2, LEASE_R, 0, False)
    assert t.lease(G1, K2).state == LEASE_NONE and t.lease(G1, K1).state == LEASE_R
    _, r = lopen(t, K2, "R")
    assert r.grant.lease_state == LEASE_R     # upgrade back from NONE
    (b,) = lease_breaks(t.write(h2))
    assert b.lease_key == K1


def test_write_by_rh_holder_breaks_other_rh_without_waiting(t):
    h1, _ = lopen(t, K1, "RH")
    lopen(t, K2, "RH")
    acts = t.write(h1)
    (b,) = lease_breaks(acts)
    assert (b.current_state, b.new_state, b.ack_required) == (LEASE_RH, 0, True)


def test_write_with_w_lease_breaks_nothing(t):
    h1, _ = lopen(t, K1, "RWH")
    assert t.write(h1) == []


# ------------------------------------------------------------------ smb2.lease.statopen*

def test_lease_statopen(t):
    h, r = lopen(t, K1, "RWH")
    t.close(h)
    h2, r = lopen(t, K1, "RWH", access=FILE_READ_ATTRIBUTES)
    assert r.grant.lease_state == LEASE_RWH
    h1, r = lopen(t, K1, "")
    assert r.grant.lease_state == LEASE_RWH and not lease_breaks(r.actions)
    t.close(h1)
    oid = next(_ids)
    _, r = lopen(t, K2, "RWH", oid=oid)
    (b,) = lease_breaks(r.actions)
    assert (b.current_state, b.new_state) == (LEASE_RWH, LEASE_RH)
    t.ack_lease(G1, K1, LEASE_RH, 1.0)
    _, r = lopen(t, K2, "RWH", oid=oid, first=False)
    assert r.grant.lease_state == LEASE_RH


def test_lease_statopen2_stat_open_without_lease_does_not_prevent_w(t):
    lopen(t, K1, "RWH", access=0x2)
    _, r = oopen(t, OPLOCK_NONE, access=FILE_READ_ATTRIBUTES, disp=FILE_OPEN)
    assert r.status == NtStatus.SUCCESS and not lease_breaks(r.actions)
    _, r = lopen(t, K1, "RWH", access=0x2)
    assert r.grant.lease_state == LEASE_RWH


def test_lease_statopen3(t):
    oopen(t, OPLOCK_NONE, access=FILE_READ_ATTRIBUTES, disp=FILE_OPEN)
    _, r = lopen(t, K1, "RWH", access=0x2)
    assert r.grant.lease_state == LEASE_RWH


@pytest.mark.parametrize("mask,is_stat", [
    (0x1, False), (0x2, False), (0x8, False), (0x10, False), (0x20, False),
    (FILE_READ_ATTRIBUTES, True), (0x100, True), (0x10000, False), (READ_CONTROL, True),
    (0x40000, False), (0x80000, False), (SYNCHRONIZE, True)])
def test_lease_statopen4(t, mask, is_stat):
    lopen(t, K1, "RWH")
    _, r = oopen(t, OPLOCK_NONE, access=mask, disp=FILE_OPEN)
    assert bool(lease_breaks(r.actions)) is (not is_stat)


# ------------------------------------------------------------------ breaking / multibreak

def test_break_in_progress_flag_on_reopen_by_breaking_lease(t):
    """smb2.lease.breaking1/2: the lease's own re-open does not wait and is told."""
    lopen(t, K1, "RWH")
    _, r = lopen(t, K2, "RWH")
    assert r.status == NtStatus.PENDING
    _, r = lopen(t, K1, "RWH")
    assert r.status == NtStatus.SUCCESS
    assert r.grant.lease_state == LEASE_RWH
    assert r.grant.lease_flags & LEASE_FLAG_BREAK_IN_PROGRESS


def test_stepwise_breaks_rwh_rh_r_none(t):
    """smb2.lease.breaking3 / multibreak: a second conflict while breaking narrows the
    target; after each ack the next step is sent."""
    lopen(t, K1, "RWH", v=2, epoch=0)
    oid2 = next(_ids)
    _, r = lopen(t, K2, "RWH", oid=oid2, now=0.0)
    (b,) = lease_breaks(r.actions)
    assert (b.current_state, b.new_state, b.new_epoch) == (LEASE_RWH, LEASE_RH, 2)
    oid3 = next(_ids)
    _, r = oopen(t, OPLOCK_NONE, oid=oid3, disp=FILE_OVERWRITE_IF, now=1.0)
    assert r.status == NtStatus.PENDING and not lease_breaks(r.actions)
    a = t.ack_lease(G1, K1, LEASE_RH, 2.0)
    assert a.status == NtStatus.SUCCESS and a.level == LEASE_RH
    (b,) = lease_breaks(a.actions)
    assert (b.current_state, b.new_state, b.ack_required) == (LEASE_RH, LEASE_R, True)
    assert set(resumes(a.actions)) == {oid2, oid3}
    a = t.ack_lease(G1, K1, LEASE_R, 3.0)
    (b,) = lease_breaks(a.actions)
    assert (b.current_state, b.new_state, b.ack_required) == (LEASE_R, 0, False)
    assert t.lease(G1, K1).state == LEASE_NONE and not t.lease(G1, K1).breaking


def test_ack_validation(t):
    lopen(t, K1, "RWH")
    assert t.ack_lease(G1, K3, LEASE_RH, 0).status == NtStatus.OBJECT_NAME_NOT_FOUND
    assert t.ack_lease(G1, K1, LEASE_RH, 0).status == NtStatus.UNSUCCESSFUL
    lopen(t, K2, "RWH")
    assert t.ack_lease(G1, K1, LEASE_RWH, 0).status == NtStatus.REQUEST_NOT_ACCEPTED
    assert t.ack_lease(G1, K1, LEASE_RW, 0).status == NtStatus.REQUEST_NOT_ACCEPTED
    # acking less than offered is fine
    a = t.ack_lease(G1, K1, LEASE_R, 0)
    assert a.status == NtStatus.SUCCESS and t.lease(G1, K1).state == LEASE_R


def test_open_meeting_breaking_lease_waits_but_r_to_none_never_waits(t):
    lopen(t, K1, "RH")
    h2, r = lopen(t, K2, "R", sv=True)      # sharing violation -> H break, waits
    assert r.status == NtStatus.PENDING
    _, r = lopen(t, K3, "R")                # K1 breaking (ack needed): wait as well
    assert r.status == NtStatus.PENDING
    t2 = LeaseTable()
    lopen(t2, K1, "R")
    h, _ = lopen(t2, K2, "R")
    acts = t2.write(h)                      # R -> NONE at once
    assert not t2.lease(G1, K1).breaking
    _, r = lopen(t2, K3, "R")
    assert r.status == NtStatus.SUCCESS


# ------------------------------------------------------------------ v2 epochs

def test_v2_epoch(t):
    """smb2.lease.v2_epoch1/2: grant answers epoch+1; upgrades and breaks increment."""
    _, r = lopen(t, K1, "RH", v=2, epoch=0x4711)
    assert r.grant.epoch == 0x4712 and r.grant.lease_version == 2
    _, r = lopen(t, K1, "RWH", v=2, epoch=0x4711)
    assert r.grant.epoch == 0x4713 and r.grant.lease_state == LEASE_RWH
    _, r = lopen(t, K2, "RWH", v=2, owner="c2")
    (b,) = lease_breaks(r.actions)
    assert b.new_epoch == 0x4714
    _, r = lopen(t, K1, "R", v=1, oid=next(_ids), file=F2, guid=G2)
    assert r.grant.epoch == 0


def test_v1_break_epoch_zero(t):
    lopen(t, K1, "RWH", v=1, epoch=7)
    _, r = lopen(t, K2, "RWH")
    assert lease_breaks(r.actions)[0].new_epoch == 0


# ------------------------------------------------------------------ timeouts

def test_lease_timeout(t):
    """smb2.lease.timeout: no ack -> NONE after 35 s, waiter proceeds, late ack fails."""
    lopen(t, K1, "RWH", now=100.0)
    oid = next(_ids)
    _, r = lopen(t, K2, "RWH", oid=oid, now=100.0)
    assert r.status == NtStatus.PENDING
    assert t.next_deadline() == pytest.approx(135.0)
    assert t.tick(134.9) == []
    acts = t.tick(135.0)
    assert resumes(acts) == [oid]
    assert t.lease(G1, K1).state == LEASE_NONE
    assert t.next_deadline() is None
    _, r = lopen(t, K2, "RWH", oid=oid, now=135.0, first=False)
    assert r.status == NtStatus.SUCCESS and r.grant.lease_state == LEASE_RH
    assert t.ack_lease(G1, K1, LEASE_RH, 136.0).status == NtStatus.UNSUCCESSFUL


def test_oplock_timeout_batch22a(t):
    t = LeaseTable(break_timeout=35.0)
    h1, _ = oopen(t, OPLOCK_BATCH, now=0.0)
    oid = next(_ids)
    _, r = oopen(t, OPLOCK_BATCH, oid=oid, sv=True, now=0.0)
    assert r.status == NtStatus.PENDING
    acts = t.tick(35.0)
    assert resumes(acts) == [oid]
    assert t.get_open(h1).oplock == OPLOCK_NONE
    assert t.ack_oplock(h1, OPLOCK_II, 36.0).status == NtStatus.INVALID_OPLOCK_PROTOCOL


def test_configurable_timeout():
    t = LeaseTable(break_timeout=2.5)
    lopen(t, K1, "RWH")
    lopen(t, K2, "RWH")
    assert t.next_deadline() == 2.5


# ------------------------------------------------------------------ close / disconnect

def test_holder_close_resumes_waiter(t):
    h1, _ = lopen(t, K1, "RWH")
    oid = next(_ids)
    lopen(t, K2, "RWH", oid=oid)
    acts = t.close(h1)
    assert resumes(acts) == [oid]
    assert t.lease(G1, K1) is None
    assert t.ack_lease(G1, K1, LEASE_RH, 1).status == NtStatus.OBJECT_NAME_NOT_FOUND


def test_disconnect_releases_everything(t):
    lopen(t, K1, "RWH", owner="A")
    oopen(t, OPLOCK_BATCH, file=F2, owner="A")
    w1 = next(_ids)
    lopen(t, K2, "RWH", oid=w1, owner="B", guid=G2)
    w2 = next(_ids)
    oopen(t, OPLOCK_BATCH, oid=w2, file=F2, owner="B", guid=G2)
    acts = t.disconnect("A")
    assert set(resumes(acts)) == {w1, w2}
    assert t.caching_of(F) == 0 and t.caching_of(F2) == 0
    assert t.next_deadline() is None


def test_cancel_wait(t):
    lopen(t, K1, "RWH")
    oid = next(_ids)
    lopen(t, K2, "RWH", oid=oid)
    assert t.is_waiting(oid)
    t.cancel_wait(oid)
    assert not t.is_waiting(oid)
    assert resumes(t.ack_lease(G1, K1, LEASE_RH, 1).actions) == []


# ------------------------------------------------------------------ smb2.oplock.*

def test_exclusive1_sharing_violation_no_break(t):
    oopen(t, OPLOCK_EXCLUSIVE)
    _, r = oopen(t, OPLOCK_EXCLUSIVE, sv=True)
    assert r.status == NtStatus.SHARING_VIOLATION and r.actions == ()


def test_exclusive2_break_to_level2_and_unlink_no_break(t):
    h1, _ = oopen(t, OPLOCK_EXCLUSIVE)
    oid = next(_ids)
    _, r = oopen(t, OPLOCK_EXCLUSIVE, oid=oid)
    (b,) = oplock_breaks(r.actions)
    assert (b.open_id, b.oplock_level) == (h1, OPLOCK_II)
    a = t.ack_oplock(h1, OPLOCK_II, 0)
    assert a.status == NtStatus.SUCCESS and a.level == OPLOCK_II
    _, r = oopen(t, OPLOCK_EXCLUSIVE, oid=oid, first=False)
    assert r.grant.oplock_level == OPLOCK_II
    res = t.unlink("u1", oid, 0)
    assert not res.must_wait and res.actions == ()


def test_batch_sharing_violation_breaks_to_level2(t):
    h1, _ = oopen(t, OPLOCK_BATCH)
    _, r = oopen(t, OPLOCK_BATCH, sv=True)
    assert r.status == NtStatus.PENDING
    assert oplock_breaks(r.actions)[0].oplock_level == OPLOCK_II


def test_batch_overwrite_breaks_to_none(t):
    h1, _ = oopen(t, OPLOCK_BATCH)
    _, r = oopen(t, OPLOCK_BATCH, disp=FILE_OVERWRITE_IF)
    assert oplock_breaks(r.actions)[0].oplock_level == OPLOCK_NONE
    # acking II when NONE was sent: the open drops to none
    a = t.ack_oplock(h1, OPLOCK_II, 0)
    assert a.level == OPLOCK_NONE


def test_statopen1_stat_open_does_not_break_batch(t):
    h1, _ = oopen(t, OPLOCK_BATCH)
    _, r = oopen(t, OPLOCK_NONE, access=FILE_READ_ATTRIBUTES | SYNCHRONIZE, disp=FILE_OPEN)
    assert r.status == NtStatus.SUCCESS and not oplock_breaks(r.actions)
    assert t.get_open(h1).oplock == OPLOCK_BATCH


def test_levelii500_write_breaks_own_level2_and_ack_rejected(t):
    h1, _ = oopen(t, OPLOCK_II)
    acts = t.write(h1)
    (b,) = oplock_breaks(acts)
    assert (b.open_id, b.oplock_level, b.ack_required) == (h1, OPLOCK_NONE, False)
    assert t.get_open(h1).oplock == OPLOCK_NONE
    assert t.ack_oplock(h1, OPLOCK_NONE, 0).status == NtStatus.INVALID_OPLOCK_PROTOCOL


def test_oplock_ack_statuses(t):
    assert t.ack_oplock(12345, OPLOCK_NONE, 0).status == NtStatus.FILE_CLOSED
    h1, _ = oopen(t, OPLOCK_BATCH, owner="A")
    assert t.ack_oplock(h1, OPLOCK_II, 0, owner_id="B").status == NtStatus.FILE_CLOSED
    oopen(t, OPLOCK_BATCH, owner="B")
    a = t.ack_oplock(h1, OPLOCK_LEASE, 0)
    assert a.status == NtStatus.INVALID_PARAMETER
    assert t.get_open(h1).oplock == OPLOCK_NONE


def test_level2_grant_beside_other_open(t):
    """smb2.oplock.batch23: after a break to II the next opener gets II too."""
    h1, _ = oopen(t, OPLOCK_BATCH)
    oid = next(_ids)
    oopen(t, OPLOCK_BATCH, oid=oid)
    t.ack_oplock(h1, OPLOCK_II, 0)
    _, r = oopen(t, OPLOCK_BATCH, oid=oid, first=False)
    assert r.grant.oplock_level == OPLOCK_II
    _, r = oopen(t, OPLOCK_BATCH)
    assert r.grant.oplock_level == OPLOCK_II and not oplock_breaks(r.actions)


def test_brl_strips_read_caching(t):
    req = OpenRequest(next(_ids), F, "c", G1, 0x311, OPLOCK_BATCH, has_brlocks=True)
    assert t.open(req, 0).grant.oplock_level == OPLOCK_NONE


def test_lock_breaks_level2(t):
    h1, _ = oopen(t, OPLOCK_II)
    h2, _ = oopen(t, OPLOCK_II)
    acts = t.lock(h2)
    assert {b.open_id for b in oplock_breaks(acts)} == {h1, h2}


# ------------------------------------------------------------------ rename / unlink / H

def test_rename_breaks_other_handle_leases_and_waits(t):
    """smb2.lease.rename_wait / unlink: H of other leases is broken, operation waits."""
    lopen(t, K1, "RH")
    h2, _ = lopen(t, K2, "RH")
    res = t.rename("ren", h2, 0.0)
    assert res.must_wait
    (b,) = lease_breaks(res.actions)
    assert (b.lease_key, b.current_state, b.new_state, b.ack_required) == \
        (K1, LEASE_RH, LEASE_R, True)
    a = t.ack_lease(G1, K1, LEASE_R, 1.0)
    assert resumes(a.actions) == ["ren"]
    res = t.rename("ren", h2, 1.0)
    assert not res.must_wait


def test_delete_on_close_breaks_h(t):
    lopen(t, K1, "RWH")
    h2, _ = oopen(t, OPLOCK_NONE, access=FILE_READ_ATTRIBUTES, disp=FILE_OPEN)
    res = t.set_delete_on_close("doc", h2, 0.0)
    assert res.must_wait and lease_breaks(res.actions)[0].new_state == LEASE_RW


# ------------------------------------------------------------------ directory leases

def test_directory_lease_grant_and_break(t):
    _, r = lopen(t, K1, "RWH", file=D, directory=True, v=2)
    assert r.grant.lease_state == LEASE_RH
    acts = t.dir_changed(D, G2, None)
    (b,) = lease_breaks(acts)
    assert (b.current_state, b.new_state, b.ack_required) == (LEASE_RH, 0, True)


def test_directory_lease_parent_key_does_not_break_own(t):
    lopen(t, K1, "RH", file=D, directory=True, v=2)
    lopen(t, K2, "R", file=D, directory=True, v=2)
    acts = t.dir_changed(D, G1, K1)
    (b,) = lease_breaks(acts)
    assert b.lease_key == K2
    # same key from another client does not count as the parent
    acts = t.dir_changed(D, G2, K1)
    assert lease_breaks(acts)[0].lease_key == K1


def test_parent_lease_key_flag_in_grant(t):
    _, r = lopen(t, K2, "RWH", v=2, parent=K1)
    assert r.grant.lease_flags & LEASE_FLAG_PARENT_LEASE_KEY_SET
    assert r.grant.parent_lease_key == K1


def test_directory_leases_can_be_disabled():
    t = LeaseTable(directory_leases=False)
    _, r = lopen(t, K1, "RH", file=D, directory=True, v=2)
    assert r.grant.oplock_level == OPLOCK_NONE


# ------------------------------------------------------------------ kernel hooks

def test_cap_limits_grant(t):
    _, r = lopen(t, K1, "RWH", cap=LEASE_R)
    assert r.grant.lease_state == LEASE_R
    _, r = oopen(t, OPLOCK_BATCH, file=F2, cap=LEASE_NONE)
    assert r.grant.oplock_level == OPLOCK_NONE
    _, r = lopen(t, K1, "RWH", cap=LEASE_RWH)          # upgrade when the kernel allows
    assert r.grant.lease_state == LEASE_RWH


def test_kernel_break_to_read_then_done(t):
    h1, _ = lopen(t, K1, "RWH")
    acts = t.kernel_break(F, LEASE_R, 0.0)
    (b,) = lease_breaks(acts)
    assert (b.current_state, b.new_state) == (LEASE_RWH, LEASE_RH)
    assert not [a for a in acts if isinstance(a, KernelBreakDone)]
    # While the kernel break is pending no new W is granted.
    _, r = lopen(t, K1, "RWH")
    assert r.grant.lease_state == LEASE_RWH   # own lease keeps its current state
    a = t.ack_lease(G1, K1, LEASE_RH, 1.0)
    assert KernelBreakDone(F, LEASE_R) in a.actions
    assert CachingChanged(F, LEASE_RWH, LEASE_RH) in a.actions


def test_kernel_break_to_none_times_out(t):
    lopen(t, K1, "RH")
    h, _ = oopen(t, OPLOCK_NONE)
    acts = t.kernel_break(F, LEASE_NONE, 0.0)
    assert lease_breaks(acts)[0].new_state == LEASE_NONE
    acts = t.tick(35.0)
    assert KernelBreakDone(F, LEASE_NONE) in acts


def test_kernel_break_no_holders_done_at_once(t):
    assert t.kernel_break(F, LEASE_NONE, 0.0) == [KernelBreakDone(F, LEASE_NONE)]
    oopen(t, OPLOCK_II)
    acts = t.kernel_break(F, LEASE_NONE, 0.0)
    assert oplock_breaks(acts)[0].oplock_level == OPLOCK_NONE
    assert KernelBreakDone(F, LEASE_NONE) in acts


def test_kernel_break_caps_new_grants_until_done(t):
    h, _ = oopen(t, OPLOCK_BATCH)
    t.kernel_break(F, LEASE_R, 0.0)
    _, r = lopen(t, K1, "RWH", file=F, access=FILE_READ_ATTRIBUTES)
    assert r.grant.lease_state & LEASE_W == 0
