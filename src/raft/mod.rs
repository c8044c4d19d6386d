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

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::core::event::SignedEvent;
use crate::core::projection::Rejection;
use crate::core::types::NodeId;
use crate::wire::rpc::{PeerNode, RaftMessages};

pub mod error;
pub mod log_store;
pub mod proposer;
pub(crate) mod runtime;
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
    type AppendEntriesReply = Result<AppendEntriesResponse<u64>, RaftError<u64>>;
    type Vote = VoteRequest<u64>;
    type VoteReply = Result<VoteResponse<u64>, RaftError<u64>>;
    type InstallSnapshot = InstallSnapshotRequest<TypeConfig>;
    type InstallSnapshotReply = Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>;
    type Applied = SporeResponse;
}

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

openraft::declare_raft_types!(
    /// openraft type configuration of the Primary spore.
    pub TypeConfig:
        D = SporeRequest,
        R = SporeResponse,
        NodeId = u64,
        Node = PeerNode,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = runtime::SporeRuntime,
);

/// openraft's storage error for our config.
pub type StorageError = openraft::StorageError<u64>;
/// openraft's log id.
pub type LogId = openraft::LogId<u64>;
/// openraft's stored membership.
pub type StoredMembership = openraft::StoredMembership<u64, PeerNode>;
/// A Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;

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
    let log =
        log_store::FjallLogStore::open(ledger.database(), path.clone(), pre_verified.clone(), ledger.write_metrics())
            .map_err(|source| crate::store::error::LedgerError::Storage { op: "open raft keyspaces", path, source })?;
    let sm =
        state_machine::LedgerStateMachine::new(std::sync::Arc::new(std::sync::RwLock::new(ledger)), key, pre_verified);
    Ok((log, sm))
}

#[cfg(test)]
mod conformance {
    use super::*;
    use crate::store::ledger::{Ledger, LedgerConfig};
    use openraft::testing::{StoreBuilder, Suite};

    struct Builder;

    impl StoreBuilder<TypeConfig, log_store::FjallLogStore, state_machine::LedgerStateMachine, tempfile::TempDir>
        for Builder
    {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, log_store::FjallLogStore, state_machine::LedgerStateMachine), StorageError>
        {
            let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(openraft::AnyError::new(&e)))?;
            let ledger = Ledger::open(dir.path(), LedgerConfig { durable: false, ..Default::default() })
                .map_err(|e| openraft::StorageIOError::write(openraft::AnyError::new(&e)))?;
            let (log, sm) = open_stores(ledger, crate::core::keys::NodeKey::from_seed([9; 32]))
                .map_err(|e| openraft::StorageIOError::write(openraft::AnyError::new(&e)))?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's own storage conformance suite on the fjall log store and ledger state machine.
    #[test]
    fn openraft_storage_suite_passes() -> Result<(), StorageError> {
        Suite::test_all(Builder)
    }
}
