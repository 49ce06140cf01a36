"""The two-server demo in Docker, for real (issue 5 part 1): the repository's Dockerfile and
docker-compose.yml, built and started by Debian's docker.io and docker-compose (v1) on a
dockerd this test starts and stops itself; the coherence scenario
(scripts/coherence_demo.py) runs from the host against the two containers' published
loopback ports. Both containers share the repository's shares/ through a bind mount, so
a kernel lease taken by smbd-a stalls smbd-b's open until client 1 has written back.

No registry is reachable here: the base image is a Debian rootfs made by debootstrap
(scripts/docker-base.sh; the tarball is cached in .cache/docker-base/ so reruns skip the
~40 s it takes) and `docker import`ed; smbd_py is installed from wheels built for the
base image's Python (scripts/docker-wheels.sh). The dockerd has its own data root, exec
root, socket and pidfile in a temporary directory, runs without the default docker0
bridge (compose makes its own network), and is stopped by pid afterwards, also when the
test fails. Missing docker/docker-compose/debootstrap fail the test: scripts/test.sh
installs them.

Ports 15420 and 15421 (the README's 4451/4452 are the demo's defaults).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from tests.peers.coherence import assert_coherent_timeline
from tests.peers.procs import fresh_signals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_TAR = os.path.join(ROOT, ".cache", "docker-base", "bookworm-python3.tar")
BASE_TAG = "smbd-py-test-base:bookworm"
PROJECT = "smbdpytest"
PORT_A, PORT_B = 15420, 15421
DOCKERD_START_S = 60.0
DOCKERD_STOP_S = 30.0
HEALTHY_WITHIN_S = 90.0
PACKAGES = "apt-get install docker.io docker-compose debootstrap (scripts/test.sh does)"


def tool(name: str, preferred: str | None = None) -> str:
    """The program's path; the test fails (never skips) when it is missing."""
    if preferred and os.access(preferred, os.X_OK):
        return preferred
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed: {PACKAGES}")
    return path


def run(cmd: list[str], *, env: dict | None = None, timeout: float, check: bool = True,
        what: str = "") -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, cwd=ROOT)
    print(f"[{time.monotonic() - t0:6.1f} s] {what or ' '.join(cmd[:3])}")
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}:\n"
                             f"{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


