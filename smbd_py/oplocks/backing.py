"""Kernel backing of SMB caching grants: the per-inode fd plan, the kernel lease on it,
the inotify watch beside it, and the translation of kernel breaks into table events.

Owns, for every regular file of a kernel-leased share that this server has open:
the open file descriptions the server holds on the inode (at most one O_RDONLY and one
O_RDWR), the kernel lease (F_SETLEASE through oplocks.kernel.KernelLeases) on one of
them, and the IN_MODIFY watch (oplocks.watch.ModifyWatcher). protocol.caching drives it
from the lease table's CachingChanged / KernelBreakDone actions.

The fd plan (why every SMB open of an inode shares one open file description)
-----------------------------------------------------------------------------
The kernel counts *open file descriptions*: a write lease is refused unless the lease fd
is the inode's only open, a read lease while any writable open exists, and the server's
own second open() of a leased inode breaks its own lease. SMB, however, lets one client
open a file many times under one lease key (and, after breaks, many clients at once).
So the server opens each inode at most once per access mode - one O_RDWR description for
every SMB open that may write, one O_RDONLY description for pure readers - and gives each
SMB open a dup() of it (its own fd number, the same description: I/O is pread/pwrite at
explicit offsets, so the shared file position does not matter). The backing keeps one
more dup of each description as the lease fd, so SMB opens close their fds freely; the
description (and its lease) lives until the last SMB open of the inode has closed.
Consequences:
* While only one description exists, a write lease is possible however many SMB opens
  the inode has; SMB-level conflicts between them are the lease table's business.
* A pure reader first (O_RDONLY description) and a writer later means two descriptions:
  before the second is opened the backing drops its own lease (no self-break), W stays
  unbackable while both exist, and read caching falls back to the inotify watch.
* O_PATH opens (stat opens) and directories are not part of the plan: O_PATH opens do not
  count for leases, directories cannot be leased.

What backs what
---------------
* Write caching (lease RW/RWH, EXCLUSIVE, BATCH): a kernel write lease on the only
  description. If the kernel refuses (another process has the file open), the open is
  granted less (caching.back strips W): never a promise that nothing will break.
* Read caching (lease R/RH, LEVEL_II): the IN_MODIFY watch always, plus a kernel read
  lease when the only description is O_RDONLY (then a local writer's open breaks before
  its first write). After a write-lease break to read, an O_RDONLY lease fd downgrades;
  an O_RDWR one cannot (the kernel counts it as a writer) and is released, leaving the
  watch.
* Handle caching (H): SMB level only. Linux 6.19's F_SETDELEG would break on a local
  unlink/rename; this kernel has none (``KernelBacking.delegations``), so a local unlink
  or rename proceeds at once while a client still caches the handle: the client keeps
  its open (POSIX semantics) and sees the new state on its next open.
* Directory leases: SMB level only (creates, deletes and renames through this server).

Kernel break -> SMB break
-------------------------
The kernel's target F_RDLCK (a local reader) becomes LEASE_R for table.kernel_break: W
holders break to RH / LEVEL_II - a reader demands nobody caches writes, it does not care
about handles, so H stays. F_UNLCK (a local writer or truncater) becomes NONE. When every
holder has acked, closed or timed out (KernelBreakDone; the table's break timeout is below
lease-break-time), the lease is downgraded or released and the local open proceeds. An
IN_MODIFY from someone else is a kernel break to NONE as well (R breaks need no ack).
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional

from .kernel import NullKernelLeases
from .types import LEASE_H, LEASE_NONE, LEASE_R, LEASE_RWH, LEASE_W
from .watch import ModifyWatcher

log = logging.getLogger(__name__)

RO = "ro"
RW = "rw"


@dataclass
class Inode:
    key: Hashable
    fds: dict = field(default_factory=dict)       # RO/RW -> the backing's own dup
    users: dict = field(default_factory=dict)     # RO/RW -> set of holder ids
    lease_fd: int = -1                            # one of fds, when a lease is held
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class KernelBacking:
    """The fd plan and the kernel/inotify backing of one server. Loop thread only."""

    def __init__(self, leases, watcher: Optional[ModifyWatcher],
                 on_break: Callable[[Hashable, int], None], *,
                 write_ok: bool = True, read_ok: bool = True,
                 delegations: bool = False) -> None:
        self.leases = leases
        self.watcher = watcher
        self.on_break = on_break                  # (file_key, LEASE_R | LEASE_NONE)
        self.write_ok = write_ok and leases.running
        self.read_ok = read_ok and leases.running
        self.delegations = delegations
        self._inodes: dict[Hashable, Inode] = {}
        self._fd_key: dict[int, Hashable] = {}
        leases.on_break = self._on_kernel_break
        if watcher is not None:
            watcher.on_modify = self._on_modify

    # ------------------------------------------------------------------ what can be backed
    @property
    def cap(self) -> int:
        """The most caching a grant on a file of a backed share may carry."""
        if self.watcher is None or not self.watcher.running:
            return LEASE_NONE                     # nothing would break R: grant nothing
        return LEASE_RWH if self.write_ok else (LEASE_R | LEASE_H)

    # ------------------------------------------------------------------ the fd plan
    def lock(self, key: Hashable) -> asyncio.Lock:
        """Held while an SMB open of `key` gets its fd (dup or first open)."""
        ino = self._inodes.get(key)
        if ino is None:
            ino = self._inodes[key] = Inode(key)
        return ino.lock

    def dup(self, key: Hashable, holder: Hashable, write: bool) -> int:
        """An fd on the inode's existing description fit for `write`, or -1."""
        ino = self._inodes.get(key)
        if ino is None:
            return -1
        mode = RW if RW in ino.fds else (RO if not write and RO in ino.fds else None)
        if mode is None:
            return -1
        fd = os.dup(ino.fds[mode])
        ino.users.setdefault(mode, set()).add(holder)
        return fd

    def before_open(self, key: Hashable, write: bool) -> None:
        """The server is about to open another description of `key`: drop our own lease
        first, or the open would break it (and be reported as a foreign break)."""
        ino = self._inodes.get(key)
        if ino is None or ino.lease_fd < 0:
            return
        held = self.leases.held(ino.lease_fd)
        if held == "write" or (held == "read" and write):
            self._release(ino)

    def adopt(self, key: Hashable, holder: Hashable, fd: int, write: bool) -> None:
        """`fd` is a fresh description of `key` opened for (`write`) by holder: keep a dup
        of it as the inode's description of that mode."""
        ino = self._inodes.get(key)
        if ino is None:
            ino = self._inodes[key] = Inode(key)
        mode = RW if write else RO
        if mode not in ino.fds:
            ino.fds[mode] = os.dup(fd)
            self._fd_key[ino.fds[mode]] = key
        ino.users.setdefault(mode, set()).add(holder)

    def detach(self, key: Hashable, holder: Hashable) -> None:
        """An SMB open of `key` closed: close descriptions nobody uses any more."""
        ino = self._inodes.get(key)
        if ino is None:
            return
        for mode in (RO, RW):
            users = ino.users.get(mode)
            if users is None:
                continue
            users.discard(holder)
            if not users:
                del ino.users[mode]
                fd = ino.fds.pop(mode, -1)
                if fd >= 0:
                    if fd == ino.lease_fd:
                        self._release(ino)
                    self._fd_key.pop(fd, None)
                    os.close(fd)
        self.gc(key)

    def gc(self, key: Hashable) -> None:
        """Forget an inode with no description left and nobody opening it."""
        ino = self._inodes.get(key)
        if ino is not None and not ino.fds and not ino.lock.locked():
            if self.watcher is not None:
                self.watcher.unwatch(key)
            del self._inodes[key]

    def own_write(self, key: Hashable) -> None:
        if self.watcher is not None:
            self.watcher.own_write(key)

    # ------------------------------------------------------------------ backing
    def sync(self, key: Hashable, union: int) -> bool:
        """Make the kernel back `union` (the caching SMB holders have on `key` now).
        Returns False when write caching in `union` cannot be backed."""
        ino = self._inodes.get(key)
        if ino is None or not ino.fds:
            return not union & LEASE_W
        ok = True
        if union & LEASE_W:
            ok = self._want_write(ino)
        elif union & LEASE_R:
            self._want_read(ino)
        else:
            self._release(ino)
        if union & LEASE_R and self.watcher is not None:
            # The watch backs R whatever lease we hold: a write lease breaks before any
            # foreign write, and a dropped read lease leaves the watch on duty.
            self.watcher.watch(key, next(iter(ino.fds.values())))
        elif self.watcher is not None:
            self.watcher.unwatch(key)
        return ok

    def _want_write(self, ino: Inode) -> bool:
        if not self.write_ok or len(ino.fds) != 1:
            self._release(ino)
            return False
        fd = next(iter(ino.fds.values()))
        if ino.lease_fd == fd and self.leases.held(fd) == "write":
            return True
        if self.leases.breaking(fd) is not None:
            return False                     # the kernel is taking it away right now
        if self.leases.set_lease(fd, "write"):
            ino.lease_fd = fd
            return True
        if ino.lease_fd == fd and self.leases.held(fd) is None:
            ino.lease_fd = -1
        return False

    def _want_read(self, ino: Inode) -> None:
        fd = ino.lease_fd
        held = self.leases.held(fd) if fd >= 0 else None
        if held == "write":
            if self.leases.breaking(fd) is not None and self.leases.breaking(fd) == "none":
                self._release(ino)
            elif ino.fds.get(RO) == fd and len(ino.fds) == 1 and self.leases.downgrade(fd):
                return
            else:
                self._release(ino)
        elif held == "read":
            return
        # A read lease needs an O_RDONLY description and no writable open anywhere.
        if self.read_ok and list(ino.fds) == [RO]:
            fd = ino.fds[RO]
            if self.leases.breaking(fd) is None and self.leases.set_lease(fd, "read"):
                ino.lease_fd = fd

    def _release(self, ino: Inode) -> None:
        if ino.lease_fd >= 0:
            self.leases.release(ino.lease_fd)
            ino.lease_fd = -1

    # ------------------------------------------------------------------ breaks
    def _on_kernel_break(self, fd: int, target: str) -> None:
        key = self._fd_key.get(fd)
        if key is None:
            self.leases.release(fd)
            return
        self.on_break(key, LEASE_R if target == "read" else LEASE_NONE)
        # Logged after the break went out: a local open(2) waits for it.
        if log.isEnabledFor(logging.DEBUG):
            log.debug("kernel lease break on %s: to %s", key, target)

    def _on_modify(self, key: Hashable) -> None:
        log.debug("foreign write to %s: read caching breaks", key)
        self.on_break(key, LEASE_NONE)

    def close(self) -> None:
        for ino in list(self._inodes.values()):
            self._release(ino)
            for fd in ino.fds.values():
                os.close(fd)
        self._inodes.clear()
        self._fd_key.clear()
        if self.watcher is not None:
            self.watcher.close()
        self.leases.close()


class KernelSetup:
    """What start-up found and started: the lease adapter, the watcher and the probe of
    each share. ServerContext.start_kernel_leases makes it; protocol.caching asks it for
    the KernelBacking."""

    def __init__(self, leases, watcher: Optional[ModifyWatcher], support: dict) -> None:
        self.leases = leases
        self.watcher = watcher
        self.support = support            # share name -> kernel.LeaseSupport

    def backing(self, on_break) -> KernelBacking:
        write_ok = any(s.write_ok for s in self.support.values())
        read_ok = any(s.read_ok for s in self.support.values())
        delegations = any(s.delegations for s in self.support.values())
        return KernelBacking(self.leases, self.watcher, on_break, write_ok=write_ok,
                             read_ok=read_ok, delegations=delegations)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
        self.leases.close()


def null_backing(on_break) -> KernelBacking:
    """Where kernel leases are off: nothing is backed and nothing is capped."""
    return KernelBacking(NullKernelLeases(), None, on_break, write_ok=False, read_ok=False)
