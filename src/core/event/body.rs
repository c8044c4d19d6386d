//! What an event says: [`EventBody`] (what changed; its variant order is part of the canonical
//! encoding) and the announcements it carries.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::core::compact::{List, Str};
use crate::core::types::{
    ChainHash, Endpoint, NetworkIdentityRecord, NodeId, NodeRole, StateDigest, Timestamp, TrustScore,
};

/// A node as announced when it joins (or founds) the network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NodeAnnouncement {
    /// The node's key, which is its id.
    pub node: NodeId,
    /// Human-readable name.
    pub name: String,
    /// Voter (Sclerotium) or gossip node (Rhizomorph).
    pub role: NodeRole,
    /// Where the node can be reached (`host:port`).
    pub addresses: Vec<String>,
    /// What the node can do (free-form tags, e.g. `storage`, `gpu`, `relay`).
    pub capabilities: Vec<String>,
}

/// A service offered by a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(attr(allow(missing_docs)))]
pub struct ServiceAnnouncement {
    /// Chosen by the registrant; unique within the network.
    pub service_id: Uuid,
    /// Service name, e.g. `object-store`. Many instances may share a name.
    pub name: Str,
    /// The node that offers it.
    pub node: NodeId,
    /// Capabilities the service provides (used by capability queries).
    pub capabilities: List<Str>,
    /// Discovery endpoints.
    pub endpoints: List<Endpoint>,
    /// Free-form key/value metadata, in the order given.
    pub metadata: List<(Str, Str)>,
}

/// What a [`EventBody::SplitBrainResolved`] event records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SplitBrainResolution {
    /// The first sequence number where the two chains differ.
    pub fork_seq: u64,
    /// The winning chain's event hash at the fork.
    pub winner_first: ChainHash,
    /// The winning chain's head when the decision was taken: sequence number.
    pub winner_head_seq: u64,
    /// ... and hash.
    pub winner_head: ChainHash,
    /// The losing chain's event hash at the fork.
    pub loser_first: ChainHash,
    /// The losing chain's head that was folded in: sequence number.
    pub loser_head_seq: u64,
    /// ... and hash.
    pub loser_head: ChainHash,
    /// The rule that decided: `authority`, `activity` or `tie-break`.
    pub decided_by: String,
    /// Events of the losing branch applied again on this chain.
    pub adopted: u64,
    /// Events of the losing branch this chain's rules refused (reported).
    pub conflicts: u64,
}

// rkyv 0.8's derive leaves the fields of the generated `EventBodyResolver`'s struct variants
// undocumented, and an attribute cannot reach them; this module scopes the allowance to that
// generated code. `EventBody` itself documents every variant and field.
mod inner {
    #![allow(missing_docs)]
    use super::*;

