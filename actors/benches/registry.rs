//! Registry and fan-out micro-benchmarks (criterion; no timing assertions).
//!   cargo bench -p slim-actors --bench registry

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use slim_actors::{Outbox, Registry, SlowConsumerPolicy};
use slim_wire::{Limits, Mode, Name, codec};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn lookup(c: &mut Criterion) {
    const SUBS: u64 = 1_000_000;
    const CONNS: u64 = 1_000;
    let before = rss_kib();
    let reg = Registry::new();
    let outboxes: Vec<Arc<Outbox>> = (0..CONNS)
        .map(|_| Arc::new(Outbox::new(16, 1 << 20, SlowConsumerPolicy::drop_newest()).0))
        .collect();
    let keys: Vec<String> = (0..SUBS)
        .map(|i| format!("acme/ns{}/svc{}", i % 1000, i))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        let conn = i as u64 % CONNS;
        reg.add(conn, &outboxes[conn as usize], k);
    }
    let after = rss_kib();
    eprintln!(
        "registry: {} subscriptions, RSS +{} KiB = {} bytes per subscription (incl. the name strings)",
        reg.subscription_count(),
        after - before,
        (after - before) * 1024 / SUBS
    );
    let mut g = c.benchmark_group("registry");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("lookup_hit_1M_subscriptions", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            let r = reg.lookup(&keys[i]).expect("present");
            std::hint::black_box(r.subs.len())
        })
    });
    g.bench_function("lookup_miss_1M_subscriptions", |b| {
        b.iter(|| std::hint::black_box(reg.lookup("acme/none/missing").is_none()))
    });
    g.finish();
}

fn fanout(c: &mut Criterion) {
    const N: usize = 1_000;
    let reg = Registry::new();
    let mut rxs = Vec::new();
    for conn in 0..N as u64 {
        let (ob, rx) = Outbox::new(1024, 64 << 20, SlowConsumerPolicy::drop_newest());
        reg.add(conn, &Arc::new(ob), "acme/monitoring/fanout");
        rxs.push(rx);
    }
    let name = Name::parse("acme/monitoring/fanout").unwrap();
    let from = Name::parse("acme/eu/pub/1").unwrap();
    let payload = [7u8; 16];
    let limits = Limits::default();
    let mut scratch = BytesMut::with_capacity(1 << 16);
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("multicast_16B_to_1000_queues", |b| {
        b.iter_batched(
            || (),
            |_| {
                let route = reg.lookup(name.as_str()).expect("route");
                if scratch.capacity() < 256 {
                    scratch.reserve(1 << 16);
                }
                codec::encode_deliver(
                    &name,
                    Mode::Multicast,
                    &from,
                    Some("spiffe://example.org/agent/pub"),
                    1,
                    &payload,
                    &limits,
                    &mut scratch,
                )
                .unwrap();
                let frame: Bytes = scratch.split().freeze();
                for s in &route.subs {
                    s.outbox.push(frame.clone());
                }
                // Drain like the writers would, so queues never fill.
                for (rx, s) in rxs.iter_mut().zip(route.subs.iter()) {
                    if let Some(b) = rx.try_recv() {
                        s.outbox.written(b.len());
                    }
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, lookup, fanout);
criterion_main!(benches);
