"""Share confinement over the wire: names with `..`, absolute-looking names, and symlinks
inside the share that point outside (final and intermediate component, directory and file)
are refused for read and create dispositions, renames and hard links that try to leave the
share are refused, and QUERY_DIRECTORY patterns with `..` list nothing outside. Nothing
outside the share changes (names, sizes, mtimes of a sentinel tree snapshotted before and
after). Symlinks that stay inside the share keep working.

Each refusal's status is recorded; the test prints the table (`pytest -s`).
"""
from __future__ import annotations

import os
import struct

import pytest

from tests.peers.smbd_py_server import smbd_py_server
from tests.smb2client import (Access, CreateOptions, Disposition, FileInfoClass, InfoType,
                              Smb2Client, status_name)
from tests.smb2client import wire

PORT = None   # a free port

ACCESS_DENIED = 0xC0000022
OBJECT_NAME_INVALID = 0xC0000033
OBJECT_NAME_NOT_FOUND = 0xC0000034
OBJECT_PATH_NOT_FOUND = 0xC000003A
OBJECT_PATH_SYNTAX_BAD = 0xC000003B
INVALID_PARAMETER = 0xC000000D
NO_SUCH_FILE = 0xC000000F
NO_MORE_FILES = 0x80000006
STOPPED_ON_SYMLINK = 0x8000002D
# What a refusal to leave the share may look like. INVALID_PARAMETER is MS-SMB2 3.3.5.9's
# answer to a name starting with a backslash.
REFUSALS = {ACCESS_DENIED, OBJECT_PATH_NOT_FOUND, OBJECT_NAME_INVALID, OBJECT_PATH_SYNTAX_BAD,
            INVALID_PARAMETER}
SENTINEL = b"sentinel outside the share\n"

# Opens that try to leave the share, each tried with every disposition below.
ESCAPING_NAMES = [
    "..\\..\\etc\\passwd",
    "..\\outside.txt",
    "..\\sentinel.txt",
    "\\..\\x",
    "sub\\..\\..\\x",
    "sub\\..\\..\\sentinel.txt",
    "..",
    "sub\\..\\..",
    "C:\\x",
    "C:\\etc\\passwd",
    "\\\\server\\share\\x",
    "\\\\127.0.0.1\\share\\..\\sentinel.txt",
    "link_out_dir",                 # symlink to a sibling directory, as the final component
    "link_out_dir\\sentinel.txt",   # ... and as an intermediate one
    "link_out_dir\\new.txt",
    "link_out_dir\\sub2\\deep.txt",
    "link_etc",                     # to /etc
    "link_etc\\passwd",
    "link_etc\\smbd_py_escape.txt",
    "link_out_file",                # symlink to a file outside
    "link_passwd",                  # to /etc/passwd
    "link_dotdot",                  # to ".." (the share's parent)
    "link_dotdot\\sentinel.txt",
    "link_dotdot\\new.txt",
    "sub\\link_up2\\sentinel.txt",  # sub/link_up2 -> ../.. (relative, two levels up)
]
DISPOSITIONS = {
    "OPEN": (Disposition.OPEN, Access.GENERIC_READ),
    "CREATE": (Disposition.CREATE, Access.GENERIC_READ | Access.GENERIC_WRITE),
    "OPEN_IF": (Disposition.OPEN_IF, Access.GENERIC_READ | Access.GENERIC_WRITE),
    "OVERWRITE_IF": (Disposition.OVERWRITE_IF, Access.GENERIC_WRITE),
    "SUPERSEDE": (Disposition.SUPERSEDE, Access.GENERIC_WRITE | Access.DELETE),
}


