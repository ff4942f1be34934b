//! Log lines an attacker cannot multiply. Events that anyone on the network
//! can cause (refused handshakes, hello timeouts, stalled frames, attempts
//! turned away at the door) are logged in full once per reason per window;
//! the rest of the window is counted and summed up in one line when it
//! ends: "412 handshakes refused in the last 10 s: untrusted_issuer=400,
//! timeout=12". The metrics count every event; the log shows what happened
//! and an example of each kind, at a rate the node decides.
//!
//! Events an authenticated client causes (a publish or subscribe refused by
//! policy, messages dropped because it reads too slowly) are throttled per
//! identity instead ([`LogThrottle::note_identity`]): the first per identity
//! and kind in a window is logged in full (identity, name, action); the
//! window's end logs how many more there were. At most [`MAX_IDENTITIES`]
//! identities are tracked per window (the map is emptied at every window's
//! end), so a flood of identities costs a bounded map and one summary line.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use parking_lot::Mutex;

/// Kinds of events, each with its own summary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Connections refused or abandoned before they became clients or links.
    Handshake,
    /// Connection attempts turned away before any state (Retry, caps, rate).
    Incoming,
    /// Client certificates refused by the SVID checks, by check (the same
    /// connections then count once more under `Handshake`, as TLS refusals).
    Credentials,
    /// Connections closed for a frame that did not complete in time, or for
    /// the node's budget of incomplete frames.
    PartialFrame,
    /// Publishes and subscriptions refused by the authorization policy
    /// (keyed by identity).
    Denied,
    /// Messages dropped for, or connections closed of, subscribers that do
    /// not read fast enough (keyed by identity).
    SlowConsumer,
    /// Forwards not carried because their peer link was going down (keyed
    /// by peer node).
    LinkGone,
}

impl Kind {
    fn summary(self) -> &'static str {
        match self {
            Kind::Handshake => "connection attempts refused or abandoned",
            Kind::Incoming => "connection attempts turned away before the handshake",
            Kind::Credentials => "client certificates refused",
            Kind::PartialFrame => "connections closed over incomplete frames",
            Kind::Denied => "refusals by policy",
            Kind::SlowConsumer => "slow-consumer detections (read batches with drops, disconnects)",
            Kind::LinkGone => "read batches with forwards to a link going down",
        }
    }
}

/// The window every kind is summed over.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Identities tracked per window for [`LogThrottle::note_identity`].
pub const MAX_IDENTITIES: usize = 1024;

#[derive(Debug, Default)]
struct Window {
    /// Events per (kind, reason) in the current window, the first included.
    counts: BTreeMap<(Kind, &'static str), u64>,
    /// Events per (kind, identity) in the current window, the first included;
    /// at most [`MAX_IDENTITIES`] entries.
    identities: BTreeMap<Kind, HashMap<Box<str>, u64>>,
    /// Entries in `identities`, all kinds together.
    tracked: usize,
    /// Events of identities beyond the tracked ones, per kind.
    untracked: BTreeMap<Kind, u64>,
}

/// The end-of-window line of one identity whose events were not all logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    pub kind: Kind,
    /// The identity; `None` sums the events of identities beyond
    /// [`MAX_IDENTITIES`] (none of them logged).
    pub identity: Option<String>,
    /// Events not logged in full in the window.
    pub count: u64,
}

impl std::fmt::Display for Suppressed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.identity {
            Some(id) => write!(
                f,
                "{id}: {} more {} in the last {} s (suppressed)",
                self.count,
                self.kind.summary(),
                WINDOW.as_secs()
            ),
            None => write!(
                f,
                "{} {} of identities beyond the {MAX_IDENTITIES} tracked in the last {} s (not logged)",
                self.count,
                self.kind.summary(),
                WINDOW.as_secs()
            ),
        }
    }
}

/// Shared by a node's tasks; [`note`](Self::note) is the only call on the
/// connection path.
#[derive(Debug, Default)]
pub struct LogThrottle {
    inner: Mutex<Window>,
}

/// One summary line: the kind, the total in the window, and per reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub kind: Kind,
    pub total: u64,
    pub reasons: Vec<(&'static str, u64)>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} in the last {} s:",
            self.total,
            self.kind.summary(),
            WINDOW.as_secs()
        )?;
        for (i, (r, n)) in self.reasons.iter().enumerate() {
            write!(f, "{}{r}={n}", if i == 0 { " " } else { ", " })?;
        }
        Ok(())
    }
}

