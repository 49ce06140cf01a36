"""Run Samba's smbtorture against a server and compare with an expected-results list.

This module owns three things:
- ``run_torture``: start ``smbtorture //host/share -p PORT -U user%pass
  --format=subunit --fullname --target=samba3 TESTS...`` with a bounded time,
  parse its subunit stream, and return ``{test_name: outcome}`` with outcome one
  of "success", "failure", "skip", "error".
- The expected-results list format (``tests/torture_expected.txt``,
  ``tests/torture_samba_reference.txt``): ``load_expected``, ``format_expected``.
- ``check_against_expected``: regressions (listed ``pass``, did not pass) and
  improvements (listed otherwise, passed).

smbtorture 4.17's ``--format=subunit`` writes subunit *v1* text on stdout
(checked on this machine): ``test: NAME``, ``success: NAME``,
``failure: NAME [`` detail lines ``]``, ``skip: NAME [ ... ]``, ``error: NAME``,
``xfail``/``uxsuccess``, plus ``time:``/``progress:`` lines, interleaved with
free-form debug text that some tests print. The parser below reads exactly that;
python-subunit's own v1 reader agrees with it (see
tests/test_torture_harness_selftest.py).

``--target=samba3`` is the one target choice of the project: a few tests pick
Samba-flavoured expectations with it. Both list files record it in their header.

Command line (regenerating a list file from a live server)::

    python -m tests.peers.torture --port 14600 --share share -U user%pass \\
        --write tests/torture_expected.txt smb2.connect smb2.read
    python -m tests.peers.torture --samba --port 14601 --write \\
        tests/torture_samba_reference.txt smb2.connect smb2.read ...
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence

SMBTORTURE = "smbtorture"
TARGET = "samba3"

OUTCOMES = ("success", "failure", "skip", "error")
EXPECTATIONS = ("pass", "fail", "skip")

# subunit v1 outcome keywords -> our four outcomes. xfail is a failure that
# smbtorture itself expected; for us the test still did not pass.
_V1_OUTCOME = {
    "success": "success", "successful": "success", "uxsuccess": "success",
    "failure": "failure", "fail": "failure", "xfail": "failure",
    "skip": "skip",
    "error": "error",
}
_V1_LINE = re.compile(
    r"^(test|testing|success|successful|uxsuccess|failure|fail|xfail|skip|error)"
    r":?\s+(.+?)\s*$")

# Substrings that mean "could not even connect" in a failure detail / stderr.
_CONNECT_MARKERS = (
    "Establishing SMB2 connection failed",
    "torture_smb2_connection failed",
    "Failed to connect to SMB2 share",
    "Failed to connect to",
)


class TortureError(RuntimeError):
    """smbtorture could not be run meaningfully (missing, or never connected)."""


class TortureConnectError(TortureError):
    """Every test failed at connect: server down, refused (smbtorture then says
    NT_STATUS_NO_MEMORY), wrong credentials or share name."""


class TortureResults(dict):
    """``{test_name: outcome}`` plus what was seen along the way."""

    def __init__(self) -> None:
        super().__init__()
        self.details: dict[str, str] = {}
        self.argv: list[str] = []
        self.returncode: int | None = None
        self.timed_out = False
        self.stderr = ""
        self.stdout = ""
        self.elapsed_s = 0.0

    def counts(self) -> dict[str, int]:
        c = dict.fromkeys(OUTCOMES, 0)
        for outcome in self.values():
            c[outcome] += 1
        return c


def parse_subunit_v1(text: str, results: TortureResults | None = None) -> TortureResults:
    """Parse smbtorture's subunit v1 text. A test that started but has no
    outcome (smbtorture crashed or was killed) is recorded as "error"."""
    res = results if results is not None else TortureResults()
    started: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _V1_LINE.match(lines[i])
        i += 1
        if not m:
            continue
        keyword, rest = m.group(1), m.group(2)
        detail = ""
        if rest.endswith("["):
            # multi-line detail: everything up to a line that is exactly "]"
            rest = rest[:-1].rstrip()
            body = []
            while i < len(lines) and lines[i].rstrip() != "]":
                body.append(lines[i])
                i += 1
            i += 1
            detail = "\n".join(body).strip()
        elif rest.endswith("]") and "[" in rest:
            # one-line detail: "skip: NAME [ reason ]"
            rest, _, tail = rest.partition("[")
            rest = rest.rstrip()
            detail = tail[:-1].strip()
        name = rest.strip()
        if keyword in ("test", "testing"):
            started.append(name)
            continue
        res[name] = _V1_OUTCOME[keyword]
        if detail:
            res.details[name] = detail
    for name in started:
        if name not in res:
            res[name] = "error"
            res.details[name] = "started but no outcome (smbtorture died or was killed)"
    return res


def _connect_failed(res: TortureResults) -> bool:
    if not res:
        return any(m in res.stderr for m in _CONNECT_MARKERS)
    if any(o in ("success", "skip") for o in res.values()):
        return False
    blob = res.stderr + "\n".join(res.details.values())
    return all(
        any(m in res.details.get(name, "") for m in _CONNECT_MARKERS) for name in res
    ) or (all(o == "failure" for o in res.values()) and "Failed to connect to SMB2 share" in blob)


def run_torture(tests: Sequence[str], *, host: str, port: int, share: str, user: str,
                password: str, extra_args: Sequence[str] = (), timeout_s: float,
                smbtorture: str = SMBTORTURE, check_connect: bool = True) -> TortureResults:
    """Run smbtorture on ``tests`` (suite or test names) against //host/share:port.

    Returns a TortureResults ({name: outcome}). On timeout smbtorture (its own
    pid only) is killed and the partial results are returned with
    ``timed_out`` set; tests cut short are "error". Raises TortureConnectError
    when every test failed at connect, TortureError when smbtorture is missing.
    """
    if not tests:
        raise ValueError("no tests given")
    res = TortureResults()
    with tempfile.TemporaryDirectory(prefix="torture-") as tmp:
        # an empty client config: results must not depend on /etc/samba/smb.conf
        conf = os.path.join(tmp, "client.conf")
        with open(conf, "w") as f:
            f.write("[global]\n")
        argv = [smbtorture, f"//{host}/{share}", "-p", str(port), "-U", f"{user}%{password}",
                "--configfile", conf, "--format=subunit", "--fullname", f"--target={TARGET}",
                *extra_args, *tests]
        res.argv = argv
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, cwd=tmp)
        except FileNotFoundError as e:
            raise TortureError(f"{smbtorture} not found: install the Debian package "
                               f"samba-testsuite ({e})") from e
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            res.timed_out = True
            proc.kill()
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        res.elapsed_s = time.monotonic() - t0
        res.returncode = proc.returncode
        res.stdout = out.decode("utf-8", "replace")
        res.stderr = err.decode("utf-8", "replace")
    parse_subunit_v1(res.stdout, res)
    if check_connect and _connect_failed(res):
        status = re.findall(r"NT_STATUS_[A-Z_]+", res.stderr)
        hint = ""
        if "NT_STATUS_NO_MEMORY" in status:
            hint = " (NT_STATUS_NO_MEMORY is how smbtorture reports a refused connection)"
        raise TortureConnectError(
            f"smbtorture could not connect to //{host}/{share} port {port}: all "
            f"{len(res)} tests failed at connect; status seen: "
            f"{sorted(set(status)) or 'none'}{hint}\nstderr tail:\n{res.stderr[-1500:]}")
    if not res and not res.timed_out:
        raise TortureError(f"smbtorture produced no results (rc={res.returncode}); "
                           f"unknown test name?\nstdout:\n{res.stdout[-1500:]}\n"
                           f"stderr:\n{res.stderr[-1500:]}")
    return res


def run_suites(suites: Sequence[str], *, timeout_s_per_suite: float, **kw) -> TortureResults:
    """``run_torture`` once per suite (a crash or hang costs one suite only) and
    merge the results. ``kw``: host, port, share, user, password, extra_args."""
    merged = TortureResults()
    for suite in suites:
        r = run_torture([suite], timeout_s=timeout_s_per_suite, **kw)
        merged.update(r)
        merged.details.update(r.details)
        merged.timed_out |= r.timed_out
        merged.elapsed_s += r.elapsed_s
        merged.stderr += r.stderr
    return merged


# ---------------------------------------------------------------- list files

# A test name may hold single spaces (smb2.delete-on-close-perms.CREATE Existing): the
# name is the shortest prefix followed by whitespace and an expectation word.
_LIST_LINE = re.compile(r"^(?P<name>\S(?:.*?\S)?)\s+(?P<exp>pass|fail|skip)(?:\s+(?P<reason>.*))?$")


def load_expected(path: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """Read a list file: ``NAME  pass|fail|skip  [reason...]`` per line; ``#``
    starts a comment; ``[suite]`` lines group tests and are otherwise ignored."""
    expected: dict[str, tuple[str, str]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#") or (line.startswith("[") and line.endswith("]")):
                continue
            m = _LIST_LINE.match(line)
            if m is None:
                raise ValueError(f"{path}:{lineno}: expected 'NAME pass|fail|skip [reason]', "
                                 f"got {raw!r}")
            name = m["name"]
            if name in expected:
                raise ValueError(f"{path}:{lineno}: {name} listed twice")
            expected[name] = (m["exp"], (m["reason"] or "").strip())
    return expected


def load_suites(path: str | os.PathLike) -> list[str]:
    """The ``[suite]`` section names of a list file, in order."""
    suites = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if line.startswith("[") and line.endswith("]"):
                suites.append(line[1:-1].strip())
    return suites


_TO_EXPECTATION = {"success": "pass", "failure": "fail", "error": "fail", "skip": "skip"}


def _suite_of(name: str, suites: Sequence[str]) -> str:
    best = ""
    for s in suites:
        if (name == s or name.startswith(s + ".")) and len(s) > len(best):
            best = s
    return best or name.rsplit(".", 1)[0]


def _reason(outcome: str, detail: str) -> str:
    if outcome == "success":
        return ""
    first = next((ln.strip() for ln in detail.splitlines() if ln.strip()), "")
    first = re.sub(r"^(\.\./)+", "", first)
    text = f"{outcome}: {first}" if first else outcome
    return text[:200]


def format_expected(results: Mapping[str, str], suites: Sequence[str], header: str,
                    details: Mapping[str, str] | None = None) -> str:
    """A list file for ``results``, one ``[suite]`` section per entry of ``suites``
    (tests sorted by name inside). ``header`` lines become ``#`` comments."""
    details = details if details is not None else getattr(results, "details", {})
    groups: dict[str, list[str]] = {s: [] for s in suites}
    for name in results:
        groups.setdefault(_suite_of(name, suites), []).append(name)
    out = [f"# {ln}".rstrip() for ln in header.splitlines()]
    for suite, names in groups.items():
        out += ["", f"[{suite}]"]
        width = max((len(n) for n in names), default=0)
        for name in sorted(names):
            outcome = results[name]
            line = f"{name.ljust(width)}  {_TO_EXPECTATION[outcome]}"
            reason = _reason(outcome, details.get(name, ""))
            if reason:
                line += f"  {reason}"
            out.append(line)
    return "\n".join(out) + "\n"


