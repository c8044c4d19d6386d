//! An in-memory [`ChainStore`] for simulations of thousands of nodes in one process:
//! [`MemChain`] keeps one node's chain as shared event bodies and its own projection, and
//! [`MemShared`] holds what the simulated nodes share — each distinct event once, and the
//! verdict on its signature.
//!
//! A fjall ledger per simulated node costs about a megabyte and its own threads; a `MemChain`
//! costs its projection and one pointer per event. It is a test and bench tool, never a
//! node's store: nothing is durable.
//!
//! **Same checks as the ledger.** A range is refused for exactly the reasons the fjall
//! [`Ledger`](crate::store::ledger::Ledger) refuses it, by the same code
//! (`store::range_checks`): links and hashes, a refused branch, every signature
//! (through the one validity rule of [`crate::core::keys`]), the rules applied to the node's
//! own projection (network, admission, semantics), all or nothing.
//!
//! **Signatures are verified once per process.** The nodes of a simulation share a
//! [`MemShared`]: an event whose signature verified is kept there under its chain hash, and a
//! node that receives an event *equal* to a kept one (every field, the signature among them)
//! takes the kept copy and its verdict instead of verifying again. That is sound because a
//! verdict is a function of the event alone; a forged event differs from every kept one and is
//! verified (and refused) like any other. Nothing whose signature failed is kept.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::core::event::{ChainedEvent, SignedEvent};
use crate::core::gossip::{BackfillRange, LinkedRange};
use crate::core::keys::{SigningBatch, VerifierCache};
use crate::core::limits;
use crate::core::projection::{ChainHead, Projection, Rejection};
use crate::core::sync::lock;
use crate::core::types::{ChainHash, ChainPoint};
use crate::store::chain_store::ChainStore;
use crate::store::error::{Corruption, LedgerError};
use crate::store::ledger::AppendOutcome;
use crate::store::range_checks::{apply_range, check_backfill_place, check_forward_links, check_verdicts};
use crate::store::verified::VerifiedEvents;

/// What the simulated nodes of one process share: every distinct event whose signature
/// verified, once, and the verifying-key cache. See the module doc.
#[derive(Debug, Default)]
pub struct MemShared {
    inner: Mutex<SharedInner>,
}

#[derive(Debug, Default)]
struct SharedInner {
    /// Events whose signature verified, by chain hash.
    events: HashMap<ChainHash, Arc<ChainedEvent>>,
    keys: VerifierCache,
    /// Signatures verified (not taken from `events`).
    verified: u64,
}

impl MemShared {
    /// An empty share, for the nodes of one simulation.
    pub fn new() -> Arc<MemShared> {
        Arc::new(MemShared::default())
    }

    /// How many distinct events are kept (each one's signature verified).
    pub fn events_kept(&self) -> usize {
        lock(&self.inner).events.len()
    }

    /// How many signatures were verified (an event received again is not verified again).
    pub fn signatures_verified(&self) -> u64 {
        lock(&self.inner).verified
    }

    /// The kept copy of each event of `events` whose signature verifies, `None` for each whose
    /// signature does not; `canonical(i)` is the canonical encoding of event `i` when the
    /// caller has it (it is encoded otherwise). Events equal to kept ones are not verified
    /// again; the others are verified in one batch and kept if they verify.
    fn admit<'a>(
        &self,
        events: &[ChainedEvent],
        canonical: impl Fn(usize) -> Option<&'a [u8]>,
    ) -> Vec<Option<Arc<ChainedEvent>>> {
        let mut inner = lock(&self.inner);
        let mut out: Vec<Option<Arc<ChainedEvent>>> = Vec::with_capacity(events.len());
        let mut missing = Vec::new();
        for (i, ce) in events.iter().enumerate() {
            match inner.events.get(&ce.hash) {
                Some(kept) if **kept == *ce => out.push(Some(kept.clone())),
                _ => {
                    out.push(None);
                    missing.push(i);
                }
            }
        }
        if missing.is_empty() {
            return out;
        }
        let mut batch = SigningBatch::with_capacity(missing.len());
        for &i in &missing {
            let ce = &events[i];
            match canonical(i) {
                Some(c) => batch.push_canonical(ce.event.author, ce.event.signature, c),
                None => batch.push_event(&ce.event),
            }
        }
        let verdicts = batch.verify(&mut inner.keys);
        inner.verified += missing.len() as u64;
        for (&i, ok) in missing.iter().zip(verdicts) {
            if ok {
                let kept = inner.events.entry(events[i].hash).or_insert_with(|| Arc::new(events[i].clone())).clone();
                // A different event under a kept hash (its hash unchecked) is not shared.
                out[i] = Some(if *kept == events[i] { kept } else { Arc::new(events[i].clone()) });
            }
        }
        out
    }

    /// Keeps `event`, whose signature the caller verified, and returns the kept copy.
    fn keep_verified(&self, event: ChainedEvent) -> Arc<ChainedEvent> {
        let mut inner = lock(&self.inner);
        let kept = inner.events.entry(event.hash).or_insert_with(|| Arc::new(event.clone())).clone();
        if *kept == event {
            kept
        } else {
            Arc::new(event)
        }
    }
}

/// One simulated node's chain in memory: its events (shared with the other nodes through
/// [`MemShared`]), its projection, anchor and refused branch. Its history is always complete
/// from genesis: it is never loaded from a state-only seed, so it takes no backfilled range
/// (refused as below a complete history, as the ledger refuses one). See the module doc.
#[derive(Debug)]
pub struct MemChain {
    shared: Arc<MemShared>,
    events: Vec<Arc<ChainedEvent>>,
    projection: Projection,
    anchor: Option<ChainPoint>,
    refused: Option<ChainPoint>,
}

