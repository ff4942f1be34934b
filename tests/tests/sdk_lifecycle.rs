//! A client's resources go with it: its UDP socket (quinn's endpoint, whose
//! drivers run inside the client's connection task) is closed after
//! `close()`, after a plain drop, and after a cancelled `connect`. One test
//! in this binary, so that the process's socket count is this test's alone.

use std::time::Duration;

use slim_client::Client;
use slim_tests::*;

/// Open sockets of this process (`/proc/self/fd` links to `socket:[…]`).
fn open_sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("procfs")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("socket:"))
        .count()
}

async fn sockets_back_to(base: usize, what: &str) {
    assert_eventually(Duration::from_secs(10), what, || async move {
        open_sockets() <= base
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_socket_is_closed_after_close_drop_and_a_cancelled_connect() {
    init_tracing();
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let addr = node.local_addr();
    let base = open_sockets();

    let clients: Vec<Client> = {
        let mut v = Vec::new();
        for i in 0..5 {
            v.push(client(&pki, addr, &format!("acme/life/c{i}")).await);
        }
        v
    };
    assert!(
        open_sockets() >= base + 5,
        "each client holds a socket while connected"
    );
    for c in clients {
        c.close().await;
    }
    sockets_back_to(base, "closed clients' sockets are released").await;

    let dropped = client(&pki, addr, "acme/life/dropped").await;
    drop(dropped);
    sockets_back_to(base, "a dropped client's socket is released").await;

    // A connect cancelled mid-handshake (the node is gone: the handshake
    // never finishes).
    node.shutdown(Duration::from_secs(1)).await;
    let cfg = client_config(&pki, addr, "acme/life/cancelled");
    let r = tokio::time::timeout(Duration::from_millis(200), Client::connect(cfg)).await;
    assert!(r.is_err(), "the connect was still waiting when cancelled");
    sockets_back_to(base, "a cancelled connect's socket is released").await;
}
