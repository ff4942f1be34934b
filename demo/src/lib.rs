//! Shared pieces of the fleet demo: the names of the scenario and the line
//! format agents print so the orchestrator can draw the timeline and check
//! that every key message arrived, decrypted, where it should.
#![forbid(unsafe_code)]

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
}

impl Line {
    pub fn print(&self) {
        // One write per line so lines from one agent never interleave.
        if let Ok(s) = serde_json::to_string(self) {
            println!("{s}");
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
