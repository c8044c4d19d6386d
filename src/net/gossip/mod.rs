//! The latent tier's I/O, its public surface: [`GossipService`] (one node's gossip side), its
//! tuning, the stream seams a transport plugs into, and the ledger's record format for frames.
//!
//! The frames are [`crate::wire::gossip`]'s. The rest, one job per file: `pump` (one session
//! over any byte stream — a QUIC stream under ALPN [`ALPN_GOSSIP`] in the product: frames in
//! and out, ranges verified and stored in order), `driver` (rounds with a few random peers
//! every interval), `peers` (the peer book: candidates, learned peers, bans), `provisional`
//! (held provisional events) and `forks` (fork evidence and who holds the other side).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};

use super::{BoxFuture, TransportError};
use crate::core::event::ChainedEvent;
use crate::core::gossip::{PeerAddr, SyncConfig};
use crate::core::keys::VerifierCache;
use crate::core::provisional::EventId;
use crate::core::sync;
use crate::core::types::{ChainHash, NodeId};
use crate::raft::state_machine::SharedLedger;
use crate::store::record;
use crate::wire::gossip::RecordFormat;
use crate::wire::rpc::PeerNode;

mod driver;
mod forks;
mod peers;
mod provisional;
mod pump;

use peers::PeerState;

/// ALPN of the gossip protocol.
pub const ALPN_GOSSIP: &[u8] = b"spores-gossip/1";

/// The ledger's record format ([`crate::store::record`]), which gossip range frames carry
/// verbatim ([`RecordFormat`]).
#[derive(Clone, Copy, Debug)]
pub struct LedgerRecords;

impl RecordFormat for LedgerRecords {
    type Error = record::DecodeError;

    fn encode_record(event: &ChainedEvent) -> Vec<u8> {
        record::encode_record(event)
    }

    fn decode_record_with(bytes: &[u8], buf: &mut rkyv::util::AlignedVec) -> Result<ChainedEvent, Self::Error> {
        record::decode_record_with(bytes, buf)
    }
}

/// A bidirectional byte stream to a gossip peer.
pub struct GossipStream {
    /// The authenticated peer.
    pub peer: NodeId,
    /// Our sending half.
    pub send: Box<dyn AsyncWrite + Send + Unpin>,
    /// Our receiving half.
    pub recv: Box<dyn AsyncRead + Send + Unpin>,
}

/// Opens gossip streams to peers (the QUIC transport in the product).
pub trait GossipDialer: Send + Sync + 'static {
    /// Opens a stream to `to` under [`ALPN_GOSSIP`].
    fn open_gossip(&self, to: &PeerNode) -> BoxFuture<'_, Result<GossipStream, TransportError>>;
}

/// Serves incoming gossip streams (implemented by [`GossipService`]).
pub trait GossipAcceptor: Send + Sync + 'static {
    /// Runs a responder session on an incoming stream.
    fn accept_gossip(&self, stream: GossipStream) -> BoxFuture<'_, ()>;
}

/// Tuning of the gossip driver.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// Time between rounds.
    pub interval: Duration,
    /// Peers contacted per round.
    pub fanout: usize,
    /// Session tuning.
    pub sync: SyncConfig,
    /// First ban of a misbehaving peer; doubles with each further violation, up to an hour.
    pub ban: Duration,
    /// Deadline of connecting to a peer.
    pub connect_timeout: Duration,
    /// Most bytes per second served to one peer in one session (`None`: unbounded).
    pub serve_bytes_per_sec: Option<u64>,
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            interval: Duration::from_millis(500),
            fanout: 3,
            sync: SyncConfig::default(),
            ban: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
            serve_bytes_per_sec: Some(256 << 20),
        }
    }
}

/// What one session moved, for tests, benches and status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionReport {
    /// Events stored from the peer.
    pub stored: u64,
    /// Events served to the peer.
    pub served: u64,
    /// Record bytes served.
    pub served_record_bytes: u64,
    /// Frame bytes written (records, framing and every other message).
    pub bytes_written: u64,
    /// Frame bytes read.
    pub bytes_read: u64,
}

