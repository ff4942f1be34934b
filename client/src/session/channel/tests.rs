//! In-memory tests of the moderator and member machines: a simulated network
//! delivers every transmit, multicasts to the subscribed names.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slim_auth::{DevCa, SpiffeId};
use slim_mls::{MlsError, MlsIdentity};

use super::core::service_of;
use super::*;
use crate::session::group::Dest;
use crate::session::packet::{Kind, Packet};

enum Node {
    Mod(Box<Moderator>),
    Mem(Box<Member>),
}

struct Net {
    ca: DevCa,
    now: Instant,
    cfg: ChannelConfig,
    nodes: BTreeMap<String, Node>,
    ids: HashMap<String, String>,
    /// Names subscribed to the channel (get multicasts).
    subscribed: BTreeSet<String>,
    events: HashMap<String, Vec<ChannelEvent>>,
    /// Invitations reaching a name that is not in `nodes` yet.
    invites: Vec<(String, String, Packet)>,
    /// Packets copied off the wire (for replay tests).
    wire: Vec<(String, Packet)>,
}

const CH: &str = "acme/chat/room";
const MOD: &str = "acme/chat/mod/0";

fn spiffe(name: &str) -> String {
    format!("spiffe://example.org/{}", name.replace('/', "-"))
}

impl Net {
    fn new(cfg: ChannelConfig) -> Net {
        let ca = DevCa::generate("example.org").unwrap();
        let now = Instant::now();
        let mut n = Net {
            ca,
            now,
            cfg: cfg.clone(),
            nodes: BTreeMap::new(),
            ids: HashMap::new(),
            subscribed: BTreeSet::new(),
            events: HashMap::new(),
            invites: Vec::new(),
            wire: Vec::new(),
        };
        let id = n.identity(MOD);
        let m = Moderator::new(CH, MOD, Some(id), &spiffe(MOD), cfg, now).unwrap();
        n.nodes.insert(MOD.into(), Node::Mod(Box::new(m)));
        n.subscribed.insert(MOD.into());
        n
    }

    fn identity(&mut self, name: &str) -> MlsIdentity {
        let sid = SpiffeId::parse(&spiffe(name)).unwrap();
        self.ids.insert(name.to_owned(), spiffe(name));
        let svid = self.ca.issue(&sid, Duration::from_secs(3600)).unwrap();
        MlsIdentity::new(&svid).unwrap()
    }

    fn moderator(&mut self) -> &mut Moderator {
        match self.nodes.get_mut(MOD) {
            Some(Node::Mod(m)) => m,
            _ => panic!("no moderator"),
        }
    }

    fn member(&mut self, name: &str) -> &mut Member {
        match self.nodes.get_mut(name) {
            Some(Node::Mem(m)) => m,
            _ => panic!("no member {name}"),
        }
    }

    fn join(&mut self, name: &str) {
        let id = self.identity(name);
        let m = Member::join(CH, name, Some(id), None, self.cfg.clone(), self.now).unwrap();
        self.nodes.insert(name.into(), Node::Mem(Box::new(m)));
        self.subscribed.insert(name.into());
        self.pump();
    }

