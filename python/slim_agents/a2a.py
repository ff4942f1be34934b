"""A2A over slim: the Agent2Agent protocol's JSON-RPC methods carried over slim
(a client transport and a server binding for the official ``a2a-sdk``).

An agent behind NAT dials out to its node and is reached by its slim name; it
listens on no port. The caller keeps the SDK's ``Client``/``ClientFactory``
and only registers this transport; the agent keeps its ``AgentExecutor`` and
``DefaultRequestHandler`` and serves them with :func:`serve_a2a`::

    # the agent
    from a2a.server.request_handlers import DefaultRequestHandler
    from a2a.server.tasks import InMemoryTaskStore
    from slim_agents.a2a import serve_a2a, caller_spiffe_id

    handler = DefaultRequestHandler(MyExecutor(), InMemoryTaskStore(), card)
    await serve_a2a(app, handler, card)          # until cancelled or the app closes

    # the caller
    from a2a.client import ClientConfig, ClientFactory
    from slim_agents import a2a as slim_a2a

    factory = ClientFactory(ClientConfig(supported_protocol_bindings=[slim_a2a.SLIM_BINDING]))
    slim_a2a.register(factory, app)
    client = factory.create(await slim_a2a.get_agent_card(app, "acme/agents/patcher"))
    async for event in client.send_message(request):
        ...

Mapping: every A2A call (``SendMessage``, ``SendStreamingMessage``,
``GetTask``, ``CancelTask``, ``SubscribeToTask``, ...; the SDK's JSON-RPC
method names and its JSON encoding of the protobuf messages) is one JSON-RPC
2.0 request on its own reliable point-to-point session to the agent's name
(anycast: one instance answers), MLS-encrypted by default. A unary call gets
one JSON-RPC response; a streaming call gets one response per event, then the
end-of-stream frame (the single byte 0x04, never JSON). The caller closing the
session (leaving the loop, cancelling the task) ends the server's stream of
that call; the task itself is cancelled with ``CancelTask``. The public agent
card is served by the extra method ``GetAgentCard`` (:func:`get_agent_card`).
Messages over 48 KiB are fragmented as in :mod:`slim_agents.mcp`.

Needs the A2A SDK: ``pip install 'slim-agents[a2a]'``.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Optional

try:
    from a2a.auth.user import User
    from a2a.client import ClientConfig, ClientFactory
    from a2a.client.client import ClientCallContext
    from a2a.client.errors import A2AClientError, A2AClientTimeoutError
    from a2a.client.transports.base import ClientTransport
    from a2a.server.context import ServerCallContext
    from a2a.server.request_handlers.request_handler import RequestHandler
    from a2a.server.request_handlers.response_helpers import build_error_response
    from a2a.types import a2a_pb2 as pb
    from a2a.utils.errors import (
        JSON_RPC_ERROR_CODE_MAP,
        A2AError,
        InternalError,
        InvalidParamsError,
        InvalidRequestError,
        JSONParseError,
        MethodNotFoundError,
        TaskNotFoundError,
    )
    from a2a.utils.proto_utils import parse_lenient, to_stream_response
    from google.protobuf.json_format import MessageToDict, ParseDict
except ImportError as _e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "slim_agents.a2a needs the A2A Python SDK: pip install 'slim-agents[a2a]' "
        f"(or pip install 'a2a-sdk>=1.3,<2'): {_e}"
    ) from _e

from . import App, ClosedError, Session, SlimError
from . import TimeoutError as SlimTimeoutError
from . import _framing

__all__ = [
    "SLIM_BINDING",
    "Caller",
    "SlimUser",
    "SlimTransport",
    "caller",
    "caller_spiffe_id",
    "create_client",
    "get_agent_card",
    "register",
    "serve_a2a",
    "serve_session",
]

log = logging.getLogger("slim_agents.a2a")

#: The ``AgentInterface.protocol_binding`` of an agent served over slim; its
#: ``url`` is the agent's slim name (``org/namespace/service``).
SLIM_BINDING = "SLIM"

_END = b"\x04"  # end of a stream of responses (ASCII end of transmission)
_CLOSE_TIMEOUT = 10.0

_UNARY = {
    "SendMessage": pb.SendMessageRequest,
    "GetTask": pb.GetTaskRequest,
    "ListTasks": pb.ListTasksRequest,
    "CancelTask": pb.CancelTaskRequest,
    "CreateTaskPushNotificationConfig": pb.TaskPushNotificationConfig,
    "GetTaskPushNotificationConfig": pb.GetTaskPushNotificationConfigRequest,
    "ListTaskPushNotificationConfigs": pb.ListTaskPushNotificationConfigsRequest,
    "DeleteTaskPushNotificationConfig": pb.DeleteTaskPushNotificationConfigRequest,
    "GetExtendedAgentCard": pb.GetExtendedAgentCardRequest,
    "GetAgentCard": pb.GetExtendedAgentCardRequest,  # ours: the public card, by name
}
_STREAMING = {
    "SendStreamingMessage": pb.SendMessageRequest,
    "SubscribeToTask": pb.SubscribeToTaskRequest,
}
_CODE_TO_ERROR = {code: err for err, code in JSON_RPC_ERROR_CODE_MAP.items()}


# --------------------------------------------------------------------------- the caller


@dataclass(frozen=True)
class Caller:
    """Who sent the A2A request (server side): the peer's full slim ``name``
    and its ``spiffe_id``, proven by MLS when ``mls`` (the node cannot forge
    it), else as the node authenticated the peer's connection."""

    name: str
    spiffe_id: Optional[str]
    mls: bool


