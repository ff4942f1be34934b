#!/usr/bin/env bash
# Agent-level benchmark: our Python SDK (slim_agents) vs the reference SLIM's Python
# bindings (slim-bindings from PyPI), alternating rounds; prints a markdown table.
#   scripts/python-bench.sh [--rounds 3] [--seconds 5] [--only p2p,rr,group,admit]
#                           [--sides ours,ref] [--json] [--save-json FILE] [-v]
# Arguments are passed to python/bench/compare.py.
# Environment:
#   SLIM_VENV            venv to create/use (default ~/.cache/slim-venv)
#   SLIM_BINDINGS_SPEC   pip spec of the reference (default "slim-bindings>=3.3,<3.4")
#   CARGO_TARGET_DIR     where slim-node / slimctl are built (default ~/.cache/slim-target);
#                        or SLIM_NODE_BIN / SLIMCTL_BIN
#   SLIM_BENCH_BUILD=1   build slim-node and slimctl (release) first
#   SLIM_BENCH_INSTALL_OURS=1  pip-install our package from python/ into the venv first
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SLIM_VENV:-$HOME/.cache/slim-venv}"
export PIP_CACHE_DIR="${PIP_CACHE_DIR:-$HOME/.cache/pip}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/slim-target}"
SPEC="${SLIM_BINDINGS_SPEC:-slim-bindings>=3.3,<3.4}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating venv $VENV" >&2
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c 'import slim_bindings' 2>/dev/null; then
  echo "== installing $SPEC" >&2
  "$PY" -m pip install -q "$SPEC"
fi
if [ "${SLIM_BENCH_INSTALL_OURS:-0}" = 1 ]; then
  echo "== installing slim-agents from python/" >&2
  "$PY" -m pip install -q ./python
fi
if ! "$PY" -c 'import slim_agents' 2>/dev/null; then
  echo "== note: slim_agents is not installed in $VENV; our side will report an error" >&2
  echo "   (build it: SLIM_BENCH_INSTALL_OURS=1 $0, or maturin develop in python/)" >&2
fi
if [ "${SLIM_BENCH_BUILD:-0}" = 1 ]; then
  echo "== building slim-node and slimctl (release)" >&2
  cargo build --release --locked -q -p slim-node -p slim-ctl
fi
echo "== reference: $("$PY" -c 'from importlib.metadata import version; print("slim-bindings", version("slim-bindings"))')" >&2
# Which build of ours runs: scripts/python-env.sh installs in editable mode, so the
# extension lives in python/slim_agents/ and is shared by every venv made that way
# (the last build wins: a dev build by the CI replaces a release build).
"$PY" - >&2 <<'PYEOF' || true
import glob, os
try:
    import slim_agents
except Exception as e:  # noqa: BLE001
    print(f"== ours: not importable ({e})")
else:
    d = os.path.dirname(slim_agents.__file__)
    so = glob.glob(os.path.join(d, "_native*.so"))
    info = f"{so[0]} ({os.path.getsize(so[0]) / 2**20:.0f} MiB)" if so else "no _native*.so"
    print(f"== ours: slim_agents from {d}; extension {info}")
PYEOF
exec "$PY" python/bench/compare.py "$@"
