//! The exposed node: what anyone who can reach its UDP port can make it do
//! is bounded. A flood of half-open handshakes (real ClientHellos from an
//! address that never answers) meets QUIC Retry and the handshake cap while
//! a legitimate client joins and streams; a client that never says hello
//! is closed at the one handshake deadline; a frame trickled in is closed at
//! the read deadline; the node's budget of incomplete frames holds; refused
//! handshakes make a bounded number of log lines. All on loopback, bounded.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use slim_tests::*;
use slim_wire::{ErrorCode, Mode};

const CLOSE: Duration = Duration::from_secs(10);

/// Real QUIC Initials, each a fresh ClientHello under its own connection
/// ID: a quinn client dials a socket of ours `n` times and we keep the
/// first datagram of each attempt. Replayed from another socket they are
/// what a spoofing attacker sends: valid Initials from an address that
/// never answers.
async fn capture_initials(pki: &Pki, n: usize) -> Vec<Vec<u8>> {
    let sink = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = sink.local_addr().unwrap();
    let tls = slim_auth::client_config(
        &pki.identity("agent/flood"),
        &[slim_auth::ALPN_SLIM],
        slim_auth::ServerMatch::Any,
    )
    .unwrap();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 2048];
    while out.len() < n {
        pending.push(ep.connect(target, "slim-node").unwrap());
        loop {
            let (len, _) = tokio::time::timeout(Duration::from_secs(5), sink.recv_from(&mut buf))
                .await
                .expect("the client sends its Initial")
                .unwrap();
            let d = &buf[..len];
            // Long header, type Initial; the destination CID identifies the attempt.
            assert_eq!(d[0] & 0xf0, 0xc0, "an Initial");
            let dcid = d[6..6 + d[5] as usize].to_vec();
            if seen.insert(dcid) {
                out.push(d.to_vec());
                break;
            }
        }
    }
    drop(pending);
    ep.close(0u32.into(), b"");
    out
}

