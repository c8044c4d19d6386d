//! The Raft state machine is the ledger: applying a committed entry validates the signed event,
//! chains it and updates the projections, identically on every replica.
//!
//! The applied log id is written into the ledger's `meta` keyspace in the same atomic batch as
//! the events it covers, and the membership in the batch of the entry that changes it, so
//! after a crash the ledger and `applied_state` always agree; openraft re-applies anything
//! after it from the Raft log. Apply keeps both in memory between calls rather than read
//! them back (`apply::ApplyState`). The ledger's own
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
use openraft::{OptionalSend, RaftSnapshotBuilder};
use openraft_legacy::network_v1::SnapshotReceiverFactory;
use serde::{Deserialize, Serialize};

use super::apply::{
    apply_entries, events_of, placement, read_applied, sm_read, sm_write, ApplyState, Placement, META_APPLIED,
    META_MEMBERSHIP,
};
use super::log_store::JournalSyncing;
use super::snapshot_file::SnapshotFile;
use super::{Entry, LogId, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig};
use crate::core::event::ChainedEvent;
use crate::core::keys::NodeKey;
use crate::core::projection::ProjectionState;
use crate::core::sync;
use crate::core::types::ChainHash;
use crate::store::ledger::{Ledger, LedgerLock};
use crate::store::verified::PreVerified;

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
    /// What apply keeps between calls (decoded keys, the applied mark it last wrote).
    apply_state: Arc<std::sync::Mutex<ApplyState>>,
    /// Whether the log store's flusher is syncing the journal the ledger shares with it.
    syncing: JournalSyncing,
    /// The ledger's directory (for the spans of this state machine's operations).
    path: Arc<std::path::Path>,
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
            apply_state: Arc::new(std::sync::Mutex::new(ApplyState::default())),
            syncing: JournalSyncing::default(),
            path,
        }
    }

    /// The signatures this node has checked ahead of apply (shared with its log store and
    /// its proposer, which start the checks).
    pub fn pre_verified(&self) -> &PreVerified {
        &self.pre_verified
    }

    /// Watches the log store's journal syncs (`FjallLogStore::syncing`): while one runs, an
    /// apply's ledger write would wait for it, so applies go to a blocking thread then.
    pub fn watching_syncs(self, syncing: JournalSyncing) -> Self {
        LedgerStateMachine { syncing, ..self }
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
            let (applied, membership) = read_applied(&l)?;
            let data = Self::encode_snapshot(&l, key, applied, membership.clone())?;
            (SnapshotMeta { last_log_id: applied, last_membership: membership }, data)
        };
        current.store(&meta, &data)?;
        Ok((meta, data))
    }
}

impl RaftStateMachine<TypeConfig> for LedgerStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let l = self.ledger.read_ledger().map_err(sm_write)?;
        read_applied(&l)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(path = %self.path.display()))]
    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let (entries, responders): (Vec<Entry>, Vec<_>) = entries.try_collect::<Vec<_>>().await?.into_iter().unzip();
        // On this task when the apply cannot block it (see `apply::placement`), else on a
        // blocking thread. The guard is dropped before anything is awaited.
        let here = {
            let guard = match placement(&entries) {
                Placement::Inline => Some(self.ledger.write_ledger().map_err(sm_write)?),
                Placement::InlineIfSettled
                    if !self.syncing.now() && self.pre_verified.all_verified(events_of(&entries)) =>
                {
                    self.ledger.try_write_ledger().map_err(sm_write)?
                }
                _ => None,
            };
            guard.map(|mut l| apply_entries(&mut l, &entries, &mut sync::lock(&self.apply_state), &self.pre_verified))
        };
        let responses = match here {
            Some(responses) => responses?,
            None => {
                let (ledger, pre_verified, state) =
                    (self.ledger.clone(), self.pre_verified.clone(), self.apply_state.clone());
                tokio::task::spawn_blocking(move || {
                    let mut l = ledger.write_ledger().map_err(sm_write)?;
                    apply_entries(&mut l, &entries, &mut sync::lock(&state), &pre_verified)
                })
                .await
                .map_err(sm_write)??
            }
        };
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
        // The install rewrites the applied mark and membership (or fails part way): the next
        // apply reads them from the ledger.
        sync::lock(&self.apply_state).applied = None;
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
