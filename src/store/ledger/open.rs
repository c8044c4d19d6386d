//! Opening a ledger and recovering it: the keyspaces, the durable head checked against the
//! records, the projection from the newest attested checkpoint plus a replay of the tail, and
//! a reset to empty.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::backfill::Backfill;
use super::health::LedgerHealth;
use super::meta::{
    decode_meta_checkpoint, read_backfill, read_head, read_point, LEDGER_FORMAT_MARKER, META_ANCHOR, META_BACKFILL,
    META_BACKFILL_BASE, META_CHECKPOINT, META_FORMAT, META_HEAD, META_IMPORTED, META_PRUNED, META_REFUSED_BRANCH,
    META_SEED_ANCHOR,
};
use super::storage_error::storage;
use super::{Ledger, LedgerConfig, ProjectionView};
use crate::core::keys::VerifierCache;
use crate::core::projection::Projection;
use crate::core::provisional::EventId;
use crate::core::sync::lock;
use crate::core::types::{ChainHash, ChainPoint};
use crate::store::attested::{is_attested, Unused};
use crate::store::error::{Corruption, LedgerError};
use crate::store::recent::{RecentEvents, SharedRecent};
use crate::store::record::{self, seq_key};
use crate::store::replay::{replay_range, ReplayOptions, ReplayStats, StopAt};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

/// The journal's bound: past it, fjall flushes the memtables that hold its oldest part, so the
/// journal can be dropped. fjall's default is 512 MiB; a pruned ledger writes no more than its
/// appends (retention drops tables instead of compacting), so without a tighter bound its
/// journal grew to ~400 MB over a 1M-event run keeping 100k.
pub(crate) const JOURNAL_BYTES_MAX: u64 = 96 << 20;

/// The least memtable bound of the keyspaces that take every event (the ledger's and the Raft
/// log's). fjall's default is 64 MiB: three replicas flushing that much at about the same moment
/// slowed every commit's fsync for a second or more. Smaller is not better without end: each
/// flush is one large synced write, and at 8 MiB they came often enough to land inside a prune
/// and stall its appends for 10-20 ms (benches/README.md, session 12).
pub(crate) const MEMTABLE_BYTES_MIN: u64 = 16 << 20;

/// How far above [`MEMTABLE_BYTES_MIN`] a keyspace's memtable bound may be drawn.
///
/// Replicas hold the same events, so with one bound they filled their memtables at the same
/// entry and flushed all at once: three 14 MiB writes, and every voter's commit `fsync` waited
/// behind them (the 64-writer p99.9 was 36-47 ms, the worst stalls at flushes). With the bound
/// drawn per keyspace, the replicas flush at different moments and a quorum that is not flushing
/// carries the commits (benches/README.md, session 27).
pub(crate) const MEMTABLE_BYTES_SPREAD: u64 = 8 << 20;

/// A memtable bound in `[MEMTABLE_BYTES_MIN, MEMTABLE_BYTES_MIN + MEMTABLE_BYTES_SPREAD)`, from a
/// uniform draw.
pub(crate) fn memtable_bytes(draw: u64) -> u64 {
    MEMTABLE_BYTES_MIN + draw % MEMTABLE_BYTES_SPREAD
}

/// Options of a keyspace that takes every event: its memtable bound is drawn when the keyspace is
/// created (fjall keeps it with the keyspace), so no two replicas are likely to share it (see
/// [`MEMTABLE_BYTES_SPREAD`]).
pub(crate) fn busy_keyspace() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default().max_memtable_size(memtable_bytes(rand::random()))
}

