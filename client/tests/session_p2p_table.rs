//! Table tests of the bound p2p session machine's transitions: from a
//! state, one input, then exactly which packets went out, which events the
//! application got, what the close answered, and whether the session is
//! over. Time is virtual (`now` is passed in).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slim_client::session::mux::UNREACHABLE_FROM_NODE;
use slim_client::session::p2p::{
    CLOSE_ATTEMPTS, OPEN_RELIABLE, P2pConfig, P2pEvent, P2pMachine, Reliability, SendStatus,
    accept_open,
};
use slim_client::session::reliable::{self, FLAG_CLOSE_ACK};
use slim_client::session::{Incoming, Kind, Packet, SessionError};
use slim_wire::{ErrorCode, Mode, Name};

const SID: u64 = 0x7ab1e;
const RTO: Duration = Duration::from_millis(100);
const LINGER: Duration = Duration::from_secs(1);
const GRACE: Duration = Duration::from_secs(2);

fn name(s: &str) -> Name {
    Name::parse(s).unwrap()
}

fn cfg(reliable: bool) -> P2pConfig {
    P2pConfig {
        reliability: if reliable {
            Reliability::Reliable(reliable::Config {
                initial_rto: RTO,
                window: 4,
                max_retries: 3,
                ..reliable::Config::default()
            })
        } else {
            Reliability::Unreliable { max_payload: 1024 }
        },
        linger: LINGER,
        peer_absent_grace: GRACE,
        ..P2pConfig::default()
    }
}

/// A responder's machine bound to `peer`, and the inputs a test gives it.
struct Probe {
    m: P2pMachine,
    t0: Instant,
    now: Instant,
    me: Name,
    peer: Name,
}

/// What came out of the machine since the last `observe`.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    /// Packets published: kind, `(close)` for a close-ack, `→x` if not to the peer.
    sent: Vec<String>,
    events: Vec<P2pEvent>,
    close: Option<Result<(), SessionError>>,
    done: bool,
}

impl Probe {
    fn new(reliable: bool) -> Probe {
        let now = Instant::now();
        let me = name("acme/p2p/echo/b1");
        let peer = name("acme/p2p/client/a1");
        let mut open = Packet::new(SID, Kind::Open, peer.as_str());
        open.flags = if reliable { OPEN_RELIABLE } else { 0 };
        let inc = Incoming {
            packet: open,
            from: peer.clone(),
            from_identity: Some(Arc::from("spiffe://example.org/a")),
            name: me.without_instance(),
            mode: Mode::Anycast,
        };
        let m = accept_open(&inc, &me, &cfg(reliable), now).unwrap();
        let mut p = Probe {
            m,
            t0: now,
            now,
            me,
            peer,
        };
        assert_eq!(p.observe().sent, vec!["Accept"], "the Accept goes first");
        p
    }

    fn from(&mut self, from: &Name, p: Packet) {
        let inc = Incoming {
            packet: p,
            from: from.clone(),
            from_identity: None,
            name: self.me.clone(),
            mode: Mode::Unicast,
        };
        self.m.handle_packet(inc, self.now);
    }

    fn packet(&self, kind: Kind) -> Packet {
        Packet::new(SID, kind, self.peer.as_str())
    }

    fn data(&mut self, seq: u64) {
        let mut p = self.packet(Kind::Data);
        p.seq = seq;
        p.body = Bytes::from(format!("m{seq}"));
        self.from(&self.peer.clone(), p);
    }

    /// The peer's `Close` after `sent` messages, `base` its lowest unresolved.
    fn close_from_peer(&mut self, sent: u64, base: u64) {
        let mut p = self.packet(Kind::Close);
        p.base = sent;
        p.seq = base;
        self.from(&self.peer.clone(), p);
    }

    fn ack(&mut self, base: u64, flags: u16) {
        let mut p = self.packet(Kind::Ack);
        p.base = base;
        p.flags = flags;
        self.from(&self.peer.clone(), p);
    }

    fn unreachable(&mut self, code: ErrorCode, from_node: bool) {
        let mut p = self.packet(Kind::Unreachable);
        p.seq = u64::from(code.0);
        p.flags = if from_node { UNREACHABLE_FROM_NODE } else { 0 };
        p.body = Bytes::from_static(b"why");
        self.from(&self.peer.clone(), p);
    }

    fn send(&mut self, n: u64) {
        for i in 0..n {
            let r = self.m.handle_send(Bytes::from(format!("s{i}")), self.now);
            assert!(matches!(r, SendStatus::Sent(_)), "{r:?}");
        }
    }

