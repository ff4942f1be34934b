//! The NATS side, through `async-nats`: one connection per publisher and per
//! subscriber, as on the SLIM side.
//!
//! TLS: the client verifies nats-server's certificate the ordinary way
//! (webpki chain check *and* hostname/IP check against the URL's host), so the
//! server needs a certificate with a DNS/IP SAN; `compare.sh` issues one with
//! `openssl`, signed by the dev CA key. The client presents a certificate for
//! nats-server's `verify: true`: from `--nats-cert`/`--nats-key`, or an
//! X.509-SVID issued by the dev CA in `--ca-dir`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::{ConnectOptions, Event, Subject};
use bytes::Bytes;
use futures::future::try_join_all;
use futures::{StreamExt, TryStreamExt as _};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use slim_auth::{DevCa, SpiffeId};

use crate::harness::{Closer, Ctl, ExtraCounters, Mode, Plan, Running, spawn_publisher};
use crate::payload::{PayloadWriter, SeqTracker};

/// TLS material for the NATS client.
#[derive(Debug, Default, Clone)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Dev CA directory: `ca.crt` as the root if `ca` is unset, and an SVID
    /// issued from it as the client certificate if `cert` is unset.
    pub ca_dir: Option<PathBuf>,
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate found", path.display());
    }
    Ok(certs)
}

