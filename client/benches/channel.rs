//! Group channel throughput: 1 KiB messages from the moderator to 3 members,
//! MLS on (and off, for comparison), through an in-process node on loopback
//! (real QUIC + mTLS); plus the sans-IO machines alone (no network); the
//! MLS work of adding one member to groups of 10/100/1000; the wall time of
//! one admission by join request through the node.
//!
//! `cargo bench -p slim-client --bench channel` (`CHANNEL_BENCH_N` scales
//! the message count, `CHANNEL_BENCH_ADD=0` skips the 10/100/1000 part). The publisher keeps at most `WINDOW` messages ahead of
//! the slowest member (group mode has no flow control of its own: a sender
//! that outruns its receivers overflows their inboxes and makes them recover
//! from its retransmission buffer).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use slim_actors::NodeConfig;
use slim_auth::{DevCa, SpiffeId};
use slim_client::channel::{Channel, ChannelConfig, ChannelEvent, ChannelOptions};
use slim_client::session::Packet;
use slim_client::session::SessionMux;
use slim_client::session::channel::{Member, Moderator};
use slim_client::session::group::Dest;
use slim_client::{Client, ClientConfig};
use slim_mls::MlsIdentity;
use slim_wire::Name;

const WINDOW: u64 = 512;
const MEMBERS: usize = 3;

fn ident(ca: &DevCa, p: &str) -> slim_auth::Identity {
    let id = SpiffeId::parse(&format!("spiffe://bench.org/{p}")).expect("id");
    ca.issue(&id, Duration::from_secs(3600)).expect("svid")
}

fn config(mls: bool) -> ChannelConfig {
    ChannelConfig {
        mls,
        admission: vec!["spiffe://bench.org/**".into()],
        ..ChannelConfig::default()
    }
}

async fn over_node(ca: &DevCa, node: &slim_actors::NodeHandle, mls: bool, n: u64, k: usize) -> f64 {
    let agent = |name: String, p: String| {
        let svid = ident(ca, &p);
        let cfg = ClientConfig::new(
            node.local_addr(),
            Name::parse(&name).expect("name"),
            svid.clone(),
        );
        async move {
            let c = Client::connect(cfg).await.expect("connect");
            let (mux, raw) = SessionMux::new(c);
            (mux, raw, MlsIdentity::new(&svid).expect("mls"))
        }
    };
    let chan = Name::parse(&format!("bench/chan/c{k}")).expect("name");
    let (mm, _r0, mi) = agent(format!("bench/chan/mod{k}/0"), format!("mod{k}")).await;
    let mut moderator = Channel::create(&mm, &chan, ChannelOptions::new(config(mls), Some(mi)))
        .await
        .expect("create");
    let modname = Name::parse(mm.client().name().as_str()).expect("name");
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..MEMBERS).map(|_| AtomicU64::new(0)).collect());
    let mut keep = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..MEMBERS {
        let (mux, raw, id) = agent(format!("bench/chan/m{k}x{i}/0"), format!("m{k}x{i}")).await;
        let mut m = Channel::join(
            &mux,
            &chan,
            Some(&modname),
            ChannelOptions::new(config(mls), Some(id)),
        )
        .await
        .expect("join");
        keep.push((mux, raw));
        let counts = counts.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = 0;
            while got < n {
                match m.recv().await {
                    Some(ChannelEvent::Message { .. }) => {
                        got += 1;
                        counts[i].store(got, Ordering::Relaxed);
                    }
                    Some(ChannelEvent::Lost { seqs, .. }) => panic!("lost {}", seqs.len()),
                    Some(ChannelEvent::Rejected { error, .. }) => panic!("rejected: {error}"),
                    Some(_) => {}
                    None => panic!("member ended after {got}"),
                }
            }
            m
        }));
    }
    // Every member has applied every admission before the clock starts.
    let mut joined = 0;
    while joined < MEMBERS {
        if let Some(ChannelEvent::MemberJoined { .. }) = moderator.recv().await {
            joined += 1;
        }
    }
    let payload = vec![0xabu8; 1024];
    let start = Instant::now();
    for sent in 0..n {
        while counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
            + WINDOW
            <= sent
        {
            tokio::task::yield_now().await;
        }
        moderator.publish(&payload).await.expect("publish");
    }
    let mut members = Vec::new();
    for t in tasks {
        members.push(t.await.expect("member"));
    }
    let secs = start.elapsed().as_secs_f64();
    drop(members);
    let _ = moderator.close("bench done").await;
    n as f64 / secs
}

