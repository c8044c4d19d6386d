//! Latent-spore range sync, sans-IO.
//!
//! Two peers reconcile their chains in one [`SyncSession`] each: both send a [`Digest`]
//! (network, head, latest anchor), each side that is behind asks for the events it lacks in
//! bounded batches ([`GossipMessage::Request`]), and every batch it receives is checked **link
//! by link** — contiguous sequence numbers, each `prev_hash` equal to the hash before it, each
//! hash recomputed from the canonical bytes, the right network — before the session hands it to
//! the adapter to store ([`SessionEvent::Store`]). Signatures and the admission rules are checked
//! by the ledger when it stores the range, atomically (see `Ledger::append_range`).
//!
//! The session does no I/O and never reads the clock: messages and time go in (`handle`,
//! `handle_timeout`, `stored`), messages and actions come out (`poll_transmit`, `poll_event`,
//! `poll_timeout`). The QUIC driver (`net::gossip`) moves the bytes; the simulation tests run
//! the same session over an in-process lossy network.
//!
//! **Fork evidence.** The first request of a session overlaps our head by one event. If the
//! peer's event at that sequence number is a different, properly linked event, the two form a
//! [`ForkEvidence`]: proof that two chains of this network exist. Nothing of that peer's range
//! is stored.
//!
//! **Backfill.** A ledger loaded from a state-only seed holds the seed's projection and head
//! but none of the events below it: it knows the head's hash only. A pulling session then also
//! asks, once it has nothing to fetch forward, for the history below the lowest point it
//! knows ([`LocalView::backfill`]), **backwards**: each [`BackfillRange`] must end exactly at
//! that point and every event in it must be the `prev_hash` of the one after it
//! ([`verify_backward`]), so the seed's signed head hash vouches for every event below it.
//! The next range ends at the first one's `prev_hash`, down to genesis.
//!
//! **Resumption.** A session asks for one batch at a time and asks for the next as soon as the
//! previous one verified, so a dropped connection loses at most the batch in flight: the next
//! session starts from what was stored.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::event::{chain_hash, ChainedEvent};
use super::limits;
use super::types::{ChainHash, ChainPoint, NetworkFingerprint, NodeId, SporeType};

/// What a node tells a gossip peer about its chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// The network (`None` while the node holds nothing yet).
    pub fingerprint: Option<NetworkFingerprint>,
    /// The head of its chain.
    pub head: Option<ChainPoint>,
    /// Its newest anchor: the latest voter-signed checkpoint event it holds.
    pub anchor: Option<ChainPoint>,
    /// A few gossip peers it knows (at most [`limits::GOSSIP_PEERS_MAX`]).
    pub peers: Vec<PeerAddr>,
    /// Whether the sender's chain is written by Raft (it is a voter or learner): a session
    /// with it is contact with the Primary tier.
    pub primary: bool,
}

/// A gossip peer: its key and where to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerAddr {
    /// Its node id (= ed25519 key; the QUIC handshake proves it).
    pub node: NodeId,
    /// Its QUIC address (`host:port`).
    pub addr: String,
}

/// One message of the sync protocol (its wire form is in `net::gossip`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GossipMessage {
    /// The sender's digest; the first message each side sends.
    Hello(Digest),
    /// Send me at most `max_events` events starting at `from`.
    Request {
        /// First sequence number wanted.
        from: u64,
        /// At most this many.
        max_events: u32,
    },
    /// The answer to the outstanding request: events `from..`, possibly fewer than asked
    /// (bounded by bytes) and empty if the sender has nothing from there.
    Range(Vec<ChainedEvent>),
    /// The sender needs nothing more from us.
    Bye,
    /// Provisional events the sender holds (at most [`limits::GOSSIP_PROVISIONAL_MAX`]),
    /// sent once after the hello.
    Provisional(Vec<super::provisional::ProvisionalEvent>),
    /// Fork evidence the sender holds or just found (at most [`limits::GOSSIP_FORKS_MAX`]):
    /// proof that a second chain of this network exists. Sent once after the hello, and
    /// when a session finds a fork.
    Forks(Vec<ForkEvidence>),
}

impl GossipMessage {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GossipMessage::Hello(_) => "hello",
            GossipMessage::Request { .. } => "request",
            GossipMessage::Range(_) => "range",
            GossipMessage::Bye => "bye",
            GossipMessage::Provisional(_) => "provisional",
            GossipMessage::Forks(_) => "forks",
        }
    }
}

