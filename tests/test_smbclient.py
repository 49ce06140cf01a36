"""Acceptance: Samba's smbclient against the real server, every dialect, signed."""
from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from tests.conftest import require_tool

DIALECTS = {
    "SMB2_02": ["-m", "SMB2_02"],
    "SMB2_10": ["-m", "SMB2_10"],
    "SMB3_00": ["-m", "SMB3_00"],
    "SMB3_02": ["--option=clientmaxprotocol=SMB3_02", "--option=clientminprotocol=SMB3_02"],
    "SMB3_11": ["-m", "SMB3"],
}


def smbclient(srv, commands: str, *extra: str, user: str | None = None, password: str | None = None,
              cwd=None) -> subprocess.CompletedProcess:
    require_tool("smbclient")
    u = f"{user or srv.user}%{password or srv.password}"
    return subprocess.run(["smbclient", srv.unc, "-p", str(srv.port), "-U", u, *extra, "-c", commands],
                          capture_output=True, text=True, timeout=60, cwd=cwd, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_smbclient_file_operations_signed(module_server, tmp_path, dialect):
    srv = module_server
    payload = os.urandom(3 * 1024 * 1024 + 12345)
    src = tmp_path / "up.bin"
    src.write_bytes(payload)
    d = f"dir_{dialect}"
    cmds = (f"mkdir {d}; cd {d}; put {src} up.bin; get up.bin {tmp_path}/down.bin; "
            f"rename up.bin renamed.bin; allinfo renamed.bin; ls; get renamed.bin {tmp_path}/down2.bin; "
            f"del renamed.bin; cd ..; rmdir {d}; ls")
    r = smbclient(srv, cmds, *DIALECTS[dialect], "--client-protection=sign", "-d", "1")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "NT_STATUS" not in out.replace("NT_STATUS_OBJECT_NAME_NOT_FOUND getting alt name", ""), out
    assert (tmp_path / "down.bin").read_bytes() == payload
    assert hashlib.sha256((tmp_path / "down2.bin").read_bytes()).digest() == hashlib.sha256(payload).digest()
    assert "renamed.bin" in out and "create_time:" in out      # ls and allinfo output
    assert not os.path.exists(os.path.join(srv.share_path, d)), "rmdir did not remove the directory"


def test_smbclient_put_is_visible_on_server_disk(module_server, tmp_path):
    srv = module_server
    src = tmp_path / "x.txt"
    src.write_bytes(b"bytes on disk\n")
    r = smbclient(srv, f"put {src} ondisk.txt", "-m", "SMB3", "--client-protection=sign")
    assert r.returncode == 0, r.stdout + r.stderr
    with open(os.path.join(srv.share_path, "ondisk.txt"), "rb") as f:
        assert f.read() == b"bytes on disk\n"


def test_smbclient_share_list(module_server):
    srv = module_server
    require_tool("smbclient")
    r = subprocess.run(["smbclient", "-L", f"//{srv.host}", "-p", str(srv.port), "-U",
                        f"{srv.user}%{srv.password}"], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    out = r.stdout + r.stderr
    lines = [ln.split() for ln in out.splitlines()]
    assert [srv.share, "Disk"] in [ln[:2] for ln in lines], out
    assert ["IPC$", "IPC"] in [ln[:2] for ln in lines], out


def test_smbclient_wrong_password(module_server):
    r = smbclient(module_server, "ls", "-m", "SMB3", password="not-the-password")
    assert r.returncode != 0
    assert "NT_STATUS_LOGON_FAILURE" in r.stdout + r.stderr


def test_smbclient_unknown_user(module_server):
    r = smbclient(module_server, "ls", "-m", "SMB3", user="mallory", password="whatever")
    assert "NT_STATUS_LOGON_FAILURE" in r.stdout + r.stderr
