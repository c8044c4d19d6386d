//! Seed spores: signed snapshot files anyone can verify offline.
//!
//! A seed carries a network's identity, a chain head and either the full event range from
//! genesis with the projection state at the head (a *full* seed, format 1), or a *state-only*
//! seed (format 2): the state at a checkpoint the chain attests plus the events after it up to
//! the head, so an importer checks the state against the chain's own state checkpoint event, not
//! against the signer's word. Voters sign its digest; a seed signed by a majority of the voters
//! at its head is *quorum-signed*. Format (see `schema/seed.md`):
//!
//! ```text
//! magic        8 bytes  "MYCSEED\0"
//! version      u16 LE   1 (full, or a legacy state-only seed at its head) or 2 (state-only)
//! header_len   u32 LE   ≤ SEED_HEADER_BYTES_MAX
//! header       BCS(SeedHeader)
//! state_len    u64 LE
//! state        projection checkpoint record (store::record framing, rkyv)
//! event_count  u64 LE   full: head.seq + 1; format 2: head.seq − state seq; format 1 state-only: 0
//! events       event_count × (u32 LE length ‖ ledger record)
//! digest       32 bytes blake3(everything above)
//! sig_count    u16 LE   ≤ SEED_SIGNATURES_MAX
//! signatures   sig_count × (signer NodeId 32 ‖ ed25519 64) over DOMAIN_SEED ‖ fingerprint ‖ digest
//! ```
//!
//! Nothing is trusted before the digest and at least one signature check out; included events
//! must chain, replay under the rules and carry valid signatures, and the state they reach must
//! be the one the header names.
//!
//! The module is split by job: `encode` (framing and building), `verify` (decoding and every
//! check), `export` (streaming a ledger into a file), `import` (loading a verified seed into
//! a ledger) and `archive` (retention: old history archived as seeds, then pruned).

use serde::{Deserialize, Serialize};

use crate::core::event::ChainedEvent;
use crate::core::projection::{ChainHead, Projection, ProjectionState};
use crate::core::types::{ChainHash, NetworkFingerprint, NetworkIdentityRecord, NodeId};

pub mod archive;
mod encode;
mod export;
mod import;
mod verify;

pub use encode::{
    build, build_raw, build_state_only, encode_unsigned, encode_unsigned_raw, seed_signing_message, write_atomically,
};
pub(crate) use encode::{parent_dir, persist_synced};
pub use export::{export, Exported};
pub use import::{import, import_quorum};
pub use verify::{add_signature, read_file, verify, verify_quorum, QuorumSeed, VerifyPolicy};

/// File magic.
pub const SEED_MAGIC: &[u8; 8] = b"MYCSEED\0";
/// Format 1: full seeds (and, from older versions, state-only seeds at their head, which only
/// their signers vouch for). Still written for full seeds, which did not change.
pub const SEED_FORMAT_V1: u16 = 1;
/// Format 2: state-only seeds whose state the chain attests (same framing as format 1).
pub const SEED_FORMAT_V2: u16 = 2;
/// Domain tag of seed signatures.
pub const DOMAIN_SEED_SIGNATURE: &[u8] = b"mycnet-spores/v1/seed-signature\0";
/// Largest header accepted.
pub const SEED_HEADER_BYTES_MAX: usize = 64 * 1024;
/// Most signatures accepted.
pub const SEED_SIGNATURES_MAX: usize = 64;

/// The seed's header (BCS-encoded in the file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedHeader {
    /// The network.
    pub network: NetworkIdentityRecord,
    /// Its fingerprint (checked against `network` and the founder in the state).
    pub fingerprint: NetworkFingerprint,
    /// The chain head the seed captures.
    pub head_seq: u64,
    /// Hash at `head_seq`.
    pub head_hash: ChainHash,
    /// Whether the full event range is included.
    pub includes_events: bool,
}

/// What a verified seed's state rests on: what [`verify`] could prove about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StateProof {
    /// The events from genesis replay to it (a full seed).
    FullHistory,
    /// The chain's state checkpoint event at `seq + 1`, signed by `by` (a voter), attests the
    /// state at `seq`, and the included events replay from there to the head.
    AttestedAt {
        /// The seq of the attested state.
        seq: u64,
        /// The author of the state checkpoint event.
        by: NodeId,
    },
    /// Nothing but the seed's signatures: a format 1 state-only seed, written before states
    /// were attested in the chain. `verify` says so; it is still accepted.
    SignersOnly,
}

impl std::fmt::Display for StateProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateProof::FullHistory => write!(f, "replayed from genesis"),
            StateProof::AttestedAt { seq, by } => write!(
                f,
                "attested by the chain at seq {seq} (state checkpoint by {}), events replayed from there",
                by.short()
            ),
            StateProof::SignersOnly => {
                write!(f, "NOT proven: a format 1 state-only seed, trusted on its signers' word alone")
            }
        }
    }
}

