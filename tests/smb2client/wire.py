"""SMB2 wire encoding for the test client: header, request bodies, response parsers.

Owns bytes <-> values only (no I/O, no keys). Layouts are MS-SMB2 section 2.2; offsets
in comments are from the start of the body (after the 64-byte header).
"""
from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass, field

# --- constants -------------------------------------------------------------------

PROTOCOL_ID = b"\xfeSMB"
TRANSFORM_ID = b"\xfdSMB"
COMPRESSION_ID = b"\xfcSMB"
HEADER_SIZE = 64
NOTIFICATION_MESSAGE_ID = 0xFFFFFFFFFFFFFFFF


class Command(enum.IntEnum):
    NEGOTIATE = 0x00
    SESSION_SETUP = 0x01
    LOGOFF = 0x02
    TREE_CONNECT = 0x03
    TREE_DISCONNECT = 0x04
    CREATE = 0x05
    CLOSE = 0x06
    FLUSH = 0x07
    READ = 0x08
    WRITE = 0x09
    LOCK = 0x0A
    IOCTL = 0x0B
    CANCEL = 0x0C
    ECHO = 0x0D
    QUERY_DIRECTORY = 0x0E
    CHANGE_NOTIFY = 0x0F
    QUERY_INFO = 0x10
    SET_INFO = 0x11
    OPLOCK_BREAK = 0x12


class Flags(enum.IntFlag):
    SERVER_TO_REDIR = 0x01
    ASYNC_COMMAND = 0x02
    RELATED_OPERATIONS = 0x04
    SIGNED = 0x08
    PRIORITY_MASK = 0x70
    DFS_OPERATIONS = 0x10000000
    REPLAY_OPERATION = 0x20000000


class Dialect(enum.IntEnum):
    SMB202 = 0x0202
    SMB21 = 0x0210
    SMB30 = 0x0300
    SMB302 = 0x0302
    SMB311 = 0x0311


ALL_DIALECTS = (Dialect.SMB202, Dialect.SMB21, Dialect.SMB30, Dialect.SMB302, Dialect.SMB311)


class Cap(enum.IntFlag):
    DFS = 0x01
    LEASING = 0x02
    LARGE_MTU = 0x04
    MULTI_CHANNEL = 0x08
    PERSISTENT_HANDLES = 0x10
    DIRECTORY_LEASING = 0x20
    ENCRYPTION = 0x40


SIGNING_ENABLED = 0x01
SIGNING_REQUIRED = 0x02

# Session flags in the SESSION_SETUP response.
SESSION_FLAG_IS_GUEST = 0x01
SESSION_FLAG_IS_NULL = 0x02
SESSION_FLAG_ENCRYPT_DATA = 0x04

# Share flags (TREE_CONNECT response) that matter to the client.
SHAREFLAG_ENCRYPT_DATA = 0x8000


class NegotiateContextType(enum.IntEnum):
    PREAUTH_INTEGRITY_CAPABILITIES = 0x0001
    ENCRYPTION_CAPABILITIES = 0x0002
    COMPRESSION_CAPABILITIES = 0x0003
    NETNAME_NEGOTIATE_CONTEXT_ID = 0x0005
    TRANSPORT_CAPABILITIES = 0x0006
    RDMA_TRANSFORM_CAPABILITIES = 0x0007
    SIGNING_CAPABILITIES = 0x0008


HASH_SHA512 = 0x0001


class Cipher(enum.IntEnum):
    AES_128_CCM = 0x0001
    AES_128_GCM = 0x0002
    AES_256_CCM = 0x0003
    AES_256_GCM = 0x0004


class SigningAlgorithm(enum.IntEnum):
    HMAC_SHA256 = 0x0000
    AES_CMAC = 0x0001
    AES_GMAC = 0x0002


class Oplock(enum.IntEnum):
    NONE = 0x00
    LEVEL_II = 0x01
    EXCLUSIVE = 0x08
    BATCH = 0x09
    LEASE = 0xFF


class LeaseState(enum.IntFlag):
    NONE = 0x00
    READ = 0x01
    HANDLE = 0x02
    WRITE = 0x04


R, H, W = LeaseState.READ, LeaseState.HANDLE, LeaseState.WRITE
RH, RW, RWH = R | H, R | W, R | W | H

LEASE_FLAG_BREAK_IN_PROGRESS = 0x02
LEASE_FLAG_PARENT_LEASE_KEY_SET = 0x04
LEASE_BREAK_FLAG_ACK_REQUIRED = 0x01


