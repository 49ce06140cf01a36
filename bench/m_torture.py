"""Open+close rate with smbtorture's smb2.bench.path-contention-shared (a C client, so
the client's own cost stays small): N connections loop CREATE+CLOSE on one file."""
from __future__ import annotations

import re
import subprocess

from .model import Cell, error
from .targets import Target

# The final summary line (after the \r progress lines):
#   5.00 second: open[num/s=7305,avslat=...] close[num/s=7305,...]
_OPENS = re.compile(r"open\[num/s=(\d+),avslat=([0-9.]+)")


def open_close(t: Target, *, path: str, nprocs: int, seconds: int, timeout: float) -> Cell:
    argv = ["smbtorture", t.unc, "-p", str(t.port), "-U", f"{t.user}%{t.password}",
            f"--option=torture:nprocs={nprocs}", f"--option=torture:timelimit={seconds}",
            f"--option=torture:bench_path={path}", "--option=torture:progress=no",
            "smb2.bench.path-contention-shared"]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return error(f"smbtorture timed out after {timeout:.0f}s")
    out = r.stdout + r.stderr
    found = _OPENS.findall(out)
    if r.returncode != 0 or "success: path-contention-shared" not in out or not found:
        return error(f"smbtorture rc={r.returncode}: {out.strip()[-400:]}")
    opens_per_s, _avg_latency = found[-1]
    return Cell(samples=[float(opens_per_s)])
