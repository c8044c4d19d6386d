//! Read-only inspection of a ledger directory: verify, dump, stats, state-at, replay.
//!
//! This is the library behind the `spore` inspector. It never creates or modifies a ledger,
//! and it reports damage instead of failing on it: [`LedgerReader::verify`] returns the first
//! bad sequence number and why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace};
use serde::Serialize;

use super::ledger::{
    check_held_records, last_seq, open_keyspaces, read_anchor, read_backfill, read_head, read_stored_checkpoint,
    Backfill,
};
use super::replay::{read_verified_range, replay_range, ReplayOptions, ReplayStats, StopAt};
use crate::core::event::ChainedEvent;
use crate::core::projection::Projection;
use crate::core::types::{ChainHash, ChainPoint, NetworkFingerprint, Timestamp};
use crate::store::error::{Corruption, LedgerError};

/// The subdirectory of a node data directory that holds the ledger.
pub const LEDGER_SUBDIR: &str = "ledger";

/// Accepts a node data directory (with a `ledger/` inside) or a ledger directory itself.
pub fn resolve_ledger_dir(dir: &Path) -> PathBuf {
    let inner = dir.join(LEDGER_SUBDIR);
    if inner.is_dir() {
        inner
    } else {
        dir.to_path_buf()
    }
}

/// A ledger opened for reading only.
pub struct LedgerReader {
    path: PathBuf,
    _db: Database,
    ledger: Keyspace,
    meta: Keyspace,
    /// Set while the ledger holds only part of its history (loaded from a state-only seed).
    backfill: Option<Backfill>,
}

/// The outcome of [`LedgerReader::verify`].
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// The ledger directory.
    pub path: PathBuf,
    /// Events that passed every check.
    pub events_verified: u64,
    /// Signatures verified.
    pub signatures_verified: u64,
    /// The head recorded in `meta`.
    pub recorded_head: Option<(u64, ChainHash)>,
    /// The network, if genesis could be read.
    pub fingerprint: Option<NetworkFingerprint>,
    /// The first problem: sequence number and what is wrong.
    pub first_error: Option<(u64, Corruption)>,
    /// The first sequence number the ledger holds: 0, or above it while the history below a
    /// state-only seed is still being backfilled (then the events held below the seed's head
    /// are checked by links, hashes and signatures back from it, and the rules from its state).
    pub history_from: u64,
    /// The state-only seed's head the rules were applied from (`None`: from genesis).
    pub base: Option<ChainPoint>,
    /// With a `base`: whether the chain attests that state (the record after it is a state
    /// checkpoint event carrying its digest). `false` is what `verify` could not prove: the
    /// state rests on the seed's signers alone (a format 1 seed).
    pub base_attested: Option<bool>,
    /// The stored caches compared with the replay and found to match (`checkpoint at seq N`,
    /// `anchor at seq N`, `head`); a mismatch is reported as damage instead.
    pub caches_checked: Vec<String>,
    /// Wall time in seconds.
    pub elapsed_secs: f64,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.first_error.is_none()
    }
}

/// Counts over a whole ledger.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LedgerStats {
    /// Number of events.
    pub events: u64,
    /// The head.
    pub head: Option<(u64, ChainHash)>,
    /// Network name.
    pub network_name: Option<String>,
    /// Network fingerprint.
    pub fingerprint: Option<NetworkFingerprint>,
    /// First and last event time.
    pub first_time: Option<Timestamp>,
    /// Last event time.
    pub last_time: Option<Timestamp>,
    /// Events per kind.
    pub by_kind: BTreeMap<String, u64>,
    /// Distinct authors.
    pub authors: u64,
    /// Record bytes (sum of record sizes as stored, before compression).
    pub record_bytes: u64,
    /// Bytes on disk.
    pub disk_bytes: u64,
    /// The first sequence number held (above 0 while a state-only seed's history is being
    /// backfilled; the counts cover only what is held).
    pub history_from: u64,
    /// Nodes, active, offline, left, services at the head.
    pub nodes: u64,
    /// Active nodes at the head.
    pub active_nodes: u64,
    /// Offline nodes at the head.
    pub offline_nodes: u64,
    /// Services at the head.
    pub services: u64,
}

impl LedgerReader {
    /// Opens the ledger at `dir` (a data dir or ledger dir) without creating anything.
    #[tracing::instrument(fields(dir = %dir.display()))]
    pub fn open(dir: &Path) -> Result<Self, LedgerError> {
        let path = resolve_ledger_dir(dir);
        let (db, ledger, meta) = open_keyspaces(&path, false)?;
        let backfill = read_backfill(&meta, &path)?;
        Ok(LedgerReader { path, _db: db, ledger, meta, backfill })
    }

