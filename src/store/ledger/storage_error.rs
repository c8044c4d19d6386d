//! How a fjall error becomes a [`LedgerError`]: a storage failure, or damage to the ledger's
//! own files, named.

use std::path::Path;

use super::Ledger;
use crate::core::sync::lock;
use crate::store::error::LedgerError;

pub(crate) fn storage<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(fjall::Error) -> LedgerError + 'a {
    move |source| {
        if matches!(source, fjall::Error::Poisoned) {
            return LedgerError::EngineStopped { op, path: path.to_path_buf(), probe: probe_write(path) };
        }
        match damage(&source, path) {
            Some(cause) => LedgerError::Damaged { op, path: path.to_path_buf(), cause, source: Box::new(source) },
            None => LedgerError::Storage { op, path: path.to_path_buf(), source },
        }
    }
}

impl Ledger {
    /// A failed write to this ledger's database as its error ([`storage`]: a poisoned engine
    /// explained by a test write), kept in the ledger's health: fjall takes no more writes.
    pub(super) fn write_failed(&self, op: &'static str, source: fjall::Error) -> LedgerError {
        let e = storage(op, &self.path)(source);
        *lock(&self.health.poisoned) = Some(e.to_string());
        e
    }
}

/// The probe file [`probe_write`] writes and removes in a ledger's directory.
const PROBE_FILE: &str = "write-probe.tmp";

/// What a synced 4 KiB test write in `dir` meets now, in words: fjall refuses every write
/// after one failed (its background flushes and compactions included) and names no cause, so
/// this names the likely one (a full disk, a read-only or failing device), or says that it has
/// passed.
#[tracing::instrument(level = "debug", skip_all, fields(dir = %dir.display()))]
pub(crate) fn probe_write(dir: &Path) -> String {
    use std::io::Write;
    let probe = dir.join(PROBE_FILE);
    let written = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(&[0u8; 4096])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    match written {
        Ok(()) => {
            "a test write there succeeds now, so the cause has passed (the log names the write that failed)".to_string()
        }
        Err(e) => format!("a test write there fails now: {e}"),
    }
}

/// Names the file and the fault when fjall's error says its own data is damaged (as opposed to
/// an I/O failure, a lock held elsewhere, or a poisoned database).
fn damage(e: &fjall::Error, path: &Path) -> Option<String> {
    use fjall::Error as F;
    use fjall::LsmError as T;
    let journals = || {
        let mut names: Vec<String> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".jnl"))
            .collect();
        names.sort();
        if names.is_empty() {
            "the write-ahead journal".to_string()
        } else {
            format!("the write-ahead journal ({})", names.join(", "))
        }
    };
    match e {
        F::JournalRecovery(r) => Some(format!("{} fails recovery: {r}", journals())),
        F::InvalidTrailer | F::InvalidTag(_) => Some(format!("{} holds a malformed entry", journals())),
        F::Decompress(_) => Some("a data block does not decompress".into()),
        F::InvalidVersion(v) => Some(format!("the format version file holds {v:?}")),
        F::Unrecoverable => Some("required files could not be recovered".into()),
        F::Storage(t) => match t {
            T::ChecksumMismatch { .. } => {
                Some(format!("a table file under {} fails its checksum", path.join("keyspaces").display()))
            }
            T::Decompress(_) => {
                Some(format!("a table block under {} does not decompress", path.join("keyspaces").display()))
            }
            T::InvalidTag(_) | T::InvalidTrailer | T::InvalidHeader(_) | T::Utf8(_) => {
                Some(format!("a table file under {} is malformed", path.join("keyspaces").display()))
            }
            T::InvalidVersion(v) => Some(format!("a table file holds unknown format version {v}")),
            T::Unrecoverable => Some("required table files could not be recovered".into()),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A poisoned database is told apart from other storage errors, and the probe says
    /// whether the directory takes a write now, leaving no file behind.
    #[test]
    fn a_poisoned_database_is_explained_by_a_test_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = storage("append batch", dir.path())(fjall::Error::Poisoned);
        match &e {
            LedgerError::EngineStopped { op, probe, .. } => {
                assert_eq!(*op, "append batch");
                assert!(probe.contains("succeeds now"), "{probe}");
            }
            other => panic!("not told apart: {other:?}"),
        }
        assert!(e.to_string().contains("storage engine stopped"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0, "the probe file is removed");
        // A directory that cannot take the write: the OS error is named.
        let gone = dir.path().join("missing");
        assert!(probe_write(&gone).contains("fails now"), "{}", probe_write(&gone));
    }
}
