//! Forensics over two branches of one network: the exact fork point, each branch's events
//! after it, per-entity differences of the registries, and blame — on ledgers, on seeds with
//! their events, and on seeds without them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use mycnet_spores::forensics::{self, BlameOptions, BlameTarget, Relation, Side, SourceKind, Touch};
use mycnet_spores::seed;
use mycnet_spores::{
    Branch, ChainPoint, ChainedEvent, Endpoint, EventBody, ForensicsError, LedgerConfig, NodeId, NodeKey, NodeRole,
    NodeStatus, Projection, ServiceAnnouncement, SignedEvent, StopAt, Timestamp, TrustScore,
};
use uuid::Uuid;

use crate::fixture::{build_ledger, history, HISTORY_LEN};

fn cfg() -> LedgerConfig {
    LedgerConfig { durable: false, ..LedgerConfig::default() }
}

const NO_PROGRESS: &(dyn Fn(u64) + Sync) = &|_| {};

/// The shared history split into two branches after its last event (seq 599).
struct Split {
    /// The projection at the shared prefix's head.
    prefix: Projection,
    /// A node that leaves on branch B and offers services at the fork.
    leaver: NodeId,
    /// A node whose trust branch A changes.
    trusted: NodeId,
    /// The service both branches register, with different endpoints.
    contested: Uuid,
    /// Branch A's three events (seq 600..=602).
    a: Vec<SignedEvent>,
    /// Branch B's three events (seq 600..=602).
    b: Vec<SignedEvent>,
}

fn founder() -> &'static NodeKey {
    &history().keys[0]
}

fn service(id: Uuid, node: NodeId, address: &str) -> ServiceAnnouncement {
    ServiceAnnouncement {
        service_id: id,
        name: "forensic-svc".into(),
        node,
        capabilities: vec!["audit".into()].into(),
        endpoints: vec![Endpoint { protocol: "quic".into(), address: address.into() }].into(),
        metadata: vec![].into(),
    }
}

fn split() -> &'static Split {
    static SPLIT: OnceLock<Split> = OnceLock::new();
    SPLIT.get_or_init(|| {
        let h = history();
        let mut prefix = Projection::new();
        for e in &h.events {
            prefix.append(e.clone()).expect("the history is valid");
        }
        let f = founder().node_id();
        assert_eq!(prefix.node(&f).map(|n| n.status), Some(NodeStatus::Active), "the founder is active at the fork");
        // Prefer a rhizomorph; another sclerotium may leave too while the founder stays.
        let candidates = || {
            prefix.nodes().filter(|n| {
                n.node != f && n.status != NodeStatus::Left && prefix.services_by_node(&n.node).count() >= 1
            })
        };
        let leaver = candidates()
            .find(|n| n.role == NodeRole::Rhizomorph)
            .or_else(|| candidates().next())
            .map(|n| n.node)
            .expect("a node other than the founder offering services");
        let trusted = prefix
            .active_nodes()
            .find(|n| n.node != f && n.node != leaver && n.trust != TrustScore(777))
            .map(|n| n.node)
            .expect("another active node");
        let contested = Uuid::from_u128(0xf0f0_4e5e_c0de);
        let t0 = prefix.head().expect("head").timestamp.0;
        let sign = |i: i64, body| SignedEvent::sign(founder(), h.fingerprint, Timestamp(t0 + i * 1_000_000), body);
        let a = vec![
            sign(1, EventBody::CapabilitiesChanged { node: f, capabilities: vec!["forensics-cap".into()] }),
            sign(2, EventBody::ServiceRegistered(service(contested, f, "10.0.0.1:1"))),
            sign(3, EventBody::TrustScoreChanged { node: trusted, score: TrustScore(777), reason: "audit".into() }),
        ];
        let b = vec![
            sign(1, EventBody::ServiceRegistered(service(contested, f, "10.0.0.2:2"))),
            sign(2, EventBody::AddressesChanged { node: f, addresses: vec!["10.9.9.9:7000".into()] }),
            sign(3, EventBody::NodeLeft { node: leaver, reason: "evicted".into() }),
        ];
        Split { prefix, leaver, trusted, contested, a, b }
    })
}

/// The shared prefix followed by `tail`, as a ledger at `dir`.
fn ledger(dir: &Path, tail: &[SignedEvent]) -> ChainPoint {
    let mut events = history().events.clone();
    events.extend_from_slice(tail);
    let head = build_ledger(dir, &events, cfg(), 1000);
    ChainPoint { seq: head.seq, hash: head.hash }
}

