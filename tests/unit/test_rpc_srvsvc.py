"""srvsvc / wkssvc pipes driven by impacket's real DCE/RPC client code.

impacket's DCERPC_v5 (bind, request fragmentation, response reassembly, fault
handling) talks to our pipe through an in-memory transport: send() -> pipe.write,
recv() -> pipe.read. The NDR decoding of the answers is impacket's.
"""
from __future__ import annotations

import struct

import pytest
from impacket.dcerpc.v5 import srvs, wkst
from impacket.dcerpc.v5.ndr import NULL
from impacket.dcerpc.v5.rpcrt import DCERPCException
from impacket.dcerpc.v5.transport import DCERPCTransport
from impacket.uuid import uuidtup_to_bin

from smbd_py.rpc import pdu
from smbd_py.rpc.pipe import (STYPE_DISKTREE, STYPE_IPC, NamedPipe, ShareInfo,
                              normalize_pipe_name, open_pipe)
from smbd_py.rpc.srvsvc import SrvsvcPipe
from smbd_py.rpc.wkssvc import WkssvcPipe

SHARES = [
    ShareInfo("share", STYPE_DISKTREE, "the test share", "/srv/share"),
    ShareInfo("Données", STYPE_DISKTREE, "unicode ä€𝄞", "/srv/données"),
    ShareInfo("IPC$", STYPE_IPC, "IPC Service (smbd_py)", ""),
]


class PipeTransport(DCERPCTransport):
    """impacket transport whose wire is one of our pipes."""

    def __init__(self, pipe, read_size: int = 4280):
        super().__init__("127.0.0.1", 0)
        self.pipe = pipe
        self.read_size = read_size
        self.writes: list[bytes] = []
        self.reads: list[bytes] = []

    def connect(self):
        return 1

    def disconnect(self):
        return 1

    def send(self, data, forceWriteAndx=0, forceRecv=0):
        if self._max_send_frag:
            # transport-level splitting: the pipe must buffer partial PDUs
            for i in range(0, len(data), self._max_send_frag):
                self.writes.append(data[i:i + self._max_send_frag])
                self.pipe.write(data[i:i + self._max_send_frag])
        else:
            self.writes.append(data)
            self.pipe.write(data)

    def recv(self, forceRecv=0, count=0):
        data = self.pipe.read(count or self.read_size)
        if not data:
            raise AssertionError("client expected data, the pipe has none pending")
        self.reads.append(data)
        return data

    def get_socket(self):
        return None


def bound(pipe, iface=srvs.MSRPC_UUID_SRVS, **transport_kw):
    t = PipeTransport(pipe, **transport_kw)
    dce = t.DCERPC_class(t)
    dce.connect()
    dce.bind(iface)
    return dce, t


def test_open_pipe_names():
    for name in ("srvsvc", "SRVSVC", "\\srvsvc", "\\PIPE\\srvsvc", "\\pipe\\SrvSvc", "PIPE\\srvsvc"):
        p = open_pipe(name, SHARES, "SMBDPY")
        assert isinstance(p, SrvsvcPipe), name
        assert isinstance(p, NamedPipe)
    assert isinstance(open_pipe("\\PIPE\\wkssvc", SHARES, "SMBDPY"), WkssvcPipe)
    assert open_pipe("lsarpc", SHARES, "SMBDPY") is None
    assert open_pipe("\\PIPE\\nosuch", SHARES, "SMBDPY") is None
    assert normalize_pipe_name("\\PIPE\\Srvsvc") == "srvsvc"


@pytest.mark.parametrize("level", [0, 1, 2, 501, 502])
def test_share_enum_levels(level):
    dce, _ = bound(SrvsvcPipe(SHARES, "SMBDPY"))
    resp = srvs.hNetrShareEnum(dce, level)
    assert resp["ErrorCode"] == 0
    assert resp["TotalEntries"] == len(SHARES)
    assert resp["InfoStruct"]["Level"] == level
    buf = resp["InfoStruct"]["ShareInfo"][f"Level{level}"]["Buffer"]
    assert resp["InfoStruct"]["ShareInfo"][f"Level{level}"]["EntriesRead"] == len(SHARES)
    got = [e[f"shi{level}_netname"][:-1] for e in buf]
    assert got == [s.name for s in SHARES]
    if level != 0:
        assert [e[f"shi{level}_type"] for e in buf] == [s.type for s in SHARES]
        assert [e[f"shi{level}_remark"][:-1] for e in buf] == [s.remark for s in SHARES]
    if level in (2, 502):
        assert buf[0][f"shi{level}_path"][:-1] == "C:\\srv\\share"
        assert buf[2][f"shi{level}_path"][:-1] == ""


