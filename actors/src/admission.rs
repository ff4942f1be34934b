//! Which incoming QUIC connection attempts a node takes on, free of I/O: the
//! listener feeds each `Incoming` in ([`Admission::handle_incoming`]) and
//! carries out the verdict. This is the node's only defence before any
//! per-connection state exists, so it must be cheap and never allocate
//! per attempt beyond the bounded per-source table.
//!
//! The rules, in order:
//! 1. **Handshake cap.** At most `max_handshakes` connections may be between
//!    their first Initial and their hello (TLS + hello). Beyond it, a
//!    validated address is refused (a small CONNECTION_REFUSED it can act
//!    on), an unvalidated one gets a Retry (stateless; a real client comes
//!    back validated, a spoofed one costs nothing more) or, if it already
//!    answered one, is ignored.
//! 2. **Address validation under pressure.** With `retry_threshold` or more
//!    handshakes in progress (or always, with `Retry::Always`), an attempt
//!    from an address not yet validated gets a QUIC Retry: the node keeps no
//!    state and sends one packet smaller than the client's Initial, so a
//!    flood of spoofed Initials can no longer hold handshakes open or make
//!    the node amplify.
//! 3. **Per-source rate under pressure.** Under the same pressure, a
//!    validated source address that opened more than its token bucket allows
//!    is refused. Only validated addresses are limited: an unvalidated
//!    source address may be forged, and limiting it would let an attacker
//!    lock a victim's address out. Without pressure nothing is limited, so
//!    a burst of honest reconnects from one NAT address (or a load test) is
//!    never refused while the node has room. Under the same pressure a
//!    validated source may also hold at most `per_source_handshakes`
//!    handshakes in progress (clients that finish TLS and never say hello).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// When the node asks unvalidated addresses to prove themselves with a QUIC
/// Retry (one extra round trip for them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryMode {
    /// Once `threshold` handshakes are in progress.
    Auto { threshold: usize },
    /// Every unvalidated attempt.
    Always,
    /// Never (the handshake cap still applies).
    Never,
}

/// Limits on connection attempts (see the module docs).
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Connections between their first Initial and their hello at once.
    pub max_handshakes: usize,
    pub retry: RetryMode,
    /// New connections per second one validated source address may open
    /// while the node is under pressure (0: unlimited).
    pub per_source_rate: u32,
    /// Burst allowance of the same bucket.
    pub per_source_burst: u32,
    /// Handshakes in progress one validated source address may hold while
    /// the node is under pressure (0: unlimited): clients that complete TLS
    /// and never say hello hold a slot for the whole handshake timeout.
    pub per_source_handshakes: usize,
    /// Source addresses tracked at once; beyond it the bucket table is
    /// pruned of full (idle) buckets, and sources that find no room are
    /// not limited (a table the attacker could fill must not lock others out).
    pub max_sources: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_handshakes: 1024,
            retry: RetryMode::Auto { threshold: 64 },
            per_source_rate: 100,
            per_source_burst: 200,
            per_source_handshakes: 64,
            max_sources: 65_536,
        }
    }
}

/// What to do with one connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Send a stateless Retry.
    Retry,
    /// Refuse with CONNECTION_REFUSED, for `reason`.
    Refuse(&'static str),
    /// Drop without an answer, for `reason`.
    Ignore(&'static str),
}

impl Verdict {
    /// The `outcome` label of `slim_incoming_total`.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Accept => "accepted",
            Verdict::Retry => "retry",
            Verdict::Refuse(r) | Verdict::Ignore(r) => r,
        }
    }
}

/// What the listener knows about one attempt.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub source: IpAddr,
    /// The Initial carried a valid Retry or NEW_TOKEN token.
    pub validated: bool,
    /// A Retry may still be sent (false when this attempt answered one).
    pub may_retry: bool,
    /// Handshakes this source address has in progress now.
    pub source_in_progress: usize,
}

