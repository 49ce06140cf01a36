"""Acceptance: impacket's SMBConnection (SMB 2.0.2 - 3.0) against the real server."""
from __future__ import annotations

import io
import os

import pytest
from impacket.smb3structs import SMB2_DIALECT_002, SMB2_DIALECT_21, SMB2_DIALECT_30
from impacket.smbconnection import SMBConnection, SessionError


@pytest.mark.parametrize("dialect", [SMB2_DIALECT_002, SMB2_DIALECT_21, SMB2_DIALECT_30])
def test_impacket_round_trip(module_server, dialect):
    srv = module_server
    conn = SMBConnection(srv.host, srv.host, sess_port=srv.port, preferredDialect=dialect, timeout=30)
    try:
        conn.login(srv.user, srv.password)
        payload = os.urandom(200_000)
        name = f"imp_{dialect:x}.bin"
        conn.putFile(srv.share, name, io.BytesIO(payload).read)
        listing = {f.get_longname(): f for f in conn.listPath(srv.share, "*")}
        assert name in listing and listing[name].get_filesize() == len(payload)
        got = io.BytesIO()
        conn.getFile(srv.share, name, got.write)
        assert got.getvalue() == payload
        with open(os.path.join(srv.share_path, name), "rb") as f:
            assert f.read() == payload
        conn.deleteFile(srv.share, name)
        assert not os.path.exists(os.path.join(srv.share_path, name))
        assert name not in {f.get_longname() for f in conn.listPath(srv.share, "*")}
        shares = {s["shi1_netname"][:-1] for s in conn.listShares()}
        assert {srv.share, "IPC$"} <= shares
    finally:
        conn.close()


def test_impacket_wrong_password(module_server):
    srv = module_server
    conn = SMBConnection(srv.host, srv.host, sess_port=srv.port, timeout=30)
    with pytest.raises(SessionError) as e:
        conn.login(srv.user, "wrong")
    assert "STATUS_LOGON_FAILURE" in str(e.value)
    conn.close()
