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
//! trip, which is ours, not openraft's). The last line sets the stages that are not ours
//! (openraft's hand-offs and the two fsyncs, which openraft 0.9 runs one after the other)
//! against the issue's 1-client budget, 2 × (fdatasync + sign + verify), all measured in the
//! same run.

// tests and benches: a panic is the failure report
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

#[path = "common/cluster.rs"]
mod cluster;

/// The spans the breakdown reads: (target, name).
const SPANS: [(&str, &str); 5] = [
    ("mycnet_spores::node::writes", "submit"),
    ("mycnet_spores::raft::proposer", "propose_batch"),
    ("mycnet_spores::raft::log_store", "append"),
    ("mycnet_spores::raft::log_store", "raft_log_sync"),
    ("mycnet_spores::raft::state_machine", "apply"),
];

/// One closed span: its name, the data dir it ran for (if it says), first entered and closed.
#[derive(Clone, Debug)]
struct Closed {
    name: &'static str,
    path: Option<String>,
    start: Instant,
    end: Instant,
}

/// A span still open: its path field and when it was first entered.
struct Open {
    path: Option<String>,
    start: Option<Instant>,
}

struct PathField(Option<String>);

impl Visit for PathField {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "path" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

/// Records every closed span of [`SPANS`].
#[derive(Clone, Default)]
struct Timeline(Arc<Mutex<Vec<Closed>>>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Timeline {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut path = PathField(None);
        attrs.record(&mut path);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Open { path: path.0, start: None });
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(open) = span.extensions_mut().get_mut::<Open>() {
                open.start.get_or_insert_with(Instant::now);
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let end = Instant::now();
        let Some(span) = ctx.span(&id) else { return };
        let Some(open) = span.extensions_mut().remove::<Open>() else { return };
        let Some(start) = open.start else { return };
        if let Ok(mut v) = self.0.lock() {
            v.push(Closed { name: span.name(), path: open.path, start, end });
        }
    }
}

/// Whose time a stage is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    Ours,
    Openraft,
    Fsync,
}

const STAGES: [(&str, Owner); 13] = [
    ("submit -> batch proposed (queue, proposer task)", Owner::Ours),
    ("proposed -> leader log append (openraft core)", Owner::Openraft),
    ("leader log append (encode, fjall write, pre-verify spawn)", Owner::Ours),
    ("appended -> leader sync starts (flusher wake)", Owner::Ours),
    ("leader fsync", Owner::Fsync),
    ("leader synced -> follower append (core, replication, transport)", Owner::Openraft),
    ("follower log append", Owner::Ours),
    ("appended -> follower sync starts (flusher wake)", Owner::Ours),
    ("follower fsync (the first of the two)", Owner::Fsync),
    ("follower synced -> leader apply (response, commit)", Owner::Openraft),
    ("leader apply (verdicts, chain, projection, ledger write)", Owner::Ours),
    ("applied -> batch answered (client_write returns)", Owner::Openraft),
    ("answered -> submit returns (writer wakes)", Owner::Ours),
];

/// The node (index in `dirs`, the nodes' data dirs) a path field belongs to.
fn node_of(path: &str, dirs: &[String]) -> Option<usize> {
    dirs.iter().position(|d| path.starts_with(d.as_str()))
}

/// The first span named `name` of `node` that starts at or after `after`.
fn first<'a>(spans: &'a [Closed], name: &str, node: usize, after: Instant, dirs: &[String]) -> Option<&'a Closed> {
    spans
        .iter()
        .filter(|s| {
            s.name == name && s.start >= after && s.path.as_deref().and_then(|p| node_of(p, dirs)) == Some(node)
        })
        .min_by_key(|s| s.start)
}

