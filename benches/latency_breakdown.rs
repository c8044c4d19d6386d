//! Where one write's commit latency goes (not a criterion bench): the same 3-voter in-process
//! cluster as `benches/primary.rs`, one client writing one event at a time, and for each write
//! the time between the spans the library already emits — `submit`, `propose_batch`, the Raft
//! log store's `append` and `raft_log_sync` on every node, the state machine's `apply` —
//! split into the stages of the commit path, each marked as our code, openraft's or an fsync.
//! Prints the median of every stage. The harness records spans only (a tracing layer on
//! these five span names), so what it measures is the product's own path.
//!
//! ```text
//! cargo bench --bench latency_breakdown
//! ```
//!
//! `SPORES_BREAKDOWN_WRITES` (default 500) sets the number of timed writes;
//! `SPORES_BREAKDOWN_CALLER=task` writes from a task on the runtime instead of from
//! `block_on` on the calling thread (the default, as in `benches/primary.rs`);
//! `SPORES_BREAKDOWN_NET=quic` runs the cluster over QUIC on 127.0.0.1 instead of the
//! in-process transport (the replication stages then include our QUIC transport's round
//! trip on the follower's append stream, which is ours, not openraft's);
//! `SPORES_BREAKDOWN_BURST=N` first commits N events
//! from 64 writers (as `benches/primary.rs` does before its 1-client figure) and
//! `SPORES_BREAKDOWN_SETTLE_MS` waits after it; `SPORES_BREAKDOWN_GAP_MS=N` sleeps N ms before
//! each timed write (a sporadic writer's write, after the node's threads went idle);
//! `SPORES_BREAKDOWN_RESTART=1` (in process) shuts every node down and reopens its data dir
//! before the timed writes, which then go to whichever node leads. From the leader's append
//! on, the leader's own sync and the replication to a follower run side by side (openraft
//! 0.10; 0.9 ran the leader's sync first): the harness prints both branches, how long the
//! two fsyncs overlap, and the owners' time along the critical path (the branch that ended
//! last). Stages 5 and 9 (the replication, openraft's by owner) are also taken apart at the
//! transport's edges, from four empty spans of `net::raft_rpc` (a request handed to the
//! transport, taken by the follower's openraft, its answer handed back, taken by the leader's
//! openraft): over QUIC the parts between are our frames and tasks and quinn's endpoints, in
//! process a channel. Its closing lines set the
//! critical path's stages that are not ours (openraft's hand-offs and the fsync) against the
//! issue's 1-client budget, 2 × (fdatasync + sign + verify), all measured in the same run, give
//! the raw quorum sync of this disk and the path's own disk window (the first sync's start to
//! the second sync's end), and set what is outside the store and in series on every write (the
//! signature, openraft's two serial stages, that window) against the target, with what it
//! leaves for our stages. It also prints the whole write's p90 / p99 / max, the stages the
//! slowest writes lost time in, and the process's CPU per write (every thread, then by kind of
//! thread).

// tests and benches: a panic is the failure report
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/alloc.rs"]
mod alloc;
#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/timeline.rs"]
mod timeline;
use timeline::{first, median_us, sync_of, Closed};

/// The spans the breakdown reads: (target, name).
static SPANS: [(&str, &str); 9] = [
    ("mycnet_spores::node::writes", "submit"),
    ("mycnet_spores::raft::proposer", "propose_batch"),
    ("mycnet_spores::raft::log_store", "append"),
    ("mycnet_spores::raft::log_store", "raft_log_sync"),
    ("mycnet_spores::raft::state_machine", "apply"),
    // Instants of the replication (empty spans): a request handed from openraft to the
    // transport, taken by openraft on the follower, its answer leaving the follower's openraft
    // and taken by the leader's.
    ("mycnet_spores::net::raft_rpc", "append_handed"),
    ("mycnet_spores::net::raft_rpc", "append_taken"),
    ("mycnet_spores::net::raft_rpc", "append_answered"),
    ("mycnet_spores::net::raft_rpc", "append_answer_taken"),
];

