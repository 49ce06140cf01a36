"""One client connection: framing results in, compound splitting, credits, sessions,
signing checks, async (interim) responses, CANCEL, and response assembly out.

Command bodies are handled in the sibling modules registered in dispatch.HANDLERS.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
from typing import Any

from ..wire.header import (Command, Flags, Header, HEADER_SIZE, PROTOCOL_ID, SMB1_PROTOCOL_ID,
                           TRANSFORM_PROTOCOL_ID, FRAME, SIGNATURE_OFFSET,
                           UNSOLICITED_MESSAGE_ID)
from ..wire.status import NtStatus, SmbError
from .request import Request

log = logging.getLogger("smbd_py.connection")

ERROR_BODY = b"\x09\x00\x00\x00\x00\x00\x00\x00\x00"
NO_SESSION_COMMANDS = frozenset({Command.NEGOTIATE, Command.SESSION_SETUP, Command.ECHO,
                                 Command.CANCEL})
NO_TREE_COMMANDS = NO_SESSION_COMMANDS | {Command.LOGOFF, Command.TREE_CONNECT}
ZERO_SIGNATURE = b"\0" * 16
# The direct-TCP frame header (0, 24-bit big-endian length) and the SMB2 header in one
# struct: one pack per response.
_FRAMED_HEADER = struct.Struct("<xBBB4sHHIHHIIQIIQ16s")
# Responses up to this size are joined with their header into one buffer for the socket.
_JOIN_MAX = 4096
# Signed requests at least this large (a WRITE's payload) are verified in the I/O pool,
# off the event loop, which meanwhile receives the next frame: ~0.4 ms per 8 MiB for
# AES-GMAC (the pool trip pays off from ~1 MiB), ~6 ms for AES-CMAC and HMAC-SHA256
# (from ~64 KiB). The request waits for its verdict before anything acts on it.
_VERIFY_IN_POOL_GMAC = 1 << 20
_VERIFY_IN_POOL = 64 << 10
_AES_GMAC = 2
class _Started:
    """Awaitable over a coroutine that has already run up to its first suspension
    (it yielded `first`, a future or None): a Task driving this carries on where the
    coroutine stopped, passing results and exceptions (CancelledError) through."""
    __slots__ = ("coro", "first")

    def __init__(self, coro, first) -> None:
        self.coro = coro
        self.first = first

    def __await__(self):
        coro, yielded = self.coro, self.first
        self.first = None
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as e:
                try:
                    yielded = coro.throw(e)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _resume(started: _Started):
    return await started


# Plain ints on the per-request paths: IntFlag arithmetic builds enum members (slow).
_SERVER_TO_REDIR = int(Flags.SERVER_TO_REDIR)
_RELATED_OPERATIONS = int(Flags.RELATED_OPERATIONS)
_SIGNED = int(Flags.SIGNED)
_ASYNC_COMMAND = int(Flags.ASYNC_COMMAND)
_ECHO_FLAGS = int(Flags.RELATED_OPERATIONS | Flags.PRIORITY_MASK)
_OPLOCK_BREAK = int(Command.OPLOCK_BREAK)
_CANCEL = int(Command.CANCEL)
_NEGOTIATE = int(Command.NEGOTIATE)
_SESSION_SETUP = int(Command.SESSION_SETUP)


_HANDLERS: dict = {}


def _load_handlers() -> dict:
    # The command modules import this one, so the table is bound on first use rather
    # than at import time; after that the per-request cost is one global lookup.
    from .dispatch import HANDLERS
    _HANDLERS.update(HANDLERS)
    return _HANDLERS


def _verify_request(signer: Any, raw: Any, message_id: int, is_cancel: bool) -> bool:
    """A request's signature check, run in the I/O pool (the crypto releases the GIL)."""
    return signer.verify(raw, message_id=message_id, is_response=False, is_cancel=is_cancel)


class Disconnect(Exception):
    """The request breaks the protocol badly enough that the connection must be dropped."""


