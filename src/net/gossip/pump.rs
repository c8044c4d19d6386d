//! One gossip session over a byte stream: frames read by their own task, the sans-IO
//! [`SyncSession`] driven, ranges verified on all cores and stored in order by one worker, and
//! ranges served from the ledger within the bandwidth budget.

use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tracing::Instrument;

use super::{GossipAcceptor, GossipService, GossipStream, LedgerRecords, SessionReport};
use crate::core::gossip::{LinkedRange, LocalView, PeerAddr, SessionEvent, SessionOutcome, SyncSession, Violation};
use crate::core::limits;
use crate::core::provisional::EventId;
use crate::core::sync;
use crate::core::types::ChainPoint;
use crate::net::BoxFuture;
use crate::raft::state_machine::SharedLedger;
use crate::store::error::LedgerError;
use crate::store::ledger::LedgerLock;
use crate::wire::gossip::{decode_frame_with_records, encode_frame, encode_range_frame, RawRange};

/// Why a frame could not be read.
#[derive(Debug)]
enum ReadError {
    /// The peer sent something no honest peer sends: an oversized length, or a frame cut off
    /// by the end of its stream.
    Bad(String),
    /// The stream or connection failed (a network problem, not the peer's content).
    Io(String),
}

/// Reads one frame body; `Ok(None)` at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, ReadError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(ReadError::Bad(format!("stream ended inside a length prefix ({got} of 4 bytes)"))),
            Ok(n) => got += n,
            Err(e) => return Err(ReadError::Io(e.to_string())),
        }
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > limits::GOSSIP_FRAME_BYTES_MAX {
        return Err(ReadError::Bad(format!(
            "frame of {n} bytes exceeds the {}-byte limit",
            limits::GOSSIP_FRAME_BYTES_MAX
        )));
    }
    // Grow with the data actually received: a length prefix alone never allocates much.
    let mut buf = Vec::with_capacity(n.min(64 * 1024));
    let got = r.take(n as u64).read_to_end(&mut buf).await.map_err(|e| ReadError::Io(e.to_string()))?;
    if got != n {
        return Err(ReadError::Bad(format!("stream ended after {got} of {n} bytes of a frame")));
    }
    Ok(Some(buf))
}

