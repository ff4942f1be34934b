"""The SDK's awaitables inside ordinary asyncio code, and a clean interpreter exit."""

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ID_DEFAULT, TD


async def test_calls_can_be_scheduled_as_tasks(slim, connect, ns):
    """`asyncio.create_task(app.accept())` / `TaskGroup.create_task(...)` are the
    everyday way to run a call concurrently (docs/PYTHON.md, "An agent's lifecycle":
    run in an asyncio.TaskGroup); they need coroutines, not bare Futures."""
    rx = await connect(f"t/{ns}/rx")
    tx = await connect(f"t/{ns}/tx")
    accept = asyncio.create_task(rx.accept(timeout=20))
    s = await asyncio.wait_for(tx.open_session(f"t/{ns}/rx", timeout=20), 30)
    r = await asyncio.wait_for(accept, 25)
    async with asyncio.TaskGroup() as tg:
        got = tg.create_task(r.receive(timeout=10))
        tg.create_task(s.publish(b"hi"))
    assert got.result().payload == b"hi"


SCRIPT = textwrap.dedent("""
    import asyncio, os, slim_agents as slim

    async def main():
        ident = slim.WorkloadApi(os.environ["SOCK"])
        async with await slim.connect(os.environ["NODE"], os.environ["NS"] + "/sub", identity=ident) as sub, \\
                   await slim.connect(os.environ["NODE"], os.environ["NS"] + "/pub", identity=ident) as pub:
            await sub.subscribe(os.environ["NS"] + "/news")
            await pub.publish(os.environ["NS"] + "/news", b"x")
            await pub.flush()
            assert (await sub.receive(timeout=10)).payload == b"x"
        print("done", flush=True)

    asyncio.run(main())
""")


@pytest.mark.timeout(180)
def test_interpreter_exits_cleanly_after_use(slim, node_a, pki, ns):
    """A script that used the SDK and closed everything must exit 0: no crash of
    the native runtime's threads while Python finalizes."""
    env = dict(os.environ, SOCK=pki.socket_for(ID_DEFAULT), NODE=node_a.url)
    bad = []
    for i in range(20):
        env["NS"] = f"t/{ns}x{i}"
        r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                           timeout=60, cwd="/")
        if r.returncode != 0 or b"done" not in r.stdout:
            bad.append((i, r.returncode, r.stderr.decode(errors="replace")[-600:]))
    assert not bad, "runs that did not exit cleanly (run, exit code, stderr tail):\n" + \
        "\n".join(map(repr, bad))
    assert TD
