"""1. Raw publish/subscribe and anycast across two federated nodes."""

import asyncio

import pytest

from conftest import ID_DEFAULT, ID_INVITEE, retry_until

pytestmark = pytest.mark.usefixtures("nodes")


async def _warm_up(slim, pub, sub_got: asyncio.Event, name: str, mode: str, what: str) -> None:
    """Publishes `warm` until a receiver saw one: the interest of the subscriber on
    node A needs a moment to reach node B. Bounded."""

    async def once():
        await pub.publish(name, b"warm", mode=mode)
        try:
            await pub.flush()
        except slim.NoRouteError:
            pass  # not propagated yet
        await asyncio.wait_for(sub_got.wait(), 0.5)

    await retry_until(once, timeout=30, what=what, interval=0.05,
                      retry_on=(TimeoutError, slim.NoRouteError))


async def test_pubsub_across_two_nodes(slim, connect, ns):
    topic = f"t/{ns}/news"
    sub = await connect(f"t/{ns}/sub", ID_DEFAULT, node="a")
    pub = await connect(f"t/{ns}/pub", ID_INVITEE, node="b")
    assert pub.spiffe_id == ID_INVITEE and sub.spiffe_id == ID_DEFAULT
    assert pub.name.startswith(f"t/{ns}/pub/") and pub.name != f"t/{ns}/pub"
    await sub.subscribe(topic)

    got: list = []
    first = asyncio.Event()
    n = 200
    done = asyncio.Event()

    async def reader():
        while True:
            msg = await sub.receive()
            first.set()
            if msg.payload != b"warm":
                got.append(msg)
                if len(got) >= n:
                    done.set()

    task = asyncio.create_task(reader())
    try:
        await _warm_up(slim, pub, first, topic, "multicast",
                       "first delivery from node B to a subscriber on node A")
        for i in range(n):
            await pub.publish(topic, b"m-%05d" % i)
        await pub.flush()  # nothing refused
        await asyncio.wait_for(done.wait(), 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    payloads = [m.payload for m in got]
    assert payloads == [b"m-%05d" % i for i in range(n)], "lost, duplicated or reordered"
    for m in got:
        assert m.source == pub.name
        assert m.spiffe_id == ID_INVITEE  # asserted by B, carried over the link
        assert m.name == topic
        assert m.mode == "multicast"


async def test_anycast_across_two_nodes_each_message_to_exactly_one(slim, connect, ns):
    service = f"t/{ns}/worker"
    # Two instances of one service on node A, the publisher on node B.
    w1 = await connect(service, node="a")
    w2 = await connect(service, node="a")
    assert w1.name != w2.name
    pub = await connect(f"t/{ns}/boss", node="b")

    n = 200
    got = {w1.name: [], w2.name: []}
    first = asyncio.Event()
    enough = asyncio.Event()

    def total() -> int:
        return sum(len(v) for v in got.values())

    async def reader(app):
        while True:
            msg = await app.receive()
            first.set()
            assert msg.mode == "anycast"
            if msg.payload != b"warm":
                got[app.name].append(msg.payload)
                if total() >= n:
                    enough.set()

    tasks = [asyncio.create_task(reader(w)) for w in (w1, w2)]
    try:
        await _warm_up(slim, pub, first, service, "anycast",
                       "first anycast from node B to the service on node A")
        for i in range(n):
            await pub.publish(service, b"job-%05d" % i, mode="anycast")
        await pub.flush()
        await asyncio.wait_for(enough.wait(), 30)
    finally:
        for t in tasks:
            t.cancel()
        res = await asyncio.gather(*tasks, return_exceptions=True)
    for r in res:  # a reader's assertion failed?
        if isinstance(r, AssertionError):
            raise r
    all_msgs = got[w1.name] + got[w2.name]
    assert len(all_msgs) == n, f"{len(all_msgs)} deliveries for {n} anycast messages"
    assert sorted(all_msgs) == [b"job-%05d" % i for i in range(n)], "a message went to both or none"
    assert not set(got[w1.name]) & set(got[w2.name])
    # The node round-robins anycast over its local instances.
    assert got[w1.name] and got[w2.name], {k: len(v) for k, v in got.items()}
