//! The Raft log on fjall.
//!
//! Two keyspaces in the node's database (shared with the ledger, so one journal and one fsync
//! stream serve both):
//! - `raft_log`: key = log index (u64 big-endian), value = postcard of the openraft entry;
//! - `raft_meta`: `vote`, `committed`, `purged` (postcard).
//!
//! **Durability contract:** `save_vote` returns after the vote is synced. `append` makes the
//! entries readable before it returns and calls the flush callback (`IOFlushed`) only after
//! they are synced: a dedicated flusher thread takes the callbacks in order, syncs the journal
//! once for all that are waiting (group fsync) and then completes them. openraft 0.10 hands
//! appended entries to replication without waiting for that callback, so the leader's sync
//! overlaps the followers' (0.9 waited for it: two syncs in series per write); an entry counts
//! toward the commit quorum on a node only once its sync is reported.
//! Truncation (`truncate_after`) and purge are batches of removes (fjall has no range delete).

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{EntryPayload, LogState, OptionalSend, RaftLogReader};

use super::{Entry, LogId, SporeRequest, TypeConfig, Vote};
use crate::store::ledger::storage;
use crate::store::verified::PreVerified;
use crate::store::verify_pool::Urgency;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

/// The Raft log store. Cheap to clone (fjall handles are shared).
#[derive(Clone)]
pub struct FjallLogStore {
    path: PathBuf,
    db: Database,
    log: Keyspace,
    meta: Keyspace,
    flusher: std::sync::mpsc::Sender<IOFlushed<TypeConfig>>,
    /// Verifies the signatures of appended events ahead of their apply, while the log syncs.
    pre_verified: PreVerified,
    /// This node's Raft id: entries it appended as their leader have their signatures checked
    /// in the foreground (a write waits for them), the others in the background.
    me: u64,
    /// The newest entries, decoded, so apply and replication do not decode what was just
    /// appended.
    recent: Recent,
    /// Set while the flusher syncs the journal (see [`JournalSyncing`]).
    syncing: JournalSyncing,
}

/// Whether the flusher is syncing the node's fjall journal now. fjall holds the journal's lock
/// through the sync, so every write to the database (a Raft log append, a ledger apply) waits
/// for it: the state machine reads this to keep such a wait off the runtime's threads.
/// Cheap to clone (one shared flag).
#[derive(Clone, Debug, Default)]
pub struct JournalSyncing(Arc<std::sync::atomic::AtomicBool>);

impl JournalSyncing {
    /// Whether a sync is running now.
    pub fn now(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set(&self, on: bool) {
        self.0.store(on, std::sync::atomic::Ordering::Release);
    }
}

/// A cache of the newest log entries: always a contiguous suffix `first..=last` of the log (or
/// empty), kept so by [`Recent::appended`], [`Recent::truncated`] and [`Recent::purged`], and
/// bounded by [`Recent::MAX`] entries. Shared by the store's clones.
#[derive(Clone, Default)]
struct Recent {
    entries: Arc<Mutex<VecDeque<Entry>>>,
}

impl Recent {
    /// Most entries kept (each at most a proposer batch).
    const MAX: usize = 64;

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, VecDeque<Entry>>> {
        self.entries.lock().ok()
    }

    /// Entries were appended at the end of the log.
    fn appended(&self, new: Vec<Entry>) {
        let Some(mut c) = self.lock() else { return };
        for e in new {
            if c.back().is_some_and(|b| b.log_id.index + 1 != e.log_id.index) {
                c.clear(); // not contiguous: start again from here
            }
            c.push_back(e);
        }
        while c.len() > Self::MAX {
            c.pop_front();
        }
    }

    /// Entries from `index` on were removed.
    fn truncated(&self, index: u64) {
        if let Some(mut c) = self.lock() {
            while c.back().is_some_and(|b| b.log_id.index >= index) {
                c.pop_back();
            }
        }
    }

    /// Entries up to `index` were removed.
    fn purged(&self, index: u64) {
        if let Some(mut c) = self.lock() {
            while c.front().is_some_and(|f| f.log_id.index <= index) {
                c.pop_front();
            }
        }
    }

