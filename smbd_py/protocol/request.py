"""One SMB2 request in flight: its header, body, resolved session/tree, and async state."""
from __future__ import annotations

import asyncio
from typing import Any

from ..wire.header import Command, Header, RELATED_FILE_ID
from ..wire.status import NtStatus, SmbError


class Request:
    __slots__ = ("conn", "hdr", "body", "raw", "session", "tree", "status", "async_id",
                 "interim_sent", "cancel_future", "was_signed", "credits_granted",
                 "in_compound", "related", "out_file_id", "error_data", "send_immediately",
                 "unsigned_response", "disconnect_after", "task", "prev_status", "encrypted_by",
                 "last_in_chain", "chain_responses", "after_send")

    def __init__(self, conn: Any, hdr: Header, body: memoryview, raw: memoryview) -> None:
        self.conn = conn
        self.hdr = hdr
        self.body = body          # the command body (after the 64-byte header)
        self.raw = raw            # the whole message, header included (signing, preauth)
        self.session: Any = None
        self.tree: Any = None
        self.status = NtStatus.SUCCESS
        self.async_id = 0
        self.interim_sent = False
        self.cancel_future: asyncio.Future | None = None
        self.was_signed = False
        self.credits_granted = 0
        self.in_compound = False
        self.related = False
        self.out_file_id: bytes | None = None   # for related compound requests that follow
        self.error_data = b""
        self.unsigned_response = False
        self.disconnect_after = False
        self.task = None
        self.prev_status = NtStatus.SUCCESS
        # The session whose key decrypted this request (it came in a TRANSFORM_HEADER):
        # its responses are encrypted with that session's key and are not signed.
        self.encrypted_by: Any = None
        self.last_in_chain = True  # NextCommand == 0 (set by the connection)
        # Responses of earlier requests of the same compound not sent yet (a shared list).
        self.chain_responses: list | None = None
        # Work the handler left for after its response is written (a plain CLOSE's
        # bookkeeping): it runs before the loop takes anything else.
        self.after_send: Any = None

    async def go_async(self) -> None:
        """Send the interim STATUS_PENDING response now (MS-SMB2 3.3.4.2); the final response
        follows as an async response. Idempotent.

        In the middle of a compound chain only CREATE may go async (it waits for breaks,
        which end); anything else fails with STATUS_INTERNAL_ERROR so the rest of the
        chain is answered, as Windows does (MS-SMB2 3.3.5.2.7 <262>, smbtorture
        smb2.compound.interim2; Samba does the same)."""
        if self.in_compound and not self.last_in_chain and self.hdr.command != Command.CREATE:
            raise SmbError(NtStatus.INTERNAL_ERROR)
        if not self.interim_sent:
            self.conn.send_interim(self)

    async def wait(self, aw: Any, timeout: float | None = None) -> Any:
        """Await `aw` unless the request is cancelled (CANCEL, logoff, disconnect) first."""
        if self.cancel_future is None:
            self.cancel_future = asyncio.get_running_loop().create_future()
        fut = asyncio.ensure_future(aw)
        done, _ = await asyncio.wait({fut, self.cancel_future}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if fut in done:
            return fut.result()
        fut.cancel()
        if self.cancel_future in done:
            raise SmbError(self.cancel_future.result())
        raise TimeoutError

    def cancel(self, status: int = NtStatus.CANCELLED) -> bool:
        if self.cancel_future is None:
            self.cancel_future = asyncio.get_running_loop().create_future()
        if not self.cancel_future.done():
            self.cancel_future.set_result(status)
            return True
        return False

    def file_id(self, raw: bytes) -> bytes:
        """The FileId a request names, with related compounds' 0xFF..FF resolved
        (MS-SMB2 3.3.5.2.7.2)."""
        if raw == RELATED_FILE_ID:
            if self.related and self.out_file_id is not None:
                return self.out_file_id
            if self.related and self.prev_status not in (NtStatus.SUCCESS, NtStatus.BUFFER_OVERFLOW):
                raise SmbError(self.prev_status)
            raise SmbError(NtStatus.FILE_CLOSED)
        return raw

    @property
    def cancelled(self) -> bool:
        return self.cancel_future is not None and self.cancel_future.done()
