"""MCP over slim: the Model Context Protocol's JSON-RPC carried over a reliable
point-to-point slim session (a transport for the official ``mcp`` SDK).

An MCP server behind NAT dials out to its node like any agent and is reached by
its slim name; it listens on no port. The client swaps ``stdio_client(params)``
for :func:`slim_client` and keeps ``ClientSession`` unchanged::

    from mcp import ClientSession
    from slim_agents.mcp import slim_client

    async with slim_client(app, "acme/tools/cve-db") as (read, write):
        async with ClientSession(read, write) as mcp:
            await mcp.initialize()
            result = await mcp.call_tool("lookup", {"cve": "CVE-2024-1"})

    # the server (FastMCP or a low-level mcp.server.lowlevel.Server):
    from mcp.server.fastmcp import FastMCP
    from slim_agents.mcp import serve, caller_spiffe_id

    tools = FastMCP("cve-db")

    @tools.tool()
    def lookup(cve: str) -> str:
        if not (caller_spiffe_id() or "").startswith("spiffe://acme.example/agent/"):
            raise PermissionError("not for you")
        ...

    await serve(app, tools)              # until cancelled or the app is closed

Wire format: each JSON-RPC message is one session message holding its JSON
(UTF-8). A message larger than a session message can carry (64 KiB) is split:
every fragment but the last starts with the byte 0x1E (ASCII record separator,
which never occurs raw in JSON text); the receiver concatenates fragments until
one that does not start with it. Sessions are reliable, hence in order.

Needs the ``mcp`` package: ``pip install 'slim-agents[mcp]'``.
"""

from __future__ import annotations

import contextvars
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional, Tuple, Union

try:
    import anyio
    import mcp.types as _types
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
    from mcp.shared.message import SessionMessage
except ImportError as _e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "slim_agents.mcp needs the MCP Python SDK: pip install 'slim-agents[mcp]' "
        f"(or pip install 'mcp>=1.10,<3'): {_e}"
    ) from _e

try:  # mcp >= 1.8: transport metadata the server puts in the request context
    from mcp.shared.message import ServerMessageMetadata as _ServerMessageMetadata
except ImportError:  # pragma: no cover
    _ServerMessageMetadata = None  # type: ignore[assignment,misc]

from . import App, ClosedError, Session, SlimError, _framing

__all__ = [
    "Caller",
    "caller",
    "caller_spiffe_id",
    "serve",
    "serve_session",
    "slim_client",
    "ReadStream",
    "WriteStream",
]

log = logging.getLogger("slim_agents.mcp")

ReadStream = MemoryObjectReceiveStream[Union[SessionMessage, Exception]]
WriteStream = MemoryObjectSendStream[SessionMessage]

# Fragmentation (a session message carries at most 64 KiB): see _framing.
FRAGMENT_SIZE = _framing.FRAGMENT_SIZE
# The largest JSON-RPC message accepted from the peer (reassembled); a bigger one
# is dropped and reported on the read stream as an exception.
MAX_MESSAGE_SIZE = _framing.MAX_MESSAGE_SIZE
_MORE = _framing.MORE

_CLOSE_TIMEOUT = 10.0


# --------------------------------------------------------------------------- the caller


@dataclass(frozen=True)
class Caller:
    """Who is at the other end of the MCP session (server side).

    ``spiffe_id`` is the peer's SPIFFE ID as proven to this app: by MLS when the
    session is MLS-encrypted (``mls``; the node cannot forge it), else as the node
    authenticated the peer's connection. ``name`` is the peer's full slim name.
    """

    name: str
    spiffe_id: Optional[str]
    mls: bool


_caller: contextvars.ContextVar[Optional[Caller]] = contextvars.ContextVar(
    "slim_agents.mcp.caller", default=None
)


def caller() -> Optional[Caller]:
    """The :class:`Caller` of the MCP session this code runs for (inside a tool,
    resource or prompt handler served by :func:`serve`/:func:`serve_session`);
    ``None`` outside one. Also available as ``ctx.request_context.request`` in a
    FastMCP ``Context``."""
    return _caller.get()


def caller_spiffe_id() -> Optional[str]:
    """The caller's proven SPIFFE ID (see :class:`Caller`), or ``None`` outside a
    request served over slim (authorize by failing closed on ``None``)."""
    c = _caller.get()
    return c.spiffe_id if c is not None else None


