"""The machine and software description written at the top of every results file."""
from __future__ import annotations

import os
import platform
import subprocess
import sys


def _cmd(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr) else "?"
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "?"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _mem_total() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) // 1024} MiB"
    except OSError:
        pass
    return "?"


def _os_release() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "?"


def describe(repo: str) -> list[tuple[str, str]]:
    commit = _cmd(["git", "-C", repo, "rev-parse", "--short", "HEAD"])
    dirty = _cmd(["git", "-C", repo, "status", "--porcelain", "--", "smbd_py"])
    return [
        ("os", _os_release()),
        ("kernel", platform.release()),
        ("cpu", f"{_cpu_model()} x {os.cpu_count()}"),
        ("memory", _mem_total()),
        # which build: a distribution's (PGO, LTO) or e.g. a plain pyenv one differ by a few %
        ("python", f"{sys.version.split()[0]} ({os.path.realpath(sys.executable)})"),
        ("samba smbd", _cmd(["/usr/sbin/smbd", "--version"])),
        ("smbclient", _cmd(["smbclient", "--version"])),
        ("smbtorture", _cmd(["smbtorture", "--version"])),
        ("smbd_py commit", commit + (" (smbd_py/ has local changes)" if dirty not in ("", "?")
                                     else "")),
        ("transport", "TCP over loopback (127.0.0.21-23), client and servers on this machine"),
    ]
