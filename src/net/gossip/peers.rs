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
        self.last_sync_age_at(Instant::now())
    }

    /// [`GossipService::last_sync_age`] as of `now` (the clock is passed in: tests drive it).
    fn last_sync_age_at(&self, now: Instant) -> Option<Duration> {
        sync::lock(&self.last_sync).map(|t| now.saturating_duration_since(t))
    }

    /// How long ago a session with a Raft member (the Primary tier) last completed.
    pub fn last_primary_sync_age(&self) -> Option<Duration> {
        self.last_primary_sync_age_at(Instant::now())
    }

    fn last_primary_sync_age_at(&self, now: Instant) -> Option<Duration> {
        sync::lock(&self.last_primary_sync).map(|t| now.saturating_duration_since(t))
    }

    /// Whether this latent node is in touch with the Primary tier: a session with a Raft
    /// member completed within a few gossip intervals.
    pub fn primary_reachable(&self) -> bool {
        self.primary_reachable_at(Instant::now())
    }

    fn primary_reachable_at(&self, now: Instant) -> bool {
        self.last_primary_sync_age_at(now).is_some_and(|a| a <= self.cfg.interval * 6 + self.cfg.connect_timeout)
    }

    /// Whether `peer` is banned now.
    pub fn is_banned(&self, peer: &NodeId) -> bool {
        self.is_banned_at(peer, Instant::now())
    }

    fn is_banned_at(&self, peer: &NodeId, now: Instant) -> bool {
        sync::lock(&self.peers).get(peer).and_then(|s| s.banned_until).is_some_and(|t| t > now)
    }

    /// The peers gossip may contact now: the registry's live nodes with an address, the
    /// bootstrap peers and peers learned from hellos; not this node, not banned ones.
    pub fn candidates(&self) -> Vec<PeerNode> {
        self.candidates_at(Instant::now())
    }

    fn candidates_at(&self, now: Instant) -> Vec<PeerNode> {
        let mut out = self.known_peers();
        out.retain(|p| !self.is_banned_at(&p.node, now));
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
                        out.push(PeerNode { node: n.node, addr: a.to_string() });
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
        self.penalise_at(peer, why, Instant::now());
    }

    /// Bans `peer` from `now`: the first ban lasts [`GossipConfig::ban`](super::GossipConfig),
    /// each further one twice the one before, up to an hour.
    fn penalise_at(&self, peer: &NodeId, why: &str, now: Instant) {
        let mut peers = sync::lock(&self.peers);
        let s = peers.entry(*peer).or_default();
        s.strikes = s.strikes.saturating_add(1);
        let ban = self.cfg.ban.saturating_mul(1u32 << (s.strikes - 1).min(7)).min(Duration::from_secs(3600));
        s.banned_until = Some(now + ban);
        self.stats.bans.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        s.last_outcome = Some(why.to_string());
        tracing::warn!(peer = %peer.short(), reason = why, ban_secs = ban.as_secs(), "gossip peer penalised");
    }
}