/// Opens the fjall database and its two keyspaces, refusing directories that hold no ledger
/// unless `create` is set.
pub(crate) fn open_keyspaces(path: &Path, create: bool) -> Result<(Database, Keyspace, Keyspace), LedgerError> {
    let exists = path.is_dir()
        && std::fs::read_dir(path)
            .map_err(|source| LedgerError::Io { path: path.to_path_buf(), source })?
            .next()
            .is_some();
    if !exists && !create {
        return Err(LedgerError::NotALedger(path.to_path_buf()));
    }
    // fjall 3.1 asserts on some damaged journal entries while it recovers (a panic, not an
    // error): a damaged disk must get a clear error here, not take the process down.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Database::builder(path).max_journaling_size(JOURNAL_BYTES_MAX).open()
    }));
    let db = match opened {
        Ok(r) => r.map_err(storage("open database", path))?,
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            return Err(LedgerError::Corrupt {
                path: path.to_path_buf(),
                seq: 0,
                corruption: Box::new(Corruption::Undecodable {
                    reason: format!("the storage engine's journal is damaged and could not be recovered ({why})"),
                }),
            });
        }
    };
    let ledger = db.keyspace("ledger", busy_keyspace).map_err(storage("open keyspace ledger", path))?;
    let meta = db.keyspace("meta", KeyspaceCreateOptions::default).map_err(storage("open keyspace meta", path))?;
    let marker = meta.get(META_FORMAT).map_err(storage("read format marker", path))?;
    match marker {
        Some(m) if m.as_ref() == LEDGER_FORMAT_MARKER => {}
        Some(_) => return Err(LedgerError::NotALedger(path.to_path_buf())),
        None => {
            let empty = ledger.first_key_value().is_none();
            if !empty || !create {
                return Err(LedgerError::NotALedger(path.to_path_buf()));
            }
            meta.insert(META_FORMAT, LEDGER_FORMAT_MARKER).map_err(storage("write format marker", path))?;
            db.persist(PersistMode::SyncAll).map_err(storage("persist format marker", path))?;
        }
    }
    Ok((db, ledger, meta))
}

/// The last sequence number present in the ledger keyspace.
pub(crate) fn last_seq(ledger: &Keyspace, path: &Path) -> Result<Option<u64>, LedgerError> {
    let Some(guard) = ledger.last_key_value() else { return Ok(None) };
    let key = guard.key().map_err(storage("read last key", path))?;
    record::parse_seq_key(&key).map(Some).ok_or_else(|| LedgerError::Corrupt {
        path: path.to_path_buf(),
        seq: 0,
        corruption: Box::new(Corruption::MalformedKey { len: key.len() }),
    })
}

/// Compares the durable head with the last record; reports truncation or extra records.
/// [`check_head_against_records`] for a ledger that may hold only part of its history: with
/// nothing held yet, the head must be the backfill point.
pub(crate) fn check_held_records(
    path: &Path,
    head: Option<(u64, ChainHash)>,
    last: Option<u64>,
    backfill: Option<&Backfill>,
) -> Result<(), LedgerError> {
    match (backfill, last) {
        (Some(b), None) if head == Some((b.point.seq, b.point.hash)) => Ok(()),
        _ => check_head_against_records(path, head, last),
    }
}

pub(crate) fn check_head_against_records(
    path: &Path,
    head: Option<(u64, ChainHash)>,
    last: Option<u64>,
) -> Result<(), LedgerError> {
    let corrupt =
        |seq, corruption| LedgerError::Corrupt { path: path.to_path_buf(), seq, corruption: Box::new(corruption) };
    match (head, last) {
        (None, None) => Ok(()),
        (Some((h, _)), l) if l.is_none_or(|l| l < h) => {
            Err(corrupt(l.map_or(0, |l| l + 1), Corruption::Truncated { head_seq: h, last_seq: l }))
        }
        (Some((h, hash)), Some(l)) if l > h => Err(corrupt(
            h + 1,
            Corruption::HeadMismatch { head_seq: h, head_hash: hash, detail: format!("records continue to seq {l}") },
        )),
        (None, Some(l)) => Err(corrupt(
            0,
            Corruption::HeadMismatch {
                head_seq: 0,
                head_hash: ChainHash::ZERO,
                detail: format!("no head recorded but records up to seq {l}"),
            },
        )),
        _ => Ok(()),
    }
}

/// A trusted replay of the whole history held (from genesis, or from a state-only seed's
/// state while the history below it is backfilled), without any stored checkpoint.
pub(super) fn replay_held(
    ledger: &Keyspace,
    path: &Path,
    backfill: Option<&Backfill>,
) -> Result<(Projection, ReplayStats), LedgerError> {
    let mut projection = backfill.map_or_else(Projection::new, Backfill::start);
    let stats =
        replay_range(ledger, path, &mut projection, &ReplayOptions { audit: false, stop: StopAt::End }, &|_| {})?;
    Ok((projection, stats))
}

