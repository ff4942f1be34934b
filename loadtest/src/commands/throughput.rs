//! `throughput`, `fanout`, `slow-consumer` and `cross-node`: publishers
//! and subscribers through one node (in-process or remote) or across two.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{emit, write_plot};
use crate::cli::ThroughputArgs;
use crate::harness::{self, Control, CpuSetup, Mode, Plan, ServerStats};
use crate::procstat::CpuProbe;
use crate::target::{Target, identities, nats_tls, parse_target};
use crate::throughput_report::loss_tag;
use crate::util::{run_id, runtime};
use crate::{nats, payload, serverstats, slim};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    Throughput,
    Fanout,
    SlowConsumer,
}

pub(crate) fn cross_node(mut a: ThroughputArgs) -> Result<()> {
    if a.sweep_sizes.is_some() {
        bail!("cross-node runs one --size");
    }
    if !a.spawn_node && a.sub_target.is_none() {
        bail!("cross-node needs --spawn-node, or --target and --sub-target (two linked nodes)");
    }
    let subs = a.subs.unwrap_or(1);
    let mut reports = Vec::with_capacity(2);
    for cross in [false, true] {
        if cross {
            std::thread::sleep(Duration::from_secs(1));
        }
        a.cross = cross;
        let r = throughput_once(&a, subs, 0, a.size)?;
        emit(a.t.json, &r, r.table(), r.one_line())?;
        reports.push(r);
    }
    let ratio = reports[1].deliveries_per_s / reports[0].deliveries_per_s.max(1e-9);
    println!(
        "cross-node / single-node deliveries/s = {ratio:.3} ({}, {} / {}, {})",
        harness::fmt_num(reports[1].deliveries_per_s),
        loss_tag(reports[1].loss_pct),
        harness::fmt_num(reports[0].deliveries_per_s),
        loss_tag(reports[0].loss_pct)
    );
    write_plot(&a.t.plot, &reports)
}

pub(crate) fn throughput(mut a: ThroughputArgs, flavor: Flavor) -> Result<()> {
    a.cross = a.sub_target.is_some();
    let subs = a.subs.unwrap_or(match flavor {
        Flavor::Throughput => 1,
        Flavor::Fanout => 100,
        Flavor::SlowConsumer => 10,
    });
    let stalled = a.stalled.unwrap_or(match flavor {
        Flavor::SlowConsumer => 1,
        _ => 0,
    });
    if flavor != Flavor::Throughput && (a.pubs != 1 || a.mode != Mode::Multicast) {
        bail!("fanout and slow-consumer are 1 publisher, multicast: use `throughput` otherwise");
    }
    if stalled > 0 && a.mode != Mode::Multicast {
        bail!("--stalled needs --mode multicast");
    }
    if stalled >= subs {
        bail!("--stalled ({stalled}) must be below --subs ({subs}): someone has to read");
    }
    let sizes = a.sweep_sizes.clone().unwrap_or_else(|| vec![a.size]);
    if sizes.is_empty() {
        bail!("--sweep-sizes is empty");
    }
    let mut reports = Vec::with_capacity(sizes.len());
    for (i, size) in sizes.iter().enumerate() {
        if i > 0 {
            // Let the server forget the previous run's connections.
            std::thread::sleep(Duration::from_secs(1));
        }
        let r = throughput_once(&a, subs, stalled, *size)?;
        emit(a.t.json, &r, r.table(), r.one_line())?;
        if !a.t.json && sizes.len() > 1 {
            println!();
        }
        reports.push(r);
    }
    if sizes.len() > 1 && !a.t.json {
        println!("size (B)   deliveries/s   loss %   payload MB/s");
        for r in &reports {
            println!(
                "{:>8} {:>14} {:>8.3} {:>14.2}{}",
                r.size_bytes,
                harness::fmt_num(r.deliveries_per_s),
                r.loss_pct,
                r.payload_mb_per_s,
                if r.lossy { "  LOSSY" } else { "" }
            );
        }
    }
    write_plot(&a.t.plot, &reports)
}

