"""SPNEGO (RFC 4178, MS-SPNG) around NTLMSSP for SMB2 SESSION_SETUP.

Owns the NEGOTIATE response's NegTokenInit2, reading the client's NegTokenInit /
NegTokenResp / raw NTLMSSP tokens, building NegTokenResp answers, the
mechListMIC exchange, and SessionAuth: one SESSION_SETUP authentication from
first buffer to AuthResult. A small strict DER reader lives here, because
impacket.spnego's parser assumes a field order and raises bare Exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from smbd_py.security.ntlm import (NTLMSSP_NEGOTIATE_EXTENDED_SESSIONSECURITY, AuthResult,
                                   InvalidToken, LogonFailure, NtlmAcceptor, NtlmSealing,
                                   is_ntlmssp)

__all__ = ["NTLMSSP_OID", "SPNEGO_OID", "negotiate_token", "unwrap", "parse",
           "wrap_response", "SpnegoToken", "SessionAuth", "KIND_RAW", "KIND_INIT",
           "KIND_RESP"]

# DER content octets of the OIDs.
SPNEGO_OID = bytes.fromhex("2b0601050502")                  # 1.3.6.1.5.5.2
NTLMSSP_OID = bytes.fromhex("2b0601040182370202 0a".replace(" ", ""))  # 1.3.6.1.4.1.311.2.2.10

KIND_RAW = "raw"
KIND_INIT = "init"
KIND_RESP = "resp"

_NEG_STATES = {"accept-completed": 0, "accept-incomplete": 1, "reject": 2, "request-mic": 3}

# Tags
_APPLICATION_0 = 0x60
_SEQUENCE = 0x30
_OID = 0x06
_OCTET_STRING = 0x04
_ENUMERATED = 0x0A
_GENERAL_STRING = 0x1B
_BIT_STRING = 0x03

# The negHints name Windows and Samba put in NegTokenInit2; clients ignore it.
_HINT_NAME = b"not_defined_in_RFC4178@please_ignore"


# -- DER ---------------------------------------------------------------------------

def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _der_len(len(content)) + content


def _read_tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content_start, content_end) of the element at pos; strict bounds."""
    if pos + 2 > end:
        raise InvalidToken("SPNEGO token truncated")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise InvalidToken("SPNEGO: multi-byte tags are not used by SPNEGO")
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        nbytes = first & 0x7F
        if nbytes == 0 or nbytes > 4:
            raise InvalidToken("SPNEGO: indefinite or oversized length")
        if pos + nbytes > end:
            raise InvalidToken("SPNEGO token truncated in a length")
        length = int.from_bytes(buf[pos:pos + nbytes], "big")
        pos += nbytes
    if pos + length > end:
        raise InvalidToken("SPNEGO element runs past its container")
    return tag, pos, pos + length


def _children(buf: bytes, start: int, end: int):
    pos = start
    while pos < end:
        tag, cs, ce = _read_tlv(buf, pos, end)
        yield tag, cs, ce, pos
        pos = ce


def _expect(buf: bytes, start: int, end: int, tag: int, what: str) -> tuple[int, int]:
    t, cs, ce = _read_tlv(buf, start, end)
    if t != tag:
        raise InvalidToken(f"SPNEGO: expected {what} (tag 0x{tag:02x}), got 0x{t:02x}")
    if ce != end:
        raise InvalidToken(f"SPNEGO: trailing bytes after {what}")
    return cs, ce


# -- tokens ------------------------------------------------------------------------

@dataclass(slots=True)
class SpnegoToken:
    kind: str                                  # KIND_RAW, KIND_INIT or KIND_RESP
    mech_token: bytes = b""
    mech_types: list[bytes] = field(default_factory=list)
    mech_types_der: bytes | None = None        # the MechTypeList exactly as sent (for mechListMIC)
    mech_list_mic: bytes | None = None
    neg_state: int | None = None


def negotiate_token() -> bytes:
    """NegTokenInit2 (MS-SPNG 2.2.1) for the SMB2 NEGOTIATE response: NTLMSSP only."""
    mech_types = _tlv(0xA0, _tlv(_SEQUENCE, _tlv(_OID, NTLMSSP_OID)))
    neg_hints = _tlv(0xA3, _tlv(_SEQUENCE, _tlv(0xA0, _tlv(_GENERAL_STRING, _HINT_NAME))))
    init = _tlv(0xA0, _tlv(_SEQUENCE, mech_types + neg_hints))
    return _tlv(_APPLICATION_0, _tlv(_OID, SPNEGO_OID) + init)


