//! The moderator's state ([`Moderator`]) and its membership-change
//! sequencer: the queue, the one change in flight (its commit, Welcome and
//! acks) and its completion, unresponsive members, the closing handshake.
//!
//! The role's public API and packet handling are in `moderator.rs`, which
//! builds on this file (never the reverse).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use slim_auth::policy::Policy;
use slim_auth::{Identity, SpiffeId};

use super::codec::{Ctl, Stream, encode};
use super::core::Core;
use super::error::ChannelError;
use super::types::{ChannelEvent, MemberInfo};
use crate::session::group::{Dest, Transmit};
use crate::session::packet::{Kind, Packet};

#[derive(Debug)]
pub(super) enum Change {
    Add {
        name: String,
        spiffe_id: String,
        key_package: Vec<u8>,
    },
    Remove {
        name: String,
        reason: String,
    },
    /// The moderator's own credential, for a rotated SVID.
    Rebind {
        svid: Arc<Identity>,
    },
    /// A member's self-update commit (its rebind), made at `epoch`.
    MemberCommit {
        name: String,
        epoch: u64,
        commit: Vec<u8>,
    },
}

#[derive(Debug)]
pub(super) enum Op {
    Add { member: MemberInfo },
    Remove { member: MemberInfo, reason: String },
    Update { member: MemberInfo },
}

#[derive(Debug)]
pub(super) struct InFlight {
    pub(super) op: Op,
    pub(super) epoch: u64,
    pub(super) waiting: BTreeSet<String>,
    /// Add: the Welcome packet to resend until the member answers `Joined`.
    pub(super) welcome: Option<(Vec<u8>, Instant)>,
    pub(super) deadline: Instant,
}

#[derive(Debug)]
pub(super) struct Closing {
    pub(super) reason: String,
    pub(super) waiting: BTreeSet<String>,
    pub(super) deadline: Instant,
}

#[derive(Debug, Default)]
pub(super) struct Liveness {
    pub(super) alive: bool,
    pub(super) missed: u32,
}

/// The moderator of one channel: a member that also sequences every
/// membership change.
#[derive(Debug)]
pub struct Moderator {
    pub(super) c: Core,
    pub(super) admission: Option<Policy>,
    pub(super) queue: VecDeque<Change>,
    pub(super) inflight: Option<InFlight>,
    /// Invited name (full or service) → answer deadline.
    pub(super) invites: HashMap<String, Instant>,
    /// Invitations the node could not route (nobody serves the name), by
    /// name, until taken by `Moderator::take_unroutable_invite`.
    pub(super) unroutable_invites: HashMap<String, String>,
    pub(super) live: HashMap<String, Liveness>,
    pub(super) next_ping: Instant,
    pub(super) ping_n: u64,
    pub(super) closing: Option<Closing>,
    pub(super) finished: bool,
}

impl Moderator {
    pub(super) fn queue_remove(&mut self, name: &str, reason: &str) -> Result<(), ChannelError> {
        let queued = self
            .queue
            .iter()
            .any(|c| matches!(c, Change::Remove { name: n, .. } if n == name));
        if queued {
            return Ok(());
        }
        if self.queue.len() >= self.c.cfg.max_pending {
            return Err(ChannelError::QueueFull(self.queue.len()));
        }
        self.queue.push_back(Change::Remove {
            name: name.to_owned(),
            reason: reason.to_owned(),
        });
        Ok(())
    }

    pub(super) fn others(&self) -> BTreeSet<String> {
        self.c
            .roster
            .keys()
            .filter(|n| **n != self.c.me)
            .cloned()
            .collect()
    }

    pub(super) fn check_closed(&mut self, now: Instant) {
        let Some(cl) = &self.closing else { return };
        if self.finished || (!cl.waiting.is_empty() && now < cl.deadline) {
            return;
        }
        self.finished = true;
        let reason = cl.reason.clone();
        self.c
            .events
            .push_back(ChannelEvent::ChannelClosed { reason });
    }

    pub(super) fn refuse(&mut self, name: &str, spiffe_id: Option<&str>, reason: String) {
        if self.c.cfg.metrics {
            metrics::counter!("slim_client_channel_join_refused_total").increment(1);
        }
        self.c.ctl(
            Dest::Member(name.to_owned()),
            &Ctl::Refused {
                reason: reason.clone(),
            },
        );
        self.c.events.push_back(ChannelEvent::JoinRequestRefused {
            name: name.to_owned(),
            spiffe_id: spiffe_id.map(str::to_owned),
            reason,
        });
    }

