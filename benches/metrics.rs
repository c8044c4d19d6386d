//! What recording metrics costs the write path (issue 22), without a cluster's noise: the
//! ledger's append of pre-verified batches with `LedgerConfig::metrics` on and off, alternated,
//! and the cost of one observation.
//!
//! Run: `cargo bench --bench metrics`. The appends are not synced (`durable: false`): without
//! the fsync the write path is at its cheapest, so the share of the recording is at its
//! largest (an upper bound for the durable path). Prints events/s on and off per round, the
//! ratio of the medians (target ≥ 0.97), and ns per observation. The cluster-level A/B is
//! `SPORES_BENCH_METRICS=off SPORES_BENCH_NET=quic cargo bench --bench primary` against the same
//! without the variable.

// tests and benches: a panic is the failure report
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use mycnet_spores::core::keys::VerifierCache;
use mycnet_spores::store::metrics::WriteMetrics;
use mycnet_spores::store::synth::{Synth, SynthConfig};
use mycnet_spores::store::verified::VerifiedEvents;
use mycnet_spores::{Ledger, LedgerConfig, SignedEvent};

const BATCH: usize = 64;
const EVENTS: usize = 32_768;
const ROUNDS: usize = 6;

fn events() -> Vec<SignedEvent> {
    let mut synth = Synth::new(SynthConfig { seed: 22, ..SynthConfig::default() });
    let mut out = Vec::with_capacity(EVENTS);
    while out.len() < EVENTS {
        out.extend(synth.next_chunk((EVENTS - out.len()).min(2048)));
    }
    out.truncate(EVENTS);
    out
}

/// Events/s of appending `events` into a new ledger with metrics `on`.
fn append_rate(events: &[SignedEvent], on: bool) -> f64 {
    let mut cache = VerifierCache::default();
    let batches: Vec<VerifiedEvents> = events
        .chunks(BATCH)
        .map(|c| {
            let (v, bad) = VerifiedEvents::verify(c.to_vec(), &mut cache);
            assert!(bad.is_empty());
            v
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LedgerConfig { durable: false, metrics: on, ..LedgerConfig::default() };
    let mut ledger = Ledger::open(dir.path(), cfg).expect("open");
    let t = Instant::now();
    for b in batches {
        ledger.append_verified(b).expect("append");
    }
    events.len() as f64 / t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let m = WriteMetrics::new(true);
    c.bench_function("write_metrics_observe_one_batch", |b| {
        b.iter(|| m.ledger_write(std::hint::black_box(Duration::from_micros(120)), 64))
    });
    let events = events();
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Alternate which goes first, so a machine getting busier or quieter favours neither.
        let first_on = round % 2 == 0;
        let a = append_rate(&events, first_on);
        let b = append_rate(&events, !first_on);
        let (r_on, r_off) = if first_on { (a, b) } else { (b, a) };
        println!("round {round}: metrics on {r_on:.0} events/s, off {r_off:.0} events/s");
        on.push(r_on);
        off.push(r_off);
    }
    let t = Instant::now();
    for _ in 0..1_000_000 {
        m.raft_log_sync(std::hint::black_box(Duration::from_micros(80)));
    }
    let per_observation = t.elapsed().as_nanos() as f64 / 1e6;
    println!("\n=== metrics summary ===");
    println!(
        "ledger append (not synced, batches of {BATCH}), median events/s: on {:.0}, off {:.0}",
        median(on.clone()),
        median(off.clone())
    );
    println!("on / off = {:.3} (target >= 0.97)", median(on) / median(off));
    println!("one histogram observation: {per_observation:.1} ns");
}

criterion_group!(benches, bench);
criterion_main!(benches);
