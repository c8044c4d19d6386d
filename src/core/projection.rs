//! Projections: the registries (nodes, capabilities, trust, services, activity) derived by
//! applying chained events in order.
//!
//! Validation happens here, deterministically: the same event against the same state is
//! accepted or rejected identically on every replica, with a typed [`Rejection`]. A rejected
//! event changes nothing. Signature checks are the caller's job (they are batched), see
//! [`crate::core::keys::verify_many`]; everything else — network, schema, admission and the
//! semantic rules written down in `schema/rules.md` — is checked by [`Projection::check`].

use std::collections::{BTreeMap, BTreeSet};

/// The indexes' hash map: foldhash (randomly seeded per map) instead of SipHash. Every append
/// updates these indexes, and SipHash was a tenth of the projection's cost.
type HashMap<K, V> = foldhash::HashMap<K, V>;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::attest::{state_digest, StateDivergence};
use super::event::{
    network_fingerprint, ChainedEvent, EventBody, NodeAnnouncement, ServiceAnnouncement, SignedEvent, SCHEMA_VERSION,
};
use super::limits;
use super::types::{
    ChainHash, NetworkFingerprint, NetworkIdentityRecord, NodeId, NodeRole, StateDigest, Timestamp, TrustScore,
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
    pub name: String,
    /// Role.
    pub role: NodeRole,
    /// Addresses.
    pub addresses: Vec<String>,
    /// Capabilities, sorted and deduplicated.
    pub capabilities: Vec<String>,
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

/// Static or owned text inside a [`Rejection`] (owned after crossing the network).
pub type Text = std::borrow::Cow<'static, str>;

/// Why an event was not applied. Deterministic: every replica gives the same reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Rejection {
    /// The event belongs to another network.
    #[error("event belongs to another network (fingerprint {got}, expected {expected})")]
    WrongNetwork {
        /// This ledger's fingerprint.
        expected: NetworkFingerprint,
        /// The event's.
        got: NetworkFingerprint,
    },
    /// The schema version is not one this code accepts.
    #[error("unsupported schema version {0} (this build accepts {SCHEMA_VERSION})")]
    UnsupportedSchema(u16),
    /// The signature does not verify for the author's key.
    #[error("signature does not verify for author {0}")]
    BadSignature(NodeId),
    /// The author is not an admitted node.
    #[error("author {0} is not admitted in this network")]
    UnknownAuthor(NodeId),
    /// The author was admitted but has left.
    #[error("author {0} has left the network")]
    AuthorLeft(NodeId),
    /// The author may not do this.
    #[error("author {author} may not {action}")]
    NotAuthorized {
        /// Who tried.
        author: NodeId,
        /// What was attempted.
        action: Text,
    },
    /// The ledger is empty and this is not a genesis event.
    #[error("the first event of a ledger must be genesis")]
    GenesisExpected,
    /// A genesis event after sequence 0.
    #[error("genesis is only allowed at sequence 0")]
    UnexpectedGenesis,
    /// Genesis whose fingerprint or author does not match its body.
    #[error("genesis is inconsistent: {0}")]
    BadGenesis(Text),
    /// The event names a node the registry does not have.
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    /// A node that is already admitted and has not left.
    #[error("node {0} is already admitted")]
    NodeExists(NodeId),
    /// The node has left.
    #[error("node {0} has left the network")]
    NodeLeft(NodeId),
    /// The node id is not a valid, strong ed25519 key.
    #[error("node id {0} is not a valid ed25519 public key")]
    InvalidNodeKey(NodeId),
    /// The service id is unknown.
    #[error("unknown service {0}")]
    UnknownService(Uuid),
    /// The service id is already registered.
    #[error("service {0} is already registered")]
    ServiceExists(Uuid),
    /// A liveness transition that does not apply to the node's status.
    #[error("node {node} cannot go {to} from {from:?}")]
    InvalidTransition {
        /// The node.
        node: NodeId,
        /// Its current status.
        from: NodeStatus,
        /// The attempted transition.
        to: Text,
    },
    /// The last active Sclerotium cannot leave or be demoted.
    #[error("node {0} is the last active authority and cannot leave or be demoted")]
    LastAuthority(NodeId),
    /// A field over its limit.
    #[error("{what} is too large: {got} > {max}")]
    LimitExceeded {
        /// Which field.
        what: Text,
        /// The limit.
        max: usize,
        /// What was given.
        got: usize,
    },
    /// A field that must not be empty.
    #[error("{0} must not be empty")]
    Empty(Text),
    /// A trust score above 1000.
    #[error("trust score {0} is above the maximum 1000")]
    TrustOutOfRange(u16),
    /// A checkpoint that does not attest the current head.
    #[error("checkpoint attests seq {got_seq} but the head is seq {head_seq}")]
    CheckpointMismatch {
        /// Current head.
        head_seq: u64,
        /// What the checkpoint says.
        got_seq: u64,
    },
    /// An event timestamped before the network's genesis.
    #[error("event time {0} is before genesis")]
    BeforeGenesis(Timestamp),
    /// The chained event is not at the next position or does not link to the head.
    #[error("event at seq {got} does not link to the head (expected seq {expected})")]
    NotNext {
        /// The next sequence number.
        expected: u64,
        /// What was given.
        got: u64,
    },
    /// A provisional event whose event is already in the chain (at this seq): committed
    /// earlier, never applied twice.
    #[error("the provisional event is already committed at seq {}", .0.seq)]
    ProvisionalDuplicate(crate::core::types::ChainPoint),
    /// A provisional event whose statement does not check (not the author's signature, a
    /// point beyond the head, or older than the window a committer scans).
    #[error("provisional statement refused: {0}")]
    ProvisionalRefused(Text),
    /// A split-brain resolution event is inconsistent (fork after its winner's head, at
    /// genesis, or an unknown deciding rule).
    #[error("split-brain resolution refused: {0}")]
    BadResolution(Text),
}