    fn at(&mut self, after_start: Duration) {
        self.now = self.t0 + after_start;
    }

    /// Moves virtual time to the next deadline and fires it.
    fn fire(&mut self) {
        let t = self.m.poll_timeout().expect("a deadline");
        self.now = self.now.max(t);
        self.m.handle_timeout(self.now);
    }

    fn observe(&mut self) -> Seen {
        let mut sent = Vec::new();
        while let Some(t) = self.m.poll_transmit() {
            let p = Packet::decode(&t.bytes).unwrap();
            let mut s = format!("{:?}", p.kind);
            if p.kind == Kind::Ack && p.flags & FLAG_CLOSE_ACK != 0 {
                s.push_str("(close)");
            }
            if t.to != self.peer {
                s.push_str(&format!("→{}", t.to));
            }
            sent.push(s);
        }
        let events = std::iter::from_fn(|| self.m.poll_event()).collect();
        Seen {
            sent,
            events,
            close: self.m.poll_close(),
            done: self.m.is_done(),
        }
    }
}

fn seen(
    sent: &[&str],
    events: Vec<P2pEvent>,
    close: Option<Result<(), SessionError>>,
    done: bool,
) -> Seen {
    Seen {
        sent: sent.iter().map(|s| s.to_string()).collect(),
        events,
        close,
        done,
    }
}

fn msg(seq: u64) -> P2pEvent {
    P2pEvent::Message {
        seq,
        payload: Bytes::from(format!("m{seq}")),
    }
}

type Step = fn(&mut Probe);

