//! Ledger benches: durable append, trusted and audit replay, verify and cold open of a
//! synthetic N-event ledger, measured against raw limits taken in the same run.
//!
//! Run: `cargo bench --bench ledger`. Prints a summary with the ratios:
//! - audit replay events/s ≥ 0.8 × V × cores, V = raw `verify_batch` rate of one core
//!   (batches of 256, 256-byte messages; measured at the start and the end of the run, the
//!   better figure kept);
//! - trusted replay events/s ≥ 0.7 × R, R = raw fjall scan of the same `ledger` keyspace +
//!   validated rkyv access of every record + a blake3 chain hash over it, done by hand;
//! - durable `Ledger::append_verified` (the storage path: signatures verified beforehand by
//!   `VerifiedEvents::verify`) in batches of 256 ≥ 0.7 × F, F = raw fjall durable batch append
//!   (`PersistMode::SyncData`) of 256 records of the same bytes; verification alone and the
//!   full `Ledger::append` (verify + append_verified) are reported next to it;
//! - times of `LedgerReader::verify` of the whole fixture and of a cold open.
//!
//! The fixture is a deterministic [`Synth`] history of `SPORES_BENCH_EVENTS` events (default
//! 1 000 000; seed `SPORES_BENCH_SEED`, default 1) written through the `Ledger` into
//! `target/bench-fixtures/ledger-<N>-<seed>/` and reused by later runs once it is complete.
//! Generating 1M events takes a few minutes, once. `SPORES_BENCH_EVENTS=20000` for a quick
//! check. The whole-fixture benches run one pass per criterion sample, so criterion warns
//! that it cannot complete 10 samples in the target time; that is expected.
//!
//! A criterion filter runs a part only (`cargo bench --bench ledger -- ledger_replay/audit`);
//! the figures of the benches it leaves out are printed as NaN.
//!
//! Figures are only as quiet as the machine: other processes (builds) share its cores and
//! disk. "Cold" open means a fresh open in this process; the OS page cache stays warm.

// tests and benches: a panic is the failure report
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use mycnet_spores::core::event::chain_hash;
use mycnet_spores::core::keys::VerifierCache;
use mycnet_spores::core::limits::{APPEND_BATCH_MAX, REPLAY_CHUNK_EVENTS};
use mycnet_spores::store::record::{encode_record, RECORD_FORMAT_V1};
use mycnet_spores::store::synth::{Synth, SynthConfig};
use mycnet_spores::store::verified::VerifiedEvents;
use mycnet_spores::{
    ChainHash, ChainedEvent, Ledger, LedgerConfig, LedgerReader, NodeKey, ReplayOptions, SignedEvent, StopAt,
};
use rkyv::rancor;
use rkyv::util::AlignedVec;

/// Events per append batch (ours and raw).
const BATCH: usize = 256;
/// At most this many fixture events are kept in memory for the append benches; when they are
/// used up the append restarts on a fresh ledger (outside the timed part).
const APPEND_POOL_MAX: usize = 65_536;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

/// The median of `v`; NaN if a criterion filter left the bench that fills it out.
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn fixtures_root() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-fixtures")
}

/// A scratch directory on the same file system as the fixture (not /tmp, which may be tmpfs
/// and make fsync free).
fn scratch_dir() -> tempfile::TempDir {
    let root = fixtures_root();
    std::fs::create_dir_all(&root).expect("create fixtures root");
    tempfile::Builder::new().prefix("scratch-").tempdir_in(root).expect("scratch dir")
}

struct Fixture {
    dir: PathBuf,
    events: u64,
    head: ChainHash,
    /// How long it took to generate (`None` if reused).
    generated_in: Option<Duration>,
}

const COMPLETE_MARKER: &str = "bench-fixture-complete";

