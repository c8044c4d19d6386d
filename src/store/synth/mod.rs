//! Deterministic synthetic network histories: joins, capability and trust changes, services
//! coming and going, nodes going offline and back, checkpoints.
//!
//! The same [`SynthConfig`] always yields the same events, byte for byte (keys, ids and
//! timestamps all come from the seed). Used by `spore generate`, the benches and the tests.
//! Signing is the expensive part, so each chunk is planned sequentially and then signed on
//! all cores. Planning picks nodes and services from sets kept in step with the projection
//! (`Pools`), so one event costs O(log n) in the nodes and O(√n) in the services, not a
//! scan of both: 2,000 nodes plan about as fast as 16.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use uuid::Uuid;

mod pools;

use pools::{Pool, Pools};

use crate::core::event::{EventBody, NodeAnnouncement, ServiceAnnouncement, SignedEvent};
use crate::core::keys::NodeKey;
use crate::core::projection::Projection;
use crate::core::types::{
    Endpoint, NetworkFingerprint, NetworkIdentityRecord, NodeRole, SignatureBytes, Timestamp, TrustScore,
};

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
    /// Only grow the registry: every node joins, then services are registered, and nothing
    /// else happens (what `spore generate --services` builds a registry of a given size with).
    pub registry: bool,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 1,
            nodes: 16,
            voters: 3,
            start: Timestamp(1_767_225_600_000_000),
            checkpoint_every_chunk: true,
            registry: false,
        }
    }
}

const SERVICE_NAMES: &[&str] = &[
    "object-store",
    "relay",
    "dns",
    "metrics",
    "inference",
    "queue",
    "kv",
    "auth",
    "search",
    "cdn-edge",
    "mail",
    "build",
];
const CAPABILITIES: &[&str] = &[
    "storage",
    "gpu",
    "relay",
    "compute",
    "ipv6",
    "public-ip",
    "ssd",
    "arm64",
    "x86_64",
    "tpm",
    "low-latency",
    "archive",
];

/// A deterministic generator of valid signed events. See the module doc.
pub struct Synth {
    cfg: SynthConfig,
    rng: ChaCha8Rng,
    keys: Vec<NodeKey>,
    /// Who can be picked for what, as of the planning projection.
    pools: Pools,
    projection: Projection,
    fingerprint: NetworkFingerprint,
    genesis: Option<SignedEvent>,
    now: Timestamp,
    /// The head the last state checkpoint attested (see [`Synth::next_chunk`]).
    last_state_at: Option<u64>,
}

