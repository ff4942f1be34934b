"""Our side of the agent-level benchmark: `slim_agents` (python/API-CONTRACT.md) against
our `slim-node`, same four scenarios as ref_bench.py (see common.py).

Process layout (mirrors ref_bench.py):
  * `slim-node` runs as its own process on a free loopback UDP port, configured by a
    generated dev TOML (identity from `slimctl dev-ca`, authz allow_all, metrics off).
  * Agent identities come from the project's development Workload API server
    (`slimctl dev-spire serve`, same dev CA), i.e. real X.509-SVIDs, as in production
    with SPIRE; one server (one SPIFFE ID, spiffe://bench.local/agent/<role>) per agent
    role, since an MLS channel admits one member per SPIFFE ID. (`--identity shared-secret` uses the node's INSECURE shared-secret mode
    instead; our SDK has no MLS in that mode, so the group/admit scenarios need the
    default `workload-api`.)
  * All agents of a scenario run in this one asyncio process; every agent is its own
    `slim_agents.connect(...)`, i.e. its own QUIC connection to the node, so every
    message crosses the node.
  * Sessions: p2p `open_session(reliable=True, mls=False)`; group
    `create_channel(mls=True)` + `invite`; request/reply `app.request` /
    `app.requests()` with an echo responder.

Binaries: $SLIM_NODE_BIN / $SLIMCTL_BIN, else $CARGO_TARGET_DIR/{release,debug}/ (default
CARGO_TARGET_DIR ~/.cache/slim-target). Build them with
`cargo build --release -p slim-node -p slim-ctl`.
The node's per-connection outbound queue keeps its default (deploy/config/node.toml:
2 MiB, slow consumers' messages dropped); set BENCH_NODE_QUEUE_BYTES to change it.

`slim_agents` is imported lazily: this file imports without it.

Run alone:  python ours_bench.py [--seconds 5] [--only p2p,rr,group,admit] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

TRUST_DOMAIN = "bench.local"
SHARED_SECRET = "bench-only-shared-secret-0123456789abcdef"
CONNECT_TIMEOUT = 15.0

slim = None  # slim_agents, imported lazily


def _import():
    global slim
    if slim is None:
        import slim_agents  # noqa: PLC0415
        slim = slim_agents
    return slim


def our_version() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415
        return version("slim-agents")
    except Exception:  # noqa: BLE001
        return "unknown"


# --------------------------------------------------------------------------- node + identities

def find_binary(name: str, env: str) -> str:
    if os.environ.get(env):
        return os.environ[env]
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache" / "slim-target"))
    repo_target = Path(__file__).resolve().parents[2] / "target"
    for base in (target, repo_target):
        for profile in ("release", "debug"):
            p = base / profile / name
            if p.is_file() and os.access(p, os.X_OK):
                return str(p)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(
        f"{name} not found (set {env}, or build it: cargo build --release -p slim-node -p slim-ctl; "
        f"looked in {target}/{{release,debug}})")


class _Proc:
    """A child process whose stdout is copied to a log file by a thread that can
    wait for a line containing a marker."""

    def __init__(self, argv: list[str], log: Path, env: dict | None = None) -> None:
        self.log = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log,
                                     stdin=subprocess.DEVNULL, env=env)
        self.lines: list[str] = []
        self._cv = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            with self._cv:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cv.notify_all()
            try:
                self.log.write(raw)
                self.log.flush()
            except ValueError:
                pass
        with self._cv:
            self._cv.notify_all()

    def wait_for(self, marker: str, timeout: float) -> str:
        t_end = time.monotonic() + timeout
        with self._cv:
            while True:
                for ln in self.lines:
                    if marker in ln:
                        return ln
                left = t_end - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"{self.proc.args[0]} did not print {marker!r} "
                                       f"(exit {self.proc.poll()}, log {self.log.name})")
                self._cv.wait(min(left, 0.2))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


class OurStack:
    """slim-node + dev CA + dev Workload API in a temp dir. `url` and `identity()` for agents."""

    def __init__(self, identity_mode: str = "workload-api") -> None:
        self.identity_mode = identity_mode
        self.dir = Path(tempfile.mkdtemp(prefix="slim-bench-"))
        self.port = C.free_port("udp")
        self.url = f"127.0.0.1:{self.port}"
        self.node: _Proc | None = None
        self.spire: dict[str, tuple[_Proc, str]] = {}  # role -> (dev-spire process, socket)
        self._spire_lock = threading.Lock()
        self.slimctl = ""
        self.bundle = self.dir / "node" / "svid_bundle.pem"

    def identity(self, role: str):
        """The identity of the agent playing `role`. An MLS channel admits one member per
        SPIFFE ID, so every role gets its own SPIFFE ID spiffe://bench.local/agent/<role>,
        served by its own dev Workload API server (started on first use, then reused by
        the same role in later scenarios; roles within one group are all distinct)."""
        _import()
        if self.identity_mode == "shared-secret":
            return slim.SharedSecret(SHARED_SECRET, str(self.bundle))
        return slim.WorkloadApi(self.spire_socket(role))

    def spire_socket(self, role: str) -> str:
        with self._spire_lock:
            if role not in self.spire:
                sock = self.dir / f"spire-{role}.sock"
                p = _Proc([self.slimctl, "dev-spire", "serve", "--socket", str(sock),
                           "--spiffe-id", f"spiffe://{TRUST_DOMAIN}/agent/{role}",
                           "--ca", str(self.dir / "ca"), "--ttl", "24h"],
                          self.dir / f"devspire-{role}.log")
                try:
                    line = p.wait_for("SPIFFE_ENDPOINT_SOCKET=", 20.0)
                except BaseException:
                    p.stop()
                    raise
                self.spire[role] = (p, line.split("=", 1)[1].strip())
            return self.spire[role][1]

    def stop(self) -> None:
        for p, _ in self.spire.values():
            p.stop()
        if self.node is not None:
            self.node.stop()
        if not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)


def start_our_node(identity_mode: str = "workload-api", timeout: float = 20.0) -> OurStack:
    """Starts a dev trust domain, our slim-node on a free loopback port and (for
    workload-api) the dev Workload API server. Caller must call `.stop()`."""
    slimctl = find_binary("slimctl", "SLIMCTL_BIN")
    node_bin = find_binary("slim-node", "SLIM_NODE_BIN")
    st = OurStack(identity_mode)
    st.slimctl = slimctl
    try:
        d = st.dir
        run = lambda *a: subprocess.run([slimctl, *a], check=True, capture_output=True, timeout=30)  # noqa: E731
        run("dev-ca", "init", "--trust-domain", TRUST_DOMAIN, "--dir", str(d / "ca"))
        run("dev-ca", "issue", f"spiffe://{TRUST_DOMAIN}/node/bench", "--ca", str(d / "ca"),
            "--out", str(d / "node"), "--ttl", "24h")
        queue = os.environ.get("BENCH_NODE_QUEUE_BYTES")
        cfg = [
            "[node]", 'id = "bench-node"', f'listen = "{st.url}"',
            "", "[identity]", 'source = "files"', f'dir = "{d / "node"}"',
            "", "[metrics]", 'listen = ""',
            "", "[log]", 'level = "warn"',
            "", "[authz]", 'mode = "allow_all"',
        ]
        if identity_mode == "shared-secret":
            cfg += ["", "[authn]", f'shared_secret = "{SHARED_SECRET}"']
        if queue:
            cfg += ["", "[queue]", f"max_bytes = {int(queue)}"]
        (d / "node.toml").write_text("\n".join(cfg) + "\n")
        env = dict(os.environ)
        env.pop("SLIM_LISTEN", None)
        env.pop("SLIM_IDENTITY_DIR", None)
        env.pop("SLIM_METRICS_LISTEN", None)
        st.node = _Proc([node_bin, "--config", str(d / "node.toml")], d / "node.log", env)
        st.node.wait_for("listening on", timeout)
        return st
    except BaseException:
        st.stop()
        raise


# --------------------------------------------------------------------------- agents

async def connect(st: OurStack, ns: str, role: str):
    # starting a dev Workload API server blocks (process start): off the event loop
    ident = await asyncio.get_running_loop().run_in_executor(None, st.identity, role)
    return await slim.connect(st.url, f"bench/{ns}/{role}", identity=ident,
                              timeout=CONNECT_TIMEOUT)


async def close_all(apps) -> None:
    async def one(a):
        try:
            await asyncio.wait_for(a.close(), 5)
        except Exception:  # noqa: BLE001
            pass
    await asyncio.gather(*(one(a) for a in apps if a is not None))


async def receive_loop(sess, rcv: C.Receiver, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            msg = await sess.receive(timeout=0.5)
        except TimeoutError:  # slim_agents.TimeoutError is also builtins.TimeoutError
            continue
        except Exception as e:  # noqa: BLE001
            if not stop.is_set():
                rcv.error = f"{type(e).__name__}: {e}"
            return
        rcv.got(msg.payload)


async def invite(ch, app) -> None:
    """Invite by the app's full name; fall back to org/namespace/service if refused as a name."""
    try:
        await ch.invite(app.name)
    except ValueError:  # InvalidNameError is also a ValueError
        await ch.invite("/".join(app.name.split("/")[:3]))


