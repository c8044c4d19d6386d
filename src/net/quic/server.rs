//! The server side of an endpoint: accepts connections within the limits, admits each by its
//! key and protocol, and serves RPC streams, gossip sessions and SWIM datagrams.

use std::sync::Arc;

use quinn::{Endpoint, Incoming, RecvStream, SendStream, VarInt};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::admission::Gate;
use super::endpoint::{close, negotiated_alpn, peer_node_id};
use super::framing::{encode_frame, read_frame, FrameError};
use super::slots::{Place, Places};
use super::{close_code, stream_code, QuicConfig, ALPN_ADMIN, ALPN_RAFT};
use crate::core::types::NodeId;
use crate::net::RpcHandler;
use crate::raft::RpcRequest;

/// Accepts connections while the endpoint is open, each in one of its [`Places`] (a peer this
/// endpoint has dialed in the reserve first; an unproven address first sent a Retry when places
/// are crowded), and serves each on a task.
pub(super) async fn accept_loop(
    endpoint: Endpoint,
    handler: Arc<dyn RpcHandler>,
    cfg: Arc<QuicConfig>,
    gate: Gate,
    places: Arc<Places>,
) {
    let mut refusals = Refusals::default();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(mut incoming) = incoming else { break };
                let remote = incoming.remote_address();
                if !incoming.remote_address_validated() && places.crowded(&remote) {
                    // No place for an unproven address: a forged one never answers the Retry.
                    match incoming.retry() {
                        Ok(()) => {
                            tracing::debug!(%remote, "places crowded; asked the client to prove its address (Retry)");
                            continue;
                        }
                        // Unreachable: an unproven address may always be sent a Retry.
                        Err(e) => incoming = e.into_incoming(),
                    }
                }
                let Some(place) = places.take(&remote) else {
                    refusals.refused(remote, places.known_at(&remote).is_some(), cfg.connections_max);
                    incoming.refuse();
                    continue;
                };
                let span = tracing::info_span!("quic_accept", %remote, peer = tracing::field::Empty);
                let (handler, cfg, gate, places) = (handler.clone(), cfg.clone(), gate.clone(), places.clone());
                connections.spawn(serve_connection(incoming, handler, cfg, gate, (places, place)).instrument(span));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    tracing::debug!("endpoint closed; server stopped");
    // Dropping the set aborts what is left of the connection tasks.
}

/// The warnings of refused connections: the first at once, then one per
/// [`Refusals::EVERY`] with the count since (a flood of clients would otherwise log a line per
/// attempt, thousands a second).
#[derive(Default)]
struct Refusals {
    last: Option<std::time::Instant>,
    since: u64,
}

impl Refusals {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    fn refused(&mut self, remote: std::net::SocketAddr, known_peer: bool, limit: usize) {
        self.since += 1;
        if self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return;
        }
        tracing::warn!(
            %remote,
            limit,
            known_peer,
            refused = self.since,
            "incoming connection limit reached; refusing (refused is the count since the last such warning)"
        );
        self.last = Some(std::time::Instant::now());
        self.since = 0;
    }
}

