//! [`SporeSystem`]: the embedded API. It wires the ledger, openraft and the network together,
//! and is the only place that spawns tasks or reads the clock.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mycnet_spores::Error> {
//! use mycnet_spores::{SporeSystem, NetworkIdentity};
//! let mut spore_system = SporeSystem::new();            // embedded default, no set-up
//! spore_system.initialize(NetworkIdentity {
//!     network_id: uuid::Uuid::new_v4(),
//!     network_name: "my-network".to_string(),
//!     genesis_timestamp: chrono::Utc::now(),
//! }).await?;                                             // forms a one-voter network
//! let id = spore_system.register_service("object-store", vec![], vec!["storage".into()], vec![]).await?;
//! assert_eq!(spore_system.services_by_name("object-store")?.len(), 1);
//! # let _ = id; Ok(()) }
//! ```

pub mod config;
pub mod datadir;
pub mod resolve;
pub mod scrubber;
pub mod tiers;

pub use config::{
    parse_node_key, refresh_admission, start_node, ConfigError, InitConfig, JoinConfig, NodeConfig, PeerConfig,
    RoleConfig, TimeoutProfile, JOIN_PATIENCE,
};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::RaftError;
use openraft::ServerState;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;
use uuid::Uuid;

use crate::core::event::{ChainedEvent, EventBody, NodeAnnouncement, ServiceAnnouncement, SignedEvent};
use crate::core::keys::NodeKey;
use crate::core::modes::{ModeConfig, ModeInputs, ModeMachine};
use crate::core::projection::{ChainHead, NodeRecord, Projection, Rejection, ServiceRecord};
use crate::core::provisional::{ProvisionalError, ProvisionalEvent};
use crate::core::types::{
    Endpoint, NetworkFingerprint, NetworkIdentity, NodeId, NodeRole, SporeType, Timestamp, TrustScore,
};
use crate::error::{Error, LedgerError};
use crate::net::gossip::{GossipConfig, GossipService};
use crate::net::inproc::InProcNetwork;
use crate::net::liveness::{LivenessConfig, LivenessService, MemberState};
use crate::net::{
    Binding, LateHandler, NetworkBackend, RemoteFailure, RpcRequest, RpcResponse, SharedTransport, TransportError,
};
use crate::node::datadir::CreatedDir;
use crate::node::tiers::{TierReach, TierView, Tiered, ViewSource};
use crate::raft::network::{NetworkFactory, RaftService};
use crate::raft::proposer::{ProposeError, Proposer};
use crate::raft::state_machine::SharedLedger;
use crate::raft::{raft_id, ChainPoint, PeerNode, Raft, SporeResponse};
use crate::store::keyfile;
use crate::store::ledger::{Ledger, LedgerConfig, LedgerHealth};

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
    /// How long a write may wait for a leader before failing with [`Error::NoLeader`].
    pub write: Duration,
    /// Deadline of one RPC: a floor, lengthened on a link whose measured round trips need it.
    pub rpc: Duration,
    /// Build a Raft snapshot after this many log entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot (for followers that are only slightly behind).
    pub logs_kept_after_snapshot: u64,
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
    /// `tests/it/wan.rs` over QUIC with 50 ± 20 ms one-way delay and 10 % loss each way.
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
            batches_in_flight: crate::raft::proposer::BATCHES_IN_FLIGHT_MAX,
        }
    }
}

/// Read consistency of a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Answer from the local projection (may lag the leader slightly). The default.
    #[default]
    Stale,
    /// Confirm with the leader first and wait until the local projection has caught up.
    Linearizable,
}

pub use crate::core::modes::OperationalMode;

/// A snapshot of the node's state, from [`SporeSystem::status`].
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct SporeStatus {
    /// This node.
    pub node: NodeId,
    /// Its Raft address.
    pub addr: String,
    /// Its Raft state: `Leader`, `Follower`, `Candidate` or `Learner`.
    pub raft_state: String,
    /// The leader, if known.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Last applied Raft log index.
    pub last_applied: Option<u64>,
    /// The ledger head.
    pub head: Option<ChainHead>,
    /// The network.
    pub fingerprint: Option<NetworkFingerprint>,
    /// Voters of the Raft membership.
    pub voters: Vec<NodeId>,
    /// Learners of the Raft membership.
    pub learners: Vec<NodeId>,
    /// The operational mode.
    pub mode: OperationalMode,
    /// Since when (this node's clock).
    pub mode_since: Timestamp,
    /// Why the node entered this mode (`None` before its first transition).
    pub mode_reason: Option<String>,
    /// The tier of this node's head: the authority of its newest view.
    pub spore_type: SporeType,
    /// How far each tier reaches in this node's chain (see [`crate::node::tiers`]).
    #[serde(default)]
    pub reach: TierReach,
    /// Index of the last entry in this node's Raft log.
    pub last_log: Option<u64>,
    /// Every other member with its address and, as seen by the leader (only the leader
    /// knows), how far its log is behind the leader's.
    pub peers: Vec<PeerLag>,
    /// Whether this node is in the Raft membership (its chain is Primary); otherwise it keeps
    /// a latent view by gossip.
    pub raft_member: bool,
    /// The newest voter-signed checkpoint this node holds (everything up to it is Primary).
    pub anchor: Option<ChainPoint>,
    /// Forks seen and not yet settled (two chains of this network: fork evidence stored and no
    /// resolution recorded for it).
    pub forks: usize,
    /// Milliseconds since a gossip session last completed (`None`: never, or no gossip).
    pub last_gossip_ms: Option<u64>,
    /// Provisional events this node holds (written while cut off from the voters, not
    /// committed yet).
    pub provisional: usize,
    /// The first sequence number whose event this node holds: 0, or above it while the
    /// history below a state-only seed it started from is being backfilled by gossip.
    pub history_from: u64,
    /// A state divergence this node found: the chain attests a state its own records do not
    /// lead to. While it is set the node takes no writes (`SporeSystem::clear_state_divergence`).
    #[serde(default)]
    pub state_divergence: Option<crate::core::attest::StateDivergence>,
    /// On a leader: whether a majority of the voters acknowledged it within the longest
    /// election timeout. A leader cut off from the majority reports `Some(false)`: it is then
    /// no leader for the mode (Partition Recovery after the grace period) and its answers may
    /// be stale. `None` on a node that is not the leader.
    #[serde(default)]
    pub leader_confirmed: Option<bool>,
    /// Why this node halted (mode `Halted`): a storage error it cannot survive, such as a full
    /// disk. It takes no writes until restarted.
    #[serde(default)]
    pub halted: Option<String>,
    /// What the background scrub has checked, repaired and found damaged.
    #[serde(default)]
    pub scrub: crate::node::scrubber::ScrubStatus,
}

/// A Raft member as `status()` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PeerLag {
    /// The member.
    pub node: NodeId,
    /// Its address.
    pub addr: String,
    /// Voter or learner.
    pub voter: bool,
    /// Entries the leader has that it has not acknowledged (`None` when this node is not
    /// the leader, or has not heard from it yet).
    pub lag: Option<u64>,
}

#[derive(Clone)]
enum Backend {
    /// A private in-process network of one node (the embedded default).
    Private,
    /// A shared network backend (QUIC, or an in-process simulation network).
    Shared(Arc<dyn NetworkBackend>),
}

/// Builds a [`SporeSystem`]: data dir, key, role, address, network and timeouts.
#[derive(Clone)]
pub struct SporeSystemBuilder {
    data_dir: Option<PathBuf>,
    key: Option<NodeKey>,
    name: Option<String>,
    role: NodeRole,
    addr: Option<String>,
    advertise: Option<String>,
    addresses: Vec<String>,
    capabilities: Vec<String>,
    backend: Backend,
    timeouts: Timeouts,
    checkpoint_interval: u64,
    gossip: GossipConfig,
    gossip_peers: Vec<PeerNode>,
    anchors: AnchorPolicy,
    scrub: crate::node::scrubber::ScrubConfig,
    liveness: LivenessConfig,
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
            backend: Backend::Private,
            timeouts: Timeouts::default(),
            checkpoint_interval: 16_384,
            gossip: GossipConfig::default(),
            gossip_peers: Vec::new(),
            anchors: AnchorPolicy::default(),
            scrub: crate::node::scrubber::ScrubConfig::default(),
            liveness: LivenessConfig::default(),
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
    /// The address peers reach this node's Raft endpoint at.
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
    /// The network to join (QUIC endpoint or an in-process simulation network).
    pub fn network(mut self, backend: Arc<dyn NetworkBackend>) -> Self {
        self.backend = Backend::Shared(backend);
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
    /// Builds the (not yet started) system.
    pub fn build(self) -> SporeSystem {
        SporeSystem { config: Some(self), launched: None, running: None, fence: Arc::default() }
    }
}

struct Running {
    key: NodeKey,
    /// Delivers or holds the writes of a node outside the Raft membership.
    writer: ProvisionalWriter,
    me: PeerNode,
    role: NodeRole,
    name: String,
    addresses: Vec<String>,
    capabilities: Vec<String>,
    raft: Raft,
    proposer: Proposer,
    ledger: SharedLedger,
    head_rx: watch::Receiver<Option<u64>>,
    transport: SharedTransport,
    /// The backend it was bound on (checks the addresses given to announce, admit or join).
    backend: Arc<dyn NetworkBackend>,
    binding: Binding,
    timeouts: Timeouts,
    gossip: Option<Arc<GossipService>>,
    liveness: Option<Arc<LivenessService>>,
    modes: SharedModes,
    data_dir: PathBuf,
    resolver: Arc<crate::node::resolve::ResolverState>,
    /// Views of the tiers that stop below the head, replayed and cached.
    tier_views: Arc<crate::node::tiers::TierViews>,
    /// What the background scrub found.
    scrub: crate::node::scrubber::SharedScrub,
    /// The ledger's health, read without its lock on every write.
    health: Arc<LedgerHealth>,
    /// Background tasks (gossip driver, anchor committer), aborted on shutdown.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _tempdir: Option<tempfile::TempDir>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The discovery store of one node. See the module doc and the crate doc.
pub struct SporeSystem {
    config: Option<SporeSystemBuilder>,
    /// What the running system was started with (its key and data dir filled in), to start
    /// it again after yielding a split-brain.
    launched: Option<SporeSystemBuilder>,
    running: Option<Running>,
    /// Raft peers refused after yielding a split-brain (kept across the yield's restart).
    fence: Arc<crate::node::resolve::YieldFence>,
}

impl Default for SporeSystem {
    fn default() -> Self {
        Self::new()
    }
}

fn raft_err<E: std::fmt::Display>(e: E) -> Error {
    Error::Raft(e.to_string())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Ledger(LedgerError::Io { path: path.to_path_buf(), source })
}

impl SporeSystem {
    /// The embedded default: a temporary data dir, a fresh key, a voter on a private network
    /// of one. Nothing happens until [`SporeSystem::initialize`] or [`SporeSystem::start`].
    pub fn new() -> Self {
        SporeSystemBuilder::default().build()
    }

    /// A builder for everything else.
    pub fn builder() -> SporeSystemBuilder {
        SporeSystemBuilder::default()
    }

    fn running(&self) -> Result<&Running, Error> {
        self.running.as_ref().ok_or(Error::NotStarted)
    }

    /// Checks addresses against the backend this system runs on, or will start on.
    fn check_addresses<'a>(&self, addresses: impl IntoIterator<Item = &'a str>) -> Result<(), Error> {
        let backend = match (&self.running, self.config.as_ref().map(|c| &c.backend)) {
            (Some(r), _) => Some(&r.backend),
            (None, Some(Backend::Shared(b))) => Some(b),
            _ => None,
        };
        if let Some(b) = backend {
            for a in addresses {
                b.check_address(a)?;
            }
        }
        Ok(())
    }

