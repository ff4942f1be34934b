"""acme/eu-west/remediation (cluster A): patches, moderates cve-patch, escalates.

Tries a rolling update when a CVE is reported; it fails (the node is tainted), so it asks
for a human decision on human-review, and drains the node once an operator approves —
only an operator's decision (a SPIFFE ID under spiffe://acme.example/ops/, as MLS proved
it) is acted on.

    python demo/agents/eu_remediation.py --node 127.0.0.1:4501
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import slim_agents as slim

from _common import (CVE_PATCH, DRAIN_NODE, HUMAN_REVIEW, OPERATORS, SECURITY_INCIDENT,
                     Agent, field, run, shown, text_field)

SERVICE = "acme/eu-west/remediation"
ADMISSION = ["spiffe://acme.example/cluster-a/agent/*"]


async def patch(agent: Agent) -> None:
    """Flow A: the rolling update, which fails and escalates (Flow B)."""
    text = "Attempting rolling update to nginx:1.25"
    action = {"action": "rolling-update", "target": "nginx:1.25"}
    await agent.send(CVE_PATCH, "patch-attempt", text, **action)
    await agent.send(SECURITY_INCIDENT, "patch-attempt", text, **action)
    await agent.pause()
    await agent.send(SECURITY_INCIDENT, "patch-failed",
                     "Node tainted, cannot auto-patch — escalating")
    await agent.send(HUMAN_REVIEW, "escalation",
                     f"Escalation requested: node-drain required on {DRAIN_NODE}",
                     reason="cannot-auto-patch", severity="CRITICAL", node=DRAIN_NODE)


async def drain(agent: Agent, spiffe_id: str, decision: Any) -> None:
    """Flow B: drains the node, if an operator approved it."""
    if not spiffe_id.startswith(OPERATORS):
        agent.note(f"ignored a decision from {spiffe_id}: not an operator")
        return
    if field(decision, "decision") != "APPROVE_DRAIN":
        agent.note(f"decision {shown(field(decision, 'decision'))} is not an approval")
        return
    node = text_field(decision, "node", DRAIN_NODE)
    await agent.send(SECURITY_INCIDENT, "drain-started",
                     f"Node drain initiated on {node} (approved by {spiffe_id})", node=node)
    await agent.pause()
    await agent.send(SECURITY_INCIDENT, "drain-complete",
                     "Drain complete, workloads rescheduled", node=node)


async def react(agent: Agent, channel: str) -> None:
    """Patches on a CVE report, drains on an operator's approval."""
    async for kind, spiffe_id, body in agent.messages(channel):
        if channel == SECURITY_INCIDENT and kind == "cve-detected":
            await patch(agent)
        elif channel == HUMAN_REVIEW and kind == "decision":
            await drain(agent, spiffe_id, body)


async def main(args: argparse.Namespace) -> None:
    """Connects, sets up the channels, then reacts to every channel."""
    async with await slim.connect(args.node, SERVICE) as app:
        agent = Agent(app, SERVICE, args.work_ms)
        await agent.create(CVE_PATCH, ADMISSION)
        await agent.join(SECURITY_INCIDENT)
        await agent.join(HUMAN_REVIEW)
        agent.ready()
        async with asyncio.TaskGroup() as tg:
            for channel in list(agent.channels):
                tg.create_task(react(agent, channel))


if __name__ == "__main__":
    run(main, __doc__)
