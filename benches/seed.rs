//! Seed spore benches: export and import of a large network's seed, against raw limits
//! measured in the same run.
//!
//! Run: `cargo bench --bench seed` (`SPORES_BENCH_EVENTS`, default 1 000 000; the fixture is
//! generated once into `target/bench-fixtures/`, which takes a few minutes at 1M). Prints:
//! - export ≤ 2 × (raw ledger scan + blake3 of the file + one fsync);
//! - import of a quorum-signed seed ≥ 0.5 × raw fjall bulk append of the same records;
//! - the file sizes, with and without events.

// tests and benches: a panic is the failure report
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use fjall::{Database, KeyspaceCreateOptions, PersistMode};
use mycnet_spores::seed::{self, VerifyPolicy};
use mycnet_spores::store::record::{encode_record, seq_key};
use mycnet_spores::store::synth::{Synth, SynthConfig};
use mycnet_spores::{Ledger, LedgerConfig, NodeKey};

#[path = "common/fixture.rs"]
mod fixture;

fn events_wanted() -> u64 {
    std::env::var("SPORES_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
}

/// A ledger of `n` synthetic events and the keys of its voters, generated once.
fn fixture(n: u64) -> (PathBuf, Vec<NodeKey>) {
    let mut synth =
        Synth::new(SynthConfig { seed: 7, nodes: 64, voters: 3, checkpoint_every_chunk: false, ..Default::default() });
    let cfg = LedgerConfig { durable: false, checkpoint_interval: 0, ..LedgerConfig::default() };
    let (dir, generated) = fixture::synth_ledger(&format!("seed-ledger-{n}"), n, &mut synth, cfg);
    if !generated {
        // Replay the generator's key schedule without its events: keys depend on the seed only.
        let _ = synth.next_chunk(1);
    }
    let ledger = Ledger::open(&dir, LedgerConfig { create: false, ..LedgerConfig::default() }).expect("open fixture");
    let p = ledger.projection();
    let voters: Vec<NodeKey> = synth
        .keys()
        .iter()
        .filter(|k| {
            p.node(&k.node_id()).is_some_and(|r| r.role.is_authority() && r.status != mycnet_spores::NodeStatus::Left)
        })
        .cloned()
        .collect();
    assert!(!voters.is_empty(), "the fixture has voters");
    (dir, voters)
}

/// Raw: scan every ledger value through fjall (no decoding).
fn raw_scan(dir: &Path) -> (Duration, u64) {
    let db = Database::builder(dir).open().expect("open");
    let ks = db.keyspace("ledger", KeyspaceCreateOptions::default).expect("ledger keyspace");
    let t = Instant::now();
    let mut bytes = 0u64;
    for g in ks.iter() {
        let v = g.value().expect("value");
        bytes += v.len() as u64;
    }
    (t.elapsed(), bytes)
}

/// Raw: blake3 of `bytes`, and one fsync of a file of that size.
fn raw_hash_and_fsync(bytes: &[u8], dir: &Path) -> (Duration, Duration) {
    let t = Instant::now();
    let h = blake3::hash(bytes);
    let hash = t.elapsed();
    std::hint::black_box(h);
    let path = dir.join("raw-fsync.bin");
    let mut f = std::fs::File::create(&path).expect("create");
    f.write_all(bytes).expect("write");
    let t = Instant::now();
    f.sync_all().expect("fsync");
    let fsync = t.elapsed();
    let _ = std::fs::remove_file(path);
    (hash, fsync)
}

/// Raw: append the same records to a fresh fjall keyspace in batches, one sync at the end.
fn raw_bulk_append(records: &[(u64, Vec<u8>)], dir: &Path) -> Duration {
    let path = dir.join("raw-append");
    let _ = std::fs::remove_dir_all(&path);
    let db = Database::builder(&path).open().expect("open");
    let ks = db.keyspace("ledger", KeyspaceCreateOptions::default).expect("ks");
    let t = Instant::now();
    for chunk in records.chunks(4096) {
        let mut b = db.batch();
        for (seq, rec) in chunk {
            b.insert(&ks, seq_key(*seq), rec.clone());
        }
        b.commit().expect("commit");
    }
    db.persist(PersistMode::SyncAll).expect("persist");
    let d = t.elapsed();
    drop(ks);
    drop(db);
    let _ = std::fs::remove_dir_all(&path);
    d
}

fn bench_seed(c: &mut Criterion) {
    let n = events_wanted();
    let (dir, voters) = fixture(n);
    let work = tempfile::tempdir_in(dir.parent().expect("parent")).expect("work dir");
    let ledger =
        RwLock::new(Ledger::open(&dir, LedgerConfig { create: false, ..LedgerConfig::default() }).expect("open"));
    let signer = voters[0].clone();
    let full = work.path().join("full.seed");
    let bare = work.path().join("bare.seed");

    let mut g = c.benchmark_group("seed");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("export_with_events", |b| b.iter(|| seed::export(&ledger, &signer, &full, true).expect("export")));
    g.finish();

    // Figures for the summary, measured now.
    let t = Instant::now();
    let head = seed::export(&ledger, &signer, &full, true).expect("export").head;
    let export = t.elapsed();
    seed::export(&ledger, &signer, &bare, false).expect("export without events");
    let (scan, _) = {
        drop(ledger);
        raw_scan(&dir)
    };
    let full_bytes = std::fs::read(&full).expect("read seed");
    let (hash, fsync) = raw_hash_and_fsync(&full_bytes, work.path());
    let export_budget = scan + hash + fsync;

    // A quorum-signed seed of the same state, then import it into a fresh ledger.
    let s = seed::verify(&full_bytes, VerifyPolicy::default()).expect("verify");
    let projection = s.projection();
    let signers: Vec<&NodeKey> = voters.iter().collect();
    let quorum_bytes = seed::build(&projection, Some(&s.events), &signers).expect("build quorum seed");
    let quorum = work.path().join("quorum.seed");
    std::fs::write(&quorum, &quorum_bytes).expect("write");
    let records: Vec<(u64, Vec<u8>)> = s.events.iter().map(|e| (e.seq, encode_record(e))).collect();
    drop(s);
    let raw_append = raw_bulk_append(&records, work.path());
    drop(records);
    let target = work.path().join("imported");
    let t = Instant::now();
    let bytes = std::fs::read(&quorum).expect("read quorum seed");
    let parsed = seed::verify_quorum(&bytes, None).expect("quorum seed verifies");
    let verified = t.elapsed();
    let mut fresh =
        Ledger::open(&target, LedgerConfig { durable: false, checkpoint_interval: 0, ..LedgerConfig::default() })
            .expect("open");
    let imported_head = seed::import_quorum(&mut fresh, &parsed).expect("import");
    let import = t.elapsed();
    assert_eq!(imported_head.hash, head.hash);

    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    eprintln!("\n=== seed summary ({} events) ===", head.seq + 1);
    eprintln!("{:>44}: {:.3} s", "raw ledger scan", scan.as_secs_f64());
    eprintln!("{:>44}: {:.3} s", "raw blake3 of the file", hash.as_secs_f64());
    eprintln!("{:>44}: {:.3} s", "raw fsync of the file", fsync.as_secs_f64());
    eprintln!("{:>44}: {:.3} s", "ours: export with events", export.as_secs_f64());
    eprintln!("{:>44}: {:.3} s", "raw fjall bulk append of the records", raw_append.as_secs_f64());
    eprintln!(
        "{:>44}: {:.3} s (of which verify {:.3} s)",
        "ours: verify + import (quorum-signed)",
        import.as_secs_f64(),
        verified.as_secs_f64()
    );
    eprintln!("{:>44}: {} bytes", "seed with events", size(&full));
    eprintln!("{:>44}: {} bytes", "seed without events", size(&bare));
    eprintln!("{:>44}: {} bytes", "quorum-signed seed", size(&quorum));
    eprintln!(
        "ratio export / (scan + blake3 + fsync) = {:.3} (target <= 2.0)",
        export.as_secs_f64() / export_budget.as_secs_f64()
    );
    eprintln!(
        "ratio import rate / raw bulk append rate = {:.3} (target >= 0.5)",
        raw_append.as_secs_f64() / import.as_secs_f64()
    );
}

criterion_group!(benches, bench_seed);
criterion_main!(benches);
