"""Type stubs of the native extension `slim_agents._native` (PyO3 over the Rust SDK).

Every `async def` below returns a coroutine (`Call`) whose Rust future starts
when awaited, runs without the GIL, and is dropped if the awaiting task is
cancelled.
"""

import builtins
from collections.abc import Generator
from types import TracebackType
from typing import Any, Literal, Optional, Union, final

from typing_extensions import Buffer, Self

__version__: str

Data = Union[bytes, bytearray, memoryview, Buffer]
"""A payload: `bytes`, `bytearray`, `memoryview` (any buffer of bytes). `str` is a TypeError."""

Mode = Literal["multicast", "anycast", "unicast"]

# --------------------------------------------------------------------------- exceptions

class SlimError(Exception):
    """Base class of every error raised by slim_agents. `str(e)` and `e.reason` are the reason."""

    @property
    def reason(self) -> str: ...

class ConnectError(SlimError):
    """The node's name did not resolve, the node could not be reached, or TLS was refused."""

class IdentityError(SlimError):
    """The identity could not be obtained or used (Workload API, SVID files, JWT-SVID)."""

class PermissionDenied(SlimError):
    """Refused by the node's authorization policy (publish, subscribe, register, join)."""

class JoinRefused(PermissionDenied):
    """The channel's moderator refused the join request (admission)."""

class NoRouteError(SlimError):
    """Nobody subscribes to or serves that name."""

class TimeoutError(SlimError, builtins.TimeoutError):  # noqa: A001
    """An operation did not complete in time (also a builtins.TimeoutError)."""

class ClosedError(SlimError):
    """The app or session is closed (also: this member was removed from the channel)."""

class MlsError(SlimError):
    """End-to-end (MLS) encryption failed."""

class WrongRoleError(SlimError):
    """An operation of another role, e.g. `invite` on a member."""

class RemoteError(SlimError):
    """The RPC responder failed the call."""

class DeliveryFailed(SlimError):
    """A reliable message was not acknowledged after every retry."""

class InvalidNameError(SlimError, ValueError):
    """A malformed SLIM name, e.g. not `org/namespace/service` (also a ValueError)."""

class InvalidArgumentError(SlimError, ValueError):
    """An invalid argument or configuration, e.g. a malformed node URL (also a ValueError)."""

class ProtocolError(SlimError):
    """Something the peer or the node sent could not be understood."""

# --------------------------------------------------------------------------- coroutine

@final
class Call:
    """The coroutine returned by every async method (awaitable; accepted by
    `asyncio.create_task`, `gather`, `wait_for`)."""

    def __await__(self) -> Generator[Any, None, Any]: ...
    def send(self, value: Any) -> Any: ...
    def throw(self, typ: Any, val: Any = ..., tb: Any = ...) -> Any: ...
    def close(self) -> None: ...

# --------------------------------------------------------------------------- values

@final
class Message:
    """A message, raw or in a session.

    ```python
    msg = await app.receive()
    print(msg.source, msg.spiffe_id, msg.payload.decode())
    ```
    """

    @property
    def payload(self) -> bytes: ...
    @property
    def source(self) -> str:
        """The sender's full name."""
    @property
    def spiffe_id(self) -> Optional[str]:
        """The sender's SPIFFE ID (MLS-proven in an MLS channel, node-authenticated otherwise)."""
    @property
    def name(self) -> str:
        """The name (or channel) it was sent to."""
    @property
    def seq(self) -> Optional[int]:
        """The sender's sequence number (sessions)."""
    @property
    def epoch(self) -> Optional[int]:
        """The MLS epoch it was encrypted in."""
    @property
    def mode(self) -> Mode:
        """How it was sent (`"unicast"` for point-to-point session messages)."""

@final
class Member:
    """A member of a group channel."""

    def __init__(self, name: str, spiffe_id: str) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def spiffe_id(self) -> str: ...

@final
class MemberJoined:
    """`session.next_event()`: a member joined."""

    def __init__(self, name: str, spiffe_id: str) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def spiffe_id(self) -> str: ...

@final
class MemberLeft:
    """`session.next_event()`: a member left or was removed."""

    def __init__(self, name: str, spiffe_id: str, reason: str) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def spiffe_id(self) -> str: ...
    @property
    def reason(self) -> str: ...

@final
class Request:
    """An RPC to answer: `reply()` once, or `send()` items then `end()`, or `fail()`.

    ```python
    async for req in app.requests():
        await req.reply(req.payload.upper())
    ```
    """

    @property
    def payload(self) -> bytes: ...
    @property
    def caller(self) -> str:
        """The caller's full name."""
    @property
    def caller_spiffe_id(self) -> Optional[str]: ...
    @property
    def deadline(self) -> float:
        """Seconds the caller had left when the request arrived."""
    @property
    def cancelled(self) -> bool:
        """The caller gave up (cancelled, or its deadline passed)."""
    async def reply(self, data: Data) -> None: ...
    async def send(self, item: Data) -> None: ...
    async def end(self) -> None: ...
    async def fail(self, reason: str) -> None: ...

