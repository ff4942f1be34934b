//! The session machine across a partition, in virtual time: the node's
//! "no route" answers must not spend the retry budget meant for losses,
//! and a close waits for the peer to come back (within the grace).

use super::*;
use crate::session::p2p::handshake::accept_open;
use crate::session::p2p::types::OPEN_RELIABLE;

const SID: u64 = 0x5e55;
const MAX_RETRIES: u32 = 3;
const GRACE: Duration = Duration::from_secs(600);

struct Probe {
    m: P2pMachine,
    t0: Instant,
    now: Instant,
    me: Name,
    peer: Name,
}

impl Probe {
    fn new() -> Probe {
        let cfg = P2pConfig {
            reliability: Reliability::Reliable(reliable::Config {
                initial_rto: Duration::from_millis(100),
                max_rto: Duration::from_secs(5),
                max_retries: MAX_RETRIES,
                ..reliable::Config::default()
            }),
            peer_absent_grace: GRACE,
            keep_alive: None,
            idle_timeout: None,
            ..P2pConfig::default()
        };
        let now = Instant::now();
        let me = Name::parse("acme/p2p/echo/b1").unwrap();
        let peer = Name::parse("acme/p2p/client/a1").unwrap();
        let mut open = Packet::new(SID, Kind::Open, peer.as_str());
        open.flags = OPEN_RELIABLE;
        let inc = Incoming {
            packet: open,
            from: peer.clone(),
            from_identity: None,
            name: me.without_instance(),
            mode: Mode::Anycast,
        };
        let m = accept_open(&inc, &me, &cfg, now).unwrap();
        let mut p = Probe {
            m,
            t0: now,
            now,
            me,
            peer,
        };
        p.data_sent(); // the Accept
        p
    }

    fn receive(&mut self, p: Packet) {
        let inc = Incoming {
            packet: p,
            from: self.peer.clone(),
            from_identity: None,
            name: self.me.clone(),
            mode: Mode::Unicast,
        };
        self.m.handle_packet(inc, self.now);
    }

    /// What the mux makes of the node's `NO_ROUTE` for our publish.
    fn no_route(&mut self) {
        let mut p = Packet::new(SID, Kind::Unreachable, self.peer.as_str());
        p.flags = UNREACHABLE_FROM_NODE;
        p.seq = u64::from(ErrorCode::NO_ROUTE.0);
        p.body = Bytes::from_static(b"no route");
        self.receive(p);
    }

    fn ack(&mut self, base: u64, flags: u16) {
        let mut p = Packet::new(SID, Kind::Ack, self.peer.as_str());
        p.base = base;
        p.flags = flags;
        self.receive(p);
    }

    /// Advances virtual time to the next deadline and fires it.
    fn fire(&mut self) {
        let t = self.m.poll_timeout().expect("a deadline");
        self.now = self.now.max(t);
        self.m.handle_timeout(self.now);
    }

    /// Drains what was published: the data packets (seqs) among them.
    fn data_sent(&mut self) -> Vec<u64> {
        std::iter::from_fn(|| self.m.poll_transmit())
            .map(|t| Packet::decode(&t.bytes).unwrap())
            .filter(|p| p.kind == Kind::Data)
            .map(|p| p.seq)
            .collect()
    }

    fn events(&mut self) -> Vec<P2pEvent> {
        std::iter::from_fn(|| self.m.poll_event()).collect()
    }
}

/// Fifteen and more "no route" answers within the grace, far more than
/// the retry budget, and the message is still being retransmitted; when
/// the peer is back, it is acknowledged and a close completes.
#[test]
fn no_route_within_the_grace_does_not_spend_the_retry_budget() {
    let mut p = Probe::new();
    assert!(matches!(
        p.m.handle_send(Bytes::from_static(b"m0"), p.now),
        SendStatus::Sent(0)
    ));
    assert_eq!(p.data_sent(), vec![0]);
    let rounds = 4 * MAX_RETRIES + 3;
    let mut retransmissions = 0;
    for _ in 0..rounds {
        p.no_route();
        // Each retransmission is answered "no route" in turn.
        while retransmissions < rounds {
            p.fire();
            let sent = p.data_sent();
            if !sent.is_empty() {
                // A probe and the timer may both be due.
                assert!(sent.iter().all(|&s| s == 0), "{sent:?}");
                retransmissions += 1;
                break;
            }
        }
    }
    assert!(p.now < p.t0 + GRACE, "the test stays within the grace");
    assert_eq!(retransmissions, rounds);
    assert!(p.m.stats().sender.retransmitted >= u64::from(rounds));
    assert_eq!(p.m.stats().sender.failed, 0);
    assert!(!p.m.is_done());
    assert_eq!(p.events(), vec![], "nothing given up, the session lives");

    // The peer is back: its ack resolves the message; a close completes.
    p.ack(1, 0);
    assert_eq!(p.m.stats().sender.acked, 1);
    p.m.handle_close(p.now);
    p.ack(1, reliable::FLAG_CLOSE_ACK);
    assert_eq!(p.m.poll_close(), Some(Ok(())));
    assert_eq!(p.events(), vec![]);
}

/// The retry budget still counts once the peer is heard again: a
/// message whose retransmissions go unanswered after the partition is
/// given up on after `max_retries` more, and the session goes on.
#[test]
fn budget_counts_again_once_the_peer_answers() {
    let mut p = Probe::new();
    p.m.handle_send(Bytes::from_static(b"m0"), p.now);
    p.data_sent();
    for _ in 0..10 {
        p.no_route();
        p.fire();
    }
    assert_eq!(p.m.stats().sender.failed, 0);
    // A keep-alive-like ack that resolves nothing: the peer is there.
    p.ack(0, 0);
    // Timer retransmissions only: probes are free anyway.
    let before = p.m.stats().sender.timeouts;
    let mut events = Vec::new();
    while events.is_empty() {
        p.fire();
        p.data_sent();
        events = p.events();
    }
    let after = p.m.stats().sender.timeouts - before;
    assert_eq!(after, u64::from(MAX_RETRIES), "{events:?}");
    assert!(
        // The held retransmissions were made, but not charged.
        matches!(events[..], [P2pEvent::DeliveryFailed { seq: 0, attempts }] if attempts > MAX_RETRIES + 1),
        "{events:?}"
    );
    assert!(!p.m.is_done(), "a failed message alone does not end it");
}

