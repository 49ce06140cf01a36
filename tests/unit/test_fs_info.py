"""QUERY_INFO / SET_INFO encoders on real files, sizes from MS-FSCC, cross-decoded with impacket."""
from __future__ import annotations

import os
import struct
import time

import pytest
from impacket import smb as ismb
from impacket import smb3structs as s3

from smbd_py.fs import info
from smbd_py.fs.info import FileInfoClass as FIC
from smbd_py.fs.info import FsInfoClass as FSC
from smbd_py.fs.info import OpenState, VolumeFacts
from smbd_py.fs.timeconv import FILETIME_EPOCH_DELTA, filetime_to_unix_ns, unix_ns_to_filetime
from smbd_py.wire.status import NtStatus, SmbError


@pytest.fixture
def files(tmp_path):
    f = tmp_path / "data.bin"
    f.write_bytes(b"x" * 10000)
    d = tmp_path / "adir"
    d.mkdir()
    h = tmp_path / ".hidden"
    h.write_bytes(b"")
    ro = tmp_path / "ro.txt"
    ro.write_bytes(b"r")
    os.chmod(ro, 0o444)
    return tmp_path


def test_timeconv():
    assert unix_ns_to_filetime(0) == FILETIME_EPOCH_DELTA
    assert filetime_to_unix_ns(FILETIME_EPOCH_DELTA) == 0
    # 2000-01-01T00:00:00Z is 125911584000000000 in FILETIME (well known constant)
    assert unix_ns_to_filetime(946684800 * 10**9) == 125911584000000000
    ns = time.time_ns() // 100 * 100
    assert filetime_to_unix_ns(unix_ns_to_filetime(ns)) == ns
    assert unix_ns_to_filetime(-FILETIME_EPOCH_DELTA * 100 - 10**12) == 0


def test_dos_attributes(files):
    assert info.dos_attributes(os.stat(files / "data.bin"), "data.bin") == info.FILE_ATTRIBUTE_ARCHIVE
    assert info.dos_attributes(os.stat(files / "adir"), "adir") == info.FILE_ATTRIBUTE_DIRECTORY
    assert info.dos_attributes(os.stat(files / ".hidden"), ".hidden") == (
        info.FILE_ATTRIBUTE_ARCHIVE | info.FILE_ATTRIBUTE_HIDDEN)
    assert info.dos_attributes(os.stat(files / "ro.txt"), "ro.txt") == (
        info.FILE_ATTRIBUTE_ARCHIVE | info.FILE_ATTRIBUTE_READONLY)
    assert info.dos_attributes(os.stat(files), ".") == info.FILE_ATTRIBUTE_DIRECTORY
    assert info.dos_attributes(os.stat(files / "data.bin"), "data.bin", stored=0) == info.FILE_ATTRIBUTE_NORMAL
    assert info.dos_attributes(os.stat(files / "adir"), "adir", stored=info.FILE_ATTRIBUTE_HIDDEN) == (
        info.FILE_ATTRIBUTE_DIRECTORY | info.FILE_ATTRIBUTE_HIDDEN)


SIZES = {
    FIC.FileBasicInformation: 40,
    FIC.FileStandardInformation: 24,
    FIC.FileInternalInformation: 8,
    FIC.FileEaInformation: 4,
    FIC.FileAccessInformation: 4,
    FIC.FilePositionInformation: 8,
    FIC.FileModeInformation: 4,
    FIC.FileAlignmentInformation: 4,
    FIC.FileCompressionInformation: 16,
    FIC.FileNetworkOpenInformation: 56,
    FIC.FileAttributeTagInformation: 8,
    FIC.FileIdInformation: 24,
}


@pytest.mark.parametrize("cls, size", sorted(SIZES.items()))
def test_fixed_sizes(files, cls, size):
    st = os.stat(files / "data.bin")
    buf = info.query_file_info(cls, st, OpenState(name="\\data.bin"))
    assert len(buf) == size
    assert info.FILE_INFO_FIXED_SIZE[cls] == (size, False)