/// The projection at the durable head: the newest readable checkpoint plus a trusted replay
/// of the tail after it. Returns it with the checkpoint's seq, where the replay started and
/// its stats.
fn load_projection(
    ledger: &Keyspace,
    meta: &Keyspace,
    path: &Path,
    head: Option<(u64, ChainHash)>,
    backfill: Option<&Backfill>,
) -> Result<(Projection, Option<u64>, u64, ReplayStats), LedgerError> {
    // Without the history below, the replay starts at the state-only seed's state.
    let mut projection = backfill.map_or_else(Projection::new, Backfill::start);
    let mut checkpoint_seq = None;
    let unused = match meta.get(META_CHECKPOINT).map_err(storage("read checkpoint", path))? {
        None => None,
        Some(bytes) => match decode_meta_checkpoint(&bytes) {
            Err(e) => Some(Unused::Unreadable(e)),
            Ok(state)
                if !state.head.is_some_and(|h| {
                    head.is_some_and(|(hs, _)| h.seq <= hs) && h.seq >= projection.next_seq().saturating_sub(1)
                }) =>
            {
                Some(Unused::OutOfRange)
            }
            Ok(state) if !is_attested(ledger, path, &state)? => Some(Unused::NotAttested),
            Ok(state) => {
                checkpoint_seq = state.head.map(|h| h.seq);
                projection = Projection::from_state(state);
                None
            }
        },
    };
    match &unused {
        None => {}
        Some(Unused::Unreadable(e)) => {
            tracing::warn!(error = %e, "projection checkpoint is unreadable; replaying from genesis")
        }
        Some(Unused::OutOfRange) => {
            tracing::warn!("projection checkpoint is outside the history held; replaying from genesis")
        }
        Some(Unused::NotAttested) => {
            tracing::info!("projection checkpoint is not attested by the chain; replaying from genesis")
        }
    }
    let from = projection.next_seq();
    let stats =
        replay_range(ledger, path, &mut projection, &ReplayOptions { audit: false, stop: StopAt::End }, &|_| {})?;
    if checkpoint_seq.is_some() && projection.divergence().is_some() {
        // A later attestation disagrees with the state built on the checkpoint: start over.
        tracing::warn!(divergence = ?projection.divergence(), "the chain disagrees with the state built on the stored checkpoint; replaying from genesis");
        let (projection, stats) = replay_held(ledger, path, backfill)?;
        return Ok((projection, None, 0, stats));
    }
    Ok((projection, checkpoint_seq, from, stats))
}

impl Ledger {
    /// Opens (or creates) the ledger at `path`: loads the newest projection checkpoint and
    /// replays the tail after it, checking every link. A corrupt checkpoint is ignored (with a
    /// warning) in favour of a full replay.
    #[tracing::instrument(skip(config), fields(path = %path.as_ref().display()))]
    pub fn open(path: impl AsRef<Path>, config: LedgerConfig) -> Result<Ledger, LedgerError> {
        let path = path.as_ref().to_path_buf();
        let started = Instant::now();
        let (db, ledger, meta) = open_keyspaces(&path, config.create)?;
        let head = read_head(&meta, &path)?;
        let backfill = read_backfill(&meta, &path)?;
        check_held_records(&path, head, last_seq(&ledger, &path)?, backfill.as_ref())?;

        let (projection, checkpoint_seq, from, stats) =
            load_projection(&ledger, &meta, &path, head, backfill.as_ref())?;
        let divergence = projection.divergence();
        if let Some(d) = divergence {
            tracing::error!(%d, "state divergence: the chain attests a state its own records do not lead to; writes are refused until an operator acts");
        }
        let anchor = read_point(&meta, &path, META_ANCHOR, "anchor")?.map(|(seq, hash)| ChainPoint { seq, hash });
        if let Some((hs, hh)) = head {
            let at = projection.head();
            if at.map(|h| (h.seq, h.hash)) != Some((hs, hh)) {
                return Err(LedgerError::Corrupt {
                    path: path.clone(),
                    seq: hs,
                    corruption: Box::new(Corruption::HeadMismatch {
                        head_seq: hs,
                        head_hash: hh,
                        detail: format!("replay ended at {:?}", at.map(|h| (h.seq, h.hash.short()))),
                    }),
                });
            }
        }
        if let (Some(expected), Some(found)) = (config.expected_network, projection.fingerprint()) {
            if expected != found {
                return Err(LedgerError::WrongNetwork { path, expected, found });
            }
        }
        tracing::info!(
            head = ?projection.head().map(|h| h.seq),
            checkpoint = ?checkpoint_seq,
            replayed_from = from,
            replayed = stats.events,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "ledger opened"
        );
        let refused = read_point(&meta, &path, META_REFUSED_BRANCH, "refused_branch")?
            .map(|(seq, hash)| ChainPoint { seq, hash });
        let view = Arc::new(ProjectionView::new(projection.clone()));
        Ledger {
            path,
            db,
            ledger,
            meta,
            projection,
            cache: VerifierCache::default(),
            metrics: crate::store::metrics::WriteMetrics::new(config.metrics),
            config,
            checkpoint_seq,
            anchor,
            refused,
            backfill,
            health: Arc::new(LedgerHealth { poisoned: Mutex::new(None), divergence: Mutex::new(divergence) }),
            view,
            chainer: None,
            chainer_tried: false,
            pending_checkpoint: None,
            recent: SharedRecent::default(),
        }
        .with_recent_events()
    }

