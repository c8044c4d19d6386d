//! A malicious peer: answers our requests with whatever it likes. Each case must end the
//! session with a violation (or fork evidence), and leave our ledger exactly as it was.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use mycnet_spores::core::event::{ChainedEvent, EventBody, SignedEvent};
use mycnet_spores::core::gossip::{
    Digest, ForkEvidence, GossipMessage, LocalView, SessionEvent, SessionOutcome, SyncConfig, SyncSession, Violation,
};
use mycnet_spores::store::synth::SynthConfig;
use mycnet_spores::{ChainPoint, Ledger, NodeKey};

use super::{ledger_with, local_view, pump};
use crate::fixture::synth_events;

struct Victim {
    _tmp: tempfile::TempDir,
    ledger: Ledger,
    honest: Vec<ChainedEvent>,
}

/// A victim holding the first 100 events of a 300-event history; `honest` is the full
/// chain as its honest peers hold it.
fn victim() -> Victim {
    let (events, _) = synth_events(0xbad, 300);
    let tmp = tempfile::tempdir().unwrap();
    let full = ledger_with(&tmp.path().join("full"), &events);
    let honest = full.read_range(0, 299).unwrap();
    drop(full);
    let ledger = ledger_with(&tmp.path().join("victim"), &events[..100]);
    Victim { _tmp: tmp, ledger, honest }
}

/// Runs the victim's session against a scripted peer: the peer says hello with `digest`,
/// and `answer(request)` gives each reply. Returns the outcome.
fn attack_with(
    v: &mut Victim,
    digest: Digest,
    allow_good_prefix: bool,
    mut answer: impl FnMut(u64, u32) -> Vec<GossipMessage>,
) -> SessionOutcome {
    let now = Instant::now();
    let before = (v.ledger.head(), v.ledger.projection().state().clone());
    let mut s =
        SyncSession::new(SyncConfig { batch_events: 64, ..Default::default() }, local_view(&v.ledger, true), now);
    s.handle(GossipMessage::Hello(digest), now);
    let mut stored = 0;
    let mut outcome = None;
    for _ in 0..1000 {
        let mut out = VecDeque::new();
        if let Some(o) = pump(&mut s, &mut v.ledger, &mut out, &mut stored, u32::MAX) {
            outcome = Some(o);
            break;
        }
        let mut replies = Vec::new();
        for m in out {
            match m {
                GossipMessage::Request { from, max_events } => replies.extend(answer(from, max_events)),
                GossipMessage::Bye => replies.push(GossipMessage::Bye),
                _ => {}
            }
        }
        if replies.is_empty() {
            break;
        }
        for r in replies {
            s.handle(r, now);
        }
    }
    let outcome = outcome.expect("the session ended");
    if !matches!(outcome, SessionOutcome::Completed) && !allow_good_prefix {
        assert_eq!(stored, 0, "nothing of a bad peer's ranges is stored");
        assert_eq!(v.ledger.head(), before.0);
        assert_eq!(v.ledger.projection().state(), &before.1);
    }
    outcome
}

fn attack(v: &mut Victim, digest: Digest, answer: impl FnMut(u64, u32) -> Vec<GossipMessage>) -> SessionOutcome {
    attack_with(v, digest, false, answer)
}

fn digest_of(events: &[ChainedEvent]) -> Digest {
    let last = events.last().unwrap();
    Digest {
        fingerprint: Some(last.event.fingerprint),
        head: Some(ChainPoint { seq: last.seq, hash: last.hash }),
        anchor: None,
        peers: vec![],
        primary: true,
    }
}

fn range(events: &[ChainedEvent], from: u64, max: u32) -> Vec<ChainedEvent> {
    events.iter().skip(from as usize).take(max as usize).cloned().collect()
}

fn violation(o: SessionOutcome) -> Violation {
    match o {
        SessionOutcome::Violation(v) => v,
        other => panic!("expected a violation, got {other:?}"),
    }
}

/// Re-links `events` from index `at` on, so the chain is consistent again after a change.
fn relink(events: &mut [ChainedEvent], at: usize) {
    for i in at..events.len() {
        let prev = if i == 0 { mycnet_spores::ChainHash::ZERO } else { events[i - 1].hash };
        events[i] = ChainedEvent::link(events[i].seq, prev, events[i].event.clone());
    }
}

