//! FrameReader over in-memory pipes: splits, several frames per read, the
//! end-of-stream rule, limits, pre-buffered bytes.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use slim_framed::{FrameReader, ReadError};
use slim_wire::{Frame, Limits, Ping, WireError, codec};
use tokio::io::{AsyncWriteExt, duplex};

/// `len | kind | body` with `body` of `n` bytes derived from `seed`.
fn frame(kind: u8, n: usize, seed: u8) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u32(1 + n as u32);
    b.put_u8(kind);
    b.extend((0..n).map(|i| seed.wrapping_add(i as u8)));
    b.freeze()
}

/// What the reader returns for `frame`: the length prefix stripped.
fn unprefixed(f: &Bytes) -> Bytes {
    f.slice(4..)
}

fn concat(frames: &[Bytes]) -> Vec<u8> {
    frames.iter().flat_map(|f| f.iter().copied()).collect()
}

fn limits() -> Limits {
    Limits::default()
}

/// Polls `fut` once, without any further input.
fn poll_once<F: Future>(fut: F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    std::pin::pin!(fut).poll(&mut cx)
}

#[tokio::test]
async fn frames_delivered_one_byte_at_a_time_come_out_exactly_when_complete() {
    let frames = [frame(7, 0, 1), frame(9, 3, 2), frame(8, 300, 3)];
    let stream = concat(&frames);
    // The byte at which each frame is complete.
    let mut ends = Vec::new();
    let mut at = 0;
    for f in &frames {
        at += f.len();
        ends.push(at);
    }
    let (mut tx, rx) = duplex(1024);
    let mut r = FrameReader::new(rx, limits());
    let mut got = Vec::new();
    for (i, byte) in stream.iter().enumerate() {
        tx.write_all(&[*byte]).await.unwrap();
        assert_eq!(r.fill().await.unwrap(), 1);
        let f = r.try_next().unwrap();
        if let Some(k) = ends.iter().position(|&e| e == i + 1) {
            assert_eq!(f, Some(unprefixed(&frames[k])), "frame {k} at byte {i}");
            got.push(k);
            assert_eq!(r.buffered(), 0);
        } else {
            assert_eq!(f, None, "nothing complete at byte {i}");
        }
    }
    assert_eq!(got, [0, 1, 2]);
    drop(tx);
    assert!(r.next().await.unwrap().is_none());
}

#[tokio::test]
async fn a_stream_split_in_two_at_every_byte_boundary_reads_the_same() {
    let frames = [frame(1, 5, 1), frame(2, 0, 2), frame(3, 70, 3)];
    let stream = concat(&frames);
    for cut in 0..=stream.len() {
        let (mut tx, rx) = duplex(4096);
        let mut r = FrameReader::new(rx, limits());
        let mut got = Vec::new();
        for part in [&stream[..cut], &stream[cut..]] {
            if part.is_empty() {
                continue;
            }
            tx.write_all(part).await.unwrap();
            // The whole part arrives in one read.
            assert_eq!(r.fill().await.unwrap(), part.len(), "cut {cut}");
            while let Some(f) = r.try_next().unwrap() {
                got.push(f);
            }
        }
        drop(tx);
        assert!(r.next().await.unwrap().is_none(), "cut {cut}");
        let want: Vec<Bytes> = frames.iter().map(unprefixed).collect();
        assert_eq!(got, want, "cut {cut}");
    }
}

#[tokio::test]
async fn several_frames_in_one_read_all_come_out_of_it() {
    let frames = [frame(1, 10, 1), frame(2, 20, 2), frame(3, 30, 3)];
    let (mut tx, rx) = duplex(4096);
    tx.write_all(&concat(&frames)).await.unwrap();
    let mut r = FrameReader::new(rx, limits());
    assert_eq!(r.fill().await.unwrap(), 10 + 20 + 30 + 3 * 5);
    for f in &frames {
        assert_eq!(r.try_next().unwrap(), Some(unprefixed(f)));
    }
    assert_eq!(r.try_next().unwrap(), None);
    assert_eq!(r.buffered(), 0);
}

#[tokio::test]
async fn clean_end_of_stream_is_none_and_stays_none() {
    let frames = [frame(4, 1, 1), frame(5, 2, 2)];
    let (mut tx, rx) = duplex(4096);
    tx.write_all(&concat(&frames)).await.unwrap();
    drop(tx);
    let mut r = FrameReader::new(rx, limits());
    assert_eq!(r.next().await.unwrap(), Some(unprefixed(&frames[0])));
    assert_eq!(r.next().await.unwrap(), Some(unprefixed(&frames[1])));
    assert_eq!(r.next().await.unwrap(), None);
    assert_eq!(r.next().await.unwrap(), None);
    assert_eq!(r.fill().await.unwrap(), 0);
}

