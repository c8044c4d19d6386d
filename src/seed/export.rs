//! Exporting a live ledger into a seed file, streamed and crash-safe.

use std::io::Write;
use std::path::Path;
use std::sync::RwLock;

use super::encode::{append_signatures, encode_prefix, header_of};
use super::{SeedError, SeedHeader};
use crate::core::event::EventBody;
use crate::core::keys::NodeKey;
use crate::core::projection::{ChainHead, Projection, ProjectionState};
use crate::store::ledger::{Ledger, LedgerLock};
use crate::store::record::decode_record;

/// What [`export`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exported {
    /// The seed's head.
    pub head: ChainHead,
    /// Whether the file carries every event from genesis (a full seed): asked for, or the
    /// only honest seed of a ledger that holds no attested state yet.
    pub includes_events: bool,
    /// The seq of the state the file carries: the head for a full seed, the attested
    /// checkpoint below it for a state-only one.
    pub state_seq: u64,
}

/// The error for a failed ledger read while exporting to `path`.
fn ledger_io(path: &Path) -> impl Fn(crate::store::error::LedgerError) -> SeedError + '_ {
    move |e| SeedError::Io { path: path.display().to_string(), reason: format!("reading the ledger: {e}") }
}

/// The newest state at or below `head` that the chain attests: the state right before the
/// last state checkpoint event whose digest it matches. Found by replaying
/// ([`replay_to_attested`]) from the stored attested checkpoint (or from genesis when the ledger
/// holds its whole history) to the head; signatures are checked again by whoever verifies the
/// seed. `None` when there is no such state.
fn newest_attested(
    ledger: &RwLock<Ledger>,
    head: u64,
    history_from: u64,
    path: &Path,
) -> Result<Option<ProjectionState>, SeedError> {
    let stored = ledger.read_ledger().map_err(ledger_io(path))?.attested_checkpoint().map_err(ledger_io(path))?;
    let mut p = match &stored {
        Some(s) => Projection::from_state(s.clone()),
        None if history_from == 0 => Projection::new(),
        None => return Ok(None),
    };
    let from = p.next_seq();
    let page = 16 * crate::core::limits::REPLAY_CHUNK_EVENTS as u64;
    let newer = replay_to_attested(ledger, &mut p, from, head, page, path, |_| false)?;
    Ok(newer.or(stored))
}

/// Replays the ledger's records `from..=to` onto `p` (the projection right before `from`) and
/// returns the newest state it passed that the chain attests: the state right before a state
/// checkpoint event whose digest it matches (`None` if it passed none). Stops before the first
/// event `stop` says to leave alone. The records are read `page` at a time from a view of
/// the ledger taken when it starts (`store::ledger::RecordsView`), without its lock. The rules are applied; signatures were checked
/// when the records were stored.
pub(crate) fn replay_to_attested(
    ledger: &RwLock<Ledger>,
    p: &mut Projection,
    from: u64,
    to: u64,
    page: u64,
    path: &Path,
    mut stop: impl FnMut(&crate::core::event::ChainedEvent) -> bool,
) -> Result<Option<ProjectionState>, SeedError> {
    let bad = |seq: u64, reason: String| SeedError::BadEvents { seq, reason };
    let mut found = None;
    // Read without the ledger's lock: a writer never waits for this pass.
    let view = ledger.read_ledger().map_err(ledger_io(path))?.records_view();
    let mut at = from;
    while at <= to {
        let last = (at + page - 1).min(to);
        let mut records: Vec<Vec<u8>> = Vec::with_capacity((last - at + 1) as usize);
        view.visit_raw_range(at, last, |_, rec| {
            records.push(rec.to_vec());
            Ok(())
        })
        .map_err(ledger_io(path))?;
        if records.is_empty() {
            break;
        }
        for rec in &records {
            let ev = decode_record(rec).map_err(|e| bad(at, e.to_string()))?;
            if stop(&ev) {
                return Ok(found);
            }
            if let EventBody::StateCheckpoint { head_seq, state_digest, .. } = ev.event.body {
                if p.head().is_some_and(|h| h.seq == head_seq) && p.state_digest() == state_digest {
                    found = Some(p.state().clone());
                }
            }
            p.apply(&ev).map_err(|r| bad(ev.seq, r.to_string()))?;
        }
        at = last + 1;
    }
    Ok(found)
}

