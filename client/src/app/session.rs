//! [`Session`]: one type for point-to-point sessions and group channels,
//! whatever this end's role.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use slim_wire::{Mode, Name};

use super::config::parse_name;
use super::error::SlimError;
use super::types::{Message, Role, SessionEvent, SessionKind};
use crate::channel::GroupCtl;
use crate::session::SessionError;
use crate::session::channel::{ChannelEvent, MemberInfo};
use crate::session::p2p::{P2pEvent, P2pReceiver, P2pSender, P2pSession};

enum Body {
    P2p {
        tx: P2pSender,
        rx: tokio::sync::Mutex<P2pReceiver>,
        peer: Name,
        peer_identity: Option<String>,
        reliable: bool,
    },
    Group {
        channel: Name,
        ctl: GroupCtl,
    },
}

struct SessionInner {
    body: Body,
    role: Role,
    mls: bool,
    /// Set once the session has ended: why.
    ended: Mutex<Option<SlimError>>,
    /// The app's close signal: its sessions end with it.
    app_closed: tokio::sync::watch::Receiver<bool>,
    /// Membership notices of one commit not returned yet (a commit can add
    /// and remove several members).
    queued: Mutex<VecDeque<SessionEvent>>,
}

/// A session: point-to-point or group channel, whatever this end's role.
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("kind", &self.kind())
            .field("role", &self.inner.role)
            .field("name", &self.name())
            .finish()
    }
}

impl Session {
    pub(super) fn p2p(
        s: P2pSession,
        role: Role,
        mls: bool,
        app_closed: tokio::sync::watch::Receiver<bool>,
    ) -> Session {
        let peer = s.peer().clone();
        let peer_identity = s.peer_identity().map(str::to_owned);
        let reliable = s.is_reliable();
        let (tx, rx) = s.into_split();
        Session::new(
            Body::P2p {
                tx,
                rx: tokio::sync::Mutex::new(rx),
                peer,
                peer_identity,
                reliable,
            },
            role,
            mls,
            app_closed,
        )
    }

    pub(super) fn group(
        channel: Name,
        ctl: GroupCtl,
        role: Role,
        mls: bool,
        app_closed: tokio::sync::watch::Receiver<bool>,
    ) -> Session {
        Session::new(Body::Group { channel, ctl }, role, mls, app_closed)
    }

    fn new(
        body: Body,
        role: Role,
        mls: bool,
        app_closed: tokio::sync::watch::Receiver<bool>,
    ) -> Session {
        Session {
            inner: Arc::new(SessionInner {
                body,
                role,
                mls,
                ended: Mutex::new(None),
                app_closed,
                queued: Mutex::new(VecDeque::new()),
            }),
        }
    }

    fn app_is_closed(&self) -> bool {
        *self.inner.app_closed.borrow()
    }

