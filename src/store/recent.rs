//! The ids of a ledger's newest events, so that a retried submit of an event that is already
//! committed answers where it committed instead of committing it a second time.
//!
//! Kept in memory for the newest [`RECENT_EVENTS_WINDOW`] seqs, keyed by the first 8 bytes of
//! the event id (8 + 8 bytes an entry, ~2 MB at the default window); a hit names a seq whose
//! record the caller reads to compare the whole id, so a prefix collision is only a miss.
//! Rebuilt on open from the held records. Used before proposing, never by the rules: whether
//! an event is applied never depends on it, so replicas cannot diverge over it.

use std::collections::VecDeque;

use crate::core::limits::RECENT_EVENTS_WINDOW;
use crate::core::provisional::EventId;
use crate::core::sync;

/// The window shared between the ledger (which records) and a proposer (which looks up)
/// behind its own short lock, so a lookup never waits for an apply holding the ledger.
#[derive(Clone, Debug, Default)]
pub(crate) struct SharedRecent(std::sync::Arc<std::sync::RwLock<RecentEvents>>);

impl SharedRecent {
    /// For looking up.
    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, RecentEvents> {
        sync::read(&self.0)
    }

    /// For recording.
    pub(crate) fn write(&self) -> std::sync::RwLockWriteGuard<'_, RecentEvents> {
        sync::write(&self.0)
    }
}

/// See the module doc.
#[derive(Debug, Default)]
pub(crate) struct RecentEvents {
    by_key: foldhash::HashMap<u64, u64>,
    /// `(seq, key)` in seq order, for eviction.
    order: VecDeque<(u64, u64)>,
}

fn key(id: &EventId) -> u64 {
    let mut k = [0u8; 8];
    k.copy_from_slice(&id.0[..8]);
    u64::from_le_bytes(k)
}

impl RecentEvents {
    /// Remembers that the event `id` committed at `seq` (seqs given in increasing order);
    /// forgets what falls out of the window.
    pub(crate) fn record(&mut self, seq: u64, id: &EventId) {
        let k = key(id);
        self.by_key.insert(k, seq);
        self.order.push_back((seq, k));
        while let Some(&(old, old_key)) = self.order.front() {
            if old + RECENT_EVENTS_WINDOW > seq {
                break;
            }
            self.order.pop_front();
            if self.by_key.get(&old_key) == Some(&old) {
                self.by_key.remove(&old_key);
            }
        }
    }

    /// The seq where an event with this id may have committed (compare the whole id there).
    pub(crate) fn candidate(&self, id: &EventId) -> Option<u64> {
        self.by_key.get(&key(id)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> EventId {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&n.to_le_bytes());
        b[8] = 1;
        EventId(b)
    }

    #[test]
    fn remembers_the_window_and_forgets_what_falls_out() {
        let mut r = RecentEvents::default();
        for seq in 0..RECENT_EVENTS_WINDOW + 10 {
            r.record(seq, &id(seq));
        }
        assert_eq!(r.candidate(&id(9)), None, "out of the window");
        assert_eq!(r.candidate(&id(10)), Some(10));
        assert_eq!(r.candidate(&id(RECENT_EVENTS_WINDOW + 9)), Some(RECENT_EVENTS_WINDOW + 9));
        assert_eq!(r.order.len() as u64, RECENT_EVENTS_WINDOW);
    }
}
