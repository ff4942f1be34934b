//! Group channels: moderator and member handles over a [`SessionMux`].
//!
//! Each handle owns one driver task that moves packets, time and commands
//! between the mux and the sans-IO machine in [`crate::session::channel`]
//! (which documents the protocol). The task subscribes to the channel's
//! multicast name, registers the channel's session id with the mux, and
//! unregisters and unsubscribes when it ends.
//!
//! * [`Channel::create`] → [`ChannelModerator`]: `invite`, `remove`,
//!   `members`, `publish`, `close`, `recv` (events).
//! * [`Channel::join`] → [`ChannelMember`] once admitted, or
//!   [`ChannelError::JoinRefused`] with the moderator's reason.
//! * [`Invitations::listen`] takes the mux's acceptor for channel control
//!   packets; each [`Invitation`] is accepted or declined by the application,
//!   or all of them automatically with [`Invitations::auto_accept`].
//!
//! Events are delivered through a bounded queue (`ChannelOptions::events`);
//! a handle whose events are not read eventually stalls its driver (which
//! then stops reading its inbox, whose overflow the reliability layer
//! recovers): read events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use slim_auth::Identity;

use slim_mls::MlsIdentity;
use slim_wire::{Mode, Name};
use tokio::sync::{mpsc, oneshot};

pub use crate::session::channel::{
    ChannelConfig, ChannelError, ChannelEvent, ChannelStats, MemberInfo, session_id,
};
use crate::session::channel::{Member, Moderator};
use crate::session::group::{Dest, Transmit};
use crate::session::mux::{Incoming, SessionMux};
use crate::session::{Kind, Packet, SessionError};

/// Driver sizing.
#[derive(Debug, Clone)]
pub struct ChannelOptions {
    /// The protocol configuration.
    pub config: ChannelConfig,
    /// The MLS identity (required when `config.mls`).
    pub identity: Option<MlsIdentity>,
    /// Inbox capacity (packets).
    pub inbox: usize,
    /// Event queue capacity.
    pub events: usize,
    /// SVID updates (e.g. `IdentitySource::subscribe()`): each new SVID is
    /// re-bound into the channel's MLS group with a self-update commit.
    pub rotation: Option<tokio::sync::watch::Receiver<Arc<Identity>>>,
}

impl ChannelOptions {
    pub fn new(config: ChannelConfig, identity: Option<MlsIdentity>) -> ChannelOptions {
        ChannelOptions {
            config,
            identity,
            inbox: 4096,
            events: 4096,
            rotation: None,
        }
    }
}

/// A published message: its sequence number in our stream and the epoch it
/// was encrypted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    pub epoch: u64,
}

type Job<M> = Box<dyn FnOnce(&mut M, Instant) + Send>;

/// What the driver needs from a machine.
trait Machine: Send + 'static {
    fn handle_packet(&mut self, from: &str, id: Option<&str>, p: &Packet, now: Instant);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_transmit(&mut self) -> Option<Transmit>;
    fn poll_event(&mut self) -> Option<ChannelEvent>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn is_finished(&self) -> bool;
    /// The handle is gone: close (moderator) or leave (member).
    fn shutdown(&mut self, now: Instant);
    fn rebind(&mut self, svid: Arc<Identity>, now: Instant) -> Result<(), ChannelError>;
    /// Encrypts (with MLS on) and queues one application message.
    fn publish_app(&mut self, payload: &[u8], now: Instant) -> Result<(u64, u64), ChannelError>;
    /// The epoch and the roster.
    fn roster(&self) -> (u64, Vec<MemberInfo>);
}