/// Reuses `target/bench-fixtures/ledger-<n>-<seed>/` if its completion marker names the
/// recorded head and the last record carries it; otherwise (re)generates it.
fn fixture(n: u64, seed: u64) -> Fixture {
    let root = fixtures_root();
    let dir = root.join(format!("ledger-{n}-{seed}"));
    let marker = root.join(format!("ledger-{n}-{seed}.{COMPLETE_MARKER}"));
    if let Some(head) = reusable(&dir, &marker, n) {
        eprintln!("ledger bench: reusing fixture {} ({n} events)", dir.display());
        return Fixture { dir, events: n, head, generated_in: None };
    }
    let _ = std::fs::remove_file(&marker);
    let _ = std::fs::remove_dir_all(&dir);
    let tmp = root.join(format!("ledger-{n}-{seed}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&root).expect("create fixtures root");
    eprintln!(
        "ledger bench: generating fixture {} ({n} events, seed {seed}; 1M takes a few minutes, once)",
        dir.display()
    );
    let started = Instant::now();
    let head = {
        let config = LedgerConfig { durable: false, ..LedgerConfig::default() };
        let mut ledger = Ledger::open(&tmp, config).expect("open fixture ledger");
        let mut synth = Synth::new(SynthConfig { seed, ..SynthConfig::default() });
        let mut written = 0u64;
        let mut reported = 0u64;
        while written < n {
            let want = ((n - written) as usize).min(APPEND_BATCH_MAX / 2);
            let chunk = synth.next_chunk(want);
            assert!(!chunk.is_empty(), "the generator stalled after {written} events");
            // The chunk may hold one event more than asked (a checkpoint event): keep exactly n.
            let chunk: Vec<SignedEvent> = chunk.into_iter().take((n - written) as usize).collect();
            written += chunk.len() as u64;
            for outcome in ledger.append(chunk).expect("append fixture") {
                outcome.expect("the generator produced an invalid event");
            }
            if written * 10 / n > reported {
                reported = written * 10 / n;
                eprintln!("  {written}/{n} events ({:.0} s)", started.elapsed().as_secs_f64());
            }
        }
        ledger.sync().expect("sync fixture");
        let head = ledger.head().expect("head");
        assert_eq!(head.seq, n - 1);
        head.hash
    };
    std::fs::rename(&tmp, &dir).expect("rename fixture");
    std::fs::write(&marker, format!("{n} {}\n", head.to_hex())).expect("write marker");
    let generated_in = started.elapsed();
    eprintln!("ledger bench: fixture generated in {:.1} s", generated_in.as_secs_f64());
    Fixture { dir, events: n, head, generated_in: Some(generated_in) }
}

fn reusable(dir: &Path, marker: &Path, n: u64) -> Option<ChainHash> {
    let text = std::fs::read_to_string(marker).ok()?;
    let mut parts = text.split_whitespace();
    if parts.next()?.parse::<u64>().ok()? != n {
        return None;
    }
    let hex = parts.next()?;
    let reader = LedgerReader::open(dir).ok()?;
    let (seq, hash) = reader.recorded_head().ok()??;
    if seq != n - 1 || hash.to_hex() != hex {
        return None;
    }
    let last = reader.range(n - 1, n).ok()?;
    (last.len() == 1 && last[0].hash == hash).then_some(hash)
}

/// V: signatures/s of ed25519-dalek's `verify_batch` in batches of `batch` on one core
/// (256-byte messages, distinct keys): the reference rate of every ratio. The same signatures
/// also go through `verify_many`, the one ZIP-215 rule the library uses (`schema/encoding.md`).
struct RawVerify {
    msgs: Vec<Vec<u8>>,
    sigs: Vec<ed25519_dalek::Signature>,
    vks: Vec<ed25519_dalek::VerifyingKey>,
    ids: Vec<mycnet_spores::NodeId>,
    sig_bytes: Vec<mycnet_spores::core::types::SignatureBytes>,
}

impl RawVerify {
    fn new(batch: usize) -> Self {
        let keys: Vec<NodeKey> = (0..batch as u32)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..4].copy_from_slice(&(i + 1).to_le_bytes());
                NodeKey::from_seed(seed)
            })
            .collect();
        let msgs: Vec<Vec<u8>> = (0..batch).map(|i| (0..256).map(|j| (i * 31 + j) as u8).collect()).collect();
        let sig_bytes: Vec<_> = keys.iter().zip(&msgs).map(|(k, m)| k.sign(m)).collect();
        let sigs = sig_bytes.iter().map(|s| ed25519_dalek::Signature::from_bytes(&s.0)).collect();
        let vks = keys
            .iter()
            .map(|k| ed25519_dalek::VerifyingKey::from_bytes(k.node_id().as_bytes()).expect("a key"))
            .collect();
        let ids = keys.iter().map(NodeKey::node_id).collect();
        RawVerify { msgs, sigs, vks, ids, sig_bytes }
    }

    /// The same batch through the library's rule (ZIP-215 batch, key cache as in the product).
    fn run_zip215(&self, cache: &mut VerifierCache) {
        let items: Vec<_> =
            self.ids.iter().zip(&self.msgs).zip(&self.sig_bytes).map(|((a, m), s)| (*a, m.as_slice(), *s)).collect();
        let verdicts = mycnet_spores::core::keys::verify_many(cache, &items);
        assert!(verdicts.iter().all(|v| *v), "valid batch");
    }

    /// Signatures/s of [`RawVerify::run_zip215`] over `rounds` batches.
    fn rate_zip215(&self, rounds: usize) -> f64 {
        let mut cache = VerifierCache::default();
        let t = Instant::now();
        for _ in 0..rounds {
            self.run_zip215(&mut cache);
        }
        (rounds * self.msgs.len()) as f64 / t.elapsed().as_secs_f64()
    }

    fn run(&self) {
        let refs: Vec<&[u8]> = self.msgs.iter().map(|m| m.as_slice()).collect();
        ed25519_dalek::verify_batch(&refs, &self.sigs, &self.vks).expect("valid batch");
    }

    /// Signatures/s over `rounds` batches.
    fn rate(&self, rounds: usize) -> f64 {
        let t = Instant::now();
        for _ in 0..rounds {
            self.run();
        }
        (rounds * self.msgs.len()) as f64 / t.elapsed().as_secs_f64()
    }
}

