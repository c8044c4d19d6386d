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

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};

use serde::Serialize;
use uuid::Uuid;

use super::inspect::LedgerReader;
use super::replay::{ReplayOptions, StopAt};
use crate::core::authority::{resolve, summarize, BranchSummary, DecidedBy};
use crate::core::event::{ChainedEvent, EventBody};
use crate::core::limits::REPLAY_CHUNK_EVENTS;
use crate::core::projection::{NodeRecord, Projection, ServiceRecord};
use crate::core::types::{ChainHash, ChainPoint, NetworkFingerprint, NodeId, Timestamp};
use crate::seed::{self, Seed, SeedError, VerifyPolicy};
use crate::store::error::{Corruption, LedgerError};

/// Most events [`Branch::events`] returns per call (one replay chunk).
pub const EVENTS_PAGE_MAX: usize = REPLAY_CHUNK_EVENTS;
/// Fewest hex characters a node-id prefix must have to name a node in [`BlameTarget::resolve`].
pub const NODE_PREFIX_HEX_MIN: usize = 4;

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

/// Which kind of source a branch was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceKind {
    /// A ledger directory (every event from genesis).
    Ledger,
    /// A verified seed file.
    Seed {
        /// Whether it carries every event from genesis to its head.
        includes_events: bool,
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

enum Inner {
    Ledger(LedgerReader),
    Seed(Box<Seed>),
}

/// A branch source opened for reading: a ledger or a verified seed. See the module doc.
pub struct Branch {
    info: BranchInfo,
    inner: Inner,
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

    fn without_events(&self, asked: impl Into<String>) -> ForensicsError {
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

    /// The registries as of `stop`: a ledger is replayed from genesis (chunked, memory bounded
    /// by the registry); a seed answers at its head from its state, and before its head by
    /// replaying its events — a seed without events cannot, and says so.
    #[tracing::instrument(level = "debug", skip(self, progress), fields(path = %self.info.path.display()))]
    pub fn projection(&self, stop: StopAt, progress: &(dyn Fn(u64) + Sync)) -> Result<Projection, ForensicsError> {
        match &self.inner {
            Inner::Ledger(r) => Ok(r.replay(&ReplayOptions { audit: true, stop }, progress)?.0),
            Inner::Seed(s) => {
                let head = self.info.head;
                let at_head = match stop {
                    StopAt::End => true,
                    StopAt::Seq(q) => q >= head.seq,
                    // Without events the seed knows no event after its head's time; with them,
                    // replay so a timestamp out of order is treated exactly as a ledger would.
                    StopAt::Time(t) => !s.header.includes_events && t >= self.info.head_time,
                };
                if at_head {
                    return Ok(s.projection());
                }
                if !s.header.includes_events {
                    let asked = match stop {
                        StopAt::Seq(q) => format!("the state at seq {q}"),
                        StopAt::Time(t) => format!("the state at {t}"),
                        StopAt::End => "the state at its head".into(),
                    };
                    return Err(self.without_events(asked));
                }
                let mut p = Projection::new();
                for (i, ev) in s.events.iter().enumerate() {
                    match stop {
                        StopAt::Seq(q) if ev.seq > q => break,
                        StopAt::Time(t) if ev.event.timestamp > t => break,
                        _ => {}
                    }
                    p.apply(ev).map_err(|r| ForensicsError::Seed {
                        path: self.info.path.clone(),
                        source: SeedError::BadEvents { seq: ev.seq, reason: r.to_string() },
                    })?;
                    if i % REPLAY_CHUNK_EVENTS == 0 {
                        progress(i as u64);
                    }
                }
                Ok(p)
            }
        }
    }
}

fn corrupt(path: &Path, seq: u64, corruption: Corruption) -> ForensicsError {
    ForensicsError::Ledger(LedgerError::Corrupt { path: path.to_path_buf(), seq, corruption })
}

/// One checked record of a ledger that must hold it (`seq <= head`).
fn read_one(reader: &LedgerReader, seq: u64, head: u64) -> Result<ChainedEvent, ForensicsError> {
    reader.range(seq, seq)?.pop().ok_or_else(|| {
        corrupt(reader.path(), seq, Corruption::Truncated { head_seq: head, last_seq: seq.checked_sub(1) })
    })
}

/// One of the two branches compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The first source.
    A,
    /// The second source.
    B,
}

/// How two branches of one network relate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "relation", rename_all = "snake_case")]
pub enum Relation {
    /// Same head: nothing differs.
    Identical {
        /// The shared head.
        head: ChainPoint,
    },
    /// The behind branch's head lies on the ahead branch's chain: one only extends the other.
    Prefix {
        /// The branch with more events.
        ahead: Side,
        /// The behind branch's head, the last common point.
        common: ChainPoint,
    },
    /// The chains split: they agree up to `last_common` and differ from `first_diverging_seq`.
    Diverged {
        /// The last point both chains share (`None` if even genesis differs).
        last_common: Option<ChainPoint>,
        /// The first seq whose hashes differ (`last_common.seq + 1`).
        first_diverging_seq: u64,
    },
    /// Only bounds can be proven, because a seed without events names just its head and its
    /// last checkpoint.
    Unresolved {
        /// The latest point known to be shared, if any.
        last_common_known: Option<ChainPoint>,
        /// A seq at which the chains are known to differ (the fork is at or before it).
        diverged_at_or_before: Option<u64>,
        /// What is missing to decide.
        reason: String,
    },
}

impl Relation {
    /// The seq after which each branch's own events begin: the last common seq (`None` when
    /// nothing is known to be shared: list from genesis).
    pub fn last_common_seq(&self) -> Option<u64> {
        match self {
            Relation::Identical { head } => Some(head.seq),
            Relation::Prefix { common, .. } => Some(common.seq),
            Relation::Diverged { last_common, .. } => last_common.map(|p| p.seq),
            Relation::Unresolved { last_common_known, .. } => last_common_known.map(|p| p.seq),
        }
    }
}

/// The outcome of [`fork_point`]: both branches and how they relate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForkPoint {
    /// The first branch.
    pub a: BranchInfo,
    /// The second branch.
    pub b: BranchInfo,
    /// How they relate.
    pub relation: Relation,
}

