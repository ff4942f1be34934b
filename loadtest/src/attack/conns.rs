//! Attacks made of real QUIC connections, driven with quinn directly (not
//! the SDK, which would finish every step properly): handshakes the node
//! must refuse, clients that never say hello, and clients that stall inside
//! a frame.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use quinn::crypto::rustls::QuicClientConfig;
use serde::Serialize;
use slim_auth::Identity;
use slim_wire::{Frame, FrameKind, Hello, Limits, Name, PROTOCOL_VERSION, codec};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::stats::Summary;

/// The client TLS + transport configuration of attack connections. The
/// keep-alive keeps an idle connection from timing out on our side, so that
/// whatever closes it is the node.
pub fn quic_config(identity: &Identity) -> Result<(quinn::ClientConfig, Arc<QuicClientConfig>)> {
    let tls = slim_auth::client_config(
        identity,
        &[slim_auth::ALPN_SLIM],
        slim_auth::ServerMatch::Any,
    )
    .context("client TLS configuration")?;
    let quic = Arc::new(QuicClientConfig::try_from(Arc::new(tls)).context("QUIC TLS")?);
    let mut c = quinn::ClientConfig::new(quic.clone());
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(60)).context("idle timeout")?,
    ));
    c.transport_config(Arc::new(t));
    Ok((c, quic))
}

/// What is common to the connection attacks.
pub struct ConnPlan {
    pub target: SocketAddr,
    pub server_name: String,
    pub ips: Vec<IpAddr>,
    /// Connection attempts started per second.
    pub rate: f64,
    pub count: usize,
    /// Connection attempts in progress at most.
    pub concurrency: usize,
    pub config: quinn::ClientConfig,
    /// Stop attacking (and close whatever is still open) at this instant.
    pub deadline: Instant,
    pub run_id: String,
}

/// Client endpoints spread over the attack addresses (many connections
/// each: an endpoint multiplexes them by connection ID).
fn endpoints(p: &ConnPlan) -> Result<Vec<quinn::Endpoint>> {
    let n = p.ips.len().max(8);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let ip = p.ips[i % p.ips.len()];
        let mut ep = quinn::Endpoint::client(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding a QUIC client endpoint on {ip}"))?;
        ep.set_default_client_config(p.config.clone());
        out.push(ep);
    }
    Ok(out)
}

/// How one attack connection ended.
#[derive(Debug)]
struct Outcome {
    /// Connected (QUIC + TLS complete from the client's view).
    connected: bool,
    /// Closed by the node (or refused), with the time from the attempt's
    /// start (or from the stall, for stalled frames) and the reason.
    closed: Option<(Duration, String)>,
    /// Something else went wrong on our side.
    error: Option<String>,
}

/// A close reason without the variable parts, for counting.
fn reason(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => format!(
            "application close {}: {}",
            c.error_code,
            String::from_utf8_lossy(&c.reason)
        ),
        quinn::ConnectionError::ConnectionClosed(c) => {
            format!(
                "transport close {}: {}",
                c.error_code,
                String::from_utf8_lossy(&c.reason)
            )
        }
        other => other.to_string(),
    }
}

/// Runs `one` for `count` connections at `rate`/s (at most `concurrency`
/// of them still connecting), on endpoints round-robin.
async fn drive<F, Fut>(p: &ConnPlan, one: F) -> Result<(Vec<Outcome>, Duration)>
where
    F: Fn(usize, quinn::Endpoint, Arc<Semaphore>) -> Fut,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let eps = endpoints(p)?;
    let sem = Arc::new(Semaphore::new(p.concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(p.count);
    for i in 0..p.count {
        let at = start + Duration::from_secs_f64(i as f64 / p.rate);
        if at >= p.deadline {
            break;
        }
        tokio::time::sleep_until(at).await;
        tasks.push(tokio::spawn(one(
            i,
            eps[i % eps.len()].clone(),
            Arc::clone(&sem),
        )));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.context("an attack connection task panicked")?);
    }
    let elapsed = start.elapsed();
    for ep in &eps {
        ep.close(0u32.into(), b"attack over");
    }
    Ok((out, elapsed))
}

#[derive(Debug, Serialize)]
pub struct ConnReport {
    pub attempted: usize,
    /// QUIC + TLS completed from the client's side.
    pub connected: usize,
    /// Closed (or refused) by the node before the attack ended.
    pub closed_by_node: usize,
    /// Connected and still open when the attack ended (we closed them).
    pub still_open: usize,
    /// Neither connected nor refused in time (refused-handshakes: within
    /// [`REFUSAL_WAIT`] of the attempt; otherwise by the attack's end).
    pub unanswered: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    /// Seconds from the attempt's start (stalled-frames: from the stall) to
    /// the node's close.
    pub close_after_s: Option<Summary>,
    /// Close reasons and how many connections each.
    pub reasons: BTreeMap<String, usize>,
    /// From the first attempt to the last outcome, and the node's closes
    /// (refusals) per second over that time.
    pub elapsed_s: f64,
    pub closed_per_s: f64,
}

