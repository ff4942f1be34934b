//! A scriptable agent for the network-namespace tests: the real SDK in a real
//! process, started with `ip netns exec` inside a cluster's namespace.
//! Prints one JSON summary line on stdout; progress lines on stderr.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use slim_auth::{IdentitySource, IdentitySourceConfig};
use slim_client::session::p2p::{
    P2pConfig, P2pEvent, P2pListener, P2pSender, P2pSession, Reliability,
};
use slim_client::session::{SessionMux, reliable};
use slim_client::{Client, ClientConfig, Credentials, Event};
use slim_tests::{SeqSet, payload_seq, seq_payload};
use slim_wire::{Mode, Name};

#[derive(Parser, Debug)]
struct Cli {
    /// The node to dial: `host:port` or `slim://host:port` (a name is
    /// resolved at every (re)connect).
    #[arg(long)]
    node: String,
    /// spiffe-helper layout directory with this agent's SVID; without it the
    /// SVID comes from the Workload API at $SPIFFE_ENDPOINT_SOCKET.
    #[arg(long)]
    identity: Option<PathBuf>,
    /// This agent's name (org/namespace/service).
    #[arg(long = "as")]
    name: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Subscribe to CHANNEL and count sequence-numbered messages.
    Recv {
        channel: String,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value = "30")]
        timeout_secs: u64,
    },
    /// Publish COUNT sequence-numbered messages to CHANNEL (multicast).
    Send {
        channel: String,
        #[arg(long)]
        count: u64,
        /// Messages per second (0: as fast as the client takes them).
        #[arg(long, default_value = "0")]
        rate: u64,
        #[arg(long, default_value = "64")]
        size: usize,
    },
    /// Accept one reliable point-to-point session and read COUNT messages.
    P2pServe {
        #[arg(long)]
        count: u64,
        #[arg(long, default_value = "60")]
        timeout_secs: u64,
    },
    /// Open a reliable session to SERVICE and send COUNT messages at RATE/s.
    P2pSend {
        service: String,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value = "0")]
        rate: u64,
        /// Retransmissions before the session gives up on a message.
        #[arg(long, default_value = "14")]
        max_retries: u32,
        #[arg(long, default_value = "60")]
        timeout_secs: u64,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let src = IdentitySource::start(match &cli.identity {
        Some(dir) => IdentitySourceConfig::Files { dir: dir.clone() },
        None => IdentitySourceConfig::spire(None),
    })
    .await
    .context("identity")?;
    let name = Name::parse(&cli.name).context("--as")?;
    let cfg = ClientConfig::for_url(&cli.node, name, Credentials::Source(src))
        .await
        .context("--node")?;
    let client = Client::connect(cfg).await.context("connect")?;
    eprintln!("connected as {}", client.name());
    match cli.cmd {
        Cmd::Recv {
            channel,
            count,
            timeout_secs,
        } => recv(client, &channel, count, timeout_secs).await,
        Cmd::Send {
            channel,
            count,
            rate,
            size,
        } => send(client, &channel, count, rate, size).await,
        Cmd::P2pServe {
            count,
            timeout_secs,
        } => p2p_serve(client, count, timeout_secs).await,
        Cmd::P2pSend {
            service,
            count,
            rate,
            max_retries,
            timeout_secs,
        } => p2p_send(client, &service, count, rate, max_retries, timeout_secs).await,
    }
}

async fn recv(client: Client, channel: &str, count: u64, timeout_secs: u64) -> Result<()> {
    let chan = Name::parse(channel)?;
    client.subscribe(&chan).await?;
    let subscribed = Instant::now();
    eprintln!("subscribed to {chan}");
    let mut seen = SeqSet::new(count);
    let mut first_ms = None;
    let mut from_identity = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
    while seen.count() < count {
        let ev = match tokio::time::timeout_at(deadline, client.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) | Err(_) => break,
        };
        if let Event::Message(d) = ev
            && d.name == chan
            && d.payload.len() >= 8
        {
            first_ms.get_or_insert(subscribed.elapsed().as_secs_f64() * 1e3);
            from_identity = d.from_identity.as_deref().map(str::to_owned);
            seen.insert(payload_seq(&d.payload));
            if seen.count().is_multiple_of(100) {
                eprintln!("received {}", seen.count());
            }
        }
    }
    let missing = seen.missing(count).len();
    println!(
        "{}",
        serde_json::json!({
            "received": seen.count(),
            "duplicates": seen.duplicates(),
            "missing": missing,
            "first_delivery_ms": first_ms,
            "from_identity": from_identity,
        })
    );
    if seen.count() != count || seen.duplicates() != 0 {
        bail!(
            "received {} of {count} ({} duplicates)",
            seen.count(),
            seen.duplicates()
        );
    }
    Ok(())
}