async def remove(ch, app) -> None:
    try:
        await ch.remove(app.name)
    except ValueError:
        await ch.remove("/".join(app.name.split("/")[:3]))


# --------------------------------------------------------------------------- scenarios

async def scenario_p2p(st: OurStack, seconds: float) -> dict:
    ns = "p" + uuid.uuid4().hex[:8]
    rx = tx = None
    try:
        rx = await connect(st, ns, "receiver")
        tx = await connect(st, ns, "sender")
        accept = asyncio.create_task(rx.accept(timeout=20))
        t_open = time.perf_counter()
        sess = await tx.open_session(f"bench/{ns}/receiver", reliable=True, mls=False, timeout=20)
        rsess = await asyncio.wait_for(accept, 25)
        open_ms = (time.perf_counter() - t_open) * 1e3
        rcv, stop = C.Receiver("receiver"), asyncio.Event()
        rtask = asyncio.create_task(receive_loop(rsess, rcv, stop))
        sent, t0, t1 = await C.send_for(seconds, sess.publish)
        await C.drain([rcv], sent, max_wait=30.0)
        stop.set()
        await asyncio.gather(rtask, return_exceptions=True)
        # close = "after everything sent is acked": the reliable-delivery check
        close_err = None
        t_c = time.perf_counter()
        try:
            await asyncio.wait_for(sess.close(), 15)
        except Exception as e:  # noqa: BLE001
            close_err = f"{type(e).__name__}: {e}"
        extra = {"session_open_ms": round(open_ms, 2),
                 "close_after_acks_ms": round((time.perf_counter() - t_c) * 1e3, 1)}
        if close_err:
            extra["close_error"] = close_err
        return C.throughput_result([rcv], sent, t0, t1, extra)
    finally:
        await close_all([tx, rx])