/// `events` chained from genesis, and the projection at their head.
fn chained(events: &[SignedEvent]) -> (Vec<ChainedEvent>, Projection) {
    let mut p = Projection::new();
    let chained = events.iter().map(|e| p.append(e.clone()).expect("valid")).collect();
    (chained, p)
}

/// A seed of `events`, signed by the founder, with or without its events, written to `path`.
fn seed_file(path: &Path, events: &[SignedEvent], include_events: bool) {
    let (chained, p) = chained(events);
    let bytes = seed::build(&p, include_events.then_some(chained.as_slice()), &[founder()]).expect("build seed");
    std::fs::write(path, bytes).expect("write seed");
}

fn branch_events(tail: &[SignedEvent]) -> Vec<SignedEvent> {
    let mut events = history().events.clone();
    events.extend_from_slice(tail);
    events
}

#[test]
fn diverged_ledgers_name_the_exact_fork_their_own_events_and_every_entity_difference() {
    let s = split();
    let dir = tempfile::tempdir().expect("tempdir");
    let (pa, pb) = (dir.path().join("a"), dir.path().join("b"));
    let head_a = ledger(&pa, &s.a);
    let head_b = ledger(&pb, &s.b);
    let (a, b) = (Branch::open(&pa).expect("open a"), Branch::open(&pb).expect("open b"));
    assert_eq!(a.head(), head_a);
    assert_eq!(a.info().source, SourceKind::Ledger);

    let fork = forensics::fork_point(&a, &b).expect("fork point");
    let last = s.prefix.head().expect("head");
    assert_eq!(
        fork.relation,
        Relation::Diverged { last_common: Some(ChainPoint { seq: 599, hash: last.hash }), first_diverging_seq: 600 }
    );
    // The same answer with the sides swapped.
    let swapped = forensics::fork_point(&b, &a).expect("fork point");
    assert_eq!(swapped.relation, fork.relation);

    // Each branch's own events after the fork, cut at the limit with the rest counted.
    let ea = forensics::events_after(&a, Some(599), 2).expect("events of a");
    assert_eq!((ea.total, ea.more, ea.available), (3, 1, true));
    assert_eq!(ea.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![600, 601]);
    assert_eq!(ea.events.iter().map(|e| e.event.clone()).collect::<Vec<_>>(), s.a[..2].to_vec());
    let eb = forensics::events_after(&b, Some(599), 10).expect("events of b");
    assert_eq!((eb.total, eb.more), (3, 0));
    assert_eq!(eb.events.iter().map(|e| e.event.clone()).collect::<Vec<_>>(), s.b);
    assert_eq!(eb.events.last().map(|e| e.hash), Some(head_b.hash));

    // The shared prefix replayed once and carried onto both tails gives exactly the
    // registries of two independent replays, and the progress ends at the announced work.
    let done = std::sync::atomic::AtomicU64::new(0);
    let (ha, hb) = forensics::head_projections(&a, &b, &fork.relation, &|n| {
        done.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
    })
    .expect("head projections");
    assert_eq!(ha, a.projection(StopAt::End, NO_PROGRESS).expect("replay a"));
    assert_eq!(hb, b.projection(StopAt::End, NO_PROGRESS).expect("replay b"));
    assert_eq!(forensics::head_projections_work(&a, &b, &fork.relation), 600 + 3 + 3);
    assert_eq!(done.into_inner(), 606);

    let report = forensics::diff(&a, &b, 10, NO_PROGRESS).expect("diff");
    assert_eq!(report.fork, fork);
    let d = report.entities;
    assert!(d.nodes_only_in_a.is_empty() && d.nodes_only_in_b.is_empty(), "both branches know the same nodes");
    let changed: BTreeMap<NodeId, Vec<&str>> = d.nodes_changed.iter().map(|c| (c.node, c.fields.clone())).collect();
    let f = founder().node_id();
    let want: BTreeMap<NodeId, Vec<&str>> =
        [(f, vec!["capabilities", "addresses"]), (s.trusted, vec!["trust"]), (s.leaver, vec!["status"])]
            .into_iter()
            .collect();
    assert_eq!(changed, want);
    let leaver = d.nodes_changed.iter().find(|c| c.node == s.leaver).expect("leaver changed");
    assert_eq!(leaver.a.status, s.prefix.node(&s.leaver).expect("node").status);
    assert_eq!(leaver.b.status, NodeStatus::Left);
    let trusted = d.nodes_changed.iter().find(|c| c.node == s.trusted).expect("trust changed");
    assert_eq!(trusted.a.trust, TrustScore(777));
    assert_eq!(trusted.b.trust, s.prefix.node(&s.trusted).expect("node").trust);

    // The leaver's services exist only on A; the contested service differs in its endpoints.
    let mut leavers_services: Vec<Uuid> = s.prefix.services_by_node(&s.leaver).map(|r| r.service.service_id).collect();
    leavers_services.sort();
    assert_eq!(d.services_only_in_a.iter().map(|r| r.service.service_id).collect::<Vec<_>>(), leavers_services);
    assert!(d.services_only_in_b.is_empty());
    assert_eq!(d.services_changed.len(), 1);
    assert_eq!(d.services_changed[0].service_id, s.contested);
    assert_eq!(d.services_changed[0].fields, vec!["endpoints"]);
    assert_eq!(d.services_changed[0].a.service.endpoints[0].address, "10.0.0.1:1");
    assert_eq!(d.services_changed[0].b.service.endpoints[0].address, "10.0.0.2:2");
}

