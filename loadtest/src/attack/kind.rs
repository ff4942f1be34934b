//! The kinds of attack and their defaults (a file of its own, so that the
//! report and the runner both use it without depending on each other).

use clap::ValueEnum;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Real QUIC Initials (real ClientHellos) at --rate, never continued.
    InitialFlood,
    /// --count clients whose certificate the node does not trust.
    RefusedHandshakes,
    /// --count valid clients that never send a hello.
    SilentClients,
    /// Random datagrams (some shaped like Initials) at --rate.
    Junk,
    /// --count valid clients stalling inside a maximal frame.
    StalledFrames,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::InitialFlood => "initial-flood",
            Kind::RefusedHandshakes => "refused-handshakes",
            Kind::SilentClients => "silent-clients",
            Kind::Junk => "junk",
            Kind::StalledFrames => "stalled-frames",
        }
    }

    pub(crate) fn default_rate(self) -> f64 {
        match self {
            Kind::InitialFlood => 1000.0,
            Kind::RefusedHandshakes => 500.0,
            Kind::SilentClients | Kind::StalledFrames => 100.0,
            Kind::Junk => 50_000.0,
        }
    }

    pub(crate) fn default_count(self) -> usize {
        match self {
            Kind::RefusedHandshakes => 5000,
            Kind::SilentClients => 300,
            Kind::StalledFrames => 200,
            Kind::InitialFlood | Kind::Junk => 0,
        }
    }
}