    /// Opens the data dir and starts Raft, without forming a network: resumes a node after a
    /// restart, or waits to be added to a running network (see [`SporeSystem::join`]).
    #[tracing::instrument(skip(self))]
    pub async fn start(&mut self) -> Result<(), Error> {
        if self.running.is_some() {
            return Ok(());
        }
        let cfg = self.config.take().ok_or(Error::NotStarted)?;
        // A data dir this start creates is removed again if the start fails.
        let created = match cfg.data_dir.as_deref().map(CreatedDir::create).transpose() {
            Ok(c) => c,
            Err(e) => {
                self.config = Some(cfg);
                return Err(e.into());
            }
        };
        match Self::launch(cfg.clone(), self.fence.clone()).await {
            Ok(r) => {
                let mut launched = cfg;
                launched.key = Some(r.key.clone());
                launched.data_dir = Some(r.data_dir.clone());
                self.launched = Some(launched);
                self.running = Some(r);
                Ok(())
            }
            Err(e) => {
                // Keep the configuration: a start that failed (say, its port still in use) can
                // be tried again.
                self.config = Some(cfg);
                if let Some(created) = created {
                    discard_failed_start(created).await;
                }
                Err(e)
            }
        }
    }

    async fn launch(cfg: SporeSystemBuilder, fence: Arc<crate::node::resolve::YieldFence>) -> Result<Running, Error> {
        // Addresses to announce are checked before anything is opened or bound.
        if let Backend::Shared(b) = &cfg.backend {
            for a in &cfg.addresses {
                b.check_address(a)?;
            }
        }
        let (data_dir, tempdir) = match &cfg.data_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t =
                    tempfile::Builder::new().prefix("mycnet-spores-").tempdir().map_err(io_err(Path::new("/tmp")))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        std::fs::create_dir_all(&data_dir).map_err(io_err(&data_dir))?;
        let key = match cfg.key {
            Some(k) => k,
            None => keyfile::load_or_generate(&data_dir.join(keyfile::KEY_FILE_NAME))?,
        };
        let node = key.node_id();
        let ledger_dir = data_dir.join(crate::store::inspect::LEDGER_SUBDIR);
        let ledger_cfg = LedgerConfig {
            create: true,
            checkpoint_interval: cfg.checkpoint_interval,
            durable: false,
            expected_network: None,
        };
        let ledger =
            tokio::task::spawn_blocking(move || Ledger::open(ledger_dir, ledger_cfg)).await.map_err(raft_err)??;
        let (log_store, sm) = crate::raft::open_stores(ledger, key.clone())?;
        let ledger = sm.ledger().clone();
        let head_rx = sm.subscribe_head();
        let head_publisher = sm.clone();

        let backend: Arc<dyn NetworkBackend> = match cfg.backend {
            Backend::Private => Arc::new(InProcNetwork::new(0)),
            Backend::Shared(b) => b,
        };
        let want_addr = cfg.addr.unwrap_or_else(|| format!("node-{}", node.short()));
        let late = Arc::new(LateHandler::default());
        let binding = backend.bind(&PeerNode { node, addr: want_addr }, late.clone()).await?;
        let bound_on = backend.clone();
        let me = PeerNode { node, addr: cfg.advertise.clone().unwrap_or_else(|| binding.addr.clone()) };
        let transport = binding.transport.clone();

        let raft_config = openraft::Config {
            cluster_name: "mycnet-spores".into(),
            heartbeat_interval: cfg.timeouts.heartbeat.as_millis() as u64,
            election_timeout_min: cfg.timeouts.election_min.as_millis() as u64,
            election_timeout_max: cfg.timeouts.election_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.timeouts.snapshot_every),
            max_in_snapshot_log_to_keep: cfg.timeouts.logs_kept_after_snapshot,
            purge_batch_size: (cfg.timeouts.snapshot_every / 4).clamp(1, 256),
            max_payload_entries: crate::raft::proposer::PAYLOAD_ENTRIES_MAX,
            ..Default::default()
        }
        .validate()
        .map_err(raft_err)?;
        let stored_vote = {
            use openraft::storage::RaftLogStorage;
            let mut ls = log_store.clone();
            ls.read_vote().await.map_err(raft_err)?
        };
        let raft =
            Raft::new(raft_id(&node), Arc::new(raft_config), NetworkFactory::new(transport.clone()), log_store, sm)
                .await
                .map_err(raft_err)?;
        // Status must never show a term older than the one on disk: wait for Raft to load it.
        if let Some(v) = stored_vote {
            raft.wait(Some(Duration::from_secs(10)))
                .metrics(|m| m.vote >= v, "stored vote loaded")
                .await
                .map_err(raft_err)?;
        }
        let proposer = Proposer::spawn_idempotent(raft.clone(), ledger.clone(), cfg.timeouts.batches_in_flight);
        let mut tasks = Vec::new();
        let gossip = transport.gossip_dialer().map(|dialer| {
            let my_id = raft_id(&node);
            let member = {
                let raft = raft.clone();
                move || raft.metrics().borrow().membership_config.membership().nodes().any(|(id, _)| *id == my_id)
            };
            let member2 = member.clone();
            // Only a Rhizomorph outside the Raft membership stores what gossip brings; Raft
            // writes every member's ledger.
            let latent = cfg.role == NodeRole::Rhizomorph;
            let svc = Arc::new(GossipService::new(
                me.clone(),
                ledger.clone(),
                cfg.gossip.clone(),
                move || latent && !member(),
                member2,
            ));
            svc.add_bootstrap(cfg.gossip_peers.clone());
            // Ranges gossip stores reach `subscribe` like the ones Raft applies.
            svc.on_stored(Arc::new(move || head_publisher.publish_head()));
            tasks.push(svc.spawn_driver(dialer));
            svc
        });
        tasks.push(spawn_anchor_task(raft.clone(), proposer.clone(), ledger.clone(), key.clone(), cfg.anchors));
        let writer = ProvisionalWriter {
            raft: raft.clone(),
            transport: transport.clone(),
            ledger: ledger.clone(),
            gossip: gossip.clone(),
            me: me.clone(),
            key: key.clone(),
            timeouts: cfg.timeouts.clone(),
        };
        tasks.push(spawn_provisional_task(writer.clone()));
        let liveness = transport.swim_link().map(|link| {
            let cands = gossip.clone();
            let (svc, task) = LivenessService::spawn(me.clone(), cfg.liveness.clone(), link, move || {
                cands.as_ref().map(|g| g.candidates()).unwrap_or_default()
            });
            tasks.push(task);
            tasks.push(spawn_liveness_committer(
                raft.clone(),
                proposer.clone(),
                ledger.clone(),
                key.clone(),
                svc.clone(),
            ));
            svc
        });
        let modes: SharedModes =
            Arc::new(std::sync::Mutex::new(ModeMachine::new(ModeConfig::default(), Timestamp::now())));
        let resolver = Arc::new(crate::node::resolve::ResolverState::default());
        if let Some(g) = &gossip {
            tasks.push(
                crate::node::resolve::Resolver {
                    raft: raft.clone(),
                    proposer: proposer.clone(),
                    transport: transport.clone(),
                    ledger: ledger.clone(),
                    gossip: g.clone(),
                    me: me.clone(),
                    key: key.clone(),
                    rpc_timeout: cfg.timeouts.rpc,
                    data_dir: data_dir.clone(),
                    state: resolver.clone(),
                    modes: modes.clone(),
                }
                .spawn(),
            );
        }
        let tier_views = Arc::new(crate::node::tiers::TierViews::default());
        // A node that yielded a split-brain keeps refusing the losing cluster's Raft across
        // restarts (the members are kept with the refused branch).
        let refused_peers = ledger.read().map_err(|_| Error::Raft("ledger lock poisoned".into()))?.refused_peers()?;
        if !refused_peers.is_empty() {
            fence.fence(refused_peers);
        }
        tasks.push(spawn_mode_task(raft.clone(), ledger.clone(), me.clone(), gossip.clone(), modes.clone()));
        let scrub: crate::node::scrubber::SharedScrub = Arc::default();
        let health = ledger.read().map_err(|_| Error::Raft("ledger lock poisoned".into()))?.health();
        tasks.push(crate::node::scrubber::spawn(
            ledger.clone(),
            raft.clone(),
            me.clone(),
            transport.clone(),
            cfg.scrub,
            scrub.clone(),
            cfg.timeouts.rpc,
        ));
        late.set(Arc::new(NodeService {
            raft_service: RaftService::new(raft.clone(), me.clone(), proposer.clone(), ledger.clone()),
            raft: raft.clone(),
            ledger: ledger.clone(),
            me: me.clone(),
            key: key.clone(),
            gossip: gossip.clone(),
            liveness: liveness.clone(),
            modes: modes.clone(),
            tier_views: tier_views.clone(),
            fence,
            provisional: (cfg.role == NodeRole::Rhizomorph).then(|| writer.clone()),
            scrub: scrub.clone(),
            health: health.clone(),
        }));
        tracing::info!(node = %node, addr = %me.addr, data_dir = %data_dir.display(), "spore system started");
        Ok(Running {
            writer,
            key,
            name: cfg.name.unwrap_or_else(|| format!("node-{}", node.short())),
            role: cfg.role,
            addresses: cfg.addresses,
            capabilities: cfg.capabilities,
            me,
            raft,
            proposer,
            ledger,
            head_rx,
            transport,
            backend: bound_on,
            binding,
            timeouts: cfg.timeouts,
            gossip,
            liveness,
            modes,
            data_dir,
            resolver,
            tier_views,
            scrub,
            health,
            tasks,
            _tempdir: tempdir,
        })
    }

    /// Forms a network whose first voter is this node, and commits its genesis. Idempotent
    /// for the same identity after a restart; a different identity is an error.
    #[tracing::instrument(skip(self, identity), fields(network = %identity.network_name))]
    pub async fn initialize(&mut self, identity: NetworkIdentity) -> Result<(), Error> {
        self.start().await?;
        let r = self.running()?;
        let record = identity.to_record();
        if let Some(existing) = self.with_projection(|p| p.network().cloned())? {
            return if existing.network_id == record.network_id {
                Ok(())
            } else {
                Err(Error::AlreadyInitialized { network: existing.network_name })
            };
        }
        let members = BTreeMap::from([(raft_id(&r.me.node), r.me.clone())]);
        match r.raft.initialize(members).await {
            Ok(()) => {}
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
            Err(e) => return Err(raft_err(e)),
        }
        let founder = NodeAnnouncement {
            node: r.me.node,
            name: r.name.clone(),
            role: NodeRole::Sclerotium,
            addresses: if r.addresses.is_empty() { vec![r.me.addr.clone()] } else { r.addresses.clone() },
            capabilities: r.capabilities.clone(),
        };
        let genesis = SignedEvent::genesis(&r.key, record, founder);
        self.submit(genesis).await?;
        Ok(())
    }

