"""The Linux kernel cifs client as a test peer: a tiny qemu (TCG) guest in a netns.

This module owns three things:

* the *builder*: a cached kernel + initramfs (Debian's 6.1 kernel, busybox,
  mount.cifs, and exactly the modules cifs needs), built from Debian packages
  only, under ``${SMBD_PY_CACHE:-~/.cache/smbd_py}/cifs-vm/``;
* the *network namespace* a test creates for itself (``smbpy-cifs-<pid>-<n>``,
  a tap device ``tap0`` with 10.213.0.1/30; the guest takes 10.213.0.2), with a
  ``popen`` that starts the server under test inside it;
* the *guest runner*: boots the VM inside that netns with a test's shell script
  appended to the initramfs as a second cpio archive, and parses the script's
  output and exit code from a dedicated serial port (ttyS1; the kernel's own
  console is ttyS0, so kernel messages never interleave with test output);
  ``run_in_guest(..., on_line=cb)`` also hands each line to ``cb`` while the guest
  runs, so a test can act on the host at a marker the script prints.

It also carries a minimal Samba smbd launcher (``start_samba``) used by the
self-test; it deliberately does not depend on tests/peers/samba.py.

Only the standard library is used, so ``python tests/peers/cifs_vm.py build``
works outside the venv (scripts/build-cifs-vm.sh does that).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

# Debian packages the builder and runner need on the host (iproute2 for `ip`).
HOST_APT_PACKAGES = ("qemu-system-x86", "busybox-static", "cifs-utils", "cpio", "kmod", "iproute2")

# Modules loaded in the guest, in this order; each is expanded with
# `modprobe --show-depends` so dependencies come first.
GUEST_MODULES = (
    "virtio_pci", "virtio_net", "gcm", "ccm", "sha512", "sha256", "cmac", "aes",
    "nls_utf8", "ecb", "ctr", "ghash_generic", "gf128mul", "cifs",
)
# Nice to have (NTLM and friends); silently skipped when builtin / absent.
GUEST_OPTIONAL_MODULES = ("md4", "des", "arc4", "hmac", "md5", "crc32c_generic")

HOST_ADDR = "10.213.0.1"
GUEST_ADDR = "10.213.0.2"
PREFIX_LEN = 30
TAP_NAME = "tap0"

# Bump when the image recipe changes in a way the hash below cannot see.
_BUILDER_VERSION = "1"

_INIT_SCRIPT = r"""#!/bin/busybox sh
# /init of the smbd_py cifs test VM. Owns: modules, network, running /test.sh.
/bin/busybox mkdir -p /proc /sys /dev /tmp /mnt /run /bin /sbin /usr/bin /usr/sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t tmpfs tmpfs /tmp
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root
while read -r m; do
    insmod "/lib/modules/$m" 2>/dev/null || echo "smbpy-init: insmod $m failed (ok for cpu-specific ones)"
