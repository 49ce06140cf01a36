"""A private, throw-away Samba smbd for tests and benchmarks.

This module owns starting and stopping a real Samba ``smbd`` (Debian package
``samba``, 4.17) as a reference peer: it writes a private smb.conf whose every
state path lives in a temporary directory, creates the SMB account in a private
tdbsam passdb, starts smbd in the foreground in its own session, waits until the
port accepts connections, and on exit stops the whole process group it created
(smbd, its per-connection children and any samba-dcerpcd it spawned) by that
group's id. Nothing outside the temporary directory is changed except, when
the account's Unix user does not exist, one ``useradd --system`` (and, for a
non-root user, ownership of the share's top directory).

Usage::

    with samba_server("/tmp/share", port=14610, user="tuser", password="tpass") as srv:
        subprocess.run(["smbclient", f"//127.0.0.1/{srv.share}", "-p", str(srv.port), ...])

Notes:
- The share is called ``share`` by default (parameter ``share``).
- ``kernel_oplocks`` defaults to False (the reference numbers in
  /work/shared/reference/real-peers.md exist for both settings).
- ``extra_global`` / ``extra_share`` let a caller add smb.conf lines, e.g.
  ``{"vfs objects": "streams_xattr"}``.
- The SMB account maps to the Unix user of the same name (created with
  ``useradd --system`` when absent). A non-root user must be able to traverse
  every ancestor of ``share_path`` (pytest's ``tmp_path`` is under a 0700
  directory: use ``tempfile.mkdtemp(dir="/tmp")``); samba_server checks this and
  raises SambaStartError otherwise. ``user="root"`` works anywhere but root
  bypasses file permissions, which changes some smbtorture outcomes.
- The log (``--debug-stdout -d LEVEL``) is written to ``srv.log_path``; on a
  startup failure its tail is part of the exception message.
"""
from __future__ import annotations

import contextlib
import dataclasses
import grp
import os
import pathlib
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time

from tests.peers.procs import fresh_signals
from collections.abc import Iterator, Mapping

SMBD = "/usr/sbin/smbd"
SMBPASSWD = "/usr/bin/smbpasswd"

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


class SambaStartError(RuntimeError):
    """smbd did not come up (binary missing, config error, port busy...)."""


@dataclasses.dataclass
class SambaServer:
    host: str
    port: int
    share: str
    share_path: str
    user: str
    password: str
    workdir: str
    conf_path: str
    log_path: str
    pid: int

    @property
    def unc(self) -> str:
        return f"//{self.host}/{self.share}"

    def log_tail(self, n_bytes: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - n_bytes))
                return f.read().decode("utf-8", "replace")
        except OSError as e:
            return f"<no log: {e}>"


def _ensure_unix_user(name: str) -> pwd.struct_passwd:
    """Samba maps an SMB account to the Unix user of the same name."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
    )
    return pwd.getpwnam(name)


def _unreachable_dir(path: str, pw: pwd.struct_passwd) -> str | None:
    """The first ancestor of ``path`` the Unix user cannot traverse, if any
    (e.g. pytest's /tmp/pytest-of-root is 0700: smbd would answer ACCESS_DENIED)."""
    if pw.pw_uid == 0:
        return None
    groups = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem}
    parts = pathlib.Path(path).parents
    for d in reversed(parts):
        st = os.stat(d)
        if st.st_uid == pw.pw_uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return str(d)
    return None


def _conf_text(*, workdir: str, host: str, port: int, share: str, share_path: str,
               kernel_oplocks: bool, log_level: int,
               extra_global: Mapping[str, str], extra_share: Mapping[str, str]) -> str:
    def d(name: str) -> str:
        return os.path.join(workdir, name)

    glob = {
        "server role": "standalone server",
        "workgroup": "WORKGROUP",
        "netbios name": "SMBDPYREF",
        "smb ports": str(port),
        "interfaces": host,
        "bind interfaces only": "yes",
        "disable netbios": "yes",
        "map to guest": "never",
        "passdb backend": f"tdbsam:{d('private')}/passdb.tdb",
        # every piece of state inside workdir, so parallel instances never share it
        "private dir": d("private"),
        "lock directory": d("lock"),
        "state directory": d("state"),
        "cache directory": d("cache"),
        "pid directory": d("pid"),
        "ncalrpc dir": d("ncalrpc"),
        "binddns dir": d("binddns"),
        "usershare path": d("usershares"),
        "log file": d("log.smbd"),
        "log level": str(log_level),
        "max log size": "0",
        # no printing subsystem: it would look for cups and spoolss
        "load printers": "no",
        "printing": "bsd",
        "printcap name": "/dev/null",
        "disable spoolss": "yes",
        "kernel oplocks": "yes" if kernel_oplocks else "no",
        "server min protocol": "SMB2_02",
    }
    glob.update(extra_global)
    shr = {
        "path": share_path,
        "read only": "no",
        "browseable": "yes",
        "guest ok": "no",
    }
    shr.update(extra_share)
    lines = ["[global]"] + [f"\t{k} = {v}" for k, v in glob.items()]
    lines += ["", f"[{share}]"] + [f"\t{k} = {v}" for k, v in shr.items()]
    return "\n".join(lines) + "\n"


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _pids_using_conf(conf_path: str) -> list[int]:
    """Processes started with our private smb.conf (samba-dcerpcd and its rpcd_*
    helpers call setsid(), so they leave smbd's process group)."""
    found = []
    needle = conf_path.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3.0
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _alive(p)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True unless gone or a zombie (zombies of reparented helpers are not ours to reap)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state != b"Z"
    except (OSError, IndexError):
        return False


