//! Append streams over QUIC: openraft's replication to one peer as one bidirectional stream,
//! pipelined.
//!
//! The caller opens a stream of the Raft protocol, sends [`RpcRequest::AppendStream`] as its
//! first frame, then one frame per AppendEntries request as openraft produces them, without
//! waiting for answers (a window of [`crate::net::append_stream::IN_FLIGHT_MAX`]). The peer
//! hands the requests to its Raft in the order they arrive ([`RpcHandler::append_stream`])
//! and writes one answer frame per request, in the same order. Frames are those of every RPC
//! ([`super::framing`]).
//!
//! * **Ends.** The caller finishes its side when openraft's request stream ends; the peer then
//!   answers what it has and finishes its own. The peer ends early after a conflict, a higher
//!   vote or a stopped Raft (the last answer says which). When the caller drops a stream, its
//!   tasks are aborted and the peer sees it end.
//! * **Deadlines.** An answer not back within the call deadline of its request's sending breaks
//!   the stream with a timeout ([`crate::net::append_stream`]); openraft opens another. A
//!   stream with nothing in flight may stay idle: heartbeats travel on streams of their own.
//! * **Bad input.** A frame that is too large, truncated or undecodable closes the connection
//!   with [`close_code::BAD_FRAME`], as for calls. Every request is checked against the
//!   admission policy as it arrives: a key revoked mid-stream is cut off at its next request.
//!   A request that decodes but has the wrong shape for Raft ends the stream unanswered
//!   (`crate::raft::inbound`).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use quinn::{RecvStream, SendStream, VarInt};
use tracing::Instrument;

use super::admission::Gate;
use super::client::{classify, Shared};
use super::endpoint::close;
use super::framing::{encode_frame, read_next_frame, FrameError};
use super::server::{bad_frame, write_answer};
use super::{close_code, stream_code, QuicConfig};
use crate::core::types::NodeId;
use crate::net::append_stream::{lane, LaneSender, RoundTripSink};
use crate::net::{AppendReplies, AppendRequests, RpcHandler, TransportError};
use crate::raft::{AppendReply, AppendRequest, RpcRequest};
use crate::wire::rpc::PeerNode;

/// The round trips of a stream, into the endpoint's table for its peer.
struct PeerRoundTrips {
    shared: Arc<Shared>,
    peer: NodeId,
}

impl RoundTripSink for PeerRoundTrips {
    fn sample(&self, rtt: Duration) {
        self.shared.rtts.sample(self.peer, rtt);
    }

    fn timed_out(&self) {
        self.shared.rtts.timed_out(&self.peer);
    }
}

/// Opens an append stream to `to` on the cached connection, within `deadline`.
pub(super) async fn open(
    shared: &Arc<Shared>,
    to: &PeerNode,
    requests: AppendRequests,
    deadline: Duration,
) -> Result<AppendReplies, TransportError> {
    shared.check_open(to)?;
    let opener = encode_frame(&RpcRequest::AppendStream)
        .map_err(|reason| TransportError::BadFrame { peer: to.addr.clone(), reason })?;
    let dialing = AtomicBool::new(false);
    let setup = async {
        let (conn, _) = shared.connection(to, &dialing).await?;
        let (mut send, recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                shared.forget(&to.node, &conn);
                return Err(classify(&to.addr, e));
            }
        };
        if let Err(e) = send.write_all(&opener).await {
            shared.forget(&to.node, &conn);
            return Err(TransportError::Unreachable(format!("{} (append stream not opened: {e})", to.addr)));
        }
        Ok((conn, send, recv))
    };
    let (conn, send, recv) = match tokio::time::timeout(deadline, setup).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(TransportError::Unreachable(format!("{} (no append stream within {deadline:?})", to.addr)))
        }
    };
    let round_trips = Arc::new(PeerRoundTrips { shared: shared.clone(), peer: to.node });
    let (sender, answers) = lane(&to.addr, deadline, round_trips);
    let span = tracing::Span::current();
    let writer = tokio::spawn(send_requests(send, requests, sender.clone(), to.addr.clone()).instrument(span.clone()));
    let reader = tokio::spawn(read_answers(conn, recv, sender, to.addr.clone()).instrument(span));
    Ok(answers.into_stream(vec![writer.abort_handle(), reader.abort_handle()]))
}

