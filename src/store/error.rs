//! The store's errors: what can go wrong reading or writing a ledger ([`LedgerError`]), what
//! is wrong with a stored record ([`Corruption`]), and why a range was refused
//! ([`RangeRefusal`]).
//!
//! Which errors are fatal for a ledger: [`LedgerError::Storage`] after a failed durable write
//! and [`LedgerError::EngineStopped`] (fjall poisons its database; reopen the ledger), and
//! [`LedgerError::Corrupt`] found while opening. Everything else leaves the ledger usable.

use std::path::PathBuf;

use serde::Serialize;

use crate::core::projection::Rejection;
use crate::core::types::{ChainHash, NetworkFingerprint, NodeId};
use crate::store::record::DecodeError;

/// What is wrong with a stored record, found by reading the ledger back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Corruption {
    /// The record's bytes do not decode.
    #[error("undecodable record: {reason}")]
    Undecodable {
        /// What the decoder said.
        reason: String,
    },
    /// A key in the ledger keyspace that is not an 8-byte sequence number.
    #[error("malformed key of {len} bytes")]
    MalformedKey {
        /// Its length.
        len: usize,
    },
    /// A sequence number is missing.
    #[error("gap: expected seq {expected}, found seq {found}")]
    Gap {
        /// The missing sequence number.
        expected: u64,
        /// The next one present.
        found: u64,
    },
    /// The record stored under one key says it is another sequence number (reordered records).
    #[error("record under key {key} claims seq {claimed}")]
    Misplaced {
        /// The key it is stored under.
        key: u64,
        /// The seq inside the record.
        claimed: u64,
    },
    /// `prev_hash` does not equal the previous record's hash.
    #[error("bad link: prev_hash {found} does not match the previous hash {expected}")]
    BadLink {
        /// The previous record's hash.
        expected: ChainHash,
        /// What this record says.
        found: ChainHash,
    },
    /// The stored hash is not `blake3(prev_hash || seq || event)`.
    #[error("hash mismatch: stored {stored}, computed {computed}")]
    HashMismatch {
        /// Stored in the record.
        stored: ChainHash,
        /// Recomputed.
        computed: ChainHash,
    },
    /// The event's signature does not verify.
    #[error("bad signature by {author}")]
    BadSignature {
        /// The claimed author.
        author: crate::core::types::NodeId,
    },
    /// The event belongs to another network.
    #[error("event of another network (fingerprint {found})")]
    WrongNetwork {
        /// The ledger's network.
        expected: NetworkFingerprint,
        /// The event's.
        found: NetworkFingerprint,
    },
    /// The event is validly stored but the rules reject it (e.g. an unadmitted author).
    #[error("event violates the rules: {rejection}")]
    Rejected {
        /// Why.
        rejection: Rejection,
    },
    /// The ledger ends before the durable head recorded in `meta`.
    #[error("truncated: the recorded head is seq {head_seq} but the ledger ends at {last_seq:?}")]
    Truncated {
        /// The head recorded in `meta`.
        head_seq: u64,
        /// The last record present.
        last_seq: Option<u64>,
    },
    /// Records past the recorded head, or a head hash that does not match.
    #[error("head mismatch: meta says seq {head_seq} hash {head_hash}, the chain says {detail}")]
    HeadMismatch {
        /// The head recorded in `meta`.
        head_seq: u64,
        /// Its hash.
        head_hash: ChainHash,
        /// What was found instead.
        detail: String,
    },
    /// A stored cache (the projection checkpoint, the anchor) that the chain contradicts: the
    /// replay from the records reaches another value than the one stored.
    #[error("the stored {cache} does not match the chain: {detail}")]
    CacheMismatch {
        /// Which cache (`checkpoint`, `anchor`).
        cache: String,
        /// What differs.
        detail: String,
    },
    /// A state checkpoint event attests a state digest that the replay of the records before
    /// it does not reach.
    #[error("the state checkpoint attests state {attested} at seq {head_seq}, the records lead to {computed}")]
    StateDivergence {
        /// The seq whose state is attested.
        head_seq: u64,
        /// The digest the event carries.
        attested: crate::core::types::StateDigest,
        /// The digest of the replayed state.
        computed: crate::core::types::StateDigest,
    },
    /// A metadata value that does not decode.
    #[error("corrupt metadata {key}: {reason}")]
    Metadata {
        /// The meta key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl From<DecodeError> for Corruption {
    fn from(e: DecodeError) -> Self {
        Corruption::Undecodable { reason: e.to_string() }
    }
}

