"""The srvsvc interface (MS-SRVS) on \\PIPE\\srvsvc: share enumeration and share info.

This module owns what srvsvc answers: NetrShareEnum (opnum 15, levels 0, 1, 2,
501, 502) and NetrShareEnumSticky (opnum 36, same levels), NetrShareGetInfo (opnum 16, levels 0, 1, 2, 501, 502, 1005) and
NetrServerGetInfo (opnum 21, levels 100, 101). Stub data is (un)marshalled
with impacket's NDR classes (impacket.dcerpc.v5.srvs); DCE/RPC framing is
pipe.DcerpcPipe's job. Other opnums get nca_s_op_rng_error from DcerpcPipe.
"""
from __future__ import annotations

from impacket.dcerpc.v5 import srvs
from impacket.dcerpc.v5.ndr import NULL

from smbd_py.rpc import pdu
from smbd_py.rpc.pipe import STYPE_DISKTREE, STYPE_IPC, DcerpcPipe, ShareInfo, StubError

__all__ = ["SrvsvcPipe", "ShareInfo", "STYPE_DISKTREE", "STYPE_IPC", "SRVSVC_SYNTAX"]

SRVSVC_SYNTAX = pdu.syntax_bytes("4b324fc8-1670-01d3-1278-5a47bf6ee188", 3, 0)

OPNUM_NETR_SHARE_ENUM = 15
OPNUM_NETR_SHARE_GET_INFO = 16
OPNUM_NETR_SERVER_GET_INFO = 21
OPNUM_NETR_SHARE_ENUM_STICKY = 36  # rpcclient "netshareenum"

# Win32 error codes carried in the stub's return value (MS-ERREF 2.2, MS-SRVS 3.1.4)
ERROR_SUCCESS = 0
ERROR_INVALID_LEVEL = 124
NERR_NET_NAME_NOT_FOUND = 2310

PLATFORM_ID_NT = 500
# SV_TYPE_WORKSTATION | SV_TYPE_SERVER | SV_TYPE_SERVER_NT (MS-SRVS 2.2.2.7)
SERVER_TYPE = 0x00000001 | 0x00000002 | 0x00008000

ENUM_LEVELS = (0, 1, 2, 501, 502)
GET_INFO_LEVELS = (0, 1, 2, 501, 502, 1005)


def _wstr(s: str) -> str:
    return s + "\x00"


def _unc_path(share: ShareInfo) -> str:
    # Windows clients expect a drive path; Samba reports "C:" + the Unix path too
    if share.type == STYPE_IPC or not share.path:
        return ""
    return "C:" + share.path.replace("/", "\\")


def _fill(info, level: int, share: ShareInfo) -> None:
    """Fill an impacket SHARE_INFO_<level> structure."""
    if level == 1005:
        info["shi1005_flags"] = 0  # no DFS, manual caching
        return
    p = f"shi{level}_"
    info[p + "netname"] = _wstr(share.name)
    if level == 0:
        return
    info[p + "type"] = share.type
    info[p + "remark"] = _wstr(share.remark)
    if level == 1:
        return
    if level == 501:
        info["shi501_flags"] = 0
        return
    info[p + "permissions"] = 0
    info[p + "max_uses"] = 0xFFFFFFFF
    info[p + "current_uses"] = 0
    info[p + "path"] = _wstr(_unc_path(share))
    info[p + "passwd"] = NULL
    if level == 502:
        info["shi502_reserved"] = 0
        info["shi502_security_descriptor"] = NULL


_INFO_CLASS = {0: srvs.SHARE_INFO_0, 1: srvs.SHARE_INFO_1, 2: srvs.SHARE_INFO_2,
               501: srvs.SHARE_INFO_501, 502: srvs.SHARE_INFO_502, 1005: srvs.SHARE_INFO_1005}


