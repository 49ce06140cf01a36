#!/usr/bin/env bash
# Two servers, one directory, without Docker: two smbd_py processes on 127.0.0.2 and
# 127.0.0.3 (same port) export one temporary copy of shares/demo (so the demo never
# writes into the checkout) with the account demo/demo; scripts/coherence_demo.py plays a
# client on each and prints the timeline. Exits with the timeline script's status
# (0 coherent, 1 stale read, 2 the scenario did not run).
#   scripts/coherence-demo.sh [coherence_demo.py options, e.g. --kind batch]
# COHERENCE_DEMO_PORT picks the port (default 4450). Run as root (or with CAP_LEASE) to
# let the servers lease files of any owner; the files here are the servers' own anyway.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
# Make (or repair) .venv only when smbd_py is not importable from it: smbd_py is installed
# editable, so an existing venv already runs this checkout's code.
"$VENV/bin/python" -c 'import smbd_py, cryptography' 2>/dev/null || source "$ROOT/scripts/_venv.sh"
PORT="${COHERENCE_DEMO_PORT:-4450}"
HOST_A=127.0.0.2
HOST_B=127.0.0.3
WORK="$(mktemp -d "${TMPDIR:-/tmp}/coherence-demo.XXXXXX")"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        # Bounded: 10 s for a clean stop, then SIGKILL.
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cp -r "$ROOT/shares/demo" "$WORK/demo"
echo demo | "$VENV/bin/smbd-py" user add demo --users "$WORK/users" --password-stdin >/dev/null
for host in "$HOST_A" "$HOST_B"; do
    "$VENV/bin/smbd-py" serve --listen "$host:$PORT" --share "demo=$WORK/demo" \
        --users "$WORK/users" --log-level info >"$WORK/server-$host.log" 2>&1 &
    PIDS+=($!)
done
wait_listening() {  # HOST PID: bounded wait for the server's port (20 s)
    for _ in $(seq 200); do
        kill -0 "$2" 2>/dev/null || { echo "server on $1 exited:" >&2; cat "$WORK/server-$1.log" >&2; return 1; }
        "$VENV/bin/python" - "$1" "$PORT" <<'PY' && return 0
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.5).close()
except OSError:
    sys.exit(1)
PY
        sleep 0.1
    done
    echo "server on $1 is not listening on port $PORT after 20 s:" >&2
    cat "$WORK/server-$1.log" >&2
    return 1
}
wait_listening "$HOST_A" "${PIDS[0]}"
wait_listening "$HOST_B" "${PIDS[1]}"
echo "server A: smbd_py on $HOST_A:$PORT (pid ${PIDS[0]}), server B: smbd_py on $HOST_B:$PORT (pid ${PIDS[1]}), both exporting $WORK/demo"
status=0
"$VENV/bin/python" "$ROOT/scripts/coherence_demo.py" "$HOST_A:$PORT" "$HOST_B:$PORT" "$@" || status=$?
exit "$status"
