//! Table tests of the routing engine: every delivery mode, loop prevention,
//! refusals and slow-consumer outcomes, on a real registry and real outboxes,
//! with no socket and no runtime.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use slim_wire::{FLAG_NO_ROUTE_SILENT, Limits, Mode, NodeIds, PublishView, codec};

use super::*;
use crate::outbox::{Outbox, SlowAction, SlowConsumerPolicy};

const SVC: &str = "org/ns/svc";
const FULL: &str = "org/ns/svc/1";

struct Fixture {
    reg: Registry,
    /// Keeps every queue's receiver alive (a dropped receiver closes it).
    rxs: Vec<crate::outbox::QueueRx>,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            reg: Registry::new(),
            rxs: Vec::new(),
        }
    }

    fn outbox(&mut self, frames: usize, policy: SlowConsumerPolicy) -> Arc<Outbox> {
        let (o, rx) = Outbox::new(frames, 1 << 20, policy);
        self.rxs.push(rx);
        Arc::new(o)
    }

    /// A local subscriber `conn` of `name`.
    fn sub(&mut self, conn: ConnId, name: &str) -> Arc<Outbox> {
        let o = self.outbox(16, SlowConsumerPolicy::drop_newest());
        assert!(self.reg.add(conn, &o, name));
        o
    }

    /// Remote interest in `name`: one group per (peer link, origins).
    fn remote(&mut self, name: &str, groups: &[(&str, &[&str])]) {
        let remote = groups
            .iter()
            .enumerate()
            .map(|(i, (peer, origins))| RemoteGroup {
                peer: Arc::from(*peer),
                link: 1000 + i as u64,
                outbox: self.outbox(16, SlowConsumerPolicy::drop_newest()),
                origins: origins.iter().map(|o| Arc::from(*o)).collect(),
            })
            .collect();
        self.reg.set_remote(name, remote);
    }

    fn env(&self) -> Env<'_> {
        Env {
            registry: &self.reg,
            hook: None,
            memo: None,
        }
    }
}

fn publish(name: &str, mode: Mode) -> PublishView<'_> {
    PublishView {
        name,
        mode,
        flags: 0,
        msg_id: 7,
        payload: b"hello",
    }
}

fn allow(_: &str) -> Result<(), Denied> {
    Ok(())
}

fn plan(d: Decision<'_>) -> Plan<'_> {
    match d {
        Decision::Route(p) => p,
        other => panic!("expected a route, got {other:?}"),
    }
}

/// An encoded `Forward` body (kind byte stripped), to be viewed.
fn forward_body(name: &str, mode: Mode, path: &[&str], dests: &[&str]) -> BytesMut {
    let mut b = BytesMut::new();
    codec::encode_forward_raw(
        name,
        mode,
        FULL,
        Some("spiffe://td/a"),
        9,
        NodeIds {
            ids: path.iter().copied(),
            len: path.len(),
            then: None,
        },
        NodeIds {
            ids: dests.iter().copied(),
            len: dests.len(),
            then: None,
        },
        b"payload",
        &Limits::default(),
        &mut b,
    )
    .expect("encode");
    b.split_off(5)
}

fn view(body: &[u8]) -> ForwardView<'_> {
    slim_wire::forward_view(body)
        .expect("valid")
        .expect("canonical")
}

#[test]
fn multicast_goes_to_every_local_subscriber_and_one_copy_per_link() {
    let mut f = Fixture::new();
    for c in 1..=3 {
        f.sub(c, SVC);
    }
    f.remote(SVC, &[("b", &["b", "d"]), ("c", &["c"])]);
    let p = plan(route_publish(
        &mut f.env(),
        FULL,
        &publish(SVC, Mode::Multicast),
        allow,
    ));
    assert_eq!(p.local, Local::All);
    assert_eq!(p.local_subs().len(), 3);
    assert_eq!(p.hops.len(), 2);
    assert_eq!(p.dests(&p.hops[0]), vec!["b", "d"]);
    assert_eq!(p.dests(&p.hops[1]), vec!["c"]);
    assert_eq!((p.unreached, p.loops), (0, 0));
}