/// Finds where two branches of one network part. Errors with
/// [`ForensicsError::DifferentNetworks`] when the fingerprints differ. See the module doc for
/// the search and what a seed without events allows.
#[tracing::instrument(level = "debug", skip_all, fields(a = %a.info.path.display(), b = %b.info.path.display()))]
pub fn fork_point(a: &Branch, b: &Branch) -> Result<ForkPoint, ForensicsError> {
    if a.info.fingerprint != b.info.fingerprint {
        return Err(ForensicsError::DifferentNetworks {
            a_path: a.info.path.clone(),
            a: a.info.fingerprint,
            b_path: b.info.path.clone(),
            b: b.info.fingerprint,
        });
    }
    let relation = if a.has_events() && b.has_events() { search_fork(a, b)? } else { compare_known_points(a, b)? };
    tracing::debug!(?relation, "fork point");
    Ok(ForkPoint { a: a.info.clone(), b: b.info.clone(), relation })
}

fn side_ahead(a: &Branch, b: &Branch) -> Side {
    if a.head().seq > b.head().seq {
        Side::A
    } else {
        Side::B
    }
}

/// Both branches know every hash up to their heads: binary search for the last equal one.
fn search_fork(a: &Branch, b: &Branch) -> Result<Relation, ForensicsError> {
    let m = a.head().seq.min(b.head().seq);
    let equal_at = |seq: u64| -> Result<Option<ChainHash>, ForensicsError> {
        let ha = a.hash_at(seq)?;
        Ok(if ha.is_some() && ha == b.hash_at(seq)? { ha } else { None })
    };
    if let Some(hash) = equal_at(m)? {
        let common = ChainPoint { seq: m, hash };
        return Ok(if a.head() == b.head() {
            Relation::Identical { head: common }
        } else {
            Relation::Prefix { ahead: side_ahead(a, b), common }
        });
    }
    // Invariant: the hashes differ at `hi`; they are equal at `lo` (None: before genesis).
    let (mut lo, mut hi): (Option<ChainPoint>, u64) = (None, m);
    let mut steps = 0u32;
    loop {
        let start = lo.map_or(0, |p| p.seq + 1);
        if start >= hi {
            break;
        }
        let mid = start + (hi - start) / 2;
        match equal_at(mid)? {
            Some(hash) => lo = Some(ChainPoint { seq: mid, hash }),
            None => hi = mid,
        }
        steps += 1;
        debug_assert!(steps <= 65, "a binary search over u64 ends within 65 steps");
    }
    tracing::debug!(steps, "fork search");
    Ok(Relation::Diverged { last_common: lo, first_diverging_seq: hi })
}

