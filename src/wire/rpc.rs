//! The RPC protocol's messages: what one node asks another ([`RpcRequest`]) and what it
//! answers ([`RpcResponse`]), with the peer names and failures they carry.
//!
//! Three requests carry openraft's own messages (AppendEntries, Vote, InstallSnapshot) and
//! their answers, and a forwarded write is answered with the Raft state machine's response.
//! Those types need the raft layer's type configuration, which this layer cannot name, so the
//! envelope is generic over them ([`RaftMessages`]) and `crate::raft` instantiates it
//! (`crate::raft::RpcRequest`, `crate::raft::RpcResponse`). The generic changes nothing on
//! the wire: variants, their order and every field are the protocol's, postcard-encoded in
//! one frame (`crate::net::quic`'s framing).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::core::event::SignedEvent;
use crate::core::types::{ChainPoint, NodeId};
use crate::wire::query::{Query, QueryAnswer};
use crate::wire::status::SporeStatus;

/// A Raft member as openraft sees it: its full key and where to reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// The node's key (its [`NodeId`]).
    pub node: NodeId,
    /// `host:port` of its QUIC endpoint, or a name in the in-process network.
    pub addr: String,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.node.short(), self.addr)
    }
}

/// What a message inside an RPC is: debuggable, and encoded with serde (postcard on the wire).
pub trait Message: fmt::Debug + Serialize + for<'de> Deserialize<'de> {}

impl<T: fmt::Debug + Serialize + for<'de> Deserialize<'de>> Message for T {}

/// The Raft layer's messages an RPC carries, opaque here: openraft's requests and answers for
/// the raft layer's type configuration, and its state machine's answer to a write
/// (`crate::raft::OpenRaft`).
pub trait RaftMessages {
    /// Raft log replication / heartbeat.
    type AppendEntries: Message;
    /// The answer to [`Self::AppendEntries`] (a `Result`: openraft's error travels too).
    type AppendEntriesReply: Message;
    /// Raft election.
    type Vote: Message;
    /// The answer to [`Self::Vote`] (a `Result`).
    type VoteReply: Message;
    /// Raft snapshot chunk.
    type InstallSnapshot: Message;
    /// The answer to [`Self::InstallSnapshot`] (a `Result`).
    type InstallSnapshotReply: Message;
    /// The state machine's answer to one committed write.
    type Applied: Message;
    /// The answer to one request of an append stream ([`RpcRequest::AppendStream`]): the log
    /// id matched, a conflict or a higher vote (which end the stream), or why the receiver's
    /// Raft cannot answer.
    type AppendStreamReply: Message;
}

/// A request from one node to another.
#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum RpcRequest<R: RaftMessages> {
    /// Raft log replication / heartbeat.
    AppendEntries(R::AppendEntries),
    /// Raft election.
    Vote(R::Vote),
    /// Raft snapshot chunk.
    InstallSnapshot(R::InstallSnapshot),
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
    /// Ask the leader to make a member a voter (promote a learner) or a learner (demote a
    /// voter). Appended last: older peers decode every variant before it unchanged.
    SetVoter {
        /// The member.
        node: NodeId,
        /// Voter (`true`) or learner (`false`).
        voter: bool,
    },
    /// Opens an append stream: the first frame of a stream whose next frames each carry one
    /// AppendEntries request ([`RaftMessages::AppendEntries`]), in log order, and which the
    /// receiver answers frame by frame, in the same order
    /// ([`RaftMessages::AppendStreamReply`]), until either side ends it. The sender need not
    /// wait for one answer before it sends the next request (openraft's pipelined
    /// replication). Appended last: older peers decode every variant before it unchanged.
    AppendStream,
}

impl<R: RaftMessages> RpcRequest<R> {
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
            RpcRequest::SetVoter { .. } => "set_voter",
            RpcRequest::AppendStream => "append_stream",
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
    /// A membership change the receiver refuses (appended last; older peers cannot decode it,
    /// and only the membership requests this version added or checks anew answer with it).
    #[error(transparent)]
    Membership(MembershipRefusal),
    /// A read from below the history this node holds (it started from a state-only seed, or
    /// the history was compacted): ask from `first_held` on, or another node.
    #[error("this node holds the history from seq {first_held} on, not from {from}")]
    HistoryNotHeld {
        /// The first sequence number asked for.
        from: u64,
        /// The first sequence number this node holds.
        first_held: u64,
    },
}

