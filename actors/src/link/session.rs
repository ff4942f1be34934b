//! A live link session: registered with the federation actor, served by
//! four tasks (data and control, each a reader and a writer), ended once.
//!
//! A link is one QUIC connection with two streams, both opened by the dialler:
//! the *data* stream (`PeerHello`/`PeerAccept`, then `Forward` frames both
//! ways) and the *control* stream (`Interest`, `Ping`/`Pong`), sent at a
//! higher QUIC priority so that liveness and interest are never stuck behind
//! bulk data. Whoever can reach the other dials; the link then carries
//! traffic both ways, so a node behind NAT needs no inbound port.
//!
//! Forwarded publishes are routed inline by the data reader (registry read,
//! outbox pushes), like client publishes; control goes to the federation actor.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use metrics::counter;
use quinn::{RecvStream, SendStream};
use slim_wire::{ErrorCode, Frame, FrameKind, Ping, Pong, codec};
use tokio::sync::{Semaphore, mpsc};

use crate::ctx::{AbortOnDrop, NodeCtx, Reader, close_conn, encode};
use crate::fed::shared::{FedMsg, LinkSession, LinkShared};
use crate::link::error::LinkError;
use crate::link::forward::Forwarder;
use crate::metrics as m;
use crate::outbox::{Detach, Outbox, QueueRx, SlowAction, SlowConsumerPolicy};
use crate::types::{LinkState, PeerSpec};
use slim_framed::{FrameWriter, ReadError, WriteHooks, pump};

/// What a completed handshake hands to the session.
pub(crate) struct Streams {
    pub conn: quinn::Connection,
    pub peer_spiffe: Option<String>,
    pub dialler: String,
    pub send: SendStream,
    pub reader: Reader,
    pub ctl_send: SendStream,
    pub ctl_recv: RecvStream,
}

/// A new session for `conn`, registered with the federation actor. `Err(Duplicate)`
/// if another link to the same peer wins the tie-break.
pub(crate) async fn start_session(
    ctx: &NodeCtx,
    shared: &LinkShared,
    conn: &quinn::Connection,
    peer: &str,
    dialler: &str,
) -> Result<(Arc<LinkSession>, QueueRx, mpsc::Receiver<Bytes>), LinkError> {
    let fc = &ctx.cfg.federation;
    // A full link is waited for like a subscriber, but a link is never
    // closed for slowness: past its write deadline it drops (counted, logged
    // naming the peer), and stays up for everyone else's traffic.
    let (outbox, rx) = Outbox::new(
        fc.link_queue.max_frames,
        fc.link_queue.max_bytes,
        SlowConsumerPolicy {
            action: SlowAction::Drop,
            ..fc.link_queue.policy
        },
    );
    let (ctl, ctl_rx) = mpsc::channel(fc.control_queue.max(1));
    let session = Arc::new(LinkSession {
        id: ctx.next_conn_id(),
        peer: Arc::from(peer),
        dialler: Arc::from(dialler),
        outbox: Arc::new(outbox),
        ctl,
        conn: conn.clone(),
        last_pong: AtomicU64::new(now_ms()),
        expired: tokio::sync::Notify::new(),
    });
    *shared.peer_node_id.write() = peer.to_owned();
    *shared.session.write() = Some(Arc::clone(&session));
    let fed = ctx
        .fed
        .actor()
        .ok_or_else(|| LinkError::Lost("federation actor not running".into()))?;
    let keep = ractor::call!(fed, |reply| FedMsg::Up {
        session: Arc::clone(&session),
        reply,
    })
    .map_err(|e| LinkError::Lost(format!("federation actor unavailable: {e}")));
    match keep {
        Ok(true) => Ok((session, rx, ctl_rx)),
        Ok(false) => {
            shared.take_session();
            Err(LinkError::Duplicate)
        }
        Err(e) => {
            shared.take_session();
            Err(e)
        }
    }
}

/// Tells the federation a session is over (once, whoever gets here first).
pub(crate) fn end_session(ctx: &NodeCtx, shared: &LinkShared, reason: &str) {
    if let Some(s) = shared.take_session() {
        if s.conn.close_reason().is_none() {
            close_conn(&s.conn, ErrorCode(0), reason);
        }
        shared.set_state(LinkState::Backoff);
        if let Some(fed) = ctx.fed.actor() {
            let _ = fed.send_message(FedMsg::Down {
                session: s,
                reason: reason.to_owned(),
            });
        }
    }
}

