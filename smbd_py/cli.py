"""The command line: `smbd-py serve`, `smbd-py user add|del`. Other tools drive these
flags, so they stay stable."""
from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import signal
import sys

from .config import ConfigError, ServerConfig, load_file, parse_listen, parse_share_flag, validate

log = logging.getLogger("smbd_py")


def _build_config(args) -> ServerConfig:
    cfg = load_file(args.config) if args.config else ServerConfig()
    if args.listen:
        cfg.listen = [parse_listen(x) for x in args.listen]
    for s in args.share or []:
        sc = parse_share_flag(s)
        if args.guest:
            sc.guest_ok = True
        cfg.shares[sc.name] = sc
    if args.users:
        cfg.users_file = args.users
    if args.guest:
        cfg.guest = True
        for sc in cfg.shares.values():
            sc.guest_ok = True
    if args.break_timeout is not None:
        cfg.break_timeout = args.break_timeout
    if args.break_ack_poll_us is not None:
        if args.break_ack_poll_us < 0:
            raise ConfigError("--break-ack-poll-us: must be >= 0")
        cfg.break_ack_poll_us = args.break_ack_poll_us
    if args.no_kernel_leases:
        cfg.kernel_leases = False
    validate(cfg)
    return cfg


def _load_users(cfg: ServerConfig):
    from .security.users import UserDb
    if cfg.users_file:
        return UserDb.load(cfg.users_file)
    return UserDb()


async def _serve(cfg: ServerConfig, user_db, ready_fd: int | None) -> None:
    from .protocol.context import ServerContext
    from .server import start_servers
    ctx = ServerContext(cfg, user_db)
    for line in ctx.start_kernel_leases():
        print(f"smbd-py: {line}", flush=True)
    servers = await start_servers(ctx, cfg.listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    for host, port in cfg.listen:
        print(f"smbd-py: serving {', '.join(s.name for s in cfg.shares.values())} on {host}:{port}", flush=True)
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    await stop.wait()
    for s in servers:
        s.close()
    for conn in list(ctx.connections):
        conn.disconnect()
    ctx.close()


def cmd_serve(args) -> int:
    try:
        cfg = _build_config(args)
        user_db = _load_users(cfg)
    except ConfigError as e:
        print(f"smbd-py: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # UserDbError names the file
        print(f"smbd-py: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if cfg.kernel_leases and any(sc.kernel_leases for sc in cfg.shares.values()):
        # Lease-break signals must be blocked in every thread: block them here, on the
        # main thread, before the event loop or the I/O pool start any thread.
        from .oplocks.kernel import reserve_lease_signal
        try:
            reserve_lease_signal()
        except OSError as e:
            log.error("no signal for kernel lease breaks: %s", e)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(_serve(cfg, user_db, args.ready_fd))
    except OSError as e:
        print(f"smbd-py: cannot listen: {e}", file=sys.stderr)
        return 1
    return 0


def _read_password(args) -> str:
    if args.password_stdin:
        pw = sys.stdin.readline()
        return pw.rstrip("\r\n")
    return getpass.getpass(f"Password for {args.name}: ")


def cmd_user_add(args) -> int:
    from .security.users import UserDb, UserDbError
    try:
        db = UserDb.load(args.users, missing_ok=True)
        db.add(args.name, _read_password(args))
        db.save(args.users)
    except UserDbError as e:
        print(f"smbd-py: {e}", file=sys.stderr)
        return 2
    print(f"smbd-py: user {args.name} saved in {args.users}")
    return 0


def cmd_user_del(args) -> int:
    from .security.users import UserDb, UserDbError
    try:
        db = UserDb.load(args.users)
        db.remove(args.name)
        db.save(args.users)
    except KeyError:
        print(f"smbd-py: no user {args.name} in {args.users}", file=sys.stderr)
        return 1
    except UserDbError as e:
        print(f"smbd-py: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_streams_gc(args) -> int:
    from .fs.streams import collect_orphans
    for did in collect_orphans(args.share_path, dry_run=args.dry_run, min_age_s=args.min_age):
        print(("would remove " if args.dry_run else "removed ") + did)
    return 0


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smbd-py", description="An SMB2/3 file server whose "
                                "oplocks and leases are backed by Linux kernel leases.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve shares")
    s.add_argument("--config", help="TOML configuration file")
    s.add_argument("--listen", action="append", metavar="HOST:PORT", help="address to listen on (repeatable)")
    s.add_argument("--share", action="append", metavar="NAME=PATH", help="share a directory (repeatable)")
    s.add_argument("--users", metavar="FILE", help="users file (NT hashes)")
    s.add_argument("--guest", action="store_true", help="allow guest access to the shares")
    s.add_argument("--break-timeout", type=float, default=None, metavar="SECONDS",
                   help="oplock/lease break acknowledgement timeout (default 35)")
    s.add_argument("--break-ack-poll-us", type=int, default=None, metavar="MICROSECONDS",
                   help="after a kernel lease break, poll for the client's ack this long "
                        "instead of sleeping (default 500; 0 never)")
    s.add_argument("--no-kernel-leases", action="store_true", help="do not back grants with kernel leases")
    s.add_argument("--log-level", default="info", help="debug, info, warning, error")
    s.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_serve)
    u = sub.add_parser("user", help="manage the users file")
    usub = u.add_subparsers(dest="ucmd", required=True)
    a = usub.add_parser("add", help="add or change a user")
    a.add_argument("name")
    a.add_argument("--users", required=True, metavar="FILE")
    a.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    a.set_defaults(func=cmd_user_add)
    d = usub.add_parser("del", help="remove a user")
    d.add_argument("name")
    d.add_argument("--users", required=True, metavar="FILE")
    d.set_defaults(func=cmd_user_del)
    st = sub.add_parser("streams", help="named-stream depot maintenance")
    stsub = st.add_subparsers(dest="scmd", required=True)
    g = stsub.add_parser("gc", help="remove the stream depots no file of the share names "
                         "(left by deletes from other programs)")
    g.add_argument("share_path")
    g.add_argument("--dry-run", action="store_true", help="list them, remove nothing")
    g.add_argument("--min-age", type=float, default=60.0, metavar="SECONDS",
                   help="keep depots changed this many seconds before the walk (default 60)")
    g.set_defaults(func=cmd_streams_gc)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
