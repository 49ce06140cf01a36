"""protocol.durable's context rules without a server: which combinations of DHnQ, DHnC,
DH2Q and DH2C a CREATE may carry (MS-SMB2 3.3.5.9.6/.7/.10/.12, smbtorture
smb2.durable-v2-open.create-blob), their sizes, the v2 timeout default and cap, v2
contexts ignored below 3.0, and the grant rule (batch oplock or a lease with H)."""
from __future__ import annotations

import struct
import uuid

import pytest

from smbd_py.oplocks.types import (LEASE_H, LEASE_R, LEASE_W, OPLOCK_BATCH, OPLOCK_EXCLUSIVE,
                                   OPLOCK_II, OPLOCK_LEASE, Grant)
from smbd_py.protocol import durable
from smbd_py.wire.status import NtStatus, SmbError

FID = bytes(range(16))
GUID = uuid.uuid4().bytes
DHNQ = (b"DHnQ", bytes(16))
DHNC = (b"DHnC", FID)
DH2Q = (b"DH2Q", struct.pack("<IIQ16s", 0, 0, 0, GUID))
DH2C = (b"DH2C", struct.pack("<16s16sI", FID, GUID, 0))


def parse(*ctx, dialect=0x0311):
    return durable.parse(dict(ctx), dialect)


@pytest.mark.parametrize("ctx", [(DH2C, DHNQ), (DHNC, DH2Q), (DHNC, DH2C), (DH2C, DH2Q),
                                 (DHNQ, DH2Q)])
def test_conflicting_combinations_are_invalid_parameter(ctx):
    with pytest.raises(SmbError) as e:
        parse(*ctx)
    assert e.value.status == NtStatus.INVALID_PARAMETER


def test_reconnect_v1_ignores_a_durable_request_beside_it():
    ask = parse(DHNC, DHNQ)
    assert ask.kind == "reconnect_v1" and ask.reconnect and ask.file_id == FID


def test_reconnect_v2_carries_file_id_and_create_guid():
    ask = parse(DH2C)
    assert (ask.kind, ask.file_id, ask.create_guid) == ("reconnect_v2", FID, GUID)
    assert durable.is_reconnect(dict([DH2C])) and not durable.is_reconnect(dict([DH2Q]))


@pytest.mark.parametrize("ctx", [(b"DHnQ", bytes(8)), (b"DHnC", bytes(15)),
                                 (b"DH2Q", bytes(31)), (b"DH2C", bytes(40))])
def test_wrong_sizes_are_invalid_parameter(ctx):
    with pytest.raises(SmbError):
        parse(ctx)


@pytest.mark.parametrize("timeout,expected", [(0, 60_000), (1000, 1000),
                                              (0xFFFFFFFF, 300_000)])
def test_v2_timeout_default_and_cap(timeout, expected):
    ask = parse((b"DH2Q", struct.pack("<IIQ16s", timeout, 2, 0, GUID)))
    assert ask.kind == "v2" and ask.timeout_ms == expected and ask.persistent
    assert ask.create_guid == GUID


def test_v2_contexts_ignored_below_smb3():
    assert parse(DH2Q, dialect=0x0210) is None
    assert parse(DH2C, DHNQ, dialect=0x0210).kind == "v1"


class _Op:
    def __init__(self, is_dir=False):
        self.is_dir = is_dir
        self.pipe = None
        self.durable = False
        self.durable_timeout = 0.0
        self.create_guid = b""
        self.app_instance_id = b""


class _C:
    def __init__(self, ask):
        self.durable = ask
        self.app_instance_id = b""


@pytest.mark.parametrize("grant,expected", [
    (Grant(OPLOCK_BATCH), True), (Grant(OPLOCK_EXCLUSIVE), False), (Grant(OPLOCK_II), False),
    (Grant(OPLOCK_LEASE, b"k" * 16, LEASE_R | LEASE_H, 0, 1), True),
    (Grant(OPLOCK_LEASE, b"k" * 16, LEASE_R | LEASE_W | LEASE_H, 0, 2), True),
    (Grant(OPLOCK_LEASE, b"k" * 16, LEASE_R | LEASE_W, 0, 1), False),
    (None, False)])
def test_granted_only_with_batch_or_handle_caching(grant, expected):
    op = _Op()
    out = durable.granted(None, _C(parse(DHNQ)), op, grant)
    assert op.durable is expected
    assert out == ([(b"DHnQ", bytes(8))] if expected else [])
    if expected:
        assert op.durable_timeout == durable.V1_TIMEOUT_S


def test_never_durable_on_a_directory():
    op = _Op(is_dir=True)
    assert durable.granted(None, _C(parse(DHNQ)), op, Grant(OPLOCK_BATCH)) == []
    assert not op.durable
