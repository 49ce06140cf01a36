"""fs.streams (the named-stream depot) on real files in a temporary share: the xattr id,
depot creation, case-insensitive lookup, listing, removal, and the reserved-name rule of
fs.paths that hides the depot from clients."""
from __future__ import annotations

import os

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
