//! The in-memory store (`MemChain`) refuses what the fjall ledger refuses, for the same reason,
//! and keeps nothing of a refused range — also when every honest event's signature verdict is
//! already shared (a forged event is verified, not taken from the share) — and syncs through
//! a session exactly as the ledger does.

use std::sync::Arc;

use mycnet_spores::core::gossip::{BackfillRange, SessionOutcome, SyncConfig};
use mycnet_spores::error::RangeRefusal;
use mycnet_spores::store::chain_store::ChainStore;
use mycnet_spores::store::mem::{MemChain, MemShared};
use mycnet_spores::{ChainPoint, ChainedEvent, Ledger, LedgerError, Rejection};

use super::{ledger_with, sync_pair};
use crate::fixture::synth_events;

/// `chain` from `at` on, with the event at `at` replaced by `event` and every later one linked
/// again after it (links and hashes valid; signatures as they were).
fn relinked(chain: &[ChainedEvent], at: usize, event: mycnet_spores::SignedEvent) -> Vec<ChainedEvent> {
    let mut out = chain[..at].to_vec();
    let mut prev = out.last().map_or(mycnet_spores::ChainHash::ZERO, |e| e.hash);
    for (i, ev) in std::iter::once(event).chain(chain[at + 1..].iter().map(|e| e.event.clone())).enumerate() {
        let ce = ChainedEvent::link((at + i) as u64, prev, ev);
        prev = ce.hash;
        out.push(ce);
    }
    out
}

/// Each case of the table: a range offered at seq 200 to a store holding seqs 0..200, and the
/// refusal both stores must give.
fn cases(chain: &[ChainedEvent], foreign: &ChainedEvent) -> Vec<(&'static str, Vec<ChainedEvent>, u64)> {
    let tail = &chain[..300];
    let mut bad_hash = tail[200..260].to_vec();
    bad_hash[30].hash.0[5] ^= 1;
    let mut forged = tail[210].event.clone();
    forged.signature.0[7] ^= 1;
    let forged = relinked(tail, 210, forged)[200..260].to_vec();
    let other_network = relinked(tail, 200, foreign.event.clone())[200..230].to_vec();
    // A second genesis 30 events in: signed and linked, refused by the rules after 30 events
    // of the range were applied (the store must undo them).
    let second_genesis = relinked(tail, 230, chain[0].event.clone())[200..260].to_vec();
    vec![
        ("not the next link", tail[201..210].to_vec(), 201),
        ("a bad hash", bad_hash, 230),
        ("a forged signature", forged, 210),
        ("another network's event", other_network, 200),
        ("a rule broken mid-range", second_genesis, 230),
    ]
}

