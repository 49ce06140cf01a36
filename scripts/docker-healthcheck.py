#!/usr/bin/env python3
"""Health probe for the smbd_py container: send one SMB2 NEGOTIATE (dialect 2.0.2) to the
server and exit 0 if it answers with an SMB2 NEGOTIATE response carrying STATUS_SUCCESS.
Standalone on purpose (standard library only): it checks the server over the wire, not
that the package imports.
    docker-healthcheck.py [HOST] [PORT]      (default 127.0.0.1 445)"""
import os
import socket
import struct
import sys

HOST = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 445
TIMEOUT_S = 3.0

# MS-SMB2 2.2.1.2 sync header: ProtocolId, StructureSize 64, CreditCharge, Status,
# Command 0 (NEGOTIATE), CreditRequest 1, Flags, NextCommand, MessageId 0, Reserved,
# TreeId, SessionId, Signature.
header = struct.pack("<4sHHIHHIIQIIQ16s", b"\xfeSMB", 64, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0,
                     b"\0" * 16)
# MS-SMB2 2.2.3: StructureSize 36, DialectCount 1, SecurityMode SIGNING_ENABLED,
# Reserved, Capabilities, ClientGuid, ClientStartTime, Dialects[0] = 0x0202.
body = struct.pack("<HHHHI16sQH", 36, 1, 1, 0, 0, os.urandom(16), 0, 0x0202)
msg = header + body

try:
    with socket.create_connection((HOST, PORT), timeout=TIMEOUT_S) as s:
        s.sendall(struct.pack(">I", len(msg)) + msg)
        data = b""
        while len(data) < 4 + 64:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
except OSError as e:
    print(f"unhealthy: {e}")
    sys.exit(1)
if len(data) < 4 + 64 or data[4:8] != b"\xfeSMB":
    print(f"unhealthy: not an SMB2 answer: {data[:16]!r}")
    sys.exit(1)
status, command = struct.unpack_from("<IH", data, 4 + 8)
if command != 0 or status != 0:
    print(f"unhealthy: NEGOTIATE answered command {command} status {status:#010x}")
    sys.exit(1)
print("healthy")
