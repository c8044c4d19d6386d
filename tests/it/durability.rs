//! Durability and restart: what an append acknowledged is there after reopening, exactly;
//! and replays stop where they are told to (time travel for forensics).

use mycnet_spores::core::projection::Projection;
use mycnet_spores::{
    EventBody, Ledger, LedgerReader, NodeKey, Rejection, ReplayOptions, SignedEvent, StopAt, Timestamp,
};

use crate::fixture::{build_ledger, config, history, verify, HISTORY_LEN};

/// The projection after `events[..n]`, computed without any ledger.
fn projection_of(n: usize) -> Projection {
    let mut p = Projection::new();
    for ev in &history().events[..n] {
        p.append(ev.clone()).expect("valid history");
    }
    p
}

#[test]
fn batches_survive_a_restart_exactly() {
    let h = history();
    let dir = tempfile::tempdir().expect("tempdir");
    let sizes = [1usize, 7, 64, 3, 200, 1, 97, 150];
    assert!(sizes.iter().sum::<usize>() < HISTORY_LEN);
    let mut at = 0;
    for (round, size) in sizes.iter().enumerate() {
        // Reopen between batches: every restart must continue exactly where the last left off.
        let mut ledger = Ledger::open(dir.path(), config(50)).expect("open");
        assert_eq!(ledger.head().map(|h| h.seq + 1).unwrap_or(0), at as u64, "round {round}: head after restart");
        assert_eq!(ledger.projection().state(), projection_of(at).state(), "round {round}: projection after restart");
        let outcome = ledger.append(h.events[at..at + size].to_vec()).expect("append");
        assert!(outcome.iter().all(Result::is_ok));
        at += size;
        assert_eq!(ledger.head().map(|h| h.seq), Some(at as u64 - 1));
        if round == 4 {
            // Later restarts load this checkpoint and replay the tail after it.
            ledger.write_checkpoint().expect("checkpoint");
            assert_eq!(ledger.checkpoint_seq(), Some(at as u64 - 1));
        }
    }
    let expected = projection_of(at);
    let ledger = Ledger::open(dir.path(), config(50)).expect("reopen");
    assert_eq!(ledger.head(), expected.head());
    assert_eq!(ledger.projection().state(), expected.state());
    assert!(ledger.checkpoint_seq() >= Some(274), "the restarts used a checkpoint");
    drop(ledger);
    let report = verify(dir.path());
    assert!(report.is_ok(), "{:?}", report.first_error);
    assert_eq!(report.events_verified, at as u64);
    assert_eq!(report.recorded_head, expected.head().map(|h| (h.seq, h.hash)));
}

/// A batch whose last event is rejected still persists the accepted ones before it (one
/// bad event does not cost the caller its good ones).
#[test]
fn a_rejected_last_event_does_not_lose_the_batch() {
    let h = history();
    let dir = tempfile::tempdir().expect("tempdir");
    build_ledger(dir.path(), &h.events[..300], config(0), 300);
    let accepted_head = {
        let mut ledger = Ledger::open(dir.path(), config(0)).expect("open");
        let stranger = NodeKey::generate().expect("os randomness");
        let mut batch = h.events[300..340].to_vec();
        let bad = SignedEvent::sign(
            &stranger,
            h.fingerprint,
            h.events[339].timestamp,
            EventBody::NodeBackOnline { node: stranger.node_id() },
        );
        batch.push(bad);
        let outcome = ledger.append(batch).expect("append");
        assert!(outcome[..40].iter().all(Result::is_ok));
        assert_eq!(outcome[40], Err(Rejection::UnknownAuthor(stranger.node_id())));
        ledger.head().expect("head")
    };
    assert_eq!(accepted_head.seq, 339);
    let ledger = Ledger::open(dir.path(), config(0)).expect("reopen");
    assert_eq!(ledger.head(), Some(accepted_head));
    assert_eq!(ledger.projection().state(), projection_of(340).state());
}

/// `StopAt::Seq(n)` ends with head `n` and exactly the state after `n`; past the end it is
/// the whole ledger. Through the ledger and through the read-only inspector.
#[test]
fn replay_to_a_sequence_number() {
    let h = history();
    let dir = tempfile::tempdir().expect("tempdir");
    build_ledger(dir.path(), &h.events, config(0), 600);
    let last = HISTORY_LEN as u64 - 1;
    let ledger = Ledger::open(dir.path(), config(0)).expect("open");
    for n in [0, 1, 2, 149, 150, 151, 377, last - 1, last, last + 1, u64::MAX] {
        let expected = projection_of((n.min(last) + 1) as usize);
        for audit in [false, true] {
            let (p, stats) = ledger.replay(&ReplayOptions { audit, stop: StopAt::Seq(n) }).expect("replay");
            assert_eq!(p.head().map(|h| h.seq), Some(n.min(last)), "StopAt::Seq({n}), audit {audit}");
            assert_eq!(p.state(), expected.state(), "StopAt::Seq({n})");
            assert_eq!(stats.events, n.min(last) + 1);
        }
    }
    drop(ledger);
    let reader = LedgerReader::open(dir.path()).expect("reader");
    let (p, _) = reader.replay(&ReplayOptions { audit: true, stop: StopAt::Seq(222) }, &|_| {}).expect("replay");
    assert_eq!(p.state(), projection_of(223).state());
}