def _request_header(mv: memoryview, offset: int) -> Header:
    """The SMB2 header of a request at `offset`; anything else drops the connection."""
    try:
        hdr = Header.parse(mv, offset)
    except ValueError as e:
        raise Disconnect(str(e)) from e
    if hdr.flags & _SERVER_TO_REDIR:
        raise Disconnect("response flag on a request")
    return hdr


class Connection:
    def __init__(self, server: Any, transport: Any, peer: Any = None) -> None:
        self.server = server
        self.transport = transport
        self.peer = peer
        self.closed = False
        self.dialect = 0
        self.negotiated = False
        self.client_guid = b"\0" * 16
        self.client_capabilities = 0
        self.client_security_mode = 0
        self.client_dialects: list[int] = []
        self.server_capabilities = 0
        self.server_security_mode = 0
        self.preauth_hash: bytes | None = None
        self.signing_algorithm = 0        # 0 HMAC-SHA256, 1 AES-CMAC, 2 AES-GMAC
        self.cipher_id = 0                # 0: none negotiated
        self.max_transact = 8 << 20
        self.max_read = 8 << 20
        self.max_write = 8 << 20
        self.sessions: dict[int, Any] = {}
        # Sessions of other connections this one is being bound to (multichannel binding
        # in progress, MS-SMB2 3.3.5.5.2); they join `sessions` when the binding succeeds.
        self.bindings: dict[int, Any] = {}
        # Credits: the client may use message ids in [seq_low, seq_high) not in seq_used.
        self.seq_low = 0
        self.seq_high = 1
        self.seq_used: set[int] = set()
        self.async_requests: dict[int, Request] = {}
        self.inflight: dict[int, Request] = {}
        self.next_async_id = 1
        self.tasks: set[asyncio.Task] = set()

    # ---- transport side -------------------------------------------------------------
    def frame_received(self, data: bytes) -> None:
        # The frame is handled at once, inside this transport callback: most requests
        # (CREATE, CLOSE, QUERY_INFO, ...) finish without waiting, and then cost no Task
        # and no extra loop iteration. One that waits goes on in a Task from there.
        coro = self._handle_frame(data)
        try:
            yielded = coro.send(None)
        except StopIteration:
            return
        task = asyncio.ensure_future(_resume(_Started(coro, yielded)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def connection_lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        for req in list(self.async_requests.values()) + list(self.inflight.values()):
            req.cancel(NtStatus.CANCELLED)
        for sess in list(self.bindings.values()):
            sess.channels.pop(self, None)
        self.bindings.clear()
        for sess in list(self.sessions.values()):
            sess.channels.pop(self, None)
            # A session bound to other connections lives on while one of them does
            # (MS-SMB2 3.3.7.1; smbtorture smb2.session.bind2).
            others = [c for c in sess.channels if not c.closed and c.sessions.get(sess.session_id) is sess]
            if others and sess.state == "valid":
                if sess.conn is self:
                    sess.conn = others[0]
                for op in list(sess.opens.values()):
                    if op.conn is self:
                        op.conn = sess.conn
                continue
            self.server.session_gone(sess)
        self.sessions.clear()
        self.server.connection_gone(self)

    def disconnect(self) -> None:
        if not self.closed:
            try:
                self.transport.close()
            finally:
                self.connection_lost()

    def send(self, *parts: bytes) -> None:
        if self.closed:
            return
        size = sum(len(p) for p in parts)
        self.transport.writelines((FRAME.pack(size),) + parts)

    # ---- frames -----------------------------------------------------------------------
    async def _handle_frame(self, data: bytes) -> None:
        try:
            magic = data[:4]
            if magic == PROTOCOL_ID:
                await self._handle_compound(data)
            elif magic == SMB1_PROTOCOL_ID and not self.negotiated:
                from .negotiate import handle_smb1_negotiate
                handle_smb1_negotiate(self, data)
            elif magic == TRANSFORM_PROTOCOL_ID and self.negotiated:
                await self._handle_transform(data)
            else:
                raise Disconnect("unknown protocol id")
        except Disconnect as e:
            log.info("dropping connection %s: %s", self.peer, e)
            self.disconnect()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal error on connection %s; dropping it", self.peer)
            self.disconnect()

    async def _handle_transform(self, data: bytes) -> None:
        """MS-SMB2 3.3.5.2.1.1: pick the session by the transform's SessionId, decrypt
        with its key; anything wrong drops the connection."""
        from ..security import encryption
        try:
            session_id = encryption.transform_session_id(data)
        except encryption.DecryptError as e:
            raise Disconnect(f"bad transform header: {e}") from e
        sess = self.sessions.get(session_id)
        if sess is None or sess.decryptor is None:
            raise Disconnect(f"transform for unknown session {session_id:#x}")
        try:
            _sid, plain = sess.decryptor.decrypt(data)
        except encryption.DecryptError as e:
            raise Disconnect(f"undecryptable transform: {e}") from e
        if plain[:4] != PROTOCOL_ID or len(plain) < HEADER_SIZE:
            raise Disconnect("transform payload is not SMB2")
        await self._handle_compound(plain, encrypted_session=sess)

    def _seal(self, req: Request, message: Any) -> Any:
        """Encrypt a response (or compound) when its request came encrypted (3.3.4.1.4)."""
        sess = req.encrypted_by
        if sess is None or sess.encryptor is None:
            return message
        return sess.encryptor.encrypt(sess.session_id, message)

    async def _handle_compound(self, data: bytes, encrypted_session: Any = None) -> None:
        mv = memoryview(data)
        hdr = _request_header(mv, 0)
        if not hdr.next_command:
            # One request in the frame, nearly all traffic: no chain bookkeeping (the
            # Request's class defaults say "alone in its frame").
            req = Request(self, hdr, mv[HEADER_SIZE:], mv)
            if hdr.flags & _RELATED_OPERATIONS:
                req.related = True
            if encrypted_session is not None:
                req.encrypted_by = encrypted_session
            body = await self._process(req, None, True)
            try:
                if body is not None:
                    self._send_single(req, body)
            finally:
                if req.after_send is not None:
                    req.after_send()
            return
        offset = 0
        responses: list[tuple[Request, bytes, Any]] = []
        prev: Request | None = None
        total = len(data)
        while True:
            if offset:
                hdr = _request_header(mv, offset)
            if hdr.next_command:
                if hdr.next_command % 8 or hdr.next_command < HEADER_SIZE or offset + hdr.next_command > total:
                    raise Disconnect("bad NextCommand")
                end = offset + hdr.next_command
            else:
                end = total
            req = Request(self, hdr, mv[offset + HEADER_SIZE:end], mv[offset:end])
            req.in_compound = True
            req.last_in_chain = not hdr.next_command
            req.chain_responses = responses
            req.related = bool(hdr.flags & _RELATED_OPERATIONS)
            req.encrypted_by = encrypted_session
            body = await self._process(req, prev, first=(offset == 0))
            if body is not None:
                if req.interim_sent:
                    # Went async: its final response travels on its own.
                    self._send_responses([(req, body)])
                else:
                    responses.append((req, body))
            prev = req
            if not hdr.next_command:
                break
            offset = end
        if responses:
            self._send_responses(responses)
            # Each request refers to this list (chain_responses) and the list to the
            # requests: clearing it breaks the cycle, so the frame's memory (a WRITE's
            # reusable buffer, see bufpool) is released now rather than at the next GC.
            responses.clear()
        # (after_send is never set in a compound: later requests must see the work done.)

    # ---- one request ------------------------------------------------------------------
    async def _process(self, req: Request, prev: Request | None, first: bool) -> bytes | None:
        hdr = req.hdr
        cmd = hdr.command
        if cmd == _CANCEL:
            self._cancel(req)
            return None
        self._consume_credits(hdr)
        if req.related and first:
            # MS-SMB2 3.3.5.2.7.2: the first request of a chain cannot be related.
            return self._error(req, NtStatus.INVALID_PARAMETER)
        if not self.negotiated and cmd != _NEGOTIATE:
            raise Disconnect("request before NEGOTIATE")
        if req.related and prev is not None:
            if (prev.session is None and cmd not in NO_SESSION_COMMANDS
                    and prev.hdr.command not in NO_SESSION_COMMANDS):
                # The previous request found no session: a related request has none to
                # inherit (MS-SMB2 3.3.5.2.7.2; Windows and Samba answer
                # INVALID_PARAMETER, smbtorture smb2.compound.invalid2).
                return self._error(req, NtStatus.INVALID_PARAMETER)
            if hdr.session_id == 0xFFFFFFFFFFFFFFFF:
                hdr.session_id = prev.hdr.session_id
            if hdr.tree_id == 0xFFFFFFFF:
                hdr.tree_id = prev.hdr.tree_id
        try:
            handler = (_HANDLERS or _load_handlers()).get(cmd)
            if handler is None:
                raise SmbError(NtStatus.INVALID_PARAMETER)
            if cmd not in NO_SESSION_COMMANDS:
                signer = self._check_session(req)
                if signer is not None:
                    if not await self.server.run_io(_verify_request, signer, req.raw,
                                                    hdr.message_id, False):
                        raise SmbError(NtStatus.ACCESS_DENIED)
            elif hdr.session_id and cmd != _SESSION_SETUP:
                sess = self.sessions.get(hdr.session_id)
                if sess is not None and sess.state == "valid":
                    req.session = sess
                    self._check_signature(req)
            if cmd not in NO_TREE_COMMANDS:
                tree = req.session.trees.get(hdr.tree_id)
                if tree is None:
                    raise SmbError(NtStatus.NETWORK_NAME_DELETED)
                req.tree = tree
            if req.related and prev is not None:
                req.out_file_id = prev.out_file_id
                req.prev_status = prev.status
            faults = self.server.faults
            if faults is not None:
                # Injected faults (protocol.faults, driven by smbd_py.testing): the
                # wrapper fails the request, or delays or drops its response.
                handler = faults.wrap(req, handler)
            self.inflight[hdr.message_id] = req
            try:
                body = await handler(req)
            finally:
                self.inflight.pop(hdr.message_id, None)
                if req.async_id:
                    self.async_requests.pop(req.async_id, None)
            return body
        except SmbError as e:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s -> %s", Command(cmd).name if cmd in Command._value2member_map_ else cmd,
                          e, exc_info=True)
            return self._error(req, e.status, e.data)
        except OSError as e:
            # A file-system error no handler turned into a status (an EOF past the largest
            # file, ...): the request fails with the errno's status, the connection lives.
            from ..fs.paths import errno_to_status
            log.warning("%s on connection %s: %s", Command(cmd).name if cmd in
                        Command._value2member_map_ else cmd, self.peer, e)
            log.debug("where", exc_info=True)
            return self._error(req, errno_to_status(e.errno))

    def _error(self, req: Request, status: int, data: bytes = b"") -> bytes:
        req.status = status
        if data:
            return b"\x09\x00\x00\x00" + len(data).to_bytes(4, "little") + data
        return ERROR_BODY

    def _check_session(self, req: Request) -> Any:
        """Resolve and check the request's session. Returns a signer when a large signed
        request's signature is still to be verified (in the I/O pool, see _process)."""
        sess = self.sessions.get(req.hdr.session_id)
        if (sess is not None and sess.state == "valid" and not req.hdr.flags & _SIGNED
                and not sess.signing_required and not sess.encrypt_data
                and req.encrypted_by is None):
            # Unsigned plain traffic of a session that asks for neither: nothing of
            # _check_signature applies (req.was_signed stays False).
            req.session = sess
            return None
        if sess is None:
            if req.hdr.flags & Flags.SIGNED and req.encrypted_by is None:
                # A session of this client not bound to this connection: the error
                # carries the SIGNED flag (signed with the session's key, as Windows and
                # Samba do); clients that require signing insist on the flag even for
                # USER_SESSION_DELETED (smbtorture smb2.session.bind2).
                from .session import sign_with_foreign_session
                sign_with_foreign_session(req, req.hdr.session_id)
            raise SmbError(NtStatus.USER_SESSION_DELETED)
        if sess.state != "valid":
            if sess.state == "deleted":
                # A tombstone (protocol.session._end_session): signed like the session.
                req.session = sess
                self._check_signature(req)
                raise SmbError(NtStatus.USER_SESSION_DELETED)
            if sess.state == "expired":
                raise SmbError(NtStatus.NETWORK_SESSION_EXPIRED)
            raise SmbError(NtStatus.USER_SESSION_DELETED)
        req.session = sess
        return self._check_signature(req, defer_large=True)

    def _check_signature(self, req: Request, defer_large: bool = False) -> Any:
        """Check the signing rules for req; a bad signature raises ACCESS_DENIED. With
        defer_large, a large signed request is not verified here: its signer is
        returned for the caller to verify off the loop (None otherwise)."""
        sess = req.session
        if req.encrypted_by is not None:
            # An encrypted message is authenticated by its AEAD tag, not signed (3.3.5.2.4).
            return
        if sess.encrypt_data and req.hdr.command not in (Command.NEGOTIATE, Command.SESSION_SETUP):
            # MS-SMB2 3.3.5.2.9: a session that requires encryption refuses plain requests.
            raise SmbError(NtStatus.ACCESS_DENIED)
        signed = bool(req.hdr.flags & _SIGNED)
        req.was_signed = signed
        if not signed:
            # The key is looked up only when it matters (most traffic is unsigned).
            if (sess.signing_required and req.hdr.command != Command.OPLOCK_BREAK
                    and sess.signer_for(self) is not None):
                raise SmbError(NtStatus.ACCESS_DENIED)
            return None
        signer = sess.signer_for(self)
        if signer is None:
            return None
        if defer_large and len(req.raw) >= (_VERIFY_IN_POOL_GMAC if signer.algorithm == _AES_GMAC
                                             else _VERIFY_IN_POOL):
            return signer
        if not signer.verify(req.raw, message_id=req.hdr.message_id, is_response=False,
                             is_cancel=req.hdr.command == Command.CANCEL):
            raise SmbError(NtStatus.ACCESS_DENIED)
        return None

    # ---- credits ----------------------------------------------------------------------
    def _consume_credits(self, hdr: Header) -> None:
        charge = hdr.credit_charge or 1
        mid = hdr.message_id
        if mid == self.seq_low and charge == 1 and not self.seq_used and mid < self.seq_high:
            self.seq_low = mid + 1        # the usual case: the lowest id, nothing out of order
            return
        if mid < self.seq_low or mid + charge > self.seq_high:
            raise Disconnect(f"message id {mid} outside the credit window "
                             f"[{self.seq_low}, {self.seq_high})")
        used = self.seq_used
        for m in range(mid, mid + charge):
            if m in used:
                raise Disconnect(f"message id {m} reused")
            used.add(m)
        while self.seq_low in used:
            used.discard(self.seq_low)
            self.seq_low += 1

    def _grant_credits(self, hdr: Header) -> int:
        want = hdr.credits or 1
        outstanding = self.seq_high - self.seq_low - len(self.seq_used)
        room = self.server.config.max_credits - outstanding
        if want <= room:
            granted = want               # the usual case (no min/max calls per response)
        elif room > 0:
            granted = room
        else:
            granted = 0 if outstanding > 0 else 1
        self.seq_high += granted
        return granted

    # ---- async and cancel -------------------------------------------------------------
    def send_interim(self, req: Request) -> None:
        pending = req.chain_responses
        if pending:
            # The chain's end may be far away (a CHANGE_NOTIFY last in a compound): the
            # responses of the requests before this one go out now, ahead of its interim.
            items = list(pending)
            pending.clear()
            self._send_responses(items)
        aid = self.next_async_id
        self.next_async_id += 1
        req.async_id = aid
        req.interim_sent = True
        self.async_requests[aid] = req
        h = Header(req.hdr.command, credit_charge=req.hdr.credit_charge, status=NtStatus.PENDING,
                   credits=self._grant_credits(req.hdr),
                   flags=Flags.SERVER_TO_REDIR | Flags.ASYNC_COMMAND | (req.hdr.flags & Flags.RELATED_OPERATIONS),
                   message_id=req.hdr.message_id, async_id=aid, session_id=req.hdr.session_id)
        req.credits_granted = h.credits
        if req.encrypted_by is not None:
            self.send(self._seal(req, h.pack() + ERROR_BODY))
            return
        self.send(h.pack(), ERROR_BODY)

    def _cancel(self, req: Request) -> None:
        hdr = req.hdr
        if hdr.flags & Flags.ASYNC_COMMAND:
            target = self.async_requests.get(hdr.async_id)
        else:
            target = self.inflight.get(hdr.message_id)
        if target is not None and target.session is not None and hdr.session_id not in (0, target.hdr.session_id):
            return
        if target is not None:
            target.cancel(NtStatus.CANCELLED)

    # ---- responses --------------------------------------------------------------------
    def _build_header(self, req: Request) -> Header:
        hdr = req.hdr
        flags = _SERVER_TO_REDIR | (hdr.flags & _ECHO_FLAGS)
        if req.interim_sent:
            flags |= _ASYNC_COMMAND
            credits = 0
        else:
            credits = self._grant_credits(hdr)
        return Header(hdr.command, credit_charge=hdr.credit_charge, status=req.status,
                      credits=credits, flags=flags, message_id=hdr.message_id,
                      async_id=req.async_id, tree_id=hdr.tree_id, session_id=hdr.session_id)

    def _signer_for(self, req: Request) -> Any:
        if req.unsigned_response or req.encrypted_by is not None:
            return None
        sess = req.session
        if sess is None:
            return None
        if req.was_signed or sess.signing_required or req.hdr.command == _SESSION_SETUP:
            return sess.signer_for(self)
        return None

    def _send_responses(self, items: list[tuple[Request, bytes]]) -> None:
        n = len(items)
        if n == 1 and not items[0][0].in_compound:
            req, body = items[0]
            self._send_single(req, body)
            return
        out = bytearray()
        for i, (req, body) in enumerate(items):
            start = len(out)
            h = self._build_header(req)
            out += h.pack()
            if isinstance(body, tuple):   # READ's (fixed part, payload) form
                for piece in body:
                    out += piece
            else:
                out += body
            # Every response of a compound is padded to 8 bytes, the last one too (as
            # Windows does; smbtorture smb2.compound.compound-padding): a lone response
            # is not (n == 1 also covers a compound member answered on its own).
            if n > 1:
                out += b"\0" * ((-len(out)) % 8)
            if i + 1 < n:
                h.next_command = len(out) - start
                h.pack_into(out, start)
            signer = self._signer_for(req)
            if signer is not None:
                out[start + 16] |= Flags.SIGNED   # Flags is at offset 16 of the header
                # A copy, not a memoryview: an export left alive would stop `out` from
                # growing for the next response of the compound (BufferError).
                end = start + h.next_command if i + 1 < n else len(out)
                sig = signer.sign(bytes(out[start:end]), message_id=h.message_id,
                                  is_response=True, is_cancel=False)
                out[start + SIGNATURE_OFFSET:start + SIGNATURE_OFFSET + 16] = sig
            self._after_response(req, out, start)
        self.send(self._seal(items[0][0], bytes(out)))

    def _send_single(self, req: Request, body: Any) -> None:
        hdr = req.hdr
        cmd = hdr.command
        if req.encrypted_by is None and (cmd > 1 or self.dialect != 0x0311):
            # The common case, packed in one go: NetBIOS length and SMB2 header from one
            # struct, no Header object (NEGOTIATE/SESSION_SETUP of 3.1.1 feed the preauth
            # hash and encrypted responses are sealed whole: both take the general path).
            flags = _SERVER_TO_REDIR | (hdr.flags & _ECHO_FLAGS)
            if req.interim_sent:
                flags |= _ASYNC_COMMAND
                credits = 0
                aid = req.async_id
                low, high = aid & 0xFFFFFFFF, aid >> 32
            else:
                credits = self._grant_credits(hdr)
                low, high = 0, hdr.tree_id
            signer = self._signer_for(req)
            parts = body if body.__class__ is tuple else None
            size = HEADER_SIZE + (sum(map(len, parts)) if parts is not None else len(body))
            if signer is not None:
                flags |= _SIGNED
            head = _FRAMED_HEADER.pack(
                size >> 16, (size >> 8) & 0xFF, size & 0xFF, PROTOCOL_ID, HEADER_SIZE,
                hdr.credit_charge, req.status, cmd, credits, flags, 0, hdr.message_id,
                low, high, hdr.session_id, ZERO_SIGNATURE)
            if signer is not None:
                head = bytearray(head)
                head[4 + SIGNATURE_OFFSET:4 + SIGNATURE_OFFSET + 16] = signer.sign_parts(
                    memoryview(head)[4:], parts if parts is not None else (body,),
                    message_id=hdr.message_id, is_response=True, is_cancel=False)
            if self.closed:
                return
            if parts is not None:
                self.transport.writelines((head, *parts))
            elif size <= _JOIN_MAX:
                self.transport.write(head + body)     # one small buffer for the socket
            else:
                self.transport.writelines((head, body))
            return
        h = self._build_header(req)
        signer = self._signer_for(req)
        # (fixed part, payload): large READ payloads are neither copied nor joined; they
        # are signed where they lie and written with the header in one writelines().
        parts = body if isinstance(body, tuple) else (body,)
        if signer is not None:   # never for an encrypted request (see _signer_for)
            h.flags |= Flags.SIGNED
            hb = bytearray(HEADER_SIZE)
            h.pack_into(hb)
            hb[SIGNATURE_OFFSET:SIGNATURE_OFFSET + 16] = signer.sign_parts(
                hb, parts, message_id=h.message_id, is_response=True, is_cancel=False)
        else:
            hb = h.pack()
        if self.dialect == 0x0311 and req.hdr.command in (Command.NEGOTIATE, Command.SESSION_SETUP):
            self._after_response(req, b"".join((hb, *map(bytes, parts))), 0)
        if req.encrypted_by is not None:
            self.send(self._seal(req, b"".join((hb, *map(bytes, parts)))))
            return
        self.send(hb, *parts)

    def _after_response(self, req: Request, buf: Any, start: int) -> None:
        """Preauth integrity (3.1.1) hashes NEGOTIATE and SESSION_SETUP responses."""
        if self.dialect != 0x0311:
            return
        cmd = req.hdr.command
        if cmd == Command.NEGOTIATE and req.status == NtStatus.SUCCESS:
            self.preauth_hash = hashlib.sha512(self.preauth_hash + bytes(buf[start:])).digest()
        elif cmd == Command.SESSION_SETUP and req.status == NtStatus.MORE_PROCESSING_REQUIRED:
            sess = req.session
            if sess is None:
                return
            ch = sess.channels.get(self)
            if ch is not None and ch.preauth_hash is not None:
                # A binding in progress hashes into its channel's own value.
                ch.preauth_hash = hashlib.sha512(ch.preauth_hash + bytes(buf[start:])).digest()
            elif sess.preauth_hash is not None:
                sess.preauth_hash = hashlib.sha512(sess.preauth_hash + bytes(buf[start:])).digest()

    # ---- unsolicited --------------------------------------------------------------------
    def send_oplock_break(self, body: bytes, session_id: int = 0) -> None:
        # On the kernel-lease break path (a local open waits for this): one pack, one write.
        if self.closed:
            return
        size = HEADER_SIZE + len(body)
        self.transport.write(_FRAMED_HEADER.pack(
            size >> 16, (size >> 8) & 0xFF, size & 0xFF, PROTOCOL_ID, HEADER_SIZE, 0, 0,
            _OPLOCK_BREAK, 0, _SERVER_TO_REDIR, 0, UNSOLICITED_MESSAGE_ID, 0, 0, session_id,
            ZERO_SIGNATURE) + body)