def snapshot(paths: list[str]) -> dict[str, tuple]:
    out = {}
    for root in paths:
        if os.path.isfile(root):
            st = os.lstat(root)
            out[root] = (st.st_mode, st.st_size, st.st_mtime_ns)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            st = os.lstat(dirpath)
            out[dirpath] = (st.st_mode, st.st_size, st.st_mtime_ns)
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                out[p] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("escape")
    share = base / "share"
    sibling = base / "sibling"
    share.mkdir()
    sibling.mkdir()
    (base / "sentinel.txt").write_bytes(SENTINEL)
    (sibling / "sentinel.txt").write_bytes(SENTINEL)
    (share / "inside.txt").write_bytes(b"inside\n")
    (share / "sub").mkdir()
    (share / "sub" / "a.txt").write_bytes(b"a\n")
    (share / "link_out_dir").symlink_to(sibling)
    (share / "link_etc").symlink_to("/etc")
    (share / "link_out_file").symlink_to(sibling / "sentinel.txt")
    (share / "link_passwd").symlink_to("/etc/passwd")
    (share / "link_dotdot").symlink_to("..")
    (share / "sub" / "link_up2").symlink_to("../..")
    (share / "link_abs_share").symlink_to(share)
    (share / "link_in_file").symlink_to("inside.txt")
    (share / "link_in_dir").symlink_to("sub")
    (share / "sub" / "link_in_up").symlink_to("../inside.txt")
    watched = [str(base / "sentinel.txt"), str(sibling), "/etc/passwd", "/etc"]
    # /etc as a whole is too big to walk; its own entry and passwd are what we touch.
    before = {k: v for k, v in snapshot(watched[:2] + ["/etc/passwd"]).items()}
    before["/etc"] = os.lstat("/etc").st_mtime_ns
    before["/etc/smbd_py_escape.txt"] = os.path.exists("/etc/smbd_py_escape.txt")
    before[str(base)] = sorted(os.listdir(base))
    with smbd_py_server(str(share), port=PORT, log_level="debug") as srv:
        yield srv, base, before
        assert srv.alive(), srv.log_tail()
        log = open(srv.log_path, errors="replace").read()
        assert "internal error" not in log, log[-4000:]


def outside_unchanged(base, before):
    now = {k: v for k, v in snapshot([str(base / "sentinel.txt"), str(base / "sibling"),
                                      "/etc/passwd"]).items()}
    now["/etc"] = os.lstat("/etc").st_mtime_ns
    now["/etc/smbd_py_escape.txt"] = os.path.exists("/etc/smbd_py_escape.txt")
    now[str(base)] = sorted(os.listdir(base))
    diff = {k: (before.get(k), now.get(k)) for k in set(before) | set(now)
            if before.get(k) != now.get(k)}
    assert not diff, f"outside the share changed: {diff}"


async def connect(srv) -> tuple[Smb2Client, int]:
    c = await Smb2Client.connect(srv.host, srv.port, timeout=10)
    await c.login(srv.user, srv.password)
    return c, await c.tree_connect(srv.share)


async def test_escaping_opens_are_refused(env):
    srv, base, before = env
    c, tid = await connect(srv)
    table: dict[tuple[str, str], str] = {}
    leaks = []
    try:
        for name in ESCAPING_NAMES:
            for dname, (disposition, access) in DISPOSITIONS.items():
                for options in (0, CreateOptions.NON_DIRECTORY_FILE,
                                CreateOptions.DIRECTORY_FILE):
                    r = await c.create(tid, name, desired_access=access,
                                       disposition=disposition, options=options, expect=None)
                    table[(name, f"{dname}/{options:#x}")] = status_name(r.status)
                    if r.status == 0:
                        leaks.append((name, dname, options))
                        await c.close(tid, r.file_id, expect=None)
                        continue
                    assert r.status in REFUSALS, (name, dname, status_name(r.status))
    finally:
        await c.disconnect()
    print("\nescaping opens (name, disposition/options -> status):")
    for name in ESCAPING_NAMES:
        statuses = sorted({v for (n, _), v in table.items() if n == name})
        print(f"  {name!r:45} {', '.join(statuses)}")
    assert not leaks, f"opens that escaped the share succeeded: {leaks}"
    outside_unchanged(base, before)


async def test_reparse_open_of_outside_link_reads_nothing_outside(env):
    """FILE_OPEN_REPARSE_POINT names the link itself: whatever the server answers, no data
    of the target may come back and nothing outside may change."""
    srv, base, before = env
    c, tid = await connect(srv)
    try:
        for name in ("link_passwd", "link_out_file", "link_out_dir", "link_etc"):
            r = await c.create(tid, name, desired_access=Access.GENERIC_READ,
                               disposition=Disposition.OPEN, options=0x00200000, expect=None)
            if r.status == 0:
                data = await c.read(tid, r.file_id, 0, 4096, expect=None)
                assert b"root:" not in data and SENTINEL not in data, (name, data[:80])
                await c.close(tid, r.file_id, expect=None)
            else:
                assert r.status in REFUSALS | {OBJECT_NAME_NOT_FOUND, STOPPED_ON_SYMLINK,
                                               0xC00000BB}, (name, status_name(r.status))
    finally:
        await c.disconnect()
    outside_unchanged(base, before)