/// Tuning of a session.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Events asked for per request (clipped to [`limits::GOSSIP_BATCH_EVENTS_MAX`]).
    pub batch_events: u32,
    /// A session with no message for this long ends ([`SessionOutcome::TimedOut`]).
    pub idle_timeout: Duration,
    /// Verified batches the adapter may hold unstored before the session stops asking.
    pub max_unstored: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig { batch_events: 1024, idle_timeout: Duration::from_secs(10), max_unstored: 2 }
    }
}

/// What the local node holds, as a session starts.
#[derive(Clone, Debug, Default)]
pub struct LocalView {
    /// Our network, or the one we expect (a fresh node configured for a network).
    pub fingerprint: Option<NetworkFingerprint>,
    /// Our head event (`None` while empty); the first request overlaps it to detect forks.
    pub head: Option<ChainedEvent>,
    /// Our newest anchor.
    pub anchor: Option<ChainPoint>,
    /// Peers to advertise.
    pub peers: Vec<PeerAddr>,
    /// Whether this node's chain is written by Raft (see [`Digest::primary`]).
    pub primary: bool,
    /// Provisional events to hand to the peer (at most [`limits::GOSSIP_PROVISIONAL_MAX`]).
    pub provisional: Vec<super::provisional::ProvisionalEvent>,
    /// Fork evidence to hand to the peer (at most [`limits::GOSSIP_FORKS_MAX`]).
    pub forks: Vec<ForkEvidence>,
    /// The point the next backfilled range must end at: the lowest event whose hash we know
    /// but whose history below we do not hold (`None`: the history is complete). Only a
    /// pulling session backfills.
    pub backfill: Option<ChainPoint>,
    /// Our head when we do not hold its event (a ledger loaded from a state-only seed, before
    /// anything was backfilled): ranges must link to it. Ignored when `head` is set.
    pub head_point: Option<ChainPoint>,
    /// Whether this session may fetch and store ranges. A node pulls in one session at a
    /// time (ranges must be stored in order); its other sessions, and every session of a Raft
    /// member (whose chain Raft writes), only serve.
    pub pull: bool,
}

/// Why a peer's message was refused. Every violation ends the session and penalises the peer;
/// nothing of the offending message is stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The peer belongs to another network.
    #[error("peer is on network {theirs}, we are on {ours}")]
    WrongNetwork {
        /// Ours.
        ours: NetworkFingerprint,
        /// Theirs.
        theirs: NetworkFingerprint,
    },
    /// A message out of protocol order (a second hello, a request before hello, …).
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// A range nobody asked for (or a replayed one).
    #[error("unrequested range of {0} events")]
    Unrequested(usize),
    /// More events than asked for.
    #[error("range of {got} events, asked for at most {asked}")]
    TooLong {
        /// Asked.
        asked: u32,
        /// Got.
        got: usize,
    },
    /// The range does not start where asked.
    #[error("range starts at {got}, asked from {asked}")]
    StartMismatch {
        /// Asked.
        asked: u64,
        /// Got.
        got: u64,
    },
    /// An event is not the next link: wrong sequence number or `prev_hash`.
    #[error("broken link at seq {seq}")]
    BrokenLink {
        /// Where.
        seq: u64,
    },
    /// An event's stored hash is not the hash of its content.
    #[error("bad chain hash at seq {seq}")]
    BadHash {
        /// Where.
        seq: u64,
    },
    /// An event signed for another network.
    #[error("event of another network at seq {seq}")]
    ForeignEvent {
        /// Where.
        seq: u64,
    },
    /// The ledger refused the (link-valid) range: a bad signature or a broken rule.
    #[error("range refused by the ledger: {0}")]
    Refused(String),
    /// A frame that could not be decoded or was over its size limit.
    #[error("bad frame: {0}")]
    BadFrame(String),
}

/// Two different chained events at the same sequence number, each properly linked (its hash
/// is the hash of its content after its `prev_hash`): proof that the network's chain forked at
/// or before `seq`. Signatures are checked by whoever stores the evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkEvidence {
    /// Our event at the fork.
    pub ours: ChainedEvent,
    /// The peer's event at the same sequence number.
    pub theirs: ChainedEvent,
}

impl ForkEvidence {
    /// The sequence number both events claim.
    pub fn seq(&self) -> u64 {
        self.ours.seq
    }

    /// Checks that this is real evidence: same sequence number, same network, each hash valid,
    /// different hashes.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.ours.seq != self.theirs.seq {
            return Err("the two events are at different sequence numbers");
        }
        if self.ours.event.fingerprint != self.theirs.event.fingerprint {
            return Err("the two events belong to different networks");
        }
        if self.ours.hash == self.theirs.hash {
            return Err("the two events are the same link");
        }
        if !self.ours.hash_is_valid() || !self.theirs.hash_is_valid() {
            return Err("an event's hash is not the hash of its content");
        }
        Ok(())
    }
}