fn report(outcomes: Vec<Outcome>, elapsed: Duration) -> ConnReport {
    let mut reasons = BTreeMap::new();
    let mut times = Vec::new();
    let (mut connected, mut errors, mut first_error) = (0, 0, None);
    let (mut still_open, mut unanswered) = (0, 0);
    for o in &outcomes {
        connected += o.connected as usize;
        match (&o.closed, &o.error) {
            (Some((t, r)), _) => {
                times.push(t.as_secs_f64());
                *reasons.entry(r.clone()).or_insert(0) += 1;
            }
            (None, Some(e)) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.clone());
            }
            (None, None) if o.connected => still_open += 1,
            (None, None) => unanswered += 1,
        }
    }
    let elapsed_s = elapsed.as_secs_f64();
    ConnReport {
        attempted: outcomes.len(),
        connected,
        closed_by_node: times.len(),
        still_open,
        unanswered,
        errors,
        first_error,
        close_after_s: Summary::of(&mut times),
        closed_per_s: reasons.values().sum::<usize>() as f64 / elapsed_s.max(1e-9),
        reasons,
        elapsed_s,
    }
}

/// Waits for the node to close `conn` until `deadline`; then closes it.
async fn await_close(conn: &quinn::Connection, since: Instant, deadline: Instant) -> Outcome {
    tokio::select! {
        e = conn.closed() => Outcome {
            connected: true,
            closed: Some((since.elapsed(), reason(&e))),
            error: None,
        },
        _ = tokio::time::sleep_until(deadline) => {
            conn.close(0u32.into(), b"attack over");
            Outcome { connected: true, closed: None, error: None }
        }
    }
}

/// A refused-handshakes attempt started before the attack's end is
/// followed this long for the node's answer (even past the end): how long
/// refusals take is what is measured.
pub const REFUSAL_WAIT: Duration = Duration::from_secs(15);

/// Clients with a certificate the node does not trust: each is refused
/// (during the handshake, or right after it from the client's view, since
/// in TLS 1.3 the client's certificate is checked after the server finished).
pub async fn refused(p: &ConnPlan) -> Result<ConnReport> {
    let server = p.server_name.clone();
    let target = p.target;
    let (o, el) = drive(p, move |_, ep, sem| {
        let server = server.clone();
        async move {
            let start = Instant::now();
            let deadline = start + REFUSAL_WAIT;
            let permit = sem.acquire_owned().await;
            let connecting = match ep.connect(target, &server) {
                Ok(c) => c,
                Err(e) => {
                    return Outcome {
                        connected: false,
                        closed: None,
                        error: Some(format!("connect: {e}")),
                    };
                }
            };
            let r = tokio::time::timeout_at(deadline, connecting).await;
            drop(permit);
            match r {
                Err(_) => Outcome {
                    connected: false,
                    closed: None,
                    error: None,
                },
                Ok(Err(e)) => Outcome {
                    connected: false,
                    closed: Some((start.elapsed(), reason(&e))),
                    error: None,
                },
                Ok(Ok(conn)) => await_close(&conn, start, deadline).await,
            }
        }
    })
    .await?;
    Ok(report(o, el))
}

/// Valid clients that connect and open their stream but never send a hello
/// (QUIC makes a stream visible to the peer with its first byte, so the
/// node sees a connection with nothing on it).
pub async fn silent(p: &ConnPlan) -> Result<ConnReport> {
    let server = p.server_name.clone();
    let target = p.target;
    let deadline = p.deadline;
    let (o, el) = drive(p, move |_, ep, sem| {
        let server = server.clone();
        async move {
            let start = Instant::now();
            let conn = match connect(&ep, target, &server, sem, deadline).await {
                Ok(c) => c,
                Err(o) => return o,
            };
            let _streams = conn.open_bi().await;
            await_close(&conn, start, deadline).await
        }
    })
    .await?;
    Ok(report(o, el))
}

async fn connect(
    ep: &quinn::Endpoint,
    target: SocketAddr,
    server: &str,
    sem: Arc<Semaphore>,
    deadline: Instant,
) -> Result<quinn::Connection, Outcome> {
    let start = Instant::now();
    let _permit = sem.acquire_owned().await;
    let err = |e: String| Outcome {
        connected: false,
        closed: None,
        error: Some(e),
    };
    let connecting = ep
        .connect(target, server)
        .map_err(|e| err(format!("connect: {e}")))?;
    match tokio::time::timeout_at(deadline, connecting).await {
        Err(_) => Err(Outcome {
            connected: false,
            closed: None,
            error: None,
        }),
        Ok(Err(e)) => Err(Outcome {
            connected: false,
            closed: Some((start.elapsed(), reason(&e))),
            error: None,
        }),
        Ok(Ok(c)) => Ok(c),
    }
}

