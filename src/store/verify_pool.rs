//! Where ahead-of-apply signature checks run: on rayon's global pool when a write waits for
//! them, on a background pool at the lowest CPU priority when none does.
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
//! A check still pending when an apply needs it is waited for (a bounded wait, see
//! [`super::verified::PreVerified`]): under a machine saturated by other work a follower's
//! apply slows down, the leader's does not.

use std::sync::OnceLock;

/// The nice value of the background pool's threads: the lowest priority.
pub const BACKGROUND_NICE: i32 = 19;

/// How urgent a batch of signature checks is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// A write waits for them (entries this node appended as their leader): rayon's global pool.
    Foreground,
    /// No write waits for them (entries replicated from another leader): [`background`].
    Background,
}

/// The background pool (as many threads as cores, at [`BACKGROUND_NICE`]), built on first
/// use; `None` if its threads cannot be started (the caller then uses the global pool).
pub fn background() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("spores-verify-{i}"))
            .start_handler(|_| lower_priority())
            .build()
            .inspect_err(|e| tracing::warn!(error = %e, "no background verification pool; using the global one"))
            .ok()
    })
    .as_ref()
}

/// Runs `job` on the pool `urgency` names.
pub fn spawn(urgency: Urgency, job: impl FnOnce() + Send + 'static) {
    match (urgency, background()) {
        (Urgency::Background, Some(pool)) => pool.spawn(job),
        _ => rayon::spawn(job),
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
