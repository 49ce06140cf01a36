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
        # protocol.faults.FaultPlan while a test injects faults; None in production
        # (the connection's only cost is testing this attribute).
        self.faults: Any = None
        # oplocks.backing.KernelSetup once start_kernel_leases() ran (None: grants are
        # SMB-level only, as with --no-kernel-leases).
        self.kernel: Any = None
        # File system calls that can block (open, fsync, cold reads) run here.
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(32, (os.cpu_count() or 2) * 4), thread_name_prefix="smbd-io")

    def start_kernel_leases(self) -> list[str]:
        """Probe every share for kernel leases, start the lease adapter and the inotify
        watcher if any share uses them, and return one status line per share. Call on
        the event loop before serving; oplocks.kernel.reserve_lease_signal() must have
        run on the main thread before any thread started (cli does it)."""
        from ..oplocks import kernel as K
        from ..oplocks.backing import KernelSetup
        from ..oplocks.watch import ModifyWatcher
        lines = []
        support = {}
        for share in self.shares.values():
            if share.is_ipc:
                continue
            if not share.kernel_leases:
                why = "--no-kernel-leases" if not self.config.kernel_leases else \
                    "kernel_leases = false for this share"
                lines.append(f"share {share.name}: kernel leases off ({why}); grants are "
                             "SMB-level only: local programs, NFS and other servers will "
                             "not break SMB client caches")
                continue
            sup = K.probe(share.path)
            if not sup.on:
                share.kernel_leases = False
                lines.append(f"share {share.name}: {sup.describe()}")
                continue
            support[share.name] = sup
            extra = "" if sup.write_ok else "; write caching is not granted"
            lines.append(f"share {share.name}: {sup.describe()}{extra}; read caching also "
                         "watched with inotify; handle caching SMB-level "
                         f"({'delegations' if sup.delegations else 'no F_SETDELEG'})")
        if not support:
            return lines
        loop = asyncio.get_running_loop()
        leases = K.KernelLeases(loop)
        watcher = ModifyWatcher(loop)
        try:
            leases.start()
            watcher.start()
        except (RuntimeError, OSError) as e:
            log.error("kernel leases cannot start: %s; grants are SMB-level only", e)
            watcher.close()
            leases.close()
            for name in support:
                self.shares[name.casefold()].kernel_leases = False
            return lines + [f"kernel leases: off: {e}"]
        lt = K._read_int(K._PROC_LEASE_BREAK_TIME)
        if lt is not None and self.config.break_timeout >= lt:
            lines.append(f"warning: break timeout {self.config.break_timeout} s is not below "
                         f"lease-break-time {lt} s: the kernel will force breaks first")
        self.kernel = KernelSetup(leases, watcher, support)
        return lines

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
        from .durable import keep
        for op in list(sess.opens.values()):
            # A durable open outlives its session and connection (protocol.durable).
            if not keep(self, op):
                close_open_now(self, op)
        sess.trees.clear()
        sess.state = "expired"

    def close(self) -> None:
        from .durable import close_all
        close_all(self)
        for op in list(self.opens.values()):
            from .create import close_open_now
            close_open_now(self, op)
        caching = getattr(self, "_caching", None)
        if caching is not None:
            caching.backing.close()
        elif self.kernel is not None:
            self.kernel.close()
        for s in self.shares.values():
            if s.root is not None:
                s.root.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
