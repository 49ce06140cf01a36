"""POSIX-derived security descriptors, parsed back by impacket's SR_SECURITY_DESCRIPTOR."""
from __future__ import annotations

import os
import struct

import pytest
from impacket.ldap.ldaptypes import ACCESS_ALLOWED_ACE, ACE, ACL, LDAP_SID, SR_SECURITY_DESCRIPTOR

from smbd_py.fs import secdesc as sd
from smbd_py.wire.status import NtStatus, SmbError


@pytest.fixture
def f(tmp_path):
    p = tmp_path / "file"
    p.write_bytes(b"x")
    os.chmod(p, 0o640)
    d = tmp_path / "dir"
    d.mkdir()
    os.chmod(d, 0o755)
    return p, d


def _aces(parsed):
    return [(a["Ace"]["Sid"].formatCanonical(), a["Ace"]["Mask"]["Mask"]) for a in parsed["Dacl"].aces]


def test_sid_roundtrip():
    for s in ("S-1-1-0", "S-1-22-1-1000", "S-1-5-21-1-2-3-500", "S-1-5-32-544"):
        b = sd.sid_to_bytes(s)
        assert sd.sid_from_bytes(b) == (s, len(b))
        assert LDAP_SID(data=b).formatCanonical() == s
    with pytest.raises(SmbError) as ei:
        sd.sid_from_bytes(b"\x01\x05\0\0\0\0\0\x05")  # claims 5 sub-authorities, has none
    assert ei.value.status == NtStatus.INVALID_SID


def test_file_sd_owner_group_dacl(f):
    p, _ = f
    st = os.stat(p)
    raw = sd.build_sd(st, 7)
    parsed = SR_SECURITY_DESCRIPTOR(data=raw)
    assert parsed["Revision"] in (1, b"\x01")
    assert parsed["Control"] & (sd.SE_SELF_RELATIVE | sd.SE_DACL_PRESENT) == sd.SE_SELF_RELATIVE | sd.SE_DACL_PRESENT
    assert parsed["OwnerSid"].formatCanonical() == f"S-1-22-1-{st.st_uid}"
    assert parsed["GroupSid"].formatCanonical() == f"S-1-22-2-{st.st_gid}"
    aces = _aces(parsed)
    # 0640: owner rw (+ owner rights), group r, nobody else -> no Everyone ACE
    assert aces[0][0] == f"S-1-22-1-{st.st_uid}"
    owner_mask = aces[0][1]
    assert owner_mask & sd.FILE_GENERIC_READ == sd.FILE_GENERIC_READ
    assert owner_mask & sd.FILE_GENERIC_WRITE == sd.FILE_GENERIC_WRITE
    assert owner_mask & (sd.WRITE_DAC | sd.WRITE_OWNER | sd.READ_CONTROL | sd.DELETE) == (
        sd.WRITE_DAC | sd.WRITE_OWNER | sd.READ_CONTROL | sd.DELETE)
    assert not owner_mask & sd.FILE_EXECUTE
    assert aces[1] == (f"S-1-22-2-{st.st_gid}", sd.FILE_GENERIC_READ)
    assert len(aces) == 2
    for a in parsed["Dacl"].aces:
        assert a["AceType"] == ACCESS_ALLOWED_ACE.ACE_TYPE


def test_dir_sd_everyone(f):
    _, d = f
    st = os.stat(d)
    parsed = SR_SECURITY_DESCRIPTOR(data=sd.build_sd(st, sd.DACL_SECURITY_INFORMATION))
    aces = dict(_aces(parsed))
    assert aces[f"S-1-22-1-{st.st_uid}"] == sd.FILE_ALL_ACCESS
    assert aces["S-1-1-0"] == sd.FILE_GENERIC_READ | sd.FILE_GENERIC_EXECUTE
    assert parsed["OwnerSid"] == b"" and parsed["GroupSid"] == b""


