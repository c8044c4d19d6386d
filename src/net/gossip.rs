//! The latent tier's I/O: the session runner over any byte stream (a QUIC stream under ALPN
//! [`ALPN_GOSSIP`] in the product), and the gossip driver that syncs with a few random peers
//! every interval. The frames are [`crate::wire::gossip`]'s.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::core::provisional::{EventId, ProvisionalError, ProvisionalEvent};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::Instrument;

use super::{BoxFuture, TransportError};
use crate::core::event::ChainedEvent;
use crate::core::gossip::{
    Digest, ForkEvidence, LinkedRange, LocalView, PeerAddr, SessionEvent, SessionOutcome, SyncConfig, SyncSession,
    Violation,
};
use crate::core::keys::{verify_many, VerifierCache};
use crate::core::limits;
use crate::core::types::{ChainHash, ChainPoint, NodeId};
use crate::error::LedgerError;
use crate::raft::state_machine::SharedLedger;
use crate::store::record;
use crate::wire::gossip::{decode_frame_with_records, encode_frame, encode_range_frame, RawRange, RecordFormat};
use crate::wire::rpc::PeerNode;

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

/// Most forks whose holders a node remembers, and most holders per fork.
const FORK_HOLDERS_MAX: usize = 16;

/// Most ids of committed provisional events a node remembers (to not hold them again).
const COMMITTED_IDS_MAX: usize = 4096;

/// Why a frame could not be read.
#[derive(Debug)]
enum ReadError {
    /// The peer sent something no honest peer sends: an oversized length, or a frame cut off
    /// by the end of its stream.
    Bad(String),
    /// The stream or connection failed (a network problem, not the peer's content).
    Io(String),
}

/// Reads one frame body; `Ok(None)` at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, ReadError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(ReadError::Bad(format!("stream ended inside a length prefix ({got} of 4 bytes)"))),
            Ok(n) => got += n,
            Err(e) => return Err(ReadError::Io(e.to_string())),
        }
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > limits::GOSSIP_FRAME_BYTES_MAX {
        return Err(ReadError::Bad(format!(
            "frame of {n} bytes exceeds the {}-byte limit",
            limits::GOSSIP_FRAME_BYTES_MAX
        )));
    }
    // Grow with the data actually received: a length prefix alone never allocates much.
    let mut buf = Vec::with_capacity(n.min(64 * 1024));
    let got = r.take(n as u64).read_to_end(&mut buf).await.map_err(|e| ReadError::Io(e.to_string()))?;
    if got != n {
        return Err(ReadError::Bad(format!("stream ended after {got} of {n} bytes of a frame")));
    }
    Ok(Some(buf))
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
}

