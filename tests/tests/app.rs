//! The front door (`slim_client::app`) against real in-process nodes: connect
//! by host name, raw pub/sub with policy refusals reported by `flush`,
//! reliable p2p sessions, MLS group channels (join by request before the
//! moderator exists, invitations, roster, removal, refusals by admission and
//! by the node's policy, roles), RPC (unary, streaming, deadline, no
//! responder) and closing.
//!
//! Identities come from the auth crate's development CA
//! (`IdentitySourceConfig::Dev`) in a temporary directory whose CA also
//! issued the node's SVID.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use slim_actors::{HookVerdict, NodeHandle, RoutedFrame};
use slim_auth::policy::Policy;
use slim_auth::{DevCa, IdentitySource, IdentitySourceConfig, SpiffeId};
use slim_client::app::{
    App, AppConfig, CreateOptions, IdentityConfig, JoinOptions, Role, SessionEvent, SessionKind,
    SessionOptions, SlimError,
};
use slim_tests::*;
use slim_wire::Mode;

/// Bound on each step of a test.
const T: Duration = Duration::from_secs(30);
const TD: &str = "example.org";

/// Runs `f` with a bound, failing the test with `what` if it does not finish.
async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(T, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

struct Env {
    dir: tempfile::TempDir,
    node: NodeHandle,
}

impl Env {
    async fn new(policy: Option<&str>) -> Env {
        init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        DevCa::init(dir.path(), TD).expect("dev CA");
        let pki = Pki {
            ca: DevCa::load(dir.path()).expect("load dev CA"),
        };
        let node = start_node(&pki, |c| {
            if let Some(p) = policy {
                c.policy = Policy::from_toml(p).expect("valid policy");
            }
        })
        .await;
        Env { dir, node }
    }

    fn url(&self) -> String {
        format!("slim://localhost:{}", self.node.local_addr().port())
    }

    async fn identity(&self, path: &str) -> IdentityConfig {
        let id = SpiffeId::parse(&spiffe(path)).expect("SPIFFE ID");
        let source = IdentitySource::start(IdentitySourceConfig::Dev {
            ca_dir: self.dir.path().to_owned(),
            id,
            ttl: Duration::from_secs(3600),
        })
        .await
        .expect("dev identity source");
        IdentityConfig::Source(source)
    }

    /// An agent with SPIFFE ID `spiffe://example.org/<path>` registered as
    /// `name` (an instance id is appended).
    async fn app(&self, path: &str, name: &str) -> App {
        let cfg = AppConfig::new(self.url(), name).identity(self.identity(path).await);
        within("connect", App::connect(cfg))
            .await
            .unwrap_or_else(|e| panic!("{name} connects: {e}"))
    }

    fn has_subscriber(&self, name: &str) -> bool {
        self.node
            .routes()
            .iter()
            .any(|r| r.name == name && r.local_subscribers > 0)
    }
}

fn spiffe(path: &str) -> String {
    format!("spiffe://{TD}/{path}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_by_host_name_and_unresolvable_name() {
    let env = Env::new(None).await;
    let a = env.app("agent/a", "acme/connect/a").await;
    assert!(a.name().has_instance(), "{}", a.name());
    assert_eq!(a.name().service_str(), "acme/connect/a");
    assert_eq!(a.spiffe_id().as_deref(), Some(spiffe("agent/a").as_str()));

    // An unresolvable host name: a connect error that says so.
    let cfg = AppConfig::new(
        format!(
            "slim://no-such-node.invalid:{}",
            env.node.local_addr().port()
        ),
        "acme/connect/b",
    )
    .identity(env.identity("agent/b").await);
    match within("connect to an unresolvable name", App::connect(cfg)).await {
        Err(SlimError::Connect(reason)) => {
            assert!(reason.contains("cannot resolve"), "{reason}");
            assert!(reason.contains("no-such-node.invalid"), "{reason}");
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    // A URL of another scheme is refused before any network activity.
    let cfg = AppConfig::new("http://localhost:1", "acme/connect/c");
    assert!(matches!(
        App::connect(cfg).await,
        Err(SlimError::Invalid(_))
    ));
    // So is a datagram size UDP cannot carry, naming the setting.
    let mut cfg = AppConfig::new(env.url(), "acme/connect/d");
    cfg.max_udp_payload = 1199;
    match App::connect(cfg).await {
        Err(SlimError::Invalid(why)) => assert!(why.contains("max_udp_payload"), "{why}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    a.close().await;
}

const POLICY: &str = r#"
[[rule]]
spiffe_id = "spiffe://example.org/agent/*"
register = ["acme/**"]
publish = ["acme/open/**"]
subscribe = ["acme/open/**", "acme/readonly/**"]

[[rule]]
spiffe_id = "spiffe://example.org/mod/*"
register = ["acme/**"]
publish = ["acme/**"]
subscribe = ["acme/**"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_pub_sub_and_policy_refusals() {
    let env = Env::new(Some(POLICY)).await;
    let a = env.app("agent/a", "acme/open/a").await;
    let b = env.app("agent/b", "acme/open/b").await;
    within("subscribe", b.subscribe("acme/open/news"))
        .await
        .unwrap();

    // Allowed: delivered with the sender's name and SPIFFE ID; flush is clean.
    a.publish("acme/open/news", Mode::Multicast, b"hello")
        .await
        .unwrap();
    within("flush", a.flush()).await.unwrap();
    let m = within("receive", b.receive()).await.unwrap();
    assert_eq!(&m.payload[..], b"hello");
    assert_eq!(m.source, a.name().to_string());
    assert_eq!(m.spiffe_id.as_deref(), Some(spiffe("agent/a").as_str()));
    assert_eq!(m.name, "acme/open/news");
    assert_eq!(m.mode, Some(Mode::Multicast));

    // Refused publish: flush raises it with the policy's reason, once.
    a.publish("acme/readonly/news", Mode::Multicast, b"leak")
        .await
        .unwrap();
    match within("flush after a refused publish", a.flush()).await {
        Err(SlimError::PermissionDenied(reason)) => {
            assert!(
                reason.contains("may not publish acme/readonly/news"),
                "{reason}"
            );
        }
        other => panic!("expected permission denied, got {other:?}"),
    }
    within("second flush", a.flush()).await.unwrap();
    // Reading raw traffic does not bring an already-reported refusal back.
    within("subscribe", a.subscribe("acme/open/news"))
        .await
        .unwrap();
    a.publish("acme/open/news", Mode::Multicast, b"to both")
        .await
        .unwrap();
    assert_eq!(
        &within("own message", a.receive()).await.unwrap().payload[..],
        b"to both"
    );
    assert_eq!(
        &within("b's copy", b.receive()).await.unwrap().payload[..],
        b"to both"
    );
    within("flush after receive", a.flush()).await.unwrap();
    // A refusal seen by `receive` before any flush is still reported by it.
    a.publish("acme/readonly/news", Mode::Multicast, b"leak 2")
        .await
        .unwrap();
    a.publish("acme/open/news", Mode::Multicast, b"marker")
        .await
        .unwrap();
    assert_eq!(
        &within("marker", a.receive()).await.unwrap().payload[..],
        b"marker"
    );
    assert!(matches!(
        within("flush reports it", a.flush()).await,
        Err(SlimError::PermissionDenied(_))
    ));
    within("then clean", a.flush()).await.unwrap();
    assert_eq!(
        &within("b's marker", b.receive()).await.unwrap().payload[..],
        b"marker"
    );

    // Refused subscribe: PermissionDenied at once, with the reason.
    match within("refused subscribe", a.subscribe("acme/secret/news")).await {
        Err(SlimError::PermissionDenied(reason)) => {
            assert!(
                reason.contains("may not subscribe acme/secret/news"),
                "{reason}"
            );
        }
        other => panic!("expected permission denied, got {other:?}"),
    }
    // Unicast needs a full name.
    assert!(matches!(
        a.publish("acme/open/b", Mode::Unicast, b"x").await,
        Err(SlimError::InvalidName(_))
    ));
    // The connection is still fine.
    a.publish("acme/open/news", Mode::Multicast, b"again")
        .await
        .unwrap();
    let m = within("receive again", b.receive()).await.unwrap();
    assert_eq!(&m.payload[..], b"again");

    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_refused_by_node_policy_is_permission_denied() {
    let env = Env::new(Some(POLICY)).await;
    let chan = "acme/readonly/room";
    let moderator = env.app("mod/m", "acme/mods/m").await;
    let _room = within(
        "create",
        moderator.create_channel(
            chan,
            CreateOptions {
                mls: true,
                admission: vec![spiffe("agent/*")],
            },
        ),
    )
    .await
    .unwrap();
    // The member may subscribe to the channel but not publish to it: its
    // join request is refused by the node, which must surface at once (the
    // join would otherwise keep retrying until its 10-minute timeout).
    let member = env.app("agent/reader", "acme/open/reader").await;
    let opts = JoinOptions {
        timeout: Duration::from_secs(600),
        ..JoinOptions::default()
    };
    match within("join refused by policy", member.join_channel(chan, opts)).await {
        Err(SlimError::PermissionDenied(reason)) => {
            eprintln!("the member's join_channel error: PermissionDenied({reason:?})");
            assert!(reason.contains("may not publish"), "{reason}");
            assert!(reason.contains(chan), "{reason}");
        }
        other => panic!("expected permission denied, got {other:?}"),
    }
    // Nor may it subscribe to this one: joining or creating it is refused.
    for r in [
        within(
            "join without subscribe rights",
            member.join_channel("acme/secret/room", JoinOptions::default()),
        )
        .await,
        within(
            "create without subscribe rights",
            member.create_channel("acme/secret/room", CreateOptions::default()),
        )
        .await,
    ] {
        match r {
            Err(SlimError::PermissionDenied(reason)) => {
                assert!(
                    reason.contains("may not subscribe acme/secret/room"),
                    "{reason}"
                );
            }
            other => panic!("expected permission denied, got {other:?}"),
        }
    }
    // An identity the policy does not know cannot connect.
    let cfg =
        AppConfig::new(env.url(), "acme/open/stranger").identity(env.identity("stranger/x").await);
    match within("connect refused", App::connect(cfg)).await {
        Err(SlimError::PermissionDenied(reason)) => {
            assert!(reason.contains(&spiffe("stranger/x")), "{reason}");
        }
        other => panic!("expected permission denied, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_reliable_session_in_order_exactly_once() {
    const N: u64 = 2000;
    let env = Env::new(None).await;
    let a = env.app("agent/a", "acme/p2p/a").await;
    let b = env.app("agent/b", "acme/p2p/b").await;

    let s = within(
        "open",
        a.open_session("acme/p2p/b", SessionOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(s.kind(), SessionKind::PointToPoint);
    assert_eq!(s.role(), Role::Initiator);
    assert!(s.is_reliable());
    assert_eq!(s.name(), b.name().to_string());
    assert_eq!(
        s.peer_spiffe_id().as_deref(),
        Some(spiffe("agent/b").as_str())
    );

    let r = within("accept", b.accept()).await.unwrap();
    assert_eq!(r.role(), Role::Responder);
    assert_eq!(r.name(), a.name().to_string());
    assert_eq!(
        r.peer_spiffe_id().as_deref(),
        Some(spiffe("agent/a").as_str())
    );

    let sender = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..N {
                s.publish(&seq_payload(i, 64)).await.expect("publish");
            }
        })
    };
    let mut seen = SeqSet::new(N);
    within("2,000 messages", async {
        for expected in 0..N {
            let m = r.receive().await.expect("message");
            let seq = payload_seq(&m.payload);
            assert_eq!(seq, expected, "out of order");
            assert!(seen.insert(seq), "duplicate {seq}");
            assert_eq!(m.spiffe_id.as_deref(), Some(spiffe("agent/a").as_str()));
        }
    })
    .await;
    within("sender", sender).await.unwrap();
    assert_eq!(seen.count(), N);
    assert_eq!(seen.duplicates(), 0);

    // The other direction.
    r.publish(b"pong").await.unwrap();
    let m = within("reply", s.receive()).await.unwrap();
    assert_eq!(&m.payload[..], b"pong");
    assert_eq!(m.spiffe_id.as_deref(), Some(spiffe("agent/b").as_str()));

    // Closing: the peer's receive ends with Closed; close is idempotent and
    // later calls fail with Closed.
    within("close", s.close()).await.unwrap();
    within("close again", s.close()).await.unwrap();
    assert!(matches!(
        s.publish(b"late").await,
        Err(SlimError::Closed(_))
    ));
    assert!(matches!(
        within("receive after close", s.receive()).await,
        Err(SlimError::Closed(_))
    ));
    assert!(matches!(
        within("peer sees the end", r.receive()).await,
        Err(SlimError::Closed(_))
    ));
    within("responder close", r.close()).await.unwrap();

    // An MLS session: encrypted end to end, same API.
    let s = within(
        "open MLS",
        a.open_session(
            "acme/p2p/b",
            SessionOptions {
                mls: true,
                ..SessionOptions::default()
            },
        ),
    )
    .await
    .unwrap();
    let r = within("accept MLS", b.accept()).await.unwrap();
    assert!(s.is_mls() && r.is_mls());
    for i in 0..20 {
        s.publish(&seq_payload(i, 16)).await.unwrap();
    }
    for i in 0..20 {
        let m = within("MLS message", r.receive()).await.unwrap();
        assert_eq!(payload_seq(&m.payload), i);
    }
    within("close MLS", s.close()).await.unwrap();

    // Nobody serves the name.
    match within(
        "open to nobody",
        a.open_session("acme/p2p/nobody", SessionOptions::default()),
    )
    .await
    {
        Err(SlimError::NoRoute(reason)) => assert!(reason.contains("acme/p2p/nobody"), "{reason}"),
        other => panic!("expected no route, got {other:?}"),
    }
    // Group operations on a p2p session are refused by role.
    assert!(matches!(
        r.invite("acme/p2p/c").await,
        Err(SlimError::WrongRole { op: "invite", .. })
    ));
    assert!(matches!(
        r.members().await,
        Err(SlimError::WrongRole { op: "members", .. })
    ));
    a.close().await;
    b.close().await;
}

fn admission() -> CreateOptions {
    CreateOptions {
        mls: true,
        admission: vec![spiffe("agent/*")],
    }
}

/// The next message of `s` within the bound.
async fn recv_msg(s: &slim_client::app::Session, what: &str) -> slim_client::app::Message {
    within(what, s.receive())
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mls_channel_join_invite_members_remove() {
    let env = Env::new(None).await;
    let chan = "acme/chat/room";
    let moderator = env.app("agent/mod", "acme/chat/mod").await;
    let a1 = env.app("agent/m1", "acme/chat/m1").await;
    let a2 = env.app("agent/m2", "acme/chat/m2").await;

    // Joining before the moderator exists: the SDK keeps asking.
    let join = {
        let a1 = a1.clone();
        tokio::spawn(async move { a1.join_channel(chan, JoinOptions::default()).await })
    };
    // Wait until the first request went unanswered and the SDK asked again
    // (each attempt carries a fresh key package: a different request).
    let requests = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
    {
        let requests = requests.clone();
        let joiner = a1.name().to_string();
        env.node
            .set_route_hook(Some(std::sync::Arc::new(move |r: &RoutedFrame<'_>| {
                if r.name == chan && r.from == joiner {
                    requests.lock().unwrap().insert(r.payload.to_vec());
                }
                HookVerdict::Forward
            })));
    }
    assert_eventually(T, "a second join attempt", || async {
        requests.lock().unwrap().len() >= 2
    })
    .await;
    env.node.set_route_hook(None);
    assert!(env.has_subscriber(chan));
    assert!(!join.is_finished());
    let m = within("create", moderator.create_channel(chan, admission()))
        .await
        .unwrap();
    assert_eq!(m.role(), Role::Moderator);
    assert_eq!(m.kind(), SessionKind::Group);
    assert!(m.is_mls());
    let s1 = within("join once the moderator is up", join)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s1.role(), Role::Member);
    assert_eq!(s1.name(), chan);

    // Invitation: the invitee takes it from accept().
    let invitee = a2.name().service_str().to_owned();
    let (invited, accepted) = within("invite", async {
        tokio::join!(m.invite(&invitee), a2.accept())
    })
    .await;
    invited.unwrap();
    let s2 = accepted.unwrap();
    assert_eq!(s2.role(), Role::Member);
    assert_eq!(s2.kind(), SessionKind::Group);
    assert_eq!(s2.name(), chan);

    // The roster, as the moderator and as the members see it.
    let expect = {
        let mut v = vec![
            (moderator.name().to_string(), spiffe("agent/mod")),
            (a1.name().to_string(), spiffe("agent/m1")),
            (a2.name().to_string(), spiffe("agent/m2")),
        ];
        v.sort();
        v
    };
    let roster = |s: slim_client::app::Session| async move {
        let mut v: Vec<(String, String)> = s
            .members()
            .await
            .unwrap()
            .into_iter()
            .map(|mi| (mi.name, mi.spiffe_id))
            .collect();
        v.sort();
        v
    };
    assert_eq!(roster(m.clone()).await, expect);
    for s in [&s1, &s2] {
        let s = s.clone();
        let expect = expect.clone();
        assert_eventually(T, "members see the full roster", move || {
            let (s, expect) = (s.clone(), expect.clone());
            async move { roster(s).await == expect }
        })
        .await;
    }

    // Every message carries its sender's SPIFFE ID (proven by MLS).
    m.publish(b"from the moderator").await.unwrap();
    for s in [&s1, &s2] {
        let msg = recv_msg(s, "moderator's message").await;
        assert_eq!(&msg.payload[..], b"from the moderator");
        assert_eq!(msg.spiffe_id.as_deref(), Some(spiffe("agent/mod").as_str()));
        assert_eq!(msg.source, moderator.name().to_string());
        assert_eq!(msg.name, chan);
    }
    s1.publish(b"from m1").await.unwrap();
    for s in [&m, &s2] {
        let msg = recv_msg(s, "m1's message").await;
        assert_eq!(&msg.payload[..], b"from m1");
        assert_eq!(msg.spiffe_id.as_deref(), Some(spiffe("agent/m1").as_str()));
    }
    s2.publish(b"from m2").await.unwrap();
    for s in [&m, &s1] {
        let msg = recv_msg(s, "m2's message").await;
        assert_eq!(&msg.payload[..], b"from m2");
        assert_eq!(msg.spiffe_id.as_deref(), Some(spiffe("agent/m2").as_str()));
    }

    // Moderator operations are refused to a member.
    assert_eq!(
        s1.invite("acme/chat/other").await,
        Err(SlimError::WrongRole {
            op: "invite",
            role: "member",
            kind: "group"
        })
    );
    assert!(matches!(
        s1.remove(&a2.name().to_string()).await,
        Err(SlimError::WrongRole { op: "remove", .. })
    ));

    // Removal: the removed member's receive ends with Closed, for good.
    within("remove", m.remove(&a2.name().to_string()))
        .await
        .unwrap();
    assert!(matches!(
        within("removed member's receive", s2.receive()).await,
        Err(SlimError::Closed(_))
    ));
    assert!(matches!(
        within("again", s2.receive()).await,
        Err(SlimError::Closed(_))
    ));
    assert!(matches!(
        s2.publish(b"after removal").await,
        Err(SlimError::Closed(_))
    ));
    let two = {
        let mut v = expect.clone();
        v.retain(|(n, _)| *n != a2.name().to_string());
        v
    };
    assert_eq!(roster(m.clone()).await, two);
    // The rest still talk.
    m.publish(b"still here").await.unwrap();
    assert_eq!(
        &recv_msg(&s1, "after the removal").await.payload[..],
        b"still here"
    );

    // A member leaves: the moderator hears of it.
    within("leave", s1.close()).await.unwrap();
    within("leave again", s1.close()).await.unwrap();
    assert!(matches!(s1.publish(b"x").await, Err(SlimError::Closed(_))));
    within("moderator sees the leave", async {
        loop {
            match m.next_event().await.unwrap() {
                SessionEvent::MemberLeft { member, .. } if member.name == a1.name().to_string() => {
                    break;
                }
                _ => {}
            }
        }
    })
    .await;
    within("close channel", m.close()).await.unwrap();
    within("close channel again", m.close()).await.unwrap();
    assert!(matches!(m.publish(b"x").await, Err(SlimError::Closed(_))));
    assert!(matches!(
        within("receive on a closed channel", m.receive()).await,
        Err(SlimError::Closed(_))
    ));
    assert!(matches!(m.members().await, Err(SlimError::Closed(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_refused_by_admission() {
    let env = Env::new(None).await;
    let chan = "acme/chat/members-only";
    let moderator = env.app("agent/mod", "acme/chat/mod").await;
    let m = within("create", moderator.create_channel(chan, admission()))
        .await
        .unwrap();
    let stranger = env.app("visitor/x", "acme/chat/visitor").await;
    match within(
        "refused join",
        stranger.join_channel(chan, JoinOptions::default()),
    )
    .await
    {
        Err(SlimError::JoinRefused(reason)) => {
            assert!(reason.contains(&spiffe("visitor/x")), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The refused joiner does not stay subscribed to the channel.
    let subscribers = env
        .node
        .routes()
        .iter()
        .find(|r| r.name == chan)
        .map(|r| r.local_subscribers);
    assert_eq!(subscribers, Some(1), "only the moderator");
    // The moderator's channel is unaffected: an admitted member joins.
    let ok = env.app("agent/ok", "acme/chat/ok").await;
    let s = within("join", ok.join_channel(chan, JoinOptions::default()))
        .await
        .unwrap();
    m.publish(b"welcome").await.unwrap();
    assert_eq!(&recv_msg(&s, "welcome").await.payload[..], b"welcome");
    // The moderator closes the channel: the member's receive ends.
    within("close", m.close()).await.unwrap();
    assert!(matches!(
        within("member after the close", s.receive()).await,
        Err(SlimError::Closed(_))
    ));
    assert!(matches!(s.publish(b"x").await, Err(SlimError::Closed(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_unary_stream_deadline_no_route() {
    let env = Env::new(None).await;
    let server = env.app("agent/srv", "acme/rpc/echo").await;
    let caller = env.app("agent/caller", "acme/rpc/caller").await;
    let idle = env.app("agent/idle", "acme/rpc/idle").await;
    within("serve", server.serve()).await.unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let server = server.clone();
        let held = held.clone();
        tokio::spawn(async move {
            while let Ok(req) = server.next_request().await {
                let held = held.clone();
                tokio::spawn(async move {
                    let body = String::from_utf8_lossy(&req.payload).into_owned();
                    if let Some(x) = body.strip_prefix("echo:") {
                        let who = req.caller_spiffe_id.clone().unwrap_or_default();
                        let _ = req.reply(format!("{x} for {who}").as_bytes()).await;
                    } else if let Some(n) = body.strip_prefix("stream:") {
                        for i in 0..n.parse::<u64>().expect("count") {
                            if req.send(&seq_payload(i, 16)).await.is_err() {
                                return;
                            }
                        }
                        let _ = req.end().await;
                    } else if body == "hang" {
                        held.lock().unwrap().push(req);
                    } else {
                        let _ = req.fail("no such method").await;
                    }
                });
            }
        });
    }

    // Unary; the responder sees the caller's authenticated SPIFFE ID.
    for i in 0..10 {
        let r = within(
            "unary",
            caller.request("acme/rpc/echo", format!("echo:{i}").as_bytes(), T),
        )
        .await
        .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&r),
            format!("{i} for {}", spiffe("agent/caller"))
        );
    }
    // Streaming: every response in order, then the end.
    let stream = within(
        "stream",
        caller.request_stream("acme/rpc/echo", b"stream:200", T),
    )
    .await
    .unwrap();
    for i in 0..200 {
        let item = within("stream item", stream.next()).await.unwrap();
        assert_eq!(payload_seq(&item.expect("an item")), i);
    }
    assert_eq!(within("end of stream", stream.next()).await.unwrap(), None);
    // A failure by the responder.
    assert_eq!(
        within("fail", caller.request("acme/rpc/echo", b"nope", T)).await,
        Err(SlimError::Remote("no such method".into()))
    );
    // Deadline expiry.
    match within(
        "deadline",
        caller.request("acme/rpc/echo", b"hang", Duration::from_millis(300)),
    )
    .await
    {
        Err(SlimError::Timeout(_)) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eventually(T, "the responder sees the cancellation", || {
        let held = held.clone();
        async move {
            held.lock()
                .unwrap()
                .first()
                .is_some_and(|r: &slim_client::app::Request| r.is_cancelled())
        }
    })
    .await;
    // Nobody registered under the name, or registered but not serving.
    for svc in ["acme/rpc/nobody", "acme/rpc/idle"] {
        match within("no route", caller.request(svc, b"echo:x", T)).await {
            Err(SlimError::NoRoute(reason)) => assert!(reason.contains(svc), "{reason}"),
            other => panic!("{svc}: expected no route, got {other:?}"),
        }
    }
    match within(
        "stream to nobody",
        caller.request_stream("acme/rpc/nobody", b"stream:1", T),
    )
    .await
    {
        Err(SlimError::NoRoute(_)) => {}
        Ok(s) => assert!(matches!(
            within("stream to nobody", s.next()).await,
            Err(SlimError::NoRoute(_))
        )),
        Err(e) => panic!("expected no route, got {e}"),
    }
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_idempotent_and_ends_every_call() {
    let env = Env::new(None).await;
    let a = env.app("agent/a", "acme/close/a").await;
    let b = env.app("agent/b", "acme/close/b").await;
    let s = within(
        "open",
        a.open_session("acme/close/b", SessionOptions::default()),
    )
    .await
    .unwrap();
    let r = within("accept", b.accept()).await.unwrap();

    // Calls waiting when the app closes end with Closed.
    within("serve", b.serve()).await.unwrap();
    let waiting = [
        {
            let b = b.clone();
            tokio::spawn(async move { b.next_request().await.map(|_| ()) })
        },
        {
            let b = b.clone();
            tokio::spawn(async move { b.receive().await.map(|_| ()) })
        },
        {
            let b = b.clone();
            tokio::spawn(async move { b.accept().await.map(|_| ()) })
        },
    ];
    // (A round trip through the node lets the waiting calls start.)
    within("flush", a.flush()).await.unwrap();
    within("close", b.close()).await;
    within("close again", b.close()).await;
    for w in waiting {
        assert!(matches!(
            within("a waiting call", w).await.unwrap(),
            Err(SlimError::Closed(_))
        ));
    }
    assert!(matches!(
        b.publish("acme/close/x", Mode::Multicast, b"x").await,
        Err(SlimError::Closed(_))
    ));
    assert!(matches!(
        b.subscribe("acme/close/x").await,
        Err(SlimError::Closed(_))
    ));
    assert!(matches!(b.flush().await, Err(SlimError::Closed(_))));
    assert!(matches!(
        b.request("acme/close/a", b"x", T).await,
        Err(SlimError::Closed(_))
    ));
    assert!(matches!(
        b.open_session("acme/close/a", SessionOptions::default())
            .await,
        Err(SlimError::Closed(_))
    ));
    assert!(matches!(
        b.create_channel("acme/close/c", CreateOptions::default())
            .await,
        Err(SlimError::Closed(_))
    ));
    // The session on the closed app ends too, and so does its peer's.
    assert!(matches!(
        within("receive on the closed app's session", r.receive()).await,
        Err(SlimError::Closed(_))
    ));
    within("close that session", r.close()).await.unwrap();
    drop(s);
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_of_a_name_nobody_serves_is_no_route() {
    let env = Env::new(None).await;
    let chan = "acme/chat/invite-nobody";
    let moderator = env.app("agent/mod", "acme/chat/mod").await;
    let m = within("create", moderator.create_channel(chan, admission()))
        .await
        .unwrap();
    // The node answers "no route" to the invitation: the call says so
    // instead of waiting for the invitation's deadline and timing out.
    match within("invite", m.invite("acme/nobody/here")).await {
        Err(SlimError::NoRoute(reason)) => {
            assert!(reason.contains("acme/nobody/here"), "{reason}");
        }
        other => panic!("expected NoRoute, got {other:?}"),
    }
    // The channel goes on: a later invitation of a live agent succeeds.
    let b = env.app("agent/b", "acme/chat/b").await;
    within("invite b", m.invite(b.name().as_str()))
        .await
        .expect("invite a live agent");
    let s = within("accept", b.accept()).await.expect("invited session");
    assert_eq!(s.name(), chan);
    within("close", m.close()).await.unwrap();
}
