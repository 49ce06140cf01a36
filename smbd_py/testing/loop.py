"""The event loop test servers run on: one uvloop loop in one daemon thread per process.

Owns that thread and the two ways into it: ``call`` runs a function or coroutine on the
loop and waits (bounded) for its result; ``submit`` starts a coroutine there and hands
back its concurrent future. Every server of a process shares the loop because the
transport (smbd_py.server) keeps one staging buffer for all connections, which is only
safe while one thread reads sockets.

Kernel leases: their signals must be blocked in every thread of the process, and
threads inherit the mask of their creator. So before it creates the loop thread, the
creating thread (the main thread, in a test run) reserves a lease signal
(oplocks.kernel.reserve_lease_signal). Threads that existed before and do not block it
make a server start with kernel leases off; SmbdServer.kernel_leases_active says so.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
from typing import Any, Callable

log = logging.getLogger("smbd_py.testing")

CALL_TIMEOUT_S = 30.0       # no call into the server loop may hang a test longer

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:          # the server runs on plain asyncio too, only slower
        return asyncio.new_event_loop()


def get_loop() -> asyncio.AbstractEventLoop:
    """The running server loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is not None and _thread is not None and _thread.is_alive():
            return _loop
        try:
            from ..oplocks.kernel import reserve_lease_signal
            reserve_lease_signal()
        except (OSError, RuntimeError, ValueError) as e:
            log.warning("no signal for kernel lease breaks: %s", e)
        loop = _new_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        t = threading.Thread(target=run, name="smbd_py-testing-loop", daemon=True)
        t.start()
        if not ready.wait(CALL_TIMEOUT_S):
            raise RuntimeError("the smbd_py test server loop did not start")
        _loop, _thread = loop, t
        return loop


def on_loop_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def submit(coro: Any) -> concurrent.futures.Future:
    """Run coroutine `coro` on the server loop; its future, usable from any thread."""
    return asyncio.run_coroutine_threadsafe(coro, get_loop())


def call(fn: Callable[..., Any], *args: Any, timeout: float | None = CALL_TIMEOUT_S) -> Any:
    """Run fn(*args) on the server loop (awaiting it if it is a coroutine function) and
    return its result; exceptions propagate. Called on the loop thread itself, a plain
    function runs directly (a coroutine function cannot be waited for there)."""
    if on_loop_thread():
        if inspect.iscoroutinefunction(fn):
            raise RuntimeError("call() of a coroutine function from the server loop thread")
        return fn(*args)

    async def run() -> Any:
        out = fn(*args)
        if inspect.iscoroutine(out):    # not any awaitable: a BreakHandle is one
            out = await out
        return out
    fut = submit(run())
    try:
        return fut.result(timeout)
    except concurrent.futures.TimeoutError:
        fut.cancel()
        raise TimeoutError(f"smbd_py test server: {getattr(fn, '__name__', fn)} took "
                           f"more than {timeout} s") from None
