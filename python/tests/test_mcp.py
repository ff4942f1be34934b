"""MCP over slim (slim_agents.mcp): the official MCP SDK's ClientSession and FastMCP,
unchanged, over a reliable point-to-point slim session between two agents with
distinct SPIFFE identities, through a real node."""

# No `from __future__ import annotations`: FastMCP before 1.1x cannot resolve a
# string annotation `Context` of a tool parameter.
import asyncio
import importlib.metadata
import json

import pytest

from conftest import TD

mcp = pytest.importorskip("mcp", reason="the MCP SDK is not installed (pip install 'mcp>=1.10,<3')")

from mcp import ClientSession  # noqa: E402
try:  # mcp 1.x
    from mcp.server.fastmcp import Context, FastMCP
    from mcp.server.fastmcp.exceptions import ToolError
except ImportError:  # mcp 2.x renamed FastMCP to MCPServer
    from mcp.server.mcpserver import Context  # type: ignore[no-redef]
    from mcp.server.mcpserver import MCPServer as FastMCP  # type: ignore[no-redef]
    from mcp.server.mcpserver.exceptions import ToolError  # type: ignore[no-redef]
try:
    from mcp.shared.exceptions import McpError
except ImportError:  # mcp 2.x
    from mcp.shared.exceptions import MCPError as McpError  # type: ignore[no-redef]

SDK_VERSION = tuple(int(p) for p in importlib.metadata.version("mcp").split(".")[:2])

ID_SERVER = f"{TD}/mcp/tool-server"
ID_CLIENT_A = f"{TD}/mcp/client-a"
ID_CLIENT_B = f"{TD}/mcp/client-b"
T = 20  # bound of every single step


def make_tools(slim_mcp, state: dict) -> FastMCP:
    tools = FastMCP("slim-test-tools")

    @tools.tool()
    def whoami(ctx: Context) -> str:
        """The caller's SPIFFE ID, as the contextvar and the request context see it."""
        via_ctx = ctx.request_context.request
        return json.dumps({
            "contextvar": slim_mcp.caller_spiffe_id(),
            "request": via_ctx.spiffe_id if via_ctx is not None else None,
            "mls": slim_mcp.caller().mls,
        })

    @tools.tool()
    async def count(n: int, ctx: Context) -> str:
        """Reports progress n times, then returns."""
        for i in range(1, n + 1):
            await ctx.report_progress(i, n, f"step {i}")
        return f"counted to {n}"

    @tools.tool()
    def fail(why: str) -> str:
        """Always fails."""
        # ToolError: its message reaches the client (mcp 2 hides other exceptions')
        raise ToolError(f"refused: {why}")

    @tools.tool()
    def only_a() -> str:
        """Authorizes its caller by SPIFFE ID."""
        if slim_mcp.caller_spiffe_id() != ID_CLIENT_A:
            raise ToolError(f"{slim_mcp.caller_spiffe_id()} may not call only_a")
        return "welcome, a"

    @tools.tool()
    def big(n: int) -> str:
        """A result larger than one session message."""
        return "x" * n

    @tools.tool()
    async def block(ctx: Context) -> str:
        """Waits until cancelled."""
        state["block_started"].set()
        try:
            await asyncio.Event().wait()
        finally:
            state["block_ended"].set()
        return "unreachable"

    return tools


@pytest.fixture
def slim_mcp(slim):
    import slim_agents.mcp as m  # noqa: PLC0415
    return m


@pytest.fixture
def tool_state():
    """Events the server's tools set (the server runs in the test's event loop)."""
    return {"block_started": asyncio.Event(), "block_ended": asyncio.Event()}


@pytest.fixture
async def tool_server(slim_mcp, connect, ns, tool_state):
    """A FastMCP server served over slim as `t/<ns>/tools`; yields the service name."""
    app = await connect(f"t/{ns}/tools", ID_SERVER)
    task = asyncio.create_task(slim_mcp.serve(app, make_tools(slim_mcp, tool_state)))
    try:
        yield f"t/{ns}/tools"
    finally:
        task.cancel()
        try:
            await asyncio.wait_for(task, 15)
        except (asyncio.CancelledError, Exception):  # noqa: BLE001
            pass
        assert task.done()


def is_error(result) -> bool:
    # mcp 2.x names the fields in snake_case (is_error), 1.x as on the wire (isError)
    return bool(getattr(result, "is_error", None) if hasattr(result, "is_error")
                else result.isError)


def server_info(init):
    return init.server_info if hasattr(init, "server_info") else init.serverInfo


def text(result) -> str:
    return "".join(c.text for c in result.content if getattr(c, "type", None) == "text")


