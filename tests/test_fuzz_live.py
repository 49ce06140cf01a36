"""Bad input against a live smbd_py: hypothesis drives thousands of mutated, truncated and
garbage messages of every SMB2 command (NEGOTIATE..OPLOCK_BREAK), compounds, SMB1 negotiate,
transform headers and broken NetBIOS framing into a real server process over TCP.

Every example starts from a valid message built on a real session (NEGOTIATE, NTLM
SESSION_SETUP, TREE_CONNECT, CREATE on a raw socket) and then flips bits, truncates, sets
length/offset fields to extremes or splices random bytes. Any answer is fine: an SMB2 error
status or a disconnect (we reconnect and go on). What is not fine, and is checked after every
example (so hypothesis can shrink a failure to one message): the process dies, the log gains an
"internal error" or any other traceback, a response frame is not SMB2. After the run: a
well-formed client (smbclient) still works, and nothing outside the share changed.

SMBD_PY_FUZZ_EXAMPLES (default 3000) and SMBD_PY_FUZZ_BUDGET_S (default 90) bound the run.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import struct
import subprocess
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from tests.conftest import require_tool
from tests.peers.smbd_py_server import smbd_py_server
from tests.smb2client import auth, wire
from tests.smb2client.wire import Cap, Command, Dialect, Flags, HEADER_SIZE

FUZZ_PORT = None   # a free port: never collide with another server on this machine
N_EXAMPLES = int(os.environ.get("SMBD_PY_FUZZ_EXAMPLES", "3000"))
BUDGET_S = float(os.environ.get("SMBD_PY_FUZZ_BUDGET_S", "90"))
LOG_LEVEL = os.environ.get("SMBD_PY_FUZZ_LOG_LEVEL", "info")  # debug logs SmbError tracebacks
REPLY_TIMEOUT_S = 0.5
STATUS_PENDING = 0x00000103
STATUS_MORE_PROCESSING_REQUIRED = 0xC0000016
NETBIOS = struct.Struct(">I")
SYNC_HEADER = wire.SYNC_HEADER
DIALECTS = (Dialect.SMB202, Dialect.SMB21, Dialect.SMB30, Dialect.SMB302, Dialect.SMB311)

# Log lines that mean a handler failed with something other than an SmbError.
BAD_LOG_MARKERS = ("internal error", "Traceback", "Task exception was never retrieved",
                   "Exception in callback", "Fatal error", "Unhandled exception")


class Gone(Exception):
    """The server closed the connection (an acceptable answer to bad input)."""


class SetupRefused(Exception):
    """A setup CREATE was refused: earlier examples can leave fuzzdir or f.txt
    delete-pending, read-only, replaced by a directory, or held without sharing by a
    durable open of a dropped connection - the server right each time."""


# --- a raw-socket SMB2 client -------------------------------------------------------------

class RawConn:
    """One TCP connection speaking SMB2 by hand: enough state (credits, ids, keys) to build
    valid messages, and no opinions about what comes back."""

    _spare = 0          # numbers the names sessions take when fuzzdir or f.txt is unusable

    def __init__(self, host: str, port: int):
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.settimeout(REPLY_TIMEOUT_S)
        self.buf = b""
        self.next_mid = 0
        self.credits = 1
        self.dialect = 0
        self.session_id = 0
        self.tree_id = 0
        self.ipc_tree_id = 0
        self.keys: auth.SessionKeys | None = None
        self.signing = False
        self.preauth = auth.PREAUTH_INITIAL
        self.file_id = b"\0" * 16
        self.dir_id = b"\0" * 16
        self.pipe_id = b"\0" * 16
        self.bad_frames: list[bytes] = []
        self.host = host

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # -- frames
    def send_bytes(self, data: bytes):
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, socket.timeout, OSError) as e:
            raise Gone(repr(e)) from e

    def send_frame(self, payload: bytes):
        self.send_bytes(NETBIOS.pack(len(payload)) + payload)

    def recv_frame(self, deadline: float) -> bytes | None:
        """One frame, None on timeout; Gone on EOF/reset."""
        while True:
            if len(self.buf) >= 4:
                n = NETBIOS.unpack_from(self.buf)[0] & 0xFFFFFF
                if len(self.buf) >= 4 + n:
                    frame, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    return frame
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                return None
            except OSError as e:
                raise Gone(repr(e)) from e
            if not chunk:
                raise Gone("EOF")
            self.buf += chunk

    def parts(self, frame: bytes) -> list[tuple[tuple, bytes]]:
        """Split a response frame into (header fields, message) and account credits."""
        if frame[:4] == wire.TRANSFORM_ID:
            frame = auth.decrypt_message(self.keys, frame)
        if frame[:4] != wire.PROTOCOL_ID:
            self.bad_frames.append(frame[:80])
            return []
        out = []
        for part in wire.split_compound(frame):
            h = SYNC_HEADER.unpack_from(part)
            if not h[6] & Flags.SERVER_TO_REDIR:
                self.bad_frames.append(part[:80])
            if h[8] != wire.NOTIFICATION_MESSAGE_ID:
                self.credits += h[5]
            out.append((h, part))
        return out

    def await_replies(self, mids: set[int], timeout: float = REPLY_TIMEOUT_S) -> dict:
        """Read until every mid has an answer (an interim counts) or the time is up."""
        got: dict[int, tuple] = {}
        deadline = time.monotonic() + timeout
        while not mids.issubset(got):
            frame = self.recv_frame(deadline)
            if frame is None:
                break
            for h, part in self.parts(frame):
                got[h[8]] = (h, part)
        return got

    # -- messages
    def alloc(self, charge: int = 1) -> int:
        mid = self.next_mid
        self.next_mid += max(charge, 1)
        self.credits -= max(charge, 1)
        return mid

    def header(self, command: int, mid: int, *, tree_id: int | None = None, flags: int = 0,
               session_id: int | None = None, charge: int = 1, next_command: int = 0) -> bytes:
        return SYNC_HEADER.pack(wire.PROTOCOL_ID, 64, charge if self.dialect >= 0x0210 else 0, 0,
                                command, 256, flags, next_command, mid, 0,
                                self.tree_id if tree_id is None else tree_id,
                                self.session_id if session_id is None else session_id,
                                b"\0" * 16)

    def finish(self, msg: bytes, *, sign: bool | None = None) -> bytes:
        """Sign when the session signs (after mutation, so bodies reach the handler)."""
        if (self.signing if sign is None else sign) and self.keys and len(msg) >= HEADER_SIZE:
            return auth.sign_message(self.keys.signing_key, self.keys.signing_algorithm, msg)
        return msg

    def call(self, command: int, body: bytes, *, tree_id: int | None = None,
             session_id: int | None = None, sign: bool | None = None) -> tuple[tuple, bytes, bytes]:
        """A well-formed request; returns (header, response, request) of the final answer."""
        mid = self.alloc()
        req = self.finish(self.header(command, mid, tree_id=tree_id, session_id=session_id)
                          + body, sign=sign)
        self.send_frame(req)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            frame = self.recv_frame(deadline)
            if frame is None:
                break
            for h, part in self.parts(frame):
                if h[8] == mid and not (h[6] & Flags.ASYNC_COMMAND and h[3] == STATUS_PENDING):
                    return h, part, req
        raise AssertionError(f"no answer to setup command {command}")

    # -- setup
    def negotiate(self, dialect: int):
        contexts = []
        caps = Cap.DFS | Cap.LEASING | Cap.LARGE_MTU
        if dialect >= Dialect.SMB30:
            caps |= Cap.ENCRYPTION | Cap.DIRECTORY_LEASING
        if dialect == Dialect.SMB311:
            contexts = [wire.preauth_context(os.urandom(32)),
                        wire.encryption_context([wire.Cipher.AES_128_GCM]),
                        wire.signing_context([wire.SigningAlgorithm.AES_CMAC])]
        body = wire.negotiate_request([dialect], wire.SIGNING_ENABLED, caps, os.urandom(16),
                                      contexts)
        h, resp, req = self.call(Command.NEGOTIATE, body, session_id=0)
        assert h[3] == 0, f"NEGOTIATE failed: {h[3]:#x}"
        self.negotiate_response = wire.parse_negotiate_response(resp)
        self.dialect = self.negotiate_response.dialect
        if self.dialect == Dialect.SMB311:
            self.preauth = auth.preauth_update(auth.preauth_update(self.preauth, req), resp)

    def login(self, user: str, password: str):
        ntlm = auth.NtlmAuth(user, password)
        token = ntlm.negotiate_token()
        preauth = self.preauth
        sid = 0
        for _ in range(2):
            body = wire.session_setup_request(token, wire.SIGNING_ENABLED)
            h, resp, req = self.call(Command.SESSION_SETUP, body, session_id=sid, sign=False)
            preauth = auth.preauth_update(preauth, req)
            sid = h[11]
            if h[3] == 0:
                break
            assert h[3] == STATUS_MORE_PROCESSING_REQUIRED, f"SESSION_SETUP: {h[3]:#x}"
            preauth = auth.preauth_update(preauth, resp)
            _, server_token = wire.parse_session_setup_response(resp)
            token = ntlm.authenticate_token(server_token)
        assert h[3] == 0, f"SESSION_SETUP failed: {h[3]:#x}"
        self.session_id = sid
        r = self.negotiate_response
        cipher = r.cipher if r.contexts else (wire.Cipher.AES_128_CCM
                                             if r.capabilities & Cap.ENCRYPTION else None)
        self.keys = auth.derive_keys(ntlm.session_key, self.dialect, preauth,
                                     r.signing_algorithm, cipher)
        # 3.1.1 signs TREE_CONNECT anyway; sign everything there, nothing elsewhere.
        self.signing = self.dialect == Dialect.SMB311

    def setup(self, dialect: int, user: str, password: str):
        self.negotiate(dialect)
        self.login(user, password)
        h, _, _ = self.call(Command.TREE_CONNECT,
                            wire.tree_connect_request(f"\\\\{self.host}\\share"))
        assert h[3] == 0, f"TREE_CONNECT: {h[3]:#x}"
        self.tree_id = h[10]
        # Earlier examples may have left fuzzdir or f.txt unusable (SetupRefused says how):
        # this session then takes names of its own; a fresh name must open.
        dir_name, file_name = "fuzzdir", "fuzzdir\\f.txt"
        for _ in range(20):
            try:
                self.dir_id = self._create(dir_name, wire.Disposition.OPEN_IF,
                                           wire.CreateOptions.DIRECTORY_FILE)
            except SetupRefused:
                RawConn._spare += 1
                dir_name = f"fuzzdir{RawConn._spare}"
                file_name = dir_name + "\\f.txt"
                continue
            try:
                self.file_id = self._create(file_name, wire.Disposition.OPEN_IF,
                                            wire.CreateOptions.NON_DIRECTORY_FILE)
                break
            except SetupRefused:
                RawConn._spare += 1
                file_name = f"{dir_name}\\f{RawConn._spare}.txt"
        else:
            raise AssertionError("no fresh setup file opened in 20 tries")
        h, _, _ = self.call(Command.WRITE, wire.write_request(self.file_id, 0, b"x" * 300))
        h, _, _ = self.call(Command.TREE_CONNECT,
                            wire.tree_connect_request(f"\\\\{self.host}\\IPC$"))
        if h[3] == 0:
            self.ipc_tree_id = h[10]
            body = wire.create_request("srvsvc", oplock=0, impersonation=2,
                                       desired_access=0x0012019F, file_attributes=0,
                                       share_access=7, disposition=wire.Disposition.OPEN,
                                       options=0, contexts=[])
            h, resp, _ = self.call(Command.CREATE, body, tree_id=self.ipc_tree_id)
            if h[3] == 0:
                self.pipe_id = wire.parse_create_response(resp, 0).file_id

    def _create(self, name: str, disposition: int, options: int) -> bytes:
        body = wire.create_request(name, oplock=0, impersonation=2, desired_access=0x001F01FF,
                                   file_attributes=0, share_access=7, disposition=disposition,
                                   options=options, contexts=[])
        h, resp, _ = self.call(Command.CREATE, body)
        if h[3] != 0:
            raise SetupRefused(f"CREATE {name}: {h[3]:#x}")
        return wire.parse_create_response(resp, 0).file_id


# --- templates: valid request bodies of every command ------------------------------------

def _lease_v2() -> bytes:
    return wire.LeaseRequest(wire.new_lease_key(), state=7, version=2).encode()


def _create_body(c: RawConn, variant: int) -> bytes:
    names = ["fuzzdir\\n%d.txt" % (variant % 7), "fuzzdir", "", "fuzzdir\\f.txt:stream",
             "fuzzdir\\f.txt", "fuzzdir\\sub\\deeper", "..\\x", "fuzzdir\\*",
             "fuzzdir/../../x", "fuzzdir\\f.txt:s:$DATA", "fuzzdir\\f.txt::$DATA", "C:\\x"]
    ctx = [
        [],
        [(b"RqLs", _lease_v2())],
        [(b"MxAc", b""), (b"QFid", b"")],
        [(b"DHnQ", b"\0" * 16)],
        [(b"DH2Q", struct.pack("<IIQ16s", 0, 0, 0, os.urandom(16)))],
        [(b"ExtA", struct.pack("<IBBH", 0, 0, 4, 4) + b"abcd\0" + b"wxyz")],
        [(b"SecD", bytes.fromhex("01000480") + b"\0" * 16)],
        [(b"AlSi", struct.pack("<Q", 4096)), (b"TWrp", struct.pack("<Q", 0))],
        [(b"RqLs", wire.LeaseRequest(wire.new_lease_key(), state=7, version=1).encode()),
         (b"DHnC", c.file_id)],
    ][variant % 9]
    oplock = [0, 1, 8, 9, 0xFF][variant % 5] if not ctx or ctx[0][0] != b"RqLs" else 0xFF
    return wire.create_request(names[variant % len(names)], oplock=oplock, impersonation=2,
                               desired_access=[0x001F01FF, 0x00120089, 0x02000000, 0x10000][
                                   variant % 4],
                               file_attributes=[0, 0x80, 0x10, 0x2][variant % 4],
                               share_access=7,
                               disposition=[1, 3, 2, 5, 0, 4][variant % 6],
                               options=[0, 0x40, 0x1, 0x1000, 0x20][variant % 5], contexts=ctx)


def _ioctl_body(c: RawConn, variant: int) -> bytes:
    fid = c.file_id
    calls = [
        (0x00140204, wire.IOCTL_NO_FILE,  # VALIDATE_NEGOTIATE_INFO
         struct.pack("<I16sHH", 0, os.urandom(16), 1, 1) + struct.pack("<H", c.dialect)),
        (0x001401FC, wire.IOCTL_NO_FILE, b""),  # QUERY_NETWORK_INTERFACE_INFO
        (0x0011C017, c.pipe_id, bytes.fromhex("05000b03100000004800000001000000")
         + b"\0" * 56),  # PIPE_TRANSCEIVE with a bind
        (0x00060194, wire.IOCTL_NO_FILE, struct.pack("<H", 3) + wire.utf16("\\x\\share\0")),
        (0x00140078, fid, b""),  # SRV_REQUEST_RESUME_KEY
        (0x001440F2, fid, b"\0" * 24 + struct.pack("<II", 1, 0)
         + struct.pack("<QQII", 0, 0, 10, 0)),  # SRV_COPYCHUNK
        (0x000940CF, fid, struct.pack("<QQ", 0, 1 << 20)),  # QUERY_ALLOCATED_RANGES
        (0x000980C8, fid, struct.pack("<QQ", 10, 20)),  # SET_ZERO_DATA
        (0x000900C4, fid, b"\x01"),  # SET_SPARSE
        (0x000900A8, fid, b""),  # GET_REPARSE_POINT
        (0x000900C0, fid, b""),  # CREATE_OR_GET_OBJECT_ID
        (0x0011400C, c.pipe_id, b""),  # PIPE_PEEK
        (0x00110018, wire.IOCTL_NO_FILE, struct.pack("<QIBB", 0, 12, 1, 0)
         + wire.utf16("srvsvc")),  # PIPE_WAIT
        (0x00144064, fid, b""),  # SRV_ENUMERATE_SNAPSHOTS
        (0x12345678, fid, b"abc"),
    ]
    ctl, f, data = calls[variant % len(calls)]
    return wire.ioctl_request(ctl, f, data, max_output=[65536, 0, 24, 0xFFFFFFFF][variant % 4])


def _query_info_body(c: RawConn, variant: int) -> bytes:
    choices = [(1, cls) for cls in (4, 5, 6, 7, 8, 9, 14, 16, 18, 21, 22, 28, 33, 34, 35, 48,
                                     59, 60, 0, 1, 99)]
    choices += [(2, cls) for cls in (1, 3, 4, 5, 6, 7, 8, 11, 0, 42)]
    choices += [(3, 0), (4, 0), (0, 0), (9, 9)]
    info_type, cls = choices[variant % len(choices)]
    addl = 0x7 if info_type == 3 else 0
    inbuf = b"\0" * 8 if cls == 15 else b""
    return wire.query_info_request(c.file_id if variant % 3 else c.dir_id, info_type, cls,
                                   [4096, 0, 8, 65536][variant % 4], addl, 0, inbuf)


def _set_info_body(c: RawConn, variant: int) -> bytes:
    choices = [
        (1, 4, struct.pack("<QQQQI4x", 0, 0, 0, 0, 0x80)),  # FileBasicInformation
        (1, 10, wire.rename_information("fuzzdir\\r%d.txt" % (variant % 5))),
        (1, 10, wire.rename_information("..\\escape.txt")),
        (1, 10, wire.rename_information("fuzzdir\\f.txt", replace=True)),
        (1, 11, struct.pack("<B7xQI", 0, 0, 8) + wire.utf16("lnk1")),  # FileLinkInformation
        (1, 13, wire.disposition_information(False)),
        (1, 14, struct.pack("<Q", 10)),  # FilePositionInformation
        (1, 16, struct.pack("<I", 0)),  # FileModeInformation
        (1, 19, struct.pack("<Q", 4096)),  # FileAllocationInformation
        (1, 20, wire.end_of_file_information(300)),
        (1, 23, b"\0" * 8),  # FilePipeInformation
        (1, 64, struct.pack("<I", 0)),  # FileDispositionInformationEx (no delete)
        (1, 65, wire.rename_information("fuzzdir\\rx.txt")),  # FileRenameInformationEx
        (2, 1, b"\0" * 8),
        (2, 6, b"\0" * 48),  # FileFsControlInformation
        (3, 0, bytes.fromhex("01000480") + b"\0" * 16),
        (4, 0, b"\0" * 4),
        (1, 99, b"abcd"),
    ]
    info_type, cls, buf = choices[variant % len(choices)]
    return wire.set_info_request(c.file_id, info_type, cls, buf, 4 if info_type == 3 else 0)


def templates(c: RawConn, variant: int) -> dict[str, tuple[int, bytes, int]]:
    """name -> (command, body, tree_id) for the session on `c`."""
    fid = c.file_id
    t = c.tree_id
    return {
        "negotiate": (Command.NEGOTIATE, wire.negotiate_request(
            [0x0202, 0x0210, 0x0300, 0x0302, 0x0311], 1, 0x7F, os.urandom(16),
            [wire.preauth_context(b"s" * 32)]), t),
        "session_setup": (Command.SESSION_SETUP, wire.session_setup_request(
            auth.NtlmAuth("alice", "x").negotiate_token(), 1), t),
        "logoff": (Command.LOGOFF, wire.small_request(), t),
        "tree_connect": (Command.TREE_CONNECT, wire.tree_connect_request(
            ["\\\\127.0.0.1\\share", "\\\\h\\IPC$", "\\\\h\\nosuch", "share", "\\\\h\\..",
             "\\\\h\\share\\..\\..\\etc"][variant % 6], flags=[0, 4][variant % 2]), t),
        "tree_disconnect": (Command.TREE_DISCONNECT, wire.small_request(), t),
        "create": (Command.CREATE, _create_body(c, variant), t),
        "close": (Command.CLOSE, wire.close_request([os.urandom(16), fid, b"\0" * 16][
            variant % 3], flags=variant % 2), t),
        "flush": (Command.FLUSH, wire.flush_request([fid, c.dir_id, c.pipe_id][variant % 3]), t),
        "read": (Command.READ, wire.read_request(
            [fid, c.dir_id, c.pipe_id][variant % 3], [0, 100, 1 << 40][variant % 3],
            [10, 0, 65536, 1 << 20][variant % 4], minimum=[0, 5, 1000][variant % 3]),
            c.ipc_tree_id if variant % 3 == 2 else t),
        "write": (Command.WRITE, wire.write_request(
            [fid, c.dir_id, c.pipe_id][variant % 3], [0, 250, (1 << 63) - 8][variant % 3],
            os.urandom([1, 17, 200][variant % 3]), flags=variant % 2),
            c.ipc_tree_id if variant % 3 == 2 else t),
        "lock": (Command.LOCK, wire.lock_request(fid, [
            [(0, 10, 0x2 | 0x10)], [(0, 10, 0x4)], [(5, 5, 0x1 | 0x10)],
            [(0, 1, 0x2), (2, 1, 0x1)], [(1 << 63, 1 << 63, 0x2 | 0x10)], []][variant % 6],
            sequence=variant), t),
        "ioctl": (Command.IOCTL, _ioctl_body(c, variant), c.ipc_tree_id if variant % 15 in (
            2, 11, 12) else t),
        "echo": (Command.ECHO, wire.small_request(), t),
        "query_directory": (Command.QUERY_DIRECTORY, wire.query_directory_request(
            c.dir_id, ["*", "f*", "..", "..\\*", "<\"*>", "", "?.txt", "\\*", "../f.txt",
                       "/etc/passwd", "f.txt:s", "f.txt"][variant % 12],
            [1, 2, 3, 12, 37, 38, 60, 0][variant % 8], [0, 1, 2, 4, 0x10][variant % 5],
            [65536, 0, 100, 0xFFFFFFFF][variant % 4]), t),
        "change_notify": (Command.CHANGE_NOTIFY, struct.pack(
            "<HHI16sII", 32, variant % 2, [4096, 0][variant % 2], c.dir_id, 0xFFF, 0), t),
        "query_info": (Command.QUERY_INFO, _query_info_body(c, variant), t),
        "set_info": (Command.SET_INFO, _set_info_body(c, variant), t),
        "oplock_break": (Command.OPLOCK_BREAK, wire.oplock_break_ack(fid, variant % 2), t),
        "lease_break": (Command.OPLOCK_BREAK, wire.lease_break_ack(os.urandom(16), 3), t),
        "cancel": (Command.CANCEL, wire.small_request(), t),
    }


TEMPLATE_NAMES = ["negotiate", "session_setup", "logoff", "tree_connect", "tree_disconnect",
                  "create", "close", "flush", "read", "write", "lock", "ioctl", "echo",
                  "query_directory", "change_notify", "query_info", "set_info", "oplock_break",
                  "lease_break", "cancel"]
# These end the session, the tree or the baseline handles when they succeed.
STATE_BREAKERS = {"logoff", "tree_disconnect", "close", "session_setup", "negotiate"}

# Length/offset fields (body-relative offset, width) per template, for "extreme" mutations.
FIELDS = {
    "negotiate": [(0, 2), (2, 2), (28, 4), (32, 2)],
    "session_setup": [(0, 2), (12, 2), (14, 2), (16, 8)],
    "tree_connect": [(0, 2), (2, 2), (4, 2), (6, 2)],
    "create": [(0, 2), (3, 1), (4, 4), (24, 4), (28, 4), (32, 4), (36, 4), (40, 4), (44, 2),
               (46, 2), (48, 4), (52, 4), (56, 4), (60, 2), (62, 2), (66, 2), (68, 4)],
    "close": [(0, 2), (2, 2), (8, 8), (16, 8)],
    "flush": [(0, 2), (8, 8)],
    "read": [(0, 2), (2, 1), (3, 1), (4, 4), (8, 8), (16, 8), (32, 4), (36, 4), (40, 4),
             (44, 2), (46, 2)],
    "write": [(0, 2), (2, 2), (4, 4), (8, 8), (16, 8), (32, 4), (36, 4), (40, 2), (42, 2),
              (44, 4)],
    "lock": [(0, 2), (2, 2), (4, 4), (24, 8), (32, 8), (40, 4)],
    "ioctl": [(0, 2), (4, 4), (8, 8), (24, 4), (28, 4), (32, 4), (36, 4), (40, 4), (44, 4),
              (48, 4), (56, 4), (60, 4), (64, 2)],
    "query_directory": [(0, 2), (2, 1), (3, 1), (4, 4), (24, 2), (26, 2), (28, 4)],
    "change_notify": [(0, 2), (2, 2), (4, 4), (24, 4)],
    "query_info": [(0, 2), (2, 1), (3, 1), (4, 4), (8, 2), (12, 4), (16, 4), (20, 4)],
    "set_info": [(0, 2), (2, 1), (3, 1), (4, 4), (8, 2), (12, 4), (32, 1), (48, 4), (52, 4)],
    "oplock_break": [(0, 2), (2, 1), (8, 8)],
    "lease_break": [(0, 2), (4, 4), (24, 4), (28, 8)],
}
HEADER_FIELDS = [(4, 2), (6, 2), (8, 4), (12, 2), (14, 2), (16, 4), (20, 4), (24, 8), (32, 4),
                 (36, 4), (40, 8)]
EXTREMES = [0, 1, 2, 7, 8, 63, 64, 65, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF,
            0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x100000000, 0x7FFFFFFFFFFFFFFF,
            0xFFFFFFFFFFFFFFFF]


# --- mutations ----------------------------------------------------------------------------

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 4095), st.integers(0, 7)),
    st.tuples(st.just("byte"), st.integers(0, 4095), st.integers(0, 255)),
    st.tuples(st.just("field"), st.integers(0, 63), st.sampled_from(EXTREMES),
              st.integers(-2, 2)),
    st.tuples(st.just("rfield"), st.integers(0, 4095), st.sampled_from([1, 2, 4, 8]),
              st.sampled_from(EXTREMES + ["len", "len+1", "len-1", "len+64"])),
    st.tuples(st.just("truncate"), st.integers(0, 4095)),
    st.tuples(st.just("insert"), st.integers(0, 4095), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), st.integers(0, 4095), st.integers(1, 32)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=300)),
)


def _put(buf: bytearray, pos: int, width: int, value: int):
    if pos + width <= len(buf):
        buf[pos:pos + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


def mutate(msg: bytes, ops, fields: list[tuple[int, int]], base: int) -> bytes:
    """Apply ops to msg; positions fold into [base, len) so the header can be spared."""
    buf = bytearray(msg)
    for op in ops:
        span = max(len(buf) - base, 1)
        kind = op[0]
        if kind == "flip" and len(buf) > base:
            buf[base + op[1] % span] ^= 1 << op[2]
        elif kind == "byte" and len(buf) > base:
            buf[base + op[1] % span] = op[2]
        elif kind == "field" and fields:
            off, width = fields[op[1] % len(fields)]
            _put(buf, base + off, width, op[2] + op[3])
        elif kind == "rfield" and len(buf) > base:
            width = op[2]
            pos = base + ((op[1] % span) & ~(width - 1))
            v = op[3]
            if isinstance(v, str):
                v = {"len": len(buf), "len+1": len(buf) + 1, "len-1": len(buf) - 1,
                     "len+64": len(buf) + 64}[v]
            _put(buf, pos, width, v)
        elif kind == "truncate":
            del buf[base + op[1] % span:]
        elif kind == "insert":
            p = base + op[1] % span
            buf[p:p] = op[2]
        elif kind == "delete":
            p = base + op[1] % span
            del buf[p:p + op[2]]
        elif kind == "append":
            buf += op[1]
    return bytes(buf)


@dataclasses.dataclass
class Case:
    kind: str
    name: str = ""
    variant: int = 0
    body_ops: tuple = ()
    header_ops: tuple = ()
    sign: bool = True
    encrypt: bool = False
    parts: tuple = ()
    related: bool = False
    raw: bytes = b""
    length_delta: int = 0


# One command of every kind, mutated body (and now and then a mutated header).
single = st.builds(Case, kind=st.just("cmd"), name=st.sampled_from(TEMPLATE_NAMES),
                   variant=st.integers(0, 1000),
                   body_ops=st.lists(mutation, min_size=0, max_size=4).map(tuple),
                   header_ops=st.one_of(st.just(()), st.just(()), st.just(()),
                                        st.lists(mutation, max_size=2).map(tuple)),
                   sign=st.booleans(), encrypt=st.booleans())

others = st.one_of(
    # Compounds (related or not) of valid-ish parts, mutated anywhere past the first header.
    st.builds(Case, kind=st.just("compound"),
              parts=st.lists(st.sampled_from(TEMPLATE_NAMES), min_size=2, max_size=4).map(tuple),
              variant=st.integers(0, 1000), related=st.booleans(),
              body_ops=st.lists(mutation, max_size=3).map(tuple), sign=st.booleans(),
              encrypt=st.booleans()),
    # First messages on a fresh connection: NEGOTIATE (SMB2 and SMB1) and SESSION_SETUP legs.
    st.builds(Case, kind=st.sampled_from(["fresh_negotiate", "smb1_negotiate", "setup_leg1",
                                          "setup_leg2"]),
              variant=st.integers(0, 1000), body_ops=st.lists(mutation, max_size=4).map(tuple)),
    # Transform headers: garbage, mutated headers over a valid ciphertext, wrong session.
    st.builds(Case, kind=st.just("transform"), variant=st.integers(0, 1000),
              body_ops=st.lists(mutation, max_size=3).map(tuple)),
    # NetBIOS framing: bad type bytes, lengths that lie, zero and tiny frames, garbage.
    st.builds(Case, kind=st.just("netbios"), variant=st.integers(0, 1000),
              raw=st.binary(max_size=200), length_delta=st.integers(-70, 70)),
)
# Half the examples are single commands (one_of alone would pick each branch about evenly).
cases = st.booleans().flatmap(lambda one: single if one else others)


# --- the driver -------------------------------------------------------------------------

class Fuzzer:
    def __init__(self, srv, workdir):
        self.srv = srv
        self.conn: RawConn | None = None
        self.dirty = True
        self.sent = 0
        self.disconnects = 0
        self.silent: dict[str, int] = {}
        self.per_kind: dict[str, int] = {}
        self.log_pos = 0
        self.bad_frames: list[bytes] = []
        self.dialect_turn = 0

    def session(self) -> RawConn:
        if self.conn is None or self.dirty:
            self.drop()
            self.dialect_turn += 1
            c = RawConn(self.srv.host, self.srv.port)
            c.setup(DIALECTS[self.dialect_turn % len(DIALECTS)], self.srv.user,
                    self.srv.password)
            self.conn, self.dirty = c, False
        return self.conn

    def drop(self):
        if self.conn is not None:
            self.bad_frames += self.conn.bad_frames
            self.conn.close()
        self.conn = None

    def fresh(self) -> RawConn:
        return RawConn(self.srv.host, self.srv.port)

    def check_server(self, case: Case):
        assert self.srv.alive(), f"server died on {case}:\n" + self.srv.log_tail()
        with open(self.srv.log_path, "rb") as f:
            f.seek(self.log_pos)
            new = f.read().decode(errors="replace")
            self.log_pos = f.tell()
        for marker in BAD_LOG_MARKERS:
            assert marker not in new, f"server log after {case}:\n{new[-4000:]}"

    def run(self, case: Case):
        self.per_kind[case.kind] = self.per_kind.get(case.kind, 0) + 1
        self.current = case
        try:
            getattr(self, "do_" + case.kind)(case)
        except Gone:
            self.disconnects += 1
            self.dirty = True
        self.check_server(case)

    def _expect(self, c: RawConn, mids: set[int], label: str, timeout: float = REPLY_TIMEOUT_S,
                any_reply: bool = False):
        got = c.await_replies(mids, timeout)
        if not mids.issubset(got) and not (any_reply and got):
            # No answer and no disconnect: the connection may be wedged; start over.
            self.silent[label] = self.silent.get(label, 0) + 1
            if os.environ.get("SMBD_PY_FUZZ_VERBOSE"):
                print("no answer:", label, self.current)
            self.dirty = True
        return got

    def do_cmd(self, case: Case):
        c = self.session()
        command, body, tree_id = templates(c, case.variant)[case.name]
        mid = c.alloc()
        msg = c.header(command, mid, tree_id=tree_id) + body
        if case.header_ops:
            msg = mutate(msg, case.header_ops, HEADER_FIELDS, 0)
        msg = mutate(msg, case.body_ops, FIELDS.get(case.name, [(0, 2)]), HEADER_SIZE)
        msg = c.finish(msg, sign=c.signing and case.sign)
        if case.encrypt and c.keys and c.keys.encryption_key and c.dialect >= 0x0300:
            msg = auth.encrypt_message(c.keys, c.session_id, msg)
        c.send_frame(msg)
        self.sent += 1
        if case.name in STATE_BREAKERS or case.header_ops:
            self.dirty = True
        if command == Command.CANCEL:
            c.await_replies(set(), 0.05)
            return
        # A mutated header may carry another MessageId: then any answer is the answer.
        self._expect(c, {mid}, case.name, any_reply=bool(case.header_ops))

    def do_compound(self, case: Case):
        c = self.session()
        tmpl = templates(c, case.variant)
        pieces, mids = [], set()
        for i, name in enumerate(case.parts):
            command, body, tree_id = tmpl[name]
            if case.related and i and command in (Command.READ, Command.WRITE, Command.CLOSE,
                                                  Command.QUERY_INFO, Command.FLUSH):
                body = body.replace(c.file_id, wire.RELATED_FILE_ID)
            mid = c.alloc()
            if command != Command.CANCEL:
                mids.add(mid)
            flags = Flags.RELATED_OPERATIONS if case.related and i else 0
            msg = c.header(command, mid, tree_id=tree_id, flags=flags) + body
            if i != len(case.parts) - 1:
                msg += b"\0" * (wire.pad8(len(msg)) - len(msg))
                msg = msg[:20] + struct.pack("<I", len(msg)) + msg[24:]
            pieces.append(c.finish(msg, sign=c.signing and case.sign))
            if name in STATE_BREAKERS:
                self.dirty = True
        msg = mutate(b"".join(pieces), case.body_ops, [], HEADER_SIZE)
        if case.encrypt and c.keys and c.keys.encryption_key and c.dialect >= 0x0300:
            msg = auth.encrypt_message(c.keys, c.session_id, msg)
        c.send_frame(msg)
        self.sent += 1
        if case.body_ops:
            self.dirty = True
        self._expect(c, mids, "compound", any_reply=bool(case.body_ops))

    def do_fresh_negotiate(self, case: Case):
        c = self.fresh()
        try:
            v = case.variant
            dialects = [[0x0202], [0x0311], [0x0202, 0x0210, 0x0300, 0x0302, 0x0311], [0x02FF],
                        [], [0x0311, 0x0311]][v % 6]
            contexts = [wire.preauth_context(os.urandom(32)),
                        wire.encryption_context([1, 2, 3, 4]),
                        wire.signing_context([0, 1, 2]),
                        wire.negotiate_context(5, wire.utf16("host")),  # NETNAME
                        wire.negotiate_context(3, struct.pack("<HHI", 1, 0, 0) + b"\1\0"),
                        wire.negotiate_context(6, b"\0\0\0\0"),  # TRANSPORT
                        wire.negotiate_context(7, struct.pack("<H", 0))]  # RDMA
            ctx = contexts[:(v // 6) % (len(contexts) + 1)] if 0x0311 in dialects else []
            body = wire.negotiate_request(dialects, 1 + (v % 2), 0x7F, os.urandom(16), ctx)
            msg = c.header(Command.NEGOTIATE, 0, session_id=0, tree_id=0) + body
            msg = mutate(msg, case.body_ops, FIELDS["negotiate"], HEADER_SIZE)
            c.send_frame(msg)
            self.sent += 1
            got = c.await_replies({0})
            if 0 in got and got[0][0][3] == 0:
                # A second NEGOTIATE on a negotiated connection must not be accepted.
                c.send_frame(c.header(Command.NEGOTIATE, 1, session_id=0) + body)
                self.sent += 1
                c.await_replies({1})
        finally:
            self.bad_frames += c.bad_frames
            c.close()

    def do_smb1_negotiate(self, case: Case):
        c = self.fresh()
        try:
            dialects = [b"\x02NT LM 0.12\0", b"\x02SMB 2.002\0", b"\x02SMB 2.???\0"]
            names = b"".join(dialects[:1 + case.variant % 3])
            smb1 = (b"\xffSMB" + bytes([0x72]) + b"\0" * 4 + b"\x18" + b"\x53\xc8"
                    + b"\0" * 12 + b"\xff\xfe\0\0\0\0" + b"\0\0" + b"\0"
                    + struct.pack("<H", len(names)) + names)
            msg = mutate(smb1, case.body_ops, [(33, 2), (35, 2)], 4)
            c.send_frame(msg)
            self.sent += 1
            got = c.await_replies({0})
            if 0 in got:  # the multi-protocol answer; a SMB2 NEGOTIATE may follow
                c.next_mid = 1
                c.send_frame(c.header(Command.NEGOTIATE, 1, session_id=0) +
                             wire.negotiate_request([0x0210, 0x0300], 1, 0, os.urandom(16)))
                self.sent += 1
                c.await_replies({1})
        finally:
            self.bad_frames += c.bad_frames
            c.close()

    def do_setup_leg1(self, case: Case):
        c = self.fresh()
        try:
            c.negotiate(DIALECTS[case.variant % len(DIALECTS)])
            ntlm = auth.NtlmAuth("alice", "pw", spnego=bool(case.variant % 2))
            body = wire.session_setup_request(ntlm.negotiate_token(), 1 + (case.variant % 3 == 0),
                                              flags=case.variant % 2)
            mid = c.alloc()
            msg = mutate(c.header(Command.SESSION_SETUP, mid, session_id=0) + body,
                         case.body_ops, FIELDS["session_setup"], HEADER_SIZE)
            c.send_frame(msg)
            self.sent += 1
            c.await_replies({mid})
        finally:
            self.bad_frames += c.bad_frames
            c.close()

    def do_setup_leg2(self, case: Case):
        """A valid first leg, then a mutated NTLM AUTHENTICATE (and a TREE_CONNECT if it
        somehow succeeded, to exercise whatever session it made)."""
        c = self.fresh()
        try:
            c.negotiate(DIALECTS[case.variant % len(DIALECTS)])
            ntlm = auth.NtlmAuth(self.srv.user, self.srv.password,
                                 spnego=bool(case.variant % 2))
            h, resp, _ = c.call(Command.SESSION_SETUP,
                                wire.session_setup_request(ntlm.negotiate_token(), 1),
                                session_id=0)
            if h[3] != STATUS_MORE_PROCESSING_REQUIRED:
                return
            token = ntlm.authenticate_token(wire.parse_session_setup_response(resp)[1])
            mid = c.alloc()
            # Positions fold into the token, where NTLM's own offsets and lengths live.
            msg = c.header(Command.SESSION_SETUP, mid, session_id=h[11]) + \
                wire.session_setup_request(token, 1)
            msg = mutate(msg, case.body_ops, FIELDS["session_setup"], HEADER_SIZE + 24
                         if case.variant % 3 else HEADER_SIZE)
            c.send_frame(msg)
            self.sent += 1
            got = c.await_replies({mid})
            if mid in got and got[mid][0][3] == 0:
                c.session_id = h[11]
                mid = c.alloc()
                c.send_frame(c.header(Command.TREE_CONNECT, mid) +
                             wire.tree_connect_request(f"\\\\{c.host}\\share"))
                self.sent += 1
                c.await_replies({mid})
        finally:
            self.bad_frames += c.bad_frames
            c.close()

    def do_transform(self, case: Case):
        v = case.variant
        if v % 4 == 0:
            c = self.fresh()  # a transform before NEGOTIATE
            try:
                c.send_frame(mutate(wire.TRANSFORM_ID + os.urandom(48) + b"\xfeSMB" + os.urandom(60),
                                    case.body_ops, [], 4))
                self.sent += 1
                c.await_replies({0})
            finally:
                c.close()
            return
        c = self.session()
        self.dirty = True
        mid = c.alloc()
        inner = c.finish(c.header(Command.ECHO, mid) + wire.small_request())
        if c.keys and c.keys.encryption_key and c.dialect >= 0x0300:
            sid = [c.session_id, c.session_id, 0, 0xDEADBEEF][v % 4]
            msg = auth.encrypt_message(c.keys, sid, inner)
        else:
            msg = wire.TRANSFORM_HEADER.pack(wire.TRANSFORM_ID, os.urandom(16), os.urandom(16),
                                             len(inner), 0, 1, c.session_id) + inner
        # Fields of the transform header: Signature, Nonce, OriginalMessageSize, Flags, SessionId.
        msg = mutate(msg, case.body_ops, [(0, 8), (16, 8), (32, 4), (36, 2), (38, 2),
                                          (40, 8)], 4)
        c.send_frame(msg)
        self.sent += 1
        c.await_replies({mid})

    def do_netbios(self, case: Case):
        c = self.fresh()
        try:
            v = case.variant
            smb2 = c.header(Command.NEGOTIATE, 0, session_id=0) + wire.negotiate_request(
                [0x0210], 1, 0, os.urandom(16))
            payload = [smb2, case.raw, b"\xfeSMB", b"", smb2[:63]][v % 5]
            length = max(0, len(payload) + case.length_delta)
            frame_type = [0, 0, 0, 0x85, 0x81, 0x82, 0xFF][v % 7]
            if v % 11 == 0:
                length = 0xFFFFFF
            c.send_bytes(bytes([frame_type]) + length.to_bytes(3, "big") + payload)
            self.sent += 1
            c.await_replies({0}, timeout=0.2)
        finally:
            self.bad_frames += c.bad_frames
            c.close()


# --- outside-the-share snapshot ------------------------------------------------------------

def snapshot(*roots: str) -> dict[str, tuple]:
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                st_ = os.lstat(p)
                out[p] = (st_.st_mode, st_.st_size, st_.st_mtime_ns)
    return out


def outside_snapshot(base: str, share: str) -> dict[str, tuple]:
    """Everything under `base` except the share's own subtree."""
    return {k: v for k, v in snapshot(base).items()
            if k != share and not k.startswith(share + os.sep)}


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    share = base / "share"
    share.mkdir()
    sibling = base / "sibling"
    sibling.mkdir()
    for p in (base / "sentinel.txt", sibling / "sentinel.txt", base / "escape.txt"):
        p.write_text("sentinel\n")
    (share / "link_out").symlink_to(sibling)
    with smbd_py_server(str(share), port=FUZZ_PORT, log_level=LOG_LEVEL) as srv:
        yield srv, base


