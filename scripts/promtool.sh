#!/usr/bin/env bash
# promtool, Prometheus's rules checker (docs/operations.md, "Metrics and alerts"), called by bootstrap.sh.
#
#   promtool   `go install github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION` into
#              $EDGEHUB_CACHE/go/bin (default ~/.cache/edgehub), once: about 9 minutes on 2 busy cores
#              (it downloads and compiles much of Prometheus). tests/unit/test_alert_rules.py runs
#              `promtool check rules` and `promtool test rules` on ops/prometheus/. Go module v0.316.0
#              is Prometheus 3.16 (the module's v0.3xx.y tags track Prometheus 3.xx.y).
#
# Idempotent: when the binary is present with the wanted version recorded beside it, it only checks two
# files. Delete the binary (or its .version file) to rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."

PROMETHEUS_MODULE_VERSION=v0.316.0
GO_BIN="${EDGEHUB_CACHE:-$HOME/.cache/edgehub}/go/bin"
step() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [[ -x "$GO_BIN/promtool" ]] && grep -qx "$PROMETHEUS_MODULE_VERSION" "$GO_BIN/promtool.version" 2>/dev/null; then
    exit 0
fi
command -v go >/dev/null || PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "go is needed to build promtool (the alert rules' checker)" >&2; exit 1; }
step "building promtool (prometheus $PROMETHEUS_MODULE_VERSION) into $GO_BIN (once; about 9 minutes on 2 cores)"
mkdir -p "$GO_BIN"
start=$SECONDS
GOBIN="$GO_BIN" go install "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION"
echo "$PROMETHEUS_MODULE_VERSION" >"$GO_BIN/promtool.version"
step "promtool: $("$GO_BIN/promtool" --version 2>&1 | head -1) (built in $((SECONDS - start)) s)"
