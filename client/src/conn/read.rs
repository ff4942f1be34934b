//! The read side of a client connection: frames from the node decoded into
//! [`Event`]s for the application (deliveries as slices of the read buffer,
//! names compared with the previous delivery's), acks and pongs answered in
//! place, the application's backpressure on the reader (and its stalls,
//! logged), and the read-progress reports the reader asks the writer to send
//! while it is behind.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, Bytes};
use slim_framed::queue::Queue;
use slim_framed::{FrameReader, ReadError};
use slim_wire::{Frame, FrameKind, Name, RawDeliverView, codec, deliver_view};
use tokio::io::AsyncRead;
use tracing::{debug, warn};

use crate::confirm::ReadReport;
use crate::error::ClientError;
use crate::event::{Delivery, Event};
use crate::shared::{RECENT_ERRORS, Shared};

/// A failed read as the SDK reports it: the stream's own error as
/// `Protocol`, bad bytes (including a stream that ends inside a frame) as
/// `Wire`. Either loses the connection.
pub(super) fn read_err(e: ReadError) -> ClientError {
    match e {
        ReadError::Wire(w) => ClientError::Wire(w),
        ReadError::Io(e) => ClientError::Protocol(e.to_string()),
    }
}

/// Decoded-name cache: consecutive deliveries usually share channel, sender
/// and identity, so the reader reuses the previous `Name`/`Arc<str>` instead of
/// allocating new ones per message.
#[derive(Default)]
struct Interned {
    name: Option<Name>,
    from: Option<Name>,
    identity: Option<Arc<str>>,
}

/// The name `b` spells: the cached one if the bytes are the same (it was
/// checked when cached), else `b` checked and parsed, and cached.
fn intern_raw(slot: &mut Option<Name>, b: &[u8]) -> Option<Name> {
    if let Some(n) = slot.as_ref().filter(|n| n.as_str().as_bytes() == b) {
        return Some(n.clone());
    }
    let n = Name::parse(slim_wire::checked_name(b)?).ok()?;
    *slot = Some(n.clone());
    Some(n)
}

impl Interned {
    /// The delivery `v` describes (payload still empty), checking only the
    /// strings that differ from the last delivery's; `None` if one is not
    /// valid (then [`deliver_view`] says why).
    fn delivery_raw(&mut self, v: &RawDeliverView<'_>) -> Option<Delivery> {
        let from_identity = match v.from_identity {
            None => None,
            Some(id) => {
                if self.identity.as_deref().map(str::as_bytes) != Some(id) {
                    self.identity = Some(Arc::from(slim_wire::checked_str(id)?));
                }
                self.identity.clone()
            }
        };
        Some(Delivery {
            name: intern_raw(&mut self.name, v.name)?,
            mode: v.mode,
            from: intern_raw(&mut self.from, v.from)?,
            from_identity,
            msg_id: v.msg_id,
            payload: Bytes::new(),
        })
    }
}

/// Where `part`, a subslice of `frame`, lies in it.
fn range_in(frame: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
    assert!(
        start <= frame.len() && part.len() <= frame.len() - start,
        "the payload lies inside its frame"
    );
    start..start + part.len()
}

/// `frame` cut down to `range`. The payload is the frame itself, moved, not
/// sliced: a slice takes a reference on the read buffer and dropping the
/// frame gives one back, two atomic operations per message on a count that
/// the application's thread also touches.
fn cut_to(mut frame: Bytes, range: std::ops::Range<usize>) -> Bytes {
    frame.truncate(range.end);
    frame.advance(range.start);
    frame
}

fn owned_delivery(d: slim_wire::Deliver) -> Delivery {
    Delivery {
        name: d.name,
        mode: d.mode,
        from: d.from,
        from_identity: d.from_identity.map(Arc::from),
        msg_id: d.msg_id,
        payload: Bytes::from(d.payload),
    }
}

