//! The run logic behind each subcommand: checks its arguments, builds the
//! plan, runs it on a runtime of its own and prints the report.

pub(crate) mod throughput;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::backend::{Backend, Topic};
use crate::cli::{ConnectionsArgs, FleetArgs, LatencyArgs, SessionArgs};
use crate::procstat::CpuProbe;
use crate::target::{Target, backend, identities, parse_target};
use crate::util::{run_id, runtime};
use crate::{plot, sessions};

/// Prints a report as a table or a JSON line (and a summary on stderr).
pub(crate) fn emit<R: Serialize>(json: bool, r: &R, table: String, one_line: String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        eprintln!("{one_line}");
    } else {
        print!("{table}");
    }
    Ok(())
}

pub(crate) fn write_plot<R: Serialize>(path: &Option<PathBuf>, reports: &[R]) -> Result<()> {
    if let Some(p) = path {
        let vals = reports
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()?;
        plot::write(p, &vals)?;
        eprintln!("chart written to {}", p.display());
    }
    Ok(())
}

pub(crate) fn latency(a: LatencyArgs) -> Result<()> {
    let (backend, mut target, _) = backend(&a.t)?;
    let rsp_backend = match (&a.responder_target, &backend) {
        (None, _) => None,
        (Some(r), Backend::Slim { ids, run_id, .. }) => {
            let Target::Slim(addr) = parse_target(r)? else {
                bail!("--responder-target must be a slim:// node");
            };
            target = format!("{target} -> slim://{addr}");
            Some(Backend::Slim {
                addr,
                ids: Arc::clone(ids),
                run_id: run_id.clone(),
            })
        }
        (Some(_), Backend::Nats { .. }) => bail!("--responder-target is for slim:// targets"),
    };
    let plan = crate::latency::LatencyPlan {
        rate: a.rate,
        duration: a.duration,
        warmup: a.warmup,
        timeout: a.timeout,
        size: a.size,
        topic: Topic::new(&a.topic).context("--topic")?,
        spin: Duration::from_micros(a.spin_us),
    };
    let rt = runtime("loadgen", a.t.client_threads)?;
    let cpu = a.t.node_pid.map(CpuProbe::Pid);
    let rsp = rsp_backend.as_ref().unwrap_or(&backend);
    let r = rt.block_on(crate::latency::run(&backend, rsp, &target, &plan, cpu))?;
    drop(rt);
    emit(a.t.json, &r, r.table(), r.one_line())?;
    write_plot(&a.t.plot, &[r])
}

pub(crate) fn connections(a: ConnectionsArgs) -> Result<()> {
    let (backend, target, kind) = backend(&a.t)?;
    let plan = crate::connections::ConnPlan {
        conns: a.conns,
        subs_per_conn: a.subs,
        concurrency: a.concurrency,
        settle: a.settle,
        prefix: a.prefix.clone(),
        run_id: run_id(),
    };
    let stats = a.t.stats_addr.zip(kind).map(|(addr, k)| (k, addr));
    let rt = runtime("loadgen", a.t.client_threads)?;
    let probe = a.t.node_pid.map(CpuProbe::Pid);
    let r = rt.block_on(crate::connections::run(
        &backend, &target, &plan, probe, stats,
    ))?;
    drop(rt);
    emit(a.t.json, &r, r.table(), r.one_line())?;
    write_plot(&a.t.plot, &[r])
}

