//! Forensics over branches of one network's chain: where two copies diverged, what each did
//! after that, how their registries differ, and every event that touched a node or service.
//!
//! A **branch source** ([`Branch`]) is a ledger (a node's data dir or a ledger dir, opened
//! read-only with [`LedgerReader`]) or a seed file (verified with [`seed::verify`]; it holds
//! the projection state at its head and, optionally, every event from genesis).
//!
//! What can be concluded from what:
//!
//! * Two sources with events: the exact fork point. Because `hash(seq)` identifies the whole
//!   prefix up to `seq` (the chain invariant), "the hashes at `seq` are equal" is true up to
//!   the fork and false after it, so a binary search over `0..=min(heads)` finds it with
//!   about `2 · log2(n)` single-record reads.
//! * A seed **without** events names only two points of its chain: its head and the head its
//!   last checkpoint event attested. Against it, [`fork_point`] decides "identical" or "one
//!   is a prefix of the other" when one head lies on the other chain; otherwise it reports
//!   [`Relation::Unresolved`] with the bounds it can prove, and says why.
//!
//! Memory stays bounded for huge logs: event lists are paged ([`EVENTS_PAGE_MAX`]) and cut at
//! a caller's limit with a count of the rest, projections are replayed in chunks (a prefix two
//! ledgers share once, see [`head_projections`]), and
//! [`blame`] keeps only the latest `limit` entries. Nothing here modifies a source.
//!
//! The files, by job: [`Branch`] and its sources (`branch.rs`), the state at a seq or a time
//! (`state_at.rs`), the fork point, each branch's events and the registry differences
//! (`diff.rs`), the verdict a split-brain resolution would reach (`verdict.rs`), [`blame`]
//! (`blame.rs`), and the fork evidence a node keeps in its ledger's database ([`forks`], the one
//! part that writes).

use std::path::PathBuf;

use crate::core::types::{NetworkFingerprint, Timestamp};
use crate::seed::SeedError;
use crate::store::error::LedgerError;
#[cfg(doc)]
use crate::{seed, store::inspect::LedgerReader};

mod blame;
mod branch;
mod diff;
pub mod forks;
mod state_at;
mod verdict;

pub use blame::{
    blame, resolve_target, BlameEntry, BlameOptions, BlameReport, BlameTarget, Touch, NODE_PREFIX_HEX_MIN,
};
pub use branch::{Branch, BranchInfo, SourceKind, EVENTS_PAGE_MAX};
pub use diff::{
    diff, entity_diff, events_after, fork_point, BranchEvents, DiffReport, EntityDiff, ForkPoint, NodeChange, Relation,
    ServiceChange, Side,
};
pub use state_at::{head_projections, head_projections_work};
pub use verdict::{verdict, Refusal, Verdict, VERDICT_EVENTS_MAX};

/// Why a forensic question could not be answered.
///
/// Bad data (a damaged ledger, a seed that does not verify, two different networks) and
/// questions a source cannot answer (a seed without events asked about its past, a target
/// that is not there) are told apart, so a caller can map them to distinct exit codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForensicsError {
    /// Reading a ledger failed or found damage ([`LedgerError::Corrupt`] names the seq).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A seed file that could not be read or does not verify.
    #[error("seed {path}: {source}")]
    Seed {
        /// The seed file.
        path: PathBuf,
        /// Why it was refused.
        #[source]
        source: SeedError,
    },
    /// The source path cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The path exists but is neither a directory nor a regular file.
    #[error("{0} is neither a ledger directory nor a seed file")]
    NotASource(PathBuf),
    /// A ledger without a single event: there is no chain to compare or search.
    #[error("ledger {0} holds no events")]
    Empty(PathBuf),
    /// The two sources belong to different networks: they share no chain, so there is no
    /// fork point.
    #[error("different networks: {a_path} is network {a}, {b_path} is network {b}; they share no chain")]
    DifferentNetworks {
        /// The first source.
        a_path: PathBuf,
        /// Its fingerprint.
        a: NetworkFingerprint,
        /// The second source.
        b_path: PathBuf,
        /// Its fingerprint.
        b: NetworkFingerprint,
    },
    /// The question needs events a seed without events does not carry.
    #[error("seed {path} carries no events: it can answer only about the state at its head (seq {head_seq}, {head_time}), not {asked}")]
    SeedWithoutEvents {
        /// The seed file.
        path: PathBuf,
        /// Its head.
        head_seq: u64,
        /// Its head's time.
        head_time: Timestamp,
        /// What was asked.
        asked: String,
    },
    /// No node or service matches the blame target.
    #[error("no node or service matches {0:?}")]
    TargetNotFound(String),
    /// A node-id prefix that matches several nodes.
    #[error("{text:?} matches {count} nodes; give more characters")]
    AmbiguousTarget {
        /// The prefix given.
        text: String,
        /// How many nodes it matches.
        count: usize,
    },
}

impl ForensicsError {
    /// True when the data itself is bad or the two sources cannot be compared (damage, a seed
    /// that does not verify, different networks, an empty ledger); false for I/O errors and
    /// questions the data cannot answer.
    pub fn is_bad_data(&self) -> bool {
        match self {
            ForensicsError::Ledger(e) => matches!(e, LedgerError::Corrupt { .. } | LedgerError::WrongNetwork { .. }),
            ForensicsError::Seed { source, .. } => !matches!(source, SeedError::Io { .. }),
            ForensicsError::Empty(_) | ForensicsError::DifferentNetworks { .. } => true,
            ForensicsError::Io { .. }
            | ForensicsError::NotASource(_)
            | ForensicsError::SeedWithoutEvents { .. }
            | ForensicsError::TargetNotFound(_)
            | ForensicsError::AmbiguousTarget { .. } => false,
        }
    }
}
