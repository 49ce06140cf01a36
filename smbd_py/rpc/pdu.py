"""Connection-oriented DCE/RPC PDU framing (C706 chapter 12, MS-RPCE 2.2.2).

This module owns the byte layout of the PDUs a named-pipe RPC server reads and
writes: the 16-byte common header, bind / alter_context bodies, bind_ack /
alter_context_resp / bind_nak, request headers, response fragments and fault
PDUs. It knows nothing about pipes or interfaces (see pipe.py) nor about NDR
stub data (the interface modules use impacket's NDR for that).

Only little-endian, ASCII, IEEE data representation is accepted (drep 0x10 0 0 0):
every Windows, Samba and impacket client sends it, and impacket's NDR decodes
nothing else. Anything that cannot be framed raises PipeProtocolError.
"""
from __future__ import annotations

import dataclasses
import struct
import uuid

# Packet types (C706 12.6.4)
PTYPE_REQUEST = 0
PTYPE_RESPONSE = 2
PTYPE_FAULT = 3
PTYPE_BIND = 11
PTYPE_BIND_ACK = 12
PTYPE_BIND_NAK = 13
PTYPE_ALTER_CONTEXT = 14
PTYPE_ALTER_CONTEXT_RESP = 15
PTYPE_AUTH3 = 16
PTYPE_SHUTDOWN = 17
PTYPE_CO_CANCEL = 18
PTYPE_ORPHANED = 19

# pfc_flags
PFC_FIRST_FRAG = 0x01
PFC_LAST_FRAG = 0x02
PFC_PENDING_CANCEL = 0x04
PFC_SUPPORT_HEADER_SIGN = 0x04  # same bit, bind-only meaning (MS-RPCE 2.2.2.3)
PFC_CONC_MPX = 0x10
PFC_DID_NOT_EXECUTE = 0x20
PFC_MAYBE = 0x40
PFC_OBJECT_UUID = 0x80

# p_cont_def_result_t (C706 12.6.3.1) and MS-RPCE 2.2.2.4 negotiate_ack
RESULT_ACCEPTANCE = 0
RESULT_USER_REJECTION = 1
RESULT_PROVIDER_REJECTION = 2
RESULT_NEGOTIATE_ACK = 3

# p_provider_reason_t
REASON_NOT_SPECIFIED = 0
REASON_ABSTRACT_SYNTAX_NOT_SUPPORTED = 1
REASON_PROPOSED_TRANSFER_SYNTAXES_NOT_SUPPORTED = 2
REASON_LOCAL_LIMIT_EXCEEDED = 3

# p_reject_reason_t (bind_nak)
NAK_REASON_NOT_SPECIFIED = 0
NAK_PROTOCOL_VERSION_NOT_SUPPORTED = 4
NAK_AUTHENTICATION_TYPE_NOT_RECOGNIZED = 8

# Fault status codes (C706 appendix E, MS-RPCE 2.2.2.5)
NCA_S_OP_RNG_ERROR = 0x1C010002
NCA_S_UNKNOWN_IF = 0x1C010003
NCA_S_PROTO_ERROR = 0x1C01000B
NCA_S_FAULT_REMOTE_NO_MEMORY = 0x1C00001B
RPC_S_ACCESS_DENIED = 0x00000005
RPC_X_BAD_STUB_DATA = 0x000006F7

# Bind-time feature negotiation bits (MS-RPCE 2.2.2.14)
BTFN_SECURITY_CONTEXT_MULTIPLEXING = 0x01
BTFN_KEEP_CONNECTION_ON_ORPHAN = 0x02

RPC_VERS = 5
DREP_LE_ASCII_IEEE = b"\x10\x00\x00\x00"

COMMON_HEADER = struct.Struct("<BBBB4sHHI")  # rpc_vers, minor, ptype, pfc_flags, drep, frag_len, auth_length, call_id
REQUEST_HEADER = struct.Struct("<IHH")  # alloc_hint, p_cont_id, opnum
RESPONSE_HEADER = struct.Struct("<IHBB")  # alloc_hint, p_cont_id, cancel_count, reserved
FAULT_BODY = struct.Struct("<IHBBII")  # alloc_hint, p_cont_id, cancel_count, reserved, status, reserved
BIND_HEADER = struct.Struct("<HHIB3x")  # max_xmit_frag, max_recv_frag, assoc_group_id, n_context_elem
CTX_ELEM_HEADER = struct.Struct("<HBx")  # p_cont_id, n_transfer_syn, reserved
SYNTAX_ID = struct.Struct("<16sI")  # if_uuid (wire form), if_version (major | minor << 16)
ACK_FIXED = struct.Struct("<HHIH")  # max_xmit_frag, max_recv_frag, assoc_group_id, sec_addr length
RESULT_LIST_HEADER = struct.Struct("<B3x")  # n_results, reserved
RESULT = struct.Struct("<HH20s")  # result, reason, transfer_syntax
NAK_BODY = struct.Struct("<HBBB")  # provider_reject_reason, n_protocols, major, minor
AUTH_TRAILER = struct.Struct("<BBBBI")  # auth_type, auth_level, auth_pad_length, reserved, context_id