async def test_inside_symlinks_work(env):
    srv, base, before = env
    c, tid = await connect(srv)
    try:
        for name, content in (("link_in_file", b"inside\n"), ("link_in_dir\\a.txt", b"a\n"),
                              ("sub\\link_in_up", b"inside\n"),
                              ("link_abs_share\\inside.txt", b"inside\n")):
            r = await c.create(tid, name, desired_access=Access.GENERIC_READ,
                               disposition=Disposition.OPEN, expect=None)
            if name.startswith("link_abs_share"):
                # An absolute link that resolves back into the share: either answer is
                # safe; it must not be an error other than a refusal.
                if r.status != 0:
                    assert r.status in REFUSALS, status_name(r.status)
                    continue
            assert r.status == 0, (name, status_name(r.status))
            assert await c.read(tid, r.file_id, 0, 100) == content
            await c.close(tid, r.file_id)
        # Create through an inside directory link.
        r = await c.create(tid, "link_in_dir\\made_via_link.txt",
                           disposition=Disposition.CREATE, expect=None)
        assert r.status == 0, status_name(r.status)
        await c.close(tid, r.file_id)
        assert (srv_share(srv) / "sub" / "made_via_link.txt").exists()
        entries = await c.list_directory(tid, "link_in_dir")
        assert "a.txt" in {e.name for e in entries}
    finally:
        await c.disconnect()
    outside_unchanged(base, before)


def srv_share(srv):
    import pathlib
    return pathlib.Path(srv.share_path)


RENAME_TARGETS = ["..\\x", "..\\..\\x", "..\\sentinel.txt", "\\..\\x", "sub\\..\\..\\x",
                  "C:\\x", "\\\\server\\share\\x", "link_out_dir\\moved.txt",
                  "link_out_dir\\sentinel.txt", "link_dotdot\\moved.txt", "link_etc\\moved",
                  "sub\\link_up2\\moved.txt", ".."]


async def test_rename_and_link_out_of_the_share_are_refused(env):
    srv, base, before = env
    c, tid = await connect(srv)
    table = {}
    try:
        f = await c.create(tid, "to_rename.txt", desired_access=Access.GENERIC_READ
                           | Access.GENERIC_WRITE | Access.DELETE,
                           disposition=Disposition.OVERWRITE_IF)
        await c.write(tid, f.file_id, 0, b"rename me\n")
        d = await c.create(tid, "dir_to_rename", desired_access=Access.GENERIC_READ
                           | Access.DELETE, disposition=Disposition.OPEN_IF,
                           options=CreateOptions.DIRECTORY_FILE)
        for target in RENAME_TARGETS:
            for replace in (False, True):
                for fid, what in ((f.file_id, "file"), (d.file_id, "dir")):
                    st = await c.rename(tid, fid, target, replace=replace, expect=None)
                    table[(target, what, replace, "rename")] = status_name(st)
                    assert st != 0, f"rename of the {what} to {target!r} succeeded"
                    assert st in REFUSALS | {0xC0000035}, (target, status_name(st))
                # FileLinkInformation (class 11): a hard link out of the share.
                n = wire.utf16(target)
                buf = struct.pack("<B7xQI", int(replace), 0, len(n)) + n
                st = await c.set_info(tid, f.file_id, InfoType.FILE, 11, buf, expect=None)
                table[(target, "file", replace, "link")] = status_name(st)
                assert st != 0, f"hard link to {target!r} succeeded"
        # Both are still where they were, with their content.
        assert (srv_share(srv) / "to_rename.txt").read_bytes() == b"rename me\n"
        assert (srv_share(srv) / "dir_to_rename").is_dir()
        # A rename inside the share still works (the handle is usable).
        assert await c.rename(tid, f.file_id, "sub\\renamed_inside.txt") == 0
        assert (srv_share(srv) / "sub" / "renamed_inside.txt").exists()
        await c.close(tid, f.file_id)
        await c.close(tid, d.file_id)
    finally:
        await c.disconnect()
    print("\nrename/link targets -> status:")
    for k, v in sorted(table.items()):
        print(f"  {k!r:60} {v}")
    outside_unchanged(base, before)


