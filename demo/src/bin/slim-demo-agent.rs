//! The fleet demo's agents: the seed scenario's four roles as small programs
//! on the SDK's front door ([`slim_client::app::App`]). Copy one to write your
//! own agent: it dials its cluster's node (outbound only, it never listens),
//! takes its identity from the SPIFFE Workload API, creates or joins MLS
//! channels by name, and reacts to what it reads, checking the sender's
//! SPIFFE ID before acting on anything.
//!
//! ```text
//! slim-demo-agent --role eu-monitor --node slim://127.0.0.1:4501
//! ```
//! (`SPIFFE_ENDPOINT_SOCKET` names the Workload API socket.) Each line on
//! stdout is a JSON [`slim_demo::Line`]: what the agent sent and what it
//! received and decrypted. With `--record FILE` it also keeps the
//! machine-readable record described in [`slim_demo`] (with message bodies).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use slim_client::app::{
    App, AppConfig, CreateOptions, JoinOptions, Message, Role as SessionRole, Session,
    SessionEvent, SlimError,
};
use slim_demo::{CVE_PATCH, DRAIN_NODE, HUMAN_REVIEW, Line, Recorder, SECURITY_INCIDENT, describe};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum)]
    role: Role,
    /// This cluster's SLIM node: `slim://host:port` or `host:port`.
    #[arg(long, env = "SLIM_NODE")]
    node: String,
    /// How long simulated work (a rolling update, a drain) takes.
    #[arg(long, default_value_t = 1500)]
    work_ms: u64,
    /// Append the agent's record (JSON lines: sent, received, direct, notes)
    /// to this file.
    #[arg(long)]
    record: Option<PathBuf>,
}

/// The record (`--record`; records nothing without it).
static RECORD: OnceLock<Recorder> = OnceLock::new();

fn rec() -> &'static Recorder {
    RECORD.get_or_init(Recorder::default)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Role {
    /// acme/eu-west/security-monitor: detects CVEs, moderates security-incident.
    EuMonitor,
    /// acme/eu-west/remediation: patches, moderates cve-patch, escalates.
    EuRemediation,
    /// acme/us-east/security-monitor: cross-region correlation.
    UsMonitor,
    /// acme/admin/escalation-handler: moderates human-review, pages the operator.
    EscalationHandler,
}

impl Role {
    fn service(self) -> &'static str {
        match self {
            Role::EuMonitor => "acme/eu-west/security-monitor",
            Role::EuRemediation => "acme/eu-west/remediation",
            Role::UsMonitor => "acme/us-east/security-monitor",
            Role::EscalationHandler => "acme/admin/escalation-handler",
        }
    }

    /// The channels it moderates (with who may join them by request) and
    /// those it joins.
    fn channels(
        self,
    ) -> (
        &'static [(&'static str, Admission)],
        &'static [&'static str],
    ) {
        const ANY: &str = "spiffe://acme.example/*/agent/*";
        const A: &str = "spiffe://acme.example/cluster-a/agent/*";
        const OPS: &str = "spiffe://acme.example/ops/**";
        match self {
            Role::EuMonitor => (
                &[(SECURITY_INCIDENT, &[ANY, OPS])],
                &[CVE_PATCH, HUMAN_REVIEW],
            ),
            Role::EuRemediation => (&[(CVE_PATCH, &[A])], &[SECURITY_INCIDENT, HUMAN_REVIEW]),
            Role::UsMonitor => (&[], &[SECURITY_INCIDENT]),
            Role::EscalationHandler => (&[(HUMAN_REVIEW, &[A, OPS])], &[]),
        }
    }
}

/// SPIFFE-ID patterns whose holders may join a channel by request.
type Admission = &'static [&'static str];

/// Who may act on what (layer 4 of the seed's security model: agents check
/// the sender's SPIFFE ID, which MLS proved, before acting).
const EVENT_SOURCE: &str = "spiffe://acme.example/cluster-a/k8s/event-source";
const OPERATORS: &str = "spiffe://acme.example/ops/";

/// What the agent does next, as JSON: a message (`type`, `text`, details)
/// to publish on channel `to`, `{"work": true}` (the simulated work: a
/// rolling update, a drain) or `{"note": text}`.
type Step = Value;

