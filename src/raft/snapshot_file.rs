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
/// How a snapshot being written is named until it is renamed in place.
const TEMP_PREFIX: &str = "raft-snapshot.";

/// See the module doc.
#[derive(Debug)]
pub(super) struct SnapshotFile {
    path: PathBuf,
    /// The snapshot the file holds, and the hash of its bytes; `None` before the first one.
    current: RwLock<Option<(SnapshotMeta, blake3::Hash)>>,
}

impl SnapshotFile {
    /// The snapshot file of the ledger in `ledger_dir`. Removes the one an earlier run left,
    /// and any it was writing when it stopped.
    pub(super) fn new(ledger_dir: &Path) -> Self {
        let path = ledger_dir.join(FILE_NAME);
        let names = std::fs::read_dir(ledger_dir).into_iter().flatten().flatten().map(|e| e.path());
        for old in names.filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n == FILE_NAME || n.starts_with(TEMP_PREFIX))
        }) {
            match std::fs::remove_file(&old) {
                Ok(()) => tracing::debug!(path = %old.display(), "removed a snapshot file of an earlier run"),
                Err(e) => {
                    tracing::warn!(path = %old.display(), error = %e, "cannot remove an earlier run's snapshot file")
                }
            }
        }
        SnapshotFile { path, current: RwLock::new(None) }
    }

    /// The meta of the snapshot held, if any (blocking: waits while a snapshot is read back).
    pub(super) fn meta(&self) -> Option<SnapshotMeta> {
        sync::read(&self.current).as_ref().map(|(m, _)| m.clone())
    }

    /// Stores `data` as the current snapshot (blocking: writes and syncs the file). The bytes
    /// go to a temporary file first, with no lock held; the lock is taken only to rename it in
    /// place and record its meta, so the previous snapshot stays readable meanwhile and a
    /// reader never pairs one snapshot's meta with the other's bytes.
    #[tracing::instrument(level = "debug", skip_all, fields(path = %self.path.display(), bytes = data.len()))]
    pub(super) fn store(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let failed = |e: io::Error| io::Error::other(format!("storing the snapshot at {}: {e}", self.path.display()));
        let dir = crate::seed::parent_dir(&self.path);
        let mut tmp = tempfile::Builder::new().prefix(TEMP_PREFIX).tempfile_in(dir).map_err(failed)?;
        tmp.write_all(data).map_err(failed)?;
        tmp.as_file().sync_all().map_err(failed)?;
        let hash = blake3::hash(data);
        let mut current = sync::write(&self.current);
        crate::seed::persist_synced(tmp, &self.path).map_err(failed)?;
        *current = Some((meta.clone(), hash));
        Ok(())
    }

    /// The current snapshot's meta and bytes (blocking: reads the file). `None` when there is
    /// none, or when the file no longer holds what was stored (then it is forgotten).
    #[tracing::instrument(level = "debug", skip_all, fields(path = %self.path.display()))]
    pub(super) fn load(&self) -> Option<(SnapshotMeta, Vec<u8>)> {
        let current = sync::read(&self.current);
        let (meta, hash) = current.as_ref()?;
        let hash = *hash;
        let problem = match std::fs::read(&self.path) {
            Ok(data) if blake3::hash(&data) == hash => return Some((meta.clone(), data)),
            Ok(data) => format!("its {} bytes are not the ones stored", data.len()),
            Err(e) => e.to_string(),
        };
        drop(current);
        tracing::warn!(path = %self.path.display(), problem = %problem, "the snapshot file is damaged; forgetting it");
        let mut current = sync::write(&self.current);
        // Forget what was found damaged, not a snapshot stored since.
        if current.as_ref().is_some_and(|(_, h)| *h == hash) {
            *current = None;
        }
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

    /// A file an earlier run left, or was writing when it stopped, is removed; the ledger's
    /// own files are not.
    #[test]
    fn an_earlier_runs_files_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        SnapshotFile::new(dir.path()).store(&meta(5), b"old").expect("store");
        std::fs::write(dir.path().join(format!("{TEMP_PREFIX}a1b2c3")), b"half written").expect("write");
        std::fs::write(dir.path().join("journal"), b"not ours").expect("write");
        let f = SnapshotFile::new(dir.path());
        assert!(f.load().is_none());
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("journal")]);
    }

    /// The file holds only the snapshot once stored: no temporary file stays beside it.
    #[test]
    fn storing_leaves_one_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = SnapshotFile::new(dir.path());
        f.store(&meta(5), b"one").expect("store");
        f.store(&meta(6), b"two").expect("store");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from(FILE_NAME)]);
    }
}
