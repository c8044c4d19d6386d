//! The consensus layer's error: why Raft (openraft, or this layer's proposer in front of it)
//! failed a request, with openraft's own error kept typed as the payload. The proposer's
//! answers ([`crate::raft::proposer::Proposer::propose`]) are this error too.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{Fatal, InitializeError, LinearizableReadError, RaftError};
use openraft::metrics::WaitError;

use super::TypeConfig;

/// Why Raft failed a request. openraft's errors are boxed: they are large, and every result
/// carrying this error pays for its size.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsensusError {
    /// Raft is not running any more: it was shut down (`Fatal::Stopped`), it panicked, or a
    /// storage error stopped it.
    #[error("raft is not running: {0}")]
    Fatal(Box<Fatal<TypeConfig>>),
    /// Raft's log storage failed before Raft ran (reading the stored vote at start).
    #[error("raft log storage: {0}")]
    Storage(Box<openraft::StorageError<TypeConfig>>),
    /// Raft's configuration does not hold together (its timeouts); nothing was started.
    #[error("raft configuration: {0}")]
    Config(Arc<openraft::ConfigError>),
    /// Raft refused to initialize a cluster (this node is not among the members given).
    #[error("raft refused to initialize the cluster: {0}")]
    Initialize(Box<InitializeError<TypeConfig>>),
    /// This node could not confirm that it leads (another node leads, or no quorum answered
    /// in time), so it cannot serve a linearizable read.
    #[error("leadership not confirmed: {0}")]
    LeadershipNotConfirmed(Box<LinearizableReadError<TypeConfig>>),
    /// Raft refused a membership change (another one in progress, a learner not found, an
    /// empty membership).
    #[error("membership change refused: {0}")]
    MembershipChange(Box<openraft::type_config::alias::ChangeMembershipErrorOf<TypeConfig>>),
    /// This node is not the leader (any more): a write must go to the leader.
    #[error("not the leader")]
    NotLeader,
    /// Raft did not reach a state in time.
    #[error("raft timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// What was waited for, in words (openraft's description of the condition).
        what: String,
        /// How long it waited.
        waited: Duration,
    },
    /// The proposer task has stopped (the node is shutting down): the write was not proposed.
    #[error("the proposer has stopped; the write was not proposed")]
    ProposerStopped,
    /// A proposal ended without an answer (the proposer stopped while it was in flight, or
    /// the first proposal of the same event, whose outcome this one waited for, did): the
    /// event may or may not have committed.
    #[error("the proposal ended without an answer (the proposer stopped); the event may or may not have committed")]
    ProposalDropped,
    /// The state machine answered a batch with something other than one answer per event: a
    /// bug, nobody matches on it; `got` is the answer in words.
    #[error("the state machine answered a batch of {events} events with {got}")]
    UnexpectedAnswer {
        /// The events in the batch.
        events: usize,
        /// What it answered.
        got: String,
    },
}

impl From<Fatal<TypeConfig>> for ConsensusError {
    fn from(e: Fatal<TypeConfig>) -> Self {
        ConsensusError::Fatal(Box::new(e))
    }
}

impl From<openraft::StorageError<TypeConfig>> for ConsensusError {
    fn from(e: openraft::StorageError<TypeConfig>) -> Self {
        ConsensusError::Storage(Box::new(e))
    }
}

impl From<openraft::ConfigError> for ConsensusError {
    fn from(e: openraft::ConfigError) -> Self {
        ConsensusError::Config(Arc::new(e))
    }
}

impl From<WaitError> for ConsensusError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Timeout(waited, what) => ConsensusError::Timeout { what, waited },
            WaitError::ShuttingDown => Fatal::Stopped.into(),
        }
    }
}

impl From<InitializeError<TypeConfig>> for ConsensusError {
    fn from(e: InitializeError<TypeConfig>) -> Self {
        ConsensusError::Initialize(Box::new(e))
    }
}

impl From<LinearizableReadError<TypeConfig>> for ConsensusError {
    fn from(e: LinearizableReadError<TypeConfig>) -> Self {
        ConsensusError::LeadershipNotConfirmed(Box::new(e))
    }
}

impl From<openraft::type_config::alias::ChangeMembershipErrorOf<TypeConfig>> for ConsensusError {
    fn from(e: openraft::type_config::alias::ChangeMembershipErrorOf<TypeConfig>) -> Self {
        ConsensusError::MembershipChange(Box::new(e))
    }
}

impl From<Infallible> for ConsensusError {
    fn from(e: Infallible) -> Self {
        match e {}
    }
}

/// openraft's API errors: fatal, or the API's own error.
impl<E: Into<ConsensusError>> From<RaftError<TypeConfig, E>> for ConsensusError {
    fn from(e: RaftError<TypeConfig, E>) -> Self {
        match e {
            RaftError::Fatal(f) => f.into(),
            RaftError::APIError(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_raft_stays_matchable() {
        let e = ConsensusError::from(RaftError::<TypeConfig, Infallible>::Fatal(Fatal::Stopped));
        assert!(matches!(&e, ConsensusError::Fatal(f) if **f == Fatal::Stopped), "{e}");
        let e = ConsensusError::from(WaitError::ShuttingDown);
        assert!(matches!(&e, ConsensusError::Fatal(f) if **f == Fatal::Stopped), "{e}");
        let e = ConsensusError::from(WaitError::Timeout(Duration::from_secs(1), "applied index 7".into()));
        assert_eq!(e.to_string(), "raft timed out after 1s waiting for applied index 7");
    }

    /// Every `Result<_, ConsensusError>` stays small.
    #[test]
    fn is_small() {
        assert!(std::mem::size_of::<ConsensusError>() <= 48, "{}", std::mem::size_of::<ConsensusError>());
    }
}
