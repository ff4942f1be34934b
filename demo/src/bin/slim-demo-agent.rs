//! The fleet demo's agents: the seed scenario's four roles as small SDK
//! programs. Copy one to write your own agent: it dials its cluster's node
//! (outbound only, it never listens), takes its identity from the SPIFFE
//! Workload API, creates or joins MLS channels by name, and reacts to what it
//! reads, checking the sender's SPIFFE ID before acting on anything.
//!
//! ```text
//! slim-demo-agent --role eu-monitor --node 127.0.0.1:4501
//! ```
//! (`SPIFFE_ENDPOINT_SOCKET` names the Workload API socket.) Each line on
//! stdout is a JSON [`slim_demo::Line`]: what the agent sent and what it
//! received and decrypted.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use slim_auth::{IdentitySource, IdentitySourceConfig};
use slim_client::channel::{Channel, ChannelConfig, ChannelError, ChannelEvent, ChannelOptions};
use slim_client::session::SessionMux;
use slim_client::{Client, ClientConfig, Credentials, Event};
use slim_demo::{CVE_PATCH, DRAIN_NODE, HUMAN_REVIEW, Line, SECURITY_INCIDENT, describe};
use slim_mls::MlsIdentity;
use slim_wire::Name;
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum)]
    role: Role,
    /// This cluster's SLIM node.
    #[arg(long, env = "SLIM_NODE")]
    node: SocketAddr,
    /// How long simulated work (a rolling update, a drain) takes.
    #[arg(long, default_value_t = 1500)]
    work_ms: u64,
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

    /// Short name for the timeline ("eu-west/security-monitor").
    fn label(self) -> String {
        self.service()
            .split_once('/')
            .map(|(_, rest)| rest.to_owned())
            .unwrap_or_default()
    }
}

/// Who may act on what (layer 4 of the seed's security model: agents check
/// the sender's SPIFFE ID, which MLS proved, before acting).
const EVENT_SOURCE: &str = "spiffe://acme.example/cluster-a/k8s/event-source";
const OPERATORS: &str = "spiffe://acme.example/ops/";

/// A channel this agent created or joined, driven by its own task: `send`
/// publishes into it, everything it receives comes out of the shared inbox.
struct Chan {
    name: &'static str,
    tx: mpsc::Sender<Vec<u8>>,
}

struct Agent {
    role: Role,
    label: String,
    work: Duration,
    chans: Vec<Chan>,
}

impl Agent {
    async fn send(&self, channel: &str, kind: &str, text: &str, extra: serde_json::Value) {
        let mut msg = serde_json::json!({ "type": kind, "text": text });
        if let (Some(m), serde_json::Value::Object(e)) = (msg.as_object_mut(), extra) {
            m.extend(e);
        }
        let Some(c) = self.chans.iter().find(|c| c.name == channel) else {
            Line::Note {
                agent: self.label.clone(),
                text: format!("not a member of {channel}"),
            }
            .print();
            return;
        };
        if c.tx.send(msg.to_string().into_bytes()).await.is_ok() {
            Line::Sent {
                agent: self.label.clone(),
                channel: channel.into(),
                kind: kind.into(),
                text: text.into(),
            }
            .print();
        }
    }