/// At least one branch is a seed without events: compare at the points both know.
fn compare_known_points(a: &Branch, b: &Branch) -> Result<Relation, ForensicsError> {
    let mut seqs: BTreeSet<u64> = BTreeSet::new();
    for br in [a, b] {
        if !br.has_events() {
            seqs.extend(br.known_points().iter().map(|p| p.seq));
        }
    }
    let m = a.head().seq.min(b.head().seq);
    let mut last_common: Option<ChainPoint> = None;
    let mut first_differs: Option<u64> = None;
    for &seq in seqs.range(..=m) {
        let (Some(ha), Some(hb)) = (a.hash_at(seq)?, b.hash_at(seq)?) else {
            continue;
        };
        if ha == hb {
            last_common = Some(ChainPoint { seq, hash: ha });
        } else if first_differs.is_none() {
            first_differs = Some(seq);
        }
    }
    if let Some(common) = last_common.filter(|p| p.seq == m) {
        return Ok(if a.head() == b.head() {
            Relation::Identical { head: common }
        } else {
            Relation::Prefix { ahead: side_ahead(a, b), common }
        });
    }
    let bare: Vec<String> = [a, b]
        .iter()
        .filter(|br| !br.has_events())
        .map(|br| {
            let pts: Vec<String> = br.known_points().iter().map(|p| p.seq.to_string()).collect();
            format!("{} is a seed without events and names only seq {}", br.info.path.display(), pts.join(" and "))
        })
        .collect();
    let reason = match first_differs {
        Some(d) => format!("{}; the chains differ at seq {d}, so the fork is at or before it, but not exactly where", bare.join("; ")),
        None => format!(
            "{}; the branches end at seq {} and {}, and no point both know tells them apart, so whether one extends the other cannot be told",
            bare.join("; "),
            a.head().seq,
            b.head().seq
        ),
    };
    Ok(Relation::Unresolved { last_common_known: last_common, diverged_at_or_before: first_differs, reason })
}

/// A branch's events after a point, cut at a limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BranchEvents {
    /// Events listed have `seq > after_seq` (`None`: from genesis).
    pub after_seq: Option<u64>,
    /// How many events the branch has after that point (known from its head).
    pub total: u64,
    /// Whether the source carries them (a seed without events does not; then `events` is
    /// empty and `more == total`).
    pub available: bool,
    /// The first events after the point, at most the limit asked for.
    pub events: Vec<ChainedEvent>,
    /// How many were left out: `total - events.len()`.
    pub more: u64,
}

/// `branch`'s events with `seq > after` (all from genesis when `after` is `None`), at most
/// `limit` of them, read page by page; `total` and `more` count the rest without reading it.
#[tracing::instrument(level = "debug", skip(branch), fields(path = %branch.info.path.display()))]
pub fn events_after(branch: &Branch, after: Option<u64>, limit: usize) -> Result<BranchEvents, ForensicsError> {
    let from = after.map_or(0, |s| s + 1);
    let head = branch.head().seq;
    let total = if from > head { 0 } else { head - from + 1 };
    if !branch.has_events() {
        return Ok(BranchEvents { after_seq: after, total, available: false, events: Vec::new(), more: total });
    }
    let want = total.min(limit as u64);
    let mut events = Vec::with_capacity(want.min(EVENTS_PAGE_MAX as u64) as usize);
    let mut at = from;
    while (events.len() as u64) < want {
        let to = from + want - 1;
        let page = branch.events(at, to)?;
        let Some(last) = page.last() else { break };
        at = last.seq + 1;
        events.extend(page);
    }
    let more = total - events.len() as u64;
    Ok(BranchEvents { after_seq: after, total, available: true, events, more })
}

/// A node present on both sides whose registry fields differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeChange {
    /// The node.
    pub node: NodeId,
    /// Which fields differ, among `name`, `role`, `status`, `trust`, `capabilities`,
    /// `addresses` (activity times and sequence bookkeeping are not compared).
    pub fields: Vec<&'static str>,
    /// The record on side A.
    pub a: NodeRecord,
    /// The record on side B.
    pub b: NodeRecord,
}

/// A service present on both sides whose announcement differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceChange {
    /// The service.
    pub service_id: Uuid,
    /// Which fields differ, among `name`, `node`, `capabilities`, `endpoints`, `metadata`,
    /// `registered_by`.
    pub fields: Vec<&'static str>,
    /// The record on side A.
    pub a: ServiceRecord,
    /// The record on side B.
    pub b: ServiceRecord,
}

