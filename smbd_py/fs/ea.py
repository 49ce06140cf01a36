"""Extended attributes (EAs): the FILE_FULL_EA_INFORMATION wire list (MS-FSCC 2.4.15) and
their storage in Linux user xattrs.

Each EA NAME is kept as the xattr ``user.smbd_py.ea.NAME`` (the name as the client
spelled it; lookups ignore case, as Windows does). A dedicated prefix keeps our other
xattrs (DOS attributes, ...) and those of local programs out of the client's EA list.
Functions taking an fd run blocking system calls: call them through ``ctx.run_io``.
"""
from __future__ import annotations

import errno
import os
import struct

from ..wire.status import NtStatus, SmbError

XATTR_PREFIX = "user.smbd_py.ea."
FULL_EA_HEADER = struct.Struct("<IBBH")      # NextEntryOffset, Flags, EaNameLength, EaValueLength
GET_EA_HEADER = struct.Struct("<IB")         # FILE_GET_EA_INFORMATION: NextEntryOffset, EaNameLength
FILE_NEED_EA = 0x80
# Characters Windows refuses in an EA name (FAT's illegal set), and control characters.
_BAD_NAME_CHARS = frozenset(b'"*+,/:;<=>?[\\]|')
MAX_EA_VALUE = 0xFFFF


class Ea(tuple):
    """(flags, name, value): name is the ASCII name as str, value bytes."""

    __slots__ = ()

    def __new__(cls, flags: int, name: str, value: bytes) -> "Ea":
        return tuple.__new__(cls, (flags, name, value))

    flags = property(lambda self: self[0])
    name = property(lambda self: self[1])
    value = property(lambda self: self[2])


def valid_name(raw: bytes) -> bool:
    return 0 < len(raw) <= 255 and all(0x20 <= b < 0x7F and b not in _BAD_NAME_CHARS for b in raw)