class Access(enum.IntFlag):
    FILE_READ_DATA = 0x00000001
    FILE_WRITE_DATA = 0x00000002
    FILE_APPEND_DATA = 0x00000004
    FILE_READ_EA = 0x00000008
    FILE_WRITE_EA = 0x00000010
    FILE_EXECUTE = 0x00000020
    FILE_DELETE_CHILD = 0x00000040
    FILE_READ_ATTRIBUTES = 0x00000080
    FILE_WRITE_ATTRIBUTES = 0x00000100
    DELETE = 0x00010000
    READ_CONTROL = 0x00020000
    WRITE_DAC = 0x00040000
    WRITE_OWNER = 0x00080000
    SYNCHRONIZE = 0x00100000
    MAXIMUM_ALLOWED = 0x02000000
    GENERIC_ALL = 0x10000000
    GENERIC_EXECUTE = 0x20000000
    GENERIC_WRITE = 0x40000000
    GENERIC_READ = 0x80000000


class ShareAccess(enum.IntFlag):
    NONE = 0
    READ = 1
    WRITE = 2
    DELETE = 4
    ALL = 7


class Disposition(enum.IntEnum):
    SUPERSEDE = 0
    OPEN = 1
    CREATE = 2
    OPEN_IF = 3
    OVERWRITE = 4
    OVERWRITE_IF = 5


class CreateOptions(enum.IntFlag):
    NONE = 0
    DIRECTORY_FILE = 0x00000001
    WRITE_THROUGH = 0x00000002
    SEQUENTIAL_ONLY = 0x00000004
    NON_DIRECTORY_FILE = 0x00000040
    DELETE_ON_CLOSE = 0x00001000


class FileAttributes(enum.IntFlag):
    NONE = 0
    READONLY = 0x01
    HIDDEN = 0x02
    SYSTEM = 0x04
    DIRECTORY = 0x10
    ARCHIVE = 0x20
    NORMAL = 0x80


class InfoType(enum.IntEnum):
    FILE = 1
    FILESYSTEM = 2
    SECURITY = 3
    QUOTA = 4


class FileInfoClass(enum.IntEnum):
    DIRECTORY = 1
    FULL_DIRECTORY = 2
    BOTH_DIRECTORY = 3
    BASIC = 4
    STANDARD = 5
    INTERNAL = 6
    EA = 7
    ACCESS = 8
    NAME = 9
    RENAME = 10
    NAMES = 12
    DISPOSITION = 13
    POSITION = 14
    FULL_EA = 15
    MODE = 16
    ALIGNMENT = 17
    ALL = 18
    ALLOCATION = 19
    END_OF_FILE = 20
    STREAM = 22
    NETWORK_OPEN = 34
    ATTRIBUTE_TAG = 35
    ID_BOTH_DIRECTORY = 37
    ID_FULL_DIRECTORY = 38


QUERY_DIRECTORY_RESTART_SCANS = 0x01
QUERY_DIRECTORY_RETURN_SINGLE_ENTRY = 0x02
QUERY_DIRECTORY_INDEX_SPECIFIED = 0x04
QUERY_DIRECTORY_REOPEN = 0x10


class LockFlags(enum.IntFlag):
    SHARED = 0x01
    EXCLUSIVE = 0x02
    UNLOCK = 0x04
    FAIL_IMMEDIATELY = 0x10


CLOSE_FLAG_POSTQUERY_ATTRIB = 0x0001

# NTSTATUS values the client itself branches on; others are just numbers.
STATUS_SUCCESS = 0x00000000
STATUS_PENDING = 0x00000103
STATUS_MORE_PROCESSING_REQUIRED = 0xC0000016
STATUS_CANCELLED = 0xC0000120
STATUS_NO_MORE_FILES = 0x80000006


def status_name(status: int) -> str:
    """NTSTATUS name for messages; uses the project's table when importable."""
    try:
        from smbd_py.wire.status import NtStatus  # vocabulary only, no logic
        return "STATUS_" + NtStatus(status).name
    except Exception:
        return {STATUS_CANCELLED: "STATUS_CANCELLED"}.get(status, f"0x{status:08x}")


class Smb2Error(Exception):
    """A response whose status the caller did not expect."""

    def __init__(self, status: int, command: int, message: str = ""):
        self.status = status
        self.command = command
        cmd = Command(command).name if command in Command._value2member_map_ else hex(command)
        super().__init__(f"{cmd}: {status_name(status)}{': ' + message if message else ''}")


# --- header ----------------------------------------------------------------------

# ProtocolId, StructureSize, CreditCharge, Status, Command, Credits, Flags, NextCommand,
# MessageId, (Reserved, TreeId) | AsyncId, SessionId, Signature
SYNC_HEADER = struct.Struct("<4sHHIHHIIQIIQ16s")
ASYNC_HEADER = struct.Struct("<4sHHIHHIIQQQ16s")
SIGNATURE_OFFSET = 48
FLAGS_OFFSET = 16