/// Why a membership change (add, remove, promote, demote) is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MembershipRefusal {
    /// The asking node may not change another node's membership: only an admitted authority
    /// may (a node may always ask about itself: join, leave).
    #[error("node {} may not change the membership: only an admitted authority may", by.short())]
    NotAuthorized {
        /// Who asked.
        by: NodeId,
    },
    /// It would leave the network without a voter.
    #[error("node {} is the last voter; add another voter first", node.short())]
    LastVoter {
        /// The last voter.
        node: NodeId,
    },
    /// The node is not in the Raft membership.
    #[error("node {} is not a member", node.short())]
    NotAMember {
        /// The node.
        node: NodeId,
    },
    /// Only an authority (a Sclerotium in the registry) may be a voter.
    #[error("node {} is not an authority (a Sclerotium) and cannot be a voter", node.short())]
    NotAnAuthority {
        /// The node.
        node: NodeId,
    },
}

/// How [`RemoteFailure::not_admitted`] ends.
const NOT_ADMITTED: &str = "is not admitted in the registry";
/// The text of [`RemoteFailure::starting`].
const STARTING: &str = "node is starting";

/// Two refusals a caller acts on travel as [`RemoteFailure::Other`] text: a new variant would
/// not decode on the peers already deployed, so the text is the protocol. They are built and
/// recognised here only, so both sides agree on it.
impl RemoteFailure {
    /// A membership request for a node the registry does not hold as admitted (never admitted,
    /// or it left): an authority must admit it first.
    pub fn not_admitted(node: &NodeId) -> Self {
        RemoteFailure::Other(format!("node {} {NOT_ADMITTED}", node.short()))
    }

    /// Whether this is [`RemoteFailure::not_admitted`].
    pub fn is_not_admitted(&self) -> bool {
        matches!(self, RemoteFailure::Other(text) if text.contains(NOT_ADMITTED))
    }

    /// A request to a node that is still starting (its services are not installed yet): asking
    /// again shortly will do.
    pub fn starting() -> Self {
        RemoteFailure::Other(STARTING.into())
    }

    /// Whether this is [`RemoteFailure::starting`].
    pub fn is_starting(&self) -> bool {
        matches!(self, RemoteFailure::Other(text) if text == STARTING)
    }
}

/// A response to an [`RpcRequest`] of the same kind.
#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum RpcResponse<R: RaftMessages> {
    /// To `AppendEntries`.
    AppendEntries(R::AppendEntriesReply),
    /// To `Vote`.
    Vote(R::VoteReply),
    /// To `InstallSnapshot`.
    InstallSnapshot(R::InstallSnapshotReply),
    /// To `Forward`.
    Forward(Result<R::Applied, RemoteFailure>),
    /// To `AddMember` / `RemoveMember`.
    Membership(Result<(), RemoteFailure>),
    /// To `ReadIndex`: the log index to wait for.
    ReadIndex(Result<Option<u64>, RemoteFailure>),
    /// To `Status`.
    Status(Result<SporeStatus, RemoteFailure>),
    /// To `Query`.
    Query(Result<QueryAnswer, RemoteFailure>),
    /// To `ExportSeed`: the seed's head.
    ExportSeed(Result<ChainPoint, RemoteFailure>),
}

impl<R: RaftMessages> RpcResponse<R> {
    /// A short name for logs and errors: the request kind it answers.
    pub fn kind(&self) -> &'static str {
        match self {
            RpcResponse::AppendEntries(_) => "append_entries",
            RpcResponse::Vote(_) => "vote",
            RpcResponse::InstallSnapshot(_) => "install_snapshot",
            RpcResponse::Forward(_) => "forward",
            RpcResponse::Membership(_) => "membership",
            RpcResponse::ReadIndex(_) => "read_index",
            RpcResponse::Status(_) => "status",
            RpcResponse::Query(_) => "query",
            RpcResponse::ExportSeed(_) => "export_seed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refusals a caller acts on are recognised in the text peers already deployed send,
    /// and in no other failure.
    #[test]
    fn text_refusals_are_recognised() {
        let node = NodeId::default();
        assert!(RemoteFailure::not_admitted(&node).is_not_admitted());
        let old = RemoteFailure::Other(format!("node {} is not admitted in the registry", node.short()));
        assert!(old.is_not_admitted() && !old.is_starting());
        assert!(RemoteFailure::starting().is_starting());
        assert!(RemoteFailure::Other("node is starting".into()).is_starting());
        let other = RemoteFailure::Other(format!("node {} is a latent and cannot be a voter", node.short()));
        assert!(!other.is_not_admitted() && !other.is_starting());
        assert!(!RemoteFailure::NotLeader { leader: None }.is_not_admitted());
    }
}
