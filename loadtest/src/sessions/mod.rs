//! `slim-loadtest session` and `slim-loadtest channel`: sequence-numbered
//! messages through a reliable point-to-point session, or through a group
//! channel (MLS by default) to every one of its members, counted with a
//! bitset per receiver: delivered, in order, duplicates, lost.
//!
//! A payload is `seq: u64 BE | padding`. Messages go out at `--rate` per
//! second, or (rate 0) as fast as the session's window lets them. A channel
//! has no flow control of its own (a publisher that outruns its members by
//! more than the sender's retransmission buffer, 1024 messages, loses
//! messages, reported `Lost`); the channel run keeps at most `--window`
//! messages (default 512) published and not yet delivered to every member.

mod report;

pub use report::SessionReport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use slim_client::channel::{
    Channel, ChannelConfig, ChannelEvent, ChannelMember, ChannelOptions, Invitations,
};
use slim_client::session::SessionMux;
use slim_client::session::p2p::{
    MlsIdentity, P2pConfig, P2pEvent, P2pListener, P2pSession, Reliability,
};
use slim_client::{Client, ClientConfig};
use slim_wire::Name;

use crate::reqrep::SeenSet;
use crate::slim::Identities;

/// Bytes of the sequence-number header.
pub const HEADER: usize = 8;

/// A bitset of sequence numbers `0..n`; counts duplicates.
#[derive(Debug, Clone)]
pub struct SeqBits {
    seen: SeenSet,
    n: u64,
    count: u64,
    dups: u64,
    /// Beyond `n`, or a payload too short to carry a number.
    pub malformed: u64,
    next: u64,
    /// Messages whose number was not the one after the previous message's.
    pub out_of_order: u64,
}

impl SeqBits {
    pub fn new(n: u64) -> SeqBits {
        SeqBits {
            seen: SeenSet::new(n),
            n,
            count: 0,
            dups: 0,
            malformed: 0,
            next: 0,
            out_of_order: 0,
        }
    }

    /// Records the message with this payload.
    pub fn observe(&mut self, payload: &[u8]) {
        let Some(head) = payload.get(..HEADER) else {
            self.malformed += 1;
            return;
        };
        let seq = u64::from_be_bytes(head.try_into().expect("8 bytes"));
        let Some(first) = self.seen.insert(seq) else {
            self.malformed += 1;
            return;
        };
        if seq != self.next {
            self.out_of_order += 1;
        }
        self.next = seq + 1;
        if first {
            self.count += 1;
        } else {
            self.dups += 1;
        }
    }

    /// Distinct numbers seen.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn duplicates(&self) -> u64 {
        self.dups
    }

    /// Numbers below `n` never seen.
    pub fn missing(&self) -> u64 {
        self.n - self.count
    }
}

/// A payload of `size` bytes carrying `seq`.
fn payload(seq: u64, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size.max(HEADER)];
    v[..HEADER].copy_from_slice(&seq.to_be_bytes());
    v
}

#[derive(Debug, Clone)]
pub struct SessionPlan {
    pub messages: u64,
    /// Messages per second; 0: as fast as the window (or driver) allows.
    pub rate: f64,
    pub size: usize,
    /// Session: the reliable window. Channel: most messages published
    /// and not yet delivered to every member (default 512).
    pub window: Option<usize>,
    /// End-to-end MLS.
    pub mls: bool,
    /// Channel members besides the moderator (the publisher).
    pub members: usize,
    /// The whole run (setup included) gives up after this long.
    pub timeout: Duration,
    pub run_id: String,
}

fn client_cfg(node: SocketAddr, name: Name, ids: &Identities, path: &str) -> Result<ClientConfig> {
    let mut cfg = ClientConfig::new(node, name, ids.get(path)?);
    cfg.backoff.initial = Duration::from_millis(50);
    cfg.backoff.max = Duration::from_secs(1);
    Ok(cfg)
}

async fn connect(cfg: ClientConfig) -> Result<Client> {
    let (node, name) = (cfg.node, cfg.name.to_string());
    Client::connect(cfg)
        .await
        .with_context(|| format!("{name}: connecting to {node}"))
}

