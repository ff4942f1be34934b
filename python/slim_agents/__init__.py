"""slim_agents — secure messaging for AI agents (SLIM) from asyncio.

Connect to a SLIM node with a SPIFFE identity, then publish and subscribe,
open point-to-point sessions, create or join MLS-encrypted group channels,
and make or serve RPCs::

    import asyncio
    import slim_agents as slim

    async def main() -> None:
        async with slim.connect("slim://127.0.0.1:4500", "acme/eu-west/monitor") as app:
            ch = await app.join_channel("acme/monitoring/security-incident", timeout=60)
            await ch.publish(b'{"event": "cve"}')
            async for msg in ch:
                print(msg.source, msg.spiffe_id, msg.payload)

    asyncio.run(main())

Every I/O method is a coroutine; errors are subclasses of :class:`SlimError`
(see the module attributes ``ConnectError``, ``PermissionDenied``, ...).
Set ``SLIM_LOG=info`` (an env-filter directive) to see the Rust layer's logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Generator, Literal, Optional, Union

from . import _native
from ._native import (
    App,
    AppIterator,
    ClosedError,
    ConnectError,
    DeliveryFailed,
    IdentityError,
    InvalidArgumentError,
    InvalidNameError,
    JoinRefused,
    Member,
    MemberJoined,
    MemberLeft,
    Message,
    MlsError,
    NoRouteError,
    PermissionDenied,
    ProtocolError,
    RemoteError,
    Request,
    RequestStream,
    Session,
    SlimError,
    TimeoutError,  # noqa: A004 - also a builtins.TimeoutError
    WrongRoleError,
)

__version__: str = _native.__version__

__all__ = [
    "connect",
    "WorkloadApi",
    "SvidFiles",
    "JwtSvid",
    "SharedSecret",
    "Identity",
    "App",
    "AppIterator",
    "Session",
    "RequestStream",
    "Message",
    "Request",
    "Member",
    "MemberJoined",
    "MemberLeft",
    "SlimError",
    "ConnectError",
    "IdentityError",
    "PermissionDenied",
    "JoinRefused",
    "NoRouteError",
    "TimeoutError",
    "ClosedError",
    "MlsError",
    "WrongRoleError",
    "RemoteError",
    "DeliveryFailed",
    "InvalidNameError",
    "InvalidArgumentError",
    "ProtocolError",
]


# --------------------------------------------------------------------------- identities


@dataclass(frozen=True)
class WorkloadApi:
    """Identity from the SPIFFE Workload API (a SPIRE agent) — the default.

    ``socket``: the Workload API endpoint (``unix:///run/spire/agent.sock`` or a
    path); ``None`` uses ``$SPIFFE_ENDPOINT_SOCKET``. The X.509-SVID is renewed
    as the agent rotates it.

    Example::

        app = await slim.connect(url, "acme/eu/monitor",
                                 identity=slim.WorkloadApi("unix:///run/spire/agent.sock"))
    """

    socket: Optional[str] = None

    def _native_args(self) -> dict[str, Any]:
        return {"identity": "workload_api", "socket": self.socket}


@dataclass(frozen=True)
class SvidFiles:
    """Identity from files written by spiffe-helper, watched for rotation.

    ``dir`` holds the SVID certificate, its key and the trust bundle as
    ``tls.crt``, ``tls.key`` and ``svid_bundle.pem`` (spiffe-helper's
    ``svid_file_name``, ``svid_key_file_name``, ``svid_bundle_file_name``;
    ``slimctl dev-ca issue`` writes the same layout).

    Example::

        app = await slim.connect(url, "acme/eu/monitor", identity=slim.SvidFiles("/run/svid"))
    """

    dir: str

    def _native_args(self) -> dict[str, Any]:
        return {"identity": "files", "dir": os.fspath(self.dir)}


@dataclass(frozen=True)
class JwtSvid:
    """Authenticate with a JWT-SVID for ``audience`` from the Workload API
    (instead of a client certificate; the node is still verified by its SVID).

    Example::

        app = await slim.connect(url, "acme/eu/monitor", identity=slim.JwtSvid("slim"))
    """

    audience: str
    socket: Optional[str] = None

    def _native_args(self) -> dict[str, Any]:
        return {"identity": "jwt", "audience": self.audience, "socket": self.socket}


@dataclass(frozen=True)
class SharedSecret:
    """INSECURE, development only: a shared secret instead of an identity.

    ``bundle``: path of the node's trust bundle (PEM) used to verify the node.
    ``trust_domain``: the trust domain of bundle certificates that do not name
    theirs in a ``spiffe://`` URI SAN; ``slimctl dev-ca`` CAs do, so it can be
    left out. No MLS with a shared secret (there is no SVID to bind it to).

    Example::

        app = await slim.connect(url, "dev/test/app",
                                 identity=slim.SharedSecret("s3cret", "/tmp/ca/bundle.pem"))
    """

    secret: str
    bundle: str
    trust_domain: Optional[str] = None

    def __repr__(self) -> str:  # never print the secret
        return f"SharedSecret(secret='…', bundle={self.bundle!r}, trust_domain={self.trust_domain!r})"

    def _native_args(self) -> dict[str, Any]:
        return {
            "identity": "shared_secret",
            "secret": self.secret,
            "bundle": os.fspath(self.bundle),
            "trust_domain": self.trust_domain,
        }


Identity = Union[WorkloadApi, SvidFiles, JwtSvid, SharedSecret]


# --------------------------------------------------------------------------- connect


class _Connecting:
    """What :func:`connect` returns: await it for the :class:`App`, or use it
    directly as ``async with slim.connect(...) as app``."""

    __slots__ = ("_kwargs", "_app")

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self._kwargs = kwargs
        self._app: Optional[App] = None

    def __await__(self) -> Generator[Any, None, App]:
        return _native.connect(**self._kwargs).__await__()

    async def __aenter__(self) -> App:
        self._app = await self
        return self._app

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        app, self._app = self._app, None
        if app is not None:
            await app.close()

    def __repr__(self) -> str:
        return f"<slim_agents.connect url={self._kwargs['url']!r} name={self._kwargs['name']!r}>"


def connect(
    url: Optional[str] = None,
    name: Optional[str] = None,
    *,
    identity: Optional[Identity] = None,
    timeout: float = 10.0,
    request_timeout: float = 10.0,
    on_disconnect: Literal["buffer", "fail"] = "buffer",
    max_udp_payload: int = 1452,
) -> _Connecting:
    """Connects to a SLIM node as ``name`` and returns the :class:`App`.

    ``url``: ``"slim://host:port"`` or ``"host:port"``; ``None`` uses
    ``$SLIM_NODE``. Host names are resolved at every (re)connect.
    ``name``: ``org/namespace/service`` (an instance id is appended: see
    ``app.name``). ``identity``: :class:`WorkloadApi` (default),
    :class:`SvidFiles`, :class:`JwtSvid` or :class:`SharedSecret`.
    ``timeout`` bounds the connection, ``request_timeout`` each
    subscribe/unsubscribe/flush round trip. ``on_disconnect``: what happens
    to raw publishes when the connection to the node drops — ``"buffer"``
    (default) holds them and sends them after the reconnect (at least once);
    ``"fail"`` fails those the node had not confirmed (the next
    ``app.flush()`` raises :class:`ConnectError`) and publishes made while
    disconnected raise :class:`ConnectError` at once. Never silently dropped.
    ``max_udp_payload``: the largest UDP datagram (bytes, 1200–65527) QUIC's
    path-MTU discovery probes for towards a node across a network. The
    default, 1452, fits Ethernet's 1500; on jumbo-frame networks 6550 (with
    the node's ``[node] max_udp_payload`` raised to match) carries messages
    of a few KiB 25–50 % faster. A node on this host is reached with
    65000-byte datagrams whatever this is.

    Raises :class:`ConnectError` (cannot resolve / connect / TLS),
    :class:`IdentityError`, :class:`PermissionDenied` (the node refused the
    name), :class:`InvalidNameError`, :class:`InvalidArgumentError` (bad URL).

    Both forms work::

        app = await slim.connect("slim://127.0.0.1:4500", "acme/eu/monitor")
        ...
        await app.close()

        async with slim.connect("slim://127.0.0.1:4500", "acme/eu/monitor") as app:
            ...
    """
    if url is None:
        url = os.environ.get("SLIM_NODE")
        if not url:
            raise InvalidArgumentError("no node URL: pass url= or set $SLIM_NODE")
    if name is None:
        raise TypeError("connect() missing required argument: 'name'")
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if identity is None:
        identity = WorkloadApi()
    native = getattr(identity, "_native_args", None)
    if native is None:
        raise TypeError(
            "identity must be slim_agents.WorkloadApi, SvidFiles, JwtSvid or SharedSecret, "
            f"got {type(identity).__name__}"
        )
    if (
        isinstance(max_udp_payload, bool)
        or not isinstance(max_udp_payload, int)
        or not 1200 <= max_udp_payload <= 65527
    ):
        raise InvalidArgumentError(
            f"max_udp_payload must be an int of 1200..65527 bytes, got {max_udp_payload!r}"
        )
    kwargs: dict[str, Any] = {
        "url": url,
        "name": name,
        "timeout": float(timeout),
        "request_timeout": float(request_timeout),
        "on_disconnect": on_disconnect,
        "max_udp_payload": max_udp_payload,
        **native(),
    }
    return _Connecting(kwargs)
