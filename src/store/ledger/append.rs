//! The local append paths: verify, validate, chain and write events in one atomic batch
//! (sequentially, or chained on the helper thread), with the head, anchor and projection
//! checkpoints; the divergence check after each batch; the recent-events window.

use std::sync::Arc;

use super::meta::{
    encode_head, encode_meta_checkpoint, encode_point, read_head, META_ANCHOR, META_CHECKPOINT, META_HEAD,
};
use super::open::replay_held;
use super::storage_error::storage;
use super::Ledger;
use crate::core::attest::StateDivergence;
use crate::core::event::{ChainedEvent, EventBody, SignedEvent};
use crate::core::limits;
use crate::core::projection::{Projection, ProjectionState, Rejection};
use crate::core::provisional::EventId;
use crate::core::sync::lock;
use crate::core::types::{ChainHash, ChainPoint};
use crate::store::chainer::{Chainer, Job};
use crate::store::error::{Corruption, LedgerError};
use crate::store::recent::SharedRecent;
use crate::store::record::{self, encode_record_into, seq_key};
use crate::store::verified::VerifiedEvents;
use fjall::PersistMode;

/// Where an appended event went: its seq, the previous hash and its hash.
type Link = (u64, ChainHash, ChainHash);

/// What [`Ledger::append`] did with each event, in order.
pub type AppendOutcome = Vec<Result<ChainedEvent, Rejection>>;

/// Append batches at least this large are chained on the helper thread.
const PARALLEL_CHAIN_MIN: usize = 64;

/// Whether applying `body` next would attest the state `projection` is at, with a projection
/// checkpoint due there (`due_at` from `Ledger::checkpoint_due_at`).
pub(super) fn attests_due(body: &EventBody, projection: &Projection, due_at: Option<u64>) -> bool {
    let at = projection.head().map(|h| h.seq);
    matches!(body, EventBody::StateCheckpoint { head_seq, .. } if Some(*head_seq) == at)
        && due_at.is_some_and(|d| at.is_some_and(|a| a >= d))
}

/// The newest checkpoint event among `events` (its own seq and hash), if any.
pub(super) fn newest_checkpoint<'a>(events: impl DoubleEndedIterator<Item = &'a ChainedEvent>) -> Option<ChainPoint> {
    events.rev().find(|e| e.event.body.is_checkpoint()).map(|e| ChainPoint { seq: e.seq, hash: e.hash })
}

impl Ledger {
    /// Verifies signatures (batched, on all cores), validates and chains `events` in order,
    /// and writes the accepted ones durably in one atomic batch. Rejected events change
    /// nothing and are reported in place. Returns after the batch is on disk.
    ///
    /// This is [`VerifiedEvents::verify`] followed by [`Ledger::append_verified`].
    #[tracing::instrument(skip_all, fields(path = %self.path.display(), events = events.len()))]
    pub fn append(&mut self, events: Vec<SignedEvent>) -> Result<AppendOutcome, LedgerError> {
        self.append_with_meta(events, Vec::new())
    }

