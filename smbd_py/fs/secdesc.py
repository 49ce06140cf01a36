"""Security descriptors derived from POSIX ownership and mode (MS-DTYP 2.4.6).

Owns building self-relative SECURITY_DESCRIPTORs for QUERY_INFO (InfoType 3), the
uid/gid -> SID mapping Samba uses for unmapped Unix ids (S-1-22-1-uid, S-1-22-2-gid),
the mode-bit -> access-mask mapping, and a validating parser for SET_INFO.
"""
from __future__ import annotations

import stat as stat_mod
import struct
from typing import Callable, NamedTuple

from smbd_py.wire.status import NtStatus, SmbError

__all__ = [
    "build_sd", "parse_sd", "ParsedSD", "Ace", "sid_to_bytes", "sid_from_bytes",
    "uid_to_sid", "gid_to_sid", "mode_to_mask", "posix_access_mask", "dacl_to_mode",
    "OWNER_SECURITY_INFORMATION", "GROUP_SECURITY_INFORMATION",
    "DACL_SECURITY_INFORMATION", "SACL_SECURITY_INFORMATION",
]

# AdditionalInformation bits (MS-SMB2 2.2.37)
OWNER_SECURITY_INFORMATION = 0x00000001
GROUP_SECURITY_INFORMATION = 0x00000002
DACL_SECURITY_INFORMATION = 0x00000004
SACL_SECURITY_INFORMATION = 0x00000008
LABEL_SECURITY_INFORMATION = 0x00000010

# Control bits (MS-DTYP 2.4.6)
SE_OWNER_DEFAULTED = 0x0001
SE_GROUP_DEFAULTED = 0x0002
SE_DACL_PRESENT = 0x0004
SE_DACL_DEFAULTED = 0x0008
SE_SACL_PRESENT = 0x0010
SE_DACL_AUTO_INHERITED = 0x0400
SE_DACL_PROTECTED = 0x1000
SE_SELF_RELATIVE = 0x8000

ACCESS_ALLOWED_ACE_TYPE = 0x00
ACCESS_DENIED_ACE_TYPE = 0x01
OBJECT_INHERIT_ACE = 0x01
CONTAINER_INHERIT_ACE = 0x02

# Access masks (MS-DTYP 2.4.3, MS-SMB2 2.2.13.1.1)
from smbd_py.wire.access import (  # noqa: E402
    FILE_READ_DATA, FILE_WRITE_DATA, FILE_APPEND_DATA, FILE_READ_EA, FILE_WRITE_EA, FILE_EXECUTE, FILE_DELETE_CHILD, FILE_READ_ATTRIBUTES, FILE_WRITE_ATTRIBUTES, DELETE, READ_CONTROL, WRITE_DAC, WRITE_OWNER, SYNCHRONIZE, FILE_GENERIC_READ, FILE_GENERIC_WRITE, FILE_GENERIC_EXECUTE, FILE_ALL_ACCESS)

SID_EVERYONE = "S-1-1-0"
SID_UNIX_USERS_PREFIX = "S-1-22-1-"
SID_UNIX_GROUPS_PREFIX = "S-1-22-2-"

_SD_HDR = struct.Struct("<BBHIIII")   # 20
_ACL_HDR = struct.Struct("<BBHHH")    # 8
_ACE_HDR = struct.Struct("<BBHI")     # 8 (+ SID for the basic ACE types)
_SID_HDR = struct.Struct("<BB6s")     # 8 (+ 4 * SubAuthorityCount)


# ---------------------------------------------------------------------------
# SIDs

def sid_to_bytes(sid: str) -> bytes:
    """'S-1-5-21-1-2-3' -> binary SID (MS-DTYP 2.4.2.2)."""
    parts = sid.split("-")
    if len(parts) < 3 or parts[0].upper() != "S":
        raise ValueError(f"bad SID {sid!r}")
    rev = int(parts[1])
    auth = int(parts[2], 0)
    subs = [int(x) for x in parts[3:]]
    if len(subs) > 15 or not 0 <= auth < 1 << 48:
        raise ValueError(f"bad SID {sid!r}")
    return _SID_HDR.pack(rev, len(subs), auth.to_bytes(6, "big")) + struct.pack(f"<{len(subs)}I", *subs)


def sid_from_bytes(buf, offset: int = 0) -> tuple[str, int]:
    """Binary SID at offset -> ('S-1-...', size in bytes); INVALID_SID if malformed."""
    if offset < 0 or offset + 8 > len(buf):
        raise SmbError(NtStatus.INVALID_SID, "SID out of bounds")
    rev, count, auth = _SID_HDR.unpack_from(buf, offset)
    size = 8 + 4 * count
    if rev != 1 or count > 15 or offset + size > len(buf):
        raise SmbError(NtStatus.INVALID_SID, "malformed SID")
    subs = struct.unpack_from(f"<{count}I", buf, offset + 8)
    text = "S-%d-%d" % (rev, int.from_bytes(auth, "big"))
    if subs:
        text += "-" + "-".join(map(str, subs))
    return text, size


