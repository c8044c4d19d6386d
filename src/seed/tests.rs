//! Seed unit tests: building, verifying, co-signing and importing.

use super::*;
use crate::core::event::ChainedEvent;
use crate::core::keys::NodeKey;
use crate::core::projection::Projection;
use crate::core::types::{ChainHash, NodeId};
use crate::store::synth::{Synth, SynthConfig};

fn sample() -> (Synth, Vec<ChainedEvent>) {
    let mut s = Synth::new(SynthConfig { seed: 5, nodes: 8, voters: 3, ..Default::default() });
    let mut p = Projection::new();
    let mut chained = Vec::new();
    for ev in s.next_chunk(300) {
        chained.push(p.append(ev).expect("valid"));
    }
    (s, chained)
}

/// A seed whose events are consistent (linked, replaying to its state) and signed by a
/// voter, but one of whose events carries a forged signature, is refused at that event.
#[test]
fn a_forged_event_signature_inside_a_signed_seed_is_refused() {
    let (s, events) = sample();
    let voter = s
        .keys()
        .iter()
        .find(|k| s.projection().node(&k.node_id()).is_some_and(|n| n.role.is_authority()))
        .expect("voter");
    let forged_at = 123usize;
    let mut p = Projection::new();
    let mut tampered: Vec<ChainedEvent> = Vec::new();
    for (i, ce) in events.iter().enumerate() {
        let mut ev = ce.event.clone();
        if i == forged_at {
            ev.signature.0[10] ^= 0x01;
        }
        let linked = ChainedEvent::link(i as u64, p.head_hash(), ev);
        p.apply(&linked).expect("the rules do not look at signatures");
        tampered.push(linked);
    }
    let bytes = build(&p, Some(&tampered), &[voter]).expect("build");
    match verify(&bytes, VerifyPolicy::default()) {
        Err(SeedError::BadEvents { seq, reason }) => {
            assert_eq!(seq, forged_at as u64);
            assert!(reason.contains("signature"), "{reason}");
        }
        other => panic!("expected the forged event to be refused, got {other:?}"),
    }
    // The same seed without its events has nothing forged in it.
    let bytes = build(&p, None, &[voter]).expect("build");
    assert!(verify(&bytes, VerifyPolicy::default()).is_ok());
}

#[test]
fn import_extends_a_ledger_and_refuses_older_diverging_or_raft_managed_ones() {
    use crate::store::ledger::{Ledger, LedgerConfig};
    let (s, events) = sample();
    let founder = &s.keys()[0];
    let bytes = build(s.projection(), Some(&events), &[founder]).expect("build");
    let seed = verify(&bytes, VerifyPolicy::default()).expect("verify");
    let cfg = LedgerConfig { durable: false, ..LedgerConfig::default() };
    let dir = tempfile::tempdir().expect("tempdir");

    // Empty → everything; a prefix → the rest; at or past the head → NotNewer.
    let mut empty = Ledger::open(dir.path().join("empty"), cfg.clone()).expect("open");
    assert_eq!(import(&mut empty, &seed).expect("import").hash, seed.header.head_hash);
    assert!(matches!(import(&mut empty, &seed), Err(SeedError::NotNewer { .. })));
    let mut prefix = Ledger::open(dir.path().join("prefix"), cfg.clone()).expect("open");
    prefix.append(events[..100].iter().map(|e| e.event.clone()).collect()).expect("append");
    assert_eq!(import(&mut prefix, &seed).expect("extend").seq, seed.header.head_seq);

    // A ledger whose event 100 differs: refused, and it keeps its own head.
    let mut fork = Ledger::open(dir.path().join("fork"), cfg.clone()).expect("open");
    fork.append(events[..100].iter().map(|e| e.event.clone()).collect()).expect("append");
    let head = fork.head().expect("head");
    let fp = fork.fingerprint().expect("fingerprint");
    let body = crate::core::event::EventBody::Checkpoint { head_seq: head.seq, head_hash: head.hash };
    let other =
        crate::core::event::SignedEvent::sign(founder, fp, crate::core::types::Timestamp(head.timestamp.0 + 1), body);
    fork.append(vec![other]).expect("append").remove(0).expect("valid");
    let forked_head = fork.head();
    assert!(matches!(import(&mut fork, &seed), Err(SeedError::Diverges { seq: 100 })));
    assert_eq!(fork.head(), forked_head, "nothing imported");

    // A ledger Raft manages.
    let mut managed = Ledger::open(dir.path().join("managed"), cfg).expect("open");
    managed.append_with_meta(vec![events[0].event.clone()], vec![(b"raft_applied".to_vec(), vec![0])]).expect("append");
    assert!(matches!(import(&mut managed, &seed), Err(SeedError::RaftManaged)));
}

