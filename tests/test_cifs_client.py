"""Acceptance test: the Linux kernel cifs client (in a qemu guest) against smbd_py.

smbd_py runs inside the test's own network namespace (tests/peers/cifs_vm.py), the
guest mounts the share with vers=3.1.1 and, separately, vers=2.1 (default
cache=strict), and does what a user would: writes a few MiB of random data and a
small text, reads them back after dropping the page cache, lists the directory,
renames, truncates, touches, makes and removes a directory, deletes a file. The
host then checks the server's disk (bytes by sha256, the rename), the dialect the
kernel reports in /proc/fs/cifs/DebugData, that the server is still alive and that
its log has no "internal error" lines.

Also: chmod with cifsacl (a security descriptor) must reach the disk, and cache
coherence: while the guest holds a file open (and may cache it under a lease/oplock),
a local process on the server rewrites it; the guest must then read the new bytes.
(Samba 4.17 with kernel oplocks fails that one too: it breaks the client's batch
oplock to level II, which it does not back with a kernel lease.) And the other way
round: a write the guest still holds in its page cache under its lease is what a local
reader on the server reads (the reader's open waits for the client's write-back).
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parent.parent

from tests.peers import cifs_vm
from tests.peers.smbd_py_server import PASSWORD, USER, write_users

# This test's port range is 14700-14799 (inside its own netns).
PORTS = {"3.1.1": 14701, "2.1": 14702}
BLOB_BYTES = 4 * 1024 * 1024
GUEST_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def image() -> cifs_vm.VmImage:
    t0 = time.monotonic()
    img = cifs_vm.build_vm_image()
    print(f"\n[cifs] build_vm_image: {time.monotonic() - t0:.2f}s ({img.kernel_version})")
    return img


@pytest.fixture(scope="module")
def ns():
    with cifs_vm.netns() as n:
        yield n


class _Server:
    def __init__(self, proc, share: Path, log: Path, port: int):
        self.proc, self.share, self.log, self.port = proc, share, log, port

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 12000) -> str:
        return self.log_text()[-n:]


def _start_smbd_py(ns: cifs_vm.NetNs, base: Path, port: int) -> _Server:
    share = base / "share"
    share.mkdir()
    users = base / "users"
    write_users(str(users), USER, PASSWORD)
    log = base / "server.log"
    argv = [sys.executable, "-m", "smbd_py", "serve", "--listen", f"{ns.host_addr}:{port}",
            "--share", f"share={share}", "--users", str(users), "--log-level", "debug"]
    proc = cifs_vm.start_server(ns, argv, port, log_path=log, cwd=str(_REPO))
    return _Server(proc, share, log, port)


_GUEST_SCRIPT = r"""
set -e
M=/mnt/s
mkdir -p $M
t0=$(date +%s)
mount -t cifs //{host}/share $M -o username={user},password={password},vers={vers},port={port}
echo "MOUNT OK"
grep -o 'Dialect 0x[0-9a-f]*' /proc/fs/cifs/DebugData | head -n 1 | sed 's/^/DIALECT /'
printf 'hello from the kernel cifs client, vers={vers}\n' > $M/hello.txt
head -c {blob_bytes} /dev/urandom > /tmp/blob
cp /tmp/blob $M/blob.bin
sync
echo "WRITE OK"
echo 3 > /proc/sys/vm/drop_caches
cmp /tmp/blob $M/blob.bin
echo "READBACK OK"
echo "BLOB SHA256 $(sha256sum $M/blob.bin | cut -d' ' -f1)"
echo "HELLO SHA256 $(sha256sum $M/hello.txt | cut -d' ' -f1)"
cat $M/hello.txt
ls -la $M
ls $M | grep -qx blob.bin
echo "LIST OK"
mv $M/blob.bin $M/renamed.bin
test -f $M/renamed.bin
test ! -e $M/blob.bin
echo "RENAME OK"
stat -c 'STAT %s %F' $M/renamed.bin
mkdir $M/dir
printf 'inner\n' > $M/dir/inner.txt
mv $M/dir/inner.txt $M/dir/moved.txt
test "$(cat $M/dir/moved.txt)" = inner
rm $M/dir/moved.txt
rmdir $M/dir
test ! -e $M/dir
echo "DIR OK"
printf 'truncate me please\n' > $M/trunc.txt
truncate -s 8 $M/trunc.txt
test "$(stat -c %s $M/trunc.txt)" = 8
touch -d '2001-02-03 04:05:06' $M/trunc.txt
stat -c 'MTIME %Y' $M/trunc.txt
echo "SETINFO OK"
ln $M/hello.txt $M/hello-link.txt
test "$(cat $M/hello-link.txt)" = "$(cat $M/hello.txt)"
echo "LINK OK"
printf 'gone\n' > $M/gone.txt
rm $M/gone.txt
test ! -e $M/gone.txt
echo "DELETE OK"
df -k $M | tail -n 1
echo "DF OK"
umount $M
echo "UMOUNT OK"
echo "GUEST SECONDS $(( $(date +%s) - t0 ))"
"""


@pytest.mark.parametrize("vers,dialect", [("3.1.1", "0x311"), ("2.1", "0x210")], ids=["smb3.1.1", "smb2.1"])
def test_kernel_cifs_against_smbd_py(ns, image, tmp_path, vers, dialect):
    srv = _start_smbd_py(ns, tmp_path, PORTS[vers])
    try:
        script = _GUEST_SCRIPT.format(host=ns.host_addr, user=USER, password=PASSWORD, vers=vers,
                                      port=srv.port, blob_bytes=BLOB_BYTES)
        vm = cifs_vm.CifsVm(ns, image)
        try:
            r = vm.run_in_guest(script, timeout_s=GUEST_TIMEOUT_S)
        except cifs_vm.GuestTimeout as e:
            pytest.fail(f"guest timed out\n--- output ---\n{e.output}\n--- console ---\n"
                        f"{e.console[-4000:]}\n--- server ---\n{srv.log_tail()}")
        print(f"\n[cifs] vers={vers} whole guest run (boot+mount+io+poweroff): {r.elapsed_s:.2f}s")
        diag = (f"--- output ---\n{r.output}\n--- console ---\n{r.console[-4000:]}\n"
                f"--- server ---\n{srv.log_tail()}")
        assert srv.proc.poll() is None, "smbd_py died\n" + diag
        assert r.rc == 0, diag
        for word in ("MOUNT OK", "WRITE OK", "READBACK OK", "LIST OK", "RENAME OK", "DIR OK",
                     "SETINFO OK", "LINK OK", "DELETE OK", "DF OK", "UMOUNT OK"):
            assert word in r.output, f"missing {word}\n" + diag
        assert f"DIALECT Dialect {dialect}" in r.output, diag

        # Server side: the bytes and the rename really happened on smbd_py's disk.
        share = srv.share
        hello_expected = f"hello from the kernel cifs client, vers={vers}\n".encode()
        assert (share / "hello.txt").read_bytes() == hello_expected
        m = re.search(r"HELLO SHA256 ([0-9a-f]{64})", r.output)
        assert m and m.group(1) == hashlib.sha256(hello_expected).hexdigest(), diag
        assert not (share / "blob.bin").exists()
        blob = (share / "renamed.bin").read_bytes()
        assert len(blob) == BLOB_BYTES
        m = re.search(r"BLOB SHA256 ([0-9a-f]{64})", r.output)
        assert m, diag
        assert hashlib.sha256(blob).hexdigest() == m.group(1)
        assert f"STAT {BLOB_BYTES} regular file" in r.output, diag
        assert (share / "trunc.txt").read_bytes() == b"truncate"
        assert int((share / "trunc.txt").stat().st_mtime) == int(re.search(r"MTIME (\d+)", r.output).group(1))
        assert not (share / "dir").exists() and not (share / "gone.txt").exists()
        assert (share / "hello-link.txt").stat().st_ino == (share / "hello.txt").stat().st_ino
        assert (share / "hello.txt").stat().st_nlink == 2

        assert srv.proc.poll() is None, "smbd_py died after the guest finished\n" + diag
        bad = [line for line in srv.log_text().splitlines() if "internal error" in line]
        assert not bad, "server logged internal errors:\n" + "\n".join(bad[:20]) + "\n" + diag
    finally:
        ns.stop(srv.proc)


_CIFSACL_SCRIPT = r"""
set -e
M=/mnt/s
mkdir -p $M
mount -t cifs //{host}/share $M -o username={user},password={password},vers=3.1.1,port={port},cifsacl
echo "MOUNT OK"
printf 'acl\n' > $M/acl.txt
mkdir $M/acldir
chmod 640 $M/acl.txt
chmod 750 $M/acldir
sleep 2  # past actimeo=1: the modes below come from the server, not the attribute cache
echo 3 > /proc/sys/vm/drop_caches
stat -c 'MODE %a %n' $M/acl.txt $M/acldir
umount $M
echo "UMOUNT OK"
"""


def test_kernel_cifs_cifsacl_chmod(ns, image, tmp_path):
    """With cifsacl, chmod travels as a security descriptor; it must reach the disk."""
    srv = _start_smbd_py(ns, tmp_path, 14703)
    try:
        script = _CIFSACL_SCRIPT.format(host=ns.host_addr, user=USER, password=PASSWORD, port=srv.port)
        r = cifs_vm.CifsVm(ns, image).run_in_guest(script, timeout_s=GUEST_TIMEOUT_S)
        print(f"\n[cifs] cifsacl chmod guest run: {r.elapsed_s:.2f}s")
        diag = (f"--- output ---\n{r.output}\n--- console ---\n{r.console[-4000:]}\n"
                f"--- server ---\n{srv.log_tail()}")
        assert r.rc == 0 and "UMOUNT OK" in r.output, diag
        assert (srv.share / "acl.txt").stat().st_mode & 0o777 == 0o640, diag
        assert (srv.share / "acldir").stat().st_mode & 0o777 == 0o750, diag
        assert "MODE 640 /mnt/s/acl.txt" in r.output, diag
        # The kernel reads "FILE_DELETE_CHILD on the owner ACE only" as the sticky bit
        # (cifsacl.c access_flags_to_mode), and build_sd gives an r-x group none, so the
        # guest may show 1750 for a 0750 directory: compare the rwx bits only.
        m = re.search(r"MODE (\d+) /mnt/s/acldir", r.output)
        assert m and m.group(1)[-3:] == "750", diag
        assert srv.proc.poll() is None, diag
        assert "internal error" not in srv.log_text(), diag
    finally:
        ns.stop(srv.proc)


_COHERENCE_SCRIPT = r"""
set -e
M=/mnt/s
mkdir -p $M
mount -t cifs //{host}/share $M -o username={user},password={password},vers={vers},port={port}
echo "MOUNT OK"
exec 3< $M/co/data.txt     # one open handle: the client keeps its lease/oplock
echo "FIRST $(cat <&3)"     # and caches the pages
: > $M/co/ready
i=0
while [ ! -e $M/co/done ]; do
    i=$((i+1)); [ $i -le 120 ] || {{ echo "NO DONE MARKER"; exit 3; }}
    sleep 1
