//! openraft's async runtime: tokio, with timeouts the network may lengthen.
//!
//! openraft 0.10 wraps every heartbeat in a timeout of exactly `heartbeat_interval`, and every
//! vote in one of `election_timeout_min` (`core/heartbeat/worker.rs`, `core/raft_core.rs`),
//! whatever the link (replication's AppendEntries it leaves to the network's own deadline). On a
//! link whose round trip is longer than that, no heartbeat or vote ever completes: leaders lose
//! their followers and elections never end. Our network knows better ([`crate::net::rtt`]):
//! while openraft polls a call inside one of these timeouts, the call may ask for a later
//! deadline with [`extend_deadline`], and the timeout waits until then. A call that asks for
//! nothing gets
//! exactly tokio's behaviour.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioInstant, TokioRuntime};
use tokio::time::Instant;

/// What the innermost [`Timeout`] being polled on this thread was asked for.
#[derive(Clone, Copy)]
enum Wanted {
    /// No timeout of ours is being polled.
    Outside,
    /// One is: the latest deadline asked for so far in this poll.
    Inside(Option<Instant>),
}

thread_local! {
    static WANTED: Cell<Wanted> = const { Cell::new(Wanted::Outside) };
}

/// Asks the runtime timeout that is polling the current future to wait until at least `at`.
/// Call it from the future's `poll` (in an `async fn`, before its first `.await`); outside an
/// openraft timeout it does nothing. A deadline earlier than the timeout's own changes nothing.
pub(crate) fn extend_deadline(at: Instant) {
    WANTED.with(|w| {
        if let Wanted::Inside(cur) = w.get() {
            w.set(Wanted::Inside(Some(cur.map_or(at, |c| c.max(at)))));
        }
    });
}

/// openraft's [`AsyncRuntime`]: [`TokioRuntime`] with lengthenable timeouts.
#[derive(Debug)]
pub struct SporeRuntime(TokioRuntime);

/// The tokio instant of one of openraft's (whose inner instant is private to it).
fn tokio_instant(at: TokioInstant) -> Instant {
    let (ours, theirs) = (Instant::now(), <TokioInstant as openraft::Instant>::now());
    if at <= theirs {
        ours
    } else {
        ours + (at - theirs)
    }
}

/// The deadline of a [`SporeRuntime`] timeout passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline has elapsed")]
pub struct Elapsed;

/// A future with a deadline that the future itself may push back (see [`extend_deadline`]).
pub struct Timeout<F> {
    future: Pin<Box<F>>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let outer = WANTED.with(|w| w.replace(Wanted::Inside(None)));
        let polled = self.future.as_mut().poll(cx);
        let asked = WANTED.with(|w| w.replace(outer));
        if let Poll::Ready(v) = polled {
            return Poll::Ready(Ok(v));
        }
        if let Wanted::Inside(Some(at)) = asked {
            if at > self.sleep.deadline() {
                self.sleep.as_mut().reset(at);
            }
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRuntime for SporeRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<T>;
    type ThreadLocalRng = <TokioRuntime as AsyncRuntime>::ThreadLocalRng;
    type Mpsc = <TokioRuntime as AsyncRuntime>::Mpsc;
    type Watch = <TokioRuntime as AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        Timeout { future: Box::pin(future), sleep: Box::pin(tokio::time::sleep_until(Instant::now() + duration)) }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        Timeout { future: Box::pin(future), sleep: Box::pin(tokio::time::sleep_until(tokio_instant(deadline))) }
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        TokioRuntime::thread_rng()
    }

    fn new(threads: usize) -> Self {
        SporeRuntime(TokioRuntime::new(threads))
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    async fn slow_call(takes: Duration, asks: Option<Duration>) -> u32 {
        if let Some(d) = asks {
            extend_deadline(Instant::now() + d);
        }
        tokio::time::sleep(takes).await;
        7
    }

    // Real time with wide margins (tokio's paused clock needs a feature this crate does not
    // build with).
    #[tokio::test]
    async fn a_call_that_asks_for_more_time_gets_it_and_no_more() {
        let r = SporeRuntime::timeout(50 * MS, slow_call(300 * MS, Some(2000 * MS))).await;
        assert_eq!(r, Ok(7), "lengthened to 2 s");
        let started = std::time::Instant::now();
        let r = SporeRuntime::timeout(50 * MS, slow_call(5000 * MS, Some(300 * MS))).await;
        assert_eq!(r, Err(Elapsed), "but not beyond");
        assert!(started.elapsed() >= 300 * MS && started.elapsed() < 4000 * MS, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn without_a_request_it_is_tokios_timeout() {
        assert_eq!(SporeRuntime::timeout(2000 * MS, slow_call(10 * MS, None)).await, Ok(7));
        assert_eq!(SporeRuntime::timeout(50 * MS, slow_call(5000 * MS, None)).await, Err(Elapsed));
        // A deadline earlier than the timeout's own is no shortening.
        assert_eq!(SporeRuntime::timeout(2000 * MS, slow_call(100 * MS, Some(MS))).await, Ok(7));
    }

    #[tokio::test]
    async fn an_inner_timeout_keeps_its_request_to_itself() {
        let started = std::time::Instant::now();
        let outer = SporeRuntime::timeout(100 * MS, async {
            // The inner call's request lengthens the inner timeout only.
            SporeRuntime::timeout(50 * MS, slow_call(5000 * MS, Some(10_000 * MS))).await.is_ok()
        });
        assert_eq!(outer.await, Err(Elapsed));
        assert!(started.elapsed() < 4000 * MS, "{:?}", started.elapsed());
        // Outside any timeout, a request changes nothing and leaks nowhere.
        extend_deadline(Instant::now() + 60_000 * MS);
        assert_eq!(SporeRuntime::timeout(50 * MS, slow_call(5000 * MS, None)).await, Err(Elapsed));
    }
}
