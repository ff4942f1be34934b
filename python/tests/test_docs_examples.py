"""8. The ```python examples of docs/PYTHON.md, run against a live node.

Convention: a fenced ```python block whose FIRST line is `# test: run` is a complete
program; it is run as a script (`python -c`, fresh interpreter, cwd a temp dir) with
SLIM_NODE=slim://127.0.0.1:<port of node A> and SPIFFE_ENDPOINT_SOCKET=<a dev Workload
API serving spiffe://acme.example/agent/docs> in its environment, and must exit 0
within 60 s (or `# test: run timeout=N`). Every other block (no marker, or
`# test: skip`) is documentation only.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TD

DOC = Path(__file__).resolve().parents[2] / "docs" / "PYTHON.md"
# Other docs whose ```python blocks follow the same convention.
MORE_DOCS = [Path(__file__).resolve().parents[2] / "docs" / "AGENT-PROTOCOLS.md"]
MARK = re.compile(r"^#\s*test:\s*run\b(?:.*?\btimeout=(\d+))?")
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```", re.M | re.S)


def _blocks():
    if not DOC.is_file():
        return []
    out = []
    for doc in [DOC, *MORE_DOCS]:
        if not doc.is_file():
            continue
        text = doc.read_text()
        for m in BLOCK.finditer(text):
            body = m.group(1)
            first = body.splitlines()[0] if body.strip() else ""
            mk = MARK.match(first.strip())
            if mk:
                line = text.count("\n", 0, m.start()) + 1
                out.append(pytest.param(body, int(mk.group(1) or 60), id=f"{doc.name}:{line}"))
    return out


BLOCKS = _blocks()


@pytest.mark.skipif(not DOC.is_file(), reason=f"{DOC} does not exist (yet)")
@pytest.mark.skipif(DOC.is_file() and not BLOCKS,
                    reason=f"no ```python block of {DOC.name} starts with `# test: run`")
@pytest.mark.parametrize("code,limit", BLOCKS or [pytest.param("", 0, id="none")])
@pytest.mark.timeout(120)
def test_doc_example_runs(code, limit, slim, node_a, pki, tmp_path):
    env = dict(os.environ)
    env["SLIM_NODE"] = node_a.url
    env["SPIFFE_ENDPOINT_SOCKET"] = pki.socket_for(f"{TD}/agent/docs")
    # A second workload's identity, for examples that run two agents.
    env["PEER_SPIFFE_SOCKET"] = pki.socket_for(f"{TD}/agent/docs-peer")
    try:
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                           capture_output=True, timeout=limit)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the example did not finish within {limit}s\nstdout:\n"
                    f"{(e.stdout or b'').decode(errors='replace')}\nstderr:\n"
                    f"{(e.stderr or b'').decode(errors='replace')}")
    assert r.returncode == 0, (
        f"exit {r.returncode}\n--- code\n{code}\n--- stdout\n{r.stdout.decode(errors='replace')}"
        f"\n--- stderr\n{r.stderr.decode(errors='replace')}")