/// R, by hand: scan the `ledger` keyspace of `db`, check the key and the format tag, validate
/// the rkyv archive (`access`, bytecheck), check seq and link, and chain a blake3 hash over
/// `prev ‖ seq BE ‖ archive bytes` (the archive is the size of what the ledger hashes; the
/// ledger hashes the canonical BCS encoding, which needs a deserialisation to produce).
fn raw_scan(ks: &Keyspace) -> (u64, Duration) {
    let t = Instant::now();
    let mut buf: AlignedVec = AlignedVec::new();
    let mut prev = [0u8; 32];
    let mut chained = [0u8; 32];
    let mut expected = 0u64;
    for guard in ks.iter() {
        let (key, value) = guard.into_inner().expect("scan");
        let seq = u64::from_be_bytes(<[u8; 8]>::try_from(&key[..]).expect("8-byte key"));
        assert_eq!(seq, expected);
        let (&tag, archive) = value.split_first().expect("non-empty record");
        assert_eq!(tag, RECORD_FORMAT_V1);
        buf.clear();
        buf.extend_from_slice(archive);
        let ev = rkyv::access::<rkyv::Archived<ChainedEvent>, rancor::Error>(&buf).expect("valid archive");
        assert_eq!(ev.seq.to_native(), seq);
        assert_eq!(ev.prev_hash.0, prev);
        let mut h = blake3::Hasher::new();
        h.update(&chained);
        h.update(&seq.to_be_bytes());
        h.update(archive);
        chained = *h.finalize().as_bytes();
        prev = ev.hash.0;
        expected += 1;
    }
    std::hint::black_box(chained);
    (expected, t.elapsed())
}

/// R (exact), for reference: [`raw_scan`] plus deserialising each record and checking its
/// chain hash exactly as the ledger defines it, with the crate's public `chain_hash`.
fn raw_scan_exact(ks: &Keyspace) -> (u64, Duration) {
    let t = Instant::now();
    let mut buf: AlignedVec = AlignedVec::new();
    let mut prev = ChainHash::ZERO;
    let mut expected = 0u64;
    for guard in ks.iter() {
        let (key, value) = guard.into_inner().expect("scan");
        let seq = u64::from_be_bytes(<[u8; 8]>::try_from(&key[..]).expect("8-byte key"));
        assert_eq!(seq, expected);
        let (&tag, archive) = value.split_first().expect("non-empty record");
        assert_eq!(tag, RECORD_FORMAT_V1);
        buf.clear();
        buf.extend_from_slice(archive);
        let archived = rkyv::access::<rkyv::Archived<ChainedEvent>, rancor::Error>(&buf).expect("valid archive");
        let ev: ChainedEvent = rkyv::deserialize::<ChainedEvent, rancor::Error>(archived).expect("deserialize");
        assert_eq!(ev.seq, seq);
        assert_eq!(ev.prev_hash, prev);
        assert_eq!(chain_hash(&prev, seq, &ev.event.canonical_bytes()), ev.hash);
        prev = ev.hash;
        expected += 1;
    }
    (expected, t.elapsed())
}

