#!/usr/bin/env bash
# Build a Debian base image's root file system with Python, for machines where no image
# registry is reachable (so `FROM python:3.12-slim` cannot be pulled):
#   scripts/docker-base.sh OUT.tar [SUITE]        (SUITE defaults to bookworm)
#   docker import OUT.tar smbd-py-base:bookworm
#   scripts/docker-wheels.sh 3.11 && SMBD_BASE=smbd-py-base:bookworm docker-compose up -d --build
# debootstrap --variant=minbase with python3 and python3-venv (the Dockerfile makes a
# venv: Debian's python3 refuses system-wide pip installs). The mirror is the machine's
# own Debian mirror from /etc/apt/sources.list(.d) unless MIRROR is set. Needs root.
set -euo pipefail
OUT="${1:?usage: docker-base.sh OUT.tar [SUITE]}"
SUITE="${2:-bookworm}"
mirror_from_apt() {
    # First Debian archive (not the security archive) in deb822 .sources or one-line .list files.
    {
        cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}'
        cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i !~ /^\[/) {print $i; break}}'
    } | grep -v -- '-security' | grep -m1 . || true
}
MIRROR="${MIRROR:-$(mirror_from_apt)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/docker-base.XXXXXX")"
ROOTFS="$WORK/rootfs"
cleanup() {
    # debootstrap mounts proc/sys inside the target; an interrupted run may leave them.
    local m
    for m in dev/pts proc sys; do
        mountpoint -q "$ROOTFS/$m" 2>/dev/null && umount -l "$ROOTFS/$m" || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
echo "debootstrap $SUITE from $MIRROR" >&2
debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$ROOTFS" "$MIRROR" \
    >"$WORK/debootstrap.log" 2>&1 || { tail -30 "$WORK/debootstrap.log" >&2; exit 1; }
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
mkdir -p "$(dirname "$OUT")"
tar --numeric-owner -C "$ROOTFS" -cf "$OUT.tmp" .
mv "$OUT.tmp" "$OUT"
echo "$OUT: $(du -h "$OUT" | cut -f1)" >&2
