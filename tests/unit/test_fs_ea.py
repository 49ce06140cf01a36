"""fs.ea: FILE_FULL_EA_INFORMATION / FILE_GET_EA_INFORMATION codecs (MS-FSCC 2.4.15,
2.4.15.1) and EA storage in real xattrs of a real file."""
from __future__ import annotations

import os
import struct

import pytest

from smbd_py.fs import ea as fsea
from smbd_py.fs.ea import Ea
from smbd_py.wire.status import NtStatus, SmbError


def _raw_entry(name: bytes, value: bytes, nxt: int = 0, flags: int = 0) -> bytes:
    return struct.pack("<IBBH", nxt, flags, len(name), len(value)) + name + b"\0" + value


def test_encode_layout_and_padding():
    b = fsea.encode_full_ea_list([Ea(0, "EAONE", b"VALUE1"), Ea(0x80, "SECONDEA", b"ValueTwo")])
    # first entry: 8 + 5 + 1 + 6 = 20 (already 4-aligned), second: 8 + 8 + 1 + 8 = 25
    assert struct.unpack_from("<IBBH", b, 0) == (20, 0, 5, 6)
    assert b[8:14] == b"EAONE\0" and b[14:20] == b"VALUE1"
    assert struct.unpack_from("<IBBH", b, 20) == (0, 0x80, 8, 8)
    assert len(b) == 45
    assert fsea.parse_full_ea_list(b) == [Ea(0, "EAONE", b"VALUE1"), Ea(0x80, "SECONDEA", b"ValueTwo")]


def test_padding_of_unaligned_entry():
    b = fsea.encode_full_ea_list([Ea(0, "A", b"x"), Ea(0, "B", b"")])
    assert struct.unpack_from("<I", b)[0] == 12          # 8 + 1 + 1 + 1 = 11 -> 12
    assert fsea.parse_full_ea_list(b) == [Ea(0, "A", b"x"), Ea(0, "B", b"")]


@pytest.mark.parametrize("raw, status", [
    (b"\0" * 5, NtStatus.EA_LIST_INCONSISTENT),                       # short header
    (_raw_entry(b"NAME", b"v")[:-1], NtStatus.EA_LIST_INCONSISTENT),  # value cut
    (_raw_entry(b"NAME", b"v", nxt=4) + b"\0" * 16, NtStatus.EA_LIST_INCONSISTENT),  # next inside
    (_raw_entry(b"NAME", b"v", nxt=1000), NtStatus.EA_LIST_INCONSISTENT),           # next outside
    (_raw_entry(b"NA*E", b"v"), NtStatus.INVALID_EA_NAME),
    (_raw_entry(b"", b"v"), NtStatus.INVALID_EA_NAME),
    (struct.pack("<IBBH", 0, 0, 4, 1) + b"NAMEXv", NtStatus.EA_LIST_INCONSISTENT),  # no NUL
])
def test_parse_rejects(raw, status):
    with pytest.raises(SmbError) as ei:
        fsea.parse_full_ea_list(raw)
    assert ei.value.status == status


def test_get_ea_list():
    raw = struct.pack("<IB", 12, 3) + b"ONE\0" + b"\0" * 3 + struct.pack("<IB", 0, 3) + b"TWO\0"
    assert fsea.parse_get_ea_list(raw) == ["ONE", "TWO"]


def test_entries_that_fit():
    eas = [Ea(0, "EAONE", b"VALUE1"), Ea(0, "SECONDEA", b"ValueTwo")]
    full = fsea.encode_full_ea_list(eas)
    assert fsea.entries_that_fit(eas, len(full)) == (full, 2)
    data, n = fsea.entries_that_fit(eas, len(full) - 1)
    assert n == 1 and fsea.parse_full_ea_list(data) == eas[:1]
    assert fsea.entries_that_fit(eas, 10) == (b"", 0)
    assert fsea.ea_size(eas) == len(full) and fsea.ea_size([]) == 0


def test_storage_roundtrip(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"data")
    fd = os.open(p, os.O_RDONLY)
    try:
        assert fsea.read_eas(fd) == []
        fsea.write_eas(fd, [Ea(0, "SecondEA", b"two"), Ea(0, "EAONE", b"one")])
        assert fsea.read_eas(fd) == [Ea(0, "EAONE", b"one"), Ea(0, "SecondEA", b"two")]
        # names are case-insensitive: a new spelling replaces the old one
        fsea.write_eas(fd, [Ea(0, "eaone", b"ONE")])
        assert fsea.read_eas(fd) == [Ea(0, "eaone", b"ONE"), Ea(0, "SecondEA", b"two")]
        # an empty value deletes; deleting an absent EA is not an error
        fsea.write_eas(fd, [Ea(0, "SECONDEA", b""), Ea(0, "NOPE", b"")])
        assert fsea.read_eas(fd) == [Ea(0, "eaone", b"ONE")]
        fsea.replace_eas(fd, [Ea(0, "NEW", b"n")])
        assert fsea.read_eas(fd) == [Ea(0, "NEW", b"n")]
        # our own xattrs and foreign ones are not EAs
        os.setxattr(p, "user.other", b"x")
        assert [ea.name for ea in fsea.read_eas(fd)] == ["NEW"]
    finally:
        os.close(fd)


def test_storage_through_o_path_fd(tmp_path):
    p = tmp_path / "g"
    p.write_bytes(b"")
    fd = os.open(p, os.O_PATH)
    try:
        fsea.write_eas(fd, [Ea(0, "X", b"1")])
        assert fsea.read_eas(fd) == [Ea(0, "X", b"1")]
    finally:
        os.close(fd)
