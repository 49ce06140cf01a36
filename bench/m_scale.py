"""Scale: N concurrent connections, each holding one open with a lease (or, where the
server grants no lease, a batch oplock). Reports the server's memory per connection
(PSS of all its processes, so Samba's forked children and smbd_py's single process are
counted alike) and the time for one break to reach the right client among them."""
from __future__ import annotations

import asyncio
import time

from tests.smb2client import LeaseRequest, Oplock, Smb2Client, new_lease_key
from tests.smb2client.wire import RWH

from .m_breaks import connect, open_granted
from .model import Cell, na
from .targets import Target

CONNECT_CONCURRENCY = 32


def memory_kib(pids: list[int]) -> tuple[int, int]:
    """(PSS, RSS) in KiB summed over pids (processes that vanished count 0)."""
    pss = rss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
        except OSError:
            continue
    return pss, rss


async def scale(t: Target, *, n: int, directory: str, breaks: int
                ) -> tuple[Cell, Cell, Cell]:
    """Returns (PSS KiB per connection, RSS KiB per connection, break delivery seconds)."""
    pss0, rss0 = memory_kib(t.pids())
    conns: list[tuple[Smb2Client, int]] = []
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    # Probe what the server grants, once, to pick the kind every connection asks for.
    probe, ptid = await connect(t)
    conns.append((probe, ptid))
    mem_pss, mem_rss, brk = Cell(), Cell(), Cell()
    try:
        r, ok, what = await open_granted(probe, ptid, f"{directory}\\f00000.dat", "lease")
        grant = "lease"
        if not ok:
            await probe.close(ptid, r.file_id)
            r, ok, what2 = await open_granted(probe, ptid, f"{directory}\\f00000.dat", "batch")
            grant = "batch" if ok else "none"
            what = f"{what}; {what2}"
        granted = {0: ok}

        async def one(i: int) -> None:
            async with sem:
                c, tid = await connect(t)
                conns.append((c, tid))
                name = f"{directory}\\f{i:05d}.dat"
                if grant == "lease":
                    rr = await c.create(tid, name, lease=LeaseRequest(new_lease_key(), RWH))
                    granted[i] = rr.lease_state == RWH
                elif grant == "batch":
                    rr = await c.create(tid, name, oplock=Oplock.BATCH)
                    granted[i] = rr.oplock_level == Oplock.BATCH
                else:
                    await c.create(tid, name)
                    granted[i] = False
                c.auto_ack = True
                c.index = i  # type: ignore[attr-defined]
        probe.auto_ack = True
        probe.index = 0  # type: ignore[attr-defined]
        await asyncio.gather(*(one(i) for i in range(1, n)))
        await asyncio.sleep(0.5)  # let the server settle (lazy allocations, children)
        pss1, rss1 = memory_kib(t.pids())
        mem_pss.samples.append((pss1 - pss0) / n)
        mem_rss.samples.append((rss1 - rss0) / n)
        kind = {"lease": "RWH lease", "batch": "batch oplock (no lease granted)",
                "none": "plain open (neither lease nor batch oplock granted)"}[grant]
        mem_pss.notes.append(f"each connection holds a {kind}")
        if grant == "none":
            brk = na(f"not granted ({what})")
        else:
            brk.notes.append(f"grants: {kind}")
            by_index = {getattr(c, "index"): c for c, _ in conns}
            x, xtid = await connect(t)
            try:
                for j in range(breaks):
                    k = (n // 2 + j * 7919) % n
                    if not granted.get(k):
                        continue
                    for c, _ in conns:
                        while not c.breaks.empty():
                            c.breaks.get_nowait()
                    t0 = time.perf_counter()
                    p = await x.create_pending(xtid, f"{directory}\\f{k:05d}.dat",
                                               oplock=Oplock.NONE)
                    await by_index[k].next_break(30.0)
                    dt = time.perf_counter() - t0
                    rx = await p
                    await x.close(xtid, rx.file_id)
                    wrong = sum(c.breaks.qsize() for c, _ in conns if c is not by_index[k])
                    if wrong:
                        brk.errors.append(f"{wrong} break(s) reached other connections")
                    brk.samples.append(dt)
            finally:
                await x.disconnect()
    finally:
        await asyncio.gather(*(c.disconnect() for c, _ in conns), return_exceptions=True)
    return mem_pss, mem_rss, brk
