"""ShareRoot confinement, name validation and case-insensitive lookup on real files.

Every behaviour is checked twice: with the kernel's openat2(RESOLVE_BENEATH) and with
the component-wise fallback walk, so both confinement mechanisms stay honest.
"""
from __future__ import annotations

import errno
import os
import threading

import pytest

from smbd_py.fs import paths
from smbd_py.fs.paths import PathEscapeError, ShareRoot, errno_to_status, split_path, split_stream_path
from smbd_py.wire.status import NtStatus, SmbError


def test_openat2_detected_on_this_kernel():
    # The project's machines run kernels >= 5.6; if this fails the fallback is in use
    # everywhere, which is worth knowing.
    assert paths.OPENAT2_AVAILABLE


@pytest.fixture(params=["openat2", "walk"])
def share(request, tmp_path):
    root = tmp_path / "share"
    root.mkdir()
    (root / "dir").mkdir()
    (root / "dir" / "sub").mkdir()
    (root / "dir" / "File.TXT").write_bytes(b"hello")
    (root / "top.txt").write_bytes(b"top")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    s = ShareRoot(str(root), use_openat2=(request.param == "openat2"))
    assert s.use_openat2 == (request.param == "openat2")
    s.tmp = tmp_path
    yield s
    s.close()


def _status(excinfo) -> int:
    return excinfo.value.status


def read_all(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


# -- syntax -----------------------------------------------------------------------

@pytest.mark.parametrize("smb_path, comps", [
    ("", ()),
    ("\\", ()),
    ("a", ("a",)),
    ("\\a\\b", ("a", "b")),
    ("a\\b\\", ("a", "b")),
    ("a\\..\\b", ("b",)),
    ("a\\b\\..\\..\\c", ("c",)),
    ("file::$DATA", ("file",)),
    ("file::$data", ("file",)),
    ("dir\\file:", ("dir", "file")),
    ("sp ace\\ünï", ("sp ace", "ünï")),
])
def test_split_valid(smb_path, comps):
    assert split_path(smb_path) == comps


@pytest.mark.parametrize("smb_path, status", [
    ("..", NtStatus.OBJECT_PATH_SYNTAX_BAD),
    ("\\..", NtStatus.OBJECT_PATH_SYNTAX_BAD),
    ("..\\..\\etc\\passwd", NtStatus.OBJECT_PATH_SYNTAX_BAD),
    ("a\\..\\..\\etc", NtStatus.OBJECT_PATH_SYNTAX_BAD),
    ("a\\\\b", NtStatus.OBJECT_NAME_INVALID),
    ("a\\.\\b", NtStatus.OBJECT_NAME_INVALID),
    ("/etc/passwd", NtStatus.OBJECT_NAME_INVALID),
    ("a/b", NtStatus.OBJECT_NAME_INVALID),
    ("C:\\Windows", NtStatus.OBJECT_NAME_INVALID),
    ("a*b", NtStatus.OBJECT_NAME_INVALID),
    ("a?b", NtStatus.OBJECT_NAME_INVALID),
    ('a"b', NtStatus.OBJECT_NAME_INVALID),
    ("a<b", NtStatus.OBJECT_NAME_INVALID),
    ("a>b", NtStatus.OBJECT_NAME_INVALID),
    ("a|b", NtStatus.OBJECT_NAME_INVALID),
    ("a\x00b", NtStatus.OBJECT_NAME_INVALID),
    ("a\x1fb", NtStatus.OBJECT_NAME_INVALID),
    ("a\udc2fb", NtStatus.OBJECT_NAME_INVALID),
    ("dir:x\\file", NtStatus.OBJECT_NAME_INVALID),
    ("file:s:$BOGUS", NtStatus.OBJECT_NAME_INVALID),
    (":s", NtStatus.OBJECT_NAME_INVALID),
    ("file:stream", NtStatus.OBJECT_NAME_NOT_FOUND),
    ("file:stream:$DATA", NtStatus.OBJECT_NAME_NOT_FOUND),
])
def test_split_invalid(smb_path, status):
    with pytest.raises(SmbError) as ei:
        split_path(smb_path)
    assert _status(ei) == status


def test_split_stream_reports_stream():
    assert split_stream_path("d\\f:s1:$DATA") == (("d", "f"), "s1")
    assert split_stream_path("f::$DATA") == (("f",), None)


def test_errno_mapping():
    assert errno_to_status(errno.ENOENT, True) == NtStatus.OBJECT_NAME_NOT_FOUND
    assert errno_to_status(errno.ENOENT, False) == NtStatus.OBJECT_PATH_NOT_FOUND
    assert errno_to_status(errno.ENOTDIR, False) == NtStatus.OBJECT_PATH_NOT_FOUND
    assert errno_to_status(errno.EEXIST) == NtStatus.OBJECT_NAME_COLLISION
    assert errno_to_status(errno.EACCES) == NtStatus.ACCESS_DENIED
    assert errno_to_status(errno.EPERM) == NtStatus.ACCESS_DENIED
    assert errno_to_status(errno.EISDIR) == NtStatus.FILE_IS_A_DIRECTORY
    assert errno_to_status(errno.ENOTEMPTY) == NtStatus.DIRECTORY_NOT_EMPTY
    assert errno_to_status(errno.ELOOP) == NtStatus.ACCESS_DENIED
    assert errno_to_status(errno.EXDEV) == NtStatus.ACCESS_DENIED
    assert errno_to_status(errno.ENOSPC) == NtStatus.DISK_FULL
    assert errno_to_status(errno.ENAMETOOLONG) == NtStatus.OBJECT_NAME_INVALID


# -- opening ------------------------------------------------------------------------

def test_open_plain_and_root(share):
    assert read_all(share.open(share.split("dir\\File.TXT"), os.O_RDONLY)) == b"hello"
    fd = share.open((), os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(share.path))
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)


