//! A deterministic simulated link for the session tests: seeded RNG, drops,
//! duplication, reordering (random per-packet delay) and virtual time.
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// splitmix64: small, seedable, stable across dependency versions.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

#[derive(Debug, Default, Clone)]
pub struct LinkStats {
    pub sent: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub delivered: u64,
}

/// One direction of a lossy link.
#[derive(Debug)]
pub struct Link {
    rng: Rng,
    pub drop: f64,
    pub dup: f64,
    pub delay: Duration,
    pub jitter: Duration,
    pub cut: bool,
    queue: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>,
    order: u64,
    pub stats: LinkStats,
}

impl Link {
    pub fn new(seed: u64, drop: f64, dup: f64) -> Link {
        Link {
            rng: Rng::new(seed),
            drop,
            dup,
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(10),
            cut: false,
            queue: BinaryHeap::new(),
            order: 0,
            stats: LinkStats::default(),
        }
    }

    pub fn perfect(seed: u64) -> Link {
        Link::new(seed, 0.0, 0.0)
    }

    pub fn send(&mut self, packet: Vec<u8>, now: Instant) {
        self.stats.sent += 1;
        if self.cut || self.rng.chance(self.drop) {
            self.stats.dropped += 1;
            return;
        }
        let copies = if self.rng.chance(self.dup) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let j = self.rng.below(self.jitter.as_micros() as u64 + 1);
            let at = now + self.delay + Duration::from_micros(j);
            self.order += 1;
            self.queue.push(Reverse((at, self.order, packet.clone())));
        }
    }

    /// The next packet due at `now`.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<u8>> {
        let Reverse((at, _, _)) = self.queue.peek()?;
        if *at > now {
            return None;
        }
        self.stats.delivered += 1;
        self.queue.pop().map(|Reverse((_, _, p))| p)
    }

    pub fn next_time(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((at, _, _))| *at)
    }

    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }
}

/// The earliest of some optional instants.
pub fn earliest(times: impl IntoIterator<Item = Option<Instant>>) -> Option<Instant> {
    times.into_iter().flatten().min()
}

/// `i`-th test payload: its index plus some filler.
pub fn payload(i: u64) -> bytes::Bytes {
    let mut v = i.to_be_bytes().to_vec();
    v.extend(std::iter::repeat_n((i % 251) as u8, (i % 37) as usize));
    bytes::Bytes::from(v)
}
