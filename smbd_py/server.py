"""The asyncio transport: accept TCP connections, split the direct-TCP framing, hand
whole frames to protocol.connection.Connection, and write what it sends.

Frames are received with asyncio.BufferedProtocol: the kernel copies straight into our
memory. Small frames are read into one staging buffer shared by all connections and
handed on as bytes (one small copy, since the staging buffer is reused at once). A large frame (a WRITE's data)
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

# One staging buffer for all connections (as uvloop itself does for plain Protocols), so
# an idle connection costs no buffer memory. This is safe because the event loop reads
# one socket at a time: get_buffer, recv, buffer_updated run back to back, and
# buffer_updated always moves an unfinished small frame out into the connection's own
# `leftover` before returning.
_staging = bytearray(STAGING_SIZE)
_staging_mv = memoryview(_staging)
_staging_owner: list = [None]     # the protocol whose recv the staging buffer is lent to


class SmbTransportProtocol(asyncio.BufferedProtocol):
    __slots__ = ("ctx", "conn", "transport", "leftover", "big", "big_mv", "big_got")

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.conn: Connection | None = None
        self.leftover = b""          # start of a small frame not complete yet
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
        _staging_owner[0] = self
        n = len(self.leftover)
        if n:
            _staging[:n] = self.leftover
        return _staging_mv[n:]

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
        if _staging_owner[0] is not self:
            # Another connection's recv used the staging buffer in between: our bytes
            # are gone. Cannot happen with uvloop/asyncio's read loop; never guess.
            log.error("staging buffer lent to another connection; dropping %s", conn.peer)
            conn.disconnect()
            return
        _staging_owner[0] = None
        filled = len(self.leftover) + nbytes
        buf = _staging
        mv = _staging_mv
        pos = 0
        while filled - pos >= 4:
            if buf[pos] != 0:
                log.info("bad NetBIOS frame type from %s", conn.peer)
                conn.disconnect()
                self.leftover = b""
                return
            size = (buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]
            if size > MAX_FRAME or size < 4:
                conn.disconnect()
                self.leftover = b""
                return
            start = pos + 4
            have = filled - start
            if have >= size:
                if conn.closed:
                    self.leftover = b""
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
        self.leftover = bytes(mv[pos:filled]) if pos < filled else b""

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
