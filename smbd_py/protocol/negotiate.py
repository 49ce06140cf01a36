"""NEGOTIATE (MS-SMB2 2.2.3/2.2.4, 3.3.5.3/3.3.5.4) including 3.1.1 negotiate contexts, and
the multi-protocol negotiate that starts from an SMB1 NEGOTIATE listing SMB2 dialects."""
from __future__ import annotations

import hashlib
import os
import struct
import time

from ..wire.header import Command, Flags, Header
from ..wire.status import NtStatus, SmbError
from .connection import Disconnect

SUPPORTED_DIALECTS = (0x0311, 0x0302, 0x0300, 0x0210, 0x0202)
DIALECT_WILDCARD = 0x02FF

SIGNING_ENABLED = 0x0001
SIGNING_REQUIRED = 0x0002

CAP_DFS = 0x01
CAP_LEASING = 0x02
CAP_LARGE_MTU = 0x04
CAP_MULTI_CHANNEL = 0x08
CAP_PERSISTENT_HANDLES = 0x10
CAP_DIRECTORY_LEASING = 0x20
CAP_ENCRYPTION = 0x40

PREAUTH_INTEGRITY_CAPABILITIES = 0x0001
ENCRYPTION_CAPABILITIES = 0x0002
COMPRESSION_CAPABILITIES = 0x0003
NETNAME_NEGOTIATE_CONTEXT_ID = 0x0005
TRANSPORT_CAPABILITIES = 0x0006
RDMA_TRANSFORM_CAPABILITIES = 0x0007
SIGNING_CAPABILITIES = 0x0008
SHA_512 = 0x0001

NEG_REQ = struct.Struct("<HHHHI16sIHH")          # 36 bytes
NEG_RESP = struct.Struct("<HHHH16sIIIIQQHHI")      # 64 bytes
CTX_HDR = struct.Struct("<HHI")
STATUS_NO_PREAUTH_INTEGRITY_HASH_OVERLAP = 0xC05D0000

# Features this server implements; the oplock/lease and encryption stages turn these on.
LEASING_SUPPORTED = True
# Server preference order (Samba's and Windows' default): AES-128-GCM, AES-128-CCM,
# AES-256-GCM, AES-256-CCM (MS-SMB2 2.2.3.1.2 cipher ids).
ENCRYPTION_CIPHERS: tuple[int, ...] = (0x0002, 0x0001, 0x0004, 0x0003)
AES_128_CCM = 0x0001


def filetime_now() -> int:
    return int(time.time() * 10_000_000) + 116444736000000000


def _server_capabilities(dialect: int) -> int:
    caps = 0
    if dialect >= 0x0210:
        caps |= CAP_LARGE_MTU
        if LEASING_SUPPORTED:
            caps |= CAP_LEASING
    if dialect in (0x0300, 0x0302):
        if LEASING_SUPPORTED:
            caps |= CAP_DIRECTORY_LEASING
        if ENCRYPTION_CIPHERS:
            caps |= CAP_ENCRYPTION
    if dialect == 0x0311 and LEASING_SUPPORTED:
        caps |= CAP_DIRECTORY_LEASING
    if dialect >= 0x0300:
        # Session binding (protocol.session._start_binding): a session is usable on
        # several connections of the client (MS-SMB2 3.3.5.5.2).
        caps |= CAP_MULTI_CHANNEL
    return caps


def _security_mode(conn) -> int:
    return SIGNING_ENABLED | (SIGNING_REQUIRED if conn.server.config.signing_required else 0)


def _security_blob() -> bytes:
    from ..security.spnego import negotiate_token
    return negotiate_token()


