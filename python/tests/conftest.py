"""End-to-end fixtures for the `slim_agents` suite: real `slim-node` processes, a
development CA and development Workload API servers, all on loopback.

Process layout (session scope, started lazily by whichever test needs them):

* ``pki``       -- ``slimctl dev-ca init`` for trust domain ``acme.example`` (the
                   trust domain docs/PYTHON.md's examples assume) in a temp dir.
* ``spire``     -- one ``slimctl dev-spire serve`` per SPIFFE ID (a Workload API
                   socket per identity, as the fleet demo does), started on demand.
* ``node_a`` / ``node_b`` -- two federated nodes, authz ``allow_all``. B dials A
                   (``[[federation.peers]]`` pinned to A's SPIFFE ID); allow_all grants
                   ``peer = true``. ``nodes`` waits until B logged "peer link up".
* ``policy_node`` -- a third, standalone node with ``[authz] mode = "policy"`` and
                   ``POLICY`` below, for the refusal tests.
* ``restartable_node`` (function scope) -- a node a test may kill -9 and restart
                   on the same port.

Every process is terminated (SIGTERM, then SIGKILL after a timeout) at teardown and
at interpreter exit; temp dirs are removed unless SLIM_TEST_KEEP=1 (then their path
is printed). Node logs are in the temp dir (``<name>.log``).

Binaries: $SLIM_NODE_BIN / $SLIMCTL_BIN, else $CARGO_TARGET_DIR/{debug,release}/
(default ~/.cache/slim-target).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest

TRUST_DOMAIN = "acme.example"
TD = f"spiffe://{TRUST_DOMAIN}"
START_TIMEOUT = float(os.environ.get("SLIM_TEST_START_TIMEOUT", "60"))
CONNECT_TIMEOUT = 20.0

# SPIFFE IDs used by the suite.
ID_DEFAULT = f"{TD}/agent/default"
ID_MOD = f"{TD}/agent/moderator"
ID_JOINER = f"{TD}/agent/joiner"
ID_INVITEE = f"{TD}/agent/invitee"
ID_POL_MOD = f"{TD}/pol/full/moderator"
ID_POL_MEMBER = f"{TD}/pol/full/member"
ID_POL_OUTSIDER = f"{TD}/pol/full/outsider"
ID_POL_LIMITED = f"{TD}/pol/limited"
ID_POL_STRANGER = f"{TD}/nobody/stranger"

# The refusal tests' policy. Names on the policy node live under `pol/<ns>/...`.
# `pol/limited` may register pol/*/limited/*, publish to pol/*/open and to full
# names (4 segments: unicast replies), subscribe pol/*/open and pol/*/readonly
# (a channel it may read but not publish to); nothing else.
POLICY = f"""
[[rule]]
spiffe_id = "{TD}/pol/full/*"
register = ["pol/**"]
publish = ["pol/**"]
subscribe = ["pol/**"]

