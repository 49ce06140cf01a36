"""oplocks.ack_poll: the loop polls while a kernel break waits for its ack, stops as soon
as the break is done or the window has passed, and never runs on one CPU."""
from __future__ import annotations

import asyncio
import time

from smbd_py.oplocks import ack_poll
from smbd_py.oplocks.ack_poll import AckPoll


async def _settle(poll: AckPoll, limit: float = 2.0) -> None:
    deadline = time.monotonic() + limit
    while poll.active and time.monotonic() < deadline:
        await asyncio.sleep(0)


async def test_polls_until_the_break_is_done():
    pending = {"f"}
    poll = AckPoll(lambda key: key in pending, window=5.0)
    loop = asyncio.get_running_loop()
    poll.start(loop, "f")
    assert poll.active
    for _ in range(20):
        await asyncio.sleep(0)
    assert poll.polls >= 10          # one poll per loop iteration, the loop kept running
    pending.clear()                  # the ack released the kernel lease
    await _settle(poll)
    n = poll.polls
    assert not poll.active
    for _ in range(5):
        await asyncio.sleep(0)
    assert poll.polls == n           # stopped: no callback left behind


async def test_window_bounds_the_poll():
    poll = AckPoll(lambda key: True, window=0.002)   # a client that never acks
    t0 = time.monotonic()
    poll.start(asyncio.get_running_loop(), "f")
    await _settle(poll)
    assert not poll.active
    assert time.monotonic() - t0 < 1.0
    assert poll.polls > 0


async def test_several_breaks_share_one_poll():
    pending = {"a", "b"}
    poll = AckPoll(lambda key: key in pending, window=5.0)
    loop = asyncio.get_running_loop()
    poll.start(loop, "a")
    poll.start(loop, "b")
    await asyncio.sleep(0)
    pending.discard("a")
    for _ in range(5):
        await asyncio.sleep(0)
    assert poll.active               # "b" still waits
    pending.clear()
    await _settle(poll)
    assert not poll.active


async def test_no_poll_on_one_cpu_or_zero_window(monkeypatch):
    loop = asyncio.get_running_loop()
    poll = AckPoll(lambda key: True, window=0.0)
    poll.start(loop, "f")
    assert not poll.active
    monkeypatch.setattr(ack_poll.os, "cpu_count", lambda: 1)
    poll = AckPoll(lambda key: True)
    poll.start(loop, "f")
    assert not poll.active and poll.window == 0.0


def test_window_is_configured_by_break_ack_poll_us(tmp_path):
    """[server] break_ack_poll_us sets the poll window (0 turns polling off); a negative
    value is refused with the file named; the server's caching layer uses the value."""
    import pytest
    from smbd_py.config import ConfigError, load_file
    from smbd_py.protocol.caching import caching_of
    from smbd_py.testing import SmbdServer
    from smbd_py.testing import loop
    (tmp_path / "d").mkdir()
    cfg = tmp_path / "smbd.toml"
    cfg.write_text('[server]\nbreak_ack_poll_us = 0\n\n[share.d]\npath = "d"\n')
    assert load_file(str(cfg)).break_ack_poll_us == 0
    cfg.write_text('[server]\nbreak_ack_poll_us = -1\n\n[share.d]\npath = "d"\n')
    with pytest.raises(ConfigError, match=str(cfg)):
        load_file(str(cfg))
    for us in (0, 250):
        with SmbdServer(break_ack_poll_us=us) as srv:
            got = loop.call(lambda: caching_of(srv.ctx).ack_poll.window)
        assert got == (us / 1e6 if (ack_poll.os.cpu_count() or 1) > 1 else 0.0)