def test_fuzz_live(fuzz_env):
    srv, base = fuzz_env
    before = outside_snapshot(str(base), srv.share_path)
    fz = Fuzzer(srv, base)
    start = time.monotonic()
    executed = [0]

    @settings(max_examples=N_EXAMPLES, deadline=None, database=None, derandomize=False,
              phases=[Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def fuzz(case):
        if time.monotonic() - start > BUDGET_S:
            return
        executed[0] += 1
        fz.run(case)

    try:
        fuzz()
    finally:
        fz.drop()
        elapsed = time.monotonic() - start
        print(f"\nfuzz: {executed[0]} examples, {fz.sent} messages sent, "
              f"{fz.disconnects} disconnects, {elapsed:.1f} s; per kind {fz.per_kind}; "
              f"no answer (connection restarted): {fz.silent}")

    assert executed[0] >= min(N_EXAMPLES, 200), "the time budget ran out almost at once"
    assert not fz.bad_frames, f"non-SMB2 or non-response frames from the server: {fz.bad_frames[:5]}"
    assert srv.alive(), srv.log_tail()

    # A well-formed client still works end to end.
    smbclient = require_tool("smbclient")
    src = base / "upload.bin"
    src.write_bytes(os.urandom(100_000))
    dst = base / "download.bin"
    cmd = (f"put {src} after_fuzz.bin; get after_fuzz.bin {dst}; del after_fuzz.bin; ls")
    r = subprocess.run([smbclient, srv.unc, "-p", str(srv.port), "-U",
                        f"{srv.user}%{srv.password}", "-m", "SMB3", "-c", cmd],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr + srv.log_tail()
    assert dst.read_bytes() == src.read_bytes()
    src.unlink()
    dst.unlink()

    after = outside_snapshot(str(base), srv.share_path)
    assert after == before, "files outside the share changed: " + repr(
        {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
         if before.get(k) != after.get(k)})
    fz.check_server(Case("final"))