/// The first events of the fixture (a multiple of [`BATCH`]), for the append benches.
fn append_pool(fx: &Fixture) -> Vec<ChainedEvent> {
    let want = (fx.events as usize).min(APPEND_POOL_MAX) / BATCH * BATCH;
    let reader = LedgerReader::open(&fx.dir).expect("open fixture");
    let mut out = Vec::with_capacity(want);
    while out.len() < want {
        let from = out.len() as u64;
        let to = (from + REPLAY_CHUNK_EVENTS as u64).min(want as u64) - 1;
        out.extend(reader.range(from, to).expect("read fixture"));
    }
    out
}

/// Raw fjall: durable batches of [`BATCH`] records, restarting on a fresh database when the
/// pool is used up (outside the timed part).
struct RawAppend<'a> {
    records: &'a [(Vec<u8>, Vec<u8>)],
    cursor: usize,
    state: Option<(Database, Keyspace, tempfile::TempDir)>,
}

impl RawAppend<'_> {
    /// Appends `batches` batches; returns the time spent in commits.
    fn run(&mut self, batches: u64) -> Duration {
        let mut spent = Duration::ZERO;
        for _ in 0..batches {
            if self.state.is_none() || self.cursor + BATCH > self.records.len() {
                self.state = None;
                let dir = scratch_dir();
                let db = Database::builder(dir.path()).open().expect("open raw db");
                let ks = db.keyspace("ledger", KeyspaceCreateOptions::default).expect("keyspace");
                self.state = Some((db, ks, dir));
                self.cursor = 0;
            }
            let Some((db, ks, _)) = &self.state else { unreachable!() };
            let part = &self.records[self.cursor..self.cursor + BATCH];
            self.cursor += BATCH;
            let t = Instant::now();
            let mut batch = db.batch().durability(Some(PersistMode::SyncData));
            for (k, v) in part {
                batch.insert(ks, k.as_slice(), v.as_slice());
            }
            batch.commit().expect("commit");
            spent += t.elapsed();
        }
        spent
    }
}

/// Ours: durable `Ledger::append` of pre-signed events in batches of [`BATCH`], restarting on
/// a fresh ledger when the pool is used up (outside the timed part).
struct OurAppend<'a> {
    events: &'a [SignedEvent],
    cursor: usize,
    state: Option<(Ledger, tempfile::TempDir)>,
}

impl OurAppend<'_> {
    fn run(&mut self, batches: u64) -> Duration {
        let mut spent = Duration::ZERO;
        for _ in 0..batches {
            if self.state.is_none() || self.cursor + BATCH > self.events.len() {
                self.state = None;
                let dir = scratch_dir();
                let ledger = Ledger::open(dir.path(), LedgerConfig::default()).expect("open ledger");
                self.state = Some((ledger, dir));
                self.cursor = 0;
            }
            let Some((ledger, _)) = &mut self.state else { unreachable!() };
            let batch = self.events[self.cursor..self.cursor + BATCH].to_vec();
            self.cursor += BATCH;
            let t = Instant::now();
            let outcome = ledger.append(batch).expect("append");
            spent += t.elapsed();
            assert!(outcome.iter().all(Result::is_ok), "an event was rejected");
        }
        spent
    }
}

/// Ours, storage path only: durable `Ledger::append_verified` of batches of [`BATCH`] whose
/// signatures were verified before the timed part. The whole pool is verified at each
/// (re)start on a fresh ledger, then the thread pool is given a moment to go idle, so the timed
/// appends do not share the cores with verification or with rayon's idle spinning.
struct OurAppendVerified<'a> {
    events: &'a [SignedEvent],
    cache: VerifierCache,
    ready: std::collections::VecDeque<VerifiedEvents>,
    state: Option<(Ledger, tempfile::TempDir)>,
}