def test_share_enum_level1_is_what_smbclient_lists():
    dce, _ = bound(SrvsvcPipe(SHARES, "SMBDPY"))
    resp = srvs.hNetrShareEnum(dce, 1, serverName="\\\\127.0.0.1")
    rows = [(e["shi1_netname"][:-1], e["shi1_type"], e["shi1_remark"][:-1])
            for e in resp["InfoStruct"]["ShareInfo"]["Level1"]["Buffer"]]
    assert rows == [(s.name, s.type, s.remark) for s in SHARES]
    assert resp["ResumeHandle"] == 0


def test_share_enum_sticky_leaves_out_special_shares():
    dce, _ = bound(SrvsvcPipe(SHARES, "SMBDPY"))
    resp = srvs.hNetrShareEnumSticky(dce, 2)
    names = [e["shi2_netname"][:-1] for e in resp["InfoStruct"]["ShareInfo"]["Level2"]["Buffer"]]
    assert names == ["share", "Données"]


@pytest.mark.parametrize("level", [0, 1, 2, 501, 502, 1005])
def test_share_get_info_levels(level):
    dce, _ = bound(SrvsvcPipe(SHARES, "SMBDPY"))
    resp = srvs.hNetrShareGetInfo(dce, "SHARE\x00", level)  # names are case-insensitive
    assert resp["ErrorCode"] == 0
    info = resp["InfoStruct"][f"ShareInfo{level}"]
    if level == 1005:
        assert info["shi1005_flags"] == 0
        return
    assert info[f"shi{level}_netname"][:-1] == "share"
    if level:
        assert info[f"shi{level}_type"] == STYPE_DISKTREE
        assert info[f"shi{level}_remark"][:-1] == "the test share"


def test_share_get_info_unknown_share_and_level():
    dce, _ = bound(SrvsvcPipe(SHARES, "SMBDPY"))
    with pytest.raises(srvs.DCERPCSessionError) as e:
        srvs.hNetrShareGetInfo(dce, "nosuch\x00", 1)
    assert e.value.get_error_code() == 2310  # NERR_NetNameNotFound
    with pytest.raises(srvs.DCERPCSessionError) as e:
        srvs.hNetrShareGetInfo(dce, "share\x00", 1006)
    assert e.value.get_error_code() == 124  # ERROR_INVALID_LEVEL


def test_server_get_info():
    dce, _ = bound(SrvsvcPipe(SHARES, "SMBDPY"))
    resp = srvs.hNetrServerGetInfo(dce, 101)
    assert resp["InfoStruct"]["ServerInfo101"]["sv101_name"][:-1] == "SMBDPY"
    assert resp["InfoStruct"]["ServerInfo101"]["sv101_platform_id"] == 500


def test_wkssvc_get_info_100():
    dce, _ = bound(WkssvcPipe("SMBDPY"), wkst.MSRPC_UUID_WKST)
    resp = wkst.hNetrWkstaGetInfo(dce, 100)
    info = resp["WkstaInfo"]["WkstaInfo100"]
    assert info["wki100_computername"][:-1] == "SMBDPY"
    assert info["wki100_langroup"][:-1] == "WORKGROUP"


def test_unknown_opnum_faults_op_rng_error():
    dce, t = bound(SrvsvcPipe(SHARES, "SMBDPY"))
    dce.call(99, b"\x00" * 8)
    with pytest.raises(DCERPCException, match="nca_s_op_rng_error"):
        dce.recv()
    raw = b"".join(t.reads[-2:])  # impacket reads the 24-byte header, then the rest
    assert raw[2] == pdu.PTYPE_FAULT
    assert struct.unpack_from("<I", raw, 24)[0] == 0x1C010002
    # the association survives a fault
    assert srvs.hNetrShareEnum(dce, 1)["TotalEntries"] == len(SHARES)


