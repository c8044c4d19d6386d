//! The fjall ledger: the durable, chained event log plus its projection.
//!
//! Layout (see `schema/storage.md`): one fjall `Database` per ledger directory with two
//! keyspaces:
//! - `ledger`: key = seq (u64 big-endian), value = ledger record (see [`super::record`]);
//! - `meta`: `format` (marker), `head` (seq u64 BE ‖ hash 32 B, written in every append batch),
//!   `checkpoint` (blake3 digest 32 B ‖ projection checkpoint record, written in the same batch
//!   as the events it covers; a checkpoint whose digest does not match is ignored).
//!
//! **Durability contract:** [`Ledger::append`] returns only after the batch (records, head and
//! any checkpoint, atomically) has been synced to disk (`PersistMode::SyncData`). An
//! acknowledged append survives a crash.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::attested::{is_attested, Unused};
use super::chainer::{Chainer, Job};
use super::recent::{RecentEvents, SharedRecent};
use super::record::{self, decode_checkpoint, encode_checkpoint, encode_record_into, seq_key};
use super::replay::{replay_range, ReplayOptions, ReplayStats, StopAt};
use super::verified::VerifiedEvents;
use crate::core::attest::StateDivergence;
use crate::core::event::{ChainedEvent, EventBody, SignedEvent};
use crate::core::keys::{SigningBatch, VerifierCache};
use crate::core::limits;
use crate::core::projection::{ChainHead, Projection, ProjectionState, Rejection};
use crate::core::provisional::EventId;
use crate::core::types::{ChainHash, ChainPoint, NetworkFingerprint};
use crate::error::{Corruption, LedgerError, RangeRefusal};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use rayon::prelude::*;

const META_FORMAT: &[u8] = b"format";
const META_HEAD: &[u8] = b"head";
const META_CHECKPOINT: &[u8] = b"checkpoint";
/// Set by a seed import into a ledger Raft does not manage yet; see [`Ledger::is_imported`].
const META_IMPORTED: &[u8] = b"imported";
/// The newest checkpoint event held (seq u64 BE ‖ hash 32 B), written with the batch that
/// appends it: how far this chain is anchored by a voter (see [`Ledger::anchor`]).
const META_ANCHOR: &[u8] = b"anchor";
/// The head of the verified seed this ledger was imported from (seq u64 BE ‖ hash 32 B):
/// everything up to it has Seed authority (see [`Ledger::seed_anchor`]).
const META_SEED_ANCHOR: &[u8] = b"seed_anchor";
/// The first event of a branch this node yielded in a split-brain (seq u64 BE ‖ hash 32 B):
/// ranges that carry it are refused (see [`Ledger::refuse_branch`]).
const META_REFUSED_BRANCH: &[u8] = b"refused_branch";
/// The Raft members of the cluster whose branch this node yielded (32-byte node ids, one after
/// another): see [`Ledger::refuse_branch`].
const META_REFUSED_PEERS: &[u8] = b"refused_peers";
/// `backfill` = seq u64 BE ‖ hash: the lowest point whose hash the ledger knows but whose
/// history below it does not hold (a ledger loaded from a state-only seed; removed once the
/// history reaches genesis). Records are held for `seq + 1 ..= head`.
const META_BACKFILL: &[u8] = b"backfill";
/// `backfill_base` = the state-only seed's projection at its head (digest ‖ checkpoint record,
/// like `checkpoint`): where a replay of the held events starts while the history is
/// incomplete. Removed with `backfill`.
const META_BACKFILL_BASE: &[u8] = b"backfill_base";
/// The value of the `format` marker.
pub const LEDGER_FORMAT_MARKER: &[u8] = b"mycnet-spores ledger v1";

/// How a ledger is opened.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// Create an empty ledger if none exists (otherwise [`LedgerError::NotALedger`]).
    pub create: bool,
    /// Write a projection checkpoint every this many events (0 = never).
    pub checkpoint_interval: u64,
    /// Sync every append to disk before returning (turn off only for throwaway data).
    pub durable: bool,
    /// If set, opening fails unless the ledger belongs to this network.
    pub expected_network: Option<NetworkFingerprint>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig { create: true, checkpoint_interval: 16_384, durable: true, expected_network: None }
    }
}

/// Where an appended event went: its seq, the previous hash and its hash.
type Link = (u64, ChainHash, ChainHash);

/// What [`Ledger::append`] did with each event, in order.
pub type AppendOutcome = Vec<Result<ChainedEvent, Rejection>>;

/// The chained event log on fjall with its in-memory projection. See the module doc.
pub struct Ledger {
    path: PathBuf,
    db: Database,
    ledger: Keyspace,
    meta: Keyspace,
    projection: Projection,
    cache: VerifierCache,
    config: LedgerConfig,
    checkpoint_seq: Option<u64>,
    anchor: Option<ChainPoint>,
    /// See [`Ledger::refuse_branch`].
    refused: Option<ChainPoint>,
    /// See [`Ledger::backfill_point`].
    backfill: Option<Backfill>,
    /// A failed durable write and a state divergence, readable without the ledger's lock.
    health: Arc<LedgerHealth>,
    /// The helper thread that chains large append batches (started at the first one; `None`
    /// until then or if no thread could be started).
    chainer: Option<Chainer>,
    /// Whether starting the helper was tried.
    chainer_tried: bool,
    /// A projection checkpoint taken in the batch being written, at the state a state
    /// checkpoint event in it attests: `(its seq, meta value)`. Written by `commit_batch`.
    pending_checkpoint: Option<(u64, Vec<u8>)>,
    /// The ids of the newest events (see [`Ledger::committed_point`]).
    recent: SharedRecent,
}

/// What would stop a ledger taking writes, shared so it is read without the ledger's lock.
#[derive(Debug)]
pub struct LedgerHealth {
    /// Set by a failed durable write (fjall poisons its database then), with the error.
    poisoned: Mutex<Option<String>>,
    /// The chain attests a state that a replay of its own records does not reach (found when a
    /// state checkpoint event was applied and a rebuild by replay did not resolve it).
    divergence: Mutex<Option<StateDivergence>>,
}

impl LedgerHealth {
    /// The failed durable write that poisoned the ledger, if any.
    pub fn poisoned_by(&self) -> Option<String> {
        lock(&self.poisoned).clone()
    }

    /// The state divergence the ledger found, if any.
    pub fn divergence(&self) -> Option<StateDivergence> {
        *lock(&self.divergence)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a ledger with an incomplete history knows below what it holds.
#[derive(Clone, Debug)]
pub(crate) struct Backfill {
    /// The next backfilled range must end here.
    pub(crate) point: ChainPoint,
    /// The projection at the state-only seed's head.
    pub(crate) base: std::sync::Arc<ProjectionState>,
}

impl Backfill {
    /// The first sequence number whose record is held.
    pub(crate) fn held_from(&self) -> u64 {
        self.point.seq + 1
    }

    /// The projection a replay of the held events starts from: the state-only seed's.
    pub(crate) fn start(&self) -> Projection {
        Projection::from_state((*self.base).clone())
    }
}

/// Reads the backfill point and base state from `meta` (`None`: the history is complete).
pub(crate) fn read_backfill(meta: &Keyspace, path: &Path) -> Result<Option<Backfill>, LedgerError> {
    let Some((seq, hash)) = read_point(meta, path, META_BACKFILL, "backfill")? else { return Ok(None) };
    let corrupt = |detail: String| LedgerError::Corrupt {
        path: path.to_path_buf(),
        seq,
        corruption: Corruption::Undecodable { reason: detail },
    };
    let bytes = meta
        .get(META_BACKFILL_BASE)
        .map_err(storage("read backfill base", path))?
        .ok_or_else(|| corrupt("a backfill point without its base state".into()))?;
    let base = decode_meta_checkpoint(&bytes).map_err(|e| corrupt(format!("backfill base state: {e}")))?;
    if base.head.is_none_or(|h| h.seq < seq) {
        return Err(corrupt("the backfill base state is below the backfill point".into()));
    }
    Ok(Some(Backfill { point: ChainPoint { seq, hash }, base: std::sync::Arc::new(base) }))
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.path).field("head", &self.projection.head()).finish()
    }
}

pub(crate) fn storage<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(fjall::Error) -> LedgerError + 'a {
    move |source| match damage(&source, path) {
        Some(cause) => LedgerError::Damaged { op, path: path.to_path_buf(), cause, source },
        None => LedgerError::Storage { op, path: path.to_path_buf(), source },
    }
}

/// Names the file and the fault when fjall's error says its own data is damaged (as opposed to
/// an I/O failure, a lock held elsewhere, or a poisoned database).
fn damage(e: &fjall::Error, path: &Path) -> Option<String> {
    use fjall::Error as F;
    use fjall::LsmError as T;
    let journals = || {
        let mut names: Vec<String> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".jnl"))
            .collect();
        names.sort();
        if names.is_empty() {
            "the write-ahead journal".to_string()
        } else {
            format!("the write-ahead journal ({})", names.join(", "))
        }
    };
    match e {
        F::JournalRecovery(r) => Some(format!("{} fails recovery: {r}", journals())),
        F::InvalidTrailer | F::InvalidTag(_) => Some(format!("{} holds a malformed entry", journals())),
        F::Decompress(_) => Some("a data block does not decompress".into()),
        F::InvalidVersion(v) => Some(format!("the format version file holds {v:?}")),
        F::Unrecoverable => Some("required files could not be recovered".into()),
        F::Storage(t) => match t {
            T::ChecksumMismatch { .. } => {
                Some(format!("a table file under {} fails its checksum", path.join("keyspaces").display()))
            }
            T::Decompress(_) => {
                Some(format!("a table block under {} does not decompress", path.join("keyspaces").display()))
            }
            T::InvalidTag(_) | T::InvalidTrailer | T::InvalidHeader(_) | T::Utf8(_) => {
                Some(format!("a table file under {} is malformed", path.join("keyspaces").display()))
            }
            T::InvalidVersion(v) => Some(format!("a table file holds unknown format version {v}")),
            T::Unrecoverable => Some("required table files could not be recovered".into()),
            _ => None,
        },
        _ => None,
    }
}

