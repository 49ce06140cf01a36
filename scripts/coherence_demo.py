#!/usr/bin/env python3
"""Two servers, one directory: play two SMB clients against two servers that export the
same directory and print what happens, with millisecond timestamps.

Client 1 (through server A) opens a file with an RWH lease (or a batch oplock) and keeps a
write in its own cache, unsent. Client 2 (through server B) opens the file to read it:
server B's open meets server A's kernel lease, so B answers STATUS_PENDING and the kernel
tells A, which breaks client 1's lease (RWH -> RH). Client 1 writes back what it cached
and acknowledges; A lets go of its kernel write lease; B's open goes through and client 2 reads
client 1's data. Exit status: 0 coherent, 1 client 2 read stale data, 2 the scenario did
not run (no grant, a timeout, a connection error).

    coherence_demo.py HOST_A:PORT_A HOST_B:PORT_B [--share demo] [--user demo]
                      [--password demo] [--file NAME] [--kind lease|batch]

Runs from a checkout (it uses the project's test client, tests/smb2client), with any
Python >= 3.11 that has `cryptography` (the project's .venv has it).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.peers.coherence import Peer, ack, check_write_break, open_caching, session  # noqa: E402
from tests.smb2client import (Access, CreateOptions, Disposition, LeaseBreak,  # noqa: E402
                              LeaseState, Oplock, ShareAccess, Smb2Error, status_name)

EXIT_COHERENT, EXIT_STALE, EXIT_FAILED = 0, 1, 2
STEP_WAIT_S = 15.0   # a break, an interim, a write: each arrives well within this
# B's CREATE waits for A's client at most the kernel's lease-break-time (45 s by default)
# before the kernel breaks A's lease by force; wait a little longer than that.
OPEN_TIMEOUT_S = 60.0
TOTAL_TIMEOUT_S = 120.0

STALE = b"version 1: on the disk before client 1 opened the file\n"
CACHED = b"version 2: written by client 1 through server A, held in its cache\n"


class Timeline:
    """Prints one line per event: milliseconds since the start, who, what."""

    def __init__(self):
        self.t0 = time.monotonic()

    def say(self, who: str, what: str, at: float | None = None) -> None:
        ms = ((time.monotonic() if at is None else at) - self.t0) * 1000
        print(f"{ms:9.1f} ms  {who:<18} {what}", flush=True)


def lease_name(state: int) -> str:
    s = "".join(ch for ch, bit in (("R", LeaseState.READ), ("W", LeaseState.WRITE),
                                   ("H", LeaseState.HANDLE)) if state & bit)
    return s or "NONE"


def grant_name(kind: str, r) -> str:
    if kind == "batch":
        return f"oplock {Oplock(r.oplock_level).name}"
    return f"lease {lease_name(r.lease_state or 0)}"


def break_name(kind: str, brk) -> str:
    if isinstance(brk, LeaseBreak):
        ack_note = ", ack required" if brk.ack_required else ""
        return (f"LEASE_BREAK {lease_name(brk.current_state)} -> "
                f"{lease_name(brk.new_state)}{ack_note}")
    return f"OPLOCK_BREAK -> {Oplock(brk.oplock_level).name}"


def show(data: bytes) -> str:
    return repr(data.decode(errors="replace"))


def parse_addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def timed(aw) -> tuple[float, object]:
    """Await `aw` and note when it finished (the events' arrival times, for the timeline)."""
    out = await aw
    return time.monotonic(), out


async def remove(c, tid: int, name: str, wait_s: float) -> None:
    """Delete the demo file (it lives in a shared directory, e.g. the repository's)."""
    r = await c.create(tid, name, desired_access=Access.DELETE, disposition=Disposition.OPEN,
                       share_access=ShareAccess.ALL, options=CreateOptions.DELETE_ON_CLOSE,
                       expect=None, timeout=wait_s)
    if r.status == 0:
        await c.close(tid, r.file_id, expect=None)


async def play(a: Peer, b: Peer, name: str, kind: str, tl: Timeline, wait_s: float) -> int:
    c1, t1 = await session(a, timeout=wait_s)
    c2, t2 = await session(b, timeout=wait_s)
    tl.say("setup", f"client 1 logged in to A ({a.host}:{a.port}), client 2 to B "
                    f"({b.host}:{b.port}), share {a.share!r}, user {a.user!r}")
    async with c1, c2:
        # The file as it is on disk before the scenario: what a stale read would return.
        r = await c1.create(t1, name, disposition=Disposition.OVERWRITE_IF)
        await c1.write(t1, r.file_id, 0, STALE)
        await c1.close(t1, r.file_id)
        tl.say("setup", f"{name} on the shared disk holds {show(STALE)}")
        try:
            return await scenario(c1, t1, c2, t2, name, kind, tl, wait_s)
        finally:
            try:
                await remove(c1, t1, name, wait_s)
            except (OSError, asyncio.TimeoutError, Smb2Error) as e:
                tl.say("cleanup", f"could not delete {name}: {type(e).__name__}: {e}")


async def scenario(c1, t1, c2, t2, name: str, kind: str, tl: Timeline,
                   wait_s: float) -> int:
    try:
        r1, key = await open_caching(c1, t1, name, kind)
    except AssertionError as e:
        tl.say("client 1 <- A", f"full caching not granted: {e}")
        return EXIT_FAILED
    tl.say("client 1 <- A", f"CREATE {name} for read+write: granted {grant_name(kind, r1)}")
    tl.say("client 1", f"writes {len(CACHED)} bytes into its cache, sends nothing: "
                       f"{show(CACHED)}")

    p = await c2.create_pending(t2, name, desired_access=Access.GENERIC_READ,
                                share_access=ShareAccess.ALL, disposition=Disposition.OPEN,
                                expect=None)
    tl.say("client 2 -> B", f"CREATE {name} for read")
    interim_task = asyncio.ensure_future(timed(asyncio.wait_for(asyncio.shield(p.interim),
                                                                wait_s)))
    break_task = asyncio.ensure_future(timed(c1.next_break(wait_s)))
    events = []
    try:
        t_int, interim = await interim_task
        events.append((t_int, "client 2 <- B",
                       "STATUS_PENDING: B's open met A's kernel lease, B waits" if interim
                       else "CREATE answered at once, without waiting"))
    except asyncio.TimeoutError:
        events.append((time.monotonic(), "client 2 <- B", "no answer to CREATE yet"))
    try:
        t_brk, brk = await break_task
    except asyncio.TimeoutError:
        for ev in sorted(events):
            tl.say(ev[1], ev[2], at=ev[0])
        tl.say("client 1 <- A", f"no break within {wait_s:g} s")
        code = await finish_read(c2, t2, p, tl, t_ack=None)
        await c1.close(t1, r1.file_id, expect=None)
        return code
    events.append((t_brk, "client 1 <- A", break_name(kind, brk)))
    for ev in sorted(events):
        tl.say(ev[1], ev[2], at=ev[0])
    level = check_write_break(brk, kind, r1.file_id, key)

    await asyncio.sleep(0.2)  # long enough to see that B really waits for client 1
    tl.say("client 2", "CREATE still pending" if not p.final.done()
           else "CREATE already completed (before client 1 wrote back!)")
    n = await c1.write(t1, r1.file_id, 0, CACHED)
    tl.say("client 1 -> A", f"WRITE {n} bytes: the write-back of its cached data")
    t_ack = time.monotonic()
    status = await ack(c1, t1, kind, r1.file_id, key, level)
    tl.say("client 1 -> A", f"{'LEASE' if kind != 'batch' else 'OPLOCK'}_BREAK_ACK "
                            f"-> {status_name(status)}; A lets go of its kernel write lease")
    code = await finish_read(c2, t2, p, tl, t_ack)
    await c1.close(t1, r1.file_id, expect=None)
    return code


async def finish_read(c2, t2, p, tl: Timeline, t_ack: float | None) -> int:
    """Client 2's CREATE completes, it reads: coherent or stale?"""
    r2 = await p.result(expect=None, timeout=OPEN_TIMEOUT_S)
    after = f" ({(time.monotonic() - t_ack) * 1000:.1f} ms after the ack)" if t_ack else ""
    tl.say("client 2 <- B", f"CREATE {status_name(r2.status)}{after}")
    if r2.status != 0:
        return EXIT_FAILED
    data = await c2.read(t2, r2.file_id, 0, 4096)
    tl.say("client 2 <- B", f"READ {len(data)} bytes: {show(data)}")
    await c2.close(t2, r2.file_id, expect=None)
    if data == CACHED:
        tl.say("result", "COHERENT: client 2 read client 1's cached write")
        return EXIT_COHERENT
    tl.say("result", "STALE: client 2 did not read client 1's cached write")
    return EXIT_STALE


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("server_a", type=parse_addr, help="HOST:PORT of server A (client 1)")
    ap.add_argument("server_b", type=parse_addr, help="HOST:PORT of server B (client 2)")
    ap.add_argument("--share", default="demo")
    ap.add_argument("--user", default="demo")
    ap.add_argument("--password", default="demo")
    ap.add_argument("--file", default="coherence-demo.txt")
    ap.add_argument("--kind", choices=("lease", "batch"), default="lease",
                    help="client 1's caching grant: an RWH lease or a batch oplock")
    ap.add_argument("--wait", type=float, default=STEP_WAIT_S, metavar="SECONDS",
                    help="how long to wait for each step (a break, an interim answer)")
    args = ap.parse_args(argv)
    a = Peer(*args.server_a, args.share, args.user, args.password)
    b = Peer(*args.server_b, args.share, args.user, args.password)
    tl = Timeline()
    try:
        return asyncio.run(asyncio.wait_for(play(a, b, args.file, args.kind, tl, args.wait),
                                            TOTAL_TIMEOUT_S))
    except (OSError, asyncio.TimeoutError, Smb2Error, AssertionError) as e:
        tl.say("failed", f"{type(e).__name__}: {e}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
