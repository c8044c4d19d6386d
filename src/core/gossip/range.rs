//! Forward ranges checked link by link: [`LinkedRange`] (contiguous, each `prev_hash` the hash
//! before it, each hash recomputed, one network), the records it may have arrived as, and the
//! session's check that a range continues its tail.

use super::{SyncSession, Violation};
use crate::core::event::{chain_hash, ChainedEvent};
use crate::core::types::ChainHash;

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
    pub(super) events: Vec<ChainedEvent>,
    /// Canonical encodings of `events`, back to back.
    pub(super) canonical: Vec<u8>,
    /// End offset of each event's encoding in `canonical`.
    pub(super) ends: Vec<usize>,
    /// The ledger record of each event, if the range came as records.
    pub(super) records: Option<RangeRecords>,
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
    pub(super) fn skip(mut self, n: usize) -> Self {
        self.spans.drain(..n.min(self.spans.len()));
        self
    }
}

impl SyncSession {
    /// Checks that `events` continue our tail (or the head of a state-only ledger) link by
    /// link, in our network. Returns their canonical encodings (back to back, with the end
    /// offset of each).
    pub(super) fn verify_links(&self, events: &[ChainedEvent]) -> Result<(Vec<u8>, Vec<usize>), Violation> {
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
}
