//! The Raft log's writer thread: every write to the `raft_log` and `raft_meta` keyspaces but
//! the vote's and the committed log id's, in the order they were asked for, and the group
//! sync that makes appends durable.
//!
//! fjall's journal has one lock, and its sync holds it for the whole fdatasync. A write made on
//! a tokio worker during another sync of the same journal waited for that sync: measured in
//! `primary_profile` (3 voters in process, 64 clients), the log append's write took 18 µs at
//! the median but 156 µs at p90 and 1.2 ms at p99, one worker blocked each time. So the log
//! append never writes: [`LogWriter::append`] queues the write and returns; this thread writes
//! each queued batch in order, syncs once for every append waiting and only then completes
//! their callbacks. Removals ([`LogWriter::run`]) are queued the same way and awaited, so
//! nothing removed is written back by an older queued append, and [`LogWriter::barrier`] waits
//! until every earlier write is in fjall (a reader of the keyspaces rather than the store's
//! cache calls it first). The committed log id is written by the store itself: it must be in
//! the OS before openraft applies what it commits (see `save_committed`).

use std::io;
use std::path::PathBuf;
use std::sync::mpsc;

use fjall::{Database, OwnedWriteBatch, PersistMode};
use openraft::storage::IOFlushed;

use super::TypeConfig;
use crate::store::ledger::storage;

/// Work given to the writer thread, done in the order it was queued.
enum Job {
    /// Write these log entries; complete the callback after the sync that follows.
    Append(OwnedWriteBatch, IOFlushed<TypeConfig>),
    /// Run this once every earlier job's write is in fjall; send its result back.
    Run(Box<dyn FnOnce() -> io::Result<()> + Send>, tokio::sync::oneshot::Sender<io::Result<()>>),
}

/// The handle of the writer thread (cheap to clone). The thread exits once every handle is
/// dropped.
#[derive(Clone)]
pub(super) struct LogWriter {
    tx: mpsc::Sender<Job>,
}

fn stopped() -> io::Error {
    io::Error::other("writing the raft log: its writer thread stopped")
}

impl LogWriter {
    /// Starts the writer thread of the journal of `db`.
    pub(super) fn spawn(db: Database, path: PathBuf, metrics: crate::store::metrics::WriteMetrics) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("spores-raft-flush".into())
            .spawn(move || write_loop(db, path, rx, metrics))?;
        Ok(LogWriter { tx })
    }

    /// Queues `batch` (log entries); `callback` is completed once they are synced.
    pub(super) fn append(&self, batch: OwnedWriteBatch, callback: IOFlushed<TypeConfig>) -> io::Result<()> {
        self.tx.send(Job::Append(batch, callback)).map_err(|_| stopped())
    }

    /// Runs `f` on the writer thread once every write queued before it is in fjall.
    pub(super) async fn run(&self, f: impl FnOnce() -> io::Result<()> + Send + 'static) -> io::Result<()> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.tx.send(Job::Run(Box::new(f), done)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Waits until every write queued before this call is in fjall (written, not necessarily
    /// synced).
    pub(super) async fn barrier(&self) -> io::Result<()> {
        self.run(|| Ok(())).await
    }
}

/// Writes what is queued, in order; syncs once for all the appends among it and completes
/// their callbacks. Exits when every [`LogWriter`] is dropped.
fn write_loop(db: Database, path: PathBuf, rx: mpsc::Receiver<Job>, metrics: crate::store::metrics::WriteMetrics) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while let Ok(more) = rx.try_recv() {
            jobs.push(more);
        }
        let mut waiting = Vec::new();
        // The first failed write: every append of this group is then reported failed (a
        // failed write stops fjall's journal; Raft stops on the error).
        let mut failed: Option<String> = None;
        for job in jobs {
            match job {
                Job::Append(batch, callback) => {
                    let _g = tracing::trace_span!("raft_log_write", path = %path.display()).entered();
                    if let Err(e) = batch.commit() {
                        failed.get_or_insert_with(|| {
                            format!("writing the raft log: {}", storage("append to the raft log", &path)(e))
                        });
                    }
                    waiting.push(callback);
                }
                Job::Run(f, done) => {
                    let _ = done.send(f());
                }
            }
        }
        if waiting.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        let synced = tracing::debug_span!("raft_log_sync", path = %path.display(), callbacks = waiting.len())
            .in_scope(|| db.persist(PersistMode::SyncData))
            .map_err(|e| storage("sync the raft log", &path)(e).to_string());
        metrics.raft_log_sync(started.elapsed());
        let result = match failed {
            Some(e) => Err(e),
            None => synced,
        };
        tracing::trace!(callbacks = waiting.len(), ok = result.is_ok(), "raft log group sync");
        // Newest first: openraft keeps the newest flushed id in a watch and ignores an older
        // one, so a group makes one change, not one per callback. Its forwarder task meets a
        // second change within a microsecond of the first with a 1 µs sleep, which tokio's
        // millisecond timer turns into up to a millisecond with no flush reported.
        for cb in waiting.into_iter().rev() {
            cb.io_completed(result.clone().map_err(io::Error::other));
        }
    }
}
