//! Projections: the registries (nodes, capabilities, trust, services, activity) derived by
//! applying chained events in order.
//!
//! Validation happens here, deterministically: the same event against the same state is
//! accepted or rejected identically on every replica, with a typed [`Rejection`]. A rejected
//! event changes nothing. Signature checks are the caller's job (they are batched), see
//! [`crate::core::keys::verify_many`]; everything else — network, schema, admission and the
//! semantic rules written down in `schema/rules.md` — is checked by [`Projection::check`].
//!
//! One job per file: the data a projection keeps (`state.rs`), the rules an event must pass
//! (`rules.rs`), the change an accepted event makes (`apply.rs`), the service indexes
//! (`index.rs`), discovery (`find.rs`), paged answers (`page.rs`) and the persistent maps the
//! state is kept in (`shared.rs`). This file holds the [`Projection`] itself and its read
//! accessors.
//!
//! Cloning a projection is cheap (a few reference counts): its maps are persistent, so a
//! clone shares them and a later change to either copies only what it changes. That is what
//! lets a node publish its projection to readers after every write (`store::ledger::view`).

mod apply;
mod find;
#[cfg(test)]
mod health_tests;
mod index;
mod page;
mod rules;
mod shared;
mod state;

pub use find::{FoundService, ServiceFilter};
pub use page::{NodeFilter, NodePage, Page, Paged, ServicePage};
pub use rules::{Rejection, Text};
pub use shared::{dense_map, AsBTreeMap, SharedMap};
pub use state::{
    ArchivedChainHead, ArchivedNodeRecord, ArchivedNodeStatus, ArchivedProjectionState, ArchivedServiceRecord,
    ChainHead, ChainHeadResolver, NodeRecord, NodeRecordResolver, NodeStatus, NodeStatusResolver, ProjectionState,
    ProjectionStateResolver, ServiceHealth, ServiceHealthResolver, ServiceRecord, ServiceRecordResolver,
};

use std::sync::Arc;

use uuid::Uuid;

use crate::core::attest::{state_digest, StateDivergence};
use crate::core::types::{ChainHash, NetworkFingerprint, NetworkIdentityRecord, NodeId, StateDigest};

/// The registries, derived from the chain. See the module doc.
#[derive(Clone, Debug, Default)]
pub struct Projection {
    state: ProjectionState,
    /// Hashes names and capabilities to their index keys, under a key of its own (drawn when
    /// the projection is made, shared by its clones; see `index.rs`).
    text_keys: index::TextKeys,
    /// `(hash of the name, id)` → the service's record (see `index.rs`).
    by_name: imbl::OrdMap<(index::TextKey, Uuid), Arc<ServiceRecord>>,
    /// `(node ordinal, id)` of every service: 20-byte keys instead of 48 (see `index.rs`).
    by_node: imbl::OrdMap<(u32, Uuid), ()>,
    /// The ordinal of each node that offered a service, in the order first seen (never
    /// reused: nodes stay in the registry once admitted).
    node_ords: imbl::OrdMap<NodeId, u32>,
    /// `(hash of a capability, id)` of every service.
    by_capability: imbl::OrdMap<(index::TextKey, Uuid), ()>,
    /// `(node ordinal, id)` of every service that carries a health check.
    checked: imbl::OrdMap<(u32, Uuid), ()>,
    /// Node keys this projection admitted, each checked to be a valid ed25519 point when it
    /// was: a node that leaves and joins again is not decompressed again. Not persisted (a
    /// projection loaded from a checkpoint checks each key once more, on its first re-join).
    keys_checked: imbl::OrdSet<NodeId>,
    /// The first state checkpoint applied whose attested digest differed from this
    /// projection's state (not persisted: a rebuilt projection starts without one).
    divergence: Option<StateDivergence>,
}

impl Projection {
    /// An empty projection, before genesis.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a projection (and its indexes) from persisted state.
    pub fn from_state(state: ProjectionState) -> Self {
        let mut p = Projection { state, ..Default::default() };
        p.index_all();
        p
    }

