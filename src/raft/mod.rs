//! openraft glue: the type configuration, the fjall log store and the ledger state machine.
//!
//! openraft is kept behind this module and the layers above it (its network over our
//! transports is `net::raft_rpc`); nothing below knows of it.
//! Raft node ids are 64-bit: the first 8 bytes (big-endian) of the node's key; the full key
//! travels in [`PeerNode`] so the transport can authenticate the peer.

// openraft's StorageError is large by design and is what its traits return.
#![allow(clippy::result_large_err)]

use std::fmt;
use std::io::Cursor;

use openraft::error::RaftError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft_legacy::network_v1::{InstallSnapshotError, InstallSnapshotRequest, InstallSnapshotResponse};
use serde::{Deserialize, Serialize};

use crate::core::event::SignedEvent;
use crate::core::projection::Rejection;
use crate::core::types::NodeId;
use crate::wire::rpc::{PeerNode, RaftMessages};

pub mod append_pipeline;
mod apply;
pub mod error;
pub mod inbound;
pub mod log_store;
pub mod proposer;
pub mod responder;
pub(crate) mod runtime;
mod snapshot_file;
pub mod state_machine;

/// What a Raft entry carries: one signed event to validate, chain and apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SporeRequest {
    /// Append this event to the ledger.
    Event(SignedEvent),
    /// Append these events, in order (group commit of concurrent writes). Shared, so the log
    /// store's cache, replication and pre-verification hold it without copying (on the wire
    /// and on disk it is the plain list).
    Batch(std::sync::Arc<Vec<SignedEvent>>),
    /// Append a provisional event (written on a node cut off from the voters) unless the chain
    /// after its author's statement already holds it (see [`crate::core::provisional`]).
    Provisional(crate::core::provisional::ProvisionalEvent),
}

impl fmt::Display for SporeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SporeRequest::Event(e) => write!(f, "event({} by {})", e.body.kind(), e.author.short()),
            SporeRequest::Batch(b) => write!(f, "batch({} events)", b.len()),
            SporeRequest::Provisional(p) => {
                write!(f, "provisional({} by {})", p.event.body.kind(), p.event.author.short())
            }
        }
    }
}

pub use crate::core::types::ChainPoint;

/// openraft's messages for [`TypeConfig`] and the state machine's answer, as the RPCs of
/// [`crate::wire::rpc`] carry them.
#[derive(Debug)]
pub enum OpenRaft {}

impl RaftMessages for OpenRaft {
    type AppendEntries = AppendEntriesRequest<TypeConfig>;
    type AppendEntriesReply = Result<AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>>;
    type Vote = VoteRequest<TypeConfig>;
    type VoteReply = Result<VoteResponse<TypeConfig>, RaftError<TypeConfig>>;
    type InstallSnapshot = InstallSnapshotRequest<TypeConfig>;
    type InstallSnapshotReply =
        Result<InstallSnapshotResponse<TypeConfig>, RaftError<TypeConfig, InstallSnapshotError>>;
    type Applied = SporeResponse;
    type AppendStreamReply = AppendReply;
}

/// One request of an append stream: an AppendEntries of openraft's.
pub type AppendRequest = AppendEntriesRequest<TypeConfig>;
/// The answer to one request of an append stream: what openraft's `Raft::stream_append`
/// yields, the log id matched or why the stream ends.
pub type AppendReply = Result<openraft::raft::StreamAppendResult<TypeConfig>, openraft::error::Fatal<TypeConfig>>;

/// A request from one node to another, with openraft's messages ([`crate::wire::rpc::RpcRequest`]).
pub type RpcRequest = crate::wire::rpc::RpcRequest<OpenRaft>;
/// A response to an [`RpcRequest`], with openraft's messages ([`crate::wire::rpc::RpcResponse`]).
pub type RpcResponse = crate::wire::rpc::RpcResponse<OpenRaft>;

/// The state machine's answer to one entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SporeResponse {
    /// A blank or membership entry: nothing to report.
    None,
    /// The event was applied at this point.
    Applied(ChainPoint),
    /// The event was rejected, identically on every replica.
    Rejected(Rejection),
    /// One response per event of a [`SporeRequest::Batch`], in order.
    Batch(Vec<SporeResponse>),
}

/// The 64-bit Raft id of a node key.
pub fn raft_id(node: &NodeId) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&node.as_bytes()[..8]);
    u64::from_be_bytes(b)
}

