"""3. An MLS group channel of three Python agents: admission by request, invitation,
sender identity on every message, removal."""

import asyncio

import pytest

from conftest import ID_INVITEE, ID_JOINER, ID_MOD

T = 40


async def _expect(sess, expected: dict, own: bytes | None = None, timeout: float = 20):
    """Receives until every payload of `expected` {payload: (source, spiffe_id)} was
    seen (own messages, if looped back, are skipped). Returns the messages."""
    seen = {}
    left = dict(expected)

    async def loop():
        while left:
            msg = await sess.receive(timeout=timeout)
            if own is not None and msg.payload.startswith(own):
                continue
            assert msg.payload in expected, f"unexpected message {msg.payload!r}"
            assert msg.payload not in seen, f"duplicate {msg.payload!r}"
            seen[msg.payload] = msg
            left.pop(msg.payload)

    await asyncio.wait_for(loop(), timeout + 5)
    for p, msg in seen.items():
        source, spiffe_id = expected[p]
        assert msg.source == source, (p, msg.source)
        assert msg.spiffe_id == spiffe_id, (p, msg.spiffe_id)
    return seen


@pytest.mark.timeout(150)
async def test_mls_group_of_three_join_invite_remove(slim, connect, ns):
    chan = f"t/{ns}/incident"
    mod = await connect(f"t/{ns}/mod", ID_MOD)
    joiner = await connect(f"t/{ns}/joiner", ID_JOINER)
    invitee = await connect(f"t/{ns}/invitee", ID_INVITEE)

    ch = await asyncio.wait_for(mod.create_channel(chan, mls=True, admission=[ID_JOINER]), T)
    assert (ch.kind, ch.role, ch.mls, ch.name) == ("group", "moderator", True, chan)

    # Join by request (admitted: its SPIFFE ID matches the admission pattern).
    m1 = await asyncio.wait_for(joiner.join_channel(chan, timeout=30), T)
    assert (m1.kind, m1.role, m1.mls, m1.name) == ("group", "member", True, chan)

    # Join by invitation: the invitee gets the channel from sessions().
    incoming = invitee.sessions().__aiter__()
    nxt = asyncio.ensure_future(incoming.__anext__())
    await asyncio.wait_for(ch.invite(invitee.name), T)
    m2 = await asyncio.wait_for(nxt, T)
    assert (m2.kind, m2.role, m2.mls, m2.name) == ("group", "member", True, chan)

    roster = await asyncio.wait_for(ch.members(), T)
    by_name = {m.name: m.spiffe_id for m in roster}
    assert by_name.get(mod.name) == ID_MOD, roster
    assert by_name.get(joiner.name) == ID_JOINER, roster
    assert by_name.get(invitee.name) == ID_INVITEE, roster

    # Everyone speaks; everyone else hears it with the sender's identity.
    who = {b"from-mod": (mod.name, ID_MOD), b"from-joiner": (joiner.name, ID_JOINER),
           b"from-invitee": (invitee.name, ID_INVITEE)}
    await ch.publish(b"from-mod")
    await m1.publish(b"from-joiner")
    await m2.publish(b"from-invitee")
    res = await asyncio.gather(
        _expect(ch, {k: v for k, v in who.items() if k != b"from-mod"}, own=b"from-mod"),
        _expect(m1, {k: v for k, v in who.items() if k != b"from-joiner"}, own=b"from-joiner"),
        _expect(m2, {k: v for k, v in who.items() if k != b"from-invitee"}, own=b"from-invitee"),
    )
    for seen in res:
        for msg in seen.values():
            assert msg.name == chan
            assert msg.epoch is not None  # MLS

    # Remove the invitee: its receive ends with ClosedError.
    removed_got: list[bytes] = []

    async def removed_reader():
        try:
            while True:
                removed_got.append((await m2.receive()).payload)
        except slim.SlimError as e:
            return e

    rtask = asyncio.create_task(removed_reader())
    await asyncio.wait_for(ch.remove(invitee.name), T)
    err = await asyncio.wait_for(rtask, T)
    assert isinstance(err, slim.ClosedError), f"{type(err).__name__}: {err}"
    assert "removed" in str(err), str(err)

    after = {b"after-%d" % i: (mod.name, ID_MOD) for i in range(5)}
    for p in after:
        await ch.publish(p)
    await _expect(m1, after)  # the remaining member gets them all
    assert not [p for p in removed_got if p.startswith(b"after-")]
    with pytest.raises(slim.ClosedError):
        await asyncio.wait_for(m2.receive(timeout=3), 10)
    with pytest.raises(slim.ClosedError):
        await asyncio.wait_for(m2.publish(b"still here?"), 10)
    roster = await asyncio.wait_for(ch.members(), T)
    assert invitee.name not in {m.name for m in roster}, roster
    assert joiner.name in {m.name for m in roster}, roster

    await asyncio.wait_for(m1.close(), T)
    await asyncio.wait_for(ch.close(), T)