    fn note(&self, text: impl Into<String>) {
        Line::Note {
            agent: self.label.clone(),
            text: text.into(),
        }
        .print();
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let role = args.role;

    // 1. Identity from the Workload API; the same SVID authenticates us to
    //    the node (mTLS) and signs our MLS credential.
    let source = IdentitySource::start(IdentitySourceConfig::spire(None))
        .await
        .context("SPIFFE Workload API (is SPIFFE_ENDPOINT_SOCKET set?)")?;
    let mls = MlsIdentity::new(&source.current()).context("MLS identity")?;

    // 2. Dial the node: outbound only.
    let cfg = ClientConfig::with_credentials(
        args.node,
        Name::parse(role.service())?,
        Credentials::Source(source),
    );
    let client = Client::connect(cfg).await.context("connect to the node")?;
    let (mux, mut raw) = SessionMux::new(client);

    // 3. Channels: create the ones this role moderates, join the others.
    let (inbox_tx, mut inbox) = mpsc::channel::<(&'static str, ChannelEvent)>(1024);
    let mut agent = Agent {
        role,
        label: role.label(),
        work: Duration::from_millis(args.work_ms),
        chans: Vec::new(),
    };
    let (moderates, joins): (&[(&'static str, &[&str])], &[&'static str]) = match role {
        Role::EuMonitor => (
            &[(
                SECURITY_INCIDENT,
                &[
                    "spiffe://acme.example/*/agent/*",
                    "spiffe://acme.example/ops/**",
                ],
            )],
            &[CVE_PATCH, HUMAN_REVIEW],
        ),
        Role::EuRemediation => (
            &[(CVE_PATCH, &["spiffe://acme.example/cluster-a/agent/*"])],
            &[SECURITY_INCIDENT, HUMAN_REVIEW],
        ),
        Role::UsMonitor => (&[], &[SECURITY_INCIDENT]),
        Role::EscalationHandler => (
            &[(
                HUMAN_REVIEW,
                &[
                    "spiffe://acme.example/cluster-a/agent/*",
                    "spiffe://acme.example/ops/**",
                ],
            )],
            &[],
        ),
    };
    for (name, admission) in moderates {
        let config = ChannelConfig {
            mls: true,
            admission: admission.iter().map(|s| s.to_string()).collect(),
            ..ChannelConfig::default()
        };
        let opts = ChannelOptions::new(config, Some(mls.clone()));
        let m = Channel::create(&mux, &Name::parse(name)?, opts).await?;
        agent.note(format!("created {name} (moderator, MLS)"));
        agent
            .chans
            .push(spawn_channel(name, Handle::Moderator(m), inbox_tx.clone()));
    }
    for name in joins {
        let member = join_with_retry(&mux, name, &mls).await?;
        agent.note(format!("joined {name}"));
        agent.chans.push(spawn_channel(
            name,
            Handle::Member(member),
            inbox_tx.clone(),
        ));
    }
    Line::Ready {
        agent: agent.label.clone(),
    }
    .print();

    // 4. React.
    loop {
        tokio::select! {
            ev = raw.recv() => match ev {
                Some(Event::Message(d)) => on_direct(&agent, d.from_identity.as_deref(), &d.payload).await,
                Some(Event::Error(e)) => agent.note(format!("node error: {}", e.reason)),
                None => bail!("connection closed"),
            },
            ev = inbox.recv() => match ev {
                Some((chan, ev)) => on_channel(&mut agent, chan, ev).await,
                None => bail!("every channel ended"),
            },
        }
    }
}

/// Joins by request; the moderator may not be up yet (it is another
/// program, possibly in another cluster), so an unanswered request is retried.
async fn join_with_retry(
    mux: &SessionMux,
    name: &'static str,
    mls: &MlsIdentity,
) -> Result<slim_client::channel::ChannelMember> {
    let channel = Name::parse(name)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let opts = ChannelOptions::new(ChannelConfig::default(), Some(mls.clone()));
        match Channel::join(mux, &channel, None, opts).await {
            Ok(m) => return Ok(m),
            Err(ChannelError::JoinRefused { reason }) => {
                bail!("{name}: join refused: {reason}")
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::info!(channel = name, error = %e, "join not answered yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("join {name}")),
        }
    }
}

enum Handle {
    Moderator(slim_client::channel::ChannelModerator),
    Member(slim_client::channel::ChannelMember),
}

fn spawn_channel(
    name: &'static str,
    mut h: Handle,
    out: mpsc::Sender<(&'static str, ChannelEvent)>,
) -> Chan {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(async move {
        loop {
            let ev = match &mut h {
                Handle::Moderator(m) => tokio::select! {
                    ev = m.recv() => ev,
                    Some(p) = rx.recv() => {
                        if let Err(e) = m.publish(&p).await {
                            tracing::warn!(channel = name, error = %e, "publish failed");
                        }
                        continue;
                    }
                },
                Handle::Member(m) => tokio::select! {
                    ev = m.recv() => ev,
                    Some(p) = rx.recv() => {
                        if let Err(e) = m.publish(&p).await {
                            tracing::warn!(channel = name, error = %e, "publish failed");
                        }
                        continue;
                    }
                },
            };
            let Some(ev) = ev else { break };
            let last = matches!(
                ev,
                ChannelEvent::ChannelClosed { .. } | ChannelEvent::Removed { .. }
            );
            if out.send((name, ev)).await.is_err() || last {
                break;
            }
        }
    });
    Chan { name, tx }
}

/// A message sent to this agent directly (not on a channel): the cluster's
/// event source hands CVE findings to the security monitor this way.
async fn on_direct(agent: &Agent, from_identity: Option<&str>, payload: &[u8]) {
    if agent.role != Role::EuMonitor {
        return;
    }
    if from_identity != Some(EVENT_SOURCE) {
        agent.note(format!(
            "ignored a direct message from {from_identity:?}: not the cluster's event source"
        ));
        return;
    }
    let (_, _, ev) = describe(payload);
    let image = ev["image"].as_str().unwrap_or("unknown");
    let severity = ev["severity"].as_str().unwrap_or("unknown");
    let text = format!("CVE-2024-XXXX detected in {image} ({severity}) on {DRAIN_NODE}");
    agent
        .send(
            SECURITY_INCIDENT,
            "cve-detected",
            &text,
            serde_json::json!({ "image": image, "severity": severity, "node": DRAIN_NODE }),
        )
        .await;
}

async fn on_channel(agent: &mut Agent, chan: &'static str, ev: ChannelEvent) {
    let (from, spiffe_id, epoch, payload) = match ev {
        ChannelEvent::Message {
            sender,
            spiffe_id,
            epoch,
            payload,
            ..
        } => (sender, spiffe_id, epoch, payload),
        ChannelEvent::MemberJoined { member, .. } => {
            agent.note(format!("{chan}: {} joined", member_label(&member)));
            return;
        }
        ChannelEvent::MemberLeft { member, reason, .. } => {
            agent.note(format!("{chan}: {} left ({reason})", member_label(&member)));
            return;
        }
        ChannelEvent::JoinRequestRefused { name, reason, .. } => {
            agent.note(format!("{chan}: refused {name}: {reason}"));
            return;
        }
        ChannelEvent::Rejected { sender, error } => {
            agent.note(format!("{chan}: rejected a message from {sender}: {error}"));
            return;
        }
        ChannelEvent::ChannelClosed { reason } | ChannelEvent::Removed { reason } => {
            agent.note(format!("{chan}: ended ({reason})"));
            agent.chans.retain(|c| c.name != chan);
            return;
        }
        _ => return,
    };
    let (kind, text, body) = describe(&payload);
    Line::Recv {
        agent: agent.label.clone(),
        channel: chan.into(),
        from: from.clone(),
        spiffe_id: spiffe_id.clone(),
        kind: kind.clone(),
        text,
        epoch,
    }
    .print();
    react(agent, chan, &kind, &spiffe_id, &body).await;
}

fn member_label(m: &slim_client::channel::MemberInfo) -> String {
    format!("{} [{}]", m.name, m.spiffe_id)
}

/// The scenario (seed §6.1 Flow A and §6.2 Flow B).
async fn react(agent: &Agent, chan: &str, kind: &str, spiffe_id: &str, body: &serde_json::Value) {
    match (agent.role, chan, kind) {
        // Flow A: cross-cluster correlation.
        (Role::UsMonitor, SECURITY_INCIDENT, "cve-detected") => {
            let image = body["image"].as_str().unwrap_or("the image");
            agent
                .send(
                    SECURITY_INCIDENT,
                    "correlation",
                    &format!("Confirmed affected: us-east-3 also running {image}"),
                    serde_json::json!({ "also_affected": ["us-east-3"] }),
                )
                .await;
        }
        // Flow A: remediation attempt, which fails and escalates (Flow B).
        (Role::EuRemediation, SECURITY_INCIDENT, "cve-detected") => {
            let text = "Attempting rolling update to nginx:1.25";
            let action = serde_json::json!({ "action": "rolling-update", "target": "nginx:1.25" });
            agent
                .send(CVE_PATCH, "patch-attempt", text, action.clone())
                .await;
            agent
                .send(SECURITY_INCIDENT, "patch-attempt", text, action)
                .await;
            tokio::time::sleep(agent.work).await;
            agent
                .send(
                    SECURITY_INCIDENT,
                    "patch-failed",
                    "Node tainted, cannot auto-patch — escalating",
                    serde_json::json!({}),
                )
                .await;
            agent
                .send(
                    HUMAN_REVIEW,
                    "escalation",
                    &format!("Escalation requested: node-drain required on {DRAIN_NODE}"),
                    serde_json::json!({ "reason": "cannot-auto-patch", "severity": "CRITICAL", "node": DRAIN_NODE }),
                )
                .await;
        }
        // Flow B: the escalation handler prepares the runbook and asks a human.
        (Role::EscalationHandler, HUMAN_REVIEW, "escalation") => {
            agent
                .send(
                    HUMAN_REVIEW,
                    "runbook",
                    "Runbook loaded, paging operator",
                    serde_json::json!({}),
                )
                .await;
            agent
                .send(
                    HUMAN_REVIEW,
                    "approval-required",
                    &format!(
                        "[APPROVAL REQUIRED] drain {DRAIN_NODE}: reply with {}",
                        slim_demo::approval_payload()
                    ),
                    serde_json::json!({ "node": DRAIN_NODE }),
                )
                .await;
        }
        // Flow B: only an operator's decision is acted on.
        (Role::EuRemediation, HUMAN_REVIEW, "decision") => {
            if !spiffe_id.starts_with(OPERATORS) {
                agent.note(format!(
                    "ignored a decision from {spiffe_id}: not an operator"
                ));
                return;
            }
            if body["decision"] != "APPROVE_DRAIN" {
                agent.note(format!("decision {} is not an approval", body["decision"]));
                return;
            }
            let node = body["node"].as_str().unwrap_or(DRAIN_NODE);
            agent
                .send(
                    SECURITY_INCIDENT,
                    "drain-started",
                    &format!("Node drain initiated on {node} (approved by {spiffe_id})"),
                    serde_json::json!({ "node": node }),
                )
                .await;
            tokio::time::sleep(agent.work).await;
            agent
                .send(
                    SECURITY_INCIDENT,
                    "drain-complete",
                    "Drain complete, workloads rescheduled",
                    serde_json::json!({ "node": node }),
                )
                .await;
        }
        (Role::EscalationHandler, HUMAN_REVIEW, "decision") if spiffe_id.starts_with(OPERATORS) => {
            agent
                .send(
                    HUMAN_REVIEW,
                    "decision-recorded",
                    &format!("Decision {} recorded from {spiffe_id}", body["decision"]),
                    serde_json::json!({}),
                )
                .await;
        }
        (Role::EuMonitor, SECURITY_INCIDENT, "drain-complete") => {
            agent
                .send(
                    SECURITY_INCIDENT,
                    "incident-resolved",
                    "Incident resolved — CVE remediated",
                    serde_json::json!({}),
                )
                .await;
        }
        _ => {}
    }
}
