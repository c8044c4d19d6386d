//! Fork evidence kept next to the ledger: the `forks` keyspace of the ledger's fjall database.
//!
//! Key: the fork's sequence number (u64 BE) ‖ the peer's event hash (32 B); value: the
//! postcard encoding of the [`ForkEvidence`]. Evidence is checked (both links valid, both
//! signatures verified) before it is written, and checked again when read.

use fjall::{KeyspaceCreateOptions, PersistMode};

use crate::core::gossip::ForkEvidence;
use crate::store::error::{Corruption, LedgerError};
use crate::store::ledger::{storage, Ledger};

const KEYSPACE: &str = "forks";
/// Most fork records read back at once (evidence beyond this is kept but not listed).
pub const FORKS_LISTED_MAX: usize = 1024;

fn key(e: &ForkEvidence) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&e.seq().to_be_bytes());
    k[8..].copy_from_slice(e.theirs.hash.as_bytes());
    k
}

/// Stores `evidence` durably; returns whether it was new.
#[tracing::instrument(level = "info", skip_all, fields(path = %ledger.path().display(), seq = evidence.seq()))]
pub fn record(ledger: &Ledger, evidence: &ForkEvidence) -> Result<bool, LedgerError> {
    let path = ledger.path();
    let db = ledger.database();
    let ks = db.keyspace(KEYSPACE, KeyspaceCreateOptions::default).map_err(storage("open keyspace forks", path))?;
    let k = key(evidence);
    if ks.get(k).map_err(storage("read fork evidence", path))?.is_some() {
        return Ok(false);
    }
    let value = postcard::to_stdvec(evidence)
        .map_err(|e| LedgerError::Io { path: path.to_path_buf(), source: std::io::Error::other(e) })?;
    ks.insert(k, value).map_err(storage("write fork evidence", path))?;
    db.persist(PersistMode::SyncData).map_err(storage("sync fork evidence", path))?;
    Ok(true)
}

/// The stored fork evidence, oldest fork first (at most [`FORKS_LISTED_MAX`]). A record that
/// does not decode or check is reported as corruption.
pub fn list(ledger: &Ledger) -> Result<Vec<ForkEvidence>, LedgerError> {
    let path = ledger.path();
    let db = ledger.database();
    let ks = db.keyspace(KEYSPACE, KeyspaceCreateOptions::default).map_err(storage("open keyspace forks", path))?;
    let mut out = Vec::new();
    for guard in ks.iter().take(FORKS_LISTED_MAX) {
        let (_, v) = guard.into_inner().map_err(storage("read fork evidence", path))?;
        let ev: ForkEvidence = postcard::from_bytes(&v).map_err(|e| LedgerError::Corrupt {
            path: path.to_path_buf(),
            seq: 0,
            corruption: Box::new(Corruption::Metadata { key: "forks".into(), reason: e.to_string() }),
        })?;
        ev.check().map_err(|reason| LedgerError::Corrupt {
            path: path.to_path_buf(),
            seq: ev.seq(),
            corruption: Box::new(Corruption::Metadata { key: "forks".into(), reason: reason.into() }),
        })?;
        out.push(ev);
    }
    Ok(out)
}

const RESOLVED: &str = "forks_resolved";

/// How a fork was settled, kept next to its evidence.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Settled {
    /// The decision, when this node took it (`None`: settled by a resolution event another
    /// node recorded in this node's chain).
    pub resolution: Option<crate::core::authority::Resolution>,
    /// Where the resolution event stands in the winning chain, once committed.
    pub recorded_at: Option<crate::core::types::ChainPoint>,
}

/// Marks the evidence `e` settled by `how`.
pub fn mark_resolved(ledger: &Ledger, e: &ForkEvidence, how: &Settled) -> Result<(), LedgerError> {
    let path = ledger.path();
    let db = ledger.database();
    let ks =
        db.keyspace(RESOLVED, KeyspaceCreateOptions::default).map_err(storage("open keyspace forks_resolved", path))?;
    let value = postcard::to_stdvec(how)
        .map_err(|e| LedgerError::Io { path: path.to_path_buf(), source: std::io::Error::other(e) })?;
    ks.insert(key(e), value).map_err(storage("write fork resolution", path))?;
    db.persist(PersistMode::SyncData).map_err(storage("sync fork resolution", path))?;
    Ok(())
}

/// How the evidence `e` was settled, if it was.
pub fn settled(ledger: &Ledger, e: &ForkEvidence) -> Result<Option<Settled>, LedgerError> {
    let path = ledger.path();
    let db = ledger.database();
    let ks =
        db.keyspace(RESOLVED, KeyspaceCreateOptions::default).map_err(storage("open keyspace forks_resolved", path))?;
    let Some(v) = ks.get(key(e)).map_err(storage("read fork resolution", path))? else { return Ok(None) };
    postcard::from_bytes(&v).map(Some).map_err(|err| LedgerError::Corrupt {
        path: path.to_path_buf(),
        seq: e.seq(),
        corruption: Box::new(Corruption::Metadata { key: "forks_resolved".into(), reason: err.to_string() }),
    })
}

/// The stored fork evidence not yet settled, oldest fork first.
pub fn unresolved(ledger: &Ledger) -> Result<Vec<ForkEvidence>, LedgerError> {
    let mut out = Vec::new();
    for e in list(ledger)? {
        if settled(ledger, &e)?.is_none() {
            out.push(e);
        }
    }
    Ok(out)
}
