#!/usr/bin/env bash
# SLIM vs NATS throughput on this machine, one run, loopback only.
#
#   loadtest/compare.sh [ROUNDS]
#
# Starts slim-node (QUIC + SPIFFE mTLS) and nats-server (TLS with client
# certificate verification), both with certificates from one development CA,
# runs each scenario ROUNDS times (default 3) against both, alternating which
# system goes first each round, and prints ours/NATS ratios (median, min, max)
# of deliveries/s and of server CPU-seconds per million deliveries, plus the
# raw figures of every run.
#
# Scenarios: 1 publisher -> 1 subscriber and 1 -> 100, 16-byte payloads,
# multicast (NATS: plain subscriptions).
#
# NATS TLS: nats-server gets a server certificate with SAN IP:127.0.0.1 and
# DNS:localhost, made here with openssl and signed by the dev CA's key, so the
# async-nats client does ordinary chain + hostname verification. Its client
# certificate is an X.509-SVID issued from the same CA (slim-loadtest
# --ca-dir), checked by nats-server's `verify: true`.
#
# Environment: ROUNDS, DURATION (5s), WARMUP (1s), SIZE (16), SLIM_PORT (4500),
# NATS_PORT (4222), METRICS_PORT (9464), NATS_MONITOR_PORT (8222), RESULTS (copy the JSON lines here),
# KEEP_TMP=1 (keep the work directory), SLIMCTL / SLIM_NODE / SLIM_LOADTEST
# (use these binaries instead of building).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROUNDS="${1:-${ROUNDS:-3}}"
DURATION="${DURATION:-5s}"
WARMUP="${WARMUP:-1s}"
SIZE="${SIZE:-16}"
SLIM_PORT="${SLIM_PORT:-4500}"
NATS_PORT="${NATS_PORT:-4222}"
METRICS_PORT="${METRICS_PORT:-9464}"
NATS_MONITOR_PORT="${NATS_MONITOR_PORT:-8222}"
TD=example.org
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/slim-target}"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  echo "== installing nats-server (Debian package)"
  $SUDO apt-get install -y nats-server || { $SUDO apt-get update && $SUDO apt-get install -y nats-server; }
fi
NATS_SERVER="$(command -v nats-server || echo /usr/sbin/nats-server)"
command -v openssl >/dev/null 2>&1 || { echo "openssl is needed for the nats-server certificate" >&2; exit 1; }

if [ -z "${SLIMCTL:-}${SLIM_NODE:-}${SLIM_LOADTEST:-}" ]; then
  echo "== building release binaries"
  (cd "$ROOT" && cargo build --release -q -p slim-node -p slim-loadtest -p slim-ctl)
fi
BIN="$CARGO_TARGET_DIR/release"
SLIMCTL="${SLIMCTL:-$BIN/slimctl}"
SLIM_NODE="${SLIM_NODE:-$BIN/slim-node}"
SLIM_LOADTEST="${SLIM_LOADTEST:-$BIN/slim-loadtest}"

WORK="$(mktemp -d -t slim-compare.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "${KEEP_TMP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== dev CA (spiffe://$TD) and certificates in $WORK"
"$SLIMCTL" dev-ca init --trust-domain "$TD" --dir "$WORK/ca" >/dev/null
"$SLIMCTL" dev-ca issue "spiffe://$TD/node" --ca "$WORK/ca" --out "$WORK/node" >/dev/null
mkdir -p "$WORK/nats"
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/nats/server.key" 2>/dev/null
openssl req -new -key "$WORK/nats/server.key" -subj "/O=SLIM loadtest/CN=localhost" \
  -out "$WORK/nats/server.csr" 2>/dev/null
cat >"$WORK/nats/ext.cnf" <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
EOF
openssl x509 -req -in "$WORK/nats/server.csr" -CA "$WORK/ca/ca.crt" -CAkey "$WORK/ca/ca.key" \
  -set_serial "0x$(openssl rand -hex 12)" -days 1 -sha256 -extfile "$WORK/nats/ext.cnf" \
  -out "$WORK/nats/server.crt" 2>/dev/null

cat >"$WORK/node.toml" <<EOF
[node]
id = "bench-node"
listen = "127.0.0.1:$SLIM_PORT"
[identity]
dir = "$WORK/node"
[metrics]
listen = "127.0.0.1:$METRICS_PORT"
EOF
cat >"$WORK/nats/nats.conf" <<EOF
listen: 127.0.0.1:$NATS_PORT
http: 127.0.0.1:$NATS_MONITOR_PORT
tls {
  cert_file: "$WORK/nats/server.crt"
  key_file: "$WORK/nats/server.key"
  ca_file: "$WORK/ca/ca.crt"
  verify: true
  timeout: 5
}
EOF

echo "== starting slim-node on 127.0.0.1:$SLIM_PORT"
RUST_LOG="${RUST_LOG:-warn}" "$SLIM_NODE" --config "$WORK/node.toml" >"$WORK/node.log" 2>&1 &
NODE_PID=$!
PIDS+=("$NODE_PID")
echo "== starting nats-server $("$NATS_SERVER" --version | awk '{print $2}') on 127.0.0.1:$NATS_PORT (TLS, verify)"
"$NATS_SERVER" -c "$WORK/nats/nats.conf" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
PIDS+=("$NATS_PID")
for _ in $(seq 150); do
  grep -q "listening on" "$WORK/node.log" && grep -q "Server is ready" "$WORK/nats.log" && break
  kill -0 "$NODE_PID" 2>/dev/null || break
  kill -0 "$NATS_PID" 2>/dev/null || break
  sleep 0.1
done
grep -q "listening on" "$WORK/node.log" || { cat "$WORK/node.log" >&2; echo "slim-node did not start" >&2; exit 1; }
grep -q "Server is ready" "$WORK/nats.log" || { cat "$WORK/nats.log" >&2; echo "nats-server did not start" >&2; exit 1; }

RESULTS_FILE="$WORK/results.jsonl"
: >"$RESULTS_FILE"
common=(throughput --pubs 1 --size "$SIZE" --duration "$DURATION" --warmup "$WARMUP" --mode multicast
  --ca-dir "$WORK/ca" --json) # --json: one line per run on stdout, a short summary on stderr
run() { # system subs
  local sys=$1 subs=$2
  if [ "$sys" = slim ]; then
    "$SLIM_LOADTEST" "${common[@]}" --subs "$subs" --target "slim://127.0.0.1:$SLIM_PORT" \
      --node-pid "$NODE_PID" --stats-addr "127.0.0.1:$METRICS_PORT" >>"$RESULTS_FILE"
  else
    "$SLIM_LOADTEST" "${common[@]}" --subs "$subs" --target "tls://127.0.0.1:$NATS_PORT" \
      --node-pid "$NATS_PID" --stats-addr "127.0.0.1:$NATS_MONITOR_PORT" >>"$RESULTS_FILE"
  fi
}

for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then order=(slim nats); else order=(nats slim); fi
  echo "== round $r/$ROUNDS (${order[*]})"
  for subs in 1 100; do
    for sys in "${order[@]}"; do
      run "$sys" "$subs"
      sleep 1
    done
  done
done

echo
echo "== results (server CPU from /proc/<pid>/stat; peak RSS is the server's lifetime VmHWM)"
"$SLIM_LOADTEST" summarize "$RESULTS_FILE"
if [ -n "${RESULTS:-}" ]; then cp "$RESULTS_FILE" "$RESULTS" && echo "JSON lines copied to $RESULTS"; fi