/// A delivery the raw view did not take: another encoding (decoded in
/// full), or a bad field (the checked view says what is wrong).
fn checked_delivery(frame: Bytes, interned: &mut Interned) -> Result<Delivery, ClientError> {
    match deliver_view(&frame[1..])? {
        // Not reached while the raw view takes every frame this does; kept
        // so that the two can never disagree.
        Ok(v) => {
            let payload = range_in(&frame, v.payload);
            let mut d = interned.delivery_raw(&v.raw()).ok_or_else(|| {
                ClientError::Protocol("a checked delivery failed its checks".into())
            })?;
            d.payload = cut_to(frame, payload);
            Ok(d)
        }
        Err(Frame::Deliver(d)) => Ok(owned_delivery(d)),
        Err(other) => Err(ClientError::Protocol(format!(
            "unexpected {} frame",
            other.kind().as_str()
        ))),
    }
}

/// Deliveries decoded from what one read brought in go to the application
/// under one lock of its queue, at most this many at a time.
const PUSH_BATCH: usize = 256;

/// Reads frames until the node ends the stream (`Ok`), the application
/// drops its event receiver (`Ok`) or the connection fails (`Err`; a stream
/// that ends inside a frame is `Wire(Truncated)`). Every event decoded before
/// the end or the failure reaches the application first.
pub(super) async fn read_loop<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    reader: FrameReader<R>,
    events: Arc<Queue<Event>>,
    report: Arc<ReadReport>,
) -> Result<(), ClientError> {
    let mut held = Held {
        events,
        batch: Vec::with_capacity(PUSH_BATCH),
        messages: 0,
        stalls: AppStalls::default(),
        reported: 0,
        last_report: None,
        behind: false,
        report,
    };
    let r = read_frames(&shared, reader, &mut held).await;
    held.flush(&shared).await;
    r
}

/// Deliveries decoded and not yet handed to the application.
struct Held {
    events: Arc<Queue<Event>>,
    batch: Vec<Event>,
    /// How many of `batch` are messages (for the `received` counter).
    messages: u64,
    stalls: AppStalls,
    /// The byte count last reported to the node, and when.
    reported: u64,
    last_report: Option<tokio::time::Instant>,
    /// Since the last report, a read found bytes already waiting: the
    /// reader is behind the node (see [`Held::report_progress`]).
    behind: bool,
    /// Where reports go to the connection's writer.
    report: Arc<ReadReport>,
}

/// How often at most the reader reports its progress to the node while it
/// is behind: well inside the node's write deadline (2 s by default).
const REPORT_EVERY: Duration = Duration::from_millis(200);

/// The first protocol version with [`slim_wire::ReadProgress`].
const READ_PROGRESS_SINCE: u16 = 2;

/// How long the application may keep its event queue full before the SDK
/// says so: under the node's default write deadline (2 s), so the line comes
/// before the node cuts this client as a slow consumer, and explains it.
const APP_STALL_WARN: Duration = Duration::from_secs(1);

/// At most one stall line per connection this often; the stalls in between
/// are counted in the next line (and in `slim_client_inbound_stalls_total`).
const APP_STALL_LOG_EVERY: Duration = Duration::from_secs(30);

/// The application's stalls: times a push into its full event queue waited
/// longer than [`APP_STALL_WARN`]. Meanwhile the reader reads nothing from
/// the node, so an application that never takes its events (e.g. one that
/// only publishes and never looks at the `no_route` errors the node sends
/// back) stops its own client; this makes that visible.
#[derive(Default)]
struct AppStalls {
    logged: Option<tokio::time::Instant>,
    unlogged: u64,
    /// A push had to wait for the application since the last report to
    /// the node (see [`Held::report_progress`]).
    waited: bool,
}

