//! Deterministic synthetic network histories: joins, capability and trust changes, services
//! coming and going, nodes going offline and back, checkpoints.
//!
//! The same [`SynthConfig`] always yields the same events, byte for byte (keys, ids and
//! timestamps all come from the seed). Used by `spore generate`, the benches and the tests.
//! Signing is the expensive part, so each chunk is planned sequentially and then signed on
//! all cores.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use uuid::Uuid;

use super::event::{EventBody, NodeAnnouncement, ServiceAnnouncement, SignedEvent};
use super::keys::NodeKey;
use super::projection::{NodeStatus, Projection};
use super::types::{Endpoint, NetworkFingerprint, NetworkIdentityRecord, NodeId, NodeRole, SignatureBytes, Timestamp, TrustScore};

/// Parameters of a synthetic history.
#[derive(Clone, Debug)]
pub struct SynthConfig {
    /// Everything is derived from this.
    pub seed: u64,
    /// How many distinct nodes take part (the founder included); at least 1.
    pub nodes: usize,
    /// How many of them are Sclerotia (authorities); the rest are Rhizomorphs.
    pub voters: usize,
    /// Genesis time.
    pub start: Timestamp,
    /// A checkpoint event at the start of every chunk (0 = none).
    pub checkpoint_every_chunk: bool,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig { seed: 1, nodes: 16, voters: 3, start: Timestamp(1_767_225_600_000_000), checkpoint_every_chunk: true }
    }
}

const SERVICE_NAMES: &[&str] =
    &["object-store", "relay", "dns", "metrics", "inference", "queue", "kv", "auth", "search", "cdn-edge", "mail", "build"];
const CAPABILITIES: &[&str] =
    &["storage", "gpu", "relay", "compute", "ipv6", "public-ip", "ssd", "arm64", "x86_64", "tpm", "low-latency", "archive"];

/// A deterministic generator of valid signed events. See the module doc.
pub struct Synth {
    cfg: SynthConfig,
    rng: ChaCha8Rng,
    keys: Vec<NodeKey>,
    projection: Projection,
    fingerprint: NetworkFingerprint,
    genesis: Option<SignedEvent>,
    now: Timestamp,
}

impl Synth {
    /// A generator; the genesis event is the first one [`Synth::next_chunk`] returns.
    pub fn new(cfg: SynthConfig) -> Self {
        let nodes = cfg.nodes.max(1);
        let keys: Vec<NodeKey> = (0..nodes)
            .map(|i| {
                let mut h = blake3::Hasher::new();
                h.update(b"mycnet-spores synth node key");
                h.update(&cfg.seed.to_le_bytes());
                h.update(&(i as u64).to_le_bytes());
                NodeKey::from_seed(*h.finalize().as_bytes())
            })
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let network = NetworkIdentityRecord {
            network_id: Uuid::from_bytes(rng.random()),
            network_name: format!("synthetic-{}", cfg.seed),
            genesis_timestamp: cfg.start,
        };
        let founder = NodeAnnouncement {
            node: keys[0].node_id(),
            name: "node-0".into(),
            role: NodeRole::Sclerotium,
            addresses: vec!["127.0.0.1:7000".into()],
            capabilities: vec!["storage".into(), "relay".into()],
        };
        let genesis = SignedEvent::genesis(&keys[0], network, founder);
        let fingerprint = genesis.fingerprint;
        let now = cfg.start;
        Synth { cfg, rng, keys, projection: Projection::new(), fingerprint, genesis: Some(genesis), now }
    }

    /// The network fingerprint of the history.
    pub fn fingerprint(&self) -> NetworkFingerprint {
        self.fingerprint
    }

    /// The keys of every node that may take part (index 0 is the founder).
    pub fn keys(&self) -> &[NodeKey] {
        &self.keys
    }

    /// The projection after every event returned so far.
    pub fn projection(&self) -> &Projection {
        &self.projection
    }

