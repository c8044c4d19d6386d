//! The checks a store applies to a range a peer sent, shared by every [`ChainStore`]: the
//! fjall [`Ledger`] and the in-memory [`MemChain`] call these same functions, so they refuse
//! the same ranges for the same reasons (links, hashes, a yielded branch, signatures, the
//! rules, a backfill's place and network).
//!
//! [`ChainStore`]: crate::store::chain_store::ChainStore
//! [`Ledger`]: crate::store::ledger::Ledger
//! [`MemChain`]: crate::store::mem::MemChain

use crate::core::event::ChainedEvent;
use crate::core::gossip::{BackfillRange, LinkedRange};
use crate::core::limits;
use crate::core::projection::{Projection, Rejection};
use crate::core::types::ChainPoint;
use crate::store::error::{LedgerError, RangeRefusal};

/// A refusal of the range at `seq`.
fn refuse(seq: u64, reason: RangeRefusal) -> LedgerError {
    LedgerError::RangeRefused { seq, reason }
}

/// Checks that a forward range (non-empty, at most [`limits::APPEND_BATCH_MAX`] events)
/// continues `projection`'s head link by link, carries no event that starts the `refused`
/// branch, and (if `check_hashes`) that every hash is the hash of its content. A range a sync
/// session linked ([`LinkedRange`]) had its hashes checked there.
pub(crate) fn check_forward_links(
    projection: &Projection,
    refused: Option<ChainPoint>,
    range: &[ChainedEvent],
    check_hashes: bool,
) -> Result<(), LedgerError> {
    if range.len() > limits::APPEND_BATCH_MAX {
        return Err(LedgerError::BatchTooLarge { max: limits::APPEND_BATCH_MAX, got: range.len() });
    }
    let (mut expected, mut prev) = (projection.next_seq(), projection.head_hash());
    if let Some(first) = range.first() {
        if first.seq != expected {
            return Err(refuse(first.seq, RangeRefusal::NotNext { expected }));
        }
    }
    for ce in range {
        if ce.seq != expected || ce.prev_hash != prev {
            return Err(refuse(ce.seq, RangeRefusal::NotNext { expected }));
        }
        if refused.is_some_and(|r| r.seq == ce.seq && r.hash == ce.hash) {
            return Err(refuse(ce.seq, RangeRefusal::LostBranch));
        }
        if check_hashes && !ce.hash_is_valid() {
            return Err(refuse(ce.seq, RangeRefusal::BadHash));
        }
        expected += 1;
        prev = ce.hash;
    }
    Ok(())
}

/// The refusal for the first event of `events` whose signature did not verify (`verdicts`, one
/// per event, in order), if any.
pub(crate) fn check_verdicts(events: &[ChainedEvent], verdicts: &[bool]) -> Result<(), LedgerError> {
    match verdicts.iter().position(|ok| !ok).and_then(|bad| events.get(bad)) {
        Some(ev) => Err(refuse(ev.seq, RangeRefusal::BadSignature(ev.event.author))),
        None => Ok(()),
    }
}

/// Applies `range` (linked and signed, checked above) to `projection` under the rules, event
/// by event, sizing each by the canonical encoding `linked` kept when there is one; `before`
/// sees each event and the projection just before it is applied. On the first rejection
/// returns its refusal with how many events were applied before it: the caller undoes them.
pub(crate) fn apply_range(
    projection: &mut Projection,
    range: &[ChainedEvent],
    linked: Option<&LinkedRange>,
    mut before: impl FnMut(&ChainedEvent, &Projection),
) -> Result<(), (usize, LedgerError)> {
    for (i, ce) in range.iter().enumerate() {
        before(ce, projection);
        let applied = match linked.and_then(|l| l.canonical(i)) {
            Some(canonical) => projection.apply_sized(ce, canonical.len()),
            None => projection.apply(ce),
        };
        if let Err(r) = applied {
            return Err((i, refuse(ce.seq, RangeRefusal::Rejected(r))));
        }
    }
    Ok(())
}

/// Checks a backfilled range against the store before its signatures are verified: it must
/// end exactly at the store's backfill `point` (`None`: the history is complete, nothing is
/// taken below it) and every event must be of the store's network (`projection`'s).
pub(crate) fn check_backfill_place(
    projection: &Projection,
    point: Option<ChainPoint>,
    range: &BackfillRange,
) -> Result<(), LedgerError> {
    let Some(last) = range.events().last() else { return Ok(()) };
    let Some(point) = point else {
        return Err(refuse(last.seq, RangeRefusal::NotBelow { expected: None }));
    };
    if range.known() != point || last.seq != point.seq || last.hash != point.hash {
        return Err(refuse(last.seq, RangeRefusal::NotBelow { expected: Some(point.seq) }));
    }
    let fingerprint = projection.fingerprint();
    if let Some(bad) = range.events().iter().find(|e| Some(e.event.fingerprint) != fingerprint) {
        let expected = fingerprint.unwrap_or_default();
        return Err(refuse(
            bad.seq,
            RangeRefusal::Rejected(Rejection::WrongNetwork { expected, got: bad.event.fingerprint }),
        ));
    }
    Ok(())
}

/// A backfilled range reaching seq 0 must start with a genesis the rules accept: genesis fixes
/// the network, so it must be the one the store's fingerprint names (checked by
/// [`check_backfill_place`]).
pub(crate) fn check_backfill_genesis(range: &BackfillRange) -> Result<(), LedgerError> {
    match range.events().first() {
        Some(first) if first.seq == 0 => {
            Projection::new().check(&first.event).map_err(|r| refuse(0, RangeRefusal::Rejected(r)))
        }
        _ => Ok(()),
    }
}
