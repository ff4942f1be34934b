"""Per-call overhead of the slim_agents bridge (Rust future -> asyncio).

Each line awaits one SDK call in a tight loop and prints wall time and process
CPU per call; "gather xN" awaits N concurrent calls at once (batched wakeups).
Needs a release build for meaningful numbers
(`SLIM_VENV=~/.cache/slim-venv-bench scripts/python-env.sh --release`) and the
node binaries (see ours_bench.py). Prints which build it measures.

    python bench/micro_calls.py [--secs 1.5] [--reps 3]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402
import ours_bench as O  # noqa: E402


async def rate(fn, secs: float, batch: int = 1) -> tuple[float, float]:
    """(wall us/call, CPU us/call) over `secs`."""
    n = 0
    t0 = time.perf_counter()
    c0 = time.process_time()
    while time.perf_counter() - t0 < secs:
        if batch == 1:
            await fn()
        else:
            await asyncio.gather(*(fn() for _ in range(batch)))
        n += batch
    dt = time.perf_counter() - t0
    dc = time.process_time() - c0
    return dt / n * 1e6, dc / n * 1e6


async def main(secs: float, reps: int) -> None:
    O._import()
    import slim_agents

    so = [f for f in os.listdir(os.path.dirname(slim_agents.__file__)) if f.endswith(".so")]
    print(f"# slim_agents from {slim_agents.__file__} ({', '.join(so)})", flush=True)
    st = await asyncio.get_running_loop().run_in_executor(None, O.start_our_node, "workload-api")
    try:
        mod = await O.connect(st, "mc", "moderator")
        ch = await mod.create_channel("bench/mc/chan", mls=True)
        chp = await mod.create_channel("bench/mc/chanplain", mls=False)
        d = C.payload(1, 1024)
        cases = [
            ("asyncio.sleep(0) (baseline)", lambda: asyncio.sleep(0), 1),
            ("ch.members() (no I/O)", ch.members, 1),
            ("ch.members() gather x64", ch.members, 64),
            ("ch.publish 1KiB MLS, no members", lambda: ch.publish(d), 1),
            ("ch.publish 1KiB plain, no members", lambda: chp.publish(d), 1),
            ("app.publish raw 1KiB (no subscriber)", lambda: mod.publish("bench/mc/nobody", d), 1),
        ]
        for label, fn, batch in cases:
            walls, cpus = [], []
            for _ in range(reps):
                w, c = await rate(fn, secs, batch)
                walls.append(w)
                cpus.append(c)
            print(f"{label:40s} {statistics.median(walls):8.1f} us/call wall "
                  f"{statistics.median(cpus):8.1f} us/call CPU  (min wall {min(walls):.1f})",
                  flush=True)
        await O.close_all([mod])
    finally:
        st.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=float, default=1.5)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    asyncio.run(main(a.secs, a.reps))