    /// Starts the next queued change if none is in flight.
    pub(super) fn start_next(&mut self, now: Instant) {
        while self.inflight.is_none() && self.closing.is_none() {
            let Some(change) = self.queue.pop_front() else {
                return;
            };
            if let Err(e) = self.start(change, now) {
                let me = self.c.me.clone();
                self.c.reject(&me, e);
            }
        }
    }

    fn start(&mut self, change: Change, now: Instant) -> Result<(), ChannelError> {
        let old = self.c.epoch;
        match change {
            Change::Add {
                name,
                spiffe_id,
                key_package,
            } => {
                let (commit, welcome) = match &mut self.c.group {
                    Some(g) => match g.add_members(&[&key_package]) {
                        Ok(c) => (c.commit, c.welcome.unwrap_or_default()),
                        Err(e) => {
                            self.refuse(&name, Some(&spiffe_id), e.to_string());
                            return Ok(());
                        }
                    },
                    None => (Vec::new(), Vec::new()),
                };
                let waiting = self.others();
                let mod_seq = self.c.send_stream(
                    &Stream::Commit {
                        epoch: old,
                        commit,
                        added: vec![(name.clone(), spiffe_id.clone())],
                        removed: vec![],
                    },
                    now,
                )?;
                self.advance_epoch()?;
                let member = MemberInfo {
                    name: name.clone(),
                    spiffe_id: spiffe_id.clone(),
                };
                self.c.roster.insert(name.clone(), spiffe_id);
                self.live.insert(
                    name.clone(),
                    Liveness {
                        alive: true,
                        missed: 0,
                    },
                );
                self.c.events.push_back(ChannelEvent::MembersChanged {
                    epoch: self.c.epoch,
                    added: vec![member.clone()],
                    removed: vec![],
                });
                let w = Ctl::Welcome {
                    welcome,
                    epoch: self.c.epoch,
                    mod_seq,
                    roster: self
                        .c
                        .roster
                        .iter()
                        .map(|(a, b)| (a.clone(), b.clone()))
                        .collect(),
                };
                let mut p = Packet::new(self.c.sid, Kind::Control, &self.c.me);
                p.body = Bytes::from(encode(&w)?);
                let packet = p.encode()?;
                self.c.transmits.push_back(Transmit {
                    dest: Dest::Member(name.clone()),
                    packet: packet.clone(),
                });
                self.inflight = Some(InFlight {
                    op: Op::Add { member },
                    epoch: self.c.epoch,
                    waiting,
                    welcome: Some((packet, now + self.c.cfg.retry)),
                    deadline: now + self.c.cfg.change_timeout,
                });
            }
            Change::Remove { name, reason } => {
                let Some(spiffe_id) = self.c.roster.get(&name).cloned() else {
                    return Ok(());
                };
                let commit = match &mut self.c.group {
                    Some(g) => {
                        let id = SpiffeId::parse(&spiffe_id)
                            .map_err(|e| ChannelError::Malformed(e.to_string()))?;
                        g.remove_members(&[id])?.commit
                    }
                    None => Vec::new(),
                };
                self.c.send_stream(
                    &Stream::Commit {
                        epoch: old,
                        commit,
                        added: vec![],
                        removed: vec![(name.clone(), spiffe_id.clone())],
                    },
                    now,
                )?;
                self.advance_epoch()?;
                self.c.roster.remove(&name);
                self.live.remove(&name);
                // Should it join again, its new stream starts at 0.
                self.c.rx.forget(&name);
                let member = MemberInfo { name, spiffe_id };
                self.c.events.push_back(ChannelEvent::MembersChanged {
                    epoch: self.c.epoch,
                    added: vec![],
                    removed: vec![member.clone()],
                });
                self.c.ctl(
                    Dest::Member(member.name.clone()),
                    &Ctl::Removed {
                        reason: reason.clone(),
                    },
                );
                self.inflight = Some(InFlight {
                    op: Op::Remove { member, reason },
                    epoch: self.c.epoch,
                    waiting: self.others(),
                    welcome: None,
                    deadline: now + self.c.cfg.change_timeout,
                });
            }
            Change::Rebind { svid } => {
                let Some(g) = &mut self.c.group else {
                    return Ok(());
                };
                let commit = g.rebind(&svid)?.commit;
                self.c.send_stream(
                    &Stream::Commit {
                        epoch: old,
                        commit,
                        added: vec![],
                        removed: vec![],
                    },
                    now,
                )?;
                self.advance_epoch()?;
                let me = self.c.me.clone();
                self.start_update(&me, now);
            }
            Change::MemberCommit {
                name,
                epoch,
                commit,
            } => {
                let refuse = |c: &mut Core, reason: String| {
                    c.ctl(Dest::Member(name.clone()), &Ctl::RebindRefused { reason })
                };
                if epoch != old || !self.c.roster.contains_key(&name) {
                    refuse(&mut self.c, format!("the group is at epoch {old}"));
                    return Ok(());
                }
                let Some(g) = &mut self.c.group else {
                    return Ok(());
                };
                // Processing merges it (openmls verifies every credential it
                // brings in first). What it changed is checked afterwards:
                // a commit that did more than update its author's own leaf
                // is still forwarded, so every member stays on one epoch,
                // and its author is removed.
                let info = match g.process_commit(&commit) {
                    Ok(info) => info,
                    Err(e) => {
                        refuse(&mut self.c, e.to_string());
                        return Err(e.into());
                    }
                };
                self.c.epoch = info.epoch;
                self.c.send_stream(
                    &Stream::Commit {
                        epoch: old,
                        commit,
                        added: vec![],
                        removed: vec![],
                    },
                    now,
                )?;
                let expected = self.c.roster.get(&name).cloned().unwrap_or_default();
                if !info.added.is_empty()
                    || !info.removed.is_empty()
                    || info.sender.as_str() != expected
                {
                    // Already merged (openmls merges on processing) and
                    // forwarded so the group stays consistent; the member
                    // that overstepped goes.
                    let e = ChannelError::Malformed(format!(
                        "{name}'s commit did more than update its own credential"
                    ));
                    self.c.reject(&name, e);
                    let _ = self.queue_remove(&name, "committed beyond a self-update");
                }
                self.start_update(&name, now);
            }
        }
        self.check_done(now);
        Ok(())
    }

