"""The asyncio transport: accept TCP connections, split the direct-TCP framing, hand
whole frames to protocol.connection.Connection, and write what it sends.

Frames are received with asyncio.BufferedProtocol: the kernel copies straight into our
memory. Small frames gather in one reused staging buffer and are handed on as bytes (one
small copy, since the staging buffer is reused at once). A large frame (a WRITE's data)
gets a bytearray of its exact size (reused from earlier frames once nothing refers to
them), the socket reads the rest of it directly into that bytearray, and the bytearray
itself becomes the frame: no copy at all in user space.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from . import bufpool
from .protocol.connection import Connection
from .protocol.context import ServerContext
from .wire.header import MAX_FRAME

log = logging.getLogger("smbd_py.server")

# uvloop reads up to 256 KB per recv; the staging buffer takes at least that much.
STAGING_SIZE = 256 * 1024
# A frame larger than this that has not fully arrived gets its own buffer. Smaller ones
# wait in the staging buffer (whose free room after compaction is always larger).
BIG_FRAME = 64 * 1024


class SmbTransportProtocol(asyncio.BufferedProtocol):
    __slots__ = ("ctx", "conn", "transport", "staging", "staging_mv", "filled", "big",
                 "big_mv", "big_got")

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.conn: Connection | None = None
        self.staging = bytearray(STAGING_SIZE)
        self.staging_mv = memoryview(self.staging)
        self.filled = 0              # bytes of the staging buffer holding data
        self.big: bytearray | None = None   # the large frame being received (no NetBIOS header)
        self.big_mv: memoryview | None = None
        self.big_got = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.conn = Connection(self.ctx, transport, peer)
        self.ctx.connections.add(self.conn)
        log.debug("connection from %s", peer)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.big_mv is not None:
            return self.big_mv[self.big_got:]
        return self.staging_mv[self.filled:]

    def buffer_updated(self, nbytes: int) -> None:
        conn = self.conn
        if self.big is not None:
            self.big_got += nbytes
            if self.big_got < len(self.big):
                return
            frame = self.big
            self.big = self.big_mv = None
            if not conn.closed:
                conn.frame_received(frame)
            return
        filled = self.filled + nbytes
        buf = self.staging
        mv = self.staging_mv
        pos = 0
        while filled - pos >= 4:
            if buf[pos] != 0:
                log.info("bad NetBIOS frame type from %s", conn.peer)
                conn.disconnect()
                self.filled = 0
                return
            size = (buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]
            if size > MAX_FRAME or size < 4:
                conn.disconnect()
                self.filled = 0
                return
            start = pos + 4
            have = filled - start
            if have >= size:
                if conn.closed:
                    self.filled = 0
                    return
                conn.frame_received(bytes(mv[start:start + size]))
                pos = start + size
                continue
            if size > BIG_FRAME:
                # The rest of this frame goes straight from the socket into its own buffer.
                big = bufpool.shared.get(size)
                big[:have] = mv[start:filled]
                self.big = big
                self.big_mv = memoryview(big)
                self.big_got = have
                pos = filled
            break
        if pos:
            rest = filled - pos
            if rest:
                # bytes(): source and target may overlap (slice assignment is a memcpy).
                buf[:rest] = bytes(mv[pos:filled])
            filled = rest
        self.filled = filled

    def connection_lost(self, exc: Exception | None) -> None:
        self.big = self.big_mv = None
        if self.conn is not None:
            self.conn.connection_lost()


async def start_servers(ctx: ServerContext, listen: list[tuple[str, int]]) -> list[asyncio.base_events.Server]:
    loop = asyncio.get_running_loop()
    servers = []
    for host, port in listen:
        srv = await loop.create_server(lambda: SmbTransportProtocol(ctx), host, port,
                                       reuse_address=True, backlog=1024)
        servers.append(srv)
        log.info("listening on %s:%d", host, port)
    return servers
