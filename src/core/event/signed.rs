//! What an author signs: [`SignedEvent`], its canonical encoding (BCS) and signing message,
//! and the network fingerprint every event carries.

use serde::{Deserialize, Serialize};

use super::{EventBody, NodeAnnouncement, DOMAIN_EVENT_SIGNATURE, DOMAIN_FINGERPRINT, SCHEMA_VERSION};
use crate::core::keys::NodeKey;
use crate::core::limits;
use crate::core::types::{NetworkFingerprint, NetworkIdentityRecord, NodeId, SignatureBytes, Timestamp};

/// Computes the network fingerprint: `blake3(DOMAIN_FINGERPRINT || bcs(network) || founder key)`.
pub fn network_fingerprint(network: &NetworkIdentityRecord, founder: &NodeId) -> NetworkFingerprint {
    let mut h = blake3::Hasher::new();
    h.update(DOMAIN_FINGERPRINT);
    h.update(&canonical_bytes(network));
    h.update(founder.as_bytes());
    NetworkFingerprint(*h.finalize().as_bytes())
}

/// The signed part of an event, borrowed, in canonical field order. The encoder in
/// `core::canonical` writes it; this serde form pins that encoder to BCS in the tests.
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
        crate::core::canonical::signed_content(out, self);
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
        crate::core::canonical::signed_event(out, self);
    }

    /// Size of the canonical encoding in bytes (computed without encoding).
    pub fn encoded_len(&self) -> usize {
        let mut n = crate::core::canonical::Counter::default();
        crate::core::canonical::signed_event(&mut n, self);
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
    crate::core::canonical::body(&mut out, body);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::{ServiceAnnouncement, SplitBrainResolution};
    use crate::core::types::{ChainHash, NodeRole, StateDigest, TrustScore};
    use uuid::Uuid;

    fn key(n: u8) -> NodeKey {
        NodeKey::from_seed([n; 32])
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
                            name: name.into(),
                            node,
                            capabilities: capabilities.into_iter().map(Into::into).collect(),
                            endpoints: eps
                                .into_iter()
                                .map(|(protocol, address)| Endpoint {
                                    protocol: protocol.into(),
                                    address: address.into(),
                                })
                                .collect(),
                            metadata: metadata.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
                        })
                    }),
                (uuid(), text()).prop_map(|(service_id, reason)| EventBody::ServiceDeregistered { service_id, reason }),
                (uuid(), any::<bool>(), text()).prop_map(|(service_id, passing, reason)| {
                    EventBody::ServiceHealthChanged { service_id, passing, reason }
                }),
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
}
