//! Reading a ledger: single events and ranges (checked), raw records for export and gossip,
//! replays from genesis, the attested checkpoint, and a [`History`] handle that replays the
//! stored history apart from the ledger.

use std::path::PathBuf;

use super::backfill::Backfill;
use super::meta::read_stored_checkpoint;
use super::storage_error::storage;
use super::Ledger;
use crate::core::event::ChainedEvent;
use crate::core::projection::{Projection, ProjectionState};
use crate::store::attested::is_attested;
use crate::store::error::{Corruption, LedgerError};
use crate::store::record::{self, seq_key};
use crate::store::replay::{replay_range, ReplayOptions, ReplayStats, StopAt};
use fjall::Keyspace;

impl Ledger {
    /// The stored projection checkpoint, if the chain attests it: the record after its seq is
    /// a signed state checkpoint event carrying its digest
    /// (see `store/attested.rs`), and that record is held. What a
    /// state-only seed starts from. `None` when there is no such state (a young ledger, one
    /// written before states were attested, or a stored checkpoint the chain does not vouch for).
    pub fn attested_checkpoint(&self) -> Result<Option<ProjectionState>, LedgerError> {
        let Some(Ok(state)) = read_stored_checkpoint(&self.meta, &self.path)? else { return Ok(None) };
        let (Some(at), Some(head)) = (state.head, self.projection.head()) else { return Ok(None) };
        if at.seq >= head.seq || at.seq + 1 < self.history_from() {
            return Ok(None);
        }
        Ok(is_attested(&self.ledger, &self.path, &state)?.then_some(state))
    }

    /// Reads the event at `seq`, validated (decoded and hash-checked, not linked).
    pub fn get(&self, seq: u64) -> Result<Option<ChainedEvent>, LedgerError> {
        let Some(bytes) = self.ledger.get(seq_key(seq)).map_err(storage("read record", &self.path))? else {
            return Ok(None);
        };
        let corrupt =
            |corruption| LedgerError::Corrupt { path: self.path.clone(), seq, corruption: Box::new(corruption) };
        let ev = record::decode_record(&bytes).map_err(|e| corrupt(e.into()))?;
        if ev.seq != seq {
            return Err(corrupt(Corruption::Misplaced { key: seq, claimed: ev.seq }));
        }
        if !ev.hash_is_valid() {
            let computed = crate::core::event::chain_hash(&ev.prev_hash, ev.seq, &ev.event.canonical_bytes());
            return Err(corrupt(Corruption::HashMismatch { stored: ev.hash, computed }));
        }
        Ok(Some(ev))
    }

    /// Reads events `from..=to` (inclusive, clipped to the head), checking every record,
    /// key and link. Memory is bounded by the range asked for; callers page large ranges.
    pub fn read_range(&self, from: u64, to: u64) -> Result<Vec<ChainedEvent>, LedgerError> {
        self.held_from(from)?;
        crate::store::replay::read_verified_range(&self.ledger, &self.path, from, to)
    }

    /// Refuses reads that start below the history this ledger holds.
    fn held_from(&self, from: u64) -> Result<(), LedgerError> {
        refuse_unheld(self.backfill.as_ref(), &self.path, from)
    }

    /// Calls `f(seq, record bytes)` for every stored record of `from..=to` (clipped to the
    /// head), as it is on disk, after checking only that the keys are dense and each value
    /// carries the ledger record tag. For copying records verbatim (seed export); readers
    /// that interpret records use [`Ledger::read_range`]. Returns how many were visited.
    #[tracing::instrument(level = "debug", skip(self, f), fields(path = %self.path.display()))]
    pub fn visit_raw_range(
        &self,
        from: u64,
        to: u64,
        f: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
    ) -> Result<u64, LedgerError> {
        let head = self.projection.head().map(|h| h.seq);
        let Some(to) = held_range(head, self.backfill.as_ref(), &self.path, from, to)? else { return Ok(0) };
        visit_records(self.ledger.range(seq_key(from)..=seq_key(to)), from, to, &self.path, f)
    }

    /// Up to `max_events` stored records from `from` on, as they are on disk, stopping before
    /// their total size would exceed `max_bytes` (at least one record is returned if `from` is
    /// held). Empty if `from` is past the head. For serving ranges to gossip peers.
    pub fn read_raw_batch(&self, from: u64, max_events: usize, max_bytes: usize) -> Result<Vec<Vec<u8>>, LedgerError> {
        let Some(head) = self.projection.head() else { return Ok(Vec::new()) };
        // Nothing to serve below the history we hold (the peer asks someone else).
        if from > head.seq || max_events == 0 || from < self.history_from() {
            return Ok(Vec::new());
        }
        let to = head.seq.min(from.saturating_add(max_events as u64 - 1));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let full = std::io::ErrorKind::WriteZero;
        let r = self.visit_raw_range(from, to, |_, rec| {
            if !out.is_empty() && bytes + rec.len() > max_bytes {
                return Err(std::io::Error::new(full, "batch full"));
            }
            bytes += rec.len();
            out.push(rec.to_vec());
            Ok(())
        });
        match r {
            Ok(_) => Ok(out),
            Err(LedgerError::Io { source, .. }) if source.kind() == full => Ok(out),
            Err(e) => Err(e),
        }
    }

