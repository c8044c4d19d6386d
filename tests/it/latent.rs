//! Latent sync: the sans-IO session against real fjall ledgers, in an in-process simulation
//! with loss and delay, and against a malicious peer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use mycnet_spores::core::event::{ChainedEvent, EventBody, SignedEvent};
use mycnet_spores::core::gossip::{
    verify_backward, Digest, ForkEvidence, GossipMessage, LocalView, SessionEvent, SessionOutcome, SyncConfig,
    SyncSession, Violation,
};
use mycnet_spores::store::synth::{Synth, SynthConfig};
use mycnet_spores::{ChainPoint, Ledger, LedgerConfig, LedgerError, NodeKey, ReplayOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::fixture::synth_events;

fn open_ledger(dir: &std::path::Path) -> Ledger {
    Ledger::open(dir, LedgerConfig { durable: false, ..Default::default() }).expect("open ledger")
}

fn local_view(l: &Ledger, pull: bool) -> LocalView {
    // A ledger loaded from a state-only seed holds no event at its head until it backfilled.
    let head = l.head().and_then(|h| l.get(h.seq).expect("read head"));
    let head_point = l.head().map(|h| ChainPoint { seq: h.seq, hash: h.hash });
    LocalView {
        fingerprint: l.fingerprint(),
        head,
        head_point,
        backfill: l.backfill_point(),
        anchor: l.anchor(),
        peers: vec![],
        pull,
        primary: false,
        provisional: vec![],
        forks: vec![],
    }
}

/// Serves a request from a ledger as the drivers do: `from..` up to `max` events.
fn serve(l: &Ledger, from: u64, max: u32) -> Vec<ChainedEvent> {
    match l.head() {
        // Nothing below the history held (as `Ledger::read_raw_batch` serves).
        Some(h) if from <= h.seq && from >= l.history_from() => {
            l.read_range(from, (from + max as u64 - 1).min(h.seq)).expect("read range")
        }
        _ => vec![],
    }
}

/// What one side of a session did with the adapter's help.
#[derive(Debug)]
struct SideResult {
    outcome: SessionOutcome,
    stored: u64,
}

/// Runs the adapter loop for one side: store, serve (at most `cap` events per answer, as a
/// peer bounded by bytes does); returns messages to send.
fn pump(
    s: &mut SyncSession,
    l: &mut Ledger,
    out: &mut VecDeque<GossipMessage>,
    stored: &mut u64,
    cap: u32,
) -> Option<SessionOutcome> {
    let mut outcome = None;
    loop {
        let mut progressed = false;
        while let Some(ev) = s.poll_event() {
            progressed = true;
            match ev {
                SessionEvent::Store(range) => match l.append_linked(&range) {
                    Ok(_) => {
                        *stored += range.len() as u64;
                        s.stored();
                    }
                    Err(e) => s.store_failed(e.to_string()),
                },
                SessionEvent::Backfill(range) => match l.append_backfill(&range, &[]) {
                    Ok(_) => {
                        *stored += range.len() as u64;
                        s.stored();
                    }
                    Err(e) => s.store_failed(e.to_string()),
                },
                SessionEvent::Serve { from, max_events } => {
                    out.push_back(GossipMessage::Range(serve(l, from, max_events.min(cap))))
                }
                SessionEvent::Provisional(_) | SessionEvent::Forks(_) => {}
                SessionEvent::Finished(o) => outcome = Some(o),
            }
        }
        while let Some(m) = s.poll_transmit() {
            progressed = true;
            out.push_back(m);
        }
        if !progressed {
            return outcome;
        }
    }
}

/// Runs a lossless session between two ledgers to the end.
fn sync_pair(a: &mut Ledger, b: &mut Ledger, cfg: &SyncConfig) -> (SideResult, SideResult) {
    sync_sessions(a, b, true, cfg, u32::MAX)
}

/// Runs a lossless session between `a` (pulling) and `b` (pulling if `b_pulls`), each
/// answering with at most `cap` events, until both finish.
fn sync_sessions(
    a: &mut Ledger,
    b: &mut Ledger,
    b_pulls: bool,
    cfg: &SyncConfig,
    cap: u32,
) -> (SideResult, SideResult) {
    let now = Instant::now();
    let mut sa = SyncSession::new(cfg.clone(), local_view(a, true), now);
    let mut sb = SyncSession::new(cfg.clone(), local_view(b, b_pulls), now);
    let (mut to_b, mut to_a) = (VecDeque::new(), VecDeque::new());
    let (mut oa, mut ob) = (None, None);
    let (mut na, mut nb) = (0, 0);
    for _ in 0..100_000 {
        if let Some(o) = pump(&mut sa, a, &mut to_b, &mut na, cap) {
            oa = Some(o);
        }
        if let Some(o) = pump(&mut sb, b, &mut to_a, &mut nb, cap) {
            ob = Some(o);
        }
        if oa.is_some() && ob.is_some() {
            break;
        }
        if to_a.is_empty() && to_b.is_empty() {
            break;
        }
        while let Some(m) = to_b.pop_front() {
            sb.handle(m, now);
        }
        while let Some(m) = to_a.pop_front() {
            sa.handle(m, now);
        }
    }
    (
        SideResult { outcome: oa.expect("side a finished"), stored: na },
        SideResult { outcome: ob.expect("side b finished"), stored: nb },
    )
}

fn ledger_with(dir: &std::path::Path, events: &[SignedEvent]) -> Ledger {
    let mut l = open_ledger(dir);
    for chunk in events.chunks(256) {
        let out = l.append(chunk.to_vec()).expect("append");
        assert!(out.iter().all(|o| o.is_ok()), "synthetic events are valid");
    }
    l
}

#[test]
fn two_peers_converge_both_ways_in_small_batches() {
    let (events, _) = synth_events(0x1a7e, 700);
    let tmp = tempfile::tempdir().unwrap();
    let mut a = ledger_with(&tmp.path().join("a"), &events);
    let mut b = ledger_with(&tmp.path().join("b"), &events[..123]);
    let mut c = open_ledger(&tmp.path().join("c"));
    let cfg = SyncConfig { batch_events: 50, ..Default::default() };

    let (ra, rb) = sync_pair(&mut a, &mut b, &cfg);
    assert_eq!(ra.outcome, SessionOutcome::Completed);
    assert_eq!(rb.outcome, SessionOutcome::Completed);
    assert_eq!((ra.stored, rb.stored), (0, 700 - 123));
    assert_eq!(a.head(), b.head());

    // An empty node learns everything, genesis first, from the one that learned it by gossip.
    let (rc, rb2) = sync_pair(&mut c, &mut b, &cfg);
    assert_eq!((rc.outcome, rb2.outcome), (SessionOutcome::Completed, SessionOutcome::Completed));
    assert_eq!(c.head(), a.head());
    // The anchors came along: the synthetic history has voter checkpoints.
    assert!(c.anchor().is_some(), "the checkpoint events anchor the synced chain");
    assert_eq!(c.anchor(), a.anchor());
    // What was stored verifies on its own and equals a full replay.
    let (replayed, _) = c.replay(&ReplayOptions { audit: true, ..Default::default() }).expect("audit replay");
    assert_eq!(replayed.state(), c.projection().state());
    assert_eq!(c.projection().state(), a.projection().state());

    // In sync: a session moves nothing.
    let (r1, r2) = sync_pair(&mut a, &mut c, &cfg);
    assert_eq!((r1.stored, r2.stored), (0, 0));
    assert_eq!((r1.outcome, r2.outcome), (SessionOutcome::Completed, SessionOutcome::Completed));
}

/// One session of the simulation, between nodes `a` (initiator) and `b`.
struct SimPair {
    a: usize,
    b: usize,
    sa: SyncSession,
    sb: SyncSession,
    /// Messages in flight with the step they arrive at: (to b, to a).
    to_b: VecDeque<(u64, GossipMessage)>,
    to_a: VecDeque<(u64, GossipMessage)>,
    /// The connection broke (a message was lost): both sides stop hearing each other.
    cut: bool,
    done_a: bool,
    done_b: bool,
}

/// 30 nodes — 3 voters that receive the writes, 27 latent nodes that start empty — gossip in
/// rounds with fan-out 2; every message is lost with probability 5 % (which breaks that
/// session's connection, as a dropped QUIC connection would) and delayed by 0–3 steps. Writes
/// land on the voters during the first rounds; after the last write every head converges in
/// at most 2⌈log₂ 30⌉ + 2 = 12 rounds.
#[test]
fn thirty_nodes_converge_in_logarithmic_rounds_with_loss_and_delay() {
    const N: usize = 30;
    const VOTERS: usize = 3;
    const WRITE_ROUNDS: usize = 3;
    let max_rounds_after_last_write = 2 * (N as f64).log2().ceil() as usize + 2;
    let (events, _) = synth_events(0x30, 1200);
    let tmp = tempfile::tempdir().unwrap();
    let mut ledgers: Vec<Ledger> = (0..N).map(|i| open_ledger(&tmp.path().join(format!("n{i}")))).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(0x9055);
    let cfg = SyncConfig { batch_events: 128, idle_timeout: Duration::from_millis(200), ..Default::default() };
    let base = Instant::now();
    let step_time = Duration::from_millis(10);
    let mut writes = events.chunks(events.len() / WRITE_ROUNDS + 1);
    let mut converged_after = None;
    let mut total_lost = 0u64;
    for round in 0..(WRITE_ROUNDS + max_rounds_after_last_write + 4) {
        if round < WRITE_ROUNDS {
            let chunk = writes.next().expect("a chunk per write round");
            for l in ledgers.iter_mut().take(VOTERS) {
                assert!(l.append(chunk.to_vec()).unwrap().iter().all(|o| o.is_ok()));
            }
        }
        // Pick the round's sessions; a node pulls in at most one session at a time.
        let mut pulling = [false; N];
        let mut pairs: Vec<SimPair> = Vec::new();
        for a in 0..N {
            for _ in 0..2 {
                let mut b = rng.random_range(0..N - 1);
                if b >= a {
                    b += 1;
                }
                let now = base;
                let pa = !pulling[a] && a >= VOTERS;
                let pb = !pulling[b] && b >= VOTERS;
                pulling[a] |= pa;
                pulling[b] |= pb;
                pairs.push(SimPair {
                    a,
                    b,
                    sa: SyncSession::new(cfg.clone(), local_view(&ledgers[a], pa), now),
                    sb: SyncSession::new(cfg.clone(), local_view(&ledgers[b], pb), now),
                    to_b: VecDeque::new(),
                    to_a: VecDeque::new(),
                    cut: false,
                    done_a: false,
                    done_b: false,
                });
            }
        }
        // Interleave all sessions of the round step by step, in random order.
        let mut step = 0u64;
        while pairs.iter().any(|p| !(p.done_a && p.done_b)) {
            step += 1;
            assert!(step < 100_000, "round {round} does not end");
            let now = base + step_time * step as u32;
            let mut order: Vec<usize> = (0..pairs.len()).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            for &pi in &order {
                let p = &mut pairs[pi];
                for side_a in [true, false] {
                    let (s, node, inbox, outbox, done) = if side_a {
                        (&mut p.sa, p.a, &mut p.to_a, &mut p.to_b, &mut p.done_a)
                    } else {
                        (&mut p.sb, p.b, &mut p.to_b, &mut p.to_a, &mut p.done_b)
                    };
                    if *done {
                        continue;
                    }
                    while inbox.front().is_some_and(|(at, _)| *at <= step) {
                        let (_, m) = inbox.pop_front().unwrap();
                        s.handle(m, now);
                    }
                    s.handle_timeout(now);
                    let mut out = VecDeque::new();
                    let mut ignored = 0;
                    if pump(s, &mut ledgers[node], &mut out, &mut ignored, u32::MAX).is_some() {
                        *done = true;
                    }
                    for m in out {
                        if p.cut || rng.random_bool(0.05) {
                            p.cut = true;
                            total_lost += 1;
                            continue;
                        }
                        let delay = rng.random_range(0..=3);
                        // One QUIC stream: order is kept, so a message never overtakes another.
                        let at = outbox.back().map_or(0, |(t, _)| *t).max(step + delay);
                        outbox.push_back((at, m));
                    }
                }
            }
        }
        let reference = ledgers[0].head();
        if round + 1 >= WRITE_ROUNDS && converged_after.is_none() && ledgers.iter().all(|l| l.head() == reference) {
            converged_after = Some(round + 1 - WRITE_ROUNDS);
        }
    }
    assert!(total_lost > 0, "the simulation did lose messages");
    let rounds = converged_after.unwrap_or_else(|| {
        let behind = ledgers.iter().filter(|l| l.head() != ledgers[0].head()).count();
        panic!(
            "{behind} of {N} nodes did not converge within {max_rounds_after_last_write} rounds after the last write"
        )
    });
    eprintln!("converged {rounds} rounds after the last write ({total_lost} messages lost)");
    assert!(rounds <= max_rounds_after_last_write, "converged {rounds} rounds after the last write");
    let want = ledgers[0].projection().state().clone();
    for l in &ledgers {
        assert_eq!(l.projection().state(), &want);
    }
}

/// A malicious peer: answers our requests with whatever it likes. Each case must end the
/// session with a violation (or fork evidence), and leave our ledger exactly as it was.
mod malicious {
    use super::*;

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
}

#[test]
fn ranges_are_stored_whole_or_not_at_all() {
    let (events, _) = synth_events(0x5107, 400);
    let tmp = tempfile::tempdir().unwrap();
    let full = ledger_with(&tmp.path().join("full"), &events);
    let chain = full.read_range(0, 399).unwrap();
    let mut l = ledger_with(&tmp.path().join("l"), &events[..200]);
    // Not the next link.
    let e = l.append_range(&chain[201..210]).unwrap_err();
    assert!(matches!(e, LedgerError::RangeRefused { seq: 201, .. }), "{e}");
    // A bad hash in the middle.
    let mut bad = chain[200..260].to_vec();
    bad[30].hash.0[5] ^= 1;
    let e = l.append_range(&bad).unwrap_err();
    assert!(matches!(e, LedgerError::RangeRefused { seq: 230, .. }), "{e}");
    assert_eq!(l.head().map(|h| h.seq), Some(199));
    // The honest range goes in, survives a reopen, and equals the source.
    l.append_range(&chain[200..400]).unwrap();
    let dir = l.path().to_path_buf();
    drop(l);
    let l = open_ledger(&dir);
    assert_eq!(l.head(), full.head());
    assert_eq!(l.anchor(), full.anchor());
    assert_eq!(l.projection().state(), full.projection().state());
}

#[test]
fn backfill_verifies_backwards_from_a_known_point() {
    let (events, _) = synth_events(0xbac, 200);
    let tmp = tempfile::tempdir().unwrap();
    let l = ledger_with(tmp.path(), &events);
    let chain = l.read_range(0, 199).unwrap();
    let known = ChainPoint { seq: 149, hash: chain[149].hash };
    assert_eq!(verify_backward(known, &chain[100..150]), Ok(()));
    assert_eq!(verify_backward(known, &chain[0..150]), Ok(()));
    // Does not end at the known point.
    assert!(verify_backward(known, &chain[100..149]).is_err());
    // A changed event below the known point.
    let mut bad = chain[100..150].to_vec();
    bad[10].event.timestamp.0 += 1;
    assert_eq!(verify_backward(known, &bad), Err(Violation::BadHash { seq: 110 }));
    // A missing event.
    let mut gap = chain[100..150].to_vec();
    gap.remove(20);
    assert!(matches!(verify_backward(known, &gap), Err(Violation::BrokenLink { .. })));
}

#[test]
fn synth_with_checkpoints_sets_the_anchor_tier() {
    use mycnet_spores::core::gossip::Anchors;
    use mycnet_spores::SporeType;
    let mut synth = Synth::new(SynthConfig { seed: 3, nodes: 6, ..Default::default() });
    let tmp = tempfile::tempdir().unwrap();
    let mut l = open_ledger(tmp.path());
    l.append(synth.next_chunk(50)).unwrap();
    l.append(synth.next_chunk(50)).unwrap();
    let anchor = l.anchor().expect("the second chunk starts with a checkpoint");
    let head = l.head().map(|h| ChainPoint { seq: h.seq, hash: h.hash });
    let a = Anchors { checkpoint: Some(anchor), ..Default::default() };
    assert_eq!(a.tier_of(anchor.seq, head), Some(SporeType::Primary));
    assert_eq!(a.tier_of(anchor.seq + 1, head), Some(SporeType::Latent));
    assert_eq!(a.head_tier(head), Some(SporeType::Latent));
    let seeded = Anchors { seed: head, ..a };
    assert_eq!(seeded.tier_of(anchor.seq + 1, head), Some(SporeType::Seed));
    let member = Anchors { raft_member: true, ..a };
    assert_eq!(member.head_tier(head), Some(SporeType::Primary));
    // How far each tier's view reaches: Primary to the checkpoint, Seed to the seed's head
    // (and never below Primary), Latent to the head; a member's Primary reaches its head.
    let h = head.map(|h| h.seq);
    assert_eq!(a.reach(SporeType::Primary, head), Some(anchor.seq));
    assert_eq!(a.reach(SporeType::Seed, head), Some(anchor.seq), "a checkpoint outranks a seed");
    assert_eq!(a.reach(SporeType::Latent, head), h);
    assert_eq!(seeded.reach(SporeType::Seed, head), h);
    assert_eq!(member.reach(SporeType::Primary, head), h);
    assert_eq!(Anchors::default().reach(SporeType::Primary, head), None);
    assert_eq!(Anchors::default().reach(SporeType::Seed, head), None);
    assert_eq!(a.reach(SporeType::Latent, None), None);
    // The Primary view replayed from the stored history equals the chain up to the anchor,
    // and continues to the head from there.
    let history = l.history();
    let mut view = mycnet_spores::core::projection::Projection::new();
    history.replay_to(&mut view, anchor.seq).unwrap();
    assert_eq!(view.head().map(|v| (v.seq, v.hash)), Some((anchor.seq, anchor.hash)));
    history.replay_to(&mut view, h.unwrap()).unwrap();
    assert_eq!(view.state(), l.projection().state());
}

/// A connection that drops in the middle of a sync loses at most the batch in flight: the next
/// session starts from what was stored, and the events sent twice are at most one batch.
#[test]
fn a_dropped_connection_resumes_and_resends_at_most_one_batch() {
    let (events, _) = synth_events(0xd20, 1000);
    let tmp = tempfile::tempdir().unwrap();
    let mut src = ledger_with(&tmp.path().join("src"), &events);
    let mut dst = open_ledger(&tmp.path().join("dst"));
    let batch = 100u32;
    let cfg = SyncConfig { batch_events: batch, ..Default::default() };
    let now = Instant::now();
    let mut sent_total = 0u64;
    let mut sessions = 0;
    // Each session's connection breaks after the source has sent 3 ranges (the third one is
    // lost on the wire), until everything has arrived.
    while dst.head() != src.head() {
        sessions += 1;
        assert!(sessions < 20, "sync does not progress");
        let mut a = SyncSession::new(cfg.clone(), local_view(&dst, true), now);
        let mut b = SyncSession::new(cfg.clone(), local_view(&src, false), now);
        let (mut to_b, mut to_a) = (VecDeque::new(), VecDeque::new());
        let (mut na, mut nb) = (0, 0);
        let mut ranges_sent = 0;
        'conn: for _ in 0..10_000 {
            let fa = pump(&mut a, &mut dst, &mut to_b, &mut na, u32::MAX);
            let fb = pump(&mut b, &mut src, &mut to_a, &mut nb, u32::MAX);
            if fa.is_some() && fb.is_some() {
                break;
            }
            while let Some(m) = to_a.pop_front() {
                if let GossipMessage::Range(r) = &m {
                    ranges_sent += 1;
                    sent_total += r.len() as u64;
                    if ranges_sent == 3 {
                        break 'conn; // the connection drops with this range in flight
                    }
                }
                a.handle(m, now);
            }
            while let Some(m) = to_b.pop_front() {
                b.handle(m, now);
            }
        }
    }
    assert_eq!(dst.projection().state(), src.projection().state());
    let resent = sent_total - 1000;
    // Every session but the last lost exactly the range in flight; the first request of each
    // later session overlaps one stored event (the fork check).
    assert!(
        sent_total <= 1000 + (sessions as u64 - 1) * (batch as u64 + 1),
        "sent {sent_total} in {sessions} sessions"
    );
    eprintln!("{sessions} sessions, {sent_total} events sent for 1000 ({resent} re-sent)");
}

