//! The caller's side of an append stream, whatever carries it ([`Transport::append_stream`]):
//! a window of requests in flight, their answers in order, and the deadline of each.
//!
//! A transport moves the bytes: it takes a slot of the window before it pulls the next request
//! from openraft ([`LaneSender::slot`]), notes each request as it sends it
//! ([`LaneSender::sending`]) and hands over each answer, or why the stream broke
//! ([`LaneSender::answer`]). The caller reads [`LaneAnswers::into_stream`]: an answer frees
//! its slot; an answer not back within the deadline of its request's sending breaks the stream
//! with [`TransportError::Timeout`], and an answer to no request with
//! [`TransportError::UnexpectedResponse`]; nothing comes after an error or a final answer (a
//! conflict, a higher vote, a stopped Raft).
//!
//! [`Transport::append_stream`]: super::Transport::append_stream

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};
use tokio::task::AbortHandle;

use super::{AppendReplies, TransportError};
use crate::core::sync;
use crate::raft::{AppendReply, AppendRequest};

/// Most requests sent and not yet answered on one stream. openraft's own pipeline on the
/// receiving side holds 64.
pub(crate) const IN_FLIGHT_MAX: usize = 64;

/// What a lane reports of its round trips: a sample from each answered entry-less request (no
/// follower sync in it), and each timeout.
pub(crate) trait RoundTripSink: Send + Sync + 'static {
    /// An entry-less request was answered after `rtt`.
    fn sample(&self, rtt: Duration);
    /// A request was not answered within the deadline.
    fn timed_out(&self);
}

/// No round trips kept (a transport that does not measure them).
pub(crate) struct NoRoundTrips;

impl RoundTripSink for NoRoundTrips {
    fn sample(&self, _: Duration) {}
    fn timed_out(&self) {}
}

/// When each request in flight was sent, oldest first, and whether its round trip is a sample.
type Sent = Arc<Mutex<VecDeque<(Instant, bool)>>>;

/// The transport's end of a lane. Cheap to clone.
#[derive(Clone)]
pub(crate) struct LaneSender {
    tx: mpsc::Sender<Result<AppendReply, TransportError>>,
    sent: Sent,
    window: Arc<Semaphore>,
}

impl LaneSender {
    /// Waits for a free slot in the window, taken until its request's answer comes back.
    /// `false` once the caller has dropped the stream.
    pub(crate) async fn slot(&self) -> bool {
        match self.window.acquire().await {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Notes that `req` is being sent now: its deadline runs from here.
    pub(crate) fn sending(&self, req: &AppendRequest) {
        sync::lock(&self.sent).push_back((Instant::now(), req.entries.is_empty()));
    }

    /// Hands the caller the next answer, or why the stream broke. `false` once the caller has
    /// dropped the stream.
    pub(crate) async fn answer(&self, item: Result<AppendReply, TransportError>) -> bool {
        self.tx.send(item).await.is_ok()
    }
}

/// The caller's end of a lane.
pub(crate) struct LaneAnswers {
    rx: mpsc::Receiver<Result<AppendReply, TransportError>>,
    sent: Sent,
    window: Arc<Semaphore>,
    deadline: Duration,
    peer: String,
    round_trips: Arc<dyn RoundTripSink>,
}

/// A lane to `peer` whose requests must be answered within `deadline` each.
pub(crate) fn lane(peer: &str, deadline: Duration, round_trips: Arc<dyn RoundTripSink>) -> (LaneSender, LaneAnswers) {
    let sent: Sent = Arc::default();
    let window = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
    let (tx, rx) = mpsc::channel(IN_FLIGHT_MAX);
    let sender = LaneSender { tx, sent: sent.clone(), window: window.clone() };
    (sender, LaneAnswers { rx, sent, window, deadline, peer: peer.to_string(), round_trips })
}

/// Aborts a stream's tasks when its answers are dropped: a task pulling openraft's requests
/// holds openraft's replication state until the next request comes.
struct AbortOnDrop(Vec<AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl LaneAnswers {
    /// The answers as openraft reads them; dropping the stream aborts `tasks` (the transport's
    /// tasks that move this lane's bytes) and closes the window.
    pub(crate) fn into_stream(self, tasks: Vec<AbortHandle>) -> AppendReplies {
        let state = (self, AbortOnDrop(tasks));
        Box::pin(futures_util::stream::unfold(Some(state), |state| async move {
            let (mut lane, tasks) = state?;
            let (item, more) = lane.next().await?;
            Some((item, more.then_some((lane, tasks))))
        }))
    }

    /// The next answer and whether more may follow, a timeout, or the end.
    async fn next(&mut self) -> Option<(Result<AppendReply, TransportError>, bool)> {
        loop {
            // Wait for the oldest request's deadline, or a deadline's length when none is in
            // flight (then look again: a request may have gone out meanwhile).
            let oldest = sync::lock(&self.sent).front().map(|(at, _)| *at);
            let wait =
                oldest.map_or(self.deadline, |at| (at + self.deadline).saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, self.rx.recv()).await {
                Ok(Some(Ok(answer))) => {
                    // An answer to no request: the peer broke the protocol.
                    let Some((at, sample)) = sync::lock(&self.sent).pop_front() else {
                        return Some((Err(TransportError::UnexpectedResponse(self.peer.clone())), false));
                    };
                    self.window.add_permits(1);
                    if sample {
                        self.round_trips.sample(at.elapsed());
                    }
                    let more = matches!(answer, Ok(Ok(_)));
                    return Some((Ok(answer), more));
                }
                Ok(Some(Err(e))) => return Some((Err(e), false)),
                Ok(None) => {
                    let unanswered = sync::lock(&self.sent).len();
                    if unanswered == 0 {
                        return None;
                    }
                    let e = TransportError::Unreachable(format!(
                        "{} (the append stream ended with {unanswered} requests unanswered)",
                        self.peer
                    ));
                    return Some((Err(e), false));
                }
                Err(_) => {
                    let overdue = sync::lock(&self.sent).front().is_some_and(|(at, _)| at.elapsed() >= self.deadline);
                    if overdue {
                        self.round_trips.timed_out();
                        return Some((
                            Err(TransportError::Timeout { peer: self.peer.clone(), after: self.deadline }),
                            false,
                        ));
                    }
                }
            }
        }
    }
}

impl Drop for LaneAnswers {
    fn drop(&mut self) {
        // Wakes a transport task waiting for a slot.
        self.window.close();
    }
}
