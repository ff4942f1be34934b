//! Supervision: each kind of actor of a node is killed the way a crash would
//! kill it (no `post_stop` runs), and the node recovers — traffic flows again
//! through the restarted actor, and nothing of the dead one is left in the
//! registry, the connection table or the link table.

use std::time::Duration;

use slim_actors::NodeHandle;
use slim_actors::node::{ChildKind, Victim};
use slim_client::Client;
use slim_tests::*;
use slim_wire::{Mode, Name};

const T: Duration = Duration::from_secs(20);

/// Publishes `tag` until the subscriber receives that very message (the path
/// may be reconverging after a kill); earlier tags still in flight are
/// skipped, so a leftover never counts as a delivery.
async fn flows(publisher: &Client, subscriber: &Client, chan: &Name, tag: u64) {
    assert_eventually(
        T,
        &format!("message {tag} reaches the subscriber"),
        || async {
            let _ = publisher
                .publish(chan, Mode::Multicast, &seq_payload(tag, 16))
                .await;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
            while let Ok(Some(d)) =
                tokio::time::timeout_at(deadline, subscriber.next_message()).await
            {
                if payload_seq(&d.payload) == tag {
                    return true;
                }
            }
            false
        },
    )
    .await;
}

async fn link_settled(node: &NodeHandle) {
    assert_eventually(
        T,
        &format!("{} has exactly one link, and it is up", node.node_id()),
        || async { node.links().len() == 1 && links_up(node) == 1 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_actor_kind_killed_the_node_recovers_and_leaks_nothing() {
    init_tracing();
    let pki = Pki::new("example.org");
    let b = start_peer_node(&pki, "b", vec![], |_| {}).await;
    let a = start_peer_node(&pki, "a", vec![peer_spec(&b)], |_| {}).await;
    let chan = name("acme/ops/alerts");
    let sub = client(&pki, a.local_addr(), "acme/cluster-a/sub").await;
    sub.subscribe(&chan).await.unwrap();
    let publ = client(&pki, b.local_addr(), "acme/cluster-b/pub").await;
    link_settled(&a).await;
    flows(&publ, &sub, &chan, 1).await;
    // The baseline counts b's names too (its client's full and service
    // names, learnt through interest): wait until a has routes to both, or
    // a name arriving after the baseline reads as a leak below.
    let publ_full = publ.name().as_str().to_owned();
    let publ_service = publ.name().service_str().to_owned();
    assert_eventually(T, "a knows b's client by name", || async {
        [&publ_full, &publ_service]
            .iter()
            .all(|n| a.registry().lookup(n).is_some_and(|r| !r.is_empty()))
    })
    .await;
    let (subs0, names0) = (a.registry().subscription_count(), a.registry().name_count());

    // A connection task (a plain task, "killed" by a panic in it): its
    // client reconnects; the dead connection's entries are gone.
    let victim = client(&pki, a.local_addr(), "acme/cluster-a/victim").await;
    let only = name("acme/ops/victim-only");
    victim.subscribe(&only).await.unwrap();
    let old = a
        .connections()
        .into_iter()
        .find(|c| c.name == victim.name().as_str())
        .expect("victim connected")
        .id;
    assert_eq!(
        a.kill_actor(Victim::Connection(victim.name().as_str()))
            .await,
        1
    );
    assert_eventually(T, "the killed connection left no trace", || async {
        a.connections().iter().all(|c| c.id != old) && a.registry().names_of(old).is_empty()
    })
    .await;
    // The SDK reconnects and restores its subscription through a new connection.
    flows(&publ, &victim, &only, 2).await;
    victim.shutdown().await;
    assert_eventually(T, "registry back to its size before the victim", || async {
        a.registry().subscription_count() == subs0 && a.registry().name_count() == names0
    })
    .await;

    // The subscription table: restarted, resumes from the registry.
    assert_eq!(a.kill_actor(Victim::Child(ChildKind::Table)).await, 1);
    let late = client(&pki, a.local_addr(), "acme/cluster-a/late").await;
    let chan2 = name("acme/ops/after-table-restart");
    assert_eventually(
        T,
        "a subscribe succeeds after the table restarted",
        || async { late.subscribe(&chan2).await.is_ok() },
    )
    .await;
    flows(&publ, &late, &chan2, 3).await;
    flows(&publ, &sub, &chan, 4).await;

    // The federation actor: restarted; its link comes back; the dead
    // incarnation's link entries are gone.
    assert_eq!(a.kill_actor(Victim::Child(ChildKind::Federation)).await, 1);
    link_settled(&a).await;
    link_settled(&b).await;
    flows(&publ, &sub, &chan, 5).await;

    // A link actor, on the dialling side, then on the accepting side.
    assert!(a.kill_actor(Victim::Link("b")).await >= 1);
    link_settled(&a).await;
    flows(&publ, &sub, &chan, 6).await;
    assert!(b.kill_actor(Victim::Link("a")).await >= 1);
    link_settled(&b).await;
    link_settled(&a).await;
    flows(&publ, &sub, &chan, 7).await;

    // The listener: restarted; new clients connect again.
    assert_eq!(a.kill_actor(Victim::Child(ChildKind::Listener)).await, 1);
    let newcomer = client(&pki, a.local_addr(), "acme/cluster-a/newcomer").await;
    let chan3 = name("acme/ops/after-listener-restart");
    newcomer.subscribe(&chan3).await.unwrap();
    flows(&publ, &newcomer, &chan3, 8).await;

    // Nothing of any dead actor is left: one connection per live client.
    late.shutdown().await;
    newcomer.shutdown().await;
    assert_eventually(T, "only the first subscriber is left on a", || async {
        a.connections().len() == 1
            && a.registry().subscription_count() == subs0
            && a.registry().name_count() == names0
    })
    .await;
}