    /// [`Ledger::append`], also writing `extra` key/values into `meta` in the same atomic batch
    /// (used by the Raft state machine to persist its applied log id with the events).
    pub fn append_with_meta(
        &mut self,
        events: Vec<SignedEvent>,
        extra: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<AppendOutcome, LedgerError> {
        self.usable(events.len())?;
        let (verified, _) = VerifiedEvents::verify(events, &mut self.cache);
        self.append_verified_with_meta(verified, extra)
    }

    /// Validates and chains events whose signatures were already checked, in order, and
    /// writes the accepted ones durably in one atomic batch (the storage path of
    /// [`Ledger::append`], without verification). Events whose signature did not verify and
    /// events the rules reject change nothing and are reported in place. Returns after the
    /// batch is on disk.
    #[tracing::instrument(skip_all, fields(path = %self.path.display(), events = events.len()))]
    pub fn append_verified(&mut self, events: VerifiedEvents) -> Result<AppendOutcome, LedgerError> {
        self.append_verified_with_meta(events, Vec::new())
    }

    /// [`Ledger::append_verified`], also writing `extra` key/values into `meta` in the same
    /// atomic batch (see [`Ledger::append_with_meta`]).
    pub fn append_verified_with_meta(
        &mut self,
        events: VerifiedEvents,
        extra: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<AppendOutcome, LedgerError> {
        self.usable(events.len())?;
        if events.len() >= PARALLEL_CHAIN_MIN
            && self.projection.head().is_some()
            && !events.iter().any(|(e, _)| e.body.is_checkpoint())
        {
            if !self.chainer_tried {
                self.chainer_tried = true;
                self.chainer = Chainer::start();
            }
            if self.chainer.is_some() {
                return self.append_verified_parallel(events, extra);
            }
        }
        let links = self.append_links(&events, extra)?;
        let events = events.into_events().into_iter();
        Ok(events
            .zip(links)
            .map(|(event, link)| link.map(|(seq, prev_hash, hash)| ChainedEvent { seq, prev_hash, hash, event }))
            .collect())
    }

    /// [`Ledger::append_verified_with_meta`] of events the caller keeps (borrowed, so none is
    /// copied or moved), reporting only where each accepted one landed in the chain. The Raft
    /// state machine appends this way from its log entries' shared batches.
    #[tracing::instrument(level = "debug", skip_all, fields(path = %self.path.display(), events = events.len()))]
    pub fn append_verified_points(
        &mut self,
        events: VerifiedEvents<&SignedEvent>,
        extra: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Vec<Result<ChainPoint, Rejection>>, LedgerError> {
        self.usable(events.len())?;
        let links = self.append_links(&events, extra)?;
        Ok(links.into_iter().map(|link| link.map(|(seq, _, hash)| ChainPoint { seq, hash })).collect())
    }

    /// The sequential append: validates, chains and applies `events` in order (reading them
    /// in place), writes the accepted ones with `extra` in one atomic batch and returns each
    /// accepted event's (seq, previous hash, hash) or rejection, in order. The caller has
    /// checked that the ledger is usable for this many events.
    fn append_links<E: std::borrow::Borrow<SignedEvent> + Sync>(
        &mut self,
        events: &VerifiedEvents<E>,
        extra: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Vec<Result<Link, Rejection>>, LedgerError> {
        let mut outcome = Vec::with_capacity(events.len());
        let mut batch = self.new_batch(events.len() + extra.len());
        let (mut accepted, mut anchor) = (0usize, None);
        let due_at = self.checkpoint_due_at();
        let mut pending = None;
        let mut ids = Vec::with_capacity(events.len());
        let projection = &mut self.projection;
        let ledger = &self.ledger;
        // Each record is encoded into this one buffer: the batch copies the bytes it is given
        // into its own value, so a fresh vector per record would only be allocated and freed.
        let mut record = Vec::with_capacity(1024);
        events.for_each_ref(|event, canonical, signature_ok| {
            let snapshot = (signature_ok && attests_due(&event.body, projection, due_at))
                .then(|| encode_meta_checkpoint(projection.state()));
            let diverged = projection.divergence().is_some();
            let linked = if signature_ok {
                projection.append_canonical_ref(event, canonical)
            } else {
                // Check the rules first so a forged event of another network says so.
                Err(projection.check(event).err().unwrap_or(Rejection::BadSignature(event.author)))
            };
            if let Ok((seq, prev_hash, hash)) = linked {
                record.clear();
                record::encode_record_ref_into(&record::ChainedEventRef { seq, prev_hash, hash, event }, &mut record);
                batch.insert(ledger, seq_key(seq), record.as_slice());
                ids.push((seq, EventId::of_canonical(canonical)));
                accepted += 1;
                if event.body.is_checkpoint() {
                    anchor = Some(ChainPoint { seq, hash });
                }
                // Kept only if the event attested exactly that state.
                if let Some(s) = snapshot.filter(|_| !diverged && projection.divergence().is_none()) {
                    pending = Some((seq - 1, s));
                }
            }
            outcome.push(linked);
        });
        self.pending_checkpoint = pending;
        if accepted > 0 || !extra.is_empty() {
            self.commit_batch(batch, accepted, anchor, extra)?;
        }
        {
            let mut recent = self.recent.write();
            for (seq, id) in &ids {
                recent.record(*seq, id);
            }
        }
        Ok(outcome)
    }

    /// [`Ledger::append_verified_with_meta`] of a batch without checkpoint events, after
    /// genesis, with the chain hashes computed on the helper thread ([`crate::store::chainer`]) while
    /// this thread validates and applies the events. Same outcome, same bytes.
    fn append_verified_parallel(
        &mut self,
        events: VerifiedEvents,
        extra: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<AppendOutcome, LedgerError> {
        let (events, canonical, ends, ok) = events.into_parts();
        let n = events.len();
        let (seq0, prev0) = (self.projection.next_seq(), self.projection.head_hash());
        let job = Arc::new(Job::new(events, canonical, ends, ok, seq0, prev0));
        if let Some(c) = &self.chainer {
            c.submit(job.clone());
        }
        // Validate and apply; the head's hash is set once the hashes are known.
        let mut applied: Vec<Result<u64, Rejection>> = Vec::with_capacity(n);
        let mut as_speculated = true;
        {
            let events = job.events();
            for (i, event) in events.iter().enumerate() {
                if !job.chained(i) {
                    // Check the rules first so a forged event of another network says so.
                    applied.push(Err(self
                        .projection
                        .check(event)
                        .err()
                        .unwrap_or(Rejection::BadSignature(event.author))));
                    continue;
                }
                let r = self.projection.apply_unhashed(event, job.size(i));
                as_speculated &= r.is_ok();
                applied.push(r);
            }
        }
        let chained = job.join();
        let events = job.take_events();
        let mut outcome = Vec::with_capacity(n);
        let mut batch = self.new_batch(n + extra.len());
        let mut accepted = 0usize;
        let mut ids = Vec::with_capacity(n);
        let mut record = Vec::with_capacity(1024);
        let mut prev = prev0;
        for ((i, event), a) in events.into_iter().enumerate().zip(applied) {
            let seq = match a {
                Ok(seq) => seq,
                Err(r) => {
                    outcome.push(Err(r));
                    continue;
                }
            };
            if as_speculated {
                // The helper chained exactly the accepted events.
                let hash = chained.hashes[i];
                debug_assert_eq!(hash, crate::core::event::chain_hash(&prev, seq, job.canonical(i)));
                batch.insert(&self.ledger, seq_key(seq), chained.record(i));
                outcome.push(Ok(ChainedEvent { seq, prev_hash: prev, hash, event }));
                debug_assert!(matches!(outcome.last(), Some(Ok(c)) if record::encode_record(c) == chained.record(i)));
                prev = hash;
            } else {
                // The rules refused an event the helper chained: chain exactly the accepted ones.
                let hash = crate::core::event::chain_hash(&prev, seq, job.canonical(i));
                let ce = ChainedEvent { seq, prev_hash: prev, hash, event };
                record.clear();
                encode_record_into(&ce, &mut record);
                batch.insert(&self.ledger, seq_key(seq), record.as_slice());
                outcome.push(Ok(ce));
                prev = hash;
            }
            ids.push((seq, EventId::of_canonical(job.canonical(i))));
            accepted += 1;
        }
        if accepted == 0 && extra.is_empty() {
            return Ok(outcome);
        }
        if accepted > 0 {
            self.projection.set_head_hash(prev);
        }
        let anchor = newest_checkpoint(outcome.iter().filter_map(|o| o.as_ref().ok()));
        self.commit_batch(batch, accepted, anchor, extra)?;
        {
            let mut recent = self.recent.write();
            for (seq, id) in &ids {
                recent.record(*seq, id);
            }
        }
        Ok(outcome)
    }

    /// An empty write batch with room for `records` records and the `meta` entries
    /// [`Ledger::commit_batch`] adds (head, checkpoint, anchor), so it never grows while filled.
    pub(super) fn new_batch(&self, records: usize) -> fjall::OwnedWriteBatch {
        fjall::OwnedWriteBatch::with_capacity(self.db.clone(), records + 3)
    }

    /// Writes the head, a projection checkpoint when one is due, the anchor and `extra` into
    /// `batch` (which holds `accepted` new records) and commits it, durably if configured. A
    /// failed commit poisons the ledger.
    pub(super) fn commit_batch(
        &mut self,
        mut batch: fjall::OwnedWriteBatch,
        accepted: usize,
        anchor: Option<ChainPoint>,
        extra: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), LedgerError> {
        let head = self.projection.head();
        // Taken while the batch was applied, at the state its state checkpoint event attests
        // (so an open can check it against the chain): see `checkpoint_due_at`.
        let pending = self.pending_checkpoint.take().filter(|_| accepted > 0 && self.health.divergence().is_none());
        if let Some(head) = head.filter(|_| accepted > 0) {
            batch.insert(&self.meta, META_HEAD, encode_head(&head).to_vec());
        }
        if let Some((_, value)) = &pending {
            batch.insert(&self.meta, META_CHECKPOINT, value.clone());
        }
        if let Some(a) = anchor {
            batch.insert(&self.meta, META_ANCHOR, encode_point(a.seq, &a.hash).to_vec());
        }
        for (k, v) in extra {
            batch.insert(&self.meta, k, v);
        }
        let batch = batch.durability(self.config.durable.then_some(PersistMode::SyncData));
        let started = std::time::Instant::now();
        let committed = batch.commit();
        self.metrics.ledger_write(started.elapsed(), accepted);
        if let Err(source) = committed {
            let e = self.write_failed("append batch", source);
            tracing::error!(error = %e, "durable ledger write failed; ledger poisoned");
            return Err(e);
        }
        if let Some((seq, _)) = pending {
            self.checkpoint_seq = Some(seq);
        }
        if anchor.is_some() {
            self.anchor = anchor;
        }
        self.resolve_divergence()
    }

    /// The seq from which a projection checkpoint is due again: a checkpoint rewrites the
    /// whole registry, so they are spaced by at least four times the registry's size (its cost
    /// per event stays bounded however large the registry grows, and open replays at most that
    /// many events after it). `None`: checkpoints are off.
    pub(super) fn checkpoint_due_at(&self) -> Option<u64> {
        if self.config.checkpoint_interval == 0 {
            return None;
        }
        let registry = (self.projection.state().nodes.len() + self.projection.state().services.len()) as u64;
        let spacing = self.config.checkpoint_interval.max(registry.saturating_mul(4));
        Some(self.checkpoint_seq.map_or(spacing, |c| c.saturating_add(spacing)))
    }

    /// After a batch: a state checkpoint event applied in it attested another state than this
    /// projection had. Rebuild the projection by replaying the chain; if the replay reaches the
    /// attested states, the in-memory state was at fault and is healed; if not, the chain
    /// attests a state its own records do not lead to: a state divergence, kept until an
    /// operator acts ([`Ledger::clear_divergence`]).
    fn resolve_divergence(&mut self) -> Result<(), LedgerError> {
        let Some(found) = self.projection.divergence() else { return Ok(()) };
        if self.health.divergence().is_some() {
            return Ok(());
        }
        tracing::warn!(%found, "projection differs from the state the chain attests; rebuilding it by replay");
        let head = read_head(&self.meta, &self.path)?;
        let (rebuilt, _) = replay_held(&self.ledger, &self.path, self.backfill.as_ref())?;
        if rebuilt.head().map(|h| (h.seq, h.hash)) != head {
            return Err(LedgerError::Corrupt {
                path: self.path.clone(),
                seq: head.map_or(0, |h| h.0),
                corruption: Box::new(Corruption::HeadMismatch {
                    head_seq: head.map_or(0, |h| h.0),
                    head_hash: head.map_or(ChainHash::ZERO, |h| h.1),
                    detail: "a rebuild by replay ended elsewhere".into(),
                }),
            });
        }
        *lock(&self.health.divergence) = rebuilt.divergence();
        match rebuilt.divergence() {
            None => {
                tracing::warn!(%found, "projection rebuilt by replay; it now matches every state the chain attests")
            }
            Some(d) => {
                tracing::error!(%d, "state divergence: the chain attests a state its own records do not lead to; writes are refused until an operator acts")
            }
        }
        self.projection = rebuilt;
        Ok(())
    }

    /// Where `event` committed, if it is among the newest
    /// [`crate::core::limits::RECENT_EVENTS_WINDOW`] events: a retried submit of a signed event
    /// that is already in the chain answers with this instead of committing it again.
    pub fn committed_point(&self, event: &SignedEvent) -> Result<Option<ChainPoint>, LedgerError> {
        let id = EventId::of(event);
        let Some(seq) = self.recent.read().candidate(&id) else { return Ok(None) };
        let Some(held) = self.get(seq)? else { return Ok(None) };
        Ok((EventId::of(&held.event) == id).then_some(ChainPoint { seq, hash: held.hash }))
    }

    /// The recent-events window, shared: a proposer checks it without taking the ledger's
    /// lock (see [`crate::raft::proposer::Proposer::propose`]).
    pub(crate) fn recent_events(&self) -> SharedRecent {
        self.recent.clone()
    }

    /// The state divergence this ledger found, if any: a state checkpoint event in the chain
    /// attests a state that a replay of the chain's own records does not reach. A node with one
    /// takes no writes until an operator acts.
    pub fn divergence(&self) -> Option<StateDivergence> {
        self.health.divergence()
    }

    /// An operator's acknowledgement of a state divergence (after investigating it): writes
    /// are taken again. The chain is unchanged; a later state checkpoint that differs again
    /// raises a new one.
    pub fn clear_divergence(&mut self) {
        let cleared = lock(&self.health.divergence).take();
        if let Some(d) = cleared {
            tracing::warn!(%d, "state divergence cleared by an operator");
            let state = self.projection.state().clone();
            self.projection = Projection::from_state(state);
        }
    }

    /// Overwrites the stored bytes of record `seq` (as a failing disk would), leaving the
    /// projection alone. For fault tests only.
    #[doc(hidden)]
    pub fn damage_record_for_tests(&mut self, seq: u64, bytes: &[u8]) -> Result<(), LedgerError> {
        self.ledger.insert(seq_key(seq), bytes).map_err(storage("damage record", &self.path))
    }

    /// Replaces the in-memory projection's state with `edit` applied to it, as a failing memory
    /// or a bug would. For fault tests only; nothing is written.
    #[doc(hidden)]
    pub fn damage_projection_for_tests(&mut self, edit: impl FnOnce(&mut ProjectionState)) {
        let mut state = self.projection.state().clone();
        edit(&mut state);
        self.projection = Projection::from_state(state);
    }

    /// Refuses appends to a poisoned ledger and batches over the limit.
    pub(super) fn usable(&self, events: usize) -> Result<(), LedgerError> {
        if self.health.poisoned_by().is_some() {
            return Err(LedgerError::Poisoned(self.path.clone()));
        }
        if events > limits::APPEND_BATCH_MAX {
            return Err(LedgerError::BatchTooLarge { max: limits::APPEND_BATCH_MAX, got: events });
        }
        Ok(())
    }

    /// Writes `records` over what is stored at their seqs, synced, without touching the
    /// projection or the head: only for [`crate::store::scrub::repair`], which checked that they are
    /// exactly the chain's records.
    pub(crate) fn overwrite_records(&mut self, records: &[ChainedEvent]) -> Result<(), LedgerError> {
        if self.health.poisoned_by().is_some() {
            return Err(LedgerError::Poisoned(self.path.clone()));
        }
        let mut batch = self.new_batch(records.len());
        for r in records {
            batch.insert(&self.ledger, seq_key(r.seq), record::encode_record(r));
        }
        if let Err(source) = batch.durability(Some(PersistMode::SyncData)).commit() {
            return Err(self.write_failed("repair records", source));
        }
        Ok(())
    }
}