#[test]
fn co_signed_seeds_become_quorum_signed_and_bulk_import_verbatim() {
    use crate::store::ledger::{Ledger, LedgerConfig};
    let (s, events) = sample();
    let p = s.projection();
    let voters: Vec<&NodeKey> = s
        .keys()
        .iter()
        .filter(|k| {
            p.node(&k.node_id())
                .is_some_and(|n| n.role.is_authority() && n.status != crate::core::projection::NodeStatus::Left)
        })
        .collect();
    assert!(voters.len() >= 2, "the sample has several voters");
    let one = build(p, Some(&events), &voters[..1]).expect("build");
    assert!(matches!(verify_quorum(&one, None), Err(SeedError::UnderSigned { .. })));
    assert!(add_signature(&one, voters[0]).is_err(), "signing twice is refused");
    let outsider = s.keys().iter().find(|k| !voters.iter().any(|v| v.node_id() == k.node_id())).expect("a non-voter");
    assert!(matches!(add_signature(&one, outsider), Err(SeedError::NotAVoter(_))));
    let mut bytes = one;
    for v in &voters[1..] {
        bytes = add_signature(&bytes, v).expect("co-sign");
    }
    let q = verify_quorum(&bytes, p.fingerprint()).expect("quorum-signed now");
    assert_eq!(q.signers.len(), voters.len());

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LedgerConfig { durable: false, ..LedgerConfig::default() };
    let mut ledger = Ledger::open(dir.path().join("l"), cfg.clone()).expect("open");
    let head = import_quorum(&mut ledger, &q).expect("bulk import");
    assert_eq!((head.seq, head.hash), (q.header.head_seq, q.header.head_hash));
    assert!(matches!(import_quorum(&mut ledger, &q), Err(SeedError::NotNewer { .. })));
    drop(ledger);
    // What was loaded verbatim is a ledger every check accepts, with the seed's state.
    let report = crate::store::inspect::LedgerReader::open(&dir.path().join("l"))
        .expect("reader")
        .verify(&|_| {})
        .expect("verify");
    assert!(report.is_ok(), "{:?}", report.first_error);
    let reopened = Ledger::open(dir.path().join("l"), cfg).expect("reopen");
    assert_eq!(reopened.projection().state(), p.state());
}

/// Properly signed seeds that must still be refused: a header whose head is not its
/// state's, and a signer that is not a voter.
#[test]
fn a_head_not_matching_its_state_or_a_non_voter_signer_is_refused() {
    let (s, events) = sample();
    let p = s.projection();
    let founder = &s.keys()[0];
    let head = p.head().expect("head");
    let header = SeedHeader {
        network: p.network().cloned().expect("network"),
        fingerprint: p.fingerprint().expect("fingerprint"),
        head_seq: head.seq,
        head_hash: ChainHash([7; 32]),
        includes_events: false,
    };
    let mut bytes = encode::encode_unsigned(&header, p.state(), &[]);
    let digest = *blake3::hash(&bytes).as_bytes();
    bytes.extend_from_slice(&digest);
    encode::append_signatures(&mut bytes, &header.fingerprint, &digest, &[founder]);
    assert!(matches!(verify(&bytes, VerifyPolicy::default()), Err(SeedError::StateMismatch(_))));

    let outsider =
        s.keys().iter().find(|k| p.node(&k.node_id()).is_none_or(|n| !n.role.is_authority())).expect("a non-voter");
    let bytes = build(p, Some(&events), &[outsider]).expect("build");
    assert!(
        matches!(verify(&bytes, VerifyPolicy::default()), Err(SeedError::NotAVoter(id)) if id == outsider.node_id())
    );
}

/// A history in chunks, so the generator commits state checkpoints as a leader does.
fn attested_sample() -> (Synth, Vec<ChainedEvent>) {
    let mut s = Synth::new(SynthConfig { seed: 9, nodes: 8, voters: 3, ..Default::default() });
    let mut p = Projection::new();
    let mut chained = Vec::new();
    for _ in 0..12 {
        for ev in s.next_chunk(100) {
            chained.push(p.append(ev).expect("valid"));
        }
    }
    (s, chained)
}