/// Bytes of the stalled frame left unsent after the first write.
const HELD_BACK: usize = 1000;
/// Trickle: this many bytes...
const TRICKLE: usize = 16;
/// ...this often.
const TRICKLE_EVERY: Duration = Duration::from_secs(1);

/// The stalled frame: a header declaring the largest frame the node accepts
/// (`max_frame`), as a publish, with a body of zeros.
pub fn stalled_frame(max_frame: u32) -> Vec<u8> {
    let mut f = vec![0u8; 4 + max_frame as usize];
    f[..4].copy_from_slice(&max_frame.to_be_bytes());
    f[4] = FrameKind::Publish as u8;
    f
}

/// Valid clients that say hello, then send a maximal frame but its last
/// [`HELD_BACK`] bytes and trickle [`TRICKLE`] bytes a second. The close
/// time is counted from the end of the big write (the stall's start).
pub async fn stalled(p: &ConnPlan) -> Result<ConnReport> {
    let server = p.server_name.clone();
    let target = p.target;
    let deadline = p.deadline;
    let run_id = p.run_id.clone();
    let (o, el) = drive(p, move |i, ep, sem| {
        let server = server.clone();
        let run_id = run_id.clone();
        async move {
            let conn = match connect(&ep, target, &server, sem, deadline).await {
                Ok(c) => c,
                Err(o) => return o,
            };
            let fail = |conn: &quinn::Connection, what: &str, e: String| match conn.close_reason() {
                Some(c) => Outcome {
                    connected: true,
                    closed: Some((Duration::ZERO, format!("before the stall: {}", reason(&c)))),
                    error: None,
                },
                None => Outcome {
                    connected: true,
                    closed: None,
                    error: Some(format!("{what}: {e}")),
                },
            };
            let hello = async {
                let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                let name = Name::new(
                    "loadtest",
                    "attack",
                    "stall",
                    Some(&format!("s{i}-{run_id}")),
                )
                .map_err(|e| e.to_string())?;
                let hello = codec::encode_to_vec(
                    &Frame::Hello(Hello {
                        version: PROTOCOL_VERSION,
                        name,
                        token: None,
                    }),
                    &Limits::default(),
                )
                .map_err(|e| e.to_string())?;
                send.write_all(&hello).await.map_err(|e| e.to_string())?;
                let max_frame = read_accept(&mut recv).await?;
                Ok::<_, String>((send, recv, max_frame))
            };
            let (mut send, _recv, max_frame) = match tokio::time::timeout_at(deadline, hello).await
            {
                Err(_) => return fail(&conn, "hello", "no accept before the deadline".into()),
                Ok(Err(e)) => return fail(&conn, "hello", e),
                Ok(Ok(x)) => x,
            };
            let frame = stalled_frame(max_frame);
            let first = frame.len() - HELD_BACK;
            match tokio::time::timeout_at(deadline, send.write_all(&frame[..first])).await {
                Err(_) => return fail(&conn, "frame", "not written before the deadline".into()),
                Ok(Err(e)) => return fail(&conn, "frame", e.to_string()),
                Ok(Ok(())) => {}
            }
            let stall = Instant::now();
            let mut off = first;
            let trickle = async {
                // Never the last byte: the frame stays incomplete.
                while off + TRICKLE < frame.len() {
                    tokio::time::sleep(TRICKLE_EVERY).await;
                    if send.write_all(&frame[off..off + TRICKLE]).await.is_err() {
                        break;
                    }
                    off += TRICKLE;
                }
                std::future::pending::<()>().await
            };
            tokio::select! {
                o = await_close(&conn, stall, deadline) => o,
                _ = trickle => unreachable!("the trickle never ends"),
            }
        }
    })
    .await?;
    Ok(report(o, el))
}

/// Reads the node's answer to the hello: an accept's `max_frame`, or the
/// reason it refused.
async fn read_accept(recv: &mut quinn::RecvStream) -> Result<u32, String> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let n = u32::from_be_bytes(len) as usize;
    if n == 0 || n > 64 * 1024 {
        return Err(format!("implausible answer length {n}"));
    }
    let mut body = vec![0u8; n];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    match codec::decode_body(&body).map_err(|e| e.to_string())? {
        Frame::Accept(a) => Ok(a.max_frame),
        Frame::Reject(r) => Err(format!("rejected: {} {}", r.code.as_str(), r.reason)),
        other => Err(format!("expected accept, got {}", other.kind().as_str())),
    }
}
