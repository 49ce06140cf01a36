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


def _tokenize(pattern: str) -> list[tuple[str, str]]:
    toks: list[tuple[str, str]] = []
    for c in pattern:
        if c == "*":
            if toks and toks[-1][0] == "*":
                continue
            toks.append(("*", ""))
        elif c in '?<>"':
            toks.append((c, ""))
        else:
            toks.append(("lit", c.casefold()))
    return toks


def _nfa_matcher(pattern: str) -> Callable[[str], bool]:
    """Set-of-states simulation: O(len(name) * len(pattern)) whatever the pattern,
    so a client cannot make us backtrack exponentially with '*a*a*a*...'."""
    toks = _tokenize(pattern)
    end = len(toks)

    def closure(states: set[int], at_dot: bool, at_end: bool) -> set[int]:
        todo = list(states)
        while todo:
            i = todo.pop()
            if i >= end:
                continue
            kind = toks[i][0]
            if kind in ("*", "<") or (kind == ">" and (at_dot or at_end)) or (kind == '"' and at_end):
                if i + 1 not in states:
                    states.add(i + 1)
                    todo.append(i + 1)
        return states

    def match(name: str) -> bool:
        last_dot = name.rfind(".")
        n = len(name)
        states = closure({0}, n > 0 and name[0] == ".", n == 0)
        for j, c in enumerate(name):
            folded = None
            nxt: set[int] = set()
            for i in states:
                if i >= end:
                    continue
                kind, lit = toks[i]
                if kind == "lit":
                    if folded is None:
                        folded = c.casefold()
                    if folded == lit:
                        nxt.add(i + 1)
                elif kind == "?":
                    nxt.add(i + 1)
                elif kind == "*":
                    nxt.add(i)
                elif kind == "<":
                    if c != "." or j < last_dot:
                        nxt.add(i)
                elif kind == ">":
                    if c != ".":
                        nxt.add(i + 1)
                elif c == ".":  # DOS_DOT
                    nxt.add(i + 1)
            if not nxt:
                return False
            k = j + 1
            states = closure(nxt, k < n and name[k] == ".", k == n)
        return end in states

    return match


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """A predicate name -> bool for `pattern` (empty pattern matches everything)."""
    if pattern in ("", "*"):
        return _always
    if not has_wildcards(pattern):
        want = pattern.casefold()
        return lambda name: name.casefold() == want
    if pattern.count("*") + pattern.count("<") > 1:
        # Several unbounded runs would let a regex backtrack polynomially (or worse).
        return _nfa_matcher(pattern)
    rx = re.compile(_translate(pattern), re.IGNORECASE | re.DOTALL)
    full = rx.fullmatch
    return lambda name: full(name) is not None


def matches(pattern: str, name: str) -> bool:
    return compile_pattern(pattern)(name)