/// (transition, reliable?, get to the state, the input, what must follow)
fn table() -> Vec<(&'static str, bool, Step, Step, Seen)> {
    vec![
        (
            "idle --app close--> closing: Close sent",
            true,
            |p| p.send(2),
            |p| p.m.handle_close(p.now),
            seen(&["Close"], vec![], None, false),
        ),
        (
            "closing --close-ack covering all--> closed Ok, lingering",
            true,
            |p| {
                p.send(2);
                p.m.handle_close(p.now);
            },
            |p| p.ack(2, FLAG_CLOSE_ACK),
            seen(&[], vec![], Some(Ok(())), false),
        ),
        (
            "closing --close-ack short of what was sent--> still closing",
            true,
            |p| {
                p.send(2);
                p.m.handle_close(p.now);
            },
            |p| p.ack(1, FLAG_CLOSE_ACK),
            seen(&[], vec![], None, false),
        ),
        (
            "closing --plain ack covering all--> still closing (the Close itself unanswered)",
            true,
            |p| {
                p.send(2);
                p.m.handle_close(p.now);
            },
            |p| p.ack(2, 0),
            seen(&[], vec![], None, false),
        ),
        (
            "closing, all acked --close timer--> Close retransmitted",
            true,
            |p| {
                p.send(1);
                p.m.handle_close(p.now);
                p.ack(1, 0);
            },
            |p| p.fire(),
            seen(&["Close"], vec![], None, false),
        ),
        (
            "closing, peer silent --timer x CLOSE_ATTEMPTS+1--> CloseIncomplete, done",
            true,
            |p| {
                p.send(1);
                p.m.handle_close(p.now);
                p.ack(1, 0);
                for _ in 0..CLOSE_ATTEMPTS {
                    p.fire();
                }
            },
            |p| p.fire(),
            seen(
                &[],
                vec![],
                Some(Err(SessionError::CloseIncomplete {
                    unacked: 0,
                    sent: 1,
                    // The `Close` after an RTO, doubling, at most 32 RTOs:
                    // 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 3.2 + 3.2 s.
                    waited: Duration::from_millis(9_500),
                })),
                true,
            ),
        ),
        (
            "closed, lingering --quiet for the linger--> done",
            true,
            |p| {
                p.m.handle_close(p.now);
                p.ack(0, FLAG_CLOSE_ACK);
            },
            |p| p.fire(),
            seen(&[], vec![], None, true),
        ),
        (
            "closed, lingering --peer's data--> delivered, linger pushed back",
            true,
            |p| {
                p.m.handle_close(p.now);
                p.ack(0, FLAG_CLOSE_ACK);
                p.at(LINGER - Duration::from_millis(1));
            },
            |p| {
                p.data(0);
                p.at(LINGER + Duration::from_millis(1));
                p.m.handle_timeout(p.now);
            },
            seen(&[], vec![msg(0)], None, false),
        ),
        (
            "closing --peer's Close crosses ours--> PeerClosed, close-ack; not done",
            true,
            |p| p.m.handle_close(p.now),
            |p| p.close_from_peer(0, 0),
            seen(
                &["Ack(close)"],
                vec![P2pEvent::PeerClosed { sent: 0 }],
                None,
                false,
            ),
        ),
        (
            "crossed closes --our close-ack arrives--> closed Ok, lingering for the peer",
            true,
            |p| {
                p.m.handle_close(p.now);
                p.close_from_peer(0, 0);
            },
            |p| p.ack(0, FLAG_CLOSE_ACK),
            seen(&[], vec![], Some(Ok(())), false),
        ),
        (
            "open --peer's Close, all delivered--> PeerClosed, close-ack",
            true,
            |p| p.data(0),
            |p| p.close_from_peer(1, 1),
            seen(
                &["Ack(close)"],
                vec![P2pEvent::PeerClosed { sent: 1 }],
                None,
                false,
            ),
        ),
        (
            "open --peer's Close before its last message--> waits for it",
            true,
            |p| p.data(0),
            |p| p.close_from_peer(2, 1),
            seen(&["Ack(close)"], vec![], None, false),
        ),
        (
            "peer closing --its last message--> close-ack at once, Message, then PeerClosed",
            true,
            |p| {
                p.data(0);
                p.close_from_peer(2, 1);
            },
            |p| p.data(1),
            seen(
                &["Ack(close)"],
                vec![msg(1), P2pEvent::PeerClosed { sent: 2 }],
                None,
                false,
            ),
        ),
        (
            "peer closed, lingering --Close retransmitted--> close-ack again",
            true,
            |p| p.close_from_peer(0, 0),
            |p| p.close_from_peer(0, 0),
            seen(&["Ack(close)"], vec![], None, false),
        ),
        (
            "peer closed, lingering --quiet for the linger--> done",
            true,
            |p| p.close_from_peer(0, 0),
            |p| p.fire(),
            seen(&[], vec![], None, true),
        ),
        (
            "peer closed, lingering --handles dropped--> still lingering",
            true,
            |p| p.close_from_peer(0, 0),
            |p| p.m.handle_handles_gone(p.now),
            seen(&[], vec![], None, false),
        ),
        (
            "peer closed --app close--> Ok at once",
            true,
            |p| p.close_from_peer(0, 0),
            |p| p.m.handle_close(p.now),
            seen(&[], vec![], Some(Ok(())), false),
        ),
        (
            "open --handles dropped--> graceful close starts",
            true,
            |p| p.send(1),
            |p| p.m.handle_handles_gone(p.now),
            seen(&["Close"], vec![], None, false),
        ),
        (
            "closing --handles dropped--> the close in progress goes on",
            true,
            |p| p.m.handle_close(p.now),
            |p| p.m.handle_handles_gone(p.now),
            seen(&[], vec![], None, false),
        ),
        (
            "closing --the peer refuses--> close fails, Failed, done",
            true,
            |p| p.m.handle_close(p.now),
            |p| {
                let mut r = p.packet(Kind::Refuse);
                r.body = Bytes::from_static(b"no");
                p.from(&p.peer.clone(), r);
            },
            seen(
                &[],
                vec![P2pEvent::Failed(SessionError::Refused("no".into()))],
                Some(Err(SessionError::Refused("no".into()))),
                true,
            ),
        ),
        (
            "open --peer's mux: no such session--> Failed at once",
            true,
            |_| {},
            |p| p.unreachable(ErrorCode::NO_ROUTE, false),
            seen(
                &[],
                vec![P2pEvent::Failed(SessionError::Unreachable {
                    code: ErrorCode::NO_ROUTE.0,
                    reason: "why".into(),
                })],
                None,
                true,
            ),
        ),
        (
            "open --node: no route, first--> tolerated (grace)",
            true,
            |_| {},
            |p| p.unreachable(ErrorCode::NO_ROUTE, true),
            seen(&[], vec![], None, false),
        ),
        (
            "peer absent --node: no route, after the grace--> Failed",
            true,
            |p| p.unreachable(ErrorCode::NO_ROUTE, true),
            |p| {
                p.at(GRACE);
                p.unreachable(ErrorCode::NO_ROUTE, true);
            },
            seen(
                &[],
                vec![P2pEvent::Failed(SessionError::Unreachable {
                    code: ErrorCode::NO_ROUTE.0,
                    reason: "why".into(),
                })],
                None,
                true,
            ),
        ),
        (
            "peer absent --anything from the peer--> present again",
            true,
            |p| p.unreachable(ErrorCode::NO_ROUTE, true),
            |p| {
                p.ack(0, 0);
                p.at(GRACE);
                p.unreachable(ErrorCode::NO_ROUTE, true);
            },
            seen(&[], vec![], None, false),
        ),
        (
            "closing, peer absent --node refuses by policy--> Denied, done",
            true,
            |p| p.m.handle_close(p.now),
            |p| p.unreachable(ErrorCode::UNAUTHORIZED, true),
            seen(
                &[],
                vec![P2pEvent::Failed(SessionError::Denied("why".into()))],
                Some(Err(SessionError::Denied("why".into()))),
                true,
            ),
        ),
        (
            "open --duplicate Open--> Accept again",
            true,
            |_| {},
            |p| {
                let o = p.packet(Kind::Open);
                p.from(&p.peer.clone(), o);
            },
            seen(&["Accept"], vec![], None, false),
        ),
        (
            "open --Accept from a second instance--> Close to it",
            true,
            |_| {},
            |p| {
                let a = p.packet(Kind::Accept);
                p.from(&name("acme/p2p/client/a2"), a);
            },
            seen(&["Close→acme/p2p/client/a2"], vec![], None, false),
        ),
        (
            "open --data from a stranger--> ignored",
            true,
            |_| {},
            |p| {
                let d = p.packet(Kind::Data);
                p.from(&name("acme/p2p/client/a2"), d);
            },
            seen(&[], vec![], None, false),
        ),
        (
            "best effort: idle --app close--> one Close, Ok, done",
            false,
            |_| {},
            |p| p.m.handle_close(p.now),
            seen(&["Close"], vec![], Some(Ok(())), true),
        ),
        (
            "best effort: open --peer's Close--> PeerClosed, lingering",
            false,
            |_| {},
            |p| p.close_from_peer(0, 0),
            seen(&[], vec![P2pEvent::PeerClosed { sent: 0 }], None, false),
        ),
    ]
}

