"""Fragmentation of protocol messages (MCP's and A2A's JSON-RPC) over slim sessions.

A session message carries at most 64 KiB (the reliable p2p session's limit,
counted after MLS encryption), so a larger JSON text is split: every fragment
but the last starts with the byte 0x1E (ASCII record separator, which never
occurs raw in JSON text); the receiver concatenates fragments until one that
does not start with it. Sessions are reliable, hence in order.
"""

from __future__ import annotations

from typing import Optional

from . import Session

# Fragments leave room for MLS's overhead under the 64 KiB session message.
FRAGMENT_SIZE = 48 * 1024
# The largest message accepted from the peer (reassembled).
MAX_MESSAGE_SIZE = 64 * 1024 * 1024
MORE = b"\x1e"


class TooLarge(ValueError):
    """A reassembled message exceeded MAX_MESSAGE_SIZE (it was dropped)."""


def frames(data: bytes) -> list[bytes]:
    """Splits ``data`` into session messages (one if it fits)."""
    if len(data) <= FRAGMENT_SIZE:
        return [data]
    step = FRAGMENT_SIZE - 1
    out = [MORE + data[i:i + step] for i in range(0, len(data), step)]
    out[-1] = out[-1][1:]  # the last fragment is unmarked
    return out


async def send(session: Session, data: bytes) -> None:
    for frame in frames(data):
        await session.publish(frame)


async def receive(session: Session, timeout: Optional[float] = None,
                  max_size: int = MAX_MESSAGE_SIZE) -> bytes:
    """The next whole message. ``timeout`` bounds each fragment's wait (the
    session's ``TimeoutError``); a message over ``max_size`` is read to its end
    and raises :class:`TooLarge`."""
    buf = bytearray()
    dropping = False
    while True:
        data = (await session.receive(timeout=timeout)).payload
        if data[:1] == MORE:
            if not dropping:
                buf += data[1:]
                if len(buf) > max_size:
                    buf.clear()
                    dropping = True
            continue
        if dropping:
            raise TooLarge(f"message from {session.name} larger than {max_size} bytes dropped")
        if buf:
            buf += data
            return bytes(buf)
        return data