mod runner {
    use std::sync::{Arc, RwLock};

    use mycnet_spores::net::gossip::{GossipConfig, GossipService, GossipStream};
    use mycnet_spores::PeerNode;

    use super::*;

    fn service(seed: u8, ledger: Arc<RwLock<Ledger>>, pull: bool, cfg: GossipConfig) -> Arc<GossipService> {
        let node = NodeKey::from_seed([seed; 32]).node_id();
        let me = PeerNode { node, addr: format!("test-{seed}") };
        Arc::new(GossipService::new(me, ledger, cfg, move || pull, move || !pull))
    }

    /// Runs one session between two services over an in-memory byte pipe (the runner is
    /// transport-agnostic; QUIC streams are tested elsewhere).
    async fn run_pair(
        a: &Arc<GossipService>,
        a_id: u8,
        b: &Arc<GossipService>,
        b_id: u8,
    ) -> (SessionOutcome, SessionOutcome, u64) {
        let (x, y) = tokio::io::duplex(64 * 1024);
        let (xr, xw) = tokio::io::split(x);
        let (yr, yw) = tokio::io::split(y);
        let sa =
            GossipStream { peer: NodeKey::from_seed([b_id; 32]).node_id(), send: Box::new(xw), recv: Box::new(xr) };
        let sb =
            GossipStream { peer: NodeKey::from_seed([a_id; 32]).node_id(), send: Box::new(yw), recv: Box::new(yr) };
        let (ra, rb) = tokio::join!(a.run_session(sa, true), b.run_session(sb, false));
        (ra.0, rb.0, ra.1.stored)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_runner_syncs_over_any_byte_stream_and_bounds_bandwidth() {
        let (events, _) = synth_events(0xb4d, 1500);
        let tmp = tempfile::tempdir().unwrap();
        let src = Arc::new(RwLock::new(ledger_with(&tmp.path().join("src"), &events)));
        let dst = Arc::new(RwLock::new(open_ledger(&tmp.path().join("dst"))));
        let record_bytes: u64 =
            src.read().unwrap().read_raw_range(0, 1499).unwrap().iter().map(|r| r.len() as u64).sum();
        // 3 s worth of records at the configured rate.
        let rate = record_bytes / 3;
        let slow = GossipConfig { serve_bytes_per_sec: Some(rate), ..Default::default() };
        let server = service(1, src.clone(), false, slow);
        let client = service(2, dst.clone(), true, GossipConfig::default());
        let t = Instant::now();
        let (oc, os, stored) = run_pair(&client, 2, &server, 1).await;
        let took = t.elapsed();
        assert_eq!((oc, os), (SessionOutcome::Completed, SessionOutcome::Completed));
        assert_eq!(stored, 1500);
        assert_eq!(dst.read().unwrap().head(), src.read().unwrap().head());
        assert!(took >= Duration::from_millis(2000), "served {record_bytes} bytes at {rate} B/s in {took:?}");
        assert!(client.last_sync_age().is_some(), "a completed session is recorded");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_breaks_the_protocol_is_banned() {
        use tokio::io::AsyncWriteExt;
        let (events, _) = synth_events(0xba2, 50);
        let tmp = tempfile::tempdir().unwrap();
        let ledger = Arc::new(RwLock::new(ledger_with(tmp.path(), &events)));
        let svc = service(3, ledger, false, GossipConfig::default());
        let bad = NodeKey::from_seed([4; 32]).node_id();
        let (x, y) = tokio::io::duplex(64 * 1024);
        let (xr, xw) = tokio::io::split(x);
        let (_yr, mut yw) = tokio::io::split(y);
        // A frame with an unknown tag, instead of a hello.
        yw.write_all(&[0, 0, 0, 2, 9, 9]).await.unwrap();
        let (outcome, _) =
            svc.run_session(GossipStream { peer: bad, send: Box::new(xw), recv: Box::new(xr) }, false).await;
        assert!(matches!(outcome, SessionOutcome::Violation(Violation::BadFrame(_))), "{outcome:?}");
        assert!(svc.is_banned(&bad));
        assert!(svc.candidates().iter().all(|p| p.node != bad), "a banned peer is not contacted");
    }

    /// Fork evidence a peer relays is kept only by a node whose chain reaches the fork, oriented
    /// so that `ours` is its own event. A node whose chain is shorter (one that just yielded a
    /// split-brain and is catching up) keeps nothing: a guess at which side is its own would
    /// be wrong half the time, and its resolver would then chase a fork between its chain and
    /// itself once the chain grows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relayed_fork_evidence_is_kept_only_by_a_node_that_holds_one_side() {
        let (events, synth) = synth_events(0xf0c, 200);
        let tmp = tempfile::tempdir().unwrap();
        let full = ledger_with(&tmp.path().join("relay"), &events);
        let honest = full.read_range(0, 199).unwrap();
        // Another valid event at seq 150 (same author, another time), linked to seq 149.
        let e = &honest[150].event;
        let author = synth.keys().iter().find(|k| k.node_id() == e.author).unwrap().clone();
        let other = ChainedEvent::link(
            150,
            honest[149].hash,
            SignedEvent::sign(&author, e.fingerprint, mycnet_spores::Timestamp(e.timestamp.0 + 1), e.body.clone()),
        );
        // The relaying peer stored it from the other side's point of view.
        let evidence = ForkEvidence { ours: other.clone(), theirs: honest[150].clone() };
        assert_eq!(evidence.check(), Ok(()));
        assert!(mycnet_spores::forensics::forks::record(&full, &evidence).unwrap());
        let relay = service(20, Arc::new(RwLock::new(full)), false, GossipConfig::default());
        let unresolved =
            |l: &Arc<RwLock<Ledger>>| mycnet_spores::forensics::forks::unresolved(&l.read().unwrap()).unwrap();

        // A member whose chain ends at seq 99: nothing kept.
        let short = Arc::new(RwLock::new(ledger_with(&tmp.path().join("short"), &events[..100])));
        let s = service(21, short.clone(), false, GossipConfig::default());
        run_pair(&s, 21, &relay, 20).await;
        assert_eq!(short.read().unwrap().head().map(|h| h.seq), Some(99), "a member does not pull by gossip");
        assert!(unresolved(&short).is_empty(), "evidence beyond our head is not kept");

        // A member that holds seq 150: kept, with its own event as `ours`.
        let long = Arc::new(RwLock::new(ledger_with(&tmp.path().join("long"), &events)));
        let l = service(22, long.clone(), false, GossipConfig::default());
        run_pair(&l, 22, &relay, 20).await;
        let kept = unresolved(&long);
        assert_eq!(kept.len(), 1);
        assert_eq!((kept[0].ours.hash, kept[0].theirs.hash), (honest[150].hash, other.hash), "oriented to our chain");
    }

    /// An oversized length prefix and a frame cut short are violations, read without
    /// allocating what the prefix promises.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_and_truncated_frames_are_violations() {
        use tokio::io::AsyncWriteExt;
        let tmp = tempfile::tempdir().unwrap();
        let ledger = Arc::new(RwLock::new(open_ledger(tmp.path())));
        let svc = service(5, ledger, false, GossipConfig::default());
        for (i, bytes) in [vec![0x7f, 0xff, 0xff, 0xff], vec![0, 0, 1, 0, 1, 2, 3]].into_iter().enumerate() {
            let peer = NodeKey::from_seed([6 + i as u8; 32]).node_id();
            let (x, y) = tokio::io::duplex(64 * 1024);
            let (xr, xw) = tokio::io::split(x);
            let (_yr, mut yw) = tokio::io::split(y);
            yw.write_all(&bytes).await.unwrap();
            yw.shutdown().await.unwrap();
            let (outcome, _) =
                svc.run_session(GossipStream { peer, send: Box::new(xw), recv: Box::new(xr) }, false).await;
            assert!(matches!(outcome, SessionOutcome::Violation(Violation::BadFrame(_))), "case {i}: {outcome:?}");
            assert!(svc.is_banned(&peer), "case {i}");
        }
    }
}

