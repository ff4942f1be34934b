#!/usr/bin/env bash
# SLIM vs NATS on this machine, loopback only.
#
#   loadtest/compare.sh [ROUNDS]
#
# Starts slim-node (QUIC + SPIFFE mTLS) and nats-server (TLS with client
# certificate verification), both with certificates from one development CA,
# runs every scenario ROUNDS times (default 3) against both, alternating which
# system goes first each round, and prints ours/NATS ratios (median, min, max
# over rounds) plus the raw figures of every run.
#
# Scenarios (per round, in this order):
#   connections  1000 idle connections, each its own mTLS client (SLIM: its
#                own X.509-SVID), then 10 distinct subscriptions each: connect
#                rate, server RSS growth per idle connection and per
#                subscription. Both servers are restarted at the start of
#                every round and this runs first, on fresh processes: memory
#                freed by earlier runs would otherwise be reused without
#                growing the RSS.
#   throughput   1 -> 1 at 16 B, 1 KiB, 4 KiB and 16 KiB; 1 -> 100 and
#                1 -> 1000 at 16 B; multicast (NATS: plain subscriptions):
#                deliveries/s with their loss, and server CPU per 1M.
#   slow-consumer  1 -> 10 readers at 16 B, then the same plus 1 subscriber
#                that subscribes and never reads (SLIM: a client whose events
#                are never polled, so its SDK stops reading QUIC and the
#                node's outbox for it fills; NATS: a hand-made client that
#                stops reading its socket, so nats-server's buffer for it
#                fills). Reported: the readers' deliveries/s with ÷ without
#                it (per round), the readers' loss, whether and when the
#                stalled one was cut (SLIM: its client saw the connection go,
#                or slim_slow_consumer_events_total{action="disconnect"}
#                grew; NATS: /varz slow_consumers grew), the node's
#                slow-consumer drops, and the server's RSS peak sampled
#                during the run. SC_DURATION (10s) is longer than the other
#                windows so that a write deadline of a few seconds can pass.
#   latency      open-loop request/reply at 1000 req/s, 16 B, measured from
#                each request's scheduled send time: p50, p99, p99.9.
#   federation   SLIM only: a second slim-node (SLIM_PORT_B) dials the first
#                over a peer link, and the FED_ROWS runs of `throughput` go
#                again with the subscribers on it ("..., across 2 nodes").
#                Reported: deliveries/s across two nodes / the same scenario
#                on one node in the same round (so FED_ROWS must also be in
#                THROUGHPUT_ROWS), with both losses. Both nodes share the
#                machine's cores with the load generator.
#
# Loss: every throughput figure is printed with its loss (percent of the
# deliveries owed to the subscribers that read). A run that lost more than
# 0.1 % is marked LOSSY. The summary's HEADLINE is deliveries/s at <=0.1 %
# loss: the slim/NATS ratio of a round counts only if BOTH runs of that round
# lost <=0.1 %, since a lossy run has no rate at that loss; lossy rounds are
# left out and the row says who lost how much, and a scenario without one
# clean round gets no ratio ("-"), never the raw one. The raw ratios (any
# loss) stay in the detail table, each with both systems' median loss.
#
# Time: throughput + slow-consumer took 303 s for one round on a 2-core
# machine at load average 14 (1 -> 1000 is the longest: 1000 connections,
# then up to the loadtest's --drain-max (60 s) each for the publisher's flush and the drain);
# connections and latency add ~1-2 min, so one default round is ~7 min and
# the default 3 rounds ~20 min.
#
# NATS TLS: nats-server gets a server certificate with SAN IP:127.0.0.1 and
# DNS:localhost, made here with openssl and signed by the dev CA's key, so the
# async-nats client does ordinary chain + hostname verification. Its client
# certificate is an X.509-SVID issued from the same CA (slim-loadtest
# --ca-dir), checked by nats-server's `verify: true`.
#
# Environment: ROUNDS, DURATION (5s, throughput window), WARMUP (1s),
# LAT_RATE (1000), LAT_DURATION (10s), CONNS (1000), CONN_SUBS (10),
# CONN_CONCURRENCY (32), SC_DURATION (10s), SC_READERS (10),
# SCENARIOS (default "connections throughput slow-consumer latency federation"),
# THROUGHPUT_ROWS (default "1:16,1:1024,1:4096,1:16384,100:16,1000:16",
# subscribers:payload bytes per throughput row), FED_ROWS (default
# "1:1024,1:4096", the same for the federation scenario), SLIM_PORT_B and
# METRICS_PORT_B (the second node's; default SLIM_PORT+1, METRICS_PORT+1),
# SLIM_NODE_CONFIG_EXTRA (TOML appended to the node's config, e.g.
# $'[queue]\nmax_bytes = 524288' to compare settings), NODE_LOG (the
# node's RUST_LOG, default warn; e.g. info to see the send budget's and
# slow-consumer lines in its log, kept with KEEP_TMP=1),
# SLIM_PORT (4500), NATS_PORT (4222), METRICS_PORT (9464),
# NATS_MONITOR_PORT (8222), RESULTS (copy the JSON lines here), PLOTS (write
# SVG charts into this directory), KEEP_TMP=1 (keep the work directory),
# SLIMCTL / SLIM_NODE / SLIM_LOADTEST (use these binaries instead of building),
# CLIENT_THREADS (the load generator's runtime workers for both systems'
# clients, --client-threads; default: one per CPU. CLIENT_THREADS=1 shows
# request/reply as an application on a single-threaded runtime sees it:
# docs/BENCHMARKS.md, *Request/reply: the responder's fourth hop*),
# PUBLISHER_THREAD=1 (throughput rows: the publisher on a runtime thread of
# its own, --publisher-thread; docs/BENCHMARKS.md, *A publisher of its own*).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROUNDS="${1:-${ROUNDS:-3}}"
DURATION="${DURATION:-5s}"
WARMUP="${WARMUP:-1s}"
LAT_RATE="${LAT_RATE:-1000}"
LAT_DURATION="${LAT_DURATION:-10s}"
CONNS="${CONNS:-1000}"
CONN_SUBS="${CONN_SUBS:-10}"
CONN_CONCURRENCY="${CONN_CONCURRENCY:-32}"
SC_DURATION="${SC_DURATION:-10s}"
SC_READERS="${SC_READERS:-10}"
SCENARIOS="${SCENARIOS:-connections throughput slow-consumer latency federation}"
CLIENT_ARGS=()
[ -n "${CLIENT_THREADS:-}" ] && CLIENT_ARGS=(--client-threads "$CLIENT_THREADS")
TP_ARGS=()
[ "${PUBLISHER_THREAD:-0}" = 1 ] && TP_ARGS=(--publisher-thread)
# Throughput rows as "SUBS:SIZE" pairs (comma-separated).
THROUGHPUT_ROWS="${THROUGHPUT_ROWS:-1:16,1:1024,1:4096,1:16384,100:16,1000:16}"
IFS=, read -r -a SPECS <<<"${THROUGHPUT_ROWS//:/ }"
FED_ROWS="${FED_ROWS:-1:1024,1:4096}"
IFS=, read -r -a FED_SPECS <<<"${FED_ROWS//:/ }"
SLIM_PORT="${SLIM_PORT:-4500}"
NATS_PORT="${NATS_PORT:-4222}"
METRICS_PORT="${METRICS_PORT:-9464}"
SLIM_PORT_B="${SLIM_PORT_B:-$((SLIM_PORT + 1))}"
METRICS_PORT_B="${METRICS_PORT_B:-$((METRICS_PORT + 1))}"
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

