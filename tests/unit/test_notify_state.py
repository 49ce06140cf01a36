"""protocol.notify without a network: FILE_NOTIFY_INFORMATION encoding (checked against
the test client's independent parser), the completion-filter mapping, coalescing, the
handle's buffer and its overflow, and how pending requests complete. The live path is
tests/test_notify.py and smbtorture's smb2.notify."""
from __future__ import annotations

import asyncio
import struct
from types import SimpleNamespace

from hypothesis import given, strategies as st

from smbd_py.fs import dirwatch as DW
from smbd_py.protocol import notify as N
from smbd_py.wire.status import NtStatus
from tests.smb2client.wire import parse_notify_information

ADDED, REMOVED, MODIFIED = DW.FILE_ACTION_ADDED, DW.FILE_ACTION_REMOVED, DW.FILE_ACTION_MODIFIED
OLD, NEW = DW.FILE_ACTION_RENAMED_OLD_NAME, DW.FILE_ACTION_RENAMED_NEW_NAME


def test_encoding_layout():
    data = N.encode_changes([(ADDED, "a"), (REMOVED, "dir\\bc")])
    # First record: 12 + 2 bytes of name, padded to 16.
    assert struct.unpack_from("<III", data, 0) == (16, ADDED, 2)
    assert data[12:14] == "a".encode("utf-16-le") and data[14:16] == b"\0\0"
    # Last record: NextEntryOffset 0, not padded.
    assert struct.unpack_from("<III", data, 16) == (0, REMOVED, 12)
    assert data[28:] == "dir\\bc".encode("utf-16-le")
    assert N.entry_size("a") == 16 and N.entry_size("ab") == 16 and N.entry_size("abc") == 20
    assert N.encode_changes([]) == b""


@given(st.lists(st.tuples(st.integers(1, 5), st.text(min_size=1, max_size=40).filter(
    lambda s: "\0" not in s and not any(0xD800 <= ord(c) <= 0xDFFF for c in s))),
    min_size=1, max_size=20))
def test_encoding_round_trips_through_the_clients_parser(changes):
    data = N.encode_changes(changes)
    assert parse_notify_information(data) == changes
    assert len(data) <= sum(N.entry_size(n) for _, n in changes)


def state(flt=N.FILE_NOTIFY_CHANGE_FILE_NAME | N.FILE_NOTIFY_CHANGE_DIR_NAME, max_len=1000):
    op = SimpleNamespace(closed=False)
    return N.NotifyState(op, flt, False, max_len)


def test_filter_mapping():
    s = state(N.FILE_NOTIFY_CHANGE_FILE_NAME)
    s.on_change(ADDED, "f", False, DW.CHANGE_NAME)
    s.on_change(ADDED, "d", True, DW.CHANGE_NAME)           # DIR_NAME not asked
    s.on_change(MODIFIED, "f", False, DW.CHANGE_META)
    s.on_change(MODIFIED, "f", False, DW.CHANGE_DATA)
    assert s.changes == [(ADDED, "f")]
    s = state(N.FILE_NOTIFY_CHANGE_DIR_NAME | N.FILE_NOTIFY_CHANGE_ATTRIBUTES)
    s.on_change(ADDED, "f", False, DW.CHANGE_NAME)
    s.on_change(ADDED, "d", True, DW.CHANGE_NAME)
    s.on_change(MODIFIED, "f", False, DW.CHANGE_META)
    s.on_change(MODIFIED, "g", False, DW.CHANGE_DATA)       # SIZE/LAST_WRITE not asked
    assert s.changes == [(ADDED, "d"), (MODIFIED, "f")]
    s = state(N.FILE_NOTIFY_CHANGE_SIZE)
    s.on_change(MODIFIED, "f", False, DW.CHANGE_DATA)
    s.on_change(MODIFIED, "g", False, DW.CHANGE_META)
    assert s.changes == [(MODIFIED, "f")]


