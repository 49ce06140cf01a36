"""Server configuration: the TOML file, command-line overrides, and their validation."""
from __future__ import annotations

import dataclasses
import os
import tomllib


class ConfigError(Exception):
    """A configuration problem, with a message that names the file or flag at fault."""


@dataclasses.dataclass
class ShareConfig:
    name: str
    path: str
    read_only: bool = False
    guest_ok: bool = False
    valid_users: list[str] | None = None   # None: every authenticated user
    kernel_leases: bool = True
    comment: str = ""


@dataclasses.dataclass
class ServerConfig:
    listen: list[tuple[str, int]] = dataclasses.field(default_factory=lambda: [("127.0.0.1", 4445)])
    shares: dict[str, ShareConfig] = dataclasses.field(default_factory=dict)
    users_file: str | None = None
    guest: bool = False
    server_name: str = "SMBD-PY"
    workgroup: str = "WORKGROUP"
    break_timeout: float = 35.0       # seconds a client has to acknowledge a break
    # After a kernel lease break goes out, the loop polls for the ack this long instead
    # of sleeping (oplocks.ack_poll: a local open waits less, for some CPU); 0: never.
    break_ack_poll_us: int = 500
    kernel_leases: bool = True
    signing_required: bool = False
    max_credits: int = 8192


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--listen {value!r}: expected HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    p = int(port)
    if not 0 < p < 65536:
        raise ConfigError(f"--listen {value!r}: port out of range")
    return host, p


def parse_share_flag(value: str) -> ShareConfig:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise ConfigError(f"--share {value!r}: expected NAME=PATH")
    return ShareConfig(name=name, path=path)


def load_file(path: str) -> ServerConfig:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    cfg = ServerConfig()
    server = data.get("server", {})
    if not isinstance(server, dict):
        raise ConfigError(f"{path}: [server] must be a table")
    try:
        if "listen" in server:
            items = server["listen"]
            cfg.listen = [parse_listen(x) for x in ([items] if isinstance(items, str) else items)]
        for key in ("users_file", "server_name", "workgroup"):
            if key in server:
                setattr(cfg, key, str(server[key]))
        for key in ("guest", "kernel_leases", "signing_required"):
            if key in server:
                setattr(cfg, key, bool(server[key]))
        if "break_timeout" in server:
            cfg.break_timeout = float(server["break_timeout"])
        if "break_ack_poll_us" in server:
            cfg.break_ack_poll_us = int(server["break_ack_poll_us"])
            if cfg.break_ack_poll_us < 0:
                raise ValueError("break_ack_poll_us must be >= 0")
        if cfg.users_file and not os.path.isabs(cfg.users_file):
            cfg.users_file = os.path.join(os.path.dirname(os.path.abspath(path)), cfg.users_file)
        for name, table in data.get("share", data.get("shares", {})).items():
            if not isinstance(table, dict) or "path" not in table:
                raise ConfigError(f"{path}: share {name!r} needs a path")
            sp = str(table["path"])
            if not os.path.isabs(sp):
                sp = os.path.join(os.path.dirname(os.path.abspath(path)), sp)
            vu = table.get("valid_users")
            cfg.shares[name] = ShareConfig(
                name=name, path=sp, read_only=bool(table.get("read_only", False)),
                guest_ok=bool(table.get("guest_ok", False)),
                valid_users=[str(u) for u in vu] if vu is not None else None,
                kernel_leases=bool(table.get("kernel_leases", True)),
                comment=str(table.get("comment", "")))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: {e}") from e
    return cfg


def validate(cfg: ServerConfig) -> None:
    if not cfg.shares:
        raise ConfigError("no shares configured: give --share NAME=PATH or a [share.NAME] table")
    for s in cfg.shares.values():
        if s.name.upper() == "IPC$":
            raise ConfigError("IPC$ is built in and cannot be configured as a share")
        if not os.path.isdir(s.path):
            raise ConfigError(f"share {s.name!r}: {s.path} is not a directory")
