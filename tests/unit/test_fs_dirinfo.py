"""QUERY_DIRECTORY entries (cross-decoded with impacket's SMB structures) and DirCursor
over real directories, including a 20,000-entry one."""
from __future__ import annotations

import os
import struct

import pytest
from impacket import smb as ismb

from smbd_py.fs import dirinfo
from smbd_py.fs.dirinfo import DirCursor, encode_entry, pack_entries
from smbd_py.fs.info import FILE_ATTRIBUTE_ARCHIVE, FILE_ATTRIBUTE_DIRECTORY, FILE_ATTRIBUTE_HIDDEN
from smbd_py.fs.info import FileInfoClass as FIC
from smbd_py.fs.paths import STATX_AVAILABLE, ShareRoot, StatX, statx_at
from smbd_py.fs.shortname import short_name
from smbd_py.fs.timeconv import unix_ns_to_filetime
from smbd_py.wire.status import NtStatus, SmbError

U = ismb.SMB.FLAGS2_UNICODE

IMPACKET = {
    FIC.FileDirectoryInformation: ismb.SMBFindFileDirectoryInfo,
    FIC.FileFullDirectoryInformation: ismb.SMBFindFileFullDirectoryInfo,
    FIC.FileBothDirectoryInformation: ismb.SMBFindFileBothDirectoryInfo,
    FIC.FileNamesInformation: ismb.SMBFindFileNamesInfo,
    FIC.FileIdBothDirectoryInformation: ismb.SMBFindFileIdBothDirectoryInfo,
    FIC.FileIdFullDirectoryInformation: ismb.SMBFindFileIdFullDirectoryInfo,
}
FIXED = {
    FIC.FileDirectoryInformation: 64, FIC.FileFullDirectoryInformation: 68,
    FIC.FileBothDirectoryInformation: 94, FIC.FileNamesInformation: 12,
    FIC.FileIdBothDirectoryInformation: 104, FIC.FileIdFullDirectoryInformation: 80,
    FIC.FileIdExtdDirectoryInformation: 88,
}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "share"
    root.mkdir()
    (root / "alpha.txt").write_bytes(b"a" * 1234)
    (root / "Beta.TXT").write_bytes(b"b")
    (root / ".dotfile").write_bytes(b"")
    (root / "sub").mkdir()
    (root / "sub" / "inner.doc").write_bytes(b"i" * 7)
    return root


@pytest.mark.parametrize("cls", sorted(FIXED))
def test_fixed_part_sizes(tree, cls):
    st = os.stat(tree / "alpha.txt")
    e = encode_entry(cls, "alpha.txt", st)
    assert len(e) == FIXED[cls] + len("alpha.txt".encode("utf-16-le"))
    assert dirinfo.DIR_INFO_CLASSES[cls] == FIXED[cls]


@pytest.mark.parametrize("cls", sorted(IMPACKET))
def test_entries_decode_with_impacket(tree, cls):
    names = ["alpha.txt", "Beta.TXT", "sub", ".dotfile"]
    entries = [(n, os.stat(tree / n)) for n in names]
    buf, count = pack_entries(cls, entries, 65536)
    assert count == 4
    off = 0
    seen = []
    while True:
        rec = IMPACKET[cls](flags=U, data=buf[off:])
        name = rec["FileName"].decode("utf-16-le")
        seen.append(name)
        st = dict(entries)[name]
        if cls != FIC.FileNamesInformation:
            assert rec["EndOfFile"] == (0 if name == "sub" else st.st_size)
            assert rec["LastWriteTime"] == unix_ns_to_filetime(st.st_mtime_ns)
            attrs = rec["ExtFileAttributes"]
            if name == "sub":
                assert attrs == FILE_ATTRIBUTE_DIRECTORY
            elif name == ".dotfile":
                assert attrs == FILE_ATTRIBUTE_ARCHIVE | FILE_ATTRIBUTE_HIDDEN
            else:
                assert attrs == FILE_ATTRIBUTE_ARCHIVE
        if cls in (FIC.FileIdBothDirectoryInformation, FIC.FileIdFullDirectoryInformation):
            assert rec["FileID"] == st.st_ino
        if cls in (FIC.FileBothDirectoryInformation, FIC.FileIdBothDirectoryInformation):
            # lower-case names are not 8.3, so they carry a mangled short name
            want = short_name(name).encode("utf-16-le")
            assert rec["ShortNameLength"] == len(want)
            assert rec["ShortName"][:len(want)] == want
        nxt = rec["NextEntryOffset"]
        if nxt == 0:
            break
        assert nxt % 8 == 0
        off += nxt
    assert seen == names
    # the last entry carries no trailing padding
    assert len(buf) == off + FIXED[cls] + len(seen[-1].encode("utf-16-le"))


