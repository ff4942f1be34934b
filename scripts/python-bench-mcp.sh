#!/usr/bin/env bash
# MCP tool calls: slim_agents.mcp through one slim-node vs the same FastMCP server
# over the MCP SDK's streamable-HTTP transport on loopback vs the reference SLIM's
# slim-mcp (python/bench/mcp_bench.py); prints JSON lines, then a markdown table.
#   scripts/python-bench-mcp.sh [--calls 2000] [--seconds 5]
# Environment:
#   SLIM_VENV          the venv with slim_agents and mcp (default ~/.cache/slim-venv)
#   SLIM_MCP_REF_VENV  venv for the reference, created if missing (default
#                      ~/.cache/slim-mcp-ref-venv): slim-mcp pins mcp==1.26 and
#                      slim-bindings~=1.4, which cannot share a venv with ours
#   SLIM_MCP_REF_SPEC  pip spec of the reference (default "slim-mcp==0.2.3")
#   SLIM_NODE_BIN / SLIMCTL_BIN, or CARGO_TARGET_DIR: slim-node and slimctl
#                      (prefer release builds: --release everywhere, as the reference is)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SLIM_VENV:-$HOME/.cache/slim-venv}"
REF="${SLIM_MCP_REF_VENV:-$HOME/.cache/slim-mcp-ref-venv}"
SPEC="${SLIM_MCP_REF_SPEC:-slim-mcp==0.2.3}"
export PIP_CACHE_DIR="${PIP_CACHE_DIR:-$HOME/.cache/pip}" PIP_DISABLE_PIP_VERSION_CHECK=1
if [ ! -x "$REF/bin/python" ]; then
  echo "== creating $REF for the reference ($SPEC)" >&2
  python3 -m venv "$REF"
fi
"$REF/bin/python" -c 'import slim_mcp' 2>/dev/null || "$REF/bin/python" -m pip install -q "$SPEC"
OUT="$(mktemp)"
trap 'rm -f "$OUT"' EXIT
"$VENV/bin/python" python/bench/mcp_bench.py --sides ours,http "$@" | tee -a "$OUT"
"$REF/bin/python" python/bench/mcp_bench.py --sides ref "$@" 2>/dev/null | tee -a "$OUT"
"$VENV/bin/python" python/bench/mcp_bench.py _table < "$OUT"
