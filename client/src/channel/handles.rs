//! The moderator's and member's handles, and the entry points creating them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use slim_auth::Identity;
use slim_wire::Name;
use tokio::sync::mpsc;

use super::driver::{Job, Outputs, call, drive, publish_on, roster_of, subscribe_err};
use super::options::{ChannelOptions, Published};
use crate::session::channel::{ChannelError, ChannelEvent, ChannelStats, MemberInfo};
use crate::session::channel::{Member, Moderator};
use crate::session::mux::SessionMux;

/// Entry points.
pub struct Channel;

impl Channel {
    /// Creates `channel` with this client as moderator.
    pub async fn create(
        mux: &SessionMux,
        channel: &Name,
        opts: ChannelOptions,
    ) -> Result<ChannelModerator, ChannelError> {
        let me = mux.client().name().as_str().to_owned();
        let spiffe = mux.client().authenticated_as().unwrap_or_default();
        let mut cfg = opts.config.clone();
        cfg.metrics = mux.client().metrics_on();
        let m = Moderator::new(
            channel.as_str(),
            &me,
            opts.identity.clone(),
            &spiffe,
            cfg,
            Instant::now(),
        )?;
        let inbox = mux.register(m.session_id(), opts.inbox)?;
        mux.client()
            .subscribe(channel)
            .await
            .map_err(subscribe_err)?;
        let (jobs_tx, jobs_rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::channel(opts.events.max(1));
        let (progress, progress_rx) = tokio::sync::watch::channel(0);
        let task = tokio::spawn(drive(
            m,
            mux.clone(),
            inbox,
            channel.clone(),
            jobs_rx,
            Outputs {
                events: ev_tx,
                progress,
            },
            opts.rotation.clone(),
        ));
        Ok(ChannelModerator {
            channel: channel.clone(),
            jobs: jobs_tx,
            events: ev_rx,
            task,
            progress: progress_rx,
        })
    }

    /// Sends a join request for `channel` (to `moderator` if known, else to
    /// the channel) and waits for the answer.
    pub async fn join(
        mux: &SessionMux,
        channel: &Name,
        moderator: Option<&Name>,
        opts: ChannelOptions,
    ) -> Result<ChannelMember, ChannelError> {
        let me = mux.client().name().as_str().to_owned();
        let mut cfg = opts.config.clone();
        cfg.metrics = mux.client().metrics_on();
        let m = Member::join(
            channel.as_str(),
            &me,
            opts.identity.clone(),
            moderator.map(Name::as_str),
            cfg,
            Instant::now(),
        )?;
        ChannelMember::start(mux, channel, m, &opts).await
    }
}

impl Channel {
    /// The channel's roster read from its moderator without joining (no MLS
    /// epoch, no audit entry): the moderator answers members and identities
    /// its admission policy admits. The query goes to `moderator` when known,
    /// else to the channel's name (members ignore it). Needs publish rights
    /// on that name, not subscribe rights.
    pub async fn roster(
        mux: &SessionMux,
        channel: &Name,
        moderator: Option<&Name>,
        timeout: Duration,
    ) -> Result<(u64, Vec<MemberInfo>), ChannelError> {
        use crate::session::channel::{Ctl, control_packet, decode_control, session_id};
        use crate::session::packet::Kind;
        let sid = session_id(channel.as_str());
        // Answers come back on the channel's session id.
        let mut inbox = mux.register(sid, 16)?;
        let me = mux.client().name().as_str().to_owned();
        let query = control_packet(channel.as_str(), &me, &Ctl::RosterQuery)?;
        match moderator {
            Some(m) => {
                mux.publish(sid, m, super::driver::member_mode(m), &query)
                    .await?
            }
            None => {
                mux.publish(sid, channel, slim_wire::Mode::Multicast, &query)
                    .await?
            }
        };
        let answer = async {
            while let Some(inc) = inbox.recv().await {
                let p = &inc.packet;
                match p.kind {
                    Kind::Control => match decode_control(p) {
                        Ok(Ctl::Roster { epoch, members }) => {
                            let members = members
                                .into_iter()
                                .map(|(name, spiffe_id)| MemberInfo { name, spiffe_id })
                                .collect();
                            return Ok((epoch, members));
                        }
                        Ok(Ctl::Refused { reason }) => {
                            return Err(ChannelError::Roster { reason });
                        }
                        // Someone else's traffic on this session id.
                        _ => continue,
                    },
                    Kind::Unreachable => {
                        let why = String::from_utf8_lossy(&p.body).into_owned();
                        let reason = match moderator {
                            Some(m) => format!("cannot reach the moderator {m}: {why}"),
                            None => format!("nobody moderates {channel} here: {why}"),
                        };
                        return Err(ChannelError::Roster { reason });
                    }
                    _ => continue,
                }
            }
            Err(ChannelError::Closed)
        };
        match tokio::time::timeout(timeout, answer).await {
            Ok(r) => r,
            Err(_) => Err(ChannelError::Roster {
                reason: format!("no answer from the moderator within {timeout:?}"),
            }),
        }
    }
}

/// The moderator's handle. Dropping it closes the channel.
pub struct ChannelModerator {
    channel: Name,
    pub(super) jobs: mpsc::Sender<Job<Moderator>>,
    pub(super) events: mpsc::Receiver<ChannelEvent>,
    pub(super) task: tokio::task::JoinHandle<()>,
    /// Bumped by the driver whenever the machine emitted events.
    pub(super) progress: tokio::sync::watch::Receiver<u64>,
}

impl ChannelModerator {
    pub fn channel(&self) -> &Name {
        &self.channel
    }

