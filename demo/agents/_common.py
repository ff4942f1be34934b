"""What the fleet demo's four Python agents share.

The scenario's names, the JSON lines an agent prints on stdout (one object per line, the
same as the Rust agent's `slim_demo::Line` in demo/src/lib.rs: the orchestrator `slim-demo`
reads them to draw the timeline and run its checks), the record it keeps with `--record FILE`
(the same lines plus message bodies and direct messages, as the crate docs of demo/src/lib.rs
describe), the command line, and `Agent`: a role's channels plus the lines it prints about
them. Python 3.11+ (asyncio.TaskGroup).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TextIO

import slim_agents as slim

SECURITY_INCIDENT = "acme/monitoring/security-incident"
CVE_PATCH = "acme/remediation/cve-patch"
HUMAN_REVIEW = "acme/escalation/human-review"

DRAIN_NODE = "eu-west-7-node-3"
"""The node the incident is about."""

# Who may act on what: an agent checks the sender's SPIFFE ID (proven by MLS on a channel,
# authenticated by the node for a direct message) before acting on anything.
EVENT_SOURCE = "spiffe://acme.example/cluster-a/k8s/event-source"
OPERATORS = "spiffe://acme.example/ops/"


def to_json(value: Any, *, sort_keys: bool = False) -> str:
    """Compact JSON, non-ASCII kept as is (as serde_json writes it)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)


APPROVAL = to_json({"decision": "APPROVE_DRAIN", "node": DRAIN_NODE})
"""What the operator publishes to approve the drain."""


_record: TextIO | None = None
"""The record (`--record FILE`), line-buffered: each line is in the file once written."""

_NO_BODY = object()


def record(t: str, **fields: Any) -> None:
    """Appends one object to the record, if there is one (`from_=` is written `"from"`)."""
    if _record is not None:
        _record.write(to_json({"t": t, **{k.rstrip("_"): v for k, v in fields.items()}}) + "\n")


def emit(t: str, body: Any = _NO_BODY, **fields: Any) -> None:
    """Records, then prints one line for the orchestrator:
    `{"t": "ready"|"sent"|"recv"|"note"|"call", ...}` (`from_=` is written `"from"`); `body`, the
    message, goes to the record only."""
    if body is _NO_BODY:
        record(t, **fields)
    else:
        record(t, **fields, body=body)
    print(to_json({"t": t, **{k.rstrip("_"): v for k, v in fields.items()}}), flush=True)


def describe(payload: bytes) -> tuple[str, str, Any]:
    """A message on the demo's channels as (kind, human text, JSON body).

    JSON with a `type` and a `text`; anything else (e.g. the operator's raw decision) is
    shown as it is.
    """
    try:
        body = json.loads(payload)
    except ValueError:
        return "bytes", payload.decode(errors="replace"), None
    kind = field(body, "type")
    if not isinstance(kind, str):
        kind = "decision" if isinstance(body, dict) and "decision" in body else "message"
    text = field(body, "text")
    return kind, text if isinstance(text, str) else to_json(body, sort_keys=True), body


def field(body: Any, key: str) -> Any:
    """`body[key]` if `body` is a JSON object that has it, else None."""
    return body.get(key) if isinstance(body, dict) else None


def text_field(body: Any, key: str, default: str) -> str:
    """`body[key]` if it is a string, else `default`."""
    value = field(body, key)
    return value if isinstance(value, str) else default


def shown(value: Any) -> str:
    """A JSON value as the Rust agent shows it in a line: `"APPROVE_DRAIN"`, `null`."""
    return to_json(value)


def shown_option(value: str | None) -> str:
    """An optional string as the Rust agent shows it in a line: `Some("…")` or `None`."""
    return "None" if value is None else f"Some({to_json(value)})"


