//! The peer book: which peers gossip may contact (registry, bootstrap, learned from hellos),
//! and the escalating bans of misbehaving ones.

use std::time::{Duration, Instant};

use super::GossipService;
use crate::core::gossip::Digest;
use crate::core::limits;
use crate::core::sync;
use crate::core::types::NodeId;
use crate::wire::rpc::PeerNode;

#[derive(Default)]
pub(super) struct PeerState {
    banned_until: Option<Instant>,
    strikes: u32,
    last_outcome: Option<String>,
}

impl GossipService {
    /// Adds peers to contact even before the registry knows them (the bootstrap peers).
    pub fn add_bootstrap(&self, peers: impl IntoIterator<Item = PeerNode>) {
        let mut b = sync::lock(&self.bootstrap);
        for p in peers {
            if p.node != self.me.node && !b.contains(&p) {
                b.push(p);
            }
        }
    }

    /// The bootstrap peers (given before the registry names any).
    pub fn bootstrap_peers(&self) -> Vec<PeerNode> {
        sync::lock(&self.bootstrap).clone()
    }

    /// How long ago a session with a peer last completed (`None`: never).
    pub fn last_sync_age(&self) -> Option<Duration> {
        sync::lock(&self.last_sync).map(|t| t.elapsed())
    }

    /// How long ago a session with a Raft member (the Primary tier) last completed.
    pub fn last_primary_sync_age(&self) -> Option<Duration> {
        sync::lock(&self.last_primary_sync).map(|t| t.elapsed())
    }

    /// Whether this latent node is in touch with the Primary tier: a session with a Raft
    /// member completed within a few gossip intervals.
    pub fn primary_reachable(&self) -> bool {
        self.last_primary_sync_age().is_some_and(|a| a <= self.cfg.interval * 6 + self.cfg.connect_timeout)
    }

    /// Whether `peer` is banned now.
    pub fn is_banned(&self, peer: &NodeId) -> bool {
        let now = Instant::now();
        sync::lock(&self.peers).get(peer).and_then(|s| s.banned_until).is_some_and(|t| t > now)
    }

    /// The peers gossip may contact now: the registry's live nodes with an address, the
    /// bootstrap peers and peers learned from hellos; not this node, not banned ones.
    pub fn candidates(&self) -> Vec<PeerNode> {
        let mut out = self.known_peers();
        out.retain(|p| !self.is_banned(&p.node));
        out
    }

    /// Every peer this node knows of (registry, bootstrap, learned), banned ones included:
    /// a node banned from gossip for holding a forked chain is still who a split-brain
    /// resolver must ask about that chain.
    pub fn known_peers(&self) -> Vec<PeerNode> {
        let mut out: Vec<PeerNode> = Vec::new();
        if let Ok(l) = self.ledger.read() {
            for n in l.projection().nodes() {
                if n.status != crate::core::projection::NodeStatus::Left {
                    if let Some(a) = n.addresses.first() {
                        out.push(PeerNode { node: n.node, addr: a.clone() });
                    }
                }
            }
        }
        out.extend(sync::lock(&self.bootstrap).iter().cloned());
        out.extend(sync::lock(&self.learned).iter().map(|p| PeerNode { node: p.node, addr: p.addr.clone() }));
        out.retain(|p| p.node != self.me.node);
        out.sort_by_key(|p| p.node);
        out.dedup_by(|a, b| a.node == b.node);
        out
    }

    pub(super) fn learn(&self, digest: &Digest) {
        let mut learned = sync::lock(&self.learned);
        for p in &digest.peers {
            if p.node != self.me.node && !learned.iter().any(|q| q.node == p.node) {
                learned.push(p.clone());
            }
        }
        // Bounded: keep the newest.
        let excess = learned.len().saturating_sub(4 * limits::GOSSIP_PEERS_MAX);
        learned.drain(..excess);
    }

    pub(super) fn penalise(&self, peer: &NodeId, why: &str) {
        let mut peers = sync::lock(&self.peers);
        let s = peers.entry(*peer).or_default();
        s.strikes = s.strikes.saturating_add(1);
        let ban = self.cfg.ban.saturating_mul(1u32 << (s.strikes - 1).min(7)).min(Duration::from_secs(3600));
        s.banned_until = Some(Instant::now() + ban);
        s.last_outcome = Some(why.to_string());
        tracing::warn!(peer = %peer.short(), reason = why, ban_secs = ban.as_secs(), "gossip peer penalised");
    }
}