/// Per-entity differences of two projections (A and B are branches, not before and after).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EntityDiff {
    /// Nodes only A's registry has.
    pub nodes_only_in_a: Vec<NodeRecord>,
    /// Nodes only B's registry has.
    pub nodes_only_in_b: Vec<NodeRecord>,
    /// Nodes on both sides with differing fields.
    pub nodes_changed: Vec<NodeChange>,
    /// Services only A has registered.
    pub services_only_in_a: Vec<ServiceRecord>,
    /// Services only B has registered.
    pub services_only_in_b: Vec<ServiceRecord>,
    /// Services on both sides with differing announcements.
    pub services_changed: Vec<ServiceChange>,
}

impl EntityDiff {
    /// True when the registries agree on every compared field.
    pub fn is_empty(&self) -> bool {
        self.nodes_only_in_a.is_empty()
            && self.nodes_only_in_b.is_empty()
            && self.nodes_changed.is_empty()
            && self.services_only_in_a.is_empty()
            && self.services_only_in_b.is_empty()
            && self.services_changed.is_empty()
    }
}

fn node_fields(a: &NodeRecord, b: &NodeRecord) -> Vec<&'static str> {
    let mut f = Vec::new();
    let checks: [(&'static str, bool); 6] = [
        ("name", a.name != b.name),
        ("role", a.role != b.role),
        ("status", a.status != b.status),
        ("trust", a.trust != b.trust),
        ("capabilities", a.capabilities != b.capabilities),
        ("addresses", a.addresses != b.addresses),
    ];
    f.extend(checks.iter().filter(|(_, differs)| *differs).map(|(name, _)| *name));
    f
}

fn service_fields(a: &ServiceRecord, b: &ServiceRecord) -> Vec<&'static str> {
    let (x, y) = (&a.service, &b.service);
    let checks: [(&'static str, bool); 6] = [
        ("name", x.name != y.name),
        ("node", x.node != y.node),
        ("capabilities", x.capabilities != y.capabilities),
        ("endpoints", x.endpoints != y.endpoints),
        ("metadata", x.metadata != y.metadata),
        ("registered_by", a.registered_by != b.registered_by),
    ];
    checks.iter().filter(|(_, differs)| *differs).map(|(name, _)| *name).collect()
}

/// Compares two projections entity by entity (a merge walk over both id-ordered registries).
pub fn entity_diff(a: &Projection, b: &Projection) -> EntityDiff {
    let mut d = EntityDiff::default();
    let (only_a, only_b, changed) = diff_maps(&a.state().nodes, &b.state().nodes, node_fields);
    (d.nodes_only_in_a, d.nodes_only_in_b) = (only_a, only_b);
    d.nodes_changed = changed.into_iter().map(|(node, fields, a, b)| NodeChange { node, fields, a, b }).collect();
    let (only_a, only_b, changed) = diff_maps(&a.state().services, &b.state().services, service_fields);
    (d.services_only_in_a, d.services_only_in_b) = (only_a, only_b);
    d.services_changed =
        changed.into_iter().map(|(service_id, fields, a, b)| ServiceChange { service_id, fields, a, b }).collect();
    d
}