done
echo "AFTER $(cat $M/co/data.txt)"
exec 3<&-
umount $M
echo "UMOUNT OK"
"""


def _coherence_run(ns, image, share: Path, port: int, vers: str, user: str, password: str,
                   server_log) -> None:
    """Guest reads co/data.txt (keeping it open), a local process rewrites it in place,
    the guest reads again: it must see the new bytes."""
    import threading

    co = share / "co"
    co.mkdir()
    data = co / "data.txt"
    data.write_bytes(b"version-1\n")
    script = _COHERENCE_SCRIPT.format(host=ns.host_addr, user=user, password=password, vers=vers,
                                      port=port)
    result: dict = {}

    def guest() -> None:
        try:
            result["r"] = cifs_vm.CifsVm(ns, image).run_in_guest(script, timeout_s=GUEST_TIMEOUT_S)
        except BaseException as e:  # reported by the main thread
            result["err"] = e

    t = threading.Thread(target=guest, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + GUEST_TIMEOUT_S
        while not (co / "ready").exists():
            assert t.is_alive() and time.monotonic() < deadline, \
                f"guest never got ready: {result}\n{server_log()}"
            time.sleep(0.2)
        # Which kernel leases the server holds right now (inode numbers): a grant it
        # backs shows up here as LEASE ... on data.txt's inode.
        ino = data.stat().st_ino
        leases = [ln for ln in Path("/proc/locks").read_text().splitlines()
                  if "LEASE" in ln and f":{ino} " in ln]
        # The local writer: opening for write waits for the kernel lease break.
        t0 = time.monotonic()
        with open(data, "r+b") as f:
            opened = time.monotonic() - t0
            f.write(b"version-2\n")
        (co / "done").write_bytes(b"")
        print(f"\n[cifs] vers={vers}: local open for write waited {opened:.2f}s for the break")
        t.join(GUEST_TIMEOUT_S + 30)
        assert not t.is_alive(), "guest thread did not finish"
        if "err" in result:
            raise result["err"]
        r = result["r"]
        diag = (f"--- kernel leases on data.txt before the local open: {leases}\n"
                f"--- output ---\n{r.output}\n--- console ---\n{r.console[-3000:]}\n"
                f"--- server ---\n{server_log()}")
        assert r.rc == 0 and "UMOUNT OK" in r.output, diag
        assert "FIRST version-1" in r.output, diag
        assert "AFTER version-2" in r.output, "the guest read stale data\n" + diag
        # Far below /proc/sys/fs/lease-break-time (45 s): the server released its lease
        # promptly instead of letting the kernel time it out.
        assert opened < 20, f"local open waited {opened:.1f}s\n" + diag
    finally:
        t.join(30)


@pytest.mark.parametrize("vers", ["3.1.1", "2.1"], ids=["smb3.1.1", "smb2.1"])
def test_kernel_cifs_sees_local_write_after_break(ns, image, tmp_path, vers):
    """Cache coherence, the server's reason to exist: the guest reads a file (so its
    cache=strict client may cache it under a lease/oplock), a local process on the
    server then rewrites the file in place, and the guest must read the new bytes:
    the local open breaks the server's kernel lease, the server breaks the client's."""
    srv = _start_smbd_py(ns, tmp_path, 14704 if vers == "3.1.1" else 14705)
    try:
        _coherence_run(ns, image, srv.share, srv.port, vers, USER, PASSWORD, srv.log_tail)
        assert srv.proc.poll() is None, srv.log_tail()
        assert "internal error" not in srv.log_text(), srv.log_tail()
    finally:
        ns.stop(srv.proc)


# Acceptance 7, first half: the guest's write lives only in its page cache (one
# descriptor, held open, no fsync, periodic write-back off) when a local reader on the
# server opens the file; the reader must see it. Every close() of any descriptor of the
# file flushes (shared/reference/oplocks-leases-kernel.md section 6), so data.txt is fd 1
# of a subshell that then runs shell builtins only, whose redirections touch fds 0 and 2,
# never fd 1 (a builtin's `>&3` would dup and close a descriptor of the file, flushing
# it). Measured with this 6.1 client under an RWH lease (v2, granted RWH by the server),
# the write goes through at once anyway when it is the mount's first write-open, when
# the open is the first access to the name or comes right after a read of it, and when
# a file is then created in the same directory: so the guest writes a warm-up file
# elsewhere, stats data.txt and pauses, says "CACHED" (with /proc/meminfo's Dirty) on
# its serial port - the host acts on that line while the guest runs - and waits for the
# host's answer in another directory. The host checks on disk (stat, which breaks no
# lease) that the bytes really stayed in the guest.
_DIRTY_SCRIPT = r"""
set -e
M=/mnt/s
mkdir -p $M
mount -t cifs //{host}/share $M -o username={user},password={password},vers={vers},port={port}
echo "MOUNT OK"
echo 0 > /proc/sys/vm/dirty_writeback_centisecs
echo 360000 > /proc/sys/vm/dirty_expire_centisecs
mkfifo /tmp/tick
exec 4<>/tmp/tick          # read -t on it blocks for its timeout: a builtin sleep
printf warm > $M/ctl/warmup  # this client's first write-open of a mount writes through
echo "FIRST SIZE $(stat -c %s $M/co/data.txt)"
sleep 2
set +e                     # read -t fails on its timeout
(
    exec 1<>$M/co/data.txt
    printf '%s' '{payload}'
    : 2>/tmp/written
    i=0
    while [ ! -e $M/ctl/done ]; do
        i=$((i+1)); [ $i -le {wait_s} ] || exit 3
        read -t 1 x 0<&4 2>/dev/null
    done
    exit 0
) &
holder=$!
i=0
while [ ! -e /tmp/written ]; do
    i=$((i+1)); [ $i -le 30 ] || {{ echo "HOLDER NEVER WROTE"; exit 4; }}
    read -t 1 x 0<&4
