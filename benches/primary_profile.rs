//! Profiling harness for the 64-client write path (not a criterion bench): forms the same
//! 3-voter in-process cluster as `benches/primary.rs`, writes `SPORES_PROFILE_EVENTS`
//! (default 20 480) pre-signed events from `SPORES_PROFILE_CLIENTS` (default 64) concurrent
//! clients, and reports wall time, the rate, and the CPU the process spent per committed
//! event, split by thread kind (read from `/proc/self/task/*/stat`). CPU per event is much
//! steadier than the rate on a shared VM: use it to compare two builds. Each round also says
//! how many entries the followers' applies trailed the leader's by when the last writer was
//! answered, and the rate with the time they then took to catch up: a build that defers the
//! followers' work looks faster at the leader only (their time and CPU count in the round).
//!
//! ```text
//! cargo bench --bench primary_profile
//! ```
//!
//! `SPORES_PROFILE_ROUNDS` (default 3) repeats the write run on the same cluster;
//! `SPORES_PROFILE_NODES` (default 3) sets the number of voters (1: the leader's own cost);
//! `SPORES_PROFILE_NET=quic` runs the cluster over QUIC on 127.0.0.1 instead of in process;
//! `SPORES_PROFILE_SINGLE=N` makes N writes one after another (one client) after each round,
//! as the `primary` bench's 1-client figure does between its two 64-client figures.
//! Each writer has one event outstanding, so the clients bound the events per Raft entry:
//! sweeping `SPORES_PROFILE_CLIENTS` shows how much of the cost is per entry rather than per
//! event.

// tests and benches: a panic is the failure report
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

use std::time::Instant;

#[path = "common/alloc.rs"]
mod alloc;
#[path = "common/cluster.rs"]
mod cluster;
use cluster::Net;

fn main() {
    let clients: usize = std::env::var("SPORES_PROFILE_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(64).max(1);
    let total: usize = (std::env::var("SPORES_PROFILE_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_480)
        / clients
        * clients)
        .max(clients);
    let single: usize = std::env::var("SPORES_PROFILE_SINGLE").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let rounds: usize = std::env::var("SPORES_PROFILE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    // Named, so their CPU is told apart from tokio's (unnamed threads inherit their creator's name).
    let _ = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("rayon-{i}")).build_global();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes: u8 = std::env::var("SPORES_PROFILE_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let net = match std::env::var("SPORES_PROFILE_NET") {
        Ok(v) if v.eq_ignore_ascii_case("quic") => Net::Quic,
        _ => Net::InProc,
    };
    let systems = rt.block_on(cluster::form(dir.path(), nodes, net));
    let mut entries_before = systems[0].status().expect("status").last_applied.unwrap_or(0);
    for round in 0..rounds {
        let events = cluster::presigned(&systems[0], total);
        let v_before = cluster::raw_verify_batch_rate(0.3);
        let before = cluster::thread_cpu();
        let t = Instant::now();
        rt.block_on(cluster::write_concurrently(&systems[0], events, clients));
        let wall = t.elapsed().as_secs_f64();
        // The writers' node should lead (a forwarded write costs a hop), and the events per
        // Raft entry say how much of the cost is per entry.
        let status = systems[0].status().expect("status");
        // How far the followers' applies trail the leader's as the round ends.
        let lead = status.last_applied.unwrap_or(0);
        let lag: Vec<u64> = systems[1..]
            .iter()
            .map(|s| lead.saturating_sub(s.status().expect("status").last_applied.unwrap_or(0)))
            .collect();
        // Until every follower applied all of it (its time and CPU count in the round's whole
        // rate and CPU below: a follower that trails has work left).
        // Bounded: a follower that never catches up is reported, not waited for forever.
        let t_catch = Instant::now();
        while systems[1..].iter().any(|s| s.status().expect("status").last_applied.unwrap_or(0) < lead) {
            if t_catch.elapsed() > std::time::Duration::from_secs(60) {
                eprintln!("round {round}: a follower did not catch up within 60 s");
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        let catch_up = t_catch.elapsed().as_secs_f64();
        eprintln!(
            "round {round}: node 0 is {}; {} Raft entries, {:.1} events per entry",
            status.raft_state,
            lead - entries_before,
            total as f64 / (lead - entries_before).max(1) as f64
        );
        entries_before = lead;
        let by_kind = cluster::cpu_by_kind(&before, &cluster::thread_cpu());
        let cpu: f64 = by_kind.values().sum();
        let v = (v_before + cluster::raw_verify_batch_rate(0.3)) / 2.0;
        eprintln!(
            "round {round}: {total} events in {wall:.3} s = {:.0} ev/s = {:.3} of 2V/3 (V {v:.0}/s); CPU {:.0} % of one core, {:.1} us per event = {:.2} / V",
            total as f64 / wall,
            total as f64 / wall / (2.0 * v / 3.0),
            100.0 * cpu / (wall + catch_up),
            1e6 * cpu / total as f64,
            cpu / total as f64 * v
        );
        for (k, v) in &by_kind {
            eprintln!("    {k:>34}: {:6.1} us/event", 1e6 * v / total as f64);
        }
        eprintln!(
            "round {round}: followers' applies trailed by {lag:?} entries at the end; all caught up {:.1} ms later: {:.0} ev/s = {:.3} of 2V/3 applied everywhere",
            catch_up * 1e3,
            total as f64 / (wall + catch_up),
            total as f64 / (wall + catch_up) / (2.0 * v / 3.0)
        );
        // After the round's CPU is read: the single writes are not part of it.
        if single > 0 {
            let t = Instant::now();
            for _ in 0..single {
                rt.block_on(systems[0].register_service("lat", vec![], vec![], cluster::metadata())).expect("write");
            }
            eprintln!("round {round}: then {single} writes by one client in {:.3} s", t.elapsed().as_secs_f64());
            entries_before = systems[0].status().expect("status").last_applied.unwrap_or(0);
        }
    }
    // A whole stop (tasks, endpoint, Raft, the ledger closed): nothing of this cluster runs on
    // while the next is measured.
    for s in &systems {
        let _ = rt.block_on(s.shutdown());
    }
}
