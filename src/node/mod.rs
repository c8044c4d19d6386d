//! The node layer, the top of the library: [`SporeSystem`], the embedded discovery store of one
//! node, with everything that runs it.
//!
//! A [`SporeSystem`] wires the ledger, openraft and the network together; this layer is the
//! only place that spawns a node's tasks or reads the clock for it. Its files, one job each:
//! `builder` (settings), `launch` (wiring one running node), `lifecycle` (start, form, join,
//! shutdown), `admission` (who may reach a node on its own QUIC endpoint), `upkeep` (what the
//! node does by itself: admission, yielding a lost split-brain, [`NodeEvent`]s), `checks` (the
//! health checks of the services this node offers, their transitions committed), `members`
//! (remove, promote, demote), `writes`, `reads` (queries, tiered answers, subscriptions),
//! `watch` (filtered event streams, local and remote), `status` (status and operational
//! modes), `provisional` (a latent node's held writes), `leader` (the leader's background
//! duties), `rpc_server` (the RPCs a node serves) and `split_brain` (yielding to a winner);
//! [`resolve`], [`tiers`], [`scrubber`], [`backup`] (scheduled backups) and [`retention`]
//! (archiving and pruning old history) run beside them, and [`config`] runs one standalone
//! node from a TOML file or flags.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mycnet_spores::Error> {
//! use mycnet_spores::{SporeSystem, NetworkIdentity};
//! let spore_system = SporeSystem::new();                // embedded default, no set-up
//! spore_system.initialize(NetworkIdentity {
//!     network_id: uuid::Uuid::new_v4(),
//!     network_name: "my-network".to_string(),
//!     genesis_timestamp: chrono::Utc::now(),
//! }).await?;                                             // forms a one-voter network
//! let id = spore_system.register_service("object-store", vec![], vec!["storage".into()], vec![]).await?;
//! assert_eq!(spore_system.services_by_name("object-store")?.len(), 1);
//! # let _ = id; Ok(()) }
//! ```

mod admission;
pub mod backup;
mod builder;
mod checks;
mod clock;
pub mod config;
pub mod datadir;
mod launch;
mod leader;
mod lifecycle;
mod members;
mod metrics;
mod provisional;
mod reads;
pub mod resolve;
pub mod retention;
mod rpc_server;
pub mod scrubber;
mod split_brain;
mod status;
pub mod tiers;
mod upkeep;
mod watch;
mod writes;

use openraft::async_runtime::WatchReceiver;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::keys::NodeKey;
use crate::core::projection::Rejection;
use crate::core::types::{NodeId, NodeRole};
use crate::error::{Error, LedgerError};
use crate::net::gossip::GossipService;
use crate::net::liveness::{LivenessService, MemberState};
use crate::net::{Binding, NetworkBackend, SharedTransport};
use crate::raft::proposer::Proposer;
use crate::raft::state_machine::SharedLedger;
use crate::raft::Raft;
use crate::store::ledger::LedgerHealth;
use crate::wire::rpc::PeerNode;

pub use backup::{parse_duration, BackupConfig, BackupError, BackupPolicy};
pub use builder::{AnchorPolicy, SporeSystemBuilder, Timeouts};
pub use config::{
    parse_node_key, start_node, ConfigError, InitConfig, JoinConfig, NodeConfig, PeerConfig, RoleConfig,
    TimeoutProfile, JOIN_PATIENCE,
};
pub(crate) use lifecycle::discard_failed_start;
pub use lifecycle::LEDGER_RELEASE_MAX;
pub use members::{Member, Place};
pub use reads::{Consistency, Subscription};
pub use retention::{RetentionConfig, RetentionSettings};
pub use split_brain::SplitBrainError;
pub(crate) use status::{compute_status, SharedModes};
pub use status::{HaltCause, OperationalMode};
pub use upkeep::{NodeEvent, YieldPolicy, UPKEEP_INTERVAL};
pub use watch::{RemoteWatch, Watch};

use provisional::ProvisionalWriter;

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
    /// Signatures this replica verified ahead of their apply; the events this node signs are
    /// recorded there as they are signed ([`PreVerified::sign`]).
    ///
    /// [`PreVerified::sign`]: crate::store::verified::PreVerified::sign
    checks: crate::store::verified::PreVerified,
    ledger: SharedLedger,
    head_rx: tokio::sync::watch::Receiver<Option<u64>>,
    transport: SharedTransport,
    /// The backend it was bound on (checks the addresses given to announce, admit or join).
    backend: Arc<dyn NetworkBackend>,
    /// The address the endpoint is bound to.
    bound_addr: String,
    /// Closes the endpoint (at shutdown).
    binding: std::sync::Mutex<Binding>,
    /// Who may connect, fed by the registry, when the library runs the QUIC transport itself
    /// (the upkeep refreshes it).
    admission: Option<admission::RegistryAdmission>,
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
    /// The projection readers answer from, without the ledger's lock (read-copy-update).
    view: Arc<crate::store::ledger::ProjectionView>,
    /// The network's fingerprint, kept at the first write that signs (the genesis sets it
    /// once): signing then reads no snapshot, so a writer alone keeps the ledger from
    /// publishing ([`ProjectionView`](crate::store::ledger::ProjectionView)).
    fingerprint: std::sync::OnceLock<crate::core::types::NetworkFingerprint>,
    /// Background tasks (gossip driver, anchor committer), aborted on shutdown.
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The embedded default's temporary data dir, removed when the system is dropped (handed
    /// on across a split-brain yield's restart).
    tempdir: std::sync::Mutex<Option<tempfile::TempDir>>,
}

