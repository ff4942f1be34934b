//! The figures of a `session` or `channel` run and their text forms.

use serde::Serialize;

/// One run's figures (a JSON line with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct SessionReport {
    /// "session" or "channel".
    pub kind: &'static str,
    pub system: &'static str,
    pub target: String,
    pub scenario: String,
    pub messages: u64,
    /// Receivers: 1 for a session, the members for a channel.
    pub receivers: usize,
    pub size_bytes: usize,
    /// Requested rate (0: as fast as allowed).
    pub rate_per_s: f64,
    pub mls: bool,
    /// Distinct messages delivered, summed over the receivers.
    pub delivered: u64,
    /// Every receiver got every message, each once and in order.
    pub complete: bool,
    pub in_order: bool,
    pub out_of_order: u64,
    /// Deliveries of a number already seen (bitset).
    pub duplicates: u64,
    /// Numbers never delivered, summed over the receivers.
    pub missing: u64,
    /// Reported lost by the SDK (`Lost` events), summed over the receivers.
    pub lost: u64,
    /// Session: the sender's retransmissions. Channel: the moderator's
    /// retransmissions answering the members' requests.
    pub retransmissions: u64,
    /// Channel: retransmission requests the members sent.
    pub rtx_requests: Option<u64>,
    /// From the first send until the last receiver had everything (or gave up).
    pub elapsed_s: f64,
    /// Messages per second over `elapsed_s` (per receiver).
    pub msgs_per_s: f64,
    /// How the run ended when it did not complete.
    pub notes: Vec<String>,
}

impl SessionReport {
    pub fn one_line(&self) -> String {
        format!(
            "{}: {} of {} delivered, {} duplicates, {} missing, {} lost, {} retransmissions, \
             {:.2} s, {:.0} msgs/s{}",
            self.scenario,
            self.delivered,
            self.messages * self.receivers as u64,
            self.duplicates,
            self.missing,
            self.lost,
            self.retransmissions,
            self.elapsed_s,
            self.msgs_per_s,
            if self.complete { "" } else { " (INCOMPLETE)" }
        )
    }

    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            (
                "system".into(),
                format!("{} ({})", self.system, self.target),
            ),
            ("scenario".into(), self.scenario.clone()),
            (
                "messages".into(),
                format!(
                    "{} x {} B to {} receiver(s), {}{}",
                    self.messages,
                    self.size_bytes,
                    self.receivers,
                    if self.rate_per_s > 0.0 {
                        format!("{} msgs/s", self.rate_per_s)
                    } else {
                        "as fast as allowed".into()
                    },
                    if self.mls { ", MLS" } else { "" }
                ),
            ),
            (
                "delivered".into(),
                format!(
                    "{} of {}",
                    self.delivered,
                    self.messages * self.receivers as u64
                ),
            ),
            (
                "in order".into(),
                if self.in_order {
                    "yes".into()
                } else {
                    format!("no ({} out of order)", self.out_of_order)
                },
            ),
            ("duplicates".into(), self.duplicates.to_string()),
            ("missing".into(), self.missing.to_string()),
            ("reported lost".into(), self.lost.to_string()),
            ("retransmissions".into(), self.retransmissions.to_string()),
        ];
        if let Some(r) = self.rtx_requests {
            rows.push(("rtx requests".into(), r.to_string()));
        }
        rows.push(("elapsed".into(), format!("{:.3} s", self.elapsed_s)));
        rows.push((
            "msgs/s".into(),
            format!("{} per receiver", crate::harness::fmt_num(self.msgs_per_s)),
        ));
        rows.push((
            "result".into(),
            if self.complete {
                "complete: every message once, in order".into()
            } else {
                "INCOMPLETE".into()
            },
        ));
        for n in &self.notes {
            rows.push(("note".into(), n.clone()));
        }
        crate::summary::rows_table(&rows)
    }
}
