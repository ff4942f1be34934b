//! The member role (not the moderator): joining by request or invitation,
//! applying the moderator's commits in stream order, holding messages from
//! epochs not reached yet, leaving, and rebinding its credential.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use slim_auth::{Identity, TrustBundles};
use slim_mls::{Group, MlsError, MlsIdentity};

use super::codec::{Ctl, Stream, decode, denied, encode, session_id};
use super::core::Core;
use super::error::ChannelError;
use super::types::{ChannelConfig, ChannelEvent, ChannelStats, MemberInfo};
use crate::session::SessionError;
use crate::session::group::{Dest, Transmit};
use crate::session::packet::{Kind, Packet};

#[derive(Debug)]
enum State {
    Joining {
        /// The `Join` packet, resent until answered.
        packet: Vec<u8>,
        dest: Dest,
        next: Instant,
        deadline: Instant,
    },
    Active,
    Leaving {
        deadline: Instant,
    },
    /// Removed by the moderator; still fed, so later traffic is refused
    /// with a typed error rather than silently read.
    Removed,
    /// Refused, failed, left or closed.
    Done,
}

/// One member of a channel (not the moderator).
#[derive(Debug)]
pub struct Member {
    c: Core,
    identity: Option<MlsIdentity>,
    bundles: Option<TrustBundles>,
    moderator: Option<String>,
    state: State,
    held: VecDeque<(String, u64, Stream)>,
    rebinding: Option<Rebinding>,
    /// Last packet from the moderator, and whether its silence was reported.
    heard: Instant,
    silence_reported: bool,
}

/// A member's rebind commit waiting for the moderator to sequence it.
#[derive(Debug)]
struct Rebinding {
    svid: Arc<Identity>,
    commit: Vec<u8>,
    attempts: u32,
}

/// Rebind commits tried before giving up (each loses only to another commit).
const MAX_REBIND_ATTEMPTS: u32 = 5;

impl Member {
    /// Asks to join `channel`: a join request to `moderator` (full name) if
    /// known, else multicast to the channel (only the moderator answers).
    pub fn join(
        channel: &str,
        me: &str,
        identity: Option<MlsIdentity>,
        moderator: Option<&str>,
        cfg: ChannelConfig,
        now: Instant,
    ) -> Result<Member, ChannelError> {
        let dest = match moderator {
            Some(m) => Dest::Member(m.to_owned()),
            None => Dest::Group,
        };
        Self::start(channel, me, identity, moderator, dest, false, cfg, now)
    }

    /// Accepts an invitation (the `Invite` packet `p`, from `from`).
    pub fn accept_invite(
        me: &str,
        from: &str,
        p: &Packet,
        identity: Option<MlsIdentity>,
        cfg: ChannelConfig,
        now: Instant,
    ) -> Result<Member, ChannelError> {
        let channel = match decode::<Ctl>("control", &p.body)? {
            Ctl::Invite { channel, .. } => channel,
            _ => return Err(ChannelError::Malformed("not an invitation".into())),
        };
        if session_id(&channel) != p.session_id {
            return Err(ChannelError::Malformed(
                "invitation's session id is not its channel's".into(),
            ));
        }
        let dest = Dest::Member(from.to_owned());
        Self::start(&channel, me, identity, Some(from), dest, true, cfg, now)
    }

    /// Parses an invitation: `(channel, mls)`.
    pub fn parse_invite(p: &Packet) -> Result<(String, bool), ChannelError> {
        match decode::<Ctl>("control", &p.body)? {
            Ctl::Invite { channel, mls } if session_id(&channel) == p.session_id => {
                Ok((channel, mls))
            }
            _ => Err(ChannelError::Malformed("not an invitation".into())),
        }
    }