# 1000 connections: NATS needs a descriptor per client on both ends (and the
# load generator one per SLIM client's UDP socket). Raise the soft limit.
hard="$(ulimit -Hn)"
if [ "$hard" = unlimited ] || [ "$hard" -gt 65536 ]; then hard=65536; fi
[ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$hard" ] && ulimit -n "$hard"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((CONNS * 2 + 256)) ]; then
  echo "warning: ulimit -n is $(ulimit -n), low for CONNS=$CONNS" >&2
fi

WORK="$(mktemp -d -t slim-compare.XXXXXX)"
NODE_PID=""
NODE_B_PID=""
NATS_PID=""
stop_servers() {
  for p in $NODE_PID $NODE_B_PID $NATS_PID; do kill "$p" 2>/dev/null || true; done
  for p in $NODE_PID $NODE_B_PID $NATS_PID; do wait "$p" 2>/dev/null || true; done
  NODE_PID=""
  NODE_B_PID=""
  NATS_PID=""
}
# QUIC lives on UDP: the kernel's default socket buffer cap (~208 KiB) drops
# packets under bursts, which TCP (NATS) never sees. Raise the cap the way a
# QUIC deployment would, for the duration of the run, and restore it after.
OLD_RMEM="$(cat /proc/sys/net/core/rmem_max 2>/dev/null || echo)"
OLD_WMEM="$(cat /proc/sys/net/core/wmem_max 2>/dev/null || echo)"
if [ "$(id -u)" = 0 ] && [ "${TUNE_UDP:-1}" = 1 ] && [ -n "$OLD_RMEM" ]; then
  sysctl -q -w net.core.rmem_max=8388608 net.core.wmem_max=8388608 || true
  echo "== net.core.rmem_max/wmem_max raised to 8 MiB for this run (was $OLD_RMEM/$OLD_WMEM); TUNE_UDP=0 to skip"
fi
cleanup() {
  if [ "$(id -u)" = 0 ] && [ "${TUNE_UDP:-1}" = 1 ] && [ -n "$OLD_RMEM" ]; then
    sysctl -q -w net.core.rmem_max="$OLD_RMEM" net.core.wmem_max="$OLD_WMEM" || true
  fi
  stop_servers
  if [ "${KEEP_TMP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(uname -r)"
echo "== load generator: ${CLIENT_THREADS:-one per CPU} runtime worker(s) for both systems' clients"
echo "== load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== dev CA (spiffe://$TD) and certificates in $WORK"
"$SLIMCTL" dev-ca init --trust-domain "$TD" --dir "$WORK/ca" >/dev/null
"$SLIMCTL" dev-ca issue "spiffe://$TD/node" --ca "$WORK/ca" --out "$WORK/node" >/dev/null
"$SLIMCTL" dev-ca issue "spiffe://$TD/node-b" --ca "$WORK/ca" --out "$WORK/node-b" >/dev/null
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
# A benchmark on loopback with throwaway certificates: no authorization
# policy, so that nats-server (which has none here either) and the node do
# comparable work. Never use allow_all outside development.
[authz]
mode = "allow_all"
${SLIM_NODE_CONFIG_EXTRA:-}
EOF
# The second node (federation scenario): dials the first over a peer link.
cat >"$WORK/node-b.toml" <<EOF
[node]
id = "bench-node-b"
listen = "127.0.0.1:$SLIM_PORT_B"
[identity]
dir = "$WORK/node-b"
[metrics]
listen = "127.0.0.1:$METRICS_PORT_B"
[authz]
mode = "allow_all"
[[federation.peers]]
node_id = "bench-node"
address = "127.0.0.1:$SLIM_PORT"
server_name = "slim-node"
${SLIM_NODE_CONFIG_EXTRA:-}
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

NATS_VERSION="$("$NATS_SERVER" --version | awk '{print $2}')"
start_servers() {
  RUST_LOG="${NODE_LOG:-${RUST_LOG:-warn}}" "$SLIM_NODE" --config "$WORK/node.toml" >"$WORK/node.log" 2>&1 &
  NODE_PID=$!
  "$NATS_SERVER" -c "$WORK/nats/nats.conf" >"$WORK/nats.log" 2>&1 &
  NATS_PID=$!
  for _ in $(seq 150); do
    grep -q "listening on" "$WORK/node.log" && grep -q "Server is ready" "$WORK/nats.log" && break
    kill -0 "$NODE_PID" 2>/dev/null || break
    kill -0 "$NATS_PID" 2>/dev/null || break
    sleep 0.1
  done
  grep -q "listening on" "$WORK/node.log" || { cat "$WORK/node.log" >&2; echo "slim-node did not start" >&2; exit 1; }
  grep -q "Server is ready" "$WORK/nats.log" || { cat "$WORK/nats.log" >&2; echo "nats-server did not start" >&2; exit 1; }
  if has federation; then
    # info: its log says when the link is up.
    RUST_LOG=info "$SLIM_NODE" --config "$WORK/node-b.toml" >"$WORK/node-b.log" 2>&1 &
    NODE_B_PID=$!
    for _ in $(seq 150); do
      grep -q "peer link up" "$WORK/node-b.log" && break
      kill -0 "$NODE_B_PID" 2>/dev/null || break
      sleep 0.1
    done
    grep -q "peer link up" "$WORK/node-b.log" || { cat "$WORK/node-b.log" >&2; echo "the second slim-node did not link to the first" >&2; exit 1; }
  fi
}

RESULTS_FILE="$WORK/results.jsonl"
: >"$RESULTS_FILE"
# --json: one line per run on stdout (collected), a short summary on stderr.
run() { # system subcommand args...
  local sys=$1
  shift
  if [ "$sys" = slim ]; then
    "$SLIM_LOADTEST" "$@" "${CLIENT_ARGS[@]}" --ca-dir "$WORK/ca" --json --target "slim://127.0.0.1:$SLIM_PORT" \
      --node-pid "$NODE_PID" --stats-addr "127.0.0.1:$METRICS_PORT" >>"$RESULTS_FILE"
  else
    "$SLIM_LOADTEST" "$@" "${CLIENT_ARGS[@]}" --ca-dir "$WORK/ca" --json --target "tls://127.0.0.1:$NATS_PORT" \
      --node-pid "$NATS_PID" --stats-addr "127.0.0.1:$NATS_MONITOR_PORT" >>"$RESULTS_FILE"
  fi
  sleep 1
}
has() { case " $SCENARIOS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

echo "== slim-node (127.0.0.1:$SLIM_PORT) and nats-server $NATS_VERSION (127.0.0.1:$NATS_PORT, TLS, verify)"
T0=$SECONDS
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then order=(slim nats); else order=(nats slim); fi
  echo "== round $r/$ROUNDS (${order[*]}), servers restarted, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  stop_servers
  start_servers
  if has connections; then
    for sys in "${order[@]}"; do
      run "$sys" connections --conns "$CONNS" --subs "$CONN_SUBS" --concurrency "$CONN_CONCURRENCY"
    done
  fi
  if has throughput; then
    for spec in "${SPECS[@]}"; do
      read -r subs size <<<"$spec"
      for sys in "${order[@]}"; do
        run "$sys" throughput --pubs 1 --subs "$subs" --size "$size" --mode multicast \
          --duration "$DURATION" --warmup "$WARMUP" "${TP_ARGS[@]}"
      done
    done
  fi
  if has federation; then
    # SLIM only: publishers on the first node, subscribers on the second.
    for spec in "${FED_SPECS[@]}"; do
      read -r subs size <<<"$spec"
      run slim throughput --pubs 1 --subs "$subs" --size "$size" --mode multicast \
        --duration "$DURATION" --warmup "$WARMUP" --sub-target "slim://127.0.0.1:$SLIM_PORT_B"
    done
  fi
  if has slow-consumer; then
    # Baseline first (the readers alone), then with the stalled subscriber;
    # summarize pairs them by shape (same readers, size and mode).
    for sys in "${order[@]}"; do
      run "$sys" fanout --subs "$SC_READERS" --size 16 --duration "$SC_DURATION" --warmup "$WARMUP"
      run "$sys" slow-consumer --subs $((SC_READERS + 1)) --stalled 1 --size 16 \
        --duration "$SC_DURATION" --warmup "$WARMUP"
    done
  fi
  if has latency; then
    for sys in "${order[@]}"; do
      run "$sys" latency --rate "$LAT_RATE" --duration "$LAT_DURATION" --warmup "$WARMUP"
    done
  fi
done
stop_servers

echo
echo "== results after $((SECONDS - T0)) s; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "   (server CPU from /proc/<pid>/stat; peak RSS is the server's VmHWM since the round's restart;"
echo "    loss % is next to every deliveries/s; LOSSY = more than 0.1 % lost; the HEADLINE is last)"
"$SLIM_LOADTEST" summarize "$RESULTS_FILE"
if [ -n "${RESULTS:-}" ]; then cp "$RESULTS_FILE" "$RESULTS" && echo "JSON lines copied to $RESULTS"; fi
if [ -n "${PLOTS:-}" ]; then
  mkdir -p "$PLOTS"
  if has throughput; then
    # Sizes 1 -> 1: deliveries/s against payload size, each point with its loss.
    case ",$THROUGHPUT_ROWS," in *,1:*)
      "$SLIM_LOADTEST" plot "$RESULTS_FILE" --scenario "1->1 " --out "$PLOTS/throughput-sizes.svg" ;;
    esac
    for n in 100 1000; do
      case ",$THROUGHPUT_ROWS," in *,$n:16,*)
        "$SLIM_LOADTEST" plot "$RESULTS_FILE" --scenario "1->$n 16B multicast" \
          --out "$PLOTS/throughput-1to$n.svg" ;;
      esac
    done
  fi
  has slow-consumer && "$SLIM_LOADTEST" plot "$RESULTS_FILE" \
    --scenario "1->$((SC_READERS + 1)) 16B multicast, 1 stalled" --out "$PLOTS/slow-consumer.svg"
  has latency && "$SLIM_LOADTEST" plot "$RESULTS_FILE" --scenario "rr $LAT_RATE/s 16B" --out "$PLOTS/latency.svg"
  has connections && "$SLIM_LOADTEST" plot "$RESULTS_FILE" --scenario "connections $CONNS x $CONN_SUBS subs" \
    --out "$PLOTS/connect-latency.svg"
  echo "charts written to $PLOTS"
fi
