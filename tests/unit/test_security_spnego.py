"""SPNEGO tokens and SessionAuth: impacket's SPNEGO classes and Samba's own client
code (ntlm_auth, the SPNEGO/NTLMSSP client smbclient uses) as peers, Windows'
recorded tokens as known answers, malformed buffers as the adversary."""

import base64
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from impacket import ntlm as imp
from impacket.spnego import SPNEGO_NegTokenInit, SPNEGO_NegTokenResp, TypesMech

import test_security_vectors as V
from smbd_py.security import spnego
from smbd_py.security.ntlm import InvalidToken, LogonFailure
from smbd_py.security.spnego import (KIND_INIT, KIND_RAW, KIND_RESP, NTLMSSP_OID, SessionAuth,
                                     negotiate_token, parse, unwrap, wrap_response)
from smbd_py.security.users import UserDb

NTLM_MECH = TypesMech["NTLMSSP - Microsoft NTLM Security Support Provider"]
KRB5_MECH = TypesMech["KRB5 - Kerberos 5"]


@pytest.fixture
def db():
    d = UserDb()
    d.add("alice", "Secret123")
    return d


def _assert_der(blob: bytes):
    """blob is one DER element: definite minimal lengths, constructed elements
    exactly filled by their children (checked here independently of spnego.py;
    the universal SEQUENCEs inside are also fed to pyasn1's DER decoder)."""
    from pyasn1.codec.der import decoder

    def walk(pos, end):
        while pos < end:
            tag = blob[pos]
            first = blob[pos + 1]
            pos += 2
            if first & 0x80:
                n = first & 0x7F
                assert 1 <= n <= 4
                length = int.from_bytes(blob[pos:pos + n], "big")
                assert length >= 0x80 and blob[pos] != 0, "non-minimal DER length"
                pos += n
            else:
                length = first
            assert pos + length <= end, "element overruns its parent"
            if tag & 0x20:
                walk(pos, pos + length)
            if tag == 0x30:
                _, rest = decoder.decode(blob[pos - 2 - (n if first & 0x80 else 0):pos + length])
                assert rest == b""
            pos += length
        assert pos == end, "trailing bytes in a constructed element"

    walk(0, len(blob))


def test_negotiate_token_is_spnego_ntlm_only():
    tok = negotiate_token()
    assert tok.startswith(b"\x60") and tok[1] == len(tok) - 2      # one definite-length DER blob
    _assert_der(tok)
    parsed = SPNEGO_NegTokenInit(tok)
    assert parsed["MechTypes"] == [NTLM_MECH]
    ours = parse(tok)
    assert ours.kind == KIND_INIT and ours.mech_types == [NTLMSSP_OID] and ours.mech_token == b""


def test_unwrap_impacket_tokens():
    ntlm_neg = imp.getNTLMSSPType1("", "", signingRequired=True).getData()
    init = SPNEGO_NegTokenInit()
    init["MechTypes"] = [NTLM_MECH]
    init["MechToken"] = ntlm_neg
    assert unwrap(init.getData()) == (ntlm_neg, KIND_INIT)
    resp = SPNEGO_NegTokenResp()
    resp["ResponseToken"] = b"NTLMSSP\x00\x03rest"
    assert unwrap(resp.getData()) == (b"NTLMSSP\x00\x03rest", KIND_RESP)
    assert unwrap(ntlm_neg) == (ntlm_neg, KIND_RAW)
    # Kerberos first with an optimistic token: nothing for NTLM yet.
    krb_first = SPNEGO_NegTokenInit()
    krb_first["MechTypes"] = [KRB5_MECH, NTLM_MECH]
    krb_first["MechToken"] = b"\x60\x03krb"
    assert unwrap(krb_first.getData()) == (b"", KIND_INIT)


