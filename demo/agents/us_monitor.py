"""acme/us-east/security-monitor (cluster B): cross-region correlation.

Joins security-incident (its moderator runs in cluster A, behind a VPN: the nodes carry
the join across clusters) and confirms when a reported image also runs in US-East.

    python demo/agents/us_monitor.py --node 127.0.0.1:4502
"""

from __future__ import annotations

import argparse
import asyncio

import slim_agents as slim

from _common import SECURITY_INCIDENT, Agent, run, text_field

SERVICE = "acme/us-east/security-monitor"


async def react(agent: Agent, channel: str) -> None:
    """Flow A: cross-cluster correlation of a reported CVE."""
    async for kind, _spiffe_id, body in agent.messages(channel):
        if channel == SECURITY_INCIDENT and kind == "cve-detected":
            image = text_field(body, "image", "the image")
            await agent.send(SECURITY_INCIDENT, "correlation",
                             f"Confirmed affected: us-east-3 also running {image}",
                             also_affected=["us-east-3"])


async def main(args: argparse.Namespace) -> None:
    """Connects, joins security-incident, then reacts to it."""
    async with await slim.connect(args.node, SERVICE) as app:
        agent = Agent(app, SERVICE, args.work_ms)
        await agent.join(SECURITY_INCIDENT)
        agent.ready()
        async with asyncio.TaskGroup() as tg:
            for channel in list(agent.channels):
                tg.create_task(react(agent, channel))


if __name__ == "__main__":
    run(main, __doc__)
