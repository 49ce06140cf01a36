"""Server-wide state shared by every connection: configuration, shares, the user database,
the global open table (for share-mode checks across connections), and the blocking-I/O pool."""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
import uuid
from typing import Any

from ..config import ServerConfig
from .objects import FileState, Open, Share

log = logging.getLogger("smbd_py")


class ServerContext:
    def __init__(self, config: ServerConfig, user_db: Any) -> None:
        from ..fs.paths import ShareRoot
        self.config = config
        self.user_db = user_db
        self.server_guid = uuid.uuid4().bytes
        self.start_time = time.time()
        self.shares: dict[str, Share] = {}
        for sc in config.shares.values():
            self.shares[sc.name.casefold()] = Share(
                sc.name, sc.path, ShareRoot(sc.path), read_only=sc.read_only,
                guest_ok=sc.guest_ok, valid_users=sc.valid_users,
                kernel_leases=sc.kernel_leases and config.kernel_leases, comment=sc.comment)
        self.shares["ipc$"] = Share("IPC$", None, None, is_ipc=True, guest_ok=True,
                                    comment="IPC Service")
        self.opens: dict[int, Open] = {}                       # volatile id -> open
        self.files: dict[tuple[int, int], FileState] = {}   # (st_dev, st_ino) -> state
        self.connections: set[Any] = set()
        # File system calls that can block (open, fsync, cold reads) run here.
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(32, (os.cpu_count() or 2) * 4), thread_name_prefix="smbd-io")

    @property
    def guest_allowed(self) -> bool:
        return self.config.guest or any(s.guest_ok for s in self.shares.values() if not s.is_ipc)

    async def run_io(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # ---- open table -----------------------------------------------------------------------
    def file_state(self, key: tuple[int, int], components: tuple[str, ...], is_dir: bool,
                   share: Share) -> FileState:
        fs = self.files.get(key)
        if fs is None:
            fs = self.files[key] = FileState(key, components, is_dir, share)
        return fs

    def add_open(self, op: Open) -> None:
        self.opens[op.volatile_id] = op
        op.session.opens[op.volatile_id] = op
        if op.file is not None:
            op.file.opens.append(op)

    def remove_open(self, op: Open) -> None:
        self.opens.pop(op.volatile_id, None)
        op.session.opens.pop(op.volatile_id, None)
        fs = op.file
        if fs is not None:
            try:
                fs.opens.remove(op)
            except ValueError:
                pass
            if not fs.opens and self.files.get(fs.key) is fs:
                del self.files[fs.key]

    def connection_gone(self, conn: Any) -> None:
        self.connections.discard(conn)

    def session_gone(self, sess: Any) -> None:
        from .create import close_open_now
        for op in list(sess.opens.values()):
            close_open_now(self, op)
        sess.trees.clear()
        sess.state = "expired"

    def close(self) -> None:
        for op in list(self.opens.values()):
            from .create import close_open_now
            close_open_now(self, op)
        for s in self.shares.values():
            if s.root is not None:
                s.root.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