# --------------------------------------------------------------------------- the transport


_frames = _framing.frames

# mcp 2.x: JSONRPCMessage is a plain union, parsed with a TypeAdapter; 1.x: a RootModel.
_ADAPTER = getattr(_types, "jsonrpc_message_adapter", None)


def _parse(data: bytes) -> Any:
    if _ADAPTER is not None:
        return _ADAPTER.validate_json(data, by_name=False)
    return _types.JSONRPCMessage.model_validate_json(data)


def _dump(message: Any) -> bytes:
    # as the SDK's own stdio transports serialize (2.x: exclude_unset, 1.x: exclude_none)
    if _ADAPTER is not None:
        return message.model_dump_json(by_alias=True, exclude_unset=True).encode()
    return message.model_dump_json(by_alias=True, exclude_none=True).encode()
_TooLarge = _framing.TooLarge


@asynccontextmanager
async def _transport(
    session: Session,
    *,
    peer: Optional[Caller] = None,
    close_timeout: float = _CLOSE_TIMEOUT,
) -> AsyncIterator[Tuple[ReadStream, WriteStream]]:
    """Bridges a slim session to the SDK's pair of memory streams.

    ``peer`` (server side) is attached to each incoming message as its
    ``ServerMessageMetadata.request_context``."""
    read_writer: MemoryObjectSendStream[Union[SessionMessage, Exception]]
    read_stream: ReadStream
    write_stream: WriteStream
    write_reader: MemoryObjectReceiveStream[SessionMessage]
    read_writer, read_stream = anyio.create_memory_object_stream(0)
    write_stream, write_reader = anyio.create_memory_object_stream(0)
    writer_done = anyio.Event()

    def metadata() -> Any:
        if peer is None or _ServerMessageMetadata is None:
            return None
        return _ServerMessageMetadata(request_context=peer)

    async def reader() -> None:
        buf = bytearray()
        dropping = False
        try:
            async with read_writer:
                while True:
                    try:
                        msg = await session.receive()
                    except ClosedError:
                        return  # the peer closed (or we did): end of stream
                    except SlimError as e:
                        log.warning("MCP over slim: session with %s failed: %s", session.name, e)
                        await read_writer.send(e)
                        return
                    data = msg.payload
                    if data[:1] == _MORE:
                        if not dropping:
                            buf += data[1:]
                            if len(buf) > MAX_MESSAGE_SIZE:
                                buf.clear()
                                dropping = True
                        continue
                    if dropping:
                        dropping = False
                        await read_writer.send(_TooLarge(
                            f"MCP message from {session.name} larger than {MAX_MESSAGE_SIZE} bytes dropped"))
                        continue
                    if buf:
                        data = bytes(buf) + data
                        buf.clear()
                    try:
                        message = _parse(data)
                    except Exception as exc:  # noqa: BLE001 - the SDK's transports do the same
                        log.warning("MCP over slim: malformed JSON-RPC message from %s: %s",
                                    session.name, exc)
                        await read_writer.send(exc)
                        continue
                    await read_writer.send(SessionMessage(message, metadata=metadata()))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the SDK side went away

    async def writer() -> None:
        try:
            async with write_reader:
                async for sm in write_reader:
                    data = _dump(sm.message)
                    for frame in _frames(data):
                        await session.publish(frame)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        except SlimError as e:
            # The session is gone; the reader ends the read stream. Later sends by
            # the SDK raise BrokenResourceError.
            log.warning("MCP over slim: cannot send to %s: %s", session.name, e)
        finally:
            writer_done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        tg.start_soon(writer)
        try:
            yield read_stream, write_stream
        finally:
            # Let what the SDK already handed us go out, then close the session
            # (a reliable close returns once the peer acknowledged everything).
            await write_stream.aclose()
            with anyio.move_on_after(close_timeout, shield=True):
                await writer_done.wait()
                try:
                    await session.close()
                except SlimError as e:
                    log.debug("MCP over slim: closing the session with %s: %s", session.name, e)
            tg.cancel_scope.cancel()
            await read_stream.aclose()


# --------------------------------------------------------------------------- client


