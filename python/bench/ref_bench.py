"""Reference side of the agent-level benchmark: the reference SLIM's Python bindings
(`slim-bindings` from PyPI, 3.3.x), same four scenarios as ours_bench.py (see common.py).

Process layout (chosen to mirror how our side runs):
  * The reference node is the node embedded in the wheel, started in a SEPARATE
    process (`python ref_bench.py --serve-node PORT`: a `Service` running an insecure
    gRPC server on 127.0.0.1:PORT). Our side likewise runs `slim-node` as its own process.
  * All agents of a scenario run in this one asyncio process, but every agent has its
    OWN `Service` and its own gRPC connection to the node, so every message crosses
    the node exactly as with ours (where each `slim_agents.connect` has its own QUIC
    connection). Agents sharing one `Service` would be routed inside the process,
    never touching the node.
  * Identity: the reference's shared-secret mode (`create_app_with_secret`), plain
    (insecure) gRPC on loopback: the simplest mode that works with MLS there. NB: our
    side has TLS (QUIC) on every connection and SPIFFE SVIDs, so the reference carries
    less crypto per message here.
  * Reliability: sessions use max_retries=5, interval=100 ms (the reference's
    reliable mode: acked delivery with retransmission); MLS with
    header_integrity_validation_percent=100.
  * Request/reply uses the reference's own RPC layer (slimrpc `Channel.call_unary` /
    `Server.register_unary_unary`, raw bytes, echo handler): one persistent session
    under the channel, many calls multiplexed on it.

Run alone:  python ref_bench.py [--seconds 5] [--only p2p,rr,group,admit] [--json]
Prints the results as JSON on stdout (last line); progress and errors on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

SECRET = "bench-only-shared-secret-0123456789abcdef-0123456789abcdef"
RETRIES = 5
RETRY_INTERVAL = datetime.timedelta(milliseconds=100)

slim = None  # slim_bindings, imported lazily (so --help works without it)


def _import():
    global slim
    if slim is None:
        import slim_bindings  # noqa: PLC0415
        slim = slim_bindings
    return slim


def td(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)


def ref_version() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415
        return version("slim-bindings")
    except Exception:  # noqa: BLE001
        return "unknown"


_initialized = False


def init_runtime(log_level: str = "off") -> None:
    """The bindings' global runtime/tracing: once per process."""
    global _initialized
    if _initialized:
        return
    s = _import()
    tc = s.new_tracing_config()
    tc.log_level = log_level
    s.initialize_with_configs(runtime_config=s.new_runtime_config(), tracing_config=tc,
                              service_config=[s.new_service_config()])
    _initialized = True


# --------------------------------------------------------------------------- node

async def _serve_node(port: int) -> None:
    init_runtime(os.environ.get("REF_NODE_LOG", "warn"))
    svc = slim.Service("ref-bench-node")
    await svc.run_server_async(slim.new_insecure_server_config(f"127.0.0.1:{port}"))
    print("READY", flush=True)
    await asyncio.Event().wait()


class RefNode:
    """The reference node in its own process. (The bindings' tracing writes to stdout,
    so a thread copies the node's stdout into its log file and watches for READY.)"""

    def __init__(self) -> None:
        self.port = C.free_port("tcp")
        self.logf = tempfile.NamedTemporaryFile(prefix="ref-node-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve-node", str(self.port)],
            stdout=subprocess.PIPE, stderr=self.logf, stdin=subprocess.DEVNULL)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in iter(self.proc.stdout.readline, b""):
            if line.strip() == b"READY":
                self._ready.set()
            try:
                self.logf.write(line)
                self.logf.flush()
            except ValueError:  # closed
                pass

    async def ready(self, timeout: float = 20.0) -> None:
        t_end = time.perf_counter() + timeout
        while not self._ready.is_set():
            if self.proc.poll() is not None or time.perf_counter() > t_end:
                raise RuntimeError(f"reference node did not start (exit {self.proc.poll()}, "
                                   f"log: {self.logf.name})")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.logf.close()
        if not os.environ.get("BENCH_KEEP_TMP"):
            try:
                os.unlink(self.logf.name)
            except OSError:
                pass