def test_wrap_response_parses_with_impacket():
    first = wrap_response(b"NTLMSSP\x00\x02challenge", "accept-incomplete", True)
    r = SPNEGO_NegTokenResp(first)
    assert r["NegState"] == b"\x01" and r["SupportedMech"] == NTLM_MECH
    assert r["ResponseToken"] == b"NTLMSSP\x00\x02challenge"
    _assert_der(first)
    done = wrap_response(None, "accept-completed", False)
    assert done == bytes.fromhex("a1073005a0030a0100")
    assert wrap_response(None, "reject", False) == bytes.fromhex("a1073005a0030a0102")
    assert wrap_response(b"NTLMSSP\x00\x02x", "accept-incomplete", True, raw=True) == b"NTLMSSP\x00\x02x"
    big = wrap_response(b"N" * 70000, "accept-incomplete", True)      # 3-byte DER lengths
    assert parse(big).mech_token == b"N" * 70000
    with pytest.raises(ValueError):
        wrap_response(None, "maybe", False)


def test_windows_tokens_round_trip():
    # Our builder reproduces Windows' server tokens byte for byte.
    resp1 = parse(V.security_buffer(V.SESSION_SETUP_RESP1))
    assert wrap_response(resp1.mech_token, "accept-incomplete", True) == \
        V.security_buffer(V.SESSION_SETUP_RESP1)
    resp2 = parse(V.security_buffer(V.SESSION_SETUP_RESP2))
    assert wrap_response(None, "accept-completed", False, mech_list_mic=resp2.mech_list_mic) == \
        V.security_buffer(V.SESSION_SETUP_RESP2)
    req2 = parse(V.security_buffer(V.SESSION_SETUP_REQ2))
    assert req2.kind == KIND_RESP and req2.neg_state == 1 and len(req2.mech_list_mic) == 16


def _impacket_spnego_login(auth: SessionAuth, user, password, *, raw=False):
    type1 = imp.getNTLMSSPType1("WS1", "", signingRequired=True)
    if raw:
        buf = type1.getData()
    else:
        init = SPNEGO_NegTokenInit()
        init["MechTypes"] = [NTLM_MECH]
        init["MechToken"] = type1.getData()
        buf = init.getData()
    more, out, result = auth.step(buf)
    assert more and result is None
    challenge = out if raw else SPNEGO_NegTokenResp(out)["ResponseToken"]
    type3, exported = imp.getNTLMSSPType3(type1, challenge, user, password, "")
    if raw:
        buf = type3.getData()
    else:
        resp = SPNEGO_NegTokenResp()
        resp["ResponseToken"] = type3.getData()
        buf = resp.getData()
    return auth.step(buf), exported


@pytest.mark.parametrize("raw", [False, True])
def test_session_auth_impacket(db, raw):
    auth = SessionAuth(db)
    (more, out, result), exported = _impacket_spnego_login(auth, "alice", "Secret123", raw=raw)
    assert not more and result.session_base_key == exported
    if raw:
        assert out == b""
    else:
        assert SPNEGO_NegTokenResp(out)["NegState"] == b"\x00"
    assert auth.negotiate_message.startswith(b"NTLMSSP\x00\x01")
    assert auth.challenge_message.startswith(b"NTLMSSP\x00\x02")


def test_session_auth_wrong_password(db):
    with pytest.raises(LogonFailure):
        _impacket_spnego_login(SessionAuth(db), "alice", "nope")


def test_session_auth_kerberos_first_then_ntlm(db):
    auth = SessionAuth(db)
    init = SPNEGO_NegTokenInit()
    init["MechTypes"] = [KRB5_MECH, NTLM_MECH]
    init["MechToken"] = b"\x60\x03krb"
    more, out, _ = auth.step(init.getData())
    assert more
    # impacket's parser cannot read a NegTokenResp without responseToken, so
    # check with ours and with pyasn1's generic DER decoder.
    r = parse(out)
    assert r.neg_state == 1 and r.mech_types == [NTLMSSP_OID] and r.mech_token == b""
    _assert_der(out)
    type1 = imp.getNTLMSSPType1("", "", signingRequired=True)
    resp = SPNEGO_NegTokenResp()
    resp["ResponseToken"] = type1.getData()
    more, out, _ = auth.step(resp.getData())
    assert more and parse(out).mech_token.startswith(b"NTLMSSP\x00\x02")
    assert parse(out).mech_types == []          # supportedMech only in the first reply