pub(crate) fn session_or_channel(a: SessionArgs, channel: bool) -> Result<()> {
    if a.size < sessions::HEADER {
        bail!(
            "--size must be at least {} (the sequence number)",
            sessions::HEADER
        );
    }
    if a.messages == 0 {
        bail!("--messages must be at least 1");
    }
    if !(a.rate >= 0.0 && a.rate.is_finite()) {
        bail!("--rate must be 0 (as fast as allowed) or positive");
    }
    if channel && (a.rx_target.is_some() || a.window.is_some() || a.mls) {
        bail!(
            "--rx-target, --window and --mls are for `session` (a channel is MLS unless --no-mls)"
        );
    }
    if !channel && (a.no_mls || a.members != 3) {
        bail!("--no-mls and --members are for `channel`");
    }
    let plan = sessions::SessionPlan {
        messages: a.messages,
        rate: a.rate,
        size: a.size,
        window: a.window,
        mls: if channel { !a.no_mls } else { a.mls },
        members: a.members,
        timeout: a.timeout,
        run_id: run_id(),
    };
    let ids = identities(&a.t, a.spawn_node)?;
    let mut node_rt = None;
    let mut node = None;
    let (addr, rx_addr, target) = if a.spawn_node {
        if a.t.target.is_some() || a.rx_target.is_some() {
            bail!("--spawn-node runs its own node: no --target or --rx-target");
        }
        let rt = runtime("slim-node", None)?;
        let cfg = slim_actors::NodeConfig {
            node_id: "loadtest-node".into(),
            listen: "127.0.0.1:0".parse()?,
            ..Default::default()
        };
        let h = rt
            .block_on(slim_actors::start(cfg, &ids.get("node")?))
            .context("starting the in-process node")?;
        let addr = h.local_addr();
        node = Some(h);
        node_rt = Some(rt);
        (addr, addr, format!("slim://{addr} (in-process node)"))
    } else {
        let Some(t) = &a.t.target else {
            bail!("--target slim://HOST:PORT (or --spawn-node) is required");
        };
        let Target::Slim(addr) = parse_target(t)? else {
            bail!("session and channel runs are SLIM only: --target slim://HOST:PORT");
        };
        match &a.rx_target {
            Some(r) => {
                let Target::Slim(rx) = parse_target(r)? else {
                    bail!("--rx-target must be a slim:// node");
                };
                (addr, rx, format!("slim://{addr} -> slim://{rx}"))
            }
            None => (addr, addr, format!("slim://{addr}")),
        }
    };
    let rt = runtime("loadgen", a.t.client_threads)?;
    let r = rt.block_on(async {
        let run = async {
            if channel {
                sessions::run_channel(addr, target, &ids, &plan).await
            } else {
                sessions::run_session(addr, rx_addr, target, &ids, &plan).await
            }
        };
        match tokio::time::timeout(plan.timeout, run).await {
            Ok(r) => r,
            Err(_) => bail!(
                "the run did not finish within {:?} (--timeout)",
                plan.timeout
            ),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    drop(node);
    if let Some(rt) = node_rt {
        rt.shutdown_timeout(Duration::from_secs(1));
    }
    let r = r?;
    // Both: the table (or with --json the JSON line), then the summary line.
    emit(a.t.json, &r, r.table(), r.one_line())?;
    if !a.t.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    if !r.complete {
        bail!("incomplete: {}", r.one_line());
    }
    Ok(())
}

pub(crate) fn fleet(a: FleetArgs) -> Result<()> {
    if a.nodes.is_empty() || a.nodes.contains(&0) {
        bail!("--nodes needs sizes of at least 1");
    }
    if a.mode == crate::fleet::FleetMode::Churn {
        if a.churn_rate <= 0.0 || a.stream_rate <= 0.0 {
            bail!("--churn-rate and --stream-rate must be positive");
        }
        if a.nodes.contains(&1) {
            bail!("churn needs at least 2 nodes (the stream crosses a link)");
        }
    }
    let run_id = run_id();
    let plan = crate::fleet::FleetPlan {
        mode: a.mode,
        sizes: a.nodes,
        bin_dir: match a.bin_dir {
            Some(d) => d,
            None => crate::fleet::cluster::default_bin_dir()?,
        },
        keep_dir: a.keep_dir,
        log_level: a.log_level,
        start_timeout: a.start_timeout,
        idle_window: a.idle,
        poll: a.poll,
        quiet_for: a.quiet,
        settle_max: a.settle_max,
        repeats: a.repeats,
        churn: crate::fleet::churn::ChurnPlan {
            rate: a.churn_rate,
            duration: a.duration,
            stay_max: a.stay_max,
            topics: a.topics,
            max_in_flight: a.max_in_flight,
            connect_timeout: a.connect_timeout,
            stream_rate: a.stream_rate,
            stream_size: a.stream_size,
            pub_node: a.stream_pub_node,
            sub_node: a.stream_sub_node.unwrap_or(usize::MAX),
            idle_window: a.idle,
            poll: a.poll,
            stale_after: a.stale_after,
            stale_grace: a.stale_grace,
            memory_after: a.memory_after,
            seed: a.seed,
            run_id: run_id.clone(),
        },
        max_wall: a.max_wall,
        json: a.json,
        run_id,
    };
    let rt = runtime("loadgen", a.client_threads)?;
    let r = rt.block_on(crate::fleet::run(plan));
    rt.shutdown_timeout(Duration::from_secs(2));
    r.map(|_| ())
}