/// A range whose links and hashes a session has checked: contiguous sequence numbers, each
/// `prev_hash` the hash before it, each hash the hash of its content, one network. Only this
/// module makes one, so a store may skip recomputing the hashes (it still verifies the
/// signatures and the rules, and that the range continues its head).
///
/// It keeps the canonical encoding of every event, computed once for the hash check, so the
/// signing messages and the size checks need not encode again, and, when the range arrived as
/// ledger records ([`RangeRecords`]), the record of every event, so the store keeps the bytes
/// it received instead of encoding them again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkedRange {
    events: Vec<ChainedEvent>,
    /// Canonical encodings of `events`, back to back.
    canonical: Vec<u8>,
    /// End offset of each event's encoding in `canonical`.
    ends: Vec<usize>,
    /// The ledger record of each event, if the range came as records.
    records: Option<RangeRecords>,
}

impl LinkedRange {
    /// The events.
    pub fn events(&self) -> &[ChainedEvent] {
        &self.events
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The events, owned.
    pub fn into_events(self) -> Vec<ChainedEvent> {
        self.events
    }

    /// The canonical encoding of the event at `i` (the bytes its hash was checked over).
    pub fn canonical(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.canonical.get(start..end)
    }

    /// The ledger record each event arrived as (one per event), if the range came as records.
    pub fn records(&self) -> Option<&RangeRecords> {
        self.records.as_ref()
    }
}

/// The ledger records a range arrived as, one per event: each the exact bytes that decoded,
/// through validated access, to its event, and checked there to be the canonical record
/// encoding of that event (`store::record::decode_record`). Only the crate's frame decoder
/// makes one, so a store may keep these bytes for the events they decoded to.
#[derive(Clone, PartialEq, Eq)]
pub struct RangeRecords {
    /// The bytes the records are slices of (the received frame).
    frame: Vec<u8>,
    /// Where each record is in `frame`.
    spans: Vec<std::ops::Range<usize>>,
}

impl std::fmt::Debug for RangeRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeRecords").field("records", &self.spans.len()).finish_non_exhaustive()
    }
}

impl RangeRecords {
    /// `spans` of `frame`, each the record an event of the range decoded from, in order.
    /// Spans outside the frame make the records unusable (`get` gives `None`).
    pub(crate) fn new(frame: Vec<u8>, spans: Vec<std::ops::Range<usize>>) -> Self {
        RangeRecords { frame, spans }
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The record at `i`.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.frame.get(self.spans.get(i)?.clone())
    }

    /// Without the first `n` records.
    fn skip(mut self, n: usize) -> Self {
        self.spans.drain(..n.min(self.spans.len()));
        self
    }
}

/// A range checked **backwards** from a known point (see [`verify_backward`]): its last event is
/// exactly the point, every earlier event is the `prev_hash` of the one after it, every hash
/// is the hash of its content, one network. Only this module makes one, so a store may trust
/// its links and hashes (it still verifies the signatures).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackfillRange {
    known: ChainPoint,
    events: Vec<ChainedEvent>,
}

impl BackfillRange {
    /// Checks `events` (ascending, non-empty) backwards from `known`, and that each belongs to
    /// `fingerprint`'s network when one is given.
    pub fn verify(
        known: ChainPoint,
        events: Vec<ChainedEvent>,
        fingerprint: Option<NetworkFingerprint>,
    ) -> Result<BackfillRange, Violation> {
        if events.is_empty() {
            return Err(Violation::Protocol("an empty backfill range"));
        }
        verify_backward(known, &events)?;
        if let Some(bad) = events.iter().find(|e| fingerprint.is_some_and(|f| f != e.event.fingerprint)) {
            return Err(Violation::ForeignEvent { seq: bad.seq });
        }
        Ok(BackfillRange { known, events })
    }

    /// The point the range ends at (its last event).
    pub fn known(&self) -> ChainPoint {
        self.known
    }

