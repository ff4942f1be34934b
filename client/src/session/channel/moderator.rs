//! The moderator role's API: creating the channel, inviting, removing,
//! closing, publishing, and handling packets and timers. Its state and the
//! sequencing of membership changes are in `sequencer.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use slim_auth::policy::Policy;
use slim_auth::{Identity, SpiffeId};
use slim_mls::{Group, MlsError, MlsIdentity};

use super::codec::{Ctl, Stream, decode, denied};
use super::core::{Core, service_of};
use super::error::ChannelError;
use super::sequencer::{Change, Closing, Moderator, Op};
use super::types::{ChannelConfig, ChannelEvent, ChannelStats, MemberInfo};
use crate::session::SessionError;
use crate::session::group::{Dest, Transmit};
use crate::session::packet::{Kind, Packet};

impl Moderator {
    /// Creates the channel `channel` with `me` (full name) as moderator and
    /// only member. `identity` is required with MLS on (the moderator's
    /// SPIFFE ID otherwise comes from `spiffe_id`).
    pub fn new(
        channel: &str,
        me: &str,
        identity: Option<MlsIdentity>,
        spiffe_id: &str,
        cfg: ChannelConfig,
        now: Instant,
    ) -> Result<Moderator, ChannelError> {
        let admission = if cfg.admission.is_empty() {
            None
        } else {
            // Through the policy file syntax: one rule per pattern, no grants
            // (only "does a rule match this ID" is asked).
            let mut toml = String::new();
            for p in &cfg.admission {
                let quoted = p.replace('\\', "\\\\").replace('"', "\\\"");
                toml.push_str(&format!("[[rule]]\nspiffe_id = \"{quoted}\"\n"));
            }
            Some(Policy::from_toml(&toml).map_err(|e| ChannelError::Admission(e.to_string()))?)
        };
        let mut c = Core::new(channel, me, cfg)?;
        let my_id = if c.cfg.mls {
            let id = identity
                .as_ref()
                .ok_or(ChannelError::Mls(MlsError::NoCertificate))?;
            c.group = Some(Group::create(id, channel.as_bytes())?);
            id.spiffe_id().as_str().to_owned()
        } else {
            spiffe_id.to_owned()
        };
        c.roster.insert(me.to_owned(), my_id);
        let next_ping = now + c.cfg.ping_interval;
        Ok(Moderator {
            c,
            admission,
            queue: VecDeque::new(),
            inflight: None,
            invites: HashMap::new(),
            unroutable_invites: HashMap::new(),
            live: HashMap::new(),
            next_ping,
            ping_n: 0,
            closing: None,
            finished: false,
        })
    }

    pub fn session_id(&self) -> u64 {
        self.c.sid
    }

    pub fn epoch(&self) -> u64 {
        self.c.epoch
    }