/// One registry against another: records only in `a`, only in `b`, and in both with the
/// fields `fields` finds different (in id order).
#[allow(clippy::type_complexity)]
fn diff_maps<K: Ord + Copy, V: Clone>(
    a: &std::collections::BTreeMap<K, V>,
    b: &std::collections::BTreeMap<K, V>,
    fields: fn(&V, &V) -> Vec<&'static str>,
) -> (Vec<V>, Vec<V>, Vec<(K, Vec<&'static str>, V, V)>) {
    let (mut only_a, mut changed) = (Vec::new(), Vec::new());
    for (id, ra) in a {
        match b.get(id) {
            None => only_a.push(ra.clone()),
            Some(rb) => {
                let f = fields(ra, rb);
                if !f.is_empty() {
                    changed.push((*id, f, ra.clone(), rb.clone()));
                }
            }
        }
    }
    let only_b = b.iter().filter(|(id, _)| !a.contains_key(id)).map(|(_, r)| r.clone()).collect();
    (only_a, only_b, changed)
}

/// Events [`head_projections`] replays: a shared ledger prefix once, then each tail (a
/// seed's state is read, not replayed). For a progress bar's length.
pub fn head_projections_work(a: &Branch, b: &Branch, relation: &Relation) -> u64 {
    match shared_ledger_prefix(a, b, relation) {
        Some(c) => a.head().seq + b.head().seq + 1 - c,
        None => replayed_alone(a) + replayed_alone(b),
    }
}

/// Events replayed for a branch's head projection on its own.
fn replayed_alone(br: &Branch) -> u64 {
    match br.inner {
        Inner::Ledger(_) => br.head().seq + 1,
        Inner::Seed(_) => 0,
    }
}

/// The last common seq when both branches are ledgers that share a proven prefix.
fn shared_ledger_prefix(a: &Branch, b: &Branch, relation: &Relation) -> Option<u64> {
    match (&a.inner, &b.inner, relation) {
        (Inner::Ledger(_), Inner::Ledger(_), Relation::Diverged { last_common, .. }) => last_common.map(|p| p.seq),
        (Inner::Ledger(_), Inner::Ledger(_), Relation::Prefix { common, .. }) => Some(common.seq),
        _ => None,
    }
}

/// The registries at both heads. When both branches are ledgers that share a prefix (equal
/// hashes at its end prove equal prefixes), the prefix is replayed once and its projection
/// carried onto each branch's tail — whose first record must link to it. `progress` counts
/// events replayed, cumulatively, up to [`head_projections_work`].
pub fn head_projections(
    a: &Branch,
    b: &Branch,
    relation: &Relation,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(Projection, Projection), ForensicsError> {
    let (Some(c), Inner::Ledger(ra), Inner::Ledger(rb)) = (shared_ledger_prefix(a, b, relation), &a.inner, &b.inner)
    else {
        let pa = a.projection(StopAt::End, progress)?;
        let done = replayed_alone(a);
        let pb = b.projection(StopAt::End, &|n| progress(done + n))?;
        return Ok((pa, pb));
    };
    let mut pa = ra.replay(&ReplayOptions { audit: true, stop: StopAt::Seq(c) }, progress)?.0;
    let mut pb = pa.clone();
    let tail_a = a.head().seq - c;
    // Forensics never answers from records that fail their checks: every replay audits.
    let audit = ReplayOptions { audit: true, stop: StopAt::End };
    ra.replay_onto(&mut pa, &audit, &|n| progress(c + 1 + n))?;
    rb.replay_onto(&mut pb, &audit, &|n| progress(c + 1 + tail_a + n))?;
    Ok((pa, pb))
}

/// Everything `spore diff` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiffReport {
    /// Both branches and how they relate.
    pub fork: ForkPoint,
    /// A's events after the last common point.
    pub a_events: BranchEvents,
    /// B's events after the last common point.
    pub b_events: BranchEvents,
    /// The registries at both heads, compared.
    pub entities: EntityDiff,
    /// Which branch a split-brain resolution would keep, and why.
    pub verdict: Verdict,
}

/// One branch that cannot win a resolution, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// Which branch.
    pub side: Side,
    /// The check it fails (link, hash, signature or rule, with the seq).
    pub reason: String,
}

/// What a split-brain resolution would decide between two diverged branches, computed from
/// the chain data only, as every node computes it (see [`crate::core::authority`]). A seed
/// file's head gives its branch Seed authority only when a majority of the voters at that
/// head signed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Verdict {
    /// Both branches check; one wins.
    Wins {
        /// The branch kept.
        winner: Side,
        /// The rule that decided.
        decided_by: DecidedBy,
        /// A's summary after the fork.
        a: BranchSummary,
        /// B's summary after the fork.
        b: BranchSummary,
    },
    /// These branches do not check, so they cannot win (if only one is listed, the other
    /// would be kept).
    CannotWin {
        /// The failing branches.
        refused: Vec<Refusal>,
    },
    /// Nothing to decide, or not decidable from these sources.
    Undecided {
        /// Why.
        reason: String,
    },
}

/// Longest branch after the fork [`verdict`] reads (the automatic resolver's limit too).
pub const VERDICT_EVENTS_MAX: u64 = crate::core::authority::BRANCH_EVENTS_MAX;

