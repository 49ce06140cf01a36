"""Process hygiene for peers the tests start: a child gets the signal state of a fresh
process. The kernel-lease tests block SIGIO and a realtime signal in pytest's main thread
(the adapter requires it), and a child would inherit that mask; Samba with kernel
oplocks would then never hear of its lease breaks."""
from __future__ import annotations

import signal

_RESET = [signal.SIGIO, *range(signal.SIGRTMIN, signal.SIGRTMAX + 1)]


def fresh_signals() -> None:
    """preexec_fn: empty signal mask, default dispositions for the lease signals."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for s in _RESET:
        try:
            signal.signal(s, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