    /// The entries of `start..end` (`end` exclusive, `None` = to the end of the log) if the
    /// cache covers `start`: being a suffix of the log, it then holds all of them.
    fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let c = self.lock()?;
        let first = c.front()?.log_id.index;
        if start < first {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        let take = match end {
            Some(e) => usize::try_from(e.saturating_sub(start)).ok()?,
            None => usize::MAX,
        };
        Some(c.iter().skip(skip).take(take).cloned().collect())
    }
}

/// Syncs the journal for every waiting callback, in order; exits when the store is dropped.
fn run_flusher(
    db: Database,
    path: PathBuf,
    rx: std::sync::mpsc::Receiver<IOFlushed<TypeConfig>>,
    metrics: crate::store::metrics::WriteMetrics,
    syncing: JournalSyncing,
) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let started = std::time::Instant::now();
        syncing.set(true);
        let r = tracing::debug_span!("raft_log_sync", path = %path.display(), callbacks = waiting.len())
            .in_scope(|| db.persist(PersistMode::SyncData))
            .map_err(storage("sync the raft log", &path));
        syncing.set(false);
        metrics.raft_log_sync(started.elapsed());
        tracing::trace!(callbacks = waiting.len(), ok = r.is_ok(), "raft log group sync");
        // Newest first: openraft keeps the newest flushed id in a watch and ignores an older
        // one, so a group makes one change, not one per callback. Its forwarder task meets a
        // second change within a microsecond of the first with a 1 µs sleep, which tokio's
        // millisecond timer turns into up to a millisecond with no flush reported.
        for cb in waiting.into_iter().rev() {
            cb.io_completed(r.as_ref().map(|_| ()).map_err(super::io_err));
        }
    }
}

fn read_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("reading the raft log: {e}"))
}
fn write_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("writing the raft log: {e}"))
}
fn vote_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("saving the raft vote: {e}"))
}

impl FjallLogStore {
    /// Opens (creating if needed) the Raft keyspaces in `db`.
    pub fn open(
        db: Database,
        path: PathBuf,
        pre_verified: PreVerified,
        metrics: crate::store::metrics::WriteMetrics,
        me: u64,
    ) -> Result<Self, fjall::Error> {
        let log = db.keyspace("raft_log", crate::store::ledger::busy_keyspace)?;
        let meta = db.keyspace("raft_meta", KeyspaceCreateOptions::default)?;
        let (flusher, rx) = std::sync::mpsc::channel();
        let (flush_db, flush_path) = (db.clone(), path.clone());
        let syncing = JournalSyncing::default();
        let flag = syncing.clone();
        std::thread::Builder::new()
            .name("spores-raft-flush".into())
            .spawn(move || run_flusher(flush_db, flush_path, rx, metrics, flag))
            .map_err(|e| fjall::Error::from(std::io::Error::other(e.to_string())))?;
        Ok(FjallLogStore { path, db, log, meta, flusher, pre_verified, me, recent: Recent::default(), syncing })
    }

    /// Whether this store's flusher is syncing the journal now (shared with the state machine).
    pub fn syncing(&self) -> JournalSyncing {
        self.syncing.clone()
    }

    /// How urgent the signature checks of the entry at `log_id` are: a write waits for them
    /// only on the leader that appended it (the leader's apply answers the write), so only
    /// there do they run in the foreground.
    fn urgency(&self, log_id: &LogId) -> Urgency {
        if log_id.leader_id.node_id == self.me {
            Urgency::Foreground
        } else {
            Urgency::Background
        }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, io::Error> {
        match self.meta.get(key).map_err(read_err)? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(&v).map(Some).map_err(read_err),
        }
    }