#[test]
fn transitions() {
    let mut failures = Vec::new();
    for (what, reliable, setup, input, want) in table() {
        let mut p = Probe::new(reliable);
        setup(&mut p);
        p.observe();
        input(&mut p);
        let got = p.observe();
        if got != want {
            failures.push(format!("{what}:\n  got  {got:?}\n  want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn sends_are_refused_once_a_close_began_and_park_on_a_full_window() {
    let mut p = Probe::new(true);
    p.send(4);
    assert_eq!(
        p.m.handle_send(Bytes::from_static(b"x"), p.now),
        SendStatus::Parked
    );
    assert!(!p.m.accepts_sends(), "one parked send at a time");
    p.ack(1, 0);
    assert_eq!(
        p.m.poll_parked(),
        Some(Ok(4)),
        "room: the parked send went out"
    );
    assert!(p.m.accepts_sends());
    p.m.handle_close(p.now);
    assert_eq!(
        p.m.handle_send(Bytes::from_static(b"y"), p.now),
        SendStatus::Refused(SessionError::Closed)
    );
    // A parked send when the close starts is refused with it.
    let mut p = Probe::new(true);
    p.send(4);
    assert_eq!(
        p.m.handle_send(Bytes::from_static(b"x"), p.now),
        SendStatus::Parked
    );
    p.m.handle_close(p.now);
    assert_eq!(p.m.poll_parked(), Some(Err(SessionError::Closed)));
}

#[test]
fn a_second_close_shares_the_first_ones_outcome() {
    let mut p = Probe::new(true);
    p.send(1);
    p.m.handle_close(p.now);
    p.m.handle_close(p.now);
    assert_eq!(p.observe().close, None, "not before the close is complete");
    p.ack(1, FLAG_CLOSE_ACK);
    assert_eq!(p.observe().close, Some(Ok(())));
    p.m.handle_close(p.now);
    assert_eq!(p.observe().close, Some(Ok(())), "and at once after it");
}

#[test]
fn failed_comes_last_after_everything_queued() {
    let mut p = Probe::new(true);
    p.data(0);
    p.data(1);
    p.unreachable(ErrorCode::NO_ROUTE, false);
    assert_eq!(
        p.observe().events,
        vec![
            msg(0),
            msg(1),
            P2pEvent::Failed(SessionError::Unreachable {
                code: ErrorCode::NO_ROUTE.0,
                reason: "why".into()
            })
        ]
    );
    // Nothing is taken once done.
    p.data(2);
    assert_eq!(p.observe(), seen(&[], vec![], None, true));
}