def uid_to_sid(uid: int) -> str:
    return SID_UNIX_USERS_PREFIX + str(uid)


def gid_to_sid(gid: int) -> str:
    return SID_UNIX_GROUPS_PREFIX + str(gid)


_EVERYONE_BYTES = sid_to_bytes(SID_EVERYONE)


# ---------------------------------------------------------------------------
# Mode bits -> access masks

def mode_to_mask(perms: int, is_dir: bool, owner: bool = False) -> int:
    """perms: a 3-bit rwx value.  rwx is full control; owners may always change the
    ACL and owner and read it (POSIX lets the owner chmod/chown regardless of mode)."""
    mask = 0
    if perms == 7:
        mask = FILE_ALL_ACCESS
    else:
        if perms & 4:
            mask |= FILE_GENERIC_READ
        if perms & 2:
            mask |= FILE_GENERIC_WRITE | DELETE
            if is_dir:
                mask |= FILE_DELETE_CHILD
        if perms & 1:
            mask |= FILE_GENERIC_EXECUTE
    if owner:
        mask |= WRITE_DAC | WRITE_OWNER | READ_CONTROL | DELETE | FILE_READ_ATTRIBUTES | FILE_WRITE_ATTRIBUTES | SYNCHRONIZE
    return mask


def posix_access_mask(st, uid: int, gids=()) -> int:
    """The access a POSIX identity has on the file, as an NT mask (for MxAc etc.)."""
    is_dir = stat_mod.S_ISDIR(st.st_mode)
    if uid == 0:
        return FILE_ALL_ACCESS
    if st.st_uid == uid:
        return mode_to_mask((st.st_mode >> 6) & 7, is_dir, owner=True)
    if st.st_gid in gids:
        return mode_to_mask((st.st_mode >> 3) & 7, is_dir)
    return mode_to_mask(st.st_mode & 7, is_dir)


# ---------------------------------------------------------------------------
# Building

def _ace(ace_type: int, flags: int, mask: int, sid: bytes) -> bytes:
    return _ACE_HDR.pack(ace_type, flags, 8 + len(sid), mask) + sid


def _acl(aces: list[bytes]) -> bytes:
    body = b"".join(aces)
    return _ACL_HDR.pack(2, 0, 8 + len(body), len(aces), 0) + body


def build_sd(st, additional_info: int = OWNER_SECURITY_INFORMATION | GROUP_SECURITY_INFORMATION
             | DACL_SECURITY_INFORMATION,
             owner_sid: str | None = None, group_sid: str | None = None,
             sid_for_uid: Callable[[int], str] = uid_to_sid,
             sid_for_gid: Callable[[int], str] = gid_to_sid) -> bytes:
    """Self-relative SECURITY_DESCRIPTOR for a stat result.

    Only the parts asked for in additional_info are included.  A SACL is never
    returned (we keep none).  The DACL holds ACCESS_ALLOWED ACEs for owner, group and
    Everyone from the rwx bits; classes with no permission get no ACE.
    """
    owner_b = sid_to_bytes(owner_sid or sid_for_uid(st.st_uid)) if additional_info & OWNER_SECURITY_INFORMATION else b""
    group_b = sid_to_bytes(group_sid or sid_for_gid(st.st_gid)) if additional_info & GROUP_SECURITY_INFORMATION else b""
    control = SE_SELF_RELATIVE
    dacl_b = b""
    if additional_info & DACL_SECURITY_INFORMATION:
        control |= SE_DACL_PRESENT
        mode = st.st_mode
        is_dir = stat_mod.S_ISDIR(mode)
        aces = []
        m = mode_to_mask((mode >> 6) & 7, is_dir, owner=True)
        aces.append(_ace(ACCESS_ALLOWED_ACE_TYPE, 0, m, owner_b or sid_to_bytes(owner_sid or sid_for_uid(st.st_uid))))
        m = mode_to_mask((mode >> 3) & 7, is_dir)
        if m:
            aces.append(_ace(ACCESS_ALLOWED_ACE_TYPE, 0, m, group_b or sid_to_bytes(group_sid or sid_for_gid(st.st_gid))))
        m = mode_to_mask(mode & 7, is_dir)
        if m:
            aces.append(_ace(ACCESS_ALLOWED_ACE_TYPE, 0, m, _EVERYONE_BYTES))
        dacl_b = _acl(aces)
    off = _SD_HDR.size
    off_owner = off if owner_b else 0
    off += len(owner_b)
    off_group = off if group_b else 0
    off += len(group_b)
    off_dacl = off if dacl_b else 0
    return _SD_HDR.pack(1, 0, control, off_owner, off_group, 0, off_dacl) + owner_b + group_b + dacl_b