class Agent:
    """One role of the scenario: its channels by name and the lines it prints about them."""

    def __init__(self, app: slim.App, service: str, work_ms: int) -> None:
        self.app = app
        self.label = service.split("/", 1)[1]  # "eu-west/security-monitor" on the timeline
        self.work = work_ms / 1000
        self.channels: dict[str, slim.Session] = {}

    def note(self, text: str) -> None:
        """Something noteworthy: membership, refusals, errors."""
        emit("note", agent=self.label, text=text)

    def called(self, proto: str, target: str, op: str, text: str,
               steps: list[str] | None = None) -> None:
        """A call to another agent over an agent protocol (`proto`: "mcp" or "a2a") by
        its slim name `target`; `steps`: the A2A task's states as streamed, in order."""
        emit("call", agent=self.label, proto=proto, target=target, op=op, text=text,
             steps=steps or [])

    def ready(self) -> None:
        """Every channel of the role is created or joined."""
        emit("ready", agent=self.label)

    async def create(self, name: str, admission: list[str]) -> None:
        """Creates the MLS channel `name` (we moderate it); `admission`: who may join by request."""
        self.channels[name] = await self.app.create_channel(name, mls=True, admission=admission)
        self.note(f"created {name} (moderator, MLS)")

    async def join(self, name: str) -> None:
        """Joins `name` by request. The moderator is another program, maybe in another
        cluster and not up yet: the SDK retries until it admits us (or refuses)."""
        self.channels[name] = await self.app.join_channel(name, mls=True, timeout=120)
        self.note(f"joined {name}")

    async def send(self, channel: str, kind: str, text: str, **extra: Any) -> None:
        """Publishes `{"type": kind, "text": text, **extra}` on `channel`."""
        session = self.channels.get(channel)
        if session is None:
            self.note(f"not a member of {channel}")
            return
        body = {"type": kind, "text": text, **extra}
        try:
            await session.publish(to_json(body).encode())
        except slim.SlimError as e:
            print(f"publish on {channel} failed: {e}", file=sys.stderr)
            return
        emit("sent", body=body, agent=self.label, channel=channel, kind=kind, text=text)

    async def messages(self, channel: str) -> AsyncIterator[tuple[str, str, Any]]:
        """Every message on `channel` as (kind, sender's SPIFFE ID, body), each printed as a
        `recv` line first; admissions and departures are noted (by the moderator, who learns
        of them). Ends when the channel does."""
        session = self.channels[channel]
        try:
            while True:
                event = await session.next_event()
                if isinstance(event, slim.Message):
                    kind, text, body = describe(event.payload)
                    spiffe_id = event.spiffe_id or ""
                    emit("recv", body=body, agent=self.label, channel=channel,
                         from_=event.source, spiffe_id=spiffe_id, kind=kind, text=text,
                         epoch=event.epoch or 0)
                    yield kind, spiffe_id, body
                elif session.role == "moderator":
                    who = f"{event.name} [{event.spiffe_id}]"
                    if isinstance(event, slim.MemberJoined):
                        self.note(f"{channel}: {who} joined")
                    else:
                        self.note(f"{channel}: {who} left ({event.reason})")
        except slim.ClosedError as e:
            self.note(f"{channel}: ended ({e})")
            del self.channels[channel]

    async def pause(self) -> None:
        """Simulated work: a rolling update, a drain."""
        await asyncio.sleep(self.work)


def parse_args(description: str | None) -> argparse.Namespace:
    """`--node` (env SLIM_NODE), `--work-ms` and `--record`, as the Rust agent takes them."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--node", default=os.environ.get("SLIM_NODE"),
                   help="this cluster's SLIM node: slim://host:port or host:port (env SLIM_NODE)")
    p.add_argument("--work-ms", type=int, default=1500,
                   help="how long simulated work (a rolling update, a drain) takes")
    p.add_argument("--record", default=None,
                   help="append the agent's record (JSON lines: sent, received, direct, notes)"
                        " to this file")
    args = p.parse_args()
    if not args.node:
        p.error("--node (or SLIM_NODE) is required")
    return args


def run(main: Callable[[argparse.Namespace], Coroutine[Any, Any, None]], doc: str | None) -> None:
    """Runs an agent's `main(args)`; an SDK error ends it with a one-line message (exit 1)."""
    global _record
    args = parse_args(doc)
    if args.record:
        _record = open(args.record, "a", buffering=1, encoding="utf-8")
    failed = False
    try:
        asyncio.run(main(args))
    except* slim.SlimError as group:
        failed = True
        for e in group.exceptions:
            print(f"{type(e).__name__}: {e}", file=sys.stderr)
    except* KeyboardInterrupt:
        pass
    if failed:
        sys.exit(1)