/// Groundwork of provisional writes: the author's statement, the scan window and the
/// duplicate check against a real chain.
mod provisional {
    use mycnet_spores::core::provisional::{
        check_absent, ProvisionalError, ProvisionalEvent, PROVISIONAL_WINDOW_EVENTS,
    };

    use super::*;

    #[test]
    fn a_committed_event_is_found_and_a_new_one_is_not() {
        let (events, synth) = synth_events(0x9a0, 300);
        let tmp = tempfile::tempdir().unwrap();
        let l = ledger_with(tmp.path(), &events[..200]);
        let key_of = |e: &SignedEvent| synth.keys().iter().find(|k| k.node_id() == e.author).unwrap().clone();
        // Event 150 is committed; its author wrongly (or after a lost answer) queues it again
        // with the head it knew before it was committed.
        let committed = events[150].clone();
        let p = ProvisionalEvent::new(&key_of(&committed), committed.clone(), Some(120));
        assert_eq!(p.verify_statement(), Ok(()));
        let (from, to) = p.scan_range(l.head().map(|h| h.seq)).unwrap().expect("a range to scan");
        assert_eq!((from, to), (121, 199));
        let scanned = l.read_range(from, to).unwrap();
        assert_eq!(check_absent(&p, &scanned), Err(ProvisionalError::Duplicate(150)));
        // A replay of the same wrapper later still scans from 121: still found.
        // An event that is not in the chain passes.
        let fresh = events[250].clone();
        let p2 = ProvisionalEvent::new(&key_of(&fresh), fresh, Some(199));
        assert_eq!(p2.scan_range(Some(199)), Ok(None), "nothing after the author's head to scan");
        let p3 = ProvisionalEvent::new(&key_of(&events[250]), events[250].clone(), Some(150));
        assert_eq!(check_absent(&p3, &l.read_range(151, 199).unwrap()), Ok(()));
    }