impl GossipService {
    fn local_view(&self, pull: bool) -> Result<LocalView, LedgerError> {
        // `candidates` takes the ledger's read lock itself: it runs before this function takes
        // it. A second read lock on the same thread deadlocks as soon as a writer (Raft's
        // apply, a gossip store) queues between the two, since the lock prefers writers.
        let mut known = self.candidates();
        known.shuffle(&mut rand::rng());
        let mut peers: Vec<PeerAddr> = vec![PeerAddr { node: self.me.node, addr: self.me.addr.clone() }];
        peers.extend(
            known.into_iter().take(limits::GOSSIP_PEERS_MAX - 1).map(|p| PeerAddr { node: p.node, addr: p.addr }),
        );
        let l = self.ledger.read_ledger()?;
        let head = match l.head() {
            Some(h) => l.get(h.seq)?,
            None => None,
        };
        // A ledger loaded from a state-only seed knows its head's hash before it holds the event.
        let head_point = l.head().map(|h| ChainPoint { seq: h.seq, hash: h.hash });
        let provisional = crate::store::provisional::list(&l, limits::GOSSIP_PROVISIONAL_MAX).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read held provisional events");
            Vec::new()
        });
        let forks = crate::forensics::forks::unresolved(&l).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read fork evidence");
            Vec::new()
        });
        let forks = forks.into_iter().rev().take(limits::GOSSIP_FORKS_MAX).collect();
        Ok(LocalView {
            fingerprint: l.fingerprint(),
            head,
            head_point,
            backfill: l.backfill_point(),
            anchor: l.anchor(),
            peers,
            pull,
            primary: (self.is_member)(),
            provisional,
            forks,
        })
    }

    /// Runs one session on `stream` to its end. `initiator` only affects logging.
    pub async fn run_session(&self, stream: GossipStream, initiator: bool) -> (SessionOutcome, SessionReport) {
        let peer = stream.peer;
        let span = tracing::info_span!("gossip_session", peer = %peer.short(), initiator);
        let (outcome, report) = self.session_inner(stream).instrument(span).await;
        self.stats.session(&outcome, &report);
        (outcome, report)
    }

    async fn session_inner(&self, stream: GossipStream) -> (SessionOutcome, SessionReport) {
        let peer = stream.peer;
        let GossipStream { mut send, mut recv, .. } = stream;
        let mut report = SessionReport::default();
        let pull_guard = if (self.may_pull)() { self.pulling.try_lock().ok() } else { None };
        let view = match self.local_view(pull_guard.is_some()) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the ledger for a gossip session");
                return (SessionOutcome::Violation(Violation::Refused(e.to_string())), report);
            }
        };
        let mut session = SyncSession::new(self.cfg.sync.clone(), view, Instant::now());
        // Frames are read by their own task: reading is not cancel-safe inside `select!`.
        let (frames_tx, mut frames_rx) = tokio::sync::mpsc::channel::<Result<Option<Vec<u8>>, ReadError>>(2);
        let reader = tokio::spawn(async move {
            loop {
                let r = read_frame(&mut recv).await;
                let end = !matches!(r, Ok(Some(_)));
                if frames_tx.send(r).await.is_err() || end {
                    break;
                }
            }
        });
        // Ranges are stored in order by one blocking worker, while the session goes on reading.
        let (store_tx, store_rx) = std::sync::mpsc::channel::<StoreJob>();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<u64, String>>();
        let worker_ledger = self.ledger.clone();
        let notify = sync::lock(&self.on_stored).clone();
        // Two stages: one verifies a range's signatures (on all cores) while the other stores
        // the range before it under the ledger lock.
        let (verified_tx, verified_rx) = std::sync::mpsc::sync_channel::<(StoreJob, Vec<bool>)>(1);
        let verifier = tokio::task::spawn_blocking(move || {
            for job in store_rx {
                let verdicts = match &job {
                    StoreJob::Forward(range) => crate::store::ledger::verify_linked_signatures(range),
                    StoreJob::Backward(range) => crate::store::ledger::verify_signatures(range.events()),
                };
                if verified_tx.send((job, verdicts)).is_err() {
                    break;
                }
            }
        });
        let worker = tokio::task::spawn_blocking(move || {
            let mut committed = Vec::new();
            for (job, verdicts) in verified_rx {
                let result = match &job {
                    StoreJob::Forward(range) => store_range(&worker_ledger, range, &verdicts, &mut committed),
                    StoreJob::Backward(range) => store_backfill(&worker_ledger, range, &verdicts),
                };
                if let (Ok(_), Some(f)) = (&result, &notify) {
                    f();
                }
                if done_tx.send(result).is_err() {
                    break;
                }
            }
            committed
        });
        let mut pending_stores = 0usize;
        let mut hello_seen = false;
        let mut eof = false;
        let started = Instant::now();
        let outcome = loop {
            // Act on what the session decided.
            let mut finished = None;
            while let Some(ev) = session.poll_event() {
                match ev {
                    SessionEvent::Store(range) => {
                        pending_stores += 1;
                        if store_tx.send(StoreJob::Forward(range)).is_err() {
                            pending_stores -= 1;
                            session.store_failed("the store worker stopped".into());
                        }
                    }
                    SessionEvent::Backfill(range) => {
                        pending_stores += 1;
                        if store_tx.send(StoreJob::Backward(range)).is_err() {
                            pending_stores -= 1;
                            session.store_failed("the store worker stopped".into());
                        }
                    }
                    SessionEvent::Serve { from, max_events } => {
                        let ledger = self.ledger.clone();
                        let records = tokio::task::spawn_blocking(move || read_batch(&ledger, from, max_events)).await;
                        let records = match records {
                            Ok(Ok(r)) => r,
                            Ok(Err(e)) => {
                                tracing::warn!(error = %e, "cannot serve a gossip range");
                                Vec::new()
                            }
                            Err(_) => Vec::new(),
                        };
                        report.served += records.len() as u64;
                        report.served_record_bytes += records.iter().map(|r| r.len() as u64).sum::<u64>();
                        let frame = encode_range_frame(RawRange(&records));
                        // Bounded bandwidth per peer: hold the range back until the session's
                        // average stays within the budget.
                        if let Some(rate) = self.cfg.serve_bytes_per_sec.filter(|r| *r > 0) {
                            let due = Duration::from_secs_f64(
                                (report.bytes_written + frame.len() as u64) as f64 / rate as f64,
                            );
                            if let Some(wait) = due.checked_sub(started.elapsed()) {
                                tokio::time::sleep(wait).await;
                            }
                        }
                        if let Err(e) = send.write_all(&frame).await {
                            tracing::debug!(error = %e, "peer went away");
                            break;
                        }
                        report.bytes_written += frame.len() as u64;
                    }
                    SessionEvent::Provisional(list) => {
                        let held = self.hold_provisional(&list);
                        if held < list.len() {
                            self.penalise(&peer, "handed over provisional events that do not check");
                        }
                    }
                    SessionEvent::Forks(list) => {
                        for evidence in list {
                            if self.record_fork_from(&evidence, peer) {
                                continue;
                            }
                            self.penalise(&peer, "handed over fork evidence that does not check");
                            break;
                        }
                    }
                    SessionEvent::Finished(o) => finished = Some(o),
                }
            }
            while let Some(m) = session.poll_transmit() {
                let frame = encode_frame::<LedgerRecords>(&m);
                if send.write_all(&frame).await.is_err() {
                    break;
                }
                report.bytes_written += frame.len() as u64;
            }
            if let Some(o) = finished {
                // Let the stores already handed out finish: they are verified ranges.
                while pending_stores > 0 {
                    pending_stores -= 1;
                    match done_rx.recv().await {
                        Some(Ok(n)) => report.stored += n,
                        Some(Err(_)) => {}
                        None => break,
                    }
                }
                break o;
            }
            if eof && pending_stores == 0 {
                // The peer is gone and nothing of ours is pending: the session cannot go on.
                break SessionOutcome::TimedOut;
            }
            if !hello_seen {
                if let Some(d) = session.peer_digest() {
                    hello_seen = true;
                    self.learn(d);
                }
            }
            let deadline = session.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                frame = frames_rx.recv(), if !eof => match frame {
                    Some(Ok(Some(bytes))) => {
                        report.bytes_read += bytes.len() as u64;
                        match decode_frame_with_records::<LedgerRecords>(bytes) {
                            Ok((m, records)) => session.handle_with_records(m, records, Instant::now()),
                            Err(e) => session.handle_bad_frame(e.to_string()),
                        }
                    }
                    // The peer finished (or the stream broke): finish storing what it sent.
                    Some(Ok(None)) | None => eof = true,
                    Some(Err(ReadError::Bad(reason))) => {
                        session.handle_bad_frame(reason);
                        eof = true;
                    }
                    Some(Err(ReadError::Io(e))) => {
                        tracing::debug!(error = %e, "gossip stream failed");
                        eof = true;
                    }
                },
                done = done_rx.recv(), if pending_stores > 0 => {
                    pending_stores -= 1;
                    match done {
                        Some(Ok(n)) => {
                            report.stored += n;
                            session.stored();
                        }
                        Some(Err(e)) => session.store_failed(e),
                        None => session.store_failed("the store worker stopped".into()),
                    }
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)) => session.handle_timeout(Instant::now()),
            }
        };
        // Finish our side, then wait (bounded) for the peer to finish its own, so the last
        // frames both ways are delivered before the connection goes.
        let peer_primary = session.peer_digest().is_some_and(|d| d.primary);
        let _ = send.shutdown().await;
        if !eof {
            let drain = async { while let Some(Ok(Some(_))) = frames_rx.recv().await {} };
            let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        }
        reader.abort();
        drop(store_tx);
        let _ = verifier.await;
        if let Ok(ids) = worker.await {
            for id in ids {
                self.note_committed(id);
            }
        }
        drop(pull_guard);
        match &outcome {
            SessionOutcome::Completed => {
                *sync::lock(&self.last_sync) = Some(Instant::now());
                if peer_primary {
                    *sync::lock(&self.last_primary_sync) = Some(Instant::now());
                }
            }
            SessionOutcome::TimedOut => {}
            SessionOutcome::Violation(v) => self.penalise(&peer, &v.to_string()),
            SessionOutcome::Fork(ev) => {
                if self.record_fork_from(ev, peer) {
                    self.penalise(&peer, "holds a forked chain");
                } else {
                    self.penalise(&peer, "sent false fork evidence");
                }
            }
        }
        tracing::debug!(?outcome, stored = report.stored, served = report.served, "gossip session ended");
        (outcome, report)
    }
}

