//! Loading a verified seed into a ledger.

use super::{QuorumSeed, Seed, SeedError};
use crate::core::event::ChainedEvent;
use crate::core::projection::ChainHead;
use crate::store::error::LedgerError;
use crate::store::ledger::Ledger;

/// Imports a verified seed's events into `ledger`: all of them into an empty ledger, or the
/// ones after its head when the seed extends it. Each event is re-verified and re-chained by
/// the ledger; the result must land exactly on the seed's head. A **state-only** seed loads
/// into an empty ledger: its attested state ([`Seed::base`], or a format 1 seed's state at its
/// head) with the history below to be backfilled by gossip
/// ([`Ledger::load_state_only`](Ledger::load_state_only)), then the
/// events after it, verified and chained like any others.
/// Refused, with nothing written: a state-only seed into a non-empty ledger, one not newer
/// than the ledger, one whose chain differs from the ledger's, another network's, and any
/// ledger that Raft manages.
#[tracing::instrument(level = "info", skip_all, fields(seed_seq = seed.header.head_seq))]
pub fn import(ledger: &mut Ledger, seed: &Seed) -> Result<ChainHead, SeedError> {
    let path = ledger.path().display().to_string();
    let io = |e: crate::store::error::LedgerError| SeedError::Io { path: path.clone(), reason: e.to_string() };
    if ledger.meta_get(b"raft_applied").map_err(io)?.is_some() {
        return Err(SeedError::RaftManaged);
    }
    if !seed.header.includes_events {
        if ledger.head().is_some() {
            return Err(SeedError::EventsRequired);
        }
        let base = seed.base.as_ref().unwrap_or(&seed.state);
        ledger.load_state_only(base.clone()).map_err(io)?;
        append_all(ledger, &seed.events, &io)?;
        let head = ledger.head().ok_or(SeedError::StateMismatch("nothing imported".into()))?;
        if (head.seq, head.hash) != (seed.header.head_seq, seed.header.head_hash)
            || ledger.projection().state() != &seed.state
        {
            return Err(SeedError::StateMismatch(
                "the imported state and events did not reproduce the seed's head".into(),
            ));
        }
        ledger.set_imported(true).map_err(io)?;
        ledger.set_seed_anchor(Some(crate::core::types::ChainPoint { seq: head.seq, hash: head.hash })).map_err(io)?;
        return Ok(head);
    }
    let start = match ledger.head() {
        None => 0,
        Some(own) => {
            if ledger.fingerprint() != Some(seed.header.fingerprint) {
                return Err(SeedError::WrongNetwork {
                    expected: ledger.fingerprint().unwrap_or_default(),
                    found: seed.header.fingerprint,
                });
            }
            if own.seq >= seed.header.head_seq {
                return Err(SeedError::NotNewer { seed_seq: seed.header.head_seq, own_seq: own.seq });
            }
            let at = usize::try_from(own.seq).map_err(|_| SeedError::Diverges { seq: own.seq })?;
            if seed.events.get(at).map(|e| e.hash) != Some(own.hash) {
                return Err(SeedError::Diverges { seq: own.seq });
            }
            at + 1
        }
    };
    append_all(ledger, &seed.events[start..], &io)?;
    let head = ledger.head().ok_or(SeedError::StateMismatch("nothing imported".into()))?;
    if (head.seq, head.hash) != (seed.header.head_seq, seed.header.head_hash) {
        return Err(SeedError::StateMismatch("the imported events did not reproduce the seed's head".into()));
    }
    ledger.write_checkpoint().map_err(io)?;
    ledger.set_imported(true).map_err(io)?;
    ledger.set_seed_anchor(Some(crate::core::types::ChainPoint { seq: head.seq, hash: head.hash })).map_err(io)?;
    Ok(head)
}

/// Appends `events` through the ledger's own checks, in batches; the first refused one ends it.
fn append_all(
    ledger: &mut Ledger,
    events: &[ChainedEvent],
    io: &impl Fn(LedgerError) -> SeedError,
) -> Result<(), SeedError> {
    for chunk in events.chunks(crate::core::limits::APPEND_BATCH_MAX) {
        let outcomes = ledger.append(chunk.iter().map(|c| c.event.clone()).collect()).map_err(io)?;
        if let Some((i, r)) = outcomes.iter().enumerate().find_map(|(i, o)| o.as_ref().err().map(|r| (i, r))) {
            return Err(SeedError::BadEvents { seq: chunk[i].seq, reason: r.to_string() });
        }
    }
    Ok(())
}
/// Bulk-imports a quorum-signed seed into an **empty** ledger that Raft does not manage: the
/// records verbatim and the seed's state as projection and checkpoint, synced once.
#[tracing::instrument(level = "info", skip_all, fields(seed_seq = seed.header.head_seq))]
pub fn import_quorum(ledger: &mut Ledger, seed: &QuorumSeed<'_>) -> Result<ChainHead, SeedError> {
    let path = ledger.path().display().to_string();
    let io = |e: crate::store::error::LedgerError| SeedError::Io { path: path.clone(), reason: e.to_string() };
    if ledger.meta_get(b"raft_applied").map_err(io)?.is_some() {
        return Err(SeedError::RaftManaged);
    }
    if let Some(own) = ledger.head() {
        return Err(if own.seq >= seed.header.head_seq {
            SeedError::NotNewer { seed_seq: seed.header.head_seq, own_seq: own.seq }
        } else {
            SeedError::StateMismatch("a bulk import needs an empty ledger; use `import` to extend one".into())
        });
    }
    let head = ledger.load_attested(&seed.records, seed.state.clone()).map_err(io)?;
    ledger.set_imported(true).map_err(io)?;
    ledger.set_seed_anchor(Some(crate::core::types::ChainPoint { seq: head.seq, hash: head.hash })).map_err(io)?;
    Ok(head)
}