/// Which of two branches a split-brain resolution would keep (see [`Verdict`]): replays the
/// common prefix, reads each branch after the fork and checks and summarises both with
/// [`summarize`], then [`resolve`]s.
#[tracing::instrument(level = "debug", skip_all, fields(a = %a.info.path.display(), b = %b.info.path.display()))]
pub fn verdict(a: &Branch, b: &Branch, relation: &Relation) -> Result<Verdict, ForensicsError> {
    let undecided = |reason: &str| Ok(Verdict::Undecided { reason: reason.to_string() });
    let common = match relation {
        Relation::Diverged { last_common: Some(c), .. } => *c,
        Relation::Diverged { last_common: None, .. } => {
            return undecided("the chains share no genesis: two networks, not a split-brain")
        }
        Relation::Identical { .. } => return undecided("identical: nothing to resolve"),
        Relation::Prefix { .. } => return undecided("one chain extends the other: no fork to resolve"),
        Relation::Unresolved { .. } => {
            return undecided("the fork point is not known: a seed without events does not carry its branch")
        }
    };
    if !a.has_events() || !b.has_events() {
        return undecided("a seed without events does not carry its branch");
    }
    if [a, b].iter().any(|br| br.head().seq - common.seq > VERDICT_EVENTS_MAX) {
        return undecided("a branch is longer than a resolution reads");
    }
    let prefix = a.projection(StopAt::Seq(common.seq), &|_| {})?;
    let seed_head = |br: &Branch| match &br.inner {
        Inner::Seed(s) if s.is_quorum_signed() => Some(br.head()),
        _ => None,
    };
    let summary = |br: &Branch| -> Result<Result<BranchSummary, String>, ForensicsError> {
        let tail = events_after(br, Some(common.seq), VERDICT_EVENTS_MAX as usize)?.events;
        Ok(summarize(&prefix, &tail, seed_head(br)).map(|(s, _)| s).map_err(|e| e.to_string()))
    };
    Ok(match (summary(a)?, summary(b)?) {
        (Ok(sa), Ok(sb)) => match resolve(&sa, &sb) {
            Ok(r) => Verdict::Wins {
                winner: if r.winner.first == sa.first { Side::A } else { Side::B },
                decided_by: r.decided_by,
                a: sa,
                b: sb,
            },
            Err(e) => Verdict::Undecided { reason: e.to_string() },
        },
        (ra, rb) => Verdict::CannotWin {
            refused: [(Side::A, ra.err()), (Side::B, rb.err())]
                .into_iter()
                .filter_map(|(side, e)| e.map(|reason| Refusal { side, reason }))
                .collect(),
        },
    })
}

/// [`fork_point`], each branch's events after it (at most `limit` each) and [`entity_diff`]
/// of the projections at both heads. `progress` counts events replayed.
pub fn diff(
    a: &Branch,
    b: &Branch,
    limit: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<DiffReport, ForensicsError> {
    let fork = fork_point(a, b)?;
    let after = fork.relation.last_common_seq();
    let a_events = events_after(a, after, limit)?;
    let b_events = events_after(b, after, limit)?;
    let entities = if matches!(fork.relation, Relation::Identical { .. }) {
        EntityDiff::default()
    } else {
        let (pa, pb) = head_projections(a, b, &fork.relation, progress)?;
        entity_diff(&pa, &pb)
    };
    let verdict = verdict(a, b, &fork.relation)?;
    Ok(DiffReport { fork, a_events, b_events, entities, verdict })
}

/// What to blame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BlameTarget {
    /// A node.
    Node {
        /// Its id.
        node: NodeId,
    },
    /// One service.
    Service {
        /// Its id.
        service_id: Uuid,
    },
    /// Every service ever registered under this name (instances share names).
    ServiceName {
        /// The name.
        name: String,
    },
}

impl BlameTarget {
    /// A target that needs no registry to resolve: 64 hex characters (a node id) or a UUID.
    pub fn parse_exact(text: &str) -> Option<BlameTarget> {
        let t = text.trim();
        if t.len() == 64 {
            if let Ok(node) = NodeId::from_hex(t) {
                return Some(BlameTarget::Node { node });
            }
        }
        Uuid::parse_str(t).ok().map(|service_id| BlameTarget::Service { service_id })
    }

