//! The driver task of a channel handle: moves packets, time and commands between the mux and the machine.

use std::sync::Arc;
use std::time::Instant;

use slim_auth::Identity;
use slim_wire::{Mode, Name};
use tokio::sync::{mpsc, oneshot};

use super::options::Published;
use crate::session::channel::{ChannelError, ChannelEvent, MemberInfo};
use crate::session::channel::{Member, Moderator};
use crate::session::group::{Dest, Transmit};
use crate::session::mux::SessionMux;
use crate::session::{Packet, SessionError};

pub(super) type Job<M> = Box<dyn FnOnce(&mut M, Instant) + Send>;

/// What the driver needs from a machine.
pub(super) trait Machine: Send + 'static {
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
            Ok(name) => mux.publish(sid, &name, member_mode(&name), &t.packet).await,
            Err(e) => Err(SessionError::Malformed(format!("destination {n:?}: {e}"))),
        },
    };
    if let Err(e) = r {
        tracing::debug!(%channel, error = %e, "channel: publish failed");
    }
}

/// How to reach one member (or moderator) by name: its full name is one
/// connection (unicast), a service name any of its instances (anycast).
pub(super) fn member_mode(name: &Name) -> Mode {
    if name.has_instance() {
        Mode::Unicast
    } else {
        Mode::Anycast
    }
}

/// Where the driver reports: events for the handle, and a counter bumped
/// after each batch of events (for callers waiting on a membership change).
pub(super) struct Outputs {
    pub(super) events: mpsc::Sender<ChannelEvent>,
    pub(super) progress: tokio::sync::watch::Sender<u64>,
}

/// The driver task: a thin loop around the machine.
pub(super) async fn drive<M: Machine>(
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
pub(super) fn subscribe_err(e: crate::ClientError) -> SessionError {
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
pub(super) async fn call<M: Machine, R: Send + 'static>(
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
pub(super) async fn publish_on<M: Machine>(
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
pub(super) async fn roster_of<M: Machine>(
    jobs: &mpsc::Sender<Job<M>>,
) -> Result<(u64, Vec<MemberInfo>), ChannelError> {
    call(jobs, |m: &mut M, _| m.roster()).await
}
