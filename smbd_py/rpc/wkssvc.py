"""The wkssvc interface (MS-WKST) on \\PIPE\\wkssvc: NetrWkstaGetInfo level 100 only.

smbclient and Windows may ask the workstation service for the server's
computer name and domain; this module owns that one answer. Framing is
pipe.DcerpcPipe's job, NDR is impacket's (impacket.dcerpc.v5.wkst).
"""
from __future__ import annotations

from impacket.dcerpc.v5 import wkst
from impacket.dcerpc.v5.ndr import NULL

from smbd_py.rpc import pdu
from smbd_py.rpc.pipe import DcerpcPipe, StubError

__all__ = ["WkssvcPipe", "WKSSVC_SYNTAX"]

WKSSVC_SYNTAX = pdu.syntax_bytes("6bffd098-a112-3610-9833-46c3f87e345a", 1, 0)
OPNUM_NETR_WKSTA_GET_INFO = 0
PLATFORM_ID_NT = 500
ERROR_SUCCESS = 0
ERROR_INVALID_LEVEL = 124


class WkssvcPipe(DcerpcPipe):
    pipe_name = "wkssvc"
    abstract_syntax = WKSSVC_SYNTAX

    def __init__(self, server_name: str, workgroup: str = "WORKGROUP") -> None:
        super().__init__()
        self.server_name = server_name
        self.workgroup = workgroup
        self.handlers = {OPNUM_NETR_WKSTA_GET_INFO: self.netr_wksta_get_info}

    def netr_wksta_get_info(self, stub: bytes) -> bytes:
        try:
            level = wkst.NetrWkstaGetInfo(stub)["Level"]
        except Exception as e:  # noqa: BLE001 - any decode failure is a stub error
            raise StubError(str(e)) from e
        resp = wkst.NetrWkstaGetInfoResponse()
        resp["WkstaInfo"]["tag"] = 100
        if level == 100:
            info = resp["WkstaInfo"]["WkstaInfo100"]
            info["wki100_platform_id"] = PLATFORM_ID_NT
            info["wki100_computername"] = self.server_name + "\x00"
            info["wki100_langroup"] = self.workgroup + "\x00"
            info["wki100_ver_major"] = 10
            info["wki100_ver_minor"] = 0
            resp["ErrorCode"] = ERROR_SUCCESS
        else:
            resp["WkstaInfo"]["WkstaInfo100"] = NULL
            resp["ErrorCode"] = ERROR_INVALID_LEVEL
        return resp.getData()