def check_against_expected(results: Mapping[str, str],
                           expected: Mapping[str, tuple[str, str]]) -> list[str]:
    """Compare a run with a list file. Each line starts with its kind:

    - ``regression: NAME ...`` a test listed ``pass`` that did not pass
      (including: it did not run at all). These fail the suite test.
    - ``improvement: NAME ...`` listed ``fail``/``skip`` but passed (update the list).
    - ``unlisted: NAME ...`` ran but is not in the list (informational).
    """
    findings = []
    for name, (exp, reason) in expected.items():
        got = results.get(name)
        if exp == "pass" and got != "success":
            findings.append(f"regression: {name} listed pass, got {got or 'not run'}")
        elif exp != "pass" and got == "success":
            findings.append(f"improvement: {name} listed {exp} ({reason}), now passes")
    for name in results:
        if name not in expected:
            findings.append(f"unlisted: {name} got {results[name]}")
    return findings


def regressions(findings: Iterable[str]) -> list[str]:
    return [f for f in findings if f.startswith("regression:")]


def assert_no_regressions(results: Mapping[str, str],
                          expected: Mapping[str, tuple[str, str]]) -> list[str]:
    """Raise AssertionError listing regressions; return the other findings."""
    findings = check_against_expected(results, expected)
    bad = regressions(findings)
    if bad:
        details = getattr(results, "details", {})
        msg = [f"{len(bad)} smbtorture regression(s):"]
        for line in bad:
            name = line.split()[1]
            msg.append(f"  {line}")
            if details.get(name):
                msg.append("      " + details[name].splitlines()[0][:300])
        raise AssertionError("\n".join(msg))
    return findings