def test_identical_consecutive_records_coalesce():
    s = state(N.FILE_NOTIFY_CHANGE_SIZE | N.FILE_NOTIFY_CHANGE_FILE_NAME)
    for _ in range(50):
        s.on_change(MODIFIED, "big.bin", False, DW.CHANGE_DATA)
    s.on_change(REMOVED, "big.bin", False, DW.CHANGE_NAME)
    s.on_change(MODIFIED, "big.bin", False, DW.CHANGE_DATA)
    assert s.changes == [(MODIFIED, "big.bin"), (REMOVED, "big.bin"), (MODIFIED, "big.bin")]


def test_buffer_overflow_then_enum_dir_then_fresh():
    s = state(max_len=40)      # room for two 16-byte records
    for name in ("a", "b", "c"):
        s.on_change(ADDED, name, False, DW.CHANGE_NAME)
    assert s.ready() and s.take(65536) == NtStatus.NOTIFY_ENUM_DIR
    assert not s.ready()
    s.on_change(ADDED, "d", False, DW.CHANGE_NAME)
    assert parse_notify_information(s.take(65536)) == [(ADDED, "d")]


def test_request_buffer_too_small_is_enum_dir():
    s = state()
    s.on_change(ADDED, "name.txt", False, DW.CHANGE_NAME)
    assert s.take(8) == NtStatus.NOTIFY_ENUM_DIR
    assert not s.ready(), "the changes went with the ENUM_DIR answer"


class FakeReq:
    def __init__(self) -> None:
        self.cancelled_with = None

    def cancel(self, status) -> bool:
        self.cancelled_with = status
        return True


async def test_pending_requests_complete_in_order_and_renames_stay_together():
    loop = asyncio.get_running_loop()
    s = state()
    w1 = N._Waiter(FakeReq(), loop.create_future(), 65536)
    w2 = N._Waiter(FakeReq(), loop.create_future(), 65536)
    s.waiters += [w1, w2]
    s.on_change(OLD, "a", False, DW.CHANGE_NAME)
    assert not w1.fut.done(), "the old name waits for its new name"
    s.on_change(NEW, "b", False, DW.CHANGE_NAME)
    assert parse_notify_information(w1.fut.result()) == [(OLD, "a"), (NEW, "b")]
    assert not w2.fut.done()
    s.on_change(ADDED, "c", False, DW.CHANGE_NAME)
    assert parse_notify_information(w2.fut.result()) == [(ADDED, "c")]
    assert not s.waiters and not s.ready()


async def test_cancel_on_close_releases_the_watch_and_gone_is_delete_pending():
    loop = asyncio.get_running_loop()
    released = []
    s = state()
    s.watcher = SimpleNamespace(unsubscribe=released.append)
    s.sub = object()
    req = FakeReq()
    s.waiters.append(N._Waiter(req, loop.create_future(), 100))
    s.op.closed = True
    s.cancel(NtStatus.NOTIFY_CLEANUP)
    assert req.cancelled_with == NtStatus.NOTIFY_CLEANUP and len(released) == 1
    s2 = state()
    w = N._Waiter(FakeReq(), loop.create_future(), 100)
    s2.waiters.append(w)
    s2.on_gone()
    assert w.fut.result() == NtStatus.DELETE_PENDING
    assert s2.take(100) == NtStatus.DELETE_PENDING


async def test_delete_pending_hook_fails_waiters_of_every_handle():
    loop = asyncio.get_running_loop()
    a, b = state(), state()
    wa = N._Waiter(FakeReq(), loop.create_future(), 100)
    a.waiters.append(wa)
    fs = SimpleNamespace(opens=[SimpleNamespace(notify=a), SimpleNamespace(notify=b),
                                SimpleNamespace(notify=None)])
    N.delete_pending(fs)
    assert wa.fut.result() == NtStatus.DELETE_PENDING and not a.waiters