fn truncated(e: ReadError) -> usize {
    match e {
        ReadError::Wire(WireError::Truncated { buffered }) => buffered,
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[tokio::test]
async fn end_of_stream_inside_the_length_prefix_is_truncated() {
    for n in 1..4 {
        let f = frame(1, 10, 1);
        let (mut tx, rx) = duplex(4096);
        tx.write_all(&f[..n]).await.unwrap();
        drop(tx);
        let mut r = FrameReader::new(rx, limits());
        assert_eq!(truncated(r.next().await.unwrap_err()), n);
    }
}

#[tokio::test]
async fn end_of_stream_inside_the_body_is_truncated_after_the_whole_frames() {
    let whole = frame(1, 10, 1);
    let partial = frame(2, 10, 2);
    for n in 4..partial.len() {
        let (mut tx, rx) = duplex(4096);
        tx.write_all(&whole).await.unwrap();
        tx.write_all(&partial[..n]).await.unwrap();
        drop(tx);
        let mut r = FrameReader::new(rx, limits());
        assert_eq!(r.next().await.unwrap(), Some(unprefixed(&whole)));
        assert_eq!(truncated(r.next().await.unwrap_err()), n, "cut at {n}");
    }
}

#[tokio::test]
async fn fill_at_end_of_stream_leaves_whole_frames_then_reports_the_partial_one() {
    let whole = frame(1, 3, 1);
    let (mut tx, rx) = duplex(4096);
    tx.write_all(&whole).await.unwrap();
    tx.write_all(&[0, 0]).await.unwrap();
    drop(tx);
    let mut r = FrameReader::new(rx, limits());
    assert_eq!(r.fill().await.unwrap(), whole.len() + 2);
    // End of stream while a whole frame is still buffered: not an error yet.
    assert_eq!(r.fill().await.unwrap(), 0);
    assert_eq!(r.try_next().unwrap(), Some(unprefixed(&whole)));
    assert_eq!(truncated(r.fill().await.unwrap_err()), 2);
}

#[tokio::test]
async fn an_oversize_declared_length_fails_before_the_body_arrives() {
    let lim = Limits { max_frame: 100 };
    let (mut tx, rx) = duplex(4096);
    let mut r = FrameReader::new(rx, lim);
    // Within the limit: waits for the body.
    tx.write_all(&100u32.to_be_bytes()).await.unwrap();
    assert!(poll_once(r.next()).is_pending());
    let (mut tx, rx) = duplex(4096);
    let mut r = FrameReader::new(rx, lim);
    // Over it: the 4 length bytes are enough; the writer stays open and no
    // body is ever sent.
    tx.write_all(&101u32.to_be_bytes()).await.unwrap();
    match poll_once(r.next()) {
        Poll::Ready(Err(ReadError::Wire(WireError::FrameTooLarge { declared, max }))) => {
            assert_eq!((declared, max), (101, 100));
        }
        other => panic!("expected FrameTooLarge at once, got {other:?}"),
    }
    // try_next says the same from the buffer alone.
    assert!(matches!(
        r.try_next(),
        Err(WireError::FrameTooLarge { declared: 101, .. })
    ));
    drop(tx);
}

#[tokio::test]
async fn a_zero_declared_length_is_an_error() {
    let (mut tx, rx) = duplex(4096);
    tx.write_all(&[0, 0, 0, 0]).await.unwrap();
    let mut r = FrameReader::new(rx, limits());
    assert!(matches!(
        r.next().await,
        Err(ReadError::Wire(WireError::EmptyFrame))
    ));
}

#[tokio::test]
async fn with_buffered_frames_come_out_first() {
    let frames = [frame(1, 4, 1), frame(2, 40, 2), frame(3, 4, 3)];
    // The first frame and half of the second were read with the hello.
    let split = frames[0].len() + 20;
    let stream = concat(&frames);
    let (mut tx, rx) = duplex(4096);
    tx.write_all(&stream[split..]).await.unwrap();
    drop(tx);
    let mut r = FrameReader::with_buffered(rx, BytesMut::from(&stream[..split]), limits());
    assert_eq!(r.buffered(), split);
    // The first frame needs no read at all.
    assert_eq!(r.try_next().unwrap(), Some(unprefixed(&frames[0])));
    assert_eq!(r.next().await.unwrap(), Some(unprefixed(&frames[1])));
    assert_eq!(r.next().await.unwrap(), Some(unprefixed(&frames[2])));
    assert_eq!(r.next().await.unwrap(), None);
}

#[tokio::test]
async fn into_parts_returns_what_is_buffered() {
    let f = frame(1, 4, 1);
    let (mut tx, rx) = duplex(4096);
    tx.write_all(&f).await.unwrap();
    tx.write_all(&f[..3]).await.unwrap();
    let mut r = FrameReader::new(rx, limits());
    assert_eq!(r.next().await.unwrap(), Some(unprefixed(&f)));
    let (_rx, rest) = r.into_parts();
    assert_eq!(&rest[..], &f[..3]);
}

#[tokio::test]
async fn read_frame_decodes() {
    let lim = limits();
    let ping = Frame::Ping(Ping { nonce: 42 });
    let (mut tx, rx) = duplex(4096);
    tx.write_all(&codec::encode_to_vec(&ping, &lim).unwrap())
        .await
        .unwrap();
    drop(tx);
    let mut r = FrameReader::new(rx, lim);
    assert_eq!(r.limits(), &lim);
    assert_eq!(r.read_frame().await.unwrap(), Some(ping));
    assert_eq!(r.read_frame().await.unwrap(), None);
}

#[tokio::test]
async fn read_frame_reports_an_unknown_kind() {
    let (mut tx, rx) = duplex(4096);
    tx.write_all(&frame(250, 0, 0)).await.unwrap();
    let mut r = FrameReader::new(rx, limits());
    assert!(matches!(
        r.read_frame().await,
        Err(ReadError::Wire(WireError::UnknownFrameKind(250)))
    ));
}

#[tokio::test]
async fn a_frame_larger_than_the_read_chunk_is_read_whole() {
    let big = frame(1, 5000, 9);
    let (mut tx, rx) = duplex(64);
    let mut r = FrameReader::new(rx, limits()).read_chunk(16);
    let (got, ()) = tokio::join!(r.next(), async {
        tx.write_all(&big).await.unwrap();
    });
    assert_eq!(got.unwrap(), Some(unprefixed(&big)));
}

#[tokio::test]
async fn a_read_failure_is_an_io_error() {
    struct Failing;
    impl tokio::io::AsyncRead for Failing {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection lost",
            )))
        }
    }
    let mut r = FrameReader::new(Failing, limits());
    let e = r.next().await.unwrap_err();
    assert!(matches!(&e, ReadError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionReset));
    assert_eq!(e.to_string(), "read: connection lost");
    let t = ReadError::from(WireError::Truncated { buffered: 3 });
    assert_eq!(
        t.to_string(),
        WireError::Truncated { buffered: 3 }.to_string()
    );
}