def _parse_init(buf: bytes, start: int, end: int) -> SpnegoToken:
    cs, ce = _expect(buf, start, end, _SEQUENCE, "NegTokenInit SEQUENCE")
    tok = SpnegoToken(KIND_INIT)
    seen_types = False
    for tag, fs, fe, _ in _children(buf, cs, ce):
        if tag == 0xA0:
            ls, le = _expect(buf, fs, fe, _SEQUENCE, "MechTypeList")
            tok.mech_types_der = buf[fs:fe]
            for t, os_, oe, _ in _children(buf, ls, le):
                if t != _OID:
                    raise InvalidToken("SPNEGO: MechTypeList holds a non-OID")
                tok.mech_types.append(buf[os_:oe])
            seen_types = True
        elif tag == 0xA1:
            pass                                 # reqFlags: ignored, as RFC 4178 recommends
        elif tag == 0xA2:
            s, e = _expect(buf, fs, fe, _OCTET_STRING, "mechToken")
            tok.mech_token = buf[s:e]
        elif tag == 0xA3:
            t, s, e = _read_tlv(buf, fs, fe)
            if t == _OCTET_STRING:               # mechListMIC (NegTokenInit2 puts negHints here)
                tok.mech_list_mic = buf[s:e]
        elif tag == 0xA4:
            s, e = _expect(buf, fs, fe, _OCTET_STRING, "mechListMIC")
            tok.mech_list_mic = buf[s:e]
    if not seen_types:
        raise InvalidToken("SPNEGO NegTokenInit without mechTypes")
    return tok


def _parse_resp(buf: bytes, start: int, end: int) -> SpnegoToken:
    cs, ce = _expect(buf, start, end, _SEQUENCE, "NegTokenResp SEQUENCE")
    tok = SpnegoToken(KIND_RESP)
    for tag, fs, fe, _ in _children(buf, cs, ce):
        if tag == 0xA0:
            s, e = _expect(buf, fs, fe, _ENUMERATED, "negState")
            if e - s != 1:
                raise InvalidToken("SPNEGO negState is not one byte")
            tok.neg_state = buf[s]
        elif tag == 0xA1:
            s, e = _expect(buf, fs, fe, _OID, "supportedMech")
            tok.mech_types = [buf[s:e]]
        elif tag == 0xA2:
            s, e = _expect(buf, fs, fe, _OCTET_STRING, "responseToken")
            tok.mech_token = buf[s:e]
        elif tag == 0xA3:
            s, e = _expect(buf, fs, fe, _OCTET_STRING, "mechListMIC")
            tok.mech_list_mic = buf[s:e]
    return tok


def parse(token: bytes | bytearray | memoryview) -> SpnegoToken:
    """Classify and parse a SESSION_SETUP security buffer. Raises InvalidToken."""
    buf = bytes(token)
    if not buf:
        raise InvalidToken("empty security buffer")
    if is_ntlmssp(buf):
        return SpnegoToken(KIND_RAW, mech_token=buf)
    tag, cs, ce = _read_tlv(buf, 0, len(buf))
    if tag == _APPLICATION_0:
        t, os_, oe = _read_tlv(buf, cs, ce)
        if t != _OID or buf[os_:oe] != SPNEGO_OID:
            raise InvalidToken("GSS-API token is not SPNEGO")
        inner_tag, ics, ice = _read_tlv(buf, oe, ce)
        if inner_tag != 0xA0 or ice != ce:
            raise InvalidToken("SPNEGO GSS token does not hold a NegTokenInit")
        return _parse_init(buf, ics, ice)
    if tag == 0xA0:
        return _parse_init(buf, cs, ce)
    if tag == 0xA1:
        return _parse_resp(buf, cs, ce)
    raise InvalidToken(f"unknown security buffer (first byte 0x{tag:02x})")


def unwrap(token: bytes | bytearray | memoryview) -> tuple[bytes, str]:
    """(NTLMSSP token, kind). kind is "raw", "init" or "resp". An init whose
    optimistic token is for another mechanism yields an empty NTLMSSP token."""
    tok = parse(token)
    if tok.kind == KIND_INIT and tok.mech_types and tok.mech_types[0] != NTLMSSP_OID:
        return b"", tok.kind
    return tok.mech_token, tok.kind


def wrap_response(ntlm_token: bytes | None, state: str, first: bool, *,
                  raw: bool = False, mech_list_mic: bytes | None = None) -> bytes:
    """NegTokenResp for a SESSION_SETUP response (or the bare NTLMSSP token if raw).

    state: 'accept-incomplete' | 'accept-completed' | 'reject' (| 'request-mic').
    first: include supportedMech (RFC 4178: only in the first reply).
    """
    if raw:
        return bytes(ntlm_token or b"")
    try:
        neg_state = _NEG_STATES[state]
    except KeyError:
        raise ValueError(f"unknown negState {state!r}") from None
    body = _tlv(0xA0, _tlv(_ENUMERATED, bytes((neg_state,))))
    if first:
        body += _tlv(0xA1, _tlv(_OID, NTLMSSP_OID))
    if ntlm_token:
        body += _tlv(0xA2, _tlv(_OCTET_STRING, bytes(ntlm_token)))
    if mech_list_mic:
        body += _tlv(0xA3, _tlv(_OCTET_STRING, bytes(mech_list_mic)))
    return _tlv(0xA1, _tlv(_SEQUENCE, body))


