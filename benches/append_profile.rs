//! Profiling harness for the durable append path (not a criterion bench): appends the first
//! `SPORES_PROFILE_EVENTS` (default 16 384) synthetic events through
//! `Ledger::append_verified` in batches of 256, and the same record bytes through a raw fjall
//! durable batch, each in its own function so an instruction-count profiler can isolate them:
//!
//! ```text
//! cargo bench --bench append_profile --no-run
//! valgrind --tool=callgrind --toggle-collect='*append_profile::ours*' target/release/deps/append_profile-*
//! valgrind --tool=callgrind --toggle-collect='*append_profile::raw*' target/release/deps/append_profile-*
//! ```
//!
//! `SPORES_PROFILE_NOSYNC=1` skips the fsync on both sides (CPU part only).
//!
//! Signatures are verified (outside the profiled functions) before either append. Prints wall
//! times too, which are only as quiet as the machine.

// tests and benches: a panic is the failure report
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

use std::time::{Duration, Instant};

use fjall::{Database, KeyspaceCreateOptions, PersistMode};
use mycnet_spores::core::keys::VerifierCache;
use mycnet_spores::store::record::encode_record;
use mycnet_spores::store::synth::{Synth, SynthConfig};
use mycnet_spores::store::verified::VerifiedEvents;
use mycnet_spores::{ChainedEvent, Ledger, LedgerConfig, SignedEvent};

const BATCH: usize = 256;

#[inline(never)]
fn ours(ledger: &mut Ledger, batches: Vec<VerifiedEvents>) -> (Duration, Vec<ChainedEvent>) {
    let mut spent = Duration::ZERO;
    let mut chained = Vec::new();
    for b in batches {
        let t = Instant::now();
        let outcome = ledger.append_verified(b).expect("append");
        spent += t.elapsed();
        chained.extend(outcome.into_iter().map(|o| o.expect("accepted")));
    }
    (spent, chained)
}

#[inline(never)]
fn raw(db: &Database, ks: &fjall::Keyspace, records: &[(Vec<u8>, Vec<u8>)], durable: bool) -> Duration {
    let mut spent = Duration::ZERO;
    for part in records.chunks_exact(BATCH) {
        let t = Instant::now();
        let mut batch = db.batch().durability(durable.then_some(PersistMode::SyncData));
        for (k, v) in part {
            batch.insert(ks, k.as_slice(), v.as_slice());
        }
        batch.commit().expect("commit");
        spent += t.elapsed();
    }
    spent
}

fn main() {
    let n: usize = std::env::var("SPORES_PROFILE_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(16_384);
    let n = n / BATCH * BATCH;
    // SPORES_PROFILE_NOSYNC=1: no fsync on either side, to see the CPU part alone.
    let durable = std::env::var_os("SPORES_PROFILE_NOSYNC").is_none();
    let mut synth = Synth::new(SynthConfig { seed: 1, ..SynthConfig::default() });
    let mut events: Vec<SignedEvent> = Vec::with_capacity(n);
    while events.len() < n {
        events.extend(synth.next_chunk((n - events.len()).min(2048)));
    }
    events.truncate(n);
    let mut cache = VerifierCache::default();
    let batches: Vec<VerifiedEvents> = events
        .chunks_exact(BATCH)
        .map(|c| {
            let (v, bad) = VerifiedEvents::verify(c.to_vec(), &mut cache);
            assert!(bad.is_empty());
            v
        })
        .collect();
    let root = std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| "target".into());
    std::fs::create_dir_all(&root).expect("target dir");
    let dir = tempfile::Builder::new().prefix("profile-").tempdir_in(&root).expect("scratch");
    let mut ledger =
        Ledger::open(dir.path().join("ours"), LedgerConfig { durable, ..LedgerConfig::default() }).expect("open");
    let (t_ours, chained) = ours(&mut ledger, batches);
    let records: Vec<(Vec<u8>, Vec<u8>)> =
        chained.iter().map(|e| (e.seq.to_be_bytes().to_vec(), encode_record(e))).collect();
    let db = Database::builder(dir.path().join("raw")).open().expect("open raw");
    let ks = db.keyspace("ledger", KeyspaceCreateOptions::default).expect("keyspace");
    let t_raw = raw(&db, &ks, &records, durable);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / (n / BATCH) as f64;
    println!(
        "{n} events: ours {:.1} us/batch, raw {:.1} us/batch, ratio (raw/ours) {:.3}",
        per(t_ours),
        per(t_raw),
        t_raw.as_secs_f64() / t_ours.as_secs_f64()
    );
}