impl Machine for Moderator {
    fn handle_packet(&mut self, from: &str, id: Option<&str>, p: &Packet, now: Instant) {
        Moderator::handle_packet(self, from, id, p, now)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Moderator::handle_timeout(self, now)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        Moderator::poll_transmit(self)
    }
    fn poll_event(&mut self) -> Option<ChannelEvent> {
        Moderator::poll_event(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Moderator::poll_timeout(self)
    }
    fn is_finished(&self) -> bool {
        Moderator::is_finished(self)
    }
    fn shutdown(&mut self, now: Instant) {
        let _ = self.close("the moderator went away", now);
    }
    fn rebind(&mut self, svid: Arc<Identity>, now: Instant) -> Result<(), ChannelError> {
        Moderator::rebind(self, svid, now)
    }
    fn publish_app(&mut self, payload: &[u8], now: Instant) -> Result<(u64, u64), ChannelError> {
        Moderator::publish(self, payload, now)
    }
    fn roster(&self) -> (u64, Vec<MemberInfo>) {
        (self.epoch(), self.members())
    }
}

impl Machine for Member {
    fn handle_packet(&mut self, from: &str, id: Option<&str>, p: &Packet, now: Instant) {
        Member::handle_packet(self, from, id, p, now)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Member::handle_timeout(self, now)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        Member::poll_transmit(self)
    }
    fn poll_event(&mut self) -> Option<ChannelEvent> {
        Member::poll_event(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Member::poll_timeout(self)
    }
    fn is_finished(&self) -> bool {
        Member::is_finished(self)
    }
    fn shutdown(&mut self, now: Instant) {
        self.leave(now);
    }
    fn rebind(&mut self, svid: Arc<Identity>, now: Instant) -> Result<(), ChannelError> {
        Member::rebind(self, svid, now)
    }
    fn publish_app(&mut self, payload: &[u8], now: Instant) -> Result<(u64, u64), ChannelError> {
        Member::publish(self, payload, now)
    }
    fn roster(&self) -> (u64, Vec<MemberInfo>) {
        (self.epoch(), self.members())
    }
}

async fn transmit(mux: &SessionMux, sid: u64, channel: &Name, t: Transmit) {
    let r = match &t.dest {
        // Tracked, so that a refusal by the node's policy comes back to
        // this channel (a join request, a member's message) instead of
        // vanishing; "no route" stays silent (a channel may be empty).
        Dest::Group => {
            mux.publish_tracked(
                sid,
                channel,
                Mode::Multicast,
                crate::FLAG_NO_ROUTE_SILENT,
                &t.packet,
            )
            .await
        }
        Dest::Member(n) => match Name::parse(n) {
            Ok(name) => {
                let mode = if n.matches('/').count() >= 3 {
                    Mode::Unicast
                } else {
                    Mode::Anycast
                };
                mux.publish(sid, &name, mode, &t.packet).await
            }
            Err(e) => Err(SessionError::Malformed(format!("destination {n:?}: {e}"))),
        },
    };
    if let Err(e) = r {
        tracing::debug!(%channel, error = %e, "channel: publish failed");
    }
}

/// Where the driver reports: events for the handle, and a counter bumped
/// after each batch of events (for callers waiting on a membership change).
struct Outputs {
    events: mpsc::Sender<ChannelEvent>,
    progress: tokio::sync::watch::Sender<u64>,
}

/// The driver task: a thin loop around the machine.
async fn drive<M: Machine>(
    mut m: M,
    mux: SessionMux,
    mut inbox: crate::session::Inbox,
    channel: Name,
    mut jobs: mpsc::Receiver<Job<M>>,
    out: Outputs,
    mut rotation: Option<tokio::sync::watch::Receiver<Arc<Identity>>>,
) {
    let Outputs { events, progress } = out;
    let sid = inbox.session_id();
    if let Some(r) = rotation.as_mut() {
        r.mark_unchanged();
    }
    let mut batch = Vec::with_capacity(64);
    let mut handle_gone = false;
    loop {
        while let Some(t) = m.poll_transmit() {
            transmit(&mux, sid, &channel, t).await;
        }
        let mut emitted = false;
        while let Some(e) = m.poll_event() {
            // A dropped handle no longer reads; keep running to finish.
            let _ = events.send(e).await;
            emitted = true;
        }
        if emitted {
            // Membership changes come with events: wake whoever waits for one.
            progress.send_modify(|n| *n = n.wrapping_add(1));
        }
        if m.is_finished() {
            break;
        }
        let deadline = m.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = inbox.recv_many(&mut batch, 64) => {
                if n == 0 {
                    break;
                }
                let now = Instant::now();
                for inc in batch.drain(..) {
                    m.handle_packet(inc.from.as_str(), inc.from_identity.as_deref(), &inc.packet, now);
                }
            }
            job = jobs.recv(), if !handle_gone => match job {
                Some(job) => job(&mut m, Instant::now()),
                None => {
                    handle_gone = true;
                    m.shutdown(Instant::now());
                }
            },
            _ = sleep => m.handle_timeout(Instant::now()),
            r = async {
                match rotation.as_mut() {
                    Some(r) => r.changed().await,
                    None => std::future::pending().await,
                }
            } => match r {
                Ok(()) => {
                    let svid = rotation.as_mut().map(|r| r.borrow_and_update().clone());
                    if let Some(svid) = svid
                        && let Err(e) = m.rebind(svid, Instant::now())
                    {
                        tracing::warn!(%channel, error = %e, "channel: rebind after SVID rotation failed");
                    }
                }
                Err(_) => rotation = None,
            },
        }
    }
    while let Some(t) = m.poll_transmit() {
        transmit(&mux, sid, &channel, t).await;
    }
    while let Some(e) = m.poll_event() {
        let _ = events.send(e).await;
    }
    let _ = mux.client().unsubscribe(&channel).await;
}

/// A refused subscription to the channel's name is the node's policy
/// speaking ([`SessionError::Denied`]), not a broken connection.
fn subscribe_err(e: crate::ClientError) -> SessionError {
    match e {
        crate::ClientError::Subscribe {
            name,
            code: slim_wire::ErrorCode::UNAUTHORIZED,
            reason,
        } => SessionError::Denied(format!("subscribe to {name}: {reason}")),
        e => SessionError::Client(e.to_string()),
    }
}

/// Runs `f` on the machine in its task and returns its answer.
async fn call<M: Machine, R: Send + 'static>(
    jobs: &mpsc::Sender<Job<M>>,
    f: impl FnOnce(&mut M, Instant) -> R + Send + 'static,
) -> Result<R, ChannelError> {
    let (tx, rx) = oneshot::channel();
    let job: Job<M> = Box::new(move |m, now| {
        let _ = tx.send(f(m, now));
    });
    jobs.send(job).await.map_err(|_| ChannelError::Closed)?;
    rx.await.map_err(|_| ChannelError::Closed)
}