class SlimUser(User):
    """The ``ServerCallContext.user`` of a request served over slim:
    ``user_name`` is the caller's SPIFFE ID (``""`` if it has none)."""

    def __init__(self, who: Caller) -> None:
        self.caller = who

    @property
    def is_authenticated(self) -> bool:
        return self.caller.spiffe_id is not None

    @property
    def user_name(self) -> str:
        return self.caller.spiffe_id or ""


_caller: contextvars.ContextVar[Optional[Caller]] = contextvars.ContextVar(
    "slim_agents.a2a.caller", default=None
)


def caller() -> Optional[Caller]:
    """The :class:`Caller` of the request this code runs for (a request handler
    or an ``AgentExecutor`` started by it); ``None`` outside one. Also in
    ``context.call_context.user`` (a :class:`SlimUser`) of the executor's
    ``RequestContext``."""
    return _caller.get()


def caller_spiffe_id() -> Optional[str]:
    """The caller's proven SPIFFE ID, or ``None`` outside a request served over
    slim (authorize by failing closed on ``None``)."""
    c = _caller.get()
    return c.spiffe_id if c is not None else None


# --------------------------------------------------------------------------- helpers


def _request_bytes(method: str, params: Any) -> bytes:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": MessageToDict(params)}
    return json.dumps(body, separators=(",", ":")).encode()


def _error_from(error: Any) -> Exception:
    if not isinstance(error, dict):
        return A2AClientError(f"invalid JSON-RPC error from the agent: {error!r}")
    code = error.get("code")
    message = error.get("message", str(error))
    if isinstance(code, int) and code in _CODE_TO_ERROR:
        return _CODE_TO_ERROR[code](message)
    return A2AClientError(f"JSON-RPC error {code}: {message}")


def _result_of(data: bytes, service: str) -> Any:
    try:
        body = json.loads(data)
    except ValueError as e:
        raise A2AClientError(f"malformed JSON-RPC response from {service}: {e}") from e
    if not isinstance(body, dict):
        raise A2AClientError(f"malformed JSON-RPC response from {service}: not an object")
    if body.get("error"):
        raise _error_from(body["error"])
    if "result" not in body:
        raise A2AClientError(f"JSON-RPC response from {service} has neither result nor error")
    return body["result"]


def _service_of(app: App) -> str:
    return "/".join(app.name.split("/")[:3])


async def _close(session: Session, timeout: float) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(session.close()), timeout)
    except (SlimError, asyncio.TimeoutError) as e:
        log.debug("A2A over slim: closing the session with %s: %s", session.name, e)


# --------------------------------------------------------------------------- client


