//! Spore events: what is signed, how it is encoded canonically, and how it is chained.
//!
//! The **canonical encoding** is BCS (Binary Canonical Serialization) of the types below, in
//! field order. It is what is hashed and signed, and it is specified byte for byte in
//! `schema/events.md` and pinned by the golden vectors in `schema/vectors/`. The on-disk
//! record format (rkyv) is separate and may change without invalidating any signature.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::keys::NodeKey;
use super::limits;
use super::types::{
    ChainHash, Endpoint, NetworkFingerprint, NetworkIdentityRecord, NodeId, NodeRole, SignatureBytes, StateDigest,
    Timestamp, TrustScore,
};

/// The version of the event schema this code writes and accepts.
pub const SCHEMA_VERSION: u16 = 1;

/// Domain tag prefixed to every event signature.
pub const DOMAIN_EVENT_SIGNATURE: &[u8] = b"mycnet-spores/v1/event-signature\0";
/// Domain tag of the network fingerprint hash.
pub const DOMAIN_FINGERPRINT: &[u8] = b"mycnet-spores/v1/network-fingerprint\0";
/// Domain tag of the state digest a state checkpoint event attests.
pub const DOMAIN_STATE_DIGEST: &[u8] = b"mycnet-spores/v1/state-digest\0";

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
    pub name: String,
    /// The node that offers it.
    pub node: NodeId,
    /// Capabilities the service provides (used by capability queries).
    pub capabilities: Vec<String>,
    /// Discovery endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Free-form key/value metadata, in the order given.
    pub metadata: Vec<(String, String)>,
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
mod body {
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
    }
}
pub use body::{ArchivedEventBody, EventBody, EventBodyResolver};

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
            | EventBody::Checkpoint { .. }
            | EventBody::StateCheckpoint { .. }
            | EventBody::SplitBrainResolved(_) => None,
        }
    }

    /// The service this event is about, if any.
    pub fn subject_service(&self) -> Option<Uuid> {
        match self {
            EventBody::ServiceRegistered(s) => Some(s.service_id),
            EventBody::ServiceDeregistered { service_id, .. } => Some(*service_id),
            _ => None,
        }
    }
}

/// Computes the network fingerprint: `blake3(DOMAIN_FINGERPRINT || bcs(network) || founder key)`.
pub fn network_fingerprint(network: &NetworkIdentityRecord, founder: &NodeId) -> NetworkFingerprint {
    let mut h = blake3::Hasher::new();
    h.update(DOMAIN_FINGERPRINT);
    h.update(&canonical_bytes(network));
    h.update(founder.as_bytes());
    NetworkFingerprint(*h.finalize().as_bytes())
}

/// The signed part of an event, borrowed, in canonical field order. The encoder in
/// `super::canonical` writes it; this serde form pins that encoder to BCS in the tests.
#[cfg(test)]
#[derive(Serialize)]
struct SignedContent<'a> {
    schema_version: u16,
    author: &'a NodeId,
    timestamp: Timestamp,
    body: &'a EventBody,
}

/// An event as its author signed it.
///
/// The signature is ed25519 by `author` over
/// `DOMAIN_EVENT_SIGNATURE || fingerprint || bcs(schema_version, author, timestamp, body)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SignedEvent {
    /// [`SCHEMA_VERSION`] at signing time.
    pub schema_version: u16,
    /// The network this event belongs to.
    pub fingerprint: NetworkFingerprint,
    /// Who signed it (the node's key).
    pub author: NodeId,
    /// When the author made it. Applying never reads the clock; this is the event's time.
    pub timestamp: Timestamp,
    /// What changed.
    pub body: EventBody,
    /// ed25519 signature, see the type's doc.
    pub signature: SignatureBytes,
}

impl SignedEvent {
    /// Builds and signs an event.
    pub fn sign(key: &NodeKey, fingerprint: NetworkFingerprint, timestamp: Timestamp, body: EventBody) -> Self {
        let author = key.node_id();
        let msg = signing_message(SCHEMA_VERSION, &fingerprint, &author, timestamp, &body);
        let signature = key.sign(&msg);
        SignedEvent { schema_version: SCHEMA_VERSION, fingerprint, author, timestamp, body, signature }
    }

    /// Builds and signs a genesis event; the fingerprint is computed from it.
    pub fn genesis(key: &NodeKey, network: NetworkIdentityRecord, founder: NodeAnnouncement) -> Self {
        let fingerprint = network_fingerprint(&network, &founder.node);
        let timestamp = network.genesis_timestamp;
        Self::sign(key, fingerprint, timestamp, EventBody::Genesis { network, founder })
    }

    /// The exact bytes the signature covers.
    pub fn signing_message(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.write_signing_message(&mut out);
        out
    }

