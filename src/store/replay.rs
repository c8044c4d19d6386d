//! Replay: stream ledger records through validated access, link checks, (optionally) batched
//! signature verification and `Projection::apply`.
//!
//! Three stages: a scan thread reads fjall in key order, checking only the keys, and cuts the
//! records into parts of `PART`; a dispatcher hands each part to the thread pool, where it
//! is decoded, hashed and (audit mode) verified as one `verify_batch`, several parts at once;
//! the calling thread takes the parts back **in order**, checks each record's link and hash,
//! and applies it. At most `PARTS_IN_FLIGHT` parts are between the scan and the apply, so
//! replay memory is bounded by that and the registry size, never by the log length, and
//! the pool always has the next parts to work on while one finishes (no stall per chunk).
//! Every check of a record happens in the order a sequential reader would make them, so the
//! first bad record and the reason reported are the same.

use std::cell::RefCell;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fjall::Keyspace;
use rkyv::util::AlignedVec;
use serde::Serialize;

use super::ledger::storage;
use super::record::{decode_record_with, parse_seq_key, seq_key};
use crate::core::event::{chain_hash, ChainedEvent};
use crate::core::keys::{SigningBatch, VerifierCache};
use crate::core::limits;
use crate::core::projection::{Projection, Rejection};
use crate::core::types::{ChainHash, Timestamp};
use crate::store::error::{Corruption, LedgerError};

/// Where a replay stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopAt {
    /// At the last record.
    End,
    /// After applying this sequence number.
    Seq(u64),
    /// Before the first event timestamped after this time.
    Time(Timestamp),
}

/// How to replay.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// Verify every signature (batched, all cores). Otherwise trust what ingest verified and
    /// check the chain links only.
    pub audit: bool,
    /// Where to stop.
    pub stop: StopAt,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions { audit: false, stop: StopAt::End }
    }
}

/// What a replay did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplayStats {
    /// Events applied.
    pub events: u64,
    /// Record bytes read.
    pub bytes: u64,
    /// Signatures verified (audit mode).
    pub signatures_verified: u64,
    /// Wall time.
    #[serde(serialize_with = "ser_secs")]
    pub elapsed: Duration,
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl ReplayStats {
    /// Events per second.
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

thread_local! {
    static CACHE: RefCell<VerifierCache> = RefCell::new(VerifierCache::default());
}

/// Runs `f` with this thread's verifying-key cache.
pub(crate) fn with_thread_cache<R>(f: impl FnOnce(&mut VerifierCache) -> R) -> R {
    CACHE.with(|c| f(&mut c.borrow_mut()))
}

struct Item {
    event: ChainedEvent,
    /// Size of the event's canonical encoding.
    size: usize,
    /// Record bytes read.
    bytes: usize,
}

/// A stored record whose key the scan has checked, not yet decoded.
struct Raw {
    seq: u64,
    value: fjall::Slice,
}

type ReadError = (u64, Result<Corruption, LedgerError>);

/// Records per parallel decode task (and per `verify_batch` call in an audit: at this size
/// the batch's multiscalar multiplication uses Pippenger's method).
const PART: usize = 512;
/// Most parts between the scan and the apply (decoded or being decoded): enough for both
/// cores to always have a part to work on.
const PARTS_IN_FLIGHT: usize = 8;
const _: () = assert!(PART * PARTS_IN_FLIGHT <= 4 * limits::REPLAY_CHUNK_EVENTS);

/// Scans `from..` in order, checking only the keys (dense, well formed); decoding is done in
/// parallel by [`decode_part`]. Sends parts of [`PART`] raw records; ends with an error item
/// at the first bad key.
fn scan_chunks(ks: &Keyspace, path: &Path, from: u64, tx: mpsc::SyncSender<Result<Vec<Raw>, ReadError>>) {
    let span = tracing::debug_span!("ledger_scan", path = %path.display(), from);
    let _g = span.enter();
    let mut chunk = Vec::with_capacity(PART);
    for (expected, guard) in (from..).zip(ks.range(seq_key(from)..)) {
        let fail = |seq, c: Result<Corruption, LedgerError>, chunk: Vec<Raw>| {
            let _ = tx.send(Ok(chunk));
            let _ = tx.send(Err((seq, c)));
        };
        let (key, value) = match guard.into_inner() {
            Ok(kv) => kv,
            Err(e) => return fail(expected, Err(storage("scan ledger", path)(e)), chunk),
        };
        let Some(seq) = parse_seq_key(&key) else {
            return fail(expected, Ok(Corruption::MalformedKey { len: key.len() }), chunk);
        };
        if seq != expected {
            return fail(expected, Ok(Corruption::Gap { expected, found: seq }), chunk);
        }
        chunk.push(Raw { seq, value });
        if chunk.len() >= PART {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(PART));
            if tx.send(Ok(full)).is_err() {
                return; // the consumer stopped early
            }
        }
    }
    if !chunk.is_empty() {
        let _ = tx.send(Ok(chunk));
    }
}