    /// Encrypts (with MLS on) and multicasts one message.
    pub async fn publish(&self, payload: &[u8]) -> Result<Published, ChannelError> {
        publish_on(&self.jobs, payload).await
    }

    /// Invites a full name or a service name.
    pub async fn invite(&self, name: &str) -> Result<(), ChannelError> {
        let name = name.to_owned();
        call(&self.jobs, move |m: &mut Moderator, now| {
            m.invite(&name, now)
        })
        .await?
    }

    /// Removes a member (full name, unique service name, or SPIFFE ID).
    pub async fn remove(&self, who: &str) -> Result<(), ChannelError> {
        let who = who.to_owned();
        call(&self.jobs, move |m: &mut Moderator, now| {
            m.remove(&who, "removed by the moderator", now)
        })
        .await?
    }

    /// Re-binds the moderator's MLS credential to a rotated SVID.
    pub async fn rebind(&self, svid: Arc<Identity>) -> Result<(), ChannelError> {
        call(&self.jobs, move |m: &mut Moderator, now| {
            m.rebind(svid, now)
        })
        .await?
    }

    /// The roster (moderator included) and its epoch.
    pub async fn members(&self) -> Result<(u64, Vec<MemberInfo>), ChannelError> {
        roster_of(&self.jobs).await
    }

    /// Membership changes queued or in flight, plus outstanding invitations.
    pub async fn pending(&self) -> Result<usize, ChannelError> {
        call(&self.jobs, |m: &mut Moderator, _| m.pending()).await
    }

    pub async fn stats(&self) -> Result<ChannelStats, ChannelError> {
        call(&self.jobs, |m: &mut Moderator, _| m.stats()).await
    }

    /// The next event; `None` once the driver has ended and all were read.
    pub async fn recv(&mut self) -> Option<ChannelEvent> {
        self.events.recv().await
    }

    pub fn try_recv(&mut self) -> Option<ChannelEvent> {
        self.events.try_recv().ok()
    }