/// Sends openraft's requests as they come, within the lane's window; finishes the stream when
/// they end.
async fn send_requests(mut send: SendStream, mut requests: AppendRequests, lane: LaneSender, addr: String) {
    loop {
        if !lane.slot().await {
            return;
        }
        let Some(req) = requests.next().await else {
            let _ = send.finish();
            return;
        };
        let frame = match encode_frame(&req) {
            Ok(f) => f,
            Err(reason) => {
                let _ = send.reset(VarInt::from_u32(stream_code::CANCELLED));
                lane.answer(Err(TransportError::BadFrame { peer: addr, reason })).await;
                return;
            }
        };
        lane.sending(&req);
        drop(req);
        match send.write_all(&frame).await {
            Ok(()) => {}
            // The peer stopped reading (a node without a Raft, or one that refused a request):
            // its answers, on their way, say why, and the read side ends the stream. An error
            // here would race them to the lane.
            Err(quinn::WriteError::Stopped(_)) => return,
            Err(e) => {
                lane.answer(Err(TransportError::Unreachable(format!("{addr} (request not sent: {e})")))).await;
                return;
            }
        }
    }
}

/// Reads the peer's answers until it finishes the stream or something breaks.
async fn read_answers(conn: quinn::Connection, mut recv: RecvStream, lane: LaneSender, addr: String) {
    loop {
        let item = match read_next_frame(&mut recv).await {
            Ok(Some(bytes)) => postcard::from_bytes::<AppendReply>(&bytes).map_err(|e| {
                let reason = format!("undecodable append answer: {e}");
                bad_frame(&conn, &reason);
                TransportError::BadFrame { peer: addr.clone(), reason }
            }),
            // The peer is done.
            Ok(None) => return,
            Err(FrameError::Stream(quinn::ReadError::ConnectionLost(e))) => Err(classify(&addr, e)),
            Err(FrameError::Stream(e)) => Err(TransportError::Unreachable(format!("{addr} (no answer: {e})"))),
            Err(e) => {
                bad_frame(&conn, &e.to_string());
                Err(TransportError::BadFrame { peer: addr.clone(), reason: e.to_string() })
            }
        };
        let failed = item.is_err();
        if !lane.answer(item).await || failed {
            return;
        }
    }
}

/// Serves an append stream whose opening frame was read: hands each request to `handler` as it
/// arrives and writes the answers back in order.
pub(super) async fn serve(
    conn: quinn::Connection,
    from: NodeId,
    handler: Arc<dyn RpcHandler>,
    cfg: Arc<QuicConfig>,
    gate: Gate,
    mut send: SendStream,
    recv: RecvStream,
) {
    let requests = futures_util::stream::unfold(Some((recv, conn.clone())), move |state| {
        let gate = gate.clone();
        async move {
            let (mut recv, conn) = state?;
            let bytes = match read_next_frame(&mut recv).await {
                Ok(Some(b)) => b,
                Ok(None) => return None,
                Err(FrameError::Stream(e)) => {
                    tracing::debug!(error = %e, "append stream ended");
                    return None;
                }
                Err(e) => {
                    bad_frame(&conn, &e.to_string());
                    return None;
                }
            };
            if !gate.admits(&from) {
                tracing::warn!(peer_key = %from, "node key no longer admitted; closing its connection");
                close(&conn, close_code::NOT_ADMITTED, "node key no longer admitted");
                return None;
            }
            match postcard::from_bytes::<AppendRequest>(&bytes) {
                Ok(req) => Some((req, Some((recv, conn)))),
                Err(e) => {
                    bad_frame(&conn, &format!("undecodable append request: {e}"));
                    None
                }
            }
        }
    });
    let mut answers = handler.append_stream(from, Box::pin(requests));
    while let Some(answer) = answers.next().await {
        if !write_answer(&mut send, &answer, &cfg).await {
            return;
        }
    }
    let _ = send.finish();
}
