//! The application's handles on a session: [`P2pSession`] (split into a
//! cloneable [`P2pSender`] and a [`P2pReceiver`]) and the [`P2pListener`]
//! that accepts sessions opened to us. Each talks to its session's task
//! through bounded channels; nothing here knows the protocol.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use slim_wire::Name;
use tokio::sync::{mpsc, oneshot};

use super::driver::{self, Cmd, Ends};
use super::machine::P2pMachine;
use super::types::{P2pConfig, P2pEvent, P2pStats};
use crate::session::SessionError;
use crate::session::mux::{Inbox, Incoming, SessionMux};
use crate::session::packet::Kind;

/// A handle for sending on a session; cheap to clone.
#[derive(Clone, Debug)]
pub struct P2pSender {
    cmd: mpsc::Sender<Cmd>,
    /// Stats requests, on their own channel: answered even while a send
    /// waits for window room (which holds up the command queue).
    stats: mpsc::Sender<oneshot::Sender<P2pStats>>,
    /// The counters as the session task ended, for `stats` after the end.
    last_stats: Arc<Mutex<Option<P2pStats>>>,
}

impl P2pSender {
    /// Queues `payload` as the next message and returns its sequence number;
    /// waits while the reliable window is full.
    pub async fn send(&self, payload: impl Into<Bytes>) -> Result<u64, SessionError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Send(payload.into(), tx))
            .await
            .map_err(|_| SessionError::Closed)?;
        rx.await.map_err(|_| SessionError::Closed)?
    }

    /// Queues `payload` without waiting: for best-effort notices (e.g. an
    /// RPC cancel). `false` if the command queue was full or the session is
    /// gone; the message's fate is not reported.
    pub fn try_send(&self, payload: impl Into<Bytes>) -> bool {
        let (tx, _rx) = oneshot::channel();
        self.cmd.try_send(Cmd::Send(payload.into(), tx)).is_ok()
    }

    /// Whether the session task has ended.
    pub fn is_closed(&self) -> bool {
        self.cmd.is_closed()
    }

    /// Closes the session and waits until the peer acknowledged everything
    /// sent (or the retry budget ran out: `DeliveryFailed` events say what).
    pub async fn close(&self) -> Result<(), SessionError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Close(tx))
            .await
            .map_err(|_| SessionError::Closed)?;
        rx.await.map_err(|_| SessionError::Closed)?
    }

    /// Both directions' counters (the final ones once the session ended).
    pub async fn stats(&self) -> Result<P2pStats, SessionError> {
        let (tx, rx) = oneshot::channel();
        if self.stats.send(tx).await.is_ok()
            && let Ok(st) = rx.await
        {
            return Ok(st);
        }
        self.last_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(SessionError::Closed)
    }
}

/// The receiving side of a session.
#[derive(Debug)]
pub struct P2pReceiver {
    events: mpsc::Receiver<P2pEvent>,
}

impl P2pReceiver {
    /// The next event; `None` once the session task has ended.
    pub async fn recv(&mut self) -> Option<P2pEvent> {
        self.events.recv().await
    }

    /// Up to `max` events at once.
    pub async fn recv_many(&mut self, buf: &mut Vec<P2pEvent>, max: usize) -> usize {
        self.events.recv_many(buf, max).await
    }
}

/// An open point-to-point session.
#[derive(Debug)]
pub struct P2pSession {
    id: u64,
    peer: Name,
    peer_identity: Option<Arc<str>>,
    reliable: bool,
    mls: bool,
    tx: P2pSender,
    rx: P2pReceiver,
}

impl P2pSession {
    /// Opens a session to `service` (anycast; the answering instance is the
    /// peer from then on).
    pub async fn open(
        mux: &SessionMux,
        service: &Name,
        cfg: P2pConfig,
    ) -> Result<P2pSession, SessionError> {
        open(mux, service, cfg, Kind::Open).await
    }

    /// Starts the task of a bound session and hands out its handles.
    fn start(inbox: Inbox, machine: P2pMachine, cfg: &P2pConfig) -> P2pSession {
        let id = machine.id();
        let peer = machine.peer().clone();
        let peer_identity = machine.peer_identity().cloned();
        let (reliable, mls) = (machine.is_reliable(), machine.is_mls());
        let Ends {
            cmd,
            stats,
            last_stats,
            events,
        } = driver::spawn(inbox, machine, cfg);
        P2pSession {
            id,
            peer,
            peer_identity,
            reliable,
            mls,
            tx: P2pSender {
                cmd,
                stats,
                last_stats,
            },
            rx: P2pReceiver { events },
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The peer's full name.
    pub fn peer(&self) -> &Name {
        &self.peer
    }

    /// The peer's SPIFFE ID as authenticated by its node.
    pub fn peer_identity(&self) -> Option<&str> {
        self.peer_identity.as_deref()
    }

    pub fn is_reliable(&self) -> bool {
        self.reliable
    }

    /// Whether payloads are MLS-encrypted end to end.
    pub fn is_mls(&self) -> bool {
        self.mls
    }

    pub fn sender(&self) -> P2pSender {
        self.tx.clone()
    }

    pub async fn send(&self, payload: impl Into<Bytes>) -> Result<u64, SessionError> {
        self.tx.send(payload).await
    }

    pub async fn recv(&mut self) -> Option<P2pEvent> {
        self.rx.recv().await
    }

    pub async fn close(&self) -> Result<(), SessionError> {
        self.tx.close().await
    }

    pub async fn stats(&self) -> Result<P2pStats, SessionError> {
        self.tx.stats().await
    }

    pub fn into_split(self) -> (P2pSender, P2pReceiver) {
        (self.tx, self.rx)
    }
}

/// Opens a session of `kind` (`Open`, or `OpenRpc` for RPC) to `service`.
pub(crate) async fn open(
    mux: &SessionMux,
    service: &Name,
    cfg: P2pConfig,
    kind: Kind,
) -> Result<P2pSession, SessionError> {
    let (inbox, machine) = driver::open(mux, service, &cfg, kind).await?;
    Ok(P2pSession::start(inbox, machine, &cfg))
}

/// Accepts point-to-point sessions opened to this client's service name.
#[derive(Debug)]
pub struct P2pListener {
    mux: SessionMux,
    cfg: P2pConfig,
    opens: mpsc::Receiver<Incoming>,
}

impl P2pListener {
    /// Takes the mux's acceptor for `Open`.
    pub fn new(mux: &SessionMux, cfg: P2pConfig) -> Result<P2pListener, SessionError> {
        Self::for_kind(mux, cfg, Kind::Open)
    }

    pub(crate) fn for_kind(
        mux: &SessionMux,
        cfg: P2pConfig,
        kind: Kind,
    ) -> Result<P2pListener, SessionError> {
        cfg.validate()?;
        let opens = mux.acceptor(&[kind], cfg.inbox)?;
        Ok(P2pListener {
            mux: mux.clone(),
            cfg,
            opens,
        })
    }

    /// The next session opened to us; `None` once the mux is gone. Opens we
    /// cannot serve are refused with a reason and skipped.
    pub async fn accept(&mut self) -> Option<P2pSession> {
        loop {
            let inc = self.opens.recv().await?;
            match driver::answer(&self.mux, &self.cfg, inc).await {
                Ok(Some((inbox, machine))) => {
                    return Some(P2pSession::start(inbox, machine, &self.cfg));
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "open not accepted"),
            }
        }
    }
}
