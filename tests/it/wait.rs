//! Bounded condition waits: poll until a condition holds, and fail naming what was awaited and
//! the last thing observed if it does not within the deadline. Tests wait for conditions,
//! never for a fixed time.

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `f` every [`POLL`] until it returns `Some` or `timeout` has passed (`None`). The one
/// loop every wait below runs.
pub async fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // The poll interval of this bounded wait.
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `observe` until `done` holds for what it returns, and returns that; panics naming
/// `what` and the last observation after `timeout`.
pub async fn until<T: Debug>(
    what: &str,
    timeout: Duration,
    mut observe: impl FnMut() -> T,
    mut done: impl FnMut(&T) -> bool,
) -> T {
    let mut last = None;
    let found = poll(timeout, || {
        let seen = observe();
        if done(&seen) {
            return Some(seen);
        }
        last = Some(seen);
        None
    })
    .await;
    found.unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}; last observed: {last:?}"))
}

/// Polls `f` until it returns `Some`, and returns the value; panics naming `what` after
/// `timeout`.
pub async fn some<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll(timeout, f).await.unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Polls `f` until it returns `Ok`, and returns the value; panics naming `what` and the last
/// error after `timeout`.
pub async fn ok<T, E: Debug>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, E>) -> T {
    let mut last = None;
    let found = poll(timeout, || f().map_err(|e| last = Some(e)).ok()).await;
    found.unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}: last {last:?}"))
}

/// [`ok`] for a check that awaits (a call, or a step of the scenario that is retried until it
/// takes, such as a node yielding once it is told to).
pub async fn ok_async<T, E: Debug>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Result<T, E>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}: last {e:?}"),
        }
        // The poll interval of this bounded wait.
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `s` holds the chain up to `seq` at least, and returns its head; `who` names
/// it in the failure message.
pub async fn head_reaches(
    who: &str,
    s: &mycnet_spores::SporeSystem,
    seq: u64,
    timeout: Duration,
) -> mycnet_spores::ChainHead {
    let what = format!("{who} at seq {seq} (its head)");
    let head = until(&what, timeout, || s.head().ok().flatten(), |h| h.is_some_and(|h| h.seq >= seq)).await;
    head.expect("a head")
}

/// Waits until `s`'s head is `head`; `who` names it in the failure message.
pub async fn head_is(who: &str, s: &mycnet_spores::SporeSystem, head: mycnet_spores::ChainHead, timeout: Duration) {
    let what = format!("{who} at head {} (its head)", head.seq);
    until(&what, timeout, || s.head().ok().flatten(), |h| *h == Some(head)).await;
}