impl OurAppendVerified<'_> {
    fn run(&mut self, batches: u64) -> Duration {
        let mut spent = Duration::ZERO;
        for _ in 0..batches {
            if self.state.is_none() || self.ready.is_empty() {
                self.state = None;
                let dir = scratch_dir();
                let ledger = Ledger::open(dir.path(), LedgerConfig::default()).expect("open ledger");
                self.state = Some((ledger, dir));
                self.ready = self
                    .events
                    .chunks_exact(BATCH)
                    .map(|c| {
                        let (verified, bad) = VerifiedEvents::verify(c.to_vec(), &mut self.cache);
                        assert!(bad.is_empty(), "a signature did not verify");
                        verified
                    })
                    .collect();
                std::thread::sleep(Duration::from_millis(50));
            }
            let Some((ledger, _)) = &mut self.state else { unreachable!() };
            let Some(verified) = self.ready.pop_front() else { unreachable!() };
            let t = Instant::now();
            let outcome = ledger.append_verified(verified).expect("append");
            spent += t.elapsed();
            assert!(outcome.iter().all(Result::is_ok), "an event was rejected");
        }
        spent
    }
}

/// Verification alone: `VerifiedEvents::verify` of batches of [`BATCH`] (all cores).
fn verify_batches(events: &[SignedEvent], cache: &mut VerifierCache, batches: u64) -> Duration {
    let mut spent = Duration::ZERO;
    let mut cursor = 0;
    for _ in 0..batches {
        if cursor + BATCH > events.len() {
            cursor = 0;
        }
        let batch = events[cursor..cursor + BATCH].to_vec();
        cursor += BATCH;
        let t = Instant::now();
        let (verified, bad) = VerifiedEvents::verify(batch, cache);
        spent += t.elapsed();
        assert!(bad.is_empty());
        std::hint::black_box(verified);
    }
    spent
}

/// Criterion group for whole-fixture passes: 10 samples of one pass each.
fn pass_group<'a>(
    crit: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = crit.benchmark_group(name);
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_nanos(1))
        .measurement_time(Duration::from_secs(1));
    g
}