    /// The next `n` valid events (fewer only if `n` is 0). Deterministic.
    pub fn next_chunk(&mut self, n: usize) -> Vec<SignedEvent> {
        let mut out = Vec::with_capacity(n);
        if n == 0 {
            return out;
        }
        if let Some(g) = self.genesis.take() {
            if self.projection.append(g.clone()).is_ok() {
                out.push(g);
            }
        } else if self.cfg.checkpoint_every_chunk {
            if let Some(head) = self.projection.head() {
                let state_digest = self.projection.state_digest();
                let ev = self.sign_now(0, EventBody::StateCheckpoint { head_seq: head.seq, head_hash: head.hash, state_digest });
                if self.projection.append(ev.clone()).is_ok() {
                    out.push(ev);
                }
            }
        }
        // Plan on a scratch copy with placeholder signatures, sign in parallel, then apply the
        // signed events to the real projection (the state does not depend on signatures).
        let mut plan = self.projection.clone();
        let mut unsigned: Vec<(usize, Timestamp, EventBody)> = Vec::with_capacity(n);
        let mut attempts = 0usize;
        while out.len() + unsigned.len() < n && attempts < n * 20 + 100 {
            attempts += 1;
            let Some((author_idx, body)) = self.plan_one(&plan) else { continue };
            self.now = Timestamp(self.now.0 + self.rng.random_range(1_000..2_000_000));
            let placeholder = SignedEvent {
                schema_version: crate::core::event::SCHEMA_VERSION,
                fingerprint: self.fingerprint,
                author: self.keys[author_idx].node_id(),
                timestamp: self.now,
                body: body.clone(),
                signature: SignatureBytes([0; 64]),
            };
            if plan.append(placeholder).is_ok() {
                unsigned.push((author_idx, self.now, body));
            }
        }
        let keys = &self.keys;
        let fp = self.fingerprint;
        let signed: Vec<SignedEvent> =
            unsigned.into_par_iter().map(|(a, ts, body)| SignedEvent::sign(&keys[a], fp, ts, body)).collect();
        for ev in signed {
            let applied = self.projection.append(ev.clone());
            debug_assert!(applied.is_ok(), "planned event rejected: {applied:?}");
            if applied.is_ok() {
                out.push(ev);
            }
        }
        out
    }

    fn sign_now(&mut self, author_idx: usize, body: EventBody) -> SignedEvent {
        self.now = Timestamp(self.now.0 + 1_000);
        SignedEvent::sign(&self.keys[author_idx], self.fingerprint, self.now, body)
    }

