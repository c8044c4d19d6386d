//! Retention's cost (not a criterion bench): a durable ledger of `SPORES_RETENTION_BENCH_EVENTS`
//! synthetic events (default 110,000) is archived and pruned down to its newest 10,000 while a
//! writer appends one event at a time, and the figures are set against limits measured in the
//! same run:
//! - the prune (the synced switch plus the deletion of the records let go) against a raw fjall
//!   delete of as many keys of the same size (one batch, synced), target ≤ 2 ×;
//! - how much longer the slowest write took while retention ran (planning, archiving, the
//!   switch, the deletion and the reclaim) than the slowest of as many writes before it,
//!   against the median durable append: the stall, target ≤ 1 commit; and, as the limit for
//!   it, how much longer the slowest synced append to a plain file (and a synced batch to a
//!   raw fjall database) takes while a bulk write of the archive's size runs beside it.
//!
//! ```text
//! cargo bench --bench retention
//! ```

// tests and benches: a panic is the failure report
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use fjall::{Database, KeyspaceCreateOptions, PersistMode};
use mycnet_spores::seed::archive::{archive_and_prune, RetentionPolicy};
use mycnet_spores::store::synth::{Synth, SynthConfig};
use mycnet_spores::{Ledger, LedgerConfig};

const KEEP: u64 = 10_000;

/// Appends timed before the run: about as many as a run takes.
const IDLE_APPENDS: usize = 9000;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A raw fjall delete of `n` keys with values of `value_len` bytes: one batch, synced.
fn raw_delete(n: u64, value_len: usize) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::builder(dir.path()).open().expect("open");
    let ks = db.keyspace("raw", KeyspaceCreateOptions::default).expect("keyspace");
    let value = vec![7u8; value_len];
    for chunk in (0..n).collect::<Vec<_>>().chunks(4096) {
        let mut b = db.batch();
        for i in chunk {
            b.insert(&ks, i.to_be_bytes(), value.clone());
        }
        b.commit().expect("insert");
    }
    db.persist(PersistMode::SyncData).expect("sync");
    let t = Instant::now();
    let mut b = db.batch().durability(Some(PersistMode::SyncData));
    for i in 0..n {
        b.remove(&ks, i.to_be_bytes());
    }
    b.commit().expect("delete");
    t.elapsed()
}

/// A synced 400 B append to a plain file in `dir`, timed.
fn plain_appender(dir: &std::path::Path) -> impl FnMut() -> Duration {
    use std::io::Write;
    let mut log = std::fs::File::create(dir.join("raw-log")).expect("log");
    move || {
        let t = Instant::now();
        log.write_all(&[7u8; 400]).expect("append");
        log.sync_data().expect("sync");
        t.elapsed()
    }
}

/// A synced batch of one 400 B value to a fresh fjall database in `dir`, timed: what the
/// ledger's durable append is at the bottom, without the ledger.
fn fjall_appender(dir: &std::path::Path) -> impl FnMut() -> Duration {
    let db = Database::builder(dir.join("raw-fjall")).open().expect("open");
    let ks = db.keyspace("raw", KeyspaceCreateOptions::default).expect("keyspace");
    let mut seq = 0u64;
    move || {
        let t = Instant::now();
        let mut batch = db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&ks, seq.to_be_bytes(), [7u8; 400]);
        batch.commit().expect("commit");
        seq += 1;
        t.elapsed()
    }
}

/// The disk's own limit for the stall: the slowest of `n` synced appends (`append`), by
/// themselves and then while another thread writes `bulk` bytes to another file in writes of
/// `piece` bytes each synced (the archive is written in 1 MiB ones). No ledger: what the disk,
/// the filesystem (and fjall, with [`fjall_appender`]) do to a durable append while anything
/// writes in bulk beside it.
fn raw_stall(
    dir: &std::path::Path,
    n: usize,
    bulk: u64,
    piece: usize,
    mut append: impl FnMut() -> Duration,
) -> (Duration, Duration, Duration) {
    use std::io::Write;
    let quiet: Vec<Duration> = (0..n).map(|_| append()).collect();
    let writing = Arc::new(AtomicBool::new(true));
    let bulk_writer = {
        let (writing, path) = (writing.clone(), dir.join("raw-bulk"));
        std::thread::spawn(move || {
            let mut f = std::fs::File::create(&path).expect("bulk");
            let chunk = vec![9u8; piece];
            for _ in 0..bulk.div_ceil(piece as u64) {
                f.write_all(&chunk).expect("bulk write");
                f.sync_data().expect("bulk sync");
            }
            writing.store(false, Ordering::Relaxed);
        })
    };
    let mut busy = Vec::new();
    while writing.load(Ordering::Relaxed) {
        busy.push(append());
    }
    bulk_writer.join().expect("bulk writer");
    let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    (median(quiet.clone()), max(&quiet), max(&busy))
}

