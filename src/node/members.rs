//! Operating the membership: removing a node for good, promoting a learner to voter and
//! demoting a voter to learner, and listing who is in the Raft membership. Each is asked of
//! the leader (forwarded), which checks it against the registry (`net::membership`).

use serde::{Deserialize, Serialize};

use super::SporeSystem;
use crate::core::event::EventBody;
use crate::core::projection::NodeStatus;
use crate::core::types::NodeId;
use crate::error::Error;
use crate::raft::RpcRequest;

/// One node of the network as an operator sees it: its place in the Raft membership and what
/// the registry says of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node.
    pub node: NodeId,
    /// Its name in the registry (empty if the registry does not know it).
    pub name: String,
    /// The address the Raft membership reaches it at (`None`: not in the Raft membership, a
    /// latent node).
    pub addr: Option<String>,
    /// A voter (`true`), a learner or a node outside Raft (`false`).
    pub voter: bool,
    /// Its status in the registry (`None`: a Raft member the registry does not know).
    pub status: Option<NodeStatus>,
}

impl SporeSystem {
    /// Every node in the registry or the Raft membership (nodes that left only while still in
    /// the membership), voters first, each in node id order.
    pub fn members(&self) -> Result<Vec<Member>, Error> {
        let st = self.status()?;
        let raft = self.raft()?;
        let addrs: std::collections::BTreeMap<NodeId, String> =
            raft.metrics().borrow().membership_config.nodes().map(|(_, p)| (p.node, p.addr.clone())).collect();
        let mut out: Vec<Member> = self.with_projection(|p| {
            p.nodes()
                .filter(|n| n.status != NodeStatus::Left || addrs.contains_key(&n.node))
                .map(|n| Member {
                    node: n.node,
                    name: n.name.clone(),
                    addr: addrs.get(&n.node).cloned(),
                    voter: st.voters.contains(&n.node),
                    status: Some(n.status),
                })
                .collect()
        })?;
        for (node, addr) in &addrs {
            if !out.iter().any(|m| &m.node == node) {
                let voter = st.voters.contains(node);
                out.push(Member { node: *node, name: String::new(), addr: Some(addr.clone()), voter, status: None });
            }
        }
        out.sort_by_key(|m| (!m.voter, m.node));
        Ok(out)
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
