//! Building a [`SporeSystem`]: the builder and what it sets (data dir, key, role, addresses,
//! network backend, [`Timeouts`], [`AnchorPolicy`], gossip, liveness and scrub tuning,
//! scheduled backups).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{SporeSystem, YieldPolicy};
use crate::core::keys::NodeKey;
use crate::core::types::{NodeId, NodeRole};
use crate::net::gossip::GossipConfig;
use crate::net::inproc::InProcNetwork;
use crate::net::liveness::LivenessConfig;
use crate::net::NetworkBackend;
use crate::wire::rpc::PeerNode;

/// Timeouts and Raft tuning.
///
/// Two profiles: [`Timeouts::default`] (the LAN profile: round trips of a few milliseconds)
/// and [`Timeouts::wan`] (round trips of 100–150 ms, with loss). Either way an RPC is never cut
/// shorter than the link needs: `rpc`, and openraft's own per-call limits derived from
/// `heartbeat` and `election_min`, are floors that the transport lengthens from the round trips
/// it measures to each peer (`net::rtt`). What a profile fixes is how soon a silent leader is
/// replaced: followers start an election after `election_min`..`election_max` without a
/// heartbeat, so that range must hold several heartbeats *and* a lost packet's retransmission.
#[derive(Clone, Debug)]
pub struct Timeouts {
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout range (a random value in it per term).
    pub election_min: Duration,
    /// Upper end of the election timeout range.
    pub election_max: Duration,
    /// How long a write may wait for a leader before failing with
    /// [`Error::NoLeader`](crate::Error::NoLeader).
    pub write: Duration,
    /// Deadline of one RPC: a floor, lengthened on a link whose measured round trips need it.
    pub rpc: Duration,
    /// Build a Raft snapshot after this many log entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot (for followers that are only slightly behind).
    pub logs_kept_after_snapshot: u64,
    /// The largest Raft snapshot this node takes from a leader, in bytes; chunks past it are
    /// refused with an error that names this bound. A snapshot is the leader's retained
    /// history, received whole in memory; by default a quarter of the machine's memory
    /// ([`crate::raft::inbound::default_snapshot_bytes_max`]).
    pub snapshot_bytes_max: u64,
    /// Most batches of writes in Raft at once (the leader's group commit, `raft::proposer`).
    pub batches_in_flight: usize,
}

impl Timeouts {
    /// The WAN profile, for voters 100–150 ms apart (round trip) on links that lose packets:
    /// heartbeats every 150 ms (about one round trip, as etcd advises), elections after 3–6 s
    /// without one (twenty heartbeats: room for a packet lost three times in a row, which QUIC
    /// retransmits after about 0.2, 0.4 and 0.8 s), writes wait up to 15 s for a leader, RPC
    /// floors of 5 s, and eight batches of writes in flight (a write then waits for one commit,
    /// not two). A leader that dies is replaced within about 6 s. Measured in
    /// `tests/it/wan.rs` over QUIC with 50 ± 20 ms one-way delay and 10 % loss each way: with
    /// replication on pipelined append streams, the median commit at the leader is 1.3–1.5
    /// round trips (132–147 ms; p99 287–299 ms), against 2.2–2.8 when each AppendEntries
    /// waited for the one before it.
    pub fn wan() -> Self {
        Timeouts {
            heartbeat: Duration::from_millis(150),
            election_min: Duration::from_millis(3000),
            election_max: Duration::from_millis(6000),
            write: Duration::from_secs(15),
            rpc: Duration::from_secs(5),
            batches_in_flight: crate::raft::proposer::BATCHES_IN_FLIGHT_WAN,
            ..Timeouts::default()
        }
    }
}

