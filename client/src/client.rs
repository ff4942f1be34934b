//! [`Client`]: a connected agent's raw subscribe, publish and receive.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use slim_framed::queue::{QueueRx, queue};
use slim_wire::{ErrorCode, ErrorFrame, Frame, Mode, Name, Subscribe, Unsubscribe, codec};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::ClientConfig;
use crate::confirm::{DisconnectPolicy, OutboundBytes, Taken};
use crate::conn;
use crate::error::ClientError;
use crate::event::{ConnState, Delivery, Event};
use crate::shared::{SdkMetrics, Shared, encode_frame};

/// A connected agent.
pub struct Client {
    pub(crate) shared: Arc<Shared>,
    out: mpsc::Sender<BytesMut>,
    /// The bytes in `out` (bounded by `ClientConfig::outbound_bytes`).
    budget: Arc<OutboundBytes>,
    /// Deliveries and node errors from the connection's reader, in arrival
    /// order. Taken through `&self` without an async lock: several tasks
    /// may receive at once, each event going to one of them.
    events: QueueRx<Event>,
    driver: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    close: Mutex<Option<oneshot::Sender<()>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.shared.cfg.name)
            .finish()
    }
}

impl Client {
    /// Dials the node, registers, and starts the connection driver. The first
    /// attempt's failure is returned; later drops are retried forever.
    pub async fn connect(mut cfg: ClientConfig) -> Result<Client, ClientError> {
        if !cfg.name.has_instance() {
            let id = format!("{:016x}", rand::random::<u64>());
            cfg.name = cfg.name.with_instance(&id)?;
        }
        let (state, _) = watch::channel(ConnState::Reconnecting {
            attempt: 0,
            last_error: String::new(),
        });
        let shared = Arc::new(Shared {
            metrics: SdkMetrics::new(cfg.metrics),
            cfg,
            subs: Mutex::new(HashSet::new()),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            state,
            identity_seen: Mutex::new(None),
            node_seen: Mutex::new(None),
            recent_errors: Mutex::new(std::collections::VecDeque::new()),
            confirm: Default::default(),
            connected: std::sync::atomic::AtomicBool::new(true),
            proto: slim_wire::PROTOCOL_VERSION.into(),
        });
        // quinn's drivers run in the connection task (`crate::host`), and
        // during the first handshake in this one. An error or a cancelled
        // connect shuts the host down (its drivers and the endpoint would
        // otherwise keep each other alive); on success the guard moves into
        // the connection task.
        let host = crate::host::Host::default();
        let guard = crate::host::ShutdownOnDrop(host.clone());
        let endpoint = crate::endpoint::endpoint(&shared.cfg, &host)?;
        let live = host
            .run_until(conn::connect_once(&shared, &endpoint))
            .await?;
        let (out_tx, out_rx) = mpsc::channel(shared.cfg.outbound_capacity.max(1));
        let budget = Arc::new(OutboundBytes::new(shared.cfg.outbound_bytes));
        let (ev_tx, ev_rx) = queue(shared.cfg.inbound_capacity.max(1));
        let (close_tx, close_rx) = oneshot::channel();
        let drive = conn::drive(
            Arc::clone(&shared),
            endpoint,
            live,
            out_rx,
            Arc::clone(&budget),
            Arc::new(ev_tx),
            close_rx,
        );
        let driver = tokio::spawn(async move {
            let _shutdown = guard;
            host.run_until(drive).await;
        });
        Ok(Client {
            shared,
            out: out_tx,
            budget,
            events: ev_rx,
            driver: tokio::sync::Mutex::new(Some(driver)),
            close: Mutex::new(Some(close_tx)),
        })
    }

    /// This client's registered full name.
    pub fn name(&self) -> &Name {
        &self.shared.cfg.name
    }

    /// The SPIFFE ID the node says it authenticated this client as.
    pub fn authenticated_as(&self) -> Option<String> {
        self.shared.identity_seen.lock().clone()
    }

    /// The node's SPIFFE ID and certificate expiry, as its certificate
    /// said at the last handshake (for diagnostics such as
    /// `slimctl identity check`).
    pub fn node_identity(&self) -> Option<crate::NodeIdentity> {
        self.shared.node_seen.lock().clone()
    }

    pub fn state(&self) -> watch::Receiver<ConnState> {
        self.shared.state.subscribe()
    }

    async fn request(&self, id: u64, frame: Frame) -> Result<(), (ErrorCode, String)> {
        let (tx, rx) = oneshot::channel();
        self.shared.pending.lock().insert(id, tx);
        // Unique, so into `BytesMut` (the queue's type) without a copy.
        let bytes = BytesMut::from(
            encode_frame(&frame, &self.shared.cfg.limits)
                .map_err(|e| (ErrorCode::INTERNAL, e.to_string()))?,
        );
        self.budget.take(bytes.len()).await;
        let taken = Taken {
            budget: &self.budget,
            n: bytes.len(),
        };
        if self.out.send(bytes).await.is_err() {
            return Err((ErrorCode::SHUTTING_DOWN, "client is closed".into()));
        }
        taken.keep();
        let t = self.shared.cfg.request_timeout;
        let res = tokio::time::timeout(t, rx).await;
        self.shared.pending.lock().remove(&id);
        match res {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err((ErrorCode::INTERNAL, "connection lost".into())),
            Err(_) => Err((ErrorCode::INTERNAL, format!("no answer within {t:?}"))),
        }
    }

