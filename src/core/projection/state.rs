//! The data a projection keeps: [`ProjectionState`] (what a checkpoint stores and two
//! projections are compared by) and the records it holds: nodes, services, the chain head.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::shared::{AsBTreeMap, SharedMap};
use crate::core::compact::{List, Str};
use crate::core::event::ServiceAnnouncement;
use crate::core::types::{
    ChainHash, NetworkFingerprint, NetworkIdentityRecord, NodeId, NodeRole, Timestamp, TrustScore,
};

/// Whether a node is taking part.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub enum NodeStatus {
    /// Admitted and answering.
    Active,
    /// Admitted, but an authority committed that it stopped answering.
    Offline,
    /// Left or removed. Kept as a tombstone so its history stays attributable.
    Left,
}

impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeStatus::Active => "active",
            NodeStatus::Offline => "offline",
            NodeStatus::Left => "left",
        })
    }
}

/// A node as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NodeRecord {
    /// Id (= public key).
    pub node: NodeId,
    /// Name.
    pub name: Str,
    /// Role.
    pub role: NodeRole,
    /// Addresses.
    pub addresses: List<Str>,
    /// Capabilities, sorted and deduplicated.
    pub capabilities: List<Str>,
    /// Trust score.
    pub trust: TrustScore,
    /// Status.
    pub status: NodeStatus,
    /// Sequence number at which it joined.
    pub joined_seq: u64,
    /// When it joined.
    pub joined_at: Timestamp,
    /// Time of the latest event it authored or that announced it back online.
    pub last_activity: Timestamp,
    /// When it was last heard from before going offline (set while `Offline`).
    pub offline_last_seen: Option<Timestamp>,
    /// Sequence number of the latest event about this node.
    pub updated_seq: u64,
}

/// A service as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ServiceRecord {
    /// The service as announced.
    pub service: ServiceAnnouncement,
    /// Sequence number of its registration.
    pub registered_seq: u64,
    /// When it was registered.
    pub registered_at: Timestamp,
    /// Who signed the registration.
    pub registered_by: NodeId,
}

/// Why a service is critical, and since when (a service without an entry passes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ServiceHealth {
    /// Sequence number of the `service_health_changed` event that made it critical.
    pub since_seq: u64,
    /// That event's timestamp.
    pub since: Timestamp,
    /// The check's last result, as the event gave it.
    pub reason: String,
}

/// A point in the chain: sequence number, hash and the event's timestamp.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct ChainHead {
    /// Sequence number of the newest event.
    pub seq: u64,
    /// Its chain hash; identifies the whole prefix.
    pub hash: ChainHash,
    /// Its timestamp.
    pub timestamp: Timestamp,
}

/// The persistent part of a projection (the indexes are rebuilt from it).
///
/// This is what a projection checkpoint stores and what two projections are compared by.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct ProjectionState {
    /// The network's identity (set by genesis).
    pub network: Option<NetworkIdentityRecord>,
    /// The network fingerprint (set by genesis).
    pub fingerprint: Option<NetworkFingerprint>,
    /// The head this state is at (`None` before genesis).
    pub head: Option<ChainHead>,
    /// Every node ever admitted, by id (a persistent map: see [`SharedMap`]).
    #[rkyv(with = AsBTreeMap)]
    pub nodes: SharedMap<NodeId, NodeRecord>,
    /// Every registered service, by id.
    #[rkyv(with = AsBTreeMap)]
    pub services: SharedMap<Uuid, ServiceRecord>,
    /// The latest checkpoint event seen (seq of the checkpoint event, attested head).
    pub last_checkpoint: Option<(u64, ChainHead)>,
    /// Registered services whose health is critical, by id (every other service passes).
    ///
    /// Added after the first schema: it is part of the state's canonical encoding only when
    /// it is not empty (so every state reached without a health event keeps the digest it
    /// always had), and it is archived apart from the rest of a checkpoint
    /// (`store::record`, format 2), so checkpoints and seeds written before it still decode.
    #[serde(default, skip_serializing_if = "imbl::OrdMap::is_empty")]
    #[rkyv(with = rkyv::with::Skip)]
    pub critical: SharedMap<Uuid, ServiceHealth>,
}
