#!/usr/bin/env bash
# Install smbd_py into .venv and serve shares/demo on 127.0.0.1:4445 with a demo account.
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
USERS="$ROOT/.cache/demo-users"
mkdir -p "$ROOT/.cache"
[ -f "$USERS" ] || echo demo | "$VENV/bin/smbd-py" user add demo --users "$USERS" --password-stdin >/dev/null
echo "Connect with:  smbclient //127.0.0.1/demo -p 4445 -U demo%demo"
exec "$VENV/bin/smbd-py" serve --listen 127.0.0.1:4445 --share "demo=$ROOT/shares/demo" --users "$USERS" "$@"