    fn start_update(&mut self, name: &str, now: Instant) {
        let member = MemberInfo {
            name: name.to_owned(),
            spiffe_id: self.c.roster.get(name).cloned().unwrap_or_default(),
        };
        self.inflight = Some(InFlight {
            op: Op::Update { member },
            epoch: self.c.epoch,
            waiting: self.others(),
            welcome: None,
            deadline: now + self.c.cfg.change_timeout,
        });
    }

    fn advance_epoch(&mut self) -> Result<(), ChannelError> {
        match &mut self.c.group {
            Some(g) => {
                g.merge_pending_commit()?;
                self.c.epoch = g.epoch();
            }
            None => self.c.epoch += 1,
        }
        Ok(())
    }

    /// Completes the in-flight change when everyone answered, or at its
    /// deadline (reporting who did not).
    pub(super) fn check_done(&mut self, now: Instant) {
        let Some(f) = &self.inflight else {
            return self.start_next(now);
        };
        let answered = f.waiting.is_empty() && f.welcome.is_none();
        if !answered && now < f.deadline {
            return;
        }
        let Some(f) = self.inflight.take() else {
            return;
        };
        let mut silent: Vec<String> = f.waiting.into_iter().collect();
        let joiner_silent = f.welcome.is_some();
        match f.op {
            Op::Add { member } => {
                if joiner_silent {
                    // In the MLS group but never joined: take it out again.
                    self.c.events.push_back(ChannelEvent::InviteFailed {
                        name: member.name.clone(),
                        reason: "no answer to the Welcome".into(),
                    });
                    let _ = self.queue_remove(&member.name, "never joined");
                } else {
                    self.c.events.push_back(ChannelEvent::MemberJoined {
                        member,
                        epoch: f.epoch,
                    });
                }
            }
            Op::Remove { member, reason } => {
                self.c.events.push_back(ChannelEvent::MemberLeft {
                    member,
                    epoch: f.epoch,
                    reason,
                });
            }
            Op::Update { member } => {
                self.c.events.push_back(ChannelEvent::CredentialUpdated {
                    member,
                    epoch: f.epoch,
                });
            }
        }
        silent.retain(|n| self.c.roster.contains_key(n));
        for name in silent {
            self.unresponsive(&name, 1);
        }
        self.start_next(now);
    }

    pub(super) fn unresponsive(&mut self, name: &str, missed: u32) {
        let Some(id) = self.c.roster.get(name) else {
            return;
        };
        if self.c.cfg.metrics {
            metrics::counter!("slim_client_channel_unresponsive_total").increment(1);
        }
        self.c.events.push_back(ChannelEvent::MemberUnresponsive {
            member: MemberInfo {
                name: name.to_owned(),
                spiffe_id: id.clone(),
            },
            missed,
        });
        if self.c.cfg.remove_unresponsive {
            let _ = self.queue_remove(name, "unresponsive");
        }
    }
}
