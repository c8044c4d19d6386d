//! The Raft state machine is the ledger: applying a committed entry validates the signed event,
//! chains it and updates the projections, identically on every replica.
//!
//! The applied log id and membership are written into the ledger's `meta` keyspace in the same
//! atomic batch as the events they cover, so after a crash the ledger and `applied_state`
//! always agree; openraft re-applies anything after it from the Raft log. The ledger's own
//! writes in this mode are not synced individually: every Raft log append syncs the shared
//! fjall journal, and `build_snapshot` syncs before openraft may purge the log, so the Raft
//! log is never purged past what the ledger holds durably (design invariant 6).
//!
//! Snapshot format (version 2): the Raft metadata, then a **seed spore** — one format for Raft
//! snapshots and seed files (see `crate::seed`):
//! ```text
//! magic "SPORESNP" | u8 version=2 | u32 LE header length | postcard(SnapshotHeader)
//! | seed file bytes (absent while the ledger is empty): projection state, head and the full
//!   event range, signed by the voter that built the snapshot
//! ```
//! Installing verifies the seed (digest, voter signature, state = replay of its events) and
//! re-applies the events through the normal validation, so a snapshot cannot smuggle in
//! anything a log could not.

use std::io::{self, Cursor};
use std::sync::Arc;

use futures_util::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use openraft_legacy::network_v1::SnapshotReceiverFactory;
use serde::{Deserialize, Serialize};

use super::snapshot_file::SnapshotFile;
use super::{Entry, LogId, SnapshotData, SnapshotMeta, SporeRequest, SporeResponse, StoredMembership, TypeConfig};
use crate::core::event::{ChainedEvent, SignedEvent};
use crate::core::keys::{NodeKey, VerifierCache};
use crate::core::projection::{ProjectionState, Rejection};
use crate::core::provisional::ProvisionalEvent;
use crate::core::sync;
use crate::core::types::ChainHash;
use crate::store::ledger::{Ledger, LedgerLock};
use crate::store::verified::{PreVerified, VerifiedEvents};

const META_APPLIED: &[u8] = b"raft_applied";
const META_MEMBERSHIP: &[u8] = b"raft_membership";
const SNAPSHOT_MAGIC: &[u8; 8] = b"SPORESNP";
const SNAPSHOT_VERSION: u8 = 2;
/// Largest snapshot header accepted.
const SNAPSHOT_HEADER_MAX: usize = 1 << 20;

pub use crate::store::ledger::SharedLedger;

#[derive(Serialize, Deserialize, Debug)]
struct SnapshotHeader {
    last_log_id: Option<LogId>,
    membership: StoredMembership,
    /// Whether a seed follows the header.
    has_seed: bool,
}

/// A snapshot as openraft hands it over.
type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// The ledger as an openraft state machine. Cheap to clone.
#[derive(Clone)]
pub struct LedgerStateMachine {
    ledger: SharedLedger,
    key: Arc<NodeKey>,
    /// The last snapshot built or installed, kept on disk (`snapshot_file.rs`).
    current: Arc<SnapshotFile>,
    head_tx: Arc<tokio::sync::watch::Sender<Option<u64>>>,
    /// Signatures the log store verified as entries arrived.
    pre_verified: PreVerified,
    cache: Arc<std::sync::Mutex<VerifierCache>>,
    /// The ledger's directory (for the spans of this state machine's operations).
    path: Arc<std::path::Path>,
}

fn sm_read(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("reading the ledger state machine: {e}"))
}
fn sm_write(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("writing the ledger state machine: {e}"))
}
fn snap_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("installing a snapshot: {e}"))
}

impl LedgerStateMachine {
    /// Wraps a ledger; `key` signs the seeds inside snapshots.
    /// `pre_verified` is shared with the log store, which verifies signatures as entries arrive.
    pub fn new(ledger: SharedLedger, key: NodeKey, pre_verified: PreVerified) -> Self {
        // Only a writer that panicked poisons the lock, and none has written yet: its path and
        // head are whole either way.
        let (head, path): (_, Arc<std::path::Path>) = {
            let l = ledger.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            (l.head().map(|h| h.seq), Arc::from(l.path()))
        };
        let (tx, _) = tokio::sync::watch::channel(head);
        LedgerStateMachine {
            ledger,
            key: Arc::new(key),
            current: Arc::new(SnapshotFile::new(&path)),
            head_tx: Arc::new(tx),
            pre_verified,
            cache: Arc::new(std::sync::Mutex::new(VerifierCache::default())),
            path,
        }
    }