    /// The `Decline` answer to an invitation.
    pub fn decline_packet(me: &str, p: &Packet, reason: &str) -> Result<Vec<u8>, ChannelError> {
        let mut out = Packet::new(p.session_id, Kind::Control, me);
        out.body = Bytes::from(encode(&Ctl::Decline {
            reason: reason.to_owned(),
        })?);
        Ok(out.encode()?)
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        channel: &str,
        me: &str,
        identity: Option<MlsIdentity>,
        moderator: Option<&str>,
        dest: Dest,
        invited: bool,
        cfg: ChannelConfig,
        now: Instant,
    ) -> Result<Member, ChannelError> {
        let key_package = match (&identity, cfg.mls) {
            (Some(id), true) => id.key_package()?,
            (None, true) => return Err(ChannelError::Mls(MlsError::NoCertificate)),
            (_, false) => Vec::new(),
        };
        let c = Core::new(channel, me, cfg)?;
        let mut p = Packet::new(c.sid, Kind::Control, me);
        p.body = Bytes::from(encode(&Ctl::Join {
            key_package,
            invited,
        })?);
        let packet = p.encode()?;
        let mut m = Member {
            bundles: identity.as_ref().map(|i| i.bundles().clone()),
            identity,
            moderator: moderator.map(str::to_owned),
            state: State::Joining {
                packet: packet.clone(),
                dest: dest.clone(),
                next: now + c.cfg.retry,
                deadline: now + c.cfg.join_timeout,
            },
            c,
            held: VecDeque::new(),
            rebinding: None,
            heard: now,
            silence_reported: false,
        };
        m.c.transmits.push_back(Transmit { dest, packet });
        Ok(m)
    }

    pub fn session_id(&self) -> u64 {
        self.c.sid
    }

    pub fn channel(&self) -> &str {
        &self.c.channel
    }

    pub fn epoch(&self) -> u64 {
        self.c.epoch
    }

    pub fn members(&self) -> Vec<MemberInfo> {
        self.c.members()
    }

    pub fn moderator(&self) -> Option<&str> {
        self.moderator.as_deref()
    }

    pub fn stats(&self) -> ChannelStats {
        self.c.stats()
    }

    pub fn is_active(&self) -> bool {
        matches!(self.state, State::Active)
    }