async def test_initialize_list_call_progress_error(slim_mcp, connect, ns, tool_server):
    client = await connect(f"t/{ns}/client", ID_CLIENT_A)
    async with slim_mcp.slim_client(client, tool_server, timeout=T) as (read, write):
        async with ClientSession(read, write) as session:
            init = await asyncio.wait_for(session.initialize(), T)
            assert server_info(init).name == "slim-test-tools"

            listed = await asyncio.wait_for(session.list_tools(), T)
            assert {t.name for t in listed.tools} >= {"whoami", "count", "fail", "only_a"}

            r = await asyncio.wait_for(session.call_tool("whoami", {}), T)
            who = json.loads(text(r))
            assert who == {"contextvar": ID_CLIENT_A, "request": ID_CLIENT_A, "mls": True}

            progress: list[tuple[float, float | None, str | None]] = []

            async def on_progress(p: float, total: float | None, message: str | None) -> None:
                progress.append((p, total, message))

            r = await asyncio.wait_for(
                session.call_tool("count", {"n": 3}, progress_callback=on_progress), T)
            assert not is_error(r) and text(r) == "counted to 3"
            assert progress == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]

            r = await asyncio.wait_for(session.call_tool("fail", {"why": "no such CVE"}), T)
            assert is_error(r)
            assert "refused: no such CVE" in text(r)

            # The server is still fine after a failed tool; a protocol-level error
            # (an unknown resource) is the SDK's McpError.
            assert text(await asyncio.wait_for(session.call_tool("only_a", {}), T)) == "welcome, a"
            with pytest.raises(McpError):
                await asyncio.wait_for(session.read_resource("file:///nope"), T)
            await asyncio.wait_for(session.send_ping(), T)


async def test_large_messages_are_fragmented(slim_mcp, connect, ns, tool_server):
    client = await connect(f"t/{ns}/client", ID_CLIENT_A)
    n = 300_000  # several session messages each way
    async with slim_mcp.slim_client(client, tool_server, timeout=T) as (read, write):
        async with ClientSession(read, write) as session:
            await asyncio.wait_for(session.initialize(), T)
            r = await asyncio.wait_for(session.call_tool("big", {"n": n}), T)
            assert text(r) == "x" * n
            # a large request too (the argument is echoed into the error)
            r = await asyncio.wait_for(session.call_tool("fail", {"why": "y" * n}), T)
            assert is_error(r) and "y" * n in text(r)


async def test_two_concurrent_clients_each_authorized_by_spiffe_id(slim_mcp, connect, ns,
                                                                   tool_server):
    a = await connect(f"t/{ns}/client-a", ID_CLIENT_A)
    b = await connect(f"t/{ns}/client-b", ID_CLIENT_B)
    both_in = asyncio.Barrier(2) if hasattr(asyncio, "Barrier") else None

    async def run(app, mls):
        async with slim_mcp.slim_client(app, tool_server, mls=mls, timeout=T) as (read, write):
            async with ClientSession(read, write) as session:
                await asyncio.wait_for(session.initialize(), T)
                if both_in is not None:  # both sessions are open at once
                    await asyncio.wait_for(both_in.wait(), T)
                results = await asyncio.gather(*(
                    asyncio.wait_for(session.call_tool("whoami", {}), T) for _ in range(5)))
                progress = []

                async def on_progress(p, total, message):
                    progress.append(p)

                await asyncio.wait_for(
                    session.call_tool("count", {"n": 5}, progress_callback=on_progress), T)
                gate = await asyncio.wait_for(session.call_tool("only_a", {}), T)
                return [json.loads(text(r)) for r in results], progress, gate

    (who_a, prog_a, gate_a), (who_b, prog_b, gate_b) = await asyncio.wait_for(
        asyncio.gather(run(a, True), run(b, False)), 3 * T)
    assert who_a == [{"contextvar": ID_CLIENT_A, "request": ID_CLIENT_A, "mls": True}] * 5
    assert who_b == [{"contextvar": ID_CLIENT_B, "request": ID_CLIENT_B, "mls": False}] * 5
    assert prog_a == prog_b == [1, 2, 3, 4, 5]
    assert not is_error(gate_a) and text(gate_a) == "welcome, a"
    assert is_error(gate_b) and f"{ID_CLIENT_B} may not call only_a" in text(gate_b)


