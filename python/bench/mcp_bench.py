"""MCP tool calls over slim vs the same FastMCP server over the MCP SDK's
streamable-HTTP transport on loopback, vs the reference SLIM's `slim-mcp`.

    # ours + HTTP (the slim_agents venv; slim-node/slimctl as the tests find them)
    python python/bench/mcp_bench.py --sides ours,http [--calls 2000] [--seconds 5]
    # the reference (its own venv: slim-mcp pins mcp==1.26 and slim-bindings~=1.4)
    scripts/python-bench-mcp.sh   # both venvs, one table

Every side runs the same tool (`echo`, a 128-byte string) on a server in its
own process; the client process measures:

  latency   one caller, calls back to back (after a warm-up): p50/p99 ms
  calls/s   16 callers sharing one MCP session for `--seconds`: completed calls/s

Ours: a FastMCP server served with `slim_agents.mcp.serve` on one slim-node
(client and server connected to the same node, MLS on, as by default).
HTTP: `FastMCP.streamable_http_app()` under uvicorn on 127.0.0.1, the client
`streamablehttp_client`. Reference: `slim_mcp.run_mcp_server` / `create_client_streams`
through the node embedded in `slim-bindings` (its own process; insecure
gRPC on loopback, shared-secret identities, MLS off as slim-mcp sets it).
Prints one JSON object per side; `--table` a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
PAYLOAD = "x" * 128
CONCURRENCY = 16
REF_SECRET = "bench-secret-bench-secret-bench-secret-0123"


def pct(vals: list[float], p: float) -> float:
    s = sorted(vals)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s))) - 1))]


# --------------------------------------------------------------------------- measuring


async def measure(session, calls: int, seconds: float) -> dict:
    """Latency of back-to-back calls, then throughput of CONCURRENCY callers."""
    for _ in range(50):  # warm-up
        await session.call_tool("echo", {"text": PAYLOAD})
    lat = []
    for _ in range(calls):
        t0 = time.perf_counter()
        r = await session.call_tool("echo", {"text": PAYLOAD})
        lat.append((time.perf_counter() - t0) * 1000)
        if len(r.content[0].text) != len(PAYLOAD):
            raise RuntimeError("wrong echo")
    done = 0
    end = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await session.call_tool("echo", {"text": PAYLOAD})
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - t0
    return {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "calls": calls,
            "calls_per_s": done / elapsed, "concurrency": CONCURRENCY}


def make_server():
    try:
        from mcp.server.fastmcp import FastMCP
    except ImportError:  # mcp 2
        from mcp.server.mcpserver import MCPServer as FastMCP
    tools = FastMCP("bench")

    @tools.tool()
    def echo(text: str) -> str:
        """Returns its argument."""
        return text

    return tools


# --------------------------------------------------------------------------- servers (child processes)


async def serve_ours(node: str, socket: str, name: str) -> None:
    import slim_agents as slim
    from slim_agents.mcp import serve
    async with slim.connect(node, name, identity=slim.WorkloadApi(socket)) as app:
        task = asyncio.create_task(serve(app, make_server()))
        await asyncio.sleep(0)
        print("READY", flush=True)
        await task


def serve_http(port: int) -> None:
    import uvicorn
    app = make_server().streamable_http_app()
    print("READY", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def ref_name(s: str):
    import slim_bindings
    return slim_bindings.Name(*s.split("/"))


async def serve_ref_node(port: int) -> None:
    import slim_bindings
    from slim_mcp.helpers import setup_service
    svc = setup_service()
    await svc.run_server_async(slim_bindings.new_insecure_server_config(f"127.0.0.1:{port}"))
    print("READY", flush=True)
    await asyncio.Event().wait()


async def serve_ref(port: int, name: str) -> None:
    import slim_bindings
    from slim_mcp import create_local_app, run_mcp_server
    app, _ = await create_local_app(
        ref_name(name), slim_bindings.new_insecure_client_config(f"http://127.0.0.1:{port}"),
        shared_secret=REF_SECRET)
    print("READY", flush=True)
    await run_mcp_server(app, make_server()._mcp_server)


# --------------------------------------------------------------------------- clients


async def client_ours(node: str, socket: str, server: str, calls: int, seconds: float) -> dict:
    import slim_agents as slim
    from mcp import ClientSession
    from slim_agents.mcp import slim_client
    async with slim.connect(node, "bench/mcp/client", identity=slim.WorkloadApi(socket)) as app:
        for attempt in range(50):  # the server's name may take a moment to be routable
            try:
                async with slim_client(app, server, timeout=10) as (r, w):
                    async with ClientSession(r, w) as s:
                        await s.initialize()
                        return await measure(s, calls, seconds)
            except slim.NoRouteError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.2)
    raise AssertionError


async def client_http(port: int, calls: int, seconds: float) -> dict:
    from mcp import ClientSession
    try:
        from mcp.client.streamable_http import streamablehttp_client as http_client
    except ImportError:  # mcp 2
        from mcp.client.streamable_http import streamable_http_client as http_client
    async with http_client(f"http://127.0.0.1:{port}/mcp") as streams:
        async with ClientSession(streams[0], streams[1]) as s:
            await s.initialize()
            return await measure(s, calls, seconds)


async def client_ref(port: int, server: str, calls: int, seconds: float) -> dict:
    import slim_bindings
    from mcp import ClientSession
    from slim_mcp import create_client_streams, create_local_app
    app, conn = await create_local_app(
        ref_name("bench/mcp/client"),
        slim_bindings.new_insecure_client_config(f"http://127.0.0.1:{port}"),
        shared_secret=REF_SECRET)
    await app.set_route_async(ref_name(server), conn)
    async with create_client_streams(app, ref_name(server)) as (r, w):
        async with ClientSession(r, w) as s:
            await s.initialize()
            return await measure(s, calls, seconds)


# --------------------------------------------------------------------------- orchestration


def child(argv: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ)
    # the package next to bench/ (python/), unless PYTHONPATH already names one
    env.setdefault("PYTHONPATH", str(HERE.parent))
    p = subprocess.Popen([sys.executable, __file__, *argv], stdout=subprocess.PIPE,
                         stderr=open(log, "ab"), text=True, env=env)  # noqa: SIM115
    t_end = time.monotonic() + 60
    while time.monotonic() < t_end:
        line = p.stdout.readline()
        if line.strip() == "READY":
            return p
        if not line and p.poll() is not None:
            break
    p.kill()
    raise RuntimeError(f"{argv[0]} did not start; see {log}")


def stop(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def free_port(kind: str = "tcp") -> int:
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_side(side: str, calls: int, seconds: float, tmp: Path) -> dict:
    if side == "http":
        port = free_port()
        srv = child(["_serve-http", str(port)], tmp / "http-server.log")
        try:
            time.sleep(0.5)  # uvicorn binds after READY; the client retries below
            for attempt in range(20):
                try:
                    return asyncio.run(client_http(port, calls, seconds))
                except Exception:  # noqa: BLE001 - not listening yet
                    if attempt == 19:
                        raise
                    time.sleep(0.25)
        finally:
            stop(srv)
    if side == "ref":
        port = free_port()
        node = child(["_serve-ref-node", str(port)], tmp / "ref-node.log")
        try:
            srv = child(["_serve-ref", str(port), "bench/mcp/server"], tmp / "ref-server.log")
            try:
                return asyncio.run(client_ref(port, "bench/mcp/server", calls, seconds))
            finally:
                stop(srv)
        finally:
            stop(node)
    if side == "ours":
        sys.path.insert(0, str(TESTS))
        from conftest import Node, Pki  # noqa: PLC0415 - the test suite's node/PKI helpers
        pki = Pki(tmp)
        node = Node(pki, "bench", level="warn").start()
        try:
            srv_sock = pki.socket_for("spiffe://acme.example/bench/server")
            cli_sock = pki.socket_for("spiffe://acme.example/bench/client")
            srv = child(["_serve-ours", node.url, srv_sock, "bench/mcp/server"],
                        tmp / "ours-server.log")
            try:
                return asyncio.run(client_ours(node.url, cli_sock, "bench/mcp/server", calls,
                                               seconds))
            finally:
                stop(srv)
        finally:
            node.stop()
            pki.stop()
    raise SystemExit(f"unknown side {side}")


def table(lines: list[str]) -> str:
    rows = [json.loads(x) for x in lines if x.startswith("{")]
    ok = {r["side"]: r for r in rows if "error" not in r}
    out = ["| side | p50 ms | p99 ms | calls/s (16 callers, one session) | p50 ÷ ours |",
           "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['side']} | error: {r['error']} | | | |")
            continue
        ratio = (f"{r['p50_ms'] / ok['ours']['p50_ms']:.2f}" if "ours" in ok else "–")
        out.append(f"| {r['side']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                   f"{r['calls_per_s']:.0f} | {ratio} |")
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_table":
        print(table(sys.stdin.read().splitlines()))
        return
    if len(sys.argv) > 1 and sys.argv[1].startswith("_serve"):
        cmd, args = sys.argv[1], sys.argv[2:]
        if cmd == "_serve-ours":
            asyncio.run(serve_ours(*args))
        elif cmd == "_serve-http":
            serve_http(int(args[0]))
        elif cmd == "_serve-ref-node":
            asyncio.run(serve_ref_node(int(args[0])))
        elif cmd == "_serve-ref":
            asyncio.run(serve_ref(int(args[0]), args[1]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sides", default="ours,http")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mcp-bench-") as d:
        for side in a.sides.split(","):
            try:
                r = run_side(side, a.calls, a.seconds, Path(d))
            except Exception as e:  # noqa: BLE001 - report and go on with the other sides
                r = {"error": f"{type(e).__name__}: {e}"}
            print(json.dumps({"side": side, **r}), flush=True)
            if "error" in r:
                for f in Path(d).glob("*.log"):
                    print(f"--- {f.name}\n{f.read_text()[-2000:]}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("SLIM_LOG", "warn")
    if "PYTHONPATH" not in os.environ:
        sys.path.insert(1, str(HERE.parent))  # the package next to bench/ (python/)
    main()
