#!/usr/bin/env bash
# The local demo on embedded defaults: a development trust domain, one node
# started from deploy/config/node.toml, and two agents (slimctl) exchanging
# messages on a channel by name over QUIC with SPIFFE mTLS.
#   --quick   fewer messages, used by the test suite
# The fleet demo (three clusters, controller, MLS channels) is deploy/local/demo.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/slim-target}"
COUNT=5
PROFILE=release
if [ "${1:-}" = "--quick" ]; then COUNT=2; PROFILE=debug; fi
BIN="$CARGO_TARGET_DIR/$PROFILE"

echo "== building slim-node and slimctl ($PROFILE)"
if [ "$PROFILE" = release ]; then
  cargo build --release --locked -q -p slim-node -p slim-ctl
else
  cargo build --locked -q -p slim-node -p slim-ctl
fi

WORK="$(mktemp -d -t slim-demo.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

port() { python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
NODE_PORT="${SLIM_DEMO_PORT:-$(port)}"
METRICS_PORT="$(port)"
TD=acme.example
CHAN=acme/monitoring/security-incident

echo "== development trust domain spiffe://$TD (not for production)"
"$BIN/slimctl" dev-ca init --trust-domain "$TD" --dir "$WORK/ca"
"$BIN/slimctl" dev-ca issue "spiffe://$TD/node/admin" --ca "$WORK/ca" --out "$WORK/node"
"$BIN/slimctl" dev-ca issue "spiffe://$TD/cluster-a/agent/security-monitor" --ca "$WORK/ca" --out "$WORK/eu-monitor"
"$BIN/slimctl" dev-ca issue "spiffe://$TD/cluster-b/agent/security-monitor" --ca "$WORK/ca" --out "$WORK/us-monitor"

echo "== starting slim-node with deploy/config/node.toml on 127.0.0.1:$NODE_PORT"
SLIM_IDENTITY_DIR="$WORK/node" SLIM_LISTEN="127.0.0.1:$NODE_PORT" SLIM_METRICS_LISTEN="127.0.0.1:$METRICS_PORT" \
  SLIM_NODE_ID=admin-node "$BIN/slim-node" --config deploy/config/node.toml >"$WORK/node.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q "listening on" "$WORK/node.log" && break; sleep 0.1; done
grep -q "listening on" "$WORK/node.log" || { cat "$WORK/node.log"; echo "node did not start" >&2; exit 1; }
echo "   metrics: http://127.0.0.1:$METRICS_PORT/metrics"

echo "== eu-west security monitor subscribes to $CHAN"
"$BIN/slimctl" channel subscribe "$CHAN" --node "127.0.0.1:$NODE_PORT" --identity "$WORK/eu-monitor" \
  --as acme/eu-west/security-monitor --count "$COUNT" --timeout 20s >"$WORK/sub.out" 2>"$WORK/sub.err" &
SUB=$!
for _ in $(seq 100); do grep -q "subscribed" "$WORK/sub.err" && break; sleep 0.1; done

echo "== us-east security monitor publishes $COUNT events"
for i in $(seq "$COUNT"); do
  "$BIN/slimctl" channel publish "$CHAN" "{\"event\":\"cve\",\"severity\":\"critical\",\"image\":\"nginx:1.21\",\"seq\":$i}" \
    --node "127.0.0.1:$NODE_PORT" --identity "$WORK/us-monitor" --as acme/us-east/security-monitor
done

if ! wait "$SUB"; then
  cat "$WORK/sub.err" >&2
  echo "demo FAILED: the subscriber did not receive every message" >&2
  exit 1
fi
echo "== what the eu-west monitor received (time, channel, sender name, sender SPIFFE ID, payload)"
cat "$WORK/sub.out"
got=$(wc -l <"$WORK/sub.out")
[ "$got" -eq "$COUNT" ] || { echo "demo FAILED: expected $COUNT messages, got $got" >&2; exit 1; }
grep -q "spiffe://$TD/cluster-b/agent/security-monitor" "$WORK/sub.out" || { echo "demo FAILED: sender identity missing" >&2; exit 1; }
echo "== node metrics (excerpt)"
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null | grep -E '^slim_(messages_routed|deliveries|connections_total)' || true
echo "demo OK: $got messages delivered by name with authenticated sender identities"