/// What this node's gossip did since it started: counters the metrics read.
#[derive(Debug, Default)]
pub struct GossipStats {
    /// Sessions that ran to their end, by outcome: completed, fork, violation, timed out.
    pub sessions: [std::sync::atomic::AtomicU64; 4],
    /// Events stored from peers.
    pub stored: std::sync::atomic::AtomicU64,
    /// Events served to peers.
    pub served: std::sync::atomic::AtomicU64,
    /// Frame bytes written to peers.
    pub bytes_written: std::sync::atomic::AtomicU64,
    /// Frame bytes read from peers.
    pub bytes_read: std::sync::atomic::AtomicU64,
    /// Peers penalised (banned) for bad data or broken protocol.
    pub bans: std::sync::atomic::AtomicU64,
}

impl GossipStats {
    /// The outcome labels, in the order of [`GossipStats::sessions`].
    pub const OUTCOMES: [&'static str; 4] = ["completed", "fork", "violation", "timed_out"];

    fn session(&self, outcome: &crate::core::gossip::SessionOutcome, report: &SessionReport) {
        use std::sync::atomic::Ordering::Relaxed;
        let i = match outcome {
            crate::core::gossip::SessionOutcome::Completed => 0,
            crate::core::gossip::SessionOutcome::Fork(_) => 1,
            crate::core::gossip::SessionOutcome::Violation(_) => 2,
            crate::core::gossip::SessionOutcome::TimedOut => 3,
        };
        self.sessions[i].fetch_add(1, Relaxed);
        self.stored.fetch_add(report.stored, Relaxed);
        self.served.fetch_add(report.served, Relaxed);
        self.bytes_written.fetch_add(report.bytes_written, Relaxed);
        self.bytes_read.fetch_add(report.bytes_read, Relaxed);
    }
}

/// The gossip side of one node: serves its ledger to peers and, unless Raft writes its ledger
/// (a voter or learner), pulls missing ranges from them.
pub struct GossipService {
    me: PeerNode,
    ledger: SharedLedger,
    cfg: GossipConfig,
    /// Whether this node may store ranges from gossip (a latent node: not a Raft member).
    may_pull: Box<dyn Fn() -> bool + Send + Sync>,
    /// Whether this node is a Raft member (its chain is Primary).
    is_member: Box<dyn Fn() -> bool + Send + Sync>,
    last_primary_sync: Mutex<Option<Instant>>,
    fork_holders: Mutex<HashMap<(u64, ChainHash), Vec<NodeId>>>,
    pulling: tokio::sync::Mutex<()>,
    peers: Mutex<HashMap<NodeId, PeerState>>,
    learned: Mutex<Vec<PeerAddr>>,
    bootstrap: Mutex<Vec<PeerNode>>,
    cache: Mutex<VerifierCache>,
    last_sync: Mutex<Option<Instant>>,
    /// Called after each stored range (head subscribers are told).
    on_stored: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
    /// Ids of provisional events known to be committed (bounded, oldest forgotten first).
    committed: Mutex<(HashSet<EventId>, VecDeque<EventId>)>,
    /// Counters for the metrics.
    stats: GossipStats,
}

impl std::fmt::Debug for GossipService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipService").field("me", &self.me).finish_non_exhaustive()
    }
}

impl GossipService {
    /// A service for node `me` over `ledger`. `may_pull` says, at each session, whether this
    /// node stores ranges from peers; `is_member`, whether Raft writes its chain.
    pub fn new(
        me: PeerNode,
        ledger: SharedLedger,
        cfg: GossipConfig,
        may_pull: impl Fn() -> bool + Send + Sync + 'static,
        is_member: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        GossipService {
            me,
            ledger,
            cfg,
            may_pull: Box::new(may_pull),
            is_member: Box::new(is_member),
            last_primary_sync: Mutex::new(None),
            fork_holders: Mutex::new(HashMap::new()),
            pulling: tokio::sync::Mutex::new(()),
            peers: Mutex::new(HashMap::new()),
            learned: Mutex::new(Vec::new()),
            bootstrap: Mutex::new(Vec::new()),
            cache: Mutex::new(VerifierCache::default()),
            last_sync: Mutex::new(None),
            on_stored: Mutex::new(None),
            committed: Mutex::new((HashSet::new(), VecDeque::new())),
            stats: GossipStats::default(),
        }
    }

    /// What this node's gossip did since it started.
    pub fn stats(&self) -> &GossipStats {
        &self.stats
    }

    /// Calls `f` after each range this service stores (outside the ledger lock).
    pub fn on_stored(&self, f: Arc<dyn Fn() + Send + Sync>) {
        *sync::lock(&self.on_stored) = Some(f);
    }
}