/// The LAN profile: heartbeats every 100 ms, elections after 400–800 ms of silence, writes wait
/// up to 5 s for a leader, RPC floors of 2 s. A dead leader is replaced within a second; over
/// long or lossy links leaders would keep changing: use [`Timeouts::wan`] there.
impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(400),
            election_max: Duration::from_millis(800),
            write: Duration::from_secs(5),
            rpc: Duration::from_secs(2),
            // A Raft snapshot carries the whole chain until the seed-spore format lands, so
            // building one costs O(ledger): keep them rare.
            snapshot_every: 100_000,
            logs_kept_after_snapshot: 10_000,
            snapshot_bytes_max: crate::raft::inbound::default_snapshot_bytes_max(),
            batches_in_flight: crate::raft::proposer::BATCHES_IN_FLIGHT_MAX,
        }
    }
}

#[derive(Clone)]
pub(super) enum Backend {
    /// Not chosen: QUIC if the node has an address, else a private network of one.
    Default,
    /// A private in-process network of one node, asked for ([`SporeSystemBuilder::private_network`]
    /// or [`SporeSystem::new`](super::SporeSystem::new)).
    Private,
    /// A shared network backend (QUIC, or an in-process simulation network).
    Shared(Arc<dyn NetworkBackend>),
}

/// Builds a [`SporeSystem`]: data dir, key, role, address, network and timeouts.
#[derive(Clone)]
pub struct SporeSystemBuilder {
    pub(super) data_dir: Option<PathBuf>,
    pub(super) key: Option<NodeKey>,
    pub(super) name: Option<String>,
    pub(super) role: NodeRole,
    pub(super) addr: Option<String>,
    pub(super) advertise: Option<String>,
    pub(super) addresses: Vec<String>,
    pub(super) capabilities: Vec<String>,
    pub(super) backend: Backend,
    pub(super) timeouts: Timeouts,
    pub(super) checkpoint_interval: u64,
    pub(super) gossip: GossipConfig,
    pub(super) gossip_peers: Vec<PeerNode>,
    pub(super) anchors: AnchorPolicy,
    pub(super) scrub: crate::node::scrubber::ScrubConfig,
    pub(super) liveness: LivenessConfig,
    pub(super) admit: Vec<NodeId>,
    pub(super) yield_policy: YieldPolicy,
    pub(super) backups: Option<super::BackupPolicy>,
    pub(super) retention: Option<super::RetentionSettings>,
    pub(super) admin_reads: crate::net::quic::AdminReads,
    pub(super) connections_max: Option<usize>,
    pub(super) metrics: bool,
}

/// When the leader commits a checkpoint event (an anchor for the latent tier): after this
/// many events since the last one, or after this long if any event came since.
#[derive(Clone, Copy, Debug)]
pub struct AnchorPolicy {
    /// Events between anchors.
    pub every_events: u64,
    /// Longest time an event stays unanchored.
    pub every: Duration,
}

impl Default for AnchorPolicy {
    fn default() -> Self {
        AnchorPolicy { every_events: 1024, every: Duration::from_secs(5) }
    }
}

impl Default for SporeSystemBuilder {
    fn default() -> Self {
        SporeSystemBuilder {
            data_dir: None,
            key: None,
            name: None,
            role: NodeRole::Sclerotium,
            addr: None,
            advertise: None,
            addresses: Vec::new(),
            capabilities: Vec::new(),
            backend: Backend::Default,
            timeouts: Timeouts::default(),
            checkpoint_interval: 16_384,
            gossip: GossipConfig::default(),
            gossip_peers: Vec::new(),
            anchors: AnchorPolicy::default(),
            scrub: crate::node::scrubber::ScrubConfig::default(),
            liveness: LivenessConfig::default(),
            admit: Vec::new(),
            yield_policy: YieldPolicy::default(),
            backups: None,
            retention: None,
            admin_reads: crate::net::quic::AdminReads::Open,
            connections_max: None,
            metrics: true,
        }
    }
}