/// One decoded record: the event, the size of its canonical encoding, and whether its stored
/// hash matched (the link is checked afterwards, in order).
struct DecodedRecord {
    item: Item,
    computed: ChainHash,
}

/// What one parallel task made of its records: those decoded up to the first undecodable or
/// misplaced one (`stop`), with their signature verdicts in an audit.
struct Part {
    records: Vec<DecodedRecord>,
    verdicts: Vec<bool>,
    stop: Option<(u64, Corruption)>,
}

thread_local! {
    static DECODE_BUF: RefCell<AlignedVec> = RefCell::new(AlignedVec::new());
}

fn decode_part(raw: &[Raw], audit: bool) -> Part {
    let mut records = Vec::with_capacity(raw.len());
    let mut stop = None;
    let mut canonical = Vec::with_capacity(512);
    let mut signatures = SigningBatch::with_capacity(if audit { raw.len() } else { 0 });
    DECODE_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        for r in raw {
            let ev = match decode_record_with(&r.value, &mut buf) {
                Ok(ev) => ev,
                Err(e) => {
                    stop = Some((r.seq, e.into()));
                    break;
                }
            };
            if ev.seq != r.seq {
                stop = Some((r.seq, Corruption::Misplaced { key: r.seq, claimed: ev.seq }));
                break;
            }
            canonical.clear();
            ev.event.write_canonical_bytes(&mut canonical);
            let computed = chain_hash(&ev.prev_hash, r.seq, &canonical);
            if audit {
                // The signing message is a rearrangement of the canonical bytes just hashed.
                signatures.push_canonical(ev.event.author, ev.event.signature, &canonical);
            }
            records.push(DecodedRecord {
                item: Item { event: ev, size: canonical.len(), bytes: r.value.len() },
                computed,
            });
        }
    });
    let verdicts = if audit { with_thread_cache(|c| signatures.verify(c)) } else { Vec::new() };
    Part { records, verdicts, stop }
}

fn rejection_to_corruption(r: Rejection) -> Corruption {
    match r {
        Rejection::WrongNetwork { expected, got } => Corruption::WrongNetwork { expected, found: got },
        Rejection::BadSignature(author) => Corruption::BadSignature { author },
        rejection => Corruption::Rejected { rejection },
    }
}

