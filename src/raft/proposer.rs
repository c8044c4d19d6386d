//! Group commit on the leader: concurrent writes are packed into one Raft entry.
//!
//! openraft appends (and syncs) once per `client_write`, so one entry per event would cap
//! throughput at the fsync rate. The proposer drains every event waiting in its queue into a
//! [`SporeRequest::Batch`], keeps at most `batches_in_flight` of them in Raft, and answers
//! each writer with its own event's outcome. Local writes and writes forwarded by followers
//! share it. A write that comes alone skips the queue (see `Slots`).

use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{ClientWriteResponse, ClientWriteResult};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::error::ConsensusError;
use super::responder::FnResponder;
use super::state_machine::SharedLedger;
use super::{Raft, SporeRequest, SporeResponse, TypeConfig};
use crate::core::event::SignedEvent;
use crate::core::limits;
use crate::core::provisional::EventId;
use crate::core::sync;
use crate::store::verified::PreVerified;
use crate::store::verify_pool::Urgency;

/// Where a proposal's outcome goes; without one from the state machine, why
/// ([`ConsensusError::NotLeader`] when this node does not lead).
type Reply = oneshot::Sender<Result<SporeResponse, ConsensusError>>;
/// An event waiting for a batch, with where its answer goes.
type Item = (SignedEvent, Reply);
/// Makes the event to commit right after the head it is given (`None`: nothing to commit).
pub type AtHead = Box<dyn FnOnce(&crate::store::ledger::Ledger) -> Option<SignedEvent> + Send>;

/// What the proposer's queue carries.
// The common variant is the large one: boxing it would cost every write an allocation.
#[allow(clippy::large_enum_variant)]
enum Proposal {
    /// An event for the next batch.
    Event(Item),
    /// An event that must follow the head directly (a checkpoint names it): made once nothing
    /// is in flight, from the ledger as it then is, and committed alone before anything else.
    AtHead(AtHead, Reply),
}

/// Most events packed into one entry.
pub const BATCH_EVENTS_MAX: usize = 1024;
/// Most canonical bytes packed into one entry (an estimate from the events' BCS size, which
/// bounds their postcard size on the wire). Keeps every AppendEntries request, at most
/// [`PAYLOAD_ENTRIES_MAX`] entries, far under the transport's frame limit and small enough
/// for a follower to receive, append and sync within one heartbeat interval: openraft gives
/// every AppendEntries a time to live of `heartbeat_interval`, whatever its size (the transport
/// stretches it only to what the measured round trips ask for, not to the payload's size).
pub const BATCH_BYTES_MAX: usize = 256 * 1024;
/// Most entries openraft may put into one AppendEntries request (`max_payload_entries`).
pub const PAYLOAD_ENTRIES_MAX: u64 = 8;
/// Most bytes an AppendEntries request can carry: full batches plus per-entry overhead.
pub const APPEND_ENTRIES_BYTES_MAX: usize =
    PAYLOAD_ENTRIES_MAX as usize * (BATCH_BYTES_MAX + limits::EVENT_BYTES_MAX + 4096);
