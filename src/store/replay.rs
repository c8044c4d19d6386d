//! Replay: stream ledger records through validated access, link checks, (optionally) batched
//! signature verification and `Projection::apply`.
//!
//! A reader thread scans fjall, decodes and link-checks records in chunks of
//! [`limits::REPLAY_CHUNK_EVENTS`]; the calling thread verifies signatures of each chunk on
//! all cores (audit mode) and applies it. At most two chunks are in flight, so replay memory
//! is bounded by the chunk size and the registry size, never by the log length.

use std::cell::RefCell;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fjall::Keyspace;
use rayon::prelude::*;
use rkyv::util::AlignedVec;
use serde::Serialize;

use super::ledger::storage;
use super::record::{decode_record_with, parse_seq_key, seq_key};
use crate::core::event::{chain_hash, signing_message_from_canonical, ChainedEvent};
use crate::core::keys::{verify_many, VerifierCache};
use crate::core::limits;
use crate::core::projection::{Projection, Rejection};
use crate::core::types::{ChainHash, NodeId, SignatureBytes, Timestamp};
use crate::error::{Corruption, LedgerError};

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

/// Decoded, linked records, with their signing messages back to back (audit only).
struct Chunk {
    items: Vec<Item>,
    msgs: Vec<u8>,
    /// End offset of each item's message in `msgs`.
    msg_ends: Vec<usize>,
}

impl Chunk {
    fn new(audit: bool) -> Self {
        let n = limits::REPLAY_CHUNK_EVENTS;
        Chunk {
            items: Vec::with_capacity(n),
            msgs: if audit { Vec::with_capacity(n * 256) } else { Vec::new() },
            msg_ends: if audit { Vec::with_capacity(n) } else { Vec::new() },
        }
    }
}
type ReadError = (u64, Result<Corruption, LedgerError>);

/// Scans `from..` in order, checking keys, decoding, links and hashes. Sends chunks; ends with
/// an error item at the first bad record.
fn read_chunks(
    ks: &Keyspace,
    path: &Path,
    from: u64,
    mut prev: ChainHash,
    audit: bool,
    tx: mpsc::SyncSender<Result<Chunk, ReadError>>,
) {
    let span = tracing::debug_span!("ledger_scan", path = %path.display(), from);
    let _g = span.enter();
    let mut expected = from;
    let mut chunk = Chunk::new(audit);
    let mut buf = AlignedVec::new();
    let mut bytes_buf = Vec::with_capacity(512);
    for guard in ks.range(seq_key(from)..) {
        let fail = |seq, c: Result<Corruption, LedgerError>, chunk: Chunk| {
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
        let ev = match decode_record_with(&value, &mut buf) {
            Ok(ev) => ev,
            Err(e) => return fail(seq, Ok(e.into()), chunk),
        };
        if ev.seq != seq {
            return fail(seq, Ok(Corruption::Misplaced { key: seq, claimed: ev.seq }), chunk);
        }
        if ev.prev_hash != prev {
            return fail(seq, Ok(Corruption::BadLink { expected: prev, found: ev.prev_hash }), chunk);
        }
        bytes_buf.clear();
        ev.event.write_canonical_bytes(&mut bytes_buf);
        let computed = chain_hash(&ev.prev_hash, seq, &bytes_buf);
        if computed != ev.hash {
            return fail(seq, Ok(Corruption::HashMismatch { stored: ev.hash, computed }), chunk);
        }
        prev = ev.hash;
        expected += 1;
        if audit {
            // The signing message is a rearrangement of the canonical bytes just hashed.
            let _ = signing_message_from_canonical(&bytes_buf, &mut chunk.msgs);
            chunk.msg_ends.push(chunk.msgs.len());
        }
        chunk.items.push(Item { event: ev, size: bytes_buf.len(), bytes: value.len() });
        if chunk.items.len() >= limits::REPLAY_CHUNK_EVENTS {
            let full = std::mem::replace(&mut chunk, Chunk::new(audit));
            if tx.send(Ok(full)).is_err() {
                return; // the consumer stopped early
            }
        }
    }
    if !chunk.items.is_empty() {
        let _ = tx.send(Ok(chunk));
    }
}

fn verify_chunk(chunk: &Chunk) -> Vec<bool> {
    const BATCH: usize = 512;
    let mut start = 0;
    let items: Vec<(NodeId, &[u8], SignatureBytes)> = chunk
        .items
        .iter()
        .zip(&chunk.msg_ends)
        .map(|(i, &end)| {
            let msg = &chunk.msgs[start..end];
            start = end;
            (i.event.event.author, msg, i.event.event.signature)
        })
        .collect();
    items.par_chunks(BATCH).flat_map_iter(|part| with_thread_cache(|c| verify_many(c, part))).collect()
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
    let prev = projection.head_hash();
    let corrupt = |seq, corruption| LedgerError::Corrupt { path: path.to_path_buf(), seq, corruption };
    let result = std::thread::scope(|scope| -> Result<(), LedgerError> {
        let (tx, rx) = mpsc::sync_channel::<Result<Chunk, ReadError>>(2);
        let audit = options.audit;
        scope.spawn(move || read_chunks(ks, path, from, prev, audit, tx));
        // In an audit a verifier stage sits between reader and apply, so verifying chunk N+1
        // (on the rayon pool) overlaps applying chunk N here.
        let (vtx, vrx) = mpsc::sync_channel::<Result<(Chunk, Vec<bool>), ReadError>>(1);
        scope.spawn(move || {
            for msg in rx {
                let out = msg.map(|chunk| {
                    let verdicts = if audit { verify_chunk(&chunk) } else { Vec::new() };
                    (chunk, verdicts)
                });
                if vtx.send(out).is_err() {
                    return; // the consumer stopped early
                }
            }
        });
        for msg in vrx {
            let (chunk, verdicts) = match msg {
                Ok(c) => c,
                Err((seq, Ok(c))) => return Err(corrupt(seq, c)),
                Err((_, Err(e))) => return Err(e),
            };
            for (i, item) in chunk.items.into_iter().enumerate() {
                let ev = &item.event;
                match options.stop {
                    StopAt::Seq(s) if ev.seq > s => return Ok(()),
                    StopAt::Time(t) if ev.event.timestamp > t => return Ok(()),
                    _ => {}
                }
                if options.audit {
                    if !verdicts.get(i).copied().unwrap_or(false) {
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
                projection.apply_owned(item.event, item.size).map_err(|r| corrupt(seq, rejection_to_corruption(r)))?;
                stats.events += 1;
                stats.bytes += item.bytes as u64;
            }
            progress(stats.events);
        }
        Ok(())
    });
    stats.elapsed = started.elapsed();
    result.map(|()| stats)
}

/// Reads `from..=to` with every check of a replay except signatures and rules.
pub(crate) fn read_verified_range(ks: &Keyspace, path: &Path, from: u64, to: u64) -> Result<Vec<ChainedEvent>, LedgerError> {
    let corrupt = |seq, corruption| LedgerError::Corrupt { path: path.to_path_buf(), seq, corruption };
    let mut out = Vec::new();
    if to < from {
        return Ok(out);
    }
    let mut prev: Option<ChainHash> = None;
    let mut expected = from;
    let mut buf = AlignedVec::new();
    for guard in ks.range(seq_key(from)..=seq_key(to)) {
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
        expected += 1;
        out.push(ev);
    }
    Ok(out)
}
