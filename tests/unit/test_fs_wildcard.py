"""MS-FSA 2.1.4.4 wildcard semantics (with Samba's ms_fnmatch as tie-breaker), checked on
both matching engines: the regex translation and the backtracking-free NFA."""
from __future__ import annotations

import re
import time

import pytest

from smbd_py.fs import wildcard
from smbd_py.fs.wildcard import compile_pattern, has_wildcards

TABLE = [
    ("*", "", True), ("*", "anything.at.all", True), ("*", ".", True),
    ("", "x", True),
    ("*.txt", "foo.txt", True), ("*.txt", "FOO.TXT", True), ("*.txt", ".txt", True),
    ("*.txt", "foo.txt.bak", False), ("*.txt", "footxt", False),
    ("a?c", "abc", True), ("a?c", "ABC", True), ("a?c", "ac", False), ("a?c", "abbc", False),
    ("?", ".", True), ("??", "a", False),
    ("<.txt", "a.txt", True), ("<.txt", "a.b.txt", True), ("<.txt", "txt", False),
    ("<", "noext", True), ("<", "a.b", False),
    ("<.<", "a.b", True), ("<.<", "ab", False), ("<.<", "a.b.c", True),
    ('foo"', "foo", True), ('foo"', "foo.", True), ('foo"', "foox", False), ('foo"', "foo.x", False),
    ('foo">>>', "foo.bar", True), ('foo">>>', "foo", True), ('foo">>>', "foo.ba", True),
    ('foo">>>', "foo.barx", False),
    (">", "a", True), (">", "", True), (">", "ab", False), (">>", "a", True),
    (">b", "b", False), (">b", "ab", True),
    ("a>.c", "a.c", True), ("a>.c", "ab.c", True), ("a>.c", "abb.c", False),
    ("*a*", "bab", True), ("*a*", "bbb", False),
    ("a*b*c", "aXbYc", True), ("a*b*c", "aXcYb", False), ("a**c", "abc", True),
    ("a+b", "a+b", True), ("a.b", "axb", False), ("[x]", "[x]", True), ("a$", "a$", True),
    ("Foo.Txt", "foo.txt", True), ("Foo.Txt", "foo.txt2", False),
    ("ÄBC*", "äbcd", True),
    ("*.*", "noext", False), ("*.*", "a.b", True),
    ("<*", "a.b", True),
]


def _regex(pattern):
    rx = re.compile(wildcard._translate(pattern), re.IGNORECASE | re.DOTALL)
    return lambda n: rx.fullmatch(n) is not None


@pytest.mark.parametrize("pattern, name, expected", TABLE)
def test_compiled(pattern, name, expected):
    assert compile_pattern(pattern)(name) is expected


@pytest.mark.parametrize("pattern, name, expected", [t for t in TABLE if has_wildcards(t[0])])
def test_engines_agree(pattern, name, expected):
    assert _regex(pattern)(name) is expected
    assert wildcard._nfa_matcher(pattern)(name) is expected


def test_pathological_pattern_is_fast():
    pat = "*a" * 12 + "*b"
    name = "a" * 250
    m = compile_pattern(pat)
    t0 = time.monotonic()
    assert m(name) is False
    assert m("a" * 12 + "b") is True
    assert time.monotonic() - t0 < 1.0


def test_star_fast_path_is_shared():
    assert compile_pattern("*") is compile_pattern("")