#[test]
fn multicast_with_only_remote_interest_delivers_nothing_locally() {
    let mut f = Fixture::new();
    f.remote(SVC, &[("b", &["b"])]);
    let p = plan(route_publish(
        &mut f.env(),
        FULL,
        &publish(SVC, Mode::Multicast),
        allow,
    ));
    assert_eq!(p.local, Local::None);
    assert!(p.local_subs().is_empty());
    assert_eq!(p.hops.len(), 1);
}

#[test]
fn anycast_round_robins_over_local_subscribers_before_any_link() {
    let mut f = Fixture::new();
    for c in 1..=3 {
        f.sub(c, SVC);
    }
    f.remote(SVC, &[("b", &["b"])]);
    let picks: Vec<ConnId> = (0..6)
        .map(|_| {
            let p = plan(route_publish(
                &mut f.env(),
                FULL,
                &publish(SVC, Mode::Anycast),
                allow,
            ));
            assert!(p.hops.is_empty(), "a local subscriber wins over a link");
            p.local_subs()[0].conn
        })
        .collect();
    assert_eq!(picks, vec![1, 2, 3, 1, 2, 3]);
}

#[test]
fn anycast_skips_a_subscriber_whose_queue_is_closed() {
    let mut f = Fixture::new();
    f.sub(1, SVC);
    let closed = f.sub(2, SVC);
    closed.close();
    for _ in 0..4 {
        let p = plan(route_publish(
            &mut f.env(),
            FULL,
            &publish(SVC, Mode::Anycast),
            allow,
        ));
        assert_eq!(p.local_subs()[0].conn, 1);
    }
}

#[test]
fn anycast_without_local_subscriber_picks_one_remote_node_round_robin() {
    let mut f = Fixture::new();
    f.remote(SVC, &[("b", &["b", "d"]), ("c", &["c"])]);
    let picked: Vec<String> = (0..6)
        .map(|_| {
            let p = plan(route_publish(
                &mut f.env(),
                FULL,
                &publish(SVC, Mode::Anycast),
                allow,
            ));
            assert_eq!(p.local, Local::None);
            assert_eq!(p.hops.len(), 1, "anycast sends exactly one copy");
            let d = p.dests(&p.hops[0]);
            assert_eq!(d.len(), 1);
            d[0].to_owned()
        })
        .collect();
    assert_eq!(picked, vec!["b", "d", "c", "b", "d", "c"]);
}

