"""fs.paths statx binding on the real kernel: same fields as os.stat, a birth time that a
write does not move, errors as OSError, safe from many threads; protocol.info's stored
value (attributes + client-set creation time) round trip."""
from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from smbd_py.fs import paths
from smbd_py.protocol.info import StoredAttributes, parse_stored

FIELDS = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size",
          "st_blocks", "st_blksize", "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_rdev")


def test_fstatx_matches_fstat_and_has_birth_time(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    fd = os.open(p, os.O_RDONLY)
    try:
        sx, st = paths.fstatx(fd), os.fstat(fd)
        for k in FIELDS:
            assert getattr(sx, k) == getattr(st, k), k
        assert 0 < sx.st_birthtime_ns <= sx.st_mtime_ns
        assert paths.STATX_AVAILABLE and paths.fstat_btime is paths.fstatx
    finally:
        os.close(fd)


def test_birth_time_stays_across_writes_and_o_path(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    b0 = paths.statx_at(str(p), -100).st_birthtime_ns
    time.sleep(0.02)
    p.write_bytes(b"abcdef")
    fd = os.open(p, os.O_PATH)
    try:
        sx = paths.fstatx(fd)
    finally:
        os.close(fd)
    assert sx.st_birthtime_ns == b0 and sx.st_mtime_ns > b0 and sx.st_size == 6


def test_share_root_keeps_birth_time_on_tmpfs():
    """tmpfs records birth times too: a write through the share must not move the
    creation time fs.info reports."""
    import tempfile
    from smbd_py.fs.info import creation_ns
    if not os.path.isdir("/dev/shm"):
        pytest.fail("/dev/shm missing: cannot check birth times on tmpfs")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        with paths.ShareRoot(d, use_statx=True) as s:
            os.close(s.open(("x",), os.O_CREAT | os.O_WRONLY))
            st1 = s.stat(("x",))
            assert st1.st_birthtime_ns > 0
            time.sleep(0.02)
            fd = s.open(("x",), os.O_WRONLY)
            os.write(fd, b"more")
            os.close(fd)
            st2 = s.stat(("x",))
            assert st2.st_mtime_ns > st1.st_mtime_ns
            assert creation_ns(st2) == creation_ns(st1) == st1.st_birthtime_ns


def test_statx_at_follows_or_not(tmp_path):
    (tmp_path / "t").write_bytes(b"x")
    os.symlink("t", tmp_path / "l")
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert paths.statx_at("l", dfd).st_ino == os.stat(tmp_path / "t").st_ino
        assert paths.statx_at("l", dfd, follow_symlinks=False).st_ino == os.lstat(tmp_path / "l").st_ino
        assert paths.statx_at(b"t", dfd) == paths.statx_at("t", dfd)
        with pytest.raises(OSError) as e:
            paths.statx_at("missing", dfd)
        assert e.value.errno == errno.ENOENT
    finally:
        os.close(dfd)
    with pytest.raises(OSError) as e:
        paths.fstatx(987654)
    assert e.value.errno == errno.EBADF


def test_statx_from_many_threads(tmp_path):
    names = []
    for i in range(8):
        (tmp_path / f"f{i}").write_bytes(b"x" * i)
        names.append(str(tmp_path / f"f{i}"))
    bad = []

    def run(i):
        for _ in range(300):
            if paths.statx_at(names[i], -100).st_size != i:
                bad.append(i)
    ts = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not bad


def test_share_root_reports_birth_times(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    with paths.ShareRoot(str(tmp_path)) as root:
        assert root.stat(("f",)).st_birthtime_ns == paths.statx_at(str(tmp_path / "f"), -100).st_birthtime_ns


def test_stored_value_round_trip():
    assert parse_stored(b"") is None
    assert parse_stored((0x22).to_bytes(4, "little")) == 0x22
    v = parse_stored((0x2).to_bytes(4, "little") + (123456789).to_bytes(8, "little", signed=True))
    assert isinstance(v, StoredAttributes) and v == 2 and v.creation_ns == 123456789
    assert v & 2 and (v | 0x20) == 0x22
