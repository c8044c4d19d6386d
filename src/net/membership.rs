//! Membership changes as the leader's [`RaftService`] carries them out: add (learner, then
//! voter if asked), remove, promote and demote, each checked against the registry first.
//!
//! Who may ask: an admitted authority (a Sclerotium that has not left) for any node, and any
//! node about itself (joining, leaving). A voter must be an authority; the last voter can be
//! neither removed nor demoted. A refusal is a typed [`MembershipRefusal`].

use openraft::async_runtime::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet};

use crate::raft::TypeConfig;
use openraft::error::{ChangeMembershipError, ClientWriteError, PreconditionFailed, RaftError};
use openraft::ChangeMembers;

use super::raft_rpc::RaftService;
use crate::core::projection::NodeStatus;
use crate::core::types::NodeId;
use crate::raft::raft_id;
use crate::store::ledger::LedgerLock;
use crate::wire::rpc::{MembershipRefusal, PeerNode, RemoteFailure};

/// How long a membership change waits for another one in progress to finish.
const MEMBERSHIP_CHANGE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

type WriteError = RaftError<TypeConfig, ClientWriteError<TypeConfig>>;

impl RaftService {
    /// The registry's view of `node`: admitted and not left, and whether it is an authority.
    fn registered(&self, node: &NodeId) -> Result<Option<bool>, RemoteFailure> {
        let l = self.ledger.read_ledger().map_err(|e| RemoteFailure::Other(e.to_string()))?;
        Ok(l.projection().node(node).filter(|n| n.status != NodeStatus::Left).map(|n| n.role.is_authority()))
    }

    /// `by` may change `node`'s membership: it is `node` itself, or an admitted authority.
    fn check_asker(&self, by: &NodeId, node: &NodeId) -> Result<(), RemoteFailure> {
        if by == node || by == &self.me.node || self.registered(by)? == Some(true) {
            Ok(())
        } else {
            Err(RemoteFailure::Membership(MembershipRefusal::NotAuthorized { by: *by }))
        }
    }

    /// Only admitted nodes that have not left may join the Raft membership; only authorities
    /// may become voters.
    fn check_admitted(&self, node: &NodeId, voter: bool) -> Result<(), RemoteFailure> {
        match self.registered(node)? {
            None => Err(RemoteFailure::not_admitted(node)),
            Some(false) if voter => Err(RemoteFailure::Membership(MembershipRefusal::NotAnAuthority { node: *node })),
            Some(_) => Ok(()),
        }
    }