/// The fewest events between two state checkpoints the generator writes; like a leader, it
/// also waits four registry sizes, so their digests stay amortized O(1) per event.
pub const STATE_CHECKPOINT_EVENTS_MIN: u64 = 256;

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
        let pools = Pools::new(&keys, cfg.voters);
        Synth {
            cfg,
            rng,
            keys,
            pools,
            projection: Projection::new(),
            fingerprint,
            genesis: Some(genesis),
            now,
            last_state_at: None,
        }
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
                self.pools.observe(&self.projection, &g.body, &[]);
                out.push(g);
            }
        } else if self.cfg.checkpoint_every_chunk {
            if let Some(head) = self.projection.head() {
                // A state checkpoint when one is due, else a checkpoint of the head.
                let state = self.projection.state();
                let spacing = STATE_CHECKPOINT_EVENTS_MIN.max(4 * (state.nodes.len() + state.services.len()) as u64);
                let body = if self.last_state_at.is_none_or(|s| head.seq.saturating_sub(s) >= spacing) {
                    self.last_state_at = Some(head.seq);
                    EventBody::StateCheckpoint {
                        head_seq: head.seq,
                        head_hash: head.hash,
                        state_digest: self.projection.state_digest(),
                    }
                } else {
                    EventBody::Checkpoint { head_seq: head.seq, head_hash: head.hash }
                };
                let ev = self.sign_now(0, body);
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
            let Some((author_idx, body)) = self.plan_one() else { continue };
            self.now = Timestamp(self.now.0 + self.rng.random_range(1_000..2_000_000));
            let placeholder = SignedEvent {
                schema_version: crate::core::event::SCHEMA_VERSION,
                fingerprint: self.fingerprint,
                author: self.keys[author_idx].node_id(),
                timestamp: self.now,
                body: body.clone(),
                signature: SignatureBytes([0; 64]),
            };
            // A node that leaves takes its services with it.
            let dropped: Vec<Uuid> = match &body {
                EventBody::NodeLeft { node, .. } => plan.services_by_node(node).map(|s| s.service.service_id).collect(),
                _ => Vec::new(),
            };
            if plan.append(placeholder).is_ok() {
                self.pools.observe(&plan, &body, &dropped);
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

    /// A uniformly random node of `which` (by key index), as a pick from the list the
    /// projection would give (same order, same draw).
    fn pick(&mut self, which: Pool) -> Option<usize> {
        let set = self.pools.set(which);
        if set.len == 0 {
            return None;
        }
        let k = self.rng.random_range(0..set.len);
        let pos = set.nth(k);
        Some(if which == Pool::Absent { pos } else { self.pools.by_rank[pos] })
    }

    fn caps(&mut self) -> Vec<String> {
        let k = self.rng.random_range(1..4);
        (0..k).map(|_| CAPABILITIES[self.rng.random_range(0..CAPABILITIES.len())].to_string()).collect()
    }

    /// Chooses one plausible event against the planning projection (as [`Pools`] mirrors it);
    /// `None` if the dice chose something impossible.
    fn plan_one(&mut self) -> Option<(usize, EventBody)> {
        let authority = self.pick(Pool::Authorities)?;
        let roll = match self.cfg.registry {
            // Joins first, then registrations (the first rolls of each below).
            true if self.pools.set(Pool::Absent).len > 0 => 0,
            true => 12,
            false => self.rng.random_range(0..100u32),
        };
        match roll {
            0..=11 => {
                // Join (or re-join after leaving).
                let i = self.pick(Pool::Absent)?;
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
                let owner = self.pick(Pool::Active)?;
                let name = SERVICE_NAMES[self.rng.random_range(0..SERVICE_NAMES.len())].to_string();
                let port: u16 = self.rng.random_range(8000..9000);
                let capabilities = self.caps();
                let author = if self.rng.random_bool(0.8) { owner } else { authority };
                Some((
                    author,
                    EventBody::ServiceRegistered(ServiceAnnouncement {
                        service_id: Uuid::from_bytes(self.rng.random()),
                        name: name.into(),
                        node: self.keys[owner].node_id(),
                        capabilities: capabilities.into_iter().map(Into::into).collect(),
                        endpoints: vec![Endpoint {
                            protocol: "quic".into(),
                            address: format!("127.0.0.1:{port}").into(),
                        }]
                        .into(),
                        metadata: vec![("version".into(), format!("1.{}", self.rng.random_range(0..20u32)).into())]
                            .into(),
                    }),
                ))
            }
            42..=63 => {
                if self.pools.services.len == 0 {
                    return None;
                }
                let k = self.rng.random_range(0..self.pools.services.len);
                let (service_id, owner) = self.pools.services.nth(k)?;
                let author = if self.rng.random_bool(0.8) { owner? } else { authority };
                Some((author, EventBody::ServiceDeregistered { service_id, reason: "rotated".into() }))
            }
            64..=72 => {
                let i = self.pick(Pool::Present)?;
                let capabilities = self.caps();
                Some((i, EventBody::CapabilitiesChanged { node: self.keys[i].node_id(), capabilities }))
            }
            73..=76 => {
                let i = self.pick(Pool::Present)?;
                let port = self.rng.random_range(7000..7999u16);
                Some((
                    i,
                    EventBody::AddressesChanged {
                        node: self.keys[i].node_id(),
                        addresses: vec![format!("127.0.0.1:{port}")],
                    },
                ))
            }
            77..=86 => {
                let i = self.pick(Pool::Present)?;
                if i == authority {
                    return None;
                }
                let score = TrustScore(self.rng.random_range(0..=1000));
                Some((
                    authority,
                    EventBody::TrustScoreChanged { node: self.keys[i].node_id(), score, reason: "observed".into() },
                ))
            }
            87..=92 => {
                let i = self.pick(Pool::ActiveNonVoters)?;
                let last_seen = Timestamp(self.now.0 - 1_000);
                Some((authority, EventBody::NodeWentOffline { node: self.keys[i].node_id(), last_seen }))
            }
            93..=97 => {
                let i = self.pick(Pool::Offline)?;
                Some((i, EventBody::NodeBackOnline { node: self.keys[i].node_id() }))
            }
            98 => {
                let i = self.pick(Pool::Present)?;
                let name = format!("node-{i}-r{}", self.rng.random_range(0..100u32));
                Some((i, EventBody::NodeUpdated { node: self.keys[i].node_id(), name: Some(name), role: None }))
            }
            _ => {
                let i = self.pick(Pool::PresentNonVoters)?;
                Some((i, EventBody::NodeLeft { node: self.keys[i].node_id(), reason: "decommissioned".into() }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pools::SERVICE_BLOCK;
    use super::*;
    use crate::core::projection::NodeStatus;
    use crate::core::types::NodeId;

    #[test]
    fn same_seed_same_history() {
        let mut a = Synth::new(SynthConfig { seed: 7, ..Default::default() });
        let mut b = Synth::new(SynthConfig { seed: 7, ..Default::default() });
        assert_eq!(a.next_chunk(300), b.next_chunk(300));
        assert_eq!(a.projection().head(), b.projection().head());
    }

    /// After every chunk each pool lists exactly what a scan of the projection lists, in the
    /// same order: what keeps a history the one planning by scanning produced.
    #[test]
    fn pools_list_what_a_scan_of_the_projection_lists() {
        use crate::core::projection::NodeRecord;
        let mut s = Synth::new(SynthConfig { seed: 5, nodes: 40, ..Default::default() });
        let ids: Vec<NodeId> = s.keys().iter().map(|k| k.node_id()).collect();
        let index = |id: &NodeId| ids.iter().position(|x| x == id);
        let mut services_seen = 0;
        for _ in 0..12 {
            s.next_chunk(500);
            let (p, pools) = (&s.projection, &s.pools);
            let listed = |pool: Pool| -> Vec<usize> {
                let set = pools.set(pool);
                (0..set.len)
                    .map(|k| if pool == Pool::Absent { set.nth(k) } else { pools.by_rank[set.nth(k)] })
                    .collect()
            };
            let scan = |keep: &dyn Fn(&NodeRecord, usize) -> bool| -> Vec<usize> {
                p.nodes().filter_map(|n| index(&n.node).filter(|i| keep(n, *i))).collect()
            };
            let voters = s.cfg.voters;
            assert_eq!(
                listed(Pool::Authorities),
                scan(&|n, _| n.status == NodeStatus::Active && n.role.is_authority())
            );
            assert_eq!(listed(Pool::Present), scan(&|n, _| n.status != NodeStatus::Left));
            assert_eq!(listed(Pool::Active), scan(&|n, _| n.status == NodeStatus::Active));
            assert_eq!(listed(Pool::Offline), scan(&|n, _| n.status == NodeStatus::Offline));
            assert_eq!(listed(Pool::ActiveNonVoters), scan(&|n, i| n.status == NodeStatus::Active && i >= voters));
            assert_eq!(listed(Pool::PresentNonVoters), scan(&|n, i| n.status != NodeStatus::Left && i >= voters));
            let absent: Vec<usize> =
                (0..ids.len()).filter(|i| p.node(&ids[*i]).is_none_or(|n| n.status == NodeStatus::Left)).collect();
            assert_eq!(listed(Pool::Absent), absent);
            let services: Vec<(Uuid, Option<usize>)> =
                (0..pools.services.len).filter_map(|k| pools.services.nth(k)).collect();
            let scanned: Vec<(Uuid, Option<usize>)> =
                p.services().map(|r| (r.service.service_id, index(&r.service.node))).collect();
            assert_eq!(services, scanned);
            services_seen = services_seen.max(services.len());
        }
        assert!(services_seen > 2 * SERVICE_BLOCK, "the service pool split its blocks: {services_seen}");
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
        for k in [
            "genesis",
            "node_joined",
            "service_registered",
            "service_deregistered",
            "trust_score_changed",
            "capabilities_changed",
            "node_went_offline",
            "node_back_online",
            "checkpoint",
            "state_checkpoint",
        ] {
            assert!(kinds.contains(k), "missing {k}: {kinds:?}");
        }
    }
}