fn note(label: &str, text: impl Into<String>) {
    let (agent, text) = (label.to_owned(), text.into());
    Line::Note { agent, text }.record_and_print(rec(), None);
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        // Colour only at a terminal, never in the demo's log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let recorder = Recorder::open(args.record.as_deref())
        .with_context(|| format!("open the record {:?}", args.record))?;
    let _ = RECORD.set(recorder);
    let (role, work) = (args.role, Duration::from_millis(args.work_ms));
    let label = role.service().split_once('/').map_or("", |(_, r)| r);

    // Identity from the Workload API (the same SVID authenticates us to the
    // node and signs our MLS credential); outbound connection only.
    let app = App::connect(AppConfig::new(&args.node, role.service()))
        .await
        .context("connect to the node (identity: is SPIFFE_ENDPOINT_SOCKET set?)")?;

    // Create the channels this role moderates, join the others (their
    // moderators may not be up yet: the SDK keeps asking).
    let mut chans: HashMap<&'static str, Session> = HashMap::new();
    let (moderates, joins) = role.channels();
    for &(name, admission) in moderates {
        let admission = admission.iter().map(|s| s.to_string()).collect();
        let opts = CreateOptions {
            mls: true,
            admission,
        };
        let s = app.create_channel(name, opts).await.context(name)?;
        note(label, format!("created {name} (moderator, MLS)"));
        chans.insert(name, s);
    }
    for &name in joins {
        let timeout = Duration::from_secs(120);
        let opts = JoinOptions {
            timeout,
            ..JoinOptions::default()
        };
        chans.insert(name, app.join_channel(name, opts).await.context(name)?);
        note(label, format!("joined {name}"));
    }
    Line::Ready {
        agent: label.to_owned(),
    }
    .record_and_print(rec(), None);

    // One reader per channel, all into one inbox.
    let (tx, mut inbox) = mpsc::channel(1024);
    for (&name, s) in &chans {
        let (tx, s) = (tx.clone(), s.clone());
        tokio::spawn(async move {
            loop {
                let ev = s.next_event().await;
                let last = matches!(ev, Err(SlimError::Closed(_)));
                if tx.send((name, s.role(), ev)).await.is_err() || last {
                    break;
                }
            }
        });
    }
    drop(tx);
    loop {
        let steps = tokio::select! {
            m = app.receive() => on_direct(label, role, &m.context("connection closed")?),
            ev = inbox.recv() => match ev {
                Some((chan, r, ev)) => on_channel(label, role, chan, r, ev, &mut chans),
                None => bail!("every channel ended"),
            },
        };
        for mut step in steps {
            if let Some(text) = step["note"].as_str() {
                note(label, text);
            } else if step["work"] == true {
                tokio::time::sleep(work).await;
            } else if let Some(to) = step.as_object_mut().and_then(|m| m.remove("to")) {
                let channel = to.as_str().unwrap_or_default();
                let Some(s) = chans.get(channel) else {
                    note(label, format!("not a member of {channel}"));
                    continue;
                };
                let (kind, text) = (step["type"].as_str(), step["text"].as_str());
                let (kind, text) = (kind.unwrap_or_default(), text.unwrap_or_default());
                match s.publish(step.to_string().as_bytes()).await {
                    Err(e) => tracing::warn!(channel, error = %e, "publish failed"),
                    Ok(()) => Line::Sent {
                        agent: label.to_owned(),
                        channel: channel.into(),
                        kind: kind.into(),
                        text: text.into(),
                    }
                    .record_and_print(rec(), Some(&step)),
                }
            }
        }
    }
}

/// A message sent to this agent directly (not on a channel): the cluster's
/// event source hands CVE findings to the security monitor this way.
fn on_direct(label: &str, role: Role, m: &Message) -> Vec<Step> {
    let (_, _, ev) = describe(&m.payload);
    rec().write(&json!({ "t": "direct", "agent": label, "from": m.source,
        "spiffe_id": m.spiffe_id.as_deref().unwrap_or_default(), "body": ev }));
    if role != Role::EuMonitor {
        return vec![];
    }
    if m.spiffe_id.as_deref() != Some(EVENT_SOURCE) {
        let from = &m.spiffe_id;
        let why = format!("ignored a direct message from {from:?}: not the cluster's event source");
        return vec![json!({ "note": why })];
    }
    let image = ev["image"].as_str().unwrap_or("unknown");
    let severity = ev["severity"].as_str().unwrap_or("unknown");
    vec![
        json!({ "to": SECURITY_INCIDENT, "type": "cve-detected", "image": image,
        "severity": severity, "node": DRAIN_NODE,
        "text": format!("CVE-2024-XXXX detected in {image} ({severity}) on {DRAIN_NODE}") }),
    ]
}

