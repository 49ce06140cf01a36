"""QUERY_DIRECTORY: entry encoders (MS-FSCC 2.4) and a streaming directory cursor.

pack_entries() chains 8-byte-aligned entries by NextEntryOffset into an output buffer
of bounded size, never splitting one.  DirCursor reads a directory lazily through
os.scandir on its own fd (huge directories are never loaded whole), filters with
wildcard.py, yields '.' and '..' first, and supports restart and push-back.
"""
from __future__ import annotations

import collections
import os
import stat as stat_mod
import struct
from typing import Callable, Iterable, Sequence

from smbd_py.fs.info import FileInfoClass, allocation_size, dos_attributes, end_of_file, file_times
from smbd_py.fs.paths import is_reserved_name
from smbd_py.fs.shortname import is_8_3, short_name
from smbd_py.fs.wildcard import compile_pattern, has_wildcards
from smbd_py.wire.status import NtStatus, SmbError

__all__ = ["pack_entries", "encode_entry", "DirCursor", "dot_entries", "DIR_INFO_CLASSES"]

# Fixed parts (NextEntryOffset first in every one); FileName follows.
_DIRECTORY = struct.Struct("<IIqqqqqqII")               # 64
_FULL = struct.Struct("<IIqqqqqqIII")                   # 68: + EaSize
_BOTH = struct.Struct("<IIqqqqqqIIIBB24s")              # 94: + ShortNameLength, Reserved1, ShortName
_NAMES = struct.Struct("<III")                          # 12
_ID_BOTH = struct.Struct("<IIqqqqqqIIIBB24sHQ")         # 104: + Reserved2, FileId
_ID_FULL = struct.Struct("<IIqqqqqqIIIIQ")              # 80: + Reserved, FileId
_ID_EXTD = struct.Struct("<IIqqqqqqIIIIQQ")             # 88: + ReparsePointTag, FileId(128)
_NEXT = struct.Struct("<I")
_NO_SHORT = bytes(24)

DIR_INFO_CLASSES = {
    FileInfoClass.FileDirectoryInformation: _DIRECTORY.size,
    FileInfoClass.FileFullDirectoryInformation: _FULL.size,
    FileInfoClass.FileBothDirectoryInformation: _BOTH.size,
    FileInfoClass.FileNamesInformation: _NAMES.size,
    FileInfoClass.FileIdBothDirectoryInformation: _ID_BOTH.size,
    FileInfoClass.FileIdFullDirectoryInformation: _ID_FULL.size,
    FileInfoClass.FileIdExtdDirectoryInformation: _ID_EXTD.size,
}


def _short(name: str) -> tuple[int, bytes]:
    """(ShortNameLength, ShortName[24]): empty when the name already is 8.3 (as Samba)."""
    if is_8_3(name):
        return 0, _NO_SHORT
    sn = short_name(name).encode("utf-16-le")[:24]
    return len(sn), sn.ljust(24, b"\0")


def encode_entry(info_class: int, name: str, st, attributes: int | None = None,
                 btime_ns: int | None = None) -> bytes:
    """One unpadded entry with NextEntryOffset 0 (btime_ns: a creation time that
    overrides the stat's, see fs.info.creation_ns)."""
    n = name.encode("utf-16-le", "surrogatepass")
    ln = len(n)
    if info_class == FileInfoClass.FileNamesInformation:
        return _NAMES.pack(0, 0, ln) + n
    attrs = dos_attributes(st, name) if attributes is None else attributes
    c, a, w, ch = file_times(st, btime_ns)
    eof = end_of_file(st)
    alloc = allocation_size(st)
    if info_class == FileInfoClass.FileIdBothDirectoryInformation:
        sl, sn = _short(name)
        return _ID_BOTH.pack(0, 0, c, a, w, ch, eof, alloc, attrs, ln, 0, sl, 0, sn, 0, st.st_ino) + n
    if info_class == FileInfoClass.FileBothDirectoryInformation:
        sl, sn = _short(name)
        return _BOTH.pack(0, 0, c, a, w, ch, eof, alloc, attrs, ln, 0, sl, 0, sn) + n
    if info_class == FileInfoClass.FileIdFullDirectoryInformation:
        return _ID_FULL.pack(0, 0, c, a, w, ch, eof, alloc, attrs, ln, 0, 0, st.st_ino) + n
    if info_class == FileInfoClass.FileFullDirectoryInformation:
        return _FULL.pack(0, 0, c, a, w, ch, eof, alloc, attrs, ln, 0) + n
    if info_class == FileInfoClass.FileDirectoryInformation:
        return _DIRECTORY.pack(0, 0, c, a, w, ch, eof, alloc, attrs, ln) + n
    if info_class == FileInfoClass.FileIdExtdDirectoryInformation:
        return _ID_EXTD.pack(0, 0, c, a, w, ch, eof, alloc, attrs, ln, 0, 0, st.st_ino, 0) + n
    raise SmbError(NtStatus.INVALID_INFO_CLASS, f"directory info class {info_class}")