impl AppStalls {
    fn stalled(&mut self, shared: &Shared, capacity: usize) {
        shared.metrics.inbound_stalls.increment(1);
        self.unlogged += 1;
        let now = tokio::time::Instant::now();
        if self
            .logged
            .is_some_and(|t| now.duration_since(t) < APP_STALL_LOG_EVERY)
        {
            return;
        }
        warn!(
            name = %shared.cfg.name,
            capacity,
            stalls = std::mem::take(&mut self.unlogged),
            "the application has left its event queue full for over {APP_STALL_WARN:?}: reading from the node is paused until it takes events (Client::recv); a node cuts a client that reads nothing for its write deadline (2 s by default) as a slow consumer"
        );
        self.logged = Some(now);
    }
}

/// Runs `wait`, a push into the application's event queue; one still
/// waiting after [`APP_STALL_WARN`] is a stall (see [`AppStalls`]).
async fn taken<T>(
    shared: &Shared,
    stalls: &mut AppStalls,
    capacity: usize,
    wait: impl std::future::Future<Output = T>,
) -> T {
    use std::task::{Context, Poll, Waker};
    let mut wait = std::pin::pin!(wait);
    // Usually there is room: no timer for that. (A queue waited on later
    // replaces this waker with the real one.)
    if let Poll::Ready(v) = wait.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        return v;
    }
    stalls.waited = true;
    match tokio::time::timeout(APP_STALL_WARN, wait.as_mut()).await {
        Ok(v) => v,
        Err(_) => {
            stalls.stalled(shared, capacity);
            let v = wait.await;
            debug!(name = %shared.cfg.name, "the application took events again; reading from the node resumed");
            v
        }
    }
}

impl Held {
    /// Hands the held events to the application, waiting for room while its
    /// queue is full (backpressure: the reader stops reading, so QUIC slows
    /// the node; nothing is dropped). `false` once the application is gone.
    async fn flush(&mut self, shared: &Shared) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let messages = std::mem::take(&mut self.messages);
        let capacity = self.events.capacity();
        if !taken(
            shared,
            &mut self.stalls,
            capacity,
            self.events.push_all(&mut self.batch),
        )
        .await
        {
            // The application is gone: nothing will take what is left.
            self.batch.clear();
            return false;
        }
        shared.metrics.received.increment(messages);
        true
    }

    /// While the reader is behind (since the last report, a push into the
    /// application's queue had to wait, or a read found bytes already
    /// waiting: the application or this task cannot keep up), tells the
    /// node how far it has read, at most every [`REPORT_EVERY`]. The node
    /// sees reading otherwise only as QUIC credit, which comes per eighth
    /// of the stream window (512 KiB by default): a slow but steady reader
    /// would look stuck and be cut at the node's write deadline. A reader
    /// that keeps up waits for every read, and reports nothing.
    fn report_progress(&mut self, shared: &Shared, read: u64) {
        if !(self.stalls.waited || self.behind)
            || read <= self.reported
            || shared.proto.load(Ordering::Relaxed) < READ_PROGRESS_SINCE
        {
            return;
        }
        let now = tokio::time::Instant::now();
        if self.last_report.is_some_and(|t| now - t < REPORT_EVERY) {
            return;
        }
        self.stalls.waited = false;
        self.behind = false;
        self.reported = read;
        self.last_report = Some(now);
        self.report.want(read);
    }

    /// Hands one event to the application behind the held ones.
    async fn push(&mut self, shared: &Shared, ev: Event) -> bool {
        self.flush(shared).await
            && taken(
                shared,
                &mut self.stalls,
                self.events.capacity(),
                self.events.push_wait(ev),
            )
            .await
            .is_ok()
    }
}