#[test]
fn an_honest_peer_is_accepted() {
    let mut v = victim();
    let honest = v.honest.clone();
    let o = attack(&mut v, digest_of(&honest), |f, m| vec![GossipMessage::Range(range(&honest, f, m))]);
    assert_eq!(o, SessionOutcome::Completed, "the attack harness itself works");
    assert_eq!(v.ledger.head().map(|h| h.hash), honest.last().map(|e| e.hash));
}

#[test]
fn a_bad_signature_is_refused_by_the_ledger() {
    let mut v = victim();
    let mut forged = v.honest.clone();
    // A byte of the signature of seq 130, with the chain re-linked around it.
    forged[130].event.signature.0[7] ^= 1;
    relink(&mut forged, 130);
    let o = attack(&mut v, digest_of(&forged), |f, m| vec![GossipMessage::Range(range(&forged, f, m))]);
    let v2 = violation(o);
    assert!(matches!(v2, Violation::Refused(ref r) if r.contains("bad signature")), "{v2}");
}

#[test]
fn a_broken_link_a_gap_and_a_bad_hash_are_caught_before_storing() {
    let mut v = victim();
    let honest = v.honest.clone();
    // Broken link: prev_hash of 140 altered.
    let mut broken = honest.clone();
    broken[140].prev_hash.0[0] ^= 1;
    let o = attack(&mut v, digest_of(&honest), |f, m| vec![GossipMessage::Range(range(&broken, f, m))]);
    assert_eq!(violation(o), Violation::BrokenLink { seq: 140 });
    // Gap: 150 missing.
    let mut gapped = honest.clone();
    gapped.remove(150);
    let o = attack(&mut v, digest_of(&honest), |f, m| {
        let mut r: Vec<ChainedEvent> = gapped.iter().filter(|e| e.seq >= f).take(m as usize).cloned().collect();
        r.truncate(m as usize);
        vec![GossipMessage::Range(r)]
    });
    assert_eq!(violation(o), Violation::BrokenLink { seq: 151 });
    // Bad hash: the content of 160 changed, links kept.
    let mut tampered = honest.clone();
    tampered[160].event.timestamp.0 += 1;
    let o = attack(&mut v, digest_of(&honest), |f, m| vec![GossipMessage::Range(range(&tampered, f, m))]);
    assert_eq!(violation(o), Violation::BadHash { seq: 160 });
}

#[test]
fn replayed_unrequested_and_overlong_ranges_are_refused() {
    let mut v = victim();
    let honest = v.honest.clone();
    // Replaying an old range (events the victim already has) in answer to a request.
    let o = attack(&mut v, digest_of(&honest), |_, m| vec![GossipMessage::Range(range(&honest, 10, m))]);
    assert_eq!(violation(o), Violation::StartMismatch { asked: 99, got: 10 });
    // The same batch sent twice: the first answers the request and is stored, the replay
    // answers nothing it was asked and is refused.
    let o = attack_with(&mut v, digest_of(&honest), true, |f, m| {
        vec![GossipMessage::Range(range(&honest, f, m)), GossipMessage::Range(range(&honest, f, m))]
    });
    assert_eq!(violation(o), Violation::StartMismatch { asked: 163, got: 99 });
    assert_eq!(v.ledger.head().map(|h| h.seq), Some(162), "only the requested batch was stored");
    // A range to a session that asked for nothing.
    let now = Instant::now();
    let mut s = SyncSession::new(SyncConfig::default(), local_view(&v.ledger, false), now);
    // (A peer at our own head: a session that does not pull has nothing to probe either.)
    let mut at_our_head = digest_of(&honest);
    at_our_head.head = v.ledger.head().map(|h| mycnet_spores::ChainPoint { seq: h.seq, hash: h.hash });
    s.handle(GossipMessage::Hello(at_our_head), now);
    s.handle(GossipMessage::Range(range(&honest, 163, 5)), now);
    let last = std::iter::from_fn(|| s.poll_event()).last();
    assert_eq!(last, Some(SessionEvent::Finished(SessionOutcome::Violation(Violation::Unrequested(5)))));
    // More events than asked.
    let mut v = victim();
    let o = attack(&mut v, digest_of(&honest), |f, m| vec![GossipMessage::Range(range(&honest, f, m + 5))]);
    assert!(matches!(violation(o), Violation::TooLong { .. }));
}