    /// The events, ascending.
    pub fn events(&self) -> &[ChainedEvent] {
        &self.events
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Always false: a backfill range has at least one event.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Where the next backfilled range must end: the first event's predecessor, or `None`
    /// when this range reaches genesis.
    pub fn next_point(&self) -> Option<ChainPoint> {
        let first = self.events.first()?;
        first.seq.checked_sub(1).map(|seq| ChainPoint { seq, hash: first.prev_hash })
    }
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionOutcome {
    /// Both sides have what the other had when the session started.
    Completed,
    /// The peer holds a different chain; the evidence is attached.
    Fork(Box<ForkEvidence>),
    /// The peer broke the protocol or sent bad data; penalise it.
    Violation(Violation),
    /// No message within the idle timeout.
    TimedOut,
}

/// What the adapter must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// Store this verified range (in order, after every earlier `Store`), then call
    /// [`SyncSession::stored`] — or [`SyncSession::store_failed`] if the ledger refuses it.
    Store(LinkedRange),
    /// Store this range below what the ledger holds (in order with every `Store`), then call
    /// [`SyncSession::stored`] — or [`SyncSession::store_failed`].
    Backfill(BackfillRange),
    /// The peer asks for stored events `from..`, at most `max_events` of them: send them as a
    /// [`GossipMessage::Range`] (fewer if they would exceed the frame budget; none if we have
    /// nothing from there).
    Serve {
        /// First sequence number.
        from: u64,
        /// At most this many.
        max_events: u32,
    },
    /// The peer handed over provisional events: check them (statement, signature, network)
    /// and keep the good ones until they are committed.
    Provisional(Vec<super::provisional::ProvisionalEvent>),
    /// The peer handed over fork evidence: check it (links, both signatures, network) and
    /// keep it.
    Forks(Vec<ForkEvidence>),
    /// The session is over; the adapter closes the stream after sending what is queued.
    Finished(SessionOutcome),
}

/// Counters of one session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Events received and verified.
    pub events_received: u64,
    /// Batches received.
    pub ranges_received: u64,
    /// Requests served.
    pub requests_served: u64,
}

/// One sync exchange with one peer. See the module doc.
#[derive(Debug)]
pub struct SyncSession {
    cfg: SyncConfig,
    fingerprint: Option<NetworkFingerprint>,
    /// Our last verified event (stored or handed out to store).
    tail: Option<ChainedEvent>,
    /// Our head when we do not hold its event (see [`LocalView::head_point`]).
    base: Option<ChainPoint>,
    peer: Option<Digest>,
    outstanding: Option<(u64, u32)>,
    /// Whether the outstanding request is a backfill one.
    outstanding_backward: bool,
    /// Where the next backfilled range must end (`None`: nothing to backfill).
    backfill: Option<ChainPoint>,
    /// Events received towards the next backfill range (the peer may answer a request in
    /// several shorter ranges: bounded by bytes), ascending from its start.
    backfill_buf: Vec<ChainedEvent>,
    backfill_buf_bytes: usize,
    /// Events asked per backfill range (halved when a range will not fit the buffer).
    backfill_batch: u32,
    /// The peer could not serve the history we lack: stop asking it.
    backfill_stopped: bool,
    overlap_checked: bool,
    done_requesting: bool,
    unstored: usize,
    sent_bye: bool,
    peer_bye: bool,
    provisional_seen: bool,
    /// Fork messages received: the one after the hello and the one a peer sends when it
    /// finds a fork in this session.
    forks_seen: u8,
    /// A session that does not pull still checks, once, that the peer's chain passes
    /// through our head (fork detection between two primaries).
    probe: bool,
    finished: bool,
    deadline: Instant,
    transmit: VecDeque<GossipMessage>,
    events: VecDeque<SessionEvent>,
    stats: SessionStats,
}

impl SyncSession {
    /// Starts a session; the hello is queued at once.
    pub fn new(cfg: SyncConfig, local: LocalView, now: Instant) -> Self {
        let base = if local.head.is_none() { local.head_point } else { None };
        let head = local.head.as_ref().map(|e| ChainPoint { seq: e.seq, hash: e.hash }).or(base);
        let mut peers = local.peers;
        peers.truncate(limits::GOSSIP_PEERS_MAX);
        let hello =
            Digest { fingerprint: local.fingerprint, head, anchor: local.anchor, peers, primary: local.primary };
        let deadline = now + cfg.idle_timeout;
        let mut transmit = VecDeque::from([GossipMessage::Hello(hello)]);
        let mut provisional = local.provisional;
        provisional.truncate(limits::GOSSIP_PROVISIONAL_MAX);
        if !provisional.is_empty() {
            transmit.push_back(GossipMessage::Provisional(provisional));
        }
        let mut forks = local.forks;
        forks.truncate(limits::GOSSIP_FORKS_MAX);
        if !forks.is_empty() {
            transmit.push_back(GossipMessage::Forks(forks));
        }
        let probe = !local.pull && local.head.is_some();
        let backfill = if local.pull { local.backfill } else { None };
        let backfill_batch = cfg.batch_events.clamp(1, limits::GOSSIP_BATCH_EVENTS_MAX as u32);
        SyncSession {
            cfg,
            fingerprint: local.fingerprint,
            tail: local.head,
            base,
            peer: None,
            outstanding: None,
            outstanding_backward: false,
            backfill,
            backfill_buf: Vec::new(),
            backfill_buf_bytes: 0,
            backfill_batch,
            backfill_stopped: false,
            overlap_checked: false,
            done_requesting: !local.pull,
            unstored: 0,
            sent_bye: false,
            peer_bye: false,
            provisional_seen: false,
            forks_seen: 0,
            probe,
            finished: false,
            deadline,
            transmit,
            events: VecDeque::new(),
            stats: SessionStats::default(),
        }
    }