pub(crate) async fn serve_dialled(
    ctx: &Arc<NodeCtx>,
    shared: &Arc<LinkShared>,
    spec: &PeerSpec,
    st: Streams,
) -> Result<(), LinkError> {
    let (session, rx, ctl_rx) =
        match start_session(ctx, shared, &st.conn, &spec.node_id, &st.dialler).await {
            Ok(s) => s,
            Err(e) => {
                close_conn(
                    &st.conn,
                    ErrorCode::LINK_EXISTS,
                    "another link to this node is in use",
                );
                return Err(e);
            }
        };
    *shared.peer_spiffe_id.write() = st.peer_spiffe.clone();
    serve(ctx, shared, session, rx, ctl_rx, st).await
}

pub(crate) fn now_ms() -> u64 {
    crate::outbox::epoch().elapsed().as_millis() as u64
}

/// Runs a live link until one of its tasks ends, liveness fails or the node
/// shuts down; then closes it and tells the federation.
pub(crate) async fn serve(
    ctx: &Arc<NodeCtx>,
    shared: &Arc<LinkShared>,
    session: Arc<LinkSession>,
    rx: QueueRx,
    ctl_rx: mpsc::Receiver<Bytes>,
    st: Streams,
) -> Result<(), LinkError> {
    shared.set_state(LinkState::Up);
    *shared.up_since.write() = Some(SystemTime::now());
    *shared.remote_addr.write() = st.conn.remote_address();
    metrics::gauge!(m::CONNECTIONS, "kind" => "peer").increment(1.0);
    counter!(m::CONNECTIONS_TOTAL, "kind" => "peer").increment(1);
    // Liveness must not queue behind bulk data.
    let _ = st.ctl_send.set_priority(1);
    let (done_tx, mut done_rx) = mpsc::channel::<Result<(), LinkError>>(4);
    let spawn =
        |f: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), LinkError>> + Send>>| {
            let done = done_tx.clone();
            AbortOnDrop(tokio::spawn(async move {
                let _ = done.send(f.await).await;
            }))
        };
    let _tasks = [
        spawn(Box::pin(data_writer(
            Arc::clone(ctx),
            Arc::clone(shared),
            Arc::clone(&session.outbox),
            st.send,
            rx,
        ))),
        spawn(Box::pin(ctl_writer(Arc::clone(ctx), st.ctl_send, ctl_rx))),
        spawn(Box::pin(data_reader(
            Arc::clone(ctx),
            Arc::clone(shared),
            Arc::clone(&session),
            st.reader,
        ))),
        spawn(Box::pin(ctl_reader(
            Arc::clone(ctx),
            Arc::clone(&session),
            st.ctl_recv,
        ))),
    ];
    let mut check =
        tokio::time::interval(ctx.cfg.federation.keep_alive.min(Duration::from_secs(1)));
    let mut shutdown = ctx.shutdown_rx();
    let generation = ctx.fed.generation();
    let result = loop {
        tokio::select! {
            r = done_rx.recv() => break r.unwrap_or(Ok(())),
            _ = check.tick() => {
                if ctx.fed.generation() != generation {
                    break Err(LinkError::Lost("the federation actor restarted".into()));
                }
            }
            // The link actor's liveness check found no pong in time.
            _ = session.expired.notified() => break Err(LinkError::Liveness),
            _ = shutdown.changed() => break Ok(()),
        }
    };
    let reason = match &result {
        Ok(()) if ctx.is_shutting_down() => "node shutting down".to_string(),
        Ok(()) => "closed".to_string(),
        Err(e) => e.to_string(),
    };
    let code = match &result {
        Err(LinkError::Wire(w)) => w.code(),
        Err(LinkError::Protocol(_)) => ErrorCode::PROTOCOL,
        _ if ctx.is_shutting_down() => ErrorCode::SHUTTING_DOWN,
        _ => ErrorCode(0),
    };
    if let Err(e) = &result {
        counter!(m::LINK_DOWN_TOTAL, "reason" => e.label()).increment(1);
    }
    // Why the connection itself ended (peer close, idle timeout), if it did
    // before we close it: that says more than "stream closed".
    let reason = match session.conn.close_reason() {
        Some(r) => r.to_string(),
        None => {
            close_conn(&session.conn, code, &reason);
            reason
        }
    };
    metrics::gauge!(m::CONNECTIONS, "kind" => "peer").decrement(1.0);
    end_session(ctx, shared, &reason);
    result
}