/// The seq of the state the last state checkpoint among `events` attests.
fn last_attested(events: &[ChainedEvent]) -> u64 {
    events
        .iter()
        .rev()
        .find_map(|e| match e.event.body {
            crate::core::event::EventBody::StateCheckpoint { head_seq, .. } => Some(head_seq),
            _ => None,
        })
        .expect("the sample attests a state")
}

fn ledger_of(dir: &std::path::Path, events: &[ChainedEvent]) -> std::sync::RwLock<crate::store::ledger::Ledger> {
    use crate::store::ledger::{Ledger, LedgerConfig};
    let mut l = Ledger::open(dir, LedgerConfig { durable: false, ..LedgerConfig::default() }).expect("open");
    l.append(events.iter().map(|e| e.event.clone()).collect()).expect("append");
    std::sync::RwLock::new(l)
}

/// The streaming export writes exactly the bytes `build` makes from the same ledger: a full
/// seed with every event, and a state-only seed from the newest attested state.
#[test]
fn streamed_export_equals_build() {
    let (s, events) = attested_sample();
    let dir = tempfile::tempdir().expect("tempdir");
    let lock = ledger_of(&dir.path().join("l"), &events);
    let key = &s.keys()[0];
    let full = dir.path().join("full.seed");
    let done = export(&lock, key, &full, true).expect("export");
    assert!(done.includes_events);
    assert!(std::fs::read(&full).expect("read") == build(s.projection(), Some(&events), &[key]).expect("build"));

    let bare = dir.path().join("bare.seed");
    let done = export(&lock, key, &bare, false).expect("export");
    let at = last_attested(&events);
    assert!(!done.includes_events);
    assert_eq!(done.state_seq, at, "the newest attested state");
    let mut p = Projection::new();
    for e in &events[..=at as usize] {
        p.apply(e).expect("replay");
    }
    let want = build_state_only(p.state(), &events[at as usize + 1..], s.projection().state(), &[key]).expect("build");
    assert!(std::fs::read(&bare).expect("read") == want, "state-only export differs from build_state_only");
}

/// A state-only seed carries the attested state and the events after it; it verifies against
/// the chain, imports into an empty ledger as that state plus those events (the history
/// below to be backfilled), and any other state, however well signed, is refused.
#[test]
fn state_only_seeds_are_checked_against_the_chain() {
    use crate::store::ledger::{Ledger, LedgerConfig};
    let (s, events) = attested_sample();
    let dir = tempfile::tempdir().expect("tempdir");
    let lock = ledger_of(&dir.path().join("l"), &events);
    let voter = s
        .keys()
        .iter()
        .find(|k| s.projection().node(&k.node_id()).is_some_and(|n| n.role.is_authority()))
        .expect("voter");
    let path = dir.path().join("bare.seed");
    export(&lock, voter, &path, false).expect("export");
    let bytes = std::fs::read(&path).expect("read");
    let seed = verify(&bytes, VerifyPolicy::default()).expect("verify");
    let at = last_attested(&events);
    assert_eq!(seed.version, SEED_FORMAT_V2);
    assert!(matches!(seed.proof, StateProof::AttestedAt { seq, .. } if seq == at), "{:?}", seed.proof);
    assert_eq!(&seed.state, s.projection().state(), "the state at the head, replayed from the attested one");
    assert_eq!(seed.events.len() as u64, s.projection().head().expect("head").seq - at);

    let mut l = Ledger::open(dir.path().join("imported"), LedgerConfig { durable: false, ..LedgerConfig::default() })
        .expect("open");
    let head = import(&mut l, &seed).expect("import");
    assert_eq!(head, s.projection().head().expect("head"));
    assert_eq!(l.history_from(), at + 1, "the tail is held, the history below is backfilled later");
    assert_eq!(l.projection().state(), s.projection().state());
    drop(l);
    let reopened =
        Ledger::open(dir.path().join("imported"), LedgerConfig { durable: false, ..LedgerConfig::default() })
            .expect("reopen");
    assert_eq!(reopened.projection().state(), s.projection().state());

    // A forged state (one endpoint changed), signed by a voter: the chain attests another.
    let base = seed.base.clone().expect("base");
    let mut forged = base.clone();
    let id =
        *forged.services.iter().find(|(_, r)| !r.service.endpoints.is_empty()).expect("a service with an endpoint").0;
    let svc = std::sync::Arc::make_mut(forged.services.get_mut(&id).expect("present"));
    svc.service.endpoints[0].address = "203.0.113.66:443".into();
    let forged_bytes = build_state_only(&forged, &seed.events, &seed.state, &[voter]).expect("build");
    assert!(matches!(verify(&forged_bytes, VerifyPolicy::default()), Err(SeedError::NotAttested(_))));
    // The attesting event left out: nothing vouches for the state.
    let unattested = build_state_only(&base, &seed.events[1..], &seed.state, &[voter]);
    let refused = unattested.map(|b| verify(&b, VerifyPolicy::default()));
    assert!(
        matches!(refused, Ok(Err(SeedError::NotAttested(_))) | Ok(Err(SeedError::BadEvents { .. }))),
        "{refused:?}"
    );
    // A state-only seed without its attesting event cannot be built at all.
    assert!(matches!(build_state_only(&base, &[], &seed.state, &[voter]), Err(SeedError::NotAttested(_))));

    // Every flipped byte and every truncation of it is refused.
    for i in (0..bytes.len()).step_by(11) {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        assert!(verify(&b, VerifyPolicy::default()).is_err(), "flip at {i} accepted");
    }
    for n in [0, 9, 40, bytes.len() / 2, bytes.len() - 1] {
        assert!(verify(&bytes[..n], VerifyPolicy::default()).is_err(), "truncation to {n} accepted");
    }
}