/// Most batches in flight at once by default (the LAN profile): one. Most of a write's CPU
/// is paid per Raft entry, not per event (each replica's log append, sync and apply, the
/// openraft rounds and the task wake-ups between them), and when each writer waits for its
/// answer, N batches in flight split the waiting writes into N entries. On two cores
/// with three voters in process, one batch beat two at every concurrency measured (8, 16
/// and 64 writers, in process and over QUIC on loopback; 64 writers: 0.44–0.47 → 0.51–0.57
/// of the `primary` bench's limit). Under openraft 0.9, whose core synced each append before it
/// looked at replication again, two had beaten one and four. Over a WAN the round trip
/// dominates instead, and a write that waits for a free slot waits a whole commit: see
/// [`BATCHES_IN_FLIGHT_WAN`].
pub const BATCHES_IN_FLIGHT_MAX: usize = 1;
/// Batches in flight in the WAN profile: openraft packs what is in flight into the next
/// AppendEntries, so a write waits for one commit, not two (commit p50 at 100 ms round trips
/// and 10 % loss: about 3.5 round trips with 2, 3 with 8; `tests/it/wan.rs`).
pub const BATCHES_IN_FLIGHT_WAN: usize = 8;
/// While another batch is in flight, the proposer yields to the runtime until this many
/// yields in a row bring no new event, then sends what it has.
pub const LINGER_QUIET_YIELDS: usize = 2;
/// The fewest events in a batch whose signature checks the leader starts as it sends the
/// batch to Raft, rather than once its log has appended it (its apply needs them: ~640 µs of
/// one thread for 64 events, which otherwise ended after the quorum's syncs). A smaller
/// batch's checks, started by the log store after the append, end long before its syncs, and
/// the pool is not woken ahead of one write's append.
pub const EARLY_CHECKS_MIN: usize = 8;
/// Bound of the proposal queue.
pub const QUEUE_MAX: usize = 16 * BATCH_EVENTS_MAX;
const _: () = assert!(BATCH_EVENTS_MAX <= limits::APPEND_BATCH_MAX);
const _: () = assert!(BATCH_BYTES_MAX >= limits::EVENT_BYTES_MAX);

/// Upper estimate of an event's size in a batch.
fn event_bytes(event: &SignedEvent) -> usize {
    event.encoded_len()
}

/// A handle to the proposer task. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Proposal>,
    /// Where batches go; a writer that comes alone hands its write here itself.
    raft: Raft,
    /// The batches in flight, shared with the proposer's task.
    slots: Arc<Slots>,
    /// With the node's ledger and its recent-events window, proposals are idempotent (see
    /// [`Proposer::propose`]).
    ledger: Option<(SharedLedger, crate::store::recent::SharedRecent)>,
    /// Events being proposed now, with the writers waiting for the same event's outcome.
    in_flight: Arc<Mutex<HashMap<EventId, Vec<Reply>>>>,
}

impl Proposer {
    /// Spawns the proposer for `raft`, with [`BATCHES_IN_FLIGHT_MAX`]. It stops when every
    /// handle is dropped.
    pub fn spawn(raft: Raft) -> Self {
        Self::spawn_with(raft, BATCHES_IN_FLIGHT_MAX)
    }

    /// Spawns the proposer for `raft` with at most `batches_in_flight` batches (at least one)
    /// in Raft at once.
    pub fn spawn_with(raft: Raft, batches_in_flight: usize) -> Self {
        Self::spawn_inner(raft, None, batches_in_flight)
    }

