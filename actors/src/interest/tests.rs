use super::*;

/// A fleet of tables with instant links, driven in virtual time.
struct Net {
    t: Vec<InterestTable>,
    now: Duration,
    /// Frames and entries delivered.
    frames: usize,
    entries: usize,
}

fn cfg() -> InterestConfig {
    InterestConfig::default()
}

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

impl Net {
    fn new(ids: &[&str]) -> Net {
        Net {
            t: ids
                .iter()
                .map(|x| InterestTable::new(x, 1, cfg()))
                .collect(),
            now: Duration::ZERO,
            frames: 0,
            entries: 0,
        }
    }

    fn at(&mut self, id: &str) -> &mut InterestTable {
        self.t
            .iter_mut()
            .find(|t| t.me() == id)
            .expect("known node")
    }

    fn get(&self, id: &str) -> &InterestTable {
        self.t.iter().find(|t| t.me() == id).expect("known node")
    }

    fn link(&mut self, a: &str, b: &str) {
        let now = self.now;
        self.at(a).handle_peer_up(b, now);
        self.at(b).handle_peer_up(a, now);
    }

    fn unlink(&mut self, a: &str, b: &str) {
        let now = self.now;
        self.at(a).handle_peer_down(b, now);
        self.at(b).handle_peer_down(a, now);
    }

    /// Delivers frames (instantly) until nothing is pending, advancing
    /// virtual time to the next pace deadline when needed.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut msgs = Vec::new();
            let now = self.now;
            for t in self.t.iter_mut() {
                // Routes are refreshed as the federation actor does, on
                // every flush (a refresh may queue entries).
                while t.poll_route_change().is_some() {}
                while let Some((peer, f)) = t.poll_announce(now) {
                    msgs.push((t.me().to_string(), peer.to_string(), f));
                }
            }
            if msgs.is_empty() {
                match self.t.iter().filter_map(|t| t.poll_timeout()).min() {
                    Some(at) => {
                        self.now = self.now.max(at);
                        continue;
                    }
                    None => {
                        for t in self.t.iter_mut() {
                            while t.poll_route_change().is_some() {}
                        }
                        return;
                    }
                }
            }
            for (from, to, f) in msgs {
                self.frames += 1;
                self.entries += f.digest.len()
                    + f.updates
                        .iter()
                        .map(|u| u.names.len() + usize::from(u.links.is_some()))
                        .sum::<usize>();
                let now = self.now;
                // A peer that went down meanwhile refuses: fine here.
                let _ = self.at(&to).handle_interest(&from, &f, now);
            }
        }
        panic!("interest does not settle");
    }

    fn tick(&mut self, by: Duration) {
        self.now += by;
        let now = self.now;
        for t in self.t.iter_mut() {
            t.handle_tick(now);
        }
        self.settle();
    }

    fn dests(&self, at: &str, name: &str) -> Vec<(String, String)> {
        self.get(at)
            .remote_dests(name)
            .into_iter()
            .map(|(o, p)| (o.to_string(), p.to_string()))
            .collect()
    }

    fn take_counts(&mut self) -> (usize, usize) {
        let c = (self.frames, self.entries);
        self.frames = 0;
        self.entries = 0;
        c
    }
}

fn s(a: &str, b: &str) -> (String, String) {
    (a.into(), b.into())
}

#[test]
fn triangle_uses_direct_links_fails_over_and_withdraws() {
    let mut n = Net::new(&["a", "b", "c"]);
    n.link("a", "b");
    n.link("b", "c");
    n.link("a", "c");
    n.at("a").handle_local("x/y/z", true);
    n.at("c").handle_local("x/y/z", true);
    n.settle();
    assert_eq!(n.dests("b", "x/y/z"), vec![s("a", "a"), s("c", "c")]);
    assert_eq!(n.dests("a", "x/y/z"), vec![s("c", "c")]);
    // a–b fails: b reaches a through c.
    n.unlink("a", "b");
    n.settle();
    assert_eq!(n.dests("b", "x/y/z"), vec![s("a", "c"), s("c", "c")]);
    // And back.
    n.link("a", "b");
    n.settle();
    assert_eq!(n.dests("b", "x/y/z"), vec![s("a", "a"), s("c", "c")]);
    // a's subscribers leave: nobody routes to a any more.
    n.at("a").handle_local("x/y/z", false);
    n.settle();
    assert_eq!(n.dests("b", "x/y/z"), vec![s("c", "c")]);
    assert_eq!(n.dests("c", "x/y/z"), vec![]);
    // The tombstone is memory for a while, then goes.
    let with_tomb = n.get("b").entry_count();
    n.tick(cfg().tombstone_ttl + ms(1));
    assert_eq!(n.get("b").entry_count(), with_tomb - 1);
    // 3 link sets + c's name.
    assert_eq!(n.get("b").entry_count(), 4);
}

