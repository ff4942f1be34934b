//! Reliable (and best-effort) point-to-point sessions over a simulated lossy link.

mod session_sim;

use std::time::{Duration, Instant};

use bytes::Bytes;
use session_sim::{Link, earliest, payload};
use slim_client::session::reliable::{Config, Receiver, Sender};
use slim_client::session::{Kind, Packet, SessionError, SessionEvent, unreliable};

const SID: u64 = 0x5e55_1011;

struct Pair {
    now: Instant,
    s: Sender,
    r: Receiver,
    fwd: Link,
    back: Link,
    delivered: Vec<(u64, Bytes)>,
    failed: Vec<(u64, u32)>,
    lost: Vec<u64>,
}

impl Pair {
    fn new(cfg: Config, fwd: Link, back: Link) -> Pair {
        Pair {
            now: Instant::now(),
            s: Sender::new(SID, "org/ns/a/1", cfg.clone()).unwrap(),
            r: Receiver::new(SID, "org/ns/b/1", cfg).unwrap(),
            fwd,
            back,
            delivered: Vec::new(),
            failed: Vec::new(),
            lost: Vec::new(),
        }
    }

    /// One step at the current virtual time; returns the next instant anything
    /// is due.
    fn step(&mut self) -> Option<Instant> {
        let now = self.now;
        if self.s.poll_timeout().is_some_and(|t| t <= now) {
            self.s.handle_timeout(now);
        }
        if self.r.poll_timeout().is_some_and(|t| t <= now) {
            self.r.handle_timeout(now);
        }
        while let Some(p) = self.fwd.poll(now) {
            self.r.handle_datagram(&p, now).unwrap();
        }
        while let Some(p) = self.back.poll(now) {
            self.s.handle_datagram(&p, now).unwrap();
        }
        while let Some(e) = self.s.poll_event() {
            match e {
                SessionEvent::DeliveryFailed { seq, attempts } => self.failed.push((seq, attempts)),
                other => panic!("unexpected sender event {other:?}"),
            }
        }
        while let Some(e) = self.r.poll_event() {
            match e {
                SessionEvent::Delivered { seq, payload } => self.delivered.push((seq, payload)),
                SessionEvent::Lost { seqs, .. } => self.lost.extend(seqs),
                other => panic!("unexpected receiver event {other:?}"),
            }
        }
        // Everything produced by this step goes out now.
        while let Some(p) = self.s.poll_transmit() {
            self.fwd.send(p, now);
        }
        while let Some(p) = self.r.poll_transmit() {
            self.back.send(p, now);
        }
        earliest([
            self.s.poll_timeout(),
            self.r.poll_timeout(),
            self.fwd.next_time(),
            self.back.next_time(),
        ])
    }

    /// Runs until nothing more is due (or the virtual deadline passes).
    fn run_until_idle(&mut self, limit: Duration) {
        let end = self.now + limit;
        while let Some(next) = self.step() {
            if next > end {
                break;
            }
            self.now = self.now.max(next);
        }
    }
}

