"""bench/run's entry point: prepare the share, start the servers, run every measurement
alternately against each server, write bench/results/<stamp>-<mode>.{md,json}."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

from . import m_breaks, m_scale, m_smbclient, m_torture, placement, profile
from .machine import describe
from .model import Cell, Spec, error
from .report import markdown, table
from .settings import FULL, QUICK, Settings
from .targets import ORDER, SMBD_PY, Target, start_all

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIG = "big.dat"
OPEN_CLOSE_FILE = "openclose.dat"
LIST_DIR = "list"


def write_reps(s: Settings) -> int:
    """Rounds of the write rows: more than the others, since their samples are bimodal
    (bench/README.md): with ~1/3 of the samples slow for whichever server, 10 samples
    left the median to luck in some runs; 20 put it in the common mode."""
    return max(s.reps, 4 * s.reps if s.mode == "full" else s.reps)


def specs_for(s: Settings) -> list[Spec]:
    size = f"{s.file_size // (1 << 30)} GiB" if s.file_size >= 1 << 30 else \
        f"{s.file_size // (1 << 20)} MiB"
    n = s.scale_connections
    return [
        Spec("read_plain", f"sequential read {size}, SMB3.1.1, signing off", "smbclient get",
             "MiB/s", True, ">=1.0"),
        Spec("read_signed", f"sequential read {size}, SMB3.1.1, signing on", "smbclient get",
             "MiB/s", True, ">=1.0"),
        Spec("write_plain", f"sequential write {size}, SMB3.1.1, signing off",
             "smbclient put", "MiB/s", True, ">=1.0"),
        Spec("write_signed", f"sequential write {size}, SMB3.1.1, signing on",
             "smbclient put", "MiB/s", True, ">=1.0"),
        Spec("openclose_1", "open+close on one file, 1 connection",
             "smbtorture smb2.bench.path-contention-shared", "opens/s", True, ">=1.0"),
        Spec("openclose_16", "open+close on one file, 16 connections",
             "smbtorture smb2.bench.path-contention-shared", "opens/s", True),
        Spec("listing", f"directory listing, {s.dir_entries:,} entries", "smbclient ls", "s",
             False, "<=1.0"),
        Spec("local_break_batch", "local open(2) blocked by a batch oplock (client acks at once)",
             "smb2client + local open", "ms", False, "<=1.0"),
        Spec("local_break_lease", "local open(2) blocked by an RWH lease (client acks at once)",
             "smb2client + local open", "ms", False, "<=1.0"),
        Spec("smb_break_lease", "SMB-to-SMB: client 2 CREATE while client 1 holds RWH lease",
             "smb2client x2", "ms", False),
        Spec("smb_break_batch", "SMB-to-SMB: client 2 CREATE while client 1 holds batch oplock",
             "smb2client x2", "ms", False),
        Spec("scale_mem_pss", f"scale: {n:,} connections each holding a leased open, "
             "server PSS per connection", "smb2client", "KiB", False),
        Spec("scale_mem_rss", f"scale: {n:,} connections, server RSS per connection",
             "smb2client", "KiB", False),
        Spec("scale_break", f"scale: one break reaching the right client among {n:,}",
             "smb2client", "ms", False),
    ]


def prepare_share(share: str, s: Settings, scratch: str) -> str:
    """Content every server sees: the big file, the open/close file, the listing directory,
    per-server files for breaks and scale. Returns the local source file for put."""
    chunk = os.urandom(4 << 20)
    src = os.path.join(scratch, "put-source.dat")
    for path in (os.path.join(share, BIG), src):
        with open(path, "wb") as f:
            for _ in range(s.file_size // len(chunk)):
                f.write(chunk)
            f.write(chunk[: s.file_size % len(chunk)])
        os.chmod(path, 0o644)
    open(os.path.join(share, OPEN_CLOSE_FILE), "wb").close()
    d = os.path.join(share, LIST_DIR)
    os.mkdir(d)
    for i in range(s.dir_entries):
        open(os.path.join(d, f"f{i:05d}.txt"), "wb").close()
    for name in ORDER:
        for kind in ("batch", "lease"):
            for what in ("local", "smb"):
                p = os.path.join(share, f"{what}_{kind}_{name}.dat")
                with open(p, "wb") as f:
                    f.write(b"x" * 4096)
                os.chmod(p, 0o666)
        sd = os.path.join(share, f"scale_{name}")
        os.mkdir(sd)
        os.chmod(sd, 0o777)
    os.chmod(d, 0o755)
    return src


def settle_before_put(t: Target, remote: str) -> None:
    """Every put starts from the same state: the target file does not exist and no dirty
    pages of earlier puts are waiting for write-back. Without this a put truncates the
    previous 1 GiB file (ext4 auto_da_alloc then flushes at close) while the kernel is
    still writing back gigabytes from earlier rounds, and a sample lands at ~400 or
    ~1,200 MiB/s by luck of timing, whichever server it measures.
    sync comes first, then the unlink, and the put starts at once: the other order freed
    the old file's 1 GiB of page cache and then spent seconds in write-back, long enough
    for the VM to hand the freed memory back to the host (free page reporting), so the
    put after a fast put was slow and vice versa - whichever server it was."""
    os.sync()
    try:
        os.unlink(os.path.join(t.share_path, remote))
    except FileNotFoundError:
        pass


class Runner:
    def __init__(self, s: Settings, targets: dict[str, Target], put_source: str,
                 only: set[str] | None, log=print):
        self.s = s
        self.targets = targets
        self.put_source = put_source
        self.only = only
        self.rows: dict[str, dict[str, Cell]] = {}
        self.log = log

    def _add(self, spec_id: str, target: str, cell: Cell) -> None:
        self.rows.setdefault(spec_id, {}).setdefault(target, Cell()).add(cell)

    def _wanted(self, spec_id: str) -> bool:
        return self.only is None or spec_id in self.only

    def _order(self, rep: int) -> list[str]:
        names = list(self.targets)
        k = rep % len(names)
        return names[k:] + names[:k]  # rotate so no server always goes first

    def _na(self, spec_id: str, target: str) -> bool:
        c = self.rows.get(spec_id, {}).get(target)
        return bool(c and c.na)

    def _guard(self, fn, what: str) -> Cell:
        try:
            return fn()
        except Exception as e:  # one failed run must not lose the others
            self.log(f"    {what}: {type(e).__name__}: {e}")
            return error(f"{type(e).__name__}: {e}".strip()[:300])

    def _async(self, coro_fn, timeout: float):
        async def bounded():
            return await asyncio.wait_for(coro_fn(), timeout)
        return asyncio.run(bounded())

    def run_all(self) -> None:
        s = self.s
        # scale first: servers fresh from start, so memory deltas are not hidden by
        # memory freed after earlier measurements
        if any(self._wanted(x) for x in ("scale_mem_pss", "scale_mem_rss", "scale_break")):
            self.log("== scale")
            for rep in range(s.scale_reps):
                for name in self._order(rep):
                    t = self.targets[name]
                    try:
                        pss, rss, brk = self._async(lambda: m_scale.scale(
                            t, n=s.scale_connections, directory=f"scale_{name}",
                            breaks=s.scale_breaks), s.step_timeout)
                    except Exception as e:
                        self.log(f"    scale: {type(e).__name__}: {e}")
                        pss = rss = brk = error(f"{type(e).__name__}: {e}"[:300])
                    brk.samples = [x * 1e3 for x in brk.samples]
                    if rep > 0:
                        # Only round 1, on a freshly started server, counts: later rounds
                        # start from a server that already grew (smbd_py's allocator keeps
                        # and reuses what round 1 freed, so its delta reads ~0).
                        for c in (pss, rss):
                            if c.samples:
                                c.notes.append(f"round {rep + 1} (not counted: server no "
                                               f"longer fresh): {c.samples[0]:.1f} KiB/conn")
                                c.samples = []
                    self._add("scale_mem_pss", name, pss)
                    self._add("scale_mem_rss", name, rss)
                    self._add("scale_break", name, brk)
                    self.log(f"   {name}: pss/conn {pss.samples} rss/conn {rss.samples} "
                             f"break {brk.na or _short(brk)}")

        io = [("read_plain", "read", "off"), ("read_signed", "read", "sign"),
              ("write_plain", "write", "off"), ("write_signed", "write", "sign")]
        for spec_id, direction, prot in io:
            if not self._wanted(spec_id):
                continue
            self.log(f"== {spec_id}")
            if direction == "write":
                # Not counted: a server's first put meets memory the VM has not touched
                # for a while (first-touch at ~400 MiB/s, bench/README.md), every time.
                for name in self._order(0):
                    t = self.targets[name]
                    settle_before_put(t, f"put_{name}.dat")
                    self._guard(lambda: m_smbclient.transfer(
                        t, direction="write", remote=f"put_{name}.dat", local=self.put_source,
                        protection=prot, timeout=s.step_timeout), spec_id + " warm-up")
            for rep in range(s.reps if direction == "read" else write_reps(s)):
                for name in self._order(rep):
                    t = self.targets[name]
                    remote = BIG if direction == "read" else f"put_{name}.dat"
                    if direction == "write":
                        settle_before_put(t, remote)
                    c = self._guard(lambda: m_smbclient.transfer(
                        t, direction=direction, remote=remote, local=self.put_source,
                        protection=prot, timeout=s.step_timeout), spec_id)
                    if direction == "write":
                        c.summary = "median+best"
                    self._add(spec_id, name, c)
                    self.log(f"   {name}: {c.samples or c.errors}")
        for spec_id, nprocs in (("openclose_1", 1), ("openclose_16", 16)):
            if not self._wanted(spec_id):
                continue
            self.log(f"== {spec_id}")
            # One connection is a round trip at a time: pinned (bench/placement.py).
            # Sixteen clients on one CPU would measure that CPU, so they are not.
            with self._placed(nprocs == 1):
                for rep in range(s.reps):
                    for name in self._order(rep):
                        t = self.targets[name]
                        c = self._guard(lambda: m_torture.open_close(
                            t, path=OPEN_CLOSE_FILE, nprocs=nprocs,
                            seconds=s.torture_seconds, timeout=s.step_timeout), spec_id)
                        self._add(spec_id, name, c)
                        self.log(f"   {name}: {c.samples or c.errors}")
        if self._wanted("listing"):
            self.log("== listing")
            for rep in range(s.reps):
                for name in self._order(rep):
                    t = self.targets[name]
                    c = self._guard(lambda: m_smbclient.listing(
                        t, directory=LIST_DIR, expected=s.dir_entries,
                        timeout=s.step_timeout), "listing")
                    self._add("listing", name, c)
                    self.log(f"   {name}: {c.samples or c.errors}")
        breaks = [("local_break_batch", m_breaks.local_open_break, "batch", "local"),
                  ("local_break_lease", m_breaks.local_open_break, "lease", "local"),
                  ("smb_break_lease", m_breaks.smb_to_smb_break, "lease", "smb"),
                  ("smb_break_batch", m_breaks.smb_to_smb_break, "batch", "smb")]
        for spec_id, fn, grant, what in breaks:
            if not self._wanted(spec_id):
                continue
            self.log(f"== {spec_id}")
            with self._placed(True):
                for rep in range(s.reps):
                    for name in self._order(rep):
                        if self._na(spec_id, name):
                            continue
                        t = self.targets[name]
                        c = self._guard(lambda: self._async(lambda: fn(
                            t, grant=grant, name=f"{what}_{grant}_{name}.dat",
                            iterations=s.break_iterations), s.step_timeout), spec_id)
                        c.samples = [x * 1e3 for x in c.samples]
                        self._add(spec_id, name, c)
                        self.log(f"   {name}: {c.na or _short(c)}")

    def _placed(self, pin: bool):
        """Servers and clients on CPUs of their own (bench/placement.py) when pin."""
        if not pin:
            return contextlib.nullcontext()
        return placement.pinned([p for t in self.targets.values() for p in t.pids()])

    def profiles(self, scratch: str) -> dict[str, str]:
        """py-spy excerpts of smbd_py for read, write and open+close (extra, untimed runs)."""
        t = self.targets.get(SMBD_PY)
        if t is None:
            return {}
        s = self.s
        jobs = [
            ("read (smbclient get, signing off)", lambda: m_smbclient.transfer(
                t, direction="read", remote=BIG, local=self.put_source, protection="off",
                timeout=s.step_timeout)),
            ("write (smbclient put, signing off)", lambda: settle_before_put(
                t, "put_smbd_py.dat") or m_smbclient.transfer(
                t, direction="write", remote="put_smbd_py.dat", local=self.put_source,
                protection="off", timeout=s.step_timeout)),
            ("read (smbclient get, signing on)", lambda: m_smbclient.transfer(
                t, direction="read", remote=BIG, local=self.put_source, protection="sign",
                timeout=s.step_timeout)),
            ("write (smbclient put, signing on)", lambda: settle_before_put(
                t, "put_smbd_py.dat") or m_smbclient.transfer(
                t, direction="write", remote="put_smbd_py.dat", local=self.put_source,
                protection="sign", timeout=s.step_timeout)),
            ("open+close (smbtorture path-contention-shared, 1 connection)",
             lambda: m_torture.open_close(t, path=OPEN_CLOSE_FILE, nprocs=1,
                                          seconds=max(3, s.torture_seconds),
                                          timeout=s.step_timeout)),
        ]
        out = {}
        for i, (label, job) in enumerate(jobs):
            raw = os.path.join(scratch, f"profile-{i}.txt")
            self.log(f"== profile: {label}")
            err = self._guard_text(lambda: profile.record(t.pid, job, raw,
                                                          timeout=s.step_timeout))
            out[label] = err if err else profile.summarize(raw)
        return out

    def _guard_text(self, fn) -> str | None:
        try:
            return fn()
        except Exception as e:
            return f"profile failed: {type(e).__name__}: {e}"


def _short(c: Cell) -> str:
    if c.samples:
        m = sorted(c.samples)[len(c.samples) // 2]
        return f"median {m:.3f} of {len(c.samples)}" + ("" if c.comparable else " (no break)")
    return str(c.errors)


STANDING_NOTES = [
    "- Every measurement runs alternately against each server (rotating order per round); "
    "the table shows medians over all rounds' samples.",
    "- Read/write rates are smbclient's own figure (open to close of the remote file), "
    "in MiB/s; the file is in the page cache for every server.",
    "- Listing time is the wall time of one smbclient process (connect, login and ls).",
    "- Open+close with one connection and the break latencies are round trips: they run "
    "with the servers pinned to one CPU and the clients to another (see Settings: "
    "placement), as a client on another machine would be. Left to the scheduler, a "
    "server that happened to share the client's CPU ran ~1.5-2x faster (bench/placement.py).",
    "- Samba with kernel oplocks = yes grants batch oplocks but no leases; with kernel "
    "oplocks = no it grants leases but takes no kernel lease, so a local open never "
    "blocks and the client is never told (marked 'no break'; no ratio is computed).",
    "- 'n/a: not granted' means the server did not grant what the client asked; no number "
    "is reported for it.",
    "- Memory per connection = (server memory with N connections - before) / N, summed over "
    "all server processes (Samba forks one process per connection). PSS divides shared "
    "pages among the processes that map them; RSS counts them in every process. Scale runs "
    "first, on freshly started servers, and only its first round counts for memory.",
    "- Profile leaf frames: 'Runner.run' is time inside uvloop's C event loop (socket "
    "reads/writes, callbacks); '_worker' is thread-pool workers outside Python code; "
    "'ThreadPoolExecutor.submit' is the cost of handing a job to the pool.",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, for CI (~2 min)")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results"),
                    help="directory for the results files")
    ap.add_argument("--port-base", type=int, default=15050,
                    help="Samba ko=yes on +1, smbd_py on +2, Samba ko=no on +3")
    ap.add_argument("--only", default="", help="comma-separated measurement ids")
    ap.add_argument("--reps", type=int, default=0, help="override the number of rounds")
    ap.add_argument("--connections", type=int, default=0, help="override the scale size")
    ap.add_argument("--profile", dest="profile", action="store_true", default=None)
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    args = ap.parse_args(argv)
    s = QUICK if args.quick else FULL
    if args.reps:
        s = dataclasses.replace(s, reps=args.reps)
    if args.connections:
        s = dataclasses.replace(s, scale_connections=args.connections)
    if args.profile is not None:
        s = dataclasses.replace(s, profile=args.profile)
    specs = specs_for(s)
    only = {x for x in args.only.split(",") if x} or None
    if only:
        unknown = only - {sp.id for sp in specs}
        if unknown:
            ap.error(f"unknown measurement ids: {sorted(unknown)}")

    for exe in ("smbclient", "smbtorture", "/usr/sbin/smbd"):
        if not shutil.which(exe):
            print(f"bench: {exe} not found (bench/run installs samba, smbclient and "
                  f"samba-testsuite)", file=sys.stderr)
            return 2
    t_start = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    scratch = tempfile.mkdtemp(dir="/tmp", prefix="smbd_py-bench-")
    os.chmod(scratch, 0o755)  # Samba's account must traverse it to reach the share
    share = os.path.join(scratch, "share")
    os.mkdir(share)
    os.chmod(share, 0o777)
    profiles: dict[str, str] = {}
    try:
        print(f"bench: preparing share in {share} ({s.mode} mode)")
        put_source = prepare_share(share, s, scratch)
        with start_all(share, port_base=args.port_base) as targets:
            for t in targets.values():
                print(f"bench: {t.label} on {t.host}:{t.port} (pid {t.pid})")
            runner = Runner(s, targets, put_source, only)
            runner.run_all()
            if s.profile:
                profiles = runner.profiles(scratch)
        rows = runner.rows
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.monotonic() - t_start

    settings = dataclasses.asdict(s)
    settings["placement"] = placement.describe()
    settings["measurements"] = ",".join(sp.id for sp in specs if only is None or sp.id in only)
    notes = list(STANDING_NOTES)
    md = markdown(title=f"smbd_py vs Samba, {s.mode} run {stamp}", machine=describe(REPO),
                  settings=settings, specs=[sp for sp in specs if only is None or sp.id in only],
                  rows=rows, notes=notes, profiles=profiles, elapsed=elapsed)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"{stamp}-{s.mode}")
    with open(base + ".md", "w") as f:
        f.write(md)
    with open(base + ".json", "w") as f:
        json.dump({"mode": s.mode, "stamp": stamp, "settings": settings,
                   "machine": dict(describe(REPO)),
                   "specs": [dataclasses.asdict(sp) for sp in specs
                             if only is None or sp.id in only],
                   "rows": {k: {n: c.to_json() for n, c in v.items()} for k, v in rows.items()},
                   "profiles": profiles, "elapsed_s": elapsed}, f, indent=1)
    print()
    print(table([sp for sp in specs if only is None or sp.id in only], rows))
    print(f"\nbench: results in {base}.md and {base}.json ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