/// The binary search lands on the exact fork wherever it is, on seeds carrying their events.
#[test]
fn the_fork_is_found_exactly_at_any_position() {
    let h = history();
    let f = founder().node_id();
    let dir = tempfile::tempdir().expect("tempdir");
    for k in [1usize, 2, 3, 64, 377, HISTORY_LEN - 1] {
        let t = h.events[k - 1].timestamp.0 + 1;
        let tail = |caps: &str| {
            let mut ev = h.events[..k].to_vec();
            ev.push(SignedEvent::sign(
                founder(),
                h.fingerprint,
                Timestamp(t),
                EventBody::CapabilitiesChanged { node: f, capabilities: vec![caps.into()] },
            ));
            ev
        };
        let (pa, pb) = (dir.path().join(format!("a-{k}.seed")), dir.path().join(format!("b-{k}.seed")));
        seed_file(&pa, &tail("left"), true);
        // B goes on for a while after its own fork event: the heads differ in length too.
        let mut b_events = tail("right");
        for i in 1..=3 {
            let body = EventBody::CapabilitiesChanged { node: f, capabilities: vec![format!("right-{i}")] };
            b_events.push(SignedEvent::sign(founder(), h.fingerprint, Timestamp(t + i), body));
        }
        seed_file(&pb, &b_events, true);
        let (a, b) = (Branch::open(&pa).expect("a"), Branch::open(&pb).expect("b"));
        assert_eq!(a.info().source, SourceKind::Seed { includes_events: true });
        let fork = forensics::fork_point(&a, &b).expect("fork point");
        let (chained_a, _) = chained(&h.events[..k]);
        let common = ChainPoint { seq: k as u64 - 1, hash: chained_a[k - 1].hash };
        assert_eq!(
            fork.relation,
            Relation::Diverged { last_common: Some(common), first_diverging_seq: k as u64 },
            "fork after {k} events"
        );
    }
}

#[test]
fn identical_prefix_and_different_network_branches_are_told_apart() {
    let h = history();
    let dir = tempfile::tempdir().expect("tempdir");
    let (p1, p2, p3) = (dir.path().join("one"), dir.path().join("two"), dir.path().join("longer"));
    let head = ledger(&p1, &[]);
    ledger(&p2, &[]);
    ledger(&p3, &h.continuation[..10]);
    let (one, two, longer) =
        (Branch::open(&p1).expect("1"), Branch::open(&p2).expect("2"), Branch::open(&p3).expect("3"));

    let same = forensics::diff(&one, &two, 10, NO_PROGRESS).expect("diff");
    assert_eq!(same.fork.relation, Relation::Identical { head });
    assert_eq!((same.a_events.total, same.b_events.total), (0, 0));
    assert!(same.entities.is_empty());

    let prefix = forensics::fork_point(&longer, &one).expect("fork point");
    let (pl, po) = forensics::head_projections(&longer, &one, &prefix.relation, NO_PROGRESS).expect("projections");
    assert_eq!((pl.head().map(|h| h.seq), po.head().map(|h| h.seq)), (Some(609), Some(599)));
    assert_eq!(pl, longer.projection(StopAt::End, NO_PROGRESS).expect("replay"));
    assert_eq!(prefix.relation, Relation::Prefix { ahead: Side::A, common: head });
    let more = forensics::events_after(&longer, prefix.relation.last_common_seq(), 4).expect("events");
    assert_eq!((more.total, more.more, more.events[0].seq), (10, 6, 600));
    assert_eq!(forensics::events_after(&one, prefix.relation.last_common_seq(), 4).expect("events").total, 0);

    // Another network shares no chain with this one.
    let (other, _) = crate::fixture::synth_events(0xd1ff, 20);
    let po = dir.path().join("other");
    build_ledger(&po, &other, cfg(), 100);
    let other = Branch::open(&po).expect("other");
    match forensics::fork_point(&one, &other) {
        Err(e @ ForensicsError::DifferentNetworks { .. }) => assert!(e.is_bad_data()),
        r => panic!("expected DifferentNetworks, got {r:?}"),
    }
}

