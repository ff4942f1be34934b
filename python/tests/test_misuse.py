"""7. Misuse: closed objects, wrong roles, invalid names and types, bad URLs."""

import asyncio

import pytest

from conftest import CONNECT_TIMEOUT, ID_DEFAULT, ID_JOINER

T = 30


async def test_closed_app_raises_closed(slim, connect, ns):
    app = await connect(f"t/{ns}/app")
    await asyncio.wait_for(app.close(), T)
    await asyncio.wait_for(app.close(), T)  # idempotent
    calls = {
        "subscribe": lambda: app.subscribe(f"t/{ns}/x"),
        "unsubscribe": lambda: app.unsubscribe(f"t/{ns}/x"),
        "publish": lambda: app.publish(f"t/{ns}/x", b"x"),
        "flush": lambda: app.flush(),
        "receive": lambda: app.receive(timeout=1),
        "accept": lambda: app.accept(timeout=1),
        "open_session": lambda: app.open_session(f"t/{ns}/peer", timeout=1),
        "create_channel": lambda: app.create_channel(f"t/{ns}/chan"),
        "join_channel": lambda: app.join_channel(f"t/{ns}/chan", timeout=1),
        "request": lambda: app.request(f"t/{ns}/svc", b"x", timeout=1),
        "next_request": lambda: app.next_request(timeout=1),
    }
    wrong = {}
    for what, call in calls.items():
        try:
            await asyncio.wait_for(call(), 10)
            wrong[what] = "no error"
        except slim.ClosedError:
            pass
        except Exception as e:  # noqa: BLE001
            wrong[what] = f"{type(e).__name__}: {e}"
    assert not wrong, f"expected ClosedError after close(): {wrong}"


async def test_closed_sessions_raise_closed(slim, connect, ns):
    rx = await connect(f"t/{ns}/rx")
    tx = await connect(f"t/{ns}/tx")
    accept = asyncio.ensure_future(rx.accept(timeout=20))
    s = await asyncio.wait_for(tx.open_session(f"t/{ns}/rx", timeout=20), 30)
    r = await asyncio.wait_for(accept, 25)
    await s.publish(b"one")
    assert (await asyncio.wait_for(r.receive(timeout=10), 15)).payload == b"one"
    await asyncio.wait_for(s.close(), T)
    await asyncio.wait_for(s.close(), T)  # idempotent
    with pytest.raises(slim.ClosedError):
        await asyncio.wait_for(s.publish(b"two"), 10)
    with pytest.raises(slim.ClosedError):
        await asyncio.wait_for(s.receive(timeout=2), 10)
    # The peer's end is over too: its receive ends with ClosedError, not a timeout.
    with pytest.raises(slim.ClosedError):
        await asyncio.wait_for(r.receive(timeout=10), 15)

    # A closed group channel (moderator side).
    ch = await asyncio.wait_for(rx.create_channel(f"t/{ns}/chan"), T)
    await asyncio.wait_for(ch.close(), T)
    with pytest.raises(slim.ClosedError):
        await asyncio.wait_for(ch.publish(b"x"), 10)
    with pytest.raises(slim.ClosedError):
        await asyncio.wait_for(ch.invite(tx.name), 10)


async def test_wrong_role(slim, connect, ns):
    chan = f"t/{ns}/chan"
    mod = await connect(f"t/{ns}/mod")
    mem = await connect(f"t/{ns}/mem", ID_JOINER)
    ch = await asyncio.wait_for(mod.create_channel(chan, admission=[ID_JOINER]), T)
    m = await asyncio.wait_for(mem.join_channel(chan, timeout=30), 40)
    with pytest.raises(slim.WrongRoleError) as ei:
        await asyncio.wait_for(m.invite(f"t/{ns}/someone"), 10)
    assert "invite" in str(ei.value)
    with pytest.raises(slim.WrongRoleError):
        await asyncio.wait_for(m.remove(mod.name), 10)
    # p2p sessions have no moderator operations at all.
    accept = asyncio.ensure_future(mod.accept(timeout=20))
    s = await asyncio.wait_for(mem.open_session(f"t/{ns}/mod", timeout=20), 30)
    await asyncio.wait_for(accept, 25)
    with pytest.raises(slim.WrongRoleError):
        await asyncio.wait_for(s.invite(f"t/{ns}/someone"), 10)
    assert ch.role == "moderator" and m.role == "member"


@pytest.mark.parametrize("bad", ["", "just-one", "a/b", "a//c", "/a/b/c", "a/b/c/"])
async def test_invalid_names(slim, connect, ns, bad):
    app = await connect(f"t/{ns}/app")
    for call in (lambda: app.subscribe(bad), lambda: app.publish(bad, b"x"),
                 lambda: app.open_session(bad, timeout=1), lambda: app.request(bad, b"x", timeout=1)):
        with pytest.raises(slim.InvalidNameError) as ei:
            await asyncio.wait_for(call(), 10)
        assert isinstance(ei.value, ValueError) and isinstance(ei.value, slim.SlimError)