    /// The peer's digest, once its hello arrived.
    pub fn peer_digest(&self) -> Option<&Digest> {
        self.peer.as_ref()
    }

    /// Whether the session has ended.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Counters so far.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<GossipMessage> {
        self.transmit.pop_front()
    }

    /// The next action for the adapter.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// When [`SyncSession::handle_timeout`] must be called (`None` once finished).
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.finished).then_some(self.deadline)
    }

    /// Ends the session if its deadline passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.finished && now >= self.deadline {
            self.finish(SessionOutcome::TimedOut);
        }
    }

    /// Reports a frame that could not be decoded: a violation.
    pub fn handle_bad_frame(&mut self, reason: String) {
        self.violation(Violation::BadFrame(reason));
    }

    /// Handles one message from the peer.
    pub fn handle(&mut self, msg: GossipMessage, now: Instant) {
        self.handle_with_records(msg, None, now)
    }

    /// [`SyncSession::handle`] of a message decoded from a frame; `records` are the ledger
    /// records a `Range` arrived as (one per event; ignored otherwise), kept with the range
    /// for the store.
    pub(crate) fn handle_with_records(&mut self, msg: GossipMessage, records: Option<RangeRecords>, now: Instant) {
        if self.finished {
            return;
        }
        self.deadline = now + self.cfg.idle_timeout;
        match msg {
            GossipMessage::Hello(d) => self.on_hello(d),
            GossipMessage::Request { from, max_events } => {
                if self.peer.is_none() {
                    return self.violation(Violation::Protocol("request before hello"));
                }
                if self.peer_bye {
                    return self.violation(Violation::Protocol("request after bye"));
                }
                let max_events = max_events.clamp(1, limits::GOSSIP_BATCH_EVENTS_MAX as u32);
                self.stats.requests_served += 1;
                self.events.push_back(SessionEvent::Serve { from, max_events });
            }
            GossipMessage::Range(events) => self.on_range(events, records),
            GossipMessage::Provisional(list) => {
                if self.peer.is_none() {
                    return self.violation(Violation::Protocol("provisional events before hello"));
                }
                if self.provisional_seen {
                    return self.violation(Violation::Protocol("a second provisional message"));
                }
                if list.len() > limits::GOSSIP_PROVISIONAL_MAX {
                    return self.violation(Violation::Protocol("too many provisional events"));
                }
                self.provisional_seen = true;
                self.events.push_back(SessionEvent::Provisional(list));
            }
            GossipMessage::Forks(list) => {
                if self.peer.is_none() {
                    return self.violation(Violation::Protocol("fork evidence before hello"));
                }
                if self.forks_seen >= 2 {
                    return self.violation(Violation::Protocol("a third fork message"));
                }
                if list.len() > limits::GOSSIP_FORKS_MAX {
                    return self.violation(Violation::Protocol("too much fork evidence"));
                }
                self.forks_seen += 1;
                self.events.push_back(SessionEvent::Forks(list));
            }
            GossipMessage::Bye => {
                if self.peer.is_none() {
                    return self.violation(Violation::Protocol("bye before hello"));
                }
                self.peer_bye = true;
                self.maybe_finish();
            }
        }
    }

    /// The adapter stored the range of the oldest outstanding [`SessionEvent::Store`].
    pub fn stored(&mut self) {
        self.unstored = self.unstored.saturating_sub(1);
        self.plan();
    }

    /// The ledger refused a range the session verified (bad signature, broken rule).
    pub fn store_failed(&mut self, reason: String) {
        self.unstored = self.unstored.saturating_sub(1);
        self.violation(Violation::Refused(reason));
    }

    fn on_hello(&mut self, d: Digest) {
        if self.peer.is_some() {
            return self.violation(Violation::Protocol("second hello"));
        }
        if d.peers.len() > limits::GOSSIP_PEERS_MAX {
            return self.violation(Violation::Protocol("too many peers in hello"));
        }
        match (self.fingerprint, d.fingerprint) {
            (Some(ours), Some(theirs)) if ours != theirs => {
                return self.violation(Violation::WrongNetwork { ours, theirs })
            }
            (Some(_), Some(_)) => {}
            // A peer that holds nothing claims no network; a fresh node with no expectation
            // learns the network from its first peer (the genesis rules check the claim).
            (None, theirs) => self.fingerprint = theirs,
            (Some(_), None) => {}
        }
        if d.fingerprint.is_none() && d.head.is_some() {
            return self.violation(Violation::Protocol("a head without a network"));
        }
        self.peer = Some(d);
        self.plan();
    }

    fn tail_point(&self) -> Option<ChainPoint> {
        self.tail.as_ref().map(|e| ChainPoint { seq: e.seq, hash: e.hash }).or(self.base)
    }

    /// Where the history we still miss below should be fetched next: `(from, max_events)`.
    fn next_backfill_request(&self) -> Option<(u64, u32)> {
        let end = self.backfill.filter(|_| !self.backfill_stopped)?;
        // The peer's chain must reach the point (it may still not hold the history below).
        if self.peer.as_ref().is_none_or(|p| p.head.is_none_or(|h| h.seq < end.seq)) {
            return None;
        }
        match self.backfill_buf.last() {
            Some(last) => Some((last.seq + 1, u32::try_from(end.seq - last.seq).unwrap_or(u32::MAX))),
            None => {
                let from = end.seq.saturating_sub(u64::from(self.backfill_batch) - 1);
                Some((from, u32::try_from(end.seq - from + 1).unwrap_or(u32::MAX)))
            }
        }
    }

    /// Decides the next request, or that we are done asking.
    fn plan(&mut self) {
        if self.finished || self.outstanding.is_some() {
            return self.maybe_finish();
        }
        if self.probe {
            if let (Some(peer), Some(t)) = (self.peer.as_ref(), self.tail_point()) {
                self.probe = false;
                // Ask for the peer's event at our head when its chain reaches that far and is
                // not simply ours; a different event there is fork evidence.
                if peer.head.is_some_and(|ph| ph.seq >= t.seq && ph != t) {
                    self.outstanding = Some((t.seq, 1));
                    self.transmit.push_back(GossipMessage::Request { from: t.seq, max_events: 1 });
                    return;
                }
            }
        }
        if self.done_requesting {
            return self.maybe_finish();
        }
        let Some(peer_head) = self.peer.as_ref().map(|p| p.head) else { return };
        let next = match (peer_head, self.tail_point()) {
            (None, _) => None,
            (Some(_), None) => Some((0, self.cfg.batch_events)),
            (Some(ph), Some(t)) if ph.seq > t.seq => {
                // Without our head's event (a state-only ledger) there is nothing to overlap.
                if self.overlap_checked || self.tail.is_none() {
                    Some((t.seq + 1, self.cfg.batch_events))
                } else {
                    Some((t.seq, self.cfg.batch_events))
                }
            }
            (Some(ph), Some(t))
                if ph.seq == t.seq && ph.hash != t.hash && !self.overlap_checked && self.tail.is_some() =>
            {
                Some((t.seq, 1))
            }
            _ => None,
        };
        // Forward first (what is new matters most), then the history below.
        let (next, backward) = match next {
            Some(n) => (Some(n), false),
            None => (self.next_backfill_request(), true),
        };
        match next {
            Some(_) if self.unstored >= self.cfg.max_unstored => {}
            Some((from, n)) => {
                let n = n.clamp(1, limits::GOSSIP_BATCH_EVENTS_MAX as u32);
                self.outstanding = Some((from, n));
                self.outstanding_backward = backward;
                self.transmit.push_back(GossipMessage::Request { from, max_events: n });
            }
            None => {
                self.done_requesting = true;
                self.maybe_finish();
            }
        }
    }

    /// A range answering a backfill request: collect it until it reaches the point, then
    /// check the whole backwards from there and hand it out to store.
    fn on_backfill_range(&mut self, from: u64, asked: u32, events: Vec<ChainedEvent>) {
        if events.len() > asked as usize {
            return self.violation(Violation::TooLong { asked, got: events.len() });
        }
        let Some(first) = events.first() else {
            // The peer does not hold that part of the history (it may be backfilling too).
            self.backfill_stopped = true;
            self.backfill_buf.clear();
            self.backfill_buf_bytes = 0;
            return self.plan();
        };
        if first.seq != from {
            return self.violation(Violation::StartMismatch { asked: from, got: first.seq });
        }
        let Some(end) = self.backfill else { return self.violation(Violation::Unrequested(events.len())) };
        if events.last().is_some_and(|l| l.seq > end.seq) {
            return self.violation(Violation::TooLong { asked, got: events.len() });
        }
        self.stats.ranges_received += 1;
        self.backfill_buf_bytes += events.iter().map(|e| e.event.encoded_len()).sum::<usize>();
        self.backfill_buf.extend(events);
        if self.backfill_buf.last().is_some_and(|l| l.seq == end.seq) {
            let events = std::mem::take(&mut self.backfill_buf);
            self.backfill_buf_bytes = 0;
            let range = match BackfillRange::verify(end, events, self.fingerprint) {
                Ok(r) => r,
                Err(v) => return self.violation(v),
            };
            self.stats.events_received += range.len() as u64;
            self.backfill = range.next_point();
            self.unstored += 1;
            self.events.push_back(SessionEvent::Backfill(range));
        } else if self.backfill_buf_bytes > limits::GOSSIP_BACKFILL_BYTES_MAX {
            // Nothing of it can be checked before it reaches the point: start over with
            // shorter ranges.
            self.backfill_buf.clear();
            self.backfill_buf_bytes = 0;
            self.backfill_batch = (self.backfill_batch / 2).max(1);
        }
        self.plan();
    }

    fn maybe_finish(&mut self) {
        if self.finished || !self.done_requesting || self.outstanding.is_some() {
            return;
        }
        if !self.sent_bye {
            self.sent_bye = true;
            self.transmit.push_back(GossipMessage::Bye);
        }
        if self.peer_bye && self.unstored == 0 {
            self.finish(SessionOutcome::Completed);
        }
    }

    fn on_range(&mut self, mut events: Vec<ChainedEvent>, records: Option<RangeRecords>) {
        let Some((from, asked)) = self.outstanding.take() else {
            return self.violation(Violation::Unrequested(events.len()));
        };
        if std::mem::take(&mut self.outstanding_backward) {
            return self.on_backfill_range(from, asked, events);
        }
        if events.len() > asked as usize {
            return self.violation(Violation::TooLong { asked, got: events.len() });
        }
        let Some(first) = events.first() else {
            // The peer has nothing from there (its head moved back, or it lied in its hello):
            // nothing to store; stop asking it.
            self.done_requesting = true;
            return self.maybe_finish();
        };
        if first.seq != from {
            return self.violation(Violation::StartMismatch { asked: from, got: first.seq });
        }
        let mut skip = 0;
        if !self.overlap_checked {
            if let Some(tail) = &self.tail {
                if from == tail.seq {
                    self.overlap_checked = true;
                    if first.hash != tail.hash {
                        if !first.hash_is_valid() {
                            return self.violation(Violation::BadHash { seq: first.seq });
                        }
                        let evidence = ForkEvidence { ours: tail.clone(), theirs: first.clone() };
                        // Tell the peer too: it may not be able to see the fork from its side.
                        self.transmit.push_back(GossipMessage::Forks(vec![evidence.clone()]));
                        return self.finish(SessionOutcome::Fork(Box::new(evidence)));
                    }
                    skip = 1;
                }
            }
        }
        self.overlap_checked = true;
        if self.done_requesting {
            // A probe: the peer's chain passes through our head; nothing to store.
            return self.maybe_finish();
        }
        let (canonical, ends) = match self.verify_links(&events[skip..]) {
            Ok(c) => c,
            Err(v) => return self.violation(v),
        };
        self.stats.ranges_received += 1;
        // Records are kept only if there is exactly one per event received.
        let records = records.filter(|r| r.len() == events.len()).map(|r| r.skip(skip));
        events.drain(..skip);
        if let Some(last) = events.last() {
            self.stats.events_received += events.len() as u64;
            self.tail = Some(last.clone());
            self.unstored += 1;
            self.events.push_back(SessionEvent::Store(LinkedRange { events, canonical, ends, records }));
        }
        self.plan();
    }

    /// Checks that `events` continue our tail (or the head of a state-only ledger) link by
    /// link, in our network. Returns their canonical encodings (back to back, with the end
    /// offset of each).
    fn verify_links(&self, events: &[ChainedEvent]) -> Result<(Vec<u8>, Vec<usize>), Violation> {
        let (mut next_seq, mut prev) = match self.tail_point() {
            Some(t) => (t.seq + 1, t.hash),
            None => (0, ChainHash::ZERO),
        };
        let mut canonical = Vec::with_capacity(events.len() * 320);
        let mut ends = Vec::with_capacity(events.len());
        for ev in events {
            if ev.seq != next_seq || ev.prev_hash != prev {
                return Err(Violation::BrokenLink { seq: ev.seq });
            }
            if self.fingerprint.is_some_and(|f| f != ev.event.fingerprint) {
                return Err(Violation::ForeignEvent { seq: ev.seq });
            }
            let start = canonical.len();
            ev.event.write_canonical_bytes(&mut canonical);
            if chain_hash(&ev.prev_hash, ev.seq, &canonical[start..]) != ev.hash {
                return Err(Violation::BadHash { seq: ev.seq });
            }
            ends.push(canonical.len());
            next_seq += 1;
            prev = ev.hash;
        }
        Ok((canonical, ends))
    }

    fn violation(&mut self, v: Violation) {
        self.finish(SessionOutcome::Violation(v));
    }

    fn finish(&mut self, outcome: SessionOutcome) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.transmit.retain(|m| !matches!(m, GossipMessage::Request { .. }));
        self.events.retain(|e| matches!(e, SessionEvent::Store(_) | SessionEvent::Backfill(_)));
        self.events.push_back(SessionEvent::Finished(outcome));
    }
}