@asynccontextmanager
async def slim_client(
    app: App,
    service: str,
    *,
    mls: bool = True,
    timeout: Optional[float] = 30.0,
    close_timeout: float = _CLOSE_TIMEOUT,
) -> AsyncIterator[Tuple[ReadStream, WriteStream]]:
    """Opens a reliable point-to-point session to the MCP server serving
    ``service`` (``org/namespace/service``; anycast: one of its instances
    answers and stays the peer) and yields ``(read_stream, write_stream)``
    for ``mcp.ClientSession``, like the SDK's ``stdio_client``.

    ``mls`` encrypts end to end (and makes the server's view of our SPIFFE ID
    MLS-proven). ``timeout`` bounds opening the session (``TimeoutError``);
    ``NoRouteError`` if nobody serves ``service``. On exit the session is closed
    once the server acknowledged everything sent (at most ``close_timeout``).
    """
    session = await app.open_session(service, reliable=True, mls=mls, timeout=timeout)
    async with _transport(session, close_timeout=close_timeout) as streams:
        yield streams


# --------------------------------------------------------------------------- server


def _lowlevel(server: Any) -> Any:
    # FastMCP (mcp 1.x) and MCPServer (its 2.x name) wrap a low-level Server.
    low = getattr(server, "_mcp_server", None) or getattr(server, "_lowlevel_server", server)
    if not callable(getattr(low, "run", None)) or not hasattr(low, "create_initialization_options"):
        raise TypeError(
            "server must be an mcp.server.fastmcp.FastMCP (mcp.server.mcpserver.MCPServer in "
            "mcp 2) or an mcp.server.lowlevel.Server, "
            f"got {type(server).__name__}"
        )
    return low


async def serve_session(
    session: Session,
    server: Any,
    *,
    init_options: Any = None,
    raise_exceptions: bool = False,
    close_timeout: float = _CLOSE_TIMEOUT,
) -> None:
    """Runs one MCP server session of ``server`` (FastMCP or low-level
    ``Server``) over an accepted point-to-point slim ``session``, until the
    client closes it. Inside its handlers :func:`caller` /
    :func:`caller_spiffe_id` name the client."""
    low = _lowlevel(server)
    if init_options is None:
        init_options = low.create_initialization_options()
    peer = Caller(name=session.name, spiffe_id=session.peer_spiffe_id, mls=session.mls)
    token = _caller.set(peer)
    try:
        async with _transport(session, peer=peer, close_timeout=close_timeout) as (read, write):
            await low.run(read, write, init_options, raise_exceptions=raise_exceptions)
    finally:
        _caller.reset(token)


async def serve(
    app: App,
    server: Any,
    *,
    init_options: Any = None,
    require_mls: bool = False,
    raise_exceptions: bool = False,
    close_timeout: float = _CLOSE_TIMEOUT,
) -> None:
    """Serves the MCP ``server`` (``FastMCP`` or a low-level ``Server``) to
    every point-to-point session opened to ``app``'s service: one MCP server
    session per slim session, concurrently, until cancelled or the app is
    closed. Group-channel invitations are declined (left).

    ``init_options``: the low-level ``InitializationOptions`` (default: the
    server's ``create_initialization_options()``). ``require_mls``: close
    sessions that are not MLS-encrypted (so every caller's SPIFFE ID is
    MLS-proven). A session that fails is logged and does not stop the others.

    Several instances (apps) may serve the same service name; each client's
    session is bound to one of them (anycast).
    """
    low = _lowlevel(server)
    if init_options is None:
        init_options = low.create_initialization_options()

    async def one(s: Session) -> None:
        try:
            await serve_session(s, low, init_options=init_options,
                                raise_exceptions=raise_exceptions, close_timeout=close_timeout)
        except Exception:  # noqa: BLE001 - one client's failure must not stop the server
            log.exception("MCP over slim: session with %s (%s) failed", s.name, s.peer_spiffe_id)

    async def decline(s: Session) -> None:
        with anyio.move_on_after(close_timeout):
            try:
                await s.close()
            except SlimError:
                pass

    async with anyio.create_task_group() as tg:
        async for s in app.sessions():
            if s.kind != "p2p":
                log.info("MCP over slim: leaving channel %s (an MCP server serves p2p sessions)",
                         s.name)
                tg.start_soon(decline, s)
            elif require_mls and not s.mls:
                log.warning("MCP over slim: refusing a session without MLS from %s (%s)",
                            s.name, s.peer_spiffe_id)
                tg.start_soon(decline, s)
            else:
                tg.start_soon(one, s)