/// The registries, derived from the chain. See the module doc.
#[derive(Clone, Debug, Default)]
pub struct Projection {
    state: ProjectionState,
    by_name: HashMap<String, BTreeSet<Uuid>>,
    by_node: HashMap<NodeId, BTreeSet<Uuid>>,
    by_capability: HashMap<String, BTreeSet<Uuid>>,
    /// Node keys this projection admitted, each checked to be a valid ed25519 point when it
    /// was: a node that leaves and joins again is not decompressed again. Not persisted (a
    /// projection loaded from a checkpoint checks each key once more, on its first re-join).
    keys_checked: foldhash::HashSet<NodeId>,
    /// The first state checkpoint applied whose attested digest differed from this
    /// projection's state (not persisted: a rebuilt projection starts without one).
    divergence: Option<StateDivergence>,
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
    /// Every node ever admitted, by id.
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// Every registered service, by id.
    pub services: BTreeMap<Uuid, ServiceRecord>,
    /// The latest checkpoint event seen (seq of the checkpoint event, attested head).
    pub last_checkpoint: Option<(u64, ChainHead)>,
}

fn check_len(what: &'static str, got: usize, max: usize) -> Result<(), Rejection> {
    if got > max {
        Err(Rejection::LimitExceeded { what: what.into(), max, got })
    } else {
        Ok(())
    }
}

fn check_name(what: &'static str, s: &str) -> Result<(), Rejection> {
    if s.is_empty() {
        return Err(Rejection::Empty(what.into()));
    }
    check_len(what, s.len(), limits::NAME_BYTES_MAX)
}

fn check_addresses(addresses: &[String]) -> Result<(), Rejection> {
    check_len("address list", addresses.len(), limits::ADDRESSES_MAX)?;
    for a in addresses {
        check_len("address", a.len(), limits::ADDRESS_BYTES_MAX)?;
    }
    Ok(())
}