    /// Declares interest in `name`; returns once the node has acknowledged it.
    /// Subscriptions are restored after a reconnect.
    pub async fn subscribe(&self, name: &Name) -> Result<(), ClientError> {
        self.shared.subs.lock().insert(name.clone());
        let id = self.shared.next_id();
        self.request(
            id,
            Frame::Subscribe(Subscribe {
                id,
                name: name.clone(),
            }),
        )
        .await
        .map_err(|(code, reason)| {
            if code == ErrorCode::UNAUTHORIZED {
                // Refused: not something to restore after a reconnect.
                self.shared.subs.lock().remove(name);
            }
            ClientError::Subscribe {
                name: name.to_string(),
                code,
                reason,
            }
        })
    }

    pub async fn unsubscribe(&self, name: &Name) -> Result<(), ClientError> {
        self.shared.subs.lock().remove(name);
        let id = self.shared.next_id();
        self.request(
            id,
            Frame::Unsubscribe(Unsubscribe {
                id,
                name: name.clone(),
            }),
        )
        .await
        .map_err(|(code, reason)| ClientError::Subscribe {
            name: name.to_string(),
            code,
            reason,
        })
    }

    /// Publishes `payload` to `name`. Returns once the frame is queued for
    /// sending, waiting while the outbound queue is full: it holds
    /// [`ClientConfig::outbound_capacity`] frames and
    /// [`ClientConfig::outbound_bytes`] bytes at most, so a node (or network)
    /// that takes less than the publisher makes slows the publisher down
    /// within that much data. A "no route" answer
    /// arrives later as [`Event::Error`] unless `flags` has
    /// [`FLAG_NO_ROUTE_SILENT`](crate::FLAG_NO_ROUTE_SILENT).
    pub async fn publish_with(
        &self,
        name: &Name,
        mode: Mode,
        flags: u8,
        payload: &[u8],
    ) -> Result<u64, ClientError> {
        let msg_id = self.shared.next_id();
        self.publish_with_id(name, mode, flags, msg_id, payload)
            .await
    }

    /// A fresh message id for [`Client::publish_with_id`], so that a caller
    /// can file it (e.g. to match a later `NO_ROUTE`) before the frame leaves.
    pub(crate) fn reserve_msg_id(&self) -> u64 {
        self.shared.next_id()
    }

    /// Whether SDK metrics are on (session layers follow the same switch).
    pub(crate) fn metrics_on(&self) -> bool {
        self.shared.cfg.metrics
    }