def test_bad_stub_data_faults():
    dce, _ = bound(SrvsvcPipe(SHARES, "SMBDPY"))
    dce.call(15, b"\x01\x02\x03")
    with pytest.raises(DCERPCException, match="rpc_x_bad_stub_data"):
        dce.recv()


def test_bind_wrong_interface_is_rejected():
    with pytest.raises(DCERPCException, match="abstract_syntax_not_supported"):
        bound(SrvsvcPipe(SHARES, "SMBDPY"), wkst.MSRPC_UUID_WKST)


def test_bind_ndr64_only_is_rejected():
    t = PipeTransport(SrvsvcPipe(SHARES, "SMBDPY"))
    dce = t.DCERPC_class(t)
    with pytest.raises(DCERPCException, match="proposed_transfer_syntaxes_not_supported"):
        dce.bind(srvs.MSRPC_UUID_SRVS,
                 transfer_syntax=("71710533-BEBA-4937-8319-B5DBEF9CCC36", "1.0"))


def _raw_bind(contexts, max_xmit=4280, max_recv=4280, call_id=1, ptype=pdu.PTYPE_BIND):
    body = struct.pack("<HHIB3x", max_xmit, max_recv, 0, len(contexts))
    for ctx_id, abstract, transfers in contexts:
        body += struct.pack("<HBx", ctx_id, len(transfers)) + abstract + b"".join(transfers)
    return struct.pack("<BBBB4sHHI", 5, 0, ptype, 3, b"\x10\0\0\0", 16 + len(body), 0,
                       call_id) + body


def _parse_ack(raw):
    frag_len = struct.unpack_from("<H", raw, 8)[0]
    assert frag_len == len(raw)
    max_xmit, max_recv, assoc, sec_len = struct.unpack_from("<HHIH", raw, 16)
    sec = raw[26:26 + sec_len]
    off = 26 + sec_len
    off += -off % 4
    n = raw[off]
    off += 4
    results = [struct.unpack_from("<HH20s", raw, off + 24 * i) for i in range(n)]
    return dict(ptype=raw[2], max_xmit=max_xmit, max_recv=max_recv, assoc=assoc,
                sec=sec, results=results)


def test_bind_like_smbclient_ndr_ndr64_and_feature_negotiation():
    """smbclient offers srvsvc/NDR, srvsvc/NDR64 and a bind-time feature context."""
    pipe = SrvsvcPipe(SHARES, "SMBDPY")
    features = pdu.syntax_bytes("6cb71c2c-9812-4540-0300-000000000000", 1)
    pipe.write(_raw_bind([(0, srvs.MSRPC_UUID_SRVS, [pdu.NDR_SYNTAX]),
                          (1, srvs.MSRPC_UUID_SRVS, [pdu.NDR64_SYNTAX]),
                          (2, srvs.MSRPC_UUID_SRVS, [features])], max_recv=5840))
    ack = _parse_ack(pipe.read(65536))
    assert ack["ptype"] == pdu.PTYPE_BIND_ACK
    assert ack["sec"] == b"\\PIPE\\srvsvc\x00"
    assert ack["assoc"] != 0
    assert ack["max_xmit"] == 4280  # min(client's receive size 5840, ours)
    assert ack["results"] == [
        (0, 0, pdu.NDR_SYNTAX),
        (2, 2, b"\0" * 20),  # provider rejection, transfer syntaxes not supported
        (3, 2, b"\0" * 20),  # negotiate_ack: keep connection on orphan
    ]
    assert pipe.read(100) == b""


