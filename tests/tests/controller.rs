//! The controller over real QUIC + mTLS on loopback, with in-process nodes:
//! registration and the fleet view (kept up to date by report deltas), link
//! planning pushed to nodes, the audit trail across a controller restart, a
//! node carrying on while the controller is down, out-of-step deltas and
//! paged answers, and refusal of unknown identities.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use slim_actors::{LinkState, NodeHandle};
use slim_controller::proto::{
    AdminRequest, AdminResponse, AuditKind, Limits, ToCaller, ToController,
};
use slim_controller::{ConnError, ControllerConfig, ControllerConn, ControllerHandle, FleetConfig};
use slim_node::controller::{ControllerLink, ControllerLinkConfig};
use slim_tests::*;
use slim_wire::Mode;

const T: Duration = Duration::from_secs(20);

async fn start_controller(pki: &Pki, dir: &Path, listen: SocketAddr) -> ControllerHandle {
    let mut cfg = ControllerConfig::new(listen, dir.to_owned());
    cfg.nodes = vec![format!("spiffe://{}/node/*", pki.ca.trust_domain())];
    cfg.admins = vec![format!("spiffe://{}/ops/**", pki.ca.trust_domain())];
    // Nodes here reconnect within 500 ms; the hold only has to cover that.
    cfg.fleet = FleetConfig {
        plan_grace: Duration::from_secs(300),
        startup_hold: Duration::from_millis(1500),
        ..FleetConfig::default()
    };
    let identity = pki.identity("controller");
    // A restarted controller binds the port its predecessor just released.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match slim_controller::start(cfg.clone(), &identity).await {
            Ok(c) => return c,
            Err(slim_controller::ControllerError::Bind { .. })
            | Err(slim_controller::ControllerError::Store(_))
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("start controller: {e}"),
        }
    }
}

async fn start_fed_node(pki: &Pki, id: &str) -> Arc<NodeHandle> {
    let mut cfg = slim_actors::NodeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        node_id: id.into(),
        ..Default::default()
    };
    cfg.federation.backoff_initial = Duration::from_millis(50);
    cfg.federation.backoff_max = Duration::from_millis(500);
    let identity = pki.identity(&format!("node/{id}"));
    Arc::new(
        slim_actors::start(cfg, &identity)
            .await
            .expect("start node"),
    )
}

fn link(
    pki: &Pki,
    node: &Arc<NodeHandle>,
    ctl: SocketAddr,
    cluster: &str,
    reachable: bool,
) -> ControllerLink {
    link_with(pki, node, ctl, cluster, reachable, |_| {})
}

fn link_with(
    pki: &Pki,
    node: &Arc<NodeHandle>,
    ctl: SocketAddr,
    cluster: &str,
    reachable: bool,
    tweak: impl FnOnce(&mut ControllerLinkConfig),
) -> ControllerLink {
    let mut cfg = ControllerLinkConfig::new(ctl.to_string());
    cfg.cluster = cluster.into();
    cfg.external_endpoint = reachable.then(|| node.local_addr().to_string());
    cfg.report_interval = Duration::from_millis(200);
    cfg.backoff_initial = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(500);
    // A handshake towards a stopped controller only ends by timeout.
    cfg.connect_timeout = Duration::from_secs(2);
    tweak(&mut cfg);
    let identity = pki.identity(&format!("node/{}", node.node_id()));
    slim_node::controller::spawn(node, (&identity).into(), cfg)
}

async fn admin_as(
    pki: &Pki,
    who: &str,
    ctl: SocketAddr,
    req: AdminRequest,
) -> Result<AdminResponse, ConnError> {
    let identity = pki.identity(who);
    let tls = slim_auth::client_config(
        &identity,
        &[slim_controller::ALPN_CONTROLLER],
        slim_auth::ServerMatch::Any,
    )
    .unwrap();
    let mut c = ControllerConn::connect(ctl, "slim-controller", tls, Limits::default(), T).await?;
    let r = c.admin(req, T).await;
    c.close().await;
    r
}

