"""The connection: one TCP stream, a reader task, credits, message ids, pending requests,
break notifications, and the SMB2 commands as coroutines.

Owns transport and per-connection state; encodings live in wire.py, keys and signatures in
auth.py.
"""
from __future__ import annotations

import asyncio
import os
import struct
import uuid
from collections.abc import Iterable
from typing import Any, Callable

from . import auth
from . import wire
from .wire import (Cap, Command, CreateResponse, Dialect, Flags, Header, LeaseBreak,
                   OplockBreak, Smb2Error, STATUS_MORE_PROCESSING_REQUIRED, STATUS_PENDING,
                   STATUS_SUCCESS)

OK = STATUS_SUCCESS
DEFAULT_TIMEOUT = 45.0  # above Samba's 30 s break timeout, below "forever"
NETBIOS = struct.Struct(">I")
MAX_MESSAGE = 16 * 1024 * 1024


class Smb2SignatureError(Exception):
    """A signed response whose signature does not verify."""


class Response:
    """One received SMB2 message (header parsed, raw bytes kept)."""

    __slots__ = ("header", "raw")

    def __init__(self, header: Header, raw: bytes):
        self.header = header
        self.raw = raw

    status = property(lambda self: self.header.status)
    command = property(lambda self: self.header.command)
    message_id = property(lambda self: self.header.message_id)
    async_id = property(lambda self: self.header.async_id)
    session_id = property(lambda self: self.header.session_id)
    body = property(lambda self: self.raw[wire.HEADER_SIZE:])

    @property
    def is_interim(self) -> bool:
        return bool(self.header.flags & Flags.ASYNC_COMMAND) and self.status == STATUS_PENDING

    def __repr__(self):
        return (f"<Response {Command(self.command).name} mid={self.message_id} "
                f"{wire.status_name(self.status)}>")


def _expected(status: int, expect) -> bool:
    if expect is None:
        return True
    if isinstance(expect, int):
        return status == expect
    return status in expect


class PendingRequest:
    """A request on the wire. `interim` resolves with the STATUS_PENDING interim response
    (or None when the final response came without one); `final` with the final Response.
    `await p` returns the parsed result (what the blocking method would have returned)."""

    def __init__(self, client: "Smb2Client", command: int, message_id: int,
                 parse: Callable[[Response], Any] | None, error_value: Callable[[Response], Any]
                 | None, tree_id: int = 0):
        loop = asyncio.get_running_loop()
        self.client = client
        self.command = command
        self.message_id = message_id
        self.tree_id = tree_id
        self.async_id: int | None = None
        self.interim: asyncio.Future = loop.create_future()
        self.final: asyncio.Future = loop.create_future()
        self._parse = parse
        self._error_value = error_value
        self.request_bytes = b""
        self.expect = OK  # what `await p` checks; request(..., expect=) sets it

    @property
    def went_async(self) -> bool:
        return self.async_id is not None

    async def response(self, timeout: float | None = None) -> Response:
        return await asyncio.wait_for(asyncio.shield(self.final),
                                      timeout or self.client.timeout)

    async def result(self, expect=..., timeout: float | None = None):
        resp = await self.response(timeout)
        if expect is ...:
            expect = self.expect
        if not _expected(resp.status, expect):
            raise Smb2Error(resp.status, resp.command)
        if self._parse is None:
            return resp
        if resp.status != STATUS_SUCCESS:
            return self._error_value(resp) if self._error_value else resp.status
        out = self._parse(resp)
        if isinstance(out, CreateResponse):
            out.interim_seen = self.went_async
        return out

    def __await__(self):
        return self.result().__await__()

    def _resolve(self, resp: Response):
        if not self.interim.done():
            self.interim.set_result(None)
        if not self.final.done():
            self.final.set_result(resp)

    def _fail(self, exc: BaseException):
        for f in (self.interim, self.final):
            if not f.done():
                f.set_exception(exc)
                f.exception()  # mark retrieved: tests often await only one of them


