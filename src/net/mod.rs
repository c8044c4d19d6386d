//! The transport seam: how nodes call each other.
//!
//! Raft RPCs and client forwarding are [`RpcRequest`]s ([`crate::wire::rpc`]'s messages) sent
//! through a [`Transport`] to the peer's [`RpcHandler`]. The product uses QUIC (quinn); tests also use [`inproc`], an
//! in-process network with seeded fault injection (partitions, one-way loss, delay, drops,
//! crashes). Every call is bounded by a timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::core::types::NodeId;
use crate::raft::{AppendReply, AppendRequest, RpcRequest, RpcResponse};
use crate::wire::rpc::{PeerNode, RemoteFailure};

pub mod addr;
pub(crate) mod append_stream;
pub mod gossip;
pub mod inproc;
pub mod liveness;
mod membership;
pub mod quic;
pub(crate) mod raft_rpc;
pub mod rtt;

/// A boxed future, so transports and handlers can be trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The requests of an append stream, in log order ([`Transport::append_stream`]).
pub type AppendRequests = futures_util::stream::BoxStream<'static, AppendRequest>;
/// What a node answers the requests of an append stream, one answer per request in their
/// order; it ends after a conflict, a higher vote or a stopped Raft
/// ([`RpcHandler::append_stream`]).
pub type AppendAnswers = futures_util::stream::BoxStream<'static, AppendReply>;
/// The answers an append stream's caller gets: the peer's answers, or why the stream broke
/// (it ends after the first error).
pub type AppendReplies = futures_util::stream::BoxStream<'static, Result<AppendReply, TransportError>>;

/// Why a call did not get a response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer is down, partitioned away, or unknown to the transport.
    #[error("peer {0} is unreachable")]
    Unreachable(String),
    /// This node could not open its own endpoint: the address is in use, not on this host,
    /// not permitted, or not an address.
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        /// The local address asked for.
        addr: String,
        /// Why, in the OS's words.
        cause: String,
    },
    /// No response within the deadline.
    #[error("call to {peer} timed out after {after:?}")]
    Timeout {
        /// The peer.
        peer: String,
        /// The deadline.
        after: Duration,
    },
    /// The peer refused us (unknown or unadmitted key, wrong network).
    #[error("peer {peer} refused the connection: {reason}")]
    Refused {
        /// The peer.
        peer: String,
        /// Why.
        reason: String,
    },
    /// A frame that could not be encoded/decoded or exceeded its size limit.
    #[error("bad frame from {peer}: {reason}")]
    BadFrame {
        /// The peer.
        peer: String,
        /// What was wrong.
        reason: String,
    },
    /// The response did not match the request kind.
    #[error("unexpected response from {0}")]
    UnexpectedResponse(String),
}

/// Serves requests that arrive for one node.
pub trait RpcHandler: Send + Sync + 'static {
    /// Handles `req` sent by the authenticated peer `from`.
    fn handle(&self, from: NodeId, req: RpcRequest) -> BoxFuture<'_, RpcResponse>;

    /// Serves an append stream from the authenticated peer `from`: hands `requests` to the
    /// node's Raft as they arrive and answers each, in order. A handler without a Raft answers
    /// that its Raft is stopped.
    fn append_stream(&self, from: NodeId, requests: AppendRequests) -> AppendAnswers {
        let _ = from;
        stopped_answers(requests)
    }

    /// The node's gossip service, if it serves the latent tier.
    fn gossip(&self) -> Option<Arc<dyn gossip::GossipAcceptor>> {
        None
    }

    /// The node's failure detector, if it runs one.
    fn liveness(&self) -> Option<Arc<dyn liveness::DatagramSink>> {
        None
    }
}

/// Sends requests to peers.
pub trait Transport: Send + Sync + 'static {
    /// Sends `req` to `to` and waits for the response at most [`Transport::deadline`]`(to,
    /// timeout)`: `timeout`, or longer on a link whose measured round trips need it.
    fn call(
        &self,
        to: &PeerNode,
        req: RpcRequest,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<RpcResponse, TransportError>>;

    /// How long a call to `to` whose caller asked for `floor` may take: `floor`, unless the
    /// round trips measured to `to` need longer (see [`rtt`]). Never less than `floor`.
    fn deadline(&self, to: &PeerNode, floor: Duration) -> Duration {
        let _ = to;
        floor
    }

    /// Whether this transport carries append streams ([`Transport::append_stream`]). Without
    /// them, replication sends one AppendEntries call at a time.
    fn streams_appends(&self) -> bool {
        false
    }

    /// Opens an append stream to `to`: sends `requests` in order as they come, without
    /// waiting for answers, and returns the peer's answers in the same order. An answer not
    /// back within [`Transport::deadline`]`(to, floor)` of its request's sending breaks the
    /// stream with [`TransportError::Timeout`]. Only for a transport that
    /// [streams appends](Transport::streams_appends); the default refuses.
    fn append_stream(
        &self,
        to: &PeerNode,
        requests: AppendRequests,
        floor: Duration,
    ) -> BoxFuture<'_, Result<AppendReplies, TransportError>> {
        let _ = (requests, floor);
        let addr = to.addr.clone();
        Box::pin(
            async move { Err(TransportError::Unreachable(format!("{addr} (this transport has no append streams)"))) },
        )
    }

    /// What this transport measured of the round trips to `node`, if it measures them.
    fn round_trip(&self, node: &NodeId) -> Option<rtt::RoundTrip> {
        let _ = node;
        None
    }

    /// Opens gossip streams, if this transport carries the latent tier.
    fn gossip_dialer(&self) -> Option<Arc<dyn gossip::GossipDialer>> {
        None
    }

    /// Sends SWIM datagrams, if this transport carries them.
    fn swim_link(&self) -> Option<Arc<dyn liveness::SwimLink>> {
        None
    }
}