/// Opens the fjall database and its two keyspaces, refusing directories that hold no ledger
/// unless `create` is set.
pub(crate) fn open_keyspaces(path: &Path, create: bool) -> Result<(Database, Keyspace, Keyspace), LedgerError> {
    let exists = path.is_dir()
        && std::fs::read_dir(path)
            .map_err(|source| LedgerError::Io { path: path.to_path_buf(), source })?
            .next()
            .is_some();
    if !exists && !create {
        return Err(LedgerError::NotALedger(path.to_path_buf()));
    }
    let db = Database::builder(path).open().map_err(storage("open database", path))?;
    let ledger =
        db.keyspace("ledger", KeyspaceCreateOptions::default).map_err(storage("open keyspace ledger", path))?;
    let meta = db.keyspace("meta", KeyspaceCreateOptions::default).map_err(storage("open keyspace meta", path))?;
    let marker = meta.get(META_FORMAT).map_err(storage("read format marker", path))?;
    match marker {
        Some(m) if m.as_ref() == LEDGER_FORMAT_MARKER => {}
        Some(_) => return Err(LedgerError::NotALedger(path.to_path_buf())),
        None => {
            let empty = ledger.first_key_value().is_none();
            if !empty || !create {
                return Err(LedgerError::NotALedger(path.to_path_buf()));
            }
            meta.insert(META_FORMAT, LEDGER_FORMAT_MARKER).map_err(storage("write format marker", path))?;
            db.persist(PersistMode::SyncAll).map_err(storage("persist format marker", path))?;
        }
    }
    Ok((db, ledger, meta))
}

/// Reads the durable head from `meta`.
pub(crate) fn read_head(meta: &Keyspace, path: &Path) -> Result<Option<(u64, ChainHash)>, LedgerError> {
    read_point(meta, path, META_HEAD, "head")
}

/// Reads the newest checkpoint event recorded in `meta` (`anchor`), as `(seq, hash)`.
pub(crate) fn read_anchor(meta: &Keyspace, path: &Path) -> Result<Option<(u64, ChainHash)>, LedgerError> {
    read_point(meta, path, META_ANCHOR, "anchor")
}

/// The stored projection checkpoint: `None` when there is none, `Some(Err(reason))` when its
/// digest or record does not check.
pub(crate) fn read_stored_checkpoint(
    meta: &Keyspace,
    path: &Path,
) -> Result<Option<Result<ProjectionState, String>>, LedgerError> {
    let Some(bytes) = meta.get(META_CHECKPOINT).map_err(storage("read checkpoint", path))? else { return Ok(None) };
    Ok(Some(decode_meta_checkpoint(&bytes)))
}

/// Reads a `seq ‖ hash` value from `meta`.
fn read_point(meta: &Keyspace, path: &Path, key: &[u8], name: &str) -> Result<Option<(u64, ChainHash)>, LedgerError> {
    let Some(v) = meta.get(key).map_err(storage("read chain point", path))? else { return Ok(None) };
    let bytes: &[u8] = v.as_ref();
    if bytes.len() != 40 {
        return Err(LedgerError::Corrupt {
            path: path.to_path_buf(),
            seq: 0,
            corruption: Corruption::Metadata {
                key: name.into(),
                reason: format!("{} bytes, expected 40", bytes.len()),
            },
        });
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[..8]);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes[8..]);
    Ok(Some((u64::from_be_bytes(seq), ChainHash(hash))))
}

/// The `meta` value of a projection checkpoint: `blake3(record) ‖ record`.
///
/// Opening loads the checkpoint instead of replaying the events it covers, and unlike a ledger
/// record nothing else (no chain hash) covers its bytes, so it carries its own digest: a
/// flipped bit anywhere in it makes it unreadable rather than silently changing the state.
fn encode_meta_checkpoint(state: &ProjectionState) -> Vec<u8> {
    let record = encode_checkpoint(state);
    let mut out = Vec::with_capacity(CHECKPOINT_DIGEST_BYTES + record.len());
    out.extend_from_slice(blake3::hash(&record).as_bytes());
    out.extend_from_slice(&record);
    out
}

/// Checks the digest of a `meta` checkpoint value and decodes it.
fn decode_meta_checkpoint(bytes: &[u8]) -> Result<ProjectionState, String> {
    if bytes.len() < CHECKPOINT_DIGEST_BYTES {
        return Err(format!("{} bytes, shorter than its digest", bytes.len()));
    }
    let (digest, record) = bytes.split_at(CHECKPOINT_DIGEST_BYTES);
    if blake3::hash(record).as_bytes().as_slice() != digest {
        return Err("digest mismatch".into());
    }
    decode_checkpoint(record).map_err(|e| e.to_string())
}

const CHECKPOINT_DIGEST_BYTES: usize = 32;

fn encode_head(head: &ChainHead) -> [u8; 40] {
    encode_point(head.seq, &head.hash)
}

fn encode_point(seq: u64, hash: &ChainHash) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..8].copy_from_slice(&seq.to_be_bytes());
    out[8..].copy_from_slice(hash.as_bytes());
    out
}

/// Verifies one chunk of chained events' signatures in a batch.
fn verify_chunk(cache: &mut VerifierCache, chunk: &[ChainedEvent]) -> Vec<bool> {
    let mut batch = SigningBatch::with_capacity(chunk.len());
    for c in chunk {
        batch.push_event(&c.event);
    }
    batch.verify(cache)
}

/// Append batches at least this large are chained on the helper thread.
const PARALLEL_CHAIN_MIN: usize = 64;

/// Chunk size of batched signature verification.
const VERIFY_CHUNK: usize = 128;

/// Verifies the signatures of chained events, batched on all cores for large ranges.
fn verify_chained(cache: &mut VerifierCache, range: &[ChainedEvent]) -> Vec<bool> {
    if range.len() < 2 * VERIFY_CHUNK {
        return range.chunks(VERIFY_CHUNK).flat_map(|c| verify_chunk(cache, c)).collect();
    }
    verify_signatures(range)
}

/// Verifies the signatures of a range on all cores (per-thread key caches), for a caller that
/// verifies the next range while the ledger stores the previous one; hand the verdicts to
/// [`Ledger::append_linked_verified`].
pub fn verify_signatures(range: &[ChainedEvent]) -> Vec<bool> {
    range
        .par_chunks(VERIFY_CHUNK)
        .flat_map_iter(|chunk| super::replay::with_thread_cache(|cache| verify_chunk(cache, chunk)))
        .collect()
}

/// Chunk size of batched verification of a linked range: `verify_batch` costs less per
/// signature the larger the batch (instructions per signature with batches of 128, 256, 512
/// and 1024: 166k, 153k, 143k, 133k); a gossip range of 2048 events still makes four chunks
/// to spread over two cores.
const LINKED_VERIFY_CHUNK: usize = 512;

/// [`verify_signatures`] of a linked range, with the signing messages taken from the canonical
/// encodings the range keeps (no second encoding of each event), in chunks of
/// [`LINKED_VERIFY_CHUNK`].
pub fn verify_linked_signatures(range: &crate::core::gossip::LinkedRange) -> Vec<bool> {
    let events = range.events();
    // As large as allowed, but at least one chunk per core when there are enough events.
    let size = events.len().div_ceil(rayon::current_num_threads().max(1)).clamp(VERIFY_CHUNK, LINKED_VERIFY_CHUNK);
    let chunk = |(c, evs): (usize, &[ChainedEvent])| {
        super::replay::with_thread_cache(|cache| {
            let base = c * size;
            let mut batch = SigningBatch::with_capacity(evs.len());
            for (i, ce) in evs.iter().enumerate() {
                match range.canonical(base + i) {
                    Some(canonical) => batch.push_canonical(ce.event.author, ce.event.signature, canonical),
                    None => batch.push_event(&ce.event),
                }
            }
            batch.verify(cache)
        })
    };
    if events.len() < 2 * VERIFY_CHUNK {
        return events.chunks(size).enumerate().flat_map(chunk).collect();
    }
    events.par_chunks(size).enumerate().flat_map_iter(chunk).collect()
}

/// Whether applying `body` next would attest the state `projection` is at, with a projection
/// checkpoint due there (`due_at` from `Ledger::checkpoint_due_at`).
fn attests_due(body: &EventBody, projection: &Projection, due_at: Option<u64>) -> bool {
    let at = projection.head().map(|h| h.seq);
    matches!(body, EventBody::StateCheckpoint { head_seq, .. } if Some(*head_seq) == at)
        && due_at.is_some_and(|d| at.is_some_and(|a| a >= d))
}

/// The newest checkpoint event among `events` (its own seq and hash), if any.
fn newest_checkpoint<'a>(events: impl DoubleEndedIterator<Item = &'a ChainedEvent>) -> Option<ChainPoint> {
    events.rev().find(|e| e.event.body.is_checkpoint()).map(|e| ChainPoint { seq: e.seq, hash: e.hash })
}