/// A decoded, verified seed.
#[derive(Clone, Debug)]
pub struct Seed {
    /// The format version of the file.
    pub version: u16,
    /// The header.
    pub header: SeedHeader,
    /// The projection at the head.
    pub state: ProjectionState,
    /// A format 2 state-only seed's attested state (below the head), from which `events`
    /// replay to `state`.
    pub base: Option<ProjectionState>,
    /// What the state rests on.
    pub proof: StateProof,
    /// Events from genesis to the head (full seeds), or from after `base` to the head
    /// (format 2 state-only seeds).
    pub events: Vec<ChainedEvent>,
    /// The digest the signatures cover.
    pub digest: [u8; 32],
    /// Signers whose signatures verified.
    pub signers: Vec<NodeId>,
}

/// Why a seed was refused. Nothing is imported from a refused seed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SeedError {
    /// Not a seed file (bad magic).
    #[error("not a seed file (bad magic)")]
    BadMagic,
    /// A format version this code cannot read.
    #[error("unsupported seed format version {0}")]
    UnsupportedVersion(u16),
    /// The file ends early.
    #[error("truncated seed file: {0}")]
    Truncated(&'static str),
    /// A length field over its limit.
    #[error("{what} of {got} bytes exceeds the limit {max}")]
    TooLarge {
        /// Which part.
        what: &'static str,
        /// Limit.
        max: usize,
        /// Found.
        got: usize,
    },
    /// The header does not decode.
    #[error("corrupt header: {0}")]
    Header(String),
    /// The digest does not match the content (any flipped byte before the signatures).
    #[error("digest mismatch: the seed's content was modified")]
    DigestMismatch,
    /// Bytes after the signatures.
    #[error("{0} trailing bytes after the signatures")]
    Trailing(usize),
    /// A signature that does not verify.
    #[error("signature by {0} does not verify")]
    BadSignature(NodeId),
    /// A signer that is not a voter at the seed's head.
    #[error("signer {0} is not a voter at the seed's head")]
    NotAVoter(NodeId),
    /// No valid signature at all.
    #[error("the seed is unsigned")]
    Unsigned,
    /// Fewer voter signatures than a majority where a quorum is required.
    #[error("signed by {got} of {voters} voters; a quorum needs {needed}")]
    UnderSigned {
        /// Valid voter signatures.
        got: usize,
        /// Voters at the head.
        voters: usize,
        /// Majority.
        needed: usize,
    },
    /// The state does not decode or does not match the header.
    #[error("state does not match the header: {0}")]
    StateMismatch(String),
    /// The seed belongs to another network.
    #[error("seed of network {found}, expected {expected}")]
    WrongNetwork {
        /// Expected.
        expected: NetworkFingerprint,
        /// Found.
        found: NetworkFingerprint,
    },
    /// Included events do not chain or do not replay to the state.
    #[error("event range is invalid at seq {seq}: {reason}")]
    BadEvents {
        /// First bad seq.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// The primary's chain does not pass through the seed's head.
    #[error(
        "the primary does not extend the seed's head at seq {seed_seq} (primary head: {primary_head:?}): {reason}"
    )]
    NotExtended {
        /// The seed's head.
        seed_seq: u64,
        /// The primary's head.
        primary_head: Option<u64>,
        /// What differs.
        reason: String,
    },
    /// The seed is not newer than the ledger it would be imported into.
    #[error(
        "the seed's head (seq {seed_seq}) is not newer than this ledger's head (seq {own_seq}); nothing to import"
    )]
    NotNewer {
        /// The seed's head.
        seed_seq: u64,
        /// The ledger's head.
        own_seq: u64,
    },
    /// The seed's chain and the ledger's differ.
    #[error("the seed's chain differs from this ledger at seq {seq}")]
    Diverges {
        /// Where.
        seq: u64,
    },
    /// The ledger takes part in Raft: importing behind its back would let Raft apply
    /// entries twice.
    #[error("this ledger is a Raft member's; import into a new data dir and form or join from there")]
    RaftManaged,
    /// A state-only seed's state is not the one the chain attests at its seq.
    #[error("the seed's state is not the one the chain attests: {0}")]
    NotAttested(String),
    /// The operation needs the full event range and the seed carries only the state.
    #[error("this needs a seed that includes its events (export it with events)")]
    EventsRequired,
    /// Filesystem error.
    #[error("I/O error on {path}: {reason}")]
    Io {
        /// File.
        path: String,
        /// OS error.
        reason: String,
    },
}

impl Seed {
    /// The seed's head.
    pub fn head(&self) -> ChainHead {
        ChainHead {
            seq: self.header.head_seq,
            hash: self.header.head_hash,
            timestamp: self.state.head.map(|h| h.timestamp).unwrap_or_default(),
        }
    }

    /// The projection at the head.
    pub fn projection(&self) -> Projection {
        Projection::from_state(self.state.clone())
    }

    /// Whether a majority of the voters at the seed's head signed it (a verified seed has at
    /// least one voter's signature; only a quorum-signed one has Seed authority in a
    /// split-brain resolution).
    pub fn is_quorum_signed(&self) -> bool {
        let voters = verify::voters_of(&self.state);
        self.signers.iter().filter(|s| voters.contains(s)).count() >= verify::quorum_of(voters.len())
    }
}

#[cfg(test)]
mod tests;