impl LogThrottle {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one event; true when it is the first of its kind and reason in
    /// this window, i.e. the caller should log it in full.
    pub fn note(&self, kind: Kind, reason: &'static str) -> bool {
        let mut w = self.inner.lock();
        let n = w.counts.entry((kind, reason)).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Counts one event of `identity`; true when it is the first of its kind
    /// for that identity in this window, i.e. the caller should log it in
    /// full (naming the identity, the name and the action or reason).
    pub fn note_identity(&self, kind: Kind, identity: &str) -> bool {
        let mut guard = self.inner.lock();
        let w = &mut *guard;
        let ids = w.identities.entry(kind).or_default();
        if let Some(n) = ids.get_mut(identity) {
            *n += 1;
            return false;
        }
        if w.tracked >= MAX_IDENTITIES {
            *w.untracked.entry(kind).or_insert(0) += 1;
            return false;
        }
        ids.insert(identity.into(), 1);
        w.tracked += 1;
        true
    }

    /// Ends the identity window: a line per identity with events that were
    /// not logged, and one for the untracked identities; the map is emptied.
    pub fn roll_identities(&self) -> Vec<Suppressed> {
        let (ids, untracked) = {
            let mut w = self.inner.lock();
            w.tracked = 0;
            (
                std::mem::take(&mut w.identities),
                std::mem::take(&mut w.untracked),
            )
        };
        let mut out = Vec::new();
        for (kind, per_id) in ids {
            let mut lines: Vec<Suppressed> = per_id
                .into_iter()
                .filter(|(_, n)| *n > 1)
                .map(|(id, n)| Suppressed {
                    kind,
                    identity: Some(id.into()),
                    count: n - 1,
                })
                .collect();
            lines.sort_by(|a, b| a.identity.cmp(&b.identity));
            out.extend(lines);
        }
        out.extend(untracked.into_iter().map(|(kind, count)| Suppressed {
            kind,
            identity: None,
            count,
        }));
        out
    }

    /// Ends the window: a summary per kind that had more events than were
    /// logged in full (a kind whose every reason occurred once was logged
    /// whole already and gets none).
    pub fn roll(&self) -> Vec<Summary> {
        let counts = std::mem::take(&mut self.inner.lock().counts);
        let mut out: Vec<Summary> = Vec::new();
        for ((kind, reason), n) in counts {
            match out.last_mut() {
                Some(s) if s.kind == kind => {
                    s.total += n;
                    s.reasons.push((reason, n));
                }
                _ => out.push(Summary {
                    kind,
                    total: n,
                    reasons: vec![(reason, n)],
                }),
            }
        }
        out.retain(|s| s.total > s.reasons.len() as u64);
        out
    }

    /// Logs the window's summaries every [`WINDOW`] until `shutdown`.
    pub(crate) async fn run(
        self: std::sync::Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + WINDOW, WINDOW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {}
            }
            for s in self.roll() {
                tracing::warn!(kind = ?s.kind, total = s.total, "{s}");
            }
            for s in self.roll_identities() {
                let identity = s.identity.as_deref().unwrap_or("");
                tracing::warn!(kind = ?s.kind, identity, suppressed = s.count, "{s}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_of_each_reason_is_logged_and_the_rest_summed() {
        let t = LogThrottle::new();
        assert!(t.note(Kind::Handshake, "untrusted_issuer"));
        for _ in 0..399 {
            assert!(!t.note(Kind::Handshake, "untrusted_issuer"));
        }
        assert!(t.note(Kind::Handshake, "timeout"));
        assert!(!t.note(Kind::Handshake, "timeout"));
        assert!(t.note(Kind::Incoming, "retry"));
        let s = t.roll();
        assert_eq!(
            s,
            vec![Summary {
                kind: Kind::Handshake,
                total: 402,
                reasons: vec![("timeout", 2), ("untrusted_issuer", 400)],
            }],
            "Incoming had one event, logged in full already"
        );
        assert_eq!(
            s[0].to_string(),
            "402 connection attempts refused or abandoned in the last 10 s: timeout=2, untrusted_issuer=400"
        );
        // A new window logs the first one again.
        assert!(t.note(Kind::Handshake, "untrusted_issuer"));
        assert!(t.roll().is_empty());
    }

    #[test]
    fn first_event_per_identity_is_logged_and_the_rest_counted() {
        let t = LogThrottle::new();
        let (a, b) = ("spiffe://td/a", "spiffe://td/b");
        assert!(t.note_identity(Kind::SlowConsumer, a));
        for _ in 0..9 {
            assert!(!t.note_identity(Kind::SlowConsumer, a));
        }
        assert!(t.note_identity(Kind::SlowConsumer, b));
        assert!(t.note_identity(Kind::Denied, a), "each kind on its own");
        let s = t.roll_identities();
        assert_eq!(
            s,
            vec![Suppressed {
                kind: Kind::SlowConsumer,
                identity: Some(a.into()),
                count: 9,
            }],
            "b and a's denial had one event each, logged already"
        );
        assert_eq!(
            s[0].to_string(),
            "spiffe://td/a: 9 more slow-consumer detections (read batches with drops, disconnects) in the last 10 s (suppressed)"
        );
        assert!(t.note_identity(Kind::SlowConsumer, a), "a new window");
    }

    #[test]
    fn identities_beyond_the_bound_are_counted_not_tracked() {
        let t = LogThrottle::new();
        for i in 0..MAX_IDENTITIES {
            assert!(t.note_identity(Kind::Denied, &format!("spiffe://td/{i}")));
        }
        assert!(!t.note_identity(Kind::Denied, "spiffe://td/one-too-many"));
        assert!(!t.note_identity(Kind::Denied, "spiffe://td/another"));
        assert_eq!(t.inner.lock().tracked, MAX_IDENTITIES);
        let s = t.roll_identities();
        assert_eq!(
            s,
            vec![Suppressed {
                kind: Kind::Denied,
                identity: None,
                count: 2,
            }]
        );
        let w = t.inner.lock();
        assert!(
            w.identities.is_empty() && w.tracked == 0,
            "emptied every window"
        );
    }
}