done < /etc/modules.order
. /guest.env
ip link set lo up
ip addr add "$GUEST_ADDR/$PREFIX_LEN" dev eth0
ip link set eth0 up
# Results go to ttyS1 only; raw so that bytes arrive unchanged.
OUT=/dev/ttyS1
stty -F "$OUT" raw -echo 2>/dev/null
echo "$MARK BEGIN" > "$OUT"
cd /
sh /test.sh < /dev/null > "$OUT" 2>&1
rc=$?
echo "" > "$OUT"
echo "$MARK END rc=$rc" > "$OUT"
sync
poweroff -f
"""

_KERNEL_CMDLINE = "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init mitigations=off random.trust_cpu=on"


class CifsVmError(RuntimeError):
    """The VM could not be built or run (not a test assertion)."""


class GuestTimeout(CifsVmError):
    """The guest did not finish in time; qemu was killed."""

    def __init__(self, msg: str, output: str, console: str):
        super().__init__(msg)
        self.output = output
        self.console = console


# ---------------------------------------------------------------------------
# cpio newc writer (the kernel's initramfs format)
# ---------------------------------------------------------------------------


class CpioNewc:
    """Builds a cpio "newc" archive in memory; parent directories are implied."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._ino = itertools.count(1000)
        self._dirs: set[str] = {""}

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1, rdev: tuple[int, int] = (0, 0)) -> None:
        name_b = name.encode() + b"\0"
        fields = (next(self._ino), mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0)
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._chunks.append(hdr + name_b + b"\0" * (-(len(hdr) + len(name_b)) % 4))
        if data:
            self._chunks.append(data + b"\0" * (-len(data) % 4))

    def mkdir(self, path: str) -> None:
        path = path.strip("/")
        if path in self._dirs:
            return
        self.mkdir(os.path.dirname(path))
        self._dirs.add(path)
        self._entry(path, stat.S_IFDIR | 0o755, nlink=2)

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        path = path.strip("/")
        self.mkdir(os.path.dirname(path))
        self._entry(path, stat.S_IFREG | mode, data)

    def add_symlink(self, path: str, target: str) -> None:
        path = path.strip("/")
        self.mkdir(os.path.dirname(path))
        self._entry(path, stat.S_IFLNK | 0o777, target.encode())

    def add_chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        path = path.strip("/")
        self.mkdir(os.path.dirname(path))
        self._entry(path, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        out = b"".join(self._chunks)
        return out + b"\0" * (-len(out) % 512)


# ---------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VmImage:
    kernel: Path
    initrd: Path
    kernel_version: str


def cache_root() -> Path:
    base = os.environ.get("SMBD_PY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "smbd_py")
    return Path(base) / "cifs-vm"


def _recipe_hash() -> str:
    h = hashlib.sha256()
    for part in (_BUILDER_VERSION, _INIT_SCRIPT, *GUEST_MODULES, "|", *GUEST_OPTIONAL_MODULES):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def _run(argv: Sequence[str], *, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, check=True, timeout=timeout, capture_output=True, text=True, **kw)
    except subprocess.CalledProcessError as e:
        raise CifsVmError(f"{' '.join(argv)} failed rc={e.returncode}: {e.stderr.strip()[-2000:]}") from None


def _apt_install(packages: Sequence[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=900", *packages]
    try:
        _run(cmd, timeout=1800, env=env)
    except CifsVmError:
        _run(["apt-get", "update", "-o", "DPkg::Lock::Timeout=900"], timeout=900, env=env)
        _run(cmd, timeout=1800, env=env)


def ensure_host_packages(extra: Sequence[str] = ()) -> None:
    """apt-get installs whatever of HOST_APT_PACKAGES (+extra) is not installed.

    Checked by package (dpkg-query), not by binary: Debian's dynamic `busybox`
    package also provides /bin/busybox, but only busybox-static runs in the guest.
    """
    wanted = [*HOST_APT_PACKAGES, *extra]
    r = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Status}\n", *wanted],
                       capture_output=True, text=True, timeout=60)
    ok = {line.split()[0] for line in r.stdout.splitlines() if line.endswith("install ok installed")}
    missing = [p for p in wanted if p not in ok]
    if missing:
        _apt_install(missing)


def _which(name: str) -> str:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    found = shutil.which(name, path=path)
    if not found:
        raise CifsVmError(f"{name} not found on the host")
    return found


def _kernel_package() -> str:
    """The linux-image-6.1.0-N-amd64 package apt would install today."""
    forced = os.environ.get("SMBD_PY_CIFS_KERNEL_PKG")
    if forced:
        return forced

    def query() -> str | None:
        r = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True)
        m = re.search(r"Depends:\s*(linux-image-6\.1\.0-\d+-amd64)\b", r.stdout)
        if m:
            return m.group(1)
        r = subprocess.run(["apt-cache", "search", r"^linux-image-6\.1\.0-[0-9]+-amd64$"], capture_output=True, text=True)
        names = re.findall(r"^(linux-image-6\.1\.0-(\d+)-amd64)\s", r.stdout, re.M)
        return max(names, key=lambda t: int(t[1]))[0] if names else None

    pkg = query()
    if pkg is None:
        _run(["apt-get", "update", "-o", "DPkg::Lock::Timeout=900"], timeout=900,
             env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        pkg = query()
    if pkg is None:
        raise CifsVmError("apt offers no linux-image-6.1.0-*-amd64 package")
    return pkg


def _module_order(root: Path, kver: str) -> list[str]:
    """Module paths (relative to lib/modules/KVER) in load order, deps first."""
    modprobe = _which("modprobe")
    order: list[str] = []
    prefix = str(root / "lib" / "modules" / kver) + "/"
    for name in (*GUEST_MODULES, *GUEST_OPTIONAL_MODULES):
        r = subprocess.run([modprobe, "-d", str(root), "-S", kver, "--show-depends", name],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            if name in GUEST_MODULES:
                raise CifsVmError(f"modprobe --show-depends {name}: {r.stderr.strip()}")
            continue
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "insmod":
                rel = parts[1].removeprefix(prefix)
                if rel not in order:
                    order.append(rel)
    return order


def _shared_libs(binary: str) -> list[str]:
    r = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if r.returncode != 0:
        return []  # static
    libs = []
    for line in r.stdout.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


def _build(dest: Path, kernel_pkg: str) -> VmImage:
    """Builds kernel + initramfs into dest (a fresh directory)."""
    work = dest / "work"
    work.mkdir()
    _run(["apt-get", "download", kernel_pkg], cwd=work, timeout=1800)
    debs = list(work.glob("*.deb"))
    if len(debs) != 1:
        raise CifsVmError(f"apt-get download {kernel_pkg} gave {debs}")
    root = work / "root"
    _run(["dpkg-deb", "-x", str(debs[0]), str(root)], timeout=600)
    kvers = os.listdir(root / "lib" / "modules")
    if len(kvers) != 1:
        raise CifsVmError(f"unexpected modules dirs {kvers}")
    kver = kvers[0]
    _run([_which("depmod"), "-b", str(root), kver], timeout=600)
    modules = _module_order(root, kver)

    cpio = CpioNewc()
    for d in ("proc", "sys", "dev", "tmp", "mnt", "run", "root", "etc", "bin", "sbin", "usr/bin", "usr/sbin"):
        cpio.mkdir(d)
    cpio.add_chardev("dev/console", 5, 1)
    cpio.add_chardev("dev/null", 1, 3, 0o666)
    busybox_path = _which("busybox")
    if _shared_libs(busybox_path):
        raise CifsVmError(f"{busybox_path} is dynamically linked: install busybox-static")
    busybox = Path(busybox_path).read_bytes()
    cpio.add_file("bin/busybox", busybox, 0o755)
    cpio.add_symlink("bin/sh", "busybox")
    # mount.cifs (plus its shared libraries) for options busybox mount lacks.
    mount_cifs = _which("mount.cifs")
    cpio.add_file("sbin/mount.cifs", Path(mount_cifs).read_bytes(), 0o755)
    for lib in _shared_libs(mount_cifs):
        real = os.path.realpath(lib)
        cpio.add_file(lib, Path(real).read_bytes(), 0o755)
    for rel in modules:
        cpio.add_file(f"lib/modules/{rel}", (root / "lib" / "modules" / kver / rel).read_bytes())
    cpio.add_file("etc/modules.order", ("\n".join(modules) + "\n").encode())
    cpio.add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    cpio.add_file("etc/group", b"root:x:0:\n")
    cpio.add_file("init", _INIT_SCRIPT.encode(), 0o755)

    initrd = dest / "initrd.gz"
    initrd.write_bytes(gzip.compress(cpio.finish(), compresslevel=6, mtime=0))
    kernel = dest / "vmlinuz"
    shutil.copyfile(root / "boot" / f"vmlinuz-{kver}", kernel)
    (dest / "modules.order").write_text("\n".join(modules) + "\n")
    shutil.rmtree(work)
    return VmImage(kernel=kernel, initrd=initrd, kernel_version=kver)


def build_vm_image(*, force: bool = False, install_packages: bool = True) -> VmImage:
    """Returns the cached image, building it first if needed (idempotent, locked).

    A cache hit reads one small JSON stamp and stats two files: no apt, no subprocess.
    """
    root = cache_root()
    stamp = root / "stamp.json"
    recipe = _recipe_hash()

    def cached() -> VmImage | None:
        try:
            meta = json.loads(stamp.read_text())
        except (OSError, ValueError):
            return None
        img = VmImage(Path(meta["kernel"]), Path(meta["initrd"]), meta["kernel_version"])
        if meta.get("recipe") == recipe and img.kernel.is_file() and img.initrd.is_file():
            return img
        return None

    if not force and (img := cached()) is not None:
        return img
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building
        if not force and (img := cached()) is not None:
            return img
        if install_packages:
            ensure_host_packages()
        pkg = _kernel_package()
        final = root / f"{pkg}-{recipe}"
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        try:
            img = _build(tmp, pkg)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        img = VmImage(final / "vmlinuz", final / "initrd.gz", img.kernel_version)
        meta = {"recipe": recipe, "kernel_package": pkg, "kernel_version": img.kernel_version,
                "kernel": str(img.kernel), "initrd": str(img.initrd), "built_at": time.time()}
        tmp_stamp = stamp.with_suffix(".tmp")
        tmp_stamp.write_text(json.dumps(meta, indent=1))
        tmp_stamp.replace(stamp)
        return img


# ---------------------------------------------------------------------------
# Network namespace
# ---------------------------------------------------------------------------

_netns_counter = itertools.count()


def _kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM then SIGKILL the process group led by proc (started with start_new_session)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class NetNs:
    """A network namespace with tap0 = HOST_ADDR/30, created by netns()."""

    def __init__(self, name: str):
        self.name = name
        self.host_addr = HOST_ADDR
        self.guest_addr = GUEST_ADDR
        self.prefix_len = PREFIX_LEN
        self.tap = TAP_NAME
        self._procs: list[subprocess.Popen] = []

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], **kw) -> subprocess.Popen:
        """Starts argv inside the namespace in its own process group; killed on exit."""
        kw.setdefault("start_new_session", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.exec_argv(argv), **kw)  # `ip netns exec` execs: same pid
        self._procs.append(proc)
        return proc

    def run(self, argv: Sequence[str], *, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.exec_argv(argv), timeout=timeout, capture_output=True, text=True, **kw)

    def stop(self, proc: subprocess.Popen, grace_s: float = 5.0) -> None:
        _kill_group(proc, grace_s)

    def stop_all(self) -> None:
        for proc in reversed(self._procs):
            _kill_group(proc)

    def wait_listening(self, proc: subprocess.Popen, port: int, timeout_s: float = 20.0) -> None:
        """Waits until proc's netns has a TCP listener on port (reads /proc/PID/net/tcp*,
        so the host never sends a packet)."""
        deadline = time.monotonic() + timeout_s
        want = f":{port:04X} "
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise CifsVmError(f"server exited rc={proc.returncode} before listening on {port}")
            for fname in ("tcp", "tcp6"):
                with contextlib.suppress(OSError):
                    for line in Path(f"/proc/{proc.pid}/net/{fname}").read_text().splitlines()[1:]:
                        cols = line.split()
                        if len(cols) > 3 and (cols[1] + " ").endswith(want) and cols[3] == "0A":
                            return
            time.sleep(0.1)
        raise CifsVmError(f"nothing listening on port {port} in {self.name} after {timeout_s}s")


@contextlib.contextmanager
def netns() -> Iterator[NetNs]:
    """Creates smbpy-cifs-<pid>-<n> with tap0 (HOST_ADDR/30) and lo up; deletes it on exit."""
    if os.geteuid() != 0:
        raise CifsVmError("creating a network namespace needs root")
    ns = NetNs(f"smbpy-cifs-{os.getpid()}-{next(_netns_counter)}")
    _run(["ip", "netns", "add", ns.name], timeout=30)
    try:
        for argv in (["ip", "link", "set", "lo", "up"],
                     ["ip", "tuntap", "add", "dev", TAP_NAME, "mode", "tap"],
                     ["ip", "addr", "add", f"{HOST_ADDR}/{PREFIX_LEN}", "dev", TAP_NAME],
                     ["ip", "link", "set", TAP_NAME, "up"]):
            _run(ns.exec_argv(argv), timeout=30)
        yield ns
    finally:
        ns.stop_all()
        subprocess.run(["ip", "netns", "delete", ns.name], capture_output=True, timeout=30)


# ---------------------------------------------------------------------------
# Guest runner
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class GuestResult:
    rc: int
    output: str  # what /test.sh printed (stdout+stderr), between the markers
    console: str  # the kernel console (ttyS0): boot messages, kernel errors
    elapsed_s: float = 0.0


def parse_guest_output(raw: str, mark: str) -> tuple[int | None, str]:
    """Extracts (rc, output) from the ttyS1 log; rc is None if the end marker is missing."""
    raw = raw.replace("\r\n", "\n")
    begin = raw.find(f"{mark} BEGIN\n")
    if begin < 0:
        return None, ""
    body = raw[begin + len(mark) + 7:]
    m = re.search(re.escape(mark) + r" END rc=(\d+)\n", body)
    if not m:
        return None, body
    out = body[: m.start()]
    out = out[:-1] if out.endswith("\n") else out  # the newline /init adds before END
    return int(m.group(1)), out


class CifsVm:
    """Runs shell scripts in a fresh guest booted inside ns (one boot per script)."""

    def __init__(self, ns: NetNs, image: VmImage | None = None, *, memory_mb: int = 512, work_dir: str | os.PathLike | None = None):
        self.ns = ns
        self.image = image or build_vm_image()
        self.memory_mb = memory_mb
        self.work_dir = Path(work_dir) if work_dir else None

    def _initrd_with_script(self, path: Path, script: str, mark: str) -> None:
        extra = CpioNewc()
        extra.add_file("test.sh", script.encode(), 0o755)
        env = (f"GUEST_ADDR={self.ns.guest_addr}\nPREFIX_LEN={self.ns.prefix_len}\n"
               f"HOST_ADDR={self.ns.host_addr}\nMARK='{mark}'\n")
        extra.add_file("guest.env", env.encode())
        base = self.image.initrd.read_bytes()
        # The kernel unpacks concatenated archives; later files win.
        path.write_bytes(base + b"\0" * (-len(base) % 4) + gzip.compress(extra.finish(), mtime=0))

    def qemu_argv(self, initrd: Path, console_log: Path, output_log: Path) -> list[str]:
        return [
            "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", str(self.memory_mb), "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-monitor", "none",
            "-kernel", str(self.image.kernel), "-initrd", str(initrd), "-append", _KERNEL_CMDLINE,
            "-serial", f"file:{console_log}", "-serial", f"file:{output_log}",
            "-netdev", f"tap,id=n0,ifname={self.ns.tap},script=no,downscript=no",
            "-device", "virtio-net-pci,netdev=n0,romfile=",
        ]

    def run_in_guest(self, script: str, *, timeout_s: float = 120,
                     on_line: Callable[[str], None] | None = None) -> GuestResult:
        """Boots, runs script with /bin/sh (busybox), powers off. Raises GuestTimeout
        (qemu killed) if it does not finish in timeout_s, CifsVmError if the guest died
        without reporting an exit code.

        on_line, when given, is called (in this thread) with every complete line the
        script prints, while the guest still runs: a test can wait for a marker and act
        on the host at that moment (polled every 50 ms)."""
        mark = f"@@SMBPY-CIFS-{secrets.token_hex(6)}@@"
        with tempfile.TemporaryDirectory(prefix="smbpy-cifs-vm-", dir=self.work_dir) as td:
            tdp = Path(td)
            initrd, console_log, output_log = tdp / "initrd.gz", tdp / "console.log", tdp / "output.log"
            self._initrd_with_script(initrd, script, mark)
            t0 = time.monotonic()
            if on_line is None:
                proc = self.ns.popen(self.qemu_argv(initrd, console_log, output_log),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                try:
                    qemu_out, _ = proc.communicate(timeout=timeout_s)
                    timed_out = False
                except subprocess.TimeoutExpired:
                    _kill_group(proc, grace_s=2)
                    qemu_out, _ = proc.communicate(timeout=10)
                    timed_out = True
            else:
                qemu_out, timed_out, proc = self._run_streaming(
                    tdp, initrd, console_log, output_log, mark, timeout_s, on_line)
            elapsed = time.monotonic() - t0
            console = _read_text(console_log)
            raw = _read_text(output_log)
        rc, output = parse_guest_output(raw, mark)
        if timed_out:
            raise GuestTimeout(f"guest did not finish within {timeout_s}s; qemu killed", output, console)
        if rc is None:
            raise CifsVmError(
                f"guest gave no exit code (qemu rc={proc.returncode}): "
                f"qemu said {(qemu_out or b'').decode(errors='replace')[-2000:]!r}\n"
                f"--- output ---\n{output[-4000:]}\n--- console ---\n{console[-4000:]}")
        return GuestResult(rc=rc, output=output, console=console, elapsed_s=elapsed)

    def _run_streaming(self, tdp: Path, initrd: Path, console_log: Path, output_log: Path,
                       mark: str, timeout_s: float, on_line: Callable[[str], None]):
        """run_in_guest's qemu run with on_line: qemu's own output goes to a file (no pipe
        to drain), the serial log is tailed until qemu exits or timeout_s passes."""
        qemu_log = tdp / "qemu.log"
        with open(qemu_log, "wb") as qlog:
            proc = self.ns.popen(self.qemu_argv(initrd, console_log, output_log),
                                 stdout=qlog, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        seen = 0            # bytes of the serial log already split into lines
        begun = False       # the script's output starts after "<mark> BEGIN"
        pending = b""
        timed_out = False
        try:
            while True:
                done = proc.poll() is not None
                try:
                    with open(output_log, "rb") as f:
                        f.seek(seen)
                        chunk = f.read()
                except OSError:
                    chunk = b""
                seen += len(chunk)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", errors="replace").rstrip("\r")
                    if not begun:
                        begun = line == f"{mark} BEGIN"
                    elif not line.startswith(f"{mark} END"):
                        on_line(line)
                if done:
                    break
                if time.monotonic() > deadline:
                    _kill_group(proc, grace_s=2)
                    timed_out = True
                    break
                time.sleep(0.05)
        except BaseException:
            _kill_group(proc, grace_s=2)
            raise
        proc.wait(timeout=10)
        return qemu_log.read_bytes(), timed_out, proc


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return ""


def start_server(ns: NetNs, argv: Sequence[str], port: int, *, log_path: str | os.PathLike | None = None,
                 timeout_s: float = 20.0, **popen_kw) -> subprocess.Popen:
    """Starts any server under test inside ns (e.g. [sys.executable, "-m", "smbd_py",
    "serve", "--listen", f"{ns.host_addr}:{port}", ...]) and waits until it listens on
    port. Output goes to log_path (or is discarded). Stopped by ns.stop(proc) or when
    the netns() context exits."""
    if log_path is not None:
        log = open(log_path, "ab")
        popen_kw.setdefault("stdout", log)
        popen_kw.setdefault("stderr", subprocess.STDOUT)
    else:
        popen_kw.setdefault("stdout", subprocess.DEVNULL)
        popen_kw.setdefault("stderr", subprocess.DEVNULL)
    proc = ns.popen(argv, **popen_kw)
    if log_path is not None:
        log.close()  # the child holds its own copy
    try:
        ns.wait_listening(proc, port, timeout_s)
    except BaseException:
        ns.stop(proc)
        raise
    return proc


# ---------------------------------------------------------------------------
# Minimal Samba smbd launcher (reference server for the self-test)
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class SambaServer:
    proc: subprocess.Popen
    conf: Path
    share_dir: Path
    share_name: str
    port: int
    user: str
    password: str
    log_dir: Path

    def log_tail(self, n: int = 4000) -> str:
        out = []
        for f in sorted(self.log_dir.glob("log.*")):
            out.append(f"--- {f.name}\n" + _read_text(f)[-n:])
        return "\n".join(out)


def start_samba(ns: NetNs, base_dir: Path, *, port: int = 14745, share_name: str = "share",
                user: str = "root", password: str = "smbpy-Pass1", extra_global: str = "",
                timeout_s: float = 30) -> SambaServer:
    """Starts Samba's smbd inside ns, listening on ns.host_addr:port, with every Samba
    directory under base_dir and a tdbsam account (user must be a Unix user: root)."""
    smbd, smbpasswd = _which("smbd"), _which("smbpasswd")
    base_dir = Path(base_dir)
    dirs = {k: base_dir / k for k in ("private", "lock", "state", "cache", "pid", "ncalrpc", "binddns", "usershares", "log")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    share = base_dir / "share"
    share.mkdir(exist_ok=True)
    conf = base_dir / "smb.conf"
    conf.write_text(f"""[global]
    server role = standalone server
    workgroup = SMBPYTEST
    netbios name = SMBPYCIFS
    interfaces = {ns.host_addr}/{ns.prefix_len}
    bind interfaces only = yes
    smb ports = {port}
    disable netbios = yes
    private dir = {dirs['private']}
    lock directory = {dirs['lock']}
    state directory = {dirs['state']}
    cache directory = {dirs['cache']}
    pid directory = {dirs['pid']}
    ncalrpc dir = {dirs['ncalrpc']}
    binddns dir = {dirs['binddns']}
    usershare path = {dirs['usershares']}
    log file = {dirs['log']}/log.%m
    log level = 1
    passdb backend = tdbsam:{dirs['private']}/passdb.tdb
    load printers = no
    printing = bsd
    printcap name = /dev/null
    disable spoolss = yes
    map to guest = never
    server min protocol = SMB2_02
{extra_global}
[{share_name}]
    path = {share}
    read only = no
    guest ok = no
""")
    subprocess.run([smbpasswd, "-c", str(conf), "-a", "-s", user], input=f"{password}\n{password}\n",
                   capture_output=True, text=True, check=True, timeout=30)
    with open(dirs["log"] / "log.stdout", "wb") as log:  # the child keeps its own fd
        proc = ns.popen([smbd, "--foreground", "--no-process-group", "--debug-stdout", "-s", str(conf)],
                        stdout=log, stderr=subprocess.STDOUT)
    srv = SambaServer(proc, conf, share, share_name, port, user, password, dirs["log"])
    try:
        ns.wait_listening(proc, port, timeout_s)
    except BaseException:
        ns.stop(proc)
        raise CifsVmError(f"smbd did not start:\n{srv.log_tail()}") from None
    return srv


# ---------------------------------------------------------------------------
# CLI: `python tests/peers/cifs_vm.py build [--force]`
# ---------------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in ("build", "path"):
        print("usage: cifs_vm.py build [--force] | path", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    img = build_vm_image(force="--force" in argv, install_packages=argv[0] == "build")
    print(json.dumps({"kernel": str(img.kernel), "initrd": str(img.initrd),
                      "kernel_version": img.kernel_version, "seconds": round(time.monotonic() - t0, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