async def scenario_rr(st: OurStack, seconds: float) -> dict:
    ns = "r" + uuid.uuid4().hex[:8]
    cli = srv = None
    serve_task = None
    try:
        srv = await connect(st, ns, "server")
        cli = await connect(st, ns, "client")

        async def serve() -> None:
            async for req in srv.requests():
                try:
                    await req.reply(req.payload)
                except Exception:  # noqa: BLE001 - a caller that gave up
                    pass

        serve_task = asyncio.create_task(serve())
        service = f"bench/{ns}/server"

        async def call(data: bytes) -> bytes:
            return await cli.request(service, data, timeout=C.RR_TIMEOUT)

        t_w = time.perf_counter()
        for attempt in range(50):  # warm-up; NoRouteError until the server's name is known
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
        res["transport"] = "slim_agents app.request / app.requests()"
        return res
    finally:
        if serve_task is not None:
            serve_task.cancel()
        await close_all([cli, srv])


async def _make_group(st: OurStack, ns: str, n_members: int):
    """Moderator + n_members invited members. Returns (mod, ch, members, member_sessions)."""
    mod = await connect(st, ns, "moderator")
    ch = await mod.create_channel(f"bench/{ns}/chan", mls=True)
    members, msess = [mod], []
    try:
        for i in range(n_members):
            m = await connect(st, ns, f"member{i}")
            members.append(m)
            accept = asyncio.create_task(m.accept(timeout=30))
            await invite(ch, m)
            msess.append(await asyncio.wait_for(accept, 35))
    except BaseException:
        await close_all(members)
        raise
    return mod, ch, members[1:], msess


async def scenario_group(st: OurStack, seconds: float) -> dict:
    ns = "g" + uuid.uuid4().hex[:8]
    apps = []
    try:
        t_setup = time.perf_counter()
        mod, ch, members, msess = await _make_group(st, ns, C.GROUP_MEMBERS)
        apps = [mod, *members]
        setup_ms = (time.perf_counter() - t_setup) * 1e3
        stop = asyncio.Event()
        rcvs = [C.Receiver(f"member{i}") for i in range(len(members))]
        tasks = [asyncio.create_task(receive_loop(s, r, stop)) for s, r in zip(msess, rcvs)]
        sent, t0, t1 = await C.send_for(seconds, ch.publish)
        await C.drain(rcvs, sent, max_wait=30.0)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        res = C.throughput_result(rcvs, sent, t0, t1, {
            "members": C.GROUP_MEMBERS, "mls": True, "setup_ms": round(setup_ms, 1)})
        try:
            await asyncio.wait_for(ch.close(), 10)
        except Exception:  # noqa: BLE001
            pass
        return res
    finally:
        await close_all(apps)


