"""FILETIME <-> Unix time conversion.

FILETIME (MS-DTYP 2.3.3) counts 100 ns intervals since 1601-01-01 UTC; Unix time
counts seconds since 1970-01-01 UTC.  The gap is 11644473600 s.
"""
from __future__ import annotations

__all__ = ["FILETIME_EPOCH_DELTA", "unix_ns_to_filetime", "filetime_to_unix_ns", "unix_to_filetime"]

FILETIME_EPOCH_DELTA = 116444736000000000  # 100 ns units between 1601 and 1970


def unix_ns_to_filetime(ns: int) -> int:
    """Unix nanoseconds -> FILETIME; times before 1601 clamp to 0 (= 'no time')."""
    ft = ns // 100 + FILETIME_EPOCH_DELTA
    return ft if ft > 0 else 0


def filetime_to_unix_ns(ft: int) -> int:
    """FILETIME -> Unix nanoseconds (may be negative for times before 1970)."""
    return (ft - FILETIME_EPOCH_DELTA) * 100


def unix_to_filetime(seconds: float) -> int:
    """Unix seconds (float, as time.time()) -> FILETIME."""
    return unix_ns_to_filetime(int(seconds * 1_000_000_000))
