//! MLS costs: application-message throughput and member addition.
//!
//! `cargo bench -p slim-mls --bench mls`

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rustls_pki_types::UnixTime;
use slim_auth::{DevCa, SpiffeId};
use slim_mls::{Group, MlsIdentity, verify_credential};

static NEXT: AtomicU64 = AtomicU64::new(0);

fn fresh(ca: &DevCa) -> MlsIdentity {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let id = SpiffeId::parse(&format!("spiffe://example.org/member-{n}")).unwrap();
    MlsIdentity::new(&ca.issue(&id, Duration::from_secs(3600)).unwrap()).unwrap()
}

/// A moderator's group of `n` members (moderator included); also returns the
/// joined groups of the first `joined` other members.
fn group_of(ca: &DevCa, n: usize, joined: usize) -> (Group, Vec<Group>) {
    let im = fresh(ca);
    let mut m = Group::create(&im, b"bench").unwrap();
    let ids: Vec<MlsIdentity> = (1..n).map(|_| fresh(ca)).collect();
    let kps: Vec<Vec<u8>> = ids.iter().map(|i| i.key_package().unwrap()).collect();
    let mut members = Vec::new();
    if !kps.is_empty() {
        let c = m.add_members(&kps).unwrap();
        m.merge_pending_commit().unwrap();
        let w = c.welcome.unwrap();
        for i in ids.iter().take(joined) {
            members.push(Group::join(i, &w, &ca.bundles()).unwrap());
        }
    }
    (m, members)
}

fn app_messages(c: &mut Criterion) {
    let ca = DevCa::generate("example.org").unwrap();
    let payload = vec![0xabu8; 1024];
    let mut g = c.benchmark_group("app_message_1KiB");
    g.throughput(Throughput::Bytes(1024));
    // Encrypt only, in a group of its own: receivers that never decrypt fall
    // behind the sender's ratchet for good.
    let (mut alone, _) = group_of(&ca, 4, 0);
    g.bench_function("encrypt", |b| {
        b.iter(|| black_box(alone.encrypt(&payload).unwrap()))
    });
    let (mut m, mut members) = group_of(&ca, 4, 3);
    g.bench_function("encrypt+decrypt_x3", |b| {
        b.iter(|| {
            let ct = m.encrypt(&payload).unwrap();
            for g in members.iter_mut() {
                black_box(g.decrypt(&ct).unwrap());
            }
        })
    });
    g.finish();
}

fn add_member(c: &mut Criterion) {
    let ca = DevCa::generate("example.org").unwrap();
    let mut g = c.benchmark_group("add_one_member");
    g.sample_size(10);
    for n in [10usize, 100, 1000] {
        let (mut m, _) = group_of(&ca, n, 0);
        g.bench_function(format!("group_of_{n}"), |b| {
            b.iter_batched(
                || fresh(&ca).key_package().unwrap(),
                |kp| {
                    let commit = m.add_members(&[kp]).unwrap();
                    m.clear_pending_commit().unwrap();
                    black_box(commit)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn credential(c: &mut Criterion) {
    let ca = DevCa::generate("example.org").unwrap();
    let i = fresh(&ca);
    let bundles = ca.bundles();
    c.bench_function("verify_credential_uncached", |b| {
        b.iter(|| {
            verify_credential(
                i.credential_bytes(),
                i.signature_public_key(),
                &bundles,
                UnixTime::now(),
            )
            .unwrap()
        })
    });
}

criterion_group!(benches, app_messages, add_member, credential);
criterion_main!(benches);