fn main() {
    let total: usize =
        std::env::var("SPORES_RETENTION_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(110_000);
    let mut synth = Synth::new(SynthConfig { seed: 0x4e7d, nodes: 12, ..Default::default() });
    let mut events = Vec::with_capacity(total);
    while events.len() < total {
        events.extend(synth.next_chunk((total - events.len()).min(2048)));
    }
    // Enough single appends for a quiet baseline as long as the run (the slowest of a sample
    // grows with its size, so before and during are compared over about as many appends) and
    // to last the whole run (~2 s at ~0.2 ms each), so every phase of retention is measured
    // against a writer.
    let live: Vec<_> = (0..16).flat_map(|_| synth.next_chunk(2048)).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Arc::new(RwLock::new(Ledger::open(dir.path().join("l"), LedgerConfig::default()).expect("open")));
    for chunk in events.chunks(4096) {
        ledger.write().unwrap().append(chunk.to_vec()).expect("append");
    }
    let record_len = {
        let l = ledger.read().unwrap();
        let mut bytes = 0usize;
        l.visit_raw_range(0, 999, |_, r| {
            bytes += r.len();
            Ok(())
        })
        .expect("read");
        bytes / 1000
    };

    // One writer, one event at a time, durable: its latencies before and during retention.
    // Each append's whole time, and the part of it spent waiting for the ledger's lock.
    let appended_split = |l: &RwLock<Ledger>, ev| {
        let t = Instant::now();
        let mut g = l.write().unwrap();
        let waited = t.elapsed();
        g.append(vec![ev]).expect("append");
        (t.elapsed(), waited)
    };
    let appended = |l: &RwLock<Ledger>, ev| appended_split(l, ev).0;
    // The bulk load's flushes and compactions settle first: the baseline is a quiet node's.
    ledger.read().unwrap().reclaimer().compact_all().expect("settle");
    std::thread::sleep(Duration::from_secs(1));
    let mut live = live.into_iter();
    let idle: Vec<Duration> = live.by_ref().take(IDLE_APPENDS).map(|ev| appended(&ledger, ev)).collect();
    let running = Arc::new(AtomicBool::new(true));
    let writer = {
        let (ledger, running) = (ledger.clone(), running.clone());
        let rest: Vec<_> = live.collect();
        std::thread::spawn(move || {
            let mut during = Vec::new();
            for ev in rest {
                if !running.load(Ordering::Relaxed) {
                    break;
                }
                let at = Instant::now();
                during.push((at, appended_split(&ledger, ev)));
            }
            during
        })
    };
    let t = Instant::now();
    let key = synth.keys()[0].clone();
    let policy = RetentionPolicy { keep_events: Some(KEEP), keep_for: None };
    let done = archive_and_prune(&ledger, &key, &dir.path().join("archive"), &policy)
        .expect("archive and prune")
        .expect("something to prune");
    let reclaim = Instant::now();
    // The lock only to get the reclaimer: it runs without it, as in the node.
    let reclaimer = ledger.read().unwrap().reclaimer();
    reclaimer.run().expect("reclaim");
    let reclaimed_in = reclaim.elapsed();
    let whole = t.elapsed();
    running.store(false, Ordering::Relaxed);
    let timed = writer.join().expect("writer");
    // The slowest appends, and the phase each started in (the phases run back to back).
    let mut phases = vec![("plan", done.planned_in), ("archive", done.archived_in), ("switch", done.pruned.took)];
    phases.extend([("deletion", done.removed_in), ("reclaim", reclaimed_in)]);
    let phase_of = |since: Duration| {
        let mut end = Duration::ZERO;
        for (name, took) in &phases {
            end += *took;
            if since < end {
                return *name;
            }
        }
        "after"
    };
    let mut slowest = timed.clone();
    slowest.sort_by_key(|(_, (d, _))| std::cmp::Reverse(*d));
    for (at, (d, waited)) in slowest.iter().take(5) {
        let since = at.duration_since(t);
        eprintln!(
            "slow append: {d:?} ({waited:?} of it waiting for the ledger's lock), started {since:?} into the run (during the {})",
            phase_of(since)
        );
    }
    let during: Vec<Duration> = timed.into_iter().map(|(_, (d, _))| d).collect();

    let pruned = done.pruned.to + 1 - done.pruned.from;
    let prune = done.pruned.took + done.removed_in;
    let raw = raw_delete(pruned, record_len);
    let commit = median(idle.clone());
    let worst = during.iter().max().copied().unwrap_or_default();
    let idle_worst = idle.iter().max().copied().unwrap_or_default();
    let p99 = |mut v: Vec<Duration>| {
        v.sort();
        v[(v.len() * 99 / 100).min(v.len() - 1)]
    };
    eprintln!("\n=== retention: {total} events, keep {KEEP}, {} appends during the run ===", during.len());
    eprintln!("plan (replay to the newest attested state) {:?}", done.planned_in);
    eprintln!("archive ({} bytes, written and verified) {:?}", done.bytes, done.archived_in);
    eprintln!("switch (under the write lock; synced by the deletion) {:?}", done.pruned.took);
    eprintln!("deletion of {} records (no lock) {:?}", done.removed, done.removed_in);
    eprintln!("reclaim (drop the tables freed since) {reclaimed_in:?}; the whole run {whole:?}");
    eprintln!(
        "prune {pruned} events: {prune:?} = {:.2} x a raw fjall delete of the same keys ({raw:?}, {record_len} B values) (target <= 2)",
        prune.as_secs_f64() / raw.as_secs_f64()
    );
    eprintln!(
        "durable appends, one at a time: before the run p50 {commit:?} p99 {:?} max {idle_worst:?} ({} appends); during it p50 {:?} p99 {:?} max {worst:?} ({} appends)",
        p99(idle.clone()),
        idle.len(),
        median(during.clone()),
        p99(during.clone()),
        during.len()
    );
    // The same bulk written in smaller synced pieces too: whether writing the archive in
    // smaller ones could bring the stall under one commit; and in larger ones, as fjall writes.
    // And a raw fjall database's synced append beside the same bulk write: the ledger's
    // append without the ledger.
    let (plain, fjall) = ("a synced 400 B append to a plain file", "a synced 400 B batch to a raw fjall database");
    // 16 MiB pieces: how fjall flushes a memtable (`MEMTABLE_BYTES_MIN` and up), one table written
    // and synced once at its end.
    let limits = [(plain, 1usize << 20), (plain, 256 << 10), (plain, 64 << 10), (plain, 16 << 20), (fjall, 1 << 20)];
    for (what, piece) in limits {
        let raw_dir = tempfile::tempdir().expect("tempdir");
        let (raw_p50, raw_quiet, raw_busy) = if what == fjall {
            raw_stall(raw_dir.path(), idle.len(), done.bytes, piece, fjall_appender(raw_dir.path()))
        } else {
            raw_stall(raw_dir.path(), idle.len(), done.bytes, piece, plain_appender(raw_dir.path()))
        };
        eprintln!(
            "the disk's own limit: {what}, p50 {raw_p50:?}, slowest {raw_quiet:?} alone ({:.1} x its median) and {raw_busy:?} while {} MB are written beside it in synced {} KiB writes: {:?} longer = {:.2} x its median",
            raw_quiet.as_secs_f64() / raw_p50.as_secs_f64(),
            done.bytes >> 20,
            piece >> 10,
            raw_busy.saturating_sub(raw_quiet),
            raw_busy.saturating_sub(raw_quiet).as_secs_f64() / raw_p50.as_secs_f64()
        );
    }
    let stall = worst.saturating_sub(idle_worst);
    eprintln!(
        "the slowest write during the run waited {stall:?} longer than the slowest before it = {:.2} x the median append (target <= 1)",
        stall.as_secs_f64() / commit.as_secs_f64()
    );
}
