"""Multichannel session binding (MS-SMB2 3.3.5.5.2) against a live smbd_py.

Binds a second TCP connection to a session with the project's test client
(tests/smb2client; the binding legs are built here from its primitives: signed with the
session's key, the channel's key derived from the binding's own NTLM key and, on 3.1.1,
its own preauth hash) and checks what a real multichannel client relies on: the bound
channel reaches the session's tree and opens with its own signing key, the session
outlives the connection it was created on, LOGOFF on one channel ends it everywhere, and
the refusals carry Windows' statuses. smbtorture covers the rest (bind1/bind2,
bind_invalid_auth and the 38 bind_negative_* in tests/test_torture.py); its
bind_different_user, which needs a second account, and the 32-channel limit run here.
"""
from __future__ import annotations

import asyncio

import pytest

from tests.conftest import require_tool
from tests.peers.smbd_py_server import PASSWORD, USER, smbd_py_server, write_users
from tests.peers.torture import run_torture
from tests.smb2client import Command, Dialect, Smb2Client, Smb2Error
from tests.smb2client import auth, wire
from tests.smb2client.wire import Flags

STATUS_SUCCESS = 0
STATUS_MORE_PROCESSING_REQUIRED = 0xC0000016
STATUS_INVALID_PARAMETER = 0xC000000D
STATUS_REQUEST_NOT_ACCEPTED = 0xC00000D0
STATUS_USER_SESSION_DELETED = 0xC0000203
STATUS_LOGON_FAILURE = 0xC000006D
STATUS_ACCESS_DENIED = 0xC0000022
SESSION_FLAG_BINDING = 0x01

USER2, PASSWORD2 = "bob", "Other-pw2"


