# Sourced by demo.sh and test.sh: make .venv with smbd_py installed (and EXTRAS if set).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
# The distribution's Python by default: Debian's (like python.org's Docker images) is
# built with PGO and LTO and links libpython statically; a default pyenv build on PATH
# has neither, and the server runs ~3% fewer open+close round trips per second on it
# (bench/README.md). PYTHON=... picks another interpreter.
if [ -z "${PYTHON:-}" ] && [ -x /usr/bin/python3 ] \
        && /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PY=/usr/bin/python3
else
    PY="${PYTHON:-python3}"
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "smbd_py needs Python >= 3.11 (found: $("$PY" --version 2>&1))" >&2
    exit 1
fi
apt_install() {
    # Install Debian packages that are missing; needs root (or sudo).
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "${missing[@]}" >/dev/null
}
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        apt_install python3-venv
        "$PY" -m venv "$VENV"
    fi
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT${EXTRAS:-}"