/// The last sequence number present in the ledger keyspace.
pub(crate) fn last_seq(ledger: &Keyspace, path: &Path) -> Result<Option<u64>, LedgerError> {
    let Some(guard) = ledger.last_key_value() else { return Ok(None) };
    let key = guard.key().map_err(storage("read last key", path))?;
    record::parse_seq_key(&key).map(Some).ok_or_else(|| LedgerError::Corrupt {
        path: path.to_path_buf(),
        seq: 0,
        corruption: Corruption::MalformedKey { len: key.len() },
    })
}

/// Compares the durable head with the last record; reports truncation or extra records.
/// [`check_head_against_records`] for a ledger that may hold only part of its history: with
/// nothing held yet, the head must be the backfill point.
pub(crate) fn check_held_records(
    path: &Path,
    head: Option<(u64, ChainHash)>,
    last: Option<u64>,
    backfill: Option<&Backfill>,
) -> Result<(), LedgerError> {
    match (backfill, last) {
        (Some(b), None) if head == Some((b.point.seq, b.point.hash)) => Ok(()),
        _ => check_head_against_records(path, head, last),
    }
}

pub(crate) fn check_head_against_records(
    path: &Path,
    head: Option<(u64, ChainHash)>,
    last: Option<u64>,
) -> Result<(), LedgerError> {
    let corrupt = |seq, corruption| LedgerError::Corrupt { path: path.to_path_buf(), seq, corruption };
    match (head, last) {
        (None, None) => Ok(()),
        (Some((h, _)), l) if l.is_none_or(|l| l < h) => {
            Err(corrupt(l.map_or(0, |l| l + 1), Corruption::Truncated { head_seq: h, last_seq: l }))
        }
        (Some((h, hash)), Some(l)) if l > h => Err(corrupt(
            h + 1,
            Corruption::HeadMismatch { head_seq: h, head_hash: hash, detail: format!("records continue to seq {l}") },
        )),
        (None, Some(l)) => Err(corrupt(
            0,
            Corruption::HeadMismatch {
                head_seq: 0,
                head_hash: ChainHash::ZERO,
                detail: format!("no head recorded but records up to seq {l}"),
            },
        )),
        _ => Ok(()),
    }
}

/// A trusted replay of the whole history held (from genesis, or from a state-only seed's
/// state while the history below it is backfilled), without any stored checkpoint.
fn replay_held(
    ledger: &Keyspace,
    path: &Path,
    backfill: Option<&Backfill>,
) -> Result<(Projection, ReplayStats), LedgerError> {
    let mut projection = backfill.map_or_else(Projection::new, Backfill::start);
    let stats =
        replay_range(ledger, path, &mut projection, &ReplayOptions { audit: false, stop: StopAt::End }, &|_| {})?;
    Ok((projection, stats))
}

/// The projection at the durable head: the newest readable checkpoint plus a trusted replay
/// of the tail after it. Returns it with the checkpoint's seq, where the replay started and
/// its stats.
fn load_projection(
    ledger: &Keyspace,
    meta: &Keyspace,
    path: &Path,
    head: Option<(u64, ChainHash)>,
    backfill: Option<&Backfill>,
) -> Result<(Projection, Option<u64>, u64, ReplayStats), LedgerError> {
    // Without the history below, the replay starts at the state-only seed's state.
    let mut projection = backfill.map_or_else(Projection::new, Backfill::start);
    let mut checkpoint_seq = None;
    let unused = match meta.get(META_CHECKPOINT).map_err(storage("read checkpoint", path))? {
        None => None,
        Some(bytes) => match decode_meta_checkpoint(&bytes) {
            Err(e) => Some(Unused::Unreadable(e)),
            Ok(state)
                if !state.head.is_some_and(|h| {
                    head.is_some_and(|(hs, _)| h.seq <= hs) && h.seq >= projection.next_seq().saturating_sub(1)
                }) =>
            {
                Some(Unused::OutOfRange)
            }
            Ok(state) if !is_attested(ledger, path, &state)? => Some(Unused::NotAttested),
            Ok(state) => {
                checkpoint_seq = state.head.map(|h| h.seq);
                projection = Projection::from_state(state);
                None
            }
        },
    };
    match &unused {
        None => {}
        Some(Unused::Unreadable(e)) => {
            tracing::warn!(error = %e, "projection checkpoint is unreadable; replaying from genesis")
        }
        Some(Unused::OutOfRange) => {
            tracing::warn!("projection checkpoint is outside the history held; replaying from genesis")
        }
        Some(Unused::NotAttested) => {
            tracing::info!("projection checkpoint is not attested by the chain; replaying from genesis")
        }
    }
    let from = projection.next_seq();
    let stats =
        replay_range(ledger, path, &mut projection, &ReplayOptions { audit: false, stop: StopAt::End }, &|_| {})?;
    if checkpoint_seq.is_some() && projection.divergence().is_some() {
        // A later attestation disagrees with the state built on the checkpoint: start over.
        tracing::warn!(divergence = ?projection.divergence(), "the chain disagrees with the state built on the stored checkpoint; replaying from genesis");
        let (projection, stats) = replay_held(ledger, path, backfill)?;
        return Ok((projection, None, 0, stats));
    }
    Ok((projection, checkpoint_seq, from, stats))
}

impl Ledger {
    /// Opens (or creates) the ledger at `path`: loads the newest projection checkpoint and
    /// replays the tail after it, checking every link. A corrupt checkpoint is ignored (with a
    /// warning) in favour of a full replay.
    #[tracing::instrument(skip(config), fields(path = %path.as_ref().display()))]
    pub fn open(path: impl AsRef<Path>, config: LedgerConfig) -> Result<Ledger, LedgerError> {
        let path = path.as_ref().to_path_buf();
        let started = Instant::now();
        let (db, ledger, meta) = open_keyspaces(&path, config.create)?;
        let head = read_head(&meta, &path)?;
        let backfill = read_backfill(&meta, &path)?;
        check_held_records(&path, head, last_seq(&ledger, &path)?, backfill.as_ref())?;

        let (projection, checkpoint_seq, from, stats) =
            load_projection(&ledger, &meta, &path, head, backfill.as_ref())?;
        let divergence = projection.divergence();
        if let Some(d) = divergence {
            tracing::error!(%d, "state divergence: the chain attests a state its own records do not lead to; writes are refused until an operator acts");
        }
        let anchor = read_point(&meta, &path, META_ANCHOR, "anchor")?.map(|(seq, hash)| ChainPoint { seq, hash });
        if let Some((hs, hh)) = head {
            let at = projection.head();
            if at.map(|h| (h.seq, h.hash)) != Some((hs, hh)) {
                return Err(LedgerError::Corrupt {
                    path: path.clone(),
                    seq: hs,
                    corruption: Corruption::HeadMismatch {
                        head_seq: hs,
                        head_hash: hh,
                        detail: format!("replay ended at {:?}", at.map(|h| (h.seq, h.hash.short()))),
                    },
                });
            }
        }
        if let (Some(expected), Some(found)) = (config.expected_network, projection.fingerprint()) {
            if expected != found {
                return Err(LedgerError::WrongNetwork { path, expected, found });
            }
        }
        tracing::info!(
            head = ?projection.head().map(|h| h.seq),
            checkpoint = ?checkpoint_seq,
            replayed_from = from,
            replayed = stats.events,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "ledger opened"
        );
        let refused = read_point(&meta, &path, META_REFUSED_BRANCH, "refused_branch")?
            .map(|(seq, hash)| ChainPoint { seq, hash });
        Ledger {
            path,
            db,
            ledger,
            meta,
            projection,
            cache: VerifierCache::default(),
            config,
            checkpoint_seq,
            anchor,
            refused,
            backfill,
            health: Arc::new(LedgerHealth { poisoned: Mutex::new(None), divergence: Mutex::new(divergence) }),
            chainer: None,
            chainer_tried: false,
            pending_checkpoint: None,
            recent: SharedRecent::default(),
        }
        .with_recent_events()
    }

    /// The ledger directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The projection at the head.
    pub fn projection(&self) -> &Projection {
        &self.projection
    }

    /// The head (`None` while empty).
    pub fn head(&self) -> Option<ChainHead> {
        self.projection.head()
    }

    /// The network fingerprint (`None` while empty).
    pub fn fingerprint(&self) -> Option<NetworkFingerprint> {
        self.projection.fingerprint()
    }

    /// Sequence number of the newest projection checkpoint on disk.
    pub fn checkpoint_seq(&self) -> Option<u64> {
        self.checkpoint_seq
    }

    /// The stored projection checkpoint, if the chain attests it: the record after its seq is
    /// a signed state checkpoint event carrying its digest
    /// (see `store/attested.rs`), and that record is held. What a
    /// state-only seed starts from. `None` when there is no such state (a young ledger, one
    /// written before states were attested, or a stored checkpoint the chain does not vouch for).
    pub fn attested_checkpoint(&self) -> Result<Option<ProjectionState>, LedgerError> {
        let Some(Ok(state)) = read_stored_checkpoint(&self.meta, &self.path)? else { return Ok(None) };
        let (Some(at), Some(head)) = (state.head, self.projection.head()) else { return Ok(None) };
        if at.seq >= head.seq || at.seq + 1 < self.history_from() {
            return Ok(None);
        }
        Ok(is_attested(&self.ledger, &self.path, &state)?.then_some(state))
    }

