//! Protocol 2's read-progress report (`ReadProgress`, client → node) and
//! the version range that lets SDKs and nodes be upgraded in either order:
//! a node still accepts protocol 1; an SDK refused by a node that speaks
//! only 1 says hello again in 1; a report must grow; and a client that
//! reports reading while it reads nothing is still cut, later.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use slim_actors::{SlowAction, SlowConsumerPolicy};
use slim_tests::*;
use slim_wire::{
    Accept, ErrorCode, Frame, Limits, MIN_PROTOCOL_VERSION, Mode, PROTOCOL_VERSION, ReadProgress,
    Reject, Subscribe,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_accepts_protocol_1_and_refuses_versions_it_does_not_know() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let addr = node.local_addr();
    let id = pki.identity("agent/old");

    let mut old = RawConn::connect(addr, &id).await;
    let answer = old
        .hello_in(MIN_PROTOCOL_VERSION, "acme/old/sdk/1", None)
        .await;
    assert!(matches!(answer, Frame::Accept(_)), "{answer:?}");

    let mut future = RawConn::connect(addr, &id).await;
    match future
        .hello_in(PROTOCOL_VERSION + 1, "acme/new/sdk/1", None)
        .await
    {
        Frame::Reject(r) => {
            assert_eq!(r.code, ErrorCode::VERSION);
            assert!(
                r.reason
                    .contains(&format!("{MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}")),
                "the refusal names the versions the node speaks: {}",
                r.reason
            );
        }
        other => panic!("expected a reject, got {other:?}"),
    }
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_progress_report_that_goes_back_closes_the_connection() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let mut raw = RawConn::connect(node.local_addr(), &pki.identity("agent/x")).await;
    raw.hello("acme/x/sdk/1").await;
    raw.send_frame(&Frame::ReadProgress(ReadProgress { read: 5_000 }))
        .await;
    raw.send_frame(&Frame::ReadProgress(ReadProgress { read: 3_000 }))
        .await;
    let (code, reason) = raw.closed_by_node(Duration::from_secs(10)).await;
    assert_eq!(code, u64::from(ErrorCode::PROTOCOL.0), "{reason}");
    assert!(reason.contains("read progress must grow"), "{reason}");
    node.shutdown(Duration::from_secs(1)).await;
}

/// Reports hold a cut off only while QUIC credit may still be on its way:
/// a client that never reads but keeps reporting growing counts is cut
/// anyway (after `REPORT_STRETCH` write deadlines instead of one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reports_reading_but_reads_nothing_is_still_cut() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |c| {
        c.queue.max_bytes = 64 * 1024;
        c.queue.policy =
            SlowConsumerPolicy::wait(Duration::from_millis(300), SlowAction::Disconnect);
        c.overflow_bytes = 0;
    })
    .await;
    let addr = node.local_addr();
    let chan = name("acme/liar/chan");
    let mut liar = RawConn::connect(addr, &pki.identity("agent/liar")).await;
    liar.hello("acme/liar/sdk/1").await;
    liar.send_frame(&Frame::Subscribe(Subscribe {
        id: 1,
        name: chan.clone(),
    }))
    .await;
    // The sub ack, then nothing more is read.
    let mut buf = bytes::BytesMut::new();
    loop {
        if let Some(f) = slim_wire::decode(&mut buf, &Limits::default()).unwrap() {
            assert!(matches!(f, Frame::SubAck(_)), "{f:?}");
            break;
        }
        let chunk = liar.recv.read_chunk(65_536, true).await.unwrap().unwrap();
        buf.extend_from_slice(&chunk.bytes);
    }

    let publ = client(&pki, addr, "acme/liar/pub").await;
    let publisher = tokio::spawn(async move {
        for i in 0u64.. {
            if publ
                .publish(&chan, Mode::Multicast, &seq_payload(i, 2048))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let reports = {
        let conn = liar.conn.clone();
        let mut send = liar.send;
        tokio::spawn(async move {
            for read in 1u64.. {
                let f = Frame::ReadProgress(ReadProgress { read: read * 4096 });
                let bytes = slim_wire::codec::encode_to_vec(&f, &Limits::default()).unwrap();
                if send.write_all(&bytes).await.is_err() || conn.close_reason().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let closed = tokio::time::timeout(Duration::from_secs(60), liar.conn.closed())
        .await
        .expect("the node cut the client within a minute");
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(
                c.error_code.into_inner(),
                u64::from(ErrorCode::SLOW_CONSUMER.0),
                "{:?}",
                c.reason
            );
        }
        other => panic!("closed otherwise: {other}"),
    }
    assert_eq!(node.slow_consumer_disconnects(), 1);
    publisher.abort();
    reports.abort();
    node.shutdown(Duration::from_secs(1)).await;
}

/// An SDK of protocol 2 against a node that speaks only 1 (played here by
/// a QUIC server that refuses any other version as such a node does):
/// refused in 2, it says hello again in 1 and is connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_says_hello_in_protocol_1_to_a_node_that_speaks_only_1() {
    init_tracing();
    let pki = Pki::new("example.org");
    let tls = slim_auth::tls::server_config(&pki.identity("node"), &[slim_auth::ALPN_SLIM])
        .expect("server TLS");
    let quic = QuicServerConfig::try_from(Arc::new(tls)).expect("QUIC TLS");
    let ep = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(quic)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .expect("endpoint");
    let addr = ep.local_addr().unwrap();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let old_node = tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let conn = incoming.await.expect("handshake");
            let (mut send, mut recv) = conn.accept_bi().await.expect("stream");
            let mut r = slim_framed::FrameReader::new(&mut recv, Limits::default());
            let Some(Frame::Hello(h)) = r.read_frame().await.expect("a hello") else {
                panic!("expected a hello");
            };
            seen_tx.send(h.version).unwrap();
            let answer = if h.version == 1 {
                Frame::Accept(Accept {
                    node_id: "old-node".into(),
                    identity: None,
                    max_frame: Limits::default().max_frame,
                })
            } else {
                Frame::Reject(Reject {
                    code: ErrorCode::VERSION,
                    reason: format!(
                        "protocol version {} not supported (node speaks 1)",
                        h.version
                    ),
                })
            };
            let bytes = slim_wire::codec::encode_to_vec(&answer, &Limits::default()).unwrap();
            send.write_all(&bytes).await.unwrap();
            if h.version == 1 {
                // Connected: held until the test ends.
                std::mem::forget((conn, send, recv));
            } else {
                let _ = send.finish();
                conn.close(u32::from(ErrorCode::VERSION.0).into(), b"version");
            }
        }
    });

    let sdk = slim_client::Client::connect(client_config(&pki, addr, "acme/new/sdk/1"))
        .await
        .expect("connected in protocol 1");
    assert_eq!(seen.recv().await, Some(PROTOCOL_VERSION));
    assert_eq!(seen.recv().await, Some(1));
    assert!(
        matches!(sdk.state().borrow().clone(), slim_client::ConnState::Connected { node_id } if node_id == "old-node")
    );
    drop(sdk);
    old_node.abort();
}
