//! The fixed-rate cross-node stream: a publisher on one node, a subscriber
//! on another, sequence-numbered messages with their send time; loss and
//! duplicates from a bitset, publish → delivery latency from the send time
//! (publisher and subscriber share this process's clock).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bitset::Bits;
use hdrhistogram::Histogram;
use serde::Serialize;
use slim_auth::Identity;
use slim_client::{Client, ClientConfig, ConnState, Event, FLAG_NO_ROUTE_SILENT};
use slim_wire::{Mode, Name};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// Payload: `magic u32 | seq u64 | sent ns since the stream's epoch u64 | padding`.
const HEADER: usize = 20;
/// Probes (before the measured stream) carry this magic; stream messages
/// carry [`MAGIC_STREAM`].
const MAGIC_PROBE: u32 = 0x5052_4f42;
const MAGIC_STREAM: u32 = 0x5354_524d;

mod bitset {
    /// A growable bitset of received sequence numbers.
    #[derive(Debug, Default)]
    pub struct Bits {
        words: Vec<u64>,
    }

    impl Bits {
        /// Sets bit `i`; false if it was already set (a duplicate).
        pub fn insert(&mut self, i: u64) -> bool {
            let w = (i / 64) as usize;
            if w >= self.words.len() {
                self.words.resize(w + 1, 0);
            }
            let mask = 1u64 << (i % 64);
            let fresh = self.words[w] & mask == 0;
            self.words[w] |= mask;
            fresh
        }

        pub fn count_below(&self, n: u64) -> u64 {
            let full = (n / 64) as usize;
            let mut c: u64 = self
                .words
                .iter()
                .take(full)
                .map(|w| u64::from(w.count_ones()))
                .sum();
            if let Some(w) = self.words.get(full) {
                let rem = n % 64;
                if rem > 0 {
                    c += u64::from((w & ((1u64 << rem) - 1)).count_ones());
                }
            }
            c
        }

        /// The first `max` missing sequence numbers below `n`.
        pub fn missing(&self, n: u64, max: usize) -> Vec<u64> {
            (0..n)
                .filter(|i| {
                    self.words
                        .get((i / 64) as usize)
                        .is_none_or(|w| w & (1u64 << (i % 64)) == 0)
                })
                .take(max)
                .collect()
        }
    }
}

/// What the subscriber saw.
#[derive(Debug, Default)]
struct RecvState {
    bits: Bits,
    received: u64,
    duplicates: u64,
    /// Highest sequence number seen + 1.
    high: u64,
    out_of_order: u64,
    malformed: u64,
    probes: u64,
    lat_us: Option<Histogram<u64>>,
}

/// Where and how fast.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    pub pub_node: SocketAddr,
    pub sub_node: SocketAddr,
    pub rate: f64,
    pub size: usize,
    pub topic: Name,
    pub run_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    pub rate_per_s: f64,
    pub size_bytes: usize,
    pub sent: u64,
    pub received_unique: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub malformed: u64,
    /// First missing sequence numbers (at most 20).
    pub first_missing: Vec<u64>,
    pub latency_p50_ms: f64,
    pub latency_p90_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_p999_ms: f64,
    pub latency_max_ms: f64,
    /// Reconnects of the publisher's and the subscriber's connection.
    pub publisher_reconnects: u64,
    pub subscriber_reconnects: u64,
    /// Publishes the node answered with an error (e.g. no route).
    pub publisher_errors: u64,
    pub drain_s: f64,
}

pub struct Stream {
    epoch: Instant,
    plan: StreamPlan,
    publisher: Arc<Client>,
    subscriber: Arc<Client>,
    state: Arc<Mutex<RecvState>>,
    stop_pub: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    pub_errors: Arc<AtomicU64>,
    reconnects: [Arc<AtomicU64>; 2],
    recv_task: Option<JoinHandle<()>>,
    pub_task: Option<JoinHandle<Result<()>>>,
}

