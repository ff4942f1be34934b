"""An MCP tool server reached over slim: it dials out to its node (no listening
port, fine behind NAT) and serves the tools of a FastMCP server to every
point-to-point session opened to its name. Each tool can see who calls it:
`caller_spiffe_id()` is the client's SPIFFE ID, MLS-proven when the client
opened the session with MLS (the default of `slim_client`).

    SLIM_NODE=slim://127.0.0.1:4500 SPIFFE_ENDPOINT_SOCKET=unix:///tmp/server.sock \
        python python/examples/mcp_server.py [acme/tools/cve-db]

Run several copies under the same name to spread clients over them (anycast).
Then python/examples/mcp_client.py calls it. Needs `pip install 'slim-agents[mcp]'`.
"""

# No `from __future__ import annotations`: older FastMCP cannot resolve a string
# annotation `Context` on a tool parameter.
import asyncio
import logging
import sys

from mcp.server.fastmcp import Context, FastMCP

import slim_agents as slim
from slim_agents.mcp import caller_spiffe_id, serve

SERVICE = sys.argv[1] if len(sys.argv) > 1 else "acme/tools/cve-db"
# Who may call which tool: SPIFFE-ID prefixes (your policy source goes here).
REMEDIATORS = ("spiffe://acme.example/agent/",)

tools = FastMCP("cve-db")

CVES = {"CVE-2024-3094": "xz backdoor (critical)", "CVE-2021-44228": "log4shell (critical)"}


@tools.tool()
def lookup(cve: str) -> str:
    """Describes a CVE. Any authenticated caller may read."""
    return CVES.get(cve, "unknown CVE")


@tools.tool()
async def scan(images: list[str], ctx: Context) -> str:
    """Scans container images, reporting progress. Remediators only."""
    who = caller_spiffe_id()  # None outside a slim session: fail closed
    if who is None or not who.startswith(REMEDIATORS):
        raise PermissionError(f"{who} may not scan")
    found = []
    for i, image in enumerate(images, 1):
        await ctx.report_progress(i, len(images), f"scanned {image}")
        if image.endswith(":1.21"):
            found.append(f"{image}: CVE-2021-44228")
    return "\n".join(found) or "clean"


async def main() -> None:
    async with await slim.connect(name=SERVICE) as app:
        print(f"serving MCP tools as {app.name} ({app.spiffe_id})", flush=True)
        await serve(app, tools)  # until Ctrl-C


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