/// A rustls client configuration (ring provider) for nats-server with TLS.
pub fn tls_config(files: &TlsFiles) -> Result<rustls::ClientConfig> {
    let ca = match (&files.ca, &files.ca_dir) {
        (Some(ca), _) => ca.clone(),
        (None, Some(dir)) => dir.join(slim_auth::devca::CA_CERT_FILE),
        (None, None) => bail!("a tls:// target needs --nats-ca FILE or --ca-dir DIR"),
    };
    let mut roots = RootCertStore::empty();
    for c in read_certs(&ca)? {
        roots
            .add(c)
            .with_context(|| format!("{}: unusable CA certificate", ca.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_root_certificates(roots);
    let config = match (&files.cert, &files.key, &files.ca_dir) {
        (Some(cert), Some(key), _) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading private key {}", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        (Some(_), None, _) | (None, Some(_), _) => {
            bail!("--nats-cert and --nats-key go together")
        }
        (None, None, Some(dir)) => {
            let ca =
                DevCa::load(dir).with_context(|| format!("loading dev CA {}", dir.display()))?;
            let id = SpiffeId::parse(&format!(
                "spiffe://{}/loadtest/nats-client",
                ca.trust_domain()
            ))?;
            let svid = ca.issue(&id, Duration::from_secs(3600))?;
            builder.with_client_auth_cert(svid.cert_chain.clone(), svid.key.clone_key())?
        }
        (None, None, None) => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// Connection-level events worth reporting (client-side slow-consumer drops
/// in particular: async-nats drops messages when a subscriber's channel is full).
#[derive(Default)]
pub struct Events {
    slow_consumer: AtomicU64,
    disconnected: AtomicU64,
    server_errors: AtomicU64,
}

impl Events {
    /// The counters, by report name.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        vec![
            (
                "nats_client_slow_consumer_events".to_owned(),
                self.slow_consumer.load(Ordering::Relaxed),
            ),
            (
                "nats_disconnects".to_owned(),
                self.disconnected.load(Ordering::Relaxed),
            ),
            (
                "nats_errors".to_owned(),
                self.server_errors.load(Ordering::Relaxed),
            ),
        ]
    }
}

pub async fn connect(
    url: &str,
    tls: Option<&rustls::ClientConfig>,
    events: &Arc<Events>,
    name: String,
) -> Result<async_nats::Client> {
    let ev = Arc::clone(events);
    let mut opts = ConnectOptions::new()
        .name(name)
        .ignore_discovered_servers()
        .event_callback(move |e| {
            let ev = Arc::clone(&ev);
            async move {
                let c = match e {
                    Event::SlowConsumer(_) => &ev.slow_consumer,
                    Event::Disconnected => &ev.disconnected,
                    Event::ServerError(_) | Event::ClientError(_) => &ev.server_errors,
                    _ => return,
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
        });
    if let Some(tls) = tls {
        opts = opts.require_tls(true).tls_client_config(tls.clone());
    }
    opts.connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// Drains the connection (flushes, unsubscribes, closes) so the server
/// forgets it at once.
fn close(client: async_nats::Client) -> Closer {
    Box::pin(async move {
        let _ = client.drain().await;
    })
}

/// Subscriber connections set up at the same time.
const CONNECT_CONCURRENCY: usize = 64;

/// Batch size when draining a subscriber's channel.
const RECV_BATCH: usize = 1024;

/// The `host:port` of a `nats://` or `tls://` URL.
fn host_port(url: &str) -> Result<&str> {
    let hp = url.split_once("://").map_or(url, |(_, r)| r);
    let hp = hp.split('/').next().unwrap_or(hp);
    if !hp.contains(':') {
        bail!("{url}: no port");
    }
    Ok(hp)
}

/// A stalled subscriber speaking the NATS protocol by hand, so that it can
/// stop reading its *socket*: async-nats always reads the socket and drops
/// what overflows a subscription's channel client-side, which nats-server
/// never notices. This one subscribes, waits for the server's PONG (the
/// subscription is in place), and then never reads again; the server's
/// pending buffer for it fills until nats-server declares it a slow
/// consumer (`slow_consumers` in /varz) and closes it.
pub struct StalledConn {
    _io: Box<dyn Send + Sync>,
}

async fn stalled_subscriber(
    url: &str,
    tls: Option<&rustls::ClientConfig>,
    subject: &str,
    name: &str,
) -> Result<StalledConn> {
    use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

    async fn subscribe<S: AsyncRead + AsyncWrite + Unpin>(
        io: &mut BufReader<S>,
        connect: &str,
        subject: &str,
    ) -> Result<()> {
        let msg = format!("CONNECT {connect}\r\nSUB {subject} 1\r\nPING\r\n");
        io.get_mut().write_all(msg.as_bytes()).await?;
        io.get_mut().flush().await?;
        let mut line = String::new();
        loop {
            line.clear();
            if io.read_line(&mut line).await? == 0 {
                bail!("the server closed the connection before PONG");
            }
            match line.trim_end() {
                "PONG" => return Ok(()),
                l if l.starts_with("-ERR") => bail!("server: {l}"),
                _ => {}
            }
        }
    }

    let hp = host_port(url)?;
    let tcp = tokio::net::TcpStream::connect(hp)
        .await
        .with_context(|| format!("connecting to {hp}"))?;
    // The server speaks first, in plain text, even when TLS follows.
    let mut plain = BufReader::new(tcp);
    let mut info = String::new();
    plain.read_line(&mut info).await.context("reading INFO")?;
    if !info.starts_with("INFO ") {
        bail!("expected INFO from {hp}, got {:?}", info.trim_end());
    }
    let connect = serde_json::json!({
        "verbose": false, "pedantic": false, "tls_required": tls.is_some(),
        "name": name, "lang": "rust", "version": "0", "protocol": 1,
    })
    .to_string();
    let stalled = match tls {
        Some(cfg) => {
            let host = hp.rsplit_once(':').map_or(hp, |(h, _)| h);
            let server_name = rustls_pki_types::ServerName::try_from(host.to_owned())
                .with_context(|| format!("{host}: not a TLS server name"))?;
            let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg.clone()))
                .connect(server_name, plain.into_inner())
                .await
                .with_context(|| format!("TLS handshake with {hp}"))?;
            let mut io = BufReader::new(conn);
            subscribe(&mut io, &connect, subject).await?;
            StalledConn { _io: Box::new(io) }
        }
        None => {
            subscribe(&mut plain, &connect, subject).await?;
            StalledConn {
                _io: Box::new(plain),
            }
        }
    };
    Ok(stalled)
}

pub async fn setup(
    url: &str,
    tls: Option<rustls::ClientConfig>,
    subject: &str,
    plan: &Plan,
    ctl: &Ctl,
) -> Result<Running> {
    let events = Arc::new(Events::default());
    let subject = Subject::from(subject);
    let tls = tls.as_ref();

    let stalled = try_join_all((0..plan.stalled).map(|i| {
        let subject = subject.to_string();
        async move {
            stalled_subscriber(url, tls, &subject, &format!("loadtest-stalled-{i}"))
                .await
                .with_context(|| format!("stalled subscriber {i}"))
        }
    }))
    .await?;
    let subs = futures::stream::iter((plan.stalled..plan.subs).map(|i| {
        let events = &events;
        let subject = subject.clone();
        async move {
            let c = connect(url, tls, events, format!("loadtest-sub-{i}")).await?;
            let s = match plan.mode {
                Mode::Multicast => c.subscribe(subject).await,
                Mode::Anycast => c.queue_subscribe(subject, "loadtest".into()).await,
            }
            .with_context(|| format!("subscriber {i}: subscribing"))?;
            // The server has processed SUB once the PING after it is answered.
            c.flush()
                .await
                .with_context(|| format!("subscriber {i}: flush"))?;
            anyhow::Ok((c, s))
        }
    }))
    // Bounded: a 1 -> 1000 fan-out must not start 1000 handshakes at once.
    .buffered(CONNECT_CONCURRENCY)
    .try_collect::<Vec<_>>()
    .await?;

    let streams = plan.streams();
    let mut subscribers = Vec::with_capacity(plan.subs);
    for conn in stalled {
        let mut stop = ctl.stop_subs.clone();
        subscribers.push(tokio::spawn(async move {
            let _ = stop.wait_for(|v| *v).await;
            let closer: Closer = Box::pin(async move { drop(conn) });
            Ok((SeqTracker::new(streams), closer))
        }));
    }
    for (i, (client, sub)) in (plan.stalled..).zip(subs) {
        let ctl = ctl.clone();
        subscribers.push(tokio::spawn(async move {
            let mut stop = ctl.stop_subs.clone();
            let mut tr = SeqTracker::new(streams);
            let mut batches = sub.ready_chunks(RECV_BATCH);
            loop {
                let batch = tokio::select! {
                    biased;
                    _ = stop.wait_for(|v| *v) => break,
                    b = batches.next() => b,
                };
                let Some(batch) = batch else { break };
                for m in batch {
                    tr.observe(&m.payload);
                }
                ctl.delivered[i].0.store(tr.received, Ordering::Relaxed);
            }
            Ok((tr, close(client)))
        }));
    }

    let pubs = try_join_all((0..plan.pubs).map(|p| {
        let (url, tls, events) = (url.to_owned(), tls.cloned(), Arc::clone(&events));
        async move {
            spawn_publisher(plan, async move {
                connect(&url, tls.as_ref(), &events, format!("loadtest-pub-{p}")).await
            })
            .await
            .context("publisher connect task")?
        }
    }))
    .await?;

    let mut publishers = Vec::with_capacity(pubs.len());
    for (p, client) in pubs.into_iter().enumerate() {
        let mut tasks = Vec::with_capacity(plan.pub_tasks);
        for t in 0..plan.pub_tasks {
            let stream = p * plan.pub_tasks + t;
            let mut w = PayloadWriter::new(stream as u32, plan.size)?;
            let client = client.clone();
            let subject = subject.clone();
            let mut ctl = ctl.clone();
            tasks.push(spawn_publisher(plan, async move {
                ctl.started().await;
                let counter = &ctl.sent[stream].0;
                let mut seq = 0u64;
                while !ctl.stopping() {
                    for _ in 0..64 {
                        // Queues into the client's bounded write channel; no
                        // flush per message.
                        client
                            .publish(subject.clone(), Bytes::copy_from_slice(w.with_seq(seq)))
                            .await
                            .context("publish")?;
                        seq += 1;
                        counter.store(seq, Ordering::Relaxed);
                    }
                }
                anyhow::Ok(())
            }));
        }
        publishers.push(spawn_publisher(plan, async move {
            for t in tasks {
                t.await.context("publisher task panicked")??;
            }
            client.flush().await.context("flush")?;
            Ok(close(client))
        }));
    }

    let ev = Arc::clone(&events);
    let extra: ExtraCounters = Box::new(move || ev.snapshot().into_iter().collect());
    Ok(Running {
        publishers,
        subscribers,
        extra: Some(extra),
    })
}