/// How much a link's data reader reserves at a time (links carry many
/// clients' traffic; a client connection uses the default 16 KiB).
pub(crate) const LINK_READ_CHUNK: usize = 64 * 1024;

/// Counts a link's written data frames and records queueing delay.
struct DataHooks<'a> {
    ctx: &'a NodeCtx,
    shared: &'a LinkShared,
    outbox: &'a Outbox,
    wait: Option<Duration>,
    /// Frames in the batch being written.
    frames: usize,
}

impl WriteHooks for DataHooks<'_> {
    fn taken(&mut self, batch: &[Bytes]) {
        self.wait = self.outbox.take_wait();
        // An item may be a run of forwards (`run.rs`), so items are not frames.
        self.frames = batch.iter().map(|b| codec::count_frames(b)).sum();
    }

    fn written(&mut self, _items: usize, bytes: usize) {
        let frames = std::mem::take(&mut self.frames);
        self.outbox.written(bytes);
        self.ctx.hot.link_bytes_out.increment(bytes as u64);
        self.ctx.hot.link_frames_out.increment(frames as u64);
        self.shared
            .frames_out
            .fetch_add(frames as u64, Ordering::Relaxed);
        if let Some(w) = self.wait.take() {
            self.ctx
                .hot
                .enqueue_to_write_seconds
                .record(w.as_secs_f64());
        }
    }
}

pub(crate) async fn data_writer(
    ctx: Arc<NodeCtx>,
    shared: Arc<LinkShared>,
    outbox: Arc<Outbox>,
    send: SendStream,
    mut rx: QueueRx,
) -> Result<(), LinkError> {
    let mut hooks = DataHooks {
        ctx: &ctx,
        shared: &shared,
        outbox: &outbox,
        wait: None,
        frames: 0,
    };
    // Shared with the readers that write forwards around an empty queue
    // (`Outbox::try_direct`), as on client connections.
    outbox.attach(send);
    let _detach = Detach(&outbox);
    let mut w = FrameWriter::new(outbox.writer_sink());
    pump(&mut rx, &mut w, &mut hooks, std::future::pending())
        .await
        .map_err(|e| LinkError::Lost(e.to_string()))?;
    Ok(())
}

pub(crate) async fn ctl_writer(
    ctx: Arc<NodeCtx>,
    send: SendStream,
    mut rx: mpsc::Receiver<Bytes>,
) -> Result<(), LinkError> {
    let mut tick = tokio::time::interval(ctx.cfg.federation.keep_alive);
    let mut nonce = 0u64;
    let mut w = FrameWriter::new(send);
    loop {
        let frame = tokio::select! {
            b = rx.recv() => match b { Some(b) => b, None => return Ok(()) },
            _ = tick.tick() => {
                nonce += 1;
                encode(&Frame::Ping(Ping { nonce }), &ctx)
            }
        };
        w.write_frame(frame)
            .await
            .map_err(|e| LinkError::Lost(e.to_string()))?;
    }
}

/// Reads more of a link stream: false at a clean end of stream. `on_wait`
/// runs if the read has to wait ([`slim_framed::FrameReader::fill_idle`]).
async fn read_more(reader: &mut Reader, on_wait: impl FnOnce()) -> Result<bool, LinkError> {
    match reader.fill_idle(on_wait).await {
        Ok(0) => Ok(false),
        Ok(n) => {
            counter!(m::LINK_BYTES_TOTAL, "direction" => "in").increment(n as u64);
            Ok(true)
        }
        Err(ReadError::Wire(e)) => Err(e.into()),
        Err(ReadError::Io(e)) => Err(LinkError::Lost(e.to_string())),
    }
}

