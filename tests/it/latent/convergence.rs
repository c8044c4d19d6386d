//! Honest peers converge: two in small batches both ways, thirty with loss and delay in
//! logarithmic rounds, and a connection dropped mid-sync resumes.

use std::collections::VecDeque;
use std::time::Instant;

use mycnet_spores::core::gossip::{GossipMessage, SessionOutcome, SyncConfig, SyncSession};
use mycnet_spores::{Ledger, ReplayOptions};

use super::sim::{self, SimParams};
use super::{ledger_with, local_view, open_ledger, pump, sync_pair};
use crate::fixture::synth_events;

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

/// 30 nodes — 3 voters that receive the writes, 27 latent nodes that start empty — gossip in
/// rounds with fan-out 2; every message is lost with probability 5 % (which breaks that
/// session's connection, as a dropped QUIC connection would) and delayed by 0–3 steps. Writes
/// land on the voters during the first rounds; after the last write every head converges in
/// at most 2⌈log₂ 30⌉ + 2 = 12 rounds. One fjall ledger per node: the real store (`scale`
/// runs the same simulation on in-memory stores for thousands of nodes).
#[test]
fn thirty_nodes_converge_in_logarithmic_rounds_with_loss_and_delay() {
    const N: usize = 30;
    let max_rounds_after_last_write = sim::rounds_bound(N);
    let (events, _) = synth_events(0x30, 1200);
    let tmp = tempfile::tempdir().unwrap();
    let mut ledgers: Vec<Ledger> = (0..N).map(|i| open_ledger(&tmp.path().join(format!("n{i}")))).collect();
    let params = SimParams::lossy(N, 0x9055, false);
    let report = sim::run(&mut ledgers, &events, &params);
    let total_lost = report.lost;
    assert!(total_lost > 0, "the simulation did lose messages");
    let rounds = report.converged_after.unwrap_or_else(|| {
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