    /// What changed. Variant order is part of the canonical encoding: append, never reorder.
    #[derive(
        Clone, Debug, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
    )]
    #[rkyv(attr(allow(missing_docs)))]
    pub enum EventBody {
        /// Sequence 0: the network is formed; the founder is its first Sclerotium.
        Genesis {
            /// The network's identity.
            network: NetworkIdentityRecord,
            /// The founding node; its key is part of the network fingerprint.
            founder: NodeAnnouncement,
        },
        /// A node is admitted (by an authority).
        NodeJoined(NodeAnnouncement),
        /// A node's name and/or role changed.
        NodeUpdated {
            /// The node.
            node: NodeId,
            /// New name, if it changed.
            name: Option<String>,
            /// New role, if it changed (authority only).
            role: Option<NodeRole>,
        },
        /// A node left the network (or was removed); its services go with it.
        NodeLeft {
            /// The node.
            node: NodeId,
            /// Why, for the audit trail.
            reason: String,
        },
        /// A node's capability set was replaced.
        CapabilitiesChanged {
            /// The node.
            node: NodeId,
            /// The new, complete capability set.
            capabilities: Vec<String>,
        },
        /// A node's address list was replaced.
        AddressesChanged {
            /// The node.
            node: NodeId,
            /// The new, complete address list.
            addresses: Vec<String>,
        },
        /// An authority set a node's trust score.
        TrustScoreChanged {
            /// The node.
            node: NodeId,
            /// The new score.
            score: TrustScore,
            /// Why, for the audit trail.
            reason: String,
        },
        /// A service was registered.
        ServiceRegistered(ServiceAnnouncement),
        /// A service was deregistered.
        ServiceDeregistered {
            /// The service.
            service_id: Uuid,
            /// Why, for the audit trail.
            reason: String,
        },
        /// Liveness transition: the node stopped answering (committed by an authority).
        NodeWentOffline {
            /// The node.
            node: NodeId,
            /// When it was last heard from.
            last_seen: Timestamp,
        },
        /// Liveness transition: the node is answering again.
        NodeBackOnline {
            /// The node.
            node: NodeId,
        },
        /// An authority attests the chain head just before this event.
        Checkpoint {
            /// The sequence number of the head being attested (this event's seq − 1).
            head_seq: u64,
            /// The chain hash at `head_seq`.
            head_hash: ChainHash,
        },
        /// An authority settled a split-brain: two chains of this network forked, this chain
        /// won, and the losing branch's events that were still valid were re-proposed to it
        /// (see `schema/split-brain.md`). Boxed, so this variant does not change the archived
        /// size of every other event.
        SplitBrainResolved(Box<SplitBrainResolution>),
        /// An authority attests the chain head just before this event **and the state** the
        /// chain reaches there: the digest of the projection at `head_seq`. Replicas compare
        /// it with their own state; the chain, not a stored projection, is the ground truth.
        /// (The older [`EventBody::Checkpoint`] attests only the head; both stay valid.)
        StateCheckpoint {
            /// The sequence number of the head being attested (this event's seq − 1).
            head_seq: u64,
            /// The chain hash at `head_seq`.
            head_hash: ChainHash,
            /// The digest of the projection's state at `head_seq`.
            state_digest: StateDigest,
        },
        /// A service's health flipped: its owner node's check (or an authority) says it
        /// passes again, or that it fails. Only transitions are events, never a heartbeat per
        /// check (see `schema/rules.md`, *Health*).
        ServiceHealthChanged {
            /// The service.
            service_id: Uuid,
            /// Whether it passes now (`false`: critical).
            passing: bool,
            /// Why (the check's last result), for the audit trail and the registry.
            reason: String,
        },
    }
}
pub use inner::{ArchivedEventBody, EventBody, EventBodyResolver};

impl EventBody {
    /// A short, stable name of the variant (`node_joined`, …) for humans and JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::Genesis { .. } => "genesis",
            EventBody::NodeJoined(_) => "node_joined",
            EventBody::NodeUpdated { .. } => "node_updated",
            EventBody::NodeLeft { .. } => "node_left",
            EventBody::CapabilitiesChanged { .. } => "capabilities_changed",
            EventBody::AddressesChanged { .. } => "addresses_changed",
            EventBody::TrustScoreChanged { .. } => "trust_score_changed",
            EventBody::ServiceRegistered(_) => "service_registered",
            EventBody::ServiceDeregistered { .. } => "service_deregistered",
            EventBody::NodeWentOffline { .. } => "node_went_offline",
            EventBody::NodeBackOnline { .. } => "node_back_online",
            EventBody::Checkpoint { .. } => "checkpoint",
            EventBody::SplitBrainResolved(_) => "split_brain_resolved",
            EventBody::StateCheckpoint { .. } => "state_checkpoint",
            EventBody::ServiceHealthChanged { .. } => "service_health_changed",
        }
    }

    /// Whether this is a checkpoint event of either kind (it attests the head before it).
    pub fn is_checkpoint(&self) -> bool {
        matches!(self, EventBody::Checkpoint { .. } | EventBody::StateCheckpoint { .. })
    }

    /// The node this event is about, if any.
    pub fn subject_node(&self) -> Option<NodeId> {
        match self {
            EventBody::Genesis { founder, .. } => Some(founder.node),
            EventBody::NodeJoined(a) => Some(a.node),
            EventBody::ServiceRegistered(s) => Some(s.node),
            EventBody::NodeUpdated { node, .. }
            | EventBody::NodeLeft { node, .. }
            | EventBody::CapabilitiesChanged { node, .. }
            | EventBody::AddressesChanged { node, .. }
            | EventBody::TrustScoreChanged { node, .. }
            | EventBody::NodeWentOffline { node, .. }
            | EventBody::NodeBackOnline { node } => Some(*node),
            EventBody::ServiceDeregistered { .. }
            | EventBody::ServiceHealthChanged { .. }
            | EventBody::Checkpoint { .. }
            | EventBody::StateCheckpoint { .. }
            | EventBody::SplitBrainResolved(_) => None,
        }
    }

    /// The service this event is about, if any.
    pub fn subject_service(&self) -> Option<Uuid> {
        match self {
            EventBody::ServiceRegistered(s) => Some(s.service_id),
            EventBody::ServiceDeregistered { service_id, .. } | EventBody::ServiceHealthChanged { service_id, .. } => {
                Some(*service_id)
            }
            _ => None,
        }
    }
}