/// Publishes one application message through the driver of either role.
async fn publish_on<M: Machine>(
    jobs: &mpsc::Sender<Job<M>>,
    payload: &[u8],
) -> Result<Published, ChannelError> {
    let payload = payload.to_vec();
    call(jobs, move |m: &mut M, now| {
        m.publish_app(&payload, now)
            .map(|(seq, epoch)| Published { seq, epoch })
    })
    .await?
}

/// The epoch and roster, from the driver of either role.
async fn roster_of<M: Machine>(
    jobs: &mpsc::Sender<Job<M>>,
) -> Result<(u64, Vec<MemberInfo>), ChannelError> {
    call(jobs, |m: &mut M, _| m.roster()).await
}

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

/// The moderator's handle. Dropping it closes the channel.
pub struct ChannelModerator {
    channel: Name,
    jobs: mpsc::Sender<Job<Moderator>>,
    events: mpsc::Receiver<ChannelEvent>,
    task: tokio::task::JoinHandle<()>,
    /// Bumped by the driver whenever the machine emitted events.
    progress: tokio::sync::watch::Receiver<u64>,
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
        call(&self.jobs, |m: &mut Moderator, _| m.stats().clone()).await
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
    jobs: mpsc::Sender<Job<Member>>,
    events: mpsc::Receiver<ChannelEvent>,
    early: std::collections::VecDeque<ChannelEvent>,
    task: tokio::task::JoinHandle<()>,
    members: Vec<MemberInfo>,
    epoch: u64,
}

impl ChannelMember {
    async fn start(
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
        call(&self.jobs, |m: &mut Member, _| m.stats().clone()).await
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

/// Incoming channel invitations (the mux's acceptor for control packets).
pub struct Invitations {
    mux: SessionMux,
    rx: mpsc::Receiver<Incoming>,
}

/// One invitation, to accept or decline.
pub struct Invitation {
    mux: SessionMux,
    incoming: Incoming,
    /// The channel's name.
    pub channel: Name,
    /// Whether the channel uses MLS.
    pub mls: bool,
    /// The inviting moderator (full name) and its node-authenticated SPIFFE ID.
    pub from: Name,
    pub from_identity: Option<String>,
}

impl Invitations {
    /// Takes the mux's acceptor for channel control packets.
    pub fn listen(mux: &SessionMux, cap: usize) -> Result<Invitations, ChannelError> {
        let rx = mux.acceptor(&[Kind::Control], cap)?;
        Ok(Invitations {
            mux: mux.clone(),
            rx,
        })
    }

    /// The next invitation (other unsolicited control packets are dropped).
    pub async fn next(&mut self) -> Option<Invitation> {
        loop {
            let inc = self.rx.recv().await?;
            let Ok((channel, mls)) = Member::parse_invite(&inc.packet) else {
                continue;
            };
            let Ok(channel) = Name::parse(&channel) else {
                continue;
            };
            return Some(Invitation {
                mux: self.mux.clone(),
                channel,
                mls,
                from: inc.from.clone(),
                from_identity: inc.from_identity.as_deref().map(str::to_owned),
                incoming: inc,
            });
        }
    }

    /// Accepts every invitation with `opts`; joined channels (or why joining
    /// failed) come out of the returned receiver.
    pub fn auto_accept(
        mut self,
        opts: ChannelOptions,
    ) -> mpsc::Receiver<Result<ChannelMember, ChannelError>> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(inv) = self.next().await {
                let tx = tx.clone();
                let opts = opts.clone();
                tokio::spawn(async move {
                    let _ = tx.send(inv.accept(opts).await).await;
                });
            }
        });
        rx
    }
}