fn check_capabilities(caps: &[String]) -> Result<(), Rejection> {
    check_len("capability list", caps.len(), limits::CAPABILITIES_MAX)?;
    for c in caps {
        if c.is_empty() {
            return Err(Rejection::Empty("capability".into()));
        }
        check_len("capability", c.len(), limits::CAPABILITY_BYTES_MAX)?;
    }
    Ok(())
}

/// Checks a node announcement; `key_checked` says its key is already known to be a valid
/// ed25519 point (decompressing it is most of the cost of this check).
fn check_announcement(a: &NodeAnnouncement, key_checked: bool) -> Result<(), Rejection> {
    check_name("node name", &a.name)?;
    check_addresses(&a.addresses)?;
    check_capabilities(&a.capabilities)?;
    if !key_checked && crate::core::keys::PublicKey::from_node_id(&a.node).is_none() {
        return Err(Rejection::InvalidNodeKey(a.node));
    }
    Ok(())
}

fn check_service(s: &ServiceAnnouncement) -> Result<(), Rejection> {
    check_name("service name", &s.name)?;
    check_capabilities(&s.capabilities)?;
    check_len("endpoint list", s.endpoints.len(), limits::ENDPOINTS_MAX)?;
    for e in &s.endpoints {
        check_name("endpoint protocol", &e.protocol)?;
        check_len("endpoint address", e.address.len(), limits::ADDRESS_BYTES_MAX)?;
    }
    check_len("metadata", s.metadata.len(), limits::METADATA_ENTRIES_MAX)?;
    for (k, v) in &s.metadata {
        check_len("metadata key", k.len(), limits::METADATA_BYTES_MAX)?;
        check_len("metadata value", v.len(), limits::METADATA_BYTES_MAX)?;
    }
    Ok(())
}

/// Capabilities sorted and deduplicated.
fn sorted_caps(mut caps: Vec<String>) -> Vec<String> {
    caps.sort_unstable();
    caps.dedup();
    caps
}

impl Projection {
    /// An empty projection, before genesis.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a projection (and its indexes) from persisted state.
    pub fn from_state(state: ProjectionState) -> Self {
        let mut p = Projection { state, ..Default::default() };
        let services: Vec<ServiceAnnouncement> = p.state.services.values().map(|r| r.service.clone()).collect();
        for s in &services {
            p.index_service(s);
        }
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
        self.state.nodes.values()
    }

    /// One node.
    pub fn node(&self, id: &NodeId) -> Option<&NodeRecord> {
        self.state.nodes.get(id)
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
        self.state.services.values()
    }

    /// One service.
    pub fn service(&self, id: &Uuid) -> Option<&ServiceRecord> {
        self.state.services.get(id)
    }