# ---------------------------------------------------------------------------
# Parsing

class Ace(NamedTuple):
    ace_type: int
    flags: int
    mask: int
    sid: str | None   # None for ACE types whose body we do not interpret
    raw: bytes


class ParsedSD(NamedTuple):
    control: int
    owner: str | None
    group: str | None
    dacl: list[Ace] | None
    sacl: list[Ace] | None


_BASIC_ACE_TYPES = frozenset({0x00, 0x01, 0x02, 0x03, 0x09, 0x0A, 0x0D, 0x0E, 0x11, 0x12, 0x13})


def _bad(msg: str) -> SmbError:
    return SmbError(NtStatus.INVALID_PARAMETER, "malformed security descriptor: " + msg)


def _parse_acl(buf, off: int) -> list[Ace]:
    if off + 8 > len(buf):
        raise _bad("ACL out of bounds")
    rev, _, size, count, _ = _ACL_HDR.unpack_from(buf, off)
    if rev not in (2, 4) or size < 8 or off + size > len(buf):
        raise _bad("ACL header")
    end = off + size
    p = off + 8
    aces = []
    for _ in range(count):
        if p + 8 > end:
            raise _bad("ACE out of bounds")
        t, flags, asize, mask = _ACE_HDR.unpack_from(buf, p)
        if asize < 8 or asize & 3 or p + asize > end:
            raise _bad("ACE size")
        sid = None
        if t in _BASIC_ACE_TYPES:
            try:
                sid, sid_size = sid_from_bytes(buf[:p + asize], p + 8)
            except SmbError:
                raise _bad("ACE SID") from None
        aces.append(Ace(t, flags, mask, sid, bytes(buf[p:p + asize])))
        p += asize
    return aces


def parse_sd(buf) -> ParsedSD:
    """Validate and decode a self-relative SECURITY_DESCRIPTOR (SET_INFO / create
    context SecD); malformed input raises SmbError(INVALID_PARAMETER)."""
    buf = bytes(buf)
    if len(buf) < _SD_HDR.size:
        raise _bad("too short")
    rev, _, control, o_owner, o_group, o_sacl, o_dacl = _SD_HDR.unpack(buf[:_SD_HDR.size])
    if rev != 1:
        raise _bad("revision")
    for o in (o_owner, o_group, o_sacl, o_dacl):
        if o and (o < _SD_HDR.size or o >= len(buf)):
            raise _bad("offset")
    try:
        owner = sid_from_bytes(buf, o_owner)[0] if o_owner else None
        group = sid_from_bytes(buf, o_group)[0] if o_group else None
    except SmbError:
        raise _bad("owner/group SID") from None
    dacl = _parse_acl(buf, o_dacl) if (control & SE_DACL_PRESENT and o_dacl) else None
    sacl = _parse_acl(buf, o_sacl) if (control & SE_SACL_PRESENT and o_sacl) else None
    return ParsedSD(control, owner, group, dacl, sacl)


# ---------------------------------------------------------------------------
# DACL -> mode bits (SET_INFO security, e.g. the Linux cifs client's chmod with
# cifsacl): the inverse of build_sd, class by class, as the cifs client reads it back.

from smbd_py.wire.access import GENERIC_ALL, GENERIC_EXECUTE, GENERIC_READ, GENERIC_WRITE  # noqa: E402
INHERIT_ONLY_ACE = 0x08


def _mask_to_rwx(mask: int) -> int:
    if mask & GENERIC_ALL:
        return 7
    rwx = 0
    if mask & (FILE_READ_DATA | GENERIC_READ):
        rwx |= 4
    if mask & (FILE_WRITE_DATA | GENERIC_WRITE):
        rwx |= 2
    if mask & (FILE_EXECUTE | GENERIC_EXECUTE):
        rwx |= 1
    return rwx


def dacl_to_mode(dacl: list[Ace], owner_sid: str, group_sid: str) -> int:
    """The 0o777 permission bits a DACL gives the file's owner, group and Everyone.

    Each class reads only the ACEs naming its own SID (Everyone stands for "other"),
    which is how build_sd writes them and how the Linux cifs client maps them back.
    ACEs are evaluated in order, so a deny before an allow takes the bits away;
    inherit-only ACEs do not apply to the object itself.
    """
    mode = 0
    for shift, sid in ((6, owner_sid), (3, group_sid), (0, SID_EVERYONE)):
        allowed = denied = 0
        for ace in dacl:
            if ace.sid != sid or ace.flags & INHERIT_ONLY_ACE:
                continue
            bits = _mask_to_rwx(ace.mask)
            if ace.ace_type == ACCESS_ALLOWED_ACE_TYPE:
                allowed |= bits & ~denied
            elif ace.ace_type == ACCESS_DENIED_ACE_TYPE:
                denied |= bits & ~allowed
        mode |= allowed << shift
    return mode