def unmount_below(path: str) -> None:
    """Lazily unmount whatever a killed dockerd left mounted under `path` (overlays,
    netns files), deepest first, so the directory can be removed."""
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].encode().decode("unicode_escape") for line in f]
    for mp in sorted((m for m in points if m.startswith(path + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True, timeout=30)


def stop_by_pid(proc: subprocess.Popen, timeout: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def docker_env():
    """A private dockerd; yields the environment (DOCKER_HOST) for docker and
    docker-compose."""
    dockerd = tool("dockerd")
    docker = tool("docker", "/usr/bin/docker")
    # A short path: the socket's name must fit in sun_path (108 bytes).
    work = tempfile.mkdtemp(prefix="smbdpy-dkr-", dir="/tmp")
    sock = os.path.join(work, "docker.sock")
    env = dict(os.environ, DOCKER_HOST=f"unix://{sock}")
    log_path = os.path.join(work, "dockerd.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [dockerd, "--data-root", os.path.join(work, "data"),
             "--exec-root", os.path.join(work, "exec"), "-H", f"unix://{sock}",
             "--pidfile", os.path.join(work, "dockerd.pid"),
             # No docker0: another dockerd on this machine may own it. Compose puts the
             # containers on a network of their own.
             "--bridge=none"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=fresh_signals)
    try:
        deadline = time.monotonic() + DOCKERD_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dockerd exited {proc.returncode}:\n" + open(log_path).read()[-4000:])
            if subprocess.run([docker, "version"], env=env, capture_output=True,
                              timeout=30).returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail("dockerd did not answer in time:\n" + open(log_path).read()[-4000:])
            time.sleep(0.2)
        yield env
    finally:
        stop_by_pid(proc, DOCKERD_STOP_S)
        unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def base_image(docker_env) -> tuple[str, str]:
    """A local bookworm + python3 base image: (tag, its python's MAJOR.MINOR)."""
    tool("debootstrap")
    docker = tool("docker", "/usr/bin/docker")
    if not os.path.exists(BASE_TAR):
        run(["bash", os.path.join(ROOT, "scripts", "docker-base.sh"), BASE_TAR], timeout=900,
            what="debootstrap the base image's rootfs (cached in .cache/docker-base)")
    run([docker, "import", BASE_TAR, BASE_TAG], env=docker_env, timeout=300,
        what="docker import")
    p = run([docker, "run", "--rm", "--network", "none", BASE_TAG, "python3", "-c",
             "import sys; print('%d.%d' % sys.version_info[:2])"], env=docker_env,
            timeout=120, what="base image's python version")
    return BASE_TAG, p.stdout.strip()


@pytest.fixture(scope="module")
def compose_pair(docker_env, base_image):
    """docker-compose build + up -d of the repository's docker-compose.yml; `down` after."""
    compose = tool("docker-compose")
    docker = tool("docker", "/usr/bin/docker")
    tag, pyver = base_image
    run(["bash", os.path.join(ROOT, "scripts", "docker-wheels.sh"), pyver], timeout=600,
        what=f"wheels for Python {pyver}")
    env = dict(docker_env, SMBD_BASE=tag, SMBD_TAG="test", SMBD_A_PORT=str(PORT_A),
               SMBD_B_PORT=str(PORT_B), COMPOSE_PROJECT_NAME=PROJECT)
    cmd = [compose, "-f", os.path.join(ROOT, "docker-compose.yml"), "-p", PROJECT]
    try:
        run([*cmd, "build"], env=env, timeout=900, what="docker-compose build")
        run([*cmd, "up", "-d"], env=env, timeout=300, what="docker-compose up -d")
        ids = run([*cmd, "ps", "-q"], env=env, timeout=60).stdout.split()
        assert len(ids) == 2, f"expected two containers, got {ids}"
        deadline = time.monotonic() + HEALTHY_WITHIN_S
        t0 = time.monotonic()
        while True:
            states = run([docker, "inspect", "-f", "{{.State.Health.Status}}", *ids], env=env,
                         timeout=60, what="health").stdout.split()
            if states == ["healthy", "healthy"]:
                break
            if "unhealthy" in states or time.monotonic() > deadline:
                logs = run([*cmd, "logs", "--no-color"], env=env, timeout=60, check=False)
                raise AssertionError(f"containers not healthy: {states}\n{logs.stdout[-4000:]}")
            time.sleep(0.5)
        print(f"both containers healthy {time.monotonic() - t0:.1f} s after `up`")
        yield env, cmd
        logs = run([*cmd, "logs", "--no-color"], env=env, timeout=60).stdout
        for bad in ("internal error", "Traceback"):
            assert bad not in logs, logs[-4000:]
    finally:
        with contextlib.suppress(Exception):
            run([*cmd, "down", "--timeout", "10"], env=env, timeout=120,
                what="docker-compose down")


def test_compose_pair_stays_coherent(compose_pair):
    env, cmd = compose_pair
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "coherence_demo.py"),
         f"127.0.0.1:{PORT_A}", f"127.0.0.1:{PORT_B}"],
        capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    print(p.stdout)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr[-3000:]}"
    assert_coherent_timeline(p.stdout, "lease")
    # The containers run what the Dockerfile says: CAP_LEASE added, kernel leases on.
    logs = run([*cmd, "logs", "--no-color"], env=env, timeout=60).stdout
    assert logs.count("kernel leases: on") == 2, logs[-4000:]
    assert not os.path.exists(os.path.join(ROOT, "shares", "demo", "coherence-demo.txt"))
