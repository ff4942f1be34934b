"""acme/eu-west/remediation (cluster A): patches, moderates cve-patch, escalates.

Tries a rolling update when a CVE is reported (handed to the patcher agent over A2A,
following its streamed status); it fails (the node is tainted), so it asks
for a human decision on human-review, and drains the node once an operator approves —
only an operator's decision (a SPIFFE ID under spiffe://acme.example/ops/, as MLS proved
it) is acted on.

    python demo/agents/eu_remediation.py --node 127.0.0.1:4501
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from typing import Any

import slim_agents as slim

from _common import (CVE_PATCH, DRAIN_NODE, HUMAN_REVIEW, OPERATORS, SECURITY_INCIDENT,
                     Agent, field, run, shown, text_field)

SERVICE = "acme/eu-west/remediation"
PATCHER = "acme/eu-west/patcher"
"""The A2A agent that rolls out updates (demo/agents/patcher.py), reached by name."""
ADMISSION = ["spiffe://acme.example/cluster-a/agent/*"]


async def patch(agent: Agent) -> None:
    """Flow A: the rolling update, which fails and escalates (Flow B)."""
    text = "Attempting rolling update to nginx:1.25"
    action = {"action": "rolling-update", "target": "nginx:1.25"}
    await agent.send(CVE_PATCH, "patch-attempt", text, **action)
    await agent.send(SECURITY_INCIDENT, "patch-attempt", text, **action)
    if not await hand_to_patcher(agent, action["target"]):
        await agent.pause()
    await agent.send(SECURITY_INCIDENT, "patch-failed",
                     "Node tainted, cannot auto-patch — escalating")
    await agent.send(HUMAN_REVIEW, "escalation",
                     f"Escalation requested: node-drain required on {DRAIN_NODE}",
                     reason="cannot-auto-patch", severity="CRITICAL", node=DRAIN_NODE)


async def hand_to_patcher(agent: Agent, image: str) -> bool:
    """Hands the rolling update to the patcher agent over A2A (the A2A SDK's own client,
    slim's transport) and follows its streamed status; False if that failed."""
    try:  # only this flow needs the A2A SDK (without it the patch goes on, noted)
        from a2a.client import ClientConfig, ClientFactory  # noqa: PLC0415
        from a2a.helpers.proto_helpers import new_text_message  # noqa: PLC0415
        from a2a.types.a2a_pb2 import Role, SendMessageRequest, TaskState  # noqa: PLC0415
        from slim_agents import a2a as slim_a2a  # noqa: PLC0415
    except ImportError as e:
        agent.note(f"no A2A SDK here ({e}): patching without {PATCHER}")
        return False

    factory = ClientFactory(ClientConfig(supported_protocol_bindings=[slim_a2a.SLIM_BINDING]))
    slim_a2a.register(factory, agent.app, timeout=10)
    try:
        client = factory.create(await slim_a2a.get_agent_card(agent.app, PATCHER, timeout=10))
        msg = new_text_message(image, role=Role.ROLE_USER)
        msg.message_id = uuid.uuid4().hex
        task_id, states, last = "", [], ""
        async for event in client.send_message(SendMessageRequest(message=msg)):
            if event.HasField("task"):
                task_id = event.task.id
                states.append(TaskState.Name(event.task.status.state))
            elif event.HasField("status_update"):
                status = event.status_update.status
                states.append(TaskState.Name(status.state))
                last = "".join(p.text for p in status.message.parts)
    except Exception as e:  # noqa: BLE001 - the scenario goes on without the patcher
        agent.note(f"A2A task to {PATCHER} failed: {type(e).__name__}: {e}")
        return False
    shown_states = [s.removeprefix("TASK_STATE_").lower() for s in states]
    agent.called("a2a", PATCHER, "SendStreamingMessage",
                 f"A2A task {task_id[:8]} to patcher: {' → '.join(shown_states)} ({last})",
                 steps=shown_states)
    return True


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