    /// Follows the ledger head's sequence number as events are applied.
    pub fn subscribe_head(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        self.head_tx.subscribe()
    }

    /// Tells head subscribers the ledger's head now (also after a gossip store, which
    /// writes the ledger outside Raft).
    pub fn publish_head(&self) {
        let head = self.ledger.read().ok().and_then(|l| l.head().map(|h| h.seq));
        self.head_tx.send_replace(head);
    }

    /// The shared ledger.
    pub fn ledger(&self) -> &SharedLedger {
        &self.ledger
    }

    fn read_applied(ledger: &Ledger) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let applied = match ledger.meta_get(META_APPLIED).map_err(sm_read)? {
            Some(b) => postcard::from_bytes::<Option<LogId>>(&b).map_err(sm_read)?,
            None => None,
        };
        let membership = match ledger.meta_get(META_MEMBERSHIP).map_err(sm_read)? {
            Some(b) => postcard::from_bytes(&b).map_err(sm_read)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    /// Encodes the ledger up to its head as a snapshot: Raft metadata plus a seed signed by
    /// `key`.
    fn encode_snapshot(
        ledger: &Ledger,
        key: &NodeKey,
        last_log_id: Option<LogId>,
        membership: StoredMembership,
    ) -> Result<Vec<u8>, io::Error> {
        let head = ledger.head();
        let seed = match head {
            None => None,
            Some(h) => {
                // A ledger that holds its history from genesis sends all of it; one that holds
                // it from a later point (pruned, or loaded from a state-only seed) sends the
                // state there, which the first event it holds attests, and the events after.
                let first = ledger.history_from();
                let mut events = Vec::with_capacity((h.seq + 1 - first) as usize);
                let page = crate::core::limits::REPLAY_CHUNK_EVENTS as u64;
                while first + (events.len() as u64) <= h.seq {
                    let from = first + events.len() as u64;
                    let part = ledger.read_range(from, (from + page - 1).min(h.seq)).map_err(sm_read)?;
                    if part.is_empty() {
                        return Err(sm_read(format!("ledger ends at {from} before its head")));
                    }
                    events.extend(part);
                }
                let seed = if first == 0 {
                    crate::seed::build(ledger.projection(), Some(&events), &[key])
                } else {
                    let base = ledger.history_start();
                    crate::seed::build_state_only(base.state(), &events, ledger.projection().state(), &[key])
                };
                Some(seed.map_err(sm_read)?)
            }
        };
        let header = SnapshotHeader { last_log_id, membership, has_seed: seed.is_some() };
        let hdr = postcard::to_stdvec(&header).map_err(sm_read)?;
        let seed = seed.unwrap_or_default();
        let mut out = Vec::with_capacity(hdr.len() + 13 + seed.len());
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.push(SNAPSHOT_VERSION);
        out.extend_from_slice(&(hdr.len() as u32).to_le_bytes());
        out.extend_from_slice(&hdr);
        out.extend_from_slice(&seed);
        Ok(out)
    }
}

/// A decoded snapshot: its header, its events, the head they chain to, and for a state-only
/// snapshot the attested state its events start after.
type DecodedSnapshot = (SnapshotHeader, Vec<ChainedEvent>, Option<(u64, ChainHash)>, Option<ProjectionState>);

/// Parses and checks a snapshot: the header, then the seed (digest, signature by a voter at
/// its head, events chaining from genesis and replaying to its state).
fn decode_snapshot(bytes: &[u8]) -> Result<DecodedSnapshot, String> {
    let rest = bytes.strip_prefix(SNAPSHOT_MAGIC.as_slice()).ok_or("not a spore snapshot (bad magic)")?;
    let (&version, rest) = rest.split_first().ok_or("truncated snapshot")?;
    if version != SNAPSHOT_VERSION {
        return Err(format!("unsupported snapshot version {version}"));
    }
    let len_bytes: [u8; 4] = rest.get(..4).and_then(|b| b.try_into().ok()).ok_or("truncated snapshot header length")?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > SNAPSHOT_HEADER_MAX {
        return Err(format!("snapshot header of {len} bytes exceeds {SNAPSHOT_HEADER_MAX}"));
    }
    let hdr = rest.get(4..4 + len).ok_or("truncated snapshot header")?;
    let header: SnapshotHeader = postcard::from_bytes(hdr).map_err(|e| format!("snapshot header: {e}"))?;
    let seed_bytes = &rest[4 + len..];
    if !header.has_seed {
        if !seed_bytes.is_empty() {
            return Err(format!("{} unexpected bytes after an empty snapshot", seed_bytes.len()));
        }
        return Ok((header, Vec::new(), None, None));
    }
    let seed = crate::seed::verify(seed_bytes, crate::seed::VerifyPolicy::default())
        .map_err(|e| format!("snapshot seed: {e}"))?;
    if !seed.header.includes_events && seed.base.is_none() {
        return Err("snapshot seed carries no events".into());
    }
    let head = Some((seed.header.head_seq, seed.header.head_hash));
    Ok((header, seed.events, head, seed.base))
}

impl RaftSnapshotBuilder<TypeConfig> for LedgerStateMachine {
    type SnapshotData = SnapshotData;