# --------------------------------------------------------------------------- agents

class Agent:
    """One reference agent: its own Service, its own connection to the node, one App."""

    def __init__(self, svc, app, conn: int, ns: str, role: str) -> None:
        self.svc, self.app, self.conn, self.ns, self.role = svc, app, conn, ns, role

    @property
    def name(self):
        return slim.Name("bench", self.ns, self.role)

    @classmethod
    async def create(cls, node: RefNode, ns: str, role: str) -> "Agent":
        svc = slim.Service(f"ref-{ns}-{role}")
        conn = await svc.connect_async(slim.new_insecure_client_config(node.endpoint))
        # NB: the _async variant panics ("no reactor running") in 3.3.8; the sync one is quick
        app = svc.create_app_with_secret(slim.Name("bench", ns, role), SECRET)
        # With a Service of its own, the app must announce its full name (with id) on
        # the connection, or the node cannot route replies/invites to it.
        await app.subscribe_async(slim.Name.new_with_id("bench", ns, role, id=app.id()), conn)
        return cls(svc, app, conn, ns, role)

    async def route_to(self, other: "Agent") -> None:
        """Names reached through the node must be given a route on our connection."""
        await self.app.set_route_async(other.name, self.conn)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.svc.shutdown_async(), 5)
        except Exception:  # noqa: BLE001
            pass


async def close_all(agents) -> None:
    await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)


def session_config(group: bool, mls: bool):
    return slim.SessionConfig(
        session_type=slim.SessionType.GROUP if group else slim.SessionType.POINT_TO_POINT,
        max_retries=RETRIES, interval=RETRY_INTERVAL, metadata={},
        mls_settings=slim.MlsSettings(header_integrity_validation_percent=100,
                                      max_seen_control_message_ids_size=None) if mls else None)


async def receive_loop(sess, rcv: C.Receiver, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            msg = await sess.get_message_async(td(0.5))
        except Exception as e:  # noqa: BLE001
            # an idle poll surfaces as SessionError('receive timeout waiting for message')
            if "timeout" in str(e).lower():
                continue
            rcv.error = f"{type(e).__name__}: {e}"
            return
        rcv.got(msg.payload)


async def wait_handles(handles, timeout: float) -> tuple[int, int]:
    """Awaits publish completion handles (delivery acks). Returns (acked, failed)."""
    acked = failed = 0
    deadline = time.perf_counter() + timeout
    for h in handles:
        left = deadline - time.perf_counter()
        if left <= 0:
            failed += 1
            continue
        try:
            await h.wait_for_async(td(left))
            acked += 1
        except Exception:  # noqa: BLE001
            failed += 1
    return acked, failed


# --------------------------------------------------------------------------- scenarios

async def scenario_p2p(node: RefNode, seconds: float) -> dict:
    ns = "p" + uuid.uuid4().hex[:8]
    tx = await Agent.create(node, ns, "sender")
    rx = await Agent.create(node, ns, "receiver")
    try:
        await tx.route_to(rx)
        accept = asyncio.create_task(rx.app.listen_for_session_async(td(20)))
        t_open = time.perf_counter()
        sess = await tx.app.create_session_and_wait_async(session_config(False, False), rx.name)
        rsess = await accept
        open_ms = (time.perf_counter() - t_open) * 1e3
        rcv, stop = C.Receiver("receiver"), asyncio.Event()
        rtask = asyncio.create_task(receive_loop(rsess, rcv, stop))
        handles = []

        async def send(data: bytes) -> None:
            handles.append(await sess.publish_async(data, None, None))

        sent, t0, t1 = await C.send_for(seconds, send)
        await C.drain([rcv], sent, max_wait=30.0)
        stop.set()
        acked, unacked = await wait_handles(handles, 10.0)
        await asyncio.gather(rtask, return_exceptions=True)
        res = C.throughput_result([rcv], sent, t0, t1, {"acked": acked, "ack_failed": unacked,
                                                         "session_open_ms": round(open_ms, 2)})
        try:
            await asyncio.wait_for(tx.app.delete_session_async(sess), 5)
        except Exception:  # noqa: BLE001
            pass
        return res
    finally:
        await close_all([tx, rx])


async def scenario_rr(node: RefNode, seconds: float) -> dict:
    ns = "r" + uuid.uuid4().hex[:8]
    cli = await Agent.create(node, ns, "client")
    srv = await Agent.create(node, ns, "server")
    server = None
    serve_task = None
    try:
        class Echo(slim.UnaryUnaryHandler):
            async def handle(self, request, context):  # noqa: ARG002
                return request

        server = slim.Server.new_with_connection(srv.app, srv.name, srv.conn)
        server.register_unary_unary("Bench", "Echo", Echo())
        serve_task = asyncio.create_task(server.serve_async())
        await cli.route_to(srv)
        channel = slim.Channel.new_with_connection(cli.app, srv.name, cli.conn)
        deadline = td(C.RR_TIMEOUT)

        async def call(data: bytes) -> bytes:
            return await channel.call_unary_async("Bench", "Echo", data, deadline, None)

        # warm-up: establishes the channel's session (not measured)
        t_w = time.perf_counter()
        for attempt in range(50):
            try:
                await call(C.payload(0, C.RR_PAYLOAD))
                break
            except Exception:  # noqa: BLE001
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)
        warm_ms = (time.perf_counter() - t_w) * 1e3
        res = await C.open_loop(call, C.RR_RATE, seconds)
        res["warmup_first_call_ms"] = round(warm_ms, 2)
        res["transport"] = "slimrpc unary (Channel.call_unary / Server.register_unary_unary)"
        return res
    finally:
        if server is not None:
            try:
                await asyncio.wait_for(server.shutdown_async(), 5)
            except Exception:  # noqa: BLE001
                pass
        if serve_task is not None:
            serve_task.cancel()
        await close_all([cli, srv])