    /// The first sequence number this ledger holds (0 with a complete history).
    pub fn history_from(&self) -> u64 {
        self.backfill.as_ref().map_or(0, Backfill::held_from)
    }

    /// Where the history this ledger pruned was archived, oldest first (empty: never pruned).
    pub fn archives(&self) -> Vec<PathBuf> {
        self.backfill.as_ref().map(|b| b.archives.to_vec()).unwrap_or_default()
    }

    /// The projection a replay starts from: empty (genesis) or, while the history is being
    /// backfilled, the state-only seed's state.
    fn start(&self) -> Projection {
        self.backfill.as_ref().map_or_else(Projection::new, Backfill::start)
    }

    fn incomplete(&self) -> LedgerError {
        match &self.backfill {
            Some(b) => b.not_held(&self.path),
            None => LedgerError::HistoryIncomplete { path: self.path.clone(), held_from: 0 },
        }
    }

    /// Checks the events held below a state-only seed's head (`history_from ..= base`): each
    /// record, key, link and hash, that they lead exactly from the backfill point to the
    /// seed's head, and every signature. Returns how many, or the first problem.
    fn verify_below_base(&self, b: &Backfill, progress: &(dyn Fn(u64) + Sync)) -> Result<u64, (u64, Corruption)> {
        let Some(base) = b.base.head else { return Ok(0) };
        let mut prev = b.point;
        let page = crate::core::limits::REPLAY_CHUNK_EVENTS as u64;
        let mut checked = 0;
        while prev.seq < base.seq {
            let to = (prev.seq + page).min(base.seq);
            let events = match read_verified_range(&self.ledger, &self.path, prev.seq + 1, to) {
                Ok(e) => e,
                Err(LedgerError::Corrupt { seq, corruption, .. }) => return Err((seq, *corruption)),
                Err(e) => return Err((prev.seq + 1, Corruption::Undecodable { reason: e.to_string() })),
            };
            let Some(first) = events.first() else {
                return Err((prev.seq + 1, Corruption::Truncated { head_seq: base.seq, last_seq: Some(prev.seq) }));
            };
            if first.seq != prev.seq + 1 || first.prev_hash != prev.hash {
                return Err((first.seq, Corruption::BadLink { expected: prev.hash, found: first.prev_hash }));
            }
            if let Some(bad) = events.iter().find(|e| b.base.fingerprint.is_some_and(|f| f != e.event.fingerprint)) {
                return Err((
                    bad.seq,
                    Corruption::WrongNetwork {
                        expected: b.base.fingerprint.unwrap_or_default(),
                        found: bad.event.fingerprint,
                    },
                ));
            }
            let verdicts = super::ledger::verify_signatures(&events);
            if let Some(bad) = verdicts.iter().position(|ok| !ok) {
                return Err((events[bad].seq, Corruption::BadSignature { author: events[bad].event.author }));
            }
            let last = &events[events.len() - 1];
            prev = ChainPoint { seq: last.seq, hash: last.hash };
            checked += events.len() as u64;
            progress(checked);
        }
        if prev.hash != base.hash {
            return Err((
                base.seq,
                Corruption::HeadMismatch {
                    head_seq: base.seq,
                    head_hash: base.hash,
                    detail: "the history held below the seed's head does not lead to it".into(),
                },
            ));
        }
        Ok(checked)
    }

    /// The ledger directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The head recorded in `meta`.
    pub fn recorded_head(&self) -> Result<Option<(u64, ChainHash)>, LedgerError> {
        read_head(&self.meta, &self.path)
    }