async def test_cancellation_reaches_the_server(slim_mcp, connect, ns, tool_server, tool_state):
    """A client's notifications/cancelled ends the server's handler: the SDK answers
    the request with an error and the session carries on."""
    import mcp.types as types  # noqa: PLC0415

    client = await connect(f"t/{ns}/client", ID_CLIENT_A)
    async with slim_mcp.slim_client(client, tool_server, timeout=T) as (read, write):
        async with ClientSession(read, write) as session:
            await asyncio.wait_for(session.initialize(), T)
            if SDK_VERSION >= (2, 0):
                # mcp 2: abandoning a request (cancelling the awaiting task) is
                # what sends notifications/cancelled
                call = asyncio.create_task(session.call_tool("block", {}))
                await asyncio.wait_for(tool_state["block_started"].wait(), T)
                call.cancel()
                await asyncio.wait_for(tool_state["block_ended"].wait(), T)
                with pytest.raises(asyncio.CancelledError):
                    await call
            else:
                request_id = session._request_id  # the id the next request gets
                call = asyncio.create_task(session.call_tool("block", {}))
                await asyncio.wait_for(tool_state["block_started"].wait(), T)
                await session.send_notification(types.ClientNotification(
                    types.CancelledNotification(
                        method="notifications/cancelled",
                        params=types.CancelledNotificationParams(requestId=request_id,
                                                                 reason="test"))))
                await asyncio.wait_for(tool_state["block_ended"].wait(), T)
                with pytest.raises(McpError):
                    await asyncio.wait_for(call, T)
            # The session carries on -- with the SDKs that do: mcp 1.10's server
            # session ends after a cancellation on its own in-memory transport too.
            if SDK_VERSION >= (1, 30):
                await asyncio.wait_for(session.send_ping(), T)


async def test_malformed_json_is_an_exception_on_the_read_stream(slim, slim_mcp, connect, ns):
    """Client side: garbage from the peer reaches the SDK as an Exception item, and
    the stream carries on."""
    server = await connect(f"t/{ns}/raw", ID_SERVER)
    client = await connect(f"t/{ns}/client", ID_CLIENT_A)

    async def raw_server():
        async with await server.accept(timeout=T) as s:
            await s.publish(b"{this is not json")
            await s.publish(b'{"jsonrpc": "2.0", "method": "notifications/message", '
                            b'"params": {"level": "info", "data": "after garbage"}}')
            async for _ in s:  # until the client closes
                pass

    task = asyncio.create_task(raw_server())
    async with slim_mcp.slim_client(client, f"t/{ns}/raw", timeout=T) as (read, write):
        first = await asyncio.wait_for(read.receive(), T)
        assert isinstance(first, Exception)
        second = await asyncio.wait_for(read.receive(), T)
        assert getattr(second.message, 'root', second.message).method == "notifications/message"
    await asyncio.wait_for(task, T)


async def test_server_survives_malformed_json(slim, slim_mcp, connect, ns, tool_server):
    """Server side: garbage from a client is logged by the SDK, not a crash; the
    session answers the next request."""
    client = await connect(f"t/{ns}/client", ID_CLIENT_A)
    async with await client.open_session(tool_server, reliable=True, timeout=T) as s:
        await s.publish(b"\x00garbage")
        await s.publish(json.dumps({"jsonrpc": "2.0", "id": 7, "method": "ping"}).encode())
        while True:
            msg = json.loads((await s.receive(timeout=T)).payload)
            if msg.get("id") == 7:
                # a result (mcp >= 1.1x answers pings before initialize) or the
                # SDK's error; either way the session is alive and answering
                assert "result" in msg or "error" in msg, msg
                break
            # the SDK may first report the bad message as a log notification
            assert msg.get("method") == "notifications/message", msg
    # and a well-behaved client still gets served afterwards
    async with slim_mcp.slim_client(client, tool_server, timeout=T) as (read, write):
        async with ClientSession(read, write) as session:
            await asyncio.wait_for(session.initialize(), T)
            who = json.loads(text(await asyncio.wait_for(session.call_tool("whoami", {}), T)))
            assert who["contextvar"] == ID_CLIENT_A


async def test_no_server_is_no_route(slim, slim_mcp, connect, ns):
    client = await connect(f"t/{ns}/client", ID_CLIENT_A)
    with pytest.raises((slim.NoRouteError, slim.TimeoutError)):
        async with slim_mcp.slim_client(client, f"t/{ns}/nobody", timeout=5):
            pass


