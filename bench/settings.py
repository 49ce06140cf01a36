"""Sizes, repetitions and time limits of the two benchmark modes (quick for CI, full for people)."""
from __future__ import annotations

import dataclasses

MiB = 1 << 20
GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Settings:
    mode: str
    file_size: int            # sequential read/write file
    dir_entries: int          # directory listing
    reps: int                 # alternating rounds (A B C A B C ...)
    torture_seconds: int      # smbtorture path-contention-shared time limit per run
    break_iterations: int     # break-latency samples per target per round
    scale_connections: int    # concurrent connections in the scale measurement
    scale_reps: int           # rounds of the (slow) scale measurement
    scale_breaks: int         # breaks timed per scale round
    step_timeout: float       # upper bound for one run of one measurement against one server
    profile: bool             # py-spy profile of smbd_py after the measurements


QUICK = Settings(mode="quick", file_size=32 * MiB, dir_entries=500, reps=2, torture_seconds=1,
                 break_iterations=10, scale_connections=50, scale_reps=1, scale_breaks=3,
                 step_timeout=60.0, profile=False)

FULL = Settings(mode="full", file_size=1 * GiB, dir_entries=10_000, reps=5, torture_seconds=5,
                break_iterations=40, scale_connections=1000, scale_reps=2, scale_breaks=10,
                step_timeout=300.0, profile=True)