#[test]
fn a_withdrawal_costs_one_entry_per_link_direction_at_most() {
    // A ring with chords: 12 nodes, 18 links.
    let ids: Vec<String> = (0..12).map(|i| format!("n{i:02}")).collect();
    let r: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut n = Net::new(&r);
    let mut links = 0;
    for i in 0..12 {
        n.link(r[i], r[(i + 1) % 12]);
        links += 1;
        if i % 2 == 0 {
            n.link(r[i], r[(i + 5) % 12]);
            links += 1;
        }
    }
    n.settle();
    n.take_counts();
    n.at("n03").handle_local("o/n/s", true);
    n.settle();
    let (_, add) = n.take_counts();
    for id in &r {
        if *id != "n03" {
            assert_eq!(n.get(id).remote_dests("o/n/s").len(), 1, "{id}");
        }
    }
    n.at("n03").handle_local("o/n/s", false);
    n.settle();
    let (_, remove) = n.take_counts();
    // Flooding: each node passes a new entry to every peer but the sender,
    // so at most 2 per link.
    assert!(
        add <= 2 * links,
        "add cost {add} entries over {links} links"
    );
    assert!(
        remove <= 2 * links,
        "remove cost {remove} entries over {links} links"
    );
    for id in &r {
        assert!(n.get(id).remote_dests("o/n/s").is_empty(), "{id}");
        assert!(n.get(id).remote_names().is_empty(), "{id}");
    }
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let mut t = InterestTable::new("me", 1, cfg());
    let upd = |origin: &str, peers: Vec<String>| Interest {
        updates: vec![OriginUpdate {
            origin: origin.into(),
            epoch: 1,
            links: Some(LinkSet { seq: 2, peers }),
            names: vec![],
        }],
        digest: vec![],
        digest_last: false,
    };
    let e = t.handle_interest("p", &upd("o", vec![]), ms(0));
    assert_eq!(e[0].reason_label(), "unknown_peer");
    t.handle_peer_up("p", ms(0));
    let e = t.handle_interest("p", &upd("a b", vec![]), ms(0));
    assert_eq!(e[0].reason_label(), "bad_origin");
    let e = t.handle_interest("p", &upd("o", vec!["x y".into()]), ms(0));
    assert_eq!(e[0].reason_label(), "bad_links");
    let e = t.handle_interest("p", &upd("o", vec!["q".into(); MAX_LINKS + 1]), ms(0));
    assert_eq!(e[0].reason_label(), "bad_links");
    assert_eq!(t.origin_count(), 1);

    let mut small = InterestTable::new(
        "me",
        1,
        InterestConfig {
            max_entries: 4,
            ..cfg()
        },
    );
    small.handle_peer_up("p", ms(0));
    let names: Vec<NameState> = (0..10)
        .map(|i| NameState {
            name: Name::parse(&format!("a/b/c{i}")).unwrap(),
            seq: 5,
            present: true,
        })
        .collect();
    let f = Interest {
        updates: vec![OriginUpdate {
            origin: "o".into(),
            epoch: 1,
            links: None,
            names,
        }],
        digest: vec![],
        digest_last: false,
    };
    let e = small.handle_interest("p", &f, ms(0));
    assert_eq!(e[0].reason_label(), "table_full");
    assert!(small.entry_count() <= 4);
}

#[test]
fn changes_while_paced_are_coalesced_into_one_entry() {
    let mut t = InterestTable::new("me", 1, cfg());
    t.handle_peer_up("p", ms(0));
    // The link set and the digest go first.
    let first = t.poll_announce_to("p", ms(0)).unwrap();
    assert!(first.updates[0].links.is_some());
    assert_eq!(first.digest.len(), 1);
    assert!(t.poll_announce_to("p", ms(1)).is_none(), "paced");
    for i in 0..100 {
        t.handle_local("a/b/c", i % 2 == 0);
    }
    assert_eq!(t.poll_timeout(), Some(cfg().pace));
    assert!(t.poll_announce_to("p", ms(5)).is_none());
    let f = t.poll_announce_to("p", cfg().pace).unwrap();
    assert_eq!(f.updates.len(), 1);
    assert_eq!(f.updates[0].names.len(), 1);
    assert!(!f.updates[0].names[0].present, "the last state wins");
    assert!(t.poll_timeout().is_none());
}

