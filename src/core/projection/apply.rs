//! The mutation: how an event that passed [`Projection::check`] changes the state (append,
//! apply, replay), deterministically and infallibly; applying a `state_checkpoint` compares its
//! attested digest with the state and records a divergence.

use std::sync::Arc;

use uuid::Uuid;

use super::{ChainHead, NodeRecord, NodeStatus, Projection, Rejection, ServiceHealth, ServiceRecord};
use crate::core::attest::{state_digest, StateDivergence};
use crate::core::compact::{List, Str};
use crate::core::event::{ChainedEvent, EventBody, NodeAnnouncement, SignedEvent};
use crate::core::types::{ChainHash, NetworkFingerprint, NodeId, Timestamp, TrustScore};

/// Capabilities sorted and deduplicated.
fn sorted_caps(mut caps: Vec<String>) -> List<Str> {
    caps.sort_unstable();
    caps.dedup();
    texts(caps)
}

/// The record's form of an event's list of texts.
fn texts(v: Vec<String>) -> List<Str> {
    v.into_iter().map(Str::from).collect()
}

impl Projection {
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

    /// A node's record to change: copied first if a published snapshot shares it.
    fn node_mut(&mut self, node: &NodeId) -> Option<&mut NodeRecord> {
        self.state.nodes.get_mut(node).map(Arc::make_mut)
    }

    fn touch(&mut self, node: &NodeId, ts: Timestamp) {
        if let Some(n) = self.node_mut(node) {
            n.last_activity = n.last_activity.max(ts);
        }
    }

    fn insert_node(&mut self, a: NodeAnnouncement, seq: u64, ts: Timestamp, trust: TrustScore) {
        // Only called for announcements that passed `check_announcement`, key included.
        self.keys_checked.insert(a.node);
        self.state.nodes.insert(
            a.node,
            Arc::new(NodeRecord {
                node: a.node,
                name: a.name.into(),
                role: a.role,
                addresses: texts(a.addresses),
                capabilities: sorted_caps(a.capabilities),
                trust,
                status: NodeStatus::Active,
                joined_seq: seq,
                joined_at: ts,
                last_activity: ts,
                offline_last_seen: None,
                updated_seq: seq,
            }),
        );
    }

    fn remove_services_of(&mut self, node: &NodeId) {
        let ids: Vec<Uuid> = self.services_by_node(node).map(|r| r.service.service_id).collect();
        for id in ids {
            if let Some(rec) = self.state.services.remove(&id) {
                self.unindex_service(&rec);
            }
            self.state.critical.remove(&id);
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
                if let Some(n) = self.node_mut(&node) {
                    if let Some(name) = name {
                        n.name = name.into();
                    }
                    if let Some(role) = role {
                        n.role = role;
                    }
                    n.updated_seq = seq;
                }
            }
            EventBody::NodeLeft { node, .. } => {
                if let Some(n) = self.node_mut(&node) {
                    n.status = NodeStatus::Left;
                    n.offline_last_seen = None;
                    n.updated_seq = seq;
                }
                self.remove_services_of(&node);
            }
            EventBody::CapabilitiesChanged { node, capabilities } => {
                if let Some(n) = self.node_mut(&node) {
                    n.capabilities = sorted_caps(capabilities);
                    n.updated_seq = seq;
                }
            }
            EventBody::AddressesChanged { node, addresses } => {
                if let Some(n) = self.node_mut(&node) {
                    n.addresses = texts(addresses);
                    n.updated_seq = seq;
                }
            }
            EventBody::TrustScoreChanged { node, score, .. } => {
                if let Some(n) = self.node_mut(&node) {
                    n.trust = score;
                    n.updated_seq = seq;
                }
            }
            EventBody::ServiceRegistered(s) => {
                let id = s.service_id;
                let record = Arc::new(ServiceRecord {
                    service: s,
                    registered_seq: seq,
                    registered_at: ts,
                    registered_by: author,
                });
                self.index_service(&record);
                self.state.services.insert(id, record);
            }
            EventBody::ServiceDeregistered { service_id, .. } => {
                if let Some(rec) = self.state.services.remove(&service_id) {
                    self.unindex_service(&rec);
                }
                self.state.critical.remove(&service_id);
            }
            EventBody::ServiceHealthChanged { service_id, passing, reason } => {
                if passing {
                    self.state.critical.remove(&service_id);
                } else {
                    self.state
                        .critical
                        .insert(service_id, Arc::new(ServiceHealth { since_seq: seq, since: ts, reason }));
                }
            }
            EventBody::NodeWentOffline { node, last_seen } => {
                if let Some(n) = self.node_mut(&node) {
                    n.status = NodeStatus::Offline;
                    n.offline_last_seen = Some(last_seen);
                    n.updated_seq = seq;
                }
            }
            EventBody::NodeBackOnline { node } => {
                if let Some(n) = self.node_mut(&node) {
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