pub(crate) fn throughput_once(
    a: &ThroughputArgs,
    subs: usize,
    stalled: usize,
    size: usize,
) -> Result<harness::Report> {
    if a.pubs == 0 || subs == 0 || a.pub_tasks == 0 {
        bail!("--pubs, --subs and --pub-tasks must be at least 1");
    }
    if a.duration.is_zero() {
        bail!("--duration must be positive");
    }
    payload::PayloadWriter::new(0, size)?;
    let plan = Plan {
        pubs: a.pubs,
        pub_tasks: a.pub_tasks,
        subs,
        stalled,
        size,
        mode: a.mode,
        warmup: a.warmup,
        duration: a.duration,
        drain_idle: a.drain_idle,
        drain_max: a.drain_max,
        across_nodes: a.cross,
        publisher_thread: a.publisher_thread,
    };
    let target = match (&a.t.target, a.spawn_node) {
        (Some(t), false) => parse_target(t)?,
        (Some(t), true) => match parse_target(t)? {
            Target::Slim(_) => {
                eprintln!("note: --spawn-node given; ignoring the address in --target {t}");
                Target::Slim("127.0.0.1:0".parse()?)
            }
            Target::Nats { .. } => bail!("--spawn-node only works with a slim target"),
        },
        (None, true) => Target::Slim("127.0.0.1:0".parse()?),
        (None, false) => bail!("--target is required (slim://, nats:// or tls://)"),
    };

    // The in-process node lives on its own runtime, built and dropped outside
    // the load generator's, so its threads can be told apart by name.
    let mut node_rt = None;
    let mut node = None;
    let mut far_node = None;
    let report = match target {
        Target::Slim(mut addr) => {
            let mut sub_addr = match (&a.sub_target, a.cross && !a.spawn_node) {
                (Some(t), true) => match parse_target(t)? {
                    Target::Slim(sa) => sa,
                    Target::Nats { .. } => bail!("--sub-target must be a slim:// node"),
                },
                _ => addr,
            };
            let ids = identities(&a.t, a.spawn_node)?;
            let topic = slim_wire::Name::parse(&a.topic).context("--topic")?;
            let mut cpu = CpuSetup {
                probe: a.t.node_pid.map(CpuProbe::Pid),
                node_threads: None,
            };
            if a.spawn_node {
                let rt = runtime("slim-node", a.node_threads)?;
                let node_id = ids.get("node")?;
                let cfg = slim_actors::NodeConfig {
                    node_id: "loadtest-node".into(),
                    listen: addr,
                    ..Default::default()
                };
                let h = if a.cross {
                    // Two nodes: subscribers on the far one, which the
                    // publishers' node dials; wait for the link.
                    let far = rt
                        .block_on(slim_actors::start(
                            slim_actors::NodeConfig {
                                node_id: "loadtest-far".into(),
                                listen: addr,
                                ..Default::default()
                            },
                            &node_id,
                        ))
                        .context("starting the far in-process node")?;
                    sub_addr = far.local_addr();
                    let mut cfg = cfg;
                    cfg.federation.peers = vec![slim_actors::PeerSpec {
                        node_id: "loadtest-far".into(),
                        addr: sub_addr.to_string(),
                        server_name: "slim-node".into(),
                        expect_spiffe_id: None,
                    }];
                    let h = rt
                        .block_on(slim_actors::start(cfg, &node_id))
                        .context("starting the in-process node")?;
                    let t0 = std::time::Instant::now();
                    while !h
                        .links()
                        .iter()
                        .any(|l| l.state == slim_actors::LinkState::Up)
                    {
                        if t0.elapsed() > Duration::from_secs(10) {
                            bail!("the in-process nodes did not link within 10 s");
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    far_node = Some(Arc::new(far));
                    h
                } else {
                    rt.block_on(slim_actors::start(cfg, &node_id))
                        .context("starting the in-process node")?
                };
                addr = h.local_addr();
                if !a.cross {
                    sub_addr = addr;
                }
                node = Some(Arc::new(h));
                node_rt = Some(rt);
                if a.t.node_pid.is_some() {
                    eprintln!("note: --node-pid ignored with --spawn-node");
                }
                cpu = CpuSetup {
                    probe: Some(CpuProbe::SelfProcess),
                    node_threads: Some("slim-node".into()),
                };
            }
            let target_s = match (a.spawn_node, a.cross) {
                (true, false) => format!("slim://{addr} (in-process node)"),
                (true, true) => {
                    format!("slim://{addr} -> slim://{sub_addr} (in-process nodes, cross-node)")
                }
                (false, false) => format!("slim://{addr}"),
                (false, true) => format!("slim://{addr} -> slim://{sub_addr} (cross-node)"),
            };
            let rt = runtime("loadgen", a.t.client_threads)?;
            let node2 = node.clone();
            let r = rt.block_on(async {
                let server = match a.t.stats_addr {
                    Some(sa) => Some(ServerStats::read(serverstats::Kind::Slim, sa).await?),
                    None => None,
                };
                let control = Control::new(&plan);
                let mut running = slim::setup(
                    addr,
                    sub_addr,
                    &topic,
                    &ids,
                    &plan,
                    &control.ctl(),
                    &run_id(),
                )
                .await?;
                if let (true, Some(n)) = (a.cross, &node2) {
                    // Publish only once the subscription has crossed the link,
                    // so that no message goes to a node without the route.
                    let t0 = std::time::Instant::now();
                    while !n
                        .routes()
                        .iter()
                        .any(|r| r.name == topic.as_str() && !r.remote_peers.is_empty())
                    {
                        if t0.elapsed() > Duration::from_secs(10) {
                            bail!(
                                "the subscription did not reach the publishers' node within 10 s"
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                if let Some(n) = node2 {
                    let far = far_node.clone();
                    running.extra = Some(Box::new(move || {
                        let mut dropped: u64 = n.connections().iter().map(|c| c.dropped).sum();
                        let mut out: Vec<(String, u64)> = Vec::new();
                        if let Some(f) = &far {
                            dropped += f.connections().iter().map(|c| c.dropped).sum::<u64>();
                            let link: u64 = n.links().iter().map(|l| l.drops).sum();
                            out.push(("link_queue_drops".to_owned(), link));
                        }
                        out.push(("node_slow_consumer_drops".to_owned(), dropped));
                        // The datagram size path-MTU discovery reached, per
                        // kind of path (largest; clients, and links if any).
                        let mtus = n.path_mtus().into_iter();
                        let far_mtus = far.iter().flat_map(|f| f.path_mtus());
                        for (kind, _, mtu) in mtus.chain(far_mtus) {
                            let key = format!("path_mtu_{kind}_max");
                            match out.iter_mut().find(|(k, _)| *k == key) {
                                Some((_, v)) => *v = (*v).max(u64::from(mtu)),
                                None => out.push((key, u64::from(mtu))),
                            }
                        }
                        out.into_iter().collect()
                    }));
                }
                harness::run("slim", &target_s, &plan, control, running, &cpu, server).await
            });
            drop(rt);
            r?
        }
        Target::Nats { url, tls } => {
            let tls_cfg = nats_tls(&a.t, tls)?;
            let subject = a.topic.replace('/', ".");
            let cpu = CpuSetup {
                probe: a.t.node_pid.map(CpuProbe::Pid),
                node_threads: None,
            };
            let rt = runtime("loadgen", a.t.client_threads)?;
            let r = rt.block_on(async {
                let server = match a.t.stats_addr {
                    Some(sa) => Some(ServerStats::read(serverstats::Kind::Nats, sa).await?),
                    None => None,
                };
                let control = Control::new(&plan);
                let running = nats::setup(&url, tls_cfg, &subject, &plan, &control.ctl()).await?;
                harness::run("nats", &url, &plan, control, running, &cpu, server).await
            });
            drop(rt);
            r?
        }
    };
    drop(node);
    drop(far_node);
    if let Some(rt) = node_rt {
        rt.shutdown_timeout(Duration::from_secs(1));
    }
    Ok(report)
}
