//! `slim-controller`: fleet registry, link planning and audit trail for a
//! SLIM fabric.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use slim_auth::IdentitySource;
use slim_controller::config::{FileConfig, LogFormat};
use tracing::info;

/// The SLIM controller: nodes register with it; it plans their links and
/// keeps the fleet view and the audit trail.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Config file (TOML); see deploy/config/controller.toml.
    #[arg(
        long,
        short,
        env = "SLIM_CONTROLLER_CONFIG",
        required_unless_present = "check"
    )]
    config: Option<PathBuf>,
    /// Check FILE (and every file it names) without starting anything:
    /// prints "FILE: ok" and a summary, or the reason and exits with 2.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

fn main() -> Result<()> {
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
        .add_directive(
            "slim_controller::ready=info"
                .parse()
                .expect("a valid directive"),
        );
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
    match slim_controller::check::check_file(path, |k| std::env::var(k).ok()) {
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
    let src = IdentitySource::start(cfg.identity_source()?)
        .await
        .context("cannot get the controller identity")?;
    info!(spiffe_id = %src.spiffe_id(), "identity loaded");
    if !cfg.metrics.listen.is_empty() {
        let prom =
            slim_controller::metrics::install().context("cannot install the metrics recorder")?;
        let addr = cfg.metrics.listen.parse().expect("validated");
        slim_controller::http::serve(addr, prom)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    }
    let ctl = slim_controller::start(cfg.controller_config(), &src).await?;
    match cfg.log.format {
        // Every stdout line is JSON in JSON mode.
        LogFormat::Json => info!(
            target: "slim_controller::ready",
            addr = %ctl.local_addr(),
            "slim-controller listening on {}",
            ctl.local_addr()
        ),
        LogFormat::Text => println!("slim-controller listening on {}", ctl.local_addr()),
    }
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
    ctl.shutdown().await;
    Ok(())
}