    fn index_of(&self, id: &NodeId) -> Option<usize> {
        self.keys.iter().position(|k| k.node_id() == *id)
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.rng.random_range(0..items.len())].clone())
        }
    }

    fn caps(&mut self) -> Vec<String> {
        let k = self.rng.random_range(1..4);
        (0..k).map(|_| CAPABILITIES[self.rng.random_range(0..CAPABILITIES.len())].to_string()).collect()
    }

    /// Chooses one plausible event against `p`; `None` if the dice chose something impossible.
    fn plan_one(&mut self, p: &Projection) -> Option<(usize, EventBody)> {
        let authorities: Vec<usize> = p
            .active_nodes()
            .filter(|n| n.role.is_authority())
            .filter_map(|n| self.index_of(&n.node))
            .collect();
        let present: Vec<usize> =
            p.nodes().filter(|n| n.status != NodeStatus::Left).filter_map(|n| self.index_of(&n.node)).collect();
        let active: Vec<usize> = p.active_nodes().filter_map(|n| self.index_of(&n.node)).collect();
        let authority = self.pick(&authorities)?;
        let roll = self.rng.random_range(0..100u32);
        match roll {
            0..=11 => {
                // Join (or re-join after leaving).
                let absent: Vec<usize> = (0..self.keys.len())
                    .filter(|i| p.node(&self.keys[*i].node_id()).is_none_or(|n| n.status == NodeStatus::Left))
                    .collect();
                let i = self.pick(&absent)?;
                let role = if i < self.cfg.voters { NodeRole::Sclerotium } else { NodeRole::Rhizomorph };
                let port = 7000 + i;
                let capabilities = self.caps();
                Some((
                    authority,
                    EventBody::NodeJoined(NodeAnnouncement {
                        node: self.keys[i].node_id(),
                        name: format!("node-{i}"),
                        role,
                        addresses: vec![format!("127.0.0.1:{port}")],
                        capabilities,
                    }),
                ))
            }
            12..=41 => {
                let owner = self.pick(&active)?;
                let name = SERVICE_NAMES[self.rng.random_range(0..SERVICE_NAMES.len())].to_string();
                let port: u16 = self.rng.random_range(8000..9000);
                let capabilities = self.caps();
                let author = if self.rng.random_bool(0.8) { owner } else { authority };
                Some((
                    author,
                    EventBody::ServiceRegistered(ServiceAnnouncement {
                        service_id: Uuid::from_bytes(self.rng.random()),
                        name,
                        node: self.keys[owner].node_id(),
                        capabilities,
                        endpoints: vec![Endpoint { protocol: "quic".into(), address: format!("127.0.0.1:{port}") }],
                        metadata: vec![("version".into(), format!("1.{}", self.rng.random_range(0..20u32)))],
                    }),
                ))
            }
            42..=63 => {
                let ids: Vec<(Uuid, NodeId)> = p.services().map(|s| (s.service.service_id, s.service.node)).collect();
                let (service_id, node) = self.pick(&ids)?;
                let author = if self.rng.random_bool(0.8) { self.index_of(&node)? } else { authority };
                Some((author, EventBody::ServiceDeregistered { service_id, reason: "rotated".into() }))
            }
            64..=72 => {
                let i = self.pick(&present)?;
                let capabilities = self.caps();
                Some((i, EventBody::CapabilitiesChanged { node: self.keys[i].node_id(), capabilities }))
            }
            73..=76 => {
                let i = self.pick(&present)?;
                let port = self.rng.random_range(7000..7999u16);
                Some((i, EventBody::AddressesChanged { node: self.keys[i].node_id(), addresses: vec![format!("127.0.0.1:{port}")] }))
            }
            77..=86 => {
                let i = self.pick(&present)?;
                if i == authority {
                    return None;
                }
                let score = TrustScore(self.rng.random_range(0..=1000));
                Some((authority, EventBody::TrustScoreChanged { node: self.keys[i].node_id(), score, reason: "observed".into() }))
            }
            87..=92 => {
                let candidates: Vec<usize> = active.iter().copied().filter(|i| *i >= self.cfg.voters).collect();
                let i = self.pick(&candidates)?;
                let last_seen = Timestamp(self.now.0 - 1_000);
                Some((authority, EventBody::NodeWentOffline { node: self.keys[i].node_id(), last_seen }))
            }
            93..=97 => {
                let offline: Vec<usize> = p.offline_nodes().filter_map(|n| self.index_of(&n.node)).collect();
                let i = self.pick(&offline)?;
                Some((i, EventBody::NodeBackOnline { node: self.keys[i].node_id() }))
            }
            98 => {
                let i = self.pick(&present)?;
                let name = format!("node-{i}-r{}", self.rng.random_range(0..100u32));
                Some((i, EventBody::NodeUpdated { node: self.keys[i].node_id(), name: Some(name), role: None }))
            }
            _ => {
                let candidates: Vec<usize> = present.iter().copied().filter(|i| *i >= self.cfg.voters).collect();
                let i = self.pick(&candidates)?;
                Some((i, EventBody::NodeLeft { node: self.keys[i].node_id(), reason: "decommissioned".into() }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_history() {
        let mut a = Synth::new(SynthConfig { seed: 7, ..Default::default() });
        let mut b = Synth::new(SynthConfig { seed: 7, ..Default::default() });
        assert_eq!(a.next_chunk(300), b.next_chunk(300));
        assert_eq!(a.projection().head(), b.projection().head());
    }

    #[test]
    fn history_covers_every_kind_of_change() {
        let mut s = Synth::new(SynthConfig { seed: 3, nodes: 12, ..Default::default() });
        let mut kinds = std::collections::BTreeSet::new();
        for _ in 0..10 {
            for ev in s.next_chunk(400) {
                kinds.insert(ev.body.kind());
            }
        }
        for k in ["genesis", "node_joined", "service_registered", "service_deregistered", "trust_score_changed",
                  "capabilities_changed", "node_went_offline", "node_back_online", "state_checkpoint"] {
            assert!(kinds.contains(k), "missing {k}: {kinds:?}");
        }
    }
}
