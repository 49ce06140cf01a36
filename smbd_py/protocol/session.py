"""SESSION_SETUP and LOGOFF (MS-SMB2 3.3.5.5, 3.3.5.6): SPNEGO/NTLMv2, anonymous and guest
sessions, re-authentication, key derivation and signing set-up."""
from __future__ import annotations

import hashlib
import logging
import os
import struct

from ..wire.header import Command
from ..wire.status import NtStatus, SmbError
from .objects import Session

log = logging.getLogger("smbd_py.session")

SS_REQ = struct.Struct("<HBBIIHHQ")       # 24 bytes
SS_RESP = struct.Struct("<HHHH")
SESSION_FLAG_BINDING = 0x01
SESSION_FLAG_IS_GUEST = 0x0001
SESSION_FLAG_IS_NULL = 0x0002
SESSION_FLAG_ENCRYPT_DATA = 0x0004


def _new_session_id(conn) -> int:
    while True:
        sid = int.from_bytes(os.urandom(8), "little") & 0x7FFFFFFFFFFFFFFF
        if sid and sid not in conn.sessions:
            return sid


def _response(flags: int, blob: bytes) -> bytes:
    return SS_RESP.pack(9, flags, 64 + 8 if blob else 0, len(blob)) + blob


async def handle_session_setup(req) -> bytes:
    from ..security.spnego import SessionAuth
    from ..security.ntlm import InvalidToken, LogonFailure
    conn = req.conn
    ctx = conn.server
    body = req.body
    if len(body) < SS_REQ.size:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    size, flags, sec_mode, caps, _chan, sb_off, sb_len, prev_sid = SS_REQ.unpack_from(body)
    if size != 25:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if flags & SESSION_FLAG_BINDING:
        _refuse_binding(req)
    raw = req.raw
    if sb_len and (sb_off < 64 + 24 or sb_off + sb_len > len(raw)):
        raise SmbError(NtStatus.INVALID_PARAMETER)
    token = bytes(raw[sb_off:sb_off + sb_len])
    sid = req.hdr.session_id
    if sid == 0:
        sess = Session(_new_session_id(conn), conn)
        conn.sessions[sess.session_id] = sess
        req.hdr.session_id = sess.session_id
        if conn.dialect == 0x0311:
            sess.preauth_hash = conn.preauth_hash
    else:
        sess = conn.sessions.get(sid)
        if sess is None:
            # A session of another connection: the error is signed with its key when the
            # request was (clients check the SIGNED flag before they believe the status).
            _sign_with_foreign_session(req, sid)
            raise SmbError(NtStatus.USER_SESSION_DELETED)
        if sess.state == "valid" and sess.auth is None and conn.dialect == 0x0311:
            # Re-authentication does not touch the keys; the preauth hash is unused.
            pass
    req.session = sess
    if sess.signer is not None and req.hdr.flags & 0x8:
        req.was_signed = True
        if not sess.signer.verify(req.raw, message_id=req.hdr.message_id, is_response=False, is_cancel=False):
            raise SmbError(NtStatus.ACCESS_DENIED)
    if sess.state == "in_progress" and sess.preauth_hash is not None:
        sess.preauth_hash = hashlib.sha512(sess.preauth_hash + bytes(raw)).digest()
    if sess.auth is None:
        sess.auth = SessionAuth(ctx.user_db, server_name=ctx.config.server_name,
                                domain=ctx.config.workgroup, guest_ok=ctx.guest_allowed)
    try:
        more, out, result = sess.auth.step(token)
    except LogonFailure as e:
        sess.auth = None
        if sess.state != "valid":
            conn.sessions.pop(sess.session_id, None)
            req.session = None
        else:
            # A failed re-authentication ends the session (Samba smb2srv_session_shutdown;
            # smbtorture smb2.session.reauth6); req.session stays set so that this error
            # is still signed with its key.
            _end_session(conn, sess)
        # Malformed SPNEGO/NTLMSSP input is INVALID_PARAMETER as in Samba's gensec
        # (smb2.session.ntlmssp_bug14932); bad credentials are LOGON_FAILURE.
        raise SmbError(NtStatus.INVALID_PARAMETER if isinstance(e, InvalidToken)
                       else NtStatus.LOGON_FAILURE)
    except Exception as e:
        log.info("malformed SESSION_SETUP token: %s", e)
        sess.auth = None
        if sess.state != "valid":
            conn.sessions.pop(sess.session_id, None)
            req.session = None
        raise SmbError(NtStatus.LOGON_FAILURE)
    if more:
        req.status = NtStatus.MORE_PROCESSING_REQUIRED
        return _response(0, out)
    sess.auth = None
    reauth = sess.state == "valid"
    if reauth:
        # Re-authentication (MS-SMB2 3.3.5.5.3) replaces the session's identity, also by
        # another user or anonymous (Windows and Samba accept it; smbtorture
        # smb2.session.reauth2-5); the keys of the session stay those of its first logon,
        # and its opens stay usable.
        if result.user.casefold() != sess.user.casefold() or result.anonymous != sess.anonymous:
            log.info("session %#x re-authenticated as %s", sess.session_id,
                     "anonymous" if result.anonymous else result.user)
        sess.user, sess.domain = result.user, result.domain
        sess.anonymous, sess.guest = result.anonymous, result.guest
        return _response(_session_flags(sess), out)
    sess.user, sess.domain = result.user, result.domain
    sess.anonymous, sess.guest = result.anonymous, result.guest
    if not (sess.anonymous or sess.guest):
        _setup_keys(conn, sess, result.session_base_key, sec_mode)
    sess.state = "valid"
    if prev_sid and prev_sid != sess.session_id and not sess.anonymous:
        _close_previous_session(ctx, sess, prev_sid)
    log.info("session %#x: %s logged on from %s", sess.session_id,
             "anonymous" if sess.anonymous else (sess.user + (" (guest)" if sess.guest else "")), conn.peer)
    return _response(_session_flags(sess), out)


