//! Projection properties: the live projection is exactly what a replay of the ledger gives,
//! however the events arrived and however the ledger was reopened; and a rejected event
//! changes nothing.

use std::collections::BTreeSet;

use mycnet_spores::core::projection::Projection;
use mycnet_spores::{
    EventBody, Ledger, LedgerReader, NetworkFingerprint, NodeAnnouncement, NodeId, NodeKey, NodeRole, ReplayOptions,
    ServiceAnnouncement, SignedEvent, StopAt, Timestamp, TrustScore,
};
use proptest::prelude::*;
use uuid::Uuid;

use crate::fixture::{config, history, synth_events};

/// Every index query of `p` answers what a projection rebuilt from its state answers.
fn assert_indexes_match_state(p: &Projection) {
    let rebuilt = Projection::from_state(p.state().clone());
    let ids = |it: &mut dyn Iterator<Item = &mycnet_spores::ServiceRecord>| -> BTreeSet<Uuid> {
        it.map(|s| s.service.service_id).collect()
    };
    let mut names = BTreeSet::new();
    let mut caps = BTreeSet::new();
    for s in p.services() {
        names.insert(s.service.name.to_string());
        caps.extend(s.service.capabilities.iter().map(|c| c.to_string()));
    }
    caps.insert("gpu".to_string());
    names.insert("object-store".to_string());
    for name in &names {
        assert_eq!(ids(&mut p.services_by_name(name)), ids(&mut rebuilt.services_by_name(name)), "by name {name}");
    }
    for cap in &caps {
        assert_eq!(
            ids(&mut p.services_by_capability(cap)),
            ids(&mut rebuilt.services_by_capability(cap)),
            "by cap {cap}"
        );
    }
    for n in p.nodes() {
        assert_eq!(ids(&mut p.services_by_node(&n.node)), ids(&mut rebuilt.services_by_node(&n.node)), "by node");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    /// Appending in arbitrary batches, the live projection equals an audit replay from
    /// genesis and the generator's own projection; reopening (checkpoint + tail) gives the
    /// same state and head again.
    #[test]
    fn live_projection_equals_replay_and_reopen(
        seed in any::<u64>(),
        len in 1usize..420,
        batches in prop::collection::vec(1usize..80, 1..12),
        checkpoint_at in any::<prop::sample::Index>(),
    ) {
        let (events, synth) = synth_events(seed, len);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ledger = Ledger::open(dir.path(), config(97)).expect("create");
        // Besides the ones the ledger writes on its own, one checkpoint at a random event.
        let checkpoint_at = checkpoint_at.index(len) as u64;
        let mut rest = events.as_slice();
        for size in batches.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (batch, tail) = rest.split_at((*size).min(rest.len()));
            rest = tail;
            let outcome = ledger.append(batch.to_vec()).expect("append");
            prop_assert!(outcome.iter().all(Result::is_ok), "valid events rejected");
            if ledger.checkpoint_seq().is_none_or(|c| c < checkpoint_at)
                && ledger.head().is_some_and(|h| h.seq >= checkpoint_at)
            {
                ledger.write_checkpoint().expect("checkpoint");
            }
        }
        let live = ledger.projection().clone();
        let head = ledger.head();
        prop_assert_eq!(head.map(|h| h.seq), Some(len as u64 - 1));
        prop_assert_eq!(live.state(), synth.projection().state());
        let (replayed, stats) = ledger.replay(&ReplayOptions { audit: true, stop: StopAt::End }).expect("audit replay");
        prop_assert_eq!(stats.events, len as u64);
        prop_assert_eq!(stats.signatures_verified, len as u64);
        prop_assert_eq!(replayed.state(), live.state());
        assert_indexes_match_state(&live);
        drop(ledger);

        let reopened = Ledger::open(dir.path(), config(97)).expect("reopen");
        prop_assert_eq!(reopened.head(), head);
        prop_assert_eq!(reopened.projection().state(), live.state());
        assert_indexes_match_state(reopened.projection());
        // Reopening starts from a stored checkpoint only where the chain attests it: the
        // event after it is a state checkpoint of exactly that seq.
        if let Some(c) = reopened.checkpoint_seq() {
            let next = events.get(c as usize + 1).map(|e| &e.body);
            prop_assert!(
                matches!(next, Some(EventBody::StateCheckpoint { head_seq, .. }) if *head_seq == c),
                "reopening used an unattested checkpoint at {}", c
            );
        }
        drop(reopened);
        let reader = LedgerReader::open(dir.path()).expect("reader");
        let (full, _) = reader.replay(&ReplayOptions::default(), &|_| {}).expect("trusted replay");
        prop_assert_eq!(full.state(), live.state());
    }
}