async fn pace(start: Instant, i: u64, rate: u64) {
    if rate > 0 {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
    }
}

async fn send(client: Client, channel: &str, count: u64, rate: u64, size: usize) -> Result<()> {
    let chan = Name::parse(channel)?;
    let start = Instant::now();
    for i in 0..count {
        pace(start, i, rate).await;
        client
            .publish_with(
                &chan,
                Mode::Multicast,
                slim_wire::FLAG_NO_ROUTE_SILENT,
                &seq_payload(i, size),
            )
            .await?;
    }
    client.flush().await;
    println!("{}", serde_json::json!({ "sent": count }));
    client.close().await;
    Ok(())
}

fn reliable_cfg(max_retries: u32) -> P2pConfig {
    let rc = reliable::Config {
        max_retries,
        ..reliable::Config::default()
    };
    P2pConfig {
        reliability: Reliability::Reliable(rc),
        open_attempts: 20,
        // Across a partition the peer's node answers "no route" until the
        // links are back: tolerate it as long as the retries last.
        peer_absent_grace: Duration::from_secs(60),
        ..P2pConfig::default()
    }
}

/// Prints the session's counters to stderr every 2 s until the session task
/// ends: when a run fails, the log shows what the retransmission machinery
/// was doing (in flight, timeouts, RTO) at each moment of the partition.
fn watch_stats(tx: P2pSender, who: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if tx.is_closed() {
                break;
            }
            let Ok(Ok(st)) = tokio::time::timeout(Duration::from_secs(2), tx.stats()).await else {
                eprintln!("{who} stats: no answer");
                continue;
            };
            let (s, r) = (&st.sender, &st.receiver);
            eprintln!(
                "{who} stats at {:.1}s: sent {} acked {} failed {} rtx {} timeouts {} fast {} probes {} rto {:?} srtt {:?} | delivered {} dups {} acks {} nacks {} lost {}",
                start.elapsed().as_secs_f64(),
                s.sent,
                s.acked,
                s.failed,
                s.retransmitted,
                s.timeouts,
                s.fast_retransmits,
                s.probes,
                s.rto,
                s.srtt,
                r.delivered,
                r.duplicates,
                r.acks_sent,
                r.nacks_sent,
                r.lost,
            );
        }
    })
}

async fn p2p_serve(client: Client, count: u64, timeout_secs: u64) -> Result<()> {
    let (mux, _raw) = SessionMux::new(client);
    let mut listener = P2pListener::new(&mux, reliable_cfg(14))?;
    eprintln!("listening for sessions");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
    let mut session = tokio::time::timeout_at(deadline, listener.accept())
        .await
        .context("no session opened in time")?
        .context("mux closed")?;
    eprintln!("session from {}", session.peer());
    let watch = watch_stats(session.sender(), "serve");
    let (mut next, mut dups, mut out_of_order, mut lost) = (0u64, 0u64, 0u64, 0u64);
    // Read until the sender closes: exiting right after the last message
    // would leave it unacknowledged.
    let mut closed = false;
    loop {
        match tokio::time::timeout_at(deadline, session.recv()).await {
            Ok(Some(P2pEvent::Message { payload, .. })) => {
                let s = payload_seq(&payload);
                if s < next {
                    dups += 1;
                } else if s > next {
                    out_of_order += 1;
                    next = s + 1;
                } else {
                    next += 1;
                }
            }
            Ok(Some(P2pEvent::Lost { seqs })) => lost += seqs.len() as u64,
            Ok(Some(P2pEvent::PeerClosed { .. })) => {
                closed = true;
                break;
            }
            Ok(None) | Err(_) => break,
            Ok(Some(other)) => eprintln!("event: {other:?}"),
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "received_in_order": next,
            "duplicates": dups,
            "out_of_order": out_of_order,
            "lost": lost,
        })
    );
    watch.abort();
    if closed {
        // Stay until the session task ends (its linger): the sender may
        // still need our close-ack again, and an agent that exits at once
        // leaves it retransmitting into "no route" until its grace runs out.
        let linger = tokio::time::timeout(Duration::from_secs(15), async {
            while session.recv().await.is_some() {}
        });
        if linger.await.is_err() {
            eprintln!("WARNING: the session task did not end 15 s after the peer's close");
        }
    }
    if next != count || dups != 0 || out_of_order != 0 || lost != 0 {
        bail!("session delivery incomplete");
    }
    Ok(())
}