/// A seed file against a ledger: with its events, the exact fork; without them, what its head
/// and last checkpoint prove, and no more.
#[test]
fn seed_files_against_a_ledger_answer_what_they_can_prove() {
    let s = split();
    let dir = tempfile::tempdir().expect("tempdir");
    let pb = dir.path().join("b");
    ledger(&pb, &s.b);
    let b = Branch::open(&pb).expect("b");
    let a_events = branch_events(&s.a);
    let (full, bare, bare_prefix) =
        (dir.path().join("a-full.seed"), dir.path().join("a-bare.seed"), dir.path().join("prefix.seed"));
    seed_file(&full, &a_events, true);
    seed_file(&bare, &a_events, false);
    seed_file(&bare_prefix, &history().events, false);

    let full = Branch::open(&full).expect("full seed");
    let fork = forensics::fork_point(&full, &b).expect("fork point");
    assert!(
        matches!(
            fork.relation,
            Relation::Diverged { last_common: Some(ChainPoint { seq: 599, .. }), first_diverging_seq: 600 }
        ),
        "{fork:?}"
    );

    // Without events: its head (602) differs from B's there, and its last checkpoint is on B's
    // chain: the fork lies between them, and the report says no more than that.
    let bare = Branch::open(&bare).expect("bare seed");
    assert!(!bare.has_events());
    let attested = bare.known_points()[0];
    assert!(attested.seq < 600, "the last checkpoint is in the shared prefix");
    match forensics::fork_point(&bare, &b).expect("fork point").relation {
        Relation::Unresolved { last_common_known, diverged_at_or_before, reason } => {
            assert_eq!(last_common_known, Some(attested));
            assert_eq!(diverged_at_or_before, Some(602));
            assert!(reason.contains("without events"), "{reason}");
        }
        r => panic!("expected Unresolved, got {r:?}"),
    }
    // A bare seed's events are not there to list, only counted.
    let ev = forensics::events_after(&bare, Some(attested.seq), 5).expect("events");
    assert_eq!((ev.available, ev.total, ev.more, ev.events.len()), (false, 602 - attested.seq, 602 - attested.seq, 0));

    // A bare seed whose head lies on the ledger's chain: decided exactly.
    let bare_prefix = Branch::open(&bare_prefix).expect("prefix seed");
    let relation = forensics::fork_point(&bare_prefix, &b).expect("fork point").relation;
    assert_eq!(
        relation,
        Relation::Prefix { ahead: Side::B, common: ChainPoint { seq: 599, hash: s.prefix.head().expect("head").hash } }
    );

    // The ledger of the prefix is shorter than the bare seed of A: undecidable, but what is
    // known (the checkpoint) is reported.
    let pp = dir.path().join("prefix-ledger");
    ledger(&pp, &[]);
    let pl = Branch::open(&pp).expect("prefix ledger");
    match forensics::fork_point(&pl, &bare).expect("fork point").relation {
        Relation::Unresolved { last_common_known: Some(p), diverged_at_or_before: None, .. } => assert_eq!(p, attested),
        r => panic!("expected Unresolved without a known difference, got {r:?}"),
    }

    // The entity diff works from the seed's state just as from a replay.
    let from_seed = forensics::diff(&bare, &b, 5, NO_PROGRESS).expect("diff").entities;
    let pa = dir.path().join("a");
    ledger(&pa, &s.a);
    let from_ledger = forensics::diff(&Branch::open(&pa).expect("a"), &b, 5, NO_PROGRESS).expect("diff").entities;
    assert_eq!(from_seed, from_ledger);
}

