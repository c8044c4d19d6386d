//! A branch source: a ledger or a seed file opened read-only as one history of the chain, its
//! head, the hashes and the events it can tell.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::ForensicsError;
use crate::core::event::{ChainedEvent, EventBody};
use crate::core::limits::REPLAY_CHUNK_EVENTS;
use crate::core::types::{ChainHash, ChainPoint, NetworkFingerprint, Timestamp};
use crate::seed::{self, Seed, VerifyPolicy};
use crate::store::error::{Corruption, LedgerError};
use crate::store::inspect::LedgerReader;
use crate::store::replay::{ReplayOptions, StopAt};

/// Most events [`Branch::events`] returns per call (one replay chunk).
pub const EVENTS_PAGE_MAX: usize = REPLAY_CHUNK_EVENTS;

/// Which kind of source a branch was read from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceKind {
    /// A ledger directory (every event from genesis).
    Ledger,
    /// A verified seed file.
    Seed {
        /// Whether it carries every event from genesis to its head.
        includes_events: bool,
    },
    /// A ledger that pruned its old history, read together with its archives (verified seed
    /// files, oldest first) as one history from genesis.
    ArchivedLedger {
        /// The archives read.
        archives: Vec<PathBuf>,
    },
}

/// What a branch is, for reports: where it was read from, its network and head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BranchInfo {
    /// The path given (a data dir, ledger dir or seed file).
    pub path: PathBuf,
    /// Ledger or seed.
    pub source: SourceKind,
    /// The network's fingerprint.
    pub fingerprint: NetworkFingerprint,
    /// The network's name.
    pub network_name: String,
    /// The head: the newest event's seq and chain hash.
    pub head: ChainPoint,
    /// The head event's time.
    pub head_time: Timestamp,
}

pub(super) enum Inner {
    Ledger(LedgerReader),
    Seed(Box<Seed>),
}

/// A branch source opened for reading: a ledger or a verified seed. See the module doc.
pub struct Branch {
    pub(super) info: BranchInfo,
    pub(super) inner: Inner,
}

impl std::fmt::Debug for Branch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Branch").field("info", &self.info).finish_non_exhaustive()
    }
}

impl Branch {
    /// Opens `path`: a directory is read as a ledger (a data dir with `ledger/` inside, or a
    /// ledger dir), a regular file as a seed, verified with the default policy (at least one
    /// valid voter signature; every included event's signature and link). Nothing is written.
    #[tracing::instrument(level = "debug", fields(path = %path.display()))]
    pub fn open(path: &Path) -> Result<Branch, ForensicsError> {
        let meta = std::fs::metadata(path).map_err(|source| ForensicsError::Io { path: path.to_path_buf(), source })?;
        if meta.is_dir() {
            Self::open_ledger(path)
        } else if meta.is_file() {
            let seed = seed::read_file(path, VerifyPolicy::default())
                .map_err(|source| ForensicsError::Seed { path: path.to_path_buf(), source })?;
            Ok(Self::from_seed(path, seed))
        } else {
            Err(ForensicsError::NotASource(path.to_path_buf()))
        }
    }

    /// A branch of a seed already verified (e.g. with a stricter [`VerifyPolicy`]); `path` is
    /// what reports call it.
    pub fn from_seed(path: &Path, seed: Seed) -> Branch {
        let head = seed.head();
        let info = BranchInfo {
            path: path.to_path_buf(),
            source: SourceKind::Seed { includes_events: seed.header.includes_events },
            fingerprint: seed.header.fingerprint,
            network_name: seed.header.network.network_name.clone(),
            head: ChainPoint { seq: head.seq, hash: head.hash },
            head_time: head.timestamp,
        };
        Branch { info, inner: Inner::Seed(Box::new(seed)) }
    }

