//! The phases of the scenario, in order: processes started, agents ready, incident, timeline, checks.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use slim_demo::{HUMAN_REVIEW, Line, TRUST_DOMAIN, approval_payload};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::agents::Agents;
use crate::args::Args;
use crate::checks::{check_calls, check_links, check_messages};
use crate::demo::Demo;
use crate::procs::{Procs, next_line, wait_log};
use crate::prometheus::{report_prometheus, start_prometheus};
use crate::scenario::{AGENTS, CHECKS, PY_AGENTS, PY_CALLS, SCENARIO_SENDS, short};

/// The scenario, once everything is set up: the control plane, the nodes,
/// the agents, the incident, the timeline, the checks.
pub(crate) async fn drive(args: &Args, demo: &Demo, procs: &mut Procs, fleet: &Path) -> Result<()> {
    start_controller(demo, procs, fleet)?;
    start_nodes(demo, procs, fleet).await?;

    let mut prom = None;
    if args.prometheus {
        prom = Some(start_prometheus(demo, procs).await?);
    }

    // The sender stays alive until the end, as the agents' reader tasks come and go.
    let (_lines_tx, mut lines, n_agents) = start_agents(args, demo, procs)?;
    let python = matches!(demo.agents, Agents::Python { .. });

    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    // `recvs` collects every line but `sent` ones: receptions and agent-protocol calls.
    let mut recvs = wait_ready(demo, procs, &mut lines, n_agents, deadline).await?;

    inject_event(demo).await?;

    let mut sent = timeline(args, demo, procs, &mut lines, &mut recvs, deadline).await?;
    settle(&mut lines, &mut sent, &mut recvs, python).await;

    println!("\n== checks");
    let mut failed = check_messages(&sent, &recvs);
    if python {
        failed += check_calls(&recvs);
    }
    failed += check_links(demo).await?;
    if let Some(p) = prom {
        failed += report_prometheus(demo, p).await?;
    }
    if failed > 0 {
        bail!("{failed} checks failed");
    }
    println!(
        "\nincident resolved in {:.1} s",
        demo.start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Control plane.
fn start_controller(demo: &Demo, procs: &mut Procs, fleet: &Path) -> Result<()> {
    // Control plane.
    let data = demo.work.join("controller-data");
    let c = demo
        .cmd("slim-controller", "controller")
        .arg("--config")
        .arg(fleet.join("controller.toml"))
        .env("SLIM_CONTROLLER_LISTEN", demo.controller.to_string())
        .env("SLIM_DATA_DIR", &data)
        .env(
            "SLIM_METRICS_LISTEN",
            demo.metrics["controller"].to_string(),
        )
        .stdout(demo.log("controller")?)
        .stderr(demo.log("controller-err")?)
        .spawn()
        .context("start slim-controller")?;
    procs.children.push(("controller".into(), c));
    println!("== controller (admin cluster) on {}", demo.controller);
    Ok(())
}

/// Data plane, and wait until every node listens.
async fn start_nodes(demo: &Demo, procs: &mut Procs, fleet: &Path) -> Result<()> {
    // Data plane: cluster A's node has no external endpoint: it only dials out.
    for (node, file, reachable, what) in [
        ("admin-node", "node-admin.toml", true, "admin cluster"),
        (
            "us-east-node",
            "node-us-east.toml",
            true,
            "cluster B, US-East",
        ),
        (
            "eu-west-node",
            "node-eu-west.toml",
            false,
            "cluster A, EU-West, behind the VPN: dials out only",
        ),
    ] {
        let mut cmd = demo.cmd("slim-node", node);
        cmd.arg("--config")
            .arg(fleet.join(file))
            .env("SLIM_LISTEN", demo.nodes[node].to_string())
            .env("SLIM_METRICS_LISTEN", demo.metrics[node].to_string())
            .env("SLIM_CONTROLLER", demo.controller.to_string())
            .stdout(demo.log(node)?)
            .stderr(demo.log(&format!("{node}-err"))?);
        if reachable {
            cmd.env("SLIM_EXTERNAL_ENDPOINT", demo.nodes[node].to_string());
        }
        let child = cmd.spawn().with_context(|| format!("start {node}"))?;
        procs.children.push((node.into(), child));
        println!(
            "== {node} ({what}) on {}; metrics http://{}/metrics",
            demo.nodes[node], demo.metrics[node]
        );
    }
    for node in ["admin-node", "us-east-node", "eu-west-node"] {
        let log = demo.work.join(format!("{node}.log"));
        let err = demo.work.join(format!("{node}-err.log"));
        if wait_log(&log, "listening on", Duration::from_secs(30))
            .await
            .is_err()
        {
            wait_log(&err, "listening on", Duration::from_secs(1))
                .await
                .with_context(|| format!("{node} did not start"))?;
        }
    }
    Ok(())
}

/// Starts the agents; their JSON lines come out of the returned receiver;
/// also returns how many agents were started.
#[allow(clippy::type_complexity)]
fn start_agents(
    args: &Args,
    demo: &Demo,
    procs: &mut Procs,
) -> Result<(
    mpsc::Sender<(String, Instant, Line)>,
    mpsc::Receiver<(String, Instant, Line)>,
    usize,
)> {
    // Agents: the Python ones add the MCP tool server and the A2A agent.
    let (lines_tx, lines) = mpsc::channel::<(String, Instant, Line)>(1024);
    let extra: &[(&str, &str, &str)] = match demo.agents {
        Agents::Python { .. } => &PY_AGENTS,
        Agents::Rust => &[],
    };
    for &(workload, role, node) in AGENTS.iter().chain(extra) {
        let mut cmd = match &demo.agents {
            Agents::Rust => {
                let mut c = demo.cmd("slim-demo-agent", workload);
                c.args(["--role", role]);
                c
            }
            Agents::Python { python, dir } => {
                let mut c = demo.cmd_path(python, workload);
                c.arg(dir.join(Agents::python_file(role)))
                    .env("PYTHONUNBUFFERED", "1");
                c
            }
        };
        if let Some(dir) = &demo.record_dir {
            cmd.arg("--record")
                .arg(dir.join(format!("{workload}.jsonl")));
        }
        let mut child = cmd
            .args(["--work-ms", &args.work_ms.to_string()])
            .env("SLIM_NODE", demo.nodes[node].to_string())
            .stdout(Stdio::piped())
            .stderr(demo.log(workload)?)
            .spawn()
            .with_context(|| format!("start agent {workload}"))?;
        let out = child.stdout.take().context("agent stdout")?;
        let tx = lines_tx.clone();
        let name = workload.to_string();
        tokio::spawn(async move {
            let mut r = BufReader::new(out).lines();
            while let Ok(Some(l)) = r.next_line().await {
                if let Ok(line) = serde_json::from_str::<Line>(&l) {
                    let _ = tx.send((name.clone(), Instant::now(), line)).await;
                }
            }
        });
        procs.children.push((workload.into(), child));
    }
    println!(
        "== agents ({}): eu-west/security-monitor, eu-west/remediation (cluster A), us-east/security-monitor (cluster B), admin/escalation-handler",
        demo.agents.describe()
    );
    if !extra.is_empty() {
        println!(
            "   and the agents they call by name: us-east/cve-db (MCP tool server, cluster B), eu-west/patcher (A2A agent, cluster A)"
        );
    }
    Ok((lines_tx, lines, AGENTS.len() + extra.len()))
}

/// Waits until the `n` agents are ready; returns the receptions seen meanwhile.
async fn wait_ready(
    demo: &Demo,
    procs: &mut Procs,
    lines: &mut mpsc::Receiver<(String, Instant, Line)>,
    n: usize,
    deadline: Instant,
) -> Result<Vec<(String, Line)>> {
    let mut ready = std::collections::BTreeSet::new();
    let mut recvs: Vec<(String, Line)> = Vec::new();
    while ready.len() < n {
        let (who, at, line) = next_line(lines, procs, deadline).await?;
        match &line {
            Line::Ready { agent } => {
                ready.insert(who.clone());
                println!("{} {agent} ready", demo.stamp_at(at));
            }
            Line::Note { agent, text } => println!("{}   ({agent}: {text})", demo.stamp_at(at)),
            _ => recvs.push((who, line)),
        }
    }
    Ok(recvs)
}

/// The incident: cluster A's event source reports a critical CVE.
async fn inject_event(demo: &Demo) -> Result<()> {
    println!(
        "\n== incident: inject-event --type cve --severity critical --image nginx:1.21 (cluster A's event source)"
    );
    let out = demo
        .cmd("inject-event", "event-source")
        .args([
            "--type",
            "cve",
            "--severity",
            "critical",
            "--image",
            "nginx:1.21",
        ])
        .env("SLIM_NODE", demo.nodes["eu-west-node"].to_string())
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "inject-event failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    demo.rec.write(&serde_json::json!({ "t": "injected",
        "to": "acme/eu-west/security-monitor",
        "event": { "type": "cve", "severity": "critical", "image": "nginx:1.21" } }));
    println!(
        "\n== timeline (who said what on which channel; every payload MLS-encrypted end to end)"
    );
    Ok(())
}

