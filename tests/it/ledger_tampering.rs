//! Tampering: a damaged or forged ledger is detected, reported at the right sequence number,
//! never applied, and refused by `Ledger::open`. The damage is done below the library, on the
//! closed ledger's fjall keyspaces, the way a failing disk or an attacker would do it.

use std::collections::BTreeMap;

use mycnet_spores::store::record::{decode_record, encode_record};
use mycnet_spores::{
    ChainedEvent, Corruption, EventBody, Ledger, LedgerError, NetworkFingerprint, NodeKey, Projection, Rejection,
    ReplayOptions, SignedEvent, StopAt, Timestamp,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::fixture::{build_ledger, config, history, open_must_fail, synth_events, verify, RawLedger, HISTORY_LEN};

const LAST: u64 = HISTORY_LEN as u64 - 1;

/// A fresh, closed ledger holding the shared history (no projection checkpoint, so opening
/// replays every record).
fn damaged_ledger() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    build_ledger(dir.path(), &history().events, config(0), 256);
    dir
}

/// Asserts the inspector reports exactly `(seq, corruption)` first and applied nothing from
/// `seq` on; returns the report's corruption.
fn assert_verify_reports(dir: &std::path::Path, seq: u64) -> Corruption {
    let report = verify(dir);
    let Some((at, corruption)) = report.first_error.clone() else {
        panic!("verify found nothing wrong in a damaged ledger: {report:?}");
    };
    assert_eq!(at, seq, "verify names the damaged seq: {corruption}");
    assert!(report.events_verified <= seq, "verify applied {} events past the damage at {seq}", report.events_verified);
    corruption
}

/// Every single-bit flip of a record is caught by decoding plus the chain checks a reader
/// does (key, link, hash): none decodes to the same event, none slips through. Exhaustive over
/// the bits of one record of each kind.
#[test]
fn every_bit_flip_of_a_record_is_caught_by_decode_or_chain_checks() {
    let h = history();
    let mut projection = Projection::new();
    let mut one_per_kind: BTreeMap<&'static str, ChainedEvent> = BTreeMap::new();
    for ev in &h.events {
        let chained = projection.append(ev.clone()).expect("valid history");
        one_per_kind.entry(ev.body.kind()).or_insert(chained);
    }
    assert!(one_per_kind.len() >= 8, "the history covers most kinds: {:?}", one_per_kind.keys());
    for (kind, chained) in one_per_kind {
        let bytes = encode_record(&chained);
        assert_eq!(decode_record(&bytes).as_ref(), Ok(&chained), "{kind} round-trips");
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let Ok(ev) = decode_record(&flipped) else { continue };
            let caught = ev.seq != chained.seq || ev.prev_hash != chained.prev_hash || !ev.hash_is_valid();
            assert!(
                caught,
                "{kind} record: flipping bit {bit} of {} goes unnoticed (same event: {})",
                bytes.len() * 8,
                ev == chained
            );
        }
    }
}