async def test_invalid_app_name_and_unicast_without_instance(slim, connect, ns):
    with pytest.raises(slim.InvalidNameError):
        await connect("not-a-name")
    app = await connect(f"t/{ns}/app")
    with pytest.raises(slim.InvalidNameError):
        await app.publish(f"t/{ns}/svc", b"x", mode="unicast")  # no instance id


async def test_wrong_types(slim, connect, ns):
    app = await connect(f"t/{ns}/app")
    with pytest.raises(TypeError):
        await app.publish(f"t/{ns}/x", "a str, not bytes")
    with pytest.raises(TypeError):
        await app.publish(123, b"x")
    with pytest.raises(TypeError):
        await app.subscribe(123)
    with pytest.raises(TypeError):
        await app.request(f"t/{ns}/x", "str", timeout=1)
    ch = await asyncio.wait_for(app.create_channel(f"t/{ns}/chan"), T)
    with pytest.raises(TypeError):
        await ch.publish("str")
    with pytest.raises(ValueError) as ei:
        await app.publish(f"t/{ns}/x", b"x", mode="broadcast")
    assert "broadcast" in str(ei.value) or "mode" in str(ei.value)


async def _connect_raw(slim, pki, url, name="t/misuse/app", **kw):
    ident = slim.WorkloadApi(pki.socket_for(ID_DEFAULT))
    return await asyncio.wait_for(slim.connect(url, name, identity=ident, timeout=5, **kw), 20)


@pytest.mark.parametrize("url,needle", [
    ("slim://127.0.0.1", "host:port"),
    ("127.0.0.1", "host:port"),
    ("slim://127.0.0.1:0", "host:port"),
    ("http://127.0.0.1:4500", "scheme"),
])
async def test_bad_urls(slim, pki, url, needle):
    with pytest.raises((ValueError, slim.SlimError)) as ei:
        app = await _connect_raw(slim, pki, url)
        await app.close()
    assert needle in str(ei.value), str(ei.value)
    assert not isinstance(ei.value, (TimeoutError, slim.ConnectError)), \
        f"a malformed URL should be rejected up front: {type(ei.value).__name__}: {ei.value}"


async def test_unresolvable_host(slim, pki):
    with pytest.raises(slim.ConnectError) as ei:
        app = await _connect_raw(slim, pki, "slim://no-such-node.invalid:4500")
        await app.close()
    assert "resolve" in str(ei.value) and "no-such-node.invalid" in str(ei.value), str(ei.value)


async def test_nothing_listening(slim, pki):
    from conftest import free_udp_port  # noqa: PLC0415
    port = free_udp_port()
    with pytest.raises(slim.SlimError) as ei:
        app = await _connect_raw(slim, pki, f"slim://127.0.0.1:{port}")
        await app.close()
    assert isinstance(ei.value, (slim.ConnectError, slim.TimeoutError)), repr(ei.value)


async def test_no_workload_api(slim, node_a, tmp_path):
    ident = slim.WorkloadApi(f"unix://{tmp_path}/nobody-here.sock")
    with pytest.raises(slim.IdentityError):
        await asyncio.wait_for(
            slim.connect(node_a.url, "t/misuse/noid", identity=ident, timeout=5), CONNECT_TIMEOUT)
    assert ID_DEFAULT


async def test_on_disconnect_takes_buffer_or_fail(slim, connect, ns):
    # Both policies connect; anything else is refused before dialling.
    for policy in ("buffer", "fail"):
        app = await connect(f"t/{ns}/policy-{policy}", on_disconnect=policy)
        await app.publish(f"t/{ns}/nobody", b"x")
    with pytest.raises(ValueError) as ei:
        await connect(f"t/{ns}/policy-bad", on_disconnect="drop")
    assert "on_disconnect" in str(ei.value)


async def test_max_udp_payload_is_checked_before_dialling(slim, connect, ns):
    # In range: connects, and a 16 KiB message crosses (the node is on this
    # host, so datagrams start at 65,000 bytes or the larger ceiling).
    sub = await connect(f"t/{ns}/udp-sub", max_udp_payload=1200)
    await sub.subscribe(f"t/{ns}/udp-chan")
    pub = await connect(f"t/{ns}/udp-pub", max_udp_payload=8952)
    await pub.publish(f"t/{ns}/udp-chan", b"u" * 16384)
    await pub.flush()
    msg = await asyncio.wait_for(sub.receive(), 10)
    assert msg.payload == b"u" * 16384
    for bad in (1199, 65528, -1, True, 1452.0, "1452"):
        with pytest.raises(slim.InvalidArgumentError) as ei:
            await connect(f"t/{ns}/udp-bad", max_udp_payload=bad)
        assert "max_udp_payload" in str(ei.value), bad
