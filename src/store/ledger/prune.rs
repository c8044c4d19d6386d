//! Retention: removing the history below a state the chain attests, once it is archived.
//!
//! A pruned ledger is shaped like one loaded from a state-only seed: it holds its records from
//! `history_from` on and keeps the projection at the last pruned event as its base, so opening
//! and replaying work as before. Unlike a seeded ledger it does not backfill: it remembers where
//! the pruned history went (its archives, signed seed files written and verified by
//! `crate::seed::archive` before the prune), and a read below what it holds fails with
//! [`LedgerError::HistoryArchived`], naming them.
//!
//! The base must be a state the chain attests: the record right after it is a state checkpoint
//! event carrying its digest (see [`crate::store::attested`]). So the records kept still prove
//! the state they start from, and the next archive can be a state-only seed whose state is that
//! base.

use std::path::Path;
use std::time::Instant;

use fjall::PersistMode;

use super::backfill::Backfill;
use super::meta::{encode_meta_checkpoint, encode_point, META_BACKFILL, META_BACKFILL_BASE, META_PRUNED};
use super::storage_error::storage;
use super::Ledger;
use crate::core::projection::ProjectionState;
use crate::core::types::ChainPoint;
use crate::store::attested::is_attested;
use crate::store::error::LedgerError;
use crate::store::record::seq_key;

/// What one prune did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pruned {
    /// The first sequence number held before the prune.
    pub from: u64,
    /// The last sequence number pruned: the ledger now holds its history from `to + 1`.
    pub to: u64,
    /// How long the switch took (one small batch under the ledger's write lock, synced later by the [`Remover`]).
    pub took: std::time::Duration,
}

impl Ledger {
    /// The projection a replay of the held records starts from: empty (genesis) with the whole
    /// history, else the state at the last event not held.
    pub(crate) fn history_start(&self) -> crate::core::projection::Projection {
        self.backfill.as_ref().map_or_else(crate::core::projection::Projection::new, Backfill::start)
    }

    /// What a read below the history this ledger holds fails with (`None` with the whole
    /// history): [`LedgerError::HistoryArchived`] once pruned, else `HistoryIncomplete`.
    pub fn history_not_held(&self) -> Option<LedgerError> {
        self.backfill.as_ref().map(|b| b.not_held(&self.path))
    }

    /// Where this ledger's pruned history was archived, oldest first (empty: never pruned).
    pub fn archives(&self) -> Vec<std::path::PathBuf> {
        self.backfill.as_ref().map(|b| b.archives.to_vec()).unwrap_or_default()
    }

    /// Lets go of every record from [`Ledger::history_from`] up to `base`'s head: one small
    /// batch moves the history's start past them, keeping `base` (the projection at that head)
    /// as the state the held records start from and recording `archive` as where they went.
    /// From then on nothing reads them; the returned [`Remover`] deletes them, in chunks,
    /// without the ledger's lock. The switch is not synced here, under the lock (a sync there
    /// held up every write for one, and more when the disk was busy with the archive): the
    /// removal syncs it before it deletes anything, and any durable append after it syncs it
    /// too (the journal is replayed in order). A crash before then keeps every record and
    /// forgets the switch (the ledger reopens unpruned, its archive unlisted); a crash before
    /// the removal ends leaves records below the history's start, which the next removal
    /// deletes first. `base` must be a state this chain attests: its head is a held
    /// event of this chain below the ledger's head, and the record right after it is a state
    /// checkpoint event carrying its digest. Callers archive the range first
    /// ([`crate::seed::archive`]); the ledger only checks that `archive` exists.
    #[tracing::instrument(level = "info", skip_all, fields(path = %self.path.display(), archive = %archive.display()))]
    pub fn prune_to(&mut self, base: ProjectionState, archive: &Path) -> Result<(Pruned, Remover), LedgerError> {
        self.check_prune_range(&base)?;
        let checked = self.attestation_check().check(base)?;
        self.prune_to_checked(checked, archive)
    }

    /// What checks, without the ledger's lock, that the chain attests a state to prune to (the
    /// costly part of [`Ledger::prune_to`]: a state digest of the registry), for
    /// [`Ledger::prune_to_checked`].
    pub fn attestation_check(&self) -> AttestationCheck {
        AttestationCheck { ledger: self.ledger.clone(), path: self.path.clone() }
    }

