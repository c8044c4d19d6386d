//! How a fjall error becomes a [`LedgerError`]: a storage failure, or damage to the ledger's
//! own files, named.

use std::path::Path;

use crate::store::error::LedgerError;

pub(crate) fn storage<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(fjall::Error) -> LedgerError + 'a {
    move |source| match damage(&source, path) {
        Some(cause) => LedgerError::Damaged { op, path: path.to_path_buf(), cause, source: Box::new(source) },
        None => LedgerError::Storage { op, path: path.to_path_buf(), source },
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
