"""Busy-polling the event loop for a short while after a kernel lease break went out.

Owns: keeping the server's loop awake (polling its descriptors without sleeping) from
the moment a kernel break's notification is written until the client's acknowledgment
has released the kernel lease, for at most ``window`` seconds.

Why: a local open(2) (or another server's open) is blocked until the SMB client acks.
Once the notification is written the loop has nothing to do and its thread sleeps in
epoll_wait; its CPU goes idle, and when the ack arrives the wake-up (an IPI, on a VM an
exit to the host) comes on top of the client's own time. Measured on the 2-vCPU VM
(server and client on separate CPUs, bench/m_breaks.local_open_break): break written ->
ack handled 73 us sleeping, 56 us polling; the local open's median 172 -> 150 us. The
price is CPU: at most ``window`` of polling per kernel break (breaks that need an ack
are rare: each needs a new write-caching grant), ending as soon as the break is done.
The loop keeps serving every other descriptor and callback meanwhile: polling is only
the loop's own iteration with a zero timeout (a callback re-scheduled with call_soon).

Not on a machine with one CPU: there the client (or the local program) needs the very
CPU the poll would hold.
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import Callable, Hashable

# Long enough for a client on the same host or a LAN to answer (the project's Python
# test client: ~60-80 us), short enough to cost nothing that matters per break.
DEFAULT_WINDOW = 0.0005


class AckPoll:
    """Poll the loop while pending(key) holds for any key started, up to `window`
    seconds after the last start. Loop thread only."""

    def __init__(self, pending: Callable[[Hashable], bool],
                 window: float = DEFAULT_WINDOW) -> None:
        self.pending = pending
        self.window = window if (os.cpu_count() or 1) > 1 else 0.0
        self._keys: dict[Hashable, None] = {}
        self._until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.polls = 0                      # loop iterations spent polling (tests)

    @property
    def active(self) -> bool:
        return bool(self._keys)

    def start(self, loop: asyncio.AbstractEventLoop, key: Hashable) -> None:
        """A break of `key` waits for an ack: poll until it is done (or the window ends)."""
        if self.window <= 0:
            return
        # time.monotonic, not loop.time(): uvloop's clock has millisecond steps.
        self._until = time.monotonic() + self.window
        if not self._keys:
            self._loop = loop
            loop.call_soon(self._tick)
        self._keys[key] = None

    def _tick(self) -> None:
        keys = self._keys
        for key in [k for k in keys if not self.pending(k)]:
            del keys[key]
        if keys and time.monotonic() < self._until:
            self.polls += 1
            self._loop.call_soon(self._tick)
        else:
            keys.clear()
