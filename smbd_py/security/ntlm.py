"""NTLMSSP acceptor (server side of MS-NLMP): NEGOTIATE -> CHALLENGE -> AUTHENTICATE.

Owns message parsing and building, NTLMv2 verification against the users file,
the key exchange that yields the exported session key, the MIC check, and the
NTLMSSP message signature that SPNEGO's mechListMIC needs. Every malformed
input ends in InvalidToken or LogonFailure, never another exception.

The messages are parsed with struct here rather than with impacket.ntlm's
Structure classes: those decide whether a MIC is present from the VERSION flag
(MS-NLMP says MsvAvFlags decides), and raise arbitrary exceptions on short
input. impacket's NTLM client is used in the tests as the peer.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import os
import struct
import time
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4
from cryptography.hazmat.primitives.ciphers import Cipher

from smbd_py.wire.status import NtStatus

__all__ = ["LogonFailure", "InvalidToken", "AuthResult", "NtlmStep", "NtlmAcceptor",
           "verify_authenticate", "ntowfv2", "NtlmSealing", "NTLMSSP_SIGNATURE",
           "is_ntlmssp"]

NTLMSSP_SIGNATURE = b"NTLMSSP\x00"
NTLMSSP_NEGOTIATE = 1
NTLMSSP_CHALLENGE = 2
NTLMSSP_AUTH = 3

# NegotiateFlags (MS-NLMP 2.2.2.5)
NTLMSSP_NEGOTIATE_UNICODE = 0x00000001
NTLM_NEGOTIATE_OEM = 0x00000002
NTLMSSP_REQUEST_TARGET = 0x00000004
NTLMSSP_NEGOTIATE_SIGN = 0x00000010
NTLMSSP_NEGOTIATE_SEAL = 0x00000020
NTLMSSP_NEGOTIATE_LM_KEY = 0x00000080
NTLMSSP_NEGOTIATE_NTLM = 0x00000200
NTLMSSP_NEGOTIATE_ANONYMOUS = 0x00000800
NTLMSSP_NEGOTIATE_ALWAYS_SIGN = 0x00008000
NTLMSSP_TARGET_TYPE_SERVER = 0x00020000
NTLMSSP_NEGOTIATE_EXTENDED_SESSIONSECURITY = 0x00080000
NTLMSSP_NEGOTIATE_IDENTIFY = 0x00100000
NTLMSSP_NEGOTIATE_TARGET_INFO = 0x00800000
NTLMSSP_NEGOTIATE_VERSION = 0x02000000
NTLMSSP_NEGOTIATE_128 = 0x20000000
NTLMSSP_NEGOTIATE_KEY_EXCH = 0x40000000
NTLMSSP_NEGOTIATE_56 = 0x80000000

# Flags the server grants when the client asked for them.
_MIRRORED = (NTLMSSP_NEGOTIATE_SIGN | NTLMSSP_NEGOTIATE_SEAL | NTLMSSP_NEGOTIATE_ALWAYS_SIGN
             | NTLMSSP_NEGOTIATE_EXTENDED_SESSIONSECURITY | NTLMSSP_NEGOTIATE_128
             | NTLMSSP_NEGOTIATE_56 | NTLMSSP_NEGOTIATE_KEY_EXCH | NTLMSSP_NEGOTIATE_VERSION
             | NTLMSSP_NEGOTIATE_IDENTIFY)

# AV_PAIR ids (MS-NLMP 2.2.2.1)
MsvAvEOL = 0
MsvAvNbComputerName = 1
MsvAvNbDomainName = 2
MsvAvDnsComputerName = 3
MsvAvDnsDomainName = 4
MsvAvFlags = 6
MsvAvTimestamp = 7
_AV_FLAG_MIC_PRESENT = 0x00000002

# VERSION: we claim 6.1 (as Samba does) with NTLMSSP_REVISION_W2K3.
_VERSION = bytes((6, 1)) + struct.pack("<H", 7600) + b"\x00\x00\x00" + bytes((15,))

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_FIELD = struct.Struct("<HHI")  # Len, MaxLen, BufferOffset
_AV = struct.Struct("<HH")
_CHALLENGE_FIXED = struct.Struct("<8sI HHI I 8s 8s HHI 8s")

_AUTH_MIN = 64           # through NegotiateFlags
_MIC_OFFSET = 72         # after the 8-byte VERSION
_MIC_SIZE = 16
_NTLMV2_BLOB_MIN = 28    # RespType..ClientChallenge + Reserved3, before AvPairs
_FILETIME_EPOCH = 116444736000000000


class LogonFailure(Exception):
    """Authentication failed; the server answers STATUS_LOGON_FAILURE."""
    status = NtStatus.LOGON_FAILURE


class InvalidToken(LogonFailure, ValueError):
    """A malformed NTLMSSP or SPNEGO token. A LogonFailure (callers that only
    catch that are safe) and a ValueError; its status is STATUS_INVALID_PARAMETER."""
    status = NtStatus.INVALID_PARAMETER


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Who logged on. session_base_key is the NTLM *exported* session key
    (what SMB calls Session.SessionKey); 16 zero bytes for anonymous and guest."""
    user: str
    domain: str
    session_base_key: bytes
    anonymous: bool = False
    guest: bool = False
    workstation: str = ""


