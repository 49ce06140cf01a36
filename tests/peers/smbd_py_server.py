"""Start and stop a real smbd_py server process for tests: a temporary share, a users file
with one account, a free loopback port, and a clean stop by pid."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from tests.peers.procs import fresh_signals

USER = "alice"
PASSWORD = "Secret-pw1"
START_TIMEOUT_S = 20.0


@dataclasses.dataclass
class SmbdPy:
    host: str
    port: int
    share: str
    share_path: str
    user: str
    password: str
    users_file: str
    log_path: str
    proc: subprocess.Popen

    @property
    def unc(self) -> str:
        return f"//{self.host}/{self.share}"

    def log_tail(self, n: int = 60) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def write_users(path: str, user: str = USER, password: str = PASSWORD) -> None:
    subprocess.run([sys.executable, "-m", "smbd_py", "user", "add", user, "--users", path,
                    "--password-stdin"], input=password + "\n", text=True, check=True,
                   stdout=subprocess.DEVNULL)


def _wait_port(host: str, port: int, proc: subprocess.Popen, log_path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"smbd_py exited with {proc.returncode}:\n" + open(log_path).read()[-3000:])
        with contextlib.suppress(OSError):
            with socket.create_connection((host, port), timeout=0.5):
                return
        time.sleep(0.05)
    raise RuntimeError("smbd_py did not start listening in time:\n" + open(log_path).read()[-3000:])


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def smbd_py_server(share_path: str | None = None, *, host: str = "127.0.0.1", port: int | None = None,
                   share: str = "share", user: str = USER, password: str = PASSWORD,
                   extra_args: tuple[str, ...] = (), log_level: str = "info") -> Iterator[SmbdPy]:
    with tempfile.TemporaryDirectory(prefix="smbdpy-") as tmp:
        if share_path is None:
            share_path = os.path.join(tmp, "share")
            os.mkdir(share_path)
        users = os.path.join(tmp, "users")
        write_users(users, user, password)
        port = port or free_port(host)
        log_path = os.path.join(tmp, "server.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "smbd_py", "serve", "--listen", f"{host}:{port}",
                 "--share", f"{share}={share_path}", "--users", users, "--log-level", log_level,
                 *extra_args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=fresh_signals)
        try:
            _wait_port(host, port, proc, log_path)
            yield SmbdPy(host, port, share, share_path, user, password, users, log_path, proc)
        finally:
            stop(proc)
            # Leave the log where a failing test can print it.
            if os.environ.get("SMBD_PY_KEEP_LOGS"):
                os.makedirs("/tmp/smbd_py-logs", exist_ok=True)
                os.replace(log_path, f"/tmp/smbd_py-logs/{port}.log")


@contextlib.contextmanager
def checked_server(tmp_path_factory, name: str, **kw) -> Iterator[SmbdPy]:
    """A server on a fresh share for a module's tests; afterwards it must still be alive
    and its log free of internal errors (a handler that crashed instead of answering)."""
    share = tmp_path_factory.mktemp(name)
    kw.setdefault("log_level", "debug")
    with smbd_py_server(str(share), **kw) as s:
        yield s
        assert s.alive(), "server died:\n" + s.log_tail()
        with open(s.log_path, errors="replace") as f:
            assert "internal error" not in f.read(), s.log_tail()
