//! Backfill below a known point: [`BackfillRange`], a range [`verify_backward`] checked link by
//! link back from a point whose hash we trust (a seed's head), down towards genesis.

use super::Violation;
use crate::core::event::ChainedEvent;
use crate::core::types::{ChainHash, ChainPoint, NetworkFingerprint};

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
