//! Operating the membership: removing a node for good, promoting a learner to voter and
//! demoting a voter to learner, and listing who is in the Raft membership. Each is asked of
//! the leader (forwarded), which checks it against the registry (`net::membership`).

use serde::{Deserialize, Serialize};

use super::SporeSystem;
use crate::core::event::EventBody;
use crate::core::projection::{NodeRecord, NodeStatus};
use crate::core::types::NodeId;
use crate::error::Error;
use crate::raft::RpcRequest;

/// A node's place in the Raft membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    /// It votes and counts towards a commit.
    Voter,
    /// It receives the log but does not vote.
    Learner,
    /// It is not in the Raft membership (a latent node, or one that left).
    Outside,
}

/// One node of the network as an operator sees it: its place in the Raft membership and what
/// the registry says of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node.
    pub node: NodeId,
    /// Its name in the registry (empty if the registry does not know it).
    pub name: String,
    /// Voter, learner or outside Raft.
    pub place: Place,
    /// Its status in the registry (`None`: a Raft member the registry does not know).
    pub status: Option<NodeStatus>,
    /// The addresses the registry announces for it.
    pub addresses: Vec<String>,
}

impl Member {
    /// Every node of `registry` and of the Raft membership (`voters`, `learners`): a node that
    /// left only while it is still a member. Voters first, then learners, then the rest, each
    /// in node id order. What [`SporeSystem::members`] answers, and `spore member list` prints
    /// from a node's status and registry.
    pub fn list<'a>(
        registry: impl IntoIterator<Item = &'a NodeRecord>,
        voters: &[NodeId],
        learners: &[NodeId],
    ) -> Vec<Member> {
        let place = |n: &NodeId| {
            if voters.contains(n) {
                Place::Voter
            } else if learners.contains(n) {
                Place::Learner
            } else {
                Place::Outside
            }
        };
        let mut out: Vec<Member> = registry
            .into_iter()
            .filter(|n| n.status != NodeStatus::Left || place(&n.node) != Place::Outside)
            .map(|n| Member {
                node: n.node,
                name: n.name.to_string(),
                place: place(&n.node),
                status: Some(n.status),
                addresses: n.addresses.iter().map(|a| a.to_string()).collect(),
            })
            .collect();
        for n in voters.iter().chain(learners) {
            if !out.iter().any(|m| &m.node == n) {
                out.push(Member { node: *n, name: String::new(), place: place(n), status: None, addresses: vec![] });
            }
        }
        out.sort_by_key(|m| (m.place, m.node));
        out
    }
}

impl SporeSystem {
    /// Every node in the registry or the Raft membership, as [`Member::list`] orders them.
    pub fn members(&self) -> Result<Vec<Member>, Error> {
        let st = self.status()?;
        self.with_projection(|p| Member::list(p.nodes(), &st.voters, &st.learners))
    }

    /// Removes `node` from the network for good (a node whose host is gone): out of the Raft
    /// membership, then recorded as left in the registry (signed by this node, an authority),
    /// so its services go and its key is no longer admitted. Refused, with nothing changed,
    /// for the last voter ([`MembershipRefusal::LastVoter`]) or when this node is no authority
    /// ([`MembershipRefusal::NotAuthorized`]).
    ///
    /// [`MembershipRefusal::LastVoter`]: crate::wire::rpc::MembershipRefusal::LastVoter
    /// [`MembershipRefusal::NotAuthorized`]: crate::wire::rpc::MembershipRefusal::NotAuthorized
    #[tracing::instrument(skip(self), fields(node = %node.short()))]
    pub async fn remove_member(&self, node: NodeId, reason: &str) -> Result<(), Error> {
        let known = self.node(&node)?;
        if known.is_none() && self.members()?.iter().all(|m| m.node != node) {
            return Err(crate::wire::rpc::MembershipRefusal::NotAMember { node }.into());
        }
        self.membership_rpc(None, || RpcRequest::RemoveMember { node }).await?;
        if known.is_some_and(|n| n.status != NodeStatus::Left) {
            self.submit(self.sign(EventBody::NodeLeft { node, reason: reason.to_string() })?).await?;
        }
        Ok(())
    }

    /// Makes the learner `node` a voter. It must be an authority (a Sclerotium) in the
    /// registry ([`MembershipRefusal::NotAnAuthority`]).
    ///
    /// [`MembershipRefusal::NotAnAuthority`]: crate::wire::rpc::MembershipRefusal::NotAnAuthority
    pub async fn promote(&self, node: NodeId) -> Result<(), Error> {
        self.membership_rpc(None, || RpcRequest::SetVoter { node, voter: true }).await
    }

    /// Makes the voter `node` a learner: it keeps the chain but no longer votes or counts
    /// towards a commit. Refused for the last voter.
    pub async fn demote(&self, node: NodeId) -> Result<(), Error> {
        self.membership_rpc(None, || RpcRequest::SetVoter { node, voter: false }).await
    }
}
