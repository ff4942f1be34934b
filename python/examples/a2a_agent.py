"""An A2A agent over slim: the A2A SDK's own DefaultRequestHandler and an
AgentExecutor, served with `serve_a2a` instead of an HTTP app — reached by its
slim name, listening on no port. See a2a_client.py.

    SLIM_NODE=slim://127.0.0.1:4500 SPIFFE_ENDPOINT_SOCKET=unix:///tmp/patcher.sock \
        python python/examples/a2a_agent.py
"""

from __future__ import annotations

import asyncio

from a2a.helpers.proto_helpers import new_task
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types.a2a_pb2 import AgentCapabilities, AgentCard, AgentSkill, Part, TaskState

import slim_agents as slim
from slim_agents.a2a import caller_spiffe_id, serve_a2a

CARD = AgentCard(
    name="patcher", description="rolls an image out, node by node", version="1.0.0",
    capabilities=AgentCapabilities(streaming=True),
    default_input_modes=["text/plain"], default_output_modes=["text/plain"],
    skills=[AgentSkill(id="rolling-update", name="rolling update",
                       description="update an image on every node", tags=["remediation"])],
)


class Patcher(AgentExecutor):
    async def execute(self, context: RequestContext, event_queue) -> None:
        await event_queue.enqueue_event(new_task(
            context.task_id, context.context_id, TaskState.TASK_STATE_SUBMITTED,
            history=[context.message]))
        up = TaskUpdater(event_queue, context.task_id, context.context_id)
        image = context.get_user_input()
        print(f"task {context.task_id} from {caller_spiffe_id()}: {image}")
        for node in ("node-1", "node-2", "node-3"):
            await asyncio.sleep(0.5)
            await up.update_status(TaskState.TASK_STATE_WORKING,
                                   up.new_agent_message([Part(text=f"{node} on {image}")]))
        await up.complete(up.new_agent_message([Part(text=f"3 nodes on {image}")]))

    async def cancel(self, context: RequestContext, event_queue) -> None:
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


async def main() -> None:
    async with await slim.connect(name="acme/agents/patcher") as app:
        handler = DefaultRequestHandler(Patcher(), InMemoryTaskStore(), CARD)
        # was: uvicorn.run(Starlette(routes=create_jsonrpc_routes(handler, "/") + ...), port=9999)
        await serve_a2a(app, handler, CARD)


if __name__ == "__main__":
    asyncio.run(main())