/// The admission state machine: the per-source buckets (owned by the one
/// listener task, so no locks).
#[derive(Debug)]
pub struct Admission {
    cfg: AdmissionConfig,
    sources: HashMap<IpAddr, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Admission {
    pub fn new(cfg: AdmissionConfig) -> Self {
        Admission {
            cfg,
            sources: HashMap::new(),
        }
    }

    pub fn config(&self) -> &AdmissionConfig {
        &self.cfg
    }

    /// Decides one attempt, given how many handshakes are in progress now.
    pub fn handle_incoming(&mut self, now: Instant, a: Attempt, in_progress: usize) -> Verdict {
        let over_cap = in_progress >= self.cfg.max_handshakes;
        let pressure = match self.cfg.retry {
            RetryMode::Auto { threshold } => in_progress >= threshold,
            RetryMode::Always => true,
            RetryMode::Never => false,
        };
        if !a.validated {
            if (pressure || over_cap) && a.may_retry && self.cfg.retry != RetryMode::Never {
                return Verdict::Retry;
            }
            if over_cap {
                return Verdict::Ignore("ignored_capacity");
            }
            return Verdict::Accept;
        }
        if over_cap {
            return Verdict::Refuse("refused_capacity");
        }
        // The bucket is charged for every validated attempt, so a source
        // that hammered the node while it was calm has no credit left when
        // pressure begins.
        let allowed = self.take_token(now, a.source);
        let pressed = pressure || in_progress >= self.rate_floor();
        if !allowed && pressed {
            return Verdict::Refuse("refused_rate");
        }
        let per_source = self.cfg.per_source_handshakes;
        if per_source > 0 && a.source_in_progress >= per_source && pressed {
            return Verdict::Refuse("refused_source_handshakes");
        }
        Verdict::Accept
    }

    /// Without Retry pressure (mode `Never`) the per-source limit still
    /// applies once half the cap is in use.
    fn rate_floor(&self) -> usize {
        match self.cfg.retry {
            RetryMode::Never => self.cfg.max_handshakes / 2,
            _ => usize::MAX,
        }
    }

    /// Takes a token from `source`'s bucket; false when it has none.
    fn take_token(&mut self, now: Instant, source: IpAddr) -> bool {
        let rate = f64::from(self.cfg.per_source_rate);
        if rate == 0.0 {
            return true;
        }
        let burst = f64::from(self.cfg.per_source_burst.max(1));
        if !self.sources.contains_key(&source) && self.sources.len() >= self.cfg.max_sources {
            self.prune(now);
            if self.sources.len() >= self.cfg.max_sources {
                return true;
            }
        }
        let b = self.sources.entry(source).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets buckets that have refilled: a full bucket is the same as none.
    pub fn prune(&mut self, now: Instant) {
        let rate = f64::from(self.cfg.per_source_rate.max(1));
        let burst = f64::from(self.cfg.per_source_burst.max(1));
        self.sources.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens + elapsed * rate < burst
        });
    }