impl Invitation {
    /// Answers with a key package and waits for the Welcome.
    pub async fn accept(self, opts: ChannelOptions) -> Result<ChannelMember, ChannelError> {
        let me = self.mux.client().name().as_str().to_owned();
        let mut cfg = opts.config.clone();
        cfg.metrics = self.mux.client().metrics_on();
        let m = Member::accept_invite(
            &me,
            self.incoming.from.as_str(),
            &self.incoming.packet,
            opts.identity.clone(),
            cfg,
            Instant::now(),
        )?;
        ChannelMember::start(&self.mux, &self.channel, m, &opts).await
    }

    /// Declines, telling the moderator why.
    pub async fn decline(self, reason: &str) -> Result<(), ChannelError> {
        let me = self.mux.client().name().as_str().to_owned();
        let packet = Member::decline_packet(&me, &self.incoming.packet, reason)?;
        self.mux
            .publish_silent(&self.incoming.from, Mode::Unicast, &packet)
            .await?;
        Ok(())
    }
}

/// A channel handle of either role behind shared references, for the front
/// door's one `Session` type: control calls and the event queue are
/// separate, so a task waiting for events does not hold up publishing.
pub(crate) enum GroupCtl {
    Moderator {
        jobs: mpsc::Sender<Job<Moderator>>,
        events: tokio::sync::Mutex<mpsc::Receiver<ChannelEvent>>,
        task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
        progress: tokio::sync::watch::Receiver<u64>,
    },
    Member {
        jobs: parking_lot::Mutex<Option<mpsc::Sender<Job<Member>>>>,
        early: parking_lot::Mutex<std::collections::VecDeque<ChannelEvent>>,
        events: tokio::sync::Mutex<mpsc::Receiver<ChannelEvent>>,
        task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    },
}

impl From<ChannelModerator> for GroupCtl {
    fn from(m: ChannelModerator) -> Self {
        GroupCtl::Moderator {
            jobs: m.jobs,
            events: tokio::sync::Mutex::new(m.events),
            task: tokio::sync::Mutex::new(Some(m.task)),
            progress: m.progress,
        }
    }
}

impl From<ChannelMember> for GroupCtl {
    fn from(m: ChannelMember) -> Self {
        GroupCtl::Member {
            jobs: parking_lot::Mutex::new(Some(m.jobs)),
            early: parking_lot::Mutex::new(m.early),
            events: tokio::sync::Mutex::new(m.events),
            task: tokio::sync::Mutex::new(Some(m.task)),
        }
    }
}

/// Waits for the driver's next batch of events (a membership change comes
/// with one), or a while as a backstop for changes that come without.
async fn wait_progress(progress: &mut tokio::sync::watch::Receiver<u64>) {
    let _ = tokio::time::timeout(Duration::from_millis(250), progress.changed()).await;
}

impl GroupCtl {
    fn member_jobs(
        jobs: &parking_lot::Mutex<Option<mpsc::Sender<Job<Member>>>>,
    ) -> Result<mpsc::Sender<Job<Member>>, ChannelError> {
        jobs.lock().clone().ok_or(ChannelError::Closed)
    }

    pub(crate) async fn publish(&self, payload: &[u8]) -> Result<Published, ChannelError> {
        match self {
            GroupCtl::Moderator { jobs, .. } => publish_on(jobs, payload).await,
            GroupCtl::Member { jobs, .. } => publish_on(&Self::member_jobs(jobs)?, payload).await,
        }
    }

