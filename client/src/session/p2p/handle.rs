//! The application's handles on a session: [`P2pSession`] (split into a
//! cloneable [`P2pSender`] and a [`P2pReceiver`]) and the [`P2pListener`]
//! that accepts sessions opened to us. Each talks to its session's task
//! through bounded channels; nothing here knows the protocol.

use parking_lot::Mutex;
use std::sync::Arc;

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
        reply(rx, &self.cmd).await.ok_or(SessionError::Closed)?
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
        reply(rx, &self.cmd).await.ok_or(SessionError::Closed)?
    }

    /// Both directions' counters (the final ones once the session ended).
    pub async fn stats(&self) -> Result<P2pStats, SessionError> {
        let (tx, rx) = oneshot::channel();
        if self.stats.send(tx).await.is_ok()
            && let Some(st) = reply(rx, &self.stats).await
        {
            return Ok(st);
        }
        self.last_stats.lock().clone().ok_or(SessionError::Closed)
    }
}

/// The session task's answer to a request sent on `chan`; `None` if the task
/// ended without answering.
///
/// Awaiting the oneshot alone can hang forever: a request may land in the
/// channel after the task dropped its receiver (the send took its slot
/// before the drop and queued the message after the receiver's drain), and
/// then nobody answers it, nor drops it while a handle keeps the channel
/// alive. The channel's closing is what says the task is gone.
async fn reply<T, U>(mut rx: oneshot::Receiver<T>, chan: &mpsc::Sender<U>) -> Option<T> {
    tokio::select! {
        biased;
        r = &mut rx => r.ok(),
        // An answer sent just before the task ended is there already.
        () = chan.closed() => rx.try_recv().ok(),
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

#[cfg(test)]
mod tests {
    //! The liveness hole after a close: the session task ends (its command
    //! and stats receivers dropped) while a handle's request is on its way.
    //! These drive the handles' futures by hand, so the interleaving that
    //! hung `stats()` is reproduced exactly, every time, without timing.

    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn poll<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    type StatsRx = mpsc::Receiver<oneshot::Sender<P2pStats>>;

    /// A sender whose "task" is the test: it holds the receivers.
    fn sender(last: Option<P2pStats>) -> (P2pSender, mpsc::Receiver<Cmd>, StatsRx) {
        let (cmd, cmd_rx) = mpsc::channel(4);
        let (stats, stats_rx) = mpsc::channel(4);
        let s = P2pSender {
            cmd,
            stats,
            last_stats: Arc::new(Mutex::new(last)),
        };
        (s, cmd_rx, stats_rx)
    }

    fn final_counters() -> P2pStats {
        let mut st = P2pStats::default();
        st.sender.sent = 10_000;
        st.sender.acked = 10_000;
        st
    }

    /// The cause, in tokio's terms: a message queued through a slot taken
    /// before the receiver was dropped lands after the receiver's drain, and
    /// stays in the channel, neither received nor dropped, for as long as a
    /// sender lives. A oneshot reply inside it never resolves.
    #[test]
    fn a_request_queued_after_the_receiver_went_is_never_answered_nor_dropped() {
        let (tx, rx) = mpsc::channel::<oneshot::Sender<P2pStats>>(4);
        // `stats()` took its slot…
        let slot = tx.try_reserve().unwrap();
        // …the session task ended and dropped its receiver (drained: empty)…
        drop(rx);
        // …and the request lands.
        let (reply_tx, mut reply_rx) = oneshot::channel();
        slot.send(reply_tx);
        assert!(tx.is_closed());
        assert_eq!(
            reply_rx.try_recv(),
            Err(oneshot::error::TryRecvError::Empty),
            "not answered and not dropped: awaiting it alone hangs"
        );
    }

    /// `stats()` right after a successful close (what the sessions test and
    /// the test agent do): its request reaches the channel but the task,
    /// ending, never takes it. The counters the task left are the answer.
    #[test]
    fn stats_racing_the_end_of_the_task_gets_the_final_counters() {
        let (s, _cmd_rx, mut stats_rx) = sender(Some(final_counters()));
        let mut fut = pin!(s.stats());
        assert!(poll(fut.as_mut()).is_pending(), "asked; waiting");
        assert_eq!(stats_rx.len(), 1);
        // The task ends without taking it; the request stays queued, as one
        // that landed after the receiver's drain does.
        stats_rx.close();
        assert_eq!(poll(fut.as_mut()), Poll::Ready(Ok(final_counters())));
    }

    #[test]
    fn send_and_close_racing_the_end_of_the_task_fail_closed() {
        let (s, mut cmd_rx, _stats_rx) = sender(None);
        let mut send = pin!(s.send(Bytes::from_static(b"late")));
        let mut close = pin!(s.close());
        assert!(poll(send.as_mut()).is_pending());
        assert!(poll(close.as_mut()).is_pending());
        cmd_rx.close();
        assert_eq!(poll(send.as_mut()), Poll::Ready(Err(SessionError::Closed)));
        assert_eq!(poll(close.as_mut()), Poll::Ready(Err(SessionError::Closed)));
    }

    /// An answer the task sent just before it ended is not mistaken for "no
    /// answer".
    #[test]
    fn an_answer_sent_as_the_task_ends_is_kept() {
        let (s, mut cmd_rx, _stats_rx) = sender(None);
        let mut send = pin!(s.send(Bytes::from_static(b"m")));
        assert!(poll(send.as_mut()).is_pending());
        let Ok(Cmd::Send(_, reply)) = cmd_rx.try_recv() else {
            panic!("the send reached the task");
        };
        reply.send(Ok(7)).unwrap();
        drop(cmd_rx);
        assert_eq!(poll(send.as_mut()), Poll::Ready(Ok(7)));
    }
}