def test_missing_last_vs_intermediate(share):
    with pytest.raises(SmbError) as ei:
        share.open(("dir", "nope"), os.O_RDONLY)
    assert _status(ei) == NtStatus.OBJECT_NAME_NOT_FOUND
    with pytest.raises(SmbError) as ei:
        share.open(("nodir", "x"), os.O_RDONLY)
    assert _status(ei) == NtStatus.OBJECT_PATH_NOT_FOUND
    with pytest.raises(SmbError) as ei:
        share.open(("top.txt", "x"), os.O_RDONLY)  # file used as a directory
    assert _status(ei) == NtStatus.OBJECT_PATH_NOT_FOUND
    with pytest.raises(SmbError) as ei:
        share.stat(("nodir", "deeper", "x"))
    assert _status(ei) == NtStatus.OBJECT_PATH_NOT_FOUND


def test_create_exclusive_collision(share):
    fd = share.open(("dir", "new.bin"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.close(fd)
    with pytest.raises(SmbError) as ei:
        share.open(("dir", "new.bin"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    assert _status(ei) == NtStatus.OBJECT_NAME_COLLISION
    # a case variant of an existing name collides too (case-insensitive share)
    with pytest.raises(SmbError) as ei:
        share.open(("DIR", "NEW.BIN"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    assert _status(ei) == NtStatus.OBJECT_NAME_COLLISION


def test_dotdot_escape_through_syntax(share):
    for p in ("..\\..\\etc\\passwd", "\\..", "dir\\..\\..\\outside\\secret"):
        with pytest.raises(SmbError) as ei:
            share.split(p)
        assert _status(ei) == NtStatus.OBJECT_PATH_SYNTAX_BAD


def test_dotdot_components_never_leave_even_if_passed_directly(share):
    # Components are meant to come from split(); even if a caller bypasses it, the
    # kernel/walk refuses to climb out.
    with pytest.raises(PathEscapeError):
        share.open(("..", "outside", "secret"), os.O_RDONLY)


def test_symlink_to_etc_denied(share):
    os.symlink("/etc/passwd", os.path.join(share.path, "pw"))
    with pytest.raises(SmbError) as ei:
        share.open(("pw",), os.O_RDONLY)
    assert isinstance(ei.value, PathEscapeError)
    assert _status(ei) == NtStatus.ACCESS_DENIED
    with pytest.raises(PathEscapeError):
        share.stat(("pw",))


def test_relative_symlink_escape_denied(share):
    os.symlink("../outside/secret", os.path.join(share.path, "rel"))
    with pytest.raises(PathEscapeError):
        share.open(("rel",), os.O_RDONLY)


def test_symlink_dir_outside_as_intermediate(share):
    os.symlink(str(share.tmp / "outside"), os.path.join(share.path, "out"))
    os.symlink("../../outside", os.path.join(share.path, "dir", "out2"))
    with pytest.raises(PathEscapeError):
        share.open(("out", "secret"), os.O_RDONLY)
    with pytest.raises(PathEscapeError):
        share.open(("dir", "out2", "secret"), os.O_RDONLY)
    with pytest.raises(PathEscapeError):
        share.open(("out", "created"), os.O_CREAT | os.O_WRONLY)
    assert not (share.tmp / "outside" / "created").exists()
    with pytest.raises(PathEscapeError):
        share.mkdir(("out", "newdir"))
    assert not (share.tmp / "outside" / "newdir").exists()


def test_dangling_symlink_create_outside_refused(share):
    os.symlink(str(share.tmp / "outside" / "planted"), os.path.join(share.path, "trap"))
    with pytest.raises(PathEscapeError):
        share.open(("trap",), os.O_CREAT | os.O_WRONLY)
    assert not (share.tmp / "outside" / "planted").exists()


def test_symlink_inside_to_inside_works(share):
    os.symlink("dir/File.TXT", os.path.join(share.path, "alias"))
    os.symlink("..", os.path.join(share.path, "dir", "sub", "up"))
    assert read_all(share.open(("alias",), os.O_RDONLY)) == b"hello"
    assert read_all(share.open(("dir", "sub", "up", "File.TXT"), os.O_RDONLY)) == b"hello"
    assert share.stat(("alias",)).st_size == 5
    # follow_last=False gives the link itself
    fd = share.open(("alias",), os.O_PATH, follow_last=False)
    try:
        import stat as st_mod
        assert st_mod.S_ISLNK(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def test_symlink_loop_is_access_denied(share):
    os.symlink("loop2", os.path.join(share.path, "loop1"))
    os.symlink("loop1", os.path.join(share.path, "loop2"))
    with pytest.raises(SmbError) as ei:
        share.open(("loop1",), os.O_RDONLY)
    assert _status(ei) == NtStatus.ACCESS_DENIED


def test_swap_race_cannot_escape(share):
    """A local user flips dir/sub between a real directory and a symlink to outside
    while we open dir/sub/secret many times: we must never read the outside file."""
    outside = str(share.tmp / "outside")
    sub = os.path.join(share.path, "dir", "race")
    os.mkdir(sub)
    with open(os.path.join(sub, "secret"), "wb") as f:
        f.write(b"inside")
    stop = threading.Event()

    def flipper():
        real = sub + ".real"
        link = sub + ".link"
        os.symlink(outside, link)
        os.rename(sub, real)
        n = 0
        while not stop.is_set() and n < 200000:
            n += 1
            os.rename(link, sub)     # sub -> outside
            os.rename(sub, link)
            os.rename(real, sub)     # sub -> real dir
            os.rename(sub, real)

    t = threading.Thread(target=flipper)
    t.start()
    seen = set()
    try:
        for _ in range(3000):
            try:
                seen.add(read_all(share.open(("dir", "race", "secret"), os.O_RDONLY)))
            except SmbError:
                pass
    finally:
        stop.set()
        t.join(timeout=30)
    assert b"secret" not in seen


# -- case-insensitive lookup ------------------------------------------------------------

def test_case_insensitive_open_and_stat(share):
    assert read_all(share.open(share.split("DIR\\file.txt"), os.O_RDONLY)) == b"hello"
    assert share.stat(("Dir", "FILE.txt")).st_size == 5
    assert share.resolve(("DIR", "SUB", "newname")) == ("dir", "sub", "newname")
    assert share.resolve(("dir", "file.txt")) == ("dir", "File.TXT")


def test_new_names_created_as_given(share):
    os.close(share.open(("DIR", "MixedCase.Doc"), os.O_CREAT | os.O_WRONLY))
    assert "MixedCase.Doc" in os.listdir(os.path.join(share.path, "dir"))
    # O_CREAT on an existing case variant opens the existing file, creating nothing
    os.close(share.open(("dir", "file.txt"), os.O_CREAT | os.O_RDWR))
    assert sorted(os.listdir(os.path.join(share.path, "dir"))) == ["File.TXT", "MixedCase.Doc", "sub"]


def test_case_sensitive_share(tmp_path):
    (tmp_path / "A").write_bytes(b"x")
    with ShareRoot(str(tmp_path), case_sensitive=True) as s:
        with pytest.raises(SmbError) as ei:
            s.open(("a",), os.O_RDONLY)
        assert _status(ei) == NtStatus.OBJECT_NAME_NOT_FOUND


# -- directory operations -------------------------------------------------------------

def test_mkdir_rmdir_unlink(share):
    share.mkdir(("dir", "newdir"))
    assert os.path.isdir(os.path.join(share.path, "dir", "newdir"))
    with pytest.raises(SmbError) as ei:
        share.mkdir(("DIR", "NEWDIR"))
    assert _status(ei) == NtStatus.OBJECT_NAME_COLLISION
    with pytest.raises(SmbError) as ei:
        share.rmdir(("dir",))
    assert _status(ei) == NtStatus.DIRECTORY_NOT_EMPTY
    share.rmdir(("Dir", "NewDir"))
    assert not os.path.exists(os.path.join(share.path, "dir", "newdir"))
    share.unlink(("DIR", "file.txt"))
    assert not os.path.exists(os.path.join(share.path, "dir", "File.TXT"))
    with pytest.raises(SmbError) as ei:
        share.unlink(("dir", "file.txt"))
    assert _status(ei) == NtStatus.OBJECT_NAME_NOT_FOUND
    with pytest.raises(SmbError) as ei:
        share.rmdir(())
    assert _status(ei) == NtStatus.ACCESS_DENIED


def test_unlink_symlink_removes_link_not_target(share):
    os.symlink(str(share.tmp / "outside" / "secret"), os.path.join(share.path, "ln"))
    share.unlink(("ln",))
    assert (share.tmp / "outside" / "secret").exists()


def test_rename_without_replace(share):
    new = share.rename(("top.txt",), ("dir", "moved.txt"), replace=False)
    assert new == ("dir", "moved.txt")
    assert (share.tmp / "share" / "dir" / "moved.txt").read_bytes() == b"top"
    with pytest.raises(SmbError) as ei:
        share.rename(("dir", "moved.txt"), ("dir", "File.TXT"), replace=False)
    assert _status(ei) == NtStatus.OBJECT_NAME_COLLISION
    with pytest.raises(SmbError) as ei:  # case variant of another file collides
        share.rename(("dir", "moved.txt"), ("dir", "file.txt"), replace=False)
    assert _status(ei) == NtStatus.OBJECT_NAME_COLLISION
    assert (share.tmp / "share" / "dir" / "File.TXT").read_bytes() == b"hello"


def test_rename_with_replace(share):
    share.rename(("top.txt",), ("dir", "file.txt"), replace=True)
    names = sorted(os.listdir(os.path.join(share.path, "dir")))
    assert names == ["File.TXT", "sub"]  # replaced the existing entry, no twin
    assert (share.tmp / "share" / "dir" / "File.TXT").read_bytes() == b"top"
    with pytest.raises(SmbError) as ei:
        share.rename(("dir", "File.TXT"), ("dir", "sub"), replace=True)
    assert _status(ei) == NtStatus.ACCESS_DENIED


def test_rename_case_only(share):
    new = share.rename(("dir", "File.TXT"), ("dir", "file.txt"), replace=False)
    assert new == ("dir", "file.txt")
    assert sorted(os.listdir(os.path.join(share.path, "dir"))) == ["file.txt", "sub"]


def test_rename_confined(share):
    os.symlink(str(share.tmp / "outside"), os.path.join(share.path, "out"))
    with pytest.raises(PathEscapeError):
        share.rename(("top.txt",), ("out", "stolen"), replace=False)
    assert (share.tmp / "share" / "top.txt").exists()
    with pytest.raises(PathEscapeError):
        share.rename(("out", "secret"), ("got",), replace=False)
    assert (share.tmp / "outside" / "secret").exists()
    with pytest.raises(SmbError) as ei:
        share.rename(("nope",), ("x",), replace=False)
    assert _status(ei) == NtStatus.OBJECT_NAME_NOT_FOUND
    with pytest.raises(SmbError) as ei:
        share.rename(("top.txt",), ("nodir", "x"), replace=False)
    assert _status(ei) == NtStatus.OBJECT_PATH_NOT_FOUND


def test_relpath_of():
    assert ShareRoot.relpath_of(("a", "b")) == "a/b"
    assert ShareRoot.relpath_of(()) == ""


def test_nonblock_open_of_leased_file_is_sharing_violation(share):
    """The caller opens with O_NONBLOCK so another process's kernel lease gives EAGAIN
    at once; that must map to SHARING_VIOLATION, not block."""
    import fcntl
    import subprocess
    import sys
    import time
    target = os.path.join(share.path, "leased")
    with open(target, "wb") as f:
        f.write(b"x")
    child = subprocess.Popen([sys.executable, "-c", (
        "import fcntl,os,sys,time\n"
        f"fd=os.open({target!r}, os.O_RDONLY)\n"
        "fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)\n"
        "print('ok', flush=True)\n"
        "time.sleep(20)\n")], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == b"ok"
        t0 = time.monotonic()
        with pytest.raises(SmbError) as ei:
            share.open(("leased",), os.O_WRONLY | os.O_NONBLOCK)
        assert time.monotonic() - t0 < 2
        assert _status(ei) == NtStatus.SHARING_VIOLATION
    finally:
        child.kill()
        child.wait(timeout=10)
    del fcntl