    fn spawn_inner(raft: Raft, ledger: Option<(SharedLedger, PreVerified)>, batches_in_flight: usize) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        let batches_in_flight = batches_in_flight.max(1);
        let slots = Arc::new(Slots::new(batches_in_flight));
        tokio::spawn(run(raft.clone(), slots.clone(), ledger, rx));
        Proposer { tx, raft, slots, ledger: None, in_flight: Arc::default() }
    }

    /// [`Proposer::spawn_with`] and the node's ledger: proposals become idempotent, and
    /// [`Proposer::propose_at_head`] works. `checks` is the state machine's
    /// ([`super::state_machine::LedgerStateMachine::pre_verified`]): the signatures of a batch
    /// of at least [`EARLY_CHECKS_MIN`] events are checked there from the moment it is sent,
    /// rather than once this node's log has appended it.
    pub fn spawn_idempotent(raft: Raft, ledger: SharedLedger, checks: PreVerified, batches_in_flight: usize) -> Self {
        let recent = ledger.read().ok().map(|l| l.recent_events());
        let proposer = Self::spawn_inner(raft, Some((ledger.clone(), checks)), batches_in_flight);
        Proposer { ledger: recent.map(|r| (ledger, r)), ..proposer }
    }

    /// Commits the event `make` builds right after the head: once no batch is in flight, the
    /// proposer reads the ledger (applied up to everything proposed before), calls `make` with
    /// it, and commits the event alone before it sends anything else. What a checkpoint, which
    /// names the head right before it, needs on a busy leader: proposed beside other writes,
    /// it loses the race to them. Holds the other writes for one commit. `Ok(None)` when `make`
    /// returned none; [`ConsensusError::ProposalDropped`] from a proposer without the ledger.
    pub async fn propose_at_head(&self, make: AtHead) -> Result<Option<SporeResponse>, ConsensusError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Proposal::AtHead(make, reply)).await.map_err(|_| ConsensusError::ProposerStopped)?;
        match rx.await {
            Ok(outcome) => outcome.map(Some),
            // `make` made nothing: the proposer drops the reply.
            Err(_) => Ok(None),
        }
    }

    /// Proposes one event and waits for its outcome.
    ///
    /// Idempotent when spawned with the ledger: an event already committed among the newest
    /// [`limits::RECENT_EVENTS_WINDOW`] answers `Applied` at the point where it committed,
    /// without a second proposal; the same event submitted again while it is being proposed
    /// waits for that proposal's outcome; and a rejection of an event that meanwhile turns out
    /// to be committed (a retry that raced its first attempt) answers where it committed.
    /// A retry that reaches another leader while its first attempt is still uncommitted in the
    /// Raft log can still commit twice (a known limit, `schema/rules.md`).
    pub async fn propose(&self, event: SignedEvent) -> Result<SporeResponse, ConsensusError> {
        let Some((ledger, recent)) = &self.ledger else { return self.propose_once(event).await };
        let id = EventId::of(&event);
        // The common case, a new event, is settled by the window alone, without the ledger's
        // lock (an apply may hold it); only a candidate is read from the ledger.
        if recent.read().candidate(&id).is_some() {
            if let Some(point) = committed_point(ledger, &event) {
                return Ok(SporeResponse::Applied(point));
            }
        }
        let waiting = {
            let mut m = sync::lock(&self.in_flight);
            match m.get_mut(&id) {
                Some(waiters) => {
                    let (reply, rx) = oneshot::channel();
                    waiters.push(reply);
                    Some(rx)
                }
                None => {
                    m.insert(id, Vec::new());
                    None
                }
            }
        };
        if let Some(rx) = waiting {
            return rx.await.map_err(|_| ConsensusError::ProposalDropped)?;
        }
        let mut outcome = self.propose_once(event.clone()).await;
        if matches!(outcome, Ok(SporeResponse::Rejected(_))) {
            if let Some(point) = committed_point(ledger, &event) {
                outcome = Ok(SporeResponse::Applied(point));
            }
        }
        let waiters = sync::lock(&self.in_flight).remove(&id).unwrap_or_default();
        for w in waiters {
            let _ = w.send(outcome.clone());
        }
        outcome
    }

    async fn propose_once(&self, event: SignedEvent) -> Result<SporeResponse, ConsensusError> {
        let (reply, rx) = oneshot::channel();
        let _writing = self.slots.enter();
        match self.slots.direct(&self.tx) {
            Some(permit) => {
                let span = tracing::debug_span!("propose_batch", events = 1, direct = true);
                send_batch(&self.raft, vec![(event, reply)], permit, None).instrument(span).await;
            }
            None => self.tx.send(Proposal::Event((event, reply))).await.map_err(|_| ConsensusError::ProposerStopped)?,
        }
        rx.await.map_err(|_| ConsensusError::ProposalDropped)?
    }
}

