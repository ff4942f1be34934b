"""acme/admin/escalation-handler (admin cluster): moderates human-review, pages the operator.

When remediation escalates, it loads the runbook and asks a human for approval on
human-review; it records a decision only if it comes from an operator (a SPIFFE ID under
spiffe://acme.example/ops/, as MLS proved it).

    python demo/agents/escalation_handler.py --node 127.0.0.1:4500
"""

from __future__ import annotations

import argparse
import asyncio

import slim_agents as slim

from _common import (APPROVAL, DRAIN_NODE, HUMAN_REVIEW, OPERATORS, Agent, field, run,
                     shown)

SERVICE = "acme/admin/escalation-handler"
ADMISSION = ["spiffe://acme.example/cluster-a/agent/*", "spiffe://acme.example/ops/**"]


async def react(agent: Agent, channel: str) -> None:
    """Flow B: prepares the runbook and asks a human; records the operator's decision."""
    async for kind, spiffe_id, body in agent.messages(channel):
        if channel != HUMAN_REVIEW:
            continue
        if kind == "escalation":
            await agent.send(HUMAN_REVIEW, "runbook", "Runbook loaded, paging operator")
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