class SlimTransport(ClientTransport):
    """The A2A SDK's ``ClientTransport`` over slim: each call opens a reliable
    point-to-point session to ``service`` (MLS-encrypted when ``mls``).

    ``timeout`` bounds a unary call (opening the session included) and opening
    a streaming call; a stream then lasts as long as the agent sends (bound it
    with ``stream_timeout``, the longest wait between two events). slim's
    failures (``NoRouteError`` when nobody serves ``service``, ...) are raised
    as ``A2AClientError`` (``A2AClientTimeoutError`` for timeouts) with the
    slim exception as ``__cause__``."""

    def __init__(self, app: App, service: str, agent_card: Optional[pb.AgentCard] = None, *,
                 mls: bool = True, timeout: float = 30.0,
                 stream_timeout: Optional[float] = None,
                 close_timeout: float = _CLOSE_TIMEOUT) -> None:
        self.app = app
        self.service = service
        self.agent_card = agent_card
        self.mls = mls
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        self.close_timeout = close_timeout

    def _wrap(self, e: SlimError, what: str) -> A2AClientError:
        if isinstance(e, SlimTimeoutError):
            return A2AClientTimeoutError(f"A2A {what} to {self.service}: {e}")
        return A2AClientError(f"A2A {what} to {self.service}: {type(e).__name__}: {e}")

    async def _open(self, method: str, params: Any) -> Session:
        try:
            session = await self.app.open_session(self.service, reliable=True, mls=self.mls,
                                                  timeout=self.timeout)
        except SlimError as e:
            raise self._wrap(e, method) from e
        try:
            await _framing.send(session, _request_bytes(method, params))
        except SlimError as e:
            await _close(session, self.close_timeout)
            raise self._wrap(e, method) from e
        except BaseException:
            await _close(session, self.close_timeout)
            raise
        return session

    async def _call(self, method: str, params: Any) -> Any:
        async def run() -> Any:
            session = await self._open(method, params)
            try:
                data = await _framing.receive(session)
            except ClosedError as e:
                raise A2AClientError(
                    f"A2A {method} to {self.service}: the agent closed the session "
                    "without answering") from e
            except SlimError as e:
                raise self._wrap(e, method) from e
            finally:
                await _close(session, self.close_timeout)
            return _result_of(data, self.service)

        try:
            return await asyncio.wait_for(run(), self.timeout)
        except asyncio.TimeoutError as e:
            raise A2AClientTimeoutError(
                f"A2A {method} to {self.service}: no answer within {self.timeout}s") from e

    async def _stream(self, method: str, params: Any) -> AsyncGenerator[pb.StreamResponse, None]:
        session = await self._open(method, params)
        try:
            while True:
                try:
                    data = await _framing.receive(session, timeout=self.stream_timeout)
                except ClosedError as e:
                    raise A2AClientError(
                        f"A2A {method} to {self.service}: the agent went away before the "
                        "end of the stream") from e
                except SlimError as e:
                    raise self._wrap(e, method) from e
                if data == _END:
                    return
                yield parse_lenient(_result_of(data, self.service), pb.StreamResponse())
        finally:
            # Normal end, an error, or the caller leaving the loop: closing the
            # session tells the agent to stop streaming this call.
            await _close(session, self.close_timeout)

    # ---- the SDK's ClientTransport interface

    async def send_message(self, request: pb.SendMessageRequest, *,
                           context: Optional[ClientCallContext] = None) -> pb.SendMessageResponse:
        return parse_lenient(await self._call("SendMessage", request), pb.SendMessageResponse())

    async def send_message_streaming(
        self, request: pb.SendMessageRequest, *, context: Optional[ClientCallContext] = None
    ) -> AsyncGenerator[pb.StreamResponse, None]:
        async for event in self._stream("SendStreamingMessage", request):
            yield event

    async def get_task(self, request: pb.GetTaskRequest, *,
                       context: Optional[ClientCallContext] = None) -> pb.Task:
        return parse_lenient(await self._call("GetTask", request), pb.Task())

    async def list_tasks(self, request: pb.ListTasksRequest, *,
                         context: Optional[ClientCallContext] = None) -> pb.ListTasksResponse:
        return parse_lenient(await self._call("ListTasks", request), pb.ListTasksResponse())

    async def cancel_task(self, request: pb.CancelTaskRequest, *,
                          context: Optional[ClientCallContext] = None) -> pb.Task:
        return parse_lenient(await self._call("CancelTask", request), pb.Task())

    async def create_task_push_notification_config(
        self, request: pb.TaskPushNotificationConfig, *,
        context: Optional[ClientCallContext] = None,
    ) -> pb.TaskPushNotificationConfig:
        return parse_lenient(await self._call("CreateTaskPushNotificationConfig", request),
                             pb.TaskPushNotificationConfig())

    async def get_task_push_notification_config(
        self, request: pb.GetTaskPushNotificationConfigRequest, *,
        context: Optional[ClientCallContext] = None,
    ) -> pb.TaskPushNotificationConfig:
        return parse_lenient(await self._call("GetTaskPushNotificationConfig", request),
                             pb.TaskPushNotificationConfig())

    async def list_task_push_notification_configs(
        self, request: pb.ListTaskPushNotificationConfigsRequest, *,
        context: Optional[ClientCallContext] = None,
    ) -> pb.ListTaskPushNotificationConfigsResponse:
        return parse_lenient(await self._call("ListTaskPushNotificationConfigs", request),
                             pb.ListTaskPushNotificationConfigsResponse())

    async def delete_task_push_notification_config(
        self, request: pb.DeleteTaskPushNotificationConfigRequest, *,
        context: Optional[ClientCallContext] = None,
    ) -> None:
        await self._call("DeleteTaskPushNotificationConfig", request)

    async def subscribe(
        self, request: pb.SubscribeToTaskRequest, *, context: Optional[ClientCallContext] = None
    ) -> AsyncGenerator[pb.StreamResponse, None]:
        async for event in self._stream("SubscribeToTask", request):
            yield event

    async def get_extended_agent_card(
        self, request: pb.GetExtendedAgentCardRequest, *,
        context: Optional[ClientCallContext] = None,
    ) -> pb.AgentCard:
        return parse_lenient(await self._call("GetExtendedAgentCard", request), pb.AgentCard())

    async def get_agent_card(self) -> pb.AgentCard:
        """The agent's public card (what :func:`serve_a2a` was given)."""
        return parse_lenient(await self._call("GetAgentCard", pb.GetExtendedAgentCardRequest()),
                             pb.AgentCard())

    async def close(self) -> None:
        """Nothing to release: every call closes its own session."""


