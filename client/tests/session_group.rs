//! Group sessions: per-sender sequence numbers, gap detection, recovery and
//! `Lost` reporting.

mod session_sim;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use session_sim::{Link, earliest, payload};
use slim_client::session::group::{Dest, GapTracker, GroupConfig, SenderSeq, Transmit};
use slim_client::session::{Kind, Packet, SessionError, SessionEvent};

const SID: u64 = 77;
const ME: &str = "org/ns/rx/1";

fn take(t: &mut GapTracker) -> Vec<SessionEvent> {
    std::iter::from_fn(|| t.poll_event()).collect()
}

fn drain(s: &mut SenderSeq) -> Vec<Transmit> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

fn delivered(events: &[SessionEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::GroupDelivered { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

#[test]
fn gaps_are_detected_requested_and_recovered_in_order() {
    let now = Instant::now();
    let mut s = SenderSeq::new(SID, "org/ns/tx/1", GroupConfig::default()).unwrap();
    let mut t = GapTracker::new(SID, ME, GroupConfig::default()).unwrap();
    for i in 0..10 {
        s.handle_send(payload(i), now).unwrap();
    }
    let sent = drain(&mut s);
    assert!(sent.iter().all(|x| x.dest == Dest::Group));
    for (i, x) in sent.iter().enumerate() {
        if i != 3 && i != 5 && i != 6 {
            t.handle_datagram("org/ns/tx/1", &x.packet, now).unwrap();
        }
    }
    assert_eq!(delivered(&take(&mut t)), vec![0, 1, 2]);
    assert_eq!(t.missing("org/ns/tx/1"), vec![3, 5, 6]);
    // One request per newly found gap, unicast to the sender.
    let reqs: Vec<Transmit> = std::iter::from_fn(|| t.poll_transmit()).collect();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(r.dest, Dest::Member("org/ns/tx/1".into()));
        s.handle_datagram(ME, &r.packet, now).unwrap();
    }
    let rtx = drain(&mut s);
    assert_eq!(rtx.len(), 3);
    for x in rtx.iter().rev() {
        assert_eq!(x.dest, Dest::Member(ME.into()));
        t.handle_datagram("org/ns/tx/1", &x.packet, now).unwrap();
    }
    let ev = take(&mut t);
    assert_eq!(delivered(&ev), vec![3, 4, 5, 6, 7, 8, 9]);
    for e in &ev {
        if let SessionEvent::GroupDelivered {
            seq,
            payload: p,
            sender,
        } = e
        {
            assert_eq!(p, &payload(*seq));
            assert_eq!(sender, "org/ns/tx/1");
        }
    }
    assert!(t.missing("org/ns/tx/1").is_empty());
    assert_eq!(t.poll_timeout(), None, "no timers left");
    assert_eq!(t.stats().recovered, 3);
    assert_eq!(s.stats().retransmitted, 3);
}

#[test]
fn evicted_messages_are_answered_gone_and_reported_lost() {
    let now = Instant::now();
    let cfg = GroupConfig {
        buffer: 4,
        ..GroupConfig::default()
    };
    let mut s = SenderSeq::new(SID, "tx", cfg.clone()).unwrap();
    let mut t = GapTracker::new(SID, ME, cfg).unwrap();
    for i in 0..4 {
        s.handle_send(payload(i), now).unwrap();
    }
    let first = drain(&mut s);
    // 2 is lost; 3 reveals the gap.
    for x in [&first[0], &first[1], &first[3]] {
        t.handle_datagram("tx", &x.packet, now).unwrap();
    }
    let req = t.poll_transmit().unwrap();
    assert_eq!(Packet::decode(&req.packet).unwrap().seqs, vec![2]);
    // The request arrives after the sender moved on and evicted 2.
    for i in 4..8 {
        s.handle_send(payload(i), now).unwrap();
    }
    let later = drain(&mut s);
    assert_eq!(s.base(), 4);
    s.handle_datagram(ME, &req.packet, now).unwrap();
    let gone = drain(&mut s);
    assert_eq!(gone.len(), 1);
    let g = Packet::decode(&gone[0].packet).unwrap();
    assert_eq!((g.kind, g.seqs.clone(), g.base), (Kind::Gone, vec![2], 4));
    t.handle_datagram("tx", &gone[0].packet, now).unwrap();
    assert_eq!(
        take(&mut t),
        vec![
            SessionEvent::GroupDelivered {
                sender: "tx".into(),
                seq: 0,
                payload: payload(0)
            },
            SessionEvent::GroupDelivered {
                sender: "tx".into(),
                seq: 1,
                payload: payload(1)
            },
            SessionEvent::Lost {
                sender: "tx".into(),
                seqs: vec![2]
            },
            SessionEvent::GroupDelivered {
                sender: "tx".into(),
                seq: 3,
                payload: payload(3)
            },
        ]
    );
    // Without asking: a data packet whose base is past a gap reports it lost.
    t.handle_datagram("tx", &later[1].packet, now).unwrap(); // seq 5; 4 missing
    assert_eq!(t.missing("tx"), vec![4]);
    for i in 8..12 {
        s.handle_send(payload(i), now).unwrap();
    }
    let newest = drain(&mut s);
    t.handle_datagram("tx", &newest[3].packet, now).unwrap(); // seq 11, base 8
    let ev = take(&mut t);
    assert_eq!(
        ev.iter()
            .filter_map(|e| match e {
                SessionEvent::Lost { seqs, .. } => Some(seqs.clone()),
                _ => None,
            })
            .collect::<Vec<_>>(),
        vec![vec![4], vec![6, 7]]
    );
    assert_eq!(delivered(&ev), vec![5]);
    assert_eq!(t.missing("tx"), vec![8, 9, 10]);
    assert_eq!(t.next_expected("tx"), Some(8));
}

#[test]
fn unanswered_requests_back_off_then_report_lost() {
    let start = Instant::now();
    let cfg = GroupConfig {
        rtx_timeout: Duration::from_millis(100),
        max_rtx_timeout: Duration::from_millis(300),
        max_requests: 3,
        ..GroupConfig::default()
    };
    let mut s = SenderSeq::new(SID, "tx", cfg.clone()).unwrap();
    let mut t = GapTracker::new(SID, ME, cfg).unwrap();
    for i in 0..3 {
        s.handle_send(payload(i), start).unwrap();
    }
    let x = drain(&mut s);
    t.handle_datagram("tx", &x[0].packet, start).unwrap();
    t.handle_datagram("tx", &x[2].packet, start).unwrap();
    let mut request_times = vec![];
    let mut now = start;
    while let Some(r) = t.poll_transmit() {
        assert_eq!(Packet::decode(&r.packet).unwrap().seqs, vec![1]);
        request_times.push(now - start);
    }
    while let Some(at) = t.poll_timeout() {
        now = at;
        t.handle_timeout(now);
        while let Some(r) = t.poll_transmit() {
            assert_eq!(Packet::decode(&r.packet).unwrap().seqs, vec![1]);
            request_times.push(now - start);
        }
    }
    let ms = |m| Duration::from_millis(m);
    assert_eq!(
        request_times,
        vec![ms(0), ms(100), ms(300)],
        "100 ms then 200 ms"
    );
    assert_eq!(
        now - start,
        ms(600),
        "gave up one capped timeout after the last request"
    );
    let ev = take(&mut t);
    assert_eq!(delivered(&ev), vec![0, 2]);
    assert!(ev.contains(&SessionEvent::Lost {
        sender: "tx".into(),
        seqs: vec![1]
    }));
    // A late copy after the cursor passed is a duplicate, dropped.
    t.handle_datagram("tx", &x[1].packet, now).unwrap();
    assert!(t.poll_event().is_none());
    assert_eq!(t.stats().duplicates, 1);
}

#[test]
fn typed_errors() {
    let now = Instant::now();
    let mut s = SenderSeq::new(SID, "tx", GroupConfig::default()).unwrap();
    let mut t = GapTracker::new(SID, ME, GroupConfig::default()).unwrap();
    s.handle_send(payload(0), now).unwrap();
    let d = drain(&mut s).remove(0).packet;
    assert!(matches!(
        t.handle_datagram("mallory", &d, now),
        Err(SessionError::SenderMismatch { .. })
    ));
    let mut p = Packet::decode(&d).unwrap();
    p.session_id = 1;
    assert!(matches!(
        t.handle_packet("tx", &p, now),
        Err(SessionError::WrongSession { .. })
    ));
    assert!(matches!(
        s.handle_datagram("tx", &d, now),
        Err(SessionError::UnexpectedKind {
            kind: Kind::Data,
            ..
        })
    ));
    let mut r = Packet::new(SID, Kind::RtxRequest, ME);
    r.seqs = vec![0];
    assert!(matches!(
        t.handle_packet(ME, &r, now),
        Err(SessionError::UnexpectedKind {
            kind: Kind::RtxRequest,
            ..
        })
    ));
    // Asking for never-sent seqs yields nothing.
    r.seqs = vec![5, 6];
    s.handle_packet(ME, &r, now).unwrap();
    assert!(s.poll_transmit().is_none());
    assert!(matches!(
        s.handle_send(bytes::Bytes::from(vec![0; 1 << 20]), now),
        Err(SessionError::PayloadTooLarge { .. })
    ));
}

/// Three senders, one receiver, lossy duplicating reordering links both ways.
/// Returns (delivered, lost) per sender.
fn group_sim(seed: u64, drop: f64, buffer: usize, n: u64) -> HashMap<String, (Vec<u64>, Vec<u64>)> {
    let cfg = GroupConfig {
        buffer,
        // Generous reorder room: recovery may take several request rounds.
        max_out_of_order: 100_000,
        max_requests: 8,
        ..GroupConfig::default()
    };
    let names = ["org/ns/tx/a", "org/ns/tx/b", "org/ns/tx/c"];
    let mut senders: Vec<SenderSeq> = names
        .iter()
        .map(|n| SenderSeq::new(SID, n, cfg.clone()).unwrap())
        .collect();
    let mut t = GapTracker::new(SID, ME, cfg).unwrap();
    for n in names {
        t.expect_from(n, 0).unwrap();
    }
    // Per sender: data link to the receiver and request link back.
    let mut down: Vec<Link> = (0..3)
        .map(|i| Link::new(seed * 10 + i, drop, 0.05))
        .collect();
    let mut up: Vec<Link> = (0..3)
        .map(|i| Link::new(seed * 100 + i, drop, 0.05))
        .collect();
    let mut out: HashMap<String, (Vec<u64>, Vec<u64>)> = HashMap::new();
    let mut now = Instant::now();
    let mut sent = 0u64;
    let mut rng = session_sim::Rng::new(seed);
    let mut send_at = now;
    loop {
        // Each sender sends one message per ms, in random order.
        if now < send_at {
        } else if sent < n {
            send_at = now + Duration::from_millis(1);
            for _ in 0..3 {
                let i = rng.below(3) as usize;
                let next = senders[i].next_seq();
                if next < n {
                    senders[i].handle_send(payload(next), now).unwrap();
                }
            }
            sent = senders.iter().map(|s| s.next_seq()).min().unwrap();
        } else if sent == n {
            // A final message from each sender over a clean path, so trailing
            // gaps are seen too (a heartbeat would do this in a real session).
            for (i, s) in senders.iter_mut().enumerate() {
                s.handle_send(payload(n), now).unwrap();
                down[i].drop = 0.0;
            }
            sent += 1;
        }
        if t.poll_timeout().is_some_and(|x| x <= now) {
            t.handle_timeout(now);
        }
        for i in 0..3 {
            while let Some(p) = down[i].poll(now) {
                t.handle_datagram(names[i], &p, now).unwrap();
            }
            while let Some(p) = up[i].poll(now) {
                senders[i].handle_datagram(ME, &p, now).unwrap();
            }
        }
        for (i, s) in senders.iter_mut().enumerate() {
            while let Some(x) = s.poll_transmit() {
                down[i].send(x.packet, now);
            }
        }
        while let Some(x) = t.poll_transmit() {
            let Dest::Member(to) = x.dest else {
                panic!("requests are unicast")
            };
            let i = names.iter().position(|n| *n == to).unwrap();
            up[i].send(x.packet, now);
        }
        while let Some(e) = t.poll_event() {
            match e {
                SessionEvent::GroupDelivered {
                    sender,
                    seq,
                    payload: p,
                } => {
                    assert_eq!(p, payload(seq));
                    out.entry(sender).or_default().0.push(seq);
                }
                SessionEvent::Lost { sender, seqs } => {
                    out.entry(sender).or_default().1.extend(seqs)
                }
                e => panic!("{e:?}"),
            }
        }
        let done = names
            .iter()
            .all(|nm| t.next_expected(nm) == Some(n + 1) && t.missing(nm).is_empty());
        if done {
            break;
        }
        let next = earliest(
            [t.poll_timeout(), (sent <= n).then_some(send_at)]
                .into_iter()
                .chain(down.iter().map(|l| l.next_time()))
                .chain(up.iter().map(|l| l.next_time())),
        );
        now = next.unwrap().max(now);
        assert!(out.values().map(|v| v.0.len()).sum::<usize>() <= 3 * (n as usize + 1));
    }
    out
}

fn check_accounting(out: &HashMap<String, (Vec<u64>, Vec<u64>)>, n: u64) -> u64 {
    let mut lost_total = 0;
    assert_eq!(out.len(), 3);
    for (sender, (delivered, lost)) in out {
        let mut all: Vec<u64> = delivered.iter().chain(lost.iter()).copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..=n).collect::<Vec<_>>(),
            "{sender}: every seq delivered or lost, once"
        );
        assert!(
            delivered.windows(2).all(|w| w[0] < w[1]),
            "{sender}: in order"
        );
        lost_total += lost.len() as u64;
    }
    lost_total
}

#[test]
fn lossy_group_recovers_everything_with_a_large_buffer() {
    let n = 3000;
    let out = group_sim(5, 0.15, 100_000, n);
    assert_eq!(
        check_accounting(&out, n),
        0,
        "nothing lost when the sender keeps everything"
    );
}

#[test]
fn lossy_group_with_a_tiny_buffer_reports_every_unrecoverable_message() {
    let n = 3000;
    let out = group_sim(6, 0.2, 4, n);
    let lost = check_accounting(&out, n);
    assert!(
        lost > 0,
        "a 4-message buffer at 1 msg/ms cannot cover a 10+ ms round trip"
    );
    eprintln!("lost {lost} of {}", 3 * (n + 1));
}