class Smb2Client:
    """A break-aware SMB2/3 client over one TCP connection. See the package docstring."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 timeout: float = DEFAULT_TIMEOUT, verify_signatures: bool = True):
        self._reader = reader
        self._writer = writer
        self.timeout = timeout
        self.verify_signatures = verify_signatures
        self.breaks: asyncio.Queue[OplockBreak | LeaseBreak] = asyncio.Queue()
        self.unmatched: list[Response] = []  # responses nobody waited for
        self.signature_errors: list[Response] = []
        self.signed_responses = 0  # signed responses seen (verified when verify_signatures)
        self._pending: dict[int, PendingRequest] = {}
        self._next_message_id = 0
        self._credits = 1
        self._credits_event = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self.client_guid = b"\0" * 16
        self.dialect: int = 0
        self.negotiate_response: wire.NegotiateResponse | None = None
        self.preauth_hash = auth.PREAUTH_INITIAL
        self.session_id = 0
        self.session_flags = 0
        self.keys: auth.SessionKeys | None = None
        self.signing = False
        self._anonymous = False
        self.encrypting = False
        self.trees: dict[int, wire.TreeConnectResponse] = {}
        self.closed = asyncio.Event()
        # auto_ack: acknowledge every break that needs it, as a well-behaved client
        # would (the event still goes to `breaks`); results land in auto_acks.
        self.auto_ack = False
        self.auto_acks: list[tuple[OplockBreak | LeaseBreak, wire.BreakAckResponse]] = []
        self._auto_ack_tasks: set[asyncio.Task] = set()
        self._tree_of_file: dict[bytes, int] = {}
        self._tree_of_lease: dict[bytes, int] = {}
        self._oplock_of_file: dict[bytes, int] = {}
        self.auto_ack_error: BaseException | None = None
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    # --- connection -------------------------------------------------------------------

    @classmethod
    async def connect(cls, host: str, port: int, *, dialect: int | None = None,
                      dialects: Iterable[int] | None = None, client_guid: bytes | None = None,
                      require_signing: bool = False,
                      signing_algorithms: Iterable[int] = (wire.SigningAlgorithm.AES_GMAC,
                                                           wire.SigningAlgorithm.AES_CMAC),
                      ciphers: Iterable[int] = (wire.Cipher.AES_128_GCM, wire.Cipher.AES_128_CCM,
                                                wire.Cipher.AES_256_GCM, wire.Cipher.AES_256_CCM),
                      capabilities: int | None = None, negotiate: bool = True,
                      timeout: float = DEFAULT_TIMEOUT, verify_signatures: bool = True
                      ) -> "Smb2Client":
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        c = cls(reader, writer, timeout=timeout, verify_signatures=verify_signatures)
        c.client_guid = client_guid or uuid.uuid4().bytes
        if negotiate:
            try:
                await c.negotiate(dialects or ([dialect] if dialect else wire.ALL_DIALECTS),
                                  require_signing=require_signing,
                                  signing_algorithms=signing_algorithms, ciphers=ciphers,
                                  capabilities=capabilities)
            except BaseException:
                await c.disconnect()
                raise
        return c

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.disconnect()

    async def disconnect(self):
        self._reader_task.cancel()
        try:
            await self._reader_task
        except (asyncio.CancelledError, Exception):
            pass
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass
        self._fail_all(ConnectionError("client disconnected"))

    # --- reader -------------------------------------------------------------------------

    async def _read_loop(self):
        try:
            while True:
                (length,) = NETBIOS.unpack(await self._reader.readexactly(4))
                length &= 0xFFFFFF
                if length > MAX_MESSAGE:
                    raise ConnectionError(f"frame of {length} bytes")
                data = await self._reader.readexactly(length)
                if data[:4] == wire.TRANSFORM_ID:
                    data = auth.decrypt_message(self.keys, data)
                    self._dispatch(data, decrypted=True)
                else:
                    self._dispatch(data, decrypted=False)
        except asyncio.CancelledError:
            raise
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            self._fail_all(ConnectionError(f"connection lost: {e!r}"))
        except Exception as e:  # a parse bug must not leave tests hanging
            self._fail_all(e)
            raise
        finally:
            self.closed.set()

    def _dispatch(self, data: bytes, decrypted: bool):
        for part in wire.split_compound(data):
            h = Header.unpack(part)
            resp = Response(h, part)
            if h.message_id == wire.NOTIFICATION_MESSAGE_ID:
                if h.command == Command.OPLOCK_BREAK:
                    brk = wire.parse_break_notification(part, h.session_id)
                    self.breaks.put_nowait(brk)
                    if self.auto_ack:
                        self._auto_ack_tasks.add(
                            asyncio.get_running_loop().create_task(self._auto_ack_one(brk)))
                else:
                    self.unmatched.append(resp)
                continue
            self._add_credits(h.credits)
            p = self._pending.get(h.message_id)
            if p is None:
                self.unmatched.append(resp)
                continue
            if resp.is_interim:
                p.async_id = h.async_id
                if not p.interim.done():
                    p.interim.set_result(resp)
                continue
            del self._pending[h.message_id]
            # In a compound each signature covers its part with padding, as split keeps it.
            if (not decrypted and self.verify_signatures and h.flags & Flags.SIGNED
                    and self.keys is not None and h.session_id == self.session_id
                    and not auth.verify_signature(self.keys.signing_key,
                                                  self.keys.signing_algorithm,
                                                  part)):
                self.signature_errors.append(resp)
                p._fail(Smb2SignatureError(f"bad signature on {resp!r}"))
                continue
            if h.flags & Flags.SIGNED and not decrypted and self.keys is not None:
                self.signed_responses += 1
            p._resolve(resp)

    def _fail_all(self, exc: BaseException):
        pending, self._pending = self._pending, {}
        for p in pending.values():
            p._fail(exc)

    # --- credits and message ids ------------------------------------------------------------

    def _add_credits(self, n: int):
        if n:
            self._credits += n
            self._credits_event.set()

    @property
    def credits(self) -> int:
        return self._credits

    async def alloc_message_id(self, charge: int = 1) -> int:
        """Take `charge` credits and the next MessageId(s); waits for credits."""
        charge = max(charge, 1)
        deadline = asyncio.get_running_loop().time() + self.timeout
        while self._credits < charge:
            self._credits_event.clear()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or self.closed.is_set():
                raise TimeoutError(f"no credits: have {self._credits}, need {charge}")
            try:
                await asyncio.wait_for(self._credits_event.wait(), left)
            except asyncio.TimeoutError:
                pass
        mid = self._next_message_id
        self._next_message_id += charge
        self._credits -= charge
        return mid

    def credit_charge(self, payload: int) -> int:
        if self.dialect < Dialect.SMB21 or not self._server_caps & Cap.LARGE_MTU:
            return 1
        return max(1, (payload + 65535) // 65536)

    @property
    def _server_caps(self) -> int:
        return self.negotiate_response.capabilities if self.negotiate_response else 0

    # --- sending --------------------------------------------------------------------------

    def _header(self, command: int, mid: int, charge: int, tree_id: int, flags: int,
                credit_request: int, session_id: int | None) -> Header:
        return Header(command=command, message_id=mid,
                      credit_charge=charge if self.dialect >= Dialect.SMB21 else 0,
                      credits=credit_request, flags=flags, tree_id=tree_id,
                      session_id=self.session_id if session_id is None else session_id)

    def _should_sign(self, command: int, session_id: int) -> bool:
        if self.keys is None or session_id == 0 or self._anonymous:
            return False
        if command == Command.TREE_CONNECT and self.dialect == Dialect.SMB311:
            return True  # MS-SMB2 3.2.4.1.1: 3.1.1 always signs TREE_CONNECT
        return self.signing and command not in (Command.NEGOTIATE, Command.SESSION_SETUP)

    def _should_encrypt(self, tree_id: int, session_id: int) -> bool:
        if self.keys is None or self.keys.encryption_key is None or session_id == 0:
            return False
        tree = self.trees.get(tree_id)
        return self.encrypting or bool(tree and tree.share_flags & wire.SHAREFLAG_ENCRYPT_DATA)

    async def _send_frame(self, data: bytes):
        async with self._write_lock:
            self._writer.write(NETBIOS.pack(len(data)) + data)
            await self._writer.drain()

    async def submit(self, command: int, body: bytes, *, tree_id: int = 0, flags: int = 0,
                     credit_charge: int | None = None, credit_request: int = 64,
                     session_id: int | None = None, sign: bool | None = None,
                     encrypt: bool | None = None,
                     parse: Callable[[Response], Any] | None = None,
                     error_value: Callable[[Response], Any] | None = None) -> PendingRequest:
        """Send one request; returns once it is written. The generic path of every command."""
        charge = credit_charge or 1
        mid = await self.alloc_message_id(charge)
        h = self._header(command, mid, charge, tree_id, flags, max(credit_request, charge),
                         session_id)
        msg = h.pack() + body
        sid = h.session_id
        if sign if sign is not None else self._should_sign(command, sid):
            msg = auth.sign_message(self.keys.signing_key, self.keys.signing_algorithm, msg)
        p = PendingRequest(self, command, mid, parse, error_value, tree_id)
        p.request_bytes = msg
        self._pending[mid] = p
        if encrypt if encrypt is not None else self._should_encrypt(tree_id, sid):
            msg = auth.encrypt_message(self.keys, sid, msg)
        await self._send_frame(msg)
        return p

    async def request(self, command: int, body: bytes, *, expect=OK, wait: bool = True,
                      timeout: float | None = None, **kw):
        """submit() and, unless wait=False, the parsed result checked against `expect`."""
        p = await self.submit(command, body, **kw)
        p.expect = expect
        if not wait:
            return p
        return await p.result(expect, timeout)

    async def compound(self, parts: list[tuple], *, related: bool = False,
                       sign: bool | None = None) -> list[PendingRequest]:
        """Send a compound chain. parts: (command, body[, tree_id[, flags]]) tuples; with
        related=True every part after the first carries SMB2_FLAGS_RELATED_OPERATIONS
        (use wire.RELATED_FILE_ID for the FileId of the previous CREATE)."""
        msgs, pendings = [], []
        for i, part in enumerate(parts):
            command, body = part[0], part[1]
            tree_id = part[2] if len(part) > 2 else 0
            flags = part[3] if len(part) > 3 else 0
            if related and i:
                flags |= Flags.RELATED_OPERATIONS
            mid = await self.alloc_message_id(1)
            h = self._header(command, mid, 1, tree_id, flags, 64, None)
            msgs.append([h, body])
            p = PendingRequest(self, command, mid, None, None, tree_id)
            pendings.append(p)
        out = b""
        for i, (h, body) in enumerate(msgs):
            last = i == len(msgs) - 1
            length = wire.HEADER_SIZE + len(body)
            if not last:
                h.next_command = wire.pad8(length)
            msg = h.pack() + body + (b"" if last else b"\0" * (h.next_command - length))
            if sign if sign is not None else self._should_sign(h.command, h.session_id):
                msg = auth.sign_message(self.keys.signing_key, self.keys.signing_algorithm, msg)
            pendings[i].request_bytes = msg
            out += msg
        for p in pendings:
            self._pending[p.message_id] = p
        if self._should_encrypt(msgs[0][0].tree_id, self.session_id):
            out = auth.encrypt_message(self.keys, self.session_id, out)
        await self._send_frame(out)
        return pendings

    async def send_raw(self, data: bytes, *, message_ids: Iterable[int] = (),
                       frame: bool = True) -> list[PendingRequest]:
        """Write bytes as they are (with the 4-byte transport header unless frame=False).
        Responses for `message_ids` (see alloc_message_id) are routed to the returned
        PendingRequests; anything else lands in `unmatched`."""
        pendings = []
        for mid in message_ids:
            p = PendingRequest(self, -1, mid, None, None)
            self._pending[mid] = p
            pendings.append(p)
        async with self._write_lock:
            self._writer.write(NETBIOS.pack(len(data)) + data if frame else data)
            await self._writer.drain()
        return pendings

    def sign(self, message: bytes) -> bytes:
        """Sign a hand-built message with the session's key (for send_raw)."""
        return auth.sign_message(self.keys.signing_key, self.keys.signing_algorithm, message)

    # --- NEGOTIATE / SESSION_SETUP / LOGOFF ----------------------------------------------------

    async def negotiate(self, dialects: Iterable[int], *, require_signing: bool = False,
                        signing_algorithms=(), ciphers=(), capabilities: int | None = None
                        ) -> wire.NegotiateResponse:
        dialects = list(dialects)
        if capabilities is None:
            capabilities = Cap.DFS | Cap.LEASING | Cap.LARGE_MTU
            if max(dialects) >= Dialect.SMB30:
                capabilities |= Cap.DIRECTORY_LEASING | Cap.ENCRYPTION
        contexts = []
        if Dialect.SMB311 in dialects:
            contexts.append(wire.preauth_context(os.urandom(32)))
            if ciphers:
                contexts.append(wire.encryption_context(list(ciphers)))
            if signing_algorithms:
                contexts.append(wire.signing_context(list(signing_algorithms)))
        security_mode = wire.SIGNING_ENABLED | (wire.SIGNING_REQUIRED if require_signing else 0)
        self._require_signing = require_signing
        body = wire.negotiate_request(dialects, security_mode, capabilities, self.client_guid,
                                      contexts)
        p = await self.submit(Command.NEGOTIATE, body, session_id=0)
        resp = await p.result()
        r = wire.parse_negotiate_response(resp.raw)
        self.negotiate_response = r
        self.dialect = r.dialect
        if r.dialect == Dialect.SMB311:
            self.preauth_hash = auth.preauth_update(
                auth.preauth_update(auth.PREAUTH_INITIAL, p.request_bytes), resp.raw)
        return r

    async def login(self, user: str, password: str, domain: str = "", *,
                    sign: bool | None = None, encrypt: bool = False, spnego: bool = True,
                    nthash: str = "") -> int:
        """NTLMv2 SESSION_SETUP. sign=None: sign when either side requires it. Returns the
        SessionId; raises Smb2Error on failure."""
        ntlm = auth.NtlmAuth(user, password, domain, spnego=spnego, nthash=nthash)
        security_mode = wire.SIGNING_ENABLED | (wire.SIGNING_REQUIRED if sign else 0)
        preauth = self.preauth_hash
        token = ntlm.negotiate_token()
        session_id = 0
        final = None
        for _ in range(3):  # NTLM needs two legs; bounded in case a server loops
            body = wire.session_setup_request(token, security_mode)
            p = await self.submit(Command.SESSION_SETUP, body, session_id=session_id)
            preauth = auth.preauth_update(preauth, p.request_bytes)
            resp = await p.result(expect=(STATUS_SUCCESS, STATUS_MORE_PROCESSING_REQUIRED))
            session_id = resp.session_id
            flags, server_token = wire.parse_session_setup_response(resp.raw)
            if resp.status == STATUS_SUCCESS:
                final = resp
                self.session_flags = flags
                break
            preauth = auth.preauth_update(preauth, resp.raw)
            token = ntlm.authenticate_token(server_token)
        if final is None:
            raise Smb2Error(STATUS_MORE_PROCESSING_REQUIRED, Command.SESSION_SETUP,
                            "too many legs")
        self.session_id = session_id
        r = self.negotiate_response
        self.keys = auth.derive_keys(ntlm.session_key, self.dialect, preauth,
                                     r.signing_algorithm, r.cipher if r.contexts else
                                     (wire.Cipher.AES_128_CCM if r.capabilities & Cap.ENCRYPTION
                                      else None))
        anonymous = self.session_flags & (wire.SESSION_FLAG_IS_GUEST | wire.SESSION_FLAG_IS_NULL)
        if sign is None:
            sign = bool(r.security_mode & wire.SIGNING_REQUIRED or self._require_signing)
        self._anonymous = bool(anonymous)
        self.signing = bool(sign) and not anonymous
        if final.header.flags & Flags.SIGNED and self.verify_signatures and not anonymous:
            if not auth.verify_signature(self.keys.signing_key, self.keys.signing_algorithm,
                                         final.raw):
                raise Smb2SignatureError("bad signature on the final SESSION_SETUP response")
        if encrypt or self.session_flags & wire.SESSION_FLAG_ENCRYPT_DATA:
            if self.keys.encryption_key is None:
                raise Smb2Error(0xC00000BB, Command.SESSION_SETUP, "server cannot encrypt")
            self.encrypting = True
        return session_id

    async def logoff(self, *, expect=OK) -> int:
        status = await self.request(Command.LOGOFF, wire.small_request(), expect=expect,
                                    parse=lambda r: r.status)
        return status

    async def echo(self, *, expect=OK) -> int:
        return await self.request(Command.ECHO, wire.small_request(), expect=expect,
                                  parse=lambda r: r.status)

    # --- trees ------------------------------------------------------------------------------

    async def tree_connect(self, share: str, *, host: str | None = None, expect=OK) -> int:
        """Returns the TreeId. `share` is a share name or a full \\\\host\\share path."""
        path = share if share.startswith("\\\\") else \
            f"\\\\{host or self._writer.get_extra_info('peername')[0]}\\{share}"

        def parse(r: Response) -> int:
            self.trees[r.header.tree_id] = wire.parse_tree_connect_response(r.raw)
            return r.header.tree_id
        return await self.request(Command.TREE_CONNECT, wire.tree_connect_request(path),
                                  expect=expect, parse=parse)

    async def tree_disconnect(self, tid: int, *, expect=OK) -> int:
        self.trees.pop(tid, None)
        return await self.request(Command.TREE_DISCONNECT, wire.small_request(), tree_id=tid,
                                  expect=expect, parse=lambda r: r.status)

    # --- files ------------------------------------------------------------------------------

    async def create(self, tid: int, name: str, *,
                     desired_access: int = wire.Access.GENERIC_READ | wire.Access.GENERIC_WRITE,
                     file_attributes: int = 0, share_access: int = wire.ShareAccess.ALL,
                     disposition: int = wire.Disposition.OPEN_IF, options: int = 0,
                     oplock: int = wire.Oplock.NONE, lease: wire.LeaseRequest | None = None,
                     contexts: Iterable[tuple[bytes, bytes]] = (), impersonation: int = 2,
                     expect=OK, wait: bool = True, timeout: float | None = None):
        """CREATE. Returns a wire.CreateResponse (always with .status), or with wait=False the
        PendingRequest (`await p.interim` to see STATUS_PENDING, `await p` for the result)."""
        ctx = list(contexts)
        if lease is not None:
            ctx.insert(0, (wire.CONTEXT_REQUEST_LEASE, lease.encode()))
            oplock = wire.Oplock.LEASE
        body = wire.create_request(name, oplock=oplock, impersonation=impersonation,
                                   desired_access=desired_access, file_attributes=file_attributes,
                                   share_access=share_access, disposition=disposition,
                                   options=options, contexts=ctx)
        return await self.request(
            Command.CREATE, body, tree_id=tid, expect=expect, wait=wait, timeout=timeout,
            parse=lambda r: self._opened(wire.parse_create_response(r.raw, r.status), tid),
            error_value=lambda r: CreateResponse(r.status))

    def _opened(self, r: CreateResponse, tid: int) -> CreateResponse:
        self._tree_of_file[r.file_id] = tid
        self._oplock_of_file[r.file_id] = r.oplock_level
        if r.lease_key is not None:
            self._tree_of_lease[r.lease_key] = tid
        return r

    async def create_pending(self, tid: int, name: str, **kw) -> PendingRequest:
        return await self.create(tid, name, wait=False, **kw)

    async def close(self, tid: int, file_id: bytes, *, flags: int = 0, expect=OK,
                    wait: bool = True):
        return await self.request(
            Command.CLOSE, wire.close_request(file_id, flags), tree_id=tid, expect=expect,
            wait=wait, parse=lambda r: wire.parse_close_response(r.raw, r.status),
            error_value=lambda r: wire.CloseResponse(r.status))

    async def read(self, tid: int, file_id: bytes, offset: int, length: int, *,
                   minimum: int = 0, expect=OK, wait: bool = True,
                   timeout: float | None = None):
        return await self.request(
            Command.READ, wire.read_request(file_id, offset, length, minimum), tree_id=tid,
            credit_charge=self.credit_charge(length), expect=expect, wait=wait,
            timeout=timeout, parse=lambda r: wire.parse_read_response(r.raw),
            error_value=lambda r: b"")

    async def write(self, tid: int, file_id: bytes, offset: int, data: bytes, *,
                    flags: int = 0, expect=OK, wait: bool = True,
                    timeout: float | None = None):
        """Returns the byte count the server wrote."""
        return await self.request(
            Command.WRITE, wire.write_request(file_id, offset, data, flags), tree_id=tid,
            credit_charge=self.credit_charge(len(data)), expect=expect, wait=wait,
            timeout=timeout, parse=lambda r: wire.parse_write_response(r.raw),
            error_value=lambda r: 0)

    async def flush(self, tid: int, file_id: bytes, *, expect=OK, wait: bool = True):
        return await self.request(Command.FLUSH, wire.flush_request(file_id), tree_id=tid,
                                  expect=expect, wait=wait, parse=lambda r: r.status)

    async def lock(self, tid: int, file_id: bytes, locks, *, sequence: int = 0, expect=OK,
                   wait: bool = True, timeout: float | None = None):
        """locks: [(offset, length, wire.LockFlags)]. Blocking locks go async: wait=False."""
        return await self.request(Command.LOCK, wire.lock_request(file_id, locks, sequence),
                                  tree_id=tid, expect=expect, wait=wait, timeout=timeout,
                                  parse=lambda r: r.status)

    async def ioctl(self, tid: int, ctl_code: int, file_id: bytes = wire.IOCTL_NO_FILE,
                    data: bytes = b"", *, max_output: int = 65536, expect=OK,
                    wait: bool = True) -> bytes:
        return await self.request(
            Command.IOCTL, wire.ioctl_request(ctl_code, file_id, data, max_output),
            tree_id=tid, expect=expect, wait=wait, parse=lambda r: wire.parse_ioctl_response(r.raw),
            error_value=lambda r: b"")

    async def query_directory(self, tid: int, file_id: bytes, pattern: str = "*", *,
                              info_class: int = wire.FileInfoClass.ID_BOTH_DIRECTORY,
                              flags: int = 0, output_buffer_length: int = 65536, expect=OK,
                              wait: bool = True) -> list[wire.DirEntry]:
        """One QUERY_DIRECTORY round; [] on STATUS_NO_MORE_FILES (when expected)."""
        return await self.request(
            Command.QUERY_DIRECTORY,
            wire.query_directory_request(file_id, pattern, info_class, flags,
                                         output_buffer_length),
            tree_id=tid, expect=expect, wait=wait,
            parse=lambda r: wire.parse_directory_entries(wire.parse_output_buffer(r.raw),
                                                         info_class),
            error_value=lambda r: [])

    async def change_notify(self, tid: int, file_id: bytes,
                            completion_filter: int = wire.NotifyFilter.ALL, *,
                            watch_tree: bool = False, output_buffer_length: int = 65536,
                            expect=OK, wait: bool = True, timeout: float | None = None
                            ) -> list[tuple[int, str]]:
        """CHANGE_NOTIFY on a directory handle: [(action, name)] once something changed.
        It goes pending until then: wait=False returns the PendingRequest (await it, or
        client.cancel() it). Non-success statuses (NOTIFY_ENUM_DIR, NOTIFY_CLEANUP,
        CANCELLED) give [] when expected."""
        return await self.request(
            Command.CHANGE_NOTIFY,
            wire.change_notify_request(file_id, completion_filter, watch_tree=watch_tree,
                                       output_buffer_length=output_buffer_length),
            tree_id=tid, expect=expect, wait=wait, timeout=timeout,
            parse=lambda r: wire.parse_notify_information(wire.parse_output_buffer(r.raw)),
            error_value=lambda r: [])

    async def list_directory(self, tid: int, path: str = "", pattern: str = "*", *,
                             info_class: int = wire.FileInfoClass.ID_BOTH_DIRECTORY
                             ) -> list[wire.DirEntry]:
        """Open `path` as a directory, enumerate it fully (bounded), close it."""
        d = await self.create(tid, path, desired_access=wire.Access.FILE_READ_DATA
                              | wire.Access.FILE_READ_ATTRIBUTES | wire.Access.SYNCHRONIZE,
                              disposition=wire.Disposition.OPEN,
                              options=wire.CreateOptions.DIRECTORY_FILE)
        entries: list[wire.DirEntry] = []
        try:
            for i in range(10000):
                chunk = await self.query_directory(
                    tid, d.file_id, pattern, info_class=info_class,
                    flags=wire.QUERY_DIRECTORY_RESTART_SCANS if i == 0 else 0,
                    expect=(OK, wire.STATUS_NO_MORE_FILES))
                if not chunk:
                    break
                entries += chunk
        finally:
            await self.close(tid, d.file_id)
        return entries

    async def query_info(self, tid: int, file_id: bytes, info_type: int, info_class: int, *,
                         output_buffer_length: int = 65536, additional_information: int = 0,
                         flags: int = 0, input_buffer: bytes = b"", expect=OK,
                         wait: bool = True) -> bytes:
        return await self.request(
            Command.QUERY_INFO,
            wire.query_info_request(file_id, info_type, info_class, output_buffer_length,
                                    additional_information, flags, input_buffer),
            tree_id=tid, expect=expect, wait=wait,
            parse=lambda r: wire.parse_output_buffer(r.raw), error_value=lambda r: b"")

    async def query_standard_info(self, tid: int, file_id: bytes) -> dict:
        data = await self.query_info(tid, file_id, wire.InfoType.FILE,
                                     wire.FileInfoClass.STANDARD)
        alloc, eof, links, delete_pending, directory = struct.unpack_from("<qqIBB", data)
        return dict(allocation_size=alloc, end_of_file=eof, number_of_links=links,
                    delete_pending=bool(delete_pending), directory=bool(directory))

    async def set_info(self, tid: int, file_id: bytes, info_type: int, info_class: int,
                       buffer: bytes, *, additional_information: int = 0, expect=OK,
                       wait: bool = True) -> int:
        return await self.request(
            Command.SET_INFO, wire.set_info_request(file_id, info_type, info_class, buffer,
                                                    additional_information),
            tree_id=tid, expect=expect, wait=wait, parse=lambda r: r.status)

    async def rename(self, tid: int, file_id: bytes, new_name: str, *, replace: bool = False,
                     expect=OK, wait: bool = True) -> int:
        return await self.set_info(tid, file_id, wire.InfoType.FILE, wire.FileInfoClass.RENAME,
                                   wire.rename_information(new_name, replace), expect=expect,
                                   wait=wait)

    async def set_end_of_file(self, tid: int, file_id: bytes, eof: int, *, expect=OK,
                              wait: bool = True) -> int:
        return await self.set_info(tid, file_id, wire.InfoType.FILE,
                                   wire.FileInfoClass.END_OF_FILE,
                                   wire.end_of_file_information(eof), expect=expect, wait=wait)

    async def set_delete_on_close(self, tid: int, file_id: bytes, delete: bool = True, *,
                                  expect=OK, wait: bool = True) -> int:
        return await self.set_info(tid, file_id, wire.InfoType.FILE,
                                   wire.FileInfoClass.DISPOSITION,
                                   wire.disposition_information(delete), expect=expect,
                                   wait=wait)

    # --- breaks -----------------------------------------------------------------------------

    async def next_break(self, timeout: float = 5.0) -> OplockBreak | LeaseBreak:
        """The next break notification; asyncio.TimeoutError when none comes in time."""
        return await asyncio.wait_for(self.breaks.get(), timeout)

    async def expect_no_break(self, within: float = 0.5):
        """Fail (AssertionError) when a break arrives within `within` seconds."""
        try:
            brk = await asyncio.wait_for(self.breaks.get(), within)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"unexpected break: {brk!r}")

    async def ack_oplock(self, tid: int, file_id: bytes, oplock_level: int, *, expect=None,
                         wait: bool = True, timeout: float | None = None):
        """Oplock break acknowledgment (24 bytes). Returns wire.BreakAckResponse (.status);
        by default any status is returned, not raised."""
        return await self.request(
            Command.OPLOCK_BREAK, wire.oplock_break_ack(file_id, oplock_level), tree_id=tid,
            expect=expect, wait=wait, timeout=timeout,
            parse=lambda r: wire.parse_break_ack_response(r.raw, r.status),
            error_value=lambda r: wire.BreakAckResponse(r.status))

    async def ack_lease(self, tid: int, lease_key: bytes, lease_state: int, *, flags: int = 0,
                        expect=None, wait: bool = True, timeout: float | None = None):
        """Lease break acknowledgment (36 bytes). Returns wire.BreakAckResponse (.status)."""
        return await self.request(
            Command.OPLOCK_BREAK, wire.lease_break_ack(lease_key, lease_state, flags),
            tree_id=tid, expect=expect, wait=wait, timeout=timeout,
            parse=lambda r: wire.parse_break_ack_response(r.raw, r.status),
            error_value=lambda r: wire.BreakAckResponse(r.status))

    async def _auto_ack_one(self, brk: OplockBreak | LeaseBreak):
        try:
            if isinstance(brk, OplockBreak):
                # Only Exclusive/Batch breaks wait for an ack; LEVEL_II -> NONE does not.
                held = self._oplock_of_file.get(brk.file_id)
                self._oplock_of_file[brk.file_id] = brk.oplock_level
                if held not in (wire.Oplock.EXCLUSIVE, wire.Oplock.BATCH):
                    return
                tid = self._tree_of_file.get(brk.file_id, 0)
                ack = await self.ack_oplock(tid, brk.file_id, brk.oplock_level)
            else:
                if not brk.ack_required:
                    return
                tid = self._tree_of_lease.get(brk.lease_key, 0)
                ack = await self.ack_lease(tid, brk.lease_key, brk.new_state)
            self.auto_acks.append((brk, ack))
        except Exception as e:  # connection gone: record, never crash the loop
            self.auto_acks.append((brk, wire.BreakAckResponse(-1)))
            self.auto_ack_error = e
        finally:
            self._auto_ack_tasks.discard(asyncio.current_task())

    # --- cancel -----------------------------------------------------------------------------

    async def cancel(self, pending: PendingRequest):
        """CANCEL a pending request: by AsyncId once it went async, else by MessageId.
        CANCEL takes no credit and gets no response of its own."""
        flags = 0
        h = Header(command=Command.CANCEL, message_id=pending.message_id, credits=0,
                   tree_id=pending.tree_id, session_id=self.session_id)
        if pending.async_id is not None:
            h.flags = flags | Flags.ASYNC_COMMAND
            h.async_id = pending.async_id
        msg = h.pack() + wire.small_request()
        if self._should_sign(Command.CANCEL, self.session_id):
            msg = self.sign(msg)
        if self._should_encrypt(pending.tree_id, self.session_id):
            msg = auth.encrypt_message(self.keys, self.session_id, msg)
        await self._send_frame(msg)