/// The proposer's slots for batches in flight, shared by its task and its writers.
///
/// A write that comes alone (no other writer waiting on this proposer, nothing queued, and
/// the slot free) is handed to Raft by its own writer: the proposer's task would send it as a
/// batch of one all the same, a wake-up later (the 1-client write's "submit → batch proposed",
/// `benches/latency_breakdown.rs`: 29 → 3 µs). With two writers or more every write queues,
/// so concurrent writes still share entries.
///
/// The proposer's task takes a slot before it waits for its first event (what queues while
/// every slot is taken joins the next batch) and, while it waits idle, lends that slot to a
/// writer that comes alone. Waiting for the first event before taking a slot instead split
/// 64 writers into alternating batches of one event and of the rest (35 events per entry
/// instead of 62, `primary_profile`), and cost a fifth of their throughput.
struct Slots {
    /// A batch in flight holds a permit until its writers are answered (or openraft drops it).
    free: Arc<Semaphore>,
    /// Most batches in flight.
    max: usize,
    /// Writers waiting on this proposer now.
    writers: AtomicUsize,
    /// The slot the proposer's task holds while it waits, idle, for a first event.
    idle: Mutex<Option<OwnedSemaphorePermit>>,
}

/// A writer counted in [`Slots::writers`] while it lives.
struct Writing<'a>(&'a AtomicUsize);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Slots {
    fn new(max: usize) -> Self {
        Slots { free: Arc::new(Semaphore::new(max)), max, writers: AtomicUsize::new(0), idle: Mutex::new(None) }
    }

    /// Counts a writer until the guard drops.
    fn enter(&self) -> Writing<'_> {
        self.writers.fetch_add(1, Ordering::SeqCst);
        Writing(&self.writers)
    }

    /// A slot for a writer (counted by [`Slots::enter`]) to send its write alone at once, if
    /// it comes alone and no batch is in flight: the slot an idle proposer lends, or else a
    /// free one (tokio's semaphore is fair: a proposer task waiting for a slot gets it first).
    fn direct<T>(&self, queue: &mpsc::Sender<T>) -> Option<OwnedSemaphorePermit> {
        if self.writers.load(Ordering::SeqCst) != 1 || queue.capacity() != queue.max_capacity() {
            return None;
        }
        // Nothing else in flight: every slot free but the one the idle proposer may lend.
        let mut idle = sync::lock(&self.idle);
        let lent = usize::from(idle.is_some());
        if self.free.available_permits() + lent != self.max {
            return None;
        }
        idle.take().or_else(|| self.free.clone().try_acquire_owned().ok())
    }

    /// Waits for a free slot (`None` once the semaphore is closed).
    async fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.free.clone().acquire_owned().await.ok()
    }

    /// Lends `permit` to a writer that comes alone while the proposer waits idle.
    fn lend(&self, permit: OwnedSemaphorePermit) {
        *sync::lock(&self.idle) = Some(permit);
    }

    /// The slot lent by [`Slots::lend`] if no writer took it, or the next free one.
    async fn reclaim(&self) -> Option<OwnedSemaphorePermit> {
        let kept = sync::lock(&self.idle).take();
        match kept {
            Some(permit) => Some(permit),
            None => self.take().await,
        }
    }
}

/// Where `event` committed, if the ledger remembers it (a read error is "not known").
fn committed_point(ledger: &SharedLedger, event: &SignedEvent) -> Option<crate::core::types::ChainPoint> {
    let l = ledger.read().ok()?;
    l.committed_point(event).ok().flatten()
}