fn bench_ledger(crit: &mut Criterion) {
    let n: u64 = env_or("SPORES_BENCH_EVENTS", 1_000_000);
    let seed: u64 = env_or("SPORES_BENCH_SEED", 1);
    assert!(n as usize >= 2 * BATCH, "SPORES_BENCH_EVENTS must be at least {}", 2 * BATCH);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let fx = fixture(n, seed);

    // --- 1. V and audit replay -----------------------------------------------------------
    let raw_v = RawVerify::new(256);
    let raw_v64 = RawVerify::new(64);
    let mut v_rates = Vec::new();
    let mut zip_rates = Vec::new();
    {
        let mut g = crit.benchmark_group("ledger_raw");
        g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
        g.throughput(Throughput::Elements(256));
        g.bench_function("verify_batch_256_1core", |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    raw_v.run();
                }
                let el = t.elapsed();
                v_rates.push((iters * 256) as f64 / el.as_secs_f64());
                el
            })
        });
        let mut zip_cache = VerifierCache::default();
        g.bench_function("zip215_verify_many_256_1core", |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    raw_v.run_zip215(&mut zip_cache);
                }
                let el = t.elapsed();
                zip_rates.push((iters * 256) as f64 / el.as_secs_f64());
                el
            })
        });
        g.finish();
    }
    let v_start = median(v_rates);
    let zip215_start = median(zip_rates.clone());

    let mut audit_rates = Vec::new();
    let mut trusted_rates = Vec::new();
    let mut verify_secs = Vec::new();
    let mut stats_bytes = 0u64;
    {
        let reader = LedgerReader::open(&fx.dir).expect("open fixture");
        let mut g = pass_group(crit, "ledger_replay");
        g.throughput(Throughput::Elements(n));
        g.bench_function("audit", |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let (p, stats) = reader
                        .replay(&ReplayOptions { audit: true, stop: StopAt::End }, &|_| {})
                        .expect("audit replay");
                    let el = t.elapsed();
                    assert_eq!((stats.events, stats.signatures_verified), (n, n));
                    assert_eq!(p.head().map(|h| h.hash), Some(fx.head));
                    audit_rates.push(n as f64 / el.as_secs_f64());
                    spent += el;
                }
                spent
            })
        });
        g.bench_function("trusted", |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let (p, stats) =
                        reader.replay(&ReplayOptions { audit: false, stop: StopAt::End }, &|_| {}).expect("replay");
                    let el = t.elapsed();
                    assert_eq!(stats.events, n);
                    assert_eq!(p.head().map(|h| h.hash), Some(fx.head));
                    stats_bytes = stats.bytes;
                    trusted_rates.push(n as f64 / el.as_secs_f64());
                    spent += el;
                }
                spent
            })
        });
        // --- 4a. verify of the whole fixture --------------------------------------------
        g.bench_function("verify", |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let report = reader.verify(&|_| {}).expect("verify");
                    let el = t.elapsed();
                    assert!(report.is_ok(), "fixture does not verify: {:?}", report.first_error);
                    assert_eq!(report.events_verified, n);
                    verify_secs.push(el.as_secs_f64());
                    spent += el;
                }
                spent
            })
        });
        g.finish();
    }

    // --- 2. R: raw scan + access + blake3 ------------------------------------------------
    let mut r_rates = Vec::new();
    let mut r_exact_rates = Vec::new();
    {
        let db = Database::builder(&fx.dir).open().expect("open fixture db");
        let ks = db.keyspace("ledger", KeyspaceCreateOptions::default).expect("ledger keyspace");
        let mut g = pass_group(crit, "ledger_raw_scan");
        g.throughput(Throughput::Elements(n));
        g.bench_function("scan_access_blake3", |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let (events, el) = raw_scan(&ks);
                    assert_eq!(events, n);
                    r_rates.push(n as f64 / el.as_secs_f64());
                    spent += el;
                }
                spent
            })
        });
        g.bench_function("scan_access_deserialize_chain_hash", |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let (events, el) = raw_scan_exact(&ks);
                    assert_eq!(events, n);
                    r_exact_rates.push(n as f64 / el.as_secs_f64());
                    spent += el;
                }
                spent
            })
        });
        g.finish();
    }

    // --- 4b. cold open --------------------------------------------------------------------
    let mut open_secs = Vec::new();
    let mut reader_open_secs = Vec::new();
    let mut checkpoint_seq = None;
    {
        let mut g = pass_group(crit, "ledger_open");
        g.bench_function("ledger_open", |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let ledger =
                        Ledger::open(&fx.dir, LedgerConfig { create: false, ..LedgerConfig::default() }).expect("open");
                    let el = t.elapsed();
                    assert_eq!(ledger.head().map(|h| h.hash), Some(fx.head));
                    checkpoint_seq = ledger.checkpoint_seq();
                    drop(ledger);
                    open_secs.push(el.as_secs_f64());
                    spent += el;
                }
                spent
            })
        });
        g.bench_function("reader_open", |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let reader = LedgerReader::open(&fx.dir).expect("open");
                    let el = t.elapsed();
                    drop(reader);
                    reader_open_secs.push(el.as_secs_f64());
                    spent += el;
                }
                spent
            })
        });
        g.finish();
    }

    // --- 3. F and durable append ------------------------------------------------------------
    let pool = append_pool(&fx);
    let records: Vec<(Vec<u8>, Vec<u8>)> =
        pool.iter().map(|e| (e.seq.to_be_bytes().to_vec(), encode_record(e))).collect();
    let record_bytes = records.iter().map(|(_, v)| v.len()).sum::<usize>() as f64 / records.len() as f64;
    let signed: Vec<SignedEvent> = pool.into_iter().map(|e| e.event).collect();
    let msg_bytes = signed.iter().map(|e| e.signing_message().len()).sum::<usize>() as f64 / signed.len() as f64;
    let mut f_rates = Vec::new();
    let mut append_rates = Vec::new();
    let mut append_verified_rates = Vec::new();
    let mut verify_rates = Vec::new();
    {
        let mut raw = RawAppend { records: &records, cursor: 0, state: None };
        let mut ours = OurAppend { events: &signed, cursor: 0, state: None };
        let mut ours_verified = OurAppendVerified {
            events: &signed,
            cache: VerifierCache::default(),
            ready: Default::default(),
            state: None,
        };
        let mut cache = VerifierCache::default();
        let mut g = crit.benchmark_group("ledger_append");
        g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function("raw_fjall_durable_batch_256", |b| {
            b.iter_custom(|iters| {
                let el = raw.run(iters);
                f_rates.push((iters as usize * BATCH) as f64 / el.as_secs_f64());
                el
            })
        });
        g.bench_function("ledger_append_verified_batch_256", |b| {
            b.iter_custom(|iters| {
                let el = ours_verified.run(iters);
                append_verified_rates.push((iters as usize * BATCH) as f64 / el.as_secs_f64());
                el
            })
        });
        g.bench_function("verify_batch_256_all_cores", |b| {
            b.iter_custom(|iters| {
                let el = verify_batches(&signed, &mut cache, iters);
                verify_rates.push((iters as usize * BATCH) as f64 / el.as_secs_f64());
                el
            })
        });
        g.bench_function("ledger_append_batch_256", |b| {
            b.iter_custom(|iters| {
                let el = ours.run(iters);
                append_rates.push((iters as usize * BATCH) as f64 / el.as_secs_f64());
                el
            })
        });
        g.finish();
    }

    // --- scrub: CPU of the default background rate ------------------------------------------
    // `scrub_step` pages of the default size, and of 256 (the default before session 27), over
    // the fixture (decode, link, hash, signature): seconds of CPU per event (all threads), times
    // the default 1,000 events a second, is the share of one core.
    let default_page = mycnet_spores::node::scrubber::ScrubConfig::default().page;
    let (scrub_secs_per_event, scrub_256_secs_per_event, digest_secs, registry) = {
        let ledger = Ledger::open(&fx.dir, LedgerConfig { create: false, durable: false, ..LedgerConfig::default() })
            .expect("open fixture");
        // The state digest a leader commits in a state checkpoint, over the fixture's registry.
        let state = ledger.projection().state();
        let registry = (state.nodes.len() + state.services.len()) as u64;
        let t = Instant::now();
        for _ in 0..20 {
            std::hint::black_box(ledger.projection().state_digest());
        }
        let digest_secs = t.elapsed().as_secs_f64() / 20.0;
        // The process's CPU time, not the wall clock: a page of 256 is checked in two chunks on
        // two threads at once, a page of 32 in one.
        let scrub = |page: u64| {
            let mut cursor = mycnet_spores::store::scrub::ScrubCursor::default();
            let pages = (102_400 / page).min(n / page);
            let cpu = || {
                let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
                t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
            };
            let t = cpu();
            for _ in 0..pages {
                let step = mycnet_spores::store::scrub::scrub_step(&ledger, &mut cursor, page).expect("scrub step");
                assert!(matches!(step, mycnet_spores::store::scrub::ScrubStep::Clean(p) if p == page), "{step:?}");
            }
            (cpu() - t) / (pages * page) as f64
        };
        // 256 first: the default's figure is not the one that warms the cache.
        let at_256 = scrub(256);
        (scrub(default_page), at_256, digest_secs, registry)
    };
    // Leaders attest a state every max(1024, 4 x registry) events: the digest's cost per event.
    let attest_spacing = 1024u64.max(4 * registry);
    let scrub_default = mycnet_spores::node::scrubber::ScrubConfig::default().events_per_sec as f64;

    // --- summary -----------------------------------------------------------------------------
    // V is re-measured at the end and the better figure kept: a raw limit is a best case, and
    // a concurrent load on the shared machine only ever lowers it.
    let v_end = raw_v.rate(200);
    let v = v_start.max(v_end);
    let v64 = raw_v64.rate(800);
    let zip215 = zip215_start.max(raw_v.rate_zip215(200));
    let zip215_64 = raw_v64.rate_zip215(800);
    let audit = median(audit_rates);
    let trusted = median(trusted_rates);
    let r = median(r_rates);
    let r_exact = median(r_exact_rates);
    let f = median(f_rates);
    let append = median(append_rates);
    let append_verified = median(append_verified_rates);
    let verify_256 = median(verify_rates);
    let verify = median(verify_secs);
    let open = median(open_secs);
    let reader_open = median(reader_open_secs);
    let rows: Vec<(String, f64)> = vec![
        ("fixture events N".into(), n as f64),
        ("fixture generated now (s; 0 = reused)".into(), fx.generated_in.map_or(0.0, |d| d.as_secs_f64())),
        ("mean record bytes (tag + rkyv)".into(), stats_bytes as f64 / n as f64),
        ("mean record bytes (append pool)".into(), record_bytes),
        ("mean signing message bytes".into(), msg_bytes),
        ("cores".into(), cores as f64),
        ("raw verify_batch, batch 256, start of run (sig/s)".into(), v_start),
        ("raw verify_batch, batch 256, end of run (sig/s)".into(), v_end),
        ("raw verify_batch V = max of both (sig/s, 1 core)".into(), v),
        ("raw verify_batch, batch 64 (sig/s, 1 core)".into(), v64),
        ("ZIP-215 verify_many, batch 256 (sig/s, 1 core)".into(), zip215),
        ("ZIP-215 verify_many, batch 64 (sig/s, 1 core)".into(), zip215_64),
        ("audit replay (events/s)".into(), audit),
        ("raw scan+access+blake3 R (events/s)".into(), r),
        ("raw R + deserialize + exact chain hash (ev/s)".into(), r_exact),
        ("trusted replay (events/s)".into(), trusted),
        ("raw fjall durable batch-256 F (events/s)".into(), f),
        ("Ledger::append_verified durable batch-256 (ev/s)".into(), append_verified),
        ("VerifiedEvents::verify batch-256 (events/s)".into(), verify_256),
        ("Ledger::append durable batch-256 (events/s)".into(), append),
        ("LedgerReader::verify of N events (s)".into(), verify),
        ("verify (events/s)".into(), n as f64 / verify),
        ("cold Ledger::open (ms)".into(), open * 1e3),
        ("Ledger::open tail after checkpoint (events)".into(), checkpoint_seq.map_or(n, |c| n - 1 - c) as f64),
        ("LedgerReader::open (ms)".into(), reader_open * 1e3),
        (format!("scrub step, page {default_page}, default (CPU us/event)"), scrub_secs_per_event * 1e6),
        ("scrub step, page 256 (CPU us per event)".into(), scrub_256_secs_per_event * 1e6),
        ("scrub at the default rate (% of one core)".into(), scrub_secs_per_event * scrub_default * 100.0),
        ("registry at the head (nodes + services)".into(), registry as f64),
        ("state digest of that registry (ms)".into(), digest_secs * 1e3),
        ("state digest per event at the attest spacing (ns)".into(), digest_secs / attest_spacing as f64 * 1e9),
    ];
    eprintln!("\n=== ledger summary (N = {n}, seed {seed}; medians of the samples above) ===");
    for (k, val) in &rows {
        eprintln!("{k:>48}: {val:.1}");
    }
    eprintln!(
        "audit replay / (V x {cores} cores) = {:.3} (target >= 0.8; limit {:.0}/s)",
        audit / (v * cores as f64),
        v * cores as f64
    );
    eprintln!(
        "ZIP-215 batch / V = {:.3} at 256, {:.3} at 64 (target >= 0.9: one validity rule, issue 18)",
        zip215 / v,
        zip215_64 / v64
    );
    eprintln!("trusted replay / R = {:.3} (target >= 0.7; limit {:.0}/s)", trusted / r, r);
    eprintln!("trusted replay / R-exact = {:.3} (for reference)", trusted / r_exact);
    eprintln!("Ledger::append_verified / F = {:.3} (target >= 0.7; limit {:.0}/s)", append_verified / f, f);
    eprintln!(
        "VerifiedEvents::verify / (V x {cores} cores) = {:.3}; Ledger::append (verify + append_verified) / F = {:.3}",
        verify_256 / (v * cores as f64),
        append / f
    );
    eprintln!(
        "verify of {n} events: {:.2} s; cold open: {:.1} ms (checkpoint at {:?}, then tail replay)",
        verify,
        open * 1e3,
        checkpoint_seq
    );
    eprintln!("(figures are noisy: the machine's cores and disk are shared with other work)");
    if rows.iter().any(|(_, v)| v.is_nan()) {
        eprintln!("(NaN: that bench was left out by a criterion filter, e.g. `cargo bench --bench ledger -- ledger_replay/audit`)");
    }
}

criterion_group!(benches, bench_ledger);
criterion_main!(benches);
