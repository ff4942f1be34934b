//! Shared pieces of the fleet demo: the names of the scenario, the line
//! format agents print so the orchestrator can draw the timeline and check
//! that every key message arrived, decrypted, where it should, and the
//! machine-readable record ([`Recorder`]) agents and the orchestrator keep
//! with `--record` / `--record-dir`.
//!
//! # The record
//!
//! `slim-demo --record-dir DIR` has every agent (Python or Rust) append JSON
//! lines to `DIR/<workload>.jsonl` (`eu-monitor.jsonl`, `eu-remediation.jsonl`,
//! `us-monitor.jsonl`, `escalation-handler.jsonl`), written by the agent
//! itself, each line written through to the file before the agent prints the
//! matching stdout line:
//!
//! * `{"t":"ready","agent":LABEL}`: every channel of the role is set up;
//! * `{"t":"sent","agent","channel","kind","text","body"}`: it published
//!   `body` (the exact JSON object) on `channel`;
//! * `{"t":"recv","agent","channel","from","spiffe_id","kind","text","epoch","body"}`:
//!   it received and decrypted a message on `channel` from `from` (full name)
//!   whose SPIFFE ID MLS proved to be `spiffe_id`, in MLS epoch `epoch`;
//!   `body` is the payload as JSON (`null` if it is not JSON);
//! * `{"t":"direct","agent","from","spiffe_id","body"}`: a message sent to
//!   the agent itself, not on a channel (the event source's finding);
//! * `{"t":"note","agent","text"}`: membership, and decisions not to act
//!   (`ignored a decision from …`);
//! * `{"t":"call","agent","proto","target","op","text","steps"}` (Python
//!   agents): a call to another agent by its slim name over an agent
//!   protocol, `proto` `"mcp"` (a tool call) or `"a2a"` (a task; `steps`: its
//!   states as streamed, in order). The Python agents add two workloads that
//!   serve them: `cve-tools` (MCP, cluster B) and `patcher` (A2A, cluster A).
//!
//! The orchestrator appends to `DIR/demo.jsonl` what it did and saw:
//! `{"t":"agents","kind":"python"|"rust"}`, `{"t":"injected","to","event"}`
//! (after `inject-event` succeeded), `{"t":"approved","channel","spiffe_id","payload"}`
//! (after the operator's `slimctl` publish succeeded), `{"t":"links","links"}`
//! (the controller's link list, as `slimctl --output json link list` prints
//! it) and, with `--prometheus`, `{"t":"prometheus","query","rates"}`.
#![forbid(unsafe_code)]

use parking_lot::Mutex;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub const TRUST_DOMAIN: &str = "acme.example";

pub const SECURITY_INCIDENT: &str = "acme/monitoring/security-incident";
pub const CVE_PATCH: &str = "acme/remediation/cve-patch";
pub const HUMAN_REVIEW: &str = "acme/escalation/human-review";

/// The node the seed's incident is about.
pub const DRAIN_NODE: &str = "eu-west-7-node-3";

/// What the operator publishes to approve the drain.
pub fn approval_payload() -> String {
    format!("{{\"decision\":\"APPROVE_DRAIN\",\"node\":\"{DRAIN_NODE}\"}}")
}

/// One line an agent prints on stdout (JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Line {
    /// Every channel of the role is created or joined.
    Ready { agent: String },
    /// The agent published `text` (kind `kind`) on `channel`.
    Sent {
        agent: String,
        channel: String,
        kind: String,
        text: String,
    },
    /// The agent received and decrypted a message on `channel`.
    Recv {
        agent: String,
        channel: String,
        from: String,
        spiffe_id: String,
        kind: String,
        text: String,
        epoch: u64,
    },
    /// Something noteworthy (membership, refusals, errors).
    Note { agent: String, text: String },
    /// A call to another agent by name over an agent protocol (`proto`:
    /// `mcp` or `a2a`); `steps`: an A2A task's states as streamed, in order.
    Call {
        agent: String,
        proto: String,
        target: String,
        op: String,
        text: String,
        #[serde(default)]
        steps: Vec<String>,
    },
}

impl Line {
    pub fn print(&self) {
        // One write per line so lines from one agent never interleave.
        if let Ok(s) = serde_json::to_string(self) {
            println!("{s}");
        }
    }

    /// Records this line (with `body`, the message, where there is one)
    /// and then prints it.
    pub fn record_and_print(&self, rec: &Recorder, body: Option<&serde_json::Value>) {
        if let Ok(mut v) = serde_json::to_value(self) {
            if let Some(b) = body {
                v["body"] = b.clone();
            }
            rec.write(&v);
        }
        self.print();
    }
}

/// An append-only JSON-lines record (see the crate docs); writes nothing
/// when no path was given.
#[derive(Debug, Default)]
pub struct Recorder {
    file: Option<Mutex<std::fs::File>>,
}

impl Recorder {
    /// Appends to `path` (created if missing); `None`: records nothing.
    pub fn open(path: Option<&Path>) -> std::io::Result<Recorder> {
        let file = match path {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            )),
            None => None,
        };
        Ok(Recorder { file })
    }

    /// One object, one line, in one write (unbuffered: it is in the file
    /// when this returns).
    pub fn write(&self, v: &serde_json::Value) {
        let Some(f) = &self.file else { return };
        let mut line = v.to_string();
        line.push('\n');
        let mut f = f.lock();
        if let Err(e) = f.write_all(line.as_bytes()) {
            eprintln!("record: {e}");
        }
    }
}

/// A message on the demo's channels: JSON with a `type` and a human `text`;
/// anything else (e.g. the operator's raw decision) is shown as it is.
pub fn describe(payload: &[u8]) -> (String, String, serde_json::Value) {
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(v) => {
            let kind = v
                .get("type")
                .and_then(|t| t.as_str())
                .map(str::to_owned)
                .or_else(|| v.get("decision").map(|_| "decision".to_owned()))
                .unwrap_or_else(|| "message".into());
            let text = v
                .get("text")
                .and_then(|t| t.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            (kind, text, v)
        }
        Err(_) => (
            "bytes".into(),
            String::from_utf8_lossy(payload).into_owned(),
            serde_json::Value::Null,
        ),
    }
}