    fn lookup<'a>(&'a self, ids: Option<&'a BTreeSet<Uuid>>) -> impl Iterator<Item = &'a ServiceRecord> + 'a {
        ids.into_iter().flatten().filter_map(move |id| self.state.services.get(id))
    }

    /// Services with this name.
    pub fn services_by_name<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a ServiceRecord> + 'a {
        self.lookup(self.by_name.get(name))
    }

    /// Services offered by this node.
    pub fn services_by_node<'a>(&'a self, node: &NodeId) -> impl Iterator<Item = &'a ServiceRecord> + 'a {
        self.lookup(self.by_node.get(node))
    }

    /// Services that provide this capability.
    pub fn services_by_capability<'a>(&'a self, capability: &str) -> impl Iterator<Item = &'a ServiceRecord> + 'a {
        self.lookup(self.by_capability.get(capability))
    }

    fn index_service(&mut self, s: &ServiceAnnouncement) {
        // Most names and capabilities are already indexed: look up by `&str` first and only
        // allocate a key for a new one.
        fn add(m: &mut HashMap<String, BTreeSet<Uuid>>, k: &str, id: Uuid) {
            match m.get_mut(k) {
                Some(set) => {
                    set.insert(id);
                }
                None => {
                    m.insert(k.to_string(), BTreeSet::from([id]));
                }
            }
        }
        add(&mut self.by_name, &s.name, s.service_id);
        self.by_node.entry(s.node).or_default().insert(s.service_id);
        for c in &s.capabilities {
            add(&mut self.by_capability, c, s.service_id);
        }
    }

    fn unindex_service(&mut self, s: &ServiceAnnouncement) {
        fn drop_from<K: std::hash::Hash + Eq>(m: &mut HashMap<K, BTreeSet<Uuid>>, k: &K, id: &Uuid) {
            if let Some(set) = m.get_mut(k) {
                set.remove(id);
                if set.is_empty() {
                    m.remove(k);
                }
            }
        }
        drop_from(&mut self.by_name, &s.name, &s.service_id);
        drop_from(&mut self.by_node, &s.node, &s.service_id);
        for c in &s.capabilities {
            drop_from(&mut self.by_capability, c, &s.service_id);
        }
    }

    fn authority_count(&self) -> usize {
        self.active_or_offline().filter(|n| n.role.is_authority()).count()
    }

    fn active_or_offline(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes().filter(|n| n.status != NodeStatus::Left)
    }

    /// The admitted, not-left record of `author`, or why not.
    fn admitted(&self, author: &NodeId) -> Result<&NodeRecord, Rejection> {
        match self.state.nodes.get(author) {
            None => Err(Rejection::UnknownAuthor(*author)),
            Some(n) if n.status == NodeStatus::Left => Err(Rejection::AuthorLeft(*author)),
            Some(n) => Ok(n),
        }
    }

    fn present_node(&self, node: &NodeId) -> Result<&NodeRecord, Rejection> {
        match self.state.nodes.get(node) {
            None => Err(Rejection::UnknownNode(*node)),
            Some(n) if n.status == NodeStatus::Left => Err(Rejection::NodeLeft(*node)),
            Some(n) => Ok(n),
        }
    }

    /// Checks `event` against the current state without the signature: network, schema,
    /// admission of the author and the semantic rules. Does not change anything.
    pub fn check(&self, event: &SignedEvent) -> Result<(), Rejection> {
        self.check_sized(event, event.encoded_len())
    }

    /// [`Projection::check`] with the size of the event's canonical encoding already known.
    fn check_sized(&self, event: &SignedEvent, size: usize) -> Result<(), Rejection> {
        if size > limits::EVENT_BYTES_MAX {
            return Err(Rejection::LimitExceeded { what: "event".into(), max: limits::EVENT_BYTES_MAX, got: size });
        }
        if event.schema_version != SCHEMA_VERSION {
            return Err(Rejection::UnsupportedSchema(event.schema_version));
        }
        let author = &event.author;
        let Some(fingerprint) = self.state.fingerprint else {
            // Empty ledger: only genesis.
            let EventBody::Genesis { network, founder } = &event.body else {
                return Err(Rejection::GenesisExpected);
            };
            check_name("network name", &network.network_name)?;
            check_announcement(founder, false)?;
            if founder.role != NodeRole::Sclerotium {
                return Err(Rejection::BadGenesis("the founder must be a sclerotium".into()));
            }
            if founder.node != *author {
                return Err(Rejection::BadGenesis("genesis must be signed by the founder".into()));
            }
            let expected = network_fingerprint(network, &founder.node);
            if expected != event.fingerprint {
                return Err(Rejection::WrongNetwork { expected, got: event.fingerprint });
            }
            return Ok(());
        };
        if event.fingerprint != fingerprint {
            return Err(Rejection::WrongNetwork { expected: fingerprint, got: event.fingerprint });
        }
        if let Some(net) = &self.state.network {
            if event.timestamp < net.genesis_timestamp {
                return Err(Rejection::BeforeGenesis(event.timestamp));
            }
        }
        let author_rec = self.admitted(author)?;
        let is_authority = author_rec.role.is_authority();
        let authority_or_self = |node: &NodeId, action: &'static str| -> Result<(), Rejection> {
            if is_authority || node == author {
                Ok(())
            } else {
                Err(Rejection::NotAuthorized { author: *author, action: action.into() })
            }
        };
        let authority_only = |action: &'static str| -> Result<(), Rejection> {
            if is_authority {
                Ok(())
            } else {
                Err(Rejection::NotAuthorized { author: *author, action: action.into() })
            }
        };
        match &event.body {
            EventBody::Genesis { .. } => Err(Rejection::UnexpectedGenesis),
            EventBody::NodeJoined(a) => {
                authority_only("admit nodes")?;
                check_announcement(a, self.keys_checked.contains(&a.node))?;
                match self.state.nodes.get(&a.node) {
                    Some(n) if n.status != NodeStatus::Left => Err(Rejection::NodeExists(a.node)),
                    _ => Ok(()),
                }
            }
            EventBody::NodeUpdated { node, name, role } => {
                let rec = self.present_node(node)?;
                authority_or_self(node, "update another node")?;
                if let Some(n) = name {
                    check_name("node name", n)?;
                }
                if let Some(r) = role {
                    authority_only("change a node's role")?;
                    if rec.role.is_authority() && !r.is_authority() && self.authority_count() <= 1 {
                        return Err(Rejection::LastAuthority(*node));
                    }
                }
                Ok(())
            }
            EventBody::NodeLeft { node, reason } => {
                let rec = self.present_node(node)?;
                authority_or_self(node, "remove another node")?;
                check_len("reason", reason.len(), limits::TEXT_BYTES_MAX)?;
                if rec.role.is_authority() && self.authority_count() <= 1 {
                    return Err(Rejection::LastAuthority(*node));
                }
                Ok(())
            }
            EventBody::CapabilitiesChanged { node, capabilities } => {
                self.present_node(node)?;
                authority_or_self(node, "change another node's capabilities")?;
                check_capabilities(capabilities)
            }
            EventBody::AddressesChanged { node, addresses } => {
                self.present_node(node)?;
                authority_or_self(node, "change another node's addresses")?;
                check_addresses(addresses)
            }
            EventBody::TrustScoreChanged { node, score, reason } => {
                self.present_node(node)?;
                authority_only("set trust scores")?;
                if node == author {
                    return Err(Rejection::NotAuthorized { author: *author, action: "set its own trust score".into() });
                }
                if *score > TrustScore::MAX {
                    return Err(Rejection::TrustOutOfRange(score.0));
                }
                check_len("reason", reason.len(), limits::TEXT_BYTES_MAX)
            }
            EventBody::ServiceRegistered(s) => {
                self.present_node(&s.node)?;
                authority_or_self(&s.node, "register a service for another node")?;
                check_service(s)?;
                if self.state.services.contains_key(&s.service_id) {
                    return Err(Rejection::ServiceExists(s.service_id));
                }
                Ok(())
            }
            EventBody::ServiceDeregistered { service_id, reason } => {
                let rec = self.state.services.get(service_id).ok_or(Rejection::UnknownService(*service_id))?;
                authority_or_self(&rec.service.node, "deregister another node's service")?;
                check_len("reason", reason.len(), limits::TEXT_BYTES_MAX)
            }
            EventBody::NodeWentOffline { node, last_seen: _ } => {
                let rec = self.present_node(node)?;
                authority_only("commit liveness transitions")?;
                if rec.status != NodeStatus::Active {
                    return Err(Rejection::InvalidTransition { node: *node, from: rec.status, to: "offline".into() });
                }
                Ok(())
            }
            EventBody::NodeBackOnline { node } => {
                let rec = self.present_node(node)?;
                authority_or_self(node, "bring another node back online")?;
                if rec.status != NodeStatus::Offline {
                    return Err(Rejection::InvalidTransition { node: *node, from: rec.status, to: "online".into() });
                }
                Ok(())
            }
            EventBody::SplitBrainResolved(r) => {
                let (fork_seq, winner_head_seq, decided_by) = (&r.fork_seq, &r.winner_head_seq, &r.decided_by);
                authority_only("settle a split-brain")?;
                let head = self.state.head.ok_or(Rejection::GenesisExpected)?;
                if *fork_seq == 0 || fork_seq > winner_head_seq || *winner_head_seq > head.seq {
                    return Err(Rejection::BadResolution(
                        "a resolution names a fork after its winner's head, or at genesis".into(),
                    ));
                }
                if !matches!(decided_by.as_str(), "authority" | "activity" | "tie-break") {
                    return Err(Rejection::BadResolution(
                        "a resolution's rule must be authority, activity or tie-break".into(),
                    ));
                }
                Ok(())
            }
            EventBody::Checkpoint { head_seq, head_hash } | EventBody::StateCheckpoint { head_seq, head_hash, .. } => {
                // The attested digest is not a rule: a replica whose state differs must still
                // take the event (the chain is the ground truth) and reports the divergence.
                authority_only("commit checkpoints")?;
                let head = self.state.head.ok_or(Rejection::GenesisExpected)?;
                if *head_seq != head.seq || *head_hash != head.hash {
                    return Err(Rejection::CheckpointMismatch { head_seq: head.seq, got_seq: *head_seq });
                }
                Ok(())
            }
        }
    }

    /// Validates `event` (everything but its signature), links it after the head and applies it.
    /// Returns the chained event. On rejection nothing changes.
    pub fn append(&mut self, event: SignedEvent) -> Result<ChainedEvent, Rejection> {
        self.check(&event)?;
        let chained = ChainedEvent::link(self.next_seq(), self.head_hash(), event);
        self.mutate(&chained);
        Ok(chained)
    }

    /// [`Projection::append`] with the event's canonical encoding at hand (`canonical` must be
    /// `event.canonical_bytes()`, so it is not encoded again for the size rule and the hash),
    /// reading the event in place (what the state keeps of it is copied). Returns the seq,
    /// previous hash and hash it got. On rejection nothing changes.
    #[inline]
    pub(crate) fn append_canonical_ref(
        &mut self,
        event: &SignedEvent,
        canonical: &[u8],
    ) -> Result<(u64, ChainHash, ChainHash), Rejection> {
        debug_assert_eq!(canonical, event.canonical_bytes().as_slice());
        self.check_sized(event, canonical.len())?;
        let (seq, prev) = (self.next_seq(), self.head_hash());
        let hash = crate::core::event::chain_hash(&prev, seq, canonical);
        self.mutate_owned(seq, hash, event.fingerprint, event.author, event.timestamp, state_part(&event.body));
        Ok((seq, prev, hash))
    }

    /// [`Projection::apply`] of an event the caller owns and no longer needs (replay), whose
    /// canonical encoding is `size` bytes long: nothing is encoded or cloned.
    pub(crate) fn apply_owned(&mut self, chained: ChainedEvent, size: usize) -> Result<(), Rejection> {
        let expected = self.next_seq();
        if chained.seq != expected || chained.prev_hash != self.head_hash() {
            return Err(Rejection::NotNext { expected, got: chained.seq });
        }
        self.check_sized(&chained.event, size)?;
        let ChainedEvent { seq, hash, event, .. } = chained;
        self.mutate_owned(seq, hash, event.fingerprint, event.author, event.timestamp, event.body);
        Ok(())
    }

    /// Validates `event` (canonical encoding `size` bytes long) and applies it at the next
    /// sequence number **without its chain hash**: the head's hash is left as
    /// [`ChainHash::ZERO`] until [`Projection::set_head_hash`] sets it. For a caller that
    /// computes the chain hashes apart (on another core); until then the only rule that reads
    /// the head's hash, a checkpoint's, cannot be checked, so a checkpoint is refused here
    /// and must go through [`Projection::append_canonical_ref`]. Returns the seq it got.
    pub(crate) fn apply_unhashed(&mut self, event: &SignedEvent, size: usize) -> Result<u64, Rejection> {
        if event.body.is_checkpoint() {
            return Err(Rejection::CheckpointMismatch { head_seq: self.state.head.map_or(0, |h| h.seq), got_seq: 0 });
        }
        self.check_sized(event, size)?;
        let seq = self.next_seq();
        self.mutate_owned(
            seq,
            ChainHash::ZERO,
            event.fingerprint,
            event.author,
            event.timestamp,
            state_part(&event.body),
        );
        Ok(seq)
    }

    /// Sets the hash of the head (after [`Projection::apply_unhashed`]).
    pub(crate) fn set_head_hash(&mut self, hash: ChainHash) {
        if let Some(h) = self.state.head.as_mut() {
            h.hash = hash;
        }
    }

    /// [`Projection::apply`] of an event whose canonical encoding is `size` bytes long (not
    /// measured again).
    pub(crate) fn apply_sized(&mut self, chained: &ChainedEvent, size: usize) -> Result<(), Rejection> {
        let expected = self.next_seq();
        if chained.seq != expected || chained.prev_hash != self.head_hash() {
            return Err(Rejection::NotNext { expected, got: chained.seq });
        }
        self.check_sized(&chained.event, size)?;
        self.mutate(chained);
        Ok(())
    }

    /// Applies an already chained event (replay). Checks that it is the next link and passes
    /// [`Projection::check`]; does not recompute its hash or verify its signature.
    pub fn apply(&mut self, chained: &ChainedEvent) -> Result<(), Rejection> {
        let expected = self.next_seq();
        if chained.seq != expected || chained.prev_hash != self.head_hash() {
            return Err(Rejection::NotNext { expected, got: chained.seq });
        }
        self.check(&chained.event)?;
        self.mutate(chained);
        Ok(())
    }

    fn touch(&mut self, node: &NodeId, ts: Timestamp) {
        if let Some(n) = self.state.nodes.get_mut(node) {
            n.last_activity = n.last_activity.max(ts);
        }
    }

    fn insert_node(&mut self, a: NodeAnnouncement, seq: u64, ts: Timestamp, trust: TrustScore) {
        // Only called for announcements that passed `check_announcement`, key included.
        self.keys_checked.insert(a.node);
        self.state.nodes.insert(
            a.node,
            NodeRecord {
                node: a.node,
                name: a.name,
                role: a.role,
                addresses: a.addresses,
                capabilities: sorted_caps(a.capabilities),
                trust,
                status: NodeStatus::Active,
                joined_seq: seq,
                joined_at: ts,
                last_activity: ts,
                offline_last_seen: None,
                updated_seq: seq,
            },
        );
    }

    fn remove_services_of(&mut self, node: &NodeId) {
        let ids: Vec<Uuid> = self.by_node.get(node).map(|s| s.iter().copied().collect()).unwrap_or_default();
        for id in ids {
            if let Some(rec) = self.state.services.remove(&id) {
                self.unindex_service(&rec.service);
            }
        }
    }

    /// Applies a checked event. Infallible by construction: every precondition was checked.
    fn mutate(&mut self, ce: &ChainedEvent) {
        let ev = &ce.event;
        self.mutate_owned(ce.seq, ce.hash, ev.fingerprint, ev.author, ev.timestamp, state_part(&ev.body));
    }

    /// [`Projection::mutate`] taking the body by value: what the state keeps is moved into it,
    /// not cloned (replay applies events it owns and drops afterwards).
    fn mutate_owned(
        &mut self,
        seq: u64,
        hash: ChainHash,
        fingerprint: NetworkFingerprint,
        author: NodeId,
        ts: Timestamp,
        body: EventBody,
    ) {
        match body {
            EventBody::Genesis { network, founder } => {
                self.state.network = Some(network);
                self.state.fingerprint = Some(fingerprint);
                self.insert_node(founder, seq, ts, TrustScore::MAX);
            }
            EventBody::NodeJoined(a) => self.insert_node(a, seq, ts, TrustScore::INITIAL),
            EventBody::NodeUpdated { node, name, role } => {
                if let Some(n) = self.state.nodes.get_mut(&node) {
                    if let Some(name) = name {
                        n.name = name;
                    }
                    if let Some(role) = role {
                        n.role = role;
                    }
                    n.updated_seq = seq;
                }
            }
            EventBody::NodeLeft { node, .. } => {
                if let Some(n) = self.state.nodes.get_mut(&node) {
                    n.status = NodeStatus::Left;
                    n.offline_last_seen = None;
                    n.updated_seq = seq;
                }
                self.remove_services_of(&node);
            }
            EventBody::CapabilitiesChanged { node, capabilities } => {
                if let Some(n) = self.state.nodes.get_mut(&node) {
                    n.capabilities = sorted_caps(capabilities);
                    n.updated_seq = seq;
                }
            }
            EventBody::AddressesChanged { node, addresses } => {
                if let Some(n) = self.state.nodes.get_mut(&node) {
                    n.addresses = addresses;
                    n.updated_seq = seq;
                }
            }
            EventBody::TrustScoreChanged { node, score, .. } => {
                if let Some(n) = self.state.nodes.get_mut(&node) {
                    n.trust = score;
                    n.updated_seq = seq;
                }
            }
            EventBody::ServiceRegistered(s) => {
                self.index_service(&s);
                self.state.services.insert(
                    s.service_id,
                    ServiceRecord { service: s, registered_seq: seq, registered_at: ts, registered_by: author },
                );
            }
            EventBody::ServiceDeregistered { service_id, .. } => {
                if let Some(rec) = self.state.services.remove(&service_id) {
                    self.unindex_service(&rec.service);
                }
            }
            EventBody::NodeWentOffline { node, last_seen } => {
                if let Some(n) = self.state.nodes.get_mut(&node) {
                    n.status = NodeStatus::Offline;
                    n.offline_last_seen = Some(last_seen);
                    n.updated_seq = seq;
                }
            }
            EventBody::NodeBackOnline { node } => {
                if let Some(n) = self.state.nodes.get_mut(&node) {
                    n.status = NodeStatus::Active;
                    n.offline_last_seen = None;
                    n.updated_seq = seq;
                }
                self.touch(&node, ts);
            }
            EventBody::SplitBrainResolved(_) => {}
            EventBody::Checkpoint { head_seq, head_hash } => {
                let attested = self.state.head.map(|h| h.timestamp).unwrap_or_default();
                self.state.last_checkpoint =
                    Some((seq, ChainHead { seq: head_seq, hash: head_hash, timestamp: attested }));
            }
            EventBody::StateCheckpoint { head_seq, head_hash, state_digest: attested_digest } => {
                // The state here is the state at `head_seq` (the rules checked it is the head).
                let computed = state_digest(&self.state);
                if computed != attested_digest && self.divergence.is_none() {
                    self.divergence = Some(StateDivergence { seq, head_seq, attested: attested_digest, computed });
                }
                let attested = self.state.head.map(|h| h.timestamp).unwrap_or_default();
                self.state.last_checkpoint =
                    Some((seq, ChainHead { seq: head_seq, hash: head_hash, timestamp: attested }));
            }
        }
        self.touch(&author, ts);
        self.state.head = Some(ChainHead { seq, hash, timestamp: ts });
    }
}

/// A copy of `body` with what applying it keeps; the audit-trail texts (reasons), which the
/// state does not keep, are left empty so copying them costs nothing.
fn state_part(body: &EventBody) -> EventBody {
    match body {
        EventBody::NodeLeft { node, .. } => EventBody::NodeLeft { node: *node, reason: String::new() },
        EventBody::TrustScoreChanged { node, score, .. } => {
            EventBody::TrustScoreChanged { node: *node, score: *score, reason: String::new() }
        }
        EventBody::ServiceDeregistered { service_id, .. } => {
            EventBody::ServiceDeregistered { service_id: *service_id, reason: String::new() }
        }
        other => other.clone(),
    }
}

impl PartialEq for Projection {
    fn eq(&self, other: &Self) -> bool {
        self.state == other.state
    }
}

impl Eq for Projection {}
