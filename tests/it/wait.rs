//! Bounded condition waits: poll until a condition holds, and fail naming what was awaited if
//! it does not within the deadline. Tests wait for conditions, never for a fixed time.

use std::time::{Duration, Instant};

/// Polls `f` until it returns `Some`, and returns the value; panics naming `what` (and the
/// last thing `f` saw, if it says) after `timeout`.
pub async fn some<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `f` until it returns `Ok`, and returns the value; panics naming `what` and the last
/// error after `timeout`.
pub async fn ok<T, E: std::fmt::Debug>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, E>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}: last {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