/// The timeline until the incident is resolved, with the operator's approval
/// (automatic with `--auto-approve`). Returns (workload, channel, kind) of
/// every message an agent said it sent; receptions go to `recvs`.
async fn timeline(
    args: &Args,
    demo: &Demo,
    procs: &mut Procs,
    lines: &mut mpsc::Receiver<(String, Instant, Line)>,
    recvs: &mut Vec<(String, Line)>,
    deadline: Instant,
) -> Result<Vec<(String, String, String)>> {
    let conn = demo.slimctl_conn("admin-node");
    let join_cmd = format!(
        "SPIFFE_ENDPOINT_SOCKET={} slimctl channel join {HUMAN_REVIEW} --node {} --as ops/slimctl/operator",
        demo.socket("operator"),
        demo.nodes["admin-node"]
    );
    let approve_cmd = format!(
        "SPIFFE_ENDPOINT_SOCKET={} slimctl channel publish {HUMAN_REVIEW} '{}' --session --node {} --as ops/slimctl/operator",
        demo.socket("operator"),
        approval_payload(),
        demo.nodes["admin-node"]
    );
    let mut approved = false;
    let mut resolved = false;
    // (workload, channel, kind) of every message an agent said it sent.
    let mut sent: Vec<(String, String, String)> = Vec::new();
    while !resolved {
        let (who, at, line) = next_line(lines, procs, deadline).await?;
        match &line {
            Line::Sent {
                agent,
                channel,
                kind,
                text,
            } => {
                sent.push((who.clone(), channel.clone(), kind.clone()));
                println!(
                    "{} {agent:<26} → {:<20} {text}",
                    demo.stamp_at(at),
                    short(channel)
                );
                if kind == "approval-required" && !approved {
                    approved = true;
                    println!(
                        "\n   operator, in another terminal:\n     {join_cmd}\n     {approve_cmd}\n"
                    );
                    if args.auto_approve {
                        println!(
                            "{} operator (slimctl, --auto-approve) → {:<20} {}",
                            demo.stamp(),
                            short(HUMAN_REVIEW),
                            approval_payload()
                        );
                        let mut a: Vec<String> = vec![
                            "channel".into(),
                            "publish".into(),
                            HUMAN_REVIEW.into(),
                            approval_payload(),
                            "--session".into(),
                        ];
                        a.extend(conn.iter().cloned());
                        let out = demo.slimctl(&a).await?;
                        if !out.status.success() {
                            bail!(
                                "slimctl channel publish --session failed: {}{}",
                                String::from_utf8_lossy(&out.stdout),
                                String::from_utf8_lossy(&out.stderr)
                            );
                        }
                        let payload: serde_json::Value = serde_json::from_str(&approval_payload())?;
                        demo.rec.write(&serde_json::json!({ "t": "approved",
                            "channel": HUMAN_REVIEW,
                            "spiffe_id": format!("spiffe://{TRUST_DOMAIN}/ops/slimctl/operator"),
                            "payload": payload }));
                    } else {
                        println!("   waiting for the operator's decision …");
                    }
                }
                if kind == "incident-resolved" {
                    resolved = true;
                }
            }
            Line::Note { agent, text } => println!("{}   ({agent}: {text})", demo.stamp_at(at)),
            Line::Call { agent, text, .. } => {
                println!("{} {agent:<26} {text}", demo.stamp_at(at));
                recvs.push((who, line));
            }
            Line::Recv { .. } => recvs.push((who, line)),
            Line::Ready { .. } => {}
        }
    }
    Ok(sent)
}