    /// Appends the exact bytes the signature covers to `out` (reuses its allocation).
    pub fn write_signing_message(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(DOMAIN_EVENT_SIGNATURE);
        out.extend_from_slice(self.fingerprint.as_bytes());
        super::canonical::signed_content(out, self);
    }

    /// The canonical encoding of the whole signed event (what the chain hash covers).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.write_canonical_bytes(&mut out);
        out
    }

    /// Appends the canonical encoding of the whole signed event to `out` (reuses its
    /// allocation).
    pub fn write_canonical_bytes(&self, out: &mut Vec<u8>) {
        super::canonical::signed_event(out, self);
    }

    /// Size of the canonical encoding in bytes (computed without encoding).
    pub fn encoded_len(&self) -> usize {
        let mut n = super::canonical::Counter::default();
        super::canonical::signed_event(&mut n, self);
        n.0
    }

    /// Decodes a canonical encoding. Never panics; rejects trailing bytes and anything over
    /// [`limits::EVENT_BYTES_MAX`].
    pub fn from_canonical_bytes(bytes: &[u8]) -> Result<Self, bcs::Error> {
        if bytes.len() > limits::EVENT_BYTES_MAX {
            return Err(bcs::Error::ExceededMaxLen(bytes.len()));
        }
        bcs::from_bytes_with_limit(bytes, limits::BCS_CONTAINER_DEPTH_MAX)
    }
}

fn signing_message(
    schema_version: u16,
    fingerprint: &NetworkFingerprint,
    author: &NodeId,
    timestamp: Timestamp,
    body: &EventBody,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(DOMAIN_EVENT_SIGNATURE);
    out.extend_from_slice(fingerprint.as_bytes());
    out.extend_from_slice(&schema_version.to_le_bytes());
    out.extend_from_slice(author.as_bytes());
    out.extend_from_slice(&timestamp.0.to_le_bytes());
    super::canonical::body(&mut out, body);
    out
}

/// Appends the signing message of the event whose canonical encoding is `canonical` to `out`,
/// by rearranging its bytes (`schema/encoding.md`): `DOMAIN ‖ c[2..34] ‖ c[0..2] ‖ c[34..len−64]`.
/// Returns `false` (writing nothing) if `canonical` is too short to be an event.
pub(crate) fn signing_message_from_canonical(canonical: &[u8], out: &mut Vec<u8>) -> bool {
    const HEAD: usize = 2 + 32;
    const SIG: usize = 64;
    if canonical.len() < HEAD + SIG {
        return false;
    }
    out.reserve(DOMAIN_EVENT_SIGNATURE.len() + canonical.len() - SIG);
    out.extend_from_slice(DOMAIN_EVENT_SIGNATURE);
    out.extend_from_slice(&canonical[2..HEAD]);
    out.extend_from_slice(&canonical[..2]);
    out.extend_from_slice(&canonical[HEAD..canonical.len() - SIG]);
    true
}

/// BCS-encodes `value`. Our types contain no maps and nest shallowly, so encoding cannot fail;
/// a failure would be a programming error caught by the golden-vector tests.
pub(crate) fn canonical_bytes<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_canonical(value, &mut out);
    out
}

pub(crate) fn write_canonical<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    // `bcs::serialize_into` only fails on a container nested deeper than BCS allows, which our
    // types cannot be; the assert documents that.
    let r = bcs::serialize_into(out, value);
    debug_assert!(r.is_ok(), "canonical encoding failed: {r:?}");
}

/// An event at its place in the chain.
///
/// `hash = blake3(prev_hash || seq as 8 big-endian bytes || canonical event bytes)`. The
/// chain is computed when the event is applied, identically on every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ChainedEvent {
    /// Position in the ledger; genesis is 0.
    pub seq: u64,
    /// The hash of the event at `seq - 1` ([`ChainHash::ZERO`] for genesis).
    pub prev_hash: ChainHash,
    /// This link's hash.
    pub hash: ChainHash,
    /// The signed event.
    pub event: SignedEvent,
}

/// The chain hash of an event: `blake3(prev_hash || seq_be || event_bytes)`.
pub fn chain_hash(prev_hash: &ChainHash, seq: u64, event_bytes: &[u8]) -> ChainHash {
    // Most events fit one blake3 chunk with the prefix: hashing one contiguous buffer in one
    // call takes the single-chunk path (whole blocks compressed straight from the input),
    // cheaper than three incremental updates. Same bytes, same hash.
    const ONE_CHUNK: usize = 1024;
    const PREFIX: usize = 32 + 8;
    if event_bytes.len() <= ONE_CHUNK - PREFIX {
        let mut buf = [0u8; ONE_CHUNK];
        buf[..32].copy_from_slice(prev_hash.as_bytes());
        buf[32..PREFIX].copy_from_slice(&seq.to_be_bytes());
        buf[PREFIX..PREFIX + event_bytes.len()].copy_from_slice(event_bytes);
        return ChainHash(*blake3::hash(&buf[..PREFIX + event_bytes.len()]).as_bytes());
    }
    let mut h = blake3::Hasher::new();
    h.update(prev_hash.as_bytes());
    h.update(&seq.to_be_bytes());
    h.update(event_bytes);
    ChainHash(*h.finalize().as_bytes())
}

