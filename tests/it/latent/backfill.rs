//! Backfill: a ledger loaded from a state-only seed fills in the history below it backwards.

use std::collections::VecDeque;
use std::time::Instant;

use mycnet_spores::core::gossip::{
    verify_backward, Digest, GossipMessage, SessionEvent, SessionOutcome, SyncConfig, SyncSession, Violation,
};
use mycnet_spores::{ChainPoint, Ledger, LedgerError, ReplayOptions};

use super::{ledger_with, local_view, open_ledger, pump, sync_pair, sync_sessions};
use crate::fixture::synth_events;

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