@dataclass(frozen=True, slots=True)
class NtlmStep:
    status: str                      # "continue" or "done"
    out_token: bytes = b""           # the CHALLENGE when continuing
    result: AuthResult | None = None


def is_ntlmssp(token: bytes | bytearray | memoryview) -> bool:
    return bytes(token[:8]) == NTLMSSP_SIGNATURE


def _hmac_md5(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.md5).digest()


def _rc4(key: bytes):
    return Cipher(ARC4(key), mode=None).encryptor()


def ntowfv2(nt_hash: bytes, user: str, domain: str) -> bytes:
    """NTOWFv2 = HMAC_MD5(NT hash, UNICODE(Uppercase(User) || UserDom))."""
    return _hmac_md5(nt_hash, (user.upper() + domain).encode("utf-16-le", "surrogatepass"))


def _filetime_now() -> bytes:
    return struct.pack("<Q", _FILETIME_EPOCH + int(time.time() * 10_000_000))


def _av_pairs(pairs: list[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for av_id, value in pairs:
        out += _AV.pack(av_id, len(value)) + value
    out += _AV.pack(MsvAvEOL, 0)
    return bytes(out)


def _parse_av_pairs(data: bytes) -> dict[int, bytes]:
    pairs: dict[int, bytes] = {}
    pos = 0
    # Each pair is at least 4 bytes, so this loop ends within len(data)/4 turns.
    while pos + 4 <= len(data):
        av_id, av_len = _AV.unpack_from(data, pos)
        pos += 4
        if av_id == MsvAvEOL:
            return pairs
        if pos + av_len > len(data):
            raise InvalidToken("NTLMv2 AV pair runs past the end of the response")
        pairs.setdefault(av_id, data[pos:pos + av_len])
        pos += av_len
    raise InvalidToken("NTLMv2 AV pairs have no MsvAvEOL")


def _field(msg: bytes, at: int, what: str) -> bytes:
    length, _max, offset = _FIELD.unpack_from(msg, at)
    if length == 0:
        return b""
    if offset + length > len(msg):
        raise InvalidToken(f"NTLMSSP {what} field runs past the end of the message")
    return msg[offset:offset + length]


def _decode(raw: bytes, unicode: bool, what: str) -> str:
    try:
        if unicode:
            if len(raw) % 2:
                raise InvalidToken(f"NTLMSSP {what} has an odd UTF-16 length")
            return raw.decode("utf-16-le", "surrogatepass")
        return raw.decode("cp437")
    except UnicodeDecodeError:
        raise InvalidToken(f"NTLMSSP {what} is not valid text") from None


def _check_header(token: bytes, msg_type: int, min_len: int) -> None:
    if len(token) < min_len or token[:8] != NTLMSSP_SIGNATURE:
        raise InvalidToken("not an NTLMSSP message")
    if _U32.unpack_from(token, 8)[0] != msg_type:
        raise InvalidToken(f"expected NTLMSSP message type {msg_type}, "
                           f"got {_U32.unpack_from(token, 8)[0]}")


def build_challenge(client_flags: int, server_challenge: bytes, *, server_name: str,
                    domain: str, dns_name: str, dns_domain: str | None = None,
                    timestamp: bytes | None = None) -> bytes:
    """The CHALLENGE_MESSAGE answering a NEGOTIATE that carried client_flags."""
    flags = (NTLMSSP_NEGOTIATE_NTLM | NTLMSSP_NEGOTIATE_TARGET_INFO
             | (client_flags & _MIRRORED))
    unicode = bool(client_flags & NTLMSSP_NEGOTIATE_UNICODE) or not (client_flags & NTLM_NEGOTIATE_OEM)
    flags |= NTLMSSP_NEGOTIATE_UNICODE if unicode else NTLM_NEGOTIATE_OEM
    if client_flags & NTLMSSP_REQUEST_TARGET:
        flags |= NTLMSSP_REQUEST_TARGET | NTLMSSP_TARGET_TYPE_SERVER
    enc = (lambda s: s.encode("utf-16-le")) if unicode else (lambda s: s.encode("cp437", "replace"))
    target_name = enc(server_name) if flags & NTLMSSP_REQUEST_TARGET else b""
    u16 = lambda s: s.encode("utf-16-le")  # AV pairs are always Unicode
    target_info = _av_pairs([
        (MsvAvNbDomainName, u16(domain)),
        (MsvAvNbComputerName, u16(server_name)),
        (MsvAvDnsDomainName, u16(dns_domain if dns_domain is not None else dns_name)),
        (MsvAvDnsComputerName, u16(dns_name)),
        (MsvAvTimestamp, timestamp or _filetime_now()),
    ])
    # Fixed part is 48 bytes, then VERSION (8, zero unless negotiated), then payload.
    payload_at = 56
    version = _VERSION if flags & NTLMSSP_NEGOTIATE_VERSION else bytes(8)
    name_off = payload_at
    info_off = name_off + len(target_name)
    head = _CHALLENGE_FIXED.pack(
        NTLMSSP_SIGNATURE, NTLMSSP_CHALLENGE,
        len(target_name), len(target_name), name_off,
        flags, server_challenge, bytes(8),
        len(target_info), len(target_info), info_off,
        version)
    return head + target_name + target_info


@dataclass(frozen=True, slots=True)
class _Verified:
    result: AuthResult
    flags: int
    mic_present: bool


def verify_authenticate(negotiate: bytes, challenge: bytes, authenticate: bytes, user_db, *,
                        guest_ok: bool = False) -> _Verified:
    """Check an AUTHENTICATE_MESSAGE against the NEGOTIATE and CHALLENGE it answers.

    Pure: the server challenge and negotiated flags are read from the CHALLENGE
    bytes, so a recorded exchange can be replayed (the MS-NLMP 4.2.4 and
    Microsoft's SMB 3.1.1 examples are tests).
    """
    _check_header(challenge, NTLMSSP_CHALLENGE, 32)
    server_flags = _U32.unpack_from(challenge, 20)[0]
    server_challenge = challenge[24:32]
    msg = bytes(authenticate)
    _check_header(msg, NTLMSSP_AUTH, _AUTH_MIN)
    lm = _field(msg, 12, "LmChallengeResponse")
    nt = _field(msg, 20, "NtChallengeResponse")
    flags = _U32.unpack_from(msg, 60)[0]
    unicode = bool(flags & NTLMSSP_NEGOTIATE_UNICODE)
    domain = _decode(_field(msg, 28, "DomainName"), unicode, "DomainName")
    user = _decode(_field(msg, 36, "UserName"), unicode, "UserName")
    workstation = _decode(_field(msg, 44, "Workstation"), unicode, "Workstation")
    enc_key = _field(msg, 52, "EncryptedRandomSessionKey")
    negotiated = flags & server_flags

    if not user and not nt and lm in (b"", b"\x00"):
        # MS-NLMP 3.3.1/3.2.5.1.2: anonymous. No key to sign with.
        return _Verified(AuthResult(user="", domain=domain, session_base_key=bytes(16),
                                    anonymous=True, workstation=workstation),
                         negotiated, False)
    if len(nt) == 24 or len(nt) < 16 + _NTLMV2_BLOB_MIN:
        raise LogonFailure("NTLMv1 (or a too-short NT response) is refused; NTLMv2 is required")

    nt_proof, blob = nt[:16], nt[16:]
    av = _parse_av_pairs(blob[_NTLMV2_BLOB_MIN:])
    nt_hash = user_db.nt_hash(user)
    if nt_hash is None:
        if guest_ok:
            # Samba's "map to guest = bad user": unknown names become guest; no key.
            return _Verified(AuthResult(user=user, domain=domain, session_base_key=bytes(16),
                                        guest=True, workstation=workstation),
                             negotiated, False)
        raise LogonFailure(f"unknown user {user!r}")

    response_key = None
    # The client computed NTOWFv2 over the domain it sent; some clients use an
    # empty or upper-cased domain. The user's case never matters (it is upper-cased).
    for dom in dict.fromkeys((domain, domain.upper(), "")):
        key = ntowfv2(nt_hash, user, dom)
        if hmac.compare_digest(_hmac_md5(key, server_challenge + blob), nt_proof):
            response_key = key
            break
    if response_key is None:
        raise LogonFailure(f"wrong password for user {user!r}")

    session_base_key = _hmac_md5(response_key, nt_proof)
    key_exchange_key = session_base_key  # NTLMv2: KXKEY is the session base key
    if negotiated & NTLMSSP_NEGOTIATE_KEY_EXCH and enc_key:
        if len(enc_key) != 16:
            raise InvalidToken("EncryptedRandomSessionKey must be 16 bytes")
        exported = _rc4(key_exchange_key).update(enc_key)
    else:
        exported = key_exchange_key

    av_flags = av.get(MsvAvFlags)
    mic_present = bool(av_flags and len(av_flags) == 4
                       and _U32.unpack(av_flags)[0] & _AV_FLAG_MIC_PRESENT)
    if mic_present:
        if len(msg) < _MIC_OFFSET + _MIC_SIZE:
            raise InvalidToken("AUTHENTICATE message too short for its MIC")
        mic = msg[_MIC_OFFSET:_MIC_OFFSET + _MIC_SIZE]
        zeroed = msg[:_MIC_OFFSET] + bytes(_MIC_SIZE) + msg[_MIC_OFFSET + _MIC_SIZE:]
        expected = _hmac_md5(exported, bytes(negotiate) + bytes(challenge) + zeroed)
        if not hmac.compare_digest(expected, mic):
            raise LogonFailure("NTLMSSP MIC mismatch (tampered exchange)")

    canonical = getattr(user_db, "canonical_name", None)
    name = (canonical(user) if canonical else None) or user
    return _Verified(AuthResult(user=name, domain=domain, session_base_key=exported,
                                workstation=workstation),
                     negotiated, mic_present)


class NtlmAcceptor:
    """One NTLMSSP exchange, server side. Feed it each token the client sends."""

    def __init__(self, user_db, *, server_name: str = "SMBD-PY", domain: str = "WORKGROUP",
                 dns_name: str = "smbd-py", guest_ok: bool = False) -> None:
        self.user_db = user_db
        self.server_name = server_name
        self.domain = domain
        self.dns_name = dns_name
        self.guest_ok = guest_ok
        self.negotiate_message: bytes | None = None
        self.challenge_message: bytes | None = None
        self.negotiated_flags = 0
        self.mic_present = False
        self.result: AuthResult | None = None

    def accept(self, token: bytes) -> NtlmStep:
        token = bytes(token)
        if self.result is not None:
            raise InvalidToken("NTLMSSP exchange already finished")
        if self.negotiate_message is None:
            _check_header(token, NTLMSSP_NEGOTIATE, 16)
            client_flags = _U32.unpack_from(token, 12)[0]
            self.negotiate_message = token
            self.challenge_message = build_challenge(
                client_flags, os.urandom(8), server_name=self.server_name,
                domain=self.domain, dns_name=self.dns_name)
            return NtlmStep("continue", self.challenge_message)
        verified = verify_authenticate(self.negotiate_message, self.challenge_message, token,
                                       self.user_db, guest_ok=self.guest_ok)
        self.negotiated_flags = verified.flags
        self.mic_present = verified.mic_present
        self.result = verified.result
        return NtlmStep("done", b"", verified.result)


class NtlmSealing:
    """NTLMSSP message signatures (MS-NLMP 3.4.4.2, extended session security),
    used here only for SPNEGO's mechListMIC. One instance per exchange; the RC4
    streams continue across calls as the spec requires."""

    _C2S_SIGN = b"session key to client-to-server signing key magic constant\x00"
    _S2C_SIGN = b"session key to server-to-client signing key magic constant\x00"
    _C2S_SEAL = b"session key to client-to-server sealing key magic constant\x00"
    _S2C_SEAL = b"session key to server-to-client sealing key magic constant\x00"

    def __init__(self, exported_session_key: bytes, flags: int) -> None:
        if not flags & NTLMSSP_NEGOTIATE_EXTENDED_SESSIONSECURITY:
            raise ValueError("only extended session security signatures are supported")
        self.flags = flags
        k = exported_session_key
        if flags & NTLMSSP_NEGOTIATE_128:
            seal_base = k
        elif flags & NTLMSSP_NEGOTIATE_56:
            seal_base = k[:7]
        else:
            seal_base = k[:5]
        self._sign_out = hashlib.md5(k + self._S2C_SIGN).digest()
        self._sign_in = hashlib.md5(k + self._C2S_SIGN).digest()
        self._seal_out = _rc4(hashlib.md5(seal_base + self._S2C_SEAL).digest())
        self._seal_in = _rc4(hashlib.md5(seal_base + self._C2S_SEAL).digest())
        self._seq_out = 0
        self._seq_in = 0

    def _mac(self, sign_key: bytes, seal, seq: int, message: bytes) -> bytes:
        checksum = _hmac_md5(sign_key, _U32.pack(seq) + message)[:8]
        if self.flags & NTLMSSP_NEGOTIATE_KEY_EXCH:
            checksum = seal.update(checksum)
        return _U32.pack(1) + checksum + _U32.pack(seq)

    def sign(self, message: bytes) -> bytes:
        """Signature of a server->client message (16 bytes)."""
        sig = self._mac(self._sign_out, self._seal_out, self._seq_out, message)
        self._seq_out += 1
        return sig

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Check a client->server signature."""
        expected = self._mac(self._sign_in, self._seal_in, self._seq_in, message)
        self._seq_in += 1
        return hmac.compare_digest(expected, bytes(signature))