/// The replication's stages 5 and 9 taken apart at the transport's edges, for the follower
/// that completed the quorum: openraft's part on each side and the transport's between.
const SPLIT: [(&str, &str); 6] = [
    ("openraft", "5a leader: appended -> request handed to the transport (replication task, log read)"),
    ("transport", "5b request in the transport (over QUIC: our frames and tasks, quinn's endpoints)"),
    ("openraft", "5c follower: request taken -> its append (stream task, core)"),
    ("openraft", "9a follower: synced -> answer handed to the transport (flush report, core)"),
    ("transport", "9b answer in the transport"),
    ("openraft", "9c leader: answer taken -> apply (replication task, core, commit, state machine)"),
];

/// Whose time a stage is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    Ours,
    Openraft,
    Fsync,
}

/// The stages of one write. The leader's sync (stages 3–4) and the replication to a follower
/// (5–8) run side by side from the leader's append on (openraft 0.10 replicates without
/// waiting for the leader's own flush); the commit waits for the second of the three syncs to
/// end (a quorum of three voters).
const STAGES: [(&str, Owner); 12] = [
    ("submit -> batch proposed (queue, proposer task)", Owner::Ours),
    ("proposed -> leader log append (openraft core)", Owner::Openraft),
    ("leader log append (encode, fjall write, pre-verify spawn)", Owner::Ours),
    ("  leader: appended -> its sync starts (flusher wake)", Owner::Ours),
    ("  leader: fsync", Owner::Fsync),
    ("  follower: leader appended -> follower append (core, replication, transport)", Owner::Openraft),
    ("  follower: log append", Owner::Ours),
    ("  follower: appended -> its sync starts (flusher wake)", Owner::Ours),
    ("  follower: fsync", Owner::Fsync),
    ("quorum synced -> leader apply (responses, commit)", Owner::Openraft),
    ("leader apply (verdicts, chain, projection, ledger write)", Owner::Ours),
    ("applied -> submit returns (client_write returns, writer wakes)", Owner::Ours),
];
/// The leader's branch and the follower's: indexes into [`STAGES`].
const LEADER_BRANCH: std::ops::Range<usize> = 3..5;
const FOLLOWER_BRANCH: std::ops::Range<usize> = 5..9;

/// One write, taken apart: the stage durations (µs), how long the leader's and the follower's
/// fsyncs ran at the same time (µs), and whether the leader's branch ended last (then it is on
/// the critical path).
struct Write {
    stages: [f64; 12],
    fsync_overlap: f64,
    /// From the first sync's start to the second sync's end (µs): the disk's time on the path.
    disk_window: f64,
    leader_last: bool,
    /// Stages 5 and 9 taken apart ([`SPLIT`]), when every instant of them was seen.
    split: Option<[f64; 6]>,
}

/// CPU time this process has used (every thread, user and system), from `/proc/self/stat`
/// (in clock ticks of 10 ms); `None` where it cannot be read.
fn process_cpu() -> Option<Duration> {
    cluster::stat_cpu(&std::fs::read_to_string("/proc/self/stat").ok()?).map(|(_, cpu)| cpu)
}

/// Stages 5 and 9 of one write, taken apart at the transport's edges for the follower `id`
/// (its id's short form): from the leader's append's end to the follower's append's start, and
/// from the follower's sync's end to the leader's apply's start.
fn split(
    spans: &[Closed],
    id: &str,
    appended: Instant,
    f_append: Instant,
    f_synced: Instant,
    apply: Instant,
) -> Option<[f64; 6]> {
    let us = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e6;
    let handed = timeline::first_for(spans, "append_handed", id, appended, true)?;
    let taken = timeline::first_for(spans, "append_taken", id, handed.start, true)?;
    let answered = timeline::first_for(spans, "append_answered", id, f_synced, false)?;
    let answer_taken = timeline::first_for(spans, "append_answer_taken", id, answered.start, false)?;
    (taken.start <= f_append && answer_taken.start <= apply).then(|| {
        [
            us(appended, handed.start),
            us(handed.start, taken.start),
            us(taken.start, f_append),
            us(f_synced, answered.start),
            us(answered.start, answer_taken.start),
            us(answer_taken.start, apply),
        ]
    })
}