async fn serve_connection(
    incoming: Incoming,
    handler: Arc<dyn RpcHandler>,
    cfg: Arc<QuicConfig>,
    gate: Gate,
    (places, place): (Arc<Places>, Place),
) {
    // `accept` inside this span: quinn runs the connection (and our TLS verifier, which logs
    // refused keys) in the span current here, so those logs carry the remote address.
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "could not accept");
            return;
        }
    };
    let conn = match tokio::time::timeout(cfg.handshake_deadline, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(deadline = ?cfg.handshake_deadline, "handshake deadline passed");
            return;
        }
    };
    let Some(peer) = peer_node_id(&conn) else {
        tracing::warn!("no peer key in an established session; closing");
        close(&conn, close_code::NO_IDENTITY, "no peer identity");
        return;
    };
    tracing::Span::current().record("peer", tracing::field::display(peer.short()));
    // Held until the connection ends.
    let Some(_place) = places.settle(place, conn.remote_address(), peer) else {
        tracing::warn!(peer_key = %peer, "a known peer's address with another key, and no open place left; closing");
        close(&conn, close_code::NOT_ADMITTED, "connection limit reached");
        return;
    };
    match negotiated_alpn(&conn).as_deref() {
        Some(ALPN_RAFT) if !gate.admits(&peer) => {
            tracing::warn!(peer_key = %peer, "refused a Raft connection from a node key the admission policy does not allow");
            close(&conn, close_code::NOT_ADMITTED, "node key not admitted");
        }
        Some(ALPN_RAFT) => serve_rpc(conn, peer, handler, cfg, Some(gate)).await,
        Some(ALPN_ADMIN) if !cfg.admin_reads.allows(&gate, &peer) => {
            tracing::warn!(peer_key = %peer, "refused an admin connection from a key the read policy does not allow");
            close(&conn, close_code::NOT_ADMITTED, "reads not allowed for this key");
        }
        Some(ALPN_ADMIN) => serve_rpc(conn, peer, handler, cfg, None).await,
        Some(crate::net::gossip::ALPN_GOSSIP) if !gate.admits(&peer) => {
            tracing::warn!(peer_key = %peer, "refused a gossip connection from a node key the admission policy does not allow");
            close(&conn, close_code::NOT_ADMITTED, "node key not admitted");
        }
        Some(crate::net::liveness::ALPN_SWIM) if !gate.admits(&peer) => {
            tracing::warn!(peer_key = %peer, "refused a SWIM connection from a node key the admission policy does not allow");
            close(&conn, close_code::NOT_ADMITTED, "node key not admitted");
        }
        Some(crate::net::liveness::ALPN_SWIM) => match handler.liveness() {
            Some(sink) => loop {
                match conn.read_datagram().await {
                    Ok(_) if !gate.admits(&peer) => {
                        close(&conn, close_code::NOT_ADMITTED, "node key no longer admitted");
                        break;
                    }
                    Ok(d) => sink.datagram(peer, d),
                    Err(e) => {
                        tracing::debug!(reason = %e, "SWIM connection ended");
                        break;
                    }
                }
            },
            None => close(&conn, close_code::UNSUPPORTED_PROTOCOL, "liveness not served"),
        },
        Some(crate::net::gossip::ALPN_GOSSIP) => match handler.gossip() {
            Some(acceptor) => serve_gossip(conn, peer, acceptor, gate).await,
            None => close(&conn, close_code::UNSUPPORTED_PROTOCOL, "gossip not served"),
        },
        other => {
            let alpn = other.map(String::from_utf8_lossy);
            tracing::warn!(alpn = ?alpn, "unsupported protocol; closing");
            close(&conn, close_code::UNSUPPORTED_PROTOCOL, "unsupported protocol");
        }
    }
}

