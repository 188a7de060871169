#!/usr/bin/env bash
# Jaeger, the tracing backend the distributed-trace test sends to and reads back from (docs/operations.md,
# "Tracing"), called by bootstrap.sh after `uv sync`.
#
#   jaeger   Jaeger v2 (`cmd/jaeger`: the OpenTelemetry-collector-based all-in-one with an OTLP receiver,
#            in-memory storage and the query API), built from its Go module at $JAEGER_VERSION into
#            $EDGEHUB_CACHE/jaeger/1.75.0/bin (default ~/.cache/edgehub), once. Its go.mod has a
#            replace directive, so `go install pkg@version` refuses it: it is built as a tool of a throw-away
#            module (`go get -tool`, then `go install tool`). 7.7 CPU-minutes (15 minutes of wall time on a
#            busy 2-core VM, downloads included), a 121 MB binary.
#
# Idempotent: when the binary is there and says the pinned version, nothing is done. Delete the folder
# to rebuild. The tests find it at the same path (tests/harness/jaeger.py).
set -euo pipefail
cd "$(dirname "$0")/.."

JAEGER_VERSION=v1.75.0  # the module's tag; v1.76.0 is served but not an approved release
CACHE="${EDGEHUB_CACHE:-$HOME/.cache/edgehub}/jaeger/${JAEGER_VERSION#v}"
BIN="$CACHE/bin/jaeger"
step() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [[ -x "$BIN" ]] && grep -qx "$JAEGER_VERSION" "$CACHE/version" 2>/dev/null; then
    step "jaeger: $BIN ($JAEGER_VERSION)"
    exit 0
fi
command -v go >/dev/null || PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "go is needed to build Jaeger (the tracing test's backend)" >&2; exit 1; }
step "building Jaeger $JAEGER_VERSION into $CACHE/bin (once; 5-15 minutes on 2 cores)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$CACHE/bin"
(
    cd "$work"
    printf 'module edgehub.local/jaeger\n\ngo 1.24\n' >go.mod
    go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION"
    GOBIN="$CACHE/bin" go install tool
) >"$CACHE/build.log" 2>&1 || { tail -30 "$CACHE/build.log" >&2; echo "Jaeger build failed (log: $CACHE/build.log)" >&2; exit 1; }
echo "$JAEGER_VERSION" >"$CACHE/version"
step "jaeger: $BIN ($JAEGER_VERSION)"