    /// Verifies signatures (batched, on all cores), validates and chains `events` in order,
    /// and writes the accepted ones durably in one atomic batch. Rejected events change
    /// nothing and are reported in place. Returns after the batch is on disk.
    ///
    /// This is [`VerifiedEvents::verify`] followed by [`Ledger::append_verified`].
    #[tracing::instrument(skip_all, fields(path = %self.path.display(), events = events.len()))]
    pub fn append(&mut self, events: Vec<SignedEvent>) -> Result<AppendOutcome, LedgerError> {
        self.append_with_meta(events, Vec::new())
    }

    /// [`Ledger::append`], also writing `extra` key/values into `meta` in the same atomic batch
    /// (used by the Raft state machine to persist its applied log id with the events).
    pub fn append_with_meta(
        &mut self,
        events: Vec<SignedEvent>,
        extra: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<AppendOutcome, LedgerError> {
        self.usable(events.len())?;
        let (verified, _) = VerifiedEvents::verify(events, &mut self.cache);
        self.append_verified_with_meta(verified, extra)
    }

    /// Validates and chains events whose signatures were already checked, in order, and
    /// writes the accepted ones durably in one atomic batch (the storage path of
    /// [`Ledger::append`], without verification). Events whose signature did not verify and
    /// events the rules reject change nothing and are reported in place. Returns after the
    /// batch is on disk.
    #[tracing::instrument(skip_all, fields(path = %self.path.display(), events = events.len()))]
    pub fn append_verified(&mut self, events: VerifiedEvents) -> Result<AppendOutcome, LedgerError> {
        self.append_verified_with_meta(events, Vec::new())
    }

    /// [`Ledger::append_verified`], also writing `extra` key/values into `meta` in the same
    /// atomic batch (see [`Ledger::append_with_meta`]).
    pub fn append_verified_with_meta(
        &mut self,
        events: VerifiedEvents,
        extra: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<AppendOutcome, LedgerError> {
        self.usable(events.len())?;
        if events.len() >= PARALLEL_CHAIN_MIN
            && self.projection.head().is_some()
            && !events.iter().any(|(e, _)| e.body.is_checkpoint())
        {
            if !self.chainer_tried {
                self.chainer_tried = true;
                self.chainer = Chainer::start();
            }
            if self.chainer.is_some() {
                return self.append_verified_parallel(events, extra);
            }
        }
        let links = self.append_links(&events, extra)?;
        let events = events.into_events().into_iter();
        Ok(events
            .zip(links)
            .map(|(event, link)| link.map(|(seq, prev_hash, hash)| ChainedEvent { seq, prev_hash, hash, event }))
            .collect())
    }

    /// [`Ledger::append_verified_with_meta`] of events the caller keeps (borrowed, so none is
    /// copied or moved), reporting only where each accepted one landed in the chain. The Raft
    /// state machine appends this way from its log entries' shared batches.
    #[tracing::instrument(level = "debug", skip_all, fields(path = %self.path.display(), events = events.len()))]
    pub fn append_verified_points(
        &mut self,
        events: VerifiedEvents<&SignedEvent>,
        extra: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Vec<Result<ChainPoint, Rejection>>, LedgerError> {
        self.usable(events.len())?;
        let links = self.append_links(&events, extra)?;
        Ok(links.into_iter().map(|link| link.map(|(seq, _, hash)| ChainPoint { seq, hash })).collect())
    }

    /// The sequential append: validates, chains and applies `events` in order (reading them
    /// in place), writes the accepted ones with `extra` in one atomic batch and returns each
    /// accepted event's (seq, previous hash, hash) or rejection, in order. The caller has
    /// checked that the ledger is usable for this many events.
    fn append_links<E: std::borrow::Borrow<SignedEvent> + Sync>(
        &mut self,
        events: &VerifiedEvents<E>,
        extra: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Vec<Result<Link, Rejection>>, LedgerError> {
        let mut outcome = Vec::with_capacity(events.len());
        let mut batch = self.new_batch(events.len() + extra.len());
        let (mut accepted, mut anchor) = (0usize, None);
        let due_at = self.checkpoint_due_at();
        let mut pending = None;
        let mut ids = Vec::with_capacity(events.len());
        let projection = &mut self.projection;
        let ledger = &self.ledger;
        // Each record is encoded into this one buffer: the batch copies the bytes it is given
        // into its own value, so a fresh vector per record would only be allocated and freed.
        let mut record = Vec::with_capacity(1024);
        events.for_each_ref(|event, canonical, signature_ok| {
            let snapshot = (signature_ok && attests_due(&event.body, projection, due_at))
                .then(|| encode_meta_checkpoint(projection.state()));
            let diverged = projection.divergence().is_some();
            let linked = if signature_ok {
                projection.append_canonical_ref(event, canonical)
            } else {
                // Check the rules first so a forged event of another network says so.
                Err(projection.check(event).err().unwrap_or(Rejection::BadSignature(event.author)))
            };
            if let Ok((seq, prev_hash, hash)) = linked {
                record.clear();
                record::encode_record_ref_into(&record::ChainedEventRef { seq, prev_hash, hash, event }, &mut record);
                batch.insert(ledger, seq_key(seq), record.as_slice());
                ids.push((seq, EventId::of_canonical(canonical)));
                accepted += 1;
                if event.body.is_checkpoint() {
                    anchor = Some(ChainPoint { seq, hash });
                }
                // Kept only if the event attested exactly that state.
                if let Some(s) = snapshot.filter(|_| !diverged && projection.divergence().is_none()) {
                    pending = Some((seq - 1, s));
                }
            }
            outcome.push(linked);
        });
        self.pending_checkpoint = pending;
        if accepted > 0 || !extra.is_empty() {
            self.commit_batch(batch, accepted, anchor, extra)?;
        }
        {
            let mut recent = self.recent.write();
            for (seq, id) in &ids {
                recent.record(*seq, id);
            }
        }
        Ok(outcome)
    }

    /// [`Ledger::append_verified_with_meta`] of a batch without checkpoint events, after
    /// genesis, with the chain hashes computed on the helper thread ([`super::chainer`]) while
    /// this thread validates and applies the events. Same outcome, same bytes.
    fn append_verified_parallel(
        &mut self,
        events: VerifiedEvents,
        extra: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<AppendOutcome, LedgerError> {
        let (events, canonical, ends, ok) = events.into_parts();
        let n = events.len();
        let (seq0, prev0) = (self.projection.next_seq(), self.projection.head_hash());
        let job = Arc::new(Job::new(events, canonical, ends, ok, seq0, prev0));
        if let Some(c) = &self.chainer {
            c.submit(job.clone());
        }
        // Validate and apply; the head's hash is set once the hashes are known.
        let mut applied: Vec<Result<u64, Rejection>> = Vec::with_capacity(n);
        let mut as_speculated = true;
        {
            let events = job.events();
            for (i, event) in events.iter().enumerate() {
                if !job.chained(i) {
                    // Check the rules first so a forged event of another network says so.
                    applied.push(Err(self
                        .projection
                        .check(event)
                        .err()
                        .unwrap_or(Rejection::BadSignature(event.author))));
                    continue;
                }
                let r = self.projection.apply_unhashed(event, job.size(i));
                as_speculated &= r.is_ok();
                applied.push(r);
            }
        }
        let chained = job.join();
        let events = job.take_events();
        let mut outcome = Vec::with_capacity(n);
        let mut batch = self.new_batch(n + extra.len());
        let mut accepted = 0usize;
        let mut ids = Vec::with_capacity(n);
        let mut record = Vec::with_capacity(1024);
        let mut prev = prev0;
        for ((i, event), a) in events.into_iter().enumerate().zip(applied) {
            let seq = match a {
                Ok(seq) => seq,
                Err(r) => {
                    outcome.push(Err(r));
                    continue;
                }
            };
            if as_speculated {
                // The helper chained exactly the accepted events.
                let hash = chained.hashes[i];
                debug_assert_eq!(hash, crate::core::event::chain_hash(&prev, seq, job.canonical(i)));
                batch.insert(&self.ledger, seq_key(seq), chained.record(i));
                outcome.push(Ok(ChainedEvent { seq, prev_hash: prev, hash, event }));
                debug_assert!(matches!(outcome.last(), Some(Ok(c)) if record::encode_record(c) == chained.record(i)));
                prev = hash;
            } else {
                // The rules refused an event the helper chained: chain exactly the accepted ones.
                let hash = crate::core::event::chain_hash(&prev, seq, job.canonical(i));
                let ce = ChainedEvent { seq, prev_hash: prev, hash, event };
                record.clear();
                encode_record_into(&ce, &mut record);
                batch.insert(&self.ledger, seq_key(seq), record.as_slice());
                outcome.push(Ok(ce));
                prev = hash;
            }
            ids.push((seq, EventId::of_canonical(job.canonical(i))));
            accepted += 1;
        }
        if accepted == 0 && extra.is_empty() {
            return Ok(outcome);
        }
        if accepted > 0 {
            self.projection.set_head_hash(prev);
        }
        let anchor = newest_checkpoint(outcome.iter().filter_map(|o| o.as_ref().ok()));
        self.commit_batch(batch, accepted, anchor, extra)?;
        {
            let mut recent = self.recent.write();
            for (seq, id) in &ids {
                recent.record(*seq, id);
            }
        }
        Ok(outcome)
    }

    /// An empty write batch with room for `records` records and the `meta` entries
    /// [`Ledger::commit_batch`] adds (head, checkpoint, anchor), so it never grows while filled.
    fn new_batch(&self, records: usize) -> fjall::OwnedWriteBatch {
        fjall::OwnedWriteBatch::with_capacity(self.db.clone(), records + 3)
    }

    /// Writes the head, a projection checkpoint when one is due, the anchor and `extra` into
    /// `batch` (which holds `accepted` new records) and commits it, durably if configured. A
    /// failed commit poisons the ledger.
    fn commit_batch(
        &mut self,
        mut batch: fjall::OwnedWriteBatch,
        accepted: usize,
        anchor: Option<ChainPoint>,
        extra: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), LedgerError> {
        let head = self.projection.head();
        // Taken while the batch was applied, at the state its state checkpoint event attests
        // (so an open can check it against the chain): see `checkpoint_due_at`.
        let pending = self.pending_checkpoint.take().filter(|_| accepted > 0 && self.health.divergence().is_none());
        if let Some(head) = head.filter(|_| accepted > 0) {
            batch.insert(&self.meta, META_HEAD, encode_head(&head).to_vec());
        }
        if let Some((_, value)) = &pending {
            batch.insert(&self.meta, META_CHECKPOINT, value.clone());
        }
        if let Some(a) = anchor {
            batch.insert(&self.meta, META_ANCHOR, encode_point(a.seq, &a.hash).to_vec());
        }
        for (k, v) in extra {
            batch.insert(&self.meta, k, v);
        }
        let batch = batch.durability(self.config.durable.then_some(PersistMode::SyncData));
        if let Err(source) = batch.commit() {
            *lock(&self.health.poisoned) = Some(source.to_string());
            tracing::error!(error = %source, "durable ledger write failed; ledger poisoned");
            return Err(LedgerError::Storage { op: "append batch", path: self.path.clone(), source });
        }
        if let Some((seq, _)) = pending {
            self.checkpoint_seq = Some(seq);
        }
        if anchor.is_some() {
            self.anchor = anchor;
        }
        self.resolve_divergence()
    }

    /// The seq from which a projection checkpoint is due again: a checkpoint rewrites the
    /// whole registry, so they are spaced by at least four times the registry's size (its cost
    /// per event stays bounded however large the registry grows, and open replays at most that
    /// many events after it). `None`: checkpoints are off.
    fn checkpoint_due_at(&self) -> Option<u64> {
        if self.config.checkpoint_interval == 0 {
            return None;
        }
        let registry = (self.projection.state().nodes.len() + self.projection.state().services.len()) as u64;
        let spacing = self.config.checkpoint_interval.max(registry.saturating_mul(4));
        Some(self.checkpoint_seq.map_or(spacing, |c| c.saturating_add(spacing)))
    }

    /// After a batch: a state checkpoint event applied in it attested another state than this
    /// projection had. Rebuild the projection by replaying the chain; if the replay reaches the
    /// attested states, the in-memory state was at fault and is healed; if not, the chain
    /// attests a state its own records do not lead to: a state divergence, kept until an
    /// operator acts ([`Ledger::clear_divergence`]).
    fn resolve_divergence(&mut self) -> Result<(), LedgerError> {
        let Some(found) = self.projection.divergence() else { return Ok(()) };
        if self.health.divergence().is_some() {
            return Ok(());
        }
        tracing::warn!(%found, "projection differs from the state the chain attests; rebuilding it by replay");
        let head = read_head(&self.meta, &self.path)?;
        let (rebuilt, _) = replay_held(&self.ledger, &self.path, self.backfill.as_ref())?;
        if rebuilt.head().map(|h| (h.seq, h.hash)) != head {
            return Err(LedgerError::Corrupt {
                path: self.path.clone(),
                seq: head.map_or(0, |h| h.0),
                corruption: Corruption::HeadMismatch {
                    head_seq: head.map_or(0, |h| h.0),
                    head_hash: head.map_or(ChainHash::ZERO, |h| h.1),
                    detail: "a rebuild by replay ended elsewhere".into(),
                },
            });
        }
        *lock(&self.health.divergence) = rebuilt.divergence();
        match rebuilt.divergence() {
            None => {
                tracing::warn!(%found, "projection rebuilt by replay; it now matches every state the chain attests")
            }
            Some(d) => {
                tracing::error!(%d, "state divergence: the chain attests a state its own records do not lead to; writes are refused until an operator acts")
            }
        }
        self.projection = rebuilt;
        Ok(())
    }

    /// Where `event` committed, if it is among the newest
    /// [`crate::core::limits::RECENT_EVENTS_WINDOW`] events: a retried submit of a signed event
    /// that is already in the chain answers with this instead of committing it again.
    pub fn committed_point(&self, event: &SignedEvent) -> Result<Option<ChainPoint>, LedgerError> {
        let id = EventId::of(event);
        let Some(seq) = self.recent.read().candidate(&id) else { return Ok(None) };
        let Some(held) = self.get(seq)? else { return Ok(None) };
        Ok((EventId::of(&held.event) == id).then_some(ChainPoint { seq, hash: held.hash }))
    }

    /// The recent-events window, shared: a proposer checks it without taking the ledger's
    /// lock (see [`crate::raft::proposer::Proposer::propose`]).
    pub(crate) fn recent_events(&self) -> SharedRecent {
        self.recent.clone()
    }

    /// Fills the recent-events window from the newest records held (on open).
    fn with_recent_events(self) -> Result<Self, LedgerError> {
        let mut recent = RecentEvents::default();
        let Some(head) = self.projection.head() else { return Ok(self) };
        let from = (head.seq + 1).saturating_sub(crate::core::limits::RECENT_EVENTS_WINDOW).max(self.history_from());
        let mut canonical = Vec::with_capacity(512);
        for guard in self.ledger.range(seq_key(from)..) {
            let (key, value) = guard.into_inner().map_err(storage("read recent records", &self.path))?;
            let Some(seq) = record::parse_seq_key(&key) else { break };
            // Open checked every record already; one that does not decode now is left out.
            let Ok(ev) = record::decode_record(&value) else { continue };
            canonical.clear();
            ev.event.write_canonical_bytes(&mut canonical);
            recent.record(seq, &EventId::of_canonical(&canonical));
        }
        *self.recent.write() = recent;
        Ok(self)
    }

    /// The state divergence this ledger found, if any: a state checkpoint event in the chain
    /// attests a state that a replay of the chain's own records does not reach. A node with one
    /// takes no writes until an operator acts.
    pub fn divergence(&self) -> Option<StateDivergence> {
        self.health.divergence()
    }

    /// An operator's acknowledgement of a state divergence (after investigating it): writes
    /// are taken again. The chain is unchanged; a later state checkpoint that differs again
    /// raises a new one.
    pub fn clear_divergence(&mut self) {
        let cleared = lock(&self.health.divergence).take();
        if let Some(d) = cleared {
            tracing::warn!(%d, "state divergence cleared by an operator");
            let state = self.projection.state().clone();
            self.projection = Projection::from_state(state);
        }
    }

    /// Overwrites the stored bytes of record `seq` (as a failing disk would), leaving the
    /// projection alone. For fault tests only.
    #[doc(hidden)]
    pub fn damage_record_for_tests(&mut self, seq: u64, bytes: &[u8]) -> Result<(), LedgerError> {
        self.ledger.insert(seq_key(seq), bytes).map_err(storage("damage record", &self.path))
    }

    /// Replaces the in-memory projection's state with `edit` applied to it, as a failing memory
    /// or a bug would. For fault tests only; nothing is written.
    #[doc(hidden)]
    pub fn damage_projection_for_tests(&mut self, edit: impl FnOnce(&mut ProjectionState)) {
        let mut state = self.projection.state().clone();
        edit(&mut state);
        self.projection = Projection::from_state(state);
    }

    /// Appends a chained range received from a peer (latent sync), **as a whole or not at
    /// all**: the range must continue the head link by link, every hash must be the hash of
    /// its content, every signature must verify and every event must pass the rules exactly as
    /// it did where it was committed. Then the records, head, anchor and any projection
    /// checkpoint are written in one atomic batch (synced if the ledger is durable). On
    /// refusal nothing is stored and the projection is unchanged.
    #[tracing::instrument(skip_all, fields(path = %self.path.display(), events = range.len()))]
    pub fn append_range(&mut self, range: &[ChainedEvent]) -> Result<ChainHead, LedgerError> {
        self.append_range_inner(range, None, true, None)
    }

    /// [`Ledger::append_range`] for a range a sync session already checked link by link
    /// (the hashes are not computed again; everything else is checked).
    #[tracing::instrument(skip_all, fields(path = %self.path.display(), events = range.len()))]
    pub fn append_linked(&mut self, range: &crate::core::gossip::LinkedRange) -> Result<ChainHead, LedgerError> {
        self.append_range_inner(range.events(), Some(range), false, None)
    }

    /// [`Ledger::append_linked`] with the signature verdicts [`verify_signatures`] gave for
    /// exactly this range (one per event, in order); a range with any `false` is refused.
    #[tracing::instrument(skip_all, fields(path = %self.path.display(), events = range.len()))]
    pub fn append_linked_verified(
        &mut self,
        range: &crate::core::gossip::LinkedRange,
        verdicts: &[bool],
    ) -> Result<ChainHead, LedgerError> {
        if verdicts.len() != range.len() {
            // Not this range's verdicts: verify here rather than trust them.
            return self.append_range_inner(range.events(), Some(range), false, None);
        }
        self.append_range_inner(range.events(), Some(range), false, Some(verdicts))
    }

    /// `linked` is the range `range` is the events of, if a session linked it: its canonical
    /// encodings size the events, and its records (when it came as records) are stored as
    /// they are.
    fn append_range_inner(
        &mut self,
        range: &[ChainedEvent],
        linked: Option<&crate::core::gossip::LinkedRange>,
        check_hashes: bool,
        verdicts: Option<&[bool]>,
    ) -> Result<ChainHead, LedgerError> {
        if self.health.poisoned_by().is_some() {
            return Err(LedgerError::Poisoned(self.path.clone()));
        }
        if range.len() > limits::APPEND_BATCH_MAX {
            return Err(LedgerError::BatchTooLarge { max: limits::APPEND_BATCH_MAX, got: range.len() });
        }
        let head = self.projection.head();
        let Some(first) = range.first() else {
            return head.ok_or(LedgerError::RangeRefused { seq: 0, reason: RangeRefusal::NotNext { expected: 0 } });
        };
        let refuse = |seq, reason| LedgerError::RangeRefused { seq, reason };
        let (mut expected, mut prev) = (self.projection.next_seq(), self.projection.head_hash());
        if first.seq != expected {
            return Err(refuse(first.seq, RangeRefusal::NotNext { expected }));
        }
        for ce in range {
            if ce.seq != expected || ce.prev_hash != prev {
                return Err(refuse(ce.seq, RangeRefusal::NotNext { expected }));
            }
            if self.refused.is_some_and(|r| r.seq == ce.seq && r.hash == ce.hash) {
                return Err(refuse(ce.seq, RangeRefusal::LostBranch));
            }
            if check_hashes && !ce.hash_is_valid() {
                return Err(refuse(ce.seq, RangeRefusal::BadHash));
            }
            expected += 1;
            prev = ce.hash;
        }
        let owned;
        let verdicts = match verdicts {
            Some(v) => v,
            None => {
                owned = verify_chained(&mut self.cache, range);
                &owned
            }
        };
        if let Some(bad) = verdicts.iter().position(|ok| !ok) {
            return Err(refuse(range[bad].seq, RangeRefusal::BadSignature(range[bad].event.author)));
        }
        let due_at = self.checkpoint_due_at();
        let mut pending = None;
        for (i, ce) in range.iter().enumerate() {
            if attests_due(&ce.event.body, &self.projection, due_at) && self.projection.divergence().is_none() {
                pending = Some((ce.seq - 1, encode_meta_checkpoint(self.projection.state())));
            }
            let applied = match linked.and_then(|l| l.canonical(i)) {
                Some(canonical) => self.projection.apply_sized(ce, canonical.len()),
                None => self.projection.apply(ce),
            };
            if let Err(r) = applied {
                if i > 0 {
                    // Undo the events of this range already applied: back to the durable head.
                    self.reload_projection()?;
                }
                return Err(refuse(ce.seq, RangeRefusal::Rejected(r)));
            }
        }
        let mut batch = self.new_batch(range.len());
        let mut record = Vec::with_capacity(1024);
        // Records that came with the range are exactly the record encodings of its events
        // (checked when they were decoded): stored as they are.
        let received = linked.and_then(|l| l.records()).filter(|r| r.len() == range.len());
        for (i, ce) in range.iter().enumerate() {
            match received.and_then(|r| r.get(i)) {
                Some(rec) => {
                    debug_assert_eq!(rec, record::encode_record(ce).as_slice());
                    batch.insert(&self.ledger, seq_key(ce.seq), rec);
                }
                None => {
                    record.clear();
                    encode_record_into(ce, &mut record);
                    batch.insert(&self.ledger, seq_key(ce.seq), record.as_slice());
                }
            }
        }
        let anchor = newest_checkpoint(range.iter());
        // Kept only if the state it holds was the one attested.
        self.pending_checkpoint = pending.filter(|_| self.projection.divergence().is_none());
        self.commit_batch(batch, range.len(), anchor, Vec::new())?;
        for (i, ce) in range.iter().enumerate() {
            let id = match linked.and_then(|l| l.canonical(i)) {
                Some(canonical) => EventId::of_canonical(canonical),
                None => EventId::of(&ce.event),
            };
            self.recent.write().record(ce.seq, &id);
        }
        self.projection.head().ok_or(LedgerError::Poisoned(self.path.clone()))
    }

    /// Rebuilds the in-memory projection from what is on disk (checkpoint + tail).
    fn reload_projection(&mut self) -> Result<(), LedgerError> {
        let head = read_head(&self.meta, &self.path)?;
        let (projection, checkpoint_seq, _, _) =
            load_projection(&self.ledger, &self.meta, &self.path, head, self.backfill.as_ref())?;
        self.projection = projection;
        self.checkpoint_seq = checkpoint_seq;
        Ok(())
    }

    /// The newest voter-signed checkpoint event this ledger holds: everything up to it is
    /// anchored to the Primary tier.
    pub fn anchor(&self) -> Option<ChainPoint> {
        self.anchor
    }

    /// Refuses appends to a poisoned ledger and batches over the limit.
    fn usable(&self, events: usize) -> Result<(), LedgerError> {
        if self.health.poisoned_by().is_some() {
            return Err(LedgerError::Poisoned(self.path.clone()));
        }
        if events > limits::APPEND_BATCH_MAX {
            return Err(LedgerError::BatchTooLarge { max: limits::APPEND_BATCH_MAX, got: events });
        }
        Ok(())
    }

    /// Reads the event at `seq`, validated (decoded and hash-checked, not linked).
    pub fn get(&self, seq: u64) -> Result<Option<ChainedEvent>, LedgerError> {
        let Some(bytes) = self.ledger.get(seq_key(seq)).map_err(storage("read record", &self.path))? else {
            return Ok(None);
        };
        let corrupt = |corruption| LedgerError::Corrupt { path: self.path.clone(), seq, corruption };
        let ev = record::decode_record(&bytes).map_err(|e| corrupt(e.into()))?;
        if ev.seq != seq {
            return Err(corrupt(Corruption::Misplaced { key: seq, claimed: ev.seq }));
        }
        if !ev.hash_is_valid() {
            let computed = crate::core::event::chain_hash(&ev.prev_hash, ev.seq, &ev.event.canonical_bytes());
            return Err(corrupt(Corruption::HashMismatch { stored: ev.hash, computed }));
        }
        Ok(Some(ev))
    }

    /// Reads events `from..=to` (inclusive, clipped to the head), checking every record,
    /// key and link. Memory is bounded by the range asked for; callers page large ranges.
    pub fn read_range(&self, from: u64, to: u64) -> Result<Vec<ChainedEvent>, LedgerError> {
        self.held_from(from)?;
        super::replay::read_verified_range(&self.ledger, &self.path, from, to)
    }

    /// Refuses reads that start below the history this ledger holds.
    fn held_from(&self, from: u64) -> Result<(), LedgerError> {
        match self.backfill.as_ref() {
            Some(b) if from < b.held_from() => {
                Err(LedgerError::HistoryIncomplete { path: self.path.clone(), held_from: b.held_from() })
            }
            _ => Ok(()),
        }
    }

    /// Calls `f(seq, record bytes)` for every stored record of `from..=to` (clipped to the
    /// head), as it is on disk, after checking only that the keys are dense and each value
    /// carries the ledger record tag. For copying records verbatim (seed export); readers
    /// that interpret records use [`Ledger::read_range`]. Returns how many were visited.
    #[tracing::instrument(level = "debug", skip(self, f), fields(path = %self.path.display()))]
    pub fn visit_raw_range(
        &self,
        from: u64,
        to: u64,
        mut f: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
    ) -> Result<u64, LedgerError> {
        let to = match self.projection.head() {
            Some(h) => to.min(h.seq),
            None => return Ok(0),
        };
        if from > to {
            return Ok(0);
        }
        self.held_from(from)?;
        let mut expected = from;
        for guard in self.ledger.range(seq_key(from)..=seq_key(to)) {
            let (k, v) = guard.into_inner().map_err(storage("read record", &self.path))?;
            let corrupt = |corruption| LedgerError::Corrupt { path: self.path.clone(), seq: expected, corruption };
            match record::parse_seq_key(&k) {
                Some(seq) if seq == expected => {}
                Some(seq) => return Err(corrupt(Corruption::Gap { expected, found: seq })),
                None => return Err(corrupt(Corruption::MalformedKey { len: k.len() })),
            }
            if v.first() != Some(&record::RECORD_FORMAT_V1) {
                return Err(corrupt(Corruption::Undecodable { reason: "not a ledger record".into() }));
            }
            f(expected, &v).map_err(|source| LedgerError::Io { path: self.path.clone(), source })?;
            expected += 1;
        }
        if expected != to + 1 {
            return Err(LedgerError::Corrupt {
                path: self.path.clone(),
                seq: expected,
                corruption: Corruption::Truncated { head_seq: to, last_seq: expected.checked_sub(1) },
            });
        }
        Ok(expected - from)
    }

    /// Up to `max_events` stored records from `from` on, as they are on disk, stopping before
    /// their total size would exceed `max_bytes` (at least one record is returned if `from` is
    /// held). Empty if `from` is past the head. For serving ranges to gossip peers.
    pub fn read_raw_batch(&self, from: u64, max_events: usize, max_bytes: usize) -> Result<Vec<Vec<u8>>, LedgerError> {
        let Some(head) = self.projection.head() else { return Ok(Vec::new()) };
        // Nothing to serve below the history we hold (the peer asks someone else).
        if from > head.seq || max_events == 0 || from < self.history_from() {
            return Ok(Vec::new());
        }
        let to = head.seq.min(from.saturating_add(max_events as u64 - 1));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let full = std::io::ErrorKind::WriteZero;
        let r = self.visit_raw_range(from, to, |_, rec| {
            if !out.is_empty() && bytes + rec.len() > max_bytes {
                return Err(std::io::Error::new(full, "batch full"));
            }
            bytes += rec.len();
            out.push(rec.to_vec());
            Ok(())
        });
        match r {
            Ok(_) => Ok(out),
            Err(LedgerError::Io { source, .. }) if source.kind() == full => Ok(out),
            Err(e) => Err(e),
        }
    }

    /// [`Ledger::visit_raw_range`], collected.
    pub fn read_raw_range(&self, from: u64, to: u64) -> Result<Vec<Vec<u8>>, LedgerError> {
        let mut out = Vec::new();
        self.visit_raw_range(from, to, |_, r| {
            out.push(r.to_vec());
            Ok(())
        })?;
        Ok(out)
    }

    /// Loads an attested history into an **empty** ledger: `records` are stored verbatim as
    /// seqs `0..`, and `state` (the projection at their head) becomes the projection and its
    /// checkpoint, in one final synced batch with the head. For a seed whose exact bytes a
    /// quorum of voters signed; the records are checked again whenever they are read.
    #[tracing::instrument(level = "info", skip_all, fields(path = %self.path.display(), records = records.len()))]
    pub fn load_attested(&mut self, records: &[&[u8]], state: ProjectionState) -> Result<ChainHead, LedgerError> {
        if self.health.poisoned_by().is_some() {
            return Err(LedgerError::Poisoned(self.path.clone()));
        }
        if self.projection.head().is_some() {
            return Err(LedgerError::Io {
                path: self.path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "load_attested needs an empty ledger"),
            });
        }
        let head = state.head.ok_or_else(|| LedgerError::Io {
            path: self.path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "the attested state has no head"),
        })?;
        if records.len() as u64 != head.seq + 1 {
            return Err(LedgerError::Io {
                path: self.path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "record count does not match the state's head",
                ),
            });
        }
        let fail = |this: &mut Ledger, source| {
            *lock(&this.health.poisoned) = Some(format!("{source}"));
            LedgerError::Storage { op: "load attested records", path: this.path.clone(), source }
        };
        let chunks: Vec<&[&[u8]]> = records.chunks(limits::APPEND_BATCH_MAX).collect();
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let base = (i * limits::APPEND_BATCH_MAX) as u64;
            let mut batch = self.db.batch();
            for (k, rec) in chunk.iter().enumerate() {
                batch.insert(&self.ledger, seq_key(base + k as u64), rec.to_vec());
            }
            if i + 1 == n {
                batch.insert(&self.meta, META_HEAD, encode_head(&head).to_vec());
                batch.insert(&self.meta, META_CHECKPOINT, encode_meta_checkpoint(&state));
                batch = batch.durability(Some(PersistMode::SyncData));
            }
            if let Err(source) = batch.commit() {
                return Err(fail(self, source));
            }
        }
        self.projection = Projection::from_state(state);
        self.checkpoint_seq = Some(head.seq);
        Ok(head)
    }

    /// Writes a projection checkpoint now (durably), e.g. before a clean shutdown.
    pub fn write_checkpoint(&mut self) -> Result<(), LedgerError> {
        let Some(head) = self.projection.head() else { return Ok(()) };
        if self.checkpoint_seq == Some(head.seq) {
            return Ok(());
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.meta, META_CHECKPOINT, encode_meta_checkpoint(self.projection.state()));
        batch.commit().map_err(storage("write checkpoint", &self.path))?;
        self.checkpoint_seq = Some(head.seq);
        Ok(())
    }

    /// Loads the state of a **state-only** seed (its projection at its head, no events) into
    /// an **empty** ledger: the state becomes the projection, the checkpoint and the head, and
    /// the head becomes the backfill point — the ledger knows the head's hash but holds no
    /// event. New events extend it as usual; the history below is filled in backwards with
    /// [`Ledger::append_backfill`]. One synced batch.
    #[tracing::instrument(level = "info", skip_all, fields(path = %self.path.display()))]
    pub fn load_state_only(&mut self, state: ProjectionState) -> Result<ChainHead, LedgerError> {
        if self.health.poisoned_by().is_some() {
            return Err(LedgerError::Poisoned(self.path.clone()));
        }
        let invalid = |path: &Path, why: &str| LedgerError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string()),
        };
        if self.projection.head().is_some() || last_seq(&self.ledger, &self.path)?.is_some() {
            return Err(invalid(&self.path, "a state-only seed loads only into an empty ledger"));
        }
        let head = state.head.ok_or_else(|| invalid(&self.path, "the state has no head"))?;
        if state.fingerprint.is_none() {
            return Err(invalid(&self.path, "the state has no network"));
        }
        let checkpoint = encode_meta_checkpoint(&state);
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.meta, META_HEAD, encode_head(&head).to_vec());
        batch.insert(&self.meta, META_CHECKPOINT, checkpoint.clone());
        batch.insert(&self.meta, META_BACKFILL, encode_point(head.seq, &head.hash).to_vec());
        batch.insert(&self.meta, META_BACKFILL_BASE, checkpoint);
        if let Err(source) = batch.commit() {
            *lock(&self.health.poisoned) = Some(source.to_string());
            return Err(LedgerError::Storage { op: "load state-only seed", path: self.path.clone(), source });
        }
        self.backfill = Some(Backfill {
            point: ChainPoint { seq: head.seq, hash: head.hash },
            base: std::sync::Arc::new(state.clone()),
        });
        self.projection = Projection::from_state(state);
        self.checkpoint_seq = Some(head.seq);
        Ok(head)
    }

    /// The point the next backfilled range must end at: the lowest event whose hash this
    /// ledger knows but whose history below it does not hold. `None` when the ledger holds
    /// its whole history from genesis (always, unless loaded from a state-only seed).
    pub fn backfill_point(&self) -> Option<ChainPoint> {
        self.backfill.as_ref().map(|b| b.point)
    }

    /// The first sequence number whose record this ledger holds (0 with a complete history).
    pub fn history_from(&self) -> u64 {
        self.backfill.as_ref().map_or(0, Backfill::held_from)
    }

    /// Stores a range of the history below what this ledger holds: it must end exactly at
    /// the [backfill point](Ledger::backfill_point) (the session checked every link and hash
    /// backwards from there), every signature must verify (`verdicts`, one per event, as
    /// [`verify_signatures`] gave them; verified here if they are not this range's), every
    /// event must be of this network and a range reaching seq 0 must start with this
    /// network's genesis. The rules are not applied: the projection is already past these
    /// events, and the chain from the seed's signed head hash fixes them exactly. The records
    /// and the new point (removed at genesis) are written in one synced batch. Returns the
    /// next point, `None` once the history is complete.
    #[tracing::instrument(skip_all, fields(path = %self.path.display(), events = range.len()))]
    pub fn append_backfill(
        &mut self,
        range: &crate::core::gossip::BackfillRange,
        verdicts: &[bool],
    ) -> Result<Option<ChainPoint>, LedgerError> {
        self.usable(range.len())?;
        let refuse = |seq, reason| LedgerError::RangeRefused { seq, reason };
        let (Some(first), Some(last)) = (range.events().first(), range.events().last()) else {
            return Ok(self.backfill_point());
        };
        let Some(point) = self.backfill_point() else {
            return Err(refuse(last.seq, RangeRefusal::NotBelow { expected: None }));
        };
        if range.known() != point || last.seq != point.seq || last.hash != point.hash {
            return Err(refuse(last.seq, RangeRefusal::NotBelow { expected: Some(point.seq) }));
        }
        let fingerprint = self.projection.fingerprint();
        if let Some(bad) = range.events().iter().find(|e| Some(e.event.fingerprint) != fingerprint) {
            let expected = fingerprint.unwrap_or_default();
            return Err(refuse(
                bad.seq,
                RangeRefusal::Rejected(Rejection::WrongNetwork { expected, got: bad.event.fingerprint }),
            ));
        }
        let owned;
        let verdicts = if verdicts.len() == range.len() {
            verdicts
        } else {
            owned = verify_chained(&mut self.cache, range.events());
            &owned
        };
        if let Some(bad) = verdicts.iter().position(|ok| !ok) {
            let ev = &range.events()[bad];
            return Err(refuse(ev.seq, RangeRefusal::BadSignature(ev.event.author)));
        }
        if first.seq == 0 {
            // Genesis fixes the network: it must be the one whose fingerprint the seed carries.
            Projection::new().check(&first.event).map_err(|r| refuse(0, RangeRefusal::Rejected(r)))?;
        }
        let next = range.next_point();
        let mut batch = self.new_batch(range.len());
        let mut record = Vec::with_capacity(1024);
        for ce in range.events() {
            record.clear();
            encode_record_into(ce, &mut record);
            batch.insert(&self.ledger, seq_key(ce.seq), record.as_slice());
        }
        match next {
            Some(p) => batch.insert(&self.meta, META_BACKFILL, encode_point(p.seq, &p.hash).to_vec()),
            None => {
                batch.remove(&self.meta, META_BACKFILL);
                batch.remove(&self.meta, META_BACKFILL_BASE);
            }
        }
        let batch = batch.durability(self.config.durable.then_some(PersistMode::SyncData));
        if let Err(source) = batch.commit() {
            *lock(&self.health.poisoned) = Some(source.to_string());
            return Err(LedgerError::Storage { op: "backfill batch", path: self.path.clone(), source });
        }
        match (next, self.backfill.as_mut()) {
            (Some(p), Some(b)) => b.point = p,
            _ => {
                self.backfill = None;
                tracing::info!("history backfilled to genesis");
            }
        }
        Ok(next)
    }

    /// Reads a `meta` value (for adapters that keep their own state next to the ledger).
    pub fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerError> {
        Ok(self.meta.get(key).map_err(storage("read meta", &self.path))?.map(|v| v.to_vec()))
    }

    /// Replays this ledger from genesis into a fresh projection (audit or trusted).
    pub fn replay(&self, options: &ReplayOptions) -> Result<(Projection, ReplayStats), LedgerError> {
        self.held_from(0)?;
        let mut p = Projection::new();
        let stats = replay_range(&self.ledger, &self.path, &mut p, options, &|_| {})?;
        Ok((p, stats))
    }

    /// A handle that replays this ledger's stored history without holding the ledger: records
    /// at or below the head are never rewritten (only a reset deletes them, and a replay that
    /// races one fails with an error), so views of past points can be built while appends go on.
    pub fn history(&self) -> History {
        History { ledger: self.ledger.clone(), path: self.path.clone(), backfill: self.backfill.clone() }
    }

    /// The fjall database (shared with the Raft log store, so both use one journal).
    pub(crate) fn database(&self) -> Database {
        self.db.clone()
    }

    /// Deletes every event, the head and the checkpoint, durably, and empties the projection
    /// (used before installing a snapshot whose chain does not extend ours). Other `meta`
    /// keys are kept.
    #[tracing::instrument(skip(self), fields(path = %self.path.display()))]
    pub fn reset(&mut self) -> Result<(), LedgerError> {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        for guard in self.ledger.iter() {
            let key = guard.key().map_err(storage("scan for reset", &self.path))?;
            batch.remove(&self.ledger, key);
        }
        batch.remove(&self.meta, META_HEAD);
        batch.remove(&self.meta, META_CHECKPOINT);
        batch.remove(&self.meta, META_IMPORTED);
        batch.remove(&self.meta, META_ANCHOR);
        batch.remove(&self.meta, META_SEED_ANCHOR);
        batch.remove(&self.meta, META_BACKFILL);
        batch.remove(&self.meta, META_BACKFILL_BASE);
        batch.commit().map_err(storage("reset", &self.path))?;
        self.backfill = None;
        self.projection = Projection::new();
        self.checkpoint_seq = None;
        self.anchor = None;
        *lock(&self.health.poisoned) = None;
        Ok(())
    }

    /// Marks (or unmarks) the content as imported from a seed outside Raft. A node restored
    /// from a seed serves it at once; when Raft then starts applying from the beginning of its
    /// log on this ledger, the import is discarded first so no event is applied twice. A
    /// network formed from the seed adopts the import as its base (and unmarks it).
    #[tracing::instrument(level = "debug", skip(self), fields(path = %self.path.display()))]
    pub fn set_imported(&mut self, imported: bool) -> Result<(), LedgerError> {
        let r = if imported { self.meta.insert(META_IMPORTED, b"1") } else { self.meta.remove(META_IMPORTED) };
        r.map_err(storage("mark import", &self.path))?;
        self.db.persist(PersistMode::SyncData).map_err(storage("sync import mark", &self.path))
    }

    /// Records the head of the verified seed this ledger's content was imported from (or
    /// clears it), durably.
    #[tracing::instrument(level = "debug", skip(self), fields(path = %self.path.display()))]
    pub fn set_seed_anchor(&mut self, point: Option<ChainPoint>) -> Result<(), LedgerError> {
        let r = match point {
            Some(p) => self.meta.insert(META_SEED_ANCHOR, encode_point(p.seq, &p.hash).to_vec()),
            None => self.meta.remove(META_SEED_ANCHOR),
        };
        r.map_err(storage("write seed anchor", &self.path))?;
        self.db.persist(PersistMode::SyncData).map_err(storage("sync seed anchor", &self.path))
    }

    /// Refuses, from now on and across restarts, every range ([`Ledger::append_range`] and
    /// the gossip appends) that carries the event at `first`: the first event of a branch
    /// this node yielded in a split-brain, so it cannot sync the losing chain back from a
    /// peer that has not yielded yet. Raft-committed appends are not affected; `peers`, the
    /// members of the losing Raft cluster, are kept for the node to refuse their Raft traffic
    /// until they are members of its own cluster ([`Ledger::refused_peers`]).
    #[tracing::instrument(skip(self, peers), fields(path = %self.path.display()))]
    pub fn refuse_branch(
        &mut self,
        first: ChainPoint,
        peers: &[crate::core::types::NodeId],
    ) -> Result<(), LedgerError> {
        let ids: Vec<u8> = peers.iter().flat_map(|p| p.as_bytes().to_vec()).collect();
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.meta, META_REFUSED_BRANCH, encode_point(first.seq, &first.hash).to_vec());
        batch.insert(&self.meta, META_REFUSED_PEERS, ids);
        batch.commit().map_err(storage("write refused branch", &self.path))?;
        self.refused = Some(first);
        Ok(())
    }

    /// The members of the Raft cluster whose branch this node yielded ([`Ledger::refuse_branch`]).
    pub fn refused_peers(&self) -> Result<Vec<crate::core::types::NodeId>, LedgerError> {
        let Some(bytes) = self.meta.get(META_REFUSED_PEERS).map_err(storage("read refused peers", &self.path))? else {
            return Ok(Vec::new());
        };
        if bytes.len() % 32 != 0 {
            return Err(LedgerError::Corrupt {
                path: self.path.clone(),
                seq: 0,
                corruption: Corruption::Metadata {
                    key: "refused_peers".into(),
                    reason: format!("{} bytes, not a list of 32-byte ids", bytes.len()),
                },
            });
        }
        Ok(bytes
            .chunks_exact(32)
            .map(|c| {
                let mut id = [0u8; 32];
                id.copy_from_slice(c);
                crate::core::types::NodeId(id)
            })
            .collect())
    }

    /// The head of the verified seed this ledger was imported from, if any: events up to it
    /// carry Seed authority.
    pub fn seed_anchor(&self) -> Result<Option<ChainPoint>, LedgerError> {
        Ok(read_point(&self.meta, &self.path, META_SEED_ANCHOR, "seed_anchor")?
            .map(|(seq, hash)| ChainPoint { seq, hash }))
    }

    /// Whether the content was imported from a seed and not yet adopted by Raft.
    pub fn is_imported(&self) -> Result<bool, LedgerError> {
        Ok(self.meta.get(META_IMPORTED).map_err(storage("read import mark", &self.path))?.is_some())
    }

    /// Writes `records` over what is stored at their seqs, synced, without touching the
    /// projection or the head: only for [`super::scrub::repair`], which checked that they are
    /// exactly the chain's records.
    pub(crate) fn overwrite_records(&mut self, records: &[ChainedEvent]) -> Result<(), LedgerError> {
        if self.health.poisoned_by().is_some() {
            return Err(LedgerError::Poisoned(self.path.clone()));
        }
        let mut batch = self.new_batch(records.len());
        for r in records {
            batch.insert(&self.ledger, seq_key(r.seq), record::encode_record(r));
        }
        if let Err(source) = batch.durability(Some(PersistMode::SyncData)).commit() {
            *lock(&self.health.poisoned) = Some(source.to_string());
            return Err(LedgerError::Storage { op: "repair records", path: self.path.clone(), source });
        }
        Ok(())
    }

    /// The failed durable write that poisoned this ledger, if any: it takes no more writes.
    pub fn poisoned_by(&self) -> Option<String> {
        self.health.poisoned_by()
    }

    /// This ledger's health, to read without taking its lock (a writer checks it before every
    /// submit while applies hold the lock).
    pub fn health(&self) -> Arc<LedgerHealth> {
        self.health.clone()
    }

    /// Syncs everything written to disk.
    pub fn sync(&self) -> Result<(), LedgerError> {
        self.db.persist(PersistMode::SyncAll).map_err(storage("persist", &self.path))
    }

    /// Approximate bytes on disk.
    pub fn disk_space(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }
}