/// What a random event is made of; most combinations are invalid in some way.
#[derive(Clone, Debug)]
struct EventRecipe {
    author: usize,
    subject: usize,
    kind: u8,
    service: prop::sample::Index,
    fresh_service: bool,
    text_len: usize,
    caps: usize,
    score: u16,
    time_offset: i64,
    other_network: bool,
    role: bool,
}

fn recipe() -> impl Strategy<Value = EventRecipe> {
    (
        (
            prop_oneof![3 => 0usize..3, 2 => 0usize..14],
            0usize..14,
            0u8..12,
            any::<prop::sample::Index>(),
            prop::bool::weighted(0.3),
        ),
        (
            prop_oneof![6 => 1usize..8, 1 => Just(0), 1 => Just(129), 1 => Just(2000)],
            prop_oneof![4 => 0usize..4, 1 => Just(65)],
            prop_oneof![4 => 0u16..=1000, 1 => 1001u16..1100],
        ),
        (prop_oneof![6 => 0..1_000_000i64, 1 => Just(-10_000_000_000)], prop::bool::weighted(0.1), any::<bool>()),
    )
        .prop_map(
            |(
                (author, subject, kind, service, fresh_service),
                (text_len, caps, score),
                (time_offset, other_network, role),
            )| {
                EventRecipe {
                    author,
                    subject,
                    kind,
                    service,
                    fresh_service,
                    text_len,
                    caps,
                    score,
                    time_offset,
                    other_network,
                    role,
                }
            },
        )
}

