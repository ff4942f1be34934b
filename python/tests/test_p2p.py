"""2. A reliable point-to-point session: 10,000 messages in order, exactly once."""

import asyncio
import struct
import time

import pytest

from conftest import ID_DEFAULT, ID_INVITEE

N = 10_000


@pytest.mark.timeout(240)
async def test_reliable_p2p_10k_in_order_no_duplicates(slim, connect, ns):
    rx = await connect(f"t/{ns}/rx", ID_DEFAULT)
    tx = await connect(f"t/{ns}/tx", ID_INVITEE)
    accept = asyncio.ensure_future(rx.accept(timeout=30))
    s = await asyncio.wait_for(tx.open_session(f"t/{ns}/rx", reliable=True, timeout=20), 30)
    r = await asyncio.wait_for(accept, 35)

    assert (s.kind, s.role, s.reliable, s.mls) == ("p2p", "initiator", True, False)
    assert (r.kind, r.role, r.reliable) == ("p2p", "responder", True)
    assert s.name == rx.name  # the answering instance is bound
    assert r.name == tx.name
    assert s.peer_spiffe_id == ID_DEFAULT
    assert r.peer_spiffe_id == ID_INVITEE

    got: list[int] = []
    seqs: list = []

    async def reader():
        async for msg in r:  # ends cleanly when the sender closes
            (i,) = struct.unpack_from(">I", msg.payload)
            got.append(i)
            seqs.append(msg.seq)
            assert msg.source == tx.name and msg.spiffe_id == ID_INVITEE

    rtask = asyncio.create_task(reader())
    t0 = time.monotonic()
    for i in range(N):
        await s.publish(struct.pack(">I", i) + b"-payload-16B")
    # close() returns once everything sent was acknowledged.
    await asyncio.wait_for(s.close(), 120)
    await asyncio.wait_for(rtask, 60)
    elapsed = time.monotonic() - t0
    print(f"\n10k reliable p2p: {elapsed:.1f}s ({N / elapsed:.0f} msg/s)")

    assert len(got) == N, f"{len(got)} of {N} delivered"
    dups = len(got) - len(set(got))
    assert dups == 0, f"{dups} duplicates"
    assert got == list(range(N)), "out of order"
    if seqs[0] is not None:
        assert all(b == a + 1 for a, b in zip(seqs, seqs[1:])), "session seq not consecutive"
    # The end was clean (the iteration stopped without raising); afterwards the
    # session is over.
    with pytest.raises(slim.ClosedError):
        await asyncio.wait_for(r.receive(timeout=5), 10)