/// Errors of the fjall ledger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// fjall failed. After a failed durable write fjall poisons the database: reopen.
    #[error("storage error during {op} in {path}: {source}")]
    Storage {
        /// What was being done.
        op: &'static str,
        /// The ledger directory.
        path: PathBuf,
        /// fjall's error.
        #[source]
        source: fjall::Error,
    },
    /// fjall stopped taking writes after an earlier one failed (a durable write, or one of its
    /// background writes: a memtable flush, a compaction): it says only "poisoned", so a test
    /// write in the ledger's directory names the condition now (a full disk, a read-only or
    /// failing device). Fatal, as [`LedgerError::Storage`] after a failed durable write: restart
    /// once the cause is fixed.
    #[error("storage error during {op} in {path}: the storage engine stopped after an earlier write failed (perhaps a background flush or compaction); {probe}")]
    EngineStopped {
        /// What was being done.
        op: &'static str,
        /// The ledger directory.
        path: PathBuf,
        /// What a test write in the directory met, in words.
        probe: String,
    },
    /// fjall found its own files damaged (a checksum that fails, a record that does not
    /// decode) and cannot use the database: bad data, not an I/O fault. Nothing was changed.
    #[error("ledger {path} is damaged ({cause}) during {op}; rebuild it with `spore repair --data-dir DIR --from-peer ADDR` (or `--from-seed FILE`), which keeps the node key and the damaged files")]
    Damaged {
        /// What was being done.
        op: &'static str,
        /// The ledger directory.
        path: PathBuf,
        /// Which file and what is wrong with it, in words.
        cause: String,
        /// fjall's error (boxed, like `Corrupt`'s payload, to keep `LedgerError` small).
        #[source]
        source: Box<fjall::Error>,
    },
    /// A filesystem error outside fjall.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// There is no ledger at this path (and creating one was not asked for).
    #[error("no spore ledger at {0}")]
    NotALedger(PathBuf),
    /// Corruption found at a sequence number.
    #[error("ledger {path} is corrupt at seq {seq}: {corruption}")]
    Corrupt {
        /// The ledger directory.
        path: PathBuf,
        /// The first bad sequence number.
        seq: u64,
        /// What is wrong (boxed: it is the largest payload, and every result carrying a
        /// `LedgerError` pays for its size).
        corruption: Box<Corruption>,
    },
    /// The ledger belongs to another network than the caller expected.
    #[error("ledger {path} belongs to network {found}, expected {expected}")]
    WrongNetwork {
        /// The ledger directory.
        path: PathBuf,
        /// Expected fingerprint.
        expected: NetworkFingerprint,
        /// The ledger's.
        found: NetworkFingerprint,
    },
    /// An earlier durable write failed; the in-memory state may be ahead of the disk.
    #[error("ledger {0} is poisoned by an earlier failed write; reopen it")]
    Poisoned(PathBuf),
    /// A thread panicked while holding the shared ledger's lock
    /// ([`crate::store::ledger::LedgerLock`]): its in-memory state may be half updated, so
    /// nothing reads or writes it any more until the node restarts and reopens it from disk.
    #[error("ledger {path}: a thread panicked while holding its lock; its in-memory state is not trusted any more, restart the node")]
    LockPoisoned {
        /// The ledger directory.
        path: PathBuf,
    },
    /// Too many events in one append.
    #[error("append of {got} events exceeds the batch limit {max}")]
    BatchTooLarge {
        /// The limit.
        max: usize,
        /// What was given.
        got: usize,
    },
    /// The ledger's database is still open after its system was shut down: tasks of the
    /// stopped system still hold it.
    #[error("ledger {path} is still open {waited:?} after shutdown")]
    StillOpen {
        /// The ledger directory.
        path: PathBuf,
        /// How long shutdown waited for it to close.
        waited: std::time::Duration,
    },
    /// The ledger does not hold the history asked for: it was loaded from a state-only seed
    /// and has not backfilled below `held_from` yet.
    #[error("ledger {path} holds its history only from seq {held_from} (loaded from a state-only seed; the rest is being backfilled)")]
    HistoryIncomplete {
        /// The ledger directory.
        path: PathBuf,
        /// The first sequence number held.
        held_from: u64,
    },
    /// A read asked for events this ledger pruned under its retention policy: they are in
    /// its archives (signed seed files, oldest first), which forensics read with the ledger
    /// as one history.
    #[error("ledger {path} holds its history only from seq {held_from}; the events below were archived in {}", archives_list(.archives))]
    HistoryArchived {
        /// The ledger directory.
        path: PathBuf,
        /// The first sequence number held.
        held_from: u64,
        /// The archive files, oldest first.
        archives: Vec<PathBuf>,
    },
    /// A chained range (from gossip) was refused as a whole; nothing of it was stored.
    #[error("range refused at seq {seq}: {reason}")]
    RangeRefused {
        /// The first offending event.
        seq: u64,
        /// Why.
        reason: RangeRefusal,
    },
}

/// Why [`crate::Ledger::append_range`] refused a range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeRefusal {
    /// The range does not continue the head (wrong sequence number or `prev_hash`).
    #[error("not the next link (expected seq {expected})")]
    NotNext {
        /// The sequence number the ledger expects.
        expected: u64,
    },
    /// An event's hash is not the hash of its content after its `prev_hash`.
    #[error("chain hash does not match the content")]
    BadHash,
    /// An event's signature does not verify.
    #[error("bad signature by {0}")]
    BadSignature(NodeId),
    /// An event breaks a rule (network, admission, semantics).
    #[error("rejected: {0}")]
    Rejected(crate::core::projection::Rejection),
    /// The range carries the first event of a branch this node yielded in a split-brain
    /// (see [`crate::store::ledger::Ledger::refuse_branch`]).
    #[error("the event at this seq starts a branch this node yielded in a split-brain")]
    LostBranch,
    /// A backfilled range does not end at the point below the history the ledger holds
    /// (`None`: the ledger's history is complete).
    #[error("not the history below what the ledger holds (expected a range ending at seq {expected:?})")]
    NotBelow {
        /// Where the range must end.
        expected: Option<u64>,
    },
}

/// The archive files of a [`LedgerError::HistoryArchived`], for its message.
fn archives_list(archives: &[PathBuf]) -> String {
    archives.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}