    /// The persistent state.
    pub fn state(&self) -> &ProjectionState {
        &self.state
    }

    /// The digest of the state (what a state checkpoint event at the next seq attests).
    pub fn state_digest(&self) -> StateDigest {
        state_digest(&self.state)
    }

    /// The first state checkpoint this projection applied whose attested state differed from
    /// its own, if any. The event is applied regardless (the chain is the ground truth); the
    /// owner decides what follows (rebuild by replay, report, refuse writes).
    pub fn divergence(&self) -> Option<StateDivergence> {
        self.divergence
    }

    /// The head, or `None` before genesis.
    pub fn head(&self) -> Option<ChainHead> {
        self.state.head
    }

    /// The sequence number the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.state.head.map_or(0, |h| h.seq + 1)
    }

    /// The hash the next event links to.
    pub fn head_hash(&self) -> ChainHash {
        self.state.head.map_or(ChainHash::ZERO, |h| h.hash)
    }

    /// The network fingerprint (after genesis).
    pub fn fingerprint(&self) -> Option<NetworkFingerprint> {
        self.state.fingerprint
    }

    /// The network identity (after genesis).
    pub fn network(&self) -> Option<&NetworkIdentityRecord> {
        self.state.network.as_ref()
    }

    /// Every node ever admitted (including those that left), ordered by id.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.state.nodes.values().map(|n| &**n)
    }

    /// One node.
    pub fn node(&self, id: &NodeId) -> Option<&NodeRecord> {
        self.state.nodes.get(id).map(|n| &**n)
    }

    /// Nodes that are admitted and not offline or gone.
    pub fn active_nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes().filter(|n| n.status == NodeStatus::Active)
    }

    /// Nodes an authority committed as offline.
    pub fn offline_nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes().filter(|n| n.status == NodeStatus::Offline)
    }

    /// Nodes that have the capability (and have not left).
    pub fn nodes_with_capability<'a>(&'a self, capability: &'a str) -> impl Iterator<Item = &'a NodeRecord> + 'a {
        self.nodes().filter(move |n| {
            n.status != NodeStatus::Left && n.capabilities.binary_search_by(|c| c.as_str().cmp(capability)).is_ok()
        })
    }

    /// Every registered service, ordered by id.
    pub fn services(&self) -> impl Iterator<Item = &ServiceRecord> {
        self.state.services.values().map(|s| &**s)
    }

    /// One service.
    pub fn service(&self, id: &Uuid) -> Option<&ServiceRecord> {
        self.state.services.get(id).map(|s| &**s)
    }

    /// One service, as the shared record a snapshot hands out without copying it.
    pub fn shared_service(&self, id: &Uuid) -> Option<&Arc<ServiceRecord>> {
        self.state.services.get(id)
    }

    /// Why a registered service is critical, and since when; `None` while it passes (or has
    /// no check).
    pub fn service_health(&self, id: &Uuid) -> Option<&ServiceHealth> {
        self.state.critical.get(id).map(|h| &**h)
    }

    /// Whether a service is available to callers: its node is active and it is not critical.
    pub fn is_available(&self, record: &ServiceRecord) -> bool {
        !self.state.critical.contains_key(&record.service.service_id)
            && self.node(&record.service.node).is_some_and(|n| n.status == NodeStatus::Active)
    }
}

impl Projection {
    /// Whether `other` holds this very state (the same maps, shared, and the same head):
    /// what a publisher checks to skip a snapshot that would change nothing. `false` is
    /// always safe.
    pub fn shares_state_with(&self, other: &Projection) -> bool {
        let (a, b) = (&self.state, &other.state);
        a.head == b.head
            && a.fingerprint == b.fingerprint
            && a.last_checkpoint == b.last_checkpoint
            && a.nodes.ptr_eq(&b.nodes)
            && a.services.ptr_eq(&b.services)
            && a.critical.ptr_eq(&b.critical)
            && self.divergence == other.divergence
            && a.network == b.network
    }
}

impl PartialEq for Projection {
    fn eq(&self, other: &Self) -> bool {
        self.state == other.state
    }
}

impl Eq for Projection {}
