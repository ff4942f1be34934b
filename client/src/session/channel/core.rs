//! What the moderator and the member share: [`Core`] (the MLS group, the
//! roster, the sending stream, the receiving trackers and the output queues)
//! and small helpers on names.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use slim_mls::Group;

use super::codec::{Ctl, Stream, encode, session_id};
use super::error::ChannelError;
use super::types::{ChannelConfig, ChannelEvent, ChannelStats, MemberInfo};
use crate::session::group::{Dest, GapTracker, SenderSeq, Transmit};
use crate::session::packet::{Kind, Packet};
use crate::session::{SessionError, SessionEvent, backoff};

/// Longest wait between two tail-loss probes.
const TAIL_PROBE_MAX: std::time::Duration = std::time::Duration::from_secs(8);

/// The service part (`org/ns/service`) of a full name.
pub(super) fn service_of(name: &str) -> &str {
    match name.match_indices('/').nth(2) {
        Some((i, _)) => &name[..i],
        None => name,
    }
}

fn info((name, spiffe_id): (&String, &String)) -> MemberInfo {
    MemberInfo {
        name: name.clone(),
        spiffe_id: spiffe_id.clone(),
    }
}

/// What moderator and member share: the MLS group, the roster, the sending
/// stream and the receiving trackers, the output queues.
#[derive(Debug)]
pub(super) struct Core {
    pub(super) cfg: ChannelConfig,
    pub(super) sid: u64,
    pub(super) channel: String,
    pub(super) me: String,
    pub(super) group: Option<Group>,
    /// The MLS epoch, or the moderator's commit count without MLS.
    pub(super) epoch: u64,
    /// Messages from epochs before this one are not for us.
    pub(super) join_epoch: u64,
    /// Full name → SPIFFE ID, everyone including us.
    pub(super) roster: BTreeMap<String, String>,
    tx: SenderSeq,
    pub(super) rx: GapTracker,
    pub(super) transmits: VecDeque<Transmit>,
    pub(super) events: VecDeque<ChannelEvent>,
    pub(super) stats: ChannelStats,
    /// The next tail-loss probe of our stream, and how many were sent
    /// since its last item.
    tail: Option<(Instant, u32)>,
}

impl Core {
    pub(super) fn new(channel: &str, me: &str, cfg: ChannelConfig) -> Result<Core, ChannelError> {
        let sid = session_id(channel);
        Ok(Core {
            tx: SenderSeq::new(sid, me, cfg.group.clone())?,
            rx: GapTracker::new(sid, me, cfg.group.clone())?,
            cfg,
            sid,
            channel: channel.to_owned(),
            me: me.to_owned(),
            group: None,
            epoch: 0,
            join_epoch: 0,
            roster: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: ChannelStats::default(),
            tail: None,
        })
    }

    /// The counters, the sequencing layer's included.
    pub(super) fn stats(&self) -> ChannelStats {
        let (tx, rx) = (self.tx.stats(), self.rx.stats());
        ChannelStats {
            retransmitted: tx.retransmitted,
            rtx_requests: rx.requests_sent,
            recovered: rx.recovered,
            lost: rx.lost,
            duplicates: rx.duplicates,
            tail_probes: tx.tail_probes,
            ..self.stats.clone()
        }
    }

    pub(super) fn reject(&mut self, sender: &str, error: ChannelError) {
        self.stats.rejected += 1;
        if self.cfg.metrics {
            metrics::counter!("slim_client_channel_rejected_total", "reason" => error.reason())
                .increment(1);
        }
        tracing::debug!(channel = %self.channel, sender, %error, "channel: rejected");
        self.events.push_back(ChannelEvent::Rejected {
            sender: sender.to_owned(),
            error,
        });
    }

    pub(super) fn ctl(&mut self, dest: Dest, ctl: &Ctl) {
        let mut p = Packet::new(self.sid, Kind::Control, &self.me);
        match encode(ctl) {
            Ok(b) => p.body = Bytes::from(b),
            Err(e) => return self.reject(&self.me.clone(), e),
        }
        match p.encode() {
            Ok(packet) => self.transmits.push_back(Transmit { dest, packet }),
            Err(e) => self.reject(&self.me.clone(), e.into()),
        }
    }