@pytest.fixture
def two_user_server(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    users = str(tmp_path / "users")
    write_users(users, USER, PASSWORD)
    write_users(users, USER2, PASSWORD2)
    # The last --users wins: the fixture's own file has only the first account.
    with smbd_py_server(str(share), extra_args=("--users", users), log_level="debug") as srv:
        yield srv
        assert srv.alive(), "server died during the test:\n" + srv.log_tail()


async def _login(srv, dialect=Dialect.SMB311, **kw):
    c = await Smb2Client.connect(srv.host, srv.port, dialect=dialect, timeout=10,
                                 require_signing=True, **kw)
    await c.login(srv.user, srv.password, sign=True)
    tid = await c.tree_connect(srv.share)
    return c, tid


async def _bind(c2: Smb2Client, c1: Smb2Client, user: str, password: str, *,
                flags: int = SESSION_FLAG_BINDING, sign: bool = True) -> int:
    """Bind c2's connection to c1's session. Returns the final status; on success c2
    can use the session (channel signing key, session-wide encryption keys, trees)."""
    ntlm = auth.NtlmAuth(user, password, "")
    preauth = c2.preauth_hash
    token = ntlm.negotiate_token()
    sid = c1.session_id
    # The legs are signed with the session's key (Session.SigningKey) and so are the
    # MORE_PROCESSING responses; the final one with the new channel's key (checked below).
    saved = c2.keys, c2.session_id, c2.verify_signatures
    c2.keys, c2.session_id, c2.verify_signatures = c1.keys, sid, False
    for _ in range(3):
        body = wire.session_setup_request(token, wire.SIGNING_ENABLED | wire.SIGNING_REQUIRED,
                                          flags=flags)
        p = await c2.submit(Command.SESSION_SETUP, body, session_id=sid, sign=sign)
        preauth = auth.preauth_update(preauth, p.request_bytes)
        resp = await p.response()
        if resp.status != STATUS_MORE_PROCESSING_REQUIRED:
            break
        assert resp.header.flags & Flags.SIGNED, "MORE_PROCESSING of a bind is signed"
        assert auth.verify_signature(c1.keys.signing_key, c1.keys.signing_algorithm, resp.raw)
        preauth = auth.preauth_update(preauth, resp.raw)
        _, server_token = wire.parse_session_setup_response(resp.raw)
        token = ntlm.authenticate_token(server_token)
    if resp.status != STATUS_SUCCESS:
        c2.keys, c2.session_id, c2.verify_signatures = saved
        return resp.status
    r = c2.negotiate_response
    chan = auth.derive_keys(ntlm.session_key, c2.dialect, preauth, r.signing_algorithm, None)
    assert resp.header.flags & Flags.SIGNED, "the final bind response must be signed"
    assert auth.verify_signature(chan.signing_key, chan.signing_algorithm, resp.raw), \
        "final bind response not signed with the channel key"
    assert chan.signing_key != c1.keys.signing_key
    chan.encryption_key, chan.decryption_key = c1.keys.encryption_key, c1.keys.decryption_key
    chan.cipher = c1.keys.cipher
    c2.keys, c2.verify_signatures, c2.signing = chan, True, True
    c2.trees.update(c1.trees)
    return STATUS_SUCCESS


async def _getinfo_status(c: Smb2Client, tid: int, fid: bytes) -> int:
    try:
        await c.query_standard_info(tid, fid)
        return STATUS_SUCCESS
    except Smb2Error as e:
        return e.status


@pytest.mark.parametrize("dialect", [Dialect.SMB30, Dialect.SMB302, Dialect.SMB311])
async def test_bound_channel_serves_the_session_and_outlives_the_first(server, dialect):
    c1, tid = await _login(server, dialect)
    c2 = await Smb2Client.connect(server.host, server.port, dialect=dialect, timeout=10,
                                  require_signing=True, client_guid=c1.client_guid)
    try:
        assert c1.negotiate_response.capabilities & wire.Cap.MULTI_CHANNEL
        f = await c1.create(tid, "bound.txt")
        await c1.write(tid, f.file_id, 0, b"through channel one")
        # Before the bind the session does not exist on c2: the refusal is signed (with
        # the session's key) because clients that require signing insist on it.
        c2.keys, c2.session_id = c1.keys, c1.session_id
        p = await c2.submit(Command.QUERY_INFO, wire.query_info_request(
            f.file_id, wire.InfoType.FILE, wire.FileInfoClass.STANDARD, 24), tree_id=tid,
            session_id=c1.session_id, sign=True)
        resp = await p.response()
        assert resp.status == STATUS_USER_SESSION_DELETED
        assert resp.header.flags & Flags.SIGNED
        c2.keys, c2.session_id = None, 0

        assert await _bind(c2, c1, server.user, server.password) == STATUS_SUCCESS
        assert await c2.read(tid, f.file_id, 0, 19) == b"through channel one"
        await c2.write(tid, f.file_id, 0, b"THROUGH")
        assert await c1.read(tid, f.file_id, 0, 7) == b"THROUGH"
        # Binding this connection again: the request, signed with the session's first
        # key, fails the check with this channel's key (Windows: ACCESS_DENIED).
        assert await _bind(c2, c1, server.user, server.password) == STATUS_ACCESS_DENIED
        assert await c2.read(tid, f.file_id, 0, 7) == b"THROUGH"
        await c1.disconnect()
        await asyncio.sleep(0.3)
        # The session lives on through its remaining channel, with its open.
        assert await c2.read(tid, f.file_id, 0, 7) == b"THROUGH"
        g = await c2.create(tid, "after.txt")
        await c2.close(tid, g.file_id)
        await c2.close(tid, f.file_id)
        assert server.alive()
    finally:
        await c1.disconnect()
        await c2.disconnect()


async def test_binding_refusals(server):
    # The session signs with AES-CMAC so that the dialect checks are reached (a GMAC
    # session refuses a non-GMAC channel first: REQUEST_OUT_OF_SEQUENCE, tested too).
    c1, tid = await _login(server, signing_algorithms=(wire.SigningAlgorithm.AES_CMAC,))
    g1, gtid = await _login(server)
    f = await c1.create(tid, "r.txt")
    conns = []

    async def channel(dialect, **kw):
        c = await Smb2Client.connect(server.host, server.port, dialect=dialect, timeout=10,
                                     client_guid=c1.client_guid, require_signing=True, **kw)
        conns.append(c)
        return c

    try:
        # No channels before SMB 3.0.
        assert await _bind(await channel(Dialect.SMB21), c1, USER, PASSWORD) \
            == STATUS_REQUEST_NOT_ACCEPTED
        # Another dialect than the session's.
        assert await _bind(await channel(Dialect.SMB302), c1, USER, PASSWORD) \
            == STATUS_INVALID_PARAMETER
        # An AES-GMAC session and an AES-CMAC channel; an AES-CMAC session and a GMAC one.
        cmac = await channel(Dialect.SMB311, signing_algorithms=(wire.SigningAlgorithm.AES_CMAC,))
        assert await _bind(cmac, g1, USER, PASSWORD) == 0xC000042A  # REQUEST_OUT_OF_SEQUENCE
        assert await _bind(await channel(Dialect.SMB311), c1, USER, PASSWORD) \
            == 0xC00000BB  # NOT_SUPPORTED
        # Unsigned: INVALID_PARAMETER; wrong password: LOGON_FAILURE, session untouched.
        assert await _bind(cmac, c1, USER, PASSWORD, sign=False) == STATUS_INVALID_PARAMETER
        assert await _bind(cmac, c1, USER, "wrong") == STATUS_LOGON_FAILURE
        assert await _getinfo_status(c1, tid, f.file_id) == STATUS_SUCCESS
        # Now a good bind; then LOGOFF on the bound channel ends the session on both.
        assert await _bind(cmac, c1, USER, PASSWORD) == STATUS_SUCCESS
        assert await _getinfo_status(cmac, tid, f.file_id) == STATUS_SUCCESS
        await cmac.logoff()
        assert await _getinfo_status(c1, tid, f.file_id) == STATUS_USER_SESSION_DELETED
        assert await _getinfo_status(g1, gtid, b"\xff" * 16) != STATUS_USER_SESSION_DELETED
    finally:
        for c in (c1, g1, *conns):
            await c.disconnect()


async def test_bind_with_another_user_is_access_denied(two_user_server):
    srv = two_user_server
    c1, tid = await _login(srv)
    c2 = await Smb2Client.connect(srv.host, srv.port, dialect=Dialect.SMB311, timeout=10,
                                  require_signing=True, client_guid=c1.client_guid)
    try:
        assert await _bind(c2, c1, USER2, PASSWORD2) == STATUS_ACCESS_DENIED
        assert await _bind(c2, c1, USER, PASSWORD) == STATUS_SUCCESS
    finally:
        await c1.disconnect()
        await c2.disconnect()


def test_smbtorture_bind_with_second_user_and_channel_limit(two_user_server):
    require_tool("smbtorture")
    srv = two_user_server
    tests = ["smb2.session.bind1", "smb2.session.bind2", "smb2.session.bind_invalid_auth",
             "smb2.session.bind_different_user", "smb2.multichannel.generic.num_channels"]
    res = run_torture(tests, host=srv.host, port=srv.port, share=srv.share, user=srv.user,
                      password=srv.password, timeout_s=300,
                      extra_args=(f"--option=torture:localdir={srv.share_path}",
                                  f"--option=torture:user2name={USER2}",
                                  f"--option=torture:user2password={PASSWORD2}",
                                  "--option=torture:user2domain=WORKGROUP"))
    bad = {n: (o, res.details.get(n, "")[:200]) for n, o in res.items() if o != "success"}
    assert len(res) == len(tests) and not bad, (bad, srv.log_tail())