    /// [`Ledger::prune_to`] of a state [`AttestationCheck::check`] found attested: under the
    /// write lock, only the cheap checks and the switch's batch (retention's writers waited up
    /// to 5 ms behind the digest when it was computed under the lock).
    pub fn prune_to_checked(
        &mut self,
        checked: AttestedBase,
        archive: &Path,
    ) -> Result<(Pruned, Remover), LedgerError> {
        if checked.path != self.path {
            return Err(invalid(&self.path, format!("the state was checked against {}", checked.path.display())));
        }
        let AttestedBase { base, encoded, .. } = checked;
        let (from, at) = self.check_prune_range(&base)?;
        if !archive.is_file() {
            return Err(invalid(&self.path, format!("archive {} is not a file", archive.display())));
        }
        let mut archives = self.archives();
        archives.push(archive.to_path_buf());
        let names: Vec<String> = archives.iter().map(|p| p.display().to_string()).collect();
        let names = postcard::to_stdvec(&names).map_err(|e| invalid(&self.path, format!("archive list: {e}")))?;

        let started = Instant::now();
        let mut batch = self.db.batch();
        batch.insert(&self.meta, META_BACKFILL, encode_point(at.seq, &at.hash).to_vec());
        batch.insert(&self.meta, META_BACKFILL_BASE, encoded);
        batch.insert(&self.meta, META_PRUNED, names);
        if let Err(source) = batch.commit() {
            return Err(self.write_failed("prune", source));
        }
        let took = started.elapsed();
        self.backfill = Some(Backfill {
            point: ChainPoint { seq: at.seq, hash: at.hash },
            base: std::sync::Arc::new(base),
            archives: archives.into(),
        });
        tracing::info!(from, to = at.seq, ?took, "history start moved past the pruned events");
        let remover = Remover { path: self.path.clone(), db: self.db.clone(), ledger: self.ledger.clone(), to: at.seq };
        Ok((Pruned { from, to: at.seq, took }, remover))
    }

    /// The history held and the head `base` names, checked as a prune needs them: `base` has a
    /// head, it is a held event of this chain below the ledger's head, and the ledger is sound.
    fn check_prune_range(
        &self,
        base: &ProjectionState,
    ) -> Result<(u64, crate::core::projection::ChainHead), LedgerError> {
        if self.health.poisoned_by().is_some() {
            return Err(LedgerError::Poisoned(self.path.clone()));
        }
        let from = self.history_from();
        let at = base.head.ok_or_else(|| invalid(&self.path, "the state to keep has no head".into()))?;
        let head = self.head().ok_or_else(|| invalid(&self.path, "an empty ledger has nothing to prune".into()))?;
        if at.seq < from || at.seq >= head.seq {
            return Err(invalid(
                &self.path,
                format!("cannot prune to seq {}: this ledger holds seqs {from}..={}", at.seq, head.seq),
            ));
        }
        match self.get(at.seq)? {
            Some(ev) if ev.hash == at.hash => Ok((from, at)),
            _ => Err(invalid(&self.path, format!("the state to keep is not of this chain at seq {}", at.seq))),
        }
    }

    /// What returns the pruned records' bytes to the filesystem; run it after the ledger's lock
    /// is released (a compaction takes a while and needs no lock).
    pub fn reclaimer(&self) -> Reclaimer {
        // Only a pruned ledger lets go of what lies below its history (a seeded one fills it in).
        let pruned_to = (!self.archives().is_empty()).then(|| self.history_from().saturating_sub(1));
        Reclaimer { path: self.path.clone(), ledger: self.ledger.clone(), meta: self.meta.clone(), pruned_to }
    }
}

/// A refusal of a prune: an invalid input, named with the ledger's path.
fn invalid(path: &Path, why: String) -> LedgerError {
    LedgerError::Io { path: path.to_path_buf(), source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why) }
}

/// Checks states for pruning without the ledger's lock (see [`Ledger::attestation_check`]).
pub struct AttestationCheck {
    ledger: fjall::Keyspace,
    path: std::path::PathBuf,
}

impl AttestationCheck {
    /// `base`, once the record right after its head is a state checkpoint event of this chain
    /// carrying its digest, with its checkpoint encoding made here too (records are never
    /// rewritten, so the answer holds once given).
    pub fn check(&self, base: ProjectionState) -> Result<AttestedBase, LedgerError> {
        if !is_attested(&self.ledger, &self.path, &base)? {
            let seq = base.head.map_or(0, |h| h.seq);
            return Err(invalid(
                &self.path,
                format!("the state at seq {seq} is not attested by a state checkpoint event right after it"),
            ));
        }
        let encoded = encode_meta_checkpoint(&base);
        Ok(AttestedBase { base, encoded, path: self.path.clone() })
    }
}

/// A state the chain of one ledger attests, checked by [`AttestationCheck::check`].
pub struct AttestedBase {
    base: ProjectionState,
    encoded: Vec<u8>,
    path: std::path::PathBuf,
}

/// Deletes the records a prune let go (see [`Ledger::prune_to`]).
pub struct Remover {
    path: std::path::PathBuf,
    db: fjall::Database,
    ledger: fjall::Keyspace,
    to: u64,
}