    /// Resolves `text` against a registry: a node id, a UUID, a node-id prefix of at least
    /// [`NODE_PREFIX_HEX_MIN`] hex characters matching exactly one node ever admitted, or else
    /// a service name (matched against every registration while blaming).
    pub fn resolve(text: &str, registry: &Projection) -> Result<BlameTarget, ForensicsError> {
        if let Some(t) = Self::parse_exact(text) {
            return Ok(t);
        }
        let t = text.trim();
        if t.is_empty() {
            return Err(ForensicsError::TargetNotFound(text.to_string()));
        }
        if t.len() >= NODE_PREFIX_HEX_MIN && t.bytes().all(|c| c.is_ascii_hexdigit()) {
            let prefix = t.to_ascii_lowercase();
            let matches: Vec<NodeId> =
                registry.nodes().map(|n| n.node).filter(|id| id.to_hex().starts_with(&prefix)).collect();
            match matches.as_slice() {
                [one] => return Ok(BlameTarget::Node { node: *one }),
                [] => {}
                many => return Err(ForensicsError::AmbiguousTarget { text: t.to_string(), count: many.len() }),
            }
        }
        Ok(BlameTarget::ServiceName { name: t.to_string() })
    }
}

/// How an event touched the blamed target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum Touch {
    /// The event is about the target (its subject node or service).
    Subject,
    /// A service offered by the target node was registered.
    ServiceOfNodeRegistered {
        /// The service.
        service_id: Uuid,
    },
    /// A service offered by the target node was deregistered.
    ServiceOfNodeDeregistered {
        /// The service.
        service_id: Uuid,
    },
    /// The target service's node left, and the service went with it.
    RemovedWithNode {
        /// The node that left.
        node: NodeId,
    },
    /// The target node signed an event about something else (listed only when asked).
    Authored,
}

/// One event that touched the target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlameEntry {
    /// Its sequence number.
    pub seq: u64,
    /// Its chain hash.
    pub hash: ChainHash,
    /// Its kind (`node_joined`, …).
    pub kind: &'static str,
    /// Who signed it.
    pub author: NodeId,
    /// When its author made it.
    pub timestamp: Timestamp,
    /// How it touched the target.
    pub touch: Touch,
    /// Services it removed as a consequence (a `node_left` of the target node, or of the
    /// node of a blamed service).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services_removed: Vec<Uuid>,
    /// The event's body.
    pub body: EventBody,
}

/// What [`blame`] may include and keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlameOptions {
    /// Also list events the target node signed about other things (for a voter: most of
    /// the log).
    pub include_authored: bool,
    /// Keep at most this many entries, the latest ones; the earlier ones are only counted.
    pub limit: usize,
}

impl Default for BlameOptions {
    fn default() -> Self {
        BlameOptions { include_authored: false, limit: 1000 }
    }
}

/// The outcome of [`blame`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlameReport {
    /// The source searched.
    pub source: BranchInfo,
    /// The target.
    pub target: BlameTarget,
    /// For a service name: every service id registered under it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Uuid>,
    /// Events that touched the target.
    pub total: u64,
    /// The earliest ones left out (over the limit): `total - entries.len()`.
    pub omitted: u64,
    /// The latest `limit` entries, oldest first.
    pub entries: Vec<BlameEntry>,
}

/// Follows one target through a chain: which services belong to a blamed node, and which
/// node a blamed service is on, as events register, move and remove them.
struct Tracker<'a> {
    target: &'a BlameTarget,
    include_authored: bool,
    /// Services of the blamed node, or the blamed services, currently registered → node.
    live: HashMap<Uuid, NodeId>,
    /// For a service name: every id registered under it.
    named: BTreeSet<Uuid>,
}

