"""NTLMSSP acceptor: MS-NLMP 4.2.4 and recorded Windows messages as known answers,
impacket's NTLM client as a live peer, and malformed input that must only ever
produce LogonFailure / InvalidToken."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from impacket import ntlm as imp

import test_security_vectors as V
from smbd_py.security.ntlm import (NTLMSSP_NEGOTIATE_KEY_EXCH, InvalidToken, LogonFailure,
                                   NtlmAcceptor, NtlmSealing, ntowfv2, verify_authenticate)
from smbd_py.security.users import UserDb, nt_hash_of
from smbd_py.wire.status import NtStatus


@pytest.fixture
def db():
    d = UserDb()
    d.add("alice", "Secret123")
    d.add("User", "Password")
    d.add(V.WIN311_USER, V.WIN311_PASSWORD)
    return d


# -- known answers ---------------------------------------------------------------------

def test_ntowfv2_known_answer():
    assert ntowfv2(nt_hash_of("Password"), "User", "Domain").hex() == \
        "0c868a403bfd7a93a3001ef22ef02e3f"


def test_ms_nlmp_424_authenticate(db):
    # No NEGOTIATE is given in the spec example and the response has no MIC, so
    # any NEGOTIATE bytes are acceptable here.
    v = verify_authenticate(b"", V.NLMP_CHALLENGE, V.NLMP_AUTHENTICATE, db)
    assert v.result.user == "User" and v.result.domain == "Domain"
    assert v.result.workstation == "COMPUTER"
    # KEY_EXCH: the exported key is RandomSessionKey, decrypted from c5dad254...
    assert v.result.session_base_key == V.NLMP_RANDOM_SESSION_KEY
    assert not v.mic_present
    bad = UserDb()
    bad.add("User", "password")
    with pytest.raises(LogonFailure):
        verify_authenticate(b"", V.NLMP_CHALLENGE, V.NLMP_AUTHENTICATE, bad)


def _win311_tokens():
    from smbd_py.security.spnego import parse
    neg = parse(V.security_buffer(V.SESSION_SETUP_REQ1))
    chal = parse(V.security_buffer(V.SESSION_SETUP_RESP1))
    auth = parse(V.security_buffer(V.SESSION_SETUP_REQ2))
    return neg, chal, auth


def test_windows_311_exchange_with_mic(db):
    neg, chal, auth = _win311_tokens()
    v = verify_authenticate(neg.mech_token, chal.mech_token, auth.mech_token, db)
    assert v.mic_present
    assert v.result.user == V.WIN311_USER and v.result.domain == V.WIN311_DOMAIN
    assert v.result.session_base_key == V.WIN311_SESSION_KEY
    assert not v.result.anonymous and not v.result.guest
    # The user name matches case-insensitively, as Windows does.
    d2 = UserDb()
    d2.add("ADMINISTRATOR", V.WIN311_PASSWORD)
    assert verify_authenticate(neg.mech_token, chal.mech_token, auth.mech_token,
                               d2).result.session_base_key == V.WIN311_SESSION_KEY


def test_windows_311_mic_covers_negotiate_and_challenge(db):
    neg, chal, auth = _win311_tokens()
    bad_neg = bytearray(neg.mech_token)
    bad_neg[-1] ^= 1                      # a byte of the VERSION in NEGOTIATE
    with pytest.raises(LogonFailure, match="MIC"):
        verify_authenticate(bytes(bad_neg), chal.mech_token, auth.mech_token, db)
    bad_auth = bytearray(auth.mech_token)
    bad_auth[72] ^= 1                     # the MIC itself
    with pytest.raises(LogonFailure, match="MIC"):
        verify_authenticate(neg.mech_token, chal.mech_token, bytes(bad_auth), db)


def test_windows_311_mech_list_mic(db):
    # Both directions of SPNEGO's mechListMIC, as Windows computed them.
    neg, chal, auth = _win311_tokens()
    v = verify_authenticate(neg.mech_token, chal.mech_token, auth.mech_token, db)
    from smbd_py.security.spnego import parse
    final = parse(V.security_buffer(V.SESSION_SETUP_RESP2))
    sealing = NtlmSealing(v.result.session_base_key, v.flags)
    assert neg.mech_types_der == bytes.fromhex("300c060a2b06010401823702020a")
    assert sealing.verify(neg.mech_types_der, auth.mech_list_mic)
    assert sealing.sign(neg.mech_types_der) == final.mech_list_mic
    other = NtlmSealing(v.result.session_base_key, v.flags)
    assert not other.verify(neg.mech_types_der + b"x", auth.mech_list_mic)


# -- impacket's client as a peer -----------------------------------------------------------

def _impacket_login(acceptor, user, password, domain="WORKGROUP", *, signing=True,
                    tamper=None):
    type1 = imp.getNTLMSSPType1("WS1", domain, signingRequired=signing)
    step = acceptor.accept(type1.getData())
    assert step.status == "continue"
    type3, exported = imp.getNTLMSSPType3(type1, step.out_token, user, password, domain)
    data = type3.getData()
    if tamper:
        data = tamper(data)
    return acceptor.accept(data), exported


def test_impacket_right_password_same_exported_key(db):
    step, exported = _impacket_login(NtlmAcceptor(db), "alice", "Secret123")
    assert step.status == "done"
    assert step.result.user == "alice"
    assert step.result.session_base_key == exported
    assert not step.result.anonymous and not step.result.guest


def test_impacket_user_case_and_without_key_exchange(db):
    acc = NtlmAcceptor(db)
    type1 = imp.getNTLMSSPType1("", "", signingRequired=False)
    step = acc.accept(type1.getData())
    flags = struct.unpack_from("<I", step.out_token, 20)[0]
    assert not flags & NTLMSSP_NEGOTIATE_KEY_EXCH         # not asked for, not granted
    type3, exported = imp.getNTLMSSPType3(type1, step.out_token, "ALICE", "Secret123", "")
    done = acc.accept(type3.getData())
    assert done.result.session_base_key == exported
    assert done.result.user == "alice"                     # the name as stored


def test_impacket_wrong_password(db):
    with pytest.raises(LogonFailure) as ei:
        _impacket_login(NtlmAcceptor(db), "alice", "wrong")
    assert ei.value.status == NtStatus.LOGON_FAILURE
    assert not isinstance(ei.value, InvalidToken)


def test_unknown_user_is_failure_or_guest(db):
    with pytest.raises(LogonFailure):
        _impacket_login(NtlmAcceptor(db), "mallory", "x")
    step, _ = _impacket_login(NtlmAcceptor(db, guest_ok=True), "mallory", "x")
    assert step.result.guest and step.result.session_base_key == bytes(16)
    # guest_ok never rescues a known user with a wrong password
    with pytest.raises(LogonFailure):
        _impacket_login(NtlmAcceptor(db, guest_ok=True), "alice", "wrong")


def test_impacket_anonymous(db):
    step, _ = _impacket_login(NtlmAcceptor(db), "", "", "")
    assert step.result.anonymous
    assert step.result.session_base_key == bytes(16)


def test_tampered_authenticate_fails(db):
    # Flip a byte of the NTProofStr: the proof no longer verifies.
    def flip_proof(data):
        nt_len, _, nt_off = struct.unpack_from("<HHI", data, 20)
        b = bytearray(data)
        b[nt_off] ^= 0x80
        return bytes(b)
    with pytest.raises(LogonFailure):
        _impacket_login(NtlmAcceptor(db), "alice", "Secret123", tamper=flip_proof)


def test_challenge_layout(db):
    acc = NtlmAcceptor(db, server_name="FILESRV", domain="HOME", dns_name="filesrv.lan")
    type1 = imp.getNTLMSSPType1("", "", signingRequired=True)
    step = acc.accept(type1.getData())
    chal = imp.NTLMAuthChallenge(step.out_token)
    av = imp.AV_PAIRS(chal["TargetInfoFields"])
    assert av[imp.NTLMSSP_AV_HOSTNAME][1].decode("utf-16le") == "FILESRV"
    assert av[imp.NTLMSSP_AV_DOMAINNAME][1].decode("utf-16le") == "HOME"
    assert av[imp.NTLMSSP_AV_DNS_HOSTNAME][1].decode("utf-16le") == "filesrv.lan"
    assert av[imp.NTLMSSP_AV_DNS_DOMAINNAME] is not None
    assert len(av[imp.NTLMSSP_AV_TIME][1]) == 8
    want = (imp.NTLMSSP_NEGOTIATE_UNICODE | imp.NTLMSSP_NEGOTIATE_NTLM
            | imp.NTLMSSP_NEGOTIATE_EXTENDED_SESSIONSECURITY | imp.NTLMSSP_NEGOTIATE_TARGET_INFO
            | imp.NTLMSSP_NEGOTIATE_128 | imp.NTLMSSP_NEGOTIATE_KEY_EXCH | imp.NTLMSSP_NEGOTIATE_SIGN
            | imp.NTLMSSP_NEGOTIATE_SEAL | imp.NTLMSSP_NEGOTIATE_ALWAYS_SIGN)
    assert chal["flags"] & want == want
    assert chal["domain_name"].decode("utf-16le") == "FILESRV"
    assert len(chal["challenge"]) == 8
    # Version is granted only when asked for.
    assert not chal["flags"] & imp.NTLMSSP_NEGOTIATE_VERSION


def test_acceptor_state_machine(db):
    acc = NtlmAcceptor(db)
    with pytest.raises(InvalidToken):
        acc.accept(b"NTLMSSP\x00\x03\x00\x00\x00" + bytes(60))   # AUTH before NEGOTIATE
    step, _ = _impacket_login(NtlmAcceptor(db), "alice", "Secret123")
    acc = NtlmAcceptor(db)
    _impacket_login(acc, "alice", "Secret123")
    with pytest.raises(InvalidToken):
        acc.accept(b"NTLMSSP\x00\x01\x00\x00\x00" + bytes(8))    # after done


def test_ntlmv1_refused(db):
    acc = NtlmAcceptor(db)
    type1 = imp.getNTLMSSPType1("", "", signingRequired=False, use_ntlmv2=False)
    step = acc.accept(type1.getData())
    type3, _ = imp.getNTLMSSPType3(type1, step.out_token, "alice", "Secret123", "",
                                   use_ntlmv2=False)
    with pytest.raises(LogonFailure, match="NTLMv1"):
        acc.accept(type3.getData())


# -- malformed input ---------------------------------------------------------------------

def _accept_garbage(db, negotiate: bytes, auth: bytes):
    acc = NtlmAcceptor(db)
    try:
        acc.accept(negotiate)
        acc.accept(auth)
    except LogonFailure:
        pass  # includes InvalidToken


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_raw_bytes_only_logon_failure(data):
    d = UserDb()
    d.add("alice", "Secret123")
    _accept_garbage(d, data, data)
    _accept_garbage(d, b"NTLMSSP\x00\x01\x00\x00\x00" + bytes(8), b"NTLMSSP\x00\x03\x00\x00\x00" + data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=8),
       st.integers(0, 400))
def test_fuzz_mutated_real_authenticate(mutations, cut):
    # Real AUTHENTICATE messages with bytes changed and/or cut short.
    d = UserDb()
    d.add("alice", "Secret123")
    acc = NtlmAcceptor(d)
    type1 = imp.getNTLMSSPType1("WS", "", signingRequired=True)
    step = acc.accept(type1.getData())
    type3, _ = imp.getNTLMSSPType3(type1, step.out_token, "alice", "Secret123", "")
    data = bytearray(type3.getData())
    for pos, val in mutations:
        if pos < len(data):
            data[pos] = val
    data = bytes(data[:max(cut, 1)]) if cut < len(data) else bytes(data)
    try:
        acc.accept(data)
    except LogonFailure:
        pass
