//! The SLIM side: subscribers and publishers are `slim_client::Client`s, each
//! its own QUIC connection with mutual TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::future::try_join_all;
use futures::{StreamExt as _, TryStreamExt as _};
use slim_auth::{DevCa, Identity, SpiffeId};
use slim_client::{Client, ClientConfig, ConnState, Event, FLAG_NO_ROUTE_SILENT};
use slim_wire::Name;

use crate::harness::{Closer, Ctl, Mode, Plan, Running, spawn_publisher};
use crate::payload::{PayloadWriter, SeqTracker};

/// Where client identities come from.
pub enum Identities {
    /// One SVID shared by every client (`--identity-dir`).
    Shared(Identity),
    /// A dev CA issuing one SVID per client (`--ca-dir`, or generated).
    Ca(Arc<DevCa>),
}

impl Identities {
    pub fn get(&self, path: &str) -> Result<Identity> {
        match self {
            Identities::Shared(i) => Ok(i.clone()),
            Identities::Ca(ca) => {
                let id = SpiffeId::parse(&format!("spiffe://{}/{path}", ca.trust_domain()))
                    .with_context(|| format!("SPIFFE ID for {path}"))?;
                ca.issue(&id, Duration::from_secs(3600))
                    .with_context(|| format!("issuing an SVID for {id}"))
            }
        }
    }
}

/// Subscriber connections set up at the same time.
const CONNECT_CONCURRENCY: usize = 64;

/// Batch size for `recv_many`.
const RECV_BATCH: usize = 1024;