# ---------------------------------------------------------------- command line

def _main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.peers.torture", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tests", nargs="+")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--share", default="share")
    ap.add_argument("-U", dest="cred", default="tuser%tpass", help="user%%password")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--samba", action="store_true",
                    help="start a private Samba smbd (tests.peers.samba) on --port and test it")
    ap.add_argument("--kernel-oplocks", action="store_true", help="with --samba")
    ap.add_argument("--write", help="write the results as a list file here")
    ap.add_argument("--compare", help="compare with this list file")
    args = ap.parse_args(argv)
    user, _, password = args.cred.partition("%")

    def run(host: str, port: int, share: str) -> TortureResults:
        res = TortureResults()
        for t in args.tests:
            r = run_suites([t], host=host, port=port, share=share, user=user,
                           password=password, timeout_s_per_suite=args.timeout)
            res.update(r)
            res.details.update(r.details)
            print(f"{t}: {r.counts()}{' TIMED OUT' if r.timed_out else ''}", file=sys.stderr)
        return res

    server_desc = f"{args.host}:{args.port}/{args.share}"
    if args.samba:
        from tests.peers.samba import samba_server
        with tempfile.TemporaryDirectory(prefix="torture-share-") as share_dir, \
                samba_server(share_dir, host=args.host, port=args.port, user=user,
                             password=password, share=args.share,
                             kernel_oplocks=args.kernel_oplocks) as srv:
            res = run(srv.host, srv.port, srv.share)
        server_desc = (f"Samba {_samba_version()} via tests/peers/samba.py, kernel oplocks = "
                       f"{'yes' if args.kernel_oplocks else 'no'}, no vfs modules")
    else:
        res = run(args.host, args.port, args.share)
    if args.write:
        header = (f"smbtorture expected results. Format: NAME  pass|fail|skip  [reason]\n"
                  f"Generated by: python -m tests.peers.torture (tests/peers/torture.py)\n"
                  f"smbtorture options: --format=subunit --fullname --target={TARGET}\n"
                  f"Server: {server_desc}\n"
                  f"Counts: {res.counts()}")
        with open(args.write, "w", encoding="utf-8") as f:
            f.write(format_expected(res, args.tests, header))
    if args.compare:
        for line in check_against_expected(res, load_expected(args.compare)):
            print(line)
    return 0


def _samba_version() -> str:
    try:
        return subprocess.run(["smbd", "--version"], capture_output=True, text=True,
                              timeout=10).stdout.strip().removeprefix("Version ")
    except (OSError, subprocess.SubprocessError):
        return "?"


if __name__ == "__main__":
    sys.exit(_main())
