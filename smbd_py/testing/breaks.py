"""Server-triggered breaks: start one (protocol.caching.break_file, the kernel break's
path) and follow it until every holder has answered or timed out.

Owns the records a test gets back (BrokenHolder, BreakOutcome) and the handle that
tells when the break is over (BreakHandle: `.result(timeout)` from sync code, `await`
from async code). The follow-up reads the oplock table itself; it keeps no state of
its own beyond which holders this break reached.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from typing import Any

from ..oplocks.types import LEASE_NONE, OPLOCK_II, OPLOCK_NONE, SendLeaseBreak, SendOplockBreak
from ..protocol import caching

POLL_S = 0.005
# Beyond the latest break deadline: the table's timer has fired by then.
GRACE_S = 2.0


@dataclasses.dataclass
class BrokenHolder:
    """One holder the break reached: a lease (lease_key set) or an oplock (file_id set).
    `sent` is the state (lease bits) or oplock level the notification offered; `final`
    what the holder has once the break is over; `acked` True when it answered in time
    (or closed), `timed_out` True when the break timeout ended it."""
    kind: str                     # "lease" | "oplock"
    client_guid: bytes
    lease_key: bytes | None
    file_id: bytes | None
    before: int
    sent: int
    ack_required: bool
    final: int | None = None      # None: the holder closed its open(s)
    acked: bool = False
    timed_out: bool = False
    deadline: float | None = None
    open_id: Any = dataclasses.field(default=None, repr=False)   # the table's, oplocks


@dataclasses.dataclass
class BreakOutcome:
    path: str
    target: int                   # lease bits asked for
    holders: list                 # BrokenHolder, one per lease/oplock broken
    finished: bool                # False: still breaking when the wait gave up
    elapsed: float                # seconds from the break to its end

    @property
    def acked(self) -> bool:
        """Every holder answered in time (a holder without an ack to give counts)."""
        return self.finished and all(h.acked for h in self.holders)

    @property
    def timed_out(self) -> bool:
        return any(h.timed_out for h in self.holders)


class BreakHandle:
    """A break in progress. `result(timeout)` blocks until it is over (do not call it
    on the event loop of a client that must ack: `await handle` there instead)."""

    def __init__(self, future: concurrent.futures.Future, holders: list) -> None:
        self._future = future
        self.holders = holders          # BrokenHolder records, filled in at the end

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> BreakOutcome:
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"break not over within {timeout} s") from None

    def __await__(self):
        return asyncio.wrap_future(self._future).__await__()


def start(ctx: Any, file_key: Any, target: int) -> list:
    """Break file_key to target now (server loop thread); the holders reached."""
    cache = caching.caching_of(ctx)
    table = cache.table
    holders = []
    for a in caching.break_file(ctx, file_key, target):
        if isinstance(a, SendLeaseBreak):
            lease = table.lease(a.client_guid, a.lease_key)
            holders.append(BrokenHolder(
                "lease", bytes(a.client_guid), bytes(a.lease_key), None, a.current_state,
                a.new_state, a.ack_required,
                deadline=lease.deadline if lease is not None and lease.breaking else None))
        elif isinstance(a, SendOplockBreak):
            op = cache.opens.get(a.open_id)
            topen = table.get_open(a.open_id)
            holders.append(BrokenHolder(
                "oplock", op.conn.client_guid if op is not None else b"", None,
                bytes(op.file_id) if op is not None else None,
                # Only LEVEL_II -> NONE goes without an ack (and at once).
                (topen.oplock if topen is not None else 0) if a.ack_required else OPLOCK_II,
                a.oplock_level, a.ack_required,
                deadline=topen.deadline if topen is not None else None, open_id=a.open_id))
    return holders


def _pending(table: Any, h: BrokenHolder) -> bool:
    if h.kind == "lease":
        lease = table.lease(h.client_guid, h.lease_key)
        return lease is not None and lease.breaking
    op = table.get_open(h.open_id)
    return op is not None and op.breaking_to is not None


def _settle(table: Any, h: BrokenHolder, now: float) -> None:
    if h.kind == "lease":
        lease = table.lease(h.client_guid, h.lease_key)
        h.final = lease.state if lease is not None else None
    else:
        # A LEVEL_II -> NONE break needs no ack: the table shows NONE at once.
        op = table.get_open(h.open_id)
        h.final = op.oplock if op is not None else None
    pending = _pending(table, h)
    # The follow-up sees an ack within POLL_S, so an end noticed after the holder's
    # deadline is the table's timeout (which leaves the holder with nothing cached).
    late = h.deadline is not None and now >= h.deadline
    h.timed_out = (h.ack_required and not pending and late
                   and h.final in (LEASE_NONE, OPLOCK_NONE))
    h.acked = not pending and not h.timed_out


async def follow(ctx: Any, path: str, target: int, holders: list,
                 limit: float | None = None) -> BreakOutcome:
    """Wait (polling the table) until no holder of this break is still breaking."""
    loop = asyncio.get_running_loop()
    table = caching.caching_of(ctx).table
    t0 = loop.time()
    deadlines = [h.deadline for h in holders if h.deadline is not None]
    end = (max(deadlines) + GRACE_S) if deadlines else t0
    if limit is not None:
        end = min(end, t0 + limit)
    finished = False
    while True:
        if not any(_pending(table, h) for h in holders):
            finished = True
            break
        if loop.time() >= end:
            break
        await asyncio.sleep(POLL_S)
    now = loop.time()
    for h in holders:
        _settle(table, h, now)
    return BreakOutcome(path, target, holders, finished, now - t0)