    /// Leader only, with the registry up to date with everything committed.
    async fn as_leader(&self) -> Result<(), RemoteFailure> {
        match self.raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(openraft::error::LinearizableReadError::ForwardToLeader(_))) => {
                Err(self.not_leader())
            }
            Err(e) => Err(RemoteFailure::Other(e.to_string())),
        }
    }

    fn write_failure(&self, e: WriteError) -> RemoteFailure {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => self.not_leader(),
            e => RemoteFailure::Other(e.to_string()),
        }
    }

    fn voters(&self) -> BTreeSet<u64> {
        self.raft.metrics().borrow_watched().membership_config.membership().voter_ids().collect()
    }

    fn members(&self) -> BTreeMap<u64, PeerNode> {
        self.raft.metrics().borrow_watched().membership_config.nodes().map(|(k, v)| (*k, v.clone())).collect()
    }

    /// Runs `change` until no other membership change is in progress (bounded): joins may
    /// arrive together, and openraft takes one change at a time. openraft 0.10 refuses a change
    /// three ways while another is under way: in progress, another committed since this one
    /// read the membership (a failed last-membership precondition), or the new leader's first
    /// entry not committed yet; each is retried.
    async fn one_at_a_time<F, Fut, T>(&self, what: &NodeId, change: F) -> Result<(), RemoteFailure>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, WriteError>>,
    {
        let deadline = tokio::time::Instant::now() + MEMBERSHIP_CHANGE_PATIENCE;
        loop {
            match change().await {
                Err(e) if another_change_under_way(&e) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(node = %what.short(), "another membership change is in progress; waiting");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                other => return other.map(|_| ()).map_err(|e| self.write_failure(e)),
            }
        }
    }

    /// Adds `node` as a learner, then as a voter if asked.
    pub(super) async fn add_member(&self, by: NodeId, node: PeerNode, voter: bool) -> Result<(), RemoteFailure> {
        self.as_leader().await?;
        self.check_asker(&by, &node.node)?;
        self.check_admitted(&node.node, voter)?;
        let id = raft_id(&node.node);
        self.one_at_a_time(&node.node, || async {
            self.raft.add_learner(id, node.clone(), true).await?;
            if voter {
                let mut voters = self.voters();
                voters.insert(id);
                self.raft.change_membership(ChangeMembers::ReplaceAllVoters(voters), true).await?;
            }
            Ok(())
        })
        .await
    }

    /// Removes `node` from the membership (from the voters first, then as a node).
    pub(super) async fn remove_member(&self, by: NodeId, node: NodeId) -> Result<(), RemoteFailure> {
        self.as_leader().await?;
        self.check_asker(&by, &node)?;
        let id = raft_id(&node);
        let voters = self.voters();
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(RemoteFailure::Membership(MembershipRefusal::LastVoter { node }));
            }
            let rest: BTreeSet<u64> = voters.into_iter().filter(|v| *v != id).collect();
            self.one_at_a_time(&node, || {
                self.raft.change_membership(ChangeMembers::ReplaceAllVoters(rest.clone()), false)
            })
            .await?;
        }
        if self.members().contains_key(&id) {
            self.one_at_a_time(&node, || {
                self.raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            })
            .await?;
        }
        Ok(())
    }

    /// Makes a member a voter (promote) or a learner (demote).
    pub(super) async fn set_voter(&self, by: NodeId, node: NodeId, voter: bool) -> Result<(), RemoteFailure> {
        self.as_leader().await?;
        if self.registered(&by)? != Some(true) && by != self.me.node {
            return Err(RemoteFailure::Membership(MembershipRefusal::NotAuthorized { by }));
        }
        let id = raft_id(&node);
        if !self.members().contains_key(&id) {
            return Err(RemoteFailure::Membership(MembershipRefusal::NotAMember { node }));
        }
        let mut voters = self.voters();
        if voter {
            self.check_admitted(&node, true)?;
            voters.insert(id);
        } else {
            if voters.len() == 1 && voters.contains(&id) {
                return Err(RemoteFailure::Membership(MembershipRefusal::LastVoter { node }));
            }
            voters.remove(&id);
        }
        // Demoted voters stay as learners (`retain`), so they keep the chain.
        self.one_at_a_time(&node, || self.raft.change_membership(ChangeMembers::ReplaceAllVoters(voters.clone()), true))
            .await
    }
}

/// Whether openraft refused a membership change only because another one is under way: one in
/// progress, one committed since this change read the membership (its last-membership
/// precondition failed), or the new leader's first entry not committed yet. Each passes.
fn another_change_under_way(e: &WriteError) -> bool {
    matches!(
        e,
        RaftError::APIError(
            ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_) | ChangeMembershipError::UncommittedLeaderLog(_),
            ) | ClientWriteError::PreconditionFailed(PreconditionFailed::LastMembershipLogIdMismatch { .. }),
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two joins at once over a real network (the field test's three voters) lost one to a
    /// failed last-membership precondition under openraft 0.10: that refusal, like "in
    /// progress", means wait and try again; a refusal for any other reason does not.
    #[test]
    fn a_change_that_lost_a_race_with_another_is_retried_and_nothing_else_is() {
        let mismatch = PreconditionFailed::LastMembershipLogIdMismatch { expected: None, actual: None };
        assert!(another_change_under_way(&RaftError::APIError(ClientWriteError::PreconditionFailed(mismatch))));
        let other = PreconditionFailed::LastLogIdMismatch { expected: None, actual: None };
        assert!(!another_change_under_way(&RaftError::APIError(ClientWriteError::PreconditionFailed(other))));
        let empty = ChangeMembershipError::EmptyMembership(openraft::error::EmptyMembership {});
        assert!(!another_change_under_way(&RaftError::APIError(ClientWriteError::ChangeMembershipError(empty))));
        assert!(!another_change_under_way(&RaftError::Fatal(openraft::error::Fatal::Stopped)));
    }
}