/// Serves the streams of one connection. With a `gate` (the Raft protocol) every request is
/// checked against the admission policy as it is now, so a key revoked while connected is cut
/// off at its next request; without one (the admin protocol) only `Status` and `Query` pass.
async fn serve_rpc(
    conn: quinn::Connection,
    peer: NodeId,
    handler: Arc<dyn RpcHandler>,
    cfg: Arc<QuicConfig>,
    gate: Option<Gate>,
) {
    tracing::debug!("connection established");
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok(_) if gate.as_ref().is_some_and(|g| !g.admits(&peer)) => {
                    tracing::warn!(peer_key = %peer, "node key no longer admitted; closing its connection");
                    close(&conn, close_code::NOT_ADMITTED, "node key no longer admitted");
                    break;
                }
                Ok((send, recv)) => {
                    let span = tracing::debug_span!("quic_serve", stream = %recv.id(), kind = tracing::field::Empty);
                    streams.spawn(serve_stream(conn.clone(), peer, handler.clone(), cfg.clone(), gate.clone(), send, recv).instrument(span));
                }
                Err(e) => {
                    tracing::debug!(reason = %e, "connection ended");
                    break;
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
}

/// Serves the gossip streams of one connection: one session per stream, at most two at a time.
async fn serve_gossip(
    conn: quinn::Connection,
    peer: NodeId,
    acceptor: Arc<dyn crate::net::gossip::GossipAcceptor>,
    gate: Gate,
) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = conn.accept_bi(), if sessions.len() < 2 => match accepted {
                Ok(_) if !gate.admits(&peer) => {
                    close(&conn, close_code::NOT_ADMITTED, "node key no longer admitted");
                    break;
                }
                Ok((send, recv)) => {
                    let acceptor = acceptor.clone();
                    let stream = crate::net::gossip::GossipStream { peer, send: Box::new(send), recv: Box::new(recv) };
                    sessions.spawn(async move { acceptor.accept_gossip(stream).await });
                }
                Err(e) => {
                    tracing::debug!(reason = %e, "gossip connection ended");
                    break;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

pub(super) fn bad_frame(conn: &quinn::Connection, reason: &str) {
    tracing::warn!(remote = %conn.remote_address(), reason, "bad frame; closing the connection");
    close(conn, close_code::BAD_FRAME, "bad frame");
}

async fn serve_stream(
    conn: quinn::Connection,
    from: NodeId,
    handler: Arc<dyn RpcHandler>,
    cfg: Arc<QuicConfig>,
    gate: Option<Gate>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let read_only = gate.is_none();
    let bytes = match tokio::time::timeout(cfg.request_read_deadline, read_frame(&mut recv)).await {
        Ok(Ok(b)) => b,
        Ok(Err(FrameError::Stream(e))) => {
            tracing::debug!(error = %e, "request stream failed");
            return;
        }
        Ok(Err(e)) => return bad_frame(&conn, &e.to_string()),
        Err(_) => {
            tracing::debug!(deadline = ?cfg.request_read_deadline, "request not received in time");
            let _ = recv.stop(VarInt::from_u32(stream_code::READ_DEADLINE));
            let _ = send.reset(VarInt::from_u32(stream_code::READ_DEADLINE));
            return;
        }
    };
    let req: RpcRequest = match postcard::from_bytes(&bytes) {
        Ok(r) => r,
        Err(e) => return bad_frame(&conn, &format!("undecodable request: {e}")),
    };
    drop(bytes);
    tracing::Span::current().record("kind", req.kind());
    if read_only && !matches!(req, RpcRequest::Status | RpcRequest::Query(_)) {
        tracing::warn!(peer_key = %from, kind = req.kind(), "refused a write or Raft request on the read-only admin protocol");
        close(&conn, close_code::NOT_ADMITTED, "request not allowed on the admin protocol");
        return;
    }
    if let (RpcRequest::AppendStream, Some(gate)) = (&req, gate) {
        return super::append_lane::serve(conn, from, handler, cfg, gate, send, recv).await;
    }
    let stopped = send.stopped();
    let resp = tokio::select! {
        resp = handler.handle(from, req) => resp,
        _ = stopped => {
            tracing::debug!("caller gave up; handler cancelled");
            return;
        }
    };
    if write_answer(&mut send, &resp, &cfg).await {
        let _ = send.finish();
    }
}

/// Writes `answer` as one frame on `send` within the server's write deadline. A stream it
/// cannot be written on is reset with the code that says why. `false` if it was not written.
pub(super) async fn write_answer<T: serde::Serialize>(send: &mut SendStream, answer: &T, cfg: &QuicConfig) -> bool {
    let frame = match encode_frame(answer) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "response cannot be framed");
            let _ = send.reset(VarInt::from_u32(stream_code::RESPONSE_UNFRAMEABLE));
            return false;
        }
    };
    match tokio::time::timeout(cfg.response_write_deadline, send.write_all(&frame)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "response not delivered");
            false
        }
        Err(_) => {
            tracing::debug!(deadline = ?cfg.response_write_deadline, "response not written in time");
            let _ = send.reset(VarInt::from_u32(stream_code::WRITE_DEADLINE));
            false
        }
    }
}
