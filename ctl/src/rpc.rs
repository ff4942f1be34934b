//! `slimctl request` and `slimctl reply` (alias `respond`): request/reply
//! over the SDK's RPC (a reliable point-to-point session to the responder's
//! service name), like `nats request` / `nats reply`.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use slim_client::session::SessionMux;
use slim_client::session::rpc::{RpcClient, RpcConfig, RpcServer};
use slim_wire::Name;

use crate::args::{ConnectArgs, parse_duration};
use crate::output::{Failure, Output, print_json};
use crate::signal::then_close;

#[derive(clap::Args, Debug)]
pub(crate) struct RequestArgs {
    /// The responder's service name (`org/ns/service`; any instance
    /// answers) or full name.
    pub(crate) name: String,
    /// The request (or stdin with "-").
    pub(crate) payload: String,
    #[command(flatten)]
    pub(crate) conn: ConnectArgs,
    /// Give up waiting for the reply after this long (e.g. 500ms, 2s, 1m).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ReplyArgs {
    /// The service name to answer on (`org/ns/service`; an instance id is
    /// added): requests to it reach this process. Same as --as.
    #[arg(conflicts_with = "as_name")]
    pub(crate) name: Option<String>,
    #[command(flatten)]
    pub(crate) conn: ConnectArgs,
    /// Send each request back unchanged (the default).
    #[arg(long, conflicts_with_all = ["reply", "command"])]
    pub(crate) echo: bool,
    /// Answer every request with this text.
    #[arg(long, value_name = "TEXT", conflicts_with = "command")]
    pub(crate) reply: Option<String>,
    /// Run this shell command (`sh -c`) for each request: the request on
    /// its stdin, its stdout the reply. A failing command fails the request
    /// (the requester sees its stderr).
    #[arg(long, value_name = "CMD")]
    pub(crate) command: Option<String>,
    /// With --command: stop a command that runs longer than this.
    #[arg(long, default_value = "10s", value_parser = parse_duration, requires = "command")]
    pub(crate) command_timeout: Duration,
    /// Exit after answering this many requests.
    #[arg(long)]
    pub(crate) count: Option<u64>,
}

#[derive(Serialize)]
struct ReplyOut<'a> {
    to: &'a str,
    rtt_ms: f64,
    payload: String,
    payload_encoding: &'a str,
}

#[derive(Serialize)]
struct RequestOut<'a> {
    from: &'a str,
    from_identity: Option<&'a str>,
    payload: String,
    payload_encoding: &'a str,
    replied_bytes: usize,
}

/// Text if it prints, else hex.
fn show(b: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
            (s.to_owned(), "text")
        }
        _ => (b.iter().map(|x| format!("{x:02x}")).collect(), "hex"),
    }
}

/// `request`: one call, the reply printed.
pub(crate) async fn request(a: RequestArgs, out: Output) -> Result<()> {
    let name = Name::parse(&a.name).context("invalid responder name")?;
    let payload = if a.payload == "-" {
        let mut b = Vec::new();
        std::io::stdin().read_to_end(&mut b)?;
        b
    } else {
        a.payload.into_bytes()
    };
    let (mux, _raw) = SessionMux::new(a.conn.client().await?);
    let rpc = RpcClient::new(&mux, RpcConfig::default());
    let t0 = Instant::now();
    let r = then_close(mux.client(), async {
        rpc.request(&name, payload, a.timeout)
            .await
            .with_context(|| format!("request to {name}"))
    })
    .await?;
    let Some(reply) = r else {
        return Err(Failure::Interrupted.into());
    };
    let rtt = t0.elapsed();
    let (text, encoding) = show(&reply);
    if out == Output::Json {
        print_json(&ReplyOut {
            to: name.as_str(),
            rtt_ms: rtt.as_secs_f64() * 1e3,
            payload: text,
            payload_encoding: encoding,
        })?;
    } else {
        println!("{}{text}", if encoding == "hex" { "0x" } else { "" });
        eprintln!("reply from {name} in {:.1} ms", rtt.as_secs_f64() * 1e3);
    }
    Ok(())
}

/// Runs `--command` for one request: stdin the request, stdout the reply.
async fn run_command(cmd: &str, input: &[u8], limit: Duration) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input closes the pipe: not an error.
        let _ = stdin.write_all(input).await;
    }
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "{cmd:?} ran longer than {}",
                humantime::format_duration(limit)
            )
        })?
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(output.stdout)
}

/// `reply`: answers requests to our service name until stopped (or
/// `--count`), printing each.
pub(crate) async fn reply(mut a: ReplyArgs, out: Output) -> Result<()> {
    if let Some(n) = a.name.take() {
        a.conn.as_name = Some(n);
    }
    let (mux, _raw) = SessionMux::new(a.conn.client().await?);
    let mut server = RpcServer::new(&mux, RpcConfig::default())?;
    let me = mux.client().name().clone();
    eprintln!("answering requests to {} as {me}", me.service_str());
    then_close(mux.client(), async {
        let mut answered = 0u64;
        while a.count.is_none_or(|c| answered < c) {
            let Some(req) = server.next().await else {
                bail!("connection closed");
            };
            let reply = match (&a.reply, &a.command) {
                (Some(r), _) => Ok(r.as_bytes().to_vec()),
                (None, Some(cmd)) => run_command(cmd, &req.payload, a.command_timeout).await,
                (None, None) => Ok(req.payload.to_vec()),
            };
            let reply = match reply {
                Ok(r) => r,
                Err(reason) => {
                    eprintln!("request from {} failed: {reason}", req.from);
                    if let Err(e) = req.responder.fail(&reason).await {
                        eprintln!("telling {} failed: {e}", req.from);
                    }
                    answered += 1;
                    continue;
                }
            };
            let (text, encoding) = show(&req.payload);
            if out == Output::Json {
                print_json(&RequestOut {
                    from: req.from.as_str(),
                    from_identity: req.from_identity.as_deref(),
                    payload: text,
                    payload_encoding: encoding,
                    replied_bytes: reply.len(),
                })?;
            } else {
                println!(
                    "request from {} [{}]: {}{text}",
                    req.from,
                    req.from_identity.as_deref().unwrap_or("unauthenticated"),
                    if encoding == "hex" { "0x" } else { "" }
                );
            }
            std::io::stdout().flush()?;
            if let Err(e) = req.responder.reply(reply).await {
                eprintln!("reply to {} failed: {e}", req.from);
            }
            answered += 1;
        }
        Ok(())
    })
    .await?;
    Ok(())
}