    fn open_ledger(path: &Path) -> Result<Branch, ForensicsError> {
        let reader = LedgerReader::open(path)?;
        if !reader.archives().is_empty() {
            return Self::open_archived(path, &reader);
        }
        let ledger_path = reader.path().to_path_buf();
        let (head_seq, head_hash) = reader.recorded_head()?.ok_or_else(|| ForensicsError::Empty(path.to_path_buf()))?;
        let genesis = read_one(&reader, 0, head_seq)?;
        let EventBody::Genesis { network, .. } = &genesis.event.body else {
            let detail = format!("the event at seq 0 is {}, not genesis", genesis.event.body.kind());
            return Err(corrupt(&ledger_path, 0, Corruption::Metadata { key: "genesis".into(), reason: detail }));
        };
        let network_name = network.network_name.clone();
        let head = read_one(&reader, head_seq, head_seq)?;
        if head.hash != head_hash {
            let detail = format!("hash {} at that seq", head.hash);
            return Err(corrupt(&ledger_path, head_seq, Corruption::HeadMismatch { head_seq, head_hash, detail }));
        }
        let info = BranchInfo {
            path: path.to_path_buf(),
            source: SourceKind::Ledger,
            fingerprint: genesis.event.fingerprint,
            network_name,
            head: ChainPoint { seq: head_seq, hash: head_hash },
            head_time: head.event.timestamp,
        };
        Ok(Branch { info, inner: Inner::Ledger(reader) })
    }

    /// Where it was read from, its network and head.
    pub fn info(&self) -> &BranchInfo {
        &self.info
    }

    /// The head.
    pub fn head(&self) -> ChainPoint {
        self.info.head
    }

    /// Whether the source carries its events (a ledger always does; a seed if exported so).
    pub fn has_events(&self) -> bool {
        match &self.inner {
            Inner::Ledger(_) => true,
            Inner::Seed(s) => s.header.includes_events,
        }
    }

    pub(super) fn without_events(&self, asked: impl Into<String>) -> ForensicsError {
        ForensicsError::SeedWithoutEvents {
            path: self.info.path.clone(),
            head_seq: self.info.head.seq,
            head_time: self.info.head_time,
            asked: asked.into(),
        }
    }

    /// The points of its chain this source knows without its events: the head and, for a
    /// seed, the head its last checkpoint event attested. Ascending by seq.
    pub fn known_points(&self) -> Vec<ChainPoint> {
        let mut points = Vec::with_capacity(2);
        if let Inner::Seed(s) = &self.inner {
            if let Some((_, attested)) = s.state.last_checkpoint {
                if attested.seq < self.info.head.seq {
                    points.push(ChainPoint { seq: attested.seq, hash: attested.hash });
                }
            }
        }
        points.push(self.info.head);
        points
    }

    /// The chain hash at `seq`, if this source knows it: `None` past the head, and for a seed
    /// without events at any seq but its [`Branch::known_points`]. A ledger record is read and
    /// its hash recomputed; damage is an error naming the seq.
    pub fn hash_at(&self, seq: u64) -> Result<Option<ChainHash>, ForensicsError> {
        if seq > self.info.head.seq {
            return Ok(None);
        }
        match &self.inner {
            Inner::Ledger(r) => Ok(Some(read_one(r, seq, self.info.head.seq)?.hash)),
            Inner::Seed(s) if s.header.includes_events => {
                Ok(usize::try_from(seq).ok().and_then(|i| s.events.get(i)).map(|e| e.hash))
            }
            Inner::Seed(_) => Ok(self.known_points().into_iter().find(|p| p.seq == seq).map(|p| p.hash)),
        }
    }

    /// Events `from..=to` (`to` capped at the head), at most [`EVENTS_PAGE_MAX`] per call:
    /// page on from the last one returned. Ledger records are checked (decode, links, hashes).
    pub fn events(&self, from: u64, to: u64) -> Result<Vec<ChainedEvent>, ForensicsError> {
        let to = to.min(self.info.head.seq).min(from.saturating_add(EVENTS_PAGE_MAX as u64 - 1));
        if from > to {
            return Ok(Vec::new());
        }
        match &self.inner {
            Inner::Ledger(r) => {
                let events = r.range(from, to)?;
                if events.len() as u64 != to - from + 1 {
                    let last_seq = events.last().map(|e| e.seq).or(from.checked_sub(1));
                    return Err(corrupt(
                        r.path(),
                        from + events.len() as u64,
                        Corruption::Truncated { head_seq: self.info.head.seq, last_seq },
                    ));
                }
                Ok(events)
            }
            Inner::Seed(s) if s.header.includes_events => {
                let (Ok(a), Ok(b)) = (usize::try_from(from), usize::try_from(to)) else {
                    return Ok(Vec::new());
                };
                Ok(s.events.get(a..=b).map(<[ChainedEvent]>::to_vec).unwrap_or_default())
            }
            Inner::Seed(_) => Err(self.without_events(format!("events {from}..={to}"))),
        }
    }
}