    #[test]
    fn the_statement_is_the_authors_and_bounded() {
        let (events, synth) = synth_events(0x9a1, 20);
        let ev = events[10].clone();
        let author = synth.keys().iter().find(|k| k.node_id() == ev.author).unwrap().clone();
        let other = synth.keys().iter().find(|k| k.node_id() != ev.author).unwrap().clone();
        // Signed by someone else, or altered after signing: refused.
        assert_eq!(
            ProvisionalEvent::new(&other, ev.clone(), Some(5)).verify_statement(),
            Err(ProvisionalError::BadSignature)
        );
        let mut moved = ProvisionalEvent::new(&author, ev.clone(), Some(5));
        moved.absent_through = Some(9);
        assert_eq!(moved.verify_statement(), Err(ProvisionalError::BadSignature), "the point is signed");
        // Beyond the head, or older than the window: refused.
        let p = ProvisionalEvent::new(&author, ev.clone(), Some(50));
        assert_eq!(p.scan_range(Some(40)), Err(ProvisionalError::FromTheFuture(50)));
        let old = ProvisionalEvent::new(&author, ev, Some(0));
        assert!(matches!(old.scan_range(Some(PROVISIONAL_WINDOW_EVENTS + 1)), Err(ProvisionalError::TooOld { .. })));
        assert_eq!(old.scan_range(Some(PROVISIONAL_WINDOW_EVENTS)), Ok(Some((1, PROVISIONAL_WINDOW_EVENTS))));
    }
}