impl ChainedEvent {
    /// Links `event` after `prev_hash` at `seq`.
    pub fn link(seq: u64, prev_hash: ChainHash, event: SignedEvent) -> Self {
        let hash = chain_hash(&prev_hash, seq, &event.canonical_bytes());
        ChainedEvent { seq, prev_hash, hash, event }
    }

    /// Recomputes the hash and compares it with the stored one.
    pub fn hash_is_valid(&self) -> bool {
        chain_hash(&self.prev_hash, self.seq, &self.event.canonical_bytes()) == self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> NodeKey {
        NodeKey::from_seed([n; 32])
    }

    /// The one-buffer path of `chain_hash` gives the hash of `prev ‖ seq BE ‖ bytes` at every
    /// length around its bound.
    #[test]
    fn chain_hash_is_blake3_of_the_concatenation() {
        let prev = ChainHash([7; 32]);
        for len in [0usize, 1, 24, 64, 983, 984, 985, 1024, 3000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
            let mut all = prev.as_bytes().to_vec();
            all.extend_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
            all.extend_from_slice(&bytes);
            assert_eq!(chain_hash(&prev, 0x0102_0304_0506_0708, &bytes).0, *blake3::hash(&all).as_bytes(), "len {len}");
        }
    }

    #[test]
    fn signature_covers_the_fingerprint() {
        let k = key(1);
        let body = EventBody::NodeBackOnline { node: k.node_id() };
        let ev = SignedEvent::sign(&k, NetworkFingerprint([1; 32]), Timestamp(5), body);
        assert!(k.verifying_key().verify_msg(&ev.signing_message(), &ev.signature));
        let mut other = ev.clone();
        other.fingerprint = NetworkFingerprint([2; 32]);
        assert!(!k.verifying_key().verify_msg(&other.signing_message(), &other.signature));
    }

    #[test]
    fn canonical_encoding_round_trips() {
        let k = key(2);
        let body = EventBody::TrustScoreChanged { node: k.node_id(), score: TrustScore(700), reason: "ok".into() };
        let ev = SignedEvent::sign(&k, NetworkFingerprint([3; 32]), Timestamp(9), body);
        let bytes = ev.canonical_bytes();
        assert_eq!(bytes.len(), ev.encoded_len());
        assert_eq!(SignedEvent::from_canonical_bytes(&bytes).ok(), Some(ev));
    }

    mod fast_encoder {
        use super::*;
        use crate::core::types::Endpoint;
        use proptest::prelude::*;

        fn text() -> impl Strategy<Value = String> {
            prop_oneof![".{0,4}", "[a-z]{100,200}", ".{0,40}"]
        }
        fn texts() -> impl Strategy<Value = Vec<String>> {
            prop::collection::vec(text(), 0..5)
        }
        fn id() -> impl Strategy<Value = NodeId> {
            any::<[u8; 32]>().prop_map(NodeId)
        }
        fn role() -> impl Strategy<Value = NodeRole> {
            prop_oneof![Just(NodeRole::Sclerotium), Just(NodeRole::Rhizomorph)]
        }
        fn ann() -> impl Strategy<Value = NodeAnnouncement> {
            (id(), text(), role(), texts(), texts()).prop_map(|(node, name, role, addresses, capabilities)| {
                NodeAnnouncement { node, name, role, addresses, capabilities }
            })
        }
        fn uuid() -> impl Strategy<Value = Uuid> {
            any::<u128>().prop_map(Uuid::from_u128)
        }
        fn body() -> impl Strategy<Value = EventBody> {
            prop_oneof![
                (uuid(), text(), any::<i64>(), ann()).prop_map(|(network_id, network_name, t, founder)| {
                    EventBody::Genesis {
                        network: NetworkIdentityRecord { network_id, network_name, genesis_timestamp: Timestamp(t) },
                        founder,
                    }
                }),
                ann().prop_map(EventBody::NodeJoined),
                (id(), prop::option::of(text()), prop::option::of(role()))
                    .prop_map(|(node, name, role)| EventBody::NodeUpdated { node, name, role }),
                (id(), text()).prop_map(|(node, reason)| EventBody::NodeLeft { node, reason }),
                (id(), texts()).prop_map(|(node, capabilities)| EventBody::CapabilitiesChanged { node, capabilities }),
                (id(), texts()).prop_map(|(node, addresses)| EventBody::AddressesChanged { node, addresses }),
                (id(), any::<u16>(), text()).prop_map(|(node, s, reason)| EventBody::TrustScoreChanged {
                    node,
                    score: TrustScore(s),
                    reason
                }),
                (
                    uuid(),
                    text(),
                    id(),
                    texts(),
                    prop::collection::vec((text(), text()), 0..4),
                    prop::collection::vec((text(), text()), 0..4)
                )
                    .prop_map(|(service_id, name, node, capabilities, eps, metadata)| {
                        EventBody::ServiceRegistered(ServiceAnnouncement {
                            service_id,
                            name,
                            node,
                            capabilities,
                            endpoints: eps
                                .into_iter()
                                .map(|(protocol, address)| Endpoint { protocol, address })
                                .collect(),
                            metadata,
                        })
                    }),
                (uuid(), text()).prop_map(|(service_id, reason)| EventBody::ServiceDeregistered { service_id, reason }),
                (id(), any::<i64>()).prop_map(|(node, t)| EventBody::NodeWentOffline { node, last_seen: Timestamp(t) }),
                id().prop_map(|node| EventBody::NodeBackOnline { node }),
                (any::<u64>(), any::<[u8; 32]>())
                    .prop_map(|(head_seq, h)| EventBody::Checkpoint { head_seq, head_hash: ChainHash(h) }),
                (any::<u64>(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(head_seq, h, d)| {
                    EventBody::StateCheckpoint { head_seq, head_hash: ChainHash(h), state_digest: StateDigest(d) }
                }),
                (any::<[u64; 5]>(), any::<[[u8; 32]; 4]>(), text()).prop_map(|(n, h, decided_by)| {
                    EventBody::SplitBrainResolved(Box::new(SplitBrainResolution {
                        fork_seq: n[0],
                        winner_first: ChainHash(h[0]),
                        winner_head_seq: n[1],
                        winner_head: ChainHash(h[1]),
                        loser_first: ChainHash(h[2]),
                        loser_head_seq: n[2],
                        loser_head: ChainHash(h[3]),
                        decided_by,
                        adopted: n[3],
                        conflicts: n[4],
                    }))
                }),
            ]
        }
        fn event() -> impl Strategy<Value = SignedEvent> {
            (any::<u16>(), any::<[u8; 32]>(), id(), any::<i64>(), body(), any::<[u8; 32]>(), any::<[u8; 32]>())
                .prop_map(|(schema_version, fp, author, t, body, s1, s2)| {
                    let mut sig = [0u8; 64];
                    sig[..32].copy_from_slice(&s1);
                    sig[32..].copy_from_slice(&s2);
                    SignedEvent {
                        schema_version,
                        fingerprint: NetworkFingerprint(fp),
                        author,
                        timestamp: Timestamp(t),
                        body,
                        signature: SignatureBytes(sig),
                    }
                })
        }

        proptest! {
            /// The hand-written encoder is byte for byte BCS, for every event.
            #[test]
            fn fast_encoder_is_bcs(ev in event()) {
                let bcs_bytes = bcs::to_bytes(&ev).expect("bcs");
                prop_assert_eq!(&ev.canonical_bytes(), &bcs_bytes);
                prop_assert_eq!(ev.encoded_len(), bcs_bytes.len());
                let content = SignedContent { schema_version: ev.schema_version, author: &ev.author, timestamp: ev.timestamp, body: &ev.body };
                let mut msg = DOMAIN_EVENT_SIGNATURE.to_vec();
                msg.extend_from_slice(ev.fingerprint.as_bytes());
                msg.extend_from_slice(&bcs::to_bytes(&content).expect("bcs"));
                prop_assert_eq!(&ev.signing_message(), &msg);
                prop_assert_eq!(&signing_message(ev.schema_version, &ev.fingerprint, &ev.author, ev.timestamp, &ev.body), &msg);
                let mut from_canonical = Vec::new();
                prop_assert!(signing_message_from_canonical(&bcs_bytes, &mut from_canonical));
                prop_assert_eq!(&from_canonical, &msg);
            }
        }
    }

    #[test]
    fn chain_hash_depends_on_every_input() {
        let a = chain_hash(&ChainHash::ZERO, 1, b"x");
        assert_ne!(a, chain_hash(&ChainHash([1; 32]), 1, b"x"));
        assert_ne!(a, chain_hash(&ChainHash::ZERO, 2, b"x"));
        assert_ne!(a, chain_hash(&ChainHash::ZERO, 1, b"y"));
    }
}