/// Across two standing nodes: waits until `node` routes `topic` to the
/// subscribers on the other one, so that no measured message meets a node
/// without the route. A probe client publishes an empty message and pings;
/// the node answers a publish nobody receives with "no route" before the
/// pong, so an answer without one means the subscription has arrived. The
/// subscribers skip the probes (real payloads are never empty).
async fn wait_for_route(
    node: SocketAddr,
    topic: &Name,
    ids: &Identities,
    run_id: &str,
) -> Result<()> {
    let name = Name::new(topic.org(), topic.namespace(), "probe", Some(run_id))?;
    let probe = Client::connect(ClientConfig::new(node, name, ids.get("loadtest/probe")?))
        .await
        .with_context(|| format!("route probe: connecting to {node}"))?;
    let t0 = std::time::Instant::now();
    loop {
        let id = probe
            .publish_with(topic, slim_wire::Mode::Multicast, 0, &[])
            .await?;
        probe.ping().await?;
        let Some(e) = probe.take_errors(|i| i == id).into_iter().next() else {
            probe.close().await;
            return Ok(());
        };
        // Only "no route" means the subscription is still on its way; any
        // other refusal will not go away by waiting.
        if e.code != slim_wire::ErrorCode::NO_ROUTE {
            anyhow::bail!("{topic}: {node} refused the route probe: {}", e.reason);
        }
        if t0.elapsed() > Duration::from_secs(10) {
            anyhow::bail!(
                "{topic}: the subscription did not reach {node} within 10 s (is the link up?); \
                 last answer: {}",
                e.reason
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Publishers connect to `node`, subscribers to `sub_node` (the same node,
/// or another one linked to it for cross-node runs).
pub async fn setup(
    node: SocketAddr,
    sub_node: SocketAddr,
    topic: &Name,
    ids: &Identities,
    plan: &Plan,
    ctl: &Ctl,
    run_id: &str,
) -> Result<Running> {
    let mode = match plan.mode {
        Mode::Multicast => slim_wire::Mode::Multicast,
        Mode::Anycast => slim_wire::Mode::Anycast,
    };
    let ns = topic.namespace().to_owned();
    let org = topic.org().to_owned();

    // Subscribers first, all connected and acknowledged before anyone publishes.
    let mut sub_cfgs = Vec::with_capacity(plan.subs);
    for i in 0..plan.subs {
        let name = Name::new(&org, &ns, "sub", Some(&format!("s{i}-{run_id}")))?;
        sub_cfgs.push(ClientConfig::new(
            sub_node,
            name,
            ids.get(&format!("loadtest/sub-{i}"))?,
        ));
    }
    let subs = futures::stream::iter(sub_cfgs.into_iter().enumerate().map(|(i, cfg)| async move {
        let c = Client::connect(cfg)
            .await
            .with_context(|| format!("subscriber {i}: connecting to {sub_node}"))?;
        c.subscribe(topic)
            .await
            .with_context(|| format!("subscriber {i}: subscribing to {topic}"))?;
        anyhow::Ok(c)
    }))
    // Bounded: a 1 -> 1000 fan-out must not start 1000 handshakes at once.
    .buffered(CONNECT_CONCURRENCY)
    .try_collect::<Vec<_>>()
    .await?;
    if sub_node != node {
        wait_for_route(node, topic, ids, run_id).await?;
    }

    let streams = plan.streams();
    let stalled = plan.stalled;
    let mut subscribers = Vec::with_capacity(subs.len());
    for (i, client) in subs.into_iter().enumerate() {
        let ctl = ctl.clone();
        subscribers.push(tokio::spawn(async move {
            let mut stop = ctl.stop_subs.clone();
            let mut tr = SeqTracker::new(streams);
            if i < stalled {
                // A stalled subscriber: subscribed, connection open, never
                // reads. Its SDK buffers up to `inbound_capacity` deliveries,
                // then stops reading QUIC (backpressure, no client-side
                // drop), and the node's outbox for it fills. If the node
                // cuts it, its state leaves Connected: that dates the cut.
                let mut state = client.state();
                let mut watching = true;
                loop {
                    tokio::select! {
                        biased;
                        _ = stop.wait_for(|v| *v) => break,
                        ch = state.changed(), if watching => {
                            if ch.is_err() {
                                // The driver is gone; nothing more to see.
                                watching = false;
                            } else if !matches!(*state.borrow_and_update(), ConnState::Connected { .. }) {
                                ctl.note_stalled_cut();
                            }
                        }
                    }
                }
                return Ok((tr, Box::pin(client.close()) as Closer));
            }
            let mut buf = Vec::with_capacity(RECV_BATCH);
            loop {
                buf.clear();
                let n = tokio::select! {
                    biased;
                    _ = stop.wait_for(|v| *v) => break,
                    n = client.recv_many(&mut buf, RECV_BATCH) => n,
                };
                if n == 0 {
                    break;
                }
                for ev in buf.drain(..) {
                    match ev {
                        // A route probe (`wait_for_route`): no payload.
                        Event::Message(d) if d.payload.is_empty() => {}
                        Event::Message(d) => tr.observe(&d.payload),
                        Event::Error(_) => tr.errors += 1,
                    }
                }
                ctl.delivered[i].0.store(tr.received, Ordering::Relaxed);
            }
            Ok((tr, Box::pin(client.close()) as Closer))
        }));
    }

    let mut pub_cfgs = Vec::with_capacity(plan.pubs);
    for p in 0..plan.pubs {
        let name = Name::new(&org, &ns, "pub", Some(&format!("p{p}-{run_id}")))?;
        pub_cfgs.push(ClientConfig::new(
            node,
            name,
            ids.get(&format!("loadtest/pub-{p}"))?,
        ));
    }
    let pubs = try_join_all(pub_cfgs.into_iter().enumerate().map(|(p, cfg)| async move {
        spawn_publisher(plan, Client::connect(cfg))
            .await
            .context("publisher connect task")?
            .with_context(|| format!("publisher {p}: connecting to {node}"))
    }))
    .await?;

    let mut publishers = Vec::with_capacity(pubs.len());
    for (p, client) in pubs.into_iter().enumerate() {
        let client = Arc::new(client);
        let mut tasks = Vec::with_capacity(plan.pub_tasks);
        for t in 0..plan.pub_tasks {
            let stream = p * plan.pub_tasks + t;
            let mut w = PayloadWriter::new(stream as u32, plan.size)?;
            let client = Arc::clone(&client);
            let topic = topic.clone();
            let mut ctl = ctl.clone();
            tasks.push(spawn_publisher(plan, async move {
                ctl.started().await;
                let counter = &ctl.sent[stream].0;
                let mut seq = 0u64;
                while !ctl.stopping() {
                    // Check the stop flag every few messages only.
                    for _ in 0..64 {
                        client
                            .publish_with(&topic, mode, FLAG_NO_ROUTE_SILENT, w.with_seq(seq))
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
            // As NATS's flush (a PING the server answers after processing
            // everything before it): the node has routed every publish once
            // its pong is back, so what the drain waits for is only what
            // sits in the subscribers' queues. A ping that times out (a
            // node still working through a flow-controlled backlog) is
            // asked again; the harness bounds the whole wait.
            client.flush().await;
            while let Err(e) = client.ping().await {
                if matches!(e, slim_client::ClientError::Closed) {
                    anyhow::bail!("publisher {p}: connection closed before the node confirmed");
                }
            }
            let close: Closer = match Arc::try_unwrap(client) {
                Ok(c) => Box::pin(c.close()),
                // Unreachable: every task holding a clone has ended.
                Err(c) => Box::pin(async move { drop(c) }),
            };
            Ok(close)
        }));
    }

    Ok(Running {
        publishers,
        subscribers,
        extra: None,
    })
}