impl SporeSystemBuilder {
    /// Where the ledger, Raft log and node key live. Without it, a temporary directory that is
    /// deleted when the system is dropped.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }
    /// The node key. Without it, `DATA_DIR/node.key` is loaded or generated (mode 0600).
    pub fn key(mut self, key: NodeKey) -> Self {
        self.key = Some(key);
        self
    }
    /// Human-readable node name (default: the short node id).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Voter (Sclerotium, default) or gossip node (Rhizomorph).
    pub fn role(mut self, role: NodeRole) -> Self {
        self.role = role;
        self
    }
    /// The address this node listens on and peers reach it at (`HOST:PORT`; port 0 picks a
    /// free one, see [`SporeSystem::local_addr`](super::SporeSystem::local_addr)). Without
    /// [`SporeSystemBuilder::network`], a node given an address listens there on QUIC, and
    /// admits the registry's members (and [`SporeSystemBuilder::admit`]'s keys).
    pub fn addr(mut self, addr: impl Into<String>) -> Self {
        self.addr = Some(addr.into());
        self
    }
    /// The address peers are told to reach this node's Raft endpoint at, when it is not the
    /// one it binds ([`SporeSystemBuilder::addr`]): a port forward, a NAT, a relay. It becomes
    /// this node's address in the Raft membership, its gossip and SWIM peers' view and (without
    /// [`SporeSystemBuilder::addresses`]) the registry. Default: the bound address.
    pub fn advertise(mut self, addr: impl Into<String>) -> Self {
        self.advertise = Some(addr.into());
        self
    }
    /// Addresses announced in the registry.
    pub fn addresses(mut self, addresses: Vec<String>) -> Self {
        self.addresses = addresses;
        self
    }
    /// Capabilities announced in the registry.
    pub fn capabilities(mut self, capabilities: Vec<String>) -> Self {
        self.capabilities = capabilities;
        self
    }
    /// The network to join (a QUIC backend of the caller's, or an in-process simulation
    /// network). Without it, a node given an address runs its own QUIC endpoint there.
    pub fn network(mut self, backend: Arc<dyn NetworkBackend>) -> Self {
        self.backend = Backend::Shared(backend);
        self
    }
    /// A private in-process network of one node: nothing listens, no peer can reach it (tests,
    /// or a store that is never shared). Given an address as well, [`SporeSystem::start`]
    /// refuses the contradiction
    /// ([`ConfigError::PrivateWithAddress`](super::ConfigError::PrivateWithAddress)).
    ///
    /// [`SporeSystem::start`]: super::SporeSystem::start
    pub fn private_network(mut self) -> Self {
        self.backend = Backend::Private;
        self
    }
    /// Node keys the node's own QUIC endpoint admits whatever its registry says: the peers it
    /// is bootstrapped from before it holds the registry. (The node it joins through, and that
    /// node's Raft members, are admitted by [`SporeSystem::join`](super::SporeSystem::join)
    /// itself.)
    pub fn admit(mut self, keys: impl IntoIterator<Item = NodeId>) -> Self {
        self.admit.extend(keys);
        self
    }
    /// What the node does when its chain lost a split-brain ([`YieldPolicy::Automatic`] by
    /// default: it yields to the winner by itself).
    pub fn yield_policy(mut self, policy: YieldPolicy) -> Self {
        self.yield_policy = policy;
        self
    }
    /// Joins an in-process simulation network (tests).
    pub fn inproc(self, net: &InProcNetwork) -> Self {
        self.network(Arc::new(net.clone()))
    }
    /// Timeouts and Raft tuning.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }
    #[cfg(test)]
    pub(crate) fn timeouts_ref(&self) -> &Timeouts {
        &self.timeouts
    }
    /// Projection checkpoint interval in events.
    pub fn checkpoint_interval(mut self, events: u64) -> Self {
        self.checkpoint_interval = events;
        self
    }
    /// Gossip tuning (the latent tier runs on transports that carry it: QUIC).
    pub fn gossip(mut self, cfg: GossipConfig) -> Self {
        self.gossip = cfg;
        self
    }
    /// Gossip peers to contact before the registry names any (a latent node's bootstrap).
    pub fn gossip_peers(mut self, peers: Vec<PeerNode>) -> Self {
        self.gossip_peers = peers;
        self
    }
    /// Failure-detection tuning (SWIM over QUIC datagrams, on transports that carry them).
    pub fn liveness(mut self, cfg: LivenessConfig) -> Self {
        self.liveness = cfg;
        self
    }
    /// Who may read through the admin protocol of the node's own QUIC endpoint (status,
    /// queries, watches): anyone (the default), admitted keys only, or a list of keys. The
    /// HTTP endpoint has its own token.
    pub fn admin_reads(mut self, reads: crate::net::quic::AdminReads) -> Self {
        self.admin_reads = reads;
        self
    }
    /// Most incoming connections of the node's own QUIC endpoint at once from clients and
    /// tools (default 256, [`QuicConfig::connections_max`](crate::net::quic::QuicConfig)); the
    /// peers it dials have places of their own beyond it. Unused on a given network backend.
    pub fn connections_max(mut self, n: usize) -> Self {
        self.connections_max = Some(n.max(1));
        self
    }
    /// Whether the write path records its metrics (ledger writes, Raft log syncs; on by
    /// default). Off, `/metrics` still reports everything read at scrape time.
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }
    /// How fast the background scrub re-verifies the stored chain (`ScrubConfig::default`:
    /// 1,000 events a second; `events_per_sec: 0` turns it off).
    pub fn scrub(mut self, cfg: crate::node::scrubber::ScrubConfig) -> Self {
        self.scrub = cfg;
        self
    }

    /// When a leader commits checkpoint events (anchors).
    pub fn anchors(mut self, policy: AnchorPolicy) -> Self {
        self.anchors = policy;
        self
    }
    /// Scheduled backups: the node writes a verified seed into the policy's directory every
    /// interval and keeps the newest few ([`BackupPolicy`](super::BackupPolicy),
    /// [`SporeSystem::backup_status`]). Checked at start
    /// ([`ConfigError::Invalid`](super::ConfigError::Invalid)).
    pub fn backups(mut self, policy: super::BackupPolicy) -> Self {
        self.backups = Some(policy);
        self
    }

    /// Retention: the node archives the history `settings` lets go as verified seeds and prunes
    /// it from its ledger, every `settings.every` ([`crate::node::retention`]). Checked at start
    /// ([`ConfigError::Invalid`](super::ConfigError::Invalid)).
    pub fn retention(mut self, settings: super::RetentionSettings) -> Self {
        self.retention = Some(settings);
        self
    }

    /// Builds the (not yet started) system.
    pub fn build(self) -> SporeSystem {
        let backups = super::backup::Backups::new(self.backups.clone());
        let retention = self.retention.clone();
        SporeSystem {
            shared: Arc::new(super::Shared {
                yield_policy: self.yield_policy,
                life: std::sync::Mutex::new(super::Life { config: Some(self), launched: None }),
                gate: tokio::sync::Mutex::new(()),
                running: std::sync::RwLock::new(None),
                fence: Arc::default(),
                events: super::upkeep::channel(),
                checks: Arc::default(),
                metrics: Default::default(),
                backups,
                retention,
                upkeep: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    /// Whether the node will run its own QUIC endpoint: an address and no network chosen.
    pub(super) fn listens_on_quic(&self) -> bool {
        matches!(self.backend, Backend::Default) && self.addr.is_some()
    }

    /// Checks `addresses` the way the network this node will run on dials them: the chosen
    /// backend's check, QUIC's for a node on its own endpoint, none on a private network.
    pub(super) fn check_addresses<'a>(
        &self,
        addresses: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), crate::net::addr::AddressError> {
        let own_quic = self.listens_on_quic();
        for a in addresses {
            match &self.backend {
                Backend::Shared(b) => b.check_address(a)?,
                _ if own_quic => crate::net::addr::check_peer_addr(a)?,
                _ => {}
            }
        }
        Ok(())
    }
}
