"""Where the processes of a round-trip-bound measurement run: every server on one CPU,
the clients (this process, and the smbtorture it starts) on another, as a client on
another machine would be.

Why: open+close and break latency are ping-pong between a client and a server. Left to
the scheduler, wake-affine placement sometimes puts the server on the client's CPU,
where each hand-over is a plain context switch instead of waking an idle vCPU; on the
2-vCPU machine this roughly doubled whichever server got lucky (Samba's one-connection
open+close rate read 6,574/s in one run and 11,304/s in the next; pinned to one CPU
together both servers run ~1.5-2x faster than on two). A fixed placement measures the
servers, not the luck. Machines with one CPU are left alone (the results say so).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator


def split_cpus() -> tuple[int, int] | None:
    """(server CPU, client CPU): the first two CPUs this process may use; None if only one."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


def _tasks(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


def _set(tids: Iterable[int], cpus: set[int], saved: dict[int, set[int]]) -> None:
    for tid in tids:
        try:
            saved.setdefault(tid, os.sched_getaffinity(tid))
            os.sched_setaffinity(tid, cpus)
        except (ProcessLookupError, PermissionError):
            pass     # a thread or a Samba child that ended meanwhile


def describe() -> str:
    split = split_cpus()
    if split is None:
        return "not pinned (one CPU)"
    return f"servers on CPU {split[0]}, clients on CPU {split[1]}"


@contextlib.contextmanager
def pinned(server_pids: Iterable[int]) -> Iterator[tuple[int, int] | None]:
    """Pin every thread of the servers' processes (a Samba parent's later children
    inherit it) to the server CPU and this process's threads (and so the clients it
    starts) to the client CPU; restore the old masks afterwards."""
    split = split_cpus()
    if split is None:
        yield None
        return
    saved: dict[int, set[int]] = {}
    try:
        for pid in server_pids:
            _set(_tasks(pid), {split[0]}, saved)
        _set(_tasks(os.getpid()), {split[1]}, saved)
        yield split
    finally:
        for tid, cpus in saved.items():
            try:
                os.sched_setaffinity(tid, cpus)
            except (ProcessLookupError, PermissionError):
                pass