/// The futures a node spawns are `Send` (compile-time only).
#[allow(dead_code)]
fn read_futures_are_send(r: &mut FrameReader<quinn::RecvStream>) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&r.next());
    is_send(&r.read_frame());
    is_send(&r.fill());
}

#[tokio::test]
async fn a_reader_waiting_with_nothing_buffered_holds_no_buffer() {
    let (mut tx, rx) = duplex(1 << 16);
    let mut r = FrameReader::new(rx, limits()).read_chunk(4096);
    let first = frame(7, 100, 1);
    // Two frames and the start of a third: the partial one must stay
    // buffered (and its buffer held) across the wait for the rest.
    let second = frame(9, 50, 2);
    let third = frame(8, 200, 3);
    tx.write_all(&first).await.unwrap();
    tx.write_all(&second).await.unwrap();
    tx.write_all(&third[..10]).await.unwrap();
    assert_eq!(r.next().await.unwrap(), Some(unprefixed(&first)));
    assert_eq!(r.next().await.unwrap(), Some(unprefixed(&second)));
    assert!(poll_once(r.fill()).is_pending());
    assert_eq!(r.buffered(), 10);
    assert!(
        r.buffer_capacity() >= 10,
        "a partial frame keeps its buffer"
    );
    tx.write_all(&third[10..]).await.unwrap();
    assert_eq!(r.next().await.unwrap(), Some(unprefixed(&third)));
    // Everything consumed: waiting for more gives the buffer back.
    assert!(r.buffer_capacity() > 0);
    assert!(poll_once(r.fill()).is_pending());
    assert_eq!(r.buffer_capacity(), 0, "an idle reader holds no buffer");
    // And reading resumes normally once bytes arrive.
    let fourth = frame(7, 3000, 4);
    tx.write_all(&fourth).await.unwrap();
    assert_eq!(r.next().await.unwrap(), Some(unprefixed(&fourth)));
    drop(tx);
    assert_eq!(r.next().await.unwrap(), None);
}

#[tokio::test]
async fn fill_idle_calls_back_only_when_the_read_has_to_wait() {
    let (mut tx, rx) = duplex(1024);
    let mut r = FrameReader::new(rx, limits());
    let f = frame(7, 3, 1);
    // Bytes already there: the read does not wait, no callback.
    tx.write_all(&f).await.unwrap();
    let mut called = 0;
    assert_eq!(r.fill_idle(|| called += 1).await.unwrap(), f.len());
    assert_eq!(called, 0);
    assert_eq!(r.try_next().unwrap(), Some(unprefixed(&f)));
    // Nothing there: one callback, however often the read is polled.
    let mut called = 0;
    {
        let mut fill = std::pin::pin!(r.fill_idle(|| called += 1));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fill.as_mut().poll(&mut cx).is_pending());
        assert!(fill.as_mut().poll(&mut cx).is_pending());
        tx.write_all(&f).await.unwrap();
        assert_eq!(fill.as_mut().await.unwrap(), f.len());
    }
    assert_eq!(called, 1);
    assert_eq!(r.try_next().unwrap(), Some(unprefixed(&f)));
}
