//! The rules: [`Projection::check`] decides, without changing anything, whether an event may
//! be applied (network, schema, admission of the author, the semantic rules of
//! `schema/rules.md`), and says why not with a typed [`Rejection`].

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{NodeRecord, NodeStatus, Projection};
use crate::core::event::{
    network_fingerprint, EventBody, NodeAnnouncement, ServiceAnnouncement, SignedEvent, SCHEMA_VERSION,
};
use crate::core::health::CheckSpec;
use crate::core::limits;
use crate::core::types::{NetworkFingerprint, NodeId, NodeRole, Timestamp, TrustScore};

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
    /// A service's health check (its `spores.check` metadata) is not one the rules accept.
    #[error("{0}")]
    BadCheck(Text),
    /// A health event that is no transition: the service is already in that state.
    #[error("service {service} is already {}", if *.passing { "passing" } else { "critical" })]
    HealthUnchanged {
        /// The service.
        service: Uuid,
        /// The state the event asked for.
        passing: bool,
    },
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

fn check_capabilities<T: AsRef<str>>(caps: &[T]) -> Result<(), Rejection> {
    check_len("capability list", caps.len(), limits::CAPABILITIES_MAX)?;
    for c in caps.iter().map(AsRef::as_ref) {
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

impl Projection {
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

    /// A registered service's check, if it carries one: a spec within the bounds, and no more
    /// checked services on its node than [`limits::CHECKED_SERVICES_PER_NODE_MAX`].
    fn check_health_check(&self, s: &ServiceAnnouncement) -> Result<(), Rejection> {
        let Some(spec) = CheckSpec::from_metadata(&s.metadata) else { return Ok(()) };
        spec.map_err(|e| Rejection::BadCheck(e.to_string().into()))?;
        let checked = self.checked_services_by_node(&s.node).count();
        let max = limits::CHECKED_SERVICES_PER_NODE_MAX;
        if checked >= max {
            return Err(Rejection::LimitExceeded {
                what: "checked services of one node".into(),
                max,
                got: checked + 1,
            });
        }
        Ok(())
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
    pub(super) fn check_sized(&self, event: &SignedEvent, size: usize) -> Result<(), Rejection> {
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
                self.check_health_check(s)
            }
            EventBody::ServiceDeregistered { service_id, reason } => {
                let rec = self.state.services.get(service_id).ok_or(Rejection::UnknownService(*service_id))?;
                authority_or_self(&rec.service.node, "deregister another node's service")?;
                check_len("reason", reason.len(), limits::TEXT_BYTES_MAX)
            }
            EventBody::ServiceHealthChanged { service_id, passing, reason } => {
                let rec = self.state.services.get(service_id).ok_or(Rejection::UnknownService(*service_id))?;
                authority_or_self(&rec.service.node, "change another node's service health")?;
                check_len("reason", reason.len(), limits::TEXT_BYTES_MAX)?;
                if self.state.critical.contains_key(service_id) != *passing {
                    return Err(Rejection::HealthUnchanged { service: *service_id, passing: *passing });
                }
                Ok(())
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
}
