"""The asyncio transport: accept TCP connections, split the direct-TCP framing, hand
whole frames to protocol.connection.Connection, and write what it sends."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from .protocol.connection import Connection
from .protocol.context import ServerContext
from .wire.header import MAX_FRAME

log = logging.getLogger("smbd_py.server")


class SmbTransportProtocol(asyncio.Protocol):
    __slots__ = ("ctx", "conn", "buf", "transport")

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.conn: Connection | None = None
        self.buf = bytearray()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.conn = Connection(self.ctx, transport, peer)
        self.ctx.connections.add(self.conn)
        log.debug("connection from %s", peer)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        n = len(buf)
        conn = self.conn
        while n - pos >= 4:
            if buf[pos] != 0:
                log.info("bad NetBIOS frame type from %s", conn.peer)
                conn.disconnect()
                return
            size = int.from_bytes(buf[pos + 1:pos + 4], "big")
            if size > MAX_FRAME or size < 4:
                conn.disconnect()
                return
            if n - pos - 4 < size:
                break
            conn.frame_received(bytes(buf[pos + 4:pos + 4 + size]))
            pos += 4 + size
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
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
