//! FrameWriter, pump and drain_now over a recording sink and in-memory pipes.

use std::io;

use bytes::{BufMut, Bytes, BytesMut};
use slim_framed::{
    BATCH, ChunkSink, FrameReader, FrameWriter, IoSink, PumpEnd, WriteHooks, drain_now, pump,
};
use slim_wire::Limits;
use tokio::io::{AsyncReadExt, duplex};
use tokio::sync::mpsc;

/// `len | kind | body` with a body of `n` bytes.
fn frame(n: usize, seed: u8) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u32(1 + n as u32);
    b.put_u8(1);
    b.extend((0..n).map(|i| seed.wrapping_add(i as u8)));
    b.freeze()
}

fn concat(frames: &[Bytes]) -> Vec<u8> {
    frames.iter().flat_map(|f| f.iter().copied()).collect()
}

/// Records each chunk it is asked to write.
#[derive(Default)]
struct Recording {
    chunks: Vec<Bytes>,
    /// Fail every write after this many.
    fail_after: Option<usize>,
}

impl ChunkSink for Recording {
    async fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        if self.fail_after.is_some_and(|n| self.chunks.len() >= n) {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stream stopped"));
        }
        self.chunks.push(chunk);
        Ok(())
    }
}

impl Recording {
    fn bytes(&self) -> Vec<u8> {
        concat(&self.chunks)
    }
}

/// Records every hook call.
#[derive(Default, Debug, PartialEq)]
struct Hooks {
    taken: Vec<usize>,
    written: Vec<(usize, usize)>,
}

impl WriteHooks for Hooks {
    fn taken(&mut self, batch: &[Bytes]) {
        self.taken.push(batch.len());
    }
    fn written(&mut self, frames: usize, bytes: usize) {
        self.written.push((frames, bytes));
    }
}

#[tokio::test]
async fn small_frames_are_coalesced_into_one_write() {
    let frames: Vec<Bytes> = (0..200).map(|i| frame(i % 50, i as u8)).collect();
    let total: usize = frames.iter().map(Bytes::len).sum();
    assert!(total < 64 * 1024);
    let mut w = FrameWriter::new(Recording::default());
    let mut batch = frames.clone();
    assert_eq!(w.write_batch(&mut batch).await.unwrap(), total);
    assert!(batch.is_empty(), "the batch is drained");
    let sink = w.into_inner();
    assert_eq!(sink.chunks.len(), 1);
    assert_eq!(sink.bytes(), concat(&frames));
}

#[tokio::test]
async fn coalesced_chunks_are_closed_at_64_kib() {
    let frames: Vec<Bytes> = (0..100).map(|i| frame(2000, i as u8)).collect();
    let mut w = FrameWriter::new(Recording::default());
    w.write_batch(&mut frames.clone()).await.unwrap();
    let sink = w.into_inner();
    assert!(sink.chunks.len() >= 3, "{}", sink.chunks.len());
    // `coalesce` closes a chunk once it reaches 64 KiB, so one holds at most
    // 64 KiB plus one small frame (under 16 KiB).
    assert!(
        sink.chunks.iter().all(|c| c.len() < 64 * 1024 + 16 * 1024),
        "{:?}",
        sink.chunks.iter().map(Bytes::len).collect::<Vec<_>>()
    );
    assert_eq!(sink.bytes(), concat(&frames));
}

#[tokio::test]
async fn a_large_frame_passes_through_uncopied_as_its_own_chunk() {
    let big = frame(40_000, 7);
    let frames = vec![frame(10, 1), frame(20, 2), big.clone(), frame(30, 3)];
    let mut w = FrameWriter::new(Recording::default());
    let n = w.write_batch(&mut frames.clone()).await.unwrap();
    assert_eq!(n, frames.iter().map(Bytes::len).sum::<usize>());
    let sink = w.into_inner();
    // [two small ones coalesced] [the big one] [the last small one]
    assert_eq!(sink.chunks.len(), 3);
    assert_eq!(sink.chunks[1], big);
    assert_eq!(sink.chunks[1].as_ptr(), big.as_ptr(), "not copied");
    assert_eq!(sink.bytes(), concat(&frames));
}

/// An empty frame is how a sink with bytes of its own (the node's
/// direct-write carry) is woken: a batch of nothing still reaches the sink,
/// and an empty frame among others adds no bytes.
#[tokio::test]
async fn a_batch_of_empty_frames_still_reaches_the_sink_once() {
    let mut w = FrameWriter::new(Recording::default());
    let n = w.write_batch(&mut vec![Bytes::new()]).await.unwrap();
    assert_eq!(n, 0);
    assert_eq!(w.get_mut().chunks, vec![Bytes::new()]);
    let mut batch = vec![Bytes::new(), frame(10, 1)];
    w.write_batch(&mut batch).await.unwrap();
    assert_eq!(w.get_mut().bytes(), concat(&[frame(10, 1)]));
}

#[tokio::test]
async fn write_frame_passes_the_frame_through() {
    let f = frame(5, 5);
    let mut w = FrameWriter::new(Recording::default());
    w.write_frame(f.clone()).await.unwrap();
    assert_eq!(w.get_mut().chunks.len(), 1);
    assert_eq!(w.get_mut().chunks[0].as_ptr(), f.as_ptr());
}

#[tokio::test]
async fn io_sink_carries_the_exact_byte_stream() {
    let frames: Vec<Bytes> = (0..50)
        .map(|i| frame(if i == 25 { 30_000 } else { i }, i as u8))
        .collect();
    let (tx, mut rx) = duplex(1 << 20);
    let mut w = FrameWriter::new(IoSink(tx));
    w.write_batch(&mut frames.clone()).await.unwrap();
    drop(w);
    let mut got = Vec::new();
    rx.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, concat(&frames));
}

