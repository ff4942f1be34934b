//! Codec micro-benchmarks: the publish/deliver hot path.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use slim_wire::codec::{encode_deliver, encode_to_vec};
use slim_wire::{Frame, Limits, Mode, Name, Publish, decode, encode};

const BATCH: usize = 64;

fn publish(payload_len: usize) -> Frame {
    Frame::Publish(Publish {
        name: Name::parse("acme/eu-west/telemetry").unwrap(),
        mode: Mode::Anycast,
        flags: 0,
        msg_id: 1_234_567,
        payload: vec![0x5A; payload_len],
    })
}

fn bench_encode(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    for (label, len) in [("publish_16B", 16), ("publish_1KiB", 1024)] {
        let frame = publish(len);
        let mut out = BytesMut::with_capacity(4096);
        g.bench_function(label, |b| {
            b.iter(|| {
                out.clear();
                encode(black_box(&frame), &limits, &mut out).unwrap();
                black_box(out.len())
            })
        });
    }

    let name = Name::parse("acme/eu-west/telemetry").unwrap();
    let from = Name::parse("acme/eu-west/sensor/42").unwrap();
    let payload = [0x5Au8; 16];
    let mut out = BytesMut::with_capacity(4096);
    g.bench_function("encode_deliver_16B", |b| {
        b.iter(|| {
            out.clear();
            encode_deliver(
                black_box(&name),
                Mode::Multicast,
                black_box(&from),
                Some("spiffe://acme.example/sensor"),
                7,
                black_box(&payload),
                &limits,
                &mut out,
            )
            .unwrap();
            black_box(out.len())
        })
    });
    g.finish();
}

fn bench_decode(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    for (label, len) in [("publish_16B", 16), ("publish_1KiB", 1024)] {
        let bytes = encode_to_vec(&publish(len), &limits).unwrap();
        g.bench_function(label, |b| {
            b.iter_batched_ref(
                || BytesMut::from(&bytes[..]),
                |buf| decode(buf, &limits).unwrap().unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    // Many small publishes arriving in one read.
    let mut stream = BytesMut::new();
    for i in 0..BATCH {
        let Frame::Publish(mut p) = publish(16) else {
            unreachable!()
        };
        p.msg_id = i as u64;
        encode(&Frame::Publish(p), &limits, &mut stream).unwrap();
    }
    let stream = stream.freeze();
    let mut g = c.benchmark_group("decode_batch");
    g.throughput(Throughput::Elements(BATCH as u64));
    // The node's hot path: zero-copy views over the same buffer.
    g.bench_function("publish_view_16B_x64", |b| {
        b.iter(|| {
            let mut n = 0;
            let mut off = 0;
            while let Some(total) = slim_wire::check(&stream[off..], &limits).unwrap() {
                let v = slim_wire::publish_view(&stream[off + 5..off + total])
                    .unwrap()
                    .unwrap();
                black_box(v.payload.len());
                off += total;
                n += 1;
            }
            assert_eq!(n, BATCH);
        })
    });
    g.bench_function("publish_16B_x64", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&stream[..]),
            |buf| {
                let mut n = 0;
                while let Some(f) = decode(buf, &limits).unwrap() {
                    black_box(f);
                    n += 1;
                }
                assert_eq!(n, BATCH);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_encode, bench_decode);
criterion_main!(benches);
