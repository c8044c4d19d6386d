//! Where a round of the 64-writer write path goes (not a criterion bench): the same 3-voter
//! cluster as `benches/primary.rs`, `SPORES_ROUND_CLIENTS` (default 64) writers each with one
//! pre-signed event outstanding, so with one batch in flight each Raft entry carries about one
//! event per writer and the rounds follow each other: the proposer sends a batch, every replica
//! appends and syncs it, the leader applies it once two syncs are done, answers its writers, and
//! they send their next events, which make the next batch. From the library's own spans
//! (`propose_batch`, the log store's `append` and `raft_log_sync`, the state machine's `apply`)
//! it prints, per round, the median of each step along that chain (they add up to the round),
//! when each replica appended, synced and applied, and the batch sizes.
//!
//! ```text
//! cargo bench --bench round_timeline
//! ```
//!
//! `SPORES_ROUND_EVENTS` (default 20 480) sets the events of the measured run (an equal run
//! warms the cluster first); `SPORES_ROUND_NET=quic` runs the cluster over QUIC on 127.0.0.1;
//! `SPORES_ROUND_SHOW=N` prints the spans of N rounds from the middle of the run.

// tests and benches: a panic is the failure report
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

use std::collections::BTreeMap;
use std::time::Instant;

#[path = "common/alloc.rs"]
mod alloc;
#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/timeline.rs"]
mod timeline;
use timeline::{median_us, node_of, us, Closed};

/// The spans the timeline reads: (target, name).
static SPANS: [(&str, &str); 4] = [
    ("mycnet_spores::raft::proposer", "propose_batch"),
    ("mycnet_spores::raft::log_store", "append"),
    ("mycnet_spores::raft::log_store", "raft_log_sync"),
    ("mycnet_spores::raft::state_machine", "apply"),
];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Named steps with one value per round, in the order first pushed.
#[derive(Default)]
struct Steps(Vec<(String, Vec<f64>)>);

impl Steps {
    fn push(&mut self, name: &str, v: f64) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, vs)) => vs.push(v),
            None => self.0.push((name.to_string(), vec![v])),
        }
    }

    fn print(self, title: &str) {
        eprintln!("{title}");
        for (name, v) in self.0 {
            let n = v.len();
            eprintln!("{:9.1} us  {name} ({n} rounds)", median_us(v));
        }
    }
}

fn main() {
    let timeline = timeline::install(&SPANS);
    let clients = env_usize("SPORES_ROUND_CLIENTS", 64).max(1);
    let events = env_usize("SPORES_ROUND_EVENTS", 20_480).max(clients);
    let show = env_usize("SPORES_ROUND_SHOW", 0);
    let quic = std::env::var("SPORES_ROUND_NET").is_ok_and(|n| n.eq_ignore_ascii_case("quic"));
    let net = if quic { cluster::Net::Quic } else { cluster::Net::InProc };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let systems = rt.block_on(cluster::form(dir.path(), 3, net));
    let dirs: Vec<String> =
        (0..systems.len()).map(|i| dir.path().join(format!("n{i}")).display().to_string()).collect();
    // A warm-up run, untimed, then the measured one.
    rt.block_on(cluster::write_concurrently(&systems[0], cluster::presigned(&systems[0], events), clients));
    let batch = cluster::presigned(&systems[0], events);
    timeline.clear();
    let t = Instant::now();
    rt.block_on(cluster::write_concurrently(&systems[0], batch, clients));
    let wall = t.elapsed().as_secs_f64();
    let mut spans = timeline.spans();
    spans.sort_by_key(|s| s.start);
    let first = |name: &str, node: usize, after: Instant| timeline::first(&spans, name, node, after, &dirs);
    let proposals: Vec<&Closed> = spans.iter().filter(|s| s.name == "propose_batch").collect();
    let (mut chain, mut replicas) = (Steps::default(), Steps::default());
    let mut incomplete = 0;
    // Every round but the first and last few (the run starting and draining).
    let rounds: Vec<(&Closed, &Closed)> =
        proposals.windows(2).map(|w| (w[0], w[1])).skip(5).take(proposals.len().saturating_sub(10)).collect();
    for &(p, next) in &rounds {
        let mut synced = Vec::new();
        for n in 0..dirs.len() {
            let Some(a) = first("append", n, p.start) else { continue };
            let Some(s) = timeline::sync_of(&spans, a, n, &dirs) else { continue };
            let who = if n == 0 { "leader".to_string() } else { format!("follower {n}") };
            replicas.push(&format!("{who}: append starts"), us(p.start, a.start));
            replicas.push(&format!("{who}: append ends"), us(p.start, a.end));
            replicas.push(&format!("{who}: sync starts"), us(p.start, s.start));
            replicas.push(&format!("{who}: sync ends"), us(p.start, s.end));
            synced.push((a, s));
        }
        let mut ends: Vec<Instant> = synced.iter().map(|(_, s)| s.end).collect();
        ends.sort();
        let (Some(quorum), Some((leader_append, _))) = (ends.get(1).copied(), synced.first()) else {
            incomplete += 1;
            continue;
        };
        let Some(apply) = first("apply", 0, quorum) else {
            incomplete += 1;
            continue;
        };
        chain.push("proposed -> leader's log append ends", us(p.start, leader_append.end));
        chain.push("  -> the second sync ends (quorum)", us(leader_append.end, quorum));
        chain.push("  -> the leader's apply starts", us(quorum, apply.start));
        chain.push("  -> the leader's apply ends", us(apply.start, apply.end));
        chain.push("  -> the next batch is proposed", us(apply.end, next.start));
        chain.push("round (proposed -> next proposed)", us(p.start, next.start));
        for n in 1..dirs.len() {
            if let Some(a) = first("apply", n, quorum) {
                replicas.push(&format!("follower {n}: apply starts"), us(p.start, a.start));
                replicas.push(&format!("follower {n}: apply lasts"), us(a.start, a.end));
            }
        }
    }
    let over = if quic { "over QUIC on 127.0.0.1" } else { "in process" };
    eprintln!(
        "\n=== {clients} writers, 3 voters {over}: {events} events in {wall:.3} s = {:.0} ev/s, {} batches, {} rounds timed ({incomplete} without every span) ===",
        events as f64 / wall,
        proposals.len(),
        rounds.len() - incomplete
    );
    chain.print("the chain of one round (medians; they add up to about the round):");
    replicas.print("each replica, from the batch's proposal (medians):");
    let mut sizes: BTreeMap<u64, usize> = BTreeMap::new();
    for p in &proposals {
        *sizes.entry(p.events.unwrap_or(0) / 8 * 8).or_default() += 1;
    }
    let sizes: Vec<String> = sizes.iter().map(|(b, n)| format!("{b}-{}: {n}", b + 7)).collect();
    eprintln!("events per batch: {}", sizes.join(", "));
    for &(p, next) in rounds.iter().skip(rounds.len() / 2).take(show) {
        eprintln!(
            "--- a round of {} events, the next proposed at {:.0} us",
            p.events.unwrap_or(0),
            us(p.start, next.start)
        );
        for s in spans.iter().filter(|s| s.name != "propose_batch" && s.end >= p.start && s.start <= next.start) {
            let node = node_of(s, &dirs).map_or("?".to_string(), |n| format!("n{n}"));
            eprintln!("  {:>14} {node}  {:8.0} .. {:8.0} us", s.name, us(p.start, s.start), us(p.start, s.end));
        }
    }
    for s in &systems {
        let _ = rt.block_on(s.shutdown());
    }
}
