//! `slim-loadtest`: load scenarios against a SLIM node over real QUIC + mTLS,
//! and against nats-server (optionally with TLS) through async-nats, measured
//! the same way so that one run of `compare.sh` yields ratios.
//!
//! ```text
//! slim-loadtest throughput   --target slim://127.0.0.1:4500 --ca-dir DIR --subs 1 --size 16 --node-pid PID
//! slim-loadtest fanout       --target tls://127.0.0.1:4222  --ca-dir DIR --subs 100
//! slim-loadtest throughput   --target slim://... --ca-dir DIR --sweep-sizes 16,256,1024,4096 --plot sweep.svg
//! slim-loadtest latency      --target slim://... --ca-dir DIR --rate 1000 --duration 10s --plot lat.svg
//! slim-loadtest connections  --target slim://... --ca-dir DIR --conns 1000 --subs 10 --node-pid PID
//! slim-loadtest slow-consumer --target slim://... --ca-dir DIR --subs 10 --stats-addr 127.0.0.1:9464
//! slim-loadtest cross-node   --spawn-node --size 16            (two linked in-process nodes)
//! slim-loadtest cross-node   --target slim://A --sub-target slim://B --ca-dir DIR
//! slim-loadtest fleet --mode connect-leave --nodes 5,10,20,40 --json cl.json   (real processes)
//! slim-loadtest fleet --mode churn --nodes 20 --churn-rate 10 --duration 60s --stream-rate 200
//! slim-loadtest session     --spawn-node --messages 30000             (reliable p2p, bitset-checked)
//! slim-loadtest session     --target slim://A --rx-target slim://B --ca-dir DIR --rate 5000
//! slim-loadtest channel     --spawn-node --members 3 --messages 10000 (MLS group channel)
//! slim-loadtest attack --kind initial-flood --spawn-node --duration 30s --after 30s
//! slim-loadtest summarize results.jsonl
//! slim-loadtest plot results.jsonl --scenario 'rr 1000/s 16B' --out lat.svg
//! ```
#![forbid(unsafe_code)]

mod attack;
mod backend;
mod chart;
mod cli;
mod commands;
mod connections;
mod fleet;
mod harness;
mod latency;
mod nats;
mod payload;
mod plot;
mod procstat;
mod reqrep;
mod serverstats;
mod sessions;
mod slim;
mod summary;
mod target;
mod throughput_report;
mod util;

use anyhow::Result;
use clap::Parser;

use cli::{Cli, Cmd};
use commands::throughput::{Flavor, cross_node, throughput};
use commands::{connections, fleet, latency, session_or_channel};

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Throughput(a) => throughput(*a, Flavor::Throughput),
        Cmd::Fanout(a) => throughput(*a, Flavor::Fanout),
        Cmd::SlowConsumer(a) => throughput(*a, Flavor::SlowConsumer),
        Cmd::CrossNode(a) => cross_node(*a),
        Cmd::Latency(a) => latency(*a),
        Cmd::Connections(a) => connections(*a),
        Cmd::Fleet(a) => fleet(*a),
        Cmd::Session(a) => session_or_channel(*a, false),
        Cmd::Channel(a) => session_or_channel(*a, true),
        Cmd::Attack(a) => attack::run(*a),
        Cmd::Summarize { file, json } => {
            if json {
                println!("{}", summary::summarize_json(&file)?);
            } else {
                print!("{}", summary::summarize(&file)?);
            }
            Ok(())
        }
        Cmd::Plot {
            file,
            scenario,
            out,
        } => plot::from_file(&file, &out, scenario.as_deref()),
    }
}