    /// Source addresses tracked now.
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }

    /// How often the listener should call [`prune`](Self::prune).
    pub const PRUNE_EVERY: Duration = Duration::from_secs(10);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn attempt(last: u8, validated: bool) -> Attempt {
        Attempt {
            source: ip(last),
            validated,
            may_retry: !validated,
            source_in_progress: 0,
        }
    }

    fn cfg() -> AdmissionConfig {
        AdmissionConfig {
            max_handshakes: 10,
            retry: RetryMode::Auto { threshold: 4 },
            per_source_rate: 2,
            per_source_burst: 3,
            per_source_handshakes: 2,
            max_sources: 4,
        }
    }

    #[test]
    fn calm_node_accepts_unvalidated_attempts() {
        let mut a = Admission::new(cfg());
        let now = Instant::now();
        assert_eq!(
            a.handle_incoming(now, attempt(1, false), 0),
            Verdict::Accept
        );
        assert_eq!(
            a.handle_incoming(now, attempt(1, false), 3),
            Verdict::Accept
        );
        // Unvalidated attempts never touch the per-source table.
        assert_eq!(a.tracked_sources(), 0);
    }

    #[test]
    fn pressure_sends_retry_to_unvalidated_and_accepts_validated() {
        let mut a = Admission::new(cfg());
        let now = Instant::now();
        assert_eq!(a.handle_incoming(now, attempt(1, false), 4), Verdict::Retry);
        assert_eq!(a.handle_incoming(now, attempt(1, true), 4), Verdict::Accept);
    }

    #[test]
    fn over_the_cap_retries_ignores_or_refuses() {
        let mut a = Admission::new(cfg());
        let now = Instant::now();
        assert_eq!(
            a.handle_incoming(now, attempt(1, false), 10),
            Verdict::Retry
        );
        let answered_retry = Attempt {
            may_retry: false,
            ..attempt(1, false)
        };
        assert_eq!(
            a.handle_incoming(now, answered_retry, 10),
            Verdict::Ignore("ignored_capacity")
        );
        assert_eq!(
            a.handle_incoming(now, attempt(1, true), 10),
            Verdict::Refuse("refused_capacity")
        );
    }

    #[test]
    fn retry_always_and_never() {
        let mut c = cfg();
        c.retry = RetryMode::Always;
        let mut a = Admission::new(c.clone());
        let now = Instant::now();
        assert_eq!(a.handle_incoming(now, attempt(1, false), 0), Verdict::Retry);
        c.retry = RetryMode::Never;
        let mut a = Admission::new(c);
        assert_eq!(
            a.handle_incoming(now, attempt(1, false), 9),
            Verdict::Accept
        );
        assert_eq!(
            a.handle_incoming(now, attempt(1, false), 10),
            Verdict::Ignore("ignored_capacity")
        );
    }

    #[test]
    fn per_source_rate_applies_only_under_pressure() {
        let mut a = Admission::new(cfg());
        let t0 = Instant::now();
        // Calm: the burst is used up, but nothing is refused.
        for _ in 0..5 {
            assert_eq!(a.handle_incoming(t0, attempt(1, true), 0), Verdict::Accept);
        }
        // Under pressure the empty bucket refuses this source only.
        assert_eq!(
            a.handle_incoming(t0, attempt(1, true), 5),
            Verdict::Refuse("refused_rate")
        );
        assert_eq!(a.handle_incoming(t0, attempt(2, true), 5), Verdict::Accept);
        // Half a second at 2/s refills one token.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(a.handle_incoming(t1, attempt(1, true), 5), Verdict::Accept);
        assert_eq!(
            a.handle_incoming(t1, attempt(1, true), 5),
            Verdict::Refuse("refused_rate")
        );
    }

    #[test]
    fn per_source_handshakes_apply_only_under_pressure() {
        let mut c = cfg();
        c.per_source_rate = 0;
        let mut a = Admission::new(c);
        let now = Instant::now();
        let holding = Attempt {
            source_in_progress: 2,
            ..attempt(1, true)
        };
        assert_eq!(a.handle_incoming(now, holding, 3), Verdict::Accept);
        assert_eq!(
            a.handle_incoming(now, holding, 4),
            Verdict::Refuse("refused_source_handshakes")
        );
        let other = Attempt {
            source_in_progress: 1,
            ..attempt(2, true)
        };
        assert_eq!(a.handle_incoming(now, other, 4), Verdict::Accept);
    }

    #[test]
    fn source_table_is_bounded_and_full_buckets_are_pruned() {
        let mut a = Admission::new(cfg());
        let t0 = Instant::now();
        for s in 1..=4 {
            a.handle_incoming(t0, attempt(s, true), 0);
        }
        assert_eq!(a.tracked_sources(), 4);
        // A fifth source finds no room and is not limited (nor tracked).
        for _ in 0..10 {
            assert_eq!(a.handle_incoming(t0, attempt(5, true), 5), Verdict::Accept);
        }
        assert_eq!(a.tracked_sources(), 4);
        // Once the others refilled, they are pruned and the new one is tracked.
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(a.handle_incoming(t1, attempt(5, true), 5), Verdict::Accept);
        assert_eq!(a.tracked_sources(), 1);
    }

    #[test]
    fn unlimited_rate_tracks_nothing() {
        let mut c = cfg();
        c.per_source_rate = 0;
        let mut a = Admission::new(c);
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(a.handle_incoming(now, attempt(1, true), 5), Verdict::Accept);
        }
        assert_eq!(a.tracked_sources(), 0);
    }
}