class SrvsvcPipe(DcerpcPipe):
    pipe_name = "srvsvc"
    abstract_syntax = SRVSVC_SYNTAX

    def __init__(self, shares: list[ShareInfo], server_name: str) -> None:
        super().__init__()
        self.shares = list(shares)
        self.server_name = server_name
        self.handlers = {
            OPNUM_NETR_SHARE_ENUM: self.netr_share_enum,
            OPNUM_NETR_SHARE_GET_INFO: self.netr_share_get_info,
            OPNUM_NETR_SERVER_GET_INFO: self.netr_server_get_info,
            OPNUM_NETR_SHARE_ENUM_STICKY: self.netr_share_enum_sticky,
        }

    # Each handler: request stub -> response stub. impacket raises assorted
    # exceptions on malformed NDR; all of them mean "bad stub data".

    def netr_share_enum(self, stub: bytes) -> bytes:
        return self._share_enum(stub, srvs.NetrShareEnum, srvs.NetrShareEnumResponse,
                                self.shares)

    def netr_share_enum_sticky(self, stub: bytes) -> bytes:
        # Same layout as NetrShareEnum. Like Samba, leave out the special
        # ("$"-suffixed) shares, which are not persistent ("sticky") ones.
        return self._share_enum(stub, srvs.NetrShareEnumSticky,
                                srvs.NetrShareEnumStickyResponse,
                                [s for s in self.shares if not s.name.endswith("$")])

    def _share_enum(self, stub: bytes, req_class, resp_class, shares: list[ShareInfo]) -> bytes:
        try:
            req = req_class(stub)
            level = req["InfoStruct"]["Level"]
            has_resume = req["ResumeHandle"] != NULL
        except Exception as e:  # noqa: BLE001 - any decode failure is a stub error
            raise StubError(str(e)) from e
        resp = resp_class()
        info_level = level if level in srvs.SHARE_ENUM_UNION.union else 1
        resp["InfoStruct"]["Level"] = info_level
        resp["InfoStruct"]["ShareInfo"]["tag"] = info_level
        container = resp["InfoStruct"]["ShareInfo"][f"Level{info_level}"]
        if level not in ENUM_LEVELS:
            container["EntriesRead"] = 0
            container["Buffer"] = NULL
            resp["TotalEntries"] = 0
            resp["ErrorCode"] = ERROR_INVALID_LEVEL
        else:
            container["EntriesRead"] = len(shares)
            for share in shares:
                info = _INFO_CLASS[level]()
                _fill(info, level, share)
                container["Buffer"].append(info)
            resp["TotalEntries"] = len(shares)
            resp["ErrorCode"] = ERROR_SUCCESS
        # everything fits in one answer: resume handle 0 when the client sent one
        resp["ResumeHandle"] = 0 if has_resume else NULL
        return resp.getData()

    def netr_share_get_info(self, stub: bytes) -> bytes:
        try:
            req = srvs.NetrShareGetInfo(stub)
            name = req["NetName"].rstrip("\x00")
            level = req["Level"]
        except Exception as e:  # noqa: BLE001
            raise StubError(str(e)) from e
        resp = srvs.NetrShareGetInfoResponse()
        share = next((s for s in self.shares if s.name.lower() == name.lower()), None)
        if level not in GET_INFO_LEVELS:
            # the union cannot carry an arbitrary level: answer level 1, NULL
            resp["InfoStruct"]["tag"] = 1
            resp["InfoStruct"]["ShareInfo1"] = NULL
            resp["ErrorCode"] = ERROR_INVALID_LEVEL
        elif share is None:
            resp["InfoStruct"]["tag"] = level
            resp["InfoStruct"][f"ShareInfo{level}"] = NULL
            resp["ErrorCode"] = NERR_NET_NAME_NOT_FOUND
        else:
            resp["InfoStruct"]["tag"] = level
            _fill(resp["InfoStruct"][f"ShareInfo{level}"], level, share)
            resp["ErrorCode"] = ERROR_SUCCESS
        return resp.getData()

    def netr_server_get_info(self, stub: bytes) -> bytes:
        try:
            req = srvs.NetrServerGetInfo(stub)
            level = req["Level"]
        except Exception as e:  # noqa: BLE001
            raise StubError(str(e)) from e
        resp = srvs.NetrServerGetInfoResponse()
        if level == 100:
            resp["InfoStruct"]["tag"] = 100
            info = resp["InfoStruct"]["ServerInfo100"]
            info["sv100_platform_id"] = PLATFORM_ID_NT
            info["sv100_name"] = _wstr(self.server_name)
            resp["ErrorCode"] = ERROR_SUCCESS
        elif level == 101:
            resp["InfoStruct"]["tag"] = 101
            info = resp["InfoStruct"]["ServerInfo101"]
            info["sv101_platform_id"] = PLATFORM_ID_NT
            info["sv101_name"] = _wstr(self.server_name)
            info["sv101_version_major"] = 10
            info["sv101_version_minor"] = 0
            info["sv101_type"] = SERVER_TYPE
            info["sv101_comment"] = _wstr("")
            resp["ErrorCode"] = ERROR_SUCCESS
        else:
            resp["InfoStruct"]["tag"] = 101
            resp["InfoStruct"]["ServerInfo101"] = NULL
            resp["ErrorCode"] = ERROR_INVALID_LEVEL
        return resp.getData()