def test_basic_and_standard_decode_with_impacket(files):
    p = files / "data.bin"
    os.utime(p, ns=(1_600_000_000_123_456_700, 1_500_000_000_000_000_000))
    st = os.stat(p)
    b = s3.FILE_BASIC_INFORMATION(info.encode_basic(st, OpenState(name="\\data.bin")))
    assert b["LastWriteTime"] == unix_ns_to_filetime(1_500_000_000_000_000_000)
    assert b["LastAccessTime"] == unix_ns_to_filetime(1_600_000_000_123_456_700)
    assert b["ChangeTime"] == unix_ns_to_filetime(st.st_ctime_ns)
    # no birth time given: creation = min(mtime, ctime) = mtime here
    assert b["CreationTime"] == b["LastWriteTime"]
    assert b["FileAttributes"] == info.FILE_ATTRIBUTE_ARCHIVE
    sd = s3.FILE_STANDARD_INFORMATION(info.encode_standard(st, OpenState(delete_pending=True)))
    assert sd["EndOfFile"] == 10000
    assert sd["AllocationSize"] == st.st_blocks * 512
    assert sd["NumberOfLinks"] == 0 and sd["DeletePending"] == 1 and sd["Directory"] == 0
    dst = os.stat(files / "adir")
    sd = s3.FILE_STANDARD_INFORMATION(info.encode_standard(dst))
    assert (sd["Directory"], sd["EndOfFile"], sd["AllocationSize"], sd["NumberOfLinks"]) == (1, 0, 0, 1)


def test_basic_uses_given_btime(files):
    st = os.stat(files / "data.bin")
    b = s3.FILE_BASIC_INFORMATION(info.encode_basic(st, OpenState(btime_ns=10**18)))
    assert b["CreationTime"] == unix_ns_to_filetime(10**18)


def test_all_information(files):
    st = os.stat(files / "data.bin")
    o = OpenState(name="\\sub\\data.bin", position=77, mode=info.FILE_SYNCHRONOUS_IO_NONALERT,
                  access_mask=0x12019F)
    buf = info.encode_all(st, o)
    name = "\\sub\\data.bin".encode("utf-16-le")
    assert len(buf) == 100 + len(name)
    a = s3.FILE_ALL_INFORMATION(buf)
    assert a["BasicInformation"]["FileAttributes"] == info.FILE_ATTRIBUTE_ARCHIVE
    assert a["StandardInformation"]["EndOfFile"] == 10000
    assert a["InternalInformation"]["IndexNumber"] == st.st_ino
    assert a["AccessInformation"]["AccessFlags"] == 0x12019F
    assert a["PositionInformation"]["CurrentByteOffset"] == 77
    assert a["ModeInformation"]["Mode"] == info.FILE_SYNCHRONOUS_IO_NONALERT
    assert a["NameInformation"]["FileNameLength"] == len(name)
    assert a["NameInformation"]["FileName"] == name
    # The SMB1 all-info view of the same prefix agrees on the times (independent decoder).
    assert struct.unpack_from("<q", buf, 16)[0] == a["BasicInformation"]["LastWriteTime"]


def test_name_network_open_tag_stream_compression(files):
    st = os.stat(files / "data.bin")
    n = s3.FILE_NAME_INFORMATION(info.encode_name(st, OpenState(name="\\a\\b")))
    assert n["FileName"].decode("utf-16-le") == "\\a\\b"
    nn = info.encode_normalized_name(st, OpenState(name="\\a\\b"))
    assert nn[4:].decode("utf-16-le") == "a\\b"
    c, a, w, ch, alloc, eof, attrs, res = struct.unpack("<qqqqqqII", info.encode_network_open(st))
    assert (alloc, eof, attrs, res) == (st.st_blocks * 512, 10000, info.FILE_ATTRIBUTE_ARCHIVE, 0)
    assert w == unix_ns_to_filetime(st.st_mtime_ns)
    assert struct.unpack("<II", info.encode_attribute_tag(st)) == (info.FILE_ATTRIBUTE_ARCHIVE, 0)
    s = info.encode_stream(st)
    nxt, nlen, size, salloc = struct.unpack_from("<IIqq", s)
    assert (nxt, size, salloc) == (0, 10000, st.st_blocks * 512)
    assert s[24:24 + nlen].decode("utf-16-le") == "::$DATA" and len(s) == 24 + nlen
    assert info.encode_stream(os.stat(files / "adir")) == b""
    assert struct.unpack("<qHBBB3x", info.encode_compression(st)) == (10000, 0, 0, 0, 0)
    vol, fid_lo, fid_hi = struct.unpack("<QQQ", info.encode_file_id(st))
    assert (vol, fid_lo, fid_hi) == (st.st_dev, st.st_ino, 0)


def test_alternate_name_and_unknown_class(files):
    st = os.stat(files / "data.bin")
    # 8.3 names: an 8.3-clean name is its own short name, others get a mangled one.
    alt = info.query_file_info(FIC.FileAlternateNameInformation, st, OpenState(name="\\D\\README.TXT"))
    assert alt[4:].decode("utf-16-le") == "README.TXT" and struct.unpack_from("<I", alt)[0] == 20
    alt = info.query_file_info(FIC.FileAlternateNameInformation, st, OpenState(name="\\data.bin"))
    short = alt[4:].decode("utf-16-le")
    assert short.endswith(".BIN") and "~" in short and len(short.split(".")[0]) <= 8
    with pytest.raises(SmbError) as ei:
        info.query_file_info(99, st)
    assert ei.value.status == NtStatus.INVALID_INFO_CLASS