impl GossipAcceptor for GossipService {
    fn accept_gossip(&self, stream: GossipStream) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.is_banned(&stream.peer) {
                tracing::debug!(peer = %stream.peer.short(), "refusing a banned gossip peer");
                return;
            }
            self.run_session(stream, false).await;
        })
    }
}

/// Stores a verified range; the ids of held provisional events it commits go to `committed`.
fn store_range(
    ledger: &SharedLedger,
    range: &LinkedRange,
    verdicts: &[bool],
    committed: &mut Vec<EventId>,
) -> Result<u64, String> {
    let mut l = ledger.write_ledger().map_err(|e| e.to_string())?;
    // A node filled by gossip is not Raft's: if it later joins Raft, Raft starts over.
    if l.head().is_none() {
        l.set_imported(true).map_err(|e| e.to_string())?;
    }
    l.append_linked_verified(range, verdicts).map_err(|e| e.to_string())?;
    // Provisional events that are now in the chain are no longer provisional.
    match crate::store::provisional::forget_committed(&l, range.events()) {
        Ok(ids) => committed.extend(ids),
        Err(e) => tracing::warn!(error = %e, "cannot update the held provisional events"),
    }
    Ok(range.len() as u64)
}

/// A verified range for the store worker: one that extends the head, or one of the history
/// below what the ledger holds.
enum StoreJob {
    Forward(LinkedRange),
    Backward(crate::core::gossip::BackfillRange),
}

/// Stores a verified range of the history below what the ledger holds.
fn store_backfill(
    ledger: &SharedLedger,
    range: &crate::core::gossip::BackfillRange,
    verdicts: &[bool],
) -> Result<u64, String> {
    let mut l = ledger.write_ledger().map_err(|e| e.to_string())?;
    l.append_backfill(range, verdicts).map_err(|e| e.to_string())?;
    Ok(range.len() as u64)
}

fn read_batch(ledger: &SharedLedger, from: u64, max_events: u32) -> Result<Vec<Vec<u8>>, LedgerError> {
    let l = ledger.read_ledger()?;
    l.read_raw_batch(from, max_events as usize, limits::GOSSIP_BATCH_BYTES_MAX)
}