def test_additional_info_selects_parts(f):
    p, _ = f
    st = os.stat(p)
    only_owner = sd.build_sd(st, sd.OWNER_SECURITY_INFORMATION)
    rev, _, control, o_owner, o_group, o_sacl, o_dacl = struct.unpack_from("<BBHIIII", only_owner)
    assert (o_owner, o_group, o_sacl, o_dacl) == (20, 0, 0, 0)
    assert control == sd.SE_SELF_RELATIVE
    assert sd.parse_sd(only_owner).owner == f"S-1-22-1-{st.st_uid}"
    only_group = sd.parse_sd(sd.build_sd(st, sd.GROUP_SECURITY_INFORMATION))
    assert only_group.group == f"S-1-22-2-{st.st_gid}" and only_group.owner is None
    sacl = sd.build_sd(st, sd.SACL_SECURITY_INFORMATION)
    assert sacl == struct.pack("<BBHIIII", 1, 0, sd.SE_SELF_RELATIVE, 0, 0, 0, 0)
    custom = sd.parse_sd(sd.build_sd(st, 3, owner_sid="S-1-5-21-9-9-9-1000"))
    assert custom.owner == "S-1-5-21-9-9-9-1000"


def test_parse_impacket_built_sd():
    s = SR_SECURITY_DESCRIPTOR()
    s["Revision"] = b"\x01"
    s["Sbz1"] = b"\x00"
    s["Control"] = 0x8004
    s["OwnerSid"] = LDAP_SID()
    s["OwnerSid"].fromCanonical("S-1-5-32-544")
    s["GroupSid"] = b""
    s["Sacl"] = b""
    acl = ACL()
    acl["AclRevision"] = 2
    acl["Sbz1"] = 0
    acl["Sbz2"] = 0
    ace = ACE()
    ace["AceType"] = ACCESS_ALLOWED_ACE.ACE_TYPE
    ace["AceFlags"] = 3
    body = ACCESS_ALLOWED_ACE()
    from impacket.ldap.ldaptypes import ACCESS_MASK
    body["Mask"] = ACCESS_MASK()
    body["Mask"]["Mask"] = 0x1F01FF
    body["Sid"] = LDAP_SID()
    body["Sid"].fromCanonical("S-1-1-0")
    ace["Ace"] = body
    acl.aces = [ace]
    s["Dacl"] = acl
    parsed = sd.parse_sd(s.getData())
    assert parsed.owner == "S-1-5-32-544" and parsed.group is None
    assert [(a.ace_type, a.flags, a.mask, a.sid) for a in parsed.dacl] == [(0, 3, 0x1F01FF, "S-1-1-0")]


@pytest.mark.parametrize("bad", [
    b"",
    b"\x01" * 10,
    struct.pack("<BBHIIII", 2, 0, 0x8000, 0, 0, 0, 0),          # revision
    struct.pack("<BBHIIII", 1, 0, 0x8000, 200, 0, 0, 0),        # owner offset beyond end
    struct.pack("<BBHIIII", 1, 0, 0x8004, 0, 0, 0, 20) + struct.pack("<BBHHH", 2, 0, 64, 1, 0),  # ACL too big
    struct.pack("<BBHIIII", 1, 0, 0x8004, 0, 0, 0, 20) + struct.pack("<BBHHH", 2, 0, 16, 1, 0)
    + struct.pack("<BBHI", 0, 0, 40, 0),                         # ACE size beyond ACL
    struct.pack("<BBHIIII", 1, 0, 0x8000, 20, 0, 0, 0) + b"\x01\x09" + b"\0" * 6,  # SID too short
])
def test_parse_rejects_malformed(bad):
    with pytest.raises(SmbError) as ei:
        sd.parse_sd(bad)
    assert ei.value.status == NtStatus.INVALID_PARAMETER


def test_posix_access_mask(f):
    p, d = f
    st = os.stat(p)
    assert sd.posix_access_mask(st, 0) == sd.FILE_ALL_ACCESS
    assert sd.posix_access_mask(st, st.st_uid + 12345, gids=(st.st_gid,)) == sd.FILE_GENERIC_READ
    assert sd.posix_access_mask(st, st.st_uid + 12345, gids=()) == 0
