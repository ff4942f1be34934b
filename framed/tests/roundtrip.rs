//! Property: any frame sequence written through FrameWriter (in any batching)
//! and read through FrameReader (with any read sizes) comes back unchanged.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use slim_framed::{FrameReader, FrameWriter, IoSink};
use slim_wire::Limits;
use tokio::io::{AsyncRead, ReadBuf, duplex};

/// Hands out at most `sizes[i]` bytes on the i-th read (cycling), so reads
/// end at arbitrary points of the stream.
struct Splits<R> {
    inner: R,
    sizes: Vec<usize>,
    i: usize,
}

impl<R: AsyncRead + Unpin> AsyncRead for Splits<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let n = this.sizes[this.i % this.sizes.len()].min(buf.remaining());
        let mut tmp = vec![0u8; n];
        let mut small = ReadBuf::new(&mut tmp);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut small))?;
        this.i += 1;
        buf.put_slice(small.filled());
        Poll::Ready(Ok(()))
    }
}

fn encode(kind: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + body.len());
    b.put_u32(1 + body.len() as u32);
    b.put_u8(kind);
    b.extend_from_slice(body);
    b.freeze()
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    // Mostly small frames (coalesced), sometimes large ones (passed through).
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => proptest::collection::vec(any::<u8>(), 16_000..40_000),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn frames_round_trip(
        frames in proptest::collection::vec((any::<u8>(), body()), 0..40),
        batch_sizes in proptest::collection::vec(1usize..20, 1..8),
        read_sizes in proptest::collection::vec(1usize..5000, 1..16),
        pipe in 1usize..100_000,
        read_chunk in 1usize..70_000,
    ) {
        let encoded: Vec<Bytes> = frames.iter().map(|(k, b)| encode(*k, b)).collect();
        let want: Vec<Bytes> = encoded.iter().map(|f| f.slice(4..)).collect();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let got = rt.block_on(async {
            let (wr, rd) = duplex(pipe);
            let writer = async move {
                let mut w = FrameWriter::new(IoSink(wr));
                let mut rest = &encoded[..];
                let mut i = 0;
                while !rest.is_empty() {
                    let n = batch_sizes[i % batch_sizes.len()].min(rest.len());
                    let mut batch = rest[..n].to_vec();
                    let want: usize = batch.iter().map(Bytes::len).sum();
                    assert_eq!(w.write_batch(&mut batch).await.unwrap(), want);
                    rest = &rest[n..];
                    i += 1;
                }
            };
            let reader = async move {
                let limits = Limits::default();
                let split = Splits { inner: rd, sizes: read_sizes, i: 0 };
                let mut r = FrameReader::new(split, limits).read_chunk(read_chunk);
                let mut got = Vec::new();
                while let Some(f) = r.next().await.unwrap() {
                    got.push(f);
                }
                got
            };
            let ((), got) = tokio::join!(writer, reader);
            got
        });
        prop_assert_eq!(got, want);
    }
}