COMMON_HEADER_SIZE = COMMON_HEADER.size  # 16
REQUEST_HEADER_SIZE = COMMON_HEADER_SIZE + REQUEST_HEADER.size  # 24
RESPONSE_HEADER_SIZE = COMMON_HEADER_SIZE + RESPONSE_HEADER.size  # 24

# MS-RPCE 3.3.1.5.2: every implementation must accept fragments of this size.
MUST_RECV_FRAG_SIZE = 1432


class PipeProtocolError(ValueError):
    """The bytes written to the pipe cannot be framed as DCE/RPC PDUs (wrong
    version, unsupported data representation, impossible frag_length, client
    not reading its responses). The pipe is unusable afterwards."""


def syntax_bytes(uuid_str: str, major: int, minor: int = 0) -> bytes:
    """An interface or transfer syntax id in its 20-byte wire form."""
    return SYNTAX_ID.pack(uuid.UUID(uuid_str).bytes_le, major | (minor << 16))


NDR_SYNTAX = syntax_bytes("8a885d04-1ceb-11c9-9fe8-08002b104860", 2)
NDR64_SYNTAX = syntax_bytes("71710533-beba-4937-8319-b5dbef9ccc36", 1)
NULL_SYNTAX = b"\x00" * 20
# 6cb71c2c-9812-4540 v1.0; the last 8 octets of the uuid carry the bitmask
_BTFN_PREFIX = uuid.UUID("6cb71c2c-9812-4540-0000-000000000000").bytes_le[:8]


def bind_time_features(transfer_syntax: bytes) -> int | None:
    """The feature bitmask if ``transfer_syntax`` is a bind-time feature
    negotiation syntax (MS-RPCE 3.3.1.5.3), else None."""
    uuid_le, version = SYNTAX_ID.unpack(transfer_syntax)
    if uuid_le[:8] != _BTFN_PREFIX or version != 1:
        return None
    return int.from_bytes(uuid_le[8:16], "little")


@dataclasses.dataclass(slots=True)
class Header:
    rpc_vers: int
    rpc_vers_minor: int
    ptype: int
    pfc_flags: int
    drep: bytes
    frag_length: int
    auth_length: int
    call_id: int


def parse_header(buf: bytes | bytearray | memoryview) -> Header:
    """Parse the common header of the PDU at the start of ``buf`` (>= 16 bytes)."""
    h = Header(*COMMON_HEADER.unpack_from(buf, 0))
    if h.rpc_vers != RPC_VERS:
        raise PipeProtocolError(f"rpc_vers {h.rpc_vers}.{h.rpc_vers_minor}, only 5.x is spoken")
    if h.drep[0] & 0xF0 != 0x10 or h.drep[0] & 0x0F or h.drep[1] != 0:
        raise PipeProtocolError(f"data representation {h.drep.hex()} not supported "
                                "(only little-endian ASCII IEEE)")
    if h.frag_length < COMMON_HEADER_SIZE:
        raise PipeProtocolError(f"frag_length {h.frag_length} shorter than the header")
    if h.auth_length and h.auth_length + AUTH_TRAILER.size > h.frag_length - COMMON_HEADER_SIZE:
        raise PipeProtocolError(f"auth_length {h.auth_length} does not fit in frag_length "
                                f"{h.frag_length}")
    return h


@dataclasses.dataclass(slots=True)
class ContextElement:
    p_cont_id: int
    abstract_syntax: bytes
    transfer_syntaxes: list[bytes]


@dataclasses.dataclass(slots=True)
class Bind:
    max_xmit_frag: int
    max_recv_frag: int
    assoc_group_id: int
    contexts: list[ContextElement]