/// The gossip runner verifies a range's signatures in one stage and stores it in the next:
/// the ledger takes the verdicts for exactly that range, refuses a range with a bad one, and
/// verifies itself when handed verdicts of another length.
#[test]
fn stored_ranges_honour_the_signature_verdicts_handed_in() {
    let (events, _) = synth_events(0x5e7d, 300);
    let tmp = tempfile::tempdir().unwrap();
    let src = ledger_with(&tmp.path().join("src"), &events);
    let mut dst = open_ledger(&tmp.path().join("dst"));
    let now = Instant::now();
    let cfg = SyncConfig { batch_events: 128, ..SyncConfig::default() };
    let mut pull = SyncSession::new(cfg.clone(), local_view(&dst, true), now);
    let mut serve_side = SyncSession::new(cfg, local_view(&src, false), now);
    let (mut to_serve, mut to_pull) = (VecDeque::new(), VecDeque::new());
    let mut stored = 0u64;
    let mut served = 0u64;
    let mut checked_refusals = false;
    for _ in 0..1000 {
        while let Some(m) = pull.poll_transmit() {
            to_serve.push_back(m);
        }
        while let Some(ev) = pull.poll_event() {
            if let SessionEvent::Store(range) = ev {
                let before = dst.head();
                if !checked_refusals {
                    checked_refusals = true;
                    let mut verdicts = mycnet_spores::store::ledger::verify_signatures(range.events());
                    assert!(verdicts.iter().all(|ok| *ok));
                    verdicts[3] = false;
                    assert!(
                        dst.append_linked_verified(&range, &verdicts).is_err(),
                        "a range with a bad verdict is refused"
                    );
                    assert_eq!(dst.head(), before, "nothing of it stored");
                    // Verdicts of another length are not trusted: the ledger verifies itself.
                    dst.append_linked_verified(&range, &[]).expect("verified and stored");
                } else {
                    let verdicts = mycnet_spores::store::ledger::verify_signatures(range.events());
                    dst.append_linked_verified(&range, &verdicts).expect("stored");
                }
                stored += range.len() as u64;
                pull.stored();
            }
        }
        while let Some(ev) = serve_side.poll_event() {
            if let SessionEvent::Serve { from, max_events } = ev {
                let r = serve(&src, from, max_events);
                served += r.len() as u64;
                to_pull.push_back(GossipMessage::Range(r));
            }
        }
        while let Some(m) = serve_side.poll_transmit() {
            to_pull.push_back(m);
        }
        if to_serve.is_empty() && to_pull.is_empty() {
            break;
        }
        while let Some(m) = to_serve.pop_front() {
            serve_side.handle(m, now);
        }
        while let Some(m) = to_pull.pop_front() {
            pull.handle(m, now);
        }
    }
    assert!(checked_refusals);
    assert_eq!(stored, 300);
    assert!(served >= 300);
    assert_eq!(dst.head(), src.head());
}