/// Replays records after `projection`'s head into it. See the module doc.
#[tracing::instrument(skip(ks, projection, progress), fields(path = %path.display(), from = projection.next_seq()))]
pub(crate) fn replay_range(
    ks: &Keyspace,
    path: &Path,
    projection: &mut Projection,
    options: &ReplayOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ReplayStats, LedgerError> {
    let started = Instant::now();
    let mut stats = ReplayStats::default();
    let from = projection.next_seq();
    if let StopAt::Seq(s) = options.stop {
        if projection.head().is_some_and(|h| h.seq >= s) {
            return Ok(stats);
        }
    }
    let mut prev = projection.head_hash();
    let corrupt =
        |seq, corruption| LedgerError::Corrupt { path: path.to_path_buf(), seq, corruption: Box::new(corruption) };
    let audit = options.audit;
    let on_pool = rayon::current_thread_index().is_some();
    // For the error a failed pool worker reports (shared, not copied per part).
    let shared_path: std::sync::Arc<Path> = std::sync::Arc::from(path);
    let result = std::thread::scope(|scope| -> Result<(), LedgerError> {
        let (tx, rx) = mpsc::sync_channel::<Result<Vec<Raw>, ReadError>>(2);
        scope.spawn(move || scan_chunks(ks, path, from, tx));
        // A token per part in flight: the dispatcher takes one before it hands a part to the
        // pool, this thread gives it back once the part is applied.
        let (token_tx, token_rx) = mpsc::sync_channel::<()>(PARTS_IN_FLIGHT);
        for _ in 0..PARTS_IN_FLIGHT {
            let _ = token_tx.send(());
        }
        let (part_tx, part_rx) = mpsc::channel::<(usize, Result<Part, ReadError>)>();
        scope.spawn(move || {
            for (k, msg) in rx.into_iter().enumerate() {
                if token_rx.recv().is_err() {
                    return; // the consumer stopped early
                }
                match msg {
                    // Called on a pool thread (which then blocks below waiting for parts):
                    // decode here rather than count on the pool having another thread free.
                    Ok(raw) if on_pool => {
                        let _ = part_tx.send((k, Ok(decode_part(&raw, audit))));
                    }
                    Ok(raw) => {
                        let part_tx = part_tx.clone();
                        let path = shared_path.clone();
                        rayon::spawn(move || {
                            // A panic on the pool would abort the process: report it instead.
                            let part =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_part(&raw, audit)));
                            let part = part.map_err(|_| {
                                let seq = raw.first().map_or(0, |r| r.seq);
                                let source = std::io::Error::other(format!(
                                    "replay worker failed decoding the records from seq {seq}"
                                ));
                                (seq, Err(LedgerError::Io { path: path.to_path_buf(), source }))
                            });
                            let _ = part_tx.send((k, part));
                        });
                    }
                    Err(e) => {
                        let _ = part_tx.send((k, Err(e)));
                        return;
                    }
                }
            }
        });
        // Parts arrive in any order; they are applied in order.
        let mut waiting: std::collections::BTreeMap<usize, Result<Part, ReadError>> = std::collections::BTreeMap::new();
        let mut next = 0usize;
        for (k, part) in part_rx {
            waiting.insert(k, part);
            while let Some(part) = waiting.remove(&next) {
                next += 1;
                let Part { records, verdicts, stop } = match part {
                    Ok(p) => p,
                    Err((seq, Ok(c))) => return Err(corrupt(seq, c)),
                    Err((_, Err(e))) => return Err(e),
                };
                let mut verdicts = verdicts.into_iter();
                for d in records {
                    let ev = &d.item.event;
                    if ev.prev_hash != prev {
                        return Err(corrupt(ev.seq, Corruption::BadLink { expected: prev, found: ev.prev_hash }));
                    }
                    if d.computed != ev.hash {
                        return Err(corrupt(
                            ev.seq,
                            Corruption::HashMismatch { stored: ev.hash, computed: d.computed },
                        ));
                    }
                    prev = ev.hash;
                    match options.stop {
                        StopAt::Seq(s) if ev.seq > s => return Ok(()),
                        StopAt::Time(t) if ev.event.timestamp > t => return Ok(()),
                        _ => {}
                    }
                    if audit {
                        if !verdicts.next().unwrap_or(false) {
                            // A wrong-network event says so rather than "bad signature".
                            let c = match projection.check(&ev.event) {
                                Err(r @ Rejection::WrongNetwork { .. }) => rejection_to_corruption(r),
                                _ => Corruption::BadSignature { author: ev.event.author },
                            };
                            return Err(corrupt(ev.seq, c));
                        }
                        stats.signatures_verified += 1;
                    }
                    let seq = ev.seq;
                    let attests_state = matches!(ev.event.body, crate::core::event::EventBody::StateCheckpoint { .. });
                    projection
                        .apply_owned(d.item.event, d.item.size)
                        .map_err(|r| corrupt(seq, rejection_to_corruption(r)))?;
                    if audit && attests_state {
                        // The chain attests a state its own records do not lead to.
                        if let Some(d) = projection.divergence().filter(|d| d.seq == seq) {
                            return Err(corrupt(
                                seq,
                                Corruption::StateDivergence {
                                    head_seq: d.head_seq,
                                    attested: d.attested,
                                    computed: d.computed,
                                },
                            ));
                        }
                    }
                    stats.events += 1;
                    stats.bytes += d.item.bytes as u64;
                }
                progress(stats.events);
                if let Some((seq, c)) = stop {
                    return Err(corrupt(seq, c));
                }
                let _ = token_tx.send(());
            }
        }
        Ok(())
    });
    stats.elapsed = started.elapsed();
    result.map(|()| stats)
}

/// Reads `from..=to` with every check of a replay except signatures and rules.
pub(crate) fn read_verified_range(
    ks: &Keyspace,
    path: &Path,
    from: u64,
    to: u64,
) -> Result<Vec<ChainedEvent>, LedgerError> {
    let corrupt =
        |seq, corruption| LedgerError::Corrupt { path: path.to_path_buf(), seq, corruption: Box::new(corruption) };
    let mut out = Vec::new();
    if to < from {
        return Ok(out);
    }
    let mut prev: Option<ChainHash> = None;
    let mut buf = AlignedVec::new();
    for (expected, guard) in (from..).zip(ks.range(seq_key(from)..=seq_key(to))) {
        let (key, value) = guard.into_inner().map_err(storage("read range", path))?;
        let seq = parse_seq_key(&key).ok_or_else(|| corrupt(expected, Corruption::MalformedKey { len: key.len() }))?;
        if seq != expected {
            return Err(corrupt(expected, Corruption::Gap { expected, found: seq }));
        }
        let ev = decode_record_with(&value, &mut buf).map_err(|e| corrupt(seq, e.into()))?;
        if ev.seq != seq {
            return Err(corrupt(seq, Corruption::Misplaced { key: seq, claimed: ev.seq }));
        }
        if let Some(p) = prev {
            if ev.prev_hash != p {
                return Err(corrupt(seq, Corruption::BadLink { expected: p, found: ev.prev_hash }));
            }
        }
        let computed = chain_hash(&ev.prev_hash, seq, &ev.event.canonical_bytes());
        if computed != ev.hash {
            return Err(corrupt(seq, Corruption::HashMismatch { stored: ev.hash, computed }));
        }
        prev = Some(ev.hash);
        out.push(ev);
    }
    Ok(out)
}