/// Builds (and signs) the event a recipe describes against `p`. Keys 12 and 13 are strangers.
fn cook(r: &EventRecipe, p: &Projection, keys: &[NodeKey], fingerprint: NetworkFingerprint) -> SignedEvent {
    let key = &keys[r.author];
    let node: NodeId = keys[r.subject].node_id();
    let text = "t".repeat(r.text_len);
    let caps: Vec<String> = (0..r.caps).map(|i| format!("cap-{}", i % 3)).collect();
    let services: Vec<Uuid> = p.services().map(|s| s.service.service_id).collect();
    let service_id = if r.fresh_service || services.is_empty() {
        Uuid::from_u128(r.service.index(usize::MAX) as u128)
    } else {
        services[r.service.index(services.len())]
    };
    let role = if r.role { NodeRole::Sclerotium } else { NodeRole::Rhizomorph };
    let body = match r.kind {
        0 => EventBody::NodeJoined(NodeAnnouncement {
            node,
            name: text.clone(),
            role,
            addresses: vec!["127.0.0.1:1".into()],
            capabilities: caps,
        }),
        1 => EventBody::NodeUpdated {
            node,
            name: Some(text.clone()).filter(|t| !t.is_empty()),
            role: r.role.then_some(role),
        },
        2 => EventBody::NodeLeft { node, reason: text.clone() },
        3 => EventBody::CapabilitiesChanged { node, capabilities: caps },
        4 => EventBody::AddressesChanged { node, addresses: vec!["a".repeat(r.text_len)] },
        5 => EventBody::TrustScoreChanged { node, score: TrustScore(r.score), reason: text.clone() },
        6 => EventBody::ServiceRegistered(ServiceAnnouncement {
            service_id,
            name: text.clone().into(),
            node,
            capabilities: caps.into_iter().map(Into::into).collect(),
            endpoints: vec![].into(),
            metadata: vec![].into(),
        }),
        7 => EventBody::ServiceDeregistered { service_id, reason: text.clone() },
        8 => EventBody::NodeWentOffline { node, last_seen: Timestamp(0) },
        9 => EventBody::NodeBackOnline { node },
        10 => {
            let head = p.head().expect("after genesis");
            let seq = if r.role { head.seq } else { head.seq.wrapping_sub(1) };
            EventBody::Checkpoint { head_seq: seq, head_hash: head.hash }
        }
        _ => EventBody::Genesis {
            network: p.network().expect("after genesis").clone(),
            founder: NodeAnnouncement { node, name: "x".into(), role, addresses: vec![], capabilities: vec![] },
        },
    };
    let fp = if r.other_network { NetworkFingerprint([9; 32]) } else { fingerprint };
    let ts = Timestamp(p.head().expect("after genesis").timestamp.0 + r.time_offset);
    SignedEvent::sign(key, fp, ts, body)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random events against random points of the history: `check` and `append`/`apply` agree,
    /// a rejected event leaves the state (and the indexes) exactly as they were, an accepted
    /// one advances the head by one.
    #[test]
    fn a_rejected_event_changes_nothing(
        prefix in 1usize..200,
        recipes in prop::collection::vec(recipe(), 1..12),
    ) {
        let h = history();
        let mut keys = h.keys.clone();
        keys.push(NodeKey::from_seed([0xa1; 32]));
        keys.push(NodeKey::from_seed([0xa2; 32]));
        let mut p = Projection::new();
        for ev in &h.events[..prefix] {
            p.append(ev.clone()).expect("valid history");
        }
        let (mut accepted, mut rejected) = (0, 0);
        for r in &recipes {
            let ev = cook(r, &p, &keys, h.fingerprint);
            let before = p.clone();
            let checked = p.check(&ev);
            prop_assert_eq!(p.state(), before.state(), "check changed the state");

            // apply() of the correctly linked event agrees with check() and changes nothing
            // when it refuses.
            let linked = mycnet_spores::ChainedEvent::link(p.next_seq(), p.head_hash(), ev.clone());
            let mut q = p.clone();
            prop_assert_eq!(q.apply(&linked).is_ok(), checked.is_ok());
            if checked.is_err() {
                prop_assert_eq!(q.state(), before.state());
            }
            // A badly linked one is refused whatever it says.
            let mut misplaced = linked.clone();
            misplaced.seq += 1;
            let mut q = p.clone();
            prop_assert!(q.apply(&misplaced).is_err());
            prop_assert_eq!(q.state(), before.state());

            match p.append(ev) {
                Ok(chained) => {
                    prop_assert!(checked.is_ok());
                    accepted += 1;
                    prop_assert_eq!(chained.seq, before.next_seq());
                    prop_assert_eq!(p.head().map(|h| h.hash), Some(chained.hash));
                }
                Err(rejection) => {
                    prop_assert_eq!(Err(rejection), checked);
                    rejected += 1;
                    prop_assert_eq!(p.state(), before.state(), "a rejected event changed the state");
                }
            }
            assert_indexes_match_state(&p);
        }
        prop_assert_eq!(accepted + rejected, recipes.len());
    }
}

/// The recipes reach both outcomes (otherwise the property above proves little).
#[test]
fn random_recipes_are_sometimes_accepted_and_sometimes_rejected() {
    use proptest::strategy::ValueTree;
    let h = history();
    let mut keys = h.keys.clone();
    keys.push(NodeKey::from_seed([0xa1; 32]));
    keys.push(NodeKey::from_seed([0xa2; 32]));
    let mut p = Projection::new();
    for ev in &h.events[..150] {
        p.append(ev.clone()).expect("valid history");
    }
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut ok, mut err) = (0, 0);
    for _ in 0..400 {
        let r = recipe().new_tree(&mut runner).expect("recipe").current();
        match p.clone().append(cook(&r, &p, &keys, h.fingerprint)) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    assert!(ok >= 60 && err >= 60, "accepted {ok}, rejected {err}");
}