    /// Moderator only (the caller checks the role): invites `name` and waits
    /// until it joined or the invitation failed.
    pub(crate) async fn invite(&self, name: &str) -> Result<(), ChannelError> {
        let GroupCtl::Moderator { jobs, progress, .. } = self else {
            return Err(ChannelError::NotJoined);
        };
        let mut progress = progress.clone();
        progress.mark_unchanged();
        let n = name.to_owned();
        call(jobs, move |m: &mut Moderator, now| m.invite(&n, now)).await??;
        // Wait for the outcome: the roster gains a member of that name, or
        // the invitation fails (reported as an event too; the roster check
        // keeps this independent of who reads the events).
        let deadline = tokio::time::Instant::now() + ChannelConfig::default().join_timeout * 2;
        loop {
            let (members, pending) =
                call(jobs, |m: &mut Moderator, _| (m.members(), m.pending())).await?;
            let matches =
                |mi: &MemberInfo| mi.name == name || mi.name.starts_with(&format!("{name}/"));
            if members.iter().any(matches) && pending == 0 {
                return Ok(());
            }
            if pending == 0 {
                let n = name.to_owned();
                let unroutable = call(jobs, move |m: &mut Moderator, _| {
                    m.take_unroutable_invite(&n)
                })
                .await?;
                if let Some(reason) = unroutable {
                    return Err(ChannelError::Session(SessionError::NoResponder {
                        name: name.to_owned(),
                        reason,
                    }));
                }
                return Err(ChannelError::JoinFailed {
                    reason: format!("the invitation of {name} was declined or not answered"),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ChannelError::JoinFailed {
                    reason: format!("{name} did not join in time"),
                });
            }
            wait_progress(&mut progress).await;
        }
    }

    pub(crate) async fn remove(&self, who: &str) -> Result<(), ChannelError> {
        let GroupCtl::Moderator { jobs, progress, .. } = self else {
            return Err(ChannelError::NotJoined);
        };
        let mut progress = progress.clone();
        progress.mark_unchanged();
        let w = who.to_owned();
        call(jobs, move |m: &mut Moderator, now| {
            m.remove(&w, "removed by the moderator", now)
        })
        .await??;
        // Done when the removal's commit completed (nothing pending).
        let deadline = tokio::time::Instant::now() + ChannelConfig::default().change_timeout * 2;
        while call(jobs, |m: &mut Moderator, _| m.pending()).await? > 0
            && tokio::time::Instant::now() < deadline
        {
            wait_progress(&mut progress).await;
        }
        Ok(())
    }

    pub(crate) async fn members(&self) -> Result<(u64, Vec<MemberInfo>), ChannelError> {
        match self {
            GroupCtl::Moderator { jobs, .. } => roster_of(jobs).await,
            GroupCtl::Member { jobs, .. } => roster_of(&Self::member_jobs(jobs)?).await,
        }
    }

    /// The next event; `None` once the driver ended and all were read.
    pub(crate) async fn recv(&self) -> Option<ChannelEvent> {
        match self {
            GroupCtl::Moderator { events, .. } => events.lock().await.recv().await,
            GroupCtl::Member { events, early, .. } => {
                if let Some(e) = early.lock().pop_front() {
                    return Some(e);
                }
                events.lock().await.recv().await
            }
        }
    }

    /// Moderator: closes the channel; member: leaves. Waits (bounded by the
    /// change timeout) for the driver to finish.
    pub(crate) async fn close(&self, reason: &str) -> Result<(), ChannelError> {
        let task = match self {
            GroupCtl::Moderator { jobs, task, .. } => {
                let reason = reason.to_owned();
                match call(jobs, move |m: &mut Moderator, now| m.close(&reason, now)).await {
                    Ok(r) => r?,
                    Err(ChannelError::Closed) => return Ok(()),
                    Err(e) => return Err(e),
                }
                task
            }
            GroupCtl::Member { jobs, task, .. } => {
                let j = jobs.lock().take();
                if let Some(j) = j {
                    let _ = call(&j, |m: &mut Member, now| m.leave(now)).await;
                }
                task
            }
        };
        let handle = task.lock().await.take();
        if let Some(mut h) = handle {
            let bound = ChannelConfig::default().change_timeout + Duration::from_secs(1);
            if tokio::time::timeout(bound, &mut h).await.is_err() {
                tracing::warn!(
                    ?bound,
                    "channel driver did not finish closing in time; stopped"
                );
                h.abort();
            }
        }
        Ok(())
    }
}
