#!/usr/bin/env bash
# The fleet demo: the seed's security incident across three clusters on this
# machine — a controller, an admin node, cluster A's node (behind the "VPN":
# it only dials out) and cluster B's node, four agents on three MLS channels,
# an event injector and the operator (slimctl). Identities come from the
# development Workload API server; nodes load deploy/fleet/*.toml.
#   --auto-approve   the operator's approval is sent automatically
#   --quick          debug build and short simulated work (used by tests)
# Other arguments go to slim-demo (see: slim-demo --help).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/slim-target}"
PROFILE=release
ARGS=()
for a in "$@"; do
  case "$a" in
    --quick) PROFILE=debug; ARGS+=(--work-ms 300) ;;
    *) ARGS+=("$a") ;;
  esac
done
./scripts/install-deps.sh prometheus
echo "== building slim-node, slim-controller, slimctl and the demo ($PROFILE; the first build takes a few minutes)"
if [ "$PROFILE" = release ]; then
  cargo build --release --locked -q -p slim-node -p slim-controller -p slim-ctl -p slim-demo
else
  cargo build --locked -q -p slim-node -p slim-controller -p slim-ctl -p slim-demo
fi
exec "$CARGO_TARGET_DIR/$PROFILE/slim-demo" --prometheus "${ARGS[@]}"
