"""acme/us-east/cve-db (cluster B): an MCP tool server — CVE lookup and runbooks.

A FastMCP server (the official MCP Python SDK) served over slim instead of a port: it
dials out to its node like any agent and is reached by name. Its tools authorize their
caller by the SPIFFE ID that MLS proved (admin agents only).

    python demo/agents/cve_tools.py --node 127.0.0.1:4502
"""

from __future__ import annotations

import argparse
import asyncio

import slim_agents as slim
from slim_agents.mcp import caller_spiffe_id, serve

try:  # mcp 1.x
    from mcp.server.fastmcp import FastMCP
    from mcp.server.fastmcp.exceptions import ToolError
except ImportError:  # mcp 2.x renamed FastMCP to MCPServer
    from mcp.server.mcpserver import MCPServer as FastMCP  # type: ignore[no-redef]
    from mcp.server.mcpserver.exceptions import ToolError  # type: ignore[no-redef]

from _common import Agent, run, to_json

SERVICE = "acme/us-east/cve-db"
ALLOWED = "spiffe://acme.example/admin/agent/"

ADVISORIES = {
    "nginx:1.21": {"cve": "CVE-2021-23017", "severity": "critical", "fixed_in": "nginx:1.25",
                   "summary": "resolver off-by-one: remote code execution"},
}
RUNBOOKS = {
    "cannot-auto-patch": ["cordon the node", "drain it (operator approval)",
                          "reschedule workloads", "patch and uncordon"],
}


def authorize() -> str:
    who = caller_spiffe_id()
    if who is None or not who.startswith(ALLOWED):
        raise ToolError(f"{who} may not use cve-db (admin agents only)")
    return who


def make_tools(agent: Agent) -> FastMCP:
    tools = FastMCP("cve-db")

    @tools.tool()
    def lookup(image: str) -> str:
        """The advisory for a container image (JSON)."""
        who = authorize()
        advisory = ADVISORIES.get(image)
        if advisory is None:
            raise ToolError(f"no advisory for {image}")
        agent.note(f"lookup({image}) for {who}")
        return to_json({"image": image, **advisory})

    @tools.tool()
    def runbook(reason: str) -> str:
        """The runbook's steps for an escalation reason (JSON list)."""
        authorize()
        return to_json(RUNBOOKS.get(reason, ["page the operator"]))

    return tools


async def main(args: argparse.Namespace) -> None:
    """Connects and serves the tools until stopped."""
    async with await slim.connect(args.node, SERVICE) as app:
        agent = Agent(app, SERVICE, args.work_ms)
        tools = make_tools(agent)
        server = asyncio.create_task(serve(app, tools))
        await asyncio.sleep(0)  # serving: sessions opened from now on are taken
        agent.note("serving MCP tools lookup, runbook (no port: reached by name)")
        agent.ready()
        await server


if __name__ == "__main__":
    run(main, __doc__)