/// The peer book on a simulated clock: every time-dependent answer is asked at an instant the
/// test picks, so bans and ages are checked to the nanosecond without sleeping.
#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};
    use std::time::{Duration, Instant};

    use super::super::{GossipConfig, GossipService};
    use crate::core::types::NodeId;
    use crate::store::ledger::{Ledger, LedgerConfig};
    use crate::wire::rpc::PeerNode;

    const NS: Duration = Duration::from_nanos(1);

    fn peer(b: u8) -> PeerNode {
        PeerNode { node: NodeId([b; 32]), addr: format!("10.0.0.{b}:7400") }
    }

    /// A service over an empty ledger that knows peers 2 and 3 (bootstrap).
    fn book(dir: &tempfile::TempDir, cfg: GossipConfig) -> GossipService {
        let cfg_ledger = LedgerConfig { durable: false, ..Default::default() };
        let ledger = Arc::new(RwLock::new(Ledger::open(dir.path(), cfg_ledger).expect("open ledger")));
        let svc = GossipService::new(peer(1), ledger, cfg, || true, || false);
        svc.add_bootstrap([peer(2), peer(3), peer(1)]);
        svc
    }

    fn nodes(peers: &[PeerNode]) -> Vec<NodeId> {
        peers.iter().map(|p| p.node).collect()
    }

    #[test]
    fn a_ban_ends_exactly_when_its_duration_has_passed_and_doubles_with_each_strike() {
        let dir = tempfile::tempdir().expect("tempdir");
        let svc = book(&dir, GossipConfig { ban: Duration::from_secs(30), ..Default::default() });
        let bad = peer(2).node;
        let t0 = Instant::now();
        assert_eq!(nodes(&svc.candidates_at(t0)), vec![peer(2).node, peer(3).node], "not this node itself");

        svc.penalise_at(&bad, "test", t0);
        assert!(svc.is_banned_at(&bad, t0));
        assert!(svc.is_banned_at(&bad, t0 + Duration::from_secs(30) - NS));
        assert_eq!(nodes(&svc.candidates_at(t0 + Duration::from_secs(29))), vec![peer(3).node]);
        assert!(nodes(&svc.known_peers()).contains(&bad), "a banned peer is still known (a resolver may ask it)");
        assert!(!svc.is_banned_at(&bad, t0 + Duration::from_secs(30)), "the first ban lasts `ban`");
        assert_eq!(nodes(&svc.candidates_at(t0 + Duration::from_secs(30))), vec![peer(2).node, peer(3).node]);
        assert!(!svc.is_banned_at(&peer(3).node, t0), "only the offender is banned");

        // A second offence, later: twice as long, from then.
        let t1 = t0 + Duration::from_secs(100);
        svc.penalise_at(&bad, "again", t1);
        assert!(svc.is_banned_at(&bad, t1 + Duration::from_secs(60) - NS));
        assert!(!svc.is_banned_at(&bad, t1 + Duration::from_secs(60)));
        // And so on, up to an hour at most.
        let mut t = t1;
        for _ in 0..10 {
            t += Duration::from_secs(7200);
            svc.penalise_at(&bad, "persistent", t);
        }
        assert!(svc.is_banned_at(&bad, t + Duration::from_secs(3600) - NS));
        assert!(!svc.is_banned_at(&bad, t + Duration::from_secs(3600)), "a ban never passes an hour");
    }

    #[test]
    fn sync_ages_grow_with_the_clock_and_the_primary_tier_is_out_of_reach_after_its_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = GossipConfig {
            interval: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(3),
            ..Default::default()
        };
        let svc = book(&dir, cfg);
        let t0 = Instant::now();
        assert_eq!(svc.last_sync_age_at(t0), None, "never synced");
        assert!(!svc.primary_reachable_at(t0));

        // A session completes at t0 (as the pump records it), with a Raft member.
        *svc.last_sync.lock().expect("lock") = Some(t0);
        *svc.last_primary_sync.lock().expect("lock") = Some(t0);
        assert_eq!(svc.last_sync_age_at(t0), Some(Duration::ZERO));
        assert_eq!(svc.last_sync_age_at(t0 + Duration::from_millis(1500)), Some(Duration::from_millis(1500)));
        assert_eq!(svc.last_primary_sync_age_at(t0 + Duration::from_secs(4)), Some(Duration::from_secs(4)));
        // Six intervals and a connect timeout: 6 × 0.5 s + 3 s.
        let window = Duration::from_secs(6);
        assert!(svc.primary_reachable_at(t0 + window));
        assert!(!svc.primary_reachable_at(t0 + window + NS), "out of reach once the window has passed");
        // A later session with a latent peer only: gossip goes on, the Primary tier stays out of reach.
        let t1 = t0 + Duration::from_secs(10);
        *svc.last_sync.lock().expect("lock") = Some(t1);
        assert_eq!(svc.last_sync_age_at(t1 + Duration::from_secs(1)), Some(Duration::from_secs(1)));
        assert!(!svc.primary_reachable_at(t1 + Duration::from_secs(1)));
    }
}