def test_fs_classes(files):
    vfs = os.statvfs(files)
    spu = max(1, vfs.f_frsize // 512)
    full = info.query_fs_info(FSC.FileFsFullSizeInformation, vfs)
    assert len(full) == 32
    total, caller, actual, got_spu, bps = struct.unpack("<qqqII", full)
    assert (got_spu, bps) == (spu, 512)
    assert total * spu * 512 == vfs.f_blocks * vfs.f_frsize
    assert caller <= actual <= total
    sz = ismb.SMBQueryFsSizeInfo(info.query_fs_info(FSC.FileFsSizeInformation, vfs))
    assert sz["TotalAllocationUnits"] == total and sz["SectorsPerAllocationUnit"] == spu
    at = info.query_fs_info(FSC.FileFsAttributeInformation, vfs)
    a = ismb.SMBQueryFsAttributeInfo(at)
    assert a["FileSystemName"].decode("utf-16-le") == "NTFS"
    assert a["MaxFilenNameLengthInBytes"] == 255
    assert a["FileSystemAttributes"] == (info.FILE_CASE_PRESERVED_NAMES | info.FILE_UNICODE_ON_DISK
                                         | info.FILE_NAMED_STREAMS)
    vol = info.query_fs_info(FSC.FileFsVolumeInformation, vfs, VolumeFacts(label="share", serial=0x1234))
    ctime, serial, llen, supports, _ = struct.unpack_from("<qIIBB", vol)
    assert (serial, llen, supports) == (0x1234, 10, 0)
    assert vol[18:].decode("utf-16-le") == "share"
    assert struct.unpack("<II", info.query_fs_info(FSC.FileFsDeviceInformation, vfs)) == (7, 0x20)
    assert len(info.query_fs_info(FSC.FileFsObjectIdInformation, vfs)) == 64
    sec = struct.unpack("<7I", info.query_fs_info(FSC.FileFsSectorSizeInformation, vfs))
    assert sec[:4] == (512, 512, 512, 512)
    # quotas off: thresholds/limits "none", control flags 0 (MS-FSCC 2.5.2)
    ctl = info.query_fs_info(FSC.FileFsControlInformation, vfs)
    assert struct.unpack("<qqqQQI4x", ctl) == (0, 0, 0, 2**64 - 1, 2**64 - 1, 0)
    with pytest.raises(SmbError) as ei:
        info.query_fs_info(FSC.FileFsDriverPathInformation, vfs)
    assert ei.value.status == NtStatus.INVALID_INFO_CLASS


def test_fit_rules(files):
    st = os.stat(files / "data.bin")
    basic = info.encode_basic(st)
    assert info.fit(basic, 40, True) == (NtStatus.SUCCESS, basic)
    assert info.fit(basic, 39, True) == (NtStatus.INFO_LENGTH_MISMATCH, b"")
    allb = info.encode_all(st, OpenState(name="\\data.bin"))
    status, out = info.fit_file_info(FIC.FileAllInformation, allb, 104)
    assert status == NtStatus.BUFFER_OVERFLOW and out == allb[:104]
    assert info.fit_file_info(FIC.FileAllInformation, allb, 99) == (NtStatus.INFO_LENGTH_MISMATCH, b"")
    assert info.fit_file_info(FIC.FileAllInformation, allb, 4096) == (NtStatus.SUCCESS, allb)
    assert info.fit_file_info(FIC.FileBasicInformation, basic, 8) == (NtStatus.INFO_LENGTH_MISMATCH, b"")
    # FileStreamInformation of a directory is empty; the minimum length still applies
    # (Windows' minimum is sizeof(FILE_STREAM_INFORMATION) = 32)
    assert info.fit_file_info(FIC.FileStreamInformation, b"", 32) == (NtStatus.SUCCESS, b"")
    assert info.fit_file_info(FIC.FileStreamInformation, b"", 31)[0] == NtStatus.INFO_LENGTH_MISMATCH
    # FileAllInformation: 103 is below sizeof(FILE_ALL_INFORMATION), so no partial answer
    assert info.fit_file_info(FIC.FileAllInformation, allb, 103) == (NtStatus.INFO_LENGTH_MISMATCH, b"")
    at = info.encode_fs_attribute()
    st2, out = info.fit_fs_info(FSC.FileFsAttributeInformation, at, 16)
    assert st2 == NtStatus.BUFFER_OVERFLOW and len(out) == 16
    assert info.fit_fs_info(FSC.FileFsAttributeInformation, at, 15) == (NtStatus.INFO_LENGTH_MISMATCH, b"")
    vol = info.encode_fs_volume("share", 1)
    assert info.fit_fs_info(FSC.FileFsVolumeInformation, vol, 23) == (NtStatus.INFO_LENGTH_MISMATCH, b"")
    assert info.fit_fs_info(FSC.FileFsVolumeInformation, vol, 24)[0] == NtStatus.BUFFER_OVERFLOW
    assert info.fit(at, 10, 12) == (NtStatus.INFO_LENGTH_MISMATCH, b"")


# -- SET_INFO decoders ------------------------------------------------------------------

def test_decode_basic():
    raw = struct.pack("<qqqqII", 0, -1, -2, 132000000000000000, 0x20, 0)
    b = info.decode_set_info(FIC.FileBasicInformation, raw)
    assert b == info.BasicInfo(0, info.TIME_FREEZE, info.TIME_RESUME, 132000000000000000, 0x20)
    assert info.decode_basic(raw[:36]) == b
    with pytest.raises(SmbError) as ei:
        info.decode_basic(raw[:30])
    assert ei.value.status == NtStatus.INFO_LENGTH_MISMATCH
    # impacket's encoder of the same structure decodes identically
    ib = s3.FILE_BASIC_INFORMATION()
    ib["CreationTime"], ib["LastAccessTime"], ib["LastWriteTime"], ib["ChangeTime"] = 1, 2, 3, 4
    ib["FileAttributes"] = 0x80
    assert info.decode_basic(ib.getData()) == info.BasicInfo(1, 2, 3, 4, 0x80)


def test_decode_rename_from_impacket():
    r = s3.FILE_RENAME_INFORMATION_TYPE_2()
    r["ReplaceIfExists"] = 1
    r["RootDirectory"] = 0
    r["FileName"] = "dir\\new näme.txt".encode("utf-16-le")
    r["FileNameLength"] = len(r["FileName"])
    d = info.decode_set_info(FIC.FileRenameInformation, r.getData())
    assert d == info.RenameInfo(True, 0, "dir\\new näme.txt")
    assert info.decode_set_info(FIC.FileLinkInformation, r.getData()).file_name == "dir\\new näme.txt"
    bad = struct.pack("<B7xQI", 0, 0, 100) + b"ab"
    with pytest.raises(SmbError) as ei:
        info.decode_rename(bad)
    assert ei.value.status == NtStatus.INVALID_PARAMETER
    with pytest.raises(SmbError) as ei:
        info.decode_rename(b"\0" * 10)
    assert ei.value.status == NtStatus.INFO_LENGTH_MISMATCH


def test_decode_small_classes():
    assert info.decode_set_info(FIC.FileDispositionInformation, b"\x01") == info.DispositionInfo(True, 1)
    assert info.decode_set_info(FIC.FileDispositionInformation, b"\x00") == info.DispositionInfo(False, 0)
    ex = info.decode_set_info(FIC.FileDispositionInformationEx, struct.pack("<I", 0x3))
    assert ex.delete_pending and ex.flags & info.FILE_DISPOSITION_POSIX_SEMANTICS
    assert info.decode_set_info(FIC.FileEndOfFileInformation, struct.pack("<q", 12345)) == 12345
    assert info.decode_set_info(FIC.FileAllocationInformation, struct.pack("<q", 4096)) == 4096
    assert info.decode_set_info(FIC.FilePositionInformation, struct.pack("<q", 7)) == 7
    with pytest.raises(SmbError) as ei:
        info.decode_end_of_file(struct.pack("<q", -1))
    assert ei.value.status == NtStatus.INVALID_PARAMETER
    assert info.decode_set_info(FIC.FileModeInformation, struct.pack("<I", 0x20)) == 0x20
    with pytest.raises(SmbError):
        info.decode_mode(struct.pack("<I", 0x30))
    with pytest.raises(SmbError):
        info.decode_mode(struct.pack("<I", 0x1))
    with pytest.raises(SmbError) as ei:
        info.decode_set_info(FIC.FileEndOfFileInformation, b"\0" * 4)
    assert ei.value.status == NtStatus.INFO_LENGTH_MISMATCH
    with pytest.raises(SmbError) as ei:
        info.decode_set_info(FIC.FileStreamInformation, b"")
    assert ei.value.status == NtStatus.INVALID_INFO_CLASS