/// Past the grace, "no route" is final: the peer is gone.
#[test]
fn no_route_past_the_grace_fails_the_session() {
    let mut p = Probe::new();
    p.m.handle_send(Bytes::from_static(b"m0"), p.now);
    p.data_sent();
    p.no_route();
    for _ in 0..10_000 {
        if p.m.is_done() {
            break;
        }
        p.fire();
        if !p.data_sent().is_empty() {
            p.no_route();
        }
    }
    assert!(p.m.is_done());
    assert!(p.now >= p.t0 + GRACE, "not before the grace ran out");
    let events = p.events();
    assert!(
        matches!(
            events.last(),
            Some(P2pEvent::Failed(SessionError::Unreachable { .. }))
        ),
        "{events:?}"
    );
}

/// A close whose messages are never acknowledged (a silent peer, no
/// "no route") gives up within the retry budget, and its error says how
/// many messages went unacknowledged.
#[test]
fn close_gives_up_saying_how_many_were_unacknowledged() {
    let mut p = Probe::new();
    for i in 0..3u8 {
        p.m.handle_send(Bytes::from(vec![i]), p.now);
    }
    p.ack(1, 0);
    p.data_sent();
    p.m.handle_close(p.now);
    let mut outcome = None;
    for _ in 0..1000 {
        p.fire();
        p.data_sent();
        outcome = p.m.poll_close();
        if outcome.is_some() {
            break;
        }
    }
    match outcome {
        Some(Err(e @ SessionError::CloseIncomplete { unacked, sent, .. })) => {
            assert_eq!((unacked, sent), (2, 3));
            assert!(
                e.to_string().contains("2 of 3 messages unacknowledged"),
                "{e}"
            );
        }
        other => panic!("close outcome {other:?}"),
    }
    let failed: Vec<u64> = p
        .events()
        .into_iter()
        .filter_map(|e| match e {
            P2pEvent::DeliveryFailed { seq, .. } => Some(seq),
            _ => None,
        })
        .collect();
    assert_eq!(failed, vec![1, 2]);
}

/// The peer closes while a message of its is still missing: the
/// close-ack to its `Close` says so; once the retransmission arrives, a
/// second close-ack goes out at once (before `PeerClosed`), without
/// waiting for the next `Close`.
#[test]
fn completing_the_peers_close_confirms_it_at_once() {
    let mut p = Probe::new();
    let close_acks = |p: &mut Probe| -> Vec<u64> {
        std::iter::from_fn(|| p.m.poll_transmit())
            .map(|t| Packet::decode(&t.bytes).unwrap())
            .filter(|a| a.kind == Kind::Ack && a.flags & reliable::FLAG_CLOSE_ACK != 0)
            .map(|a| a.base)
            .collect()
    };
    let data = |p: &mut Probe, seq: u64| {
        let mut d = Packet::new(SID, Kind::Data, p.peer.as_str());
        d.seq = seq;
        d.body = Bytes::from_static(b"x");
        p.receive(d);
    };
    data(&mut p, 1);
    let mut c = Packet::new(SID, Kind::Close, p.peer.as_str());
    c.base = 2;
    c.seq = 0;
    p.receive(c.clone());
    assert_eq!(close_acks(&mut p), vec![0], "0 still missing");
    assert!(!p.events().contains(&P2pEvent::PeerClosed { sent: 2 }));
    data(&mut p, 0);
    assert_eq!(close_acks(&mut p), vec![2]);
    assert_eq!(p.events().last(), Some(&P2pEvent::PeerClosed { sent: 2 }));
    // A retransmitted `Close` is still answered (the ack may be lost).
    p.receive(c);
    assert_eq!(close_acks(&mut p), vec![2]);
}

/// A close complete on arrival is confirmed once, not twice.
#[test]
fn a_close_complete_on_arrival_is_confirmed_once() {
    let mut p = Probe::new();
    let mut c = Packet::new(SID, Kind::Close, p.peer.as_str());
    c.base = 0;
    p.receive(c);
    let acks = std::iter::from_fn(|| p.m.poll_transmit()).count();
    assert_eq!(acks, 1);
    assert_eq!(p.events(), vec![P2pEvent::PeerClosed { sent: 0 }]);
}

/// A close begun during a partition keeps waiting while the node says
/// "no route" (within the grace), well past what its attempts would
/// allow, and completes once the peer is back.
#[test]
fn close_during_a_partition_completes_after_the_peer_returns() {
    let mut p = Probe::new();
    p.m.handle_send(Bytes::from_static(b"m0"), p.now);
    p.data_sent();
    p.m.handle_close(p.now);
    for _ in 0..(4 * (MAX_RETRIES + CLOSE_ATTEMPTS)) {
        p.no_route();
        p.fire();
        p.data_sent();
    }
    assert!(p.now < p.t0 + GRACE);
    assert_eq!(p.m.poll_close(), None, "still waiting for the peer");
    assert_eq!(p.events(), vec![]);
    p.ack(1, reliable::FLAG_CLOSE_ACK);
    assert_eq!(p.m.poll_close(), Some(Ok(())));
    assert_eq!(p.events(), vec![]);
}
