"""smb2client: a small, break-aware asyncio SMB2/3 client for the project's tests.

It requests oplocks and leases, surfaces every break notification as a typed event on
``client.breaks`` and leaves acks, write-backs and closes to the test. Modules: ``wire``
(encodings, no I/O), ``auth`` (NTLMSSP/SPNEGO, KDF, signing, encryption), ``client``
(connection, credits, routing).

    async with await Smb2Client.connect("127.0.0.1", port, dialect=0x0311) as c:
        await c.login("user", "pass")                 # sign=None|True|False, encrypt=False
        tid = await c.tree_connect("share")
        r = await c.create(tid, "f.txt", oplock=Oplock.BATCH)        # or lease=LeaseRequest(key)
        r.status, r.file_id, r.oplock_level, r.lease_state, r.lease_epoch, r.lease_flags
        await c.write(tid, r.file_id, 0, b"data"); data = await c.read(tid, r.file_id, 0, 4)
        brk = await c.next_break(5)                    # OplockBreak | LeaseBreak
        ack = await c.ack_lease(tid, brk.lease_key, brk.new_state); ack.status
        await c.ack_oplock(tid, r.file_id, Oplock.LEVEL_II)
        p = await c.create_pending(tid, "f.txt")       # or any method with wait=False
        await p.interim   # interim STATUS_PENDING Response, or None if it completed directly
        r = await p       # parsed result; p.final -> raw Response; await c.cancel(p)

Every command method takes ``expect=`` (a status, a collection, or None for "any"):
an unexpected status raises ``Smb2Error(status, command)``. ``submit``/``request`` send
arbitrary bodies, ``compound`` sends chains, ``send_raw`` writes bytes as they are
(``alloc_message_id`` + ``sign`` help build them).
"""
from .client import PendingRequest, Response, Smb2Client, Smb2SignatureError
from .wire import (Access, Cap, Cipher, Command, CreateOptions, CreateResponse, Dialect,
                   Disposition, FileAttributes, FileInfoClass, InfoType, LeaseBreak,
                   LeaseRequest, LeaseState, LockFlags, Oplock, OplockBreak, ShareAccess,
                   SigningAlgorithm, Smb2Error, new_lease_key, status_name)
from .wire import R, H, W, RH, RW, RWH

__all__ = [
    "Smb2Client", "PendingRequest", "Response", "Smb2Error", "Smb2SignatureError",
    "Access", "Cap", "Cipher", "Command", "CreateOptions", "CreateResponse", "Dialect",
    "Disposition", "FileAttributes", "FileInfoClass", "InfoType", "LeaseBreak",
    "LeaseRequest", "LeaseState", "LockFlags", "Oplock", "OplockBreak", "ShareAccess",
    "SigningAlgorithm", "new_lease_key", "status_name", "R", "H", "W", "RH", "RW", "RWH",
]
