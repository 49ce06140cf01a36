"""Where smbd_py spends its time: py-spy samples the running server while a workload runs,
and the collapsed stacks are reduced to the hottest functions (self and inclusive)."""
from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

_LINE = re.compile(r":\d+\)")


def py_spy() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.path.exists(here) else shutil.which("py-spy")


def record(pid: int, workload: Callable[[], object], raw_path: str, *, rate: int = 200,
           timeout: float = 300.0) -> str | None:
    """Sample `pid` while `workload()` runs; returns an error text or None."""
    exe = py_spy()
    if exe is None:
        return "py-spy not installed (pip install py-spy into the venv)"
    log = raw_path + ".log"
    with open(log, "wb") as lf:
        proc = subprocess.Popen([exe, "record", "-p", str(pid), "-o", raw_path, "--format",
                                 "raw", "-r", str(rate), "--nonblocking", "-d", str(int(timeout))],
                                stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # attach
        if proc.poll() is not None:
            return f"py-spy exited early: {open(log).read()[-500:]}"
        workload()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    if not os.path.exists(raw_path):
        return f"py-spy wrote no profile: {open(log).read()[-500:]}"
    return None


def summarize(raw_path: str, top: int = 15) -> str:
    """Text excerpt: the top functions by self samples and by inclusive samples."""
    self_n: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    with open(raw_path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [_LINE.sub(")", fr) for fr in stack.split(";")]
            total += n
            self_n[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    if not total:
        return "(no samples)"
    out = [f"{total} samples", "", "self time (leaf frame):"]
    out += [f"  {100 * n / total:5.1f}%  {fr}" for fr, n in self_n.most_common(top)]
    out += ["", "inclusive time, smbd_py frames:"]
    ours = [(fr, n) for fr, n in incl.most_common() if "smbd_py/" in fr]
    out += [f"  {100 * n / total:5.1f}%  {fr}" for fr, n in ours[:top]]
    return "\n".join(out)
