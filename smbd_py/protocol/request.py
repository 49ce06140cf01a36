"""One SMB2 request in flight: its header, body, resolved session/tree, and async state."""
from __future__ import annotations

import asyncio
from typing import Any

from ..wire.header import Command, Header, RELATED_FILE_ID
from ..wire.status import NtStatus, SmbError


class Request:
    """The class attributes are every request's starting values: __init__ sets only what
    differs per request (a plain dict-backed instance, no __slots__: a request lives for
    one round trip, and ~20 stores fewer per request are measurable in the open+close
    rate, bench/README.md). Assigning one gives this request its own value."""

    session: Any = None
    tree: Any = None
    status = NtStatus.SUCCESS
    async_id = 0
    interim_sent = False
    cancel_future: asyncio.Future | None = None
    was_signed = False
    credits_granted = 0
    in_compound = False
    related = False
    out_file_id: bytes | None = None   # for related compound requests that follow
    error_data = b""
    unsigned_response = False
    disconnect_after = False
    task = None
    prev_status = NtStatus.SUCCESS
    # The session whose key decrypted this request (it came in a TRANSFORM_HEADER):
    # its responses are encrypted with that session's key and are not signed.
    encrypted_by: Any = None
    last_in_chain = True  # NextCommand == 0 (set by the connection)
    # Responses of earlier requests of the same compound not sent yet (a shared list).
    chain_responses: list | None = None
    # Work the handler left for after its response is written (a plain CLOSE's
    # bookkeeping): it runs before the loop takes anything else.
    after_send: Any = None

    def __init__(self, conn: Any, hdr: Header, body: memoryview, raw: memoryview) -> None:
        self.conn = conn
        self.hdr = hdr
        self.body = body          # the command body (after the 64-byte header)
        self.raw = raw            # the whole message, header included (signing, preauth)

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