async def _make_group(node: RefNode, ns: str, n_members: int, channel: str = "chan"):
    """Moderator + n_members invited members. Returns (mod, sess, members, member_sessions)."""
    mod = await Agent.create(node, ns, "moderator")
    sess = await mod.app.create_session_and_wait_async(session_config(True, True),
                                                       slim.Name("bench", ns, channel))
    members, msess = [], []
    for i in range(n_members):
        m = await Agent.create(node, ns, f"member{i}")
        members.append(m)
        accept = asyncio.create_task(m.app.listen_for_session_async(td(30)))
        await mod.route_to(m)
        await sess.invite_and_wait_async(m.name)
        msess.append(await accept)
    return mod, sess, members, msess


async def scenario_group(node: RefNode, seconds: float) -> dict:
    ns = "g" + uuid.uuid4().hex[:8]
    agents = []
    try:
        t_setup = time.perf_counter()
        mod, sess, members, msess = await _make_group(node, ns, C.GROUP_MEMBERS)
        agents = [mod, *members]
        setup_ms = (time.perf_counter() - t_setup) * 1e3
        stop = asyncio.Event()
        rcvs = [C.Receiver(m.role) for m in members]
        tasks = [asyncio.create_task(receive_loop(s, r, stop)) for s, r in zip(msess, rcvs)]
        handles = []

        async def send(data: bytes) -> None:
            handles.append(await sess.publish_async(data, None, None))

        sent, t0, t1 = await C.send_for(seconds, send)
        await C.drain(rcvs, sent, max_wait=30.0)
        stop.set()
        acked, unacked = await wait_handles(handles, 10.0)
        await asyncio.gather(*tasks, return_exceptions=True)
        res = C.throughput_result(rcvs, sent, t0, t1, {
            "members": C.GROUP_MEMBERS, "mls": True, "acked": acked, "ack_failed": unacked,
            "setup_ms": round(setup_ms, 1)})
        try:
            await asyncio.wait_for(mod.app.delete_session_async(sess), 5)
        except Exception:  # noqa: BLE001
            pass
        return res
    finally:
        await close_all(agents)


PROBE_EVERY = 0.02


