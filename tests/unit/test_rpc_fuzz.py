"""Malformed input never escapes the pipe as anything but PipeProtocolError.

Hypothesis writes random bytes, mutated valid PDUs and random PDU fields; the
pipe must either answer (bind_ack/bind_nak/response/fault) or raise its one
documented exception, and every answer must itself be a well-framed PDU.
"""
from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from impacket.dcerpc.v5 import srvs

from smbd_py.rpc import pdu
from smbd_py.rpc.pipe import STYPE_DISKTREE, STYPE_IPC, ShareInfo
from smbd_py.rpc.srvsvc import SrvsvcPipe

SHARES = [ShareInfo("share", STYPE_DISKTREE, "r", "/srv"), ShareInfo("IPC$", STYPE_IPC, "", "")]

BIND = (struct.pack("<BBBB4sHHI", 5, 0, 11, 3, b"\x10\0\0\0", 16 + 8 + 4 + 44, 0, 1)
        + struct.pack("<HHIB3x", 4280, 4280, 0, 1)
        + struct.pack("<HBx", 0, 1) + srvs.MSRPC_UUID_SRVS + pdu.NDR_SYNTAX)


def _enum_request(call_id=2):
    req = srvs.NetrShareEnum()
    req["ServerName"] = "\x00"
    req["PreferedMaximumLength"] = 0xFFFFFFFF
    req["ResumeHandle"] = 0
    req["InfoStruct"]["Level"] = 1
    req["InfoStruct"]["ShareInfo"]["tag"] = 1
    from impacket.dcerpc.v5.ndr import NULL
    req["InfoStruct"]["ShareInfo"]["Level1"]["Buffer"] = NULL
    stub = req.getData()
    return struct.pack("<BBBB4sHHIIHH", 5, 0, 0, 3, b"\x10\0\0\0", 24 + len(stub), 0, call_id,
                       len(stub), 0, 15) + stub


REQUEST = _enum_request()


def _drain_and_check(pipe) -> None:
    for _ in range(10000):
        msg = pipe.read(1 << 16)
        if not msg:
            return
        assert len(msg) >= 16
        assert msg[0] == 5 and msg[4] == 0x10
        frag_len = struct.unpack_from("<H", msg, 8)[0]
        assert frag_len == len(msg)
        assert msg[2] in (pdu.PTYPE_BIND_ACK, pdu.PTYPE_BIND_NAK, pdu.PTYPE_RESPONSE,
                          pdu.PTYPE_FAULT, pdu.PTYPE_ALTER_CONTEXT_RESP)
    raise AssertionError("pipe never ran dry")


def _feed(pipe, chunks) -> None:
    try:
        for c in chunks:
            pipe.write(c)
        _drain_and_check(pipe)
    except pdu.PipeProtocolError:
        # documented: and the pipe stays broken
        try:
            pipe.read(10)
        except pdu.PipeProtocolError:
            return
        raise AssertionError("pipe not broken after PipeProtocolError")


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_random_bytes(chunks):
    _feed(SrvsvcPipe(SHARES, "S"), chunks)


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=4))
def test_random_bytes_after_bind(chunks):
    pipe = SrvsvcPipe(SHARES, "S")
    pipe.write(BIND)
    pipe.read(4280)
    _feed(pipe, chunks)


def _mutate(base: bytes, data) -> bytes:
    b = bytearray(base)
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["flip", "set", "truncate", "extend"]))
        if kind == "flip" and b:
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set" and b:
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] = data.draw(st.integers(0, 255))
        elif kind == "truncate" and b:
            del b[data.draw(st.integers(0, len(b) - 1)):]
        else:
            b += data.draw(st.binary(max_size=40))
    return bytes(b)


@FUZZ
@given(st.data())
def test_mutated_bind(data):
    _feed(SrvsvcPipe(SHARES, "S"), [_mutate(BIND, data)])


@FUZZ
@given(st.data())
def test_mutated_request(data):
    pipe = SrvsvcPipe(SHARES, "S")
    pipe.write(BIND)
    pipe.read(4280)
    _feed(pipe, [_mutate(REQUEST, data), REQUEST])


@FUZZ
@given(ptype=st.integers(0, 255), flags=st.integers(0, 255), auth_len=st.integers(0, 64),
       ctx=st.integers(0, 3), opnum=st.integers(0, 40), stub=st.binary(max_size=200),
       bind_first=st.booleans())
def test_random_request_fields(ptype, flags, auth_len, ctx, opnum, stub, bind_first):
    pipe = SrvsvcPipe(SHARES, "S")
    if bind_first:
        pipe.write(BIND)
        pipe.read(4280)
    body = struct.pack("<IHH", len(stub), ctx, opnum) + stub
    frag = struct.pack("<BBBB4sHHI", 5, 0, ptype, flags, b"\x10\0\0\0", 16 + len(body),
                       auth_len, 9) + body
    _feed(pipe, [frag])


def test_valid_request_still_answered_after_garbage_framed_pdus():
    pipe = SrvsvcPipe(SHARES, "S")
    pipe.write(BIND)
    pipe.read(4280)
    # a framed PDU of a server-only type, a truncated request, then a real one
    pipe.write(struct.pack("<BBBB4sHHI", 5, 0, pdu.PTYPE_BIND_ACK, 3, b"\x10\0\0\0", 16, 0, 5))
    pipe.write(struct.pack("<BBBB4sHHI", 5, 0, 0, 3, b"\x10\0\0\0", 20, 0, 6) + b"\0" * 4)
    pipe.write(REQUEST)
    types = []
    while msg := pipe.read(65536):
        types.append(msg[2])
    assert types == [pdu.PTYPE_FAULT, pdu.PTYPE_FAULT, pdu.PTYPE_RESPONSE]