    /// Fills the recent-events window from the newest records held (on open).
    fn with_recent_events(self) -> Result<Self, LedgerError> {
        let mut recent = RecentEvents::default();
        let Some(head) = self.projection.head() else { return Ok(self) };
        let from = (head.seq + 1).saturating_sub(crate::core::limits::RECENT_EVENTS_WINDOW).max(self.history_from());
        let mut canonical = Vec::with_capacity(512);
        for guard in self.ledger.range(seq_key(from)..) {
            let (key, value) = guard.into_inner().map_err(storage("read recent records", &self.path))?;
            let Some(seq) = record::parse_seq_key(&key) else { break };
            // Open checked every record already; one that does not decode now is left out.
            let Ok(ev) = record::decode_record(&value) else { continue };
            canonical.clear();
            ev.event.write_canonical_bytes(&mut canonical);
            recent.record(seq, &EventId::of_canonical(&canonical));
        }
        *self.recent.write() = recent;
        Ok(self)
    }

    /// Rebuilds the in-memory projection from what is on disk (checkpoint + tail).
    pub(super) fn reload_projection(&mut self) -> Result<(), LedgerError> {
        let head = read_head(&self.meta, &self.path)?;
        let (projection, checkpoint_seq, _, _) =
            load_projection(&self.ledger, &self.meta, &self.path, head, self.backfill.as_ref())?;
        self.projection = projection;
        self.checkpoint_seq = checkpoint_seq;
        Ok(())
    }

    /// Deletes every event, the head and the checkpoint, durably, and empties the projection
    /// (used before installing a snapshot whose chain does not extend ours). Other `meta`
    /// keys are kept.
    #[tracing::instrument(skip(self), fields(path = %self.path.display()))]
    pub fn reset(&mut self) -> Result<(), LedgerError> {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        for guard in self.ledger.iter() {
            let key = guard.key().map_err(storage("scan for reset", &self.path))?;
            batch.remove(&self.ledger, key);
        }
        batch.remove(&self.meta, META_HEAD);
        batch.remove(&self.meta, META_CHECKPOINT);
        batch.remove(&self.meta, META_IMPORTED);
        batch.remove(&self.meta, META_ANCHOR);
        batch.remove(&self.meta, META_SEED_ANCHOR);
        batch.remove(&self.meta, META_BACKFILL);
        batch.remove(&self.meta, META_BACKFILL_BASE);
        batch.remove(&self.meta, META_PRUNED);
        batch.commit().map_err(storage("reset", &self.path))?;
        self.backfill = None;
        self.projection = Projection::new();
        self.checkpoint_seq = None;
        self.anchor = None;
        *lock(&self.health.poisoned) = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memtable_bounds_are_spread_above_the_least() {
        assert_eq!(memtable_bytes(0), MEMTABLE_BYTES_MIN);
        for draw in [1, MEMTABLE_BYTES_SPREAD - 1, MEMTABLE_BYTES_SPREAD, u64::MAX, rand::random()] {
            let bound = memtable_bytes(draw);
            assert!((MEMTABLE_BYTES_MIN..MEMTABLE_BYTES_MIN + MEMTABLE_BYTES_SPREAD).contains(&bound), "{bound}");
        }
        // Draws a byte apart give bounds a byte apart: replicas do not share a bound unless
        // their draws agree to the byte.
        assert_eq!(memtable_bytes(12_345) + 1, memtable_bytes(12_346));
    }
}
