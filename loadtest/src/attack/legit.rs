//! The legitimate traffic beside an attack: one requester sending requests
//! on a fixed open-loop schedule to one responder (both SDK clients on the
//! target node), latency measured from each request's scheduled send time
//! and attributed to the phase in which it was scheduled; and, midway
//! through the attack, a new client joining (connect + first subscribe
//! acknowledged).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::backend::{Backend, Topic};
use crate::reqrep::{ReplySink, SeenSet, spawn_echo_responder, spawn_reply_reader};

pub const PHASES: [&str; 3] = ["baseline", "attack", "after"];

#[derive(Debug, Clone)]
pub struct LegitPlan {
    pub rate: f64,
    pub size: usize,
    /// Baseline, attack, after.
    pub phases: [Duration; 3],
    pub topic: Topic,
    /// A second name the joining client subscribes to.
    pub join_topic: Topic,
    /// After the last request, wait at most this long for replies.
    pub drain: Duration,
}

impl LegitPlan {
    fn total(&self) -> u64 {
        (self.phases.iter().map(Duration::as_secs_f64).sum::<f64>() * self.rate) as u64
    }

    /// The phase a request was scheduled in.
    fn phase_of(&self, seq: u64) -> usize {
        let t = seq as f64 / self.rate;
        let b = self.phases[0].as_secs_f64();
        let a = b + self.phases[1].as_secs_f64();
        if t < b {
            0
        } else if t < a {
            1
        } else {
            2
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseStats {
    pub phase: &'static str,
    pub secs: f64,
    pub sent: u64,
    pub replied: u64,
    pub send_errors: u64,
    /// Replies per second to requests scheduled in this phase.
    pub rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LegitReport {
    pub target_rate: f64,
    pub phases: Vec<PhaseStats>,
    /// Connect + first subscribe acknowledged, for a client joining midway
    /// through the attack.
    pub join_ms: Option<f64>,
    pub join_error: Option<String>,
    /// Errors the node reported to the requester (e.g. no route).
    pub node_errors: u64,
    pub first_node_error: Option<String>,
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).context("latency histogram")
}

struct Recorder {
    plan: LegitPlan,
    t0: std::time::Instant,
    hist: Vec<Histogram<u64>>,
    replied: [u64; 3],
    seen: SeenSet,
    errors: u64,
    first_error: Option<String>,
    replies: Arc<AtomicU64>,
}

impl ReplySink for Recorder {
    fn node_error(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }

    fn reply(&mut self, payload: &[u8], now: std::time::Instant) {
        let Some(b) = payload.get(..8) else { return };
        let seq = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        // Out of range or a repeat: only first replies are timed.
        if self.seen.insert(seq) != Some(true) {
            return;
        }
        let at = self.t0 + Duration::from_secs_f64(seq as f64 / self.plan.rate);
        let p = self.plan.phase_of(seq);
        self.hist[p].saturating_record(now.saturating_duration_since(at).as_nanos() as u64 + 1);
        self.replied[p] += 1;
        self.replies.fetch_add(1, Ordering::Relaxed);
    }
}

/// Connects the responder and requester, sends `ready` the schedule's start
/// (an instant shortly after both are up), runs the schedule through all
/// three phases, and reports.
pub async fn run(
    backend: Backend,
    plan: LegitPlan,
    ready: oneshot::Sender<std::time::Instant>,
) -> Result<LegitReport> {
    if !(plan.rate > 0.0 && plan.rate.is_finite()) {
        bail!("--legit-rate must be positive");
    }
    if plan.size < 8 {
        bail!("the legit payload needs at least 8 bytes (the sequence number)");
    }
    let total = plan.total();
    let mut rsp = backend.connect("rsp", 0).await.context("legit responder")?;
    rsp.subscribe(&plan.topic)
        .await
        .context("legit responder")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let responder = spawn_echo_responder(rsp, stop_rx.clone());
    let mut req = backend.connect("req", 0).await.context("legit requester")?;
    req.make_requester().await.context("legit requester")?;
    let tx = req.tx.clone();
    let rx = req.rx;

    let t0 = std::time::Instant::now() + Duration::from_millis(100);
    let replies = Arc::new(AtomicU64::new(0));
    let rec = Recorder {
        plan: plan.clone(),
        t0,
        hist: (0..3).map(|_| histogram()).collect::<Result<_>>()?,
        replied: [0; 3],
        seen: SeenSet::new(total),
        errors: 0,
        first_error: None,
        replies: Arc::clone(&replies),
    };
    let reader = spawn_reply_reader(rx, rec, stop_rx.clone());
    let _ = ready.send(t0);

    // The joiner: midway through the attack phase.
    let join = {
        let backend = backend.clone();
        let topic = plan.join_topic.clone();
        let at = Instant::from_std(t0 + plan.phases[0] + plan.phases[1] / 2);
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let start = Instant::now();
            let joined = tokio::time::timeout(Duration::from_secs(30), async {
                let mut c = backend.connect("join", 0).await?;
                c.subscribe(&topic).await?;
                anyhow::Ok(c)
            })
            .await;
            let took = start.elapsed();
            match joined {
                Ok(Ok(c)) => {
                    c.close().await;
                    Ok(took)
                }
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(_) => Err("not joined within 30 s".to_owned()),
            }
        })
    };

    // The sender: its own thread, sleeping to each scheduled instant (the
    // runtime's timer has millisecond granularity; latency counts from the
    // schedule, so a late send is charged to the node either way).
    let handle = tokio::runtime::Handle::current();
    let topic = plan.topic.clone();
    let rate = plan.rate;
    let size = plan.size;
    let p2 = plan.clone();
    let sender = tokio::task::spawn_blocking(move || {
        let mut sent = [0u64; 3];
        let mut errors = [0u64; 3];
        let mut payload = vec![0u8; size];
        for seq in 0..total {
            let at = t0 + Duration::from_secs_f64(seq as f64 / rate);
            let now = std::time::Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            payload[..8].copy_from_slice(&seq.to_le_bytes());
            let p = p2.phase_of(seq);
            match handle.block_on(tx.request(&topic, &payload)) {
                Ok(()) => sent[p] += 1,
                Err(_) => errors[p] += 1,
            }
        }
        (sent, errors)
    });
    let (sent, send_errors) = sender.await.context("the legit sender panicked")?;
    let expect: u64 = sent.iter().sum();
    let drain_end = Instant::now() + plan.drain;
    while replies.load(Ordering::Relaxed) < expect && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let (rec, _rx) = reader.await.context("the legit reader panicked")?;
    let (rsp, _, _) = responder.await.context("the legit responder panicked")?;
    let join = join.await.context("the joiner panicked")?;
    rsp.close().await;

    let ms =
        |h: &Histogram<u64>, q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1e6);
    let phases = (0..3)
        .map(|p| {
            let secs = plan.phases[p].as_secs_f64();
            let h = &rec.hist[p];
            PhaseStats {
                phase: PHASES[p],
                secs,
                sent: sent[p],
                replied: rec.replied[p],
                send_errors: send_errors[p],
                rate: rec.replied[p] as f64 / secs.max(1e-9),
                p50_ms: ms(h, 0.5),
                p99_ms: ms(h, 0.99),
                max_ms: (!h.is_empty()).then(|| h.max() as f64 / 1e6),
            }
        })
        .collect();
    let (join_ms, join_error) = match join {
        Ok(d) => (Some(d.as_secs_f64() * 1e3), None),
        Err(e) => (None, Some(e)),
    };
    Ok(LegitReport {
        target_rate: plan.rate,
        phases,
        join_ms,
        join_error,
        node_errors: rec.errors,
        first_node_error: rec.first_error,
    })
}