@pytest.mark.federation
async def test_tool_call_across_two_nodes(slim_mcp, connect, ns, nodes, tool_state):
    """The server on node B, the client on node A: the session crosses the
    federation link; identity (MLS-proven) and progress pass through."""
    server = await connect(f"t/{ns}/remote-tools", ID_SERVER, node="b")
    task = asyncio.create_task(slim_mcp.serve(server, make_tools(slim_mcp, tool_state)))
    try:
        client = await connect(f"t/{ns}/client", ID_CLIENT_A, node="a")
        async with slim_mcp.slim_client(client, f"t/{ns}/remote-tools", timeout=T) as (read, write):
            async with ClientSession(read, write) as session:
                await asyncio.wait_for(session.initialize(), T)
                who = json.loads(text(await asyncio.wait_for(session.call_tool("whoami", {}), T)))
                assert who == {"contextvar": ID_CLIENT_A, "request": ID_CLIENT_A, "mls": True}
                progress = []

                async def on_progress(p, total, message):
                    progress.append(p)

                r = await asyncio.wait_for(
                    session.call_tool("count", {"n": 3}, progress_callback=on_progress), T)
                assert text(r) == "counted to 3" and progress == [1, 2, 3]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_twenty_concurrent_calls_over_one_session(slim_mcp, connect, ns, tool_server):
    client = await connect(f"t/{ns}/client", ID_CLIENT_A)
    async with slim_mcp.slim_client(client, tool_server, timeout=T) as (read, write):
        async with ClientSession(read, write) as session:
            await asyncio.wait_for(session.initialize(), T)
            results = await asyncio.wait_for(asyncio.gather(*(
                session.call_tool("count", {"n": i}) for i in range(1, 21))), T)
            # each answer matches its own request (responses are matched by id)
            assert [text(r) for r in results] == [f"counted to {i}" for i in range(1, 21)]


async def test_server_that_went_down_is_a_clear_error_within_the_deadline(
        slim, slim_mcp, connect, ns, tool_state):
    """The server existed, served a call, then went away while a call was
    pending: the pending call fails (not hangs), and a new client gets a slim
    error at once instead of waiting for its deadline."""
    server = await connect(f"t/{ns}/flaky", ID_SERVER)
    task = asyncio.create_task(slim_mcp.serve(server, make_tools(slim_mcp, tool_state)))
    client = await connect(f"t/{ns}/client", ID_CLIENT_A)
    t0 = None
    pending = None
    try:
        async with slim_mcp.slim_client(client, f"t/{ns}/flaky", timeout=T) as (read, write):
            async with ClientSession(read, write) as session:
                await asyncio.wait_for(session.initialize(), T)
                assert text(await asyncio.wait_for(session.call_tool("only_a", {}), T)) == "welcome, a"
                pending = asyncio.create_task(session.call_tool("block", {}))
                await asyncio.wait_for(tool_state["block_started"].wait(), T)
                t0 = asyncio.get_running_loop().time()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await asyncio.wait_for(server.close(), T)
                with pytest.raises(McpError):
                    await asyncio.wait_for(pending, T)
                assert asyncio.get_running_loop().time() - t0 < T
    except Exception as e:  # noqa: BLE001
        # leaving the context managers may report that the peer is gone; the
        # assertions above must have run
        print(f"on exit: {type(e).__name__}: {e}")
        assert t0 is not None and pending.done(), e
    assert t0 is not None, "the call did not start"
    t1 = asyncio.get_running_loop().time()
    with pytest.raises((slim.NoRouteError, slim.TimeoutError)):
        async with slim_mcp.slim_client(client, f"t/{ns}/flaky", timeout=5):
            pass
    assert asyncio.get_running_loop().time() - t1 < 10


async def test_instances_sharing_a_name_share_the_clients(slim_mcp, connect, ns):
    """Two instances serve one name; clients' sessions are spread over both
    (anycast), and each client stays with the instance that took its session."""
    served_by: dict[str, list[str]] = {}

    def instance_tools(label: str) -> FastMCP:
        tools = FastMCP(f"tools-{label}")

        @tools.tool()
        def where() -> str:
            served_by.setdefault(label, []).append(slim_mcp.caller().name)
            return label

        return tools

    tasks = []
    for label in ("one", "two"):
        app = await connect(f"t/{ns}/shared", ID_SERVER)
        tasks.append(asyncio.create_task(slim_mcp.serve(app, instance_tools(label))))
    try:
        async def one_client(i: int) -> set[str]:
            app = await connect(f"t/{ns}/client{i}", ID_CLIENT_A)
            async with slim_mcp.slim_client(app, f"t/{ns}/shared", timeout=T) as (read, write):
                async with ClientSession(read, write) as session:
                    await asyncio.wait_for(session.initialize(), T)
                    return {text(await asyncio.wait_for(session.call_tool("where", {}), T))
                            for _ in range(3)}

        seen = await asyncio.wait_for(asyncio.gather(*(one_client(i) for i in range(12))), 3 * T)
        assert all(len(s) == 1 for s in seen), seen  # a session sticks to one instance
        assert {next(iter(s)) for s in seen} == {"one", "two"}, seen  # both got clients
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
