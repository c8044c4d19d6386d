//! Where ahead-of-apply signature checks run: on a foreground pool of half the cores when a
//! write waits for them, on a background pool at the lowest CPU priority when none does.
//!
//! A leader answers a write once its own apply of the entry is done, and that apply needs the
//! entry's signatures checked: those checks are on the write's path. A follower's checks are
//! not (the leader commits once the follower's log is synced, whatever its apply does), so
//! they run on [`background`], whose threads yield the cores to anything at normal priority —
//! the node's Raft work, the embedding application — and use them when those wait (for an
//! fsync, for the next batch). Three voters sharing two cores in `cargo bench --bench
//! primary_profile`, four alternated pairs: 0.51 → 0.57 of 2V/3 on average, the followers'
//! applies at most ~10 entries behind at each round's end (`benches/README.md`, session 17).
//!
//! The scrub's signature checks run there too ([`install`]): maintenance, not a write's path.
//!
//! The foreground pool ([`foreground`]) is not rayon's global one, whose threads (one per
//! core) the node also uses for parallel replay and audits. A rayon thread that runs out of
//! work yields its core some thirty times before it sleeps; on a small machine two of them
//! spinning after every one-event check took CPU from the Raft tasks they were meant to serve.
//! A write's checks are small jobs (an entry's events, in chunks of 128) that seldom use more
//! than one thread, so half the cores serve them: on two cores, one thread. Against the global
//! pool, 12 alternated pairs of `latency_breakdown`: the 1-client write 498 → 456 µs in
//! process and 680 → 646 µs over QUIC, its CPU (every thread) 880 → 800 and 1260 → 1130 µs;
//! `primary_profile` at 64 writers, 8 pairs: 0.574 → 0.589 of 2V/3 in process, 0.512 → 0.540
//! over QUIC (`benches/README.md`, session 21).
//!
//! A check still pending when an apply needs it is waited for (a bounded wait, see
//! [`super::verified::PreVerified`]): under a machine saturated by other work a follower's
//! apply slows down, the leader's does not.

use std::sync::OnceLock;

/// The nice value of the background pool's threads: the lowest priority.
pub const BACKGROUND_NICE: i32 = 19;

/// How urgent a batch of signature checks is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// A write waits for them (entries this node appended as their leader): [`foreground`].
    Foreground,
    /// No write waits for them (entries replicated from another leader): [`background`].
    Background,
}

/// The foreground pool (half the cores, at least one thread, at normal priority), built on
/// first use; `None` if its threads cannot be started (the caller then uses the global pool).
pub fn foreground() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| build("spores-check", rayon::ThreadPoolBuilder::new().num_threads((cores() / 2).max(1))))
        .as_ref()
}

/// The background pool (as many threads as cores, at [`BACKGROUND_NICE`]), built on first
/// use; `None` if its threads cannot be started (the caller then uses the global pool).
pub fn background() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        build("spores-verify", rayon::ThreadPoolBuilder::new().num_threads(cores()).start_handler(|_| lower_priority()))
    })
    .as_ref()
}

/// The cores this process may use (2 if the OS does not say).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

/// Builds a pool from `builder`, its threads named `{prefix}-N`; `None`, with a warning, if
/// its threads cannot be started.
fn build(prefix: &'static str, builder: rayon::ThreadPoolBuilder) -> Option<rayon::ThreadPool> {
    builder
        .thread_name(move |i| format!("{prefix}-{i}"))
        .build()
        .inspect_err(
            |e| tracing::warn!(error = %e, pool = prefix, "no verification pool of its own; using the global one"),
        )
        .ok()
}

/// Runs `job` on the pool `urgency` names.
pub fn spawn(urgency: Urgency, job: impl FnOnce() + Send + 'static) {
    let pool = match urgency {
        Urgency::Foreground => foreground(),
        Urgency::Background => background(),
    };
    match pool {
        Some(pool) => pool.spawn(job),
        None => rayon::spawn(job),
    }
}

/// Runs `f` (and the parallel work it starts) on the pool `urgency` names, and returns its
/// result; the calling thread waits, blocked.
pub fn install<R: Send>(urgency: Urgency, f: impl FnOnce() -> R + Send) -> R {
    match (urgency, background()) {
        (Urgency::Background, Some(pool)) => pool.install(f),
        _ => f(),
    }
}

/// Sets the calling thread's nice value to [`BACKGROUND_NICE`] (on Linux the nice value is
/// per thread). A failure only costs the priority: the checks still run.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, BACKGROUND_NICE) {
        tracing::debug!(error = %e, "background verification thread keeps its priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write's checks run on the foreground pool's own threads, not on rayon's global pool
    /// (whose threads serve replay and audits), and that pool leaves half the cores alone.
    #[test]
    fn foreground_jobs_run_on_their_own_pool_of_half_the_cores() {
        let (tx, rx) = std::sync::mpsc::channel();
        spawn(Urgency::Foreground, move || {
            let _ = tx.send(std::thread::current().name().map(str::to_string));
        });
        let name = rx.recv_timeout(std::time::Duration::from_secs(10)).ok().flatten();
        assert!(name.as_deref().is_some_and(|n| n.starts_with("spores-check-")), "ran on {name:?}");
        let threads = foreground().map(rayon::ThreadPool::current_num_threads);
        assert_eq!(threads, Some((cores() / 2).max(1)));
    }

    #[test]
    fn background_jobs_run_at_the_lowest_priority_and_foreground_ones_do_not() {
        let (tx, rx) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        spawn(Urgency::Background, move || {
            let _ = tx.send(("background", rustix::process::getpriority_process(None).ok()));
        });
        spawn(Urgency::Foreground, move || {
            let _ = tx2.send(("foreground", rustix::process::getpriority_process(None).ok()));
        });
        let mut got: Vec<_> = (0..2).filter_map(|_| rx.recv_timeout(std::time::Duration::from_secs(10)).ok()).collect();
        got.sort();
        let this_thread = rustix::process::getpriority_process(None).ok();
        assert_eq!(got, vec![("background", Some(BACKGROUND_NICE)), ("foreground", this_thread)]);
    }

    #[test]
    fn install_runs_background_work_at_the_lowest_priority_and_returns_its_result() {
        let (nice, sum) =
            install(Urgency::Background, || (rustix::process::getpriority_process(None).ok(), (1..=4).sum::<u32>()));
        assert_eq!((nice, sum), (Some(BACKGROUND_NICE), 10));
        let here = rustix::process::getpriority_process(None).ok();
        assert_eq!(install(Urgency::Foreground, || rustix::process::getpriority_process(None).ok()), here);
    }
}