#[test]
fn large_snapshots_are_batched() {
    let mut t = InterestTable::new("me", 1, cfg());
    for i in 0..1000 {
        t.handle_local(&format!("a/b/c{i}"), true);
    }
    t.handle_peer_up("p", ms(0));
    // p's digest says it knows nothing about us (only itself).
    let none = Interest {
        updates: vec![],
        digest: vec![OriginDigest {
            origin: "p".into(),
            epoch: 1,
            links_seq: 0,
            names: 0,
            hash: 0,
        }],
        digest_last: true,
    };
    assert!(t.handle_interest("p", &none, ms(0)).is_empty());
    let mut names = 0;
    let mut now = ms(0);
    while t.poll_timeout().is_some() {
        now = now.max(t.poll_timeout().unwrap());
        let f = t.poll_announce_to("p", now).unwrap();
        let n: usize = f.updates.iter().map(|u| u.names.len()).sum();
        assert!(n + f.digest.len() <= cfg().batch);
        names += n;
    }
    assert_eq!(names, 1000);
}

#[test]
fn a_link_coming_up_sends_only_the_origins_that_differ() {
    // a–b–c; then c–d links up where d already knows everything but c's
    // newest name.
    let mut n = Net::new(&["a", "b", "c", "d"]);
    n.link("a", "b");
    n.link("b", "c");
    n.link("c", "d");
    for i in 0..50 {
        n.at("a").handle_local(&format!("a/n/s{i}"), true);
    }
    n.settle();
    n.unlink("c", "d");
    n.settle();
    n.at("b").handle_local("b/n/s", true);
    n.settle();
    n.take_counts();
    n.link("c", "d");
    n.settle();
    let (_, entries) = n.take_counts();
    // Digests (4 origins each way) + link sets + b's one name, not a's 50.
    assert!(entries < 30, "resync sent {entries} entries");
    assert_eq!(n.dests("d", "b/n/s"), vec![s("b", "c")]);
    assert_eq!(n.get("d").remote_names().len(), 51);
}

#[test]
fn a_restarted_node_drops_what_its_previous_run_announced() {
    let mut n = Net::new(&["a", "b", "c"]);
    n.link("a", "b");
    n.link("b", "c");
    n.at("c").handle_local("c/n/s/1", true);
    n.settle();
    assert_eq!(n.dests("a", "c/n/s/1"), vec![s("c", "b")]);
    // c crashes (links down) and restarts with a new epoch and no clients.
    n.unlink("b", "c");
    n.settle();
    assert!(
        n.dests("a", "c/n/s/1").is_empty(),
        "unreachable: not routed"
    );
    n.t[2] = InterestTable::new("c", 2, cfg());
    n.link("b", "c");
    n.settle();
    for id in ["a", "b"] {
        assert!(n.dests(id, "c/n/s/1").is_empty(), "{id}");
        assert_eq!(n.get(id).reachable_count(), 2, "{id}");
    }
    // The old incarnation's entries are gone, not just unrouted.
    assert_eq!(n.get("a").entry_count(), 3);
}

#[test]
fn a_stale_present_after_a_partition_is_corrected_by_its_origin() {
    let mut n = Net::new(&["a", "b", "c"]);
    n.link("a", "b");
    n.link("b", "c");
    n.at("a").handle_local("a/n/s", true);
    n.settle();
    // Partition c away; a withdraws; the tombstone expires everywhere.
    n.unlink("b", "c");
    n.settle();
    n.at("a").handle_local("a/n/s", false);
    n.settle();
    n.tick(cfg().tombstone_ttl + ms(1));
    // c still holds a's old "present" (a is unreachable from c, so unrouted).
    assert!(n.dests("c", "a/n/s").is_empty());
    // Heal before c forgets a: c's stale entry reaches a, which re-issues
    // the truth.
    n.link("b", "c");
    n.settle();
    for id in ["b", "c"] {
        assert!(n.dests(id, "a/n/s").is_empty(), "{id}");
    }
}