/// A node that yielded a split-brain refuses the losing branch from then on, across restarts:
/// a range carrying its first event is refused whole, the rest of the chain is taken.
#[test]
fn a_refused_branch_is_never_synced_again() {
    use mycnet_spores::error::RangeRefusal;
    let (events, _) = synth_events(0x10b, 300);
    let tmp = tempfile::tempdir().unwrap();
    let src = ledger_with(&tmp.path().join("src"), &events);
    let chain = src.read_range(0, 299).unwrap();
    let lost = ChainPoint { seq: 200, hash: chain[200].hash };
    let dir = tmp.path().join("dst");
    let mut dst = open_ledger(&dir);
    let peers = [NodeKey::from_seed([1; 32]).node_id(), NodeKey::from_seed([2; 32]).node_id()];
    dst.refuse_branch(lost, &peers).unwrap();
    dst.append_range(&chain[..150]).unwrap();
    match dst.append_range(&chain[150..250]) {
        Err(LedgerError::RangeRefused { seq: 200, reason: RangeRefusal::LostBranch }) => {}
        other => panic!("expected the lost branch to be refused, got {other:?}"),
    }
    assert_eq!(dst.head().map(|h| h.seq), Some(149), "nothing of the refused range is stored");
    drop(dst);
    let mut dst = open_ledger(&dir);
    assert_eq!(dst.refused_peers().unwrap(), peers.to_vec(), "the losing cluster's members are kept");
    assert!(
        matches!(dst.append_range(&chain[150..201]), Err(LedgerError::RangeRefused { seq: 200, .. })),
        "still refused after a restart"
    );
    dst.append_range(&chain[150..200]).unwrap();
    assert_eq!(dst.head().map(|h| h.seq), Some(199));
}

// ---------------------------------------------------------------------------------------------
// Backfill: a ledger loaded from a state-only seed fills in the history below it backwards.

/// A ledger holding only the projection at `seq` of `full` (what a state-only seed carries).
fn state_only_at(dir: &std::path::Path, full: &Ledger, seq: u64) -> Ledger {
    let (p, _) = full
        .replay(&ReplayOptions { audit: false, stop: mycnet_spores::StopAt::Seq(seq) })
        .expect("replay to the seed's head");
    assert_eq!(p.head().map(|h| h.seq), Some(seq));
    let mut l = open_ledger(dir);
    l.load_state_only(p.state().clone()).expect("load the state-only seed");
    l
}

/// Every record of `a` and `b` from genesis to the head is the same event.
fn assert_same_history(a: &Ledger, b: &Ledger) {
    let head = a.head().expect("head").seq;
    assert_eq!(b.head().map(|h| (h.seq, h.hash)), a.head().map(|h| (h.seq, h.hash)));
    assert_eq!(b.history_from(), 0, "the history is complete");
    assert_eq!(a.read_range(0, head).expect("a"), b.read_range(0, head).expect("b"));
}

