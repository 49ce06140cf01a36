"""SmbdServer: a real smbd_py server inside the test process, driven by the test.

Owns one server's life (configuration, temporary share directories, listening socket on
an ephemeral loopback port, stop) and the test-facing calls: users, inspection of
opens/oplocks/leases, on-demand breaks, injected faults (protocol.faults) and the
break-ack timeout. The server runs on the shared loop thread (testing.loop); every
method here may be called from any other thread, sync or async test alike, and returns
within a bounded time.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import shutil
import tempfile
from typing import Any

from ..config import ServerConfig, ShareConfig, validate
from ..protocol.faults import Fault, FaultPlan
from . import breaks, loop, snapshot

DEFAULT_USER = "alice"
DEFAULT_PASSWORD = "Secret-pw1"
LOG_KEEP = 5000               # log records kept per server (the newest)
_CONFIG_KEYS = frozenset(f.name for f in dataclasses.fields(ServerConfig)) - {
    "listen", "shares", "users_file"}


class _Records(logging.Handler):
    """Keeps the server's newest log records (all servers of a process share one
    logger; a record is kept by every server running when it was logged)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: collections.deque = collections.deque(maxlen=LOG_KEEP)
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class SmbdServer:
    """A started smbd_py server (use as a context manager, or start()/stop()).

    share_path: the main share's directory (None: a new temporary directory, removed
    at stop). shares: more shares, name -> directory or None (temporary). user and
    password: the first NTLM account. config: ServerConfig fields to override, e.g.
    break_timeout=1.0, kernel_leases=False, signing_required=True, guest=True.
    """

    def __init__(self, share_path: str | os.PathLike | None = None, *, share: str = "share",
                 user: str = DEFAULT_USER, password: str = DEFAULT_PASSWORD,
                 shares: dict[str, str | os.PathLike | None] | None = None,
                 host: str = "127.0.0.1", port: int = 0, log_level: str = "info",
                 **config: Any) -> None:
        unknown = set(config) - _CONFIG_KEYS
        if unknown:
            raise TypeError(f"unknown server settings {sorted(unknown)}; "
                            f"known: {sorted(_CONFIG_KEYS)}")
        self.host = host
        self.port = port
        self.share = share
        self.user = user
        self.password = password
        self.log_level = log_level
        self._config = config
        self._wanted = {share: share_path, **(shares or {})}
        self.share_paths: dict[str, str] = {}
        self._tmpdirs: list[str] = []
        self.ctx: Any = None             # protocol.context.ServerContext while running
        self._servers: list = []
        self._records = _Records()
        self._old_level = logging.NOTSET
        self.status_lines: list[str] = []  # what the server said about kernel leases

    # ---- life ---------------------------------------------------------------------------
    @property
    def share_path(self) -> str:
        return self.share_paths[self.share]

    @property
    def unc(self) -> str:
        """//host/share, as smbclient takes it."""
        return f"//{self.host}/{self.share}"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def running(self) -> bool:
        return self.ctx is not None

    def start(self) -> "SmbdServer":
        if self.ctx is not None:
            return self
        from ..security.users import UserDb
        cfg = ServerConfig(listen=[(self.host, self.port)])
        for key, value in self._config.items():
            setattr(cfg, key, value)
        for name, path in self._wanted.items():
            if path is None:
                path = tempfile.mkdtemp(prefix=f"smbd_py-{name}-")
                self._tmpdirs.append(path)
            self.share_paths[name] = os.fspath(path)
            cfg.shares[name] = ShareConfig(name=name, path=self.share_paths[name],
                                           guest_ok=cfg.guest)
        validate(cfg)
        users = UserDb()
        users.add(self.user, self.password)
        logger = logging.getLogger("smbd_py")
        level = getattr(logging, self.log_level.upper(), logging.INFO)
        self._old_level = logger.level
        if logger.level == logging.NOTSET or logger.level > level:
            logger.setLevel(level)
        logger.addHandler(self._records)
        try:
            loop.call(self._start, cfg, users)
        except BaseException:
            self._unhook_log()
            self._remove_tmpdirs()
            raise
        return self

    def _unhook_log(self) -> None:
        logger = logging.getLogger("smbd_py")
        logger.removeHandler(self._records)
        logger.setLevel(self._old_level)

    async def _start(self, cfg: ServerConfig, users: Any) -> None:
        from ..protocol.context import ServerContext
        from ..server import start_servers
        ctx = ServerContext(cfg, users)
        try:
            self.status_lines = ctx.start_kernel_leases()
            self._servers = await start_servers(ctx, cfg.listen)
        except BaseException:
            ctx.close()
            raise
        self.port = self._servers[0].sockets[0].getsockname()[1]
        self.ctx = ctx

    def stop(self) -> None:
        """Disconnect every client, close every open, release kernel leases, stop
        listening, remove temporary shares. Idempotent."""
        if self.ctx is not None:
            try:
                loop.call(self._stop)
            finally:
                self.ctx = None
                self._unhook_log()
        self._remove_tmpdirs()

    async def _stop(self) -> None:
        import asyncio
        for s in self._servers:
            s.close()
        ctx = self.ctx
        for conn in list(ctx.connections):
            conn.disconnect()          # closes its sessions' opens (fds close in the pool)
            for t in list(conn.tasks):
                t.cancel()
        # Let the pool finish those closes: ServerContext.close() cancels queued work,
        # which in a long-lived test process would leak the descriptors.
        try:
            await asyncio.wait_for(asyncio.to_thread(ctx.executor.shutdown, True), 10)
        except asyncio.TimeoutError:
            pass
        ctx.close()
        for s in self._servers:
            try:
                await asyncio.wait_for(s.wait_closed(), 5)
            except asyncio.TimeoutError:
                pass
        self._servers = []

    def _remove_tmpdirs(self) -> None:
        for d in self._tmpdirs:
            shutil.rmtree(d, ignore_errors=True)
        self._tmpdirs.clear()

    def __enter__(self) -> "SmbdServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _ctx(self) -> Any:
        if self.ctx is None:
            raise RuntimeError("the server is not running: start() it first")
        return self.ctx

    @property
    def kernel_leases_active(self) -> bool:
        """True when grants on this server are backed by kernel leases."""
        ctx = self._ctx()
        return ctx.kernel is not None

    # ---- users --------------------------------------------------------------------------
    def add_user(self, name: str, password: str) -> None:
        """Add an NTLM account, or change its password."""
        loop.call(self._ctx().user_db.add, name, password)

    def remove_user(self, name: str) -> None:
        """Remove an account (KeyError if unknown). Its sessions stay until they end."""
        loop.call(self._ctx().user_db.remove, name)

    def users(self) -> list[str]:
        return loop.call(self._ctx().user_db.names)

    # ---- inspection ---------------------------------------------------------------------
    def opens(self) -> list[snapshot.OpenInfo]:
        """Every open on the server now (IPC$ pipes included)."""
        return loop.call(snapshot.opens, self._ctx())

    def oplocks(self) -> list[snapshot.OplockInfo]:
        """Every oplock (not lease) held now, one per open."""
        return loop.call(snapshot.oplocks, self._ctx())

    def leases(self) -> list[snapshot.LeaseInfo]:
        """Every lease held now, one per (client guid, lease key)."""
        return loop.call(snapshot.leases, self._ctx())

    def connections(self) -> list[tuple]:
        """(peer address, client guid) of every connected client."""
        ctx = self._ctx()
        return loop.call(lambda: [(c.peer, bytes(c.client_guid)) for c in ctx.connections
                                  if not c.closed])

    # ---- breaks -------------------------------------------------------------------------
    def break_timeout(self) -> float:
        return self._ctx().config.break_timeout

    def set_break_timeout(self, seconds: float) -> None:
        """How long a holder has to acknowledge a break (breaks sent from now on)."""
        if seconds <= 0:
            raise ValueError("break timeout must be positive")
        ctx = self._ctx()

        def apply() -> None:
            from ..protocol.caching import caching_of
            ctx.config.break_timeout = float(seconds)
            caching_of(ctx).table.break_timeout = float(seconds)
        loop.call(apply)

    def break_file(self, path: str, to: Any = "NONE", *, share: str | None = None,
                   timeout: float | None = None) -> breaks.BreakHandle:
        """Break every oplock and lease on the open file `path` (share-relative) down to
        `to` - lease letters "R", "RH", "NONE", ..., lease bits, or an oplock level
        ("LEVEL_II") - as a kernel break does. Returns a BreakHandle at once; it ends
        when every holder acked or closed or the break timeout took its caching
        (or after `timeout` s, if given). FileNotFoundError when nobody has the file open."""
        target = snapshot.parse_target(to)
        ctx = self._ctx()
        share_name = share or self.share
        from ..protocol.faults import normalize_path
        want = normalize_path(path)

        def begin():
            keys = {op.file_key for op in ctx.opens.values()
                    if not op.closed and op.file_key is not None
                    and op.tree.share.name.casefold() == share_name.casefold()
                    and normalize_path(snapshot.open_path(op)) == want}
            if not keys:
                raise FileNotFoundError(f"no open of {path!r} on share {share_name!r}")
            if len(keys) > 1:   # an old open of a replaced file still lives
                raise ValueError(f"{path!r} names {len(keys)} different files among the opens")
            (key,) = keys
            holders = breaks.start(ctx, key, target)
            fut = loop.submit(breaks.follow(ctx, path, target, holders, timeout))
            return breaks.BreakHandle(fut, holders)
        return loop.call(begin)

    # ---- faults -------------------------------------------------------------------------
    def _add_fault(self, fault: Fault) -> Fault:
        ctx = self._ctx()

        def add() -> Fault:
            if ctx.faults is None:
                ctx.faults = FaultPlan()
            return ctx.faults.add(fault)
        return loop.call(add)

    def fail_next(self, status: Any, command: Any = "CREATE", *, path: str | None = None,
                  count: int | None = 1) -> Fault:
        """The next `count` requests of `command` (CREATE: naming `path`, if given) are
        answered with NTSTATUS `status` (NtStatus, int or name) without being handled."""
        return self._add_fault(Fault("fail", command, count=count, status=status, path=path))

    def delay(self, command: Any, seconds: float, *, count: int | None = 1,
              path: str | None = None) -> Fault:
        """The responses to the next `count` requests of `command` go out `seconds` late."""
        return self._add_fault(Fault("delay", command, count=count, seconds=seconds, path=path))

    def drop_next(self, command: Any, *, count: int | None = 1, path: str | None = None) -> Fault:
        """The next `count` requests of `command` are handled but never answered."""
        return self._add_fault(Fault("drop", command, count=count, path=path))

    def faults(self) -> list[Fault]:
        """The rules still in force."""
        ctx = self._ctx()
        return loop.call(lambda: list(ctx.faults.rules) if ctx.faults is not None else [])

    def clear_faults(self) -> None:
        """Drop every rule; the server is back to no per-request fault check at all."""
        ctx = self._ctx()

        def clear() -> None:
            ctx.faults = None
        loop.call(clear)

    # ---- logs ---------------------------------------------------------------------------
    def log_tail(self, n: int = 60) -> str:
        recs = list(self._records.records)[-n:]
        return "\n".join(self._records.format(r) for r in recs)

    def internal_errors(self) -> list[str]:
        """Log lines of requests that crashed the server's handling (the connection was
        dropped instead of answered); a correct server has none."""
        return [self._records.format(r) for r in list(self._records.records)
                if r.levelno >= logging.ERROR and "internal error" in r.getMessage()]
