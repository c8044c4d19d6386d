//! The last snapshot this node built or installed, kept in a file inside the ledger's
//! directory rather than in memory.
//!
//! A snapshot holds the whole retained history (about 350 bytes per event: 35 MB at 100k
//! events, hundreds of MB on a ledger without retention) and is read only when a follower
//! lags behind the log the leader kept. Held in memory, it stayed resident for the life of the
//! process after the first snapshot. Here only its meta and a blake3 hash of its bytes stay in
//! memory; the bytes are read back when openraft asks for them, and checked against the hash,
//! so a damaged file is never sent: the state machine builds a new snapshot instead.
//!
//! The file is written crash-safely (a temporary file, synced, renamed). A file left by an
//! earlier run is removed when the state machine is made: openraft builds a new snapshot at
//! start when its log was purged, as it did when snapshots lived only in memory.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use super::SnapshotMeta;
use crate::core::sync;

/// The file's name inside the ledger's directory (fjall reads only its own sub-directories).
pub(super) const FILE_NAME: &str = "raft-snapshot";

/// See the module doc.
#[derive(Debug)]
pub(super) struct SnapshotFile {
    path: PathBuf,
    /// The snapshot the file holds, and the hash of its bytes; `None` before the first one.
    current: RwLock<Option<(SnapshotMeta, blake3::Hash)>>,
}

impl SnapshotFile {
    /// The snapshot file of the ledger in `ledger_dir`. Removes one an earlier run left.
    pub(super) fn new(ledger_dir: &Path) -> Self {
        let path = ledger_dir.join(FILE_NAME);
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::debug!(path = %path.display(), "removed the snapshot file of an earlier run"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an earlier run's snapshot file")
            }
        }
        SnapshotFile { path, current: RwLock::new(None) }
    }

    /// The meta of the snapshot held, if any.
    pub(super) fn meta(&self) -> Option<SnapshotMeta> {
        sync::read(&self.current).as_ref().map(|(m, _)| m.clone())
    }

    /// Stores `data` as the current snapshot (blocking: writes and syncs the file).
    #[tracing::instrument(level = "debug", skip_all, fields(path = %self.path.display(), bytes = data.len()))]
    pub(super) fn store(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        // The file and the meta change together: a reader never pairs one with the other's.
        let mut current = sync::write(&self.current);
        *current = None;
        crate::seed::write_atomically(&self.path, data)
            .map_err(|e| io::Error::other(format!("storing the snapshot: {e}")))?;
        *current = Some((meta.clone(), blake3::hash(data)));
        Ok(())
    }

    /// The current snapshot's meta and bytes (blocking: reads the file). `None` when there is
    /// none, or when the file no longer holds what was stored (then it is forgotten).
    #[tracing::instrument(level = "debug", skip_all, fields(path = %self.path.display()))]
    pub(super) fn load(&self) -> Option<(SnapshotMeta, Vec<u8>)> {
        let current = sync::read(&self.current);
        let (meta, hash) = current.as_ref()?;
        let problem = match std::fs::read(&self.path) {
            Ok(data) if blake3::hash(&data) == *hash => return Some((meta.clone(), data)),
            Ok(data) => format!("its {} bytes are not the ones stored", data.len()),
            Err(e) => e.to_string(),
        };
        tracing::warn!(path = %self.path.display(), problem = %problem, "the snapshot file is damaged; forgetting it");
        drop(current);
        *sync::write(&self.current) = None;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id::<crate::raft::TypeConfig>(1, 1, index)),
            last_membership: Default::default(),
        }
    }

    #[test]
    fn stores_loads_and_replaces_the_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = SnapshotFile::new(dir.path());
        assert!(f.load().is_none() && f.meta().is_none());
        f.store(&meta(5), b"first").expect("store");
        f.store(&meta(9), b"second snapshot").expect("store");
        assert_eq!(f.load(), Some((meta(9), b"second snapshot".to_vec())));
        assert_eq!(f.meta(), Some(meta(9)));
    }

    /// A file damaged or removed under the node is never sent: the snapshot is forgotten.
    #[test]
    fn a_damaged_or_missing_file_is_forgotten_not_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = SnapshotFile::new(dir.path());
        f.store(&meta(5), b"snapshot bytes").expect("store");
        std::fs::write(dir.path().join(FILE_NAME), b"snapshot bytez").expect("damage");
        assert!(f.load().is_none());
        assert!(f.meta().is_none(), "forgotten once found damaged");
        f.store(&meta(6), b"again").expect("store");
        std::fs::remove_file(dir.path().join(FILE_NAME)).expect("remove");
        assert!(f.load().is_none());
    }

    /// A file an earlier run left is not taken for this run's snapshot.
    #[test]
    fn an_earlier_runs_file_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        SnapshotFile::new(dir.path()).store(&meta(5), b"old").expect("store");
        let f = SnapshotFile::new(dir.path());
        assert!(f.load().is_none());
        assert!(!dir.path().join(FILE_NAME).exists());
    }
}
