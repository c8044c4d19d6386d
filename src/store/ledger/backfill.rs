//! Seeds and the history below them: loading an attested history or a state-only seed's state
//! into an empty ledger, writing a checkpoint, and backfilling the history below a state-only
//! seed's head down to genesis.

use std::path::Path;

use super::meta::{
    encode_head, encode_meta_checkpoint, encode_point, META_BACKFILL, META_BACKFILL_BASE, META_CHECKPOINT, META_HEAD,
};
use super::open::last_seq;
use super::storage_error::storage;
use super::verify::verify_chained;
use super::Ledger;
use crate::core::limits;
use crate::core::projection::{ChainHead, Projection, ProjectionState};
use crate::core::types::ChainPoint;
use crate::store::error::LedgerError;
use crate::store::range_checks::{check_backfill_genesis, check_backfill_place, check_verdicts};
use crate::store::record::{encode_record_into, seq_key};
use fjall::PersistMode;

/// What a ledger with an incomplete history knows below what it holds: loaded from a
/// state-only seed (and backfilling), or pruned under a retention policy (`archives` names where
/// the history below went; such a ledger does not backfill).
#[derive(Clone, Debug)]
pub(crate) struct Backfill {
    /// The next backfilled range must end here (the last event not held).
    pub(crate) point: ChainPoint,
    /// The projection at `point`'s seq or above (a state-only seed's head, or the attested state
    /// a prune kept).
    pub(crate) base: std::sync::Arc<ProjectionState>,
    /// Where pruned history was archived, oldest first (empty: never pruned).
    pub(crate) archives: std::sync::Arc<[std::path::PathBuf]>,
}

impl Backfill {
    /// The first sequence number whose record is held.
    pub(crate) fn held_from(&self) -> u64 {
        self.point.seq + 1
    }

    /// Whether the history below was pruned (then it is not backfilled).
    pub(crate) fn pruned(&self) -> bool {
        !self.archives.is_empty()
    }

    /// The error for a read below what is held, in the ledger at `path`.
    pub(crate) fn not_held(&self, path: &Path) -> LedgerError {
        if self.pruned() {
            LedgerError::HistoryArchived {
                path: path.to_path_buf(),
                held_from: self.held_from(),
                archives: self.archives.to_vec(),
            }
        } else {
            LedgerError::HistoryIncomplete { path: path.to_path_buf(), held_from: self.held_from() }
        }
    }

    /// The projection a replay of the held events starts from: the state-only seed's.
    pub(crate) fn start(&self) -> Projection {
        Projection::from_state((*self.base).clone())
    }
}