class _Packer:
    """Accumulates entries into one output buffer, patching NextEntryOffset."""

    __slots__ = ("buf", "last_off", "max_len", "count")

    def __init__(self, max_len: int) -> None:
        self.buf = bytearray()
        self.last_off = -1
        self.max_len = max_len
        self.count = 0

    def add(self, entry: bytes) -> bool:
        off = (len(self.buf) + 7) & ~7
        if off + len(entry) > self.max_len:
            return False
        if self.last_off >= 0:
            self.buf.extend(bytes(off - len(self.buf)))
            _NEXT.pack_into(self.buf, self.last_off, off - self.last_off)
        self.buf.extend(entry)
        self.last_off = off
        self.count += 1
        return True


def pack_entries(info_class: int, entries: Iterable[tuple[str, os.stat_result]], max_len: int,
                 single: bool = False) -> tuple[bytes, int]:
    """Pack as many (name, stat) entries as fit in max_len bytes.

    Returns (buffer, number of entries packed).  The last entry's NextEntryOffset is 0
    and carries no trailing padding.  Pass a sequence: with an iterator, the entry
    after the packed ones has been pulled and must be re-supplied by the caller.
    """
    if info_class not in DIR_INFO_CLASSES:
        raise SmbError(NtStatus.INVALID_INFO_CLASS, f"directory info class {info_class}")
    p = _Packer(max_len)
    for name, st in entries:
        if not p.add(encode_entry(info_class, name, st)):
            break
        if single:
            break
    return bytes(p.buf), p.count


def dot_entries(dir_st: os.stat_result, parent_st: os.stat_result) -> list[tuple[str, os.stat_result]]:
    """The '.' and '..' entries an enumeration starts with."""
    return [(".", dir_st), ("..", parent_st)]