    /// Resolves once the app is closed (never if the app was dropped
    /// without closing: its connection then lives on with its sessions).
    async fn app_closing(&self) {
        let mut rx = self.inner.app_closed.clone();
        if rx.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    pub fn kind(&self) -> SessionKind {
        match self.inner.body {
            Body::P2p { .. } => SessionKind::PointToPoint,
            Body::Group { .. } => SessionKind::Group,
        }
    }

    pub fn role(&self) -> Role {
        self.inner.role
    }

    /// The channel's name, or the peer's full name.
    pub fn name(&self) -> String {
        match &self.inner.body {
            Body::P2p { peer, .. } => peer.to_string(),
            Body::Group { channel, .. } => channel.to_string(),
        }
    }

    /// Point-to-point: the peer's SPIFFE ID as its node authenticated it.
    pub fn peer_spiffe_id(&self) -> Option<String> {
        match &self.inner.body {
            Body::P2p { peer_identity, .. } => peer_identity.clone(),
            Body::Group { .. } => None,
        }
    }

    pub fn is_mls(&self) -> bool {
        self.inner.mls
    }

    /// Point-to-point reliable mode (group channels recover gaps per sender).
    pub fn is_reliable(&self) -> bool {
        match &self.inner.body {
            Body::P2p { reliable, .. } => *reliable,
            Body::Group { .. } => true,
        }
    }

    fn ended(&self) -> Option<SlimError> {
        let e = self.inner.ended.lock().clone();
        match e {
            None if self.app_is_closed() => {
                Some(self.end(SlimError::Closed("the app is closed".into())))
            }
            e => e,
        }
    }

    fn end(&self, e: SlimError) -> SlimError {
        let mut g = self.inner.ended.lock();
        g.get_or_insert(e).clone()
    }

    fn wrong(&self, op: &'static str) -> SlimError {
        SlimError::WrongRole {
            op,
            role: self.inner.role.as_str(),
            kind: self.kind().as_str(),
        }
    }

    /// Sends `payload`: to the peer, or to every member (MLS-encrypted when on).
    pub async fn publish(&self, payload: &[u8]) -> Result<(), SlimError> {
        if let Some(e) = self.ended() {
            return Err(e);
        }
        let r = match &self.inner.body {
            Body::P2p { tx, .. } => tx
                .send(Bytes::copy_from_slice(payload))
                .await
                .map(|_| ())
                .map_err(SlimError::from),
            Body::Group { ctl, .. } => ctl
                .publish(payload)
                .await
                .map(|_| ())
                .map_err(SlimError::from),
        };
        r.map_err(|e| match e {
            SlimError::Closed(_) => self.ended().unwrap_or(e),
            e => e,
        })
    }

    /// The next message; membership notices are skipped. Fails with
    /// [`SlimError::Closed`] once the session has ended (peer closed,
    /// channel closed, removed) and with the session's failure otherwise.
    pub async fn receive(&self) -> Result<Message, SlimError> {
        loop {
            if let SessionEvent::Message(m) = self.next_event().await? {
                return Ok(m);
            }
        }
    }

    /// The next message or membership notice.
    pub async fn next_event(&self) -> Result<SessionEvent, SlimError> {
        if let Some(e) = self.ended() {
            return Err(e);
        }
        let queued = self.inner.queued.lock().pop_front();
        if let Some(ev) = queued {
            return Ok(ev);
        }
        tokio::select! {
            r = self.next_event_inner() => r,
            () = self.app_closing() => {
                Err(self.end(SlimError::Closed("the app is closed".into())))
            }
        }
    }

    async fn next_event_inner(&self) -> Result<SessionEvent, SlimError> {
        match &self.inner.body {
            Body::P2p {
                rx,
                peer,
                peer_identity,
                ..
            } => {
                let mut rx = rx.lock().await;
                loop {
                    let Some(ev) = rx.recv().await else {
                        return Err(self.end(SlimError::Closed("the session ended".into())));
                    };
                    match ev {
                        P2pEvent::Message { seq, payload } => {
                            return Ok(SessionEvent::Message(Message {
                                payload,
                                source: peer.to_string(),
                                spiffe_id: peer_identity.clone(),
                                name: peer.to_string(),
                                seq: Some(seq),
                                epoch: None,
                                mode: None,
                            }));
                        }
                        P2pEvent::PeerClosed { sent } => {
                            return Err(self.end(SlimError::Closed(format!(
                                "the peer closed the session after {sent} messages"
                            ))));
                        }
                        P2pEvent::Failed(e) => return Err(self.end(e.into())),
                        P2pEvent::DeliveryFailed { seq, attempts } => {
                            return Err(SlimError::DeliveryFailed(format!(
                                "message {seq} was not acknowledged after {attempts} transmissions"
                            )));
                        }
                        P2pEvent::Lost { seqs } => {
                            tracing::warn!(peer = %peer, lost = seqs.len(), first = ?seqs.first(), "the peer gave up on messages");
                        }
                        P2pEvent::Rejected { seq, reason } => {
                            tracing::warn!(peer = %peer, seq, %reason, "a message did not decrypt");
                        }
                    }
                }
            }
            Body::Group { ctl, channel } => loop {
                let Some(ev) = ctl.recv().await else {
                    return Err(self.end(SlimError::Closed(format!("{channel} ended"))));
                };
                match ev {
                    ChannelEvent::Message {
                        sender,
                        spiffe_id,
                        seq,
                        epoch,
                        payload,
                    } => {
                        return Ok(SessionEvent::Message(Message {
                            payload,
                            source: sender,
                            spiffe_id: Some(spiffe_id),
                            name: channel.to_string(),
                            seq: Some(seq),
                            epoch: Some(epoch),
                            mode: Some(Mode::Multicast),
                        }));
                    }
                    ChannelEvent::MemberJoined { member, .. } => {
                        return Ok(SessionEvent::MemberJoined(member));
                    }
                    ChannelEvent::MembersChanged { added, removed, .. }
                        if self.inner.role == Role::Member =>
                    {
                        // Members learn of changes from commits; report them
                        // like the moderator's completions, every one.
                        let mut evs = added.into_iter().map(SessionEvent::MemberJoined).chain(
                            removed.into_iter().map(|member| SessionEvent::MemberLeft {
                                member,
                                reason: "removed".into(),
                            }),
                        );
                        if let Some(first) = evs.next() {
                            self.inner.queued.lock().extend(evs);
                            return Ok(first);
                        }
                    }
                    ChannelEvent::MemberLeft { member, reason, .. } => {
                        return Ok(SessionEvent::MemberLeft { member, reason });
                    }
                    ChannelEvent::ChannelClosed { reason } => {
                        return Err(
                            self.end(SlimError::Closed(format!("{channel} was closed: {reason}")))
                        );
                    }
                    ChannelEvent::Removed { reason } => {
                        return Err(self.end(SlimError::Closed(format!(
                            "removed from {channel}: {reason}"
                        ))));
                    }
                    ChannelEvent::Denied { reason } => {
                        return Err(SlimError::PermissionDenied(reason));
                    }
                    ChannelEvent::Rejected { sender, error } => {
                        tracing::warn!(%channel, %sender, %error, "refused a channel message");
                    }
                    ChannelEvent::Lost { sender, seqs } => {
                        tracing::warn!(%channel, %sender, lost = seqs.len(), "channel messages lost");
                    }
                    ChannelEvent::JoinRequestRefused { name, reason, .. } => {
                        tracing::info!(%channel, %name, %reason, "refused a join request");
                    }
                    ChannelEvent::InviteFailed { name, reason } => {
                        tracing::warn!(%channel, %name, %reason, "invitation failed");
                    }
                    ChannelEvent::MemberUnresponsive { member, missed } => {
                        tracing::warn!(%channel, member = %member.name, missed, "member unresponsive");
                    }
                    ChannelEvent::ModeratorUnresponsive { silent_for } => {
                        tracing::warn!(%channel, ?silent_for, "moderator unresponsive");
                    }
                    _ => {}
                }
            },
        }
    }

    /// Moderator: invites a full name or a service name and waits until the
    /// invitee has joined (or the invitation failed).
    pub async fn invite(&self, name: &str) -> Result<(), SlimError> {
        let Body::Group { ctl, .. } = &self.inner.body else {
            return Err(self.wrong("invite"));
        };
        if self.inner.role != Role::Moderator {
            return Err(self.wrong("invite"));
        }
        parse_name(name)?;
        Ok(ctl.invite(name).await?)
    }

    /// Moderator: removes a member (full name, unique service name, or SPIFFE ID).
    pub async fn remove(&self, who: &str) -> Result<(), SlimError> {
        let Body::Group { ctl, .. } = &self.inner.body else {
            return Err(self.wrong("remove"));
        };
        if self.inner.role != Role::Moderator {
            return Err(self.wrong("remove"));
        }
        Ok(ctl.remove(who).await?)
    }

    /// Group: the roster (moderator included).
    pub async fn members(&self) -> Result<Vec<MemberInfo>, SlimError> {
        let Body::Group { ctl, .. } = &self.inner.body else {
            return Err(self.wrong("members"));
        };
        Ok(ctl.members().await?.1)
    }

    /// Ends the session: p2p closes once everything sent is acknowledged;
    /// a moderator closes the channel; a member leaves. Idempotent.
    pub async fn close(&self) -> Result<(), SlimError> {
        // (With the app closed there is no connection to say goodbye on.)
        let already = self.ended().is_some();
        let r = match &self.inner.body {
            Body::P2p { tx, .. } => {
                if already || tx.is_closed() {
                    Ok(())
                } else {
                    match tx.close().await {
                        Ok(()) | Err(SessionError::Closed) => Ok(()),
                        Err(e) => Err(SlimError::from(e)),
                    }
                }
            }
            Body::Group { ctl, .. } => {
                if already {
                    Ok(())
                } else {
                    ctl.close("closed by the application")
                        .await
                        .map_err(SlimError::from)
                }
            }
        };
        self.end(SlimError::Closed(
            "the session was closed by this end".into(),
        ));
        r
    }
}
