//! `slim-node`: one SLIM router node.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use slim_actors::{JwtAuth, JwtKeys, TlsIdentity, TokenAuth};
use slim_auth::{Identity, IdentitySource, JwtBundles};
use slim_node::config::{FileConfig, LogFormat};
use slim_node::http;
use tracing::info;

/// A SLIM node: routes messages between agents over QUIC with SPIFFE mTLS.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Config file (TOML); see deploy/config/node.toml.
    #[arg(long, short, env = "SLIM_CONFIG", required_unless_present = "check")]
    config: Option<PathBuf>,
    /// Check FILE (and every file it names) without starting anything:
    /// prints "FILE: ok" and a summary, or the reason and exits with 2.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
    /// Log output format (overrides the config file).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

/// The node's heap allocator: jemalloc, not the platform's malloc.
///
/// With glibc's malloc, client churn made the node's resident memory grow
/// for good although nothing stayed allocated (issue 17): glibc gives each
/// thread that allocates its own arena (up to 8 per core), a connection's
/// memory is allocated on whichever runtime worker polls it, and an arena
/// hands pages back to the system only from the top of its heap, so every
/// arena keeps its own high-water mark of freed connections. The heap profile
/// of 2,000 departed clients showed no live allocation left per client, yet
/// RSS grew ~1.8 KiB per departed client on 2 workers and ~12 KiB on 32,
/// and `malloc_trim(0)` gave most of it back. jemalloc returns freed pages to the
/// system after a short decay in every arena (see [`DIRTY_DECAY_MS`]), so
/// departed clients cost nothing once it ran (measurements in
/// docs/BENCHMARKS.md, "Client churn").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How long jemalloc keeps freed ("dirty") pages for reuse before returning
/// them to the system: 1 s instead of its default 10 s, so that memory of a
/// burst of departed clients is back within a second or two. Pages reused
/// within that second (any steady load) are never returned, so the cost is
/// one purge per second of idle pages at most.
#[cfg(not(target_env = "msvc"))]
const DIRTY_DECAY_MS: isize = 1000;

#[cfg(not(target_env = "msvc"))]
fn tune_allocator() {
    use tikv_jemalloc_ctl::{Access, AsName};
    // Arenas created from now on, then the ones that exist already (errors
    // only mean an arena index not in use). Pages past their dirty decay are
    // returned at once (muzzy decay 0: MADV_DONTNEED, not a lazy MADV_FREE
    // that keeps them in RSS until the kernel wants them), and a background
    // thread purges arenas that see no allocations: without it an arena is
    // purged only when it is used again, so the memory of a flood of
    // connections (1 MiB frame buffers, handshake state) stayed resident
    // while the node was quiet (docs/BENCHMARKS.md, "The exposed node").
    let _ = b"arenas.dirty_decay_ms\0".name().write(DIRTY_DECAY_MS);
    let _ = b"arenas.muzzy_decay_ms\0".name().write(0isize);
    let n = tikv_jemalloc_ctl::arenas::narenas::read().unwrap_or(0);
    for i in 0..n {
        let key = format!("arena.{i}.dirty_decay_ms\0");
        let _ = key.as_str().name().write(DIRTY_DECAY_MS);
        let key = format!("arena.{i}.muzzy_decay_ms\0");
        let _ = key.as_str().name().write(0isize);
    }
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
}

#[cfg(target_env = "msvc")]
fn tune_allocator() {}