/// One write's stages from its spans; `None` if one is missing. `ids` are the nodes' ids
/// (short form), in the order of `dirs`.
fn stages(spans: &[Closed], dirs: &[String], ids: &[String]) -> Option<Write> {
    let us = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e6;
    let submit = spans.iter().find(|s| s.name == "submit")?;
    let propose = spans.iter().find(|s| s.name == "propose_batch" && s.start >= submit.start)?;
    // Each node's append of this write and the sync that makes it durable.
    let synced: Vec<(&Closed, &Closed)> = (0..dirs.len())
        .map(|n| {
            let a = first(spans, "append", n, propose.start, dirs)?;
            let s = sync_of(spans, a, n, dirs)?;
            Some((a, s))
        })
        .collect::<Option<_>>()?;
    let (leader_append, leader_sync) = synced[0];
    // The follower whose sync ends first is the one that completes a quorum with the leader.
    let (follower, (f_append, f_sync)) = synced.iter().copied().enumerate().skip(1).min_by_key(|(_, (_, s))| s.end)?;
    // The commit needs two of the three syncs: the second to end.
    let mut ends: Vec<Instant> = synced.iter().map(|(_, s)| s.end).collect();
    ends.sort();
    let quorum = ends[1];
    let first_sync = synced.iter().map(|(_, s)| s.start).min()?;
    let apply = first(spans, "apply", 0, quorum, dirs)?;
    let overlap_start = leader_sync.start.max(f_sync.start);
    let overlap_end = leader_sync.end.min(f_sync.end);
    Some(Write {
        stages: [
            us(submit.start, propose.start),
            us(propose.start, leader_append.start),
            us(leader_append.start, leader_append.end),
            us(leader_append.end, leader_sync.start),
            us(leader_sync.start, leader_sync.end),
            us(leader_append.end, f_append.start),
            us(f_append.start, f_append.end),
            us(f_append.end, f_sync.start),
            us(f_sync.start, f_sync.end),
            us(quorum, apply.start),
            us(apply.start, apply.end),
            us(apply.end, submit.end),
        ],
        fsync_overlap: us(overlap_start, overlap_end),
        disk_window: us(first_sync, quorum),
        leader_last: leader_sync.end >= f_sync.end,
        split: ids
            .get(follower)
            .and_then(|id| split(spans, id, leader_append.end, f_append.start, f_sync.end, apply.start)),
    })
}