@dataclass
class Header:
    command: int
    message_id: int = 0
    credit_charge: int = 0
    status: int = 0  # ChannelSequence/Reserved in requests
    credits: int = 0  # CreditRequest / CreditResponse
    flags: int = 0
    next_command: int = 0
    tree_id: int = 0
    async_id: int = 0
    session_id: int = 0
    signature: bytes = b"\0" * 16

    def pack(self) -> bytes:
        if self.flags & Flags.ASYNC_COMMAND:
            return ASYNC_HEADER.pack(PROTOCOL_ID, 64, self.credit_charge, self.status,
                                     self.command, self.credits, self.flags, self.next_command,
                                     self.message_id, self.async_id, self.session_id,
                                     self.signature)
        return SYNC_HEADER.pack(PROTOCOL_ID, 64, self.credit_charge, self.status, self.command,
                                self.credits, self.flags, self.next_command, self.message_id,
                                0, self.tree_id, self.session_id, self.signature)

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> "Header":
        if len(data) < HEADER_SIZE or bytes(data[:4]) != PROTOCOL_ID:
            raise ValueError("not an SMB2 header")
        (_, _, charge, status, command, credits, flags, next_command, mid, a, b, sid,
         sig) = SYNC_HEADER.unpack_from(data)
        h = cls(command=command, message_id=mid, credit_charge=charge, status=status,
                credits=credits, flags=flags, next_command=next_command, session_id=sid,
                signature=sig)
        if flags & Flags.ASYNC_COMMAND:
            h.async_id = a | (b << 32)
        else:
            h.tree_id = b
        return h


def split_compound(message: bytes) -> list[bytes]:
    """Split a (possibly compounded) SMB2 message into its parts, by NextCommand."""
    parts = []
    offset = 0
    while True:
        next_command = struct.unpack_from("<I", message, offset + 20)[0]
        if next_command == 0:
            parts.append(message[offset:])
            return parts
        parts.append(message[offset:offset + next_command])
        offset += next_command
        if offset + HEADER_SIZE > len(message):
            raise ValueError("NextCommand points past the end of the message")


def pad8(n: int) -> int:
    return (n + 7) & ~7


def utf16(name: str) -> bytes:
    return name.encode("utf-16-le")


# --- NEGOTIATE ---------------------------------------------------------------------

NEGOTIATE_REQ = struct.Struct("<HHHHI16sIHH")  # 36 bytes
NEGOTIATE_RSP = struct.Struct("<HHHH16sIIIIQQHHI")  # 64 bytes
NEG_CONTEXT_HDR = struct.Struct("<HHI")


def negotiate_context(ctype: int, data: bytes) -> bytes:
    return NEG_CONTEXT_HDR.pack(ctype, len(data), 0) + data


def negotiate_request(dialects, security_mode: int, capabilities: int, client_guid: bytes,
                      contexts: list[bytes] = ()) -> bytes:
    dial = b"".join(struct.pack("<H", d) for d in dialects)
    ctx_offset = 0
    tail = b""
    if contexts:
        # Contexts start 8-aligned (relative to the header) after the dialects.
        start = HEADER_SIZE + NEGOTIATE_REQ.size + len(dial)
        ctx_offset = pad8(start)
        dial += b"\0" * (ctx_offset - start)
        for i, c in enumerate(contexts):
            tail += c
            if i != len(contexts) - 1:
                tail += b"\0" * (pad8(len(c)) - len(c))
    return NEGOTIATE_REQ.pack(36, len(dialects), security_mode, 0, capabilities, client_guid,
                              ctx_offset, len(contexts), 0) + dial + tail


def preauth_context(salt: bytes) -> bytes:
    return negotiate_context(NegotiateContextType.PREAUTH_INTEGRITY_CAPABILITIES,
                             struct.pack("<HHH", 1, len(salt), HASH_SHA512) + salt)


def encryption_context(ciphers) -> bytes:
    return negotiate_context(NegotiateContextType.ENCRYPTION_CAPABILITIES,
                             struct.pack("<H", len(ciphers))
                             + b"".join(struct.pack("<H", c) for c in ciphers))


def signing_context(algorithms) -> bytes:
    return negotiate_context(NegotiateContextType.SIGNING_CAPABILITIES,
                             struct.pack("<H", len(algorithms))
                             + b"".join(struct.pack("<H", a) for a in algorithms))


@dataclass
class NegotiateResponse:
    security_mode: int
    dialect: int
    server_guid: bytes
    capabilities: int
    max_transact_size: int
    max_read_size: int
    max_write_size: int
    security_buffer: bytes
    contexts: dict[int, bytes] = field(default_factory=dict)

    @property
    def cipher(self) -> int | None:
        data = self.contexts.get(NegotiateContextType.ENCRYPTION_CAPABILITIES)
        if not data:
            return None
        count, = struct.unpack_from("<H", data)
        return struct.unpack_from("<H", data, 2)[0] if count else None

    @property
    def signing_algorithm(self) -> int | None:
        data = self.contexts.get(NegotiateContextType.SIGNING_CAPABILITIES)
        if not data:
            return None
        return struct.unpack_from("<H", data, 2)[0]


