"""6. Refusals by the node's authorization policy and by a channel's admission.
Runs against `policy_node` (conftest.POLICY)."""

import asyncio
import time

import pytest

from conftest import (ID_POL_LIMITED, ID_POL_MEMBER, ID_POL_MOD, ID_POL_OUTSIDER,
                      ID_POL_STRANGER)

T = 30


async def test_publish_refused_by_policy(slim, connect, ns):
    lim = await connect(f"pol/{ns}/limited", ID_POL_LIMITED, node="pol")
    reader = await connect(f"pol/{ns}/reader", ID_POL_MEMBER, node="pol")
    await reader.subscribe(f"pol/{ns}/open")
    # Allowed: goes through, flush has nothing to report.
    await lim.publish(f"pol/{ns}/open", b"fine")
    await asyncio.wait_for(lim.flush(), T)
    msg = await asyncio.wait_for(reader.receive(timeout=10), 15)
    assert msg.payload == b"fine" and msg.spiffe_id == ID_POL_LIMITED

    secret = f"pol/{ns}/secret"
    mid = await lim.publish(secret, b"leak")
    assert isinstance(mid, int)
    with pytest.raises(slim.PermissionDenied) as ei:
        await asyncio.wait_for(lim.flush(), T)
    e = ei.value
    assert not isinstance(e, slim.JoinRefused)
    assert secret in e.reason and ID_POL_LIMITED in e.reason, e.reason
    assert str(e) and secret in str(e)
    # Reported once; the app keeps working.
    await asyncio.wait_for(lim.flush(), T)
    await lim.publish(f"pol/{ns}/open", b"still fine")
    await asyncio.wait_for(lim.flush(), T)


async def test_subscribe_refused_by_policy(slim, connect, ns):
    lim = await connect(f"pol/{ns}/limited", ID_POL_LIMITED, node="pol")
    with pytest.raises(slim.PermissionDenied) as ei:
        await asyncio.wait_for(lim.subscribe(f"pol/{ns}/secret"), T)
    assert f"pol/{ns}/secret" in ei.value.reason, ei.value.reason
    assert "subscribe" in ei.value.reason
    await asyncio.wait_for(lim.subscribe(f"pol/{ns}/open"), T)  # allowed one still works


async def test_register_and_unknown_identity_refused_at_connect(slim, connect, ns):
    with pytest.raises(slim.PermissionDenied) as ei:
        await connect(f"pol/{ns}/someone-else", ID_POL_LIMITED, node="pol")
    assert "register" in ei.value.reason and ID_POL_LIMITED in ei.value.reason, ei.value.reason
    with pytest.raises(slim.PermissionDenied) as ei:
        await connect(f"pol/{ns}/stranger", ID_POL_STRANGER, node="pol")
    assert ID_POL_STRANGER in ei.value.reason, ei.value.reason


async def _join_refused_by_node(slim, connect, ns, chan):
    mod = await connect(f"pol/{ns}/mod", ID_POL_MOD, node="pol")
    await asyncio.wait_for(
        mod.create_channel(chan, mls=True, admission=["spiffe://acme.example/**"]), T)
    lim = await connect(f"pol/{ns}/limited", ID_POL_LIMITED, node="pol")
    t0 = time.monotonic()
    with pytest.raises(slim.SlimError) as ei:
        await asyncio.wait_for(lim.join_channel(chan, timeout=30), 40)
    took = time.monotonic() - t0
    assert type(ei.value) is slim.PermissionDenied, \
        f"expected the node's refusal, got {type(ei.value).__name__}: {ei.value}"
    assert took < 10, f"refusal took {took:.1f}s (join timeout 30 s): looks like a timeout"
    assert chan in ei.value.reason and ID_POL_LIMITED in ei.value.reason, ei.value.reason
    return ei.value


async def test_join_refused_by_policy_may_not_publish(slim, connect, ns):
    # `readonly`: the identity may subscribe to the channel's name but not publish
    # to it, so its join request is what the node refuses.
    e = await _join_refused_by_node(slim, connect, ns, f"pol/{ns}/readonly")
    assert "publish" in e.reason, e.reason


async def test_join_refused_by_policy_may_not_subscribe(slim, connect, ns):
    # `secret`: the identity may neither subscribe nor publish to the channel's name.
    await _join_refused_by_node(slim, connect, ns, f"pol/{ns}/secret")


async def test_join_refused_by_admission(slim, connect, ns):
    chan = f"pol/{ns}/club"
    mod = await connect(f"pol/{ns}/mod", ID_POL_MOD, node="pol")
    ch = await asyncio.wait_for(mod.create_channel(chan, mls=True, admission=[ID_POL_MEMBER]), T)
    out = await connect(f"pol/{ns}/outsider", ID_POL_OUTSIDER, node="pol")
    t0 = time.monotonic()
    with pytest.raises(slim.JoinRefused) as ei:
        await asyncio.wait_for(out.join_channel(chan, timeout=30), 40)
    assert time.monotonic() - t0 < 15
    assert isinstance(ei.value, slim.PermissionDenied)
    assert ID_POL_OUTSIDER in ei.value.reason, ei.value.reason
    # Positive control: the admitted identity gets in.
    member = await connect(f"pol/{ns}/member", ID_POL_MEMBER, node="pol")
    m = await asyncio.wait_for(member.join_channel(chan, timeout=30), 40)
    assert m.role == "member"
    await ch.publish(b"welcome")
    msg = await asyncio.wait_for(m.receive(timeout=15), 20)
    assert msg.payload == b"welcome" and msg.spiffe_id == ID_POL_MOD