/// After the resolution: waits (bounded) for the last messages (and, with
/// the Python agents, their agent-protocol calls).
async fn settle(
    lines: &mut mpsc::Receiver<(String, Instant, Line)>,
    sent: &mut Vec<(String, String, String)>,
    recvs: &mut Vec<(String, Line)>,
    python: bool,
) {
    // Let the last messages reach everyone: wait (bounded) until every
    // message of the scenario was sent and every key message received.
    let received = |recvs: &[(String, Line)], r: &str, channel: &str, kind: &str| {
        recvs.iter().any(|(who, l)| {
            matches!(l, Line::Recv { channel: c, kind: k, .. } if who == r && c == channel && k == kind)
        })
    };
    let settle = Instant::now() + Duration::from_secs(30);
    loop {
        let all_sent = SCENARIO_SENDS.iter().all(|(w, c, k)| {
            sent.iter()
                .any(|(w2, c2, k2)| w2 == w && c2 == c && k2 == k)
        });
        let all_received = CHECKS.iter().all(|(kind, channel, receivers)| {
            receivers.iter().all(|r| received(recvs, r, channel, kind))
        });
        let all_called = !python
            || PY_CALLS.iter().all(|(w, proto, _, _)| {
                recvs.iter().any(
                    |(who, l)| matches!(l, Line::Call { proto: p, .. } if who == w && p == proto),
                )
            });
        if all_sent && all_received && all_called {
            break;
        }
        match tokio::time::timeout_at(settle.into(), lines.recv()).await {
            Ok(Some((who, _, line))) => match &line {
                Line::Recv { .. } | Line::Call { .. } => recvs.push((who, line)),
                Line::Sent { channel, kind, .. } => {
                    sent.push((who.clone(), channel.clone(), kind.clone()))
                }
                _ => {}
            },
            _ => break,
        }
    }
}