impl Remover {
    /// Records removed per batch: each batch is one journal write, and none holds a lock a
    /// reader or writer of the ledger waits for.
    pub const CHUNK: usize = 4096;

    /// Syncs the switch [`Ledger::prune_to`] wrote, drops the tables that hold only records up
    /// to the pruned seq (no write: their files go), then deletes the records left (in the
    /// memtable, or in a table that also holds later ones), from the oldest one still stored
    /// (records a crash left behind included), in batches of [`Remover::CHUNK`]; the last
    /// one is synced. Returns how many were removed one by one.
    #[tracing::instrument(level = "info", skip_all, fields(path = %self.path.display(), to = self.to))]
    pub fn run(&self) -> Result<u64, LedgerError> {
        // The switch first: no record goes before the history's start has moved for good.
        self.db.persist(PersistMode::SyncData).map_err(storage("sync the history's new start", &self.path))?;
        drop_tables_to(&self.ledger, self.to, &self.path)?;
        let mut removed = 0u64;
        // From the oldest record still stored; each batch goes on after the last key it removed
        // (starting over would walk the tombstones of every batch before it).
        let mut from: Option<fjall::Slice> = None;
        loop {
            let range = match &from {
                None => self.ledger.range(..=seq_key(self.to)),
                Some(k) => self.ledger.range((
                    std::ops::Bound::Excluded(k.to_vec()),
                    std::ops::Bound::Included(seq_key(self.to).to_vec()),
                )),
            };
            let keys: Vec<fjall::Slice> = range
                .take(Self::CHUNK)
                .map(|g| g.key())
                .collect::<Result<_, _>>()
                .map_err(storage("list pruned records", &self.path))?;
            let Some(last) = keys.last().cloned() else { break };
            from = Some(last);
            let mut batch = self.db.batch();
            for k in &keys {
                batch.remove(&self.ledger, k.clone());
            }
            batch.commit().map_err(storage("remove pruned records", &self.path))?;
            removed += keys.len() as u64;
        }
        self.db.persist(PersistMode::SyncData).map_err(storage("sync pruned records' removal", &self.path))?;
        Ok(removed)
    }
}

/// Drops every table of the ledger's records whose keys are all at or below `to`: their files
/// go, with no write (lsm-tree's `drop_range`; tables that also hold later records, and the
/// memtable, are left alone). fjall 3 has no range delete of its own: `Keyspace::tree` and
/// `AbstractTree::drop_range` are public but hidden from its docs, a sharp edge to re-check on
/// an upgrade.
fn drop_tables_to(ledger: &fjall::Keyspace, to: u64, path: &Path) -> Result<(), LedgerError> {
    use fjall::AbstractTree;
    let end = seq_key(to);
    ledger.tree.drop_range::<&[u8], _>(..=&end[..]).map_err(|e| LedgerError::Storage {
        op: "drop the pruned records' tables",
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// Returns a pruned ledger's freed bytes to the filesystem (see [`Ledger::reclaimer`]).
pub struct Reclaimer {
    path: std::path::PathBuf,
    ledger: fjall::Keyspace,
    meta: fjall::Keyspace,
    /// The last seq let go (`None`: the ledger was never pruned).
    pruned_to: Option<u64>,
}

impl Reclaimer {
    /// Drops the tables whose records were all let go since the last prune (those still in a
    /// memtable then, flushed since): no write, no compaction, so nothing competes with the
    /// appends for the disk. The tombstones the last removal wrote, and records sharing a
    /// table with held ones, go with fjall's own compactions.
    #[tracing::instrument(level = "info", skip_all, fields(path = %self.path.display()))]
    pub fn run(&self) -> Result<(), LedgerError> {
        match self.pruned_to {
            Some(to) => drop_tables_to(&self.ledger, to, &self.path),
            None => Ok(()),
        }
    }

    /// Flushes the ledger's memtables (so the journal that holds them can be dropped) and
    /// compacts all of the records' tables, so every tombstone meets its value and both are
    /// dropped; blocks until done. Rewrites every held record: what an operator or a bench runs
    /// for a settled disk, not what a prune needs. (`rotate_memtable_and_wait` and
    /// `major_compact` are public but hidden from fjall's docs.)
    #[tracing::instrument(level = "info", skip_all, fields(path = %self.path.display()))]
    pub fn compact_all(&self) -> Result<(), LedgerError> {
        self.ledger.rotate_memtable_and_wait().map_err(storage("flush the ledger keyspace", &self.path))?;
        self.meta.rotate_memtable_and_wait().map_err(storage("flush the meta keyspace", &self.path))?;
        self.ledger.major_compact().map_err(storage("compact the ledger keyspace", &self.path))
    }
}