#[derive(Default)]
struct PeerState {
    banned_until: Option<Instant>,
    strikes: u32,
    last_outcome: Option<String>,
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
        }
    }

    /// Calls `f` after each range this service stores (outside the ledger lock).
    pub fn on_stored(&self, f: Arc<dyn Fn() + Send + Sync>) {
        *self.on_stored.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    /// Adds peers to contact even before the registry knows them (the bootstrap peers).
    pub fn add_bootstrap(&self, peers: impl IntoIterator<Item = PeerNode>) {
        let mut b = self.bootstrap.lock().unwrap_or_else(|p| p.into_inner());
        for p in peers {
            if p.node != self.me.node && !b.contains(&p) {
                b.push(p);
            }
        }
    }

    /// The bootstrap peers (given before the registry names any).
    pub fn bootstrap_peers(&self) -> Vec<PeerNode> {
        self.bootstrap.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How long ago a session with a peer last completed (`None`: never).
    pub fn last_sync_age(&self) -> Option<Duration> {
        self.last_sync.lock().unwrap_or_else(|p| p.into_inner()).map(|t| t.elapsed())
    }

    /// How long ago a session with a Raft member (the Primary tier) last completed.
    pub fn last_primary_sync_age(&self) -> Option<Duration> {
        self.last_primary_sync.lock().unwrap_or_else(|p| p.into_inner()).map(|t| t.elapsed())
    }

    /// Whether this latent node is in touch with the Primary tier: a session with a Raft
    /// member completed within a few gossip intervals.
    pub fn primary_reachable(&self) -> bool {
        self.last_primary_sync_age().is_some_and(|a| a <= self.cfg.interval * 6 + self.cfg.connect_timeout)
    }

    /// Whether `peer` is banned now.
    pub fn is_banned(&self, peer: &NodeId) -> bool {
        let now = Instant::now();
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .and_then(|s| s.banned_until)
            .is_some_and(|t| t > now)
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
        out.extend(self.bootstrap.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned());
        out.extend(
            self.learned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|p| PeerNode { node: p.node, addr: p.addr.clone() }),
        );
        out.retain(|p| p.node != self.me.node);
        out.sort_by_key(|p| p.node);
        out.dedup_by(|a, b| a.node == b.node);
        out
    }

    fn local_view(&self, pull: bool) -> Result<LocalView, LedgerError> {
        // `candidates` takes the ledger's read lock itself: it runs before this function takes
        // it. A second read lock on the same thread deadlocks as soon as a writer (Raft's
        // apply, a gossip store) queues between the two, since the lock prefers writers.
        let mut known = self.candidates();
        known.shuffle(&mut rand::rng());
        let mut peers: Vec<PeerAddr> = vec![PeerAddr { node: self.me.node, addr: self.me.addr.clone() }];
        peers.extend(
            known.into_iter().take(limits::GOSSIP_PEERS_MAX - 1).map(|p| PeerAddr { node: p.node, addr: p.addr }),
        );
        let l = self.ledger.read().map_err(|_| LedgerError::Poisoned(std::path::PathBuf::from("<ledger lock>")))?;
        let head = match l.head() {
            Some(h) => l.get(h.seq)?,
            None => None,
        };
        // A ledger loaded from a state-only seed knows its head's hash before it holds the event.
        let head_point = l.head().map(|h| ChainPoint { seq: h.seq, hash: h.hash });
        let provisional = crate::store::provisional::list(&l, limits::GOSSIP_PROVISIONAL_MAX).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read held provisional events");
            Vec::new()
        });
        let forks = crate::store::forks::unresolved(&l).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read fork evidence");
            Vec::new()
        });
        let forks = forks.into_iter().rev().take(limits::GOSSIP_FORKS_MAX).collect();
        Ok(LocalView {
            fingerprint: l.fingerprint(),
            head,
            head_point,
            backfill: l.backfill_point(),
            anchor: l.anchor(),
            peers,
            pull,
            primary: (self.is_member)(),
            provisional,
            forks,
        })
    }

    fn learn(&self, digest: &Digest) {
        let mut learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
        for p in &digest.peers {
            if p.node != self.me.node && !learned.iter().any(|q| q.node == p.node) {
                learned.push(p.clone());
            }
        }
        // Bounded: keep the newest.
        let excess = learned.len().saturating_sub(4 * limits::GOSSIP_PEERS_MAX);
        learned.drain(..excess);
    }

    fn penalise(&self, peer: &NodeId, why: &str) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let s = peers.entry(*peer).or_default();
        s.strikes = s.strikes.saturating_add(1);
        let ban = self.cfg.ban.saturating_mul(1u32 << (s.strikes - 1).min(7)).min(Duration::from_secs(3600));
        s.banned_until = Some(Instant::now() + ban);
        s.last_outcome = Some(why.to_string());
        tracing::warn!(peer = %peer.short(), reason = why, ban_secs = ban.as_secs(), "gossip peer penalised");
    }

    /// Notes that the event `id` is in the chain (committed): it is not held again when a
    /// peer that has not caught up hands it over once more.
    pub fn note_committed(&self, id: EventId) {
        let mut c = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        if c.0.insert(id) {
            c.1.push_back(id);
            if c.1.len() > COMMITTED_IDS_MAX {
                if let Some(old) = c.1.pop_front() {
                    c.0.remove(&old);
                }
            }
        }
    }

    fn known_committed(&self, id: &EventId) -> bool {
        self.committed.lock().unwrap_or_else(|p| p.into_inner()).0.contains(id)
    }

    /// Keeps the provisional events that check (statement and event signed by the author,
    /// this network, within the size limit) and that are neither held already nor in the
    /// chain since their statement's point; returns how many checked.
    pub fn hold_provisional(&self, list: &[ProvisionalEvent]) -> usize {
        let Ok(l) = self.ledger.read() else { return 0 };
        let fp = l.fingerprint();
        let head = l.head().map(|h| h.seq);
        let mut ok = 0;
        for p in list {
            let id = p.id();
            if self.known_committed(&id) || crate::store::provisional::contains(&l, &id).unwrap_or(false) {
                ok += 1;
                continue;
            }
            let event_ok = fp == Some(p.event.fingerprint)
                && p.event.encoded_len() <= limits::EVENT_BYTES_MAX
                && p.verify_statement().is_ok()
                && {
                    let m = p.event.signing_message();
                    let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                    verify_many(&mut cache, &[(p.event.author, m.as_slice(), p.event.signature)]).first() == Some(&true)
                };
            if !event_ok {
                continue;
            }
            ok += 1;
            match p.scan_range(head) {
                // Too old for any committer: its author re-issues it.
                Err(ProvisionalError::TooOld { .. }) => continue,
                // Our chain lags the statement: keep it, a committer decides.
                Err(_) | Ok(None) => {}
                Ok(Some((from, to))) => match crate::store::provisional::find_committed(&l, p, from, to) {
                    Ok(Some(_)) => {
                        self.note_committed(id);
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the chain to check a provisional event");
                        continue;
                    }
                },
            }
            match crate::store::provisional::put(&l, p) {
                Ok(true) => {
                    tracing::info!(id = %id.short(), author = %p.event.author.short(), kind = p.event.body.kind(), "holding a provisional event")
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot hold a provisional event"),
            }
        }
        ok
    }

    /// Nodes seen holding the other side of a fork at `seq` whose event there hashes to
    /// `hash` (bounded; in memory only: gossip finds them again after a restart).
    pub fn fork_holders(&self, seq: u64, hash: &ChainHash) -> Vec<NodeId> {
        self.fork_holders.lock().unwrap_or_else(|p| p.into_inner()).get(&(seq, *hash)).cloned().unwrap_or_default()
    }

    /// Checks fork evidence that came from `peer` (links, network, both signatures), orients
    /// it so `ours` is the event of our own chain when we hold one of the two, records it and
    /// notes which side `peer` holds.
    fn record_fork_from(&self, evidence: &ForkEvidence, peer: NodeId) -> bool {
        if evidence.check().is_err() {
            return false;
        }
        let mine = match self.ledger.read() {
            Ok(l) => l.get(evidence.seq()).ok().flatten().map(|e| e.hash),
            Err(_) => return false,
        };
        let Some(mine) = mine else {
            // A node whose chain does not reach the fork (no chain yet, or a shorter one, as a
            // node that just yielded a split-brain and is catching up) is on neither side yet:
            // which event is ours is unknown, and a guess stored now would name our own event
            // as the other chain's once the chain grows, sending the resolver after a fork
            // between our chain and itself for good. It learns of the fork again once its
            // chain reaches it, if it is still unsettled.
            return true;
        };
        let mut e = evidence.clone();
        if mine == e.theirs.hash {
            std::mem::swap(&mut e.ours, &mut e.theirs);
        }
        if self.fingerprint_is_other(&e) || !self.record_fork(&e) {
            return false;
        }
        // The peer holds the side that is not ours, unless it handed over evidence of a fork
        // it is not part of; either way it knows where `theirs` can be found.
        let mut holders = self.fork_holders.lock().unwrap_or_else(|p| p.into_inner());
        if holders.len() < FORK_HOLDERS_MAX || holders.contains_key(&(e.seq(), e.theirs.hash)) {
            let list = holders.entry((e.seq(), e.theirs.hash)).or_default();
            if !list.contains(&peer) && list.len() < FORK_HOLDERS_MAX {
                list.push(peer);
            }
        }
        true
    }

    /// Whether evidence belongs to a network other than ours (evidence about another
    /// network is not ours to keep).
    fn fingerprint_is_other(&self, e: &ForkEvidence) -> bool {
        let ours = self.ledger.read().ok().and_then(|l| l.fingerprint());
        ours.is_some_and(|f| f != e.ours.event.fingerprint)
    }

    /// Checks both signatures of fork evidence and records it in the ledger.
    fn record_fork(&self, evidence: &ForkEvidence) -> bool {
        if evidence.check().is_err() {
            return false;
        }
        let msgs = [evidence.ours.event.signing_message(), evidence.theirs.event.signing_message()];
        let items = [
            (evidence.ours.event.author, msgs[0].as_slice(), evidence.ours.event.signature),
            (evidence.theirs.event.author, msgs[1].as_slice(), evidence.theirs.event.signature),
        ];
        let ok = verify_many(&mut self.cache.lock().unwrap_or_else(|p| p.into_inner()), &items);
        if ok.iter().any(|v| !v) {
            return false;
        }
        match self.ledger.read().map(|l| crate::store::forks::record(&l, evidence)) {
            Ok(Ok(new)) => {
                if new {
                    tracing::error!(seq = evidence.seq(), ours = %evidence.ours.hash.short(), theirs = %evidence.theirs.hash.short(),
                        "FORK: a peer holds a different chain of this network; evidence stored");
                }
                true
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not store fork evidence");
                false
            }
            Err(_) => false,
        }
    }

    /// Runs one session on `stream` to its end. `initiator` only affects logging.
    pub async fn run_session(&self, stream: GossipStream, initiator: bool) -> (SessionOutcome, SessionReport) {
        let peer = stream.peer;
        let span = tracing::info_span!("gossip_session", peer = %peer.short(), initiator);
        self.session_inner(stream).instrument(span).await
    }

    async fn session_inner(&self, stream: GossipStream) -> (SessionOutcome, SessionReport) {
        let peer = stream.peer;
        let GossipStream { mut send, mut recv, .. } = stream;
        let mut report = SessionReport::default();
        let pull_guard = if (self.may_pull)() { self.pulling.try_lock().ok() } else { None };
        let view = match self.local_view(pull_guard.is_some()) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the ledger for a gossip session");
                return (SessionOutcome::Violation(Violation::Refused(e.to_string())), report);
            }
        };
        let mut session = SyncSession::new(self.cfg.sync.clone(), view, Instant::now());
        // Frames are read by their own task: reading is not cancel-safe inside `select!`.
        let (frames_tx, mut frames_rx) = tokio::sync::mpsc::channel::<Result<Option<Vec<u8>>, ReadError>>(2);
        let reader = tokio::spawn(async move {
            loop {
                let r = read_frame(&mut recv).await;
                let end = !matches!(r, Ok(Some(_)));
                if frames_tx.send(r).await.is_err() || end {
                    break;
                }
            }
        });
        // Ranges are stored in order by one blocking worker, while the session goes on reading.
        let (store_tx, store_rx) = std::sync::mpsc::channel::<StoreJob>();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<u64, String>>();
        let worker_ledger = self.ledger.clone();
        let notify = self.on_stored.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // Two stages: one verifies a range's signatures (on all cores) while the other stores
        // the range before it under the ledger lock.
        let (verified_tx, verified_rx) = std::sync::mpsc::sync_channel::<(StoreJob, Vec<bool>)>(1);
        let verifier = tokio::task::spawn_blocking(move || {
            for job in store_rx {
                let verdicts = match &job {
                    StoreJob::Forward(range) => crate::store::ledger::verify_linked_signatures(range),
                    StoreJob::Backward(range) => crate::store::ledger::verify_signatures(range.events()),
                };
                if verified_tx.send((job, verdicts)).is_err() {
                    break;
                }
            }
        });
        let worker = tokio::task::spawn_blocking(move || {
            let mut committed = Vec::new();
            for (job, verdicts) in verified_rx {
                let result = match &job {
                    StoreJob::Forward(range) => store_range(&worker_ledger, range, &verdicts, &mut committed),
                    StoreJob::Backward(range) => store_backfill(&worker_ledger, range, &verdicts),
                };
                if let (Ok(_), Some(f)) = (&result, &notify) {
                    f();
                }
                if done_tx.send(result).is_err() {
                    break;
                }
            }
            committed
        });
        let mut pending_stores = 0usize;
        let mut hello_seen = false;
        let mut eof = false;
        let started = Instant::now();
        let outcome = loop {
            // Act on what the session decided.
            let mut finished = None;
            while let Some(ev) = session.poll_event() {
                match ev {
                    SessionEvent::Store(range) => {
                        pending_stores += 1;
                        if store_tx.send(StoreJob::Forward(range)).is_err() {
                            pending_stores -= 1;
                            session.store_failed("the store worker stopped".into());
                        }
                    }
                    SessionEvent::Backfill(range) => {
                        pending_stores += 1;
                        if store_tx.send(StoreJob::Backward(range)).is_err() {
                            pending_stores -= 1;
                            session.store_failed("the store worker stopped".into());
                        }
                    }
                    SessionEvent::Serve { from, max_events } => {
                        let ledger = self.ledger.clone();
                        let records = tokio::task::spawn_blocking(move || read_batch(&ledger, from, max_events)).await;
                        let records = match records {
                            Ok(Ok(r)) => r,
                            Ok(Err(e)) => {
                                tracing::warn!(error = %e, "cannot serve a gossip range");
                                Vec::new()
                            }
                            Err(_) => Vec::new(),
                        };
                        report.served += records.len() as u64;
                        report.served_record_bytes += records.iter().map(|r| r.len() as u64).sum::<u64>();
                        let frame = encode_range_frame(RawRange(&records));
                        // Bounded bandwidth per peer: hold the range back until the session's
                        // average stays within the budget.
                        if let Some(rate) = self.cfg.serve_bytes_per_sec.filter(|r| *r > 0) {
                            let due = Duration::from_secs_f64(
                                (report.bytes_written + frame.len() as u64) as f64 / rate as f64,
                            );
                            if let Some(wait) = due.checked_sub(started.elapsed()) {
                                tokio::time::sleep(wait).await;
                            }
                        }
                        if let Err(e) = send.write_all(&frame).await {
                            tracing::debug!(error = %e, "peer went away");
                            break;
                        }
                        report.bytes_written += frame.len() as u64;
                    }
                    SessionEvent::Provisional(list) => {
                        let held = self.hold_provisional(&list);
                        if held < list.len() {
                            self.penalise(&peer, "handed over provisional events that do not check");
                        }
                    }
                    SessionEvent::Forks(list) => {
                        for evidence in list {
                            if self.record_fork_from(&evidence, peer) {
                                continue;
                            }
                            self.penalise(&peer, "handed over fork evidence that does not check");
                            break;
                        }
                    }
                    SessionEvent::Finished(o) => finished = Some(o),
                }
            }
            while let Some(m) = session.poll_transmit() {
                let frame = encode_frame::<LedgerRecords>(&m);
                if send.write_all(&frame).await.is_err() {
                    break;
                }
                report.bytes_written += frame.len() as u64;
            }
            if let Some(o) = finished {
                // Let the stores already handed out finish: they are verified ranges.
                while pending_stores > 0 {
                    pending_stores -= 1;
                    match done_rx.recv().await {
                        Some(Ok(n)) => report.stored += n,
                        Some(Err(_)) => {}
                        None => break,
                    }
                }
                break o;
            }
            if eof && pending_stores == 0 {
                // The peer is gone and nothing of ours is pending: the session cannot go on.
                break SessionOutcome::TimedOut;
            }
            if !hello_seen {
                if let Some(d) = session.peer_digest() {
                    hello_seen = true;
                    self.learn(d);
                }
            }
            let deadline = session.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                frame = frames_rx.recv(), if !eof => match frame {
                    Some(Ok(Some(bytes))) => match decode_frame_with_records::<LedgerRecords>(bytes) {
                        Ok((m, records)) => session.handle_with_records(m, records, Instant::now()),
                        Err(e) => session.handle_bad_frame(e.to_string()),
                    },
                    // The peer finished (or the stream broke): finish storing what it sent.
                    Some(Ok(None)) | None => eof = true,
                    Some(Err(ReadError::Bad(reason))) => {
                        session.handle_bad_frame(reason);
                        eof = true;
                    }
                    Some(Err(ReadError::Io(e))) => {
                        tracing::debug!(error = %e, "gossip stream failed");
                        eof = true;
                    }
                },
                done = done_rx.recv(), if pending_stores > 0 => {
                    pending_stores -= 1;
                    match done {
                        Some(Ok(n)) => {
                            report.stored += n;
                            session.stored();
                        }
                        Some(Err(e)) => session.store_failed(e),
                        None => session.store_failed("the store worker stopped".into()),
                    }
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)) => session.handle_timeout(Instant::now()),
            }
        };
        // Finish our side, then wait (bounded) for the peer to finish its own, so the last
        // frames both ways are delivered before the connection goes.
        let peer_primary = session.peer_digest().is_some_and(|d| d.primary);
        let _ = send.shutdown().await;
        if !eof {
            let drain = async { while let Some(Ok(Some(_))) = frames_rx.recv().await {} };
            let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        }
        reader.abort();
        drop(store_tx);
        let _ = verifier.await;
        if let Ok(ids) = worker.await {
            for id in ids {
                self.note_committed(id);
            }
        }
        drop(pull_guard);
        match &outcome {
            SessionOutcome::Completed => {
                *self.last_sync.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                if peer_primary {
                    *self.last_primary_sync.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                }
            }
            SessionOutcome::TimedOut => {}
            SessionOutcome::Violation(v) => self.penalise(&peer, &v.to_string()),
            SessionOutcome::Fork(ev) => {
                if self.record_fork_from(ev, peer) {
                    self.penalise(&peer, "holds a forked chain");
                } else {
                    self.penalise(&peer, "sent false fork evidence");
                }
            }
        }
        tracing::debug!(?outcome, stored = report.stored, served = report.served, "gossip session ended");
        (outcome, report)
    }

    /// One gossip round: sessions with up to `fanout` random candidates, concurrently.
    pub async fn round(
        self: &Arc<Self>,
        dialer: &Arc<dyn GossipDialer>,
    ) -> Vec<(NodeId, SessionOutcome, SessionReport)> {
        let mut peers = self.candidates();
        peers.shuffle(&mut rand::rng());
        peers.truncate(self.cfg.fanout);
        let mut tasks = tokio::task::JoinSet::new();
        for p in peers {
            let svc = self.clone();
            let dialer = dialer.clone();
            let timeout = self.cfg.connect_timeout;
            tasks.spawn(async move {
                match tokio::time::timeout(timeout, dialer.open_gossip(&p)).await {
                    Ok(Ok(stream)) => {
                        let (o, r) = svc.run_session(stream, true).await;
                        Some((p.node, o, r))
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %p.node.short(), error = %e, "gossip peer unreachable");
                        None
                    }
                    Err(_) => None,
                }
            });
        }
        let mut out = Vec::new();
        while let Some(r) = tasks.join_next().await {
            if let Ok(Some(x)) = r {
                out.push(x);
            }
        }
        out
    }

    /// Runs rounds every interval until the returned handle is aborted.
    pub fn spawn_driver(self: &Arc<Self>, dialer: Arc<dyn GossipDialer>) -> tokio::task::JoinHandle<()> {
        let svc = self.clone();
        let span = tracing::info_span!("gossip_driver", node = %self.me.node.short());
        tokio::spawn(
            async move {
                let mut tick = tokio::time::interval(svc.cfg.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    svc.round(&dialer).await;
                }
            }
            .instrument(span),
        )
    }
}

