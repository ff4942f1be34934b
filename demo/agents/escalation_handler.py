"""acme/admin/escalation-handler (admin cluster): moderates human-review, pages the operator.

When remediation escalates, it looks the CVE and the runbook up with the MCP tool server
cve-db in cluster B (demo/agents/cve_tools.py), then asks a human for approval on
human-review; it records a decision only if it comes from an operator (a SPIFFE ID under
spiffe://acme.example/ops/, as MLS proved it).

    python demo/agents/escalation_handler.py --node 127.0.0.1:4500
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import slim_agents as slim

from _common import (APPROVAL, DRAIN_NODE, HUMAN_REVIEW, OPERATORS, Agent, field, run,
                     shown, text_field)

SERVICE = "acme/admin/escalation-handler"
ADMISSION = ["spiffe://acme.example/cluster-a/agent/*", "spiffe://acme.example/ops/**"]
CVE_DB = "acme/us-east/cve-db"
"""The MCP tool server in cluster B (demo/agents/cve_tools.py), reached by name."""
IMAGE = "nginx:1.21"


async def consult_cve_db(agent: Agent, reason: str) -> dict[str, Any]:
    """Calls the MCP tools lookup and runbook of cve-db (cluster B) with the official MCP
    client over slim; returns what the runbook message carries ({} if it failed)."""
    try:  # only this flow needs the MCP SDK (without it the escalation goes on, noted)
        from mcp import ClientSession  # noqa: PLC0415
        from slim_agents.mcp import slim_client  # noqa: PLC0415
    except ImportError as e:
        agent.note(f"no MCP SDK here ({e}): not consulting {CVE_DB}")
        return {}

    async def call() -> dict[str, Any]:
        async with slim_client(agent.app, CVE_DB, timeout=10) as (read, write):
            async with ClientSession(read, write) as mcp:
                await mcp.initialize()
                advisory = json.loads(_text(await mcp.call_tool("lookup", {"image": IMAGE})))
                steps = json.loads(_text(await mcp.call_tool("runbook", {"reason": reason})))
                return {"advisory": advisory, "runbook": steps}

    # The tool server's name may not have reached this cluster's node yet: retry a
    # missing route for a while (bounded), as a client of a starting service does.
    for attempt in range(20):
        try:
            got = await asyncio.wait_for(call(), 30)
            break
        except slim.NoRouteError as e:
            if attempt == 19:
                agent.note(f"MCP {CVE_DB}: {e}")
                return {}
            await asyncio.sleep(0.5)
        except Exception as e:  # noqa: BLE001 - the escalation goes on without the tool
            agent.note(f"MCP call to {CVE_DB} failed: {type(e).__name__}: {e}")
            return {}
    a = got["advisory"]
    agent.called("mcp", CVE_DB, "cve-db/lookup",
                 f"called MCP tool cve-db/lookup on cluster B: {a['cve']} ({a['severity']}) "
                 f"in {a['image']}, fixed in {a['fixed_in']}; runbook: {len(got['runbook'])} steps")
    return got


def _text(result: Any) -> str:
    if getattr(result, "is_error", None) or getattr(result, "isError", None):
        raise RuntimeError("tool error: " + "".join(getattr(c, "text", "") for c in result.content))
    return "".join(getattr(c, "text", "") for c in result.content)


async def react(agent: Agent, channel: str) -> None:
    """Flow B: prepares the runbook and asks a human; records the operator's decision."""
    async for kind, spiffe_id, body in agent.messages(channel):
        if channel != HUMAN_REVIEW:
            continue
        if kind == "escalation":
            found = await consult_cve_db(agent, text_field(body, "reason", "cannot-auto-patch"))
            await agent.send(HUMAN_REVIEW, "runbook", "Runbook loaded, paging operator", **found)
            await agent.send(HUMAN_REVIEW, "approval-required",
                             f"[APPROVAL REQUIRED] drain {DRAIN_NODE}: reply with {APPROVAL}",
                             node=DRAIN_NODE)
        elif kind == "decision" and spiffe_id.startswith(OPERATORS):
            await agent.send(HUMAN_REVIEW, "decision-recorded",
                             f"Decision {shown(field(body, 'decision'))} recorded from {spiffe_id}")


async def main(args: argparse.Namespace) -> None:
    """Connects, creates human-review, then reacts to it."""
    async with await slim.connect(args.node, SERVICE) as app:
        agent = Agent(app, SERVICE, args.work_ms)
        await agent.create(HUMAN_REVIEW, ADMISSION)
        agent.ready()
        async with asyncio.TaskGroup() as tg:
            for channel in list(agent.channels):
                tg.create_task(react(agent, channel))


if __name__ == "__main__":
    run(main, __doc__)