/// openraft type configuration of the Primary spore: openraft's defaults but for the node and
/// runtime types, and a [`responder::FnResponder`], so the proposer answers each writer of a
/// batch straight from the state machine's apply (one wake-up, not two).
// Written out because `declare_raft_types!` cannot name a responder.
#[derive(Debug, Clone, Copy, Default, Eq, PartialEq, Ord, PartialOrd)]
pub struct TypeConfig {}

impl openraft::RaftTypeConfig for TypeConfig {
    type D = SporeRequest;
    type R = SporeResponse;
    type NodeId = u64;
    type Node = PeerNode;
    type Term = u64;
    type LeaderId = openraft::impls::leader_id_adv::LeaderId<Self::Term, Self::NodeId>;
    type Vote = openraft::impls::Vote<Self::LeaderId>;
    type Payload = openraft::EntryPayload<Self::D, Self::NodeId, Self::Node>;
    type Entry = openraft::Entry<<Self::LeaderId as openraft::vote::RaftLeaderId>::Committed, Self::Payload>;
    type Responder<T>
        = responder::FnResponder<T>
    where
        T: openraft::OptionalSend + 'static;
    type Batch<T>
        = openraft::impls::InlineBatch<T>
    where
        T: openraft::OptionalSend + 'static;
    type AsyncRuntime = runtime::SporeRuntime;
    type ErrorSource = openraft::impls::BoxedErrorSource;
}

/// What a snapshot is in memory: its encoded bytes (see [`state_machine`]).
pub type SnapshotData = Cursor<Vec<u8>>;
/// openraft's storage error for our config.
pub type StorageError = openraft::StorageError<TypeConfig>;
/// openraft's log id.
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// openraft's vote.
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// openraft's stored membership.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
/// openraft's snapshot metadata.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
/// openraft's metrics of one node.
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
/// openraft's log entry.
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
/// A Raft handle.
pub type Raft = openraft::Raft<TypeConfig, state_machine::LedgerStateMachine>;

/// How long ago this leader last heard from a quorum, in milliseconds (`None` off a leader).
pub fn millis_since_quorum_ack(m: &RaftMetrics) -> Option<u64> {
    use openraft::Instant;
    m.last_quorum_acked.as_ref().map(|at| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn io_err(e: impl fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Opens the Raft log store and the ledger state machine on one fjall database.
pub fn open_stores(
    ledger: crate::store::ledger::Ledger,
    key: crate::core::keys::NodeKey,
) -> Result<(log_store::FjallLogStore, state_machine::LedgerStateMachine), crate::store::error::LedgerError> {
    let path = ledger.path().to_path_buf();
    // Signatures of appended entries are verified while the log syncs; apply uses the verdicts.
    let pre_verified = crate::store::verified::PreVerified::default();
    let log = log_store::FjallLogStore::open(
        ledger.database(),
        path.clone(),
        pre_verified.clone(),
        ledger.write_metrics(),
        raft_id(&key.node_id()),
    )
    .map_err(|source| crate::store::error::LedgerError::Storage { op: "open raft keyspaces", path, source })?;
    let sm =
        state_machine::LedgerStateMachine::new(std::sync::Arc::new(std::sync::RwLock::new(ledger)), key, pre_verified)
            .watching_syncs(log.syncing());
    Ok((log, sm))
}

#[cfg(test)]
mod conformance {
    use super::*;
    use crate::store::ledger::{Ledger, LedgerConfig};
    use openraft::testing::log::{StoreBuilder, Suite};

    struct Builder;

    fn build_err(e: impl std::error::Error + 'static) -> StorageError {
        StorageError::write(openraft::error::ErrorSource::from_error(&e))
    }

    impl StoreBuilder<TypeConfig, log_store::FjallLogStore, state_machine::LedgerStateMachine, tempfile::TempDir>
        for Builder
    {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, log_store::FjallLogStore, state_machine::LedgerStateMachine), StorageError>
        {
            let dir = tempfile::tempdir().map_err(build_err)?;
            let ledger =
                Ledger::open(dir.path(), LedgerConfig { durable: false, ..Default::default() }).map_err(build_err)?;
            let (log, sm) = open_stores(ledger, crate::core::keys::NodeKey::from_seed([9; 32])).map_err(build_err)?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's own storage conformance suite on the fjall log store and ledger state machine.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_suite_passes() -> Result<(), StorageError> {
        Suite::test_all(Builder).await
    }
}