def parse_negotiate_response(msg: bytes) -> NegotiateResponse:
    (_, mode, dialect, ctx_count, guid, caps, max_trans, max_read, max_write, _t, _st,
     sec_off, sec_len, ctx_off) = NEGOTIATE_RSP.unpack_from(msg, HEADER_SIZE)
    r = NegotiateResponse(mode, dialect, guid, caps, max_trans, max_read, max_write,
                          bytes(msg[sec_off:sec_off + sec_len]))
    if dialect == Dialect.SMB311:
        off = ctx_off
        for _ in range(ctx_count):
            ctype, dlen, _ = NEG_CONTEXT_HDR.unpack_from(msg, off)
            r.contexts[ctype] = bytes(msg[off + 8:off + 8 + dlen])
            off = pad8(off + 8 + dlen)
    return r


# --- SESSION_SETUP / LOGOFF / TREE_CONNECT / TREE_DISCONNECT / ECHO / CANCEL -------------

SESSION_SETUP_REQ = struct.Struct("<HBBIIHHQ")  # 24 bytes
SESSION_SETUP_RSP = struct.Struct("<HHHH")


def session_setup_request(token: bytes, security_mode: int, flags: int = 0,
                          capabilities: int = 0, previous_session_id: int = 0) -> bytes:
    return SESSION_SETUP_REQ.pack(25, flags, security_mode, capabilities, 0,
                                  HEADER_SIZE + SESSION_SETUP_REQ.size, len(token),
                                  previous_session_id) + token


def parse_session_setup_response(msg: bytes) -> tuple[int, bytes]:
    _, session_flags, off, length = SESSION_SETUP_RSP.unpack_from(msg, HEADER_SIZE)
    return session_flags, bytes(msg[off:off + length])


SMALL_REQ = struct.Struct("<HH")  # StructureSize 4, Reserved: LOGOFF, TREE_DISCONNECT, ECHO, CANCEL


def small_request() -> bytes:
    return SMALL_REQ.pack(4, 0)


TREE_CONNECT_REQ = struct.Struct("<HHHH")
TREE_CONNECT_RSP = struct.Struct("<HBBIII")


def tree_connect_request(path: str, flags: int = 0) -> bytes:
    p = utf16(path)
    return TREE_CONNECT_REQ.pack(9, flags, HEADER_SIZE + TREE_CONNECT_REQ.size, len(p)) + p


@dataclass
class TreeConnectResponse:
    share_type: int
    share_flags: int
    capabilities: int
    maximal_access: int


def parse_tree_connect_response(msg: bytes) -> TreeConnectResponse:
    _, stype, _, sflags, caps, access = TREE_CONNECT_RSP.unpack_from(msg, HEADER_SIZE)
    return TreeConnectResponse(stype, sflags, caps, access)


# --- CREATE and create contexts ------------------------------------------------------

CREATE_REQ = struct.Struct("<HBBIQQIIIIIHHII")  # 56 bytes
CREATE_RSP = struct.Struct("<HBBIQQQQQQII16sII")  # 88 bytes
CREATE_CONTEXT_HDR = struct.Struct("<IHHHHI")  # Next, NameOffset, NameLength, Reserved, DataOffset, DataLength
LEASE_V1 = struct.Struct("<16sIIQ")  # 32 bytes
LEASE_V2 = struct.Struct("<16sIIQ16sHH")  # 52 bytes
CONTEXT_REQUEST_LEASE = b"RqLs"
RELATED_FILE_ID = b"\xff" * 16  # "the FileId of the previous CREATE" in a related compound


@dataclass
class LeaseRequest:
    """A lease to request in CREATE: version 1 (32-byte RqLs) or 2 (52 bytes)."""
    key: bytes
    state: int = RWH
    version: int = 2
    epoch: int = 0
    parent: bytes | None = None
    flags: int | None = None  # None: PARENT_LEASE_KEY_SET when parent is given

    def encode(self) -> bytes:
        if self.version == 1:
            return LEASE_V1.pack(self.key, self.state, self.flags or 0, 0)
        flags = self.flags
        if flags is None:
            flags = LEASE_FLAG_PARENT_LEASE_KEY_SET if self.parent else 0
        return LEASE_V2.pack(self.key, self.state, flags, 0, self.parent or b"\0" * 16,
                             self.epoch, 0)


# Durable handles (MS-SMB2 2.2.13.2.3/.4/.11/.12, 2.2.14.2.3/.12).
CONTEXT_DURABLE_V1 = b"DHnQ"
CONTEXT_DURABLE_RECONNECT_V1 = b"DHnC"
CONTEXT_DURABLE_V2 = b"DH2Q"
CONTEXT_DURABLE_RECONNECT_V2 = b"DH2C"
DURABLE_V2_REQ = struct.Struct("<IIQ16s")      # Timeout, Flags, Reserved, CreateGuid
DURABLE_V2_RECONNECT = struct.Struct("<16s16sI")  # FileId, CreateGuid, Flags
DURABLE_V2_RSP = struct.Struct("<II")          # Timeout, Flags
DHANDLE_FLAG_PERSISTENT = 0x02


