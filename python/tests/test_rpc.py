"""4. RPC: unary echo, streaming, deadline, cancellation, remote failure, no responder."""

import asyncio
import builtins
import inspect
import time

import pytest

from conftest import ID_DEFAULT, ID_INVITEE, retry_until


class Server:
    """An RPC responder on its own app; each request handled in its own task."""

    def __init__(self, slim, app):
        self.app = app
        self.slow = asyncio.get_running_loop().create_future()
        self.slow_arrived = asyncio.Event()
        self.task = asyncio.create_task(self._serve())
        self.handlers: set = set()

    async def _serve(self):
        async for req in self.app.requests():
            t = asyncio.create_task(self._handle(req))
            self.handlers.add(t)
            t.add_done_callback(self.handlers.discard)

    async def _handle(self, req):
        p = req.payload
        if p.startswith(b"stream:"):
            for i in range(int(p[7:])):
                await req.send(b"item-%d" % i)
            await req.end()
        elif p == b"whoami":
            await req.reply(f"{req.caller}|{req.caller_spiffe_id}".encode())
        elif p == b"fail":
            await req.fail("no such CVE")
        elif p == b"slow":
            self.slow_arrived.set()
            deadline_left = req.deadline
            t_end = time.monotonic() + 20
            # `cancelled` is a state with no event to await: look at it until it flips.
            while not req.cancelled and time.monotonic() < t_end:
                await asyncio.sleep(0.05)
            seen_cancelled = req.cancelled  # read before answering (see test below)
            reply_err = None
            try:
                await req.reply(b"too late")
            except Exception as e:  # noqa: BLE001
                reply_err = e
            self.after_reply_cancelled = req.cancelled
            if not self.slow.done():
                self.slow.set_result((seen_cancelled, reply_err, deadline_left))
        else:
            await req.reply(p)

    async def stop(self):
        self.task.cancel()
        for t in list(self.handlers):
            t.cancel()
        await asyncio.gather(self.task, *self.handlers, return_exceptions=True)


async def _setup(slim, connect, ns):
    srv_app = await connect(f"t/{ns}/cvedb", ID_DEFAULT)
    cli = await connect(f"t/{ns}/caller", ID_INVITEE)
    srv = Server(slim, srv_app)
    if hasattr(srv_app, "serve"):
        await srv_app.serve()  # serving before anyone calls (docs/PYTHON.md)
    svc = f"t/{ns}/cvedb"
    # Until the responder is serving, calls fail fast with NoRouteError.
    await retry_until(lambda: cli.request(svc, b"ping", timeout=2), timeout=30,
                      what="first RPC answered", retry_on=(slim.NoRouteError,))
    return srv, srv_app, cli, svc


def _stream(app, svc, data, timeout):
    return app.request_stream(svc, data, timeout=timeout)


async def _collect(it, limit=1000):
    if inspect.isawaitable(it):
        it = await it
    out = []
    async for item in it:
        out.append(item)
        assert len(out) <= limit
    return out


async def test_rpc_unary_and_streaming(slim, connect, ns):
    srv, srv_app, cli, svc = await _setup(slim, connect, ns)
    try:
        for i in range(20):
            data = b"echo-%d" % i
            assert await asyncio.wait_for(cli.request(svc, data, timeout=5), 10) == data
        who = await asyncio.wait_for(cli.request(svc, b"whoami", timeout=5), 10)
        assert who.decode() == f"{cli.name}|{ID_INVITEE}"

        items = await asyncio.wait_for(_collect(_stream(cli, svc, b"stream:25", 30)), 40)
        assert items == [b"item-%d" % i for i in range(25)]
        empty = await asyncio.wait_for(_collect(_stream(cli, svc, b"stream:0", 30)), 40)
        assert empty == []
    finally:
        await srv.stop()


async def test_rpc_deadline_expires(slim, connect, ns):
    srv, srv_app, cli, svc = await _setup(slim, connect, ns)
    try:
        t0 = time.monotonic()
        with pytest.raises(slim.TimeoutError) as ei:
            await asyncio.wait_for(cli.request(svc, b"slow", timeout=1.0), 15)
        took = time.monotonic() - t0
        assert isinstance(ei.value, builtins.TimeoutError)
        assert isinstance(ei.value, slim.SlimError)
        assert 0.8 <= took < 6, f"deadline of 1 s took {took:.2f}s"
        cancelled, reply_err, deadline_left = await asyncio.wait_for(srv.slow, 30)
        assert cancelled or reply_err is not None, \
            "the responder saw neither request.cancelled nor a failing reply"
        assert 0 < deadline_left <= 1.5, deadline_left
    finally:
        await srv.stop()


async def test_rpc_cancelling_the_task_cancels_the_call(slim, connect, ns):
    srv, srv_app, cli, svc = await _setup(slim, connect, ns)
    try:
        call = asyncio.ensure_future(cli.request(svc, b"slow", timeout=30))
        await asyncio.wait_for(srv.slow_arrived.wait(), 15)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        cancelled, reply_err, _ = await asyncio.wait_for(srv.slow, 25)
        assert cancelled or reply_err is not None, "the responder never learnt of the cancel"
        if cancelled:
            # Once cancelled, a request stays cancelled (also after an answer was tried).
            assert srv.after_reply_cancelled, "request.cancelled went back to False after reply()"
    finally:
        await srv.stop()


async def test_rpc_streaming_deadline(slim, connect, ns):
    srv, srv_app, cli, svc = await _setup(slim, connect, ns)
    try:
        with pytest.raises(slim.TimeoutError):
            await asyncio.wait_for(_collect(_stream(cli, svc, b"slow", 1.0)), 15)
    finally:
        await srv.stop()


async def test_rpc_remote_failure(slim, connect, ns):
    srv, srv_app, cli, svc = await _setup(slim, connect, ns)
    try:
        with pytest.raises(slim.RemoteError) as ei:
            await asyncio.wait_for(cli.request(svc, b"fail", timeout=5), 10)
        assert "no such CVE" in str(ei.value)
        assert "no such CVE" in ei.value.reason
    finally:
        await srv.stop()


async def test_rpc_no_responder(slim, connect, ns):
    cli = await connect(f"t/{ns}/caller")
    t0 = time.monotonic()
    with pytest.raises(slim.NoRouteError) as ei:
        await asyncio.wait_for(cli.request(f"t/{ns}/nobody", b"x", timeout=10), 20)
    assert time.monotonic() - t0 < 5, "NoRouteError should come within a round trip"
    assert isinstance(ei.value, slim.SlimError) and ei.value.reason
    # A connected app that does not serve RPC is no responder either.
    idle = await connect(f"t/{ns}/idle")
    with pytest.raises(slim.NoRouteError):
        await asyncio.wait_for(cli.request(f"t/{ns}/idle", b"x", timeout=10), 20)
    assert idle.name