async fn p2p_send(
    client: Client,
    service: &str,
    count: u64,
    rate: u64,
    max_retries: u32,
    timeout_secs: u64,
) -> Result<()> {
    let (mux, _raw) = SessionMux::new(client);
    let service = Name::parse(service)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
    let session = P2pSession::open(&mux, &service, reliable_cfg(max_retries)).await?;
    eprintln!("session open to {}", session.peer());
    let (tx, mut rx) = session.into_split();
    let watch = watch_stats(tx.clone(), "send");
    let failures = tokio::spawn(async move {
        let mut failed = 0u64;
        while let Some(ev) = rx.recv().await {
            match ev {
                P2pEvent::DeliveryFailed { seq, attempts } => {
                    eprintln!("delivery of {seq} failed after {attempts} attempts");
                    failed += 1;
                }
                P2pEvent::Failed(e) => {
                    eprintln!("session failed: {e}");
                    failed += 1;
                    break;
                }
                _ => {}
            }
        }
        failed
    });
    let start = Instant::now();
    for i in 0..count {
        pace(start, i, rate).await;
        tokio::time::timeout_at(deadline, tx.send(seq_payload(i, 64)))
            .await
            .context("send timed out")??;
        if i > 0 && i % 1000 == 0 {
            eprintln!("sent {i}");
        }
    }
    // Close waits for every message to be acknowledged or given up on, and
    // bounds that wait itself (the retry budget, and `peer_absent_grace`
    // while the node says the peer is unreachable): its own error says how
    // many messages went unacknowledged. This bound is only a watchdog above
    // the library's, not what is left of the sending deadline (a loaded
    // 2-core CI box can spend most of that on the partition).
    let close_bound = Duration::from_secs(150);
    let closing = Instant::now();
    tokio::time::timeout(close_bound, tx.close())
        .await
        .with_context(|| format!("close timed out after {close_bound:?} (library bound broken)"))?
        .context("close")?;
    eprintln!("closed in {:?}", closing.elapsed());
    // After a successful close the session task should end at once. It
    // sometimes does not (the reliable session's liveness hole, issue 17):
    // bound these waits and say so loudly, in the log and the summary,
    // rather than hang past the test's deadline with nothing to show.
    let bound = Duration::from_secs(15);
    let stats = match tokio::time::timeout(bound, tx.stats()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            eprintln!(
                "WARNING: session stats not answered {bound:?} after the close (liveness bug)"
            );
            None
        }
    };
    watch.abort();
    drop(tx);
    // `None`: not known, the session task did not end to report its events.
    let failed = match tokio::time::timeout(bound, failures).await {
        Ok(r) => Some(r.unwrap_or(u64::MAX)),
        Err(_) => {
            eprintln!(
                "WARNING: the session task did not end {bound:?} after the close (liveness bug)"
            );
            None
        }
    };
    println!(
        "{}",
        serde_json::json!({ "sent": count, "failed": failed, "stats": format!("{stats:?}"),
            "session_task_ended": failed.is_some() && stats.is_some() })
    );
    if let Some(failed) = failed.filter(|&f| f != 0) {
        bail!("{failed} messages failed");
    }
    Ok(())
}
