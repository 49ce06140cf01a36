#!/usr/bin/env bash
# Build the wheels the Docker image installs from (pip install --no-index --find-links):
# smbd_py and impacket (published as an sdist only; pure Python, so built here once) plus
# every dependency as a binary wheel for the image's Python version and CPU, downloaded
# with --only-binary so nothing is compiled for the wrong interpreter.
#   scripts/docker-wheels.sh [PYTHON_VERSION] [OUT_DIR]
# PYTHON_VERSION: the image's python, e.g. 3.12 (python:3.12-slim, the default) or 3.11
# (a Debian bookworm base). OUT_DIR defaults to docker-wheels/ at the repository root
# (git-ignored, inside the build context).
set -euo pipefail
PYVER="${1:-3.12}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${2:-$ROOT/docker-wheels}"
VENV="$ROOT/.venv"
# pip from the project's venv (made only if missing: it is an editable install already).
"$VENV/bin/python" -c 'import smbd_py, impacket' 2>/dev/null || source "$ROOT/scripts/_venv.sh"
PIP=("$VENV/bin/python" -m pip -q --disable-pip-version-check)
ARCH="$(uname -m)"
mkdir -p "$OUT"
rm -f "$OUT"/smbd_py-*.whl
"${PIP[@]}" wheel --no-deps -w "$OUT" "$ROOT"
IMPACKET="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("impacket"))')"
ls "$OUT"/impacket-"$IMPACKET"-*.whl >/dev/null 2>&1 || \
    "${PIP[@]}" wheel --no-deps -w "$OUT" "impacket==$IMPACKET"
# Resolve smbd_py's dependency tree for the target interpreter; the two local wheels come
# from OUT, the rest must exist as wheels for that Python (glibc 2.17+ manylinux builds
# run on every Debian/Ubuntu image).
"${PIP[@]}" download --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform "manylinux_2_28_$ARCH" --platform "manylinux_2_17_$ARCH" \
    --platform "manylinux2014_$ARCH" --find-links "$OUT" -d "$OUT" smbd_py
echo "wheels for Python $PYVER in $OUT:" >&2
ls "$OUT" >&2