# -- one SESSION_SETUP authentication ---------------------------------------------

class SessionAuth:
    """Drives SPNEGO + NTLMSSP across the SESSION_SETUP round trips of one session.

    step() returns (more_processing_required, out_security_buffer, result);
    result is set on the final step. LogonFailure (InvalidToken for malformed
    input, also a LogonFailure) ends the exchange; the caller then answers
    with exc.status and discards this object.
    """

    _MAX_STEPS = 4  # an NTLM exchange needs 2 or 3; anything longer is a confused client

    def __init__(self, user_db, *, server_name: str = "SMBD-PY", domain: str = "WORKGROUP",
                 dns_name: str = "smbd-py", guest_ok: bool = False) -> None:
        self.acceptor = NtlmAcceptor(user_db, server_name=server_name, domain=domain,
                                     dns_name=dns_name, guest_ok=guest_ok)
        self.raw: bool | None = None
        self.mech_types_der: bytes | None = None
        self._replied = False
        self._steps = 0
        self.result: AuthResult | None = None

    # The raw NTLM messages, kept for the MIC.
    @property
    def negotiate_message(self) -> bytes | None:
        return self.acceptor.negotiate_message

    @property
    def challenge_message(self) -> bytes | None:
        return self.acceptor.challenge_message

    def step(self, security_buffer: bytes) -> tuple[bool, bytes, AuthResult | None]:
        self._steps += 1
        if self._steps > self._MAX_STEPS or self.result is not None:
            raise InvalidToken("too many SESSION_SETUP round trips")
        tok = parse(security_buffer)
        if self.raw is None:
            self.raw = tok.kind == KIND_RAW
        elif self.raw != (tok.kind == KIND_RAW):
            raise InvalidToken("client switched between raw NTLMSSP and SPNEGO")

        if tok.kind == KIND_INIT:
            if self.acceptor.negotiate_message is not None:
                raise InvalidToken("second NegTokenInit in one exchange")
            if NTLMSSP_OID not in tok.mech_types:
                raise LogonFailure("client offers no NTLMSSP; this server has nothing else")
            self.mech_types_der = tok.mech_types_der
            if tok.mech_types[0] != NTLMSSP_OID or not tok.mech_token:
                # Optimistic token for another mech (e.g. Kerberos), or none at all:
                # pick NTLMSSP and ask for its first token.
                return True, self._reply(None, "accept-incomplete"), None
        elif tok.kind == KIND_RESP and tok.neg_state == _NEG_STATES["reject"]:
            raise LogonFailure("client rejected the negotiation")

        if not tok.mech_token:
            raise InvalidToken("SESSION_SETUP carries no NTLMSSP token")
        ntlm_step = self.acceptor.accept(tok.mech_token)
        if ntlm_step.status == "continue":
            return True, self._reply(ntlm_step.out_token, "accept-incomplete"), None

        result = ntlm_step.result
        mic = None
        if not self.raw:
            mic = self._mech_list_mic(result, tok.mech_list_mic)
        self.result = result
        return False, self._reply(None, "accept-completed", mic), result

    def _reply(self, ntlm_token, state, mic=None) -> bytes:
        first = not self._replied
        self._replied = True
        return wrap_response(ntlm_token, state, first, raw=bool(self.raw), mech_list_mic=mic)

    def _mech_list_mic(self, result: AuthResult, client_mic: bytes | None) -> bytes | None:
        """Verify the client's mechListMIC and produce ours (RFC 4178 5, MS-SPNG 3.2.5.1).

        Needed when the NTLM MIC was used (Windows then insists on the exchange)
        or the client sent one; skipped when there is no key (anonymous, guest).
        """
        if result.anonymous or result.guest or self.mech_types_der is None:
            return None
        flags = self.acceptor.negotiated_flags
        if not (client_mic or self.acceptor.mic_present):
            return None
        if not flags & NTLMSSP_NEGOTIATE_EXTENDED_SESSIONSECURITY:
            return None
        sealing = NtlmSealing(result.session_base_key, flags)
        if client_mic is not None and not sealing.verify(self.mech_types_der, client_mic):
            raise LogonFailure("SPNEGO mechListMIC from the client does not verify")
        return sealing.sign(self.mech_types_der)
