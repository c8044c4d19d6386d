//! A follower's side of an append stream, driven by the task that reads the stream.
//!
//! openraft's `Raft::stream_append` spawns a task that reads the requests and hands each to the
//! Raft core, and its answers stream waits on a channel from that task. Each request then woke
//! two tasks at once (the core, and the transport's task waiting for answers), and the second
//! wake pushed the core out of tokio's next-to-run slot: over QUIC the follower's core took its
//! request 29–36 µs after openraft had it, against 8–10 µs here (`latency_breakdown`, stage
//! 5c; `benches/README.md`, session 28).
//!
//! [`pipelined`] sends the same message to the core (`Raft::append_entries`) from the task
//! that polls the answers, keeps up to [`IN_FLIGHT_MAX`] requests in flight, and yields their
//! answers in order, as `stream_append` does: the log id matched, or why the stream ends (a
//! conflict or a higher vote, after which nothing more is read; a stopped Raft).

use futures_util::stream::{BoxStream, FuturesOrdered};
use futures_util::{Stream, StreamExt};
use openraft::error::{Fatal, RaftError};
use openraft::raft::{AppendEntriesResponse, StreamAppendError};

use super::{AppendReply, AppendRequest, LogId, Raft};

/// Most requests handed to the core and not yet answered (openraft's own pipeline holds 64).
pub const IN_FLIGHT_MAX: usize = 64;

/// The answers to `requests`, in order, each request handed to `raft`'s core as soon as it is
/// read. The stream ends after the first answer that is not a success, or when the requests
/// end and every answer is out.
pub fn pipelined(
    raft: Raft,
    mut requests: BoxStream<'static, AppendRequest>,
) -> impl Stream<Item = AppendReply> + Send {
    let mut in_flight: FuturesOrdered<futures_util::future::BoxFuture<'static, Option<AppendReply>>> =
        FuturesOrdered::new();
    let (mut requests_ended, mut ended) = (false, false);
    futures_util::stream::poll_fn(move |cx| {
        use std::task::Poll;
        if ended {
            return Poll::Ready(None);
        }
        while !requests_ended && in_flight.len() < IN_FLIGHT_MAX {
            match requests.poll_next_unpin(cx) {
                Poll::Ready(Some(req)) => {
                    let raft = raft.clone();
                    let (prev, last) = (req.prev_log_id, req.entries.last().map(|e| e.log_id).or(req.prev_log_id));
                    // Polled below, in the order read: each sends its message to the core on
                    // its first poll.
                    in_flight.push_back(Box::pin(async move {
                        match raft.append_entries(req).await {
                            Ok(resp) => answer(resp, prev, last),
                            Err(RaftError::Fatal(f)) => Some(Err(f)),
                            Err(RaftError::APIError(never)) => match never {},
                        }
                    }));
                }
                Poll::Ready(None) => requests_ended = true,
                Poll::Pending => break,
            }
        }
        match in_flight.poll_next_unpin(cx) {
            Poll::Ready(Some(Some(reply))) => {
                ended = !matches!(reply, Ok(Ok(_)));
                Poll::Ready(Some(reply))
            }
            // An answer that cannot be told (see `answer`): the stream ends unanswered there.
            Poll::Ready(Some(None)) => {
                ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) if requests_ended => Poll::Ready(None),
            _ => Poll::Pending,
        }
    })
}

/// The core's answer to a request whose entries run `(prev, last]`, as `stream_append` gives it:
/// the log id matched, a conflict at `prev`, or a higher vote. `None` for a conflict with no
/// `prev` (the core finds none there: a log from its start follows any), or an answer of a
/// kind this openraft does not have yet.
fn answer(
    resp: AppendEntriesResponse<super::TypeConfig>,
    prev: Option<LogId>,
    last: Option<LogId>,
) -> Option<AppendReply> {
    let result = match resp {
        AppendEntriesResponse::Success => Ok(last),
        AppendEntriesResponse::PartialSuccess(matched) => Ok(matched),
        AppendEntriesResponse::Conflict => Err(StreamAppendError::Conflict(prev?)),
        AppendEntriesResponse::HigherVote(vote) => Err(StreamAppendError::HigherVote(vote)),
        #[allow(unreachable_patterns)]
        _ => return None,
    };
    Some(Ok::<_, Fatal<super::TypeConfig>>(result))
}

#[cfg(test)]
mod tests {
    use openraft::impls::leader_id_adv::LeaderId;
    use openraft::impls::Vote;

    use super::*;

    fn id(index: u64) -> LogId {
        LogId::new(LeaderId { term: 2, node_id: 1 }, index)
    }

    /// The answers are `stream_append`'s: the last entry's id (or the previous one for an
    /// empty request), the conflict at the previous id, the higher vote.
    #[test]
    fn answers_are_those_of_openrafts_stream() {
        let ok = |r: Option<AppendReply>| r.and_then(|r| r.ok()).and_then(|r| r.ok());
        assert_eq!(ok(answer(AppendEntriesResponse::Success, Some(id(4)), Some(id(7)))), Some(Some(id(7))));
        assert_eq!(ok(answer(AppendEntriesResponse::Success, None, None)), Some(None), "the first entries of a log");
        assert_eq!(
            ok(answer(AppendEntriesResponse::PartialSuccess(Some(id(5))), Some(id(4)), Some(id(7)))),
            Some(Some(id(5)))
        );
        let conflict = answer(AppendEntriesResponse::Conflict, Some(id(4)), Some(id(7)));
        assert!(matches!(conflict, Some(Ok(Err(StreamAppendError::Conflict(p)))) if p == id(4)), "{conflict:?}");
        assert!(answer(AppendEntriesResponse::Conflict, None, Some(id(0))).is_none(), "no conflict to name");
        let higher = answer(AppendEntriesResponse::HigherVote(Vote::new(3, 2)), Some(id(4)), None);
        assert!(
            matches!(higher, Some(Ok(Err(StreamAppendError::HigherVote(v)))) if v == Vote::new(3, 2)),
            "{higher:?}"
        );
    }
}