/// Exports a seed of a ledger at its current head to `path`, signed by `signer`, while the
/// ledger stays writable: the projection is copied under a short read lock, then the events
/// are read up to that head from a view of the records, without the lock. Written
/// crash-safely (temporary file, sync, rename, sync of the directory).
///
/// With `include_events`, a full seed (format 1). Without, a **state-only** seed (format 2):
/// the newest state the chain attests (found from [`Ledger::attested_checkpoint`] forward) and
/// the events from its attesting state checkpoint to the head, so an importer checks the state
/// against the chain.
/// A ledger that holds no attested state yet (younger than one checkpoint interval, or
/// written before states were attested) gets a full seed instead, which proves its state by
/// replay, if it holds its history from genesis; otherwise [`SeedError::NotAttested`].
#[tracing::instrument(level = "info", skip(ledger, signer), fields(path = %path.display()))]
pub fn export(
    ledger: &RwLock<Ledger>,
    signer: &NodeKey,
    path: &Path,
    include_events: bool,
) -> Result<Exported, SeedError> {
    let ledger_io = ledger_io(path);
    let (projection, history_from) = {
        let l = ledger.read_ledger().map_err(&ledger_io)?;
        (l.projection().clone(), l.history_from())
    };
    let head = projection.head().ok_or(SeedError::StateMismatch("empty ledger: nothing to seed".into()))?;
    let base = if include_events { None } else { newest_attested(ledger, head.seq, history_from, path)? };
    let full = base.is_none();
    if full && !include_events {
        if history_from > 0 {
            return Err(SeedError::NotAttested(format!(
                "this ledger holds no state the chain attests and not its history below seq {history_from}: export once a state checkpoint has been committed, or from a node with the whole history"
            )));
        }
        tracing::info!(
            seq = head.seq,
            "no attested state held yet: exporting every event instead (the state is proven by replay)"
        );
    }
    let header = header_of(projection.state(), full)?;
    let (state, from) = match &base {
        Some(b) => (b, b.head.map_or(0, |h| h.seq + 1)),
        None => (projection.state(), 0),
    };
    let page = 16 * crate::core::limits::REPLAY_CHUNK_EVENTS as u64;
    let size = write_streamed(ledger, signer, path, &header, state, from, head.seq, page)?;
    let state_seq = state.head.map_or(head.seq, |h| h.seq);
    tracing::info!(seq = head.seq, state_seq, includes_events = full, bytes = size, "seed exported");
    Ok(Exported { head, includes_events: full, state_seq })
}

/// Writes a seed with `header`, `state` and the ledger's records `from..=to` to `path`,
/// signed by `signer`: streamed (this thread reads the records verbatim — the canonical bytes
/// the chain hashes cover, checked when they were stored and again by whoever verifies the
/// seed — into 4 MiB chunks while a second thread hashes and writes them, so nothing is
/// buffered whole) into a temporary file next to `path`, synced, renamed, and the directory
/// synced. The records are read `page` at a time from a view of the ledger taken when it
/// starts (`store::ledger::RecordsView`), without its lock. Returns the file size.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_streamed(
    ledger: &RwLock<Ledger>,
    signer: &NodeKey,
    path: &Path,
    header: &SeedHeader,
    state: &ProjectionState,
    from: u64,
    to: u64,
    page: u64,
) -> Result<u64, SeedError> {
    let io = |e: std::io::Error| SeedError::Io { path: path.display().to_string(), reason: e.to_string() };
    let ledger_io = ledger_io(path);
    let count = to + 1 - from;
    let empty: [&[u8]; 0] = [];
    let prefix = encode_prefix(header, state, &empty, count);

    // Streamed into a temporary file next to `path`: this thread reads the records verbatim
    // (the canonical bytes the chain hashes cover, checked when they were stored and again by
    // whoever verifies the seed) into 4 MiB chunks, while a second thread hashes and writes
    // them, so reading overlaps hashing and writing and nothing is buffered whole.
    const CHUNK: usize = 4 << 20;
    let tmp = tempfile::NamedTempFile::new_in(super::encode::parent_dir(path)).map_err(io)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let (hasher, tmp, read_result) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> std::io::Result<(blake3::Hasher, tempfile::NamedTempFile)> {
            let mut hasher = blake3::Hasher::new();
            let mut file = tmp;
            for chunk in rx {
                hasher.update(&chunk);
                // Synced as it goes, 1 MiB at a time: the node's own durable writes share the
                // disk, and each of their syncs waits for whatever is in flight (16 MiB at once
                // held one up for ~30 ms).
                for piece in chunk.chunks(1 << 20) {
                    file.as_file_mut().write_all(piece)?;
                    file.as_file().sync_data()?;
                }
            }
            Ok((hasher, file))
        });
        let read = (|| -> Result<(), SeedError> {
            let mut buf = prefix;
            buf.reserve(CHUNK);
            // Read without the ledger's lock: a writer never waits for the export.
            let view = ledger.read_ledger().map_err(&ledger_io)?.records_view();
            let mut at = from;
            while at <= to {
                let last = (at + page - 1).min(to);
                let visited = view
                    .visit_raw_range(at, last, |_, rec| {
                        buf.extend_from_slice(&(rec.len() as u32).to_le_bytes());
                        buf.extend_from_slice(rec);
                        if buf.len() >= CHUNK {
                            let full = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK + 4096));
                            tx.send(full).map_err(|_| std::io::Error::other("seed writer stopped"))?;
                        }
                        Ok(())
                    })
                    .map_err(&ledger_io)?;
                if visited != last - at + 1 {
                    return Err(SeedError::BadEvents {
                        seq: at,
                        reason: "the ledger changed under the export (reset by a snapshot)".into(),
                    });
                }
                at = last + 1;
            }
            if !buf.is_empty() {
                tx.send(buf).map_err(|_| io(std::io::Error::other("seed writer stopped")))?;
            }
            Ok(())
        })();
        drop(tx);
        let written = writer.join().map_err(|_| io(std::io::Error::other("seed writer panicked")));
        match written {
            Ok(Ok((h, f))) => Ok((h, f, read)),
            Ok(Err(e)) => Err(io(e)),
            Err(e) => Err(e),
        }
    })?;
    read_result?;
    let digest = *hasher.finalize().as_bytes();
    let mut tail = digest.to_vec();
    append_signatures(&mut tail, &header.fingerprint, &digest, &[signer]);
    let mut tmp = tmp;
    tmp.as_file_mut().write_all(&tail).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    let size = tmp.as_file().metadata().map(|m| m.len()).unwrap_or(0);
    super::encode::persist_synced(tmp, path).map_err(io)?;
    Ok(size)
}