    #[tracing::instrument(level = "info", skip(self))]
    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (ledger, key, current) = (self.ledger.clone(), self.key.clone(), self.current.clone());
        let (meta, data) = tokio::task::spawn_blocking(move || Self::build_and_store(&ledger, &key, &current))
            .await
            .map_err(sm_write)??;
        Ok(Snapshot { meta, snapshot: Cursor::new(data) })
    }
}

impl LedgerStateMachine {
    /// Builds a snapshot of the ledger as applied now and stores it as the current one
    /// (blocking).
    fn build_and_store(
        ledger: &SharedLedger,
        key: &NodeKey,
        current: &SnapshotFile,
    ) -> Result<(SnapshotMeta, Vec<u8>), io::Error> {
        let (meta, data) = {
            let l = ledger.read_ledger().map_err(sm_write)?;
            // Everything applied so far becomes durable before openraft may purge the log.
            l.sync().map_err(sm_write)?;
            let (applied, membership) = Self::read_applied(&l)?;
            let data = Self::encode_snapshot(&l, key, applied, membership.clone())?;
            (SnapshotMeta { last_log_id: applied, last_membership: membership }, data)
        };
        current.store(&meta, &data)?;
        Ok((meta, data))
    }
}

/// Ledger meta entries, as (key, value) pairs.
type MetaEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// The ledger meta that marks `last` applied with `membership`.
fn applied_meta(last: Option<LogId>, membership: &StoredMembership) -> Result<MetaEntries, io::Error> {
    Ok(vec![
        (META_APPLIED.to_vec(), postcard::to_stdvec(&last).map_err(sm_write)?),
        (META_MEMBERSHIP.to_vec(), postcard::to_stdvec(&membership).map_err(sm_write)?),
    ])
}

