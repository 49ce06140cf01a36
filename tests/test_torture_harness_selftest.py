"""The smbtorture harness (tests/peers/torture.py) proven on real peers.

- the subunit v1 parser on smbtorture's real output, cross-checked with
  python-subunit's own v1 reader;
- list files: load / format round trip, regressions detected;
- against a private Samba smbd (tests/peers/samba.py): smb2.connect and
  smb2.read give the known counts (real-peers.md), a refused port raises the
  connect error, and the eight reference suites show no regression against
  tests/torture_samba_reference.txt (the same check the smbd_py suite runs
  against tests/torture_expected.txt);
- the timeout path kills smbtorture by its pid and keeps partial results.
"""
from __future__ import annotations

import io
import os
import pathlib
import shutil
import stat
import subprocess
import tempfile
import time

import pytest

from tests.peers.samba import SambaStartError, samba_server
from tests.peers.torture import (
    TARGET, TortureConnectError, TortureResults, assert_no_regressions,
    check_against_expected, format_expected, load_expected, load_suites,
    parse_subunit_v1, regressions, run_suites, run_torture)

ROOT = pathlib.Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "tests" / "torture_samba_reference.txt"
EXPECTED = ROOT / "tests" / "torture_expected.txt"

PORT_SAMBA = 14620
PORT_SAMBA_SUITES = 14621
PORT_CLOSED = 14698
USER, PASSWORD = "smbdpytest", "Tort-ure-1"

SAMPLE = """smbtorture 4.17.12-Debian
Using seed 1795474943
time: 2026-11-23 23:02:23.260622
test: smb2.read.eof
time: 2026-11-23 23:01:57.254522
success: smb2.read.eof
test: smb2.read.bug14607
skip: smb2.read.bug14607 [
../../source4/torture/smb2/read.c:394: server doesn't support FSCTL_X
]
 all_info for '\\test9.dat'
\tcreate_time:    Mon Nov 23 23:01:57 2026 UTC
test: smb2.compound.related4
failure: smb2.compound.related4 [
../../source4/torture/smb2/compound.c:539: status was NT_STATUS_OK, expected NT_STATUS_ACCESS_DENIED
test: looks like a test line but is detail
]
test: smb2.x.err
error: smb2.x.err [
boom
]
test: smb2.x.one
skip: smb2.x.one [ one-line reason ]
test: smb2.x.xf
xfail: smb2.x.xf
progress: 5
test: smb2.x.cut
"""


def test_parser_on_smbtorture_output():
    r = parse_subunit_v1(SAMPLE)
    assert dict(r) == {
        "smb2.read.eof": "success",
        "smb2.read.bug14607": "skip",
        "smb2.compound.related4": "failure",
        "smb2.x.err": "error",
        "smb2.x.one": "skip",
        "smb2.x.xf": "failure",
        "smb2.x.cut": "error",  # started, no outcome: smbtorture died
    }
    assert "FSCTL_X" in r.details["smb2.read.bug14607"]
    assert r.details["smb2.x.one"] == "one-line reason"
    assert "looks like a test line" in r.details["smb2.compound.related4"]


def _subunit_outcomes(text: str) -> dict[str, str]:
    """python-subunit's v1 reader (TestProtocolServer) on the same stream."""
    import subunit
    import testtools

    outcomes: dict[str, str] = {}

    class Result(testtools.TestResult):
        def addSuccess(self, test, details=None):
            outcomes[test.id()] = "success"

        def addFailure(self, test, err=None, details=None):
            outcomes[test.id()] = "failure"

        def addError(self, test, err=None, details=None):
            outcomes[test.id()] = "error"

        def addSkip(self, test, reason=None, details=None):
            outcomes[test.id()] = "skip"

        def addExpectedFailure(self, test, err=None, details=None):
            outcomes[test.id()] = "failure"

    server = subunit.TestProtocolServer(Result(), stream=io.BytesIO())
    server.readFrom(io.BytesIO(text.encode()))
    server.lostConnection()
    return outcomes