async fn run(
    raft: Raft,
    slots: Arc<Slots>,
    ledger: Option<(SharedLedger, PreVerified)>,
    mut rx: mpsc::Receiver<Proposal>,
) {
    let (ledger, checks) = match ledger {
        Some((l, c)) => (Some(l), Some(c)),
        None => (None, None),
    };
    let batches_in_flight = slots.max;
    // A proposal that did not fit the previous batch opens the next one.
    let mut carry = None;
    loop {
        // A free slot first: what queues while every slot is taken joins the next batch.
        let Some(mut permit) = slots.take().await else { break };
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.try_recv() {
                Ok(p) => p,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    slots.lend(permit);
                    let Some(p) = rx.recv().await else { break };
                    let Some(again) = slots.reclaim().await else { break };
                    permit = again;
                    p
                }
            },
        };
        let first = match first {
            Proposal::Event(item) => item,
            Proposal::AtHead(make, reply) => {
                // Every slot: everything proposed before is applied once its batch answers.
                drop(permit);
                let Ok(all) = slots.free.clone().acquire_many_owned(batches_in_flight as u32).await else { break };
                let event = match &ledger {
                    None => {
                        let _ = reply.send(Err(ConsensusError::ProposalDropped));
                        continue;
                    }
                    Some(ledger) => match ledger.read() {
                        Ok(l) => make(&l),
                        Err(_) => None,
                    },
                };
                // Committed alone: it holds every slot until it is answered.
                if let Some(event) = event {
                    send_batch(&raft, vec![(event, reply)], all, None).await;
                }
                continue;
            }
        };
        let mut bytes = event_bytes(&first.0);
        let mut batch = vec![first];
        drain(&mut rx, &mut batch, &mut bytes, &mut carry);
        // Another batch is on its way through Raft, so this one would wait for it anyway:
        // let the writers it answered (woken on this runtime) queue their next events first.
        // A batch sent at once would often carry one event and hold a slot for a whole round.
        if slots.free.available_permits() + 1 < batches_in_flight {
            let mut quiet = 0;
            while quiet < LINGER_QUIET_YIELDS && carry.is_none() && batch.len() < BATCH_EVENTS_MAX {
                tokio::task::yield_now().await;
                let before = batch.len();
                drain(&mut rx, &mut batch, &mut bytes, &mut carry);
                quiet = if batch.len() == before { quiet + 1 } else { 0 };
            }
        }
        let span = tracing::debug_span!("propose_batch", events = batch.len());
        send_batch(&raft, batch, permit, checks.as_ref()).instrument(span).await;
    }
}

/// Hands `batch` to Raft as one entry. Its responder answers each writer with its own event's
/// outcome, from the apply, and then frees the batch's slot (`permit`). With `checks`, a batch
/// of at least [`EARLY_CHECKS_MIN`] events has its signatures checked from now on.
async fn send_batch(raft: &Raft, batch: Vec<Item>, permit: OwnedSemaphorePermit, checks: Option<&PreVerified>) {
    let (events, replies): (Vec<SignedEvent>, Vec<Reply>) = batch.into_iter().unzip();
    let n = events.len();
    let events = Arc::new(events);
    if let Some(checks) = checks.filter(|_| n >= EARLY_CHECKS_MIN) {
        checks.spawn_verify(events.clone(), Urgency::Foreground);
    }
    // Shared with the responder, so a Raft that stopped before taking the batch answers too.
    let waiting = Arc::new(Mutex::new(Some(replies)));
    let answer = {
        let waiting = waiting.clone();
        FnResponder::new(move |result: ClientWriteResult<TypeConfig>| {
            let replies = sync::lock(&waiting).take().unwrap_or_default();
            answer_all(replies, result.map_err(RaftError::APIError), n);
            drop(permit);
        })
    };
    if let Err(fatal) = raft.client_write_ff(SporeRequest::Batch(events), Some(answer)).await {
        let replies = sync::lock(&waiting).take().unwrap_or_default();
        answer_all(replies, Err(RaftError::Fatal(fatal)), n);
    }
}

