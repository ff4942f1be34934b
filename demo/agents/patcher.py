"""acme/eu-west/patcher (cluster A): an A2A agent that rolls out image updates.

An AgentExecutor served with the A2A SDK's own DefaultRequestHandler over slim (no port):
remediation hands it a task and follows its streamed status. It accepts tasks only from
cluster A's agents (the caller's SPIFFE ID, proven by MLS).

    python demo/agents/patcher.py --node 127.0.0.1:4501
"""

from __future__ import annotations

import argparse
import asyncio

import slim_agents as slim
from a2a.helpers.proto_helpers import new_task
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types.a2a_pb2 import (AgentCapabilities, AgentCard, AgentSkill, Part,
                               TaskState)
from slim_agents.a2a import caller_spiffe_id, serve_a2a

from _common import DRAIN_NODE, Agent, run

SERVICE = "acme/eu-west/patcher"
ALLOWED = "spiffe://acme.example/cluster-a/agent/"
HEALTHY = ["eu-west-7-node-1", "eu-west-7-node-2"]

CARD = AgentCard(
    name="patcher", description="rolls out container image updates, node by node",
    version="1.0.0", capabilities=AgentCapabilities(streaming=True),
    default_input_modes=["text/plain"], default_output_modes=["text/plain"],
    skills=[AgentSkill(id="rolling-update", name="rolling update",
                       description="update an image on every node of the cluster",
                       tags=["remediation"])],
)


class Patcher(AgentExecutor):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def execute(self, context: RequestContext, event_queue) -> None:
        if context.current_task is None:
            await event_queue.enqueue_event(new_task(
                context.task_id, context.context_id, TaskState.TASK_STATE_SUBMITTED,
                history=[context.message]))
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)

        def say(text: str):
            return updater.new_agent_message([Part(text=text)])

        who = caller_spiffe_id()
        if who is None or not who.startswith(ALLOWED):
            await updater.reject(say(f"{who} may not hand tasks to the patcher"))
            return
        target = context.get_user_input() or "the new image"
        step = self.agent.work / 3
        await updater.update_status(TaskState.TASK_STATE_WORKING, say(f"pulling {target}"))
        for node in HEALTHY:
            await asyncio.sleep(step)
            await updater.update_status(TaskState.TASK_STATE_WORKING,
                                        say(f"{node} updated to {target}"))
        await asyncio.sleep(step)
        await updater.update_status(TaskState.TASK_STATE_WORKING,
                                    say(f"{DRAIN_NODE} tainted: its pods cannot be rescheduled"))
        await updater.complete(say(f"{len(HEALTHY)}/3 nodes on {target}; {DRAIN_NODE} "
                                   "needs a drain"))

    async def cancel(self, context: RequestContext, event_queue) -> None:
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


async def main(args: argparse.Namespace) -> None:
    """Connects and serves A2A tasks until stopped."""
    async with await slim.connect(args.node, SERVICE) as app:
        agent = Agent(app, SERVICE, args.work_ms)
        handler = DefaultRequestHandler(Patcher(agent), InMemoryTaskStore(), CARD)
        server = asyncio.create_task(serve_a2a(app, handler, CARD))
        await asyncio.sleep(0)
        agent.note("serving A2A (agent card by name; no port)")
        agent.ready()
        await server


if __name__ == "__main__":
    run(main, __doc__)