#[test]
fn an_unreachable_origin_is_forgotten_after_its_ttl() {
    let mut n = Net::new(&["a", "b"]);
    n.link("a", "b");
    n.at("b").handle_local("b/n/s", true);
    n.settle();
    assert_eq!(n.get("a").origin_count(), 2);
    n.unlink("a", "b");
    n.settle();
    assert!(n.dests("a", "b/n/s").is_empty());
    n.tick(cfg().unreachable_ttl + ms(1));
    assert_eq!(n.get("a").origin_count(), 1);
    // And it comes back through the digest when the link does.
    n.link("a", "b");
    n.settle();
    assert_eq!(n.dests("a", "b/n/s"), vec![s("b", "b")]);
}

#[test]
fn an_edge_counts_only_when_both_ends_list_it() {
    let mut t = InterestTable::new("me", 1, cfg());
    t.handle_peer_up("p", ms(0));
    // p says it links to q; q has said nothing: q is not reachable.
    let f = Interest {
        updates: vec![
            OriginUpdate {
                origin: "p".into(),
                epoch: 1,
                links: Some(LinkSet {
                    seq: 3,
                    peers: vec!["me".into(), "q".into()],
                }),
                names: vec![],
            },
            OriginUpdate {
                origin: "q".into(),
                epoch: 1,
                links: None,
                names: vec![NameState {
                    name: Name::parse("q/n/s").unwrap(),
                    seq: 2,
                    present: true,
                }],
            },
        ],
        digest: vec![],
        digest_last: false,
    };
    assert!(t.handle_interest("p", &f, ms(0)).is_empty());
    while t.poll_route_change().is_some() {}
    assert!(t.remote_dests("q/n/s").is_empty());
    let q = Interest {
        updates: vec![OriginUpdate {
            origin: "q".into(),
            epoch: 1,
            links: Some(LinkSet {
                seq: 3,
                peers: vec!["p".into()],
            }),
            names: vec![],
        }],
        digest: vec![],
        digest_last: false,
    };
    assert!(t.handle_interest("p", &q, ms(1)).is_empty());
    assert_eq!(t.poll_route_change().as_deref(), Some("q/n/s"));
    assert_eq!(
        t.remote_dests("q/n/s"),
        vec![(Arc::from("q"), Arc::from("p"))]
    );
}

#[test]
fn an_older_entry_arriving_late_does_not_resurrect_a_name() {
    let mut t = InterestTable::new("me", 1, cfg());
    t.handle_peer_up("o", ms(0));
    let name = |seq, present| Interest {
        updates: vec![OriginUpdate {
            origin: "o".into(),
            epoch: 1,
            links: Some(LinkSet {
                seq: 1,
                peers: vec!["me".into()],
            }),
            names: vec![NameState {
                name: Name::parse("o/n/s").unwrap(),
                seq,
                present,
            }],
        }],
        digest: vec![],
        digest_last: false,
    };
    t.handle_interest("o", &name(5, false), ms(0));
    t.handle_interest("o", &name(4, true), ms(0));
    while t.poll_route_change().is_some() {}
    assert!(t.remote_dests("o/n/s").is_empty());
    t.handle_interest("o", &name(6, true), ms(0));
    assert_eq!(t.poll_route_change().as_deref(), Some("o/n/s"));
    assert_eq!(t.remote_dests("o/n/s").len(), 1);
}

#[test]
fn an_entry_a_peer_sent_us_is_not_sent_back_to_it() {
    let mut t = InterestTable::new("me", 1, cfg());
    t.handle_peer_up("p", ms(0));
    t.handle_peer_up("q", ms(0));
    while t.poll_announce(ms(0)).is_some() {}
    let entry = Interest {
        updates: vec![OriginUpdate {
            origin: "o".into(),
            epoch: 1,
            links: None,
            names: vec![NameState {
                name: Name::parse("o/n/s").unwrap(),
                seq: 3,
                present: true,
            }],
        }],
        digest: vec![],
        digest_last: false,
    };
    // From q: queued for p (paced, so still waiting) ...
    assert!(t.handle_interest("q", &entry, ms(1)).is_empty());
    assert!(t.has_pending("p"));
    assert!(!t.has_pending("q"));
    // ... and p sends the same version meanwhile: p need not hear it.
    assert!(t.handle_interest("p", &entry, ms(2)).is_empty());
    assert!(!t.has_pending("p"));
}

