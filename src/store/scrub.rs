//! Scrubbing: re-verifying the stored chain a page at a time, and repairing damaged records
//! with copies from a peer that the intact chain around them vouches for.
//!
//! A scrub step reads the next page of records (decode, key, link, chain hash, signature, the
//! link to the record before it and, at the end, the recorded head) and moves its cursor on;
//! at the head it starts a new pass. Damage found is reported with its seq. A repair takes
//! candidate records for a damaged stretch and writes them only if they are exactly the
//! chain's: every candidate's hash is the hash of its content, every signature verifies, each
//! links to the next, the first to the intact record before the stretch, and the last to the
//! intact record after it (or to the recorded head). A peer can therefore only supply the
//! bytes that were lost, never others.

use crate::core::event::ChainedEvent;
use crate::core::types::ChainHash;
use crate::store::error::{Corruption, LedgerError};

use super::ledger::{verify_signatures, Ledger};

/// Where a scrub is, across steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrubCursor {
    /// The next seq to check.
    pub next: u64,
    /// Completed passes over the whole held history.
    pub passes: u64,
}

/// What one scrub step found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScrubStep {
    /// This many records checked and sound.
    Clean(u64),
    /// A record that fails its checks (the cursor stays on it until it is repaired).
    Damaged {
        /// Its seq.
        seq: u64,
        /// What is wrong.
        corruption: Corruption,
    },
}

/// Checks up to `max` records at the cursor and moves it on (see the module doc).
/// [`scrub_read`] then [`scrub_verify`].
pub fn scrub_step(ledger: &Ledger, cursor: &mut ScrubCursor, max: u64) -> Result<ScrubStep, LedgerError> {
    match scrub_read(ledger, cursor, max)? {
        ScrubRead::Page(page) => Ok(scrub_verify(&page, cursor)),
        ScrubRead::Damaged(step) => Ok(step),
    }
}

/// A page read for the scrub: its records (links, keys and hashes checked), to be verified by
/// [`scrub_verify`] without holding the ledger.
#[derive(Debug)]
pub struct ScrubPage {
    events: Vec<ChainedEvent>,
    /// The cursor after this page, if its signatures verify.
    next: ScrubCursor,
}

/// What [`scrub_read`] found.
#[derive(Debug)]
pub enum ScrubRead {
    /// A page to verify.
    Page(ScrubPage),
    /// Damage found while reading.
    Damaged(ScrubStep),
}

/// Signatures of a page read by [`scrub_read`]; on success moves `cursor` past it. Holds no
/// lock: the scrubber reads under the ledger's lock and verifies after releasing it.
pub fn scrub_verify(page: &ScrubPage, cursor: &mut ScrubCursor) -> ScrubStep {
    if let Some(bad) = verify_signatures(&page.events).iter().position(|ok| !ok) {
        return ScrubStep::Damaged {
            seq: page.events[bad].seq,
            corruption: Corruption::BadSignature { author: page.events[bad].event.author },
        };
    }
    *cursor = page.next;
    ScrubStep::Clean(page.events.len() as u64)
}