/// Checks a range that ends at a known point (a seed's or snapshot's head, a checkpoint) —
/// for backfilling history below it: the last event must be exactly `known`, and every
/// earlier event must be the `prev_hash` of the one after it, each hash recomputed.
pub fn verify_backward(known: ChainPoint, events: &[ChainedEvent]) -> Result<(), Violation> {
    let Some(last) = events.last() else { return Ok(()) };
    if last.seq != known.seq || last.hash != known.hash {
        return Err(Violation::BrokenLink { seq: last.seq });
    }
    let mut expected = known;
    for ev in events.iter().rev() {
        if ev.seq != expected.seq || ev.hash != expected.hash {
            return Err(Violation::BrokenLink { seq: ev.seq });
        }
        if !ev.hash_is_valid() {
            return Err(Violation::BadHash { seq: ev.seq });
        }
        if ev.seq == 0 {
            if ev.prev_hash != ChainHash::ZERO {
                return Err(Violation::BrokenLink { seq: 0 });
            }
            break;
        }
        expected = ChainPoint { seq: ev.seq - 1, hash: ev.prev_hash };
    }
    Ok(())
}

/// How far each tier reaches in a chain a node holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchors {
    /// The newest voter-signed checkpoint event held (everything up to it is Primary).
    pub checkpoint: Option<ChainPoint>,
    /// The head of the verified seed this chain was imported from (Seed up to it).
    pub seed: Option<ChainPoint>,
    /// Whether this node's chain is committed by Raft here (a voter or learner: Primary up to
    /// its head).
    pub raft_member: bool,
}

