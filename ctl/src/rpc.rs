//! `slimctl request` and `slimctl respond`: request/reply over the SDK's RPC
//! (a reliable point-to-point session to the responder's service name).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use slim_client::session::SessionMux;
use slim_client::session::rpc::{RpcClient, RpcConfig, RpcServer};
use slim_wire::Name;

use crate::args::{ConnectArgs, parse_duration};
use crate::output::{Output, print_json};
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
    /// Give up waiting for the reply after this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
}

#[derive(clap::Args, Debug)]
pub(crate) struct RespondArgs {
    #[command(flatten)]
    pub(crate) conn: ConnectArgs,
    /// Answer every request with this text instead of echoing it back.
    #[arg(long)]
    pub(crate) reply: Option<String>,
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
    let Some(reply) = r else { bail!("interrupted") };
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

/// `respond`: answers requests to our service name until stopped (or
/// `--count`), printing each.
pub(crate) async fn respond(a: RespondArgs, out: Output) -> Result<()> {
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
            let reply = match &a.reply {
                Some(r) => r.as_bytes().to_vec(),
                None => req.payload.to_vec(),
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