def register(factory: ClientFactory, app: App, *, mls: bool = True, timeout: float = 30.0,
             stream_timeout: Optional[float] = None) -> ClientFactory:
    """Registers the slim transport (binding :data:`SLIM_BINDING`) on the SDK's
    ``factory``, so ``factory.create(card)`` of a card with a ``SLIM``
    interface talks to the agent over ``app``. Returns ``factory``."""

    def produce(card: pb.AgentCard, url: str, config: ClientConfig) -> ClientTransport:
        return SlimTransport(app, url, card, mls=mls, timeout=timeout,
                             stream_timeout=stream_timeout)

    factory.register(SLIM_BINDING, produce)
    return factory


async def get_agent_card(app: App, agent: str, *, mls: bool = True,
                         timeout: float = 30.0) -> pb.AgentCard:
    """Fetches the public agent card of the agent serving ``agent`` (its slim
    name) — what ``/.well-known/agent-card.json`` is over HTTP. Raises
    ``A2AClientError`` (cause ``NoRouteError``) if nobody serves the name."""
    return await SlimTransport(app, agent, mls=mls, timeout=timeout).get_agent_card()


async def create_client(app: App, agent: str, config: Optional[ClientConfig] = None, *,
                        mls: bool = True, timeout: float = 30.0,
                        stream_timeout: Optional[float] = None) -> Any:
    """The SDK's ``Client`` for the agent serving ``agent``: fetches its card
    and creates the client through a ``ClientFactory`` with the slim transport
    registered (``config.supported_protocol_bindings`` defaults to slim's)."""
    if config is None:
        config = ClientConfig(supported_protocol_bindings=[SLIM_BINDING])
    factory = register(ClientFactory(config), app, mls=mls, timeout=timeout,
                       stream_timeout=stream_timeout)
    return factory.create(await get_agent_card(app, agent, mls=mls, timeout=timeout))


# --------------------------------------------------------------------------- server


def _response(request_id: Any, result: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result},
                      separators=(",", ":")).encode()


def _error(request_id: Any, err: Exception) -> bytes:
    if not isinstance(err, A2AError):
        err = InternalError(message=str(err))
    return json.dumps(build_error_response(request_id, err), separators=(",", ":")).encode()


