"""The servers under comparison: smbd_py and Samba's smbd with kernel oplocks on and off.

Owns starting them on their own loopback addresses over the same share directory with the
same account, and finding the processes that make up each server (for memory figures and
for the profiler). Stopping happens through the peers' context managers (by pid/group).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
from collections.abc import Iterator

from tests.peers.samba import samba_server
from tests.peers.smbd_py_server import smbd_py_server

USER = "smbbench"
PASSWORD = "Bench-pw1"
SHARE = "share"

SMBD_PY = "smbd_py"
SAMBA_KO_YES = "samba_ko_yes"
SAMBA_KO_NO = "samba_ko_no"
ORDER = (SMBD_PY, SAMBA_KO_YES, SAMBA_KO_NO)
LABELS = {SMBD_PY: "smbd_py", SAMBA_KO_YES: "Samba ko=yes", SAMBA_KO_NO: "Samba ko=no"}


@dataclasses.dataclass
class Target:
    name: str
    host: str
    port: int
    share_path: str
    pid: int                   # the listening (parent) process
    kind: str                  # "smbd_py" | "samba"
    kernel_oplocks: bool
    user: str = USER
    password: str = PASSWORD
    share: str = SHARE

    @property
    def unc(self) -> str:
        return f"//{self.host}/{self.share}"

    @property
    def label(self) -> str:
        return LABELS[self.name]

    def pids(self) -> list[int]:
        """The server's processes: smbd_py is one process; Samba forks one child per
        connection (children of the listening smbd)."""
        if self.kind == "smbd_py":
            return [self.pid]
        return [self.pid] + _children(self.pid)


def _children(ppid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if int(fields[1]) == ppid:
                out.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return out


def raise_nofile(want: int = 65536) -> int:
    """Servers inherit our limit; 1,000 connections with an open file each need ~2,000 fds
    in smbd_py and as many sockets here."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = min(max(soft, want), hard) if hard != resource.RLIM_INFINITY else max(soft, want)
    if new != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


@contextlib.contextmanager
def start_all(share_path: str, *, port_base: int, only: tuple[str, ...] = ORDER
              ) -> Iterator[dict[str, Target]]:
    """Start the requested servers: smbd_py on 127.0.0.22:port_base+2, Samba kernel
    oplocks=yes on 127.0.0.21:port_base+1, kernel oplocks=no on 127.0.0.23:port_base+3."""
    raise_nofile()
    targets: dict[str, Target] = {}
    with contextlib.ExitStack() as stack:
        if SAMBA_KO_YES in only or SAMBA_KO_NO in only:
            for name, host, off, ko in ((SAMBA_KO_YES, "127.0.0.21", 1, True),
                                        (SAMBA_KO_NO, "127.0.0.23", 3, False)):
                if name not in only:
                    continue
                # "interfaces = IP/8" makes smbd bind that loopback address (lo only
                # carries 127.0.0.1, and a bare IP without an interface is refused).
                srv = stack.enter_context(samba_server(
                    share_path, host=host, port=port_base + off, user=USER, password=PASSWORD,
                    share=SHARE, kernel_oplocks=ko, log_level=0,
                    extra_global={"interfaces": f"{host}/8"}))
                # smbd children run as the account's uid and must read lock/msg.lock/<pid>
                # to see that a sibling smbd is alive; in mkdtemp's 0700 workdir every
                # other process looks dead, its share-mode locks get stolen and smbd
                # panics ("Could not unlock share mode") as soon as two connections open
                # one file. (private/ stays 0700.)
                os.chmod(srv.workdir, 0o755)
                targets[name] = Target(name, host, srv.port, share_path, srv.pid, "samba", ko)
        if SMBD_PY in only:
            srv = stack.enter_context(smbd_py_server(
                share_path, host="127.0.0.22", port=port_base + 2, share=SHARE, user=USER,
                password=PASSWORD, log_level="warning"))
            targets[SMBD_PY] = Target(SMBD_PY, srv.host, srv.port, share_path, srv.proc.pid,
                                      "smbd_py", True)
        yield {n: targets[n] for n in ORDER if n in targets}
