"""The two-server coherence demo without Docker (issue 5 part 1): scripts/coherence-demo.sh
starts two smbd_py processes on 127.0.0.2 and 127.0.0.3 exporting one directory and plays
scripts/coherence_demo.py against them; the timeline must show client 1's grant, client
2's pending CREATE, the break, the write-back, the ack and client 2 reading client 1's
data, in that order, and the script must exit 0. The timeline script must also be able to
say "stale": against two servers that do not back their grants with kernel leases
(--no-kernel-leases) client 2 reads the old data and the script exits 1.

Ports 15400-15402.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.peers.coherence import assert_coherent_timeline, assert_in_order
from tests.peers.smbd_py_server import smbd_py_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_SH = os.path.join(ROOT, "scripts", "coherence-demo.sh")
DEMO_PY = os.path.join(ROOT, "scripts", "coherence_demo.py")
PORT = 15400
PORT_A, PORT_B = 15401, 15402
RUN_TIMEOUT_S = 120


@pytest.mark.parametrize("kind", ["lease", "batch"])
def test_coherence_demo_one_command(kind):
    env = dict(os.environ, COHERENCE_DEMO_PORT=str(PORT))
    p = subprocess.run(["bash", DEMO_SH, "--kind", kind], capture_output=True, text=True,
                       timeout=RUN_TIMEOUT_S, env=env, stdin=subprocess.DEVNULL)
    print(p.stdout)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr[-3000:]}"
    assert_coherent_timeline(p.stdout, kind)
    # Both servers were stopped (trap): the port is free again on both addresses.
    for host in ("127.0.0.2", "127.0.0.3"):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, PORT))


def test_timeline_script_reports_stale_read_without_kernel_leases(tmp_path):
    share = tmp_path / "shared"
    share.mkdir()
    off = ("--no-kernel-leases",)
    with smbd_py_server(str(share), port=PORT_A, share="demo", extra_args=off) as a, \
            smbd_py_server(str(share), port=PORT_B, share="demo", extra_args=off) as b:
        p = subprocess.run([sys.executable, DEMO_PY, f"{a.host}:{a.port}", f"{b.host}:{b.port}",
                            "--user", a.user, "--password", a.password, "--wait", "1"],
                           capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                           stdin=subprocess.DEVNULL)
        print(p.stdout)
        assert p.returncode == 1, f"exit {p.returncode}\n{p.stdout}\n{p.stderr[-3000:]}"
        assert_in_order(p.stdout, "granted lease RWH", "no break within 1 s",
                        "READ 55 bytes: 'version 1", "STALE")
        assert a.alive() and b.alive()
    assert not os.listdir(share) or os.listdir(share) == [], os.listdir(share)