/// Wall time of one admission by join request through the node, in a
/// channel of `n` (moderator included): request → commit → Welcome → the
/// joiner's `Joined` and every member's ack (the moderator's `MemberJoined`).
async fn admission_over_node(
    ca: &DevCa,
    node: &slim_actors::NodeHandle,
    n: usize,
    k: usize,
) -> (Duration, Duration) {
    let agent = |name: String, p: String| {
        let svid = ident(ca, &p);
        let cfg = ClientConfig::new(
            node.local_addr(),
            Name::parse(&name).expect("name"),
            svid.clone(),
        );
        async move {
            let c = Client::connect(cfg).await.expect("connect");
            let (mux, raw) = SessionMux::new(c);
            (mux, raw, MlsIdentity::new(&svid).expect("mls"))
        }
    };
    let chan = Name::parse(&format!("bench/adm/c{k}")).expect("name");
    let (mm, _r0, mi) = agent(format!("bench/adm/mod{k}/0"), format!("amod{k}")).await;
    let mut moderator = Channel::create(&mm, &chan, ChannelOptions::new(config(true), Some(mi)))
        .await
        .expect("create");
    let modname = Name::parse(mm.client().name().as_str()).expect("name");
    let mut keep = Vec::new();
    let mut drains = Vec::new();
    let mut last = (Duration::ZERO, Duration::ZERO);
    // The i-th admission enters a channel of i+1; the last one (of `n`) is
    // the one reported.
    for i in 0..n {
        let (mux, raw, id) = agent(format!("bench/adm/m{k}x{i}/0"), format!("am{k}x{i}")).await;
        let t = Instant::now();
        let mut m = Channel::join(
            &mux,
            &chan,
            Some(&modname),
            ChannelOptions::new(config(true), Some(id)),
        )
        .await
        .expect("join");
        let joined = t.elapsed();
        loop {
            if let Some(ChannelEvent::MemberJoined { .. }) = moderator.recv().await {
                break;
            }
        }
        last = (joined, t.elapsed());
        keep.push((mux, raw));
        // Members read their events so their drivers never stall.
        drains.push(tokio::spawn(
            async move { while m.recv().await.is_some() {} },
        ));
    }
    let _ = moderator.close("bench done").await;
    for d in drains {
        let _ = d.await;
    }
    last
}

/// The machines alone: moderator encrypts and sequences, 3 members decrypt.
fn sans_io(mls: bool, n: u64) -> f64 {
    let ca = DevCa::generate("bench.org").expect("ca");
    let now = Instant::now();
    let cfg = config(mls);
    let mi = MlsIdentity::new(&ident(&ca, "mod")).expect("mls");
    let mut moderator = Moderator::new(
        "bench/chan/x",
        "bench/chan/mod/0",
        Some(mi),
        "spiffe://bench.org/mod",
        cfg.clone(),
        now,
    )
    .expect("moderator");
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let name = format!("bench/chan/m{i}/0");
        let m = Member::join(
            "bench/chan/x",
            &name,
            Some(MlsIdentity::new(&ident(&ca, &format!("m{i}"))).expect("mls")),
            Some("bench/chan/mod/0"),
            cfg.clone(),
            now,
        )
        .expect("member");
        members.push((name, m));
    }
    let ids: Vec<String> = (0..MEMBERS)
        .map(|i| format!("spiffe://bench.org/m{i}"))
        .collect();
    // Shuttle packets until quiet.
    let pump = |moderator: &mut Moderator, members: &mut Vec<(String, Member)>| loop {
        let mut moved = false;
        while let Some(t) = moderator.poll_transmit() {
            moved = true;
            let p = Packet::decode(&t.packet).expect("packet");
            for (name, m) in members.iter_mut() {
                if t.dest == Dest::Group || t.dest == Dest::Member(name.clone()) {
                    m.handle_packet("bench/chan/mod/0", Some("spiffe://bench.org/mod"), &p, now);
                }
            }
        }
        for (i, (name, m)) in members.iter_mut().enumerate() {
            while let Some(t) = m.poll_transmit() {
                moved = true;
                let p = Packet::decode(&t.packet).expect("packet");
                if t.dest != Dest::Group {
                    moderator.handle_packet(name, Some(&ids[i]), &p, now);
                }
            }
            while m.poll_event().is_some() {}
        }
        while moderator.poll_event().is_some() {}
        if !moved {
            break;
        }
    };
    pump(&mut moderator, &mut members);
    let payload = vec![0xabu8; 1024];
    let start = Instant::now();
    let mut delivered = 0u64;
    for _ in 0..n {
        moderator.publish(&payload, now).expect("publish");
        while let Some(t) = moderator.poll_transmit() {
            let p = Packet::decode(&t.packet).expect("packet");
            for (_, m) in members.iter_mut() {
                m.handle_packet("bench/chan/mod/0", None, &p, now);
                while let Some(e) = m.poll_event() {
                    if let slim_client::session::channel::ChannelEvent::Message { .. } = e {
                        delivered += 1;
                    }
                }
            }
        }
    }
    assert_eq!(delivered, n * MEMBERS as u64);
    n as f64 / start.elapsed().as_secs_f64()
}