#[tokio::test]
async fn pump_writes_everything_and_returns_closed_when_the_senders_are_gone() {
    let (tx, mut rx) = mpsc::channel(1024);
    let frames: Vec<Bytes> = (0..700).map(|i| frame(i % 13, i as u8)).collect();
    for f in &frames {
        tx.send(f.clone()).await.unwrap();
    }
    drop(tx);
    let mut w = FrameWriter::new(Recording::default());
    let mut hooks = Hooks::default();
    let end = pump(&mut rx, &mut w, &mut hooks, std::future::pending())
        .await
        .unwrap();
    assert_eq!(end, PumpEnd::Closed);
    assert_eq!(w.get_mut().bytes(), concat(&frames));
    // 700 queued frames: one full batch, then the rest.
    assert_eq!(hooks.taken, [BATCH, 700 - BATCH]);
    let frames_written: usize = hooks.written.iter().map(|w| w.0).sum();
    let bytes_written: usize = hooks.written.iter().map(|w| w.1).sum();
    assert_eq!(frames_written, 700);
    assert_eq!(bytes_written, concat(&frames).len());
}

#[tokio::test]
async fn pump_returns_stopped_when_stop_fires() {
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    let mut w = FrameWriter::new(Recording::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = std::pin::pin!(async {
        let _ = stop_rx.await;
    });
    let mut hooks = ();
    let (end, ()) = tokio::join!(pump(&mut rx, &mut w, &mut hooks, stop), async {
        tx.send(frame(1, 1)).await.unwrap();
        tokio::task::yield_now().await;
        stop_tx.send(()).unwrap();
    });
    assert_eq!(end.unwrap(), PumpEnd::Stopped);
    assert_eq!(w.get_mut().bytes(), concat(&[frame(1, 1)]));
    // The senders are still there: stopping is not closing.
    assert!(!tx.is_closed());
}

#[tokio::test]
async fn pump_writes_what_is_queued_before_looking_at_stop() {
    let (tx, mut rx) = mpsc::channel(16);
    tx.send(frame(3, 1)).await.unwrap();
    tx.send(frame(4, 2)).await.unwrap();
    let mut w = FrameWriter::new(Recording::default());
    let mut hooks = Hooks::default();
    // `stop` is already resolved, yet the queued frames go first.
    let end = pump(&mut rx, &mut w, &mut hooks, std::future::ready(()))
        .await
        .unwrap();
    assert_eq!(end, PumpEnd::Stopped);
    assert_eq!(hooks.written, [(2, 8 + 9)]);
    assert_eq!(w.get_mut().bytes(), concat(&[frame(3, 1), frame(4, 2)]));
    drop(tx);
}

#[tokio::test]
async fn pump_ends_with_the_sink_error() {
    let (tx, mut rx) = mpsc::channel(16);
    tx.send(frame(3, 1)).await.unwrap();
    let mut w = FrameWriter::new(Recording {
        fail_after: Some(0),
        ..Default::default()
    });
    let mut hooks = Hooks::default();
    let e = pump(&mut rx, &mut w, &mut hooks, std::future::pending())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    assert!(hooks.written.is_empty(), "a failed batch is not reported");
    drop(tx);
}

#[tokio::test]
async fn drain_now_writes_what_is_queued_and_returns() {
    let (tx, mut rx) = mpsc::channel(1024);
    let frames: Vec<Bytes> = (0..600).map(|i| frame(i % 7, i as u8)).collect();
    for f in &frames {
        tx.send(f.clone()).await.unwrap();
    }
    let mut w = FrameWriter::new(Recording::default());
    let mut hooks = Hooks::default();
    // The sender is alive: drain_now does not wait for more.
    drain_now(&mut rx, &mut w, &mut hooks).await.unwrap();
    assert_eq!(hooks.taken, [BATCH, 600 - BATCH]);
    assert_eq!(w.get_mut().bytes(), concat(&frames));
    // Nothing queued: nothing written, no hook call.
    drain_now(&mut rx, &mut w, &mut hooks).await.unwrap();
    assert_eq!(hooks.taken.len(), 2);
    drop(tx);
}

#[tokio::test]
async fn pump_into_a_pipe_reads_back_through_frame_reader() {
    let (tx, mut rx) = mpsc::channel(64);
    let (wr, rd) = duplex(256);
    let frames: Vec<Bytes> = (0..300).map(|i| frame(i * 7 % 3000, i as u8)).collect();
    let want: Vec<Bytes> = frames.iter().map(|f| f.slice(4..)).collect();
    let writer = async move {
        let mut w = FrameWriter::new(IoSink(wr));
        let end = pump(&mut rx, &mut w, &mut (), std::future::pending()).await;
        assert_eq!(end.unwrap(), PumpEnd::Closed);
        // Dropping the writer ends the stream.
    };
    let feeder = async move {
        for f in frames {
            tx.send(f).await.unwrap();
        }
    };
    let reader = async {
        let mut r = FrameReader::new(rd, Limits::default());
        let mut got = Vec::new();
        while let Some(f) = r.next().await.unwrap() {
            got.push(f);
        }
        got
    };
    let ((), (), got) = tokio::join!(writer, feeder, reader);
    assert_eq!(got, want);
}

/// The futures a node spawns are `Send` (compile-time only).
#[allow(dead_code)]
fn write_futures_are_send(
    rx: &mut mpsc::Receiver<Bytes>,
    w: &mut FrameWriter<quinn::SendStream>,
    batch: &mut Vec<Bytes>,
) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&pump(rx, w, &mut (), std::future::pending()));
    is_send(&drain_now(rx, w, &mut ()));
    is_send(&w.write_batch(batch));
}