pub(crate) async fn ctl_reader(
    ctx: Arc<NodeCtx>,
    session: Arc<LinkSession>,
    recv: RecvStream,
) -> Result<(), LinkError> {
    // Interest updates wait in the federation actor's mailbox; bounding how
    // many per link may wait there pushes back on a flooding peer (through
    // QUIC flow control) instead of growing memory.
    let permits = Arc::new(Semaphore::new(ctx.cfg.federation.control_queue.max(1)));
    let mut reader = Reader::new(recv, ctx.cfg.limits);
    loop {
        while let Some(f) = reader.try_next()? {
            let frame = codec::decode_body(&f);
            match frame.inspect_err(|e| m::protocol_error(e.reason_label()))? {
                Frame::Interest(i) => {
                    let permit = Arc::clone(&permits)
                        .acquire_owned()
                        .await
                        .map_err(|e| LinkError::Lost(e.to_string()))?;
                    let Some(fed) = ctx.fed.actor() else {
                        return Err(LinkError::Lost("federation actor not running".into()));
                    };
                    let _ = fed.send_message(FedMsg::Interest {
                        peer: Arc::clone(&session.peer),
                        session: session.id,
                        frame: i,
                        _permit: permit,
                    });
                }
                Frame::Ping(p) => {
                    // A peer that does not read its pongs only loses pongs.
                    let _ = session
                        .ctl
                        .try_send(encode(&Frame::Pong(Pong { nonce: p.nonce }), &ctx));
                    // Its pings prove it is alive too.
                    session.last_pong.store(now_ms(), Ordering::Relaxed);
                }
                Frame::Pong(_) => session.last_pong.store(now_ms(), Ordering::Relaxed),
                other => {
                    m::protocol_error("link_control");
                    return Err(LinkError::Protocol(format!(
                        "unexpected {} frame on a link's control stream",
                        other.kind().as_str()
                    )));
                }
            }
        }
        if !read_more(&mut reader, || {}).await? {
            return Ok(());
        }
    }
}

/// Routes every whole `Forward` buffered in `reader`, counting them in `n`.
/// `memo` keeps the strings of the last forward checked, so a stream's
/// forwards check only what changed ([`slim_wire::ForwardMemo`]).
async fn route_buffered(
    ctx: &NodeCtx,
    fwd: &mut Forwarder<'_>,
    memo: &mut slim_wire::ForwardMemo,
    reader: &mut Reader,
    n: &mut u64,
) -> Result<(), LinkError> {
    while let Some(f) = reader.try_next()? {
        *n += 1;
        if f[0] != FrameKind::Forward as u8 {
            let kind = FrameKind::from_u8(f[0]).map_or("unknown", FrameKind::as_str);
            m::protocol_error("link_data");
            return Err(LinkError::Protocol(format!(
                "unexpected {kind} frame on a link's data stream"
            )));
        }
        if let Some(v) = memo.view(&f[1..]) {
            fwd.route(v).await?;
            continue;
        }
        // Not canonical, or a string failed its check: the full parse
        // re-encodes the former and says what is wrong with the latter.
        match slim_wire::forward_view(&f[1..])
            .inspect_err(|e| m::protocol_error(e.reason_label()))?
        {
            Ok(v) => fwd.route(v).await?,
            Err(Frame::Forward(owned)) => {
                // Non-canonical encoding (never ours): re-encode and view it.
                let mut b = BytesMut::new();
                codec::encode(&Frame::Forward(owned), &ctx.cfg.limits, &mut b)?;
                match slim_wire::forward_view(&b[5..])? {
                    Ok(v) => fwd.route(v).await?,
                    Err(_) => return Err(LinkError::Protocol("unreadable forward".into())),
                }
            }
            Err(_) => return Err(LinkError::Protocol("unreadable forward".into())),
        }
    }
    Ok(())
}

pub(crate) async fn data_reader(
    ctx: Arc<NodeCtx>,
    shared: Arc<LinkShared>,
    session: Arc<LinkSession>,
    mut reader: Reader,
) -> Result<(), LinkError> {
    let mut fwd = Forwarder::new(&ctx, &session);
    let mut memo = slim_wire::ForwardMemo::default();
    let frames_in = counter!(m::LINK_FRAMES_TOTAL, "direction" => "in");
    loop {
        let mut n = 0u64;
        let routed = route_buffered(&ctx, &mut fwd, &mut memo, &mut reader, &mut n).await;
        // The read's deliveries go out also when a bad frame ends the link.
        fwd.flush_runs(reader.buffered() == 0).await;
        routed?;
        if n > 0 {
            frames_in.increment(n);
            shared.frames_in.fetch_add(n, Ordering::Relaxed);
            fwd.flush_metrics();
        }
        if !read_more(&mut reader, || fwd.idle()).await? {
            return Ok(());
        }
    }
}