    /// True once refused, failed, left or closed: the driver may stop. A
    /// removed member is not finished (it may still be subscribed).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done)
    }

    pub fn publish(&mut self, payload: &[u8], now: Instant) -> Result<(u64, u64), ChannelError> {
        match self.state {
            State::Active => self.c.publish(payload, now),
            State::Joining { .. } => Err(ChannelError::NotJoined),
            State::Removed | State::Leaving { .. } => Err(ChannelError::Removed),
            State::Done => Err(ChannelError::Closed),
        }
    }

    /// Asks the moderator to remove us; done at `Removed` or the deadline.
    pub fn leave(&mut self, now: Instant) {
        match self.state {
            State::Active => {
                if let Some(m) = self.moderator.clone() {
                    self.c.ctl(Dest::Member(m), &Ctl::Leave);
                }
                self.state = State::Leaving {
                    deadline: now + self.c.cfg.change_timeout,
                };
            }
            State::Joining { .. } | State::Removed => self.state = State::Done,
            State::Leaving { .. } | State::Done => {}
        }
    }

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
        if from == self.c.me || matches!(self.state, State::Done) {
            return Ok(());
        }
        if p.sender != from {
            return Err(SessionError::SenderMismatch {
                claimed: p.sender.clone(),
                from: from.to_owned(),
            }
            .into());
        }
        if self.moderator.as_deref() == Some(from) {
            self.heard = now;
            self.silence_reported = false;
        }
        match p.kind {
            Kind::Data | Kind::Gone | Kind::RtxRequest => {
                if matches!(self.state, State::Joining { .. }) {
                    // Before the Welcome nothing is decryptable; the Welcome
                    // says where the moderator's stream starts for us.
                    return Ok(());
                }
                for (sender, seq, body) in self.c.stream_packet(from, p, now)? {
                    self.on_stream(&sender, seq, &body, now);
                }
                Ok(())
            }
            Kind::Control => {
                let ctl: Ctl = decode("control", &p.body)?;
                let r = self.on_ctl(from, from_identity, ctl, now);
                // (The Welcome is what names the moderator.)
                if self.moderator.as_deref() == Some(from) {
                    self.heard = now;
                }
                r
            }
            Kind::Unreachable if denied(p).is_some() => {
                let reason = denied(p).unwrap_or_default();
                if let State::Joining { .. } = &self.state {
                    self.state = State::Done;
                }
                self.c.events.push_back(ChannelEvent::Denied { reason });
                Ok(())
            }
            Kind::Unreachable => {
                if let State::Joining { dest, .. } = &self.state
                    && matches!(dest, Dest::Member(_))
                {
                    let reason = format!(
                        "moderator unreachable: {}",
                        String::from_utf8_lossy(&p.body)
                    );
                    self.state = State::Done;
                    self.c.events.push_back(ChannelEvent::JoinFailed { reason });
                }
                Ok(())
            }
            kind => Err(SessionError::UnexpectedKind {
                kind,
                role: "channel member",
            }
            .into()),
        }
    }

    fn check_moderator(&self, from: &str, what: &'static str) -> Result<(), ChannelError> {
        match &self.moderator {
            Some(m) if m == from => Ok(()),
            None => Ok(()),
            Some(_) => Err(ChannelError::NotModerator {
                what,
                from: from.to_owned(),
            }),
        }
    }

    fn on_ctl(
        &mut self,
        from: &str,
        from_identity: Option<&str>,
        ctl: Ctl,
        now: Instant,
    ) -> Result<(), ChannelError> {
        match ctl {
            Ctl::Welcome {
                welcome,
                epoch,
                mod_seq,
                roster,
            } => {
                if !matches!(self.state, State::Joining { .. }) {
                    // Our `Joined` was lost: say it again.
                    if self.moderator.as_deref() == Some(from) && self.is_active() {
                        self.c.ctl(
                            Dest::Member(from.to_owned()),
                            &Ctl::Joined {
                                epoch: self.c.join_epoch,
                            },
                        );
                    }
                    return Ok(());
                }
                self.check_moderator(from, "welcome")?;
                if from_identity.is_none() {
                    return Err(ChannelError::Malformed(
                        "welcome from an unauthenticated sender".into(),
                    ));
                }
                self.on_welcome(from, welcome, epoch, mod_seq, roster)
            }
            Ctl::Refused { reason } => {
                if matches!(self.state, State::Joining { .. }) {
                    self.check_moderator(from, "refusal")?;
                    self.state = State::Done;
                    self.c
                        .events
                        .push_back(ChannelEvent::JoinRefused { reason });
                }
                Ok(())
            }
            Ctl::Removed { reason } => {
                self.check_moderator(from, "removal")?;
                match self.state {
                    State::Leaving { .. } => {
                        self.state = State::Done;
                        self.c.events.push_back(ChannelEvent::Removed { reason });
                    }
                    State::Active => {
                        self.state = State::Removed;
                        self.c.events.push_back(ChannelEvent::Removed { reason });
                    }
                    _ => {}
                }
                Ok(())
            }
            Ctl::Ping { n } => {
                self.check_moderator(from, "ping")?;
                if self.is_active() {
                    self.c.ctl(Dest::Member(from.to_owned()), &Ctl::Pong { n });
                }
                Ok(())
            }
            Ctl::RebindRefused { reason } => {
                self.check_moderator(from, "rebind refusal")?;
                self.retry_rebind(&reason);
                Ok(())
            }
            Ctl::Invite { .. } => Ok(()), // already in (or joining) this channel
            Ctl::Join { .. } => Ok(()),   // another joiner's multicast request
            Ctl::RosterQuery => Ok(()),   // someone asking the moderator
            _ => {
                let _ = now;
                Err(ChannelError::Malformed(
                    "member got a control message meant for the moderator".into(),
                ))
            }
        }
    }

    fn on_welcome(
        &mut self,
        from: &str,
        welcome: Vec<u8>,
        epoch: u64,
        mod_seq: u64,
        roster: Vec<(String, String)>,
    ) -> Result<(), ChannelError> {
        let roster: BTreeMap<String, String> = roster.into_iter().collect();
        if self.c.cfg.mls {
            let (Some(id), Some(bundles)) = (&self.identity, &self.bundles) else {
                return Err(ChannelError::Mls(MlsError::NoCertificate));
            };
            let g = Group::join(id, &welcome, bundles)?;
            let mut ids: Vec<String> = g.members().iter().map(|s| s.as_str().to_owned()).collect();
            let mut listed: Vec<String> = roster.values().cloned().collect();
            ids.sort();
            listed.sort();
            if g.epoch() != epoch || ids != listed {
                return Err(ChannelError::Malformed(
                    "the Welcome's roster or epoch disagrees with the MLS group".into(),
                ));
            }
            self.c.group = Some(g);
        }
        if !roster.contains_key(&self.c.me) {
            return Err(ChannelError::Malformed(
                "the Welcome's roster omits us".into(),
            ));
        }
        self.c.epoch = epoch;
        self.c.join_epoch = epoch;
        self.c.roster = roster;
        self.moderator = Some(from.to_owned());
        self.c.rx.expect_from(from, mod_seq + 1)?;
        self.state = State::Active;
        self.c
            .ctl(Dest::Member(from.to_owned()), &Ctl::Joined { epoch });
        self.c.events.push_back(ChannelEvent::Joined {
            epoch,
            members: self.c.members(),
        });
        Ok(())
    }

    fn epoch_of(item: &Stream) -> Option<u64> {
        match item {
            Stream::App { epoch, .. } | Stream::Commit { epoch, .. } => Some(*epoch),
            Stream::Close { .. } => None,
        }
    }

    fn on_stream(&mut self, sender: &str, seq: u64, body: &[u8], now: Instant) {
        match decode::<Stream>("stream item", body) {
            Ok(item) => self.on_item(sender, seq, item, now),
            Err(e) => self.c.reject(sender, e),
        }
    }

    fn on_item(&mut self, sender: &str, seq: u64, item: Stream, now: Instant) {
        let active = matches!(self.state, State::Active | State::Leaving { .. });
        let behind = Self::epoch_of(&item).is_some_and(|e| e > self.c.epoch);
        if active && (behind || self.held.iter().any(|(s, _, _)| s == sender)) {
            if self.held.len() >= self.c.cfg.max_held {
                let max = self.c.cfg.max_held;
                self.c.reject(sender, ChannelError::HeldOverflow(max));
                self.c.events.push_back(ChannelEvent::Lost {
                    sender: sender.to_owned(),
                    seqs: vec![seq],
                });
                return;
            }
            self.c.stats.held += 1;
            self.held.push_back((sender.to_owned(), seq, item));
            return;
        }
        match item {
            Stream::App { epoch, body } => {
                if matches!(self.state, State::Removed) && self.c.group.is_none() {
                    return self.c.reject(sender, ChannelError::Removed);
                }
                self.c.open_app(sender, seq, epoch, body)
            }
            Stream::Commit {
                epoch,
                commit,
                added,
                removed,
            } => {
                if let Err(e) = self.check_moderator(sender, "commit") {
                    return self.c.reject(sender, e);
                }
                if epoch < self.c.epoch {
                    return; // from before we joined
                }
                if !active {
                    // Removed: a later commit is not for us.
                    return self.c.reject(sender, ChannelError::Removed);
                }
                if let Err(e) = self.apply_commit(sender, &commit, added, removed) {
                    return self.c.reject(sender, e);
                }
                self.release_held(now);
            }
            Stream::Close { reason } => {
                if let Err(e) = self.check_moderator(sender, "close") {
                    return self.c.reject(sender, e);
                }
                if active {
                    self.c.ctl(Dest::Member(sender.to_owned()), &Ctl::CloseAck);
                }
                self.state = State::Done;
                self.c
                    .events
                    .push_back(ChannelEvent::ChannelClosed { reason });
            }
        }
    }

    fn apply_commit(
        &mut self,
        moderator: &str,
        commit: &[u8],
        added: Vec<(String, String)>,
        removed: Vec<(String, String)>,
    ) -> Result<(), ChannelError> {
        let mut self_removed = removed.iter().any(|(n, _)| *n == self.c.me);
        let mine = self
            .rebinding
            .as_ref()
            .is_some_and(|rb| rb.commit == commit);
        if mine {
            self.rebinding = None;
            if let Some(g) = &mut self.c.group {
                g.merge_pending_commit()?;
                self.c.epoch = g.epoch();
            }
            let epoch = self.c.epoch;
            self.c.ctl(
                Dest::Member(moderator.to_owned()),
                &Ctl::CommitAck { epoch },
            );
            let member = MemberInfo {
                name: self.c.me.clone(),
                spiffe_id: self.c.roster.get(&self.c.me).cloned().unwrap_or_default(),
            };
            self.c
                .events
                .push_back(ChannelEvent::CredentialUpdated { member, epoch });
            return Ok(());
        }
        let superseded = self.rebinding.is_some();
        if superseded && let Some(g) = &mut self.c.group {
            // Another commit came first: ours can no longer apply.
            let _ = g.clear_pending_commit();
        }
        let mut updated = Vec::new();
        match &mut self.c.group {
            Some(g) => {
                let info = g.process_commit(commit)?;
                updated = info.updated.clone();
                self_removed |= info.self_removed;
                let mut a: Vec<&str> = info.added.iter().map(|s| s.as_str()).collect();
                let mut b: Vec<&str> = added.iter().map(|(_, s)| s.as_str()).collect();
                let mut r: Vec<&str> = info.removed.iter().map(|s| s.as_str()).collect();
                let mut q: Vec<&str> = removed.iter().map(|(_, s)| s.as_str()).collect();
                a.sort_unstable();
                b.sort_unstable();
                r.sort_unstable();
                q.sort_unstable();
                self.c.epoch = info.epoch;
                if a != b || r != q {
                    // MLS is the truth; the names are the moderator's word.
                    self.c.reject(
                        moderator,
                        ChannelError::Malformed(
                            "commit roster disagrees with the MLS commit".into(),
                        ),
                    );
                }
            }
            None => self.c.epoch += 1,
        }
        for (n, _) in &removed {
            self.c.roster.remove(n);
            self.c.rx.forget(n);
        }
        for (n, s) in &added {
            self.c.roster.insert(n.clone(), s.clone());
        }
        let epoch = self.c.epoch;
        if self_removed {
            let (state, reason) = match self.state {
                State::Leaving { .. } => (State::Done, "left the channel"),
                _ => (State::Removed, "removed by the moderator"),
            };
            self.state = state;
            self.c.events.push_back(ChannelEvent::Removed {
                reason: reason.into(),
            });
            return Ok(());
        }
        self.c.ctl(
            Dest::Member(moderator.to_owned()),
            &Ctl::CommitAck { epoch },
        );
        let m = |v: Vec<(String, String)>| {
            v.into_iter()
                .map(|(name, spiffe_id)| MemberInfo { name, spiffe_id })
                .collect()
        };
        if !added.is_empty() || !removed.is_empty() {
            self.c.events.push_back(ChannelEvent::MembersChanged {
                epoch,
                added: m(added),
                removed: m(removed),
            });
        }
        for id in updated {
            let name = self
                .c
                .roster
                .iter()
                .find(|(_, s)| s.as_str() == id.as_str())
                .map(|(n, _)| n.clone())
                .unwrap_or_default();
            self.c.events.push_back(ChannelEvent::CredentialUpdated {
                member: MemberInfo {
                    name,
                    spiffe_id: id.as_str().to_owned(),
                },
                epoch,
            });
        }
        if superseded {
            // Put a new commit in line, made against the new epoch.
            self.retry_rebind("another commit came first");
        }
        Ok(())
    }

    fn release_held(&mut self, now: Instant) {
        let held = std::mem::take(&mut self.held);
        for (sender, seq, item) in held {
            self.on_item(&sender, seq, item, now);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.c.rx.handle_timeout(now);
        if matches!(self.state, State::Active | State::Leaving { .. }) {
            self.c.tail_probe(now);
        }
        for (sender, seq, body) in self.c.tracker_events() {
            self.on_stream(&sender, seq, &body, now);
        }
        if let Some(at) = self.silence_deadline()
            && at <= now
        {
            self.silence_reported = true;
            self.c
                .events
                .push_back(ChannelEvent::ModeratorUnresponsive {
                    silent_for: now.saturating_duration_since(self.heard),
                });
        }
        match &mut self.state {
            State::Joining {
                packet,
                dest,
                next,
                deadline,
            } => {
                if *deadline <= now {
                    self.state = State::Done;
                    self.c.events.push_back(ChannelEvent::JoinFailed {
                        reason: "no answer from the moderator".into(),
                    });
                } else if *next <= now {
                    *next = now + self.c.cfg.retry;
                    let t = Transmit {
                        dest: dest.clone(),
                        packet: packet.clone(),
                    };
                    self.c.transmits.push_back(t);
                }
            }
            State::Leaving { deadline } if *deadline <= now => {
                self.state = State::Done;
                self.c.events.push_back(ChannelEvent::Removed {
                    reason: "left (the moderator did not confirm)".into(),
                });
            }
            _ => {}
        }
    }

    /// When the moderator's silence becomes reportable (active members only).
    fn silence_deadline(&self) -> Option<Instant> {
        let active = matches!(self.state, State::Active);
        (active && !self.silence_reported)
            .then(|| self.heard + self.c.cfg.ping_interval * self.c.cfg.max_missed_pings.max(1))
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = match (self.c.rx.poll_timeout(), self.silence_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let s = match &self.state {
            State::Joining { next, deadline, .. } => Some((*next).min(*deadline)),
            State::Leaving { deadline } => Some(
                self.c
                    .tail_timeout()
                    .map_or(*deadline, |x| x.min(*deadline)),
            ),
            State::Active => self.c.tail_timeout(),
            _ => None,
        };
        match (t, s) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.c.poll_transmit()
    }

    pub fn poll_event(&mut self) -> Option<ChannelEvent> {
        self.c.events.pop_front()
    }

    /// Re-binds our MLS credential to a rotated SVID (same SPIFFE ID): a
    /// self-update commit, sent to the moderator, which sequences it into
    /// its stream; we apply it when it comes back. Publishing fails with
    /// `PendingCommit` meanwhile.
    pub fn rebind(&mut self, svid: Arc<Identity>, _now: Instant) -> Result<(), ChannelError> {
        if !self.is_active() {
            return Err(ChannelError::NotJoined);
        }
        if self.rebinding.is_some() {
            return Err(ChannelError::Mls(MlsError::PendingCommit));
        }
        self.try_rebind(svid, 0)
    }

    fn try_rebind(&mut self, svid: Arc<Identity>, attempts: u32) -> Result<(), ChannelError> {
        let (Some(g), Some(moderator)) = (&mut self.c.group, self.moderator.clone()) else {
            return Err(ChannelError::Malformed(
                "a channel without MLS has no credential to rebind".into(),
            ));
        };
        let commit = g.rebind(&svid)?.commit;
        let epoch = self.c.epoch;
        self.c.ctl(
            Dest::Member(moderator),
            &Ctl::Rebind {
                epoch,
                commit: commit.clone(),
            },
        );
        self.rebinding = Some(Rebinding {
            svid,
            commit,
            attempts,
        });
        Ok(())
    }

    /// Drops our pending rebind commit and makes a new one, a bounded number
    /// of times.
    fn retry_rebind(&mut self, why: &str) {
        let Some(rb) = self.rebinding.take() else {
            return;
        };
        if let Some(g) = &mut self.c.group {
            let _ = g.clear_pending_commit();
        }
        let me = self.c.me.clone();
        if rb.attempts + 1 >= MAX_REBIND_ATTEMPTS {
            let e = ChannelError::Malformed(format!("rebind abandoned: {why}"));
            return self.c.reject(&me, e);
        }
        if let Err(e) = self.try_rebind(rb.svid, rb.attempts + 1) {
            self.c.reject(&me, e);
        }
    }
}
