//! openraft's network over our [`Transport`](super::Transport) seam, and the server side that answers RPCs:
//! the adapter between the raft layer below and the transports of this layer, so it lives here.
//!
//! openraft gives each call a time to live (`heartbeat_interval` for AppendEntries,
//! `election_timeout_min` for votes). A call here lasts as long as the transport's deadline for
//! that peer instead, which follows the measured round trips and is never shorter than
//! openraft's ([`Transport::deadline`](super::Transport::deadline)); [`crate::raft::runtime`]
//! lets openraft's own timeout around heartbeats and votes wait for it. A call that still times
//! out is a network error, which openraft retries at the next heartbeat, not an unreachable peer
//! it backs off from.
//!
//! Snapshots travel in chunks (openraft-legacy's v1 transfer behind [`Adapter`]): our frames are
//! bounded ([`crate::net::quic::FRAME_BYTES_MAX`]) and a ledger's snapshot is not.

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft_legacy::network_v1::{
    Adapter, ChunkedSnapshotReceiver, InstallSnapshotError, InstallSnapshotRequest, InstallSnapshotResponse,
    RaftNetwork,
};

use super::{BoxFuture, RpcHandler, SharedTransport, TransportError};
use crate::core::types::NodeId;
use crate::raft::error::ConsensusError;
use crate::raft::proposer::Proposer;
use crate::raft::{raft_id, Raft, RpcRequest, RpcResponse, SnapshotData, TypeConfig};
use crate::wire::rpc::{PeerNode, RemoteFailure};

/// Creates one [`PeerClient`] per Raft peer.
#[derive(Clone)]
pub(crate) struct NetworkFactory {
    transport: SharedTransport,
}