/// A shared transport.
pub type SharedTransport = Arc<dyn Transport>;

/// A node's attachment to a network: its outgoing transport and how to detach.
pub struct Binding {
    /// Calls out to peers.
    pub transport: SharedTransport,
    /// The address peers reach this node at (the bound address, e.g. after port 0).
    pub addr: String,
    closer: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Binding {
    /// A binding that runs `closer` when closed or dropped.
    pub fn new(transport: SharedTransport, addr: String, closer: impl FnOnce() + Send + Sync + 'static) -> Self {
        Binding { transport, addr, closer: Some(Box::new(closer)) }
    }

    /// Stops serving requests for this node.
    pub fn close(&mut self) {
        if let Some(c) = self.closer.take() {
            c();
        }
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        self.close();
    }
}

/// A network a node can join: the QUIC endpoint in the product, [`inproc::InProcNetwork`] in
/// simulation tests.
pub trait NetworkBackend: Send + Sync + 'static {
    /// Starts serving `handler` for `me` and returns the outgoing side.
    fn bind(&self, me: &PeerNode, handler: Arc<dyn RpcHandler>) -> BoxFuture<'_, Result<Binding, TransportError>>;

    /// Checks that `addr` is a peer address this backend can dial, before it is committed
    /// into the registry or used to join. The default accepts anything (the in-process
    /// network names its nodes freely).
    fn check_address(&self, addr: &str) -> Result<(), addr::AddressError> {
        let _ = addr;
        Ok(())
    }
}

impl NetworkBackend for inproc::InProcNetwork {
    fn bind(&self, me: &PeerNode, handler: Arc<dyn RpcHandler>) -> BoxFuture<'_, Result<Binding, TransportError>> {
        let me = me.clone();
        Box::pin(async move {
            self.register(&me.addr, me.node, handler);
            let net = self.clone();
            let addr = me.addr.clone();
            let transport: SharedTransport = Arc::new(self.transport(&me.addr));
            Ok(Binding::new(transport, me.addr.clone(), move || net.crash(&addr)))
        })
    }
}

/// The answers of a node whose Raft cannot take an append stream: "stopped", as openraft
/// reports a Raft that is shut down, to the first request (an answer before any request would
/// answer nothing the caller sent); none if no request comes.
pub(crate) fn stopped_answers(mut requests: AppendRequests) -> AppendAnswers {
    use futures_util::StreamExt;
    Box::pin(
        futures_util::stream::once(async move { requests.next().await })
            .filter_map(|first| async move { first.map(|_| Err(openraft::error::Fatal::Stopped)) }),
    )
}

/// A handler whose target is set after binding (the Raft service needs the transport that
/// binding returns). Until then it answers that the node is starting.
#[derive(Default)]
pub struct LateHandler {
    inner: std::sync::OnceLock<Arc<dyn RpcHandler>>,
}

impl LateHandler {
    /// Sets the real handler (once).
    pub fn set(&self, h: Arc<dyn RpcHandler>) {
        let _ = self.inner.set(h);
    }
}

impl RpcHandler for LateHandler {
    fn gossip(&self) -> Option<Arc<dyn gossip::GossipAcceptor>> {
        self.inner.get().and_then(|h| h.gossip())
    }

    fn liveness(&self) -> Option<Arc<dyn liveness::DatagramSink>> {
        self.inner.get().and_then(|h| h.liveness())
    }

    fn append_stream(&self, from: NodeId, requests: AppendRequests) -> AppendAnswers {
        match self.inner.get() {
            Some(h) => h.append_stream(from, requests),
            None => stopped_answers(requests),
        }
    }

    fn handle(&self, from: NodeId, req: RpcRequest) -> BoxFuture<'_, RpcResponse> {
        match self.inner.get() {
            Some(h) => h.handle(from, req),
            None => Box::pin(async move {
                let starting = RemoteFailure::starting;
                match req {
                    RpcRequest::Forward(_) | RpcRequest::Provisional(_) => RpcResponse::Forward(Err(starting())),
                    RpcRequest::ReadIndex => RpcResponse::ReadIndex(Err(starting())),
                    RpcRequest::Status => RpcResponse::Status(Err(starting())),
                    RpcRequest::Query(_) => RpcResponse::Query(Err(starting())),
                    RpcRequest::ExportSeed { .. } => RpcResponse::ExportSeed(Err(starting())),
                    RpcRequest::AddMember { .. } | RpcRequest::RemoveMember { .. } | RpcRequest::SetVoter { .. } => {
                        RpcResponse::Membership(Err(starting()))
                    }
                    // Raft RPCs before the node is up: report a fatal-free "stopped" node.
                    RpcRequest::AppendEntries(_) | RpcRequest::Vote(_) | RpcRequest::AppendStream => {
                        RpcResponse::Vote(Err(openraft::error::RaftError::Fatal(openraft::error::Fatal::Stopped)))
                    }
                    RpcRequest::InstallSnapshot(_) => RpcResponse::InstallSnapshot(Err(
                        openraft::error::RaftError::Fatal(openraft::error::Fatal::Stopped),
                    )),
                }
            }),
        }
    }
}