/// A partition heals while some nodes of one side have already forgotten
/// the other side's origin (unreachable for `unreachable_ttl`) and their
/// neighbours have not yet (GC timers tick at different times): the node
/// that forgot must learn the origin again, though the link that came up
/// is elsewhere and its neighbours hold nothing newer.
#[test]
fn an_origin_forgotten_during_a_partition_is_learnt_again_when_it_heals() {
    let mut n = Net::new(&["o", "z", "y", "x"]);
    n.link("o", "z");
    n.link("z", "y");
    n.link("y", "x");
    n.at("o").handle_local("o/n/s", true);
    n.settle();
    assert_eq!(n.dests("x", "o/n/s"), vec![s("o", "y")]);
    n.unlink("z", "y");
    n.settle();
    // x's GC timer fires after the TTL; y's not yet.
    n.now += cfg().unreachable_ttl + ms(1);
    let now = n.now;
    n.at("x").handle_tick(now);
    assert_eq!(n.get("x").origin_count(), 2, "x forgot o and z");
    assert_eq!(n.get("y").origin_count(), 4, "y still holds them");
    n.link("z", "y");
    n.settle();
    assert_eq!(n.dests("y", "o/n/s"), vec![s("o", "z")]);
    assert_eq!(n.dests("x", "o/n/s"), vec![s("o", "y")]);
}

/// A partition heals after the origin forgot a withdrawn name's tombstone
/// and after the node at the healed link forgot the origin altogether: a
/// node further away still holds the name as present, and must not route
/// to it once the origin is reachable again.
#[test]
fn a_stale_present_held_away_from_the_healed_link_is_corrected() {
    let mut n = Net::new(&["o", "b", "x"]);
    n.link("o", "b");
    n.link("b", "x");
    n.at("o").handle_local("o/n/s", true);
    n.settle();
    n.unlink("o", "b");
    n.settle();
    n.at("o").handle_local("o/n/s", false);
    n.settle();
    // o forgets the tombstone, b forgets o; x's GC timer has not fired.
    n.now += cfg().unreachable_ttl + ms(1);
    let now = n.now;
    n.at("o").handle_tick(now);
    n.at("b").handle_tick(now);
    assert_eq!(n.get("o").entry_count(), 1, "o holds only its link set");
    assert_eq!(n.get("b").origin_count(), 2, "b forgot o");
    n.link("o", "b");
    n.settle();
    for id in ["b", "x"] {
        assert!(
            n.dests(id, "o/n/s").is_empty(),
            "{id} routes a departed name"
        );
    }
}

/// The same when the node holding the stale "present" only ever held it
/// while its origin was unreachable (it restarted during the partition and
/// got it from a neighbour's digest answer).
#[test]
fn a_stale_present_learnt_during_the_partition_is_corrected() {
    let mut n = Net::new(&["o", "b", "x"]);
    n.link("o", "b");
    n.link("b", "x");
    n.at("o").handle_local("o/n/s", true);
    n.settle();
    n.unlink("o", "b");
    n.settle();
    n.at("o").handle_local("o/n/s", false);
    n.settle();
    // x restarts 10 s later and learns o (unreachable) from b.
    n.now += ms(10_000);
    n.unlink("b", "x");
    n.settle();
    n.t[2] = InterestTable::new("x", 2, cfg());
    n.link("b", "x");
    n.settle();
    assert_eq!(n.get("x").origin_count(), 3);
    // o forgets the tombstone and b forgets o; x, which learnt o later,
    // still holds it.
    n.now += cfg().unreachable_ttl - ms(9_000);
    let now = n.now;
    for id in ["o", "b", "x"] {
        n.at(id).handle_tick(now);
    }
    assert_eq!(n.get("b").origin_count(), 2, "b forgot o");
    assert_eq!(n.get("x").origin_count(), 3, "x still holds o");
    n.link("o", "b");
    n.settle();
    for id in ["b", "x"] {
        assert!(
            n.dests(id, "o/n/s").is_empty(),
            "{id} routes a departed name"
        );
    }
}

