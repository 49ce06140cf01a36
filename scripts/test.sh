#!/usr/bin/env bash
# Install the test peers (Debian's smbclient, smbtorture, samba, qemu and friends; docker.io,
# docker-compose and debootstrap for tests/test_compose.py), the virtual environment, and
# run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
EXTRAS="[test]"
source "$(dirname "$0")/_venv.sh"
apt_install smbclient samba-testsuite samba qemu-system-x86 busybox-static cifs-utils cpio kmod \
    iproute2 attr winbind docker.io docker-compose debootstrap
cd "$ROOT"
# The cifs client's VM image (kernel + initramfs) is built once and cached.
"$VENV/bin/python" tests/peers/cifs_vm.py build >/dev/null
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider --durations=15 "$@"