#[test]
fn a_state_only_ledger_syncs_forward_and_backfills_to_genesis() {
    let (events, _) = synth_events(0xbacf, 900);
    let tmp = tempfile::tempdir().unwrap();
    let mut full = ledger_with(&tmp.path().join("full"), &events);
    let mut b = state_only_at(&tmp.path().join("b"), &full, 600);
    assert_eq!(b.backfill_point().map(|p| p.seq), Some(600));
    assert_eq!(b.history_from(), 601);
    // Queries answer from the seed's state at once; the history below is not there yet.
    assert_eq!(b.head().map(|h| h.seq), Some(600));
    assert!(matches!(b.read_range(0, 10), Err(LedgerError::HistoryIncomplete { held_from: 601, .. })));
    assert!(matches!(b.replay(&ReplayOptions::default()), Err(LedgerError::HistoryIncomplete { .. })));

    let cfg = SyncConfig { batch_events: 64, ..Default::default() };
    let (rb, rf) = sync_pair(&mut b, &mut full, &cfg);
    assert_eq!(rb.outcome, SessionOutcome::Completed);
    assert_eq!(rf.outcome, SessionOutcome::Completed);
    // Forward 601..=899 and the whole history below, each event once.
    assert_eq!(rb.stored, 900);
    assert_eq!(b.backfill_point(), None);
    assert_same_history(&full, &b);
    // With the history complete, an audit replay from genesis reproduces the live registries.
    let (replayed, stats) = b.replay(&ReplayOptions { audit: true, ..Default::default() }).expect("audit replay");
    assert_eq!(stats.events, 900);
    assert_eq!(replayed.state(), b.projection().state());
    // It survives a reopen as a normal ledger.
    let dir = b.path().to_path_buf();
    drop(b);
    let b = open_ledger(&dir);
    assert_eq!(b.history_from(), 0);
    assert_same_history(&full, &b);
}

/// Runs a session between `puller` and `server` (which only serves), the server answering
/// with at most `cap` events; the puller's outcome.
fn sync_capped(puller: &mut Ledger, server: &mut Ledger, cfg: &SyncConfig, cap: u32) -> SessionOutcome {
    sync_sessions(puller, server, false, cfg, cap).0.outcome
}

#[test]
fn backfill_collects_short_answers_until_they_reach_the_known_point() {
    let (events, _) = synth_events(0x5407, 500);
    let tmp = tempfile::tempdir().unwrap();
    let mut full = ledger_with(&tmp.path().join("full"), &events);
    let mut b = state_only_at(&tmp.path().join("b"), &full, 499);
    // Asked 100 at a time, answered 7 at a time: each range is checked once it reaches the point.
    let cfg = SyncConfig { batch_events: 100, ..Default::default() };
    assert_eq!(sync_capped(&mut b, &mut full, &cfg, 7), SessionOutcome::Completed);
    assert_same_history(&full, &b);
}

#[test]
fn backfill_resumes_after_a_restart_from_the_point_it_reached() {
    let (events, _) = synth_events(0x2e57, 600);
    let tmp = tempfile::tempdir().unwrap();
    let mut full = ledger_with(&tmp.path().join("full"), &events);
    let dir = tmp.path().join("b");
    let mut b = state_only_at(&dir, &full, 599);
    // One session that stores a single backfill range, then the connection is gone.
    let cfg = SyncConfig { batch_events: 128, max_unstored: 1, ..Default::default() };
    let now = Instant::now();
    let mut sb = SyncSession::new(cfg.clone(), local_view(&b, true), now);
    let mut sf = SyncSession::new(cfg.clone(), local_view(&full, false), now);
    let (mut to_f, mut to_b) = (VecDeque::new(), VecDeque::new());
    let mut stored_once = false;
    for _ in 0..1000 {
        while let Some(ev) = sb.poll_event() {
            if let SessionEvent::Backfill(range) = ev {
                b.append_backfill(&range, &[]).expect("store");
                stored_once = true;
            }
        }
        if stored_once {
            break;
        }
        while let Some(m) = sb.poll_transmit() {
            to_f.push_back(m);
        }
        pump(&mut sf, &mut full, &mut to_b, &mut 0, u32::MAX);
        while let Some(m) = to_f.pop_front() {
            sf.handle(m, now);
        }
        while let Some(m) = to_b.pop_front() {
            sb.handle(m, now);
        }
    }
    assert!(stored_once);
    let point = b.backfill_point().expect("still backfilling");
    assert_eq!(point.seq, 599 - 128);
    drop(b);
    let mut b = open_ledger(&dir);
    assert_eq!(b.backfill_point(), Some(point), "the point is durable");
    assert_eq!(b.history_from(), point.seq + 1);
    assert_eq!(sync_capped(&mut b, &mut full, &cfg, u32::MAX), SessionOutcome::Completed);
    assert_same_history(&full, &b);
}

#[test]
fn a_peer_that_lacks_the_history_below_is_not_asked_again_in_that_session() {
    let (events, _) = synth_events(0x1ac4, 400);
    let tmp = tempfile::tempdir().unwrap();
    let full = ledger_with(&tmp.path().join("full"), &events);
    // Both hold only the state at 300; the server also synced nothing below.
    let mut a = state_only_at(&tmp.path().join("a"), &full, 300);
    let mut c = state_only_at(&tmp.path().join("c"), &full, 300);
    let cfg = SyncConfig { batch_events: 64, ..Default::default() };
    assert_eq!(sync_capped(&mut a, &mut c, &cfg, u32::MAX), SessionOutcome::Completed);
    assert_eq!(a.backfill_point().map(|p| p.seq), Some(300), "nothing stored, nothing lost");
}

/// A range that answers a backfill request (asked `from`, `n` events ending at `point`).
fn backfill_session(b: &Ledger, peer_head: ChainPoint, batch: u32) -> (SyncSession, u64, u32) {
    let now = Instant::now();
    let cfg = SyncConfig { batch_events: batch, ..Default::default() };
    let mut s = SyncSession::new(cfg, local_view(b, true), now);
    let _hello = s.poll_transmit();
    s.handle(
        GossipMessage::Hello(Digest {
            fingerprint: b.fingerprint(),
            head: Some(peer_head),
            anchor: None,
            peers: vec![],
            primary: true,
        }),
        now,
    );
    match s.poll_transmit() {
        Some(GossipMessage::Request { from, max_events }) => (s, from, max_events),
        other => panic!("expected a backfill request, got {other:?}"),
    }
}