/// Paces sends at `rate` per second (none at 0).
struct Pacer {
    t0: Instant,
    interval: Option<Duration>,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        Pacer {
            t0: Instant::now(),
            interval: (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate)),
        }
    }

    async fn wait(&self, i: u64) {
        if let Some(iv) = self.interval {
            let at = self.t0 + iv.mul_f64(i as f64);
            let now = Instant::now();
            if at > now {
                tokio::time::sleep(at - now).await;
            }
        }
    }
}

fn rate_label(rate: f64) -> String {
    if rate > 0.0 {
        format!("{rate}/s")
    } else {
        "max".into()
    }
}

/// A reliable session from a client of `node` to a client of `rx_node`.
pub async fn run_session(
    node: SocketAddr,
    rx_node: SocketAddr,
    target: String,
    ids: &Identities,
    plan: &SessionPlan,
) -> Result<SessionReport> {
    let id = &plan.run_id;
    let service = Name::parse(&format!("loadtest/session/rx-{id}"))?;
    let rx_name = Name::parse(&format!("loadtest/session/rx-{id}/0"))?;
    let tx_name = Name::parse(&format!("loadtest/session/tx-{id}/0"))?;
    let mut cfg = P2pConfig::default();
    if let (Some(w), Reliability::Reliable(r)) = (plan.window, &mut cfg.reliability) {
        r.window = w;
        r.max_out_of_order = r.max_out_of_order.max(w);
    }
    if plan.mls {
        cfg.mls = Some(MlsIdentity::new(&ids.get("loadtest/session-tx")?)?);
    }
    let mut rx_cfg = cfg.clone();
    if plan.mls {
        rx_cfg.mls = Some(MlsIdentity::new(&ids.get("loadtest/session-rx")?)?);
    }
    let rx_client = connect(client_cfg(rx_node, rx_name, ids, "loadtest/session-rx")?).await?;
    let (rx_mux, _rx_raw) = SessionMux::new(rx_client);
    let mut listener = P2pListener::new(&rx_mux, rx_cfg)?;
    let tx_client = connect(client_cfg(node, tx_name, ids, "loadtest/session-tx")?).await?;
    let (tx_mux, _tx_raw) = SessionMux::new(tx_client);

    let n = plan.messages;
    let receiver = tokio::spawn(async move {
        let mut bits = SeqBits::new(n);
        let mut lost = 0u64;
        let mut end = None;
        let Some(mut s) = listener.accept().await else {
            return (bits, lost, Some("no session arrived".to_owned()), None);
        };
        while let Some(ev) = s.recv().await {
            match ev {
                P2pEvent::Message { payload, .. } => bits.observe(&payload),
                P2pEvent::Lost { seqs } => lost += seqs.len() as u64,
                P2pEvent::PeerClosed { sent } => {
                    if sent != n {
                        end = Some(format!("the sender closed after {sent} messages"));
                    }
                    break;
                }
                P2pEvent::Failed(e) => {
                    end = Some(format!("receiver: session failed: {e}"));
                    break;
                }
                P2pEvent::Rejected { seq, reason } => {
                    end = Some(format!("message {seq} rejected: {reason}"));
                }
                P2pEvent::DeliveryFailed { .. } => {}
            }
        }
        (bits, lost, end, Some(Instant::now()))
    });

    // The receiver's name may take a moment to reach another node.
    let deadline = Instant::now() + Duration::from_secs(10);
    let session = loop {
        match P2pSession::open(&tx_mux, &service, cfg.clone()).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => bail!("opening a session to {service}: {e}"),
        }
    };
    let t0 = Instant::now();
    let size = plan.size;
    let pacer = Pacer::new(plan.rate);
    let mut notes = Vec::new();
    for i in 0..n {
        pacer.wait(i).await;
        if let Err(e) = session.send(payload(i, size)).await {
            notes.push(format!("send {i}: {e}"));
            break;
        }
    }
    if let Err(e) = session.close().await {
        notes.push(format!("close: {e}"));
    }
    let stats = session.stats().await.unwrap_or_default();
    let (bits, lost, end, done) =
        match tokio::time::timeout(Duration::from_secs(30), receiver).await {
            Ok(r) => r.context("receiver task")?,
            Err(_) => bail!("the receiver did not finish within 30 s of the close"),
        };
    notes.extend(end);
    let elapsed = done.unwrap_or_else(Instant::now) - t0;
    drop((session, tx_mux, rx_mux));
    Ok(report(
        "session",
        target,
        format!(
            "session {} {}B{} {}",
            n,
            size,
            if plan.mls { " mls" } else { "" },
            rate_label(plan.rate)
        ),
        plan,
        &[(bits, lost)],
        stats.sender.retransmitted,
        None,
        elapsed,
        notes,
    ))
}