impl Tracker<'_> {
    fn is_target_service(&self, id: &Uuid) -> bool {
        match self.target {
            BlameTarget::Service { service_id } => service_id == id,
            BlameTarget::ServiceName { .. } => self.named.contains(id),
            BlameTarget::Node { .. } => false,
        }
    }

    /// How `ev` touched the target (None: it did not), and the services it removed.
    fn touch(&mut self, ev: &ChainedEvent) -> Option<(Touch, Vec<Uuid>)> {
        let body = &ev.event.body;
        match (self.target, body) {
            (BlameTarget::Node { node }, EventBody::ServiceRegistered(s)) if s.node == *node => {
                self.live.insert(s.service_id, s.node);
                Some((Touch::ServiceOfNodeRegistered { service_id: s.service_id }, Vec::new()))
            }
            (BlameTarget::Node { .. }, EventBody::ServiceDeregistered { service_id, .. })
                if self.live.remove(service_id).is_some() =>
            {
                Some((Touch::ServiceOfNodeDeregistered { service_id: *service_id }, Vec::new()))
            }
            (BlameTarget::Node { node }, EventBody::NodeLeft { node: left, .. }) if left == node => {
                let removed: Vec<Uuid> = self.live.drain().map(|(id, _)| id).collect();
                Some((Touch::Subject, sorted(removed)))
            }
            (BlameTarget::Node { node }, _) if body.subject_node() == Some(*node) => Some((Touch::Subject, Vec::new())),
            (BlameTarget::Node { node }, _) if self.include_authored && ev.event.author == *node => {
                Some((Touch::Authored, Vec::new()))
            }
            (BlameTarget::Node { .. }, _) => None,
            (_, EventBody::ServiceRegistered(s)) => {
                if let BlameTarget::ServiceName { name } = self.target {
                    if s.name == *name {
                        self.named.insert(s.service_id);
                    }
                }
                if self.is_target_service(&s.service_id) {
                    self.live.insert(s.service_id, s.node);
                    Some((Touch::Subject, Vec::new()))
                } else {
                    None
                }
            }
            (_, EventBody::ServiceDeregistered { service_id, .. }) if self.is_target_service(service_id) => {
                self.live.remove(service_id);
                Some((Touch::Subject, Vec::new()))
            }
            (_, EventBody::NodeLeft { node, .. }) => {
                let removed: Vec<Uuid> = self.live.iter().filter(|(_, n)| *n == node).map(|(id, _)| *id).collect();
                if removed.is_empty() {
                    return None;
                }
                for id in &removed {
                    self.live.remove(id);
                }
                Some((Touch::RemovedWithNode { node: *node }, sorted(removed)))
            }
            _ => None,
        }
    }
}

fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort_unstable();
    ids
}

/// Every event of `source` that touched `target`, oldest first, with who signed it and when:
/// for a node, the events about it, the registrations and deregistrations of its services,
/// and its leaving (which removes its services, listed); for a service, its registration,
/// deregistration, and its node leaving. Reads the chain page by page; keeps the latest
/// `options.limit` entries. `progress` counts events read.
#[tracing::instrument(level = "debug", skip(source, progress), fields(path = %source.info.path.display()))]
pub fn blame(
    source: &Branch,
    target: &BlameTarget,
    options: BlameOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<BlameReport, ForensicsError> {
    if !source.has_events() {
        return Err(source.without_events("the history of a node or service"));
    }
    let mut tracker =
        Tracker { target, include_authored: options.include_authored, live: HashMap::new(), named: BTreeSet::new() };
    let mut entries: VecDeque<BlameEntry> = VecDeque::with_capacity(options.limit.min(EVENTS_PAGE_MAX));
    let mut total = 0u64;
    let head = source.head().seq;
    let mut at = 0u64;
    while at <= head {
        let page = source.events(at, head)?;
        let Some(last) = page.last() else { break };
        at = last.seq + 1;
        for ev in page {
            let Some((touch, services_removed)) = tracker.touch(&ev) else {
                continue;
            };
            total += 1;
            if options.limit == 0 {
                continue;
            }
            if entries.len() == options.limit {
                entries.pop_front();
            }
            entries.push_back(BlameEntry {
                seq: ev.seq,
                hash: ev.hash,
                kind: ev.event.body.kind(),
                author: ev.event.author,
                timestamp: ev.event.timestamp,
                touch,
                services_removed,
                body: ev.event.body,
            });
        }
        progress(at);
    }
    if total == 0 {
        let text = match target {
            BlameTarget::Node { node } => node.to_hex(),
            BlameTarget::Service { service_id } => service_id.to_string(),
            BlameTarget::ServiceName { name } => name.clone(),
        };
        return Err(ForensicsError::TargetNotFound(text));
    }
    let entries: Vec<BlameEntry> = entries.into();
    let omitted = total - entries.len() as u64;
    Ok(BlameReport {
        source: source.info.clone(),
        target: target.clone(),
        services: tracker.named.into_iter().collect(),
        total,
        omitted,
        entries,
    })
}

/// Resolves a blame target written by a user against `source`: exact ids directly, anything
/// else against the registry at the source's head (a replay for a ledger). See
/// [`BlameTarget::resolve`].
pub fn resolve_target(
    source: &Branch,
    text: &str,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<BlameTarget, ForensicsError> {
    if let Some(t) = BlameTarget::parse_exact(text) {
        return Ok(t);
    }
    // A seed without events answers at its head from its state, so this works for it too.
    let registry = source.projection(StopAt::End, progress)?;
    BlameTarget::resolve(text, &registry)
}