def test_pack_respects_max_len_and_single(tree):
    st = os.stat(tree / "alpha.txt")
    entries = [(f"name{i:04d}", st) for i in range(100)]
    one = len(encode_entry(FIC.FileIdBothDirectoryInformation, "name0000", st))  # 120
    padded = (one + 7) & ~7
    buf, n = pack_entries(FIC.FileIdBothDirectoryInformation, entries, padded * 3 + one)
    assert n == 4 and len(buf) == padded * 3 + one
    buf, n = pack_entries(FIC.FileIdBothDirectoryInformation, entries, padded * 3 + one - 1)
    assert n == 3
    buf, n = pack_entries(FIC.FileIdBothDirectoryInformation, entries, 65536, single=True)
    assert n == 1 and struct.unpack_from("<I", buf)[0] == 0
    buf, n = pack_entries(FIC.FileIdBothDirectoryInformation, entries, 10)
    assert (buf, n) == (b"", 0)
    with pytest.raises(SmbError) as ei:
        pack_entries(FIC.FileBasicInformation, entries, 100)
    assert ei.value.status == NtStatus.INVALID_INFO_CLASS


def test_cursor_dots_first_and_all_entries(tree):
    with ShareRoot(str(tree)) as share:
        fd = share.open_dir(())
        try:
            with DirCursor(fd, share=share, components=()) as cur:
                got = cur.next_batch(100)
                assert [n for n, _ in got[:2]] == [".", ".."]
                # at the share root '..' is the root itself
                assert os.path.samestat(got[0][1], got[1][1])
                assert sorted(n for n, _ in got[2:]) == [".dotfile", "Beta.TXT", "alpha.txt", "sub"]
                assert cur.next_batch(100) == []
                assert cur.exhausted
                cur.restart()
                assert len(cur.next_batch(100)) == 6
        finally:
            os.close(fd)
        fd = share.open_dir(("sub",))
        try:
            with DirCursor(fd, share=share, components=("sub",)) as cur:
                got = dict(cur.next_batch(10))
                assert os.path.samestat(got[".."], os.stat(tree))
                assert set(got) == {".", "..", "inner.doc"}
        finally:
            os.close(fd)


def test_cursor_pattern_and_exact(tree):
    with DirCursor(path=str(tree), pattern="*.txt") as cur:
        assert sorted(n for n, _ in cur.next_batch(50)) == ["Beta.TXT", "alpha.txt"]
        cur.set_pattern("BETA.txt")  # no wildcard: direct/case-insensitive lookup
        assert [n for n, _ in cur.next_batch(50)] == ["Beta.TXT"]
        cur.set_pattern("alpha.txt")
        assert [n for n, _ in cur.next_batch(50)] == ["alpha.txt"]
        assert cur.next_batch(50) == []
        cur.set_pattern("missing")
        assert cur.next_batch(50) == []
        cur.set_pattern("s<")
        assert [n for n, _ in cur.next_batch(50)] == ["sub"]


