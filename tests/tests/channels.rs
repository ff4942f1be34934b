//! Group channels with MLS over real nodes on loopback: churn, a token ring,
//! zero knowledge at the node, removed/forged/replayed senders, admission.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use slim_actors::{HookVerdict, RoutedFrame};
use slim_client::channel::{
    Channel, ChannelConfig, ChannelError, ChannelEvent, ChannelMember, ChannelModerator,
    ChannelOptions, Invitations, MemberInfo,
};
use slim_client::session::channel::{Ctl, control_packet, decode_control, session_id};
use slim_client::session::{Kind, Packet, SessionMux};
use slim_client::{Client, ClientConfig, Event};
use slim_mls::{CIPHERSUITE, MlsError, MlsIdentity};
use slim_tests::*;
use slim_wire::Mode;
use tokio::sync::mpsc;

/// Overall limit of one test (its own waits have shorter ones).
const TEST_DEADLINE: Duration = Duration::from_secs(300);

/// Runs a test body under an overall deadline: a hang fails fast, naming the
/// test, instead of stalling the whole CI run (one once ate 26 minutes).
const T: Duration = Duration::from_secs(20);

struct Agent {
    mux: SessionMux,
    mls: MlsIdentity,
    name: String,
    spiffe: String,
    _raw: mpsc::Receiver<Event>,
}

fn spiffe_of(n: &str) -> String {
    format!("spiffe://example.org/agent/{}", n.replace('/', "-"))
}

async fn agent(pki: &Pki, node: std::net::SocketAddr, n: &str) -> Agent {
    let svid = pki.identity(&format!("agent/{}", n.replace('/', "-")));
    agent_with(node, n, svid).await
}

async fn agent_with(node: std::net::SocketAddr, n: &str, svid: slim_auth::Identity) -> Agent {
    let mut cfg = ClientConfig::new(node, name(n), svid.clone());
    cfg.backoff.initial = Duration::from_millis(50);
    let c = Client::connect(cfg).await.expect("client connects");
    let (mux, raw) = SessionMux::new(c);
    Agent {
        mux,
        mls: MlsIdentity::new(&svid).expect("MLS identity"),
        name: n.to_owned(),
        spiffe: svid.spiffe_id.to_string(),
        _raw: raw,
    }
}

fn config(mls: bool) -> ChannelConfig {
    ChannelConfig {
        mls,
        admission: vec!["spiffe://example.org/agent/*".into()],
        ..ChannelConfig::default()
    }
}

fn opts(a: &Agent, mls: bool) -> ChannelOptions {
    ChannelOptions::new(config(mls), Some(a.mls.clone()))
}

/// The next event of a member within `T`.
async fn next(m: &mut ChannelMember) -> ChannelEvent {
    match tokio::time::timeout(T, m.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("{}: channel ended", m.channel()),
        Err(_) => panic!("{}: no event within {T:?}", m.channel()),
    }
}