/// (a) A flipped bit anywhere in any stored record: verify names that record's seq, and open
/// refuses the ledger at that seq.
#[test]
fn a_flipped_bit_in_a_stored_record_is_reported_at_its_seq() {
    let dir = damaged_ledger();
    let mut runner = TestRunner::new(Config { cases: 32, failure_persistence: None, ..Config::default() });
    let result = runner.run(&(0..=LAST, any::<prop::sample::Index>(), 0..8u8), |(seq, offset, bit)| {
        let raw = RawLedger::open(dir.path());
        let original = raw.value(seq);
        let mut damaged = original.clone();
        let at = offset.index(damaged.len());
        damaged[at] ^= 1 << bit;
        raw.put_value(seq, &damaged);
        raw.close();

        let report = verify(dir.path());
        let opened = match Ledger::open(dir.path(), config(0)) {
            Err(LedgerError::Corrupt { seq, corruption, .. }) => Ok((seq, *corruption)),
            Err(e) => Err(format!("open failed, but not as Corrupt: {e}")),
            Ok(l) => Err(format!("open loaded the damaged ledger (head {:?})", l.head())),
        };
        // Restore before asserting, so a failing case does not poison the next ones.
        let raw = RawLedger::open(dir.path());
        raw.put_value(seq, &original);
        raw.close();

        let (reported, corruption) = report
            .first_error
            .clone()
            .ok_or_else(|| TestCaseError::fail(format!("flip of byte {at} bit {bit} at seq {seq} not detected")))?;
        prop_assert_eq!(reported, seq, "byte {} bit {}: {}", at, bit, corruption);
        let expected_kind = matches!(
            corruption,
            Corruption::Undecodable { .. }
                | Corruption::HashMismatch { .. }
                | Corruption::Misplaced { .. }
                | Corruption::BadLink { .. }
        );
        prop_assert!(expected_kind, "unexpected kind of corruption: {:?}", corruption);
        prop_assert!(report.events_verified <= seq);
        let (open_seq, open_corruption) = opened.map_err(TestCaseError::fail)?;
        prop_assert_eq!(open_seq, seq);
        // rkyv's validation messages name heap addresses, so two reads of the same undecodable
        // record differ in their text; everything else must be identical.
        match (&open_corruption, &corruption) {
            (Corruption::Undecodable { .. }, Corruption::Undecodable { .. }) => {}
            _ => prop_assert_eq!(open_corruption, corruption),
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(verify(dir.path()).is_ok(), "every case restored the ledger");
}

/// (b) The last records are gone but `meta` still records the old head.
#[test]
fn truncated_ledger_is_reported() {
    let dir = damaged_ledger();
    let raw = RawLedger::open(dir.path());
    for seq in LAST - 9..=LAST {
        raw.remove(seq);
    }
    raw.close();
    let expected = Corruption::Truncated { head_seq: LAST, last_seq: Some(LAST - 10) };
    assert_eq!(assert_verify_reports(dir.path(), LAST - 9), expected);
    assert_eq!(open_must_fail(dir.path()), (LAST - 9, expected));
}

/// (c) One record in the middle is gone.
#[test]
fn missing_record_is_reported_as_a_gap() {
    let dir = damaged_ledger();
    let raw = RawLedger::open(dir.path());
    raw.remove(277);
    raw.close();
    let expected = Corruption::Gap { expected: 277, found: 278 };
    assert_eq!(assert_verify_reports(dir.path(), 277), expected);
    assert_eq!(open_must_fail(dir.path()), (277, expected));
}

/// (d) Two records swapped: each is intact but under the other's key.
#[test]
fn swapped_records_are_reported_as_misplaced() {
    let dir = damaged_ledger();
    let raw = RawLedger::open(dir.path());
    let (a, b) = (150, 420);
    let (va, vb) = (raw.value(a), raw.value(b));
    raw.put_value(a, &vb);
    raw.put_value(b, &va);
    raw.close();
    let expected = Corruption::Misplaced { key: a, claimed: b };
    assert_eq!(assert_verify_reports(dir.path(), a), expected);
    assert_eq!(open_must_fail(dir.path()), (a, expected));
}

/// (e) An event re-signed by a key that was never admitted, with the chain and head
/// recomputed so every link is consistent: only the rules can catch it.
#[test]
fn event_by_an_unadmitted_key_is_rejected_even_when_rechained() {
    let h = history();
    let dir = damaged_ledger();
    let seq = 333;
    let stranger = NodeKey::generate().expect("os randomness");
    let raw = RawLedger::open(dir.path());
    let original = raw.record(seq).event;
    let forged = SignedEvent::sign(&stranger, original.fingerprint, original.timestamp, original.body.clone());
    raw.replace_and_rechain(seq, forged);
    raw.close();
    assert_ne!(original.author, stranger.node_id());
    assert!(h.keys.iter().all(|k| k.node_id() != stranger.node_id()));

    let expected = Corruption::Rejected { rejection: Rejection::UnknownAuthor(stranger.node_id()) };
    assert_eq!(assert_verify_reports(dir.path(), seq), expected);
    assert_eq!(open_must_fail(dir.path()), (seq, expected));
}

/// (f) An event of another network, validly signed by a key of this one (or taken whole from
/// another network), re-chained: the signature domain and the fingerprint keep it out.
#[test]
fn event_of_another_network_is_rejected_even_when_rechained() {
    let h = history();
    let seq = 210;
    let (foreign_events, _) = synth_events(0xf0e1, seq as usize + 1);
    let foreign_fp = foreign_events[0].fingerprint;
    assert_ne!(foreign_fp, h.fingerprint);
    let ours = &h.events[seq as usize];
    let resigned = SignedEvent::sign(h.key_of(ours), foreign_fp, ours.timestamp, ours.body.clone());
    let transplanted = foreign_events[seq as usize].clone();
    for (what, forged) in [("re-signed for another network", resigned), ("taken from another network", transplanted)] {
        let dir = damaged_ledger();
        let raw = RawLedger::open(dir.path());
        raw.replace_and_rechain(seq, forged);
        raw.close();
        let expected = Corruption::WrongNetwork { expected: h.fingerprint, found: foreign_fp };
        assert_eq!(assert_verify_reports(dir.path(), seq), expected, "{what}");
        assert_eq!(open_must_fail(dir.path()), (seq, expected), "{what}");
    }
}

/// (g) A forged signature (one bit of it flipped), re-chained so links and hashes agree.
///
/// Opening replays in trusted mode (signatures were verified on ingest; the chain hash catches
/// accidental damage), so a deliberately re-chained forgery is found by the audit: the
/// inspector's `verify` and an audit replay must both name the seq, and apply nothing from it.
#[test]
fn forged_signature_is_found_by_the_audit_even_when_rechained() {
    let dir = damaged_ledger();
    let seq = 451;
    let raw = RawLedger::open(dir.path());
    let mut forged = raw.record(seq).event;
    forged.signature.0[17] ^= 0x04;
    let author = forged.author;
    raw.replace_and_rechain(seq, forged);
    raw.close();

    let expected = Corruption::BadSignature { author };
    assert_eq!(assert_verify_reports(dir.path(), seq), expected);
    let ledger = Ledger::open(dir.path(), config(0)).expect("trusted open checks links and rules, not signatures");
    match ledger.replay(&ReplayOptions { audit: true, stop: StopAt::End }) {
        Err(LedgerError::Corrupt { seq: at, corruption, .. }) => assert_eq!((at, *corruption), (seq, expected)),
        other => panic!("audit replay accepted a forged signature: {:?}", other.map(|(p, _)| p.head())),
    }
}

/// Through the append API: foreign, forged, unadmitted and oversize events come back as typed
/// rejections in place, and change neither the head, the projection nor the disk.
#[test]
fn append_rejects_bad_events_in_place_and_keeps_the_head() {
    let h = history();
    let dir = tempfile::tempdir().expect("tempdir");
    build_ledger(dir.path(), &h.events, config(0), 600);
    let mut ledger = Ledger::open(dir.path(), config(0)).expect("open");
    let head = ledger.head().expect("head");
    let state = ledger.projection().state().clone();
    let founder = &h.keys[0];
    let me = founder.node_id();
    let ts = Timestamp(head.timestamp.0 + 1);
    let caps = |caps: Vec<String>| EventBody::CapabilitiesChanged { node: me, capabilities: caps };

    let other_fp = NetworkFingerprint([0x42; 32]);
    let foreign = SignedEvent::sign(founder, other_fp, ts, caps(vec!["gpu".into()]));
    let mut forged = SignedEvent::sign(founder, h.fingerprint, ts, caps(vec!["gpu".into()]));
    forged.signature.0[3] ^= 0x80;
    let stranger = NodeKey::generate().expect("os randomness");
    let unadmitted = SignedEvent::sign(
        &stranger,
        h.fingerprint,
        ts,
        EventBody::CapabilitiesChanged { node: stranger.node_id(), capabilities: vec!["gpu".into()] },
    );
    let too_many = SignedEvent::sign(founder, h.fingerprint, ts, caps((0..100).map(|i| format!("cap-{i}")).collect()));
    let too_big = SignedEvent::sign(
        founder,
        h.fingerprint,
        ts,
        EventBody::NodeLeft { node: h.events[0].author, reason: "x".repeat(70 * 1024) },
    );

    type IsExpected = Box<dyn Fn(&Rejection) -> bool>;
    let cases: Vec<(&str, SignedEvent, IsExpected)> = vec![
        (
            "another network",
            foreign,
            Box::new(move |r| *r == Rejection::WrongNetwork { expected: h.fingerprint, got: other_fp }),
        ),
        ("forged signature", forged, Box::new(move |r| *r == Rejection::BadSignature(me))),
        ("unadmitted author", unadmitted, Box::new(move |r| *r == Rejection::UnknownAuthor(stranger.node_id()))),
        (
            "100 capabilities",
            too_many,
            Box::new(
                |r| matches!(r, Rejection::LimitExceeded { what, max: 64, got: 100 } if what == "capability list"),
            ),
        ),
        (
            "oversize event",
            too_big,
            Box::new(|r| matches!(r, Rejection::LimitExceeded { what, .. } if what == "event")),
        ),
    ];
    for (what, event, expected) in cases {
        let outcome = ledger.append(vec![event]).expect("a rejection is not an error");
        assert_eq!(outcome.len(), 1);
        match &outcome[0] {
            Err(r) => assert!(expected(r), "{what}: wrong rejection {r:?}"),
            Ok(c) => panic!("{what}: accepted at seq {}", c.seq),
        }
        assert_eq!(ledger.head(), Some(head), "{what}: head moved");
        assert_eq!(ledger.projection().state(), &state, "{what}: projection changed");
    }
    drop(ledger);
    let reopened = Ledger::open(dir.path(), config(0)).expect("reopen");
    assert_eq!(reopened.head(), Some(head), "nothing rejected reached the disk");
    drop(reopened);
    assert!(verify(dir.path()).is_ok());
}

/// A mixed batch applies exactly the good events, in order, and persists them.
#[test]
fn mixed_batch_applies_only_the_good_events() {
    let h = history();
    let dir = tempfile::tempdir().expect("tempdir");
    build_ledger(dir.path(), &h.events, config(0), 300);
    let mut ledger = Ledger::open(dir.path(), config(0)).expect("open");
    let head = ledger.head().expect("head");
    let good = &h.continuation[..3];
    let stranger = NodeKey::generate().expect("os randomness");
    let bad_author = SignedEvent::sign(
        &stranger,
        h.fingerprint,
        good[0].timestamp,
        EventBody::NodeBackOnline { node: stranger.node_id() },
    );
    let mut bad_sig = good[2].clone();
    bad_sig.signature.0[40] ^= 1;
    let batch = vec![good[0].clone(), bad_author, good[1].clone(), bad_sig, good[2].clone(), good[0].clone()];
    let outcome = ledger.append(batch).expect("append");
    let verdicts: Vec<Option<u64>> = outcome.iter().map(|r| r.as_ref().ok().map(|c| c.seq)).collect();
    assert_eq!(verdicts, vec![Some(head.seq + 1), None, Some(head.seq + 2), None, Some(head.seq + 3), None]);
    assert!(matches!(outcome[1], Err(Rejection::UnknownAuthor(_))));
    assert!(matches!(outcome[3], Err(Rejection::BadSignature(_))));
    // A replayed good event is not next any more: its checkpoint or rule no longer holds.
    assert!(outcome[5].is_err());
    let after = ledger.head().expect("head");
    assert_eq!(after.seq, head.seq + 3);
    let state = ledger.projection().state().clone();
    drop(ledger);

    let reopened = Ledger::open(dir.path(), config(0)).expect("reopen");
    assert_eq!(reopened.head(), Some(after));
    assert_eq!(reopened.projection().state(), &state);
    let stored: Vec<SignedEvent> =
        reopened.read_range(head.seq + 1, after.seq).expect("read").into_iter().map(|c| c.event).collect();
    assert_eq!(stored, good.to_vec());
}

/// A flipped bit anywhere in the projection checkpoint never changes the state `open` loads:
/// the damaged checkpoint is ignored in favour of a full replay (or the open fails), and the
/// state equals an audit replay from genesis.
#[test]
fn a_flipped_bit_in_the_projection_checkpoint_is_never_loaded() {
    let h = history();
    let dir = tempfile::tempdir().expect("tempdir");
    // A checkpoint where the chain attests the state (right before a state checkpoint event),
    // and a tail after it.
    let attested = attested_seq(300);
    build_ledger(dir.path(), &h.events[..=attested as usize], config(0), 100);
    let (truth, checkpoint_seq) = {
        let mut ledger = Ledger::open(dir.path(), config(0)).expect("open");
        ledger.write_checkpoint().expect("write checkpoint");
        let outcome = ledger.append(h.events[attested as usize + 1..].to_vec()).expect("append");
        assert!(outcome.iter().all(Result::is_ok));
        let (full, _) = ledger.replay(&ReplayOptions { audit: true, stop: StopAt::End }).expect("audit replay");
        assert_eq!(full.state(), ledger.projection().state());
        (full.state().clone(), ledger.checkpoint_seq().expect("a checkpoint was written"))
    };
    assert_eq!(checkpoint_seq, attested, "the checkpoint leaves a tail to replay");
    assert_eq!(
        Ledger::open(dir.path(), config(0)).expect("open").checkpoint_seq(),
        Some(attested),
        "an attested checkpoint is used"
    );
    let raw = RawLedger::open(dir.path());
    let original = raw.meta_value(b"checkpoint").expect("checkpoint stored");
    raw.close();

    let mut runner = TestRunner::new(Config { cases: 24, failure_persistence: None, ..Config::default() });
    let result = runner.run(&(any::<prop::sample::Index>(), 0..8u8), |(offset, bit)| {
        let at = offset.index(original.len());
        let mut damaged = original.clone();
        damaged[at] ^= 1 << bit;
        let raw = RawLedger::open(dir.path());
        raw.put_meta(b"checkpoint", &damaged);
        raw.close();
        let loaded = Ledger::open(dir.path(), config(0)).map(|l| (l.projection().state().clone(), l.checkpoint_seq()));
        let raw = RawLedger::open(dir.path());
        raw.put_meta(b"checkpoint", &original);
        raw.close();
        match loaded {
            Ok((state, used)) => {
                prop_assert!(state == truth, "byte {} bit {} of the checkpoint changed the loaded state", at, bit);
                prop_assert_eq!(used, None, "a damaged checkpoint was used");
            }
            Err(LedgerError::Corrupt { .. }) => {}
            Err(e) => return Err(TestCaseError::fail(format!("open failed oddly: {e}"))),
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let ledger = Ledger::open(dir.path(), config(0)).expect("restored");
    assert_eq!(ledger.checkpoint_seq(), Some(checkpoint_seq), "the intact checkpoint is used");
    assert_eq!(ledger.projection().state(), &truth);
}

/// A long ledger replays in many parts decoded and verified at once on the thread pool,
/// finishing in any order, and applied in order: damage far into it (a forged, re-chained
/// signature; a missing record) is reported at its own seq, never at a later part that
/// finished first, nothing from it on is applied, and a replay stopping just before it
/// succeeds with the same state as the undamaged ledger up to there.
#[test]
fn damage_deep_in_a_long_ledger_is_reported_at_its_seq_whatever_order_parts_finish() {
    let (events, _) = synth_events(0x1009, 4000);
    let dir = tempfile::tempdir().expect("tempdir");
    let head = build_ledger(dir.path(), &events, config(0), 512);
    let clean = |seq: u64| {
        let reader = mycnet_spores::LedgerReader::open(dir.path()).expect("reader");
        let (p, stats) =
            reader.replay(&ReplayOptions { audit: true, stop: StopAt::Seq(seq) }, &|_| {}).expect("clean replay");
        assert_eq!(stats.events, seq + 1);
        p
    };
    let whole = clean(head.seq);
    assert_eq!(whole.head().map(|h| h.hash), Some(head.hash));
    let before: BTreeMap<u64, Projection> = [1536u64, 2701, 3998].into_iter().map(|s| (s, clean(s - 1))).collect();

    for (&seq, expected_state) in &before {
        // A forged signature, re-chained so every link and hash is right.
        let raw = RawLedger::open(dir.path());
        let original = raw.record(seq);
        let originals: Vec<Vec<u8>> = (seq..=head.seq).map(|s| raw.value(s)).collect();
        let mut forged = original.event.clone();
        forged.signature.0[9] ^= 0x20;
        raw.replace_and_rechain(seq, forged);
        raw.close();
        assert_eq!(assert_verify_reports(dir.path(), seq), Corruption::BadSignature { author: original.event.author });
        let reader = mycnet_spores::LedgerReader::open(dir.path()).expect("reader");
        let (p, _) = reader
            .replay(&ReplayOptions { audit: true, stop: StopAt::Seq(seq - 1) }, &|_| {})
            .expect("replay up to the damage");
        assert_eq!(p.state(), expected_state.state(), "state just before the damage at {seq}");
        drop(reader);

        // A record missing there instead.
        let raw = RawLedger::open(dir.path());
        for (k, v) in originals.iter().enumerate() {
            raw.put_value(seq + k as u64, v);
        }
        raw.set_head(head.seq, head.hash);
        raw.remove(seq);
        raw.close();
        assert_eq!(assert_verify_reports(dir.path(), seq), Corruption::Gap { expected: seq, found: seq + 1 });
        assert_eq!(open_must_fail(dir.path()), (seq, Corruption::Gap { expected: seq, found: seq + 1 }));

        let raw = RawLedger::open(dir.path());
        raw.put_value(seq, &originals[0]);
        raw.close();
    }
    assert!(verify(dir.path()).is_ok(), "every damage was undone");
}

/// Replays started on the thread pool itself, on every pool thread at once (a barrier holds
/// them until all have started), still finish and verify: their parts cannot wait for a pool
/// thread, as every one is busy waiting for parts.
#[test]
fn audits_run_on_every_pool_thread_at_once_finish() {
    let n = rayon::current_num_threads().max(2);
    let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| damaged_ledger()).collect();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let replays: Vec<_> = dirs
        .iter()
        .map(|dir| {
            let (tx, rx) = std::sync::mpsc::channel();
            let path = dir.path().to_path_buf();
            let barrier = barrier.clone();
            rayon::spawn(move || {
                barrier.wait();
                let head = mycnet_spores::LedgerReader::open(&path)
                    .and_then(|reader| reader.replay(&ReplayOptions { audit: true, stop: StopAt::End }, &|_| {}))
                    .map(|(p, _)| p.head().map(|h| h.seq));
                let _ = tx.send(head.map_err(|e| e.to_string()));
            });
            rx
        })
        .collect();
    for rx in replays {
        let head = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("a replay on the pool finished");
        assert_eq!(head, Ok(Some(LAST)), "the replay reached the head and verified");
    }
}

/// The first seq at or after `from` whose state the shared history attests (the next event is
/// a state checkpoint of it).
fn attested_seq(from: u64) -> u64 {
    let h = history();
    (from..LAST)
        .find(
            |s| matches!(h.events[*s as usize + 1].body, EventBody::StateCheckpoint { head_seq, .. } if head_seq == *s),
        )
        .expect("the synthetic history holds state checkpoint events")
}

/// A ledger with a projection checkpoint at `attested_seq(300)` (returned) and a tail to the
/// end, closed.
fn ledger_with_checkpoint() -> (tempfile::TempDir, u64) {
    let h = history();
    let dir = tempfile::tempdir().expect("tempdir");
    let at = attested_seq(300);
    build_ledger(dir.path(), &h.events[..=at as usize], config(0), 100);
    let mut ledger = Ledger::open(dir.path(), config(0)).expect("open");
    ledger.write_checkpoint().expect("write checkpoint");
    assert!(ledger.append(h.events[at as usize + 1..].to_vec()).expect("append").iter().all(Result::is_ok));
    assert_eq!(ledger.checkpoint_seq(), Some(at));
    (dir, at)
}

/// Rewrites the stored checkpoint with `edit` applied to its state and a recomputed digest,
/// through fjall's own API, so every storage checksum and the cache's own digest stay valid.
fn forge_checkpoint(dir: &std::path::Path, edit: impl FnOnce(&mut mycnet_spores::core::projection::ProjectionState)) {
    use mycnet_spores::store::record::{decode_checkpoint, encode_checkpoint};
    let raw = RawLedger::open(dir);
    let stored = raw.meta_value(b"checkpoint").expect("checkpoint stored");
    let mut state = decode_checkpoint(&stored[32..]).expect("intact checkpoint");
    edit(&mut state);
    let record = encode_checkpoint(&state);
    let mut forged = blake3::hash(&record).as_bytes().to_vec();
    forged.extend_from_slice(&record);
    raw.put_meta(b"checkpoint", &forged);
    raw.close();
}

/// The audit trusts no cache: a checkpoint forged with a valid digest (one endpoint changed),
/// a checkpoint beyond a truncated head, and an anchor naming another event are all damage.
#[test]
fn verify_compares_every_stored_cache_with_the_replay() {
    // An intact ledger: every cache is compared and matches.
    let (dir, at) = ledger_with_checkpoint();
    let report = verify(dir.path());
    assert!(report.is_ok(), "{:?}", report.first_error);
    assert!(
        report.caches_checked.iter().any(|c| *c == format!("checkpoint at seq {at}")),
        "{:?}",
        report.caches_checked
    );
    assert!(report.caches_checked.iter().any(|c| c == "head"), "{:?}", report.caches_checked);

    // One endpoint changed in the checkpoint, digest recomputed.
    forge_checkpoint(dir.path(), |state| {
        forge_an_endpoint(state);
    });
    assert_cache_damage(dir.path(), at, "checkpoint");
    // The node itself never starts from it: the chain attests another state there, so opening
    // replays from genesis and serves what the chain says.
    let opened = Ledger::open(dir.path(), config(0)).expect("open");
    assert_eq!(opened.checkpoint_seq(), None, "the forged checkpoint was not used");
    assert!(
        opened.projection().services().all(|s| s.service.endpoints.iter().all(|e| e.address != "203.0.113.66:443")),
        "the forged endpoint is not served"
    );
    // Nor does it sign the forged state into a state-only seed: the export starts from a state
    // the chain attests, and the seed verifies against the chain.
    let seed_dir = tempfile::tempdir().expect("tempdir");
    let seed_path = seed_dir.path().join("state-only.seed");
    let opened = std::sync::RwLock::new(opened);
    let done = mycnet_spores::seed::export(&opened, &history().keys[0], &seed_path, false).expect("export");
    assert!(!done.includes_events);
    let seed = mycnet_spores::seed::read_file(&seed_path, mycnet_spores::seed::VerifyPolicy::default())
        .expect("the seed verifies");
    assert!(matches!(seed.proof, mycnet_spores::seed::StateProof::AttestedAt { .. }), "{:?}", seed.proof);
    for state in [Some(&seed.state), seed.base.as_ref()].into_iter().flatten() {
        assert!(
            state.services.values().all(|s| s.service.endpoints.iter().all(|e| e.address != "203.0.113.66:443")),
            "the forged endpoint is not in the seed"
        );
    }
    drop(opened);

    // The last records removed and the head meta rewritten to the new end: the stored
    // checkpoint still names seq 399, beyond that head.
    let (dir, at) = ledger_with_checkpoint();
    let raw = RawLedger::open(dir.path());
    let new_end = 250;
    let hash = raw.record(new_end).hash;
    for seq in new_end + 1..=LAST {
        raw.remove(seq);
    }
    raw.set_head(new_end, hash);
    raw.close();
    assert_cache_damage(dir.path(), at, "checkpoint");

    // The anchor (the newest checkpoint event) pointed at another event's hash.
    let (dir, _) = ledger_with_checkpoint();
    let report = verify(dir.path());
    let anchored = report
        .caches_checked
        .iter()
        .find_map(|c| c.strip_prefix("anchor at seq ").map(|s| s.parse::<u64>().expect("seq")));
    let anchor = anchored.expect("the synthetic history holds checkpoint events, so the anchor is compared");
    let raw = RawLedger::open(dir.path());
    let mut value = anchor.to_be_bytes().to_vec();
    value.extend_from_slice(raw.record(anchor - 1).hash.as_bytes());
    raw.put_meta(b"anchor", &value);
    raw.close();
    assert_cache_damage(dir.path(), anchor, "anchor");
}

/// `verify` reports the stored `cache` as damage at `seq`.
fn assert_cache_damage(dir: &std::path::Path, seq: u64, cache: &str) {
    let report = verify(dir);
    let Some((at, c)) = report.first_error.clone() else {
        panic!("verify trusted a forged {cache}: {report:?}");
    };
    assert_eq!(at, seq, "{c}");
    assert!(matches!(&c, Corruption::CacheMismatch { cache: which, .. } if which == cache), "{c}");
}

/// A projection damaged in memory (as a failing memory or a bug would) is caught at the next
/// state checkpoint event: the ledger rebuilds it by replay and serves the chain's state again.
#[test]
fn a_projection_damaged_in_memory_is_rebuilt_at_the_next_attestation() {
    let h = history();
    let dir = tempfile::tempdir().expect("tempdir");
    let at = attested_seq(300) as usize;
    build_ledger(dir.path(), &h.events[..=at], config(0), 100);
    let mut ledger = Ledger::open(dir.path(), config(0)).expect("open");
    let truth = ledger.projection().state().clone();
    ledger.damage_projection_for_tests(|state| {
        forge_an_endpoint(state);
    });
    assert_ne!(ledger.projection().state(), &truth);
    // The next event attests the state at `at`.
    let outcome = ledger.append(vec![h.events[at + 1].clone()]).expect("append");
    assert!(outcome[0].is_ok(), "{outcome:?}");
    assert_eq!(ledger.divergence(), None, "a rebuild by replay resolved it");
    let (replayed, _) = ledger.replay(&ReplayOptions { audit: true, stop: StopAt::End }).expect("replay");
    assert_eq!(ledger.projection().state(), replayed.state(), "the damaged state was replaced by the chain's");
}

/// A chain that attests a state its own records do not lead to (an authority signed a wrong
/// digest) is a state divergence: the event is kept (the chain is the ground truth), the ledger
/// says so and keeps saying so after a restart, and the audit reports it at that seq.
#[test]
fn a_chain_attesting_a_wrong_state_is_a_divergence() {
    let h = history();
    let dir = tempfile::tempdir().expect("tempdir");
    build_ledger(dir.path(), &h.events[..300], config(0), 100);
    let mut ledger = Ledger::open(dir.path(), config(0)).expect("open");
    let head = ledger.head().expect("head");
    let mut wrong = ledger.projection().state_digest();
    wrong.0[0] ^= 1;
    let body = EventBody::StateCheckpoint { head_seq: head.seq, head_hash: head.hash, state_digest: wrong };
    let ev = SignedEvent::sign(&h.keys[0], h.fingerprint, Timestamp(head.timestamp.0 + 1), body);
    assert!(ledger.append(vec![ev]).expect("append")[0].is_ok(), "the attestation is not a rule: the event is taken");
    let d = ledger.divergence().expect("the divergence is reported");
    assert_eq!((d.seq, d.head_seq, d.attested), (head.seq + 1, head.seq, wrong));
    drop(ledger);
    let reopened = Ledger::open(dir.path(), config(0)).expect("reopen");
    assert_eq!(reopened.divergence().map(|d| d.seq), Some(head.seq + 1), "still reported after a restart");
    drop(reopened);
    let report = verify(dir.path());
    assert!(
        matches!(report.first_error, Some((seq, Corruption::StateDivergence { .. })) if seq == head.seq + 1),
        "{:?}",
        report.first_error
    );
}

/// Copies `from` into `to`, each journal only up to its last written byte (fjall preallocates
/// them: the rest is zeros, read as the end of the journal).
fn copy_written(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_written(&src, &dst);
        } else {
            let mut bytes = std::fs::read(&src).expect("read");
            if src.extension().is_some_and(|e| e == "jnl") {
                let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
                bytes.truncate(end);
            }
            std::fs::write(&dst, bytes).expect("write");
        }
    }
}

/// A damaged journal, at any of 48 places across what was written, gets an error (or a
/// recovery) when the ledger opens, never a panic: fjall 3.1 asserts on some damaged entries,
/// which the ledger turns into a typed corruption.
#[test]
fn a_damaged_journal_anywhere_is_an_error_at_open_never_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clean = dir.path().join("clean");
    build_ledger(&clean, &history().events[..300], config(0), 50);
    let journal = std::fs::read_dir(&clean)
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "jnl"))
        .expect("a journal");
    let name = journal.file_name().expect("name").to_owned();
    let written = {
        let bytes = std::fs::read(&journal).expect("read");
        bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
    };
    assert!(written > 1000, "the journal holds the appends: {written} bytes");
    let (mut errors, mut opened) = (0, 0);
    for k in 0..48 {
        let at = 8 + k * (written - 16) / 48;
        let copy = dir.path().join(format!("d{k}"));
        copy_written(&clean, &copy);
        let jnl = copy.join(&name);
        let mut bytes = std::fs::read(&jnl).expect("read copy");
        bytes[at] ^= 0x10;
        std::fs::write(&jnl, bytes).expect("damage");
        let outcome = std::panic::catch_unwind(|| Ledger::open(&copy, config(0)).map(|l| l.head()));
        match outcome {
            Ok(Ok(_)) => opened += 1,
            Ok(Err(_)) => errors += 1,
            Err(_) => panic!("opening a journal damaged at byte {at} of {written} panicked"),
        }
    }
    eprintln!("48 damaged journals: {errors} refused with an error, {opened} recovered");
}

/// Points one service's first endpoint at 203.0.113.66:443 (a forged state).
fn forge_an_endpoint(state: &mut mycnet_spores::core::projection::ProjectionState) {
    let id =
        *state.services.iter().find(|(_, s)| !s.service.endpoints.is_empty()).expect("a service with an endpoint").0;
    let service = std::sync::Arc::make_mut(state.services.get_mut(&id).expect("present"));
    service.service.endpoints[0].address = "203.0.113.66:443".into();
}