/// The MLS work on the critical path of adding one member to a group of `n`
/// (moderator included): the moderator's commit (add + merge), the new
/// member's join from the Welcome (verifies every credential in the tree),
/// and one existing member applying the commit (all existing members do
/// this in parallel, each on its own machine). Median of `reps` adds.
fn add_member(n: usize, reps: usize) -> (Duration, Duration, Duration) {
    let ca = DevCa::generate("bench.org").expect("ca");
    let mk = |p: String| MlsIdentity::new(&ident(&ca, &p)).expect("mls");
    let mut moderator = slim_mls::Group::create(&mk("mod".into()), b"bench-add").expect("group");
    let first = mk("m0".into());
    let rest: Vec<Vec<u8>> = (1..n.saturating_sub(1))
        .map(|i| mk(format!("m{i}")).key_package().expect("kp"))
        .collect();
    let mut kps = vec![first.key_package().expect("kp")];
    kps.extend(rest);
    let c = moderator.add_members(&kps).expect("add");
    moderator.merge_pending_commit().expect("merge");
    let mut existing =
        slim_mls::Group::join(&first, &c.welcome.expect("welcome"), &ca.bundles()).expect("join");
    let (mut commit, mut join, mut process) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..reps {
        let newcomer = mk(format!("new{r}"));
        let kp = newcomer.key_package().expect("kp");
        let t = Instant::now();
        let c = moderator.add_members(&[kp]).expect("add");
        moderator.merge_pending_commit().expect("merge");
        commit.push(t.elapsed());
        let t = Instant::now();
        slim_mls::Group::join(&newcomer, &c.welcome.expect("welcome"), &ca.bundles())
            .expect("join");
        join.push(t.elapsed());
        let t = Instant::now();
        existing.process_commit(&c.commit).expect("process");
        process.push(t.elapsed());
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    (median(commit), median(join), median(process))
}

fn main() {
    let n: u64 = std::env::var("CHANNEL_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    if std::env::var("CHANNEL_BENCH_ADD")
        .map(|v| v != "0")
        .unwrap_or(true)
    {
        println!("add one member to a group of N (MLS work; median of 5)");
        println!(
            "{:>6} {:>12} {:>12} {:>12} {:>14}",
            "N", "commit", "join", "apply", "commit+max"
        );
        for n in [10usize, 100, 1000] {
            let (c, j, a) = add_member(n, 5);
            println!(
                "{n:>6} {:>12.2?} {:>12.2?} {:>12.2?} {:>14.2?}",
                c,
                j,
                a,
                c + j.max(a)
            );
        }
    }
    println!("group channel, 1 KiB messages, moderator -> {MEMBERS} members");
    println!("{:<34} {:>9} {:>12}", "case", "messages", "msgs/s");
    for mls in [true, false] {
        let r = sans_io(mls, n);
        let case = format!("sans-IO machines, MLS {}", if mls { "on" } else { "off" });
        println!("{case:<34} {n:>9} {r:>12.0}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let ca = DevCa::generate("bench.org").expect("ca");
        let cfg = NodeConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..NodeConfig::default()
        };
        let node = slim_actors::start(cfg, &ident(&ca, "node"))
            .await
            .expect("node");
        println!("admission by join request over one node (MLS), group of N before");
        println!("{:>6} {:>12} {:>14}", "N", "joined", "all acked");
        for (k, size) in [4usize, 10, 30].into_iter().enumerate() {
            let (j, c) = admission_over_node(&ca, &node, size, k).await;
            println!("{:>6} {:>12.2?} {:>14.2?}", size, j, c);
        }
        for (k, mls) in [true, false].into_iter().enumerate() {
            let r = over_node(&ca, &node, mls, n, k).await;
            let case = format!("one node, loopback, MLS {}", if mls { "on" } else { "off" });
            println!("{case:<34} {n:>9} {r:>12.0}");
        }
        node.shutdown(Duration::from_secs(1)).await;
    });
}
