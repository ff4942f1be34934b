"""acme/eu-west/security-monitor (cluster A): detects CVEs, moderates security-incident.

Copy this file to write your own agent: it dials its cluster's node (outbound only, it
never listens), takes its identity from the SPIFFE Workload API ($SPIFFE_ENDPOINT_SOCKET),
creates or joins MLS channels by name, and reacts to what it reads, checking the sender's
SPIFFE ID before acting on anything. Each stdout line is JSON (see _common.py).

    python demo/agents/eu_monitor.py --node 127.0.0.1:4501
"""

from __future__ import annotations

import argparse
import asyncio

import slim_agents as slim

from _common import (CVE_PATCH, DRAIN_NODE, EVENT_SOURCE, HUMAN_REVIEW, SECURITY_INCIDENT,
                     Agent, describe, record, run, shown_option, text_field)

SERVICE = "acme/eu-west/security-monitor"
ADMISSION = ["spiffe://acme.example/*/agent/*", "spiffe://acme.example/ops/**"]


async def findings(agent: Agent) -> None:
    """CVE findings handed to us directly (not on a channel) by the cluster's event source."""
    async for msg in agent.app.messages():
        _, _, body = describe(msg.payload)
        record("direct", agent=agent.label, from_=msg.source, spiffe_id=msg.spiffe_id or "",
               body=body)
        if msg.spiffe_id != EVENT_SOURCE:
            agent.note(f"ignored a direct message from {shown_option(msg.spiffe_id)}: "
                       "not the cluster's event source")
            continue
        image = text_field(body, "image", "unknown")
        severity = text_field(body, "severity", "unknown")
        await agent.send(SECURITY_INCIDENT, "cve-detected",
                         f"CVE-2024-XXXX detected in {image} ({severity}) on {DRAIN_NODE}",
                         image=image, severity=severity, node=DRAIN_NODE)


async def react(agent: Agent, channel: str) -> None:
    """Closes the incident once remediation reports the drain complete."""
    async for kind, _spiffe_id, _body in agent.messages(channel):
        if channel == SECURITY_INCIDENT and kind == "drain-complete":
            await agent.send(SECURITY_INCIDENT, "incident-resolved",
                             "Incident resolved — CVE remediated")


async def main(args: argparse.Namespace) -> None:
    """Connects, sets up the channels, then watches the event source and every channel."""
    async with await slim.connect(args.node, SERVICE) as app:
        agent = Agent(app, SERVICE, args.work_ms)
        await agent.create(SECURITY_INCIDENT, ADMISSION)
        await agent.join(CVE_PATCH)
        await agent.join(HUMAN_REVIEW)
        agent.ready()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(findings(agent))
            for channel in list(agent.channels):
                tg.create_task(react(agent, channel))


if __name__ == "__main__":
    run(main, __doc__)
