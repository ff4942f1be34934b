#!/usr/bin/env bash
# The fleet demo: the seed's security incident across three clusters on this
# machine — a controller, an admin node, cluster A's node (behind the "VPN":
# it only dials out) and cluster B's node, four agents on three MLS channels,
# an event injector and the operator (slimctl). Identities come from the
# development Workload API server; nodes load deploy/fleet/*.toml.
# The agents are the Python ones (demo/agents/*.py, on the slim_agents SDK,
# which scripts/python-env.sh builds into the venv ~/.cache/slim-venv or
# $SLIM_VENV); --rust-agents runs the Rust agent (slim-demo-agent) instead.
#   --auto-approve   the operator's approval is sent automatically
#   --quick          debug build and short simulated work (used by tests)
#   --rust-agents    the Rust agents (no Python needed)
# Other arguments go to slim-demo (see: slim-demo --help).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/slim-target}"
PROFILE=release
PYTHON_AGENTS=1
ARGS=()
for a in "$@"; do
  case "$a" in
    --quick) PROFILE=debug; ARGS+=(--work-ms 300) ;;
    --rust-agents) PYTHON_AGENTS=0; ARGS+=("$a") ;;
    *) ARGS+=("$a") ;;
  esac
done
if [ "$PYTHON_AGENTS" = 1 ]; then
  ./scripts/install-deps.sh prometheus python3 python3-venv
else
  ./scripts/install-deps.sh prometheus
fi
if [ "$PYTHON_AGENTS" = 1 ]; then
  echo "== Python env for the agents: scripts/python-env.sh (venv, slim_agents extension; the first build takes a few minutes)"
  # Idempotent; its last line on stdout is the venv's python.
  OUT="$(./scripts/python-env.sh)"
  sed '$d' <<<"$OUT"
  PY="$(tail -n 1 <<<"$OUT")"
  if [ ! -x "$PY" ]; then
    echo "scripts/python-env.sh did not name a python (last line: '$PY')" >&2
    exit 1
  fi
  ARGS=(--python "$PY" "${ARGS[@]}")
fi
echo "== building slim-node, slim-controller, slimctl and the demo ($PROFILE; the first build takes a few minutes)"
if [ "$PROFILE" = release ]; then
  cargo build --release --locked -q -p slim-node -p slim-controller -p slim-ctl -p slim-demo
else
  cargo build --locked -q -p slim-node -p slim-controller -p slim-ctl -p slim-demo
fi
exec "$CARGO_TARGET_DIR/$PROFILE/slim-demo" --prometheus "${ARGS[@]}"
