#!/usr/bin/env bash
# Build what the edgehub_edge (or, with EDGEHUB_WHEEL_PACKAGE=hub, the edgehub_hub) Ansible role
# installs from (docs/rollout.md):
#
#   [EDGEHUB_WHEEL_PACKAGE=edge|hub] scripts/wheelhouse.sh PROJECT_DIR [DEPS_DIR]
#
#   PROJECT_DIR  the project's wheels for the daemon (edgehub-edge or edgehub-hub and the members it needs), built
#                from this work tree, and requirements.txt: every other package pinned as uv.lock has it
#                (the device installs exactly that set, --no-deps, so the workspace's overrides hold);
#                the role copies the folder to each device (edgehub_edge_wheels).
#   DEPS_DIR     every third-party wheel they depend on, at the versions pinned in uv.lock, for THIS
#                machine's platform (build it on a machine of the devices' CPU architecture), with
#                llama-cpp-python from the bootstrap's wheel cache (it has no binary wheel on PyPI);
#                serve it to the devices (edgehub_edge_find_links). Fetched from PyPI once and reused
#                while uv.lock, the Python version and the architecture stay the same (DEPS_DIR/stamp).
#                EDGEHUB_WHEEL_PYTHON: the devices' Python version (default 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."
(( $# >= 1 )) || { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
PROJECT_DIR=$1
DEPS_DIR=${2:-}
PACKAGE=${EDGEHUB_WHEEL_PACKAGE:-edge}
case $PACKAGE in
    edge) MEMBERS=(protocol sync cli llm hardware edge) ;;
    hub) MEMBERS=(protocol sync cli llm hub) ;;
    *) echo "EDGEHUB_WHEEL_PACKAGE must be edge or hub, not $PACKAGE" >&2; exit 2 ;;
esac

mkdir -p "$PROJECT_DIR"
for member in "${MEMBERS[@]}"; do
    uv build --quiet --wheel --package "edgehub-$member" -o "$PROJECT_DIR"
done

{
    echo "# what edgehub-$PACKAGE runs with, pinned as in uv.lock (scripts/wheelhouse.sh); edgehub-$PACKAGE"
    echo "# itself is not listed: the role installs the version it rolls out beside these"
    for member in "${MEMBERS[@]}"; do
        [[ $member == "$PACKAGE" ]] || echo "edgehub-$member==$(sed -n 's/^version = "\(.*\)"$/\1/p' "$member/pyproject.toml" | head -1)"
    done
    uv export --frozen --package "edgehub-$PACKAGE" --no-emit-workspace --no-dev --no-hashes --no-header --no-annotate
} >"$PROJECT_DIR/requirements.txt"

[[ -n "$DEPS_DIR" ]] || exit 0
PYTHON=${EDGEHUB_WHEEL_PYTHON:-3.11}  # the devices' Python: wheels are picked for its tags
stamp="$(sha256sum uv.lock | cut -c1-16) python$PYTHON $(uname -m)${PACKAGE/#edge/}"
if [[ "$(cat "$DEPS_DIR/stamp" 2>/dev/null)" == "$stamp" ]]; then
    exit 0
fi
LLAMA_VERSION=$(sed -n '/^name = "llama-cpp-python"$/{n;s/^version = "\(.*\)"$/\1/p}' uv.lock)
WHEELS="${EDGEHUB_CACHE:-$HOME/.cache/edgehub}/wheels"
shopt -s nullglob
llama=("$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl)
(( ${#llama[@]} )) || { echo "no llama-cpp-python $LLAMA_VERSION wheel in $WHEELS: run scripts/bootstrap.sh" >&2; exit 1; }
build="$DEPS_DIR.build.$$"
rm -rf "$build"
mkdir -p "$build"
uv export --frozen --package "edgehub-$PACKAGE" --no-emit-workspace --no-dev --no-hashes --no-header --no-annotate \
    | grep -v '^llama-cpp-python==' >"$build/requirements.txt"
# pip wheel: binary wheels as they are, sdists (nkeys, ...) built into wheels
uv tool run --quiet --python "$PYTHON" --from pip pip wheel --quiet --disable-pip-version-check --no-deps \
    -r "$build/requirements.txt" -w "$build"
cp "${llama[0]}" "$build/"
echo "$stamp" >"$build/stamp"
rm -rf "$DEPS_DIR"
mv "$build" "$DEPS_DIR"