PROBE_EVERY = 0.02


async def _admit_once(st: OurStack, ns: str, ch, k: int) -> tuple[float, float]:
    """One admission: (invite_returned_s, first_message_s), both from the invite call.
    After invite returns the moderator publishes a probe every 20 ms until the newcomer
    has one (so the figure does not depend on whether invite waits for the join)."""
    new = await connect(st, ns, f"newcomer{k}")
    probe_seq = 10_000_000 + k
    # The newcomer's session must stay referenced until it has been removed: dropping
    # the last handle of a member's Session makes it leave the channel (the Rust
    # driver's shutdown-on-drop), and the moderator's remove() then fails with
    # "... is not a member of the channel" (see the report of the first run).
    keep: list = []
    try:
        async def newcomer() -> float:
            s = await new.accept(timeout=30)
            keep.append(s)
            while True:
                msg = await s.receive(timeout=30)
                if C.seq_of(msg.payload) == probe_seq:
                    return time.perf_counter()

        waiter = asyncio.create_task(newcomer())
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        await invite(ch, new)
        t_inv = time.perf_counter()
        t_end = t_inv + 30
        while not waiter.done() and time.perf_counter() < t_end:
            await ch.publish(C.payload(probe_seq, 64))
            await asyncio.wait({waiter}, timeout=PROBE_EVERY)
        t_recv = await asyncio.wait_for(waiter, 1)
        await asyncio.wait_for(remove(ch, new), 15)
        return t_inv - t0, t_recv - t0
    finally:
        await close_all([new])


async def scenario_admit(st: OurStack, seconds: float) -> dict:  # noqa: ARG001
    out: dict = {"samples_per_size": C.ADMIT_SAMPLES, "mls": True,
                 "measure": "invite -> newcomer received the first message published after invite returned"}
    for size in C.ADMIT_SIZES:
        ns = f"a{size}" + uuid.uuid4().hex[:6]
        apps = []
        try:
            t_setup = time.perf_counter()
            mod, ch, members, msess = await _make_group(st, ns, size - 1)
            apps = [mod, *members]
            setup_s = time.perf_counter() - t_setup
            stop = asyncio.Event()
            sinks = [asyncio.create_task(receive_loop(s, C.Receiver(), stop)) for s in msess]
            inv, first = [], []
            for k in range(C.ADMIT_SAMPLES):
                a, b = await _admit_once(st, ns, ch, k)
                inv.append(a)
                first.append(b)
            stop.set()
            await asyncio.gather(*sinks, return_exceptions=True)
            entry = C.summarize_ms(first)
            entry["invite_returned"] = C.summarize_ms(inv)
            entry["setup_s"] = round(setup_s, 2)
            out[str(size)] = entry
        finally:
            await close_all(apps)
    return out


SCENARIO_FUNCS = {"p2p": scenario_p2p, "rr": scenario_rr, "group": scenario_group, "admit": scenario_admit}


async def run(seconds: float, only: list[str], identity_mode: str) -> dict:
    results: dict = {"impl": "ours", "package": "slim-agents", "version": our_version(),
                     "seconds": seconds, "identity": identity_mode, "scenarios": {}}
    st = None
    try:
        _import()
        st = await asyncio.get_running_loop().run_in_executor(None, start_our_node, identity_mode)
        for name in only:
            fn = SCENARIO_FUNCS[name]
            results["scenarios"][name] = await C.run_scenario(
                name, lambda fn=fn: fn(st, seconds), C.scenario_timeout(name, seconds))
    except Exception as e:  # noqa: BLE001
        results["error"] = f"{type(e).__name__}: {e}"
        C.log("ERROR:", results["error"])
    finally:
        if st is not None:
            st.stop()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=C.DEFAULT_SECONDS)
    ap.add_argument("--only", help="comma-separated subset of " + ",".join(C.SCENARIOS))
    ap.add_argument("--identity", choices=("workload-api", "shared-secret"), default="workload-api")
    ap.add_argument("--json", action="store_true", help="compact JSON on one line")
    a = ap.parse_args()
    only = C.parse_only(a.only)
    budget = sum(C.scenario_timeout(s, a.seconds) for s in only) + 90
    C.start_watchdog(budget, "ours_bench")
    res = asyncio.run(run(a.seconds, only, a.identity))
    print(json.dumps(res) if a.json else json.dumps(res, indent=2), flush=True)
    os._exit(0 if "error" not in res else 1)


if __name__ == "__main__":
    main()