async def handle_negotiate(req) -> bytes:
    conn = req.conn
    if conn.negotiated:
        # MS-SMB2 3.3.5.3.1: a second NEGOTIATE on a connection disconnects it.
        raise Disconnect("second NEGOTIATE")
    body = req.body
    if len(body) < NEG_REQ.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    (size, count, sec_mode, _r, caps, client_guid, ctx_off, ctx_count, _r2) = NEG_REQ.unpack_from(body)
    if size != 36 or count == 0 or len(body) < 36 + 2 * count:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    dialects = list(struct.unpack_from(f"<{count}H", body, 36))
    chosen = next((d for d in SUPPORTED_DIALECTS if d in dialects), None)
    if chosen is None:
        raise SmbError(NtStatus.NOT_SUPPORTED)
    conn.client_dialects = dialects
    conn.client_guid = client_guid
    conn.client_capabilities = caps
    conn.client_security_mode = sec_mode
    contexts_out: list[bytes] = []
    if chosen == 0x0311:
        conn.preauth_hash = hashlib.sha512(b"\0" * 64 + bytes(req.raw)).digest()
        contexts_out = _negotiate_contexts(conn, req.raw, ctx_off, ctx_count)
    conn.dialect = chosen
    conn.negotiated = True
    if chosen == 0x0202:
        conn.max_read = conn.max_write = conn.max_transact = 65536
    conn.server_capabilities = _server_capabilities(chosen)
    if not caps & CAP_DIRECTORY_LEASING:
        # Only a client that offers directory leasing hears of it: impacket (0.13) does
        # not offer it, and crashes on CREATE of a root-level file when the server
        # announces it (smb3.create's parentDir); Windows clients and smbtorture offer it.
        conn.server_capabilities &= ~CAP_DIRECTORY_LEASING
    if chosen in (0x0300, 0x0302):
        # MS-SMB2 3.3.5.4: 3.0/3.0.2 encrypt with AES-128-CCM, and only when the client
        # announced SMB2_GLOBAL_CAP_ENCRYPTION (3.1.1 uses the negotiate context instead).
        if caps & CAP_ENCRYPTION and AES_128_CCM in ENCRYPTION_CIPHERS:
            conn.cipher_id = AES_128_CCM
        else:
            conn.server_capabilities &= ~CAP_ENCRYPTION
    conn.server_security_mode = _security_mode(conn)
    return _response(conn, chosen, contexts_out)


def _response(conn, dialect: int, contexts: list[bytes]) -> bytes:
    blob = _security_blob()
    sec_off = 64 + NEG_RESP.size
    out = bytearray(NEG_RESP.size)
    out += blob
    ctx_off = 0
    if contexts:
        out += b"\0" * ((-(64 + len(out))) % 8)
        ctx_off = 64 + len(out)
        for i, c in enumerate(contexts):
            out += c
            if i + 1 < len(contexts):
                out += b"\0" * ((-len(out)) % 8)
    NEG_RESP.pack_into(out, 0, 65, conn.server_security_mode, dialect, len(contexts),
                       conn.server.server_guid, conn.server_capabilities, conn.max_transact,
                       conn.max_read, conn.max_write, filetime_now(), 0, sec_off, len(blob),
                       ctx_off)
    return bytes(out)


def _ctx(ctype: int, data: bytes) -> bytes:
    return CTX_HDR.pack(ctype, len(data), 0) + data


