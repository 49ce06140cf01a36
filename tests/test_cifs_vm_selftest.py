"""Self-test of the kernel-cifs-under-qemu peer (tests/peers/cifs_vm.py).

Against Samba's smbd (the reference server) started inside the test's own network
namespace: the guest mounts with the real Linux cifs client, writes, reads back,
lists, renames, reports the negotiated dialect and unmounts; the host then checks
the bytes and the rename on the server's disk. Also checks the harness itself:
build cache, exit-code/output plumbing, timeout kill, netns cleanup, cpio writer.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.peers import cifs_vm

SAMBA_PORT = 14745  # this helper's range is 14700-14799


@pytest.fixture(scope="module")
def image() -> cifs_vm.VmImage:
    t0 = time.monotonic()
    img = cifs_vm.build_vm_image()
    print(f"\n[cifs_vm] build_vm_image: {time.monotonic() - t0:.2f}s ({img.kernel_version})")
    return img


@pytest.fixture(scope="module")
def ns():
    with cifs_vm.netns() as n:
        yield n


@pytest.fixture(scope="module")
def samba(ns, tmp_path_factory):
    # smbd comes from Debian's samba package; install it if this machine lacks it.
    cifs_vm.ensure_host_packages(extra=("samba",))
    srv = cifs_vm.start_samba(ns, tmp_path_factory.mktemp("samba"), port=SAMBA_PORT)
    yield srv
    ns.stop(srv.proc)
    assert srv.proc.poll() is not None


# --- harness pieces that need no VM -------------------------------------------


def test_cpio_newc_is_readable_by_cpio(tmp_path):
    cifs_vm.ensure_host_packages()
    a = cifs_vm.CpioNewc()
    a.add_file("a/b/c.txt", b"xyz\n", 0o640)
    a.add_symlink("a/link", "b/c.txt")
    a.add_file("odd", b"12345")
    data = a.finish()
    assert len(data) % 512 == 0
    out = subprocess.run(["cpio", "-itv"], input=data, capture_output=True, check=True).stdout.decode()
    names = [line.split()[-1] if "->" not in line else line.split()[-3] for line in out.splitlines()]
    assert names == ["a", "a/b", "a/b/c.txt", "a/link", "odd"]
    subprocess.run(["cpio", "-idm", "--quiet"], input=data, cwd=tmp_path, check=True)
    assert (tmp_path / "a/b/c.txt").read_bytes() == b"xyz\n"
    assert (tmp_path / "odd").read_bytes() == b"12345"
    assert os.readlink(tmp_path / "a/link") == "b/c.txt"


def test_parse_guest_output():
    m = "@@M@@"
    raw = f"junk\r\n{m} BEGIN\r\nline1\r\nline2\r\n\r\n{m} END rc=3\r\n"
    assert cifs_vm.parse_guest_output(raw, m) == (3, "line1\nline2\n")
    assert cifs_vm.parse_guest_output(f"{m} BEGIN\nhalf", m) == (None, "half")
    assert cifs_vm.parse_guest_output("nothing", m) == (None, "")


def test_build_is_cached(image):
    t0 = time.monotonic()
    again = cifs_vm.build_vm_image()
    dt = time.monotonic() - t0
    assert again == image
    assert dt < 1.0, f"cached build took {dt:.2f}s"
    assert image.kernel.stat().st_size > 1_000_000
    assert image.initrd.stat().st_size > 1_000_000


def test_netns_cleanup_kills_and_deletes():
    with cifs_vm.netns() as n:
        name = n.name
        assert re.fullmatch(rf"smbpy-cifs-{os.getpid()}-\d+", name)
        r = n.run(["ip", "-o", "-4", "addr", "show", "dev", "tap0"])
        assert "10.213.0.1/30" in r.stdout
        p = n.popen(["sleep", "300"])
    assert p.poll() is not None
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_start_server_generic_argv(tmp_path):
    """The launch path smbd_py will use: any argv, inside the netns, readiness by port."""
    code = ("import socket,time; s=socket.socket(); s.bind(('10.213.0.1', 14790)); s.listen();"
            "print('listening', flush=True); time.sleep(300)")
    with cifs_vm.netns() as n:
        log = tmp_path / "server.log"
        proc = cifs_vm.start_server(n, [sys.executable, "-c", code], 14790, log_path=log)
        assert proc.poll() is None
        n.stop(proc)
        assert proc.poll() is not None
        assert "listening" in log.read_text()
        with pytest.raises(cifs_vm.CifsVmError):
            cifs_vm.start_server(n, [sys.executable, "-c", "raise SystemExit(3)"], 14791, timeout_s=5)


# --- the VM itself ------------------------------------------------------------


def test_guest_exit_code_and_output(ns, image):
    vm = cifs_vm.CifsVm(ns, image)
    r = vm.run_in_guest("echo hello-from-guest; uname -r; ip -o -4 addr show dev eth0; echo oops >&2; exit 7",
                        timeout_s=90)
    print(f"\n[cifs_vm] trivial guest run: {r.elapsed_s:.2f}s")
    assert r.rc == 7
    assert r.output.startswith("hello-from-guest\n")
    assert image.kernel_version in r.output
    assert "10.213.0.2/30" in r.output
    assert "oops" in r.output
    assert "Power down" in r.console or "reboot" in r.console


def test_guest_timeout_kills_qemu(ns, image):
    vm = cifs_vm.CifsVm(ns, image)
    t0 = time.monotonic()
    with pytest.raises(cifs_vm.GuestTimeout) as ei:
        vm.run_in_guest("echo started; sleep 600", timeout_s=10)
    assert time.monotonic() - t0 < 40
    assert "started" in ei.value.output
    # no qemu left running in our namespace
    pids = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True).stdout.split()
    comms = [Path(f"/proc/{p}/comm").read_text().strip() for p in pids if Path(f"/proc/{p}/comm").exists()]
    assert not any(c.startswith("qemu") for c in comms), comms


_GUEST_SCRIPT = r"""
set -e
TAG={tag}
mkdir -p /mnt/s
{mount} //{host}/{share} /mnt/s -o username={user},password={password},vers={vers},port={port}
echo "MOUNT OK"
printf 'hello from the kernel cifs client, vers={vers}\n' > /mnt/s/hello-$TAG.txt
head -c 1048576 /dev/urandom > /tmp/blob
cp /tmp/blob /mnt/s/blob-$TAG.bin
sync
echo 3 > /proc/sys/vm/drop_caches
cmp /tmp/blob /mnt/s/blob-$TAG.bin
echo "READBACK OK"
cat /mnt/s/hello-$TAG.txt
echo "BLOB SHA256 $(sha256sum /tmp/blob | cut -d' ' -f1)"
ls -l /mnt/s
mv /mnt/s/blob-$TAG.bin /mnt/s/renamed-$TAG.bin
test -f /mnt/s/renamed-$TAG.bin
test ! -e /mnt/s/blob-$TAG.bin
echo "RENAME OK"
echo "DIALECT $(grep -o 'Dialect 0x[0-9a-f]*' /proc/fs/cifs/DebugData | head -n 1)"
umount /mnt/s
echo "UMOUNT OK"
"""


@pytest.mark.parametrize(
    "vers,mount,dialect",
    [("3.1.1", "mount -t cifs", "0x311"), ("2.1", "mount.cifs", "0x210")],
    ids=["smb3.1.1-busybox-mount", "smb2.1-mount.cifs"],
)
def test_cifs_mount_against_samba(ns, image, samba, vers, mount, dialect):
    tag = vers.replace(".", "")
    script = _GUEST_SCRIPT.format(tag=tag, mount=mount, host=ns.host_addr, share=samba.share_name,
                                  user=samba.user, password=samba.password, vers=vers, port=samba.port)
    vm = cifs_vm.CifsVm(ns, image)
    r = vm.run_in_guest(script, timeout_s=120)
    print(f"\n[cifs_vm] vers={vers} whole guest run (boot+mount+io+poweroff): {r.elapsed_s:.2f}s")
    diag = f"--- output ---\n{r.output}\n--- console ---\n{r.console[-3000:]}\n--- samba ---\n{samba.log_tail()}"
    assert r.rc == 0, diag
    for word in ("MOUNT OK", "READBACK OK", "RENAME OK", "UMOUNT OK"):
        assert word in r.output, diag
    assert f"DIALECT Dialect {dialect}" in r.output, diag

    # Server side: the bytes and the rename really happened on Samba's disk.
    share = samba.share_dir
    hello = (share / f"hello-{tag}.txt").read_bytes()
    assert hello == f"hello from the kernel cifs client, vers={vers}\n".encode()
    assert not (share / f"blob-{tag}.bin").exists()
    blob = (share / f"renamed-{tag}.bin").read_bytes()
    assert len(blob) == 1048576
    m = re.search(r"BLOB SHA256 ([0-9a-f]{64})", r.output)
    assert m, diag
    assert hashlib.sha256(blob).hexdigest() == m.group(1)
