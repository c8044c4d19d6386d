//! Read-only inspection of a ledger directory: verify, dump, stats, state-at, replay.
//!
//! This is the library behind the `spore` inspector. It never creates or modifies a ledger,
//! and it reports damage instead of failing on it: [`LedgerReader::verify`] returns the first
//! bad sequence number and why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace};
use serde::Serialize;

use super::ledger::{check_head_against_records, last_seq, open_keyspaces, read_head};
use super::replay::{read_verified_range, replay_range, ReplayOptions, ReplayStats, StopAt};
use crate::core::event::ChainedEvent;
use crate::core::projection::Projection;
use crate::core::types::{ChainHash, NetworkFingerprint, Timestamp};
use crate::error::{Corruption, LedgerError};

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
        Ok(LedgerReader { path, _db: db, ledger, meta })
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
        let mut projection = Projection::new();
        let result = replay_range(&self.ledger, &self.path, &mut projection, &ReplayOptions { audit: true, stop: StopAt::End }, progress);
        let (events, sigs, mut first_error) = match result {
            Ok(stats) => (stats.events, stats.signatures_verified, None),
            Err(LedgerError::Corrupt { seq, corruption, .. }) => {
                let n = projection.next_seq();
                (n, n, Some((seq, corruption)))
            }
            Err(e) => return Err(e),
        };
        if first_error.is_none() {
            let last = last_seq(&self.ledger, &self.path)?;
            if let Err(LedgerError::Corrupt { seq, corruption, .. }) = check_head_against_records(&self.path, recorded_head, last) {
                first_error = Some((seq, corruption));
            } else if let Some((hs, hh)) = recorded_head {
                if projection.head().map(|h| (h.seq, h.hash)) != Some((hs, hh)) {
                    first_error = Some((
                        hs,
                        Corruption::HeadMismatch { head_seq: hs, head_hash: hh, detail: "the recorded head hash differs from the chain".into() },
                    ));
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
            elapsed_secs: started.elapsed().as_secs_f64(),
        })
    }

    /// Replays from genesis to `options.stop`.
    pub fn replay(&self, options: &ReplayOptions, progress: &(dyn Fn(u64) + Sync)) -> Result<(Projection, ReplayStats), LedgerError> {
        let mut p = Projection::new();
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

    /// Events `from..=to`, checked (decode, keys, links, hashes). Page large ranges.
    pub fn range(&self, from: u64, to: u64) -> Result<Vec<ChainedEvent>, LedgerError> {
        read_verified_range(&self.ledger, &self.path, from, to)
    }

    /// Counts over the whole ledger (one trusted replay, paged).
    pub fn stats(&self, progress: &(dyn Fn(u64) + Sync)) -> Result<LedgerStats, LedgerError> {
        let mut st = LedgerStats { head: self.recorded_head()?, ..Default::default() };
        let mut authors = std::collections::HashSet::new();
        let end = st.head.map_or(0, |h| h.0);
        let page = crate::core::limits::REPLAY_CHUNK_EVENTS as u64;
        let mut from = 0;
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
        let (p, _) = self.replay(&ReplayOptions::default(), &|_| {})?;
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