#[test]
fn a_seed_answers_state_before_its_head_only_with_its_events() {
    let s = split();
    let dir = tempfile::tempdir().expect("tempdir");
    let events = branch_events(&s.a);
    let (full, bare) = (dir.path().join("full.seed"), dir.path().join("bare.seed"));
    seed_file(&full, &events, true);
    seed_file(&bare, &events, false);
    let pa = dir.path().join("a");
    ledger(&pa, &s.a);
    let (full, bare, led) =
        (Branch::open(&full).expect("full"), Branch::open(&bare).expect("bare"), Branch::open(&pa).expect("ledger"));

    for stop in [StopAt::Seq(0), StopAt::Seq(300), StopAt::Seq(601), StopAt::Time(events[450].timestamp), StopAt::End] {
        let want = led.projection(stop, NO_PROGRESS).expect("ledger replay");
        assert_eq!(full.projection(stop, NO_PROGRESS).expect("seed with events"), want, "{stop:?}");
    }
    assert_eq!(
        bare.projection(StopAt::End, NO_PROGRESS).expect("head"),
        led.projection(StopAt::End, NO_PROGRESS).expect("head")
    );
    assert_eq!(bare.projection(StopAt::Seq(602), NO_PROGRESS).expect("at its head").head().map(|h| h.seq), Some(602));
    match bare.projection(StopAt::Seq(300), NO_PROGRESS) {
        Err(e @ ForensicsError::SeedWithoutEvents { head_seq: 602, .. }) => {
            assert!(!e.is_bad_data());
            assert!(e.to_string().contains("seq 602"), "{e}");
        }
        r => panic!("expected SeedWithoutEvents, got {:?}", r.map(|p| p.head())),
    }
}

#[test]
fn blame_lists_every_event_that_touched_a_node_or_service_with_its_author() {
    let s = split();
    let dir = tempfile::tempdir().expect("tempdir");
    let pb = dir.path().join("b");
    ledger(&pb, &s.b);
    let b = Branch::open(&pb).expect("b");
    let events = branch_events(&s.b);

    // The leaver: events about it, its services coming and going, its leaving.
    let target = forensics::resolve_target(&b, &s.leaver.to_hex()[..10], NO_PROGRESS).expect("a unique prefix");
    assert_eq!(target, BlameTarget::Node { node: s.leaver });
    let r = forensics::blame(&b, &target, BlameOptions::default(), NO_PROGRESS).expect("blame");
    let about: Vec<u64> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.body.subject_node() == Some(s.leaver))
        .map(|(i, _)| i as u64)
        .collect();
    let listed: Vec<u64> = r.entries.iter().map(|e| e.seq).collect();
    for seq in &about {
        assert!(listed.contains(seq), "event {seq} about the node is listed");
    }
    assert_eq!(r.total, r.entries.len() as u64);
    assert_eq!(r.omitted, 0);
    assert!(listed.windows(2).all(|w| w[0] < w[1]), "oldest first");
    let first = &r.entries[0];
    assert_eq!(first.kind, "node_joined");
    for e in &r.entries {
        let ev = &events[e.seq as usize];
        assert_eq!(
            (e.author, e.timestamp, &e.body),
            (ev.author, ev.timestamp, &ev.body),
            "entry {} is that event",
            e.seq
        );
    }
    let regs = r.entries.iter().filter(|e| matches!(e.touch, Touch::ServiceOfNodeRegistered { .. })).count();
    let want_regs =
        events.iter().filter(|e| matches!(&e.body, EventBody::ServiceRegistered(a) if a.node == s.leaver)).count();
    assert_eq!(regs, want_regs, "every registration of its services, marked");
    let left = r.entries.last().expect("entries");
    assert_eq!(
        (left.seq, left.kind, &left.touch, left.author),
        (602, "node_left", &Touch::Subject, founder().node_id())
    );
    let mut live: Vec<Uuid> = s.prefix.services_by_node(&s.leaver).map(|r| r.service.service_id).collect();
    live.sort();
    assert_eq!(left.services_removed, live, "its leaving removed the services it still had");

    // One of its services: registered, then removed with the node.
    let svc = live[0];
    let r = forensics::blame(&b, &BlameTarget::Service { service_id: svc }, BlameOptions::default(), NO_PROGRESS)
        .expect("blame");
    let reg_seq = s.prefix.service(&svc).expect("service").registered_seq;
    assert_eq!(r.entries[0].seq, reg_seq);
    assert_eq!(r.entries[0].touch, Touch::Subject);
    let last = r.entries.last().expect("entries");
    assert_eq!((last.seq, &last.touch), (602, &Touch::RemovedWithNode { node: s.leaver }));

    // By name: every id registered under it; the contested one is the latest.
    let target = forensics::resolve_target(&b, "forensic-svc", NO_PROGRESS).expect("name");
    let r = forensics::blame(&b, &target, BlameOptions::default(), NO_PROGRESS).expect("blame");
    assert_eq!(r.services, vec![s.contested]);
    assert_eq!(r.entries.iter().map(|e| (e.seq, e.kind)).collect::<Vec<_>>(), vec![(600, "service_registered")]);

    // The limit keeps the latest entries and counts the rest.
    let all = forensics::blame(&b, &BlameTarget::Node { node: s.leaver }, BlameOptions::default(), NO_PROGRESS)
        .expect("blame");
    let cut = forensics::blame(
        &b,
        &BlameTarget::Node { node: s.leaver },
        BlameOptions { limit: 2, ..Default::default() },
        NO_PROGRESS,
    )
    .expect("blame");
    assert_eq!((cut.total, cut.omitted), (all.total, all.total - 2));
    assert_eq!(cut.entries, all.entries[all.entries.len() - 2..].to_vec());

    // What is not there, and a seed without events, are answered with errors that say so.
    assert!(matches!(
        forensics::resolve_target(&b, "no-such-service", NO_PROGRESS).and_then(|t| forensics::blame(
            &b,
            &t,
            BlameOptions::default(),
            NO_PROGRESS
        )),
        Err(ForensicsError::TargetNotFound(_))
    ));
    let bare = dir.path().join("bare.seed");
    seed_file(&bare, &events, false);
    let bare = Branch::open(&bare).expect("bare");
    assert!(matches!(
        forensics::blame(&bare, &BlameTarget::Node { node: s.leaver }, BlameOptions::default(), NO_PROGRESS),
        Err(ForensicsError::SeedWithoutEvents { .. })
    ));
}

