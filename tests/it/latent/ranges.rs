//! What the ledger takes from a peer: a range whole or not at all, with the signature
//! verdicts handed in, and never a branch it refused.

use std::collections::VecDeque;
use std::time::Instant;

use mycnet_spores::core::gossip::{GossipMessage, SessionEvent, SyncConfig, SyncSession};
use mycnet_spores::{ChainPoint, LedgerError, NodeKey};

use super::{ledger_with, local_view, open_ledger, serve};
use crate::fixture::synth_events;

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