impl MemChain {
    /// An empty chain whose events are kept in `shared`.
    pub fn new(shared: Arc<MemShared>) -> MemChain {
        MemChain { shared, events: Vec::new(), projection: Projection::new(), anchor: None, refused: None }
    }

    /// Refuses from now on every range that carries the event at `first` (the first event of
    /// a branch this node yielded), as [`Ledger::refuse_branch`](crate::store::ledger::Ledger::refuse_branch).
    pub fn refuse_branch(&mut self, first: ChainPoint) {
        self.refused = Some(first);
    }

    /// The events held, in order from genesis.
    pub fn events(&self) -> impl Iterator<Item = &ChainedEvent> {
        self.events.iter().map(|e| &**e)
    }

    /// A range (linked by a session, or not: then every hash is checked) after the same
    /// checks as [`Ledger::append_range`](crate::store::ledger::Ledger::append_range).
    fn store_range(
        &mut self,
        range: &[ChainedEvent],
        linked: Option<&LinkedRange>,
        check_hashes: bool,
    ) -> Result<ChainHead, LedgerError> {
        if range.is_empty() {
            return self.projection.head().ok_or(LedgerError::RangeRefused {
                seq: 0,
                reason: crate::store::error::RangeRefusal::NotNext { expected: 0 },
            });
        }
        check_forward_links(&self.projection, self.refused, range, check_hashes)?;
        let kept = self.shared.admit(range, |i| linked.and_then(|l| l.canonical(i)));
        let verdicts: Vec<bool> = kept.iter().map(Option::is_some).collect();
        check_verdicts(range, &verdicts)?;
        if let Err((done, refusal)) = apply_range(&mut self.projection, range, linked, |_, _| {}) {
            if done > 0 {
                self.rebuild_projection()?;
            }
            return Err(refusal);
        }
        self.events.extend(kept.into_iter().flatten());
        if let Some(a) = range.iter().rev().find(|e| e.event.body.is_checkpoint()) {
            self.anchor = Some(ChainPoint { seq: a.seq, hash: a.hash });
        }
        self.projection.head().ok_or(LedgerError::RangeRefused {
            seq: 0,
            reason: crate::store::error::RangeRefusal::NotNext { expected: 0 },
        })
    }

    /// [`ChainStore::append_linked`] of a range no session linked: every hash is checked too.
    pub fn append_range(&mut self, range: &[ChainedEvent]) -> Result<ChainHead, LedgerError> {
        self.store_range(range, None, true)
    }

    /// The projection again from the events held (after a refused range was partly applied).
    /// Every held event passed the rules in this order once, so this cannot fail but on a
    /// broken invariant, reported as corruption.
    fn rebuild_projection(&mut self) -> Result<(), LedgerError> {
        let mut projection = Projection::new();
        for ce in &self.events {
            projection.apply(ce).map_err(|rejection| LedgerError::Corrupt {
                path: PathBuf::from(":memory:"),
                seq: ce.seq,
                corruption: Box::new(Corruption::Rejected { rejection }),
            })?;
        }
        self.projection = projection;
        Ok(())
    }
}

impl ChainStore for MemChain {
    fn projection(&self) -> &Projection {
        &self.projection
    }

    fn anchor(&self) -> Option<ChainPoint> {
        self.anchor
    }

    fn backfill_point(&self) -> Option<ChainPoint> {
        None
    }

    fn history_from(&self) -> u64 {
        0
    }

    fn event_at(&self, seq: u64) -> Result<Option<ChainedEvent>, LedgerError> {
        let at = usize::try_from(seq).ok().and_then(|i| self.events.get(i));
        Ok(at.map(|e| (**e).clone()))
    }

    fn serve_range(&self, from: u64, max_events: u32) -> Result<Vec<ChainedEvent>, LedgerError> {
        let start = usize::try_from(from).unwrap_or(usize::MAX).min(self.events.len());
        let end = start.saturating_add(max_events as usize).min(self.events.len());
        Ok(self.events[start..end].iter().map(|e| (**e).clone()).collect())
    }

    fn append_linked(&mut self, range: &LinkedRange) -> Result<ChainHead, LedgerError> {
        self.store_range(range.events(), Some(range), false)
    }

    fn append_backfill(&mut self, range: &BackfillRange) -> Result<Option<ChainPoint>, LedgerError> {
        if range.is_empty() {
            return Ok(None);
        }
        // The history is complete: refused as the ledger refuses it (no backfill point).
        check_backfill_place(&self.projection, None, range)?;
        Ok(None)
    }

    fn append(&mut self, events: Vec<SignedEvent>) -> Result<AppendOutcome, LedgerError> {
        if events.len() > limits::APPEND_BATCH_MAX {
            return Err(LedgerError::BatchTooLarge { max: limits::APPEND_BATCH_MAX, got: events.len() });
        }
        let (verified, _) = {
            let mut inner = lock(&self.shared.inner);
            inner.verified += events.len() as u64;
            VerifiedEvents::verify(events, &mut inner.keys)
        };
        let mut outcome = Vec::with_capacity(verified.len());
        verified.for_each_ref(|event, canonical, signature_ok| {
            let linked = if signature_ok {
                self.projection.append_canonical_ref(event, canonical)
            } else {
                // Check the rules first so a forged event of another network says so.
                Err(self.projection.check(event).err().unwrap_or(Rejection::BadSignature(event.author)))
            };
            outcome.push(linked.map(|(seq, prev_hash, hash)| {
                let ce = ChainedEvent { seq, prev_hash, hash, event: event.clone() };
                if ce.event.body.is_checkpoint() {
                    self.anchor = Some(ChainPoint { seq, hash });
                }
                let kept = self.shared.keep_verified(ce.clone());
                self.events.push(kept);
                ce
            }));
        });
        Ok(outcome)
    }
}