[[rule]]
spiffe_id = "{ID_POL_LIMITED}"
register = ["pol/*/limited/*"]
publish = ["pol/*/open", "pol/*/*/*"]
subscribe = ["pol/*/open", "pol/*/readonly"]
"""


# --------------------------------------------------------------------------- binaries

def find_binary(name: str, env: str) -> str:
    if os.environ.get(env):
        return os.environ[env]
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache" / "slim-target"))
    repo_target = Path(__file__).resolve().parents[2] / "target"
    for base in (target, repo_target):
        for profile in ("debug", "release"):
            p = base / profile / name
            if p.is_file() and os.access(p, os.X_OK):
                return str(p)
    found = shutil.which(name)
    if found:
        return found
    pytest.skip(f"{name} not found (set {env} or `cargo build -p slim-node -p slim-ctl`; "
                f"looked in {target}/{{debug,release}})")


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


# --------------------------------------------------------------------------- processes

_LIVE: set["Proc"] = set()
_LIVE_LOCK = threading.Lock()


class Proc:
    """A child process; stdout+stderr are copied to a log file by a thread that
    lets callers wait for a line containing a marker (no fixed sleeps)."""

    def __init__(self, argv: list[str], log: Path, env: dict | None = None) -> None:
        self.argv = argv
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._cv = threading.Condition()
        with _LIVE_LOCK:
            _LIVE.add(self)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            with self._cv:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cv.notify_all()
            try:
                self._log.write(raw)
                self._log.flush()
            except ValueError:
                pass
        with self._cv:
            self._cv.notify_all()

    def wait_for(self, marker: str, timeout: float = START_TIMEOUT, start: int = 0) -> str:
        """The first line (from index `start`) containing `marker`."""
        t_end = time.monotonic() + timeout
        with self._cv:
            while True:
                for ln in self.lines[start:]:
                    if marker in ln:
                        return ln
                left = t_end - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = "\n".join(self.lines[-20:])
                    raise RuntimeError(
                        f"{Path(self.argv[0]).name} did not print {marker!r} within {timeout}s "
                        f"(exit {self.proc.poll()}, log {self.log_path}); last lines:\n{tail}")
                self._cv.wait(min(left, 0.2))

    def mark(self) -> int:
        with self._cv:
            return len(self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 5.0) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout)
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(self)
            try:
                self._log.close()
            except Exception:  # noqa: BLE001
                pass


@atexit.register
def _kill_leftovers() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for p in procs:
        try:
            p.stop(timeout=2)
        except Exception:  # noqa: BLE001
            pass


def _rm(d: Path) -> None:
    if os.environ.get("SLIM_TEST_KEEP"):
        print(f"\n[slim tests] kept {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- PKI + Workload API

class Pki:
    """A development CA plus one dev Workload API server per SPIFFE ID (lazily)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = root / "ca"
        self.slimctl = find_binary("slimctl", "SLIMCTL_BIN")
        self._spires: dict[str, tuple[Proc, str]] = {}
        self._lock = threading.Lock()
        self._run("dev-ca", "init", "--trust-domain", TRUST_DOMAIN, "--dir", str(self.ca))

    def _run(self, *args: str) -> None:
        r = subprocess.run([self.slimctl, *args], capture_output=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"slimctl {' '.join(args)} failed: {r.stderr.decode(errors='replace')}")

    def issue(self, spiffe_id: str, out: Path) -> Path:
        """An X.509-SVID in the spiffe-helper layout (tls.crt, tls.key, svid_bundle.pem)."""
        if not (out / "tls.crt").exists():
            self._run("dev-ca", "issue", spiffe_id, "--ca", str(self.ca), "--out", str(out),
                      "--ttl", "24h")
        return out

    def socket_for(self, spiffe_id: str) -> str:
        """The Workload API endpoint (`unix:///...`) serving `spiffe_id`."""
        with self._lock:
            if spiffe_id in self._spires and self._spires[spiffe_id][0].alive():
                return self._spires[spiffe_id][1]
            tag = spiffe_id.rsplit("/", 2)
            tag = "-".join(tag[-2:]) + "-" + uuid.uuid4().hex[:4]
            sock = self.root / "spire" / f"{tag}.sock"
            sock.parent.mkdir(parents=True, exist_ok=True)
            p = Proc([self.slimctl, "dev-spire", "serve", "--socket", str(sock),
                      "--spiffe-id", spiffe_id, "--ca", str(self.ca), "--ttl", "24h"],
                     self.root / f"spire-{tag}.log")
            try:
                line = p.wait_for("SPIFFE_ENDPOINT_SOCKET=")
            except BaseException:
                p.stop()
                raise
            endpoint = line.split("=", 1)[1].strip()
            self._spires[spiffe_id] = (p, endpoint)
            return endpoint

    def stop(self) -> None:
        with self._lock:
            for p, _ in self._spires.values():
                p.stop()
            self._spires.clear()


# --------------------------------------------------------------------------- nodes

class Node:
    """One slim-node process with a generated TOML config; restartable on its port."""

    def __init__(self, pki: Pki, name: str, *, port: int | None = None, policy: str | None = None,
                 peers: list["Node"] | None = None, level: str = "info") -> None:
        self.pki = pki
        self.name = name
        self.node_id = f"node-{name}"
        self.spiffe_id = f"{TD}/node/{name}"
        self.port = port or free_udp_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.url = f"slim://{self.addr}"
        self.dir = pki.root / f"node-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bin = find_binary("slim-node", "SLIM_NODE_BIN")
        pki.issue(self.spiffe_id, self.dir / "id")
        cfg = [
            "[node]", f'id = "{self.node_id}"', f'listen = "{self.addr}"',
            "keep_alive_ms = 2000", "idle_timeout_ms = 10000",
            "", "[identity]", 'source = "files"', f'dir = "{self.dir / "id"}"',
            "", "[metrics]", 'listen = ""',
            "", "[log]", f'level = "{level}"',
            "", "[federation]", "keep_alive_ms = 1000", "link_timeout_ms = 4000",
            "backoff_initial_ms = 50", "backoff_max_ms = 1000",
        ]
        for p in peers or []:
            cfg += ["", "[[federation.peers]]", f'node_id = "{p.node_id}"', f'address = "{p.addr}"',
                    f'spiffe_id = "{p.spiffe_id}"']
        if policy is None:
            cfg += ["", "[authz]", 'mode = "allow_all"']
        else:
            (self.dir / "policy.toml").write_text(policy)
            cfg += ["", "[authz]", 'mode = "policy"', f'policy_file = "{self.dir / "policy.toml"}"']
        self.config = self.dir / "node.toml"
        self.config.write_text("\n".join(cfg) + "\n")
        self.proc: Proc | None = None
        self.starts = 0

    def start(self) -> "Node":
        env = dict(os.environ)
        for k in ("SLIM_LISTEN", "SLIM_IDENTITY_DIR", "SLIM_METRICS_LISTEN", "SLIM_NODE_ID",
                  "SLIM_LOG_LEVEL", "SLIM_CONFIG", "SLIM_CONTROLLER", "SLIM_EXTERNAL_ENDPOINT",
                  "RUST_LOG"):
            env.pop(k, None)
        self.starts += 1
        self.proc = Proc([self.bin, "--config", str(self.config)],
                         self.dir.parent / f"{self.name}.{self.starts}.log", env)
        try:
            self.proc.wait_for("listening on")
        except BaseException:
            self.proc.stop()
            raise
        return self

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill9()
            self.proc.stop()

    def restart(self) -> None:
        self.kill9()
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def pki():
    root = Path(tempfile.mkdtemp(prefix="slim-e2e-"))
    p = None
    try:
        p = Pki(root)
        yield p
    finally:
        if p is not None:
            p.stop()
        _rm(root)