/// Counts a connection's transitions back to connected after the first.
fn watch_reconnects(c: &Client, n: Arc<AtomicU64>) {
    let mut st = c.state();
    tokio::spawn(async move {
        let mut was_connected = matches!(*st.borrow(), ConnState::Connected { .. });
        while st.changed().await.is_ok() {
            let now = matches!(*st.borrow(), ConnState::Connected { .. });
            if now && !was_connected {
                n.fetch_add(1, Ordering::Relaxed);
            }
            was_connected = now;
        }
    });
}

fn payload(buf: &mut [u8], magic: u32, seq: u64, ns: u64) {
    buf[..4].copy_from_slice(&magic.to_le_bytes());
    buf[4..12].copy_from_slice(&seq.to_le_bytes());
    buf[12..20].copy_from_slice(&ns.to_le_bytes());
}

impl Stream {
    /// Connects both ends and waits until a probe crosses; the measured
    /// stream starts with [`Stream::start`].
    pub async fn connect(
        plan: StreamPlan,
        pub_id: Identity,
        sub_id: Identity,
        timeout: Duration,
    ) -> Result<Stream> {
        if plan.size < HEADER {
            bail!("stream payload must be at least {HEADER} bytes");
        }
        if plan.rate <= 0.0 {
            bail!("stream rate must be positive");
        }
        let sub_name = Name::new("loadtest", "stream", "sub", Some(&plan.run_id))?;
        let pub_name = Name::new("loadtest", "stream", "pub", Some(&plan.run_id))?;
        let subscriber = Client::connect(ClientConfig::new(plan.sub_node, sub_name, sub_id))
            .await
            .context("stream subscriber: connecting")?;
        subscriber
            .subscribe(&plan.topic)
            .await
            .context("stream subscriber: subscribing")?;
        let publisher = Client::connect(ClientConfig::new(plan.pub_node, pub_name, pub_id))
            .await
            .context("stream publisher: connecting")?;
        let publisher = Arc::new(publisher);
        let subscriber = Arc::new(subscriber);
        let reconnects = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
        watch_reconnects(&publisher, Arc::clone(&reconnects[0]));
        watch_reconnects(&subscriber, Arc::clone(&reconnects[1]));

        let epoch = Instant::now();
        let state = Arc::new(Mutex::new(RecvState {
            lat_us: Some(Histogram::new_with_bounds(1, 600_000_000, 3)?),
            ..Default::default()
        }));
        let recv_task = {
            let sub = Arc::clone(&subscriber);
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(256);
                loop {
                    buf.clear();
                    if sub.recv_many(&mut buf, 256).await == 0 {
                        break;
                    }
                    let now = epoch.elapsed().as_nanos() as u64;
                    let mut st = state.lock().await;
                    for ev in buf.drain(..) {
                        let Event::Message(d) = ev else { continue };
                        let p = &d.payload;
                        if p.len() < HEADER {
                            st.malformed += 1;
                            continue;
                        }
                        let magic = u32::from_le_bytes(p[..4].try_into().expect("4"));
                        let seq = u64::from_le_bytes(p[4..12].try_into().expect("8"));
                        let ns = u64::from_le_bytes(p[12..20].try_into().expect("8"));
                        match magic {
                            MAGIC_PROBE => st.probes += 1,
                            MAGIC_STREAM => {
                                st.received += 1;
                                if !st.bits.insert(seq) {
                                    st.duplicates += 1;
                                    continue;
                                }
                                if seq + 1 < st.high {
                                    st.out_of_order += 1;
                                }
                                st.high = st.high.max(seq + 1);
                                let us = now.saturating_sub(ns) / 1000;
                                if let Some(h) = st.lat_us.as_mut() {
                                    let _ = h.record(us.max(1));
                                }
                            }
                            _ => st.malformed += 1,
                        }
                    }
                }
            })
        };

        // Probe until one arrives: the subscription has reached the
        // publisher's node.
        let t0 = Instant::now();
        let mut buf = vec![0u8; plan.size];
        let mut seq = 0;
        loop {
            payload(&mut buf, MAGIC_PROBE, seq, 0);
            seq += 1;
            publisher
                .publish_with(&plan.topic, Mode::Multicast, FLAG_NO_ROUTE_SILENT, &buf)
                .await
                .context("stream publisher: probe")?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            if state.lock().await.probes > 0 {
                break;
            }
            if t0.elapsed() > timeout {
                bail!(
                    "the stream's subscription did not reach the publisher's node within {timeout:?}"
                );
            }
        }
        // Let stray probes land before the measured stream.
        tokio::time::sleep(Duration::from_millis(100)).await;

        Ok(Stream {
            epoch,
            plan,
            publisher,
            subscriber,
            state,
            stop_pub: Arc::new(AtomicBool::new(false)),
            sent: Arc::new(AtomicU64::new(0)),
            pub_errors: Arc::new(AtomicU64::new(0)),
            reconnects,
            recv_task: Some(recv_task),
            pub_task: None,
        })
    }

    /// Starts publishing at the fixed rate (open loop: a late tick is sent
    /// at once, the schedule does not slip).
    pub fn start(&mut self) {
        let publisher = Arc::clone(&self.publisher);
        let stop = Arc::clone(&self.stop_pub);
        let sent = Arc::clone(&self.sent);
        let errors = Arc::clone(&self.pub_errors);
        let plan = self.plan.clone();
        let epoch = self.epoch;
        self.pub_task = Some(tokio::spawn(async move {
            let period = Duration::from_secs_f64(1.0 / plan.rate);
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut buf = vec![0u8; plan.size];
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                payload(
                    &mut buf,
                    MAGIC_STREAM,
                    seq,
                    epoch.elapsed().as_nanos() as u64,
                );
                publisher
                    .publish_with(&plan.topic, Mode::Multicast, 0, &buf)
                    .await
                    .context("stream publish")?;
                seq += 1;
                sent.store(seq, Ordering::Relaxed);
                // Node errors (no route) come back as events to the
                // publisher; count them without blocking.
                let errs = publisher.take_errors(|_| true).len() as u64;
                if errs > 0 {
                    errors.fetch_add(errs, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }

    /// Messages published so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops publishing, waits up to `drain` for the rest to arrive, closes
    /// both ends and reports.
    pub async fn finish(mut self, drain: Duration) -> Result<StreamReport> {
        self.stop_pub.store(true, Ordering::Relaxed);
        if let Some(t) = self.pub_task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .context("the stream publisher did not stop")?
                .context("stream publisher panicked")??;
        }
        self.publisher.flush().await;
        let sent = self.sent();
        let t0 = Instant::now();
        loop {
            let got = self.state.lock().await.bits.count_below(sent);
            if got >= sent || t0.elapsed() >= drain {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let drain_s = t0.elapsed().as_secs_f64();
        self.publisher.shutdown().await;
        self.subscriber.shutdown().await;
        if let Some(t) = self.recv_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let st = self.state.lock().await;
        let unique = st.bits.count_below(sent);
        let h = st.lat_us.as_ref().expect("histogram");
        let ms = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        Ok(StreamReport {
            rate_per_s: self.plan.rate,
            size_bytes: self.plan.size,
            sent,
            received_unique: unique,
            lost: sent - unique,
            duplicates: st.duplicates,
            out_of_order: st.out_of_order,
            malformed: st.malformed,
            first_missing: st.bits.missing(sent, 20),
            latency_p50_ms: ms(0.5),
            latency_p90_ms: ms(0.9),
            latency_p99_ms: ms(0.99),
            latency_p999_ms: ms(0.999),
            latency_max_ms: if h.is_empty() {
                0.0
            } else {
                h.max() as f64 / 1000.0
            },
            publisher_reconnects: self.reconnects[0].load(Ordering::Relaxed),
            subscriber_reconnects: self.reconnects[1].load(Ordering::Relaxed),
            publisher_errors: self.pub_errors.load(Ordering::Relaxed),
            drain_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::bitset::Bits;

    #[test]
    fn bitset_counts_and_finds_gaps() {
        let mut b = Bits::default();
        for i in [0, 1, 2, 5, 64, 65, 130] {
            assert!(b.insert(i));
        }
        assert!(!b.insert(5));
        assert_eq!(b.count_below(3), 3);
        assert_eq!(b.count_below(6), 4);
        assert_eq!(b.count_below(131), 7);
        assert_eq!(b.count_below(1000), 7);
        assert_eq!(b.missing(8, 10), vec![3, 4, 6, 7]);
    }
}
