"""Reusable large buffers for the data path (WRITE frames in, READ payloads out).

A fresh multi-MiB bytearray costs a memset (or page faults) every time; reusing one
costs nothing. A buffer handed out may live on after its request ends (uvloop keeps a
view of queued output until the socket took it; a handler may keep a memoryview), so a
buffer is only handed out again when nothing else can see it: no other reference to the
bytearray and no live buffer export (a memoryview, or uvloop's hold on queued data),
which is exactly when CPython lets the bytearray be resized.
"""
from __future__ import annotations

import sys
import time

_getrefcount = sys.getrefcount
_monotonic = time.monotonic


def _unshared(buf: bytearray) -> bool:
    """True when no view of buf exists: shrinking it by one byte is refused (BufferError)
    while any export lives. The shrink and the re-grow stay within its allocation."""
    try:
        buf.pop()
    except BufferError:
        return False
    buf.append(0)
    return True


class BufferPool:
    """A few large bytearrays, handed out by exact length, reused once nothing sees them.

    Tracks at most `keep` buffers (the most recently made); older ones are left to the
    garbage collector, so the pool never pins more than keep * (largest size) bytes, and
    after `idle` seconds without a request for large buffers it lets go of all of them.
    Not thread-safe: used from the event loop thread only.
    """

    __slots__ = ("keep", "idle", "items", "last_get")

    def __init__(self, keep: int = 8, idle: float = 10.0) -> None:
        self.keep = keep
        self.idle = idle
        self.items: list[bytearray] = []
        self.last_get = 0.0

    def get(self, size: int) -> bytearray:
        """A bytearray of exactly `size` bytes (contents undefined) that nobody else uses."""
        now = _monotonic()
        if now - self.last_get > self.idle:
            self.items.clear()
        self.last_get = now
        for buf in self.items:
            # References: self.items, the loop variable, getrefcount's argument.
            if len(buf) == size and _getrefcount(buf) == 3 and _unshared(buf):
                return buf
        buf = bytearray(size)
        items = self.items
        items.append(buf)
        if len(items) > self.keep:
            del items[0]
        return buf

    def clear(self) -> None:
        self.items.clear()


# One pool for the whole server (every connection, READ payloads and WRITE frames): a
# new connection (smbclient opens one per transfer) finds warm buffers at once.
shared = BufferPool()