    /// Checks every record, key, link and signature and the recorded head; applies every
    /// event to a projection to check the rules. Reports the first bad sequence number.
    pub fn verify(&self, progress: &(dyn Fn(u64) + Sync)) -> Result<VerifyReport, LedgerError> {
        let started = std::time::Instant::now();
        let recorded_head = self.recorded_head()?;
        let below = match &self.backfill {
            Some(b) => self.verify_below_base(b, progress),
            None => Ok(0),
        };
        let mut projection = self.start();
        let from = projection.next_seq();
        let mut caches_checked = Vec::new();
        // The stored checkpoint is a cache of the replay at its seq: replay up to it, compare,
        // then replay the rest.
        let (checkpoint, mut first_error) = match self.stored_checkpoint(recorded_head) {
            Ok(c) => (c, None),
            Err(damage) => (None, Some(damage)),
        };
        let (mut events, mut sigs) = (0, 0);
        if first_error.is_none() {
            match below {
                Err(e) => first_error = Some(e),
                Ok(below) => {
                    (events, sigs) = (below, below);
                    let stops =
                        checkpoint.as_ref().filter(|(seq, _)| *seq + 1 >= from).map(|(seq, _)| StopAt::Seq(*seq));
                    for stop in stops.into_iter().chain([StopAt::End]) {
                        let options = ReplayOptions { audit: true, stop };
                        let done = events;
                        match replay_range(&self.ledger, &self.path, &mut projection, &options, &|n| progress(done + n))
                        {
                            Ok(stats) => (events, sigs) = (events + stats.events, sigs + stats.signatures_verified),
                            Err(LedgerError::Corrupt { seq, corruption, .. }) => {
                                let n = below + projection.next_seq() - from;
                                (events, sigs) = (n, n);
                                first_error = Some((seq, *corruption));
                                break;
                            }
                            Err(e) => return Err(e),
                        }
                        if let (StopAt::Seq(at), Some((_, stored))) = (stop, &checkpoint) {
                            if projection.state() != stored {
                                first_error = Some((at, Corruption::CacheMismatch { cache: "checkpoint".into(), detail: format!("the projection stored for seq {at} differs from the replay of the records up to it") }));
                                break;
                            }
                            caches_checked.push(format!("checkpoint at seq {at}"));
                        }
                    }
                }
            }
        }
        if first_error.is_none() {
            match self.check_anchor(&projection) {
                Ok(Some(checked)) => caches_checked.push(checked),
                Ok(None) => {}
                Err(damage) => first_error = Some(damage),
            }
        }
        if first_error.is_none() {
            let last = last_seq(&self.ledger, &self.path)?;
            if let Err(LedgerError::Corrupt { seq, corruption, .. }) =
                check_held_records(&self.path, recorded_head, last, self.backfill.as_ref())
            {
                first_error = Some((seq, *corruption));
            } else if let Some((hs, hh)) = recorded_head {
                if projection.head().map(|h| (h.seq, h.hash)) != Some((hs, hh)) {
                    first_error = Some((
                        hs,
                        Corruption::HeadMismatch {
                            head_seq: hs,
                            head_hash: hh,
                            detail: "the recorded head hash differs from the chain".into(),
                        },
                    ));
                } else {
                    caches_checked.push("head".into());
                }
            }
        }
        Ok(VerifyReport {
            path: self.path.clone(),
            events_verified: events,
            signatures_verified: sigs,
            recorded_head,
            fingerprint: projection.fingerprint(),
            first_error,
            history_from: self.history_from(),
            base: self.backfill.as_ref().and_then(|b| b.base.head).map(|h| ChainPoint { seq: h.seq, hash: h.hash }),
            base_attested: match &self.backfill {
                Some(b) => Some(crate::store::attested::is_attested(&self.ledger, &self.path, &b.base)?),
                None => None,
            },
            caches_checked,
            elapsed_secs: started.elapsed().as_secs_f64(),
        })
    }

    /// The stored projection checkpoint, `(its seq, its state)`, checked against what can be
    /// checked without a replay: its digest and record decode, and it is not beyond the head.
    /// A ledger may have none (`Ok(None)`).
    fn stored_checkpoint(
        &self,
        head: Option<(u64, ChainHash)>,
    ) -> Result<Option<(u64, crate::core::projection::ProjectionState)>, (u64, Corruption)> {
        let at = head.map_or(0, |h| h.0);
        let stored = read_stored_checkpoint(&self.meta, &self.path)
            .map_err(|e| (at, Corruption::Metadata { key: "checkpoint".into(), reason: e.to_string() }))?;
        let state = match stored {
            None => return Ok(None),
            Some(Err(reason)) => return Err((at, Corruption::Metadata { key: "checkpoint".into(), reason })),
            Some(Ok(state)) => state,
        };
        let Some(cp) = state.head else {
            return Err((
                at,
                Corruption::CacheMismatch { cache: "checkpoint".into(), detail: "it holds no head".into() },
            ));
        };
        if head.is_none_or(|(seq, _)| cp.seq > seq) {
            return Err((
                cp.seq,
                Corruption::CacheMismatch {
                    cache: "checkpoint".into(),
                    detail: format!("it is at seq {}, beyond the recorded head {head:?}", cp.seq),
                },
            ));
        }
        Ok(Some((cp.seq, state)))
    }