/// The 13 stage durations (µs) of one write, from its spans; `None` if one is missing.
fn stages(spans: &[Closed], dirs: &[String]) -> Option<[f64; 13]> {
    let us = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e6;
    let submit = spans.iter().find(|s| s.name == "submit")?;
    let propose = spans.iter().find(|s| s.name == "propose_batch" && s.start >= submit.start)?;
    let leader_append = first(spans, "append", 0, propose.start, dirs)?;
    let leader_sync = first(spans, "raft_log_sync", 0, leader_append.end, dirs)?;
    // The follower whose sync ends first is the one that completes the quorum.
    let (f_append, f_sync) = (1..dirs.len())
        .filter_map(|n| {
            let a = first(spans, "append", n, leader_sync.end, dirs)?;
            let s = first(spans, "raft_log_sync", n, a.end, dirs)?;
            Some((a, s))
        })
        .min_by_key(|(_, s)| s.end)?;
    let apply = first(spans, "apply", 0, f_sync.end, dirs)?;
    Some([
        us(submit.start, propose.start),
        us(propose.start, leader_append.start),
        us(leader_append.start, leader_append.end),
        us(leader_append.end, leader_sync.start),
        us(leader_sync.start, leader_sync.end),
        us(leader_sync.end, f_append.start),
        us(f_append.start, f_append.end),
        us(f_append.end, f_sync.start),
        us(f_sync.start, f_sync.end),
        us(f_sync.end, apply.start),
        us(apply.start, apply.end),
        us(apply.end, propose.end),
        us(propose.end, submit.end),
    ])
}

fn median_us(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let writes: usize =
        std::env::var("SPORES_BREAKDOWN_WRITES").ok().and_then(|v| v.parse().ok()).unwrap_or(500).max(1);
    let timeline = Timeline::default();
    let only = tracing_subscriber::filter::filter_fn(|m| m.is_span() && SPANS.contains(&(m.target(), m.name())));
    let subscriber = tracing_subscriber::registry().with(timeline.clone().with_filter(only));
    tracing::subscriber::set_global_default(subscriber).expect("no other subscriber in this harness");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let quic = std::env::var("SPORES_BREAKDOWN_NET").is_ok_and(|n| n.eq_ignore_ascii_case("quic"));
    let net = if quic { cluster::Net::Quic } else { cluster::Net::InProc };
    let systems = rt.block_on(cluster::form(dir.path(), 3, net));
    let dirs: Vec<String> =
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
    // Warm up (caches, the first entries of the term), untimed.
    for _ in 0..100 {
        write(&systems[0]).expect("warm-up write");
    }

    let mut per_stage: Vec<Vec<f64>> = vec![Vec::with_capacity(writes); STAGES.len()];
    let mut totals = Vec::with_capacity(writes);
    let mut incomplete = 0;
    for _ in 0..writes {
        if let Ok(mut v) = timeline.0.lock() {
            v.clear();
        }
        // Signing included, as in the 1-client figure of `benches/primary.rs`.
        let t = Instant::now();
        write(&systems[0]).expect("write");
        totals.push(t.elapsed().as_secs_f64() * 1e6);
        let spans = timeline.0.lock().map(|v| v.clone()).unwrap_or_default();
        match stages(&spans, &dirs) {
            Some(s) => s.iter().zip(per_stage.iter_mut()).for_each(|(d, v)| v.push(*d)),
            None => incomplete += 1,
        }
    }

    let over =
        if quic { "over QUIC on 127.0.0.1 (the replication stages include its round trip)" } else { "in process" };
    let from = if in_task { "a task on the runtime" } else { "block_on" };
    eprintln!("\n=== one write's commit path, 3 voters {over}, writer in {from}, {writes} writes ({incomplete} without every span, left out) ===");
    let mut by_owner = [0.0f64; 3];
    for ((name, owner), v) in STAGES.iter().zip(per_stage) {
        let m = median_us(v);
        by_owner[*owner as usize] += m;
        let who = match owner {
            Owner::Ours => "ours",
            Owner::Openraft => "openraft",
            Owner::Fsync => "fsync",
        };
        eprintln!("{m:8.1} us  {who:>8}  {name}");
    }
    let [ours, openraft, fsync] = by_owner;
    eprintln!(
        "stage medians: ours {ours:.0} us, openraft {openraft:.0} us, fsync {fsync:.0} us (sum {:.0}); median write {:.0} us (sign included)",
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
    for s in &systems {
        if let Ok(raft) = s.raft() {
            let _ = rt.block_on(raft.shutdown());
        }
    }
}
