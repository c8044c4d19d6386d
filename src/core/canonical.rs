//! A hand-written encoder of the canonical (BCS) form of events, byte for byte what
//! `bcs::serialize` gives for these types (see `schema/encoding.md`).
//!
//! Why: BCS through serde writes the fixed 32- and 64-byte fields (keys, fingerprints,
//! signatures) one `serialize_u8` call at a time through `io::Write`; that was the largest
//! single cost of replay, append and apply. This encoder copies them whole. It is pinned to
//! `bcs` by the golden vectors and by a property test that compares the two on arbitrary
//! events; `bcs` stays the decoder.

use uuid::Uuid;

use super::event::{EventBody, NodeAnnouncement, ServiceAnnouncement, SignedEvent};
use super::types::{NetworkIdentityRecord, NodeRole};

/// Where encoded bytes go: a buffer, or a counter (for the encoded size without encoding).
pub(crate) trait Sink {
    /// Appends bytes.
    fn put(&mut self, bytes: &[u8]);
    /// Appends one byte.
    fn byte(&mut self, b: u8);
}

impl Sink for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    #[inline]
    fn byte(&mut self, b: u8) {
        self.push(b);
    }
}

/// Counts bytes instead of writing them.
#[derive(Default)]
pub(crate) struct Counter(pub usize);

impl Sink for Counter {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
    #[inline]
    fn byte(&mut self, _: u8) {
        self.0 += 1;
    }
}

#[inline]
fn uleb<S: Sink>(out: &mut S, mut v: usize) {
    while v >= 0x80 {
        out.byte((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.byte(v as u8);
}

#[inline]
fn string<S: Sink>(out: &mut S, s: &str) {
    uleb(out, s.len());
    out.put(s.as_bytes());
}

fn strings<S: Sink, T: AsRef<str>>(out: &mut S, v: &[T]) {
    uleb(out, v.len());
    for s in v {
        string(out, s.as_ref());
    }
}

#[inline]
fn uuid<S: Sink>(out: &mut S, id: &Uuid) {
    // uuid's serde writes `serialize_bytes`: length 16, then the bytes.
    out.byte(16);
    out.put(id.as_bytes());
}

#[inline]
fn role<S: Sink>(out: &mut S, r: NodeRole) {
    out.byte(match r {
        NodeRole::Sclerotium => 0,
        NodeRole::Rhizomorph => 1,
    });
}

fn network<S: Sink>(out: &mut S, n: &NetworkIdentityRecord) {
    uuid(out, &n.network_id);
    string(out, &n.network_name);
    out.put(&n.genesis_timestamp.0.to_le_bytes());
}

fn announcement<S: Sink>(out: &mut S, a: &NodeAnnouncement) {
    out.put(a.node.as_bytes());
    string(out, &a.name);
    role(out, a.role);
    strings(out, &a.addresses);
    strings(out, &a.capabilities);
}

fn service<S: Sink>(out: &mut S, s: &ServiceAnnouncement) {
    uuid(out, &s.service_id);
    string(out, &s.name);
    out.put(s.node.as_bytes());
    strings(out, &s.capabilities);
    uleb(out, s.endpoints.len());
    for e in &s.endpoints {
        string(out, &e.protocol);
        string(out, &e.address);
    }
    uleb(out, s.metadata.len());
    for (k, v) in &s.metadata {
        string(out, k);
        string(out, v);
    }
}

/// Encodes an event body.
pub(crate) fn body<S: Sink>(out: &mut S, b: &EventBody) {
    match b {
        EventBody::Genesis { network: n, founder } => {
            out.byte(0);
            network(out, n);
            announcement(out, founder);
        }
        EventBody::NodeJoined(a) => {
            out.byte(1);
            announcement(out, a);
        }
        EventBody::NodeUpdated { node, name, role: r } => {
            out.byte(2);
            out.put(node.as_bytes());
            match name {
                None => out.byte(0),
                Some(n) => {
                    out.byte(1);
                    string(out, n);
                }
            }
            match r {
                None => out.byte(0),
                Some(r) => {
                    out.byte(1);
                    role(out, *r);
                }
            }
        }
        EventBody::NodeLeft { node, reason } => {
            out.byte(3);
            out.put(node.as_bytes());
            string(out, reason);
        }
        EventBody::CapabilitiesChanged { node, capabilities } => {
            out.byte(4);
            out.put(node.as_bytes());
            strings(out, capabilities);
        }
        EventBody::AddressesChanged { node, addresses } => {
            out.byte(5);
            out.put(node.as_bytes());
            strings(out, addresses);
        }
        EventBody::TrustScoreChanged { node, score, reason } => {
            out.byte(6);
            out.put(node.as_bytes());
            out.put(&score.0.to_le_bytes());
            string(out, reason);
        }
        EventBody::ServiceRegistered(s) => {
            out.byte(7);
            service(out, s);
        }
        EventBody::ServiceDeregistered { service_id, reason } => {
            out.byte(8);
            uuid(out, service_id);
            string(out, reason);
        }
        EventBody::NodeWentOffline { node, last_seen } => {
            out.byte(9);
            out.put(node.as_bytes());
            out.put(&last_seen.0.to_le_bytes());
        }
        EventBody::NodeBackOnline { node } => {
            out.byte(10);
            out.put(node.as_bytes());
        }
        EventBody::Checkpoint { head_seq, head_hash } => {
            out.byte(11);
            out.put(&head_seq.to_le_bytes());
            out.put(head_hash.as_bytes());
        }
        EventBody::SplitBrainResolved(r) => {
            let crate::core::event::SplitBrainResolution {
                fork_seq,
                winner_first,
                winner_head_seq,
                winner_head,
                loser_first,
                loser_head_seq,
                loser_head,
                decided_by,
                adopted,
                conflicts,
            } = r.as_ref();
            out.byte(12);
            out.put(&fork_seq.to_le_bytes());
            out.put(winner_first.as_bytes());
            out.put(&winner_head_seq.to_le_bytes());
            out.put(winner_head.as_bytes());
            out.put(loser_first.as_bytes());
            out.put(&loser_head_seq.to_le_bytes());
            out.put(loser_head.as_bytes());
            string(out, decided_by);
            out.put(&adopted.to_le_bytes());
            out.put(&conflicts.to_le_bytes());
        }
        EventBody::StateCheckpoint { head_seq, head_hash, state_digest } => {
            out.byte(13);
            out.put(&head_seq.to_le_bytes());
            out.put(head_hash.as_bytes());
            out.put(state_digest.as_bytes());
        }
        EventBody::ServiceHealthChanged { service_id, passing, reason } => {
            out.byte(14);
            uuid(out, service_id);
            out.byte(u8::from(*passing));
            string(out, reason);
        }
    }
}

/// Encodes a whole signed event (`SignedEvent` in `schema/encoding.md`).
pub(crate) fn signed_event<S: Sink>(out: &mut S, e: &SignedEvent) {
    out.put(&e.schema_version.to_le_bytes());
    out.put(e.fingerprint.as_bytes());
    out.put(e.author.as_bytes());
    out.put(&e.timestamp.0.to_le_bytes());
    body(out, &e.body);
    out.put(&e.signature.0);
}

/// Encodes the signed content (`SignedContent`): the event without fingerprint and signature.
pub(crate) fn signed_content<S: Sink>(out: &mut S, e: &SignedEvent) {
    out.put(&e.schema_version.to_le_bytes());
    out.put(e.author.as_bytes());
    out.put(&e.timestamp.0.to_le_bytes());
    body(out, &e.body);
}
