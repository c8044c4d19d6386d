//! The operational-mode transitions a node went through, kept next to the ledger: the `modes`
//! keyspace of the ledger's fjall database.
//!
//! Key: a running number (u64 BE); value: the postcard encoding of the
//! [`Transition`]. The newest [`MODES_KEPT`] are kept; older
//! ones are removed as new ones arrive.

use fjall::KeyspaceCreateOptions;

use super::ledger::{storage, Ledger};
use crate::core::modes::Transition;
use crate::store::error::{Corruption, LedgerError};

const KEYSPACE: &str = "modes";
/// Transitions kept on disk.
pub const MODES_KEPT: u64 = 256;

/// Appends `t` (not synced on its own: it reaches the disk with the next synced write, and a
/// lost transition record loses no data).
#[tracing::instrument(level = "debug", skip_all, fields(path = %ledger.path().display()))]
pub fn record(ledger: &Ledger, t: &Transition) -> Result<(), LedgerError> {
    let path = ledger.path();
    let db = ledger.database();
    let ks = db.keyspace(KEYSPACE, KeyspaceCreateOptions::default).map_err(storage("open keyspace modes", path))?;
    let last = match ks.last_key_value() {
        Some(g) => {
            let k = g.key().map_err(storage("read modes", path))?;
            k.as_ref().try_into().map(u64::from_be_bytes).map_err(|_| corrupt(path, "a key is not 8 bytes"))?
        }
        None => 0,
    };
    let next = last + 1;
    let value = postcard::to_stdvec(t)
        .map_err(|e| LedgerError::Io { path: path.to_path_buf(), source: std::io::Error::other(e) })?;
    ks.insert(next.to_be_bytes(), value).map_err(storage("write mode transition", path))?;
    if next > MODES_KEPT {
        ks.remove((next - MODES_KEPT).to_be_bytes()).map_err(storage("trim mode transitions", path))?;
    }
    Ok(())
}

/// The kept transitions, oldest first.
pub fn list(ledger: &Ledger) -> Result<Vec<Transition>, LedgerError> {
    let path = ledger.path();
    let db = ledger.database();
    let ks = db.keyspace(KEYSPACE, KeyspaceCreateOptions::default).map_err(storage("open keyspace modes", path))?;
    let mut out = Vec::new();
    for guard in ks.iter() {
        let (_, v) = guard.into_inner().map_err(storage("read modes", path))?;
        out.push(postcard::from_bytes(&v).map_err(|e| corrupt(path, &e.to_string()))?);
    }
    Ok(out)
}

fn corrupt(path: &std::path::Path, reason: &str) -> LedgerError {
    LedgerError::Corrupt {
        path: path.to_path_buf(),
        seq: 0,
        corruption: Box::new(Corruption::Metadata { key: "modes".into(), reason: reason.into() }),
    }
}