    /// Keeps the output in the order things happened.
    fn drain(&mut self) {
        while let Some(t) = self.tx.poll_transmit() {
            self.transmits.push_back(t);
        }
        while let Some(t) = self.rx.poll_transmit() {
            self.transmits.push_back(t);
        }
    }

    pub(super) fn send_stream(&mut self, item: &Stream, now: Instant) -> Result<u64, ChannelError> {
        let seq = self.tx.handle_send(Bytes::from(encode(item)?), now)?;
        self.drain();
        if !self.cfg.tail_probe.is_zero() && self.cfg.tail_probes > 0 {
            self.tail = Some((now + self.cfg.tail_probe, 0));
        }
        Ok(seq)
    }

    /// When the next tail-loss probe is due.
    pub(super) fn tail_timeout(&self) -> Option<Instant> {
        self.tail.map(|(at, _)| at)
    }

    /// Sends the tail-loss probe if it is due (see `ChannelConfig::tail_probe`).
    pub(super) fn tail_probe(&mut self, now: Instant) {
        let Some((at, sent)) = self.tail else { return };
        if at > now {
            return;
        }
        self.tx.probe_tail();
        self.drain();
        let sent = sent + 1;
        self.tail = (sent < self.cfg.tail_probes).then(|| {
            let wait = backoff(self.cfg.tail_probe, TAIL_PROBE_MAX, sent + 1);
            (now + wait, sent)
        });
    }

    pub(super) fn publish(
        &mut self,
        payload: &[u8],
        now: Instant,
    ) -> Result<(u64, u64), ChannelError> {
        let body = match &mut self.group {
            Some(g) => g.encrypt(payload)?,
            None => payload.to_vec(),
        };
        let epoch = self.epoch;
        let seq = self.send_stream(&Stream::App { epoch, body }, now)?;
        self.stats.published += 1;
        Ok((seq, epoch))
    }

    pub(super) fn members(&self) -> Vec<MemberInfo> {
        self.roster.iter().map(info).collect()
    }

    /// Decrypts (or passes through) an application message and checks its
    /// sender against the roster.
    pub(super) fn open_app(&mut self, sender: &str, seq: u64, epoch: u64, body: Vec<u8>) {
        if epoch < self.join_epoch {
            self.stats.before_join += 1;
            return;
        }
        let (spiffe_id, payload) = match &mut self.group {
            Some(g) => match g.decrypt(&body) {
                Ok(d) => (d.sender.as_str().to_owned(), d.plaintext),
                Err(e) => return self.reject(sender, e.into()),
            },
            None => match self.roster.get(sender) {
                Some(id) => (id.clone(), body),
                None => return self.reject(sender, ChannelError::NotAMember(sender.into())),
            },
        };
        if let Some(known) = self.roster.get(sender)
            && *known != spiffe_id
        {
            let e = ChannelError::SenderMismatch {
                name: sender.to_owned(),
                roster: known.clone(),
                signed: spiffe_id,
            };
            return self.reject(sender, e);
        }
        self.stats.delivered += 1;
        self.events.push_back(ChannelEvent::Message {
            sender: sender.to_owned(),
            spiffe_id,
            seq,
            epoch,
            payload: Bytes::from(payload),
        });
    }

    /// Routes sequencing packets; returns the stream items the tracker
    /// delivered, in order.
    pub(super) fn stream_packet(
        &mut self,
        from: &str,
        p: &Packet,
        now: Instant,
    ) -> Result<Vec<(String, u64, Bytes)>, ChannelError> {
        match p.kind {
            Kind::Data | Kind::Gone => self.rx.handle_packet(from, p, now)?,
            Kind::RtxRequest => self.tx.handle_packet(from, p, now)?,
            kind => {
                return Err(SessionError::UnexpectedKind {
                    kind,
                    role: "channel stream",
                }
                .into());
            }
        }
        self.drain();
        Ok(self.tracker_events())
    }

    pub(super) fn tracker_events(&mut self) -> Vec<(String, u64, Bytes)> {
        let mut out = Vec::new();
        while let Some(ev) = self.rx.poll_event() {
            match ev {
                SessionEvent::GroupDelivered {
                    sender,
                    seq,
                    payload,
                } => out.push((sender, seq, payload)),
                SessionEvent::Lost { sender, seqs } => {
                    self.events.push_back(ChannelEvent::Lost { sender, seqs })
                }
                _ => {}
            }
        }
        out
    }

    pub(super) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.drain();
        self.transmits.pop_front()
    }
}
