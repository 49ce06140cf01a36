"""The users file: format, 0600 mode, atomic rewrite, case-insensitive names, clear errors."""

import os
import stat

import pytest
from impacket.ntlm import compute_nthash

from smbd_py.security.users import UserDb, UserDbError, nt_hash_of


def test_nt_hash_known_answer():
    # MS-NLMP 4.2.2.1.2: NTOWFv1("Password") = a4f49c406510bdcab6824ee7c30fd852
    assert nt_hash_of("Password").hex() == "a4f49c406510bdcab6824ee7c30fd852"
    assert UserDb.nt_hash_of("Password01!") == compute_nthash("Password01!")
    assert UserDb.nt_hash_of("pässwörd€") == compute_nthash("pässwörd€")


def test_save_creates_0600_and_round_trips(tmp_path):
    path = tmp_path / "users"
    db = UserDb()
    db.add("Alice", "secret")
    db.add("bob", "hunter2")
    old_umask = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        db.save(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert f"Alice:{nt_hash_of('secret').hex()}\n" in text
    assert "secret" not in text
    loaded = UserDb.load(path)
    assert loaded.names() == ["Alice", "bob"]
    assert loaded.nt_hash("alice") == nt_hash_of("secret")
    assert loaded.nt_hash("ALICE") == nt_hash_of("secret")
    assert loaded.canonical_name("aLiCe") == "Alice"
    assert loaded.nt_hash("carol") is None


def test_rewrite_keeps_0600_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "users"
    db = UserDb()
    db.add("alice", "one")
    db.save(path)
    os.chmod(path, 0o644)  # someone loosened it; a rewrite must restore 0600
    db.add("ALICE", "two")  # same user, other case: replaces
    db.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert UserDb.load(path).nt_hash("alice") == nt_hash_of("two")
    assert len(UserDb.load(path)) == 1
    assert sorted(os.listdir(tmp_path)) == ["users"]


def test_remove(tmp_path):
    db = UserDb()
    db.add("alice", "x")
    db.remove("ALICE")
    assert db.nt_hash("alice") is None
    with pytest.raises(KeyError):
        db.remove("alice")


@pytest.mark.parametrize("bad", ["", "a:b", "a\nb", " alice"])
def test_add_rejects_bad_names(bad):
    with pytest.raises(ValueError):
        UserDb().add(bad, "pw")


@pytest.mark.parametrize("content, line, words", [
    ("alice:" + "00" * 16 + "\nnocolon\n", 2, "expected"),
    ("alice:abcd\n", 1, "32 hex digits"),
    ("# comment\n\nalice:" + "zz" * 16 + "\n", 3, "not hex"),
    ("alice:" + "00" * 16 + "\nALICE:" + "11" * 16 + "\n", 2, "duplicate"),
    (":" + "00" * 16 + "\n", 1, "expected"),
])
def test_malformed_file_names_file_and_line(tmp_path, content, line, words):
    path = tmp_path / "users"
    path.write_text(content)
    with pytest.raises(UserDbError) as ei:
        UserDb.load(path)
    msg = str(ei.value)
    assert str(path) in msg
    assert f"line {line}" in msg
    assert words in msg


def test_unreadable_file(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UserDbError) as ei:
        UserDb.load(missing)
    assert str(missing) in str(ei.value) and "unreadable" in str(ei.value)
    assert len(UserDb.load(missing, missing_ok=True)) == 0
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserDbError) as ei:
        UserDb.load(binary)
    assert str(binary) in str(ei.value)


def test_save_into_missing_directory_is_a_userdb_error(tmp_path):
    with pytest.raises(UserDbError) as ei:
        UserDb().save(tmp_path / "no" / "such" / "users")
    assert "users" in str(ei.value)
