"""Shared pieces of the agent-level benchmarks (ours_bench.py, ref_bench.py, compare.py).

Both sides run the same four scenarios with the same parameters and the same
measurement code; only the SDK calls differ. Everything here is plain asyncio
and knows nothing about either SDK.

Scenarios (keys of the result dict each bench prints):
  p2p    reliable point-to-point session, 1 KiB messages, sender unthrottled
         for `seconds`: messages/s fully received by the receiver, loss = sent - received.
  rr     request/reply at a fixed offered rate (open loop, 1000/s for `seconds`):
         latency from the *scheduled* send time, p50/p99 ms, completed/failed.
  group  MLS group channel, moderator + 3 members, 1 KiB messages published by the
         moderator for `seconds`: messages/s fully received by every member
         (the slowest member), loss = sent - received by the slowest member.
  admit  time to admit one member into an MLS group that already has 5 / 20
         members (moderator included): invite -> the new member received the first
         message the moderator published after the invite returned. Median of a
         few admissions; each admitted member is removed again so the size holds.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import sys
import threading
import time
import traceback
from typing import Any, Awaitable, Callable

MSG_SIZE = 1024            # p2p and group payload
RR_RATE = float(os.environ.get("BENCH_RR_RATE", "1000"))  # offered requests/s
RR_PAYLOAD = 128           # request size (the reply echoes it)
RR_TIMEOUT = 5.0           # per-request deadline (s)
GROUP_MEMBERS = 3          # members besides the moderator
ADMIT_SIZES = (5, 20)      # group sizes (moderator included) before the admission
ADMIT_SAMPLES = 5          # admissions per size (median reported)
DRAIN_IDLE = 2.0           # stop waiting for stragglers after this long without progress
DEFAULT_SECONDS = 5.0

SCENARIOS = ("p2p", "rr", "group", "admit")


def log(*a: Any) -> None:
    print("[bench]", *a, file=sys.stderr, flush=True)


def free_port(kind: str = "tcp") -> int:
    """A free loopback port (tcp for the reference's gRPC node, udp for our QUIC node)."""
    st = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, st) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(sorted_vals: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def payload(seq: int, size: int) -> bytes:
    """`size` bytes whose first 8 carry a sequence number (for duplicate detection)."""
    head = seq.to_bytes(8, "big")
    return head + b"\x5a" * (size - len(head))


def seq_of(data: bytes) -> int:
    return int.from_bytes(data[:8], "big")


class Receiver:
    """Counts unique messages arriving at one receiver and when the last one came."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.seen: set[int] = set()
        self.dups = 0
        self.last = 0.0
        self.error: str | None = None

    @property
    def count(self) -> int:
        return len(self.seen)

    def got(self, data: bytes) -> None:
        s = seq_of(data)
        if s in self.seen:
            self.dups += 1
        else:
            self.seen.add(s)
            self.last = time.perf_counter()


async def send_for(seconds: float, send_one: Callable[[bytes], Awaitable[Any]],
                   size: int = MSG_SIZE) -> tuple[int, float, float]:
    """Sends as fast as `send_one` allows for `seconds`. Returns (sent, t_start, t_end)."""
    sent = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        # check the clock every few messages only (cheap loop)
        if (sent & 15) == 0:
            if time.perf_counter() >= deadline:
                break
            if (sent & 63) == 0:
                await asyncio.sleep(0)  # let receivers run even if send_one never yields
        await send_one(payload(sent, size))
        sent += 1
    return sent, t0, time.perf_counter()


async def drain(receivers: list[Receiver], sent: int, max_wait: float,
                idle: float = DRAIN_IDLE) -> None:
    """Waits until every receiver has `sent` messages, or no progress for `idle`, or `max_wait`."""
    t_end = time.perf_counter() + max_wait
    last_total, last_change = -1, time.perf_counter()
    while time.perf_counter() < t_end:
        counts = [r.count for r in receivers]
        if all(c >= sent for c in counts) or any(r.error for r in receivers):
            return
        total = sum(counts)
        now = time.perf_counter()
        if total != last_total:
            last_total, last_change = total, now
        elif now - last_change > idle:
            return
        await asyncio.sleep(0.05)


def throughput_result(receivers: list[Receiver], sent: int, t0: float, t_send_end: float,
                      extra: dict | None = None) -> dict:
    """msgs/s = what the slowest receiver fully received / (its last arrival - first send)."""
    rates = []
    for r in receivers:
        span = (r.last - t0) if r.count else 0.0
        rates.append(r.count / span if span > 0 else 0.0)
    slowest = min(receivers, key=lambda r: r.count)
    res = {
        "msgs_per_s": round(min(rates), 1),
        "sent": sent,
        "received": slowest.count if len(receivers) == 1 else [r.count for r in receivers],
        "loss": sent - slowest.count,
        "loss_total": sum(sent - r.count for r in receivers),
        "duplicates": sum(r.dups for r in receivers),
        "send_rate": round(sent / (t_send_end - t0), 1) if t_send_end > t0 else None,
        "msg_bytes": MSG_SIZE,
    }
    errs = [f"{r.name}: {r.error}" for r in receivers if r.error]
    if errs:
        res["receiver_errors"] = errs
    if extra:
        res.update(extra)
    return res


async def open_loop(call: Callable[[bytes], Awaitable[bytes]], rate: float, seconds: float,
                    timeout: float = RR_TIMEOUT, size: int = RR_PAYLOAD) -> dict:
    """Open-loop request/reply driver: request i is due at t0 + i/rate whatever happened
    to the earlier ones; latency is measured from that due time (no coordinated omission).
    `call(data)` must return the reply (checked to echo the request) or raise."""
    n = int(rate * seconds)
    lat: list[float] = []
    failures: dict[str, int] = {}
    bad_reply = 0
    tasks: set[asyncio.Task] = set()
    last_done = [0.0]

    async def one(i: int, due: float) -> None:
        nonlocal bad_reply
        data = payload(i, size)
        try:
            reply = await asyncio.wait_for(call(data), timeout + 1.0)
        except Exception as e:  # noqa: BLE001 - count every failure kind
            k = type(e).__name__
            failures[k] = failures.get(k, 0) + 1
            return
        if reply[:8] != data[:8]:
            bad_reply += 1
        now = time.perf_counter()
        lat.append(now - due)
        last_done[0] = max(last_done[0], now)

    t0 = time.perf_counter() + 0.01
    max_lag = 0.0
    for i in range(n):
        due = t0 + i / rate
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        else:
            max_lag = max(max_lag, now - due)
        t = asyncio.create_task(one(i, due))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(set(tasks), timeout=timeout + 5.0)
    for t in list(tasks):
        t.cancel()
    lat.sort()
    failed = sum(failures.values()) + bad_reply
    return {
        "offered_rate": rate,
        "requests": n,
        "completed": len(lat),
        "failed": failed,
        "not_finished": n - len(lat) - failed,
        "failures": failures,
        "p50_ms": round(percentile(lat, 50) * 1e3, 3) if lat else None,
        "p90_ms": round(percentile(lat, 90) * 1e3, 3) if lat else None,
        "p99_ms": round(percentile(lat, 99) * 1e3, 3) if lat else None,
        "max_ms": round(lat[-1] * 1e3, 3) if lat else None,
        "scheduler_max_lag_ms": round(max_lag * 1e3, 3),
        # completions per second from the first due time to the last completion
        "achieved_rate": round(len(lat) / (last_done[0] - t0), 1) if lat and last_done[0] > t0 else 0.0,
        "payload_bytes": size,
    }


def summarize_ms(samples: list[float]) -> dict:
    ms = sorted(x * 1e3 for x in samples)
    if not ms:
        return {"median_ms": None, "samples_ms": []}
    return {
        "median_ms": round(statistics.median(ms), 3),
        "min_ms": round(ms[0], 3),
        "max_ms": round(ms[-1], 3),
        "samples_ms": [round(x, 3) for x in ms],
    }


async def run_scenario(name: str, fn: Callable[[], Awaitable[dict]], timeout: float) -> dict:
    """Runs one scenario under a timeout; never raises: failures become {"error": ...}."""
    log(f"scenario {name}: start (timeout {timeout:.0f}s)")
    t0 = time.perf_counter()
    try:
        res = await asyncio.wait_for(fn(), timeout)
    except asyncio.TimeoutError:
        msg = f"scenario {name} timed out after {timeout:.0f}s"
        log("ERROR:", msg)
        return {"error": msg}
    except Exception as e:  # noqa: BLE001
        msg = f"scenario {name} failed: {type(e).__name__}: {e}"
        log("ERROR:", msg)
        if os.environ.get("BENCH_DEBUG"):
            traceback.print_exc()
        return {"error": msg}
    res["wall_s"] = round(time.perf_counter() - t0, 2)
    log(f"scenario {name}: done in {res['wall_s']}s")
    return res


def scenario_timeout(name: str, seconds: float) -> float:
    """Generous per-scenario limits: the measured part plus setup, drain and teardown."""
    return {
        "p2p": seconds + 60.0,
        "rr": seconds + RR_TIMEOUT + 60.0,
        "group": seconds + 90.0,
        "admit": 240.0,
    }[name]


def start_watchdog(limit_s: float, what: str) -> threading.Timer:
    """Hard stop for the whole process (a native call that never returns cannot be
    cancelled from asyncio): prints a clear error and exits with status 3."""
    def fire() -> None:
        print(f"[bench] ERROR: {what} exceeded its {limit_s:.0f}s budget; aborting", file=sys.stderr, flush=True)
        os._exit(3)
    t = threading.Timer(limit_s, fire)
    t.daemon = True
    t.start()
    return t


def parse_only(arg: str | None) -> list[str]:
    if not arg:
        return list(SCENARIOS)
    out = [s.strip() for s in arg.split(",") if s.strip()]
    for s in out:
        if s not in SCENARIOS:
            raise SystemExit(f"unknown scenario {s!r} (choose from {', '.join(SCENARIOS)})")
    return out
