//! The checks at the end of a run: messages sent and received, and cluster A's links.

use std::time::{Duration, Instant};

use anyhow::Result;
use slim_demo::Line;

use crate::demo::Demo;
use crate::scenario::{CHECKS, PY_CALLS, SCENARIO_SENDS, short};

/// Every message of the scenario was sent, and every key message received
/// (and decrypted) where it should be; returns how many checks failed.
pub(crate) fn check_messages(sent: &[(String, String, String)], recvs: &[(String, Line)]) -> usize {
    let mut failed = 0;
    for (workload, channel, kind) in SCENARIO_SENDS {
        if !sent
            .iter()
            .any(|(w, c, k)| w == workload && c == channel && k == kind)
        {
            failed += 1;
            println!("   FAIL {workload:<19} never sent {kind} on {channel}");
        }
    }
    for (kind, channel, receivers) in CHECKS {
        for r in receivers {
            let got = recvs.iter().find_map(|(who, l)| match l {
                Line::Recv {
                    channel: c,
                    kind: k,
                    spiffe_id,
                    from,
                    ..
                } if who == r && c == channel && k == kind => {
                    Some((from.clone(), spiffe_id.clone()))
                }
                _ => None,
            });
            match got {
                Some((from, id)) => println!(
                    "   ok   {r:<19} decrypted {kind:<18} on {} from {from} [{id}]",
                    short(channel)
                ),
                None => {
                    failed += 1;
                    println!("   FAIL {r:<19} never received {kind} on {channel}");
                }
            }
        }
    }
    failed
}

/// The Python agents' calls over MCP and A2A happened (an A2A task streamed
/// at least 3 `working` states, in order, then `completed`); returns how many
/// checks failed.
pub(crate) fn check_calls(lines: &[(String, Line)]) -> usize {
    let mut failed = 0;
    for (workload, proto, target, op) in PY_CALLS {
        let call = lines.iter().find_map(|(who, l)| match l {
            Line::Call {
                proto: p,
                target: t,
                op: o,
                text,
                steps,
                ..
            } if who == workload && p == proto && t == target && o == op => Some((text, steps)),
            _ => None,
        });
        let Some((text, steps)) = call else {
            failed += 1;
            println!("   FAIL {workload:<19} never called {op} ({proto}) on {target}");
            continue;
        };
        if proto == "a2a" {
            let working = steps.iter().filter(|s| *s == "working").count();
            let first_working = steps.iter().position(|s| s == "working");
            let in_order = first_working.is_some_and(|i| {
                steps[i..i + working].iter().all(|s| s == "working")
                    && steps[i + working..] == ["completed".to_string()]
            });
            if working < 3 || !in_order {
                failed += 1;
                println!(
                    "   FAIL {workload:<19} A2A task on {target}: states {steps:?} (want ≥3 working in a row, then completed)"
                );
                continue;
            }
            println!(
                "   ok   {workload:<19} followed an A2A task on {target}: {working} working updates in order, then completed"
            );
        } else if text.is_empty() {
            failed += 1;
            println!("   FAIL {workload:<19} MCP tool call {op} on {target}: no answer shown");
        } else {
            // The agent's own line on the timeline shows what the tool answered.
            println!("   ok   {workload:<19} MCP tool call {op} on {target} answered");
        }
    }
    failed
}

/// Cluster A's node dialled all its links (it accepts none); returns how
/// many checks failed (0 or 1).
pub(crate) async fn check_links(demo: &Demo) -> Result<usize> {
    let mut failed = 0;
    // Cluster A's node only dialled out.
    let mut links_args: Vec<String> = vec![
        "--output".into(),
        "json".into(),
        "link".into(),
        "list".into(),
    ];
    links_args.extend(["--controller".into(), demo.controller.to_string()]);
    links_args.extend(["--spiffe-socket".into(), demo.socket("operator").to_owned()]);
    // Nodes report their links to the controller every few seconds: wait
    // (bounded) until it knows cluster A's node's links to both other nodes,
    // which the messages above crossed.
    let reported = Instant::now() + Duration::from_secs(30);
    let links = loop {
        let out = demo.slimctl(&links_args).await?;
        let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let peers: std::collections::BTreeSet<&str> = links
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["node_id"] == "eu-west-node")
            .filter_map(|l| l["link"]["peer_node_id"].as_str())
            .collect();
        if (peers.contains("admin-node") && peers.contains("us-east-node"))
            || Instant::now() > reported
        {
            break links;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    demo.rec
        .write(&serde_json::json!({ "t": "links", "links": links }));
    let a_links: Vec<&serde_json::Value> = links
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|l| l["node_id"] == "eu-west-node")
                .collect()
        })
        .unwrap_or_default();
    let accepted = a_links
        .iter()
        .filter(|l| {
            !l["link"]["direction"]
                .as_str()
                .is_some_and(|d| d.eq_ignore_ascii_case("dialled"))
        })
        .count();
    if a_links.is_empty() || accepted > 0 {
        failed += 1;
        println!("   FAIL eu-west-node links: {a_links:?}");
    } else {
        println!(
            "   ok   eu-west-node accepted no inbound link: it dialled all {} of its links ({})",
            a_links.len(),
            a_links
                .iter()
                .map(|l| l["link"]["peer_node_id"].as_str().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(failed)
}