def _with_slim_interface(card: pb.AgentCard, service: str) -> pb.AgentCard:
    if any(i.protocol_binding == SLIM_BINDING for i in card.supported_interfaces):
        return card
    out = pb.AgentCard()
    out.CopyFrom(card)
    out.supported_interfaces.insert(0, pb.AgentInterface(protocol_binding=SLIM_BINDING,
                                                         url=service))
    return out


async def _unary(handler: RequestHandler, card: pb.AgentCard, method: str, req: Any,
                 ctx: ServerCallContext) -> Any:
    if method == "GetAgentCard":
        return MessageToDict(card)
    if method == "SendMessage":
        r = await handler.on_message_send(req, ctx)
        if isinstance(r, pb.Task):
            return MessageToDict(pb.SendMessageResponse(task=r))
        return MessageToDict(pb.SendMessageResponse(message=r))
    if method in ("GetTask", "CancelTask"):
        fn = handler.on_get_task if method == "GetTask" else handler.on_cancel_task
        task = await fn(req, ctx)
        if not task:
            raise TaskNotFoundError
        return MessageToDict(task)
    if method == "ListTasks":
        return MessageToDict(await handler.on_list_tasks(req, ctx))
    if method == "CreateTaskPushNotificationConfig":
        return MessageToDict(await handler.on_create_task_push_notification_config(req, ctx))
    if method == "GetTaskPushNotificationConfig":
        return MessageToDict(await handler.on_get_task_push_notification_config(req, ctx))
    if method == "ListTaskPushNotificationConfigs":
        return MessageToDict(await handler.on_list_task_push_notification_configs(req, ctx))
    if method == "DeleteTaskPushNotificationConfig":
        await handler.on_delete_task_push_notification_config(req, ctx)
        return None
    if method == "GetExtendedAgentCard":
        return MessageToDict(await handler.on_get_extended_agent_card(req, ctx))
    raise MethodNotFoundError


async def _stream_events(session: Session, handler: RequestHandler, method: str, req: Any,
                         ctx: ServerCallContext, request_id: Any) -> None:
    if method == "SendStreamingMessage":
        stream = handler.on_message_send_stream(req, ctx)
    else:
        stream = handler.on_subscribe_to_task(req, ctx)
    try:
        async for event in stream:
            await _framing.send(session, _response(
                request_id, MessageToDict(to_stream_response(event))))
    except A2AError as e:
        await _framing.send(session, _error(request_id, e))
    finally:
        await stream.aclose()
    await session.publish(_END)


async def _until_peer_closes(session: Session) -> None:
    """Returns when the caller closed its session (it sends nothing else)."""
    while True:
        try:
            await session.receive()
        except ClosedError:
            return
        except SlimError as e:
            log.debug("A2A over slim: session with %s: %s", session.name, e)
            return


