//! Retention: a ledger's old history archived as signed seed files, then pruned.
//!
//! A [`RetentionPolicy`] says how much history a node keeps (the last N events, the last T of
//! time, or both: then the longer). [`archive_and_prune`] finds the newest state the chain
//! attests at or below what the policy lets go (a state right before a state checkpoint event
//! carrying its digest), writes the history from where the ledger's history starts up to that
//! state as a seed file, reads the file back and verifies it (digest, signature, every link and
//! signature of its events, and its state by replay), and only then prunes the ledger to that
//! state in one atomic step ([`Ledger::prune_to`]), and deletes the records let go without
//! holding the ledger's lock. The first archive of a ledger that holds its
//! history from genesis is a full seed (format 1); each later one is a state-only seed (format
//! 2) whose state is the previous prune's, proved by the state checkpoint event its events start
//! with. So the archives of one node chain: each one's state is the previous one's head.
//!
//! Everything is read from a view of the ledger's records, without its lock
//! (`store::ledger::RecordsView`); only the prune itself takes the write lock, for one small
//! batch that the deletion syncs after the lock is released.

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use super::encode::header_of;
use super::export::{replay_to_attested, write_streamed};
use super::{SeedError, VerifyPolicy};
use crate::core::keys::NodeKey;
use crate::core::projection::ProjectionState;
use crate::core::types::Timestamp;
use crate::store::ledger::{Ledger, LedgerLock, Pruned};

/// How much history a node keeps. With neither bound it keeps everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep at least the newest this many events.
    pub keep_events: Option<u64>,
    /// Keep at least the events of this long (by their timestamps, from the newest back).
    pub keep_for: Option<Duration>,
}

impl RetentionPolicy {
    /// Whether it ever prunes.
    pub fn prunes(&self) -> bool {
        self.keep_events.is_some() || self.keep_for.is_some()
    }
}

/// What [`archive_and_prune`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Archived {
    /// The archive file written (and verified).
    pub file: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// The prune: the range of sequence numbers archived and let go, and how long the switch
    /// took (the only part that holds the ledger's write lock).
    pub pruned: Pruned,
    /// Records deleted after the switch (more than the range after a crash left some).
    pub removed: u64,
    /// How long finding the state to keep took (a replay of the held history up to it).
    pub planned_in: Duration,
    /// How long writing and verifying the archive took.
    pub archived_in: Duration,
    /// How long deleting the records took (without the ledger's lock).
    pub removed_in: Duration,
}

/// Events read from the records view at a time (copied, then replayed or written).
const PAGE_EVENTS: u64 = 1024;

fn ledger_io(e: crate::store::error::LedgerError) -> SeedError {
    SeedError::Io { path: String::new(), reason: format!("reading the ledger: {e}") }
}

/// The newest state the chain attests whose events may all go under `policy` at `now`: replays
/// the held history (from its start) up to the first event the policy keeps, read without the
/// ledger's lock. `None` when there is nothing to prune yet.
pub fn plan(
    ledger: &RwLock<Ledger>,
    policy: &RetentionPolicy,
    now: Timestamp,
) -> Result<Option<ProjectionState>, SeedError> {
    if !policy.prunes() {
        return Ok(None);
    }
    let (mut p, from, head) = {
        let l = ledger.read_ledger().map_err(ledger_io)?;
        let Some(head) = l.head() else { return Ok(None) };
        (l.history_start(), l.history_from(), head.seq)
    };
    // The first event kept by count: the newest `keep_events`.
    let keep_from = match policy.keep_events {
        Some(n) => (head + 1).saturating_sub(n),
        None => head + 1,
    };
    // Timestamps are microseconds since the Unix epoch.
    let cutoff = policy.keep_for.map(|d| now.0.saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)));
    if keep_from <= from && cutoff.is_none() {
        return Ok(None);
    }
    // Events before `keep_from` are candidates while older than the cutoff; pages are small,
    // so writers wait at most for one small copy.
    let found = match keep_from.min(head + 1).checked_sub(1) {
        Some(last) => replay_to_attested(ledger, &mut p, from, last, PAGE_EVENTS, Path::new(""), |ev| {
            cutoff.is_some_and(|c| ev.event.timestamp.0 >= c)
        })?,
        None => None,
    };
    // A state at or below the last event not held prunes nothing.
    Ok(found.filter(|s| s.head.is_some_and(|h| h.seq >= from)))
}