/// Answers each writer of a batch of `n` events with its own event's outcome.
fn answer_all(
    replies: Vec<Reply>,
    result: Result<ClientWriteResponse<TypeConfig>, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>,
    n: usize,
) {
    match result {
        Ok(resp) => match resp.data {
            SporeResponse::Batch(answers) if answers.len() == n => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            other => {
                let e = ConsensusError::UnexpectedAnswer { events: n, got: format!("{other:?}") };
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        },
        Err(e) => {
            let e = match e {
                // A discarded entry was truncated by a new leader: it never committed, and
                // the leader now is another node (as in 0.9, which answered such writes
                // ForwardToLeader).
                RaftError::APIError(ClientWriteError::ForwardToLeader(_) | ClientWriteError::LogEntryDiscarded(_)) => {
                    ConsensusError::NotLeader
                }
                RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => e.into(),
                // No write here carries a precondition.
                RaftError::APIError(e @ ClientWriteError::PreconditionFailed(_)) => {
                    ConsensusError::UnexpectedAnswer { events: n, got: e.to_string() }
                }
                RaftError::Fatal(f) => f.into(),
            };
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Moves waiting events into `batch` until it is full, its bytes would exceed the limit (the
/// event that did not fit goes to `carry`), an event that must follow the head comes (it goes
/// to `carry`: it waits for this batch) or the queue is empty.
fn drain(rx: &mut mpsc::Receiver<Proposal>, batch: &mut Vec<Item>, bytes: &mut usize, carry: &mut Option<Proposal>) {
    while batch.len() < BATCH_EVENTS_MAX && carry.is_none() {
        match rx.try_recv() {
            Ok(Proposal::Event(item)) => {
                let n = event_bytes(&item.0);
                if *bytes + n > BATCH_BYTES_MAX {
                    *carry = Some(Proposal::Event(item));
                    break;
                }
                *bytes += n;
                batch.push(item);
            }
            Ok(at_head) => *carry = Some(at_head),
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A writer alone takes the slot the idle proposer lends; two writers, a queued proposal or
    /// a batch in flight send it through the queue; the proposer gets its slot back when the
    /// writer's batch is answered.
    #[tokio::test]
    async fn only_a_writer_alone_skips_the_queue_and_the_proposer_gets_its_slot_back() {
        let slots = Slots::new(1);
        let (tx, mut rx) = mpsc::channel::<u8>(4);
        let idle = slots.take().await.expect("a slot");
        slots.lend(idle);

        let first = slots.enter();
        let second = slots.enter();
        assert!(slots.direct(&tx).is_none(), "two writers: both queue");
        drop(second);
        tx.try_send(1).expect("queue");
        assert!(slots.direct(&tx).is_none(), "a proposal queued before it: the writer queues behind it");
        rx.try_recv().expect("queued");
        let lent = slots.direct(&tx).expect("alone, with the proposer idle: the lent slot");
        assert!(slots.direct(&tx).is_none(), "the only slot is in flight");

        let reclaim = slots.reclaim();
        tokio::pin!(reclaim);
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut reclaim).await.is_err(), "slot still in flight");
        drop(lent);
        let back = tokio::time::timeout(Duration::from_secs(5), reclaim).await.expect("slot back").expect("open");
        drop(first);
        let _alone = slots.enter();
        assert!(slots.direct(&tx).is_none(), "the proposer holds its slot and has not lent it");
        drop(back);
        assert!(slots.direct(&tx).is_some(), "nothing in flight: a free slot");
    }

    /// With several batches in flight allowed (the WAN profile), a writer alone goes around
    /// the queue only while nothing is in flight, whether the proposer lends its slot or not.
    #[tokio::test]
    async fn a_writer_alone_waits_in_the_queue_while_a_batch_is_in_flight() {
        let slots = Slots::new(BATCHES_IN_FLIGHT_WAN);
        let (tx, _rx) = mpsc::channel::<u8>(4);
        let _alone = slots.enter();
        let in_flight = slots.direct(&tx).expect("nothing in flight");
        assert!(slots.direct(&tx).is_none(), "one batch in flight, none lent");
        let idle = slots.take().await.expect("a slot");
        slots.lend(idle);
        assert!(slots.direct(&tx).is_none(), "one batch in flight, the idle proposer's slot lent");
        drop(in_flight);
        let lent = slots.direct(&tx).expect("nothing in flight: the lent slot");
        assert_eq!(slots.free.available_permits(), BATCHES_IN_FLIGHT_WAN - 1, "the lent slot, not a second one");
        drop(lent);
        assert!(slots.direct(&tx).is_some());
    }
}