def test_session_auth_rejects_non_ntlm_only(db):
    init = SPNEGO_NegTokenInit()
    init["MechTypes"] = [KRB5_MECH]
    init["MechToken"] = b"\x60\x03krb"
    with pytest.raises(LogonFailure):
        SessionAuth(db).step(init.getData())


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_session_auth(data):
    d = UserDb()
    d.add("alice", "x")
    for prefix in (b"", b"\x60", b"\xa1", b"\xa0", b"NTLMSSP\x00"):
        try:
            SessionAuth(d).step(prefix + data)
        except LogonFailure:
            pass
        try:
            parse(prefix + data)
        except InvalidToken:
            pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 200), st.integers(0, 255))
def test_fuzz_mutated_windows_tokens(pos, val):
    for packet in (V.SESSION_SETUP_REQ1, V.SESSION_SETUP_REQ2):
        buf = bytearray(V.security_buffer(packet))
        if pos < len(buf):
            buf[pos] = val
        try:
            parse(bytes(buf))
        except InvalidToken:
            pass


# -- Samba's client code as the peer ---------------------------------------------------------

NTLM_AUTH = shutil.which("ntlm_auth")


class NtlmAuthClient:
    """Drives `ntlm_auth --helper-protocol=...-client` (Samba's NTLMSSP / SPNEGO
    client, the code smbclient runs) over its line protocol, bounded in time."""

    def __init__(self, protocol, user, password, domain="WORKGROUP", features=None):
        assert NTLM_AUTH, "ntlm_auth (Debian package winbind) is required for this test"
        self.p = subprocess.Popen(
            [NTLM_AUTH, f"--helper-protocol={protocol}", f"--username={user}",
             f"--password={password}", f"--domain={domain}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if features:
            assert self.talk("SF " + features) == "OK"

    def talk(self, line: str) -> str:
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        import select
        ready, _, _ = select.select([self.p.stdout], [], [], 10)
        assert ready, f"ntlm_auth did not answer {line[:20]!r} within 10 s"
        return self.p.stdout.readline().strip()

    def close(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(5)


def _run_ntlm_auth(db, protocol, password, features=None, tamper_final=False):
    """Returns (client verdict line, AuthResult or exception)."""
    client = NtlmAuthClient(protocol, "alice", password, features=features)
    try:
        reply = client.talk("YR")
        assert reply.startswith("YR "), reply
        token = base64.b64decode(reply[3:])
        auth = SessionAuth(db)
        for _ in range(4):
            try:
                more, out, result = auth.step(token)
            except LogonFailure as e:
                return None, e
            if not more:
                if tamper_final:
                    out = out[:-1] + bytes([out[-1] ^ 1])
                verdict = client.talk("TT " + base64.b64encode(out).decode()) if out else "AF"
                return verdict, result
            reply = client.talk("TT " + base64.b64encode(out).decode())
            assert reply[:2] in ("KK", "AF"), reply
            token = base64.b64decode(reply[3:])
        raise AssertionError("exchange did not finish")
    finally:
        client.close()


@pytest.mark.parametrize("features", [None, "NTLMSSP_FEATURE_SIGN NTLMSSP_FEATURE_SEAL"])
def test_samba_spnego_client(db, features):
    verdict, result = _run_ntlm_auth(db, "gss-spnego-client", "Secret123", features)
    assert verdict == "AF", verdict             # Samba's client accepted our final token
    assert result.user == "alice" and len(result.session_base_key) == 16
    assert result.session_base_key != bytes(16)


def test_samba_spnego_client_checks_our_mech_list_mic(db):
    # With signing, Samba's client sends the NTLM MIC and a mechListMIC and
    # insists on ours; a corrupted one must make it fail.
    verdict, _ = _run_ntlm_auth(db, "gss-spnego-client", "Secret123",
                                "NTLMSSP_FEATURE_SIGN NTLMSSP_FEATURE_SEAL", tamper_final=True)
    assert verdict != "AF"


def test_samba_raw_ntlmssp_client(db):
    verdict, result = _run_ntlm_auth(db, "ntlmssp-client-1", "Secret123")
    assert verdict == "AF" and result.user == "alice"


def test_samba_client_wrong_password(db):
    verdict, result = _run_ntlm_auth(db, "gss-spnego-client", "wrong")
    assert verdict is None and isinstance(result, LogonFailure)
