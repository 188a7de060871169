#!/usr/bin/env bash
# `make run`: a local edgehub on the real model solving a sample goal.
#
# Today: one edge daemon (a real background process on the Gemma 3 270M GGUF) and the CLI submitting a
# goal to it and following its mind-log. The hub, NATS and Neo4j join this script as their issues land.
set -euo pipefail
cd "$(dirname "$0")/.."

GOAL=${GOAL:-"Save the word green to leaf.txt, then read leaf.txt back and finish with what it says."}
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/edgehub-run.XXXXXX")
export EDGEHUB_EDGE__DEVICE__DATA_DIR="$RUN_DIR/edge-1"
export EDGEHUB_EDGE__DEVICE__ID=edge-1
EH="uv run --no-sync edgehub"

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
cleanup() {
    if [[ -n "${DAEMON:-}" ]] && kill -0 "$DAEMON" 2>/dev/null; then
        step "stopping the edge daemon (SIGTERM: agents checkpoint and drain)"
        kill -TERM "$DAEMON"; wait "$DAEMON" || true
    fi
}
trap cleanup EXIT

step "starting edge daemon edge-1 (data in $RUN_DIR, log in $RUN_DIR/edge-1.log)"
$EH edge run -c examples/edge.toml >"$RUN_DIR/edge-1.log" 2>&1 &
DAEMON=$!
for _ in $(seq 100); do
    [[ -f "$RUN_DIR/edge-1/edge.lock" ]] && grep -q running "$RUN_DIR/edge-1.log" 2>/dev/null && break
    kill -0 "$DAEMON" 2>/dev/null || { cat "$RUN_DIR/edge-1.log"; exit 1; }
    sleep 0.2
done

step "goal: $GOAL"
$EH agent run -c examples/edge.toml --goal "$GOAL"
step "workspace files:"
find "$RUN_DIR/edge-1/workspaces" -type f -printf '  %P\n'