    /// Forms a network from a seed spore: the same network, its projections and head. This
    /// node must be one of the seed's voters; it imports the seed's events (each signature
    /// verified again), becomes the first Raft member, and compacts its Raft log into a
    /// snapshot so that every node added later — the seed's other voters join with
    /// [`SporeSystem::join`] as usual — starts from the seed's state. New events extend the
    /// seed's chain. A data dir that already holds the same chain up to the seed's head is
    /// accepted as imported; any other non-empty data dir is refused.
    #[tracing::instrument(skip(self, path, policy), fields(seed = %path.as_ref().display()))]
    pub async fn form_from_seed(
        &mut self,
        path: impl AsRef<std::path::Path>,
        policy: crate::seed::VerifyPolicy,
    ) -> Result<ChainHead, Error> {
        self.start().await?;
        let r = self.running()?;
        let seed = crate::seed::read_file(path.as_ref(), policy)?;
        if !seed.header.includes_events {
            return Err(crate::seed::SeedError::EventsRequired.into());
        }
        let head = seed.head();
        let me = r.me.clone();
        let is_voter = seed
            .state
            .nodes
            .get(&me.node)
            .is_some_and(|n| n.role.is_authority() && n.status != crate::core::projection::NodeStatus::Left);
        if !is_voter {
            return Err(Error::Raft(format!(
                "node {} is not a voter in the seed; only the seed's voters can form its network",
                me.node.short()
            )));
        }
        let members_now = r.raft.metrics().borrow().membership_config.membership().voter_ids().count();
        if members_now > 0 {
            let ours = self.head()?;
            return if ours.map(|h| (h.seq, h.hash)) >= Some((head.seq, head.hash))
                && self.with_projection(|p| p.fingerprint())? == Some(seed.header.fingerprint)
            {
                Ok(head)
            } else {
                Err(Error::AlreadyInitialized { network: seed.header.network.network_name.clone() })
            };
        }
        // Import: re-append the signed events (the ledger re-verifies and re-chains them; the
        // chain is deterministic, so it must land exactly on the seed's head).
        let ledger = r.ledger.clone();
        tokio::task::spawn_blocking(move || -> Result<(), Error> {
            let mut l = ledger.write().map_err(|_| Error::Raft("ledger lock poisoned".into()))?;
            if !l.head().is_some_and(|h| h.seq == head.seq && h.hash == head.hash) {
                crate::seed::import(&mut l, &seed)?;
            } // else: imported already (`spore seed import`, or an earlier attempt)
              // The network is formed on this import: Raft adopts it as its base.
            l.set_imported(false)?;
            Ok(())
        })
        .await
        .map_err(|e| Error::Raft(format!("seed import task: {e}")))??;

        // This node alone first; compact the log so later members start from a snapshot.
        let members = BTreeMap::from([(raft_id(&me.node), me.clone())]);
        match r.raft.initialize(members).await {
            Ok(()) | Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
            Err(e) => return Err(raft_err(e)),
        }
        let deadline = Instant::now() + r.timeouts.write;
        loop {
            let m = r.raft.metrics().borrow().clone();
            if m.current_leader == Some(raft_id(&me.node)) && m.last_applied.is_some() {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::NoLeader { waited: r.timeouts.write });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Wait for a snapshot covering what was applied when it was asked for (the anchor
        // task may commit a checkpoint meanwhile; that entry need not be in it).
        let wanted = r.raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        r.raft.trigger().snapshot().await.map_err(raft_err)?;
        loop {
            let m = r.raft.metrics().borrow().clone();
            if let Some(snap) = m.snapshot {
                if snap.index >= wanted {
                    r.raft.trigger().purge_log(snap.index).await.map_err(raft_err)?;
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Raft("the post-import snapshot was not built in time".into()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!(seq = head.seq, hash = %head.hash, "network formed from a seed");
        Ok(head)
    }

    /// Joins through `via` with a seed spore as the trust root: before asking to be added,
    /// checks that `via` belongs to the seed's network and that its chain passes through the
    /// seed's head (so the primary extends what the seed attests). Otherwise the join is
    /// refused ([`SeedError::NotExtended`](crate::seed::SeedError::NotExtended) or
    /// `WrongNetwork`) and nothing changes.
    pub async fn join_with_seed(
        &mut self,
        via: PeerNode,
        as_voter: bool,
        seed_path: impl AsRef<std::path::Path>,
        policy: crate::seed::VerifyPolicy,
    ) -> Result<(), Error> {
        use crate::net::{Query, QueryAnswer};
        use crate::seed::SeedError;
        self.check_addresses([via.addr.as_str()])?;
        self.start().await?;
        let seed = crate::seed::read_file(seed_path.as_ref(), policy)?;
        let r = self.running()?;
        let answer =
            r.transport.call(&via, RpcRequest::Query(Query::ChainAt(seed.header.head_seq)), r.timeouts.rpc).await?;
        let (at, head, fingerprint) = match answer {
            RpcResponse::Query(Ok(QueryAnswer::Chain { at, head, fingerprint })) => (at, head, fingerprint),
            RpcResponse::Query(Err(e)) => return Err(Error::Raft(format!("{} could not answer: {e}", via.addr))),
            _ => return Err(Error::Raft(format!("unexpected answer from {}", via.addr))),
        };
        if fingerprint != Some(seed.header.fingerprint) {
            let found = fingerprint.unwrap_or_default();
            return Err(SeedError::WrongNetwork { expected: seed.header.fingerprint, found }.into());
        }
        if at.map(|p| p.hash) != Some(seed.header.head_hash) {
            return Err(SeedError::NotExtended {
                seed_seq: seed.header.head_seq,
                primary_head: head.map(|h| h.seq),
                reason: match at {
                    None => "the primary's chain is shorter than the seed".into(),
                    Some(_) => "the primary's chain has a different event at the seed's head".into(),
                },
            }
            .into());
        }
        tracing::info!(seq = seed.header.head_seq, "the primary extends the seed; joining");
        self.join(via, as_voter).await
    }

    /// Asks the network (through `via`, any member) to add this node to the Raft membership,
    /// as a voter or a learner. An authority must have admitted this node first
    /// ([`SporeSystem::admit`]).
    pub async fn join(&mut self, via: PeerNode, as_voter: bool) -> Result<(), Error> {
        self.check_addresses([via.addr.as_str()])?;
        self.start().await?;
        let me = self.running()?.me.clone();
        self.membership_rpc(Some(via), RpcRequest::AddMember { node: me, voter: as_voter }).await
    }

    /// Adds another node to the Raft membership (learner, then voter if asked). Runs on the
    /// leader, or is forwarded to it.
    pub async fn add_member(&self, node: PeerNode, as_voter: bool) -> Result<(), Error> {
        self.check_addresses([node.addr.as_str()])?;
        self.membership_rpc(None, RpcRequest::AddMember { node, voter: as_voter }).await
    }

    async fn membership_rpc(&self, via: Option<PeerNode>, req: RpcRequest) -> Result<(), Error> {
        let r = self.running()?;
        let deadline = Instant::now() + r.timeouts.write * 6;
        let mut target = via.or_else(|| self.leader_node()).unwrap_or_else(|| r.me.clone());
        loop {
            let req2 = match &req {
                RpcRequest::AddMember { node, voter } => RpcRequest::AddMember { node: node.clone(), voter: *voter },
                RpcRequest::RemoveMember { node } => RpcRequest::RemoveMember { node: *node },
                _ => return Err(Error::Raft("not a membership request".into())),
            };
            let res = r.transport.call(&target, req2, r.timeouts.write * 6).await;
            match res {
                Ok(RpcResponse::Membership(Ok(()))) => return Ok(()),
                Ok(RpcResponse::Membership(Err(RemoteFailure::NotLeader { leader: Some(l) }))) => target = l,
                Ok(RpcResponse::Membership(Err(RemoteFailure::Other(e)))) if !e.contains("starting") => {
                    return Err(Error::Raft(e))
                }
                // Refused by the peer (our key is not admitted there: another network, or not
                // yet admitted): waiting would not change that.
                Err(e @ TransportError::Refused { .. }) => return Err(e.into()),
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(Error::NoLeader { waited: r.timeouts.write * 6 });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(l) = self.leader_node() {
                target = l;
            }
        }
    }

    fn leader_node(&self) -> Option<PeerNode> {
        let r = self.running.as_ref()?;
        // Every write asks: read in place rather than clone the whole metrics.
        let m = r.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        m.membership_config.membership().get_node(&id).cloned()
    }

    /// Commits a signed event: on the leader directly, otherwise forwarded to it. Retries
    /// while no leader is known, up to the write timeout, then fails with
    /// [`Error::NoLeader`]. A rejected event returns [`Error::Rejected`] with its reason.
    #[tracing::instrument(skip(self, event), fields(kind = event.body.kind()))]
    pub async fn submit(&self, event: SignedEvent) -> Result<ChainPoint, Error> {
        let r = self.running()?;
        if let Some(why) = halted_reason(&r.raft.metrics().borrow(), &r.health) {
            return Err(Error::Halted(why));
        }
        if let Some(d) = r.health.divergence() {
            return Err(Error::StateDivergence(d));
        }
        if r.role == NodeRole::Rhizomorph && !is_member(&r.raft, &r.me.node) {
            return self.submit_provisional(event).await;
        }
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            // Raft may stop while this write waits (a full disk): say so at once.
            if let Some(why) = halted_reason(&r.raft.metrics().borrow(), &r.health) {
                return Err(Error::Halted(why));
            }
            let outcome = match self.leader_node() {
                Some(l) if l.node == r.me.node => {
                    // A leader cut off in a minority cannot commit: bound the wait.
                    let left = r.timeouts.write.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
                    match tokio::time::timeout(left, r.proposer.propose(event.clone())).await {
                        Err(_) => return Err(Error::NoLeader { waited: started.elapsed() }),
                        Ok(Ok(resp)) => Some(Ok(resp)),
                        Ok(Err(ProposeError::NotLeader)) => None,
                        Ok(Err(ProposeError::Raft(e))) => Some(Err(Error::Raft(e))),
                    }
                }
                Some(l) => match r.transport.call(&l, RpcRequest::Forward(event.clone()), r.timeouts.rpc).await {
                    Ok(RpcResponse::Forward(Ok(resp))) => Some(Ok(resp)),
                    Ok(RpcResponse::Forward(Err(RemoteFailure::Other(e)))) => Some(Err(Error::Raft(e))),
                    // Not the leader any more, unreachable, timed out: find the leader again.
                    _ => None,
                },
                None => None,
            };
            match outcome {
                Some(Ok(SporeResponse::Applied(point))) => return Ok(point),
                Some(Ok(SporeResponse::Rejected(rej))) => return Err(Error::Rejected(rej)),
                Some(Ok(other @ (SporeResponse::None | SporeResponse::Batch(_)))) => {
                    return Err(Error::Raft(format!("unexpected response to an event: {other:?}")))
                }
                Some(Err(e)) => tracing::debug!(error = %e, "write attempt failed; retrying"),
                None => {}
            }
            if started.elapsed() >= r.timeouts.write {
                return Err(Error::NoLeader { waited: started.elapsed() });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(250));
        }
    }

    /// A latent node's write: wrapped with this node's statement that the event is not in the
    /// chain up to its head, delivered to the voters it knows (retried until the write
    /// timeout; the statement makes a retry after a lost answer harmless), else held as a
    /// provisional event and handed on by gossip ([`Error::Provisional`]).
    async fn submit_provisional(&self, event: SignedEvent) -> Result<ChainPoint, Error> {
        self.running()?.writer.submit(event).await
    }

    /// The provisional events this node holds (written while cut off from the voters, or
    /// handed over by peers), not committed yet.
    pub fn provisional_events(&self) -> Result<Vec<ProvisionalEvent>, Error> {
        let r = self.running()?;
        let l = r.ledger.read().map_err(|_| Error::Raft("ledger lock poisoned".into()))?;
        Ok(crate::store::provisional::list(&l, crate::store::provisional::HELD_MAX)?)
    }

    fn sign(&self, body: EventBody) -> Result<SignedEvent, Error> {
        let r = self.running()?;
        let fp = self.with_projection(|p| p.fingerprint())?.ok_or(Error::NotInitialized)?;
        Ok(SignedEvent::sign(&r.key, fp, Timestamp::now(), body))
    }

    /// This node's id (after start).
    pub fn node_id(&self) -> Result<NodeId, Error> {
        Ok(self.running()?.me.node)
    }

    /// This node as a Raft peer (id and address), for others to [`SporeSystem::add_member`].
    pub fn peer(&self) -> Result<PeerNode, Error> {
        Ok(self.running()?.me.clone())
    }

    /// The address this node's endpoint is bound to: the one peers use ([`SporeSystem::peer`])
    /// unless another is advertised ([`SporeSystemBuilder::advertise`]).
    pub fn local_addr(&self) -> Result<String, Error> {
        Ok(self.running()?.binding.addr.clone())
    }

    /// The round trips this node measured to `peer` (smoothed, with their variation and the
    /// deadline a call to it gets now); `None` before any call to it completed, or on a
    /// transport that does not measure them.
    pub fn round_trip(&self, peer: &NodeId) -> Result<Option<crate::net::rtt::RoundTrip>, Error> {
        Ok(self.running()?.transport.round_trip(peer))
    }

    /// This node's announcement (for an authority to [`SporeSystem::admit`]).
    pub fn announcement(&self) -> Result<NodeAnnouncement, Error> {
        let r = self.running()?;
        Ok(NodeAnnouncement {
            node: r.me.node,
            name: r.name.clone(),
            role: r.role,
            addresses: if r.addresses.is_empty() { vec![r.me.addr.clone()] } else { r.addresses.clone() },
            capabilities: r.capabilities.clone(),
        })
    }

    /// Admits a node into the registry (this node must be an authority). An address the
    /// transport cannot dial is refused ([`Error::BadAddress`]) before anything is signed.
    pub async fn admit(&self, node: NodeAnnouncement) -> Result<ChainPoint, Error> {
        self.check_addresses(node.addresses.iter().map(String::as_str))?;
        self.submit(self.sign(EventBody::NodeJoined(node))?).await
    }

    /// Replaces this node's announced addresses and capabilities (two events). On a latent
    /// node cut off from the voters both are held as provisional events and the error names
    /// the second. An address the transport cannot dial is refused ([`Error::BadAddress`])
    /// before anything is signed.
    pub async fn announce(&self, addresses: Vec<String>, capabilities: Vec<String>) -> Result<ChainPoint, Error> {
        self.check_addresses(addresses.iter().map(String::as_str))?;
        let me = self.node_id()?;
        let first = self.submit(self.sign(EventBody::AddressesChanged { node: me, addresses })?).await;
        if let Err(e) = &first {
            if !matches!(e, Error::Provisional { .. }) {
                return first;
            }
        }
        let second = self.submit(self.sign(EventBody::CapabilitiesChanged { node: me, capabilities })?).await;
        match (first, second) {
            (Err(held), Ok(_)) => Err(held),
            (_, second) => second,
        }
    }

    /// Registers a service offered by this node; returns its id.
    pub async fn register_service(
        &self,
        name: &str,
        endpoints: Vec<Endpoint>,
        capabilities: Vec<String>,
        metadata: Vec<(String, String)>,
    ) -> Result<Uuid, Error> {
        let service_id = Uuid::new_v4();
        let node = self.node_id()?;
        let s = ServiceAnnouncement { service_id, name: name.to_string(), node, capabilities, endpoints, metadata };
        self.submit(self.sign(EventBody::ServiceRegistered(s))?).await?;
        Ok(service_id)
    }

    /// Deregisters a service.
    pub async fn deregister_service(&self, service_id: Uuid, reason: &str) -> Result<ChainPoint, Error> {
        self.submit(self.sign(EventBody::ServiceDeregistered { service_id, reason: reason.to_string() })?).await
    }

    /// Exports a seed spore of this node's state at its current committed head to `path`,
    /// signed by this node, while writes continue; with `include_events` it also carries every
    /// event from genesis (a full backup that verifies offline), without it the state the
    /// chain attests and the events after it (see [`crate::seed::export`]). Written to a temporary file,
    /// synced, then renamed: a crash never leaves a half seed under `path`.
    pub async fn export_seed(
        &self,
        path: impl AsRef<std::path::Path>,
        include_events: bool,
    ) -> Result<ChainHead, Error> {
        let r = self.running()?;
        let (ledger, key, path) = (r.ledger.clone(), r.key.clone(), path.as_ref().to_path_buf());
        tokio::task::spawn_blocking(move || crate::seed::export(&ledger, &key, &path, include_events))
            .await
            .map_err(|e| Error::Raft(format!("seed export task: {e}")))?
            .map(|e| e.head)
            .map_err(Error::from)
    }

    /// Renames this node in the registry.
    pub async fn rename(&self, name: &str) -> Result<ChainPoint, Error> {
        let me = self.node_id()?;
        self.submit(self.sign(EventBody::NodeUpdated { node: me, name: Some(name.to_string()), role: None })?).await
    }

    /// Sets another node's trust score (this node must be an authority).
    pub async fn set_trust(&self, node: NodeId, score: TrustScore, reason: &str) -> Result<ChainPoint, Error> {
        self.submit(self.sign(EventBody::TrustScoreChanged { node, score, reason: reason.to_string() })?).await
    }

    /// Commits that a node went offline (authority only; liveness detection is the latent tier's).
    pub async fn mark_offline(&self, node: NodeId, last_seen: Timestamp) -> Result<ChainPoint, Error> {
        self.submit(self.sign(EventBody::NodeWentOffline { node, last_seen })?).await
    }

    /// Commits that a node is back online.
    pub async fn mark_online(&self, node: NodeId) -> Result<ChainPoint, Error> {
        self.submit(self.sign(EventBody::NodeBackOnline { node })?).await
    }

    /// This node leaves: commits `NodeLeft` and leaves the Raft membership.
    pub async fn leave(&self, reason: &str) -> Result<(), Error> {
        let me = self.node_id()?;
        self.submit(self.sign(EventBody::NodeLeft { node: me, reason: reason.to_string() })?).await?;
        self.membership_rpc(None, RpcRequest::RemoveMember { node: me }).await
    }

    /// Runs `f` on the local projection (stale-ok).
    pub fn with_projection<R>(&self, f: impl FnOnce(&Projection) -> R) -> Result<R, Error> {
        let r = self.running()?;
        let l = r.ledger.read().map_err(|_| Error::Raft("ledger lock poisoned".into()))?;
        Ok(f(l.projection()))
    }

    /// Runs `f` on the projection with the requested consistency. Linearizable reads confirm
    /// leadership (on a follower: ask the leader for its read index) and wait until the local
    /// projection has applied it.
    pub async fn query<R>(&self, consistency: Consistency, f: impl FnOnce(&Projection) -> R) -> Result<R, Error> {
        if consistency == Consistency::Linearizable {
            let r = self.running()?;
            let index = match self.leader_node() {
                Some(l) if l.node == r.me.node => {
                    r.raft.ensure_linearizable().await.map_err(raft_err)?.map(|l| l.index)
                }
                Some(l) => match r.transport.call(&l, RpcRequest::ReadIndex, r.timeouts.rpc).await {
                    Ok(RpcResponse::ReadIndex(Ok(i))) => i,
                    Ok(RpcResponse::ReadIndex(Err(e))) => return Err(Error::Raft(e.to_string())),
                    Ok(_) => return Err(Error::Raft("unexpected response to read index".into())),
                    Err(e) => return Err(Error::Transport(e)),
                },
                None => return Err(Error::NoLeader { waited: Duration::ZERO }),
            };
            if let Some(i) = index {
                r.raft
                    .wait(Some(r.timeouts.write))
                    .applied_index_at_least(Some(i), "linearizable read")
                    .await
                    .map_err(raft_err)?;
            }
        }
        self.with_projection(f)
    }

    /// Every node in the registry (stale-ok).
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, Error> {
        self.with_projection(|p| p.nodes().cloned().collect())
    }

    /// One node (stale-ok).
    pub fn node(&self, id: &NodeId) -> Result<Option<NodeRecord>, Error> {
        self.with_projection(|p| p.node(id).cloned())
    }

    /// Services with this name (stale-ok).
    pub fn services_by_name(&self, name: &str) -> Result<Vec<ServiceRecord>, Error> {
        self.with_projection(|p| p.services_by_name(name).cloned().collect())
    }

    /// Services providing this capability (stale-ok).
    pub fn services_by_capability(&self, capability: &str) -> Result<Vec<ServiceRecord>, Error> {
        self.with_projection(|p| p.services_by_capability(capability).cloned().collect())
    }

    /// Nodes an authority committed as offline (stale-ok).
    pub fn offline_nodes(&self) -> Result<Vec<NodeRecord>, Error> {
        self.with_projection(|p| p.offline_nodes().cloned().collect())
    }

    /// How far each spore tier reaches in this node's chain (see [`crate::node::tiers`]).
    pub fn tier_reach(&self) -> Result<TierReach, Error> {
        let r = self.running()?;
        let l = r.ledger.read().map_err(|_| Error::Raft("ledger lock poisoned".into()))?;
        Ok(tier_reach(&r.raft, &r.me, &l))
    }

    /// The view of one spore tier: the registries as of the newest event that tier covers on
    /// this node (Primary: what a voter attests; Seed: what a verified seed or a checkpoint
    /// covers; Latent: everything held). [`Error::TierUnavailable`] when the tier has nothing
    /// here, e.g. Primary on a latent node that has not received a checkpoint yet. A view
    /// below the head is replayed once from the stored history and cached; see
    /// [`crate::node::tiers`].
    pub fn spore(&self, tier: SporeType) -> Result<TierView, Error> {
        let r = self.running()?;
        match r.tier_views.source(&r.ledger, self.tier_reach()?, tier)? {
            None => Err(Error::TierUnavailable(tier)),
            Some(ViewSource::Live) => {
                self.with_projection(|p| TierView { tier, at: point_of(p), projection: Arc::new(p.clone()) })
            }
            Some(ViewSource::Past(p)) => Ok(TierView { tier, at: point_of(&p), projection: p }),
        }
    }

    /// Answers from the most authoritative tier that has an answer, and says which: `f` is
    /// asked of the Primary view, then the Seed view, then the Latent view, and the first
    /// `Some` is returned with its tier and chain point (`None`: no tier has an answer). A
    /// node attested by a voter is answered with Primary authority even when it was changed
    /// since by events only gossip carried; [`SporeSystem::with_projection`] reads the newest
    /// view instead.
    pub fn answer<T>(&self, f: impl Fn(&Projection) -> Option<T>) -> Result<Option<Tiered<T>>, Error> {
        let r = self.running()?;
        answer_tiered(&r.raft, &r.me, &r.ledger, &r.tier_views, f)
    }

    /// One node, from the most authoritative tier that has it (see [`SporeSystem::answer`]).
    pub fn node_answer(&self, id: &NodeId) -> Result<Option<Tiered<NodeRecord>>, Error> {
        self.answer(|p| p.node(id).cloned())
    }

    /// Services with this name, from the most authoritative tier that has any (see
    /// [`SporeSystem::answer`]).
    pub fn services_by_name_answer(&self, name: &str) -> Result<Option<Tiered<Vec<ServiceRecord>>>, Error> {
        self.answer(|p| Some(p.services_by_name(name).cloned().collect::<Vec<_>>()).filter(|v| !v.is_empty()))
    }

    /// Services providing this capability, from the most authoritative tier that has any
    /// (see [`SporeSystem::answer`]).
    pub fn services_by_capability_answer(&self, capability: &str) -> Result<Option<Tiered<Vec<ServiceRecord>>>, Error> {
        self.answer(|p| {
            Some(p.services_by_capability(capability).cloned().collect::<Vec<_>>()).filter(|v| !v.is_empty())
        })
    }

    /// The ledger head.
    pub fn head(&self) -> Result<Option<ChainHead>, Error> {
        self.with_projection(|p| p.head())
    }

    /// Role, leader, term, head and mode.
    pub fn status(&self) -> Result<SporeStatus, Error> {
        let r = self.running()?;
        let mut st = compute_status(&r.raft, &r.ledger, &r.me, r.gossip.as_deref(), &r.modes)?;
        st.scrub = r.scrub.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(st)
    }

    /// Overwrites the stored bytes of record `seq` in this node's ledger, as a failing disk
    /// would. For fault tests only.
    #[doc(hidden)]
    pub fn damage_record_for_tests(&self, seq: u64, bytes: &[u8]) -> Result<(), Error> {
        let r = self.running()?;
        let mut l = r.ledger.write().map_err(|_| Error::Raft("ledger lock poisoned".into()))?;
        Ok(l.damage_record_for_tests(seq, bytes)?)
    }

    /// An operator's acknowledgement of a state divergence ([`SporeStatus::state_divergence`])
    /// after investigating it: the node takes writes again. Returns the divergence cleared.
    pub fn clear_state_divergence(&self) -> Result<Option<crate::core::attest::StateDivergence>, Error> {
        let r = self.running()?;
        let mut l = r.ledger.write().map_err(|_| Error::Raft("ledger lock poisoned".into()))?;
        let d = l.divergence();
        l.clear_divergence();
        Ok(d)
    }

    /// When this node's chain lost a split-brain and the winner has recorded the resolution:
    /// what [`SporeSystem::yield_to_winner`] will do (`None` otherwise).
    pub fn yield_plan(&self) -> Result<Option<crate::node::resolve::YieldPlan>, Error> {
        Ok(self.running()?.resolver.yield_plan.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Yields to the winner of a split-brain (see [`SporeSystem::yield_plan`] and the
    /// `resolve` module): exports this node's chain as a seed file and keeps its whole ledger
    /// directory under `DATA_DIR/forks/` (nothing is dropped), starts again on an empty ledger
    /// with the same key, and joins the winning network through the winner's node, as a voter
    /// if it was one; a latent node (outside Raft) syncs the winning chain by gossip instead,
    /// from the winner's node among its peers. The losing branch's valid events were
    /// re-proposed to the winner before it recorded the resolution. A node that yields twice
    /// for one fork (a latent node that synced the losing chain again from a peer that had not
    /// yielded yet) keeps each copy under its own name. Until the other members of the losing
    /// chain's Raft have yielded and joined the winner too, their Raft requests are refused, so
    /// they cannot take this node back into the losing chain (`schema/split-brain.md`).
    /// Returns the path of the exported seed.
    #[tracing::instrument(skip(self))]
    pub async fn yield_to_winner(&mut self) -> Result<PathBuf, Error> {
        let plan = self.yield_plan()?.ok_or_else(|| Error::SplitBrain("this node has nothing to yield".into()))?;
        let (was_voter, was_member, lost_cluster, data_dir, ledger, key) = {
            let r = self.running()?;
            let st = self.status()?;
            // The losing cluster's other members: until they yield and join the winner too,
            // their Raft traffic would pull this node back into the losing cluster.
            let lost_cluster: Vec<NodeId> =
                st.voters.iter().chain(&st.learners).filter(|n| **n != r.me.node).copied().collect();
            (
                st.voters.contains(&r.me.node),
                st.raft_member,
                lost_cluster,
                r.data_dir.clone(),
                r.ledger.clone(),
                r.key.clone(),
            )
        };
        let forks_dir = data_dir.join("forks");
        std::fs::create_dir_all(&forks_dir).map_err(io_err(&forks_dir))?;
        let base = format!("lost-{}-{}", plan.resolution.loser.fork_seq, plan.resolution.loser.first.hash.short());
        let tag = (1..)
            .map(|n| if n == 1 { base.clone() } else { format!("{base}-{n}") })
            .find(|t| !forks_dir.join(format!("{t}.seed")).exists() && !forks_dir.join(format!("{t}.ledger")).exists())
            .unwrap_or(base);
        let seed_path = forks_dir.join(format!("{tag}.seed"));
        let sp = seed_path.clone();
        tokio::task::spawn_blocking(move || crate::seed::export(&ledger, &key, &sp, true))
            .await
            .map_err(|e| Error::SplitBrain(format!("seed export task: {e}")))??;
        // Keep the temporary dir (the embedded default) alive across the restart.
        let tempdir = self.running.as_mut().and_then(|r| r._tempdir.take());
        if let Err(e) = self.shutdown().await {
            // Nothing was moved: the node can be started again as it was.
            self.config = self.launched.take();
            return Err(e);
        }
        let ledger_dir = data_dir.join(crate::store::inspect::LEDGER_SUBDIR);
        let kept = forks_dir.join(format!("{tag}.ledger"));
        std::fs::rename(&ledger_dir, &kept).map_err(io_err(&ledger_dir))?;
        // The new, empty ledger refuses the losing branch before anything can sync it back
        // from a peer that has not yielded yet.
        {
            let mut fresh = Ledger::open(&ledger_dir, LedgerConfig::default())?;
            fresh.refuse_branch(plan.resolution.loser.first, &lost_cluster)?;
        }
        tracing::warn!(seed = %seed_path.display(), ledger = %kept.display(), winner = %plan.winner_node.node.short(),
            "yielding to the split-brain winner: the losing chain is kept; joining the winner");
        // The losing chain's Raft members that have not yielded yet must not take the
        // restarted node back (see `resolve::YieldFence`).
        self.fence.fence(lost_cluster.iter().copied());
        self.config = self.launched.take();
        if let Some(c) = self.config.as_mut() {
            // A latent node syncs the winning chain by gossip: from the winner's node too.
            if !c.gossip_peers.iter().any(|p| p.node == plan.winner_node.node) {
                c.gossip_peers.push(plan.winner_node.clone());
            }
        }
        self.start().await?;
        if let Some(r) = self.running.as_mut() {
            r._tempdir = tempdir;
        }
        if was_member {
            self.note_winner_members(&plan.winner_node).await;
            self.join(plan.winner_node.clone(), was_voter).await?;
        }
        Ok(seed_path)
    }

    /// Asks the winner's node for its Raft membership, so that members of the losing chain
    /// that already yielded and joined the winner are not refused. Best effort: if it does not
    /// answer, the fence stays as it is.
    async fn note_winner_members(&self, winner: &PeerNode) {
        let Ok(r) = self.running() else { return };
        match r.transport.call(winner, RpcRequest::Status, r.timeouts.rpc).await {
            Ok(RpcResponse::Status(Ok(st))) => {
                self.fence.winner_members(st.voters.into_iter().chain(st.learners).chain(std::iter::once(st.node)))
            }
            other => tracing::debug!(winner = %winner.node.short(), ?other, "the winner did not report its membership"),
        }
    }

    /// The operational-mode transitions this node went through, oldest first, each with its
    /// time and reason (the newest [`MODES_KEPT`](crate::store::modes::MODES_KEPT), kept
    /// across restarts).
    pub fn mode_history(&self) -> Result<Vec<crate::core::modes::Transition>, Error> {
        let l = self.running()?.ledger.read().map_err(|_| Error::Raft("ledger lock poisoned".into()))?;
        Ok(crate::store::modes::list(&l)?)
    }

    /// The committed chained events from `from_seq` on, in order, without gaps or duplicates,
    /// first from the ledger and then live as they commit. Resume after a restart by passing
    /// the last seen seq + 1. On a node still backfilling the history below a state-only seed,
    /// a subscription from below [`SporeStatus::history_from`] ends with
    /// [`LedgerError::HistoryIncomplete`].
    pub fn subscribe(&self, from_seq: u64) -> Result<Subscription, Error> {
        let r = self.running()?;
        let (tx, rx) = mpsc::channel(1024);
        // Weak: a subscription nobody reads must not keep the ledger (and its database lock)
        // alive after the system shut down.
        let ledger = Arc::downgrade(&r.ledger);
        let mut head_rx = r.head_rx.clone();
        tokio::spawn(async move {
            let mut next = from_seq;
            loop {
                let head = *head_rx.borrow_and_update();
                if let Some(h) = head.filter(|h| *h >= next) {
                    let to = h.min(next + crate::core::limits::REPLAY_CHUNK_EVENTS as u64 - 1);
                    // The system shut down: the subscription ends after what it delivered.
                    let Some(l2) = ledger.upgrade() else { return };
                    let page = tokio::task::spawn_blocking(move || match l2.read() {
                        Ok(l) => l.read_range(next, to).map_err(Error::from),
                        Err(_) => Err(Error::Raft("ledger lock poisoned".into())),
                    })
                    .await;
                    let page = match page {
                        Ok(p) => p,
                        Err(e) => Err(Error::Raft(e.to_string())),
                    };
                    match page {
                        Ok(events) => {
                            for ev in events {
                                next = ev.seq + 1;
                                if tx.send(Ok(ev)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                    continue;
                }
                if head_rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Subscription { rx })
    }

    /// Stops Raft, writes a projection checkpoint and syncs everything. Nothing acknowledged
    /// is lost (it was durable before it was acknowledged); this only makes restart faster.
    /// Returns once the ledger's database is closed (its lock released): the data dir can then
    /// be copied, moved or opened again (a [`Subscription`] does not keep it open; it ends).
    /// Tasks of the stopped system that still hold the ledger delay that; after
    /// [`LEDGER_RELEASE_MAX`] it fails with [`LedgerError::StillOpen`].
    #[tracing::instrument(skip(self))]
    pub async fn shutdown(&mut self) -> Result<(), Error> {
        let Some(mut r) = self.running.take() else { return Ok(()) };
        let ledger_dir = r.data_dir.join(crate::store::inspect::LEDGER_SUBDIR);
        for t in r.tasks.drain(..) {
            t.abort();
        }
        r.binding.close();
        let _ = r.raft.shutdown().await;
        let ledger = r.ledger.clone();
        tokio::task::spawn_blocking(move || {
            let l = ledger.write().map_err(|_| Error::Raft("ledger lock poisoned".into()))?;
            // A ledger a failed write poisoned has nothing more it can make durable; what it
            // applied without a sync is in the Raft log, which is applied again on restart.
            // (No projection checkpoint here: only one the chain attests is ever used.)
            if let Some(e) = l.poisoned_by() {
                tracing::warn!(error = %e, "ledger not synced at shutdown: an earlier write failed");
                return Ok(());
            }
            match l.sync() {
                // A failed Raft log write poisoned the shared database: the same holds.
                Err(LedgerError::Storage { source: fjall::Error::Poisoned, .. }) => {
                    tracing::warn!("ledger not synced at shutdown: an earlier write poisoned the database");
                    Ok(())
                }
                other => other.map_err(Error::from),
            }
        })
        .await
        .map_err(raft_err)??;
        let node = r.me.node;
        // Aborted tasks let go of the ledger as the runtime drops them; the database closes
        // with its last handle.
        drop(r);
        wait_until_closed(&ledger_dir, LEDGER_RELEASE_MAX).await?;
        tracing::info!(node = %node.short(), "spore system stopped");
        Ok(())
    }

    /// What failure detection says of each peer it has seen (empty without a transport that
    /// carries SWIM).
    pub fn liveness(&self) -> Result<std::collections::HashMap<NodeId, MemberState>, Error> {
        Ok(self.running()?.liveness.as_ref().map(|l| l.states()).unwrap_or_default())
    }

    /// The Raft handle (advanced use and tests).
    pub fn raft(&self) -> Result<Raft, Error> {
        Ok(self.running()?.raft.clone())
    }
}

/// After a failed start: removes the data dir `created` made once its ledger is closed (kept,
/// with a warning, if the ledger is still held after [`LEDGER_RELEASE_MAX`]).
pub(crate) async fn discard_failed_start(created: CreatedDir) {
    if !created.created() {
        return;
    }
    let ledger_dir = created.path().join(crate::store::inspect::LEDGER_SUBDIR);
    let removed = match wait_until_closed(&ledger_dir, LEDGER_RELEASE_MAX).await {
        Ok(()) => created.remove().map_err(Error::from),
        Err(e) => Err(e),
    };
    if let Err(e) = removed {
        tracing::warn!(error = %e, "could not remove the data dir of the failed start");
    }
}

/// Longest [`SporeSystem::shutdown`] waits for the stopped system's tasks to let go of the
/// ledger.
pub const LEDGER_RELEASE_MAX: Duration = Duration::from_secs(10);

/// Waits until no open database holds the ledger at `dir` (fjall's lock file can be locked),
/// at most `patience`. A ledger without a lock file (never opened, or a removed temporary
/// dir) is closed.
async fn wait_until_closed(dir: &Path, patience: Duration) -> Result<(), Error> {
    // fjall's lock file (`fjall::file::LOCK_FILE`, not exported), held while a database is open.
    let lock = dir.join("lock");
    let started = Instant::now();
    loop {
        let file = match std::fs::OpenOptions::new().read(true).write(true).open(&lock) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(LedgerError::Io { path: lock, source }.into()),
        };
        match file.try_lock() {
            // Dropping the file releases the lock at once.
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(source)) => return Err(LedgerError::Io { path: lock, source }.into()),
        }
        if started.elapsed() >= patience {
            return Err(LedgerError::StillOpen { path: dir.to_path_buf(), waited: started.elapsed() }.into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Re-evaluates the operational mode twice a second, so every transition is logged and kept
/// when it happens, not only when somebody asks for the status.
fn spawn_mode_task(
    raft: Raft,
    ledger: SharedLedger,
    me: PeerNode,
    gossip: Option<Arc<GossipService>>,
    modes: SharedModes,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (raft, ledger, me, gossip, modes) =
                (raft.clone(), ledger.clone(), me.clone(), gossip.clone(), modes.clone());
            // Reads fjall: off the async workers.
            let _ = tokio::task::spawn_blocking(move || compute_status(&raft, &ledger, &me, gossip.as_deref(), &modes))
                .await;
        }
    })
}

/// The node's mode state machine, shared by `status`, the RPC status and the mode task.
pub(crate) type SharedModes = Arc<std::sync::Mutex<ModeMachine>>;

/// Feeds `inputs` to the mode machine; a transition is logged (with its reason) and kept in
/// the ledger's `modes` keyspace. Returns the mode, since when, and why.
fn observe_mode(
    modes: &SharedModes,
    ledger: &SharedLedger,
    inputs: &ModeInputs,
) -> (OperationalMode, Timestamp, Option<String>) {
    let Ok(mut m) = modes.lock() else {
        return (OperationalMode::NetworkFormation, Timestamp::now(), Some("mode state poisoned".into()));
    };
    if let Some(t) = m.observe(inputs, Timestamp::now()) {
        match t.to {
            OperationalMode::NormalOperation | OperationalMode::NetworkFormation => {
                tracing::info!(from = %t.from, to = %t.to, reason = %t.reason, "operational mode changed")
            }
            _ => tracing::warn!(from = %t.from, to = %t.to, reason = %t.reason, "operational mode changed"),
        }
        if let Ok(l) = ledger.read() {
            if let Err(e) = crate::store::modes::record(&l, &t) {
                tracing::warn!(error = %e, "could not keep the mode transition");
            }
        }
    }
    (m.mode(), m.since(), m.last().map(|t| t.reason.clone()))
}

/// The chain point of a projection's head (seq 0 with a zero hash before genesis).
fn point_of(p: &Projection) -> ChainPoint {
    p.head()
        .map(|h| ChainPoint { seq: h.seq, hash: h.hash })
        .unwrap_or(ChainPoint { seq: 0, hash: crate::core::types::ChainHash::ZERO })
}

/// Asks `f` of the tier views in authority order; see [`SporeSystem::answer`].
fn answer_tiered<T>(
    raft: &Raft,
    me: &PeerNode,
    ledger: &SharedLedger,
    views: &crate::node::tiers::TierViews,
    f: impl Fn(&Projection) -> Option<T>,
) -> Result<Option<Tiered<T>>, Error> {
    let reach = {
        let l = ledger.read().map_err(|_| Error::Raft("ledger lock poisoned".into()))?;
        tier_reach(raft, me, &l)
    };
    let confirmed = {
        let m = raft.metrics().borrow().clone();
        m.current_leader.is_some() && (m.state != ServerState::Leader || leader_is_confirmed(raft, &m))
    };
    let mut asked = None;
    for tier in crate::node::tiers::TIERS {
        let stale = tier != SporeType::Primary || !confirmed;
        // Two tiers that reach the same event have the same view: ask it once.
        if reach.get(tier).is_none() || reach.get(tier) == asked {
            continue;
        }
        asked = reach.get(tier);
        let found = match views.source(ledger, reach, tier)? {
            None => None,
            Some(ViewSource::Live) => {
                let l = ledger.read().map_err(|_| Error::Raft("ledger lock poisoned".into()))?;
                let p = l.projection();
                f(p).map(|value| Tiered { value, tier, at: point_of(p), stale })
            }
            Some(ViewSource::Past(p)) => f(&p).map(|value| Tiered { value, tier, at: point_of(&p), stale }),
        };
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// Whether `me` is in the Raft membership (its chain is Primary to the head).
fn is_raft_member(raft: &Raft, me: &PeerNode) -> bool {
    raft.metrics().borrow().membership_config.membership().nodes().any(|(_, n)| n.node == me.node)
}

/// How far each tier reaches in the chain `l` holds, as seen by `me`.
fn tier_reach(raft: &Raft, me: &PeerNode, l: &Ledger) -> TierReach {
    let anchors = crate::core::gossip::Anchors {
        checkpoint: l.anchor(),
        seed: l.seed_anchor().ok().flatten(),
        raft_member: is_raft_member(raft, me),
    };
    TierReach::of(&anchors, l.head().map(|h| ChainPoint { seq: h.seq, hash: h.hash }))
}

pub(crate) fn compute_status(
    raft: &Raft,
    ledger: &SharedLedger,
    me: &PeerNode,
    gossip: Option<&GossipService>,
    modes: &SharedModes,
) -> Result<SporeStatus, Error> {
    let m = raft.metrics().borrow().clone();
    let (head, fingerprint, anchor, seed_anchor, forks, provisional, history_from, state_divergence) = {
        let l = ledger.read().map_err(|_| Error::Raft("ledger lock poisoned".into()))?;
        let forks = crate::store::forks::unresolved(&l).map(|f| f.len()).unwrap_or(0);
        let provisional = crate::store::provisional::count(&l).unwrap_or(0);
        (
            l.head(),
            l.fingerprint(),
            l.anchor(),
            l.seed_anchor().ok().flatten(),
            forks,
            provisional,
            l.history_from(),
            l.divergence(),
        )
    };
    let members = m.membership_config.membership();
    let by_id: BTreeMap<u64, NodeId> = members.nodes().map(|(id, n)| (*id, n.node)).collect();
    let voters: Vec<NodeId> = members.voter_ids().filter_map(|id| by_id.get(&id).copied()).collect();
    let learners: Vec<NodeId> = members.learner_ids().filter_map(|id| by_id.get(&id).copied()).collect();
    let leader_confirmed = (m.state == ServerState::Leader).then(|| leader_is_confirmed(raft, &m));
    // A leader cut off from the majority does not count as one.
    let leader = m.current_leader.and_then(|id| by_id.get(&id).copied()).filter(|_| leader_confirmed != Some(false));
    let last_log = m.last_log_index;
    let voter_ids: std::collections::BTreeSet<u64> = members.voter_ids().collect();
    let peers: Vec<PeerLag> = members
        .nodes()
        .filter(|(_, n)| n.node != me.node)
        .map(|(id, n)| {
            let matched = m.replication.as_ref().and_then(|r| r.get(id).cloned());
            let lag = matched.map(|mi| last_log.unwrap_or(0).saturating_sub(mi.map_or(0, |l| l.index)));
            PeerLag { node: n.node, addr: n.addr.clone(), voter: voter_ids.contains(id), lag }
        })
        .collect();
    let raft_member = by_id.values().any(|n| *n == me.node);
    let health = ledger.read().map_err(|_| Error::Raft("ledger lock poisoned".into()))?.health();
    let halted = halted_reason(&m, &health);
    let inputs = ModeInputs {
        halted: halted.clone(),
        has_chain: head.is_some(),
        raft_member,
        leader,
        primary_reachable: gossip.is_some_and(|g| g.primary_reachable()),
        unresolved_forks: forks,
    };
    let (mode, mode_since, mode_reason) = observe_mode(modes, ledger, &inputs);
    let point = head.map(|h| ChainPoint { seq: h.seq, hash: h.hash });
    let tiers = crate::core::gossip::Anchors { checkpoint: anchor, seed: seed_anchor, raft_member };
    let spore_type = tiers.head_tier(point).unwrap_or(if raft_member { SporeType::Primary } else { SporeType::Latent });
    let reach = TierReach::of(&tiers, point);
    let raft_state = match m.state {
        ServerState::Leader => "Leader",
        ServerState::Follower => "Follower",
        ServerState::Candidate => "Candidate",
        ServerState::Learner => "Learner",
        ServerState::Shutdown => "Shutdown",
    };
    Ok(SporeStatus {
        node: me.node,
        addr: me.addr.clone(),
        raft_state: raft_state.to_string(),
        leader,
        term: m.current_term,
        last_applied: m.last_applied.map(|l| l.index),
        head,
        fingerprint,
        voters,
        learners,
        mode,
        mode_since,
        mode_reason,
        spore_type,
        reach,
        last_log,
        peers,
        raft_member,
        anchor,
        forks,
        last_gossip_ms: gossip.and_then(|g| g.last_sync_age()).map(|a| a.as_millis() as u64),
        provisional,
        history_from,
        state_divergence,
        leader_confirmed,
        halted,
        scrub: Default::default(),
    })
}

/// Why this node halted, if a storage error it cannot survive stopped its Raft (openraft's
/// core stops on a storage error) or poisoned its ledger (a failed durable write).
fn halted_reason(m: &openraft::RaftMetrics<u64, PeerNode>, health: &LedgerHealth) -> Option<String> {
    if let Err(fatal) = &m.running_state {
        return Some(format!("Raft stopped: {fatal}"));
    }
    health.poisoned_by().map(|e| format!("ledger write failed: {e}"))
}

/// Whether this leader heard a majority of its voters within the longest election timeout
/// (a leader of a single voter is always confirmed). openraft refreshes
/// `millis_since_quorum_ack` at every turn of its core loop, ticks included.
fn leader_is_confirmed(raft: &Raft, m: &openraft::RaftMetrics<u64, PeerNode>) -> bool {
    if m.membership_config.membership().voter_ids().count() <= 1 {
        return true;
    }
    let limit = raft.config().election_timeout_max;
    m.millis_since_quorum_ack.is_some_and(|ms| ms <= limit)
}

/// Serves a node's RPCs: read-only status and queries here, everything else by Raft.
struct NodeService {
    raft_service: RaftService,
    raft: Raft,
    ledger: SharedLedger,
    me: PeerNode,
    key: NodeKey,
    gossip: Option<Arc<GossipService>>,
    liveness: Option<Arc<LivenessService>>,
    modes: SharedModes,
    tier_views: Arc<crate::node::tiers::TierViews>,
    fence: Arc<crate::node::resolve::YieldFence>,
    /// On a latent node: takes writes forwarded to it (`spore service register --addr` of a
    /// Rhizomorph) the way it takes its own, delivered to the voters or held.
    provisional: Option<ProvisionalWriter>,
    /// What the background scrub found.
    scrub: crate::node::scrubber::SharedScrub,
    /// The ledger's health, read without its lock on every forwarded write.
    health: Arc<LedgerHealth>,
}

/// What a latent node (outside the Raft membership) needs to hand a write to the voters, or
/// to hold it as a provisional event: for its own writes and for writes forwarded to it.
#[derive(Clone)]
struct ProvisionalWriter {
    raft: Raft,
    transport: SharedTransport,
    ledger: SharedLedger,
    gossip: Option<Arc<GossipService>>,
    me: PeerNode,
    key: NodeKey,
    timeouts: Timeouts,
}

impl ProvisionalWriter {
    /// Wraps `event` with this node's statement that it is not in the chain up to its head
    /// and delivers it to the voters it knows (retried until the write timeout; the statement
    /// makes a retry after a lost answer harmless), else holds it ([`Error::Provisional`]).
    #[tracing::instrument(level = "debug", skip_all, fields(kind = event.body.kind()))]
    async fn submit(&self, event: SignedEvent) -> Result<ChainPoint, Error> {
        let head = self.ledger.read().map_err(|_| Error::Raft("ledger lock poisoned".into()))?.head().map(|h| h.seq);
        let p = ProvisionalEvent::new(&self.key, event, head);
        let deadline = Instant::now() + self.timeouts.write;
        let mut backoff = Duration::from_millis(50);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match deliver_provisional(
                &self.raft,
                &self.transport,
                &self.ledger,
                self.gossip.as_deref(),
                &self.me,
                &p,
                left,
                self.timeouts.rpc,
            )
            .await
            {
                Some(SporeResponse::Applied(point)) => return Ok(point),
                Some(SporeResponse::Rejected(Rejection::ProvisionalDuplicate(point))) => return Ok(point),
                Some(SporeResponse::Rejected(rej)) => return Err(Error::Rejected(rej)),
                Some(other) => {
                    return Err(Error::Raft(format!("unexpected response to a provisional event: {other:?}")))
                }
                None => {}
            }
            if Instant::now() + backoff >= deadline {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
        let id = p.id();
        {
            let l = self.ledger.read().map_err(|_| Error::Raft("ledger lock poisoned".into()))?;
            crate::store::provisional::put(&l, &p)?;
        }
        tracing::info!(id = %id.short(), kind = p.event.body.kind(), "no voter reachable; holding the write as a provisional event");
        Err(Error::Provisional { id })
    }
}

/// Whether `node` is in `raft`'s membership (voter or learner).
fn is_member(raft: &Raft, node: &NodeId) -> bool {
    let id = raft_id(node);
    raft.metrics().borrow().membership_config.membership().nodes().any(|(n, _)| *n == id)
}

/// Hands a provisional event to the Primary tier and returns the state machine's answer, or
/// `None` if no voter answered within `within`. On the leader it is proposed here; otherwise
/// it goes to the leader this node knows, else to the registry's authorities and the gossip
/// bootstrap peers in turn (a member that is not the leader names the leader, tried next).
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(level = "debug", skip_all, fields(id = %p.id().short()))]
async fn deliver_provisional(
    raft: &Raft,
    transport: &SharedTransport,
    ledger: &SharedLedger,
    gossip: Option<&GossipService>,
    me: &PeerNode,
    p: &ProvisionalEvent,
    within: Duration,
    rpc_timeout: Duration,
) -> Option<SporeResponse> {
    let deadline = Instant::now() + within;
    let m = raft.metrics().borrow().clone();
    let leader = m.current_leader.and_then(|id| m.membership_config.membership().get_node(&id).cloned());
    let mut targets: Vec<PeerNode> = leader.into_iter().collect();
    if let Ok(l) = ledger.read() {
        for n in l.projection().nodes() {
            if n.role.is_authority() && n.status != crate::core::projection::NodeStatus::Left {
                if let Some(a) = n.addresses.first() {
                    targets.push(PeerNode { node: n.node, addr: a.clone() });
                }
            }
        }
    }
    if let Some(g) = gossip {
        targets.extend(g.bootstrap_peers());
    }
    let mut tried: Vec<NodeId> = Vec::new();
    let mut queue: std::collections::VecDeque<PeerNode> = targets.into();
    while let Some(t) = queue.pop_front() {
        if tried.contains(&t.node) {
            continue;
        }
        tried.push(t.node);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let call = async {
            if t.node == me.node {
                // This node leads: propose it here.
                let write = raft.client_write(crate::raft::SporeRequest::Provisional(p.clone()));
                return match tokio::time::timeout(left, write).await {
                    Ok(Ok(resp)) => Some(RpcResponse::Forward(Ok(resp.data))),
                    _ => None,
                };
            }
            transport.call(&t, RpcRequest::Provisional(p.clone()), left.min(rpc_timeout)).await.ok()
        };
        match call.await {
            Some(RpcResponse::Forward(Ok(resp))) => return Some(resp),
            Some(RpcResponse::Forward(Err(RemoteFailure::NotLeader { leader: Some(l) })))
                if !tried.contains(&l.node) =>
            {
                queue.push_front(l)
            }
            other => tracing::debug!(peer = %t.node.short(), ?other, "provisional event not taken"),
        }
    }
    None
}

/// How often held provisional events are offered to the Primary tier.
const PROVISIONAL_TICK: Duration = Duration::from_millis(500);
/// Most held provisional events offered per tick.
const PROVISIONAL_PER_TICK: usize = 16;

/// Offers the provisional events this node holds to the Primary tier (the leader proposes
/// them; a member forwards them to its leader; a latent node to the voters it knows) and
/// forgets each once the state machine answered for it (applied, already committed, or
/// refused for good). Also drops what can no longer be committed: a held event whose
/// statement fell out of the window a committer scans is re-issued by its author (after
/// checking its own chain) and dropped by everyone else.
fn spawn_provisional_task(writer: ProvisionalWriter) -> tokio::task::JoinHandle<()> {
    let ProvisionalWriter { raft, transport, ledger, gossip, me, key, timeouts } = writer;
    let rpc_timeout = timeouts.rpc;
    let span = tracing::info_span!("provisional", node = %me.node.short());
    tokio::spawn(
        async move {
            loop {
                tokio::time::sleep(PROVISIONAL_TICK).await;
                let held = match ledger.read() {
                    Ok(l) => match crate::store::provisional::list(&l, crate::store::provisional::HELD_MAX) {
                        Ok(v) if v.is_empty() => continue,
                        Ok(v) => renew_or_drop(&l, &key, l.head().map(|h| h.seq), v),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read held provisional events");
                            continue;
                        }
                    },
                    Err(_) => return,
                };
                for p in held.into_iter().take(PROVISIONAL_PER_TICK) {
                    let answer = deliver_provisional(&raft, &transport, &ledger, gossip.as_deref(), &me, &p, rpc_timeout, rpc_timeout).await;
                    let Some(answer) = answer else {
                        // Nobody took it: the Primary tier is out of reach; try next tick.
                        break;
                    };
                    match &answer {
                        SporeResponse::Applied(pt) => tracing::info!(id = %p.id().short(), seq = pt.seq, "provisional event committed"),
                        SporeResponse::Rejected(Rejection::ProvisionalDuplicate(pt)) => {
                            tracing::info!(id = %p.id().short(), seq = pt.seq, "provisional event was already committed")
                        }
                        SporeResponse::Rejected(r) => tracing::warn!(id = %p.id().short(), reason = %r, "provisional event refused for good"),
                        other => tracing::warn!(id = %p.id().short(), ?other, "unexpected answer to a provisional event"),
                    }
                    let committed = matches!(answer, SporeResponse::Applied(_) | SporeResponse::Rejected(Rejection::ProvisionalDuplicate(_)));
                    if let (true, Some(g)) = (committed, &gossip) {
                        g.note_committed(p.id());
                    }
                    if let Ok(l) = ledger.read() {
                        if let Err(e) = crate::store::provisional::remove(&l, &p.id()) {
                            tracing::warn!(error = %e, "cannot forget a provisional event");
                        }
                    }
                }
            }
        }
        .instrument(span),
    )
}

/// Keeps the held events that can still be committed: one whose statement is older than the
/// committers' window is re-issued with a fresh statement if this node wrote it and its chain
/// does not hold it, dropped otherwise (its author re-issues it). Returns what to offer.
fn renew_or_drop(
    l: &crate::store::ledger::Ledger,
    key: &NodeKey,
    head: Option<u64>,
    held: Vec<ProvisionalEvent>,
) -> Vec<ProvisionalEvent> {
    let mut keep = Vec::with_capacity(held.len());
    for p in held {
        match p.scan_range(head) {
            Ok(_) => keep.push(p),
            Err(ProvisionalError::FromTheFuture(_)) => keep.push(p), // our chain lags; a committer decides
            Err(_) => {
                let id = p.id();
                let _ = crate::store::provisional::remove(l, &id);
                if p.event.author != key.node_id() {
                    tracing::info!(id = %id.short(), "dropping a provisional event too old to commit (its author re-issues it)");
                    continue;
                }
                // Ours: is it in our chain since the old statement? Then it is committed.
                let from = p.absent_through.map_or(0, |s| s + 1);
                let present = match head {
                    Some(h) if from <= h => match crate::store::provisional::find_committed(l, &p, from, h) {
                        Ok(found) => found.is_some(),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the chain to renew a provisional event");
                            true
                        }
                    },
                    _ => false,
                };
                if present {
                    continue;
                }
                let renewed = ProvisionalEvent::new(key, p.event, head);
                match crate::store::provisional::put(l, &renewed) {
                    Ok(_) => {
                        tracing::info!(id = %id.short(), "renewed the statement of our provisional event");
                        keep.push(renewed);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot renew a provisional event"),
                }
            }
        }
    }
    keep
}

/// On the leader, turns liveness *transitions* into events: a registered, active node that
/// SWIM declared down goes offline (with when it was last heard of), an offline node SWIM sees
/// up again comes back online. One event per transition, never one per heartbeat; a proposal
/// that loses a race (the node changed meanwhile) is rejected by the rules and looked at again
/// at the next tick.
fn spawn_liveness_committer(
    raft: Raft,
    proposer: Proposer,
    ledger: SharedLedger,
    key: NodeKey,
    liveness: Arc<LivenessService>,
) -> tokio::task::JoinHandle<()> {
    let span = tracing::info_span!("liveness_committer", node = %key.node_id().short());
    tokio::spawn(
        async move {
            let me = key.node_id();
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if raft.metrics().borrow().current_leader != Some(raft_id(&me)) {
                    continue;
                }
                let states = liveness.states();
                let todo: Vec<(NodeId, EventBody)> = {
                    let Ok(l) = ledger.read() else { return };
                    l.projection()
                        .nodes()
                        .filter(|n| n.node != me)
                        .filter_map(|n| {
                            let st = states.get(&n.node)?;
                            match (n.status, st.up) {
                                (crate::core::projection::NodeStatus::Active, false) => {
                                    let ago = st.since.elapsed().as_micros() as i64;
                                    let last_seen = Timestamp(Timestamp::now().0.saturating_sub(ago));
                                    Some((n.node, EventBody::NodeWentOffline { node: n.node, last_seen }))
                                }
                                (crate::core::projection::NodeStatus::Offline, true) => {
                                    Some((n.node, EventBody::NodeBackOnline { node: n.node }))
                                }
                                _ => None,
                            }
                        })
                        .collect()
                };
                for (node, body) in todo {
                    let Ok(fp) = ledger.read().map(|l| l.fingerprint()) else { return };
                    let Some(fp) = fp else { break };
                    let kind = body.kind();
                    let ev = SignedEvent::sign(&key, fp, Timestamp::now(), body);
                    match tokio::time::timeout(Duration::from_secs(5), proposer.propose(ev)).await {
                        Ok(Ok(SporeResponse::Applied(p))) => {
                            tracing::info!(peer = %node.short(), kind, seq = p.seq, "liveness transition committed")
                        }
                        other => {
                            tracing::debug!(peer = %node.short(), kind, ?other, "liveness transition not committed")
                        }
                    }
                }
            }
        }
        .instrument(span),
    )
}

/// On the leader, commits a checkpoint event (head seq and hash, signed by this voter) when
/// the policy says one is due: the anchors that give gossiped ranges Primary authority. A
/// checkpoint that loses a race with other writes is rejected (it must name the head just
/// before it) and retried at the next tick.
fn spawn_anchor_task(
    raft: Raft,
    proposer: Proposer,
    ledger: SharedLedger,
    key: NodeKey,
    policy: AnchorPolicy,
) -> tokio::task::JoinHandle<()> {
    let span = tracing::info_span!("anchor_task", node = %key.node_id().short());
    tokio::spawn(
        async move {
            let tick = (policy.every / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
            let mut last_anchor_at = Instant::now();
            // Where this leader last attested the state (`None`: not since it started).
            let mut last_state_at: Option<u64> = None;
            loop {
                tokio::time::sleep(tick).await;
                let leader = { raft.metrics().borrow().current_leader == Some(raft_id(&key.node_id())) };
                if !leader {
                    last_anchor_at = Instant::now();
                    continue;
                }
                let due = {
                    let Ok(l) = ledger.read() else { return };
                    let (Some(head), Some(fp)) = (l.head(), l.fingerprint()) else { continue };
                    let since = head.seq - l.anchor().map_or(0, |a| a.seq);
                    let head_is_anchor = l.anchor().is_some_and(|a| a.seq == head.seq);
                    let due = !head_is_anchor
                        && since > 0
                        && (since >= policy.every_events || last_anchor_at.elapsed() >= policy.every);
                    // The leader attests only a state it has checked: its projection was checked
                    // against the chain on open and follows every applied event since; a
                    // replica in divergence proposes nothing. The digest costs O(registry) on
                    // every replica, so a state is attested at most every four registry sizes
                    // of events (amortized O(1) per event); the anchors between attest the head.
                    let p = l.projection();
                    let registry = (p.state().nodes.len() + p.state().services.len()) as u64;
                    let spacing = policy.every_events.max(registry.saturating_mul(4));
                    let attest = last_state_at.is_none_or(|s| head.seq.saturating_sub(s) >= spacing);
                    (due && p.divergence().is_none()).then(|| (head, fp, attest.then(|| p.state_digest())))
                };
                let Some((head, fp, state_digest)) = due else { continue };
                let body = match state_digest {
                    Some(state_digest) => {
                        EventBody::StateCheckpoint { head_seq: head.seq, head_hash: head.hash, state_digest }
                    }
                    None => EventBody::Checkpoint { head_seq: head.seq, head_hash: head.hash },
                };
                let attested = matches!(body, EventBody::StateCheckpoint { .. });
                let ev = SignedEvent::sign(&key, fp, Timestamp::now(), body);
                match tokio::time::timeout(Duration::from_secs(5), proposer.propose(ev)).await {
                    Ok(Ok(SporeResponse::Applied(p))) => {
                        last_anchor_at = Instant::now();
                        if attested {
                            last_state_at = Some(head.seq);
                        }
                        tracing::debug!(seq = p.seq, attested, "anchor committed");
                    }
                    Ok(Ok(other)) => tracing::debug!(?other, "anchor not committed; retrying later"),
                    Ok(Err(e)) => tracing::debug!(error = ?e, "anchor not proposed"),
                    Err(_) => tracing::debug!("anchor proposal timed out"),
                }
            }
        }
        .instrument(span),
    )
}

impl crate::net::RpcHandler for NodeService {
    fn gossip(&self) -> Option<Arc<dyn crate::net::gossip::GossipAcceptor>> {
        self.gossip.clone().map(|g| g as Arc<dyn crate::net::gossip::GossipAcceptor>)
    }

    fn liveness(&self) -> Option<Arc<dyn crate::net::liveness::DatagramSink>> {
        self.liveness.clone().map(|l| l as Arc<dyn crate::net::liveness::DatagramSink>)
    }

    fn handle(&self, from: NodeId, req: RpcRequest) -> crate::net::BoxFuture<'_, RpcResponse> {
        use crate::net::{Query, QueryAnswer};
        match req {
            RpcRequest::Status => {
                let r = compute_status(&self.raft, &self.ledger, &self.me, self.gossip.as_deref(), &self.modes)
                    .map(|mut st| {
                        st.scrub = self.scrub.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        st
                    })
                    .map_err(|e| RemoteFailure::Other(e.to_string()));
                Box::pin(async move { RpcResponse::Status(r) })
            }
            RpcRequest::Query(Query::Tiered(q)) => {
                let answer = answer_tiered(&self.raft, &self.me, &self.ledger, &self.tier_views, |p| {
                    Some(q.answer(p)).filter(|a| !a.is_empty())
                })
                .map(QueryAnswer::Tiered)
                .map_err(|e| RemoteFailure::Other(e.to_string()));
                Box::pin(async move { RpcResponse::Query(answer) })
            }
            RpcRequest::Query(q) => {
                let answer = match self.ledger.read() {
                    Err(_) => Err(RemoteFailure::Other("ledger lock poisoned".into())),
                    Ok(l) => {
                        let p = l.projection();
                        Ok(match q {
                            Query::ChainAt(seq) => {
                                let at = match l.get(seq) {
                                    Ok(e) => e.map(|e| ChainPoint { seq: e.seq, hash: e.hash }),
                                    Err(e) => {
                                        return Box::pin(async move {
                                            RpcResponse::Query(Err(RemoteFailure::Other(e.to_string())))
                                        })
                                    }
                                };
                                let head = p.head().map(|h| ChainPoint { seq: h.seq, hash: h.hash });
                                QueryAnswer::Chain { at, head, fingerprint: p.fingerprint() }
                            }
                            Query::Events { from, max } => {
                                let max = max.clamp(1, crate::net::EVENTS_PER_QUERY_MAX) as u64;
                                let events = match p.head() {
                                    Some(h) if from <= h.seq => l.read_range(from, h.seq.min(from + max - 1)),
                                    _ => Ok(Vec::new()),
                                };
                                match events {
                                    Ok(ev) => QueryAnswer::Events(ev),
                                    Err(e) => {
                                        return Box::pin(async move {
                                            RpcResponse::Query(Err(RemoteFailure::Other(e.to_string())))
                                        })
                                    }
                                }
                            }
                            registry => match registry.as_registry() {
                                Some(q) => q.answer(p).into(),
                                None => {
                                    let e = RemoteFailure::Other("not a registry query".into());
                                    return Box::pin(async move { RpcResponse::Query(Err(e)) });
                                }
                            },
                        })
                    }
                };
                Box::pin(async move { RpcResponse::Query(answer) })
            }
            RpcRequest::ExportSeed { path, include_events } => {
                if from != self.me.node {
                    tracing::warn!(peer = %from.short(), "refused a seed export asked by another key");
                    let e = RemoteFailure::Other("only this node's own key may ask it to export a seed".into());
                    return Box::pin(async move { RpcResponse::ExportSeed(Err(e)) });
                }
                let (ledger, key) = (self.ledger.clone(), self.key.clone());
                Box::pin(async move {
                    let r = tokio::task::spawn_blocking(move || {
                        crate::seed::export(&ledger, &key, std::path::Path::new(&path), include_events)
                    })
                    .await
                    .map_err(|e| RemoteFailure::Other(format!("seed export task: {e}")))
                    .and_then(|r| r.map_err(|e| RemoteFailure::Other(e.to_string())))
                    .map(|e| ChainPoint { seq: e.head.seq, hash: e.head.hash });
                    RpcResponse::ExportSeed(r)
                })
            }
            RpcRequest::AppendEntries(_) | RpcRequest::Vote(_) | RpcRequest::InstallSnapshot(_)
                if self.fence.refuses(&from, || is_member(&self.raft, &from)) =>
            {
                tracing::debug!(peer = %from.short(), kind = req.kind(), "refused Raft traffic from the split-brain chain this node yielded away from");
                use openraft::error::{Fatal, RaftError};
                let resp = match req {
                    RpcRequest::AppendEntries(_) => RpcResponse::AppendEntries(Err(RaftError::Fatal(Fatal::Stopped))),
                    RpcRequest::Vote(_) => RpcResponse::Vote(Err(RaftError::Fatal(Fatal::Stopped))),
                    _ => RpcResponse::InstallSnapshot(Err(RaftError::Fatal(Fatal::Stopped))),
                };
                Box::pin(async move { resp })
            }
            RpcRequest::Forward(ev) if self.provisional.is_some() && !is_member(&self.raft, &self.me.node) => {
                let writer = self.provisional.clone();
                Box::pin(async move {
                    let Some(writer) = writer else {
                        return RpcResponse::Forward(Err(RemoteFailure::Other("not a latent node".into())));
                    };
                    RpcResponse::Forward(match writer.submit(ev).await {
                        Ok(point) => Ok(SporeResponse::Applied(point)),
                        Err(Error::Rejected(r)) => Ok(SporeResponse::Rejected(r)),
                        Err(Error::Provisional { id }) => Err(RemoteFailure::Provisional { id }),
                        Err(e) => Err(RemoteFailure::Other(e.to_string())),
                    })
                })
            }
            RpcRequest::Forward(_) if self.health.divergence().is_some() => {
                // A node in state divergence proposes nothing, for itself or for others.
                let d = self.health.divergence();
                Box::pin(async move {
                    let why =
                        d.map_or_else(|| "state divergence".to_string(), |d| Error::StateDivergence(d).to_string());
                    RpcResponse::Forward(Err(RemoteFailure::Other(why)))
                })
            }
            other => self.raft_service.handle(from, other),
        }
    }
}

/// A stream of committed events; see [`SporeSystem::subscribe`].
pub struct Subscription {
    rx: mpsc::Receiver<Result<ChainedEvent, Error>>,
}

impl Subscription {
    /// The next committed event; `None` once the system has shut down.
    pub async fn next(&mut self) -> Option<Result<ChainedEvent, Error>> {
        self.rx.recv().await
    }
}

/// Rejections surface as [`Error::Rejected`]; this lets callers match on the reason.
impl Error {
    /// The rejection reason, if this error is one.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Error::Rejected(r) => Some(r),
            _ => None,
        }
    }
}

// A SporeSystem is shared between tasks: it must stay Send + Sync.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SporeSystem>();
};