@pytest.fixture(scope="session")
def node_a(pki):
    n = Node(pki, "a")
    try:
        yield n.start()
    finally:
        n.stop()


@pytest.fixture(scope="session")
def node_b(pki, node_a):
    n = Node(pki, "b", peers=[node_a])
    try:
        yield n.start()
    finally:
        n.stop()


@pytest.fixture(scope="session")
def nodes(node_a, node_b):
    """Both federated nodes, once B's link to A is up."""
    node_b.proc.wait_for("peer link up")
    return node_a, node_b


@pytest.fixture(scope="session")
def policy_node(pki):
    n = Node(pki, "pol", policy=POLICY)
    try:
        yield n.start()
    finally:
        n.stop()


@pytest.fixture
def restartable_node(pki):
    n = Node(pki, "r" + uuid.uuid4().hex[:6])
    try:
        yield n.start()
    finally:
        n.stop()


@pytest.fixture
def ns() -> str:
    """A fresh namespace segment so tests never see each other's traffic."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def slim():
    try:
        import slim_agents  # noqa: PLC0415
    except ImportError as e:
        pytest.skip(f"slim_agents is not importable yet ({e}); build it with scripts/python-env.sh")
    if not hasattr(slim_agents, "connect"):
        pytest.skip(f"slim_agents at {getattr(slim_agents, '__path__', '?')} has no connect() yet "
                    "(an unbuilt source tree?); build it with scripts/python-env.sh")
    return slim_agents


@pytest.fixture
async def connect(slim, pki, request):
    """`await connect(name, spiffe_id=ID_DEFAULT, node=<Node|'a'|'b'>, **kw)` -> a
    connected App, closed at teardown. `node` defaults to node A."""
    apps = []

    def resolve(node):
        if isinstance(node, Node):
            return node
        return request.getfixturevalue({"a": "node_a", "b": "node_b", "pol": "policy_node"}[node])

    async def _connect(name: str, spiffe_id: str = ID_DEFAULT, node="a", **kw):
        n = resolve(node)
        identity = kw.pop("identity", None) or slim.WorkloadApi(pki.socket_for(spiffe_id))
        kw.setdefault("timeout", CONNECT_TIMEOUT)
        app = await asyncio.wait_for(slim.connect(n.url, name, identity=identity, **kw),
                                     CONNECT_TIMEOUT + 10)
        apps.append(app)
        return app

    try:
        yield _connect
    finally:
        for app in reversed(apps):
            try:
                await asyncio.wait_for(app.close(), 10)
            except Exception:  # noqa: BLE001
                pass


# --------------------------------------------------------------------------- helpers for tests

async def retry_until(fn: Callable, *, timeout: float, what: str, interval: float = 0.1,
                      retry_on: tuple = (Exception,)):
    """Calls `await fn()` until it returns without raising one of `retry_on`;
    between attempts waits `interval` (backoff for an external condition that
    has no event: a route propagating). Raises AssertionError after `timeout`."""
    t_end = time.monotonic() + timeout
    last: BaseException | None = None
    attempts = 0
    while time.monotonic() < t_end:
        attempts += 1
        try:
            return await fn()
        except retry_on as e:  # noqa: PERF203
            last = e
        await asyncio.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s after {attempts} attempts "
                         f"(last error: {type(last).__name__}: {last})")
