"""A2A over slim (slim_agents.a2a): the official A2A SDK's Client (through its
ClientFactory, only the transport swapped) and DefaultRequestHandler with an
AgentExecutor, over slim between agents with distinct SPIFFE identities,
through real nodes."""

import asyncio
import time
import uuid

import pytest

from conftest import TD

pytest.importorskip("a2a", reason="the A2A SDK is not installed (pip install 'a2a-sdk>=1.3,<2')")

from a2a.client import ClientConfig, ClientFactory  # noqa: E402
from a2a.client.errors import A2AClientError  # noqa: E402
from a2a.helpers.proto_helpers import new_task, new_text_message  # noqa: E402
from a2a.server.agent_execution import AgentExecutor, RequestContext  # noqa: E402
from a2a.server.request_handlers import DefaultRequestHandler  # noqa: E402
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater  # noqa: E402
from a2a.types.a2a_pb2 import (  # noqa: E402
    AgentCapabilities,
    AgentCard,
    AgentSkill,
    CancelTaskRequest,
    GetTaskRequest,
    Role,
    SendMessageRequest,
    TaskState,
)

ID_AGENT = f"{TD}/a2a/patcher"
ID_CALLER = f"{TD}/a2a/remediation"
T = 20  # bound of every single step


class StepExecutor(AgentExecutor):
    """"steps N": N working updates, then completed. "block": working, then waits
    until cancelled. Records who called (contextvar and call context)."""

    def __init__(self, slim_a2a, state: dict) -> None:
        self.slim_a2a = slim_a2a
        self.state = state

    async def execute(self, context: RequestContext, event_queue) -> None:
        self.state["callers"].append((self.slim_a2a.caller_spiffe_id(),
                                      context.call_context.user.user_name))
        if context.current_task is None:
            await event_queue.enqueue_event(new_task(
                context.task_id, context.context_id, TaskState.TASK_STATE_SUBMITTED,
                history=[context.message]))
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        text = context.get_user_input()
        if text.startswith("steps "):
            n = int(text.split()[1])
            for i in range(1, n + 1):
                await updater.update_status(TaskState.TASK_STATE_WORKING,
                                            message=updater.new_agent_message(
                                                [_text_part(f"step {i}/{n}")]))
            await updater.complete(updater.new_agent_message([_text_part(f"did {n} steps")]))
        elif text == "block":
            await updater.start_work()
            self.state["block_started"].set()
            try:
                await asyncio.Event().wait()
            finally:
                self.state["block_ended"].set()
        else:
            await updater.failed(updater.new_agent_message([_text_part(f"unknown: {text}")]))

    async def cancel(self, context: RequestContext, event_queue) -> None:
        self.state["cancel_seen"].append(context.task_id)
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


def _text_part(text: str):
    from a2a.types.a2a_pb2 import Part  # noqa: PLC0415
    return Part(text=text)


def make_card(name: str) -> AgentCard:
    return AgentCard(
        name="patcher", description="applies patches, step by step", version="1.0.0",
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"], default_output_modes=["text/plain"],
        skills=[AgentSkill(id="patch", name="patch", description="patch a host",
                           tags=["remediation"])],
    )


def message(text: str) -> SendMessageRequest:
    msg = new_text_message(text, role=Role.ROLE_USER)
    msg.message_id = uuid.uuid4().hex
    return SendMessageRequest(message=msg)


@pytest.fixture
def slim_a2a(slim):
    import slim_agents.a2a as m  # noqa: PLC0415
    return m


@pytest.fixture
def agent_state():
    return {"callers": [], "cancel_seen": [], "block_started": asyncio.Event(),
            "block_ended": asyncio.Event()}


@pytest.fixture
async def agent(slim_a2a, connect, ns, agent_state):
    """An A2A agent served over slim as `t/<ns>/patcher` on node B (callers on A:
    every call crosses the federation link); yields its name."""
    name = f"t/{ns}/patcher"
    app = await connect(name, ID_AGENT, node="b")
    card = make_card(name)
    handler = DefaultRequestHandler(StepExecutor(slim_a2a, agent_state), InMemoryTaskStore(),
                                    card)
    task = asyncio.create_task(slim_a2a.serve_a2a(app, handler, card))
    try:
        yield name
    finally:
        task.cancel()
        try:
            await asyncio.wait_for(task, 15)
        except (asyncio.CancelledError, Exception):  # noqa: BLE001
            pass
        assert task.done()


async def make_client(slim_a2a, app, name):
    factory = ClientFactory(ClientConfig(supported_protocol_bindings=[slim_a2a.SLIM_BINDING]))
    slim_a2a.register(factory, app, timeout=T)
    card = await slim_a2a.get_agent_card(app, name, timeout=T)
    return factory.create(card)


@pytest.mark.federation
async def test_agent_card_by_name(slim_a2a, connect, ns, nodes, agent):
    caller = await connect(f"t/{ns}/caller", ID_CALLER)
    card = await slim_a2a.get_agent_card(caller, agent, timeout=T)
    assert card.name == "patcher"
    assert card.capabilities.streaming
    assert [s.id for s in card.skills] == ["patch"]
    slim_if = [i for i in card.supported_interfaces if i.protocol_binding == "SLIM"]
    assert [i.url for i in slim_if] == [agent]


