//! The transport seam: how nodes call each other.
//!
//! Raft RPCs and client forwarding are [`RpcRequest`]s sent through a [`Transport`] to the
//! peer's [`RpcHandler`]. The product uses QUIC (quinn); tests also use [`inproc`], an
//! in-process network with seeded fault injection (partitions, one-way loss, delay, drops,
//! crashes). Every call is bounded by a timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::core::event::SignedEvent;
use crate::core::types::NodeId;
use crate::raft::{PeerNode, SporeResponse, TypeConfig};

pub mod addr;
pub mod gossip;
pub mod inproc;
pub mod liveness;
pub mod quic;
pub mod rtt;

/// A boxed future, so transports and handlers can be trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A request from one node to another.
#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum RpcRequest {
    /// Raft log replication / heartbeat.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft election.
    Vote(VoteRequest<u64>),
    /// Raft snapshot chunk.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client write forwarded to the leader.
    Forward(SignedEvent),
    /// Ask the leader to add a node to the Raft membership (as learner, then voter if asked).
    AddMember {
        /// The node.
        node: PeerNode,
        /// Promote to voter once caught up.
        voter: bool,
    },
    /// Ask the leader to remove a node from the Raft membership.
    RemoveMember {
        /// The node.
        node: NodeId,
    },
    /// Ask the leader for a linearizable read index (the log index a follower must apply
    /// before serving a linearizable read).
    ReadIndex,
    /// Read-only: the node's status.
    Status,
    /// Read-only: a registry query against the node's local projection.
    Query(Query),
    /// Write a seed spore of the node's committed state to `path` on the node's own host.
    /// Only the node's own key may ask (an operator on that host, who can read its key file).
    ExportSeed {
        /// Where to write it, on the node's host.
        path: String,
        /// Include every event from genesis.
        include_events: bool,
    },
    /// A provisional event for the leader to commit (answered with [`RpcResponse::Forward`]);
    /// a member that is not the leader answers `NotLeader` naming it.
    Provisional(crate::core::provisional::ProvisionalEvent),
}

/// A read-only registry query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// Every node in the registry.
    Nodes,
    /// Every registered service.
    Services,
    /// Services with this name.
    ServicesByName(String),
    /// Services providing this capability.
    ServicesByCapability(String),
    /// Nodes committed as offline.
    OfflineNodes,
    /// The chain point (sequence number and hash) at this sequence number, if the node's
    /// ledger has it, and its head.
    ChainAt(u64),
    /// Chained events from `from` on, at most `max` (clipped to [`EVENTS_PER_QUERY_MAX`]):
    /// how a split-brain resolver reads the other branch of a fork.
    Events {
        /// First sequence number.
        from: u64,
        /// At most this many.
        max: u32,
    },
    /// A registry query answered from the most authoritative spore tier that has a
    /// non-empty answer, saying which ([`QueryAnswer::Tiered`]; see [`crate::node::tiers`]).
    Tiered(RegistryQuery),
}

/// A question to the registries, asked through [`Query::Tiered`]. (Not a nested [`Query`]:
/// a recursive type would let a peer's frame nest deep enough to exhaust the decoder's stack.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryQuery {
    /// Every node.
    Nodes,
    /// Every service.
    Services,
    /// Services with this name.
    ServicesByName(String),
    /// Services providing this capability.
    ServicesByCapability(String),
    /// Nodes committed as offline.
    OfflineNodes,
}

impl RegistryQuery {
    /// Answers from one projection.
    pub fn answer(&self, p: &crate::core::projection::Projection) -> RegistryAnswer {
        match self {
            RegistryQuery::Nodes => RegistryAnswer::Nodes(p.nodes().cloned().collect()),
            RegistryQuery::OfflineNodes => RegistryAnswer::Nodes(p.offline_nodes().cloned().collect()),
            RegistryQuery::Services => RegistryAnswer::Services(p.services().cloned().collect()),
            RegistryQuery::ServicesByName(n) => RegistryAnswer::Services(p.services_by_name(n).cloned().collect()),
            RegistryQuery::ServicesByCapability(c) => {
                RegistryAnswer::Services(p.services_by_capability(c).cloned().collect())
            }
        }
    }
}

/// The registries' answer to a [`RegistryQuery`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryAnswer {
    /// Node records.
    Nodes(Vec<crate::core::projection::NodeRecord>),
    /// Service records.
    Services(Vec<crate::core::projection::ServiceRecord>),
}

impl RegistryAnswer {
    /// Whether it lists nothing.
    pub fn is_empty(&self) -> bool {
        match self {
            RegistryAnswer::Nodes(v) => v.is_empty(),
            RegistryAnswer::Services(v) => v.is_empty(),
        }
    }
}

impl From<RegistryAnswer> for QueryAnswer {
    fn from(a: RegistryAnswer) -> QueryAnswer {
        match a {
            RegistryAnswer::Nodes(v) => QueryAnswer::Nodes(v),
            RegistryAnswer::Services(v) => QueryAnswer::Services(v),
        }
    }
}

