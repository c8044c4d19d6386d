//! Liveness: SWIM failure detection among gossip peers, with **foca**, over QUIC datagrams.
//!
//! Every node runs one foca instance. Its messages travel as unreliable QUIC datagrams on
//! connections under ALPN [`ALPN_SWIM`] — authenticated by the node keys like every other
//! protocol here, and refused to keys the admission policy does not allow. A datagram whose
//! SWIM header claims another sender than the key that authenticated the connection is
//! dropped, so no node can speak for another.
//!
//! foca decides who is up and who is down; this module only keeps the verdicts
//! ([`LivenessService::state_of`]). Heartbeats never reach the ledger: the leader turns
//! *transitions* into events (`NodeWentOffline`, `NodeBackOnline`), see `SporeSystem`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foca::{Codec, Config, Foca, OwnedNotification, PostcardCodec, Timer};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::BoxFuture;
use crate::core::sync;
use crate::core::types::NodeId;
use crate::wire::rpc::PeerNode;

/// ALPN of the SWIM protocol (QUIC datagrams).
pub const ALPN_SWIM: &[u8] = b"spores-swim/1";

/// Largest SWIM packet; fits one QUIC datagram on any path with a 1280-byte MTU.
const PACKET_BYTES_MAX: usize = 1100;

/// A node's SWIM identity: its key and address, plus a counter that lets a node declared
/// down rejoin at once under a newer identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwimId {
    /// The node.
    pub node: NodeId,
    /// Where its QUIC endpoint listens.
    pub addr: String,
    /// Rejoin counter (the newest wins).
    pub bump: u64,
}

impl foca::Identity for SwimId {
    type Addr = NodeId;

    fn renew(&self) -> Option<Self> {
        Some(SwimId { node: self.node, addr: self.addr.clone(), bump: self.bump.wrapping_add(1) })
    }

    fn addr(&self) -> NodeId {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

/// Sends SWIM datagrams (the QUIC transport in the product).
pub trait SwimLink: Send + Sync + 'static {
    /// Sends one datagram to `to`; best effort (SWIM tolerates loss).
    fn send_datagram(&self, to: &PeerNode, data: Bytes) -> BoxFuture<'_, ()>;
}

/// Receives SWIM datagrams that arrived on an authenticated connection.
pub trait DatagramSink: Send + Sync + 'static {
    /// `data` came from the node that authenticated as `from`.
    fn datagram(&self, from: NodeId, data: Bytes);
}

/// What foca last said of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberState {
    /// Up (active) or down.
    pub up: bool,
    /// Since when.
    pub since: Instant,
}

enum Input {
    Data(Bytes),
}

/// Tuning of failure detection.
#[derive(Clone, Debug)]
pub struct LivenessConfig {
    /// Expected cluster size (sizes foca's dissemination and suspicion timeouts).
    pub cluster_size: u32,
    /// How often a random member is probed.
    pub probe_period: Duration,
    /// How often a node that knows few members announces itself to its candidates.
    pub announce_every: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            cluster_size: 16,
            probe_period: Duration::from_secs(1),
            announce_every: Duration::from_secs(2),
        }
    }
}

/// One node's failure detector. See the module doc.
pub struct LivenessService {
    me: NodeId,
    input: tokio::sync::mpsc::Sender<Input>,
    states: Mutex<HashMap<NodeId, MemberState>>,
}

impl std::fmt::Debug for LivenessService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LivenessService").field("me", &self.me).finish_non_exhaustive()
    }
}

impl LivenessService {
    /// Starts failure detection for `me`, sending through `link` and announcing itself to
    /// `candidates()` while it knows fewer members than candidates. Returns the service and
    /// its task (abort it to stop).
    pub fn spawn(
        me: PeerNode,
        cfg: LivenessConfig,
        link: Arc<dyn SwimLink>,
        candidates: impl Fn() -> Vec<PeerNode> + Send + Sync + 'static,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let svc = Arc::new(LivenessService { me: me.node, input: tx, states: Mutex::new(HashMap::new()) });
        let span = tracing::info_span!("liveness", node = %me.node.short());
        let task = tokio::spawn(run(svc.clone(), me, cfg, link, Box::new(candidates), rx).instrument(span));
        (svc, task)
    }

    /// What foca last said of `node` (`None`: never seen).
    pub fn state_of(&self, node: &NodeId) -> Option<MemberState> {
        sync::lock(&self.states).get(node).copied()
    }

    /// Every member foca has reported on.
    pub fn states(&self) -> HashMap<NodeId, MemberState> {
        sync::lock(&self.states).clone()
    }

    fn set(&self, node: NodeId, up: bool) {
        let mut s = sync::lock(&self.states);
        let changed = s.get(&node).is_none_or(|m| m.up != up);
        if changed {
            s.insert(node, MemberState { up, since: Instant::now() });
            tracing::info!(peer = %node.short(), up, "liveness changed");
        }
    }
}