def durable_v1() -> tuple[bytes, bytes]:
    """SMB2_CREATE_DURABLE_HANDLE_REQUEST, for CREATE's contexts=."""
    return CONTEXT_DURABLE_V1, b"\0" * 16


def durable_v2(create_guid: bytes, timeout_ms: int = 0, flags: int = 0) -> tuple[bytes, bytes]:
    """SMB2_CREATE_DURABLE_HANDLE_REQUEST_V2 (3.x)."""
    return CONTEXT_DURABLE_V2, DURABLE_V2_REQ.pack(timeout_ms, flags, 0, create_guid)


def durable_reconnect_v1(file_id: bytes) -> tuple[bytes, bytes]:
    """SMB2_CREATE_DURABLE_HANDLE_RECONNECT: reclaim a durable open by its file id."""
    return CONTEXT_DURABLE_RECONNECT_V1, bytes(file_id)


def durable_reconnect_v2(file_id: bytes, create_guid: bytes, flags: int = 0) -> tuple[bytes, bytes]:
    """SMB2_CREATE_DURABLE_HANDLE_RECONNECT_V2 (3.x): file id and CreateGuid."""
    return CONTEXT_DURABLE_RECONNECT_V2, DURABLE_V2_RECONNECT.pack(bytes(file_id), create_guid,
                                                                  flags)


def new_lease_key() -> bytes:
    return uuid.uuid4().bytes


def create_contexts(contexts: list[tuple[bytes, bytes]]) -> bytes:
    """Encode (name, data) pairs as a chain of SMB2_CREATE_CONTEXT, each 8-aligned."""
    out = b""
    for i, (name, data) in enumerate(contexts):
        name_off = CREATE_CONTEXT_HDR.size
        data_off = pad8(name_off + len(name)) if data else 0
        body = name + b"\0" * ((data_off - name_off - len(name)) if data else 0) + data
        length = CREATE_CONTEXT_HDR.size + len(body)
        nxt = pad8(length) if i != len(contexts) - 1 else 0
        out += CREATE_CONTEXT_HDR.pack(nxt, name_off, len(name), 0, data_off, len(data)) + body
        if nxt:
            out += b"\0" * (nxt - length)
    return out


