//! Appending a chained range received from a peer (latent sync), as a whole or not at all:
//! links, hashes, signatures and rules checked, then one atomic batch.

use super::append::{attests_due, newest_checkpoint};
use super::meta::encode_meta_checkpoint;
use super::verify::verify_chained;
use super::Ledger;
use crate::core::event::ChainedEvent;
use crate::core::projection::ChainHead;
use crate::core::provisional::EventId;
use crate::store::error::{LedgerError, RangeRefusal};
use crate::store::range_checks::{apply_range, check_forward_links, check_verdicts};
use crate::store::record::{self, encode_record_into, seq_key};

impl Ledger {
    /// Appends a chained range received from a peer (latent sync), **as a whole or not at
    /// all**: the range must continue the head link by link, every hash must be the hash of
    /// its content, every signature must verify and every event must pass the rules exactly as
    /// it did where it was committed. Then the records, head, anchor and any projection
    /// checkpoint are written in one atomic batch (synced if the ledger is durable). On
    /// refusal nothing is stored and the projection is unchanged.
    #[tracing::instrument(skip_all, fields(path = %self.path.display(), events = range.len()))]
    pub fn append_range(&mut self, range: &[ChainedEvent]) -> Result<ChainHead, LedgerError> {
        self.append_range_inner(range, None, true, None)
    }

    /// [`Ledger::append_range`] for a range a sync session already checked link by link
    /// (the hashes are not computed again; everything else is checked).
    #[tracing::instrument(skip_all, fields(path = %self.path.display(), events = range.len()))]
    pub fn append_linked(&mut self, range: &crate::core::gossip::LinkedRange) -> Result<ChainHead, LedgerError> {
        self.append_range_inner(range.events(), Some(range), false, None)
    }

    /// [`Ledger::append_linked`] with the signature verdicts [`super::verify_signatures`] gave for
    /// exactly this range (one per event, in order); a range with any `false` is refused.
    #[tracing::instrument(skip_all, fields(path = %self.path.display(), events = range.len()))]
    pub fn append_linked_verified(
        &mut self,
        range: &crate::core::gossip::LinkedRange,
        verdicts: &[bool],
    ) -> Result<ChainHead, LedgerError> {
        if verdicts.len() != range.len() {
            // Not this range's verdicts: verify here rather than trust them.
            return self.append_range_inner(range.events(), Some(range), false, None);
        }
        self.append_range_inner(range.events(), Some(range), false, Some(verdicts))
    }

    /// `linked` is the range `range` is the events of, if a session linked it: its canonical
    /// encodings size the events, and its records (when it came as records) are stored as
    /// they are.
    fn append_range_inner(
        &mut self,
        range: &[ChainedEvent],
        linked: Option<&crate::core::gossip::LinkedRange>,
        check_hashes: bool,
        verdicts: Option<&[bool]>,
    ) -> Result<ChainHead, LedgerError> {
        if self.health.poisoned_by().is_some() {
            return Err(LedgerError::Poisoned(self.path.clone()));
        }
        if range.is_empty() {
            return self
                .projection
                .head()
                .ok_or(LedgerError::RangeRefused { seq: 0, reason: RangeRefusal::NotNext { expected: 0 } });
        }
        check_forward_links(&self.projection, self.refused, range, check_hashes)?;
        let owned;
        let verdicts = match verdicts {
            Some(v) => v,
            None => {
                owned = verify_chained(&mut self.cache, range);
                &owned
            }
        };
        check_verdicts(range, verdicts)?;
        let due_at = self.checkpoint_due_at();
        let mut pending = None;
        let applied = apply_range(&mut self.projection, range, linked, |ce, projection| {
            if attests_due(&ce.event.body, projection, due_at) && projection.divergence().is_none() {
                pending = Some((ce.seq - 1, encode_meta_checkpoint(projection.state())));
            }
        });
        if let Err((done, refusal)) = applied {
            if done > 0 {
                // Undo the events of this range already applied: back to the durable head.
                self.reload_projection()?;
            }
            return Err(refusal);
        }
        let mut batch = self.new_batch(range.len());
        let mut record = Vec::with_capacity(1024);
        // Records that came with the range are exactly the record encodings of its events
        // (checked when they were decoded): stored as they are.
        let received = linked.and_then(|l| l.records()).filter(|r| r.len() == range.len());
        for (i, ce) in range.iter().enumerate() {
            match received.and_then(|r| r.get(i)) {
                Some(rec) => {
                    debug_assert_eq!(rec, record::encode_record(ce).as_slice());
                    batch.insert(&self.ledger, seq_key(ce.seq), rec);
                }
                None => {
                    record.clear();
                    encode_record_into(ce, &mut record);
                    batch.insert(&self.ledger, seq_key(ce.seq), record.as_slice());
                }
            }
        }
        let anchor = newest_checkpoint(range.iter());
        // Kept only if the state it holds was the one attested.
        self.pending_checkpoint = pending.filter(|_| self.projection.divergence().is_none());
        self.commit_batch(batch, range.len(), anchor, Vec::new())?;
        for (i, ce) in range.iter().enumerate() {
            let id = match linked.and_then(|l| l.canonical(i)) {
                Some(canonical) => EventId::of_canonical(canonical),
                None => EventId::of(&ce.event),
            };
            self.recent.write().record(ce.seq, &id);
        }
        self.projection.head().ok_or(LedgerError::Poisoned(self.path.clone()))
    }
}
