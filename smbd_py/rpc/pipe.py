"""Named pipes of IPC$: the interface the SMB layer sees, and a DCE/RPC endpoint.

This module owns
- ``NamedPipe``: what the SMB layer calls for a pipe opened on IPC$
  (WRITE -> ``write``, READ -> ``read``, IOCTL FSCTL_PIPE_TRANSCEIVE ->
  ``transceive``). It knows nothing about SMB.
- ``ShareInfo``: the share description the SMB layer hands to the pipes.
- ``open_pipe``: pipe name -> pipe object (None: not served here).
- ``DcerpcPipe``: a connection-oriented DCE/RPC server over one pipe handle:
  input buffering and PDU framing, bind / alter_context negotiation (NDR 2.0
  only; NDR64 and unknown syntaxes get a per-context provider rejection;
  bind-time feature negotiation is answered with negotiate_ack like Windows),
  request fragment reassembly, response fragmentation to the negotiated
  max_xmit_frag, and fault PDUs. Interfaces (srvsvc.py, wkssvc.py) subclass it
  and supply ``opnum -> handler(stub) -> stub``.

Message semantics (pipes on IPC$ are message-mode): every response fragment is
one message. ``read(n)`` returns bytes of the oldest pending message only, so
two fragments are never glued together; a message longer than ``n`` is
returned in pieces. ``transceive`` returns (first piece, whether that message
has more bytes) -> the SMB layer answers STATUS_BUFFER_OVERFLOW and the client
READs the rest.

Errors: ``write``/``transceive`` raise ``PipeProtocolError`` (a ValueError)
when the byte stream cannot be framed as DCE/RPC; the pipe is then broken and
every further call raises it again. Suggested SMB mapping:
STATUS_INVALID_PARAMETER for the failing call, then close the handle. Every
other problem (unknown opnum, bad stub data, unknown context, request before
bind...) is answered inside the protocol with a fault or bind_nak PDU, never
with an exception.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from smbd_py.rpc import pdu
from smbd_py.rpc.pdu import PipeProtocolError

__all__ = ["NamedPipe", "ShareInfo", "DcerpcPipe", "PipeProtocolError", "open_pipe",
           "normalize_pipe_name", "STYPE_DISKTREE", "STYPE_IPC"]

STYPE_DISKTREE = 0x00000000
STYPE_IPC = 0x80000003  # STYPE_IPC | STYPE_SPECIAL, as Windows reports IPC$

# Our own fragment limit, both directions; what Windows and impacket use.
SERVER_MAX_FRAG = 4280
# A request's reassembled stub beyond this is refused with a fault: no call of
# the interfaces served here needs more than a few hundred bytes.
MAX_REQUEST_STUB = 256 * 1024
# Responses the client has not read yet; beyond this the client is not reading.
MAX_PENDING_OUTPUT = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class ShareInfo:
    name: str
    type: int = STYPE_DISKTREE
    remark: str = ""
    path: str = ""


@runtime_checkable
class NamedPipe(Protocol):
    def write(self, data: bytes) -> None: ...

    def read(self, max_len: int) -> bytes: ...

    def transceive(self, data: bytes, max_out: int) -> tuple[bytes, bool]: ...


Handler = Callable[[bytes], bytes]


class _Call:
    """A request being reassembled from fragments."""
    __slots__ = ("call_id", "p_cont_id", "opnum", "stub")

    def __init__(self, call_id: int, p_cont_id: int, opnum: int) -> None:
        self.call_id = call_id
        self.p_cont_id = p_cont_id
        self.opnum = opnum
        self.stub = bytearray()


class StubError(Exception):
    """Raised by a handler for undecodable stub data -> fault rpc_x_bad_stub_data."""


_assoc_group_ids = itertools.count(0x53F0)


class DcerpcPipe:
    """A DCE/RPC server endpoint on one pipe handle. Subclasses set
    ``pipe_name``, ``abstract_syntax`` (pdu.syntax_bytes(...)) and fill
    ``self.handlers``."""

    pipe_name = ""
    abstract_syntax = b""

    def __init__(self) -> None:
        self.handlers: dict[int, Handler] = {}
        self._inbuf = bytearray()
        self._out: collections.deque[memoryview] = collections.deque()
        self._out_bytes = 0
        self._contexts: dict[int, bytes] = {}  # p_cont_id -> abstract syntax
        self._bound = False
        self._max_xmit_frag = SERVER_MAX_FRAG
        self._max_recv_frag = SERVER_MAX_FRAG
        self._assoc_group_id = 0
        self._call: _Call | None = None
        self._broken: str | None = None
        self.bind_time_features = 0

    # ---------------------------------------------------------- NamedPipe API

    def write(self, data: bytes) -> None:
        """Feed client bytes (whole PDUs, fragments, or pieces of them)."""
        self._check_broken()
        self._inbuf += data
        try:
            while len(self._inbuf) >= pdu.COMMON_HEADER_SIZE:
                header = pdu.parse_header(self._inbuf)
                if len(self._inbuf) < header.frag_length:
                    break
                raw = bytes(self._inbuf[:header.frag_length])
                del self._inbuf[:header.frag_length]
                self._dispatch(raw, header)
            if self._out_bytes > MAX_PENDING_OUTPUT:
                raise PipeProtocolError("client does not read its responses")
        except PipeProtocolError as e:
            self._broken = str(e)
            self._inbuf.clear()
            raise

    def read(self, max_len: int) -> bytes:
        """Up to ``max_len`` bytes of the oldest pending message; b"" if none."""
        self._check_broken()
        data, _ = self._read_message(max_len)
        return data

    def transceive(self, data: bytes, max_out: int) -> tuple[bytes, bool]:
        self.write(data)
        return self._read_message(max_out)

    # ------------------------------------------------------------- extras

    @property
    def pending(self) -> int:
        """Bytes of responses not yet read (all messages)."""
        return self._out_bytes

    @property
    def message_remaining(self) -> int:
        """Bytes left of the message the next read() returns from (0: none)."""
        return len(self._out[0]) if self._out else 0

    def close(self) -> None:
        self._out.clear()
        self._out_bytes = 0
        self._inbuf.clear()
        self._call = None
        self._broken = "closed"

    # ------------------------------------------------------------- internals

    def _check_broken(self) -> None:
        if self._broken is not None:
            raise PipeProtocolError(f"pipe unusable: {self._broken}")

    def _read_message(self, max_len: int) -> tuple[bytes, bool]:
        if not self._out or max_len <= 0:
            return b"", bool(self._out)
        head = self._out[0]
        piece = bytes(head[:max_len])
        if len(piece) == len(head):
            self._out.popleft()
            more = False
        else:
            self._out[0] = head[max_len:]
            more = True
        self._out_bytes -= len(piece)
        return piece, more

    def _emit(self, message: bytes) -> None:
        self._out.append(memoryview(message))
        self._out_bytes += len(message)

    def _dispatch(self, raw: bytes, header: pdu.Header) -> None:
        ptype = header.ptype
        if ptype in (pdu.PTYPE_BIND, pdu.PTYPE_ALTER_CONTEXT):
            self._on_bind(raw, header)
        elif ptype == pdu.PTYPE_REQUEST:
            self._on_request(raw, header)
        elif ptype in (pdu.PTYPE_AUTH3, pdu.PTYPE_CO_CANCEL, pdu.PTYPE_ORPHANED):
            # no response is defined; a cancel or orphan ends a call in assembly
            if ptype != pdu.PTYPE_AUTH3 and self._call and self._call.call_id == header.call_id:
                self._call = None
        else:
            # a server-to-client type, or unknown: protocol error for that call
            self._emit(pdu.build_fault(header.call_id, 0, pdu.NCA_S_PROTO_ERROR,
                                       did_not_execute=True))

    def _on_bind(self, raw: bytes, header: pdu.Header) -> None:
        is_alter = header.ptype == pdu.PTYPE_ALTER_CONTEXT
        if header.rpc_vers_minor > 1:
            self._emit(pdu.build_bind_nak(header.call_id, pdu.NAK_PROTOCOL_VERSION_NOT_SUPPORTED))
            return
        if (is_alter and not self._bound) or (not is_alter and self._bound):
            # alter before bind, or a second bind on this association
            self._emit(pdu.build_bind_nak(header.call_id, pdu.NAK_REASON_NOT_SPECIFIED))
            return
        if header.auth_length:
            # the SMB session authenticates the pipe; no DCE/RPC auth is spoken
            self._emit(pdu.build_bind_nak(header.call_id,
                                          pdu.NAK_AUTHENTICATION_TYPE_NOT_RECOGNIZED))
            return
        try:
            bind = pdu.parse_bind(raw, header)
        except ValueError:
            self._emit(pdu.build_bind_nak(header.call_id, pdu.NAK_REASON_NOT_SPECIFIED))
            return
        if not bind.contexts or any(not c.transfer_syntaxes for c in bind.contexts):
            self._emit(pdu.build_bind_nak(header.call_id, pdu.NAK_REASON_NOT_SPECIFIED))
            return

        results: list[tuple[int, int, bytes]] = []
        saw_features = False
        for ctx in bind.contexts:
            # only the first transfer syntax can make it a feature request (as Samba)
            features = pdu.bind_time_features(ctx.transfer_syntaxes[0])
            if features is not None:
                if saw_features:
                    self._emit(pdu.build_bind_nak(header.call_id, pdu.NAK_REASON_NOT_SPECIFIED))
                    return
                saw_features = True
                # we keep the connection on orphan; no security context
                # multiplexing since no DCE/RPC auth is spoken here
                self.bind_time_features = features & pdu.BTFN_KEEP_CONNECTION_ON_ORPHAN
                results.append((pdu.RESULT_NEGOTIATE_ACK, self.bind_time_features,
                                pdu.NULL_SYNTAX))
            elif ctx.abstract_syntax != self.abstract_syntax:
                results.append((pdu.RESULT_PROVIDER_REJECTION,
                                pdu.REASON_ABSTRACT_SYNTAX_NOT_SUPPORTED, pdu.NULL_SYNTAX))
            elif pdu.NDR_SYNTAX in ctx.transfer_syntaxes:
                self._contexts[ctx.p_cont_id] = ctx.abstract_syntax
                results.append((pdu.RESULT_ACCEPTANCE, 0, pdu.NDR_SYNTAX))
            else:
                results.append((pdu.RESULT_PROVIDER_REJECTION,
                                pdu.REASON_PROPOSED_TRANSFER_SYNTAXES_NOT_SUPPORTED,
                                pdu.NULL_SYNTAX))

        if not is_alter:
            # The client's receive size bounds what we transmit, and the other
            # way round. Below MUST_RECV_FRAG_SIZE is a client bug (MS-RPCE
            # 3.3.1.5.2): use the minimum every implementation must accept.
            self._max_xmit_frag = max(min(bind.max_recv_frag, SERVER_MAX_FRAG),
                                      pdu.MUST_RECV_FRAG_SIZE)
            self._max_recv_frag = max(min(bind.max_xmit_frag, SERVER_MAX_FRAG),
                                      pdu.MUST_RECV_FRAG_SIZE)
            self._assoc_group_id = bind.assoc_group_id or next(_assoc_group_ids)
            self._bound = True
        self._emit(pdu.build_bind_ack(
            ptype=pdu.PTYPE_ALTER_CONTEXT_RESP if is_alter else pdu.PTYPE_BIND_ACK,
            call_id=header.call_id, max_xmit_frag=self._max_xmit_frag,
            max_recv_frag=self._max_recv_frag, assoc_group_id=self._assoc_group_id,
            secondary_address="" if is_alter else f"\\PIPE\\{self.pipe_name}",
            results=results))

    def _fault(self, call_id: int, p_cont_id: int, status: int, *, did_not_execute: bool = True) -> None:
        self._emit(pdu.build_fault(call_id, p_cont_id, status, did_not_execute=did_not_execute))

    def _on_request(self, raw: bytes, header: pdu.Header) -> None:
        call_id = header.call_id
        if header.frag_length < pdu.REQUEST_HEADER_SIZE:
            self._call = None
            self._fault(call_id, 0, pdu.NCA_S_PROTO_ERROR)
            return
        _alloc_hint, p_cont_id, opnum = pdu.REQUEST_HEADER.unpack_from(raw, pdu.COMMON_HEADER_SIZE)
        if not self._bound:
            self._fault(call_id, p_cont_id, pdu.NCA_S_PROTO_ERROR)
            return
        if header.auth_length:
            self._call = None
            self._fault(call_id, p_cont_id, pdu.RPC_S_ACCESS_DENIED)
            return
        start = pdu.REQUEST_HEADER_SIZE + (16 if header.pfc_flags & pdu.PFC_OBJECT_UUID else 0)
        if start > header.frag_length:
            self._call = None
            self._fault(call_id, p_cont_id, pdu.NCA_S_PROTO_ERROR)
            return
        stub = raw[start:header.frag_length]

        if header.pfc_flags & pdu.PFC_FIRST_FRAG:
            if self._call is not None:
                # a new call while one is in assembly: the old one is abandoned
                self._fault(self._call.call_id, self._call.p_cont_id, pdu.NCA_S_PROTO_ERROR)
            self._call = _Call(call_id, p_cont_id, opnum)
        elif self._call is None or self._call.call_id != call_id:
            self._call = None
            self._fault(call_id, p_cont_id, pdu.NCA_S_PROTO_ERROR)
            return
        call = self._call
        call.stub += stub
        if len(call.stub) > MAX_REQUEST_STUB:
            self._call = None
            self._fault(call_id, call.p_cont_id, pdu.NCA_S_FAULT_REMOTE_NO_MEMORY)
            return
        if not header.pfc_flags & pdu.PFC_LAST_FRAG:
            return
        self._call = None
        self._execute(call)

    def _execute(self, call: _Call) -> None:
        if call.p_cont_id not in self._contexts:
            self._fault(call.call_id, call.p_cont_id, pdu.NCA_S_UNKNOWN_IF)
            return
        handler = self.handlers.get(call.opnum)
        if handler is None:
            self._fault(call.call_id, call.p_cont_id, pdu.NCA_S_OP_RNG_ERROR)
            return
        try:
            out = handler(bytes(call.stub))
        except StubError:
            self._fault(call.call_id, call.p_cont_id, pdu.RPC_X_BAD_STUB_DATA)
            return
        for frag in pdu.build_response_fragments(call.call_id, call.p_cont_id, out,
                                                 self._max_xmit_frag):
            self._emit(frag)


def normalize_pipe_name(name: str) -> str:
    """"\\PIPE\\srvsvc", "\\srvsvc", "SRVSVC" -> "srvsvc"."""
    n = name.replace("/", "\\").lstrip("\\").lower()
    if n.startswith("pipe\\"):
        n = n[5:].lstrip("\\")
    return n


def open_pipe(name: str, shares: list[ShareInfo], server_name: str) -> NamedPipe | None:
    """A fresh pipe for one SMB CREATE on IPC$, or None (-> the caller answers
    STATUS_OBJECT_NAME_NOT_FOUND)."""
    n = normalize_pipe_name(name)
    if n == "srvsvc":
        from smbd_py.rpc.srvsvc import SrvsvcPipe
        return SrvsvcPipe(shares, server_name)
    if n == "wkssvc":
        from smbd_py.rpc.wkssvc import WkssvcPipe
        return WkssvcPipe(server_name)
    return None