    /// [`Ledger::visit_raw_range`], collected.
    pub fn read_raw_range(&self, from: u64, to: u64) -> Result<Vec<Vec<u8>>, LedgerError> {
        let mut out = Vec::new();
        self.visit_raw_range(from, to, |_, r| {
            out.push(r.to_vec());
            Ok(())
        })?;
        Ok(out)
    }

    /// Replays this ledger from genesis into a fresh projection (audit or trusted).
    pub fn replay(&self, options: &ReplayOptions) -> Result<(Projection, ReplayStats), LedgerError> {
        self.held_from(0)?;
        let mut p = Projection::new();
        let stats = replay_range(&self.ledger, &self.path, &mut p, options, &|_| {})?;
        Ok((p, stats))
    }

    /// A handle that replays this ledger's stored history without holding the ledger: records
    /// at or below the head are never rewritten (only a reset deletes them, and a replay that
    /// races one fails with an error), so views of past points can be built while appends go on.
    pub fn history(&self) -> History {
        History { ledger: self.ledger.clone(), path: self.path.clone(), backfill: self.backfill.clone() }
    }
}

/// Replays a ledger's stored history apart from the [`Ledger`] (see [`Ledger::history`]).
#[derive(Clone)]
pub struct History {
    ledger: Keyspace,
    path: PathBuf,
    backfill: Option<Backfill>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("path", &self.path).finish_non_exhaustive()
    }
}

impl History {
    /// Continues `projection` (empty, or the projection of an earlier point of this chain)
    /// with the stored events up to and including `seq`, checking every link.
    #[tracing::instrument(level = "debug", skip(self, projection), fields(path = %self.path.display(), from = projection.next_seq()))]
    pub fn replay_to(&self, projection: &mut Projection, seq: u64) -> Result<ReplayStats, LedgerError> {
        if let Some(b) = self.backfill.as_ref().filter(|b| projection.next_seq() <= b.point.seq) {
            // Below the history held: start at the state-only seed's state, if it is not past `seq`.
            let base = b.base.head.map_or(0, |h| h.seq);
            if projection.head().is_some() || base > seq {
                return Err(b.not_held(&self.path));
            }
            *projection = b.start();
        }
        replay_range(
            &self.ledger,
            &self.path,
            projection,
            &ReplayOptions { audit: false, stop: StopAt::Seq(seq) },
            &|_| {},
        )
    }
}

/// `from..=to` clipped to `head`: the last seq to read, `None` when there is nothing to read,
/// or the error for a start below the history held (what `backfill` says of it).
pub(super) fn held_range(
    head: Option<u64>,
    backfill: Option<&Backfill>,
    path: &std::path::Path,
    from: u64,
    to: u64,
) -> Result<Option<u64>, LedgerError> {
    let Some(to) = head.map(|h| to.min(h)).filter(|to| from <= *to) else { return Ok(None) };
    refuse_unheld(backfill, path, from)?;
    Ok(Some(to))
}

/// The error for a read from `from` when that is below the history held (what `backfill`
/// says of it), else nothing.
fn refuse_unheld(backfill: Option<&Backfill>, path: &std::path::Path, from: u64) -> Result<(), LedgerError> {
    match backfill {
        Some(b) if from < b.held_from() => Err(b.not_held(path)),
        _ => Ok(()),
    }
}

/// The loop of [`Ledger::visit_raw_range`] over `records` (the stored records of
/// `from..=to`, from the keyspace or a snapshot of it): checks that the keys are dense and
/// each value carries the ledger record tag, and calls `f` on each.
pub(super) fn visit_records(
    records: impl Iterator<Item = fjall::Guard>,
    from: u64,
    to: u64,
    path: &std::path::Path,
    mut f: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> Result<u64, LedgerError> {
    let mut expected = from;
    for guard in records {
        let (k, v) = guard.into_inner().map_err(storage("read record", path))?;
        let corrupt = |corruption| LedgerError::Corrupt {
            path: path.to_path_buf(),
            seq: expected,
            corruption: Box::new(corruption),
        };
        match record::parse_seq_key(&k) {
            Some(seq) if seq == expected => {}
            Some(seq) => return Err(corrupt(Corruption::Gap { expected, found: seq })),
            None => return Err(corrupt(Corruption::MalformedKey { len: k.len() })),
        }
        if v.first() != Some(&record::RECORD_FORMAT_V1) {
            return Err(corrupt(Corruption::Undecodable { reason: "not a ledger record".into() }));
        }
        f(expected, &v).map_err(|source| LedgerError::Io { path: path.to_path_buf(), source })?;
        expected += 1;
    }
    if expected != to + 1 {
        return Err(LedgerError::Corrupt {
            path: path.to_path_buf(),
            seq: expected,
            corruption: Box::new(Corruption::Truncated { head_seq: to, last_seq: expected.checked_sub(1) }),
        });
    }
    Ok(expected - from)
}
