"""SESSION_SETUP and LOGOFF (MS-SMB2 3.3.5.5, 3.3.5.6): SPNEGO/NTLMv2, anonymous and guest
sessions, re-authentication, key derivation and signing set-up."""
from __future__ import annotations

import hashlib
import logging
import os
import struct

from ..wire.header import Command
from ..wire.status import NtStatus, SmbError
from .objects import Channel, Session

log = logging.getLogger("smbd_py.session")

SS_REQ = struct.Struct("<HBBIIHHQ")       # 24 bytes
SS_RESP = struct.Struct("<HHHH")
SESSION_FLAG_BINDING = 0x01
SESSION_FLAG_IS_GUEST = 0x0001
SESSION_FLAG_IS_NULL = 0x0002
SESSION_FLAG_ENCRYPT_DATA = 0x0004
SIGNING_AES_GMAC = 2
# Channels per session: Windows Server 2012 and later allow 32 (Samba the same;
# smbtorture smb2.multichannel.generic.num_channels expects the 33rd to fail).
MAX_CHANNELS = 32


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
    raw = req.raw
    if sb_len and (sb_off < 64 + 24 or sb_off + sb_len > len(raw)):
        raise SmbError(NtStatus.INVALID_PARAMETER)
    token = bytes(raw[sb_off:sb_off + sb_len])
    if flags & SESSION_FLAG_BINDING:
        return _bind_step(req, _start_binding(req), token)
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
            sign_with_foreign_session(req, sid)
            raise SmbError(NtStatus.USER_SESSION_DELETED)
        if sess.state == "valid" and sess.auth is None and conn.dialect == 0x0311:
            # Re-authentication does not touch the keys; the preauth hash is unused.
            pass
    req.session = sess
    signer = sess.signer_for(conn)
    if signer is not None and req.hdr.flags & 0x8:
        req.was_signed = True
        # On a bound channel this is the channel's key (MS-SMB2 3.3.5.2.4): a request
        # signed with the session's first key fails there (smbtorture
        # smb2.session.bind_negative_smb3signCtoH*).
        if not signer.verify(req.raw, message_id=req.hdr.message_id, is_response=False, is_cancel=False):
            raise SmbError(NtStatus.ACCESS_DENIED)
    elif (sess.state == "valid" and sess.signing_required and signer is not None
          and req.encrypted_by is None):
        # Re-authentication of a session that requires signing must be signed.
        raise SmbError(NtStatus.ACCESS_DENIED)
    if sess.state == "deleted":
        raise SmbError(NtStatus.USER_SESSION_DELETED)
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
    sess.dialect = conn.dialect
    sess.cipher_id = conn.cipher_id if conn.dialect >= 0x0300 else 0
    sess.signing_algorithm = connection_signing_algorithm(conn)
    sess.channels[conn] = Channel(conn, sess.signer)
    sess.state = "valid"
    if prev_sid and prev_sid != sess.session_id and not sess.anonymous:
        _close_previous_session(ctx, sess, prev_sid)
    log.info("session %#x: %s logged on from %s", sess.session_id,
             "anonymous" if sess.anonymous else (sess.user + (" (guest)" if sess.guest else "")), conn.peer)
    return _response(_session_flags(sess), out)


def _end_session(conn, sess: Session) -> None:
    """Tear a session down: its opens close and every request naming it fails with
    USER_SESSION_DELETED. It stays in its connections' tables as a tombstone (state
    "deleted") so that those errors are signed with its keys, as Windows and Samba do:
    a client that requires signing believes no unsigned status
    (smbtorture smb2.session.bind_invalid_auth, reauth6)."""
    conn.server.session_gone(sess)
    sess.state = "deleted"
    sess.auth = None
    for c in set(sess.channels):
        bindings = getattr(c, "bindings", {})
        if bindings.get(sess.session_id) is sess:
            del bindings[sess.session_id]
            del sess.channels[c]


def forget_session(sess: Session) -> None:
    """Remove the session from the session table of each of its connections."""
    sid = sess.session_id
    for c in {sess.conn, *sess.channels}:
        if c is None:
            continue
        if c.sessions.get(sid) is sess:
            del c.sessions[sid]
        if getattr(c, "bindings", {}).get(sid) is sess:
            del c.bindings[sid]


def find_global_session(ctx, session_id: int):
    """MS-SMB2 GlobalSessionTable lookup: the session with this id on any connection."""
    for c in list(ctx.connections):
        sess = c.sessions.get(session_id)
        if sess is not None and sess.state == "valid":
            return sess
    return None


def sign_with_foreign_session(req, session_id: int) -> bool:
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


def connection_signing_algorithm(conn) -> int:
    """The signing algorithm of a connection: negotiated on 3.1.1, AES-CMAC on 3.0/3.0.2,
    HMAC-SHA256 on 2.x (MS-SMB2 3.1.4.1)."""
    if conn.dialect == 0x0311:
        return conn.signing_algorithm
    return 1 if conn.dialect >= 0x0300 else 0