async fn read_frames<R: AsyncRead + Unpin>(
    shared: &Arc<Shared>,
    mut reader: FrameReader<R>,
    held: &mut Held,
) -> Result<(), ClientError> {
    let mut interned = Interned::default();
    loop {
        // Frames already buffered are decoded without waiting; before
        // waiting for more bytes, what is held goes to the application.
        let frame = match reader.try_next()? {
            Some(f) => f,
            None => {
                if !held.flush(shared).await {
                    return Ok(());
                }
                held.report_progress(shared, reader.bytes_read());
                let mut waited = false;
                if reader.fill_idle(|| waited = true).await.map_err(read_err)? > 0 {
                    // Bytes were waiting already: the reader is behind
                    // what the node has sent.
                    held.behind |= !waited;
                    continue;
                }
                // The end of the stream, after any whole frames.
                match reader.try_next()? {
                    Some(f) => f,
                    None => return Ok(()),
                }
            }
        };
        // `frame` is `kind | body`; payloads are handed out as slices of it.
        if frame[0] == FrameKind::Deliver as u8 {
            // Usually: the canonical layout, with the names and identity of
            // the previous delivery (compared, not checked again).
            let fast = slim_wire::raw_deliver_view(&frame[1..])
                .and_then(|v| Some((range_in(&frame, v.payload), interned.delivery_raw(&v)?)));
            let d = match fast {
                Some((payload, mut d)) => {
                    d.payload = cut_to(frame, payload);
                    d
                }
                None => checked_delivery(frame, &mut interned)?,
            };
            held.batch.push(Event::Message(d));
            held.messages += 1;
            if held.batch.len() >= PUSH_BATCH && !held.flush(shared).await {
                return Ok(());
            }
            continue;
        }
        // Anything else is handled in its place: after the deliveries that
        // arrived before it have reached the application.
        if !held.flush(shared).await {
            return Ok(());
        }
        match codec::decode_body(&frame)? {
            Frame::Deliver(d) => {
                if !held.push(shared, Event::Message(owned_delivery(d))).await {
                    return Ok(());
                }
                shared.metrics.received.increment(1);
            }
            // The writer's confirming pings (see `confirm`).
            Frame::Pong(slim_wire::Pong { nonce }) if shared.confirm.handle_pong(nonce) => {}
            // Both answer a request filed in `pending` by its id.
            Frame::SubAck(slim_wire::SubAck { id, .. })
            | Frame::Pong(slim_wire::Pong { nonce: id }) => {
                if let Some(tx) = shared.pending.lock().remove(&id) {
                    let _ = tx.send(Ok(()));
                }
            }
            Frame::SubError(e) => {
                if let Some(tx) = shared.pending.lock().remove(&e.id) {
                    let _ = tx.send(Err((e.code, e.reason)));
                }
            }
            Frame::Error(e) => {
                shared.metrics.node_errors.increment(1);
                if e.msg_id.is_some() {
                    let mut q = shared.recent_errors.lock();
                    if q.len() >= RECENT_ERRORS {
                        q.pop_front();
                    }
                    q.push_back(e.clone());
                }
                if !held.push(shared, Event::Error(e)).await {
                    return Ok(());
                }
            }
            Frame::Ping(_) => {}
            other => {
                return Err(ClientError::Protocol(format!(
                    "unexpected {} frame from the node",
                    other.kind().as_str()
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::ClientConfig;
    use parking_lot::Mutex;
    use std::collections::{HashMap, HashSet, VecDeque};
    use std::sync::atomic::AtomicU64;

    use slim_wire::{Deliver, Limits, Mode, WireError};
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::config::Credentials;
    use crate::event::ConnState;
    use crate::shared::SdkMetrics;

    fn shared() -> Arc<Shared> {
        let cfg = ClientConfig::with_credentials(
            "127.0.0.1:1".parse().unwrap(),
            Name::parse("org/ns/svc/1").unwrap(),
            Credentials::SharedSecret {
                secret: "s".into(),
                bundles: slim_auth::TrustBundles::new(),
            },
        );
        Arc::new(Shared {
            metrics: SdkMetrics::new(false),
            cfg,
            subs: Mutex::new(HashSet::new()),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            state: tokio::sync::watch::channel(ConnState::Closed).0,
            identity_seen: Mutex::new(None),
            node_seen: Mutex::new(None),
            recent_errors: Mutex::new(VecDeque::new()),
            confirm: Default::default(),
            connected: Default::default(),
            proto: slim_wire::PROTOCOL_VERSION.into(),
        })
    }

    fn deliver(msg_id: u64) -> Vec<u8> {
        let f = Frame::Deliver(Deliver {
            name: Name::parse("org/ns/svc").unwrap(),
            mode: Mode::Anycast,
            from: Name::parse("org/ns/pub/1").unwrap(),
            from_identity: Some("spiffe://td/pub".into()),
            msg_id,
            payload: b"hello".to_vec(),
        });
        codec::encode_to_vec(&f, &Limits::default()).unwrap()
    }

    /// The read loop on `rx` in a task of its own, handing events to a
    /// queue of `capacity`.
    fn spawn_reader(
        rx: tokio::io::DuplexStream,
        capacity: usize,
    ) -> (
        tokio::task::JoinHandle<Result<(), ClientError>>,
        slim_framed::queue::QueueRx<Event>,
    ) {
        let (ev_tx, ev_rx) = slim_framed::queue::queue(capacity);
        let reader = FrameReader::new(rx, Limits::default());
        let task = tokio::spawn(read_loop(
            shared(),
            reader,
            Arc::new(ev_tx),
            Default::default(),
        ));
        (task, ev_rx)
    }

    /// Feeds `bytes` to the read loop, then ends the stream; returns what the
    /// loop returned and the msg_ids it delivered.
    async fn read_all(bytes: &[u8]) -> (Result<(), ClientError>, Vec<u64>) {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        tx.write_all(bytes).await.unwrap();
        drop(tx);
        let (ev_tx, ev_rx) = slim_framed::queue::queue(16);
        let reader = FrameReader::new(rx, Limits::default());
        let r = read_loop(shared(), reader, Arc::new(ev_tx), Default::default()).await;
        let mut ids = Vec::new();
        while let Some(ev) = ev_rx.try_recv() {
            match ev {
                Event::Message(d) => {
                    assert_eq!(&d.payload[..], b"hello");
                    ids.push(d.msg_id);
                }
                Event::Error(e) => panic!("unexpected {e:?}"),
            }
        }
        (r, ids)
    }

    #[tokio::test]
    async fn the_node_ending_the_stream_between_frames_is_a_clean_close() {
        let mut bytes = deliver(1);
        bytes.extend(deliver(2));
        let (r, ids) = read_all(&bytes).await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(ids, [1, 2]);
    }

    /// Names are compared with the previous delivery's instead of checked
    /// again; one that differs is checked, and a bad one is refused as
    /// before (the connection's error, nothing delivered for it).
    #[tokio::test]
    async fn a_delivery_with_a_new_bad_name_after_good_ones_is_refused() {
        let mut bytes = deliver(1);
        bytes.extend(deliver(2));
        let mut bad = bytes::BytesMut::new();
        codec::encode_deliver_raw(
            "org/ns",
            Mode::Anycast,
            "org/ns/pub/1",
            Some("spiffe://td/pub"),
            3,
            b"hello",
            &Limits::default(),
            &mut bad,
        )
        .unwrap();
        bytes.extend_from_slice(&bad);
        bytes.extend(deliver(4));
        let (r, ids) = read_all(&bytes).await;
        assert_eq!(ids, [1, 2]);
        assert!(matches!(r, Err(ClientError::Wire(_))), "{r:?}");
    }

    /// The SDK used to take this for a clean close; it is a lost connection
    /// (reported with its reason, then the usual reconnect).
    #[tokio::test]
    async fn the_stream_ending_inside_a_frame_is_an_error_after_the_whole_frames() {
        let mut bytes = deliver(1);
        let next = deliver(2);
        bytes.extend_from_slice(&next[..7]);
        let (r, ids) = read_all(&bytes).await;
        assert_eq!(ids, [1]);
        match r {
            Err(ClientError::Wire(WireError::Truncated { buffered: 7 })) => {}
            other => panic!("expected Truncated, got {other:?}"),
        }
    }

    /// A log sink for [`an_application_keeping_its_queue_full_is_told_so`].
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Log {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Log {
        fn stall_lines(&self) -> Vec<String> {
            String::from_utf8_lossy(&self.0.lock())
                .lines()
                .filter(|l| l.contains("has left its event queue full"))
                .map(str::to_owned)
                .collect()
        }
    }

    /// An application that leaves its event queue full for over
    /// [`APP_STALL_WARN`] is told why its client stopped reading, naming the
    /// client and the capacity; further stalls within
    /// [`APP_STALL_LOG_EVERY`] are counted into the next line, not logged
    /// each; nothing is lost meanwhile.
    #[tokio::test(start_paused = true)]
    async fn an_application_keeping_its_queue_full_is_told_so() {
        let log = Log::default();
        let _guard = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer({
                    let log = log.clone();
                    move || log.clone()
                })
                .finish(),
        );
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let (reader, ev_rx) = spawn_reader(rx, 4);
        let mut ids = Vec::new();
        let mut take = async |n: usize| {
            for _ in 0..n {
                match ev_rx.recv().await {
                    Some(Event::Message(d)) => ids.push(d.msg_id),
                    other => panic!("unexpected {other:?}"),
                }
            }
        };

        // Under the threshold: no line.
        tx.write_all(&(0..10).flat_map(deliver).collect::<Vec<_>>())
            .await
            .unwrap();
        tokio::time::sleep(APP_STALL_WARN / 2).await;
        take(10).await;
        assert!(log.stall_lines().is_empty(), "{:?}", log.stall_lines());

        // Over it: one line.
        tx.write_all(&(10..20).flat_map(deliver).collect::<Vec<_>>())
            .await
            .unwrap();
        tokio::time::sleep(APP_STALL_WARN * 3).await;
        let lines = log.stall_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("org/ns/svc/1") && lines[0].contains("capacity=4"),
            "{lines:?}"
        );
        take(10).await;

        // Again soon after: counted, not logged.
        tx.write_all(&(20..30).flat_map(deliver).collect::<Vec<_>>())
            .await
            .unwrap();
        tokio::time::sleep(APP_STALL_WARN * 3).await;
        take(10).await;
        assert_eq!(log.stall_lines().len(), 1, "{:?}", log.stall_lines());

        // Once the log interval has passed, the next stall is logged with
        // the count of those since the last line.
        tokio::time::sleep(APP_STALL_LOG_EVERY).await;
        tx.write_all(&(30..40).flat_map(deliver).collect::<Vec<_>>())
            .await
            .unwrap();
        tokio::time::sleep(APP_STALL_WARN * 3).await;
        take(10).await;
        let lines = log.stall_lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[1].contains("stalls=2"), "{lines:?}");

        drop(tx);
        reader.await.unwrap().unwrap();
        assert_eq!(ids, (0..40).collect::<Vec<_>>(), "lost or reordered");
    }

    /// With the application's queue full the reader waits for room (it
    /// drops nothing and stops reading), and goes on as the application
    /// takes: every delivery arrives once, in order, then the end.
    #[tokio::test]
    async fn a_full_queue_makes_the_reader_wait_without_dropping() {
        const N: u64 = 1000;
        let bytes: Vec<u8> = (0..N).flat_map(deliver).collect();
        let (mut tx, rx) = tokio::io::duplex(bytes.len());
        tx.write_all(&bytes).await.unwrap();
        drop(tx);
        let (reader, ev_rx) = spawn_reader(rx, 4);
        // Every byte is readable: only the full queue can hold the reader.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!reader.is_finished(), "the reader must wait for room");
        assert_eq!(ev_rx.len(), 4);
        let mut ids = Vec::new();
        while let Some(ev) = ev_rx.recv().await {
            match ev {
                Event::Message(d) => ids.push(d.msg_id),
                Event::Error(e) => panic!("unexpected {e:?}"),
            }
        }
        assert!(reader.await.unwrap().is_ok());
        assert_eq!(ids, (0..N).collect::<Vec<_>>());
    }
}