/// The archive file name for the history `from..=to` of the network `network`.
fn file_name(network: &str, from: u64, to: u64) -> String {
    let safe: String =
        network.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    format!("{safe}-{from:020}-{to:020}.seed")
}

/// The threads an archive's verification runs on: one core fewer than the machine has (one at
/// least), so the node's own writes always find a core free. Checked on every core, the
/// archive's 100k signatures kept a durable append waiting 5–8 ms for one (`benches/retention.rs`).
fn verifier() -> std::io::Result<rayon::ThreadPool> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    rayon::ThreadPoolBuilder::new()
        .num_threads(cores.saturating_sub(1).max(1))
        .thread_name(|i| format!("archive-verify-{i}"))
        .build()
        .map_err(std::io::Error::other)
}

/// Archives and prunes what `policy` lets go (see the module doc), signing the archive with
/// `signer` (a voter's key: a seed is verified against the voters at its head) into `dir`.
/// `None` when there is nothing to prune yet. A failure at any step before the prune leaves the
/// ledger as it was (a partly written archive is never renamed into place).
#[tracing::instrument(level = "info", skip(ledger, signer), fields(dir = %dir.display()))]
pub fn archive_and_prune(
    ledger: &RwLock<Ledger>,
    signer: &NodeKey,
    dir: &Path,
    policy: &RetentionPolicy,
) -> Result<Option<Archived>, SeedError> {
    let io = |e: std::io::Error| SeedError::Io { path: dir.display().to_string(), reason: e.to_string() };
    let started = Instant::now();
    let Some(keep) = plan(ledger, policy, Timestamp::now())? else { return Ok(None) };
    let planned_in = started.elapsed();
    let at = keep.head.ok_or(SeedError::StateMismatch("the state to keep has no head".into()))?;
    let (from, base) = {
        let l = ledger.read_ledger().map_err(ledger_io)?;
        let from = l.history_from();
        (from, (from > 0).then(|| l.history_start().state().clone()))
    };
    // A full seed from genesis, or a state-only one from the last prune's state.
    let header = header_of(&keep, base.is_none())?;
    let state = base.as_ref().unwrap_or(&keep);
    std::fs::create_dir_all(dir).map_err(io)?;
    let file = dir.join(file_name(&header.network.network_name, from, at.seq));
    let bytes = write_streamed(ledger, signer, &file, &header, state, from, at.seq, PAGE_EVENTS)?;
    let policy = VerifyPolicy { require_quorum: false, expected_network: Some(header.fingerprint) };
    let written = verifier().map_err(io)?.install(|| super::read_file(&file, policy));
    match written {
        Ok(seed) if (seed.header.head_seq, seed.header.head_hash) == (at.seq, at.hash) => {}
        Ok(seed) => {
            return Err(SeedError::StateMismatch(format!(
                "archive {} reads back at seq {}, expected {}",
                file.display(),
                seed.header.head_seq,
                at.seq
            )))
        }
        Err(e) => {
            return Err(SeedError::Io {
                path: file.display().to_string(),
                reason: format!("the archive does not verify after writing: {e}"),
            })
        }
    }
    let archived_in = started.elapsed() - planned_in;
    // The attestation (a digest of the state) is checked without the ledger's lock: under it,
    // writers waited up to 5 ms for it.
    let checker = ledger.read_ledger().map_err(ledger_io)?.attestation_check();
    let checked = checker.check(keep).map_err(ledger_io)?;
    let (pruned, remover) = {
        let mut l = ledger.write_ledger().map_err(ledger_io)?;
        l.prune_to_checked(checked, &file).map_err(ledger_io)?
    };
    let removing = Instant::now();
    let removed = remover.run().map_err(ledger_io)?;
    let removed_in = removing.elapsed();
    Ok(Some(Archived { file, bytes, pruned, removed, planned_in, archived_in, removed_in }))
}
