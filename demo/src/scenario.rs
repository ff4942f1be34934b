//! The scenario's fixed data: the fleet config files, the workloads, the agents, and the messages it must send and deliver.

use slim_demo::{CVE_PATCH, HUMAN_REVIEW, SECURITY_INCIDENT};

pub(crate) const FLEET: [(&str, &str); 5] = [
    (
        "controller.toml",
        include_str!("../../deploy/fleet/controller.toml"),
    ),
    (
        "node-admin.toml",
        include_str!("../../deploy/fleet/node-admin.toml"),
    ),
    (
        "node-eu-west.toml",
        include_str!("../../deploy/fleet/node-eu-west.toml"),
    ),
    (
        "node-us-east.toml",
        include_str!("../../deploy/fleet/node-us-east.toml"),
    ),
    (
        "policy.toml",
        include_str!("../../deploy/fleet/policy.toml"),
    ),
];

/// Every workload of the demo and its SPIFFE ID path.
pub(crate) const WORKLOADS: [(&str, &str); 12] = [
    ("controller", "admin/controller/main"),
    ("admin-node", "admin/node/admin-node"),
    ("eu-west-node", "cluster-a/node/eu-west-node"),
    ("us-east-node", "cluster-b/node/us-east-node"),
    ("eu-monitor", "cluster-a/agent/security-monitor"),
    ("eu-remediation", "cluster-a/agent/remediation"),
    ("us-monitor", "cluster-b/agent/security-monitor"),
    ("escalation-handler", "admin/agent/escalation-handler"),
    ("event-source", "cluster-a/k8s/event-source"),
    ("operator", "ops/slimctl/operator"),
    ("cve-tools", "cluster-b/agent/cve-tools"),
    ("patcher", "cluster-a/agent/patcher"),
];

/// The four roles: workload (its Workload API socket), role, node.
pub(crate) const AGENTS: [(&str, &str, &str); 4] = [
    ("escalation-handler", "escalation-handler", "admin-node"),
    ("eu-monitor", "eu-monitor", "eu-west-node"),
    ("eu-remediation", "eu-remediation", "eu-west-node"),
    ("us-monitor", "us-monitor", "us-east-node"),
];

/// The agents only the Python agents add (they serve MCP and A2A, which the
/// Rust agents do not speak): workload, role, node.
pub(crate) const PY_AGENTS: [(&str, &str, &str); 2] = [
    ("cve-tools", "cve-tools", "us-east-node"),
    ("patcher", "patcher", "eu-west-node"),
];

/// The agent-protocol calls the Python agents must make: (workload, proto,
/// target, op). An A2A call must also stream at least 3 `working` states
/// in order and end `completed`.
pub(crate) const PY_CALLS: [(&str, &str, &str, &str); 2] = [
    (
        "escalation-handler",
        "mcp",
        "acme/us-east/cve-db",
        "cve-db/lookup",
    ),
    (
        "eu-remediation",
        "a2a",
        "acme/eu-west/patcher",
        "SendStreamingMessage",
    ),
];

/// Every message the scenario has an agent send, once each: (workload,
/// channel, kind). The run waits for all of them after the resolution.
pub(crate) const SCENARIO_SENDS: [(&str, &str, &str); 12] = [
    ("eu-monitor", SECURITY_INCIDENT, "cve-detected"),
    ("us-monitor", SECURITY_INCIDENT, "correlation"),
    ("eu-remediation", CVE_PATCH, "patch-attempt"),
    ("eu-remediation", SECURITY_INCIDENT, "patch-attempt"),
    ("eu-remediation", SECURITY_INCIDENT, "patch-failed"),
    ("eu-remediation", HUMAN_REVIEW, "escalation"),
    ("escalation-handler", HUMAN_REVIEW, "runbook"),
    ("escalation-handler", HUMAN_REVIEW, "approval-required"),
    ("escalation-handler", HUMAN_REVIEW, "decision-recorded"),
    ("eu-remediation", SECURITY_INCIDENT, "drain-started"),
    ("eu-remediation", SECURITY_INCIDENT, "drain-complete"),
    ("eu-monitor", SECURITY_INCIDENT, "incident-resolved"),
];

/// The key messages and who must receive (and decrypt) each: (kind,
/// channel, receivers).
pub(crate) const CHECKS: [(&str, &str, &[&str]); 8] = [
    (
        "cve-detected",
        SECURITY_INCIDENT,
        &["us-monitor", "eu-remediation"],
    ),
    (
        "correlation",
        SECURITY_INCIDENT,
        &["eu-monitor", "eu-remediation"],
    ),
    ("patch-attempt", CVE_PATCH, &["eu-monitor"]),
    (
        "escalation",
        HUMAN_REVIEW,
        &["escalation-handler", "eu-monitor"],
    ),
    (
        "approval-required",
        HUMAN_REVIEW,
        &["eu-remediation", "eu-monitor"],
    ),
    (
        "decision",
        HUMAN_REVIEW,
        &["eu-remediation", "escalation-handler"],
    ),
    (
        "drain-complete",
        SECURITY_INCIDENT,
        &["eu-monitor", "us-monitor"],
    ),
    (
        "incident-resolved",
        SECURITY_INCIDENT,
        &["us-monitor", "eu-remediation"],
    ),
];

pub(crate) fn short(channel: &str) -> &str {
    channel.rsplit('/').next().unwrap_or(channel)
}