#[test]
fn damaged_or_missing_sources_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    assert!(matches!(Branch::open(&missing), Err(ForensicsError::Io { .. })));
    let seed_path = dir.path().join("x.seed");
    seed_file(&seed_path, &history().events[..50], false);
    let mut bytes = std::fs::read(&seed_path).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&seed_path, &bytes).expect("write");
    match Branch::open(&seed_path) {
        Err(e @ ForensicsError::Seed { source: seed::SeedError::DigestMismatch, .. }) => assert!(e.is_bad_data()),
        r => panic!("expected a refused seed, got {r:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Authority: what a split-brain resolution would keep. Forged or under-signed seeds and
// checkpoints cannot win.

use mycnet_spores::core::authority::{resolve, summarize, BranchError, DecidedBy};
use mycnet_spores::forensics::Verdict;
use mycnet_spores::SporeType;

/// `tail` linked after the shared prefix's head (no rule checked: a forger's chain).
fn linked_after_prefix(tail: &[SignedEvent]) -> Vec<ChainedEvent> {
    let head = split().prefix.head().expect("head");
    let mut prev = head.hash;
    tail.iter()
        .enumerate()
        .map(|(i, e)| {
            let ev = ChainedEvent::link(head.seq + 1 + i as u64, prev, e.clone());
            prev = ev.hash;
            ev
        })
        .collect()
}

/// A checkpoint attesting the last event of `branch`, signed by `key`.
fn checkpoint_after(branch: &[ChainedEvent], key: &NodeKey) -> SignedEvent {
    let last = branch.last().expect("non-empty");
    SignedEvent::sign(
        key,
        history().fingerprint,
        Timestamp(last.event.timestamp.0 + 1_000_000),
        EventBody::Checkpoint { head_seq: last.seq, head_hash: last.hash },
    )
}

/// The keys of the voters (authorities that have not left) at the head of `p`.
fn voter_keys(p: &Projection) -> Vec<&'static NodeKey> {
    let voters: Vec<NodeId> =
        p.nodes().filter(|n| n.role.is_authority() && n.status != NodeStatus::Left).map(|n| n.node).collect();
    history().keys.iter().filter(|k| voters.contains(&k.node_id())).collect()
}

fn winner_side(v: &Verdict) -> (Side, DecidedBy) {
    match v {
        Verdict::Wins { winner, decided_by, .. } => (*winner, *decided_by),
        other => panic!("expected a winner, got {other:?}"),
    }
}

#[test]
fn the_verdict_on_two_ledgers_is_the_same_whichever_is_named_first() {
    let s = split();
    let dir = tempfile::tempdir().expect("tempdir");
    let (pa, pb) = (dir.path().join("a"), dir.path().join("b"));
    ledger(&pa, &s.a);
    ledger(&pb, &s.b);
    let (a, b) = (Branch::open(&pa).expect("open a"), Branch::open(&pb).expect("open b"));
    let report = forensics::diff(&a, &b, 10, NO_PROGRESS).expect("diff");
    let (w1, d1) = winner_side(&report.verdict);
    let swapped = forensics::diff(&b, &a, 10, NO_PROGRESS).expect("diff");
    let (w2, d2) = winner_side(&swapped.verdict);
    assert_eq!(w1 == Side::A, w2 == Side::B, "the same branch wins whichever side it is named on");
    assert_eq!(d1, d2);
    // Neither branch has a checkpoint or a seed after the fork: authority cannot decide.
    assert_ne!(d1, DecidedBy::Authority);
    let Verdict::Wins { a: sa, b: sb, .. } = &report.verdict else { unreachable!() };
    assert_eq!((sa.tier, sb.tier), (SporeType::Latent, SporeType::Latent));
    assert_eq!((sa.fork_seq, sa.events, sb.events), (600, 3, 3));
}

#[test]
fn a_checkpoint_wins_by_authority_and_forged_ones_cannot_win_at_all() {
    let s = split();
    let prefix = &s.prefix;
    let a = linked_after_prefix(&s.a);
    let b = linked_after_prefix(&s.b);
    let (latent_b, _) = summarize(prefix, &b, None).expect("branch b checks");
    assert_eq!(latent_b.tier, SporeType::Latent);

    // A checkpoint signed by a voter of the branch makes it Primary: it wins by authority,
    // whatever the activity.
    let mut primary_a = s.a.clone();
    primary_a.push(checkpoint_after(&a, founder()));
    let (sa, _) = summarize(prefix, &linked_after_prefix(&primary_a), None).expect("an attested branch checks");
    assert_eq!(sa.tier, SporeType::Primary);
    let r = resolve(&sa, &latent_b).expect("one fork");
    assert_eq!((r.winner.first, r.decided_by), (sa.first, DecidedBy::Authority));
    assert_eq!(resolve(&latent_b, &sa).expect("one fork").winner.first, sa.first, "symmetric");

    // A checkpoint signed by a node that is not an authority is refused by the rules.
    let rhizomorph = prefix
        .nodes()
        .find(|n| !n.role.is_authority() && n.status != NodeStatus::Left)
        .map(|n| n.node)
        .expect("a rhizomorph in the history");
    let outsider = history().keys.iter().find(|k| k.node_id() == rhizomorph).expect("its key");
    let mut forged = s.a.clone();
    forged.push(checkpoint_after(&a, outsider));
    let err = summarize(prefix, &linked_after_prefix(&forged), None).expect_err("a non-voter's checkpoint");
    assert!(matches!(err, BranchError::Rejected { seq: 603, .. }), "{err:?}");

    // A voter's checkpoint whose signature was tampered with does not verify.
    let mut tampered = s.a.clone();
    let mut cp = checkpoint_after(&a, founder());
    cp.signature.0[7] ^= 0x40;
    tampered.push(cp);
    assert_eq!(
        summarize(prefix, &linked_after_prefix(&tampered), None).expect_err("bad signature"),
        BranchError::BadSignature { seq: 603 }
    );

    // A voter's checkpoint attesting another branch's head is refused.
    let mut misattested = s.a.clone();
    misattested.push(checkpoint_after(&b, founder()));
    assert!(matches!(
        summarize(prefix, &linked_after_prefix(&misattested), None).expect_err("wrong head"),
        BranchError::Rejected { seq: 603, .. }
    ));

    // A branch whose links were rewritten (an event swapped after hashing) does not check.
    let mut relinked = linked_after_prefix(&primary_a);
    relinked[1].event = s.b[1].clone();
    assert!(matches!(
        summarize(prefix, &relinked, None).expect_err("broken link"),
        BranchError::BrokenLink { seq: 601 }
    ));
}

#[test]
fn a_quorum_signed_seed_wins_by_authority_and_under_signed_or_forged_seeds_cannot() {
    let s = split();
    let dir = tempfile::tempdir().expect("tempdir");
    let pb = dir.path().join("b");
    ledger(&pb, &s.b);
    let (chained_a, pa) = chained(&branch_events(&s.a));
    let voters = voter_keys(&pa);
    assert!(voters.len() >= 3, "the history has several voters ({})", voters.len());
    let quorum = voters.len() / 2 + 1;

    // Signed by a majority of the voters at its head: the seed's branch has Seed authority
    // and wins over a branch with nothing but its links, named first or second.
    let quorum_seed = dir.path().join("quorum.seed");
    std::fs::write(&quorum_seed, seed::build(&pa, Some(&chained_a), &voters[..quorum]).expect("build")).expect("write");
    let b = Branch::open(&pb).expect("open b");
    let a = Branch::open(&quorum_seed).expect("a quorum-signed seed opens");
    let fork = forensics::fork_point(&a, &b).expect("fork");
    let v = forensics::verdict(&a, &b, &fork.relation).expect("verdict");
    assert_eq!(winner_side(&v), (Side::A, DecidedBy::Authority));
    let Verdict::Wins { a: sa, .. } = &v else { unreachable!() };
    assert_eq!(sa.tier, SporeType::Seed);
    let v = forensics::verdict(&b, &a, &forensics::fork_point(&b, &a).expect("fork").relation).expect("verdict");
    assert_eq!(winner_side(&v), (Side::B, DecidedBy::Authority));

    // Signed by fewer than a majority: a valid seed, but without Seed authority.
    let under = dir.path().join("under.seed");
    std::fs::write(&under, seed::build(&pa, Some(&chained_a), &voters[..quorum - 1]).expect("build")).expect("write");
    let a = Branch::open(&under).expect("an under-signed seed still opens for reading");
    let v = forensics::verdict(&a, &b, &fork.relation).expect("verdict");
    let Verdict::Wins { a: sa, decided_by, .. } = &v else { panic!("{v:?}") };
    assert_eq!(sa.tier, SporeType::Latent, "under-signed: no Seed authority");
    assert_ne!(*decided_by, DecidedBy::Authority);

    // Forged: a signature that does not verify, or one by a key that is not a voter, and the
    // seed does not open at all — it cannot take part in a resolution.
    let mut bytes = std::fs::read(&quorum_seed).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let forged = dir.path().join("forged.seed");
    std::fs::write(&forged, &bytes).expect("write");
    assert!(matches!(Branch::open(&forged), Err(ForensicsError::Seed { .. })));
    // A non-voter's valid signature appended by hand (the library refuses to add it): the
    // file ends `digest 32 ‖ sig_count u16 LE ‖ sig_count × (signer 32 ‖ signature 64)`.
    let outsider =
        history().keys.iter().find(|k| !voters.iter().any(|v| v.node_id() == k.node_id())).expect("a non-voter");
    assert!(matches!(
        seed::add_signature(&std::fs::read(&under).expect("read"), outsider),
        Err(seed::SeedError::NotAVoter(_))
    ));
    let mut signed_by_outsider = std::fs::read(&under).expect("read");
    let count = quorum - 1;
    let count_at = signed_by_outsider.len() - count * 96 - 2;
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&signed_by_outsider[count_at - 32..count_at]);
    let signature = outsider.sign(&seed::seed_signing_message(&history().fingerprint, &digest));
    signed_by_outsider[count_at..count_at + 2].copy_from_slice(&(count as u16 + 1).to_le_bytes());
    signed_by_outsider.extend_from_slice(outsider.node_id().as_bytes());
    signed_by_outsider.extend_from_slice(&signature.0);
    let outsider_seed = dir.path().join("outsider.seed");
    std::fs::write(&outsider_seed, signed_by_outsider).expect("write");
    assert!(
        matches!(Branch::open(&outsider_seed), Err(ForensicsError::Seed { source: seed::SeedError::NotAVoter(id), .. }) if id == outsider.node_id()),
        "a non-voter's signature is named"
    );
}