impl DatagramSink for LivenessService {
    fn datagram(&self, from: NodeId, data: Bytes) {
        if data.len() > PACKET_BYTES_MAX {
            tracing::debug!(peer = %from.short(), len = data.len(), "oversized SWIM datagram dropped");
            return;
        }
        // The header names the sender: it must be the key that authenticated the connection.
        match Codec::<SwimId>::decode_header(&mut PostcardCodec, &data[..]) {
            Ok(h) if h.src.node == from => {
                let _ = self.input.try_send(Input::Data(data));
            }
            Ok(h) => {
                tracing::warn!(peer = %from.short(), claimed = %h.src.node.short(), "SWIM datagram speaking for another node dropped")
            }
            Err(e) => tracing::debug!(peer = %from.short(), error = %e, "undecodable SWIM datagram dropped"),
        }
    }
}

fn seeded_rng() -> rand10::rngs::StdRng {
    use rand10::SeedableRng;
    let mut seed = [0u8; 32];
    // A weak seed only makes probe order predictable; it protects nothing.
    if getrandom::fill(&mut seed).is_err() {
        seed[..16].copy_from_slice(&(Instant::now().elapsed().as_nanos()).to_le_bytes());
    }
    rand10::rngs::StdRng::from_seed(seed)
}

async fn run(
    svc: Arc<LivenessService>,
    me: PeerNode,
    cfg: LivenessConfig,
    link: Arc<dyn SwimLink>,
    candidates: Box<dyn Fn() -> Vec<PeerNode> + Send + Sync>,
    mut rx: tokio::sync::mpsc::Receiver<Input>,
) {
    let bump =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
    let id = SwimId { node: me.node, addr: me.addr.clone(), bump };
    let mut config = Config::new_lan(NonZeroU32::new(cfg.cluster_size.max(2)).unwrap_or(NonZeroU32::MIN));
    config.probe_period = cfg.probe_period;
    config.probe_rtt = (cfg.probe_period / 2).max(Duration::from_millis(50));
    config.max_packet_size = NonZeroUsize::new(PACKET_BYTES_MAX).unwrap_or(NonZeroUsize::MIN);
    config.periodic_gossip = Some(foca::PeriodicParams {
        frequency: cfg.probe_period / 2,
        num_members: NonZeroUsize::MIN.saturating_add(2),
    });
    let mut foca = Foca::new(id, config, seeded_rng(), PostcardCodec);
    let mut runtime = foca::AccumulatingRuntime::new();
    let mut timers: BinaryHeap<Reverse<(tokio::time::Instant, u64)>> = BinaryHeap::new();
    let mut timer_events: HashMap<u64, Timer<SwimId>> = HashMap::new();
    let mut next_timer_id = 0u64;
    let mut announce = tokio::time::interval(cfg.announce_every);
    announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = timers.peek().map(|Reverse((at, _))| *at);
        let result = tokio::select! {
            input = rx.recv() => match input {
                Some(Input::Data(d)) => foca.handle_data(&d, &mut runtime),
                None => break,
            },
            _ = tokio::time::sleep_until(next.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600))), if next.is_some() => {
                let Some(Reverse((_, tid))) = timers.pop() else { continue };
                match timer_events.remove(&tid) {
                    Some(t) => foca.handle_timer(t, &mut runtime),
                    None => Ok(()),
                }
            }
            _ = announce.tick() => {
                let known = foca.num_members();
                let mut cands = candidates();
                cands.retain(|p| p.node != me.node);
                if known < cands.len() {
                    use rand::seq::SliceRandom;
                    cands.shuffle(&mut rand::rng());
                    let mut r = Ok(());
                    for p in cands.into_iter().take(3) {
                        r = foca.announce(SwimId { node: p.node, addr: p.addr, bump: 0 }, &mut runtime);
                    }
                    r
                } else {
                    Ok(())
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "foca refused an input");
        }
        while let Some((to, data)) = runtime.to_send() {
            let link = link.clone();
            let peer = PeerNode { node: to.node, addr: to.addr };
            tokio::spawn(async move { link.send_datagram(&peer, data).await });
        }
        while let Some((after, timer)) = runtime.to_schedule() {
            next_timer_id += 1;
            timer_events.insert(next_timer_id, timer);
            timers.push(Reverse((tokio::time::Instant::now() + after, next_timer_id)));
        }
        while let Some(n) = runtime.to_notify() {
            match n {
                OwnedNotification::MemberUp(m) => svc.set(m.node, true),
                OwnedNotification::MemberDown(m) => svc.set(m.node, false),
                OwnedNotification::Rename(_, new) => svc.set(new.node, true),
                _ => {}
            }
        }
    }
}