/// Exports the allocator's own accounting (`slim_allocator_bytes`) every
/// second: live bytes versus what it holds, so memory kept by the allocator
/// is told apart from memory kept by the node.
#[cfg(not(target_env = "msvc"))]
fn spawn_allocator_gauges() {
    use tikv_jemalloc_ctl::{epoch, stats};
    let (Ok(e), Ok(allocated), Ok(resident)) = (
        epoch::mib(),
        stats::allocated::mib(),
        stats::resident::mib(),
    ) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            // The statistics are a snapshot refreshed by advancing the epoch.
            if e.advance().is_ok() {
                if let Ok(v) = allocated.read() {
                    metrics::gauge!(slim_actors::metrics::ALLOCATOR_BYTES, "kind" => "allocated")
                        .set(v as f64);
                }
                if let Ok(v) = resident.read() {
                    metrics::gauge!(slim_actors::metrics::ALLOCATOR_BYTES, "kind" => "resident")
                        .set(v as f64);
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

#[cfg(target_env = "msvc")]
fn spawn_allocator_gauges() {}

/// Keeps the readiness line (target `slim_node::ready`) at any log level.
const READY_TARGET_DIRECTIVE: &str = "slim_node::ready=info";

fn main() -> Result<()> {
    tune_allocator();
    let args = Args::parse();
    if let Some(path) = &args.check {
        std::process::exit(check(path));
    }
    let path = args.config.as_deref().expect("clap: --config or --check");
    let mut cfg = FileConfig::load(path)?;
    cfg.apply_env(|k| std::env::var(k).ok())?;
    cfg.validate()?;
    let format = args.log_format.unwrap_or(cfg.log.format);
    cfg.log.format = format;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level))
        // The "listening on" line is for scripts waiting on it: never filtered.
        .add_directive(READY_TARGET_DIRECTIVE.parse().expect("a valid directive"));
    // Colour only for a person at a terminal: log files and collectors get
    // plain text (and NO_COLOR is honoured, https://no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => sub.json().init(),
        LogFormat::Text => sub.init(),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run(cfg))
}

/// `--check FILE`: 0 when the config is sound, 2 (invalid config) with the
/// reason otherwise.
fn check(path: &std::path::Path) -> i32 {
    match slim_node::check::check_file(path, |k| std::env::var(k).ok()) {
        Ok(summary) => {
            println!("{}: ok", path.display());
            for l in summary.lines {
                println!("  {l}");
            }
            0
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            2
        }
    }
}

