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
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, StreamAppendResult, VoteRequest, VoteResponse};
use openraft_legacy::network_v1::{
    Adapter, ChunkedSnapshotReceiver, InstallSnapshotError, InstallSnapshotRequest, InstallSnapshotResponse,
    RaftNetwork,
};

use super::{AppendAnswers, AppendRequests, BoxFuture, RpcHandler, SharedTransport, TransportError};
use crate::core::types::NodeId;
use crate::raft::error::ConsensusError;
use crate::raft::inbound::{check_append, check_snapshot_chunk, SnapshotHeld};
use crate::raft::proposer::Proposer;
use crate::raft::{raft_id, Raft, RpcRequest, RpcResponse, SnapshotData, TypeConfig};
use crate::wire::rpc::{PeerNode, RemoteFailure};

/// Creates one [`PeerClient`] per Raft peer.
#[derive(Clone)]
pub(crate) struct NetworkFactory {
    transport: SharedTransport,
    append_answer_floor: Duration,
}

impl NetworkFactory {
    /// Over `transport`; an append stream's answers may take `append_answer_floor` (the node's
    /// RPC floor, `Timeouts::rpc`) before the stream is given up, see [`PeerNetwork`].
    pub(crate) fn new(transport: SharedTransport, append_answer_floor: Duration) -> Self {
        NetworkFactory { transport, append_answer_floor }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> Self::Network {
        let client = PeerClient { transport: self.transport.clone(), target, node: node.clone() };
        PeerNetwork { calls: client.into_v2(), append_answer_floor: self.append_answer_floor }
    }
}

/// openraft's network to one peer: [`PeerClient`]'s calls behind openraft-legacy's v1 adapter
/// (snapshots go in chunks, so every frame stays bounded), and replication as one pipelined
/// append stream where the transport carries them ([`Transport::append_stream`]).
///
/// openraft's default replication sends one AppendEntries and waits for its answer before the
/// next. It also sends each new commit index in an AppendEntries of its own, so a write whose
/// entry is appended while that one is in flight waited for its round trip. On a stream, the
/// entry goes at once.
///
/// openraft asks each answer on a stream within one heartbeat interval (100 ms by default), and
/// sets no timer of its own. An answer waits for the follower's fsync, which under load on a
/// busy disk took longer: the stream broke and replication started over, every few seconds in
/// the 64-client bench over QUIC. Answers may take the node's RPC floor instead, as calls do;
/// heartbeats go as calls of their own, so a follower that died is still noticed as soon.
///
/// [`Transport::append_stream`]: super::Transport::append_stream
pub(crate) struct PeerNetwork {
    /// Calls, and snapshots in chunks.
    calls: Adapter<TypeConfig, PeerClient, SnapshotData>,
    /// The least an append stream's answer may take ([`NetworkFactory::new`]).
    append_answer_floor: Duration,
}

type StreamReplies<'s> = openraft::base::BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>;

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.calls.append_entries(rpc, option).await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> openraft::base::BoxFuture<'s, Result<StreamReplies<'s>, RPCError<TypeConfig>>>
    where
        S: futures_util::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let client = self.calls.inner();
        if !client.transport.streams_appends() {
            return openraft::network::stream_append_sequential(self, input, option);
        }
        let (transport, node) = (client.transport.clone(), client.node.clone());
        let answer_floor = option.hard_ttl().max(self.append_answer_floor);
        Box::pin(async move {
            use futures_util::StreamExt;
            use tracing::Instrument;
            // openraft puts no timeout around a stream (its replication awaits `stream_append`
            // as it is), so there is none to stretch: each answer's deadline is the transport's.
            let deadline = transport.deadline(&node, answer_floor);
            let span = tracing::trace_span!("raft_append_stream", to = %node, ?deadline);
            // Two instants of a write's path, as empty spans (`benches/latency_breakdown`
            // splits the replication by them): a request handed from openraft to the
            // transport, and an answer handed back to openraft.
            // (The id's short form is made only when a subscriber takes these spans.)
            let follower = node.node;
            let input = input.inspect(move |req| {
                tracing::trace_span!("append_handed", node = %follower.short(), events = req.entries.len() as u64)
                    .in_scope(|| ());
            });
            let replies = transport
                .append_stream(&node, Box::pin(input), answer_floor)
                .instrument(span)
                .await
                .map_err(transport_err)?;
            let replies = replies.map(move |r| {
                tracing::trace_span!("append_answer_taken", node = %follower.short()).in_scope(|| ());
                match r {
                    Ok(Ok(answer)) => Ok(answer),
                    Ok(Err(openraft::error::Fatal::Stopped)) => Err(transport_err(stopped_peer(&node))),
                    Ok(Err(fatal)) => Err(RPCError::Network(NetworkError::new(&fatal))),
                    Err(e) => Err(transport_err(e)),
                }
            });
            Ok(Box::pin(replies) as StreamReplies<'s>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.calls.vote(rpc, option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.calls.pre_vote(rpc, option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: openraft::type_config::alias::VoteOf<TypeConfig>,
        snapshot: openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl std::future::Future<Output = openraft::error::ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<openraft::raft::SnapshotResponse<TypeConfig>, openraft::error::StreamingError<TypeConfig>> {
        self.calls.full_snapshot(vote, snapshot, cancel, option).await
    }

    async fn transfer_leader(
        &mut self,
        req: openraft::raft::TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<openraft::raft::TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.calls.transfer_leader(req, option).await
    }

    fn backoff(&self) -> Option<openraft::network::Backoff> {
        self.calls.backoff()
    }
}

/// How much longer than the transport's deadline openraft's timeout waits for a call.
const DEADLINE_SLACK: Duration = Duration::from_millis(50);

/// The transport's deadline for a call or stream to `node` whose openraft floor is `floor`;
/// when it is longer, asks openraft's timeout around the call to wait a little beyond it, so
/// the transport's timeout — with its error — comes first. Call it from the call's first poll.
fn stretch_openraft_timeout(transport: &SharedTransport, node: &PeerNode, floor: Duration) -> Duration {
    let deadline = transport.deadline(node, floor);
    if deadline > floor {
        crate::raft::runtime::extend_deadline(tokio::time::Instant::now() + deadline + DEADLINE_SLACK);
    }
    deadline
}

/// A peer whose Raft is stopped — or that refuses this node's Raft traffic, as a node that
/// yielded a split-brain refuses the losing chain's members — is out of reach: openraft backs
/// off instead of retrying (and logging) at every heartbeat.
fn stopped_peer(node: &PeerNode) -> TransportError {
    TransportError::Unreachable(format!("{} (its Raft is stopped for this node)", node.addr))
}

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
        let deadline = stretch_openraft_timeout(&self.transport, &self.node, ttl);
        // Instrumented, not entered: a guard held across the await would mark whatever else
        // runs on this thread meanwhile as part of the RPC.
        let span = tracing::trace_span!("raft_rpc", kind = req.kind(), to = %self.node, ?deadline);
        self.transport.call(&self.node, req, ttl).instrument(span).await
    }

    fn remote<E: std::error::Error>(&self, e: RaftError<TypeConfig, E>) -> RpcErr<E> {
        if matches!(e, RaftError::Fatal(openraft::error::Fatal::Stopped)) {
            return transport_err(stopped_peer(&self.node));
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

/// The answer to a Raft request of the wrong shape from `from` ([`check_append`]): logged,
/// and refused as no request kind's answer, which the caller reports as an unexpected response.
fn malformed(from: NodeId, why: &str) -> RpcResponse {
    tracing::warn!(peer = %from.short(), why, "refused a malformed Raft request");
    RpcResponse::Status(Err(RemoteFailure::Other(format!("malformed Raft request: {why}"))))
}

/// Answers RPCs for one node by driving its Raft.
pub(crate) struct RaftService {
    pub(super) raft: Raft,
    pub(super) me: PeerNode,
    proposer: Proposer,
    pub(super) ledger: crate::raft::state_machine::SharedLedger,
    /// What has arrived of the snapshot being sent to this node ([`check_snapshot_chunk`]).
    snapshot_held: std::sync::Mutex<SnapshotHeld>,
    /// The largest snapshot this node takes (`Timeouts::snapshot_bytes_max`).
    snapshot_bytes_max: u64,
}

impl RaftService {
    /// For `raft`, which runs as `me`; forwarded writes go through `proposer`; membership
    /// requests are checked against the registry in `ledger`; snapshots larger than
    /// `snapshot_bytes_max` are refused.
    pub(crate) fn new(
        raft: Raft,
        me: PeerNode,
        proposer: Proposer,
        ledger: crate::raft::state_machine::SharedLedger,
        snapshot_bytes_max: u64,
    ) -> Self {
        RaftService { raft, me, proposer, ledger, snapshot_held: std::sync::Mutex::default(), snapshot_bytes_max }
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
    /// openraft's pipelined appends, driven by the task that reads the answers
    /// ([`crate::raft::append_pipeline`]), for the requests up to the first malformed one
    /// ([`check_append`]): the stream ends there, its answers short of its requests.
    fn append_stream(&self, from: NodeId, requests: AppendRequests) -> AppendAnswers {
        use futures_util::StreamExt;
        tracing::trace!(from = %from.short(), me = %self.me, "append stream opened");
        // The other two instants of the replication's split (see `RaftNetwork::stream_append`):
        // a request taken by openraft on this follower, and its answer leaving openraft.
        let me = self.me.node;
        let well_formed = requests.take_while(move |req| {
            // Logged as a call's would be; on a stream the answer is the stream's end.
            let ok = check_append(req).map_err(|why| malformed(from, &why)).is_ok();
            tracing::trace_span!("append_taken", node = %me.short(), events = req.entries.len() as u64).in_scope(|| ());
            std::future::ready(ok)
        });
        let answers =
            crate::raft::append_pipeline::pipelined(self.raft.clone(), Box::pin(well_formed)).inspect(move |_| {
                tracing::trace_span!("append_answered", node = %me.short()).in_scope(|| ());
            });
        Box::pin(answers)
    }

    fn handle(&self, from: NodeId, req: RpcRequest) -> BoxFuture<'_, RpcResponse> {
        use tracing::Instrument;
        let span = tracing::trace_span!("rpc_serve", kind = req.kind(), from = %from.short(), me = %self.me);
        Box::pin(
            async move {
                match req {
                    RpcRequest::AppendEntries(r) => match check_append(&r) {
                        Ok(()) => RpcResponse::AppendEntries(self.raft.append_entries(r).await),
                        Err(why) => malformed(from, &why),
                    },
                    RpcRequest::Vote(r) => RpcResponse::Vote(self.raft.vote(r).await),
                    RpcRequest::InstallSnapshot(r) => {
                        let checked = {
                            let mut held = crate::core::sync::lock(&self.snapshot_held);
                            check_snapshot_chunk(&r, &held, self.snapshot_bytes_max).map(|now| *held = Some(now))
                        };
                        match checked {
                            Ok(()) => RpcResponse::InstallSnapshot(self.raft.install_snapshot(r).await),
                            Err(why) => malformed(from, &why),
                        }
                    }
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
                    RpcRequest::AppendStream => RpcResponse::Status(Err(RemoteFailure::Other(
                        "an append stream opens a stream of its own; it is not a call".into(),
                    ))),
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