impl GossipAcceptor for GossipService {
    fn accept_gossip(&self, stream: GossipStream) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.is_banned(&stream.peer) {
                tracing::debug!(peer = %stream.peer.short(), "refusing a banned gossip peer");
                return;
            }
            self.run_session(stream, false).await;
        })
    }
}

/// Stores a verified range; the ids of held provisional events it commits go to `committed`.
fn store_range(
    ledger: &SharedLedger,
    range: &LinkedRange,
    verdicts: &[bool],
    committed: &mut Vec<EventId>,
) -> Result<u64, String> {
    let mut l = ledger.write().map_err(|_| "ledger lock poisoned".to_string())?;
    // A node filled by gossip is not Raft's: if it later joins Raft, Raft starts over.
    if l.head().is_none() {
        l.set_imported(true).map_err(|e| e.to_string())?;
    }
    l.append_linked_verified(range, verdicts).map_err(|e| e.to_string())?;
    // Provisional events that are now in the chain are no longer provisional.
    match crate::store::provisional::forget_committed(&l, range.events()) {
        Ok(ids) => committed.extend(ids),
        Err(e) => tracing::warn!(error = %e, "cannot update the held provisional events"),
    }
    Ok(range.len() as u64)
}

/// A verified range for the store worker: one that extends the head, or one of the history
/// below what the ledger holds.
enum StoreJob {
    Forward(LinkedRange),
    Backward(crate::core::gossip::BackfillRange),
}

/// Stores a verified range of the history below what the ledger holds.
fn store_backfill(
    ledger: &SharedLedger,
    range: &crate::core::gossip::BackfillRange,
    verdicts: &[bool],
) -> Result<u64, String> {
    let mut l = ledger.write().map_err(|_| "ledger lock poisoned".to_string())?;
    l.append_backfill(range, verdicts).map_err(|e| e.to_string())?;
    Ok(range.len() as u64)
}

fn read_batch(ledger: &SharedLedger, from: u64, max_events: u32) -> Result<Vec<Vec<u8>>, LedgerError> {
    let l = ledger.read().map_err(|_| LedgerError::Poisoned(std::path::PathBuf::from("<ledger lock>")))?;
    l.read_raw_batch(from, max_events as usize, limits::GOSSIP_BATCH_BYTES_MAX)
}