/// A ledger whose chain attests no state yet exports every event instead (its state is then
/// proven by replay); a format 1 state-only seed still verifies, saying what it rests on.
#[test]
fn without_an_attested_state_the_export_carries_every_event_and_old_seeds_say_what_is_unproven() {
    let (s, events) = sample();
    assert!(!events.iter().any(|e| matches!(e.event.body, crate::core::event::EventBody::StateCheckpoint { .. })));
    let dir = tempfile::tempdir().expect("tempdir");
    let lock = ledger_of(&dir.path().join("l"), &events);
    let path = dir.path().join("bare.seed");
    let done = export(&lock, &s.keys()[0], &path, false).expect("export");
    assert!(done.includes_events);
    let seed = read_file(&path, VerifyPolicy::default()).expect("verify");
    assert_eq!((seed.version, seed.proof), (SEED_FORMAT_V1, StateProof::FullHistory));

    let old = build(s.projection(), None, &[&s.keys()[0]]).expect("build");
    let seed = verify(&old, VerifyPolicy::default()).expect("a format 1 state-only seed still verifies");
    assert_eq!((seed.version, seed.proof), (SEED_FORMAT_V1, StateProof::SignersOnly));
    assert!(seed.proof.to_string().contains("NOT proven"));
}

#[test]
fn round_trip_with_and_without_events() {
    let (s, events) = sample();
    let voter_ids: Vec<NodeId> =
        s.projection().active_nodes().filter(|n| n.role.is_authority()).map(|n| n.node).collect();
    let voters: Vec<&NodeKey> = s.keys().iter().filter(|k| voter_ids.contains(&k.node_id())).collect();
    assert!(!voters.is_empty());
    for include in [false, true] {
        let bytes = build(s.projection(), include.then_some(events.as_slice()), &voters).expect("build");
        let seed =
            verify(&bytes, VerifyPolicy { require_quorum: true, expected_network: s.projection().fingerprint() })
                .expect("verify");
        assert_eq!(seed.head().seq, s.projection().head().expect("head").seq);
        assert_eq!(seed.events.len(), if include { events.len() } else { 0 });
        assert_eq!(&seed.state, s.projection().state());
    }
}

#[test]
fn every_flipped_byte_is_refused() {
    let (s, _) = sample();
    let voters: Vec<&NodeKey> = s.keys().iter().take(1).collect();
    let bytes = build(s.projection(), None, &voters).expect("build");
    for i in (0..bytes.len()).step_by(7) {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        assert!(verify(&b, VerifyPolicy::default()).is_err(), "flip at {i} accepted");
    }
    for n in [0, 5, 20, bytes.len() - 1] {
        assert!(verify(&bytes[..n], VerifyPolicy::default()).is_err(), "truncation to {n} accepted");
    }
}