/// Sends `initials` to `node` from 127.0.0.2 (another source address than
/// the legitimate clients' 127.0.0.1) and counts what comes back: (Retry
/// packets, other datagrams).
async fn flood(node: SocketAddr, initials: &[Vec<u8>], listen_for: Duration) -> (usize, usize) {
    let sock = Arc::new(tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap());
    // Read while sending: the answers would overflow this socket's buffer.
    let expected = initials.len();
    let reader = {
        let sock = Arc::clone(&sock);
        tokio::spawn(async move {
            let (mut retries, mut other) = (0, 0);
            let mut buf = vec![0u8; 2048];
            let end = tokio::time::Instant::now() + listen_for;
            while retries + other < expected
                && let Ok(Ok((len, _))) =
                    tokio::time::timeout_at(end, sock.recv_from(&mut buf)).await
            {
                if len > 0 && buf[0] & 0xf0 == 0xf0 {
                    retries += 1;
                } else {
                    other += 1;
                }
            }
            (retries, other)
        })
    };
    // In bursts of 50, so that the node's socket buffer (the kernel may cap
    // it well below what the node asks for) drops none of them.
    for burst in initials.chunks(50) {
        for d in burst {
            sock.send_to(d, node).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reader.await.unwrap()
}

/// Publishes `n` sequence-numbered messages and checks each arrives once.
async fn stream_ok(pki: &Pki, node: SocketAddr, tag: &str, n: u64) {
    let sub = client(pki, node, &format!("acme/{tag}/sub")).await;
    let publ = client(pki, node, &format!("acme/{tag}/pub")).await;
    let chan = name(&format!("acme/{tag}/chan"));
    sub.subscribe(&chan).await.unwrap();
    for seq in 0..n {
        publ.publish(&chan, Mode::Multicast, &seq_payload(seq, 64))
            .await
            .unwrap();
    }
    let mut got = SeqSet::new(n);
    while got.count() < n {
        let d = next_message(&sub, Duration::from_secs(10)).await;
        assert!(got.insert(payload_seq(&d.payload)), "a duplicate");
    }
    assert_eq!(got.duplicates(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_flood_meets_retry_and_the_cap_while_a_client_joins_and_streams() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |c| {
        c.handshake_timeout = Duration::from_secs(3);
        c.admission.max_handshakes = 32;
        c.admission.retry = slim_actors::admission::RetryMode::Auto { threshold: 8 };
    })
    .await;
    let addr = node.local_addr();
    let initials = capture_initials(&pki, 400).await;

    let (retries, other) = flood(addr, &initials, Duration::from_secs(2)).await;
    let in_progress = node.handshakes_in_progress();
    eprintln!(
        "400 spoofed Initials: {retries} Retry packets back, {other} other datagrams; \
         {in_progress} handshakes in progress; endpoint {:?}",
        node.endpoint_stats()
    );
    // Past the threshold the flood gets Retries and holds nothing: the
    // handshakes in progress stop at the threshold (give or take the ones
    // decided concurrently), far below 400 and within the cap.
    assert!(retries >= 300, "most of the flood got a Retry: {retries}");
    assert!(
        in_progress <= 32,
        "handshakes in progress within the cap: {in_progress}"
    );

    // A legitimate client (it answers the Retry) joins and streams while
    // the half-open handshakes are still held.
    stream_ok(&pki, addr, "legit", 500).await;

    // The half-open handshakes end at the handshake deadline.
    assert_eventually(
        Duration::from_secs(10),
        "half-open handshakes expire",
        || {
            let n = node.handshakes_in_progress();
            async move { n == 0 }
        },
    )
    .await;
    node.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_says_hello_is_closed_at_the_handshake_deadline() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |c| c.handshake_timeout = Duration::from_secs(2)).await;
    let addr = node.local_addr();
    let id = pki.identity("agent/silent");
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(RawConn::connect(addr, &id).await);
    }
    // Counted from the first Initial until the hello that never comes.
    let held = node.handshakes_in_progress();
    assert!(held > 0 && held <= 20, "{held}");
    for c in &silent {
        let (code, reason) = c.closed_by_node(CLOSE).await;
        assert_eq!(code, ErrorCode::PROTOCOL.0 as u64, "{reason}");
        assert_eq!(reason, "hello timeout");
    }
    assert_eq!(node.handshakes_in_progress(), 0);
    stream_ok(&pki, addr, "after", 100).await;
    node.shutdown(Duration::ZERO).await;
}

/// Sends a hello, then the first `sent` bytes of a frame declared `declared` long.
async fn partial_frame(
    pki: &Pki,
    addr: SocketAddr,
    n: &str,
    declared: u32,
    sent: usize,
) -> RawConn {
    let mut c = RawConn::connect(addr, &pki.identity("agent/trickle")).await;
    c.hello(n).await;
    let mut bytes = declared.to_be_bytes().to_vec();
    bytes.push(slim_wire::FrameKind::Publish as u8);
    bytes.resize(sent, 0x55);
    c.send.write_all(&bytes).await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_frame_is_closed_at_the_read_deadline() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |c| c.frame_read_timeout = Duration::from_secs(1)).await;
    let addr = node.local_addr();
    let mut c = partial_frame(&pki, addr, "acme/bad/trickle/1", 1 << 20, 500 << 10).await;
    // Trickling keeps bytes coming, but the frame's deadline does not move.
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            if c.send.write_all(&[0x55; 16]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c
    });
    let c = trickle.await.unwrap();
    let (code, reason) = c.closed_by_node(CLOSE).await;
    assert_eq!(code, ErrorCode::PROTOCOL.0 as u64, "{reason}");
    assert!(reason.contains("frame_read_timeout"), "{reason}");
    assert_eventually(Duration::from_secs(5), "partial bytes given back", || {
        let n = node.partial_frame_bytes();
        async move { n == 0 }
    })
    .await;
    stream_ok(&pki, addr, "after", 100).await;
    node.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_frames_share_one_budget() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |c| {
        c.partial_frame_budget = 256 << 10;
        c.frame_read_timeout = Duration::from_secs(30);
    })
    .await;
    let addr = node.local_addr();
    // 200 KiB of a 1 MiB frame: 136 KiB beyond the free 64 KiB.
    let first = partial_frame(&pki, addr, "acme/big/one/1", 1 << 20, 200 << 10).await;
    assert_eventually(Duration::from_secs(5), "the first frame is held", || {
        let n = node.partial_frame_bytes();
        async move { n >= 130 << 10 }
    })
    .await;
    let second = partial_frame(&pki, addr, "acme/big/two/1", 1 << 20, 200 << 10).await;
    let (code, reason) = second.closed_by_node(CLOSE).await;
    assert_eq!(code, ErrorCode::PROTOCOL.0 as u64, "{reason}");
    assert!(reason.contains("budget"), "{reason}");
    // The first one is untouched: it completes its frame and stays open.
    assert!(first.conn.close_reason().is_none());
    assert!(node.partial_frame_bytes() >= 130 << 10);
    drop(first);
    assert_eventually(Duration::from_secs(10), "budget given back", || {
        let n = node.partial_frame_bytes();
        async move { n == 0 }
    })
    .await;
    node.shutdown(Duration::ZERO).await;
}