fn lossy_run(seed: u64, drop: f64, dup: f64) {
    const N: u64 = 10_000;
    let cfg = Config {
        max_retries: 10,
        ..Config::default()
    };
    let mut p = Pair::new(
        cfg,
        Link::new(seed, drop, dup),
        Link::new(seed ^ 0xabcdef, drop, dup),
    );
    let start = p.now;
    let mut sent = 0u64;
    let mut window_full = 0u64;
    while p.delivered.len() < N as usize || p.s.in_flight() > 0 {
        while sent < N {
            match p.s.handle_send(payload(sent), p.now) {
                Ok(seq) => {
                    assert_eq!(seq, sent);
                    sent += 1;
                }
                Err(SessionError::WindowFull { window }) => {
                    assert_eq!(window, 256);
                    window_full += 1;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let Some(next) = p.step() else {
            if sent < N {
                continue; // acks freed the window: the app sends next
            }
            if p.delivered.len() == N as usize && p.s.in_flight() == 0 {
                break;
            }
            panic!(
                "stalled: sent {sent} delivered {} in_flight {} base {} next_expected {} buffered {} failed {:?}",
                p.delivered.len(),
                p.s.in_flight(),
                p.s.base(),
                p.r.next_expected(),
                p.r.buffered(),
                p.failed
            );
        };
        p.now = p.now.max(next);
        assert!(
            p.now - start < Duration::from_secs(3600),
            "virtual hour elapsed"
        );
    }
    assert!(p.failed.is_empty(), "delivery failures: {:?}", p.failed);
    assert!(p.lost.is_empty());
    assert_eq!(p.delivered.len(), N as usize);
    for (i, (seq, body)) in p.delivered.iter().enumerate() {
        assert_eq!(*seq, i as u64, "out of order");
        assert_eq!(body, &payload(i as u64));
    }
    assert!(
        window_full > 0,
        "the window never filled: back-pressure untested"
    );
    let (ss, rs) = (p.s.stats().clone(), p.r.stats().clone());
    if drop > 0.0 {
        assert!(ss.retransmitted > 0);
        assert!(rs.nacks_sent > 0);
    }
    if dup > 0.0 {
        assert!(rs.duplicates > 0);
    }
    // Ack coalescing: far fewer acks than data packets.
    assert!(rs.acks_sent < N / 2, "acks {}", rs.acks_sent);
    eprintln!(
        "seed {seed} drop {drop} dup {dup}: virtual {:?}, fwd {:?}, back {:?}, sender {ss:?}, receiver {rs:?}",
        p.now - start,
        p.fwd.stats,
        p.back.stats
    );
}

#[test]
fn ten_thousand_messages_over_a_lossy_link_arrive_complete_in_order_once() {
    lossy_run(1, 0.05, 0.02);
    lossy_run(2, 0.10, 0.05);
    lossy_run(3, 0.20, 0.05);
}

#[test]
fn ten_thousand_messages_over_a_perfect_link() {
    lossy_run(4, 0.0, 0.0);
}

#[test]
fn retry_exhaustion_reports_delivery_failed_then_receiver_reports_lost() {
    let cfg = Config {
        initial_rto: Duration::from_millis(100),
        max_rto: Duration::from_millis(1000),
        max_retries: 4,
        ..Config::default()
    };
    let mut p = Pair::new(cfg, Link::perfect(7), Link::perfect(8));
    let start = p.now;
    for i in 0..5 {
        p.s.handle_send(payload(i), p.now).unwrap();
    }
    p.run_until_idle(Duration::from_secs(1));
    assert_eq!(p.delivered.len(), 5);
    assert_eq!(p.s.in_flight(), 0);

    // Cut the link both ways and send three more.
    p.fwd.cut = true;
    p.back.cut = true;
    let cut_at = p.now;
    // The RTO adapted to the link's round trip during the first messages.
    let rto0 = p.s.rto();
    assert!(rto0 < Duration::from_millis(100), "adapted: {rto0:?}");
    for i in 5..8 {
        p.s.handle_send(payload(i), p.now).unwrap();
    }
    p.run_until_idle(Duration::from_secs(60));
    assert_eq!(
        p.failed,
        vec![(5, 5), (6, 5), (7, 5)],
        "5 transmissions = 1 + 4 retries"
    );
    assert_eq!(p.s.in_flight(), 0);
    assert_eq!(p.s.stats().failed, 3);
    // Backoff: the RTO at the cut, doubled on each expiry (RFC 6298), with
    // each message's own exponential backoff on top, both capped at 1 s.
    let max = Duration::from_millis(1000);
    let mut expected = rto0;
    for k in 1..=4u32 {
        let rto_k = (rto0 * (1 << k)).min(max);
        expected += (rto_k * (1 << k)).min(max);
    }
    let gave_up = p.now - cut_at;
    assert!(
        gave_up >= expected && gave_up < expected + Duration::from_millis(100),
        "{gave_up:?}, expected {expected:?}"
    );
    assert_eq!(p.delivered.len(), 5);
    assert!(p.now - start < Duration::from_secs(10));

    // The link heals; the next message carries the sender's base, so the
    // receiver reports 5..8 lost instead of waiting for them forever.
    p.fwd.cut = false;
    p.back.cut = false;
    assert_eq!(p.s.handle_send(payload(8), p.now).unwrap(), 8);
    p.run_until_idle(Duration::from_secs(5));
    assert_eq!(p.lost, vec![5, 6, 7]);
    assert_eq!(p.delivered.last().unwrap().0, 8);
    assert_eq!(p.r.next_expected(), 9);
    assert_eq!(p.s.in_flight(), 0);
}

#[test]
fn a_failed_message_the_receiver_did_get_is_still_delivered_once() {
    // Data gets through but every ack is lost.
    let cfg = Config {
        max_retries: 2,
        ..Config::default()
    };
    let mut p = Pair::new(cfg, Link::perfect(1), Link::perfect(2));
    p.back.cut = true;
    p.s.handle_send(payload(0), p.now).unwrap();
    p.run_until_idle(Duration::from_secs(30));
    assert_eq!(p.failed, vec![(0, 3)]);
    assert_eq!(p.delivered.len(), 1);
    assert!(p.r.stats().duplicates >= 2);
    p.back.cut = false;
    p.s.handle_send(payload(1), p.now).unwrap();
    p.run_until_idle(Duration::from_secs(5));
    assert_eq!(
        p.delivered.iter().map(|d| d.0).collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert!(p.lost.is_empty());
}

#[test]
fn window_full_is_back_pressure_until_the_base_advances() {
    let cfg = Config {
        window: 4,
        ..Config::default()
    };
    let now = Instant::now();
    let mut s = Sender::new(SID, "a", cfg.clone()).unwrap();
    let mut r = Receiver::new(SID, "b", cfg).unwrap();
    let mut wire = Vec::new();
    for i in 0..4 {
        assert_eq!(s.handle_send(payload(i), now).unwrap(), i);
        wire.push(s.poll_transmit().unwrap());
    }
    assert_eq!(
        s.handle_send(payload(4), now),
        Err(SessionError::WindowFull { window: 4 })
    );
    assert!(s.poll_transmit().is_none(), "nothing queued on WindowFull");
    assert_eq!(s.next_seq(), 4);

    // Seq 0 is lost; 1..3 arrive and are SACKed: the window spans from the
    // base (0), so it stays full.
    for w in &wire[1..] {
        r.handle_datagram(w, now).unwrap();
    }
    assert!(r.poll_event().is_none(), "nothing deliverable past the gap");
    // Seq 3 filled the sender's window (FLAG_ACK_NOW): acknowledged at once.
    let ack = Packet::decode(&r.poll_transmit().unwrap()).unwrap();
    assert_eq!(
        (ack.kind, ack.base, ack.seqs.clone()),
        (Kind::Ack, 0, vec![1, 2, 3])
    );
    assert!(r.poll_transmit().is_none(), "the NACK waits for reordering");
    assert_eq!(
        r.poll_timeout(),
        Some(now + Duration::from_millis(20)),
        "nack delay"
    );
    let deadline = now + Duration::from_millis(20);
    r.handle_timeout(deadline);
    let nack = Packet::decode(&r.poll_transmit().unwrap()).unwrap();
    assert_eq!(
        (nack.kind, nack.base, nack.seqs.clone()),
        (Kind::Nack, 0, vec![0])
    );
    s.handle_packet(&ack, deadline).unwrap();
    assert_eq!(s.in_flight(), 1);
    assert!(matches!(
        s.handle_send(payload(4), deadline),
        Err(SessionError::WindowFull { .. })
    ));

    // The NACK makes the sender retransmit 0 at once.
    s.handle_packet(&nack, deadline).unwrap();
    let rtx = s.poll_transmit().unwrap();
    r.handle_datagram(&rtx, deadline).unwrap();
    let got: Vec<u64> = std::iter::from_fn(|| r.poll_event())
        .map(|e| match e {
            SessionEvent::Delivered { seq, .. } => seq,
            e => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(got, vec![0, 1, 2, 3]);
    // The retransmission also says the window is full: acknowledged at once.
    let t = deadline;
    let ack = r.poll_transmit().unwrap();
    s.handle_datagram(&ack, t).unwrap();
    assert_eq!(s.in_flight(), 0);
    assert_eq!(s.handle_send(payload(4), t).unwrap(), 4);
}

#[test]
fn ack_coalescing_every_k_or_after_delay() {
    let cfg = Config {
        ack_every: 4,
        ack_delay: Duration::from_millis(20),
        ..Config::default()
    };
    let now = Instant::now();
    let mut s = Sender::new(SID, "a", cfg.clone()).unwrap();
    let mut r = Receiver::new(SID, "b", cfg).unwrap();
    for i in 0..10 {
        s.handle_send(payload(i), now).unwrap();
    }
    let mut acks = 0;
    while let Some(d) = s.poll_transmit() {
        r.handle_datagram(&d, now).unwrap();
        while let Some(a) = r.poll_transmit() {
            assert_eq!(Packet::decode(&a).unwrap().kind, Kind::Ack);
            acks += 1;
        }
    }
    assert_eq!(acks, 2, "after the 4th and 8th packet");
    assert_eq!(r.poll_timeout(), Some(now + Duration::from_millis(20)));
    r.handle_timeout(now + Duration::from_millis(19));
    assert!(r.poll_transmit().is_none());
    r.handle_timeout(now + Duration::from_millis(20));
    let a = Packet::decode(&r.poll_transmit().unwrap()).unwrap();
    assert_eq!((a.kind, a.base), (Kind::Ack, 10));
    assert_eq!(r.poll_timeout(), None);
    // Duplicate data is re-acknowledged at once (our ack was lost).
    let mut again = Packet::new(SID, Kind::Data, "a");
    again.seq = 3;
    r.handle_packet(&again, now).unwrap();
    assert_eq!(
        Packet::decode(&r.poll_transmit().unwrap()).unwrap().base,
        10
    );
    assert_eq!(r.stats().duplicates, 1);
    assert_eq!(r.stats().delivered, 10);
}

#[test]
fn typed_errors() {
    let now = Instant::now();
    let cfg = Config {
        max_payload: 16,
        ..Config::default()
    };
    let mut s = Sender::new(SID, "a", cfg.clone()).unwrap();
    let mut r = Receiver::new(SID, "b", cfg).unwrap();
    assert_eq!(
        s.handle_send(Bytes::from(vec![0; 17]), now),
        Err(SessionError::PayloadTooLarge { len: 17, max: 16 })
    );
    let other = Packet::new(SID + 1, Kind::Ack, "b");
    assert_eq!(
        s.handle_packet(&other, now),
        Err(SessionError::WrongSession {
            expected: SID,
            got: SID + 1
        })
    );
    assert!(matches!(
        s.handle_packet(&Packet::new(SID, Kind::Data, "b"), now),
        Err(SessionError::UnexpectedKind {
            kind: Kind::Data,
            ..
        })
    ));
    assert!(matches!(
        r.handle_packet(&Packet::new(SID, Kind::Ack, "a"), now),
        Err(SessionError::UnexpectedKind {
            kind: Kind::Ack,
            ..
        })
    ));
    assert!(matches!(
        r.handle_datagram(b"\x01\x02", now),
        Err(SessionError::Malformed(_))
    ));
    let mut bogus = Packet::new(SID, Kind::Data, "a");
    bogus.base = u64::MAX;
    assert!(matches!(
        r.handle_packet(&bogus, now),
        Err(SessionError::Malformed(_))
    ));
    assert!(
        Sender::new(
            SID,
            "a",
            Config {
                window: 0,
                ..Config::default()
            }
        )
        .is_err()
    );
    s.close();
    assert_eq!(
        Packet::decode(&s.poll_transmit().unwrap()).unwrap().kind,
        Kind::Close
    );
    assert_eq!(s.handle_send(Bytes::new(), now), Err(SessionError::Closed));
}

#[test]
fn unreliable_mode_is_best_effort_without_timers() {
    let mut now = Instant::now();
    let mut s = unreliable::Sender::new(SID, "a", 1024).unwrap();
    let mut r = unreliable::Receiver::new(SID);
    let mut link = Link::new(11, 0.2, 0.1);
    for i in 0..2000 {
        assert_eq!(s.handle_send(payload(i), now).unwrap(), i);
        assert_eq!(s.poll_timeout(), None);
        while let Some(p) = s.poll_transmit() {
            link.send(p, now);
        }
        now += Duration::from_millis(1);
        while let Some(p) = link.poll(now) {
            r.handle_datagram(&p, now).unwrap();
        }
    }
    now += Duration::from_secs(1);
    while let Some(p) = link.poll(now) {
        r.handle_datagram(&p, now).unwrap();
    }
    assert_eq!(r.poll_timeout(), None);
    let mut seen = std::collections::HashSet::new();
    while let Some(e) = r.poll_event() {
        let SessionEvent::Delivered { seq, payload: body } = e else {
            panic!("{e:?}")
        };
        assert_eq!(body, payload(seq));
        assert!(seen.insert(seq), "duplicate {seq}");
    }
    let expected = 2000 - link.stats.dropped;
    assert_eq!(seen.len() as u64, expected);
    assert!(r.duplicates() > 0);
}

#[test]
fn close_after_giving_up_reports_the_lost_tail_and_is_acknowledged() {
    use slim_client::session::reliable::FLAG_CLOSE_ACK;
    let cfg = Config {
        max_retries: 1,
        ..Config::default()
    };
    let mut now = Instant::now();
    let mut s = Sender::new(SID, "a", cfg.clone()).unwrap();
    let mut r = Receiver::new(SID, "b", cfg).unwrap();
    // 0 arrives; 1 and 2 (and their retransmissions) are all lost.
    for i in 0..3 {
        s.handle_send(payload(i), now).unwrap();
    }
    r.handle_datagram(&s.poll_transmit().unwrap(), now).unwrap();
    while s.poll_transmit().is_some() {}
    while let Some(t) = s.poll_timeout() {
        now = t;
        s.handle_timeout(now);
        while s.poll_transmit().is_some() {}
    }
    // 0's ack never comes back either: the sender gives up on all three.
    let failed: Vec<u64> = std::iter::from_fn(|| s.poll_event())
        .map(|e| match e {
            SessionEvent::DeliveryFailed { seq, attempts: 2 } => seq,
            e => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(failed, vec![0, 1, 2]);
    // No data follows the close, so the close itself says what was given up.
    s.close();
    r.handle_datagram(&s.poll_transmit().unwrap(), now).unwrap();
    let events: Vec<_> = std::iter::from_fn(|| r.poll_event()).collect();
    assert!(matches!(&events[0], SessionEvent::Delivered { seq: 0, .. }));
    assert!(matches!(&events[1], SessionEvent::Lost { seqs, .. } if *seqs == vec![1, 2]));
    assert!(matches!(
        &events[2],
        SessionEvent::PeerClosed { next_seq: 3, .. }
    ));
    let ack = std::iter::from_fn(|| r.poll_transmit())
        .map(|b| Packet::decode(&b).unwrap())
        .last()
        .unwrap();
    assert_eq!((ack.kind, ack.base), (Kind::Ack, 3));
    assert_ne!(
        ack.flags & FLAG_CLOSE_ACK,
        0,
        "the closer learns its close arrived"
    );
}

/// An ack from the receiver's side: cumulative `base`, selective `sack`.
fn ack(base: u64, sack: &[u64]) -> Packet {
    let mut a = Packet::new(SID, Kind::Ack, "org/ns/b/1");
    a.base = base;
    a.seqs = sack.to_vec();
    a
}

fn drain(s: &mut Sender) -> Vec<Packet> {
    std::iter::from_fn(|| s.poll_transmit())
        .map(|b| Packet::decode(&b).unwrap())
        .collect()
}

/// RFC 6298 in virtual time: the first sample sets SRTT and the RTO (floored
/// at `min_rto`), a timer expiry doubles the RTO, and an ack for a
/// retransmitted message is no sample (Karn), so the backed-off RTO stays
/// until a message transmitted once is acknowledged.
#[test]
fn rto_follows_the_measured_rtt_with_karn_and_backoff() {
    let cfg = Config {
        initial_rto: Duration::from_millis(200),
        min_rto: Duration::from_millis(50),
        max_rto: Duration::from_secs(5),
        ..Config::default()
    };
    let t0 = Instant::now();
    let mut s = Sender::new(SID, "org/ns/a/1", cfg).unwrap();
    assert_eq!(s.rto(), Duration::from_millis(200), "before any sample");
    s.handle_send(payload(0), t0).unwrap();
    s.handle_packet(&ack(1, &[]), t0 + Duration::from_millis(100))
        .unwrap();
    // SRTT 100 ms, RTTVAR 50 ms: RTO = 100 + 4 × 50.
    assert_eq!(s.stats().srtt, Duration::from_millis(100));
    assert_eq!(s.rto(), Duration::from_millis(300));

    // A second, equal sample: RTTVAR shrinks to 3/4.
    let t1 = t0 + Duration::from_secs(1);
    s.handle_send(payload(1), t1).unwrap();
    s.handle_packet(&ack(2, &[]), t1 + Duration::from_millis(100))
        .unwrap();
    assert_eq!(s.rto(), Duration::from_micros(100_000 + 4 * 37_500));

    // Message 2 times out: the RTO doubles; the ack of its retransmission
    // is ambiguous and leaves both SRTT and the backed-off RTO alone.
    let t2 = t1 + Duration::from_secs(1);
    s.handle_send(payload(2), t2).unwrap();
    let rto = s.rto();
    s.handle_timeout(t2 + rto);
    assert_eq!(s.stats().timeouts, 1);
    assert_eq!(s.rto(), rto * 2);
    s.handle_packet(&ack(3, &[]), t2 + rto + Duration::from_millis(1))
        .unwrap();
    assert_eq!(s.stats().srtt, Duration::from_millis(100));
    assert_eq!(s.rto(), rto * 2, "no sample from a retransmitted message");

    // A tiny RTT (loopback) is floored at `min_rto`.
    for i in 3..40 {
        let t = t2 + Duration::from_secs(i);
        s.handle_send(payload(i), t).unwrap();
        s.handle_packet(&ack(i + 1, &[]), t + Duration::from_micros(200))
            .unwrap();
    }
    assert_eq!(s.rto(), Duration::from_millis(50));
}

/// SLIM delivers a session's packets in order: an ack that covers message
/// 2 but not 0 says 0 was lost, and it goes out again at once, without
/// waiting for the timer or the receiver's NACK; a lost retransmission is
/// detected the same way once something transmitted after it is acked.
#[test]
fn a_message_transmitted_before_an_acknowledged_one_is_retransmitted_at_once() {
    let cfg = Config {
        reorder_window: Duration::ZERO,
        ..Config::default()
    };
    let t0 = Instant::now();
    let mut s = Sender::new(SID, "org/ns/a/1", cfg).unwrap();
    for i in 0..3 {
        s.handle_send(payload(i), t0).unwrap();
    }
    assert_eq!(drain(&mut s).len(), 3);
    // 0 lost; 1 and 2 arrived.
    s.handle_packet(&ack(0, &[1, 2]), t0 + Duration::from_millis(1))
        .unwrap();
    let out = drain(&mut s);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].kind, out[0].seq), (Kind::Data, 0));
    assert_eq!(s.stats().fast_retransmits, 1);
    assert_eq!(s.stats().timeouts, 0);
    // The same ack again (duplicated) retransmits nothing more: 0's new
    // transmission is newer than anything acknowledged.
    s.handle_packet(&ack(0, &[1, 2]), t0 + Duration::from_millis(2))
        .unwrap();
    assert!(drain(&mut s).is_empty());
    // The retransmission is lost too; message 3, sent after it, is acked.
    s.handle_send(payload(3), t0 + Duration::from_millis(3))
        .unwrap();
    drain(&mut s);
    s.handle_packet(&ack(0, &[1, 2, 3]), t0 + Duration::from_millis(4))
        .unwrap();
    let out = drain(&mut s);
    assert_eq!(out.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![0]);
    assert_eq!(s.stats().fast_retransmits, 2);
    s.handle_packet(&ack(4, &[]), t0 + Duration::from_millis(5))
        .unwrap();
    assert_eq!(s.in_flight(), 0);
}

/// With a reordering window, a message overtaken by less than the window is
/// not declared lost.
#[test]
fn reordering_within_the_window_is_not_a_loss() {
    let cfg = Config {
        reorder_window: Duration::from_millis(20),
        ..Config::default()
    };
    let t0 = Instant::now();
    let mut s = Sender::new(SID, "org/ns/a/1", cfg).unwrap();
    s.handle_send(payload(0), t0).unwrap();
    s.handle_send(payload(1), t0 + Duration::from_millis(5))
        .unwrap();
    drain(&mut s);
    s.handle_packet(&ack(0, &[1]), t0 + Duration::from_millis(6))
        .unwrap();
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.stats().fast_retransmits, 0);
}

/// A lost tail (nothing after it to reveal the gap, no ack coming back) is
/// probed after two round trips plus the ack delay, before its RTO, and the
/// probe is not an attempt: the retry budget is untouched. After
/// `MAX_PROBES` probes in a row only the RTO retransmits.
#[test]
fn a_lost_tail_is_probed_before_its_rto_without_using_a_retry() {
    use slim_client::session::reliable::MAX_PROBES;
    let cfg = Config {
        max_retries: 2,
        ..Config::default()
    };
    let t0 = Instant::now();
    let mut s = Sender::new(SID, "org/ns/a/1", cfg).unwrap();
    // An RTT sample of 1 ms.
    s.handle_send(payload(0), t0).unwrap();
    s.handle_packet(&ack(1, &[]), t0 + Duration::from_millis(1))
        .unwrap();
    drain(&mut s);
    let t1 = t0 + Duration::from_millis(10);
    s.handle_send(payload(1), t1).unwrap();
    drain(&mut s);
    let rto_deadline = t1 + s.rto();
    let mut probes = 0;
    while let Some(t) = s.poll_timeout() {
        if t >= rto_deadline {
            break;
        }
        s.handle_timeout(t);
        let out = drain(&mut s);
        assert_eq!(out.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![1]);
        probes += 1;
    }
    assert_eq!(probes, MAX_PROBES);
    assert_eq!(s.stats().probes, u64::from(MAX_PROBES));
    assert_eq!(s.stats().timeouts, 0);
    // The path stays silent: 1 + max_retries transmissions by the timer
    // still follow before the message is given up.
    let mut timer_tx = 0;
    while let Some(t) = s.poll_timeout() {
        s.handle_timeout(t);
        timer_tx += drain(&mut s).len();
    }
    assert_eq!(timer_tx, 2, "both retries, none used up by the probes");
    assert_eq!(s.stats().failed, 1);
    assert_eq!(
        std::iter::from_fn(|| s.poll_event()).collect::<Vec<_>>(),
        vec![SessionEvent::DeliveryFailed {
            seq: 1,
            attempts: 3
        }]
    );
}