#[allow(clippy::too_many_arguments)]
fn report(
    kind: &'static str,
    target: String,
    scenario: String,
    plan: &SessionPlan,
    receivers: &[(SeqBits, u64)],
    retransmissions: u64,
    rtx_requests: Option<u64>,
    elapsed: Duration,
    notes: Vec<String>,
) -> SessionReport {
    let sum = |f: &dyn Fn(&SeqBits) -> u64| receivers.iter().map(|(b, _)| f(b)).sum::<u64>();
    let delivered = sum(&|b| b.count());
    let out_of_order = sum(&|b| b.out_of_order);
    let duplicates = sum(&|b| b.duplicates());
    let missing = sum(&|b| b.missing());
    let malformed = sum(&|b| b.malformed);
    let lost = receivers.iter().map(|(_, l)| l).sum::<u64>();
    let mut notes = notes;
    if malformed > 0 {
        notes.push(format!("{malformed} malformed payloads"));
    }
    let complete = missing == 0 && duplicates == 0 && out_of_order == 0 && malformed == 0;
    let secs = elapsed.as_secs_f64().max(1e-9);
    SessionReport {
        kind,
        system: "slim",
        target,
        scenario,
        messages: plan.messages,
        receivers: receivers.len(),
        size_bytes: plan.size.max(HEADER),
        rate_per_s: plan.rate,
        mls: plan.mls,
        delivered,
        complete,
        in_order: out_of_order == 0,
        out_of_order,
        duplicates,
        missing,
        lost,
        retransmissions,
        rtx_requests,
        elapsed_s: secs,
        msgs_per_s: (delivered as f64 / receivers.len().max(1) as f64) / secs,
        notes,
    }
}