impl Ledger {
    /// Loads an attested history into an **empty** ledger: `records` are stored verbatim as
    /// seqs `0..`, and `state` (the projection at their head) becomes the projection and its
    /// checkpoint, in one final synced batch with the head. For a seed whose exact bytes a
    /// quorum of voters signed; the records are checked again whenever they are read.
    #[tracing::instrument(level = "info", skip_all, fields(path = %self.path.display(), records = records.len()))]
    pub fn load_attested(&mut self, records: &[&[u8]], state: ProjectionState) -> Result<ChainHead, LedgerError> {
        if self.health.poisoned_by().is_some() {
            return Err(LedgerError::Poisoned(self.path.clone()));
        }
        if self.projection.head().is_some() {
            return Err(LedgerError::Io {
                path: self.path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "load_attested needs an empty ledger"),
            });
        }
        let head = state.head.ok_or_else(|| LedgerError::Io {
            path: self.path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "the attested state has no head"),
        })?;
        if records.len() as u64 != head.seq + 1 {
            return Err(LedgerError::Io {
                path: self.path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "record count does not match the state's head",
                ),
            });
        }
        let fail = |this: &mut Ledger, source| this.write_failed("load attested records", source);
        let chunks: Vec<&[&[u8]]> = records.chunks(limits::APPEND_BATCH_MAX).collect();
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let base = (i * limits::APPEND_BATCH_MAX) as u64;
            let mut batch = self.db.batch();
            for (k, rec) in chunk.iter().enumerate() {
                batch.insert(&self.ledger, seq_key(base + k as u64), rec.to_vec());
            }
            if i + 1 == n {
                batch.insert(&self.meta, META_HEAD, encode_head(&head).to_vec());
                batch.insert(&self.meta, META_CHECKPOINT, encode_meta_checkpoint(&state));
                batch = batch.durability(Some(PersistMode::SyncData));
            }
            if let Err(source) = batch.commit() {
                return Err(fail(self, source));
            }
        }
        self.projection = Projection::from_state(state);
        self.checkpoint_seq = Some(head.seq);
        Ok(head)
    }

    /// Writes a projection checkpoint now (durably), e.g. before a clean shutdown.
    pub fn write_checkpoint(&mut self) -> Result<(), LedgerError> {
        let Some(head) = self.projection.head() else { return Ok(()) };
        if self.checkpoint_seq == Some(head.seq) {
            return Ok(());
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.meta, META_CHECKPOINT, encode_meta_checkpoint(self.projection.state()));
        batch.commit().map_err(storage("write checkpoint", &self.path))?;
        self.checkpoint_seq = Some(head.seq);
        Ok(())
    }

    /// Loads the state of a **state-only** seed (its projection at its head, no events) into
    /// an **empty** ledger: the state becomes the projection, the checkpoint and the head, and
    /// the head becomes the backfill point — the ledger knows the head's hash but holds no
    /// event. New events extend it as usual; the history below is filled in backwards with
    /// [`Ledger::append_backfill`]. One synced batch.
    #[tracing::instrument(level = "info", skip_all, fields(path = %self.path.display()))]
    pub fn load_state_only(&mut self, state: ProjectionState) -> Result<ChainHead, LedgerError> {
        if self.health.poisoned_by().is_some() {
            return Err(LedgerError::Poisoned(self.path.clone()));
        }
        let invalid = |path: &Path, why: &str| LedgerError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string()),
        };
        if self.projection.head().is_some() || last_seq(&self.ledger, &self.path)?.is_some() {
            return Err(invalid(&self.path, "a state-only seed loads only into an empty ledger"));
        }
        let head = state.head.ok_or_else(|| invalid(&self.path, "the state has no head"))?;
        if state.fingerprint.is_none() {
            return Err(invalid(&self.path, "the state has no network"));
        }
        let checkpoint = encode_meta_checkpoint(&state);
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.meta, META_HEAD, encode_head(&head).to_vec());
        batch.insert(&self.meta, META_CHECKPOINT, checkpoint.clone());
        batch.insert(&self.meta, META_BACKFILL, encode_point(head.seq, &head.hash).to_vec());
        batch.insert(&self.meta, META_BACKFILL_BASE, checkpoint);
        if let Err(source) = batch.commit() {
            return Err(self.write_failed("load state-only seed", source));
        }
        self.backfill = Some(Backfill {
            point: ChainPoint { seq: head.seq, hash: head.hash },
            base: std::sync::Arc::new(state.clone()),
            archives: std::sync::Arc::from(Vec::new()),
        });
        self.projection = Projection::from_state(state);
        self.checkpoint_seq = Some(head.seq);
        Ok(head)
    }

    /// The point the next backfilled range must end at: the lowest event whose hash this
    /// ledger knows but whose history below it does not hold. `None` when the ledger holds
    /// its whole history from genesis (always, unless loaded from a state-only seed).
    pub fn backfill_point(&self) -> Option<ChainPoint> {
        self.backfill.as_ref().filter(|b| !b.pruned()).map(|b| b.point)
    }

    /// The first sequence number whose record this ledger holds (0 with a complete history).
    pub fn history_from(&self) -> u64 {
        self.backfill.as_ref().map_or(0, Backfill::held_from)
    }

    /// Stores a range of the history below what this ledger holds: it must end exactly at
    /// the [backfill point](Ledger::backfill_point) (the session checked every link and hash
    /// backwards from there), every signature must verify (`verdicts`, one per event, as
    /// [`super::verify_signatures`] gave them; verified here if they are not this range's), every
    /// event must be of this network and a range reaching seq 0 must start with this
    /// network's genesis. The rules are not applied: the projection is already past these
    /// events, and the chain from the seed's signed head hash fixes them exactly. The records
    /// and the new point (removed at genesis) are written in one synced batch. Returns the
    /// next point, `None` once the history is complete.
    #[tracing::instrument(skip_all, fields(path = %self.path.display(), events = range.len()))]
    pub fn append_backfill(
        &mut self,
        range: &crate::core::gossip::BackfillRange,
        verdicts: &[bool],
    ) -> Result<Option<ChainPoint>, LedgerError> {
        self.usable(range.len())?;
        if range.is_empty() {
            return Ok(self.backfill_point());
        }
        check_backfill_place(&self.projection, self.backfill_point(), range)?;
        let owned;
        let verdicts = if verdicts.len() == range.len() {
            verdicts
        } else {
            owned = verify_chained(&mut self.cache, range.events());
            &owned
        };
        check_verdicts(range.events(), verdicts)?;
        check_backfill_genesis(range)?;
        let next = range.next_point();
        let mut batch = self.new_batch(range.len());
        let mut record = Vec::with_capacity(1024);
        for ce in range.events() {
            record.clear();
            encode_record_into(ce, &mut record);
            batch.insert(&self.ledger, seq_key(ce.seq), record.as_slice());
        }
        match next {
            Some(p) => batch.insert(&self.meta, META_BACKFILL, encode_point(p.seq, &p.hash).to_vec()),
            None => {
                batch.remove(&self.meta, META_BACKFILL);
                batch.remove(&self.meta, META_BACKFILL_BASE);
            }
        }
        let batch = batch.durability(self.config.durable.then_some(PersistMode::SyncData));
        if let Err(source) = batch.commit() {
            return Err(self.write_failed("backfill batch", source));
        }
        match (next, self.backfill.as_mut()) {
            (Some(p), Some(b)) => b.point = p,
            _ => {
                self.backfill = None;
                tracing::info!("history backfilled to genesis");
            }
        }
        Ok(next)
    }
}