/// A digest larger than a frame comes in parts; an origin is compared with
/// the part that covers it, so a peer that holds what we hold is sent
/// nothing, and one that lacks an origin is sent just that.
#[test]
fn a_digest_in_parts_sends_only_what_differs() {
    let small = InterestConfig { batch: 4, ..cfg() };
    let mut t = InterestTable::new("me", 1, small);
    t.handle_peer_up("p", ms(0));
    for i in 0..10 {
        let f = Interest {
            updates: vec![OriginUpdate {
                origin: format!("o{i}"),
                epoch: 1,
                links: None,
                names: vec![NameState {
                    name: Name::parse(&format!("o/n/s{i}")).unwrap(),
                    seq: 2,
                    present: true,
                }],
            }],
            digest: vec![],
            digest_last: false,
        };
        assert!(t.handle_interest("p", &f, ms(0)).is_empty());
    }
    // The link to p restarts: our digest goes out in parts.
    t.handle_peer_down("p", ms(1));
    t.handle_peer_up("p", ms(1));
    let mut parts = Vec::new();
    let mut now = ms(1);
    while let Some(at) = t.poll_timeout() {
        now = now.max(at);
        let f = t.poll_announce_to("p", now).unwrap();
        if !f.digest.is_empty() {
            parts.push(f);
        }
    }
    assert!(parts.len() >= 3, "{} parts", parts.len());
    assert!(parts.last().unwrap().digest_last);
    assert!(parts[..parts.len() - 1].iter().all(|f| !f.digest_last));
    // p holds exactly what we hold (its digest is ours), except that it
    // never heard of o7.
    for (i, mut f) in parts.into_iter().enumerate() {
        f.updates.clear();
        f.digest.retain(|d| d.origin != "o7");
        assert!(t.handle_interest("p", &f, ms(2)).is_empty(), "part {i}");
    }
    let mut sent: Vec<(String, bool, usize)> = Vec::new();
    while let Some(at) = t.poll_timeout() {
        now = now.max(at);
        let f = t.poll_announce_to("p", now).unwrap();
        sent.extend(
            f.updates
                .into_iter()
                .map(|u| (u.origin, u.links.is_some(), u.names.len())),
        );
    }
    // Our own link set (the digest we fed back predates the one this
    // link-up issued: one entry), and o7 in full; nothing else.
    assert_eq!(
        sent,
        vec![("me".to_string(), true, 0), ("o7".to_string(), false, 1)]
    );
}

/// A link replaced by another one to the same peer (down and up at once)
/// changes no route, yet every route through that peer must be installed
/// again (the registry holds the old link's outbox).
#[test]
fn routes_through_a_replaced_link_are_handed_out_again() {
    let mut n = Net::new(&["a", "b", "c"]);
    n.link("a", "b");
    n.link("b", "c");
    n.at("c").handle_local("c/n/s", true);
    n.at("b").handle_local("b/n/s", true);
    n.settle();
    let now = n.now;
    let a = n.at("a");
    a.handle_peer_down("b", now);
    a.handle_peer_up("b", now);
    assert!(a.poll_route_change().is_none(), "no route changed");
    a.retry_routes_via("b");
    let mut again = Vec::new();
    while let Some(x) = a.poll_route_change() {
        again.push(x.to_string());
    }
    assert_eq!(again, vec!["b/n/s".to_string(), "c/n/s".to_string()]);
}

#[test]
fn after_a_burst_of_departures_the_tables_give_their_capacity_back() {
    let mut n = Net::new(&["a", "b"]);
    n.link("a", "b");
    n.settle();
    for i in 0..5_000 {
        n.at("a").handle_local(&format!("acme/ops/agent-{i}"), true);
    }
    n.settle();
    for i in 0..5_000 {
        n.at("a")
            .handle_local(&format!("acme/ops/agent-{i}"), false);
    }
    n.settle();
    let peak_tomb = n.get("b").tombstones.capacity();
    let peak_names = n.get("b").origins["a"].names.capacity();
    assert!(
        peak_tomb >= 5_000 && peak_names >= 5_000,
        "{peak_tomb} {peak_names}"
    );
    // Past the tombstone TTL: the entries go, and so does the room they took.
    n.now += cfg().tombstone_ttl + ms(1);
    let now = n.now;
    for t in &mut n.t {
        t.handle_tick(now);
    }
    let b = n.get("b");
    assert_eq!(b.origins["a"].names.len(), 0);
    assert!(
        b.tombstones.capacity() <= SHRINK_FLOOR
            && b.origins["a"].names.capacity() <= SHRINK_FLOOR * 2,
        "capacity kept: tombstones {} (peak {peak_tomb}), names {} (peak {peak_names})",
        b.tombstones.capacity(),
        b.origins["a"].names.capacity()
    );
}

/// A node keeps one allocation of each subscribed name for its interest
/// state: the local set and its own entry share it.
#[test]
fn a_local_name_is_stored_once() {
    let mut t = InterestTable::new("a", 1, cfg());
    t.handle_local("x/y/z", true);
    let local = t.local.get("x/y/z").expect("local name");
    let (own, _) = t.origins[&t.me]
        .names
        .get_key_value("x/y/z")
        .expect("own entry");
    assert!(Arc::ptr_eq(local, own));
    t.handle_local("x/y/z", false);
    assert!(t.local.is_empty());
}
