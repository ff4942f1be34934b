#!/usr/bin/env bash
# Builds the Python package slim_agents (python/) into a virtualenv, incrementally.
#
#   scripts/python-env.sh              # dev profile (fast rebuilds; tests, CI)
#   scripts/python-env.sh --release    # optimized (benchmarks); or SLIM_PY_PROFILE=release
#
# Idempotent: creates the venv if missing, installs maturin/pytest/pytest-asyncio/pytest-timeout
# only when absent, then `maturin develop` (an editable install: the extension
# lands in python/slim_agents/, the pure-Python files are used in place).
# Cargo artifacts go to $CARGO_TARGET_DIR (default ~/.cache/slim-target), shared
# with the rest of the workspace, so rebuilds only redo the extension crate.
# The last line printed is the venv's python.
#
# Env: SLIM_VENV (default ~/.cache/slim-venv), SLIM_PYTHON (interpreter for a
# new venv; default python3), SLIM_PY_PROFILE (dev|release), CARGO_TARGET_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SLIM_VENV:-$HOME/.cache/slim-venv}"
PROFILE="${SLIM_PY_PROFILE:-dev}"
for arg in "$@"; do
    case "$arg" in
        --release) PROFILE=release ;;
        --dev|--debug) PROFILE=dev ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "python-env.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done
case "$PROFILE" in
    dev|debug) PROFILE=dev ;;
    release) ;;
    *) echo "python-env.sh: SLIM_PY_PROFILE must be dev or release, got $PROFILE" >&2; exit 2 ;;
esac

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/slim-target}"
export PIP_CACHE_DIR="${PIP_CACHE_DIR:-$HOME/.cache/pip}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "python-env: creating $VENV" >&2
    "${SLIM_PYTHON:-python3}" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# Tools, pinned to ranges known to work; installed only when missing so
# repeated runs do no network round trips.
need=()
"$PY" -c 'import maturin' 2>/dev/null || need+=("maturin>=1.9.4,<2")
"$PY" -c 'import pytest' 2>/dev/null || need+=("pytest>=8,<10")
"$PY" -c 'import pytest_asyncio' 2>/dev/null || need+=("pytest-asyncio>=0.24,<2")
# Enforces python/tests/pytest.ini's per-test `timeout` (without it the
# setting is inert and a hung test holds CI until its overall limit).
"$PY" -c 'import pytest_timeout' 2>/dev/null || need+=("pytest-timeout>=2.3,<3")
# The agent-protocol SDKs' pins live in python/sdk-requirements.txt (shared
# with the dev image, deploy/docker/rootfs.sh).
pin() { grep -E "^$1[<>=!~ ]" "$ROOT/python/sdk-requirements.txt"; }
"$PY" -c 'import mcp' 2>/dev/null || need+=("$(pin mcp)")
"$PY" -c 'import a2a.client' 2>/dev/null || need+=("$(pin a2a-sdk)")
if ((${#need[@]})); then
    echo "python-env: installing ${need[*]}" >&2
    "$PY" -m pip install -q "${need[@]}" >&2
fi

cd "$ROOT/python"
args=(develop)
[[ "$PROFILE" == release ]] && args+=(--release)
start=$SECONDS
# maturin picks the venv from VIRTUAL_ENV; its output goes to stderr so the
# last stdout line stays the interpreter's path.
VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" "$VENV/bin/maturin" "${args[@]}" >&2
echo "python-env: slim_agents ($PROFILE) built and installed in $((SECONDS - start))s" >&2
"$PY" -c 'import slim_agents' >&2
echo "$PY"
