//! Provisional events held by a node until they are committed: the `provisional` keyspace of
//! the ledger's fjall database (key: event id, value: postcard `ProvisionalEvent`). Each is
//! checked (statement and event signatures, network) before it is stored.

use fjall::{KeyspaceCreateOptions, PersistMode};

use super::ledger::{storage, Ledger};
use crate::core::event::ChainedEvent;
use crate::core::provisional::{check_absent, EventId, ProvisionalError, ProvisionalEvent};
use crate::store::error::{Corruption, LedgerError};

const KEYSPACE: &str = "provisional";
/// Most provisional events a node holds; beyond it new ones are refused (the author keeps its
/// own and retries).
pub const HELD_MAX: usize = 4096;

fn keyspace(ledger: &Ledger) -> Result<fjall::Keyspace, LedgerError> {
    ledger
        .database()
        .keyspace(KEYSPACE, KeyspaceCreateOptions::default)
        .map_err(storage("open keyspace provisional", ledger.path()))
}

/// Stores `p` durably (the caller has checked it). Returns whether it was new; refuses beyond
/// [`HELD_MAX`].
#[tracing::instrument(level = "debug", skip_all, fields(path = %ledger.path().display()))]
pub fn put(ledger: &Ledger, p: &ProvisionalEvent) -> Result<bool, LedgerError> {
    let ks = keyspace(ledger)?;
    let id = p.id();
    if ks.get(id.0).map_err(storage("read provisional", ledger.path()))?.is_some() {
        return Ok(false);
    }
    if ks.len().map_err(storage("count provisional", ledger.path()))? >= HELD_MAX {
        return Err(LedgerError::BatchTooLarge { max: HELD_MAX, got: HELD_MAX + 1 });
    }
    let value = postcard::to_stdvec(p)
        .map_err(|e| LedgerError::Io { path: ledger.path().to_path_buf(), source: std::io::Error::other(e) })?;
    ks.insert(id.0, value).map_err(storage("write provisional", ledger.path()))?;
    ledger.database().persist(PersistMode::SyncData).map_err(storage("sync provisional", ledger.path()))?;
    Ok(true)
}

/// Up to `max` held provisional events (in id order).
pub fn list(ledger: &Ledger, max: usize) -> Result<Vec<ProvisionalEvent>, LedgerError> {
    let ks = keyspace(ledger)?;
    let mut out = Vec::new();
    for guard in ks.iter().take(max) {
        let (_, v) = guard.into_inner().map_err(storage("read provisional", ledger.path()))?;
        let p: ProvisionalEvent = postcard::from_bytes(&v).map_err(|e| LedgerError::Corrupt {
            path: ledger.path().to_path_buf(),
            seq: 0,
            corruption: Box::new(Corruption::Metadata { key: "provisional".into(), reason: e.to_string() }),
        })?;
        out.push(p);
    }
    Ok(out)
}

/// How many are held.
pub fn count(ledger: &Ledger) -> Result<usize, LedgerError> {
    keyspace(ledger)?.len().map_err(storage("count provisional", ledger.path()))
}

/// Forgets one (committed, or refused for good).
pub fn remove(ledger: &Ledger, id: &EventId) -> Result<(), LedgerError> {
    keyspace(ledger)?.remove(id.0).map_err(storage("remove provisional", ledger.path()))
}

/// Forgets every held provisional event that `events` (newly stored chain events) contain;
/// returns their ids. Cheap when nothing is held.
pub fn forget_committed(ledger: &Ledger, events: &[ChainedEvent]) -> Result<Vec<EventId>, LedgerError> {
    let ks = keyspace(ledger)?;
    if ks.is_empty().map_err(storage("count provisional", ledger.path()))? {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for ce in events {
        let id = EventId::of(&ce.event);
        if ks.get(id.0).map_err(storage("read provisional", ledger.path()))?.is_some() {
            ks.remove(id.0).map_err(storage("remove provisional", ledger.path()))?;
            out.push(id);
        }
    }
    Ok(out)
}

/// Whether `id` is held.
pub fn contains(ledger: &Ledger, id: &EventId) -> Result<bool, LedgerError> {
    Ok(keyspace(ledger)?.get(id.0).map_err(storage("read provisional", ledger.path()))?.is_some())
}

/// How many chain events a scan reads at a time.
const SCAN_CHUNK: u64 = 1024;

/// Where `p`'s event is in the chain between `from` and `to` (inclusive), if it is.
pub fn find_committed(
    ledger: &Ledger,
    p: &ProvisionalEvent,
    from: u64,
    to: u64,
) -> Result<Option<crate::core::types::ChainPoint>, LedgerError> {
    let mut at = from;
    while at <= to {
        let end = (at + SCAN_CHUNK - 1).min(to);
        let range = ledger.read_range(at, end)?;
        if let Err(ProvisionalError::Duplicate(seq)) = check_absent(p, &range) {
            if let Some(ce) = range.iter().find(|ce| ce.seq == seq) {
                return Ok(Some(crate::core::types::ChainPoint { seq: ce.seq, hash: ce.hash }));
            }
        }
        at = end + 1;
    }
    Ok(None)
}