def test_response_fragmented_to_max_recv_frag():
    many = [ShareInfo(f"share{i:03d}", STYPE_DISKTREE, "r" * 40, f"/srv/{i}") for i in range(200)]
    pipe = SrvsvcPipe(many, "SMBDPY")
    pipe.write(_raw_bind([(0, srvs.MSRPC_UUID_SRVS, [pdu.NDR_SYNTAX])], max_recv=1432))
    assert _parse_ack(pipe.read(4280))["max_xmit"] == 1432
    req = srvs.NetrShareEnum()
    req["ServerName"] = "\x00"
    req["PreferedMaximumLength"] = 0xFFFFFFFF
    req["ResumeHandle"] = 0
    req["InfoStruct"]["Level"] = 1
    req["InfoStruct"]["ShareInfo"]["tag"] = 1
    req["InfoStruct"]["ShareInfo"]["Level1"]["Buffer"] = NULL
    stub = req.getData()
    pipe.write(struct.pack("<BBBB4sHHIIHH", 5, 0, 0, 3, b"\x10\0\0\0", 24 + len(stub), 0, 7,
                           len(stub), 0, 15) + stub)
    frags = []
    while True:
        f = pipe.read(1 << 20)
        if not f:
            break
        frags.append(f)
    assert len(frags) > 5
    stub_out = b""
    for i, f in enumerate(frags):
        frag_len = struct.unpack_from("<H", f, 8)[0]
        assert frag_len == len(f) <= 1432
        flags = f[3]
        assert bool(flags & pdu.PFC_FIRST_FRAG) == (i == 0)
        assert bool(flags & pdu.PFC_LAST_FRAG) == (i == len(frags) - 1)
        if i < len(frags) - 1:
            assert (len(f) - 24) % 8 == 0
        stub_out += f[24:]
    resp = srvs.NetrShareEnumResponse(stub_out)
    assert [e["shi1_netname"][:-1] for e in resp["InfoStruct"]["ShareInfo"]["Level1"]["Buffer"]] \
        == [s.name for s in many]


def test_impacket_reassembles_large_enum():
    many = [ShareInfo(f"share{i:03d}", STYPE_DISKTREE, "x" * 60, "/p") for i in range(300)]
    dce, t = bound(SrvsvcPipe(many, "SMBDPY"))
    resp = srvs.hNetrShareEnum(dce, 2)
    assert resp["TotalEntries"] == 300
    assert len(t.reads) > 3  # several fragments, each read separately


def test_fragmented_request_and_partial_writes():
    """impacket splits the request into DCE/RPC fragments (dce) and splits
    PDUs across writes (transport); the pipe reassembles both."""
    pipe = SrvsvcPipe(SHARES, "SMBDPY")
    t = PipeTransport(pipe)
    t.set_max_fragment_size(7)
    dce = t.DCERPC_class(t)
    dce.bind(srvs.MSRPC_UUID_SRVS)
    dce.set_max_fragment_size(1)  # impacket then fragments every request
    resp = srvs.hNetrShareGetInfo(dce, "IPC$\x00", 1)
    assert resp["InfoStruct"]["ShareInfo1"]["shi1_type"] == STYPE_IPC
    assert len(t.writes) > 10


def test_partial_read_leaves_rest():
    pipe = SrvsvcPipe(SHARES, "SMBDPY")
    pipe.write(_raw_bind([(0, srvs.MSRPC_UUID_SRVS, [pdu.NDR_SYNTAX])]))
    total = pipe.message_remaining
    a = pipe.read(10)
    assert len(a) == 10 and pipe.message_remaining == total - 10
    b = pipe.read(1000)
    assert len(a + b) == total
    assert _parse_ack(a + b)["results"][0][0] == 0
    assert pipe.read(10) == b""


def test_transceive_reports_overflow():
    pipe = SrvsvcPipe(SHARES, "SMBDPY")
    out, more = pipe.transceive(_raw_bind([(0, srvs.MSRPC_UUID_SRVS, [pdu.NDR_SYNTAX])]), 16)
    assert len(out) == 16 and more
    rest = pipe.read(4280)
    assert _parse_ack(out + rest)["ptype"] == pdu.PTYPE_BIND_ACK
    req = srvs.NetrShareGetInfo()
    req["ServerName"] = "\x00"
    req["NetName"] = "share\x00"
    req["Level"] = 0
    stub = req.getData()
    out, more = pipe.transceive(struct.pack("<BBBB4sHHIIHH", 5, 0, 0, 3, b"\x10\0\0\0",
                                            24 + len(stub), 0, 2, len(stub), 0, 16) + stub, 4280)
    assert not more and out[2] == pdu.PTYPE_RESPONSE
    assert srvs.NetrShareGetInfoResponse(out[24:])["InfoStruct"]["ShareInfo0"]["shi0_netname"] == "share\x00"


