//! [`ChainStore`]: what a gossip adapter needs from the store of a node's chain — the view a
//! sync session starts from, serving a range, storing a range a session checked (forward or
//! backfilled) — and the local append that writes a voter's events. The fjall [`Ledger`]
//! implements it by delegating to its own methods (no behaviour of its own); the in-memory
//! [`MemChain`](crate::store::mem::MemChain) implements it for simulations of thousands of
//! nodes, with the same checks (`store::range_checks`, one code path for both).

use crate::core::event::{ChainedEvent, SignedEvent};
use crate::core::gossip::{BackfillRange, LinkedRange, LocalView};
use crate::core::projection::{ChainHead, Projection};
use crate::core::types::{ChainPoint, NetworkFingerprint};
use crate::store::error::LedgerError;
use crate::store::ledger::{AppendOutcome, Ledger};

/// The store of one node's chain, as a gossip adapter (the sync sessions' store, serve and view
/// steps) and a writer of local events use it.
///
/// **Contract:** every implementation refuses a range for the same reasons as the fjall
/// ledger, as a whole (nothing of a refused range is kept and the projection is unchanged):
/// a range that does not continue the head link by link, a bad hash, a bad signature, an event
/// the rules reject (another network's among them), an event that starts a branch the node
/// refused, a backfilled range that does not end at the backfill point.
pub trait ChainStore {
    /// The projection at the head.
    fn projection(&self) -> &Projection;

    /// The head (`None` while empty).
    fn head(&self) -> Option<ChainHead> {
        self.projection().head()
    }

    /// The network fingerprint (`None` while empty).
    fn fingerprint(&self) -> Option<NetworkFingerprint> {
        self.projection().fingerprint()
    }

    /// The newest voter-signed checkpoint event held: everything up to it is anchored.
    fn anchor(&self) -> Option<ChainPoint>;

    /// The point the next backfilled range must end at (`None`: the history is complete).
    fn backfill_point(&self) -> Option<ChainPoint>;

    /// The first sequence number whose event is held (0 with a complete history).
    fn history_from(&self) -> u64;

    /// The event at `seq`, if held.
    fn event_at(&self, seq: u64) -> Result<Option<ChainedEvent>, LedgerError>;

    /// Events `from..`, at most `max_events` of them (at least one asked for), as a peer's
    /// request is served: none when nothing is held from there (below the history held, or
    /// past the head).
    fn serve_range(&self, from: u64, max_events: u32) -> Result<Vec<ChainedEvent>, LedgerError>;

    /// Stores a range a sync session checked link by link, as a whole or not at all (see the
    /// trait's contract); returns the new head.
    fn append_linked(&mut self, range: &LinkedRange) -> Result<ChainHead, LedgerError>;

    /// Stores a range of the history below what is held, checked backwards by a session; it
    /// must end at the [backfill point](ChainStore::backfill_point). Returns the next point,
    /// `None` once the history is complete.
    fn append_backfill(&mut self, range: &BackfillRange) -> Result<Option<ChainPoint>, LedgerError>;

    /// Verifies, validates and chains local events in order (a voter's committed writes);
    /// rejected ones change nothing and are reported in place.
    fn append(&mut self, events: Vec<SignedEvent>) -> Result<AppendOutcome, LedgerError>;

    /// The view a sync session starts from: fingerprint, head event (or only the head's point
    /// when its event is not held, as after a state-only seed), backfill point and anchor; no
    /// peers, provisional events or fork evidence (the adapter adds its own).
    fn local_view(&self, pull: bool) -> Result<LocalView, LedgerError> {
        let head = self.head();
        let head_event = match head {
            Some(h) if h.seq >= self.history_from() => self.event_at(h.seq)?,
            _ => None,
        };
        Ok(LocalView {
            fingerprint: self.fingerprint(),
            head: head_event,
            head_point: head.map(|h| ChainPoint { seq: h.seq, hash: h.hash }),
            backfill: self.backfill_point(),
            anchor: self.anchor(),
            pull,
            ..Default::default()
        })
    }
}

impl ChainStore for Ledger {
    fn projection(&self) -> &Projection {
        Ledger::projection(self)
    }

    fn anchor(&self) -> Option<ChainPoint> {
        Ledger::anchor(self)
    }

    fn backfill_point(&self) -> Option<ChainPoint> {
        Ledger::backfill_point(self)
    }

    fn history_from(&self) -> u64 {
        Ledger::history_from(self)
    }

    fn event_at(&self, seq: u64) -> Result<Option<ChainedEvent>, LedgerError> {
        self.get(seq)
    }

    fn serve_range(&self, from: u64, max_events: u32) -> Result<Vec<ChainedEvent>, LedgerError> {
        match Ledger::head(self) {
            Some(h) if max_events > 0 && from <= h.seq && from >= Ledger::history_from(self) => {
                self.read_range(from, from.saturating_add(u64::from(max_events) - 1).min(h.seq))
            }
            _ => Ok(Vec::new()),
        }
    }

    fn append_linked(&mut self, range: &LinkedRange) -> Result<ChainHead, LedgerError> {
        Ledger::append_linked(self, range)
    }

    fn append_backfill(&mut self, range: &BackfillRange) -> Result<Option<ChainPoint>, LedgerError> {
        Ledger::append_backfill(self, range, &[])
    }

    fn append(&mut self, events: Vec<SignedEvent>) -> Result<AppendOutcome, LedgerError> {
        Ledger::append(self, events)
    }
}
