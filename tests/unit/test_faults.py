"""protocol.faults: which requests a fault plan acts on, and what its wrapper does
(fail before the handler runs, delay or drop the response after it ran)."""
from __future__ import annotations

import asyncio
import struct
import time
from types import SimpleNamespace

import pytest

from smbd_py.protocol.faults import (Fault, FaultPlan, command_of, create_name,
                                     normalize_path, status_of)
from smbd_py.wire.header import Command, HEADER_SIZE
from smbd_py.wire.status import NtStatus, SmbError


def create_req(name: str):
    """A CREATE request as the connection hands it over: header + body, the name at
    the offset the body's NameOffset gives (counted from the header's start)."""
    enc = name.encode("utf-16-le")
    fixed = bytearray(56)
    struct.pack_into("<H", fixed, 0, 57)
    struct.pack_into("<HH", fixed, 44, HEADER_SIZE + 56, len(enc))
    raw = bytes(HEADER_SIZE) + bytes(fixed) + enc
    mv = memoryview(raw)
    return SimpleNamespace(hdr=SimpleNamespace(command=Command.CREATE), body=mv[HEADER_SIZE:],
                           raw=mv)


def req_of(command: Command):
    return SimpleNamespace(hdr=SimpleNamespace(command=command), body=memoryview(b""),
                           raw=memoryview(bytes(HEADER_SIZE)))


async def ok_handler(req):
    ok_handler.calls += 1
    return b"body"
ok_handler.calls = 0


async def error_handler(req):
    raise SmbError(NtStatus.OBJECT_NAME_NOT_FOUND)


def test_names_and_values():
    assert command_of("create") is Command.CREATE
    assert command_of(0x0D) is Command.ECHO
    assert command_of(Command.READ) is Command.READ
    with pytest.raises(ValueError):
        command_of("OPEN")
    assert status_of("STATUS_ACCESS_DENIED") == 0xC0000022
    assert status_of("access_denied") == 0xC0000022
    assert status_of(0xC0000043) == 0xC0000043
    with pytest.raises(ValueError):
        status_of("NOT_A_STATUS")
    with pytest.raises(ValueError):
        status_of(1 << 32)
    assert normalize_path("/Dir/File.TXT") == normalize_path("dir\\file.txt")


def test_bad_rules_are_refused():
    with pytest.raises(ValueError):
        Fault("explode", "CREATE")
    with pytest.raises(ValueError):
        Fault("fail", "CREATE", count=0)
    with pytest.raises(ValueError):
        Fault("delay", "READ", seconds=-1)
    with pytest.raises(ValueError):
        Fault("fail", "READ", path="a.txt")   # only CREATE names a path


def test_create_name_is_read_from_the_request():
    assert create_name(create_req("dir\\f.txt")) == "dir\\f.txt"
    assert create_name(create_req("")) == ""
    assert create_name(req_of(Command.CREATE)) is None      # body too short


def test_no_rule_keeps_the_handler_itself():
    plan = FaultPlan()
    assert plan.wrap(create_req("a"), ok_handler) is ok_handler
    plan.fail_next(NtStatus.ACCESS_DENIED, "CREATE")
    assert plan.wrap(req_of(Command.READ), ok_handler) is ok_handler


async def test_fail_next_counts_and_then_stops():
    plan = FaultPlan()
    f = plan.fail_next("ACCESS_DENIED", count=2)
    ok_handler.calls = 0
    for _ in range(2):
        h = plan.wrap(create_req("x.txt"), ok_handler)
        with pytest.raises(SmbError) as e:
            await h(None)
        assert e.value.status == NtStatus.ACCESS_DENIED
    assert ok_handler.calls == 0           # a failed request is never handled
    assert f.hits == 2 and f.spent and plan.rules == []
    assert plan.wrap(create_req("x.txt"), ok_handler) is ok_handler


async def test_path_filter_is_case_and_separator_insensitive():
    plan = FaultPlan()
    f = plan.fail_next(0xC0000043, path="/Sub/Target.txt")
    assert plan.wrap(create_req("sub\\other.txt"), ok_handler) is ok_handler
    assert f.hits == 0
    h = plan.wrap(create_req("SUB\\target.TXT"), ok_handler)
    with pytest.raises(SmbError) as e:
        await h(None)
    assert e.value.status == 0xC0000043 and f.hits == 1


async def test_unlimited_rule_and_removal():
    plan = FaultPlan()
    f = plan.drop_next("ECHO", count=None)
    for _ in range(5):
        assert await plan.wrap(req_of(Command.ECHO), ok_handler)(None) is None
    assert f.hits == 5 and not f.spent
    plan.remove(f)
    assert plan.wrap(req_of(Command.ECHO), ok_handler) is ok_handler
    plan.remove(f)   # twice is harmless


async def test_delay_applies_to_success_and_error_responses():
    plan = FaultPlan()
    plan.delay("READ", 0.2, count=2)
    t0 = time.monotonic()
    assert await plan.wrap(req_of(Command.READ), ok_handler)(None) == b"body"
    assert time.monotonic() - t0 >= 0.19
    t0 = time.monotonic()
    with pytest.raises(SmbError):
        await plan.wrap(req_of(Command.READ), error_handler)(None)
    assert time.monotonic() - t0 >= 0.19
    assert plan.rules == []


async def test_drop_runs_the_handler_and_swallows_errors_too():
    plan = FaultPlan()
    plan.drop_next("WRITE", count=2)
    ok_handler.calls = 0
    assert await plan.wrap(req_of(Command.WRITE), ok_handler)(None) is None
    assert ok_handler.calls == 1            # the request did happen; only the answer is lost
    assert await plan.wrap(req_of(Command.WRITE), error_handler)(None) is None


async def test_kinds_combine_and_rules_apply_in_order():
    plan = FaultPlan()
    first = plan.fail_next("ACCESS_DENIED")
    second = plan.fail_next("SHARING_VIOLATION")
    d = plan.delay("CREATE", 0.1)
    t0 = time.monotonic()
    with pytest.raises(SmbError) as e:
        await plan.wrap(create_req("a"), ok_handler)(None)
    assert e.value.status == NtStatus.ACCESS_DENIED
    assert time.monotonic() - t0 >= 0.09
    assert (first.hits, second.hits, d.hits) == (1, 0, 1)
    with pytest.raises(SmbError) as e:
        await plan.wrap(create_req("a"), ok_handler)(None)
    assert e.value.status == NtStatus.SHARING_VIOLATION
    plan.clear()
    assert plan.wrap(create_req("a"), ok_handler) is ok_handler


async def test_delay_does_not_hold_up_other_requests():
    plan = FaultPlan()
    plan.delay("READ", 0.3)
    slow = asyncio.ensure_future(plan.wrap(req_of(Command.READ), ok_handler)(None))
    t0 = time.monotonic()
    assert await plan.wrap(req_of(Command.READ), ok_handler)(None) == b"body"
    assert time.monotonic() - t0 < 0.2
    assert not slow.done()
    assert await slow == b"body"