#[test]
fn the_in_memory_store_refuses_what_the_ledger_refuses() {
    let (events, _) = synth_events(0x3e3, 400);
    let (foreign_events, _) = synth_events(0xf0e, 2);
    let tmp = tempfile::tempdir().unwrap();
    let full = ledger_with(&tmp.path().join("full"), &events);
    let chain = full.read_range(0, 399).unwrap();
    let foreign = ledger_with(&tmp.path().join("foreign"), &foreign_events).read_range(1, 1).unwrap().remove(0);
    let mut ledger = ledger_with(&tmp.path().join("l"), &events[..200]);
    let shared = MemShared::new();
    // Another simulated node holds the whole honest chain: every honest verdict is shared.
    let mut full_mem = MemChain::new(shared.clone());
    assert!(full_mem.append(events.clone()).unwrap().iter().all(|o| o.is_ok()));
    assert_eq!(ChainStore::head(&full_mem), full.head(), "the same chain, hash for hash");
    let verified = shared.signatures_verified();
    let mut mem = MemChain::new(shared.clone());
    mem.append_range(&chain[..200]).unwrap();
    assert_eq!(shared.signatures_verified(), verified, "events already verified are not verified again");
    assert_eq!(ChainStore::head(&mem), ledger.head());

    for (what, range, seq) in cases(&chain, &foreign) {
        let (head, state) = (ledger.head(), ledger.projection().state().clone());
        let from_ledger = ledger.append_range(&range).expect_err(what);
        let from_mem = mem.append_range(&range).expect_err(what);
        assert!(matches!(from_ledger, LedgerError::RangeRefused { seq: s, .. } if s == seq), "{what}: {from_ledger}");
        assert_eq!(from_mem.to_string(), from_ledger.to_string(), "{what}: the same refusal");
        assert_eq!((ChainStore::head(&mem), ledger.head()), (head, head), "{what}: nothing stored");
        assert_eq!(ChainStore::projection(&mem).state(), &state, "{what}: the projection is unchanged");
        assert_eq!(ledger.projection().state(), &state);
    }
    let refusal = |e: &LedgerError| match e {
        LedgerError::RangeRefused { reason, .. } => Some(reason.clone()),
        _ => None,
    };
    // The forged signature and the other network say so.
    let forged = &cases(&chain, &foreign)[2].1;
    assert!(matches!(refusal(&mem.append_range(forged).unwrap_err()), Some(RangeRefusal::BadSignature(_))));
    let foreign_range = &cases(&chain, &foreign)[3].1;
    assert!(matches!(
        refusal(&mem.append_range(foreign_range).unwrap_err()),
        Some(RangeRefusal::Rejected(Rejection::WrongNetwork { .. }))
    ));

    // A backfilled range below a complete history.
    let below = BackfillRange::verify(
        ChainPoint { seq: 99, hash: chain[99].hash },
        chain[50..100].to_vec(),
        ledger.fingerprint(),
    )
    .unwrap();
    let from_ledger = ledger.append_backfill(&below, &[]).unwrap_err();
    let from_mem = ChainStore::append_backfill(&mut mem, &below).unwrap_err();
    assert_eq!(from_mem.to_string(), from_ledger.to_string());

    // A branch this node yielded.
    let lost = ChainPoint { seq: 250, hash: chain[250].hash };
    ledger.refuse_branch(lost, &[]).unwrap();
    mem.refuse_branch(lost);
    let from_ledger = ledger.append_range(&chain[200..260]).unwrap_err();
    let from_mem = mem.append_range(&chain[200..260]).unwrap_err();
    assert!(matches!(refusal(&from_mem), Some(RangeRefusal::LostBranch)), "{from_mem}");
    assert_eq!(from_mem.to_string(), from_ledger.to_string());

    // The honest range goes into both, to the same state.
    ledger.append_range(&chain[200..250]).unwrap();
    mem.append_range(&chain[200..250]).unwrap();
    assert_eq!(ChainStore::head(&mem), ledger.head());
    assert_eq!(ChainStore::projection(&mem).state(), ledger.projection().state());
    assert_eq!(ChainStore::anchor(&mem), ledger.anchor());
}

/// Two in-memory stores sync through the same session and adapter loop as two ledgers, to the
/// same head, anchor and state, serving the same events.
#[test]
fn in_memory_stores_sync_like_ledgers() {
    let (events, _) = synth_events(0x3e4, 700);
    let tmp = tempfile::tempdir().unwrap();
    let full: Ledger = ledger_with(&tmp.path().join("full"), &events);
    let shared = MemShared::new();
    let mut a = MemChain::new(Arc::clone(&shared));
    assert!(a.append(events[..500].to_vec()).unwrap().iter().all(|o| o.is_ok()));
    let mut b = MemChain::new(shared.clone());
    assert!(b.append(events.clone()).unwrap().iter().all(|o| o.is_ok()));
    let cfg = SyncConfig { batch_events: 64, ..Default::default() };
    let (ra, rb) = sync_pair(&mut a, &mut b, &cfg);
    assert_eq!((ra.outcome, rb.outcome), (SessionOutcome::Completed, SessionOutcome::Completed));
    assert_eq!((ra.stored, rb.stored), (200, 0));
    let mut c = MemChain::new(shared.clone());
    let (rc, _) = sync_pair(&mut c, &mut a, &cfg);
    assert_eq!(rc.stored, 700);
    for m in [&a, &b, &c] {
        assert_eq!(ChainStore::head(m), full.head());
        assert_eq!(ChainStore::anchor(m), full.anchor());
        assert_eq!(ChainStore::projection(m).state(), full.projection().state());
    }
    assert_eq!(c.serve_range(100, 50).unwrap(), full.serve_range(100, 50).unwrap());
    assert_eq!(c.serve_range(690, 50).unwrap().len(), 10);
    assert!(c.serve_range(700, 50).unwrap().is_empty());
    // One copy of each event; the local appends verified 500 + 700 signatures, and nothing
    // synced was verified again.
    assert_eq!(shared.events_kept(), 700);
    assert_eq!(shared.signatures_verified(), 1200);
}
