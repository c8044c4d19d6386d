//! The ledger: the signed, chained event log on fjall and its projection.
//!
//! Layout (see `schema/storage.md`): one fjall `Database` per ledger directory with two
//! keyspaces:
//! - `ledger`: key = seq (u64 big-endian), value = ledger record (see [`super::record`]);
//! - `meta`: `format` (marker), `head` (seq u64 BE ‖ hash 32 B, written in every append batch),
//!   `checkpoint` (blake3 digest 32 B ‖ projection checkpoint record, written in the same batch
//!   as the events it covers; a checkpoint whose digest does not match is ignored).
//!
//! **Durability contract:** [`Ledger::append`] returns only after the batch (records, head and
//! any checkpoint, atomically) has been synced to disk (`PersistMode::SyncData`). An
//! acknowledged append survives a crash.
//!
//! The ledger is split by phase: `open` (open and recovery), `append` (the local append
//! paths), `append_range` (ranges received from peers), `verify` (batched signature checks),
//! `read` (reads and replays), `backfill` (seeds and the history below them), `prune`
//! (retention: dropping archived history), `meta` (the `meta` keyspace), `health` and
//! `storage_error`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::chainer::Chainer;
use super::recent::SharedRecent;
use crate::core::keys::VerifierCache;
use crate::core::projection::{ChainHead, Projection};
use crate::core::types::{ChainPoint, NetworkFingerprint};
use crate::store::error::LedgerError;
use fjall::{Database, Keyspace, PersistMode};

mod append;
mod append_range;
mod backfill;
mod health;
mod lock;
mod meta;
mod open;
mod prune;
mod read;
mod records_view;
mod storage_error;
mod verify;
mod view;

pub use append::AppendOutcome;
pub(crate) use backfill::Backfill;
pub use health::LedgerHealth;
pub use lock::{LedgerLock, LedgerWriteGuard, SharedLedger};
pub use meta::LEDGER_FORMAT_MARKER;
pub(crate) use meta::{read_anchor, read_backfill, read_head, read_stored_checkpoint};
pub(crate) use open::{busy_keyspace, check_held_records, last_seq, open_keyspaces};
pub use prune::{AttestationCheck, AttestedBase, Pruned, Reclaimer, Remover};
pub use read::History;
pub use records_view::RecordsView;
pub(crate) use storage_error::storage;
pub use verify::{verify_linked_signatures, verify_signatures};
pub use view::ProjectionView;

/// How a ledger is opened.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// Create an empty ledger if none exists (otherwise [`LedgerError::NotALedger`]).
    pub create: bool,
    /// Write a projection checkpoint every this many events (0 = never).
    pub checkpoint_interval: u64,
    /// Sync every append to disk before returning (turn off only for throwaway data).
    pub durable: bool,
    /// If set, opening fails unless the ledger belongs to this network.
    pub expected_network: Option<NetworkFingerprint>,
    /// Record write-path metrics ([`crate::store::metrics::WriteMetrics`]).
    pub metrics: bool,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig { create: true, checkpoint_interval: 16_384, durable: true, expected_network: None, metrics: true }
    }
}

/// The chained event log on fjall with its in-memory projection. See the module doc.
pub struct Ledger {
    path: PathBuf,
    db: Database,
    ledger: Keyspace,
    meta: Keyspace,
    projection: Projection,
    cache: VerifierCache,
    config: LedgerConfig,
    checkpoint_seq: Option<u64>,
    anchor: Option<ChainPoint>,
    /// See [`Ledger::refuse_branch`].
    refused: Option<ChainPoint>,
    /// See [`Ledger::backfill_point`].
    backfill: Option<Backfill>,
    /// A failed durable write and a state divergence, readable without the ledger's lock.
    health: Arc<LedgerHealth>,
    /// The projection as readers see it, published when a write guard is released while
    /// somebody reads.
    view: Arc<ProjectionView>,
    /// The helper thread that chains large append batches (started at the first one; `None`
    /// until then or if no thread could be started).
    chainer: Option<Chainer>,
    /// Whether starting the helper was tried.
    chainer_tried: bool,
    /// A projection checkpoint taken in the batch being written, at the state a state
    /// checkpoint event in it attests: `(its seq, meta value)`. Written by `commit_batch`.
    pending_checkpoint: Option<(u64, Vec<u8>)>,
    /// The ids of the newest events (see [`Ledger::committed_point`]).
    recent: SharedRecent,
    /// Write-path metrics (shared with the Raft log store on the same database).
    metrics: crate::store::metrics::WriteMetrics,
}

impl Ledger {
    /// The write-path metrics of this ledger's database (shared: the Raft log store records
    /// its syncs in them too).
    pub fn write_metrics(&self) -> crate::store::metrics::WriteMetrics {
        self.metrics.clone()
    }
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.path).field("head", &self.projection.head()).finish()
    }
}

impl Ledger {
    /// The ledger directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The projection at the head.
    pub fn projection(&self) -> &Projection {
        &self.projection
    }

    /// The head (`None` while empty).
    pub fn head(&self) -> Option<ChainHead> {
        self.projection.head()
    }

    /// The network fingerprint (`None` while empty).
    pub fn fingerprint(&self) -> Option<NetworkFingerprint> {
        self.projection.fingerprint()
    }

    /// Sequence number of the newest projection checkpoint on disk.
    pub fn checkpoint_seq(&self) -> Option<u64> {
        self.checkpoint_seq
    }

    /// The newest voter-signed checkpoint event this ledger holds: everything up to it is
    /// anchored to the Primary tier.
    pub fn anchor(&self) -> Option<ChainPoint> {
        self.anchor
    }

    /// Reads a `meta` value (for adapters that keep their own state next to the ledger).
    pub fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerError> {
        Ok(self.meta.get(key).map_err(storage("read meta", &self.path))?.map(|v| v.to_vec()))
    }

    /// The fjall database (shared with the Raft log store, so both use one journal).
    pub(crate) fn database(&self) -> Database {
        self.db.clone()
    }

    /// The failed durable write that poisoned this ledger, if any: it takes no more writes.
    pub fn poisoned_by(&self) -> Option<String> {
        self.health.poisoned_by()
    }

    /// This ledger's health, to read without taking its lock (a writer checks it before every
    /// submit while applies hold the lock).
    pub fn health(&self) -> Arc<LedgerHealth> {
        self.health.clone()
    }

    /// The projection as readers see it: the snapshot published when a write guard was
    /// last released while somebody reads (see [`ProjectionView`]), to read without taking
    /// this ledger's lock.
    pub fn view(&self) -> Arc<ProjectionView> {
        self.view.clone()
    }

    /// Syncs everything written to disk.
    pub fn sync(&self) -> Result<(), LedgerError> {
        self.db.persist(PersistMode::SyncAll).map_err(storage("persist", &self.path))
    }

    /// Approximate bytes on disk.
    pub fn disk_space(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }
}

/// Tests: an empty ledger that never syncs, in a temporary directory of its own that lives as
/// long as the returned guard.
#[cfg(test)]
pub(crate) fn scratch() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Ledger::open(dir.path(), LedgerConfig { durable: false, ..LedgerConfig::default() }).expect("open");
    (dir, ledger)
}