impl NetworkFactory {
    /// Over `transport`.
    pub(crate) fn new(transport: SharedTransport) -> Self {
        NetworkFactory { transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    /// Snapshots go in chunks (openraft-legacy's v1 transfer): every frame stays bounded.
    type Network = Adapter<TypeConfig, PeerClient, SnapshotData>;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> Self::Network {
        PeerClient { transport: self.transport.clone(), target, node: node.clone() }.into_v2()
    }
}

/// How much longer than the transport's deadline openraft's timeout waits for a call.
const DEADLINE_SLACK: Duration = Duration::from_millis(50);

/// openraft's client for one peer.
pub(crate) struct PeerClient {
    transport: SharedTransport,
    target: u64,
    node: PeerNode,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<TypeConfig, RaftError<TypeConfig, E>>;

fn transport_err<E: std::error::Error>(e: TransportError) -> RPCError<TypeConfig, E> {
    match e {
        TransportError::Unreachable(_) | TransportError::Refused { .. } => RPCError::Unreachable(Unreachable::new(&e)),
        // A slow answer is no sign of a dead peer: backing off (500 ms without any call) would
        // also hold back the heartbeats that keep the peer from starting an election.
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

impl PeerClient {
    /// Sends `req` with openraft's `ttl` as the floor of its deadline. Call it from the first
    /// poll of openraft's call (no `.await` before it), so the deadline reaches openraft's
    /// timeout around it.
    async fn send(&self, req: RpcRequest, ttl: Duration) -> Result<RpcResponse, TransportError> {
        use tracing::Instrument;
        let deadline = self.transport.deadline(&self.node, ttl);
        if deadline > ttl {
            // A little beyond ours, so the transport's timeout — with its error — comes first.
            crate::raft::runtime::extend_deadline(tokio::time::Instant::now() + deadline + DEADLINE_SLACK);
        }
        // Instrumented, not entered: a guard held across the await would mark whatever else
        // runs on this thread meanwhile as part of the RPC.
        let span = tracing::trace_span!("raft_rpc", kind = req.kind(), to = %self.node, ?deadline);
        self.transport.call(&self.node, req, ttl).instrument(span).await
    }

    fn remote<E: std::error::Error>(&self, e: RaftError<TypeConfig, E>) -> RpcErr<E> {
        // A peer whose Raft is stopped — or that refuses this node's Raft traffic, as a node
        // that yielded a split-brain refuses the losing chain's members — is out of reach:
        // openraft backs off instead of retrying (and logging) at every heartbeat.
        if matches!(e, RaftError::Fatal(openraft::error::Fatal::Stopped)) {
            return transport_err(TransportError::Unreachable(format!(
                "{} (its Raft is stopped for this node)",
                self.node.addr
            )));
        }
        RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e))
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<TypeConfig, E> {
        transport_err(TransportError::UnexpectedResponse(self.node.addr.clone()))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcErr> {
        match self.send(RpcRequest::AppendEntries(rpc), option.hard_ttl()).await.map_err(transport_err)? {
            RpcResponse::AppendEntries(r) => r.map_err(|e| self.remote(e)),
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<TypeConfig>, RpcErr<InstallSnapshotError>> {
        match self.send(RpcRequest::InstallSnapshot(rpc), option.hard_ttl()).await.map_err(transport_err)? {
            RpcResponse::InstallSnapshot(r) => r.map_err(|e| self.remote(e)),
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        match self.send(RpcRequest::Vote(rpc), option.hard_ttl()).await.map_err(transport_err)? {
            RpcResponse::Vote(r) => r.map_err(|e| self.remote(e)),
            _ => Err(self.unexpected()),
        }
    }
}

/// Answers RPCs for one node by driving its Raft.
pub(crate) struct RaftService {
    pub(super) raft: Raft,
    pub(super) me: PeerNode,
    proposer: Proposer,
    pub(super) ledger: crate::raft::state_machine::SharedLedger,
}

impl RaftService {
    /// For `raft`, which runs as `me`; forwarded writes go through `proposer`; membership
    /// requests are checked against the registry in `ledger`.
    pub(crate) fn new(
        raft: Raft,
        me: PeerNode,
        proposer: Proposer,
        ledger: crate::raft::state_machine::SharedLedger,
    ) -> Self {
        RaftService { raft, me, proposer, ledger }
    }

    pub(super) fn not_leader(&self) -> RemoteFailure {
        let m = self.raft.metrics().borrow_watched().clone();
        let leader = m.current_leader.and_then(|id| m.membership_config.membership().get_node(&id).cloned());
        RemoteFailure::NotLeader { leader }
    }

    /// On the leader: commits a provisional event (the state machine checks the author's
    /// statement and that the chain does not hold the event already).
    pub(crate) async fn commit_provisional(
        &self,
        p: crate::core::provisional::ProvisionalEvent,
    ) -> Result<crate::raft::SporeResponse, RemoteFailure> {
        if self.raft.metrics().borrow_watched().current_leader != Some(raft_id(&self.me.node)) {
            return Err(self.not_leader());
        }
        // A statement that does not verify is refused before it takes a log entry.
        if let Err(e) = p.verify_statement() {
            return Ok(crate::raft::SporeResponse::Rejected(crate::core::projection::Rejection::ProvisionalRefused(
                e.to_string().into(),
            )));
        }
        match self.raft.client_write(crate::raft::SporeRequest::Provisional(p)).await {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(_))) => Err(self.not_leader()),
            Err(e) => Err(RemoteFailure::Other(e.to_string())),
        }
    }
}

impl RpcHandler for RaftService {
    fn handle(&self, from: NodeId, req: RpcRequest) -> BoxFuture<'_, RpcResponse> {
        use tracing::Instrument;
        let span = tracing::trace_span!("rpc_serve", kind = req.kind(), from = %from.short(), me = %self.me);
        Box::pin(
            async move {
                match req {
                    RpcRequest::AppendEntries(r) => RpcResponse::AppendEntries(self.raft.append_entries(r).await),
                    RpcRequest::Vote(r) => RpcResponse::Vote(self.raft.vote(r).await),
                    RpcRequest::InstallSnapshot(r) => RpcResponse::InstallSnapshot(self.raft.install_snapshot(r).await),
                    RpcRequest::Forward(ev) => RpcResponse::Forward(match self.proposer.propose(ev).await {
                        Ok(resp) => Ok(resp),
                        Err(ConsensusError::NotLeader) => Err(self.not_leader()),
                        Err(e) => Err(RemoteFailure::Other(e.to_string())),
                    }),
                    RpcRequest::Provisional(p) => RpcResponse::Forward(self.commit_provisional(p).await),
                    RpcRequest::AddMember { node, voter } => {
                        RpcResponse::Membership(self.add_member(from, node, voter).await)
                    }
                    RpcRequest::RemoveMember { node } => RpcResponse::Membership(self.remove_member(from, node).await),
                    RpcRequest::SetVoter { node, voter } => {
                        RpcResponse::Membership(self.set_voter(from, node, voter).await)
                    }
                    RpcRequest::Status => {
                        RpcResponse::Status(Err(RemoteFailure::Other("status is served by the node, not Raft".into())))
                    }
                    RpcRequest::ExportSeed { .. } => RpcResponse::ExportSeed(Err(RemoteFailure::Other(
                        "seed export is served by the node, not Raft".into(),
                    ))),
                    RpcRequest::Query(_) => {
                        RpcResponse::Query(Err(RemoteFailure::Other("queries are served by the node, not Raft".into())))
                    }
                    RpcRequest::ReadIndex => RpcResponse::ReadIndex(
                        match self.raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex).await {
                            Ok(read) => Ok(Some(read.index())),
                            Err(RaftError::APIError(openraft::error::LinearizableReadError::ForwardToLeader(_))) => {
                                Err(self.not_leader())
                            }
                            Err(e) => Err(RemoteFailure::Other(e.to_string())),
                        },
                    ),
                }
            }
            .instrument(span),
        )
    }
}