def test_request_before_bind_and_unknown_context_fault():
    pipe = SrvsvcPipe(SHARES, "SMBDPY")
    pipe.write(struct.pack("<BBBB4sHHIIHH", 5, 0, 0, 3, b"\x10\0\0\0", 24, 0, 1, 0, 0, 15))
    f = pipe.read(100)
    assert f[2] == pdu.PTYPE_FAULT and struct.unpack_from("<I", f, 24)[0] == pdu.NCA_S_PROTO_ERROR
    pipe.write(_raw_bind([(0, srvs.MSRPC_UUID_SRVS, [pdu.NDR_SYNTAX])]))
    pipe.read(1000)
    pipe.write(struct.pack("<BBBB4sHHIIHH", 5, 0, 0, 3, b"\x10\0\0\0", 24, 0, 2, 0, 5, 15))
    f = pipe.read(100)
    assert struct.unpack_from("<I", f, 24)[0] == pdu.NCA_S_UNKNOWN_IF


def test_alter_context_adds_context():
    pipe = SrvsvcPipe(SHARES, "SMBDPY")
    pipe.write(_raw_bind([(0, srvs.MSRPC_UUID_SRVS, [pdu.NDR_SYNTAX])]))
    pipe.read(1000)
    pipe.write(_raw_bind([(1, srvs.MSRPC_UUID_SRVS, [pdu.NDR_SYNTAX])], call_id=2,
                         ptype=pdu.PTYPE_ALTER_CONTEXT))
    ack = _parse_ack(pipe.read(1000))
    assert ack["ptype"] == pdu.PTYPE_ALTER_CONTEXT_RESP and ack["sec"] == b""
    assert ack["results"] == [(0, 0, pdu.NDR_SYNTAX)]


def test_second_bind_and_bad_version_get_bind_nak():
    pipe = SrvsvcPipe(SHARES, "SMBDPY")
    pipe.write(_raw_bind([(0, srvs.MSRPC_UUID_SRVS, [pdu.NDR_SYNTAX])]))
    pipe.read(1000)
    pipe.write(_raw_bind([(0, srvs.MSRPC_UUID_SRVS, [pdu.NDR_SYNTAX])], call_id=2))
    assert pipe.read(1000)[2] == pdu.PTYPE_BIND_NAK
    p2 = SrvsvcPipe(SHARES, "SMBDPY")
    raw = bytearray(_raw_bind([(0, srvs.MSRPC_UUID_SRVS, [pdu.NDR_SYNTAX])]))
    raw[1] = 7  # rpc_vers_minor
    p2.write(bytes(raw))
    nak = p2.read(100)
    assert nak[2] == pdu.PTYPE_BIND_NAK and struct.unpack_from("<H", nak, 16)[0] == 4


def test_unframeable_bytes_break_the_pipe():
    pipe = SrvsvcPipe(SHARES, "SMBDPY")
    with pytest.raises(pdu.PipeProtocolError):
        pipe.write(b"\x04" + b"\x00" * 30)  # rpc_vers 4
    with pytest.raises(pdu.PipeProtocolError):
        pipe.read(10)
    big_endian = SrvsvcPipe(SHARES, "SMBDPY")
    with pytest.raises(pdu.PipeProtocolError):
        big_endian.write(struct.pack(">BBBB4sHHI", 5, 0, 11, 3, b"\0\0\0\0", 16, 0, 1))


def test_uuid_constant_matches_impacket():
    assert srvs.MSRPC_UUID_SRVS == uuidtup_to_bin(("4b324fc8-1670-01d3-1278-5a47bf6ee188", "3.0"))
    from smbd_py.rpc.srvsvc import SRVSVC_SYNTAX
    assert SRVSVC_SYNTAX == srvs.MSRPC_UUID_SRVS