/// An admin connection kept open for many requests (as a polling operator).
async fn admin_conn(pki: &Pki, ctl: SocketAddr) -> ControllerConn {
    let identity = pki.identity("ops/alice");
    let tls = slim_auth::client_config(
        &identity,
        &[slim_controller::ALPN_CONTROLLER],
        slim_auth::ServerMatch::Any,
    )
    .unwrap();
    ControllerConn::connect(ctl, "slim-controller", tls, Limits::default(), T)
        .await
        .expect("admin connects")
}

async fn admin(pki: &Pki, ctl: SocketAddr, req: AdminRequest) -> AdminResponse {
    admin_as(pki, "ops/alice", ctl, req)
        .await
        .expect("admin request")
}

async fn nodes(pki: &Pki, ctl: SocketAddr) -> Vec<slim_controller::proto::NodeView> {
    match admin(pki, ctl, AdminRequest::ListNodes).await {
        AdminResponse::Nodes(n) => n,
        other => panic!("unexpected {other:?}"),
    }
}

async fn audit(
    pki: &Pki,
    ctl: SocketAddr,
    channel: &str,
) -> Vec<slim_controller::proto::AuditRecord> {
    let req = AdminRequest::Audit {
        channel: Some(channel.into()),
        since_ms: None,
        limit: 1000,
    };
    match admin(pki, ctl, req).await {
        AdminResponse::Audit { records, .. } => records,
        other => panic!("unexpected {other:?}"),
    }
}

fn up_links(n: &NodeHandle) -> Vec<String> {
    let mut v: Vec<String> = n
        .links()
        .into_iter()
        .filter(|l| l.state == LinkState::Up)
        .map(|l| l.peer_node_id)
        .collect();
    v.sort();
    v
}

