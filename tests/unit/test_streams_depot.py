"""fs.streams (the named-stream depot) on real files in a temporary share: the xattr id,
depot creation, case-insensitive lookup, listing, removal, and the reserved-name rule of
fs.paths that hides the depot from clients."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from smbd_py.fs import streams
from smbd_py.fs.paths import ShareRoot, is_reserved_name, split_stream_path
from smbd_py.wire.status import NtStatus, SmbError


@pytest.fixture
def share(tmp_path):
    root = ShareRoot(str(tmp_path))
    try:
        os.setxattr(str(tmp_path), "user.probe", b"1")
    except OSError as e:
        pytest.fail(f"the test directory refuses user xattrs ({e}); fs.streams needs them")
    yield root, tmp_path
    root.close()


def _base(tmp_path, name="f.txt", data=b"base"):
    p = tmp_path / name
    p.write_bytes(data)
    return os.open(p, os.O_PATH)


def test_depot_id_created_once_and_kept_across_rename_and_links(share):
    root, tmp = share
    fd = _base(tmp)
    try:
        assert streams.depot_id(fd) is None
        did = streams.ensure_depot_id(fd)
        assert len(did) == 32 and streams.ensure_depot_id(fd) == did
    finally:
        os.close(fd)
    os.rename(tmp / "f.txt", tmp / "g.txt")
    os.link(tmp / "g.txt", tmp / "h.txt")
    for name in ("g.txt", "h.txt"):
        fd = os.open(tmp / name, os.O_PATH)
        try:
            assert streams.depot_id(fd) == did
        finally:
            os.close(fd)


def test_foreign_xattr_value_is_not_a_depot(share):
    root, tmp = share
    fd = _base(tmp)
    try:
        os.setxattr(f"/proc/self/fd/{fd}", streams.STREAMS_XATTR, b"../../etc")
        assert streams.depot_id(fd) is None
        assert streams.list_streams(root, fd) == []
    finally:
        os.close(fd)


def test_make_find_list_remove(share):
    root, tmp = share
    fd = _base(tmp)
    try:
        did = streams.ensure_depot_id(fd)
        streams.make_depot(root, did)
        streams.make_depot(root, did)          # idempotent
        depot = tmp.joinpath(*streams.depot_components(did))
        (depot / "Zone.Identifier").write_bytes(b"12345")
        (depot / "b").write_bytes(b"")
        assert streams.find_stream(root, did, "zone.IDENTIFIER") == "Zone.Identifier"
        assert streams.find_stream(root, did, "nope") is None
        listed = [(n, st.st_size) for n, st in streams.list_streams(root, fd)]
        assert listed == [("b", 0), ("Zone.Identifier", 5)]
        assert streams.depot_of_name(root, ("f.txt",)) == (did, 1)
        streams.remove_all_streams(root, fd)
        assert not depot.exists() and streams.depot_id(fd) is None
        assert streams.list_streams(root, fd) == []
        streams.remove_depot(root, did)        # already gone: no error
    finally:
        os.close(fd)


def test_stream_stat_merges_base_metadata_and_stream_size(share):
    root, tmp = share
    (tmp / "d").mkdir()
    (tmp / "s").write_bytes(b"x" * 10)
    view = streams.StreamStat(os.stat(tmp / "d"), os.stat(tmp / "s"))
    base = os.stat(tmp / "d")
    assert view.st_size == 10 and view.st_ino == base.st_ino
    assert view.st_mtime_ns == base.st_mtime_ns
    assert not os.path.stat.S_ISDIR(view.st_mode)    # a directory's stream is a file


def test_reserved_name_rule():
    assert is_reserved_name(".smbd_py") and is_reserved_name(".SMBD_Py")
    assert not is_reserved_name("smbd_py") and not is_reserved_name(".smbd_py2")
    for path, status in ((".smbd_py", NtStatus.OBJECT_NAME_NOT_FOUND),
                         (".SMBD_PY", NtStatus.OBJECT_NAME_NOT_FOUND),
                         (".smbd_py\\streams", NtStatus.OBJECT_PATH_NOT_FOUND),
                         ("a\\..\\.smbd_py", NtStatus.OBJECT_NAME_NOT_FOUND),
                         (".smbd_py:s", NtStatus.OBJECT_NAME_NOT_FOUND)):
        with pytest.raises(SmbError) as ei:
            split_stream_path(path)
        assert ei.value.status == status, path
    assert split_stream_path("dir\\.smbd_py") == (("dir", ".smbd_py"), None)


def test_stream_name_syntax():
    assert split_stream_path("f:\x05St*?ream\n one:$DATA") == (("f",), "\x05St*?ream\n one")
    assert split_stream_path("f::$DATA") == (("f",), None)
    for bad in ("f:a/b", "f:a:$FOO", "f:a:", "f:a\\b"):
        with pytest.raises(SmbError) as ei:
            split_stream_path(bad)
        assert ei.value.status == NtStatus.OBJECT_NAME_INVALID, bad


def _xattr(path) -> str:
    return os.getxattr(path, streams.STREAMS_XATTR).decode()


def _with_stream(root, tmp, name="f.txt", stream="s", data=b"stream data"):
    fd = _base(tmp, name)
    try:
        did = streams.ensure_depot_id(fd)
        streams.make_depot(root, did)
        tmp.joinpath(*streams.stream_components(did, stream)).write_bytes(data)
    finally:
        os.close(fd)
    return did


def test_value_records_the_inode_and_round_one_values_still_count(share):
    root, tmp = share
    did = _with_stream(root, tmp)
    assert _xattr(tmp / "f.txt") == f"{did}:{os.stat(tmp / 'f.txt').st_ino}"
    os.setxattr(tmp / "f.txt", streams.STREAMS_XATTR, did.encode())   # id alone
    fd = os.open(tmp / "f.txt", os.O_PATH)
    try:
        assert streams.depot_id(fd) == did
        assert streams.claim_depot(root, fd) == did
    finally:
        os.close(fd)


def test_cp_a_copy_gets_its_own_copy_of_the_streams(share):
    """cp -a copies the xattr: the copy must not share the original's depot; its first
    look at its streams copies them into a depot of its own."""
    root, tmp = share
    did = _with_stream(root, tmp)
    cp = subprocess.run(["cp", "-a", str(tmp / "f.txt"), str(tmp / "copy.txt")],
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr
    assert _xattr(tmp / "copy.txt") == _xattr(tmp / "f.txt"), "cp -a kept the xattr"
    fd = os.open(tmp / "copy.txt", os.O_PATH)
    try:
        assert streams.depot_id(fd) is None, "a copied value owns no depot"
        # Deleting or overwriting the copy before it claimed leaves the original alone.
        assert streams.hold_depot(root, ("copy.txt",)) is None
        new = streams.claim_depot(root, fd)
        assert new is not None and new != did
        assert streams.depot_id(fd) == new == streams.claim_depot(root, fd)
        assert [(n, st.st_size) for n, st in streams.list_streams(root, fd)] == [("s", 11)]
    finally:
        os.close(fd)
    assert _xattr(tmp / "copy.txt") == f"{new}:{os.stat(tmp / 'copy.txt').st_ino}"
    copied = tmp.joinpath(*streams.stream_components(new, "s"))
    original = tmp.joinpath(*streams.stream_components(did, "s"))
    copied.write_bytes(b"changed in the copy")
    assert original.read_bytes() == b"stream data"
    # A copy whose original's depot is gone claims an empty depot id.
    subprocess.run(["cp", "-a", str(tmp / "f.txt"), str(tmp / "c2.txt")], check=True, timeout=30)
    streams.remove_depot(root, did)
    fd = os.open(tmp / "c2.txt", os.O_PATH)
    try:
        got = streams.claim_depot(root, fd)
        assert got not in (None, did) and streams.list_streams(root, fd) == []
    finally:
        os.close(fd)


def test_overwrite_of_a_copy_keeps_the_originals_depot(share):
    root, tmp = share
    did = _with_stream(root, tmp)
    subprocess.run(["cp", "-a", str(tmp / "f.txt"), str(tmp / "copy.txt")], check=True, timeout=30)
    fd = os.open(tmp / "copy.txt", os.O_PATH)
    try:
        streams.remove_all_streams(root, fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        _xattr(tmp / "copy.txt")
    assert tmp.joinpath(*streams.stream_components(did, "s")).exists()


def test_hold_release_removes_the_depot_with_the_last_name_only(share):
    root, tmp = share
    did = _with_stream(root, tmp)
    depot = tmp.joinpath(*streams.depot_components(did))
    os.link(tmp / "f.txt", tmp / "g.txt")
    held = streams.hold_depot(root, ("f.txt",))
    assert held is not None and held[1] == did
    os.unlink(tmp / "f.txt")
    streams.release_depot(root, held)
    assert depot.is_dir(), "another name of the file keeps its streams"
    held = streams.hold_depot(root, ("g.txt",))
    (tmp / "other").write_bytes(b"")
    os.rename(tmp / "other", tmp / "g.txt")        # replaced by a rename
    streams.release_depot(root, held)
    assert not depot.exists()
    assert streams.hold_depot(root, ("g.txt",)) is None     # no streams
    assert streams.hold_depot(root, ("missing",)) is None
    streams.release_depot(root, None)


def test_collect_orphans(share):
    root, tmp = share
    kept = _with_stream(root, tmp, "kept.txt")
    gone = _with_stream(root, tmp, "gone.txt")
    (tmp / "sub").mkdir()
    deep = _with_stream(root, tmp, "sub/deep.txt")
    subprocess.run(["cp", "-a", str(tmp / "kept.txt"), str(tmp / "sub" / "copy.txt")],
                   check=True, timeout=30)
    copied_from = _with_stream(root, tmp, "orig.txt")
    subprocess.run(["cp", "-a", str(tmp / "orig.txt"), str(tmp / "copy2.txt")],
                   check=True, timeout=30)
    os.unlink(tmp / "orig.txt")     # its copy still names (and will claim) the depot
    os.unlink(tmp / "gone.txt")     # a local delete: the depot is an orphan
    depots = tmp / ".smbd_py" / "streams"
    (depots / "not-a-depot").mkdir()
    # Fresh depots are kept (a server may be creating a first stream meanwhile).
    assert streams.collect_orphans(str(tmp)) == []
    assert streams.collect_orphans(str(tmp), dry_run=True, min_age_s=-5) == [gone]
    assert (depots / gone).is_dir()
    assert streams.collect_orphans(str(tmp), min_age_s=-5) == [gone]
    assert sorted(os.listdir(depots)) == sorted([kept, deep, copied_from, "not-a-depot"])
    cli = subprocess.run([sys.executable, "-m", "smbd_py", "streams", "gc", str(tmp),
                          "--min-age", "-5"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and cli.stdout == "", cli.stdout + cli.stderr
    assert streams.collect_orphans(str(tmp / "missing")) == []
