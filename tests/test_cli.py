"""The command line other tools drive: serve flags and config file, user add/del, and
clear errors that name the file at fault."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

from impacket.smbconnection import SMBConnection

from tests.peers.smbd_py_server import _wait_port, free_port, stop


def smbd_py(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smbd_py", *args], input=input, text=True,
                          capture_output=True, timeout=30)


def test_user_add_creates_0600_file_with_nt_hash_only(tmp_path):
    users = tmp_path / "users"
    r = smbd_py("user", "add", "bob", "--users", str(users), "--password-stdin", input="pw-123\n")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(users).st_mode) == 0o600
    text = users.read_text()
    assert "pw-123" not in text
    # NT hash of "pw-123" = MD4(UTF-16LE(password))
    from impacket.ntlm import compute_nthash
    assert compute_nthash("pw-123").hex() in text.lower()
    assert smbd_py("user", "add", "carol", "--users", str(users), "--password-stdin", input="x\n").returncode == 0
    assert smbd_py("user", "del", "bob", "--users", str(users)).returncode == 0
    assert "bob" not in users.read_text() and "carol" in users.read_text()
    r = smbd_py("user", "del", "nobody", "--users", str(users))
    assert r.returncode != 0 and "nobody" in r.stderr


def test_malformed_users_file_is_named(tmp_path):
    users = tmp_path / "users"
    users.write_text("this is not a users line\n")
    share = tmp_path / "s"
    share.mkdir()
    r = smbd_py("serve", "--listen", f"127.0.0.1:{free_port()}", "--share", f"s={share}", "--users", str(users))
    assert r.returncode != 0
    assert str(users) in r.stderr


def test_unreadable_users_file_is_named(tmp_path):
    share = tmp_path / "s"
    share.mkdir()
    missing = tmp_path / "nope" / "users"
    r = smbd_py("serve", "--listen", f"127.0.0.1:{free_port()}", "--share", f"s={share}", "--users", str(missing))
    assert r.returncode != 0 and str(missing) in r.stderr


def test_bad_config_file_is_named(tmp_path):
    cfg = tmp_path / "smbd.toml"
    cfg.write_text("[server\nlisten = 1")
    r = smbd_py("serve", "--config", str(cfg))
    assert r.returncode != 0 and str(cfg) in r.stderr


def test_config_file_with_flag_override(tmp_path):
    share = tmp_path / "data"
    share.mkdir()
    (share / "hello.txt").write_text("hi")
    users = tmp_path / "users"
    assert smbd_py("user", "add", "dave", "--users", str(users), "--password-stdin", input="pw\n").returncode == 0
    port = free_port()
    cfg = tmp_path / "smbd.toml"
    cfg.write_text(f'[server]\nlisten = ["127.0.0.1:1"]\nusers_file = "users"\n\n'
                   f'[share.data]\npath = "data"\nread_only = true\n')
    log = tmp_path / "log"
    with open(log, "wb") as lf:
        proc = subprocess.Popen([sys.executable, "-m", "smbd_py", "serve", "--config", str(cfg),
                                 "--listen", f"127.0.0.1:{port}"], stdout=lf, stderr=subprocess.STDOUT)
    try:
        _wait_port("127.0.0.1", port, proc, str(log))
        conn = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=port, timeout=30)
        conn.login("dave", "pw")
        names = [f.get_longname() for f in conn.listPath("data", "*")]
        assert "hello.txt" in names
        # read_only = true from the file: writing is refused.
        try:
            conn.putFile("data", "new.txt", lambda n: b"")
            raised = False
        except Exception as e:
            raised = "ACCESS_DENIED" in str(e)
        assert raised, "a read-only share accepted a write"
        assert not (share / "new.txt").exists()
        conn.close()
    finally:
        stop(proc)


def test_guest_flag_allows_guest(tmp_path):
    share = tmp_path / "pub"
    share.mkdir()
    port = free_port()
    log = tmp_path / "log"
    with open(log, "wb") as lf:
        proc = subprocess.Popen([sys.executable, "-m", "smbd_py", "serve", "--listen", f"127.0.0.1:{port}",
                                 "--share", f"pub={share}", "--guest"], stdout=lf, stderr=subprocess.STDOUT)
    try:
        _wait_port("127.0.0.1", port, proc, str(log))
        r = subprocess.run(["smbclient", f"//127.0.0.1/pub", "-p", str(port), "-N", "-c", "ls"],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert r.returncode == 0 and "blocks available" in r.stdout, r.stdout + r.stderr
    finally:
        stop(proc)