/// Waits for a message event, skipping roster changes and refusals (the
/// tests that inject forgeries check those on the member they target).
async fn next_message(m: &mut ChannelMember) -> (String, String, Vec<u8>) {
    loop {
        match next(m).await {
            ChannelEvent::Message {
                sender,
                spiffe_id,
                payload,
                ..
            } => return (sender, spiffe_id, payload.to_vec()),
            ChannelEvent::MembersChanged { .. } | ChannelEvent::Rejected { .. } => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
}

async fn mod_event(m: &mut ChannelModerator, what: &str) -> ChannelEvent {
    match tokio::time::timeout(T, m.recv()).await {
        Ok(Some(e)) => e,
        _ => panic!("moderator: no event while waiting for {what}"),
    }
}

/// Waits until the moderator reports `n` completed admissions; returns the
/// events it read.
async fn admitted(m: &mut ChannelModerator, n: usize) -> Vec<ChannelEvent> {
    let mut seen = 0;
    let mut out = Vec::new();
    while seen < n {
        let e = mod_event(m, "admissions").await;
        match &e {
            ChannelEvent::MemberJoined { .. } => seen += 1,
            ChannelEvent::MembersChanged { .. } | ChannelEvent::Message { .. } => {}
            other => panic!("moderator: unexpected {other:?}"),
        }
        out.push(e);
    }
    out
}

fn u64_of(p: &[u8]) -> u64 {
    u64::from_be_bytes(p[..8].try_into().expect("8-byte payload prefix"))
}

/// What one member's collector saw.
#[derive(Default, Debug)]
struct Seen {
    messages: Vec<u64>,
    removed: bool,
    closed: bool,
    rejected: Vec<String>,
    members_at_end: Vec<MemberInfo>,
}

/// Collects a member's events until the channel closes.
fn collect(mut m: ChannelMember) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let mut s = Seen {
            members_at_end: m.joined().1.to_vec(),
            ..Seen::default()
        };
        loop {
            let ev = match tokio::time::timeout(Duration::from_secs(60), m.recv()).await {
                Ok(Some(e)) => e,
                _ => break,
            };
            match ev {
                ChannelEvent::Message { payload, .. } => s.messages.push(u64_of(&payload)),
                ChannelEvent::Removed { .. } => s.removed = true,
                ChannelEvent::ChannelClosed { .. } => {
                    s.closed = true;
                    break;
                }
                ChannelEvent::Rejected { error, .. } => s.rejected.push(error.reason().into()),
                ChannelEvent::MembersChanged { .. } => {
                    if let Ok((_, r)) = m.members().await {
                        s.members_at_end = r;
                    }
                }
                _ => {}
            }
        }
        s
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_every_message_reaches_exactly_the_members_of_its_epoch() {
    deadline(
        TEST_DEADLINE,
        "churn_every_message_reaches_exactly_the_members_of_its_epoch",
        async {
            init_tracing();
            let pki = Pki::new("example.org");
            let node = start_node(&pki, |_| {}).await;
            let addr = node.local_addr();
            let chan = name("acme/chat/churn");
            let modr = agent(&pki, addr, "acme/chat/mod/0").await;
            let mut moderator = Channel::create(&modr.mux, &chan, opts(&modr, true))
                .await
                .expect("create");
            // 4 initial members + 9 to invite, all accepting invitations.
            let mut collectors: HashMap<String, tokio::task::JoinHandle<Seen>> = HashMap::new();
            let mut accepted = Vec::new();
            let mut agents = Vec::new();
            for i in 0..13 {
                let a = agent(&pki, addr, &format!("acme/chat/m{i}/0")).await;
                let inv = Invitations::listen(&a.mux, 16).expect("acceptor");
                accepted.push((a.name.clone(), inv.auto_accept(opts(&a, true))));
                agents.push(a);
            }
            let mut order: Vec<String> = Vec::new();
            for (n, _) in accepted.iter().take(4) {
                moderator.invite(n).await.unwrap();
                order.push(n.clone());
            }
            for (n, rx) in accepted.iter_mut().take(4) {
                let m = tokio::time::timeout(T, rx.recv())
                    .await
                    .expect("joined in time")
                    .expect("acceptor alive")
                    .expect("joined");
                collectors.insert(n.clone(), collect(m));
            }
            let mut mod_events = admitted(&mut moderator, 4).await;
            let mut sent: Vec<(u64, u64)> = Vec::new();
            let mut next_invite = 4;
            let mut chosen = BTreeSet::new();
            let mut ticker = tokio::time::interval(Duration::from_millis(100));
            for i in 0..99u64 {
                ticker.tick().await;
                let p = moderator
                    .publish(&seq_payload(i, 64))
                    .await
                    .expect("publish");
                sent.push((i, p.epoch));
                if i % 10 == 9 {
                    // The oldest member not already chosen. Changes run one at a
                    // time; on a loaded machine (debug build, 2 shared cores) they can
                    // lag the 1 s cycle, and then every present member may already be
                    // queued for removal: wait for an admission to complete.
                    let deadline = tokio::time::Instant::now() + T;
                    let victim = loop {
                        let (_, now) = moderator.members().await.unwrap();
                        let found = order
                            .iter()
                            .find(|n| now.iter().any(|m| &m.name == *n) && !chosen.contains(*n));
                        if let Some(v) = found {
                            break v.clone();
                        }
                        assert!(
                            tokio::time::Instant::now() < deadline,
                            "no member to remove"
                        );
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    };
                    chosen.insert(victim.clone());
                    moderator.remove(&victim).await.expect("remove");
                    let (n, _) = &accepted[next_invite];
                    moderator.invite(n).await.expect("invite");
                    order.push(n.clone());
                    next_invite += 1;
                }
                // Accepted invitations become collectors as they complete.
                for (n, rx) in accepted.iter_mut() {
                    if let Ok(r) = rx.try_recv() {
                        collectors.insert(n.clone(), collect(r.expect("joined")));
                    }
                }
                while let Some(e) = moderator.try_recv() {
                    mod_events.push(e);
                }
            }
            assert_eq!(next_invite, 13);
            // Let the last changes complete.
            assert_eventually(T, "membership changes complete", || async {
                moderator.pending().await.unwrap() == 0
            })
            .await;
            for (n, rx) in accepted.iter_mut() {
                if !collectors.contains_key(n) {
                    let r = tokio::time::timeout(T, rx.recv())
                        .await
                        .expect("joined in time");
                    collectors.insert(n.clone(), collect(r.unwrap().expect("joined")));
                }
            }
            let (_, final_roster) = moderator.members().await.unwrap();
            mod_events.extend(moderator.close("end of test").await.expect("close"));

            // Membership per epoch, from the moderator's commits.
            let mut roster: BTreeSet<String> = [modr.name.clone()].into_iter().collect();
            let mut by_epoch: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
            by_epoch.insert(0, roster.clone());
            let (mut joined, mut left) = (0, 0);
            for e in &mod_events {
                match e {
                    ChannelEvent::MembersChanged {
                        epoch,
                        added,
                        removed,
                    } => {
                        for a in added {
                            roster.insert(a.name.clone());
                        }
                        for r in removed {
                            roster.remove(&r.name);
                        }
                        by_epoch.insert(*epoch, roster.clone());
                    }
                    ChannelEvent::MemberJoined { .. } => joined += 1,
                    ChannelEvent::MemberLeft { .. } => left += 1,
                    ChannelEvent::Rejected { .. } | ChannelEvent::MemberUnresponsive { .. } => {
                        panic!("moderator: {e:?}")
                    }
                    _ => {}
                }
            }
            assert_eq!((joined, left), (13, 9), "{mod_events:#?}");
            let final_names: BTreeSet<String> =
                final_roster.iter().map(|m| m.name.clone()).collect();
            assert_eq!(final_names, roster, "final roster");
            assert_eq!(final_names.len(), 5);

            let mut checked = 0;
            for (n, h) in collectors {
                let seen = h.await.expect("collector");
                let want: BTreeSet<u64> = sent
                    .iter()
                    .filter(|(_, e)| by_epoch.get(e).is_some_and(|r| r.contains(&n)))
                    .map(|(m, _)| *m)
                    .collect();
                let got: BTreeSet<u64> = seen.messages.iter().copied().collect();
                assert_eq!(got.len(), seen.messages.len(), "{n}: duplicates");
                assert_eq!(got, want, "{n}: exactly the messages of its epochs");
                let mut sorted = seen.messages.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, seen.messages, "{n}: in order");
                assert!(seen.closed, "{n} was told the channel closed");
                if final_names.contains(&n) {
                    assert!(!seen.removed, "{n}");
                    assert!(seen.rejected.is_empty(), "{n}: {:?}", seen.rejected);
                    let names: BTreeSet<String> =
                        seen.members_at_end.iter().map(|m| m.name.clone()).collect();
                    assert_eq!(names, final_names, "{n}'s roster: {seen:?}");
                } else {
                    assert!(seen.removed, "{n} was told it was removed");
                    // Still subscribed after removal: later traffic is refused, typed.
                    assert!(
                        !seen.rejected.is_empty()
                            && seen
                                .rejected
                                .iter()
                                .all(|r| r == "evicted" || r == "removed"),
                        "{n}: {:?}",
                        seen.rejected
                    );
                }
                checked += 1;
            }
            assert_eq!(checked, 13);
            node.shutdown(Duration::from_secs(1)).await;
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_member_token_ring_then_close() {
    deadline(TEST_DEADLINE, "ten_member_token_ring_then_close", async {
        init_tracing();
        let pki = Pki::new("example.org");
        let node = start_node(&pki, |_| {}).await;
        let addr = node.local_addr();
        let chan = name("acme/chat/ring");
        let modr = agent(&pki, addr, "acme/ring/mod/0").await;
        let mut moderator = Channel::create(&modr.mux, &chan, opts(&modr, true))
            .await
            .unwrap();
        let mut ring = vec![modr.name.clone()];
        let mut members = Vec::new();
        let mut agents = Vec::new();
        for i in 1..10 {
            let a = agent(&pki, addr, &format!("acme/ring/m{i}/0")).await;
            let modname = name(&modr.name);
            let m = Channel::join(&a.mux, &chan, Some(&modname), opts(&a, true))
                .await
                .expect("join by request");
            ring.push(a.name.clone());
            members.push(m);
            agents.push(a);
        }
        admitted(&mut moderator, 9).await;
        // Every member must have seen every later admission before the ring starts.
        for m in members.iter_mut() {
            assert_eventually(T, "roster complete", || async {
                m.members().await.unwrap().1.len() == 10
            })
            .await;
        }
        const HOPS: u64 = 30;
        let ring = Arc::new(ring);
        let mut tasks = Vec::new();
        for (i, mut m) in members.into_iter().enumerate() {
            let pos = i + 1;
            let ring = ring.clone();
            tasks.push(tokio::spawn(async move {
                let mut hops = Vec::new();
                loop {
                    match tokio::time::timeout(T, m.recv()).await {
                        Ok(Some(ChannelEvent::Message {
                            sender,
                            spiffe_id,
                            payload,
                            ..
                        })) => {
                            let k = u64_of(&payload);
                            let from = ring[(k as usize) % 10].clone();
                            assert_eq!(sender, from, "hop {k} from its ring position");
                            assert_eq!(spiffe_id, spiffe_of(&from), "verified sender");
                            hops.push(k);
                            if (k as usize + 1) % 10 == pos && k + 1 < HOPS {
                                m.publish(&(k + 1).to_be_bytes()).await.unwrap();
                                hops.push(k + 1);
                            }
                        }
                        Ok(Some(ChannelEvent::ChannelClosed { reason })) => {
                            assert_eq!(reason, "ring done");
                            return hops;
                        }
                        Ok(Some(ChannelEvent::MembersChanged { .. })) => {}
                        other => panic!("member {pos}: {other:?}"),
                    }
                }
            }));
        }
        moderator.publish(&0u64.to_be_bytes()).await.unwrap();
        let mut mine = vec![0u64];
        while (mine.len() as u64) < HOPS {
            match mod_event(&mut moderator, "ring hops").await {
                ChannelEvent::Message { payload, .. } => {
                    let k = u64_of(&payload);
                    mine.push(k);
                    if (k + 1).is_multiple_of(10) && k + 1 < HOPS {
                        moderator.publish(&(k + 1).to_be_bytes()).await.unwrap();
                        mine.push(k + 1);
                    }
                }
                other => panic!("moderator: {other:?}"),
            }
        }
        mine.sort_unstable();
        assert_eq!(mine, (0..HOPS).collect::<Vec<_>>());
        let rest = moderator.close("ring done").await.unwrap();
        assert!(
            rest.iter()
                .any(|e| matches!(e, ChannelEvent::ChannelClosed { .. })),
            "{rest:?}"
        );
        for t in tasks {
            let mut hops = t.await.expect("member task");
            hops.sort_unstable();
            assert_eq!(hops, (0..HOPS).collect::<Vec<_>>(), "every hop seen");
        }
        node.shutdown(Duration::from_secs(1)).await;
    })
    .await
}

/// Records every routed payload.
fn recorder(node: &slim_actors::NodeHandle) -> Arc<Mutex<Vec<Vec<u8>>>> {
    let frames: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let f = frames.clone();
    node.set_route_hook(Some(Arc::new(move |r: &RoutedFrame<'_>| {
        f.lock().unwrap().push(r.payload.to_vec());
        HookVerdict::Forward
    })));
    frames
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn canary_exchange(mls: bool) -> (bool, usize) {
    let pki = Pki::new("example.org");
    let node = start_node(&pki, |_| {}).await;
    let frames = recorder(&node);
    let addr = node.local_addr();
    let chan = name("acme/chat/secret");
    let modr = agent(&pki, addr, "acme/zk/mod/0").await;
    let mut moderator = Channel::create(&modr.mux, &chan, opts(&modr, mls))
        .await
        .unwrap();
    let a = agent(&pki, addr, "acme/zk/a/0").await;
    let b = agent(&pki, addr, "acme/zk/b/0").await;
    let mut ma = Channel::join(&a.mux, &chan, None, opts(&a, mls))
        .await
        .unwrap();
    let mut mb = Channel::join(&b.mux, &chan, None, opts(&b, mls))
        .await
        .unwrap();
    admitted(&mut moderator, 2).await;
    assert_eventually(T, "a sees b", || async {
        ma.members().await.unwrap().1.len() == 3
    })
    .await;
    let canary: [u8; 32] = rand::random();
    let mut msg = 7u64.to_be_bytes().to_vec();
    msg.extend_from_slice(&canary);
    ma.publish(&msg).await.unwrap();
    mb.publish(&msg).await.unwrap();
    let (from, id, got) = next_message(&mut mb).await;
    assert_eq!(
        (from.as_str(), id.as_str()),
        (a.name.as_str(), a.spiffe.as_str())
    );
    assert_eq!(got, msg, "b decrypts a's canary");
    let (from, _, got) = next_message(&mut ma).await;
    assert_eq!(from, b.name);
    assert_eq!(got, msg, "a decrypts b's canary");
    for _ in 0..2 {
        match mod_event(&mut moderator, "canaries").await {
            ChannelEvent::Message { payload, .. } => assert_eq!(payload.to_vec(), msg),
            other => panic!("{other:?}"),
        }
    }
    node.set_route_hook(None);
    let frames = frames.lock().unwrap();
    let leaked = frames.iter().any(|f| contains(f, &canary));
    drop(moderator);
    (leaked, frames.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_knowledge_the_node_never_sees_the_canary() {
    deadline(
        TEST_DEADLINE,
        "zero_knowledge_the_node_never_sees_the_canary",
        async {
            init_tracing();
            let (leaked, frames) = canary_exchange(true).await;
            assert!(
                frames >= 10,
                "the hook saw the channel's traffic ({frames} frames)"
            );
            assert!(
                !leaked,
                "canary visible in a routed frame of an MLS channel"
            );
            // The same exchange without MLS: the hook does see it, so the check above
            // is able to fail.
            let (leaked, _) = canary_exchange(false).await;
            assert!(
                leaked,
                "plaintext channel: the recorder should see the canary"
            );
        },
    )
    .await
}

/// A key package for `svid`'s genuine credential, signed with an MLS key the
/// credential does not bind.
fn key_package_with_unbound_key(svid_mls: &MlsIdentity) -> Vec<u8> {
    let provider = OpenMlsRustCrypto::default();
    let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
    let cwk = CredentialWithKey {
        credential: BasicCredential::new(svid_mls.credential_bytes().to_vec()).into(),
        signature_key: signer.public().into(),
    };
    KeyPackage::builder()
        .build(CIPHERSUITE, &provider, &signer, cwk)
        .unwrap()
        .key_package()
        .tls_serialize_detached()
        .unwrap()
}

/// Waits for a control packet of `kind`'s decoded body on a raw client.
async fn control_from(c: &Client) -> Ctl {
    loop {
        let d = slim_tests::next_message(c, T).await;
        let Ok(p) = Packet::decode(&d.payload) else {
            continue;
        };
        if p.kind == Kind::Control
            && let Ok(ctl) = decode_control(&p)
        {
            return ctl;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_forged_and_replayed_senders_are_refused() {
    deadline(
        TEST_DEADLINE,
        "removed_forged_and_replayed_senders_are_refused",
        async {
            init_tracing();
            let pki = Pki::new("example.org");
            let node = start_node(&pki, |_| {}).await;
            let frames = recorder(&node);
            let addr = node.local_addr();
            let chan = name("acme/chat/guarded");
            let modr = agent(&pki, addr, "acme/g/mod/0").await;
            let mut moderator = Channel::create(&modr.mux, &chan, opts(&modr, true))
                .await
                .unwrap();
            let a = agent(&pki, addr, "acme/g/a/0").await;
            let b = agent(&pki, addr, "acme/g/b/0").await;
            let modname = name(&modr.name);
            let mut ma = Channel::join(&a.mux, &chan, Some(&modname), opts(&a, true))
                .await
                .unwrap();
            let mut mb = Channel::join(&b.mux, &chan, Some(&modname), opts(&b, true))
                .await
                .unwrap();
            admitted(&mut moderator, 2).await;
            assert_eventually(T, "a sees b", || async {
                ma.members().await.unwrap().1.len() == 3
            })
            .await;

            // 1. Replay: a's ciphertext, re-published by an attacker under its own
            //    name with a fresh sequence number, reaches MLS, which refuses it.
            ma.publish(&1u64.to_be_bytes()).await.unwrap();
            let (_, _, got) = next_message(&mut mb).await;
            assert_eq!(u64_of(&got), 1);
            let captured = {
                let f = frames.lock().unwrap();
                f.iter()
                    .rev()
                    .filter_map(|b| Packet::decode(b).ok())
                    .find(|p| p.kind == Kind::Data && p.sender == a.name)
                    .expect("a's data packet was routed")
            };
            let eve = client(&pki, addr, "acme/g/eve/0").await;
            let mut replay = captured.clone();
            replay.sender = eve.name().as_str().to_owned();
            replay.seq = 0;
            replay.base = 0;
            eve.publish(&chan, Mode::Multicast, &replay.encode().unwrap())
                .await
                .unwrap();
            match next(&mut mb).await {
                ChannelEvent::Rejected { sender, error } => {
                    assert_eq!(sender, eve.name().as_str());
                    assert!(
                        matches!(error, ChannelError::Mls(MlsError::Replay)),
                        "{error:?}"
                    );
                }
                other => panic!("expected a replay rejection, got {other:?}"),
            }
            // 2. Forged packet sender: a packet claiming to be a's, routed from eve.
            let mut forged = captured.clone();
            forged.seq = 1;
            eve.publish(&chan, Mode::Multicast, &forged.encode().unwrap())
                .await
                .unwrap();
            match next(&mut mb).await {
                ChannelEvent::Rejected { sender, error } => {
                    assert_eq!(sender, eve.name().as_str());
                    assert_eq!(error.reason(), "session", "{error:?}");
                }
                other => panic!("expected a sender-mismatch rejection, got {other:?}"),
            }
            // 3. Forged MLS key: eve's genuine credential with a key it does not bind.
            let eve_mls = MlsIdentity::new(&pki.identity("agent/acme-g-eve-0")).unwrap();
            let kp = key_package_with_unbound_key(&eve_mls);
            let join = control_packet(
                chan.as_str(),
                eve.name().as_str(),
                &Ctl::Join {
                    key_package: kp,
                    invited: false,
                },
            )
            .unwrap();
            eve.publish(&modname, Mode::Unicast, &join).await.unwrap();
            match control_from(&eve).await {
                Ctl::Refused { reason } => assert!(reason.contains("binding"), "{reason}"),
                other => panic!("expected a refusal, got {other:?}"),
            }
            // (The moderator also saw a's message and refused eve's replay/forgery.)
            loop {
                match mod_event(&mut moderator, "refusal").await {
                    ChannelEvent::JoinRequestRefused { name, reason, .. } => {
                        assert_eq!(name, eve.name().as_str());
                        assert!(reason.contains("binding"), "{reason}");
                        break;
                    }
                    ChannelEvent::Message { .. } | ChannelEvent::Rejected { .. } => {}
                    other => panic!("{other:?}"),
                }
            }
            let (_, roster) = moderator.members().await.unwrap();
            assert_eq!(roster.len(), 3, "eve was not added");

            // 4. Removed member: b stays subscribed, receives the ciphertext, cannot
            //    decrypt it.
            moderator.remove(&b.name).await.unwrap();
            loop {
                match mod_event(&mut moderator, "removal").await {
                    ChannelEvent::MemberLeft { member, .. } => {
                        assert_eq!(member.name, b.name);
                        break;
                    }
                    ChannelEvent::MembersChanged { .. } => {}
                    other => panic!("{other:?}"),
                }
            }
            loop {
                match next(&mut mb).await {
                    ChannelEvent::Removed { .. } => break,
                    ChannelEvent::MembersChanged { .. } => {}
                    other => panic!("b: {other:?}"),
                }
            }
            let secret = 99u64.to_be_bytes();
            moderator.publish(&secret).await.unwrap();
            let (_, _, got) = next_message(&mut ma).await;
            assert_eq!(got, secret, "a still reads");
            match next(&mut mb).await {
                ChannelEvent::Rejected { error, .. } => {
                    assert!(
                        matches!(
                            error,
                            ChannelError::Mls(MlsError::Evicted | MlsError::WrongEpoch)
                        ),
                        "{error:?}"
                    );
                }
                other => panic!("b must not read after removal: {other:?}"),
            }
            node.shutdown(Duration::from_secs(1)).await;
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_request_refused_outside_policy_accepted_inside() {
    deadline(
        TEST_DEADLINE,
        "join_request_refused_outside_policy_accepted_inside",
        async {
            init_tracing();
            let pki = Pki::new("example.org");
            let node = start_node(&pki, |_| {}).await;
            let addr = node.local_addr();
            let chan = name("acme/chat/policy");
            let modr = agent(&pki, addr, "acme/p/mod/0").await;
            let mut moderator = Channel::create(&modr.mux, &chan, opts(&modr, true))
                .await
                .unwrap();
            let modname = name(&modr.name);
            // Outside `spiffe://example.org/agent/*`.
            let out = agent_with(addr, "acme/p/out/0", pki.identity("contractors/x")).await;
            let e = Channel::join(&out.mux, &chan, Some(&modname), opts(&out, true))
                .await
                .err()
                .expect("refused");
            match e {
                ChannelError::JoinRefused { reason } => {
                    assert!(
                        reason.contains("spiffe://example.org/contractors/x")
                            && reason.contains("not allowed"),
                        "{reason}"
                    )
                }
                other => panic!("expected JoinRefused, got {other:?}"),
            }
            match mod_event(&mut moderator, "refusal").await {
                ChannelEvent::JoinRequestRefused { spiffe_id, .. } => {
                    assert_eq!(
                        spiffe_id.as_deref(),
                        Some("spiffe://example.org/contractors/x")
                    )
                }
                other => panic!("{other:?}"),
            }
            // Inside.
            let ok = agent(&pki, addr, "acme/p/in/0").await;
            let m = Channel::join(&ok.mux, &chan, Some(&modname), opts(&ok, true))
                .await
                .expect("admitted");
            let (_, members) = m.joined();
            let ids: Vec<&str> = members.iter().map(|m| m.spiffe_id.as_str()).collect();
            assert!(ids.contains(&ok.spiffe.as_str()), "{ids:?}");
            admitted(&mut moderator, 1).await;
            assert_eq!(session_id(chan.as_str()), session_id("acme/chat/policy"));
            node.shutdown(Duration::from_secs(1)).await;
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svid_rotation_rebinds_and_keeps_membership() {
    deadline(
        TEST_DEADLINE,
        "svid_rotation_rebinds_and_keeps_membership",
        async {
            init_tracing();
            let pki = Pki::new("example.org");
            let node = start_node(&pki, |_| {}).await;
            let addr = node.local_addr();
            let chan = name("acme/chat/rotate");
            let modr = agent(&pki, addr, "acme/r/mod/0").await;
            let mut moderator = Channel::create(&modr.mux, &chan, opts(&modr, true))
                .await
                .unwrap();
            let modname = name(&modr.name);
            let a = agent(&pki, addr, "acme/r/a/0").await;
            let b = agent(&pki, addr, "acme/r/b/0").await;
            let ma = Channel::join(&a.mux, &chan, Some(&modname), opts(&a, true))
                .await
                .unwrap();
            let mut mb = Channel::join(&b.mux, &chan, Some(&modname), opts(&b, true))
                .await
                .unwrap();
            admitted(&mut moderator, 2).await;
            let (epoch, _) = ma.members().await.unwrap();
            // a's SVID rotates (same SPIFFE ID, new key and certificate).
            let rotated = Arc::new(pki.identity("agent/acme-r-a-0"));
            ma.rebind(rotated).await.expect("rebind");
            loop {
                match next(&mut mb).await {
                    ChannelEvent::CredentialUpdated { member, epoch: e } => {
                        assert_eq!(member.name, a.name);
                        assert_eq!(e, epoch + 1);
                        break;
                    }
                    ChannelEvent::MembersChanged { .. } => {}
                    other => panic!("b: {other:?}"),
                }
            }
            loop {
                match mod_event(&mut moderator, "rebind completion").await {
                    ChannelEvent::CredentialUpdated { member, .. } => {
                        assert_eq!(member.name, a.name);
                        break;
                    }
                    ChannelEvent::MembersChanged { .. } => {}
                    other => panic!("moderator: {other:?}"),
                }
            }
            ma.publish(&42u64.to_be_bytes())
                .await
                .expect("publish after rebind");
            let (from, id, got) = next_message(&mut mb).await;
            assert_eq!((from, id), (a.name.clone(), a.spiffe.clone()));
            assert_eq!(u64_of(&got), 42);
            assert_eq!(ma.members().await.unwrap().0, epoch + 1);
            node.shutdown(Duration::from_secs(1)).await;
        },
    )
    .await
}

/// Kills a child process on drop (a failing test must not leak slimctl).
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `slimctl channel create|join|members|publish --session` as processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slimctl_create_join_members_publish() {
    deadline(
        TEST_DEADLINE,
        "slimctl_create_join_members_publish",
        async {
            use std::io::{BufRead, BufReader};
            use std::process::{Command, Stdio};
            init_tracing();
            let slimctl = slim_tests::netns::bin("slimctl");
            let pki = Pki::new("example.org");
            let node = start_node(&pki, |_| {}).await;
            let dir = tempfile::tempdir().unwrap();
            for who in ["mod", "alice", "bob", "outsider"] {
                let path = if who == "outsider" {
                    "contractors/x".to_string()
                } else {
                    format!("agent/{who}")
                };
                let id =
                    slim_auth::SpiffeId::parse(&format!("spiffe://example.org/{path}")).unwrap();
                pki.ca
                    .issue_to_dir(&id, Duration::from_secs(3600), &dir.path().join(who))
                    .unwrap();
            }
            let cmd = |who: &str, args: &[&str]| {
                let mut c = Command::new(&slimctl);
                c.args(args)
                    .arg("--identity")
                    .arg(dir.path().join(who))
                    .args(["--as", &format!("acme/cli/{who}/0")])
                    .env("SLIMCTL_NODE", node.local_addr().to_string())
                    .env_remove("SPIFFE_ENDPOINT_SOCKET")
                    .stdin(Stdio::null());
                c
            };
            let mut moderator = Proc(
                cmd(
                    "mod",
                    &[
                        "channel",
                        "create",
                        "acme/cli/room",
                        "--allow",
                        "spiffe://example.org/agent/*",
                    ],
                )
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
            );
            // The moderator announces itself on stderr once the channel exists.
            let mut err = BufReader::new(moderator.0.stderr.take().unwrap());
            let mut line = String::new();
            let announced = tokio::task::spawn_blocking(move || {
                err.read_line(&mut line).unwrap();
                (line, err)
            });
            let (line, err) = tokio::time::timeout(T, announced).await.unwrap().unwrap();
            assert!(line.starts_with("moderating acme/cli/room"), "{line}");
            // Keep draining the moderator's log so it never blocks on a full pipe.
            let log = tokio::task::spawn_blocking(move || {
                err.lines().map_while(Result::ok).collect::<Vec<_>>()
            });
            let mut join = Proc(
                cmd(
                    "alice",
                    &[
                        "-o",
                        "json",
                        "channel",
                        "join",
                        "acme/cli/room",
                        "--moderator",
                        "acme/cli/mod/0",
                        "--count",
                        "1",
                        "--timeout",
                        "20s",
                    ],
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
            );
            let mut out = BufReader::new(join.0.stdout.take().unwrap());
            let joined = tokio::task::spawn_blocking(move || {
                let mut l = String::new();
                out.read_line(&mut l).unwrap();
                (l, out)
            });
            let (first, out) = tokio::time::timeout(T, joined).await.unwrap().unwrap();
            let v: serde_json::Value = serde_json::from_str(&first).unwrap();
            assert_eq!(v["event"], "joined", "{first}");
            // members: asks the moderator for the roster (bob is admitted by
            // the channel's policy) without joining
            let members = cmd(
                "bob",
                &[
                    "-o",
                    "json",
                    "channel",
                    "members",
                    "acme/cli/room",
                    "--moderator",
                    "acme/cli/mod/0",
                ],
            )
            .output()
            .unwrap();
            assert!(
                members.status.success(),
                "{}",
                String::from_utf8_lossy(&members.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&members.stdout).unwrap();
            let names: Vec<&str> = v["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["name"].as_str().unwrap())
                .collect();
            assert!(
                names.contains(&"acme/cli/alice/0") && names.contains(&"acme/cli/mod/0"),
                "{v}"
            );
            // publish --session (MLS), read by alice with sender name and SPIFFE ID
            let publ = cmd(
                "bob",
                &[
                    "channel",
                    "publish",
                    "acme/cli/room",
                    "hello over MLS",
                    "--session",
                    "--moderator",
                    "acme/cli/mod/0",
                ],
            )
            .output()
            .unwrap();
            assert!(
                publ.status.success(),
                "{}",
                String::from_utf8_lossy(&publ.stderr)
            );
            // Read alice's output to the end (she leaves after one message).
            let msg = tokio::task::spawn_blocking(move || {
                let lines: Vec<String> = out.lines().map_while(Result::ok).collect();
                lines
                    .iter()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .find(|v| v.get("payload").is_some())
            });
            let v = tokio::time::timeout(T, msg)
                .await
                .unwrap()
                .unwrap()
                .expect("a message line");
            assert_eq!(v["payload"], "hello over MLS");
            assert_eq!(v["from"], "acme/cli/bob/0");
            assert_eq!(v["spiffe_id"], "spiffe://example.org/agent/bob");
            let status = tokio::task::spawn_blocking(move || join.0.wait())
                .await
                .unwrap()
                .unwrap();
            assert!(status.success(), "join exits after --count 1");
            // A join request outside the policy is refused with the reason.
            let refused = cmd(
                "outsider",
                &[
                    "channel",
                    "join",
                    "acme/cli/room",
                    "--moderator",
                    "acme/cli/mod/0",
                ],
            )
            .output()
            .unwrap();
            assert!(!refused.status.success());
            let e = String::from_utf8_lossy(&refused.stderr);
            assert!(
                e.contains("join refused") && e.contains("not allowed"),
                "{e}"
            );
            // SIGTERM: the moderator closes the channel and exits.
            let pid = moderator.0.id().to_string();
            assert!(
                Command::new("kill")
                    .args(["-TERM", &pid])
                    .status()
                    .unwrap()
                    .success()
            );
            let log = tokio::time::timeout(T, log).await.unwrap().unwrap();
            assert!(
                log.iter()
                    .any(|l| l.contains("acme/cli/alice/0") && l.contains("joined")),
                "{log:?}"
            );
            assert!(log.iter().any(|l| l.contains("channel closed")), "{log:?}");
            node.shutdown(Duration::from_secs(1)).await;
        },
    )
    .await
}

/// `slimctl channel subscribe` closes its connection on the way out, so the
/// node forgets the subscriber at once instead of holding its name until
/// the node's idle timeout (30 s): after `--timeout` runs out (exit with an
/// error) and after SIGINT (Ctrl-C, a normal end). The time from the
/// process's exit to the node having no connection is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slimctl_subscribe_closes_its_connection_on_timeout_and_on_sigint() {
    deadline(
        TEST_DEADLINE,
        "slimctl_subscribe_closes_its_connection_on_timeout_and_on_sigint",
        async {
            use std::io::{BufRead, BufReader};
            use std::process::{Command, Stdio};
            use std::time::Instant;
            init_tracing();
            let slimctl = slim_tests::netns::bin("slimctl");
            let pki = Pki::new("example.org");
            // The idle timeout is what a connection that is not closed lingers for.
            let node = start_node(&pki, |c| c.idle_timeout = Duration::from_secs(30)).await;
            let dir = tempfile::tempdir().unwrap();
            let id = slim_auth::SpiffeId::parse("spiffe://example.org/agent/watcher").unwrap();
            pki.ca
                .issue_to_dir(&id, Duration::from_secs(3600), dir.path())
                .unwrap();
            let subscribe = |chan: &str, extra: &[&str]| {
                let mut c = Command::new(&slimctl);
                c.args(["channel", "subscribe", chan])
                    .args(extra)
                    .arg("--identity")
                    .arg(dir.path())
                    .args(["--as", "acme/cli/watcher"])
                    .env("SLIMCTL_NODE", node.local_addr().to_string())
                    .env_remove("SPIFFE_ENDPOINT_SOCKET")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null());
                c
            };
            // Polls (10 ms) until the node has no connection and no route for `chan`.
            let gone = |chan: &'static str| {
                let node = &node;
                async move {
                    let t0 = Instant::now();
                    assert_eventually(
                        Duration::from_secs(5),
                        "the node forgot the subscriber (well before its 30 s idle timeout)",
                        || async {
                            node.connection_count() == 0
                                && !node.routes().iter().any(|r| r.name == chan)
                        },
                    )
                    .await;
                    t0.elapsed()
                }
            };

            // 1. --timeout runs out: an error exit, and the connection is closed.
            let out = tokio::task::spawn_blocking({
                let mut c = subscribe("acme/cli/quiet", &["--timeout", "1s"]);
                move || c.stderr(Stdio::piped()).output().unwrap()
            })
            .await
            .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{err}");
            assert!(err.contains("subscribed to acme/cli/quiet"), "{err}");
            assert!(err.contains("no message within"), "{err}");
            let after_timeout = gone("acme/cli/quiet").await;
            println!("connection gone {after_timeout:?} after slimctl exited on --timeout");

            // 2. SIGINT while subscribed: a clean exit, and the connection is closed.
            let mut proc = Proc(
                subscribe("acme/cli/interrupted", &[])
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
            let mut err = BufReader::new(proc.0.stderr.take().unwrap());
            let first = tokio::task::spawn_blocking(move || {
                let mut l = String::new();
                err.read_line(&mut l).unwrap();
                l
            });
            let first = tokio::time::timeout(T, first).await.unwrap().unwrap();
            assert!(
                first.starts_with("subscribed to acme/cli/interrupted"),
                "{first}"
            );
            assert!(
                node.routes()
                    .iter()
                    .any(|r| r.name == "acme/cli/interrupted"),
                "subscribed at the node"
            );
            let pid = proc.0.id().to_string();
            assert!(
                Command::new("kill")
                    .args(["-INT", &pid])
                    .status()
                    .unwrap()
                    .success()
            );
            let status = tokio::task::spawn_blocking(move || proc.0.wait())
                .await
                .unwrap()
                .unwrap();
            assert!(
                status.success(),
                "SIGINT ends a subscription cleanly: {status:?}"
            );
            let after_sigint = gone("acme/cli/interrupted").await;
            println!("connection gone {after_sigint:?} after slimctl exited on SIGINT");
            node.shutdown(Duration::from_secs(1)).await;
        },
    )
    .await
}