/// A channel whose moderator publishes to `plan.members` members, all on
/// `node`.
pub async fn run_channel(
    node: SocketAddr,
    target: String,
    ids: &Identities,
    plan: &SessionPlan,
) -> Result<SessionReport> {
    if plan.members == 0 {
        bail!("--members must be at least 1");
    }
    let id = &plan.run_id;
    let chan = Name::parse(&format!("loadtest/channel/c-{id}"))?;
    let config = ChannelConfig {
        mls: plan.mls,
        ..ChannelConfig::default()
    };
    let opts = |path: &str| -> Result<ChannelOptions> {
        let mls = if plan.mls {
            Some(MlsIdentity::new(&ids.get(path)?)?)
        } else {
            None
        };
        Ok(ChannelOptions::new(config.clone(), mls))
    };
    let mod_name = Name::parse(&format!("loadtest/channel/mod-{id}/0"))?;
    let (mod_mux, _mod_raw) = SessionMux::new(
        connect(client_cfg(
            node,
            mod_name,
            ids,
            "loadtest/channel-moderator",
        )?)
        .await?,
    );
    let mut moderator = Channel::create(&mod_mux, &chan, opts("loadtest/channel-moderator")?)
        .await
        .context("creating the channel")?;
    let mut joins = Vec::new();
    let mut muxes = Vec::new();
    for i in 0..plan.members {
        let path = format!("loadtest/channel-member-{i}");
        let mn = format!("loadtest/channel/m{i}-{id}/0");
        let (mux, raw) =
            SessionMux::new(connect(client_cfg(node, Name::parse(&mn)?, ids, &path)?).await?);
        let inv = Invitations::listen(&mux, 16)?;
        joins.push(inv.auto_accept(opts(&path)?));
        moderator.invite(&mn).await.context("inviting")?;
        muxes.push((mux, raw));
    }
    let n = plan.messages;
    let mut collectors = Vec::new();
    let mut counts = Vec::new();
    for (i, rx) in joins.iter_mut().enumerate() {
        let m = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .with_context(|| format!("member {i} did not join within 20 s"))?
            .context("invitation listener ended")??;
        let count = Arc::new(AtomicU64::new(0));
        collectors.push(collect(m, n, Arc::clone(&count)));
        counts.push(count);
    }
    let window = plan.window.unwrap_or(512) as u64;
    let mut admitted = 0;
    while admitted < plan.members {
        match tokio::time::timeout(Duration::from_secs(20), moderator.recv()).await {
            Ok(Some(ChannelEvent::MemberJoined { .. })) => admitted += 1,
            Ok(Some(_)) => {}
            _ => bail!("the admissions did not complete within 20 s"),
        }
    }

    let t0 = Instant::now();
    let pacer = Pacer::new(plan.rate);
    let mut notes = Vec::new();
    for i in 0..n {
        pacer.wait(i).await;
        // The slowest member's progress bounds how far ahead we publish.
        let slowest = || counts.iter().map(|c| c.load(Ordering::Relaxed)).min();
        let since = Instant::now();
        while slowest().is_some_and(|d| i >= d + window) {
            if since.elapsed() > Duration::from_secs(10) {
                notes.push(format!("a member made no progress for 10 s at message {i}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        while moderator.try_recv().is_some() {}
        if let Err(e) = moderator.publish(&payload(i, plan.size)).await {
            notes.push(format!("publish {i}: {e}"));
            break;
        }
    }
    // Every member has everything once its collector stops; close after.
    let mut seen = Vec::new();
    let mut done = t0;
    let mut rtx_requests = 0;
    for c in collectors {
        let (bits, lost, end, at, requests) = c.await.context("member task")?;
        notes.extend(end);
        done = done.max(at);
        rtx_requests += requests;
        seen.push((bits, lost));
    }
    let elapsed = done - t0;
    let st = moderator.stats().await.ok();
    let _ = moderator.close("loadtest done").await;
    drop(muxes);
    Ok(report(
        "channel",
        target,
        format!(
            "channel {}x{} {}B{} {}",
            plan.members,
            n,
            plan.size.max(HEADER),
            if plan.mls { " mls" } else { "" },
            rate_label(plan.rate)
        ),
        plan,
        &seen,
        st.map(|s| s.retransmitted).unwrap_or(0),
        Some(rtx_requests),
        elapsed,
        notes,
    ))
}

/// A member's collector: ends when it has all `n` messages, when the
/// channel ends, or after 10 s without progress.
type Collected = (SeqBits, u64, Option<String>, Instant, u64);

fn collect(
    mut m: ChannelMember,
    n: u64,
    count: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Collected> {
    tokio::spawn(async move {
        let mut bits = SeqBits::new(n);
        let mut lost = 0u64;
        let mut end = None;
        while bits.count() < n {
            match tokio::time::timeout(Duration::from_secs(10), m.recv()).await {
                Ok(Some(ChannelEvent::Message { payload, .. })) => {
                    bits.observe(&payload);
                    count.store(bits.count(), Ordering::Relaxed);
                }
                Ok(Some(ChannelEvent::Lost { seqs, .. })) => lost += seqs.len() as u64,
                Ok(Some(ChannelEvent::ChannelClosed { reason })) => {
                    end = Some(format!("channel closed early: {reason}"));
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    end = Some("member's channel ended".into());
                    break;
                }
                Err(_) => {
                    end = Some(format!(
                        "a member stalled at {} of {n} for 10 s",
                        bits.count()
                    ));
                    break;
                }
            }
        }
        let at = Instant::now();
        let requests = m.stats().await.map(|s| s.rtx_requests).unwrap_or(0);
        // Keep reading so the driver is not stalled until the close.
        tokio::spawn(async move { while m.recv().await.is_some() {} });
        (bits, lost, end, at, requests)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_count_order_and_duplicates() {
        let mut b = SeqBits::new(10);
        for s in [0, 1, 2, 2, 4, 3] {
            b.observe(&payload(s, 16));
        }
        b.observe(&[1, 2]);
        b.observe(&payload(99, 8));
        assert_eq!(b.count(), 5);
        assert_eq!(b.duplicates(), 1);
        assert_eq!(b.missing(), 5);
        assert_eq!(b.malformed, 2);
        // 2 after 2, 4 after 2, 3 after 4.
        assert_eq!(b.out_of_order, 3);
    }
}
