//! The crate-wide [`Error`], for the callers of `SporeSystem`: it wraps each subsystem's own
//! error (the store's are in [`crate::store::error`], the consensus layer's in
//! [`crate::raft::error`], the node's own in `node`; re-exported here), and nothing below the
//! node layer imports it.

pub use crate::node::{HaltCause, SplitBrainError};
pub use crate::raft::error::ConsensusError;
pub use crate::store::error::{Corruption, LedgerError, RangeRefusal};

use crate::core::projection::Rejection;

/// The crate-wide error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Ledger (fjall) errors.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// An event was rejected by the rules.
    #[error("event rejected: {0}")]
    Rejected(#[from] Rejection),
    /// Key file errors.
    #[error(transparent)]
    KeyFile(#[from] crate::store::keyfile::KeyFileError),
    /// No leader answered within the write timeout; the write was not committed.
    #[error("no leader reachable after {waited:?}; the write was not committed")]
    NoLeader {
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// No voter took the write (this node is cut off from the Primary tier): it is held as a
    /// provisional event, handed to peers by gossip and committed once a voter is reachable.
    #[error("no voter reachable: the write is held as provisional event {id} and will be committed when a voter is reachable")]
    Provisional {
        /// The held event's id.
        id: crate::core::provisional::EventId,
    },
    /// This node found a state divergence (the chain attests a state its own records do not
    /// lead to) and takes no writes until an operator clears it.
    #[error("state divergence: {0}; this node takes no writes until an operator clears it")]
    StateDivergence(crate::core::attest::StateDivergence),
    /// A storage error this node cannot survive (a full disk, a failed sync) halted it: it
    /// takes no writes until restarted once the cause is fixed.
    #[error("this node halted: {0}; restart it once the cause is fixed")]
    Halted(HaltCause),
    /// The system has not been started or initialized yet.
    #[error("the spore system is not started (call initialize, start or join first)")]
    NotStarted,
    /// The node has not received a network's genesis yet.
    #[error("this node is not part of an initialized network yet")]
    NotInitialized,
    /// `initialize` with a different identity than the data dir already holds.
    #[error("the data dir already holds network {network:?}")]
    AlreadyInitialized {
        /// The existing network's name.
        network: String,
    },
    /// Raft failed (shut down, stopped by a storage error, membership change refused, the
    /// proposer stopped, …).
    #[error("raft: {0}")]
    Raft(#[from] ConsensusError),
    /// A task this node spawned for blocking work failed: it panicked, or it was cancelled
    /// because the runtime is shutting down.
    #[error("the {what} task failed: {source}")]
    Task {
        /// What the task did.
        what: &'static str,
        /// How it ended.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A peer, or this node's own state machine, answered with a response of another kind
    /// than the request asks for: a protocol violation (a bug, or a peer of another version).
    /// Nobody matches on it; `got` is the answer in words.
    #[error("unexpected response to {to}: {got}")]
    UnexpectedResponse {
        /// The request, in words.
        to: &'static str,
        /// What came back.
        got: String,
    },
    /// A peer refused a request: its typed failure.
    #[error("{peer} refused: {failure}")]
    Remote {
        /// The peer, as `key@address`.
        peer: String,
        /// What it answered.
        failure: crate::wire::rpc::RemoteFailure,
    },
    /// The member asked to add this node to the Raft membership does not find it admitted in
    /// its registry (yet): an authority must admit it first
    /// ([`SporeSystem::admit`](crate::SporeSystem::admit)). A joiner retries while it waits.
    #[error("{peer} refused to add this node: {reason}")]
    NotAdmitted {
        /// The member asked, as `key@address`.
        peer: String,
        /// Its answer, in words.
        reason: String,
    },
    /// Forming a network from a seed on a node that is not one of the seed's voters.
    #[error("node {} is not a voter in the seed; only the seed's voters can form its network", .0.short())]
    NotASeedVoter(crate::core::types::NodeId),
    /// A network call failed.
    #[error(transparent)]
    Transport(#[from] crate::net::TransportError),
    /// An address given to announce, admit or join through is not one the transport can
    /// dial (`HOST:PORT` over QUIC); nothing was committed or sent.
    #[error(transparent)]
    BadAddress(#[from] crate::net::addr::AddressError),
    /// A node configuration that does not make sense; nothing was started.
    #[error(transparent)]
    Config(#[from] crate::node::ConfigError),
    /// A seed spore could not be built, written, read or verified.
    #[error(transparent)]
    Seed(#[from] crate::seed::SeedError),
    /// A forensic question (fork point, diff, blame) could not be answered. Boxed: it carries
    /// paths and fingerprints, and would otherwise double the size of every `Result<_, Error>`.
    #[error(transparent)]
    Forensics(Box<crate::forensics::ForensicsError>),
    /// That spore tier is not available on this node.
    #[error("the {0:?} spore tier is not available on this node")]
    TierUnavailable(crate::core::types::SporeType),
    /// A membership change (remove, promote, demote, add) the leader refused: nothing changed.
    #[error("membership change refused: {0}")]
    Membership(#[from] crate::wire::rpc::MembershipRefusal),
    /// A read or watch from below the history this node holds (it started from a state-only
    /// seed, or the history was compacted): start from `first_held`, or ask another node.
    #[error("this node holds the history from seq {first_held} on, not from {from}")]
    HistoryNotHeld {
        /// The first sequence number asked for.
        from: u64,
        /// The first sequence number held.
        first_held: u64,
    },
    /// A split-brain resolution step failed (the other chain's node did not answer as
    /// expected, a branch does not check, ...). The resolver retries.
    #[error("split-brain resolution: {0}")]
    SplitBrain(#[from] SplitBrainError),
    /// A health check refused: out of the bounds, one too many on this node, or a TTL refresh
    /// of a service without a TTL check.
    #[error("health check: {0}")]
    Check(#[from] crate::core::health::CheckRefusal),
    /// The metrics could not be written out (a formatting error of the encoder).
    #[error("metrics: {0}")]
    Metrics(String),
}

impl From<crate::forensics::ForensicsError> for Error {
    fn from(e: crate::forensics::ForensicsError) -> Self {
        Error::Forensics(Box::new(e))
    }
}

/// Result with the crate-wide [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