impl Branch {
    /// A pruned ledger and its archives as one history: every archive verified (default
    /// policy), their events and the ledger's chaining from genesis without a gap, held in
    /// memory as one verified full seed would be, with the ledger's state at its head.
    fn open_archived(path: &Path, reader: &LedgerReader) -> Result<Branch, ForensicsError> {
        let archives = reader.archives();
        let ledger_path = reader.path().to_path_buf();
        let gap = |seq: u64, reason: String| {
            corrupt(&ledger_path, seq, Corruption::Metadata { key: "pruned".into(), reason })
        };
        let mut events: Vec<ChainedEvent> = Vec::new();
        let mut header = None;
        for file in &archives {
            let s = seed::read_file(file, VerifyPolicy::default())
                .map_err(|source| ForensicsError::Seed { path: file.clone(), source })?;
            if let Some(f) = s.events.first() {
                if f.seq != events.len() as u64 || events.last().is_some_and(|l| l.hash != f.prev_hash) {
                    return Err(gap(f.seq, format!("archive {} does not continue the one before", file.display())));
                }
            }
            header = Some(s.header.clone());
            events.extend(s.events);
        }
        let mut header = header.ok_or_else(|| gap(0, "no archive".into()))?;
        if events.len() as u64 != reader.history_from() {
            let detail =
                format!("the archives end at seq {}, the ledger starts at {}", events.len(), reader.history_from());
            return Err(gap(events.len() as u64, detail));
        }
        let (head_seq, head_hash) = reader.recorded_head()?.ok_or_else(|| ForensicsError::Empty(path.to_path_buf()))?;
        let mut at = reader.history_from();
        while at <= head_seq {
            let part = reader.range(at, (at + EVENTS_PAGE_MAX as u64 - 1).min(head_seq))?;
            let Some(first) = part.first() else {
                return Err(corrupt(&ledger_path, at, Corruption::Truncated { head_seq, last_seq: at.checked_sub(1) }));
            };
            if events.last().is_some_and(|l| l.hash != first.prev_hash) {
                return Err(gap(at, "the ledger's first record does not link to the archives' last".into()));
            }
            at += part.len() as u64;
            events.extend(part);
        }
        let head = events.last().ok_or_else(|| ForensicsError::Empty(path.to_path_buf()))?;
        if head.hash != head_hash {
            let detail = format!("hash {} at that seq", head.hash);
            return Err(corrupt(&ledger_path, head_seq, Corruption::HeadMismatch { head_seq, head_hash, detail }));
        }
        let state = reader.replay(&ReplayOptions { audit: true, stop: StopAt::End }, &|_| {})?.0.state().clone();
        (header.head_seq, header.head_hash, header.includes_events) = (head_seq, head_hash, true);
        let info = BranchInfo {
            path: path.to_path_buf(),
            source: SourceKind::ArchivedLedger { archives },
            fingerprint: header.fingerprint,
            network_name: header.network.network_name.clone(),
            head: ChainPoint { seq: head_seq, hash: head_hash },
            head_time: head.event.timestamp,
        };
        let seed = Seed {
            version: crate::seed::SEED_FORMAT_V1,
            header,
            state,
            base: None,
            proof: crate::seed::StateProof::FullHistory,
            events,
            digest: [0; 32],
            signers: Vec::new(),
        };
        Ok(Branch { info, inner: Inner::Seed(Box::new(seed)) })
    }
}

fn corrupt(path: &Path, seq: u64, corruption: Corruption) -> ForensicsError {
    ForensicsError::Ledger(LedgerError::Corrupt { path: path.to_path_buf(), seq, corruption: Box::new(corruption) })
}

/// One checked record of a ledger that must hold it (`seq <= head`).
fn read_one(reader: &LedgerReader, seq: u64, head: u64) -> Result<ChainedEvent, ForensicsError> {
    reader.range(seq, seq)?.pop().ok_or_else(|| {
        corrupt(reader.path(), seq, Corruption::Truncated { head_seq: head, last_seq: seq.checked_sub(1) })
    })
}