/// A channel event: a message is printed and reacted to; the moderator notes
/// membership changes; a channel that ended is forgotten.
fn on_channel(
    label: &str,
    role: Role,
    chan: &'static str,
    mine: SessionRole,
    ev: Result<SessionEvent, SlimError>,
    chans: &mut HashMap<&'static str, Session>,
) -> Vec<Step> {
    let moderator = mine == SessionRole::Moderator;
    let m = match ev {
        Ok(SessionEvent::Message(m)) => m,
        Ok(SessionEvent::MemberJoined(mi)) if moderator => {
            let text = format!("{chan}: {} [{}] joined", mi.name, mi.spiffe_id);
            return vec![json!({ "note": text })];
        }
        Ok(SessionEvent::MemberLeft { member, reason }) if moderator => {
            let (n, id) = (member.name, member.spiffe_id);
            return vec![json!({ "note": format!("{chan}: {n} [{id}] left ({reason})") })];
        }
        Ok(_) => return vec![],
        Err(SlimError::Closed(reason)) => {
            chans.remove(chan);
            return vec![json!({ "note": format!("{chan}: ended ({reason})") })];
        }
        Err(e) => return vec![json!({ "note": format!("{chan}: {e}") })],
    };
    let (kind, text, body) = describe(&m.payload);
    let spiffe_id = m.spiffe_id.unwrap_or_default();
    let (agent, channel, from, epoch) = (label.into(), chan.into(), m.source, m.epoch.unwrap_or(0));
    let (k, id) = (kind.clone(), spiffe_id.clone());
    Line::Recv {
        agent,
        channel,
        from,
        spiffe_id,
        kind,
        text,
        epoch,
    }
    .record_and_print(rec(), Some(&body));
    react(role, chan, &k, &id, &body)
}

/// The scenario (seed §6.1 Flow A and §6.2 Flow B).
fn react(role: Role, chan: &str, kind: &str, from: &str, body: &Value) -> Vec<Step> {
    let node = body["node"].as_str().unwrap_or(DRAIN_NODE);
    let image = body["image"].as_str().unwrap_or("the image");
    let (decision, operator) = (&body["decision"], from.starts_with(OPERATORS));
    match (role, chan, kind) {
        // Flow A: cross-cluster correlation.
        (Role::UsMonitor, SECURITY_INCIDENT, "cve-detected") => vec![json!({
            "to": SECURITY_INCIDENT, "type": "correlation", "also_affected": ["us-east-3"],
            "text": format!("Confirmed affected: us-east-3 also running {image}") })],
        // Flow A: remediation attempt, which fails and escalates (Flow B).
        (Role::EuRemediation, SECURITY_INCIDENT, "cve-detected") => {
            let attempt = |to| {
                json!({ "to": to, "type": "patch-attempt", "action": "rolling-update",
                "target": "nginx:1.25", "text": "Attempting rolling update to nginx:1.25" })
            };
            vec![
                attempt(CVE_PATCH),
                attempt(SECURITY_INCIDENT),
                json!({ "work": true }),
                json!({ "to": SECURITY_INCIDENT, "type": "patch-failed",
                    "text": "Node tainted, cannot auto-patch — escalating" }),
                json!({ "to": HUMAN_REVIEW, "type": "escalation", "reason": "cannot-auto-patch",
                    "severity": "CRITICAL", "node": DRAIN_NODE,
                    "text": format!("Escalation requested: node-drain required on {DRAIN_NODE}") }),
            ]
        }
        // Flow B: the escalation handler prepares the runbook and asks a human.
        (Role::EscalationHandler, HUMAN_REVIEW, "escalation") => vec![
            json!({ "to": HUMAN_REVIEW, "type": "runbook", "text": "Runbook loaded, paging operator" }),
            json!({ "to": HUMAN_REVIEW, "type": "approval-required", "node": DRAIN_NODE,
                "text": format!("[APPROVAL REQUIRED] drain {DRAIN_NODE}: reply with {}",
                    slim_demo::approval_payload()) }),
        ],
        // Flow B: only an operator's decision is acted on.
        (Role::EuRemediation, HUMAN_REVIEW, "decision") if !operator => {
            vec![json!({ "note": format!("ignored a decision from {from}: not an operator") })]
        }
        (Role::EuRemediation, HUMAN_REVIEW, "decision") if decision != "APPROVE_DRAIN" => {
            vec![json!({ "note": format!("decision {decision} is not an approval") })]
        }
        (Role::EuRemediation, HUMAN_REVIEW, "decision") => vec![
            json!({ "to": SECURITY_INCIDENT, "type": "drain-started", "node": node,
                "text": format!("Node drain initiated on {node} (approved by {from})") }),
            json!({ "work": true }),
            json!({ "to": SECURITY_INCIDENT, "type": "drain-complete", "node": node,
                "text": "Drain complete, workloads rescheduled" }),
        ],
        (Role::EscalationHandler, HUMAN_REVIEW, "decision") if operator => vec![json!({
            "to": HUMAN_REVIEW, "type": "decision-recorded",
            "text": format!("Decision {decision} recorded from {from}") })],
        (Role::EuMonitor, SECURITY_INCIDENT, "drain-complete") => vec![json!({
            "to": SECURITY_INCIDENT, "type": "incident-resolved",
            "text": "Incident resolved — CVE remediated" })],
        _ => vec![],
    }
}