/// Reads and checks (keys, links, hashes, the head) up to `max` records at the cursor.
#[tracing::instrument(level = "debug", skip(ledger), fields(path = %ledger.path().display()))]
pub fn scrub_read(ledger: &Ledger, cursor: &mut ScrubCursor, max: u64) -> Result<ScrubRead, LedgerError> {
    let damaged = |seq, corruption| Ok(ScrubRead::Damaged(ScrubStep::Damaged { seq, corruption }));
    let Some(head) = ledger.head() else { return Ok(ScrubRead::Page(ScrubPage { events: Vec::new(), next: *cursor })) };
    let held_from = ledger.history_from();
    if cursor.next > head.seq || cursor.next < held_from {
        cursor.next = held_from;
    }
    let from = cursor.next;
    let to = (from + max.max(1) - 1).min(head.seq);
    // One record before the page, so the page's first link is checked too.
    let read_from = if from > held_from { from - 1 } else { from };
    let mut events = match ledger.read_range(read_from, to) {
        Ok(e) => e,
        Err(LedgerError::Corrupt { seq, corruption, .. }) => return damaged(seq, *corruption),
        Err(LedgerError::Damaged { cause, .. }) => return damaged(from, Corruption::Undecodable { reason: cause }),
        Err(e) => return Err(e),
    };
    if read_from < from && !events.is_empty() {
        events.remove(0);
    }
    if events.len() as u64 != to - from + 1 {
        let last = events.last().map(|e| e.seq);
        return damaged(last.map_or(from, |s| s + 1), Corruption::Truncated { head_seq: head.seq, last_seq: last });
    }
    if to == head.seq && events.last().map(|e| e.hash) != Some(head.hash) {
        let detail = "the last record is not the head".to_string();
        return damaged(to, Corruption::HeadMismatch { head_seq: head.seq, head_hash: head.hash, detail });
    }
    let mut next = ScrubCursor { next: to + 1, passes: cursor.passes };
    if to == head.seq {
        next.passes += 1;
        next.next = held_from;
    }
    Ok(ScrubRead::Page(ScrubPage { events, next }))
}

/// Why a repair was refused; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// The candidates are not the chain's records for that stretch.
    #[error("the records offered for seq {seq} are not this chain's: {why}")]
    NotTheChain {
        /// The first offending seq.
        seq: u64,
        /// What did not hold.
        why: String,
    },
    /// Reading or writing the ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Replaces the damaged records `candidates[0].seq ..= last` with `candidates` if the intact
/// chain around them vouches for every byte (see the module doc). Returns how many were
/// written.
#[tracing::instrument(level = "info", skip_all, fields(path = %ledger.path().display(), from = candidates.first().map(|c| c.seq)))]
pub fn repair(ledger: &mut Ledger, candidates: &[ChainedEvent]) -> Result<usize, RepairError> {
    let (Some(first), Some(last)) = (candidates.first(), candidates.last()) else { return Ok(0) };
    let refuse = |seq, why: &str| RepairError::NotTheChain { seq, why: why.to_string() };
    let head = ledger.head().ok_or_else(|| refuse(first.seq, "the ledger is empty"))?;
    if first.seq < ledger.history_from() || last.seq > head.seq {
        return Err(refuse(first.seq, "outside the history held"));
    }
    for (i, c) in candidates.iter().enumerate() {
        if c.seq != first.seq + i as u64 {
            return Err(refuse(c.seq, "not consecutive"));
        }
        if !c.hash_is_valid() {
            return Err(refuse(c.seq, "its hash is not the hash of its content"));
        }
        if let Some(next) = candidates.get(i + 1) {
            if next.prev_hash != c.hash {
                return Err(refuse(next.seq, "it does not link to the record before it"));
            }
        }
    }
    if let Some(bad) = verify_signatures(candidates).iter().position(|ok| !ok) {
        return Err(refuse(candidates[bad].seq, "its signature does not verify"));
    }
    // Anchors: the intact record after the stretch (or the head), and the one before it.
    let after: ChainHash = if last.seq == head.seq {
        head.hash
    } else {
        let next = ledger.read_range(last.seq + 1, last.seq + 1).map_err(|_| {
            refuse(last.seq + 1, "the record after the stretch is damaged too: repair from the top down")
        })?;
        next.first()
            .map(|e| e.prev_hash)
            .ok_or_else(|| refuse(last.seq + 1, "the record after the stretch is missing"))?
    };
    if after != last.hash {
        return Err(refuse(last.seq, "the intact chain after it names another hash"));
    }
    if first.seq > ledger.history_from() {
        let before = ledger
            .read_range(first.seq - 1, first.seq - 1)
            .map_err(|_| refuse(first.seq - 1, "the record before the stretch is damaged too"))?;
        if before.first().map(|e| e.hash) != Some(first.prev_hash) {
            return Err(refuse(first.seq, "it does not link to the intact record before it"));
        }
    }
    ledger.overwrite_records(candidates)?;
    tracing::warn!(from = first.seq, to = last.seq, "damaged records repaired with copies the chain vouches for");
    Ok(candidates.len())
}