    fn put_meta_durable<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), io::Error> {
        let bytes = postcard::to_stdvec(value).map_err(write_err)?;
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.meta, key, bytes);
        batch.commit().map_err(self.fjall_write("sync a raft meta entry"))
    }

    /// A failed fjall write as the log's error, saying why when the engine stopped after an
    /// earlier failure (a full disk, say: [`storage`]).
    fn fjall_write(&self, op: &'static str) -> impl FnOnce(fjall::Error) -> io::Error + '_ {
        move |e| write_err(storage(op, &self.path)(e))
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, io::Error> {
        let Some(guard) = self.log.last_key_value() else { return Ok(None) };
        let (_, v) = guard.into_inner().map_err(read_err)?;
        let entry: Entry = postcard::from_bytes(&v).map_err(read_err)?;
        Ok(Some(entry.log_id))
    }

    fn remove_range(&self, from: u64, to_inclusive: Option<u64>, durable: bool) -> Result<(), io::Error> {
        let mut batch = self.db.batch().durability(durable.then_some(PersistMode::SyncData));
        let iter: Box<dyn Iterator<Item = fjall::Guard>> = match to_inclusive {
            Some(to) => Box::new(self.log.range(from.to_be_bytes()..=to.to_be_bytes())),
            None => Box::new(self.log.range(from.to_be_bytes()..)),
        };
        for guard in iter {
            let key = guard.key().map_err(read_err)?;
            batch.remove(&self.log, key);
        }
        batch.commit().map_err(self.fjall_write("remove raft log entries"))
    }
}

impl RaftLogReader<TypeConfig> for FjallLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => Some(e.saturating_add(1)),
            Bound::Excluded(e) => Some(*e),
            Bound::Unbounded => None,
        };
        let span = tracing::trace_span!("raft_log_read", path = %self.path.display(), start);
        let _g = span.enter();
        if let Some(entries) = self.recent.get(start, end) {
            return Ok(entries);
        }
        let mut out = Vec::new();
        for guard in self.log.range(start.to_be_bytes()..) {
            let (k, v) = guard.into_inner().map_err(read_err)?;
            let idx = crate::store::record::parse_seq_key(&k).ok_or_else(|| read_err("malformed raft log key"))?;
            if !range.contains(&idx) {
                break;
            }
            out.push(postcard::from_bytes(&v).map_err(read_err)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for FjallLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    #[tracing::instrument(level = "debug", skip(self), fields(path = %self.path.display()))]
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let this = self.clone();
        let vote = *vote;
        tokio::task::spawn_blocking(move || this.put_meta_durable(KEY_VOTE, &vote).map_err(vote_err))
            .await
            .map_err(vote_err)?
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced: openraft treats it as a hint that may lag.
        let bytes = postcard::to_stdvec(&committed).map_err(write_err)?;
        self.meta.insert(KEY_COMMITTED, bytes).map_err(self.fjall_write("save the committed log id"))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(path = %self.path.display()))]
    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = self.db.batch();
        let mut appended = Vec::new();
        // The events whose signatures apply will need, per entry.
        let mut to_verify = Vec::new();
        for entry in entries {
            let bytes = postcard::to_stdvec(&entry).map_err(write_err)?;
            batch.insert(&self.log, entry.log_id.index.to_be_bytes(), bytes);
            let urgency = self.urgency(&entry.log_id);
            match &entry.payload {
                EntryPayload::Normal(SporeRequest::Event(e)) => to_verify.push((Arc::new(vec![e.clone()]), urgency)),
                EntryPayload::Normal(SporeRequest::Batch(b)) => to_verify.push((b.clone(), urgency)),
                EntryPayload::Normal(SporeRequest::Provisional(p)) => {
                    to_verify.push((Arc::new(vec![p.event.clone()]), urgency))
                }
                _ => {}
            }
            appended.push(entry);
        }
        // Readable once committed; the flusher makes it durable and only then calls back.
        batch.commit().map_err(self.fjall_write("append to the raft log"))?;
        tracing::trace!(entries = appended.len(), "raft log appended");
        self.recent.appended(appended);
        self.flusher.send(callback).map_err(|_| write_err("raft log flusher stopped"))?;
        // Apply needs these signatures checked once the entries commit: check them on the
        // thread pool while the flusher syncs. The sync is started first: every write waits
        // for it, and waking the pool first delays the flusher's wake-up (one write's commit
        // ~5 % slower over 13 alternated `latency_breakdown` runs; the 64-client rate did not
        // move). The entries cannot be applied before this call returns. A leader's proposer
        // started the checks of a large batch as it sent it: those are not repeated here.
        for (events, urgency) in to_verify {
            self.pre_verified.spawn_verify(events, urgency);
        }
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip(self), fields(path = %self.path.display()))]
    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        self.recent.truncated(from);
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.remove_range(from, None, true)).await.map_err(write_err)?
    }

    #[tracing::instrument(level = "debug", skip(self), fields(path = %self.path.display()))]
    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.recent.purged(log_id.index);
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            this.put_meta_durable(KEY_PURGED, &log_id)?;
            this.remove_range(0, Some(log_id.index), false)
        })
        .await
        .map_err(write_err)?
    }
}

#[cfg(test)]
mod tests {
    use openraft::impls::leader_id_adv::LeaderId;

    use super::*;

    /// A node checks the signatures of the entries it appended as their leader in the
    /// foreground (its apply answers those writes) and every other entry's in the background,
    /// whatever the term.
    #[test]
    fn own_entries_are_checked_in_the_foreground_and_replicated_ones_in_the_background() {
        let (_dir, ledger) = crate::store::ledger::scratch();
        let key = crate::core::keys::NodeKey::from_seed([4; 32]);
        let me = super::super::raft_id(&key.node_id());
        let (log, _sm) = super::super::open_stores(ledger, key).expect("stores");
        let other = me.wrapping_add(1);
        for term in [1, 7] {
            assert_eq!(log.urgency(&LogId::new(LeaderId { term, node_id: me }, 3)), Urgency::Foreground);
            assert_eq!(log.urgency(&LogId::new(LeaderId { term, node_id: other }, 3)), Urgency::Background);
        }
    }
}