fn main() {
    let writes: usize =
        std::env::var("SPORES_BREAKDOWN_WRITES").ok().and_then(|v| v.parse().ok()).unwrap_or(500).max(1);
    let timeline = timeline::install(&SPANS);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let quic = std::env::var("SPORES_BREAKDOWN_NET").is_ok_and(|n| n.eq_ignore_ascii_case("quic"));
    let net = if quic { cluster::Net::Quic } else { cluster::Net::InProc };
    let mut systems = rt.block_on(cluster::form(dir.path(), 3, net));
    let mut dirs: Vec<String> =
        (0..systems.len()).map(|i| dir.path().join(format!("n{i}")).display().to_string()).collect();
    // The writer runs where `block_on` runs it (the calling thread, as in `benches/primary.rs`
    // and under `#[tokio::main]`), or with SPORES_BREAKDOWN_CALLER=task in a task on the
    // runtime's workers (the hand-offs to and from the proposer then stay on them).
    let in_task = std::env::var("SPORES_BREAKDOWN_CALLER").is_ok_and(|c| c.eq_ignore_ascii_case("task"));
    let write = |s: &Arc<mycnet_spores::SporeSystem>| {
        if in_task {
            let s = s.clone();
            let task = rt
                .spawn(async move { s.register_service("lat", vec![], vec![], cluster::metadata()).await.map(|_| ()) });
            rt.block_on(task).expect("writer task")
        } else {
            rt.block_on(s.register_service("lat", vec![], vec![], cluster::metadata())).map(|_| ())
        }
    };
    // SPORES_BREAKDOWN_BURST=N first commits N events from 64 concurrent writers (what
    // `benches/primary.rs` does right before its 1-client figure), untimed.
    let burst: usize = std::env::var("SPORES_BREAKDOWN_BURST").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if burst > 0 {
        let events = cluster::presigned(&systems[0], burst);
        rt.block_on(cluster::write_concurrently(&systems[0], events, 64));
        let settle: u64 = std::env::var("SPORES_BREAKDOWN_SETTLE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        std::thread::sleep(Duration::from_millis(settle));
    }
    // Warm up (caches, the first entries of the term), untimed.
    for _ in 0..100 {
        write(&systems[0]).expect("warm-up write");
    }
    // SPORES_BREAKDOWN_RESTART=1 (in process only): every node shuts down and reopens its data
    // dir before the timed writes, which then go to whichever node leads: the path of a
    // network that restarted (fjall appends to a recovered journal; a fresh one is sparse).
    let restarted = !quic && std::env::var("SPORES_BREAKDOWN_RESTART").is_ok_and(|v| v == "1");
    if restarted {
        for s in &systems {
            rt.block_on(s.shutdown()).expect("shutdown");
        }
        drop(std::mem::take(&mut systems));
        systems = rt.block_on(cluster::reopen_inproc(dir.path(), 3));
        let deadline = Instant::now() + Duration::from_secs(30);
        let leader = loop {
            let lead = systems.iter().position(|s| s.status().is_ok_and(|st| st.raft_state == "Leader"));
            if let Some(i) = lead.filter(|&i| write(&systems[i]).is_ok()) {
                break i;
            }
            assert!(Instant::now() < deadline, "no leader committed within 30 s of the restart");
            std::thread::sleep(Duration::from_millis(50));
        };
        systems.rotate_left(leader);
        dirs.rotate_left(leader);
        for _ in 0..100 {
            write(&systems[0]).expect("warm-up write after the restart");
        }
    }

    let ids: Vec<String> = systems.iter().map(|s| s.node_id().expect("node id").short()).collect();
    let mut splits: Vec<[f64; 6]> = Vec::new();
    // Per write, the transport's time along the critical path (inside openraft's stages 5 and
    // 9 above), when the split was seen.
    let mut critical_transport: Vec<f64> = Vec::new();
    let mut per_stage: Vec<Vec<f64>> = vec![Vec::with_capacity(writes); STAGES.len()];
    let mut totals = Vec::with_capacity(writes);
    let (mut overlaps, mut follower_fsyncs, mut leader_last) = (Vec::new(), Vec::new(), 0usize);
    let mut disk_windows = Vec::new();
    // Per write, the time of each owner along the critical path (the branch that ended last).
    let mut critical: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut incomplete = 0;
    // Each complete write's total and stages, to say where the slowest ones lost their time.
    let mut slow_candidates: Vec<(f64, [f64; 12])> = Vec::new();
    // SPORES_BREAKDOWN_GAP_MS=N sleeps N ms before each timed write: a sporadic writer's
    // write, after the node's threads went idle.
    let gap: u64 = std::env::var("SPORES_BREAKDOWN_GAP_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let cpu_before = process_cpu();
    let threads_before = cluster::thread_cpu();
    for _ in 0..writes {
        std::thread::sleep(Duration::from_millis(gap));
        timeline.clear();
        // Signing included, as in the 1-client figure of `benches/primary.rs`.
        let t = Instant::now();
        write(&systems[0]).expect("write");
        totals.push(t.elapsed().as_secs_f64() * 1e6);
        let spans = timeline.spans();
        let Some(w) = stages(&spans, &dirs, &ids) else {
            incomplete += 1;
            continue;
        };
        w.stages.iter().zip(per_stage.iter_mut()).for_each(|(d, v)| v.push(*d));
        slow_candidates.push((*totals.last().unwrap_or(&0.0), w.stages));
        overlaps.push(w.fsync_overlap);
        disk_windows.push(w.disk_window);
        follower_fsyncs.push(w.stages[8]);
        leader_last += usize::from(w.leader_last);
        let skipped = if w.leader_last { FOLLOWER_BRANCH } else { LEADER_BRANCH };
        let mut sums = [0.0f64; 3];
        for (i, ((_, owner), d)) in STAGES.iter().zip(w.stages).enumerate() {
            if !skipped.contains(&i) {
                sums[*owner as usize] += d;
            }
        }
        sums.iter().zip(critical.iter_mut()).for_each(|(d, v)| v.push(*d));
        if let Some(sp) = w.split {
            splits.push(sp);
            critical_transport.push(sp[4] + if w.leader_last { 0.0 } else { sp[1] });
        }
    }
    // Every thread's CPU over the timed writes (three voters and this driver, whose span
    // bookkeeping is the same in every build), per write.
    let cpu_per_write =
        process_cpu().zip(cpu_before).map(|(a, b)| a.saturating_sub(b).as_secs_f64() * 1e6 / writes as f64);
    let by_kind = cluster::cpu_by_kind(&threads_before, &cluster::thread_cpu());

    let over =
        if quic { "over QUIC on 127.0.0.1 (the replication stages include its round trip)" } else { "in process" };
    let from = format!(
        "{}{}",
        if in_task { "a task on the runtime" } else { "block_on" },
        if restarted { ", after every node restarted" } else { "" }
    );
    let complete = writes - incomplete;
    eprintln!("\n=== one write's commit path, 3 voters {over}, writer in {from}, {writes} writes ({incomplete} without every span, left out) ===");
    for ((name, owner), v) in STAGES.iter().zip(per_stage.iter().cloned()) {
        let who = match owner {
            Owner::Ours => "ours",
            Owner::Openraft => "openraft",
            Owner::Fsync => "fsync",
        };
        eprintln!("{:8.1} us  {who:>8}  {name}", median_us(v));
    }
    eprintln!(
        "stages 5 and 9 at the transport's edges, for the follower that completed the quorum ({} of {complete} writes):",
        splits.len()
    );
    for (i, (who, name)) in SPLIT.iter().enumerate() {
        eprintln!("{:8.1} us  {who:>9}    {name}", median_us(splits.iter().map(|s| s[i]).collect()));
    }
    eprintln!(
        "the leader's and the follower's fsyncs overlap by {:.0} us (median) of the follower's {:.0} us; the leader's sync ended last in {leader_last} of {complete} writes",
        median_us(overlaps),
        median_us(follower_fsyncs),
    );
    let medians: Vec<f64> = per_stage.iter().map(|v| median_us(v.clone())).collect();
    let mut sorted = totals.clone();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted.get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1))).copied();
    eprintln!(
        "whole write: p90 {:.0} us, p99 {:.0} us, max {:.0} us",
        at(0.9).unwrap_or(f64::NAN),
        at(0.99).unwrap_or(f64::NAN),
        at(1.0).unwrap_or(f64::NAN)
    );
    if let Some(cpu) = cpu_per_write {
        eprintln!("CPU per write, every thread of the process (3 voters and this driver): {cpu:.0} us");
        // By kind of thread (read per thread, at the clock's 10 ms tick: a rough split). On two
        // cores, a write whose CPU is twice its latency kept both busy throughout.
        let split: Vec<String> = by_kind
            .iter()
            .filter(|(_, s)| **s > 0.0)
            .map(|(k, s)| format!("{k} {:.0} us", s * 1e6 / writes as f64))
            .collect();
        eprintln!("  by thread: {}", split.join("; "));
    }
    // The slowest 5 % of complete writes: which stage ran furthest over its median.
    slow_candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut blamed = vec![0usize; STAGES.len()];
    for (_, st) in slow_candidates.iter().take(slow_candidates.len().div_ceil(20)) {
        let worst = (0..STAGES.len()).max_by(|&a, &b| (st[a] - medians[a]).total_cmp(&(st[b] - medians[b])));
        if let Some(i) = worst {
            blamed[i] += 1;
        }
    }
    let blame: Vec<String> =
        blamed.iter().enumerate().filter(|(_, n)| **n > 0).map(|(i, n)| format!("{} x {n}", STAGES[i].0)).collect();
    eprintln!("the slowest 5 % of complete writes lost most in: {}", blame.join("; "));
    let slow: Vec<&[f64; 12]> =
        slow_candidates.iter().take(slow_candidates.len().div_ceil(10)).map(|(_, s)| s).collect();
    for (i, (name, _)) in STAGES.iter().enumerate() {
        eprintln!(
            "  slowest 10 %: {:8.1} us (all: {:8.1})  {name}",
            median_us(slow.iter().map(|s| s[i]).collect()),
            medians[i]
        );
    }
    let [ours, openraft, fsync] = critical.map(median_us);
    let transport = median_us(critical_transport);
    eprintln!(
        "critical path medians: ours {ours:.0} us, openraft {openraft:.0} us (of which the transport {transport:.0} us), fsync {fsync:.0} us (sum {:.0}); median write {:.0} us (sign included)",
        ours + openraft + fsync,
        median_us(totals)
    );
    // The issue's 1-client budget, from raw limits measured now, against what the path costs
    // without any of our stages (and with the sign, which the budget counts).
    let raw_fsync = cluster::raw_fdatasync_median();
    let (sign, verify) = cluster::raw_sign_verify();
    let budget = (raw_fsync + sign + verify).as_secs_f64() * 1e6;
    let floor = openraft + fsync + sign.as_secs_f64() * 1e6;
    eprintln!(
        "2 x (fdatasync {:.0} + sign {:.0} + verify {:.0}) = {:.0} us; {} + fsync stages + sign alone = {floor:.0} us = {:.2} of it",
        raw_fsync.as_secs_f64() * 1e6,
        sign.as_secs_f64() * 1e6,
        verify.as_secs_f64() * 1e6,
        2.0 * budget,
        if quic { "openraft (with the QUIC round trips)" } else { "openraft" },
        floor / (2.0 * budget)
    );
    let quorum = cluster::raw_quorum_fdatasync_median();
    eprintln!(
        "three syncs at once on this disk, until the second returns: {:.0} us = {:.2} x one sync alone",
        quorum.as_secs_f64() * 1e6,
        quorum.as_secs_f64() / raw_fsync.as_secs_f64()
    );
    // What is outside the store and in series on every write's path: the writer's signature,
    // openraft's core between the proposal and the leader's append (stage 1), the disk from
    // the first sync's start until two of three have ended (this path's own window: it
    // overlaps the replication to the follower, and the raw quorum sync above, plain files
    // of 4 KiB and threads woken at a barrier, took longer than it in every run so far), and
    // openraft's path from the quorum's syncs to the leader's apply (stage 9: the follower's
    // flush report, its answer, the commit, the state machine's turn). Over QUIC stage 9
    // carries the answer through our transport and quinn, and the target is 2.5 × the budget.
    let window = median_us(disk_windows);
    let serial = sign.as_secs_f64() * 1e6 + medians[1] + window + medians[9];
    let target = if quic { 2.5 } else { 2.0 };
    eprintln!(
        "outside the store, in series: sign + openraft's two serial stages + the path's disk window ({window:.0} us) = {serial:.0} us = {:.2} of {target} x budget, leaving {:.0} us for ours (ours on the critical path: {ours:.0} us)",
        serial / (target * budget),
        target * budget - serial
    );
    // Stage 9 carries the answer through the transport; over QUIC that is ours (frames,
    // tasks) and quinn's, not openraft's.
    let answer = median_us(splits.iter().map(|s| s[4]).collect());
    eprintln!(
        "  of which the answer's way through the transport (stage 9b): {answer:.0} us; without it, {:.2} of {target} x budget",
        (serial - answer) / (target * budget)
    );
    // A whole stop (tasks, endpoint, Raft, the ledger closed): nothing of this cluster runs on
    // while the next is measured.
    for s in &systems {
        let _ = rt.block_on(s.shutdown());
    }
}