@pytest.fixture
def share_dir():
    """A share the non-root Samba user can reach (pytest's tmp_path is 0700)."""
    d = tempfile.mkdtemp(prefix="torture-share-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def samba():
    d = tempfile.mkdtemp(prefix="torture-share-", dir="/tmp")
    try:
        with samba_server(d, port=PORT_SAMBA, user=USER, password=PASSWORD) as srv:
            yield srv
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _kw(srv):
    return dict(host=srv.host, port=srv.port, share=srv.share, user=srv.user,
                password=srv.password)


def test_known_counts_on_samba(samba):
    """real-peers.md: smb2.connect 1/0/0, smb2.read 4/0/1 on Samba 4.17."""
    r = run_torture(["smb2.connect", "smb2.read"], timeout_s=120, **_kw(samba))
    assert not r.timed_out
    assert f"--target={TARGET}" in r.argv
    assert r["smb2.connect"] == "success"
    read = {k: v for k, v in r.items() if k.startswith("smb2.read.")}
    assert sorted(read.values()).count("success") == 4, read
    assert sorted(read.values()).count("skip") == 1, read
    assert "failure" not in read.values() and "error" not in read.values()
    # python-subunit reads the same outcomes from the real stream
    assert _subunit_outcomes(r.stdout) == dict(r)


def test_wrong_password_is_a_connect_error(samba):
    kw = _kw(samba) | {"password": "wrong"}
    with pytest.raises(TortureConnectError, match="could not connect"):
        run_torture(["smb2.connect", "smb2.read"], timeout_s=60, **kw)


def test_refused_port_is_a_connect_error():
    with pytest.raises(TortureConnectError, match="NT_STATUS_NO_MEMORY"):
        run_torture(["smb2.connect", "smb2.read"], host="127.0.0.1", port=PORT_CLOSED,
                    share="share", user=USER, password=PASSWORD, timeout_s=60)


def test_timeout_kills_and_keeps_partial_results(tmp_path):
    """A stand-in smbtorture that reports one test then hangs."""
    fake = tmp_path / "smbtorture"
    pidfile = tmp_path / "pid"
    fake.write_text("#!/bin/sh\n"
                    f"echo $$ > {pidfile}\n"
                    "echo 'test: smb2.a'; echo 'success: smb2.a'; echo 'test: smb2.b'\n"
                    "exec sleep 60\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    t0 = time.monotonic()
    r = run_torture(["smb2"], host="127.0.0.1", port=PORT_CLOSED, share="s", user="u",
                    password="p", timeout_s=1.5, smbtorture=str(fake))
    assert time.monotonic() - t0 < 10
    assert r.timed_out
    assert dict(r) == {"smb2.a": "success", "smb2.b": "error"}
    pid = int(pidfile.read_text())
    assert not os.path.exists(f"/proc/{pid}") or \
        open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"


def test_list_file_round_trip_and_regressions(tmp_path):
    r = parse_subunit_v1(SAMPLE)
    text = format_expected(r, ["smb2.read", "smb2.compound", "smb2.x"], "header line\nsecond")
    f = tmp_path / "list.txt"
    f.write_text(text)
    exp = load_expected(f)
    assert load_suites(f) == ["smb2.read", "smb2.compound", "smb2.x"]
    assert exp["smb2.read.eof"] == ("pass", "")
    assert exp["smb2.compound.related4"][0] == "fail"
    assert exp["smb2.read.bug14607"][0] == "skip"
    assert check_against_expected(r, exp) == []
    worse = dict(r) | {"smb2.read.eof": "failure"}
    better = dict(r) | {"smb2.compound.related4": "success"}
    del worse["smb2.x.one"]
    findings = check_against_expected(worse, exp)
    assert regressions(findings) == ["regression: smb2.read.eof listed pass, got failure"]
    with pytest.raises(AssertionError, match="smb2.read.eof"):
        assert_no_regressions(worse, exp)
    findings = assert_no_regressions(better, exp)
    assert any(x.startswith("improvement: smb2.compound.related4") for x in findings)
    missing = {k: v for k, v in r.items() if k != "smb2.read.eof"}
    assert regressions(check_against_expected(missing, exp)) == [
        "regression: smb2.read.eof listed pass, got not run"]


def test_list_names_may_hold_spaces(tmp_path):
    """smbtorture names some tests with a space (smb2.delete-on-close-perms.CREATE
    Existing): the name runs up to the expectation word, the reason follows it."""
    f = tmp_path / "list.txt"
    f.write_text("[s]\ns.CREATE Existing        fail  failure: x pass y\ns.CREATE  pass\n"
                 "s.one pass\n")
    exp = load_expected(f)
    assert exp == {"s.CREATE Existing": ("fail", "failure: x pass y"),
                   "s.CREATE": ("pass", ""), "s.one": ("pass", "")}
    f.write_text("s.lonely\n")
    with pytest.raises(ValueError, match="expected 'NAME pass"):
        load_expected(f)


def test_list_files_parse():
    ref = load_expected(REFERENCE)
    assert ref["smb2.connect"] == ("pass", "")
    assert load_suites(REFERENCE) == ["smb2.connect", "smb2.read", "smb2.lock", "smb2.compound",
                                      "smb2.dir", "smb2.create", "smb2.getinfo", "smb2.session"]
    for path in (REFERENCE, EXPECTED):
        assert f"--target={TARGET}" in path.read_text()
    load_expected(EXPECTED)


def test_samba_has_no_regression_against_reference(share_dir):
    """The suite-level check, pointed at Samba: every test the reference lists
    as pass must still pass. (The smbd_py version compares with
    tests/torture_expected.txt.)"""
    expected = load_expected(REFERENCE)
    with samba_server(share_dir, port=PORT_SAMBA_SUITES, user=USER,
                      password=PASSWORD) as srv:
        r = run_suites(load_suites(REFERENCE), timeout_s_per_suite=600, **_kw(srv))
    findings = assert_no_regressions(r, expected)
    print("\n".join(findings))


def test_samba_server_stops_everything(share_dir):
    with samba_server(share_dir, port=PORT_SAMBA_SUITES, user=USER,
                      password=PASSWORD) as srv:
        # make smbd start its RPC helpers (samba-dcerpcd leaves the process group)
        subprocess.run(["smbclient", "-L", f"//{srv.host}", "-p", str(srv.port),
                        "-U", f"{USER}%{PASSWORD}"], capture_output=True, timeout=60,
                       stdin=subprocess.DEVNULL, check=True)
        conf = srv.conf_path
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if conf.encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    leftovers.append(pid)
        except OSError:
            pass
    assert leftovers == []
    assert not os.path.exists(os.path.dirname(conf))


def test_samba_refuses_unreachable_share(tmp_path):
    with pytest.raises(SambaStartError, match="cannot traverse"):
        with samba_server(str(tmp_path), port=PORT_SAMBA_SUITES, user=USER, password=PASSWORD):
            pass