/// `StopAt::Time(t)` applies every event up to the first one timestamped after `t`.
#[test]
fn replay_to_a_point_in_time() {
    let h = history();
    let dir = tempfile::tempdir().expect("tempdir");
    build_ledger(dir.path(), &h.events, config(0), 600);
    let ts: Vec<i64> = h.events.iter().map(|e| e.timestamp.0).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "the synthetic history is in time order");
    let mut times = vec![ts[0] - 1, ts[0], ts[0] + 1, ts[HISTORY_LEN - 1], ts[HISTORY_LEN - 1] + 1, i64::MAX, i64::MIN];
    for i in [1, 2, 100, 150, 151, 299, 598] {
        times.extend([ts[i] - 1, ts[i], ts[i] + 1, (ts[i] + ts[i + 1]) / 2]);
    }
    let reader = LedgerReader::open(dir.path()).expect("reader");
    for t in times {
        // The events applied are the prefix before the first one after `t`.
        let applied = ts.iter().position(|&e| e > t).unwrap_or(HISTORY_LEN);
        let (p, stats) =
            reader.replay(&ReplayOptions { audit: false, stop: StopAt::Time(Timestamp(t)) }, &|_| {}).expect("replay");
        assert_eq!(stats.events, applied as u64, "StopAt::Time({t})");
        assert_eq!(p.head().map(|h| h.seq), applied.checked_sub(1).map(|s| s as u64), "StopAt::Time({t})");
        assert_eq!(p.state(), projection_of(applied).state(), "StopAt::Time({t})");
        if let Some(head) = p.head() {
            assert!(head.timestamp.0 <= t);
        }
    }
}

/// Appending borrowed events (`append_verified_points`, how the Raft state machine appends
/// from its shared log batches) writes exactly what appending owned ones writes: the same
/// verdicts in place (a forged signature, an unknown author), the same chain points, the same
/// records and the same projection after a restart.
#[test]
fn borrowed_appends_write_what_owned_appends_write() {
    use mycnet_spores::core::keys::VerifierCache;
    use mycnet_spores::store::verified::VerifiedEvents;

    let h = history();
    let mut events = h.events[..420].to_vec();
    events[130].signature.0[5] ^= 1;
    let stranger = NodeKey::generate().expect("os randomness");
    events[260] = SignedEvent::sign(
        &stranger,
        h.fingerprint,
        events[260].timestamp,
        EventBody::NodeBackOnline { node: stranger.node_id() },
    );
    assert!(events.iter().any(|e| e.body.is_checkpoint()), "the history has checkpoint events");
    let (owned_dir, borrowed_dir) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let mut owned = Ledger::open(owned_dir.path(), config(100)).expect("open");
    let mut borrowed = Ledger::open(borrowed_dir.path(), config(100)).expect("open");
    let mut cache = VerifierCache::default();
    let mut rejected = Vec::new();
    for (c, chunk) in events.chunks(37).enumerate() {
        let expected = owned.append(chunk.to_vec()).expect("owned append");
        let (verified, _) = VerifiedEvents::verify(chunk.iter().collect(), &mut cache);
        let got = borrowed.append_verified_points(verified, Vec::new()).expect("borrowed append");
        assert_eq!(got.len(), expected.len());
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            match (g, e) {
                (Ok(p), Ok(ce)) => assert_eq!((p.seq, p.hash), (ce.seq, ce.hash)),
                (Err(a), Err(b)) => {
                    assert_eq!(a, b);
                    rejected.push((c * 37 + i, a.clone()));
                }
                other => panic!("verdicts differ: {other:?}"),
            }
        }
        assert_eq!(borrowed.head(), owned.head());
    }
    // What follows a refused event may be refused in turn (a checkpoint of a head that is not
    // there); both ways agree on all of it, and the two bad events are refused for their faults.
    assert!(rejected.iter().any(|(i, r)| *i == 130 && matches!(r, Rejection::BadSignature(_))), "{rejected:?}");
    assert!(
        rejected.iter().any(|(i, r)| *i == 260 && *r == Rejection::UnknownAuthor(stranger.node_id())),
        "{rejected:?}"
    );
    let head = owned.head();
    drop((owned, borrowed));
    let a = crate::fixture::RawLedger::open(owned_dir.path());
    let b = crate::fixture::RawLedger::open(borrowed_dir.path());
    assert_eq!(a.last_seq(), b.last_seq());
    for seq in 0..=a.last_seq() {
        assert_eq!(a.value(seq), b.value(seq), "record {seq} differs");
    }
    a.close();
    b.close();
    let reopened = Ledger::open(borrowed_dir.path(), config(100)).expect("reopen");
    assert_eq!(reopened.head(), head);
    let reference = Ledger::open(owned_dir.path(), config(100)).expect("reopen");
    assert_eq!(reopened.projection().state(), reference.projection().state());
    drop((reopened, reference));
    let report = verify(borrowed_dir.path());
    assert!(report.is_ok(), "{:?}", report.first_error);
}