def _negotiate_contexts(conn, raw, ctx_off: int, ctx_count: int) -> list[bytes]:
    """Parse the client's contexts (offsets are from the start of the SMB2 header) and
    build ours. MS-SMB2 3.3.5.4."""
    if ctx_count == 0 or ctx_off < 64 + 36 or ctx_off > len(raw):
        raise SmbError(NtStatus.INVALID_PARAMETER)
    pos = ctx_off
    preauth = signing = cipher = None
    seen: set[int] = set()
    for i in range(ctx_count):
        pos += (-pos) % 8 if i else 0
        if pos + 8 > len(raw):
            raise SmbError(NtStatus.INVALID_PARAMETER)
        ctype, dlen, _ = CTX_HDR.unpack_from(raw, pos)
        data = bytes(raw[pos + 8:pos + 8 + dlen])
        if len(data) != dlen:
            raise SmbError(NtStatus.INVALID_PARAMETER)
        pos += 8 + dlen
        if ctype in seen and ctype in (PREAUTH_INTEGRITY_CAPABILITIES, ENCRYPTION_CAPABILITIES,
                                       COMPRESSION_CAPABILITIES, SIGNING_CAPABILITIES,
                                       RDMA_TRANSFORM_CAPABILITIES, TRANSPORT_CAPABILITIES):
            raise SmbError(NtStatus.INVALID_PARAMETER)
        seen.add(ctype)
        if ctype == PREAUTH_INTEGRITY_CAPABILITIES:
            if dlen < 4:
                raise SmbError(NtStatus.INVALID_PARAMETER)
            n, _salt_len = struct.unpack_from("<HH", data)
            if n == 0 or 4 + 2 * n > dlen:
                raise SmbError(NtStatus.INVALID_PARAMETER)
            algs = struct.unpack_from(f"<{n}H", data, 4)
            if SHA_512 not in algs:
                raise SmbError(STATUS_NO_PREAUTH_INTEGRITY_HASH_OVERLAP)
            preauth = SHA_512
        elif ctype == ENCRYPTION_CAPABILITIES:
            if dlen < 2:
                raise SmbError(NtStatus.INVALID_PARAMETER)
            (n,) = struct.unpack_from("<H", data)
            if n == 0 or 2 + 2 * n > dlen:
                raise SmbError(NtStatus.INVALID_PARAMETER)
            offered = struct.unpack_from(f"<{n}H", data, 2)
            cipher = next((c for c in ENCRYPTION_CIPHERS if c in offered), 0)
        elif ctype == SIGNING_CAPABILITIES:
            if dlen < 2:
                raise SmbError(NtStatus.INVALID_PARAMETER)
            (n,) = struct.unpack_from("<H", data)
            if n == 0 or 2 + 2 * n > dlen:
                raise SmbError(NtStatus.INVALID_PARAMETER)
            offered = struct.unpack_from(f"<{n}H", data, 2)
            # Prefer AES-GMAC (fast), then AES-CMAC, then HMAC-SHA256.
            signing = next((a for a in (2, 1, 0) if a in offered), None)
            if signing is None:
                signing = 1
    if preauth is None:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    out = [_ctx(PREAUTH_INTEGRITY_CAPABILITIES, struct.pack("<HHH", 1, 32, SHA_512) + os.urandom(32))]
    if cipher is not None:
        conn.cipher_id = cipher
        out.append(_ctx(ENCRYPTION_CAPABILITIES, struct.pack("<HH", 1, cipher)))
    conn.signing_algorithm = 1        # AES-CMAC unless the client offers more
    if signing is not None:
        conn.signing_algorithm = signing
        out.append(_ctx(SIGNING_CAPABILITIES, struct.pack("<HH", 1, signing)))
    return out


def handle_smb1_negotiate(conn, data: bytes) -> None:
    """An SMB1 NEGOTIATE that offers "SMB 2.002" and/or "SMB 2.???" (MS-SMB2 3.3.5.3.1).
    Answer with an SMB2 NEGOTIATE response: 0x02FF when the client can go on to SMB2
    NEGOTIATE, or 0x0202 when it offers only 2.002."""
    if len(data) < 35 or data[4] != 0x72:
        raise Disconnect("SMB1 request other than NEGOTIATE")
    word_count = data[32]
    pos = 33 + 2 * word_count
    if pos + 2 > len(data):
        raise Disconnect("truncated SMB1 NEGOTIATE")
    byte_count = int.from_bytes(data[pos:pos + 2], "little")
    blob = data[pos + 2:pos + 2 + byte_count]
    names = [n[1:].decode("ascii", "replace") for n in blob.split(b"\0") if n[:1] == b"\x02"]
    if "SMB 2.???" in names:
        dialect = DIALECT_WILDCARD
    elif "SMB 2.002" in names:
        dialect = 0x0202
    else:
        raise Disconnect("SMB1 NEGOTIATE without SMB2 dialects")
    # The SMB1 request used message id 0; grant one credit for the SMB2 NEGOTIATE.
    conn.seq_low, conn.seq_high = 1, 2
    conn.server_security_mode = _security_mode(conn)
    if dialect == 0x0202:
        conn.dialect = 0x0202
        conn.negotiated = True
        conn.max_read = conn.max_write = conn.max_transact = 65536
    conn.server_capabilities = _server_capabilities(0x0210 if dialect == DIALECT_WILDCARD else 0x0202)
    body = _response(conn, dialect, [])
    h = Header(Command.NEGOTIATE, credits=1, flags=Flags.SERVER_TO_REDIR, message_id=0)
    conn.send(h.pack(), body)
