"""srvsvc through the whole server, with real clients: smbclient -L, rpcclient
and impacket's SMBConnection.listShares() against ``python -m smbd_py serve``.

This exercises the SMB layer's pipe plumbing (CREATE on IPC$, WRITE/READ,
FSCTL_PIPE_TRANSCEIVE) together with smbd_py.rpc.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from impacket.ntlm import compute_nthash
from impacket.smbconnection import SMBConnection

PORT = 14641
USER, PASSWORD = "rpcuser", "Rpc-pass1"
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server():
    work = tempfile.mkdtemp(prefix="rpc-peers-")
    share = os.path.join(work, "share")
    os.mkdir(share)
    users = os.path.join(work, "users")
    with open(users, "w") as f:
        f.write(f"{USER}:{compute_nthash(PASSWORD).hex()}\n")
    log = open(os.path.join(work, "log"), "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "smbd_py", "serve", "--listen", f"127.0.0.1:{PORT}",
         "--share", f"share={share}", "--users", users, "--log-level", "info"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"smbd_py exited: {open(log.name).read()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", PORT), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("smbd_py did not listen within 20 s")
                time.sleep(0.1)
        yield work
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def _run(argv):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize("proto", ["SMB2_02", "SMB3"])
def test_smbclient_lists_shares(server, proto):
    rc, out = _run(["smbclient", "-L", "//127.0.0.1", "-p", str(PORT), "-U", f"{USER}%{PASSWORD}",
                    "-m", proto])
    assert rc == 0, out
    rows = [line.split() for line in out.splitlines() if line.startswith("\t")]
    assert ["share", "Disk"] in [r[:2] for r in rows], out
    assert ["IPC$", "IPC"] in [r[:2] for r in rows], out


def test_rpcclient_calls(server):
    base = ["rpcclient", "-p", str(PORT), "-U", f"{USER}%{PASSWORD}", "127.0.0.1", "-c"]
    rc, out = _run(base + ["netshareenumall"])
    assert rc == 0 and "netname: share" in out and "netname: IPC$" in out, out
    rc, out = _run(base + ["netshareenum 1"])
    assert rc == 0 and "netname: share" in out and "IPC$" not in out, out
    rc, out = _run(base + ["netsharegetinfo share 2"])
    assert rc == 0 and "netname: share" in out and "C:\\" in out, out
    rc, out = _run(base + ["srvinfo"])
    assert rc == 0 and "platform_id     :\t500" in out, out


def test_impacket_list_shares(server):
    c = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=PORT, timeout=30)
    try:
        c.login(USER, PASSWORD)
        rows = {s["shi1_netname"][:-1]: s["shi1_type"] for s in c.listShares()}
    finally:
        c.close()
    assert rows == {"share": 0, "IPC$": 0x80000003}
