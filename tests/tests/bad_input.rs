//! Bad input closes that connection with a typed error; other clients never notice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use slim_tests::*;
use slim_wire::{ErrorCode, Mode};

const CLOSE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_the_offending_connection() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let addr = node.local_addr();

    // A second client's traffic runs throughout.
    let sub = client(&pki, addr, "acme/good/sub").await;
    let publ = Arc::new(client(&pki, addr, "acme/good/pub").await);
    let chan = name("acme/good/chan");
    sub.subscribe(&chan).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (publ, chan, stop) = (Arc::clone(&publ), chan.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                publ.publish(&chan, Mode::Multicast, &seq_payload(seq, 32))
                    .await
                    .unwrap();
                seq += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            seq
        })
    };
    let id = pki.identity("agent/mallory");
    let rss_before = rss_kib();

    // (a) a length prefix over the limit: closed at once, nothing allocated for it.
    let mut c = RawConn::connect(addr, &id).await;
    c.hello("acme/bad/a/1").await;
    c.send
        .write_all(&0xFFFF_FFF0u32.to_be_bytes())
        .await
        .unwrap();
    let (code, reason) = c.closed_by_node(CLOSE).await;
    assert_eq!(code, ErrorCode::TOO_LARGE.0 as u64, "{reason}");
    assert!(reason.contains("exceeds the limit"), "{reason}");

    // (b) a truncated frame, then the stream ends.
    let mut c = RawConn::connect(addr, &id).await;
    c.hello("acme/bad/b/1").await;
    c.send.write_all(&[0, 0, 0, 100, 8, 1, 2, 3]).await.unwrap();
    c.send.finish().unwrap();
    let (code, reason) = c.closed_by_node(CLOSE).await;
    assert_eq!(code, ErrorCode::MALFORMED.0 as u64, "{reason}");
    assert!(reason.contains("stream ended inside a frame"), "{reason}");

    // (c) random bytes, after a hello and instead of one.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for with_hello in [true, false] {
        let mut c = RawConn::connect(addr, &id).await;
        if with_hello {
            c.hello("acme/bad/c/1").await;
        }
        let junk: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
        let _ = c.send.write_all(&junk).await;
        let (code, reason) = c.closed_by_node(CLOSE).await;
        assert!(
            [
                ErrorCode::MALFORMED,
                ErrorCode::TOO_LARGE,
                ErrorCode::UNKNOWN_FRAME
            ]
            .iter()
            .any(|e| e.0 as u64 == code),
            "code {code}: {reason}"
        );
    }

    // (d) an unknown frame kind.
    let mut c = RawConn::connect(addr, &id).await;
    c.hello("acme/bad/d/1").await;
    c.send.write_all(&[0, 0, 0, 1, 200]).await.unwrap();
    let (code, reason) = c.closed_by_node(CLOSE).await;
    assert_eq!(code, ErrorCode::UNKNOWN_FRAME.0 as u64, "{reason}");
    assert!(reason.contains("unknown frame kind 200"), "{reason}");

    // (e) a frame a client must never send.
    let mut c = RawConn::connect(addr, &id).await;
    c.hello("acme/bad/e/1").await;
    let hello_again = slim_wire::codec::encode_to_vec(
        &slim_wire::Frame::Ping(slim_wire::Ping { nonce: 1 }),
        &slim_wire::Limits::default(),
    )
    .unwrap();
    let mut accept_like = hello_again.clone();
    accept_like[4] = slim_wire::FrameKind::Deliver as u8;
    c.send.write_all(&accept_like).await.unwrap();
    let (code, reason) = c.closed_by_node(CLOSE).await;
    assert_eq!(code, ErrorCode::MALFORMED.0 as u64, "{reason}");

    // (f) a publish whose name is not UTF-8, right after valid publishes
    // to a name of the same length (the node compares a publish's name
    // with the last one it checked, and checks only one that differs).
    let mut c = RawConn::connect(addr, &id).await;
    c.hello("acme/bad/f/1").await;
    let publish = |name: &str| {
        let f = slim_wire::Frame::Publish(slim_wire::Publish {
            name: slim_wire::Name::parse(name).unwrap(),
            mode: Mode::Multicast,
            flags: slim_wire::FLAG_NO_ROUTE_SILENT,
            msg_id: 1,
            payload: vec![1, 2, 3],
        });
        slim_wire::codec::encode_to_vec(&f, &slim_wire::Limits::default()).unwrap()
    };
    let good = publish("acme/bad/chan");
    let mut bad = good.clone();
    let at = bad
        .windows(4)
        .position(|w| w == b"chan")
        .expect("the name is in the frame");
    bad[at + 2] = 0xff;
    for _ in 0..3 {
        c.send.write_all(&good).await.unwrap();
    }
    c.send.write_all(&bad).await.unwrap();
    let (code, reason) = c.closed_by_node(CLOSE).await;
    assert_eq!(code, ErrorCode::MALFORMED.0 as u64, "{reason}");

    // Declared lengths did not turn into memory: ~4 GiB was declared above.
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");

    // Every offender is gone; the good pair saw every message exactly once, in order.
    assert_eventually(Duration::from_secs(5), "offenders disconnected", || async {
        node.connection_count() == 2
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let sent = sender.await.unwrap();
    assert!(sent > 10, "traffic ran during the test");
    for i in 0..sent {
        let d = next_message(&sub, Duration::from_secs(5)).await;
        assert_eq!(payload_seq(&d.payload), i);
    }
    assert_no_message(&sub, Duration::from_millis(100)).await;
    node.shutdown(Duration::from_secs(1)).await;
}
