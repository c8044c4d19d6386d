//! Thousands of nodes on in-memory stores (opt-in): the simulation `convergence` runs on 30
//! fjall ledgers, run on one `MemChain` per node, for every N of `SPORES_SIM_NODES`
//! (default `1000,3000,10000`), printing per N the rounds after the last write against
//! 2⌈log₂ N⌉ + 2, the messages lost, the bytes each node sent (mean and max), wall time and
//! peak RSS. Run it in release:
//!
//! ```text
//! SPORES_SIM_NODES=1000,3000,10000 cargo test --release -p mycnet-spores --test it \
//!     latent_sim_scale -- --ignored --nocapture
//! ```
//!
//! `SPORES_SIM_EVENTS` sets the history written to the voters (default 1200, as in the 30-node
//! test), `SPORES_SIM_SEED` the rng seed (default `0x9055`, the 30-node test's; each N runs on
//! the seed xor N).

use std::time::Instant;

use mycnet_spores::store::chain_store::ChainStore;
use mycnet_spores::store::mem::{MemChain, MemShared};

use super::sim::{self, SimParams};
use crate::fixture::synth_events;

/// The node counts to run, from `SPORES_SIM_NODES`.
fn node_counts() -> Vec<usize> {
    let raw = std::env::var("SPORES_SIM_NODES").unwrap_or_else(|_| "1000,3000,10000".into());
    raw.split(',')
        .map(|n| n.trim().parse().unwrap_or_else(|_| panic!("SPORES_SIM_NODES: {n:?} is not a node count")))
        .collect()
}

/// Resets this process's peak resident set (`VmHWM`), so each run reports its own peak.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// This process's peak resident set in MiB (`VmHWM`), if the platform says.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[test]
#[ignore = "minutes in release: SPORES_SIM_NODES=1000,3000,10000 cargo test --release --test it latent_sim_scale -- --ignored --nocapture"]
fn latent_sim_scale() {
    let events_len: usize = std::env::var("SPORES_SIM_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1200);
    let seed: u64 = std::env::var("SPORES_SIM_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x9055);
    let (events, _) = synth_events(0x30, events_len);
    println!(
        "latent gossip simulation: {events_len} events written to 3 voters in 3 rounds, fan-out 2, 5 % loss, \
         delay 0-3 steps, one MemChain per node, seed {seed:#x} ^ N"
    );
    println!(
        "{:>6} | {:>6} | {:>5} | {:>9} | {:>8} | {:>10} | {:>10} | {:>8} | {:>9} | {:>10}",
        "N", "rounds", "bound", "lost", "of sent", "bytes mean", "bytes max", "wall s", "peak MiB", "sig checks"
    );
    let mut failures = Vec::new();
    for n in node_counts() {
        let rss_reset = reset_peak_rss();
        let started = Instant::now();
        let shared = MemShared::new();
        let mut stores: Vec<MemChain> = (0..n).map(|_| MemChain::new(shared.clone())).collect();
        let params = SimParams::lossy(n, seed ^ n as u64, true);
        let report = sim::run(&mut stores, &events, &params);
        let wall = started.elapsed();
        let peak = peak_rss_mib().filter(|_| rss_reset);
        let mean = report.bytes_sent.iter().sum::<u64>() as f64 / n as f64;
        let max = report.bytes_sent.iter().copied().max().unwrap_or(0);
        let rounds = report.converged_after.map_or_else(|| format!(">{}", sim::rounds_bound(n) + 4), |r| r.to_string());
        println!(
            "{n:>6} | {rounds:>6} | {:>5} | {:>9} | {:>7.2}% | {:>10.0} | {max:>10} | {:>8.1} | {:>9} | {:>10}",
            sim::rounds_bound(n),
            report.lost,
            100.0 * report.lost as f64 / report.messages.max(1) as f64,
            mean,
            wall.as_secs_f64(),
            peak.map_or_else(|| "?".into(), |p| format!("{p:.0}")),
            shared.signatures_verified(),
        );
        let want = ChainStore::projection(&stores[0]).state();
        if stores.iter().any(|s| ChainStore::projection(s).state() != want) {
            failures.push(format!("N = {n}: the registries differ"));
        }
        match report.converged_after {
            Some(r) if r <= sim::rounds_bound(n) => {}
            other => {
                failures.push(format!("N = {n}: converged after {other:?} rounds, bound {}", sim::rounds_bound(n)))
            }
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}