#[test]
fn unicast_needs_an_instance_and_that_check_comes_before_authorization() {
    let f = Fixture::new();
    let d = route_publish(&mut f.env(), FULL, &publish(SVC, Mode::Unicast), |_| {
        panic!("authorization must not be asked for a malformed unicast")
    });
    match d {
        Decision::Refuse(r) => {
            assert_eq!(r, Refusal::BadName);
            assert_eq!(r.code(), ErrorCode::BAD_NAME);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unicast_to_a_full_name_reaches_its_owner() {
    let mut f = Fixture::new();
    f.sub(4, FULL);
    let p = plan(route_publish(
        &mut f.env(),
        "org/ns/other/1",
        &publish(FULL, Mode::Unicast),
        allow,
    ));
    assert_eq!(p.local_subs()[0].conn, 4);
}

#[test]
fn a_denied_publish_is_refused_with_the_policy_reason() {
    let mut f = Fixture::new();
    f.sub(1, SVC);
    let d = route_publish(&mut f.env(), FULL, &publish(SVC, Mode::Multicast), |_| {
        Err(Denied::UnknownIdentity {
            id: "spiffe://td/x".into(),
        })
    });
    match d {
        Decision::Refuse(r @ Refusal::Unauthorized(_)) => {
            assert_eq!(r.code(), ErrorCode::UNAUTHORIZED);
            assert!(r.reason().contains("spiffe://td/x"), "{}", r.reason());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_subscriber_is_refused_unless_the_publisher_asked_for_silence() {
    let mut f = Fixture::new();
    f.sub(1, "org/ns/elsewhere");
    for mode in [Mode::Anycast, Mode::Multicast] {
        match route_publish(&mut f.env(), FULL, &publish(SVC, mode), allow) {
            Decision::Refuse(r) => {
                assert_eq!(r.code(), ErrorCode::NO_ROUTE);
                assert_eq!(r.reason(), format!("no subscriber for {SVC}"));
            }
            other => panic!("{other:?}"),
        }
        let mut p = publish(SVC, mode);
        p.flags = FLAG_NO_ROUTE_SILENT;
        assert!(matches!(
            route_publish(&mut f.env(), FULL, &p, allow),
            Decision::Silent(Silent::NoRouteSilent)
        ));
    }
}

#[test]
fn the_hook_sees_the_sender_and_can_drop() {
    let mut f = Fixture::new();
    f.sub(1, SVC);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let hook: RouteHook = Arc::new(move |r: &RoutedFrame<'_>| {
        s.lock()
            .unwrap()
            .push((r.name.to_owned(), r.from.to_owned()));
        if r.payload == b"drop me" {
            HookVerdict::Drop
        } else {
            HookVerdict::Forward
        }
    });
    let mut env = Env {
        registry: &f.reg,
        hook: Some(&hook),
        memo: None,
    };
    assert!(matches!(
        route_publish(&mut env, FULL, &publish(SVC, Mode::Multicast), allow),
        Decision::Route(_)
    ));
    let mut p = publish(SVC, Mode::Multicast);
    p.payload = b"drop me";
    assert!(matches!(
        route_publish(&mut env, FULL, &p, allow),
        Decision::Silent(Silent::Hook)
    ));
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!(seen.lock().unwrap()[0], (SVC.to_owned(), FULL.to_owned()));
}

#[test]
fn a_forward_with_a_bad_path_is_dropped_as_a_loop() {
    let mut f = Fixture::new();
    f.sub(1, SVC);
    let cases: &[(&[&str], &str)] = &[
        (&[], "empty path"),
        (&["x", "c"], "path does not end at the sending peer"),
        (&["me", "b"], "path already holds this node"),
        (&["x1", "x2", "x3", "b"], "path at max_hops"),
    ];
    for (path, why) in cases {
        let body = forward_body(SVC, Mode::Multicast, path, &["me"]);
        let d = route_forward(&mut f.env(), "me", 4, "b", &view(&body));
        assert!(
            matches!(d, Decision::Silent(Silent::BadPath)),
            "{why}: {d:?}"
        );
    }
    let body = forward_body(SVC, Mode::Multicast, &["x", "b"], &["me"]);
    assert!(matches!(
        route_forward(&mut f.env(), "me", 4, "b", &view(&body)),
        Decision::Route(_)
    ));
}

#[test]
fn a_forward_is_delivered_here_and_carried_on_for_the_other_destinations() {
    let mut f = Fixture::new();
    f.sub(1, SVC);
    f.sub(2, SVC);
    // Via link c: nodes c and e; via link d: node d.
    f.remote(SVC, &[("c", &["c", "e"]), ("d", &["d"])]);
    let body = forward_body(SVC, Mode::Multicast, &["a", "b"], &["me", "e", "d"]);
    let p = plan(route_forward(&mut f.env(), "me", 8, "b", &view(&body)));
    assert_eq!(p.local, Local::All);
    assert_eq!(p.local_subs().len(), 2);
    assert_eq!(p.hops.len(), 2);
    assert_eq!(p.group(&p.hops[0]).peer.as_ref(), "c");
    assert_eq!(
        p.dests(&p.hops[0]),
        vec!["e"],
        "only the destinations beyond c"
    );
    assert_eq!(p.dests(&p.hops[1]), vec!["d"]);
    assert_eq!((p.unreached, p.loops), (0, 0));
}

#[test]
fn a_forward_never_goes_back_through_a_node_on_its_path() {
    let mut f = Fixture::new();
    // Our route to e goes through a, which the message already crossed.
    f.remote(SVC, &[("a", &["e"]), ("d", &["d"])]);
    let body = forward_body(SVC, Mode::Multicast, &["a", "b"], &["e", "d"]);
    let p = plan(route_forward(&mut f.env(), "me", 8, "b", &view(&body)));
    assert_eq!(p.loops, 1);
    assert_eq!(p.hops.len(), 1);
    assert_eq!(p.dests(&p.hops[0]), vec!["d"]);
}

#[test]
fn forward_destinations_no_route_reaches_are_counted() {
    let mut f = Fixture::new();
    f.remote(SVC, &[("d", &["d"])]);
    // "me" has no local subscriber; "z" is unknown.
    let body = forward_body(SVC, Mode::Multicast, &["b"], &["me", "z", "d"]);
    let p = plan(route_forward(&mut f.env(), "me", 8, "b", &view(&body)));
    assert_eq!(p.local, Local::None);
    assert_eq!(p.unreached, 2);
    assert_eq!(p.hops.len(), 1);

    let body = forward_body("org/ns/unknown", Mode::Multicast, &["b"], &["me", "d"]);
    assert!(matches!(
        route_forward(&mut f.env(), "me", 8, "b", &view(&body)),
        Decision::Silent(Silent::NoRoute { n: 2 })
    ));
}

#[test]
fn an_anycast_forward_to_this_node_picks_one_local_subscriber() {
    let mut f = Fixture::new();
    f.sub(1, SVC);
    f.sub(2, SVC);
    let body = forward_body(SVC, Mode::Anycast, &["b"], &["me"]);
    let a = plan(route_forward(&mut f.env(), "me", 8, "b", &view(&body)));
    let b = plan(route_forward(&mut f.env(), "me", 8, "b", &view(&body)));
    assert_eq!(a.local_subs().len(), 1);
    assert_ne!(a.local_subs()[0].conn, b.local_subs()[0].conn);
}

/// Subscriber `conn` with the queue `outbox`.
fn sub(conn: ConnId, outbox: &Arc<Outbox>) -> Sub {
    Sub {
        conn,
        outbox: Arc::clone(outbox),
    }
}

#[test]
fn a_run_of_frames_counts_each_of_them_whatever_becomes_of_it() {
    let mut f = Fixture::new();
    let drop_newest = f.outbox(1, SlowConsumerPolicy::drop_newest());
    let closed = f.outbox(1, SlowConsumerPolicy::drop_newest());
    closed.close();
    let mut t = Tally::default();
    let run = Bytes::from_static(b"five frames");
    assert_eq!(
        t.push_sub(&sub(1, &drop_newest), run.clone(), 5),
        Next::Done
    );
    assert_eq!((t.deliveries, t.slow), (5, 0), "queued: five deliveries");
    assert_eq!(
        t.push_sub(&sub(1, &drop_newest), run.clone(), 7),
        Next::Done
    );
    assert_eq!(
        (t.deliveries, t.slow, t.declared),
        (5, 7, 1),
        "a full queue drops the whole run: seven drops, one declaration"
    );
    assert_eq!(
        drop_newest.dropped(),
        7,
        "the outbox counts frames, not items"
    );
    assert_eq!(t.push_sub(&sub(2, &closed), run.clone(), 3), Next::Done);
    assert_eq!(t.gone, 3);
}

#[test]
fn tally_applies_each_slow_consumer_policy() {
    let mut f = Fixture::new();
    let drop_newest = f.outbox(1, SlowConsumerPolicy::drop_newest());
    let disconnect = f.outbox(
        1,
        SlowConsumerPolicy::wait(Duration::ZERO, SlowAction::Disconnect),
    );
    let waiting = f.outbox(1, SlowConsumerPolicy::default());
    let closed = f.outbox(1, SlowConsumerPolicy::drop_newest());
    closed.close();
    let mut t = Tally::default();
    let frame = Bytes::from_static(b"x");
    assert_eq!(
        t.push_sub(&sub(1, &drop_newest), frame.clone(), 1),
        Next::Done
    );
    assert_eq!(
        t.push_sub(&sub(1, &drop_newest), frame.clone(), 1),
        Next::Done
    );
    assert_eq!(
        t.push_sub(&sub(1, &drop_newest), frame.clone(), 1),
        Next::Done
    );
    assert_eq!(
        (t.deliveries, t.slow, t.declared),
        (1, 2, 1),
        "full queue: newest dropped; declared slow once"
    );
    assert_eq!(
        t.push_sub(&sub(2, &disconnect), frame.clone(), 1),
        Next::Done
    );
    // Full, and the deadline (zero) is over: disconnect connection 2.
    assert_eq!(
        t.push_sub(&sub(2, &disconnect), frame.clone(), 1),
        Next::Disconnect(2)
    );
    // The default policy waits: the frame comes back to the driver, nothing
    // is counted as delivered or dropped yet.
    assert_eq!(t.push_sub(&sub(4, &waiting), frame.clone(), 1), Next::Done);
    let before = (t.deliveries, t.slow, t.gone);
    assert_eq!(
        t.push_sub(&sub(4, &waiting), frame.clone(), 1),
        Next::Wait(frame.clone())
    );
    assert_eq!((t.deliveries, t.slow, t.gone), before);
    // Pushes after the verdict find connection 2's queue closed.
    let before = (t.deliveries, t.slow, t.gone);
    assert_eq!(t.push_sub(&sub(3, &closed), frame.clone(), 1), Next::Done);
    assert_eq!(
        (t.deliveries, t.slow, t.gone),
        (before.0, before.1, before.2 + 1),
        "a closed queue is neither delivered nor slow: the subscriber is gone"
    );
    assert_eq!(
        &t.slow_conns[..t.slow_n],
        &[1, 2],
        "each slow subscriber noted once, for the log"
    );

    let link = |outbox| RemoteGroup {
        peer: Arc::from("b"),
        link: 9,
        outbox,
        origins: vec![Arc::from("b")],
    };
    let push_link = |t: &mut Tally, g: &RemoteGroup, frame: Bytes, frames| {
        t.push_link(&g.outbox, &g.peer, frame, frames)
    };
    let waiting_link = link(f.outbox(1, SlowConsumerPolicy::default()));
    assert_eq!(
        push_link(&mut t, &waiting_link, frame.clone(), 1),
        Next::Done
    );
    assert!(matches!(
        push_link(&mut t, &waiting_link, frame.clone(), 1),
        Next::Wait(_)
    ));
    let fire_and_forget = link(f.outbox(1, SlowConsumerPolicy::drop_newest()));
    assert_eq!(
        push_link(&mut t, &fire_and_forget, frame.clone(), 1),
        Next::Done
    );
    assert_eq!(
        push_link(&mut t, &fire_and_forget, frame, 3),
        Next::Done,
        "a run of 3 forwards"
    );
    assert_eq!(t.link_drops, 3, "each frame of a dropped run counts");
    assert_eq!(t.slow_link.as_deref(), Some("b"), "the slow peer is named");
    let going_down = link(f.outbox(4, SlowConsumerPolicy::default()));
    going_down.outbox.close();
    assert_eq!(
        push_link(&mut t, &going_down, Bytes::from_static(b"run"), 2),
        Next::Done
    );
    assert_eq!(
        (t.link_gone, t.link_drops),
        (2, 3),
        "a closed link's copies are counted as gone, not as queue drops"
    );
    assert_eq!(
        t.gone_link.as_deref(),
        Some("b"),
        "the gone link's peer is named"
    );
}
