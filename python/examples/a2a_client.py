"""An A2A client over slim: the A2A SDK's ClientFactory and Client, with the
slim transport registered and the agent card fetched by name instead of from
`https://…/.well-known/agent-card.json`. See a2a_agent.py.

    SLIM_NODE=slim://127.0.0.1:4500 SPIFFE_ENDPOINT_SOCKET=unix:///tmp/remediation.sock \
        python python/examples/a2a_client.py [acme/agents/patcher]
"""

from __future__ import annotations

import asyncio
import sys
import uuid

from a2a.client import ClientConfig, ClientFactory
from a2a.helpers.proto_helpers import new_text_message
from a2a.types.a2a_pb2 import Role, SendMessageRequest, TaskState

import slim_agents as slim
from slim_agents import a2a as slim_a2a

AGENT = sys.argv[1] if len(sys.argv) > 1 else "acme/agents/patcher"


async def main() -> None:
    async with await slim.connect(name="acme/agents/remediation") as app:
        # was: client = await ClientFactory(ClientConfig()).create_from_url("https://patcher")
        factory = ClientFactory(ClientConfig(supported_protocol_bindings=[slim_a2a.SLIM_BINDING]))
        slim_a2a.register(factory, app)
        client = factory.create(await slim_a2a.get_agent_card(app, AGENT))
        msg = new_text_message("nginx:1.25", role=Role.ROLE_USER)
        msg.message_id = uuid.uuid4().hex
        async for event in client.send_message(SendMessageRequest(message=msg)):
            if event.HasField("task"):
                print("task", event.task.id, TaskState.Name(event.task.status.state))
            elif event.HasField("status_update"):
                status = event.status_update.status
                print(" ", TaskState.Name(status.state),
                      "".join(p.text for p in status.message.parts))


if __name__ == "__main__":
    asyncio.run(main())