def parse_full_ea_list(buf: bytes) -> list[Ea]:
    """Decode a FILE_FULL_EA_INFORMATION chain (CREATE's ExtA context, SET_INFO class 15).

    A chain that runs outside the buffer is STATUS_EA_LIST_INCONSISTENT (MS-FSCC 2.4.15
    via MS-FSA 2.1.5.1); a name Windows would refuse is STATUS_INVALID_EA_NAME."""
    out: list[Ea] = []
    off = 0
    n = len(buf)
    for _ in range(n // FULL_EA_HEADER.size + 1):
        if off + FULL_EA_HEADER.size > n:
            raise SmbError(NtStatus.EA_LIST_INCONSISTENT)
        nxt, flags, name_len, value_len = FULL_EA_HEADER.unpack_from(buf, off)
        name_at = off + FULL_EA_HEADER.size
        value_at = name_at + name_len + 1
        end = value_at + value_len
        if end > n or buf[name_at + name_len] != 0:
            raise SmbError(NtStatus.EA_LIST_INCONSISTENT)
        raw_name = bytes(buf[name_at:name_at + name_len])
        if not valid_name(raw_name):
            raise SmbError(NtStatus.INVALID_EA_NAME)
        out.append(Ea(flags, raw_name.decode("ascii"), bytes(buf[value_at:end])))
        if nxt == 0:
            return out
        if nxt < end - off or nxt & 3:
            raise SmbError(NtStatus.EA_LIST_INCONSISTENT)
        off += nxt
    raise SmbError(NtStatus.EA_LIST_INCONSISTENT)


def parse_get_ea_list(buf: bytes) -> list[str]:
    """Decode a FILE_GET_EA_INFORMATION chain (QUERY_INFO's input buffer for class 15)."""
    names: list[str] = []
    off = 0
    n = len(buf)
    for _ in range(n // GET_EA_HEADER.size + 1):
        if off + GET_EA_HEADER.size > n:
            raise SmbError(NtStatus.EA_LIST_INCONSISTENT)
        nxt, name_len = GET_EA_HEADER.unpack_from(buf, off)
        name_at = off + GET_EA_HEADER.size
        if name_at + name_len > n:
            raise SmbError(NtStatus.EA_LIST_INCONSISTENT)
        raw = bytes(buf[name_at:name_at + name_len])
        if not valid_name(raw):
            raise SmbError(NtStatus.INVALID_EA_NAME)
        names.append(raw.decode("ascii"))
        if nxt == 0:
            return names
        off += nxt
    raise SmbError(NtStatus.EA_LIST_INCONSISTENT)


def _entry(ea: Ea) -> bytes:
    name = ea.name.encode("ascii")
    return FULL_EA_HEADER.pack(0, ea.flags, len(name), len(ea.value)) + name + b"\0" + ea.value


def encode_full_ea_list(eas: list[Ea]) -> bytes:
    """A FILE_FULL_EA_INFORMATION chain; every entry but the last is padded to 4 bytes."""
    parts = []
    for i, ea in enumerate(eas):
        e = _entry(ea)
        if i + 1 < len(eas):
            padded = (len(e) + 3) & ~3
            e = struct.pack("<I", padded) + e[4:] + b"\0" * (padded - len(e))
        parts.append(e)
    return b"".join(parts)


def entries_that_fit(eas: list[Ea], max_len: int) -> tuple[bytes, int]:
    """(chain of the leading entries that fit in max_len, how many)."""
    for count in range(len(eas), 0, -1):
        b = encode_full_ea_list(eas[:count])
        if len(b) <= max_len:
            return b, count
    return b"", 0


def ea_size(eas: list[Ea]) -> int:
    """FileEaInformation.EaSize: the length of the full chain (what Samba reports for
    SMB2, and enough buffer for a FileFullEaInformation query); 0 without EAs."""
    return len(encode_full_ea_list(eas)) if eas else 0


# ---- storage ------------------------------------------------------------------------------

def _fd_path(fd: int) -> str:
    # Works for O_PATH fds too (the kernel resolves the magic link).
    return f"/proc/self/fd/{fd}"


def read_eas(fd: int) -> list[Ea]:
    """The EAs of the open file, sorted by name (case-insensitively)."""
    path = _fd_path(fd)
    try:
        names = [x for x in os.listxattr(path) if x.startswith(XATTR_PREFIX)]
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.ENODATA):
            return []
        raise
    out = []
    for x in names:
        try:
            value = os.getxattr(path, x)
        except OSError as e:
            if e.errno == errno.ENODATA:     # removed meanwhile
                continue
            raise
        out.append(Ea(0, x[len(XATTR_PREFIX):], value))
    out.sort(key=lambda ea: ea.name.upper())
    return out


def write_eas(fd: int, eas: list[Ea]) -> None:
    """Apply a list as SET_INFO/CREATE do: an empty value removes the EA; a name that
    differs only in case replaces the existing one (EA names are case-insensitive)."""
    path = _fd_path(fd)
    try:
        existing = {x[len(XATTR_PREFIX):].upper(): x for x in os.listxattr(path)
                    if x.startswith(XATTR_PREFIX)}
    except OSError as e:
        if e.errno == errno.ENOTSUP:
            raise SmbError(NtStatus.EAS_NOT_SUPPORTED) from None
        raise
    for ea in eas:
        old = existing.pop(ea.name.upper(), None)
        try:
            if old is not None and (old != XATTR_PREFIX + ea.name or not ea.value):
                os.removexattr(path, old)
            if ea.value:
                os.setxattr(path, XATTR_PREFIX + ea.name, ea.value)
                existing[ea.name.upper()] = XATTR_PREFIX + ea.name
        except OSError as e:
            if e.errno == errno.ENOTSUP:
                raise SmbError(NtStatus.EAS_NOT_SUPPORTED) from None
            if e.errno in (errno.ENOSPC, errno.E2BIG, errno.ERANGE):
                raise SmbError(NtStatus.EA_TOO_LARGE) from None
            if e.errno == errno.ENODATA:
                continue
            raise


def replace_eas(fd: int, eas: list[Ea]) -> None:
    """Overwrite/supersede: the file's EAs become exactly `eas`."""
    current = read_eas(fd)
    write_eas(fd, [Ea(0, ea.name, b"") for ea in current] + list(eas))