/// Appends the pending `events` (in ledger-sized chunks, `meta` written with the last) and
/// fills each one's response slot. The events stay where they are, in the entries' batches:
/// they are read, never copied.
#[allow(clippy::too_many_arguments)]
fn flush(
    l: &mut Ledger,
    cache: &mut VerifierCache,
    pre_verified: &PreVerified,
    events: &mut Vec<&SignedEvent>,
    slots: &mut Vec<(usize, Option<usize>)>,
    responses: &mut [SporeResponse],
    meta: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<(), io::Error> {
    let events = std::mem::take(events);
    let mut chunks: Vec<&[&SignedEvent]> = events.chunks(crate::core::limits::APPEND_BATCH_MAX).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let n = chunks.len();
    let mut outcomes = Vec::with_capacity(events.len());
    let mut meta = Some(meta);
    for (k, chunk) in chunks.into_iter().enumerate() {
        let m = if k + 1 == n { meta.take().unwrap_or_default() } else { Vec::new() };
        // Signatures the log store already verified (for exactly these events) are not
        // verified again; the rest are, here.
        let (verified, _) = VerifiedEvents::verify_with(chunk.to_vec(), cache, pre_verified);
        outcomes.extend(l.append_verified_points(verified, m).map_err(sm_write)?);
    }
    for ((slot, pos), outcome) in std::mem::take(slots).into_iter().zip(outcomes) {
        let answer = match outcome {
            Ok(point) => SporeResponse::Applied(point),
            Err(r) => SporeResponse::Rejected(r),
        };
        match (pos, &mut responses[slot]) {
            (Some(k), SporeResponse::Batch(v)) => v[k] = answer,
            (_, r) => *r = answer,
        }
    }
    Ok(())
}

/// Most events an apply runs on the state machine's task rather than on a blocking thread.
const INLINE_EVENTS_MAX: usize = 8;

/// Whether `entries` are small enough to apply on the state machine's own task: a few events
/// whose signatures the log store verified already cost less than the hop to a blocking thread
/// and back (one write's commit latency waits on it). Provisional events read the chain and
/// go to a blocking thread.
fn applies_inline(entries: &[Entry]) -> bool {
    let mut events = 0usize;
    for e in entries {
        match &e.payload {
            EntryPayload::Blank | EntryPayload::Membership(_) => {}
            EntryPayload::Normal(SporeRequest::Event(_)) => events += 1,
            EntryPayload::Normal(SporeRequest::Batch(b)) => events += b.len(),
            EntryPayload::Normal(SporeRequest::Provisional(_)) => return false,
        }
        if events > INLINE_EVENTS_MAX {
            return false;
        }
    }
    true
}

/// The state machine's check of a provisional event: its author's statement verifies and the
/// chain after the statement's point does not hold the event already. Deterministic: every
/// replica reads the same chain here.
fn check_provisional(l: &Ledger, p: &ProvisionalEvent) -> Result<(), Rejection> {
    p.verify_statement().map_err(|e| Rejection::ProvisionalRefused(e.to_string().into()))?;
    let head = l.head().map(|h| h.seq);
    let Some((from, to)) = p.scan_range(head).map_err(|e| Rejection::ProvisionalRefused(e.to_string().into()))? else {
        return Ok(());
    };
    // A ledger that cannot read its own committed range refuses rather than guesses.
    match crate::store::provisional::find_committed(l, p, from, to) {
        Ok(None) => Ok(()),
        Ok(Some(point)) => Err(Rejection::ProvisionalDuplicate(point)),
        Err(e) => Err(Rejection::ProvisionalRefused(format!("cannot read the chain to check: {e}").into())),
    }
}

impl RaftStateMachine<TypeConfig> for LedgerStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let l = self.ledger.read_ledger().map_err(sm_write)?;
        Self::read_applied(&l)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(path = %self.path.display()))]
    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let (entries, responders): (Vec<Entry>, Vec<_>) = entries.try_collect::<Vec<_>>().await?.into_iter().unzip();
        let inline = applies_inline(&entries);
        let ledger = self.ledger.clone();
        let pre_verified = self.pre_verified.clone();
        let cache = self.cache.clone();
        let work = move || {
            let mut l = ledger.write_ledger().map_err(sm_write)?;
            let (applied, mut membership) = Self::read_applied(&l)?;
            // A node restored from a seed served it while joining; Raft now brings the whole
            // history from the start of its log, so the import goes first: nothing twice.
            if applied.is_none() && l.is_imported().map_err(sm_read)? {
                tracing::info!(head = ?l.head().map(|h| h.seq), "Raft replays from the start; discarding the seed import it supersedes");
                l.reset().map_err(sm_write)?;
            }
            // The last entry whose effects are wholly in the ledger.
            let mut last = applied;
            let mut events: Vec<&SignedEvent> = Vec::new();
            // Which response slot (entry, position in its batch) each event fills.
            let mut slots: Vec<(usize, Option<usize>)> = Vec::new();
            let mut responses = Vec::with_capacity(entries.len());
            let mut cache = sync::lock(&cache);
            for (i, entry) in entries.iter().enumerate() {
                match &entry.payload {
                    EntryPayload::Blank => responses.push(SporeResponse::None),
                    EntryPayload::Membership(m) => {
                        membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        responses.push(SporeResponse::None);
                    }
                    EntryPayload::Normal(SporeRequest::Event(ev)) => {
                        if events.len() + 1 > crate::core::limits::APPEND_BATCH_MAX {
                            let before = applied_meta(last, &membership)?;
                            flush(&mut l, &mut cache, &pre_verified, &mut events, &mut slots, &mut responses, before)?;
                        }
                        events.push(ev);
                        slots.push((i, None));
                        responses.push(SporeResponse::None);
                    }
                    EntryPayload::Normal(SporeRequest::Batch(batch)) => {
                        // Ledger batches end at entry boundaries, each written with the applied
                        // mark of its last whole entry: a crash between two of them re-applies
                        // only entries whose events are not stored yet.
                        if !events.is_empty() && events.len() + batch.len() > crate::core::limits::APPEND_BATCH_MAX {
                            let before = applied_meta(last, &membership)?;
                            flush(&mut l, &mut cache, &pre_verified, &mut events, &mut slots, &mut responses, before)?;
                        }
                        responses.push(SporeResponse::Batch(vec![SporeResponse::None; batch.len()]));
                        for (k, ev) in batch.iter().enumerate() {
                            events.push(ev);
                            slots.push((i, Some(k)));
                        }
                    }
                    EntryPayload::Normal(SporeRequest::Provisional(p)) => {
                        responses.push(SporeResponse::None);
                        let author = p.event.author;
                        // The duplicate check reads the chain as it stands before this entry:
                        // what came before it is stored first (with the applied mark of the
                        // entry before it, so a crash in between re-applies nothing twice).
                        let before = applied_meta(last, &membership)?;
                        flush(&mut l, &mut cache, &pre_verified, &mut events, &mut slots, &mut responses, before)?;
                        let answer = match check_provisional(&l, p) {
                            Err(rejection) => SporeResponse::Rejected(rejection),
                            Ok(()) => {
                                let meta = applied_meta(Some(entry.log_id), &membership)?;
                                let (verified, _) =
                                    VerifiedEvents::verify_with(vec![&p.event], &mut cache, &pre_verified);
                                match l.append_verified_points(verified, meta).map_err(sm_write)?.pop() {
                                    Some(Ok(point)) => SporeResponse::Applied(point),
                                    Some(Err(r)) => SporeResponse::Rejected(r),
                                    None => SporeResponse::None,
                                }
                            }
                        };
                        if let SporeResponse::Rejected(r) = &answer {
                            tracing::info!(author = %author.short(), reason = %r, "provisional event not applied");
                        }
                        responses[i] = answer;
                    }
                }
                last = Some(entry.log_id);
            }
            let meta = applied_meta(last, &membership)?;
            flush(&mut l, &mut cache, &pre_verified, &mut events, &mut slots, &mut responses, meta)?;
            Ok::<_, io::Error>(responses)
        };
        let responses = if inline { work() } else { tokio::task::spawn_blocking(work).await.map_err(sm_write)? }?;
        self.publish_head();
        for (responder, response) in responders.into_iter().zip(responses) {
            if let Some(r) = responder {
                r.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    #[tracing::instrument(level = "info", skip(self, snapshot), fields(last = ?meta.last_log_id))]
    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        let ledger = self.ledger.clone();
        let meta2 = meta.clone();
        let current = self.current.clone();
        tokio::task::spawn_blocking(move || {
            let (_header, events, seed_head, base) = decode_snapshot(&data).map_err(snap_err)?;
            // The first seq the snapshot's events carry: 0, or right after its attested state.
            let first = base.as_ref().and_then(|b| b.head).map_or(0, |h| h.seq + 1);
            let mut l = ledger.write_ledger().map_err(sm_write)?;
            // Keep our prefix if the snapshot's chain extends it; otherwise start over.
            let extends = l.head().is_some_and(|h| match h.seq.checked_sub(first) {
                Some(i) => usize::try_from(i).ok().and_then(|i| events.get(i)).is_some_and(|e| e.hash == h.hash),
                // Our head is the snapshot's attested state (a state-only snapshot).
                None => h.seq + 1 == first && base.as_ref().and_then(|b| b.head).is_some_and(|b| b.hash == h.hash),
            });
            let keep = match l.head() {
                Some(h) if extends => h.seq + 1 - first,
                local => {
                    if let Some(h) = local {
                        tracing::warn!(
                            local_head = h.seq,
                            "snapshot does not extend the local chain; rebuilding the ledger"
                        );
                        l.reset().map_err(sm_write)?;
                    }
                    if let Some(b) = &base {
                        // The history below the snapshot's state is not in it.
                        l.load_state_only(b.clone()).map_err(sm_write)?;
                    }
                    0
                }
            };
            let todo: Vec<ChainedEvent> = events.into_iter().skip(keep as usize).collect();
            let total = todo.len();
            let mut done = 0usize;
            let mut it = todo.into_iter().peekable();
            while it.peek().is_some() {
                let chunk: Vec<ChainedEvent> = it.by_ref().take(crate::core::limits::APPEND_BATCH_MAX).collect();
                done += chunk.len();
                let extra = if done == total {
                    vec![
                        (META_APPLIED.to_vec(), postcard::to_stdvec(&meta2.last_log_id).map_err(sm_write)?),
                        (META_MEMBERSHIP.to_vec(), postcard::to_stdvec(&meta2.last_membership).map_err(sm_write)?),
                    ]
                } else {
                    Vec::new()
                };
                let expected: Vec<(u64, ChainHash)> = chunk.iter().map(|c| (c.seq, c.hash)).collect();
                let outcome =
                    l.append_with_meta(chunk.into_iter().map(|c| c.event).collect(), extra).map_err(sm_write)?;
                for (o, (seq, hash)) in outcome.into_iter().zip(expected) {
                    match o {
                        Ok(ce) if ce.seq == seq && ce.hash == hash => {}
                        other => return Err(snap_err(format!("snapshot event {seq} does not re-apply: {other:?}"))),
                    }
                }
            }
            if total == 0 {
                let extra = vec![
                    (META_APPLIED.to_vec(), postcard::to_stdvec(&meta2.last_log_id).map_err(sm_write)?),
                    (META_MEMBERSHIP.to_vec(), postcard::to_stdvec(&meta2.last_membership).map_err(sm_write)?),
                ];
                l.append_with_meta(Vec::new(), extra).map_err(sm_write)?;
            }
            if l.head().map(|h| (h.seq, h.hash)) != seed_head {
                return Err(snap_err("ledger head after install differs from the snapshot head"));
            }
            l.sync().map_err(sm_write)?;
            drop(l);
            current.store(&meta2, &data)
        })
        .await
        .map_err(sm_write)??;
        self.publish_head();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let (ledger, key, current) = (self.ledger.clone(), self.key.clone(), self.current.clone());
        // On the blocking pool: the file's lock is held while a snapshot is read back.
        let loaded = tokio::task::spawn_blocking(move || {
            if current.meta().is_none() {
                return Ok(None);
            }
            match current.load() {
                Some(loaded) => Ok(Some(loaded)),
                // The file was damaged or removed under the node. openraft asks for a snapshot
                // to send it to a follower, and stops if there is none: a new one, of the
                // ledger as applied now, serves as well.
                None => Self::build_and_store(&ledger, &key, &current).map(Some),
            }
        })
        .await
        .map_err(sm_read)??;
        Ok(loaded.map(|(meta, data)| Snapshot { meta, snapshot: Cursor::new(data) }))
    }
}

/// Snapshots arrive in chunks (openraft-legacy's v1 transfer), gathered in memory.
impl SnapshotReceiverFactory<TypeConfig> for LedgerStateMachine {
    type SnapshotReceiver = SnapshotData;

    async fn begin_receiving_snapshot(&mut self) -> Result<SnapshotData, io::Error> {
        Ok(Cursor::new(Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_decoder_rejects_garbage_without_panicking() {
        for bytes in [&b""[..], b"SPORESNP", b"SPORESNP\x01\xff\xff\xff\xff", b"SPORESNP\x02\x00\x00\x00\x00"] {
            assert!(decode_snapshot(bytes).is_err());
        }
    }
}