def test_cursor_symlinks(tree):
    os.symlink("alpha.txt", tree / "link_in")
    os.symlink("/etc/passwd", tree / "link_out")
    os.symlink("nowhere", tree / "dangling")
    with ShareRoot(str(tree)) as share:
        with DirCursor(path=str(tree), share=share, pattern="*link*") as cur:
            got = dict(cur.next_batch(10))
        import stat as st_mod
        assert got["link_in"].st_size == 1234          # followed, stays inside
        assert st_mod.S_ISLNK(got["link_out"].st_mode)  # not followed out of the share
    with DirCursor(path=str(tree), pattern="dangling") as cur:
        (name, st), = cur.next_batch(5)
        assert name == "dangling"


def test_cursor_fill_and_push_back(tree):
    with DirCursor(path=str(tree)) as cur:
        seen = []
        rounds = 0
        while rounds < 50:
            rounds += 1
            buf, n = cur.fill(FIC.FileNamesInformation, 40)
            if n == 0:
                break
            off = 0
            for _ in range(n):
                nxt, _, ln = struct.unpack_from("<III", buf, off)
                seen.append(buf[off + 12:off + 12 + ln].decode("utf-16-le"))
                off += nxt
        assert sorted(seen) == sorted([".", "..", ".dotfile", "Beta.TXT", "alpha.txt", "sub"])
        cur.restart()
        buf, n = cur.fill(FIC.FileIdBothDirectoryInformation, 65536, single=True)
        assert n == 1
        buf, n = cur.fill(FIC.FileIdBothDirectoryInformation, 65536)
        assert n == 5
        e = (".", os.stat(tree))
        cur.push_back(e)
        assert cur.next_batch(3) == [e]


def test_cursor_20000_entries_streams(tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    fd = os.open(big, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(20000):
            os.close(os.open(f"f{i:05d}.dat", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
        cur = DirCursor(fd)
        total = 0
        names = set()
        batches = 0
        while batches < 1000:
            b = cur.next_batch(500)
            if not b:
                break
            batches += 1
            assert len(b) <= 500
            # nothing beyond the current batch is held by the cursor
            assert len(cur._pending) == 0
            total += len(b)
            names.update(n for n, _ in b)
        assert total == 20002 and len(names) == 20002
        assert batches == 41
        # the caller's fd position is untouched (cursor has its own fd)
        assert len(os.listdir(fd)) == 20000
        # an interleaved restart works mid-way
        cur.restart()
        first = cur.next_batch(10)
        cur.restart()
        assert cur.next_batch(10) == first
        buf, n = cur.fill(FIC.FileIdBothDirectoryInformation, 65536)
        assert 0 < n < 20002 and len(buf) <= 65536
        cur.close()
    finally:
        os.close(fd)


def test_short_name_empty_for_8_3_names(tree):
    st = os.stat(tree / "alpha.txt")
    e = encode_entry(FIC.FileBothDirectoryInformation, "README.TXT", st)
    assert e[68] == 0 and e[70:94] == bytes(24)


def test_cursor_attributes_hook_and_statx(tree):
    calls = []

    def attrs_of(dir_fd, name, st):
        calls.append(name)
        assert os.path.samestat(os.stat(name, dir_fd=dir_fd, follow_symlinks=False), st)
        return 0x4  # SYSTEM, as if stored by the caller

    with DirCursor(path=str(tree), pattern="alpha.txt", attributes_of=attrs_of) as cur:
        buf, n = cur.fill(FIC.FileDirectoryInformation, 4096)
    assert n == 1 and calls == ["alpha.txt"]
    assert struct.unpack_from("<I", buf, 56)[0] == 0x4
    assert STATX_AVAILABLE
    with DirCursor(path=str(tree), stat_fn=statx_at) as cur:
        got = dict(cur.next_batch(20))
    assert all(isinstance(st, StatX) for st in got.values())
    assert got["alpha.txt"].st_size == 1234 and got["alpha.txt"].st_ino == os.stat(tree / "alpha.txt").st_ino
