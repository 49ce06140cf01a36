"""Measurements driven by Samba's smbclient: sequential read/write (get/put) and the
directory listing (ls). smbclient is the same binary against every server."""
from __future__ import annotations

import re
import subprocess
import time

from .model import Cell, error
from .targets import Target

# smbclient prints its own transfer rate, timed from open to close of the remote file:
#   getting file \big.dat of size N as /dev/null (503246.3 KiloBytes/sec) (average ...)
#   putting file /tmp/x as \y (82956.9 kb/s) (average 82957.0 kb/s)
# Both units are KiB/s.
_RATE = re.compile(r"\((\d+(?:\.\d+)?) (?:KiloBytes/sec|kb/s)\)")


def smbclient_argv(t: Target, commands: str, protection: str = "off") -> list[str]:
    return ["smbclient", t.unc, "-p", str(t.port), "-U", f"{t.user}%{t.password}",
            "-m", "SMB3", f"--client-protection={protection}", "-c", commands]


def _run(argv: list[str], timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return time.perf_counter() - t0, r


def transfer(t: Target, *, direction: str, remote: str, local: str, protection: str,
             timeout: float) -> Cell:
    """One get (remote -> /dev/null) or put (local -> remote); MiB/s."""
    cmd = f"get {remote} /dev/null" if direction == "read" else f"put {local} {remote}"
    try:
        wall, r = _run(smbclient_argv(t, cmd, protection), timeout)
    except subprocess.TimeoutExpired:
        return error(f"smbclient {direction} timed out after {timeout:.0f}s")
    out = r.stdout + r.stderr
    m = _RATE.search(out)
    if r.returncode != 0 or not m or "NT_STATUS" in out:
        return error(f"smbclient {direction} rc={r.returncode}: {out.strip()[-300:]}")
    return Cell(samples=[float(m.group(1)) / 1024.0])


def listing(t: Target, *, directory: str, expected: int, timeout: float) -> Cell:
    """Wall time of `smbclient -c 'ls DIR\\*'` (includes connect and login, a few ms)."""
    try:
        wall, r = _run(smbclient_argv(t, f"ls {directory}\\*"), timeout)
    except subprocess.TimeoutExpired:
        return error(f"smbclient ls timed out after {timeout:.0f}s")
    out = r.stdout + r.stderr
    if r.returncode != 0 or "NT_STATUS" in out:
        return error(f"smbclient ls rc={r.returncode}: {out.strip()[-300:]}")
    # entries look like "  f00001.txt   A   0  Mon Nov 23 ..."; count our names only
    seen = sum(1 for line in r.stdout.splitlines() if line.strip().startswith("f") and
               ".txt" in line)
    c = Cell(samples=[wall])
    if seen != expected:
        c.errors.append(f"listed {seen} of {expected} entries")
    return c
