//! Shared by the gossip and seed benches: synthetic ledgers generated once under
//! `target/bench-fixtures/` and reused by later runs once marked complete.

use std::path::PathBuf;

use mycnet_spores::store::synth::Synth;
use mycnet_spores::{Ledger, LedgerConfig};

/// `target/bench-fixtures/` (also where benches make their scratch dirs: same disk).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("bench-fixtures")
}

/// The ledger `target/bench-fixtures/<name>` of `n` events drawn from `synth`, written through
/// a `Ledger` opened with `cfg` unless an earlier run completed it. Returns its path and
/// whether it was generated now (when reused, `synth` has produced nothing).
pub fn synth_ledger(name: &str, n: u64, synth: &mut Synth, cfg: LedgerConfig) -> (PathBuf, bool) {
    let root = root();
    let dir = root.join(name);
    let done = root.join(format!("{name}.complete"));
    if done.exists() {
        return (dir, false);
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("generating a {n}-event fixture in {} (once)…", dir.display());
    let mut ledger = Ledger::open(&dir, cfg).expect("create fixture ledger");
    let mut written = 0u64;
    while written < n {
        let chunk = synth.next_chunk(((n - written) as usize).min(2048));
        written += chunk.len() as u64;
        for o in ledger.append(chunk).expect("append") {
            o.expect("synthetic events are valid");
        }
    }
    ledger.sync().expect("sync");
    std::fs::write(&done, b"complete\n").expect("marker");
    (dir, true)
}