async def _admit_once(node: RefNode, ns: str, mod: Agent, sess, k: int) -> tuple[float, float]:
    """One admission: (invite_returned_s, first_message_s), both from the invite call.
    After invite returns the moderator publishes a probe every 20 ms until the newcomer
    has one (same procedure as ours_bench.py)."""
    new = await Agent.create(node, ns, f"newcomer{k}")
    probe_seq = 10_000_000 + k
    try:
        await mod.route_to(new)

        async def newcomer() -> float:
            s = await new.app.listen_for_session_async(td(30))
            while True:
                msg = await s.get_message_async(td(30))
                if C.seq_of(msg.payload) == probe_seq:
                    return time.perf_counter()

        waiter = asyncio.create_task(newcomer())
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        await sess.invite_and_wait_async(new.name)
        t_inv = time.perf_counter()
        t_end = t_inv + 30
        while not waiter.done() and time.perf_counter() < t_end:
            await sess.publish_async(C.payload(probe_seq, 64), None, None)
            await asyncio.wait({waiter}, timeout=PROBE_EVERY)
        t_recv = await asyncio.wait_for(waiter, 1)
        # keep the group at its size for the next sample
        await asyncio.wait_for(sess.remove_and_wait_async(new.name), 15)
        return t_inv - t0, t_recv - t0
    finally:
        await new.close()


async def scenario_admit(node: RefNode, seconds: float) -> dict:  # noqa: ARG001
    out: dict = {"samples_per_size": C.ADMIT_SAMPLES, "mls": True,
                 "measure": "invite -> newcomer received the first message published after invite returned"}
    for size in C.ADMIT_SIZES:
        ns = f"a{size}" + uuid.uuid4().hex[:6]
        agents = []
        try:
            t_setup = time.perf_counter()
            mod, sess, members, msess = await _make_group(node, ns, size - 1)
            agents = [mod, *members]
            setup_s = time.perf_counter() - t_setup
            # members must keep consuming (the probes reach them too)
            stop = asyncio.Event()
            sinks = [asyncio.create_task(receive_loop(s, C.Receiver(), stop)) for s in msess]
            inv, first = [], []
            for k in range(C.ADMIT_SAMPLES):
                a, b = await _admit_once(node, ns, mod, sess, k)
                inv.append(a)
                first.append(b)
            stop.set()
            await asyncio.gather(*sinks, return_exceptions=True)
            entry = C.summarize_ms(first)
            entry["invite_returned"] = C.summarize_ms(inv)
            entry["setup_s"] = round(setup_s, 2)
            out[str(size)] = entry
        finally:
            await close_all(agents)
    return out


SCENARIO_FUNCS = {"p2p": scenario_p2p, "rr": scenario_rr, "group": scenario_group, "admit": scenario_admit}


async def run(seconds: float, only: list[str]) -> dict:
    _import()
    init_runtime("off")
    slim.uniffi_set_event_loop(asyncio.get_running_loop())
    node = RefNode()
    results: dict = {"impl": "reference", "package": "slim-bindings", "version": ref_version(),
                     "seconds": seconds, "scenarios": {}}
    try:
        await node.ready()
        for name in only:
            fn = SCENARIO_FUNCS[name]
            results["scenarios"][name] = await C.run_scenario(
                name, lambda fn=fn: fn(node, seconds), C.scenario_timeout(name, seconds))
    except Exception as e:  # noqa: BLE001
        results["error"] = f"{type(e).__name__}: {e}"
        C.log("ERROR:", results["error"])
    finally:
        node.stop()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=C.DEFAULT_SECONDS)
    ap.add_argument("--only", help="comma-separated subset of " + ",".join(C.SCENARIOS))
    ap.add_argument("--json", action="store_true", help="compact JSON on one line")
    ap.add_argument("--serve-node", type=int, metavar="PORT", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_node:
        _import()
        asyncio.run(_serve_node(a.serve_node))
        return
    only = C.parse_only(a.only)
    budget = sum(C.scenario_timeout(s, a.seconds) for s in only) + 60
    C.start_watchdog(budget, "ref_bench")
    res = asyncio.run(run(a.seconds, only))
    print(json.dumps(res) if a.json else json.dumps(res, indent=2), flush=True)
    sys.stdout.flush()
    # the bindings' runtime can log or linger on interpreter exit; results are out
    os._exit(0 if "error" not in res else 1)


if __name__ == "__main__":
    main()
