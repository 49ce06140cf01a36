#!/bin/sh
# Builds (or reuses) the cached kernel + initramfs for the kernel cifs client test VM.
# Cache: ${SMBD_PY_CACHE:-$HOME/.cache/smbd_py}/cifs-vm/ ; pass --force to rebuild.
# Needs root (apt-get install of qemu-system-x86 busybox-static cifs-utils cpio kmod iproute2).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
py=python3
[ -x "$here/.venv/bin/python" ] && py="$here/.venv/bin/python"
exec "$py" "$here/tests/peers/cifs_vm.py" build "$@"