done
echo "CACHED $(grep -E '^Dirty:' /proc/meminfo | tr -s ' ')"
wait $holder
echo "HOLDER rc=$?"
set -e
echo "AFTER $(cat $M/co/data.txt)"
umount $M
echo "UMOUNT OK"
"""
_DIRTY_PAYLOAD = "written-by-the-guest-and-kept-in-its-page-cache"


def _dirty_run(ns, image, share: Path, port: int, vers: str, server_log) -> None:
    import subprocess
    import threading

    co = share / "co"
    co.mkdir()
    ctl = share / "ctl"
    ctl.mkdir()
    data = co / "data.txt"
    old = b"version-1\n"
    data.write_bytes(old)
    cached = threading.Event()

    def on_line(line: str) -> None:
        if line.startswith("CACHED"):
            cached.set()
    script = _DIRTY_SCRIPT.format(host=ns.host_addr, user=USER, password=PASSWORD, vers=vers,
                                  port=port, payload=_DIRTY_PAYLOAD, wait_s=GUEST_TIMEOUT_S // 2)
    result: dict = {}

    def guest() -> None:
        try:
            result["r"] = cifs_vm.CifsVm(ns, image).run_in_guest(
                script, timeout_s=GUEST_TIMEOUT_S, on_line=on_line)
        except BaseException as e:  # reported by the main thread
            result["err"] = e

    t = threading.Thread(target=guest, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + GUEST_TIMEOUT_S
        while not cached.wait(0.2):
            assert t.is_alive() and time.monotonic() < deadline, \
                f"guest never said CACHED: {result}\n{server_log()}"
        ino = data.stat().st_ino
        leases = [ln for ln in Path("/proc/locks").read_text().splitlines()
                  if "LEASE" in ln and f":{ino} " in ln]
        # stat() breaks no lease: the disk still has the old bytes, so the write really
        # is only in the guest's page cache (the client was granted write caching).
        size_before = data.stat().st_size
        # The local reader, in its own process: its open breaks the server's kernel
        # lease; the server breaks the client, the client writes back and acks, and
        # only then does the open return.
        t0 = time.monotonic()
        reader = subprocess.run(
            [sys.executable, "-c",
             "import sys; sys.stdout.buffer.write(open(sys.argv[1], 'rb').read())", str(data)],
            capture_output=True, timeout=60)
        waited = time.monotonic() - t0
        (ctl / "done").write_bytes(b"")
        print(f"\n[cifs] vers={vers}: local reader waited {waited:.2f}s for the client's write-back")
        t.join(GUEST_TIMEOUT_S + 30)
        assert not t.is_alive(), "guest thread did not finish"
        if "err" in result:
            raise result["err"]
        r = result["r"]
        log = server_log()
        diag = (f"--- kernel leases on data.txt before the local read: {leases}\n"
                f"--- reader rc={reader.returncode} stderr={reader.stderr[-2000:]!r}\n"
                f"--- output ---\n{r.output}\n--- console ---\n{r.console[-3000:]}\n"
                f"--- server ---\n{log}")
        assert r.rc == 0 and "UMOUNT OK" in r.output and "HOLDER rc=0" in r.output, diag
        assert size_before == len(old), \
            f"the guest's write reached the disk before the local read ({size_before} bytes)\n" + diag
        assert reader.returncode == 0, diag
        assert reader.stdout == _DIRTY_PAYLOAD.encode(), \
            f"the local reader read {reader.stdout!r}, not the client's cached write\n" + diag
        assert leases, "the server held no kernel lease while the client cached a write\n" + diag
        assert "kernel lease break on" in log, diag
        assert f"AFTER {_DIRTY_PAYLOAD}" in r.output, diag
        assert waited < 20, f"local read waited {waited:.1f}s\n" + diag
    finally:
        t.join(30)


def test_kernel_cifs_cached_write_reaches_local_reader(ns, image, tmp_path):
    """Acceptance 7, first half: the kernel cifs client (vers=3.1.1, cache=strict) holds
    its lease and a write in its page cache; a local reader on the server must read it."""
    srv = _start_smbd_py(ns, tmp_path, 15401)
    try:
        _dirty_run(ns, image, srv.share, srv.port, "3.1.1", srv.log_tail)
        assert srv.proc.poll() is None, srv.log_tail()
        assert "internal error" not in srv.log_text(), srv.log_tail()
    finally:
        ns.stop(srv.proc)