def _stop(proc: subprocess.Popen, conf_path: str) -> None:
    """SIGTERM the process group we created (smbd leads it), then SIGKILL; then
    the helpers that left the group, found by our private config path."""
    try:
        _stop_group(proc)
    finally:
        _kill_pids([p for p in _pids_using_conf(conf_path) if p != os.getpid()])


def _stop_group(proc: subprocess.Popen) -> None:
    pgid = proc.pid  # start_new_session=True: the group id is smbd's pid
    for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        # smbd itself is gone; give its children a moment, then make sure
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)


@contextlib.contextmanager
def samba_server(share_path: str, *, host: str = "127.0.0.1", port: int,
                 user: str, password: str, share: str = "share",
                 kernel_oplocks: bool = False, log_level: int = 1,
                 extra_global: Mapping[str, str] | None = None,
                 extra_share: Mapping[str, str] | None = None,
                 keep_workdir: bool = False) -> Iterator[SambaServer]:
    """Run a private Samba smbd serving ``share_path`` as ``//host/share`` on ``port``.

    Raises SambaStartError when smbd is missing, exits early, or the port does
    not accept within START_TIMEOUT_S.
    """
    if not os.path.exists(SMBD):
        raise SambaStartError(f"{SMBD} not found: install the Debian package 'samba'")
    if _port_accepts(host, port):
        raise SambaStartError(f"{host}:{port} already accepts connections (port in use)")
    share_path = os.path.abspath(share_path)
    os.makedirs(share_path, exist_ok=True)
    unix_user = _ensure_unix_user(user)
    blocked = _unreachable_dir(share_path, unix_user)
    if blocked:
        raise SambaStartError(
            f"Unix user {user!r} cannot traverse {blocked} to reach {share_path}; put the "
            f"share under a world-traversable directory (e.g. tempfile.mkdtemp(dir='/tmp')) "
            f"or use user='root'")
    if unix_user.pw_uid != 0 and os.stat(share_path).st_uid != unix_user.pw_uid:
        os.chown(share_path, unix_user.pw_uid, unix_user.pw_gid)

    workdir = tempfile.mkdtemp(prefix=f"samba-{port}-")
    try:
        for sub in ("private", "lock", "state", "cache", "pid", "ncalrpc", "binddns", "usershares"):
            os.makedirs(os.path.join(workdir, sub), mode=0o755)
        os.chmod(os.path.join(workdir, "private"), 0o700)
        conf_path = os.path.join(workdir, "smb.conf")
        with open(conf_path, "w") as f:
            f.write(_conf_text(workdir=workdir, host=host, port=port, share=share,
                               share_path=share_path, kernel_oplocks=kernel_oplocks,
                               log_level=log_level, extra_global=extra_global or {},
                               extra_share=extra_share or {}))
        # -s reads "new password\nretype\n" from stdin
        r = subprocess.run([SMBPASSWD, "-c", conf_path, "-a", "-s", user],
                           input=f"{password}\n{password}\n", text=True,
                           capture_output=True, timeout=30)
        if r.returncode != 0:
            raise SambaStartError(f"smbpasswd failed ({r.returncode}): {r.stdout}{r.stderr}")

        log_path = os.path.join(workdir, "smbd.stdout.log")
        log_f = open(log_path, "wb")
        proc = subprocess.Popen(
            [SMBD, "--foreground", "--no-process-group", "-s", conf_path,
             "--debug-stdout", "-d", str(log_level)],
            stdin=subprocess.DEVNULL, stdout=log_f, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=workdir, preexec_fn=fresh_signals,
        )
        log_f.close()
        srv = SambaServer(host=host, port=port, share=share, share_path=share_path,
                          user=user, password=password, workdir=workdir,
                          conf_path=conf_path, log_path=log_path, pid=proc.pid)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    raise SambaStartError(
                        f"smbd exited with {proc.returncode} during startup:\n{srv.log_tail()}")
                if _port_accepts(host, port):
                    break
                if time.monotonic() > deadline:
                    raise SambaStartError(
                        f"smbd did not accept on {host}:{port} within {START_TIMEOUT_S}s:\n"
                        f"{srv.log_tail()}")
                time.sleep(0.1)
            yield srv
        finally:
            _stop(proc, conf_path)
    finally:
        if not keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