def parse_bind(pdu: bytes, header: Header) -> Bind:
    """The body of a bind or alter_context PDU. Raises ValueError if truncated."""
    end = header.frag_length - (header.auth_length + AUTH_TRAILER.size if header.auth_length else 0)
    off = COMMON_HEADER_SIZE
    if off + BIND_HEADER.size > end:
        raise ValueError("bind body truncated")
    max_xmit, max_recv, assoc, n_ctx = BIND_HEADER.unpack_from(pdu, off)
    off += BIND_HEADER.size
    contexts = []
    for _ in range(n_ctx):
        if off + CTX_ELEM_HEADER.size + SYNTAX_ID.size > end:
            raise ValueError("context element truncated")
        ctx_id, n_ts = CTX_ELEM_HEADER.unpack_from(pdu, off)
        off += CTX_ELEM_HEADER.size
        abstract = bytes(pdu[off:off + SYNTAX_ID.size])
        off += SYNTAX_ID.size
        if off + n_ts * SYNTAX_ID.size > end:
            raise ValueError("transfer syntax list truncated")
        ts = [bytes(pdu[off + i * SYNTAX_ID.size: off + (i + 1) * SYNTAX_ID.size])
              for i in range(n_ts)]
        off += n_ts * SYNTAX_ID.size
        contexts.append(ContextElement(ctx_id, abstract, ts))
    return Bind(max_xmit, max_recv, assoc, contexts)


def _header(ptype: int, flags: int, frag_length: int, call_id: int) -> bytes:
    return COMMON_HEADER.pack(RPC_VERS, 0, ptype, flags, DREP_LE_ASCII_IEEE, frag_length, 0, call_id)


def build_bind_ack(*, ptype: int, call_id: int, max_xmit_frag: int, max_recv_frag: int,
                   assoc_group_id: int, secondary_address: str,
                   results: list[tuple[int, int, bytes]]) -> bytes:
    """bind_ack (ptype 12) or alter_context_resp (ptype 15). ``secondary_address``
    may be "" (alter_context_resp sends a zero-length one)."""
    sec = secondary_address.encode("ascii") + b"\x00" if secondary_address else b""
    body = bytearray(ACK_FIXED.pack(max_xmit_frag, max_recv_frag, assoc_group_id, len(sec)))
    body += sec
    # pad so the result list starts 4-aligned from the start of the PDU
    body += b"\x00" * (-(COMMON_HEADER_SIZE + len(body)) % 4)
    body += RESULT_LIST_HEADER.pack(len(results))
    for result, reason, syntax in results:
        body += RESULT.pack(result, reason, syntax)
    return _header(ptype, PFC_FIRST_FRAG | PFC_LAST_FRAG, COMMON_HEADER_SIZE + len(body),
                   call_id) + bytes(body)


def build_bind_nak(call_id: int, reason: int) -> bytes:
    body = NAK_BODY.pack(reason, 1, RPC_VERS, 0)
    return _header(PTYPE_BIND_NAK, PFC_FIRST_FRAG | PFC_LAST_FRAG,
                   COMMON_HEADER_SIZE + len(body), call_id) + body


def build_fault(call_id: int, p_cont_id: int, status: int, *, did_not_execute: bool = False) -> bytes:
    flags = PFC_FIRST_FRAG | PFC_LAST_FRAG | (PFC_DID_NOT_EXECUTE if did_not_execute else 0)
    body = FAULT_BODY.pack(0, p_cont_id, 0, 0, status, 0)
    return _header(PTYPE_FAULT, flags, COMMON_HEADER_SIZE + len(body), call_id) + body


def build_response_fragments(call_id: int, p_cont_id: int, stub: bytes,
                             max_xmit_frag: int) -> list[bytes]:
    """Split ``stub`` into response PDUs no longer than ``max_xmit_frag``. Every
    fragment but the last carries a multiple of 8 stub octets so NDR alignment
    is the same in every fragment (C706 12.6.3.7)."""
    per_frag = (max_xmit_frag - RESPONSE_HEADER_SIZE) & ~7
    if per_frag <= 0:
        raise ValueError(f"max_xmit_frag {max_xmit_frag} leaves no room for stub data")
    frags = []
    off = 0
    total = len(stub)
    while True:
        chunk = stub[off:off + per_frag]
        flags = (PFC_FIRST_FRAG if off == 0 else 0)
        if off + len(chunk) >= total:
            flags |= PFC_LAST_FRAG
        frags.append(_header(PTYPE_RESPONSE, flags, RESPONSE_HEADER_SIZE + len(chunk), call_id)
                     + RESPONSE_HEADER.pack(total - off, p_cont_id, 0, 0) + chunk)
        off += len(chunk)
        if flags & PFC_LAST_FRAG:
            return frags
