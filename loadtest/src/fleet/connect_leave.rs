//! One client connects to node 0 and subscribes to one name, the fleet
//! settles, the client leaves, the fleet settles: what that cost the whole
//! fleet in link bytes and node CPU, net of the idle background, and how long
//! each half took to settle. Repeated; medians reported.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use slim_auth::Identity;
use slim_client::{Client, ClientConfig};
use slim_wire::Name;

use super::cluster::Cluster;
use super::probe::{self, Idle};

#[derive(Debug, Clone)]
pub struct ConnectLeavePlan {
    pub repeats: usize,
    pub poll: Duration,
    pub quiet_for: Duration,
    /// Longest wait for one half to settle.
    pub settle_max: Duration,
    pub run_id: String,
}

/// One connect + leave.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Fleet-wide link bytes (read side), net of the idle background.
    pub bytes: f64,
    pub bytes_connect: f64,
    pub bytes_leave: f64,
    /// Fleet-wide node CPU seconds, net of the idle background.
    pub cpu_s: f64,
    pub cpu_connect_s: f64,
    pub cpu_leave_s: f64,
    /// Data-stream bytes written (nothing is published: ~0 expected).
    pub bytes_out_data: f64,
    /// From the connect starting / the close starting until the last
    /// reading that still showed interest traffic.
    pub settle_connect_s: f64,
    pub settle_leave_s: f64,
    /// The measured window (connect start → quiet confirmed after leave).
    pub window_s: f64,
    /// Sum over nodes of interest entries while the client was connected,
    /// above the baseline.
    pub entries_while_connected: f64,
    /// Every node's registry names (routes) back to the baseline within 3 s
    /// of the leave (interest entries keep the leave's tombstones 30 s).
    pub clean_after: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectLeaveReport {
    pub events: Vec<Event>,
    pub median: Event,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn medians(ev: &[Event]) -> Event {
    let m = |f: fn(&Event) -> f64| median(ev.iter().map(f).collect());
    Event {
        bytes: m(|e| e.bytes),
        bytes_connect: m(|e| e.bytes_connect),
        bytes_leave: m(|e| e.bytes_leave),
        cpu_s: m(|e| e.cpu_s),
        cpu_connect_s: m(|e| e.cpu_connect_s),
        cpu_leave_s: m(|e| e.cpu_leave_s),
        bytes_out_data: m(|e| e.bytes_out_data),
        settle_connect_s: m(|e| e.settle_connect_s),
        settle_leave_s: m(|e| e.settle_leave_s),
        window_s: m(|e| e.window_s),
        entries_while_connected: m(|e| e.entries_while_connected),
        clean_after: ev.iter().all(|e| e.clean_after),
    }
}

pub async fn run(
    cluster: &mut Cluster,
    idle: &Idle,
    plan: &ConnectLeavePlan,
    identity: Identity,
) -> Result<ConnectLeaveReport> {
    let mut events = Vec::with_capacity(plan.repeats);
    for rep in 0..plan.repeats {
        cluster.check_alive()?;
        let baseline = probe::sample(cluster).await?;
        let name = Name::new(
            "loadtest",
            "cl",
            "agent",
            Some(&format!("{}-{rep}", plan.run_id)),
        )?;
        let topic = Name::new(
            "loadtest",
            "cl",
            &format!("topic-{}-{rep}", plan.run_id),
            None,
        )?;

        let t_connect = Instant::now();
        let client = Client::connect(ClientConfig::new(
            cluster.nodes[0].addr,
            name,
            identity.clone(),
        ))
        .await
        .context("connect-leave: connecting")?;
        client
            .subscribe(&topic)
            .await
            .context("connect-leave: subscribing")?;
        let q1 = probe::wait_quiet(
            cluster,
            idle,
            t_connect,
            plan.quiet_for,
            plan.poll,
            plan.settle_max,
        )
        .await
        .context("after the connect")?;
        let mid = q1.last;

        let t_leave = Instant::now();
        client.close().await;
        let q2 = probe::wait_quiet(
            cluster,
            idle,
            t_leave,
            plan.quiet_for,
            plan.poll,
            plan.settle_max,
        )
        .await
        .context("after the leave")?;
        let end = q2.last;
        let (clean_at, _) = probe::wait_baseline(
            cluster,
            &baseline,
            Instant::now() + Duration::from_secs(3),
            plan.poll,
        )
        .await?;

        let (bc, cc) = idle.net(
            mid.bytes() - baseline.bytes(),
            mid.cpu() - baseline.cpu(),
            mid.at - baseline.at,
        );
        let (bl, cl) = idle.net(
            end.bytes() - mid.bytes(),
            end.cpu() - mid.cpu(),
            end.at - mid.at,
        );
        let ev = Event {
            bytes: bc + bl,
            bytes_connect: bc,
            bytes_leave: bl,
            cpu_s: cc + cl,
            cpu_connect_s: cc,
            cpu_leave_s: cl,
            bytes_out_data: end.sum(|n| n.link_bytes_out) - baseline.sum(|n| n.link_bytes_out),
            settle_connect_s: q1
                .settled_at
                .saturating_duration_since(t_connect)
                .as_secs_f64(),
            settle_leave_s: q2
                .settled_at
                .saturating_duration_since(t_leave)
                .as_secs_f64(),
            window_s: (end.at - baseline.at).as_secs_f64(),
            entries_while_connected: mid.entries() - baseline.entries(),
            clean_after: clean_at.is_some(),
        };
        eprintln!(
            "  connect+leave #{}: {:.1} kB ({:.1} connect, {:.1} leave), {:.2} CPU-s, settle {:.2} s / {:.2} s{}",
            rep + 1,
            ev.bytes / 1e3,
            ev.bytes_connect / 1e3,
            ev.bytes_leave / 1e3,
            ev.cpu_s,
            ev.settle_connect_s,
            ev.settle_leave_s,
            if ev.clean_after {
                ""
            } else {
                ", routes NOT back to baseline"
            }
        );
        events.push(ev);
    }
    if events.is_empty() {
        bail!("no repeats");
    }
    let median = medians(&events);
    Ok(ConnectLeaveReport { events, median })
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