async def serve_session(session: Session, handler: RequestHandler, agent_card: pb.AgentCard, *,
                        request_timeout: float = 30.0,
                        close_timeout: float = _CLOSE_TIMEOUT) -> None:
    """Answers the one A2A call of an accepted point-to-point ``session`` with
    ``handler`` (the SDK's ``RequestHandler``, e.g. ``DefaultRequestHandler``),
    then closes it. ``request_timeout`` bounds waiting for the request."""
    who = Caller(name=session.name, spiffe_id=session.peer_spiffe_id, mls=session.mls)
    token = _caller.set(who)
    request_id: Any = None
    try:
        try:
            data = await _framing.receive(session, timeout=request_timeout)
        except (SlimError, _framing.TooLarge) as e:
            log.warning("A2A over slim: no request from %s (%s): %s", who.name, who.spiffe_id, e)
            return
        try:
            body = json.loads(data)
        except ValueError as e:
            await _framing.send(session, _error(None, JSONParseError(message=str(e))))
            return
        if not isinstance(body, dict) or body.get("jsonrpc") != "2.0":
            await _framing.send(session, _error(None, InvalidRequestError(
                message="not a JSON-RPC 2.0 request object")))
            return
        request_id = body.get("id")
        method = body.get("method")
        model = _UNARY.get(method) or _STREAMING.get(method)
        if model is None:
            await _framing.send(session, _error(request_id, MethodNotFoundError(
                message=f"unknown A2A method {method!r}")))
            return
        try:
            req = ParseDict(body.get("params") or {}, model(), ignore_unknown_fields=True)
        except Exception as e:  # noqa: BLE001 - protobuf raises several types
            await _framing.send(session, _error(request_id, InvalidParamsError(message=str(e))))
            return
        ctx = ServerCallContext(user=SlimUser(who),
                                state={"method": method, "request_id": request_id,
                                       "slim_caller": who})
        ctx.tenant = getattr(req, "tenant", "")
        log.debug("A2A over slim: %s from %s (%s)", method, who.name, who.spiffe_id)
        if method in _STREAMING:
            streaming = asyncio.ensure_future(
                _stream_events(session, handler, method, req, ctx, request_id))
            gone = asyncio.ensure_future(_until_peer_closes(session))
            try:
                await asyncio.wait({streaming, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not streaming.done():
                    # The caller left the stream: stop sending it this call's events.
                    log.info("A2A over slim: %s from %s ended by the caller", method, who.name)
                    streaming.cancel()
                await asyncio.gather(streaming, return_exceptions=True)
            if streaming.done() and not streaming.cancelled() and streaming.exception():
                e = streaming.exception()
                log.warning("A2A over slim: %s from %s failed: %s", method, who.name, e)
                try:
                    await _framing.send(session, _error(request_id, e))
                    await session.publish(_END)
                except SlimError:
                    pass
            # Let the caller close first (it does on the end frame), bounded.
            try:
                await asyncio.wait_for(gone, close_timeout)
            except asyncio.TimeoutError:
                pass
        else:
            try:
                result = await _unary(handler, agent_card, method, req, ctx)
                out = _response(request_id, result)
            except Exception as e:  # noqa: BLE001 - every failure becomes the caller's error
                if not isinstance(e, A2AError):
                    log.exception("A2A over slim: %s from %s failed", method, who.name)
                out = _error(request_id, e)
            await _framing.send(session, out)
            try:
                await asyncio.wait_for(_until_peer_closes(session), close_timeout)
            except asyncio.TimeoutError:
                pass
    except SlimError as e:
        log.warning("A2A over slim: session with %s (%s) failed: %s", who.name, who.spiffe_id, e)
    finally:
        _caller.reset(token)
        await _close(session, close_timeout)


async def serve_a2a(app: App, request_handler: RequestHandler, agent_card: pb.AgentCard, *,
                    require_mls: bool = False, request_timeout: float = 30.0,
                    close_timeout: float = _CLOSE_TIMEOUT) -> None:
    """Serves the A2A agent ``request_handler`` (the SDK's ``RequestHandler``,
    e.g. ``DefaultRequestHandler(executor, task_store, card)``) to every
    point-to-point session opened to ``app``'s service, concurrently, until
    cancelled or the app is closed; ``agent_card`` is served by name
    (``GetAgentCard``), with a ``SLIM`` interface naming ``app``'s service
    added if it has none. Group-channel invitations are declined.

    ``require_mls``: refuse sessions that are not MLS-encrypted (so every
    caller's SPIFFE ID is MLS-proven). Several instances may serve one name;
    each call goes to one of them (anycast) — share their task store if a
    client may call GetTask/CancelTask on another instance than the one that
    runs the task."""
    card = _with_slim_interface(agent_card, _service_of(app))
    tasks: set[asyncio.Task[None]] = set()

    async def one(s: Session) -> None:
        try:
            await serve_session(s, request_handler, card, request_timeout=request_timeout,
                                close_timeout=close_timeout)
        except Exception:  # noqa: BLE001 - one caller's failure must not stop the server
            log.exception("A2A over slim: session with %s (%s) failed", s.name, s.peer_spiffe_id)

    try:
        async for s in app.sessions():
            if s.kind != "p2p":
                log.info("A2A over slim: leaving channel %s (an A2A agent serves p2p sessions)",
                         s.name)
                t = asyncio.ensure_future(_close(s, close_timeout))
            elif require_mls and not s.mls:
                log.warning("A2A over slim: refusing a session without MLS from %s (%s)",
                            s.name, s.peer_spiffe_id)
                t = asyncio.ensure_future(_close(s, close_timeout))
            else:
                t = asyncio.ensure_future(one(s))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
    finally:
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