impl Anchors {
    /// The tier of the event at `seq` in a chain whose head is `head`.
    pub fn tier_of(&self, seq: u64, head: Option<ChainPoint>) -> Option<SporeType> {
        let head = head?;
        if seq > head.seq {
            return None;
        }
        if self.raft_member || self.checkpoint.is_some_and(|c| seq <= c.seq) {
            Some(SporeType::Primary)
        } else if self.seed.is_some_and(|s| seq <= s.seq) {
            Some(SporeType::Seed)
        } else {
            Some(SporeType::Latent)
        }
    }

    /// The tier of the head: the authority of the view as a whole.
    pub fn head_tier(&self, head: Option<ChainPoint>) -> Option<SporeType> {
        head.and_then(|h| self.tier_of(h.seq, Some(h)))
    }

    /// How far `tier`'s view reaches in a chain whose head is `head`: the newest sequence
    /// number whose authority is at least `tier` (a Seed view includes what a checkpoint
    /// anchors; a Latent view is everything held). `None` when no event has that authority.
    pub fn reach(&self, tier: SporeType, head: Option<ChainPoint>) -> Option<u64> {
        let head = head?;
        let primary = if self.raft_member { Some(head.seq) } else { self.checkpoint.map(|c| c.seq.min(head.seq)) };
        let seed = self.seed.map(|s| s.seq.min(head.seq));
        match tier {
            SporeType::Primary => primary,
            SporeType::Seed => primary.max(seed),
            SporeType::Latent => Some(head.seq),
        }
    }
}