    /// Delivers everything until quiet; auto-accepts invitations.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut out = Vec::new();
            for (name, node) in self.nodes.iter_mut() {
                loop {
                    let t = match node {
                        Node::Mod(m) => m.poll_transmit(),
                        Node::Mem(m) => m.poll_transmit(),
                    };
                    match t {
                        Some(t) => out.push((name.clone(), t)),
                        None => break,
                    }
                }
                let evs = self.events.entry(name.clone()).or_default();
                loop {
                    let e = match node {
                        Node::Mod(m) => m.poll_event(),
                        Node::Mem(m) => m.poll_event(),
                    };
                    match e {
                        Some(e) => evs.push(e),
                        None => break,
                    }
                }
            }
            if out.is_empty() && self.invites.is_empty() {
                return;
            }
            for (from, t) in out {
                let p = Packet::decode(&t.packet).unwrap();
                self.wire.push((from.clone(), p.clone()));
                let dests: Vec<String> = match &t.dest {
                    Dest::Group => self
                        .subscribed
                        .iter()
                        .filter(|n| **n != from)
                        .cloned()
                        .collect(),
                    Dest::Member(n) if n.matches('/').count() == 3 => vec![n.clone()],
                    Dest::Member(svc) => self
                        .ids
                        .keys()
                        .filter(|n| service_of(n) == svc && !self.nodes.contains_key(*n))
                        .take(1)
                        .cloned()
                        .collect(),
                };
                for d in dests {
                    let id = self.ids.get(&from).cloned();
                    match self.nodes.get_mut(&d) {
                        Some(Node::Mod(m)) => m.handle_packet(&from, id.as_deref(), &p, self.now),
                        Some(Node::Mem(m)) => m.handle_packet(&from, id.as_deref(), &p, self.now),
                        None if Member::parse_invite(&p).is_ok() => {
                            self.invites.push((d, from.clone(), p.clone()))
                        }
                        None => {}
                    }
                }
            }
            for (d, from, p) in std::mem::take(&mut self.invites) {
                let id = self.identity(&d);
                let m = Member::accept_invite(&d, &from, &p, Some(id), self.cfg.clone(), self.now)
                    .unwrap();
                self.nodes.insert(d.clone(), Node::Mem(Box::new(m)));
                self.subscribed.insert(d);
            }
        }
        panic!("network does not quiesce");
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        let now = self.now;
        for node in self.nodes.values_mut() {
            match node {
                Node::Mod(m) => m.handle_timeout(now),
                Node::Mem(m) => m.handle_timeout(now),
            }
        }
        self.pump();
    }

    fn take_events(&mut self, name: &str) -> Vec<ChannelEvent> {
        self.events.remove(name).unwrap_or_default()
    }

    fn messages(&self, name: &str) -> Vec<(String, u64)> {
        self.events
            .get(name)
            .map(|v| {
                v.iter()
                    .filter_map(|e| match e {
                        ChannelEvent::Message {
                            sender, payload, ..
                        } => Some((
                            sender.clone(),
                            u64::from_be_bytes(payload[..8].try_into().unwrap()),
                        )),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn cfg(mls: bool) -> ChannelConfig {
    ChannelConfig {
        mls,
        admission: vec!["spiffe://example.org/**".into()],
        ..ChannelConfig::default()
    }
}

fn rejected(evs: &[ChannelEvent]) -> Vec<&ChannelError> {
    evs.iter()
        .filter_map(|e| match e {
            ChannelEvent::Rejected { error, .. } => Some(error),
            _ => None,
        })
        .collect()
}

#[test]
fn session_id_is_stable() {
    assert_eq!(session_id("acme/chat/room"), session_id("acme/chat/room"));
    assert_ne!(session_id("acme/chat/room"), session_id("acme/chat/roon"));
    // Pinned (FNV-1a 64 computed independently): joiners in other
    // processes and versions must compute the same value.
    assert_eq!(session_id("acme/chat/room"), 0x082b_756b_024d_7a4f);
}

fn churn(mls: bool) {
    let mut net = Net::new(cfg(mls));
    for i in 0..4 {
        net.join(&format!("acme/chat/m{i}/0"));
    }
    // Membership per epoch, folded from the moderator's commits.
    let mut roster: BTreeSet<String> = net
        .moderator()
        .members()
        .into_iter()
        .map(|m| m.name)
        .collect();
    let mut by_epoch: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    by_epoch.insert(net.moderator().epoch(), roster.clone());
    let mut sent: Vec<(u64, u64)> = Vec::new(); // (msg, epoch)
    let mut next_invite = 4;
    for i in 0..99u64 {
        let now = net.now;
        let (_, epoch) = net.moderator().publish(&i.to_be_bytes(), now).unwrap();
        sent.push((i, epoch));
        if i % 10 == 9 {
            let victim = roster.iter().find(|n| *n != MOD).unwrap().clone();
            let now = net.now;
            net.moderator().remove(&victim, "churn", now).unwrap();
            net.moderator()
                .invite(&format!("acme/chat/m{next_invite}/0"), now)
                .unwrap();
            next_invite += 1;
        }
        net.pump();
        net.advance(Duration::from_millis(100));
        for e in net.events.get(MOD).into_iter().flatten() {
            if let ChannelEvent::MembersChanged {
                epoch,
                added,
                removed,
            } = e
                && !by_epoch.contains_key(epoch)
            {
                for a in added {
                    roster.insert(a.name.clone());
                }
                for r in removed {
                    roster.remove(&r.name);
                }
                by_epoch.insert(*epoch, roster.clone());
            }
        }
    }
    net.advance(Duration::from_secs(1));
    let names: Vec<String> = net.nodes.keys().filter(|n| *n != MOD).cloned().collect();
    assert!(names.len() >= 12, "members were invited: {names:?}");
    for n in &names {
        let got: HashSet<u64> = net.messages(n).into_iter().map(|(_, s)| s).collect();
        let want: HashSet<u64> = sent
            .iter()
            .filter(|(_, e)| by_epoch[e].contains(n))
            .map(|(m, _)| *m)
            .collect();
        assert_eq!(got, want, "{n}");
        assert_eq!(net.messages(n).len(), got.len(), "{n}: duplicates");
    }
    let final_roster: BTreeSet<String> = net
        .moderator()
        .members()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(final_roster, roster);
    assert_eq!(final_roster.len(), 5);
    for n in final_roster.iter().filter(|n| *n != MOD) {
        let r: BTreeSet<String> = net
            .member(n)
            .members()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(r, final_roster, "{n}'s roster");
    }
    let mod_events = net.take_events(MOD);
    assert!(
        rejected(&mod_events).is_empty(),
        "{:?}",
        rejected(&mod_events)
    );
    let joined = mod_events
        .iter()
        .filter(|e| matches!(e, ChannelEvent::MemberJoined { .. }))
        .count();
    let left = mod_events
        .iter()
        .filter(|e| matches!(e, ChannelEvent::MemberLeft { .. }))
        .count();
    assert_eq!((joined, left), (4 + 9, 9));
}

#[test]
fn churn_in_memory_mls() {
    churn(true);
}

#[test]
fn churn_in_memory_plaintext() {
    churn(false);
}

#[test]
fn join_request_admission() {
    let mut c = cfg(true);
    c.admission = vec![
        "spiffe://example.org/acme-chat-good-*".into(),
        "spiffe://example.org/x/*".into(),
    ];
    // Pattern segments are whole path segments: use a two-level ID space.
    c.admission = vec!["spiffe://example.org/ok/**".into()];
    let mut net = Net::new(c.clone());
    // IDs are spiffe://example.org/<name with dashes>: none match `ok/**`.
    net.join("acme/chat/bad/0");
    let evs = net.take_events("acme/chat/bad/0");
    assert!(
        evs.iter().any(
            |e| matches!(e, ChannelEvent::JoinRefused { reason } if reason.contains("not allowed"))
        ),
        "{evs:?}"
    );
    assert!(net.member("acme/chat/bad/0").is_finished());
    // Inside the policy: an identity under ok/.
    let name = "acme/chat/good/0";
    let sid = SpiffeId::parse("spiffe://example.org/ok/good").unwrap();
    net.ids.insert(name.into(), sid.as_str().into());
    let id = MlsIdentity::new(&net.ca.issue(&sid, Duration::from_secs(3600)).unwrap()).unwrap();
    let m = Member::join(CH, name, Some(id), Some(MOD), c, net.now).unwrap();
    net.nodes.insert(name.into(), Node::Mem(Box::new(m)));
    net.subscribed.insert(name.into());
    net.pump();
    assert!(net.member(name).is_active());
    assert_eq!(net.moderator().members().len(), 2);
}

#[test]
fn key_package_of_another_identity_is_refused() {
    let mut net = Net::new(cfg(true));
    let name = "acme/chat/mallory/0";
    // The node authenticated mallory, the key package is for the victim.
    let victim = net.identity("acme/chat/victim/0");
    net.ids.insert(name.into(), spiffe(name));
    let m = Member::join(CH, name, Some(victim), Some(MOD), cfg(true), net.now).unwrap();
    net.nodes.insert(name.into(), Node::Mem(Box::new(m)));
    net.pump();
    let evs = net.take_events(name);
    assert!(
        evs.iter().any(|e| matches!(e, ChannelEvent::JoinRefused { reason } if reason.contains("authenticated"))),
        "{evs:?}"
    );
    assert_eq!(net.moderator().members().len(), 1);
}

#[test]
fn removed_member_cannot_decrypt_and_replays_are_refused() {
    let mut net = Net::new(cfg(true));
    net.join("acme/chat/a/0");
    net.join("acme/chat/b/0");
    let now = net.now;
    net.member("acme/chat/a/0")
        .publish(&1u64.to_be_bytes(), now)
        .unwrap();
    net.pump();
    assert_eq!(
        net.messages("acme/chat/b/0"),
        vec![("acme/chat/a/0".to_string(), 1)]
    );
    // Replay a's data packet under a new sequence number from another sender.
    let (_, orig) = net
        .wire
        .iter()
        .rev()
        .find(|(f, p)| f == "acme/chat/a/0" && p.kind == Kind::Data)
        .cloned()
        .unwrap();
    net.events.clear();
    net.member("acme/chat/b/0")
        .handle_packet("acme/chat/a/0", None, &orig, now);
    // The same seq again is a duplicate at the sequencing layer; a new seq
    // gets to MLS, which refuses the consumed key.
    let mut again = orig.clone();
    again.seq += 1;
    again.base = orig.base;
    net.member("acme/chat/b/0")
        .handle_packet("acme/chat/a/0", None, &again, now);
    net.pump();
    assert!(net.messages("acme/chat/b/0").is_empty());
    let evs = net.take_events("acme/chat/b/0");
    assert!(
        matches!(
            rejected(&evs).as_slice(),
            [ChannelError::Mls(MlsError::Replay)]
        ),
        "{evs:?}"
    );
    // Tampered: a fresh message, altered on the way to b.
    let now = net.now;
    net.member("acme/chat/a/0")
        .publish(&3u64.to_be_bytes(), now)
        .unwrap();
    let t = net.member("acme/chat/a/0").poll_transmit().unwrap();
    let good = Packet::decode(&t.packet).unwrap();
    // (seq 1 was taken by the replay above)
    let mut bad = good.clone();
    bad.seq = good.seq + 1;
    let mut body = bad.body.to_vec();
    let n = body.len();
    body[n - 5] ^= 1;
    bad.body = Bytes::from(body);
    net.member("acme/chat/b/0")
        .handle_packet("acme/chat/a/0", None, &bad, now);
    net.pump();
    let evs = net.take_events("acme/chat/b/0");
    assert!(
        matches!(
            rejected(&evs).as_slice(),
            [ChannelError::Mls(MlsError::Tampered)]
        ),
        "{evs:?}"
    );
    // Sequencing saw seq 2 already (the tampered copy); the genuine one is
    // a duplicate there, so deliver it as a retransmission would not: as
    // seq 3 (a's next), to show the key was not consumed by the forgery.
    let mut genuine = good.clone();
    genuine.seq = good.seq + 2;
    net.member("acme/chat/b/0")
        .handle_packet("acme/chat/a/0", None, &genuine, now);
    net.pump();
    assert_eq!(
        net.messages("acme/chat/b/0"),
        vec![("acme/chat/a/0".to_string(), 3)]
    );
    net.events.clear();
    // Remove b; it stays subscribed, receives, cannot decrypt.
    let now = net.now;
    net.moderator()
        .remove("acme/chat/b/0", "test", now)
        .unwrap();
    net.advance(Duration::from_millis(1));
    let now = net.now;
    net.moderator().publish(&2u64.to_be_bytes(), now).unwrap();
    net.pump();
    let evs = net.take_events("acme/chat/b/0");
    assert!(
        evs.iter()
            .any(|e| matches!(e, ChannelEvent::Removed { .. })),
        "{evs:?}"
    );
    assert!(net.messages("acme/chat/b/0").is_empty());
    let errs = rejected(&evs);
    assert!(
        matches!(errs.as_slice(), [ChannelError::Mls(MlsError::Evicted)]),
        "{evs:?}"
    );
    assert_eq!(net.messages("acme/chat/a/0"), vec![(MOD.to_string(), 2)]);
}

#[test]
fn close_reaches_everyone_and_leave_is_confirmed() {
    let mut net = Net::new(cfg(true));
    for n in ["acme/chat/a/0", "acme/chat/b/0", "acme/chat/c/0"] {
        net.join(n);
    }
    let now = net.now;
    net.member("acme/chat/c/0").leave(now);
    net.pump();
    assert!(net.member("acme/chat/c/0").is_finished());
    assert_eq!(net.moderator().members().len(), 3);
    let now = net.now;
    net.moderator().close("done", now).unwrap();
    net.pump();
    assert!(net.moderator().is_finished());
    for n in ["acme/chat/a/0", "acme/chat/b/0"] {
        let evs = net.take_events(n);
        assert!(
            evs.iter()
                .any(|e| matches!(e, ChannelEvent::ChannelClosed { reason } if reason == "done")),
            "{n}: {evs:?}"
        );
    }
}

#[test]
fn silent_member_is_reported_and_removed_by_policy() {
    let mut c = cfg(true);
    c.remove_unresponsive = true;
    let mut net = Net::new(c);
    net.join("acme/chat/a/0");
    net.join("acme/chat/b/0");
    // b goes silent: it no longer gets anything.
    net.subscribed.remove("acme/chat/b/0");
    let b = net.nodes.remove("acme/chat/b/0").unwrap();
    for _ in 0..5 {
        net.advance(Duration::from_secs(1));
    }
    let evs = net.take_events(MOD);
    assert!(
        evs.iter().any(|e| matches!(e, ChannelEvent::MemberUnresponsive { member, .. } if member.name == "acme/chat/b/0")),
        "{evs:?}"
    );
    let names: Vec<String> = net
        .moderator()
        .members()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, vec!["acme/chat/a/0".to_string(), MOD.to_string()]);
    drop(b);
}

#[test]
fn bad_input_is_a_typed_rejection() {
    let mut net = Net::new(cfg(true));
    net.join("acme/chat/a/0");
    let now = net.now;
    let sid = session_id(CH);
    let mut p = Packet::new(sid, Kind::Control, "acme/chat/a/0");
    p.body = Bytes::from_static(b"\xff\x00junk");
    net.moderator()
        .handle_packet("acme/chat/a/0", None, &p, now);
    let mut d = Packet::new(sid, Kind::Data, "acme/chat/a/0");
    d.body = Bytes::from_static(b"junk");
    net.moderator()
        .handle_packet("acme/chat/a/0", None, &d, now);
    let mut w = Packet::new(sid ^ 1, Kind::Data, "acme/chat/a/0");
    w.body = Bytes::from_static(b"x");
    net.moderator()
        .handle_packet("acme/chat/a/0", None, &w, now);
    let forged = Packet::new(sid, Kind::Control, "acme/chat/mod/0");
    net.member("acme/chat/a/0")
        .handle_packet("acme/chat/evil/0", None, &forged, now);
    net.pump();
    let m = net.take_events(MOD);
    let r: Vec<&str> = rejected(&m).iter().map(|e| e.reason()).collect();
    assert_eq!(r, vec!["malformed", "malformed", "session"]);
    let a = net.take_events("acme/chat/a/0");
    assert_eq!(rejected(&a).len(), 1);
}

#[test]
fn svid_rotation_rebinds_without_breaking_membership() {
    let mut net = Net::new(cfg(true));
    net.join("acme/chat/a/0");
    net.join("acme/chat/b/0");
    let rotated = |net: &Net, name: &str| {
        let sid = SpiffeId::parse(&spiffe(name)).unwrap();
        Arc::new(net.ca.issue(&sid, Duration::from_secs(7200)).unwrap())
    };
    let svid = rotated(&net, "acme/chat/a/0");
    let now = net.now;
    let before = net.member("acme/chat/a/0").epoch();
    net.member("acme/chat/a/0").rebind(svid, now).unwrap();
    net.pump();
    assert_eq!(net.member("acme/chat/a/0").epoch(), before + 1);
    assert_eq!(net.member("acme/chat/b/0").epoch(), before + 1);
    let svid = rotated(&net, MOD);
    net.moderator().rebind(svid, now).unwrap();
    net.pump();
    assert_eq!(net.moderator().epoch(), before + 2);
    let evs = net.take_events(MOD);
    let updated: Vec<&str> = evs
        .iter()
        .filter_map(|e| match e {
            ChannelEvent::CredentialUpdated { member, .. } => Some(member.name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(updated, vec!["acme/chat/a/0", MOD]);
    assert!(rejected(&evs).is_empty(), "{evs:?}");
    // Messages still flow both ways, under the new keys.
    let now = net.now;
    net.member("acme/chat/a/0")
        .publish(&5u64.to_be_bytes(), now)
        .unwrap();
    net.moderator().publish(&6u64.to_be_bytes(), now).unwrap();
    net.pump();
    assert_eq!(
        net.messages("acme/chat/b/0"),
        vec![("acme/chat/a/0".to_string(), 5), (MOD.to_string(), 6)]
    );
    // A rotation to another SPIFFE ID is refused.
    let other = Arc::new(
        net.ca
            .issue(
                &SpiffeId::parse("spiffe://example.org/else").unwrap(),
                Duration::from_secs(60),
            )
            .unwrap(),
    );
    assert!(matches!(
        net.member("acme/chat/b/0").rebind(other, now),
        Err(ChannelError::Mls(MlsError::IdentityChanged { .. }))
    ));
}

#[test]
fn a_member_that_leaves_and_joins_again_is_followed_afresh() {
    let mut net = Net::new(cfg(true));
    net.join("acme/chat/a/0");
    net.join("acme/chat/b/0");
    let now = net.now;
    net.member("acme/chat/b/0")
        .publish(&1u64.to_be_bytes(), now)
        .unwrap();
    net.member("acme/chat/b/0").leave(now);
    net.pump();
    assert!(net.member("acme/chat/b/0").is_finished());
    // Same name, new process: its stream restarts at seq 0.
    net.nodes.remove("acme/chat/b/0");
    net.join("acme/chat/b/0");
    assert!(net.member("acme/chat/b/0").is_active());
    let now = net.now;
    net.member("acme/chat/b/0")
        .publish(&2u64.to_be_bytes(), now)
        .unwrap();
    net.pump();
    let b = "acme/chat/b/0".to_string();
    assert_eq!(
        net.messages("acme/chat/a/0"),
        vec![(b.clone(), 1), (b.clone(), 2)]
    );
    assert_eq!(net.messages(MOD), vec![(b.clone(), 1), (b, 2)]);
}

#[test]
fn a_silent_moderator_is_reported_once() {
    let mut net = Net::new(cfg(true));
    net.join("acme/chat/a/0");
    // Pings keep it quiet.
    for _ in 0..5 {
        net.advance(Duration::from_secs(1));
    }
    let quiet = |evs: &[ChannelEvent]| {
        evs.iter()
            .filter(|e| matches!(e, ChannelEvent::ModeratorUnresponsive { .. }))
            .count()
    };
    assert_eq!(quiet(&net.take_events("acme/chat/a/0")), 0);
    // The moderator goes away.
    net.subscribed.remove(MOD);
    let m = net.nodes.remove(MOD).unwrap();
    for _ in 0..10 {
        net.advance(Duration::from_secs(1));
    }
    assert_eq!(quiet(&net.take_events("acme/chat/a/0")), 1);
    drop(m);
}

#[test]
fn garbage_key_package_is_refused_with_a_reason() {
    let mut net = Net::new(cfg(true));
    let name = "acme/chat/junk/0";
    net.ids.insert(name.into(), spiffe(name));
    let p = control_packet(
        CH,
        name,
        &Ctl::Join {
            key_package: vec![0xc0, 0xff, 0xee, 0x80, 0x00],
            invited: false,
        },
    )
    .unwrap();
    let p = Packet::decode(&p).unwrap();
    let now = net.now;
    let id = spiffe(name);
    net.moderator().handle_packet(name, Some(&id), &p, now);
    let refused: Vec<String> = std::iter::from_fn(|| net.moderator().poll_event())
        .filter_map(|e| match e {
            ChannelEvent::JoinRequestRefused { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert!(
        matches!(refused.as_slice(), [r] if r.starts_with("bad key package")),
        "{refused:?}"
    );
    assert_eq!(net.moderator().members().len(), 1);
}

#[test]
fn a_lost_last_message_is_recovered_by_the_tail_probe() {
    let mut net = Net::new(cfg(true));
    let members = ["acme/chat/m0/0", "acme/chat/m1/0"];
    for m in members {
        net.join(m);
    }
    for m in members {
        net.take_events(m);
    }
    let now = net.now;
    for i in 0..3u64 {
        net.moderator().publish(&i.to_be_bytes(), now).unwrap();
        if i < 2 {
            net.pump();
        }
    }
    // The last message goes into a connection that dies: nobody gets it,
    // and nothing follows it that would reveal the gap.
    while net.moderator().poll_transmit().is_some() {}
    net.pump();
    for m in members {
        assert_eq!(net.messages(m).len(), 2, "{m} before the probe");
    }
    net.advance(net.cfg.tail_probe);
    for m in members {
        let got: Vec<u64> = net.messages(m).into_iter().map(|(_, s)| s).collect();
        assert_eq!(got, vec![0, 1, 2], "{m} after the probe");
    }
    // The probes stop after `tail_probes`, however long the channel idles.
    for _ in 0..40 {
        net.advance(Duration::from_secs(1));
    }
    assert_eq!(
        net.moderator().stats().tail_probes,
        u64::from(net.cfg.tail_probes)
    );
    for m in members {
        assert_eq!(
            net.messages(m).len(),
            3,
            "{m}: a probe is never delivered twice"
        );
        assert_eq!(net.member(m).stats().lost, 0);
    }
}

/// The moderator's answer to a roster query sent to it by `from` (node-authenticated as `id`).
fn roster_answer(net: &mut Net, from: &str, id: &str) -> Ctl {
    let p = decode_packet(&control_packet(CH, from, &Ctl::RosterQuery).unwrap());
    let now = net.now;
    net.moderator().handle_packet(from, Some(id), &p, now);
    loop {
        let t = net.moderator().poll_transmit().expect("an answer");
        if t.dest == Dest::Member(from.to_owned()) {
            let p = decode_packet(&t.packet);
            return decode_control(&p).unwrap();
        }
    }
}

fn decode_packet(b: &[u8]) -> Packet {
    Packet::decode(b).unwrap()
}

#[test]
fn roster_is_read_without_joining_by_members_and_admitted_identities_only() {
    let mut c = cfg(true);
    c.admission = vec!["spiffe://example.org/ok/**".into()];
    let mut net = Net::new(c);
    // A member admitted under the policy.
    let name = "acme/chat/good/0";
    let sid = SpiffeId::parse("spiffe://example.org/ok/good").unwrap();
    net.ids.insert(name.into(), sid.as_str().into());
    let id = MlsIdentity::new(&net.ca.issue(&sid, Duration::from_secs(3600)).unwrap()).unwrap();
    let m = Member::join(CH, name, Some(id), Some(MOD), net.cfg.clone(), net.now).unwrap();
    net.nodes.insert(name.into(), Node::Mem(Box::new(m)));
    net.subscribed.insert(name.into());
    net.pump();
    let epoch = net.moderator().epoch();

    // Admitted by the policy, not a member: the roster, and nothing changes.
    match roster_answer(&mut net, "ops/cli/x/1", "spiffe://example.org/ok/operator") {
        Ctl::Roster { epoch: e, members } => {
            assert_eq!(e, epoch);
            let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, vec![name, MOD]);
        }
        other => panic!("{other:?}"),
    }
    // A member's identity from another client name: also answered.
    assert!(matches!(
        roster_answer(&mut net, "ops/cli/y/1", &spiffe(MOD)),
        Ctl::Roster { .. }
    ));
    // Neither: refused with the reason.
    match roster_answer(&mut net, "ops/cli/z/1", "spiffe://example.org/outsider") {
        Ctl::Refused { reason } => assert!(reason.contains("may not read the roster"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(net.moderator().epoch(), epoch, "a query changes no epoch");
    assert_eq!(net.moderator().members().len(), 2);
}

#[test]
fn a_second_client_with_the_moderators_identity_is_refused_once_not_retried() {
    // The issue's case: a publisher whose identity also moderates the
    // channel. Its join is refused ("already a member") and it hears so at
    // once, instead of retrying every `retry` until its join deadline.
    let mut net = Net::new(cfg(true));
    let twin = "acme/chat/twin/0";
    let sid = SpiffeId::parse(&spiffe(MOD)).unwrap();
    net.ids.insert(twin.into(), sid.as_str().into());
    let id = MlsIdentity::new(&net.ca.issue(&sid, Duration::from_secs(3600)).unwrap()).unwrap();
    let m = Member::join(CH, twin, Some(id), None, net.cfg.clone(), net.now).unwrap();
    net.nodes.insert(twin.into(), Node::Mem(Box::new(m)));
    net.subscribed.insert(twin.into());
    net.pump();
    let evs = net.take_events(twin);
    assert!(
        evs.iter().any(|e| matches!(e, ChannelEvent::JoinRefused { reason } if reason.contains("already a member"))),
        "{evs:?}"
    );
    assert!(net.member(twin).is_finished());
    // Time passes: no more join requests reach the moderator.
    net.take_events(MOD);
    net.advance(Duration::from_secs(5));
    let refusals = net
        .take_events(MOD)
        .into_iter()
        .filter(|e| matches!(e, ChannelEvent::JoinRequestRefused { .. }))
        .count();
    assert_eq!(refusals, 0, "the refused twin kept asking");
}
