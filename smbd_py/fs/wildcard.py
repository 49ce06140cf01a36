"""QUERY_DIRECTORY name matching: MS-FSA 2.1.4.4 (FsRtlIsNameInExpression), case-insensitive.

`*` any run, `?` one character, `<` DOS_STAR (any run that does not consume the name's
last '.'), `>` DOS_QM (one non-'.' character, or nothing at a '.' or at the end), and
`"` DOS_DOT ('.' or the end of the name).  Patterns compile to a regex once.
"""
from __future__ import annotations

import functools
import re
from typing import Callable

__all__ = ["compile_pattern", "has_wildcards", "matches"]

_WILDCARDS = frozenset('*?<>"')


def has_wildcards(pattern: str) -> bool:
    return not _WILDCARDS.isdisjoint(pattern)


def _always(name: str) -> bool:
    return True


def _translate(pattern: str) -> str:
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            # Consecutive stars mean the same as one; collapsing them keeps the regex linear.
            while i + 1 < n and pattern[i + 1] == "*":
                i += 1
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "<":
            # May swallow any character except the final '.' of the name.
            out.append(r"(?:[^.]|\.(?=.*\.))*")
        elif c == ">":
            k = 1
            while i + 1 < n and pattern[i + 1] == ">":
                i += 1
                k += 1
            # A run of k DOS_QMs: k non-dot characters, or fewer ending at '.' / end.
            out.append(r"(?:[^.]{%d}|[^.]{0,%d}(?=\.|\Z))" % (k, k - 1))
        elif c == '"':
            out.append(r"(?:\.|\Z)")
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """A predicate name -> bool for `pattern` (empty pattern matches everything)."""
    if pattern in ("", "*"):
        return _always
    if not has_wildcards(pattern):
        want = pattern.casefold()
        return lambda name: name.casefold() == want
    rx = re.compile(_translate(pattern), re.IGNORECASE | re.DOTALL)
    full = rx.fullmatch
    return lambda name: full(name) is not None


def matches(pattern: str, name: str) -> bool:
    return compile_pattern(pattern)(name)