def _start_binding(req) -> Channel:
    """SMB2_SESSION_FLAG_BINDING (MS-SMB2 3.3.5.5, step 4): find the session in the
    global table, check that this connection may become one of its channels, and return
    the channel (new, or the one whose binding is in progress here).

    The checks run in the order Windows and Samba (smbd_smb2_session_setup_send) apply
    them, which decides the status when several fail (smbtorture
    smb2.session.bind_negative_*): the signature with the session's key, the 3.1.1
    signing algorithms, the dialect family, the signed flag, the dialect, the cipher, and
    finally whether this connection is already a channel. The ClientGuid is not
    compared: Windows binds connections of another ClientGuid too."""
    from ..wire.header import Flags
    conn = req.conn
    sid = req.hdr.session_id
    if sid == 0:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    sess = conn.sessions.get(sid) or conn.bindings.get(sid) or find_global_session(conn.server, sid)
    if sess is None:
        raise SmbError(NtStatus.USER_SESSION_DELETED)
    signer = sess.signer_for(conn)
    if req.hdr.flags & Flags.SIGNED and signer is not None:
        if not signer.verify(req.raw, message_id=req.hdr.message_id, is_response=False,
                             is_cancel=False):
            raise SmbError(NtStatus.ACCESS_DENIED)
        # Verified: the refusals below are signed with the same key.
        req.session = sess
        req.was_signed = True
    conn_alg = connection_signing_algorithm(conn)
    if sess.signing_algorithm >= SIGNING_AES_GMAC and conn_alg != sess.signing_algorithm:
        raise SmbError(NtStatus.REQUEST_OUT_OF_SEQUENCE)
    if conn_alg >= SIGNING_AES_GMAC and sess.signing_algorithm != conn_alg:
        raise SmbError(NtStatus.NOT_SUPPORTED)
    if conn.dialect < 0x0300:
        # No channels before SMB 3.0.
        raise SmbError(NtStatus.REQUEST_NOT_ACCEPTED)
    if not req.was_signed:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if sess.dialect != conn.dialect or sess.cipher_id != conn.cipher_id:
        raise SmbError(NtStatus.INVALID_PARAMETER)
    if sess.state != "valid":
        raise SmbError(NtStatus.USER_SESSION_DELETED)
    ch = sess.channels.get(conn)
    if ch is not None and conn.bindings.get(sid) is not sess:
        # Already a channel of this session (its first one, or bound before).
        raise SmbError(NtStatus.REQUEST_NOT_ACCEPTED)
    if ch is None:
        if len(sess.channels) >= MAX_CHANNELS:
            raise SmbError(NtStatus.INSUFFICIENT_RESOURCES)
        ch = Channel(conn)
        if conn.dialect == 0x0311:
            # Connection.PreauthSessionTable: the binding's own hash, from this
            # connection's NEGOTIATE on.
            ch.preauth_hash = conn.preauth_hash
        sess.channels[conn] = ch
        conn.bindings[sid] = sess
    if ch.preauth_hash is not None:
        ch.preauth_hash = hashlib.sha512(ch.preauth_hash + bytes(req.raw)).digest()
    return ch


def _drop_binding(conn, sess: Session) -> None:
    if conn.bindings.pop(sess.session_id, None) is not None:
        sess.channels.pop(conn, None)


def _bind_step(req, ch: Channel, token: bytes) -> bytes:
    """One leg of a binding's authentication. It must prove the session's own user; on
    success the channel gets its signing key (3.1.1: derived with the binding's preauth
    hash; MS-SMB2 3.3.5.5.3) and the session becomes usable on this connection."""
    from ..security.spnego import SessionAuth
    from ..security.ntlm import InvalidToken, LogonFailure
    conn = req.conn
    ctx = conn.server
    sess = req.session
    if ch.auth is None:
        ch.auth = SessionAuth(ctx.user_db, server_name=ctx.config.server_name,
                              domain=ctx.config.workgroup, guest_ok=ctx.guest_allowed)
    try:
        more, out, result = ch.auth.step(token)
    except LogonFailure as e:
        _drop_binding(conn, sess)
        raise SmbError(NtStatus.INVALID_PARAMETER if isinstance(e, InvalidToken)
                       else NtStatus.LOGON_FAILURE) from None
    except Exception as e:
        log.info("malformed binding SESSION_SETUP token: %s", e)
        _drop_binding(conn, sess)
        raise SmbError(NtStatus.LOGON_FAILURE) from None
    if more:
        req.status = NtStatus.MORE_PROCESSING_REQUIRED
        return _response(0, out)
    ch.auth = None
    if (result.anonymous or result.guest or sess.anonymous or sess.guest
            or result.user.casefold() != sess.user.casefold()
            or result.domain.casefold() != sess.domain.casefold()):
        # Another user cannot add a channel to this session (Windows and Samba:
        # ACCESS_DENIED; smbtorture smb2.session.bind_different_user).
        _drop_binding(conn, sess)
        raise SmbError(NtStatus.ACCESS_DENIED)
    from ..security.kdf import derive_keys
    from ..security.signing import Signer
    # The channel key comes from this binding's own authentication (its NTLMSSP
    # exported session key), not from the session's first one.
    keys = derive_keys(conn.dialect, result.session_base_key[:16].ljust(16, b"\0"),
                       ch.preauth_hash if conn.dialect == 0x0311 else None, 128)
    # The channel signs with its own connection's algorithm (AES-CMAC session, HMAC-SHA256
    # channel is allowed: smb2.session.bind_negative_smb3signCtoH*).
    ch.signer = Signer(connection_signing_algorithm(conn), keys.signing)
    ch.preauth_hash = None
    conn.bindings.pop(sess.session_id, None)
    conn.sessions[sess.session_id] = sess
    log.info("session %#x bound to a new channel from %s", sess.session_id, conn.peer)
    return _response(_session_flags(sess), out)


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
    for c in sess.channels:
        if c is not conn:
            for r in list(c.async_requests.values()) + list(c.inflight.values()):
                if r.session is sess:
                    r.cancel(NtStatus.CANCELLED)
    conn.server.session_gone(sess)
    forget_session(sess)
    conn.sessions.pop(sess.session_id, None)
    return b"\x04\x00\x00\x00"