class DirCursor:
    """A resumable, filtered, streaming enumeration of one directory.

    dir_fd is not consumed: the cursor opens its own fd on the same directory so its
    read position is independent.  With `share` and `components` (a ShareRoot and the
    directory's components) symlinks are stat'ed through the share, so a link leading
    out of the share shows as itself (lstat) rather than as its target, and '..' of
    the share root is the root.  Without them '..' is the real parent.
    """

    def __init__(self, dir_fd: int | None = None, path: str | None = None, pattern: str = "*",
                 share=None, components: Sequence[str] = (),
                 attributes_of: Callable[[int, str, os.stat_result], int] | None = None,
                 stat_fn: Callable[..., os.stat_result] | None = None) -> None:
        if dir_fd is None:
            if path is None:
                raise ValueError("DirCursor needs dir_fd or path")
            self._fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            self._fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        self._share = share
        self._components = tuple(components)
        # The share root's reserved directory (fs.paths.RESERVED_DIR) is never listed.
        self._hide_reserved = share is not None and not self._components
        # attributes_of(dir_fd, name, st) -> DOS attributes, for callers that keep
        # attributes of their own (e.g. in xattrs) so listings agree with QUERY_INFO;
        # None: derive them. An int with a creation_ns attribute also overrides the
        # entry's creation time (a client-set one, protocol.info.StoredAttributes).
        self._attributes_of = attributes_of
        # stat_fn(name, dir_fd=, follow_symlinks=) replaces os.stat, e.g. paths.statx_at
        # so listings carry birth times like the caller's fstat does.
        self._stat = stat_fn or os.stat
        self._pending: collections.deque = collections.deque()
        self._it = None
        self._dots_done = False
        self._exhausted = False
        self.set_pattern(pattern)

    # -- control --------------------------------------------------------------
    def set_pattern(self, pattern: str) -> None:
        """Set the search pattern (a new pattern restarts the enumeration)."""
        self.pattern = pattern or "*"
        self._match = compile_pattern(self.pattern)
        self._exact = not has_wildcards(self.pattern)
        self.restart()

    def restart(self) -> None:
        """Rewind to the first entry (SMB2_RESTART_SCANS / SMB2_REOPEN)."""
        self._close_it()
        self._pending.clear()
        self._dots_done = False
        self._exhausted = False

    def close(self) -> None:
        self._close_it()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "DirCursor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _close_it(self) -> None:
        if self._it is not None:
            self._it.close()  # CPython rewinds the directory stream on close
            self._it = None

    @property
    def exhausted(self) -> bool:
        return self._exhausted and not self._pending

    # -- reading -------------------------------------------------------------
    def push_back(self, entry: tuple[str, os.stat_result]) -> None:
        """Return an entry that did not fit; it comes out first next time."""
        self._pending.appendleft(entry)

    def next_batch(self, n: int) -> list[tuple[str, os.stat_result]]:
        """Up to n matching entries; an empty list means the enumeration is over."""
        out: list[tuple[str, os.stat_result]] = []
        while len(out) < n and self._pending:
            out.append(self._pending.popleft())
        if len(out) < n and not self._dots_done:
            self._dots_done = True
            for ent in self._dots():
                if len(out) < n:
                    out.append(ent)
                else:
                    self._pending.append(ent)
        while len(out) < n and not self._exhausted:
            ent = self._next_disk()
            if ent is None:
                break
            out.append(ent)
        return out

    def fill(self, info_class: int, max_len: int, single: bool = False) -> tuple[bytes, int]:
        """Pack entries into at most max_len bytes, pushing back the one that didn't fit."""
        if info_class not in DIR_INFO_CLASSES:
            raise SmbError(NtStatus.INVALID_INFO_CLASS, f"directory info class {info_class}")
        p = _Packer(max_len)
        while True:
            batch = self.next_batch(1 if single else 64)
            if not batch:
                break
            attrs_of = self._attributes_of
            for i, (name, st) in enumerate(batch):
                attrs = None if attrs_of is None or name in (".", "..") else attrs_of(self._fd, name, st)
                btime = None if attrs is None else getattr(attrs, "creation_ns", None)
                if not p.add(encode_entry(info_class, name, st, attrs, btime)):
                    for ent in reversed(batch[i:]):
                        self.push_back(ent)
                    return bytes(p.buf), p.count
                if single:
                    for ent in reversed(batch[i + 1:]):
                        self.push_back(ent)
                    return bytes(p.buf), p.count
        return bytes(p.buf), p.count

    def _dots(self) -> list[tuple[str, os.stat_result]]:
        out = []
        if self._match("."):
            out.append((".", self._stat(".", dir_fd=self._fd)))
        if self._match(".."):
            if self._share is not None:
                comps = self._components
                parent = self._share.stat(comps[:-1]) if comps else self._stat(".", dir_fd=self._fd)
            else:
                parent = self._stat("..", dir_fd=self._fd)
            out.append(("..", parent))
        return out

    def _stat_entry(self, name: str, is_link: bool, entry=None) -> os.stat_result | None:
        try:
            if not is_link:
                if entry is not None and self._stat is os.stat:
                    return entry.stat(follow_symlinks=False)
                return self._stat(name, dir_fd=self._fd, follow_symlinks=False)
            if self._share is not None:
                try:
                    return self._share.stat(self._components + (name,))
                except SmbError:
                    pass
            else:
                try:
                    return self._stat(name, dir_fd=self._fd)
                except OSError:
                    pass
            return self._stat(name, dir_fd=self._fd, follow_symlinks=False)
        except OSError:
            return None  # vanished between readdir and stat

    def _next_disk(self) -> tuple[str, os.stat_result] | None:
        if self._exact:
            # No wildcard: one lookup instead of a scan (then case-insensitive scan).
            self._exhausted = True
            name = self.pattern
            if name in (".", "..") or "/" in name or "\0" in name:
                return None   # never a lookup of a path outside this directory
            if self._hide_reserved and is_reserved_name(name):
                return None
            try:
                lst = self._stat(name, dir_fd=self._fd, follow_symlinks=False)
            except OSError:
                return self._scan_one()
            st = self._stat_entry(name, stat_mod.S_ISLNK(lst.st_mode)) if stat_mod.S_ISLNK(lst.st_mode) else lst
            return (name, st) if st is not None else None
        if self._it is None:
            os.lseek(self._fd, 0, os.SEEK_SET)
            self._it = os.scandir(self._fd)
        match = self._match
        hide = self._hide_reserved
        for entry in self._it:
            name = entry.name
            if not match(name) or (hide and is_reserved_name(name)):
                continue
            st = self._stat_entry(name, entry.is_symlink(), entry)
            if st is not None:
                return name, st
        self._close_it()
        self._exhausted = True
        return None

    def _scan_one(self) -> tuple[str, os.stat_result] | None:
        os.lseek(self._fd, 0, os.SEEK_SET)
        with os.scandir(self._fd) as it:
            for entry in it:
                if self._match(entry.name) and not (self._hide_reserved and is_reserved_name(entry.name)):
                    st = self._stat_entry(entry.name, entry.is_symlink(), entry)
                    if st is not None:
                        return entry.name, st
        return None