    /// Closes the channel and waits until every member acknowledged (or the
    /// change timeout passed). Returns the events not read yet.
    pub async fn close(mut self, reason: &str) -> Result<Vec<ChannelEvent>, ChannelError> {
        let reason = reason.to_owned();
        call(&self.jobs, move |m: &mut Moderator, now| {
            m.close(&reason, now)
        })
        .await??;
        let mut rest = Vec::new();
        while let Some(e) = self.events.recv().await {
            rest.push(e);
        }
        let _ = (&mut self.task).await;
        Ok(rest)
    }
}

/// A member's handle. Dropping it leaves the channel.
pub struct ChannelMember {
    channel: Name,
    pub(super) jobs: mpsc::Sender<Job<Member>>,
    pub(super) events: mpsc::Receiver<ChannelEvent>,
    pub(super) early: std::collections::VecDeque<ChannelEvent>,
    pub(super) task: tokio::task::JoinHandle<()>,
    members: Vec<MemberInfo>,
    epoch: u64,
}

impl ChannelMember {
    pub(super) async fn start(
        mux: &SessionMux,
        channel: &Name,
        m: Member,
        opts: &ChannelOptions,
    ) -> Result<ChannelMember, ChannelError> {
        let inbox = mux.register(m.session_id(), opts.inbox)?;
        // Subscribed before the Welcome can arrive, so nothing sent after it
        // is missed.
        mux.client()
            .subscribe(channel)
            .await
            .map_err(subscribe_err)?;
        let (jobs_tx, jobs_rx) = mpsc::channel(64);
        let (ev_tx, mut ev_rx) = mpsc::channel(opts.events.max(1));
        let (progress, _) = tokio::sync::watch::channel(0);
        let task = tokio::spawn(drive(
            m,
            mux.clone(),
            inbox,
            channel.clone(),
            jobs_rx,
            Outputs {
                events: ev_tx,
                progress,
            },
            opts.rotation.clone(),
        ));
        let mut early = std::collections::VecDeque::new();
        // The machine ends a join attempt itself (JoinFailed at its
        // deadline); this bound only guards against a stuck task.
        let bound = opts.config.join_timeout + Duration::from_secs(5);
        let outcome = tokio::time::timeout(bound, async {
            while let Some(e) = ev_rx.recv().await {
                match e {
                    ChannelEvent::Joined { epoch, members } => return Ok((epoch, members)),
                    ChannelEvent::JoinRefused { reason } => {
                        return Err(ChannelError::JoinRefused { reason });
                    }
                    ChannelEvent::JoinFailed { reason } => {
                        return Err(ChannelError::JoinFailed { reason });
                    }
                    ChannelEvent::Denied { reason } => {
                        return Err(ChannelError::Denied { reason });
                    }
                    other if early.len() < 1024 => early.push_back(other),
                    _ => {}
                }
            }
            Err(ChannelError::Closed)
        })
        .await;
        if !matches!(outcome, Ok(Ok(_))) {
            // Not a member: stop the driver and drop the channel's
            // subscription (the aborted driver cannot), so that a refused
            // or unanswered joiner does not keep receiving its traffic.
            task.abort();
            let _ = mux.client().unsubscribe(channel).await;
        }
        match outcome {
            Ok(Ok((epoch, members))) => Ok(ChannelMember {
                channel: channel.clone(),
                jobs: jobs_tx,
                events: ev_rx,
                early,
                task,
                members,
                epoch,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ChannelError::JoinFailed {
                reason: "no answer in time".into(),
            }),
        }
    }

    pub fn channel(&self) -> &Name {
        &self.channel
    }

    /// The roster and epoch at which we joined.
    pub fn joined(&self) -> (u64, &[MemberInfo]) {
        (self.epoch, &self.members)
    }

    pub async fn publish(&self, payload: &[u8]) -> Result<Published, ChannelError> {
        publish_on(&self.jobs, payload).await
    }

    /// The current roster and epoch.
    pub async fn members(&self) -> Result<(u64, Vec<MemberInfo>), ChannelError> {
        roster_of(&self.jobs).await
    }

    /// Re-binds our MLS credential to a rotated SVID (through the moderator).
    pub async fn rebind(&self, svid: Arc<Identity>) -> Result<(), ChannelError> {
        call(&self.jobs, move |m: &mut Member, now| m.rebind(svid, now)).await?
    }

    pub async fn stats(&self) -> Result<ChannelStats, ChannelError> {
        call(&self.jobs, |m: &mut Member, _| m.stats()).await
    }

    /// The next event; `None` once the driver has ended and all were read.
    pub async fn recv(&mut self) -> Option<ChannelEvent> {
        if let Some(e) = self.early.pop_front() {
            return Some(e);
        }
        self.events.recv().await
    }

    pub fn try_recv(&mut self) -> Option<ChannelEvent> {
        self.early
            .pop_front()
            .or_else(|| self.events.try_recv().ok())
    }

    /// Leaves the channel and waits for the moderator's confirmation (or the
    /// change timeout). Returns the events not read yet.
    pub async fn leave(mut self) -> Vec<ChannelEvent> {
        let _ = call(&self.jobs, |m: &mut Member, now| m.leave(now)).await;
        drop(self.jobs);
        let mut rest: Vec<ChannelEvent> = self.early.drain(..).collect();
        while let Some(e) = self.events.recv().await {
            rest.push(e);
        }
        let _ = (&mut self.task).await;
        rest
    }
}