#[test]
fn another_networks_events_are_refused() {
    let mut v = victim();
    let (other, _) = synth_events(0x07e1, 300);
    let tmp = tempfile::tempdir().unwrap();
    let other = ledger_with(tmp.path(), &other).read_range(0, 299).unwrap();
    // It says so in its hello: refused at once.
    let o = attack(&mut v, digest_of(&other), |f, m| vec![GossipMessage::Range(range(&other, f, m))]);
    assert!(matches!(violation(o), Violation::WrongNetwork { .. }));
    // It lies in its hello and links a foreign event into our chain.
    let mut mixed = v.honest.clone();
    mixed[120].event = other[120].event.clone();
    relink(&mut mixed, 120);
    let claimed = digest_of(&v.honest);
    let o = attack(&mut v, claimed, |f, m| vec![GossipMessage::Range(range(&mixed, f, m))]);
    assert_eq!(violation(o), Violation::ForeignEvent { seq: 120 });
}

#[test]
fn a_rule_breaking_event_mid_range_is_refused_atomically() {
    let mut v = victim();
    // Seq 110 is re-signed by a rhizomorph (not an authority) setting a trust score: the
    // signature is valid, the links are valid, the rules refuse it. The events before it
    // in the same batch must not stay applied.
    let (_, synth) = synth_events(0xbad, 1);
    let keys = synth.keys().to_vec();
    let fp = v.honest[0].event.fingerprint;
    let rhizo: &NodeKey = keys.last().unwrap();
    let target = keys[0].node_id();
    let mut forged = v.honest.clone();
    forged[110].event = SignedEvent::sign(
        rhizo,
        fp,
        forged[110].event.timestamp,
        EventBody::TrustScoreChanged { node: target, score: mycnet_spores::TrustScore(1), reason: "x".into() },
    );
    relink(&mut forged, 110);
    let o = attack(&mut v, digest_of(&forged), |f, m| vec![GossipMessage::Range(range(&forged, f, m))]);
    let v2 = violation(o);
    assert!(matches!(v2, Violation::Refused(ref r) if r.contains("rejected")), "{v2}");
}

#[test]
fn equivocation_yields_fork_evidence_and_stores_nothing() {
    let mut v = victim();
    // The peer's chain differs at seq 99 (our head): another valid event there.
    let mut other = v.honest.clone();
    other[99].event.timestamp.0 += 1;
    let key = mycnet_spores::store::synth::Synth::new(SynthConfig { seed: 0xbad, nodes: 12, ..Default::default() });
    let signer = key.keys().iter().find(|k| k.node_id() == other[99].event.author).unwrap().clone();
    let e = &other[99].event;
    other[99].event = SignedEvent::sign(&signer, e.fingerprint, e.timestamp, e.body.clone());
    relink(&mut other, 99);
    let o = attack(&mut v, digest_of(&other), |f, m| vec![GossipMessage::Range(range(&other, f, m))]);
    let SessionOutcome::Fork(evidence) = o else { panic!("expected fork evidence, got {o:?}") };
    assert_eq!(evidence.seq(), 99);
    assert_eq!(evidence.check(), Ok(()));
    assert_eq!(evidence.ours.hash, v.honest[99].hash);
    // Same-height fork: the peer's head is at our head's seq with another hash.
    let mut v = victim();
    let o = attack(&mut v, digest_of(&other[..100]), |f, m| vec![GossipMessage::Range(range(&other, f, m))]);
    assert!(matches!(o, SessionOutcome::Fork(ref e) if e.seq() == 99), "{o:?}");
    // Forged evidence does not check.
    let mut fake = ForkEvidence { ours: v.honest[99].clone(), theirs: v.honest[99].clone() };
    assert!(fake.check().is_err());
    fake.theirs.hash.0[0] ^= 1;
    assert!(fake.check().is_err());
}

#[test]
fn protocol_order_is_enforced() {
    let now = Instant::now();
    let mut s = SyncSession::new(SyncConfig::default(), LocalView::default(), now);
    s.handle(GossipMessage::Request { from: 0, max_events: 10 }, now);
    let mut evs = Vec::new();
    while let Some(e) = s.poll_event() {
        evs.push(e);
    }
    assert_eq!(
        evs,
        vec![SessionEvent::Finished(SessionOutcome::Violation(Violation::Protocol("request before hello")))]
    );
    // A session with no traffic times out.
    let mut s = SyncSession::new(SyncConfig::default(), LocalView::default(), now);
    s.handle_timeout(now + Duration::from_secs(60));
    assert!(s.is_finished());
}