# --------------------------------------------------------------------------- sessions

@final
class Session:
    """A point-to-point session or a group channel, whatever this end's role.

    ```python
    async with await app.open_session("acme/tools/echo") as s:
        await s.publish(b"ping")
        reply = await s.receive(timeout=5)
    ```
    """

    @property
    def kind(self) -> Literal["p2p", "group"]: ...
    @property
    def role(self) -> Literal["initiator", "responder", "moderator", "member"]: ...
    @property
    def name(self) -> str:
        """The channel's name, or the peer's full name (p2p)."""
    @property
    def peer_spiffe_id(self) -> Optional[str]: ...
    @property
    def mls(self) -> bool: ...
    @property
    def reliable(self) -> bool: ...
    async def publish(self, data: Data) -> None:
        """Sends to the peer (p2p) or to every member (group)."""
    async def send(self, data: Data) -> None:
        """Alias of `publish`."""
    async def receive(self, timeout: Optional[float] = None) -> Message:
        """The next message; `ClosedError` once the session ended, `TimeoutError` after `timeout`."""
    async def next_event(
        self, timeout: Optional[float] = None
    ) -> Union[Message, MemberJoined, MemberLeft]: ...
    async def invite(self, name: str) -> None:
        """Moderator only (else `WrongRoleError`): invites and waits until joined."""
    async def remove(self, name_or_spiffe_id: str) -> None:
        """Moderator only: removes a member."""
    async def members(self) -> list[Member]: ...
    async def close(self) -> None:
        """p2p: close once acked; moderator: close the channel; member: leave. Idempotent."""
    def __aiter__(self) -> Self: ...
    async def __anext__(self) -> Message: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

@final
class AppIterator:
    """`app.messages()`, `app.sessions()`, `app.requests()`: ends when the app is closed."""

    def __aiter__(self) -> Self: ...
    async def __anext__(self) -> Any: ...

@final
class RequestStream:
    """The responses of `app.request_stream(...)`: an async iterator of bytes.

    The call starts at the first iteration; cancelling the iterating task,
    `aclose()` or leaving `async with` cancels it.
    """

    def __aiter__(self) -> Self: ...
    async def __anext__(self) -> bytes: ...
    async def aclose(self) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

# --------------------------------------------------------------------------- app

@final
class App:
    """A connected agent (from `await slim_agents.connect(...)`).

    ```python
    async with await slim.connect("slim://127.0.0.1:4500", "acme/eu/monitor") as app:
        await app.subscribe("acme/alerts/all")
        async for msg in app.messages():
            print(msg.source, msg.payload)
    ```
    """

    @property
    def name(self) -> str:
        """The full name (`org/namespace/service/instance`)."""
    @property
    def spiffe_id(self) -> Optional[str]:
        """The SPIFFE ID the node authenticated this agent as."""
    async def subscribe(self, name: str) -> None: ...
    async def unsubscribe(self, name: str) -> None: ...
    async def publish(self, name: str, data: Data, *, mode: Mode = "multicast") -> int:
        """Returns the message id once queued; `flush()` reports refusals."""
    async def flush(self) -> None: ...
    async def receive(self, timeout: Optional[float] = None) -> Message: ...
    def messages(self) -> AppIterator: ...
    async def open_session(
        self,
        service: str,
        *,
        reliable: bool = True,
        mls: bool = False,
        timeout: Optional[float] = None,
    ) -> Session: ...
    async def accept(self, timeout: Optional[float] = None) -> Session: ...
    def sessions(self) -> AppIterator: ...
    async def create_channel(
        self, name: str, *, mls: bool = True, admission: Optional[list[str]] = None
    ) -> Session: ...
    async def join_channel(self, name: str, *, mls: bool = True, timeout: float = 60.0) -> Session: ...
    async def request(self, service: str, data: Data, *, timeout: float = 5.0) -> bytes: ...
    def request_stream(self, service: str, data: Data, *, timeout: float = 30.0) -> RequestStream: ...
    async def next_request(self, timeout: Optional[float] = None) -> Request: ...
    def requests(self) -> AppIterator: ...
    async def serve(self) -> None: ...
    async def close(self) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

def connect(
    url: str,
    name: str,
    *,
    identity: Literal["workload_api", "files", "jwt", "shared_secret"] = "workload_api",
    socket: Optional[str] = None,
    dir: Optional[str] = None,
    audience: Optional[str] = None,
    secret: Optional[str] = None,
    bundle: Optional[str] = None,
    trust_domain: Optional[str] = None,
    timeout: float = 10.0,
    request_timeout: float = 10.0,
    on_disconnect: Literal["buffer", "fail"] = "buffer",
    max_udp_payload: int = 1452,
) -> Call:
    """Low level; use `slim_agents.connect`."""