impl Running {
    fn abort_tasks(&self) {
        for t in crate::core::sync::lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.abort_tasks();
    }
}

/// The discovery store of one node. See the module doc and the crate doc.
///
/// A handle: clones are cheap and share the one node (hand one to each task that needs it).
/// The node stops — its tasks aborted, its ledger closed — when the last handle is dropped,
/// or at [`SporeSystem::shutdown`].
#[derive(Clone)]
pub struct SporeSystem {
    shared: Arc<Shared>,
}

/// What every handle of one [`SporeSystem`] shares.
struct Shared {
    /// The configuration before start, and what the running system was started with (its key
    /// and data dir filled in), to start it again after yielding a split-brain.
    life: std::sync::Mutex<Life>,
    /// Start, shutdown and a yield's restart take turns.
    gate: tokio::sync::Mutex<()>,
    running: std::sync::RwLock<Option<Arc<Running>>>,
    /// Raft peers refused after yielding a split-brain (kept across the yield's restart).
    fence: Arc<crate::node::resolve::YieldFence>,
    /// What the node reports of its own upkeep ([`SporeSystem::events`]).
    events: tokio::sync::broadcast::Sender<NodeEvent>,
    yield_policy: YieldPolicy,
    /// The checks of the services this node offers ([`SporeSystem::pass_ttl`] refreshes
    /// them; kept across a yield's restart).
    checks: Arc<checks::CheckRunner>,
    /// The counters the metrics keep between scrapes.
    metrics: metrics::NodeMetrics,
    /// The backup policy and how its runs went (shared with the RPC server).
    backups: backup::SharedBackups,
    /// How much history the node keeps (`None`: all of it).
    retention: Option<retention::RetentionSettings>,
    /// The upkeep, health-check and backup tasks (started with the first start; they end with the
    /// last handle).
    upkeep: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

#[derive(Default)]
struct Life {
    config: Option<SporeSystemBuilder>,
    launched: Option<SporeSystemBuilder>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for t in crate::core::sync::lock(&self.upkeep).drain(..) {
            t.abort();
        }
    }
}

impl Default for SporeSystem {
    fn default() -> Self {
        Self::new()
    }
}

/// An openraft error (or one of the consensus layer's) as the crate's [`Error::Raft`].
fn raft_err<E: Into<crate::raft::error::ConsensusError>>(e: E) -> Error {
    Error::Raft(e.into())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Ledger(LedgerError::Io { path: path.to_path_buf(), source })
}

impl SporeSystem {
    /// The embedded default: a temporary data dir, a fresh key, a voter on a private network
    /// of one. Nothing happens until [`SporeSystem::initialize`] or [`SporeSystem::start`].
    pub fn new() -> Self {
        SporeSystemBuilder::default().private_network().build()
    }

    /// A builder for everything else.
    pub fn builder() -> SporeSystemBuilder {
        SporeSystemBuilder::default()
    }

    fn running(&self) -> Result<Arc<Running>, Error> {
        crate::core::sync::read(&self.shared.running).clone().ok_or(Error::NotStarted)
    }

    /// What this node reports of its own upkeep: a lost split-brain, a yield and its outcome,
    /// a halt ([`NodeEvent`]). Each receiver sees the events sent after it subscribed; one that
    /// falls more than 64 behind misses the oldest (`RecvError::Lagged` says how many).
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<NodeEvent> {
        self.shared.events.subscribe()
    }

    /// Checks addresses against the backend this system runs on, or will start on.
    fn check_addresses<'a>(&self, addresses: impl IntoIterator<Item = &'a str>) -> Result<(), Error> {
        if let Ok(r) = self.running() {
            for a in addresses {
                r.backend.check_address(a)?;
            }
            return Ok(());
        }
        if let Some(c) = &crate::core::sync::lock(&self.shared.life).config {
            c.check_addresses(addresses)?;
        }
        Ok(())
    }

    fn leader_node(&self) -> Option<PeerNode> {
        let r = self.running().ok()?;
        // Every write asks: read in place rather than clone the whole metrics.
        let m = r.raft.metrics();
        let m = m.borrow_watched();
        let id = m.current_leader?;
        m.membership_config.membership().get_node(&id).cloned()
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
        Ok(self.running()?.bound_addr.clone())
    }

    /// The round trips this node measured to `peer` (smoothed, with their variation and the
    /// deadline a call to it gets now); `None` before any call to it completed, or on a
    /// transport that does not measure them.
    pub fn round_trip(&self, peer: &NodeId) -> Result<Option<crate::net::rtt::RoundTrip>, Error> {
        Ok(self.running()?.transport.round_trip(peer))
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