impl Query {
    /// The registry question this asks (`None` for a chain or tiered query).
    pub fn as_registry(&self) -> Option<RegistryQuery> {
        Some(match self {
            Query::Nodes => RegistryQuery::Nodes,
            Query::Services => RegistryQuery::Services,
            Query::ServicesByName(n) => RegistryQuery::ServicesByName(n.clone()),
            Query::ServicesByCapability(c) => RegistryQuery::ServicesByCapability(c.clone()),
            Query::OfflineNodes => RegistryQuery::OfflineNodes,
            Query::ChainAt(_) | Query::Events { .. } | Query::Tiered(_) => return None,
        })
    }
}

/// Most events one [`Query::Events`] answers (64 records always fit in an RPC frame).
pub const EVENTS_PER_QUERY_MAX: u32 = 64;

/// The answer to a [`Query`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryAnswer {
    /// Node records.
    Nodes(Vec<crate::core::projection::NodeRecord>),
    /// Service records.
    Services(Vec<crate::core::projection::ServiceRecord>),
    /// To `ChainAt`: the point asked for (if held), the head and the network.
    Chain {
        /// The point at the asked sequence number.
        at: Option<crate::raft::ChainPoint>,
        /// The node's head.
        head: Option<crate::raft::ChainPoint>,
        /// The node's network.
        fingerprint: Option<crate::core::types::NetworkFingerprint>,
    },
    /// To `Events`: the events, in order (empty past the head).
    Events(Vec<crate::core::event::ChainedEvent>),
    /// To `Tiered`: the answer of the most authoritative tier that has a non-empty one, with
    /// that tier and its chain point (`None`: no tier has any).
    Tiered(Option<crate::node::tiers::Tiered<RegistryAnswer>>),
}

impl RpcRequest {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RpcRequest::AppendEntries(_) => "append_entries",
            RpcRequest::Vote(_) => "vote",
            RpcRequest::InstallSnapshot(_) => "install_snapshot",
            RpcRequest::Forward(_) => "forward",
            RpcRequest::AddMember { .. } => "add_member",
            RpcRequest::RemoveMember { .. } => "remove_member",
            RpcRequest::ReadIndex => "read_index",
            RpcRequest::Status => "status",
            RpcRequest::Query(_) => "query",
            RpcRequest::ExportSeed { .. } => "export_seed",
            RpcRequest::Provisional(_) => "provisional",
        }
    }
}

/// Why a forwarded request failed at the receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteFailure {
    /// The receiver is not the leader; it names the leader if it knows one.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader it knows of.
        leader: Option<PeerNode>,
    },
    /// Anything else, as text.
    #[error("{0}")]
    Other(String),
    /// The receiver, a latent node that reached no voter, holds the forwarded write as a
    /// provisional event: it travels by gossip and is committed once a voter is reachable.
    #[error("held as provisional event {} until a voter is reachable", id.short())]
    Provisional {
        /// The event's id.
        id: crate::core::provisional::EventId,
    },
}

/// A response to an [`RpcRequest`] of the same kind.
#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum RpcResponse {
    /// To `AppendEntries`.
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    /// To `Vote`.
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    /// To `InstallSnapshot`.
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// To `Forward`.
    Forward(Result<SporeResponse, RemoteFailure>),
    /// To `AddMember` / `RemoveMember`.
    Membership(Result<(), RemoteFailure>),
    /// To `ReadIndex`: the log index to wait for.
    ReadIndex(Result<Option<u64>, RemoteFailure>),
    /// To `Status`.
    Status(Result<crate::node::SporeStatus, RemoteFailure>),
    /// To `Query`.
    Query(Result<QueryAnswer, RemoteFailure>),
    /// To `ExportSeed`: the seed's head.
    ExportSeed(Result<crate::raft::ChainPoint, RemoteFailure>),
}

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

    fn handle(&self, from: NodeId, req: RpcRequest) -> BoxFuture<'_, RpcResponse> {
        match self.inner.get() {
            Some(h) => h.handle(from, req),
            None => Box::pin(async move {
                let starting = || RemoteFailure::Other("node is starting".into());
                match req {
                    RpcRequest::Forward(_) | RpcRequest::Provisional(_) => RpcResponse::Forward(Err(starting())),
                    RpcRequest::ReadIndex => RpcResponse::ReadIndex(Err(starting())),
                    RpcRequest::Status => RpcResponse::Status(Err(starting())),
                    RpcRequest::Query(_) => RpcResponse::Query(Err(starting())),
                    RpcRequest::ExportSeed { .. } => RpcResponse::ExportSeed(Err(starting())),
                    RpcRequest::AddMember { .. } | RpcRequest::RemoveMember { .. } => {
                        RpcResponse::Membership(Err(starting()))
                    }
                    // Raft RPCs before the node is up: report a fatal-free "stopped" node.
                    RpcRequest::AppendEntries(_) | RpcRequest::Vote(_) => {
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