async fn run(cfg: FileConfig) -> Result<()> {
    let identity: TlsIdentity = match cfg.identity_source()? {
        Some(src_cfg) => {
            let src = IdentitySource::start(src_cfg)
                .await
                .context("cannot get the node identity")?;
            TlsIdentity::Source(src)
        }
        None => TlsIdentity::Static(
            Identity::from_paths(
                cfg.identity.cert.as_deref().expect("validated"),
                cfg.identity.key.as_deref().expect("validated"),
                cfg.identity.bundle.as_deref().expect("validated"),
            )
            .context("cannot load the node identity")?,
        ),
    };
    // /readyz turns 503 once the node's own SVID has expired (its source
    // stopped rotating): new clients could not verify it anyway.
    let expiry: Box<dyn Fn() -> std::time::SystemTime + Send + Sync> = match &identity {
        TlsIdentity::Static(i) => {
            let t = i.not_after;
            Box::new(move || t)
        }
        TlsIdentity::Source(s) => {
            let s = s.clone();
            Box::new(move || s.current().not_after)
        }
    };
    let (own_id, not_after) = match &identity {
        TlsIdentity::Static(i) => (i.spiffe_id.clone(), i.not_after),
        TlsIdentity::Source(s) => (s.spiffe_id(), s.current().not_after),
    };
    info!(spiffe_id = %own_id, expires = %slim_auth::explain::rfc3339(not_after), "identity loaded");

    let ready = Arc::new(AtomicBool::new(false));
    if !cfg.metrics.listen.is_empty() {
        let prom = slim_node::install_metrics().context("cannot install the metrics recorder")?;
        let addr = cfg.metrics.listen.parse().expect("validated");
        http::serve(addr, prom, Arc::clone(&ready))
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        spawn_allocator_gauges();
    }
    let drain = Duration::from_millis(cfg.node.shutdown_drain_ms);
    let mut node_cfg = cfg.node_config();
    node_cfg.policy = cfg.load_policy()?;
    node_cfg.token_auth = token_auth(&cfg, &identity)?;
    node_cfg.reset_key = cfg.reset_key()?;
    // Resolved here so that an unresolvable peer stops the start loudly.
    node_cfg.federation.peers = cfg.federation.peer_specs()?;
    for p in &node_cfg.federation.peers {
        info!(peer = %p.node_id, addr = %p.addr, "static federation peer");
    }
    let ctl_identity = identity.clone();
    let node = Arc::new(slim_actors::start(node_cfg, identity).await?);
    let children: Vec<&str> = node.children().await.iter().map(|k| k.as_str()).collect();
    info!(?children, "actor tree started");
    // Outbound link to the controller, if configured. It never touches the
    // data path: with the controller away the node keeps its links.
    let ctl_link = match &cfg.controller {
        Some(c) => Some(slim_node::controller::spawn(
            &node,
            ctl_identity,
            c.link_config()?,
        )),
        None => None,
    };
    ready.store(true, Ordering::Relaxed);
    {
        let ready = Arc::clone(&ready);
        tokio::spawn(async move {
            let mut was_ok = true;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let ok = expiry() > std::time::SystemTime::now();
                if ok != was_ok {
                    if ok {
                        info!("node SVID valid again; ready");
                    } else {
                        tracing::error!("node SVID expired; /readyz now fails");
                    }
                    ready.store(ok, Ordering::Relaxed);
                    was_ok = ok;
                }
            }
        });
    }
    match cfg.log.format {
        // Every stdout line is JSON in JSON mode: the line goes through the
        // JSON formatter (its message still reads "… listening on …").
        LogFormat::Json => info!(
            target: "slim_node::ready",
            node_id = %node.node_id(),
            addr = %node.local_addr(),
            "slim-node {} listening on {}",
            node.node_id(),
            node.local_addr()
        ),
        LogFormat::Text => println!(
            "slim-node {} listening on {}",
            node.node_id(),
            node.local_addr()
        ),
    }

    let reload = cfg.authz.policy_file.clone().map(|path| {
        tokio::spawn(slim_node::reload::reload_policy(
            Arc::downgrade(&node),
            cfg,
            path,
        ))
    });
    wait_for_signal().await;
    if let Some(r) = reload {
        r.abort();
        let _ = r.await;
    }
    if let Some(l) = ctl_link {
        l.stop().await;
    }
    let node = Arc::into_inner(node).expect("no other owner of the node handle");
    ready.store(false, Ordering::Relaxed);
    info!("shutting down; draining queues for up to {drain:?}");
    node.shutdown(drain).await;
    Ok(())
}

fn token_auth(cfg: &FileConfig, identity: &TlsIdentity) -> Result<TokenAuth> {
    let mut t = TokenAuth {
        jwt: None,
        shared_secret: cfg.authn.shared_secret.clone(),
    };
    if t.shared_secret.is_some() {
        tracing::warn!(
            "authn.shared_secret is set: INSECURE shared-secret authentication is enabled; never use it outside development"
        );
    }
    if let Some(audience) = &cfg.authn.jwt_audience {
        let own_td = match identity {
            TlsIdentity::Static(i) => i.spiffe_id.trust_domain().to_owned(),
            TlsIdentity::Source(s) => s.spiffe_id().trust_domain().to_owned(),
        };
        let keys = match (&cfg.authn.jwt_bundle_file, identity) {
            (Some(path), _) => JwtKeys::File {
                initial: JwtBundles::from_json_file(path, &own_td)
                    .with_context(|| format!("cannot read the JWT bundle {}", path.display()))?,
                path: path.clone(),
                default_trust_domain: own_td,
            },
            (None, TlsIdentity::Source(src)) => JwtKeys::Source(src.clone()),
            (None, TlsIdentity::Static(_)) => {
                anyhow::bail!(
                    "authn.jwt_audience needs authn.jwt_bundle_file with a static identity"
                )
            }
        };
        t.jwt = Some(JwtAuth {
            audience: audience.clone(),
            keys,
        });
    }
    Ok(t)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}