async fn stop_node(n: Arc<NodeHandle>) {
    Arc::into_inner(n)
        .expect("sole owner")
        .shutdown(Duration::from_secs(1))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_and_appear_in_the_fleet_view() {
    init_tracing();
    let pki = Pki::new("example.org");
    let dir = tempfile::tempdir().unwrap();
    let ctl = start_controller(&pki, dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = ctl.local_addr();
    let a = start_fed_node(&pki, "a").await;
    let b = start_fed_node(&pki, "b").await;
    let la = link(&pki, &a, addr, "cluster-a", false);
    let lb = link(&pki, &b, addr, "cluster-b", true);
    assert_eventually(T, "both nodes registered", || async {
        nodes(&pki, addr)
            .await
            .iter()
            .filter(|n| n.connected)
            .count()
            == 2
    })
    .await;
    let list = nodes(&pki, addr).await;
    let na = list.iter().find(|n| n.node_id == "a").unwrap();
    let nb = list.iter().find(|n| n.node_id == "b").unwrap();
    assert_eq!(na.cluster, "cluster-a");
    // The SPIFFE ID comes from the node's certificate.
    assert_eq!(na.spiffe_id, "spiffe://example.org/node/a");
    assert_eq!(na.external_endpoint, None);
    assert_eq!(nb.external_endpoint, Some(b.local_addr()));
    assert_eq!(na.listen, Some(a.local_addr()));
    // The NATed node dials the reachable one, never the other way.
    assert_eq!(na.dials, vec!["b".to_string()]);
    assert!(nb.dials.is_empty());
    assert!(la.is_connected() && lb.is_connected());
    // Routes come from the periodic reports.
    let sub = client(&pki, a.local_addr(), "acme/a/sub").await;
    sub.subscribe(&name("acme/monitoring/fleet")).await.unwrap();
    assert_eventually(T, "the channel shows up in channel list", || async {
        match admin(&pki, addr, AdminRequest::ListChannels).await {
            AdminResponse::Channels(c) => c.iter().any(|c| {
                c.name == "acme/monitoring/fleet"
                    && c.nodes
                        .iter()
                        .any(|n| n.node_id == "a" && n.local_subscribers == 1)
            }),
            _ => false,
        }
    })
    .await;
    match admin(&pki, addr, AdminRequest::ListRoutes { node: "a".into() }).await {
        AdminResponse::Routes { routes, .. } => {
            assert!(routes.iter().any(|r| r.name == "acme/monitoring/fleet"))
        }
        other => panic!("unexpected {other:?}"),
    }
    let unknown = admin_as(
        &pki,
        "ops/alice",
        addr,
        AdminRequest::ListRoutes { node: "zz".into() },
    )
    .await;
    assert!(
        matches!(
            unknown,
            Err(ConnError::Refused {
                code: "unknown_node",
                ..
            })
        ),
        "{unknown:?}"
    );
    sub.close().await;
    la.stop().await;
    lb.stop().await;
    stop_node(a).await;
    stop_node(b).await;
    ctl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_links_come_up_and_spokes_talk_through_the_hub() {
    init_tracing();
    let pki = Pki::new("example.org");
    let dir = tempfile::tempdir().unwrap();
    let ctl = start_controller(&pki, dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = ctl.local_addr();
    let hub = start_fed_node(&pki, "hub").await;
    let sa = start_fed_node(&pki, "spoke-a").await;
    let sb = start_fed_node(&pki, "spoke-b").await;
    let links = [
        link(&pki, &hub, addr, "admin", true),
        link(&pki, &sa, addr, "a", false),
        link(&pki, &sb, addr, "b", false),
    ];
    assert_eventually(T, "spokes linked to the hub", || async {
        up_links(&hub) == ["spoke-a", "spoke-b"]
            && up_links(&sa) == ["hub"]
            && up_links(&sb) == ["hub"]
    })
    .await;
    // The controller's link view, from the reports, agrees.
    assert_eventually(T, "link list shows both links from both ends", || async {
        match admin(&pki, addr, AdminRequest::ListLinks).await {
            AdminResponse::Links(l) => {
                l.iter()
                    .filter(|l| l.link.state == slim_controller::proto::LinkState::Up)
                    .count()
                    == 4
            }
            _ => false,
        }
    })
    .await;
    // Spoke to spoke, through the hub, without any configuration for the channel.
    let sub = client(&pki, sa.local_addr(), "acme/a/sub").await;
    let publ = client(&pki, sb.local_addr(), "acme/b/pub").await;
    let chan = name("acme/monitoring/security-incident");
    sub.subscribe(&chan).await.unwrap();
    let mut seq = 0u64;
    // Interest propagates asynchronously: publish until the first arrives.
    assert_eventually(T, "first cross-cluster delivery", || {
        seq += 1;
        let (publ, sub, chan) = (&publ, &sub, &chan);
        let s = seq;
        async move {
            publ.publish(chan, Mode::Multicast, &seq_payload(s, 16))
                .await
                .unwrap();
            tokio::time::timeout(Duration::from_millis(50), sub.next_message())
                .await
                .is_ok()
        }
    })
    .await;
    sub.close().await;
    publ.close().await;
    for l in links {
        l.stop().await;
    }
    for n in [hub, sa, sb] {
        stop_node(n).await;
    }
    ctl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_survives_a_controller_restart() {
    init_tracing();
    let pki = Pki::new("example.org");
    let dir = tempfile::tempdir().unwrap();
    let ctl = start_controller(&pki, dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = ctl.local_addr();
    let a = start_fed_node(&pki, "a").await;
    let la = link(&pki, &a, addr, "c", true);
    let chan = "acme/monitoring/audited";
    let sub = client(&pki, a.local_addr(), "acme/a/watcher").await;
    sub.subscribe(&name(chan)).await.unwrap();
    sub.unsubscribe(&name(chan)).await.unwrap();
    assert_eventually(T, "join and leave audited", || async {
        audit(&pki, addr, chan).await.len() == 2
    })
    .await;
    let before = audit(&pki, addr, chan).await;
    assert_eq!(before[0].kind, AuditKind::Subscribed);
    assert_eq!(before[1].kind, AuditKind::Unsubscribed);
    assert_eq!(
        before[0].spiffe_id.as_deref(),
        Some("spiffe://example.org/agent/acme-a-watcher")
    );
    assert_eq!(before[0].node_id, "a");
    assert_eq!(before[0].node_spiffe_id, "spiffe://example.org/node/a");
    assert!(la.pending_events() == 0 || la.is_connected());

    ctl.shutdown().await;
    let ctl = start_controller(&pki, dir.path(), addr).await;
    // The records are back from the store, identical.
    assert_eq!(audit(&pki, addr, chan).await, before);
    // The fleet view is rebuilt from the node re-registering.
    assert_eventually(T, "node re-registered", || async {
        nodes(&pki, addr)
            .await
            .iter()
            .any(|n| n.node_id == "a" && n.connected)
    })
    .await;
    assert!(la.registrations() >= 2);
    sub.close().await;
    la.stop().await;
    stop_node(a).await;
    ctl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_controller_down_links_stay_and_new_interest_still_flows() {
    init_tracing();
    let pki = Pki::new("example.org");
    let dir = tempfile::tempdir().unwrap();
    let ctl = start_controller(&pki, dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = ctl.local_addr();
    let a = start_fed_node(&pki, "a").await;
    let b = start_fed_node(&pki, "b").await;
    let la = link(&pki, &a, addr, "nat", false);
    let lb = link(&pki, &b, addr, "dc", true);
    assert_eventually(T, "a dials b", || async {
        up_links(&a) == ["b"] && up_links(&b) == ["a"]
    })
    .await;
    let up_since = a.links()[0].up_since;
    assert_eq!(la.dial_sets_applied(), 1);

    ctl.shutdown().await;
    assert_eventually(T, "both nodes noticed", || async {
        !la.is_connected() && !lb.is_connected()
    })
    .await;
    // A subscription made while the controller is down still propagates.
    let chan = name("acme/monitoring/while-down");
    let sub = client(&pki, a.local_addr(), "acme/a/late-sub").await;
    sub.subscribe(&chan).await.unwrap();
    let publ = client(&pki, b.local_addr(), "acme/b/pub").await;
    let mut seq = 0u64;
    assert_eventually(T, "delivery over the existing link", || {
        seq += 1;
        let (publ, sub, chan) = (&publ, &sub, &chan);
        let s = seq;
        async move {
            publ.publish(chan, Mode::Multicast, &seq_payload(s, 16))
                .await
                .unwrap();
            tokio::time::timeout(Duration::from_millis(50), sub.next_message())
                .await
                .is_ok()
        }
    })
    .await;
    assert!(la.pending_events() > 0, "the join waits for the controller");

    let ctl = start_controller(&pki, dir.path(), addr).await;
    assert_eventually(T, "both reconnect", || async {
        la.registrations() >= 2 && lb.registrations() >= 2
    })
    .await;
    // The controller replans to the same set; the node does not touch its link.
    assert_eventually(T, "a got its dial set again", || async {
        la.set_peers_received() >= 2
    })
    .await;
    assert_eq!(
        la.dial_sets_applied(),
        1,
        "an identical set is not reapplied"
    );
    assert_eq!(a.links()[0].up_since, up_since, "the link never flapped");
    // The join made while the controller was away is in the audit trail.
    assert_eventually(T, "offline join audited", || async {
        audit(&pki, addr, chan.as_str())
            .await
            .iter()
            .any(|r| r.kind == AuditKind::Subscribed && r.client.starts_with("acme/a/late-sub"))
    })
    .await;
    assert_eventually(T, "pending events acknowledged", || async {
        la.pending_events() == 0
    })
    .await;
    sub.close().await;
    publ.close().await;
    la.stop().await;
    lb.stop().await;
    stop_node(a).await;
    stop_node(b).await;
    ctl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_controller_restart_a_peer_not_yet_back_keeps_its_links() {
    init_tracing();
    let pki = Pki::new("example.org");
    let dir = tempfile::tempdir().unwrap();
    let ctl = start_controller(&pki, dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = ctl.local_addr();
    let a = start_fed_node(&pki, "a").await;
    let b = start_fed_node(&pki, "b").await;
    let la = link(&pki, &a, addr, "nat", false);
    let lb = link(&pki, &b, addr, "dc", true);
    assert_eventually(T, "a dials b", || async { up_links(&a) == ["b"] }).await;
    let up_since = a.links()[0].up_since;
    // b loses its controller link for good (e.g. still timing out the dead
    // controller), then the controller restarts.
    lb.stop().await;
    ctl.shutdown().await;
    let ctl = start_controller(&pki, dir.path(), addr).await;
    assert_eventually(
        T,
        "a re-registered and got its set after the hold",
        || async { la.registrations() >= 2 && la.set_peers_received() >= 2 },
    )
    .await;
    // a said it dials b; b is kept as hearsay, so a's set did not change.
    assert_eq!(la.dial_sets_applied(), 1);
    assert_eq!(up_links(&a), ["b"]);
    assert_eq!(a.links()[0].up_since, up_since, "the link never flapped");
    let list = nodes(&pki, addr).await;
    let nb = list.iter().find(|n| n.node_id == "b").expect("b is listed");
    assert!(nb.hearsay && !nb.connected, "{nb:?}");
    assert_eq!(nb.spiffe_id, "spiffe://example.org/node/b");
    // When b comes back it replaces the hearsay entry; still no change for a.
    let lb = link(&pki, &b, addr, "dc", true);
    assert_eventually(T, "b registered", || async {
        nodes(&pki, addr)
            .await
            .iter()
            .any(|n| n.node_id == "b" && n.connected && !n.hearsay)
    })
    .await;
    assert_eq!(la.dial_sets_applied(), 1);
    la.stop().await;
    lb.stop().await;
    stop_node(a).await;
    stop_node(b).await;
    ctl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_identities_are_refused() {
    init_tracing();
    let pki = Pki::new("example.org");
    let dir = tempfile::tempdir().unwrap();
    let ctl = start_controller(&pki, dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = ctl.local_addr();
    // Neither node nor admin: closed right after the handshake.
    let r = admin_as(&pki, "agent/mallory", addr, AdminRequest::ListNodes).await;
    assert!(
        matches!(&r, Err(ConnError::Refused { code: "unauthorized", reason }) if reason.contains("agent/mallory")),
        "{r:?}"
    );
    // A node identity may not use the admin API.
    let r = admin_as(&pki, "node/a", addr, AdminRequest::ListNodes).await;
    assert!(
        matches!(
            &r,
            Err(ConnError::Refused {
                code: "unauthorized",
                ..
            })
        ),
        "{r:?}"
    );
    // An admin identity may not register as a node.
    let identity = pki.identity("ops/alice");
    let tls = slim_auth::client_config(
        &identity,
        &[slim_controller::ALPN_CONTROLLER],
        slim_auth::ServerMatch::Any,
    )
    .unwrap();
    let mut c = ControllerConn::connect(addr, "slim-controller", tls, Limits::default(), T)
        .await
        .unwrap();
    c.stream
        .send(&ToController::Register(slim_controller::proto::Register {
            node_id: "evil".into(),
            cluster: String::new(),
            external_endpoint: Some("127.0.0.1:1".parse().unwrap()),
            listen: None,
            server_name: "x".into(),
            epoch: 1,
            dialing: vec![],
            external_host: None,
        }))
        .await
        .unwrap();
    let answer = tokio::time::timeout(T, c.stream.recv::<ToCaller>())
        .await
        .unwrap();
    assert!(
        matches!(&answer, Ok(Some(ToCaller::Error { code, .. })) if *code == slim_controller::proto::ErrorCode::UNAUTHORIZED),
        "{answer:?}"
    );
    c.close().await;
    // A certificate from another trust domain fails the handshake itself.
    let other = Pki::new("other.example");
    let r = admin_as(&other, "ops/alice", addr, AdminRequest::ListNodes).await;
    assert!(matches!(r, Err(ConnError::Connect { .. })), "{r:?}");
    // Nothing was registered by any of them.
    assert!(nodes(&pki, addr).await.is_empty());
    assert!(ctl.nodes().is_empty());
    ctl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_the_connection_with_a_reason() {
    init_tracing();
    let pki = Pki::new("example.org");
    let dir = tempfile::tempdir().unwrap();
    let ctl = start_controller(&pki, dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = ctl.local_addr();
    let identity = pki.identity("ops/alice");
    let tls = slim_auth::client_config(
        &identity,
        &[slim_controller::ALPN_CONTROLLER],
        slim_auth::ServerMatch::Any,
    )
    .unwrap();
    let mut c = ControllerConn::connect(addr, "slim-controller", tls, Limits::default(), T)
        .await
        .unwrap();
    // Declares 4 GiB: refused from the header alone.
    c.stream.write_raw(&u32::MAX.to_be_bytes()).await.unwrap();
    let closed = tokio::time::timeout(T, c.conn.closed()).await.unwrap();
    match closed {
        quinn::ConnectionError::ApplicationClosed(a) => {
            assert_eq!(
                a.error_code.into_inner(),
                slim_controller::proto::ErrorCode::MALFORMED.0 as u64
            );
            assert!(String::from_utf8_lossy(&a.reason).contains("exceeds"));
        }
        other => panic!("unexpected close {other:?}"),
    }
    // The controller still serves others.
    assert!(nodes(&pki, addr).await.is_empty());
    ctl.shutdown().await;
}

/// Both ends of the link between `a` and `b` are `Up` in `links`.
fn link_up_in_view(links: &[slim_controller::proto::LinkView], a: &str, b: &str) -> bool {
    let up = |from: &str, to: &str| {
        links.iter().any(|l| {
            l.node_id == from
                && l.link.peer_node_id == to
                && l.link.state == slim_controller::proto::LinkState::Up
        })
    };
    up(a, b) && up(b, a)
}

/// A link that comes up reaches the controller's link view (what `slimctl
/// link list` shows) as a report delta, promptly: the periodic refresh is
/// set to a minute here, so nothing else could bring it. The delay from the
/// later end's `up_since` to the first view showing both ends is printed
/// (expected: about `delta_interval`, 200 ms); the test only bounds it
/// loosely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_coming_up_shows_in_the_fleet_view_promptly() {
    init_tracing();
    let pki = Pki::new("example.org");
    let dir = tempfile::tempdir().unwrap();
    let ctl = start_controller(&pki, dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = ctl.local_addr();
    let a = start_fed_node(&pki, "a").await;
    let b = start_fed_node(&pki, "b").await;
    let slow_refresh = |c: &mut ControllerLinkConfig| c.report_interval = Duration::from_secs(60);
    let la = link_with(&pki, &a, addr, "nat", false, slow_refresh);
    let lb = link_with(&pki, &b, addr, "dc", true, slow_refresh);
    let mut ops = admin_conn(&pki, addr).await;
    // Nodes register and send their full reports: no link yet (the
    // controller holds its pushes for the startup hold).
    assert_eventually(T, "both nodes registered", || async {
        ctl.nodes().iter().filter(|n| n.connected).count() == 2
    })
    .await;
    // The link comes up on the nodes.
    assert_eventually(T, "a dials b", || async {
        up_links(&a) == ["b"] && up_links(&b) == ["a"]
    })
    .await;
    let up_since = [&a, &b]
        .iter()
        .filter_map(|n| n.links().first().and_then(|l| l.up_since))
        .max()
        .expect("up_since on both ends");
    // Poll the controller's view as an operator would, on one connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    let seen_at = loop {
        let AdminResponse::Links(view) = ops.admin(AdminRequest::ListLinks, T).await.unwrap()
        else {
            panic!("not a link list");
        };
        if link_up_in_view(&view, "a", "b") {
            break SystemTime::now();
        }
        assert!(
            Instant::now() < deadline,
            "the link is up on both nodes but not in the controller's view after 5 s: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let delay = seen_at.duration_since(up_since).unwrap_or_default();
    println!("fleet view delay after link up: {delay:?} (delta_interval 200 ms)");
    // The refresh is a minute away: the view came from deltas alone.
    assert_eq!(la.registrations(), 1);
    assert_eq!(lb.registrations(), 1);
    ops.close().await;
    la.stop().await;
    lb.stop().await;
    stop_node(a).await;
    stop_node(b).await;
    ctl.shutdown().await;
}

async fn recv_skipping_set_peers(c: &mut ControllerConn) -> ToCaller {
    loop {
        match tokio::time::timeout(T, c.stream.recv::<ToCaller>()).await {
            Ok(Ok(Some(ToCaller::SetPeers(_)))) => continue,
            Ok(Ok(Some(m))) => return m,
            other => panic!("no message from the controller: {other:?}"),
        }
    }
}

/// The protocol's edges, driven by hand as a node: a delta before any full
/// report is answered with `SendReport`; a full report too large for one
/// frame comes in parts; deltas then patch the view; a delta that skips a
/// number is refused and answered with `SendReport` again; and the admin
/// answer for a table larger than a page arrives in pages and is put back
/// together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_step_deltas_ask_for_a_full_report_and_large_answers_come_in_pages() {
    use slim_controller::proto::{PIECE_BYTES, ReportDelta, RouteInfo, encoded_len};
    use slim_controller::report::{ReportTracker, TrackerConfig};
    init_tracing();
    let pki = Pki::new("example.org");
    let dir = tempfile::tempdir().unwrap();
    let ctl = start_controller(&pki, dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = ctl.local_addr();
    let identity = pki.identity("node/raw");
    let tls = slim_auth::client_config(
        &identity,
        &[slim_controller::ALPN_CONTROLLER],
        slim_auth::ServerMatch::Any,
    )
    .unwrap();
    let mut c = ControllerConn::connect(addr, "slim-controller", tls, Limits::default(), T)
        .await
        .unwrap();
    c.stream
        .send(&ToController::Register(slim_controller::proto::Register {
            node_id: "raw".into(),
            cluster: "test".into(),
            external_endpoint: None,
            listen: None,
            server_name: "slim-node".into(),
            epoch: 1,
            dialing: vec![],
            external_host: None,
        }))
        .await
        .unwrap();
    assert_eq!(recv_skipping_set_peers(&mut c).await, ToCaller::Registered);
    // A delta first: the controller has nothing to apply it to.
    c.stream
        .send(&ToController::ReportDelta(ReportDelta {
            seq: 41,
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(recv_skipping_set_peers(&mut c).await, ToCaller::SendReport);
    // 40,000 names (~2 MB): a full report in parts, as a node cuts it.
    let names: Vec<RouteInfo> = (0..40_000)
        .map(|i| RouteInfo {
            name: format!("acme/fleet-scale/name-{i:06}"),
            local_subscribers: 1,
            remote_peers: vec!["hub".into()],
        })
        .collect();
    let mut tracker = ReportTracker::new(
        TrackerConfig {
            refresh: Duration::from_secs(60),
            piece_bytes: PIECE_BYTES,
        },
        std::time::Instant::now(),
    );
    let parts = tracker.update(std::time::Instant::now(), vec![], Some(names.clone()));
    assert!(parts.len() > 2, "{} parts", parts.len());
    for p in &parts {
        assert!(encoded_len(p) < 2 * PIECE_BYTES);
        c.stream.send(p).await.unwrap();
    }
    // One name goes, one changes: a delta.
    let mut changed = names.clone();
    changed.remove(0);
    changed[0].local_subscribers = 7;
    for d in tracker.update(std::time::Instant::now(), vec![], Some(changed)) {
        c.stream.send(&d).await.unwrap();
    }
    let mut ops = admin_conn(&pki, addr).await;
    let deadline = Instant::now() + T;
    loop {
        let req = AdminRequest::ListRoutes { node: "raw".into() };
        let AdminResponse::Routes { routes, .. } = ops.admin(req, T).await.unwrap() else {
            panic!("not a route list");
        };
        if routes.len() == 39_999
            && routes[0].name == "acme/fleet-scale/name-000001"
            && routes[0].local_subscribers == 7
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the view does not hold the report and the delta: {} routes",
            routes.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The channel list (one entry per name) is larger than a page too.
    match ops.admin(AdminRequest::ListChannels, T).await.unwrap() {
        AdminResponse::Channels(ch) => {
            assert_eq!(ch.len(), 39_999);
            assert!(encoded_len(&ch) > PIECE_BYTES, "more than one page");
        }
        other => panic!("unexpected {other:?}"),
    }
    // A delta that skips a number: refused, and a full report is asked for.
    c.stream
        .send(&ToController::ReportDelta(ReportDelta {
            seq: 1000,
            routes_removed: vec!["acme/fleet-scale/name-000002".into()],
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(recv_skipping_set_peers(&mut c).await, ToCaller::SendReport);
    match ops
        .admin(AdminRequest::ListRoutes { node: "raw".into() }, T)
        .await
        .unwrap()
    {
        AdminResponse::Routes { routes, .. } => assert_eq!(routes.len(), 39_999, "not applied"),
        other => panic!("unexpected {other:?}"),
    }
    ops.close().await;
    c.close().await;
    ctl.shutdown().await;
}
