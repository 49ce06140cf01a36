"""The users file: one ``name:NTHASH_HEX`` line per user, kept at mode 0600.

Owns reading, validating and atomically rewriting that file, and the NT hash
(MD4 of the UTF-16LE password) that NTLM verification needs. No plaintext
passwords are ever stored.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

__all__ = ["UserDbError", "UserDb", "nt_hash_of"]

_NT_HASH_HEX_LEN = 32
_FILE_MODE = 0o600


class UserDbError(Exception):
    """The users file cannot be used; the message names the file and the problem."""


def _md4(data: bytes) -> bytes:
    # OpenSSL 3 moved MD4 to the legacy provider, so hashlib often lacks it;
    # pycryptodomex (an impacket dependency) always has it.
    try:
        return hashlib.new("md4", data).digest()
    except ValueError:
        from Cryptodome.Hash import MD4

        return MD4.new(data).digest()


def nt_hash_of(password: str) -> bytes:
    """NTOWFv1: MD4(UTF-16LE(password)), 16 bytes."""
    # surrogatepass: Windows passwords are UTF-16 code units, lone surrogates included.
    return _md4(password.encode("utf-16-le", "surrogatepass"))


def _check_name(name: str) -> None:
    if not name or ":" in name or "\n" in name or "\r" in name or name != name.strip():
        raise ValueError(f"invalid user name {name!r}: must be non-empty, "
                         "without ':' or line breaks or surrounding blanks")


class UserDb:
    """Users and their NT hashes; names match case-insensitively, as on Windows."""

    def __init__(self) -> None:
        # casefolded name -> (name as written, nt hash)
        self._users: dict[str, tuple[str, bytes]] = {}

    # -- file I/O ---------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike, *, missing_ok: bool = False) -> "UserDb":
        """Read a users file. ``missing_ok`` gives an empty db for a missing file."""
        path = os.fspath(path)
        db = cls()
        try:
            with open(path, "r", encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            if missing_ok:
                return db
            raise UserDbError(f"{path}: users file is unreadable: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserDbError(f"{path}: users file is unreadable: {e}") from None
        for lineno, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            name, sep, hexhash = stripped.rpartition(":")
            if not sep or not name:
                raise UserDbError(f"{path}: malformed line {lineno}: expected 'name:NTHASH_HEX'")
            try:
                _check_name(name)
            except ValueError as e:
                raise UserDbError(f"{path}: malformed line {lineno}: {e}") from None
            if len(hexhash) != _NT_HASH_HEX_LEN:
                raise UserDbError(f"{path}: malformed line {lineno}: NT hash must be "
                                  f"{_NT_HASH_HEX_LEN} hex digits, got {len(hexhash)}")
            try:
                nt = bytes.fromhex(hexhash)
            except ValueError:
                raise UserDbError(f"{path}: malformed line {lineno}: NT hash is not hex") from None
            key = name.casefold()
            if key in db._users:
                raise UserDbError(f"{path}: malformed line {lineno}: duplicate user {name!r} "
                                  "(names are case-insensitive)")
            db._users[key] = (name, nt)
        return db

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temp file + rename in the same directory), mode 0600."""
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        body = "".join(f"{name}:{nt.hex()}\n" for name, nt in
                       sorted(self._users.values(), key=lambda item: item[0].casefold()))
        fd = -1
        tmp = ""
        try:
            # mkstemp creates with 0600 and O_EXCL: the hashes are never world-readable,
            # not even for the instant before a chmod.
            fd, tmp = tempfile.mkstemp(prefix=".users.", dir=directory)
            os.fchmod(fd, _FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                fd = -1
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = ""
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            raise UserDbError(f"{path}: cannot write users file: {e}") from None
        finally:
            if fd >= 0:
                os.close(fd)
            if tmp:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    # -- content ----------------------------------------------------------------

    def add(self, name: str, password: str) -> None:
        """Add a user or replace the password of an existing one (same name, any case)."""
        self.add_hash(name, nt_hash_of(password))

    def add_hash(self, name: str, nt_hash: bytes) -> None:
        _check_name(name)
        if len(nt_hash) != 16:
            raise ValueError("NT hash must be 16 bytes")
        self._users[name.casefold()] = (name, bytes(nt_hash))

    def remove(self, name: str) -> None:
        """Remove a user; KeyError if absent."""
        del self._users[name.casefold()]

    def nt_hash(self, name: str) -> bytes | None:
        entry = self._users.get(name.casefold())
        return entry[1] if entry else None

    def canonical_name(self, name: str) -> str | None:
        """The name as stored in the file, for a case-insensitive match."""
        entry = self._users.get(name.casefold())
        return entry[0] if entry else None

    def names(self) -> list[str]:
        return sorted((n for n, _ in self._users.values()), key=str.casefold)

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.casefold() in self._users

    @staticmethod
    def nt_hash_of(password: str) -> bytes:
        return nt_hash_of(password)