    /// The roster (moderator included) at the current epoch.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.c.members()
    }

    pub fn stats(&self) -> ChannelStats {
        self.c.stats()
    }

    /// Membership changes queued or in flight, and outstanding invitations.
    pub fn pending(&self) -> usize {
        self.queue.len() + usize::from(self.inflight.is_some()) + self.invites.len()
    }

    /// True once the channel is closed and every member acknowledged (or the
    /// deadline passed): the driver may stop.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Encrypts and multicasts one message; returns its `(seq, epoch)`.
    pub fn publish(&mut self, payload: &[u8], now: Instant) -> Result<(u64, u64), ChannelError> {
        if self.closing.is_some() {
            return Err(ChannelError::Closed);
        }
        self.c.publish(payload, now)
    }

    /// Why the invitation of `name` failed, if the node could not route it.
    pub fn take_unroutable_invite(&mut self, name: &str) -> Option<String> {
        self.unroutable_invites.remove(name)
    }

    /// Invites `name` (a full name, or a service name: one of its instances
    /// answers).
    pub fn invite(&mut self, name: &str, now: Instant) -> Result<(), ChannelError> {
        self.unroutable_invites.remove(name);
        if self.closing.is_some() {
            return Err(ChannelError::Closed);
        }
        if self.c.roster.contains_key(name) || self.invites.contains_key(name) {
            return Err(ChannelError::AlreadyMember(name.to_owned()));
        }
        if self.pending() >= self.c.cfg.max_pending {
            return Err(ChannelError::QueueFull(self.pending()));
        }
        self.invites
            .insert(name.to_owned(), now + self.c.cfg.join_timeout);
        let ctl = Ctl::Invite {
            channel: self.c.channel.clone(),
            mls: self.c.cfg.mls,
        };
        self.c.ctl(Dest::Member(name.to_owned()), &ctl);
        Ok(())
    }

    /// Queues the removal of a member named by full name, service name (if
    /// exactly one member has it) or SPIFFE ID.
    pub fn remove(&mut self, who: &str, reason: &str, now: Instant) -> Result<(), ChannelError> {
        if self.closing.is_some() {
            return Err(ChannelError::Closed);
        }
        let name = self.resolve(who)?;
        if name == self.c.me {
            return Err(ChannelError::Malformed(
                "the moderator cannot remove itself; close the channel".into(),
            ));
        }
        self.queue_remove(&name, reason)?;
        self.start_next(now);
        Ok(())
    }

    fn resolve(&self, who: &str) -> Result<String, ChannelError> {
        if self.c.roster.contains_key(who) {
            return Ok(who.to_owned());
        }
        let hits: Vec<&String> = self
            .c
            .roster
            .iter()
            .filter(|(n, id)| service_of(n) == who || *id == who)
            .map(|(n, _)| n)
            .collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            _ => Err(ChannelError::NotAMember(who.to_owned())),
        }
    }

    /// Closes the channel: every member is told (in the moderator's stream,
    /// after everything sent before). Queued changes are dropped.
    pub fn close(&mut self, reason: &str, now: Instant) -> Result<(), ChannelError> {
        if self.closing.is_some() {
            return Ok(());
        }
        self.queue.clear();
        for (name, _) in self.invites.drain() {
            self.c.events.push_back(ChannelEvent::InviteFailed {
                name,
                reason: "channel closed".into(),
            });
        }
        self.c.send_stream(
            &Stream::Close {
                reason: reason.to_owned(),
            },
            now,
        )?;
        let waiting = self.others();
        self.closing = Some(Closing {
            reason: reason.to_owned(),
            waiting,
            deadline: now + self.c.cfg.change_timeout,
        });
        self.check_closed(now);
        Ok(())
    }

    /// Handles one packet routed to this channel. `from_identity` is the
    /// sender's SPIFFE ID as authenticated by its node.
    pub fn handle_packet(
        &mut self,
        from: &str,
        from_identity: Option<&str>,
        p: &Packet,
        now: Instant,
    ) {
        if let Err(e) = self.on_packet(from, from_identity, p, now) {
            self.c.reject(from, e);
        }
    }

    fn on_packet(
        &mut self,
        from: &str,
        from_identity: Option<&str>,
        p: &Packet,
        now: Instant,
    ) -> Result<(), ChannelError> {
        if p.session_id != self.c.sid {
            return Err(SessionError::WrongSession {
                expected: self.c.sid,
                got: p.session_id,
            }
            .into());
        }
        if from == self.c.me || self.finished {
            return Ok(()); // our own multicast coming back
        }
        if p.sender != from {
            return Err(SessionError::SenderMismatch {
                claimed: p.sender.clone(),
                from: from.to_owned(),
            }
            .into());
        }
        if let Some(l) = self.live.get_mut(from) {
            l.alive = true;
        }
        match p.kind {
            Kind::Data | Kind::Gone | Kind::RtxRequest => {
                for (sender, seq, body) in self.c.stream_packet(from, p, now)? {
                    match decode::<Stream>("stream item", &body) {
                        Ok(Stream::App { epoch, body }) => {
                            self.c.open_app(&sender, seq, epoch, body)
                        }
                        Ok(_) => self.c.reject(
                            &sender,
                            ChannelError::NotModerator {
                                what: "commit or close",
                                from: sender.clone(),
                            },
                        ),
                        Err(e) => self.c.reject(&sender, e),
                    }
                }
                Ok(())
            }
            Kind::Control => {
                let ctl: Ctl = decode("control", &p.body)?;
                self.on_ctl(from, from_identity, ctl, now)
            }
            Kind::Unreachable if denied(p).is_some() => {
                let reason = denied(p).unwrap_or_default();
                self.c.events.push_back(ChannelEvent::Denied { reason });
                Ok(())
            }
            // The node has no route to an invitee: nobody serves that name,
            // so the invitation cannot be answered; fail it now rather
            // than at its deadline.
            Kind::Unreachable
                if p.flags & crate::session::mux::UNREACHABLE_FROM_NODE != 0
                    && p.seq == u64::from(slim_wire::ErrorCode::NO_ROUTE.0)
                    && self.invites.contains_key(from) =>
            {
                self.invites.remove(from);
                let reason = format!("nobody serves {from}");
                if self.unroutable_invites.len() < 1024 {
                    self.unroutable_invites
                        .insert(from.to_owned(), reason.clone());
                }
                self.c.events.push_back(ChannelEvent::InviteFailed {
                    name: from.to_owned(),
                    reason,
                });
                Ok(())
            }
            // Other node refusals of our own publishes: the timers deal with them.
            Kind::Unreachable => Ok(()),
            kind => Err(SessionError::UnexpectedKind {
                kind,
                role: "channel moderator",
            }
            .into()),
        }
    }

    fn being_admitted(&self, name: &str) -> bool {
        self.queue
            .iter()
            .any(|c| matches!(c, Change::Add { name: n, .. } if n == name))
    }

    /// A roster read without joining: for members (by SPIFFE ID, so an
    /// operator tool running as a member's identity may read it) and for
    /// identities the admission policy admits — whoever could join anyway.
    fn on_roster_query(&mut self, from: &str, from_identity: Option<&str>) {
        let allowed = from_identity.is_some_and(|id| {
            self.c.roster.values().any(|v| v == id)
                || match (&self.admission, SpiffeId::parse(id)) {
                    (Some(policy), Ok(sid)) => policy.grants(Some(&sid)).is_ok(),
                    _ => false,
                }
        });
        let answer = if allowed {
            Ctl::Roster {
                epoch: self.c.epoch,
                members: self
                    .c
                    .roster
                    .iter()
                    .map(|(n, id)| (n.clone(), id.clone()))
                    .collect(),
            }
        } else {
            Ctl::Refused {
                reason: format!(
                    "{} may not read the roster: neither a member nor admitted by the channel's admission policy",
                    from_identity.unwrap_or("an unauthenticated client")
                ),
            }
        };
        self.c.ctl(Dest::Member(from.to_owned()), &answer);
    }

    fn on_ctl(
        &mut self,
        from: &str,
        from_identity: Option<&str>,
        ctl: Ctl,
        now: Instant,
    ) -> Result<(), ChannelError> {
        match ctl {
            Ctl::Join {
                key_package,
                invited,
            } => self.on_join(from, from_identity, key_package, invited, now),
            Ctl::Decline { reason } => {
                if let Some(k) = self.invite_for(from) {
                    self.invites.remove(&k);
                    self.c.events.push_back(ChannelEvent::InviteFailed {
                        name: from.to_owned(),
                        reason: format!("declined: {reason}"),
                    });
                }
                Ok(())
            }
            Ctl::Joined { epoch } => {
                if let Some(f) = &mut self.inflight
                    && let Op::Add { member } = &f.op
                    && member.name == from
                    && f.epoch == epoch
                {
                    f.welcome = None;
                }
                self.check_done(now);
                Ok(())
            }
            Ctl::CommitAck { epoch } => {
                if let Some(f) = &mut self.inflight
                    && f.epoch == epoch
                {
                    f.waiting.remove(from);
                }
                self.check_done(now);
                Ok(())
            }
            Ctl::Leave => {
                if self.c.roster.contains_key(from) {
                    self.queue_remove(from, "left")?;
                    self.start_next(now);
                } else {
                    // Already out (e.g. a repeated leave): confirm again.
                    self.c.ctl(
                        Dest::Member(from.to_owned()),
                        &Ctl::Removed {
                            reason: "not a member".into(),
                        },
                    );
                }
                Ok(())
            }
            Ctl::RosterQuery => {
                self.on_roster_query(from, from_identity);
                Ok(())
            }
            Ctl::Rebind { epoch, commit } => {
                if !self.c.roster.contains_key(from) || self.c.group.is_none() {
                    return Err(ChannelError::NotAMember(from.to_owned()));
                }
                if self.queue.len() >= self.c.cfg.max_pending {
                    self.c.ctl(
                        Dest::Member(from.to_owned()),
                        &Ctl::RebindRefused {
                            reason: "too many pending changes".into(),
                        },
                    );
                    return Ok(());
                }
                self.queue.push_back(Change::MemberCommit {
                    name: from.to_owned(),
                    epoch,
                    commit,
                });
                self.start_next(now);
                Ok(())
            }
            Ctl::Pong { .. } => Ok(()),
            Ctl::CloseAck => {
                if let Some(cl) = &mut self.closing {
                    cl.waiting.remove(from);
                }
                self.check_closed(now);
                Ok(())
            }
            Ctl::Invite { .. }
            | Ctl::Welcome { .. }
            | Ctl::Refused { .. }
            | Ctl::Removed { .. }
            | Ctl::RebindRefused { .. }
            | Ctl::Roster { .. }
            | Ctl::Ping { .. } => Err(ChannelError::Malformed(
                "moderator-only control message sent to the moderator".into(),
            )),
        }
    }

    /// The invitation a `Join` from full name `from` answers, if any.
    fn invite_for(&self, from: &str) -> Option<String> {
        [from, service_of(from)]
            .into_iter()
            .find(|k| self.invites.contains_key(*k))
            .map(str::to_owned)
    }

    fn on_join(
        &mut self,
        from: &str,
        from_identity: Option<&str>,
        key_package: Vec<u8>,
        invited: bool,
        now: Instant,
    ) -> Result<(), ChannelError> {
        if self.closing.is_some() {
            self.refuse(from, from_identity, "the channel is closing".into());
            return Ok(());
        }
        // A repeated request (our Welcome or its answer was lost).
        if self.c.roster.contains_key(from) {
            if let Some(f) = &mut self.inflight
                && let Op::Add { member } = &f.op
                && member.name == from
                && let Some((_, at)) = &mut f.welcome
            {
                *at = now;
            }
            return Ok(());
        }
        if self.being_admitted(from) {
            return Ok(());
        }
        let Some(id) = from_identity else {
            self.refuse(from, None, "no authenticated SPIFFE ID".into());
            return Ok(());
        };
        if invited {
            match self.invite_for(from) {
                Some(k) => {
                    self.invites.remove(&k);
                }
                None => {
                    self.refuse(from, Some(id), "not invited".into());
                    return Ok(());
                }
            }
        } else {
            let allowed = match (&self.admission, SpiffeId::parse(id)) {
                (Some(policy), Ok(sid)) => policy.grants(Some(&sid)).is_ok(),
                _ => false,
            };
            if !allowed {
                let reason = if self.admission.is_none() {
                    "the channel admits members by invitation only".to_string()
                } else {
                    format!("{id} is not allowed by the channel's admission policy")
                };
                self.refuse(from, Some(id), reason);
                return Ok(());
            }
        }
        if self.c.cfg.mls {
            match slim_mls::key_package_claimed_id(&key_package) {
                Ok(claimed) if claimed == id => {}
                Ok(claimed) => {
                    let reason = format!(
                        "the key package's credential is for {claimed}, but the node authenticated {id}"
                    );
                    self.refuse(from, Some(id), reason);
                    return Ok(());
                }
                Err(e) => {
                    self.refuse(from, Some(id), format!("bad key package: {e}"));
                    return Ok(());
                }
            }
        }
        if self.c.roster.values().any(|v| v == id) && self.c.cfg.mls {
            self.refuse(from, Some(id), format!("{id} is already a member"));
            return Ok(());
        }
        if self.c.roster.len() + self.queue.len() >= self.c.cfg.max_members {
            self.refuse(from, Some(id), "the channel is full".into());
            return Ok(());
        }
        if self.queue.len() >= self.c.cfg.max_pending {
            self.refuse(from, Some(id), "too many pending membership changes".into());
            return Ok(());
        }
        self.queue.push_back(Change::Add {
            name: from.to_owned(),
            spiffe_id: id.to_owned(),
            key_package,
        });
        self.start_next(now);
        Ok(())
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.c.rx.handle_timeout(now);
        self.c.tail_probe(now);
        for (sender, seq, body) in self.c.tracker_events() {
            if let Ok(Stream::App { epoch, body }) = decode::<Stream>("stream item", &body) {
                self.c.open_app(&sender, seq, epoch, body);
            }
        }
        if let Some(f) = &mut self.inflight
            && let Some((packet, at)) = &mut f.welcome
            && *at <= now
        {
            *at = now + self.c.cfg.retry;
            let dest = match &f.op {
                Op::Add { member } => Dest::Member(member.name.clone()),
                Op::Remove { .. } | Op::Update { .. } => Dest::Group,
            };
            let packet = packet.clone();
            self.c.transmits.push_back(Transmit { dest, packet });
        }
        self.check_done(now);
        let expired: Vec<String> = self
            .invites
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in expired {
            self.invites.remove(&name);
            self.c.events.push_back(ChannelEvent::InviteFailed {
                name,
                reason: "no answer to the invitation".into(),
            });
        }
        if self.next_ping <= now && self.closing.is_none() {
            self.next_ping = now + self.c.cfg.ping_interval;
            let max = self.c.cfg.max_missed_pings;
            let mut report = Vec::new();
            for (name, l) in self.live.iter_mut() {
                if l.alive {
                    l.missed = 0;
                } else {
                    l.missed += 1;
                    if l.missed == max {
                        report.push(name.clone());
                    }
                }
                l.alive = false;
            }
            for name in report {
                self.unresponsive(&name, max);
            }
            self.start_next(now);
            if !self.live.is_empty() {
                self.ping_n += 1;
                let n = self.ping_n;
                self.c.ctl(Dest::Group, &Ctl::Ping { n });
            }
        }
        self.check_closed(now);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let mut t = self.c.rx.poll_timeout();
        let mut min = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some(x) = self.c.tail_timeout() {
            min(x);
        }
        if self.closing.is_none() {
            min(self.next_ping);
        }
        if let Some(f) = &self.inflight {
            min(f.deadline);
            if let Some((_, at)) = &f.welcome {
                min(*at);
            }
        }
        if let Some(d) = self.invites.values().min() {
            min(*d);
        }
        if let Some(cl) = &self.closing {
            min(cl.deadline);
        }
        t
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.c.poll_transmit()
    }

    pub fn poll_event(&mut self) -> Option<ChannelEvent> {
        self.c.events.pop_front()
    }

    /// Re-binds the moderator's MLS credential to a rotated SVID (same
    /// SPIFFE ID): a self-update commit, sequenced like any change.
    pub fn rebind(&mut self, svid: Arc<Identity>, now: Instant) -> Result<(), ChannelError> {
        if self.c.group.is_none() {
            return Err(ChannelError::Malformed(
                "a channel without MLS has no credential to rebind".into(),
            ));
        }
        if self.closing.is_some() {
            return Err(ChannelError::Closed);
        }
        if self.queue.len() >= self.c.cfg.max_pending {
            return Err(ChannelError::QueueFull(self.queue.len()));
        }
        self.queue.push_back(Change::Rebind { svid });
        self.start_next(now);
        Ok(())
    }
}