QUERY_PATTERNS = ["..", "..\\*", "..\\sentinel.txt", "sub\\..\\..\\*", "..\\sibling\\*",
                  "\\..\\*", "*\\..\\*", "..\\..\\etc\\*", "link_out_dir\\*", "link_etc\\*",
                  "sentinel.txt", "*sentinel*", "passwd",
                  # Forward slashes are no separator in SMB, but they are for the kernel:
                  # a pattern without wildcards must not become a stat() of another path.
                  "../sentinel.txt", "../../etc/passwd", "/etc/passwd", "sub/../../sentinel.txt",
                  "../sibling/sentinel.txt", "link_out_dir/sentinel.txt", "..\0", "a\0b"]


async def test_query_directory_patterns_stay_inside(env):
    srv, base, before = env
    inside_names = set(os.listdir(srv.share_path)) | {".", ".."}
    c, tid = await connect(srv)
    try:
        for dirname in ("", "sub"):
            allowed = inside_names if not dirname else set(
                os.listdir(os.path.join(srv.share_path, dirname))) | {".", ".."}
            for pattern in QUERY_PATTERNS:
                d = await c.create(tid, dirname, desired_access=Access.FILE_READ_DATA
                                   | Access.FILE_READ_ATTRIBUTES | Access.SYNCHRONIZE,
                                   disposition=Disposition.OPEN,
                                   options=CreateOptions.DIRECTORY_FILE)
                names = []
                for i in range(50):
                    p = await c.submit(wire.Command.QUERY_DIRECTORY,
                                       wire.query_directory_request(
                                           d.file_id, pattern,
                                           FileInfoClass.ID_BOTH_DIRECTORY,
                                           wire.QUERY_DIRECTORY_RESTART_SCANS if i == 0 else 0,
                                           65536), tree_id=tid)
                    resp = await p.response()
                    if resp.status != 0:
                        assert resp.status in {NO_SUCH_FILE, NO_MORE_FILES,
                                               OBJECT_NAME_INVALID, INVALID_PARAMETER,
                                               OBJECT_NAME_NOT_FOUND}, \
                            (dirname, pattern, status_name(resp.status))
                        break
                    names += [e.name for e in wire.parse_directory_entries(
                        wire.parse_output_buffer(resp.raw), FileInfoClass.ID_BOTH_DIRECTORY)]
                outside = set(names) - allowed
                assert not outside, (dirname, pattern, outside)
                await c.close(tid, d.file_id)
    finally:
        await c.disconnect()
    outside_unchanged(base, before)


async def test_directory_opens_of_outside_links_cannot_be_listed(env):
    srv, base, before = env
    c, tid = await connect(srv)
    try:
        for name in ("link_out_dir", "link_etc", "link_dotdot", "sub\\link_up2"):
            r = await c.create(tid, name, desired_access=Access.FILE_READ_DATA
                               | Access.SYNCHRONIZE, disposition=Disposition.OPEN,
                               options=CreateOptions.DIRECTORY_FILE, expect=None)
            assert r.status in REFUSALS, (name, status_name(r.status))
    finally:
        await c.disconnect()
    outside_unchanged(base, before)


async def test_replacing_a_link_to_outside_touches_only_the_link(env):
    """Rename/hard-link with ReplaceIfExists onto a symlink that points outside replaces the
    link entry (or is refused); the file outside it points to stays as it was."""
    srv, base, before = env
    share = srv_share(srv)
    c, tid = await connect(srv)
    try:
        for info_class in (FileInfoClass.RENAME, 11):
            victim = share / "link_victim"
            if victim.is_symlink() or victim.exists():
                victim.unlink()
            victim.symlink_to(base / "sibling" / "sentinel.txt")
            f = await c.create(tid, "replacer.txt", desired_access=Access.GENERIC_READ
                               | Access.GENERIC_WRITE | Access.DELETE,
                               disposition=Disposition.OVERWRITE_IF)
            await c.write(tid, f.file_id, 0, b"replacer\n")
            n = wire.utf16("link_victim")
            st = await c.set_info(tid, f.file_id, InfoType.FILE, info_class,
                                  struct.pack("<B7xQI", 1, 0, len(n)) + n, expect=None)
            await c.close(tid, f.file_id)
            print(f"\nreplace link_victim via class {info_class}: {status_name(st)}")
            if st == 0:
                assert not victim.is_symlink() and victim.read_bytes() == b"replacer\n"
            else:
                assert st in REFUSALS | {0xC0000035}, status_name(st)
            assert (base / "sibling" / "sentinel.txt").read_bytes() == SENTINEL
            outside_unchanged(base, before)
            (share / "replacer.txt").unlink(missing_ok=True)
    finally:
        await c.disconnect()
