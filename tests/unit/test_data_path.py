"""The data path's pieces without a network: direct-TCP framing through
asyncio.BufferedProtocol (any chunking of the byte stream gives the same frames, large
frames land in reused buffers), BufferPool's reuse rule, and Signer.sign_parts against
Signer.sign over the joined message. The live path is covered by tests/test_smbclient.py
and the benchmark."""
from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from smbd_py import bufpool, server as server_mod
from smbd_py.bufpool import BufferPool
from smbd_py.security.signing import AES_CMAC, AES_GMAC, HMAC_SHA256, Signer


class FakeConn:
    def __init__(self) -> None:
        self.frames: list = []
        self.closed = False
        self.peer = ("127.0.0.1", 1)

    def frame_received(self, data) -> None:
        # Copy now: a large frame's buffer may be reused once nothing refers to it.
        self.frames.append(bytes(data))

    def disconnect(self) -> None:
        self.closed = True

    def connection_lost(self) -> None:
        self.closed = True


def make_protocol() -> tuple[server_mod.SmbTransportProtocol, FakeConn]:
    proto = server_mod.SmbTransportProtocol.__new__(server_mod.SmbTransportProtocol)
    server_mod.SmbTransportProtocol.__init__(proto, ctx=None)
    conn = FakeConn()
    proto.conn = conn
    return proto, conn


def feed(proto, stream: bytes, chunks: list[int]) -> None:
    """Deliver stream the way uvloop does: get_buffer, copy at most its size, buffer_updated."""
    pos = 0
    i = 0
    while pos < len(stream):
        want = chunks[i % len(chunks)] if chunks else len(stream)
        i += 1
        buf = proto.get_buffer(-1)
        assert len(buf) > 0
        n = min(want, len(buf), len(stream) - pos)
        buf[:n] = stream[pos:pos + n]
        del buf
        proto.buffer_updated(n)
        pos += n


def framed(payloads: list[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in payloads)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.sampled_from([4, 64, 100, 4000, server_mod.BIG_FRAME,
                                       server_mod.BIG_FRAME + 1, 300_000, 1 << 20]),
                      min_size=1, max_size=6),
       chunks=st.lists(st.integers(min_value=1, max_value=400_000), min_size=1, max_size=5),
       seed=st.integers(0, 255))
def test_any_chunking_gives_the_same_frames(sizes, chunks, seed):
    payloads = [bytes([(seed + i) % 256]) * s for i, s in enumerate(sizes)]
    proto, conn = make_protocol()
    feed(proto, framed(payloads), chunks)
    assert conn.frames == payloads
    assert not conn.closed
    assert proto.big is None and proto.leftover == b""


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.sampled_from([4, 64, 5000, server_mod.BIG_FRAME + 1, 300_000]),
                      min_size=1, max_size=5),
       chunks=st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=4))
def test_connections_sharing_the_staging_buffer_keep_their_own_bytes(sizes, chunks):
    # Two connections' reads alternate (as the event loop serves sockets in turn): each
    # keeps its unfinished frame to itself although both read into one staging buffer.
    streams, protos = [], []
    for k in range(2):
        payloads = [bytes([k * 100 + i]) * s for i, s in enumerate(sizes)]
        streams.append((framed(payloads), payloads))
        protos.append(make_protocol())
    pos = [0, 0]
    i = 0
    while pos[0] < len(streams[0][0]) or pos[1] < len(streams[1][0]):
        k = i % 2
        want = chunks[i % len(chunks)]
        i += 1
        stream = streams[k][0]
        if pos[k] >= len(stream):
            continue
        proto = protos[k][0]
        buf = proto.get_buffer(-1)
        n = min(want, len(buf), len(stream) - pos[k])
        buf[:n] = stream[pos[k]:pos[k] + n]
        del buf
        proto.buffer_updated(n)
        pos[k] += n
    for k in range(2):
        assert protos[k][1].frames == streams[k][1]
        assert not protos[k][1].closed


def test_large_frame_goes_straight_into_its_own_buffer_and_is_reused():
    bufpool.shared.clear()
    proto, conn = make_protocol()
    seen = []
    conn.frame_received = seen.append          # keep the frame object itself
    size = 1 << 20
    feed(proto, framed([b"a" * size]), [256_000])
    assert len(seen) == 1 and isinstance(seen[0], bytearray) and len(seen[0]) == size
    first = seen.pop()
    first_id = id(first)
    del first                                  # the request is done with it
    feed(proto, framed([b"b" * size]), [256_000])
    assert id(seen[0]) == first_id and seen[0] == b"b" * size
    # While a frame is still referenced (a request in flight), the next one gets another.
    feed(proto, framed([b"c" * size]), [256_000])
    assert seen[1] is not seen[0] and seen[0] == b"b" * size and seen[1] == b"c" * size


@pytest.mark.parametrize("stream", [b"\x85\x00\x00\x00", b"\x00\x00\x00\x02ab",
                                    b"\x00\xff\xff\xff" + b"x" * 10])
def test_bad_framing_disconnects(stream, monkeypatch):
    monkeypatch.setattr(server_mod, "MAX_FRAME", 0x00FFFFFE)
    proto, conn = make_protocol()
    feed(proto, stream, [])
    assert conn.closed and conn.frames == []


def test_pool_reuses_only_unseen_buffers():
    pool = BufferPool(keep=3)
    a = pool.get(1000)
    a_id = id(a)
    assert pool.get(1000) is not a             # `a` is still referenced here
    del a
    b = pool.get(1000)
    assert id(b) == a_id
    view = memoryview(b)[:10]                  # e.g. uvloop holding queued output
    del b
    c = pool.get(1000)
    assert id(c) != a_id
    del view
    assert pool.get(999) is not None and len(pool.items) <= 3


def test_pool_lets_go_after_idle(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(bufpool, "_monotonic", lambda: now[0])
    pool = BufferPool(keep=3, idle=10.0)
    a = pool.get(1000)
    a_id = id(a)
    del a
    now[0] += 5
    b = pool.get(1000)
    assert id(b) == a_id
    del b
    now[0] += 11
    c = pool.get(2000)
    assert len(pool.items) == 1 and pool.items[0] is c


@pytest.mark.parametrize("algorithm", [HMAC_SHA256, AES_CMAC, AES_GMAC])
def test_sign_parts_equals_sign_of_joined_message(algorithm):
    signer = Signer(algorithm, os.urandom(16))
    header = bytearray(os.urandom(64))
    header[:4] = b"\xfeSMB"
    parts = (os.urandom(16), b"", bytearray(os.urandom(70_000)), memoryview(os.urandom(33))[1:])
    whole = bytes(header) + b"".join(bytes(p) for p in parts)
    assert signer.sign_parts(header, parts) == signer.sign(whole)
    assert signer.sign_parts(header, parts, message_id=7, is_response=True, is_cancel=False) == \
        signer.sign(whole, message_id=7, is_response=True, is_cancel=False)