@pytest.mark.federation
async def test_streamed_task_in_order_then_cancel_then_get(slim_a2a, connect, ns, nodes, agent,
                                                           agent_state):
    caller = await connect(f"t/{ns}/caller", ID_CALLER)
    client = await make_client(slim_a2a, caller, agent)

    # 1. a streamed task: the Task, >= 3 working updates in order, completed, end of stream
    events = []

    async def follow():
        async for ev in client.send_message(message("steps 4")):
            events.append(ev)

    await asyncio.wait_for(follow(), T)  # returns only at the end of the stream
    kinds = [ev.WhichOneof("payload") for ev in events]
    assert kinds[0] == "task", kinds
    updates = [ev.status_update for ev in events if ev.HasField("status_update")]
    working = [u.status.message.parts[0].text for u in updates
               if u.status.state == TaskState.TASK_STATE_WORKING]
    assert working == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]
    assert updates[-1].status.state == TaskState.TASK_STATE_COMPLETED
    task_id = events[0].task.id
    assert all(u.task_id == task_id for u in updates)
    # the executor saw the caller's proven SPIFFE ID both ways
    assert agent_state["callers"] == [(ID_CALLER, ID_CALLER)]

    # 2. get the finished task
    got = await asyncio.wait_for(client.get_task(GetTaskRequest(id=task_id)), T)
    assert got.id == task_id and got.status.state == TaskState.TASK_STATE_COMPLETED

    # 3. a second task, cancelled while it works: the executor sees the cancel,
    # the client gets the canceled state, and the stream ends cleanly
    second_events = []
    second_id: asyncio.Future = asyncio.get_running_loop().create_future()

    async def follow_second():
        async for ev in client.send_message(message("block")):
            second_events.append(ev)
            if ev.HasField("task") and not second_id.done():
                second_id.set_result(ev.task.id)

    streaming = asyncio.create_task(follow_second())
    await asyncio.wait_for(agent_state["block_started"].wait(), T)
    tid = await asyncio.wait_for(second_id, T)
    assert tid != task_id
    cancelled = await asyncio.wait_for(client.cancel_task(CancelTaskRequest(id=tid)), T)
    assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
    await asyncio.wait_for(agent_state["block_ended"].wait(), T)
    assert agent_state["cancel_seen"] == [tid]
    await asyncio.wait_for(streaming, T)  # the stream ended after the canceled state
    last = [ev.status_update.status.state for ev in second_events if ev.HasField("status_update")]
    assert last[-1] == TaskState.TASK_STATE_CANCELED, last
    got = await asyncio.wait_for(client.get_task(GetTaskRequest(id=tid)), T)
    assert got.status.state == TaskState.TASK_STATE_CANCELED
    await client.close()


async def test_non_streaming_send_and_unknown_task(slim_a2a, connect, ns, agent):
    """With streaming off the SDK uses SendMessage (unary); an unknown task is the
    SDK's own TaskNotFoundError."""
    from a2a.utils.errors import TaskNotFoundError  # noqa: PLC0415

    caller = await connect(f"t/{ns}/caller", ID_CALLER)
    factory = ClientFactory(ClientConfig(streaming=False,
                                         supported_protocol_bindings=[slim_a2a.SLIM_BINDING]))
    slim_a2a.register(factory, caller, timeout=T)
    client = factory.create(await slim_a2a.get_agent_card(caller, agent, timeout=T))
    [ev] = [ev async for ev in client.send_message(message("steps 3"))]
    assert ev.task.status.state == TaskState.TASK_STATE_COMPLETED
    with pytest.raises(TaskNotFoundError):
        await asyncio.wait_for(client.get_task(GetTaskRequest(id="no-such-task")), T)


async def test_unknown_agent_is_a_clear_error_within_the_deadline(slim, slim_a2a, connect, ns):
    caller = await connect(f"t/{ns}/caller", ID_CALLER)
    t0 = time.monotonic()
    with pytest.raises(A2AClientError) as err:
        await slim_a2a.get_agent_card(caller, f"t/{ns}/nobody", timeout=5)
    assert time.monotonic() - t0 < 10
    assert isinstance(err.value.__cause__, (slim.NoRouteError, slim.TimeoutError))
    assert f"t/{ns}/nobody" in str(err.value)


async def test_subscribe_to_a_running_task(slim_a2a, connect, ns, agent, agent_state):
    """A second caller re-attaches to a running task (SubscribeToTask) and sees it
    end canceled; leaving the first stream early does not cancel the task."""
    from a2a.types.a2a_pb2 import SubscribeToTaskRequest  # noqa: PLC0415

    first = await make_client(slim_a2a, await connect(f"t/{ns}/first", ID_CALLER), agent)
    second = await make_client(slim_a2a, await connect(f"t/{ns}/second", ID_CALLER), agent)

    async def start() -> str:
        async for ev in first.send_message(message("block")):
            if ev.HasField("task"):
                return ev.task.id  # leaves the stream: its session closes
        raise AssertionError("no task")

    tid = await asyncio.wait_for(start(), T)
    await asyncio.wait_for(agent_state["block_started"].wait(), T)
    seen = []

    async def follow():
        async for ev in second.subscribe(SubscribeToTaskRequest(id=tid)):
            seen.append(ev)
            if len(seen) == 1:
                await second.cancel_task(CancelTaskRequest(id=tid))

    await asyncio.wait_for(follow(), T)  # ends with the stream
    assert seen[0].HasField("task") and seen[0].task.id == tid
    assert seen[0].task.status.state == TaskState.TASK_STATE_WORKING
    assert seen[-1].status_update.status.state == TaskState.TASK_STATE_CANCELED
    assert agent_state["cancel_seen"] == [tid]