/// Replays a ledger's stored history apart from the [`Ledger`] (see [`Ledger::history`]).
#[derive(Clone)]
pub struct History {
    ledger: Keyspace,
    path: PathBuf,
    backfill: Option<Backfill>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("path", &self.path).finish_non_exhaustive()
    }
}

impl History {
    /// Continues `projection` (empty, or the projection of an earlier point of this chain)
    /// with the stored events up to and including `seq`, checking every link.
    #[tracing::instrument(level = "debug", skip(self, projection), fields(path = %self.path.display(), from = projection.next_seq()))]
    pub fn replay_to(&self, projection: &mut Projection, seq: u64) -> Result<ReplayStats, LedgerError> {
        if let Some(b) = self.backfill.as_ref().filter(|b| projection.next_seq() <= b.point.seq) {
            // Below the history held: start at the state-only seed's state, if it is not past `seq`.
            let base = b.base.head.map_or(0, |h| h.seq);
            if projection.head().is_some() || base > seq {
                return Err(LedgerError::HistoryIncomplete { path: self.path.clone(), held_from: b.held_from() });
            }
            *projection = b.start();
        }
        replay_range(
            &self.ledger,
            &self.path,
            projection,
            &ReplayOptions { audit: false, stop: StopAt::Seq(seq) },
            &|_| {},
        )
    }
}
