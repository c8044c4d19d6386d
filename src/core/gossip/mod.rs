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
//!
//! One job per file: the messages and the session's inputs and outputs (this file), the
//! session's state machine (`session.rs`), forward ranges checked link by link (`range.rs`),
//! backfilled ranges checked backward (`backfill.rs`) and the tiers of stored events
//! (`anchors.rs`).

mod anchors;
mod backfill;
mod range;
mod session;
#[cfg(test)]
mod tests;

pub use anchors::Anchors;
pub use backfill::{verify_backward, BackfillRange};
pub use range::{LinkedRange, RangeRecords};
pub use session::SyncSession;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::event::ChainedEvent;
// Named by the limits' doc links only.
#[cfg(doc)]
use super::limits;
use super::types::{ChainPoint, NetworkFingerprint, NodeId};

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
