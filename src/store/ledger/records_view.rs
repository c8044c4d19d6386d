//! A consistent view of a ledger's records, read without the ledger's lock
//! ([`RecordsView`]): what retention's planning and archive read a whole history through, so
//! a writer never waits for them.
//!
//! A page read under the read lock held writers up whenever the reading thread was
//! preempted while holding it (4 ms, a scheduler slice, on two busy cores). The view is a
//! fjall snapshot taken under a brief read lock: it reads the records as they were then,
//! whatever is appended, pruned or compacted afterwards, and keeps what it can see from being
//! dropped until it is dropped, so it is kept only for one pass.

use std::path::PathBuf;

use fjall::{Keyspace, Readable, Snapshot};

use super::backfill::Backfill;
use super::read::{held_range, visit_records};
use super::Ledger;
use crate::store::error::LedgerError;
use crate::store::record::seq_key;

/// The records a ledger held when the view was taken (see the module doc).
pub struct RecordsView {
    snapshot: Snapshot,
    ledger: Keyspace,
    path: PathBuf,
    head: Option<u64>,
    backfill: Option<Backfill>,
}

impl Ledger {
    /// A view of the records held now, to read without this ledger's lock (see
    /// [`RecordsView`]). Taking it costs a snapshot handle.
    pub fn records_view(&self) -> RecordsView {
        RecordsView {
            snapshot: self.db.snapshot(),
            ledger: self.ledger.clone(),
            path: self.path.clone(),
            head: self.head().map(|h| h.seq),
            backfill: self.backfill.clone(),
        }
    }
}

impl RecordsView {
    /// [`Ledger::visit_raw_range`] on the records the view holds: `f(seq, record bytes)` for
    /// every record of `from..=to` (clipped to the head the view was taken at), after the
    /// same checks; a start below the history held is the same error.
    #[tracing::instrument(level = "debug", skip(self, f), fields(path = %self.path.display()))]
    pub fn visit_raw_range(
        &self,
        from: u64,
        to: u64,
        f: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
    ) -> Result<u64, LedgerError> {
        let Some(to) = held_range(self.head, self.backfill.as_ref(), &self.path, from, to)? else { return Ok(0) };
        visit_records(self.snapshot.range(&self.ledger, seq_key(from)..=seq_key(to)), from, to, &self.path, f)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::synth::{Synth, SynthConfig};

    /// A view reads the records held when it was taken, with the ledger's own checks, while
    /// the ledger goes on taking appends; its head is the one it was taken at.
    #[test]
    fn a_view_reads_the_records_held_when_it_was_taken() {
        let (_dir, mut l) = crate::store::ledger::scratch();
        let mut synth = Synth::new(SynthConfig::default());
        l.append(synth.next_chunk(300)).expect("append");
        let view = l.records_view();
        l.append(synth.next_chunk(200)).expect("append more");
        let mut from_view = Vec::new();
        let n = view
            .visit_raw_range(0, 10_000, |seq, rec| {
                from_view.push((seq, rec.to_vec()));
                Ok(())
            })
            .expect("reads");
        assert_eq!(n, 300, "clipped to the head the view was taken at, not the ledger's");
        let mut from_ledger = Vec::new();
        l.visit_raw_range(0, 299, |seq, rec| {
            from_ledger.push((seq, rec.to_vec()));
            Ok(())
        })
        .expect("reads");
        assert_eq!(from_view, from_ledger, "the same records, byte for byte");
        assert_eq!(view.visit_raw_range(400, 410, |_, _| Ok(())).expect("past its head"), 0);
    }
}
