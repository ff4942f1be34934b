"""End-to-end smoke test of slim_agents against a real node.

Starts a dev trust domain, a slim-node and the dev Workload API (the way
python/bench/ours_bench.py does; binaries from $CARGO_TARGET_DIR/debug or
release: `cargo build -p slim-node -p slim-ctl`), then exercises raw pub/sub,
a p2p session, an MLS group channel, unary and streaming RPC, cancellation
and timeouts. Prints OK at the end.

    python python/examples/smoke.py
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "bench"))

import ours_bench  # noqa: E402

import slim_agents as slim  # noqa: E402

T = 20


def step(what: str) -> None:
    print(f"  {what}", flush=True)


def second_identity(st: ours_bench.OurStack) -> slim.WorkloadApi:
    """A second dev Workload API with another SPIFFE ID (a channel admits
    each SPIFFE ID once, so bob must not share alice's)."""
    slimctl = ours_bench.find_binary("slimctl", "SLIMCTL_BIN")
    p = ours_bench._Proc([slimctl, "dev-spire", "serve", "--socket", str(st.dir / "bob.sock"),
                          "--spiffe-id", "spiffe://bench.local/agent/bob",
                          "--ca", str(st.dir / "ca"), "--ttl", "1h"], st.dir / "bob-spire.log")
    EXTRA.append(p)
    line = p.wait_for("SPIFFE_ENDPOINT_SOCKET=", T)
    return slim.WorkloadApi(line.split("=", 1)[1].strip())


EXTRA: list = []


async def main(st: ours_bench.OurStack) -> None:
    a = await asyncio.wait_for(slim.connect(st.url, "smoke/ns/alice", identity=st.identity()), T)
    async with slim.connect(st.url, "smoke/ns/bob", identity=second_identity(st)) as b:
        step(f"connected {a!r} and {b!r}")
        assert a.name.startswith("smoke/ns/alice/") and a.spiffe_id, (a.name, a.spiffe_id)

        # raw pub/sub
        await b.subscribe("smoke/ns/topic")
        mid = await a.publish("smoke/ns/topic", b"hello raw")
        await a.flush()
        msg = await b.receive(timeout=T)
        assert msg.payload == b"hello raw" and msg.source == a.name, msg
        assert msg.mode == "multicast" and msg.spiffe_id == a.spiffe_id, msg
        assert b.spiffe_id == "spiffe://bench.local/agent/bob", b.spiffe_id
        await a.publish("smoke/ns/topic", bytearray(b"ba"))
        await a.publish("smoke/ns/topic", memoryview(b"mv"))
        got = [(await b.receive(timeout=T)).payload for _ in range(2)]
        assert got == [b"ba", b"mv"], got
        step(f"raw pub/sub ok (msg id {mid}): {msg!r}")

        # receive timeout: the package's TimeoutError, also builtins'
        t0 = time.monotonic()
        try:
            await b.receive(timeout=0.2)
            raise AssertionError("no timeout")
        except slim.TimeoutError as e:
            assert isinstance(e, TimeoutError) and e.reason == str(e), e
        assert time.monotonic() - t0 < 2
        # asyncio.wait_for around receive() cancels it; the next receive still works
        try:
            await asyncio.wait_for(b.receive(), 0.2)
            raise AssertionError("no timeout")
        except asyncio.TimeoutError:
            pass
        await a.publish("smoke/ns/topic", b"after cancel")
        assert (await b.receive(timeout=T)).payload == b"after cancel"
        step("timeouts ok")

        # p2p session
        accept = asyncio.create_task(b.accept(timeout=T))
        s = await a.open_session("smoke/ns/bob", timeout=T)
        r = await accept
        assert (s.kind, s.role, r.role) == ("p2p", "initiator", "responder"), (s, r)
        await s.publish(b"ping")
        m = await r.receive(timeout=T)
        assert m.payload == b"ping" and m.seq is not None, m
        await r.send(b"pong")
        assert (await s.receive(timeout=T)).payload == b"pong"
        step(f"p2p ok: {s!r} / {r!r}")
        await s.close()
        got = [m async for m in r]  # ends cleanly when the peer closed
        assert got == [], got
        step("p2p close ends iteration")

        # MLS group channel: a moderates, b joins by request
        chan = "smoke/ns/channel"
        ch = await a.create_channel(chan, admission=["spiffe://bench.local/**"])
        mem = await b.join_channel(chan, timeout=30)
        assert (ch.role, mem.role, ch.mls, mem.mls) == ("moderator", "member", True, True)
        members = await ch.members()
        assert {x.name for x in members} >= {a.name, b.name}, members
        await ch.publish(b"to the group")
        m = await mem.receive(timeout=T)
        assert m.payload == b"to the group" and m.epoch is not None, m
        step(f"group ok: {m!r}, members {members!r}")
        try:
            await mem.invite("smoke/ns/carol")
            raise AssertionError("member could invite")
        except slim.WrongRoleError as e:
            step(f"wrong role ok: {e}")
        async with mem:
            pass  # leaves
        await ch.close()

        # RPC: b serves
        async def serve() -> None:
            async for req in b.requests():
                if req.payload == b"stream":
                    for i in range(3):
                        await req.send(b"item%d" % i)
                    await req.end()
                elif req.payload == b"fail":
                    await req.fail("no such thing")
                elif req.payload == b"endless":
                    i = 0
                    try:
                        while not req.cancelled:
                            await req.send(b"tick%d" % i)
                            i += 1
                            await asyncio.sleep(0.05)
                    except slim.SlimError:
                        pass  # the caller went away
                    stream_cancelled.set()
                elif req.payload == b"slow":
                    while not req.cancelled:
                        await asyncio.sleep(0.05)
                    cancelled_seen.set()
                else:
                    await req.reply(req.payload.upper())

        cancelled_seen = asyncio.Event()
        stream_cancelled = asyncio.Event()
        await b.serve()
        server = asyncio.create_task(serve())
        assert await a.request("smoke/ns/bob", b"hi", timeout=T) == b"HI"
        items = [x async for x in a.request_stream("smoke/ns/bob", b"stream", timeout=T)]
        assert items == [b"item0", b"item1", b"item2"], items
        try:
            await a.request("smoke/ns/bob", b"fail", timeout=T)
            raise AssertionError("no RemoteError")
        except slim.RemoteError as e:
            assert "no such thing" in str(e), e
        step("rpc ok")

        # leaving a stream early (async with + break) cancels the call
        async with a.request_stream("smoke/ns/bob", b"endless", timeout=T) as stream:
            async for item in stream:
                assert item == b"tick0", item
                break
        await asyncio.wait_for(stream_cancelled.wait(), 10)
        step("leaving a request_stream cancels it at the responder")

        # cancelling the awaiting task drops the Rust future (the responder sees it)
        cancelled_seen.clear()
        call = asyncio.create_task(a.request("smoke/ns/bob", b"slow", timeout=T))
        await asyncio.sleep(0.5)
        call.cancel()
        try:
            await call
        except asyncio.CancelledError:
            pass
        await asyncio.wait_for(cancelled_seen.wait(), 10)
        step("cancelling a request cancels the call at the responder")

        try:
            await a.request("smoke/ns/nobody", b"x", timeout=2)
            raise AssertionError("no error")
        except (slim.NoRouteError, slim.TimeoutError) as e:
            step(f"no responder: {type(e).__name__}: {e}")

        server.cancel()
        await a.close()
        try:
            await a.subscribe("smoke/ns/x")
            raise AssertionError("closed app accepted a call")
        except slim.ClosedError:
            pass
    print("OK")


if __name__ == "__main__":
    stack = ours_bench.start_our_node()
    try:
        asyncio.run(main(stack))
    finally:
        for p in EXTRA:
            p.stop()
        stack.stop()