def parse_create_contexts(buf: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    off = 0
    while off + CREATE_CONTEXT_HDR.size <= len(buf):
        nxt, noff, nlen, _, doff, dlen = CREATE_CONTEXT_HDR.unpack_from(buf, off)
        out.append((bytes(buf[off + noff:off + noff + nlen]),
                    bytes(buf[off + doff:off + doff + dlen])))
        if not nxt:
            break
        off += nxt
    return out


def create_request(name: str, *, oplock: int, impersonation: int, desired_access: int,
                   file_attributes: int, share_access: int, disposition: int,
                   options: int, contexts: list[tuple[bytes, bytes]]) -> bytes:
    n = utf16(name)
    name_off = HEADER_SIZE + CREATE_REQ.size
    buf = n or b"\0"  # the body must have at least one byte of Buffer
    ctx = create_contexts(contexts) if contexts else b""
    ctx_off = 0
    if ctx:
        ctx_off = pad8(name_off + len(buf))
        buf += b"\0" * (ctx_off - name_off - len(buf)) + ctx
    return CREATE_REQ.pack(57, 0, oplock, impersonation, 0, 0, desired_access,
                           file_attributes, share_access, disposition, options, name_off,
                           len(n), ctx_off, len(ctx)) + buf


@dataclass
class CreateResponse:
    status: int
    oplock_level: int = 0
    flags: int = 0
    create_action: int = 0
    creation_time: int = 0
    last_access_time: int = 0
    last_write_time: int = 0
    change_time: int = 0
    allocation_size: int = 0
    end_of_file: int = 0
    file_attributes: int = 0
    file_id: bytes = b"\0" * 16
    contexts: list[tuple[bytes, bytes]] = field(default_factory=list)
    lease_key: bytes | None = None
    lease_state: int | None = None
    lease_flags: int | None = None
    lease_epoch: int | None = None
    parent_lease_key: bytes | None = None
    lease_version: int | None = None
    interim_seen: bool = False  # set by the client: an interim STATUS_PENDING came first

    def context(self, name: bytes) -> bytes | None:
        for n, d in self.contexts:
            if n == name:
                return d
        return None

    @property
    def durable(self) -> bool:
        """The server made the open durable (a DHnQ or DH2Q response context)."""
        return self.context(CONTEXT_DURABLE_V1) is not None or self.durable_v2 is not None

    @property
    def durable_v2(self) -> tuple[int, int] | None:
        """(Timeout ms, Flags) of the DH2Q response context, or None."""
        d = self.context(CONTEXT_DURABLE_V2)
        return DURABLE_V2_RSP.unpack_from(d) if d is not None and len(d) >= 8 else None


def parse_create_response(msg: bytes, status: int) -> CreateResponse:
    (_, oplock, flags, action, ct, at, wt, cht, alloc, eof, attrs, _, fid, coff,
     clen) = CREATE_RSP.unpack_from(msg, HEADER_SIZE)
    r = CreateResponse(status, oplock, flags, action, ct, at, wt, cht, alloc, eof, attrs, fid)
    if clen:
        r.contexts = parse_create_contexts(msg[coff:coff + clen])
    lease = r.context(CONTEXT_REQUEST_LEASE)
    if lease is not None:
        if len(lease) >= LEASE_V2.size:
            (r.lease_key, r.lease_state, r.lease_flags, _, r.parent_lease_key, r.lease_epoch,
             _) = LEASE_V2.unpack_from(lease)
            r.lease_version = 2
        elif len(lease) >= LEASE_V1.size:
            r.lease_key, r.lease_state, r.lease_flags, _ = LEASE_V1.unpack_from(lease)
            r.lease_version = 1
    return r


# --- CLOSE / FLUSH / READ / WRITE / LOCK ---------------------------------------------

CLOSE_REQ = struct.Struct("<HHI16s")
CLOSE_RSP = struct.Struct("<HHIQQQQQQI")


def close_request(file_id: bytes, flags: int = 0) -> bytes:
    return CLOSE_REQ.pack(24, flags, 0, file_id)


@dataclass
class CloseResponse:
    status: int
    flags: int = 0
    end_of_file: int = 0
    allocation_size: int = 0
    file_attributes: int = 0
    last_write_time: int = 0


def parse_close_response(msg: bytes, status: int) -> CloseResponse:
    _, flags, _, _ct, _at, wt, _cht, alloc, eof, attrs = CLOSE_RSP.unpack_from(msg, HEADER_SIZE)
    return CloseResponse(status, flags, eof, alloc, attrs, wt)


FLUSH_REQ = struct.Struct("<HHI16s")


def flush_request(file_id: bytes) -> bytes:
    return FLUSH_REQ.pack(24, 0, 0, file_id)


READ_REQ = struct.Struct("<HBBIQ16sIIIHH")  # 48 bytes + 1 byte Buffer
READ_RSP = struct.Struct("<HBBIII")


def read_request(file_id: bytes, offset: int, length: int, minimum: int = 0,
                 flags: int = 0) -> bytes:
    return READ_REQ.pack(49, 0, flags, length, offset, file_id, minimum, 0, 0, 0, 0) + b"\0"


def parse_read_response(msg: bytes) -> bytes:
    _, data_off, _, length, _, _ = READ_RSP.unpack_from(msg, HEADER_SIZE)
    return bytes(msg[data_off:data_off + length])


WRITE_REQ = struct.Struct("<HHIQ16sIIHHI")  # 48 bytes
WRITE_RSP = struct.Struct("<HHIIHH")


def write_request(file_id: bytes, offset: int, data: bytes, flags: int = 0) -> bytes:
    return WRITE_REQ.pack(49, HEADER_SIZE + WRITE_REQ.size, len(data), offset, file_id, 0, 0,
                          0, 0, flags) + data


def parse_write_response(msg: bytes) -> int:
    return WRITE_RSP.unpack_from(msg, HEADER_SIZE)[2]


LOCK_REQ = struct.Struct("<HHI16s")
LOCK_ELEMENT = struct.Struct("<QQII")


def lock_request(file_id: bytes, locks, sequence: int = 0) -> bytes:
    """locks: iterable of (offset, length, LockFlags)."""
    locks = list(locks)
    return LOCK_REQ.pack(48, len(locks), sequence, file_id) + b"".join(
        LOCK_ELEMENT.pack(o, n, f, 0) for o, n, f in locks)


# --- QUERY_DIRECTORY / QUERY_INFO / SET_INFO --------------------------------------------

QUERY_DIRECTORY_REQ = struct.Struct("<HBBI16sHHI")  # 32 bytes
QUERY_INFO_REQ = struct.Struct("<HBBIHHIII16s")  # 40 bytes
SET_INFO_REQ = struct.Struct("<HBBIHHI16s")  # 32 bytes
OUTPUT_BUFFER_RSP = struct.Struct("<HHI")  # QUERY_DIRECTORY and QUERY_INFO responses


def query_directory_request(file_id: bytes, pattern: str, info_class: int, flags: int,
                            output_buffer_length: int, file_index: int = 0) -> bytes:
    p = utf16(pattern)
    return QUERY_DIRECTORY_REQ.pack(33, info_class, flags, file_index, file_id,
                                    HEADER_SIZE + QUERY_DIRECTORY_REQ.size if p else 0, len(p),
                                    output_buffer_length) + (p or b"\0")


# ---- CHANGE_NOTIFY (MS-SMB2 2.2.35/2.2.36, MS-FSCC 2.7.1) ----
CHANGE_NOTIFY_REQ = struct.Struct("<HHI16sII")  # 32 bytes
WATCH_TREE = 0x0001
STATUS_NOTIFY_CLEANUP = 0x0000010B
STATUS_NOTIFY_ENUM_DIR = 0x0000010C


class NotifyFilter(enum.IntFlag):
    FILE_NAME = 0x001
    DIR_NAME = 0x002
    ATTRIBUTES = 0x004
    SIZE = 0x008
    LAST_WRITE = 0x010
    LAST_ACCESS = 0x020
    CREATION = 0x040
    EA = 0x080
    SECURITY = 0x100
    STREAM_NAME = 0x200
    STREAM_SIZE = 0x400
    STREAM_WRITE = 0x800
    NAME = FILE_NAME | DIR_NAME
    ALL = 0xFFF


class NotifyAction(enum.IntEnum):
    ADDED = 1
    REMOVED = 2
    MODIFIED = 3
    RENAMED_OLD_NAME = 4
    RENAMED_NEW_NAME = 5
    ADDED_STREAM = 6
    REMOVED_STREAM = 7
    MODIFIED_STREAM = 8


def change_notify_request(file_id: bytes, completion_filter: int, *, watch_tree: bool = False,
                          output_buffer_length: int = 65536) -> bytes:
    return CHANGE_NOTIFY_REQ.pack(32, WATCH_TREE if watch_tree else 0, output_buffer_length,
                                  file_id, completion_filter, 0)


def parse_notify_information(buf: bytes) -> list[tuple[int, str]]:
    """FILE_NOTIFY_INFORMATION records: [(action, name)], following NextEntryOffset
    (bounded; a record running past the buffer raises ValueError)."""
    out: list[tuple[int, str]] = []
    if not buf:
        return out
    off = 0
    for _ in range(65536):
        if off + 12 > len(buf):
            raise ValueError(f"FILE_NOTIFY_INFORMATION truncated at {off}")
        nxt, action, nlen = struct.unpack_from("<III", buf, off)
        if off + 12 + nlen > len(buf):
            raise ValueError(f"FILE_NOTIFY_INFORMATION name runs past the buffer at {off}")
        out.append((action, buf[off + 12:off + 12 + nlen].decode("utf-16-le")))
        if nxt == 0:
            return out
        if nxt % 4:
            raise ValueError(f"NextEntryOffset {nxt} not 4-byte aligned")
        off += nxt
    raise ValueError("too many FILE_NOTIFY_INFORMATION records")


def parse_output_buffer(msg: bytes) -> bytes:
    _, off, length = OUTPUT_BUFFER_RSP.unpack_from(msg, HEADER_SIZE)
    return bytes(msg[off:off + length])


@dataclass
class DirEntry:
    name: str
    end_of_file: int = 0
    file_attributes: int = 0
    raw: bytes = b""


# (offset of FileNameLength, offset of FileName) per directory information class.
_DIR_NAME_LAYOUT = {
    FileInfoClass.DIRECTORY: (60, 64),
    FileInfoClass.FULL_DIRECTORY: (60, 68),
    FileInfoClass.BOTH_DIRECTORY: (60, 94),
    FileInfoClass.NAMES: (8, 12),
    FileInfoClass.ID_BOTH_DIRECTORY: (60, 104),
    FileInfoClass.ID_FULL_DIRECTORY: (60, 80),
}


def parse_directory_entries(buf: bytes, info_class: int) -> list[DirEntry]:
    len_off, name_off = _DIR_NAME_LAYOUT[info_class]
    out = []
    off = 0
    while off < len(buf):
        nxt = struct.unpack_from("<I", buf, off)[0]
        nlen = struct.unpack_from("<I", buf, off + len_off)[0]
        name = bytes(buf[off + name_off:off + name_off + nlen]).decode("utf-16-le")
        end = off + nxt if nxt else len(buf)
        eof = attrs = 0
        if info_class != FileInfoClass.NAMES:
            eof, _alloc, attrs = struct.unpack_from("<QQI", buf, off + 40)
        out.append(DirEntry(name, eof, attrs, bytes(buf[off:end])))
        if not nxt:
            break
        off += nxt
    return out


def query_info_request(file_id: bytes, info_type: int, info_class: int,
                       output_buffer_length: int, additional_information: int = 0,
                       flags: int = 0, input_buffer: bytes = b"") -> bytes:
    in_off = HEADER_SIZE + QUERY_INFO_REQ.size if input_buffer else 0
    return QUERY_INFO_REQ.pack(41, info_type, info_class, output_buffer_length, in_off, 0,
                               len(input_buffer), additional_information, flags,
                               file_id) + (input_buffer or b"\0")


def set_info_request(file_id: bytes, info_type: int, info_class: int, buffer: bytes,
                     additional_information: int = 0) -> bytes:
    return SET_INFO_REQ.pack(33, info_type, info_class, len(buffer),
                             HEADER_SIZE + SET_INFO_REQ.size, 0, additional_information,
                             file_id) + buffer


def rename_information(new_name: str, replace: bool = False) -> bytes:
    # SMB2 form of FILE_RENAME_INFORMATION (MS-FSCC 2.4.37.2): RootDirectory is 8 bytes.
    n = utf16(new_name)
    return struct.pack("<B7xQI", int(replace), 0, len(n)) + n


def end_of_file_information(eof: int) -> bytes:
    return struct.pack("<Q", eof)


def disposition_information(delete: bool = True) -> bytes:
    return struct.pack("<B", int(delete))


# --- OPLOCK_BREAK: notifications, acks, responses -----------------------------------------

OPLOCK_BREAK = struct.Struct("<HBBI16s")  # 24: notification, ack and response
LEASE_BREAK_NOTIFICATION = struct.Struct("<HHI16sIIIII")  # 44
LEASE_BREAK_ACK = struct.Struct("<HHI16sIQ")  # 36: ack and response


@dataclass(frozen=True)
class OplockBreak:
    """An oplock break notification: the server wants `file_id` at `oplock_level`."""
    file_id: bytes
    oplock_level: int
    session_id: int = 0


@dataclass(frozen=True)
class LeaseBreak:
    """A lease break notification (MS-SMB2 2.2.23.2)."""
    lease_key: bytes
    current_state: int
    new_state: int
    new_epoch: int
    flags: int
    break_reason: int = 0
    access_mask_hint: int = 0
    share_mask_hint: int = 0

    @property
    def ack_required(self) -> bool:
        return bool(self.flags & LEASE_BREAK_FLAG_ACK_REQUIRED)


def parse_break_notification(msg: bytes, session_id: int = 0) -> OplockBreak | LeaseBreak:
    size = struct.unpack_from("<H", msg, HEADER_SIZE)[0]
    if size == LEASE_BREAK_NOTIFICATION.size:
        (_, epoch, flags, key, cur, new, reason, amask,
         smask) = LEASE_BREAK_NOTIFICATION.unpack_from(msg, HEADER_SIZE)
        return LeaseBreak(key, cur, new, epoch, flags, reason, amask, smask)
    if size == OPLOCK_BREAK.size:
        _, level, _, _, fid = OPLOCK_BREAK.unpack_from(msg, HEADER_SIZE)
        return OplockBreak(fid, level, session_id)
    raise ValueError(f"OPLOCK_BREAK notification with StructureSize {size}")


def oplock_break_ack(file_id: bytes, oplock_level: int) -> bytes:
    return OPLOCK_BREAK.pack(24, oplock_level, 0, 0, file_id)


def lease_break_ack(lease_key: bytes, lease_state: int, flags: int = 0) -> bytes:
    return LEASE_BREAK_ACK.pack(36, 0, flags, lease_key, lease_state, 0)


@dataclass
class BreakAckResponse:
    status: int
    oplock_level: int | None = None  # oplock ack response
    file_id: bytes | None = None
    lease_key: bytes | None = None  # lease ack response
    lease_state: int | None = None


def parse_break_ack_response(msg: bytes, status: int) -> BreakAckResponse:
    r = BreakAckResponse(status)
    if status != STATUS_SUCCESS:
        return r
    size = struct.unpack_from("<H", msg, HEADER_SIZE)[0]
    if size == 24:
        _, r.oplock_level, _, _, r.file_id = OPLOCK_BREAK.unpack_from(msg, HEADER_SIZE)
    elif size == 36:
        _, _, _, r.lease_key, r.lease_state, _ = LEASE_BREAK_ACK.unpack_from(msg, HEADER_SIZE)
    return r


# --- IOCTL (enough for FSCTL_VALIDATE_NEGOTIATE_INFO and pass-through) ---------------------

IOCTL_REQ = struct.Struct("<HHI16sIIIIIIII")  # 56 bytes
IOCTL_RSP = struct.Struct("<HHI16sIIIIII")  # 48 bytes
IOCTL_FLAG_IS_FSCTL = 0x1
FSCTL_VALIDATE_NEGOTIATE_INFO = 0x00140204
IOCTL_NO_FILE = b"\xff" * 16


def ioctl_request(ctl_code: int, file_id: bytes, data: bytes, max_output: int = 65536,
                  flags: int = IOCTL_FLAG_IS_FSCTL) -> bytes:
    in_off = HEADER_SIZE + IOCTL_REQ.size if data else 0
    return IOCTL_REQ.pack(57, 0, ctl_code, file_id, in_off, len(data), 0, 0, 0, max_output,
                          flags, 0) + (data or b"\0")


def parse_ioctl_response(msg: bytes) -> bytes:
    (_, _, _, _, _ioff, _ilen, ooff, olen, _, _) = IOCTL_RSP.unpack_from(msg, HEADER_SIZE)
    return bytes(msg[ooff:ooff + olen])


# --- transform header (encryption) -----------------------------------------------------

TRANSFORM_HEADER = struct.Struct("<4s16s16sIHHQ")  # 52 bytes
TRANSFORM_FLAG_ENCRYPTED = 0x0001