#[test]
fn a_forged_backfill_range_is_refused_whole_and_nothing_is_stored() {
    let (events, _) = synth_events(0xf0f6, 300);
    let tmp = tempfile::tempdir().unwrap();
    let full = ledger_with(&tmp.path().join("full"), &events);
    let head = full.head().map(|h| ChainPoint { seq: h.seq, hash: h.hash }).expect("head");
    let b = state_only_at(&tmp.path().join("b"), &full, 299);
    let point = b.backfill_point().expect("point");
    let now = Instant::now();
    let genuine = |from: u64, n: u32| full.read_range(from, from + n as u64 - 1).expect("range");
    let finished = |s: &mut SyncSession| {
        let evs: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(!evs.iter().any(|e| matches!(e, SessionEvent::Backfill(_))), "nothing handed out to store: {evs:?}");
        evs.into_iter().find_map(|e| match e {
            SessionEvent::Finished(o) => Some(o),
            _ => None,
        })
    };

    // 1. An event inside the range altered (its hash no longer matches its content).
    let (mut s, from, n) = backfill_session(&b, head, 50);
    assert_eq!((from, n), (point.seq - 49, 50));
    let mut r = genuine(from, n);
    r[10].event.timestamp = mycnet_spores::Timestamp(r[10].event.timestamp.0 + 1);
    s.handle(GossipMessage::Range(r), now);
    assert!(matches!(
        finished(&mut s),
        Some(SessionOutcome::Violation(Violation::BadHash { .. } | Violation::BrokenLink { .. }))
    ));

    // 2. A genuine range that does not end at the point (one short).
    let (mut s, from, n) = backfill_session(&b, head, 50);
    let r = genuine(from, n - 1);
    s.handle(GossipMessage::Range(r), now);
    // Collected, not stored: the rest is asked for.
    assert!(matches!(s.poll_transmit(), Some(GossipMessage::Request { .. })));
    // ... and answered with another chain's event at the point.
    let (other, _) = synth_events(0x07e4, 300);
    let other_ledger = ledger_with(&tmp.path().join("other"), &other);
    let last = other_ledger.read_range(point.seq, point.seq).expect("other");
    s.handle(GossipMessage::Range(last), now);
    assert!(matches!(finished(&mut s), Some(SessionOutcome::Violation(_))));

    // 3. The ledger refuses a range a session did not check against its point, and a range
    //    with a forged signature (verdicts say so).
    let r = genuine(point.seq - 9, 10);
    let ok = mycnet_spores::core::gossip::BackfillRange::verify(point, r.clone(), b.fingerprint()).expect("genuine");
    let mut b = b;
    assert!(matches!(
        b.append_backfill(&ok, &[true, true, true, false, true, true, true, true, true, true]),
        Err(LedgerError::RangeRefused { reason: mycnet_spores::error::RangeRefusal::BadSignature(_), .. })
    ));
    assert_eq!(b.backfill_point(), Some(point), "nothing stored");
    let lower = mycnet_spores::core::gossip::BackfillRange::verify(
        ChainPoint { seq: point.seq - 20, hash: genuine(point.seq - 20, 1)[0].hash },
        genuine(point.seq - 29, 10),
        b.fingerprint(),
    )
    .expect("a genuine range further down");
    assert!(matches!(
        b.append_backfill(&lower, &[]),
        Err(LedgerError::RangeRefused { reason: mycnet_spores::error::RangeRefusal::NotBelow { .. }, .. })
    ));
    assert_eq!(b.backfill_point(), Some(point));
    assert_eq!(b.append_backfill(&ok, &[]).expect("the genuine range").map(|p| p.seq), Some(point.seq - 10));
}

mod backfill_props {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    /// A genuine chain of 200 events and the state-only view of it at seq 150.
    fn chain() -> &'static (Vec<ChainedEvent>, LocalView, ChainPoint) {
        static C: OnceLock<(Vec<ChainedEvent>, LocalView, ChainPoint)> = OnceLock::new();
        C.get_or_init(|| {
            let (events, _) = synth_events(0xb4c4, 200);
            let mut p = mycnet_spores::Projection::new();
            let chained: Vec<ChainedEvent> = events.iter().map(|e| p.append(e.clone()).expect("valid")).collect();
            let point = ChainPoint { seq: 150, hash: chained[150].hash };
            let view = LocalView {
                fingerprint: Some(chained[0].event.fingerprint),
                head: None,
                head_point: Some(point),
                backfill: Some(point),
                pull: true,
                ..Default::default()
            };
            (chained, view, point)
        })
    }

    /// What a peer might answer: a genuine slice, or one with an event altered, dropped or
    /// swapped, or one from somewhere else in the chain.
    fn answer() -> impl Strategy<Value = (u64, usize, u8, usize)> {
        (0u64..200, 0usize..80, 0u8..5, 0usize..80)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever a peer answers, the session never panics and hands out to store only
        /// ranges of the genuine history that end exactly at the point it was asked for.
        #[test]
        fn a_backfilling_session_hands_out_only_the_genuine_history(answers in prop::collection::vec(answer(), 1..12), batch in 1u32..64) {
            let (chained, view, point) = chain();
            let now = Instant::now();
            let mut s = SyncSession::new(SyncConfig { batch_events: batch, max_unstored: 64, ..Default::default() }, view.clone(), now);
            let _ = s.poll_transmit();
            s.handle(GossipMessage::Hello(Digest { fingerprint: view.fingerprint, head: Some(*point), anchor: None, peers: vec![], primary: true }), now);
            let mut expected_end = Some(*point);
            for (start, len, damage, at) in answers {
                // Answer the outstanding request honestly half the time, else with `start..`.
                let asked = std::iter::from_fn(|| s.poll_transmit()).find_map(|m| match m {
                    GossipMessage::Request { from, max_events } => Some((from, max_events)),
                    _ => None,
                });
                let (from, n) = match asked {
                    Some((f, n)) if damage % 2 == 0 => (f, n as usize),
                    _ => (start, len),
                };
                let from = from.min(199) as usize;
                let mut range: Vec<ChainedEvent> = chained[from..(from + n).min(200)].to_vec();
                if !range.is_empty() {
                    let i = at % range.len();
                    match damage {
                        1 => range[i].event.timestamp = mycnet_spores::Timestamp(range[i].event.timestamp.0 ^ 1),
                        3 => { range.remove(i); }
                        4 if range.len() > 1 => range.swap(0, i.max(1)),
                        _ => {}
                    }
                }
                s.handle(GossipMessage::Range(range), now);
                while let Some(ev) = s.poll_event() {
                    if let SessionEvent::Backfill(r) = ev {
                        let end = expected_end.expect("nothing is handed out below genesis");
                        prop_assert_eq!(r.known(), end);
                        let first = r.events()[0].seq as usize;
                        prop_assert_eq!(r.events(), &chained[first..=end.seq as usize]);
                        expected_end = r.next_point();
                        s.stored();
                    }
                }
                if s.is_finished() {
                    break;
                }
            }
        }
    }
}