    pub(crate) async fn publish_with_id(
        &self,
        name: &Name,
        mode: Mode,
        flags: u8,
        msg_id: u64,
        payload: &[u8],
    ) -> Result<u64, ClientError> {
        let connected = self.shared.connected.load(Ordering::Acquire);
        if !connected && self.shared.cfg.on_disconnect == DisconnectPolicy::Fail {
            return Err(self.disconnected());
        }
        let frame = SCRATCH.with(|cell| {
            // Frames are carved out of a per-thread 64 KiB buffer, so small
            // publishes share allocations instead of each making one.
            let mut b = cell.borrow_mut();
            let need = payload.len() + name.as_str().len() + 32;
            if b.capacity() - b.len() < need {
                b.reserve(need.max(64 * 1024));
            }
            codec::encode_publish(
                name,
                mode,
                flags,
                msg_id,
                payload,
                &self.shared.cfg.limits,
                &mut b,
            )
            // Not frozen: the writer joins frames that follow each other in
            // this buffer back into one piece (`slim_wire::merge_adjacent`)
            // instead of copying them into a coalescing buffer.
            .map(|()| b.split())
        })?;
        // Reconnecting with the queue full: wait for room only as long as
        // the application said (one deadline for both bounds).
        let deadline = match self.shared.cfg.on_disconnect {
            DisconnectPolicy::Buffer { max_wait } if !connected => {
                Some(tokio::time::Instant::now() + max_wait)
            }
            _ => None,
        };
        let n = frame.len();
        if !self.budget.try_take(n) {
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, self.budget.take(n))
                        .await
                        .is_err()
                    {
                        return Err(self.disconnected());
                    }
                }
                None => self.budget.take(n).await,
            }
        }
        let taken = Taken {
            budget: &self.budget,
            n,
        };
        match self.out.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(f)) => match deadline {
                Some(d) => match tokio::time::timeout_at(d, self.out.send(f)).await {
                    Ok(r) => r.map_err(|_| ClientError::Closed)?,
                    Err(_) => return Err(self.disconnected()),
                },
                None => self.out.send(f).await.map_err(|_| ClientError::Closed)?,
            },
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(ClientError::Closed),
        }
        taken.keep();
        self.shared.metrics.published.increment(1);
        Ok(msg_id)
    }

    /// The error for a publish refused while not connected, with the
    /// reason the connection was lost.
    fn disconnected(&self) -> ClientError {
        let reason = match &*self.shared.state.borrow() {
            ConnState::Reconnecting { last_error, .. } => last_error.clone(),
            ConnState::Closed => "the client is closed".into(),
            ConnState::Connected { .. } => "reconnecting".into(),
        };
        ClientError::Disconnected { reason }
    }

    pub async fn publish(
        &self,
        name: &Name,
        mode: Mode,
        payload: &[u8],
    ) -> Result<u64, ClientError> {
        self.publish_with(name, mode, 0, payload).await
    }

    /// The next delivery or node-reported error; `None` once closed.
    ///
    /// Take events even if only publishing: each publish the node refuses
    /// (e.g. `no_route`, unless sent with [`FLAG_NO_ROUTE_SILENT`](crate::FLAG_NO_ROUTE_SILENT))
    /// comes back as an [`Event::Error`]. Once `inbound_capacity` events wait
    /// here, the client stops reading from the node (nothing is dropped) and
    /// says so in a warning after a second; the node then cuts it as a slow
    /// consumer at its write deadline.
    pub async fn recv(&self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next delivered message, skipping node-reported errors.
    pub async fn next_message(&self) -> Option<Delivery> {
        loop {
            match self.events.recv().await? {
                Event::Message(d) => return Some(d),
                Event::Error(e) => {
                    tracing::debug!(code = e.code.0, reason = %e.reason, "node reported an error");
                }
            }
        }
    }

    /// Receives up to `max` events into `buf` in one go (for high-rate
    /// consumers), waiting for at least one; 0 once closed (or `max` is 0).
    pub async fn recv_many(&self, buf: &mut Vec<Event>, max: usize) -> usize {
        if max == 0 {
            return 0;
        }
        self.events.recv_many(buf, max).await
    }

    /// Waits until every queued outbound frame has been handed to QUIC
    /// (or the connection driver is gone).
    pub async fn flush(&self) {
        tokio::select! {
            () = self.budget.empty() => {}
            () = self.out.closed() => {}
        }
    }

    /// Frames waiting in the outbound queue (a batch the writer has taken
    /// and is handing to QUIC no longer counts here, but still counts in
    /// [`Client::queued_bytes`]).
    pub fn queued_messages(&self) -> usize {
        self.out.max_capacity() - self.out.capacity()
    }

    /// Bytes of the frames queued and not yet handed to QUIC (at most
    /// [`ClientConfig::outbound_bytes`], or one frame larger than it).
    pub fn queued_bytes(&self) -> usize {
        self.budget.queued()
    }

    /// The outbound queue's byte bound ([`ClientConfig::outbound_bytes`]).
    pub fn outbound_bytes_limit(&self) -> usize {
        self.budget.limit()
    }

    /// Closes the connection after sending what is queued.
    pub async fn close(self) {
        self.shutdown().await;
    }

    /// [`Client::close`] through a shared reference (the handle stays, closed).
    /// Bounded: with the node unreachable the queue may never drain, and
    /// the close must still go out.
    pub async fn shutdown(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.flush()).await;
        // What was written is confirmed within a ping interval and a round
        // trip; without waiting, it would be reported lost at the close.
        if self.shared.connected.load(Ordering::Acquire) {
            self.shared
                .confirm
                .all_confirmed(Duration::from_secs(1))
                .await;
        }
        if let Some(c) = self.close.lock().take() {
            let _ = c.send(());
        }
        if let Some(mut d) = self.driver.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut d).await;
        }
    }

    /// A round trip to the node (ping, pong): once it returns, the node has
    /// processed every frame this client sent before it.
    pub async fn ping(&self) -> Result<(), ClientError> {
        let id = self.shared.next_id();
        self.request(id, Frame::Ping(slim_wire::Ping { nonce: id }))
            .await
            .map_err(|(code, reason)| match code {
                ErrorCode::SHUTTING_DOWN => ClientError::Closed,
                _ => ClientError::Protocol(format!("ping: {reason}")),
            })
    }

    /// Removes and returns the node's recent error frames whose message id
    /// satisfies `want` (errors about publishes; the same errors also reach
    /// [`Client::recv`]). Up to the last 4096 errors are kept.
    pub fn take_errors(&self, want: impl Fn(u64) -> bool) -> Vec<ErrorFrame> {
        let mut q = self.shared.recent_errors.lock();
        let mut out = Vec::new();
        q.retain(|e| match e.msg_id {
            Some(id) if want(id) => {
                out.push(e.clone());
                false
            }
            _ => true,
        });
        out
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(c) = self.close.lock().take() {
            let _ = c.send(());
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}