    /// Compares the stored anchor (the newest checkpoint event) with the replayed chain.
    fn check_anchor(&self, projection: &Projection) -> Result<Option<String>, (u64, Corruption)> {
        let at = projection.head().map_or(0, |h| h.seq);
        let anchor = read_anchor(&self.meta, &self.path)
            .map_err(|e| (at, Corruption::Metadata { key: "anchor".into(), reason: e.to_string() }))?;
        let Some((seq, hash)) = anchor else { return Ok(None) };
        let newest = projection.state().last_checkpoint.map(|(s, _)| s);
        let mismatch = |detail: String| (seq, Corruption::CacheMismatch { cache: "anchor".into(), detail });
        if newest != Some(seq) {
            return Err(mismatch(format!(
                "it names seq {seq}, the newest checkpoint event in the chain is {newest:?}"
            )));
        }
        if seq >= self.history_from() {
            let held = self.range(seq, seq).map_err(|e| mismatch(e.to_string()))?;
            if held.first().map(|e| e.hash) != Some(hash) {
                return Err(mismatch(format!("its hash {} is not the hash of the event at seq {seq}", hash.short())));
            }
        }
        Ok(Some(format!("anchor at seq {seq}")))
    }

    /// Replays from genesis to `options.stop` — or, while the history below a state-only
    /// seed is being backfilled, from the seed's state (a stop before it fails with
    /// [`LedgerError::HistoryIncomplete`]).
    pub fn replay(
        &self,
        options: &ReplayOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(Projection, ReplayStats), LedgerError> {
        let mut p = self.start();
        if let Some(b) = &self.backfill {
            let base = b.base.head.map_or(0, |h| h.seq);
            let before_base = match options.stop {
                StopAt::End => false,
                StopAt::Seq(s) => s < base,
                // The seed's head event, once backfilled, says when the state was reached.
                StopAt::Time(t) => {
                    self.range(base, base).ok().and_then(|e| e.first().map(|e| t < e.event.timestamp)).unwrap_or(true)
                }
            };
            if before_base {
                return Err(self.incomplete());
            }
        }
        let stats = replay_range(&self.ledger, &self.path, &mut p, options, progress)?;
        Ok((p, stats))
    }

    /// Continues a replay: applies the records after `projection`'s head, to `options.stop`.
    /// The first one must link to that head (else [`Corruption::BadLink`] at its seq), so a
    /// projection of a shared prefix can be carried onto another ledger of the same chain.
    pub fn replay_onto(
        &self,
        projection: &mut Projection,
        options: &ReplayOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<ReplayStats, LedgerError> {
        replay_range(&self.ledger, &self.path, projection, options, progress)
    }

    /// Events `from..=to`, checked (decode, keys, links, hashes). Page large ranges. Fails with
    /// [`LedgerError::HistoryIncomplete`] below the history held.
    pub fn range(&self, from: u64, to: u64) -> Result<Vec<ChainedEvent>, LedgerError> {
        if from < self.history_from() {
            return Err(self.incomplete());
        }
        read_verified_range(&self.ledger, &self.path, from, to)
    }

    /// Counts over the whole ledger (one trusted replay, paged).
    pub fn stats(&self, progress: &(dyn Fn(u64) + Sync)) -> Result<LedgerStats, LedgerError> {
        let mut st =
            LedgerStats { head: self.recorded_head()?, history_from: self.history_from(), ..Default::default() };
        let mut authors = std::collections::HashSet::new();
        let end = st.head.map_or(0, |h| h.0);
        let page = crate::core::limits::REPLAY_CHUNK_EVENTS as u64;
        let mut from = st.history_from;
        while st.head.is_some() && from <= end {
            let events = self.range(from, (from + page - 1).min(end))?;
            if events.is_empty() {
                break;
            }
            for ev in &events {
                st.events += 1;
                *st.by_kind.entry(ev.event.body.kind().to_string()).or_default() += 1;
                authors.insert(ev.event.author);
                st.first_time = Some(st.first_time.map_or(ev.event.timestamp, |t| t.min(ev.event.timestamp)));
                st.last_time = Some(st.last_time.map_or(ev.event.timestamp, |t| t.max(ev.event.timestamp)));
                st.record_bytes += super::record::encode_record(ev).len() as u64;
            }
            from += events.len() as u64;
            progress(st.events);
        }
        // Counts are never taken from records that fail their checks: an audit replay.
        let (p, _) = self.replay(&ReplayOptions { audit: true, stop: StopAt::End }, &|_| {})?;
        st.authors = authors.len() as u64;
        st.network_name = p.network().map(|n| n.network_name.clone());
        st.fingerprint = p.fingerprint();
        st.nodes = p.nodes().count() as u64;
        st.active_nodes = p.active_nodes().count() as u64;
        st.offline_nodes = p.offline_nodes().count() as u64;
        st.services = p.services().count() as u64;
        st.disk_bytes = self._db.disk_space().unwrap_or(0);
        Ok(st)
    }
}
