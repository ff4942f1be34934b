//! Log lines an attacker cannot multiply. Events that anyone on the network
//! can cause (refused handshakes, hello timeouts, stalled frames, attempts
//! turned away at the door) are logged in full once per reason per window;
//! the rest of the window is counted and summed up in one line when it
//! ends: "412 handshakes refused in the last 10 s: untrusted_issuer=400,
//! timeout=12". The metrics count every event; the log shows what happened
//! and an example of each kind, at a rate the node decides.

use std::collections::BTreeMap;
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
}

impl Kind {
    fn summary(self) -> &'static str {
        match self {
            Kind::Handshake => "connection attempts refused or abandoned",
            Kind::Incoming => "connection attempts turned away before the handshake",
            Kind::Credentials => "client certificates refused",
            Kind::PartialFrame => "connections closed over incomplete frames",
        }
    }
}

/// The window every kind is summed over.
pub const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Window {
    /// Events per (kind, reason) in the current window, the first included.
    counts: BTreeMap<(Kind, &'static str), u64>,
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
}