def _end_session(conn, sess: Session) -> None:
    """Tear a session down: its opens close, its id is unknown from now on."""
    conn.server.session_gone(sess)
    if sess.conn is not None:
        sess.conn.sessions.pop(sess.session_id, None)
    conn.sessions.pop(sess.session_id, None)


def find_global_session(ctx, session_id: int):
    """MS-SMB2 GlobalSessionTable lookup: the session with this id on any connection."""
    for c in list(ctx.connections):
        sess = c.sessions.get(session_id)
        if sess is not None and sess.state == "valid":
            return sess
    return None


def _sign_with_foreign_session(req, session_id: int) -> bool:
    """If the request is signed by a valid session of another connection, make the error
    response signed by that session too (its key and algorithm: Samba and Windows do
    so, and a client that requires signing reports ACCESS_DENIED for anything else)."""
    from ..wire.header import Flags
    if not req.hdr.flags & Flags.SIGNED:
        return False
    sess = find_global_session(req.conn.server, session_id)
    if sess is None or sess.signer is None:
        return False
    if not sess.signer.verify(req.raw, message_id=req.hdr.message_id, is_response=False,
                              is_cancel=False):
        raise SmbError(NtStatus.ACCESS_DENIED)
    req.session = sess
    req.was_signed = True
    return True


def _close_previous_session(ctx, sess: Session, prev_sid: int) -> None:
    """MS-SMB2 3.3.5.5.3: PreviousSessionId names the session this client had before a
    reconnect; when it belongs to the same user it is torn down with its opens (they
    will not come back on that session: smbtorture smb2.session.reconnect1/2)."""
    for c in list(ctx.connections):
        old = c.sessions.get(prev_sid)
        if old is None or old is sess:
            continue
        if old.state == "valid" and old.user.casefold() != sess.user.casefold():
            continue
        log.info("session %#x replaces previous session %#x", sess.session_id, prev_sid)
        _end_session(c, old)


def _refuse_binding(req) -> None:
    """SMB2_SESSION_FLAG_BINDING: this server is not multichannel capable, so a bind is
    refused as Windows and Samba without multichannel refuse it (MS-SMB2 3.3.5.5:
    STATUS_REQUEST_NOT_ACCEPTED), after the global session lookup that decides the
    status of an unknown session and the key that signs the refusal."""
    sid = req.hdr.session_id
    if sid == 0:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if req.conn.sessions.get(sid) is None and find_global_session(req.conn.server, sid) is None:
        raise SmbError(NtStatus.USER_SESSION_DELETED)
    local = req.conn.sessions.get(sid)
    if local is not None and local.state == "valid" and local.signer is not None:
        req.session = local
        req.was_signed = bool(req.hdr.flags & 0x8)
    else:
        _sign_with_foreign_session(req, sid)
    raise SmbError(NtStatus.REQUEST_NOT_ACCEPTED)


def _session_flags(sess: Session) -> int:
    if sess.anonymous:
        return SESSION_FLAG_IS_NULL
    if sess.guest:
        return SESSION_FLAG_IS_GUEST
    return SESSION_FLAG_ENCRYPT_DATA if sess.encrypt_data else 0


def _setup_keys(conn, sess: Session, session_key: bytes, client_sec_mode: int) -> None:
    from ..security.kdf import derive_keys
    from ..security.signing import Signer
    from ..security.encryption import Decryptor, Encryptor, cipher_key_bits
    key = session_key[:16].ljust(16, b"\0")
    sess.session_key = key
    cipher = conn.cipher_id if conn.dialect >= 0x0300 else 0
    # AES-256 ciphers derive 256-bit encryption keys (MS-SMB2 3.3.5.5.3); NTLM's session
    # key is 16 bytes, so the "full session key" is the same key.
    keys = derive_keys(conn.dialect, key, sess.preauth_hash if conn.dialect == 0x0311 else None,
                       cipher_key_bits(cipher) if cipher else 128)
    sess.application_key = keys.application
    sess.encrypt_key = keys.encryption_server_out
    sess.decrypt_key = keys.decryption_server_in
    if cipher:
        sess.encryptor = Encryptor(cipher, keys.encryption_server_out)
        sess.decryptor = Decryptor(cipher, keys.decryption_server_in)
    if conn.dialect >= 0x0300:
        alg = conn.signing_algorithm if conn.dialect == 0x0311 else 1
    else:
        alg = 0
    sess.signer = Signer(alg, keys.signing)
    sess.signing_required = bool(conn.server.config.signing_required or client_sec_mode & 0x02)


async def handle_logoff(req) -> bytes:
    sess = req.session
    conn = req.conn
    for r in list(conn.async_requests.values()) + list(conn.inflight.values()):
        if r is not req and r.session is sess:
            r.cancel(NtStatus.CANCELLED)
    conn.server.session_gone(sess)
    conn.sessions.pop(sess.session_id, None)
    return b"\x04\x00\x00\x00"
