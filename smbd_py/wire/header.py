"""The 64-byte SMB2 header (sync and async forms), commands, flags and NetBIOS framing.

Pure encoding: no state, no I/O. Hot path: one precompiled struct per direction.
"""
from __future__ import annotations

import enum
import struct

PROTOCOL_ID = b"\xfeSMB"
SMB1_PROTOCOL_ID = b"\xffSMB"
TRANSFORM_PROTOCOL_ID = b"\xfdSMB"
COMPRESSION_PROTOCOL_ID = b"\xfcSMB"

HEADER_SIZE = 64
SIGNATURE_OFFSET = 48
# Magic, StructureSize, CreditCharge, Status, Command, CreditRequest/Response, Flags,
# NextCommand, MessageId, Reserved|AsyncId-low, TreeId|AsyncId-high, SessionId, Signature.
HEADER = struct.Struct("<4sHHIHHIIQIIQ16s")
# The direct-TCP transport header: a zero byte and a 24-bit big-endian length.
FRAME = struct.Struct(">I")
MAX_FRAME = 0x00FFFFFF

UNSOLICITED_MESSAGE_ID = 0xFFFFFFFFFFFFFFFF
RELATED_FILE_ID = b"\xff" * 16


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
    SERVER_TO_REDIR = 0x00000001
    ASYNC_COMMAND = 0x00000002
    RELATED_OPERATIONS = 0x00000004
    SIGNED = 0x00000008
    PRIORITY_MASK = 0x00000070
    DFS_OPERATIONS = 0x10000000
    REPLAY_OPERATION = 0x20000000


# Plain ints for the per-request paths: IntFlag arithmetic builds enum members (slow).
_ASYNC_COMMAND = int(Flags.ASYNC_COMMAND)


class Header:
    """A parsed SMB2 header. Mutable so that responses can be built from requests."""

    __slots__ = ("credit_charge", "status", "command", "credits", "flags", "next_command",
                 "message_id", "async_id", "tree_id", "session_id", "signature")

    def __init__(self, command: int = 0, *, credit_charge: int = 0, status: int = 0,
                 credits: int = 0, flags: int = 0, next_command: int = 0,
                 message_id: int = 0, async_id: int = 0, tree_id: int = 0,
                 session_id: int = 0, signature: bytes = b"\0" * 16) -> None:
        self.credit_charge = credit_charge
        self.status = status
        self.command = command
        self.credits = credits
        self.flags = flags
        self.next_command = next_command
        self.message_id = message_id
        self.async_id = async_id
        self.tree_id = tree_id
        self.session_id = session_id
        self.signature = signature

    @classmethod
    def parse(cls, buf, offset: int = 0) -> "Header":
        """Parse the header at `offset`. Raises ValueError on a short or foreign header."""
        if len(buf) - offset < HEADER_SIZE:
            raise ValueError("short SMB2 header")
        (magic, size, charge, status, command, credits, flags, next_command, message_id,
         reserved, tree_id, session_id, signature) = HEADER.unpack_from(buf, offset)
        if magic != PROTOCOL_ID or size != HEADER_SIZE:
            raise ValueError("not an SMB2 header")
        h = cls.__new__(cls)
        h.credit_charge = charge
        h.status = status
        h.command = command
        h.credits = credits
        h.flags = flags
        h.next_command = next_command
        h.message_id = message_id
        if flags & _ASYNC_COMMAND:
            h.async_id = reserved | (tree_id << 32)
            h.tree_id = 0
        else:
            h.async_id = 0
            h.tree_id = tree_id
        h.session_id = session_id
        h.signature = signature
        return h

    def pack_into(self, buf, offset: int = 0) -> None:
        if self.flags & _ASYNC_COMMAND:
            low, high = self.async_id & 0xFFFFFFFF, self.async_id >> 32
        else:
            low, high = 0, self.tree_id
        HEADER.pack_into(buf, offset, PROTOCOL_ID, HEADER_SIZE, self.credit_charge,
                         self.status, self.command, self.credits, self.flags,
                         self.next_command, self.message_id, low, high,
                         self.session_id, self.signature)

    def pack(self) -> bytes:
        b = bytearray(HEADER_SIZE)
        self.pack_into(b)
        return bytes(b)

    def __repr__(self) -> str:  # debugging aid only
        return (f"Header(cmd={self.command:#x} mid={self.message_id} sid={self.session_id:#x} "
                f"tid={self.tree_id} flags={self.flags:#x} status={self.status:#x})")


def frame(payload_len: int) -> bytes:
    """The 4-byte direct-TCP header for a payload of this length."""
    return FRAME.pack(payload_len)
